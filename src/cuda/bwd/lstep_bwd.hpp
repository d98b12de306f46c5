// Internal: the two L-step backward kernels (spec §7 steps 3, 4, 6) behind launch_lstep_bwd (backward_params.hpp):
// the tensor-core kernel (lstep_bwd_mma_kernel.cuh, one, two or four warps per position, T ≤ 48 frames) and the CUDA-core
// kernel (lstep_bwd_kernel.cuh, one block per position, every T the forward takes). Both compute the same
// formulas with f32 accumulation; their results differ by rounding (the tensor-core one forms its f32
// operands as two 16-bit parts).
#pragma once

#include <string>

#include "cuda/bwd/backward_params.hpp"

namespace vmonarch::cuda {

enum class LStepBwdKernel {
    automatic,         // tensor cores (two warps per position) for T ≤ lstep_bwd_tensor_core_max_frames(), CUDA cores beyond
    tensor_cores,      // one warp per position; throws a CudaError for longer clips
    tensor_cores_pair, // two warps per position, each half of the T×d products' columns; the same limit
    tensor_cores_quad, // four warps per position, each a quarter of the columns at head dim 128 (two at 64)
    cuda_cores,
};

int lstep_bwd_tensor_core_max_frames();

// The kernel launch_lstep_bwd uses: VMONARCH_LSTEP_BWD = auto (or unset) | tensor-cores | tensor-cores-pair |
// tensor-cores-quad | cuda-cores; any other value is a CudaError naming it.
LStepBwdKernel lstep_bwd_kernel_from_env();

// launch_lstep_bwd with the kernel chosen by the caller (tests, benches).
void launch_lstep_bwd_with(const LStepBwdParams& p, LStepBwdKernel kernel, void* stream, const char* what);

namespace lstep_bwd_detail {
// The tensor-core launch for checked operands, p.frames ≤ 48, with 1, 2 or 4 warps per position; desc names the
// call in errors.
void launch_mma(const LStepBwdParams& p, bool last, int warps, void* stream, const std::string& desc);
} // namespace lstep_bwd_detail

} // namespace vmonarch::cuda
