// Internal: the tensor-core L-step backward (spec §7 steps 3, 4, 6) for T ≤ 48 frames: one block of W = 1, 2 or 4
// warps per (position j, head, batch), frames padded to TP = 16·MT rows, every T×T×d product an mma.sync m16n8k16
// with f32 accumulators. With W warps each forms the T×T matrices (z, L, dL, dZ) itself and computes 1/W of
// the head-dim columns of the T×d products (dY, dQ, daL); they share the tiles and the L / dZ tiles' stores.
// The math is that of lstep_bwd_kernel.cuh (the CUDA-core kernel, which takes longer clips):
//   z = Q·aLᵀ − cL, L = softmax_k z (f32, in the accumulator layout)
//   last:    dL = dO·Yᵀ,  dZ = L∘(dL − D_i),  dY = Lᵀ·dO (written rounded),  e_k = ⟨dY_k, Y_k⟩ of the rounded dY
//   earlier: dcR_k = −⟨aR_k, daR_k⟩/cR_k (cR_k > clamp, else 0),  dL = Q·daRᵀ + dcR_k,
//            dZ = L∘(dL − Σ_k L·dL)  (Σ_k L·dL = ⟨Q_i, G_i⟩ + Σ_k L·dcR_k with G = L·daR),  dQ += L·daR
//   both:    dQ += dZ·aL,  daL = dZᵀ·Q (written rounded),  dcL_k = −Σ_i dZ[i][k],
//            D_R,k = ⟨daL_k, aL_k⟩ + dcL_k·cL_k + [last]·e_k   (daL as rounded, the values the R-step reads)
// Operands that are f32 (L, dZ, daR) enter the products as a 16-bit pair x ≈ hi + lo (hi = round(x),
// lo = round(x − hi)), products hi·hi + hi·lo + lo·hi: about 16 significant bits for bf16 and 22 for f16, near
// the f32 kernel's results rather than one 16-bit rounding away. (f16: values beyond 65504 overflow, as the
// inputs and the outputs of that dtype do; lo parts below 2^-14 lose bits as f16 subnormals.)
// dQ gets one addition per element and L-step (both of its terms are summed in one accumulator), as a reduction
// (red.global.add, nothing waits for it) or, where the step owns dq (dq_overwrite), a store.
// Shared memory per block: the Q and aL tiles, Y and dO (last) or daR's hi and lo parts (earlier), all 16-bit
// and XOR-swizzled (mma_ptx.cuh swz); L's (then dZ's) hi and lo parts as T×T 16-bit tiles (for the transposed
// operands Lᵀ, dZᵀ by ldmatrix.trans); dcR (earlier) and dcL·cL per frame; the other warps' parts of D_R. The
// outputs dY and daL are staged in place in the dO and Q tiles, 64 (or 32) columns at a time once those columns
// are read, and stored as 16-byte row chunks.
// Exact key groups (spec §3b, lstep_exact_mask.cuh), frame-0 rows read as 0 (zero_frame0), merged L
// (merged_lse) and the stored dq (dq_overwrite) behave as in the CUDA-core kernel. Each dq element takes a single
// reduction per launch, so its sum is that of a read-modify-write: the results are bitwise repeatable.
#pragma once

#include <cstdint>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/common/mma_ptx.cuh"
#include "cuda/lstep/lstep_exact_mask.cuh"
#include "cuda/lstep/lstep_mma_kernel.cuh"

