// BackwardPlan's exact key groups (backward_plan.hpp; spec §3b, §3c, §7): dense FlashAttention backwards of the
// video rows over their exact keys and of a joint sequence's text queries over every valid key.
//
// The merge O = w_M·O_M + w_E·O_E (w = exp(lse_g − lse)) gives the exact group dO_E = w_E·dO and
// D_E = w_E·D with D = ⟨dO, O⟩ − dlse of the merged row, and w_E·exp(x − LSE_E) = exp(x − lse): so each group's
// backward is an ordinary flash backward with the row's dO, its merged lse and its D (d_full), accumulating into
// the same f32 dq, dk, dv as the Monarch part (exact_backward_cpu.hpp has the derivation).
//
// Launches, in stream order (each adds into the accumulators; a launch owns its key rows, dq adds atomically
// or, deterministic, in the query kernel's order):
//   sink        query frames [first, T) as one segment over keys [0, S·HW)
//   window      edge frames one launch each over [max(S, i − r), min(T, i + r + 1)); interior frames in
//               2r + 1 launches of every (2r + 1)-th frame, whose key ranges are disjoint
//   extra keys  per batch element b with lens[b] > 0: all N rows over its valid keys → dk_extra, dv_extra
//   text        per joint sequence: D of the text rows; the text rows over all N video keys (one launch), then
//               per batch element over its valid text keys
#include <algorithm>

#include "cuda/bwd/backward_elementwise.hpp"
#include "cuda/bwd/backward_plan.hpp"

