// Internal: the text of the library's argument errors (`fn: argument 'name' what`), shared by the API's
// checks (api.cpp, api_backward.cpp, exact_groups.cpp).
#pragma once

#include <sstream>
#include <string>
#include <string_view>

#include "vmonarch/errors.hpp"

namespace vmonarch::detail {

// The parts streamed into one string.
template <typename... Parts> std::string cat(const Parts&... parts) {
    std::ostringstream os;
    (os << ... << parts);
    return os.str();
}

// Throws ArgumentError(argument, "fn: argument 'argument' what"). Callers build `what` only on the failure
// branch.
[[noreturn]] inline void fail(std::string_view fn, std::string_view argument, const std::string& what) {
    throw ArgumentError(std::string(argument), cat(fn, ": argument '", argument, "' ", what));
}

} // namespace vmonarch::detail
