// vmonarch flops: per-forward TFLOPs of a video DiT with dense vs VMonarch self-attention (spec §4).
#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "model_flops.hpp"

namespace vmonarch::cli {

namespace {

struct FlopsOptions {
    std::string model = "wan2.1-1.3b";
    std::optional<std::int64_t> frames, height, width;
    std::int64_t batch = 1;
    int iterations = 2;
    bool no_recompute = false, json = false;
    std::int64_t sink_frames = 0;              // exact key groups (spec §3b)
    std::optional<std::int64_t> window_radius;
    // Custom dimensions (override the preset, or define --model custom).
    std::optional<std::int64_t> dim, ffn, layers, heads, head_dim, text_len;
    std::optional<std::int64_t> temporal_compression, spatial_stride;
    std::string text_mode, latent_grid;
};

ModelSpec model_from(const FlopsOptions& o) {
    ModelSpec m;
    const bool custom = o.model == "custom";
    if (custom) {
        m.name = "custom";
        m.text_len = 0;
        for (auto [value, flag] : {std::pair{o.dim, "--dim"}, std::pair{o.ffn, "--ffn"},
                                   std::pair{o.layers, "--layers"}, std::pair{o.heads, "--heads"}})
            if (!value)
                throw ArgumentError(flag, std::string("--model custom needs ") + flag +
                                              " (and --dim, --ffn, --layers, --heads in general)");
    } else if (const ModelSpec* preset = find_model_preset(o.model)) {
        m = *preset;
    } else {
        throw ArgumentError("--model", "--model '" + o.model + "': unknown model; known: " + model_preset_names() +
                                           ", or custom with --dim --ffn --layers --heads");
    }
    if (o.dim) m.dim = *o.dim;
    if (o.ffn) m.ffn = *o.ffn;
    if (o.layers) m.layers = *o.layers;
    if (o.heads) m.heads = *o.heads;
    if (o.head_dim) {
        m.head_dim = *o.head_dim;
    } else if (custom || o.dim || o.heads) {
        // d = D / heads, which must be a whole number (or give --head-dim).
        require_positive(m.dim, "--dim");
        require_positive(m.heads, "--heads");
        if (m.dim % m.heads != 0)
            throw ArgumentError("--dim", "--dim " + std::to_string(m.dim) + " is not divisible by --heads " +
                                             std::to_string(m.heads) + " (head dim D/heads = " +
                                             format_fixed(double(m.dim) / double(m.heads), 2) +
                                             "); change one of them or give --head-dim");
        m.head_dim = m.dim / m.heads;
    }
    if (o.text_len) m.text_len = *o.text_len;
    if (o.temporal_compression) m.temporal_compression = *o.temporal_compression;
    if (o.spatial_stride) m.spatial_stride = *o.spatial_stride;
    if (!o.text_mode.empty()) {
        if (o.text_mode == "cross") m.text_mode = TextMode::cross;
        else if (o.text_mode == "joint") m.text_mode = TextMode::joint;
        else throw ArgumentError("--text-mode", "--text-mode '" + o.text_mode + "': expected cross or joint");
    }
    require_positive(m.dim, "--dim");
    require_positive(m.ffn, "--ffn");
    require_positive(m.layers, "--layers");
    require_positive(m.heads, "--heads");
    require_positive(m.head_dim, "--head-dim");
    require_positive(m.temporal_compression, "--temporal-compression");
    require_positive(m.spatial_stride, "--spatial-stride");
    if (m.text_len < 0) throw ArgumentError("--text-len", "--text-len must be >= 0");
    return m;
}

std::string describe(const ModelSpec& m) {
    return m.name + ": dim " + std::to_string(m.dim) + ", ffn " + std::to_string(m.ffn) + ", " +
           std::to_string(m.layers) + " layers, " + std::to_string(m.heads) + " heads x " + std::to_string(m.head_dim) +
           ", " + std::to_string(m.text_len) + " text tokens " +
           (m.text_mode == TextMode::cross ? "(cross-attention)" : "(joined to the sequence)");
}


std::string padded(const std::string& text, std::size_t width) {
    return text.size() >= width ? text : std::string(width - text.size(), ' ') + text;
}

int flops_command(const FlopsOptions& o, bool grid_from_flag) {
    const ModelSpec model = model_from(o);
    if (o.iterations < 1 || o.iterations > 8)
        throw ArgumentError("--iterations", "--iterations " + std::to_string(o.iterations) + ": must be 1..8");
    require_positive(o.batch, "--batch");

    VideoGrid grid;
    std::int64_t frames = 0, height = 0, width = 0;
    if (grid_from_flag) {
        grid = parse_grid(o.latent_grid, "--latent-grid");
    } else {
        frames = o.frames.value_or(model.default_frames);
        height = o.height.value_or(model.default_height);
        width = o.width.value_or(model.default_width);
        grid = latent_grid_from_video(model, frames, height, width);
    }
    Options options;
    options.iterations = o.iterations;
    options.recompute_first_frame = !o.no_recompute;
    if (o.sink_frames < 0) throw ArgumentError("--sink-frames", "--sink-frames " + std::to_string(o.sink_frames) + ": must be >= 0");
    if (o.window_radius && *o.window_radius < 0)
        throw ArgumentError("--window-radius", "--window-radius " + std::to_string(*o.window_radius) + ": must be >= 0");
    options.sink_frames = o.sink_frames;
    options.window_radius = o.window_radius;
    const ModelFlops f = model_flops(model, grid, options, o.batch);

    if (o.json) {
        nlohmann::json j;
        j["model"] = model.name;
        j["grid"] = {grid.T, grid.H, grid.W};
        if (!grid_from_flag) j["video"] = {{"frames", frames}, {"height", height}, {"width", width}};
        j["video_tokens"] = f.video_tokens;
        j["sequence_tokens"] = f.sequence_tokens;
        j["text_tokens"] = model.text_len;
        j["text_mode"] = model.text_mode == TextMode::cross ? "cross" : "joint";
        j["batch"] = o.batch;
        j["iterations"] = options.iterations;
        j["recompute_first_frame"] = options.recompute_first_frame;
        j["sink_frames"] = options.sink_frames;
        j["window_radius"] = options.window_radius ? nlohmann::json(*options.window_radius) : nlohmann::json(nullptr);
        j["dense_tflops"] = f.total_dense / 1e12;
        j["vmonarch_tflops"] = f.total_vmonarch / 1e12;
        j["attention_dense_tflops"] = f.attention_dense / 1e12;
        j["attention_vmonarch_tflops"] = f.attention_vmonarch / 1e12;
        j["linear_tflops"] = f.linear / 1e12;
        j["sparsity"] = f.sparsity;
        std::cout << j.dump(2) << "\n";
        return 0;
    }

    std::cout << "model     " << describe(model) << "\n";
    std::cout << "video     ";
    if (!grid_from_flag) std::cout << frames << " frames " << height << "x" << width << " -> ";
    std::cout << "latent grid " << format_grid(grid) << ", N = " << format_thousands(f.video_tokens) << " video tokens";
    if (model.text_mode == TextMode::joint)
        std::cout << " + " << model.text_len << " text = " << format_thousands(f.sequence_tokens);
    if (o.batch > 1) std::cout << ", batch " << o.batch;
    std::cout << "\nVMonarch  t = " << options.iterations << ", frame-0 recompute "
              << (options.recompute_first_frame ? "on" : "off (as in the paper's Table 1)")
              << (options.sink_frames > 0 ? ", sink frames " + std::to_string(options.sink_frames) : "")
              << (options.window_radius ? ", window radius " + std::to_string(*options.window_radius) : "") << ", sparsity "
              << format_fixed(100 * f.sparsity, 2) << "% (1 - t(T+HW)/(T*HW))\n\n";
    // TFLOPs as in the paper's Table 1; GFLOPs or MFLOPs for small custom models. The number columns are
    // as wide as their widest value, with at least two spaces between them.
    const double unit = f.total_dense >= 1e11 ? 1e12 : (f.total_dense >= 1e8 ? 1e9 : 1e6);
    const std::string unit_name = unit == 1e12 ? "TFLOPs" : (unit == 1e9 ? "GFLOPs" : "MFLOPs");
    const std::vector<std::pair<std::string, std::pair<double, double>>> rows = {
        {"attention", {f.attention_dense, f.attention_vmonarch}},
        {"linear", {f.linear, f.linear}},
        {"total", {f.total_dense, f.total_vmonarch}}};
    std::size_t column = 10;
    for (const auto& [what, values] : rows)
        column = std::max({column, format_fixed(values.first / unit, 2).size(), format_fixed(values.second / unit, 2).size()});
    column += 2;
    std::cout << "per forward     " << padded("dense", column) << padded("VMonarch", column) << "\n";
    const auto line = [&](const std::string& what, double dense, double vm) {
        const std::string label = what + " " + unit_name;
        std::string text = label + std::string(label.size() < 16 ? 16 - label.size() : 0, ' ') +
                           padded(format_fixed(dense / unit, 2), column) + padded(format_fixed(vm / unit, 2), column);
        if (vm > 0 && dense > vm) text += "   (" + format_fixed(dense / vm, 2) + "x fewer)";
        if (vm > dense && dense > 0) text += "   (" + format_fixed(vm / dense, 2) + "x more)";
        std::cout << text << "\n";
    };
    line("attention", f.attention_dense, f.attention_vmonarch);
    line("linear", f.linear, f.linear);
    line("total", f.total_dense, f.total_vmonarch);
    return 0;
}

std::string presets_help() {
    std::string text = "Presets (latent grid from --frames/--height/--width; defaults are each model's usual video):\n";
    for (const ModelSpec& m : model_presets())
        text += "  " + m.name + " (default " + std::to_string(m.default_frames) + " frames " +
                std::to_string(m.default_height) + "x" + std::to_string(m.default_width) + "):\n      " + m.summary + "\n";
    text += "Counting (multiply-add = 2 FLOPs; norms, modulation, embeddings and the output head left out):\n"
            "  cross-attention text (Wan): linear per layer N*D*(12D + 4ffn + 4text_len): self-attn QKVO, cross-attn\n"
            "    Q/O, FFN, cross-attn core over the text; self-attention over the N video tokens only.\n"
            "  joint text (HunyuanVideo, CogVideoX): N' = N + text_len tokens, linear N'*D*(8D + 4ffn); dense\n"
            "    attention 4N'^2 d per head; VMonarch: Monarch over the video grid + dense video->text and\n"
            "    text->all parts.\n"
            "  attention per head (spec section 4): dense 4N^2 d; VMonarch R-steps (4t+2)N*HW*d, L-steps 4tNTd,\n"
            "    frame-0 recompute 4*HW*N*d (on by default, as the library runs; --no-recompute for Table 1).\n"
            "Example: vmonarch flops --model wan2.1-1.3b --frames 61 --height 448 --width 832 --no-recompute\n";
    return text;
}

} // namespace

Command add_flops_command(CLI::App& app) {
    auto o = std::make_shared<FlopsOptions>();
    CLI::App* cmd = app.add_subcommand(
        "flops", "Per-forward TFLOPs of a whole video DiT with dense and with VMonarch self-attention.");
    cmd->footer(presets_help());
    cmd->add_option("--model,-m", o->model, "preset (" + model_preset_names() + ") or custom")->capture_default_str();
    auto* frames = cmd->add_option("--frames", o->frames, "video frames F (latent T = (F-1)/4 + 1)");
    auto* height = cmd->add_option("--height", o->height, "video height in pixels");
    auto* width = cmd->add_option("--width", o->width, "video width in pixels");
    auto* grid = cmd->add_option("--latent-grid", o->latent_grid, "latent grid T,H,W instead of a video size");
    grid->excludes(frames)->excludes(height)->excludes(width);
    cmd->add_option("--iterations,-t", o->iterations, "Monarch iterations t")->capture_default_str();
    cmd->add_flag("--no-recompute", o->no_recompute, "leave out the frame-0 recompute (the paper's Table 1 count)");
    cmd->add_option("--sink-frames", o->sink_frames, "key frames 0..S-1 attended exactly by every query (spec 3b)")
        ->capture_default_str();
    cmd->add_option("--window-radius", o->window_radius, "key frames within r of the query frame attended exactly");
    cmd->add_option("--batch", o->batch, "batch size (CFG doubles it)")->capture_default_str();
    cmd->add_flag("--json", o->json,
                  "print JSON: dense_tflops, vmonarch_tflops, attention_dense_tflops, attention_vmonarch_tflops, "
                  "sparsity, grid (+ details)");
    const std::string custom = "Custom model (or override a preset)";
    cmd->add_option("--dim", o->dim, "model width D")->group(custom);
    cmd->add_option("--ffn", o->ffn, "FFN hidden width")->group(custom);
    cmd->add_option("--layers", o->layers, "transformer blocks")->group(custom);
    cmd->add_option("--heads", o->heads, "attention heads")->group(custom);
    cmd->add_option("--head-dim", o->head_dim, "head dim d (default D / heads)")->group(custom);
    cmd->add_option("--text-len", o->text_len, "text tokens (default 0 for custom)")->group(custom);
    cmd->add_option("--text-mode", o->text_mode, "cross (Wan) or joint (text joins the sequence)")->group(custom);
    cmd->add_option("--temporal-compression", o->temporal_compression, "VAE time compression (default 4)")
        ->group(custom);
    cmd->add_option("--spatial-stride", o->spatial_stride, "pixels per latent token side (default 16)")->group(custom);
    return Command{cmd, [o, grid] { return flops_command(*o, grid->count() > 0); }};
}

} // namespace vmonarch::cli
