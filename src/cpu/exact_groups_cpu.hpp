// Internal CPU building blocks of the exact key groups (spec §3b): exact attention of query rows over one block
// of keys merged into a running (out, lse) by log-sum-exp, and the per-query-frame exact groups of a Monarch
// head. Acc is float or double as in head_ops.hpp.
#pragma once

#include <cstdint>
#include <vector>

#include "core/backend.hpp"
#include "core/exact_frames.hpp"

namespace vmonarch::detail {

// One head's valid extra keys, contiguous: keys[valid][d], values[valid][dv] (valid = lens[b]).
template <typename Acc>
struct ExtraHead {
    std::vector<Acc> keys, values;
    std::int64_t valid = 0;
};

template <typename Acc>
ExtraHead<Acc> load_extra_head(const ExtraKeysProblem& extra, std::int64_t b, std::int64_t h);

// Rows r of (out, lse) become the log-sum-exp merge of themselves and exact attention of q[r] over keys
// [nk][d] / values [nk][dv] (spec §3b): tot = logaddexp(lse, lse_E), out = e^{lse-tot}·out + e^{lse_E-tot}·O_E.
// A row whose lse is -inf (no keys so far) takes the new group as it is; nk = 0 leaves the rows unchanged.
template <typename Acc>
void merge_exact_keys(const Acc* q, std::int64_t nq, const Acc* keys, const Acc* values, std::int64_t nk,
                      std::int64_t d, std::int64_t dv, Acc scale, Acc* out, Acc* lse);

// After the final L-step of head (b, h): every query frame i (i >= 1 when the recompute is on) merges its
// exact group (key frames E(i) of `frames` and the valid extra keys) into its Monarch rows (spec §3b).
// q, k, v: the head's contiguous [N][d] / [N][dv] arrays; out, lse: its [N][dv] / [N] Monarch results.
template <typename Acc>
void merge_exact_groups(const MonarchProblem& p, const ExactFrames& frames, const Acc* q, const Acc* k, const Acc* v,
                        const ExtraHead<Acc>& extra, Acc* out, Acc* lse);

} // namespace vmonarch::detail
