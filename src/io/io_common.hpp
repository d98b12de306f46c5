// Internal helpers shared by the tensor-file readers and writers (src/io). Self-contained on purpose:
// the fuzz targets link only src/io, not the rest of the library.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vmonarch/errors.hpp"
#include "vmonarch/extras/tensor_file.hpp"

static_assert(std::endian::native == std::endian::little, "vmonarch tensor files assume a little-endian host");

namespace vmonarch::io {

inline constexpr int kMaxDims = 64;                                  // numpy's limit as well
inline constexpr std::uint64_t kMaxFileBytes = std::uint64_t(64) << 30; // 64 GiB

inline std::size_t itemsize(DType dtype) {
    switch (dtype) {
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::f32: return 4;
    case DType::f64: return 8;
    }
    throw ArgumentError("dtype", "unknown DType value " + std::to_string(int(dtype)));
}

inline const char* dtype_label(DType dtype) {
    switch (dtype) {
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    }
    return "unknown";
}

// a * b, or nullopt when it overflows int64 (both operands must be >= 0).
inline std::optional<std::int64_t> checked_mul(std::int64_t a, std::int64_t b) {
    std::int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
    return r;
}

// At most `limit` characters of s, with bytes outside printable ASCII written as \xNN.
std::string printable(const std::string& s, std::size_t limit = 160);

// "(2, 3)", "(5,)", "()" as Python prints a tuple.
std::string shape_string(const std::vector<std::int64_t>& shape);

// Element count and byte count of a shape, or a message saying which overflows / which dim is negative.
struct ShapeSize {
    std::int64_t numel = 0, bytes = 0;
    std::string error; // empty when fine
};
ShapeSize shape_size(const std::vector<std::int64_t>& shape, std::size_t item);

// Checks a tensor before it is written: known dtype, dims >= 0, byte buffer of the right size.
void check_writable(const HostTensor& tensor, const std::string& what);

// Random-access bytes: a memory buffer or an open file. read() is bounds-checked.
class ByteSource {
public:
    virtual ~ByteSource() = default;
    virtual std::uint64_t size() const = 0;
    void read(std::uint64_t offset, std::size_t count, void* dst);

protected:
    virtual void read_raw(std::uint64_t offset, std::size_t count, void* dst) = 0;
};

class MemorySource final : public ByteSource {
public:
    MemorySource(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    std::uint64_t size() const override { return size_; }

private:
    void read_raw(std::uint64_t offset, std::size_t count, void* dst) override;
    const std::uint8_t* data_;
    std::size_t size_;
};

// Opens `path` for reading; FileFormatError (without the path prefix) when missing, a directory,
// unreadable or larger than kMaxFileBytes.
class FileSource final : public ByteSource {
public:
    explicit FileSource(const std::string& path);
    std::uint64_t size() const override { return size_; }

private:
    void read_raw(std::uint64_t offset, std::size_t count, void* dst) override;
    std::ifstream in_;
    std::uint64_t size_ = 0;
};

// Runs fn(); a FileFormatError escaping it is rethrown with "path: " in front of its message.
template <class Fn>
auto with_path(const std::string& path, Fn&& fn) -> decltype(fn()) {
    try {
        return fn();
    } catch (const FileFormatError& e) {
        throw FileFormatError(path + ": " + e.what());
    }
}

// `count` bytes for `what` (a tensor's data); OutOfMemoryError saying how much and for what when the
// allocation fails, never std::bad_alloc.
std::vector<std::byte> allocate_bytes(std::uint64_t count, const std::string& what);

// Writes `head` and then each payload to `path` through a StagedFile: the file appears whole or not at all.
// FileFormatError naming the path on failure.
void write_file(const std::string& path, const std::string& head,
                const std::vector<const std::vector<std::byte>*>& payloads);

// An .npy header: what it holds and where its data starts (checked against the source's size).
struct NpyHeader {
    DType dtype = DType::f32;
    std::vector<std::int64_t> shape;
    bool big_endian = false;
    std::uint64_t data_start = 0, data_bytes = 0;
};
NpyHeader read_npy_header(ByteSource& src);

// A .safetensors header: every tensor's dtype, shape and byte range in the data buffer, checked to tile
// the buffer exactly. Offsets are relative to data_start.
struct SafetensorsEntry {
    std::string name;
    DType dtype = DType::f32;
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0, end = 0;
};
struct SafetensorsIndex {
    std::uint64_t data_start = 0;
    std::vector<SafetensorsEntry> entries; // in header order
};
SafetensorsIndex read_safetensors_index(ByteSource& src);
// The data of one entry of `index`.
HostTensor read_safetensors_entry(ByteSource& src, const SafetensorsIndex& index, const SafetensorsEntry& entry);

// Format cores shared by the buffer and file entry points.
HostTensor read_npy_from(ByteSource& src);
TensorMap read_safetensors_from(ByteSource& src);
// `tensors` must be sorted by name and unique (as in a TensorMap).
void write_safetensors_refs(const std::string& path,
                            const std::vector<std::pair<std::string, const HostTensor*>>& tensors);

} // namespace vmonarch::io
