// The exact-key-group pieces of the kernels on their own (spec §3b): the L-step's masking of sink frames and
// of a temporal window, its fused log-sum-exp merge with an exact group in the last step, and the merge
// kernel, each against a host double computation of the documented formula on the same rounded inputs.
// The rows of key frames that no query frame fits, and the outputs of empty groups, are NaN-poisoned: a kernel
// that read them would leak NaN.
#include <gtest/gtest.h>

#include <array>
#include <limits>
#include <sstream>

#include "cuda/common/kernel_params.hpp"
#include "gpu_test_util.hpp"

namespace gputest {
namespace {

using vmonarch::cuda::Elem;
using vmonarch::cuda::LseMergeParams;
using vmonarch::cuda::LStepParams;
using vmonarch::cuda::RowView;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// A [b][h][f][r] grid of rows of C values (16-bit `dtype`, or f32 when f32 = true) on the GPU, stored with its
// four dims nested in `order` (outermost first; 0 = b, 1 = h, 2 = f, 3 = r), plus the values as stored, in
// logical order.
struct Rows {
    std::int64_t B, H, F, R, C;
    DType dtype;
    bool f32;
    std::array<std::int64_t, 4> stride{};
    DeviceBuffer buf;
    RowView view;
    std::vector<double> vals;

