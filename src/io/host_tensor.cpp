// HostTensor: shape bookkeeping and element-wise dtype conversion (round to nearest even).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "io/io_common.hpp"
#include "vmonarch/half.hpp"

namespace vmonarch {

namespace {

using io::itemsize;

// Rounds d to float with round-to-odd (truncate, then set the last bit when inexact). A second rounding
// of that float to f16/bf16 with round-to-nearest-even then equals rounding d directly: float keeps more
// than two extra bits over either 16-bit format.
float round_to_odd_float(double d) {
    if (std::isnan(d) || std::isinf(d)) return float(d);
    float f = float(d);
    if (double(f) == d) return f;
    if (std::fabs(double(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f); // also maps an overflow inf to max
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits |= 1u;
    std::memcpy(&f, &bits, 4);
    return f;
}

double load(DType dtype, const std::byte* p) {
    switch (dtype) {
    case DType::f16: { std::uint16_t h; std::memcpy(&h, p, 2); return f16_to_float(h); }
    case DType::bf16: { std::uint16_t h; std::memcpy(&h, p, 2); return bf16_to_float(h); }
    case DType::f32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::f64: { double d; std::memcpy(&d, p, 8); return d; }
    }
    return 0;
}

void store(DType dtype, std::byte* p, double d) {
    switch (dtype) {
    case DType::f16: { const std::uint16_t h = float_to_f16(round_to_odd_float(d)); std::memcpy(p, &h, 2); return; }
    case DType::bf16: { const std::uint16_t h = float_to_bf16(round_to_odd_float(d)); std::memcpy(p, &h, 2); return; }
    case DType::f32: { const float f = float(d); std::memcpy(p, &f, 4); return; }
    case DType::f64: std::memcpy(p, &d, 8); return;
    }
}

// Validates shape and dtype; returns the element count.
std::int64_t checked_numel(DType dtype, const std::vector<std::int64_t>& shape) {
    const io::ShapeSize s = io::shape_size(shape, itemsize(dtype));
    if (!s.error.empty()) throw ArgumentError("shape", "HostTensor shape " + io::shape_string(shape) + ": " + s.error);
    return s.numel;
}

// A tensor whose byte buffer matches its shape and dtype; returns the element count.
std::int64_t checked_self(const HostTensor& t) {
    const std::int64_t n = checked_numel(t.dtype, t.shape);
    if (t.bytes.size() != std::size_t(n) * itemsize(t.dtype))
        throw ArgumentError("bytes", "HostTensor of shape " + io::shape_string(t.shape) + " and dtype " +
                                         io::dtype_label(t.dtype) + " needs " +
                                         std::to_string(std::size_t(n) * itemsize(t.dtype)) + " bytes but holds " +
                                         std::to_string(t.bytes.size()));
    return n;
}

// A vector of n elements for a tensor of `shape`; OutOfMemoryError instead of std::bad_alloc.
template <class T>
std::vector<T> allocate_values(std::int64_t n, const std::vector<std::int64_t>& shape, const char* what) {
    try {
        return std::vector<T>(static_cast<std::size_t>(n));
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError(std::string(what) + " of a tensor of shape " + io::shape_string(shape) +
                               ": cannot allocate " + std::to_string(std::uint64_t(n) * sizeof(T)) +
                               " bytes of host memory");
    }
}

} // namespace

std::int64_t HostTensor::numel() const { return checked_numel(dtype, shape); }

HostTensor HostTensor::zeros(DType dtype, std::vector<std::int64_t> shape) {
    const std::int64_t n = checked_numel(dtype, shape);
    HostTensor t;
    t.dtype = dtype;
    t.bytes = io::allocate_bytes(std::uint64_t(n) * itemsize(dtype),
                                 "tensor of shape " + io::shape_string(shape) + " " + io::dtype_label(dtype));
    t.shape = std::move(shape);
    return t;
}

HostTensor HostTensor::from_floats(const std::vector<float>& values, std::vector<std::int64_t> shape, DType dtype) {
    const std::int64_t n = checked_numel(dtype, shape);
    if (values.size() != std::uint64_t(n))
        throw ArgumentError("values", "HostTensor::from_floats: shape " + io::shape_string(shape) + " holds " +
                                          std::to_string(n) + " elements but " + std::to_string(values.size()) +
                                          " values were given");
    HostTensor t = zeros(dtype, std::move(shape));
    const std::size_t item = itemsize(dtype);
    for (std::size_t i = 0; i < values.size(); ++i) {
        std::byte* p = t.bytes.data() + i * item;
        switch (dtype) { // from float directly: exact for f32/f64, one rounding for f16/bf16
        case DType::f16: { const std::uint16_t h = float_to_f16(values[i]); std::memcpy(p, &h, 2); break; }
        case DType::bf16: { const std::uint16_t h = float_to_bf16(values[i]); std::memcpy(p, &h, 2); break; }
        case DType::f32: std::memcpy(p, &values[i], 4); break;
        case DType::f64: { const double d = values[i]; std::memcpy(p, &d, 8); break; }
        }
    }
    return t;
}

std::vector<float> HostTensor::to_floats() const {
    const std::int64_t n = checked_self(*this);
    std::vector<float> out = allocate_values<float>(n, shape, "HostTensor::to_floats");
    const std::size_t item = itemsize(dtype);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = float(load(dtype, bytes.data() + i * item));
    return out;
}

std::vector<double> HostTensor::to_doubles() const {
    const std::int64_t n = checked_self(*this);
    std::vector<double> out = allocate_values<double>(n, shape, "HostTensor::to_doubles");
    to_doubles(0, n, out.data());
    return out;
}

void HostTensor::to_doubles(std::int64_t first, std::int64_t count, double* out) const {
    const std::int64_t n = checked_self(*this);
    if (first < 0 || count < 0 || first > n || count > n - first)
        throw ArgumentError("first", "HostTensor::to_doubles: elements [" + std::to_string(first) + ", " +
                                         std::to_string(first) + " + " + std::to_string(count) +
                                         ") are outside the tensor's " + std::to_string(n) + " elements");
    const std::size_t item = itemsize(dtype);
    const std::byte* base = bytes.data() + std::size_t(first) * item;
    for (std::size_t i = 0; i < std::size_t(count); ++i) out[i] = load(dtype, base + i * item);
}

ValueStats HostTensor::value_stats() const {
    const std::int64_t n = checked_self(*this);
    const std::size_t item = itemsize(dtype);
    ValueStats stats;
    for (std::size_t i = 0; i < std::size_t(n); ++i) {
        const double x = load(dtype, bytes.data() + i * item);
        if (!std::isfinite(x)) ++stats.non_finite;
        else stats.max_abs = std::max(stats.max_abs, std::fabs(x));
    }
    return stats;
}

HostTensor HostTensor::converted(DType to) const {
    const std::int64_t n = checked_self(*this);
    if (to == dtype) return *this;
    HostTensor t = zeros(to, shape);
    const std::size_t from_item = itemsize(dtype), to_item = itemsize(to);
    for (std::size_t i = 0; i < std::size_t(n); ++i)
        store(to, t.bytes.data() + i * to_item, load(dtype, bytes.data() + i * from_item));
    return t;
}

} // namespace vmonarch
