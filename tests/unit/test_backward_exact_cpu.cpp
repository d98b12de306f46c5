// The CPU backward with exact key groups (spec §3b, §7) and of joint sequences (spec §3c): finite differences of
// the forward in f64 (exact gradient), lean vs saved mode, and argument errors. The comparison with autograd
// through the reference at many shapes is in tests/python/test_backward_exact_cpu.py.
#include <gtest/gtest.h>

#include <functional>

#include "support/expect_error.hpp"
#include "support/test_tensors.hpp"
#include "vmonarch/backward.hpp"

using namespace vmtest;
using vmonarch::BackwardOptions;
using vmonarch::ExtraKeyGrads;
using vmonarch::ExtraKeys;
using vmonarch::LseView;
using vmonarch::Options;
using vmonarch::SavedState;
using vmonarch::TextPosition;
using vmonarch::VideoGrid;

namespace {

constexpr vmonarch::Device kCpu = vmonarch::Device::cpu;

// attention() with exact groups and L extra keys (valid prefixes lens), or joint_attention() over N + L tokens.
struct Problem {
    std::int64_t B = 2, H = 1, d = 3, dv = 2, L = 2;
    VideoGrid grid{3, 1, 2};
    Layout layout = Layout::bhsd;
    Options options;
    std::vector<std::int64_t> lens{2, 1};
    bool joint = false;
    TextPosition position = TextPosition::last;

    // inputs[0..4] = q, k, v, text k, text v (joint: q, k, v hold the whole sequence; 3, 4 unused)
    std::vector<double> inputs[5], doutv, dlsev;

    std::int64_t N() const { return grid.tokens(); }
    std::int64_t rows() const { return joint ? N() + L : N(); } // query rows of out

    Problem(std::uint64_t seed, bool joint_sequence) : joint(joint_sequence) {
        options.cr_clamp = 0.3;
        options.sink_frames = 1;
        fill(seed);
    }

    // Fresh random inputs and output gradients for the current sizes.
    void fill(std::uint64_t seed) {
        const std::int64_t n = rows();
        inputs[0] = random_normal(std::size_t(B * n * H * d), seed);
        inputs[1] = random_normal(std::size_t(B * n * H * d), seed + 1);
        inputs[2] = random_normal(std::size_t(B * n * H * dv), seed + 2);
        inputs[3] = random_normal(std::size_t(B * L * H * d), seed + 3);
        inputs[4] = random_normal(std::size_t(B * L * H * dv), seed + 4);
        doutv = random_normal(std::size_t(B * n * H * dv), seed + 5);
        dlsev = random_normal(std::size_t(B * H * n), seed + 6);
    }

    std::int64_t tokens_of(int which) const { return which >= 3 ? L : rows(); }
    std::int64_t dim_of(int which) const { return which == 2 || which == 4 ? dv : d; }
    HostBuffer buf(const std::vector<double>* in, int which) const {
        return HostBuffer(in[which], DType::f64, layout, B, tokens_of(which), H, dim_of(which));
    }
    HostBuffer empty(int which) const { return HostBuffer::empty(DType::f64, layout, B, tokens_of(which), H, dim_of(which)); }

    void forward(const std::vector<double>* in, HostBuffer& ob, std::vector<double>& lse, SavedState* state) const {
        HostBuffer qb = buf(in, 0), kb = buf(in, 1), vb = buf(in, 2), tk = buf(in, 3), tv = buf(in, 4);
        const LseView lv = LseView::contiguous(lse.data(), DType::f64, kCpu, B, H, rows());
        if (joint) {
            vmonarch::joint_attention(qb.view, kb.view, vb.view, ob.view, grid, L, position, lens.data(), options, &lv);
            return;
        }
        const ExtraKeys extra{tk.view, tv.view, lens.data()};
        if (state) {
            vmonarch::attention_training(qb.view, kb.view, vb.view, ob.view, lv, grid, options, *state, nullptr, &extra);
        } else {
            vmonarch::attention(qb.view, kb.view, vb.view, ob.view, grid, options, &lv, nullptr, &extra);
        }
    }

    // loss = Σ out·dout + Σ lse·dlse.
    double loss(const std::vector<double>* in) const {
        HostBuffer ob = HostBuffer::empty(DType::f64, layout, B, rows(), H, dv);
        std::vector<double> lse(std::size_t(B * H * rows()));
        forward(in, ob, lse, nullptr);
        const auto out = ob.read();
        double s = 0;
        for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * doutv[i];
        for (std::size_t i = 0; i < lse.size(); ++i) s += lse[i] * dlsev[i];
        return s;
    }

