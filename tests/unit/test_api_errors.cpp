// Every wrong argument throws a typed error naming the argument, its value and what was expected.
#include <gtest/gtest.h>

#include <functional>
#include <limits>

#include "support/expect_error.hpp"
#include "support/test_tensors.hpp"
#include "vmonarch/vmonarch.hpp"

using namespace vmtest;
using vmonarch::ArgumentError;
using vmonarch::Options;
using vmonarch::VideoGrid;

namespace {

struct Fixture {
    VideoGrid grid{2, 2, 3};
    HostBuffer q = HostBuffer(random_normal(2 * 12 * 2 * 8, 1), DType::f32, Layout::bshd, 2, 12, 2, 8);
    HostBuffer k = HostBuffer(random_normal(2 * 12 * 2 * 8, 2), DType::f32, Layout::bshd, 2, 12, 2, 8);
    HostBuffer v = HostBuffer(random_normal(2 * 12 * 2 * 8, 3), DType::f32, Layout::bshd, 2, 12, 2, 8);
    HostBuffer out = HostBuffer::empty(DType::f32, Layout::bshd, 2, 12, 2, 8);
    std::vector<float> lse = std::vector<float>(2 * 2 * 12);
};

} // namespace

TEST(ApiErrors, ValidCallSucceeds) {
    Fixture f;
    auto lse = vmonarch::LseView::contiguous(f.lse.data(), DType::f32, vmonarch::Device::cpu, 2, 2, 12);
    EXPECT_NO_THROW(vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, f.grid, Options{}, &lse));
    EXPECT_TRUE(all_finite(f.out.read()));
}

TEST(ApiErrors, TokensMustEqualGrid) {
    Fixture f;
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, {2, 2, 2}); }, "q.shape[1]",
                 {"12", "expected 8", "T*H*W"});
}

TEST(ApiErrors, MismatchedShapes) {
    Fixture f;
    auto k = f.k.view;
    k.shape[2] = 1;
    expect_error([&] { vmonarch::attention(f.q.view, k, f.v.view, f.out.view, f.grid); }, "k.shape[2]", {"heads", "1", "expected 2"});
    auto v = f.v.view;
    v.shape[0] = 1;
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, v, f.out.view, f.grid); }, "v.shape[0]", {"batch", "expected 2"});
    auto kd = f.k.view;
    kd.shape[3] = 4;
    expect_error([&] { vmonarch::attention(f.q.view, kd, f.v.view, f.out.view, f.grid); }, "k.shape[3]", {"head_dim", "4", "expected 8"});
    auto o = f.out.view;
    o.shape[3] = 4;
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, o, f.grid); }, "out.shape[3]", {"expected 8"});
}

TEST(ApiErrors, DtypesAndDevices) {
    Fixture f;
    auto k = f.k.view;
    k.dtype = DType::f16;
    expect_error([&] { vmonarch::attention(f.q.view, k, f.v.view, f.out.view, f.grid); }, "k.dtype", {"f16", "expected f32"});
    auto q = f.q.view;
    q.dtype = static_cast<DType>(42);
    expect_error([&] { vmonarch::attention(q, f.k.view, f.v.view, f.out.view, f.grid); }, "q.dtype", {"42"});
    auto o = f.out.view;
    o.device = vmonarch::Device::cuda;
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, o, f.grid); }, "out.dtype", {"f32 on cuda", "expected f16 or bf16"});
}

TEST(ApiErrors, UnsupportedHeadDimOnCudaAndCpuLimit) {
    std::vector<std::uint16_t> buf(64 * 48);
    auto t = vmonarch::TensorView::bshd(buf.data(), DType::bf16, vmonarch::Device::cuda, 1, 1, 64, 48);
    expect_error([&] { vmonarch::dense_attention(t, t, t, t); }, "q.shape[3]", {"48", "expected 64 or 128"});
    std::vector<float> big(2000);
    auto c = vmonarch::TensorView::bshd(big.data(), DType::f32, vmonarch::Device::cpu, 1, 1, 1, 2000);
    expect_error([&] { vmonarch::dense_attention(c, c, c, c); }, "q.shape[3]", {"2000", "<= 1024"});
}

