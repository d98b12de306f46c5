// Internal: the flash backward's (element type, head dim) groups, instantiated by instances/flash_bwd_*.cu so
// that they compile in parallel; launch_flash_bwd (backward_params.hpp, flash_bwd.cu) checks and dispatches.
#pragma once

#include <string>

#include "cuda/bwd/backward_params.hpp"

namespace vmonarch::cuda {

// "what [flash_bwd<bf16, d=128, row-scale, dA, dY, entropy, deterministic> batch=… heads=… segments=… len_q=…
// len_k=…]": the context of every flash backward error message.
std::string describe_flash_bwd(const FlashBwdParams& p, const char* what);

// Launch a checked, non-empty p (head dim D, element type BF16) on `stream`.
template <bool BF16, int D> void launch_flash_bwd_typed(const FlashBwdParams& p, void* stream, const char* what);

} // namespace vmonarch::cuda
