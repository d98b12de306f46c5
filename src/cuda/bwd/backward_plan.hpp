// Internal: the VMonarch backward on the GPU (spec §7) as a sequence of kernel launches over a workspace:
//   [lean: rerun the training forward's state]  zero the f32 accumulators  preprocess (D = ⟨dO, O⟩ − dlse)
//   [recompute on: dense flash backward of the frame-0 queries over all keys]
//   last L-step backward → R-step t backward (K and V values, γ, entropy term with entropy_grad)
//   for r = t−1 .. 1: earlier L-step backward → R-step r backward (K values; r = 1 writes dQ)
//   finalize (f32 accumulators → the caller's dq, dk, dv)
//
// Workspace (256-byte aligned regions over all (batch, head); rows = batch·heads·tokens):
//   d_full [B][H][N] f32, and with the recompute d_monarch [B][H][N] f32 and dout_monarch [B][H][N][dv]
//   dq_acc, dk_acc [B][H][N][d] f32, dv_acc [B][H][N][dv] f32        (frame-major, as the user's tokens)
//   dal [B][H][HW][T][d], dy [B][H][HW][T][dv] (input dtype), dcl (entropy_grad), drow_r [B][H][HW][T] f32
//   dar × min(t − 1, 2) [B][H][N][d] f32 (daR of two consecutive iterations, alternating)
//   state (lean mode): the training forward's regions (detail::CudaSavedLayout)
#pragma once

#include <cstddef>

#include "core/backward_problem.hpp"
#include "cuda/bwd/backward_params.hpp"
#include "cuda/bwd/training_plan.hpp"

namespace vmonarch::cuda {

struct BackwardWorkspaceLayout {
    std::size_t d_full = 0, d_monarch = 0, dout_monarch = 0;
    std::size_t dq = 0, dk = 0, dv = 0, dal = 0, dy = 0, dcl = 0, drow_r = 0, dar[2] = {0, 0};
    std::size_t state = 0;
    bool has_dcl = false, has_state = false;
    int dar_count = 0;
    std::size_t total = 0;
};
BackwardWorkspaceLayout backward_workspace_layout(const detail::BackwardProblem& p);

class BackwardPlan {
public:
    // workspace: device memory of at least backward_workspace_layout(p).total bytes.
    BackwardPlan(const detail::BackwardProblem& p, void* workspace);

    FlashBwdParams recompute_params() const;          // dense backward of frame 0's queries
    LStepBwdParams last_lstep_params() const;         // L-step t
    LStepBwdParams earlier_lstep_params(int it) const; // L-step it + 1 < t, given daR of iteration it + 1
    FlashBwdParams rstep_params(int it) const;        // R-step it (0-based)

    void run(void* stream) const;

private:
    RowView dar(int it) const; // daR of iteration it >= 1 (f32, frame-major)

    detail::BackwardProblem p_;
    BackwardWorkspaceLayout w_;
    char* ws_;
    TrainingPlan state_;
};

} // namespace vmonarch::cuda