    Rows(std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r, std::int64_t c, DType dt, bool is_f32,
         std::array<int, 4> order)
        : B(b), H(h), F(f), R(r), C(c), dtype(dt), f32(is_f32), buf(std::size_t(b * h * f * r * c) * (is_f32 ? 4 : 2)),
          vals(std::size_t(b * h * f * r * c), 0.0) {
        const std::array<std::int64_t, 4> extent{b, h, f, r};
        std::int64_t s = c;
        for (int o = 3; o >= 0; --o) {
            stride[std::size_t(order[std::size_t(o)])] = s;
            s *= extent[std::size_t(order[std::size_t(o)])];
        }
        view.ptr = buf.get();
        view.sb = stride[0]; view.sh = stride[1]; view.sf = stride[2]; view.sr = stride[3];
    }
    std::size_t li(std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r) const {
        return std::size_t((((b * H + h) * F + f) * R + r) * C);
    }
    std::int64_t off(std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r) const {
        return b * stride[0] + h * stride[1] + f * stride[2] + r * stride[3];
    }
    template <typename G> void each(G&& g) const {
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t f = 0; f < F; ++f)
                    for (std::int64_t r = 0; r < R; ++r) g(b, h, f, r);
    }
    // Sets every value to gen(b, h, f, r, c) (rounded to the storage type) and uploads.
    template <typename G> void fill(G&& gen) {
        std::vector<std::uint16_t> h16(f32 ? 0 : vals.size());
        std::vector<float> h32(f32 ? vals.size() : 0);
        each([&](std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r) {
            for (std::int64_t c = 0; c < C; ++c) {
                const double x = gen(b, h, f, r, c);
                const std::size_t o = std::size_t(off(b, h, f, r) + c), l = li(b, h, f, r) + std::size_t(c);
                if (f32) {
                    h32[o] = float(x);
                    vals[l] = h32[o];
                } else {
                    h16[o] = to_bits(x, dtype);
                    vals[l] = from_bits(h16[o], dtype);
                }
            }
        });
        if (f32) buf.upload(h32.data(), h32.size() * 4);
        else buf.upload(h16.data(), h16.size() * 2);
    }
    // Device contents in logical order, as doubles, and as raw bits (16-bit or f32 bit patterns).
    std::vector<double> read() const {
        std::vector<double> out(vals.size());
        const auto bits = raw();
        for (std::size_t i = 0; i < out.size(); ++i) {
            if (f32) {
                float x;
                const std::uint32_t u = bits[i];
                std::memcpy(&x, &u, 4);
                out[i] = x;
            } else {
                out[i] = from_bits(std::uint16_t(bits[i]), dtype);
            }
        }
        return out;
    }
    std::vector<std::uint32_t> raw() const {
        std::vector<std::uint32_t> out(vals.size());
        if (f32) {
            const auto h = buf.read<std::uint32_t>(vals.size());
            each([&](std::int64_t b, std::int64_t hh, std::int64_t f, std::int64_t r) {
                for (std::int64_t c = 0; c < C; ++c) out[li(b, hh, f, r) + std::size_t(c)] = h[std::size_t(off(b, hh, f, r) + c)];
            });
        } else {
            const auto h = buf.read<std::uint16_t>(vals.size());
            each([&](std::int64_t b, std::int64_t hh, std::int64_t f, std::int64_t r) {
                for (std::int64_t c = 0; c < C; ++c) out[li(b, hh, f, r) + std::size_t(c)] = h[std::size_t(off(b, hh, f, r) + c)];
            });
        }
        return out;
    }
};

constexpr std::array<int, 4> kFrameMajor{0, 1, 2, 3};    // [b][h][f][r]
constexpr std::array<int, 4> kPositionMajor{0, 1, 3, 2}; // [b][h][r][f]: the workspace's aL, cL, y
constexpr std::array<int, 4> kUserBshd{0, 2, 3, 1};      // [b][f·R + r][h]: a user tensor in BSHD

// Uniform [lo, hi) values from a seed, by index.
struct Uniform {
    std::mt19937_64 gen;
    std::uniform_real_distribution<double> dist;
    Uniform(std::uint64_t seed, double lo, double hi) : gen(seed), dist(lo, hi) {}
    double operator()() { return dist(gen); }
};

// How the last step is asked to merge: not at all, with exact_lse its own buffer, exact_lse = lse, or with
// exact_lse and no lse output (only out is written).
enum class Merge { none, separate, alias, out_only };
const char* name(Merge m) {
    switch (m) {
    case Merge::none: return "nomerge";
    case Merge::separate: return "merge";
    case Merge::alias: return "mergealias";
    default: return "mergeoutonly";
    }
}

struct XCase {
    std::int64_t B, heads, T, HW, d;
    DType dtype;
    std::int64_t S, r; // sink frames, window radius (< 0: none)
    Merge merge;
    bool skip0;
};

std::string case_name(const XCase& c) {
    std::ostringstream os;
    os << "B" << c.B << "h" << c.heads << "_T" << c.T << "_HW" << c.HW << "_d" << c.d << "_" << vmonarch::to_string(c.dtype)
       << "_S" << c.S << "_r" << (c.r < 0 ? std::string("none") : std::to_string(c.r)) << "_" << name(c.merge)
       << (c.skip0 ? "_skip0" : "");
    return os.str();
}

void PrintTo(const XCase& c, std::ostream* os) { *os << case_name(c); }

// spec §3b: key frame k is exact for query frame i when k < S or |i − k| <= r (r < 0: no window).
bool exact(const XCase& c, std::int64_t i, std::int64_t k) {
    return k < c.S || (c.r >= 0 && std::abs(i - k) <= c.r);
}
bool fitted(const XCase& c, std::int64_t k) {
    for (std::int64_t i = 0; i < c.T; ++i)
        if (!exact(c, i, k)) return true;
    return false;
}

// lse rows: −inf exactly where the reference has −inf, no NaN, finite ones within a relative L2 of 1e-4.
void check_lse(const char* what, const std::string& cn, const std::vector<double>& got, const std::vector<double>& ref) {
    std::size_t mismatched_inf = 0, nan = 0;
    std::vector<double> g, r;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        nan += std::isnan(got[i]);
        if (ref[i] == kNegInf || got[i] == kNegInf) {
            mismatched_inf += !(ref[i] == kNegInf && got[i] == kNegInf);
            continue;
        }
        g.push_back(got[i]);
        r.push_back(ref[i]);
    }
    EXPECT_EQ(nan, 0u) << what << " " << cn;
    EXPECT_EQ(mismatched_inf, 0u) << what << " " << cn << ": rows that are -inf in one of got/ref only";
    const double err = r.empty() ? 0.0 : rel_l2(g, r);
    EXPECT_LE(err, 1e-4) << what << " " << cn;
    std::printf("[ exact    ] %-52s %-10s rel-L2 %.2e (%zu finite of %zu)\n", cn.c_str(), what, err, r.size(), ref.size());
}

