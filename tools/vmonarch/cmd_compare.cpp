// vmonarch compare: per-head error of VMonarch against dense attention on q/k/v files.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "attention_inputs.hpp"
#include "attention_runner.hpp"
#include "commands.hpp"
#include "head_metrics.hpp"

namespace vmonarch::cli {

namespace {

struct CompareOptions {
    AttentionFileOptions inputs;
    std::string reference, approx;
    bool json = false;
};

HostTensor read_output_file(const std::string& spec, const std::string& option, const AttentionInputs& in) {
    HostTensor t = tensor_data_for(spec, option);
    const auto expected = file_shape(in.layout, in.shape.batch, in.shape.heads, in.shape.tokens, in.shape.value_dim);
    if (t.shape != expected)
        throw ArgumentError(option, option + " " + spec + ": shape " + format_shape(t.shape) + " but the inputs give " +
                                        format_shape(expected) + " (--layout " + to_string(in.layout) + ")");
    return t;
}

// A metric as JSON: the number, or null when it is not finite (JSON has no NaN/inf).
nlohmann::json metric_json(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); }

nlohmann::json error_json(const OutputError& e) {
    nlohmann::json j;
    if (e.batch >= 0) {
        j["batch"] = e.batch;
        j["head"] = e.head;
    }
    j["rel_l2"] = metric_json(e.rel_l2);
    j["cosine"] = metric_json(e.cosine);
    j["max_abs"] = metric_json(e.max_abs);
    if (!e.finite()) j["non_finite"] = {{"approx", e.approx_non_finite}, {"reference", e.reference_non_finite}};
    return j;
}

std::string scientific(double value) {
    if (!std::isfinite(value)) return format_metric(value, 0);
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.3e", value);
    return buffer;
}

int compare_command(const CompareOptions& o) {
    const AttentionFlags flags = parse_attention_flags(o.inputs);
    const auto& [layout, grid, options, device, cast] = flags;
    if (!o.reference.empty()) require_existing_file(o.reference, "--reference");
    if (!o.approx.empty()) require_existing_file(o.approx, "--approx");

    // Every header first (inputs, then the saved outputs), then the data.
    AttentionInputs in = inspect_attention_files(o.inputs, flags);
    const std::optional<JointText> joint_text = joint_text_from(o.inputs, in.shape.batch);
    const DType compute_dtype = cast.value_or(in.dtype);
    const bool computes = o.reference.empty() || o.approx.empty();
    if (computes) require_device_dtype(device, compute_dtype, "--q " + in.q_path);
    if (!o.reference.empty()) check_output_file_header(o.reference, "--reference", in);
    if (!o.approx.empty()) check_output_file_header(o.approx, "--approx", in);

    HostTensor reference, approx;
    if (!o.reference.empty()) reference = read_output_file(o.reference, "--reference", in);
    if (!o.approx.empty()) approx = read_output_file(o.approx, "--approx", in);

    std::optional<double> vmonarch_seconds, dense_seconds;
    if (computes) {
        read_attention_data(in, cast);
        ProgressLine progress(o.inputs.progress);
        AttentionSession session(device, in.q, in.k, in.v, layout, in.shape);
        if (joint_text) session.set_joint_text(*joint_text);
        if (o.approx.empty()) {
            AttentionResult r = session.run(Method::vmonarch, grid, options);
            approx = std::move(r.out);
            vmonarch_seconds = r.seconds;
        }
        if (o.reference.empty()) {
            AttentionResult r = session.run(Method::dense, grid, options);
            reference = std::move(r.out);
            dense_seconds = r.seconds;
        }
    }
    const OutputComparison cmp = compare_outputs(approx, reference, layout, in.shape);

    const std::string approx_name = o.approx.empty() ? "vmonarch" : o.approx;
    const std::string reference_name = o.reference.empty() ? "dense" : o.reference;
    if (o.json) {
        nlohmann::json j;
        j["grid"] = {grid.T, grid.H, grid.W};
        j["tokens"] = grid.tokens();
        j["batch"] = in.shape.batch;
        j["heads"] = in.shape.heads;
        j["head_dim"] = in.shape.head_dim;
        j["value_dim"] = in.shape.value_dim;
        j["layout"] = to_string(layout);
        j["device"] = to_string(device);
        j["dtype"] = to_string(compute_dtype);
        j["iterations"] = options.iterations;
        j["clamp"] = options.cr_clamp;
        j["recompute_first_frame"] = options.recompute_first_frame;
        j["sink_frames"] = options.sink_frames;
        j["window_radius"] = options.window_radius ? nlohmann::json(*options.window_radius) : nlohmann::json(nullptr);
        j["text_tokens"] = joint_text ? joint_text->tokens : 0;
        j["approx"] = approx_name;
        j["reference"] = reference_name;
        j["per_head"] = nlohmann::json::array();
        for (const OutputError& e : cmp.heads) j["per_head"].push_back(error_json(e));
        j["overall"] = error_json(cmp.overall);
        nlohmann::json seconds = nlohmann::json::object();
        if (vmonarch_seconds) seconds["vmonarch"] = *vmonarch_seconds;
        if (dense_seconds) seconds["dense"] = *dense_seconds;
        j["seconds"] = seconds;
        std::cout << j.dump(2) << "\n";
    } else {
        std::cout << "compare " << approx_name << " against " << reference_name << ": grid " << format_grid(grid)
                  << " (N = " << format_thousands(grid.tokens()) << "), " << in.shape.heads << " heads, d = "
                  << in.shape.head_dim << ", " << to_string(compute_dtype) << " on " << to_string(device);
        if (o.approx.empty())
            std::cout << "; VMonarch t = " << options.iterations << ", clamp " << options.cr_clamp
                      << ", frame-0 recompute " << (options.recompute_first_frame ? "on" : "off")
                      << (options.sink_frames > 0 ? ", sink frames " + std::to_string(options.sink_frames) : "")
                      << (options.window_radius ? ", window radius " + std::to_string(*options.window_radius) : "")
                      << (joint_text ? ", " + std::to_string(joint_text->tokens) + " text tokens " +
                                           (joint_text->position == TextPosition::first ? "first" : "last")
                                     : "");
        std::cout << "\n\n batch  head   rel. L2     cosine     max abs\n";
        const auto row = [](const std::string& b, const std::string& h, const OutputError& e) {
            char line[200];
            std::snprintf(line, sizeof line, "%6s %5s  %8s  %9s  %10s%s\n", b.c_str(), h.c_str(),
                          format_metric(e.rel_l2, 5).c_str(), format_metric(e.cosine, 6).c_str(),
                          scientific(e.max_abs).c_str(),
                          e.finite() ? ""
                                     : ("   non-finite: approx " + std::to_string(e.approx_non_finite) +
                                        ", reference " + std::to_string(e.reference_non_finite))
                                           .c_str());
            std::cout << line;
        };
        for (const OutputError& e : cmp.heads) row(std::to_string(e.batch), std::to_string(e.head), e);
        row("all", "", cmp.overall);
        if (vmonarch_seconds || dense_seconds) {
            std::cout << "\ntime:";
            if (vmonarch_seconds) std::cout << " VMonarch " << format_seconds(*vmonarch_seconds);
            if (dense_seconds) std::cout << (vmonarch_seconds ? "," : "") << " dense " << format_seconds(*dense_seconds);
            std::cout << "\n";
        }
    }

    if (cmp.overall.finite()) return exit_success;
    std::int64_t bad_heads = 0;
    for (const OutputError& e : cmp.heads) bad_heads += !e.finite();
    print_warning("compare", "non-finite values (NaN/inf): " + approx_name + " holds " +
                                 std::to_string(cmp.overall.approx_non_finite) + ", " + reference_name + " holds " +
                                 std::to_string(cmp.overall.reference_non_finite) + ", in " +
                                 std::to_string(bad_heads) + " of " + std::to_string(cmp.heads.size()) +
                                 " heads; their errors are not numbers (exit status 5)");
    return exit_non_finite;
}

} // namespace

Command add_compare_command(CLI::App& app) {
    auto o = std::make_shared<CompareOptions>();
    CLI::App* cmd = app.add_subcommand(
        "compare", "Per-head relative L2 error, cosine similarity and max abs error of VMonarch against dense.");
    cmd->footer("Same inputs as 'run'. By default both outputs are computed; --reference compares against a saved "
                "output instead (e.g. from 'run --dense' or PyTorch), --approx uses a saved VMonarch output.\n"
                "Example: vmonarch compare --q q.npy --k k.npy --v v.npy --grid 4,8,8 --json\n");
    add_attention_file_options(*cmd, o->inputs);
    cmd->add_option("--reference", o->reference, "reference output file instead of computing dense attention");
    cmd->add_option("--approx", o->approx, "approximate output file instead of computing VMonarch");
    cmd->add_flag("--json", o->json, "print one JSON object (per_head, overall, seconds, settings)");
    return Command{cmd, [o] { return compare_command(*o); }};
}

} // namespace vmonarch::cli