namespace vmonarch::cuda {

constexpr int lstep_bwd_mma_max_frames() { return 48; }
constexpr int lstep_bwd_mma_lstride(int mt) { return 32 * mt + 16; } // bytes per row of a T×T 16-bit tile
constexpr int lstep_bwd_mma_smem_bytes(int D, int mt, int w) {
    return 4 * (16 * mt) * D * 2 + 2 * (16 * mt) * lstep_bwd_mma_lstride(mt) + (1 + w) * (16 * mt) * 4;
}

namespace lstep_bwd_mma {

// x ≈ hi + lo for two floats, each part a register of two 16-bit values.
template <bool BF16>
__device__ __forceinline__ void split2(float a, float b, std::uint32_t& hi, std::uint32_t& lo) {
    hi = pack2<BF16>(a, b);
    const float2 r = unpack2<BF16>(hi);
    lo = pack2<BF16>(a - r.x, b - r.y);
}

// A-fragments (m-tile mt, k-slice ks) of the TP×TP matrix held in accumulator layout x[mt][nt][4], split.
template <bool BF16, int MT>
__device__ __forceinline__ void split_frags(const float (&x)[MT][2 * MT][4], std::uint32_t (&hi)[MT][MT][4],
                                            std::uint32_t (&lo)[MT][MT][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int ks = 0; ks < MT; ++ks) {
            split2<BF16>(x[mt][2 * ks][0], x[mt][2 * ks][1], hi[mt][ks][0], lo[mt][ks][0]);
            split2<BF16>(x[mt][2 * ks][2], x[mt][2 * ks][3], hi[mt][ks][1], lo[mt][ks][1]);
            split2<BF16>(x[mt][2 * ks + 1][0], x[mt][2 * ks + 1][1], hi[mt][ks][2], lo[mt][ks][2]);
            split2<BF16>(x[mt][2 * ks + 1][2], x[mt][2 * ks + 1][3], hi[mt][ks][3], lo[mt][ks][3]);
        }
}

// A-fragments → a TP×TP 16-bit tile (row i, column k at i·LS + 2k bytes): the registers q with q % W = part
// (W warps holding the same fragments store one part each).
template <int MT, int LS, int W = 1>
__device__ __forceinline__ void store_frags(unsigned char* tile, const std::uint32_t (&f)[MT][MT][4], int lane, int part = 0) {
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int ks = 0; ks < MT; ++ks)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                if (q % W != part) continue;
                const int i = mt * 16 + g + (q & 1) * 8, k = ks * 16 + (q >> 1) * 8 + 2 * t4;
                *reinterpret_cast<std::uint32_t*>(tile + i * LS + k * 2) = f[mt][ks][q];
            }
}

// s[mt][nt] += X·Wᵀ (TP×TP over the head dim), X and W swizzled 16-bit tiles of TP rows.
template <bool BF16, int D, int MT>
__device__ __forceinline__ void gram(float (&s)[MT][2 * MT][4], std::uint32_t sX, std::uint32_t sW, int lane) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t xa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(xa[mt], sX + swz<D>(mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
        for (int np = 0; np < MT; ++np) {
            std::uint32_t wf[4];
            ldmatrix_x4(wf, sW + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma_16816<BF16>(s[mt][2 * np], xa[mt], wf[0], wf[1]);
                mma_16816<BF16>(s[mt][2 * np + 1], xa[mt], wf[2], wf[3]);
            }
        }
    }
}

// B-fragments (k-slice ks of the TP rows, 16 columns starting at 16·c16) of a swizzled row tile, for products
// that contract over its rows.
template <int D>
__device__ __forceinline__ void row_tile_b(std::uint32_t (&f)[4], std::uint32_t tile, int ks, int c16, int lane) {
    ldmatrix_x4_trans(f, tile + swz<D>(ks * 16 + (lane & 15), c16 * 2 + (lane >> 4)));
}

// A-fragments of Mᵀ (m-tile kt, k-slice ks) from a TP×TP tile holding M[i][k] (row i): ldmatrix.trans of 8×8 blocks.
template <int LS>
__device__ __forceinline__ void transposed_a(std::uint32_t (&f)[4], std::uint32_t tile, int kt, int ks, int lane) {
    ldmatrix_x4_trans(f, tile + (ks * 16 + (lane & 7) + ((lane >> 4) << 3)) * LS + (kt * 16 + ((lane >> 3) & 1) * 8) * 2);
}

// A-fragments of M (m-tile mt, k-slice ks) from the same tile.
template <int LS>
__device__ __forceinline__ void plain_a(std::uint32_t (&f)[4], std::uint32_t tile, int mt, int ks, int lane) {
    ldmatrix_x4(f, tile + (mt * 16 + (lane & 15)) * LS + (ks * 16 + (lane >> 4) * 8) * 2);
}

