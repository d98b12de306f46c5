// Internal: the flash kernels' epilogue (docs/algorithm.md §4.3), shared by the sm80 and sm90 kernels:
// the finished statistics and the value accumulators of one 16-row mma tile become the rows of O, aL, cL
// and lse. Rows at or past len_q (the query tail of a segment) are not stored.
#pragma once

#include <cstdint>

#include "cuda/common/kernel_params.hpp"
#include "cuda/common/mma_ptx.cuh"
#include "cuda/common/online_softmax.cuh"

namespace vmonarch::cuda {

// One 16-row tile's outputs. acc_v / acc_k are the C fragments of P·V / P·K over the head dim in the
// m16n8 order (register 4·j + 2·r + c: row lane/4 + 8r, column 8j + 2·(lane&3) + c), unnormalised; they
// are read only when V_VALUE / K_VALUE. rows[r] are this thread's two rows relative to q0, len_q the rows
// of the block that exist. The statistics are finished here (quad sums), so each tile's stats are passed
// once.
template <bool BF16, int D, bool K_VALUE, bool V_VALUE, typename Math>
__device__ __forceinline__ void store_flash_rows(const FlashParams& p, int b, int h, int f, std::int64_t q0, const int (&rows)[2],
                                                 int len_q, int lane, OnlineStats<K_VALUE, Math>& st, const float (&acc_v)[D / 2],
                                                 const float (&acc_k)[D / 2]) {
    using T = typename ElemType<BF16>::T;
    const int col0 = 2 * (lane & 3);
    float inv[2];
    st.finish(inv);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (rows[r] >= len_q) continue;
        const std::int64_t rr = q0 + rows[r];
        if constexpr (V_VALUE) { // O (or y) = Σ p·V / S
            T* o = view_row<T>(p.o, b, h, f) + rr * p.o.sr + col0;
#pragma unroll
            for (int j = 0; j < D / 8; ++j)
                *reinterpret_cast<std::uint32_t*>(o + 8 * j) = pack2<BF16>(acc_v[4 * j + 2 * r] * inv[r], acc_v[4 * j + 2 * r + 1] * inv[r]);
        }
        if constexpr (K_VALUE) { // aL = s·Σ p·K / S, cL = Σ R·x − logsumexp x
            T* a = view_row<T>(p.a, b, h, f) + rr * p.a.sr + col0;
            const float sc = Math::mul(inv[r], p.scale);
#pragma unroll
            for (int j = 0; j < D / 8; ++j)
                *reinterpret_cast<std::uint32_t*>(a + 8 * j) = pack2<BF16>(acc_k[4 * j + 2 * r] * sc, acc_k[4 * j + 2 * r + 1] * sc);
            if ((lane & 3) == 0) view_row<float>(p.ent, b, h, f)[rr * p.ent.sr] = st.neg_entropy(r, inv[r]);
        }
        if (p.lse.ptr != nullptr && (lane & 3) == 0) view_row<float>(p.lse, b, h, f)[rr * p.lse.sr] = st.lse(r);
    }
}

} // namespace vmonarch::cuda
