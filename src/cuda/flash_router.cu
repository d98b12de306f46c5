// launch_flash: validates the launch shape and picks the (dtype, head dim) instantiation.
#include <sstream>

#include "cuda/sm80/flash_sm80_launch.cuh"
#include "cuda/sm90/flash_sm90.hpp"

namespace vmonarch::cuda {

extern template void launch_flash_typed<true, 64>(const FlashParams&, cudaStream_t, const char*);
extern template void launch_flash_typed<true, 128>(const FlashParams&, cudaStream_t, const char*);
extern template void launch_flash_typed<false, 64>(const FlashParams&, cudaStream_t, const char*);
extern template void launch_flash_typed<false, 128>(const FlashParams&, cudaStream_t, const char*);

std::string to_string(Elem e) { return e == Elem::bf16 ? "bf16" : "f16"; }

std::string describe(const FlashParams& p, const char* what) {
    std::ostringstream os;
    os << what << " [flash_fwd<" << to_string(p.elem) << ", d=" << p.head_dim << (p.rs.ptr ? ", row-scale" : "")
       << (p.a.ptr ? ", K-value+entropy" : "") << (p.o.ptr ? ", V-value" : "") << (p.lse.ptr ? ", lse" : "")
       << "> batch=" << p.batch << " heads=" << p.heads << " segments=" << p.segments << " len_q=" << p.len_q
       << " len_k=" << p.len_k << "]";
    return os.str();
}

void launch_flash(const FlashParams& p, void* stream, const char* what) {
    if (p.len_q <= 0 || p.batch <= 0 || p.heads <= 0 || p.segments <= 0) return; // nothing to do
    if (p.len_k <= 0) throw CudaError(describe(p, what) + ": no keys");
    if (try_launch_flash_hopper(p, stream, what)) return; // sm_90a wgmma/TMA path
    const std::int64_t tiles = (p.len_q + 63) / 64; // upper bound over the variants' block heights
    if (tiles > 0x7fffffff || std::int64_t(p.segments) * p.heads > 65535 || p.batch > 65535)
        throw CudaError(describe(p, what) + ": grid too large (segments·heads and batch must be ≤ 65535)");
    auto st = static_cast<cudaStream_t>(stream);
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) return bf ? launch_flash_typed<true, 64>(p, st, what) : launch_flash_typed<false, 64>(p, st, what);
    if (p.head_dim == 128) return bf ? launch_flash_typed<true, 128>(p, st, what) : launch_flash_typed<false, 128>(p, st, what);
    throw CudaError(describe(p, what) + ": head dim must be 64 or 128");
}

} // namespace vmonarch::cuda
