// The L-step instantiations with exact key groups (spec §3b: sink frames, temporal window, the fused
// log-sum-exp merge), in their own translation unit so that the plain and the exact kernels compile in
// parallel. launch_lstep (lstep_launch.cu) picks them when the launch masks or merges anything.
#include "cuda/lstep/lstep_dispatch.cuh"

namespace vmonarch::cuda::lstep_detail {

void dispatch_exact(const LStepParams& p, cudaStream_t stream, const char* what) { dispatch<true>(p, stream, what); }

} // namespace vmonarch::cuda::lstep_detail
