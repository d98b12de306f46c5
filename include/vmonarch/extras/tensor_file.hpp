// Tensor files: .npy (float16/32/64, C order) and .safetensors (F16, BF16, F32, F64; several tensors).
// Readers validate everything they read (magic, header syntax, dtype, shape overflow, sizes against the
// file) and throw FileFormatError with a clear reason; they never read out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch {

// A dense, C-ordered tensor in host memory.
struct HostTensor {
    DType dtype = DType::f32;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> bytes; // numel() * dtype_size(dtype)

    std::int64_t numel() const;
    void* data() { return bytes.data(); }
    const void* data() const { return bytes.data(); }

    static HostTensor zeros(DType dtype, std::vector<std::int64_t> shape);
    // Element-wise conversion (round to nearest even).
    static HostTensor from_floats(const std::vector<float>& values, std::vector<std::int64_t> shape, DType dtype);
    std::vector<float> to_floats() const;
    std::vector<double> to_doubles() const;
    HostTensor converted(DType dtype) const;
};

using TensorMap = std::map<std::string, HostTensor>;

HostTensor parse_npy(const std::uint8_t* data, std::size_t size);
HostTensor read_npy(const std::string& path);
void write_npy(const std::string& path, const HostTensor& tensor); // bf16 is rejected (npy has no bf16)

TensorMap parse_safetensors(const std::uint8_t* data, std::size_t size);
TensorMap read_safetensors(const std::string& path);
void write_safetensors(const std::string& path, const TensorMap& tensors);

// By extension: "x.npy", "x.safetensors" (exactly one tensor, or the one named "name"), or
// "x.safetensors:name" to pick a tensor. Throws FileFormatError / ArgumentError with the path.
HostTensor read_tensor(const std::string& path_spec);
// By extension; .safetensors files get one tensor under `name`.
void write_tensor(const std::string& path, const HostTensor& tensor, const std::string& name = "out");

} // namespace vmonarch
