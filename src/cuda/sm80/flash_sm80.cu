// launch_flash_sm80: the sm80 peer's checks and its (element type, head dim) dispatch.
#include "cuda/sm80/flash_sm80.hpp"

#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

void launch_flash_sm80(const FlashParams& p, void* stream, const char* what) {
    const auto ctx = [&] { return describe_flash(p, "flash_sm80", what); };
    const std::int64_t tiles = (p.len_q + 63) / 64; // upper bound over the variants' block heights
    if (tiles > 0x7fffffff || std::int64_t(p.segments) * p.heads > 65535 || p.batch > 65535)
        throw CudaError(ctx() + ": grid too large (segments·heads and batch must be ≤ 65535)");
    if (p.head_dim != 64 && p.head_dim != 128) throw CudaError(ctx() + ": head dim must be 64 or 128");
    FlashVariant v;
    if (!flash_variant_of(p, &v)) throw CudaError(ctx() + ": no kernel variant for this combination of outputs");
    with_elem_and_head_dim(p, [&]<bool BF16, int D>() { launch_flash_sm80_typed<BF16, D>(p, v, stream, what); });
}

} // namespace vmonarch::cuda
