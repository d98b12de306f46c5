// Internal: the Hopper (sm_90a) flash backward kernel of spec §7.5 (R-step: row scale γ, K and/or V as
// value operands, the entropy term) and §7.2 (dense frame-0 recompute: dy = dO, drow = D). It computes what
// flash_bwd_key_kernel (cuda/bwd/flash_bwd_kernel.cuh) computes, same FlashBwdParams, with every product on
// wgmma. Per (segment, head, batch), x = γ·⟨q_i, k_l⟩, P = exp(x − lse_i):
//   dP = s·⟨da_i, k_l⟩ + ⟨dy_i, v_l⟩ + dent_i·(x − lse_i);   dS = γ·P∘(dP − drow_i)   (= γ·dX)
//   dk_l += s·Σ_i P·da_i + Σ_i dS·q_i;   dv_l += Σ_i P·dy_i;   dq_i += Σ_l dS·k_l.
//
// One block per (128-key tile, segment·head, batch); warpgroup w owns keys [64w, 64w + 64) of the tile (block
// shape and shared memory: flash_bwd_sm90_shape.cuh). Per query tile of 64 rows (Q, dA, dY and the row
// scalars double-buffered through cp.async):
//   Sᵀ = K_w·Qᵀ and dPᵀ = s·K_w·dAᵀ + V_w·dYᵀ      wgmma ss, m64n64 (keys × queries), K-major A and B;
//   Pᵀ, dSᵀ in registers: already the A operands of
//   dV_w += Pᵀ·dY,  dK_w += s·(Pᵀ·dA + (dS/s)ᵀ·Q)   wgmma rs, m64nD, B (dY, dA, Q) read MN-major (with dA,
//                                                   dK/s and dQ/s are accumulated: one A operand Pᵀ serves
//                                                   dV and dK, and s is applied once when adding them);
//   dSᵀ → shared memory as dS (queries × keys, K-major), then
//   dQ = dS·K                                       wgmma ss, m64n64, B (K) read MN-major: at d = 128
//                                                   warpgroup w takes head-dim columns [64w, 64w + 64) over
//                                                   all 128 keys, at d = 64 all columns over its own 64 keys;
//   dq += dQ through a swizzled shared-memory tile by TMA reduce-adds (cp.reduce.async.bulk.tensor .add, two
//   boxes of 64 rows × 32 f32 per warpgroup, one thread issuing; BwdSm90Maps::dq), skipped when deterministic:
//   the portable query-tile kernel adds dq then.
// dK, dV stay in registers and are added to the f32 accumulators once, by reductions (the block owns its keys).
//
// Masking (spec §7.5): a query row at or past len_q (zero-filled) gets γ = 0 and lse = +∞, a key at or past
// len_k (zero-filled) x = −∞: P = 0 there, and dS is taken as 0 wherever P = 0, after dX is formed
// (bwd_ds), so 0·(−∞) never reaches a sum. The kernel body exists only in the sm_90a pass.
//
// PREP (the prepared form, flash_bwd_sm90_rows.cuh): the row scalars are formed once per row (by the
// threads that loaded the row's raw operands, while the tile before it is on the tensor cores) into
// shared memory in the form the elementwise phase uses (one FFMA and one ex2 for P, two more instructions
// for dS, the s factors folded in), the key mask is applied on the last key tile only, and dS goes to
// shared memory by stmatrix. Without PREP every thread forms each column's scalars from the raw operands.
#pragma once

#include <cstdint>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/bwd/flash_bwd_kernel.cuh" // bwd_row_scalars, bwd_ds
#include "cuda/bwd/sm90/flash_bwd_sm90_rows.cuh"
#include "cuda/bwd/sm90/flash_bwd_sm90_shape.cuh"
#include "cuda/sm90/flash_sm90_shape.cuh" // VMONARCH_HOPPER_DEVICE, hopper_ptx.cuh, hopper_wgmma.cuh

#ifdef VMONARCH_HOPPER_DEVICE
#include "cuda/sm90/hopper_wgmma_ss_tb.cuh"
#endif

