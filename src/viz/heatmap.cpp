// write_attention_heatmap_png: dense vs Monarch attention rows as per-frame heat maps (heatmap.hpp).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "viz/canvas.hpp"
#include "viz/colormap.hpp"
#include "viz/heatmap_layout.hpp"
#include "viz/png_write.hpp"
#include "vmonarch/errors.hpp"
#include "vmonarch/extras/heatmap.hpp"

namespace vmonarch {

namespace viz {

namespace {

constexpr int kMaxWidth = 2400;        // preferred picture width
constexpr int kMaxCell = 24;           // largest magnification
constexpr int kMinOneLineCell = 4;     // below this, wrap panels into several lines instead
constexpr int kMaxPanelHeight = 480;
constexpr double kMaxPixels = 1.0e8;   // refuse pictures beyond this (about 300 MB of RGB)
constexpr double kDynamicRange = 1e4;  // colour scale: band max / 1e4 .. band max

const Rgb kBackground{255, 255, 255};
const Rgb kInk{24, 24, 24};
const Rgb kQueryMark{0, 224, 255};
const Rgb kQueryLabel{0, 140, 170};
const Rgb kRule{200, 200, 200};

std::string sci(double v) {
    if (!(v > 0)) return "0";
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.1e", v); // 1.2e-05
    std::string s(buf);
    const auto e = s.find('e');
    if (e == std::string::npos) return s;
    std::string mant = s.substr(0, e), exp = s.substr(e + 1);
    std::string sign;
    if (!exp.empty() && (exp[0] == '-' || exp[0] == '+')) {
        if (exp[0] == '-') sign = "-";
        exp = exp.substr(1);
    }
    while (exp.size() > 1 && exp[0] == '0') exp = exp.substr(1);
    return mant + "e" + sign + exp;
}

} // namespace

HeatmapLayout layout_heatmap(const VideoGrid& grid, std::int64_t bands, std::int64_t label_chars) {
    HeatmapLayout L;
    const std::int64_t T = grid.T, H = grid.H, W = grid.W;
    const int ts = L.text_scale;
    const int name_w = text_width("Monarch", ts) + 12;
    L.panels_x = L.margin + name_w;
    L.bar_w = 14;
    const int bar_block = 20 + L.bar_w + 6 + text_width("8.8e-88", ts) + L.margin; // bar and its labels
    const int avail = std::max(64, kMaxWidth - L.panels_x - bar_block);

    // Cell size: all frames on one line when cells can be at least kMinOneLineCell px; otherwise
    // kMinOneLineCell px cells (fewer for very wide frames) wrapped into balanced lines.
    auto gap_for = [](int cell) { return std::max(4, std::min(10, cell / 2 + 2)); };
    int cell = kMaxCell;
    while (cell > kMinOneLineCell &&
           static_cast<double>(T) * static_cast<double>(W * cell + gap_for(cell)) > static_cast<double>(avail))
        --cell;
    if (static_cast<double>(T) * static_cast<double>(W * cell + gap_for(cell)) > static_cast<double>(avail)) {
        while (cell > 1 && static_cast<double>(W) * cell + gap_for(cell) > static_cast<double>(avail)) --cell;
    }
    while (cell > 1 && static_cast<double>(H) * cell > kMaxPanelHeight) --cell;
    L.cell = cell;
    L.gap_x = gap_for(cell);
    if (static_cast<double>(W) * cell > 1e5 || static_cast<double>(H) * cell > 1e5)
        throw ArgumentError("grid", "grid " + std::to_string(T) + "x" + std::to_string(H) + "x" + std::to_string(W) +
                                        " is too large to draw");
    L.panel_w = static_cast<int>(W) * cell;
    L.panel_h = static_cast<int>(H) * cell;
    const std::int64_t fit = std::max<std::int64_t>(1, (avail + L.gap_x) / (L.panel_w + L.gap_x));
    const std::int64_t lines = (T + fit - 1) / fit;
    L.panels_per_line = static_cast<int>((T + lines - 1) / lines); // balance the lines
    L.lines = static_cast<int>((T + L.panels_per_line - 1) / L.panels_per_line);

    // Frame labels: "frame 12" if it fits above a panel, else the bare index, smaller if needed.
    const std::string longest = std::to_string(T - 1);
    L.frame_label_scale = text_width(longest, 2) <= L.panel_w ? 2 : 1;
    L.long_frame_labels = text_width("frame " + longest, L.frame_label_scale) <= L.panel_w;
    L.frame_label_h = text_height(L.frame_label_scale) + 3;
    L.label_h = text_height(ts) + 8;
    L.line_gap = 6;
    L.strip_gap = 14;
    L.band_gap = 22;
    L.strip_h = L.lines * (L.frame_label_h + L.panel_h) + (L.lines - 1) * L.line_gap;
    L.band_h = L.label_h + 2 * L.strip_h + L.strip_gap;

    const int panels_right = L.panels_x + L.panels_per_line * L.panel_w + (L.panels_per_line - 1) * L.gap_x;
    L.bar_x = panels_right + 20;
    L.bar_label_x = L.bar_x + L.bar_w + 6;
    const int label_w = text_width(std::string(static_cast<std::size_t>(std::min<std::int64_t>(label_chars, 400)), 'M'), ts);
    L.width = std::max(L.bar_label_x + text_width("8.8e-88", ts) + L.margin, L.margin + label_w + L.margin);
    const double height = 2.0 * L.margin + static_cast<double>(bands) * (L.band_h + L.band_gap) - L.band_gap;
    if (static_cast<double>(L.width) * height > kMaxPixels)
        throw ArgumentError("rows", std::to_string(bands) + " row pairs on a " + std::to_string(T) + "x" +
                                        std::to_string(H) + "x" + std::to_string(W) +
                                        " grid make a picture too large to write; pass fewer rows");
    L.height = static_cast<int>(height);
    return L;
}

} // namespace viz

void write_attention_heatmap_png(const std::string& path, const VideoGrid& grid, const std::vector<AttentionRowPair>& rows) {
    using namespace viz;
    if (path.empty()) throw ArgumentError("path", "write_attention_heatmap_png: empty path");
    if (grid.T < 1 || grid.H < 1 || grid.W < 1 || grid.T > (1 << 20) || grid.H > (1 << 20) || grid.W > (1 << 20))
        throw ArgumentError("grid", "write_attention_heatmap_png: grid sizes must be in [1, 2^20], got T=" +
                                        std::to_string(grid.T) + " H=" + std::to_string(grid.H) + " W=" + std::to_string(grid.W));
    const std::int64_t N = grid.tokens();
    if (rows.empty()) throw ArgumentError("rows", "write_attention_heatmap_png: no row pairs to draw");
    std::size_t label_chars = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        const std::string name = "rows[" + std::to_string(i) + "]";
        if (r.query_token < 0 || r.query_token >= N)
            throw ArgumentError("rows", name + ".query_token = " + std::to_string(r.query_token) + " is outside [0, " +
                                            std::to_string(N) + ")");
        for (const auto* v : {&r.dense, &r.monarch}) {
            const std::string which = name + (v == &r.dense ? ".dense" : ".monarch");
            if (static_cast<std::int64_t>(v->size()) != N)
                throw ArgumentError("rows", which + " has " + std::to_string(v->size()) + " entries, grid.tokens() = " +
                                                std::to_string(N));
            for (std::size_t n = 0; n < v->size(); ++n)
                if (!std::isfinite((*v)[n]) || (*v)[n] < 0)
                    throw ArgumentError("rows", which + "[" + std::to_string(n) + "] = " + std::to_string((*v)[n]) +
                                                    " is not a finite non-negative probability");
        }
        label_chars = std::max(label_chars, r.label.size() + 40);
    }

