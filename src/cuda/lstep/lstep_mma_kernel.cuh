// Internal: the tensor-core L-step (docs/algorithm.md §3.2), the main one, for T ≤ 48 frames: one warp per position j, frames padded to
// TP = 16·MT rows. Per position:
//   z = Q_j·aL_jᵀ − cL_j (TP×TP, mma m16n8k16 over the head dim), L = row softmax (f32, masked to T),
//   last:   O_j = L·y_j  (+ lse = logsumexp_k z)
//   middle: aR_j = Lᵀ·Q_j (Lᵀ fragments by ldmatrix.trans from a bf16/f16 copy of L), cR_j = column sums of L.
// Q_j, aL_j (and y_j) arrive by cp.async into swizzled shared tiles; outputs are staged in shared memory
// and written as 16-byte row chunks. Memory-bound: the arithmetic is ~2·T²·d per row and position.
//
// Exact key groups (spec §3b, lstep_exact_mask.cuh): z[i][k] = −inf for the key frames exact for query frame i,
// so L[i][k] = 0 and the middle outputs only sum over the rows that fit k; a row with no fitted key frame has
// L = 0 and F = logsumexp_k z = −inf. The rows of key frames no query frame fits are zero-filled, never read.
// With exact_lse the last step merges its row (O_M, F) with the exact group's (O_E, LSE_E), read from out and
// exact_lse, by log-sum-exp (common/lse_merge.cuh) before writing out and lse. Both exist only in the EXACT
// instantiations; the others are the plain L-step of spec §3.
#pragma once

#include <cstdint>

#include "cuda/common/kernel_params.hpp"
#include "cuda/common/lse_merge.cuh"
#include "cuda/common/mma_ptx.cuh"
#include "cuda/lstep/lstep_exact_mask.cuh"

namespace vmonarch::cuda {

constexpr int lstep_mma_max_frames() { return 48; }
constexpr int lstep_mma_warps(int mt) { return mt <= 2 ? 4 : 2; }
constexpr int lstep_mma_warp_bytes(int D, bool last, int mt) {
    const int tp = 16 * mt;
    return (last ? 3 : 2) * tp * D * 2 + (last ? 0 : tp * (tp * 2 + 16));
}

// Rows r < T of view (b, h, frame r, position j) → swizzled tile at dst (TP rows; rows ≥ T and rows for
// which keep(r) is false zero-filled, their source not read), by `threads` threads of ids lane = 0, 1, ….
struct KeepAllRows {
    __device__ __forceinline__ bool operator()(int) const { return true; }
};
template <bool BF16, int D, int TP, typename Keep = KeepAllRows>
__device__ __forceinline__ void gather_rows_async(std::uint32_t dst, const RowView& v, int b, int h, std::int64_t j, int T, int lane,
                                                  Keep keep = {}, int threads = 32) {
    using E = typename ElemType<BF16>::T;
    constexpr int CH = D / 8;
#pragma unroll 4
    for (int c = lane; c < TP * CH; c += threads) {
        const int r = c / CH, ch = c % CH;
        const bool ok = r < T && keep(r);
        const E* src = ok ? view_row<const E>(v, b, h, r, j) + ch * 8 : static_cast<const E*>(v.ptr);
        cp_async_16(dst + swz<D>(r, ch), src, ok ? 16 : 0);
    }
}

// The ROW_BYTES-byte view rows (b, h, frame r < T, position j) with keep(r), elements of type E, into L2 only
// (prefetch.L2, one request per 128-byte line of a row), by `threads` threads of ids tid = 0, 1, …: a gather
// or a load issued later finds them there instead of making its own trip to DRAM.
template <typename E, int ROW_BYTES, typename Keep>
__device__ __forceinline__ void prefetch_rows_l2(const RowView& v, int b, int h, std::int64_t j, int T, int tid, int threads, Keep keep) {
    constexpr int LINES = (ROW_BYTES + 127) / 128;
    for (int c = tid; c < T * LINES; c += threads) {
        if (!keep(c / LINES)) continue;
        const char* line = reinterpret_cast<const char*>(view_row<E>(v, b, h, c / LINES, j)) + (c % LINES) * 128;
        asm volatile("prefetch.L2 [%0];\n" ::"l"(line));
    }
}

// Staged output tile rows [r0, T) → view rows (b, h, frame r, position j), 16 bytes per lane per step
// (`threads` threads of ids lane = 0, 1, …).
template <bool BF16, int D>
__device__ __forceinline__ void scatter_rows(const unsigned char* tile, const RowView& v, int b, int h, std::int64_t j, int T, int lane,
                                             int r0 = 0, int threads = 32) {
    using E = typename ElemType<BF16>::T;
    constexpr int CH = D / 8;
    for (int c = lane + r0 * CH; c < T * CH; c += threads) {
        const int r = c / CH, ch = c % CH;
        const uint4 val = *reinterpret_cast<const uint4*>(tile + swz<D>(r, ch));
        *reinterpret_cast<uint4*>(view_row<E>(v, b, h, r, j) + ch * 8) = val;
    }
}

// L = softmax_k z for this thread's rows i = mt·16 + lane/4 + 8r of S (the m16n8 accumulator layout),
// z = S − cL in base 2; keys k ≥ T masked, padded rows i ≥ T zeroed; F[mt][r] = logsumexp_k z (natural log).
// MASKED also masks the key frames exact for row i (spec §3b); a row left without keys gets L = 0, F = −inf.
template <bool MASKED, int MT, int NT>
__device__ __forceinline__ void lstep_softmax(float (&s)[MT][NT][4], const float (&cl)[NT][2], int T, const LStepMask& mask,
                                              int lane, float (&F)[MT][2]) {
    constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f, NEG_INF = -INFINITY;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int k = nt * 8 + 2 * (lane & 3) + (e & 1);
                bool keep = k < T;
                if constexpr (MASKED) keep = keep && !mask.exact(mt * 16 + (lane >> 2) + 8 * (e >> 1), k);
                const float z = keep ? (s[mt][nt][e] - cl[nt][e & 1]) * LOG2E : NEG_INF; // select: S may be junk there
                s[mt][nt][e] = z;
                mx[e >> 1] = fmaxf(mx[e >> 1], z);
            }
        float sum[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            if constexpr (MASKED)
                if (mx[r] == NEG_INF) mx[r] = 0.f; // no key: every e^{z − mx} is e^{−inf} = 0, not NaN
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float w = fast_exp2(s[mt][nt][e] - mx[e >> 1]);
                s[mt][nt][e] = w;
                sum[e >> 1] += w;
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
            sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
            const int i = mt * 16 + (lane >> 2) + 8 * r;
            float inv = i < T ? 1.f / sum[r] : 0.f;
            if constexpr (MASKED) inv = i < T && sum[r] > 0.f ? 1.f / sum[r] : 0.f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                s[mt][nt][2 * r] *= inv;
                s[mt][nt][2 * r + 1] *= inv;
            }
            F[mt][r] = (mx[r] + __log2f(sum[r])) * LN2; // the Monarch row's objective value
            if constexpr (MASKED)
                if (!(sum[r] > 0.f)) F[mt][r] = NEG_INF;
        }
    }
}

