// End-to-end GPU VMonarch attention against the library's f64 CPU backend on the same rounded inputs.
#include <gtest/gtest.h>

#include <sstream>

#include "gpu_test_util.hpp"

namespace gputest {
namespace {

struct Case {
    std::int64_t B, heads, T, Hh, Ww, d;
    int iterations;
    bool recompute;
    DType dtype;
    Layout layout;
    bool video = false;
    double logit_std = 3.0; // sharp attention
    double clamp = 0.1;
    bool lse_transposed = false;
};

std::string case_name(const Case& c) {
    std::ostringstream os;
    os << "B" << c.B << "h" << c.heads << "_T" << c.T << "x" << c.Hh << "x" << c.Ww << "_d" << c.d << "_t" << c.iterations
       << (c.recompute ? "_rc" : "_norc") << "_" << vmonarch::to_string(c.dtype) << "_" << name(c.layout)
       << (c.video ? "_video" : "") << (c.logit_std > 100 ? "_hugelogits" : "") << (c.clamp == 0 ? "_noclamp" : "")
       << (c.lse_transposed ? "_lseT" : "");
    return os.str();
}

struct GpuRun {
    std::vector<double> out, lse;
    std::vector<std::uint16_t> raw;
};

GpuRun run_gpu(const Case& c, const GpuTensor& q, const GpuTensor& k, const GpuTensor& v) {
    const vmonarch::VideoGrid g{c.T, c.Hh, c.Ww};
    auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, g.tokens(), c.heads, c.d);
    GpuLse lse(c.B, c.heads, g.tokens(), c.lse_transposed);
    vmonarch::Options o;
    o.iterations = c.iterations;
    o.recompute_first_frame = c.recompute;
    o.cr_clamp = c.clamp;
    vmonarch::attention(q.view, k.view, v.view, out.view, g, o, &lse.view);
    if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("cudaDeviceSynchronize failed");
    return GpuRun{out.read(), lse.read(), out.raw()};
}

class Pipeline : public ::testing::TestWithParam<Case> {};

TEST_P(Pipeline, MatchesCpuF64) {
    REQUIRE_GPU();
    const Case c = GetParam();
    const vmonarch::VideoGrid g{c.T, c.Hh, c.Ww};
    const std::int64_t N = g.tokens();
    const Inputs in = make_inputs(c.B, c.heads, g, c.d, c.video, c.logit_std, std::uint64_t(N * 31 + c.d + c.T));
    GpuTensor q(in.q, c.dtype, c.layout, c.B, N, c.heads, c.d), k(in.k, c.dtype, c.layout, c.B, N, c.heads, c.d),
        v(in.v, c.dtype, c.layout, c.B, N, c.heads, c.d);

    const GpuRun gpu = run_gpu(c, q, k, v);
    const GpuRun again = run_gpu(c, q, k, v);

    // f64 CPU reference from the same rounded inputs.
    std::vector<double> sq, sk, sv, so(q.values.size()), sl(std::size_t(c.B * c.heads * N));
    const auto cq = q.cpu_view(sq), ck = k.cpu_view(sk), cv = v.cpu_view(sv);
    const auto co = TensorView::bshd(so.data(), DType::f64, Device::cpu, c.B, N, c.heads, c.d);
    const auto cl = vmonarch::LseView::contiguous(sl.data(), DType::f64, Device::cpu, c.B, c.heads, N);
    vmonarch::Options o;
    o.iterations = c.iterations;
    o.recompute_first_frame = c.recompute;
    o.cr_clamp = c.clamp;
    vmonarch::attention(cq, ck, cv, co, g, o, &cl);

    EXPECT_EQ(count_nonfinite(gpu.out), 0u) << "NaN/Inf or unwritten output elements";
    EXPECT_EQ(count_nonfinite(gpu.lse), 0u) << "NaN/Inf or unwritten LSE elements";
    const double err = rel_l2(gpu.out, so), lerr = rel_l2(gpu.lse, sl);
    // Logits of ±1e3 make every softmax an arg-max whose near-ties flip under bf16/f16 rounding of the
    // intermediates: there the check is finiteness, and the error only needs to stay bounded.
    const double tol = c.logit_std > 100 ? 0.25 : tolerance(c.dtype);
    EXPECT_LE(err, tol) << case_name(c);
    EXPECT_LE(lerr, tol) << case_name(c) << " (LSE)";
    EXPECT_TRUE(gpu.raw == again.raw) << "same input twice gave different bits";
    std::printf("[ pipeline ] %-60s out rel-L2 %.2e  lse rel-L2 %.2e  (tol %.0e)\n", case_name(c).c_str(), err, lerr, tol);
}

const DType bf = DType::bf16, fp = DType::f16;
const Layout S = Layout::bshd, P = Layout::bhsd;

// HW = 1, 7, 63, 64, 65, 1456, 1560, 3600; T = 1, 2, 3, 16, 21, 33 (and 128); d = 64, 128; t = 1..3.
INSTANTIATE_TEST_SUITE_P(
    Shapes, Pipeline,
    ::testing::Values(Case{2, 3, 3, 1, 1, 64, 2, true, bf, S},          // HW = 1
                      Case{1, 2, 16, 1, 7, 128, 3, false, fp, P},       // HW = 7
                      Case{2, 2, 21, 7, 9, 64, 2, true, bf, S, false, 3.0, 0.1, true},
                      Case{1, 2, 33, 8, 8, 128, 1, true, fp, S},        // HW = 64
                      Case{1, 3, 2, 5, 13, 128, 2, false, bf, P},       // HW = 65
                      Case{1, 1, 2, 28, 52, 128, 2, true, bf, S},       // HW = 1456
                      Case{1, 2, 3, 30, 52, 64, 3, true, fp, P},        // HW = 1560
                      Case{1, 1, 1, 45, 80, 128, 2, true, bf, S},       // HW = 3600, T = 1
                      Case{1, 1, 2, 45, 80, 128, 1, false, fp, P},      // HW = 3600
                      Case{1, 2, 128, 1, 7, 128, 2, true, bf, S},       // T = 128
                      Case{1, 4, 16, 8, 8, 64, 2, true, bf, S, true},   // video-like
                      Case{1, 4, 3, 8, 9, 128, 2, true, fp, P, true},   // video-like
                      Case{1, 2, 3, 5, 13, 128, 2, true, bf, S, false, 300.0}, // logits reach ±1e3
                      Case{1, 2, 3, 7, 9, 64, 2, true, fp, P, false, 3.0, 0.0},   // clamp off
                      Case{2, 5, 3, 7, 9, 128, 2, true, bf, S, true},   // 5 heads: head groups of 2 and 3, two batches
                      Case{2, 3, 2, 5, 13, 64, 1, true, fp, P}),        // 3 heads, t = 1
    [](const ::testing::TestParamInfo<Case>& i) { return case_name(i.param); });

} // namespace
} // namespace gputest
