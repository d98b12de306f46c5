// exact_groups_cuda_bench [--json FILE] [--rounds R] [--reps N] [--cases video,hunyuan,cogvideox]
//                         [--fill uniform|normal] [--long-q-tiles n1,n2,...] [--alone-only]: the exact key
// groups (spec §3b) and joint text+video sequences (spec §3c) from C++, with the shapes of
// bench/exact_groups_bench.py (bf16, batch 1, BHSD, no lse, frame-0 recompute on), each setting timed under the
// default schedule and under VMONARCH_EXACT_SCHEDULE=serial (the groups in order with partials) in alternating
// rounds, then each launch of the video forward at t = 2 with S = 0 and 1 and of CogVideoX's (t = 2) alone.
// CogVideoX (d = 64, where the sm90 flash peer has one key-tile width only) also runs with every flash problem
// on the portable sm80 peer ("sm80 peer": the policy's other choice), whole forwards and each launch alone.
// --long-q-tiles: CogVideoX also under FlashPolicy::sm90_long_q_tiles = n (query tiles per block for long key
// ranges at d = 64; 1 = one per block), whole forwards ("long q n") and the flash launches alone. --fill: q, k, v
// uniform (default) or normal of unit variance (the Python bench's torch.randn). --alone-only: the launches
// alone only (a fixed launch order for profilers: per schedule one whole forward, then each launch's warm-up
// and timed calls in the table's order). --profile "R-step 1,frames 1.. over text keys": those launches alone
// (default schedule) also once between cudaProfilerStart/Stop, for ncu --profile-from-start off.
// CUDA-event medians after warm-up. Prints a table naming the card and
// writes JSON. cuDNN's times come from the Python bench (same run on the GPU machine).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "cuda/flash_policy.hpp"
#include "cuda/monarch_plan.hpp"
#include "bench_json.hpp"
#include "cuda_timing.hpp"
#include "vmonarch/vmonarch.hpp"

namespace {

using vmbench::check;
using vmbench::time_ms;

// A uniform number in (0, 1) from a counter hash of (i, seed).
__device__ float hash_unit(std::size_t i, std::uint32_t seed) {
    std::uint32_t h = std::uint32_t(i) * 2654435761u ^ (seed * 0x9e3779b9u) ^ std::uint32_t(i >> 32);
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    return (float(h & 0xffffff) + 0.5f) / 16777216.f;
}

// Random bf16 of unit variance: uniform on ±√3, or normal (Box–Muller on two hashes).
__global__ void fill_random_bf16(std::uint16_t* p, std::size_t n, std::uint32_t seed, bool normal) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
        const float u = hash_unit(i, seed);
        const float x = normal ? sqrtf(-2.f * logf(u)) * cospif(2.f * hash_unit(i, seed + 7919u)) : (2.f * u - 1.f) * 1.7320508f;
        std::uint32_t bits = __float_as_uint(x);
        bits += 0x7fffu + ((bits >> 16) & 1u);
        p[i] = std::uint16_t(bits >> 16);
    }
}

struct Case {
    const char* name;
    std::int64_t T, H, W, heads, d, L, valid;
    bool text_first;
};
const Case kCases[] = {{"video", 24, 44, 80, 40, 128, 0, 0, false},
                       {"hunyuan", 33, 45, 80, 24, 128, 256, 200, false},
                       {"cogvideox", 13, 30, 45, 48, 64, 226, 226, true}};

struct Setting {
    int t;
    std::int64_t S, r; // r < 0: no window
};
const Setting kVideoSettings[] = {{2, 0, -1}, {1, 1, -1}, {2, 1, -1}, {2, 1, 1}};
const Setting kJointSettings[] = {{2, 0, -1}, {1, 1, -1}};

std::string setting_name(const Setting& s) {
    return "t=" + std::to_string(s.t) + " S=" + std::to_string(s.S) + (s.r >= 0 ? " r=" + std::to_string(s.r) : "");
}

struct Row {
    std::string which, what, schedule;
    double ms;
};

// Tokens [t0, t0 + n) of a [B, M, heads, d] view.
vmonarch::TensorView slice(vmonarch::TensorView v, std::int64_t t0, std::int64_t n) {
    v.data = static_cast<char*>(v.data) + t0 * v.strides[1] * 2;
    v.shape[1] = n;
    return v;
}

