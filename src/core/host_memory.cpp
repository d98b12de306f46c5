// Out-of-memory errors of the library's host buffers (core/host_memory.hpp).
#include "core/host_memory.hpp"

#include <cstdio>
#include <string>

namespace vmonarch::detail {

void throw_out_of_memory(const char* what, std::int64_t count, std::size_t element_bytes) {
    std::string size = std::to_string(count) + " x " + std::to_string(element_bytes) + " bytes";
    // count·element_bytes in long double: the product itself may not fit in 64 bits.
    const long double bytes = static_cast<long double>(count) * static_cast<long double>(element_bytes);
    const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"};
    long double scaled = bytes;
    int unit = 0;
    while (scaled >= 1024 && unit < 7) scaled /= 1024, ++unit;
    char human[64];
    std::snprintf(human, sizeof human, "%.1Lf %s", scaled, units[unit]);
    throw OutOfMemoryError(std::string(what) + ": out of memory: could not allocate " + size + " (" + human + ")");
}

void throw_out_of_memory(const std::string& context, const std::exception& cause) {
    throw OutOfMemoryError(context + ": out of host memory (" + cause.what() + ")");
}

} // namespace vmonarch::detail
