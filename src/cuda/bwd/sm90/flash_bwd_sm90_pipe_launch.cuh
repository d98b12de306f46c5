// Internal: the host launcher of the Hopper flash backward's pipelined cooperative kernel
// (flash_bwd_sm90_pipe_kernel.cuh) for one (element type, head dim) group: that kernel, its shared memory and
// block size, given to launch_flash_bwd_sm90_key_tiles (flash_bwd_sm90_launch_common.cuh). Included only by
// instances/flash_bwd_sm90_pipe_*.cu.
#pragma once

#include "cuda/bwd/flash_bwd.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90_launch_common.cuh"
#include "cuda/bwd/sm90/flash_bwd_sm90_pipe_kernel.cuh"

namespace vmonarch::cuda {

template <bool BF16, int D, bool HAS_DA, bool HAS_DY> void launch_flash_bwd_sm90_pipe_variant(const FlashBwdParams& p, const hopper::BwdSm90Maps& maps, void* stream, const char* what) {
    const auto ctx = [&] { return describe_flash_bwd(p, what) + " (sm90, cooperative, pipelined)"; };
    launch_flash_bwd_sm90_key_tiles<BF16, D, HAS_DA, HAS_DY>(
        hopper::flash_bwd_sm90_pipe_kernel<BF16, D, HAS_DA, HAS_DY>, hopper::BwdSm90Layout<D, HAS_DA, HAS_DY>::SMEM,
        hopper::BwdSm90Shape::THREADS, p, maps, stream, ctx);
}

template <bool BF16, int D> void launch_flash_bwd_sm90_pipe_typed(const FlashBwdParams& p, const hopper::BwdSm90Maps& maps, void* stream, const char* what) {
    const bool da = p.da.ptr != nullptr, dy = p.dy.ptr != nullptr;
    if (da && dy) launch_flash_bwd_sm90_pipe_variant<BF16, D, true, true>(p, maps, stream, what);
    else if (da) launch_flash_bwd_sm90_pipe_variant<BF16, D, true, false>(p, maps, stream, what);
    else launch_flash_bwd_sm90_pipe_variant<BF16, D, false, true>(p, maps, stream, what);
}

} // namespace vmonarch::cuda
