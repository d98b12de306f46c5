// Internal: the training forward on the GPU (spec §3, keeping what §7 needs): the forward's R-steps,
// L-steps and frame-0 recompute (MonarchPlan's kernels), but every iteration writes its own aL, cL, lse_R
// and the next aR, cR into the saved-state regions (detail::CudaSavedLayout) instead of one reused buffer.
#pragma once

#include "core/backward_problem.hpp"
#include "cuda/common/kernel_params.hpp"
#include "cuda/monarch_plan.hpp"

namespace vmonarch::cuda {

class TrainingPlan {
public:
    // regions: device memory of detail::cuda_layout_of(p).total() bytes (the state after its header).
    TrainingPlan(const detail::MonarchProblem& p, void* regions);

    // R-step of iteration it (0-based), lse_R kept; over the fitted key frames S..T-1 like the forward's.
    FlashParams rstep_params(int it) const;
    // L-step of iteration it; skip_frame0: the last one leaves frame 0's out/lse alone (exact groups with the
    // recompute, which wrote them first).
    LStepParams lstep_params(int it, bool skip_frame0 = false) const;
    FlashParams recompute_params() const { return plan_.recompute_params(); }

    // The whole training forward on `stream`: out, lse and the state (recompute after the last L-step; with
    // exact key groups, spec §3b, the recompute and the groups first, then the steps, the last one merging).
    void run(void* stream) const;
    bool monarch_needed() const { return plan_.monarch_needed(); } // the Monarch steps run at all
    // Lean mode's rerun inside the backward: only the state (the R-steps and the L-steps before the last;
    // out and lse are the caller's, so the last L-step and the recompute are skipped).
    void run_state(void* stream) const;

    // The state's views, indexed (b, h, frame, position). aR/cR only for it >= 1.
    RowView aL(int it) const, cL(int it) const, lse_r(int it) const, aR(int it) const, cR(int it) const, y() const;

private:
    detail::MonarchProblem p_;
    detail::CudaSavedLayout l_;
    char* base_;
    MonarchPlan plan_;
};

} // namespace vmonarch::cuda
