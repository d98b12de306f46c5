// Internal: the VMonarch backward on the GPU (spec §7) as a list of stages (kernel launches) over a workspace:
//   zero the f32 accumulators  preprocess (D = ⟨dO, O⟩ − dlse)  [lean: rerun the training forward's state]
//   [recompute on: dense flash backward of the frame-0 queries over all keys, spec §7.2]
//   [exact key groups, text queries]
//   last L-step backward [→ the recompute, when the L-step stores dq] → R-step t backward (K and V values, γ,
//   entropy term with entropy_grad)
//   for r = t−1 .. 1: earlier L-step backward → R-step r backward (K values; r = 1 writes dQ)
//   finalize (f32 accumulators → the caller's dq, dk, dv, in one launch)
//
// Schedules (VMONARCH_BACKWARD_SCHEDULE=auto|concurrent|serial, default auto; backward_schedule()); auto is
// concurrent in deterministic mode and serial otherwise, as measured on an H200 (bench/RESULTS.md): with the
// atomic dq the flash backwards fill the GPU and the overlap gained 0.07 ms of 9.0 at 16×28×52×12h and lost
// 0.8 ms of 204 at 24×44×80×40h for 281 MiB / 3.3 GiB more workspace; deterministic, it gained 0.7 / 0.9 ms.
//   serial      one stream; the recompute's backward writes the shared accumulators before the R-steps (dk and dv
//               stored, so they are not zero-filled; dq added into). Without exact groups or text queries it runs
//               after the last L-step, which stores dq (no zero fill), else before it.
//   concurrent  with the recompute on, its backward runs on the side stream, forked after the preprocess, beside
//               the lean rerun and the Monarch chain, into accumulators of its own (dense_dq [B][H][HW][d],
//               dense_dk [B][H][N][d], dense_dv [B][H][N][dv] f32), which the finalize adds after the chain's
//               (joined before it). The two streams write disjoint memory and the sum has a fixed order, so
//               deterministic mode stays bitwise repeatable; the result differs from serial's by the f32
//               summation order only. Without exact groups or text queries the last L-step stores dq here too.
// The Monarch path sees dO and D with frame 0 set to 0 when the recompute is on (spec §7.2): the last L-step
// reads them so (LStepBwdParams::zero_frame0), no masked copies are made.
//
// Workspace (256-byte aligned regions over all (batch, head); rows = batch·heads·tokens):
//   d_full [B][H][N] f32
//   dq_acc, dk_acc [B][H][N][d] f32, dv_acc [B][H][N][dv] f32        (frame-major, as the user's tokens)
//   dal [B][H][HW][T][d], dy [B][H][HW][T][dv] (input dtype), dcl (entropy_grad), drow_r [B][H][HW][T] f32
//   dar × min(t − 1, 2) [B][H][N][d] f32 (daR of two consecutive iterations, alternating)
//   concurrent schedule with the recompute: dense_dq, dense_dk, dense_dv (above)
//   state (lean mode): the training forward's regions (detail::CudaSavedLayout)
//   extra keys (spec §3b): dk_extra [B][H][L][d], dv_extra [B][H][L][dv] f32
//   text queries of a joint sequence (spec §3c): text_dq [B][H][L][d], text_d [B][H][L] f32
//
// Exact key groups (spec §3b, src/cuda/bwd/exact_backward_plan.cu): after the recompute, each exact group gets a
// FlashAttention backward against the rows' merged lse and D (sink, window, extra keys; exact_backward_cpu.hpp
// derives why that is the gradient through the merge), and the last L-step weighs its rows by exp(z − lse).
// The Monarch steps cover key frames S..T-1 as in the forward and are skipped when no row fits a key frame.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "core/backward_problem.hpp"
#include "cuda/bwd/backward_params.hpp"
#include "cuda/bwd/training_plan.hpp"

