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
// Every input row is read from global memory once (16-byte chunks of consecutive elements); the only
// repeated global traffic is the f32 dQ row (read-modify-write, twice in the earlier L-steps) and D_L,
// parked in the drow_r rows between two passes (they are overwritten with D_R at the end).
// Shared memory is (2·T·d + T² + T)·4 bytes, the forward L-step's own bound (lstep_smem_bytes), so every
// T the forward takes, the backward takes too.
#pragma once

#include <cstdint>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/common/mma_ptx.cuh"

namespace vmonarch::cuda {

constexpr int kLStepBwdThreads = 128;

constexpr std::int64_t lstep_bwd_smem_bytes(std::int64_t T, int D) { return (2 * T * D + T * T + T) * 4; }

namespace lstep_bwd {

// acc[0..8) += l · (8 16-bit values in v).
template <bool BF16>
__device__ __forceinline__ void fma8_h(float (&acc)[8], float l, uint4 v) {
    const float2 a = unpack2<BF16>(v.x), b = unpack2<BF16>(v.y), c = unpack2<BF16>(v.z), d = unpack2<BF16>(v.w);
    acc[0] = fmaf(l, a.x, acc[0]); acc[1] = fmaf(l, a.y, acc[1]);
    acc[2] = fmaf(l, b.x, acc[2]); acc[3] = fmaf(l, b.y, acc[3]);
    acc[4] = fmaf(l, c.x, acc[4]); acc[5] = fmaf(l, c.y, acc[5]);
    acc[6] = fmaf(l, d.x, acc[6]); acc[7] = fmaf(l, d.y, acc[7]);
}

// acc[0..8) += l · row[0..8) (8 floats in shared memory, 16-byte aligned).
__device__ __forceinline__ void fma8_f(float (&acc)[8], float l, const float* row) {
    const float4 a = reinterpret_cast<const float4*>(row)[0], c = reinterpret_cast<const float4*>(row)[1];
    acc[0] = fmaf(l, a.x, acc[0]); acc[1] = fmaf(l, a.y, acc[1]);
    acc[2] = fmaf(l, a.z, acc[2]); acc[3] = fmaf(l, a.w, acc[3]);
    acc[4] = fmaf(l, c.x, acc[4]); acc[5] = fmaf(l, c.y, acc[5]);
    acc[6] = fmaf(l, c.z, acc[6]); acc[7] = fmaf(l, c.w, acc[7]);
}

// Σ_e (8 16-bit values in x)_e · (8 16-bit values in w)_e, added to acc.
template <bool BF16>
__device__ __forceinline__ float dot8_hh(uint4 x, uint4 w, float acc) {
    const std::uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const float2 a = unpack2<BF16>(xs[u]), b = unpack2<BF16>(ws[u]);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
    return acc;
}

// Σ_e (8 16-bit values in x)_e · w[e] (8 floats in shared memory), added to acc.
template <bool BF16>
__device__ __forceinline__ float dot8_hf(uint4 x, const float* w, float acc) {
    const float4 w0 = reinterpret_cast<const float4*>(w)[0], w1 = reinterpret_cast<const float4*>(w)[1];
    const float2 a = unpack2<BF16>(x.x), b = unpack2<BF16>(x.y), c = unpack2<BF16>(x.z), d = unpack2<BF16>(x.w);
    acc = fmaf(a.x, w0.x, acc); acc = fmaf(a.y, w0.y, acc);
    acc = fmaf(b.x, w0.z, acc); acc = fmaf(b.y, w0.w, acc);
    acc = fmaf(c.x, w1.x, acc); acc = fmaf(c.y, w1.y, acc);
    acc = fmaf(d.x, w1.z, acc); acc = fmaf(d.y, w1.w, acc);
    return acc;
}

// ⟨x, w⟩ over D 16-bit values each (rows in shared memory as uint4 chunks). Chunks are visited starting at
// `rot` so that threads with different rot read different bank groups.
template <bool BF16, int D>
__device__ __forceinline__ float dot_hh(const uint4* x, const uint4* w, int rot) {
    constexpr int CH = D / 8;
    float acc = 0.f;
#pragma unroll 4
    for (int c = 0; c < CH; ++c) {
        const int cc = (c + rot) & (CH - 1);
        acc = dot8_hh<BF16>(x[cc], w[cc], acc);
    }
    return acc;
}

// ⟨x, w⟩, x D 16-bit values (uint4 chunks), w D floats, both in shared memory.
template <bool BF16, int D>
__device__ __forceinline__ float dot_hf(const uint4* x, const float* w, int rot) {
    constexpr int CH = D / 8;
    float acc = 0.f;
#pragma unroll 4
    for (int c = 0; c < CH; ++c) {
        const int cc = (c + rot) & (CH - 1);
        acc = dot8_hf<BF16>(x[cc], w + cc * 8, acc);
    }
    return acc;
}

// Sum over the `group` consecutive lanes (a power of two ≤ 32, aligned) that share one row; all 32 lanes call.
template <int GROUP>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = 1; o < GROUP; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Rows r < T of view (b, h, frame r, position j), ROW_BYTES each, into consecutive rows of dst (cp.async).
template <int ROW_BYTES>
__device__ __forceinline__ void gather_rows_async(void* dst, const RowView& v, int elem_bytes, int b, int h,
                                                  std::int64_t j, int T) {
    constexpr int CH = ROW_BYTES / 16;
    const std::uint32_t base = smem_addr(dst);
    for (int c = threadIdx.x; c < T * CH; c += kLStepBwdThreads) {
        const int r = c / CH, ch = c - r * CH;
        const auto* row = static_cast<const unsigned char*>(v.ptr) +
                          (b * v.sb + h * v.sh + std::int64_t(r) * v.sf + j * v.sr) * elem_bytes;
        cp_async_16(base + std::uint32_t(c) * 16u, row + ch * 16, 16);
    }
}

} // namespace lstep_bwd

template <bool BF16, int D, bool LAST>
__global__ void __launch_bounds__(kLStepBwdThreads) lstep_bwd_kernel(const LStepBwdParams p) {
    using namespace lstep_bwd;
    using E = typename ElemType<BF16>::T;
    constexpr int CH = D / 8, WARPS = kLStepBwdThreads / 32, NT = kLStepBwdThreads;
    static_assert(NT % CH == 0, "row groups of CH lanes must stay aligned across loop steps");
    extern __shared__ float4 lstep_bwd_smem[];
    const int T = int(p.frames);
    const std::int64_t j = blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    uint4* sQ = reinterpret_cast<uint4*>(lstep_bwd_smem);   // [T][CH]: Q_i (16-bit)
    uint4* sA = sQ + T * CH;                                 // [T][CH]: aL_k (16-bit)
    uint4* sY = sA + T * CH;                                 // last: [T][CH] Y_k (16-bit)
    uint4* sG = sY + T * CH;                                 // last: [T][CH] dO_i (16-bit)
    float* sR = reinterpret_cast<float*>(sY);                // earlier: [T][D] daR_k (f32), in place of Y, dO
    float* sL = reinterpret_cast<float*>(sG + T * CH);       // [T][T]: z, then L, then dZ
    float* sV = sL + T * T;                                  // [T]: last ⟨dY_k, Y_k⟩; earlier dcR_k

    lstep_bwd::gather_rows_async<D * 2>(sQ, p.q, 2, b, h, j, T);
    lstep_bwd::gather_rows_async<D * 2>(sA, p.a, 2, b, h, j, T);
    if constexpr (LAST) {
        lstep_bwd::gather_rows_async<D * 2>(sY, p.y, 2, b, h, j, T);
        lstep_bwd::gather_rows_async<D * 2>(sG, p.dout, 2, b, h, j, T);
    } else {
        lstep_bwd::gather_rows_async<D * 4>(sR, p.dar, 4, b, h, j, T);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // z[i][k] = ⟨Q_i, aL_k⟩ − cL_k.
    for (int e = tid; e < T * T; e += NT) {
        const int i = e / T, k = e - i * T;
        sL[e] = dot_hh<BF16, D>(sQ + i * CH, sA + k * CH, k) - *view_row<const float>(p.c, b, h, k, j);
    }
    if constexpr (!LAST) {
        // dcR_k = −⟨aR_k, daR_k⟩ / cR_k where cR_k > clamp, else 0 (X depends on aR, cR only through aR/cR,
        // and the clamp's gradient is 0 at and below it); a warp per key frame, lanes over the head dim.
        for (int k = warp; k < T; k += WARPS) {
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

    // L = softmax_k z; a warp per row.
    for (int i = warp; i < T; i += WARPS) {
        float* z = sL + i * T;
        float mx = -INFINITY;
        for (int k = lane; k < T; k += 32) mx = fmaxf(mx, z[k]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
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

    // Row-chunk passes: item w = r·CH + ch is 8 head-dim values of row r; the CH lanes of one row are
    // consecutive, so group_sum<CH> reduces over the row. Every lane runs the same number of steps.
    const int steps = (T * CH + NT - 1) / NT;

    if constexpr (LAST) {
        // dY_k = Σ_i L[i][k]·dO_i (written rounded) and ⟨dY_k, Y_k⟩ of the rounded dY → sV[k].
        for (int s = 0; s < steps; ++s) {
            const int w = s * NT + tid, k = w / CH, ch = w - k * CH;
            const bool on = k < T;
            float part = 0.f;
            if (on) {
                float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
                for (int i = 0; i < T; ++i) fma8_h<BF16>(acc, sL[i * T + k], sG[i * CH + ch]);
                const uint4 packed = make_uint4(pack2<BF16>(acc[0], acc[1]), pack2<BF16>(acc[2], acc[3]),
                                                pack2<BF16>(acc[4], acc[5]), pack2<BF16>(acc[6], acc[7]));
                *reinterpret_cast<uint4*>(view_row<E>(p.dy, b, h, k, j) + ch * 8) = packed;
                part = dot8_hh<BF16>(packed, sY[k * CH + ch], 0.f);
            }
            part = group_sum<CH>(part);
            if (on && ch == 0) sV[k] = part;
        }
        __syncthreads();
        // dZ[i][k] = L[i][k]·(⟨dO_i, Y_k⟩ − D_i), in place.
        for (int e = tid; e < T * T; e += NT) {
            const int i = e / T, k = e - i * T;
            const float dl = dot_hh<BF16, D>(sG + i * CH, sY + k * CH, k);
            sL[e] *= dl - *view_row<const float>(p.drow, b, h, i, j);
        }
        __syncthreads();
    } else {
        // G_i = Σ_k L[i][k]·daR_k: dQ_i += G_i, and D_L,i = ⟨Q_i, G_i⟩ + Σ_k L[i][k]·dcR_k parked in drow_r[i].
        for (int s = 0; s < steps; ++s) {
            const int w = s * NT + tid, i = w / CH, ch = w - i * CH;
            const bool on = i < T;
            float part = 0.f;
            if (on) {
                float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
                for (int k = 0; k < T; ++k) fma8_f(acc, sL[i * T + k], sR + k * D + ch * 8);
                float4* dq = reinterpret_cast<float4*>(view_row<float>(p.dq, b, h, i, j) + ch * 8);
                float4 d0 = dq[0], d1 = dq[1];
                d0.x += acc[0]; d0.y += acc[1]; d0.z += acc[2]; d0.w += acc[3];
                d1.x += acc[4]; d1.y += acc[5]; d1.z += acc[6]; d1.w += acc[7];
                dq[0] = d0;
                dq[1] = d1;
                float g8[8];
#pragma unroll
                for (int e = 0; e < 8; ++e) g8[e] = 0.f;
                fma8_h<BF16>(g8, 1.f, sQ[i * CH + ch]); // g8 = Q_i's chunk as floats
#pragma unroll
                for (int e = 0; e < 8; ++e) part = fmaf(g8[e], acc[e], part);
            }
            part = group_sum<CH>(part);
            if (on && ch == 0) {
                float ldc = 0.f;
                for (int k = 0; k < T; ++k) ldc = fmaf(sL[i * T + k], sV[k], ldc);
                *view_row<float>(p.drow_r, b, h, i, j) = part + ldc;
            }
        }
        __syncthreads();
        // dZ[i][k] = L[i][k]·(⟨Q_i, daR_k⟩ + dcR_k − D_L,i), in place.
        for (int e = tid; e < T * T; e += NT) {
            const int i = e / T, k = e - i * T;
            const float dl = dot_hf<BF16, D>(sQ + i * CH, sR + k * D, k) + sV[k];
            sL[e] *= dl - *view_row<const float>(p.drow_r, b, h, i, j);
        }
        __syncthreads();
    }

    // dQ_i += Σ_k dZ[i][k]·aL_k.
    for (int w = tid; w < T * CH; w += NT) {
        const int i = w / CH, ch = w - i * CH;
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int k = 0; k < T; ++k) fma8_h<BF16>(acc, sL[i * T + k], sA[k * CH + ch]);
        float4* dq = reinterpret_cast<float4*>(view_row<float>(p.dq, b, h, i, j) + ch * 8);
        float4 d0 = dq[0], d1 = dq[1];
        d0.x += acc[0]; d0.y += acc[1]; d0.z += acc[2]; d0.w += acc[3];
        d1.x += acc[4]; d1.y += acc[5]; d1.z += acc[6]; d1.w += acc[7];
        dq[0] = d0;
        dq[1] = d1;
    }

    // daL_k = Σ_i dZ[i][k]·Q_i (written rounded), dcL_k = −Σ_i dZ[i][k], D_R,k.
    for (int s = 0; s < steps; ++s) {
        const int w = s * NT + tid, k = w / CH, ch = w - k * CH;
        const bool on = k < T;
        float part = 0.f, colsum = 0.f;
        if (on) {
            float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            for (int i = 0; i < T; ++i) {
                const float dz = sL[i * T + k];
                colsum += dz;
                fma8_h<BF16>(acc, dz, sQ[i * CH + ch]);
            }
            const uint4 packed = make_uint4(pack2<BF16>(acc[0], acc[1]), pack2<BF16>(acc[2], acc[3]),
                                            pack2<BF16>(acc[4], acc[5]), pack2<BF16>(acc[6], acc[7]));
            *reinterpret_cast<uint4*>(view_row<E>(p.da, b, h, k, j) + ch * 8) = packed;
            part = dot8_hh<BF16>(packed, sA[k * CH + ch], 0.f);
        }
        part = group_sum<CH>(part);
        if (on && ch == 0) {
            float drow_r = part;
            if (p.dc.ptr != nullptr) {
                const float dc = -colsum;
                *view_row<float>(p.dc, b, h, k, j) = dc;
                drow_r = fmaf(dc, *view_row<const float>(p.c, b, h, k, j), drow_r);
            }
            if constexpr (LAST) drow_r += sV[k];
            *view_row<float>(p.drow_r, b, h, k, j) = drow_r;
        }
    }
}

} // namespace vmonarch::cuda