namespace vmonarch::cuda {

namespace {

// The view with its segment stride multiplied by `every`: segment f is the old view's segment every·f.
RowView every_nth_frame(RowView v, std::int64_t every) {
    v.sf *= every;
    return v;
}

} // namespace

// f32 accumulator rows [B][H][tokens][dim] seen as (b, h, frame, position) with `seg` positions per frame.
RowView BackwardPlan::acc_rows(std::size_t off, std::int64_t tokens, std::int64_t seg, std::int64_t dim) const {
    return RowView{ws_ + off, p_.heads * tokens * dim, tokens * dim, seg * dim, dim};
}

FlashBwdParams BackwardPlan::dense_bwd(const RowView& q, const RowView& dout, const RowView& lse, const RowView& drow,
                                       const RowView& dq, std::int64_t len_q, int segments, int batch, const RowView& k,
                                       const RowView& v, const RowView& dk, const RowView& dv,
                                       std::int64_t len_k) const {
    FlashBwdParams b;
    b.elem = elem_of(p_.q.dtype);
    b.head_dim = int(p_.head_dim);
    b.q = q, b.k = k, b.v = v;
    b.lse = lse;
    b.dy = dout;
    b.drow = drow;
    b.dq = dq, b.dk = dk, b.dv = dv;
    b.len_q = len_q, b.len_k = len_k;
    b.segments = segments, b.heads = int(p_.heads), b.batch = batch;
    b.scale = b.qk_scale = float(p_.scale);
    b.clamp = 0.f;
    b.deterministic = p_.deterministic;
    return b;
}

void BackwardPlan::run_exact_groups(void* stream) const {
    const std::int64_t T = p_.grid.T, HW = p_.grid.frame_tokens(), N = p_.grid.tokens(), B = p_.batch;
    const std::int64_t d = p_.head_dim, dv = p_.value_dim, H = p_.heads;
    const std::int64_t S = std::min(p_.sink_frames, T);
    const std::int64_t r = p_.window_radius < 0 ? -1 : std::min(p_.window_radius, T);
    const std::int64_t first = p_.recompute_first_frame ? 1 : 0; // frame 0 is the recompute's (all keys)
    const RowView q = user_rows(p_.q, HW), k = user_rows(p_.k, HW), v = user_rows(p_.v, HW);
    const RowView dout = user_rows(p_.dout, HW), lse = user_lse(p_.lse, HW);
    const RowView drow{ws_ + w_.d_full, H * N, N, HW, 1};
    const RowView dq = acc_rows(w_.dq, N, HW, d), dk = acc_rows(w_.dk, N, HW, d), dv_acc = acc_rows(w_.dv, N, HW, dv);
    // Query frames [i, i + every·segments) step `every` over keys from frame lo, len_k keys per segment.
    auto frames_over = [&](std::int64_t i, std::int64_t every, int segments, std::int64_t len_q, std::int64_t lo,
                           std::int64_t len_k, const char* what) {
        auto at_q = [&](const RowView& view, std::size_t es) { return every_nth_frame(shift_frames(view, i, es), every); };
        auto at_k = [&](const RowView& view, std::size_t es) { return every_nth_frame(shift_frames(view, lo, es), every); };
        launch_flash_bwd(dense_bwd(at_q(q, 2), at_q(dout, 2), at_q(lse, 4), at_q(drow, 4), at_q(dq, 4), len_q, segments,
                                   int(B), at_k(k, 2), at_k(v, 2), at_k(dk, 4), at_k(dv_acc, 4), len_k),
                         stream, what);
    };
    if (S > 0 && first < T) frames_over(first, 1, 1, (T - first) * HW, 0, S * HW, "vmonarch backward: sink frames");
    if (r >= 0 && S < T) {
        const std::int64_t a = std::max(first, S - r); // from a on, every frame has window keys beyond the sink
        const std::int64_t i0 = std::max(a, S + r), i1 = std::max(i0, T - r); // interior: window inside [S, T)
        const std::int64_t span = 2 * r + 1;
        for (std::int64_t c = 0; c < std::min(span, i1 - i0); ++c) {
            const int segments = int((i1 - i0 - c + span - 1) / span);
            frames_over(i0 + c, span, segments, HW, i0 + c - r, span * HW, "vmonarch backward: window (interior frames)");
        }
        for (std::int64_t i = a; i < T; ++i) {
            if (i >= i0 && i < i1) continue;
            const std::int64_t lo = std::max(S, i - r), hi = std::min(T, i + r + 1);
            frames_over(i, 1, 1, HW, lo, (hi - lo) * HW, "vmonarch backward: window (edge frame)");
        }
    }
    if (p_.extra.present) {
        // Every video row of batch element b (frame 0's too) over its valid extra keys.
        const std::int64_t L = p_.extra.tokens;
        const RowView tk = user_rows(p_.extra.k, L), tv = user_rows(p_.extra.v, L);
        const RowView tdk = acc_rows(w_.dk_extra, L, L, d), tdv = acc_rows(w_.dv_extra, L, L, dv);
        for (std::int64_t b = 0; b < B; ++b) {
            const std::int64_t valid = p_.extra.lens[std::size_t(b)];
            if (valid == 0) continue;
            launch_flash_bwd(dense_bwd(shift_batch(q, b, 2), shift_batch(dout, b, 2), shift_batch(lse, b, 4),
                                       shift_batch(drow, b, 4), shift_batch(dq, b, 4), N, 1, 1, shift_batch(tk, b, 2),
                                       shift_batch(tv, b, 2), shift_batch(tdk, b, 4), shift_batch(tdv, b, 4), valid),
                             stream, "vmonarch backward: extra keys");
        }
    }
}

void BackwardPlan::run_text_queries(void* stream) const {
    const std::int64_t N = p_.grid.tokens(), B = p_.batch, H = p_.heads;
    const std::int64_t d = p_.head_dim, dv = p_.value_dim, L = p_.text.q.tokens();
    const RowView tq = user_rows(p_.text.q, L), tdout = user_rows(p_.text.dout, L), tlse = user_lse(&p_.text.lse, L);
    const RowView tdrow{ws_ + w_.text_d, H * L, L, L, 1};
    const RowView tdq = acc_rows(w_.text_dq, L, L, d);

    // D = ⟨dO, O⟩ − dlse of the text rows (spec §7.1).
    PreprocessParams pre;
    pre.elem = elem_of(p_.q.dtype);
    pre.value_dim = int(dv);
    pre.o = user_rows(p_.text.out, L);
    pre.dout = tdout;
    if (p_.text.dlse != nullptr) pre.dlse = user_lse(p_.text.dlse, L);
    pre.d_full = tdrow;
    pre.frames = 1, pre.positions = L;
    pre.heads = int(H), pre.batch = int(B);
    launch_backward_preprocess(pre, stream, "vmonarch backward: text queries");

    // Over the N video keys, all batch elements at once; then over each element's valid text keys.
    launch_flash_bwd(dense_bwd(tq, tdout, tlse, tdrow, tdq, L, 1, int(B), user_rows(p_.k, N), user_rows(p_.v, N),
                               acc_rows(w_.dk, N, N, d), acc_rows(w_.dv, N, N, dv), N),
                     stream, "vmonarch backward: text queries over the video keys");
    const RowView tk = user_rows(p_.extra.k, L), tv = user_rows(p_.extra.v, L);
    const RowView tdk = acc_rows(w_.dk_extra, L, L, d), tdv = acc_rows(w_.dv_extra, L, L, dv);
    for (std::int64_t b = 0; b < B; ++b) {
        const std::int64_t valid = p_.extra.lens[std::size_t(b)];
        if (valid == 0) continue;
        launch_flash_bwd(dense_bwd(shift_batch(tq, b, 2), shift_batch(tdout, b, 2), shift_batch(tlse, b, 4),
                                   shift_batch(tdrow, b, 4), shift_batch(tdq, b, 4), L, 1, 1, shift_batch(tk, b, 2),
                                   shift_batch(tv, b, 2), shift_batch(tdk, b, 4), shift_batch(tdv, b, 4), valid),
                         stream, "vmonarch backward: text queries over the text keys");
    }
}

} // namespace vmonarch::cuda
