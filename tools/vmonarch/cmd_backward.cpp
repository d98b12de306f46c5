// vmonarch backward: gradients dq, dk, dv of VMonarch attention (spec §7) for q/k/v files and an output
// gradient dout, written in the inputs' layout and dtype. The forward runs first (its out and LSE are
// what the backward needs); --saved keeps its intermediates instead of rerunning it in the backward. On cuda the
// tensors are copied to the device and back (bf16/f16, or --cast bf16 / f16), as for `run`.
// Exact key groups (--sink-frames, --window-radius, spec §3b) and joint text+video sequences (--text-tokens,
// --text-position, --text-lens, spec §3c) as for `run`; the gradients of a joint sequence cover all N + L tokens.
#include <iostream>
#include <memory>
#include <tuple>

#include "attention_inputs.hpp"
#include "backward_runner.hpp"
#include "commands.hpp"
#include "tensor_output.hpp"
#include "vmonarch/backward.hpp"

namespace vmonarch::cli {

namespace {

struct BackwardCommandOptions {
    AttentionFileOptions inputs;
    std::string dout, dq, dk, dv;
    bool entropy_grad = false;
    bool deterministic = false;
    bool saved = false;
};

// Checks --dout's header against the inputs (before any data is read): the output's shape and q's dtype.
void check_dout_header(const std::string& spec, const AttentionInputs& in, Layout layout) {
    const TensorInfo t = tensor_header_for(spec, "--dout");
    const auto want = file_shape(layout, in.shape.batch, in.shape.heads, in.shape.tokens, in.shape.value_dim);
    if (t.shape != want)
        throw ArgumentError("--dout", "--dout " + spec + ": shape " + format_shape(t.shape) + ", expected " +
                                          format_shape(want) + " (the output's shape: --v's shape in --layout " +
                                          to_string(layout) + ")");
    if (t.dtype != in.dtype)
        throw ArgumentError("--dout", "--dout " + spec + ": dtype " + to_string(t.dtype) + ", expected " +
                                          to_string(in.dtype) + " like --q " + in.q_path);
}

int backward_command(const BackwardCommandOptions& o) {
    const AttentionFlags flags = parse_attention_flags(o.inputs);
    const auto& [layout, grid, options, device, cast] = flags;
    require_tensor_extension(o.dq, "--dq");
    require_tensor_extension(o.dk, "--dk");
    require_tensor_extension(o.dv, "--dv");
    // Headers first, then the output paths (never an input, --dout included), then the data.
    AttentionInputs in = inspect_attention_files(o.inputs, flags);
    const std::optional<JointText> joint = joint_text_from(o.inputs, in.shape.batch);
    if (joint && o.saved)
        throw ArgumentError("--saved", "--saved: a joint sequence (--text-tokens " + std::to_string(joint->tokens) +
                                           ") runs in lean mode only; leave out --saved");
    check_dout_header(o.dout, in, layout);
    const DType input_dtype = in.dtype;
    const DType compute_dtype = cast.value_or(input_dtype);
    require_device_dtype(device, compute_dtype, "--q " + in.q_path);

    std::vector<TensorOutput> outputs{{o.dq, "--dq", "dq", nullptr}, {o.dk, "--dk", "dk", nullptr},
                                      {o.dv, "--dv", "dv", nullptr}};
    std::vector<InputFile> files = in.files();
    files.push_back({"--dout", o.dout});
    const OutputPlan plan = check_tensor_outputs(outputs, {input_dtype, input_dtype, input_dtype}, files);

    read_attention_data(in, cast);
    HostTensor dout = tensor_data_for(o.dout, "--dout");
    if (compute_dtype != input_dtype) dout = convert_checked(dout, compute_dtype, "--cast", "--dout " + o.dout);
    const AttentionShape& s = in.shape;
    HostTensor dq = HostTensor::zeros(compute_dtype, in.q.shape), dk = HostTensor::zeros(compute_dtype, in.k.shape);
    HostTensor dv = HostTensor::zeros(compute_dtype, in.v.shape);
    BackwardRequest request;
    request.layout = layout;
    request.shape = s;
    request.grid = grid;
    request.options = options;
    request.entropy_grad = o.entropy_grad;
    request.deterministic = o.deterministic;
    request.saved = o.saved;
    request.joint = joint;
    BackwardResult result;
    {
        ProgressLine progress(o.inputs.progress);
        result = run_backward(device, request, in.q, in.k, in.v, dout, dq, dk, dv);
    }
    if (compute_dtype != input_dtype) {
        dq = convert_checked(dq, input_dtype, "--dq", "the gradient dq");
        dk = convert_checked(dk, input_dtype, "--dk", "the gradient dk");
        dv = convert_checked(dv, input_dtype, "--dv", "the gradient dv");
    }
    outputs[0].tensor = &dq;
    outputs[1].tensor = &dk;
    outputs[2].tensor = &dv;
    write_tensor_outputs(plan, outputs);

    std::cout << "wrote " << o.dq << ", " << o.dk << ", " << o.dv << " " << format_shape(dq.shape) << " "
              << to_string(input_dtype) << ": VMonarch backward t=" << options.iterations
              << (options.recompute_first_frame ? ", frame-0 recompute" : ", no recompute")
              << (options.sink_frames > 0 ? ", sink frames " + std::to_string(options.sink_frames) : "")
              << (options.window_radius ? ", window radius " + std::to_string(*options.window_radius) : "")
              << (joint ? ", " + std::to_string(joint->tokens) + " text tokens " +
                              (joint->position == TextPosition::first ? "first" : "last")
                        : "")
              << (o.entropy_grad ? ", exact gradient (entropy)" : ", paper gradient (cL constant)")
              << (o.deterministic ? ", deterministic" : "")
              << (o.saved ? ", saved state (" + format_thousands(std::int64_t(result.saved_bytes)) + " bytes)" : ", lean")
              << " on " << to_string(device) << " in " << to_string(compute_dtype) << ", grid " << format_grid(grid)
              << ", forward + backward " << format_seconds(result.seconds) << kept_tensors_note(plan) << "\n";

    // Written, but NaN/inf in a gradient is never passed off as success (as for `run`).
    std::string bad;
    for (const auto& [name, spec, tensor] : {std::tuple{"--dq", &o.dq, &dq}, std::tuple{"--dk", &o.dk, &dk},
                                             std::tuple{"--dv", &o.dv, &dv}}) {
        const std::int64_t n = tensor->value_stats().non_finite;
        if (n > 0)
            bad += (bad.empty() ? "" : ", ") + std::string(name) + " " + *spec + " holds " + std::to_string(n) +
                   " non-finite values (NaN/inf) of " + std::to_string(tensor->numel());
    }
    if (bad.empty()) return exit_success;
    print_warning("backward", bad + " (exit status 5)");
    return exit_non_finite;
}

} // namespace

Command add_backward_command(CLI::App& app) {
    auto o = std::make_shared<BackwardCommandOptions>();
    CLI::App* cmd = app.add_subcommand(
        "backward", "Gradients dq, dk, dv of VMonarch attention for q/k/v files and an output gradient --dout.");
    cmd->footer("Inputs as for 'run'; --dout has the output's shape ([B, heads, N, dv] or [B, N, heads, dv]) and the "
                "inputs' dtype. The gradients are written in the inputs' layout and dtype. By default the paper's "
                "gradient (the R-step entropy cL treated as a constant); --entropy-grad gives the exact one. Runs on "
                "--device cpu or cuda (auto: cuda when available; the CUDA kernels take bf16/f16: --cast bf16 converts f32 "
                "files on the way in and the gradients back). --sink-frames, --window-radius and the joint "
                "flags (--text-tokens, --text-position, --text-lens; lean mode only) as for 'run'.\n"
                "Example: vmonarch backward --q q.npy --k k.npy --v v.npy --dout g.npy --grid 4,8,8 "
                "--dq dq.npy --dk dk.npy --dv dv.npy\n");
    add_attention_file_options(*cmd, o->inputs);
    cmd->add_option("--dout", o->dout, "gradient of the loss with respect to the attention output")->required();
    cmd->add_option("--dq", o->dq, "write dq here (FILE.npy or FILE.safetensors[:NAME])")->required();
    cmd->add_option("--dk", o->dk, "write dk here")->required();
    cmd->add_option("--dv", o->dv, "write dv here")->required();
    cmd->add_flag("--entropy-grad", o->entropy_grad, "exact gradient, through the R-step entropy too");
    cmd->add_flag("--deterministic", o->deterministic, "bitwise repeatable gradients (the CPU backward always is)");
    cmd->add_flag("--saved", o->saved, "keep the forward's intermediates (saved mode) instead of rerunning it");
    return Command{cmd, [o] { return backward_command(*o); }};
}

} // namespace vmonarch::cli
