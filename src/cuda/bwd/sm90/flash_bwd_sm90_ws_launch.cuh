// Internal: the host launcher of the Hopper flash backward's specialized schedule's kernel
// (flash_bwd_sm90_ws_kernel.cuh) for one (element type, head dim) group: that kernel, its shared memory and block
// size, given to launch_flash_bwd_sm90_key_tiles (flash_bwd_sm90_launch_common.cuh). Included only by
// instances/flash_bwd_sm90_ws_*.cu.
#pragma once

#include "cuda/bwd/flash_bwd.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90_launch_common.cuh"
#include "cuda/bwd/sm90/flash_bwd_sm90_ws_kernel.cuh"

namespace vmonarch::cuda {

template <bool BF16, int D, bool HAS_DA, bool HAS_DY, bool PREP, bool KREG, bool NO_DENT, bool DQ_BEHIND>
void launch_flash_bwd_sm90_ws_form(const FlashBwdParams& p, const hopper::BwdSm90Maps& maps, void* stream, const char* what) {
    const auto ctx = [&] { return describe_flash_bwd(p, what) + (PREP ? " (sm90, specialized, prepared)" : " (sm90, specialized)"); };
    launch_flash_bwd_sm90_key_tiles<BF16, D, HAS_DA, HAS_DY>(
        hopper::flash_bwd_sm90_ws_kernel<BF16, D, HAS_DA, HAS_DY, PREP, KREG, NO_DENT, DQ_BEHIND>, hopper::BwdSm90WsLayout<D, HAS_DA, HAS_DY>::SMEM,
        hopper::BwdSm90WsShape::THREADS, p, maps, stream, ctx);
}

// The kernel's forms (flash_bwd_sm90_ws_kernel.cuh), H200, bf16 (bench/RESULTS.md, "Flash backward v7"): K in
// registers with dA only; in the prepared form without the entropy term P kept in place (the split variants:
// all but both values at d 128) and, with dA only, dQ out behind the next tile's products.
template <bool BF16, int D, bool HAS_DA, bool HAS_DY, bool PREP>
void launch_flash_bwd_sm90_ws_variant(const FlashBwdParams& p, const hopper::BwdSm90Maps& maps, void* stream, const char* what) {
    constexpr bool KREG = hopper::bwd_sm90_ws_kreg(HAS_DA, HAS_DY), SPLIT = hopper::bwd_sm90_ws_split(D, HAS_DA, HAS_DY);
    if constexpr (PREP && SPLIT) {
        if (p.dent.ptr == nullptr) return launch_flash_bwd_sm90_ws_form<BF16, D, HAS_DA, HAS_DY, PREP, KREG, true, KREG>(p, maps, stream, what);
    }
    launch_flash_bwd_sm90_ws_form<BF16, D, HAS_DA, HAS_DY, PREP, KREG, false, false>(p, maps, stream, what);
}

template <bool BF16, int D, bool PREP> void launch_flash_bwd_sm90_ws_typed(const FlashBwdParams& p, const hopper::BwdSm90Maps& maps, void* stream, const char* what) {
    const bool da = p.da.ptr != nullptr, dy = p.dy.ptr != nullptr;
    if (da && dy) launch_flash_bwd_sm90_ws_variant<BF16, D, true, true, PREP>(p, maps, stream, what);
    else if (da) launch_flash_bwd_sm90_ws_variant<BF16, D, true, false, PREP>(p, maps, stream, what);
    else launch_flash_bwd_sm90_ws_variant<BF16, D, false, true, PREP>(p, maps, stream, what);
}

} // namespace vmonarch::cuda
