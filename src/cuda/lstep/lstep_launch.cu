// launch_lstep: picks the (dtype, head dim, last, frame count) instantiation of the tensor-core L-step
// (lstep_mma_kernel.cuh) or, for T > 48, of the CUDA-core fallback (lstep_fallback_kernel.cuh); with exact key
// groups (spec §3b: sink_frames > 0, window_radius >= 0 or exact_lse set) their EXACT instantiations
// (lstep_exact_launch.cu), otherwise the plain ones compiled here.
#include "cuda/lstep/lstep_dispatch.cuh"

namespace vmonarch::cuda {

std::int64_t lstep_max_frames(int head_dim) {
    const std::int64_t limit = lstep_detail::max_optin_smem();
    std::int64_t T = 1;
    while (lstep_smem_bytes(T + 1, head_dim) <= limit) ++T;
    return T;
}

void launch_lstep(const LStepParams& p, void* stream, const char* what) {
    if (p.positions <= 0 || p.frames <= 0 || p.heads <= 0 || p.batch <= 0) return;
    const auto ctx = [&] { return lstep_detail::describe(p, what); };
    if (p.heads > 65535 || p.batch > 65535 || p.positions > 0x7fffffff || p.frames > 0x7fffffff)
        throw CudaError(ctx() + ": grid too large (heads and batch must be ≤ 65535)");
    if (p.frames > lstep_mma_max_frames() && lstep_smem_bytes(p.frames, p.head_dim) > lstep_detail::max_optin_smem())
        throw CudaError(ctx() + ": T = " + std::to_string(p.frames) + " frames exceed this device's L-step limit of " +
                        std::to_string(lstep_max_frames(p.head_dim)) + " for head dim " + std::to_string(p.head_dim));
    if (p.head_dim != 64 && p.head_dim != 128) throw CudaError(ctx() + ": head dim must be 64 or 128");
    if (p.sink_frames < 0) throw CudaError(ctx() + ": sink_frames is " + std::to_string(p.sink_frames) + ", expected >= 0");
    if (p.exact_lse.ptr != nullptr && !p.last)
        throw CudaError(ctx() + ": exact_lse is set on a middle L-step, expected only on the last (it merges the output)");
    auto st = static_cast<cudaStream_t>(stream);
    if (p.sink_frames > 0 || p.window_radius >= 0 || p.exact_lse.ptr != nullptr) return lstep_detail::dispatch_exact(p, st, what);
    lstep_detail::dispatch<false>(p, st, what);
}

} // namespace vmonarch::cuda
