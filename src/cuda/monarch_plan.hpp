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
// When every exact-group row has one contiguous key range (src/cuda/exact_group_beside.cu) no partial is
// needed and the groups run on the side stream beside the Monarch steps.
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

// Where the extra (text) keys lie next to the video keys in memory: text rows directly followed by the video
// rows, or video rows directly followed by the text rows, with the same batch, head and row strides, so that
// both are one strided key sequence (a joint MMDiT sequence's k and v slices are).
enum class KeyJoin { apart, text_then_video, video_then_text };
KeyJoin key_join(const TensorView& video, const TensorView& text);
// Both k and v joined the same way, else apart.
KeyJoin key_join(const TensorView& video_k, const TensorView& video_v, const TensorView& text_k, const TensorView& text_v);

// VMONARCH_EXACT_SCHEDULE=serial: every exact key group and a joint sequence's text queries run in order on
// the caller's stream, partials merged by log-sum-exp (exact_group_plan.cu, text_queries.cu), also where one key
// range per row would let them run beside the Monarch steps (an A/B switch for benchmarks; read at every call;
// unset, empty or auto: the default schedule; another value is a CudaError naming it).
bool exact_schedule_serial();

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
    // writes only frame 0's out/lse rows, which the last L-step then skips), joined back by events; so do the
    // exact key groups and a joint sequence's text queries (p.text_queries) when they need no partials.
    void run(void* stream, void* side_stream = nullptr) const;
    int iterations() const { return p_.iterations; }

    // Exact key groups only: the recompute and the groups into (out, exact_lse) on `stream`, in order, without
    // the Monarch steps (the training forward runs its own, whose last L-step must then skip frame 0 when the
    // recompute is on).
    void run_exact_groups(void* stream) const { run_exact_in_order(stream, nullptr, false); }
    bool monarch_needed() const;              // some query row (outside recomputed frame 0) fits a key frame

private:
    // Exact key groups (spec §3b): the groups into (out, exact_lse) and the Monarch steps with the merge fused
    // into the last L-step; beside the steps where every row's group is one key range (exact_group_beside.cu),
    // otherwise in order (exact_group_plan.cu; monarch_steps false: the groups only).
    void run_exact(void* stream, void* side_stream) const;
    void run_exact_in_order(void* stream, void* side_stream, bool monarch_steps = true) const;
    // The schedule beside the Monarch steps (src/cuda/exact_group_beside.cu): each exact-group row attends one
    // contiguous key range, written straight into (out, exact_lse) on the side stream.
    struct KeySpan;
    bool key_span(std::int64_t b, bool frame0, KeySpan* span) const;  // false: not one contiguous range
    bool groups_beside() const;                                       // every row's group is one span
    void launch_groups_beside(void* stream) const;
    void launch_spans(bool frame0, void* stream) const;
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
    KeyJoin join_ = KeyJoin::apart;           // extra keys next to the video keys in memory
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
// When the valid keys of every batch element are one contiguous range of the key sequence (key_join: text
// after the video, or text first and all of it valid, or no valid text), the text queries are one dense
// launch per run of equal batch elements, straight into out/lse, with no workspace: text_queries_direct says
// whether they are (false under VMONARCH_EXACT_SCHEDULE=serial), launch_text_queries_direct launches them.
bool text_queries_direct(const detail::TextQueryProblem& p);
void launch_text_queries_direct(const detail::TextQueryProblem& p, void* stream);

// FlashParams for dense attention over whole sequences (the public dense_attention).
FlashParams dense_params(const detail::AttentionProblem& p);

Elem elem_of(DType t);

} // namespace vmonarch::cuda
