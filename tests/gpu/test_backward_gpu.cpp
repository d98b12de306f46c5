// The CUDA backward (spec §7) against the library's f64 CPU backward on the same rounded inputs: dq, dk, dv
// for iterations 1..3, clamp active, recompute on and off, T = 1, odd T, prime HW, d 64 and 128, bf16 and
// f16, batch and heads > 1, both layouts, dlse, both gradient variants; plus properties: dv bitwise equal
// between the variants, deterministic mode bitwise repeatable, saved and lean mode equal, and the errors; the
// default schedule (auto) and each of VMONARCH_BACKWARD_SCHEDULE=serial / concurrent.
// The comparisons run on the default route (the Hopper kernels on an sm_90 device) and again with the flash
// policy's sm90 peer off (the portable kernels everywhere).
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <sstream>

#include "cuda/flash_policy.hpp"
#include "gpu_test_util.hpp"
#include "vmonarch/backward.hpp"

namespace gputest {
namespace {

using vmonarch::BackwardOptions;
using vmonarch::LseView;
using vmonarch::Options;
using vmonarch::SavedState;
using vmonarch::VideoGrid;

struct Case {
    std::int64_t B, heads, T, Hh, Ww, d;
    int iterations;
    bool recompute;
    DType dtype;
    Layout layout;
    double clamp = 0.1;
    bool with_dlse = false;
    bool video = false;
};

std::string case_name(const Case& c) {
    std::ostringstream os;
    os << "B" << c.B << "h" << c.heads << "_T" << c.T << "x" << c.Hh << "x" << c.Ww << "_d" << c.d << "_t" << c.iterations
       << (c.recompute ? "_rc" : "_norc") << "_" << vmonarch::to_string(c.dtype) << "_" << name(c.layout) << "_clamp"
       << int(c.clamp * 100) << (c.with_dlse ? "_dlse" : "") << (c.video ? "_video" : "");
    return os.str();
}

Options options_of(const Case& c) {
    Options o;
    o.iterations = c.iterations;
    o.recompute_first_frame = c.recompute;
    o.cr_clamp = c.clamp;
    return o;
}

struct Grads {
    std::vector<double> dq, dk, dv;
    std::vector<std::uint16_t> raw_dq, raw_dk, raw_dv;
};

// The GPU problem of one case: rounded inputs on the device, dout and dlse, and the f64 CPU oracle.
struct Problem {
    Case c;
    VideoGrid g;
    std::int64_t N;
    Inputs in;
    GpuTensor q, k, v, dout;
    std::vector<double> dlse; // logical [b][h][n]
    DeviceBuffer dlse_buf;
    LseView dlse_view;

    explicit Problem(const Case& cs)
        : c(cs), g{cs.T, cs.Hh, cs.Ww}, N(g.tokens()),
          in(make_inputs(cs.B, cs.heads, g, cs.d, cs.video, 1.5, std::uint64_t(N * 17 + cs.d + cs.T * 5 + cs.iterations))),
          q(in.q, cs.dtype, cs.layout, cs.B, N, cs.heads, cs.d), k(in.k, cs.dtype, cs.layout, cs.B, N, cs.heads, cs.d),
          v(in.v, cs.dtype, cs.layout, cs.B, N, cs.heads, cs.d),
          dout(random_normal(std::size_t(cs.B * N * cs.heads * cs.d), std::uint64_t(N + 991), 1.0), cs.dtype, cs.layout,
               cs.B, N, cs.heads, cs.d),
          dlse(random_normal(std::size_t(cs.B * cs.heads * N), std::uint64_t(N + 7), 0.5)),
          dlse_buf(std::size_t(cs.B * cs.heads * N) * 4) {
        std::vector<float> f(dlse.begin(), dlse.end());
        for (std::size_t i = 0; i < f.size(); ++i) dlse[i] = f[i];
        dlse_buf.upload(f.data(), f.size() * 4);
        dlse_view = LseView::contiguous(dlse_buf.get(), DType::f32, Device::cuda, cs.B, cs.heads, N);
    }

