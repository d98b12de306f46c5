// Exact key groups merged by log-sum-exp (spec §3b) and joint text+video attention (spec §3c) on the CPU,
// against an independent explicit construction (every R block and L row materialised, exact groups by full
// logit rows) and against the properties: S >= T and r >= T give dense attention, defaults are unchanged,
// implied rows sum to 1, LSE bounds, no NaN, and every argument error.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <tuple>

#include "support/expect_error.hpp"
#include "support/test_tensors.hpp"
#include "vmonarch/inspect.hpp"
#include "vmonarch/vmonarch.hpp"

using namespace vmtest;
using vmonarch::ArgumentError;
using vmonarch::ExtraKeys;
using vmonarch::Options;
using vmonarch::TextPosition;
using vmonarch::VideoGrid;

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Logical [B][n][H][D] values with video-like structure: keys and queries of one position share a component
// across frames; the first frame's keys are strong (an attention sink) so the exact groups matter.
std::vector<double> structured(std::int64_t B, std::int64_t n, std::int64_t H, std::int64_t D, std::int64_t hw,
                               std::uint64_t seed, double sharp) {
    auto x = random_normal(std::size_t(B * n * H * D), seed, sharp);
    const auto shared = random_normal(std::size_t(B * hw * H * D), seed + 100, sharp);
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t t = 0; t < n; ++t)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t c = 0; c < D; ++c) {
                    const std::size_t i = std::size_t(((b * n + t) * H + h) * D + c);
                    x[i] = 0.6 * x[i] + 0.8 * shared[std::size_t(((b * hw + t % hw) * H + h) * D + c)];
                }
    return x;
}

struct Case {
    VideoGrid grid;
    std::int64_t B = 2, H = 2, d = 16, dv = 16, L = 0;
    HostBuffer q, k, v, tk, tv; // tk, tv: [B, L, H, d] extra keys (L >= 1 only)
};

Case make_case(VideoGrid grid, std::int64_t B, std::int64_t H, std::int64_t d, std::int64_t dv, std::int64_t L,
               Layout layout, std::uint64_t seed) {
    Case c;
    c.grid = grid, c.B = B, c.H = H, c.d = d, c.dv = dv, c.L = L;
    const std::int64_t N = grid.tokens(), hw = grid.frame_tokens();
    auto q = structured(B, N, H, d, hw, seed, 1.5), k = structured(B, N, H, d, hw, seed + 1, 1.5);
    for (std::int64_t b = 0; b < B; ++b) // frame 0's keys: a sink (larger norm, aligned with the queries)
        for (std::int64_t t = 0; t < hw; ++t)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t x = 0; x < d; ++x) {
                    const std::size_t i = std::size_t(((b * N + t) * H + h) * d + x);
                    k[i] = 1.5 * k[i] + 0.5 * q[i];
                }
    c.q = HostBuffer(q, DType::f64, layout, B, N, H, d);
    c.k = HostBuffer(k, DType::f64, layout, B, N, H, d);
    c.v = HostBuffer(random_normal(std::size_t(B * N * H * dv), seed + 2), DType::f64, layout, B, N, H, dv);
    if (L > 0) {
        c.tk = HostBuffer(random_normal(std::size_t(B * L * H * d), seed + 3, 1.5), DType::f64, layout, B, L, H, d);
        c.tv = HostBuffer(random_normal(std::size_t(B * L * H * dv), seed + 4), DType::f64, layout, B, L, H, dv);
    }
    return c;
}

double at(const HostBuffer& t, std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t c) {
    const auto& s = t.view.shape;
    return t.values[std::size_t(((b * s[1] + n) * s[2] + h) * s[3] + c)];
}

// Explicit construction of one head (spec §3, §3b), written from the spec, sharing no code with the library:
// R blocks [k][j][l] and L rows [j][i][k] in full; each row's exact group by its full logit row.
struct Explicit {
    std::vector<double> out; // [N][dv]
    std::vector<double> lse; // [N]
};