namespace vmonarch::cuda::hopper {

#ifdef VMONARCH_HOPPER_DEVICE
// Generic-proxy writes to shared memory (cp.async, st.shared) become visible to wgmma's operand reads
// (async proxy) after this fence and a barrier.
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// cp.async rows [row0, row0 + ROWS) of D 16-bit elements (row stride sr) into a 128-byte-swizzled tile:
// 16-byte chunk c of row r, in column block c / 8, lands at block·ROWS·128 + 128·r + 16·((c % 8) ^ (r % 8)).
// Rows at or past len are zero-filled.
template <int D, int ROWS, typename T>
__device__ __forceinline__ void bwd_sm90_load_rows(std::uint32_t dst, const T* base, std::int64_t sr, std::int64_t row0,
                                                   std::int64_t len, int tid) {
    constexpr int CH = D / 8, THREADS = BwdSm90Shape::THREADS;
    static_assert(ROWS * CH % THREADS == 0);
#pragma unroll
    for (int it = 0; it < ROWS * CH / THREADS; ++it) {
        const int c = tid + it * THREADS;
        const int r = c / CH, ch = c % CH;
        const std::int64_t row = row0 + r;
        const bool ok = row < len;
        const std::uint32_t off = std::uint32_t((ch >> 3) * ROWS * 128 + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
        cp_async_16(dst + off, ok ? base + row * sr + ch * 8 : base, ok ? 16 : 0);
    }
}

// 4-byte cp.async (zero-filled when src_bytes = 0).
__device__ __forceinline__ void cp_async_4(std::uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// This thread's bulk operations have read their shared-memory sources (the buffer may be rewritten).
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }

// dQ tile of a warpgroup in shared memory (sdq, 1024-byte aligned): element (r, c) of its BM × DQ_COLS f32 at
// (c / 32)·BM·128 + 128·r + 16·(((c % 32) / 4) ^ (r % 8)) + 4·(c % 4), the 128-byte swizzle of BwdSm90Maps::dq's
// boxes. v (warp wq's m64n64 accumulator fragment, rows 16·wq + lane / 4 (+ 8), column pairs) times mult goes
// in by float2 stores, each warp store spread over all 32 banks. Made visible to the TMA (async proxy) here;
// the caller's barrier then lets one thread issue bwd_sm90_dq_reduce.
__device__ __forceinline__ void bwd_sm90_dq_store(unsigned char* sdq, const float (&v)[32], float mult, int wq, int lane) {
    constexpr int BM = BwdSm90Shape::BM;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int r = 16 * wq + (lane >> 2) + 8 * hf;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const int i = 4 * nt + 2 * hf;
            const int c = c_frag_col(i, lane);
            const int off = (c >> 5) * BM * 128 + r * 128 + ((((c & 31) >> 2) ^ (r & 7)) << 4) + ((c & 3) << 2);
            *reinterpret_cast<float2*>(sdq + off) = make_float2(v[i] * mult, v[i + 1] * mult);
        }
    }
    fence_proxy_async_smem();
}

// dq[rows row0 .. row0 + BM, columns col0 .. col0 + DQ_COLS) of (segment f, head h, batch b) += the dQ tile at
// sdq_addr: DQ_COLS / 32 TMA reduce-adds (f32, clipped at len_q by the map), issued by the calling thread into
// its bulk group (bulk_wait_read before the tile is rewritten).
__device__ __forceinline__ void bwd_sm90_dq_reduce(const BwdSm90Maps& m, std::uint32_t sdq_addr, int col0, int row0, int f, int h, int b) {
    constexpr int BM = BwdSm90Shape::BM, BOX = BwdSm90Shape::DQ_BOX_COLS;
    int x[5] = {0, 0, 0, 0, 0};
#pragma unroll
    for (int i = 1; i < 5; ++i) x[i] = m.cdq.row == i ? row0 : m.cdq.seg == i ? f : m.cdq.head == i ? h : b;
#pragma unroll
    for (int j = 0; j < BwdSm90Shape::DQ_COLS / BOX; ++j)
        asm volatile("cp.reduce.async.bulk.tensor.5d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3, %4, %5}], [%6];\n" ::"l"(
                         reinterpret_cast<std::uint64_t>(&m.dq)),
                     "r"(col0 + j * BOX), "r"(x[1]), "r"(x[2]), "r"(x[3]), "r"(x[4]), "r"(sdq_addr + std::uint32_t(j * BM * 128))
                     : "memory");
    bulk_commit();
}

