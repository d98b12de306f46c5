// Internal: the sm90 flash kernel's producer warpgroup. Its first thread streams the block's Q tile once
// and then every key tile n (K, and V when it is a value operand) into stage n % STAGES of the ring,
// waiting for the consumers to release a stage before it refills it; each load completes on the stage's
// full barrier (TMA transaction count).
#pragma once

#include "cuda/sm90/flash_sm90_shape.cuh"

namespace vmonarch::cuda::hopper {

#ifdef VMONARCH_HOPPER_DEVICE
template <int D, bool V_VALUE, int BN>
__device__ __forceinline__ void produce_tiles(const SmemRing<D, V_VALUE, BN>& sm, const HopperArgs& args, const CUtensorMap* tm_q,
                                              const CUtensorMap* tm_k, const CUtensorMap* tm_v, int q0, int n_tiles, int f, int h,
                                              int b) {
    using Ring = SmemRing<D, V_VALUE, BN>;
    constexpr int CB = D / 64; // 64-element column blocks of a row (one TMA box each)
    constexpr int BM = HopperShape::BM;
    prefetch_tensor_map(tm_q);
    prefetch_tensor_map(tm_k);
    if constexpr (V_VALUE) prefetch_tensor_map(tm_v);
    mbar_arrive_expect_tx(sm.q_bar(), hopper_q_bytes(D));
#pragma unroll
    for (int c = 0; c < CB; ++c) tma_load_row_tile(sm.q + c * BM * 128, tm_q, sm.q_bar(), args.cq, c * 64, q0, f, h, b);
    for (int n = 0; n < n_tiles; ++n) {
        const int s = n % Ring::STAGES;
        if (n >= Ring::STAGES) mbar_wait(sm.empty_bar(s), std::uint32_t((n / Ring::STAGES) - 1) & 1u);
        const std::uint32_t sK = sm.stage(n);
        mbar_arrive_expect_tx(sm.full_bar(s), Ring::STAGE_BYTES);
#pragma unroll
        for (int c = 0; c < CB; ++c) {
            tma_load_row_tile(sK + c * BN * 128, tm_k, sm.full_bar(s), args.ck, c * 64, n * BN, f, h, b);
            if constexpr (V_VALUE)
                tma_load_row_tile(sK + Ring::TILE_BYTES + c * BN * 128, tm_v, sm.full_bar(s), args.cv, c * 64, n * BN, f, h, b);
        }
    }
}
#endif

} // namespace vmonarch::cuda::hopper