vmonarch::cuda::FlashParams dense_rows(const vmonarch::cuda::RowView& q, std::int64_t len_q, const vmonarch::cuda::RowView& k,
                                       const vmonarch::cuda::RowView& v, std::int64_t len_k, const vmonarch::cuda::RowView& o,
                                       const vmonarch::cuda::RowView& lse, const Case& c) {
    vmonarch::cuda::FlashParams f;
    f.head_dim = int(c.d);
    f.q = q, f.k = k, f.v = v, f.o = o, f.lse = lse;
    f.len_q = len_q;
    f.len_k = len_k;
    f.heads = int(c.heads);
    f.scale = f.qk_scale = float(1.0 / std::sqrt(double(c.d)));
    return f;
}

} // namespace

int main(int argc, char** argv) {
    std::string json_path = "exact_groups_cuda_bench.json", only, fill = "uniform";
    int rounds = 2, reps = 7;
    std::vector<int> long_q; // FlashPolicy::sm90_long_q_tiles values to time CogVideoX under
    bool alone_only = false;
    std::string profile; // launches alone (names after "t=2 S=s: ", comma-separated) to run once for ncu
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--json" && i + 1 < argc) json_path = argv[++i];
        else if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
        else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (a == "--cases" && i + 1 < argc) only = argv[++i];
        else if (a == "--fill" && i + 1 < argc) fill = argv[++i];
        else if (a == "--alone-only") alone_only = true;
        else if (a == "--profile" && i + 1 < argc) profile = argv[++i];
        else if (a == "--long-q-tiles" && i + 1 < argc) {
            for (std::string list = argv[++i]; !list.empty();) {
                const std::size_t comma = list.find(',');
                const int n = std::atoi(list.substr(0, comma).c_str());
                if (n < 1 || n > 16) {
                    std::fprintf(stderr, "exact_groups_cuda_bench: --long-q-tiles entries must be 1..16\n");
                    return 2;
                }
                long_q.push_back(n);
                list = comma == std::string::npos ? "" : list.substr(comma + 1);
            }
        } else {
            std::fprintf(stderr, "usage: exact_groups_cuda_bench [--json FILE] [--rounds R] [--reps N] [--cases a,b] "
                                 "[--fill uniform|normal] [--long-q-tiles n1,n2] [--alone-only] [--profile names]\n");
            return 2;
        }
    }
    if (fill != "uniform" && fill != "normal") {
        std::fprintf(stderr, "exact_groups_cuda_bench: --fill is '%s', expected uniform or normal\n", fill.c_str());
        return 2;
    }
    if (rounds < 1 || reps < 1) {
        std::fprintf(stderr, "exact_groups_cuda_bench: --rounds and --reps must be >= 1\n");
        return 2;
    }
    if (!vmonarch::cuda_available()) {
        std::fprintf(stderr, "no CUDA device\n");
        return 1;
    }
    const std::string card = vmonarch::cuda_device_name(0);
    std::printf("exact_groups_cuda_bench on %s, %d rounds, median of %d, %s inputs\n", card.c_str(), rounds, reps, fill.c_str());
    std::vector<Row> rows;
    const auto add = [&](const std::string& which, const std::string& what, const std::string& schedule, double ms) {
        rows.push_back({which, what, schedule, ms});
        std::printf("%-10s %-34s %-8s %10.3f ms\n", which.c_str(), what.c_str(), schedule.c_str(), ms);
        std::fflush(stdout);
    };

    for (const Case& c : kCases) {
        if (!only.empty() && ("," + only + ",").find("," + std::string(c.name) + ",") == std::string::npos) continue;
        const vmonarch::VideoGrid g{c.T, c.H, c.W};
        const std::int64_t N = g.tokens(), HW = g.frame_tokens(), M = N + c.L;
        const std::size_t elems = std::size_t(M) * c.heads * c.d;
        std::uint16_t *q, *k, *v, *o;
        check(cudaMalloc(&q, elems * 2), "malloc q");
        check(cudaMalloc(&k, elems * 2), "malloc k");
        check(cudaMalloc(&v, elems * 2), "malloc v");
        check(cudaMalloc(&o, elems * 2), "malloc o");
        const bool normal = fill == "normal";
        fill_random_bf16<<<1024, 256>>>(q, elems, 1, normal);
        fill_random_bf16<<<1024, 256>>>(k, elems, 2, normal);
        fill_random_bf16<<<1024, 256>>>(v, elems, 3, normal);
        check(cudaGetLastError(), "fill");
        using vmonarch::TensorView;
        const auto view = [&](void* p) { return TensorView::bhsd(p, vmonarch::DType::bf16, vmonarch::Device::cuda, 1, c.heads, M, c.d); };
        const TensorView qv = view(q), kv = view(k), vv = view(v), ov = view(o);
        const std::int64_t lens[1] = {c.valid};
        const int warm = 2;

        // Whole forwards, default schedule and serial, alternating.
        const Setting* settings = c.L > 0 ? kJointSettings : kVideoSettings;
        const int n_settings = c.L > 0 ? 2 : 4;
        const bool peers = std::string(c.name) == "cogvideox";
        const vmonarch::cuda::FlashPolicy policy0 = vmonarch::cuda::flash_policy();
        vmonarch::cuda::FlashPolicy sm80_policy = policy0;
        sm80_policy.sm90 = false;
        std::vector<std::string> schedules = {"default", "serial"};
        if (peers) schedules.push_back("sm80 peer");
        if (peers)
            for (const int n : long_q) schedules.push_back("long q " + std::to_string(n));
        // The policy a schedule runs under: the sm80 peer, or sm90_long_q_tiles = n.
        const auto policy_of = [&](const std::string& schedule) {
            vmonarch::cuda::FlashPolicy pol = schedule == "sm80 peer" ? sm80_policy : policy0;
            if (schedule.rfind("long q ", 0) == 0) pol.sm90_long_q_tiles = std::atoi(schedule.c_str() + 7);
            return pol;
        };
        for (int round = 0; round < (alone_only ? 0 : rounds); ++round)
            for (int si = 0; si < n_settings; ++si)
                for (const std::string& schedule : schedules) {
                    const Setting s = settings[si];
                    vmonarch::cuda::set_flash_policy(policy_of(schedule));
                    vmonarch::Options opt;
                    opt.iterations = s.t;
                    opt.sink_frames = s.S;
                    if (s.r >= 0) opt.window_radius = s.r;
                    if (schedule == "serial") setenv("VMONARCH_EXACT_SCHEDULE", "serial", 1);
                    else unsetenv("VMONARCH_EXACT_SCHEDULE");
                    const double ms = time_ms(
                        [&] {
                            if (c.L > 0)
                                vmonarch::joint_attention(qv, kv, vv, ov, g, c.L,
                                                          c.text_first ? vmonarch::TextPosition::first : vmonarch::TextPosition::last,
                                                          lens, opt, nullptr, nullptr);
                            else
                                vmonarch::attention(qv, kv, vv, ov, g, opt, nullptr, nullptr);
                        },
                        warm, reps);
                    add(c.name, setting_name(s) + " (round " + std::to_string(round + 1) + ")", schedule, ms);
                }
        unsetenv("VMONARCH_EXACT_SCHEDULE");
        vmonarch::cuda::set_flash_policy(policy0);

        // Each launch alone: video at t = 2 with S = 0 (the paper) and S = 1; CogVideoX at t = 2, S = 0 (text
        // first, all valid).
        std::vector<std::int64_t> sinks;
        if (std::string(c.name) == "video") sinks = {0, 1};
        if (std::string(c.name) == "cogvideox") sinks = {0};
        std::vector<std::string> alone_schedules = {"default"};
        if (peers) {
            alone_schedules.push_back("sm80 peer");
            for (const int n : long_q) alone_schedules.push_back("long q " + std::to_string(n));
        }
        for (const std::int64_t sink : sinks)
        for (const std::string& schedule : alone_schedules) {
            vmonarch::cuda::set_flash_policy(policy_of(schedule));
            const std::string alone = schedule == "default" ? "alone" : schedule == "sm80 peer" ? "sm80 alone" : schedule + " alone";
            const std::int64_t video0 = c.text_first ? c.L : 0, text0 = c.text_first ? 0 : N;
            vmonarch::detail::MonarchProblem p;
            p.q = slice(qv, video0, N), p.k = slice(kv, video0, N), p.v = slice(vv, video0, N), p.out = slice(ov, video0, N);
            p.batch = 1, p.heads = c.heads, p.q_tokens = p.kv_tokens = N, p.head_dim = p.value_dim = c.d;
            p.scale = 1.0 / std::sqrt(double(c.d));
            p.grid = g, p.iterations = 2, p.cr_clamp = 0.1, p.recompute_first_frame = true;
            p.sink_frames = sink;
            if (c.L > 0) {
                p.extra.present = true;
                p.extra.k = slice(kv, text0, c.L), p.extra.v = slice(vv, text0, c.L);
                p.extra.tokens = c.L;
                p.extra.lens = {c.valid};
            }
            void* ws = nullptr;
            check(cudaMalloc(&ws, vmonarch::cuda::monarch_workspace_layout(p).total), "malloc ws");
            vmonarch::cuda::MonarchPlan plan(p, ws);
            plan.run(nullptr); // realistic intermediates in the workspace
            check(cudaDeviceSynchronize(), "plan");
            using vmonarch::cuda::launch_flash;
            using vmonarch::cuda::launch_lstep;
            const std::string tag = "t=2 S=" + std::to_string(sink);
            // One launch alone: timed; the first of the --profile launches (default schedule) also once between
            // cudaProfilerStart and Stop, for ncu --profile-from-start off.
            const auto alone_row = [&](const std::string& what, const std::function<void()>& fn) {
                if (schedule == "default" && !profile.empty() && ("," + profile + ",").find("," + what.substr(tag.size() + 2) + ",") != std::string::npos) {
                    check(cudaDeviceSynchronize(), "before profile");
                    cudaProfilerStart();
                    fn();
                    check(cudaDeviceSynchronize(), "profiled launch");
                    cudaProfilerStop();
                }
                add(c.name, what, alone, time_ms(fn, warm, reps));
            };
            alone_row(tag + ": R-step 1", [&] { launch_flash(plan.rstep_params(0), nullptr, "bench"); });
            alone_row(tag + ": L-step 1", [&] { launch_lstep(plan.lstep_params(0), nullptr, "bench"); });
            alone_row(tag + ": R-step 2", [&] { launch_flash(plan.rstep_params(1), nullptr, "bench"); });
            alone_row(tag + (p.has_exact_groups() ? ": L-step 2 (merge)" : ": L-step 2"), [&] { launch_lstep(plan.lstep_params(1, true), nullptr, "bench"); });
            using vmonarch::cuda::user_rows;
            const auto rows = [&](const TensorView& t, std::int64_t t0, std::int64_t n) { return user_rows(slice(t, t0, n), 1); };
            float* lse_buf = nullptr; // [heads][M] f32
            check(cudaMalloc(&lse_buf, std::size_t(M) * c.heads * 4), "malloc lse");
            const vmonarch::cuda::RowView lse{lse_buf, c.heads * M, M, 0, 1};
            // Frame 0 over every key (the joint sequence's keys with text).
            alone_row(tag + ": frame 0 over all keys", [&] { launch_flash(dense_rows(rows(qv, video0, HW), HW, rows(kv, 0, M), rows(vv, 0, M), M, rows(ov, video0, HW), {}, c),
                                           nullptr, "bench"); });
            // The other frames' exact group: the sink frame's keys (video) or the text keys (CogVideoX).
            const std::int64_t g0 = c.L > 0 ? text0 : 0, glen = c.L > 0 ? c.L : HW;
            if (p.has_exact_groups())
                alone_row(tag + (c.L > 0 ? ": frames 1.. over text keys" : ": frames 1.. over sink keys"), [&] { launch_flash(dense_rows(rows(qv, video0 + HW, N - HW), N - HW, rows(kv, g0, glen), rows(vv, g0, glen), glen,
                                                          rows(ov, video0 + HW, N - HW), lse, c), nullptr, "bench"); });
            if (c.L > 0)
                alone_row(tag + ": text queries over all keys", [&] { launch_flash(dense_rows(rows(qv, text0, c.L), c.L, rows(kv, 0, M), rows(vv, 0, M), M, rows(ov, text0, c.L), {}, c),
                                               nullptr, "bench"); });
            check(cudaDeviceSynchronize(), "launches alone");
            cudaFree(lse_buf);
            cudaFree(ws);
        }
        vmonarch::cuda::set_flash_policy(policy0);
        check(cudaDeviceSynchronize(), "case done");
        cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o);
    }

    std::vector<std::string> json_rows;
    for (const auto& r : rows)
        json_rows.push_back(vmbench::format("{\"case\": \"%s\", \"what\": \"%s\", \"schedule\": \"%s\", \"ms\": %.4f}", r.which.c_str(), r.what.c_str(),
                                        r.schedule.c_str(), r.ms));
    return vmbench::write_rows_json(json_path, card, vmbench::format("  \"reps\": %d,\n", reps), json_rows);
}
