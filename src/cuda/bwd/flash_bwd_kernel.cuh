// Internal: the FlashAttention-2-style backward kernels of spec §7.5 (the R-step backward with row scale γ,
// K and/or V as value operands, the entropy term) and §7.2 (the dense frame-0 recompute: no row scale, V the
// only value operand, dy = dO, drow = D). Operands and formulas: cuda/bwd/backward_params.hpp.
//
// Per (segment, head, batch), with natural-log logits x = γ·⟨q_i, k_l⟩ and P = exp(x − lse_i):
//   dP = s·⟨da_i, k_l⟩ + ⟨dy_i, v_l⟩ + dent_i·(x − lse_i);   dS = γ·P∘(dP − drow_i)   (= γ·dX)
//   dk_l += s·Σ_i P·da_i + Σ_i dS·q_i;   dv_l += Σ_i P·dy_i;   dq_i += Σ_l dS·k_l.
//
// flash_bwd_key_kernel: one block per (key tile of 128, segment·head, batch), 8 warps of 16 keys each,
// looping over query tiles (Q, dA, dY double-buffered through cp.async). Each warp forms Sᵀ = K·Qᵀ and dPᵀ in
// registers, so Pᵀ and dSᵀ are already the A operands of dV += Pᵀ·dY and dK += s·Pᵀ·dA + dSᵀ·Q (the C → A
// repack); dk/dv accumulate in registers and are added to the f32 accumulators once. dq: dSᵀ goes through
// shared memory and dq += dS·K is atomically added per query tile (skipped when deterministic).
// flash_bwd_query_kernel (deterministic mode): one block per (query tile of 64, segment·head, batch) recomputes
// S, dP and dS over all key tiles in order and adds dq once: a bitwise-repeatable order.
//
// Masking (spec §7.5): a query row at or past len_q gets lse = +∞ and γ = 0, a key at or past len_k gets
// x = −∞, so P = 0 there; dS is taken as 0 wherever P = 0, after dX is formed, so 0·(−∞) never reaches it.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/common/mma_fragments.cuh"
#include "cuda/common/mma_ptx.cuh"
#include "cuda/common/online_softmax.cuh" // kLog2e

