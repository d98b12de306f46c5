// Internal: plain-C++ description of the CUDA kernels' operands and their host launchers.
//
// Included by the .cu launchers, by src/cuda/cuda_backend.cu (the core/backend.hpp functions), and by the
// GPU tests and the benchmark, which drive each kernel on its own. No CUDA types appear here.
#pragma once

#include <cstdint>
#include <string>

namespace vmonarch::cuda {

// Rows of a [batch, heads, segments, rows] grid of vectors, in elements of the pointee type:
// row (b, h, f, r) starts at ptr + b·sb + h·sh + f·sf + r·sr; its head-dim elements are contiguous.
// A "segment" is a video frame for the R-step (key frame k) and the whole sequence for dense attention.
struct RowView {
    void* ptr = nullptr;
    std::int64_t sb = 0, sh = 0, sf = 0, sr = 0;
};

enum class Elem { bf16, f16 };
std::string to_string(Elem e);

// One FlashAttention-2-style forward over `segments` independent (query rows × key rows) problems for
// every (batch, head). Which outputs exist selects the kernel variant (docs/algorithm.md §5):
//   o   set: O = softmax(x)·V                         (dense output, or y of the last R-step)
//   a   set: A = s·softmax(x)·K  plus ent set         (aL and cL = Σ R·x − logsumexp x of an R-step)
//   lse set: logsumexp_l x (f32)
//   rs  set: x = s·⟨q,k⟩ / max(rs, clamp) per query row (R-step after the first); else x = s·⟨q,k⟩
struct FlashParams {
    Elem elem = Elem::bf16;
    int head_dim = 128;
    RowView q, k, v;   // inputs (v only with o)
    RowView o, a;      // input-dtype outputs, ptr null when absent
    RowView ent, lse;  // f32 outputs, ptr null when absent
    RowView rs;        // f32 per-query-row cR, ptr null when absent
    std::int64_t len_q = 0, len_k = 0;
    int segments = 1, heads = 1, batch = 1;
    float scale = 1.f;     // s: multiplies the K-value output (aL = s·Σ R·K) and, with rs, the logits
    float qk_scale = 1.f;  // without rs: x = qk_scale·⟨q,k⟩ (s, or s / max(1, clamp) in the first R-step)
    float clamp = 0.f;     // cR clamp (0: none)
};

// L-step (docs/algorithm.md §3.2) for every position j of a T-frame grid (HW positions per frame), every batch/head.
//   z[i][k] = ⟨q(i,j), a(k,j)⟩ − c(k,j);  L = softmax_k z
//   last:   out(i,j) = Σ_k L[i][k]·y(k,j),  lse(i,j) = logsumexp_k z   (lse optional)
//   middle: ar(k,j) = Σ_i L[i][k]·q(i,j),   cr(k,j) = Σ_i L[i][k]
// Every view is indexed (b, h, frame, position).
struct LStepParams {
    Elem elem = Elem::bf16;
    int head_dim = 128;
    RowView q, a, c, y;      // inputs: Q (user), aL, cL (f32), y (last only)
    RowView out, lse;        // last
    RowView ar, cr;          // middle
    bool last = false;
    bool skip_frame0 = false;               // last: leave frame 0's out/lse rows alone (recompute owns them)
    std::int64_t frames = 1, positions = 1; // T, HW
    int heads = 1, batch = 1;
    // Exact key groups (spec §3b). Key frame k is left out of query frame i's fit (z = −inf, its a/c rows are
    // not read) when k < sink_frames or |i − k| <= window_radius (window_radius < 0: no window). A row with no
    // fitted key frame has no Monarch part (F = −inf; out 0 unless merged).
    std::int64_t sink_frames = 0, window_radius = -1;
    // last, exact_lse set: on entry out holds O_E and exact_lse LSE_E of each row (f32, indexed like lse);
    // the row's result is the log-sum-exp merge of §3b: tot = logaddexp(F, LSE_E),
    // out = e^{F−tot}·O_M + e^{LSE_E−tot}·O_E, lse = tot (both −inf: out 0, lse −inf). exact_lse may be lse.
    RowView exact_lse;
};

// Log-sum-exp merge of a partial attention result into an accumulator (spec §3b), per row (b, h, f, r) with
// f < segments, r < rows:  tot = logaddexp(acc_lse, part_lse);
//   acc_o = e^{acc_lse−tot}·acc_o + e^{part_lse−tot}·part_o;  acc_lse = tot   (both −inf: acc_o 0, acc_lse −inf).
// acc_o / part_o are input-dtype rows of value_dim elements; acc_lse / part_lse f32.
struct LseMergeParams {
    Elem elem = Elem::bf16;
    int value_dim = 128;
    RowView acc_o, acc_lse, part_o, part_lse;
    std::int64_t segments = 1, rows = 1;
    int heads = 1, batch = 1;
};
// acc ⊕= part as above; with clear = true instead sets acc_o = 0, acc_lse = −inf (an empty group; part unused).
void launch_lse_merge(const LseMergeParams& p, bool clear, void* stream, const char* what);

// Launchers: check the configuration, launch on `stream` (a cudaStream_t, null = default stream) and
// check the launch; throw vmonarch::CudaError naming the kernel and shapes on any failure.
void launch_flash(const FlashParams& p, void* stream, const char* what);
void launch_lstep(const LStepParams& p, void* stream, const char* what);

// Largest T the L-step supports on the current device for this head dim (shared-memory bound).
std::int64_t lstep_max_frames(int head_dim);

} // namespace vmonarch::cuda
