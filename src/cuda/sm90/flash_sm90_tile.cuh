// Internal: what an sm90 consumer warpgroup does with one key tile: issue S = Q·Kᵀ and acc += P·[K | V] on
// wgmma, and turn S into probabilities with the online statistics of docs/algorithm.md §4
// (common/online_softmax.cuh, RoundedMath: the same bits whatever the compiler would fuse in each
// schedule). The schedules that order these pieces are in flash_sm90_consumer.cuh.
//
// The warpgroup owns query rows [q0 + 64·wg, q0 + 64·wg + 64) of its current query tile (several in turn
// when a block has several); thread (warp wq, lane) holds rows
// 16·wq + lane/4 and + 8 of them, in the m64nN accumulator layout (hopper_wgmma.cuh).
#pragma once

#include <cfloat>
#include <cstdint>

#include "cuda/common/kernel_params.hpp"
#include "cuda/common/mma_fragments.cuh"
#include "cuda/common/online_softmax.cuh"
#include "cuda/common/poly_exp2.cuh"
#include "cuda/sm90/flash_sm90_shape.cuh"

namespace vmonarch::cuda::hopper {

#ifdef VMONARCH_HOPPER_DEVICE
template <bool BF16, int D, bool ROW_SCALE, bool K_VALUE, bool V_VALUE, int BN>
struct Sm90Tile {
    using Ring = SmemRing<D, V_VALUE, BN>;
    using Stats = OnlineStats<K_VALUE, RoundedMath>;
    using Sums = RowSums<K_VALUE, RoundedMath>;
    static constexpr int NS = BN / 2; // S accumulator registers per thread (m64nBN)
    static constexpr int NO = D / 2;  // O / A accumulator registers per thread (m64nD)
    static constexpr int KS = BN / 16; // k-slices of P·V
    // Every kPolyEvery-th exponential of a full tile on the FMA pipe (poly_exp2) instead of MUFU, 0 = none. At
    // d = 64 with one value operand MUFU is as busy as the tensor cores (one ex2 per 4·d = 256 MMA FLOPs);
    // one in 8 measured best there on an H200 (bench/RESULTS.md: R-step 1 and the recompute 3–4 % faster at
    // HW = 5400), while at d = 128 or with both values (more MMA per ex2) every fraction was slower.
    static constexpr int kPolyEvery = (D == 64 && K_VALUE != V_VALUE) ? 8 : 0;
    static constexpr int kPolyStride = kPolyEvery > 0 ? kPolyEvery : 1;
    // Accumulators of P·[K | V]: A = P·K in the first NO registers, O = P·V in the next NO (with both values,
    // one m64n(2d)k16 per k-slice computes both: the V tile lies right after the K tile in the stage, so the
    // two tiles' 64-column blocks are equally spaced and one MN-major descriptor spans them).
    static constexpr int NACC = (K_VALUE ? NO : 0) + (V_VALUE ? NO : 0);

    const FlashParams& p;
    const Ring& sm;
    const int wg, lane;
    int q0, len_q;                 // the query tile's first row; len_q: rows of the tile's view from q0 on that exist
    std::uint32_t sQwg;            // this warpgroup's 64 rows inside each column block of Q
    int row[2];                    // this thread's two rows, relative to q0
    float mult[2];                 // base-2 logit per unit of ⟨q, k⟩ (positive: the host checks)
    float acc[NACC];
    Stats st;
    int ring0 = 0; // ring position of this query tile's key tile 0 (SmemRing::keys_stay: 0 for every tile)

    // The ring position of key tile n: ring0 + n where a block's key tiles may stream through the ring once per
    // query tile (d = 64, own second Q slot), else n (d = 128: the code of one query tile per long range).
    __device__ __forceinline__ int ring(int n) const {
        if constexpr (hopper_own_q_slot(D)) return ring0 + n;
        else return n;
    }

