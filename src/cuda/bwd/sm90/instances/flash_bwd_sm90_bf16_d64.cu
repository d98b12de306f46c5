// The Hopper flash backward's instances for bf16, head dim 64 (one file per group: they compile in parallel).
#include "cuda/bwd/sm90/flash_bwd_sm90_launch.cuh"

namespace vmonarch::cuda {
template void launch_flash_bwd_sm90_typed<true, 64, false>(const FlashBwdParams&, const hopper::BwdSm90Maps&, void*, const char*);
} // namespace vmonarch::cuda