    // Gradients of the five inputs (joint: three).
    std::vector<std::vector<double>> backward(BackwardOptions bo, bool saved_mode) const {
        HostBuffer qb = buf(inputs, 0), kb = buf(inputs, 1), vb = buf(inputs, 2), tk = buf(inputs, 3), tv = buf(inputs, 4);
        HostBuffer ob = HostBuffer::empty(DType::f64, layout, B, rows(), H, dv);
        HostBuffer dob(doutv, DType::f64, layout, B, rows(), H, dv);
        HostBuffer g[5] = {empty(0), empty(1), empty(2), empty(3), empty(4)};
        std::vector<double> lse(std::size_t(B * H * rows())), dlse = dlsev;
        const LseView lv = LseView::contiguous(lse.data(), DType::f64, kCpu, B, H, rows());
        const LseView dlv = LseView::contiguous(dlse.data(), DType::f64, kCpu, B, H, rows());
        SavedState state;
        forward(inputs, ob, lse, saved_mode ? &state : nullptr);
        if (saved_mode) bo.saved = &state;
        if (joint) {
            vmonarch::joint_attention_backward(qb.view, kb.view, vb.view, ob.view, lv, dob.view, g[0].view, g[1].view,
                                               g[2].view, grid, L, position, lens.data(), options, &dlv, bo);
            return {g[0].read(), g[1].read(), g[2].read()};
        }
        const ExtraKeys extra{tk.view, tv.view, lens.data()};
        const ExtraKeyGrads extra_grads{g[3].view, g[4].view};
        vmonarch::attention_backward(qb.view, kb.view, vb.view, ob.view, lv, dob.view, g[0].view, g[1].view, g[2].view,
                                     grid, options, &dlv, bo, nullptr, &extra, &extra_grads);
        return {g[0].read(), g[1].read(), g[2].read(), g[3].read(), g[4].read()};
    }
};

// Central differences of the loss in every entry of input `which`.
std::vector<double> numeric_grad(const Problem& p, int which) {
    std::vector<double> in[5] = {p.inputs[0], p.inputs[1], p.inputs[2], p.inputs[3], p.inputs[4]};
    std::vector<double>& x = in[which];
    std::vector<double> g(x.size());
    const double h = 1e-5;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double x0 = x[i];
        x[i] = x0 + h;
        const double up = p.loss(in);
        x[i] = x0 - h;
        const double down = p.loss(in);
        x[i] = x0;
        g[i] = (up - down) / (2 * h);
    }
    return g;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << what << "[" << i << "]";
}

void expect_matches_finite_differences(const Problem& p, const std::string& what) {
    BackwardOptions bo;
    bo.entropy_grad = true;
    const auto g = p.backward(bo, false);
    const char* names[5] = {"dq", "dk", "dv", "dk_text", "dv_text"};
    for (std::size_t w = 0; w < g.size(); ++w) expect_close(g[w], numeric_grad(p, int(w)), 2e-7, what + " " + names[w]);
}

} // namespace

TEST(BackwardExactCpu, SinksWindowAndTextMatchFiniteDifferences) {
    struct Case {
        std::int64_t S, r; // r < 0: no window
        int t;
        bool recompute;
        std::int64_t L;
        std::vector<std::int64_t> lens;
    };
    const Case cases[] = {{1, -1, 2, true, 2, {2, 1}}, {2, -1, 1, false, 0, {0, 0}}, {0, 0, 2, false, 3, {3, 0}},
                          {1, 1, 2, true, 1, {0, 1}},  {5, -1, 2, true, 2, {1, 2}}, {0, 1, 3, false, 2, {2, 2}}};
    for (const Case& c : cases)
        for (Layout layout : {Layout::bhsd, Layout::bshd}) {
            Problem p(200 + std::uint64_t(c.S * 7 + c.t), false);
            p.layout = layout;
            p.grid = {4, 1, 2};
            p.options.sink_frames = c.S;
            p.options.window_radius = c.r < 0 ? std::nullopt : std::optional<std::int64_t>(c.r);
            p.options.iterations = c.t;
            p.options.recompute_first_frame = c.recompute;
            p.L = c.L;
            p.lens = c.lens;
            p.fill(400 + std::uint64_t(c.S * 3 + c.t));
            expect_matches_finite_differences(p, "S=" + std::to_string(c.S) + " r=" + std::to_string(c.r));
        }
}

