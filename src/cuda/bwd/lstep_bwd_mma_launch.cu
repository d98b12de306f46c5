// The tensor-core L-step backward's instantiations (dtype, head dim, last/earlier, frames padded to 16·MT, W warps
// per position): one block of W warps per (position, head, batch). Operands are checked by launch_lstep_bwd_with.
#include <cuda_runtime.h>

#include <string>

#include "cuda/bwd/lstep_bwd.hpp"
#include "cuda/bwd/lstep_bwd_mma_kernel.cuh"
#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda::lstep_bwd_detail {
namespace {

template <bool BF16, int D, bool LAST, int MT, int W>
void launch_variant(const LStepBwdParams& p, cudaStream_t stream, const std::string& desc) {
    auto kernel = lstep_bwd_mma_kernel<BF16, D, LAST, MT, W>;
    constexpr int smem = lstep_bwd_mma_smem_bytes(D, MT, W);
    if (smem > 48 * 1024) allow_smem(kernel, smem, desc);
    const dim3 grid(unsigned(p.positions), unsigned(p.heads), unsigned(p.batch));
    kernel<<<grid, 32 * W, smem, stream>>>(p);
    check_launch_lazy(desc);
}

template <bool BF16, int D, bool LAST, int W>
void launch_frames(const LStepBwdParams& p, cudaStream_t stream, const std::string& desc) {
    if (p.frames <= 16) return launch_variant<BF16, D, LAST, 1, W>(p, stream, desc);
    if (p.frames <= 32) return launch_variant<BF16, D, LAST, 2, W>(p, stream, desc);
    launch_variant<BF16, D, LAST, 3, W>(p, stream, desc);
}

template <bool BF16, int D, int W>
void launch_step(const LStepBwdParams& p, bool last, cudaStream_t stream, const std::string& desc) {
    if (last) launch_frames<BF16, D, true, W>(p, stream, desc);
    else launch_frames<BF16, D, false, W>(p, stream, desc);
}

// Four warps split head dim 128 only (d 64 has two column passes of 32): d 64 takes two.
template <int W> void launch_warps(const LStepBwdParams& p, bool last, cudaStream_t st, const std::string& desc) {
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) {
        constexpr int W64 = W < 2 ? W : 2;
        return bf ? launch_step<true, 64, W64>(p, last, st, desc) : launch_step<false, 64, W64>(p, last, st, desc);
    }
    bf ? launch_step<true, 128, W>(p, last, st, desc) : launch_step<false, 128, W>(p, last, st, desc);
}

} // namespace

void launch_mma(const LStepBwdParams& p, bool last, int warps, void* stream, const std::string& desc) {
    static_assert(lstep_bwd_mma_max_frames() == 48, "launch_frames covers MT = 1..3");
    auto st = static_cast<cudaStream_t>(stream);
    if (warps == 4) return launch_warps<4>(p, last, st, desc);
    if (warps == 2) return launch_warps<2>(p, last, st, desc);
    launch_warps<1>(p, last, st, desc);
}

} // namespace vmonarch::cuda::lstep_bwd_detail

namespace vmonarch::cuda {
int lstep_bwd_tensor_core_max_frames() { return lstep_bwd_mma_max_frames(); }
} // namespace vmonarch::cuda
