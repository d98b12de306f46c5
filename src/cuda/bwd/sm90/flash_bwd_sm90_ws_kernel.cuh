// Internal: the Hopper (sm_90a) flash backward kernel, specialized schedule. The same products, operand
// layouts, masking and FlashBwdParams semantics as flash_bwd_sm90_kernel.cuh (spec §7.5 R-step, §7.2 dense
// recompute; the formulas are listed there), with the work split by role:
//   producer warpgroup (few registers, setmaxnreg; its warps 0–1 work, 2–3 leave): first the resident K (and V)
//     tile by TMA from one thread (the "kv" mbarrier counts its bytes; keys past len_k zero-filled), so that
//     the first query tiles' loads follow it at once instead of after it has arrived; then each query tile into a
//     STAGES-deep ring, its Q, dA, dY by TMA from one thread (BwdSm90Maps; the stage's "full" mbarrier
//     counts their bytes) and row r's operands by thread r < BM, which arrives once per tile; a stage is
//     refilled once its "empty" mbarrier says both consumer warpgroups are done with it;
//   two consumer warpgroups (the freed registers): keys [64w, 64w + 64) each, per query tile
//     Sᵀ, dPᵀ (wgmma ss) → P (registers, while the last dPᵀ product runs) → dV, Pᵀ·dA (wgmma rs) → dS
//     (registers, while those run) → dSᵀ·Q (wgmma rs, in flight while dS goes to shared memory) → dQ =
//     dS·K (wgmma ss, issued as soon as both halves of dS are there, behind dK and dV) → TMA reduce-adds
//     into dq (skipped when deterministic: the portable query-tile kernel adds dq then).
// No block barrier inside the query loop: the consumers meet on named barriers only where they share the
// dS tile (it is written once the other warpgroup has finished reading the previous one, and read once both
// halves are written), and the producer runs ahead by up to STAGES tiles.
// PREP (the prepared form, flash_bwd_sm90_rows.cuh): producer thread r < BM reads row r's raw operands with
// plain loads before it waits for the stage, writes the row's prepared scalars into the stage and arrives on
// the stage's full mbarrier (release; the consumers' wait acquires); without PREP it cp.asyncs the raw ones
// (cp.async.mbarrier.arrive). The consumers form P from them (one FFMA and one ex2), mask keys on the last
// key tile only and store dS by stmatrix.
#pragma once

#include <cstdint>

#include "cuda/bwd/sm90/flash_bwd_sm90_kernel.cuh" // shared helpers: row scalars, bulk reduce-adds, fences
#ifdef VMONARCH_HOPPER_DEVICE
#include "cuda/sm90/hopper_wgmma_rs.cuh"
#endif

