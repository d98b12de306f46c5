// Tests of the attention heat-map picture (src/viz): written with libpng, read back with libpng.
#include <gtest/gtest.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "viz/colormap.hpp"
#include "viz/font.hpp"
#include "viz/heatmap_layout.hpp"
#include "vmonarch/extras/heatmap.hpp"
#include "vmonarch/extras/video_data.hpp"

namespace {

using vmonarch::AttentionRowPair;
using vmonarch::VideoGrid;
using vmonarch::viz::Rgb;

struct Image {
    int width = 0, height = 0;
    std::vector<std::uint8_t> rgb;
    Rgb at(int x, int y) const {
        const std::size_t i = (static_cast<std::size_t>(y) * width + x) * 3;
        return {rgb[i], rgb[i + 1], rgb[i + 2]};
    }
};

Image read_png(const std::string& path) {
    png_image img{};
    img.version = PNG_IMAGE_VERSION;
    Image out;
    if (!png_image_begin_read_from_file(&img, path.c_str())) {
        ADD_FAILURE() << "cannot read " << path << ": " << img.message;
        return out;
    }
    img.format = PNG_FORMAT_RGB;
    out.width = static_cast<int>(img.width);
    out.height = static_cast<int>(img.height);
    out.rgb.resize(PNG_IMAGE_SIZE(img));
    if (!png_image_finish_read(&img, nullptr, out.rgb.data(), 0, nullptr)) {
        ADD_FAILURE() << "cannot decode " << path << ": " << img.message;
        out = {};
    }
    png_image_free(&img);
    return out;
}

std::string temp_png(const std::string& name) {
    return (std::filesystem::path(testing::TempDir()) / ("vmonarch_" + name + ".png")).string();
}

double luminance(Rgb c) { return 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b; }

int colour_distance(Rgb a, Rgb b) { return std::abs(a.r - b.r) + std::abs(a.g - b.g) + std::abs(a.b - b.b); }

// The writer sizes the picture for labels up to (longest label + 40) characters.
vmonarch::viz::HeatmapLayout layout_for(const VideoGrid& g, const std::vector<AttentionRowPair>& rows) {
    std::size_t chars = 0;
    for (const auto& r : rows) chars = std::max(chars, r.label.size() + 40);
    return vmonarch::viz::layout_heatmap(g, static_cast<std::int64_t>(rows.size()), static_cast<std::int64_t>(chars));
}

// Blurs a row with a 3×3 box inside each frame (keeps the per-frame mass): a toy "Monarch-like" row.
std::vector<double> blur_within_frames(const VideoGrid& g, const std::vector<double>& p) {
    std::vector<double> out(p.size(), 0.0);
    const std::int64_t HW = g.frame_tokens();
    for (std::int64_t t = 0; t < g.T; ++t) {
        double before = 0, after = 0;
        for (std::int64_t y = 0; y < g.H; ++y)
            for (std::int64_t x = 0; x < g.W; ++x) {
                double s = 0;
                int c = 0;
                for (std::int64_t dy = -1; dy <= 1; ++dy)
                    for (std::int64_t dx = -1; dx <= 1; ++dx) {
                        const std::int64_t yy = y + dy, xx = x + dx;
                        if (yy < 0 || xx < 0 || yy >= g.H || xx >= g.W) continue;
                        s += p[t * HW + yy * g.W + xx];
                        ++c;
                    }
                out[t * HW + y * g.W + x] = s / c;
                before += p[t * HW + y * g.W + x];
                after += s / c;
            }
        if (after > 0)
            for (std::int64_t j = 0; j < HW; ++j) out[t * HW + j] *= before / after;
    }
    return out;
}

// ---- colormap and font -------------------------------------------------------------------------------

TEST(HeatmapColormap, LuminanceRisesAndEndsDiffer) {
    using vmonarch::viz::colormap;
    double prev = -1;
    for (int i = 0; i <= 100; ++i) {
        const double l = luminance(colormap(i / 100.0));
        EXPECT_GE(l, prev - 0.5) << i;
        prev = l;
    }
    EXPECT_LT(luminance(colormap(0)), 10);
    EXPECT_GT(luminance(colormap(1)), 230);
    EXPECT_EQ(colormap(-1), colormap(0));
    EXPECT_EQ(colormap(2), colormap(1));
    EXPECT_EQ(colormap(std::nan("")), colormap(0));
}

TEST(HeatmapFont, AllAlphanumericGlyphsExistAndAreDistinct) {
    using namespace vmonarch::viz;
    std::set<std::string> seen;
    std::string chars;
    for (char c = '0'; c <= '9'; ++c) chars += c;
    for (char c = 'A'; c <= 'Z'; ++c) chars += c;
    for (char c = 'a'; c <= 'z'; ++c) chars += c;
    chars += ".,:-+()[]/=%|_";
    for (char c : chars) {
        ASSERT_TRUE(has_glyph(c)) << c;
        const Glyph& g = glyph(c);
        const std::string bits(reinterpret_cast<const char*>(g.rows), kGlyphRows);
        int ink = 0;
        for (unsigned char r : bits) {
            EXPECT_EQ(r >> kGlyphCols, 0) << c; // nothing outside the 5 columns
            ink += __builtin_popcount(r);
        }
        EXPECT_GT(ink, 0) << c;
        EXPECT_TRUE(seen.insert(bits).second) << "glyph '" << c << "' duplicates another";
    }
    EXPECT_FALSE(has_glyph('\t'));
    EXPECT_EQ(&glyph('\t'), &glyph('?'));
}

// ---- the picture -------------------------------------------------------------------------------------

TEST(Heatmap, WritesAPictureWhoseCellsShowTheProbabilities) {
    const VideoGrid g{4, 8, 8};
    const std::int64_t N = g.tokens();
    // Dense: one hot key (t2, y5, x6), one medium key at max/100 (t1, y1, x1), the rest at max/1e6.
    std::vector<double> dense(static_cast<std::size_t>(N), 1e-6);
    const std::int64_t hot = 2 * 64 + 5 * 8 + 6, medium = 1 * 64 + 1 * 8 + 1, cold = 3 * 64 + 7 * 8 + 0;
    dense[hot] = 1.0;
    dense[medium] = 1e-2;
    std::vector<double> monarch(dense);
    monarch[hot] = 1e-3; // the Monarch row misses the hot key
    AttentionRowPair row{hot - 8, "head 0 (test)", dense, monarch};
    const std::vector<AttentionRowPair> rows{row, row};
    const std::string path = temp_png("cells");
    vmonarch::write_attention_heatmap_png(path, g, rows);

    const Image img = read_png(path);
    const auto L = layout_for(g, rows);
    ASSERT_EQ(img.width, L.width);
    ASSERT_EQ(img.height, L.height);
    EXPECT_LE(img.width, 2600);
    EXPECT_EQ(L.lines, 1);
    const int half = L.cell / 2;
    auto cell_colour = [&](int band, int strip, std::int64_t n) {
        const int t = static_cast<int>(n / 64), y = static_cast<int>((n % 64) / 8), x = static_cast<int>(n % 8);
        return img.at(L.cell_x(t, x) + half, L.cell_y(band, strip, t, y) + half);
    };
    using vmonarch::viz::colormap;
    for (int band = 0; band < 2; ++band) {
        EXPECT_EQ(cell_colour(band, 0, hot), colormap(1.0));
        EXPECT_EQ(cell_colour(band, 0, cold), colormap(0.0));
        EXPECT_LE(colour_distance(cell_colour(band, 0, medium), colormap(0.5)), 3);
        EXPECT_LE(colour_distance(cell_colour(band, 1, hot), colormap(0.25)), 3); // 1e-3 = max·1e-3
        EXPECT_GT(colour_distance(cell_colour(band, 0, hot), cell_colour(band, 1, hot)), 100);
        EXPECT_GT(luminance(cell_colour(band, 0, hot)), luminance(cell_colour(band, 0, medium)) + 50);
        EXPECT_GT(luminance(cell_colour(band, 0, medium)), luminance(cell_colour(band, 0, cold)) + 50);
        // The query cell (t2, y4, x6) is outlined just outside, in both strips.
        for (int strip = 0; strip < 2; ++strip) {
            const int qx = L.cell_x(2, 6), qy = L.cell_y(band, strip, 2, 4);
            const Rgb mark{0, 224, 255};
            EXPECT_EQ(img.at(qx - 1, qy + half), mark);
            EXPECT_EQ(img.at(qx + L.cell, qy + half), mark);
            EXPECT_EQ(img.at(qx + half, qy - 1), mark);
            EXPECT_NE(img.at(qx + half, qy + half), mark); // the cell itself keeps its colour
        }
    }
    // Some text was drawn (dark pixels in the label line), and the gaps are background.
    int dark = 0;
    for (int x = 0; x < img.width; ++x)
        for (int y = L.band_y(0); y < L.band_y(0) + L.label_h; ++y) dark += luminance(img.at(x, y)) < 60;
    EXPECT_GT(dark, 50);
    EXPECT_EQ(img.at(L.panel_x(1) - 1, L.panel_y(0, 0, 1) + 3), (Rgb{255, 255, 255}));
    std::filesystem::remove(path);
}

TEST(Heatmap, Wan13BGridWrapsIntoLinesOfSensibleWidth) {
    const VideoGrid g{16, 28, 52};
    const std::int64_t N = g.tokens();
    std::vector<double> dense(static_cast<std::size_t>(N));
    for (std::int64_t n = 0; n < N; ++n) dense[n] = std::exp(-0.001 * static_cast<double>(n % 997));
    AttentionRowPair row{12345, "big", dense, blur_within_frames(g, dense)};
    const std::string path = temp_png("wan");
    vmonarch::write_attention_heatmap_png(path, g, {row});
    const Image img = read_png(path);
    const auto L = layout_for(g, {row});
    EXPECT_EQ(img.width, L.width);
    EXPECT_EQ(img.height, L.height);
    EXPECT_LE(img.width, 2400);
    EXPECT_GE(L.lines, 2);
    EXPECT_GE(L.cell, 2);
    EXPECT_LE(L.panels_per_line * L.lines - 16, L.panels_per_line - 1); // balanced lines, every frame placed
    std::filesystem::remove(path);
}

TEST(Heatmap, DegenerateGridsAndZeroRows) {
    for (VideoGrid g : {VideoGrid{1, 1, 1}, VideoGrid{1, 40, 1}, VideoGrid{3, 1, 200}, VideoGrid{64, 2, 2}}) {
        const std::int64_t N = g.tokens();
        AttentionRowPair row{N - 1, "", std::vector<double>(static_cast<std::size_t>(N), 0.0),
                             std::vector<double>(static_cast<std::size_t>(N), 0.0)};
        const std::string path = temp_png("degenerate");
        EXPECT_NO_THROW(vmonarch::write_attention_heatmap_png(path, g, {row}));
        const Image img = read_png(path);
        EXPECT_GT(img.width, 0);
        EXPECT_LE(img.width, 2600);
        std::filesystem::remove(path);
    }
}

TEST(Heatmap, BadInputsThrowNamingTheArgument) {
    const VideoGrid g{2, 3, 4};
    const std::size_t N = 24;
    const AttentionRowPair good{5, "ok", std::vector<double>(N, 1.0 / N), std::vector<double>(N, 1.0 / N)};
    const std::string path = temp_png("bad");
    auto expect_arg = [&](const std::string& p, const VideoGrid& grid, const std::vector<AttentionRowPair>& rows,
                          const std::string& name) {
        try {
            vmonarch::write_attention_heatmap_png(p, grid, rows);
            ADD_FAILURE() << "no exception, expected one for " << name;
        } catch (const vmonarch::ArgumentError& e) {
            EXPECT_EQ(e.argument(), name) << e.what();
        }
    };
    expect_arg(path, g, {}, "rows");
    expect_arg(path, VideoGrid{0, 3, 4}, {good}, "grid");
    expect_arg(path, VideoGrid{2, -3, 4}, {good}, "grid");
    expect_arg(path, VideoGrid{2, 3, 5}, {good}, "rows"); // 30 tokens, rows have 24
    auto bad = good;
    bad.dense.pop_back();
    expect_arg(path, g, {good, bad}, "rows");
    bad = good;
    bad.monarch.push_back(0.0);
    expect_arg(path, g, {bad}, "rows");
    bad = good;
    bad.query_token = -1;
    expect_arg(path, g, {bad}, "rows");
    bad.query_token = static_cast<std::int64_t>(N);
    expect_arg(path, g, {bad}, "rows");
    bad = good;
    bad.dense[3] = std::nan("");
    expect_arg(path, g, {bad}, "rows");
    bad = good;
    bad.monarch[3] = -0.5;
    expect_arg(path, g, {bad}, "rows");
    expect_arg("", g, {good}, "path");
    EXPECT_FALSE(std::filesystem::exists(path)); // nothing was written for bad input
    // Unwritable destination: a runtime error (not an ArgumentError), naming the path.
    const std::string nowhere = "/nonexistent_vmonarch_dir/x.png";
    try {
        vmonarch::write_attention_heatmap_png(nowhere, g, {good});
        ADD_FAILURE() << "no exception for an unwritable path";
    } catch (const vmonarch::ArgumentError& e) {
        ADD_FAILURE() << "ArgumentError for an unwritable path: " << e.what();
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(nowhere), std::string::npos) << e.what();
    }
}

