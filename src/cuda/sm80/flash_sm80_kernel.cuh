// Internal: the templated FlashAttention-2-style forward kernel shared by the R-step, the first-frame
// recompute and dense attention (docs/algorithm.md §5).
//
// One block: 4 warps of 16·MT query rows each (MT = 2, 128 rows, except K and V both as values at d = 128,
// where MT = 1) of one (segment, head, batch). Keys/values stream
// through shared memory in tiles of 32 rows, double-buffered with cp.async; Q·Kᵀ and P·V / P·K use
// mma.sync m16n8k16 with fragments from ldmatrix. Shared-memory tiles are rows of D 16-bit values whose
// 16-byte chunks are XOR-swizzled by (row & 7), so every ldmatrix phase hits 8 distinct bank groups.
//
// Softmax statistics are online, in base 2 (x₂ = x·log₂e): running offset m, sum S = Σ 2^{x₂−m}, and for
// the entropy E = Σ 2^{x₂−m}·(x₂−m), rescaled with S when m moves (E ← α(E + (m_old − m_new)·S)). Then
//   cL = Σ R·x − logsumexp x = ln2·E/S − ln S,   logsumexp x = ln2·m + ln S,
// whatever m is: m is the running max after the first tile, and on later full tiles it stays put as long
// as no probability exceeds 2^8 (no row max taken; a tile that would exceed it is redone exactly).
// Keeping E relative to m keeps cL accurate for logits of ±1e3.
#pragma once

#include <cfloat>
#include <cstdint>

