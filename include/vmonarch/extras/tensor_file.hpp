// Tensor files: .npy (float16/32/64, C order) and .safetensors (F16, BF16, F32, F64; several tensors).
// Readers validate everything they read (magic, header syntax, dtype, shape overflow, sizes against the
// file) and throw FileFormatError with a clear reason; they never read out of bounds. Writers never leave a
// partial file: they write a temporary file next to the target and rename it over the target.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch {

// Counts over a tensor's values, for reporting NaN/inf and range overflows.
struct ValueStats {
    std::int64_t non_finite = 0; // NaN, +inf, -inf
    double max_abs = 0;          // largest |x| over the finite elements
};

// A dense, C-ordered tensor in host memory. Allocation failures are OutOfMemoryError (with the size).
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
    // Elements [first, first + count) as doubles (exact for every dtype), into out[0 .. count).
    void to_doubles(std::int64_t first, std::int64_t count, double* out) const;
    HostTensor converted(DType dtype) const;
    ValueStats value_stats() const;
};

using TensorMap = std::map<std::string, HostTensor>;

// What a tensor file holds, read from its header alone (no tensor data is read or allocated).
struct TensorInfo {
    DType dtype = DType::f32;
    std::vector<std::int64_t> shape;
};

HostTensor parse_npy(const std::uint8_t* data, std::size_t size);
HostTensor read_npy(const std::string& path);
void write_npy(const std::string& path, const HostTensor& tensor); // bf16 is rejected (npy has no bf16)

TensorMap parse_safetensors(const std::uint8_t* data, std::size_t size);
TensorMap read_safetensors(const std::string& path);
// One tensor's data only (the whole header is still checked).
HostTensor read_safetensors_tensor(const std::string& path, const std::string& name);
void write_safetensors(const std::string& path, const TensorMap& tensors);
// The same without copying the tensors (they must outlive the call).
void write_safetensors_refs(const std::string& path, const std::map<std::string, const HostTensor*>& tensors);

// By extension: "x.npy", "x.safetensors" (exactly one tensor, or the one named "name"), or
// "x.safetensors:name" to pick a tensor (an empty name is an ArgumentError). Throws FileFormatError /
// ArgumentError with the path.
HostTensor read_tensor(const std::string& path_spec);
// The header of what read_tensor(path_spec) would return: the same checks (the file's whole structure,
// sizes against the file size), but no tensor data is read.
TensorInfo read_tensor_info(const std::string& path_spec);
// The headers of all tensors of a .safetensors file, by name.
std::map<std::string, TensorInfo> read_safetensors_info(const std::string& path);
// By extension; .safetensors files get one tensor under `name` (or the name after the colon): the file is
// replaced and holds only that tensor (to add tensors to a file, read it and write_safetensors all of them).
void write_tensor(const std::string& path, const HostTensor& tensor, const std::string& name = "out");

// A file that replaces `target` whole or not at all. The constructor creates a new temporary file in the
// target's folder (a symbolic link is followed, so the link stays and its file is replaced; an existing
// file's permission bits are kept); write the contents to path(), then commit() renames it over the
// target. Destroyed without commit() (an error on the way), the temporary file is removed and the target
// is untouched. FileFormatError naming the target when the temporary cannot be created or renamed.
class StagedFile {
public:
    explicit StagedFile(const std::string& target);
    ~StagedFile();
    StagedFile(const StagedFile&) = delete;
    StagedFile& operator=(const StagedFile&) = delete;

    const std::string& path() const { return temp_; }      // the temporary file
    const std::string& target() const { return target_; }  // as given
    const std::string& resolved() const { return resolved_; } // the file rename() replaces
    void commit();

private:
    std::string target_, resolved_, temp_;
    bool committed_ = false;
};

} // namespace vmonarch
