// The CUDA backward of exact key groups (spec §3b, §7) and of joint sequences (spec §3c) against the library's
// f64 CPU backward on the same rounded inputs: dq, dk, dv and the text keys' dk, dv for sink frames S = 1, 2 and
// S >= T, windows r = 0, 1, 2, text keys with lens < L, = L, = 0 and batches of different lens, joint sequences
// with the text first and last, T = 1, odd T, prime HW, d 64 and 128, bf16 and f16, both gradient variants,
// with and without dlse; plus properties: dv bitwise equal between the variants, padded text keys' gradients
// exactly 0, deterministic mode bitwise repeatable, saved and lean mode equal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <sstream>

#include "gpu_test_util.hpp"
#include "vmonarch/backward.hpp"

namespace gputest {
namespace {

using vmonarch::BackwardOptions;
using vmonarch::ExtraKeyGrads;
using vmonarch::ExtraKeys;
using vmonarch::LseView;
using vmonarch::Options;
using vmonarch::SavedState;
using vmonarch::TextPosition;
using vmonarch::VideoGrid;

constexpr std::int64_t kNone = -1; // no window

struct Case {
    std::int64_t B, heads, T, Hh, Ww, d;
    int iterations;
    bool recompute;
    DType dtype;
    Layout layout;
    std::int64_t S, r, L;           // sink frames, window radius (kNone: none), text tokens
    std::vector<std::int64_t> lens; // valid text tokens per batch element; empty: all L
    bool joint = false;             // one joint sequence (text queries too) instead of text keys of attention()
    bool text_first = false;
    bool with_dlse = false;
    bool video = false;
};

std::string case_name(const Case& c) {
    std::ostringstream os;
    os << (c.joint ? (c.text_first ? "joint_first_" : "joint_last_") : "") << "B" << c.B << "h" << c.heads << "_T" << c.T
       << "x" << c.Hh << "x" << c.Ww << "_d" << c.d << "_t" << c.iterations << (c.recompute ? "_rc" : "_norc") << "_"
       << vmonarch::to_string(c.dtype) << "_" << name(c.layout) << "_S" << c.S << "_r"
       << (c.r < 0 ? std::string("none") : std::to_string(c.r)) << "_L" << c.L;
    for (auto l : c.lens) os << "_" << l;
    os << (c.with_dlse ? "_dlse" : "") << (c.video ? "_video" : "");
    return os.str();
}

Options options_of(const Case& c) {
    Options o;
    o.iterations = c.iterations;
    o.recompute_first_frame = c.recompute;
    o.sink_frames = c.S;
    if (c.r >= 0) o.window_radius = c.r;
    return o;
}

struct Grads {
    std::vector<double> dq, dk, dv, dtk, dtv; // dtk, dtv: the text keys' gradients (attention() with text keys)
    std::vector<std::uint16_t> raw_dq, raw_dk, raw_dv, raw_dtv;
};

void sync_or_throw() {
    if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("cudaDeviceSynchronize failed");
}

// One case on the device: rounded inputs (the whole joint sequence, or video tokens plus text keys), dout, dlse.
struct Problem {
    Case c;
    VideoGrid g;
    std::int64_t N, M; // video tokens; tokens of q (N, or N + L for a joint sequence)
    std::vector<std::int64_t> lens;
    Inputs in;
    std::vector<double> tk_in, tv_in;
    GpuTensor q, k, v, dout;
    std::optional<GpuTensor> tk, tv; // text keys of attention()
    std::vector<double> dlse;
    DeviceBuffer dlse_buf;
    LseView dlse_view;

