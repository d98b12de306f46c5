// Internal: CUDA error checking that throws vmonarch::CudaError with context (kernel, shapes).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "vmonarch/errors.hpp"

namespace vmonarch::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t err, const std::string& what) {
    throw CudaError(what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

inline void check_cuda(cudaError_t err, const std::string& what) {
    if (err != cudaSuccess) throw_cuda(err, what);
}

// After a launch: configuration errors show up in cudaGetLastError; execution errors surface later
// (at the next synchronising call, which is checked too).
inline void check_launch(const std::string& what) {
    check_cuda(cudaGetLastError(), "kernel launch " + what);
}

} // namespace vmonarch::cuda