namespace vmonarch::cuda::hopper {

struct BwdSm90WsShape {
    static constexpr int PRODUCER_THREADS = 128;
    static constexpr int CONSUMER_THREADS = 256;
    static constexpr int THREADS = PRODUCER_THREADS + CONSUMER_THREADS;
    // 128·24 + 256·240 = 384·168, what the block holds at launch (__launch_bounds__(384, 1)).
    static constexpr int PRODUCER_REGS = 24;
    static constexpr int CONSUMER_REGS = 240;
    // Named barriers (0 is the block barrier, used only before the roles split).
    static constexpr int BAR_DS_READY = 1;    // both dS halves written (256 consumer threads)
    static constexpr int BAR_DQ_TILE = 2;     // + w: warpgroup w's dQ tile written (its 128 threads)
    static constexpr int BAR_DS_FREE = 4;     // + w: warpgroup w has read the previous dS (arrive 128 + sync 128)
};

// The cooperative schedule's layout (flash_bwd_sm90_shape.cuh) plus the ring's mbarriers and the key tile's.
template <int D, bool HAS_DA, bool HAS_DY> struct BwdSm90WsLayout {
    using Base = BwdSm90Layout<D, HAS_DA, HAS_DY>;
    static constexpr int OFF_BARS = (Base::BYTES + 7) / 8 * 8; // full[STAGES], empty[STAGES], kv
    static constexpr int BYTES = OFF_BARS + (2 * BwdSm90Shape::STAGES + 1) * 8;
    static constexpr int SMEM = 1024 /*alignment slack*/ + BYTES;
    static_assert(SMEM <= 227 * 1024, "sm_90 shared memory");
};

#ifdef VMONARCH_HOPPER_DEVICE
// P = exp(x − lse) from the raw score qk, x = γ·qk, exactly as bwd_ds (flash_bwd_kernel.cuh) forms it: 0 for
// a masked key or row.
__device__ __forceinline__ float bwd_ws_p(float qk, const FlashBwdRowScalars& r, bool key_ok) {
    const float xl = key_ok ? fmaf(qk, r.gamma, -r.lse) : -INFINITY;
    return fast_exp2(xl * kLog2e);
}

// dV += Pᵀ·dY (with dY), dK' += Pᵀ·dA (with dA): wgmma rs from the P operand, one commit group.
template <bool BF16, int D, bool HAS_DA, bool HAS_DY, int NA, int NV, int KS>
__device__ __forceinline__ void bwd_ws_issue_p_products(float (&acc_k)[NA], float (&acc_v)[NV], const std::uint32_t (&pa)[KS][4],
                                                        std::uint32_t sDA, std::uint32_t sDY) {
    constexpr int BM = BwdSm90Shape::BM;
    wgmma_fence();
    if constexpr (HAS_DY) {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_v, pa[ks], desc_mn_major(sDY, BM, ks * 16));
    }
    if constexpr (HAS_DA) {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_k, pa[ks], desc_mn_major(sDA, BM, ks * 16));
    }
    wgmma_commit();
}

// This warp's rows of K_w (warpgroup cw's 64 keys of the resident K tile at sK, BN rows, 128-byte swizzle) as
// the A operands of the products K_w·Xᵀ, one per k16 slice of the head dim: the mma.sync A-fragment layout
// (lane l addresses key 16·wq + (l % 8) + 8·((l / 8) % 2), 16-byte chunk 2·kk + l / 16 of the row).
template <int D>
__device__ __forceinline__ void bwd_ws_load_k_frags(std::uint32_t (&kf)[D / 16][4], std::uint32_t sK, int cw, int wq, int lane) {
    const int r = 64 * cw + 16 * wq + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int c8 = 2 * kk + (lane >> 4);
        ldmatrix_x4(kf[kk], sK + std::uint32_t((c8 >> 3) * BwdSm90Shape::BN * 128 + r * 128 + (((c8 & 7) ^ (r & 7)) << 4)));
    }
}

