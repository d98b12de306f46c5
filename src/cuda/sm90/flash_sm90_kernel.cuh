// Internal: the Hopper (sm_90a) flash forward kernel. It computes what flash_sm80_kernel computes (same
// FlashParams, same variants, docs/algorithm.md §5; the online statistics of §4 from
// common/online_softmax.cuh, here with every rounding spelled out: RoundedMath; the epilogue of
// common/flash_epilogue.cuh), with
//   - wgmma.mma_async for S = Q·Kᵀ (A and B from shared memory) and for O += P·V, A += P·K (P from
//     registers, V / K from shared memory read MN-major), accumulators in registers;
//   - TMA tile loads (cp.async.bulk.tensor, 128-byte swizzle) completing on mbarriers;
//   - warp specialisation: warps 0–7 are two consumer warpgroups of 64 query rows each (setmaxnreg to 240
//     registers; flash_sm90_consumer.cuh), warps 8–11 the producer warpgroup (24 registers) whose first
//     thread streams Q and K (and V) tiles through an STAGES-deep ring of full / empty mbarriers
//     (flash_sm90_producer.cuh);
//   - several query tiles per block (HopperArgs::q_tiles), Q double-buffered: for short key ranges (every
//     key tile fits the ring at once) the key tiles are loaded once; at d = 64 also for long ranges, the key
//     tiles streaming through the ring once per query tile. The prologue (barrier setup, register
//     reallocation, the first loads' latency) is paid once per block, not per tile; at d = 64 the block's tiles
//     also form one software pipeline (Sm90Consumer::run_query_tiles).
// Rows past len_k arrive as zeros from TMA and are masked to −∞ before the softmax; rows past len_q are
// computed on zeros and never stored. The kernel body exists only in the sm_90a pass.
#pragma once

#include "cuda/common/kernel_params.hpp"
#include "cuda/sm90/flash_sm90_shape.cuh"

#ifdef VMONARCH_HOPPER_DEVICE
#include "cuda/sm90/flash_sm90_consumer.cuh"
#include "cuda/sm90/flash_sm90_producer.cuh"
#endif

namespace vmonarch::cuda::hopper {

template <bool BF16, int D, bool ROW_SCALE, bool K_VALUE, bool V_VALUE, int BN, int MODE>
__global__ void __launch_bounds__(HopperShape::THREADS, 1)
    flash_sm90_kernel(const FlashParams p, const HopperArgs args, const __grid_constant__ CUtensorMap tm_q,
                      const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v) {
#ifdef VMONARCH_HOPPER_DEVICE
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static_assert(BN % 16 == 0 && BN <= 256, "key tile: whole k16 slices of P·V, one TMA box");
    using Ring = SmemRing<D, V_VALUE, BN>;
    extern __shared__ unsigned char smem_raw[];
    const Ring sm(smem_raw);

    const int tid = threadIdx.x, warp = warp_index_uniform(), lane = tid & 31;
    const int f = blockIdx.y / p.heads, h = blockIdx.y % p.heads, b = blockIdx.z;
    // This block's query tiles: args.q_tiles consecutive ones of its row view, fewer at the view's end.
    // Only the narrow key tiles take several (the wide ones are at the register limit: the loop over query
    // tiles makes ptxas spill there); the host gives the others q_tiles = 1.
    constexpr bool kSeveralQueryTiles = BN == hopper_block_n(D, K_VALUE, V_VALUE, false);
    const int view_tiles = int((p.len_q + HopperShape::BM - 1) / HopperShape::BM);
    const int first = int(blockIdx.x) * args.q_tiles;
    const int q_count = kSeveralQueryTiles ? min(args.q_tiles, view_tiles - first) : 1;
    const int q0 = first * HopperShape::BM;
    const int n_tiles = int((p.len_k + BN - 1) / BN);

    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < Ring::STAGES; ++s) {
            mbar_init(sm.full_bar(s), 1);
            mbar_init(sm.empty_bar(s), 4 * HopperShape::CONSUMER_WGS); // one arrival per consumer warp
        }
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            mbar_init(sm.q_full_bar(s), 1);
            mbar_init(sm.q_empty_bar(s), 4 * HopperShape::CONSUMER_WGS);
        }
        fence_barrier_init();
    }
    __syncthreads();

    if (warp >= 4 * HopperShape::CONSUMER_WGS) {
        setmaxnreg_dec<HopperShape::PRODUCER_REGS>();
        if (warp == 4 * HopperShape::CONSUMER_WGS && lane == 0)
            produce_tiles(sm, args, &tm_q, &tm_k, &tm_v, q0, q_count, n_tiles, f, h, b);
    } else {
        setmaxnreg_inc<HopperShape::CONSUMER_REGS>();
        using Consumer = Sm90Consumer<BF16, D, ROW_SCALE, K_VALUE, V_VALUE, BN, MODE>;
        if constexpr (kSeveralQueryTiles && D == 64 && MODE != 0) {
            // The block's query tiles as one pipeline (Sm90Consumer::run_query_tiles).
            Consumer consumer(p, sm, warp, lane, q0, b, h, f, sm.q_slot(0));
            consumer.run_query_tiles(q_count, n_tiles, args.stale_max, b, h, f, hopper_own_q_slot(D) && !Ring::keys_stay(n_tiles));
        } else if constexpr (kSeveralQueryTiles) {
            // d = 128 and MODE 0: one tile after another (the joined pipeline is measured at d = 64 only).
            for (int j = 0; j < q_count; ++j) {
                Consumer consumer(p, sm, warp, lane, q0 + j * HopperShape::BM, b, h, f, sm.q_slot(j & 1));
                consumer.run(n_tiles, args.stale_max, b, h, f, j & 1, std::uint32_t(j >> 1) & 1u,
                             hopper_own_q_slot(D) && !Ring::keys_stay(n_tiles) ? j * n_tiles : 0);
            }
        } else {
            Consumer consumer(p, sm, warp, lane, q0, b, h, f, sm.q_slot(0));
            consumer.run(n_tiles, args.stale_max, b, h, f, 0, 0u);
        }
    }
#endif
}

} // namespace vmonarch::cuda::hopper