namespace vmonarch::cuda {

// Key-tile kernel: BN keys per block (16 per warp), BM queries per step (32 at d = 128, where dK and dV take
// 128 accumulator registers per thread; 64 at d = 64).
template <int D> struct FlashBwdKeyShape {
    static constexpr int WARPS = 8, THREADS = 32 * WARPS;
    static constexpr int BN = 16 * WARPS;
    static constexpr int BM = D == 128 ? 32 : 64;
};
// Query-tile kernel (deterministic dq): 4 warps of 16 query rows, key tiles of 64.
template <int D> struct FlashBwdQueryShape {
    static constexpr int WARPS = 4, THREADS = 32 * WARPS;
    static constexpr int BM = 16 * WARPS;
    static constexpr int BN = 64;
};

// Per-row scalars of one query tile in shared memory: γ, lse, drow, dent (BM floats each).
constexpr int kBwdRowScalars = 4;

template <int D, bool HAS_DA, bool HAS_DY> constexpr int flash_bwd_key_smem_bytes() {
    using S = FlashBwdKeyShape<D>;
    return (HAS_DY ? 2 : 1) * S::BN * D * 2                     // K (and V) tile, resident
           + 2 * (1 + HAS_DA + HAS_DY) * S::BM * D * 2          // 2 stages of Q (, dA, dY)
           + S::BN * S::BM * 2                                  // dSᵀ tile
           + 2 * kBwdRowScalars * S::BM * 4;                    // 2 stages of row scalars
}
template <int D, bool HAS_DA, bool HAS_DY> constexpr int flash_bwd_query_smem_bytes() {
    using S = FlashBwdQueryShape<D>;
    return (1 + HAS_DA + HAS_DY) * S::BM * D * 2 // Q (, dA, dY), resident
           + 2 * (HAS_DY ? 2 : 1) * S::BN * D * 2; // 2 stages of K (, V)
}

// cp.async rows [row0, row0 + ROWS) of D elements (row stride sr) into a swizzled tile (common/mma_ptx.cuh: swz);
// rows at or past len are zero-filled.
template <int D, int ROWS, int THREADS, typename T>
__device__ __forceinline__ void bwd_load_rows(std::uint32_t dst, const T* base, std::int64_t sr, std::int64_t row0,
                                              std::int64_t len, int tid) {
    constexpr int CH = D / 8;
    static_assert(ROWS * CH % THREADS == 0);
#pragma unroll
    for (int it = 0; it < ROWS * CH / THREADS; ++it) {
        const int c = tid + it * THREADS;
        const int r = c / CH, ch = c % CH;
        const std::int64_t row = row0 + r;
        const bool ok = row < len;
        cp_async_16(dst + swz<D>(r, ch), ok ? base + row * sr + ch * 8 : base, ok ? 16 : 0);
    }
}

// The per-row operands of one (batch, head, segment).
struct FlashBwdRows {
    const float *lse, *rs, *dent, *drow;
};
__device__ __forceinline__ FlashBwdRows bwd_rows(const FlashBwdParams& p, int b, int h, int f) {
    return {view_row<const float>(p.lse, b, h, f), p.rs.ptr ? view_row<const float>(p.rs, b, h, f) : nullptr,
            p.dent.ptr ? view_row<const float>(p.dent, b, h, f) : nullptr, view_row<const float>(p.drow, b, h, f)};
}

// The scalars of query row i: γ = s / max(cR, clamp) with rs (as the forward: a non-positive max becomes
// FLT_MIN), else qk_scale; lse; drow; dent (0 without). A row past len_q, or one whose lse is not finite
// (it had no key in the forward), gets γ = 0, lse = +∞: P = 0 on it.
struct FlashBwdRowScalars {
    float gamma, lse, drow, dent;
};
__device__ __forceinline__ FlashBwdRowScalars bwd_row_scalars(const FlashBwdParams& p, const FlashBwdRows& r, std::int64_t i) {
    FlashBwdRowScalars v{0.f, INFINITY, 0.f, 0.f};
    if (i >= p.len_q) return v;
    const float lse = r.lse[i * p.lse.sr];
    if (!isfinite(lse)) return v;
    if (r.rs) {
        float c = fmaxf(r.rs[i * p.rs.sr], p.clamp);
        c = c > 0.f ? c : FLT_MIN;
        v.gamma = p.scale / c;
    } else {
        v.gamma = p.qk_scale;
    }
    v.lse = lse;
    v.drow = r.drow[i * p.drow.sr];
    v.dent = r.dent ? r.dent[i * p.dent.sr] : 0.f;
    return v;
}

// From ⟨q, k⟩ = qk and dP without its entropy term (dp): P (returned in pr) and dS = γ·P∘(dP − drow), with
// dP's entropy term dent·(x − lse). Masked keys (key_ok false) and rows (lse = +∞) give P = 0 and dS = 0.
__device__ __forceinline__ float bwd_ds(float qk, float dp, const FlashBwdRowScalars& r, bool key_ok, float& pr) {
    const float xl = key_ok ? fmaf(qk, r.gamma, -r.lse) : -INFINITY; // x − lse, natural log
    pr = fast_exp2(xl * kLog2e);
    const float dx = pr * (fmaf(r.dent, xl, dp) - r.drow);
    return pr > 0.f ? r.gamma * dx : 0.f;
}

// c += A·Bᵀ for the 16 rows [arow, arow + 16) of the swizzled tile sA and the 8·NT rows of the tile sB (both
// rows of D elements; the reduction runs over the head dim): ⟨a_r, b_c⟩ in C-fragment layout.
template <bool BF16, int D, int NT>
__device__ __forceinline__ void bwd_rows_dot(float (&c)[NT][4], std::uint32_t sA, int arow, std::uint32_t sB, int lane) {
    static_assert(NT % 2 == 0);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t a[4];
        load_a_frag<D>(a, sA, arow, kk, lane);
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            const int r = np * 16 + (lane & 7) + ((lane >> 4) << 3);
            std::uint32_t bf[4];
            ldmatrix_x4(bf, sB + swz<D>(r, kk * 2 + ((lane >> 3) & 1)));
            mma_16816<BF16>(c[2 * np], a, bf[0], bf[1]);
            mma_16816<BF16>(c[2 * np + 1], a, bf[2], bf[3]);
        }
    }
}

