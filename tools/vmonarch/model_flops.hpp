// Per-forward FLOPs of a whole video DiT with dense or VMonarch self-attention, for `vmonarch flops`.
//
// Counting rules (one multiply-add = 2 FLOPs; norms, modulation, embeddings, patchify and the output
// head are left out):
//   cross-text models (Wan):  linear per layer = N·D·(12·D + 4·ffn + 4·text_len)
//        self-attention Q,K,V,O (8·D²), cross-attention Q,O (4·D²), FFN (4·D·ffn), cross-attention
//        core over the text tokens (4·text_len·D); the text's K,V projections do not scale with N.
//        Self-attention runs over the N video tokens only.
//   joint-text models (HunyuanVideo, CogVideoX): the text tokens join the sequence, N' = N + text_len;
//        linear per layer = N'·D·(8·D + 4·ffn); dense attention 4·N'²·d per head; VMonarch replaces the
//        video-to-video block only: Monarch FLOPs over the video grid + 4·N·text_len·d (video queries to
//        text keys, merged through the log-sum-exp) + 4·text_len·N'·d (text queries, dense).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch::cli {

enum class TextMode { cross, joint };

struct ModelSpec {
    std::string name;
    std::string summary;           // one line for --help
    std::int64_t dim = 0, ffn = 0, layers = 0, heads = 0, head_dim = 0;
    std::int64_t text_len = 0;
    TextMode text_mode = TextMode::cross;
    std::int64_t temporal_compression = 4; // latent frames T = (F − 1)/c + 1
    std::int64_t spatial_stride = 16;      // VAE downsampling × patch size: H = px / stride
    std::int64_t default_frames = 81, default_height = 480, default_width = 832;
};

const std::vector<ModelSpec>& model_presets();
// nullptr for an unknown name (case-insensitive).
const ModelSpec* find_model_preset(const std::string& name);
std::string model_preset_names(); // "wan2.1-1.3b, wan2.1-14b, ..."

// Latent grid from a video size by the model's rule; ArgumentError naming the flag that does not fit.
VideoGrid latent_grid_from_video(const ModelSpec& model, std::int64_t frames, std::int64_t height,
                                 std::int64_t width);

struct ModelFlops {
    VideoGrid grid;
    std::int64_t video_tokens = 0, sequence_tokens = 0; // sequence includes joint text tokens
    double linear = 0;                                  // all layers, FLOPs
    double attention_dense = 0, attention_vmonarch = 0; // all layers and heads
    double total_dense = 0, total_vmonarch = 0;
    double sparsity = 0;                                // 1 − t·(T + HW)/(T·HW)
};

ModelFlops model_flops(const ModelSpec& model, const VideoGrid& grid, const Options& options,
                       std::int64_t batch = 1);

} // namespace vmonarch::cli
