// Internal: an RGB8 raster with the few drawing operations the heat maps need (src/viz).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vmonarch::viz {

struct Rgb {
    std::uint8_t r = 0, g = 0, b = 0;
    friend bool operator==(const Rgb&, const Rgb&) = default;
};

class Canvas {
public:
    Canvas(int width, int height, Rgb background);

    int width() const { return width_; }
    int height() const { return height_; }
    const std::vector<std::uint8_t>& pixels() const { return rgb_; } // row-major RGB, 3 bytes a pixel

    Rgb at(int x, int y) const;
    void set(int x, int y, Rgb c);                             // ignores points outside
    void fill(int x, int y, int w, int h, Rgb c);              // clipped
    void outline(int x, int y, int w, int h, int thickness, Rgb c); // inside the w×h box
    // Text with its top-left corner at (x, y), each font pixel drawn as scale×scale.
    void text(int x, int y, const std::string& s, int scale, Rgb c);

private:
    int width_, height_;
    std::vector<std::uint8_t> rgb_;
};

// Size of a text line drawn by Canvas::text.
int text_width(const std::string& s, int scale);
int text_height(int scale);

} // namespace vmonarch::viz
