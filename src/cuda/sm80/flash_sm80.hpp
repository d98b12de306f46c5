// Internal: the sm80 peer of the flash router (flash_router.cu): the portable mma.sync flash forward,
// for every sm_80+ GPU, and on an H100 / H200 whatever the sm90 peer does not take.
#pragma once

#include "cuda/common/flash_variant.hpp"
#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

// Launch p (a non-empty problem with keys) on `stream` (a cudaStream_t, null = default stream); throws
// vmonarch::CudaError naming the kernel and shapes when p has no variant, an unsupported head dim, a grid
// too large, or the launch fails.
void launch_flash_sm80(const FlashParams& p, void* stream, const char* what);

// One (element type, head dim) group of instances (src/cuda/instances/flash_sm80_*.cu).
template <bool BF16, int D> void launch_flash_sm80_typed(const FlashParams& p, FlashVariant v, void* stream, const char* what);

} // namespace vmonarch::cuda
