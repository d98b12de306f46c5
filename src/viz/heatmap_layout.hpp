// Internal: geometry of the attention heat-map picture (src/viz), shared with the unit tests.
//
//   [band label ............................................ p (log)]
//   dense    frame 0   frame 1   frame 2 ...                   ██ 1.2e-1
//            [H×W]     [H×W]     [H×W]   (wrapped into lines)  ██
//   Monarch  frame 0   frame 1   ...                           ██ 1.2e-5
//            [H×W]     [H×W]
//   (next band)
#pragma once

#include <cstdint>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch::viz {

struct HeatmapLayout {
    int width = 0, height = 0; // picture, pixels
    int margin = 12;
    int text_scale = 2;        // band label, strip names, colour-bar labels
    int frame_label_scale = 2; // frame indices above the panels
    bool long_frame_labels = true; // "frame 3" rather than "3"
    int cell = 1;              // pixels per cell side
    int panel_w = 0, panel_h = 0;
    int gap_x = 0;             // between panels in a line
    int panels_per_line = 1, lines = 1;
    int panels_x = 0;          // x of the first panel column
    int label_h = 0;           // band label line incl. padding
    int frame_label_h = 0;     // frame index line incl. padding
    int line_gap = 0;          // between panel lines of a strip
    int strip_gap = 0;         // between the dense and the Monarch strip
    int band_gap = 0;          // after a band
    int strip_h = 0, band_h = 0;
    int bar_x = 0, bar_w = 0;  // colour bar
    int bar_label_x = 0;

    int band_y(int band) const { return margin + band * (band_h + band_gap); }
    int strip_y(int band, int strip) const { return band_y(band) + label_h + strip * (strip_h + strip_gap); }
    // Top-left pixel of panel `frame` in a strip (strip 0 dense, 1 Monarch).
    int panel_x(int frame) const { return panels_x + (frame % panels_per_line) * (panel_w + gap_x); }
    int panel_y(int band, int strip, int frame) const {
        return strip_y(band, strip) + (frame / panels_per_line) * (frame_label_h + panel_h + line_gap) + frame_label_h;
    }
    // Top-left pixel of the cell (frame t, row y, column x).
    int cell_x(int t, int x) const { return panel_x(t) + x * cell; }
    int cell_y(int band, int strip, int t, int y) const { return panel_y(band, strip, t) + y * cell; }
};

// Geometry for `bands` row pairs on `grid`, with band labels up to label_chars characters long.
// Throws ArgumentError("grid" / "rows") when the picture would be unreasonably large.
HeatmapLayout layout_heatmap(const VideoGrid& grid, std::int64_t bands, std::int64_t label_chars);

} // namespace vmonarch::viz
