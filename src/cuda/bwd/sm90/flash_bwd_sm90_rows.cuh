// Internal: the prepared form of the Hopper flash backward's elementwise phase (spec §7.5, §7.2), shared by
// both schedules (flash_bwd_sm90_kernel.cuh, flash_bwd_sm90_ws_kernel.cuh).
//
// The query-row scalars are formed once per row of a query tile, by one thread, in the form the consumers
// use, and kept in shared memory; a consumer thread then loads one float4 (and, with the entropy term, one
// float) per query column it owns. With qk = ⟨q_i, k_l⟩ (the raw score), x = γ·qk and base-2 logits
// x2 = (x − lse)·log2(e):
//   g2 = γ·log2(e),  nl2 = −lse·log2(e)               x2 = qk·g2 + nl2  (one FFMA),  P = 2^x2  (one ex2);
//   dP = s·⟨da, k⟩ + ⟨dy, v⟩ + dent·(x − lse) and dS = γ·P∘(dP − drow); the kernels keep dS' = dS/s with
//   dA (dK and dQ accumulated divided by s) and dS' = dS without. With acc the dP accumulator the kernel
//   holds and e = the entropy factor per base-2 logit,
//     dS' = P·(c·(acc + e·x2) − cr),   cr = c·r,
//   where, by variant,
//     dA only    acc = ⟨da, k⟩ (unscaled):   c = γ,     r = drow / s,  e = dent·ln2 / s;
//     dA and dY  acc = s·⟨da, k⟩ + ⟨dy, v⟩:  c = γ / s, r = drow,      e = dent·ln2;
//     dY only    acc = ⟨dy, v⟩:              c = γ,     r = drow,      e = dent·ln2.
// A row past len_q, or one whose lse is not finite, gets g2 = 0, nl2 = −2^100, c = cr = e = 0: x2 = −2^100,
// P = 0 and dS' = 0 with no infinity anywhere. A key past len_k (zero-filled, qk = 0, x2 finite) is masked
// by setting P = 0 after the exponential, which again leaves every term finite; only the last key tile of
// a segment has such keys, so the other tiles take a form without the mask. The reciprocal γ = s / cR is
// the correctly rounded quotient (per row: its cost no longer matters).
//
// dS goes to shared memory by stmatrix (.trans): the dSᵀ accumulator fragments (keys × queries) land as
// rows of queries, keys contiguous, in the 128-byte-swizzled dS tile the dQ product reads.
#pragma once

#include <cfloat>
#include <cstdint>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90_shape.cuh"
#include "cuda/common/mma_fragments.cuh" // c_frag_col
#include "cuda/common/mma_ptx.cuh"       // fast_exp2, pack2
#include "cuda/common/online_softmax.cuh" // kLog2e, kLn2
#include "cuda/sm90/flash_sm90_shape.cuh"   // VMONARCH_HOPPER_DEVICE

