// Internal: the (dtype, head dim, last, frame count) dispatch of the L-step kernels, shared by the plain
// instantiations (lstep_launch.cu) and the exact-key-group ones (lstep_exact_launch.cu, spec §3b), which are
// compiled in their own translation unit.
#pragma once

#include <cuda_runtime.h>

#include <sstream>
#include <string>

#include "cuda/common/cuda_check.hpp"
#include "cuda/lstep/lstep_fallback_kernel.cuh"
#include "cuda/lstep/lstep_mma_kernel.cuh"

namespace vmonarch::cuda::lstep_detail {

inline std::string describe(const LStepParams& p, const char* what) {
    std::ostringstream os;
    os << what << " [lstep<" << to_string(p.elem) << ", d=" << p.head_dim << (p.last ? ", last" : ", middle")
       << "> batch=" << p.batch << " heads=" << p.heads << " frames=" << p.frames << " positions=" << p.positions;
    if (p.sink_frames != 0) os << " sink_frames=" << p.sink_frames;
    if (p.window_radius >= 0) os << " window_radius=" << p.window_radius;
    if (p.exact_lse.ptr != nullptr) os << " merge";
    os << "]";
    return os.str();
}

inline int max_optin_smem() {
    int dev = 0, bytes = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    return bytes;
}

template <bool BF16, int D, bool LAST, bool EXACT, typename Ctx>
void launch_fallback(const LStepParams& p, cudaStream_t stream, const Ctx& ctx) {
    auto kernel = lstep_fallback_kernel<BF16, D, LAST, EXACT>;
    const int smem = int(lstep_smem_bytes(p.frames, D));
    if (smem > 48 * 1024) allow_smem(kernel, smem, ctx);
    const dim3 grid(unsigned(p.positions), unsigned(p.heads), unsigned(p.batch));
    kernel<<<grid, kLStepThreads, smem, stream>>>(p);
    check_launch_lazy(ctx);
}

// Tensor-core variant for T ≤ 48 (frames padded to 16·MT).
template <bool BF16, int D, bool LAST, bool EXACT, int MT, typename Ctx>
void launch_mma_variant(const LStepParams& p, cudaStream_t stream, const Ctx& ctx) {
    auto kernel = lstep_mma_kernel<BF16, D, LAST, MT, EXACT>;
    constexpr int WPB = lstep_mma_warps(MT);
    constexpr int smem = WPB * lstep_mma_warp_bytes(D, LAST, MT);
    if (smem > 48 * 1024) allow_smem(kernel, smem, ctx);
    const dim3 grid(unsigned((p.positions + WPB - 1) / WPB), unsigned(p.heads), unsigned(p.batch));
    kernel<<<grid, 32 * WPB, smem, stream>>>(p);
    check_launch_lazy(ctx);
}

template <bool BF16, int D, bool LAST, bool EXACT, typename Ctx>
void launch_last(const LStepParams& p, cudaStream_t stream, const Ctx& ctx) {
    if (p.frames <= 16) return launch_mma_variant<BF16, D, LAST, EXACT, 1>(p, stream, ctx);
    if (p.frames <= 32) return launch_mma_variant<BF16, D, LAST, EXACT, 2>(p, stream, ctx);
    if (p.frames <= lstep_mma_max_frames()) return launch_mma_variant<BF16, D, LAST, EXACT, 3>(p, stream, ctx);
    launch_fallback<BF16, D, LAST, EXACT>(p, stream, ctx); // CUDA-core fallback for long clips
}

template <bool BF16, int D, bool EXACT, typename Ctx>
void launch_typed(const LStepParams& p, cudaStream_t stream, const Ctx& ctx) {
    if (p.last) launch_last<BF16, D, true, EXACT>(p, stream, ctx);
    else launch_last<BF16, D, false, EXACT>(p, stream, ctx);
}

// Launches the EXACT instantiation for p's dtype and head dim (64 or 128, checked by the caller).
template <bool EXACT>
void dispatch(const LStepParams& p, cudaStream_t stream, const char* what) {
    const auto ctx = [&] { return describe(p, what); };
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) return bf ? launch_typed<true, 64, EXACT>(p, stream, ctx) : launch_typed<false, 64, EXACT>(p, stream, ctx);
    return bf ? launch_typed<true, 128, EXACT>(p, stream, ctx) : launch_typed<false, 128, EXACT>(p, stream, ctx);
}

// The exact-key-group instantiations (lstep_exact_launch.cu).
void dispatch_exact(const LStepParams& p, cudaStream_t stream, const char* what);

} // namespace vmonarch::cuda::lstep_detail
