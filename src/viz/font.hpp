// Internal: bitmap font for the heat-map pictures (src/viz).
#pragma once

#include <cstdint>

namespace vmonarch::viz {

constexpr int kGlyphCols = 5;    // ink columns
constexpr int kGlyphRows = 8;    // 7 above the baseline + 1 descender row
constexpr int kGlyphAdvance = 6; // columns per character including spacing
constexpr int kGlyphAscent = 7;  // rows above the baseline

struct Glyph {
    std::uint8_t rows[kGlyphRows]; // bit (kGlyphCols−1−c) set = ink in column c
};

bool has_glyph(char c);
// The glyph for c; characters without one render as '?'.
const Glyph& glyph(char c);

} // namespace vmonarch::viz
