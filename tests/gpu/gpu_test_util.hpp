// Helpers for the GPU suite: device buffers, rounded random/video inputs in BSHD or BHSD, the f64 CPU
// reference through the library's own CPU backend. Random data and error metrics: tests/support/.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "support/metrics.hpp"
#include "support/test_tensors.hpp"
#include "vmonarch/half.hpp"
#include "vmonarch/extras/video_data.hpp"
#include "vmonarch/vmonarch.hpp"

namespace gputest {

using vmtest::count_nonfinite;
using vmtest::random_normal;
using vmtest::rel_l2;

using vmonarch::DType;
using vmonarch::Device;
using vmonarch::TensorView;

inline bool have_gpu() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return n > 0;
}

#define REQUIRE_GPU() \
    do { \
        if (!gputest::have_gpu()) GTEST_SKIP() << "no CUDA device"; \
    } while (0)

#define CUDA_OK(expr) ASSERT_EQ(cudaSuccess, (expr)) << #expr

class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
        if (bytes > 0 && cudaMalloc(&ptr_, bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    }
    ~DeviceBuffer() {
        if (ptr_) cudaFree(ptr_);
    }
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        std::swap(ptr_, o.ptr_);
        std::swap(bytes_, o.bytes_);
        return *this;
    }
    void* get() const { return ptr_; }
    std::size_t bytes() const { return bytes_; }
    void upload(const void* src, std::size_t n) const {
        if (cudaMemcpy(ptr_, src, n, cudaMemcpyHostToDevice) != cudaSuccess) throw std::runtime_error("upload failed");
    }
    void download(void* dst, std::size_t n) const {
        if (cudaMemcpy(dst, ptr_, n, cudaMemcpyDeviceToHost) != cudaSuccess) throw std::runtime_error("download failed");
    }
    template <typename T> std::vector<T> read(std::size_t count) const {
        std::vector<T> v(count);
        download(v.data(), count * sizeof(T));
        return v;
    }

private:
    void* ptr_ = nullptr;
    std::size_t bytes_ = 0;
};

inline std::uint16_t to_bits(double x, DType t) {
    return t == DType::bf16 ? vmonarch::float_to_bf16(float(x)) : vmonarch::float_to_f16(float(x));
}
inline double from_bits(std::uint16_t b, DType t) {
    return t == DType::bf16 ? vmonarch::bf16_to_float(b) : vmonarch::f16_to_float(b);
}
inline double round_to(double x, DType t) { return from_bits(to_bits(x, t), t); }
inline std::uint16_t nan_bits(DType t) { return t == DType::bf16 ? 0x7fc0 : 0x7e00; }

using vmonarch::Layout;
inline const char* name(Layout l) { return l == Layout::bshd ? "BSHD" : "BHSD"; }

// A [B, N, heads, d] tensor on the GPU in `layout`, plus its rounded values in logical [b][n][h][c] order.
struct GpuTensor {
    std::int64_t B = 0, N = 0, H = 0, D = 0;
    DType dtype = DType::bf16;
    Layout layout = Layout::bshd;
    DeviceBuffer buf;
    TensorView view;
    std::vector<double> values;

    GpuTensor(const std::vector<double>& logical, DType dt, Layout l, std::int64_t b, std::int64_t n, std::int64_t h,
              std::int64_t d)
        : B(b), N(n), H(h), D(d), dtype(dt), layout(l), buf(std::size_t(b * n * h * d) * 2), values(logical.size()) {
        view = TensorView::of(l, buf.get(), dt, Device::cuda, b, n, h, d);
        std::vector<std::uint16_t> host(logical.size());
        for_each([&](std::size_t li, std::int64_t off) {
            host[std::size_t(off)] = to_bits(logical[li], dt);
            values[li] = from_bits(host[std::size_t(off)], dt);
        });
        buf.upload(host.data(), host.size() * 2);
    }
    static GpuTensor poisoned(DType dt, Layout l, std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t d) {
        return GpuTensor(std::vector<double>(std::size_t(b * n * h * d), std::nan("")), dt, l, b, n, h, d);
    }
    // Device contents in logical order.
    std::vector<double> read() const {
        const auto host = buf.read<std::uint16_t>(std::size_t(B * N * H * D));
        std::vector<double> out(host.size());
        for_each([&](std::size_t li, std::int64_t off) { out[li] = from_bits(host[std::size_t(off)], dtype); });
        return out;
    }
    std::vector<std::uint16_t> raw() const { return buf.read<std::uint16_t>(std::size_t(B * N * H * D)); }
    // CPU f64 view of the rounded values (BSHD, owned by `storage`).
    TensorView cpu_view(std::vector<double>& storage) const {
        storage = values;
        return TensorView::bshd(storage.data(), DType::f64, Device::cpu, B, N, H, D);
    }