// acc[kt] += (Mᵀ·Z)[rows of m-tile kt][columns 16·c0 + …] for the split M in tiles (mh, ml), Z a row tile.
template <bool BF16, int D, int MT, int LS, int NDP>
__device__ __forceinline__ void transposed_product(float (&acc)[MT][2 * NDP][4], std::uint32_t mh, std::uint32_t ml,
                                                   std::uint32_t z, int c0, int lane) {
#pragma unroll
    for (int ks = 0; ks < MT; ++ks) {
        std::uint32_t ah[MT][4], al[MT][4];
#pragma unroll
        for (int kt = 0; kt < MT; ++kt) {
            transposed_a<LS>(ah[kt], mh, kt, ks, lane);
            transposed_a<LS>(al[kt], ml, kt, ks, lane);
        }
#pragma unroll
        for (int dp = 0; dp < NDP; ++dp) {
            std::uint32_t vf[4];
            row_tile_b<D>(vf, z, ks, c0 + dp, lane);
#pragma unroll
            for (int kt = 0; kt < MT; ++kt) {
                mma_16816<BF16>(acc[kt][2 * dp], ah[kt], vf[0], vf[1]);
                mma_16816<BF16>(acc[kt][2 * dp + 1], ah[kt], vf[2], vf[3]);
                mma_16816<BF16>(acc[kt][2 * dp], al[kt], vf[0], vf[1]);
                mma_16816<BF16>(acc[kt][2 * dp + 1], al[kt], vf[2], vf[3]);
            }
        }
    }
}

// The block's barrier: a warp's own with one warp, the block's with more.
template <int W> __device__ __forceinline__ void block_sync() {
    if constexpr (W == 1) __syncwarp();
    else __syncthreads();
}