void check_rows(const char* what, const std::string& cn, DType dt, const std::vector<double>& got, const std::vector<double>& ref) {
    EXPECT_EQ(count_nonfinite(got), 0u) << what << " " << cn;
    const double err = rel_l2(got, ref), tol = tolerance(dt);
    EXPECT_LE(err, tol) << what << " " << cn;
    std::printf("[ exact    ] %-52s %-10s rel-L2 %.2e (tol %.0e)\n", cn.c_str(), what, err, tol);
}

// The operands of one L-step problem: user q and out (BSHD), workspace aL, cL, y (position-major), aR, cR
// (frame-major), lse and the exact group's (O_E in out, LSE_E) as the last step gets them.
struct LStepFixture {
    XCase c;
    Elem elem;
    Rows q, a, cl, y, ar, cr, out, lse, exact_lse;
    double oe_nan_share = 1.0 / 7.0; // share of rows whose exact group is empty (LSE_E = −inf, O_E NaN)

    explicit LStepFixture(const XCase& xc)
        : c(xc), elem(xc.dtype == DType::bf16 ? Elem::bf16 : Elem::f16),
          q(c.B, c.heads, c.T, c.HW, c.d, c.dtype, false, kUserBshd), a(c.B, c.heads, c.T, c.HW, c.d, c.dtype, false, kPositionMajor),
          cl(c.B, c.heads, c.T, c.HW, 1, c.dtype, true, kPositionMajor), y(c.B, c.heads, c.T, c.HW, c.d, c.dtype, false, kPositionMajor),
          ar(c.B, c.heads, c.T, c.HW, c.d, c.dtype, false, kFrameMajor), cr(c.B, c.heads, c.T, c.HW, 1, c.dtype, true, kFrameMajor),
          out(c.B, c.heads, c.T, c.HW, c.d, c.dtype, false, kUserBshd), lse(c.B, c.heads, c.T, c.HW, 1, c.dtype, true, kFrameMajor),
          exact_lse(c.B, c.heads, c.T, c.HW, 1, c.dtype, true, kFrameMajor) {
        const double nan = std::nan("");
        const auto qv = random_normal(q.vals.size(), 301, 1.0), av = random_normal(a.vals.size(), 302, 3.0 / std::sqrt(double(c.d)));
        const auto yv = random_normal(y.vals.size(), 303, 0.5);
        Uniform uc(304, -6.0, 0.0);
        std::vector<double> cv(cl.vals.size());
        for (auto& x : cv) x = uc();
        // Rows of key frames no query frame fits had no R-step: NaN, never to be read.
        q.fill([&](auto b, auto h, auto f, auto r, auto e) { return qv[q.li(b, h, f, r) + std::size_t(e)]; });
        a.fill([&](auto b, auto h, auto f, auto r, auto e) { return fitted(c, f) ? av[a.li(b, h, f, r) + std::size_t(e)] : nan; });
        y.fill([&](auto b, auto h, auto f, auto r, auto e) { return fitted(c, f) ? yv[y.li(b, h, f, r) + std::size_t(e)] : nan; });
        cl.fill([&](auto b, auto h, auto f, auto r, auto) { return fitted(c, f) ? cv[cl.li(b, h, f, r)] : nan; });
        ar.fill([&](auto, auto, auto, auto, auto) { return nan; });
        cr.fill([&](auto, auto, auto, auto, auto) { return nan; });
        reset_outputs();
    }

    // out holds O_E (NaN for rows whose exact group is empty, sentinel 3 in frame 0, which skip0 must leave
    // alone), exact_lse LSE_E in [0, 12) or −inf; lse a sentinel 12345 (or LSE_E when it aliases exact_lse).
    void reset_outputs() {
        const auto ov = random_normal(out.vals.size(), 305, 0.5);
        Uniform ul(306, 0.0, 12.0), pick(307, 0.0, 1.0);
        std::vector<double> lv(exact_lse.vals.size());
        for (auto& x : lv) x = pick() < oe_nan_share ? kNegInf : ul();
        const bool merging = c.merge != Merge::none;
        exact_lse.fill([&](auto b, auto h, auto f, auto r, auto) {
            return merging && !(c.skip0 && f == 0) ? lv[exact_lse.li(b, h, f, r)] : 12345.0;
        });
        out.fill([&](auto b, auto h, auto f, auto r, auto e) {
            if (c.skip0 && f == 0) return 3.0;
            if (!merging) return std::nan("");
            return lv[exact_lse.li(b, h, f, r)] == kNegInf ? std::nan("") : ov[out.li(b, h, f, r) + std::size_t(e)];
        });
        lse.fill([&](auto b, auto h, auto f, auto r, auto) {
            return c.merge == Merge::alias ? exact_lse.vals[exact_lse.li(b, h, f, r)] : 12345.0;
        });
    }

