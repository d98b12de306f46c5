// vmonarch make-inputs: write video-like q/k/v tensors (make_video_attention_inputs) for run/compare.
#include <iostream>
#include <memory>

#include "attention_inputs.hpp"
#include "commands.hpp"
#include "generated_inputs.hpp"
#include "tensor_output.hpp"
#include "vmonarch/extras/video_data.hpp"

namespace vmonarch::cli {

namespace {

struct MakeInputsOptions {
    std::string q, k, v;
    std::string grid = "4,8,8";
    std::int64_t batch = 1, heads = 4, head_dim = 64, value_dim = 0;
    std::string seed = "0";
    double sharpness = 1.0;
    std::string layout = "bhsd";
    std::string dtype = "f32";
};

// [B, heads, N, d] float32 (the generator's order) into a tensor of `layout` and `dtype`.
HostTensor to_file_tensor(const std::vector<float>& bhsd, Layout layout, DType dtype, std::int64_t B,
                          std::int64_t heads, std::int64_t N, std::int64_t d) {
    if (layout == Layout::bhsd) return HostTensor::from_floats(bhsd, {B, heads, N, d}, dtype);
    std::vector<float> bshd(bhsd.size());
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t h = 0; h < heads; ++h)
            for (std::int64_t n = 0; n < N; ++n)
                for (std::int64_t i = 0; i < d; ++i)
                    bshd[std::size_t(((b * N + n) * heads + h) * d + i)] =
                        bhsd[std::size_t(((b * heads + h) * N + n) * d + i)];
    return HostTensor::from_floats(bshd, {B, N, heads, d}, dtype);
}

int make_inputs_command(const MakeInputsOptions& o) {
    const Layout layout = parse_layout(o.layout);
    const VideoGrid grid = parse_grid(o.grid);
    const DType dtype = parse_dtype(o.dtype, "--dtype");
    const std::uint64_t seed = parse_seed(o.seed);
    require_positive(o.batch, "--batch");
    require_positive(o.heads, "--heads");
    require_positive(o.head_dim, "--head-dim");
    if (o.value_dim < 0) throw ArgumentError("--value-dim", "--value-dim must be >= 0 (0: same as --head-dim)");
    if (!(o.sharpness > 0)) throw ArgumentError("--sharpness", "--sharpness must be > 0");
    std::vector<TensorOutput> outputs{{o.q, "--q", "q", nullptr}, {o.k, "--k", "k", nullptr}, {o.v, "--v", "v", nullptr}};
    const OutputPlan plan = check_tensor_outputs(outputs, {dtype, dtype, dtype}, {});

    VideoDataOptions data;
    data.grid = grid;
    data.batch = o.batch;
    data.heads = o.heads;
    data.head_dim = o.head_dim;
    data.value_dim = o.value_dim;
    data.seed = seed;
    data.sharpness = o.sharpness;
    const VideoAttentionInputs in = generate_inputs(data, o.grid);

    const HostTensor q = to_file_tensor(in.q, layout, dtype, in.batch, in.heads, in.tokens, in.head_dim);
    const HostTensor k = to_file_tensor(in.k, layout, dtype, in.batch, in.heads, in.tokens, in.head_dim);
    const HostTensor v = to_file_tensor(in.v, layout, dtype, in.batch, in.heads, in.tokens, in.value_dim);
    outputs[0].tensor = &q;
    outputs[1].tensor = &k;
    outputs[2].tensor = &v;
    write_tensor_outputs(plan, outputs);

    std::cout << "wrote q " << o.q << ", k " << o.k << ", v " << o.v << ": " << format_shape(q.shape) << " "
              << to_string(dtype) << " (" << to_string(layout) << "), grid " << format_grid(grid) << ", seed "
              << seed << kept_tensors_note(plan) << "\nhead kinds:";
    for (std::size_t h = 0; h < in.head_kinds.size(); ++h) std::cout << " " << h << "=" << to_string(in.head_kinds[h]);
    // How to read them back: a .safetensors spec without a name needs one when the file holds several.
    const auto read_spec = [](const std::string& spec, const std::string& name) {
        return is_npy_path(spec) || !split_tensor_path(spec).name.empty() ? spec : spec + ":" + name;
    };
    std::cout << "\nnext: vmonarch compare --q " << read_spec(o.q, "q") << " --k " << read_spec(o.k, "k") << " --v "
              << read_spec(o.v, "v") << " --grid "
              << format_grid(grid) << " --layout " << to_string(layout) << "\n";
    return 0;
}

} // namespace

Command add_make_inputs_command(CLI::App& app) {
    auto o = std::make_shared<MakeInputsOptions>();
    CLI::App* cmd = app.add_subcommand(
        "make-inputs", "Write seeded video-like q/k/v tensors (moving scene, 3-D RoPE, head kinds) for run/compare.");
    cmd->footer("Files are .npy or .safetensors; give one .safetensors file for all three (q/k/v are stored as "
                "tensors 'q', 'k', 'v', or FILE.safetensors:NAME) and read them back as FILE.safetensors:q etc.\n"
                "Example: vmonarch make-inputs --q q.npy --k k.npy --v v.npy --grid 4,8,8 --heads 2 --head-dim 32\n");
    cmd->add_option("--q", o->q, "output file for the queries")->required();
    cmd->add_option("--k", o->k, "output file for the keys")->required();
    cmd->add_option("--v", o->v, "output file for the values")->required();
    cmd->add_option("--grid", o->grid, "latent grid T,H,W")->capture_default_str();
    cmd->add_option("--batch", o->batch, "batch size")->capture_default_str();
    cmd->add_option("--heads", o->heads, "heads (kinds cycle: positional, semantic, sink, mixed)")->capture_default_str();
    cmd->add_option("--head-dim", o->head_dim, "q/k head dim d")->capture_default_str();
    cmd->add_option("--value-dim", o->value_dim, "v head dim (0: same as --head-dim)")->capture_default_str();
    cmd->add_option("--seed", o->seed, "random seed (0 .. 2^64-1)")->capture_default_str();
    cmd->add_option("--sharpness", o->sharpness, "logit scale multiplier (1: DiT-like attention)")->capture_default_str();
    cmd->add_option("--layout", o->layout, "bhsd [B, heads, N, d] or bshd [B, N, heads, d]")->capture_default_str();
    cmd->add_option("--dtype", o->dtype, "f16, bf16 (safetensors only), f32 or f64")->capture_default_str();
    return Command{cmd, [o] { return make_inputs_command(*o); }};
}

} // namespace vmonarch::cli
