// Instantiates the flash forward kernels for bf16, head dim 128.
#include "cuda/sm80/flash_sm80_launch.cuh"

namespace vmonarch::cuda {
template void launch_flash_typed<true, 128>(const FlashParams&, cudaStream_t, const char*);
} // namespace vmonarch::cuda