Explicit explicit_head(const Case& c, const Options& o, const std::vector<std::int64_t>& lens, std::int64_t b,
                       std::int64_t h) {
    const std::int64_t T = c.grid.T, HW = c.grid.frame_tokens(), N = c.grid.tokens(), d = c.d, dv = c.dv;
    const double s = 1 / std::sqrt(double(d));
    const std::int64_t S = o.sink_frames, r = o.window_radius.value_or(-1);
    auto exact = [&](std::int64_t i, std::int64_t k) { return k < S || (r >= 0 && std::abs(i - k) <= r); };
    auto Q = [&](std::int64_t n, std::int64_t x) { return at(c.q, b, n, h, x); };
    auto K = [&](std::int64_t n, std::int64_t x) { return at(c.k, b, n, h, x); };
    auto V = [&](std::int64_t n, std::int64_t x) { return at(c.v, b, n, h, x); };
    std::vector<double> aR(static_cast<std::size_t>(N * d)), cR(static_cast<std::size_t>(N), 1.0), aL(static_cast<std::size_t>(N * d)), cL(static_cast<std::size_t>(N));
    std::vector<double> Y(static_cast<std::size_t>(N * dv)), Lm(static_cast<std::size_t>(HW * T * T)), F(static_cast<std::size_t>(N));
    for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t x = 0; x < d; ++x) aR[std::size_t(n * d + x)] = Q(n, x);
    for (int it = 0; it < o.iterations; ++it) {
        for (std::int64_t k = 0; k < T; ++k)
            for (std::int64_t j = 0; j < HW; ++j) {
                const std::int64_t n = k * HW + j;
                std::vector<double> logit(static_cast<std::size_t>(HW)), R(static_cast<std::size_t>(HW));
                double mx = kNegInf;
                for (std::int64_t l = 0; l < HW; ++l) {
                    double dot = 0;
                    for (std::int64_t x = 0; x < d; ++x) dot += aR[std::size_t(n * d + x)] * K(k * HW + l, x);
                    logit[std::size_t(l)] = s * dot / std::max(cR[std::size_t(n)], o.cr_clamp);
                    mx = std::max(mx, logit[std::size_t(l)]);
                }
                double z = 0;
                for (std::int64_t l = 0; l < HW; ++l) z += std::exp(logit[std::size_t(l)] - mx);
                double neg_entropy = 0;
                for (std::int64_t l = 0; l < HW; ++l) {
                    R[std::size_t(l)] = std::exp(logit[std::size_t(l)] - mx) / z;
                    if (R[std::size_t(l)] > 0) neg_entropy += R[std::size_t(l)] * std::log(R[std::size_t(l)]);
                }
                cL[std::size_t(n)] = neg_entropy;
                for (std::int64_t x = 0; x < d; ++x) {
                    double a = 0;
                    for (std::int64_t l = 0; l < HW; ++l) a += R[std::size_t(l)] * K(k * HW + l, x);
                    aL[std::size_t(n * d + x)] = s * a;
                }
                for (std::int64_t x = 0; x < dv; ++x) {
                    double y = 0;
                    for (std::int64_t l = 0; l < HW; ++l) y += R[std::size_t(l)] * V(k * HW + l, x);
                    Y[std::size_t(n * dv + x)] = y;
                }
            }
        for (std::int64_t j = 0; j < HW; ++j)
            for (std::int64_t i = 0; i < T; ++i) {
                std::vector<double> z(static_cast<std::size_t>(T), kNegInf);
                double mx = kNegInf;
                for (std::int64_t k = 0; k < T; ++k) {
                    if (exact(i, k)) continue;
                    double dot = 0;
                    for (std::int64_t x = 0; x < d; ++x) dot += Q(i * HW + j, x) * aL[std::size_t((k * HW + j) * d + x)];
                    z[std::size_t(k)] = dot - cL[std::size_t(k * HW + j)];
                    mx = std::max(mx, z[std::size_t(k)]);
                }
                double sum = 0;
                for (std::int64_t k = 0; k < T; ++k) sum += mx == kNegInf ? 0 : std::exp(z[std::size_t(k)] - mx);
                for (std::int64_t k = 0; k < T; ++k)
                    Lm[std::size_t((j * T + i) * T + k)] = mx == kNegInf ? 0 : std::exp(z[std::size_t(k)] - mx) / sum;
                F[std::size_t(i * HW + j)] = mx == kNegInf ? kNegInf : mx + std::log(sum);
            }
        if (it + 1 < o.iterations)
            for (std::int64_t k = 0; k < T; ++k)
                for (std::int64_t j = 0; j < HW; ++j) {
                    double cr = 0;
                    std::vector<double> ar(static_cast<std::size_t>(d), 0.0);
                    for (std::int64_t i = 0; i < T; ++i) {
                        const double w = Lm[std::size_t((j * T + i) * T + k)];
                        cr += w;
                        for (std::int64_t x = 0; x < d; ++x) ar[std::size_t(x)] += w * Q(i * HW + j, x);
                    }
                    cR[std::size_t(k * HW + j)] = cr;
                    for (std::int64_t x = 0; x < d; ++x) aR[std::size_t((k * HW + j) * d + x)] = ar[std::size_t(x)];
                }
    }
    // Each row: Monarch part (mass e^F) and its explicit exact keys (full logits), normalised together.
    Explicit e{std::vector<double>(static_cast<std::size_t>(N * dv), 0.0), std::vector<double>(static_cast<std::size_t>(N))};
    const std::int64_t valid = c.L > 0 ? lens[std::size_t(b)] : 0;
    for (std::int64_t i = 0; i < T; ++i)
        for (std::int64_t j = 0; j < HW; ++j) {
            const std::int64_t n = i * HW + j;
            const bool all_keys = i == 0 && o.recompute_first_frame;
            std::vector<std::pair<double, std::vector<double>>> terms; // (log weight, value vector)
            if (!all_keys && F[std::size_t(n)] != kNegInf) {
                std::vector<double> om(static_cast<std::size_t>(dv), 0.0);
                for (std::int64_t k = 0; k < T; ++k)
                    for (std::int64_t x = 0; x < dv; ++x)
                        om[std::size_t(x)] += Lm[std::size_t((j * T + i) * T + k)] * Y[std::size_t((k * HW + j) * dv + x)];
                terms.push_back({F[std::size_t(n)], om});
            }
            for (std::int64_t m = 0; m < N; ++m) {
                if (!all_keys && !exact(i, m / HW)) continue;
                double dot = 0;
                std::vector<double> val(static_cast<std::size_t>(dv));
                for (std::int64_t x = 0; x < d; ++x) dot += Q(n, x) * K(m, x);
                for (std::int64_t x = 0; x < dv; ++x) val[std::size_t(x)] = V(m, x);
                terms.push_back({s * dot, val});
            }
            for (std::int64_t m = 0; m < valid; ++m) {
                double dot = 0;
                std::vector<double> val(static_cast<std::size_t>(dv));
                for (std::int64_t x = 0; x < d; ++x) dot += Q(n, x) * at(c.tk, b, m, h, x);
                for (std::int64_t x = 0; x < dv; ++x) val[std::size_t(x)] = at(c.tv, b, m, h, x);
                terms.push_back({s * dot, val});
            }
            double mx = kNegInf;
            for (auto& t : terms) mx = std::max(mx, t.first);
            double sum = 0;
            for (auto& t : terms) sum += std::exp(t.first - mx);
            for (auto& t : terms)
                for (std::int64_t x = 0; x < dv; ++x)
                    e.out[std::size_t(n * dv + x)] += std::exp(t.first - mx) / sum * t.second[std::size_t(x)];
            e.lse[std::size_t(n)] = terms.empty() ? kNegInf : mx + std::log(sum);
        }
    return e;
}

