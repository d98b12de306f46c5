// Internal: the Hopper (sm_90a) flash backward kernel, cooperative schedule in the prepared form
// (flash_bwd_sm90_rows.cuh), pipelined so that less of each query tile runs with the tensor cores idle.
// Same products, operand layouts, shared-memory layout, masking and FlashBwdParams semantics as
// flash_bwd_sm90_kernel.cuh (spec §7.5 R-step, §7.2 dense recompute; the formulas are listed there), the
// same arithmetic on every value (dk and dv bitwise those of the cooperative prepared form); only the
// order in which a warpgroup issues its work changes:
//   - LOADS_BEHIND (all but both values at d = 128, where the registers do not allow it: 56 bytes spilled):
//     the next query tile's cp.async loads are issued after this tile's Sᵀ and dPᵀ products, so their
//     address arithmetic runs while the tensor cores work;
//   - DQ_BEHIND (the same variants): dQ = dS·K is
//     queued behind dK and dV instead of issued once they have completed, so the tensor cores do not drain
//     between them;
//   - SPLIT (one value, and at d = 128 only dA: the registers again): Sᵀ is issued before dPᵀ; P is formed
//     as soon as Sᵀ is complete (the base-2 logits kept in place of the raw scores, P in f32 beside them)
//     and the P product (dV += Pᵀ·dY or dK' += Pᵀ·dA) is issued before dPᵀ is waited for, so that it runs
//     while dS is formed from the kept P and logits (no second exponential);
//   - DQ_OUT_BEHIND (the SPLIT variants): dQ, once complete, is kept in registers (times s) and goes to
//     shared memory and out by its TMA reduce-adds while the next tile's Sᵀ and dPᵀ run.
// Nothing stays in flight across the query loop's back edge: with a wgmma group in flight there, ptxas
// serializes every wgmma of the kernel (C7514), so dQ's own drain is not overlapped with the next tile.
// Every commit group of a warpgroup completes in order; the comments at each wgmma_wait name the groups
// still allowed in flight.
#pragma once

#include <cstdint>

#include "cuda/bwd/sm90/flash_bwd_sm90_kernel.cuh" // loads, bulk reduce-adds, fences, the shape

