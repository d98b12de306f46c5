// Internal pieces of the video data generator (src/data), exposed to the unit tests.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch::data {

// ---- 3-D rotary embedding (Wan's split) -----------------------------------------------------------

// Head-dim split of Wan's 3-D RoPE: time gets d − 4·(d/6) dims, height and width 2·(d/6) each, laid out
// [time | height | width]; within each axis consecutive pairs (x[2p], x[2p+1]) rotate as complex
// numbers by angle position·θ^(−2i/D_axis), i the pair's index within the axis of D_axis dims.
struct RotarySplit {
    std::int64_t time = 0, height = 0, width = 0; // dims (even)
};
RotarySplit wan_rotary_split(std::int64_t head_dim);

class Rotary {
public:
    Rotary(std::int64_t head_dim, const VideoGrid& grid, double theta = 10000.0);

    std::int64_t head_dim() const { return head_dim_; }
    std::int64_t pairs() const { return head_dim_ / 2; }
    int axis_of_pair(std::int64_t pair) const { return axis_[static_cast<std::size_t>(pair)]; } // 0 t, 1 y, 2 x
    double frequency_of_pair(std::int64_t pair) const { return freq_[static_cast<std::size_t>(pair)]; }

    // Rotates x[0..head_dim) in place for the token at frame t, row y, column x.
    void apply(float* v, std::int64_t t, std::int64_t y, std::int64_t x) const;
    void apply(double* v, std::int64_t t, std::int64_t y, std::int64_t x) const;

private:
    std::int64_t head_dim_;
    VideoGrid grid_;
    std::vector<int> axis_;        // per pair
    std::vector<double> freq_;     // per pair
    std::vector<std::int64_t> local_; // per pair: index within its axis
    std::array<std::int64_t, 3> axis_pairs_{};
    // cos/sin per axis: table[axis][pos * axis_pairs + i]
    std::array<std::vector<double>, 3> cos_, sin_;
};

// ---- the scene --------------------------------------------------------------------------------------

struct Scene {
    VideoGrid grid;
    int channels = 0;
    std::vector<float> features;                  // [N, channels], token-major
    double pan_y = 0, pan_x = 0;                   // camera pan, tokens per frame
    // Objects (blobs): centre per frame (y, x) and radius, for tests.
    std::vector<std::vector<std::array<double, 2>>> object_centres;
    std::vector<double> object_radius;
};

// A moving textured scene: low-pass background under a camera pan, a few moving blobs with their own
// feature vectors, a little per-frame noise. Deterministic in `key`.
Scene render_scene(const VideoGrid& grid, int channels, std::uint64_t key);

} // namespace vmonarch::data

namespace vmonarch {
struct VideoDataOptions;
}

namespace vmonarch::data {

// The scene that make_video_attention_inputs(options) renders for batch element `batch`.
Scene video_scene(const VideoDataOptions& options, std::int64_t batch);

} // namespace vmonarch::data
