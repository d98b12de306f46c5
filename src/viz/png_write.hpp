// Internal: PNG output with libpng (src/viz).
#pragma once

#include <string>

#include "viz/canvas.hpp"

namespace vmonarch::viz {

// Writes an 8-bit RGB PNG. Throws std::runtime_error naming the path when the file can't be written.
void write_png(const std::string& path, const Canvas& canvas);

} // namespace vmonarch::viz