namespace vmonarch::cuda::hopper {

// Which overlaps the registers allow (f32 accumulators: dK and dV D / 2 each, Sᵀ and dPᵀ 32 each, dQ 32).
template <int D, bool HAS_DA, bool HAS_DY> struct BwdSm90PipeForm {
    static constexpr bool LOADS_BEHIND = !(D == 128 && HAS_DA && HAS_DY);
    static constexpr bool DQ_BEHIND = LOADS_BEHIND;
    static constexpr bool SPLIT = !(HAS_DA && HAS_DY) && (D == 64 || !HAS_DY);
    static constexpr bool DQ_OUT_BEHIND = SPLIT;
};

template <bool BF16, int D, bool HAS_DA, bool HAS_DY>
__global__ void __launch_bounds__(BwdSm90Shape::THREADS, 1) flash_bwd_sm90_pipe_kernel(const FlashBwdParams p, const __grid_constant__ BwdSm90Maps maps) {
#ifdef VMONARCH_HOPPER_DEVICE
    static_assert(D == 64 || D == 128);
    static_assert(HAS_DA || HAS_DY);
    using Shape = BwdSm90Shape;
    using L = BwdSm90Layout<D, HAS_DA, HAS_DY>;
    using Form = BwdSm90PipeForm<D, HAS_DA, HAS_DY>;
    using T = typename ElemType<BF16>::T;
    constexpr int BM = Shape::BM, BN = Shape::BN;
    constexpr int NS = BM / 2;  // Sᵀ / dPᵀ accumulator registers (m64n64)
    constexpr int KS = BM / 16; // k16 slices of the query reduction (dK, dV)
    constexpr int NA = D / 2;   // dK / dV accumulator registers (m64nD)
    constexpr bool BOTH = HAS_DA && HAS_DY;
    constexpr bool LOADS_BEHIND = Form::LOADS_BEHIND, DQ_BEHIND = Form::DQ_BEHIND, SPLIT = Form::SPLIT;
    constexpr bool DQ_OUT_BEHIND = Form::DQ_OUT_BEHIND;

    constexpr bool kBroadcastWarp = bwd_sm90_broadcast_warp(D, HAS_DA, HAS_DY, true);
    extern __shared__ unsigned char smem_raw[];
    const std::uint32_t raw = smem_addr(smem_raw);
    const std::uint32_t base = (raw + 1023u) & ~1023u;
    const std::uint32_t sK = base, sV = base + L::OFF_V, sDS = base + L::OFF_DS;
    const float* const srows = reinterpret_cast<const float*>(smem_raw + (base - raw) + L::OFF_ROWS);
    const std::uint32_t srows_addr = base + L::OFF_ROWS;
    const unsigned dq_wg = kBroadcastWarp ? unsigned(warp_index_uniform() >> 2) : threadIdx.x >> 7; // this warpgroup's dQ tile
    unsigned char* const sdq = smem_raw + ((base - raw) + L::OFF_DQ + dq_wg * L::DQ_WG_BYTES);
    const std::uint32_t sdq_addr = base + L::OFF_DQ + dq_wg * L::DQ_WG_BYTES;
    unsigned char* const prep_bytes = smem_raw + (base - raw) + L::OFF_PREP;
    const auto prep4_at = [&](int t) { return reinterpret_cast<float4*>(prep_bytes + (t % Shape::STAGES) * L::PREP_STAGE); };
    const auto prep_e_at = [&](int t) { return reinterpret_cast<float*>(prep_bytes + (t % Shape::STAGES) * L::PREP_STAGE + BM * 16); };

    const int tid = threadIdx.x, warp = kBroadcastWarp ? warp_index_uniform() : tid >> 5, lane = tid & 31;
    const int wg = warp >> 2, wq = warp & 3;
    const int f = blockIdx.y / p.heads, h = blockIdx.y % p.heads, b = blockIdx.z;
    const std::int64_t k0 = std::int64_t(blockIdx.x) * BN;

    const T* qb = view_row<const T>(p.q, b, h, f);
    const T* kb = view_row<const T>(p.k, b, h, f);
    const T* vb = HAS_DY ? view_row<const T>(p.v, b, h, f) : nullptr;
    const T* dab = HAS_DA ? view_row<const T>(p.da, b, h, f) : nullptr;
    const T* dyb = HAS_DY ? view_row<const T>(p.dy, b, h, f) : nullptr;
    const FlashBwdRows rows = bwd_rows(p, b, h, f);
    const int n_q = int((p.len_q + BM - 1) / BM);

    const auto stage = [&](int t) { return base + L::OFF_STAGES + std::uint32_t(t % Shape::STAGES) * L::STAGE; };
    const bool has_rs = rows.rs != nullptr, has_dent = rows.dent != nullptr;
    // One query tile: the raw row operands in their own commit group (their thread waits for them alone and
    // prepares the row), then Q (, dA, dY) in a second group; zero-filled past len_q.
    const auto load_query_tile = [&](int t) {
        const std::uint32_t st = stage(t);
        const std::int64_t q0 = std::int64_t(t) * BM;
        if (tid < BM) {
            const std::int64_t i = q0 + tid;
            const bool ok = i < p.len_q;
            const std::uint32_t dst = srows_addr + std::uint32_t((t % Shape::STAGES) * L::ROWS_STAGE + tid) * 4u;
            cp_async_4(dst, ok ? rows.lse + i * p.lse.sr : rows.lse, ok ? 4 : 0);
            if (has_rs) cp_async_4(dst + BM * 4, ok ? rows.rs + i * p.rs.sr : rows.rs, ok ? 4 : 0);
            cp_async_4(dst + 2 * BM * 4, ok ? rows.drow + i * p.drow.sr : rows.drow, ok ? 4 : 0);
            if (has_dent) cp_async_4(dst + 3 * BM * 4, ok ? rows.dent + i * p.dent.sr : rows.dent, ok ? 4 : 0);
        }
        cp_async_commit();
        bwd_sm90_load_rows<D, BM>(st, qb, p.q.sr, q0, p.len_q, tid);
        if constexpr (HAS_DA) bwd_sm90_load_rows<D, BM>(st + L::OFF_DA, dab, p.da.sr, q0, p.len_q, tid);
        if constexpr (HAS_DY) bwd_sm90_load_rows<D, BM>(st + L::OFF_DY, dyb, p.dy.sr, q0, p.len_q, tid);
    };
    // Thread r < BM prepares row r of tile t from the raw operands it loaded (their commit group is the one
    // before the last), visible to every thread after the next block barrier.
    const auto prepare_rows = [&](int t) {
        if (tid < BM) {
            cp_async_wait<1>();
            const float* rv = srows + (t % Shape::STAGES) * L::ROWS_STAGE;
            bwd_sm90_prepare_row<HAS_DA, HAS_DY>(p, rv, tid, std::int64_t(t) * BM + tid < p.len_q, has_rs, has_dent, prep4_at(t), prep_e_at(t));
        }
    };

    load_query_tile(0);
    bwd_sm90_load_rows<D, BN>(sK, kb, p.k.sr, k0, p.len_k, tid);
    if constexpr (HAS_DY) bwd_sm90_load_rows<D, BN>(sV, vb, p.v.sr, k0, p.len_k, tid);
    cp_async_commit();
    prepare_rows(0);
    const bool full_keys = k0 + BN <= p.len_k; // only the last key tile of a segment has keys past len_k

    // This thread's keys (rows of Sᵀ): 64·wg + 16·wq + lane/4 + 8r of the tile.
    const int krow = 64 * wg + 16 * wq + (lane >> 2);
    bool key_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) key_ok[r] = k0 + krow + 8 * r < p.len_k;