    LStepParams params(bool last) const {
        LStepParams p;
        p.elem = elem;
        p.head_dim = int(c.d);
        p.q = q.view; p.a = a.view; p.c = cl.view;
        p.last = last;
        if (last) {
            p.y = y.view;
            p.out = out.view;
            if (c.merge != Merge::out_only) p.lse = c.merge == Merge::alias ? exact_lse.view : lse.view;
            if (c.merge != Merge::none) p.exact_lse = exact_lse.view;
            p.skip_frame0 = c.skip0;
        } else {
            p.ar = ar.view;
            p.cr = cr.view;
        }
        p.frames = c.T;
        p.positions = c.HW;
        p.heads = int(c.heads);
        p.batch = int(c.B);
        p.sink_frames = c.S;
        p.window_radius = c.r;
        return p;
    }
};

// Host double L-step of spec §3 with the masking and merge of §3b on the fixture's rounded inputs.
struct LStepReference {
    std::vector<double> ar, cr, out, lse; // logical orders of the fixture's ar, cr, out, (exact_)lse

    explicit LStepReference(const LStepFixture& fx) {
        const XCase& c = fx.c;
        ar.assign(fx.ar.vals.size(), 0.0);
        cr.assign(fx.cr.vals.size(), 0.0);
        out = fx.out.vals; // frame 0 with skip0 keeps its contents
        lse.assign(fx.lse.vals.size(), 12345.0);
        if (c.merge == Merge::alias) lse = fx.exact_lse.vals;
        std::vector<double> z(std::size_t(c.T)), om(std::size_t(c.d));
        for (std::int64_t b = 0; b < c.B; ++b)
            for (std::int64_t h = 0; h < c.heads; ++h)
                for (std::int64_t j = 0; j < c.HW; ++j)
                    for (std::int64_t i = 0; i < c.T; ++i) {
                        const double* qi = &fx.q.vals[fx.q.li(b, h, i, j)];
                        double mx = kNegInf;
                        for (std::int64_t k = 0; k < c.T; ++k) {
                            if (exact(c, i, k)) {
                                z[std::size_t(k)] = kNegInf;
                                continue;
                            }
                            double dot = 0;
                            const double* ak = &fx.a.vals[fx.a.li(b, h, k, j)];
                            for (std::int64_t e = 0; e < c.d; ++e) dot += qi[e] * ak[e];
                            z[std::size_t(k)] = dot - fx.cl.vals[fx.cl.li(b, h, k, j)];
                            mx = std::max(mx, z[std::size_t(k)]);
                        }
                        double F = kNegInf; // F = logsumexp_k z; L = softmax_k z (0 for a row without keys)
                        if (mx != kNegInf) {
                            double sum = 0;
                            for (std::int64_t k = 0; k < c.T; ++k) sum += std::exp(z[std::size_t(k)] - mx);
                            for (std::int64_t k = 0; k < c.T; ++k) z[std::size_t(k)] = std::exp(z[std::size_t(k)] - mx) / sum;
                            F = mx + std::log(sum);
                        } else {
                            std::fill(z.begin(), z.end(), 0.0);
                        }
                        // middle: cR(k) = Σ_i L[i][k], aR(k) = Σ_i L[i][k]·q_i
                        for (std::int64_t k = 0; k < c.T; ++k) {
                            cr[fx.cr.li(b, h, k, j)] += z[std::size_t(k)];
                            for (std::int64_t e = 0; e < c.d; ++e) ar[fx.ar.li(b, h, k, j) + std::size_t(e)] += z[std::size_t(k)] * qi[e];
                        }
                        // last: O_M = Σ_k L·y_k, merged with (O_E, LSE_E) by log-sum-exp
                        if (c.skip0 && i == 0) continue;
                        std::fill(om.begin(), om.end(), 0.0);
                        for (std::int64_t k = 0; k < c.T; ++k)
                            if (z[std::size_t(k)] != 0.0)
                                for (std::int64_t e = 0; e < c.d; ++e) om[std::size_t(e)] += z[std::size_t(k)] * fx.y.vals[fx.y.li(b, h, k, j) + std::size_t(e)];
                        double* o = &out[fx.out.li(b, h, i, j)];
                        double tot = F;
                        if (c.merge == Merge::none) {
                            for (std::int64_t e = 0; e < c.d; ++e) o[e] = om[std::size_t(e)];
                        } else {
                            const double le = fx.exact_lse.vals[fx.exact_lse.li(b, h, i, j)];
                            const double hi = std::max(F, le);
                            tot = hi == kNegInf ? kNegInf : hi + std::log(std::exp(F - hi) + std::exp(le - hi));
                            const double wm = F == kNegInf ? 0.0 : std::exp(F - tot), we = le == kNegInf ? 0.0 : std::exp(le - tot);
                            for (std::int64_t e = 0; e < c.d; ++e) o[e] = wm * om[std::size_t(e)] + (we == 0.0 ? 0.0 : we * o[e]);
                        }
                        if (c.merge != Merge::out_only) lse[fx.lse.li(b, h, i, j)] = tot;
                    }
    }
};

