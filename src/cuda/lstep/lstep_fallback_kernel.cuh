// Internal: the CUDA-core L-step (docs/algorithm.md §3.2), the fallback for clips longer than the
// tensor-core kernel takes (lstep_mma_kernel.cuh, T ≤ 48): one block per (position j, head, batch).
//
// For position j the block gathers Q[·][j] (T rows of the user's q) and aL[j][·] (T rows) into shared
// memory as f32, forms the T×T logits z[i][k] = ⟨Q[i][j], aL[j][k]⟩ − cL[j][k], takes the row softmax L,
// and then either (middle iteration) aR[k][j] = Σ_i L[i][k]·Q[i][j], cR[k][j] = Σ_i L[i][k], or (last)
// O[i][j] = Σ_k L[i][k]·y[k][j] with lse = logsumexp_k z. Memory-bound: every global access is a
// 16-byte vector over rows of D contiguous elements.
//
// Exact key groups (spec §3b), as in lstep_mma_kernel.cuh: z[i][k] = −inf for the key frames exact for query
// frame i (a row without keys: L = 0, lse = −inf); the rows of key frames no query frame fits are zeroed, not
// read; with exact_lse the last step merges (O_M, F) with (O_E, LSE_E) from out and exact_lse by log-sum-exp.
// Only the EXACT instantiations have these; the others are the plain L-step.
#pragma once

#include <cstdint>

#include "cuda/common/kernel_params.hpp"
#include "cuda/common/lse_merge.cuh"
#include "cuda/common/mma_ptx.cuh"
#include "cuda/lstep/lstep_exact_mask.cuh"