    float acc_k[NA], acc_v[HAS_DY ? NA : 1];
#pragma unroll
    for (int i = 0; i < NA; ++i) acc_k[i] = 0.f;
#pragma unroll
    for (int i = 0; i < (HAS_DY ? NA : 1); ++i) acc_v[i] = 0.f;

    // With dA, dK and dQ are accumulated divided by s and multiplied by out_s = s when added.
    const float out_s = HAS_DA ? p.scale : 1.f;
    const std::uint32_t sKw = sK + std::uint32_t(wg) * 64u * 128u, sVw = sV + std::uint32_t(wg) * 64u * 128u;

    // dQ of a query tile: this warpgroup's m64n64 part (d = 128: head-dim columns [64w, 64w + 64) over all
    // 128 keys; d = 64: every column over its own 64 keys), then (dq_out) into its dQ tile and out by its TMA
    // reduce-adds. The previous reduce-adds out of the dQ tile have been read (the issuing thread's
    // bulk_wait_read, then a block barrier) before dq_out runs.
    float dq[32];
    [[maybe_unused]] float dq_done[DQ_OUT_BEHIND ? 32 : 1]; // DQ_OUT_BEHIND: the previous tile's dQ (times s)
    [[maybe_unused]] const float dq_mult = HAS_DA ? p.scale : float(!p.deterministic); // used when not deterministic
    const auto issue_dq = [&] {
        wgmma_fence();
        if constexpr (D == 128) {
#pragma unroll
            for (int ks = 0; ks < BN / 16; ++ks)
                WgmmaSsTb<64, BF16>::ss(dq, desc_k_major(sDS, BM, ks * 16), desc_mn_major(sK + std::uint32_t(wg) * BN * 128u, BN, ks * 16), ks != 0);
        } else {
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
                WgmmaSsTb<64, BF16>::ss(dq, desc_k_major(sDS, BM, 64 * wg + ks * 16), desc_mn_major(sK, BN, 64 * wg + ks * 16), ks != 0);
        }
        wgmma_commit();
    };
    const auto dq_out = [&](int t, const float (&v)[32], float mult) {
        bwd_sm90_dq_store(sdq, v, mult, wq, lane);
        named_bar_sync(1 + wg, 128);
        if ((tid & 127) == 0) bwd_sm90_dq_reduce(maps, sdq_addr, D == 128 ? 64 * wg : 0, t * BM, f, h, b);
    };