// One arrival on the mbarrier once every cp.async this thread has issued so far has completed (the arrival
// is one of the barrier's expected count: .noinc).
__device__ __forceinline__ void cp_async_mbar_arrive(std::uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
#endif

// The forms a variant takes (the kernel's template parameters below; the launcher picks them the same way):
// SPLIT, P formed before dPᵀ is complete, so that dV and Pᵀ·dA run while dS is formed: needs the raw scores,
// dPᵀ and Pᵀ in registers at once besides dK and dV, too many with both values at d = 128. KREG with dA only
// (with dY as well it spills).
constexpr bool bwd_sm90_ws_split(int d, bool has_da, bool has_dy) { return d == 64 || !(has_da && has_dy); }
constexpr bool bwd_sm90_ws_kreg(bool has_da, bool has_dy) { return has_da && !has_dy; }

// KREG: K_w's fragments are loaded into registers once and the products with A = K_w (Sᵀ, and K_w·dAᵀ with dA)
// take them (wgmma rs): their A operand is not read from shared memory on every query tile.
// NO_DENT (the prepared form, split order, for problems without the entropy term): P, once formed, replaces
// the raw scores in their registers and dS is formed from it (no second exponential). With the entropy term
// and KREG's variant (dA only) the registers allow P in f32 beside the base-2 logits (again no second
// exponential); the other variants form P again for dS.
// DQ_BEHIND: a query tile's dQ, once complete, waits in registers (times s) and goes to the dQ tile and out by
// its TMA reduce-adds while the next tile's Sᵀ and dPᵀ run, instead of before they are issued.
template <bool BF16, int D, bool HAS_DA, bool HAS_DY, bool PREP, bool KREG = false, bool NO_DENT = false, bool DQ_BEHIND = false>
__global__ void __launch_bounds__(BwdSm90WsShape::THREADS, 1) flash_bwd_sm90_ws_kernel(const FlashBwdParams p, const __grid_constant__ BwdSm90Maps maps) {
#ifdef VMONARCH_HOPPER_DEVICE
    static_assert(D == 64 || D == 128);
    static_assert(HAS_DA || HAS_DY);
    using Shape = BwdSm90Shape;
    using WS = BwdSm90WsShape;
    using L = BwdSm90Layout<D, HAS_DA, HAS_DY>;
    using LW = BwdSm90WsLayout<D, HAS_DA, HAS_DY>;
    constexpr int BM = Shape::BM, BN = Shape::BN, STAGES = Shape::STAGES;
    constexpr int NS = BM / 2;  // Sᵀ / dPᵀ accumulator registers (m64n64)
    constexpr int KS = BM / 16; // k16 slices of the query reduction (dK, dV)
    constexpr int NA = D / 2;   // dK / dV accumulator registers (m64nD)
    constexpr bool SPLIT = bwd_sm90_ws_split(D, HAS_DA, HAS_DY);
    static_assert(!NO_DENT || (PREP && SPLIT));
    constexpr bool P_BESIDE = PREP && KREG && !NO_DENT; // P in f32 beside x2 (the entropy term, dA only)

    constexpr bool kBroadcastWarp = bwd_sm90_broadcast_warp(D, HAS_DA, HAS_DY, false);
    extern __shared__ unsigned char smem_raw[];
    const std::uint32_t raw = smem_addr(smem_raw);
    const std::uint32_t base = (raw + 1023u) & ~1023u;
    const std::uint32_t sK = base, sV = base + L::OFF_V, sDS = base + L::OFF_DS;
    const float* const srows = reinterpret_cast<const float*>(smem_raw + (base - raw) + L::OFF_ROWS);
    const std::uint32_t srows_addr = base + L::OFF_ROWS;
    [[maybe_unused]] unsigned char* const ds_bytes = smem_raw + (base - raw) + L::OFF_DS;
    unsigned char* const prep_bytes = smem_raw + (base - raw) + L::OFF_PREP;
    const auto prep4_at = [&](int s) { return reinterpret_cast<float4*>(prep_bytes + s * L::PREP_STAGE); };
    const auto prep_e_at = [&](int s) { return reinterpret_cast<float*>(prep_bytes + s * L::PREP_STAGE + BM * 16); };
    const std::uint32_t bars = base + LW::OFF_BARS;
    const auto full_bar = [&](int s) { return bars + std::uint32_t(s) * 8u; };
    const auto empty_bar = [&](int s) { return bars + std::uint32_t(STAGES + s) * 8u; };
    const std::uint32_t kv_bar = bars + std::uint32_t(2 * STAGES) * 8u;
    const auto stage = [&](int s) { return base + L::OFF_STAGES + std::uint32_t(s) * L::STAGE; };

    const int tid = threadIdx.x, warp = kBroadcastWarp ? warp_index_uniform() : tid >> 5, lane = tid & 31;
    const int wg = warp >> 2, wq = warp & 3;
    const int f = blockIdx.y / p.heads, h = blockIdx.y % p.heads, b = blockIdx.z;
    const std::int64_t k0 = std::int64_t(blockIdx.x) * BN;
    const int n_q = int((p.len_q + BM - 1) / BM);

    // One thread: the barriers (the ring's and the key tile's).
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full_bar(s), 1 + BM); // the TMA thread's expect_tx, then one arrival per query row
            mbar_init(empty_bar(s), WS::CONSUMER_THREADS);
        }
        mbar_init(kv_bar, 1);
        fence_barrier_init();
    }
    __syncthreads();

    if (wg == 0) {
        // ---- producer: query tile t into stage t % STAGES, once its previous tile (t − STAGES) is released.
        // Thread 0 loads Q, dA, dY by TMA (the full barrier counts their bytes; rows past len_q are zero-
        // filled); thread r < BM brings row r's operands (PREP: read into registers before the wait, then
        // the prepared scalars stored; otherwise cp.async of the raw ones) and arrives once per tile.
        setmaxnreg_dec<WS::PRODUCER_REGS>();
        if (tid >= BM) return;
        if (tid == 0) {
            mbar_arrive_expect_tx(kv_bar, std::uint32_t((HAS_DY ? 2 : 1) * L::KTILE));
#pragma unroll
            for (int c = 0; c < D / 64; ++c) {
                tma_load_row_tile(sK + c * BN * 128, &maps.k, kv_bar, maps.ck, c * 64, int(k0), f, h, b);
                if constexpr (HAS_DY) tma_load_row_tile(sV + c * BN * 128, &maps.v, kv_bar, maps.cv, c * 64, int(k0), f, h, b);
            }
            prefetch_tensor_map(&maps.q);
            if constexpr (HAS_DA) prefetch_tensor_map(&maps.da);
            if constexpr (HAS_DY) prefetch_tensor_map(&maps.dy);
        }
        const FlashBwdRows rows = bwd_rows(p, b, h, f);
        for (int t = 0; t < n_q; ++t) {
            const int s = t % STAGES;
            const std::int64_t i = std::int64_t(t) * BM + tid;
            const bool ok = i < p.len_q;
            [[maybe_unused]] float lse = 0.f, rs = 0.f, drow = 0.f, dent = 0.f;
            if constexpr (PREP) {
                lse = ok ? rows.lse[i * p.lse.sr] : 0.f;
                rs = ok && rows.rs ? rows.rs[i * p.rs.sr] : 0.f;
                drow = ok ? rows.drow[i * p.drow.sr] : 0.f;
                dent = ok && rows.dent ? rows.dent[i * p.dent.sr] : 0.f;
            }
            if (t >= STAGES) mbar_wait(empty_bar(s), std::uint32_t((t / STAGES - 1) & 1));
            const std::uint32_t st = stage(s);
            if (tid == 0) {
                mbar_arrive_expect_tx(full_bar(s), std::uint32_t(L::STAGE));
#pragma unroll
                for (int c = 0; c < D / 64; ++c) {
                    tma_load_row_tile(st + c * BM * 128, &maps.q, full_bar(s), maps.cq, c * 64, t * BM, f, h, b);
                    if constexpr (HAS_DA)
                        tma_load_row_tile(st + L::OFF_DA + c * BM * 128, &maps.da, full_bar(s), maps.cda, c * 64, t * BM, f, h, b);
                    if constexpr (HAS_DY)
                        tma_load_row_tile(st + L::OFF_DY + c * BM * 128, &maps.dy, full_bar(s), maps.cdy, c * 64, t * BM, f, h, b);
                }
            }
            if constexpr (PREP) {
                float4 pr4;
                float pe;
                bwd_sm90_prepared_row<HAS_DA, HAS_DY>(p, lse, rs, drow, dent, ok, rows.rs != nullptr, pr4, pe);
                prep4_at(s)[tid] = pr4;
                prep_e_at(s)[tid] = pe;
                mbar_arrive(full_bar(s));
            } else {
                const std::uint32_t dst = srows_addr + std::uint32_t(s * L::ROWS_STAGE + tid) * 4u;
                cp_async_4(dst, ok ? rows.lse + i * p.lse.sr : rows.lse, ok ? 4 : 0);
                if (rows.rs) cp_async_4(dst + BM * 4, ok ? rows.rs + i * p.rs.sr : rows.rs, ok ? 4 : 0);
                cp_async_4(dst + 2 * BM * 4, ok ? rows.drow + i * p.drow.sr : rows.drow, ok ? 4 : 0);
                if (rows.dent) cp_async_4(dst + 3 * BM * 4, ok ? rows.dent + i * p.dent.sr : rows.dent, ok ? 4 : 0);
                cp_async_mbar_arrive(full_bar(s));
            }
        }
        cp_async_wait<0>(); // nothing in flight when the producer leaves
        return;
    }

    // ---- consumers: warpgroup cw owns keys [64·cw, 64·cw + 64) of the tile.
    setmaxnreg_inc<WS::CONSUMER_REGS>();
    mbar_wait(kv_bar, 0u); // the key tile (TMA writes, read by wgmma and ldmatrix as they are)
    const int cw = wg - 1;
    unsigned char* const sdq = smem_raw + ((base - raw) + L::OFF_DQ + cw * L::DQ_WG_BYTES);
    const std::uint32_t sdq_addr = base + L::OFF_DQ + std::uint32_t(cw) * L::DQ_WG_BYTES;
    [[maybe_unused]] const bool has_rs = p.rs.ptr != nullptr, has_dent = p.dent.ptr != nullptr;

    // This thread's keys (rows of Sᵀ): 64·cw + 16·wq + lane/4 + 8r of the tile.
    const int krow = 64 * cw + 16 * wq + (lane >> 2);
    bool key_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) key_ok[r] = k0 + krow + 8 * r < p.len_k;
    [[maybe_unused]] const bool full_keys = k0 + BN <= p.len_k; // PREP: only the last key tile masks keys

    float acc_k[NA], acc_v[HAS_DY ? NA : 1];
