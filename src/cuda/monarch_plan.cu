// MonarchPlan: builds the kernels' operand views for each step of docs/algorithm.md §3 and launches them in order.
#include "cuda/monarch_plan.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <cuda_runtime.h>

#include "core/env_choice.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/common/scoped_event.hpp"

namespace vmonarch::cuda {

namespace {

constexpr std::size_t kAlign = 256;
std::size_t align_up(std::size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

void* at(void* base, std::size_t off) { return static_cast<char*>(base) + off; }

} // namespace

// A user view [B, N, heads, d] seen as (b, h, frame, position) rows of `seg` tokens per frame.
RowView user_rows(const TensorView& t, std::int64_t seg) {
    return RowView{t.data, t.strides[0], t.strides[2], seg * t.strides[1], t.strides[1]};
}

RowView user_lse(const LseView* l, std::int64_t seg) {
    if (l == nullptr) return RowView{};
    return RowView{l->data, l->strides[0], l->strides[1], seg * l->strides[2], l->strides[2]};
}

KeyJoin key_join(const TensorView& video, const TensorView& text) {
    const auto& a = video.strides;
    const auto& b = text.strides;
    if (video.dtype != text.dtype || a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || a[3] != b[3] || a[1] <= 0)
        return KeyJoin::apart;
    const std::int64_t row_bytes = a[1] * std::int64_t(dtype_size(video.dtype));
    const auto* v = static_cast<const char*>(video.data);
    const auto* t = static_cast<const char*>(text.data);
    if (t + text.tokens() * row_bytes == v) return KeyJoin::text_then_video;
    if (v + video.tokens() * row_bytes == t) return KeyJoin::video_then_text;
    return KeyJoin::apart;
}

KeyJoin key_join(const TensorView& video_k, const TensorView& video_v, const TensorView& text_k, const TensorView& text_v) {
    const KeyJoin j = key_join(video_k, text_k);
    return key_join(video_v, text_v) == j ? j : KeyJoin::apart;
}

bool exact_schedule_serial() {
    return detail::env_choice<CudaError>("VMONARCH_EXACT_SCHEDULE", false, {{"auto", false}, {"serial", true}},
                                         "vmonarch::attention");
}

Elem elem_of(DType t) {
    if (t == DType::bf16) return Elem::bf16;
    if (t == DType::f16) return Elem::f16;
    throw CudaError("vmonarch CUDA kernels take bf16 or f16 tensors, got " + to_string(t));
}

WorkspaceLayout monarch_workspace_layout(const detail::MonarchProblem& p) {
    const std::size_t rows = std::size_t(p.batch) * p.heads * p.grid.tokens();
    const std::size_t es = 2; // bf16 / f16
    WorkspaceLayout w;
    std::size_t off = 0;
    if (p.iterations > 1) {
        w.ar = off; off = align_up(off + rows * p.head_dim * es);
        w.cr = off; off = align_up(off + rows * 4);
    }
    w.al = off; off = align_up(off + rows * p.head_dim * es);
    w.cl = off; off = align_up(off + rows * 4);
    w.y = off;  off = align_up(off + rows * p.value_dim * es);
    // Always present (4 bytes a row), so that workspace_bytes, which sees no extra keys, covers every problem.
    w.exact_lse = off; off = align_up(off + rows * 4);
    w.total = off;
    return w;
}

MonarchPlan::MonarchPlan(const detail::MonarchProblem& p, void* ws) : p_(p), elem_(elem_of(p.q.dtype)) {
    const std::int64_t T = p.grid.T, HW = p.grid.frame_tokens(), H = p.heads, N = p.grid.tokens();
    const std::int64_t d = p.head_dim, dv = p.value_dim;
    q_ = user_rows(p.q, HW);
    k_ = user_rows(p.k, HW);
    v_ = user_rows(p.v, HW);
    out_ = user_rows(p.out, HW);
    lse_ = user_lse(p.lse, HW);
    const WorkspaceLayout w = monarch_workspace_layout(p);
    if (p.iterations > 1) {
        ar_ = RowView{at(ws, w.ar), H * N * d, N * d, HW * d, d};  // [b][h][k][j][d]
        cr_ = RowView{at(ws, w.cr), H * N, N, HW, 1};              // [b][h][k][j]
    }
    al_ = RowView{at(ws, w.al), H * N * d, N * d, d, T * d};       // [b][h][j][k][d], indexed (k, j)
    cl_ = RowView{at(ws, w.cl), H * N, N, 1, T};                   // [b][h][j][k]
    y_ = RowView{at(ws, w.y), H * N * dv, N * dv, dv, T * dv};     // [b][h][j][k][dv]
    if (p.has_exact_groups()) {
        exact_lse_ = lse_.ptr ? lse_ : RowView{at(ws, w.exact_lse), H * N, N, HW, 1}; // [b][h][i][j]
        part_o_ = RowView{at(ws, w.y), H * N * dv, N * dv, HW * dv, dv};               // [b][h][i][j][dv]
        part_lse_ = RowView{at(ws, w.cl), H * N, N, HW, 1};                            // [b][h][i][j]
        if (p.extra.present) {
            text_k_ = user_rows(p.extra.k, p.extra.tokens);
            text_v_ = user_rows(p.extra.v, p.extra.tokens);
            join_ = key_join(p.k, p.v, p.extra.k, p.extra.v);
        }
    }
}

RowView shift_frames(RowView v, std::int64_t n, std::size_t elem_bytes) {
    if (v.ptr != nullptr) v.ptr = static_cast<char*>(v.ptr) + n * v.sf * std::int64_t(elem_bytes);
    return v;
}

RowView shift_batch(RowView v, std::int64_t n, std::size_t elem_bytes) {
    if (v.ptr != nullptr) v.ptr = static_cast<char*>(v.ptr) + n * v.sb * std::int64_t(elem_bytes);
    return v;
}

FlashParams MonarchPlan::rstep_params(int it) const {
    FlashParams f;
    f.elem = elem_;
    f.head_dim = int(p_.head_dim);
    const bool first = it == 0, last = it == p_.iterations - 1;
    // Sink frames (spec §3b) are fitted by no row: the R-steps cover key frames S..T-1 only.
    const std::int64_t S = std::min(p_.sink_frames, p_.grid.T);
    f.q = shift_frames(first ? q_ : ar_, S, 2); // first R-step: L = identity, aR = Q read in place, cR = 1
    if (!first) f.rs = shift_frames(cr_, S, 4);
    f.k = shift_frames(k_, S, 2);
    f.a = shift_frames(al_, S, 2);
    f.ent = shift_frames(cl_, S, 4);
    if (last) {
        f.v = shift_frames(v_, S, 2);
        f.o = shift_frames(y_, S, 2);
    }
    f.len_q = f.len_k = p_.grid.frame_tokens();
    f.segments = int(p_.grid.T - S);
    f.heads = int(p_.heads);
    f.batch = int(p_.batch);
    f.scale = float(p_.scale);
    f.qk_scale = float(p_.scale / std::max(1.0, p_.cr_clamp)); // first R-step: cR = 1
    f.clamp = float(p_.cr_clamp);
    return f;
}

LStepParams MonarchPlan::lstep_params(int it, bool skip_frame0) const {
    LStepParams l;
    l.elem = elem_;
    l.head_dim = int(p_.head_dim);
    l.q = q_;
    l.a = al_;
    l.c = cl_;
    l.last = it == p_.iterations - 1;
    l.skip_frame0 = l.last && skip_frame0;
    if (l.last) {
        l.y = y_;
        l.out = out_;
        l.lse = lse_;
    } else {
        l.ar = ar_;
        l.cr = cr_;
    }
    l.frames = p_.grid.T;
    l.positions = p_.grid.frame_tokens();
    l.heads = int(p_.heads);
    l.batch = int(p_.batch);
    if (p_.has_exact_groups()) { // spec §3b: exact key frames masked out of the fit, the groups merged at the end
        l.sink_frames = std::min(p_.sink_frames, p_.grid.T);
        l.window_radius = p_.window_radius < 0 ? -1 : std::min(p_.window_radius, p_.grid.T);
        if (l.last) l.exact_lse = exact_lse_;
    }
    return l;
}

FlashParams MonarchPlan::recompute_params() const {
    // Frame 0's queries are the first HW tokens; keys and values are all N tokens (one segment).
    const std::int64_t N = p_.grid.tokens();
    FlashParams f;
    f.elem = elem_;
    f.head_dim = int(p_.head_dim);
    f.q = user_rows(p_.q, N);
    f.k = user_rows(p_.k, N);
    f.v = user_rows(p_.v, N);
    f.o = user_rows(p_.out, N);
    f.lse = p_.has_exact_groups() ? exact_lse_ : user_lse(p_.lse, N); // exact groups: the accumulator's LSE
    f.len_q = p_.grid.frame_tokens();
    f.len_k = N;
    f.segments = 1;
    f.heads = int(p_.heads);
    f.batch = int(p_.batch);
    f.scale = f.qk_scale = float(p_.scale);
    return f;
}

void MonarchPlan::run(void* stream, void* side_stream) const {
    if (p_.has_exact_groups()) {
        run_exact(stream, side_stream);
        return;
    }
    auto st = static_cast<cudaStream_t>(stream), side = static_cast<cudaStream_t>(side_stream);
    const bool concurrent = p_.recompute_first_frame && side != nullptr;
    ScopedEvent fork, join;
    if (concurrent) { // first-frame recompute (docs/algorithm.md §3.3), overlapped with the Monarch steps
        check_cuda(cudaEventRecord(fork.e, st), "vmonarch recompute: cudaEventRecord(fork)");
        check_cuda(cudaStreamWaitEvent(side, fork.e, 0), "vmonarch recompute: cudaStreamWaitEvent(fork)");
        launch_flash(recompute_params(), side, "vmonarch first-frame recompute");
        check_cuda(cudaEventRecord(join.e, side), "vmonarch recompute: cudaEventRecord(join)");
    }
    for (int it = 0; it < p_.iterations; ++it) {
        launch_flash(rstep_params(it), stream, "vmonarch R-step");
        launch_lstep(lstep_params(it, concurrent), stream, "vmonarch L-step");
    }
    if (concurrent) {
        check_cuda(cudaStreamWaitEvent(st, join.e, 0), "vmonarch recompute: cudaStreamWaitEvent(join)");
    } else if (p_.recompute_first_frame) {
        // After the last L-step, so the exact rows overwrite frame 0's Monarch rows (docs/algorithm.md §3.3).
        launch_flash(recompute_params(), stream, "vmonarch first-frame recompute");
    }
}

FlashParams dense_params(const detail::AttentionProblem& p) {
    FlashParams f;
    f.elem = elem_of(p.q.dtype);
    f.head_dim = int(p.head_dim);
    f.q = user_rows(p.q, p.q_tokens);
    f.k = user_rows(p.k, p.kv_tokens);
    f.v = user_rows(p.v, p.kv_tokens);
    f.o = user_rows(p.out, p.q_tokens);
    f.lse = user_lse(p.lse, p.q_tokens);
    f.len_q = p.q_tokens;
    f.len_k = p.kv_tokens;
    f.segments = 1;
    f.heads = int(p.heads);
    f.batch = int(p.batch);
    f.scale = f.qk_scale = float(p.scale);
    return f;
}

} // namespace vmonarch::cuda