    for (int t = 0; t < n_q; ++t) {
        // Tile t's loads and prepared rows are the only cp.async work in flight, no wgmma is. After the
        // barrier every thread is done with tile t − 1's stage, dS tile and prepared rows.
        cp_async_wait<0>();
        fence_proxy_async_smem();
        __syncthreads();
        if (!LOADS_BEHIND && t + 1 < n_q) {
            load_query_tile(t + 1);
            cp_async_commit();
        }
        const std::uint32_t sQ = stage(t), sDA = sQ + L::OFF_DA, sDY = sQ + L::OFF_DY;
        const float4* prep4 = prep4_at(t);
        const float* prep_e = prep_e_at(t);

        // Sᵀ = K_w·Qᵀ and dPᵀ = s·K_w·dAᵀ + V_w·dYᵀ (without the entropy term; with dA only, ⟨da, k⟩ unscaled:
        // the prepared scalars carry the 1/s). With both values K_w·dAᵀ goes first and is scaled by s while
        // Sᵀ runs; with one value Sᵀ goes first (SPLIT forms P while dPᵀ runs).
        float s[NS], dp[NS];
        wgmma_fence();
        if constexpr (BOTH) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) Wgmma<BM, BF16>::ss(dp, desc_k_major(sKw, BN, kk * 16), desc_k_major(sDA, BM, kk * 16), kk != 0);
            wgmma_commit();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) Wgmma<BM, BF16>::ss(s, desc_k_major(sKw, BN, kk * 16), desc_k_major(sQ, BM, kk * 16), kk != 0);
            wgmma_commit();
            wgmma_wait<1>(); // K_w·dAᵀ; Sᵀ may run
            bwd_sm90_fence(dp);
