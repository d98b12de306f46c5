// Internal: the CUDA backend's per-call resources (src/cuda/cuda_backend.cu), shared by the forward's and
// the backward's entry points: the current-device scope, the cached per-(device, stream) workspace and helper stream.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace vmonarch::detail {

// Makes `device` current for the scope, restoring the previous device afterwards.
class DeviceScope {
public:
    explicit DeviceScope(int device);
    ~DeviceScope();
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

private:
    int previous_ = 0;
};

// Library-owned workspace of at least `bytes`, one buffer per (device, stream), grown on demand and never
// shrunk (work queued on one stream runs in order, so reusing that stream's buffer is safe).
void* cached_workspace(int device, cudaStream_t stream, std::size_t bytes, const std::string& what);

// The non-blocking helper stream of (device, stream), created on first use: the forward's and the backward's
// concurrent first-frame recompute (fork/join with events on `stream`).
cudaStream_t side_stream(int device, cudaStream_t stream, const std::string& what);

} // namespace vmonarch::detail