namespace vmonarch::cuda::hopper {

#ifdef VMONARCH_HOPPER_DEVICE
// The base-2 logit of a masked row: 2^(−2^100) is 0, and every product with it stays finite.
constexpr float kBwdMaskedLogit2 = 1.2676506e30f; // 2^100

// The prepared scalars of one query row (see above) from its raw operands: pr4 = (g2, nl2, c, cr), pe = e.
// valid: the row is below len_q.
template <bool HAS_DA, bool HAS_DY>
__device__ __forceinline__ void bwd_sm90_prepared_row(const FlashBwdParams& p, float lse, float rs, float drow, float dent, bool valid,
                                                      bool has_rs, float4& pr4, float& pe) {
    float g2 = 0.f, nl2 = -kBwdMaskedLogit2, c = 0.f, cr = 0.f, e = 0.f;
    if (valid && isfinite(lse)) {
        float gamma = p.qk_scale;
        if (has_rs) {
            float cl = fmaxf(rs, p.clamp);
            cl = cl > 0.f ? cl : FLT_MIN; // as the forward: a non-positive max becomes FLT_MIN
            gamma = p.scale / cl;
        }
        const float inv_s = 1.f / p.scale;
        constexpr bool DA_ONLY = HAS_DA && !HAS_DY;
        g2 = gamma * kLog2e;
        nl2 = fmaxf(-lse * kLog2e, -kBwdMaskedLogit2);
        c = HAS_DA && HAS_DY ? gamma * inv_s : gamma;
        cr = c * (DA_ONLY ? drow * inv_s : drow);
        e = DA_ONLY ? dent * kLn2 * inv_s : dent * kLn2;
    }
    pr4 = make_float4(g2, nl2, c, cr);
    pe = e;
}

// Row r of the query tile from its raw operands raw[k·BM + r] (lse, cR, drow, dent; cp.async-landed and
// visible to this thread) into prep4[r] and prep_e[r].
template <bool HAS_DA, bool HAS_DY>
__device__ __forceinline__ void bwd_sm90_prepare_row(const FlashBwdParams& p, const float* raw, int r, bool valid, bool has_rs,
                                                     bool has_dent, float4* prep4, float* prep_e) {
    constexpr int BM = BwdSm90Shape::BM;
    float4 pr4;
    float pe;
    bwd_sm90_prepared_row<HAS_DA, HAS_DY>(p, raw[r], has_rs ? raw[BM + r] : 0.f, raw[2 * BM + r], has_dent ? raw[3 * BM + r] : 0.f, valid,
                                          has_rs, pr4, pe);
    prep4[r] = pr4;
    prep_e[r] = pe;
}

// P = 2^(qk·g2 + nl2), 0 for a masked key (MASK: the tile has keys past len_k).
template <bool MASK> __device__ __forceinline__ float bwd_sm90_prepared_p(float qk, const float4& r, bool key_ok, float& x2) {
    x2 = fmaf(qk, r.x, r.y);
    const float pr = fast_exp2(x2);
    return MASK && !key_ok ? 0.f : pr;
}

// P (returned in pr) and dS' = P·(c·(acc + e·x2) − cr) from the raw score qk and the dP accumulator acc;
// DENT: with the entropy term (e = 0 on rows without it, so DENT = true is always correct).
template <bool MASK, bool DENT>
__device__ __forceinline__ float bwd_sm90_prepared_ds(float qk, float acc, const float4& r, float e, bool key_ok, float& pr) {
    float x2;
    pr = bwd_sm90_prepared_p<MASK>(qk, r, key_ok, x2);
    const float t = DENT ? fmaf(e, x2, acc) : acc;
    return pr * fmaf(r.z, t, -r.w);
}

// Over this thread's Sᵀ / dPᵀ accumulator registers (m64n64: register 4nt + j + 2h is key lane/4 + 8h,
// query column c_frag_col(4nt + j)): P in place of the raw scores s, dS' in place of dp.
template <bool MASK, bool DENT, int NS>
__device__ __forceinline__ void bwd_sm90_prepared_p_ds(float (&s)[NS], float (&dp)[NS], const float4* prep4, const float* prep_e,
                                                       const bool (&key_ok)[2], int lane) {
#pragma unroll
    for (int nt = 0; nt < NS / 4; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int col = c_frag_col(4 * nt + j, lane);
            const float4 r = prep4[col];
            const float e = DENT ? prep_e[col] : 0.f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int i = 4 * nt + j + 2 * h;
                float pr;
                dp[i] = bwd_sm90_prepared_ds<MASK, DENT>(s[i], dp[i], r, e, key_ok[h], pr);
                s[i] = pr;
            }
        }
}

// The same, dS' only (s keeps the raw scores; P formed again as bwd_sm90_prepared_p forms it).
template <bool MASK, bool DENT, int NS>
__device__ __forceinline__ void bwd_sm90_prepared_ds_only(const float (&s)[NS], float (&dp)[NS], const float4* prep4, const float* prep_e,
                                                          const bool (&key_ok)[2], int lane) {
#pragma unroll
    for (int nt = 0; nt < NS / 4; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int col = c_frag_col(4 * nt + j, lane);
            const float4 r = prep4[col];
            const float e = DENT ? prep_e[col] : 0.f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int i = 4 * nt + j + 2 * h;
                float pr;
                dp[i] = bwd_sm90_prepared_ds<MASK, DENT>(s[i], dp[i], r, e, key_ok[h], pr);
            }
        }
}

// What bwd_sm90_prepared_p_form leaves in the raw scores' registers s: the raw scores (the dS phase forms P
// again), P (problems without the entropy term, whose dS needs P and not x2), or x2 = qk·g2 + nl2 with P in pf
// beside it (the entropy term's dS needs both).
enum class PKeep { scores, p, x2_and_p };

