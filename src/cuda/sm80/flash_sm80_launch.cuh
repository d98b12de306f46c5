// Internal: host launcher for flash_sm80_kernel, instantiated once per (dtype, head dim) in flash_sm80_*.cu so
// the four instantiation sets compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "cuda/common/cuda_check.hpp"
#include "cuda/sm80/flash_sm80_kernel.cuh"

namespace vmonarch::cuda {

std::string describe(const FlashParams& p, const char* what);

template <bool BF16, int D, bool ROW_SCALE, bool K_VALUE, bool V_VALUE>
void launch_flash_variant(const FlashParams& p, cudaStream_t stream, const char* what) {
    auto kernel = flash_sm80_kernel<BF16, D, ROW_SCALE, K_VALUE, V_VALUE>;
    const int smem = flash_smem_bytes(D, K_VALUE, V_VALUE);
    const auto ctx = [&] { return describe(p, what); };
    allow_smem(kernel, smem, ctx);
    constexpr int BM = flash_block_m(D, K_VALUE, V_VALUE);
    const dim3 grid(unsigned((p.len_q + BM - 1) / BM), unsigned(p.segments * p.heads), unsigned(p.batch));
    kernel<<<grid, FlashShape::THREADS, smem, stream>>>(p);
    check_launch_lazy(ctx);
}

template <bool BF16, int D>
void launch_flash_typed(const FlashParams& p, cudaStream_t stream, const char* what) {
    const bool rs = p.rs.ptr != nullptr, kv = p.a.ptr != nullptr, vv = p.o.ptr != nullptr;
    if (kv && !rs && !vv) return launch_flash_variant<BF16, D, false, true, false>(p, stream, what);
    if (kv && rs && !vv) return launch_flash_variant<BF16, D, true, true, false>(p, stream, what);
    if (kv && rs && vv) return launch_flash_variant<BF16, D, true, true, true>(p, stream, what);
    if (kv && !rs && vv) return launch_flash_variant<BF16, D, false, true, true>(p, stream, what);
    if (!kv && !rs && vv) return launch_flash_variant<BF16, D, false, false, true>(p, stream, what);
    throw CudaError(describe(p, what) + ": no kernel variant for this combination of outputs");
}

} // namespace vmonarch::cuda
