// Device memory of the CLI's CUDA runs: an owned cudaMalloc buffer with host copies in and out, and the check
// that turns a CUDA status into vmonarch::CudaError (exit status 2). Only in builds with the CUDA kernels.
#pragma once

#ifdef VMONARCH_WITH_CUDA

#include <cstddef>
#include <string>

#include <cuda_runtime.h>

#include "vmonarch/errors.hpp"

namespace vmonarch::cli {

inline void check_cuda(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) throw CudaError(what + ": " + cudaGetErrorString(status));
}

class DeviceBuffer {
public:
    explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
        if (bytes_ > 0) check_cuda(cudaMalloc(&data_, bytes_), "cudaMalloc of " + std::to_string(bytes_) + " bytes");
    }
    ~DeviceBuffer() {
        if (data_) cudaFree(data_);
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    void* data() const { return data_; }
    std::size_t bytes() const { return bytes_; }
    void upload(const void* host) {
        if (bytes_ > 0) check_cuda(cudaMemcpy(data_, host, bytes_, cudaMemcpyHostToDevice), "copy to the device");
    }
    void download(void* host) const {
        if (bytes_ > 0) check_cuda(cudaMemcpy(host, data_, bytes_, cudaMemcpyDeviceToHost), "copy from the device");
    }

private:
    void* data_ = nullptr;
    std::size_t bytes_ = 0;
};

} // namespace vmonarch::cli

#endif
