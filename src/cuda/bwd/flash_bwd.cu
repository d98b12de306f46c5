// launch_flash_bwd (backward_params.hpp): the flash backward's checks, the route to the Hopper kernel
// (sm90/flash_bwd_sm90.hpp) where it takes the problem, else the (element type, head dim) dispatch to the
// portable instance groups (instances/flash_bwd_*.cu).
#include <cstdint>
#include <sstream>

#include "cuda/bwd/flash_bwd.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90.hpp"
#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

std::string describe_flash_bwd(const FlashBwdParams& p, const char* what) {
    std::ostringstream os;
    os << what << " [flash_bwd<" << to_string(p.elem) << ", d=" << p.head_dim << (p.rs.ptr ? ", row-scale" : "")
       << (p.da.ptr ? ", dA" : "") << (p.dy.ptr ? ", dY" : "") << (p.dent.ptr ? ", entropy" : "")
       << (p.deterministic ? ", deterministic" : "") << "> batch=" << p.batch << " heads=" << p.heads
       << " segments=" << p.segments << " len_q=" << p.len_q << " len_k=" << p.len_k << "]";
    return os.str();
}

namespace {

// cp.async reads 16-byte chunks: a 16-bit operand's rows must start on 16 bytes (pointer and every stride a
// multiple of 8 elements).
bool rows_aligned16(const RowView& v) {
    return reinterpret_cast<std::uintptr_t>(v.ptr) % 16 == 0 && v.sb % 8 == 0 && v.sh % 8 == 0 && v.sf % 8 == 0 && v.sr % 8 == 0;
}

} // namespace

void launch_flash_bwd(const FlashBwdParams& p, void* stream, const char* what) {
    if (p.len_q <= 0 || p.len_k <= 0 || p.batch <= 0 || p.heads <= 0 || p.segments <= 0) return; // nothing to add
    const auto fail = [&](const std::string& why) { throw CudaError(describe_flash_bwd(p, what) + ": " + why); };
    if (p.head_dim != 64 && p.head_dim != 128) fail("head dim must be 64 or 128");
    if (!p.q.ptr || !p.k.ptr || !p.lse.ptr || !p.drow.ptr || !p.dq.ptr || !p.dk.ptr) fail("q, k, lse, drow, dq and dk are required");
    if (!p.da.ptr && !p.dy.ptr) fail("needs a value operand's gradient (da and/or dy)");
    if (p.dy.ptr && (!p.v.ptr || !p.dv.ptr)) fail("dy needs v and dv");
    for (const RowView* v : {&p.q, &p.k, &p.v, &p.da, &p.dy})
        if (v->ptr && !rows_aligned16(*v)) fail("16-bit operand rows must be 16-byte aligned (pointer and strides multiples of 8 elements)");
    if (std::int64_t(p.segments) * p.heads > 65535 || p.batch > 65535) fail("grid too large (segments·heads and batch must be ≤ 65535)");
    if (p.len_q > 0x7fffffff || p.len_k > 0x7fffffff) fail("len_q and len_k must be < 2³¹");
    if (try_launch_flash_bwd_sm90(p, stream, what)) return;
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) bf ? launch_flash_bwd_typed<true, 64>(p, stream, what) : launch_flash_bwd_typed<false, 64>(p, stream, what);
    else bf ? launch_flash_bwd_typed<true, 128>(p, stream, what) : launch_flash_bwd_typed<false, 128>(p, stream, what);
}

} // namespace vmonarch::cuda
