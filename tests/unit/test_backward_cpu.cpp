// The CPU backward (spec §7): finite differences of the forward in f64 (exact gradient), properties of
// the paper's gradient, lean vs saved mode, and argument errors.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <tuple>

#include "support/expect_error.hpp"
#include "support/test_tensors.hpp"
#include "vmonarch/backward.hpp"

using namespace vmtest;
using vmonarch::ArgumentError;
using vmonarch::BackwardOptions;
using vmonarch::LseView;
using vmonarch::Options;
using vmonarch::SavedState;
using vmonarch::VideoGrid;

namespace {

struct Problem {
    std::int64_t B = 1, H = 2, d = 3, dv = 2;
    VideoGrid grid{3, 1, 2};
    Layout layout = Layout::bhsd;
    Options options;
    std::int64_t N() const { return grid.tokens(); }

    std::vector<double> qv, kv, vv, doutv, dlsev;

    explicit Problem(std::uint64_t seed, Layout l = Layout::bhsd) : layout(l) {
        options.cr_clamp = 0.3;
        qv = random_normal(std::size_t(B * N() * H * d), seed);
        kv = random_normal(std::size_t(B * N() * H * d), seed + 1);
        vv = random_normal(std::size_t(B * N() * H * dv), seed + 2);
        doutv = random_normal(std::size_t(B * N() * H * dv), seed + 3);
        dlsev = random_normal(std::size_t(B * H * N()), seed + 4);
    }

    HostBuffer buf(const std::vector<double>& x, std::int64_t dim) const {
        return HostBuffer(x, DType::f64, layout, B, N(), H, dim);
    }

    // loss = Σ out·dout + Σ lse·dlse of the forward on (q, k, v).
    double loss(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) const {
        HostBuffer qb = buf(q, d), kb = buf(k, d), vb = buf(v, dv), ob = HostBuffer::empty(DType::f64, layout, B, N(), H, dv);
        std::vector<double> lse(std::size_t(B * H * N()));
        const LseView lv = LseView::contiguous(lse.data(), DType::f64, vmonarch::Device::cpu, B, H, N());
        vmonarch::attention(qb.view, kb.view, vb.view, ob.view, grid, options, &lv);
        const auto out = ob.read();
        double s = 0;
        for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * doutv[i];
        for (std::size_t i = 0; i < lse.size(); ++i) s += lse[i] * dlsev[i];
        return s;
    }

    struct Grads {
        std::vector<double> dq, dk, dv;
    };

    Grads backward(BackwardOptions bo, bool saved_mode) const {
        HostBuffer qb = buf(qv, d), kb = buf(kv, d), vb = buf(vv, dv), ob = HostBuffer::empty(DType::f64, layout, B, N(), H, dv);
        HostBuffer dob = buf(doutv, dv);
        HostBuffer dqb = HostBuffer::empty(DType::f64, layout, B, N(), H, d),
                   dkb = HostBuffer::empty(DType::f64, layout, B, N(), H, d),
                   dvb = HostBuffer::empty(DType::f64, layout, B, N(), H, dv);
        std::vector<double> lse(std::size_t(B * H * N())), dlse = dlsev;
        const LseView lv = LseView::contiguous(lse.data(), DType::f64, vmonarch::Device::cpu, B, H, N());
        const LseView dlv = LseView::contiguous(dlse.data(), DType::f64, vmonarch::Device::cpu, B, H, N());
        SavedState state;
        if (saved_mode) {
            vmonarch::attention_training(qb.view, kb.view, vb.view, ob.view, lv, grid, options, state);
            bo.saved = &state;
        } else {
            vmonarch::attention(qb.view, kb.view, vb.view, ob.view, grid, options, &lv);
        }
        vmonarch::attention_backward(qb.view, kb.view, vb.view, ob.view, lv, dob.view, dqb.view, dkb.view, dvb.view,
                                     grid, options, &dlv, bo);
        return {dqb.read(), dkb.read(), dvb.read()};
    }
};

// Central differences of the loss in every input entry.
std::vector<double> numeric_grad(const Problem& p, int which) {
    std::vector<double> q = p.qv, k = p.kv, v = p.vv;
    std::vector<double>& x = which == 0 ? q : which == 1 ? k : v;
    std::vector<double> g(x.size());
    const double h = 1e-5;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double x0 = x[i];
        x[i] = x0 + h;
        const double up = p.loss(q, k, v);
        x[i] = x0 - h;
        const double down = p.loss(q, k, v);
        x[i] = x0;
        g[i] = (up - down) / (2 * h);
    }
    return g;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol, const char* what) {
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << what << "[" << i << "]";
}

} // namespace

