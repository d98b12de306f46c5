// Shape checks, byte sources (memory / file) and file writing for the tensor-file formats.
#include <cerrno>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <cstring>
#include <filesystem>

#include "io/io_common.hpp"

namespace vmonarch::io {

std::string printable(const std::string& s, std::size_t limit) {
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (std::size_t i = 0; i < s.size() && i < limit; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c < 0x7f) {
            out += char(c);
        } else {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    if (s.size() > limit) out += "...";
    return out;
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
}

ShapeSize shape_size(const std::vector<std::int64_t>& shape, std::size_t item) {
    ShapeSize r;
    if (shape.size() > std::size_t(kMaxDims)) {
        r.error = std::to_string(shape.size()) + " dimensions (at most " + std::to_string(kMaxDims) + " supported)";
        return r;
    }
    bool empty = false;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] < 0) {
            r.error = "dimension " + std::to_string(i) + " is negative (" + std::to_string(shape[i]) + ")";
            return r;
        }
        empty = empty || shape[i] == 0;
    }
    if (empty) return r; // zero elements, whatever the other dims are
    std::int64_t n = 1;
    for (std::int64_t d : shape) {
        const auto m = checked_mul(n, d);
        if (!m) {
            r.error = "element count overflows int64";
            return r;
        }
        n = *m;
    }
    const auto b = checked_mul(n, std::int64_t(item));
    if (!b) {
        r.error = std::to_string(n) + " elements of " + std::to_string(item) + " bytes overflow int64";
        return r;
    }
    r.numel = n;
    r.bytes = *b;
    return r;
}

void check_writable(const HostTensor& tensor, const std::string& what) {
    const std::size_t item = itemsize(tensor.dtype); // throws for an out-of-range enum value
    const ShapeSize s = shape_size(tensor.shape, item);
    if (!s.error.empty()) throw ArgumentError("tensor", what + ": shape " + shape_string(tensor.shape) + ": " + s.error);
    if (tensor.bytes.size() != std::uint64_t(s.bytes))
        throw ArgumentError("tensor", what + ": shape " + shape_string(tensor.shape) + " of " + dtype_label(tensor.dtype) +
                                          " needs " + std::to_string(s.bytes) + " bytes but the tensor holds " +
                                          std::to_string(tensor.bytes.size()));
}

std::vector<std::byte> allocate_bytes(std::uint64_t count, const std::string& what) {
    try {
        if (count > std::uint64_t(PTRDIFF_MAX)) throw std::bad_alloc();
        return std::vector<std::byte>(std::size_t(count));
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError(what + ": cannot allocate " + std::to_string(count) + " bytes (" +
                               std::to_string(count >> 20) + " MiB) of host memory");
    } catch (const std::length_error&) {
        throw OutOfMemoryError(what + ": cannot allocate " + std::to_string(count) + " bytes of host memory");
    }
}

void ByteSource::read(std::uint64_t offset, std::size_t count, void* dst) {
    if (offset > size() || count > size() - offset)
        throw FileFormatError("read of " + std::to_string(count) + " bytes at offset " + std::to_string(offset) +
                              " runs past the end (" + std::to_string(size()) + " bytes)");
    if (count) read_raw(offset, count, dst);
}

void MemorySource::read_raw(std::uint64_t offset, std::size_t count, void* dst) {
    std::memcpy(dst, data_ + offset, count);
}

FileSource::FileSource(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) throw FileFormatError("cannot read: " + ec.message());
    if (!fs::exists(st)) {
        if (fs::is_symlink(fs::symlink_status(path, ec))) throw FileFormatError("is a symbolic link to a missing file");
        throw FileFormatError("no such file");
    }
    if (fs::is_directory(st)) throw FileFormatError("is a directory, not a tensor file");
    if (!fs::is_regular_file(st)) throw FileFormatError("not a regular file");
    const std::uintmax_t size = fs::file_size(path, ec);
    if (ec) throw FileFormatError("cannot get the file size: " + ec.message());
    if (size > kMaxFileBytes)
        throw FileFormatError("file of " + std::to_string(size) + " bytes is larger than the " +
                              std::to_string(kMaxFileBytes >> 30) + " GiB limit");
    in_.open(path, std::ios::binary);
    if (!in_.is_open()) throw FileFormatError(std::string("cannot open for reading: ") + std::strerror(errno));
    size_ = size;
}

void FileSource::read_raw(std::uint64_t offset, std::size_t count, void* dst) {
    in_.clear();
    in_.seekg(std::streamoff(offset));
    in_.read(static_cast<char*>(dst), std::streamsize(count));
    if (!in_ || std::size_t(in_.gcount()) != count)
        throw FileFormatError("read of " + std::to_string(count) + " bytes at offset " + std::to_string(offset) +
                              " failed (file truncated while reading, or an I/O error)");
}

} // namespace vmonarch::io
