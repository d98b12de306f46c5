// Stand-ins for the CUDA backend in builds without CUDA: every entry point says so clearly.
#include "core/backend.hpp"

namespace vmonarch::detail {

namespace {
[[noreturn]] void no_cuda(const char* what) {
    throw UnsupportedError(std::string(what) +
                           ": this vmonarch build has no CUDA kernels (configure with nvcc on the PATH or "
                           "-DVMONARCH_CUDA=ON); use Device::cpu tensors");
}
} // namespace

void cuda_monarch_attention(const MonarchProblem&, const CudaContext*) { no_cuda("vmonarch::attention"); }
void cuda_dense_attention(const AttentionProblem&, const CudaContext*) { no_cuda("vmonarch::dense_attention"); }
void cuda_text_query_attention(const TextQueryProblem&, const CudaContext*) { no_cuda("vmonarch::joint_attention"); }
std::size_t cuda_monarch_workspace_bytes(const MonarchProblem&) { return 0; }
void cuda_monarch_training(const TrainingProblem&, const CudaContext*) { no_cuda("vmonarch::attention_training"); }
void cuda_monarch_backward(const BackwardProblem&, const CudaContext*) { no_cuda("vmonarch::attention_backward"); }
std::size_t cuda_backward_workspace_bytes(const BackwardProblem&) { return 0; }
void* cuda_allocate(std::size_t, int, const std::string& what) { no_cuda(what.c_str()); }
void cuda_release(void*, int) noexcept {}
void cuda_copy_to_host(void*, const void*, std::size_t, int, const std::string& what) { no_cuda(what.c_str()); }
bool cuda_device_present() { return false; }
std::string cuda_device_name_of(int) { return ""; }

} // namespace vmonarch::detail