struct Result {
    std::vector<double> out, lse; // out logical [B][N][H][dv]; lse [B][H][N]
};

Result run(Case& c, const Options& o, const std::vector<std::int64_t>* lens, Layout layout = Layout::bshd) {
    const std::int64_t N = c.grid.tokens();
    auto out = HostBuffer::empty(DType::f64, layout, c.B, N, c.H, c.dv);
    std::vector<double> lse(static_cast<std::size_t>(c.B * c.H * N), std::nan(""));
    auto lv = vmonarch::LseView::contiguous(lse.data(), DType::f64, vmonarch::Device::cpu, c.B, c.H, N);
    ExtraKeys extra{c.tk.view, c.tv.view, lens ? lens->data() : nullptr};
    vmonarch::attention(c.q.view, c.k.view, c.v.view, out.view, c.grid, o, &lv, nullptr, c.L > 0 ? &extra : nullptr);
    return {out.read(), lse};
}

Result explicit_all(const Case& c, const Options& o, const std::vector<std::int64_t>& lens) {
    const std::int64_t N = c.grid.tokens();
    Result r{std::vector<double>(std::size_t(c.B * N * c.H * c.dv)), std::vector<double>(std::size_t(c.B * c.H * N))};
    for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t h = 0; h < c.H; ++h) {
            const auto e = explicit_head(c, o, lens, b, h);
            for (std::int64_t n = 0; n < N; ++n) {
                for (std::int64_t x = 0; x < c.dv; ++x)
                    r.out[std::size_t(((b * N + n) * c.H + h) * c.dv + x)] = e.out[std::size_t(n * c.dv + x)];
                r.lse[std::size_t((b * c.H + h) * N + n)] = e.lse[std::size_t(n)];
            }
        }
    return r;
}

Options opts(int t, std::int64_t S, std::optional<std::int64_t> r, bool recompute = true) {
    Options o;
    o.iterations = t;
    o.sink_frames = S;
    o.window_radius = r;
    o.recompute_first_frame = recompute;
    return o;
}

} // namespace

// ---- fast path == explicit construction -------------------------------------------------------------

using ExactCase = std::tuple<VideoGrid, int /*t*/, std::int64_t /*S*/, std::int64_t /*r, -1 none*/, bool /*recompute*/,
                             std::int64_t /*d*/, std::int64_t /*L*/>;

class ExactVsExplicit : public ::testing::TestWithParam<ExactCase> {};