namespace vmonarch::cuda {

constexpr int kLStepThreads = 128;

constexpr std::int64_t lstep_smem_bytes(std::int64_t T, int D) { return (2 * T * D + T * T + T) * 4; }

// 8 consecutive 16-bit values → 8 floats in shared memory.
template <bool BF16>
__device__ __forceinline__ void store8(float* dst, uint4 v) {
    const float2 a = unpack2<BF16>(v.x), b = unpack2<BF16>(v.y), c = unpack2<BF16>(v.z), d = unpack2<BF16>(v.w);
    reinterpret_cast<float4*>(dst)[0] = make_float4(a.x, a.y, b.x, b.y);
    reinterpret_cast<float4*>(dst)[1] = make_float4(c.x, c.y, d.x, d.y);
}

// acc[0..8) += l · row[0..8) (8 consecutive floats in shared memory, 16-byte aligned).
__device__ __forceinline__ void fma8(float (&acc)[8], float l, const float* row) {
    const float4 a = reinterpret_cast<const float4*>(row)[0], c = reinterpret_cast<const float4*>(row)[1];
    acc[0] = fmaf(l, a.x, acc[0]); acc[1] = fmaf(l, a.y, acc[1]);
    acc[2] = fmaf(l, a.z, acc[2]); acc[3] = fmaf(l, a.w, acc[3]);
    acc[4] = fmaf(l, c.x, acc[4]); acc[5] = fmaf(l, c.y, acc[5]);
    acc[6] = fmaf(l, c.z, acc[6]); acc[7] = fmaf(l, c.w, acc[7]);
}

// 8 floats → 8 consecutive 16-bit values (one 16-byte store).
template <bool BF16>
__device__ __forceinline__ uint4 pack8(const float (&acc)[8]) {
    return make_uint4(pack2<BF16>(acc[0], acc[1]), pack2<BF16>(acc[2], acc[3]), pack2<BF16>(acc[4], acc[5]),
                      pack2<BF16>(acc[6], acc[7]));
}

// Rows r = 0..T-1 of view at (b, h, frame r, position j) → dst[r][0..D); with `fitted_only`, the rows of key
// frames no query frame fits (mask.fitted false) are zeros instead, their source not read.
template <bool BF16, int D>
__device__ __forceinline__ void gather_rows(float* dst, const RowView& v, int b, int h, std::int64_t j, int T,
                                            bool fitted_only = false, LStepMask mask = {0, -1}) {
    using E = typename ElemType<BF16>::T;
    constexpr int CH = D / 8, UNROLL = 4;
    const int total = T * CH;
    for (int c0 = threadIdx.x; c0 < total; c0 += kLStepThreads * UNROLL) {
        uint4 buf[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) { // issue all loads first
            const int c = c0 + u * kLStepThreads;
            if (c < total)
                buf[u] = fitted_only && !mask.fitted(c / CH, T)
                             ? make_uint4(0u, 0u, 0u, 0u)
                             : *reinterpret_cast<const uint4*>(view_row<const E>(v, b, h, c / CH, j) + (c % CH) * 8);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int c = c0 + u * kLStepThreads;
            if (c < total) store8<BF16>(dst + (c / CH) * D + (c % CH) * 8, buf[u]);
        }
    }
}

template <bool BF16, int D, bool LAST, bool EXACT>
__global__ void __launch_bounds__(kLStepThreads) lstep_fallback_kernel(const LStepParams p) {
    using E = typename ElemType<BF16>::T;
    constexpr int CH = D / 8, C4 = D / 4, WARPS = kLStepThreads / 32;
    extern __shared__ float4 lstep_smem[];
    const int T = int(p.frames);
    float* sQ = reinterpret_cast<float*>(lstep_smem); // [T][D]
    float* sB = sQ + T * D;                            // [T][D]: aL, later y
    float* sZ = sB + T * D;                            // [T][T]: z, later L
    float* sC = sZ + T * T;                            // [T]: cL, later lse
    const std::int64_t j = blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    [[maybe_unused]] const LStepMask mask = lstep_mask(p);
    [[maybe_unused]] const bool merge = EXACT && LAST && p.exact_lse.ptr != nullptr; // uniform
    [[maybe_unused]] const int r0 = LAST && p.skip_frame0 ? 1 : 0; // first query frame whose out/lse rows are written

    gather_rows<BF16, D>(sQ, p.q, b, h, j, T);
    gather_rows<BF16, D>(sB, p.a, b, h, j, T, EXACT, mask);
    for (int k = tid; k < T; k += kLStepThreads)
        sC[k] = EXACT && !mask.fitted(k, T) ? 0.f : *view_row<const float>(p.c, b, h, k, j);
    __syncthreads();

    // z[i][k]; each thread walks the head dim starting at chunk k so that threads of one warp read
    // different bank groups.
    for (int e = tid; e < T * T; e += kLStepThreads) {
        const int i = e / T, k = e - i * T;
        const float4* qi = reinterpret_cast<const float4*>(sQ + i * D);
        const float4* ak = reinterpret_cast<const float4*>(sB + k * D);
        float acc = 0.f;
#pragma unroll 8
        for (int c = 0; c < C4; ++c) {
            const int cc = (c + k) & (C4 - 1);
            const float4 x = qi[cc], y = ak[cc];
            acc = fmaf(x.x, y.x, acc);
            acc = fmaf(x.y, y.y, acc);
            acc = fmaf(x.z, y.z, acc);
            acc = fmaf(x.w, y.w, acc);
        }
        const float z = acc - sC[k];
        sZ[e] = EXACT && mask.exact(i, k) ? -INFINITY : z; // spec §3b: an exact key frame leaves row i's fit
    }
    __syncthreads();

    // Row softmax over key frames k; a warp per row. In the last step with exact_lse, the row's lse becomes
    // tot = logaddexp(F, LSE_E) and its merge weights e^{F−tot}, e^{LSE_E−tot} go to sQ[i][0..2), free by now.
    for (int i = warp; i < T; i += WARPS) {
        float* z = sZ + i * T;
        float mx = -INFINITY;
        for (int k = lane; k < T; k += 32) mx = fmaxf(mx, z[k]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float F;
        if (EXACT && mx == -INFINITY) { // warp-uniform: no fitted key frame (spec §3b), L row = 0, F = −inf
            for (int k = lane; k < T; k += 32) z[k] = 0.f;
            F = -INFINITY;
        } else {
            float sum = 0.f;
            for (int k = lane; k < T; k += 32) {
                const float ez = expf(z[k] - mx);
                z[k] = ez;
                sum += ez;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            const float inv = 1.f / sum;
            for (int k = lane; k < T; k += 32) z[k] *= inv;
            F = mx + logf(sum);
        }
        __syncwarp();
        if (lane == 0) {
            if constexpr (EXACT && LAST)
                if (merge && i >= r0) { // exact_lse may be lse: read here, written after the barrier below
                    const LseMergeWeights w = lse_merge_weights(F, *view_row<const float>(p.exact_lse, b, h, i, j));
                    F = w.tot;
                    sQ[i * D] = w.wa;
                    sQ[i * D + 1] = w.wb;
                }
            sC[i] = F;
        }
    }
    __syncthreads();

    if constexpr (LAST) {
        gather_rows<BF16, D>(sB, p.y, b, h, j, T, EXACT, mask);
        __syncthreads();
        for (int w = tid + r0 * CH; w < T * CH; w += kLStepThreads) {
            const int i = w / CH, ch = w - i * CH;
            float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            for (int k = 0; k < T; ++k) fma8(acc, sZ[i * T + k], sB + k * D + ch * 8);
            E* o = view_row<E>(p.out, b, h, i, j) + ch * 8;
            if (EXACT && merge) { // out = e^{F−tot}·O_M + e^{LSE_E−tot}·O_E; O_E (in out on entry) not read at weight 0
                const LseMergeWeights wt{0.f, sQ[i * D], sQ[i * D + 1]};
                const uint4 raw = wt.wb != 0.f ? *reinterpret_cast<const uint4*>(o) : make_uint4(0u, 0u, 0u, 0u);
                const std::uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 oe = unpack2<BF16>(words[e]);
                    acc[2 * e] = lse_merge_mix(wt, acc[2 * e], oe.x);
                    acc[2 * e + 1] = lse_merge_mix(wt, acc[2 * e + 1], oe.y);
                }
            }
            *reinterpret_cast<uint4*>(o) = pack8<BF16>(acc);
        }
        if (p.lse.ptr != nullptr)
            for (int i = tid + r0; i < T; i += kLStepThreads) *view_row<float>(p.lse, b, h, i, j) = sC[i];
    } else {
        for (int w = tid; w < T * CH; w += kLStepThreads) {
            const int k = w / CH, ch = w - k * CH;
            float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            float colsum = 0.f;
            for (int i = 0; i < T; ++i) {
                const float l = sZ[i * T + k];
                colsum += l;
                fma8(acc, l, sQ + i * D + ch * 8);
            }
            *reinterpret_cast<uint4*>(view_row<E>(p.ar, b, h, k, j) + ch * 8) = pack8<BF16>(acc);
            if (ch == 0) *view_row<float>(p.cr, b, h, k, j) = colsum;
        }
    }
}

} // namespace vmonarch::cuda
