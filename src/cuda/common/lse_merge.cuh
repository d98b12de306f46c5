// Internal: the log-sum-exp merge of two partial softmax results (spec §3b), shared by the merge kernel
// (lstep/lse_merge.cu) and the last L-step, which merges its Monarch rows with the exact group in place.
//
// Two results over disjoint key groups, (O_a, lse_a) and (O_b, lse_b), combine into the softmax over the union:
//   tot = logaddexp(lse_a, lse_b),  O = e^{lse_a − tot}·O_a + e^{lse_b − tot}·O_b,  lse = tot.
// A group whose lse is −inf holds no keys: its weight is 0 and its output is never used (it may be
// uninitialised, so callers select instead of multiplying). Both −inf: O = 0, lse = −inf, never NaN.
#pragma once

#include <cmath>

namespace vmonarch::cuda {

struct LseMergeWeights {
    float tot, wa, wb; // merged lse and the weights of the two sides
};

__device__ __forceinline__ LseMergeWeights lse_merge_weights(float lse_a, float lse_b) {
    const float hi = fmaxf(lse_a, lse_b), lo = fminf(lse_a, lse_b);
    if (hi == -INFINITY) return {-INFINITY, 0.f, 0.f};
    if (lo == -INFINITY) return {hi, lse_a == -INFINITY ? 0.f : 1.f, lse_b == -INFINITY ? 0.f : 1.f}; // one side empty
    const float tot = hi + log1pf(expf(lo - hi));
    return {tot, expf(lse_a - tot), expf(lse_b - tot)};
}

// w.wa·xa + w.wb·xb, where a side of weight 0 contributes nothing whatever its value (inf/NaN of unwritten
// rows); merging with an empty group returns the other side's value unchanged, bit for bit.
__device__ __forceinline__ float lse_merge_mix(const LseMergeWeights& w, float xa, float xb) {
    const float ta = w.wa * xa, tb = w.wb * xb;
    if (w.wb == 0.f) return w.wa == 0.f ? 0.f : ta;
    return w.wa == 0.f ? tb : ta + tb;
}

} // namespace vmonarch::cuda