    const HeatmapLayout L = layout_heatmap(grid, static_cast<std::int64_t>(rows.size()), static_cast<std::int64_t>(label_chars));
    Canvas canvas(L.width, L.height, kBackground);
    const int ts = L.text_scale;
    const std::int64_t HW = grid.frame_tokens();

    for (std::size_t b = 0; b < rows.size(); ++b) {
        const auto& r = rows[b];
        const int band = static_cast<int>(b);
        const std::int64_t qt = r.query_token / HW, qy = (r.query_token % HW) / grid.W, qx = r.query_token % grid.W;

        // Shared log scale of the band.
        double hi = 0;
        for (double p : r.dense) hi = std::max(hi, p);
        for (double p : r.monarch) hi = std::max(hi, p);
        const double lo = hi / kDynamicRange;
        const double inv_span = hi > 0 ? 1.0 / std::log(kDynamicRange) : 0.0;
        auto colour_of = [&](double p) {
            if (!(hi > 0) || !(p > lo)) return colormap(0.0);
            return colormap(std::log(p / lo) * inv_span);
        };

        // Label line.
        const int y0 = L.band_y(band);
        const std::string query = "query: frame " + std::to_string(qt) + ", y " + std::to_string(qy) + ", x " +
                                  std::to_string(qx) + " (token " + std::to_string(r.query_token) + ")";
        const std::string label = r.label.empty() ? query : r.label + "  |  " + query;
        canvas.text(L.margin, y0, label, ts, kInk);

        for (int strip = 0; strip < 2; ++strip) {
            const std::vector<double>& p = strip == 0 ? r.dense : r.monarch;
            const int sy = L.strip_y(band, strip);
            canvas.text(L.margin, sy + L.frame_label_h + std::max(0, (std::min(L.panel_h, 200) - text_height(ts)) / 2),
                        strip == 0 ? "dense" : "Monarch", ts, kInk);
            for (std::int64_t t = 0; t < grid.T; ++t) {
                const int ti = static_cast<int>(t);
                const int px = L.panel_x(ti), py = L.panel_y(band, strip, ti);
                const std::string fl = (L.long_frame_labels ? "frame " : "") + std::to_string(t);
                canvas.text(px, py - L.frame_label_h, fl, L.frame_label_scale, t == qt ? kQueryLabel : kInk);
                for (std::int64_t y = 0; y < grid.H; ++y)
                    for (std::int64_t x = 0; x < grid.W; ++x)
                        canvas.fill(px + static_cast<int>(x) * L.cell, py + static_cast<int>(y) * L.cell, L.cell, L.cell,
                                    colour_of(p[static_cast<std::size_t>(t * HW + y * grid.W + x)]));
            }
            // The query's own cell, outlined just outside the cell.
            const int th = L.cell >= 8 ? 2 : 1;
            const int cx = L.cell_x(static_cast<int>(qt), static_cast<int>(qx));
            const int cy = L.cell_y(band, strip, static_cast<int>(qt), static_cast<int>(qy));
            canvas.outline(cx - th, cy - th, L.cell + 2 * th, L.cell + 2 * th, th, kQueryMark);
        }

        // Thin rules between the two strips and under the band.
        const int rule_x = L.margin, rule_w = L.bar_x - 20 + 8 - L.margin;
        canvas.fill(rule_x, L.strip_y(band, 1) - L.strip_gap / 2, rule_w, 1, kRule);
        if (b + 1 < rows.size()) canvas.fill(0, L.band_y(band) + L.band_h + L.band_gap / 2, L.width, 1, kRule);

        // Colour bar from the top of the dense strip to the bottom of the Monarch strip, with the scale.
        const int bar_top = L.strip_y(band, 0) + L.frame_label_h;
        const int bar_bottom = L.strip_y(band, 1) + L.strip_h;
        const int bar_h = std::max(2, bar_bottom - bar_top);
        for (int i = 0; i < bar_h; ++i)
            canvas.fill(L.bar_x, bar_top + i, L.bar_w, 1, colormap(1.0 - static_cast<double>(i) / (bar_h - 1)));
        canvas.outline(L.bar_x - 1, bar_top - 1, L.bar_w + 2, bar_h + 2, 1, kInk);
        const std::string caption = "p, log scale";
        const int caption_x = L.width - L.margin - text_width(caption, ts);
        if (L.margin + text_width(label, ts) + 24 <= caption_x) canvas.text(caption_x, y0, caption, ts, kInk);
        const int th = text_height(ts);
        canvas.text(L.bar_label_x, bar_top, sci(hi), ts, kInk);
        if (bar_h >= 4 * th) canvas.text(L.bar_label_x, bar_top + bar_h / 2 - th / 2, sci(hi / std::sqrt(kDynamicRange)), ts, kInk);
        if (bar_h >= 2 * th + 2) canvas.text(L.bar_label_x, bar_top + bar_h - th, sci(lo), ts, kInk);
    }
    write_png(path, canvas);
}

} // namespace vmonarch
