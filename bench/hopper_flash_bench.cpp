// hopper_flash_bench [--quick] [--hopper-only] [--only SUBSTRING] [--reps N]: times the portable flash kernel (launch_flash) and the Hopper kernel
// (launch_flash_hopper) on the same inputs, CUDA events, warm-up then the median of several repetitions,
// bf16, batch 1, random (non-zero) inputs:
//   R-step shapes at d = 128: 24 × 44 × 80 × 40 heads (HW = 3520 keys per frame) and 16 × 28 × 52 × 12 heads
//   (HW = 1456); at d = 64: CogVideoX's 13 × 30 × 45 × 48 heads (HW = 1350) and 13 × 60 × 90 × 12 heads (HW =
//   5400: the same kernels with 4× longer key ranges, to separate the main loop's rate from the per-tile
//   prologue and epilogue); with the pipeline's own views (MonarchPlan): first R-step (A+ent), middle R-step
//   (A+ent, row scale), last R-step (O+A+ent, row scale), and the first-frame recompute;
//   dense attention N = 23296, 12 heads (O, and O + LSE).
// --hopper-only skips the portable timings; --only runs just the rows whose name contains SUBSTRING (e.g.
// to profile one launch with ncu). The Hopper kernel's key-tile width follows VMONARCH_HOPPER_TILE, its schedule VMONARCH_HOPPER_MODE in
// builds with VMONARCH_EXPERIMENTS (src/cuda/flash_policy.hpp).
// Prints ms and TFLOP/s (R-step: 4·N·HW·d per head, 6·N·HW·d with the V output; dense: 4·N²·d per head).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "cuda/sm90/flash_sm90.hpp"
#include "cuda/common/kernel_params.hpp"
#include "cuda/flash_policy.hpp"
#include "cuda/monarch_plan.hpp"
#include "vmonarch/half.hpp"
#include "vmonarch/vmonarch.hpp"
#include "cuda_timing.hpp"

namespace {

using vmbench::check;
using vmbench::time_ms;

bool g_hopper_only = false;
const char* g_only = nullptr;

// Fill `bytes` of device memory with a 16-Mi-element block of random 16-bit floats (unit variance times
// `scale`), repeated. The pattern's period does not matter for timing; zeros would.
void fill_random16(void* dst, std::size_t count, float scale, unsigned seed) {
    const std::size_t block = std::min<std::size_t>(count, std::size_t(1) << 24);
    std::vector<std::uint16_t> host(block);
    std::uint64_t s = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (std::size_t i = 0; i < block; ++i) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        const double u = (double(s >> 11) + 0.5) / 9007199254740992.0;
        host[i] = vmonarch::float_to_bf16(float((2 * u - 1) * 1.7320508 * scale));
    }
    for (std::size_t o = 0; o < count; o += block) {
        const std::size_t n = std::min(block, count - o);
        check(cudaMemcpy(static_cast<std::uint16_t*>(dst) + o, host.data(), n * 2, cudaMemcpyHostToDevice), "fill");
    }
}

void fill_uniform_f32(void* dst, std::size_t count, float lo, float hi, unsigned seed) {
    std::vector<float> host(count);
    std::uint64_t s = 0x2545f4914f6cdd1dull * (seed + 3);
    for (auto& x : host) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        x = lo + (hi - lo) * float(double(s >> 11) / 9007199254740992.0);
    }
    check(cudaMemcpy(dst, host.data(), count * 4, cudaMemcpyHostToDevice), "fill f32");
}

struct Row {
    std::string name;
    double flop, ms_port, ms_hop;
};

