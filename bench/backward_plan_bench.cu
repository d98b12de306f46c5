// backward_plan_bench [--json FILE] [--rounds R] [--reps N] [--small|--large] [--lstep-kernels]: the whole CUDA backward (spec §7) from C++
// at 16×28×52×12h and 24×44×80×40h (bf16, d 128, batch 1, BSHD, t = 2, frame-0 recompute on), lean and saved
// mode, paper gradient (and, in the first round, the saved mode's exact gradient and deterministic mode), under
// VMONARCH_BACKWARD_SCHEDULE=serial and =concurrent in alternating rounds (the same process), through the public
// vmonarch::attention_backward; then, per schedule and mode, each stage of BackwardPlan (backward_plan.hpp)
// alone on one stream, their sum, and the plan's run on one stream for comparison with the overlapped whole.
// CUDA-event medians after warm-up; the time does not depend on the values. Prints a table naming the card and
// writes JSON. cuDNN's backward comes from bench/backward_bench.py (Python, torch SDPA).
// --lstep-kernels instead compares the L-step backward kernels (VMONARCH_LSTEP_BWD=cuda-cores, =tensor-cores and
// =tensor-cores-pair, alternating, the default schedule): the whole backward (saved and lean) and the L-step stages alone.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/backward_problem.hpp"
#include "cuda/bwd/backward_plan.hpp"
#include "bench_json.hpp"
#include "cuda_timing.hpp"
#include "vmonarch/backward.hpp"
#include "vmonarch/vmonarch.hpp"

namespace {

using vmbench::check;
using vmbench::time_ms;

// Uniform random bf16 of unit variance from a counter hash.
__global__ void fill_random_bf16(std::uint16_t* p, std::size_t n, std::uint32_t seed) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
        std::uint32_t h = std::uint32_t(i) * 2654435761u ^ (seed * 0x9e3779b9u) ^ std::uint32_t(i >> 32);
        h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
        const float u = (float(h & 0xffffff) + 0.5f) / 16777216.f;
        std::uint32_t bits = __float_as_uint((2.f * u - 1.f) * 1.7320508f);
        bits += 0x7fffu + ((bits >> 16) & 1u);
        p[i] = std::uint16_t(bits >> 16);
    }
}

struct Shape {
    const char* name;
    std::int64_t T, H, W, heads, d;
};
const Shape kShapes[] = {{"16x28x52x12h", 16, 28, 52, 12, 128}, {"24x44x80x40h", 24, 44, 80, 40, 128}};

struct Row {
    std::string shape, what, schedule;
    double ms;
};

const char* schedule_name(vmonarch::cuda::BackwardSchedule s) {
    using vmonarch::cuda::BackwardSchedule;
    return s == BackwardSchedule::serial ? "serial" : s == BackwardSchedule::concurrent ? "concurrent" : "auto";
}

void set_schedule(vmonarch::cuda::BackwardSchedule s) { setenv("VMONARCH_BACKWARD_SCHEDULE", schedule_name(s), 1); }

} // namespace