#pragma unroll
    for (int i = 0; i < NA; ++i) acc_k[i] = 0.f;
#pragma unroll
    for (int i = 0; i < (HAS_DY ? NA : 1); ++i) acc_v[i] = 0.f;

    // With dA, dK and dQ are accumulated divided by s and multiplied by out_s = s when added.
    [[maybe_unused]] const float inv_s = HAS_DA ? 1.f / p.scale : 1.f;
    const float out_s = HAS_DA ? p.scale : 1.f;
    const std::uint32_t sKw = sK + std::uint32_t(cw) * 64u * 128u, sVw = sV + std::uint32_t(cw) * 64u * 128u;
    [[maybe_unused]] std::uint32_t kf[KREG ? D / 16 : 1][4];
    if constexpr (KREG) bwd_ws_load_k_frags<D>(kf, sK, cw, wq, lane);
    // The products with A = K_w: Sᵀ = K_w·Qᵀ and K_w·dAᵀ (zeroed at kk = 0).
    const auto k_w_times = [&](float (&acc)[NS], std::uint32_t sX) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            if constexpr (KREG) WgmmaRs<BM, BF16>::rs(acc, kf[kk], desc_k_major(sX, BM, kk * 16), kk != 0);
            else Wgmma<BM, BF16>::ss(acc, desc_k_major(sKw, BN, kk * 16), desc_k_major(sX, BM, kk * 16), kk != 0);
        }
    };

    // dQ of tile t (times s with dA) → this warpgroup's dQ tile → dq by its TMA reduce-adds (one thread); the
    // reduce-adds of the tile before have been read out of it (bulk_wait_read before the last dS barrier).
    const auto dq_out = [&](int t, const float (&v)[32], float mult) {
        bwd_sm90_dq_store(sdq, v, mult, wq, lane);
        named_bar_sync(WS::BAR_DQ_TILE + cw, 128);
        if ((tid & 127) == 0) bwd_sm90_dq_reduce(maps, sdq_addr, D == 128 ? 64 * cw : 0, t * BM, f, h, b);
    };
    [[maybe_unused]] float dq_done[DQ_BEHIND ? 32 : 1]; // DQ_BEHIND: the previous tile's dQ times s

    // The other warpgroup may write its dS half of tile 0 at once: this one reads no dS before that.
    if (!p.deterministic) named_bar_arrive(WS::BAR_DS_FREE + cw, WS::CONSUMER_THREADS);

    for (int t = 0; t < n_q; ++t) {
        const int s_idx = t % STAGES;
        mbar_wait(full_bar(s_idx), std::uint32_t((t / STAGES) & 1)); // TMA writes: wgmma (async proxy) reads them as they are
        const std::uint32_t sQ = stage(s_idx), sDA = sQ + L::OFF_DA, sDY = sQ + L::OFF_DY;
        [[maybe_unused]] const float* rv = srows + s_idx * L::ROWS_STAGE;
        [[maybe_unused]] const float4* prep4 = prep4_at(s_idx);
        [[maybe_unused]] const float* prep_e = prep_e_at(s_idx);

        // Sᵀ = K_w·Qᵀ; dPᵀ = s·K_w·dAᵀ (+ V_w·dYᵀ) without the entropy term. With SPLIT each elementwise phase
        // runs while the next products are on the tensor cores:
        //   with dA and dY:  K_w·dAᵀ | Sᵀ (while dPᵀ is scaled) | V_w·dYᵀ (while P is formed) | dV, Pᵀ·dA
        //                    (while dS is formed) | dK += dSᵀ·Q;
        //   with one value:  Sᵀ | dPᵀ (while P is formed) | Pᵀ·… (while dS is formed) | dK += dSᵀ·Q;
        // without, P and dS are formed in one pass once Sᵀ and dPᵀ are complete.
        float s[NS], dp[NS];
        wgmma_fence();
        if constexpr (HAS_DA && HAS_DY) {
            k_w_times(dp, sDA);
            wgmma_commit();
        }
        k_w_times(s, sQ);
        wgmma_commit();
        if constexpr (HAS_DA && HAS_DY) {
            wgmma_wait<1>(); // K_w·dAᵀ
            bwd_sm90_fence(dp);
#pragma unroll
            for (int i = 0; i < NS; ++i) dp[i] *= p.scale;
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) Wgmma<BM, BF16>::ss(dp, desc_k_major(sVw, BN, kk * 16), desc_k_major(sDY, BM, kk * 16), 1);
            wgmma_commit();
        } else {
            if constexpr (HAS_DA) {
                k_w_times(dp, sDA);
            } else {
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) Wgmma<BM, BF16>::ss(dp, desc_k_major(sVw, BN, kk * 16), desc_k_major(sDY, BM, kk * 16), kk != 0);
            }
            wgmma_commit();
        }
        if constexpr (DQ_BEHIND) {
            if (!p.deterministic && t > 0) dq_out(t - 1, dq_done, 1.f);
        }
        std::uint32_t pa[KS][4], dsa[KS][4];
        if constexpr (SPLIT) {
            wgmma_wait<1>(); // Sᵀ (the last dPᵀ product still runs)
            bwd_sm90_fence(s);

            // P → the A operand pa (s keeps the raw scores unless NO_DENT or P_BESIDE: the dS phase forms the
            // same P again), the query (column) scalars from the stage's raw row operands. Registers 4nt + {0, 1}
            // and 4nt + {2, 3} are the pairs pa[nt / 2][2·(nt % 2) + {0, 1}].
            [[maybe_unused]] float pf[P_BESIDE ? NS : 1];
            if constexpr (PREP) { // NO_DENT: P replaces the raw scores; P_BESIDE: x2 does, P beside it
                constexpr PKeep KEEP = NO_DENT ? PKeep::p : P_BESIDE ? PKeep::x2_and_p : PKeep::scores;
                if (full_keys) bwd_sm90_prepared_p_form<BF16, false, KEEP>(s, pf, pa, prep4, key_ok, lane);
                else bwd_sm90_prepared_p_form<BF16, true, KEEP>(s, pf, pa, prep4, key_ok, lane);
            } else {
#pragma unroll
                for (int nt = 0; nt < NS / 4; ++nt) {
                    float pr[4];
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int col = c_frag_col(4 * nt + j, lane);
                        const FlashBwdRowScalars r = bwd_sm90_row_scalars(p, rv, col, std::int64_t(t) * BM + col, has_rs, has_dent);
#pragma unroll
                        for (int e = j; e < 4; e += 2) pr[e] = bwd_ws_p(s[4 * nt + e], r, key_ok[c_frag_half(e)]);
                    }
                    pa[nt >> 1][2 * (nt & 1)] = pack2<BF16>(pr[0], pr[1]);
                    pa[nt >> 1][2 * (nt & 1) + 1] = pack2<BF16>(pr[2], pr[3]);
                }
            }
            bwd_ws_issue_p_products<BF16, D, HAS_DA, HAS_DY>(acc_k, acc_v, pa, sDA, sDY);
            wgmma_wait<1>(); // dPᵀ
            bwd_sm90_fence(dp);
            if constexpr (HAS_DA && !HAS_DY && !PREP) { // PREP: the prepared scalars carry the 1/s
#pragma unroll
                for (int i = 0; i < NS; ++i) dp[i] *= p.scale;
            }

            // dS (in dp; PREP: dS' = dS/s with dA), P formed as above.
            if constexpr (PREP && NO_DENT) {
                bwd_sm90_prepared_ds_of_p(s, dp, prep4, lane);
            } else if constexpr (P_BESIDE) {
                bwd_sm90_prepared_ds_from_p(s, pf, dp, prep4, prep_e, lane);
            } else if constexpr (PREP) {
                if (!full_keys) bwd_sm90_prepared_ds_only<true, true>(s, dp, prep4, prep_e, key_ok, lane);
                else bwd_sm90_prepared_ds_only<false, true>(s, dp, prep4, prep_e, key_ok, lane);
            } else {
#pragma unroll
                for (int nt = 0; nt < NS / 4; ++nt)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int col = c_frag_col(4 * nt + j, lane);
                        const FlashBwdRowScalars r = bwd_sm90_row_scalars(p, rv, col, std::int64_t(t) * BM + col, has_rs, has_dent);
#pragma unroll
                        for (int e = j; e < 4; e += 2) {
                            float pr;
                            dp[4 * nt + e] = bwd_ds(s[4 * nt + e], dp[4 * nt + e], r, key_ok[c_frag_half(e)], pr);
                        }
                    }
            }
        } else {
            // Both values at d = 128: no registers for P and the raw scores at once; P and dS in one pass.
            wgmma_wait<0>();
            bwd_sm90_fence(s);
            bwd_sm90_fence(dp);
            if constexpr (PREP) {
                if (!full_keys) bwd_sm90_prepared_p_ds<true, true>(s, dp, prep4, prep_e, key_ok, lane);
                else bwd_sm90_prepared_p_ds<false, true>(s, dp, prep4, prep_e, key_ok, lane);
            } else {
#pragma unroll
                for (int nt = 0; nt < NS / 4; ++nt)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int col = c_frag_col(4 * nt + j, lane);
                        const FlashBwdRowScalars r = bwd_sm90_row_scalars(p, rv, col, std::int64_t(t) * BM + col, has_rs, has_dent);
#pragma unroll
                        for (int e = j; e < 4; e += 2) {
                            float pr;
                            dp[4 * nt + e] = bwd_ds(s[4 * nt + e], dp[4 * nt + e], r, key_ok[c_frag_half(e)], pr);
                            s[4 * nt + e] = pr;
                        }
                    }
            }
            pack_c_to_a<BF16, KS>(s, pa);
            bwd_ws_issue_p_products<BF16, D, HAS_DA, HAS_DY>(acc_k, acc_v, pa, sDA, sDY);
        }

        // dK' += (dS/s)ᵀ·Q.
        if constexpr (HAS_DA && !PREP) {
#pragma unroll
            for (int i = 0; i < NS; ++i) dp[i] *= inv_s;
        }
        pack_c_to_a<BF16, KS>(dp, dsa);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) Wgmma<D, BF16>::rs_tb(acc_k, dsa[ks], desc_mn_major(sQ, BM, ks * 16));
        wgmma_commit();

        if (!p.deterministic) {
            // The other warpgroup's dQ of the previous tile has read the dS tile: write this warpgroup's half
            // (element (query q, key 64·cw + kl) at column block cw, row q, chunk (kl / 8) ^ (q % 8)).
            named_bar_sync(WS::BAR_DS_FREE + (1 - cw), WS::CONSUMER_THREADS);
            if constexpr (PREP) {
                bwd_sm90_store_ds<KS>(sDS, cw, wq, lane, dsa);
            } else {
#pragma unroll
                for (int ks = 0; ks < KS; ++ks)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = 8 * ks + 2 * e;
                        const int q = c_frag_col(i, lane), kl = 16 * wq + (lane >> 2) + 8 * c_frag_half(i);
                        const std::uint32_t v = dsa[ks][e];
#pragma unroll
                        for (int hf = 0; hf < 2; ++hf) {
                            const int qq = q + hf;
                            const int off = cw * BM * 128 + qq * 128 + (((kl >> 3) ^ (qq & 7)) << 4) + (kl & 7) * 2;
                            *reinterpret_cast<std::uint16_t*>(ds_bytes + off) = std::uint16_t(hf ? v >> 16 : v & 0xffffu);
                        }
                    }
            }
            bulk_wait_read(); // the previous tile's dQ rows have left this warpgroup's dQ tile
            fence_proxy_async_smem();
            named_bar_sync(WS::BAR_DS_READY, WS::CONSUMER_THREADS);

            // dQ = dS·K, queued behind dK and dV (their A registers stay pinned until the wait).
            float dq[32];
            wgmma_fence();
            if constexpr (D == 128) {
#pragma unroll
                for (int ks = 0; ks < BN / 16; ++ks)
                    WgmmaSsTb<64, BF16>::ss(dq, desc_k_major(sDS, BM, ks * 16), desc_mn_major(sK + std::uint32_t(cw) * BN * 128u, BN, ks * 16),
                                            ks != 0);
            } else {
#pragma unroll
                for (int ks = 0; ks < 4; ++ks)
                    WgmmaSsTb<64, BF16>::ss(dq, desc_k_major(sDS, BM, 64 * cw + ks * 16), desc_mn_major(sK, BN, 64 * cw + ks * 16), ks != 0);
            }
            wgmma_commit();
            wgmma_wait<0>();
            bwd_sm90_fence(dq);
            bwd_sm90_fence(acc_k);
            bwd_sm90_fence(acc_v);
            bwd_sm90_fence(pa);
            bwd_sm90_fence(dsa);
            mbar_arrive(empty_bar(s_idx));
            if (t + 1 < n_q) named_bar_arrive(WS::BAR_DS_FREE + cw, WS::CONSUMER_THREADS);

            if constexpr (DQ_BEHIND) {
                // Into registers of their own by a multiply ptxas keeps (out_s is a runtime value): read under
                // the next tile's wgmma, the registers the dQ wgmma defined would make ptxas wait for it (C7517).
#pragma unroll
                for (int i = 0; i < 32; ++i) asm volatile("mul.rn.f32 %0, %1, %2;\n" : "=f"(dq_done[i]) : "f"(dq[i]), "f"(out_s));
            } else {
                dq_out(t, dq, out_s);
            }
        } else {
            wgmma_wait<0>();
            bwd_sm90_fence(acc_k);
            bwd_sm90_fence(acc_v);
            bwd_sm90_fence(pa);
            bwd_sm90_fence(dsa);
            mbar_arrive(empty_bar(s_idx));
        }
    }

    if constexpr (DQ_BEHIND) {
        if (!p.deterministic && n_q > 0) dq_out(n_q - 1, dq_done, 1.f);
    }
    bwd_sm90_add_dkdv<NA, sizeof(acc_v) / sizeof(float), HAS_DY>(p, b, h, f, k0 + krow, key_ok, acc_k, acc_v, out_s, lane);
    // The dQ tile's last reduce-adds have read it, so the block may leave: their writes to dq are complete by
    // the end of the grid, before any later launch on the stream reads dq.
    bulk_wait_read();
#endif
}

} // namespace vmonarch::cuda::hopper
