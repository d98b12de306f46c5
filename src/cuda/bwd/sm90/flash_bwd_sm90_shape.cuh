// Internal: the block shape and shared-memory layout of the Hopper (sm_90a) flash backward kernel
// (flash_bwd_sm90_kernel.cuh), used by the kernel and by its host launcher.
//
// A block owns BN = 128 keys of one (segment, head, batch): two consumer warpgroups of 64 keys each, 256
// threads, no producer warpgroup (every thread issues the cp.async loads). It loops over query tiles of
// BM = 64 rows, double-buffered.
//
// Shared memory (from a 1024-byte-aligned base; every tile in the 128-byte-swizzled layout of
// sm90/hopper_ptx.cuh, a head dim of 128 being two 64-element column blocks):
//   K tile (BN rows), V tile (BN rows, with dY) — resident;
//   STAGES stages of Q, dA (with dA), dY (with dY): BM rows each;
//   the dS tile: BM query rows × BN keys (two 64-key column blocks), the A operand of dQ = dS·K;
//   per warpgroup a dQ tile: BM rows of 64 f32 as two boxes of BM rows × 32 f32 in the 128-byte swizzle, the
//   source of the TMA reduce-adds into dq (BwdSm90Maps::dq);
//   STAGES stages of the query tile's raw row operands lse, cR, drow, dent (BM floats each);
//   STAGES stages of the prepared row scalars (flash_bwd_sm90_rows.cuh: per row a float4 and a float),
//   read by the kernels' prepared form only.
#pragma once

#include <cstdint>

#include <cuda.h> // CUtensorMap

#include "cuda/sm90/flash_sm90_shape.cuh" // TmaCoords

namespace vmonarch::cuda::hopper {

struct BwdSm90Shape {
    static constexpr int THREADS = 256;  // two warpgroups
    static constexpr int BN = 128;       // keys per block (64 per warpgroup)
    static constexpr int BM = 64;        // query rows per step
    static constexpr int STAGES = 2;
    static constexpr int ROW_SCALARS = 4; // lse, cR, drow, dent
    static constexpr int DQ_COLS = 64;     // dQ columns per warpgroup
    static constexpr int DQ_BOX_COLS = 32; // f32 columns per TMA box (128 bytes, the swizzle's span)
};

// TMA tensor maps (tma_row_map.hpp, 128-byte swizzle), a __grid_constant__ parameter of the key-tile kernels:
//   dq (f32, boxes of BM rows × DQ_BOX_COLS): dQ tiles go out by TMA reduce-adds, one thread per warpgroup
//     issuing them; zero when deterministic;
//   q, da, dy (16-bit, boxes of BM rows × 64): the specialized schedule's producer loads each query tile by
//     TMA, one thread issuing; zero for the other schedules and for absent operands;
//   k, v (16-bit, boxes of BN rows × 64): the specialized schedule's resident key tile, loaded the same way
//     (v only with dy).
struct BwdSm90Maps {
    CUtensorMap dq, q, da, dy, k, v;
    TmaCoords cdq, cq, cda, cdy, ck, cv;
};

// Whether a backward kernel variant takes the broadcast warp index (sm90/hopper_ptx.cuh, warp_index_uniform),
// which keeps its wgmma descriptors in uniform registers. Read off ptxas -v and the SASS (nvcc 13.0, sm_90a):
// it removes 30–50 of each variant's 35–55 R2UR moves, and ptxas spills no more, at d 64 and in the d 128
// variants the default route takes with one value operand (dA only cooperative or specialized, dY only
// pipelined); elsewhere at d 128 it spills 8–180 bytes more, so those keep the plain index.
constexpr bool bwd_sm90_broadcast_warp(int d, bool has_da, bool has_dy, bool pipelined) {
    if (d == 64) return true;
    return has_da != has_dy && (pipelined ? has_dy : has_da);
}

template <int D, bool HAS_DA, bool HAS_DY> struct BwdSm90Layout {
    using S = BwdSm90Shape;
    static constexpr int KTILE = S::BN * D * 2;
    static constexpr int QTILE = S::BM * D * 2;
    static constexpr int STAGE = (1 + HAS_DA + HAS_DY) * QTILE;
    static constexpr int OFF_V = KTILE;
    static constexpr int OFF_STAGES = (HAS_DY ? 2 : 1) * KTILE;
    static constexpr int OFF_DA = QTILE;                      // inside a stage
    static constexpr int OFF_DY = (1 + HAS_DA) * QTILE;       // inside a stage
    static constexpr int OFF_DS = OFF_STAGES + S::STAGES * STAGE;
    static constexpr int DS_BYTES = S::BM * S::BN * 2;
    static constexpr int OFF_DQ = OFF_DS + DS_BYTES;
    static constexpr int DQ_WG_BYTES = S::BM * S::DQ_COLS * 4; // 1024-byte aligned like OFF_DQ (the swizzle's period)
    static constexpr int OFF_ROWS = OFF_DQ + 2 * DQ_WG_BYTES;
    static constexpr int ROWS_STAGE = S::ROW_SCALARS * S::BM; // floats
    static constexpr int OFF_PREP = OFF_ROWS + S::STAGES * ROWS_STAGE * 4; // 16-byte aligned
    static constexpr int PREP_STAGE = S::BM * 16 + S::BM * 4;               // bytes: BM float4, then BM floats
    static constexpr int BYTES = OFF_PREP + S::STAGES * PREP_STAGE;
    static constexpr int SMEM = 1024 /*alignment slack*/ + BYTES;
    static_assert(SMEM <= 227 * 1024, "sm_90 shared memory");
    static_assert(OFF_PREP % 16 == 0 && PREP_STAGE % 16 == 0);
    static_assert(OFF_DQ % 1024 == 0 && DQ_WG_BYTES % 1024 == 0);
};

} // namespace vmonarch::cuda::hopper