TEST(BackwardCpu, ExactGradientMatchesFiniteDifferences) {
    for (int t : {1, 2, 3})
        for (bool recompute : {true, false})
            for (Layout layout : {Layout::bhsd, Layout::bshd}) {
                Problem p(100 + t, layout);
                p.options.iterations = t;
                p.options.recompute_first_frame = recompute;
                BackwardOptions bo;
                bo.entropy_grad = true;
                const auto g = p.backward(bo, false);
                expect_close(g.dq, numeric_grad(p, 0), 2e-7, "dq");
                expect_close(g.dk, numeric_grad(p, 1), 2e-7, "dk");
                expect_close(g.dv, numeric_grad(p, 2), 2e-7, "dv");
            }
}

TEST(BackwardCpu, SingleFrameVariantsAgreeWithoutLseGradient) {
    // t = 1, T = 1: the Monarch matrix is dense attention within the frame. Without an LSE gradient both
    // variants coincide (cL enters out only through the one-key-frame L-step, whose softmax is 1).
    Problem p(7);
    p.grid = {1, 2, 3};
    p.qv = random_normal(std::size_t(p.B * p.N() * p.H * p.d), 1);
    p.kv = random_normal(std::size_t(p.B * p.N() * p.H * p.d), 2);
    p.vv = random_normal(std::size_t(p.B * p.N() * p.H * p.dv), 3);
    p.doutv = random_normal(std::size_t(p.B * p.N() * p.H * p.dv), 4);
    p.dlsev.assign(std::size_t(p.B * p.H * p.N()), 0.0);
    p.options.iterations = 1;
    p.options.recompute_first_frame = false;
    BackwardOptions exact;
    exact.entropy_grad = true;
    const auto a = p.backward({}, false), b = p.backward(exact, false);
    expect_close(a.dq, b.dq, 1e-13, "dq");
    expect_close(a.dk, b.dk, 1e-13, "dk");
    expect_close(a.dq, numeric_grad(p, 0), 2e-7, "dq");
}

TEST(BackwardCpu, LeanEqualsSavedAndDvEqualAcrossVariants) {
    Problem p(11, Layout::bshd);
    BackwardOptions exact;
    exact.entropy_grad = true;
    const auto lean = p.backward({}, false), saved = p.backward({}, true);
    EXPECT_EQ(lean.dq, saved.dq);
    EXPECT_EQ(lean.dk, saved.dk);
    EXPECT_EQ(lean.dv, saved.dv);
    const auto ex = p.backward(exact, true);
    EXPECT_EQ(ex.dv, lean.dv);
    EXPECT_GT(max_abs_diff(ex.dq, lean.dq), 1e-8); // the entropy term changes dq and dk
    EXPECT_TRUE(all_finite(ex.dk));
}

