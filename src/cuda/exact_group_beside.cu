// MonarchPlan's exact key groups beside the Monarch steps (spec §3b–3c). When every exact-group row attends
// one contiguous range of keys, its group is one dense flash launch written straight into the accumulator
// (O_E in out, LSE_E in exact_lse): no partial, no merge kernel, none of the workspace. So the groups run on
// the side stream while the R- and L-steps run on the caller's, and only the last L-step, which merges
// them (spec §3b), waits for them. The ranges, per batch element b (S = min(sink_frames, T), no window, N
// video and L text tokens, lens[b] of them valid):
//   frame 0 (recomputed): every video key and b's valid text keys: one range when b has no valid text,
//     when the text follows the video in memory (keys [0, N + lens[b]) of the joint sequence) or when it
//     precedes it and is all valid (keys [0, L + N)).
//   the Monarch rows (every other frame): the sink frames' keys [0, S·HW) and b's valid text: one range when
//     either part is empty, or when the text precedes the video and is all valid (keys [0, L + S·HW)); both
//     empty: an empty group, its rows cleared to O = 0, LSE = −inf.
// A window, or a batch element outside these cases, leaves the groups to the in-order schedule
// (exact_group_plan.cu). A joint sequence's text queries go first on the side stream whenever they are one
// range per batch element too (text_queries.cu), whichever schedule the groups take.
#include <algorithm>

#include <cuda_runtime.h>

#include "cuda/common/cuda_check.hpp"
#include "cuda/common/scoped_event.hpp"
#include "cuda/monarch_plan.hpp"

namespace vmonarch::cuda {

namespace {

// Work on `side` ordered after everything queued on `main` before construction; join() (or the destructor,
// also when a launch threw) makes `main` wait for everything queued on `side` until then. A null side:
// both are no-ops and the caller queues everything on main.
class SideFork {
public:
    SideFork(cudaStream_t main, cudaStream_t side) : main_(main), side_(side) {
        if (side_ == nullptr) return;
        check_cuda(cudaEventRecord(fork_.e, main_), "vmonarch exact groups: cudaEventRecord(fork)");
        check_cuda(cudaStreamWaitEvent(side_, fork_.e, 0), "vmonarch exact groups: cudaStreamWaitEvent(fork)");
    }
    ~SideFork() {
        if (side_ != nullptr && !joined_ && cudaEventRecord(join_.e, side_) == cudaSuccess) cudaStreamWaitEvent(main_, join_.e, 0);
    }
    SideFork(const SideFork&) = delete;
    SideFork& operator=(const SideFork&) = delete;