TEST_P(ExactVsExplicit, OutputAndLseMatch) {
    const auto [grid, t, S, r, recompute, d, L] = GetParam();
    for (Layout layout : {Layout::bshd, Layout::bhsd}) {
        auto c = make_case(grid, 2, 2, d, d, L, layout, 7 + std::uint64_t(S * 3 + r + 2 * L));
        const std::vector<std::int64_t> lens{L, L / 2}; // batch > 1 with different valid lengths
        const Options o = opts(t, S, r >= 0 ? std::optional<std::int64_t>(r) : std::nullopt, recompute);
        const auto got = run(c, o, L > 0 ? &lens : nullptr, layout);
        const auto ref = explicit_all(c, o, lens);
        ASSERT_TRUE(all_finite(got.out));
        ASSERT_TRUE(all_finite(got.lse));
        EXPECT_LT(rel_l2(got.out, ref.out), 1e-12);
        EXPECT_LT(max_abs_diff(got.lse, ref.lse), 1e-10);
    }
}

INSTANTIATE_TEST_SUITE_P(
    SinksWindowsText, ExactVsExplicit,
    ::testing::Values(ExactCase{{3, 1, 7}, 2, 1, -1, true, 16, 0},   // S = 1, prime HW, odd T
                      ExactCase{{5, 2, 3}, 2, 2, -1, false, 16, 0},  // S = 2, no recompute
                      ExactCase{{5, 2, 3}, 1, 0, 0, true, 16, 0},    // r = 0
                      ExactCase{{5, 2, 3}, 2, 0, 1, false, 16, 0},   // r = 1
                      ExactCase{{5, 2, 3}, 2, 1, 1, true, 16, 0},    // S = 1 and r = 1
                      ExactCase{{7, 1, 3}, 3, 2, 1, false, 8, 0},    // windows touching the sinks
                      ExactCase{{4, 2, 2}, 2, 0, -1, true, 16, 5},   // text only
                      ExactCase{{4, 2, 2}, 2, 1, 1, false, 64, 3},   // everything, d = 64
                      ExactCase{{3, 2, 2}, 2, 1, -1, true, 128, 4},  // d = 128
                      ExactCase{{1, 3, 5}, 2, 0, -1, true, 16, 4}));  // T = 1 with text

// ---- properties --------------------------------------------------------------------------------------

TEST(ExactGroups, DefaultsAreTheUnchangedAlgorithm) {
    auto c = make_case({4, 2, 3}, 2, 2, 16, 16, 0, Layout::bshd, 3);
    const auto plain = run(c, Options{}, nullptr);
    Options o;
    o.sink_frames = 0;
    o.window_radius = std::nullopt;
    std::vector<std::int64_t> none{0, 0};
    auto with_empty_text = make_case({4, 2, 3}, 2, 2, 16, 16, 0, Layout::bshd, 3);
    ExtraKeys empty{vmonarch::TensorView::bshd(nullptr, DType::f64, vmonarch::Device::cpu, 2, 0, 2, 16),
                    vmonarch::TensorView::bshd(nullptr, DType::f64, vmonarch::Device::cpu, 2, 0, 2, 16), none.data()};
    auto out = HostBuffer::empty(DType::f64, Layout::bshd, 2, 24, 2, 16);
    vmonarch::attention(with_empty_text.q.view, with_empty_text.k.view, with_empty_text.v.view, out.view,
                        with_empty_text.grid, o, nullptr, nullptr, &empty);
    EXPECT_EQ(out.read(), plain.out) << "S = 0, no window and L = 0 must be bit-identical to the paper's algorithm";
}

TEST(ExactGroups, AllFramesExactIsDenseAttention) {
    for (const auto& o : {opts(2, 4, std::nullopt), opts(2, 9, std::nullopt, false), opts(1, 0, 4, false),
                          opts(2, 0, 100), opts(2, 2, 3, false)}) {
        auto c = make_case({4, 3, 5}, 2, 2, 16, 16, 3, Layout::bshd, 9);
        const std::vector<std::int64_t> lens{3, 1};
        const auto got = run(c, o, &lens);
        // Dense over video + valid text keys, per batch element, from the explicit construction with S = T.
        const auto ref = explicit_all(c, opts(1, 4, std::nullopt, false), lens);
        EXPECT_LT(max_abs_diff(got.out, ref.out), 1e-12) << "S=" << o.sink_frames;
        EXPECT_LT(max_abs_diff(got.lse, ref.lse), 1e-12);
    }
}