template <bool BF16, int D, bool LAST, int MT, bool EXACT>
__global__ void __launch_bounds__(32 * lstep_mma_warps(MT)) lstep_mma_kernel(const LStepParams p) {
    constexpr int TP = 16 * MT, NT = TP / 8, KT = D / 16, ROWB = D * 2, LSTRIDE = TP * 2 + 16;
    constexpr int WPB = lstep_mma_warps(MT), WARP_BYTES = lstep_mma_warp_bytes(D, LAST, MT);

    extern __shared__ __align__(128) unsigned char lsmem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const std::int64_t j = std::int64_t(blockIdx.x) * WPB + warp;
    if (j >= p.positions) return; // warps are independent: no block-wide barrier below
    const int h = blockIdx.y, b = blockIdx.z, T = int(p.frames);
    [[maybe_unused]] const LStepMask mask = lstep_mask(p);
    [[maybe_unused]] const auto fitted = [&](int k) { return mask.fitted(k, T); };
    unsigned char* wbase = lsmem + warp * WARP_BYTES;
    const std::uint32_t sQ = smem_addr(wbase), sA = sQ + TP * ROWB, sY = sA + TP * ROWB, sL = sA + TP * ROWB;
    unsigned char* const tQ = wbase;            // generic views of the same tiles for staging
    unsigned char* const tA = wbase + TP * ROWB;
    unsigned char* const tL = wbase + 2 * TP * ROWB;

    gather_rows_async<BF16, D, TP>(sQ, p.q, b, h, j, T, lane);
    if constexpr (EXACT) gather_rows_async<BF16, D, TP>(sA, p.a, b, h, j, T, lane, fitted);
    else gather_rows_async<BF16, D, TP>(sA, p.a, b, h, j, T, lane);
    cp_async_commit();
    if constexpr (LAST) {
        if constexpr (EXACT) gather_rows_async<BF16, D, TP>(sY, p.y, b, h, j, T, lane, fitted);
        else gather_rows_async<BF16, D, TP>(sY, p.y, b, h, j, T, lane);
        cp_async_commit();
    }
    // cL at this thread's columns k = nt·8 + 2·(lane%4) + e.
    float cl[NT][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int k = nt * 8 + 2 * (lane & 3) + e;
            cl[nt][e] = k < T && (!EXACT || fitted(k)) ? *view_row<const float>(p.c, b, h, k, j) : 0.f;
        }
    // Last step, merging: LSE_E of this thread's rows i = mt·16 + lane/4 + 8r, read before any lane writes lse
    // (exact_lse may be lse). Rows the step leaves alone (i = 0 with skip_frame0, i ≥ T) are not read.
    [[maybe_unused]] const bool merge = EXACT && LAST && p.exact_lse.ptr != nullptr; // uniform
    [[maybe_unused]] const int r0 = LAST && p.skip_frame0 ? 1 : 0;
    // O_E (in out) is gathered only once S has freed the aL tile: bring it into L2 now, beside the other gathers.
    if constexpr (EXACT && LAST)
        if (merge) prefetch_rows_l2<const std::uint16_t, D * 2>(p.out, b, h, j, T, lane, 32, [=](int r) { return r >= r0; });
    [[maybe_unused]] float lse_e[MT][2];
    if constexpr (EXACT && LAST)
        if (merge)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int i = mt * 16 + (lane >> 2) + 8 * r;
                    lse_e[mt][r] = i < T && i >= r0 ? *view_row<const float>(p.exact_lse, b, h, i, j) : -INFINITY;
                }
    if constexpr (LAST) cp_async_wait<1>();
    else cp_async_wait<0>();
    __syncwarp();

    // S = Q_j · aL_jᵀ
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        std::uint32_t qa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(qa[mt], sQ + swz<D>(mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            std::uint32_t kf[4];
            ldmatrix_x4(kf, sA + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma_16816<BF16>(s[mt][2 * np], qa[mt], kf[0], kf[1]);
                mma_16816<BF16>(s[mt][2 * np + 1], qa[mt], kf[2], kf[3]);
            }
        }
    }
    __syncwarp(); // all lanes are done reading sQ/sA as operands of S (they are reused for staging)

    if constexpr (EXACT && LAST)
        if (merge) { // O_E rows (the exact group's output, in out on entry) into the free aL tile
            gather_rows_async<BF16, D, TP>(sA, p.out, b, h, j, T, lane, [&](int r) { return r >= r0; });
            cp_async_commit();
        }

    // L = softmax_k (z), z = S − cL; F = logsumexp_k z.
    float F[MT][2];
    lstep_softmax<EXACT>(s, cl, T, mask, lane, F);

    if constexpr (LAST) {
        // lse = F, or with the exact group tot = logaddexp(F, LSE_E) and the weights of O_M and O_E (spec §3b).
        [[maybe_unused]] float wm[MT][2], we[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int i = mt * 16 + (lane >> 2) + 8 * r;
                float lse_out = F[mt][r];
                if constexpr (EXACT) {
                    wm[mt][r] = 1.f;
                    we[mt][r] = 0.f;
                }
                if constexpr (EXACT)
                    if (merge) {
                        const LseMergeWeights w = lse_merge_weights(F[mt][r], lse_e[mt][r]);
                        lse_out = w.tot;
                        wm[mt][r] = w.wa;
                        we[mt][r] = w.wb;
                    }
                if (p.lse.ptr != nullptr && (lane & 3) == 0 && i < T && i >= r0) *view_row<float>(p.lse, b, h, i, j) = lse_out;
            }

        std::uint32_t pa[MT][MT][4]; // A-fragments of L: m-tile mt, k-slice ks (frames 16·ks..)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int ks = 0; ks < MT; ++ks) {
                pa[mt][ks][0] = pack2<BF16>(s[mt][2 * ks][0], s[mt][2 * ks][1]);
                pa[mt][ks][1] = pack2<BF16>(s[mt][2 * ks][2], s[mt][2 * ks][3]);
                pa[mt][ks][2] = pack2<BF16>(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
                pa[mt][ks][3] = pack2<BF16>(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
            }
        cp_async_wait<0>();
        __syncwarp();
        // O = L·y in 64-column chunks, staged into the Q tile (merged with O_E from the aL tile).
#pragma unroll
        for (int dc = 0; dc < D / 64; ++dc) {
            float acc[MT][8][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int dt = 0; dt < 8; ++dt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][dt][e] = 0.f;
#pragma unroll
            for (int dp = 0; dp < 4; ++dp)
#pragma unroll
                for (int ks = 0; ks < MT; ++ks) {
                    std::uint32_t vf[4];
                    ldmatrix_x4_trans(vf, sY + swz<D>(ks * 16 + (lane & 15), (dc * 4 + dp) * 2 + (lane >> 4)));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816<BF16>(acc[mt][2 * dp], pa[mt][ks], vf[0], vf[1]);
                        mma_16816<BF16>(acc[mt][2 * dp + 1], pa[mt][ks], vf[2], vf[3]);
                    }
                }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int dt = 0; dt < 8; ++dt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const int i = mt * 16 + (lane >> 2) + 8 * r, col = dc * 64 + dt * 8 + 2 * (lane & 3);
                        const std::uint32_t at = swz<D>(i, col >> 3) + (col & 7) * 2;
                        float o0 = acc[mt][dt][2 * r], o1 = acc[mt][dt][2 * r + 1];
                        if constexpr (EXACT)
                            if (merge) {
                                const LseMergeWeights w{0.f, wm[mt][r], we[mt][r]};
                                const float2 oe = unpack2<BF16>(*reinterpret_cast<const std::uint32_t*>(tA + at));
                                o0 = lse_merge_mix(w, o0, oe.x);
                                o1 = lse_merge_mix(w, o1, oe.y);
                            }
                        *reinterpret_cast<std::uint32_t*>(tQ + at) = pack2<BF16>(o0, o1);
                    }
        }
        __syncwarp();
        scatter_rows<BF16, D>(tQ, p.out, b, h, j, T, lane, r0);
    } else {
        // cR = column sums of L (over rows i): within a thread, then across the 8 lanes of equal lane%4.
        float cs[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float v = 0.f;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) v += s[mt][nt][e] + s[mt][nt][2 + e];
#pragma unroll
                for (int o = 4; o <= 16; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                cs[nt][e] = v;
            }
        if (lane < 4)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int k = nt * 8 + 2 * lane + e;
                    if (k < T) *view_row<float>(p.cr, b, h, k, j) = cs[nt][e];
                }
        // L (16-bit) into its own tile, row i, column k.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int i = mt * 16 + (lane >> 2) + 8 * r, k = nt * 8 + 2 * (lane & 3);
                    *reinterpret_cast<std::uint32_t*>(tL + i * LSTRIDE + k * 2) = pack2<BF16>(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]);
                }
        __syncwarp();
        // A-fragments of Lᵀ (rows k, cols i) by transposed loads of L's 8×8 blocks.
        std::uint32_t la[MT][MT][4]; // [k m-tile][i slice]