void bench(std::vector<Row>& rows, const std::string& name, const vmonarch::cuda::FlashParams& p, double flop, int warm,
           int reps) {
    if (g_only != nullptr && name.find(g_only) == std::string::npos) return;
    Row r{name, flop, -1, -1};
    // launch_flash routes to the Hopper kernel where it applies; force the portable kernel for its timing.
    const vmonarch::cuda::FlashPolicy policy = vmonarch::cuda::flash_policy();
    vmonarch::cuda::FlashPolicy portable = policy;
    portable.sm90 = false;
    vmonarch::cuda::set_flash_policy(portable);
    if (!g_hopper_only) r.ms_port = time_ms([&] { vmonarch::cuda::launch_flash(p, nullptr, "bench portable"); }, warm, reps);
    vmonarch::cuda::set_flash_policy(policy);
    if (vmonarch::cuda::hopper_flash_supported(p))
        r.ms_hop = time_ms([&] { vmonarch::cuda::launch_flash_hopper(p, nullptr, "bench hopper"); }, warm, reps);
    rows.push_back(r);
    if (r.ms_port > 0) std::printf("%-34s portable %8.3f ms %6.1f TF/s", name.c_str(), r.ms_port, flop / r.ms_port * 1e-9);
    else std::printf("%-34s", name.c_str());
    if (r.ms_hop > 0 && r.ms_port < 0)
        std::printf("   hopper %8.3f ms %6.1f TF/s\n", r.ms_hop, flop / r.ms_hop * 1e-9);
    else if (r.ms_hop > 0)
        std::printf("   hopper %8.3f ms %6.1f TF/s   %.2fx\n", r.ms_hop, flop / r.ms_hop * 1e-9, r.ms_port / r.ms_hop);
    else
        std::printf("   hopper: not supported here\n");
    std::fflush(stdout);
}

} // namespace

// The pipeline's R-step views (first, middle, last) and the first-frame recompute of a T × Hh × Ww video
// with `H` heads of dimension d, bf16, batch 1. Row names: "TxHhxWwxHh " (d = 128) or "TxHhxWwxHh d64 ".
void bench_rsteps(std::vector<Row>& rows, std::int64_t T, std::int64_t Hh, std::int64_t Ww, std::int64_t H, int warm, int reps,
                  std::int64_t d = 128) {
    using vmonarch::DType;
    using vmonarch::Device;
    using vmonarch::TensorView;
    const std::int64_t HW = Hh * Ww, N = T * HW, B = 1;
    const std::string tag = std::to_string(T) + "x" + std::to_string(Hh) + "x" + std::to_string(Ww) + "x" + std::to_string(H) + "h " +
                            (d == 128 ? "" : "d" + std::to_string(d) + " ");
    const std::size_t elems = std::size_t(B * N * H * d);
    void *q, *k, *v, *out, *ws;
    check(cudaMalloc(&q, elems * 2), "malloc");
    check(cudaMalloc(&k, elems * 2), "malloc");
    check(cudaMalloc(&v, elems * 2), "malloc");
    check(cudaMalloc(&out, elems * 2), "malloc");
    vmonarch::detail::MonarchProblem mp;
    mp.q = TensorView::bshd(q, DType::bf16, Device::cuda, B, N, H, d);
    mp.k = TensorView::bshd(k, DType::bf16, Device::cuda, B, N, H, d);
    mp.v = TensorView::bshd(v, DType::bf16, Device::cuda, B, N, H, d);
    mp.out = TensorView::bshd(out, DType::bf16, Device::cuda, B, N, H, d);
    mp.batch = B; mp.heads = H; mp.q_tokens = mp.kv_tokens = N; mp.head_dim = mp.value_dim = d;
    mp.scale = 1.0 / std::sqrt(double(d));
    mp.grid = vmonarch::VideoGrid{T, Hh, Ww};
    mp.iterations = 3; // first, middle and last R-step views
    mp.cr_clamp = 0.1;
    const auto wl = vmonarch::cuda::monarch_workspace_layout(mp);
    check(cudaMalloc(&ws, wl.total), "malloc workspace");
    fill_random16(q, elems, 1.4f, 1);
    fill_random16(k, elems, 1.4f, 2);
    fill_random16(v, elems, 1.0f, 3);
    fill_random16(static_cast<char*>(ws) + wl.ar, elems, 1.4f, 4);
    fill_uniform_f32(static_cast<char*>(ws) + wl.cr, std::size_t(B * H * N), 0.5f, 2.f, 5);
    vmonarch::cuda::MonarchPlan plan(mp, ws);
    const double per = double(N) * double(HW) * double(d) * double(H) * B;
    bench(rows, tag + "R-step first (A+ent)", plan.rstep_params(0), 4 * per, warm, reps);
    bench(rows, tag + "R-step middle (A+ent, rs)", plan.rstep_params(1), 4 * per, warm, reps);
    bench(rows, tag + "R-step last (O+A+ent, rs)", plan.rstep_params(2), 6 * per, warm, reps);
    bench(rows, tag + "recompute (frame 0 vs all N)", plan.recompute_params(), 4.0 * HW * N * d * H * B, warm, reps);
    for (void* ptr : {q, k, v, out, ws}) cudaFree(ptr);
}

