// Internal: the Hopper (sm_90a) flash forward kernel. It computes what flash_sm80_kernel computes (same
// FlashParams, same variants, the online statistics of docs/algorithm.md §4 from common/online_softmax.cuh,
// here with every rounding spelled out: RoundedMath; the epilogue of common/flash_epilogue.cuh), with
//   - wgmma.mma_async for S = Q·Kᵀ (A and B from shared memory) and for O += P·V, A += P·K (P from
//     registers, V / K from shared memory read MN-major), accumulators in registers;
//   - TMA tile loads (cp.async.bulk.tensor, 128-byte swizzle) completing on mbarriers;
//   - warp specialisation: warps 0–7 are two consumer warpgroups of 64 query rows each (setmaxnreg to 240
//     registers), warps 8–11 the producer warpgroup (24 registers) whose first thread streams Q once and
//     K (and V) tiles through an STAGES-deep ring (full / empty mbarriers).
// Rows past len_k arrive as zeros from TMA and are masked to −∞ before the softmax; rows past len_q are
// computed on zeros and never stored.
#pragma once

#include <cfloat>
#include <cstdint>

#include <cuda.h> // CUtensorMap (a plain 128-byte struct; no driver library is linked)

#include "cuda/common/flash_epilogue.cuh"
#include "cuda/common/kernel_params.hpp"
#include "cuda/common/mma_fragments.cuh"
#include "cuda/common/mma_ptx.cuh"
#include "cuda/common/online_softmax.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define VMONARCH_HOPPER_DEVICE 1
#include "cuda/sm90/hopper_ptx.cuh"
#include "cuda/sm90/hopper_wgmma.cuh"
#endif

