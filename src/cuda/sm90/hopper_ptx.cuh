// Internal: the sm_90 PTX the Hopper flash kernel uses besides wgmma itself: mbarriers (init, arrive,
// arrive with an expected transaction count, parity wait), TMA tile loads completing on an mbarrier,
// wgmma fences / commit / wait, and shared-memory matrix descriptors for 128-byte-swizzled tiles.
// Only include from code compiled for sm_90 (wgmma needs sm_90a).
//
// Shared-memory tile layout used throughout (what a TMA load with CU_TENSOR_MAP_SWIZZLE_128B and a box of
// 64 16-bit elements × R rows writes at a 1024-byte-aligned address): row r of the box occupies bytes
// [128·r, 128·r + 128), and its 16-byte chunk c sits at chunk position c ^ (r & 7). A head dim of 128 is two
// such boxes ("column blocks") one after the other.
#pragma once

#include <cstdint>

namespace vmonarch::cuda::hopper {

// ---- mbarrier ------------------------------------------------------------------------------------------
// This thread's warp index, broadcast from lane 0: equal across the warp, which the compiler then knows,
// so that shared-memory addresses and wgmma descriptors derived from it stay in uniform registers (no
// per-GEMM R2UR moves) and branches on it are warp-uniform.
__device__ __forceinline__ int warp_index_uniform() { return __shfl_sync(0xffffffffu, int(threadIdx.x) >> 5, 0); }

__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the async proxy (TMA complete_tx) before first use.
__device__ __forceinline__ void fence_barrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}

// One arrival plus `bytes` of expected transactions (the TMA loads of this phase complete them).
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ bool mbar_try_wait(std::uint32_t bar, std::uint32_t parity) {
    std::uint32_t ok;
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return ok != 0;
}

// Wait until the phase with this parity has completed (acquire at CTA scope).
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}

// ---- TMA -----------------------------------------------------------------------------------------------
// 5-D tiled load of the tensor map's box at coordinates (c0..c4) into shared memory at dst (1024-byte
// aligned for the 128-byte swizzle); completes `box bytes` transactions on bar. Out-of-bounds elements
// are written as zeros.
__device__ __forceinline__ void tma_load_5d(std::uint32_t dst, const void* tensor_map, std::uint32_t bar, int c0, int c1,
                                            int c2, int c3, int c4) {
    asm volatile(
        "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5, %6}], "
        "[%7];\n" ::"r"(dst),
        "l"(reinterpret_cast<std::uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(bar)
        : "memory");
}

__device__ __forceinline__ void prefetch_tensor_map(const void* tensor_map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<std::uint64_t>(tensor_map)) : "memory");
}

// ---- wgmma ordering ------------------------------------------------------------------------------------
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pin a register that an in-flight wgmma reads or writes: keeps the compiler from moving its uses across
// the wgmma fence / wait instructions (they are volatile asm, as is this).
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(std::uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }

// ---- named barriers (ids 1–15; 0 is __syncthreads) ------------------------------------------------------
// bar.sync waits until `count` threads (a multiple of 32) have reached barrier `id`, itself included;
// bar.arrive counts this thread's warp towards it without waiting.
__device__ __forceinline__ void named_bar_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// Barrier `id` over `count` threads that also returns whether `pred` holds in all of them.
__device__ __forceinline__ bool named_bar_all(int id, int count, bool pred) {
    std::uint32_t all;
    asm volatile("{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.and.pred q, %2, %3, p;\n selp.u32 %0, 1, 0, q;\n}\n"
                 : "=r"(all)
                 : "r"(std::uint32_t(pred)), "r"(id), "r"(count)
                 : "memory");
    return all != 0;
}

// ---- register budget of a warpgroup (all its warps execute it) ----------------------------------------
template <int N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }

// ---- matrix descriptors --------------------------------------------------------------------------------
// 64-bit wgmma shared-memory descriptor: start address >> 4 in bits 0–13, leading-dimension byte offset
// >> 4 in bits 16–29, stride-dimension byte offset >> 4 in bits 32–45, base offset 0 (atoms 1024-byte
// aligned), swizzle mode in bits 62–63 (1 = 128-byte swizzle).
__device__ __forceinline__ std::uint64_t make_desc_sw128(std::uint32_t smem_addr, std::uint32_t lbo_bytes,
                                                         std::uint32_t sbo_bytes) {
    return std::uint64_t((smem_addr & 0x3FFFFu) >> 4) | (std::uint64_t((lbo_bytes >> 4) & 0x3FFFu) << 16) |
           (std::uint64_t((sbo_bytes >> 4) & 0x3FFFu) << 32) | (std::uint64_t(1) << 62);
}

// K-major operand (rows × 16 reduction elements starting at element k0 of the row; k0 a multiple of 16)
// of a tile of `rows` rows in the layout above: 8-row groups are 1024 bytes apart (stride byte offset);
// the leading byte offset is unused for swizzled K-major layouts whose K step (32 bytes) fits the 128-byte
// swizzle span. Stepping k inside a 64-element column block moves the start address by 32 bytes; the
// hardware applies the XOR swizzle to the final address bits, which matches what TMA wrote.
__device__ __forceinline__ std::uint64_t desc_k_major(std::uint32_t tile, int rows, int k0) {
    const std::uint32_t addr = tile + std::uint32_t(k0 >> 6) * std::uint32_t(rows) * 128u + std::uint32_t(k0 & 63) * 2u;
    return make_desc_sw128(addr, 16u, 1024u);
}

// MN-major operand (B of P·V: 16 reduction rows starting at row r0, a multiple of 16 × all N columns) of a
// tile of `rows` rows whose N dimension is the head dim: 8-row groups along the reduction are 1024 bytes
// apart (stride byte offset), 64-column blocks along N are rows·128 bytes apart (leading byte offset).
__device__ __forceinline__ std::uint64_t desc_mn_major(std::uint32_t tile, int rows, int r0) {
    return make_desc_sw128(tile + std::uint32_t(r0) * 128u, std::uint32_t(rows) * 128u, 1024u);
}

} // namespace vmonarch::cuda::hopper
