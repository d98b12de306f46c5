// Internal: the online softmax with the entropy accumulator (docs/algorithm.md §4), shared by the sm80
// and sm90 flash kernels, for the two query rows a thread holds in an mma C fragment (rows lane/4 and
// lane/4 + 8 of a 16-row tile; each row is spread over the 4 threads of a quad).
//
// Per row, in base 2 (x₂ = x·log₂e): the offset m, S = Σ 2^(x₂ − m) and, when K is a value operand,
// E = Σ 2^(x₂ − m)·(x₂ − m). Each thread sums its own columns; finish() adds the quad's partial sums.
#pragma once

#include <cmath>

#include "cuda/common/mma_ptx.cuh" // fast_exp2

namespace vmonarch::cuda {

// How the statistics round. FusedMath writes plain expressions and lets the compiler contract a·b + c
// into one FMA (the sm80 kernel); RoundedMath spells every rounding, so that the statistics have the same
// bits whatever the compiler fuses in each schedule (the sm90 kernel).
struct FusedMath {
    static __device__ __forceinline__ float mul(float a, float b) { return a * b; }
    static __device__ __forceinline__ float add(float a, float b) { return a + b; }
    static __device__ __forceinline__ float sub(float a, float b) { return a - b; }
    static __device__ __forceinline__ float fma(float a, float b, float c) { return a * b + c; }
};
struct RoundedMath {
    static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
    static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
    static __device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
    static __device__ __forceinline__ float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
};

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// Partial sums S and E of the two rows: a key tile's own (the stale-offset update, §4.2) or the running
// ones of OnlineStats.
template <bool ENTROPY, typename Math> struct RowSums {
    float l[2] = {0.f, 0.f}, e[2] = {0.f, 0.f};

    // One key of row r with probability pr = 2^dlt, dlt = x₂ − m finite.
    __device__ __forceinline__ void add(int r, float pr, float dlt) {
        l[r] = Math::add(l[r], pr);
        if constexpr (ENTROPY) e[r] = Math::fma(pr, dlt, e[r]);
    }
    // The same where the key may be masked (dlt = −∞, pr = 0): its entropy term is taken on
    // max(dlt, −256), so that 0·(−∞) never appears (§4.1).
    __device__ __forceinline__ void add_maskable(int r, float pr, float dlt) {
        l[r] = Math::add(l[r], pr);
        if constexpr (ENTROPY) e[r] = Math::fma(pr, fmaxf(dlt, -256.f), e[r]);
    }
    // so_far and every S of this thread within 2^8 (§4.2's acceptance test, before the warp-wide vote).
    // Written as one chain so that a caller folding several tiles' tests (so_far && …) compiles to one
    // predicate chain: as two separate tests, ptxas spilled the sm80 d = 64 two-value kernel.
    __device__ __forceinline__ bool within_stale_bound(bool so_far = true) const { return so_far && l[0] <= 256.f && l[1] <= 256.f; }
};

template <bool ENTROPY, typename Math> struct OnlineStats {
    float m[2] = {-INFINITY, -INFINITY};
    RowSums<ENTROPY, Math> sum;

    // Exact update (§4.1) for a key tile whose row maximum, as a base-2 logit, is tile_max (−∞ when the row
    // has no key in the tile): the offset moves to max(m, tile_max); mu = the offset the tile's keys are
    // exponentiated against (0 while the row has seen no key), al = the factor the accumulators need.
    __device__ __forceinline__ void move_offset(int r, float tile_max, float& mu, float& al) {
        const float mn = fmaxf(m[r], tile_max);
        mu = mn == -INFINITY ? 0.f : mn;
        al = fast_exp2(m[r] - mu);
        if constexpr (ENTROPY) // E stays relative to the offset: E ← α·(E + (m − m')·S)
            sum.e[r] = m[r] == -INFINITY ? 0.f : Math::mul(al, Math::fma(Math::sub(m[r], mu), sum.l[r], sum.e[r]));
        m[r] = mn;
        sum.l[r] = Math::mul(sum.l[r], al);
    }
    // Stale-offset update (§4.2): a tile exponentiated against the unchanged m adds its partial sums.
    __device__ __forceinline__ void absorb(const RowSums<ENTROPY, Math>& tile) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            sum.l[r] = Math::add(sum.l[r], tile.l[r]);
            if constexpr (ENTROPY) sum.e[r] = Math::add(sum.e[r], tile.e[r]);
        }
    }
    // Adds the quad's partial sums (every thread of the quad then holds the row's S and E) and returns
    // inv[r] = 1 / S (0 for a row without keys).
    __device__ __forceinline__ void finish(float (&inv)[2]) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
#pragma unroll
            for (int o = 1; o <= 2; o <<= 1) {
                sum.l[r] = Math::add(sum.l[r], __shfl_xor_sync(0xffffffffu, sum.l[r], o));
                if constexpr (ENTROPY) sum.e[r] = Math::add(sum.e[r], __shfl_xor_sync(0xffffffffu, sum.e[r], o));
            }
            inv[r] = sum.l[r] > 0.f ? 1.f / sum.l[r] : 0.f;
        }
    }
    // §4.3, after finish(): logsumexp x = ln2·m + ln S (−∞ for a row without keys) and
    // cL = ln2·E/S − ln S (0 for a row without keys).
    __device__ __forceinline__ float lse(int r) const {
        const float l = sum.l[r];
        return l > 0.f ? Math::add(Math::mul(kLn2, m[r]), logf(l)) : -INFINITY;
    }
    __device__ __forceinline__ float neg_entropy(int r, float inv) const {
        const float l = sum.l[r];
        return l > 0.f ? Math::sub(Math::mul(Math::mul(kLn2, sum.e[r]), inv), logf(l)) : 0.f;
    }
};

// Row maximum across the quad that shares a row.
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    return x;
}

} // namespace vmonarch::cuda
