// Writing result tensors: .npy, or .safetensors where several outputs may share one file
// (out.safetensors:q, out.safetensors:k, ...).
#pragma once

#include <string>
#include <vector>

#include "vmonarch/extras/tensor_file.hpp"

namespace vmonarch::cli {

struct TensorOutput {
    std::string spec;         // FILE.npy, FILE.safetensors or FILE.safetensors:NAME
    std::string option;       // flag that named it, for messages
    std::string default_name; // safetensors name when the spec has none
    const HostTensor* tensor = nullptr;
};

// Checks extensions, that no two outputs collide, and that dtypes fit the format (.npy has no bf16),
// before anything is computed: pass tensor = nullptr and the dtype it will have.
void check_tensor_outputs(const std::vector<TensorOutput>& outputs, const std::vector<DType>& dtypes);

// Writes every output; outputs naming the same .safetensors file go into that file together.
void write_tensor_outputs(const std::vector<TensorOutput>& outputs);

} // namespace vmonarch::cli