    // GPU forward (training forward with saved = true, plain forward otherwise) then backward.
    Grads gpu(bool entropy_grad, bool deterministic, bool saved) const {
        const Options o = options_of(c);
        auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, N, c.heads, c.d);
        GpuLse lse(c.B, c.heads, N, false);
        SavedState state;
        BackwardOptions bo;
        bo.entropy_grad = entropy_grad;
        bo.deterministic = deterministic;
        if (saved) {
            vmonarch::attention_training(q.view, k.view, v.view, out.view, lse.view, g, o, state);
            EXPECT_TRUE(state.filled());
            EXPECT_EQ(state.device(), Device::cuda);
            bo.saved = &state;
        } else {
            vmonarch::attention(q.view, k.view, v.view, out.view, g, o, &lse.view);
        }
        auto dq = GpuTensor::poisoned(c.dtype, c.layout, c.B, N, c.heads, c.d);
        auto dk = GpuTensor::poisoned(c.dtype, c.layout, c.B, N, c.heads, c.d);
        auto dv = GpuTensor::poisoned(c.dtype, c.layout, c.B, N, c.heads, c.d);
        vmonarch::attention_backward(q.view, k.view, v.view, out.view, lse.view, dout.view, dq.view, dk.view, dv.view, g, o,
                                     c.with_dlse ? &dlse_view : nullptr, bo);
        if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("cudaDeviceSynchronize failed");
        return Grads{dq.read(), dk.read(), dv.read(), dq.raw(), dk.raw(), dv.raw()};
    }