class ExactLStep : public ::testing::TestWithParam<XCase> {};

TEST_P(ExactLStep, MatchesHostDoubleAndLeavesPoisonUnread) {
    REQUIRE_GPU();
    const XCase c = GetParam();
    const std::string cn = case_name(c);
    LStepFixture fx(c);
    const LStepReference ref(fx);
    const auto frame0_bits = fx.out.raw();
    vmonarch::cuda::launch_lstep(fx.params(false), nullptr, "test exact L-step (middle)");
    vmonarch::cuda::launch_lstep(fx.params(true), nullptr, "test exact L-step (last)");
    CUDA_OK(cudaDeviceSynchronize());
    check_rows("aR", cn, c.dtype, fx.ar.read(), ref.ar);
    check_lse("cR", cn, fx.cr.read(), ref.cr);
    const auto out = fx.out.read();
    std::vector<double> got_rows, ref_rows; // rows the last step writes
    const auto out_bits = fx.out.raw();
    std::size_t frame0_changed = 0;
    fx.out.each([&](auto b, auto h, auto f, auto r) {
        const std::size_t l = fx.out.li(b, h, f, r);
        for (std::int64_t e = 0; e < c.d; ++e) {
            if (c.skip0 && f == 0) {
                frame0_changed += out_bits[l + std::size_t(e)] != frame0_bits[l + std::size_t(e)];
            } else {
                got_rows.push_back(out[l + std::size_t(e)]);
                ref_rows.push_back(ref.out[l + std::size_t(e)]);
            }
        }
    });
    EXPECT_EQ(frame0_changed, 0u) << "skip_frame0 must leave frame 0's out rows alone " << cn;
    check_rows("O", cn, c.dtype, got_rows, ref_rows);
    if (c.merge != Merge::out_only) {
        const Rows& l = c.merge == Merge::alias ? fx.exact_lse : fx.lse;
        check_lse("lse", cn, l.read(), ref.lse);
    } else {
        const auto untouched = fx.lse.read(); // no lse output: the sentinel stays
        EXPECT_EQ(std::count(untouched.begin(), untouched.end(), 12345.0), std::ptrdiff_t(untouched.size())) << cn;
    }
}

