// vmonarch_bench [--json FILE] [--quick] [--shape i]: times, with CUDA events (warm-up, then the median of
// several repetitions; inputs random bf16), VMonarch forward at t = 1, 2, 3 with the first-frame recompute
// on and off, each kernel of the t = 2 forward separately, our dense kernel, and a device copy for the
// bandwidth ceiling. d = 128, bf16, batch 1, BSHD. Prints a table naming the card and writes JSON.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "cuda/monarch_plan.hpp"
#include "vmonarch/vmonarch.hpp"
#include "bench_json.hpp"
#include "cuda_timing.hpp"

namespace {

using vmbench::check;
using vmbench::time_ms;

// Uniform-ish random bf16 values from a counter hash (no zeros; inputs must not be trivial).
__global__ void fill_random_bf16(std::uint16_t* p, std::size_t n, std::uint32_t seed, float scale) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
        std::uint32_t h = std::uint32_t(i) * 2654435761u ^ (seed * 0x9e3779b9u) ^ std::uint32_t(i >> 32);
        h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
        const float u = (float(h & 0xffffff) + 0.5f) / 16777216.f; // (0,1)
        const float x = (2.f * u - 1.f) * scale * 1.7320508f;      // unit variance × scale
        std::uint32_t bits = __float_as_uint(x);
        bits += 0x7fffu + ((bits >> 16) & 1u);
        p[i] = std::uint16_t(bits >> 16);
    }
}

struct Shape {
    std::int64_t T, H, W, heads;
};
const Shape kShapes[] = {{16, 28, 52, 12}, {21, 30, 52, 12}, {36, 28, 52, 12}, {21, 45, 80, 40}, {24, 44, 80, 40}};

struct Row {
    std::string shape, what;
    double ms, tflops, gbps;
};

} // namespace

