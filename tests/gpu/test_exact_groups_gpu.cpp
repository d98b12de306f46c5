// Exact key groups on the GPU (spec §3b, §3c): sink frames, a temporal window and extra (text) keys through
// vmonarch::attention, and joint text+video sequences through vmonarch::joint_attention, each against the
// library's f64 CPU backend on the same rounded inputs, with the library's workspace and with a caller's one
// of exactly workspace_bytes (the same bits both ways).
#include <gtest/gtest.h>

#include <limits>
#include <sstream>

#include "gpu_test_util.hpp"

namespace gputest {
namespace {

constexpr std::int64_t kNone = -1; // no window

struct ExactCase {
    std::int64_t B, heads, T, Hh, Ww, d;
    int iterations;
    bool recompute;
    DType dtype;
    Layout layout;
    std::int64_t S, r;              // sink frames, window radius (kNone: none)
    std::int64_t L;                 // extra (text) keys; 0: none
    std::vector<std::int64_t> lens; // valid prefix per batch element; empty: all L
    bool video = false;
};

std::string case_name(const ExactCase& c) {
    std::ostringstream os;
    os << "B" << c.B << "h" << c.heads << "_T" << c.T << "x" << c.Hh << "x" << c.Ww << "_d" << c.d << "_t" << c.iterations
       << (c.recompute ? "_rc" : "_norc") << "_" << vmonarch::to_string(c.dtype) << "_" << name(c.layout) << "_S" << c.S
       << "_r" << (c.r < 0 ? std::string("none") : std::to_string(c.r)) << "_L" << c.L;
    for (auto l : c.lens) os << "_" << l;
    if (c.video) os << "_video";
    return os.str();
}

std::vector<std::int64_t> lens_of(const std::vector<std::int64_t>& lens, std::int64_t B, std::int64_t L) {
    return lens.empty() ? std::vector<std::int64_t>(std::size_t(B), L) : lens;
}

vmonarch::Options options_of(int iterations, bool recompute, std::int64_t S, std::int64_t r) {
    vmonarch::Options o;
    o.iterations = iterations;
    o.recompute_first_frame = recompute;
    o.sink_frames = S;
    if (r >= 0) o.window_radius = r;
    return o;
}

struct GpuResult {
    std::vector<double> out, lse;
    std::vector<std::uint16_t> raw;
};

void sync_or_throw() {
    if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("cudaDeviceSynchronize failed");
}

// A caller workspace of exactly `bytes` (at least one byte, so the pointer is set).
struct CallerWorkspace {
    DeviceBuffer buf;
    vmonarch::CudaContext ctx;
    explicit CallerWorkspace(std::size_t bytes) : buf(std::max<std::size_t>(bytes, 1)) {
        ctx.workspace = buf.get();
        ctx.workspace_bytes = bytes;
    }
};

class ExactGroups : public ::testing::TestWithParam<ExactCase> {};

TEST_P(ExactGroups, MatchesCpuF64) {
    REQUIRE_GPU();
    const ExactCase c = GetParam();
    const vmonarch::VideoGrid g{c.T, c.Hh, c.Ww};
    const std::int64_t N = g.tokens();
    const std::uint64_t seed = std::uint64_t(N * 37 + c.d + c.T * 5 + c.L);
    const Inputs in = make_inputs(c.B, c.heads, g, c.d, c.video, 3.0, seed);
    GpuTensor q(in.q, c.dtype, c.layout, c.B, N, c.heads, c.d), k(in.k, c.dtype, c.layout, c.B, N, c.heads, c.d),
        v(in.v, c.dtype, c.layout, c.B, N, c.heads, c.d);
    const std::size_t text_count = std::size_t(c.B * c.L * c.heads * c.d);
    GpuTensor tk(random_normal(text_count, seed * 7 + 1, std::sqrt(3.0)), c.dtype, c.layout, c.B, c.L, c.heads, c.d),
        tv(random_normal(text_count, seed * 7 + 2, 1.0), c.dtype, c.layout, c.B, c.L, c.heads, c.d);
    const std::vector<std::int64_t> lens = lens_of(c.lens, c.B, c.L);
    const vmonarch::Options o = options_of(c.iterations, c.recompute, c.S, c.r);
    const vmonarch::ExtraKeys extra{tk.view, tv.view, lens.data()};
    const vmonarch::ExtraKeys* extra_ptr = c.L > 0 ? &extra : nullptr;

    auto run = [&](const vmonarch::CudaContext* ctx) {
        auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, N, c.heads, c.d);
        GpuLse lse(c.B, c.heads, N, false);
        vmonarch::attention(q.view, k.view, v.view, out.view, g, o, &lse.view, ctx, extra_ptr);
        sync_or_throw();
        return GpuResult{out.read(), lse.read(), out.raw()};
    };
    const GpuResult gpu = run(nullptr);
    CallerWorkspace ws(vmonarch::workspace_bytes(q.view, v.view, g, o));
    const GpuResult again = run(&ws.ctx);
    // Without an lse the exact groups' LSE lives in the workspace: the output must not change.
    auto out_nolse = GpuTensor::poisoned(c.dtype, c.layout, c.B, N, c.heads, c.d);
    vmonarch::attention(q.view, k.view, v.view, out_nolse.view, g, o, nullptr, &ws.ctx, extra_ptr);
    sync_or_throw();

