// Internal: the templated FlashAttention-2-style forward kernel shared by the R-step, the first-frame
// recompute and dense attention (spec §3, "useful identities").
//
// One block: 64 query rows of one (segment, head, batch), 4 warps of 16 rows each. Keys/values stream
// through shared memory in tiles of 64 rows, double-buffered with cp.async; Q·Kᵀ and P·V / P·K use
// mma.sync m16n8k16 with fragments from ldmatrix. Shared-memory tiles are rows of D 16-bit values whose
// 16-byte chunks are XOR-swizzled by (row & 7), so every ldmatrix phase hits 8 distinct bank groups.
//
// Softmax statistics are online, in base 2 (x₂ = x·log₂e): running max m, sum S = Σ 2^{x₂−m}, and for
// the entropy E = Σ 2^{x₂−m}·(x₂−m), rescaled with S when m moves (E ← α(E + (m_old − m_new)·S)). Then
//   cL = Σ R·x − logsumexp x = ln2·E/S − ln S,   logsumexp x = ln2·m + ln S.
// Keeping E relative to the running max keeps cL accurate for logits of ±1e3.
#pragma once

#include <cfloat>
#include <cstdint>

#include "cuda/kernel_params.hpp"
#include "cuda/mma_ptx.cuh"

namespace vmonarch::cuda {

struct FlashShape {
    static constexpr int BM = 64, BN = 64, WARPS = 4, THREADS = 128;
};

// Keys per tile: 64, or 32 when K and V are both values at d = 128, whose two accumulators already take
// 128 registers per thread.
constexpr int flash_block_n(int head_dim, bool k_value, bool v_value) {
    return (k_value && v_value && head_dim == 128) ? 32 : FlashShape::BN;
}

constexpr int flash_smem_bytes(int head_dim, bool k_value, bool v_value) {
    const int row = head_dim * 2;
    return FlashShape::BM * row + 2 * (v_value ? 2 : 1) * flash_block_n(head_dim, k_value, v_value) * row; // Q + 2 stages
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

template <typename T>
__device__ __forceinline__ T* view_row(const RowView& v, int b, int h, int f) {
    return static_cast<T*>(v.ptr) + b * v.sb + h * v.sh + f * v.sf;
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

template <int D>
__device__ __forceinline__ std::uint32_t swz(int r, int ch) {
    return r * (D * 2) + ((ch ^ (r & 7)) << 4);
}

template <bool BF16, int D, bool ROW_SCALE, bool K_VALUE, bool V_VALUE>
__global__ void __launch_bounds__(FlashShape::THREADS) flash_fwd_kernel(const FlashParams p) {
    using T = typename ElemType<BF16>::T;
    constexpr int BM = FlashShape::BM, BN = flash_block_n(D, K_VALUE, V_VALUE);
    constexpr int ROW_BYTES = D * 2, TILE_BYTES = BN * ROW_BYTES;
    constexpr int STAGE_BYTES = (V_VALUE ? 2 : 1) * TILE_BYTES;
    constexpr int KT = D / 16; // k-slices over the head dim for Q·Kᵀ
    constexpr int NT = BN / 8; // 8-key column tiles of S
    constexpr int DT = D / 8;  // 8-wide column tiles of the outputs
    constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
    constexpr float NEG_INF = -INFINITY;
    // With both K and V as values at d = 128 the two accumulators take 128 registers: keep Q in shared
    // memory and reload its fragments per tile instead of holding them (avoids spills).
    constexpr bool Q_IN_REGS = !(K_VALUE && V_VALUE && D == 128);

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

    // This thread's two query rows: lo = warp·16 + lane/4 and hi = lo + 8 (mma C-fragment layout).
    const std::int64_t row_lo = q0 + warp * 16 + (lane >> 2), row_hi = row_lo + 8;
    float mult_lo = p.qk_scale * LOG2E, mult_hi = mult_lo;
    if constexpr (ROW_SCALE) { // spec §3: x = s·⟨aR, K⟩ / max(cR, clamp)
        const float* rs = view_row<const float>(p.rs, b, h, f);
        auto row_mult = [&](std::int64_t row) {
            if (row >= p.len_q) return 0.f;
            float c = fmaxf(rs[row * p.rs.sr], p.clamp);
            c = c > 0.f ? c : FLT_MIN;
            return p.scale * LOG2E / c;
        };
        mult_lo = row_mult(row_lo);
        mult_hi = row_mult(row_hi);
    }

    std::uint32_t qf[Q_IN_REGS ? KT : 1][4];
    float acc_v[V_VALUE ? DT : 1][4], acc_k[K_VALUE ? DT : 1][4];
#pragma unroll
    for (int i = 0; i < (V_VALUE ? DT : 1); ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_v[i][e] = 0.f;
#pragma unroll
    for (int i = 0; i < (K_VALUE ? DT : 1); ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_k[i][e] = 0.f;
    float m_lo = NEG_INF, m_hi = NEG_INF, l_lo = 0.f, l_hi = 0.f, e_lo = 0.f, e_hi = 0.f;

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
        if (Q_IN_REGS && n == 0) {
#pragma unroll
            for (int kk = 0; kk < KT; ++kk) {
                const int r = warp * 16 + (lane & 15);
                ldmatrix_x4(qf[kk], sQ + swz<D>(r, kk * 2 + (lane >> 4)));
            }
        }

        // S = Q·Kᵀ for this warp's 16 rows × BN keys.
        float s[NT][4];
#pragma unroll
        for (int i = 0; i < NT; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[i][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            std::uint32_t qa[4];
            if constexpr (Q_IN_REGS) {
#pragma unroll
                for (int e = 0; e < 4; ++e) qa[e] = qf[kk][e];
            } else {
                ldmatrix_x4(qa, sQ + swz<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                const int r = np * 16 + (lane & 7) + ((lane >> 4) << 3);
                std::uint32_t kf[4];
                ldmatrix_x4(kf, sK + swz<D>(r, kk * 2 + ((lane >> 3) & 1)));
                mma_16816<BF16>(s[2 * np], qa, kf[0], kf[1]);
                mma_16816<BF16>(s[2 * np + 1], qa, kf[2], kf[3]);
            }
        }

        // Scale to base-2 logits, mask the key tail, update the online statistics.
        const std::int64_t kv0 = std::int64_t(n) * BN;
        const bool tail = kv0 + BN > p.len_k;
        float mx_lo = NEG_INF, mx_hi = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float x0 = s[nt][e] * mult_lo, x1 = s[nt][2 + e] * mult_hi;
                if (tail && kv0 + nt * 8 + 2 * (lane & 3) + e >= p.len_k) x0 = x1 = NEG_INF;
                s[nt][e] = x0;
                s[nt][2 + e] = x1;
                mx_lo = fmaxf(mx_lo, x0);
                mx_hi = fmaxf(mx_hi, x1);
            }
        }
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, o));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, o));
        }
        const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        const float mu_lo = mn_lo == NEG_INF ? 0.f : mn_lo, mu_hi = mn_hi == NEG_INF ? 0.f : mn_hi;
        const float al_lo = fast_exp2(m_lo - mu_lo), al_hi = fast_exp2(m_hi - mu_hi);
        if constexpr (K_VALUE) { // entropy accumulator, relative to the running max
            e_lo = m_lo == NEG_INF ? 0.f : al_lo * (e_lo + (m_lo - mu_lo) * l_lo);
            e_hi = m_hi == NEG_INF ? 0.f : al_hi * (e_hi + (m_hi - mu_hi) * l_hi);
        }
        m_lo = mn_lo;
        m_hi = mn_hi;
        l_lo *= al_lo;
        l_hi *= al_hi;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            if constexpr (V_VALUE) {
                acc_v[dt][0] *= al_lo; acc_v[dt][1] *= al_lo;
                acc_v[dt][2] *= al_hi; acc_v[dt][3] *= al_hi;
            }
            if constexpr (K_VALUE) {
                acc_k[dt][0] *= al_lo; acc_k[dt][1] *= al_lo;
                acc_k[dt][2] *= al_hi; acc_k[dt][3] *= al_hi;
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float d0 = s[nt][e] - mu_lo, d1 = s[nt][2 + e] - mu_hi;
                const float p0 = fast_exp2(d0), p1 = fast_exp2(d1);
                l_lo += p0;
                l_hi += p1;
                if constexpr (K_VALUE) { // masked keys: p = 0 and d = −inf; the clamp avoids 0·∞
                    e_lo += p0 * fmaxf(d0, -256.f);
                    e_hi += p1 * fmaxf(d1, -256.f);
                }
                s[nt][e] = p0;
                s[nt][2 + e] = p1;
            }
        }

        // acc += P·V and/or P·K; P's A-fragments come straight from S's C-fragments.
        std::uint32_t pa[BN / 16][4];
