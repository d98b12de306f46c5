// GPU dense_attention (the flash kernel without Monarch outputs) against the f64 CPU backend.
#include <gtest/gtest.h>

#include <sstream>

#include "gpu_test_util.hpp"

namespace gputest {
namespace {

struct DenseCase {
    std::int64_t B, heads, Nq, Nk, d;
    DType dtype;
    Layout layout;
    double logit_std = 3.0;
};

std::string case_name(const DenseCase& c) {
    std::ostringstream os;
    os << "B" << c.B << "h" << c.heads << "_Nq" << c.Nq << "_Nk" << c.Nk << "_d" << c.d << "_"
       << vmonarch::to_string(c.dtype) << "_" << name(c.layout) << (c.logit_std > 100 ? "_hugelogits" : "");
    return os.str();
}

class Dense : public ::testing::TestWithParam<DenseCase> {};

TEST_P(Dense, MatchesCpuF64) {
    REQUIRE_GPU();
    const DenseCase c = GetParam();
    const double qk = std::sqrt(c.logit_std);
    GpuTensor q(random_normal(std::size_t(c.B * c.Nq * c.heads * c.d), 11 + c.Nq, qk), c.dtype, c.layout, c.B, c.Nq, c.heads, c.d);
    GpuTensor k(random_normal(std::size_t(c.B * c.Nk * c.heads * c.d), 12 + c.Nk, qk), c.dtype, c.layout, c.B, c.Nk, c.heads, c.d);
    GpuTensor v(random_normal(std::size_t(c.B * c.Nk * c.heads * c.d), 13 + c.Nk, 1.0), c.dtype, c.layout, c.B, c.Nk, c.heads, c.d);
    auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, c.Nq, c.heads, c.d);
    GpuLse lse(c.B, c.heads, c.Nq, false);
    vmonarch::dense_attention(q.view, k.view, v.view, out.view, std::nullopt, &lse.view);
    CUDA_OK(cudaDeviceSynchronize());
    const auto got = out.read(), got_lse = lse.read();

    std::vector<double> sq, sk, sv, so(got.size()), sl(std::size_t(c.B * c.heads * c.Nq));
    const auto cq = q.cpu_view(sq), ck = k.cpu_view(sk), cv = v.cpu_view(sv);
    const auto co = TensorView::bshd(so.data(), DType::f64, Device::cpu, c.B, c.Nq, c.heads, c.d);
    const auto cl = vmonarch::LseView::contiguous(sl.data(), DType::f64, Device::cpu, c.B, c.heads, c.Nq);
    vmonarch::dense_attention(cq, ck, cv, co, std::nullopt, &cl);

    EXPECT_EQ(count_nonfinite(got), 0u);
    EXPECT_EQ(count_nonfinite(got_lse), 0u);
    const double err = rel_l2(got, so), lerr = rel_l2(got_lse, sl);
    const double tol = c.logit_std > 100 ? 0.25 : tolerance(c.dtype); // ±1e3 logits: finiteness is the check
    EXPECT_LE(err, tol) << case_name(c);
    EXPECT_LE(lerr, tol) << case_name(c) << " (LSE)";
    std::printf("[ dense    ] %-60s out rel-L2 %.2e  lse rel-L2 %.2e  (tol %.0e)\n", case_name(c).c_str(), err, lerr, tol);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Dense,
    ::testing::Values(DenseCase{1, 1, 1, 1, 64, DType::bf16, Layout::bshd}, DenseCase{2, 3, 7, 65, 128, DType::f16, Layout::bhsd},
                      DenseCase{1, 2, 130, 63, 64, DType::bf16, Layout::bhsd}, DenseCase{1, 2, 64, 1000, 128, DType::bf16, Layout::bshd},
                      DenseCase{1, 1, 1456, 2912, 128, DType::f16, Layout::bshd},
                      DenseCase{1, 2, 200, 300, 128, DType::bf16, Layout::bshd, 300.0}),
    [](const ::testing::TestParamInfo<DenseCase>& i) { return case_name(i.param); });

} // namespace
} // namespace gputest
