// Internal: the host launcher of the Hopper flash backward's pipelined cooperative kernel
// (flash_bwd_sm90_pipe_kernel.cuh) for one (element type, head dim) group: the key-tile kernel (dk, dv, and dq
// by bulk reduce-adds unless deterministic), then in deterministic mode the portable query-tile kernel for dq
// (flash_bwd_kernel.cuh), whose order is fixed. Included only by instances/flash_bwd_sm90_pipe_*.cu.
#pragma once

#include <cuda_runtime.h>

#include "cuda/bwd/flash_bwd.hpp"
#include "cuda/bwd/flash_bwd_kernel.cuh"
#include "cuda/bwd/sm90/flash_bwd_sm90.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90_pipe_kernel.cuh"
#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

template <bool BF16, int D, bool HAS_DA, bool HAS_DY> void launch_flash_bwd_sm90_pipe_variant(const FlashBwdParams& p, void* stream, const char* what) {
    const auto ctx = [&] { return describe_flash_bwd(p, what) + " (sm90, cooperative, pipelined)"; };
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    const unsigned sh = unsigned(p.segments * p.heads), nb = unsigned(p.batch);
    {
        using hopper::BwdSm90Shape;
        auto kernel = hopper::flash_bwd_sm90_pipe_kernel<BF16, D, HAS_DA, HAS_DY>;
        constexpr int smem = hopper::BwdSm90Layout<D, HAS_DA, HAS_DY>::SMEM;
        allow_smem(kernel, smem, ctx);
        const dim3 grid(unsigned((p.len_k + BwdSm90Shape::BN - 1) / BwdSm90Shape::BN), sh, nb);
        kernel<<<grid, BwdSm90Shape::THREADS, smem, st>>>(p);
        check_launch_lazy(ctx);
    }
    if (p.deterministic) {
        auto kernel = flash_bwd_query_kernel<BF16, D, HAS_DA, HAS_DY>;
        constexpr int smem = flash_bwd_query_smem_bytes<D, HAS_DA, HAS_DY>();
        constexpr int BM = FlashBwdQueryShape<D>::BM;
        allow_smem(kernel, smem, ctx);
        const dim3 grid(unsigned((p.len_q + BM - 1) / BM), sh, nb);
        kernel<<<grid, FlashBwdQueryShape<D>::THREADS, smem, st>>>(p);
        check_launch_lazy(ctx);
    }
}

template <bool BF16, int D> void launch_flash_bwd_sm90_pipe_typed(const FlashBwdParams& p, void* stream, const char* what) {
    const bool da = p.da.ptr != nullptr, dy = p.dy.ptr != nullptr;
    if (da && dy) launch_flash_bwd_sm90_pipe_variant<BF16, D, true, true>(p, stream, what);
    else if (da) launch_flash_bwd_sm90_pipe_variant<BF16, D, true, false>(p, stream, what);
    else launch_flash_bwd_sm90_pipe_variant<BF16, D, false, true>(p, stream, what);
}

} // namespace vmonarch::cuda
