// Internal: the L-step backward (spec §7 steps 3, 4, 6) on CUDA cores in f32, one block per (position j,
// head, batch). Per position the block holds Q[·][j] and aL[·][j] (16-bit, as stored) and either Y, dO
// (last L-step) or daR (earlier L-steps, f32) in shared memory, recomputes z[i][k] = ⟨Q_i, aL_k⟩ − cL_k and
// L = softmax_k z (T×T, f32), and forms
//   last:    dY_k = Σ_i L[i][k]·dO_i,              dZ = L∘(dL − D_i),    dL[i][k] = ⟨dO_i, Y_k⟩
//   earlier: dcR_k = −⟨aR_k, daR_k⟩/cR_k (cR_k > clamp, else 0),       dL[i][k] = ⟨Q_i, daR_k⟩ + dcR_k,
//            dQ_i += G_i = Σ_k L[i][k]·daR_k,  D_L,i = ⟨Q_i, G_i⟩ + Σ_k L[i][k]·dcR_k,  dZ = L∘(dL − D_L,i)
//   both:    dQ_i += Σ_k dZ[i][k]·aL_k,  daL_k = Σ_i dZ[i][k]·Q_i,  dcL_k = −Σ_i dZ[i][k],
//            D_R,k = ⟨daL_k, aL_k⟩ + dcL_k·cL_k + [last]·⟨dY_k, Y_k⟩   (the R-step backward's row constant, §7.5)
// D_R is formed from daL and dY as rounded to the input dtype, i.e. from the values the R-step backward reads.
// (dcR is also 0 where cR ≤ 0, which only a clamp ≤ 0 lets through: no division by zero.)
// The five T×T×d products are shared-memory passes of two kinds: Gram passes (⟨row, row⟩ over d; a 2×2
// tile of (i, k) per thread) and mixing passes (a T×T weight times T rows; two output rows × 8 head-dim
// values per thread), so every chunk read from shared memory and widened to f32 feeds two products.
// Every input row is read from global memory once (16-byte chunks of consecutive elements); the only
// repeated global traffic is the f32 dQ row (read-modify-write, twice in the earlier L-steps) and D_L,
// parked in the drow_r rows between two passes (they are overwritten with D_R at the end); the per-frame
// scalars cL and D are loaded at each use (L1 hits).
// With the frame-0 recompute on (zero_frame0), frame 0's dO and D rows are read as 0 (§7.2): those rows then
// give dZ = 0 and no dY. With dq_overwrite the last L-step stores its dQ rows instead of adding into them.
// Exact key groups (spec §3b, lstep_exact_mask.cuh): the key frames exact for row i get z = −inf (L = 0), the
// rows of key frames no row fits are zero-filled instead of read, and in the last L-step of a merged forward
// L = exp(z − lse) with the row's merged lse (the Monarch part's merge weight folded in, spec §7).
// Shared memory is (2·T·d + T² + T)·4 bytes, the forward L-step's own bound (lstep_smem_bytes), so every
// T the forward takes, the backward takes too.
#pragma once

#include <cstdint>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/common/mma_ptx.cuh"
#include "cuda/lstep/lstep_exact_mask.cuh"

