// The Hopper flash backward's instances for bf16, head dim 128 (one file per group: they compile in parallel).
#include "cuda/bwd/sm90/flash_bwd_sm90_launch.cuh"

namespace vmonarch::cuda {
template void launch_flash_bwd_sm90_typed<true, 128, false>(const FlashBwdParams&, const hopper::BwdSm90Maps&, void*, const char*);
const void* flash_bwd_sm90_probe_kernel() { return reinterpret_cast<const void*>(hopper::flash_bwd_sm90_kernel<true, 128, true, true, false>); }
} // namespace vmonarch::cuda
