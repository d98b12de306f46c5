// vmonarch run: VMonarch (or dense) attention on q/k/v files, output written in the inputs' layout and dtype.
#include <iostream>
#include <memory>
#include <tuple>

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

// "the inputs hold 1 non-finite value (--v v.npy)" when they do, else "".
std::string non_finite_inputs(const AttentionInputs& in) {
    std::int64_t count = 0;
    std::string where;
    for (const auto& [option, tensor, spec] : {std::tuple{"--q", &in.q, in.q_path}, std::tuple{"--k", &in.k, in.k_path},
                                               std::tuple{"--v", &in.v, in.v_path}}) {
        const std::int64_t n = tensor->value_stats().non_finite;
        if (n == 0) continue;
        count += n;
        where += (where.empty() ? "" : ", ") + std::string(option) + " " + spec;
    }
    return count == 0 ? "" : "; the inputs hold " + std::to_string(count) + " (" + where + ")";
}

int run_command(const RunOptions& o) {
    const AttentionFlags flags = parse_attention_flags(o.inputs);
    const auto& [layout, grid, options, device, cast] = flags;
    std::optional<DType> out_dtype;
    if (!o.out_dtype.empty()) out_dtype = parse_dtype(o.out_dtype, "--out-dtype");
    // Headers first, then the output paths, then the data: every check that needs no tensor data runs before
    // any data is read, so a typo costs no long read or run.
    AttentionInputs in = inspect_attention_files(o.inputs, flags);
    const std::optional<JointText> joint_text = joint_text_from(o.inputs, in.shape.batch);
    const DType input_dtype = in.dtype;
    const DType compute_dtype = cast.value_or(input_dtype);
    require_device_dtype(device, compute_dtype, "--q " + in.q_path);
    const DType result_dtype = out_dtype.value_or(input_dtype);

    std::vector<TensorOutput> outputs{{o.out, "--out", "out", nullptr}};
    std::vector<DType> dtypes{result_dtype};
    if (!o.lse.empty()) {
        outputs.push_back({o.lse, "--lse", "lse", nullptr});
        dtypes.push_back(DType::f32);
    }
    const OutputPlan plan = check_tensor_outputs(outputs, dtypes, in.files());

    read_attention_data(in, cast);

    AttentionResult result;
    {
        ProgressLine progress(o.inputs.progress); // cleared before anything is printed
        AttentionSession session(device, in.q, in.k, in.v, layout, in.shape);
        if (joint_text) session.set_joint_text(*joint_text);
        result = session.run(o.dense ? Method::dense : Method::vmonarch, grid, options, !o.lse.empty());
    }
    if (result.out.dtype != result_dtype)
        result.out = convert_checked(result.out, result_dtype, "--out-dtype", "the output");

    outputs[0].tensor = &result.out;
    if (!o.lse.empty()) outputs[1].tensor = &result.lse;
    write_tensor_outputs(plan, outputs);

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
              << format_seconds(result.seconds) << kept_tensors_note(plan) << "\n";

    // Written, but NaN/inf in a result is never passed off as success.
    const std::int64_t bad_out = result.out.value_stats().non_finite;
    const std::int64_t bad_lse = o.lse.empty() ? 0 : result.lse.value_stats().non_finite;
    if (bad_out + bad_lse == 0) return exit_success;
    std::string message;
    if (bad_out > 0)
        message = "--out " + o.out + " holds " + std::to_string(bad_out) + " non-finite values (NaN/inf) of " +
                  std::to_string(result.out.numel());
    if (bad_lse > 0)
        message += (message.empty() ? "" : ", ") + std::string("--lse ") + o.lse + " holds " +
                   std::to_string(bad_lse) + " non-finite values of " + std::to_string(result.lse.numel());
    print_warning("run", message + non_finite_inputs(in) + " (exit status 5)");
    return exit_non_finite;
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
