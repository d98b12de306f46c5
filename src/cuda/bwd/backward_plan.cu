// BackwardPlan (backward_plan.hpp): the operand views of every backward kernel (spec §7) and their order.
// User tensors are viewed through MonarchPlan's user_rows / user_lse (monarch_plan.hpp).
#include "cuda/bwd/backward_plan.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/env_choice.hpp"
#include "cuda/bwd/backward_elementwise.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/common/scoped_event.hpp"

namespace vmonarch::cuda {

namespace {

constexpr std::size_t kAlign = 256;
std::size_t align_up(std::size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

void* regions_of(const detail::BackwardProblem& p, const BackwardWorkspaceLayout& w, void* ws) {
    if (p.saved != nullptr) return const_cast<char*>(static_cast<const char*>(p.saved)) + detail::kSavedHeaderBytes;
    return static_cast<char*>(ws) + w.state;
}

} // namespace

BackwardSchedule backward_schedule() {
    return detail::env_choice<CudaError>("VMONARCH_BACKWARD_SCHEDULE", BackwardSchedule::automatic,
                                         {{"auto", BackwardSchedule::automatic},
                                          {"concurrent", BackwardSchedule::concurrent},
                                          {"serial", BackwardSchedule::serial}},
                                         "vmonarch backward");
}

bool concurrent_recompute(const detail::BackwardProblem& p, BackwardSchedule schedule) {
    if (!p.recompute_first_frame) return false;
    return schedule == BackwardSchedule::concurrent || (schedule == BackwardSchedule::automatic && p.deterministic);
}

BackwardWorkspaceLayout backward_workspace_layout(const detail::BackwardProblem& p, BackwardSchedule schedule) {
    const std::size_t bh = std::size_t(p.batch) * std::size_t(p.heads);
    const std::size_t rows = bh * std::size_t(p.grid.tokens());
    const std::size_t d = std::size_t(p.head_dim), dv = std::size_t(p.value_dim), es = 2;
    BackwardWorkspaceLayout w;
    std::size_t off = 0;
    auto take = [&](std::size_t bytes) {
        const std::size_t at = off;
        off = align_up(off + bytes);
        return at;
    };
    w.d_full = take(rows * 4);
    w.dq = take(rows * d * 4);
    w.dk = take(rows * d * 4);
    w.dv = take(rows * dv * 4);
    w.dal = take(rows * d * es);
    w.dy = take(rows * dv * es);
    w.has_dcl = p.entropy_grad;
    if (w.has_dcl) w.dcl = take(rows * 4);
    w.drow_r = take(rows * 4);
    w.dar_count = p.iterations >= 3 ? 2 : p.iterations - 1;
    for (int i = 0; i < w.dar_count; ++i) w.dar[i] = take(rows * d * 4);
    w.concurrent = concurrent_recompute(p, schedule);
    if (w.concurrent) {
        w.dense_dq = take(bh * std::size_t(p.grid.frame_tokens()) * d * 4);
        w.dense_dk = take(rows * d * 4);
        w.dense_dv = take(rows * dv * 4);
    }
    w.has_state = p.saved == nullptr;
    if (w.has_state) w.state = take(detail::cuda_layout_of(p).total());
    w.has_extra = p.extra.present;
    if (w.has_extra) {
        const std::size_t erows = bh * std::size_t(p.extra.tokens);
        w.dk_extra = take(erows * d * 4);
        w.dv_extra = take(erows * dv * 4);
    }
    w.has_text = p.text.present;
    if (w.has_text) {
        const std::size_t trows = bh * std::size_t(p.text.q.tokens());
        w.text_dq = take(trows * d * 4);
        w.text_d = take(trows * 4);
    }
    w.total = off;
    return w;
}

BackwardPlan::BackwardPlan(const detail::BackwardProblem& p, void* workspace, BackwardSchedule schedule)
    : p_(p), w_(backward_workspace_layout(p, schedule)), ws_(static_cast<char*>(workspace)),
      state_(p, regions_of(p, w_, workspace)) {}

RowView BackwardPlan::dar(int it) const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens(), d = p_.head_dim;
    return RowView{ws_ + w_.dar[(it - 1) % 2], H * N * d, N * d, HW * d, d}; // iterations alternate
}

FlashBwdParams BackwardPlan::recompute_params() const {
    // Frame 0's HW queries over all N keys as one segment (spec §7.2): D and dO of the full rows.
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), d = p_.head_dim, dv = p_.value_dim;
    const FlashParams f = state_.recompute_params();
    FlashBwdParams b;
    b.elem = f.elem;
    b.head_dim = f.head_dim;
    b.q = f.q, b.k = f.k, b.v = f.v;
    b.lse = user_lse(p_.lse, N);
    b.dy = user_rows(p_.dout, N);
    b.drow = RowView{ws_ + w_.d_full, H * N, N, N, 1};
    if (w_.concurrent) { // accumulators of its own, added by the finalize (dq: frame 0's HW rows only)
        const std::int64_t HW = p_.grid.frame_tokens();
        b.dq = RowView{ws_ + w_.dense_dq, H * HW * d, HW * d, HW * d, d};
        b.dk = RowView{ws_ + w_.dense_dk, H * N * d, N * d, N * d, d};
        b.dv = RowView{ws_ + w_.dense_dv, H * N * dv, N * dv, N * dv, dv};
    } else {
        b.dq = RowView{ws_ + w_.dq, H * N * d, N * d, N * d, d};
        b.dk = RowView{ws_ + w_.dk, H * N * d, N * d, N * d, d};
        b.dv = RowView{ws_ + w_.dv, H * N * dv, N * dv, N * dv, dv};
    }
    b.len_q = f.len_q, b.len_k = f.len_k;
    b.segments = 1, b.heads = f.heads, b.batch = f.batch;
    b.scale = f.scale, b.qk_scale = f.qk_scale, b.clamp = 0.f;
    b.deterministic = p_.deterministic;
    b.dkdv_overwrite = recompute_stores_dkdv();
    return b;
}

