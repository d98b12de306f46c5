// Internal: the host launcher of flash_sm80_kernel for one (element type, head dim) group, instantiated by
// the generated files src/cuda/instances/flash_sm80_*.cu so that the groups compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include "cuda/common/cuda_check.hpp"
#include "cuda/common/flash_variant.hpp"
#include "cuda/sm80/flash_sm80.hpp"
#include "cuda/sm80/flash_sm80_kernel.cuh"

namespace vmonarch::cuda {

template <bool BF16, int D>
void launch_flash_sm80_typed(const FlashParams& p, FlashVariant v, void* stream, const char* what) {
    with_variant(v, [&]<FlashVariant V>() {
        constexpr FlashVariantFlags fl = flags_of(V);
        auto kernel = flash_sm80_kernel<BF16, D, fl.row_scale, fl.k_value, fl.v_value>;
        const int smem = flash_smem_bytes(D, fl.k_value, fl.v_value);
        const auto ctx = [&] { return describe_flash(p, "flash_sm80", what); };
        allow_smem(kernel, smem, ctx);
        constexpr int BM = flash_block_m(D, fl.k_value, fl.v_value);
        const dim3 grid(unsigned((p.len_q + BM - 1) / BM), unsigned(p.segments * p.heads), unsigned(p.batch));
        kernel<<<grid, FlashShape::THREADS, smem, static_cast<cudaStream_t>(stream)>>>(p);
        check_launch_lazy(ctx);
    });
}

} // namespace vmonarch::cuda
