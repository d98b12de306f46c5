// flash_bwd_bench [--reps N] [--big] [--d64] [--hopper-only] [--prepared-only] [--no-det] [--only SUBSTRING]
// [--schedule coop|spec|coop-prep|spec-prep|coop-pipe]: CUDA-event timings of the flash
// backward kernel (launch_flash_bwd, spec §7.5 and §7.2) on its own, bf16, d = 128 (--d64: 64), batch 1, random
// inputs, at 16 × 28 × 52 × 12 heads (HW = 1456, N = 23296; with --big 24 × 44 × 80 × 40 heads: HW = 3520,
// N = 84480):
//   R-step backward, last iteration (row scale, K and V values: dA and dY), middle iteration (row scale, dA),
//   each with and without the entropy term; the dense frame-0 recompute backward (1456 queries over all N keys,
//   dy = dO); each also in deterministic mode (not with --no-det); on each peer: the portable kernels (the
//   flash policy's sm90 peer off; not with --hopper-only) and the Hopper kernel (sm90/flash_bwd_sm90.hpp)
//   under each of its schedules (sm90-coop: cooperative, sm90-spec: specialized, sm90-coop-prep and
//   sm90-spec-prep: the same in the prepared form, sm90-coop-pipe: the pipelined cooperative prepared form;
//   --prepared-only: the last three) where the device and the build have it. --only keeps the cases whose name
//   contains SUBSTRING, --schedule the one Hopper schedule (both to put one kernel under a profiler).
// Prints ms and TFLOP/s of the matrix products the kernel does: 2·d per (query, key) pair and product, i.e.
// S, dP's ⟨dA, K⟩ and ⟨dY, V⟩, dV, dK's two, dq (7 products with both values, 5 with one).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90.hpp"
#include "cuda/flash_policy.hpp"
#include "cuda_timing.hpp"
#include "vmonarch/half.hpp"

