// Internal: the host launcher of the flash backward kernels (flash_bwd_kernel.cuh) for one (element type,
// head dim) group: the key-tile kernel (dk, dv, and dq by atomics unless deterministic), then in
// deterministic mode the query-tile kernel for dq (spec §7.5).
#pragma once

#include <cuda_runtime.h>

#include "cuda/bwd/flash_bwd.hpp"
#include "cuda/bwd/flash_bwd_kernel.cuh"
#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

// The kernel's shared memory must fit the device's opt-in limit (sm_80/sm_90: yes; sm_86/sm_89 have 99 KB).
inline void check_flash_bwd_smem(int bytes, const FlashBwdParams& p, const char* what) {
    int dev = 0, limit = 0;
    check_cuda(cudaGetDevice(&dev), describe_flash_bwd(p, what) + ": cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
               describe_flash_bwd(p, what) + ": cudaDeviceGetAttribute");
    if (bytes > limit)
        throw CudaError(describe_flash_bwd(p, what) + ": needs " + std::to_string(bytes) + " bytes of shared memory per block, the device allows " +
                        std::to_string(limit));
}

// Deterministic mode's dq pass (spec §7.5): the query-tile kernel over ceil(len_q / BM) query tiles ×
// (segment, head) × batch, each tile summing its key tiles in a fixed order. Also the Hopper launchers' (sm90/
// flash_bwd_sm90_launch_common.cuh).
template <bool BF16, int D, bool HAS_DA, bool HAS_DY, typename Ctx>
void launch_flash_bwd_query_tiles(const FlashBwdParams& p, cudaStream_t st, const Ctx& ctx) {
    auto kernel = flash_bwd_query_kernel<BF16, D, HAS_DA, HAS_DY>;
    constexpr int smem = flash_bwd_query_smem_bytes<D, HAS_DA, HAS_DY>();
    constexpr int BM = FlashBwdQueryShape<D>::BM;
    allow_smem(kernel, smem, ctx);
    const dim3 grid(unsigned((p.len_q + BM - 1) / BM), unsigned(p.segments * p.heads), unsigned(p.batch));
    kernel<<<grid, FlashBwdQueryShape<D>::THREADS, smem, st>>>(p);
    check_launch_lazy(ctx);
}

template <bool BF16, int D, bool HAS_DA, bool HAS_DY> void launch_flash_bwd_variant(const FlashBwdParams& p, void* stream, const char* what) {
    const auto ctx = [&] { return describe_flash_bwd(p, what); };
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    const unsigned sh = unsigned(p.segments * p.heads), nb = unsigned(p.batch);
    {
        auto kernel = flash_bwd_key_kernel<BF16, D, HAS_DA, HAS_DY>;
        constexpr int smem = flash_bwd_key_smem_bytes<D, HAS_DA, HAS_DY>();
        constexpr int BN = FlashBwdKeyShape<D>::BN;
        check_flash_bwd_smem(smem, p, what);
        allow_smem(kernel, smem, ctx);
        const dim3 grid(unsigned((p.len_k + BN - 1) / BN), sh, nb);
        kernel<<<grid, FlashBwdKeyShape<D>::THREADS, smem, st>>>(p);
        check_launch_lazy(ctx);
    }
    if (p.deterministic) {
        check_flash_bwd_smem(flash_bwd_query_smem_bytes<D, HAS_DA, HAS_DY>(), p, what);
        launch_flash_bwd_query_tiles<BF16, D, HAS_DA, HAS_DY>(p, st, ctx);
    }
}

template <bool BF16, int D> void launch_flash_bwd_typed(const FlashBwdParams& p, void* stream, const char* what) {
    const bool da = p.da.ptr != nullptr, dy = p.dy.ptr != nullptr;
    if (da && dy) launch_flash_bwd_variant<BF16, D, true, true>(p, stream, what);
    else if (da) launch_flash_bwd_variant<BF16, D, true, false>(p, stream, what);
    else launch_flash_bwd_variant<BF16, D, false, true>(p, stream, what);
}

} // namespace vmonarch::cuda
