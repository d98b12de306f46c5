// launch_lse_merge (kernel_params.hpp): acc ⊕= part, the log-sum-exp merge of a partial attention result
// into an accumulator row by row (spec §3b, common/lse_merge.cuh), or the clear that makes acc an empty group
// (acc_o = 0, acc_lse = −inf). Memory-bound: a row of value_dim elements is value_dim/8 threads, one
// 16-byte chunk each.
#include <cuda_runtime.h>

#include <sstream>

#include "cuda/common/cuda_check.hpp"
#include "cuda/common/kernel_params.hpp"
#include "cuda/common/lse_merge.cuh"
#include "cuda/common/mma_ptx.cuh"

namespace vmonarch::cuda {

namespace {

constexpr int kMergeThreads = 256;
constexpr int kMaxValueDim = 8 * kMergeThreads; // one block row of chunks at most

// Block (value_dim/8 chunks) × (rows_per_block rows); grid (row blocks over segments·rows, heads, batch).
template <bool BF16, bool CLEAR>
__global__ void __launch_bounds__(kMergeThreads) lse_merge_kernel(const LseMergeParams p) {
    using E = typename ElemType<BF16>::T;
    const int ch = threadIdx.x, h = blockIdx.y, b = blockIdx.z;
    const std::int64_t row = std::int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
    const bool active = row < p.segments * p.rows;
    const std::int64_t f = active ? row / p.rows : 0, r = active ? row - f * p.rows : 0;
    LseMergeWeights w{-INFINITY, 0.f, 0.f};
    if (!CLEAR && active)
        w = lse_merge_weights(*view_row<const float>(p.acc_lse, b, h, f, r), *view_row<const float>(p.part_lse, b, h, f, r));
    __syncthreads(); // every chunk of the row has read acc_lse before chunk 0 overwrites it
    if (!active) return;
    E* acc = view_row<E>(p.acc_o, b, h, f, r) + ch * 8;
    uint4 res = make_uint4(0u, 0u, 0u, 0u); // +0 in bf16 and f16
    if (!CLEAR) {
        // A side of weight 0 (no keys) is not read: its rows may be unwritten.
        const uint4 va = w.wa != 0.f ? *reinterpret_cast<const uint4*>(acc) : make_uint4(0u, 0u, 0u, 0u);
        const uint4 vb = w.wb != 0.f ? *reinterpret_cast<const uint4*>(view_row<const E>(p.part_o, b, h, f, r) + ch * 8)
                                     : make_uint4(0u, 0u, 0u, 0u);
        const std::uint32_t ua[4] = {va.x, va.y, va.z, va.w}, ub[4] = {vb.x, vb.y, vb.z, vb.w};
        std::uint32_t out[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 xa = unpack2<BF16>(ua[e]), xb = unpack2<BF16>(ub[e]);
            out[e] = pack2<BF16>(lse_merge_mix(w, xa.x, xb.x), lse_merge_mix(w, xa.y, xb.y));
        }
        res = make_uint4(out[0], out[1], out[2], out[3]);
    }
    *reinterpret_cast<uint4*>(acc) = res;
    if (ch == 0) *view_row<float>(p.acc_lse, b, h, f, r) = w.tot;
}

std::string describe(const LseMergeParams& p, bool clear, const char* what) {
    std::ostringstream os;
    os << what << " [lse_merge<" << to_string(p.elem) << ", dv=" << p.value_dim << (clear ? ", clear" : "")
       << "> batch=" << p.batch << " heads=" << p.heads << " segments=" << p.segments << " rows=" << p.rows << "]";
    return os.str();
}

// Rows of 16-bit values are read and written as 16-byte chunks: the base must be 16-byte aligned and every
// stride of a dimension with more than one index a multiple of 8 elements.
bool chunk_aligned(const RowView& v, const LseMergeParams& p) {
    const auto ok = [](std::int64_t extent, std::int64_t stride) { return extent <= 1 || stride % 8 == 0; };
    return reinterpret_cast<std::uintptr_t>(v.ptr) % 16 == 0 && ok(p.batch, v.sb) && ok(p.heads, v.sh) &&
           ok(p.segments, v.sf) && ok(p.rows, v.sr);
}

template <bool BF16>
void launch_typed(const LseMergeParams& p, bool clear, cudaStream_t stream, dim3 grid, dim3 block) {
    if (clear) lse_merge_kernel<BF16, true><<<grid, block, 0, stream>>>(p);
    else lse_merge_kernel<BF16, false><<<grid, block, 0, stream>>>(p);
}

} // namespace

void launch_lse_merge(const LseMergeParams& p, bool clear, void* stream, const char* what) {
    const auto ctx = [&] { return describe(p, clear, what); };
    if (p.segments < 0 || p.rows < 0 || p.heads < 0 || p.batch < 0) throw CudaError(ctx() + ": negative extent");
    if (p.segments == 0 || p.rows == 0 || p.heads == 0 || p.batch == 0) return;
    if (p.elem != Elem::bf16 && p.elem != Elem::f16) throw CudaError(ctx() + ": element type must be bf16 or f16");
    if (p.value_dim <= 0 || p.value_dim % 8 != 0 || p.value_dim > kMaxValueDim)
        throw CudaError(ctx() + ": value dim " + std::to_string(p.value_dim) + " must be a multiple of 8 in [8, " +
                        std::to_string(kMaxValueDim) + "]");
    if (p.acc_o.ptr == nullptr || p.acc_lse.ptr == nullptr) throw CudaError(ctx() + ": acc_o and acc_lse are required");
    if (!clear && (p.part_o.ptr == nullptr || p.part_lse.ptr == nullptr))
        throw CudaError(ctx() + ": part_o and part_lse are required unless clearing");
    if (!chunk_aligned(p.acc_o, p) || (!clear && !chunk_aligned(p.part_o, p)))
        throw CudaError(ctx() + ": output rows must start on 16-byte boundaries (strides multiples of 8 elements)");
    if (p.heads > 65535 || p.batch > 65535) throw CudaError(ctx() + ": grid too large (heads and batch must be ≤ 65535)");
    const int chunks = p.value_dim / 8, rows_per_block = kMergeThreads / chunks;
    if (p.segments > INT64_MAX / p.rows) throw CudaError(ctx() + ": segments × rows overflows");
    const std::int64_t row_blocks = (p.segments * p.rows + rows_per_block - 1) / rows_per_block;
    if (row_blocks > 0x7fffffff) throw CudaError(ctx() + ": grid too large (segments × rows)");
    const dim3 grid{unsigned(row_blocks), unsigned(p.heads), unsigned(p.batch)}, block{unsigned(chunks), unsigned(rows_per_block), 1u};
    auto st = static_cast<cudaStream_t>(stream);
    if (p.elem == Elem::bf16) launch_typed<true>(p, clear, st, grid, block);
    else launch_typed<false>(p, clear, st, grid, block);
    check_launch_lazy(ctx);
}

} // namespace vmonarch::cuda