TEST(BackwardExactCpu, JointSequenceMatchesFiniteDifferences) {
    for (TextPosition position : {TextPosition::first, TextPosition::last})
        for (std::int64_t L : {0, 2, 3}) {
            Problem p(500 + std::uint64_t(L), true);
            p.position = position;
            p.L = L;
            p.lens = {L, L > 0 ? L - 1 : 0};
            p.options.sink_frames = L == 3 ? 0 : 1;
            p.options.recompute_first_frame = L != 2;
            p.fill(600 + std::uint64_t(L));
            expect_matches_finite_differences(p, std::string(position == TextPosition::first ? "first" : "last") +
                                                     " L=" + std::to_string(L));
        }
}

TEST(BackwardExactCpu, KeyFramesNoRowFitsGiveFiniteGradientsWithoutClamp) {
    // T = 3, S = 1, r = 1: key frame 1 is exact for every query frame, so no row fits it and its R-steps are
    // skipped; with clamp 0 its carried cR = 0 would divide by zero if they ran.
    Problem p(700, false);
    p.grid = {3, 2, 1};
    p.options.sink_frames = 1;
    p.options.window_radius = 1;
    p.options.cr_clamp = 0;
    p.options.recompute_first_frame = false;
    p.fill(701);
    const auto g = p.backward({}, false);
    for (const auto& x : g) EXPECT_TRUE(all_finite(x));
    expect_matches_finite_differences(p, "clamp 0");
}

TEST(BackwardExactCpu, LeanMatchesSavedAndDvEqualAcrossVariants) {
    Problem p(800, false);
    p.layout = Layout::bshd;
    p.grid = {4, 2, 1};
    p.options.window_radius = 0;
    p.fill(801);
    BackwardOptions exact;
    exact.entropy_grad = true;
    const auto lean = p.backward({}, false), saved = p.backward({}, true);
    for (std::size_t w = 0; w < lean.size(); ++w) EXPECT_LT(max_abs_diff(lean[w], saved[w]), 1e-13) << w;
    const auto ex = p.backward(exact, true);
    EXPECT_EQ(ex[2], saved[2]);                       // dv does not see the entropy term
    EXPECT_EQ(ex[4], saved[4]);                       // nor do the text values
    EXPECT_GT(max_abs_diff(ex[0], saved[0]), 1e-8);   // dq does
    const auto again = p.backward({}, true);          // bitwise repeatable
    for (std::size_t w = 0; w < again.size(); ++w) EXPECT_EQ(again[w], saved[w]) << w;
}

TEST(BackwardExactCpu, PaddedTextKeysGetZeroGradients) {
    Problem p(900, false);
    p.L = 3;
    p.lens = {1, 0};
    p.fill(901);
    const auto g = p.backward({}, false);
    // logical [b][l][h][c]; H = 1: batch 0 keeps row 0 only, batch 1 none.
    for (int w : {3, 4}) {
        const std::int64_t dim = p.dim_of(w);
        for (std::int64_t b = 0; b < p.B; ++b)
            for (std::int64_t l = 0; l < p.L; ++l)
                for (std::int64_t c = 0; c < dim; ++c) {
                    const double x = g[std::size_t(w)][std::size_t((b * p.L + l) * dim + c)];
                    if (l >= p.lens[std::size_t(b)]) {
                        EXPECT_EQ(x, 0.0) << w << " " << b << " " << l;
                    } else {
                        EXPECT_TRUE(std::isfinite(x));
                    }
                }
    }
    EXPECT_GT(max_abs_diff(g[3], std::vector<double>(g[3].size(), 0.0)), 0.0);
}

