// The sm90 peer of the flash router, host side: support checks, the launch policy (key-tile width,
// schedule) and the tensor maps (through the driver entry point), resolved once per problem into an
// Sm90Launch; the instances are in src/cuda/instances/flash_sm90_*.cu. The kernel body exists only in the
// sm_90a pass; other passes compile an empty stub, and hopper_flash_supported refuses any device whose
// loaded binary is not sm_90.
#include "cuda/sm90/flash_sm90.hpp"

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>

#include "cuda/common/cuda_check.hpp"
#include "cuda/flash_policy.hpp"
#include "cuda/sm90/flash_sm90_launch.cuh"

namespace vmonarch::cuda {

namespace {

using hopper::HopperArgs;
using hopper::HopperShape;
using hopper::TmaCoords;

std::string describe_hopper(const FlashParams& p, const char* what) { return describe_flash(p, "flash_sm90", what); }

// ---- driver entry point -------------------------------------------------------------------------------
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                   const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encode_fn() {
    static EncodeTiledFn fn = [] {
        void* ptr = nullptr;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            return EncodeTiledFn(nullptr);
        }
        return reinterpret_cast<EncodeTiledFn>(ptr);
    }();
    return fn;
}

// ---- tensor maps of row views ---------------------------------------------------------------------------
// A RowView of `len` rows per (segment, head, batch), head dim D contiguous, as a 5-D tensor
// (D, len, segments, heads, batch) with boxes of 64 × box_rows × 1 × 1 × 1, 128-byte swizzle, zero fill
// outside. Dims 1–4 are tried in their natural order first and then sorted by stride; `coords` tells the
// kernel where each lands. False when TMA cannot describe the view.
bool encode_rows(CUtensorMap* map, TmaCoords* coords, Elem elem, const RowView& v, int head_dim, std::int64_t len,
                 std::int64_t segments, std::int64_t heads, std::int64_t batch, int box_rows) {
    const EncodeTiledFn fn = encode_fn();
    if (fn == nullptr || v.ptr == nullptr) return false;
    if (reinterpret_cast<std::uintptr_t>(v.ptr) % 16 != 0) return false;
    constexpr std::uint64_t kMaxStride = std::uint64_t(1) << 40;
    const std::array<std::int64_t, 4> ext = {len, segments, heads, batch};
    const std::array<std::int64_t, 4> str = {v.sr, v.sf, v.sh, v.sb}; // elements
    std::array<std::uint64_t, 4> bytes{};
    std::uint64_t span = 16;
    for (int i = 0; i < 4; ++i) {
        if (ext[i] <= 0 || std::uint64_t(ext[i]) > (std::uint64_t(1) << 32)) return false;
        if (ext[i] == 1) continue;
        if (str[i] <= 0) return false;
        const std::uint64_t sb = std::uint64_t(str[i]) * 2;
        if (sb % 16 != 0 || sb >= kMaxStride) return false;
        bytes[i] = sb;
        span = std::max(span, sb * std::uint64_t(ext[i]));
    }
    // Extent-1 dims: their coordinate is always 0, any valid stride will do; keep them "outermost".
    span = (span + 15) / 16 * 16;
    if (span >= kMaxStride) span = kMaxStride - 16;
    for (int i = 0; i < 4; ++i)
        if (ext[i] == 1) bytes[i] = span;

    const CUtensorMapDataType dt = elem == Elem::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    for (int attempt = 0; attempt < 2; ++attempt) {
        std::array<int, 4> order = {0, 1, 2, 3}; // order[k] = logical dim at tensor-map dim k + 1
        if (attempt == 1)
            std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bytes[a] < bytes[b]; });
        cuuint64_t gdim[5] = {cuuint64_t(head_dim), 0, 0, 0, 0};
        cuuint64_t gstride[4] = {0, 0, 0, 0};
        cuuint32_t box[5] = {64, 1, 1, 1, 1};
        const cuuint32_t estride[5] = {1, 1, 1, 1, 1};
        for (int k = 0; k < 4; ++k) {
            gdim[k + 1] = cuuint64_t(ext[order[k]]);
            gstride[k] = cuuint64_t(bytes[order[k]]);
            if (order[k] == 0) box[k + 1] = cuuint32_t(box_rows);
        }
        CUtensorMap m;
        std::memset(&m, 0, sizeof m);
        const CUresult r = fn(&m, dt, 5, v.ptr, gdim, gstride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) continue;
        TmaCoords c;
        for (int k = 0; k < 4; ++k) {
            const auto pos = static_cast<signed char>(k + 1);
            if (order[k] == 0) c.row = pos;
            else if (order[k] == 1) c.seg = pos;
            else if (order[k] == 2) c.head = pos;
            else c.batch = pos;
        }
        *map = m;
        *coords = c;
        return true;
    }
    return false;
}

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
    if (!encode_rows(&m->q, &m->args.cq, p.elem, p.q, p.head_dim, p.len_q, p.segments, p.heads, p.batch, HopperShape::BM))
        return false;
    if (!encode_rows(&m->k, &m->args.ck, p.elem, p.k, p.head_dim, p.len_k, p.segments, p.heads, p.batch, bn)) return false;
    if (p.o.ptr != nullptr) {
        if (!encode_rows(&m->v, &m->args.cv, p.elem, p.v, p.head_dim, p.len_k, p.segments, p.heads, p.batch, bn)) return false;
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