// P = 2^x2 (0 for a masked key), as bwd_sm90_prepared_p forms it, packed as the A operand of the P products
// (registers 4nt + {0, 1} and 4nt + {2, 3} are the pairs pa[nt / 2][2·(nt % 2) + {0, 1}]), and what KEEP
// says into s (and pf; pf is not touched otherwise).
template <bool BF16, bool MASK, PKeep KEEP, int NS, int NP, int KS>
__device__ __forceinline__ void bwd_sm90_prepared_p_form(float (&s)[NS], float (&pf)[NP], std::uint32_t (&pa)[KS][4],
                                                         const float4* prep4, const bool (&key_ok)[2], int lane) {
    static_assert(KEEP != PKeep::x2_and_p || NP == NS, "P beside x2 needs a register per score");
#pragma unroll
    for (int nt = 0; nt < NS / 4; ++nt) {
        float pr[4];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const float4 r = prep4[c_frag_col(4 * nt + j, lane)];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int i = 4 * nt + j + 2 * h;
                float x2;
                const float p = bwd_sm90_prepared_p<MASK>(s[i], r, key_ok[h], x2);
                if constexpr (KEEP == PKeep::p) s[i] = p;
                if constexpr (KEEP == PKeep::x2_and_p) pf[i] = p, s[i] = x2;
                pr[j + 2 * h] = p;
            }
        }
        // P's registers (pr holds the same values; packing from them keeps the split forms' code as it was)
        const auto pack = [&](float a, float b, float c, float d) {
            pa[nt >> 1][2 * (nt & 1)] = pack2<BF16>(a, b);
            pa[nt >> 1][2 * (nt & 1) + 1] = pack2<BF16>(c, d);
        };
        if constexpr (KEEP == PKeep::p) pack(s[4 * nt], s[4 * nt + 1], s[4 * nt + 2], s[4 * nt + 3]);
        else if constexpr (KEEP == PKeep::x2_and_p) pack(pf[4 * nt], pf[4 * nt + 1], pf[4 * nt + 2], pf[4 * nt + 3]);
        else pack(pr[0], pr[1], pr[2], pr[3]);
    }
}

// Then, once dP is complete, without the entropy term: dS' = P·(c·acc − cr) in place of dp from P (pf): the
// value bwd_sm90_prepared_ds gives with e = 0.
template <int NS>
__device__ __forceinline__ void bwd_sm90_prepared_ds_of_p(const float (&pf)[NS], float (&dp)[NS], const float4* prep4, int lane) {
#pragma unroll
    for (int nt = 0; nt < NS / 4; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const float4 r = prep4[c_frag_col(4 * nt + j, lane)];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int i = 4 * nt + j + 2 * h;
                dp[i] = pf[i] * fmaf(r.z, dp[i], -r.w);
            }
        }
}

// Then, once dP is complete: dS' = P·(c·(acc + e·x2) − cr) in place of dp, from P (pf) and x2 (s): the
// value bwd_sm90_prepared_ds<MASK, true> gives (a masked key has P = 0, so dS' = 0 there as well).
template <int NS>
__device__ __forceinline__ void bwd_sm90_prepared_ds_from_p(const float (&x2)[NS], const float (&pf)[NS], float (&dp)[NS], const float4* prep4,
                                                            const float* prep_e, int lane) {
#pragma unroll
    for (int nt = 0; nt < NS / 4; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int col = c_frag_col(4 * nt + j, lane);
            const float4 r = prep4[col];
            const float e = prep_e[col];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int i = 4 * nt + j + 2 * h;
                dp[i] = pf[i] * fmaf(r.z, fmaf(e, x2[i], dp[i]), -r.w);
            }
        }
}

// Four 8×8 16-bit matrices from registers (thread lane holds row lane/4, columns 2·(lane%4), +1 of matrix m
// in r[m]) stored transposed: row j of matrix m in memory is its column j, at the address lane 8m + j gives.
__device__ __forceinline__ void stmatrix_x4_trans(std::uint32_t addr, const std::uint32_t (&r)[4]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]), "r"(r[1]), "r"(r[2]),
                 "r"(r[3])
                 : "memory");
}

// dSᵀ (this warp's 16 keys 16·wq + [0, 16) of warpgroup w's 64, packed as A operands: dsa[ks][m] holds keys
// lane/4 + 8·(m % 2), queries 16ks + 8·(m / 2) + 2·(lane % 4) + {0, 1}) → the dS tile at sDS: element
// (query q, key 64w + kl) at column block w, row q, 16-bit position kl % 8 of 16-byte chunk (kl / 8) ^ (q % 8).
// Lane 8m + j addresses query row 16ks + 8·(m / 2) + j, chunk 2·wq + m % 2 of its block.
template <int KS>
__device__ __forceinline__ void bwd_sm90_store_ds(std::uint32_t sDS, int w, int wq, int lane, const std::uint32_t (&dsa)[KS][4]) {
    constexpr int BM = BwdSm90Shape::BM;
    const int m = lane >> 3, j = lane & 7;
    const std::uint32_t a0 =
        sDS + std::uint32_t(w * BM * 128 + (8 * (m >> 1) + j) * 128 + (((2 * wq + (m & 1)) ^ j) << 4));
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) stmatrix_x4_trans(a0 + std::uint32_t(ks * 16 * 128), dsa[ks]);
}
#endif

} // namespace vmonarch::cuda::hopper