TEST(BackwardExactCpu, ArgumentErrors) {
    Problem p(1000, false);
    HostBuffer qb = p.buf(p.inputs, 0), kb = p.buf(p.inputs, 1), vb = p.buf(p.inputs, 2), tk = p.buf(p.inputs, 3),
               tv = p.buf(p.inputs, 4);
    HostBuffer ob = p.empty(2), dob(p.doutv, DType::f64, p.layout, p.B, p.N(), p.H, p.dv);
    HostBuffer g[5] = {p.empty(0), p.empty(1), p.empty(2), p.empty(3), p.empty(4)};
    std::vector<double> lse(std::size_t(p.B * p.H * p.N()));
    const LseView lv = LseView::contiguous(lse.data(), DType::f64, kCpu, p.B, p.H, p.N());
    const ExtraKeys extra{tk.view, tv.view, p.lens.data()};
    SavedState state;
    vmonarch::attention_training(qb.view, kb.view, vb.view, ob.view, lv, p.grid, p.options, state, nullptr, &extra);
    auto call = [&](const Options& o, const ExtraKeyGrads* eg, BackwardOptions bo = {}, const ExtraKeys* e = nullptr) {
        vmonarch::attention_backward(qb.view, kb.view, vb.view, ob.view, lv, dob.view, g[0].view, g[1].view, g[2].view,
                                     p.grid, o, nullptr, bo, nullptr, e ? e : &extra, eg);
    };
    expect_error([&] { call(p.options, nullptr); }, "extra_grads", {"attention_backward", "is null", "2 extra keys"});
    ExtraKeyGrads short_grads{g[3].view, g[4].view};
    short_grads.dv.shape[1] = 1;
    expect_error([&] { call(p.options, &short_grads); }, "extra_grads.dv.shape[1]", {"is 1", "expected 2", "extra_keys.v"});
    const ExtraKeyGrads aliased{g[3].view, tv.view};
    expect_error([&] { call(p.options, &aliased); }, "extra_grads.dv", {"overlaps the memory of extra_keys.v"});
    const ExtraKeyGrads on_dq{g[0].view, g[4].view};
    expect_error([&] { call(p.options, &on_dq); }, "extra_grads.dk.shape[1]", {"is 6", "expected 2"});
    const ExtraKeyGrads good{g[3].view, g[4].view};
    Options o = p.options;
    o.sink_frames = -1;
    expect_error([&] { call(o, &good); }, "options.sink_frames", {"is -1", "expected >= 0"});
    BackwardOptions bo;
    bo.saved = &state;
    o = p.options;
    o.sink_frames = 2;
    expect_error([&] { call(o, &good, bo); }, "backward.saved", {"sink_frames 1", "expected 2"});
    o = p.options;
    o.window_radius = 0;
    expect_error([&] { call(o, &good, bo); }, "backward.saved", {"window_radius none", "expected 0"});
    std::vector<std::int64_t> bad_lens{3, 0};
    const ExtraKeys bad_extra{tk.view, tv.view, bad_lens.data()};
    expect_error([&] { call(p.options, &good, {}, &bad_extra); }, "extra_keys.lens[0]", {"is 3", "expected 0..2"});
    EXPECT_NO_THROW(call(p.options, &good, bo));
    EXPECT_TRUE(all_finite(g[3].read()));
}

TEST(BackwardExactCpu, JointArgumentErrors) {
    Problem p(1100, true);
    HostBuffer qb = p.buf(p.inputs, 0), kb = p.buf(p.inputs, 1), vb = p.buf(p.inputs, 2);
    HostBuffer ob = HostBuffer::empty(DType::f64, p.layout, p.B, p.rows(), p.H, p.dv);
    HostBuffer dob(p.doutv, DType::f64, p.layout, p.B, p.rows(), p.H, p.dv);
    HostBuffer g[3] = {p.empty(0), p.empty(1), p.empty(2)};
    std::vector<double> lse(std::size_t(p.B * p.H * p.rows()));
    const LseView lv = LseView::contiguous(lse.data(), DType::f64, kCpu, p.B, p.H, p.rows());
    vmonarch::joint_attention(qb.view, kb.view, vb.view, ob.view, p.grid, p.L, p.position, p.lens.data(), p.options, &lv);
    auto call = [&](std::int64_t L, const std::int64_t* lens, BackwardOptions bo = {}) {
        vmonarch::joint_attention_backward(qb.view, kb.view, vb.view, ob.view, lv, dob.view, g[0].view, g[1].view,
                                           g[2].view, p.grid, L, p.position, lens, p.options, nullptr, bo);
    };
    expect_error([&] { call(3, p.lens.data()); }, "q.shape[1]", {"joint_attention_backward", "expected N + L"});
    std::vector<std::int64_t> bad{1, 5};
    expect_error([&] { call(p.L, bad.data()); }, "text_lens[1]", {"is 5", "expected 0..2"});
    SavedState state;
    BackwardOptions bo;
    bo.saved = &state;
    expect_error([&] { call(p.L, p.lens.data(), bo); }, "backward.saved", {"lean mode only"});
    EXPECT_NO_THROW(call(p.L, p.lens.data()));
    EXPECT_TRUE(all_finite(g[0].read()));
}