#pragma unroll
            for (int i = 0; i < NS; ++i) dp[i] *= p.scale;
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) Wgmma<BM, BF16>::ss(dp, desc_k_major(sVw, BN, kk * 16), desc_k_major(sDY, BM, kk * 16), 1);
            wgmma_commit();
        } else {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) Wgmma<BM, BF16>::ss(s, desc_k_major(sKw, BN, kk * 16), desc_k_major(sQ, BM, kk * 16), kk != 0);
            wgmma_commit();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                if constexpr (HAS_DA) Wgmma<BM, BF16>::ss(dp, desc_k_major(sKw, BN, kk * 16), desc_k_major(sDA, BM, kk * 16), kk != 0);
                else Wgmma<BM, BF16>::ss(dp, desc_k_major(sVw, BN, kk * 16), desc_k_major(sDY, BM, kk * 16), kk != 0);
            }
            wgmma_commit();
        }

        // LOADS_BEHIND: the next tile's loads, while these products run (its stage held tile t − 1).
        if (LOADS_BEHIND && t + 1 < n_q) {
            load_query_tile(t + 1);
            cp_async_commit();
        }
        // DQ_OUT_BEHIND: the previous tile's dQ (complete, in registers) → dq while these products run.
        if constexpr (DQ_OUT_BEHIND) {
            if (!p.deterministic && t > 0) dq_out(t - 1, dq_done, 1.f);
        }

        std::uint32_t pa[KS][4], dsa[KS][4];
        if constexpr (SPLIT) {
            // P as soon as Sᵀ is complete, the P product issued before dPᵀ is waited for, dS from the kept P.
            float pf[NS];
            wgmma_wait<1>(); // Sᵀ; dPᵀ may run
            bwd_sm90_fence(s);
            if (!full_keys) bwd_sm90_prepared_p_form<BF16, true, PKeep::x2_and_p>(s, pf, pa, prep4, key_ok, lane);
            else bwd_sm90_prepared_p_form<BF16, false, PKeep::x2_and_p>(s, pf, pa, prep4, key_ok, lane);
            wgmma_fence();
            if constexpr (HAS_DY) {
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_v, pa[ks], desc_mn_major(sDY, BM, ks * 16));
            } else {
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_k, pa[ks], desc_mn_major(sDA, BM, ks * 16));
            }
            wgmma_commit();
            wgmma_wait<1>(); // dPᵀ; the P product may run
            bwd_sm90_fence(dp);
            bwd_sm90_prepared_ds_from_p(s, pf, dp, prep4, prep_e, lane);
            pack_c_to_a<BF16, KS>(dp, dsa);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_k, dsa[ks], desc_mn_major(sQ, BM, ks * 16));
            wgmma_commit();
        } else {
            wgmma_wait<0>();
            bwd_sm90_fence(s);
            bwd_sm90_fence(dp);
            if (!full_keys) bwd_sm90_prepared_p_ds<true, true>(s, dp, prep4, prep_e, key_ok, lane);
            else bwd_sm90_prepared_p_ds<false, true>(s, dp, prep4, prep_e, key_ok, lane);
            pack_c_to_a<BF16, KS>(s, pa);
            pack_c_to_a<BF16, KS>(dp, dsa);
            // dV += Pᵀ·dY;  dK' += Pᵀ·dA + (dS/s)ᵀ·Q (the order of the cooperative prepared form).
            wgmma_fence();
            if constexpr (HAS_DY) {
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_v, pa[ks], desc_mn_major(sDY, BM, ks * 16));
            }
            if constexpr (HAS_DA) {
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_k, pa[ks], desc_mn_major(sDA, BM, ks * 16));
            }
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_k, dsa[ks], desc_mn_major(sQ, BM, ks * 16));
            wgmma_commit();
        }

        // The next tile's rows, prepared while dK and dV run.
        if (t + 1 < n_q) prepare_rows(t + 1);

        if (!p.deterministic) {
            // dSᵀ → the dS tile, then dQ = dS·K (DQ_BEHIND: queued behind dK and dV).
            bwd_sm90_store_ds<KS>(sDS, wg, wq, lane, dsa);
            bulk_wait_read(); // the previous tile's reduce-adds have left this thread's dQ tile rows
            fence_proxy_async_smem();
            __syncthreads();
            if constexpr (!DQ_BEHIND) {
                wgmma_wait<0>(); // dK, dV: their A registers are free after this
                bwd_sm90_fence(acc_k);
                bwd_sm90_fence(acc_v);
                bwd_sm90_fence(pa);
                bwd_sm90_fence(dsa);
            }
            issue_dq();
            wgmma_wait<0>();
            bwd_sm90_fence(acc_k);
            bwd_sm90_fence(acc_v);
            bwd_sm90_fence(pa);
            bwd_sm90_fence(dsa);
            bwd_sm90_fence(dq);
            if constexpr (DQ_OUT_BEHIND) {
                // dQ times s (with dA) into registers of their own, by a multiply ptxas keeps (dq_mult is a
                // runtime value, 1 without dA): read under the next tile's wgmma, the registers the dQ
                // wgmma defined would make ptxas wait for that wgmma first (C7517).
#pragma unroll
                for (int i = 0; i < 32; ++i) asm volatile("mul.rn.f32 %0, %1, %2;\n" : "=f"(dq_done[i]) : "f"(dq[i]), "f"(dq_mult));
            } else {
                dq_out(t, dq, out_s);
            }
        } else {
            wgmma_wait<0>();
            bwd_sm90_fence(acc_k);
            bwd_sm90_fence(acc_v);
            bwd_sm90_fence(pa);
            bwd_sm90_fence(dsa);
        }
    }

    // DQ_OUT_BEHIND: the last tile's dQ (the reduce-adds out of the dQ tile were read before the last
    // barrier).
    if constexpr (DQ_OUT_BEHIND) {
        if (!p.deterministic && n_q > 0) dq_out(n_q - 1, dq_done, 1.f);
    }
    bwd_sm90_add_dkdv<NA, sizeof(acc_v) / sizeof(float), HAS_DY>(p, b, h, f, k0 + krow, key_ok, acc_k, acc_v, out_s, lane);
    // The dQ tile's last reduce-adds have read it, so the block may leave: their writes to dq are complete by
    // the end of the grid, before any later launch on the stream reads dq.
    bulk_wait_read();
#endif
}

} // namespace vmonarch::cuda::hopper
