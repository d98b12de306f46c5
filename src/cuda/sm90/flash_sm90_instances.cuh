// Internal: launch_flash_sm90_typed for one (element type, head dim) group: the variant, key-tile width
// and schedule of an Sm90Launch select the flash_sm90_kernel instance. Included only by the generated
// instance files (src/cuda/instances/flash_sm90_*.cu).
#pragma once

#include <cuda_runtime.h>

#include "cuda/common/cuda_check.hpp"
#include "cuda/sm90/flash_sm90_kernel.cuh"
#include "cuda/sm90/flash_sm90_launch.cuh"

namespace vmonarch::cuda {

template <bool BF16, int D, FlashVariant V, int BN, int MODE>
void launch_flash_sm90_instance(const FlashParams& p, const Sm90Launch& m, void* stream, const char* what) {
    constexpr FlashVariantFlags fl = flags_of(V);
    auto kernel = hopper::flash_sm90_kernel<BF16, D, fl.row_scale, fl.k_value, fl.v_value, BN, MODE>;
    const int smem = hopper::hopper_smem_bytes(D, fl.v_value, BN);
    const auto ctx = [&] { return describe_flash(p, "flash_sm90", what); }; // built only on failure
    allow_smem(kernel, smem, ctx);
    using hopper::HopperShape;
    const dim3 grid(unsigned((p.len_q + HopperShape::BM - 1) / HopperShape::BM), unsigned(p.segments * p.heads), unsigned(p.batch));
    kernel<<<grid, HopperShape::THREADS, smem, static_cast<cudaStream_t>(stream)>>>(p, m.args, m.q, m.k, m.v);
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
