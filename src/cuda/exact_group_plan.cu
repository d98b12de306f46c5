// MonarchPlan with exact key groups (spec §3b), the in-order schedule for groups that need partials (a window,
// or text keys apart from the other exact keys; the rest run beside the Monarch steps, exact_group_beside.cu):
// each video query row's exact group — the sink key frames [0, S), its window frames
// W(i) = [max(S, i - r), min(T, i + r + 1)) and the valid extra (text) keys — is attended by dense flash
// launches into the accumulator (O_E in the user's out, LSE_E in exact_lse), one group after another merged by
// log-sum-exp. Then the Monarch steps fit the remaining key frames and the
// last L-step merges its rows with the accumulator in place (no extra pass over O).
//
// Launch order (one stream unless noted):
//   recompute   frame 0 over all video keys (when on; on the side stream when there are no extra keys)
//   sink        frames [first, T) over keys [0, S·HW)                               -> accumulator
//   window      frames whose window reaches past the sink; interior frames in one segmented launch (each
//               segment's keys start r frames before its query frame), the others one launch each
//               -> accumulator, or a partial merged into it when the sink came first
//   extra keys  every frame of batch element b over its lens[b] valid keys -> partial, merged
//   R/L-steps   key frames [S, T); the last L-step merges (frame 0 left alone when recomputed)
// Partial results live in the workspace's y / cL regions, which the R-steps only write later.
#include <algorithm>

#include <cuda_runtime.h>

#include "core/exact_frames.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/common/scoped_event.hpp"
#include "cuda/monarch_plan.hpp"

