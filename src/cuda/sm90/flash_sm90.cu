// The sm90 peer of the flash router, host side: support checks, the launch policy (key-tile width,
// schedule) and the tensor maps (through the driver entry point), resolved once per problem into an
// Sm90Launch; the instances are in src/cuda/instances/flash_sm90_*.cu. The kernel body exists only in the
// sm_90a pass; other passes compile an empty stub, and hopper_flash_supported refuses any device whose
// loaded binary is not sm_90.
#include "cuda/sm90/flash_sm90.hpp"

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <mutex>
#include <set>
#include <string>

#include "cuda/common/cuda_check.hpp"
#include "cuda/flash_policy.hpp"
#include "cuda/sm90/flash_sm90_launch.cuh"
#include "cuda/sm90/tma_row_map.hpp"

namespace vmonarch::cuda {

namespace {

using hopper::HopperArgs;
using hopper::HopperShape;
using hopper::TmaCoords;

std::string describe_hopper(const FlashParams& p, const char* what) { return describe_flash(p, "flash_sm90", what); }

using Maps = Sm90Launch;

int block_n_of(const FlashParams& p, bool wide) {
    return hopper::hopper_block_n(p.head_dim, p.a.ptr != nullptr, p.o.ptr != nullptr, wide);
}

// Key-tile width: the policy's (VMONARCH_HOPPER_TILE = narrow | wide) when it names one; otherwise the width with the smaller
// modelled cost ceil(len_k / bn) · (bn + kTileOverhead), i.e. the keys computed (a partial last tile
// costs a whole one) plus a fixed per-tile cost (softmax reductions, barrier waits, GEMM issue gaps)
// expressed in key columns: about 10–13 from the narrow/wide timings at HW = 1456 and 3520 on an H100
// (bench/RESULTS.md).
constexpr int kTileOverhead = 12;
bool choose_wide(const FlashParams& p, const FlashPolicy& policy) {
    if (block_n_of(p, true) == block_n_of(p, false)) return false;
    if (policy.tile == FlashPolicy::Tile::narrow) return false;
    if (policy.tile == FlashPolicy::Tile::wide) return true;
    auto cost = [&](int bn) { return (p.len_k + bn - 1) / bn * (bn + kTileOverhead); };
    return cost(block_n_of(p, true)) < cost(block_n_of(p, false));
}

// The launch policy for p (key-tile width, schedule, stale-offset softmax) and its tensor maps, resolved
// once into *m; false when TMA cannot describe the views.
bool build_maps(const FlashParams& p, const FlashPolicy& policy, Maps* m) {
    const bool wide = choose_wide(p, policy);
    const int bn = block_n_of(p, wide);
    m->wide = wide;
    m->mode = policy.sm90_mode;
    m->args.stale_max = policy.sm90_stale_max;
    m->long_q_tiles = policy.sm90_long_q_tiles;
    m->long_q_min_waves = policy.sm90_long_q_min_waves;
    if (!encode_row_map(&m->q, &m->args.cq, tma_elem(p.elem), p.q, p.head_dim, p.len_q, p.segments, p.heads, p.batch, HopperShape::BM, 64))
        return false;
    if (!encode_row_map(&m->k, &m->args.ck, tma_elem(p.elem), p.k, p.head_dim, p.len_k, p.segments, p.heads, p.batch, bn, 64)) return false;
    if (p.o.ptr != nullptr) {
        if (!encode_row_map(&m->v, &m->args.cv, tma_elem(p.elem), p.v, p.head_dim, p.len_k, p.segments, p.heads, p.batch, bn, 64)) return false;
    } else {
        m->v = m->k; // unused by the kernel
        m->args.cv = m->args.ck;
    }
    return true;
}

bool variant_supported(const FlashParams& p) {
    const bool rs = p.rs.ptr != nullptr, kv = p.a.ptr != nullptr, vv = p.o.ptr != nullptr;
    if (kv && p.ent.ptr == nullptr) return false;
    if (!kv && !vv) return false;
    if (!kv && rs) return false; // launch_flash has no (row-scale, V only) variant either
    // The kernel takes the row max on the raw scores, which needs a positive logit multiplier.
    if (rs ? !(p.scale > 0.f) : !(p.qk_scale > 0.f)) return false;
    return true;
}

bool shape_supported(const FlashParams& p) {
    if (p.head_dim != 64 && p.head_dim != 128) return false;
    if (p.len_q <= 0 || p.len_k <= 0 || p.batch <= 0 || p.heads <= 0 || p.segments <= 0) return false;
    if (p.len_q > 0x7fffffff - HopperShape::BM || p.len_k > 0x7fffffff - 256) return false; // int coordinates
    if (std::int64_t(p.segments) * p.heads > 65535 || p.batch > 65535) return false;
    return true;
}

// The loaded binary of a kernel is sm_90 only when the library was built with the 90a target; an sm_80
// build running on an H100 would otherwise run the empty stub.
bool binary_is_sm90() {
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
        ok = cudaFuncGetAttributes(&fa, flash_sm90_probe_kernel()) == cudaSuccess && fa.binaryVersion == 90;
    }
    cudaGetLastError();
    (ok ? good : bad).insert(dev);
    return ok;
}

// Launch with the policy and tensor maps already resolved for p.
void launch_prepared(const FlashParams& p, const Maps& m, void* stream, const char* what) {
    FlashVariant v;
    if (!flash_variant_of(p, &v)) throw CudaError(describe_hopper(p, what) + ": no kernel variant for this combination of outputs");
    with_elem_and_head_dim(p, [&]<bool BF16, int D>() { launch_flash_sm90_typed<BF16, D>(p, v, m, stream, what); });
}

// The checks of hopper_flash_supported; when they pass, *m holds the tensor maps the launch uses.
bool prepare(const FlashParams& p, Maps* m) {
    const FlashPolicy policy = flash_policy();
    if (!policy.sm90) return false;
    if (!shape_supported(p) || !variant_supported(p)) return false;
    if (!binary_is_sm90()) return false;
    return build_maps(p, policy, m);
}

} // namespace

bool hopper_flash_supported(const FlashParams& p) {
    Maps m;
    return prepare(p, &m);
}

bool try_launch_flash_hopper(const FlashParams& p, void* stream, const char* what) {
    Maps m;
    if (!prepare(p, &m)) return false;
    launch_prepared(p, m, stream, what);
    return true;
}

void launch_flash_hopper(const FlashParams& p, void* stream, const char* what) {
    const auto ctx = [&] { return describe_hopper(p, what); };
    if (p.len_q <= 0 || p.batch <= 0 || p.heads <= 0 || p.segments <= 0) return; // nothing to do
    if (p.len_k <= 0) throw CudaError(ctx() + ": no keys");
    if (!shape_supported(p) || !variant_supported(p)) throw CudaError(ctx() + ": configuration not handled by the Hopper kernel");
    if (!binary_is_sm90()) throw CudaError(ctx() + ": device is not sm_90 or the library lacks the sm_90a kernel");
    Maps m;
    if (!build_maps(p, flash_policy(), &m)) throw CudaError(ctx() + ": q/k/v views cannot be described as TMA tensor maps");
    launch_prepared(p, m, stream, what);
}

} // namespace vmonarch::cuda