bool BackwardPlan::recompute_stores_dkdv() const {
    // Its keys are all N rows of its dk/dv accumulators, and no stage before it writes them (backward_plan.hpp).
    return p_.recompute_first_frame && state_.recompute_params().len_k == p_.grid.tokens();
}

LStepBwdParams BackwardPlan::last_lstep_params() const {
    const int it = p_.iterations - 1;
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens(), T = p_.grid.T;
    const std::int64_t d = p_.head_dim, dv = p_.value_dim;
    const LStepParams f = state_.lstep_params(it);
    LStepBwdParams l;
    l.elem = f.elem;
    l.head_dim = f.head_dim;
    l.q = f.q, l.a = f.a, l.c = f.c, l.y = f.y;
    l.dout = user_rows(p_.dout, HW);
    l.drow = RowView{ws_ + w_.d_full, H * N, N, HW, 1};
    l.zero_frame0 = p_.recompute_first_frame; // the Monarch path sees dO and D with frame 0 set to 0 (spec §7.2)
    l.dq_overwrite = dq_first_written_by_last_lstep();
    l.dy = RowView{ws_ + w_.dy, H * N * dv, N * dv, dv, T * dv};
    l.clamp = float(p_.cr_clamp);
    l.dq = RowView{ws_ + w_.dq, H * N * d, N * d, HW * d, d};
    l.da = RowView{ws_ + w_.dal, H * N * d, N * d, d, T * d};
    if (w_.has_dcl) l.dc = RowView{ws_ + w_.dcl, H * N, N, 1, T};
    l.drow_r = RowView{ws_ + w_.drow_r, H * N, N, 1, T};
    l.frames = f.frames, l.positions = f.positions;
    l.heads = f.heads, l.batch = f.batch;
    l.sink_frames = f.sink_frames, l.window_radius = f.window_radius;
    if (p_.has_exact_groups()) l.merged_lse = user_lse(p_.lse, HW); // exp(z − lse): the merge's weight (§7)
    return l;
}