// Sum over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Sum over the 8 lanes of equal lane % 4 (the lanes holding one accumulator column).
__device__ __forceinline__ float column_sum(float v) {
#pragma unroll
    for (int o = 4; o <= 16; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

} // namespace lstep_bwd_mma

// Four warps at MT ≤ 2: 128 registers, so that four blocks (16 warps) fit an SM (the earlier step spills ~124 B
// at MT = 2; at MT = 3 the bound would spill kilobytes, so none is set there).
template <bool BF16, int D, bool LAST, int MT, int W>
__global__ void __launch_bounds__(32 * W, W == 4 && MT <= 2 ? 4 : 1) lstep_bwd_mma_kernel(const LStepBwdParams p) {
    using namespace lstep_bwd_mma;
    using E = typename ElemType<BF16>::T;
    constexpr int TP = 16 * MT, NT = 2 * MT, CH = D / 8, ROWB = D * 2, LS = lstep_bwd_mma_lstride(MT), NTH = 32 * W;
    // Output columns per pass (registers); the D / CW passes of each T×d product are split among the W warps.
    constexpr int CW = (MT == 3 || D / 64 < W) ? 32 : 64, NDP = CW / 16, NDT = CW / 8, PASSES = D / CW / W;
    constexpr float LOG2E = 1.4426950408889634f;
    static_assert(TP * CH % NTH == 0 && 32 % CH == 0, "row chunks of one row stay within aligned lane groups");
    static_assert(W >= 1 && PASSES * CW * W == D, "the column passes divide among the warps");

    extern __shared__ __align__(128) unsigned char lsb_smem[];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int dc0 = warp * PASSES; // this warp's first column pass
    const std::int64_t j = blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, T = int(p.frames);
    const LStepMask mask = lstep_mask(p);
    const bool masked = mask.any(); // uniform
    const auto fitted = [&](int k) { return !masked || mask.fitted(k, T); };

    unsigned char* const tQ = lsb_smem;             // Q_i; later daL staged
    unsigned char* const tA = tQ + TP * ROWB;       // aL_k
    unsigned char* const tX = tA + TP * ROWB;       // last: Y_k;  earlier: daR_k (hi)
    unsigned char* const tG = tX + TP * ROWB;       // last: dO_i, later dY staged;  earlier: daR_k (lo)
    unsigned char* const tLh = tG + TP * ROWB;      // L (then dZ) [i][k], hi
    unsigned char* const tLl = tLh + TP * LS;       // lo
    float* const sV = reinterpret_cast<float*>(tLl + TP * LS); // earlier: dcR_k
    float* const sDC = sV + TP;                                 // dcL_k·cL_k (exact gradient), else 0
    float* const sP = sDC + TP;                                 // warps 1..W-1: their parts of D_R_k
    const std::uint32_t sQ = smem_addr(tQ), sA = smem_addr(tA), sX = smem_addr(tX), sG = smem_addr(tG);
    const std::uint32_t sLh = smem_addr(tLh), sLl = smem_addr(tLl);

    gather_rows_async<BF16, D, TP>(sQ, p.q, b, h, j, T, tid, KeepAllRows{}, NTH);
    gather_rows_async<BF16, D, TP>(sA, p.a, b, h, j, T, tid, fitted, NTH);
    if constexpr (LAST) {
        gather_rows_async<BF16, D, TP>(sX, p.y, b, h, j, T, tid, fitted, NTH);
        const bool zero0 = p.zero_frame0;
        gather_rows_async<BF16, D, TP>(sG, p.dout, b, h, j, T, tid, [&](int r) { return !(zero0 && r == 0); }, NTH);
    }
    cp_async_commit();

    if constexpr (!LAST) {
        // The loop below reads daR, aR and cR with plain loads, a few rows per unrolled group: all their rows are
        // requested into L2 first, so that those loads wait for L2 rather than each group for DRAM.
        prefetch_rows_l2<const float, D * 4>(p.dar, b, h, j, T, tid, NTH, KeepAllRows{});
        prefetch_rows_l2<const E, D * 2>(p.ar, b, h, j, T, tid, NTH, fitted);
        prefetch_rows_l2<const float, 4>(p.cr, b, h, j, T, tid, NTH, fitted);
        // daR (f32) → hi, lo tiles; dcR_k = −⟨aR_k, daR_k⟩/cR_k where cR_k > clamp (aR, cR of unfitted frames not read).
#pragma unroll 4
        for (int c = tid; c < TP * CH; c += NTH) {
            const int r = c / CH, ch = c % CH;
            float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, part = 0.f;
            if (r < T) {
                const float4* src = reinterpret_cast<const float4*>(view_row<const float>(p.dar, b, h, r, j) + ch * 8);
                const float4 u = src[0], w = src[1];
                x[0] = u.x; x[1] = u.y; x[2] = u.z; x[3] = u.w; x[4] = w.x; x[5] = w.y; x[6] = w.z; x[7] = w.w;
                if (fitted(r)) {
                    const uint4 av = *reinterpret_cast<const uint4*>(view_row<const E>(p.ar, b, h, r, j) + ch * 8);
                    const std::uint32_t aw[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float2 a2 = unpack2<BF16>(aw[e]);
                        part = fmaf(a2.x, x[2 * e], part);
                        part = fmaf(a2.y, x[2 * e + 1], part);
                    }
                }
            }
            std::uint32_t hi[4], lo[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) split2<BF16>(x[2 * e], x[2 * e + 1], hi[e], lo[e]);
            *reinterpret_cast<uint4*>(tX + swz<D>(r, ch)) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
            *reinterpret_cast<uint4*>(tG + swz<D>(r, ch)) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
#pragma unroll
            for (int o = 1; o < CH; o <<= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
            if (ch == 0) {
                float dcr = 0.f;
                if (r < T && fitted(r)) {
                    const float cr = *view_row<const float>(p.cr, b, h, r, j);
                    dcr = (cr > p.clamp && cr > 0.f) ? -part / cr : 0.f;
                }
                sV[r] = dcr;
            }
        }
    }

    // Per-thread scalars: cL at columns k = nt·8 + 2·(lane%4) + e; for rows i = mt·16 + lane/4 + 8r the merged
    // lse (last, merged) and D (last).
    float cl[NT][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int k = nt * 8 + 2 * t4 + e;
            cl[nt][e] = k < T && fitted(k) ? *view_row<const float>(p.c, b, h, k, j) : 0.f;
        }
    const bool merged = LAST && p.merged_lse.ptr != nullptr; // uniform
    float rowv[MT][2];                                       // last: D_i;  earlier: Σ_k L·dL
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int i = mt * 16 + g + 8 * r;
            rowv[mt][r] = LAST && i < T && !(p.zero_frame0 && i == 0) ? *view_row<const float>(p.drow, b, h, i, j) : 0.f;
        }
    cp_async_wait<0>();
    block_sync<W>();

    // z = Q·aLᵀ − cL (−inf at padded and exact key frames), then L in place.
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
    gram<BF16, D, MT>(s, sQ, sA, lane);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int i = mt * 16 + g + 8 * r;
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int k = nt * 8 + 2 * t4 + e;
                    const bool keep = k < T && !(masked && mask.exact(i, k));
                    const float z = keep ? s[mt][nt][2 * r + e] - cl[nt][e] : -INFINITY;
                    s[mt][nt][2 * r + e] = z;
                    mx = fmaxf(mx, z);
                }
            if (merged) { // L = exp(min(z − lse_i, 0)) with the row's merged lse (0 where lse_i = −inf)
                const float lse = i < T ? *view_row<const float>(p.merged_lse, b, h, i, j) : -INFINITY;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        float& z = s[mt][nt][2 * r + e];
                        z = lse == -INFINITY ? 0.f : fast_exp2(fminf(z - lse, 0.f) * LOG2E);
                    }
                continue;
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const bool empty = mx == -INFINITY || i >= T; // a padded row, or every key frame exact: L = 0
            const float m = mx == -INFINITY ? 0.f : mx;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float& z = s[mt][nt][2 * r + e];
                    z = fast_exp2((z - m) * LOG2E);
                    sum += z;
                }
            sum = quad_sum(sum);
            const float inv = empty ? 0.f : 1.f / sum;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) s[mt][nt][2 * r + e] *= inv;
        }

    // dL, then dZ = L∘(dL − row constant) in the same registers.
    float dz[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) dz[mt][nt][e] = 0.f;
    if constexpr (LAST) {
        gram<BF16, D, MT>(dz, sG, sX, lane); // ⟨dO_i, Y_k⟩
    } else {
        gram<BF16, D, MT>(dz, sQ, sX, lane); // ⟨Q_i, daR_k⟩ = ⟨Q_i, hi_k⟩ + ⟨Q_i, lo_k⟩
        gram<BF16, D, MT>(dz, sQ, sG, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float acc = 0.f;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        float& dl = dz[mt][nt][2 * r + e];
                        dl += sV[nt * 8 + 2 * t4 + e];
                        acc = fmaf(s[mt][nt][2 * r + e], dl, acc);
                    }
                rowv[mt][r] = quad_sum(acc);
            }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) dz[mt][nt][e] = s[mt][nt][e] * (dz[mt][nt][e] - rowv[mt][e >> 1]);

    // dcL_k = −Σ_i dZ[i][k] (f32): dc, and dcL_k·cL_k for D_R.
    {
        const bool with_dc = p.dc.ptr != nullptr; // uniform
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float v = 0.f;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) v += dz[mt][nt][e] + dz[mt][nt][2 + e];
                v = column_sum(v);
                const int k = nt * 8 + 2 * t4 + e;
                if (g == 0 && warp == 0) {
                    const float dc = fitted(k) ? -v : 0.f;
                    if (with_dc && k < T) *view_row<float>(p.dc, b, h, k, j) = dc;
                    sDC[k] = with_dc && k < T && fitted(k) ? dc * cl[nt][e] : 0.f;
                }
            }
    }

    // L's split parts into the T×T tiles (for Lᵀ in the last step's dY, for L in the earlier steps' dQ).
    {
        std::uint32_t lh[MT][MT][4], ll[MT][MT][4];
        split_frags<BF16, MT>(s, lh, ll);
        store_frags<MT, LS, W>(tLh, lh, lane, warp);
        store_frags<MT, LS, W>(tLl, ll, lane, warp);
    }
    std::uint32_t zh[MT][MT][4], zl[MT][MT][4];
    split_frags<BF16, MT>(dz, zh, zl);
    block_sync<W>(); // L complete; every warp's reads of the dO and Q tiles for the Gram products done

    float ey[MT][2] = {}; // last: ⟨dY_k, Y_k⟩ of the rounded dY, rows k = kt·16 + lane/4 + 8r (partial per lane)
    if constexpr (LAST) {
        // dY = Lᵀ·dO, staged over the dO columns just read.
#pragma unroll 1
        for (int dc = dc0; dc < dc0 + PASSES; ++dc) {
            float acc[MT][NDT][4];
#pragma unroll
            for (int kt = 0; kt < MT; ++kt)
#pragma unroll
                for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[kt][dt][e] = 0.f;
            transposed_product<BF16, D, MT, LS, NDP>(acc, sLh, sLl, sG, dc * NDP, lane);
            __syncwarp();
#pragma unroll
            for (int kt = 0; kt < MT; ++kt)
#pragma unroll
                for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const int k = kt * 16 + g + 8 * r, col = dc * CW + dt * 8 + 2 * t4;
                        const std::uint32_t at = swz<D>(k, col >> 3) + (col & 7) * 2;
                        const std::uint32_t packed = pack2<BF16>(acc[kt][dt][2 * r], acc[kt][dt][2 * r + 1]);
                        *reinterpret_cast<std::uint32_t*>(tG + at) = packed;
                        const float2 dy = unpack2<BF16>(packed), y = unpack2<BF16>(*reinterpret_cast<const std::uint32_t*>(tX + at));
                        ey[kt][r] = fmaf(dy.x, y.x, fmaf(dy.y, y.y, ey[kt][r]));
                    }
        }
    }

    // dQ (+)= [earlier: L·daR +] dZ·aL, one pass over dq per (column block, row).
    const bool store_dq = LAST && p.dq_overwrite; // uniform
