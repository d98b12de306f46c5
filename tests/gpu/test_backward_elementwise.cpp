// The backward's preprocess kernel (spec §7.1: D = ⟨dO, O⟩ − dlse per row) against the same sum in f64, on both
// of its load paths: 16-byte loads (rows 16-byte aligned) and element by element (rows one element off).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/bwd/backward_elementwise.hpp"
#include "gpu_test_util.hpp"

namespace gputest {
namespace {

using vmonarch::cuda::Elem;
using vmonarch::cuda::PreprocessParams;
using vmonarch::cuda::RowView;

struct PreCase {
    DType dtype;
    int dv;
    int B, H;
    std::int64_t T, HW;
    bool with_dlse;
    int offset; // elements before the first row: 0 keeps 16-byte rows, 1 takes the element-by-element path
};

void run_preprocess(const PreCase& c) {
    SCOPED_TRACE(std::string(vmonarch::to_string(c.dtype)) + " dv " + std::to_string(c.dv) + " offset " + std::to_string(c.offset));
    const std::int64_t rows = std::int64_t(c.B) * c.H * c.T * c.HW, n = rows * c.dv + c.offset;
    std::mt19937_64 rng(1234 + c.dv + c.offset);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<std::uint16_t> o(n), g(n);
    std::vector<double> od(n), gd(n);
    for (std::int64_t e = 0; e < n; ++e) {
        o[e] = to_bits(normal(rng), c.dtype), g[e] = to_bits(normal(rng), c.dtype);
        od[e] = from_bits(o[e], c.dtype), gd[e] = from_bits(g[e], c.dtype);
    }
    std::vector<float> dlse(rows);
    for (float& x : dlse) x = float(normal(rng));

    DeviceBuffer bo(n * 2), bg(n * 2), bl(rows * 4), bd(rows * 4);
    bo.upload(o.data(), n * 2);
    bg.upload(g.data(), n * 2);
    bl.upload(dlse.data(), rows * 4);
    std::vector<float> nan(rows, NAN);
    bd.upload(nan.data(), rows * 4);

    const std::int64_t sr = c.dv, sf = c.HW * sr, sh = c.T * sf, sb = c.H * sh;
    PreprocessParams p;
    p.elem = c.dtype == DType::bf16 ? Elem::bf16 : Elem::f16;
    p.value_dim = c.dv;
    p.o = RowView{static_cast<std::uint16_t*>(bo.get()) + c.offset, sb, sh, sf, sr};
    p.dout = RowView{static_cast<std::uint16_t*>(bg.get()) + c.offset, sb, sh, sf, sr};
    if (c.with_dlse) p.dlse = RowView{bl.get(), c.H * c.T * c.HW, c.T * c.HW, c.HW, 1};
    p.d_full = RowView{bd.get(), c.H * c.T * c.HW, c.T * c.HW, c.HW, 1};
    p.frames = c.T, p.positions = c.HW, p.heads = c.H, p.batch = c.B;
    vmonarch::cuda::launch_backward_preprocess(p, nullptr, "test");
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> got(rows);
    CUDA_OK(cudaMemcpy(got.data(), bd.get(), rows * 4, cudaMemcpyDeviceToHost));

    double worst = 0.0;
    for (std::int64_t r = 0; r < rows; ++r) {
        double want = 0.0, mag = 0.0;
        for (int e = 0; e < c.dv; ++e) {
            const double x = gd[c.offset + r * c.dv + e] * od[c.offset + r * c.dv + e];
            want += x, mag += std::fabs(x);
        }
        if (c.with_dlse) want -= double(dlse[r]), mag += std::fabs(double(dlse[r]));
        ASSERT_TRUE(std::isfinite(got[r])) << "row " << r << " not written";
        worst = std::max(worst, std::fabs(double(got[r]) - want) / mag);
    }
    // f32 sums of dv exact products: a few units of f32 rounding relative to Σ|terms|.
    EXPECT_LE(worst, 1e-6);
}

TEST(BackwardPreprocess, MatchesF64SumOnBothLoadPaths) {
    REQUIRE_GPU();
    for (const DType t : {DType::bf16, DType::f16})
        for (const int dv : {64, 128})
            for (const int offset : {0, 1}) {
                run_preprocess({t, dv, 2, 3, 3, 13, true, offset});
                run_preprocess({t, dv, 1, 1, 1, 1, false, offset}); // one row: most lanes of the warp idle
            }
}

} // namespace
} // namespace gputest