LStepBwdParams BackwardPlan::earlier_lstep_params(int it) const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens(), T = p_.grid.T;
    const std::int64_t d = p_.head_dim;
    const LStepParams f = state_.lstep_params(it);
    LStepBwdParams l;
    l.elem = f.elem;
    l.head_dim = f.head_dim;
    l.q = f.q, l.a = f.a, l.c = f.c;
    l.ar = state_.aR(it + 1), l.cr = state_.cR(it + 1), l.dar = dar(it + 1);
    l.clamp = float(p_.cr_clamp);
    l.dq = RowView{ws_ + w_.dq, H * N * d, N * d, HW * d, d};
    l.da = RowView{ws_ + w_.dal, H * N * d, N * d, d, T * d};
    if (w_.has_dcl) l.dc = RowView{ws_ + w_.dcl, H * N, N, 1, T};
    l.drow_r = RowView{ws_ + w_.drow_r, H * N, N, 1, T};
    l.frames = f.frames, l.positions = f.positions;
    l.heads = f.heads, l.batch = f.batch;
    l.sink_frames = f.sink_frames, l.window_radius = f.window_radius;
    return l;
}

FlashBwdParams BackwardPlan::rstep_params(int it) const {
    // spec §7.5: da = daL, drow = D_R, dent = dcL (exact gradient only); the last R-step also has the
    // V values (dy = dY, dv); the queries are aR (Q when it = 0), whose gradient is daR (dQ when it = 0).
    // Like the forward's, over key frames S..T-1 (f's views start there; the workspace views move with them).
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens(), T = p_.grid.T;
    const std::int64_t d = p_.head_dim, dv = p_.value_dim;
    const std::int64_t S = std::min(p_.sink_frames, T);
    const bool last = it == p_.iterations - 1;
    const FlashParams f = state_.rstep_params(it);
    FlashBwdParams b;
    b.elem = f.elem;
    b.head_dim = f.head_dim;
    b.q = f.q, b.k = f.k, b.lse = f.lse, b.rs = f.rs;
    b.da = shift_frames(RowView{ws_ + w_.dal, H * N * d, N * d, d, T * d}, S, 2);
    if (w_.has_dcl) b.dent = shift_frames(RowView{ws_ + w_.dcl, H * N, N, 1, T}, S, 4);
    b.drow = shift_frames(RowView{ws_ + w_.drow_r, H * N, N, 1, T}, S, 4);
    b.dq = shift_frames(it == 0 ? RowView{ws_ + w_.dq, H * N * d, N * d, HW * d, d} : dar(it), S, 4);
    b.dk = shift_frames(RowView{ws_ + w_.dk, H * N * d, N * d, HW * d, d}, S, 4);
    if (last) {
        b.v = f.v;
        b.dy = shift_frames(RowView{ws_ + w_.dy, H * N * dv, N * dv, dv, T * dv}, S, 2);
        b.dv = shift_frames(RowView{ws_ + w_.dv, H * N * dv, N * dv, HW * dv, dv}, S, 4);
    }
    b.len_q = f.len_q, b.len_k = f.len_k;
    b.segments = f.segments, b.heads = f.heads, b.batch = f.batch;
    b.scale = f.scale, b.qk_scale = f.qk_scale, b.clamp = f.clamp;
    b.deterministic = p_.deterministic;
    return b;
}

bool BackwardPlan::dq_first_written_by_last_lstep() const {
    // Exact groups and text queries add into dq before it. The serial schedule's recompute runs after the last
    // L-step then (stages()), the concurrent one adds into a dq of its own.
    return !p_.has_exact_groups() && !p_.text.present;
}

