// Internal: the sm90 flash kernel's block shape, key-tile widths, shared-memory ring and TMA coordinates,
// used by the kernel (flash_sm90_kernel.cuh and its producer / consumer) and by the host (flash_sm90.cu).
#pragma once

#include <cstdint>

#include <cuda.h> // CUtensorMap (a plain 128-byte struct; no driver library is linked)

#include "cuda/common/mma_ptx.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define VMONARCH_HOPPER_DEVICE 1
#include "cuda/sm90/hopper_ptx.cuh"
#include "cuda/sm90/hopper_wgmma.cuh"
#endif

namespace vmonarch::cuda::hopper {

struct HopperShape {
    static constexpr int CONSUMER_WGS = 2;
    static constexpr int BM = 64 * CONSUMER_WGS;           // query rows per block
    static constexpr int THREADS = 128 * (CONSUMER_WGS + 1);  // + one producer warpgroup (one thread issues TMA)
    // Registers per thread after setmaxnreg: 240·256 + 24·128 ≤ 64 K.
    static constexpr int CONSUMER_REGS = 240, PRODUCER_REGS = 24;
    static constexpr int SMEM_LIMIT = 227 * 1024;           // opt-in limit of sm_90
};

// Key rows per tile. Narrow: 128, except K and V both as values at d = 128 (two 64×128 f32 accumulators
// per warpgroup), which takes 64 to keep S, P and both accumulators within the 240 registers. Wide (d = 128,
// K as a value): 176 with K alone (FlashAttention-3's width for one value operand: S 88 + accumulator 64 +
// P 44 registers), 80 with K and V (S 40 + 128 + P 20). The V-only kernel (dense, recompute) stays at 128:
// its stage holds a K and a V tile, and at 176 keys only two stages fit, which starves the pipelined
// schedule (30% slower, bench/RESULTS.md). Which width a call gets: flash_sm90.cu (choose_wide).
constexpr int hopper_block_n(int head_dim, bool k_value, bool v_value, bool wide) {
    if (head_dim != 128 || !k_value) return 128;
    if (v_value) return wide ? 80 : 64;
    return wide ? 176 : 128;
}
constexpr int hopper_q_bytes(int head_dim) { return HopperShape::BM * head_dim * 2; }
// At d = 64 the second Q slot (several query tiles per block, HopperArgs::q_tiles) has its own area, so
// that key tiles may stream through every stage of the ring while the next query tile is loaded (long key
// ranges); at d = 128 it is the ring's last stage (short key ranges only: shared memory is full there).
constexpr bool hopper_own_q_slot(int head_dim) { return head_dim == 64; }
constexpr int hopper_q_area_bytes(int head_dim) { return (hopper_own_q_slot(head_dim) ? 2 : 1) * hopper_q_bytes(head_dim); }
constexpr int hopper_stage_bytes(int head_dim, bool v_value, int bn) { return (v_value ? 2 : 1) * bn * head_dim * 2; }
constexpr int hopper_stages(int head_dim, bool v_value, int bn) {
    const int room = HopperShape::SMEM_LIMIT - 1024 /*alignment slack*/ - 256 /*barriers*/ - hopper_q_area_bytes(head_dim);
    const int n = room / hopper_stage_bytes(head_dim, v_value, bn);
    return n > 4 ? 4 : n;
}
constexpr int hopper_smem_bytes(int head_dim, bool v_value, int bn) {
    return 1024 + hopper_q_area_bytes(head_dim) + hopper_stages(head_dim, v_value, bn) * hopper_stage_bytes(head_dim, v_value, bn) + 256;
}

// Where the (row, segment, head, batch) coordinates of a row view go among the tensor map's dims 1–4
// (dim 0 is the head dim). The host may permute them; see flash_sm90.cu.
struct TmaCoords {
    signed char row = 1, seg = 2, head = 3, batch = 4;
};

struct HopperArgs {
    TmaCoords cq, ck, cv;
    bool stale_max = true; // the stale-offset softmax allowed (FlashPolicy::sm90_stale_max)
    // Query tiles per block (consecutive tiles of one row view). Above 1 only with the narrow key tile and
    // either when every key tile of the view stays in the ring (n_tiles ≤ STAGES − 1, see SmemRing::q_slot):
    // K and V are then loaded once and each further query tile pays only its Q load and its epilogue, not
    // the block's prologue; or at d = 64 (own second Q slot) for any key range: the key tiles then stream
    // through the ring once per query tile, the next tile's Q and first key tiles loading while the
    // current one finishes (no block prologue, no first-load latency between the tiles).
    int q_tiles = 1;
};

// Shared memory of a block: Q (BM rows, 1024-byte aligned for the 128-byte swizzle; at d = 64 two such
// slots), then a ring of STAGES stages of one K tile (and one V tile right after it), then the mbarriers
// full[STAGES], empty[STAGES], q_full[2] and q_empty[2]. With several query tiles per block
// (HopperArgs::q_tiles), Q is double-buffered: slot 0 is the Q area, slot 1 the second Q area at d = 64,
// else the ring's last stage, which the key tiles then never use (a stage holds at least BM·D elements:
// BN ≥ 128, or K and V of BN ≥ 64 rows).
template <int D, bool V_VALUE, int BN> struct SmemRing {
    static constexpr int STAGES = hopper_stages(D, V_VALUE, BN);
    static constexpr int TILE_BYTES = BN * D * 2; // one K or V tile
    static constexpr int STAGE_BYTES = hopper_stage_bytes(D, V_VALUE, BN);
    static_assert(STAGES >= 2, "shared memory too small for two stages");
    static_assert(STAGE_BYTES >= hopper_q_bytes(D), "the last stage must hold a second Q tile");
    static_assert(8 * (2 * STAGES + 4) <= 256, "mbarriers fit their 256 bytes");
    std::uint32_t q, stages, bar;

    __device__ __forceinline__ explicit SmemRing(const void* raw_smem) {
        q = (smem_addr(raw_smem) + 1023u) & ~1023u;
        stages = q + hopper_q_area_bytes(D);
        bar = stages + STAGES * STAGE_BYTES;
    }
    __device__ __forceinline__ std::uint32_t stage(int n) const { return stages + (n % STAGES) * STAGE_BYTES; } // key tile n's K tile
    __device__ __forceinline__ std::uint32_t full_bar(int s) const { return bar + 8u * std::uint32_t(s); }
    __device__ __forceinline__ std::uint32_t empty_bar(int s) const { return bar + 8u * std::uint32_t(STAGES + s); }
    __device__ __forceinline__ std::uint32_t q_slot(int s) const {
        if (s == 0) return q;
        return hopper_own_q_slot(D) ? q + hopper_q_bytes(D) : stages + (STAGES - 1) * STAGE_BYTES;
    }
    // The key tiles of one query tile stay in the ring for the block's further query tiles (loaded once).
    static constexpr bool keys_stay(int n_tiles) { return n_tiles <= STAGES - 1; }
    // Q slot s holds its query tile (one completion per fill) / its Q is no longer read (one arrival per
    // consumer warp).
    __device__ __forceinline__ std::uint32_t q_full_bar(int s) const { return bar + 8u * std::uint32_t(2 * STAGES + s); }
    __device__ __forceinline__ std::uint32_t q_empty_bar(int s) const { return bar + 8u * std::uint32_t(2 * STAGES + 2 + s); }
};

#ifdef VMONARCH_HOPPER_DEVICE
__device__ __forceinline__ void tma_load_row_tile(std::uint32_t dst, const CUtensorMap* map, std::uint32_t bar, TmaCoords c,
                                                  int col, int row, int f, int h, int b) {
    int x[5] = {col, 0, 0, 0, 0};
    // Compile-time indices only (the select chain keeps the array in registers).
#pragma unroll
    for (int i = 1; i < 5; ++i) x[i] = c.row == i ? row : c.seg == i ? f : c.head == i ? h : b;
    tma_load_5d(dst, map, bar, x[0], x[1], x[2], x[3], x[4]);
}
#endif

} // namespace vmonarch::cuda::hopper
