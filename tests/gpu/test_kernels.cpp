// Each VMonarch kernel on its own: the R-step's aL, cL, y and the L-step's aR, cR / O, LSE against f64
// computations written here from docs/algorithm.md §3, on the same rounded inputs (workspace filled directly).
#include <gtest/gtest.h>

#include <sstream>

#include "core/dispatch.hpp"
#include "cuda/monarch_plan.hpp"
#include "gpu_test_util.hpp"

namespace gputest {
namespace {

using vmonarch::cuda::MonarchPlan;
using vmonarch::cuda::WorkspaceLayout;

struct KCase {
    std::int64_t B, heads, T, HW, d;
    DType dtype;
    Layout layout;
};

std::string case_name(const KCase& c) {
    std::ostringstream os;
    os << "B" << c.B << "h" << c.heads << "_T" << c.T << "_HW" << c.HW << "_d" << c.d << "_" << vmonarch::to_string(c.dtype)
       << "_" << name(c.layout);
    return os.str();
}

// Workspace contents are [b][h][...] blocks; index helpers matching monarch_plan.hpp's layout.
struct Fixture {
    KCase c;
    std::int64_t N;
    double s;
    vmonarch::detail::MonarchProblem p;
    GpuTensor q, k, v, out;
    DeviceBuffer ws;
    WorkspaceLayout wl;

    Fixture(const KCase& kc, int iterations, double logit_std)
        : c(kc), N(kc.T * kc.HW), s(1.0 / std::sqrt(double(kc.d))),
          q(random_normal(std::size_t(kc.B * N * kc.heads * kc.d), std::sqrt(logit_std), 101), kc.dtype, kc.layout, kc.B, N, kc.heads, kc.d),
          k(random_normal(std::size_t(kc.B * N * kc.heads * kc.d), std::sqrt(logit_std), 102), kc.dtype, kc.layout, kc.B, N, kc.heads, kc.d),
          v(random_normal(std::size_t(kc.B * N * kc.heads * kc.d), 1.0, 103), kc.dtype, kc.layout, kc.B, N, kc.heads, kc.d),
          out(GpuTensor::poisoned(kc.dtype, kc.layout, kc.B, N, kc.heads, kc.d)) {
        p.q = q.view; p.k = k.view; p.v = v.view; p.out = out.view;
        p.batch = c.B; p.heads = c.heads; p.q_tokens = p.kv_tokens = N; p.head_dim = p.value_dim = c.d;
        p.scale = s;
        p.grid = vmonarch::VideoGrid{c.T, 1, c.HW};
        p.iterations = iterations;
        p.cr_clamp = 0.1;
        p.recompute_first_frame = false;
        wl = vmonarch::cuda::monarch_workspace_layout(p);
        ws = DeviceBuffer(wl.total);
        CUDA_OK_THROW(cudaMemset(ws.get(), 0xff, wl.total)); // poison: NaN in every dtype
    }
    static void CUDA_OK_THROW(cudaError_t e) {
        if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
    }
    std::size_t bh(std::int64_t b, std::int64_t h) const { return std::size_t(b * c.heads + h); }
    // element index of vector (b, h, frame k, position j) in the position-major [b][h][j][k][d] blocks
    std::size_t pm(std::int64_t b, std::int64_t h, std::int64_t k, std::int64_t j) const { return (bh(b, h) * c.HW + j) * c.T + k; }
    // frame-major [b][h][k][j]
    std::size_t fm(std::int64_t b, std::int64_t h, std::int64_t k, std::int64_t j) const { return (bh(b, h) * c.T + k) * c.HW + j; }
    std::size_t rows() const { return std::size_t(c.B * c.heads * N); }
    // logical [b][n][h][c] index of user tensor element
    std::size_t ui(std::int64_t b, std::int64_t frame, std::int64_t j, std::int64_t h, std::int64_t e) const {
        return std::size_t(((b * N + frame * c.HW + j) * c.heads + h) * c.d + e);
    }