// T ≤ 48 runs the tensor-core L-step, T > 48 the CUDA-core fallback (lstep_launch.cu).
INSTANTIATE_TEST_SUITE_P(
    Shapes, ExactLStep,
    ::testing::Values(
        // tensor-core kernel
        XCase{1, 1, 1, 1, 64, DType::bf16, 0, -1, Merge::separate, false},  // T = 1, merge with the paper's fit
        XCase{1, 2, 1, 3, 128, DType::f16, 1, -1, Merge::separate, false},  // T = 1, S = T: every row exact
        XCase{2, 1, 1, 5, 64, DType::bf16, 0, 0, Merge::none, false},       // T = 1, r = 0: no key left, 0 / −inf
        XCase{2, 3, 5, 13, 128, DType::bf16, 1, -1, Merge::separate, false},
        XCase{1, 2, 5, 13, 64, DType::f16, 2, 1, Merge::alias, true},
        XCase{1, 2, 7, 11, 128, DType::f16, 0, 0, Merge::none, false},
        XCase{2, 2, 7, 11, 64, DType::bf16, 0, 1, Merge::out_only, false},
        XCase{1, 2, 9, 7, 128, DType::bf16, 9, -1, Merge::separate, true},  // S = T
        XCase{1, 1, 9, 7, 64, DType::f16, 12, -1, Merge::none, false},      // S > T, no merge: 0 / −inf
        XCase{1, 2, 9, 7, 64, DType::bf16, 0, 9, Merge::none, false},       // r = T: aR = cR = 0
        XCase{1, 1, 9, 7, 128, DType::f16, 1, 20, Merge::alias, false},     // r > T
        XCase{1, 2, 33, 5, 128, DType::bf16, 1, 1, Merge::separate, true},  // three 16-frame tiles
        XCase{2, 1, 21, 17, 64, DType::f16, 2, -1, Merge::none, true},      // two 16-frame tiles
        XCase{2, 2, 24, 5, 128, DType::bf16, 1, 2, Merge::alias, false},
        XCase{1, 1, 48, 3, 64, DType::bf16, 1, 2, Merge::separate, false},
        XCase{1, 1, 16, 9, 128, DType::f16, 3, 0, Merge::separate, false},
        // CUDA-core fallback
        XCase{1, 2, 53, 7, 64, DType::bf16, 1, 1, Merge::separate, false},
        XCase{1, 1, 49, 5, 128, DType::f16, 2, 0, Merge::none, true},
        XCase{2, 1, 51, 3, 128, DType::bf16, 60, -1, Merge::alias, false},  // S > T
        XCase{1, 1, 50, 3, 64, DType::f16, 0, 50, Merge::none, false},      // r = T
        XCase{1, 2, 57, 5, 128, DType::f16, 0, -1, Merge::out_only, true},
        XCase{1, 1, 61, 2, 64, DType::bf16, 2, 3, Merge::separate, true}),
    [](const ::testing::TestParamInfo<XCase>& i) { return case_name(i.param); });

std::size_t count_differing(const std::vector<std::uint32_t>& a, const std::vector<std::uint32_t>& b) {
    std::size_t n = a.size() == b.size() ? 0 : std::max(a.size(), b.size());
    for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += a[i] != b[i];
    return n;
}

// Merging with an exact group that is empty in every row (LSE_E = −inf, O_E NaN) reproduces the unmerged last
// step bit for bit; and with every key frame exact (S ≥ T) the merged rows are the exact group's, bit for bit.
TEST(ExactLStepBits, EmptyExactGroupIsTheIdentityAndAllExactRowsCopyIt) {
    REQUIRE_GPU();
    for (const std::int64_t T : {7, 50}) {
        for (const DType dt : {DType::bf16, DType::f16}) {
            XCase c{1, 2, T, 6, 128, dt, 0, -1, Merge::none, false};
            LStepFixture plain(c);
            vmonarch::cuda::launch_lstep(plain.params(true), nullptr, "test L-step (last, unmerged)");
            c.merge = Merge::separate;
            LStepFixture merged(c);
            merged.oe_nan_share = 1.0; // every exact group empty
            merged.reset_outputs();
            vmonarch::cuda::launch_lstep(merged.params(true), nullptr, "test L-step (last, empty exact groups)");
            CUDA_OK(cudaDeviceSynchronize());
            EXPECT_EQ(count_differing(plain.out.raw(), merged.out.raw()), 0u) << case_name(c);
            EXPECT_EQ(count_differing(plain.lse.raw(), merged.lse.raw()), 0u) << case_name(c);

            c.S = T; // every row exact: out = O_E, lse = LSE_E
            LStepFixture all(c);
            const auto oe = all.out.raw(), le = all.exact_lse.raw();
            vmonarch::cuda::launch_lstep(all.params(true), nullptr, "test L-step (last, S = T)");
            CUDA_OK(cudaDeviceSynchronize());
            const auto ob = all.out.raw();
            const auto lb = all.lse.raw();
            const auto lev = all.exact_lse.read();
            std::size_t differ = 0;
            all.out.each([&](auto b, auto h, auto f, auto r) {
                const bool empty = lev[all.exact_lse.li(b, h, f, r)] == kNegInf; // both groups empty: 0
                for (std::int64_t e = 0; e < c.d; ++e) {
                    const std::size_t i = all.out.li(b, h, f, r) + std::size_t(e);
                    differ += empty ? ob[i] != 0u : ob[i] != oe[i];
                }
            });
            EXPECT_EQ(differ, 0u) << case_name(c);
            EXPECT_EQ(count_differing(lb, le), 0u) << case_name(c);
        }
    }
}

