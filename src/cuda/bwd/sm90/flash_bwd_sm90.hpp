// Internal: the Hopper (sm_90a) peer of launch_flash_bwd (backward_params.hpp): wgmma flash backward kernel
// (flash_bwd_sm90_kernel.cuh) computing what the portable kernels compute for the same FlashBwdParams.
#pragma once

#include <string>

#include "cuda/bwd/backward_params.hpp"

namespace vmonarch::cuda {

namespace hopper {
struct BwdSm90Maps; // flash_bwd_sm90_shape.cuh: the key-tile kernels' tensor maps
}

// True when the current device is compute capability 9.0, the library carries the sm_90a kernel, the flash
// policy lets the sm90 peer run (VMONARCH_DISABLE_HOPPER unset or "0", or set_flash_policy; flash_policy.hpp)
// p's dq accumulator takes bulk reduce-adds (pointer 16-byte aligned, strides multiples of 4) unless deterministic,
// and with da the scale s is in (1e-30, 1e30) (dK and dQ are accumulated divided by s). p must already
// have passed launch_flash_bwd's checks. Host-only; nothing is launched.
bool flash_bwd_sm90_supported(const FlashBwdParams& p);

// launch_flash_bwd's route: when flash_bwd_sm90_supported(p), launch on `stream` and return true; otherwise
// launch nothing and return false. Throws vmonarch::CudaError when the launch fails.
bool try_launch_flash_bwd_sm90(const FlashBwdParams& p, void* stream, const char* what);

// The consumer schedule of the Hopper kernel (flash_bwd_sm90_kernel.cuh, flash_bwd_sm90_ws_kernel.cuh):
//   cooperative  every thread of two warpgroups loads and computes, block barriers per query tile;
//   specialized  a producer warpgroup feeds a ring of query tiles through mbarriers, two consumer
//                warpgroups compute (registers moved to them by setmaxnreg);
//   cooperative_prepared, specialized_prepared  the same two in the prepared form (flash_bwd_sm90_rows.cuh):
//                the row scalars formed once per row into shared memory in the form the elementwise phase
//                uses, the key mask on the last key tile only, dS stored by stmatrix;
//   cooperative_pipelined  the cooperative prepared form with its work reordered so that more of it runs
//                under the tensor cores (flash_bwd_sm90_pipe_kernel.cuh; the same dk and dv bitwise): the
//                next tile's loads behind this tile's products and dQ queued behind dK and dV (all but both
//                values at d 128), and with one value (at d 128: dA only) P formed and its product issued
//                while dP is still on the tensor cores, and dQ's reduce-adds under the next tile's products;
//   per_problem  (the default) the one measured fastest for the problem's variant on an H200
//                (bench/RESULTS.md): specialized_prepared for every variant, both head dims and both modes.
// The environment's VMONARCH_HOPPER_BWD=<one of these names> at the first call (unset or another value:
// per_problem), or the last set_flash_bwd_sm90_schedule (tests and benchmarks that compare the schedules in
// one process).
enum class FlashBwdSm90Schedule { per_problem, cooperative, specialized, cooperative_prepared, specialized_prepared, cooperative_pipelined };
FlashBwdSm90Schedule flash_bwd_sm90_schedule();
void set_flash_bwd_sm90_schedule(FlashBwdSm90Schedule schedule);
// The schedule a launch of p takes under `schedule` (never per_problem).
FlashBwdSm90Schedule resolve_flash_bwd_sm90_schedule(FlashBwdSm90Schedule schedule, const FlashBwdParams& p);
const char* to_string(FlashBwdSm90Schedule schedule);

// One (element type, head dim) group, instantiated by instances/flash_bwd_sm90_*.cu (PREP: the prepared
// form, instances/flash_bwd_sm90_prep_*.cu). `maps` are p's tensor maps as try_launch_flash_bwd_sm90 encoded
// them, once per launch: dq's unless deterministic, and for the specialized schedule those of q, da, dy too.
template <bool BF16, int D, bool PREP>
void launch_flash_bwd_sm90_typed(const FlashBwdParams& p, const hopper::BwdSm90Maps& maps, void* stream, const char* what);
// The same for the specialized schedule, instantiated by instances/flash_bwd_sm90_ws_*.cu.
template <bool BF16, int D, bool PREP>
void launch_flash_bwd_sm90_ws_typed(const FlashBwdParams& p, const hopper::BwdSm90Maps& maps, void* stream, const char* what);

// The same for the pipelined cooperative kernel, instantiated by instances/flash_bwd_sm90_pipe_*.cu.
template <bool BF16, int D>
void launch_flash_bwd_sm90_pipe_typed(const FlashBwdParams& p, const hopper::BwdSm90Maps& maps, void* stream, const char* what);

// A kernel of the group bf16/d128, whose binary version tells whether the library carries sm_90a code.
const void* flash_bwd_sm90_probe_kernel();

} // namespace vmonarch::cuda
