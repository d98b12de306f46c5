// Internal: the Hopper (sm_90a) flash forward kernel: wgmma + TMA + warp specialisation, computing exactly
// what launch_flash computes for the same FlashParams (see kernel_params.hpp). See the README's Hopper section.
#pragma once

#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

// True when the current device is compute capability 9.0, the library carries the sm_90a kernel, the flash
// policy lets the sm90 peer run (VMONARCH_DISABLE_HOPPER unset or "0" when the process read it, or
// set_flash_policy; flash_policy.hpp), and the kernel handles p: head dim 64 or
// 128, a variant launch_flash has, a non-empty problem, and q/k/v views TMA can describe (16-byte-aligned
// base pointers, positive row/segment/head/batch strides that are multiples of 8 elements where the extent
// is above 1). Host-only checks; nothing is launched.
bool hopper_flash_supported(const FlashParams& p);

// launch_flash's route: when hopper_flash_supported(p), launch on `stream` and return true (the checks and
// the tensor maps are made once); otherwise launch nothing and return false. Throws vmonarch::CudaError
// when the launch fails.
bool try_launch_flash_hopper(const FlashParams& p, void* stream, const char* what);

// Launch on `stream` (a cudaStream_t, null = default stream); throws vmonarch::CudaError naming the kernel
// and shapes when p is not supported or the launch fails.
void launch_flash_hopper(const FlashParams& p, void* stream, const char* what);

} // namespace vmonarch::cuda