TEST(ApiErrors, OutAliasingAnInput) {
    Fixture f;
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.v.view, f.grid); }, "out", {"overlaps", "v"});
    auto lse = vmonarch::LseView::contiguous(f.q.view.data, DType::f32, vmonarch::Device::cpu, 2, 2, 12);
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, f.grid, Options{}, &lse); }, "lse", {"overlaps", "q"});
    auto o = f.out.view;
    o.strides[1] = 0; // every token writes the same row
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, o, f.grid); }, "out.strides[1]", {"0", "expected >= 1"});
    auto o2 = f.out.view;
    o2.strides[1] = 4; // rows of 2 heads × 8 overlap
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, o2, f.grid); }, "out.strides", {"overlap"});
}

TEST(ApiErrors, SizesAndOptions) {
    Fixture f;
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, {0, 2, 6}); }, "grid.T", {"0", ">= 1"});
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, {2, -1, 3}); }, "grid.H", {"-1"});
    auto q = f.q.view;
    q.shape[0] = 0;
    expect_error([&] { vmonarch::attention(q, f.k.view, f.v.view, f.out.view, f.grid); }, "q.shape[0]", {"batch", "0"});
    for (int it : {0, 9, -3}) {
        Options o;
        o.iterations = it;
        expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, f.grid, o); }, "options.iterations",
                     {std::to_string(it), "1..8"});
    }
    for (double c : {std::nan(""), std::numeric_limits<double>::infinity(), -0.5}) {
        Options o;
        o.cr_clamp = c;
        expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, f.grid, o); }, "options.cr_clamp", {"expected"});
    }
    for (double s : {std::nan(""), 0.0, -1.0}) {
        Options o;
        o.softmax_scale = s;
        expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, f.grid, o); }, "softmax_scale", {"finite value > 0"});
    }
}

TEST(ApiErrors, StridesAndPointers) {
    Fixture f;
    auto q = f.q.view;
    q.strides[3] = 2;
    expect_error([&] { vmonarch::attention(q, f.k.view, f.v.view, f.out.view, f.grid); }, "q.strides[3]", {"2", "expected 1"});
    auto k = f.k.view;
    k.data = nullptr;
    expect_error([&] { vmonarch::attention(f.q.view, k, f.v.view, f.out.view, f.grid); }, "k.data", {"null"});
    std::vector<std::uint16_t> buf(4096);
    auto c = vmonarch::TensorView::bshd(buf.data(), DType::bf16, vmonarch::Device::cuda, 1, 2, 1, 64);
    c.strides[1] = 68;
    expect_error([&] { vmonarch::dense_attention(c, c, c, c); }, "q.strides[1]", {"68", "multiple of 8"});
}

TEST(ApiErrors, LseShapeAndDtype) {
    Fixture f;
    auto lse = vmonarch::LseView::contiguous(f.lse.data(), DType::f32, vmonarch::Device::cpu, 2, 2, 11);
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, f.grid, Options{}, &lse); }, "lse.shape[2]",
                 {"11", "expected 12"});
    auto lse16 = vmonarch::LseView::contiguous(f.lse.data(), DType::f16, vmonarch::Device::cpu, 2, 2, 12);
    expect_error([&] { vmonarch::attention(f.q.view, f.k.view, f.v.view, f.out.view, f.grid, Options{}, &lse16); }, "lse.dtype",
                 {"f16", "expected f32"});
}

TEST(ApiErrors, CudaTensorsInCpuOnlyBuildAreUnsupported) {
    if (vmonarch::cuda_available()) GTEST_SKIP() << "a GPU is present";
    std::vector<std::uint16_t> buf(1024 + 8);
    auto* p = reinterpret_cast<std::uint16_t*>((reinterpret_cast<std::uintptr_t>(buf.data()) + 15) & ~std::uintptr_t(15));
    auto t = vmonarch::TensorView::bshd(p, DType::bf16, vmonarch::Device::cuda, 1, 4, 1, 64);
    std::vector<std::uint16_t> obuf(1024 + 8);
    auto* po = reinterpret_cast<std::uint16_t*>((reinterpret_cast<std::uintptr_t>(obuf.data()) + 15) & ~std::uintptr_t(15));
    auto o = vmonarch::TensorView::bshd(po, DType::bf16, vmonarch::Device::cuda, 1, 4, 1, 64);
#ifndef VMONARCH_WITH_CUDA
    EXPECT_THROW(vmonarch::attention(t, t, t, o, {1, 2, 2}), vmonarch::UnsupportedError);
#else
    EXPECT_ANY_THROW(vmonarch::attention(t, t, t, o, {1, 2, 2})); // no device: CudaError from the runtime
#endif
}