    explicit Problem(const Case& cs)
        : c(cs), g{cs.T, cs.Hh, cs.Ww}, N(g.tokens()), M(cs.joint ? N + cs.L : N),
          lens(cs.lens.empty() ? std::vector<std::int64_t>(std::size_t(cs.B), cs.L) : cs.lens),
          in(make_inputs(cs.B, cs.heads, cs.joint ? VideoGrid{1, 1, N + cs.L} : g, cs.d, cs.video && !cs.joint, 2.0,
                         std::uint64_t(N * 29 + cs.d + cs.T * 7 + cs.L * 3 + cs.S))),
          tk_in(random_normal(std::size_t(cs.B * cs.L * cs.heads * cs.d), std::uint64_t(N + 501), std::sqrt(2.0))),
          tv_in(random_normal(std::size_t(cs.B * cs.L * cs.heads * cs.d), std::uint64_t(N + 502), 1.0)),
          q(in.q, cs.dtype, cs.layout, cs.B, M, cs.heads, cs.d), k(in.k, cs.dtype, cs.layout, cs.B, M, cs.heads, cs.d),
          v(in.v, cs.dtype, cs.layout, cs.B, M, cs.heads, cs.d),
          dout(random_normal(std::size_t(cs.B * M * cs.heads * cs.d), std::uint64_t(M + 991), 1.0), cs.dtype, cs.layout,
               cs.B, M, cs.heads, cs.d),
          dlse(random_normal(std::size_t(cs.B * cs.heads * M), std::uint64_t(M + 7), 0.5)),
          dlse_buf(std::size_t(cs.B * cs.heads * M) * 4) {
        if (!cs.joint && cs.L > 0) {
            tk.emplace(tk_in, cs.dtype, cs.layout, cs.B, cs.L, cs.heads, cs.d);
            tv.emplace(tv_in, cs.dtype, cs.layout, cs.B, cs.L, cs.heads, cs.d);
        }
        std::vector<float> f(dlse.begin(), dlse.end());
        for (std::size_t i = 0; i < f.size(); ++i) dlse[i] = f[i];
        dlse_buf.upload(f.data(), f.size() * 4);
        dlse_view = LseView::contiguous(dlse_buf.get(), DType::f32, Device::cuda, cs.B, cs.heads, M);
    }

    TextPosition position() const { return c.text_first ? TextPosition::first : TextPosition::last; }

    // GPU forward (the training forward with saved = true) then backward.
    Grads gpu(bool entropy_grad, bool deterministic, bool saved) const {
        const Options o = options_of(c);
        auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, M, c.heads, c.d);
        GpuLse lse(c.B, c.heads, M, false);
        BackwardOptions bo;
        bo.entropy_grad = entropy_grad;
        bo.deterministic = deterministic;
        auto dq = GpuTensor::poisoned(c.dtype, c.layout, c.B, M, c.heads, c.d);
        auto dk = GpuTensor::poisoned(c.dtype, c.layout, c.B, M, c.heads, c.d);
        auto dv = GpuTensor::poisoned(c.dtype, c.layout, c.B, M, c.heads, c.d);
        const LseView* dl = c.with_dlse ? &dlse_view : nullptr;
        Grads r;
        if (c.joint) {
            vmonarch::joint_attention(q.view, k.view, v.view, out.view, g, c.L, position(), lens.data(), o, &lse.view);
            vmonarch::joint_attention_backward(q.view, k.view, v.view, out.view, lse.view, dout.view, dq.view, dk.view,
                                               dv.view, g, c.L, position(), lens.data(), o, dl, bo);
        } else {
            std::optional<ExtraKeys> extra;
            if (tk) extra = ExtraKeys{tk->view, tv->view, lens.data()};
            const ExtraKeys* ek = extra ? &*extra : nullptr;
            SavedState state;
            if (saved) {
                vmonarch::attention_training(q.view, k.view, v.view, out.view, lse.view, g, o, state, nullptr, ek);
                EXPECT_TRUE(state.filled());
                bo.saved = &state;
            } else {
                vmonarch::attention(q.view, k.view, v.view, out.view, g, o, &lse.view, nullptr, ek);
            }
            const std::int64_t L = std::max<std::int64_t>(c.L, 1);
            auto dtk = GpuTensor::poisoned(c.dtype, c.layout, c.B, L, c.heads, c.d);
            auto dtv = GpuTensor::poisoned(c.dtype, c.layout, c.B, L, c.heads, c.d);
            const ExtraKeyGrads eg{dtk.view, dtv.view};
            vmonarch::attention_backward(q.view, k.view, v.view, out.view, lse.view, dout.view, dq.view, dk.view, dv.view,
                                         g, o, dl, bo, nullptr, ek, ek ? &eg : nullptr);
            sync_or_throw();
            if (ek) r.dtk = dtk.read(), r.dtv = dtv.read(), r.raw_dtv = dtv.raw();
        }
        sync_or_throw();
        r.dq = dq.read(), r.dk = dk.read(), r.dv = dv.read();
        r.raw_dq = dq.raw(), r.raw_dk = dk.raw(), r.raw_dv = dv.raw();
        return r;
    }

