#include "model_flops.hpp"

#include <algorithm>
#include <cctype>

#include "cli_common.hpp"

namespace vmonarch::cli {

// One row per model: name, --help line, dim, ffn, layers, heads, head dim, text tokens and how they attend,
// VAE temporal compression, spatial stride (VAE × patch), default video frames × height × width.
const std::vector<ModelSpec>& model_presets() {
    static const std::vector<ModelSpec> presets{
        {"wan2.1-1.3b",
         "Wan2.1 T2V 1.3B: dim 1536, ffn 8960, 30 layers, 12x128 heads, 512 text tokens in cross-attention; "
         "T = (F-1)/4+1, H = px/16, W = px/16",
         1536, 8960, 30, 12, 128, 512, TextMode::cross, 4, 16, 81, 480, 832},
        {"wan2.1-14b",
         "Wan2.1 T2V 14B: dim 5120, ffn 13824, 40 layers, 40x128 heads, 512 text tokens in cross-attention; "
         "T = (F-1)/4+1, H = px/16, W = px/16",
         5120, 13824, 40, 40, 128, 512, TextMode::cross, 4, 16, 81, 720, 1280},
        {"wan2.2-5b",
         "Wan2.2 TI2V 5B: dim 3072, ffn 14336, 30 layers, 24x128 heads, 512 text tokens in cross-attention; "
         "VAE 4x16x16 and patch 2: T = (F-1)/4+1, H = px/32, W = px/32",
         3072, 14336, 30, 24, 128, 512, TextMode::cross, 4, 32, 121, 704, 1280},
        {"hunyuanvideo",
         "HunyuanVideo 13B: dim 3072, ffn 12288, 60 layers (20 dual- + 40 single-stream), 24x128 heads, 256 text "
         "tokens joined to the sequence; T = (F-1)/4+1, H = px/16, W = px/16",
         3072, 12288, 60, 24, 128, 256, TextMode::joint, 4, 16, 129, 720, 1280},
        {"cogvideox-5b",
         "CogVideoX 5B: dim 3072, ffn 12288, 42 layers, 48x64 heads, 226 text tokens joined to the sequence; "
         "T = (F-1)/4+1, H = px/16, W = px/16",
         3072, 12288, 42, 48, 64, 226, TextMode::joint, 4, 16, 49, 480, 720},
    };
    return presets;
}

const ModelSpec* find_model_preset(const std::string& name) {
    std::string key = name;
    std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    for (const ModelSpec& m : model_presets())
        if (m.name == key) return &m;
    return nullptr;
}

std::string model_preset_names() {
    std::string names;
    for (const ModelSpec& m : model_presets()) names += (names.empty() ? "" : ", ") + m.name;
    return names;
}

namespace {

// "k·step + offset or (k+1)·step + offset" around value (k·step <= value), leaving out what overflows.
std::string nearest_multiples(std::int64_t value, std::int64_t step, std::int64_t offset = 0) {
    const std::int64_t below = value / step * step + offset;
    std::int64_t above = 0;
    if (__builtin_add_overflow(below, step, &above)) return std::to_string(below);
    if (below - offset < step && offset == 0) return std::to_string(above);
    return std::to_string(below) + " or " + std::to_string(above);
}

} // namespace

VideoGrid latent_grid_from_video(const ModelSpec& model, std::int64_t frames, std::int64_t height,
                                 std::int64_t width) {
    const std::int64_t c = model.temporal_compression, s = model.spatial_stride;
    require_positive(frames, "--frames");
    require_positive(height, "--height");
    require_positive(width, "--width");
    if ((frames - 1) % c != 0) {
        const std::int64_t below = (frames - 1) / c * c + 1;
        throw ArgumentError("--frames", "--frames " + std::to_string(frames) + ": " + model.name +
                                            "'s VAE compresses time by " + std::to_string(c) +
                                            ", so the frame count must be " + std::to_string(c) +
                                            "k+1 (e.g. " + nearest_multiples(below - 1, c, 1) + ")");
    }
    const auto check_spatial = [&](std::int64_t px, const std::string& flag) {
        if (px % s != 0)
            throw ArgumentError(flag, flag + " " + std::to_string(px) + ": " + model.name + " needs a multiple of " +
                                          std::to_string(s) + " pixels (VAE downsampling x patch size); nearest " +
                                          nearest_multiples(px, s));
    };
    check_spatial(height, "--height");
    check_spatial(width, "--width");
    const VideoGrid grid{(frames - 1) / c + 1, height / s, width / s};
    try {
        (void)grid.tokens();
    } catch (const ArgumentError&) {
        throw ArgumentError("--frames", "--frames " + std::to_string(frames) + " --height " + std::to_string(height) +
                                            " --width " + std::to_string(width) + ": the latent grid " +
                                            format_grid(grid) + " has more tokens than int64 holds (T*H*W overflows)");
    }
    return grid;
}

ModelFlops model_flops(const ModelSpec& model, const VideoGrid& grid, const Options& options, std::int64_t batch) {
    ModelFlops r;
    r.grid = grid;
    const double B = double(batch), D = double(model.dim), F = double(model.ffn), L = double(model.layers);
    const double text = double(model.text_len), d = double(model.head_dim), heads = double(model.heads);
    const double n_video = double(grid.tokens());
    r.video_tokens = grid.tokens();

    const FlopCount video = flops(grid, model.head_dim, model.heads, batch, options);
    if (model.text_mode == TextMode::cross) {
        r.sequence_tokens = r.video_tokens;
        r.linear = L * B * n_video * D * (12 * D + 4 * F + 4 * text);
        r.attention_dense = L * video.dense;
        r.attention_vmonarch = L * video.vmonarch;
    } else {
        const double n_all = n_video + text;
        if (__builtin_add_overflow(r.video_tokens, model.text_len, &r.sequence_tokens))
            throw ArgumentError("--text-len", "--text-len " + std::to_string(model.text_len) + ": N + text_len = " +
                                                  std::to_string(r.video_tokens) + " + " +
                                                  std::to_string(model.text_len) + " overflows int64");
        r.linear = L * B * n_all * D * (8 * D + 4 * F);
        r.attention_dense = L * B * heads * 4 * n_all * n_all * d;
        // joint_flops: the text keys join every video query's exact group, text queries are exact (spec §4).
        r.attention_vmonarch = L * joint_flops(grid, model.text_len, model.head_dim, model.heads, batch, options).vmonarch;
    }
    r.total_dense = r.linear + r.attention_dense;
    r.total_vmonarch = r.linear + r.attention_vmonarch;
    const double T = double(grid.T), HW = double(grid.frame_tokens());
    r.sparsity = 1.0 - double(options.iterations) * (T + HW) / (T * HW);
    return r;
}

} // namespace vmonarch::cli
