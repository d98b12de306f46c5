// launch_flash: the one router above the two flash peers. A problem goes to the sm90 peer (wgmma / TMA,
// sm90/flash_sm90.hpp) when that peer takes it, otherwise to the portable sm80 peer (sm80/flash_sm80.hpp).
#include <sstream>

#include "cuda/common/cuda_check.hpp"
#include "cuda/common/flash_variant.hpp"
#include "cuda/sm80/flash_sm80.hpp"
#include "cuda/sm90/flash_sm90.hpp"

namespace vmonarch::cuda {

std::string to_string(Elem e) { return e == Elem::bf16 ? "bf16" : "f16"; }

std::string describe_flash(const FlashParams& p, const char* kernel, const char* what) {
    std::ostringstream os;
    os << what << " [" << kernel << "<" << to_string(p.elem) << ", d=" << p.head_dim << (p.rs.ptr ? ", row-scale" : "")
       << (p.a.ptr ? ", K-value+entropy" : "") << (p.o.ptr ? ", V-value" : "") << (p.lse.ptr ? ", lse" : "")
       << "> batch=" << p.batch << " heads=" << p.heads << " segments=" << p.segments << " len_q=" << p.len_q
       << " len_k=" << p.len_k << "]";
    return os.str();
}

void launch_flash(const FlashParams& p, void* stream, const char* what) {
    if (p.len_q <= 0 || p.batch <= 0 || p.heads <= 0 || p.segments <= 0) return; // nothing to do
    if (p.len_k <= 0) throw CudaError(describe_flash(p, "flash", what) + ": no keys");
    if (try_launch_flash_hopper(p, stream, what)) return;
    launch_flash_sm80(p, stream, what);
}

} // namespace vmonarch::cuda