#pragma unroll 1
    for (int dc = dc0; dc < dc0 + PASSES; ++dc) {
        float acc[MT][NDT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mt][dt][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < MT; ++ks) {
            [[maybe_unused]] std::uint32_t lh[MT][4], ll[MT][4];
            if constexpr (!LAST) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    plain_a<LS>(lh[mt], sLh, mt, ks, lane);
                    plain_a<LS>(ll[mt], sLl, mt, ks, lane);
                }
            }
#pragma unroll
            for (int dp = 0; dp < NDP; ++dp) {
                std::uint32_t af[4];
                row_tile_b<D>(af, sA, ks, dc * NDP + dp, lane);
                [[maybe_unused]] std::uint32_t rh[4], rl[4];
                if constexpr (!LAST) {
                    row_tile_b<D>(rh, sX, ks, dc * NDP + dp, lane);
                    row_tile_b<D>(rl, sG, ks, dc * NDP + dp, lane);
                }
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_16816<BF16>(acc[mt][2 * dp], zh[mt][ks], af[0], af[1]);
                    mma_16816<BF16>(acc[mt][2 * dp + 1], zh[mt][ks], af[2], af[3]);
                    mma_16816<BF16>(acc[mt][2 * dp], zl[mt][ks], af[0], af[1]);
                    mma_16816<BF16>(acc[mt][2 * dp + 1], zl[mt][ks], af[2], af[3]);
                    if constexpr (!LAST) {
                        mma_16816<BF16>(acc[mt][2 * dp], lh[mt], rh[0], rh[1]);
                        mma_16816<BF16>(acc[mt][2 * dp + 1], lh[mt], rh[2], rh[3]);
                        mma_16816<BF16>(acc[mt][2 * dp], lh[mt], rl[0], rl[1]);
                        mma_16816<BF16>(acc[mt][2 * dp + 1], lh[mt], rl[2], rl[3]);
                        mma_16816<BF16>(acc[mt][2 * dp], ll[mt], rh[0], rh[1]);
                        mma_16816<BF16>(acc[mt][2 * dp + 1], ll[mt], rh[2], rh[3]);
                    }
                }
            }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int i = mt * 16 + g + 8 * r;
                if (i >= T) continue;
                float* row = view_row<float>(p.dq, b, h, i, j) + dc * CW + 2 * t4;