int main(int argc, char** argv) {
    std::string json_path = "backward_plan_bench.json";
    int rounds = 2, reps = 7;
    bool small_only = false, large_only = false, lstep_kernels = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--json" && i + 1 < argc) json_path = argv[++i];
        else if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
        else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (a == "--small") small_only = true;
        else if (a == "--large") large_only = true;
        else if (a == "--lstep-kernels") lstep_kernels = true;
        else {
            std::fprintf(stderr, "usage: backward_plan_bench [--json FILE] [--rounds R] [--reps N] [--small|--large] [--lstep-kernels]\n");
            return 2;
        }
    }
    if (rounds < 1 || reps < 1) {
        std::fprintf(stderr, "backward_plan_bench: --rounds and --reps must be >= 1\n");
        return 2;
    }
    if (!vmonarch::cuda_available()) {
        std::fprintf(stderr, "no CUDA device\n");
        return 1;
    }
    const std::string card = vmonarch::cuda_device_name(0);
    std::printf("backward_plan_bench on %s, %d rounds, median of %d\n", card.c_str(), rounds, reps);
    std::vector<Row> rows;
    const auto add = [&](const std::string& shape, const std::string& what, const std::string& schedule, double ms) {
        rows.push_back({shape, what, schedule, ms});
        std::printf("%-14s %-44s %-10s %10.3f ms\n", shape.c_str(), what.c_str(), schedule.c_str(), ms);
        std::fflush(stdout);
    };
    using vmonarch::cuda::BackwardSchedule;
    const BackwardSchedule schedules[2] = {BackwardSchedule::serial, BackwardSchedule::concurrent};

    for (const Shape& s : kShapes) {
        if ((small_only && s.T != 16) || (large_only && s.T == 16)) continue;
        const vmonarch::VideoGrid g{s.T, s.H, s.W};
        const std::int64_t N = g.tokens();
        const std::size_t elems = std::size_t(N) * s.heads * s.d;
        std::uint16_t *q, *k, *v, *o, *dout, *dq, *dk, *dv;
        float* lse;
        for (std::uint16_t** p : {&q, &k, &v, &o, &dout, &dq, &dk, &dv}) check(cudaMalloc(p, elems * 2), "malloc");
        check(cudaMalloc(&lse, std::size_t(N) * s.heads * 4), "malloc lse");
        fill_random_bf16<<<1024, 256>>>(q, elems, 1);
        fill_random_bf16<<<1024, 256>>>(k, elems, 2);
        fill_random_bf16<<<1024, 256>>>(v, elems, 3);
        fill_random_bf16<<<1024, 256>>>(dout, elems, 4);
        check(cudaGetLastError(), "fill");
        using vmonarch::TensorView;
        const auto view = [&](void* p) { return TensorView::bshd(p, vmonarch::DType::bf16, vmonarch::Device::cuda, 1, N, s.heads, s.d); };
        const TensorView qv = view(q), kv = view(k), vv = view(v), ov = view(o), dov = view(dout);
        const TensorView dqv = view(dq), dkv = view(dk), dvv = view(dv);
        const vmonarch::LseView lv = vmonarch::LseView::contiguous(lse, vmonarch::DType::f32, vmonarch::Device::cuda, 1, s.heads, N);
        vmonarch::Options opt;
        opt.iterations = 2;
        opt.recompute_first_frame = true;
        vmonarch::SavedState state;
        vmonarch::attention_training(qv, kv, vv, ov, lv, g, opt, state);
        check(cudaDeviceSynchronize(), "training forward");
        const int warm = 2;

        if (lstep_kernels) { // the L-step backward kernels, alternating, whole and stages alone
            const char* kernels[4] = {"cuda-cores", "tensor-cores", "tensor-cores-pair", "tensor-cores-quad"};
            for (int round = 0; round < rounds; ++round)
                for (const bool saved : {true, false})
                    for (const char* kern : kernels) {
                        setenv("VMONARCH_LSTEP_BWD", kern, 1);
                        vmonarch::BackwardOptions bo;
                        bo.saved = saved ? &state : nullptr;
                        const double ms = time_ms(
                            [&] { vmonarch::attention_backward(qv, kv, vv, ov, lv, dov, dqv, dkv, dvv, g, opt, nullptr, bo); },
                            warm, reps);
                        add(s.name, std::string("backward, ") + (saved ? "saved" : "lean") + " (round " + std::to_string(round + 1) + ")",
                            kern, ms);
                    }
            vmonarch::detail::BackwardProblem p;
            static_cast<vmonarch::detail::MonarchProblem&>(p) =
                vmonarch::detail::check_monarch("backward_plan_bench", qv, kv, vv, ov, g, opt, &lv);
            p.dout = dov, p.dq = dqv, p.dk = dkv, p.dv = dvv;
            p.saved = state.data();
            const BackwardSchedule sch = BackwardSchedule::serial;
            const vmonarch::cuda::BackwardWorkspaceLayout w = vmonarch::cuda::backward_workspace_layout(p, sch);
            void* ws = nullptr;
            check(cudaMalloc(&ws, w.total), "malloc workspace");
            const vmonarch::cuda::BackwardPlan plan(p, ws, sch);
            plan.run(nullptr);
            check(cudaDeviceSynchronize(), "plan");
            for (const vmonarch::cuda::BackwardStage& st : plan.stages()) {
                if (st.name.rfind("L-step", 0) != 0) continue;
                for (const char* kern : kernels) {
                    setenv("VMONARCH_LSTEP_BWD", kern, 1);
                    add(s.name, "saved: " + st.name, kern, time_ms([&] { st.launch(nullptr); }, warm, reps));
                }
            }
            check(cudaDeviceSynchronize(), "L-step stages");
            cudaFree(ws);
            unsetenv("VMONARCH_LSTEP_BWD");
            for (std::uint16_t* ptr : {q, k, v, o, dout, dq, dk, dv}) cudaFree(ptr);
            cudaFree(lse);
            continue;
        }

        // The whole backward through the public entry point, schedules alternating.
        struct Mode {
            const char* name;
            bool saved, entropy, deterministic;
        };
        const Mode modes[] = {{"lean", false, false, false},
                              {"saved", true, false, false},
                              {"saved, exact gradient", true, true, false},
                              {"saved, deterministic", true, false, true}};
        for (int round = 0; round < rounds; ++round)
            for (const Mode& m : modes)
                for (const BackwardSchedule sch : schedules) {
                    if (round > 0 && (m.entropy || m.deterministic)) continue; // those once: the time budget

                    set_schedule(sch);
                    vmonarch::BackwardOptions bo;
                    bo.saved = m.saved ? &state : nullptr;
                    bo.entropy_grad = m.entropy;
                    bo.deterministic = m.deterministic;
                    const double ms = time_ms(
                        [&] { vmonarch::attention_backward(qv, kv, vv, ov, lv, dov, dqv, dkv, dvv, g, opt, nullptr, bo); },
                        warm, reps);
                    add(s.name, std::string("backward, ") + m.name + " (round " + std::to_string(round + 1) + ")",
                        schedule_name(sch), ms);
                }

        // Each stage alone (one stream), per schedule and mode (paper gradient).
        for (const bool saved : {false, true})
            for (const BackwardSchedule sch : schedules) {
                vmonarch::detail::BackwardProblem p;
                static_cast<vmonarch::detail::MonarchProblem&>(p) =
                    vmonarch::detail::check_monarch("backward_plan_bench", qv, kv, vv, ov, g, opt, &lv);
                p.dout = dov, p.dq = dqv, p.dk = dkv, p.dv = dvv;
                p.saved = saved ? state.data() : nullptr;
                const vmonarch::cuda::BackwardWorkspaceLayout w = vmonarch::cuda::backward_workspace_layout(p, sch);
                void* ws = nullptr;
                check(cudaMalloc(&ws, w.total), "malloc workspace");
                const vmonarch::cuda::BackwardPlan plan(p, ws, sch);
                plan.run(nullptr); // realistic intermediates in the workspace
                check(cudaDeviceSynchronize(), "plan");
                const std::string mode = saved ? "saved" : "lean";
                add(s.name, mode + ": workspace MiB", schedule_name(sch), double(w.total) / (1024.0 * 1024.0));
                double sum = 0;
                for (const vmonarch::cuda::BackwardStage& st : plan.stages()) {
                    const double ms = time_ms([&] { st.launch(nullptr); }, warm, reps);
                    sum += ms;
                    add(s.name, mode + ": " + st.name + (st.side ? " [side]" : ""), schedule_name(sch), ms);
                }
                add(s.name, mode + ": sum of the stages", schedule_name(sch), sum);
                add(s.name, mode + ": plan on one stream", schedule_name(sch), time_ms([&] { plan.run(nullptr); }, warm, reps));
                check(cudaDeviceSynchronize(), "stages");
                cudaFree(ws);
            }
        unsetenv("VMONARCH_BACKWARD_SCHEDULE");
        check(cudaDeviceSynchronize(), "shape done");
        for (std::uint16_t* p : {q, k, v, o, dout, dq, dk, dv}) cudaFree(p);
        cudaFree(lse);
    }

    std::vector<std::string> json_rows;
    for (const auto& r : rows)
        json_rows.push_back(vmbench::format("{\"shape\": \"%s\", \"what\": \"%s\", \"schedule\": \"%s\", \"ms\": %.4f}", r.shape.c_str(), r.what.c_str(),
                                        r.schedule.c_str(), r.ms));
    return vmbench::write_rows_json(json_path, card, vmbench::format("  \"reps\": %d,\n", reps), json_rows);
}