namespace vmonarch::cuda {

constexpr int kLStepBwdThreads = 128;

constexpr std::int64_t lstep_bwd_smem_bytes(std::int64_t T, int D) { return (2 * T * D + T * T + T) * 4; }

namespace lstep_bwd {

constexpr int NT = kLStepBwdThreads;

// 8 consecutive 16-bit values → 8 floats.
template <bool BF16>
__device__ __forceinline__ void unpack8(uint4 v, float (&f)[8]) {
    const float2 a = unpack2<BF16>(v.x), b = unpack2<BF16>(v.y), c = unpack2<BF16>(v.z), d = unpack2<BF16>(v.w);
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y; f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}

// 8 floats → 8 consecutive 16-bit values (one 16-byte chunk).
template <bool BF16>
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
    return make_uint4(pack2<BF16>(f[0], f[1]), pack2<BF16>(f[2], f[3]), pack2<BF16>(f[4], f[5]), pack2<BF16>(f[6], f[7]));
}

// Σ_e x_e·w_e over two chunks of 8 16-bit values.
template <bool BF16>
__device__ __forceinline__ float dot8(uint4 x, uint4 w) {
    float a[8], c[8], acc = 0.f;
    unpack8<BF16>(x, a);
    unpack8<BF16>(w, c);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(a[e], c[e], acc);
    return acc;
}

// Σ_e x_e·w[e], x a chunk of 8 16-bit values.
template <bool BF16>
__device__ __forceinline__ float dot8f(uint4 x, const float (&w)[8]) {
    float a[8], acc = 0.f;
    unpack8<BF16>(x, a);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(a[e], w[e], acc);
    return acc;
}

// Chunk ch (8 head-dim values) of shared-memory row r as floats: rows of D 16-bit values (uint4 chunks) or,
// with F32, of D floats.
template <bool BF16, int D, bool F32>
__device__ __forceinline__ void load_chunk(const void* rows, int r, int ch, float (&f)[8]) {
    if constexpr (F32) {
        const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(rows) + r * D + ch * 8);
        const float4 a = p[0], c = p[1];
        f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = c.x; f[5] = c.y; f[6] = c.z; f[7] = c.w;
    } else {
        unpack8<BF16>(static_cast<const uint4*>(rows)[r * (D / 8) + ch], f);
    }
}

// Sum over GROUP consecutive lanes (a power of two ≤ 32, aligned); all 32 lanes call.
template <int GROUP>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = 1; o < GROUP; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// dq row chunk (8 f32 values, 16-byte aligned in global memory) += acc.
__device__ __forceinline__ void add_to_global8(float* dst, const float (&acc)[8]) {
    float4* q = reinterpret_cast<float4*>(dst);
    float4 d0 = q[0], d1 = q[1];
    d0.x += acc[0]; d0.y += acc[1]; d0.z += acc[2]; d0.w += acc[3];
    d1.x += acc[4]; d1.y += acc[5]; d1.z += acc[6]; d1.w += acc[7];
    q[0] = d0;
    q[1] = d1;
}