namespace {

using vmbench::check;
using vmbench::time_ms;
using vmonarch::cuda::FlashBwdParams;
using vmonarch::cuda::RowView;

struct DeviceArray {
    void* ptr = nullptr;
    explicit DeviceArray(std::size_t bytes) { check(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
    ~DeviceArray() { cudaFree(ptr); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
};

std::uint64_t g_state = 0x9e3779b97f4a7c15ull;
double uniform01() {
    g_state ^= g_state << 13; g_state ^= g_state >> 7; g_state ^= g_state << 17;
    return (double(g_state >> 11) + 0.5) / 9007199254740992.0;
}
void fill_bf16(const DeviceArray& a, std::size_t count, double scale) {
    std::vector<std::uint16_t> h(count);
    for (auto& x : h) x = vmonarch::float_to_bf16(float((2 * uniform01() - 1) * 1.7320508 * scale));
    check(cudaMemcpy(a.ptr, h.data(), count * 2, cudaMemcpyHostToDevice), "upload");
}
void fill_f32(const DeviceArray& a, std::size_t count, double lo, double hi) {
    std::vector<float> h(count);
    for (auto& x : h) x = float(lo + (hi - lo) * uniform01());
    check(cudaMemcpy(a.ptr, h.data(), count * 4, cudaMemcpyHostToDevice), "upload");
}

} // namespace

int main(int argc, char** argv) {
    int reps = 20;
    bool big = false, d64 = false, hopper_only = false, prepared_only = false, no_det = false;
    const char* only = nullptr;
    const char* schedule_only = nullptr;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--big")) big = true;
        else if (!std::strcmp(argv[i], "--d64")) d64 = true;
        else if (!std::strcmp(argv[i], "--hopper-only")) hopper_only = true;
        else if (!std::strcmp(argv[i], "--prepared-only")) prepared_only = true;
        else if (!std::strcmp(argv[i], "--no-det")) no_det = true;
        else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!std::strcmp(argv[i], "--schedule") && i + 1 < argc) schedule_only = argv[++i];
        else {
            std::fprintf(stderr, "flash_bwd_bench: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    const int T = big ? 24 : 16, Hh = big ? 44 : 28, Ww = big ? 80 : 52, HW = Hh * Ww, H = big ? 40 : 12, d = d64 ? 64 : 128;
    const std::int64_t N = std::int64_t(T) * HW;
    const std::size_t vec = std::size_t(N) * H * d, rows = std::size_t(N) * H;
    DeviceArray q(vec * 2), k(vec * 2), v(vec * 2), da(vec * 2), dy(vec * 2);
    DeviceArray lse(rows * 4), rs(rows * 4), dent(rows * 4), drow(rows * 4), dq(vec * 4), dk(vec * 4), dv(vec * 4);
    fill_bf16(q, vec, 1.0); fill_bf16(k, vec, 1.0); fill_bf16(v, vec, 1.0); fill_bf16(da, vec, 1.0); fill_bf16(dy, vec, 1.0);
    fill_f32(lse, rows, 6.0, 8.0); fill_f32(rs, rows, 0.05, 2.0); fill_f32(dent, rows, -0.5, 0.5); fill_f32(drow, rows, -1.0, 1.0);
    check(cudaMemset(dq.ptr, 0, vec * 4), "memset");
    check(cudaMemset(dk.ptr, 0, vec * 4), "memset");
    check(cudaMemset(dv.ptr, 0, vec * 4), "memset");

    std::printf("flash backward, bf16, d=%d, %dx%dx%d x %d heads (HW=%d, N=%lld)\n", d, T, Hh, Ww, H, HW, (long long)N);
    std::printf("%-40s %-14s %10s %10s\n", "case", "peer", "ms", "TFLOP/s");
    const vmonarch::cuda::FlashPolicy env_policy = vmonarch::cuda::flash_policy();
    // Views in [b, h, frame, row] order: 16-bit operands BSHD (the user's layout), f32 rows [h][n].
    const auto vec_view = [&](void* p, bool dense) {
        return dense ? RowView{p, std::int64_t(vec), d, 0, std::int64_t(H) * d}
                     : RowView{p, std::int64_t(vec), d, std::int64_t(HW) * H * d, std::int64_t(H) * d};
    };
    const auto row_view = [&](void* p, bool dense) { return RowView{p, std::int64_t(rows), N, dense ? 0 : HW, 1}; };
    struct Case {
        const char* name;
        bool dense, rs, da, dy, dent;
    };
    const Case cases[] = {
        {"R-step last (rs, dA, dY)", false, true, true, true, false},
        {"R-step last + entropy", false, true, true, true, true},
        {"R-step middle (rs, dA)", false, true, true, false, false},
        {"R-step middle + entropy", false, true, true, false, true},
        {"R-step first (dA)", false, false, true, false, false},
        {"dense frame-0 recompute (dY = dO)", true, false, false, true, false},
    };
    using vmonarch::cuda::FlashBwdSm90Schedule;
    // The peers: portable (unless --hopper-only), then the Hopper kernel under each schedule.
    struct Peer {
        bool sm90;
        FlashBwdSm90Schedule schedule;
    };
    std::vector<Peer> peers;
    if (!hopper_only && !prepared_only) peers.push_back({false, FlashBwdSm90Schedule::cooperative});
    if (!prepared_only) {
        peers.push_back({true, FlashBwdSm90Schedule::cooperative});
        peers.push_back({true, FlashBwdSm90Schedule::specialized});
    }
    peers.push_back({true, FlashBwdSm90Schedule::cooperative_prepared});
    peers.push_back({true, FlashBwdSm90Schedule::specialized_prepared});
    peers.push_back({true, FlashBwdSm90Schedule::cooperative_pipelined});
    const FlashBwdSm90Schedule env_schedule = vmonarch::cuda::flash_bwd_sm90_schedule();
    const auto short_name = [](FlashBwdSm90Schedule s) {
        switch (s) {
        case FlashBwdSm90Schedule::specialized: return "spec";
        case FlashBwdSm90Schedule::cooperative_prepared: return "coop-prep";
        case FlashBwdSm90Schedule::specialized_prepared: return "spec-prep";
        case FlashBwdSm90Schedule::cooperative_pipelined: return "coop-pipe";
        default: return "coop";
        }
    };
    for (const Case& c : cases)
        for (const Peer& peer : peers)
        for (bool det : {false, true}) {
            if (det && no_det) continue;
            if (only != nullptr && std::string(c.name).find(only) == std::string::npos) continue;
            if (schedule_only != nullptr && (!peer.sm90 || std::strcmp(short_name(peer.schedule), schedule_only) != 0)) continue;
            const bool sm90 = peer.sm90;
            vmonarch::cuda::FlashPolicy pol = env_policy;
            pol.sm90 = sm90 && env_policy.sm90;
            vmonarch::cuda::set_flash_policy(pol);
            vmonarch::cuda::set_flash_bwd_sm90_schedule(peer.schedule);
            FlashBwdParams p;
            p.head_dim = d;
            p.q = vec_view(q.ptr, c.dense);
            p.k = vec_view(k.ptr, c.dense);
            if (c.dy) {
                p.v = vec_view(v.ptr, c.dense);
                p.dy = vec_view(dy.ptr, c.dense);
                p.dv = vec_view(dv.ptr, c.dense);
            }
            if (c.da) p.da = vec_view(da.ptr, c.dense);
            p.lse = row_view(lse.ptr, c.dense);
            if (c.rs) p.rs = row_view(rs.ptr, c.dense);
            if (c.dent) p.dent = row_view(dent.ptr, c.dense);
            p.drow = row_view(drow.ptr, c.dense);
            p.dq = vec_view(dq.ptr, c.dense);
            p.dk = vec_view(dk.ptr, c.dense);
            p.len_q = HW;
            p.len_k = c.dense ? N : HW;
            p.segments = c.dense ? 1 : T;
            p.heads = H;
            p.scale = p.qk_scale = float(1.0 / std::sqrt(double(d)));
            p.clamp = 0.1f;
            p.deterministic = det;
            const bool hopper = vmonarch::cuda::flash_bwd_sm90_supported(p);
            if (sm90 && !hopper) continue; // no Hopper kernel here: the portable row already stands
            const double ms = time_ms([&] { vmonarch::cuda::launch_flash_bwd(p, nullptr, "flash_bwd_bench"); }, 3, reps);
            const int products = 3 + 2 * c.da + 2 * c.dy;
            const double flops = 2.0 * d * products * double(p.len_q) * double(p.len_k) * p.segments * H;
            const std::string peer_name = hopper ? std::string("sm90-") + short_name(peer.schedule) : "portable";
            std::printf("%-40s %-14s %10.3f %10.1f%s\n", c.name, peer_name.c_str(), ms, flops / ms * 1e-9,
                        det ? "  deterministic" : "");
        }
    vmonarch::cuda::set_flash_bwd_sm90_schedule(env_schedule);
    return 0;
}
