// The Hopper flash backward's specialized-schedule instances in the prepared form (flash_bwd_sm90_rows.cuh)
// for f16, head dim 64 (one file per group: they compile in parallel).
#include "cuda/bwd/sm90/flash_bwd_sm90_ws_launch.cuh"

namespace vmonarch::cuda {
template void launch_flash_bwd_sm90_ws_typed<false, 64, true>(const FlashBwdParams&, const hopper::BwdSm90Maps&, void*, const char*);
} // namespace vmonarch::cuda