template <int NT> __device__ __forceinline__ void bwd_zero(float (&c)[NT][4]) {
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[i][e] = 0.f;
}

// Byte offset of 16-byte chunk ch of row r in the dSᵀ tile (rows: keys; BM 16-bit query columns). 128-byte rows
// (BM = 64) use swz; 64-byte rows (BM = 32) swizzle by (r / 2) & 3, so that the 8 rows an ldmatrix phase (or a
// warp's 32-bit stores) touch land in 8 distinct 16-byte bank groups.
template <int BM> __device__ __forceinline__ std::uint32_t ds_swz(int r, int ch) {
    if constexpr (BM == 64) return swz<64>(r, ch);
    else {
        static_assert(BM == 32);
        return r * 64 + ((ch ^ ((r >> 1) & 3)) << 4);
    }
}

template <bool BF16, int D, bool HAS_DA, bool HAS_DY>
__global__ void __launch_bounds__(FlashBwdKeyShape<D>::THREADS) flash_bwd_key_kernel(const FlashBwdParams p) {
    using Shape = FlashBwdKeyShape<D>;
    using T = typename ElemType<BF16>::T;
    constexpr int BM = Shape::BM, BN = Shape::BN, THREADS = Shape::THREADS;
    constexpr int KTILE = BN * D * 2, QTILE = BM * D * 2, STAGE = (1 + HAS_DA + HAS_DY) * QTILE;
    constexpr int NT = BM / 8;  // 8-query column tiles of Sᵀ
    constexpr int KS = BM / 16; // k16 slices of the query reduction (dK, dV)
    constexpr int DT = D / 8;   // 8-wide column tiles of dK, dV
    constexpr int AV = HAS_DY ? DT : 1;
    static_assert(HAS_DA || HAS_DY);

    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int OFF_STAGES = (HAS_DY ? 2 : 1) * KTILE, OFF_DS = OFF_STAGES + 2 * STAGE, OFF_ROWS = OFF_DS + BN * BM * 2;
    const std::uint32_t base = smem_addr(smem);
    const std::uint32_t sK = base, sV = base + KTILE, sDS = base + OFF_DS;
    float* const srows = reinterpret_cast<float*>(smem + OFF_ROWS);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int f = blockIdx.y / p.heads, h = blockIdx.y % p.heads, b = blockIdx.z;
    const std::int64_t k0 = std::int64_t(blockIdx.x) * BN;

    const T* qb = view_row<const T>(p.q, b, h, f);
    const T* kb = view_row<const T>(p.k, b, h, f);
    const T* vb = HAS_DY ? view_row<const T>(p.v, b, h, f) : nullptr;
    const T* dab = HAS_DA ? view_row<const T>(p.da, b, h, f) : nullptr;
    const T* dyb = HAS_DY ? view_row<const T>(p.dy, b, h, f) : nullptr;
    const FlashBwdRows rows = bwd_rows(p, b, h, f);
    const int n_q = int((p.len_q + BM - 1) / BM);

    // One query tile: Q (, dA, dY) by cp.async, the row scalars by plain loads (visible after the next barrier).
    auto load_query_tile = [&](int t) {
        const std::uint32_t st = base + OFF_STAGES + (t & 1) * STAGE;
        const std::int64_t q0 = std::int64_t(t) * BM;
        bwd_load_rows<D, BM, THREADS>(st, qb, p.q.sr, q0, p.len_q, tid);
        if constexpr (HAS_DA) bwd_load_rows<D, BM, THREADS>(st + QTILE, dab, p.da.sr, q0, p.len_q, tid);
        if constexpr (HAS_DY) bwd_load_rows<D, BM, THREADS>(st + (1 + HAS_DA) * QTILE, dyb, p.dy.sr, q0, p.len_q, tid);
        if (tid < BM) {
            const FlashBwdRowScalars r = bwd_row_scalars(p, rows, q0 + tid);
            float* dst = srows + (t & 1) * kBwdRowScalars * BM;
            dst[tid] = r.gamma;
            dst[BM + tid] = r.lse;
            dst[2 * BM + tid] = r.drow;
            dst[3 * BM + tid] = r.dent;
        }
    };

    bwd_load_rows<D, BN, THREADS>(sK, kb, p.k.sr, k0, p.len_k, tid);
    if constexpr (HAS_DY) bwd_load_rows<D, BN, THREADS>(sV, vb, p.v.sr, k0, p.len_k, tid);
    load_query_tile(0);
    cp_async_commit();

    // This thread's key rows: warp·16 + lane/4 + 8r of the tile (C-fragment rows of Sᵀ).
    const int wrow = warp * 16;
    bool key_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) key_ok[r] = k0 + wrow + (lane >> 2) + 8 * r < p.len_k;

    float acc_k[1][DT][4], acc_v[1][AV][4];
    bwd_zero(acc_k[0]);
    bwd_zero(acc_v[0]);

    for (int t = 0; t < n_q; ++t) {
        if (t + 1 < n_q) { // prefetch the next query tile into the other stage
            load_query_tile(t + 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const std::uint32_t sQ = base + OFF_STAGES + (t & 1) * STAGE;
        const std::uint32_t sDA = sQ + QTILE, sDY = sQ + (1 + HAS_DA) * QTILE;
        const float* rv = srows + (t & 1) * kBwdRowScalars * BM;

        // Sᵀ = K·Qᵀ and dPᵀ (without the entropy term) = s·K·dAᵀ + V·dYᵀ for this warp's 16 keys × BM queries.
        float s[NT][4], dp[NT][4];
        bwd_zero(s);
        bwd_rows_dot<BF16, D, NT>(s, sK, wrow, sQ, lane);
        bwd_zero(dp);
        if constexpr (HAS_DA) {
            bwd_rows_dot<BF16, D, NT>(dp, sK, wrow, sDA, lane);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) dp[nt][e] *= p.scale;
        }
        if constexpr (HAS_DY) bwd_rows_dot<BF16, D, NT>(dp, sV, wrow, sDY, lane);

        // P and dS in place of Sᵀ and dPᵀ; the query (column) scalars come from shared memory, once per column.
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int col = c_frag_col(4 * nt + j, lane);
                const FlashBwdRowScalars r{rv[col], rv[BM + col], rv[2 * BM + col], rv[3 * BM + col]};
#pragma unroll
                for (int e = j; e < 4; e += 2) { // registers j and j + 2: key rows lane/4 and lane/4 + 8
                    float pr;
                    dp[nt][e] = bwd_ds(s[nt][e], dp[nt][e], r, key_ok[c_frag_half(e)], pr);
                    s[nt][e] = pr;
                }
            }

        // dV += Pᵀ·dY;  dK += Pᵀ·(s·dA) + dSᵀ·Q  (A operands straight from the C fragments).
        if constexpr (HAS_DY) {
            std::uint32_t pa[1][KS][4];
            pack_c_to_a<BF16, KS>(reinterpret_cast<const float(&)[8 * KS]>(s), pa[0]);
            warp_pv<BF16, D, 1, KS, true, false, AV, DT>(acc_v, acc_k, pa, sDY, 0u, lane);
        }
        if constexpr (HAS_DA) {
            float ps[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) ps[nt][e] = s[nt][e] * p.scale;
            std::uint32_t pa[1][KS][4];
            pack_c_to_a<BF16, KS>(reinterpret_cast<const float(&)[8 * KS]>(ps), pa[0]);
            warp_pv<BF16, D, 1, KS, false, true, AV, DT>(acc_v, acc_k, pa, 0u, sDA, lane);
        }
        std::uint32_t dsa[1][KS][4];
        pack_c_to_a<BF16, KS>(reinterpret_cast<const float(&)[8 * KS]>(dp), dsa[0]);
        warp_pv<BF16, D, 1, KS, false, true, AV, DT>(acc_v, acc_k, dsa, 0u, sQ, lane);

        if (!p.deterministic) {
            // dSᵀ → shared memory (keys × queries), then dq += dS·K over the block's BN keys: warp w takes
            // m-tile w % (BM/16) of the query tile and 4 of the head dim's 8-column tiles.
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    const int r = wrow + (lane >> 2) + 8 * hf;
                    *reinterpret_cast<std::uint32_t*>(smem + OFF_DS + ds_swz<BM>(r, nt) + 4 * (lane & 3)) =
                        pack2<BF16>(dp[nt][2 * hf], dp[nt][2 * hf + 1]);
                }
            __syncthreads();
            constexpr int MQ = BM / 16;
            static_assert(MQ * (D / 32) == Shape::WARPS);
            const int mq = warp % MQ, ng = warp / MQ;
            float dq[4][4];
            bwd_zero(dq);
#pragma unroll
            for (int ks = 0; ks < BN / 16; ++ks) {
                std::uint32_t a[4]; // dS rows mq·16.., keys ks·16..: the transpose of the stored dSᵀ
                ldmatrix_x4_trans(a, sDS + ds_swz<BM>(ks * 16 + (lane & 7) + ((lane >> 4) << 3), mq * 2 + ((lane >> 3) & 1)));
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    std::uint32_t kf[4];
                    ldmatrix_x4_trans(kf, sK + swz<D>(ks * 16 + (lane & 15), (ng * 2 + j) * 2 + (lane >> 4)));
                    mma_16816<BF16>(dq[2 * j], a, kf[0], kf[1]);
                    mma_16816<BF16>(dq[2 * j + 1], a, kf[2], kf[3]);
                }
            }
            float* dqb = view_row<float>(p.dq, b, h, f);
            const std::int64_t q0 = std::int64_t(t) * BM;
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const std::int64_t row = q0 + mq * 16 + (lane >> 2) + 8 * hf;
                if (row >= p.len_q) continue;
                float* dst = dqb + row * p.dq.sr;
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int e = 0; e < 2; ++e) atomicAdd(dst + (ng * 4 + j) * 8 + 2 * (lane & 3) + e, dq[j][2 * hf + e]);
            }
        }
        __syncthreads(); // the stage and the dSᵀ tile are refilled next
    }

    // dk += acc_k, dv += acc_v for the keys that exist (this block owns them: a plain read-modify-write), or
    // dk = acc_k, dv = acc_v when the launch is their first writer (dkdv_overwrite).
    float* dkb = view_row<float>(p.dk, b, h, f);
    float* dvb = HAS_DY ? view_row<float>(p.dv, b, h, f) : nullptr;
    const bool keep = !p.dkdv_overwrite; // uniform
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        if (!key_ok[hf]) continue;
        const std::int64_t key = k0 + wrow + (lane >> 2) + 8 * hf;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = dt * 8 + 2 * (lane & 3) + e;
                float& k_out = dkb[key * p.dk.sr + col];
                k_out = (keep ? k_out : 0.f) + acc_k[0][dt][2 * hf + e];
                if constexpr (HAS_DY) {
                    float& v_out = dvb[key * p.dv.sr + col];
                    v_out = (keep ? v_out : 0.f) + acc_v[0][dt][2 * hf + e];
                }
            }
    }
}