TEST(ExactGroups, UnitValuesGiveOnesAndLseBounds) {
    // v = 1: every implied attention row sums to 1, so the output is 1 wherever it came from.
    auto c = make_case({5, 2, 3}, 2, 2, 16, 4, 4, Layout::bhsd, 12);
    c.v = HostBuffer(std::vector<double>(std::size_t(2 * 30 * 2 * 4), 1.0), DType::f64, Layout::bhsd, 2, 30, 2, 4);
    c.tv = HostBuffer(std::vector<double>(std::size_t(2 * 4 * 2 * 4), 1.0), DType::f64, Layout::bhsd, 2, 4, 2, 4);
    const std::vector<std::int64_t> lens{4, 0}; // second batch element: no valid text key
    for (const auto& o : {opts(2, 1, std::nullopt), opts(1, 1, 1, false), opts(2, 0, 0, true)}) {
        const auto got = run(c, o, &lens);
        for (double x : got.out) ASSERT_NEAR(x, 1.0, 1e-12);
        // Monarch rows: lse <= the dense lse over every valid key; exact-only rows (here frame 0) equal it.
        const auto dense = explicit_all(c, opts(1, 5, std::nullopt, false), lens);
        for (std::size_t i = 0; i < got.lse.size(); ++i) {
            EXPECT_LE(got.lse[i], dense.lse[i] + 1e-12);
            if (std::int64_t(i) % 30 < 6 && o.recompute_first_frame) EXPECT_NEAR(got.lse[i], dense.lse[i], 1e-12);
        }
    }
}

TEST(ExactGroups, RowsWithoutMonarchKeysAreExactNotNaN) {
    // T = 2, r = 1: every key frame is exact for every query frame: no Monarch part anywhere, no R-step.
    auto c = make_case({2, 1, 3}, 1, 1, 8, 8, 0, Layout::bshd, 4);
    const auto got = run(c, opts(2, 0, 1, false), nullptr);
    const auto ref = explicit_all(c, opts(1, 2, std::nullopt, false), {});
    ASSERT_TRUE(all_finite(got.out));
    EXPECT_LT(max_abs_diff(got.out, ref.out), 1e-12);
    EXPECT_LT(max_abs_diff(got.lse, ref.lse), 1e-12);
}

TEST(ExactGroups, LowPrecisionInputsStayClose) {
    for (DType dt : {DType::f32, DType::bf16}) {
        auto c = make_case({4, 2, 5}, 1, 2, 32, 32, 6, Layout::bshd, 30);
        const std::vector<std::int64_t> lens{5};
        const Options o = opts(2, 1, 1);
        const auto ref = run(c, o, &lens).out;
        Case lo = c;
        auto cast = [&](const HostBuffer& t, std::int64_t n, std::int64_t dim) {
            return HostBuffer(t.values, dt, Layout::bshd, 1, n, 2, dim);
        };
        lo.q = cast(c.q, 40, 32), lo.k = cast(c.k, 40, 32), lo.v = cast(c.v, 40, 32);
        lo.tk = cast(c.tk, 6, 32), lo.tv = cast(c.tv, 6, 32);
        auto out = HostBuffer::empty(dt, Layout::bshd, 1, 40, 2, 32);
        ExtraKeys extra{lo.tk.view, lo.tv.view, lens.data()};
        vmonarch::attention(lo.q.view, lo.k.view, lo.v.view, out.view, lo.grid, o, nullptr, nullptr, &extra);
        EXPECT_LT(rel_l2(out.read(), ref), dt == DType::f32 ? 1e-5 : 3e-2) << vmonarch::to_string(dt);
    }
}

// ---- joint sequences ---------------------------------------------------------------------------------