    // The f64 CPU backward on the same rounded inputs (and dlse).
    Grads cpu(bool entropy_grad) const {
        const Options o = options_of(c);
        auto view = [&](std::vector<double>& s, std::int64_t tokens) {
            return TensorView::bshd(s.data(), DType::f64, Device::cpu, c.B, tokens, c.heads, c.d);
        };
        std::vector<double> qs = q.values, ks = k.values, vs = v.values, dos = dout.values, dls = dlse;
        std::vector<double> out(qs.size()), lse(std::size_t(c.B * c.heads * M)), dq(qs.size()), dk(qs.size()), dv(qs.size());
        const LseView lv = LseView::contiguous(lse.data(), DType::f64, Device::cpu, c.B, c.heads, M);
        const LseView dlv = LseView::contiguous(dls.data(), DType::f64, Device::cpu, c.B, c.heads, M);
        BackwardOptions bo;
        bo.entropy_grad = entropy_grad;
        Grads r;
        if (c.joint) {
            vmonarch::joint_attention(view(qs, M), view(ks, M), view(vs, M), view(out, M), g, c.L, position(), lens.data(),
                                      o, &lv);
            vmonarch::joint_attention_backward(view(qs, M), view(ks, M), view(vs, M), view(out, M), lv, view(dos, M),
                                               view(dq, M), view(dk, M), view(dv, M), g, c.L, position(), lens.data(), o,
                                               c.with_dlse ? &dlv : nullptr, bo);
        } else {
            std::vector<double> tks, tvs;
            std::vector<double> dtk(std::size_t(c.B * c.L * c.heads * c.d)), dtv(dtk.size());
            std::optional<ExtraKeys> extra;
            if (tk) {
                tks = tk->values, tvs = tv->values;
                extra = ExtraKeys{view(tks, c.L), view(tvs, c.L), lens.data()};
            }
            const ExtraKeys* ek = extra ? &*extra : nullptr;
            const ExtraKeyGrads eg{view(dtk, c.L), view(dtv, c.L)};
            vmonarch::attention(view(qs, N), view(ks, N), view(vs, N), view(out, N), g, o, &lv, nullptr, ek);
            vmonarch::attention_backward(view(qs, N), view(ks, N), view(vs, N), view(out, N), lv, view(dos, N), view(dq, N),
                                         view(dk, N), view(dv, N), g, o, c.with_dlse ? &dlv : nullptr, bo, nullptr, ek,
                                         ek ? &eg : nullptr);
            if (ek) r.dtk = dtk, r.dtv = dtv;
        }
        r.dq = dq, r.dk = dk, r.dv = dv;
        return r;
    }

