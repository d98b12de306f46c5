// CUDA-side failures surface as vmonarch::CudaError naming the kernel and shapes.
#include <gtest/gtest.h>

#include "gpu_test_util.hpp"

namespace gputest {
namespace {

TEST(CudaErrors, WorkspaceTooSmall) {
    REQUIRE_GPU();
    const vmonarch::VideoGrid g{2, 4, 4};
    const Inputs in = make_inputs(1, 1, g, 64, false, 1.0, 5);
    GpuTensor q(in.q, DType::bf16, Layout::bshd, 1, g.tokens(), 1, 64), k(in.k, DType::bf16, Layout::bshd, 1, g.tokens(), 1, 64),
        v(in.v, DType::bf16, Layout::bshd, 1, g.tokens(), 1, 64);
    auto out = GpuTensor::poisoned(DType::bf16, Layout::bshd, 1, g.tokens(), 1, 64);
    const std::size_t need = vmonarch::workspace_bytes(q.view, v.view, g);
    ASSERT_GT(need, 0u);
    DeviceBuffer ws(need);
    vmonarch::CudaContext ctx;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = need - 1;
    EXPECT_THROW(vmonarch::attention(q.view, k.view, v.view, out.view, g, {}, nullptr, &ctx), vmonarch::CudaError);
    ctx.workspace_bytes = need; // exactly enough works, on a caller stream
    cudaStream_t st;
    CUDA_OK(cudaStreamCreate(&st));
    ctx.stream = st;
    EXPECT_NO_THROW(vmonarch::attention(q.view, k.view, v.view, out.view, g, {}, nullptr, &ctx));
    CUDA_OK(cudaStreamSynchronize(st));
    CUDA_OK(cudaStreamDestroy(st));
    EXPECT_EQ(count_nonfinite(out.read()), 0u);
}

TEST(CudaErrors, TooManyFramesNamesTheLStep) {
    REQUIRE_GPU();
    const vmonarch::VideoGrid g{400, 1, 1};
    const Inputs in = make_inputs(1, 1, g, 128, false, 1.0, 6);
    GpuTensor q(in.q, DType::f16, Layout::bshd, 1, g.tokens(), 1, 128), k(in.k, DType::f16, Layout::bshd, 1, g.tokens(), 1, 128),
        v(in.v, DType::f16, Layout::bshd, 1, g.tokens(), 1, 128);
    auto out = GpuTensor::poisoned(DType::f16, Layout::bshd, 1, g.tokens(), 1, 128);
    try {
        vmonarch::attention(q.view, k.view, v.view, out.view, g);
        FAIL() << "expected CudaError";
    } catch (const vmonarch::CudaError& e) {
        EXPECT_NE(std::string(e.what()).find("L-step"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("frames=400"), std::string::npos) << e.what();
    }
}

TEST(CudaErrors, DeviceNameIsReported) {
    REQUIRE_GPU();
    EXPECT_TRUE(vmonarch::cuda_available());
    EXPECT_FALSE(vmonarch::cuda_device_name(0).empty());
    std::printf("[ device   ] %s\n", vmonarch::cuda_device_name(0).c_str());
}

} // namespace
} // namespace gputest