TEST(JointAttention, MatchesVideoAndTextPartsInSequenceOrder) {
    const VideoGrid grid{3, 2, 3};
    const std::int64_t N = 18, L = 5, B = 2, H = 2, d = 16;
    for (TextPosition pos : {TextPosition::first, TextPosition::last})
        for (Layout layout : {Layout::bshd, Layout::bhsd}) {
            auto c = make_case(grid, B, H, d, d, L, layout, 50);
            const std::vector<std::int64_t> lens{L, 2};
            // The joint sequence: video and text concatenated along the tokens, in the given order.
            auto join = [&](const HostBuffer& video, const HostBuffer& text) {
                std::vector<double> x(static_cast<std::size_t>(B * (N + L) * H * d));
                for (std::int64_t b = 0; b < B; ++b)
                    for (std::int64_t n = 0; n < N + L; ++n)
                        for (std::int64_t h = 0; h < H; ++h)
                            for (std::int64_t e = 0; e < d; ++e) {
                                const bool text_token = pos == TextPosition::first ? n < L : n >= N;
                                const std::int64_t m = pos == TextPosition::first ? (text_token ? n : n - L)
                                                                                  : (text_token ? n - N : n);
                                x[std::size_t(((b * (N + L) + n) * H + h) * d + e)] =
                                    text_token ? at(text, b, m, h, e) : at(video, b, m, h, e);
                            }
                return HostBuffer(x, DType::f64, layout, B, N + L, H, d);
            };
            // Text queries: reuse the text keys' values as queries (any values do).
            const auto q = join(c.q, c.tk), k = join(c.k, c.tk), v = join(c.v, c.tv);
            auto out = HostBuffer::empty(DType::f64, layout, B, N + L, H, d);
            std::vector<double> lse(static_cast<std::size_t>(B * H * (N + L)), std::nan(""));
            auto lv = vmonarch::LseView::contiguous(lse.data(), DType::f64, vmonarch::Device::cpu, B, H, N + L);
            const Options o = opts(2, 1, std::nullopt);
            vmonarch::joint_attention(q.view, k.view, v.view, out.view, grid, L, pos, lens.data(), o, &lv);
            const auto video = run(c, o, &lens, layout);
            const auto got = out.read();
            const std::int64_t v0 = pos == TextPosition::first ? L : 0, t0 = pos == TextPosition::first ? 0 : N;
            for (std::int64_t b = 0; b < B; ++b)
                for (std::int64_t h = 0; h < H; ++h) {
                    for (std::int64_t n = 0; n < N; ++n) {
                        for (std::int64_t e = 0; e < d; ++e)
                            EXPECT_NEAR(got[std::size_t(((b * (N + L) + v0 + n) * H + h) * d + e)],
                                        video.out[std::size_t(((b * N + n) * H + h) * d + e)], 1e-13);
                        EXPECT_NEAR(lse[std::size_t((b * H + h) * (N + L) + v0 + n)],
                                    video.lse[std::size_t((b * H + h) * N + n)], 1e-13);
                    }
                    // Text query rows: exact over the N video keys and the valid text prefix.
                    const double s = 1 / std::sqrt(double(d));
                    for (std::int64_t m = 0; m < L; ++m) {
                        std::vector<double> logits;
                        std::vector<std::int64_t> keys;
                        for (std::int64_t n = 0; n < N; ++n) keys.push_back(v0 + n);
                        for (std::int64_t n = 0; n < lens[std::size_t(b)]; ++n) keys.push_back(t0 + n);
                        double mx = kNegInf;
                        for (auto key : keys) {
                            double dot = 0;
                            for (std::int64_t e = 0; e < d; ++e) dot += at(q, b, t0 + m, h, e) * at(k, b, key, h, e);
                            logits.push_back(s * dot);
                            mx = std::max(mx, s * dot);
                        }
                        double sum = 0;
                        for (double x : logits) sum += std::exp(x - mx);
                        for (std::int64_t e = 0; e < d; ++e) {
                            double o_ref = 0;
                            for (std::size_t a = 0; a < keys.size(); ++a)
                                o_ref += std::exp(logits[a] - mx) / sum * at(v, b, keys[a], h, e);
                            EXPECT_NEAR(got[std::size_t(((b * (N + L) + t0 + m) * H + h) * d + e)], o_ref, 1e-12);
                        }
                        EXPECT_NEAR(lse[std::size_t((b * H + h) * (N + L) + t0 + m)], mx + std::log(sum), 1e-12);
                    }
                }
        }
}

// ---- errors -------------------------------------------------------------------------------------------

