// Internal: the heat maps' perceptual colormap (src/viz).
#pragma once

#include "viz/canvas.hpp"

namespace vmonarch::viz {

// Dark purple-black (t = 0) through purple, red and orange to pale yellow (t = 1); luminance rises
// monotonically, so the picture also reads in grey. t is clamped to [0, 1].
Rgb colormap(double t);

} // namespace vmonarch::viz