#include "cuda/common/kernel_params.hpp"
#include "cuda/common/mma_ptx.cuh"

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
    using T = typename ElemType<BF16>::T;
    constexpr int MT = flash_m_tiles(D, K_VALUE, V_VALUE);  // 16-row m-tiles per warp
    constexpr int BM = flash_block_m(D, K_VALUE, V_VALUE), BN = flash_block_n(D, K_VALUE, V_VALUE);
    constexpr int ROW_BYTES = D * 2, TILE_BYTES = BN * ROW_BYTES;
    constexpr int STAGE_BYTES = (V_VALUE ? 2 : 1) * TILE_BYTES;
    constexpr int KT = D / 16; // k-slices over the head dim for Q·Kᵀ
    constexpr int NT = BN / 8; // 8-key column tiles of S
    constexpr int DT = D / 8;  // 8-wide column tiles of the outputs
    constexpr int AV = V_VALUE ? DT : 1, AK = K_VALUE ? DT : 1;
    constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
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
    // Full tiles after the first may skip the row max (see the tile loop). Measured on an H100 through this
    // kernel (bench/RESULTS.md): 7–13% faster in every variant, also in the d = 128 two-m-tile ones,
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
    float mult[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            row[mt][r] = wrow + mt * 16 + (lane >> 2) + 8 * r;
            mult[mt][r] = p.qk_scale * LOG2E;
            if constexpr (ROW_SCALE) { // docs/algorithm.md §3.1: x = s·⟨aR, K⟩ / max(cR, clamp)
                const float* rs = view_row<const float>(p.rs, b, h, f);
                float m = 0.f;
                if (row[mt][r] < len_q) {
                    float c = fmaxf(rs[(q0 + row[mt][r]) * p.rs.sr], p.clamp);
                    c = c > 0.f ? c : FLT_MIN;
                    m = p.scale * LOG2E / c;
                }
                mult[mt][r] = m;
            }
        }

    std::uint32_t qf[Q_IN_REGS ? MT : 1][Q_IN_REGS ? KT : 1][4];
    float acc_v[MT][AV][4], acc_k[MT][AK][4];
    float m_run[MT][2], l_run[MT][2], e_run[MT][2];
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
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            m_run[mt][r] = NEG_INF;
            l_run[mt][r] = 0.f;
            e_run[mt][r] = 0.f;
        }
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
                    for (int kk = 0; kk < KT; ++kk)
                        ldmatrix_x4(qf[mt][kk], sQ + swz<D>(wrow + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
            }
        }

        // S = Q·Kᵀ for this warp's 16·MT rows × BN keys; each K fragment serves all m-tiles.
        float s[MT][NT][4];
        const auto compute_s = [&] {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int i = 0; i < NT; ++i)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][i][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KT; ++kk) {
                std::uint32_t qa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if constexpr (Q_IN_REGS) {
#pragma unroll
                        for (int e = 0; e < 4; ++e) qa[mt][e] = qf[mt][kk][e];
                    } else {
                        ldmatrix_x4(qa[mt], sQ + swz<D>(wrow + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
                    }
                }
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    const int r = np * 16 + (lane & 7) + ((lane >> 4) << 3);
                    std::uint32_t kf[4];
                    ldmatrix_x4(kf, sK + swz<D>(r, kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816<BF16>(s[mt][2 * np], qa[mt], kf[0], kf[1]);
                        mma_16816<BF16>(s[mt][2 * np + 1], qa[mt], kf[2], kf[3]);
                    }
                }
            }
        };
        compute_s();

        const std::int64_t kv0 = std::int64_t(n) * BN;
        const bool tail = kv0 + BN > p.len_k;
        const int kv_left = tail ? int(p.len_k - kv0) : BN; // keys of this tile that exist
        // Full tiles after the first: exponentiate against the running m without the row max (any offset
        // gives the same statistics; see the header), kept when every p ≤ 256 in the whole warp (partial
        // row sums ≤ 2^8), so that m and the accumulators' scale stay; otherwise S is computed again and
        // the exact update below runs. As in the Hopper kernel (flash_sm90_kernel.cuh, softmax_stale).
        bool exact = true;
        if (STALE_MAX && n > 0 && !tail) {
            float lt[MT][2], et[MT][2];
            bool fits = true;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                lt[mt][0] = lt[mt][1] = et[mt][0] = et[mt][1] = 0.f;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float dlt = fmaf(s[mt][nt][e], mult[mt][e >> 1], -m_run[mt][e >> 1]);
                        const float pr = fast_exp2(dlt);
                        lt[mt][e >> 1] += pr;
                        if constexpr (K_VALUE) et[mt][e >> 1] += pr * dlt;
                        s[mt][nt][e] = pr;
                    }
                fits = fits && lt[mt][0] <= 256.f && lt[mt][1] <= 256.f;
            }
            if (__all_sync(0xffffffffu, fits)) {
                exact = false;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        l_run[mt][r] += lt[mt][r];
                        if constexpr (K_VALUE) e_run[mt][r] += et[mt][r];
                    }
            } else {
                compute_s();
            }
        }

        // Scale to base-2 logits, mask the key tail, update the online statistics (exact row max).
        if (exact) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float x = s[mt][nt][e] * mult[mt][e >> 1];
                        if (tail && nt * 8 + 2 * (lane & 3) + (e & 1) >= kv_left) x = NEG_INF;
                        s[mt][nt][e] = x;
                        mx[e >> 1] = fmaxf(mx[e >> 1], x);
                    }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                }
                float mu[2], al[2];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const float mn = fmaxf(m_run[mt][r], mx[r]);
                    mu[r] = mn == NEG_INF ? 0.f : mn;
                    al[r] = fast_exp2(m_run[mt][r] - mu[r]);
                    if constexpr (K_VALUE) // entropy accumulator, kept relative to the running max
                        e_run[mt][r] = m_run[mt][r] == NEG_INF ? 0.f : al[r] * (e_run[mt][r] + (m_run[mt][r] - mu[r]) * l_run[mt][r]);
                    m_run[mt][r] = mn;
                    l_run[mt][r] *= al[r];
                }
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
                        l_run[mt][e >> 1] += pr;
                        if constexpr (K_VALUE) e_run[mt][e >> 1] += pr * fmaxf(dlt, -256.f); // masked: 0·(−∞) avoided
                        s[mt][nt][e] = pr;
                    }
            }
        }
        // P's A-fragments come straight from S's C-fragments.
        std::uint32_t pa[MT][BN / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int ks = 0; ks < BN / 16; ++ks) {
                pa[mt][ks][0] = pack2<BF16>(s[mt][2 * ks][0], s[mt][2 * ks][1]);
                pa[mt][ks][1] = pack2<BF16>(s[mt][2 * ks][2], s[mt][2 * ks][3]);
                pa[mt][ks][2] = pack2<BF16>(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
                pa[mt][ks][3] = pack2<BF16>(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
            }
        }

        // acc += P·V and/or P·K; each V/K fragment serves all m-tiles.
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
#pragma unroll
            for (int ks = 0; ks < BN / 16; ++ks) {
                const std::uint32_t off = swz<D>(ks * 16 + (lane & 15), dp * 2 + (lane >> 4));
                if constexpr (V_VALUE) {
                    std::uint32_t vf[4];
                    ldmatrix_x4_trans(vf, sV + off);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816<BF16>(acc_v[mt][2 * dp], pa[mt][ks], vf[0], vf[1]);
                        mma_16816<BF16>(acc_v[mt][2 * dp + 1], pa[mt][ks], vf[2], vf[3]);
                    }
                }
                if constexpr (K_VALUE) {
                    std::uint32_t kf[4];
                    ldmatrix_x4_trans(kf, sK + off);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816<BF16>(acc_k[mt][2 * dp], pa[mt][ks], kf[0], kf[1]);
                        mma_16816<BF16>(acc_k[mt][2 * dp + 1], pa[mt][ks], kf[2], kf[3]);
                    }
                }
            }
        }
        __syncthreads(); // this stage is refilled by the next iteration's prefetch
    }

    const int col0 = 2 * (lane & 3);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        // Finish the row statistics across the 4 threads that share a row.
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
#pragma unroll
            for (int o = 1; o <= 2; o <<= 1) {
                l_run[mt][r] += __shfl_xor_sync(0xffffffffu, l_run[mt][r], o);
                if constexpr (K_VALUE) e_run[mt][r] += __shfl_xor_sync(0xffffffffu, e_run[mt][r], o);
            }
            inv[r] = l_run[mt][r] > 0.f ? 1.f / l_run[mt][r] : 0.f;
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (row[mt][r] >= len_q) continue;
            const std::int64_t rr = q0 + row[mt][r];
            if constexpr (V_VALUE) {
                T* o = view_row<T>(p.o, b, h, f) + rr * p.o.sr + col0;
#pragma unroll
                for (int dt = 0; dt < DT; ++dt)
                    *reinterpret_cast<std::uint32_t*>(o + dt * 8) =
                        pack2<BF16>(acc_v[mt][dt][2 * r] * inv[r], acc_v[mt][dt][2 * r + 1] * inv[r]);
            }
            if constexpr (K_VALUE) { // aL = s·Σ R·K, cL = Σ R·x − logsumexp x
                T* a = view_row<T>(p.a, b, h, f) + rr * p.a.sr + col0;
                const float sc = inv[r] * p.scale;
#pragma unroll
                for (int dt = 0; dt < DT; ++dt)
                    *reinterpret_cast<std::uint32_t*>(a + dt * 8) = pack2<BF16>(acc_k[mt][dt][2 * r] * sc, acc_k[mt][dt][2 * r + 1] * sc);
                if ((lane & 3) == 0) {
                    const float l = l_run[mt][r];
                    view_row<float>(p.ent, b, h, f)[rr * p.ent.sr] = l > 0.f ? LN2 * e_run[mt][r] * inv[r] - logf(l) : 0.f;
                }
            }
            if (p.lse.ptr != nullptr && (lane & 3) == 0) {
                const float l = l_run[mt][r];
                view_row<float>(p.lse, b, h, f)[rr * p.lse.sr] = l > 0.f ? LN2 * m_run[mt][r] + logf(l) : NEG_INF;
            }
        }
    }
}

} // namespace vmonarch::cuda