    std::vector<double> sq, sk, sv, stk, stv, so(q.values.size()), sl(std::size_t(c.B * c.heads * N));
    const auto cq = q.cpu_view(sq), ck = k.cpu_view(sk), cv = v.cpu_view(sv);
    const vmonarch::ExtraKeys cextra{tk.cpu_view(stk), tv.cpu_view(stv), lens.data()};
    const auto co = TensorView::bshd(so.data(), DType::f64, Device::cpu, c.B, N, c.heads, c.d);
    const auto cl = vmonarch::LseView::contiguous(sl.data(), DType::f64, Device::cpu, c.B, c.heads, N);
    vmonarch::attention(cq, ck, cv, co, g, o, &cl, nullptr, c.L > 0 ? &cextra : nullptr);

    EXPECT_EQ(count_nonfinite(gpu.out), 0u) << "NaN/Inf or unwritten output elements";
    EXPECT_EQ(count_nonfinite(gpu.lse), 0u) << "NaN/Inf or unwritten LSE elements";
    const double err = rel_l2(gpu.out, so), lerr = rel_l2(gpu.lse, sl), tol = tolerance(c.dtype);
    EXPECT_LE(err, tol) << case_name(c);
    EXPECT_LE(lerr, tol) << case_name(c) << " (LSE)";
    EXPECT_TRUE(gpu.raw == again.raw) << "the caller's workspace of workspace_bytes gave different bits";
    EXPECT_TRUE(gpu.raw == out_nolse.raw()) << "no lse requested gave different bits";