    // q_smem: the Q slot holding this block's query tile q0 (SmemRing::q_slot).
    __device__ __forceinline__ Sm90Tile(const FlashParams& p_, const Ring& sm_, int warp, int lane_, int q0_, int b, int h, int f,
                                        std::uint32_t q_smem)
        : p(p_), sm(sm_), wg(warp >> 2), lane(lane_), q0(q0_), len_q(int(p_.len_q - q0_)), sQwg(q_smem + (warp >> 2) * 64 * 128) {
        const int wq = warp & 3;
        // The same multipliers either way; each head dim keeps the instruction stream it was timed with on the
        // H200 (bench/RESULTS.md: d = 64 with the joined query tiles, d = 128 as before them).
        if constexpr (D == 64) {
#pragma unroll
            for (int r = 0; r < 2; ++r) row[r] = wg * 64 + wq * 16 + (lane >> 2) + 8 * r;
            start_query_tile(q0_, q_smem, b, h, f);
        } else {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                row[r] = wg * 64 + wq * 16 + (lane >> 2) + 8 * r;
                mult[r] = p.qk_scale * kLog2e;
                if constexpr (ROW_SCALE) { // docs/algorithm.md §3.1: x = s·⟨aR, K⟩ / max(cR, clamp)
                    const float* rs = view_row<const float>(p.rs, b, h, f);
                    float m = kLog2e; // rows past len_q: any positive multiplier (never stored)
                    if (row[r] < len_q) {
                        float c = fmaxf(rs[(std::int64_t(q0) + row[r]) * p.rs.sr], p.clamp);
                        c = c > 0.f ? c : FLT_MIN;
                        m = p.scale * kLog2e / c;
                    }
                    mult[r] = m;
                }
            }
#pragma unroll
            for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
        }
    }
    // The logit multipliers of this thread's rows of the query tile starting at row q: s·log₂e, or with a row
    // scale s·log₂e / max(cR, clamp) (docs/algorithm.md §3.1: x = s·⟨aR, K⟩ / max(cR, clamp)); rows past
    // len_q take any positive multiplier (they are never stored).
    __device__ __forceinline__ void multipliers(int q, int b, int h, int f, float (&m)[2]) const {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            m[r] = p.qk_scale * kLog2e;
            if constexpr (ROW_SCALE) {
                const float* rs = view_row<const float>(p.rs, b, h, f);
                m[r] = kLog2e;
                if (row[r] < int(p.len_q - q)) {
                    float c = fmaxf(rs[(std::int64_t(q) + row[r]) * p.rs.sr], p.clamp);
                    c = c > 0.f ? c : FLT_MIN;
                    m[r] = p.scale * kLog2e / c;
                }
            }
        }
    }
    // Make the query tile starting at row q (its Q in slot q_smem) this warpgroup's tile, with fresh
    // statistics and zero accumulators; mult from multipliers() (next_mult: already loaded for it).
    __device__ __forceinline__ void reset_query_tile(int q, std::uint32_t q_smem, const float (&next_mult)[2]) {
        q0 = q;
        len_q = int(p.len_q - q);
        sQwg = wg_rows(q_smem);
        mult[0] = next_mult[0];
        mult[1] = next_mult[1];
        st = Stats{};
#pragma unroll
        for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
    }
    // This warpgroup's 64 rows inside the Q slot at q_smem.
    __device__ __forceinline__ std::uint32_t wg_rows(std::uint32_t q_smem) const { return q_smem + wg * 64 * 128; }
    __device__ __forceinline__ void start_query_tile(int q, std::uint32_t q_smem, int b, int h, int f) {
        float m[2];
        multipliers(q, b, h, f, m);
        reset_query_tile(q, q_smem, m);
    }
    __device__ __forceinline__ float (&acc_k())[NO] { return *reinterpret_cast<float(*)[NO]>(&acc[0]); }
    __device__ __forceinline__ float (&acc_v())[NO] { return *reinterpret_cast<float(*)[NO]>(&acc[K_VALUE ? NO : 0]); }

    // S = Q·Kᵀ of key tile n (64 × BN per warpgroup) into sacc, reduction over the head dim in 16-element
    // steps; the first step overwrites (scale-d = 0), so sacc needs no zeroing. Issued, not waited for.
    __device__ __forceinline__ void issue_s(float (&sacc)[NS], int n) { issue_s_at(sacc, ring(n), sQwg); }
    // The same for the key tile at ring position g against the Q rows at sQ (wg_rows of a Q slot).
    __device__ __forceinline__ void issue_s_at(float (&sacc)[NS], int g, std::uint32_t sQ) {
        const std::uint32_t sK = sm.stage(g);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            // Q block: BM rows per column block (this warpgroup starts 64 rows in); K block: BN rows.
            const std::uint64_t da = desc_k_major(sQ, HopperShape::BM, kk * 16);
            const std::uint64_t db = desc_k_major(sK, BN, kk * 16);
            Wgmma<BN, BF16>::ss(sacc, da, db, kk != 0);
        }
    }
    // acc += P·V and/or P·K of key tile n (V / K tiles read MN-major: their rows are the reduction
    // dimension). Issued, not waited for.
    __device__ __forceinline__ void issue_pv(const std::uint32_t (&pa)[KS][4], int n) {
        const std::uint32_t sK = sm.stage(ring(n));
        const std::uint32_t sV = sK + Ring::TILE_BYTES;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            if constexpr (K_VALUE && V_VALUE) Wgmma<2 * D, BF16>::rs_tb(acc, pa[ks], desc_mn_major(sK, BN, ks * 16));
            else if constexpr (V_VALUE) Wgmma<D, BF16>::rs_tb(acc_v(), pa[ks], desc_mn_major(sV, BN, ks * 16));
            else Wgmma<D, BF16>::rs_tb(acc_k(), pa[ks], desc_mn_major(sK, BN, ks * 16));
        }
    }
    // S of tile n into sacc, waited for (with every earlier wgmma of this warpgroup).
    __device__ __forceinline__ void compute_s(float (&sacc)[NS], int n) {
        wgmma_fence();
        issue_s(sacc, n);
        wgmma_commit();
        wgmma_wait<0>();
        fence_s(sacc);
    }
    __device__ __forceinline__ static void fence_s(float (&sacc)[NS]) {
#pragma unroll
        for (int i = 0; i < NS; ++i) reg_fence(sacc[i]);
    }
    __device__ __forceinline__ void fence_acc() {
#pragma unroll
        for (int i = 0; i < NACC; ++i) reg_fence(acc[i]);
    }
    // P's registers stay untouched until the P·V that reads them has completed (wgmma reads registers
    // asynchronously).
    __device__ __forceinline__ static void fence_p(std::uint32_t (&pa)[KS][4]) {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks)
