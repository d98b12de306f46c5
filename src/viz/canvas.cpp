// RGB8 raster and text drawing for the heat-map pictures.
#include "viz/canvas.hpp"

#include <algorithm>

#include "viz/font.hpp"

namespace vmonarch::viz {

Canvas::Canvas(int width, int height, Rgb background)
    : width_(width), height_(height), rgb_(static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3) {
    for (std::size_t i = 0; i < rgb_.size(); i += 3) {
        rgb_[i] = background.r;
        rgb_[i + 1] = background.g;
        rgb_[i + 2] = background.b;
    }
}

Rgb Canvas::at(int x, int y) const {
    const std::size_t i = (static_cast<std::size_t>(y) * static_cast<std::size_t>(width_) + static_cast<std::size_t>(x)) * 3;
    return {rgb_[i], rgb_[i + 1], rgb_[i + 2]};
}

void Canvas::set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
    const std::size_t i = (static_cast<std::size_t>(y) * static_cast<std::size_t>(width_) + static_cast<std::size_t>(x)) * 3;
    rgb_[i] = c.r;
    rgb_[i + 1] = c.g;
    rgb_[i + 2] = c.b;
}

void Canvas::fill(int x, int y, int w, int h, Rgb c) {
    const int x0 = std::max(0, x), y0 = std::max(0, y);
    const int x1 = std::min(width_, x + w), y1 = std::min(height_, y + h);
    for (int yy = y0; yy < y1; ++yy)
        for (int xx = x0; xx < x1; ++xx) set(xx, yy, c);
}

void Canvas::outline(int x, int y, int w, int h, int thickness, Rgb c) {
    fill(x, y, w, thickness, c);
    fill(x, y + h - thickness, w, thickness, c);
    fill(x, y, thickness, h, c);
    fill(x + w - thickness, y, thickness, h, c);
}

void Canvas::text(int x, int y, const std::string& s, int scale, Rgb c) {
    int pen = x;
    for (char ch : s) {
        const Glyph& g = glyph(ch);
        for (int r = 0; r < kGlyphRows; ++r)
            for (int col = 0; col < kGlyphCols; ++col)
                if (g.rows[r] & (1u << (kGlyphCols - 1 - col))) fill(pen + col * scale, y + r * scale, scale, scale, c);
        pen += kGlyphAdvance * scale;
    }
}

int text_width(const std::string& s, int scale) {
    if (s.empty()) return 0;
    return (static_cast<int>(s.size()) * kGlyphAdvance - 1) * scale;
}
int text_height(int scale) { return kGlyphRows * scale; }

} // namespace vmonarch::viz