    // S >= T leaves no Monarch keys: dense attention over the video keys (no extra keys here).
    if (c.S >= c.T && c.L == 0) {
        std::vector<double> sd(so.size()), sdl(sl.size());
        const auto cd = TensorView::bshd(sd.data(), DType::f64, Device::cpu, c.B, N, c.heads, c.d);
        const auto cdl = vmonarch::LseView::contiguous(sdl.data(), DType::f64, Device::cpu, c.B, c.heads, N);
        vmonarch::dense_attention(cq, ck, cv, cd, std::nullopt, &cdl);
        EXPECT_LE(rel_l2(gpu.out, sd), tol) << case_name(c) << " (vs dense)";
        EXPECT_LE(rel_l2(gpu.lse, sdl), tol) << case_name(c) << " (LSE vs dense)";
    }
    std::printf("[ exact    ] %-72s out rel-L2 %.2e  lse rel-L2 %.2e  (tol %.0e)\n", case_name(c).c_str(), err, lerr, tol);
}

const DType bf = DType::bf16, fp = DType::f16;
const Layout SH = Layout::bshd, HS = Layout::bhsd;

INSTANTIATE_TEST_SUITE_P(
    Cases, ExactGroups,
    ::testing::Values(
        ExactCase{1, 2, 5, 7, 9, 128, 2, true, bf, SH, 1, kNone, 0, {}},            // S = 1
        ExactCase{1, 2, 4, 5, 13, 64, 1, false, fp, HS, 2, kNone, 0, {}},           // S = 2, HW = 65
        ExactCase{1, 2, 3, 4, 4, 128, 2, true, bf, SH, 3, kNone, 0, {}},            // S = T: dense
        ExactCase{2, 1, 3, 3, 5, 64, 2, false, fp, SH, 5, kNone, 0, {}},            // S > T: dense
        ExactCase{1, 2, 6, 1, 61, 128, 2, true, bf, SH, 0, 0, 0, {}},               // r = 0, prime HW
        ExactCase{1, 2, 7, 1, 67, 64, 2, false, bf, HS, 0, 1, 0, {}},               // r = 1, odd T
        ExactCase{1, 2, 9, 7, 9, 128, 2, true, fp, SH, 1, 1, 0, {}},                // S = 1, r = 1
        ExactCase{1, 2, 3, 5, 5, 64, 2, true, bf, SH, 0, 3, 0, {}},                 // r >= T: dense
        ExactCase{2, 2, 8, 3, 7, 128, 3, false, bf, HS, 2, 1, 0, {}},               // S = 2, r = 1, t = 3
        ExactCase{1, 2, 6, 4, 5, 64, 2, true, fp, SH, 1, 4, 0, {}},                 // every frame exact but the far ones
        ExactCase{1, 2, 3, 8, 8, 64, 2, true, bf, SH, 0, kNone, 226, {}},           // text only, L = 226
        ExactCase{2, 2, 5, 5, 13, 128, 2, true, bf, SH, 1, kNone, 256, {100, 256}}, // text + S = 1, two lens
        ExactCase{2, 2, 4, 7, 9, 128, 2, false, fp, HS, 0, kNone, 37, {0, 20}},     // lens = 0: empty exact group
        ExactCase{1, 2, 1, 7, 9, 128, 2, true, bf, SH, 0, kNone, 19, {}},           // T = 1 with recompute
        ExactCase{1, 1, 1, 7, 9, 64, 2, false, fp, SH, 1, kNone, 19, {7}},          // T = 1, S = 1
        ExactCase{1, 1, 3, 5, 5, 64, 2, true, bf, SH, 1, 1, 2000, {1999}},          // L ~ 2000
        ExactCase{1, 4, 6, 8, 8, 128, 2, true, bf, SH, 1, 1, 30, {}, true},         // video-like
        ExactCase{2, 3, 5, 7, 9, 64, 1, true, fp, HS, 1, 0, 12, {5, 0}},            // r = 0 + S + lens {5, 0}
        ExactCase{1, 2, 13, 3, 5, 128, 2, false, fp, SH, 1, 1, 226, {}}),           // S = 1, r = 1, L = 226
    [](const ::testing::TestParamInfo<ExactCase>& i) { return case_name(i.param); });

// ---- joint text+video sequences (spec §3c) --------------------------------------------------------------

struct JointCase {
    std::int64_t B, heads, T, Hh, Ww, d;
    bool recompute;
    DType dtype;
    Layout layout;
    std::int64_t L;
    bool text_first;
    std::vector<std::int64_t> lens;
    std::int64_t S = 0, r = kNone;
};

std::string joint_name(const JointCase& c) {
    std::ostringstream os;
    os << "B" << c.B << "h" << c.heads << "_T" << c.T << "x" << c.Hh << "x" << c.Ww << "_d" << c.d
       << (c.recompute ? "_rc" : "_norc") << "_" << vmonarch::to_string(c.dtype) << "_" << name(c.layout) << "_L" << c.L
       << (c.text_first ? "_first" : "_last") << "_S" << c.S << "_r" << (c.r < 0 ? std::string("none") : std::to_string(c.r));
    for (auto l : c.lens) os << "_" << l;
    return os.str();
}

class JointGpu : public ::testing::TestWithParam<JointCase> {};

TEST_P(JointGpu, MatchesCpuF64) {
    REQUIRE_GPU();
    const JointCase c = GetParam();
    const vmonarch::VideoGrid g{c.T, c.Hh, c.Ww};
    const std::int64_t N = g.tokens(), M = N + c.L;
    const std::size_t count = std::size_t(c.B * M * c.heads * c.d);
    const std::uint64_t seed = std::uint64_t(M * 13 + c.d);
    GpuTensor q(random_normal(count, seed + 1, std::sqrt(3.0)), c.dtype, c.layout, c.B, M, c.heads, c.d),
        k(random_normal(count, seed + 2, std::sqrt(3.0)), c.dtype, c.layout, c.B, M, c.heads, c.d),
        v(random_normal(count, seed + 3, 1.0), c.dtype, c.layout, c.B, M, c.heads, c.d);
    const std::vector<std::int64_t> lens = lens_of(c.lens, c.B, c.L);
    const vmonarch::Options o = options_of(2, c.recompute, c.S, c.r);
    const auto pos = c.text_first ? vmonarch::TextPosition::first : vmonarch::TextPosition::last;

    auto run = [&](const vmonarch::CudaContext* ctx) {
        auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, M, c.heads, c.d);
        GpuLse lse(c.B, c.heads, M, true);
        vmonarch::joint_attention(q.view, k.view, v.view, out.view, g, c.L, pos, lens.data(), o, &lse.view, ctx);
        sync_or_throw();
        return GpuResult{out.read(), lse.read(), out.raw()};
    };
    const GpuResult gpu = run(nullptr);
    // The caller's workspace sized for the video part (as the Python operator does); long text goes in chunks.
    TensorView qv = q.view, vv = v.view;
    qv.shape[1] = vv.shape[1] = N;
    CallerWorkspace ws(vmonarch::workspace_bytes(qv, vv, g, o));
    const GpuResult again = run(&ws.ctx);

