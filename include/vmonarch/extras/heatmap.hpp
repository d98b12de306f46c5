// Pictures of what the approximation does: dense vs Monarch attention rows as heat maps over frames.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch {

struct AttentionRowPair {
    std::int64_t query_token = 0;    // n = i·HW + j
    std::string label;               // e.g. "head 2 (semantic)"
    std::vector<double> dense;       // N probabilities
    std::vector<double> monarch;     // N probabilities
};

// Writes a PNG: one band per row pair; each band has two strips (dense above, Monarch below) of T
// panels of H×W cells (cells magnified), colour = attention probability on a shared per-band log scale,
// the query's own position outlined, with a colour bar. Throws ArgumentError on sizes that don't match.
void write_attention_heatmap_png(const std::string& path, const VideoGrid& grid,
                                 const std::vector<AttentionRowPair>& rows);

} // namespace vmonarch