// dq row chunk (8 f32 values, 16-byte aligned in global memory) = acc.
__device__ __forceinline__ void store_to_global8(float* dst, const float (&acc)[8]) {
    float4* q = reinterpret_cast<float4*>(dst);
    q[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    q[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
}

// Gram pass: epi(i, k, ⟨X_i, W_k⟩) for all i, k < T; X rows 16-bit, W rows 16-bit or f32 (W_F32), both in
// shared memory. A thread takes a 2×2 (i, k) tile (rows clamped to T − 1 at an odd edge, those results
// dropped), so that each loaded chunk feeds two products; chunks are visited starting at the tile's column
// index, so the threads of one access phase hit different bank groups.
template <bool BF16, int D, bool W_F32, typename Epi>
__device__ __forceinline__ void gram_pass(const uint4* X, const void* W, int T, Epi&& epi) {
    constexpr int CH = D / 8;
    const int TI = (T + 1) >> 1;
    for (int t = threadIdx.x; t < TI * TI; t += NT) {
        const int ti = t / TI, tk = t - ti * TI;
        const int i0 = 2 * ti, k0 = 2 * tk, i1 = min(i0 + 1, T - 1), k1 = min(k0 + 1, T - 1);
        float a00 = 0.f, a01 = 0.f, a10 = 0.f, a11 = 0.f;
#pragma unroll 2
        for (int c = 0; c < CH; ++c) {
            const int cc = (c + tk) & (CH - 1);
            float x0[8], x1[8], w0[8], w1[8];
            load_chunk<BF16, D, false>(X, i0, cc, x0);
            load_chunk<BF16, D, false>(X, i1, cc, x1);
            load_chunk<BF16, D, W_F32>(W, k0, cc, w0);
            load_chunk<BF16, D, W_F32>(W, k1, cc, w1);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                a00 = fmaf(x0[e], w0[e], a00);
                a01 = fmaf(x0[e], w1[e], a01);
                a10 = fmaf(x1[e], w0[e], a10);
                a11 = fmaf(x1[e], w1[e], a11);
            }
        }
        epi(i0, k0, a00);
        if (k0 + 1 < T) epi(i0, k0 + 1, a01);
        if (i0 + 1 < T) {
            epi(i0 + 1, k0, a10);
            if (k0 + 1 < T) epi(i0 + 1, k0 + 1, a11);
        }
    }
}

// Mixing pass over output rows r < T, two rows (r0 = 2·rp, r0 + 1) and one chunk ch of 8 head-dim values
// per thread:  acc_u = Σ_s M(r_u, s)·Z_s[ch],  msum_u = Σ_s M(r_u, s),  with M(r, s) = S[s][r] (TRANS) or
// S[r][s] of the T×T matrix S, Z rows 16-bit or f32 (Z_F32) in shared memory. The CH lanes of one row pair
// are consecutive and aligned and every lane runs the same number of steps, so the epilogue
// epi(r0, on0, on1, ch, acc0, acc1, msum0, msum1) may reduce over a row with group_sum<CH>
// (on_u: row r_u exists).
template <bool BF16, int D, bool Z_F32, bool TRANS, typename Epi>
__device__ __forceinline__ void mix_pass(const float* S, const void* Z, int T, Epi&& epi) {
    constexpr int CH = D / 8;
    const int pairs = (T + 1) >> 1, steps = (pairs * CH + NT - 1) / NT;
    for (int st = 0; st < steps; ++st) {
        const int w = st * NT + int(threadIdx.x), rp = w / CH, ch = w - rp * CH, r0 = 2 * rp;
        const bool on0 = r0 < T, on1 = r0 + 1 < T;
        float acc0[8], acc1[8], m0s = 0.f, m1s = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc0[e] = acc1[e] = 0.f;
        if (on0) {
            const int r1 = on1 ? r0 + 1 : r0;
            const float keep1 = on1 ? 1.f : 0.f;
            for (int s = 0; s < T; ++s) {
                const float m0 = TRANS ? S[s * T + r0] : S[r0 * T + s];
                const float m1 = keep1 * (TRANS ? S[s * T + r1] : S[r1 * T + s]);
                float z[8];
                load_chunk<BF16, D, Z_F32>(Z, s, ch, z);
                m0s += m0;
                m1s += m1;
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    acc0[e] = fmaf(m0, z[e], acc0[e]);
                    acc1[e] = fmaf(m1, z[e], acc1[e]);
                }
            }
        }
        epi(r0, on0, on1, ch, acc0, acc1, m0s, m1s);
    }
}

// Rows r < T of view (b, h, frame r, position j), ROW_BYTES each, into consecutive rows of dst (cp.async).
// With fitted_only, the rows of key frames no query frame fits (spec §3b) are zero-filled, their source not read.
// With zero_row0, row 0 is zero-filled as well.
template <int ROW_BYTES>
__device__ __forceinline__ void gather_rows_async(void* dst, const RowView& v, int elem_bytes, int b, int h,
                                                  std::int64_t j, int T, bool fitted_only = false,
                                                  LStepMask mask = {0, -1}, bool zero_row0 = false) {
    constexpr int CH = ROW_BYTES / 16;
    const std::uint32_t base = smem_addr(dst);
    for (int c = threadIdx.x; c < T * CH; c += NT) {
        const int r = c / CH, ch = c - r * CH;
        const bool read = (!fitted_only || mask.fitted(r, T)) && !(zero_row0 && r == 0);
        const auto* row = static_cast<const unsigned char*>(v.ptr) +
                          (b * v.sb + h * v.sh + std::int64_t(read ? r : 0) * v.sf + j * v.sr) * elem_bytes;
        cp_async_16(base + std::uint32_t(c) * 16u, row + ch * 16, read ? 16 : 0);
    }
}

} // namespace lstep_bwd

