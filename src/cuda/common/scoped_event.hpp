// Internal: a CUDA event owned by its scope (fork/join of side-stream work).
#pragma once

#include <cuda_runtime.h>

#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

// Destroying a recorded event is safe: the destruction is deferred until the event completes.
struct ScopedEvent {
    cudaEvent_t e = nullptr;
    ScopedEvent() { check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"); }
    ~ScopedEvent() { cudaEventDestroy(e); }
    ScopedEvent(const ScopedEvent&) = delete;
    ScopedEvent& operator=(const ScopedEvent&) = delete;
};

} // namespace vmonarch::cuda
