// poly_exp2 (src/cuda/common/poly_exp2.cuh), the FMA-pipe exponential the Hopper flash kernel uses for one
// exponential in 8 at d = 64: against exp2 in double over the softmax's range of arguments, and its edges
// (very negative arguments, the stale-offset update's positive ones, exact integers).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cuda/common/poly_exp2.cuh"
#include "gpu_test_util.hpp"

namespace {

__global__ void poly_exp2_kernel(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = vmonarch::cuda::poly_exp2(x[i]);
}

std::vector<float> run_poly(const std::vector<float>& x) {
    const int n = int(x.size());
    float *dx = nullptr, *dy = nullptr;
    EXPECT_EQ(cudaMalloc(&dx, n * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&dy, n * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    poly_exp2_kernel<<<(n + 255) / 256, 256>>>(dx, dy, n);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    std::vector<float> y(x.size());
    EXPECT_EQ(cudaMemcpy(y.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    cudaFree(dx);
    cudaFree(dy);
    return y;
}

} // namespace

// The logits' range after the offset (x − m ≤ 0, down to where p no longer matters) and the stale-offset
// update's up to +8 (docs/algorithm.md §4.2): relative error ≤ 8e-5 (the cubic's bound) everywhere, including
// the integers, where the fraction is 0 and the exponent alone moves.
TEST(PolyExp2, RelativeErrorAcrossTheSoftmaxRange) {
    REQUIRE_GPU();
    std::vector<float> x;
    for (int i = 0; i <= 200000; ++i) x.push_back(-125.f + 133.f * float(i) / 200000.f);
    for (int k = -125; k <= 8; ++k) x.push_back(float(k));
    x.push_back(-0.f);
    x.push_back(std::nextafter(0.f, -1.f));
    const std::vector<float> y = run_poly(x);
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double ref = std::exp2(double(x[i]));
        ASSERT_TRUE(std::isfinite(y[i]) && y[i] > 0.f) << "x = " << x[i] << " gives " << y[i];
        worst = std::max(worst, std::abs(double(y[i]) - ref) / ref);
    }
    EXPECT_LE(worst, 8.5e-5);
    EXPECT_GT(worst, 1e-6); // the cubic is not exact: the test sees the approximation, not MUFU
}

// Below −126 the result stays a tiny positive number (about 2^−126), never NaN, a negative or an infinity:
// the tile path gives it only finite arguments, but a very negative logit difference must not poison Σp.
TEST(PolyExp2, VeryNegativeArgumentsStayTinyAndPositive) {
    REQUIRE_GPU();
    const std::vector<float> x = {-126.f, -126.5f, -127.f, -150.f, -1e4f, -1e30f, -std::numeric_limits<float>::max()};
    const std::vector<float> y = run_poly(x);
    for (std::size_t i = 0; i < x.size(); ++i) {
        EXPECT_TRUE(std::isfinite(y[i])) << "x = " << x[i];
        EXPECT_GE(y[i], 0.f) << "x = " << x[i];
        EXPECT_LE(y[i], 1.2e-38f) << "x = " << x[i];
    }
}
