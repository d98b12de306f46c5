// Internal: the validated backward / training-forward problems handed from src/core/api_backward.cpp to
// a backend, and the layout of the saved state (spec §7: what a training forward keeps).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/backend.hpp"
#include "vmonarch/backward.hpp"

namespace vmonarch::detail {

// First bytes of every saved-state buffer: what the forward that filled it was run on.
struct SavedHeader {
    std::uint64_t magic = 0;   // kSavedMagic once filled
    std::int32_t version = 1;
    std::int32_t acc_bytes = 0; // 4 (f32) or 8 (f64): precision of the stored values
    std::int32_t dtype = 0, iterations = 0, recompute_first_frame = 0, reserved = 0;
    std::int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0, value_dim = 0;
    std::int64_t T = 0, H = 0, W = 0;
    double cr_clamp = 0, scale = 0;
    std::int64_t sink_frames = 0, window_radius = -1; // exact key groups of the fit (spec §3b; -1: no window)
};
constexpr std::uint64_t kSavedMagic = 0x5641564D4F4E4152ull; // "VMONARAV"-ish tag
constexpr std::size_t kSavedHeaderBytes = 128;
static_assert(sizeof(SavedHeader) <= kSavedHeaderBytes);

// Per (batch, head) block of the saved state, in values of the accumulation type, tokens frame-major:
//   iteration r = 0..t-1:  aL[N][d], cL[N], lse_R[N]
//   iteration r = 1..t-1:  aR[N][d], cR[N]            (r = 0 has aR = Q, cR = 1)
//   Y[N][dv]                                          (last R-step's values)
struct SavedLayout {
    std::int64_t N = 0, d = 0, dv = 0, t = 0;

    std::int64_t fit_block() const { return N * d + 2 * N; }
    std::int64_t carry_block() const { return N * d + N; }
    std::int64_t per_head() const { return t * fit_block() + (t - 1) * carry_block() + N * dv; }
    std::int64_t aL(int r) const { return r * fit_block(); }
    std::int64_t cL(int r) const { return aL(r) + N * d; }
    std::int64_t lse_r(int r) const { return cL(r) + N; }
    std::int64_t aR(int r) const { return t * fit_block() + (r - 1) * carry_block(); } // r >= 1
    std::int64_t cR(int r) const { return aR(r) + N * d; }
    std::int64_t y() const { return t * fit_block() + (t - 1) * carry_block(); }
};

inline std::size_t acc_bytes_for(DType dtype) { return dtype == DType::f64 ? 8 : 4; }

// The saved state of CUDA tensors (spec §7, what a training forward keeps), after the header: whole-tensor
// regions spanning every (batch, head), each 256-byte aligned, vectors in the input dtype (2 bytes, as the
// forward kernels write them) and scalars f32, laid out as the forward's workspace (src/cuda/monarch_plan.hpp):
//   iteration r = 0..t-1:  aL_r [B][H][HW][T][d], cL_r [B][H][HW][T] (position-major), lse_R_r [B][H][T][HW]
//   iteration r = 1..t-1:  aR_r [B][H][T][HW][d], cR_r [B][H][T][HW]           (frame-major; r = 0: aR = Q)
//   Y [B][H][HW][T][dv]
// The header records acc_bytes = 2 (the vectors' precision) and the dtype. Offsets are bytes from the
// first region (the buffer + kSavedHeaderBytes). rows = batch·heads·tokens.
struct CudaSavedLayout {
    static constexpr std::size_t kAlign = 256;
    static constexpr std::size_t kElem = 2;
    std::size_t rows = 0, d = 0, dv = 0;
    int t = 1;

    static std::size_t align_up(std::size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }
    std::size_t vec(std::size_t dim) const { return align_up(rows * dim * kElem); }
    std::size_t scalar() const { return align_up(rows * 4); }
    std::size_t fit_block() const { return vec(d) + 2 * scalar(); }
    std::size_t carry_block() const { return vec(d) + scalar(); }
    std::size_t aL(int r) const { return std::size_t(r) * fit_block(); }
    std::size_t cL(int r) const { return aL(r) + vec(d); }
    std::size_t lse_r(int r) const { return cL(r) + scalar(); }
    std::size_t aR(int r) const { return std::size_t(t) * fit_block() + std::size_t(r - 1) * carry_block(); } // r >= 1
    std::size_t cR(int r) const { return aR(r) + vec(d); }
    std::size_t y() const { return std::size_t(t) * fit_block() + std::size_t(t - 1) * carry_block(); }
    std::size_t total() const { return y() + vec(dv); }
};

struct TrainingProblem : MonarchProblem {
    void* saved = nullptr;      // saved-state buffer (header + per-head blocks), validated size
    SavedLayout layout;
    const SavedHeader* header = nullptr; // CUDA: written (magic included) at `saved` after the forward's kernels
};

// Text queries of a joint sequence (spec §3c) in a backward: their rows of q, out, dout, lse, dlse and dq; their
// keys are the video keys and MonarchProblem::extra (the text keys), whose gradients they add to.
struct TextQueryGrads {
    bool present = false;
    TensorView q, out, dout, dq;   // [B, L, heads, d] / dv
    LseView lse;
    const LseView* dlse = nullptr; // or null
};

struct BackwardProblem : MonarchProblem {
    // MonarchProblem::out and ::lse are the forward's results (lse is never null here).
    TensorView dout, dq, dk, dv;
    TensorView dk_extra, dv_extra; // gradients of MonarchProblem::extra's k and v when extra.present
    TextQueryGrads text;           // joint_attention_backward: the text queries
    const LseView* dlse = nullptr;
    bool entropy_grad = false;
    bool deterministic = false;
    const void* saved = nullptr; // filled saved state matching this problem, or null (lean mode)
    SavedLayout layout;
};

inline CudaSavedLayout cuda_layout_of(const MonarchProblem& p) {
    CudaSavedLayout l;
    l.rows = std::size_t(p.batch) * std::size_t(p.heads) * std::size_t(p.q_tokens);
    l.d = std::size_t(p.head_dim), l.dv = std::size_t(p.value_dim), l.t = p.iterations;
    return l;
}

// CPU backend (src/cpu/monarch_train_cpu.cpp, src/cpu/monarch_backward_cpu.cpp).
void cpu_monarch_training(const TrainingProblem& p);
void cpu_monarch_backward(const BackwardProblem& p);

} // namespace vmonarch::detail