    std::vector<double> sq, sk, sv, so(q.values.size()), sl(std::size_t(c.B * c.heads * M));
    const auto cq = q.cpu_view(sq), ck = k.cpu_view(sk), cv = v.cpu_view(sv);
    const auto co = TensorView::bshd(so.data(), DType::f64, Device::cpu, c.B, M, c.heads, c.d);
    const auto cl = vmonarch::LseView::contiguous(sl.data(), DType::f64, Device::cpu, c.B, c.heads, M);
    vmonarch::joint_attention(cq, ck, cv, co, g, c.L, pos, lens.data(), o, &cl);

    EXPECT_EQ(count_nonfinite(gpu.out), 0u) << "NaN/Inf or unwritten output elements";
    EXPECT_EQ(count_nonfinite(gpu.lse), 0u) << "NaN/Inf or unwritten LSE elements";
    const double err = rel_l2(gpu.out, so), lerr = rel_l2(gpu.lse, sl), tol = tolerance(c.dtype);
    EXPECT_LE(err, tol) << joint_name(c);
    EXPECT_LE(lerr, tol) << joint_name(c) << " (LSE)";
    EXPECT_TRUE(gpu.raw == again.raw) << "the caller's workspace gave different bits";

    // The text queries alone: their rows are exact attention, so they must be close row by row too.
    const std::int64_t t0 = c.text_first ? 0 : N;
    std::vector<double> got_text, want_text;
    for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t n = t0; n < t0 + c.L; ++n)
            for (std::int64_t h = 0; h < c.heads; ++h)
                for (std::int64_t e = 0; e < c.d; ++e) {
                    const std::size_t i = std::size_t(((b * M + n) * c.heads + h) * c.d + e);
                    got_text.push_back(gpu.out[i]);
                    want_text.push_back(so[i]);
                }
    if (c.L > 0) EXPECT_LE(rel_l2(got_text, want_text), tol) << joint_name(c) << " (text queries)";
    std::printf("[ joint    ] %-72s out rel-L2 %.2e  lse rel-L2 %.2e  (tol %.0e)\n", joint_name(c).c_str(), err, lerr, tol);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, JointGpu,
    ::testing::Values(JointCase{1, 2, 3, 7, 9, 128, true, bf, SH, 256, false, {}},          // HunyuanVideo-like
                      JointCase{1, 2, 4, 5, 9, 64, true, bf, SH, 226, true, {}, 1},         // CogVideoX-like, S = 1
                      JointCase{2, 2, 5, 3, 7, 128, true, fp, HS, 33, true, {10, 0}, 0, 1}, // text first, lens {10, 0}, r = 1
                      JointCase{2, 1, 2, 4, 4, 64, false, fp, SH, 50, false, {3, 50}, 2},   // S >= T
                      JointCase{1, 2, 2, 4, 5, 128, true, bf, SH, 2000, false, {1500}},     // L > N: chunked text queries
                      JointCase{1, 2, 1, 7, 9, 64, true, bf, HS, 17, false, {}},            // T = 1
                      JointCase{1, 2, 3, 1, 1, 64, true, bf, SH, 0, true, {}},              // no text
                      // Key ranges in one launch each, beside the Monarch steps (exact_group_beside.cu):
                      JointCase{2, 2, 5, 3, 7, 128, true, bf, SH, 33, false, {10, 33}},     // text last, two lens
                      JointCase{2, 3, 4, 5, 9, 64, true, fp, HS, 226, true, {}},            // text first, B = 2
                      JointCase{2, 2, 5, 3, 7, 128, true, bf, HS, 24, true, {}, 1},         // text first, S = 1
                      JointCase{3, 2, 4, 3, 5, 64, true, bf, SH, 19, true, {19, 0, 19}},    // an empty group, B runs
                      JointCase{2, 2, 4, 3, 5, 128, false, fp, SH, 40, true, {}},           // no recompute
                      JointCase{2, 2, 3, 4, 5, 64, false, bf, SH, 21, false, {0, 21}},      // no recompute, lens 0
                      JointCase{2, 2, 5, 3, 7, 128, true, bf, SH, 30, false, {7, 30}, 1},   // text last + S: in order
                      JointCase{2, 1, 4, 3, 5, 64, true, fp, HS, 16, true, {5, 16}}),       // text first, lens < L
    [](const ::testing::TestParamInfo<JointCase>& i) { return joint_name(i.param); });

