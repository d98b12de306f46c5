// TMA tensor maps of row views (tma_row_map.hpp).
#include "cuda/sm90/tma_row_map.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace vmonarch::cuda {

using hopper::TmaCoords;

namespace {

// cuTensorMapEncodeTiled through the runtime (null when the driver lacks it).
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

} // namespace

// Extent-1 dims get a valid stride of their own; the 5-D order is the natural one when the encoder takes it,
// else dims 1–4 sorted by stride.

bool encode_row_map(CUtensorMap* map, TmaCoords* coords, TmaElem elem, const RowView& v, int head_dim, std::int64_t len,
                    std::int64_t segments, std::int64_t heads, std::int64_t batch, int box_rows, int box_cols) {
    const EncodeTiledFn fn = encode_fn();
    if (fn == nullptr || v.ptr == nullptr) return false;
    if (reinterpret_cast<std::uintptr_t>(v.ptr) % 16 != 0) return false;
    constexpr std::uint64_t kMaxStride = std::uint64_t(1) << 40;
    const std::uint64_t esize = elem == TmaElem::f32 ? 4 : 2;
    if (box_cols <= 0 || std::uint64_t(box_cols) * esize > 128 || box_rows <= 0 || box_rows > 256) return false;
    const std::array<std::int64_t, 4> ext = {len, segments, heads, batch};
    const std::array<std::int64_t, 4> str = {v.sr, v.sf, v.sh, v.sb}; // elements
    std::array<std::uint64_t, 4> bytes{};
    std::uint64_t span = 16;
    for (int i = 0; i < 4; ++i) {
        if (ext[i] <= 0 || std::uint64_t(ext[i]) > (std::uint64_t(1) << 32)) return false;
        if (ext[i] == 1) continue;
        if (str[i] <= 0) return false;
        const std::uint64_t sb = std::uint64_t(str[i]) * esize;
        if (sb % 16 != 0 || sb >= kMaxStride) return false;
        bytes[i] = sb;
        span = std::max(span, sb * std::uint64_t(ext[i]));
    }
    // Extent-1 dims: their coordinate is always 0, any valid stride will do; keep them "outermost".
    span = (span + 15) / 16 * 16;
    if (span >= kMaxStride) span = kMaxStride - 16;
    for (int i = 0; i < 4; ++i)
        if (ext[i] == 1) bytes[i] = span;

    const CUtensorMapDataType dt = elem == TmaElem::bf16  ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                   : elem == TmaElem::f16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                          : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
    for (int attempt = 0; attempt < 2; ++attempt) {
        std::array<int, 4> order = {0, 1, 2, 3}; // order[k] = logical dim at tensor-map dim k + 1
        if (attempt == 1)
            std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bytes[a] < bytes[b]; });
        cuuint64_t gdim[5] = {cuuint64_t(head_dim), 0, 0, 0, 0};
        cuuint64_t gstride[4] = {0, 0, 0, 0};
        cuuint32_t box[5] = {cuuint32_t(box_cols), 1, 1, 1, 1};
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

} // namespace vmonarch::cuda
