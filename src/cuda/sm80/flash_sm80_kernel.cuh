// Internal: the templated FlashAttention-2-style forward kernel shared by the R-step, the first-frame
// recompute and dense attention (docs/algorithm.md §5).
//
// One block: 4 warps of 16·MT query rows each (MT = 2, 128 rows, except K and V both as values at d = 128,
// where MT = 1) of one (segment, head, batch). Keys/values stream
// through shared memory in tiles of 32 rows, double-buffered with cp.async; Q·Kᵀ and P·V / P·K use
// mma.sync m16n8k16 with fragments from ldmatrix. Shared-memory tiles are rows of D 16-bit values whose
// 16-byte chunks are XOR-swizzled by (row & 7), so every ldmatrix phase hits 8 distinct bank groups.
//
// The softmax statistics are the online ones of docs/algorithm.md §4 (common/online_softmax.cuh, with the
// compiler free to fuse: FusedMath): the exact update on the first and on partial key tiles, the
// stale-offset update on later full tiles; the epilogue (common/flash_epilogue.cuh) and the fragment
// products (common/mma_fragments.cuh) are shared with the sm90 kernel.
#pragma once

#include <cfloat>
#include <cstdint>

#include "cuda/common/flash_epilogue.cuh"
#include "cuda/common/kernel_params.hpp"
#include "cuda/common/mma_fragments.cuh"
#include "cuda/common/mma_ptx.cuh"
#include "cuda/common/online_softmax.cuh"