    // Text key rows at or past lens[b] (padding) of a [B, L, heads, d] logical tensor.
    std::vector<double> padded_rows(const std::vector<double>& t) const {
        std::vector<double> out;
        for (std::int64_t b = 0; b < c.B; ++b)
            for (std::int64_t l = lens[std::size_t(b)]; l < c.L; ++l)
                for (std::int64_t e = 0; e < c.heads * c.d; ++e) out.push_back(t[std::size_t((b * c.L + l) * c.heads * c.d + e)]);
        return out;
    }
};

double grad_tolerance(DType t) { return t == DType::bf16 ? 2e-2 : 5e-3; }

class ExactBackward : public ::testing::TestWithParam<Case> {};

TEST_P(ExactBackward, MatchesCpuF64BothVariants) {
    REQUIRE_GPU();
    const Case c = GetParam();
    const Problem p(c);
    const double tol = grad_tolerance(c.dtype);
    std::optional<Grads> paper;
    for (bool entropy : {false, true}) {
        const Grads got = p.gpu(entropy, false, !c.joint);
        const Grads want = p.cpu(entropy);
        const char* variant = entropy ? "exact gradient" : "paper gradient";
        EXPECT_EQ(count_nonfinite(got.dq) + count_nonfinite(got.dk) + count_nonfinite(got.dv), 0u) << variant;
        EXPECT_LT(rel_l2(got.dq, want.dq), tol) << "dq, " << variant;
        EXPECT_LT(rel_l2(got.dk, want.dk), tol) << "dk, " << variant;
        EXPECT_LT(rel_l2(got.dv, want.dv), tol) << "dv, " << variant;
        std::printf("[ rel L2 ] %s %s: dq %.2e dk %.2e dv %.2e", case_name(c).c_str(), entropy ? "exact" : "paper",
                    rel_l2(got.dq, want.dq), rel_l2(got.dk, want.dk), rel_l2(got.dv, want.dv));
        if (!want.dtk.empty() && std::any_of(p.lens.begin(), p.lens.end(), [](std::int64_t l) { return l > 0; }))
            std::printf(" text dk %.2e text dv %.2e", rel_l2(got.dtk, want.dtk), rel_l2(got.dtv, want.dtv));
        std::printf("\n");
        if (!want.dtk.empty()) {
            const bool any_valid = std::any_of(p.lens.begin(), p.lens.end(), [](std::int64_t l) { return l > 0; });
            EXPECT_EQ(count_nonfinite(got.dtk) + count_nonfinite(got.dtv), 0u) << variant;
            if (any_valid) {
                EXPECT_LT(rel_l2(got.dtk, want.dtk), tol) << "text dk, " << variant;
                EXPECT_LT(rel_l2(got.dtv, want.dtv), tol) << "text dv, " << variant;
            }
            for (double x : p.padded_rows(got.dtk)) ASSERT_EQ(x, 0.0) << "padded text key dk, " << variant;
            for (double x : p.padded_rows(got.dtv)) ASSERT_EQ(x, 0.0) << "padded text key dv, " << variant;
        }
        if (!entropy) {
            paper = got;
        } else {
            EXPECT_EQ(got.raw_dv, paper->raw_dv) << "dv must not depend on the entropy term";
            EXPECT_EQ(got.raw_dtv, paper->raw_dtv) << "text dv must not depend on the entropy term";
        }
    }
}

TEST_P(ExactBackward, DeterministicRepeatableAndLeanEqualsSaved) {
    REQUIRE_GPU();
    const Case c = GetParam();
    const Problem p(c);
    const bool entropy = c.iterations % 2 == 0;
    const Grads a = p.gpu(entropy, true, !c.joint);
    const Grads b = p.gpu(entropy, true, !c.joint);
    EXPECT_EQ(a.raw_dq, b.raw_dq);
    EXPECT_EQ(a.raw_dk, b.raw_dk);
    EXPECT_EQ(a.raw_dv, b.raw_dv);
    EXPECT_EQ(a.raw_dtv, b.raw_dtv);
    if (c.joint) return; // joint sequences: lean mode only
    const Grads lean = p.gpu(entropy, true, false);
    EXPECT_EQ(lean.raw_dq, a.raw_dq);
    EXPECT_EQ(lean.raw_dk, a.raw_dk);
    EXPECT_EQ(lean.raw_dv, a.raw_dv);
    EXPECT_EQ(lean.raw_dtv, a.raw_dtv);
}

const DType bf = DType::bf16, hf = DType::f16;
const Layout bshd = Layout::bshd, bhsd = Layout::bhsd;

INSTANTIATE_TEST_SUITE_P(
    Shapes, ExactBackward,
    ::testing::Values(
        Case{1, 2, 3, 4, 5, 64, 2, true, bf, bshd, 1, kNone, 0, {}},                          // one sink frame
        Case{1, 2, 5, 1, 13, 128, 2, false, hf, bhsd, 2, 1, 0, {}, false, false, true},        // S 2, r 1, odd T, prime HW
        Case{1, 1, 3, 3, 5, 64, 2, true, bf, bshd, 4, kNone, 3, {3}},                         // S >= T: no Monarch part
        Case{2, 1, 4, 3, 7, 64, 3, true, hf, bshd, 0, 0, 0, {}},                              // r = 0 only
        Case{2, 2, 4, 4, 5, 128, 2, true, bf, bhsd, 1, 1, 5, {2, 0}, false, false, true},      // lens < L and 0
        Case{1, 2, 1, 5, 7, 64, 1, true, hf, bshd, 0, kNone, 4, {4}},                         // T = 1, lens = L
        Case{1, 1, 1, 5, 7, 128, 2, false, bf, bshd, 0, kNone, 3, {1}},                       // T = 1, Monarch only
        Case{1, 2, 7, 1, 11, 64, 2, true, bf, bhsd, 0, 2, 0, {}},                             // r 2: interior frames
        Case{1, 2, 3, 2, 5, 128, 3, false, bf, bshd, 0, 1, 0, {}},                            // frame 1 fitted by no row
        Case{2, 2, 4, 6, 10, 128, 2, true, hf, bshd, 1, 1, 6, {6, 3}, false, false, false, true}, // video-like
        Case{2, 1, 3, 4, 5, 64, 2, true, bf, bshd, 0, kNone, 5, {5, 2}, true, false},          // joint, text last
        Case{1, 2, 2, 3, 7, 128, 1, false, hf, bhsd, 1, kNone, 4, {0}, true, true, true},      // joint, text first, lens 0
        Case{1, 1, 1, 5, 5, 64, 2, true, hf, bshd, 0, 0, 3, {}, true, false},                 // joint, T = 1
        Case{2, 2, 5, 2, 7, 64, 2, true, bf, bhsd, 1, 1, 4, {4, 1}, true, true, true}),        // joint, odd T, groups
    [](const ::testing::TestParamInfo<Case>& info) { return case_name(info.param); });

// A caller workspace of exactly backward_workspace_bytes with the extra keys' count gives the library buffer's
// bits; one byte less is refused.
TEST(ExactBackwardGpu, CallerWorkspaceWithExtraKeys) {
    REQUIRE_GPU();
    const Case c{2, 2, 4, 4, 5, 64, 2, true, bf, bshd, 1, 1, 5, {2, 5}};
    const Problem p(c);
    const Options o = options_of(c);
    auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    GpuLse lse(c.B, c.heads, p.N, false);
    const ExtraKeys ek{p.tk->view, p.tv->view, p.lens.data()};
    vmonarch::attention(p.q.view, p.k.view, p.v.view, out.view, p.g, o, &lse.view, nullptr, &ek);
    BackwardOptions bo;
    bo.deterministic = true;
    const std::size_t need = vmonarch::backward_workspace_bytes(p.q.view, p.v.view, p.g, o, bo, c.L);
    EXPECT_GT(need, vmonarch::backward_workspace_bytes(p.q.view, p.v.view, p.g, o, bo));
    DeviceBuffer ws(need);
    vmonarch::CudaContext ctx;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = need;
    auto dq = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dk = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dv = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dtk = GpuTensor::poisoned(c.dtype, c.layout, c.B, c.L, c.heads, c.d);
    auto dtv = GpuTensor::poisoned(c.dtype, c.layout, c.B, c.L, c.heads, c.d);
    const ExtraKeyGrads eg{dtk.view, dtv.view};
    vmonarch::attention_backward(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.dout.view, dq.view, dk.view, dv.view,
                                 p.g, o, nullptr, bo, &ctx, &ek, &eg);
    sync_or_throw();
    const Grads lib = p.gpu(false, true, false);
    EXPECT_EQ(dq.raw(), lib.raw_dq);
    EXPECT_EQ(dk.raw(), lib.raw_dk);
    EXPECT_EQ(dv.raw(), lib.raw_dv);
    EXPECT_EQ(dtv.raw(), lib.raw_dtv);
    ctx.workspace_bytes = need - 1;
    EXPECT_THROW(vmonarch::attention_backward(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.dout.view, dq.view,
                                              dk.view, dv.view, p.g, o, nullptr, bo, &ctx, &ek, &eg),
                 vmonarch::CudaError);
}

// The training forward with exact groups gives the plain forward's out and lse bit for bit.
TEST(ExactBackwardGpu, TrainingForwardEqualsForward) {
    REQUIRE_GPU();
    for (const Case& c : {Case{2, 2, 5, 3, 5, 64, 2, true, bf, bshd, 1, 1, 4, {4, 2}},
                          Case{1, 1, 4, 2, 7, 128, 1, false, hf, bhsd, 2, kNone, 0, {}}}) {
        const Problem p(c);
        const Options o = options_of(c);
        std::optional<ExtraKeys> ek;
        if (p.tk) ek = ExtraKeys{p.tk->view, p.tv->view, p.lens.data()};
        auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
        auto out2 = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
        GpuLse lse(c.B, c.heads, p.N, true), lse2(c.B, c.heads, p.N, true);
        SavedState state;
        vmonarch::attention_training(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.g, o, state, nullptr,
                                     ek ? &*ek : nullptr);
        vmonarch::attention(p.q.view, p.k.view, p.v.view, out2.view, p.g, o, &lse2.view, nullptr, ek ? &*ek : nullptr);
        sync_or_throw();
        EXPECT_EQ(out.raw(), out2.raw()) << case_name(c);
        EXPECT_EQ(lse.read(), lse2.read()) << case_name(c);
    }
}

} // namespace
} // namespace gputest