// The example picture: real generated q/k (4×8×8, one head of each kind), dense rows by softmax and a
// toy Monarch-like row (the dense row blurred within frames). Written to $VMONARCH_HEATMAP_EXAMPLE if
// set (to look at it), else to a temporary file.
TEST(Heatmap, ExamplePictureFromGeneratedData) {
    vmonarch::VideoDataOptions o;
    o.grid = {4, 8, 8};
    o.heads = 4;
    o.head_dim = 64;
    o.seed = 1;
    const auto in = vmonarch::make_video_attention_inputs(o);
    const VideoGrid g = o.grid;
    const std::int64_t N = in.tokens, d = in.head_dim;
    std::vector<AttentionRowPair> rows;
    for (std::int64_t h = 0; h < in.heads; ++h) {
        const std::int64_t n = 2 * g.frame_tokens() + 3 * g.W + 4; // frame 2, y 3, x 4
        std::vector<double> p(static_cast<std::size_t>(N));
        double mx = -1e300, sum = 0;
        for (std::int64_t m = 0; m < N; ++m) {
            double s = 0;
            for (std::int64_t r = 0; r < d; ++r)
                s += static_cast<double>(in.q[(h * N + n) * d + r]) * in.k[(h * N + m) * d + r];
            p[m] = s / std::sqrt(static_cast<double>(d));
            mx = std::max(mx, p[m]);
        }
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (auto& x : p) x /= sum;
        rows.push_back({n, "head " + std::to_string(h) + " (" + vmonarch::to_string(in.head_kinds[h]) + ")", p,
                        blur_within_frames(g, p)});
    }
    const char* env = std::getenv("VMONARCH_HEATMAP_EXAMPLE");
    const std::string path = env != nullptr && *env != '\0' ? std::string(env) : temp_png("example");
    vmonarch::write_attention_heatmap_png(path, g, rows);
    const Image img = read_png(path);
    const auto L = layout_for(g, rows);
    EXPECT_EQ(img.width, L.width);
    EXPECT_EQ(img.height, L.height);
    if (env == nullptr || *env == '\0') std::filesystem::remove(path);
}

} // namespace
