// Seeded generator of realistic video-DiT attention inputs (tests, demo, benchmarks).
//
// A moving textured scene (low-pass noise background under a camera pan, a few objects with their own
// motion, a little per-frame noise) is projected per head to q, k, v; a 3-D rotary embedding with Wan's
// split of the head dim (time d − 4·(d/6) dims, height and width 2·(d/6) each, θ = 10000) is applied to
// q and k; each head has a kind that shapes its attention pattern; logits are scaled to a realistic
// sharpness. Uniform random data alone hides the structure VMonarch relies on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch {

enum class HeadKind {
    positional, // local attention: attends to nearby positions in nearby frames
    semantic,   // matches content across frames (follows moving objects)
    sink,       // first-frame sink: frame-0 keys pulled toward the mean query
    mixed,      // a blend of the above
};
std::string to_string(HeadKind kind);

struct VideoDataOptions {
    VideoGrid grid{4, 8, 8};
    std::int64_t batch = 1;
    std::int64_t heads = 4;
    std::int64_t head_dim = 64;
    std::int64_t value_dim = 0;  // 0: same as head_dim
    std::uint64_t seed = 0;
    double sharpness = 1.0;      // multiplies the default logit scale; 1 gives DiT-like attention
};

// q, k: [batch, heads, N, head_dim]; v: [batch, heads, N, value_dim], float32, C order (BHSD).
struct VideoAttentionInputs {
    std::int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0, value_dim = 0;
    VideoGrid grid;
    std::vector<float> q, k, v;
    std::vector<HeadKind> head_kinds; // one per head: heads cycle through the kinds
};

VideoAttentionInputs make_video_attention_inputs(const VideoDataOptions& options);

// Kind of head h in a model with `heads` heads (cycle: positional, semantic, sink, mixed).
HeadKind head_kind_of(std::int64_t head);

} // namespace vmonarch