TEST(ExactLStepErrors, NegativeSinkFramesAndMergeOnAMiddleStepAreNamed) {
    LStepParams p;
    p.frames = 4;
    p.positions = 3;
    p.sink_frames = -1;
    try {
        vmonarch::cuda::launch_lstep(p, nullptr, "test L-step");
        FAIL() << "expected CudaError";
    } catch (const vmonarch::CudaError& e) {
        EXPECT_NE(std::string(e.what()).find("sink_frames is -1"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("lstep<"), std::string::npos) << e.what();
    }
    p.sink_frames = 1;
    float dummy = 0.f;
    p.exact_lse.ptr = &dummy;
    p.last = false;
    try {
        vmonarch::cuda::launch_lstep(p, nullptr, "test L-step");
        FAIL() << "expected CudaError";
    } catch (const vmonarch::CudaError& e) {
        EXPECT_NE(std::string(e.what()).find("exact_lse"), std::string::npos) << e.what();
    }
}

// ---- merge kernel ------------------------------------------------------------------------------------

struct MCase {
    std::int64_t B, heads, segments, rows, dv;
    DType dtype;
};

std::string case_name(const MCase& c) {
    std::ostringstream os;
    os << "B" << c.B << "h" << c.heads << "_seg" << c.segments << "_rows" << c.rows << "_dv" << c.dv << "_"
       << vmonarch::to_string(c.dtype);
    return os.str();
}

void PrintTo(const MCase& c, std::ostream* os) { *os << case_name(c); }

class ExactLseMerge : public ::testing::TestWithParam<MCase> {};

// acc ⊕= part against doubles: rows with either side empty (lse −inf, output NaN: never read) and with both.
TEST_P(ExactLseMerge, MatchesHostDoubleWithEmptyGroups) {
    REQUIRE_GPU();
    const MCase c = GetParam();
    const std::string cn = case_name(c);
    Rows acc_o(c.B, c.heads, c.segments, c.rows, c.dv, c.dtype, false, kUserBshd);
    Rows part_o(c.B, c.heads, c.segments, c.rows, c.dv, c.dtype, false, kFrameMajor);
    Rows acc_l(c.B, c.heads, c.segments, c.rows, 1, c.dtype, true, kFrameMajor);
    Rows part_l(c.B, c.heads, c.segments, c.rows, 1, c.dtype, true, kPositionMajor);
    Uniform ul(401, -8.0, 8.0), pick(402, 0.0, 1.0);
    std::vector<double> la(acc_l.vals.size()), lp(la.size());
    for (std::size_t i = 0; i < la.size(); ++i) {
        const double u = pick(); // 1/6 acc empty, 1/6 part empty, 1/6 both, else both finite
        la[i] = u < 1.0 / 6 || (u >= 2.0 / 6 && u < 3.0 / 6) ? kNegInf : ul();
        lp[i] = (u >= 1.0 / 6 && u < 3.0 / 6) ? kNegInf : ul();
    }
    acc_l.fill([&](auto b, auto h, auto f, auto r, auto) { return la[acc_l.li(b, h, f, r)]; });
    part_l.fill([&](auto b, auto h, auto f, auto r, auto) { return lp[part_l.li(b, h, f, r)]; });
    const auto av = random_normal(acc_o.vals.size(), 403, 1.0), pv = random_normal(part_o.vals.size(), 404, 1.0);
    acc_o.fill([&](auto b, auto h, auto f, auto r, auto e) {
        return la[acc_l.li(b, h, f, r)] == kNegInf ? std::nan("") : av[acc_o.li(b, h, f, r) + std::size_t(e)];
    });
    part_o.fill([&](auto b, auto h, auto f, auto r, auto e) {
        return lp[part_l.li(b, h, f, r)] == kNegInf ? std::nan("") : pv[part_o.li(b, h, f, r) + std::size_t(e)];
    });

    std::vector<double> ref_o(acc_o.vals.size()), ref_l(acc_l.vals.size());
    acc_o.each([&](auto b, auto h, auto f, auto r) {
        const std::size_t lr = acc_l.li(b, h, f, r);
        const double a = acc_l.vals[lr], p = part_l.vals[part_l.li(b, h, f, r)], hi = std::max(a, p);
        const double tot = hi == kNegInf ? kNegInf : hi + std::log(std::exp(a - hi) + std::exp(p - hi));
        const double wa = a == kNegInf ? 0.0 : std::exp(a - tot), wp = p == kNegInf ? 0.0 : std::exp(p - tot);
        ref_l[lr] = tot;
        for (std::int64_t e = 0; e < c.dv; ++e) {
            const double xa = acc_o.vals[acc_o.li(b, h, f, r) + std::size_t(e)], xp = part_o.vals[part_o.li(b, h, f, r) + std::size_t(e)];
            ref_o[acc_o.li(b, h, f, r) + std::size_t(e)] = (wa == 0.0 ? 0.0 : wa * xa) + (wp == 0.0 ? 0.0 : wp * xp);
        }
    });

    LseMergeParams p;
    p.elem = c.dtype == DType::bf16 ? Elem::bf16 : Elem::f16;
    p.value_dim = int(c.dv);
    p.acc_o = acc_o.view; p.acc_lse = acc_l.view; p.part_o = part_o.view; p.part_lse = part_l.view;
    p.segments = c.segments; p.rows = c.rows; p.heads = int(c.heads); p.batch = int(c.B);
    vmonarch::cuda::launch_lse_merge(p, false, nullptr, "test lse merge");
    CUDA_OK(cudaDeviceSynchronize());
    check_rows("merged O", cn, c.dtype, acc_o.read(), ref_o);
    check_lse("merged lse", cn, acc_l.read(), ref_l);

    // clear: acc becomes the empty group (+0 outputs, −inf lse); part is not needed.
    p.part_o = RowView{};
    p.part_lse = RowView{};
    vmonarch::cuda::launch_lse_merge(p, true, nullptr, "test lse merge (clear)");
    CUDA_OK(cudaDeviceSynchronize());
    const auto cleared = acc_o.raw();
    const auto cleared_l = acc_l.read();
    EXPECT_EQ(std::count(cleared.begin(), cleared.end(), 0u), std::ptrdiff_t(cleared.size())) << cn;
    EXPECT_EQ(std::count(cleared_l.begin(), cleared_l.end(), kNegInf), std::ptrdiff_t(cleared_l.size())) << cn;
}

INSTANTIATE_TEST_SUITE_P(Shapes, ExactLseMerge,
                         ::testing::Values(MCase{1, 1, 1, 1, 64, DType::bf16}, MCase{2, 3, 5, 37, 128, DType::bf16},
                                           MCase{1, 2, 3, 1456, 64, DType::f16}, MCase{2, 1, 1, 226, 128, DType::f16},
                                           MCase{1, 2, 4, 19, 40, DType::bf16}, MCase{1, 1, 2, 7, 8, DType::f16},
                                           MCase{1, 1, 1, 3, 2048, DType::bf16}),
                         [](const ::testing::TestParamInfo<MCase>& i) { return case_name(i.param); });

TEST(ExactLseMergeErrors, BadValueDimAndMissingOperandsAreNamed) {
    LseMergeParams p;
    float dummy[8] = {};
    p.acc_o.ptr = p.acc_lse.ptr = dummy;
    p.value_dim = 12;
    try {
        vmonarch::cuda::launch_lse_merge(p, true, nullptr, "test merge");
        FAIL() << "expected CudaError";
    } catch (const vmonarch::CudaError& e) {
        EXPECT_NE(std::string(e.what()).find("lse_merge<"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("value dim 12"), std::string::npos) << e.what();
    }
    p.value_dim = 64;
    try {
        vmonarch::cuda::launch_lse_merge(p, false, nullptr, "test merge");
        FAIL() << "expected CudaError";
    } catch (const vmonarch::CudaError& e) {
        EXPECT_NE(std::string(e.what()).find("part_o"), std::string::npos) << e.what();
    }
}

} // namespace
} // namespace gputest