    // The f64 CPU backward on the same rounded q, k, v, dout (and dlse).
    Grads cpu(bool entropy_grad) const {
        const Options o = options_of(c);
        std::vector<double> qs = q.values, ks = k.values, vs = v.values, dos = dout.values, dls = dlse;
        auto view = [&](std::vector<double>& s) { return TensorView::bshd(s.data(), DType::f64, Device::cpu, c.B, N, c.heads, c.d); };
        std::vector<double> out(qs.size()), lse(std::size_t(c.B * c.heads * N)), dq(qs.size()), dk(qs.size()), dv(qs.size());
        const LseView lv = LseView::contiguous(lse.data(), DType::f64, Device::cpu, c.B, c.heads, N);
        const LseView dlv = LseView::contiguous(dls.data(), DType::f64, Device::cpu, c.B, c.heads, N);
        vmonarch::attention(view(qs), view(ks), view(vs), view(out), g, o, &lv);
        BackwardOptions bo;
        bo.entropy_grad = entropy_grad;
        vmonarch::attention_backward(view(qs), view(ks), view(vs), view(out), lv, view(dos), view(dq), view(dk), view(dv), g,
                                     o, c.with_dlse ? &dlv : nullptr, bo);
        return Grads{dq, dk, dv, {}, {}, {}};
    }
};

double grad_tolerance(DType t) { return t == DType::bf16 ? 2e-2 : 5e-3; }

class Backward : public ::testing::TestWithParam<Case> {};

// Replaces the process's flash policy for one scope: the sm90 peer off (portable kernels only).
class PortableOnly {
public:
    PortableOnly() : saved_(vmonarch::cuda::flash_policy()) {
        vmonarch::cuda::FlashPolicy p = saved_;
        p.sm90 = false;
        vmonarch::cuda::set_flash_policy(p);
    }
    ~PortableOnly() { vmonarch::cuda::set_flash_policy(saved_); }
    PortableOnly(const PortableOnly&) = delete;
    PortableOnly& operator=(const PortableOnly&) = delete;

private:
    vmonarch::cuda::FlashPolicy saved_;
};

void expect_matches_cpu(const Problem& p, const Case& c) {
    const double tol = grad_tolerance(c.dtype);
    std::optional<Grads> paper;
    for (bool entropy : {false, true}) {
        const Grads got = p.gpu(entropy, false, true);
        const Grads want = p.cpu(entropy);
        const char* variant = entropy ? "exact gradient" : "paper gradient";
        EXPECT_EQ(count_nonfinite(got.dq) + count_nonfinite(got.dk) + count_nonfinite(got.dv), 0u) << variant;
        EXPECT_LT(rel_l2(got.dq, want.dq), tol) << "dq, " << variant;
        EXPECT_LT(rel_l2(got.dk, want.dk), tol) << "dk, " << variant;
        EXPECT_LT(rel_l2(got.dv, want.dv), tol) << "dv, " << variant;
        if (!entropy) paper = got;
        else EXPECT_EQ(got.raw_dv, paper->raw_dv) << "dv must not depend on the entropy term";
    }
}

TEST_P(Backward, MatchesCpuF64BothVariants) {
    REQUIRE_GPU();
    const Case c = GetParam();
    const Problem p(c);
    expect_matches_cpu(p, c);
}

TEST_P(Backward, PortableKernelsMatchCpuF64) {
    REQUIRE_GPU();
    const Case c = GetParam();
    const Problem p(c);
    const PortableOnly portable;
    expect_matches_cpu(p, c);
}

TEST_P(Backward, DeterministicRepeatableAndLeanEqualsSaved) {
    REQUIRE_GPU();
    const Case c = GetParam();
    const Problem p(c);
    const Grads a = p.gpu(c.iterations % 2 == 0, true, true);
    const Grads b = p.gpu(c.iterations % 2 == 0, true, true);
    EXPECT_EQ(a.raw_dq, b.raw_dq);
    EXPECT_EQ(a.raw_dk, b.raw_dk);
    EXPECT_EQ(a.raw_dv, b.raw_dv);
    // The lean backward reruns the same forward kernels into its workspace: the same state, the same gradients.
    const Grads lean = p.gpu(c.iterations % 2 == 0, true, false);
    EXPECT_EQ(lean.raw_dq, a.raw_dq);
    EXPECT_EQ(lean.raw_dk, a.raw_dk);
    EXPECT_EQ(lean.raw_dv, a.raw_dv);
}

// Sets VMONARCH_BACKWARD_SCHEDULE for one scope and restores what it was.
class ScheduleScope {
public:
    explicit ScheduleScope(const char* value) {
        const char* old = std::getenv(kVar);
        had_ = old != nullptr;
        if (had_) old_ = old;
        setenv(kVar, value, 1);
    }
    ~ScheduleScope() {
        if (had_) setenv(kVar, old_.c_str(), 1);
        else unsetenv(kVar);
    }
    ScheduleScope(const ScheduleScope&) = delete;
    ScheduleScope& operator=(const ScheduleScope&) = delete;

private:
    static constexpr const char* kVar = "VMONARCH_BACKWARD_SCHEDULE";
    bool had_ = false;
    std::string old_;
};

// Both schedules explicitly (the default, auto, is serial here and concurrent in deterministic mode): each against
// the f64 CPU backward, deterministic mode bitwise repeatable and lean = saved under each; the two differ only in
// the f32 summation order of the frame-0 recompute's share (none without the recompute: then bitwise equal).
TEST_P(Backward, BothSchedulesMatchCpuAndEachOther) {
    REQUIRE_GPU();
    const Case c = GetParam();
    const Problem p(c);
    const bool entropy = c.iterations % 2 == 1;
    Grads det[2];
    const char* names[2] = {"serial", "concurrent"};
    for (int s = 0; s < 2; ++s) {
        const ScheduleScope schedule(names[s]);
        expect_matches_cpu(p, c);
        const Grads a = p.gpu(entropy, true, true), b = p.gpu(entropy, true, true), lean = p.gpu(entropy, true, false);
        EXPECT_EQ(a.raw_dq, b.raw_dq) << names[s];
        EXPECT_EQ(a.raw_dk, b.raw_dk) << names[s];
        EXPECT_EQ(a.raw_dv, b.raw_dv) << names[s];
        EXPECT_EQ(lean.raw_dq, a.raw_dq) << names[s];
        EXPECT_EQ(lean.raw_dk, a.raw_dk) << names[s];
        EXPECT_EQ(lean.raw_dv, a.raw_dv) << names[s];
        det[s] = a;
    }
    if (!c.recompute) {
        EXPECT_EQ(det[0].raw_dq, det[1].raw_dq);
        EXPECT_EQ(det[0].raw_dk, det[1].raw_dk);
        EXPECT_EQ(det[0].raw_dv, det[1].raw_dv);
    } else {
        const double tol = grad_tolerance(c.dtype) / 4;
        EXPECT_LT(rel_l2(det[0].dq, det[1].dq), tol);
        EXPECT_LT(rel_l2(det[0].dk, det[1].dk), tol);
        EXPECT_LT(rel_l2(det[0].dv, det[1].dv), tol);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Backward,
    ::testing::Values(
        Case{1, 2, 3, 4, 5, 64, 2, true, DType::bf16, Layout::bshd},
        Case{2, 1, 1, 5, 7, 128, 1, true, DType::f16, Layout::bhsd},                  // T = 1: only the recompute
        Case{2, 1, 1, 5, 7, 64, 2, false, DType::bf16, Layout::bshd, 0.1, true},     // T = 1, Monarch only
        Case{1, 2, 5, 1, 13, 64, 3, false, DType::f16, Layout::bshd, 0.8},            // odd T, prime HW, clamp
        Case{2, 3, 4, 3, 7, 128, 2, true, DType::bf16, Layout::bhsd, 0.8, true},      // clamp, dlse
        Case{1, 1, 3, 11, 13, 128, 3, true, DType::bf16, Layout::bshd, 0.1, true},    // HW 143 > one tile
        Case{1, 2, 7, 1, 17, 64, 1, true, DType::f16, Layout::bhsd, 0.1, true},       // t = 1, odd T, prime HW
        Case{1, 2, 4, 6, 10, 128, 2, true, DType::f16, Layout::bshd, 0.1, false, true}, // video-like
        Case{2, 2, 3, 8, 9, 64, 2, false, DType::bf16, Layout::bhsd, 0.1, false, true}),
    [](const ::testing::TestParamInfo<Case>& info) { return case_name(info.param); });

// The owned CUDA state: device memory of saved_state_bytes, its header kept on the host; wrapping the same
// memory again without a header reads it once from the device.
TEST(BackwardGpu, SavedStateOnTheDevice) {
    REQUIRE_GPU();
    const Case c{1, 2, 3, 4, 5, 64, 2, true, DType::bf16, Layout::bshd};
    const Problem p(c);
    const Options o = options_of(c);
    auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    GpuLse lse(c.B, c.heads, p.N, true);
    SavedState state;
    EXPECT_FALSE(state.filled());
    vmonarch::attention_training(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.g, o, state);
    EXPECT_TRUE(state.filled());
    EXPECT_EQ(state.bytes(), vmonarch::saved_state_bytes(p.q.view, p.v.view, p.g, o));
    const auto header = vmonarch::saved_state_header(p.q.view, p.v.view, p.g, o);
    EXPECT_EQ(0, std::memcmp(state.header(), header.data(), header.size()));
    CUDA_OK(cudaDeviceSynchronize());
    SavedState again = SavedState::over(state.data(), state.bytes(), Device::cuda, 0);
    EXPECT_TRUE(again.filled());
    EXPECT_EQ(0, std::memcmp(again.header(), header.data(), header.size()));
    // A fresh device buffer wrapped with no header reads as not filled (its magic is zero).
    DeviceBuffer blank(state.bytes());
    CUDA_OK(cudaMemset(blank.get(), 0, state.bytes()));
    EXPECT_FALSE(SavedState::over(blank.get(), blank.bytes(), Device::cuda, 0).filled());
    // The training forward's out and lse are the plain forward's (same kernels, same order).
    auto out2 = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    GpuLse lse2(c.B, c.heads, p.N, true);
    vmonarch::attention(p.q.view, p.k.view, p.v.view, out2.view, p.g, o, &lse2.view);
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(out.raw(), out2.raw());
    EXPECT_EQ(lse.read(), lse2.read());
}

// A caller workspace on a caller stream: the same gradients as the library's own buffer; too small is an error.
TEST(BackwardGpu, CallerWorkspaceAndStream) {
    REQUIRE_GPU();
    const Case c{1, 2, 3, 4, 5, 64, 2, true, DType::f16, Layout::bhsd};
    const Problem p(c);
    const Options o = options_of(c);
    auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    GpuLse lse(c.B, c.heads, p.N, false);
    vmonarch::attention(p.q.view, p.k.view, p.v.view, out.view, p.g, o, &lse.view);
    BackwardOptions bo;
    bo.deterministic = true;
    const std::size_t need = vmonarch::backward_workspace_bytes(p.q.view, p.v.view, p.g, o, bo);
    EXPECT_GT(need, 0u);
    DeviceBuffer ws(need);
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    vmonarch::CudaContext ctx;
    ctx.stream = stream;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = need;
    auto dq = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dk = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dv = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    vmonarch::attention_backward(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.dout.view, dq.view, dk.view, dv.view,
                                 p.g, o, nullptr, bo, &ctx);
    CUDA_OK(cudaStreamSynchronize(stream));
    const Grads lib = p.gpu(false, true, false);
    EXPECT_EQ(dq.raw(), lib.raw_dq);
    EXPECT_EQ(dk.raw(), lib.raw_dk);
    EXPECT_EQ(dv.raw(), lib.raw_dv);
    ctx.workspace_bytes = need - 1;
    EXPECT_THROW(vmonarch::attention_backward(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.dout.view, dq.view,
                                              dk.view, dv.view, p.g, o, nullptr, bo, &ctx),
                 vmonarch::CudaError);
    CUDA_OK(cudaStreamDestroy(stream));
}

// The concurrent schedule's workspace holds the recompute's own f32 accumulators (frame 0's dq rows, every dk and
// dv row) beyond the serial one's; without the recompute both are the same; auto is serial's, or concurrent's in
// deterministic mode. An unknown schedule is an error.
TEST(BackwardGpu, ScheduleWorkspaceAndUnknownSchedule) {
    REQUIRE_GPU();
    const auto align = [](std::size_t x) { return (x + 255) / 256 * 256; };
    for (const bool recompute : {true, false}) {
        const Case c{2, 3, 4, 3, 7, 128, 2, recompute, DType::bf16, Layout::bhsd};
        const Problem p(c);
        const Options o = options_of(c);
        std::size_t conc = 0, ser = 0;
        {
            const ScheduleScope s("concurrent");
            conc = vmonarch::backward_workspace_bytes(p.q.view, p.v.view, p.g, o);
        }
        {
            const ScheduleScope s("serial");
            ser = vmonarch::backward_workspace_bytes(p.q.view, p.v.view, p.g, o);
        }
        {
            const ScheduleScope s("auto");
            BackwardOptions det;
            det.deterministic = true;
            EXPECT_EQ(vmonarch::backward_workspace_bytes(p.q.view, p.v.view, p.g, o), ser);
            EXPECT_EQ(vmonarch::backward_workspace_bytes(p.q.view, p.v.view, p.g, o, det), conc);
        }
        const std::size_t bh = std::size_t(c.B * c.heads), HW = std::size_t(c.Hh * c.Ww), N = std::size_t(p.N), d = 128;
        const std::size_t dense = align(bh * HW * d * 4) + 2 * align(bh * N * d * 4);
        EXPECT_EQ(conc, ser + (recompute ? dense : 0)) << "recompute " << recompute;
    }
    const Case c{1, 2, 3, 4, 5, 64, 2, true, DType::bf16, Layout::bshd};
    const Problem p(c);
    const Options o = options_of(c);
    auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    GpuLse lse(c.B, c.heads, p.N, false);
    vmonarch::attention(p.q.view, p.k.view, p.v.view, out.view, p.g, o, &lse.view);
    auto dq = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dk = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dv = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    const ScheduleScope bad("overlapped");
    try {
        vmonarch::attention_backward(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.dout.view, dq.view, dk.view,
                                     dv.view, p.g, o);
        ADD_FAILURE() << "no error";
    } catch (const vmonarch::CudaError& e) {
        EXPECT_NE(std::string(e.what()).find("VMONARCH_BACKWARD_SCHEDULE is 'overlapped'"), std::string::npos) << e.what();
    }
    EXPECT_EQ(count_nonfinite(dq.read()), dq.values.size()); // nothing written
}

TEST(BackwardGpu, Errors) {
    REQUIRE_GPU();
    const Case c{1, 2, 3, 4, 5, 64, 2, true, DType::bf16, Layout::bshd};
    const Problem p(c);
    const Options o = options_of(c);
    auto out = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    GpuLse lse(c.B, c.heads, p.N, false);
    vmonarch::attention(p.q.view, p.k.view, p.v.view, out.view, p.g, o, &lse.view);
    auto dq = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dk = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    auto dv = GpuTensor::poisoned(c.dtype, c.layout, c.B, p.N, c.heads, c.d);
    TensorView bad = dq.view;
    bad.dtype = DType::f32;
    try {
        vmonarch::attention_backward(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.dout.view, bad, dk.view, dv.view,
                                     p.g, o);
        ADD_FAILURE() << "no error";
    } catch (const vmonarch::ArgumentError& e) {
        EXPECT_EQ(e.argument(), "dq.dtype") << e.what();
    }
    // A CPU state for CUDA tensors.
    SavedState cpu_state;
    BackwardOptions bo;
    bo.saved = &cpu_state;
    EXPECT_THROW(vmonarch::attention_backward(p.q.view, p.k.view, p.v.view, out.view, lse.view, p.dout.view, dq.view,
                                              dk.view, dv.view, p.g, o, nullptr, bo),
                 vmonarch::ArgumentError);
    // Nothing was written by the refused calls.
    EXPECT_EQ(count_nonfinite(dq.read()), dq.values.size());
}

} // namespace
} // namespace gputest