#pragma unroll
            for (int e = 0; e < 4; ++e) reg_fence(pa[ks][e]);
    }
    // P as the A operand of m64nDk16 (the mma.sync A-fragment order, common/mma_fragments.cuh).
    __device__ __forceinline__ static void pack_p(const float (&sacc)[NS], std::uint32_t (&pa)[KS][4]) { pack_c_to_a<BF16, KS>(sacc, pa); }

    // A tile with no masked key: p = 2^(s·mult − m) with nm = −m per row (one FFMA and one ex2 per score),
    // left in sacc; Σp and, with K as a value, Σp·(x − m) added to sums.
    __device__ __forceinline__ void exp_tile(float (&sacc)[NS], const float (&nm)[2], Sums& sums) const {
#pragma unroll
        for (int i = 0; i < NS; ++i) {
            const int r = c_frag_half(i);
            const float dlt = __fmaf_rn(sacc[i], mult[r], nm[r]);
            const float pr = (kPolyEvery > 0 && i % kPolyStride == kPolyStride - 1) ? poly_exp2(dlt) : fast_exp2(dlt);
            sums.add(r, pr, dlt);
            sacc[i] = pr;
        }
    }
    // Exact update (§4.1) of tile n: scale S to base-2 logits, mask the key tail, update the statistics and
    // leave the probabilities in sacc; al = the factor the accumulators still need. mult > 0, so the row
    // max is taken on the raw scores: round(max(s)·mult) = max(round(s·mult)), the same m as scaling first;
    // each element then takes one FFMA (s·mult − m). Only the last key tile of a row view needs masking;
    // the other tiles take a branch with no mask and no clamp (their logits are finite, and an underflowed
    // p = 0 adds 0·dlt = 0 to the entropy sum, as the clamped form does). The FFMA leaves the max element a
    // rounding-sized residue instead of 0 (the entropy of a one-hot row is then ~1e-7·|x|, not 0); the
    // last tile keeps the exact form, as every row's only tile when len_k ≤ BN.
    __device__ __forceinline__ void softmax(float (&sacc)[NS], int n, float (&al)[2]) {
        const std::int64_t kv0 = std::int64_t(n) * BN;
        const bool tail = kv0 + BN > p.len_k;
        if (tail) {
            const int kv_left = int(p.len_k - kv0);
#pragma unroll
            for (int i = 0; i < NS; ++i)
                if (c_frag_col(i, lane) >= kv_left) sacc[i] = -INFINITY;
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int i = 0; i < NS; ++i) mx[c_frag_half(i)] = fmaxf(mx[c_frag_half(i)], sacc[i]);
#pragma unroll
        for (int r = 0; r < 2; ++r) mx[r] = quad_max(mx[r]);
        float nmu[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mu;
            st.move_offset(r, __fmul_rn(mx[r], mult[r]), mu, al[r]);
            nmu[r] = -mu;
        }
        if (tail) {
#pragma unroll
            for (int i = 0; i < NS; ++i) {
                const int r = c_frag_half(i);
                // two roundings here (x = s·mult, then x − m): the max element gives exactly 0, so a row
                // with one key (len_k = 1) has entropy 0 exactly. −∞ where masked.
                const float dlt = __fadd_rn(__fmul_rn(sacc[i], mult[r]), nmu[r]);
                const float pr = fast_exp2(dlt);
                st.sum.add_maskable(r, pr, dlt);
                sacc[i] = pr;
            }
        } else {
            exp_tile(sacc, nmu, st.sum);
        }
    }
    // Stale-offset update (§4.2) for a full tile after the first: exponentiated against the running m and
    // kept if every thread's partial row sums stay within 2^8; then m, and with it the accumulators' scale,
    // does not move, and the row max, its shuffles and the rescale are skipped. Otherwise (a logit more
    // than 8 binary orders above the running max, or a non-finite sum in any thread of the warpgroup) the
    // statistics are left untouched and false is returned: the caller recomputes S and runs softmax().
    __device__ __forceinline__ bool softmax_stale(float (&sacc)[NS]) {
        Sums part;
        const float nm[2] = {-st.m[0], -st.m[1]};
        exp_tile(sacc, nm, part);
        // Warpgroup-wide (named barrier 3 + wg): a failed tile recomputes S, which all four warps issue.
        if (!named_bar_all(3 + wg, 128, part.within_stale_bound())) return false;
        st.absorb(part);
        return true;
    }
    // Skipped when the whole warp's factors are 1 (the row maxima did not move): x·1 = x, same bits.
    __device__ __forceinline__ void rescale(const float (&al)[2]) {
        if (__all_sync(0xffffffffu, al[0] == 1.f && al[1] == 1.f)) return;
#pragma unroll
        for (int i = 0; i < NACC; ++i) acc[i] *= al[c_frag_half(i)];
    }
};
#endif

} // namespace vmonarch::cuda::hopper
