// Internal: CUDA error checking that throws vmonarch::CudaError with context (kernel, shapes).
#pragma once

#include <cuda_runtime.h>

#include <mutex>
#include <set>
#include <string>
#include <tuple>

#include "vmonarch/errors.hpp"

namespace vmonarch::cuda {

// A failed device allocation (cudaMalloc of the workspace, ...) is an OutOfMemoryError like a failed host
// allocation; `what` says how many bytes were asked.
[[noreturn]] inline void throw_cuda(cudaError_t err, const std::string& what) {
    std::string message = what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
    if (err == cudaErrorMemoryAllocation) throw OutOfMemoryError(message);
    throw CudaError(message);
}

inline void check_cuda(cudaError_t err, const std::string& what) {
    if (err != cudaSuccess) throw_cuda(err, what);
}

// After a launch: configuration errors show up in cudaGetLastError; execution errors surface later
// (at the next synchronising call, which is checked too).
inline void check_launch(const std::string& what) {
    check_cuda(cudaGetLastError(), "kernel launch " + what);
}

// Error context for the helpers below: a string, or a callable that builds one. The launch paths pass
// callables, so that no string is built unless something failed.
inline std::string context_of(const std::string& s) { return s; }
template <typename F> std::string context_of(const F& make) { return make(); }

// After a launch: throws with the context built only when the launch failed.
template <typename What> void check_launch_lazy(const What& what) {
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) throw_cuda(e, "kernel launch " + context_of(what));
}

// Raise a kernel's dynamic shared-memory limit once per device. `what` makes the error context (called
// only on failure, so the launch path builds no strings).
template <typename Kernel, typename What>
void allow_smem(Kernel kernel, int bytes, const What& what) {
    static std::mutex mu;
    static std::set<std::tuple<const void*, int, int>> done; // (kernel, device, bytes)
    int dev = 0;
    if (cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) throw_cuda(e, context_of(what));
    const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), dev, bytes);
    std::lock_guard<std::mutex> lock(mu);
    if (done.count(key)) return;
    if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes); e != cudaSuccess)
        throw_cuda(e, context_of(what) + ": cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    done.insert(key);
}

} // namespace vmonarch::cuda
