// BackwardPlan (backward_plan.hpp): the operand views of every backward kernel (spec §7) and their order.
// User tensors are viewed through MonarchPlan's user_rows / user_lse (monarch_plan.hpp).
#include "cuda/bwd/backward_plan.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "cuda/bwd/backward_elementwise.hpp"
#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

namespace {

constexpr std::size_t kAlign = 256;
std::size_t align_up(std::size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

void* regions_of(const detail::BackwardProblem& p, const BackwardWorkspaceLayout& w, void* ws) {
    if (p.saved != nullptr) return const_cast<char*>(static_cast<const char*>(p.saved)) + detail::kSavedHeaderBytes;
    return static_cast<char*>(ws) + w.state;
}

} // namespace

BackwardWorkspaceLayout backward_workspace_layout(const detail::BackwardProblem& p) {
    const std::size_t rows = std::size_t(p.batch) * std::size_t(p.heads) * std::size_t(p.grid.tokens());
    const std::size_t d = std::size_t(p.head_dim), dv = std::size_t(p.value_dim), es = 2;
    BackwardWorkspaceLayout w;
    std::size_t off = 0;
    auto take = [&](std::size_t bytes) {
        const std::size_t at = off;
        off = align_up(off + bytes);
        return at;
    };
    w.d_full = take(rows * 4);
    if (p.recompute_first_frame) {
        w.d_monarch = take(rows * 4);
        w.dout_monarch = take(rows * dv * es);
    }
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
    w.has_state = p.saved == nullptr;
    if (w.has_state) w.state = take(detail::cuda_layout_of(p).total());
    w.has_extra = p.extra.present;
    if (w.has_extra) {
        const std::size_t erows = std::size_t(p.batch) * std::size_t(p.heads) * std::size_t(p.extra.tokens);
        w.dk_extra = take(erows * d * 4);
        w.dv_extra = take(erows * dv * 4);
    }
    w.has_text = p.text.present;
    if (w.has_text) {
        const std::size_t trows = std::size_t(p.batch) * std::size_t(p.heads) * std::size_t(p.text.q.tokens());
        w.text_dq = take(trows * d * 4);
        w.text_d = take(trows * 4);
    }
    w.total = off;
    return w;
}

BackwardPlan::BackwardPlan(const detail::BackwardProblem& p, void* workspace)
    : p_(p), w_(backward_workspace_layout(p)), ws_(static_cast<char*>(workspace)),
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
    b.dq = RowView{ws_ + w_.dq, H * N * d, N * d, N * d, d};
    b.dk = RowView{ws_ + w_.dk, H * N * d, N * d, N * d, d};
    b.dv = RowView{ws_ + w_.dv, H * N * dv, N * dv, N * dv, dv};
    b.len_q = f.len_q, b.len_k = f.len_k;
    b.segments = 1, b.heads = f.heads, b.batch = f.batch;
    b.scale = f.scale, b.qk_scale = f.qk_scale, b.clamp = 0.f;
    b.deterministic = p_.deterministic;
    return b;
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
    if (p_.recompute_first_frame) { // the Monarch path sees dO and D with frame 0 set to 0 (spec §7.2)
        l.dout = RowView{ws_ + w_.dout_monarch, H * N * dv, N * dv, HW * dv, dv};
        l.drow = RowView{ws_ + w_.d_monarch, H * N, N, HW, 1};
    } else {
        l.dout = user_rows(p_.dout, HW);
        l.drow = RowView{ws_ + w_.d_full, H * N, N, HW, 1};
    }
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

void BackwardPlan::run(void* stream) const {
    auto st = static_cast<cudaStream_t>(stream);
    const std::int64_t H = p_.heads, N = p_.grid.tokens(), HW = p_.grid.frame_tokens();
    const std::size_t rows = std::size_t(p_.batch) * std::size_t(H) * std::size_t(N);
    const std::size_t d = std::size_t(p_.head_dim), dv = std::size_t(p_.value_dim);
    const Elem elem = elem_of(p_.q.dtype);
    // With exact key groups the Monarch part may have no row at all (then neither its state nor its steps).
    const bool monarch = !p_.has_exact_groups() || state_.monarch_needed();
    if (p_.saved == nullptr && monarch) state_.run_state(stream); // lean mode: the state the training forward would keep

    // The gradient accumulators are added into (+=) by every kernel below.
    check_cuda(cudaMemsetAsync(ws_ + w_.dq, 0, rows * d * 4, st), "vmonarch backward: zero dq accumulator");
    check_cuda(cudaMemsetAsync(ws_ + w_.dk, 0, rows * d * 4, st), "vmonarch backward: zero dk accumulator");
    check_cuda(cudaMemsetAsync(ws_ + w_.dv, 0, rows * dv * 4, st), "vmonarch backward: zero dv accumulator");
    const std::size_t bh = std::size_t(p_.batch) * std::size_t(H);
    if (w_.has_extra) {
        const std::size_t erows = bh * std::size_t(p_.extra.tokens);
        check_cuda(cudaMemsetAsync(ws_ + w_.dk_extra, 0, erows * d * 4, st), "vmonarch backward: zero extra dk accumulator");
        check_cuda(cudaMemsetAsync(ws_ + w_.dv_extra, 0, erows * dv * 4, st), "vmonarch backward: zero extra dv accumulator");
    }
    if (w_.has_text)
        check_cuda(cudaMemsetAsync(ws_ + w_.text_dq, 0, bh * std::size_t(p_.text.q.tokens()) * d * 4, st),
                   "vmonarch backward: zero text dq accumulator");

    // spec §7.1: D = ⟨dO, O⟩ − dlse (and the frame-0-masked copies for the Monarch path, §7.2).
    PreprocessParams pre;
    pre.elem = elem;
    pre.value_dim = int(dv);
    pre.o = user_rows(p_.out, HW);
    pre.dout = user_rows(p_.dout, HW);
    if (p_.dlse != nullptr) pre.dlse = user_lse(p_.dlse, HW);
    pre.d_full = RowView{ws_ + w_.d_full, H * N, N, HW, 1};
    pre.mask_frame0 = p_.recompute_first_frame;
    if (pre.mask_frame0) {
        pre.d_monarch = RowView{ws_ + w_.d_monarch, H * N, N, HW, 1};
        pre.dout_monarch = RowView{ws_ + w_.dout_monarch, H * N * std::int64_t(dv), N * std::int64_t(dv),
                                   HW * std::int64_t(dv), std::int64_t(dv)};
    }
    pre.frames = p_.grid.T, pre.positions = HW;
    pre.heads = int(H), pre.batch = int(p_.batch);
    launch_backward_preprocess(pre, stream, "vmonarch backward");

    if (p_.recompute_first_frame) launch_flash_bwd(recompute_params(), stream, "vmonarch backward: first-frame recompute");
    if (p_.has_exact_groups()) run_exact_groups(stream);
    if (p_.text.present) run_text_queries(stream);

    const int t = p_.iterations;
    if (monarch) {
        launch_lstep_bwd(last_lstep_params(), stream, "vmonarch backward: last L-step");
        for (int it = t - 1; it >= 0; --it) {
            if (it < t - 1) launch_lstep_bwd(earlier_lstep_params(it), stream, "vmonarch backward: L-step");
            if (it > 0) // daR of this iteration is accumulated into by the R-step backward
                check_cuda(cudaMemsetAsync(dar(it).ptr, 0, rows * d * 4, st), "vmonarch backward: zero daR");
            launch_flash_bwd(rstep_params(it), stream, it == t - 1 ? "vmonarch backward: last R-step" : "vmonarch backward: R-step");
        }
    }

    const std::pair<std::size_t, const TensorView*> grads[3] = {{w_.dq, &p_.dq}, {w_.dk, &p_.dk}, {w_.dv, &p_.dv}};
    for (auto [off, view] : grads) {
        FinalizeParams fin;
        fin.elem = elem;
        fin.dim = int(view->head_dim());
        fin.acc = reinterpret_cast<const float*>(ws_ + off);
        fin.dst = user_rows(*view, N);
        fin.tokens = N, fin.heads = int(H), fin.batch = int(p_.batch);
        launch_backward_finalize(fin, stream, "vmonarch backward");
    }
    // The extra keys' and the text queries' gradients (all L rows: padded keys get their zeros).
    std::vector<std::pair<std::size_t, const TensorView*>> extra;
    if (w_.has_extra) extra.push_back({w_.dk_extra, &p_.dk_extra}), extra.push_back({w_.dv_extra, &p_.dv_extra});
    if (w_.has_text) extra.push_back({w_.text_dq, &p_.text.dq});
    for (auto [off, view] : extra) {
        FinalizeParams fin;
        fin.elem = elem;
        fin.dim = int(view->head_dim());
        fin.acc = reinterpret_cast<const float*>(ws_ + off);
        fin.dst = user_rows(*view, view->tokens());
        fin.tokens = view->tokens(), fin.heads = int(H), fin.batch = int(p_.batch);
        launch_backward_finalize(fin, stream, "vmonarch backward (extra keys, text queries)");
    }
}

} // namespace vmonarch::cuda