    cudaStream_t side_or_main() const { return side_ != nullptr ? side_ : main_; }
    void join() {
        if (side_ == nullptr || joined_) return;
        joined_ = true;
        check_cuda(cudaEventRecord(join_.e, side_), "vmonarch exact groups: cudaEventRecord(join)");
        check_cuda(cudaStreamWaitEvent(main_, join_.e, 0), "vmonarch exact groups: cudaStreamWaitEvent(join)");
    }

private:
    cudaStream_t main_, side_;
    ScopedEvent fork_, join_;
    bool joined_ = false;
};

} // namespace

// One contiguous key range: rows [0, len) of the video keys, of the text keys, or of the joint sequence
// (text and video keys as one, key_join); len 0 is an empty group.
struct MonarchPlan::KeySpan {
    enum Source { video, text, sequence } source = video;
    std::int64_t len = 0;
    bool operator==(const KeySpan& o) const { return source == o.source && len == o.len; }
};

bool MonarchPlan::key_span(std::int64_t b, bool frame0, KeySpan* span) const {
    const std::int64_t T = p_.grid.T, N = p_.grid.tokens(), S = std::min(p_.sink_frames, T);
    const std::int64_t L = p_.extra.present ? p_.extra.tokens : 0;
    const std::int64_t valid = p_.extra.present ? p_.extra.lens[std::size_t(b)] : 0;
    const std::int64_t video = frame0 ? N : S * p_.grid.frame_tokens(); // the group's video keys, a prefix
    if (valid == 0) *span = {KeySpan::video, video};
    else if (video == 0) *span = {KeySpan::text, valid};
    else if (join_ == KeyJoin::video_then_text && video == N) *span = {KeySpan::sequence, N + valid};
    else if (join_ == KeyJoin::text_then_video && valid == L) *span = {KeySpan::sequence, L + video};
    else return false;
    return true;
}

bool MonarchPlan::groups_beside() const {
    if (exact_schedule_serial() || p_.window_radius >= 0) return false;
    const bool recompute = p_.recompute_first_frame, monarch_rows = p_.grid.T > (recompute ? 1 : 0);
    KeySpan s;
    for (std::int64_t b = 0; b < p_.batch; ++b)
        if ((recompute && !key_span(b, true, &s)) || (monarch_rows && !key_span(b, false, &s))) return false;
    return true;
}

// frame0: frame 0's rows over all their keys, LSE only into the user's lse (the last L-step leaves frame 0
// alone); otherwise the Monarch rows, every frame from `first` on as one segment, into (out, exact_lse).
void MonarchPlan::launch_spans(bool frame0, void* stream) const {
    const std::int64_t T = p_.grid.T, HW = p_.grid.frame_tokens(), B = p_.batch;
    const std::int64_t first = frame0 ? 0 : (p_.recompute_first_frame ? 1 : 0);
    const std::int64_t frames = frame0 ? 1 : T - first;
    const RowView q = shift_frames(q_, first, 2), o = shift_frames(out_, first, 2);
    const RowView lse = frame0 ? lse_ : shift_frames(exact_lse_, first, 4);
    const RowView sequence_k = join_ == KeyJoin::text_then_video ? text_k_ : k_;
    const RowView sequence_v = join_ == KeyJoin::text_then_video ? text_v_ : v_;
    const char* what = frame0 ? "vmonarch exact group: frame 0 over all keys" : "vmonarch exact group: one key range";
    for (std::int64_t b0 = 0, b1 = 0; b0 < B; b0 = b1) {
        KeySpan s, next;
        key_span(b0, frame0, &s);
        for (b1 = b0 + 1; b1 < B && key_span(b1, frame0, &next) && next == s;) ++b1;
        const int nb = int(b1 - b0);
        if (s.len == 0) { // no keys: the empty group's accumulator (O 0, LSE −inf) for the L-step's merge
            merge(shift_batch(o, b0, 2), shift_batch(lse, b0, 4), {}, {}, frames, HW, nb, true, stream,
                  "vmonarch exact group: clear");
            continue;
        }
        const RowView k = s.source == KeySpan::video ? k_ : s.source == KeySpan::text ? text_k_ : sequence_k;
        const RowView v = s.source == KeySpan::video ? v_ : s.source == KeySpan::text ? text_v_ : sequence_v;
        launch_flash(dense_over(shift_batch(q, b0, 2), frames * HW, 1, nb, shift_batch(k, b0, 2), shift_batch(v, b0, 2),
                                s.len, shift_batch(o, b0, 2), shift_batch(lse, b0, 4)),
                     stream, what);
    }
}

void MonarchPlan::launch_groups_beside(void* stream) const {
    if (p_.recompute_first_frame) launch_spans(true, stream);
    if (p_.grid.T > (p_.recompute_first_frame ? 1 : 0)) launch_spans(false, stream);
}

void MonarchPlan::run_exact(void* stream, void* side_stream) const {
    auto st = static_cast<cudaStream_t>(stream), side = static_cast<cudaStream_t>(side_stream);
    const bool text_beside = p_.text_queries != nullptr && text_queries_direct(*p_.text_queries);
    const bool beside = side != nullptr && groups_beside();
    if (!text_beside && !beside) {
        run_exact_in_order(stream, side_stream);
        return;
    }
    SideFork fork(st, side);
    if (text_beside) launch_text_queries_direct(*p_.text_queries, fork.side_or_main());
    if (!beside) { // with text the in-order schedule keeps to the caller's stream
        run_exact_in_order(stream, nullptr);
        fork.join();
        return;
    }
    launch_groups_beside(fork.side_or_main());
    if (monarch_needed()) {
        for (int it = 0; it < p_.iterations; ++it) {
            launch_flash(rstep_params(it), st, "vmonarch R-step");
            if (it == p_.iterations - 1) fork.join(); // the last L-step merges the groups' accumulator
            launch_lstep(lstep_params(it, p_.recompute_first_frame), st, "vmonarch L-step");
        }
    }
    fork.join();
}

} // namespace vmonarch::cuda