    std::vector<double> read_vec(std::size_t off) const { // rows()×d of the input dtype
        std::vector<std::uint16_t> raw(rows() * c.d);
        CUDA_OK_THROW(cudaMemcpy(raw.data(), static_cast<char*>(ws.get()) + off, raw.size() * 2, cudaMemcpyDeviceToHost));
        std::vector<double> out(raw.size());
        for (std::size_t i = 0; i < raw.size(); ++i) out[i] = from_bits(raw[i], c.dtype);
        return out;
    }
    std::vector<double> read_f32(std::size_t off) const {
        std::vector<float> raw(rows());
        CUDA_OK_THROW(cudaMemcpy(raw.data(), static_cast<char*>(ws.get()) + off, raw.size() * 4, cudaMemcpyDeviceToHost));
        return std::vector<double>(raw.begin(), raw.end());
    }
    std::vector<double> write_vec(std::size_t off, const std::vector<double>& vals) { // rounds, returns rounded
        std::vector<std::uint16_t> raw(vals.size());
        std::vector<double> r(vals.size());
        for (std::size_t i = 0; i < vals.size(); ++i) { raw[i] = to_bits(vals[i], c.dtype); r[i] = from_bits(raw[i], c.dtype); }
        CUDA_OK_THROW(cudaMemcpy(static_cast<char*>(ws.get()) + off, raw.data(), raw.size() * 2, cudaMemcpyHostToDevice));
        return r;
    }
    std::vector<double> write_f32(std::size_t off, const std::vector<double>& vals) {
        std::vector<float> raw(vals.begin(), vals.end());
        CUDA_OK_THROW(cudaMemcpy(static_cast<char*>(ws.get()) + off, raw.data(), raw.size() * 4, cudaMemcpyHostToDevice));
        return std::vector<double>(raw.begin(), raw.end());
    }
};

void check(const char* what, const KCase& c, const std::vector<double>& got, const std::vector<double>& ref) {
    EXPECT_EQ(count_nonfinite(got), 0u) << what;
    const double err = rel_l2(got, ref), tol = tolerance(c.dtype);
    EXPECT_LE(err, tol) << what << " " << case_name(c);
    std::printf("[ kernel   ] %-34s %-10s rel-L2 %.2e (tol %.0e)\n", case_name(c).c_str(), what, err, tol);
}

class Kernels : public ::testing::TestWithParam<KCase> {};

// R-step with row scale (a middle/last iteration): queries aR and cR from the workspace, keys/values from
// the user's K, V. Checks aL, cL and y.
TEST_P(Kernels, RStep) {
    REQUIRE_GPU();
    const KCase c = GetParam();
    Fixture fx(c, 2, 3.0);
    const auto& p = fx.p;
    // aR: frame-major rows; mix of Q-like vectors. cR in [0.02, 3] so the clamp 0.1 bites on some rows.
    const auto ar = fx.write_vec(fx.wl.ar, random_normal(fx.rows() * c.d, std::sqrt(3.0), 7));
    std::vector<double> crv(fx.rows());
    std::mt19937_64 gen(9);
    std::uniform_real_distribution<double> ud(0.02, 3.0);
    for (auto& x : crv) x = ud(gen);
    const auto cr = fx.write_f32(fx.wl.cr, crv);

    MonarchPlan plan(p, fx.ws.get());
    vmonarch::cuda::launch_flash(plan.rstep_params(1), nullptr, "test R-step (last, row scale)");
    CUDA_OK(cudaDeviceSynchronize());
    const auto al = fx.read_vec(fx.wl.al), cl = fx.read_f32(fx.wl.cl), y = fx.read_vec(fx.wl.y);

    std::vector<double> ral(al.size()), rcl(cl.size()), ry(y.size()), x(std::size_t(c.HW));
    for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t h = 0; h < c.heads; ++h)
            for (std::int64_t kf = 0; kf < c.T; ++kf)
                for (std::int64_t j = 0; j < c.HW; ++j) {
                    const std::size_t qi = fx.fm(b, h, kf, j);
                    const double mult = fx.s / std::max(cr[qi], 0.1);
                    double mx = -INFINITY;
                    for (std::int64_t l = 0; l < c.HW; ++l) {
                        double dot = 0;
                        for (std::int64_t e = 0; e < c.d; ++e) dot += ar[qi * c.d + e] * fx.k.values[fx.ui(b, kf, l, h, e)];
                        x[l] = dot * mult;
                        mx = std::max(mx, x[l]);
                    }
                    double sum = 0, sx = 0;
                    for (std::int64_t l = 0; l < c.HW; ++l) { const double w = std::exp(x[l] - mx); sum += w; sx += w * x[l]; }
                    const double lse = mx + std::log(sum);
                    const std::size_t o = fx.pm(b, h, kf, j);
                    rcl[o] = sx / sum - lse;
                    std::vector<double> ak(std::size_t(c.d), 0.0), av(std::size_t(c.d), 0.0);
                    for (std::int64_t l = 0; l < c.HW; ++l) {
                        const double r = std::exp(x[l] - lse);
                        const std::size_t base = fx.ui(b, kf, l, h, 0);
                        for (std::int64_t e = 0; e < c.d; ++e) {
                            ak[e] += r * fx.k.values[base + e];
                            av[e] += r * fx.v.values[base + e];
                        }
                    }
                    for (std::int64_t e = 0; e < c.d; ++e) {
                        ral[o * c.d + e] = fx.s * ak[e];
                        ry[o * c.d + e] = av[e];
                    }
                }
    check("R-step aL", c, al, ral);
    check("R-step cL", c, cl, rcl);
    check("R-step y", c, y, ry);
}

// L-step, middle (aR, cR) and last (O, LSE), from aL, cL, y written into the workspace.
TEST_P(Kernels, LStep) {
    REQUIRE_GPU();
    const KCase c = GetParam();
    Fixture fx(c, 2, 1.0);
    // aL ~ s·(weighted K), cL ~ −entropy (negative, a few units), y ~ V averages.
    const auto al = fx.write_vec(fx.wl.al, random_normal(fx.rows() * c.d, 1.0 / std::sqrt(double(c.d)) * 3.0, 21));
    std::vector<double> clv(fx.rows());
    std::mt19937_64 gen(22);
    std::uniform_real_distribution<double> ud(-6.0, 0.0);
    for (auto& x : clv) x = ud(gen);
    const auto cl = fx.write_f32(fx.wl.cl, clv);
    const auto y = fx.write_vec(fx.wl.y, random_normal(fx.rows() * c.d, 0.5, 23));
    GpuLse lse(c.B, c.heads, fx.N, true);
    fx.p.lse = &lse.view;

    MonarchPlan plan(fx.p, fx.ws.get());
    vmonarch::cuda::launch_lstep(plan.lstep_params(0), nullptr, "test L-step (middle)");
    vmonarch::cuda::launch_lstep(plan.lstep_params(1), nullptr, "test L-step (last)");
    CUDA_OK(cudaDeviceSynchronize());
    const auto ar = fx.read_vec(fx.wl.ar), cr = fx.read_f32(fx.wl.cr), out = fx.out.read(), lv = lse.read();

    std::vector<double> rar(ar.size()), rcr(cr.size()), rout(out.size()), rl(lv.size()), z(std::size_t(c.T * c.T));
    for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t h = 0; h < c.heads; ++h)
            for (std::int64_t j = 0; j < c.HW; ++j) {
                for (std::int64_t i = 0; i < c.T; ++i) {
                    double mx = -INFINITY;
                    for (std::int64_t kf = 0; kf < c.T; ++kf) {
                        double dot = 0;
                        const std::size_t a = fx.pm(b, h, kf, j);
                        for (std::int64_t e = 0; e < c.d; ++e) dot += fx.q.values[fx.ui(b, i, j, h, e)] * al[a * c.d + e];
                        z[i * c.T + kf] = dot - cl[a];
                        mx = std::max(mx, z[i * c.T + kf]);
                    }
                    double sum = 0;
                    for (std::int64_t kf = 0; kf < c.T; ++kf) sum += std::exp(z[i * c.T + kf] - mx);
                    for (std::int64_t kf = 0; kf < c.T; ++kf) z[i * c.T + kf] = std::exp(z[i * c.T + kf] - mx) / sum;
                    rl[std::size_t((b * c.heads + h) * fx.N + i * c.HW + j)] = mx + std::log(sum);
                    for (std::int64_t e = 0; e < c.d; ++e) {
                        double o = 0;
                        for (std::int64_t kf = 0; kf < c.T; ++kf) o += z[i * c.T + kf] * y[fx.pm(b, h, kf, j) * c.d + e];
                        rout[fx.ui(b, i, j, h, e)] = o;
                    }
                }
                for (std::int64_t kf = 0; kf < c.T; ++kf) {
                    double cs = 0;
                    for (std::int64_t i = 0; i < c.T; ++i) cs += z[i * c.T + kf];
                    rcr[fx.fm(b, h, kf, j)] = cs;
                    for (std::int64_t e = 0; e < c.d; ++e) {
                        double a = 0;
                        for (std::int64_t i = 0; i < c.T; ++i) a += z[i * c.T + kf] * fx.q.values[fx.ui(b, i, j, h, e)];
                        rar[fx.fm(b, h, kf, j) * c.d + e] = a;
                    }
                }
            }
    check("L-step aR", c, ar, rar);
    check("L-step cR", c, cr, rcr);
    check("L-step O", c, out, rout);
    check("L-step lse", c, lv, rl);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Kernels,
                         ::testing::Values(KCase{1, 1, 1, 1, 64, DType::bf16, Layout::bshd},
                                           KCase{2, 3, 3, 65, 128, DType::bf16, Layout::bhsd},
                                           KCase{1, 2, 21, 63, 64, DType::f16, Layout::bshd},
                                           KCase{1, 1, 2, 1456, 128, DType::f16, Layout::bshd},
                                           KCase{1, 1, 33, 7, 128, DType::bf16, Layout::bhsd},
                                           KCase{1, 2, 16, 9, 128, DType::f16, Layout::bhsd},     // L-step MT = 1, full tile
                                           KCase{1, 2, 48, 5, 64, DType::bf16, Layout::bshd},     // L-step MT = 3, full tile
                                           KCase{1, 2, 64, 9, 64, DType::bf16, Layout::bshd}),    // CUDA-core L-step (T > 48)
                         [](const ::testing::TestParamInfo<KCase>& i) { return case_name(i.param); });

} // namespace
} // namespace gputest