// The scalars of query row i from its raw operands in shared memory (lse, cR, drow, dent: what
// bwd_row_scalars computes from global memory, with γ = s·(1 / max(cR, clamp)), the reciprocal correctly
// rounded: within an ulp of the quotient, and cheap enough for every thread to take per column): rows past
// len_q and rows whose lse is not finite get γ = 0, lse = +∞.
__device__ __forceinline__ FlashBwdRowScalars bwd_sm90_row_scalars(const FlashBwdParams& p, const float* raw, int col, std::int64_t i,
                                                                   bool has_rs, bool has_dent) {
    constexpr int BM = BwdSm90Shape::BM;
    FlashBwdRowScalars v{0.f, INFINITY, 0.f, 0.f};
    const float lse = raw[col];
    if (i >= p.len_q || !isfinite(lse)) return v;
    if (has_rs) {
        float c = fmaxf(raw[BM + col], p.clamp);
        c = c > 0.f ? c : FLT_MIN;
        v.gamma = p.scale * __frcp_rn(c);
    } else {
        v.gamma = p.qk_scale;
    }
    v.lse = lse;
    v.drow = raw[2 * BM + col];
    v.dent = has_dent ? raw[3 * BM + col] : 0.f;
    return v;
}

// The block's key epilogue: dk += out_s·acc_k and (HAS_DY) dv += acc_v for this thread's key rows
// krow0 and krow0 + 8 of the tile that exist (m64nD accumulator fragments, columns i and i + 1 adjacent).
// The block owns these keys within the launch, so each element gets one reduction; other launches add to
// the same accumulators in stream order. Reductions instead of a read-modify-write: nothing waits for the
// loads (at 23 query tiles per block the read-modify-write was a fifth of the kernel's warp time). With
// dkdv_overwrite (the launch is their first writer) they are stored instead.
template <int NA, int NV, bool HAS_DY>
__device__ __forceinline__ void bwd_sm90_add_dkdv(const FlashBwdParams& p, int b, int h, std::int64_t f, std::int64_t key0,
                                                  const bool (&key_ok)[2], const float (&acc_k)[NA], const float (&acc_v)[NV],
                                                  float out_s, int lane) {
    float* dkb = view_row<float>(p.dk, b, h, f);
    float* dvb = HAS_DY ? view_row<float>(p.dv, b, h, f) : nullptr;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        if (!key_ok[hf]) continue;
        const std::int64_t key = key0 + 8 * hf;
#pragma unroll
        for (int nt = 0; nt < NA / 4; ++nt) {
            const int i = 4 * nt + 2 * hf;
            const int col = c_frag_col(i, lane);
            float* const k_out = dkb + key * p.dk.sr + col;
            if (p.dkdv_overwrite) *reinterpret_cast<float2*>(k_out) = make_float2(acc_k[i] * out_s, acc_k[i + 1] * out_s);
            else red_add_f32x2(k_out, acc_k[i] * out_s, acc_k[i + 1] * out_s);
            if constexpr (HAS_DY) {
                float* const v_out = dvb + key * p.dv.sr + col;
                if (p.dkdv_overwrite) *reinterpret_cast<float2*>(v_out) = make_float2(acc_v[i], acc_v[i + 1]);
                else red_add_f32x2(v_out, acc_v[i], acc_v[i + 1]);
            }
        }
    }
}

template <int N> __device__ __forceinline__ void bwd_sm90_fence(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) reg_fence(r[i]);
}
template <int KS> __device__ __forceinline__ void bwd_sm90_fence(std::uint32_t (&r)[KS][4]) {
#pragma unroll
    for (int k = 0; k < KS; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) reg_fence(r[k][e]);
}
#endif

