// Internal: the sm90 flash kernel's producer warpgroup. Its first thread streams the block's first Q tile
// and then every key tile n (K, and V when it is a value operand) into stage n % STAGES of the ring,
// waiting for the consumers to release a stage before it refills it; each load completes on the stage's
// full barrier (TMA transaction count); then the block's further query tiles, if any, into the two Q slots,
// each followed by its key tiles again when they did not all stay in the ring (SmemRing::keys_stay).
#pragma once

#include "cuda/sm90/flash_sm90_shape.cuh"

namespace vmonarch::cuda::hopper {

#ifdef VMONARCH_HOPPER_DEVICE
template <int D, bool V_VALUE, int BN>
__device__ __forceinline__ void produce_tiles(const SmemRing<D, V_VALUE, BN>& sm, const HopperArgs& args, const CUtensorMap* tm_q,
                                              const CUtensorMap* tm_k, const CUtensorMap* tm_v, int q0, int q_count, int n_tiles,
                                              int f, int h, int b) {
    using Ring = SmemRing<D, V_VALUE, BN>;
    constexpr int CB = D / 64; // 64-element column blocks of a row (one TMA box each)
    constexpr int BM = HopperShape::BM;
    prefetch_tensor_map(tm_q);
    prefetch_tensor_map(tm_k);
    if constexpr (V_VALUE) prefetch_tensor_map(tm_v);
    // Query tile j of the block (rows q0 + j·BM) goes to Q slot j % 2, once the consumers have released
    // that slot's previous tile j − 2.
    const auto load_q = [&](int j) {
        const int s = j & 1;
        if (j >= 2) mbar_wait(sm.q_empty_bar(s), std::uint32_t((j >> 1) - 1) & 1u);
        mbar_arrive_expect_tx(sm.q_full_bar(s), hopper_q_bytes(D));
#pragma unroll
        for (int c = 0; c < CB; ++c)
            tma_load_row_tile(sm.q_slot(s) + c * BM * 128, tm_q, sm.q_full_bar(s), args.cq, c * 64, q0 + j * BM, f, h, b);
    };
    // Key tile n into ring position g (stage g % STAGES, its (g / STAGES)-th fill).
    const auto load_keys = [&](int n, int g) {
        const int s = g % Ring::STAGES;
        if (g >= Ring::STAGES) mbar_wait(sm.empty_bar(s), std::uint32_t((g / Ring::STAGES) - 1) & 1u);
        const std::uint32_t sK = sm.stage(g);
        mbar_arrive_expect_tx(sm.full_bar(s), Ring::STAGE_BYTES);
#pragma unroll
        for (int c = 0; c < CB; ++c) {
            tma_load_row_tile(sK + c * BN * 128, tm_k, sm.full_bar(s), args.ck, c * 64, n * BN, f, h, b);
            if constexpr (V_VALUE)
                tma_load_row_tile(sK + Ring::TILE_BYTES + c * BN * 128, tm_v, sm.full_bar(s), args.cv, c * 64, n * BN, f, h, b);
        }
    };
    load_q(0);
    for (int n = 0; n < n_tiles; ++n) load_keys(n, n);
    if (!hopper_own_q_slot(D) || Ring::keys_stay(n_tiles)) { // further query tiles reuse the key tiles above
        for (int j = 1; j < q_count; ++j) load_q(j);
        return;
    }
    // Long key ranges (d = 64, own second Q slot): query tile j's key tiles take ring positions j·n_tiles + n.
    for (int j = 1; j < q_count; ++j) {
        load_q(j);
        for (int n = 0; n < n_tiles; ++n) load_keys(n, j * n_tiles + n);
    }
}
#endif

} // namespace vmonarch::cuda::hopper