template <bool BF16, int D, bool HAS_DA, bool HAS_DY>
__global__ void __launch_bounds__(FlashBwdQueryShape<D>::THREADS) flash_bwd_query_kernel(const FlashBwdParams p) {
    using Shape = FlashBwdQueryShape<D>;
    using T = typename ElemType<BF16>::T;
    constexpr int BM = Shape::BM, BN = Shape::BN, THREADS = Shape::THREADS;
    constexpr int QTILE = BM * D * 2, KTILE = BN * D * 2, STAGE = (HAS_DY ? 2 : 1) * KTILE;
    constexpr int NT = BN / 8, KS = BN / 16, DT = D / 8;
    static_assert(HAS_DA || HAS_DY);

    extern __shared__ __align__(128) unsigned char smem[];
    const std::uint32_t sQ = smem_addr(smem), sDA = sQ + QTILE, sDY = sQ + (1 + HAS_DA) * QTILE;
    const std::uint32_t sKV = sQ + (1 + HAS_DA + HAS_DY) * QTILE;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int f = blockIdx.y / p.heads, h = blockIdx.y % p.heads, b = blockIdx.z;
    const std::int64_t q0 = std::int64_t(blockIdx.x) * BM;

    const T* kb = view_row<const T>(p.k, b, h, f);
    const T* vb = HAS_DY ? view_row<const T>(p.v, b, h, f) : nullptr;
    const int n_k = int((p.len_k + BN - 1) / BN);

    bwd_load_rows<D, BM, THREADS>(sQ, view_row<const T>(p.q, b, h, f), p.q.sr, q0, p.len_q, tid);
    if constexpr (HAS_DA) bwd_load_rows<D, BM, THREADS>(sDA, view_row<const T>(p.da, b, h, f), p.da.sr, q0, p.len_q, tid);
    if constexpr (HAS_DY) bwd_load_rows<D, BM, THREADS>(sDY, view_row<const T>(p.dy, b, h, f), p.dy.sr, q0, p.len_q, tid);
    bwd_load_rows<D, BN, THREADS>(sKV, kb, p.k.sr, 0, p.len_k, tid);
    if constexpr (HAS_DY) bwd_load_rows<D, BN, THREADS>(sKV + KTILE, vb, p.v.sr, 0, p.len_k, tid);
    cp_async_commit();

    // This thread's query rows: warp·16 + lane/4 + 8r of the tile (C-fragment rows of S).
    const int wrow = warp * 16;
    const FlashBwdRows rows = bwd_rows(p, b, h, f);
    FlashBwdRowScalars rsc[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) rsc[r] = bwd_row_scalars(p, rows, q0 + wrow + (lane >> 2) + 8 * r);

    float acc[1][DT][4], unused[1][1][4];
    bwd_zero(acc[0]);

    for (int n = 0; n < n_k; ++n) {
        const std::uint32_t sK = sKV + (n & 1) * STAGE, sV = sK + KTILE;
        if (n + 1 < n_k) {
            const std::uint32_t nK = sKV + ((n + 1) & 1) * STAGE;
            bwd_load_rows<D, BN, THREADS>(nK, kb, p.k.sr, std::int64_t(n + 1) * BN, p.len_k, tid);
            if constexpr (HAS_DY) bwd_load_rows<D, BN, THREADS>(nK + KTILE, vb, p.v.sr, std::int64_t(n + 1) * BN, p.len_k, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        float s[NT][4], dp[NT][4];
        bwd_zero(s);
        bwd_rows_dot<BF16, D, NT>(s, sQ, wrow, sK, lane);
        bwd_zero(dp);
        if constexpr (HAS_DA) {
            bwd_rows_dot<BF16, D, NT>(dp, sDA, wrow, sK, lane);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) dp[nt][e] *= p.scale;
        }
        if constexpr (HAS_DY) bwd_rows_dot<BF16, D, NT>(dp, sDY, wrow, sV, lane);

        const std::int64_t kv0 = std::int64_t(n) * BN;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool key_ok = kv0 + c_frag_col(4 * nt + e, lane) < p.len_k;
                float pr;
                dp[nt][e] = bwd_ds(s[nt][e], dp[nt][e], rsc[c_frag_half(e)], key_ok, pr);
            }
        std::uint32_t dsa[1][KS][4];
        pack_c_to_a<BF16, KS>(reinterpret_cast<const float(&)[8 * KS]>(dp), dsa[0]);
        warp_pv<BF16, D, 1, KS, false, true, 1, DT>(unused, acc, dsa, 0u, sK, lane); // dq += dS·K
        __syncthreads(); // this stage is refilled by the next prefetch
    }

    float* dqb = view_row<float>(p.dq, b, h, f);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const std::int64_t row = q0 + wrow + (lane >> 2) + 8 * hf;
        if (row >= p.len_q) continue;
        float* dst = dqb + row * p.dq.sr;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int e = 0; e < 2; ++e) dst[dt * 8 + 2 * (lane & 3) + e] += acc[0][dt][2 * hf + e];
    }
}

} // namespace vmonarch::cuda
