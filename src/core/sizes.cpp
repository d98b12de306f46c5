// Checked size arithmetic (vmonarch.hpp: checked_product, VideoGrid). Every product of user-given sizes
// goes through here, so an overflow is an ArgumentError instead of a wrapped (negative or small) count.
// Messages are built only on failure: the success path formats nothing.
#include <limits>
#include <string>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch {

namespace {

[[noreturn]] void size_error(std::initializer_list<std::int64_t> factors, std::string_view function,
                             std::string_view argument, bool negative) {
    std::string text;
    for (const std::int64_t f : factors) {
        if (!text.empty()) text += '*';
        text += std::to_string(f);
    }
    const std::string what = negative ? " has a negative size (" + text + "), expected sizes >= 0"
                                      : " gives " + text + ", which overflows int64 (max " +
                                            std::to_string(std::numeric_limits<std::int64_t>::max()) + ")";
    throw ArgumentError(std::string(argument),
                        std::string(function) + ": argument '" + std::string(argument) + "'" + what);
}

} // namespace

std::int64_t checked_product(std::initializer_list<std::int64_t> factors, std::string_view function,
                             std::string_view argument) {
    std::int64_t product = 1;
    for (const std::int64_t f : factors) {
        if (f < 0) size_error(factors, function, argument, true);
        if (f != 0 && product > std::numeric_limits<std::int64_t>::max() / f)
            size_error(factors, function, argument, false);
        product *= f;
    }
    return product;
}

std::int64_t VideoGrid::frame_tokens() const { return checked_product({H, W}, "vmonarch::VideoGrid (H*W)", "grid"); }

std::int64_t VideoGrid::tokens() const { return checked_product({T, H, W}, "vmonarch::VideoGrid (T*H*W)", "grid"); }

} // namespace vmonarch
