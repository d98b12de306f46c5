// The Hopper peer of launch_flash_bwd, host side (flash_bwd_sm90.hpp): whether it may take a problem, and the
// (element type, head dim) dispatch to the instances (instances/flash_bwd_sm90_*.cu). The kernel body exists
// only in the sm_90a pass; a library without it, or a device that is not 9.0, keeps the portable kernels.
#include "cuda/bwd/sm90/flash_bwd_sm90.hpp"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

#include "cuda/bwd/sm90/flash_bwd_sm90_shape.cuh" // BwdSm90Maps
#include "cuda/flash_policy.hpp"
#include "cuda/sm90/tma_row_map.hpp"

namespace vmonarch::cuda {

namespace {

// The current device is 9.0 and the loaded binary of the kernel is the sm_90a one (the library was built
// for 90a).
bool device_runs_sm90_binary() {
    static std::mutex mu;
    static std::set<int> good, bad;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    std::lock_guard<std::mutex> lock(mu);
    if (good.count(dev)) return true;
    if (bad.count(dev)) return false;
    int major = 0, minor = 0;
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
              cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 && minor == 0;
    if (ok) {
        cudaFuncAttributes fa{};
        // binaryVersion 90 is also what a plain sm_90 (not 90a) build loads, whose kernel is the empty stub:
        // the real body holds its accumulators in registers (over 200), the stub a handful.
        ok = cudaFuncGetAttributes(&fa, flash_bwd_sm90_probe_kernel()) == cudaSuccess && fa.binaryVersion == 90 && fa.numRegs >= 128;
    }
    cudaGetLastError();
    (ok ? good : bad).insert(dev);
    return ok;
}

// The schedule launches take: the environment's at the first call (per_problem when unset or not a
// schedule's name), or the last set_flash_bwd_sm90_schedule.
std::atomic<int>& schedule_slot() {
    static std::atomic<int> slot{[] {
        const char* e = std::getenv("VMONARCH_HOPPER_BWD");
        for (FlashBwdSm90Schedule s : {FlashBwdSm90Schedule::cooperative, FlashBwdSm90Schedule::specialized,
                                       FlashBwdSm90Schedule::cooperative_prepared, FlashBwdSm90Schedule::specialized_prepared,
                                       FlashBwdSm90Schedule::cooperative_pipelined})
            if (e && std::strcmp(e, to_string(s)) == 0) return int(s);
        return int(FlashBwdSm90Schedule::per_problem);
    }()};
    return slot;
}

// p's dq accumulator as the TMA reduce-adds' destination (BwdSm90Maps::dq); false when TMA cannot describe it.
bool encode_dq_map(const FlashBwdParams& p, hopper::BwdSm90Maps* m) {
    return encode_row_map(&m->dq, &m->cdq, TmaElem::f32, p.dq, p.head_dim, p.len_q, p.segments, p.heads, p.batch,
                          hopper::BwdSm90Shape::BM, hopper::BwdSm90Shape::DQ_BOX_COLS);
}

// The specialized schedule's producer maps of q, da, dy and of the key tile's k, v (absent operands left zero);
// false when TMA cannot describe one of them.
bool encode_load_maps(const FlashBwdParams& p, hopper::BwdSm90Maps* m) {
    const TmaElem e = tma_elem(p.elem);
    const auto rows = [&](CUtensorMap* map, hopper::TmaCoords* c, const RowView& v) {
        return encode_row_map(map, c, e, v, p.head_dim, p.len_q, p.segments, p.heads, p.batch, hopper::BwdSm90Shape::BM, 64);
    };
    const auto keys = [&](CUtensorMap* map, hopper::TmaCoords* c, const RowView& v) {
        return encode_row_map(map, c, e, v, p.head_dim, p.len_k, p.segments, p.heads, p.batch, hopper::BwdSm90Shape::BN, 64);
    };
    return rows(&m->q, &m->cq, p.q) && keys(&m->k, &m->ck, p.k) && (p.da.ptr == nullptr || rows(&m->da, &m->cda, p.da)) &&
           (p.dy.ptr == nullptr || (rows(&m->dy, &m->cdy, p.dy) && keys(&m->v, &m->cv, p.v)));
}

// flash_bwd_sm90_supported, leaving in m the dq map it encodes (unless deterministic) for the launch to use.
bool supported_with_maps(const FlashBwdParams& p, hopper::BwdSm90Maps* m) {
    if (!flash_policy().sm90) return false;
    if (p.head_dim != 64 && p.head_dim != 128) return false;
    if (!p.da.ptr && !p.dy.ptr) return false;
    // dq += takes TMA reduce-adds (16-byte-aligned pointer, strides positive multiples of 4 floats where the
    // extent is above 1): TMA must describe it (a host call, no device work).
    if (!p.deterministic && !encode_dq_map(p, m)) return false;
    // With dA the kernel accumulates dK/s and dQ/s: s must be a positive normal number with a normal inverse.
    if (p.da.ptr && !(p.scale > 1e-30f && p.scale < 1e30f)) return false;
    return device_runs_sm90_binary();
}

} // namespace

FlashBwdSm90Schedule flash_bwd_sm90_schedule() { return FlashBwdSm90Schedule(schedule_slot().load()); }
void set_flash_bwd_sm90_schedule(FlashBwdSm90Schedule schedule) { schedule_slot().store(int(schedule)); }
const char* to_string(FlashBwdSm90Schedule schedule) {
    switch (schedule) {
    case FlashBwdSm90Schedule::cooperative: return "cooperative";
    case FlashBwdSm90Schedule::specialized: return "specialized";
    case FlashBwdSm90Schedule::cooperative_prepared: return "cooperative_prepared";
    case FlashBwdSm90Schedule::specialized_prepared: return "specialized_prepared";
    case FlashBwdSm90Schedule::cooperative_pipelined: return "cooperative_pipelined";
    default: return "per_problem";
    }
}
FlashBwdSm90Schedule resolve_flash_bwd_sm90_schedule(FlashBwdSm90Schedule schedule, const FlashBwdParams& p) {
    if (schedule != FlashBwdSm90Schedule::per_problem) return schedule;
    // H200, bf16 (bench/RESULTS.md, "Flash backward v7" and the session after it): with K in registers and P in
    // place the specialized prepared form is the fastest at both head dims, in both modes and every variant
    // (d 64: 7-13 % below the pipelined form, deterministic 6-12 %; with both values and the entropy term,
    // deterministic, 1 % above it). The pipelined form stays the fallback for operands TMA cannot describe.
    (void)p;
    return FlashBwdSm90Schedule::specialized_prepared;
}

bool flash_bwd_sm90_supported(const FlashBwdParams& p) {
    hopper::BwdSm90Maps m{};
    return supported_with_maps(p, &m);
}

namespace {
using Maps = hopper::BwdSm90Maps;
template <bool PREP> void launch_cooperative(const FlashBwdParams& p, const Maps& m, void* stream, const char* what) {
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) bf ? launch_flash_bwd_sm90_typed<true, 64, PREP>(p, m, stream, what) : launch_flash_bwd_sm90_typed<false, 64, PREP>(p, m, stream, what);
    else bf ? launch_flash_bwd_sm90_typed<true, 128, PREP>(p, m, stream, what) : launch_flash_bwd_sm90_typed<false, 128, PREP>(p, m, stream, what);
}
void launch_pipelined(const FlashBwdParams& p, const Maps& m, void* stream, const char* what) {
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) bf ? launch_flash_bwd_sm90_pipe_typed<true, 64>(p, m, stream, what) : launch_flash_bwd_sm90_pipe_typed<false, 64>(p, m, stream, what);
    else bf ? launch_flash_bwd_sm90_pipe_typed<true, 128>(p, m, stream, what) : launch_flash_bwd_sm90_pipe_typed<false, 128>(p, m, stream, what);
}
// The specialized schedule loads the query tiles by TMA: operands TMA cannot describe take the pipelined one.
template <bool PREP> void launch_specialized(const FlashBwdParams& p, Maps& m, void* stream, const char* what) {
    if (!encode_load_maps(p, &m)) return launch_pipelined(p, m, stream, what);
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64)
        bf ? launch_flash_bwd_sm90_ws_typed<true, 64, PREP>(p, m, stream, what) : launch_flash_bwd_sm90_ws_typed<false, 64, PREP>(p, m, stream, what);
    else bf ? launch_flash_bwd_sm90_ws_typed<true, 128, PREP>(p, m, stream, what) : launch_flash_bwd_sm90_ws_typed<false, 128, PREP>(p, m, stream, what);
}
} // namespace

// The tensor maps are encoded once per launch: dq's by the support check, q/da/dy's for the specialized schedule.
bool try_launch_flash_bwd_sm90(const FlashBwdParams& p, void* stream, const char* what) {
    Maps maps{};
    if (!supported_with_maps(p, &maps)) return false;
    switch (resolve_flash_bwd_sm90_schedule(flash_bwd_sm90_schedule(), p)) {
    case FlashBwdSm90Schedule::specialized: launch_specialized<false>(p, maps, stream, what); break;
    case FlashBwdSm90Schedule::cooperative_prepared: launch_cooperative<true>(p, maps, stream, what); break;
    case FlashBwdSm90Schedule::specialized_prepared: launch_specialized<true>(p, maps, stream, what); break;
    case FlashBwdSm90Schedule::cooperative_pipelined: launch_pipelined(p, maps, stream, what); break;
    default: launch_cooperative<false>(p, maps, stream, what); break;
    }
    return true;
}

} // namespace vmonarch::cuda