int main(int argc, char** argv) {
    std::string json_path = "bench_results.json";
    bool quick = false;
    int only = -1;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--json" && i + 1 < argc) json_path = argv[++i];
        else if (a == "--quick") quick = true;
        else if (a == "--shape" && i + 1 < argc) only = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "usage: vmonarch_bench [--json FILE] [--quick] [--shape i]\n");
            return 2;
        }
    }
    if (!vmonarch::cuda_available()) {
        std::fprintf(stderr, "no CUDA device\n");
        return 1;
    }
    const std::string card = vmonarch::cuda_device_name(0);
    std::printf("vmonarch_bench on %s\n", card.c_str());
    std::vector<Row> rows;
    const int d = 128;

    // Copy bandwidth ceiling: 2 GiB device-to-device, bytes read + written.
    double copy_gbps = 0;
    {
        const std::size_t bytes = std::size_t(2) << 30;
        void *a = nullptr, *b = nullptr;
        check(cudaMalloc(&a, bytes), "malloc");
        check(cudaMalloc(&b, bytes), "malloc");
        check(cudaMemset(a, 1, bytes), "memset");
        const double ms = time_ms([&] { check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice), "copy"); }, 2, 10);
        copy_gbps = 2.0 * bytes / (ms * 1e-3) / 1e9;
        cudaFree(a);
        cudaFree(b);
        rows.push_back({"-", "device copy 2 GiB", ms, 0, copy_gbps});
        std::printf("device copy: %.1f GB/s (read + write)\n", copy_gbps);
    }

    for (int si = 0; si < 5; ++si) {
        if (only >= 0 && si != only) continue;
        const Shape s = kShapes[si];
        const vmonarch::VideoGrid g{s.T, s.H, s.W};
        const std::int64_t N = g.tokens(), HW = g.frame_tokens();
        const std::size_t elems = std::size_t(N) * s.heads * d;
        const std::string sname = std::to_string(s.T) + "x" + std::to_string(s.H) + "x" + std::to_string(s.W) + "x" + std::to_string(s.heads) + "h";
        std::uint16_t *q, *k, *v, *o;
        float* lse;
        check(cudaMalloc(&q, elems * 2), "malloc q");
        check(cudaMalloc(&k, elems * 2), "malloc k");
        check(cudaMalloc(&v, elems * 2), "malloc v");
        check(cudaMalloc(&o, elems * 2), "malloc o");
        check(cudaMalloc(&lse, std::size_t(N) * s.heads * 4), "malloc lse");
        fill_random_bf16<<<1024, 256>>>(q, elems, 1, 1.0f);
        fill_random_bf16<<<1024, 256>>>(k, elems, 2, 1.0f);
        fill_random_bf16<<<1024, 256>>>(v, elems, 3, 1.0f);
        check(cudaGetLastError(), "fill");
        using vmonarch::TensorView;
        const auto qv = TensorView::bshd(q, vmonarch::DType::bf16, vmonarch::Device::cuda, 1, N, s.heads, d);
        const auto kv = TensorView::bshd(k, vmonarch::DType::bf16, vmonarch::Device::cuda, 1, N, s.heads, d);
        const auto vv = TensorView::bshd(v, vmonarch::DType::bf16, vmonarch::Device::cuda, 1, N, s.heads, d);
        const auto ov = TensorView::bshd(o, vmonarch::DType::bf16, vmonarch::Device::cuda, 1, N, s.heads, d);
        const auto lv = vmonarch::LseView::contiguous(lse, vmonarch::DType::f32, vmonarch::Device::cuda, 1, s.heads, N);
        const bool big = N * s.heads > 2000000;
        const int warm = 2, reps = quick ? 3 : (big ? 7 : 15);

        for (int t = 1; t <= 3; ++t)
            for (int rc = 1; rc >= 0; --rc) {
                if (quick && t != 2) continue;
                vmonarch::Options opt;
                opt.iterations = t;
                opt.recompute_first_frame = rc != 0;
                const double ms = time_ms([&] { vmonarch::attention(qv, kv, vv, ov, g, opt, &lv); }, warm, reps);
                const double fl = vmonarch::flops(g, d, s.heads, 1, opt).vmonarch;
                const std::string what = "vmonarch t=" + std::to_string(t) + (rc ? " +recompute" : "");
                rows.push_back({sname, what, ms, fl / (ms * 1e-3) / 1e12, 0});
            }

        // Each kernel of the t = 2 forward with recompute, through the internal plan.
        {
            vmonarch::detail::MonarchProblem p;
            p.q = qv; p.k = kv; p.v = vv; p.out = ov; p.lse = &lv;
            p.batch = 1; p.heads = s.heads; p.q_tokens = p.kv_tokens = N; p.head_dim = p.value_dim = d;
            p.scale = 1.0 / std::sqrt(double(d));
            p.grid = g; p.iterations = 2; p.cr_clamp = 0.1; p.recompute_first_frame = true;
            void* ws = nullptr;
            check(cudaMalloc(&ws, vmonarch::cuda::monarch_workspace_layout(p).total), "malloc ws");
            vmonarch::cuda::MonarchPlan plan(p, ws);
            plan.run(nullptr); // fills the workspace with realistic intermediates
            const double heads = double(s.heads), nd = double(N) * d;
            const double r_fl = 4.0 * N * HW * d * heads, r_last_fl = 6.0 * N * HW * d * heads;
            auto add = [&](const std::string& what, double ms, double fl, double bytes) {
                rows.push_back({sname, what, ms, fl / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9});
            };
            double ms = time_ms([&] { vmonarch::cuda::launch_flash(plan.rstep_params(0), nullptr, "bench"); }, warm, reps);
            add("R-step 1 (Q in place, K value)", ms, r_fl, 0);
            ms = time_ms([&] { vmonarch::cuda::launch_flash(plan.rstep_params(1), nullptr, "bench"); }, warm, reps);
            add("R-step 2 (row scale, K+V values)", ms, r_last_fl, 0);
            const double l_fl = 4.0 * N * s.T * d * heads;
            const double lmid_bytes = heads * (3 * nd * 2 + 2 * double(N) * 4);
            const double llast_bytes = heads * (4 * nd * 2 + 2 * double(N) * 4);
            ms = time_ms([&] { vmonarch::cuda::launch_lstep(plan.lstep_params(0), nullptr, "bench"); }, warm, reps);
            add("L-step 1 (aR, cR)", ms, l_fl, lmid_bytes);
            ms = time_ms([&] { vmonarch::cuda::launch_lstep(plan.lstep_params(1), nullptr, "bench"); }, warm, reps);
            add("L-step 2 (O, lse)", ms, l_fl, llast_bytes);
            ms = time_ms([&] { vmonarch::cuda::launch_flash(plan.recompute_params(), nullptr, "bench"); }, warm, reps);
            add("recompute frame 0", ms, 4.0 * HW * N * d * heads, 0);
            cudaFree(ws);
        }

        // Our dense kernel over all N tokens.
        {
            const int dreps = quick ? 2 : (big ? 3 : 7);
            const double ms = time_ms([&] { vmonarch::dense_attention(qv, kv, vv, ov, std::nullopt, &lv); }, 1, dreps);
            const double fl = 4.0 * double(N) * N * d * s.heads;
            rows.push_back({sname, "dense (ours)", ms, fl / (ms * 1e-3) / 1e12, 0});
        }
        check(cudaDeviceSynchronize(), "shape done");
        cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(lse);
        for (const auto& r : rows)
            if (r.shape == sname)
                std::printf("%-16s %-34s %10.3f ms %8.1f TFLOP/s %8.1f GB/s\n", r.shape.c_str(), r.what.c_str(), r.ms, r.tflops, r.gbps);
        std::fflush(stdout);
    }

    std::vector<std::string> json_rows;
    for (const auto& r : rows)
        json_rows.push_back(vmbench::format("{\"shape\": \"%s\", \"what\": \"%s\", \"ms\": %.4f, \"tflops\": %.2f, \"gbps\": %.1f}", r.shape.c_str(),
                                        r.what.c_str(), r.ms, r.tflops, r.gbps));
    return vmbench::write_rows_json(json_path, card, vmbench::format("  \"copy_gbps\": %.1f,\n", copy_gbps), json_rows);
}
