// vmonarch demo: VMonarch vs dense attention on generated video-like inputs: per-head error, FLOPs, time,
// and a PNG of dense vs Monarch attention rows.
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

#include "attention_inputs.hpp"
#include "attention_runner.hpp"
#include "commands.hpp"
#include "generated_inputs.hpp"
#include "head_metrics.hpp"
#include "tensor_output.hpp"
#include "vmonarch/extras/heatmap.hpp"
#include "vmonarch/inspect.hpp"
#include "vmonarch/extras/video_data.hpp"

namespace vmonarch::cli {

namespace {

struct DemoOptions {
    std::string device = "auto";
    std::string grid, dtype;
    std::optional<std::int64_t> heads, head_dim;
    int iterations = 2;
    double clamp = 0.1;
    bool no_recompute = false;
    std::string seed = "0";
    std::optional<int> repeats;
    std::string png = "vmonarch_demo.png";
    bool no_png = false;
    bool progress = false;
};

struct HeatmapQuery {
    std::int64_t head = 0;
    std::int64_t token = 0;
    std::string label; // drawn by the heat-map writer, which adds the query's position itself
    std::string where;
};

// One query per head kind in the middle frame, plus a frame-0 query of the sink head (or head 0).
std::vector<HeatmapQuery> pick_heatmap_queries(const VideoGrid& grid, const std::vector<HeadKind>& kinds) {
    std::vector<HeatmapQuery> queries;
    std::map<HeadKind, std::int64_t> first_head;
    for (std::size_t h = 0; h < kinds.size(); ++h) first_head.emplace(kinds[h], std::int64_t(h));
    const auto add = [&](std::int64_t head, std::int64_t frame, std::int64_t y, std::int64_t x) {
        HeatmapQuery q;
        q.head = head;
        q.token = frame * grid.frame_tokens() + y * grid.W + x;
        q.label = "head " + std::to_string(head) + " (" + to_string(kinds[std::size_t(head)]) + ")";
        q.where = "frame " + std::to_string(frame) + ", y " + std::to_string(y) + ", x " + std::to_string(x);
        queries.push_back(q);
    };
    // Spread the query positions a little so the bands do not all look at the same spot.
    static const std::pair<int, int> spots[4] = {{1, 2}, {2, 3}, {3, 1}, {1, 1}}; // (y, x) in quarters
    std::size_t index = 0;
    for (const auto& [kind, head] : first_head) {
        const auto [qy, qx] = spots[index++ % 4];
        add(head, grid.T / 2, std::min(grid.H * qy / 4, grid.H - 1), std::min(grid.W * qx / 4, grid.W - 1));
    }
    const auto sink = first_head.find(HeadKind::sink);
    add(sink != first_head.end() ? sink->second : 0, 0, grid.H / 2, grid.W / 2);
    return queries;
}

// --png is checked before anything is computed: a .png name in a folder that takes a new file, and no
// existing file there but a PNG (a typo must not replace, say, an .npy input).
void check_png_path(const std::string& path) {
    if (path.empty()) throw ArgumentError("--png", "--png: empty path (use --no-png to skip the PNG)");
    std::string low = path;
    for (char& c : low) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (low.size() < 4 || low.compare(low.size() - 4, 4, ".png") != 0)
        throw ArgumentError("--png", "--png " + path + ": expected a .png file name (or --no-png)");
    check_output_path(path, "--png", {});
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return;
    char magic[8] = {};
    std::ifstream in(path, std::ios::binary);
    in.read(magic, sizeof magic);
    if (!in || std::memcmp(magic, "\x89PNG\r\n\x1a\n", 8) != 0)
        throw ArgumentError("--png", "--png " + path + ": the existing file is not a PNG image; it is not "
                                                       "overwritten: remove it or choose another path");
}

// Writes the PNG through a temporary file (StagedFile): it appears whole or not at all; errors name --png.
void write_png_whole(const std::string& path, const std::function<void(const std::string&)>& write) {
    std::string temp;
    try {
        StagedFile staged(path);
        temp = staged.path();
        write(temp);
        staged.commit();
    } catch (const OutOfMemoryError&) {
        throw;
    } catch (const std::exception& e) {
        std::string message = e.what();
        for (std::size_t at; !temp.empty() && (at = message.find(temp)) != std::string::npos;)
            message.replace(at, temp.size(), path);
        throw FileFormatError("--png " + path + ": " + message);
    }
}

void write_demo_png(const std::string& path, const HostTensor& q, const HostTensor& k, const AttentionShape& shape,
                    const VideoGrid& grid, const Options& options, const std::vector<HeadKind>& kinds,
                    bool show_progress) {
    const std::vector<HeatmapQuery> queries = pick_heatmap_queries(grid, kinds);
    const TensorView qv = view_of(const_cast<void*>(q.data()), q.dtype, Device::cpu, Layout::bhsd, shape, shape.head_dim);
    const TensorView kv = view_of(const_cast<void*>(k.data()), k.dtype, Device::cpu, Layout::bhsd, shape, shape.head_dim);
    const std::int64_t N = grid.tokens();

    // Group the queries per head: one Monarch fit per head.
    std::map<std::int64_t, std::vector<std::size_t>> per_head;
    for (std::size_t i = 0; i < queries.size(); ++i) per_head[queries[i].head].push_back(i);
    std::vector<AttentionRowPair> rows(queries.size());
    {
        ProgressLine progress(show_progress); // cleared before the listing below
        for (const auto& [head, indices] : per_head) {
            std::vector<std::int64_t> tokens;
            for (std::size_t i : indices) tokens.push_back(queries[i].token);
            const std::vector<double> dense = dense_attention_rows(qv, kv, options, 0, head, tokens);
            const std::vector<double> monarch = monarch_attention_rows(qv, kv, grid, options, 0, head, tokens);
            for (std::size_t r = 0; r < indices.size(); ++r) {
                AttentionRowPair& pair = rows[indices[r]];
                pair.query_token = tokens[r];
                pair.label = queries[indices[r]].label;
                pair.dense.assign(dense.begin() + std::ptrdiff_t(r * N), dense.begin() + std::ptrdiff_t((r + 1) * N));
                pair.monarch.assign(monarch.begin() + std::ptrdiff_t(r * N), monarch.begin() + std::ptrdiff_t((r + 1) * N));
            }
        }
    }
    write_png_whole(path, [&](const std::string& temp) { write_attention_heatmap_png(temp, grid, rows); });
    std::cout << "\nheat map: " << path << " (dense row above, Monarch row below, per query):\n";
    for (const HeatmapQuery& query : queries) std::cout << "  " << query.label << ", " << query.where << "\n";
}

int demo_command(const DemoOptions& o) {
    const Device device = resolve_device(o.device);
    const bool gpu = device == Device::cuda;
    // Defaults: a small CPU problem, or Wan2.1-1.3B at 61x448x832 on a GPU.
    const VideoGrid grid = o.grid.empty() ? (gpu ? VideoGrid{16, 28, 52} : VideoGrid{8, 16, 16}) : parse_grid(o.grid);
    const std::int64_t heads = o.heads.value_or(gpu ? 12 : 4);
    const std::int64_t head_dim = o.head_dim.value_or(gpu ? 128 : 64);
    const DType dtype = o.dtype.empty() ? (gpu ? DType::bf16 : DType::f32) : parse_dtype(o.dtype, "--dtype");
    require_positive(heads, "--heads");
    require_positive(head_dim, "--head-dim");
    if (gpu && dtype != DType::bf16 && dtype != DType::f16)
        throw ArgumentError("--dtype", "--dtype " + to_string(dtype) + ": the CUDA kernels take bf16 or f16; use "
                                       "--dtype bf16 on cuda, or --device cpu");
    if (o.iterations < 1 || o.iterations > 8)
        throw ArgumentError("--iterations", "--iterations " + std::to_string(o.iterations) + ": must be 1..8");
    if (o.repeats && *o.repeats < 1) throw ArgumentError("--repeats", "--repeats must be >= 1");
    if (!(o.clamp >= 0)) throw ArgumentError("--clamp", "--clamp must be >= 0");
    const std::uint64_t seed = parse_seed(o.seed);
    if (!o.no_png) check_png_path(o.png);

    Options options;
    options.iterations = o.iterations;
    options.cr_clamp = o.clamp;
    options.recompute_first_frame = !o.no_recompute;
    const int repeats = o.repeats.value_or(gpu ? 10 : 1);
    const int warmup = gpu ? 2 : 0;

    Stopwatch generate_watch;
    VideoDataOptions data;
    data.grid = grid;
    data.heads = heads;
    data.head_dim = head_dim;
    data.seed = seed;
    const VideoAttentionInputs inputs = generate_inputs(data, o.grid);
    AttentionShape shape{1, heads, grid.tokens(), head_dim, inputs.value_dim};
    const HostTensor q = HostTensor::from_floats(inputs.q, {1, heads, grid.tokens(), head_dim}, dtype);
    const HostTensor k = HostTensor::from_floats(inputs.k, {1, heads, grid.tokens(), head_dim}, dtype);
    const HostTensor v = HostTensor::from_floats(inputs.v, {1, heads, grid.tokens(), inputs.value_dim}, dtype);
    const double generate_seconds = generate_watch.seconds();

    std::cout << "vmonarch demo on " << (gpu ? "cuda: " + cuda_device_name(0) : std::string("cpu")) << "\n"
              << "grid " << format_grid(grid) << " (T x H x W, N = " << format_thousands(grid.tokens())
              << " tokens), " << heads << " heads, d = " << head_dim << ", " << to_string(dtype)
              << "; VMonarch t = " << options.iterations << ", clamp " << options.cr_clamp << ", frame-0 recompute "
              << (options.recompute_first_frame ? "on" : "off") << "\n";
    std::cout << "inputs: make_video_attention_inputs, seed " << seed << " (" << format_seconds(generate_seconds)
              << ")\n";

    AttentionResult monarch, dense;
    {
        ProgressLine progress(o.progress); // cleared before anything is printed
        AttentionSession session(device, q, k, v, Layout::bhsd, shape);
        monarch = session.run(Method::vmonarch, grid, options, false, warmup, repeats);
        dense = session.run(Method::dense, grid, options, false, warmup, repeats);
    }
    const OutputComparison cmp = compare_outputs(monarch.out, dense.out, Layout::bhsd, shape);

    std::cout << "\nVMonarch output against dense attention, per head:\n"
              << "  head  kind         rel. L2 error   cosine sim.\n";
    const auto row = [](const std::string& head, const std::string& kind, const OutputError& e) {
        char line[160];
        std::snprintf(line, sizeof line, "  %4s  %-11s  %13s   %11s\n", head.c_str(), kind.c_str(),
                      format_fixed(e.rel_l2, 4).c_str(), format_fixed(e.cosine, 5).c_str());
        std::cout << line;
    };
    for (const OutputError& e : cmp.heads)
        row(std::to_string(e.head), to_string(inputs.head_kinds[std::size_t(e.head)]), e);
    row("all", "", cmp.overall);

    const FlopCount flop = flops(grid, head_dim, heads, 1, options);
    const auto rate = [](double f, double s) { return s > 0 ? format_flops(f / s) + "/s" : std::string("-"); };
    char line[200];
    std::cout << "\n                 FLOPs          time" << (repeats > 1 ? " (median of " + std::to_string(repeats) + ")" : "")
              << "\n";
    std::snprintf(line, sizeof line, "  dense       %12s  %10s   %s\n", format_flops(flop.dense).c_str(),
                  format_seconds(dense.seconds).c_str(), rate(flop.dense, dense.seconds).c_str());
    std::cout << line;
    std::snprintf(line, sizeof line, "  VMonarch    %12s  %10s   %s\n", format_flops(flop.vmonarch).c_str(),
                  format_seconds(monarch.seconds).c_str(), rate(flop.vmonarch, monarch.seconds).c_str());
    std::cout << line;
    std::cout << "  ratio: " << format_fixed(flop.dense / flop.vmonarch, 2) << "x fewer FLOPs, "
              << format_fixed(dense.seconds / monarch.seconds, 2) << "x "
              << (gpu ? "speedup over our dense kernel" : "speedup over our dense CPU attention") << "\n";
    std::cout << "  (VMonarch FLOPs: R-steps " << format_flops(flop.r_steps) << ", L-steps " << format_flops(flop.l_steps)
              << ", frame-0 recompute " << format_flops(flop.recompute) << ")\n";

    if (!o.no_png) write_demo_png(o.png, q, k, shape, grid, options, inputs.head_kinds, o.progress);
    return 0;
}

} // namespace

Command add_demo_command(CLI::App& app) {
    auto o = std::make_shared<DemoOptions>();
    CLI::App* cmd = app.add_subcommand(
        "demo", "VMonarch vs dense attention on generated video-like inputs: error per head, FLOPs, time, PNG.");
    cmd->footer("Defaults: on the CPU a 8x16x16 grid, 4 heads, d = 64, f32; with a CUDA device the Wan2.1-1.3B "
                "61x448x832 grid 16x28x52, 12 heads, d = 128, bf16.\nExample: vmonarch demo --png demo.png\n");
    cmd->add_option("--device", o->device, "cpu, cuda or auto")->capture_default_str();
    cmd->add_option("--grid", o->grid, "latent grid T,H,W (default 8,16,16 on cpu, 16,28,52 on cuda)");
    cmd->add_option("--heads", o->heads, "heads (default 4 on cpu, 12 on cuda)");
    cmd->add_option("--head-dim", o->head_dim, "head dim d (default 64 on cpu, 128 on cuda)");
    cmd->add_option("--dtype", o->dtype, "f32/f64/bf16/f16 (default f32 on cpu, bf16 on cuda)");
    cmd->add_option("--iterations,-t", o->iterations, "Monarch iterations t")->capture_default_str();
    cmd->add_option("--clamp", o->clamp, "R-step clamp on cR")->capture_default_str();
    cmd->add_flag("--no-recompute", o->no_recompute, "skip the exact frame-0 recompute");
    cmd->add_option("--seed", o->seed, "seed of the generated inputs (0 .. 2^64-1)")->capture_default_str();
    cmd->add_option("--repeats", o->repeats, "timed runs per method (default 1 on cpu, 10 on cuda)");
    cmd->add_option("--png", o->png, "heat-map PNG to write (a .png name; an existing file must be a PNG)")
        ->capture_default_str();
    cmd->add_flag("--no-png", o->no_png, "write no PNG");
    cmd->add_flag("--progress", o->progress, "show progress on stderr even when it is not a terminal");
    return Command{cmd, [o] { return demo_command(*o); }};
}

} // namespace vmonarch::cli
