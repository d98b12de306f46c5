// The flash backward kernels' instances for bf16, head dim 128 (one file per group: they compile in parallel).
#include "cuda/bwd/flash_bwd_launch.cuh"

namespace vmonarch::cuda {
template void launch_flash_bwd_typed<true, 128>(const FlashBwdParams&, void*, const char*);
} // namespace vmonarch::cuda
