// Internal: thin wrappers over the sm_80+ PTX the kernels use: mma.sync m16n8k16 (bf16/f16 operands,
// f32 accumulators), ldmatrix (plain and transposed), cp.async with zero fill, ex2.approx, and type and
// row-addressing helpers shared by the portable and the Hopper flash kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

// 2^x, approximate (MUFU.EX2; flushes denormals): the softmax's exponential in base 2.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// First element of row r of (batch b, head h, segment f) in a RowView (kernel_params.hpp); r = 0 gives the
// segment's first row, to which the flash kernels add their own row offsets.
template <typename T>
__device__ __forceinline__ T* view_row(const RowView& v, int b, int h, std::int64_t f, std::int64_t r = 0) {
    return static_cast<T*>(v.ptr) + b * v.sb + h * v.sh + f * v.sf + r * v.sr;
}

// Byte offset of 16-byte chunk ch of row r in a shared-memory tile of rows of D 16-bit values whose chunks
// are XOR-swizzled by (row & 7): the 8 rows an ldmatrix phase reads hit 8 distinct bank groups.
template <int D>
__device__ __forceinline__ std::uint32_t swz(int r, int ch) {
    return r * (D * 2) + ((ch ^ (r & 7)) << 4);
}

template <bool BF16> struct ElemType;
template <> struct ElemType<true> { using T = __nv_bfloat16; };
template <> struct ElemType<false> { using T = __half; };

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
    return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Two floats rounded to one 32-bit register of two 16-bit values (low half = a).
template <bool BF16> __device__ __forceinline__ std::uint32_t pack2(float a, float b) {
    std::uint32_t r;
    if constexpr (BF16) {
        __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
        r = *reinterpret_cast<std::uint32_t*>(&h);
    } else {
        __half2 h = __floats2half2_rn(a, b);
        r = *reinterpret_cast<std::uint32_t*>(&h);
    }
    return r;
}

template <bool BF16> __device__ __forceinline__ float2 unpack2(std::uint32_t v) {
    if constexpr (BF16) {
        return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
    } else {
        __half2 h = *reinterpret_cast<__half2*>(&v);
        return __half22float2(h);
    }
}

// c += a·b for a 16×16 (row) by 16×8 (col) tile.
template <bool BF16>
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    if constexpr (BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// 16-byte global→shared copy; src_bytes = 0 writes zeros (the source address must still be valid).
__device__ __forceinline__ void cp_async_16(std::uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// dst[0] += a, dst[1] += b in f32 global memory by the memory system's reduction units, without waiting for the
// result (dst 8-byte aligned): one vector reduction on sm_90, two scalar ones before.
__device__ __forceinline__ void red_add_f32x2(float* dst, float a, float b) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(a), "f"(b) : "memory");
#else
    asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(dst), "f"(a) : "memory");
    asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(dst + 1), "f"(b) : "memory");
#endif
}

} // namespace vmonarch::cuda