namespace vmonarch::cuda::hopper {

struct HopperShape {
    static constexpr int CONSUMER_WGS = 2;
    static constexpr int BM = 64 * CONSUMER_WGS;           // query rows per block
    static constexpr int THREADS = 128 * (CONSUMER_WGS + 1);  // + one producer warpgroup (one thread issues TMA)
    // Registers per thread after setmaxnreg: 240·256 + 24·128 ≤ 64 K.
    static constexpr int CONSUMER_REGS = 240, PRODUCER_REGS = 24;
    static constexpr int SMEM_LIMIT = 227 * 1024;           // opt-in limit of sm_90
};

// Key rows per tile. Narrow: 128, except K and V both as values at d = 128 (two 64×128 f32 accumulators
// per warpgroup), which takes 64 to keep S, P and both accumulators within the 240 registers. Wide (d = 128,
// K as a value): 176 with K alone (FlashAttention-3's width for one value operand: S 88 + accumulator 64 +
// P 44 registers), 80 with K and V (S 40 + 128 + P 20). The V-only kernel (dense, recompute) stays at 128:
// its stage holds a K and a V tile, and at 176 keys only two stages fit, which starves the pipelined
// schedule (30% slower, bench/RESULTS.md). Which width a call gets: flash_sm90.cu (choose_wide).
constexpr int hopper_block_n(int head_dim, bool k_value, bool v_value, bool wide) {
    if (head_dim != 128 || !k_value) return 128;
    if (v_value) return wide ? 80 : 64;
    return wide ? 176 : 128;
}
constexpr int hopper_q_bytes(int head_dim) { return HopperShape::BM * head_dim * 2; }
constexpr int hopper_stage_bytes(int head_dim, bool v_value, int bn) { return (v_value ? 2 : 1) * bn * head_dim * 2; }
constexpr int hopper_stages(int head_dim, bool v_value, int bn) {
    const int room = HopperShape::SMEM_LIMIT - 1024 /*alignment slack*/ - 256 /*barriers*/ - hopper_q_bytes(head_dim);
    const int n = room / hopper_stage_bytes(head_dim, v_value, bn);
    return n > 4 ? 4 : n;
}
constexpr int hopper_smem_bytes(int head_dim, bool v_value, int bn) {
    return 1024 + hopper_q_bytes(head_dim) + hopper_stages(head_dim, v_value, bn) * hopper_stage_bytes(head_dim, v_value, bn) + 256;
}

// Where the (row, segment, head, batch) coordinates of a row view go among the tensor map's dims 1–4
// (dim 0 is the head dim). The host may permute them; see flash_sm90.cu.
struct TmaCoords {
    signed char row = 1, seg = 2, head = 3, batch = 4;
};

struct HopperArgs {
    TmaCoords cq, ck, cv;
    bool stale_max = true; // softmax_stale allowed (VMONARCH_HOPPER_STALE_MAX=0 turns it off: the A/B switch)
};

#ifdef VMONARCH_HOPPER_DEVICE
__device__ __forceinline__ void tma_load_row_tile(std::uint32_t dst, const CUtensorMap* map, std::uint32_t bar, TmaCoords c,
                                                  int col, int row, int f, int h, int b) {
    int x[5] = {col, 0, 0, 0, 0};
    // Compile-time indices only (the select chain keeps the array in registers).
#pragma unroll
    for (int i = 1; i < 5; ++i) x[i] = c.row == i ? row : c.seg == i ? f : c.head == i ? h : b;
    tma_load_5d(dst, map, bar, x[0], x[1], x[2], x[3], x[4]);
}
#endif

// MODE: 0 = one tile at a time, 1 = intra-warpgroup pipelining (S of tile n + 1 overlaps the
// softmax … P·V of tile n), 2 = 1 plus ping-pong of the two consumer warpgroups' GEMM issue (named barriers).
template <bool BF16, int D, bool ROW_SCALE, bool K_VALUE, bool V_VALUE, int BN, int MODE>
__global__ void __launch_bounds__(HopperShape::THREADS, 1)
    flash_sm90_kernel(const FlashParams p, const HopperArgs args, const __grid_constant__ CUtensorMap tm_q,
                        const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v) {
#ifdef VMONARCH_HOPPER_DEVICE
    using Stats = OnlineStats<K_VALUE, RoundedMath>;
    using Sums = RowSums<K_VALUE, RoundedMath>;
    constexpr int BM = HopperShape::BM;
    constexpr int STAGES = hopper_stages(D, V_VALUE, BN);
    constexpr int Q_BYTES = hopper_q_bytes(D);
    constexpr int TILE_BYTES = BN * D * 2; // one K or V tile
    constexpr int STAGE_BYTES = hopper_stage_bytes(D, V_VALUE, BN);
    constexpr int CB = D / 64;             // 64-element column blocks of a row
    constexpr int NS = BN / 2;             // S accumulator registers per thread (m64nBN)
    constexpr int NO = D / 2;              // O / A accumulator registers per thread (m64nD)
    constexpr int KS = BN / 16;            // k-slices of P·V
    constexpr float NEG_INF = -INFINITY;
    static_assert(STAGES >= 2, "shared memory too small for two stages");
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static_assert(BN % 16 == 0 && BN <= 256, "key tile: whole k16 slices of P·V, one TMA box");

    extern __shared__ unsigned char smem_raw[];
    const std::uint32_t raw = smem_addr(smem_raw);
    const std::uint32_t sQ = (raw + 1023u) & ~1023u; // 1024-byte aligned for the 128-byte swizzle
    const std::uint32_t sStages = sQ + Q_BYTES;
    const std::uint32_t sBar = sStages + STAGES * STAGE_BYTES;
    // barriers: full[STAGES], empty[STAGES], q
    auto full_bar = [&](int s) { return sBar + 8u * std::uint32_t(s); };
    auto empty_bar = [&](int s) { return sBar + 8u * std::uint32_t(STAGES + s); };
    const std::uint32_t q_bar = sBar + 8u * std::uint32_t(2 * STAGES);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int f = blockIdx.y / p.heads, h = blockIdx.y % p.heads, b = blockIdx.z;
    const int q0 = int(blockIdx.x) * BM;
    const int n_tiles = int((p.len_k + BN - 1) / BN);

    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full_bar(s), 1);
            mbar_init(empty_bar(s), 4 * HopperShape::CONSUMER_WGS); // one arrival per consumer warp
        }
        mbar_init(q_bar, 1);
        fence_barrier_init();
    }
    __syncthreads();

    if (warp >= 4 * HopperShape::CONSUMER_WGS) {
        // ---------------- producer warpgroup: one thread issues every TMA load ----------------
        setmaxnreg_dec<HopperShape::PRODUCER_REGS>();
        if (warp == 4 * HopperShape::CONSUMER_WGS && lane == 0) {
            prefetch_tensor_map(&tm_q);
            prefetch_tensor_map(&tm_k);
            if constexpr (V_VALUE) prefetch_tensor_map(&tm_v);
            mbar_arrive_expect_tx(q_bar, Q_BYTES);
#pragma unroll
            for (int c = 0; c < CB; ++c) tma_load_row_tile(sQ + c * BM * 128, &tm_q, q_bar, args.cq, c * 64, q0, f, h, b);
            for (int n = 0; n < n_tiles; ++n) {
                const int s = n % STAGES;
                if (n >= STAGES) mbar_wait(empty_bar(s), std::uint32_t((n / STAGES) - 1) & 1u);
                const std::uint32_t sK = sStages + s * STAGE_BYTES;
                mbar_arrive_expect_tx(full_bar(s), STAGE_BYTES);
#pragma unroll
                for (int c = 0; c < CB; ++c) {
                    tma_load_row_tile(sK + c * BN * 128, &tm_k, full_bar(s), args.ck, c * 64, n * BN, f, h, b);
                    if constexpr (V_VALUE)
                        tma_load_row_tile(sK + TILE_BYTES + c * BN * 128, &tm_v, full_bar(s), args.cv, c * 64, n * BN, f, h, b);
                }
            }
        }
    } else {
    // ---------------- consumers: warpgroup wg owns query rows [q0 + 64·wg, q0 + 64·wg + 64) ----------------
    setmaxnreg_inc<HopperShape::CONSUMER_REGS>();
    const int wg = warp >> 2, wq = warp & 3;
    const int len_q = int(p.len_q - q0); // rows of this block that exist
    int row[2];                          // this thread's two rows, relative to q0
    float mult[2];
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

    // Accumulators of P·[K | V]: A = P·K in the first NO registers, O = P·V in the next NO (with both values,
    // one m64n(2d)k16 per k-slice computes both: the V tile lies right after the K tile in the stage, so the
    // two tiles' 64-column blocks are equally spaced and one MN-major descriptor spans them).
    constexpr int NACC = (K_VALUE ? NO : 0) + (V_VALUE ? NO : 0);
    float acc[NACC];
    float(&acc_k)[NO] = *reinterpret_cast<float(*)[NO]>(&acc[0]);
    float(&acc_v)[NO] = *reinterpret_cast<float(*)[NO]>(&acc[K_VALUE ? NO : 0]);
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
    Stats st;

    const std::uint32_t sQwg = sQ + wg * 64 * 128; // this warpgroup's 64 rows inside each column block
    mbar_wait(q_bar, 0);

    // S = Q·Kᵀ of key tile n (64 × BN per warpgroup) into sacc, reduction over the head dim in 16-element
    // steps; the first step overwrites (scale-d = 0), so sacc needs no zeroing. Issued, not waited for.
    auto issue_s = [&](float (&sacc)[NS], int n) {
        const std::uint32_t sK = sStages + (n % STAGES) * STAGE_BYTES;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            // Q block: BM rows per column block (this warpgroup starts 64 rows in); K block: BN rows.
            const std::uint64_t da = desc_k_major(sQwg, BM, kk * 16);
            const std::uint64_t db = desc_k_major(sK, BN, kk * 16);
            Wgmma<BN, BF16>::ss(sacc, da, db, kk != 0);
        }
    };
    // acc += P·V and/or P·K of key tile n (V / K tiles read MN-major: their rows are the reduction
    // dimension). Issued, not waited for.
    auto issue_pv = [&](const std::uint32_t (&pa)[KS][4], int n) {
        const std::uint32_t sK = sStages + (n % STAGES) * STAGE_BYTES;
        const std::uint32_t sV = sK + TILE_BYTES;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            if constexpr (K_VALUE && V_VALUE) Wgmma<2 * D, BF16>::rs_tb(acc, pa[ks], desc_mn_major(sK, BN, ks * 16));
            else if constexpr (V_VALUE) Wgmma<D, BF16>::rs_tb(acc_v, pa[ks], desc_mn_major(sV, BN, ks * 16));
            else Wgmma<D, BF16>::rs_tb(acc_k, pa[ks], desc_mn_major(sK, BN, ks * 16));
        }
    };
    auto fence_acc = [&] {
#pragma unroll
        for (int i = 0; i < NACC; ++i) reg_fence(acc[i]);
    };
    // A tile with no masked key: p = 2^(s·mult − m) with nm = −m per row (one FFMA and one ex2 per score), left
    // in sacc; Σp and, with K as a value, Σp·(x − m) added to sums.
    auto exp_tile = [&](float (&sacc)[NS], const float (&nm)[2], Sums& sums) {
#pragma unroll
        for (int i = 0; i < NS; ++i) {
            const int r = c_frag_half(i);
            const float dlt = __fmaf_rn(sacc[i], mult[r], nm[r]);
            const float pr = fast_exp2(dlt);
            sums.add(r, pr, dlt);
            sacc[i] = pr;
        }
    };
    // Scale S of tile n to base-2 logits, mask the key tail, update the online statistics (as
    // flash_sm80_kernel) and leave the probabilities in sacc; al = the factor the accumulators still need.
    // mult > 0 (the host sends only positive scales here), so the row max is taken on the raw scores:
    // round(max(s)·mult) = max(round(s·mult)), the same m as scaling first; each element then takes one
    // FFMA (s·mult − m). Only the last key tile of a row view needs masking; the other tiles take a
    // branch with no mask and no clamp (their logits are finite, and an underflowed p = 0 adds 0·dlt = 0
    // to the entropy sum, as the clamped form does). The FFMA leaves the max element a rounding-sized
    // residue instead of 0 (the entropy of a one-hot row is then ~1e-7·|x|, not 0); the last tile keeps
    // the exact form, as every row's only tile when len_k ≤ BN.
    auto softmax = [&](float (&sacc)[NS], int n, float (&al)[2]) {
        const std::int64_t kv0 = std::int64_t(n) * BN;
        const bool tail = kv0 + BN > p.len_k;
        if (tail) {
            const int kv_left = int(p.len_k - kv0);
#pragma unroll
            for (int i = 0; i < NS; ++i)
                if (c_frag_col(i, lane) >= kv_left) sacc[i] = NEG_INF;
        }
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int i = 0; i < NS; ++i) mx[c_frag_half(i)] = fmaxf(mx[c_frag_half(i)], sacc[i]);
        // explicit roundings in the statistics (RoundedMath): the same bits whatever the compiler would
        // fuse in each schedule
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
                // two roundings here (x = s·mult, then x − m): the max element gives exactly 0, so
                // a row with one key (len_k = 1) has entropy 0 exactly. −∞ where masked.
                const float dlt = __fadd_rn(__fmul_rn(sacc[i], mult[r]), nmu[r]);
                const float pr = fast_exp2(dlt);
                st.sum.add_maskable(r, pr, dlt);
                sacc[i] = pr;
            }
        } else {
            exp_tile(sacc, nmu, st.sum);
        }
    };
    // The same statistics without the row maximum, for a full tile after the first (docs/algorithm.md §4.2: the identities
    // hold for any offset m: ent and lse cancel it; only the range of p = 2^(x − m) needs m near the max).
    // The tile is exponentiated against the running m, and kept if every thread's partial row sums stay
    // within 2^8 (every p ≤ 256: in range for f16 P, and l, e and the accumulators stay far from overflow):
    // then m, and with it the accumulators' scale, does not move, and the row max, its shuffles and the
    // rescale are skipped. Otherwise (a logit more than 8 binary orders above the running max, or a
    // non-finite sum in any thread of the warpgroup) the statistics are left untouched and false is returned:
    // the caller recomputes S and runs softmax(). The partial sums are formed per tile, then added to l and e.
    auto softmax_stale = [&](float (&sacc)[NS]) -> bool {
        Sums part;
        const float nm[2] = {-st.m[0], -st.m[1]};
        exp_tile(sacc, nm, part);
        // Warpgroup-wide (named barrier 3 + wg): a failed tile recomputes S, which all four warps issue.
        if (!named_bar_all(3 + wg, 128, part.within_stale_bound())) return false;
        st.absorb(part);
        return true;
    };
    // Full tiles after the first may try softmax_stale (m is then finite in every row).
    auto stale_ok = [&](int n) { return args.stale_max && n > 0 && std::int64_t(n + 1) * BN <= p.len_k; };
    // Skipped when the whole warp's factors are 1 (the row maxima did not move): x·1 = x, same bits.
    auto rescale = [&](const float (&al)[2]) {
        if (__all_sync(0xffffffffu, al[0] == 1.f && al[1] == 1.f)) return;
#pragma unroll
        for (int i = 0; i < NACC; ++i) acc[i] *= al[(i >> 1) & 1];
    };
    // P's registers stay untouched until the P·V that reads them has completed (wgmma reads registers
    // asynchronously).
    auto fence_p = [&](std::uint32_t (&pa)[KS][4]) {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks)
