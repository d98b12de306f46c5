// launch_lstep: picks the (dtype, head dim, last, frame count) instantiation of the tensor-core L-step
// (lstep_mma_kernel.cuh) or, for T > 48, of the CUDA-core fallback (lstep_fallback_kernel.cuh).
#include <cuda_runtime.h>

#include <sstream>

#include "cuda/common/cuda_check.hpp"
#include "cuda/lstep/lstep_fallback_kernel.cuh"
#include "cuda/lstep/lstep_mma_kernel.cuh"

namespace vmonarch::cuda {

namespace {

std::string describe(const LStepParams& p, const char* what) {
    std::ostringstream os;
    os << what << " [lstep<" << to_string(p.elem) << ", d=" << p.head_dim << (p.last ? ", last" : ", middle")
       << "> batch=" << p.batch << " heads=" << p.heads << " frames=" << p.frames << " positions=" << p.positions << "]";
    return os.str();
}

int max_optin_smem() {
    int dev = 0, bytes = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    return bytes;
}

template <bool BF16, int D, bool LAST, typename Ctx>
void launch_fallback(const LStepParams& p, cudaStream_t stream, const Ctx& ctx) {
    auto kernel = lstep_fallback_kernel<BF16, D, LAST>;
    const int smem = int(lstep_smem_bytes(p.frames, D));
    if (smem > 48 * 1024) allow_smem(kernel, smem, ctx);
    const dim3 grid(unsigned(p.positions), unsigned(p.heads), unsigned(p.batch));
    kernel<<<grid, kLStepThreads, smem, stream>>>(p);
    check_launch_lazy(ctx);
}

// Tensor-core variant for T ≤ 48 (frames padded to 16·MT).
template <bool BF16, int D, bool LAST, int MT, typename Ctx>
void launch_mma_variant(const LStepParams& p, cudaStream_t stream, const Ctx& ctx) {
    auto kernel = lstep_mma_kernel<BF16, D, LAST, MT>;
    constexpr int WPB = lstep_mma_warps(MT);
    constexpr int smem = WPB * lstep_mma_warp_bytes(D, LAST, MT);
    if (smem > 48 * 1024) allow_smem(kernel, smem, ctx);
    const dim3 grid(unsigned((p.positions + WPB - 1) / WPB), unsigned(p.heads), unsigned(p.batch));
    kernel<<<grid, 32 * WPB, smem, stream>>>(p);
    check_launch_lazy(ctx);
}

template <bool BF16, int D, bool LAST, typename Ctx>
void launch_last(const LStepParams& p, cudaStream_t stream, const Ctx& ctx) {
    if (p.frames <= 16) return launch_mma_variant<BF16, D, LAST, 1>(p, stream, ctx);
    if (p.frames <= 32) return launch_mma_variant<BF16, D, LAST, 2>(p, stream, ctx);
    if (p.frames <= lstep_mma_max_frames()) return launch_mma_variant<BF16, D, LAST, 3>(p, stream, ctx);
    launch_fallback<BF16, D, LAST>(p, stream, ctx); // CUDA-core fallback for long clips
}

template <bool BF16, int D, typename Ctx>
void launch_typed(const LStepParams& p, cudaStream_t stream, const Ctx& ctx) {
    if (p.last) launch_last<BF16, D, true>(p, stream, ctx);
    else launch_last<BF16, D, false>(p, stream, ctx);
}

} // namespace

std::int64_t lstep_max_frames(int head_dim) {
    const std::int64_t limit = max_optin_smem();
    std::int64_t T = 1;
    while (lstep_smem_bytes(T + 1, head_dim) <= limit) ++T;
    return T;
}

void launch_lstep(const LStepParams& p, void* stream, const char* what) {
    if (p.positions <= 0 || p.frames <= 0 || p.heads <= 0 || p.batch <= 0) return;
    const auto ctx = [&] { return describe(p, what); };
    if (p.heads > 65535 || p.batch > 65535 || p.positions > 0x7fffffff || p.frames > 0x7fffffff)
        throw CudaError(ctx() + ": grid too large (heads and batch must be ≤ 65535)");
    if (p.frames > lstep_mma_max_frames() && lstep_smem_bytes(p.frames, p.head_dim) > max_optin_smem())
        throw CudaError(ctx() + ": T = " + std::to_string(p.frames) + " frames exceed this device's L-step limit of " +
                        std::to_string(lstep_max_frames(p.head_dim)) + " for head dim " + std::to_string(p.head_dim));
    auto st = static_cast<cudaStream_t>(stream);
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) return bf ? launch_typed<true, 64>(p, st, ctx) : launch_typed<false, 64>(p, st, ctx);
    if (p.head_dim == 128) return bf ? launch_typed<true, 128>(p, st, ctx) : launch_typed<false, 128>(p, st, ctx);
    throw CudaError(ctx() + ": head dim must be 64 or 128");
}

} // namespace vmonarch::cuda