int main(int argc, char** argv) {
    bool quick = false;
    int reps_arg = 0;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quick") == 0) quick = true;
        else if (std::strcmp(argv[i], "--hopper-only") == 0) g_hopper_only = true;
        else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) g_only = argv[++i];
        else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps_arg = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "usage: hopper_flash_bench [--quick] [--hopper-only] [--only SUBSTRING] [--reps N]\n");
            return 2;
        }
    }
    const int warm = 2, reps = reps_arg > 0 ? reps_arg : quick ? 3 : 10;

    int dev = 0;
    check(cudaGetDevice(&dev), "device");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, dev), "properties");
    const vmonarch::cuda::FlashPolicy pol = vmonarch::cuda::flash_policy();
    const char* tile = pol.tile == vmonarch::cuda::FlashPolicy::Tile::narrow ? "narrow"
                       : pol.tile == vmonarch::cuda::FlashPolicy::Tile::wide ? "wide"
                                                                             : "per problem";
    std::printf("device: %s (sm_%d%d, %d SMs)%s  sm90 schedule %d  key tiles %s%s\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, pol.sm90 ? "" : "  [sm90 peer disabled]", pol.sm90_mode, tile,
                pol.sm90_stale_max ? "" : "  [no stale-offset softmax]");
    std::vector<Row> rows;
    const std::int64_t d = 128;

    bench_rsteps(rows, 24, 44, 80, 40, warm, reps);
    bench_rsteps(rows, 16, 28, 52, 12, warm, reps);
    bench_rsteps(rows, 13, 30, 45, 48, warm, reps, 64);
    bench_rsteps(rows, 13, 60, 90, 12, warm, reps, 64);
    { // dense, N = 23296 (16 × 28 × 52), 12 heads
        const std::int64_t N = 23296, H = 12, B = 1;
        const std::size_t elems = std::size_t(B * N * H * d);
        void *q, *k, *v, *out, *lse;
        check(cudaMalloc(&q, elems * 2), "malloc");
        check(cudaMalloc(&k, elems * 2), "malloc");
        check(cudaMalloc(&v, elems * 2), "malloc");
        check(cudaMalloc(&out, elems * 2), "malloc");
        check(cudaMalloc(&lse, std::size_t(B * H * N) * 4), "malloc");
        fill_random16(q, elems, 1.4f, 11);
        fill_random16(k, elems, 1.4f, 12);
        fill_random16(v, elems, 1.0f, 13);
        vmonarch::cuda::FlashParams f;
        f.elem = vmonarch::cuda::Elem::bf16;
        f.head_dim = int(d);
        const vmonarch::cuda::RowView rows_v{nullptr, N * H * d, d, N * H * d, H * d}; // BSHD, one segment
        f.q = rows_v; f.q.ptr = q;
        f.k = rows_v; f.k.ptr = k;
        f.v = rows_v; f.v.ptr = v;
        f.o = rows_v; f.o.ptr = out;
        f.len_q = f.len_k = N;
        f.segments = 1; f.heads = int(H); f.batch = int(B);
        f.scale = f.qk_scale = float(1.0 / std::sqrt(double(d)));
        const double flop = 4.0 * double(N) * double(N) * double(d) * double(H) * B;
        bench(rows, "dense N=23296 12h (O)", f, flop, warm, reps);
        f.lse = vmonarch::cuda::RowView{lse, H * N, N, H * N, 1};
        bench(rows, "dense N=23296 12h (O+lse)", f, flop, warm, reps);
        for (void* ptr : {q, k, v, out, lse}) cudaFree(ptr);
    }

    std::printf("\n| kernel | portable ms (TF/s) | hopper ms (TF/s) | speed-up |\n|---|---|---|---|\n");
    for (const Row& r : rows) {
        if (r.ms_hop > 0 && r.ms_port < 0)
            std::printf("| %s | - | %.3f (%.0f) | - |\n", r.name.c_str(), r.ms_hop, r.flop / r.ms_hop * 1e-9);
        else if (r.ms_hop > 0)
            std::printf("| %s | %.3f (%.0f) | %.3f (%.0f) | %.2fx |\n", r.name.c_str(), r.ms_port, r.flop / r.ms_port * 1e-9, r.ms_hop,
                        r.flop / r.ms_hop * 1e-9, r.ms_port / r.ms_hop);
        else
            std::printf("| %s | %.3f (%.0f) | - | - |\n", r.name.c_str(), r.ms_port, r.flop / r.ms_port * 1e-9);
    }
    return 0;
}