std::vector<BackwardStage> BackwardPlan::stages() const {
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens();
    const std::size_t bh = std::size_t(p_.batch) * std::size_t(H), rows = bh * std::size_t(N);
    const std::size_t d = std::size_t(p_.head_dim), dv = std::size_t(p_.value_dim);
    const Elem elem = elem_of(p_.q.dtype);
    // With exact key groups the Monarch part may have no row at all (then neither its state nor its steps).
    const bool monarch = !p_.has_exact_groups() || state_.monarch_needed();
    const bool dq_first = monarch && dq_first_written_by_last_lstep();
    const auto zero = [](void* at, std::size_t bytes, void* stream, const char* what) {
        check_cuda(cudaMemsetAsync(at, 0, bytes, static_cast<cudaStream_t>(stream)), what);
    };
    std::vector<BackwardStage> list;

    // The accumulators are added into (+=) by the kernels below (dq is stored by the last L-step when it is the
    // first to write it).
    // The serial schedule's recompute stores dk and dv when it covers all their rows (recompute_stores_dkdv).
    const bool dkdv_first = !w_.concurrent && recompute_stores_dkdv();
    list.push_back({"zero accumulators", false, false, [=, this](void* st) {
        if (!dq_first) zero(ws_ + w_.dq, rows * d * 4, st, "vmonarch backward: zero dq accumulator");
        if (!dkdv_first) {
            zero(ws_ + w_.dk, rows * d * 4, st, "vmonarch backward: zero dk accumulator");
            zero(ws_ + w_.dv, rows * dv * 4, st, "vmonarch backward: zero dv accumulator");
        }
        if (w_.has_extra) {
            const std::size_t erows = bh * std::size_t(p_.extra.tokens);
            zero(ws_ + w_.dk_extra, erows * d * 4, st, "vmonarch backward: zero extra dk accumulator");
            zero(ws_ + w_.dv_extra, erows * dv * 4, st, "vmonarch backward: zero extra dv accumulator");
        }
        if (w_.has_text)
            zero(ws_ + w_.text_dq, bh * std::size_t(p_.text.q.tokens()) * d * 4, st,
                 "vmonarch backward: zero text dq accumulator");
    }});

    // spec §7.1: D = ⟨dO, O⟩ − dlse.
    list.push_back({"preprocess", false, false, [=, this](void* st) {
        PreprocessParams pre;
        pre.elem = elem;
        pre.value_dim = int(dv);
        pre.o = user_rows(p_.out, HW);
        pre.dout = user_rows(p_.dout, HW);
        if (p_.dlse != nullptr) pre.dlse = user_lse(p_.dlse, HW);
        pre.d_full = RowView{ws_ + w_.d_full, H * N, N, HW, 1};
        pre.frames = p_.grid.T, pre.positions = HW;
        pre.heads = int(H), pre.batch = int(p_.batch);
        launch_backward_preprocess(pre, st, "vmonarch backward");
    }});

    const auto recompute = [this](void* st) {
        launch_flash_bwd(recompute_params(), st, "vmonarch backward: first-frame recompute");
    };
    if (w_.concurrent) { // beside everything up to the finalize (it needs only D from the preprocess)
        list.push_back({"zero recompute accumulators", true, false, [=, this](void* st) {
            zero(ws_ + w_.dense_dq, bh * std::size_t(HW) * d * 4, st, "vmonarch backward: zero recompute dq accumulator");
            if (!recompute_stores_dkdv()) {
                zero(ws_ + w_.dense_dk, rows * d * 4, st, "vmonarch backward: zero recompute dk accumulator");
                zero(ws_ + w_.dense_dv, rows * dv * 4, st, "vmonarch backward: zero recompute dv accumulator");
            }
        }});
        list.push_back({"first-frame recompute backward", true, false, recompute});
    }
    // Lean mode: the state the training forward would keep.
    if (p_.saved == nullptr && monarch)
        list.push_back({"lean: forward rerun", false, false, [this](void* st) { state_.run_state(st); }});
    // Serial schedule: the recompute adds frame 0's dq rows, so it follows the last L-step where that stores dq
    // (whose frame-0 rows it sets to exactly 0: their dO and D enter the Monarch path as 0); it stores dk and dv,
    // so it precedes the R-steps either way.
    const bool recompute_here = p_.recompute_first_frame && !w_.concurrent;
    if (recompute_here && !dq_first) list.push_back({"first-frame recompute backward", false, false, recompute});
    if (p_.has_exact_groups()) list.push_back({"exact groups", false, false, [this](void* st) { run_exact_groups(st); }});
    if (p_.text.present) list.push_back({"text queries", false, false, [this](void* st) { run_text_queries(st); }});

    const int t = p_.iterations;
    if (monarch) {
        list.push_back({"L-step " + std::to_string(t) + " (last)", false, false, [this](void* st) {
            launch_lstep_bwd(last_lstep_params(), st, "vmonarch backward: last L-step");
        }});
        if (recompute_here && dq_first) list.push_back({"first-frame recompute backward", false, false, recompute});
        for (int it = t - 1; it >= 0; --it) {
            if (it < t - 1)
                list.push_back({"L-step " + std::to_string(it + 1), false, false, [this, it](void* st) {
                    launch_lstep_bwd(earlier_lstep_params(it), st, "vmonarch backward: L-step");
                }});
            if (it > 0) // daR of this iteration is accumulated into by the R-step backward
                list.push_back({"zero daR " + std::to_string(it + 1), false, false, [=, this](void* st) {
                    zero(dar(it).ptr, rows * d * 4, st, "vmonarch backward: zero daR");
                }});
            list.push_back({"R-step " + std::to_string(it + 1) + (it == t - 1 ? " (last)" : ""), false, false,
                            [this, it, t](void* st) {
                                launch_flash_bwd(rstep_params(it), st,
                                                 it == t - 1 ? "vmonarch backward: last R-step" : "vmonarch backward: R-step");
                            }});
        }
    }

    // f32 accumulators → the caller's gradients (with the concurrent recompute's added), one launch; then the
    // extra keys' and the text queries' gradients (all L rows: padded keys get their zeros).
    list.push_back({"finalize", false, true, [=, this](void* st) {
        FinalizeParams fin[kMaxFinalize];
        const std::pair<std::size_t, const TensorView*> grads[3] = {{w_.dq, &p_.dq}, {w_.dk, &p_.dk}, {w_.dv, &p_.dv}};
        const std::size_t dense[3] = {w_.dense_dq, w_.dense_dk, w_.dense_dv};
        for (int g = 0; g < 3; ++g) {
            fin[g].elem = elem;
            fin[g].dim = int(grads[g].second->head_dim());
            fin[g].acc = reinterpret_cast<const float*>(ws_ + grads[g].first);
            if (w_.concurrent) {
                fin[g].add = reinterpret_cast<const float*>(ws_ + dense[g]);
                fin[g].add_tokens = g == 0 ? HW : N;
            }
            fin[g].dst = user_rows(*grads[g].second, N);
            fin[g].tokens = N, fin[g].heads = int(H), fin[g].batch = int(p_.batch);
        }
        launch_backward_finalize(fin, 3, st, "vmonarch backward");
        std::vector<std::pair<std::size_t, const TensorView*>> extra;
        if (w_.has_extra) extra.push_back({w_.dk_extra, &p_.dk_extra}), extra.push_back({w_.dv_extra, &p_.dv_extra});
        if (w_.has_text) extra.push_back({w_.text_dq, &p_.text.dq});
        int n = 0;
        for (auto [off, view] : extra) {
            FinalizeParams& f = fin[n++];
            f = FinalizeParams{};
            f.elem = elem;
            f.dim = int(view->head_dim());
            f.acc = reinterpret_cast<const float*>(ws_ + off);
            f.dst = user_rows(*view, view->tokens());
            f.tokens = view->tokens(), f.heads = int(H), f.batch = int(p_.batch);
        }
        if (n > 0) launch_backward_finalize(fin, n, st, "vmonarch backward (extra keys, text queries)");
    }});
    return list;
}

