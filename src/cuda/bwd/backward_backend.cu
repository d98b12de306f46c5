// The CUDA backend's backward entry points (core/backend.hpp): device selection, the caller's stream, the
// workspace (caller's or the cached per-(device, stream) buffer), then TrainingPlan / BackwardPlan (the backward's
// concurrent schedule on the stream's helper stream as well).
#include <cuda_runtime.h>

#include <cstring>
#include <sstream>

#include "core/backward_problem.hpp"
#include "cuda/bwd/backward_elementwise.hpp"
#include "cuda/bwd/backward_plan.hpp"
#include "cuda/bwd/training_plan.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/cuda_resources.hpp"

namespace vmonarch::detail {

namespace {

using cuda::check_cuda;

std::string shapes(const char* fn, const MonarchProblem& p) {
    std::ostringstream os;
    os << fn << " on cuda:" << p.q.device_index << " (" << to_string(p.q.dtype) << ", batch=" << p.batch
       << " heads=" << p.heads << " T=" << p.grid.T << " H=" << p.grid.H << " W=" << p.grid.W << " d=" << p.head_dim
       << " t=" << p.iterations << ")";
    return os.str();
}

cudaStream_t stream_of(const CudaContext* ctx) {
    return static_cast<cudaStream_t>(ctx != nullptr ? ctx->stream : nullptr);
}

} // namespace

void cuda_monarch_training(const TrainingProblem& p, const CudaContext* ctx) {
    const std::string what = shapes("vmonarch::attention_training", p);
    DeviceScope scope(p.q.device_index);
    cudaStream_t stream = stream_of(ctx);
    if (p.batch > 0 && p.heads > 0 && p.grid.tokens() > 0)
        cuda::TrainingPlan(p, static_cast<char*>(p.saved) + kSavedHeaderBytes).run(stream);
    if (p.header != nullptr) { // after the regions, in stream order: the state reads as filled once it is
        cuda::HeaderBytes bytes{};
        static_assert(sizeof(SavedHeader) <= sizeof(bytes.words));
        std::memcpy(bytes.words, p.header, sizeof(SavedHeader));
        cuda::launch_write_header(p.saved, bytes, stream, what.c_str());
    }
}

std::size_t cuda_backward_workspace_bytes(const BackwardProblem& p) { return cuda::backward_workspace_layout(p).total; }

void cuda_monarch_backward(const BackwardProblem& p, const CudaContext* ctx) {
    if (p.batch == 0 || p.heads == 0 || p.grid.tokens() == 0) return;
    const std::string what = shapes("vmonarch::attention_backward", p);
    DeviceScope scope(p.q.device_index);
    cudaStream_t stream = stream_of(ctx);
    const cuda::BackwardSchedule schedule = cuda::backward_schedule(); // read once: the size and the plan agree
    const std::size_t need = cuda::backward_workspace_layout(p, schedule).total;
    void* ws = nullptr;
    if (ctx != nullptr && ctx->workspace != nullptr) {
        if (ctx->workspace_bytes < need)
            throw CudaError(what + ": CudaContext::workspace has " + std::to_string(ctx->workspace_bytes) +
                            " bytes, needs " + std::to_string(need) + " (vmonarch::backward_workspace_bytes)");
        ws = ctx->workspace;
    } else {
        ws = cached_workspace(p.q.device_index, stream, need, what);
    }
    const cuda::BackwardPlan plan(p, ws, schedule);
    plan.run(stream, plan.layout().concurrent ? side_stream(p.q.device_index, stream, what) : nullptr);
}

void* cuda_allocate(std::size_t bytes, int device_index, const std::string& what) {
    DeviceScope scope(device_index);
    void* ptr = nullptr;
    check_cuda(cudaMalloc(&ptr, bytes), what + ": cudaMalloc(" + std::to_string(bytes) + " bytes)");
    return ptr;
}

void cuda_release(void* ptr, int device_index) noexcept {
    if (ptr == nullptr) return;
    int previous = 0;
    if (cudaGetDevice(&previous) != cudaSuccess) return;
    if (previous != device_index) cudaSetDevice(device_index);
    cudaFree(ptr);
    if (previous != device_index) cudaSetDevice(previous);
}

void cuda_copy_to_host(void* host, const void* device, std::size_t bytes, int device_index, const std::string& what) {
    DeviceScope scope(device_index);
    check_cuda(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), what + ": cudaMemcpy to the host");
}

} // namespace vmonarch::detail