namespace vmonarch::cuda {

struct FlashShape {
    static constexpr int WARPS = 4, THREADS = 128;
};

// Two value operands at d = 128 need 128 accumulator registers per 16 rows: such blocks give each warp
// one 16-row m-tile; every other variant gives each warp two m-tiles (32 rows, halving the shared-memory
// reads of K and V per FLOP). Key tiles are 32 rows (64 spilled registers at 64, bench/RESULTS.md).
constexpr bool flash_narrow(int head_dim, bool k_value, bool v_value) { return k_value && v_value && head_dim == 128; }
constexpr int flash_m_tiles(int head_dim, bool k_value, bool v_value) { return flash_narrow(head_dim, k_value, v_value) ? 1 : 2; }
constexpr int flash_block_m(int head_dim, bool k_value, bool v_value) {
    return 16 * FlashShape::WARPS * flash_m_tiles(head_dim, k_value, v_value);
}
#ifdef VMONARCH_FLASH_WIDE_N // experiment: 64-key tiles wherever the block has two m-tiles per warp
constexpr int flash_block_n(int head_dim, bool k_value, bool v_value) { return flash_narrow(head_dim, k_value, v_value) ? 32 : 64; }
#else
constexpr int flash_block_n(int, bool, bool) { return 32; }
#endif

constexpr int flash_smem_bytes(int head_dim, bool k_value, bool v_value) {
    const int row = head_dim * 2;
    return flash_block_m(head_dim, k_value, v_value) * row +
           2 * (v_value ? 2 : 1) * flash_block_n(head_dim, k_value, v_value) * row; // Q + 2 stages of K(,V)
}

// cp.async ROWS rows [row0, row0 + ROWS) of D elements (row stride sr) into a swizzled tile at dst;
// rows at or past len are zero-filled.
template <int D, int ROWS, typename T>
__device__ __forceinline__ void load_tile_async(std::uint32_t dst, const T* base, std::int64_t sr, std::int64_t row0,
                                                std::int64_t len, int tid) {
    constexpr int CH = D / 8, PER_THREAD = ROWS * CH / FlashShape::THREADS;
    static_assert(ROWS * CH % FlashShape::THREADS == 0);
#pragma unroll
    for (int it = 0; it < PER_THREAD; ++it) {
        const int c = tid + it * FlashShape::THREADS;
        const int r = c / CH, ch = c % CH;
        const std::int64_t row = row0 + r;
        const bool ok = row < len;
        const T* src = ok ? base + row * sr + ch * 8 : base;
        cp_async_16(dst + r * (D * 2) + ((ch ^ (r & 7)) << 4), src, ok ? 16 : 0);
    }
}

template <bool BF16, int D, bool ROW_SCALE, bool K_VALUE, bool V_VALUE>
__global__ void __launch_bounds__(FlashShape::THREADS) flash_sm80_kernel(const FlashParams p) {
    using Stats = OnlineStats<K_VALUE, FusedMath>;
    constexpr int MT = flash_m_tiles(D, K_VALUE, V_VALUE);  // 16-row m-tiles per warp
    constexpr int BM = flash_block_m(D, K_VALUE, V_VALUE), BN = flash_block_n(D, K_VALUE, V_VALUE);
    constexpr int ROW_BYTES = D * 2, TILE_BYTES = BN * ROW_BYTES;
    constexpr int STAGE_BYTES = (V_VALUE ? 2 : 1) * TILE_BYTES;
    constexpr int KT = D / 16; // k-slices over the head dim for Q·Kᵀ
    constexpr int NT = BN / 8; // 8-key column tiles of S
    constexpr int DT = D / 8;  // 8-wide column tiles of the outputs
    constexpr int AV = V_VALUE ? DT : 1, AK = K_VALUE ? DT : 1;
    constexpr float NEG_INF = -INFINITY;
    // Q fragments stay in registers when they take at most 32 of them (MT·KT·4) and the block is not the
    // two-value variant; otherwise they are re-read from shared memory per tile. Measured (bench/RESULTS.md):
    // holding them in the two-value variant (254 registers, no spills) or everywhere (spills) is
    // 8–10% slower. VMONARCH_Q_IN_REGS_RULE overrides the rule for experiments.
#ifdef VMONARCH_Q_IN_REGS_RULE
    constexpr bool Q_IN_REGS = VMONARCH_Q_IN_REGS_RULE;
#else
    constexpr bool Q_IN_REGS = !(K_VALUE && V_VALUE) && MT * KT * 4 <= 32;
#endif
    // Full tiles after the first may skip the row max (docs/algorithm.md §4.2). Measured on an H100 through
    // this kernel (bench/RESULTS.md): 7–13% faster in every variant, also in the d = 128 two-m-tile ones,
    // where ptxas then spills 48–116 bytes (28–40 without it); excluding those was slower.
    // VMONARCH_PORTABLE_STALE_RULE overrides the rule for experiments.
#ifdef VMONARCH_PORTABLE_STALE_RULE
    constexpr bool STALE_MAX = VMONARCH_PORTABLE_STALE_RULE;
#else
    constexpr bool STALE_MAX = true;
#endif

    extern __shared__ __align__(128) unsigned char smem[];
    const std::uint32_t sQ = smem_addr(smem);
    const std::uint32_t sKV = sQ + BM * ROW_BYTES;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int f = blockIdx.y / p.heads, h = blockIdx.y % p.heads, b = blockIdx.z;
    const std::int64_t q0 = std::int64_t(blockIdx.x) * BM;

    using T = typename ElemType<BF16>::T;
    const T* qb = view_row<const T>(p.q, b, h, f);
    const T* kb = view_row<const T>(p.k, b, h, f);
    const T* vb = V_VALUE ? view_row<const T>(p.v, b, h, f) : nullptr;
    const int n_tiles = int((p.len_k + BN - 1) / BN);

    load_tile_async<D, BM>(sQ, qb, p.q.sr, q0, p.len_q, tid);
    load_tile_async<D, BN>(sKV, kb, p.k.sr, 0, p.len_k, tid);
    if constexpr (V_VALUE) load_tile_async<D, BN>(sKV + TILE_BYTES, vb, p.v.sr, 0, p.len_k, tid);
    cp_async_commit();

    // This thread's query rows: m-tile mt, half r: warp·16·MT + mt·16 + lane/4 + 8r (C-fragment layout).
    const int wrow = warp * 16 * MT;
    const int len_q = int(p.len_q - q0); // rows of this block that exist (rows are < 2³¹ per segment)
    int row[MT][2];                      // relative to q0
    float mult[MT][2];                   // base-2 logit per unit of ⟨q, k⟩
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            row[mt][r] = wrow + mt * 16 + (lane >> 2) + 8 * r;
            mult[mt][r] = p.qk_scale * kLog2e;
            if constexpr (ROW_SCALE) { // docs/algorithm.md §3.1: x = s·⟨aR, K⟩ / max(cR, clamp)
                const float* rs = view_row<const float>(p.rs, b, h, f);
                float m = 0.f;
                if (row[mt][r] < len_q) {
                    float c = fmaxf(rs[(q0 + row[mt][r]) * p.rs.sr], p.clamp);
                    c = c > 0.f ? c : FLT_MIN;
                    m = p.scale * kLog2e / c;
                }
                mult[mt][r] = m;
            }
        }