void BackwardPlan::run(void* stream, void* side_stream) const {
    auto st = static_cast<cudaStream_t>(stream), side = static_cast<cudaStream_t>(side_stream);
    const bool beside = w_.concurrent && side != nullptr;
    ScopedEvent fork, join;
    bool forked = false;
    for (const BackwardStage& s : stages()) {
        if (s.join && forked) {
            check_cuda(cudaEventRecord(join.e, side), "vmonarch backward: cudaEventRecord(join)");
            check_cuda(cudaStreamWaitEvent(st, join.e, 0), "vmonarch backward: cudaStreamWaitEvent(join)");
            forked = false;
        }
        if (s.side && beside) {
            if (!forked) {
                check_cuda(cudaEventRecord(fork.e, st), "vmonarch backward: cudaEventRecord(fork)");
                check_cuda(cudaStreamWaitEvent(side, fork.e, 0), "vmonarch backward: cudaStreamWaitEvent(fork)");
                forked = true;
            }
            s.launch(side);
        } else {
            s.launch(stream);
        }
    }
    if (forked) { // no joining stage (not reached: the finalize joins), still leave nothing behind the caller
        check_cuda(cudaEventRecord(join.e, side), "vmonarch backward: cudaEventRecord(join)");
        check_cuda(cudaStreamWaitEvent(st, join.e, 0), "vmonarch backward: cudaStreamWaitEvent(join)");
    }
}

} // namespace vmonarch::cuda
