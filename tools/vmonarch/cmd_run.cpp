// vmonarch run: VMonarch (or dense) attention on q/k/v files, output written in the inputs' layout and dtype.
#include <iostream>
#include <memory>

#include "attention_inputs.hpp"
#include "attention_runner.hpp"
#include "commands.hpp"
#include "tensor_output.hpp"

namespace vmonarch::cli {

namespace {

struct RunOptions {
    AttentionFileOptions inputs;
    std::string out, lse, out_dtype;
    bool dense = false;
};

int run_command(const RunOptions& o) {
    const Layout layout = parse_layout(o.inputs.layout);
    const VideoGrid grid = parse_grid(o.inputs.grid);
    const Options options = monarch_options_from(o.inputs);
    const Device device = resolve_device(o.inputs.device);
    std::optional<DType> cast, out_dtype;
    if (!o.inputs.cast.empty()) cast = parse_dtype(o.inputs.cast, "--cast");
    if (!o.out_dtype.empty()) out_dtype = parse_dtype(o.out_dtype, "--out-dtype");
    // Output names are checked before the inputs are read: a typo should not cost a long run.
    require_tensor_extension(o.out, "--out");
    if (!o.lse.empty()) require_tensor_extension(o.lse, "--lse");

    AttentionInputs in = load_attention_inputs(o.inputs.q, o.inputs.k, o.inputs.v, grid, layout,
                                               o.inputs.text_tokens > 0 ? o.inputs.text_tokens : 0);
    const std::optional<JointText> joint_text = joint_text_from(o.inputs, in.shape.batch);
    const DType input_dtype = in.q.dtype;
    const DType compute_dtype = cast.value_or(input_dtype);
    require_device_dtype(device, compute_dtype, "--q " + in.q_path);
    const DType result_dtype = out_dtype.value_or(input_dtype);

    std::vector<TensorOutput> outputs{{o.out, "--out", "out", nullptr}};
    std::vector<DType> dtypes{result_dtype};
    if (!o.lse.empty()) {
        outputs.push_back({o.lse, "--lse", "lse", nullptr});
        dtypes.push_back(DType::f32);
    }
    check_tensor_outputs(outputs, dtypes);

    if (compute_dtype != input_dtype) {
        in.q = in.q.converted(compute_dtype);
        in.k = in.k.converted(compute_dtype);
        in.v = in.v.converted(compute_dtype);
    }

    AttentionResult result;
    {
        ProgressLine progress(o.inputs.progress); // cleared before anything is printed
        AttentionSession session(device, in.q, in.k, in.v, layout, in.shape);
        if (joint_text) session.set_joint_text(*joint_text);
        result = session.run(o.dense ? Method::dense : Method::vmonarch, grid, options, !o.lse.empty());
    }
    if (result.out.dtype != result_dtype) result.out = result.out.converted(result_dtype);

    outputs[0].tensor = &result.out;
    if (!o.lse.empty()) outputs[1].tensor = &result.lse;
    write_tensor_outputs(outputs);

    const std::string method =
        o.dense ? std::string("dense attention")
                : "VMonarch t=" + std::to_string(options.iterations) +
                      (options.recompute_first_frame ? ", frame-0 recompute" : ", no recompute") +
                      (options.sink_frames > 0 ? ", sink frames " + std::to_string(options.sink_frames) : "") +
                      (options.window_radius ? ", window radius " + std::to_string(*options.window_radius) : "");
    const std::string joint = joint_text ? ", " + std::to_string(joint_text->tokens) + " text tokens" : "";
    std::cout << "wrote " << o.out << " " << format_shape(result.out.shape) << " " << to_string(result_dtype)
              << (o.lse.empty() ? "" : " and " + o.lse) << ": " << method << " on " << to_string(device) << " in "
              << to_string(compute_dtype) << ", grid " << format_grid(grid) << joint << ", "
              << format_seconds(result.seconds) << "\n";
    return 0;
}

} // namespace

Command add_run_command(CLI::App& app) {
    auto o = std::make_shared<RunOptions>();
    CLI::App* cmd = app.add_subcommand(
        "run", "Run VMonarch attention (or --dense) on q/k/v tensor files and write the output.");
    cmd->footer("Inputs are [B, heads, N, d] (--layout bhsd) or [B, N, heads, d] (--layout bshd) with N = T*H*W "
                "frame-major tokens; the output keeps the inputs' layout and dtype. On cuda the tensors are "
                "copied to the device and back; f32 files need --cast bf16 or --cast f16 there.\n"
                "Example: vmonarch run --q q.npy --k k.npy --v v.npy --grid 4,8,8 --out o.npy\n");
    add_attention_file_options(*cmd, o->inputs);
    cmd->add_option("--out", o->out, "output FILE.npy or FILE.safetensors[:NAME] (default name 'out')")->required();
    cmd->add_option("--lse", o->lse, "also write the per-row log-sum-exp [B, heads, N] f32 here");
    cmd->add_option("--out-dtype", o->out_dtype, "dtype of the written output (default: the inputs' dtype)");
    cmd->add_flag("--dense", o->dense, "exact dense attention instead of VMonarch (a reference)");
    return Command{cmd, [o] { return run_command(*o); }};
}

} // namespace vmonarch::cli