template <bool BF16, int D, bool HAS_DA, bool HAS_DY, bool PREP>
__global__ void __launch_bounds__(BwdSm90Shape::THREADS, 1) flash_bwd_sm90_kernel(const FlashBwdParams p, const __grid_constant__ BwdSm90Maps maps) {
#ifdef VMONARCH_HOPPER_DEVICE
    static_assert(D == 64 || D == 128);
    static_assert(HAS_DA || HAS_DY);
    using Shape = BwdSm90Shape;
    using L = BwdSm90Layout<D, HAS_DA, HAS_DY>;
    using T = typename ElemType<BF16>::T;
    constexpr int BM = Shape::BM, BN = Shape::BN;
    constexpr int NS = BM / 2;  // Sᵀ / dPᵀ accumulator registers (m64n64)
    constexpr int KS = BM / 16; // k16 slices of the query reduction (dK, dV)
    constexpr int NA = D / 2;   // dK / dV accumulator registers (m64nD)

    constexpr bool kBroadcastWarp = bwd_sm90_broadcast_warp(D, HAS_DA, HAS_DY, false);
    extern __shared__ unsigned char smem_raw[];
    const std::uint32_t raw = smem_addr(smem_raw);
    const std::uint32_t base = (raw + 1023u) & ~1023u;
    const std::uint32_t sK = base, sV = base + L::OFF_V, sDS = base + L::OFF_DS;
    const float* const srows = reinterpret_cast<const float*>(smem_raw + (base - raw) + L::OFF_ROWS);
    const std::uint32_t srows_addr = base + L::OFF_ROWS;
    [[maybe_unused]] unsigned char* const ds_bytes = smem_raw + (base - raw) + L::OFF_DS;
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
    // One query tile: Q (, dA, dY) and the raw row operands lse, cR, drow, dent, all by cp.async (zero-filled
    // past len_q). PREP: the row operands first, in their own commit group (so that their thread can wait
    // for them alone and prepare the row), then the tiles.
    const auto load_query_tile = [&](int t) {
        const std::uint32_t st = stage(t);
        const std::int64_t q0 = std::int64_t(t) * BM;
        if constexpr (!PREP) {
            bwd_sm90_load_rows<D, BM>(st, qb, p.q.sr, q0, p.len_q, tid);
            if constexpr (HAS_DA) bwd_sm90_load_rows<D, BM>(st + L::OFF_DA, dab, p.da.sr, q0, p.len_q, tid);
            if constexpr (HAS_DY) bwd_sm90_load_rows<D, BM>(st + L::OFF_DY, dyb, p.dy.sr, q0, p.len_q, tid);
        }
        if (tid < BM) {
            const std::int64_t i = q0 + tid;
            const bool ok = i < p.len_q;
            const std::uint32_t dst = srows_addr + std::uint32_t((t % Shape::STAGES) * L::ROWS_STAGE + tid) * 4u;
            cp_async_4(dst, ok ? rows.lse + i * p.lse.sr : rows.lse, ok ? 4 : 0);
            if (has_rs) cp_async_4(dst + BM * 4, ok ? rows.rs + i * p.rs.sr : rows.rs, ok ? 4 : 0);
            cp_async_4(dst + 2 * BM * 4, ok ? rows.drow + i * p.drow.sr : rows.drow, ok ? 4 : 0);
            if (has_dent) cp_async_4(dst + 3 * BM * 4, ok ? rows.dent + i * p.dent.sr : rows.dent, ok ? 4 : 0);
        }
        if constexpr (PREP) {
            cp_async_commit();
            bwd_sm90_load_rows<D, BM>(st, qb, p.q.sr, q0, p.len_q, tid);
            if constexpr (HAS_DA) bwd_sm90_load_rows<D, BM>(st + L::OFF_DA, dab, p.da.sr, q0, p.len_q, tid);
            if constexpr (HAS_DY) bwd_sm90_load_rows<D, BM>(st + L::OFF_DY, dyb, p.dy.sr, q0, p.len_q, tid);
        }
    };
    // PREP: thread r < BM prepares row r of tile t from the raw operands it loaded (their commit group is the
    // one before the last), visible to every thread after the next block barrier.
    const auto prepare_rows = [&](int t) {
        if (tid < BM) {
            cp_async_wait<1>();
            const float* rv = srows + (t % Shape::STAGES) * L::ROWS_STAGE;
            bwd_sm90_prepare_row<HAS_DA, HAS_DY>(p, rv, tid, std::int64_t(t) * BM + tid < p.len_q, has_rs, has_dent, prep4_at(t), prep_e_at(t));
        }
    };

    if constexpr (PREP) load_query_tile(0);
    bwd_sm90_load_rows<D, BN>(sK, kb, p.k.sr, k0, p.len_k, tid);
    if constexpr (HAS_DY) bwd_sm90_load_rows<D, BN>(sV, vb, p.v.sr, k0, p.len_k, tid);
    if constexpr (!PREP) load_query_tile(0);
    cp_async_commit();
    if constexpr (PREP) prepare_rows(0);
    // PREP: only the last key tile of a segment has keys past len_k.
    [[maybe_unused]] const bool full_keys = k0 + BN <= p.len_k;

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

    // With dA, dK and dQ are accumulated divided by s (see below) and multiplied by out_s = s when added.
    [[maybe_unused]] const float inv_s = HAS_DA ? 1.f / p.scale : 1.f;
    const float out_s = HAS_DA ? p.scale : 1.f;

    // This warpgroup's 64 key rows inside each column block of K and V (K-major A operands).
    const std::uint32_t sKw = sK + std::uint32_t(wg) * 64u * 128u, sVw = sV + std::uint32_t(wg) * 64u * 128u;

    for (int t = 0; t < n_q; ++t) {
        // Tile t is the only group in flight. After the barrier every thread is done with tile t − 1, whose
        // stage, dS tile and raw row operands may then be refilled: the next tile's loads go out now.
        cp_async_wait<0>();
        fence_proxy_async_smem();
        __syncthreads();
        if (t + 1 < n_q) {
            load_query_tile(t + 1);
            cp_async_commit();
        }
        const std::uint32_t sQ = stage(t), sDA = sQ + L::OFF_DA, sDY = sQ + L::OFF_DY;
        [[maybe_unused]] const float* rv = srows + (t % Shape::STAGES) * L::ROWS_STAGE;
        [[maybe_unused]] const float4* prep4 = prep4_at(t);
        [[maybe_unused]] const float* prep_e = prep_e_at(t);

        // Sᵀ = K_w·Qᵀ; dPᵀ = s·K_w·dAᵀ (+ V_w·dYᵀ, after the scaling) without the entropy term. With both
        // values, K_w·dAᵀ goes first in its own group and is scaled while Sᵀ runs.
        float s[NS], dp[NS];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            if constexpr (HAS_DA) Wgmma<BM, BF16>::ss(dp, desc_k_major(sKw, BN, kk * 16), desc_k_major(sDA, BM, kk * 16), kk != 0);
            else Wgmma<BM, BF16>::ss(dp, desc_k_major(sVw, BN, kk * 16), desc_k_major(sDY, BM, kk * 16), kk != 0);
        }
        wgmma_commit();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            Wgmma<BM, BF16>::ss(s, desc_k_major(sKw, BN, kk * 16), desc_k_major(sQ, BM, kk * 16), kk != 0);
        wgmma_commit();
        // (PREP with dA only: dPᵀ stays unscaled, the prepared row scalars carry the 1/s.)
        constexpr bool SCALE_DP = HAS_DA && (HAS_DY || !PREP);
        if constexpr (SCALE_DP) {
            wgmma_wait<1>(); // dPᵀ's first part
            bwd_sm90_fence(dp);
#pragma unroll
            for (int i = 0; i < NS; ++i) dp[i] *= p.scale;
        }
        if constexpr (HAS_DA && HAS_DY) {
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk)
                Wgmma<BM, BF16>::ss(dp, desc_k_major(sVw, BN, kk * 16), desc_k_major(sDY, BM, kk * 16), 1);
            wgmma_commit();
        }
        wgmma_wait<0>();
        bwd_sm90_fence(s);
        bwd_sm90_fence(dp);

        // P (in s) and dS (in dp; PREP: dS' = dS/s with dA); the query (column) scalars from shared memory,
        // once per column.
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
                    for (int e = j; e < 4; e += 2) { // registers j and j + 2: keys lane/4 and lane/4 + 8
                        float pr;
                        dp[4 * nt + e] = bwd_ds(s[4 * nt + e], dp[4 * nt + e], r, key_ok[c_frag_half(e)], pr);
                        s[4 * nt + e] = pr;
                    }
                }
        }

        // dV += Pᵀ·dY;  dK' += Pᵀ·dA + (dS/s)ᵀ·Q  (A operands straight from the accumulator layout; with dA the
        // kernel accumulates dK' = dK/s and dQ' = dQ/s, and multiplies by s once when adding them).
        std::uint32_t pa[KS][4], dsa[KS][4];
        pack_c_to_a<BF16, KS>(s, pa);
        if constexpr (HAS_DA && !PREP) {
#pragma unroll
            for (int i = 0; i < NS; ++i) dp[i] *= inv_s;
        }
        pack_c_to_a<BF16, KS>(dp, dsa);
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

        // PREP: the next tile's rows, prepared while dK and dV run.
        if constexpr (PREP) {
            if (t + 1 < n_q) prepare_rows(t + 1);
        }

        if (!p.deterministic) {
            // dSᵀ → the dS tile (while dK, dV run): element (query q, key 64·wg + kl) at column block wg, row q,
            // 16-bit position kl % 8 of chunk (kl / 8) ^ (q % 8). dsa[ks][e] packs queries c, c + 1 of one key.
            if constexpr (PREP) {
                bwd_sm90_store_ds<KS>(sDS, wg, wq, lane, dsa);
            } else {
#pragma unroll
                for (int ks = 0; ks < KS; ++ks)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = 8 * ks + 2 * e; // accumulator register of the low half
                        const int q = c_frag_col(i, lane), kl = 16 * wq + (lane >> 2) + 8 * c_frag_half(i);
                        const std::uint32_t v = dsa[ks][e];
#pragma unroll
                        for (int hf = 0; hf < 2; ++hf) {
                            const int qq = q + hf;
                            const int off = wg * BM * 128 + qq * 128 + (((kl >> 3) ^ (qq & 7)) << 4) + (kl & 7) * 2;
                            *reinterpret_cast<std::uint16_t*>(ds_bytes + off) = std::uint16_t(hf ? v >> 16 : v & 0xffffu);
                        }
                    }
            }
            bulk_wait_read(); // the previous tile's dQ rows have left this warpgroup's dQ tile
            fence_proxy_async_smem();
            __syncthreads();
            wgmma_wait<0>(); // dK, dV: their A registers are free after this
            bwd_sm90_fence(acc_k);
            bwd_sm90_fence(acc_v);
            bwd_sm90_fence(pa);
            bwd_sm90_fence(dsa);

            float dq[32];
            wgmma_fence();
            if constexpr (D == 128) {
#pragma unroll
                for (int ks = 0; ks < BN / 16; ++ks)
                    WgmmaSsTb<64, BF16>::ss(dq, desc_k_major(sDS, BM, ks * 16), desc_mn_major(sK + std::uint32_t(wg) * BN * 128u, BN, ks * 16),
                                            ks != 0);
            } else {
#pragma unroll
                for (int ks = 0; ks < 4; ++ks)
                    WgmmaSsTb<64, BF16>::ss(dq, desc_k_major(sDS, BM, 64 * wg + ks * 16), desc_mn_major(sK, BN, 64 * wg + ks * 16), ks != 0);
            }
            wgmma_commit();
            wgmma_wait<0>();
            bwd_sm90_fence(dq);
            bwd_sm90_fence(acc_k);
            bwd_sm90_fence(acc_v);

            // dQ (times s with dA) → this warpgroup's dQ tile → dq by its TMA reduce-adds (one thread).
            bwd_sm90_dq_store(sdq, dq, out_s, wq, lane);
            named_bar_sync(1 + wg, 128);
            if ((tid & 127) == 0) bwd_sm90_dq_reduce(maps, sdq_addr, D == 128 ? 64 * wg : 0, t * BM, f, h, b);
        } else {
            wgmma_wait<0>();
            bwd_sm90_fence(acc_k);
            bwd_sm90_fence(acc_v);
            bwd_sm90_fence(pa);
            bwd_sm90_fence(dsa);
        }
    }

    bwd_sm90_add_dkdv<NA, sizeof(acc_v) / sizeof(float), HAS_DY>(p, b, h, f, k0 + krow, key_ok, acc_k, acc_v, out_s, lane);
    // The dQ tile's last reduce-adds have read it, so the block may leave: their writes to dq are complete by
    // the end of the grid, before any later launch on the stream reads dq.
    bulk_wait_read();
#endif
}

} // namespace vmonarch::cuda::hopper