TEST(BackwardCpu, Float32CloseToFloat64) {
    const std::int64_t B = 1, H = 2, d = 16;
    const VideoGrid grid{3, 2, 5};
    const std::int64_t N = grid.tokens();
    const auto q = random_normal(std::size_t(B * N * H * d), 1), k = random_normal(std::size_t(B * N * H * d), 2);
    const auto v = random_normal(std::size_t(B * N * H * d), 3), dout = random_normal(std::size_t(B * N * H * d), 4);
    std::vector<double> grads[2][3];
    int slot = 0;
    for (DType dt : {DType::f64, DType::f32}) {
        HostBuffer qb(q, dt, Layout::bshd, B, N, H, d), kb(k, dt, Layout::bshd, B, N, H, d), vb(v, dt, Layout::bshd, B, N, H, d);
        HostBuffer ob = HostBuffer::empty(dt, Layout::bshd, B, N, H, d), dob(dout, dt, Layout::bshd, B, N, H, d);
        HostBuffer dq = HostBuffer::empty(dt, Layout::bshd, B, N, H, d), dk = HostBuffer::empty(dt, Layout::bshd, B, N, H, d),
                   dv = HostBuffer::empty(dt, Layout::bshd, B, N, H, d);
        std::vector<float> lse32(std::size_t(B * H * N));
        std::vector<double> lse64(std::size_t(B * H * N));
        const LseView lv = dt == DType::f64 ? LseView::contiguous(lse64.data(), DType::f64, vmonarch::Device::cpu, B, H, N)
                                            : LseView::contiguous(lse32.data(), DType::f32, vmonarch::Device::cpu, B, H, N);
        vmonarch::attention(qb.view, kb.view, vb.view, ob.view, grid, {}, &lv);
        vmonarch::attention_backward(qb.view, kb.view, vb.view, ob.view, lv, dob.view, dq.view, dk.view, dv.view, grid);
        grads[slot][0] = dq.read(), grads[slot][1] = dk.read(), grads[slot][2] = dv.read();
        ++slot;
    }
    for (int g = 0; g < 3; ++g) EXPECT_LT(rel_l2(grads[1][g], grads[0][g]), 1e-4) << g;
}

// --- argument errors ------------------------------------------------------------------------------------
namespace {

struct ErrorFixture {
    VideoGrid grid{2, 2, 2};
    HostBuffer q = HostBuffer(random_normal(2 * 8 * 2 * 4, 1), DType::f32, Layout::bshd, 2, 8, 2, 4);
    HostBuffer k = HostBuffer(random_normal(2 * 8 * 2 * 4, 2), DType::f32, Layout::bshd, 2, 8, 2, 4);
    HostBuffer v = HostBuffer(random_normal(2 * 8 * 2 * 4, 3), DType::f32, Layout::bshd, 2, 8, 2, 4);
    HostBuffer out = HostBuffer::empty(DType::f32, Layout::bshd, 2, 8, 2, 4);
    HostBuffer dout = HostBuffer(random_normal(2 * 8 * 2 * 4, 4), DType::f32, Layout::bshd, 2, 8, 2, 4);
    HostBuffer dq = HostBuffer::empty(DType::f32, Layout::bshd, 2, 8, 2, 4);
    HostBuffer dk = HostBuffer::empty(DType::f32, Layout::bshd, 2, 8, 2, 4);
    HostBuffer dv = HostBuffer::empty(DType::f32, Layout::bshd, 2, 8, 2, 4);
    std::vector<float> lse_data = std::vector<float>(2 * 2 * 8);
    LseView lse = LseView::contiguous(lse_data.data(), DType::f32, vmonarch::Device::cpu, 2, 2, 8);

    ErrorFixture() { vmonarch::attention(q.view, k.view, v.view, out.view, grid, {}, &lse); }

    void call(const vmonarch::TensorView& douts, const vmonarch::TensorView& dqs, const Options& o = {},
              const LseView* dlse = nullptr, BackwardOptions bo = {}) {
        vmonarch::attention_backward(q.view, k.view, v.view, out.view, lse, douts, dqs, dk.view, dv.view, grid, o, dlse, bo);
    }
};

} // namespace

TEST(BackwardCpu, ValidCallWritesFiniteGradients) {
    ErrorFixture f;
    f.call(f.dout.view, f.dq.view);
    EXPECT_TRUE(all_finite(f.dq.read()));
    EXPECT_TRUE(all_finite(f.dk.read()));
    EXPECT_TRUE(all_finite(f.dv.read()));
}