namespace vmonarch::cuda {

enum class BackwardSchedule { automatic, serial, concurrent };
// The process's schedule: VMONARCH_BACKWARD_SCHEDULE (auto, serial or concurrent; unset or empty: auto), read at
// each call; another value is a CudaError naming it. The workspace size depends on it.
BackwardSchedule backward_schedule();
// What the schedule is for this problem: automatic → concurrent when p.deterministic, else serial.
bool concurrent_recompute(const detail::BackwardProblem& p, BackwardSchedule schedule);

struct BackwardWorkspaceLayout {
    std::size_t d_full = 0;
    std::size_t dq = 0, dk = 0, dv = 0, dal = 0, dy = 0, dcl = 0, drow_r = 0, dar[2] = {0, 0};
    std::size_t dense_dq = 0, dense_dk = 0, dense_dv = 0;
    std::size_t state = 0;
    std::size_t dk_extra = 0, dv_extra = 0, text_dq = 0, text_d = 0;
    bool has_dcl = false, has_state = false, has_extra = false, has_text = false;
    bool concurrent = false; // the recompute's backward on the side stream, into dense_dq/dk/dv
    int dar_count = 0;
    std::size_t total = 0;
};
BackwardWorkspaceLayout backward_workspace_layout(const detail::BackwardProblem& p, BackwardSchedule schedule);
inline BackwardWorkspaceLayout backward_workspace_layout(const detail::BackwardProblem& p) {
    return backward_workspace_layout(p, backward_schedule());
}

// One step of the backward: a few launches on the stream it is given, in the list's order.
struct BackwardStage {
    std::string name;
    bool side = false; // concurrent schedule: on the side stream, forked after the main-stream stages before it
    bool join = false; // waits for the side stream's stages first
    std::function<void(void*)> launch;
};

class BackwardPlan {
public:
    // workspace: device memory of at least backward_workspace_layout(p, schedule).total bytes.
    BackwardPlan(const detail::BackwardProblem& p, void* workspace, BackwardSchedule schedule = backward_schedule());

    FlashBwdParams recompute_params() const;          // dense backward of frame 0's queries
    LStepBwdParams last_lstep_params() const;         // L-step t
    LStepBwdParams earlier_lstep_params(int it) const; // L-step it + 1 < t, given daR of iteration it + 1
    FlashBwdParams rstep_params(int it) const;        // R-step it (0-based)

    // Every stage, in issue order (the bench times each alone).
    std::vector<BackwardStage> stages() const;
    // The stages on `stream`; the side stages on side_stream (forked and joined with events) when the layout is
    // concurrent and side_stream is set, else on `stream` in list order.
    void run(void* stream, void* side_stream = nullptr) const;
    const BackwardWorkspaceLayout& layout() const { return w_; }

private:
    RowView dar(int it) const; // daR of iteration it >= 1 (f32, frame-major)
    bool dq_first_written_by_last_lstep() const;
    // The recompute's backward stores its dk, dv (FlashBwdParams::dkdv_overwrite; no zero fill): it is their
    // first writer in both schedules, and does so when its keys cover all their rows.
    bool recompute_stores_dkdv() const;

    // Exact key groups (exact_backward_plan.cu): the sink frames, the window and the extra keys of the video
    // rows; the text queries of a joint sequence (their D first, then over the video and the text keys).
    void run_exact_groups(void* stream) const;
    void run_text_queries(void* stream) const;
    // A dense flash backward (no row scale, dy = dO, drow = D) of len_q query rows per segment over len_k keys.
    FlashBwdParams dense_bwd(const RowView& q, const RowView& dout, const RowView& lse, const RowView& drow,
                             const RowView& dq, std::int64_t len_q, int segments, int batch, const RowView& k,
                             const RowView& v, const RowView& dk, const RowView& dv, std::int64_t len_k) const;
    RowView acc_rows(std::size_t off, std::int64_t tokens, std::int64_t seg, std::int64_t dim) const;

    detail::BackwardProblem p_;
    BackwardWorkspaceLayout w_;
    char* ws_;
    TrainingPlan state_;
};

} // namespace vmonarch::cuda
