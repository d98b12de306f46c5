// Internal: the VMonarch forward on the GPU as a sequence of kernel launches over a workspace
// (docs/algorithm.md §3): for it = 0..t−1, R-step then L-step; then the first-frame dense recompute.
//
// Workspace (input dtype for vectors, f32 for scalars), per (batch, head):
//   aR [T][HW][d]  (frame-major, read by the R-step as its queries)   — only when t > 1
//   cR [T][HW]                                                          — only when t > 1
//   aL [HW][T][d]  (position-major, so the L-step reads T contiguous rows)
//   cL [HW][T]
//   y  [HW][T][dv]
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dispatch.hpp"
#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

struct WorkspaceLayout {
    std::size_t ar = 0, cr = 0, al = 0, cl = 0, y = 0; // byte offsets
    std::size_t total = 0;
};
WorkspaceLayout monarch_workspace_layout(const detail::MonarchProblem& p);

class MonarchPlan {
public:
    // workspace: device memory of at least monarch_workspace_layout(p).total bytes.
    MonarchPlan(const detail::MonarchProblem& p, void* workspace);

    FlashParams rstep_params(int it) const;   // R-step of iteration it (0-based)
    LStepParams lstep_params(int it, bool skip_frame0 = false) const; // L-step of iteration it
    FlashParams recompute_params() const;     // frame-0 queries against all keys

    // The whole forward on `stream`. With a side stream (another cudaStream_t of the same device) the
    // first-frame recompute runs there concurrently with the Monarch steps (it reads only q, k, v and
    // writes only frame 0's out/lse rows, which the last L-step then skips), joined back by events.
    void run(void* stream, void* side_stream = nullptr) const;
    int iterations() const { return p_.iterations; }

private:
    detail::MonarchProblem p_;
    Elem elem_;
    RowView q_, k_, v_, out_, lse_;           // user tensors, indexed (b, h, frame, position)
    RowView ar_, cr_, al_, cl_, y_;           // workspace
};

// FlashParams for dense attention over whole sequences (the public dense_attention).
FlashParams dense_params(const detail::AttentionProblem& p);

Elem elem_of(DType t);

} // namespace vmonarch::cuda
