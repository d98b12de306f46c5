// launch_lstep_bwd: checks the operands of one L-step backward (spec §7 steps 3, 4, 6) and launches the
// (dtype, head dim, last/earlier) instantiation of lstep_bwd_kernel.cuh, one block per (position, head, batch).
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/env_choice.hpp"
#include "cuda/bwd/lstep_bwd.hpp"
#include "cuda/bwd/lstep_bwd_kernel.cuh"
#include "cuda/common/cuda_check.hpp"
#include "cuda/lstep/lstep_fallback_kernel.cuh"

namespace vmonarch::cuda {

// The backward takes every clip the forward takes (the same shared-memory bound).
static_assert(lstep_bwd_smem_bytes(144, 128) == lstep_smem_bytes(144, 128));
static_assert(lstep_bwd_smem_bytes(7, 64) == lstep_smem_bytes(7, 64));

namespace {

std::string describe(const LStepBwdParams& p, bool last, const char* what) {
    std::ostringstream os;
    os << what << " [lstep_bwd<" << to_string(p.elem) << ", d=" << p.head_dim << (last ? ", last" : ", earlier")
       << "> batch=" << p.batch << " heads=" << p.heads << " frames=" << p.frames << " positions=" << p.positions << "]";
    return os.str();
}

int max_optin_smem() {
    int dev = 0, bytes = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    return bytes;
}

// A view the kernel reads or writes in 16-byte chunks: 16-byte aligned base, strides in whole chunks.
template <typename Ctx>
void require_vector_view(const RowView& v, const char* name, int elem_bytes, const Ctx& ctx) {
    if (v.ptr == nullptr) throw CudaError(ctx() + ": view '" + name + "' is null, expected a device pointer");
    const std::int64_t per_chunk = 16 / elem_bytes;
    const bool aligned = reinterpret_cast<std::uintptr_t>(v.ptr) % 16 == 0 && v.sb % per_chunk == 0 &&
                         v.sh % per_chunk == 0 && v.sf % per_chunk == 0 && v.sr % per_chunk == 0;
    if (!aligned)
        throw CudaError(ctx() + ": view '" + name + "' is not 16-byte aligned (base and every stride must be a multiple of " +
                        std::to_string(per_chunk) + " elements)");
}

template <typename Ctx>
void require_scalar_view(const RowView& v, const char* name, const Ctx& ctx) {
    if (v.ptr == nullptr) throw CudaError(ctx() + ": view '" + name + "' is null, expected a device pointer");
    if (reinterpret_cast<std::uintptr_t>(v.ptr) % 4 != 0)
        throw CudaError(ctx() + ": view '" + name + "' is not 4-byte aligned");
}

template <bool BF16, int D, bool LAST, typename Ctx>
void launch_typed(const LStepBwdParams& p, cudaStream_t stream, const Ctx& ctx) {
    auto kernel = lstep_bwd_kernel<BF16, D, LAST>;
    const int smem = int(lstep_bwd_smem_bytes(p.frames, D));
    if (smem > 48 * 1024) allow_smem(kernel, smem, ctx);
    const dim3 grid(unsigned(p.positions), unsigned(p.heads), unsigned(p.batch));
    kernel<<<grid, kLStepBwdThreads, smem, stream>>>(p);
    check_launch_lazy(ctx);
}

template <bool BF16, int D, typename Ctx>
void launch_dtype(const LStepBwdParams& p, bool last, cudaStream_t stream, const Ctx& ctx) {
    if (last) launch_typed<BF16, D, true>(p, stream, ctx);
    else launch_typed<BF16, D, false>(p, stream, ctx);
}

} // namespace

LStepBwdKernel lstep_bwd_kernel_from_env() {
    return detail::env_choice<CudaError>("VMONARCH_LSTEP_BWD", LStepBwdKernel::automatic,
                                         {{"auto", LStepBwdKernel::automatic},
                                          {"tensor-cores", LStepBwdKernel::tensor_cores},
                                          {"tensor-cores-pair", LStepBwdKernel::tensor_cores_pair},
                                          {"tensor-cores-quad", LStepBwdKernel::tensor_cores_quad},
                                          {"cuda-cores", LStepBwdKernel::cuda_cores}},
                                         "vmonarch backward");
}

void launch_lstep_bwd(const LStepBwdParams& p, void* stream, const char* what) {
    launch_lstep_bwd_with(p, lstep_bwd_kernel_from_env(), stream, what);
}

void launch_lstep_bwd_with(const LStepBwdParams& p, LStepBwdKernel kernel, void* stream, const char* what) {
    if (p.positions <= 0 || p.frames <= 0 || p.heads <= 0 || p.batch <= 0) return;
    const bool last = p.dout.ptr != nullptr;
    const auto ctx = [&] { return describe(p, last, what); };
    if (p.heads > 65535 || p.batch > 65535 || p.positions > 0x7fffffff)
        throw CudaError(ctx() + ": grid too large (heads and batch must be ≤ 65535, positions ≤ 2^31 − 1)");
    if (p.head_dim != 64 && p.head_dim != 128)
        throw CudaError(ctx() + ": head dim is " + std::to_string(p.head_dim) + ", expected 64 or 128");
    if (p.frames > 0x7fff || lstep_bwd_smem_bytes(p.frames, p.head_dim) > max_optin_smem())
        throw CudaError(ctx() + ": T = " + std::to_string(p.frames) + " frames exceed this device's L-step limit of " +
                        std::to_string(lstep_max_frames(p.head_dim)) + " for head dim " + std::to_string(p.head_dim));
    if (last && p.dar.ptr != nullptr)
        throw CudaError(ctx() + ": both dout (last L-step) and dar (earlier L-step) are set, expected exactly one");
    require_vector_view(p.q, "q", 2, ctx);
    require_vector_view(p.a, "a", 2, ctx);
    require_scalar_view(p.c, "c", ctx);
    require_vector_view(p.dq, "dq", 4, ctx);
    require_vector_view(p.da, "da", 2, ctx);
    require_scalar_view(p.drow_r, "drow_r", ctx);
    if (p.dc.ptr != nullptr) require_scalar_view(p.dc, "dc", ctx);
    if (last) {
        require_vector_view(p.y, "y", 2, ctx);
        require_vector_view(p.dout, "dout", 2, ctx);
        require_scalar_view(p.drow, "drow", ctx);
        require_vector_view(p.dy, "dy", 2, ctx);
    } else {
        require_vector_view(p.ar, "ar", 2, ctx);
        require_scalar_view(p.cr, "cr", ctx);
        require_vector_view(p.dar, "dar", 4, ctx);
    }
    const bool mma_fits = p.frames <= lstep_bwd_tensor_core_max_frames();
    const bool one_warp = kernel == LStepBwdKernel::tensor_cores, quad = kernel == LStepBwdKernel::tensor_cores_quad;
    if ((one_warp || quad || kernel == LStepBwdKernel::tensor_cores_pair) && !mma_fits)
        throw CudaError(ctx() + ": T = " + std::to_string(p.frames) + " frames exceed the tensor-core L-step backward's " +
                        std::to_string(lstep_bwd_tensor_core_max_frames()) + ", expected the CUDA-core kernel or automatic choice");
    // automatic: two warps per position, 9–25 % below one at both benchmark shapes (H200, bench/RESULTS.md).
    if (kernel != LStepBwdKernel::cuda_cores && mma_fits)
        return lstep_bwd_detail::launch_mma(p, last, one_warp ? 1 : quad ? 4 : 2, stream, ctx());
    auto st = static_cast<cudaStream_t>(stream);
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) return bf ? launch_dtype<true, 64>(p, last, st, ctx) : launch_dtype<false, 64>(p, last, st, ctx);
    return bf ? launch_dtype<true, 128>(p, last, st, ctx) : launch_dtype<false, 128>(p, last, st, ctx);
}

} // namespace vmonarch::cuda