    std::uint32_t qf[Q_IN_REGS ? MT : 1][Q_IN_REGS ? KT : 1][4];
    float acc_v[MT][AV][4], acc_k[MT][AK][4];
    Stats st[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int i = 0; i < AV; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_v[mt][i][e] = 0.f;
#pragma unroll
        for (int i = 0; i < AK; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_k[mt][i][e] = 0.f;
    }

    for (int n = 0; n < n_tiles; ++n) {
        const std::uint32_t sK = sKV + (n & 1) * STAGE_BYTES;
        const std::uint32_t sV = sK + TILE_BYTES;
        if (n + 1 < n_tiles) { // prefetch the next K(,V) tile into the other stage
            const std::uint32_t nK = sKV + ((n + 1) & 1) * STAGE_BYTES;
            load_tile_async<D, BN>(nK, kb, p.k.sr, std::int64_t(n + 1) * BN, p.len_k, tid);
            if constexpr (V_VALUE) load_tile_async<D, BN>(nK + TILE_BYTES, vb, p.v.sr, std::int64_t(n + 1) * BN, p.len_k, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if constexpr (Q_IN_REGS) {
            if (n == 0) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int kk = 0; kk < KT; ++kk) load_a_frag<D>(qf[mt][kk], sQ, wrow + mt * 16, kk, lane);
            }
        }

        // S = Q·Kᵀ for this warp's 16·MT rows × BN keys.
        float s[MT][NT][4];
        warp_qk<BF16, D, MT, NT, Q_IN_REGS>(s, qf, sQ, sK, wrow, lane);

        const std::int64_t kv0 = std::int64_t(n) * BN;
        const bool tail = kv0 + BN > p.len_k;
        const int kv_left = tail ? int(p.len_k - kv0) : BN; // keys of this tile that exist
        // Full tiles after the first: the stale-offset update (docs/algorithm.md §4.2), kept when every
        // thread of the warp passes the bound, so that m and the accumulators' scale stay; otherwise S is
        // computed again and the exact update below runs. As in flash_sm90_kernel.cuh.
        bool exact = true;
        if (STALE_MAX && n > 0 && !tail) {
            RowSums<K_VALUE, FusedMath> part[MT];
            bool fits = true;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float dlt = fmaf(s[mt][nt][e], mult[mt][e >> 1], -st[mt].m[e >> 1]);
                        const float pr = fast_exp2(dlt);
                        part[mt].add(e >> 1, pr, dlt);
                        s[mt][nt][e] = pr;
                    }
                fits = part[mt].within_stale_bound(fits);
            }
            if (__all_sync(0xffffffffu, fits)) {
                exact = false;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) st[mt].absorb(part[mt]);
            } else {
                warp_qk<BF16, D, MT, NT, Q_IN_REGS>(s, qf, sQ, sK, wrow, lane);
            }
        }

        // Scale to base-2 logits, mask the key tail, exact update (docs/algorithm.md §4.1).
        if (exact) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float x = s[mt][nt][e] * mult[mt][e >> 1];
                        if (tail && c_frag_col(4 * nt + e, lane) >= kv_left) x = NEG_INF;
                        s[mt][nt][e] = x;
                        mx[e >> 1] = fmaxf(mx[e >> 1], x);
                    }
#pragma unroll
                for (int r = 0; r < 2; ++r) mx[r] = quad_max(mx[r]);
                float mu[2], al[2];
#pragma unroll
                for (int r = 0; r < 2; ++r) st[mt].move_offset(r, mx[r], mu[r], al[r]);
#pragma unroll
                for (int dt = 0; dt < DT; ++dt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        if constexpr (V_VALUE) acc_v[mt][dt][e] *= al[e >> 1];
                        if constexpr (K_VALUE) acc_k[mt][dt][e] *= al[e >> 1];
                    }
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float dlt = s[mt][nt][e] - mu[e >> 1];
                        const float pr = fast_exp2(dlt);
                        st[mt].sum.add_maskable(e >> 1, pr, dlt);
                        s[mt][nt][e] = pr;
                    }
            }
        }
        // P's A-fragments come straight from S's C-fragments.
        std::uint32_t pa[MT][BN / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) pack_c_to_a<BF16, BN / 16>(reinterpret_cast<const float(&)[BN / 2]>(s[mt]), pa[mt]);

        // acc += P·V and/or P·K.
        warp_pv<BF16, D, MT, BN / 16, V_VALUE, K_VALUE>(acc_v, acc_k, pa, sV, sK, lane);
        __syncthreads(); // this stage is refilled by the next iteration's prefetch
    }

    // Finish the statistics and store this thread's rows of every m-tile (docs/algorithm.md §4.3). An absent
    // value operand's accumulator is never read: the other one stands in for the argument.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const auto& av = reinterpret_cast<const float(&)[D / 2]>(V_VALUE ? acc_v[mt][0][0] : acc_k[mt][0][0]);
        const auto& ak = reinterpret_cast<const float(&)[D / 2]>(K_VALUE ? acc_k[mt][0][0] : acc_v[mt][0][0]);
        store_flash_rows<BF16, D, K_VALUE, V_VALUE>(p, b, h, f, q0, row[mt], len_q, lane, st[mt], av, ak);
    }
}

} // namespace vmonarch::cuda
