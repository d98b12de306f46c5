// Internal: launch_flash_sm90_typed for one (element type, head dim) group: the variant, key-tile width
// and schedule of an Sm90Launch select the flash_sm90_kernel instance. Included only by the generated
// instance files (src/cuda/instances/flash_sm90_*.cu).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common/cuda_check.hpp"
#include "cuda/sm90/flash_sm90_kernel.cuh"
#include "cuda/sm90/flash_sm90_launch.cuh"

namespace vmonarch::cuda {

// Query tiles per block for a view whose key tiles all stay in the ring (flash_sm90_kernel.cuh): the q in
// 1..8 with the smallest modelled time ceil(blocks(q) / SMs) · (q + kBlockOverheadTiles), one block per SM
// at a time, each query tile one unit and the block's fixed cost (prologue, first loads) in the same units.
// 3 was the estimate before measuring; CogVideoX's 226-key pass on an H200 (bench/RESULTS.md, several query
// tiles per block) puts it nearer 0.25, and both pick 8 there. The constant leans towards fewer blocks.
inline int sm90_multiprocessors() {
    static const int sms = [] {
        int dev = 0, n = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
            cudaGetLastError();
            n = 132;
        }
        return n > 0 ? n : 132;
    }();
    return sms;
}

inline int sm90_query_tiles_per_block(std::int64_t view_tiles, std::int64_t views) {
    constexpr std::int64_t kBlockOverheadTiles = 3;
    const int sms = sm90_multiprocessors();
    int best = 1;
    std::int64_t best_cost = -1;
    for (int q = 1; q <= 8 && q <= view_tiles; ++q) {
        const std::int64_t blocks = (view_tiles + q - 1) / q * views;
        const std::int64_t cost = (blocks + sms - 1) / sms * (q + kBlockOverheadTiles);
        if (best_cost < 0 || cost < best_cost) best = q, best_cost = cost;
    }
    return best;
}

template <bool BF16, int D, FlashVariant V, int BN, int MODE>
void launch_flash_sm90_instance(const FlashParams& p, const Sm90Launch& m, void* stream, const char* what) {
    constexpr FlashVariantFlags fl = flags_of(V);
    auto kernel = hopper::flash_sm90_kernel<BF16, D, fl.row_scale, fl.k_value, fl.v_value, BN, MODE>;
    const int smem = hopper::hopper_smem_bytes(D, fl.v_value, BN);
    const auto ctx = [&] { return describe_flash(p, "flash_sm90", what); }; // built only on failure
    allow_smem(kernel, smem, ctx);
    using hopper::HopperShape;
    const std::int64_t view_tiles = (p.len_q + HopperShape::BM - 1) / HopperShape::BM;
    const std::int64_t views = std::int64_t(p.segments) * p.heads * p.batch;
    hopper::HopperArgs args = m.args;
    if (BN == hopper::hopper_block_n(D, fl.k_value, fl.v_value, false)) {
        const int n_tiles = int((p.len_k + BN - 1) / BN);
        if (hopper::SmemRing<D, fl.v_value, BN>::keys_stay(n_tiles))
            args.q_tiles = sm90_query_tiles_per_block(view_tiles, views);
        else if (hopper::hopper_own_q_slot(D) && m.long_q_tiles > 1) {
            // Long key ranges: the policy's count, where the grid keeps at least the policy's number of waves of
            // blocks (fewer, longer blocks would leave SMs idle at the end: frame 0's recompute, the text queries).
            const int q = int(std::min<std::int64_t>(m.long_q_tiles, view_tiles));
            if ((view_tiles + q - 1) / q * views >= m.long_q_min_waves * std::int64_t(sm90_multiprocessors())) args.q_tiles = q;
        }
    }
    const dim3 grid(unsigned((view_tiles + args.q_tiles - 1) / args.q_tiles), unsigned(p.segments * p.heads), unsigned(p.batch));
    kernel<<<grid, HopperShape::THREADS, smem, static_cast<cudaStream_t>(stream)>>>(p, args, m.q, m.k, m.v);
    check_launch_lazy(ctx);
}

template <bool BF16, int D>
void launch_flash_sm90_typed(const FlashParams& p, FlashVariant v, const Sm90Launch& m, void* stream, const char* what) {
    with_variant(v, [&]<FlashVariant V>() {
        constexpr FlashVariantFlags fl = flags_of(V);
        constexpr int narrow = hopper::hopper_block_n(D, fl.k_value, fl.v_value, false);
        constexpr int wide = hopper::hopper_block_n(D, fl.k_value, fl.v_value, true);
        const auto with_tile = [&]<int BN>() {
#ifdef VMONARCH_EXPERIMENTS // the research schedules (flash_policy.hpp); the release library has only 2
            if (m.mode == 0) return launch_flash_sm90_instance<BF16, D, V, BN, 0>(p, m, stream, what);
            if (m.mode == 1) return launch_flash_sm90_instance<BF16, D, V, BN, 1>(p, m, stream, what);
#endif
            return launch_flash_sm90_instance<BF16, D, V, BN, 2>(p, m, stream, what);
        };
        if constexpr (wide != narrow) {
            if (m.wide) return with_tile.template operator()<wide>();
        }
        return with_tile.template operator()<narrow>();
    });
}

} // namespace vmonarch::cuda
