// TrainingPlan (training_plan.hpp): the forward's step parameters from MonarchPlan with the operands moved
// to the per-iteration regions of the saved state.
#include "cuda/bwd/training_plan.hpp"

#include <algorithm>
#include <string>

#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

TrainingPlan::TrainingPlan(const detail::MonarchProblem& p, void* regions)
    : p_(p), l_(detail::cuda_layout_of(p)), base_(static_cast<char*>(regions)), plan_(p, regions) {}

// Position-major regions [b][h][j][k][·] (what the L-step reads T rows of), frame-major [b][h][k][j][·].
RowView TrainingPlan::aL(int it) const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), T = p_.grid.T, d = p_.head_dim;
    return RowView{base_ + l_.aL(it), H * N * d, N * d, d, T * d};
}
RowView TrainingPlan::cL(int it) const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), T = p_.grid.T;
    return RowView{base_ + l_.cL(it), H * N, N, 1, T};
}
RowView TrainingPlan::lse_r(int it) const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens();
    return RowView{base_ + l_.lse_r(it), H * N, N, HW, 1};
}
RowView TrainingPlan::aR(int it) const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens(), d = p_.head_dim;
    return RowView{base_ + l_.aR(it), H * N * d, N * d, HW * d, d};
}
RowView TrainingPlan::cR(int it) const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens();
    return RowView{base_ + l_.cR(it), H * N, N, HW, 1};
}
RowView TrainingPlan::y() const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), T = p_.grid.T, dv = p_.value_dim;
    return RowView{base_ + l_.y(), H * N * dv, N * dv, dv, T * dv};
}

FlashParams TrainingPlan::rstep_params(int it) const {
    FlashParams f = plan_.rstep_params(it);
    // The forward's R-steps start at key frame S (sink frames are fitted by no row, spec §3b).
    const std::int64_t S = std::min(p_.sink_frames, p_.grid.T);
    f.a = shift_frames(aL(it), S, 2);
    f.ent = shift_frames(cL(it), S, 4);
    f.lse = shift_frames(lse_r(it), S, 4);
    if (it > 0) { // aR = Q and cR = 1 in the first R-step (MonarchPlan reads Q in place)
        f.q = shift_frames(aR(it), S, 2);
        f.rs = shift_frames(cR(it), S, 4);
    }
    if (it == p_.iterations - 1) f.o = shift_frames(y(), S, 2);
    return f;
}

LStepParams TrainingPlan::lstep_params(int it, bool skip_frame0) const {
    LStepParams l = plan_.lstep_params(it, skip_frame0);
    l.a = aL(it);
    l.c = cL(it);
    if (l.last) {
        l.y = y();
    } else {
        l.ar = aR(it + 1);
        l.cr = cR(it + 1);
    }
    return l;
}

void TrainingPlan::run(void* stream) const {
    if (p_.has_exact_groups()) {
        // The groups' partial results use MonarchPlan's workspace offsets inside the state's regions, before
        // the first R-step writes them: the regions must be at least that large (they are: t·(d + 2) + ...).
        if (monarch_workspace_layout(p_).total > l_.total())
            throw CudaError("vmonarch training forward: the saved state's regions (" + std::to_string(l_.total()) +
                            " bytes) are smaller than the exact groups' partial results need (" +
                            std::to_string(monarch_workspace_layout(p_).total) + ")");
        plan_.run_exact_groups(stream);
        if (!monarch_needed()) return;
        for (int it = 0; it < p_.iterations; ++it) {
            launch_flash(rstep_params(it), stream, "vmonarch training R-step");
            launch_lstep(lstep_params(it, p_.recompute_first_frame), stream, "vmonarch training L-step");
        }
        return;
    }
    for (int it = 0; it < p_.iterations; ++it) {
        launch_flash(rstep_params(it), stream, "vmonarch training R-step");
        launch_lstep(lstep_params(it), stream, "vmonarch training L-step");
    }
    // After the last L-step: the exact frame-0 rows overwrite its Monarch rows of out and lse (spec §3).
    if (p_.recompute_first_frame) launch_flash(recompute_params(), stream, "vmonarch training first-frame recompute");
}

void TrainingPlan::run_state(void* stream) const {
    if (p_.has_exact_groups() && !monarch_needed()) return; // the exact groups cover every row: no state
    for (int it = 0; it < p_.iterations; ++it) {
        launch_flash(rstep_params(it), stream, "vmonarch lean backward: R-step rerun");
        if (it + 1 < p_.iterations) launch_lstep(lstep_params(it), stream, "vmonarch lean backward: L-step rerun");
    }
}

} // namespace vmonarch::cuda
