// Internal: the VMonarch forward on the GPU as a sequence of kernel launches over a workspace
// (docs/algorithm.md §3): for it = 0..t−1, R-step then L-step; then the first-frame dense recompute.
//
// Workspace (input dtype for vectors, f32 for scalars), per (batch, head):
//   aR [T][HW][d]  (frame-major, read by the R-step as its queries)   — only when t > 1
//   cR [T][HW]                                                          — only when t > 1
//   aL [HW][T][d]  (position-major, so the L-step reads T contiguous rows)
//   cL [HW][T]
//   y  [HW][T][dv]
//   exact_lse [T][HW] f32: LSE_E of the exact key groups (spec §3b) when the caller asks for no lse
// Before the first R-step the y and cL regions are free; the exact groups use them for partial results
// (O and LSE of one key group, indexed like the user's rows), merged into the accumulator by log-sum-exp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/backend.hpp"
#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

struct WorkspaceLayout {
    std::size_t ar = 0, cr = 0, al = 0, cl = 0, y = 0, exact_lse = 0; // byte offsets
    std::size_t total = 0;
};
WorkspaceLayout monarch_workspace_layout(const detail::MonarchProblem& p);

class MonarchPlan {
public:
    // workspace: device memory of at least monarch_workspace_layout(p).total bytes.
    MonarchPlan(const detail::MonarchProblem& p, void* workspace);

    // R-step of iteration it (0-based) over the fitted key frames S..T-1 (all frames without sink frames).
    FlashParams rstep_params(int it) const;
    // L-step of iteration it; with exact groups it masks them and the last one merges (spec §3b).
    LStepParams lstep_params(int it, bool skip_frame0 = false) const;
    FlashParams recompute_params() const;     // frame-0 queries against all keys

    // The whole forward on `stream`. With a side stream (another cudaStream_t of the same device) the
    // first-frame recompute runs there concurrently with the Monarch steps (it reads only q, k, v and
    // writes only frame 0's out/lse rows, which the last L-step then skips), joined back by events.
    void run(void* stream, void* side_stream = nullptr) const;
    int iterations() const { return p_.iterations; }

    // Exact key groups only: the recompute and the groups into (out, exact_lse) on `stream`, without the
    // Monarch steps (the training forward runs its own, whose last L-step must then skip frame 0 when the
    // recompute is on).
    void run_exact_groups(void* stream) const { run_exact(stream, nullptr, false); }
    bool monarch_needed() const;              // some query row (outside recomputed frame 0) fits a key frame

private:
    // Exact key groups (src/cuda/exact_group_plan.cu, spec §3b): the groups into (out, exact_lse), then (with
    // monarch_steps) the Monarch steps with the merge fused into the last L-step.
    void run_exact(void* stream, void* side_stream, bool monarch_steps = true) const;
    FlashParams dense_over(const RowView& q, std::int64_t len_q, int segments, int batch, const RowView& k,
                           const RowView& v, std::int64_t len_k, const RowView& o, const RowView& lse) const;
    void merge(const RowView& acc_o, const RowView& acc_lse, const RowView& part_o, const RowView& part_lse,
               std::int64_t segments, std::int64_t rows, int batch, bool clear, void* stream, const char* what) const;

    detail::MonarchProblem p_;
    Elem elem_;
    RowView q_, k_, v_, out_, lse_;           // user tensors, indexed (b, h, frame, position)
    RowView ar_, cr_, al_, cl_, y_;           // workspace
    RowView exact_lse_;                       // LSE_E: the user's lse, or workspace (exact groups only)
    RowView part_o_, part_lse_;               // partial group results (exact groups only, before the R-steps)
    RowView text_k_, text_v_;                 // extra keys (b, h, 0, token), when present
};

// A user view [B, N, heads, d] seen as (b, h, frame, position) rows of `seg` tokens per frame; its lse alike.
RowView user_rows(const TensorView& t, std::int64_t seg);
RowView user_lse(const LseView* l, std::int64_t seg);

// The view moved by `n` rows of its segment axis (frames) or batch axis; elem_bytes: the pointee's size.
RowView shift_frames(RowView v, std::int64_t n, std::size_t elem_bytes);
RowView shift_batch(RowView v, std::int64_t n, std::size_t elem_bytes);

// Exact text queries of a joint sequence (spec §3c) over the workspace bytes [ws, ws + ws_bytes): dense
// over the video keys, then the valid text keys of each batch element merged by log-sum-exp, in chunks of
// min(L, N) query rows (fewer only when the workspace is smaller than that needs).
// text_query_workspace_bytes(p, rows): the bytes for chunks of `rows`.
std::size_t text_query_workspace_bytes(const detail::TextQueryProblem& p, std::int64_t rows);
void run_text_queries(const detail::TextQueryProblem& p, void* ws, std::size_t ws_bytes, void* stream);

// FlashParams for dense attention over whole sequences (the public dense_attention).
FlashParams dense_params(const detail::AttentionProblem& p);

Elem elem_of(DType t);

} // namespace vmonarch::cuda