TEST(ExactGroupsErrors, EveryWrongArgumentIsNamed) {
    auto c = make_case({2, 2, 3}, 2, 2, 8, 8, 4, Layout::bshd, 1);
    auto out = HostBuffer::empty(DType::f64, Layout::bshd, 2, 12, 2, 8);
    const std::vector<std::int64_t> good{4, 1};
    auto call = [&](const Options& o, ExtraKeys e) {
        return [&, o, e] { vmonarch::attention(c.q.view, c.k.view, c.v.view, out.view, c.grid, o, nullptr, nullptr, &e); };
    };
    const ExtraKeys ok{c.tk.view, c.tv.view, good.data()};
    expect_error(call(opts(2, -1, std::nullopt), ok), "options.sink_frames", {"is -1", "expected >= 0"});
    expect_error(call(opts(2, 0, -2), ok), "options.window_radius", {"is -2", "expected >= 0"});
    const std::vector<std::int64_t> too_long{4, 5}, negative{-1, 0};
    expect_error(call(Options{}, {c.tk.view, c.tv.view, too_long.data()}), "extra_keys.lens[1]", {"is 5", "expected 0..4"});
    expect_error(call(Options{}, {c.tk.view, c.tv.view, negative.data()}), "extra_keys.lens[0]", {"is -1"});
    auto short_v = c.tv.view;
    short_v.shape[1] = 3;
    expect_error(call(Options{}, {c.tk.view, short_v, nullptr}), "extra_keys.v.shape[1]", {"is 3", "expected 4"});
    auto f32_k = c.tk.view;
    f32_k.dtype = DType::f32;
    expect_error(call(Options{}, {f32_k, c.tv.view, nullptr}), "extra_keys.k.dtype", {"f32", "expected f64"});
    auto cuda_v = c.tv.view;
    cuda_v.device = vmonarch::Device::cuda;
    expect_error(call(Options{}, {c.tk.view, cuda_v, nullptr}), "extra_keys.v.device", {"cuda"});
    auto heads_k = c.tk.view;
    heads_k.shape[2] = 1;
    expect_error(call(Options{}, {heads_k, c.tv.view, nullptr}), "extra_keys.k.shape[2]", {"is 1", "expected 2"});
    auto batch_v = c.tv.view;
    batch_v.shape[0] = 1;
    expect_error(call(Options{}, {c.tk.view, batch_v, nullptr}), "extra_keys.v.shape[0]", {"is 1", "expected 2"});
    auto dim_k = c.tk.view;
    dim_k.shape[3] = 4;
    expect_error(call(Options{}, {dim_k, c.tv.view, nullptr}), "extra_keys.k.shape[3]", {"is 4", "expected 8"});
    auto null_k = c.tk.view;
    null_k.data = nullptr;
    expect_error(call(Options{}, {null_k, c.tv.view, nullptr}), "extra_keys.k.data", {"null"});
    auto neg_tokens = c.tk.view;
    neg_tokens.shape[1] = -2;
    auto neg_tokens_v = c.tv.view;
    neg_tokens_v.shape[1] = -2;
    expect_error(call(Options{}, {neg_tokens, neg_tokens_v, nullptr}), "extra_keys.k.shape[1]", {"is -2", "expected >= 0"});
    ExtraKeys alias{out.view, c.tv.view, nullptr};
    alias.k.shape[1] = 4;
    expect_error(call(Options{}, alias), "out", {"overlaps the memory of extra_keys.k"});
    auto f = vmonarch::flops({2, 2, 3}, 8, 1, 1, Options{}, 0);
    EXPECT_GT(f.vmonarch, 0);
    expect_error([] { vmonarch::flops({2, 2, 3}, 8, 1, 1, opts(2, -3, std::nullopt)); }, "options.sink_frames", {"-3"});
    expect_error([] { vmonarch::flops({2, 2, 3}, 8, 1, 1, Options{}, -1); }, "extra_tokens", {"-1"});
    // The explicit constructions of inspect.hpp have no exact groups: refused, not silently ignored.
    expect_error([&] { vmonarch::monarch_attention_rows(c.q.view, c.k.view, c.grid, opts(2, 1, std::nullopt), 0, 0, {0}); },
                 "options.sink_frames", {"is 1", "expected 0"});
    expect_error([&] { vmonarch::monarch_objective_trace(c.q.view, c.k.view, c.grid, opts(2, 0, 1), 0, 0); },
                 "options.window_radius", {"is 1", "expected none"});
}

TEST(ExactGroupsErrors, JointArguments) {
    const std::int64_t B = 2, H = 1, d = 8, N = 12, L = 3;
    auto mk = [&](std::int64_t n, std::uint64_t seed) {
        return HostBuffer(random_normal(std::size_t(B * n * H * d), seed), DType::f64, Layout::bshd, B, n, H, d);
    };
    auto q = mk(N + L, 1), k = mk(N + L, 2), v = mk(N + L, 3), out = HostBuffer::empty(DType::f64, Layout::bshd, B, N + L, H, d);
    const VideoGrid grid{2, 2, 3};
    const std::vector<std::int64_t> good{3, 0}, bad{3, 4};
    auto joint = [&](std::int64_t text, TextPosition pos, const std::int64_t* lens, const VideoGrid& g) {
        return [&, text, pos, lens, g] { vmonarch::joint_attention(q.view, k.view, v.view, out.view, g, text, pos, lens); };
    };
    EXPECT_NO_THROW(joint(L, TextPosition::last, good.data(), grid)());
    EXPECT_TRUE(all_finite(out.read()));
    expect_error(joint(L, TextPosition::first, bad.data(), grid), "text_lens[1]", {"is 4", "expected 0..3"});
    expect_error(joint(-1, TextPosition::first, nullptr, grid), "text_tokens", {"is -1", "expected >= 0"});
    expect_error(joint(L + 1, TextPosition::last, nullptr, grid), "q.shape[1]", {"is 15", "12 + 4"});
    expect_error(joint(L, TextPosition(7), nullptr, grid), "text_position", {"7"});
    expect_error(joint(L, TextPosition::last, nullptr, VideoGrid{0, 2, 3}), "grid.T", {"is 0"});
    auto k_short = mk(N + L - 1, 5), v_short = mk(N + L - 1, 6);
    expect_error([&] { vmonarch::joint_attention(q.view, k_short.view, v_short.view, out.view, grid, L, TextPosition::last); },
                 "k.shape[1]", {"is 14", "expected 15"});
    Options bad_s;
    bad_s.sink_frames = -4;
    expect_error([&] { vmonarch::joint_attention(q.view, k.view, v.view, out.view, grid, L, TextPosition::last, nullptr, bad_s); },
                 "options.sink_frames", {"is -4"});
}

