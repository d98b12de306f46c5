// Internal: warp-level mma.sync m16n8k16 fragment helpers shared by the flash kernels (and meant for the
// backward ones): the C-fragment coordinates, the C → A repack that turns probabilities into the A operand
// of the next product, and the two warp products of a flash tile (S = Q·Kᵀ, acc += P·V) over swizzled
// shared-memory tiles (common/mma_ptx.cuh: swz).
#pragma once

#include <cstdint>

#include "cuda/common/mma_ptx.cuh"

namespace vmonarch::cuda {

// Register i of an m16nN C fragment (4 per 8-column tile) holds row lane/4 + 8·c_frag_half(i) and column
// c_frag_col(i, lane) of the tile.
__device__ __forceinline__ constexpr int c_frag_half(int i) { return (i >> 1) & 1; }
__device__ __forceinline__ int c_frag_col(int i, int lane) { return 8 * (i >> 2) + 2 * (lane & 3) + (i & 1); }

// C fragments of a 16×(16·KS) f32 tile → A fragments of the same values as bf16/f16 (k-slice ks holds
// columns [16ks, 16ks + 16), i.e. C registers 8ks … 8ks + 7, in the A-fragment order). Used for P after the
// softmax, by mma.sync (sm80) and by wgmma's register-A form (sm90), which share the layout.
template <bool BF16, int KS>
__device__ __forceinline__ void pack_c_to_a(const float (&c)[8 * KS], std::uint32_t (&a)[KS][4]) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        a[ks][0] = pack2<BF16>(c[8 * ks + 0], c[8 * ks + 1]);
        a[ks][1] = pack2<BF16>(c[8 * ks + 2], c[8 * ks + 3]);
        a[ks][2] = pack2<BF16>(c[8 * ks + 4], c[8 * ks + 5]);
        a[ks][3] = pack2<BF16>(c[8 * ks + 6], c[8 * ks + 7]);
    }
}

// A fragment of rows [row0, row0 + 16), k-slice kk of a swizzled tile of D-element rows.
template <int D>
__device__ __forceinline__ void load_a_frag(std::uint32_t (&a)[4], std::uint32_t tile, int row0, int kk, int lane) {
    ldmatrix_x4(a, tile + swz<D>(row0 + (lane & 15), kk * 2 + (lane >> 4)));
}

// S = Q·Kᵀ for MT 16-row m-tiles (rows wrow + 16·mt of the Q tile) × 8·NT keys of the K tile: f32 C
// fragments s[mt][nt], reduction over the head dim D in k16 slices; each K fragment serves all m-tiles.
// With Q_IN_REGS the A fragments come from qf (loaded once per block), else from the Q tile per slice.
template <bool BF16, int D, int MT, int NT, bool Q_IN_REGS, int QM, int QK>
__device__ __forceinline__ void warp_qk(float (&s)[MT][NT][4], const std::uint32_t (&qf)[QM][QK][4], std::uint32_t sQ,
                                        std::uint32_t sK, int wrow, int lane) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < NT; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t qa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if constexpr (Q_IN_REGS) {
#pragma unroll
                for (int e = 0; e < 4; ++e) qa[mt][e] = qf[mt][kk][e];
            } else {
                load_a_frag<D>(qa[mt], sQ, wrow + mt * 16, kk, lane);
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
}

// acc_v += P·V and/or acc_k += P·K for MT m-tiles: P as A fragments pa[mt][ks] over BN = 16·KS keys,
// V / K the BN × D tiles at sV / sK read transposed (their rows are the reduction dimension); each
// fragment serves all m-tiles. An absent value operand's accumulator (AV or AK = 1) is not touched.
template <bool BF16, int D, int MT, int KS, bool V_VALUE, bool K_VALUE, int AV, int AK>
__device__ __forceinline__ void warp_pv(float (&acc_v)[MT][AV][4], float (&acc_k)[MT][AK][4], const std::uint32_t (&pa)[MT][KS][4],
                                        std::uint32_t sV, std::uint32_t sK, int lane) {
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
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
}

} // namespace vmonarch::cuda