TEST(BackwardCpu, ArgumentErrors) {
    ErrorFixture f;
    auto bad = f.dout.view;
    bad.shape[1] = 4;
    expect_error([&] { f.call(bad, f.dq.view); }, "dout.shape[1]", {"attention_backward", "tokens", "is 4", "expected 8", "like out"});
    bad = f.dq.view;
    bad.dtype = DType::f64;
    expect_error([&] { f.call(f.dout.view, bad); }, "dq.dtype", {"f64", "expected f32"});
    expect_error([&] { f.call(f.dout.view, f.q.view); }, "dq", {"overlaps the memory of q"});
    expect_error([&] { f.call(f.dout.view, f.dk.view); }, "dk", {"overlaps the memory of dq"});
    bad = f.dq.view;
    bad.strides[1] = 0;
    expect_error([&] { f.call(f.dout.view, bad); }, "dq.strides[1]", {"expected >= 1"});
    Options o;
    o.iterations = 0;
    expect_error([&] { f.call(f.dout.view, f.dq.view, o); }, "options.iterations", {"is 0", "expected 1..8"});
    std::vector<float> dl(3);
    const LseView short_dlse = LseView::contiguous(dl.data(), DType::f32, vmonarch::Device::cpu, 2, 2, 3);
    expect_error([&] { f.call(f.dout.view, f.dq.view, {}, &short_dlse); }, "dlse.shape[2]", {"is 3", "expected 8"});
    LseView f64_dlse = f.lse;
    f64_dlse.dtype = DType::f64;
    expect_error([&] { f.call(f.dout.view, f.dq.view, {}, &f64_dlse); }, "dlse.dtype", {"f64", "expected f32"});
}

TEST(BackwardCpu, SavedStateErrors) {
    ErrorFixture f;
    SavedState empty;
    BackwardOptions bo;
    bo.saved = &empty;
    expect_error([&] { f.call(f.dout.view, f.dq.view, {}, nullptr, bo); }, "backward.saved", {"is empty"});
    SavedState state;
    vmonarch::attention_training(f.q.view, f.k.view, f.v.view, f.out.view, f.lse, f.grid, {}, state);
    EXPECT_TRUE(state.filled());
    EXPECT_EQ(state.bytes(), vmonarch::saved_state_bytes(f.q.view, f.v.view, f.grid));
    // 2 batches x 2 heads x (2·(8·4 + 16) + (8·4 + 8) + 8·4) floats + header
    EXPECT_EQ(state.bytes(), std::size_t(128 + 4 * (96 + 40 + 32) * 4));
    bo.saved = &state;
    Options o;
    o.iterations = 3;
    expect_error([&] { f.call(f.dout.view, f.dq.view, o, nullptr, bo); }, "backward.saved", {"iterations 2", "expected 3"});
    o = {};
    o.recompute_first_frame = false;
    expect_error([&] { f.call(f.dout.view, f.dq.view, o, nullptr, bo); }, "backward.saved", {"recompute_first_frame"});
    o = {};
    o.softmax_scale = 0.25;
    expect_error([&] { f.call(f.dout.view, f.dq.view, o, nullptr, bo); }, "backward.saved", {"softmax scale"});
    EXPECT_NO_THROW(f.call(f.dout.view, f.dq.view, {}, nullptr, bo));
    // caller memory that is too small
    std::vector<std::uint64_t> small(32);
    SavedState over = SavedState::over(small.data(), small.size() * 8);
    expect_error([&] { vmonarch::attention_training(f.q.view, f.k.view, f.v.view, f.out.view, f.lse, f.grid, {}, over); },
                 "state", {"holds 256 bytes", "expected at least"});
    expect_error([&] { SavedState::over(nullptr, 1024); }, "data", {"is null"});
}