namespace vmonarch::cuda {

FlashParams MonarchPlan::dense_over(const RowView& q, std::int64_t len_q, int segments, int batch, const RowView& k,
                                    const RowView& v, std::int64_t len_k, const RowView& o, const RowView& lse) const {
    FlashParams f;
    f.elem = elem_;
    f.head_dim = int(p_.head_dim);
    f.q = q;
    f.k = k;
    f.v = v;
    f.o = o;
    f.lse = lse;
    f.len_q = len_q;
    f.len_k = len_k;
    f.segments = segments;
    f.heads = int(p_.heads);
    f.batch = batch;
    f.scale = f.qk_scale = float(p_.scale);
    return f;
}

void MonarchPlan::merge(const RowView& acc_o, const RowView& acc_lse, const RowView& part_o, const RowView& part_lse,
                        std::int64_t segments, std::int64_t rows, int batch, bool clear, void* stream,
                        const char* what) const {
    if (segments <= 0 || rows <= 0 || batch <= 0) return;
    LseMergeParams m;
    m.elem = elem_;
    m.value_dim = int(p_.value_dim);
    m.acc_o = acc_o;
    m.acc_lse = acc_lse;
    if (!clear) {
        m.part_o = part_o;
        m.part_lse = part_lse;
    }
    m.segments = segments;
    m.rows = rows;
    m.heads = int(p_.heads);
    m.batch = batch;
    launch_lse_merge(m, clear, stream, what);
}

bool MonarchPlan::monarch_needed() const {
    const std::int64_t T = p_.grid.T;
    if (T <= (p_.recompute_first_frame ? 1 : 0)) return false; // only frame 0, which the recompute owns
    const detail::ExactFrames frames(T, p_.sink_frames, p_.window_radius);
    for (std::int64_t k = 0; k < T; ++k)
        if (frames.fitted(k)) return true;
    return false;
}

void MonarchPlan::run_exact_in_order(void* stream, void* side_stream, bool monarch_steps) const {
    auto st = static_cast<cudaStream_t>(stream), side = static_cast<cudaStream_t>(side_stream);
    const std::int64_t T = p_.grid.T, HW = p_.grid.frame_tokens(), B = p_.batch;
    const std::int64_t S = std::min(p_.sink_frames, T);
    const std::int64_t r = p_.window_radius < 0 ? -1 : std::min(p_.window_radius, T);
    const bool text = p_.extra.present;
    const bool recompute = p_.recompute_first_frame;
    const std::int64_t first = recompute ? 1 : 0; // first query frame of the sink/window launches
    // The recompute writes only frame 0's rows of out / exact_lse; the extra keys are merged into every
    // frame (frame 0 included) afterwards, so with extra keys it runs in order on the caller's stream.
    const bool concurrent = recompute && side != nullptr && !text;
    ScopedEvent fork, join;
    if (concurrent) {
        check_cuda(cudaEventRecord(fork.e, st), "vmonarch recompute: cudaEventRecord(fork)");
        check_cuda(cudaStreamWaitEvent(side, fork.e, 0), "vmonarch recompute: cudaStreamWaitEvent(fork)");
        launch_flash(recompute_params(), side, "vmonarch first-frame recompute");
        check_cuda(cudaEventRecord(join.e, side), "vmonarch recompute: cudaEventRecord(join)");
    } else if (recompute) {
        launch_flash(recompute_params(), st, "vmonarch first-frame recompute");
    }

    bool filled = false; // the accumulator rows of frames [first, T) hold a group
    if (S > 0 && first < T) {
        // Sink: every query frame from `first` on, as one segment of rows, over the keys of frames [0, S).
        launch_flash(dense_over(shift_frames(q_, first, 2), (T - first) * HW, 1, int(B), k_, v_, S * HW,
                                shift_frames(out_, first, 2), shift_frames(exact_lse_, first, 4)),
                     st, "vmonarch exact group: sink frames");
        filled = true;
    }
    if (r >= 0 && S < T) {
        // W(i) is non-empty for i + r >= S; from a on every frame has window keys beyond the sink.
        const std::int64_t a = std::max(first, S - r);
        if (a < T) {
            const RowView to_o = filled ? part_o_ : out_, to_lse = filled ? part_lse_ : exact_lse_;
            // Interior frames (window entirely in [S, T)): one launch, segment f = query frame i0 + f, keys
            // (2r + 1)·HW rows from frame i0 + f - r (overlapping key segments).
            const std::int64_t i0 = std::max(a, S + r), i1 = std::max(i0, T - r);
            if (i0 < i1)
                launch_flash(dense_over(shift_frames(q_, i0, 2), HW, int(i1 - i0), int(B), shift_frames(k_, i0 - r, 2),
                                        shift_frames(v_, i0 - r, 2), (2 * r + 1) * HW, shift_frames(to_o, i0, 2),
                                        shift_frames(to_lse, i0, 4)),
                             st, "vmonarch exact group: window (interior frames)");
            for (std::int64_t i = a; i < T; ++i) {
                if (i >= i0 && i < i1) continue;
                const std::int64_t lo = std::max(S, i - r), hi = std::min(T, i + r + 1);
                launch_flash(dense_over(shift_frames(q_, i, 2), HW, 1, int(B), shift_frames(k_, lo, 2),
                                        shift_frames(v_, lo, 2), (hi - lo) * HW, shift_frames(to_o, i, 2),
                                        shift_frames(to_lse, i, 4)),
                             st, "vmonarch exact group: window (edge frame)");
            }
            if (filled)
                merge(shift_frames(out_, a, 2), shift_frames(exact_lse_, a, 4), shift_frames(part_o_, a, 2),
                      shift_frames(part_lse_, a, 4), T - a, HW, int(B), false, st, "vmonarch exact group: window merge");
            filled = true; // without a sink, a == first
        }
    }
    if (text) {
        if (!filled) // no video exact frames: the accumulator starts empty (O 0, LSE −inf)
            merge(shift_frames(out_, first, 2), shift_frames(exact_lse_, first, 4), {}, {}, T - first, HW, int(B), true,
                  st, "vmonarch exact group: clear");
        // Extra keys: all T·HW query rows of batch element b (frame 0's recompute included) over its valid keys.
        for (std::int64_t b = 0; b < B; ++b) {
            const std::int64_t valid = p_.extra.lens[std::size_t(b)];
            if (valid == 0) continue; // an empty group: the accumulator stays as it is
            launch_flash(dense_over(shift_batch(q_, b, 2), T * HW, 1, 1, shift_batch(text_k_, b, 2),
                                    shift_batch(text_v_, b, 2), valid, shift_batch(part_o_, b, 2),
                                    shift_batch(part_lse_, b, 4)),
                         st, "vmonarch exact group: extra keys");
            merge(shift_batch(out_, b, 2), shift_batch(exact_lse_, b, 4), shift_batch(part_o_, b, 2),
                  shift_batch(part_lse_, b, 4), T, HW, 1, false, st, "vmonarch exact group: extra keys merge");
        }
    }

    if (monarch_steps && monarch_needed()) {
        for (int it = 0; it < p_.iterations; ++it) {
            launch_flash(rstep_params(it), st, "vmonarch R-step");
            launch_lstep(lstep_params(it, recompute), st, "vmonarch L-step");
        }
    }
    if (concurrent) check_cuda(cudaStreamWaitEvent(st, join.e, 0), "vmonarch recompute: cudaStreamWaitEvent(join)");
}

} // namespace vmonarch::cuda