// The schedule beside the Monarch steps on a caller's non-blocking stream (its side stream is another one):
// poisoned outputs, the call repeated, every repetition the same bits and close to the f64 CPU result.
TEST(JointGpuStreams, RepeatsBitwiseOnCallerStream) {
    REQUIRE_GPU();
    const vmonarch::VideoGrid g{5, 4, 7};
    const std::int64_t B = 3, heads = 3, d = 128, L = 45, N = g.tokens(), M = N + L;
    for (const bool text_first : {true, false}) {
        const std::vector<std::int64_t> lens = text_first ? std::vector<std::int64_t>{L, L, L}
                                                          : std::vector<std::int64_t>{45, 3, 20};
        const std::size_t count = std::size_t(B * M * heads * d);
        GpuTensor q(random_normal(count, 71, std::sqrt(3.0)), bf, SH, B, M, heads, d),
            k(random_normal(count, 72, std::sqrt(3.0)), bf, SH, B, M, heads, d), v(random_normal(count, 73, 1.0), bf, SH, B, M, heads, d);
        const vmonarch::Options o = options_of(2, true, text_first ? 1 : 0, kNone);
        const auto pos = text_first ? vmonarch::TextPosition::first : vmonarch::TextPosition::last;
        cudaStream_t stream = nullptr;
        ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
        vmonarch::CudaContext ctx;
        ctx.stream = stream;
        std::vector<GpuResult> runs;
        for (int rep = 0; rep < 3; ++rep) {
            auto out = GpuTensor::poisoned(bf, SH, B, M, heads, d);
            GpuLse lse(B, heads, M, true);
            vmonarch::joint_attention(q.view, k.view, v.view, out.view, g, L, pos, lens.data(), o, rep == 2 ? nullptr : &lse.view,
                                      &ctx);
            ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
            runs.push_back(GpuResult{out.read(), rep == 2 ? std::vector<double>{} : lse.read(), out.raw()});
        }
        cudaStreamDestroy(stream);
        std::vector<double> sq, sk, sv, so(q.values.size()), sl(std::size_t(B * heads * M));
        const auto co = TensorView::bshd(so.data(), DType::f64, Device::cpu, B, M, heads, d);
        const auto cl = vmonarch::LseView::contiguous(sl.data(), DType::f64, Device::cpu, B, heads, M);
        vmonarch::joint_attention(q.cpu_view(sq), k.cpu_view(sk), v.cpu_view(sv), co, g, L, pos, lens.data(), o, &cl);
        EXPECT_EQ(count_nonfinite(runs[0].out), 0u);
        EXPECT_LE(rel_l2(runs[0].out, so), tolerance(bf)) << (text_first ? "text first" : "text last");
        EXPECT_LE(rel_l2(runs[0].lse, sl), tolerance(bf)) << (text_first ? "text first" : "text last");
        EXPECT_TRUE(runs[1].raw == runs[0].raw) << "a repetition gave different bits";
        EXPECT_TRUE(runs[2].raw == runs[0].raw) << "no lse requested gave different bits";
    }
}

} // namespace
} // namespace gputest