// In a build without CUDA kernels CUDA tensors get UnsupportedError (from the backend stubs) after the
// argument checks. With CUDA kernels, tests/gpu/test_backward_gpu.cpp covers them.
TEST(BackwardCpu, CudaTensorsWithoutCudaKernelsAreUnsupported) {
#ifdef VMONARCH_WITH_CUDA
    GTEST_SKIP() << "this build has CUDA kernels (tests/gpu/test_backward_gpu.cpp)";
#else
    const VideoGrid grid{2, 2, 2};
    // Host memory labelled cuda: the call stops after validation and never dereferences it.
    std::vector<std::uint16_t> mem(std::size_t(8) * 2 * 8 * 2 * 64 + 64);
    auto* base = reinterpret_cast<std::uint16_t*>((reinterpret_cast<std::uintptr_t>(mem.data()) + 15) & ~std::uintptr_t(15));
    auto view = [&](int slot) {
        return vmonarch::TensorView::bshd(base + slot * 2 * 8 * 2 * 64, DType::bf16, vmonarch::Device::cuda, 2, 8, 2, 64);
    };
    std::vector<float> lse(2 * 2 * 8);
    const LseView lv = LseView::contiguous(lse.data(), DType::f32, vmonarch::Device::cuda, 2, 2, 8);
    for (int which = 0; which < 2; ++which) {
        try {
            if (which == 0) {
                vmonarch::attention_backward(view(0), view(1), view(2), view(3), lv, view(4), view(5), view(6), view(7), grid);
            } else {
                SavedState state;
                vmonarch::attention_training(view(0), view(1), view(2), view(3), lv, grid, {}, state);
            }
            ADD_FAILURE() << "no error";
        } catch (const vmonarch::UnsupportedError& e) {
            EXPECT_NE(std::string(e.what()).find("no CUDA kernels"), std::string::npos) << e.what();
        }
    }
#endif
}

// The CUDA saved state's size (2-byte vectors, f32 scalars, 256-byte aligned whole-tensor regions) is known
// without a device; its header is the one attention_training writes.
TEST(BackwardCpu, CudaSavedStateSizeAndHeader) {
    const VideoGrid grid{3, 4, 5};
    const std::int64_t B = 2, N = 60, H = 3, d = 64;
    auto view = [&](void* p) { return vmonarch::TensorView::bshd(p, DType::bf16, vmonarch::Device::cuda, B, N, H, d); };
    alignas(16) static std::uint16_t fake[16];
    const auto q = view(fake), v = view(fake);
    const std::size_t rows = std::size_t(B * N * H);
    auto align = [](std::size_t x) { return (x + 255) / 256 * 256; };
    for (int t : {1, 2, 3}) {
        Options o;
        o.iterations = t;
        const std::size_t vec = align(rows * d * 2), scalar = align(rows * 4);
        EXPECT_EQ(vmonarch::saved_state_bytes(q, v, grid, o),
                  128 + std::size_t(t) * (vec + 2 * scalar) + std::size_t(t - 1) * (vec + scalar) + vec) << t;
        const auto header = vmonarch::saved_state_header(q, v, grid, o);
        std::uint64_t magic = 0;
        std::memcpy(&magic, header.data(), 8);
        EXPECT_NE(magic, 0u);
        std::int32_t acc_bytes = 0;
        std::memcpy(&acc_bytes, header.data() + 12, 4);
        EXPECT_EQ(acc_bytes, 2);
    }
    EXPECT_EQ(vmonarch::backward_workspace_bytes(vmonarch::TensorView::bshd(fake, DType::f32, vmonarch::Device::cpu, 1, 60, 1, 4),
                                                 vmonarch::TensorView::bshd(fake, DType::f32, vmonarch::Device::cpu, 1, 60, 1, 4), grid),
              0u);
    // The extra keys' count (exact key groups, spec §3b) is checked on every device.
    const auto cpu_view = vmonarch::TensorView::bshd(fake, DType::f32, vmonarch::Device::cpu, 1, 60, 1, 4);
    for (auto [extra, text, argument] : {std::tuple<std::int64_t, bool, const char*>{-1, false, "extra_tokens"},
                                         std::tuple<std::int64_t, bool, const char*>{0, true, "text_queries"}}) {
        try {
            vmonarch::backward_workspace_bytes(cpu_view, cpu_view, grid, {}, {}, extra, text);
            ADD_FAILURE() << "no error for " << argument;
        } catch (const vmonarch::ArgumentError& e) {
            EXPECT_EQ(e.argument(), argument) << e.what();
        }
    }
    EXPECT_EQ(vmonarch::backward_workspace_bytes(cpu_view, cpu_view, grid, {}, {}, 5, true), 0u);
}