// Exact groups on cuda tensors pass the argument checks and reach the CUDA backend: without CUDA kernels it
// says so (UnsupportedError), without a device the runtime fails (CudaError); the GPU suite runs them.
TEST(ExactGroupsErrors, CudaTensorsWithExactGroupsReachTheCudaBackend) {
    if (vmonarch::cuda_available()) GTEST_SKIP() << "a GPU is present (tests/gpu/test_exact_groups_gpu.cpp)";
    std::vector<std::uint16_t> buf(1024 + 8), obuf(1024 + 8);
    auto align = [](std::vector<std::uint16_t>& b) {
        return reinterpret_cast<std::uint16_t*>((reinterpret_cast<std::uintptr_t>(b.data()) + 15) & ~std::uintptr_t(15));
    };
    auto t = vmonarch::TensorView::bshd(align(buf), DType::bf16, vmonarch::Device::cuda, 1, 4, 1, 64);
    auto o = vmonarch::TensorView::bshd(align(obuf), DType::bf16, vmonarch::Device::cuda, 1, 4, 1, 64);
#ifndef VMONARCH_WITH_CUDA
    try {
        vmonarch::attention(t, t, t, o, {1, 2, 2}, opts(2, 1, std::nullopt));
        ADD_FAILURE() << "no error";
    } catch (const vmonarch::UnsupportedError& e) {
        EXPECT_NE(std::string(e.what()).find("no CUDA kernels"), std::string::npos) << e.what();
    }
    auto jt = vmonarch::TensorView::bshd(align(buf), DType::bf16, vmonarch::Device::cuda, 1, 8, 1, 64);
    auto jo = vmonarch::TensorView::bshd(align(obuf), DType::bf16, vmonarch::Device::cuda, 1, 8, 1, 64);
    EXPECT_THROW(vmonarch::joint_attention(jt, jt, jt, jo, {1, 2, 2}, 4, vmonarch::TextPosition::last),
                 vmonarch::UnsupportedError);
#else
    EXPECT_ANY_THROW(vmonarch::attention(t, t, t, o, {1, 2, 2}, opts(2, 1, std::nullopt))); // no device
#endif
}

// ---- FLOPs (spec §4) ----------------------------------------------------------------------------------

TEST(ExactGroupsFlops, SpecFiguresAt24x44x80) {
    const VideoGrid g{24, 44, 80};
    auto total = [&](int t, std::int64_t S, std::optional<std::int64_t> r) {
        return vmonarch::flops(g, 128, 40, 1, opts(t, S, r)).vmonarch;
    };
    EXPECT_NEAR(total(2, 0, std::nullopt) / 1e13, 2.14, 0.005);
    EXPECT_NEAR(total(1, 1, std::nullopt) / 1e13, 2.07, 0.005);
    EXPECT_NEAR(total(2, 1, std::nullopt) / 1e13, 2.66, 0.005);
    EXPECT_NEAR(total(2, 1, 1) / 1e13, 4.36, 0.005);
    EXPECT_NEAR(vmonarch::flops(g, 128, 40).dense / 1e14, 1.46, 0.005);
    // S >= T: no Monarch part; the exact groups and the recompute make up dense attention exactly.
    const auto all = vmonarch::flops(g, 128, 40, 1, opts(2, 24, std::nullopt));
    EXPECT_EQ(all.r_steps, 0);
    EXPECT_EQ(all.l_steps, 0);
    EXPECT_DOUBLE_EQ(all.vmonarch, all.dense);
    // Joint: text queries 4·L·(N+L)·d and dense over N + L tokens.
    const auto j = vmonarch::joint_flops({13, 30, 45}, 226, 64, 48, 1, Options{});
    const double n = 13 * 30 * 45, L = 226;
    EXPECT_DOUBLE_EQ(j.text_queries, 4 * L * (n + L) * 64 * 48);
    EXPECT_DOUBLE_EQ(j.dense, 4 * (n + L) * (n + L) * 64 * 48);
    EXPECT_DOUBLE_EQ(j.vmonarch, j.r_steps + j.l_steps + j.exact + j.recompute + j.text_queries);
}