#pragma unroll
        for (int ks = 0; ks < BN / 16; ++ks) {
            pa[ks][0] = pack2<BF16>(s[2 * ks][0], s[2 * ks][1]);
            pa[ks][1] = pack2<BF16>(s[2 * ks][2], s[2 * ks][3]);
            pa[ks][2] = pack2<BF16>(s[2 * ks + 1][0], s[2 * ks + 1][1]);
            pa[ks][3] = pack2<BF16>(s[2 * ks + 1][2], s[2 * ks + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
#pragma unroll
            for (int ks = 0; ks < BN / 16; ++ks) {
                const std::uint32_t off = swz<D>(ks * 16 + (lane & 15), dp * 2 + (lane >> 4));
                if constexpr (V_VALUE) {
                    std::uint32_t vf[4];
                    ldmatrix_x4_trans(vf, sV + off);
                    mma_16816<BF16>(acc_v[2 * dp], pa[ks], vf[0], vf[1]);
                    mma_16816<BF16>(acc_v[2 * dp + 1], pa[ks], vf[2], vf[3]);
                }
                if constexpr (K_VALUE) {
                    std::uint32_t kf[4];
                    ldmatrix_x4_trans(kf, sK + off);
                    mma_16816<BF16>(acc_k[2 * dp], pa[ks], kf[0], kf[1]);
                    mma_16816<BF16>(acc_k[2 * dp + 1], pa[ks], kf[2], kf[3]);
                }
            }
        }
        __syncthreads(); // this stage is refilled by the next iteration's prefetch
    }

    // Finish the row statistics across the 4 threads that share a row.
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, o);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, o);
        if constexpr (K_VALUE) {
            e_lo += __shfl_xor_sync(0xffffffffu, e_lo, o);
            e_hi += __shfl_xor_sync(0xffffffffu, e_hi, o);
        }
    }
    const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f, inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
    const bool ok_lo = row_lo < p.len_q, ok_hi = row_hi < p.len_q;
    const int col0 = 2 * (lane & 3);

    if constexpr (V_VALUE) {
        T* ob = view_row<T>(p.o, b, h, f);
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            if (ok_lo) *reinterpret_cast<std::uint32_t*>(ob + row_lo * p.o.sr + dt * 8 + col0) = pack2<BF16>(acc_v[dt][0] * inv_lo, acc_v[dt][1] * inv_lo);
            if (ok_hi) *reinterpret_cast<std::uint32_t*>(ob + row_hi * p.o.sr + dt * 8 + col0) = pack2<BF16>(acc_v[dt][2] * inv_hi, acc_v[dt][3] * inv_hi);
        }
    }
    if constexpr (K_VALUE) { // aL = s·Σ R·K, cL = Σ R·x − logsumexp x
        T* ab = view_row<T>(p.a, b, h, f);
        const float a_lo = inv_lo * p.scale, a_hi = inv_hi * p.scale;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            if (ok_lo) *reinterpret_cast<std::uint32_t*>(ab + row_lo * p.a.sr + dt * 8 + col0) = pack2<BF16>(acc_k[dt][0] * a_lo, acc_k[dt][1] * a_lo);
            if (ok_hi) *reinterpret_cast<std::uint32_t*>(ab + row_hi * p.a.sr + dt * 8 + col0) = pack2<BF16>(acc_k[dt][2] * a_hi, acc_k[dt][3] * a_hi);
        }
        if ((lane & 3) == 0) {
            float* eb = view_row<float>(p.ent, b, h, f);
            if (ok_lo) eb[row_lo * p.ent.sr] = l_lo > 0.f ? LN2 * e_lo * inv_lo - logf(l_lo) : 0.f;
            if (ok_hi) eb[row_hi * p.ent.sr] = l_hi > 0.f ? LN2 * e_hi * inv_hi - logf(l_hi) : 0.f;
        }
    }
    if (p.lse.ptr != nullptr && (lane & 3) == 0) {
        float* lb = view_row<float>(p.lse, b, h, f);
        if (ok_lo) lb[row_lo * p.lse.sr] = l_lo > 0.f ? LN2 * m_lo + logf(l_lo) : NEG_INF;
        if (ok_hi) lb[row_hi * p.lse.sr] = l_hi > 0.f ? LN2 * m_hi + logf(l_hi) : NEG_INF;
    }
}

} // namespace vmonarch::cuda
