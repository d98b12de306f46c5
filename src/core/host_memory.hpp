// Internal: the library's host buffers. Every allocation goes through here so that a failure surfaces as
// vmonarch::OutOfMemoryError naming what the memory was for and how much was asked, never as
// std::bad_alloc, std::length_error or a signal. Messages are built only on failure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "vmonarch/errors.hpp"

namespace vmonarch::detail {

// Throws OutOfMemoryError: "<what>: out of memory: could not allocate <count> x <element_bytes> bytes (...)".
[[noreturn]] void throw_out_of_memory(const char* what, std::int64_t count, std::size_t element_bytes);

// OutOfMemoryError for an allocation failure `cause` (std::bad_alloc, std::length_error) caught around a
// larger computation; `context` names the call and its sizes.
[[noreturn]] void throw_out_of_memory(const std::string& context, const std::exception& cause);

// Fills `v` with `count` copies of `value` (reusing its capacity when large enough).
template <typename T>
void assign_filled(std::vector<T>& v, std::int64_t count, const T& value, const char* what) {
    if (count < 0 || std::uint64_t(count) > std::uint64_t(std::numeric_limits<std::ptrdiff_t>::max()) / sizeof(T))
        throw_out_of_memory(what, count, sizeof(T));
    try {
        v.assign(std::size_t(count), value);
    } catch (const std::bad_alloc&) {
        throw_out_of_memory(what, count, sizeof(T));
    } catch (const std::length_error&) {
        throw_out_of_memory(what, count, sizeof(T));
    }
}

// A vector of `count` copies of `value`.
template <typename T>
std::vector<T> allocate_filled(std::int64_t count, const T& value, const char* what) {
    std::vector<T> v;
    assign_filled(v, count, value, what);
    return v;
}

} // namespace vmonarch::detail
