// Internal: what the sm90 host side (flash_sm90.cu) resolves once per problem, Sm90Launch, and the entry
// of one (element type, head dim) group of kernel instances (defined in flash_sm90_instances.cuh,
// instantiated by the generated files src/cuda/instances/flash_sm90_*.cu).
#pragma once

#include <cuda.h>

#include "cuda/common/flash_variant.hpp"
#include "cuda/sm90/flash_sm90_shape.cuh"

namespace vmonarch::cuda {

// What flash_sm90.cu resolves once per problem before launching.
struct Sm90Launch {
    CUtensorMap q, k, v;
    hopper::HopperArgs args;
    bool wide = false; // key-tile width the maps' boxes were built for (hopper_block_n)
    int mode = 2;      // consumer schedule (flash_sm90_consumer.cuh; 0 and 1 only with VMONARCH_EXPERIMENTS)
    int long_q_tiles = 1;    // query tiles per block at d = 64 when the key tiles do not stay in the ring (FlashPolicy)
    int long_q_min_waves = 8; // ... where the grid keeps at least this many waves of blocks
};

template <bool BF16, int D> void launch_flash_sm90_typed(const FlashParams& p, FlashVariant v, const Sm90Launch& m, void* stream, const char* what);

// The sm90 kernel the support check asks for its loaded binary version (instances/flash_sm90_bf16_d128.cu).
const void* flash_sm90_probe_kernel();

} // namespace vmonarch::cuda