    template <typename F> void for_each(F&& f) const {
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t n = 0; n < N; ++n)
                for (std::int64_t h = 0; h < H; ++h)
                    for (std::int64_t c = 0; c < D; ++c)
                        f(std::size_t(((b * N + n) * H + h) * D + c),
                          b * view.strides[0] + n * view.strides[1] + h * view.strides[2] + c);
    }
};

// f32 LSE [B, heads, N] on the GPU with transposed strides (n slowest, b fastest) to exercise arbitrary strides.
struct GpuLse {
    std::int64_t B, H, N;
    DeviceBuffer buf;
    vmonarch::LseView view;
    GpuLse(std::int64_t b, std::int64_t h, std::int64_t n, bool transposed) : B(b), H(h), N(n), buf(std::size_t(b * h * n) * 4) {
        std::vector<float> nan(std::size_t(b * h * n), std::nanf(""));
        buf.upload(nan.data(), nan.size() * 4);
        view = vmonarch::LseView::contiguous(buf.get(), DType::f32, Device::cuda, b, h, n);
        if (transposed) view.strides = {1, b, b * h};
    }
    std::vector<double> read() const { // logical [b][h][n]
        const auto host = buf.read<float>(std::size_t(B * H * N));
        std::vector<double> out(host.size());
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t n = 0; n < N; ++n)
                    out[std::size_t((b * H + h) * N + n)] =
                        host[std::size_t(b * view.strides[0] + h * view.strides[1] + n * view.strides[2])];
        return out;
    }
};

struct Inputs {
    std::vector<double> q, k, v; // logical [b][n][h][c]
};

// q, k, v for a grid. video = true uses the library's video-like generator; otherwise normal noise with
// q, k entries of std √logit_std, so that the logits s·⟨q,k⟩ have std logit_std.
inline Inputs make_inputs(std::int64_t B, std::int64_t H, const vmonarch::VideoGrid& g, std::int64_t d, bool video,
                          double logit_std, std::uint64_t seed) {
    const std::int64_t N = g.tokens();
    const std::size_t count = std::size_t(B * N * H * d);
    Inputs in;
    if (video) {
        vmonarch::VideoDataOptions o;
        o.grid = g;
        o.batch = B;
        o.heads = H;
        o.head_dim = d;
        o.seed = seed;
        const auto vi = vmonarch::make_video_attention_inputs(o);
        // generator: [b][h][n][c] → logical [b][n][h][c]
        in.q.resize(count); in.k.resize(count); in.v.resize(count);
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t n = 0; n < N; ++n)
                    for (std::int64_t c = 0; c < d; ++c) {
                        const std::size_t src = std::size_t(((b * H + h) * N + n) * d + c);
                        const std::size_t dst = std::size_t(((b * N + n) * H + h) * d + c);
                        in.q[dst] = vi.q[src];
                        in.k[dst] = vi.k[src];
                        in.v[dst] = vi.v[src];
                    }
        return in;
    }
    const double qk_std = std::sqrt(logit_std); // s·⟨q,k⟩ = Σ q_c k_c / √d has std qk_std² when entries have std qk_std
    in.q = random_normal(count, seed * 3 + 1, qk_std);
    in.k = random_normal(count, seed * 3 + 2, qk_std);
    in.v = random_normal(count, seed * 3 + 3, 1.0);
    return in;
}

// Restores an environment variable (or its absence) when the scope ends, also when an assertion throws.
class EnvGuard {
public:
    explicit EnvGuard(const char* name) : name_(name), had_(std::getenv(name) != nullptr), old_(had_ ? std::getenv(name) : "") {}
    ~EnvGuard() {
        if (had_) setenv(name_, old_.c_str(), 1);
        else unsetenv(name_);
    }
    EnvGuard(const EnvGuard&) = delete;
    EnvGuard& operator=(const EnvGuard&) = delete;

private:
    const char* name_;
    bool had_;
    std::string old_;
};

inline double tolerance(DType t) { return t == DType::bf16 ? 1e-2 : 3e-3; }

} // namespace gputest
