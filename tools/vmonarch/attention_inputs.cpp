#include "attention_inputs.hpp"

#include <cmath>
#include <cstdio>

namespace vmonarch::cli {

std::vector<std::int64_t> file_shape(Layout layout, std::int64_t batch, std::int64_t heads, std::int64_t tokens,
                                     std::int64_t dim) {
    if (layout == Layout::bhsd) return {batch, heads, tokens, dim};
    return {batch, tokens, heads, dim};
}

TensorView view_of(void* data, DType dtype, Device device, Layout layout, const AttentionShape& shape,
                   std::int64_t dim) {
    if (layout == Layout::bhsd)
        return TensorView::bhsd(data, dtype, device, shape.batch, shape.heads, shape.tokens, dim);
    return TensorView::bshd(data, dtype, device, shape.batch, shape.tokens, shape.heads, dim);
}

LseView lse_view_of(void* data, Device device, const AttentionShape& shape) {
    return LseView::contiguous(data, DType::f32, device, shape.batch, shape.heads, shape.tokens);
}

TensorInfo tensor_header_for(const std::string& spec, const std::string& option) {
    require_existing_file(spec, option);
    try {
        return read_tensor_info(spec);
    } catch (const FileFormatError& e) {
        throw FileFormatError(with_option(option, spec, e.what()));
    } catch (const ArgumentError& e) {
        throw ArgumentError(option, with_option(option, spec, e.what()));
    }
}

HostTensor tensor_data_for(const std::string& spec, const std::string& option) {
    try {
        return read_tensor(spec);
    } catch (const FileFormatError& e) {
        throw FileFormatError(with_option(option, spec, e.what()));
    } catch (const OutOfMemoryError& e) {
        throw OutOfMemoryError(with_option(option, spec, e.what()));
    }
}

namespace {

const char* layout_axes(Layout layout) {
    return layout == Layout::bhsd ? "[batch, heads, tokens, dim]" : "[batch, tokens, heads, dim]";
}

HostTensor data_of(const std::string& spec, const std::string& option, const TensorInfo& expected) {
    HostTensor t = tensor_data_for(spec, option);
    if (t.shape != expected.shape || t.dtype != expected.dtype)
        throw FileFormatError(option + " " + spec + ": the file changed while it was read (shape " +
                              format_shape(t.shape) + ", header said " + format_shape(expected.shape) + ")");
    return t;
}

// The largest finite value of each dtype.
double dtype_max(DType dtype) {
    switch (dtype) {
    case DType::f16: return 65504.0;
    case DType::bf16: return 3.3895313892515355e38;
    case DType::f32: return 3.4028234663852886e38;
    case DType::f64: return 1.7976931348623157e308;
    }
    return 0;
}

std::string scientific(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.6g", value);
    return buffer;
}

} // namespace

std::vector<InputFile> AttentionInputs::files() const {
    return {{"--q", q_path}, {"--k", k_path}, {"--v", v_path}};
}

HostTensor convert_checked(const HostTensor& tensor, DType dtype, const std::string& option, const std::string& source) {
    if (tensor.dtype == dtype) return tensor;
    const ValueStats before = tensor.value_stats();
    HostTensor converted = tensor.converted(dtype);
    const ValueStats after = converted.value_stats();
    if (after.non_finite > before.non_finite)
        throw ArgumentError(option, option + " " + to_string(dtype) + ": " + source + " holds values outside the " +
                                        to_string(dtype) + " range (largest |x| = " + scientific(before.max_abs) +
                                        ", " + to_string(dtype) + " holds up to " + scientific(dtype_max(dtype)) +
                                        "): " + std::to_string(after.non_finite - before.non_finite) +
                                        " of them would become inf; scale the data or choose a wider dtype");
    return converted;
}

AttentionInputs inspect_attention_inputs(const std::string& q_spec, const std::string& k_spec,
                                         const std::string& v_spec, const VideoGrid& grid, Layout layout,
                                         std::int64_t text_tokens) {
    // Existence first, so that a missing k is reported before q is looked at.
    require_existing_file(q_spec, "--q");
    require_existing_file(k_spec, "--k");
    require_existing_file(v_spec, "--v");

    AttentionInputs in;
    in.layout = layout;
    in.grid = grid;
    in.q_path = q_spec;
    in.k_path = k_spec;
    in.v_path = v_spec;
    const TensorInfo q = tensor_header_for(q_spec, "--q");
    const TensorInfo k = tensor_header_for(k_spec, "--k");
    const TensorInfo v = tensor_header_for(v_spec, "--v");

    const auto require_4d = [&](const TensorInfo& t, const std::string& option, const std::string& spec) {
        if (t.shape.size() != 4)
            throw ArgumentError(option, option + " " + spec + ": expected a 4-D tensor " + layout_axes(layout) +
                                            " (--layout " + to_string(layout) + "), got shape " +
                                            format_shape(t.shape));
        for (auto extent : t.shape)
            if (extent < 1)
                throw ArgumentError(option, option + " " + spec + ": empty tensor, shape " + format_shape(t.shape));
    };
    require_4d(q, "--q", q_spec);
    require_4d(k, "--k", k_spec);
    require_4d(v, "--v", v_spec);

    if (k.shape != q.shape)
        throw ArgumentError("--k", "--k " + k_spec + ": shape " + format_shape(k.shape) + " differs from --q " +
                                       q_spec + " shape " + format_shape(q.shape) +
                                       " (self-attention: q and k must have the same shape)");
    const bool v_matches = v.shape[0] == q.shape[0] && v.shape[1] == q.shape[1] && v.shape[2] == q.shape[2];
    if (!v_matches)
        throw ArgumentError("--v", "--v " + v_spec + ": shape " + format_shape(v.shape) + " must match --q " + q_spec +
                                       " shape " + format_shape(q.shape) + " in all but the last axis");
    if (k.dtype != q.dtype || v.dtype != q.dtype)
        throw ArgumentError("--k", "q, k, v must have one dtype: --q " + q_spec + " is " + to_string(q.dtype) +
                                       ", --k " + k_spec + " is " + to_string(k.dtype) + ", --v " + v_spec + " is " +
                                       to_string(v.dtype));
    in.dtype = q.dtype;

    AttentionShape& s = in.shape;
    s.batch = q.shape[0];
    s.heads = layout == Layout::bhsd ? q.shape[1] : q.shape[2];
    s.tokens = layout == Layout::bhsd ? q.shape[2] : q.shape[1];
    s.head_dim = q.shape[3];
    s.value_dim = v.shape[3];

    const std::int64_t tokens = grid.tokens() + text_tokens; // parse_grid has checked that the grid fits
    if (s.tokens != tokens) {
        std::string hint;
        const std::int64_t other = layout == Layout::bhsd ? q.shape[1] : q.shape[2];
        if (text_tokens > 0)
            hint = " + --text-tokens " + std::to_string(text_tokens) + " = " + std::to_string(tokens);
        else if (other == tokens)
            hint = "; the tensor looks like --layout " + to_string(layout == Layout::bhsd ? Layout::bshd : Layout::bhsd);
        throw ArgumentError("--grid", "--grid " + format_grid(grid) + " gives N = T*H*W = " + std::to_string(grid.tokens()) +
                                          " tokens but --q " + q_spec + " has " + std::to_string(s.tokens) +
                                          " tokens (shape " + format_shape(q.shape) + ", --layout " +
                                          to_string(layout) + " " + layout_axes(layout) + ")" + hint);
    }
    return in;
}

void read_attention_data(AttentionInputs& in, std::optional<DType> cast) {
    const std::vector<std::int64_t> qk_shape =
        file_shape(in.layout, in.shape.batch, in.shape.heads, in.shape.tokens, in.shape.head_dim);
    const std::vector<std::int64_t> v_shape =
        file_shape(in.layout, in.shape.batch, in.shape.heads, in.shape.tokens, in.shape.value_dim);
    const auto read = [&](const std::string& spec, const std::string& option, const std::vector<std::int64_t>& shape) {
        HostTensor t = data_of(spec, option, TensorInfo{in.dtype, shape});
        if (cast && *cast != t.dtype) t = convert_checked(t, *cast, "--cast", option + " " + spec);
        return t;
    };
    in.q = read(in.q_path, "--q", qk_shape);
    in.k = read(in.k_path, "--k", qk_shape);
    in.v = read(in.v_path, "--v", v_shape);
}

void check_output_file_header(const std::string& spec, const std::string& option, const AttentionInputs& in) {
    const TensorInfo t = tensor_header_for(spec, option);
    const auto expected = file_shape(in.layout, in.shape.batch, in.shape.heads, in.shape.tokens, in.shape.value_dim);
    if (t.shape != expected)
        throw ArgumentError(option, option + " " + spec + ": shape " + format_shape(t.shape) + " but the inputs give " +
                                        format_shape(expected) + " (--layout " + to_string(in.layout) + ")");
}

void add_attention_file_options(CLI::App& command, AttentionFileOptions& o) {
    command.add_option("--q", o.q, "queries: FILE.npy, FILE.safetensors or FILE.safetensors:NAME")->required();
    command.add_option("--k", o.k, "keys, same shape as --q")->required();
    command.add_option("--v", o.v, "values, same shape as --q except the last axis")->required();
    command.add_option("--grid", o.grid, "latent video grid T,H,W (frames, height, width); N = T*H*W")->required();
    command.add_option("--layout", o.layout, "tensor layout in the files: bhsd [B, heads, N, d] or bshd [B, N, heads, d]")
        ->capture_default_str();
    command.add_option("--device", o.device, "cpu, cuda or auto (cuda when available)")->capture_default_str();
    command.add_option("--cast", o.cast, "compute in this dtype (bf16, f16, f32, f64); needed for f32 files on cuda");
    command.add_option("--iterations,-t", o.iterations, "Monarch iterations t (R-steps = L-steps = t)")
        ->capture_default_str();
    command.add_option("--clamp", o.clamp, "R-step clamp on cR (0 disables it)")->capture_default_str();
    command.add_flag("--no-recompute", o.no_recompute, "skip the exact dense attention for frame-0 queries");
    command.add_option("--scale", o.scale, "softmax scale (default 1/sqrt(d))");
    command.add_flag("--progress", o.progress, "show progress on stderr even when it is not a terminal");
    command.add_option("--sink-frames", o.sink_frames, "key frames 0..S-1 attended exactly by every query (spec 3b)")
        ->capture_default_str();
    command.add_option("--window-radius", o.window_radius, "key frames within r of the query frame attended exactly");
    command.add_option("--text-tokens", o.text_tokens,
                       "joint sequence: the files hold N + L tokens, L of them text (spec 3c)")->capture_default_str();
    command.add_option("--text-position", o.text_position, "where the text tokens are: first or last")
        ->capture_default_str();
    command.add_option("--text-lens", o.text_lens, "valid text tokens per batch element l0,l1,... (default all)");
}

namespace {

// The joint-sequence flags that do not depend on the inputs (checked before any file is read).
void check_joint_text_flags(const AttentionFileOptions& o) {
    if (o.text_tokens < 0)
        throw ArgumentError("--text-tokens", "--text-tokens " + std::to_string(o.text_tokens) + ": must be >= 0");
    if (o.text_position != "first" && o.text_position != "last")
        throw ArgumentError("--text-position", "--text-position '" + o.text_position + "': expected first or last");
    if (o.text_tokens == 0 && !o.text_lens.empty())
        throw ArgumentError("--text-lens", "--text-lens needs --text-tokens L (the joint sequence's text tokens)");
}

} // namespace

std::optional<JointText> joint_text_from(const AttentionFileOptions& o, std::int64_t batch) {
    check_joint_text_flags(o);
    if (o.text_tokens == 0) return std::nullopt;
    JointText text;
    text.tokens = o.text_tokens;
    text.position = o.text_position == "first" ? TextPosition::first : TextPosition::last;
    if (!o.text_lens.empty()) {
        std::size_t at = 0;
        while (at <= o.text_lens.size()) {
            const std::size_t comma = std::min(o.text_lens.find(',', at), o.text_lens.size());
            const std::string item = o.text_lens.substr(at, comma - at);
            std::size_t used = 0;
            long long value = -1;
            try {
                value = std::stoll(item, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (item.empty() || used != item.size() || value < 0 || value > o.text_tokens)
                throw ArgumentError("--text-lens", "--text-lens '" + o.text_lens + "': entry '" + item +
                                                       "' is not an integer in 0.." + std::to_string(o.text_tokens));
            text.lens.push_back(value);
            at = comma + 1;
        }
        if (std::int64_t(text.lens.size()) != batch)
            throw ArgumentError("--text-lens", "--text-lens '" + o.text_lens + "': " + std::to_string(text.lens.size()) +
                                                   " entries, expected one per batch element (" + std::to_string(batch) + ")");
    }
    return text;
}

Options monarch_options_from(const AttentionFileOptions& o) {
    if (o.iterations < 1 || o.iterations > 8)
        throw ArgumentError("--iterations", "--iterations " + std::to_string(o.iterations) + ": must be 1..8");
    if (!(o.clamp >= 0) || !std::isfinite(o.clamp))
        throw ArgumentError("--clamp", "--clamp " + format_fixed(o.clamp, 3) + ": must be a finite number >= 0");
    if (o.scale && !(*o.scale > 0 && std::isfinite(*o.scale)))
        throw ArgumentError("--scale", "--scale: must be a positive finite number");
    Options options;
    options.iterations = o.iterations;
    options.cr_clamp = o.clamp;
    options.recompute_first_frame = !o.no_recompute;
    options.softmax_scale = o.scale;
    if (o.sink_frames < 0)
        throw ArgumentError("--sink-frames", "--sink-frames " + std::to_string(o.sink_frames) + ": must be >= 0");
    if (o.window_radius && *o.window_radius < 0)
        throw ArgumentError("--window-radius", "--window-radius " + std::to_string(*o.window_radius) + ": must be >= 0");
    options.sink_frames = o.sink_frames;
    options.window_radius = o.window_radius;
    check_joint_text_flags(o);
    return options;
}

AttentionFlags parse_attention_flags(const AttentionFileOptions& o) {
    AttentionFlags f;
    f.layout = parse_layout(o.layout);
    f.grid = parse_grid(o.grid);
    f.options = monarch_options_from(o);
    f.device = resolve_device(o.device);
    if (!o.cast.empty()) f.cast = parse_dtype(o.cast, "--cast");
    return f;
}

AttentionInputs inspect_attention_files(const AttentionFileOptions& o, const AttentionFlags& flags) {
    return inspect_attention_inputs(o.q, o.k, o.v, flags.grid, flags.layout, o.text_tokens > 0 ? o.text_tokens : 0);
}

} // namespace vmonarch::cli
