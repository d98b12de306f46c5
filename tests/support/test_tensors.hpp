// Test helpers shared by the unit and GPU suites: owned host tensors behind TensorViews in either layout
// and any dtype, seeded random data (error metrics: metrics.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "support/metrics.hpp"
#include "vmonarch/half.hpp"
#include "vmonarch/vmonarch.hpp"

namespace vmtest {

using vmonarch::DType;
using vmonarch::TensorView;

using vmonarch::Layout;

// A host tensor of logical shape [B, N, heads, d] stored in `layout`; values kept as doubles too
// (rounded to dtype), in logical [b][n][h][c] order.
struct HostBuffer {
    std::vector<std::byte> bytes;
    TensorView view;
    std::vector<double> values; // rounded values, logical order

    HostBuffer() = default;
    HostBuffer(const std::vector<double>& logical, DType dtype, Layout layout, std::int64_t B, std::int64_t N,
               std::int64_t H, std::int64_t D)
        : bytes(std::size_t(B * N * H * D) * vmonarch::dtype_size(dtype)), values(logical) {
        view = TensorView::of(layout, bytes.data(), dtype, vmonarch::Device::cpu, B, N, H, D);
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t n = 0; n < N; ++n)
                for (std::int64_t h = 0; h < H; ++h)
                    for (std::int64_t c = 0; c < D; ++c) {
                        const std::size_t li = std::size_t(((b * N + n) * H + h) * D + c);
                        const std::int64_t off = b * view.strides[0] + n * view.strides[1] + h * view.strides[2] + c;
                        values[li] = put(off, logical[li]);
                    }
    }

    static HostBuffer empty(DType dtype, Layout layout, std::int64_t B, std::int64_t N, std::int64_t H,
                            std::int64_t D, double fill = std::nan("")) {
        return HostBuffer(std::vector<double>(std::size_t(B * N * H * D), fill), dtype, layout, B, N, H, D);
    }

    // Current contents in logical order, as doubles.
    std::vector<double> read() const {
        const auto& v = view;
        std::vector<double> out(std::size_t(v.shape[0] * v.shape[1] * v.shape[2] * v.shape[3]));
        for (std::int64_t b = 0; b < v.shape[0]; ++b)
            for (std::int64_t n = 0; n < v.shape[1]; ++n)
                for (std::int64_t h = 0; h < v.shape[2]; ++h)
                    for (std::int64_t c = 0; c < v.shape[3]; ++c) {
                        const std::int64_t off = b * v.strides[0] + n * v.strides[1] + h * v.strides[2] + c;
                        out[std::size_t(((b * v.shape[1] + n) * v.shape[2] + h) * v.shape[3] + c)] = get(off);
                    }
        return out;
    }

private:
    double put(std::int64_t off, double x) {
        switch (view.dtype) {
        case DType::f16: {
            auto h = vmonarch::float_to_f16(float(x));
            std::memcpy(bytes.data() + off * 2, &h, 2);
            return vmonarch::f16_to_float(h);
        }
        case DType::bf16: {
            auto h = vmonarch::float_to_bf16(float(x));
            std::memcpy(bytes.data() + off * 2, &h, 2);
            return vmonarch::bf16_to_float(h);
        }
        case DType::f32: {
            float f = float(x);
            std::memcpy(bytes.data() + off * 4, &f, 4);
            return f;
        }
        case DType::f64: std::memcpy(bytes.data() + off * 8, &x, 8); return x;
        }
        return x;
    }
    double get(std::int64_t off) const {
        switch (view.dtype) {
        case DType::f16: {
            std::uint16_t h;
            std::memcpy(&h, bytes.data() + off * 2, 2);
            return vmonarch::f16_to_float(h);
        }
        case DType::bf16: {
            std::uint16_t h;
            std::memcpy(&h, bytes.data() + off * 2, 2);
            return vmonarch::bf16_to_float(h);
        }
        case DType::f32: {
            float f;
            std::memcpy(&f, bytes.data() + off * 4, 4);
            return f;
        }
        case DType::f64: {
            double x;
            std::memcpy(&x, bytes.data() + off * 8, 8);
            return x;
        }
        }
        return 0;
    }
};

inline std::vector<double> random_normal(std::size_t n, std::uint64_t seed, double stddev = 1.0) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> dist(0.0, stddev);
    std::vector<double> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

} // namespace vmtest
