// Internal, host side: TMA tensor maps (CUtensorMap) of row views, for the Hopper kernels' bulk tensor copies
// (the forward's Q, K, V loads; the backward's dQ reduce-adds). Nothing here links the driver library: the
// encoder is found through the runtime's driver entry point.
#pragma once

#include <cstdint>

#include <cuda.h>

#include "cuda/common/kernel_params.hpp" // RowView, Elem
#include "cuda/sm90/flash_sm90_shape.cuh" // TmaCoords

namespace vmonarch::cuda {

enum class TmaElem { bf16, f16, f32 };
constexpr TmaElem tma_elem(Elem e) { return e == Elem::bf16 ? TmaElem::bf16 : TmaElem::f16; }

// A RowView of `len` rows per (segment, head, batch), head dim head_dim contiguous, as a 5-D tensor
// (head_dim, len, segments, heads, batch) with boxes of box_cols × box_rows × 1 × 1 × 1 and the 128-byte
// swizzle (box_cols · element size ≤ 128 bytes), zero fill outside on loads, clipped outside on stores and
// reduce-adds. Dims 1–4 are tried in their natural order first and then sorted by stride; *coords tells the
// kernel where each lands. False when TMA cannot describe the view (null or misaligned pointer, a stride
// that is not a positive multiple of 16 bytes where the extent is above 1, an extent out of range).
bool encode_row_map(CUtensorMap* map, hopper::TmaCoords* coords, TmaElem elem, const RowView& v, int head_dim, std::int64_t len,
                    std::int64_t segments, std::int64_t heads, std::int64_t batch, int box_rows, int box_cols);

} // namespace vmonarch::cuda
