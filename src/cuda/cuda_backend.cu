// The CUDA backend entry points of src/core/backend.hpp: device selection, the caller's stream, the
// workspace (caller's or a cached per-(device, stream) buffer), then MonarchPlan / the dense kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>
#include <utility>

#include "core/backend.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/cuda_resources.hpp"
#include "cuda/monarch_plan.hpp"

namespace vmonarch::detail {

using cuda::check_cuda;

DeviceScope::DeviceScope(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
}
DeviceScope::~DeviceScope() {
    int now = 0;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

namespace {

// Library-owned workspace, one buffer per (device, stream), grown on demand and never shrunk. Work queued
// on one stream runs in order, so reusing that stream's buffer is safe; different streams get different
// buffers. Growing frees the old buffer (cudaFree waits for the device) and allocates a larger one.
struct StreamResources {
    void* ptr = nullptr;      // workspace
    std::size_t bytes = 0;
    cudaStream_t side = nullptr; // non-blocking helper stream for the concurrent first-frame recompute
};
std::mutex resources_mu;
std::map<std::pair<int, cudaStream_t>, StreamResources> resources;

} // namespace

void* cached_workspace(int device, cudaStream_t stream, std::size_t bytes, const std::string& what) {
    std::lock_guard<std::mutex> lock(resources_mu);
    StreamResources& buf = resources[{device, stream}];
    if (buf.bytes < bytes) {
        if (buf.ptr != nullptr) check_cuda(cudaFree(buf.ptr), what + ": cudaFree(old workspace)");
        buf.ptr = nullptr;
        buf.bytes = 0;
        check_cuda(cudaMalloc(&buf.ptr, bytes), what + ": cudaMalloc(workspace of " + std::to_string(bytes) + " bytes)");
        buf.bytes = bytes;
    }
    return buf.ptr;
}

// One helper stream per (device, caller stream): calls on one caller stream are ordered, so they may
// share it; calls on different caller streams get different helpers.
cudaStream_t side_stream(int device, cudaStream_t stream, const std::string& what) {
    std::lock_guard<std::mutex> lock(resources_mu);
    StreamResources& r = resources[{device, stream}];
    if (r.side == nullptr) check_cuda(cudaStreamCreateWithFlags(&r.side, cudaStreamNonBlocking), what + ": cudaStreamCreate");
    return r.side;
}

namespace {

std::string shapes(const MonarchProblem& p) {
    std::ostringstream os;
    os << "vmonarch::attention on cuda:" << p.q.device_index << " (" << to_string(p.q.dtype) << ", batch=" << p.batch
       << " heads=" << p.heads << " T=" << p.grid.T << " H=" << p.grid.H << " W=" << p.grid.W << " d=" << p.head_dim
       << " t=" << p.iterations << ")";
    return os.str();
}

} // namespace

std::size_t cuda_monarch_workspace_bytes(const MonarchProblem& p) { return cuda::monarch_workspace_layout(p).total; }

void cuda_monarch_attention(const MonarchProblem& p, const CudaContext* ctx) {
    if (p.batch == 0 || p.heads == 0 || p.grid.tokens() == 0) return;
    const std::string what = shapes(p);
    DeviceScope scope(p.q.device_index);
    auto stream = static_cast<cudaStream_t>(ctx != nullptr ? ctx->stream : nullptr);
    const std::size_t need = cuda_monarch_workspace_bytes(p);
    void* ws = nullptr;
    if (ctx != nullptr && ctx->workspace != nullptr) {
        if (ctx->workspace_bytes < need)
            throw CudaError(what + ": CudaContext::workspace has " + std::to_string(ctx->workspace_bytes) +
                            " bytes, needs " + std::to_string(need) + " (vmonarch::workspace_bytes)");
        ws = ctx->workspace;
    } else {
        ws = cached_workspace(p.q.device_index, stream, need, what);
    }
    // The side stream takes the first-frame recompute and, with exact key groups, the groups and a joint
    // sequence's text queries (monarch_plan.hpp).
    const bool beside = p.recompute_first_frame || p.has_exact_groups();
    cudaStream_t side = beside ? side_stream(p.q.device_index, stream, what) : nullptr;
    if (p.text_queries == nullptr) {
        cuda::MonarchPlan(p, ws).run(stream, side);
        return;
    }
    TextQueryProblem text = *p.text_queries;
    text.scale = p.scale; // the same options and head dim
    MonarchProblem video = p;
    video.text_queries = &text;
    cuda::MonarchPlan(video, ws).run(stream, side); // with the text queries when they need no workspace
    if (!cuda::text_queries_direct(text)) cuda_text_query_attention(text, ctx);
}

void cuda_text_query_attention(const TextQueryProblem& p, const CudaContext* ctx) {
    if (p.batch == 0 || p.heads == 0 || p.q_tokens == 0) return;
    DeviceScope scope(p.q.device_index);
    auto stream = static_cast<cudaStream_t>(ctx != nullptr ? ctx->stream : nullptr);
    void* ws = nullptr;
    std::size_t bytes = 0;
    if (ctx != nullptr && ctx->workspace != nullptr) { // the caller's, sized for the joint call's video part
        ws = ctx->workspace;
        bytes = ctx->workspace_bytes;
    } else {
        bytes = cuda::text_query_workspace_bytes(p, std::min(p.q_tokens, p.kv_tokens)); // one chunk's
        ws = cached_workspace(p.q.device_index, stream, bytes, "vmonarch::joint_attention text queries");
    }
    cuda::run_text_queries(p, ws, bytes, stream);
}

void cuda_dense_attention(const AttentionProblem& p, const CudaContext* ctx) {
    if (p.batch == 0 || p.heads == 0 || p.q_tokens == 0) return;
    DeviceScope scope(p.q.device_index);
    auto stream = ctx != nullptr ? ctx->stream : nullptr;
    cuda::launch_flash(cuda::dense_params(p), stream, "vmonarch::dense_attention");
}

bool cuda_device_present() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no device" error
        return false;
    }
    return n > 0;
}

std::string cuda_device_name_of(int device_index) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return "";
    }
    if (device_index < 0 || device_index >= n) return "";
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device_index) != cudaSuccess) return "";
    return prop.name;
}

} // namespace vmonarch::detail