template <bool BF16, int D, bool LAST>
__global__ void __launch_bounds__(kLStepBwdThreads) lstep_bwd_kernel(const LStepBwdParams p) {
    using namespace lstep_bwd;
    using E = typename ElemType<BF16>::T;
    constexpr int CH = D / 8, WARPS = kLStepBwdThreads / 32;
    static_assert(NT % CH == 0 && 32 % CH == 0, "row groups of CH lanes must stay aligned across loop steps");
    extern __shared__ float4 lstep_bwd_smem[];
    const int T = int(p.frames);
    const std::int64_t j = blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    uint4* sQ = reinterpret_cast<uint4*>(lstep_bwd_smem);   // [T][CH]: Q_i (16-bit)
    uint4* sA = sQ + T * CH;                                 // [T][CH]: aL_k (16-bit)
    uint4* sY = sA + T * CH;                                 // last: [T][CH] Y_k (16-bit)
    uint4* sG = sY + T * CH;                                 // last: [T][CH] dO_i (16-bit)
    float* sR = reinterpret_cast<float*>(sY);                // earlier: [T][D] daR_k (f32), in place of Y, dO
    float* sL = reinterpret_cast<float*>(sG + T * CH);       // [T][T]: z, then L, then dZ
    float* sV = sL + T * T;                                  // [T]: last ⟨dY_k, Y_k⟩; earlier dcR_k

    const LStepMask mask = lstep_mask(p);
    const bool masked = mask.any(); // uniform
    const auto fitted = [&](int k) { return !masked || mask.fitted(k, T); };
    lstep_bwd::gather_rows_async<D * 2>(sQ, p.q, 2, b, h, j, T);
    lstep_bwd::gather_rows_async<D * 2>(sA, p.a, 2, b, h, j, T, masked, mask);
    if constexpr (LAST) {
        lstep_bwd::gather_rows_async<D * 2>(sY, p.y, 2, b, h, j, T, masked, mask);
        lstep_bwd::gather_rows_async<D * 2>(sG, p.dout, 2, b, h, j, T, false, mask, p.zero_frame0);
    } else {
        lstep_bwd::gather_rows_async<D * 4>(sR, p.dar, 4, b, h, j, T);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // z[i][k] = ⟨Q_i, aL_k⟩ − cL_k, −inf for the key frames exact for query frame i (cL not read there).
    gram_pass<BF16, D, false>(sQ, sA, T, [&](int i, int k, float dot) {
        sL[i * T + k] = masked && mask.exact(i, k) ? -INFINITY : dot - *view_row<const float>(p.c, b, h, k, j);
    });
    if constexpr (!LAST) {
        // dcR_k = −⟨aR_k, daR_k⟩ / cR_k where cR_k > clamp, else 0 (X depends on aR, cR only through aR/cR,
        // and the clamp's gradient is 0 at and below it); a warp per key frame, lanes over the head dim.
        for (int k = warp; k < T; k += WARPS) {
            if (!fitted(k)) { // no row fits k: nothing flows through its aR, cR (not read)
                if (lane == 0) sV[k] = 0.f;
                continue;
            }
            const E* ar = view_row<const E>(p.ar, b, h, k, j);
            float acc = 0.f;
            for (int e = 2 * lane; e < D; e += 64) {
                const float2 a2 = unpack2<BF16>(*reinterpret_cast<const std::uint32_t*>(ar + e));
                acc = fmaf(a2.x, sR[k * D + e], acc);
                acc = fmaf(a2.y, sR[k * D + e + 1], acc);
            }
            acc = group_sum<32>(acc);
            if (lane == 0) {
                const float cr = *view_row<const float>(p.cr, b, h, k, j);
                sV[k] = (cr > p.clamp && cr > 0.f) ? -acc / cr : 0.f;
            }
        }
    }
    __syncthreads();

    // L = softmax_k z; a warp per row. Merged last step: L = exp(z − lse_i) with the row's merged lse (0 where
    // lse_i = −inf), at most 1 since lse_i >= logsumexp_k z; the bound is enforced, so that a recomputed frame-0
    // row (whose lse is the dense one, and whose dO and D the caller zeroed) never gives inf·0. A row whose key
    // frames are all exact (max z = −inf) gets L = 0.
    const bool merged = LAST && p.merged_lse.ptr != nullptr; // uniform
    for (int i = warp; i < T; i += WARPS) {
        float* z = sL + i * T;
        if (merged) {
            const float lse = *view_row<const float>(p.merged_lse, b, h, i, j);
            for (int k = lane; k < T; k += 32) z[k] = lse == -INFINITY ? 0.f : expf(fminf(z[k] - lse, 0.f));
            continue;
        }
        float mx = -INFINITY;
        for (int k = lane; k < T; k += 32) mx = fmaxf(mx, z[k]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if (mx == -INFINITY) { // warp-uniform
            for (int k = lane; k < T; k += 32) z[k] = 0.f;
            continue;
        }
        float sum = 0.f;
        for (int k = lane; k < T; k += 32) {
            const float ez = expf(z[k] - mx);
            z[k] = ez;
            sum += ez;
        }
        sum = group_sum<32>(sum);
        const float inv = 1.f / sum;
        for (int k = lane; k < T; k += 32) z[k] *= inv;
    }
    __syncthreads();

    if constexpr (LAST) {
        // dY_k = Σ_i L[i][k]·dO_i (written rounded) and ⟨dY_k, Y_k⟩ of the rounded dY → sV[k].
        mix_pass<BF16, D, false, true>(sL, sG, T, [&](int k0, bool on0, bool on1, int ch, const float (&acc0)[8],
                                                      const float (&acc1)[8], float, float) {
            float part0 = 0.f, part1 = 0.f;
            if (on0) {
                const uint4 packed = pack8<BF16>(acc0);
                *reinterpret_cast<uint4*>(view_row<E>(p.dy, b, h, k0, j) + ch * 8) = packed;
                part0 = dot8<BF16>(packed, sY[k0 * CH + ch]);
            }
            if (on1) {
                const uint4 packed = pack8<BF16>(acc1);
                *reinterpret_cast<uint4*>(view_row<E>(p.dy, b, h, k0 + 1, j) + ch * 8) = packed;
                part1 = dot8<BF16>(packed, sY[(k0 + 1) * CH + ch]);
            }
            part0 = group_sum<CH>(part0);
            part1 = group_sum<CH>(part1);
            if (ch == 0 && on0) sV[k0] = part0;
            if (ch == 0 && on1) sV[k0 + 1] = part1;
        });
        __syncthreads();
        // dZ[i][k] = L[i][k]·(⟨dO_i, Y_k⟩ − D_i), in place.
        gram_pass<BF16, D, false>(sG, sY, T, [&](int i, int k, float dl) {
            sL[i * T + k] *= dl - (p.zero_frame0 && i == 0 ? 0.f : *view_row<const float>(p.drow, b, h, i, j));
        });
        __syncthreads();
    } else {
        // G_i = Σ_k L[i][k]·daR_k: dQ_i += G_i, and D_L,i = ⟨Q_i, G_i⟩ + Σ_k L[i][k]·dcR_k parked in drow_r[i].
        mix_pass<BF16, D, true, false>(sL, sR, T, [&](int i0, bool on0, bool on1, int ch, const float (&acc0)[8],
                                                      const float (&acc1)[8], float, float) {
            float part0 = 0.f, part1 = 0.f;
            if (on0) {
                add_to_global8(view_row<float>(p.dq, b, h, i0, j) + ch * 8, acc0);
                part0 = dot8f<BF16>(sQ[i0 * CH + ch], acc0);
            }
            if (on1) {
                add_to_global8(view_row<float>(p.dq, b, h, i0 + 1, j) + ch * 8, acc1);
                part1 = dot8f<BF16>(sQ[(i0 + 1) * CH + ch], acc1);
            }
            part0 = group_sum<CH>(part0);
            part1 = group_sum<CH>(part1);
            if (ch == 0) {
                for (int u = 0; u < 2; ++u) {
                    const int i = i0 + u;
                    if (!(u == 0 ? on0 : on1)) continue;
                    float ldc = 0.f;
                    for (int k = 0; k < T; ++k) ldc = fmaf(sL[i * T + k], sV[k], ldc);
                    *view_row<float>(p.drow_r, b, h, i, j) = (u == 0 ? part0 : part1) + ldc;
                }
            }
        });
        __syncthreads();
        // dZ[i][k] = L[i][k]·(⟨Q_i, daR_k⟩ + dcR_k − D_L,i), in place.
        gram_pass<BF16, D, true>(sQ, sR, T, [&](int i, int k, float dot) {
            sL[i * T + k] *= dot + sV[k] - *view_row<const float>(p.drow_r, b, h, i, j);
        });
        __syncthreads();
    }

    // dQ_i += Σ_k dZ[i][k]·aL_k (stored instead with dq_overwrite, last L-step only).
    const bool store_dq = LAST && p.dq_overwrite; // uniform
    mix_pass<BF16, D, false, false>(sL, sA, T, [&](int i0, bool on0, bool on1, int ch, const float (&acc0)[8],
                                                   const float (&acc1)[8], float, float) {
        if (store_dq) {
            if (on0) store_to_global8(view_row<float>(p.dq, b, h, i0, j) + ch * 8, acc0);
            if (on1) store_to_global8(view_row<float>(p.dq, b, h, i0 + 1, j) + ch * 8, acc1);
            return;
        }
        if (on0) add_to_global8(view_row<float>(p.dq, b, h, i0, j) + ch * 8, acc0);
        if (on1) add_to_global8(view_row<float>(p.dq, b, h, i0 + 1, j) + ch * 8, acc1);
    });

    // daL_k = Σ_i dZ[i][k]·Q_i (written rounded), dcL_k = −Σ_i dZ[i][k], D_R,k.
    mix_pass<BF16, D, false, true>(sL, sQ, T, [&](int k0, bool on0, bool on1, int ch, const float (&acc0)[8],
                                                  const float (&acc1)[8], float cs0, float cs1) {
        float part0 = 0.f, part1 = 0.f;
        if (on0) {
            const uint4 packed = pack8<BF16>(acc0);
            *reinterpret_cast<uint4*>(view_row<E>(p.da, b, h, k0, j) + ch * 8) = packed;
            part0 = dot8<BF16>(packed, sA[k0 * CH + ch]);
        }
        if (on1) {
            const uint4 packed = pack8<BF16>(acc1);
            *reinterpret_cast<uint4*>(view_row<E>(p.da, b, h, k0 + 1, j) + ch * 8) = packed;
            part1 = dot8<BF16>(packed, sA[(k0 + 1) * CH + ch]);
        }
        part0 = group_sum<CH>(part0);
        part1 = group_sum<CH>(part1);
        if (ch == 0) {
            for (int u = 0; u < 2; ++u) {
                const int k = k0 + u;
                if (!(u == 0 ? on0 : on1)) continue;
                float drow_r = u == 0 ? part0 : part1;
                if (p.dc.ptr != nullptr) {
                    const float dc = fitted(k) ? -(u == 0 ? cs0 : cs1) : 0.f;
                    *view_row<float>(p.dc, b, h, k, j) = dc;
                    if (fitted(k)) drow_r = fmaf(dc, *view_row<const float>(p.c, b, h, k, j), drow_r);
                }
                if constexpr (LAST) drow_r += sV[k];
                *view_row<float>(p.drow_r, b, h, k, j) = drow_r;
            }
        }
    });
}

} // namespace vmonarch::cuda
