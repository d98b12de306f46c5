// Internal: what every schedule's host launcher of the Hopper flash backward does once it has its key-tile
// kernel: the key-tile kernel over ceil(len_k / BN) key tiles × (segment, head) × batch (dk, dv, and dq by TMA
// reduce-adds through the dq accumulator's tensor map unless deterministic; the maps as try_launch_flash_bwd_sm90
// encoded them), then in deterministic mode the portable query-tile kernel for dq
// (flash_bwd_launch.cuh: launch_flash_bwd_query_tiles), whose order is fixed. Included by the
// flash_bwd_sm90_*launch.cuh headers.
#pragma once

#include <cuda_runtime.h>

#include "cuda/bwd/flash_bwd.hpp"
#include "cuda/bwd/flash_bwd_launch.cuh" // launch_flash_bwd_query_tiles
#include "cuda/bwd/sm90/flash_bwd_sm90_shape.cuh"
#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

template <bool BF16, int D, bool HAS_DA, bool HAS_DY, typename KeyKernel, typename Ctx>
void launch_flash_bwd_sm90_key_tiles(KeyKernel key_kernel, int key_smem, int key_threads, const FlashBwdParams& p,
                                     const hopper::BwdSm90Maps& maps, void* stream, const Ctx& ctx) {
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    using hopper::BwdSm90Shape;
    allow_smem(key_kernel, key_smem, ctx);
    const dim3 grid(unsigned((p.len_k + BwdSm90Shape::BN - 1) / BwdSm90Shape::BN), unsigned(p.segments * p.heads),
                    unsigned(p.batch));
    key_kernel<<<grid, key_threads, key_smem, st>>>(p, maps);
    check_launch_lazy(ctx);
    if (p.deterministic) launch_flash_bwd_query_tiles<BF16, D, HAS_DA, HAS_DY>(p, st, ctx);
}

} // namespace vmonarch::cuda