#pragma unroll
            for (int e = 0; e < 4; ++e) reg_fence(pa[ks][e]);
    };
    // P as the A operand of m64nDk16 (the mma.sync A-fragment order, common/mma_fragments.cuh).
    auto pack_p = [&](const float (&sacc)[NS], std::uint32_t (&pa)[KS][4]) { pack_c_to_a<BF16, KS>(sacc, pa); };
    // This warp no longer reads stage s.
    auto release = [&](int n) {
        __syncwarp();
        if (lane == 0) mbar_arrive(empty_bar(n % STAGES));
    };
    // Key tile n has landed in its stage (the stage's (n / STAGES)-th fill).
    auto wait_full = [&](int n) { mbar_wait(full_bar(n % STAGES), std::uint32_t(n / STAGES) & 1u); };
    // Ping-pong (MODE 2): the two consumer warpgroups take turns to issue their GEMMs, so that one's
    // softmax runs while the other's GEMMs occupy the tensor cores. Named barrier 1 + w: "warpgroup w may
    // issue"; 256 threads = the waiting warpgroup (bar.sync) + the other one (bar.arrive).
    auto turn_wait = [&] {
        if constexpr (MODE == 2) named_bar_sync(1 + wg, 256);
    };
    auto turn_pass = [&] {
        if constexpr (MODE == 2) named_bar_arrive(2 - wg, 256);
    };

    // S of tile n into sacc, waited for (with every earlier wgmma of this warpgroup).
    auto compute_s = [&](float (&sacc)[NS], int n) {
        wgmma_fence();
        issue_s(sacc, n);
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < NS; ++i) reg_fence(sacc[i]);
    };
    // Softmax of tile n whose S has landed in sacc: softmax_stale where it may and holds, else softmax()
    // (after S is computed again if softmax_stale consumed it). al = 1 on the stale path (m did not move).
    auto softmax_tile = [&](float (&sacc)[NS], int n, float (&al)[2]) {
        if (stale_ok(n)) {
            if (softmax_stale(sacc)) {
                al[0] = al[1] = 1.f;
                return;
            }
            compute_s(sacc, n);
        }
        softmax(sacc, n, al);
    };
    // A warpgroup whose 64 rows all lie past len_q (warpgroup 1 in the last block of a view whose length is
    // not a multiple of BM, e.g. 64 of 128 rows at HW = 3520) computes nothing: it only keeps the ring's
    // empty barriers and, under ping-pong, the turn order (n_tiles + 1 turns; the last one passes nothing,
    // as in the working path), so that warpgroup 0 runs alone on the tensor cores.
    if (wg * 64 >= len_q) {
        if constexpr (MODE == 2) named_bar_arrive(1, 256); // only warpgroup 1 can be idle: warpgroup 0 goes first
        for (int n = 0; n <= n_tiles; ++n) {
            turn_wait();
            if (n < n_tiles) {
                turn_pass();
                wait_full(n);
                release(n);
            }
        }
        return;
    }

    if constexpr (MODE == 0) {
        // One tile at a time: S, wait, softmax, P·V, wait.
        for (int n = 0; n < n_tiles; ++n) {
            wait_full(n);
            float sacc[NS];
            compute_s(sacc, n);
            float al[2];
            softmax_tile(sacc, n, al);
            rescale(al);
            std::uint32_t pa[KS][4];
            pack_p(sacc, pa);
            fence_acc();
            wgmma_fence();
            issue_pv(pa, n);
            wgmma_commit();
            wgmma_wait<0>();
            fence_acc();
            fence_p(pa);
            release(n);
        }
    } else {
        // Software-pipelined (FlashAttention-3's intra-warpgroup overlap): S of tile n is issued together
        // with P·V of tile n − 1; the softmax of tile n runs while P·V of tile n − 1 is still on the
        // tensor cores, and the accumulators are rescaled only once that has finished.
        if constexpr (MODE == 2) {
            if (wg == 1) named_bar_arrive(1, 256); // warpgroup 0 goes first
        }
        float sacc[NS];
        std::uint32_t pa[KS][4];
        float al[2];
        wait_full(0);
        turn_wait();
        wgmma_fence();
        issue_s(sacc, 0);
        wgmma_commit();
        turn_pass();
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < NS; ++i) reg_fence(sacc[i]);
        softmax(sacc, 0, al); // al is 1 or 0 here and the accumulators are zero: no rescale needed
        pack_p(sacc, pa);
        for (int n = 1; n < n_tiles; ++n) {
            wait_full(n);
            turn_wait();
            fence_acc();
            wgmma_fence();
            issue_s(sacc, n);
            wgmma_commit();
            issue_pv(pa, n - 1);
            wgmma_commit();
            turn_pass();
            wgmma_wait<1>(); // S of tile n is ready; P·V of tile n − 1 may still run
#pragma unroll
            for (int i = 0; i < NS; ++i) reg_fence(sacc[i]);
            softmax_tile(sacc, n, al);
            wgmma_wait<0>();
            fence_acc();
            fence_p(pa);
            release(n - 1);
            rescale(al);
            pack_p(sacc, pa);
        }
        turn_wait();
        fence_acc();
        wgmma_fence();
        issue_pv(pa, n_tiles - 1);
        wgmma_commit();
        if (wg == 0) turn_pass(); // warpgroup 1's last arrival would have no matching wait
        wgmma_wait<0>();
        fence_acc();
        fence_p(pa);
        release(n_tiles - 1);
    }

    // Finish the row statistics and store this thread's two rows (docs/algorithm.md §4.3).
    store_flash_rows<BF16, D, K_VALUE, V_VALUE>(p, b, h, f, std::int64_t(q0), row, len_q, lane, st, acc_v, acc_k);
    } // consumers
#endif
}

} // namespace vmonarch::cuda::hopper