#pragma unroll
                for (int dt = 0; dt < NDT; ++dt) {
                    if (store_dq) *reinterpret_cast<float2*>(row + dt * 8) = make_float2(acc[mt][dt][2 * r], acc[mt][dt][2 * r + 1]);
                    else red_add_f32x2(row + dt * 8, acc[mt][dt][2 * r], acc[mt][dt][2 * r + 1]);
                }
            }
    }

    // dZ's split parts replace L's; daL = dZᵀ·Q staged over the Q columns just read; D_R.
    block_sync<W>(); // every warp done reading L
    store_frags<MT, LS, W>(tLh, zh, lane, warp);
    store_frags<MT, LS, W>(tLl, zl, lane, warp);
    block_sync<W>();
    float ea[MT][2] = {}; // ⟨daL_k, aL_k⟩ of the rounded daL (partial per lane)
#pragma unroll 1
    for (int dc = dc0; dc < dc0 + PASSES; ++dc) {
        float acc[MT][NDT][4];
#pragma unroll
        for (int kt = 0; kt < MT; ++kt)
#pragma unroll
            for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[kt][dt][e] = 0.f;
        transposed_product<BF16, D, MT, LS, NDP>(acc, sLh, sLl, sQ, dc * NDP, lane);
        __syncwarp();
#pragma unroll
        for (int kt = 0; kt < MT; ++kt)
#pragma unroll
            for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int k = kt * 16 + g + 8 * r, col = dc * CW + dt * 8 + 2 * t4;
                    const std::uint32_t at = swz<D>(k, col >> 3) + (col & 7) * 2;
                    const std::uint32_t packed = pack2<BF16>(acc[kt][dt][2 * r], acc[kt][dt][2 * r + 1]);
                    *reinterpret_cast<std::uint32_t*>(tQ + at) = packed;
                    const float2 da = unpack2<BF16>(packed), a = unpack2<BF16>(*reinterpret_cast<const std::uint32_t*>(tA + at));
                    ea[kt][r] = fmaf(da.x, a.x, fmaf(da.y, a.y, ea[kt][r]));
                }
    }
    // D_R: this warp's columns' part of ⟨daL_k, aL_k⟩ (+ ⟨dY_k, Y_k⟩); the other warps' parts go through sP and
    // warp 0 adds them in warp order.
#pragma unroll
    for (int kt = 0; kt < MT; ++kt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float v = quad_sum(ea[kt][r]) + (LAST ? quad_sum(ey[kt][r]) : 0.f);
            const int k = kt * 16 + g + 8 * r;
            if (W > 1 && warp > 0 && t4 == 0) sP[(warp - 1) * TP + k] = v;
            rowv[kt][r] = v;
        }
    if constexpr (W > 1) __syncthreads();
    if (warp == 0)
#pragma unroll
        for (int kt = 0; kt < MT; ++kt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int k = kt * 16 + g + 8 * r;
                float v = rowv[kt][r];
#pragma unroll
                for (int w = 1; w < W; ++w) v += sP[(w - 1) * TP + k];
                if (t4 == 0 && k < T) *view_row<float>(p.drow_r, b, h, k, j) = v + sDC[k];
            }
    block_sync<W>();
    scatter_rows<BF16, D>(tQ, p.da, b, h, j, T, tid, 0, NTH);
    if constexpr (LAST) scatter_rows<BF16, D>(tG, p.dy, b, h, j, T, tid, 0, NTH);
}

} // namespace vmonarch::cuda