#pragma unroll
        for (int kt = 0; kt < MT; ++kt)
#pragma unroll
            for (int ks = 0; ks < MT; ++ks)
                ldmatrix_x4_trans(la[kt][ks], sL + (ks * 16 + (lane & 7) + ((lane >> 4) << 3)) * LSTRIDE + (kt * 16 + ((lane >> 3) & 1) * 8) * 2);
        // aR = Lᵀ·Q in 64-column chunks, staged into the (no longer needed) aL tile.
#pragma unroll
        for (int dc = 0; dc < D / 64; ++dc) {
            float acc[MT][8][4];
#pragma unroll
            for (int kt = 0; kt < MT; ++kt)
#pragma unroll
                for (int dt = 0; dt < 8; ++dt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[kt][dt][e] = 0.f;
#pragma unroll
            for (int dp = 0; dp < 4; ++dp)
#pragma unroll
                for (int ks = 0; ks < MT; ++ks) {
                    std::uint32_t qf[4];
                    ldmatrix_x4_trans(qf, sQ + swz<D>(ks * 16 + (lane & 15), (dc * 4 + dp) * 2 + (lane >> 4)));
#pragma unroll
                    for (int kt = 0; kt < MT; ++kt) {
                        mma_16816<BF16>(acc[kt][2 * dp], la[kt][ks], qf[0], qf[1]);
                        mma_16816<BF16>(acc[kt][2 * dp + 1], la[kt][ks], qf[2], qf[3]);
                    }
                }
#pragma unroll
            for (int kt = 0; kt < MT; ++kt)
#pragma unroll
                for (int dt = 0; dt < 8; ++dt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const int k = kt * 16 + (lane >> 2) + 8 * r, col = dc * 64 + dt * 8 + 2 * (lane & 3);
                        *reinterpret_cast<std::uint32_t*>(tA + swz<D>(k, col >> 3) + (col & 7) * 2) =
                            pack2<BF16>(acc[kt][dt][2 * r], acc[kt][dt][2 * r + 1]);
                    }
        }
        __syncwarp();
        scatter_rows<BF16, D>(tA, p.ar, b, h, j, T, lane);
    }
}

} // namespace vmonarch::cuda
