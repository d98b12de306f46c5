// TrainingPlan (training_plan.hpp): the forward's step parameters from MonarchPlan with the operands moved
// to the per-iteration regions of the saved state.
#include "cuda/bwd/training_plan.hpp"

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
    f.a = aL(it);
    f.ent = cL(it);
    f.lse = lse_r(it);
    if (it > 0) { // aR = Q and cR = 1 in the first R-step (MonarchPlan reads Q in place)
        f.q = aR(it);
        f.rs = cR(it);
    }
    if (it == p_.iterations - 1) f.o = y();
    return f;
}

LStepParams TrainingPlan::lstep_params(int it) const {
    LStepParams l = plan_.lstep_params(it, false);
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
    for (int it = 0; it < p_.iterations; ++it) {
        launch_flash(rstep_params(it), stream, "vmonarch training R-step");
        launch_lstep(lstep_params(it), stream, "vmonarch training L-step");
    }
    // After the last L-step: the exact frame-0 rows overwrite its Monarch rows of out and lse (spec §3).
    if (p_.recompute_first_frame) launch_flash(recompute_params(), stream, "vmonarch training first-frame recompute");
}

void TrainingPlan::run_state(void* stream) const {
    for (int it = 0; it < p_.iterations; ++it) {
        launch_flash(rstep_params(it), stream, "vmonarch lean backward: R-step rerun");
        if (it + 1 < p_.iterations) launch_lstep(lstep_params(it), stream, "vmonarch lean backward: L-step rerun");
    }
}

} // namespace vmonarch::cuda
