// Runs VMonarch's backward (spec §7) on host tensors for `vmonarch backward`: the forward (its out and LSE are
// what the backward needs; the training forward with --saved), then attention_backward, on the CPU or on a CUDA
// device (the tensors are copied there and back; the CUDA kernels take bf16/f16).
#pragma once

#include <cstddef>
#include <optional>

#include "attention_inputs.hpp"
#include "vmonarch/backward.hpp"

namespace vmonarch::cli {

struct BackwardRequest {
    Layout layout = Layout::bshd;
    AttentionShape shape;
    VideoGrid grid;
    Options options;
    bool entropy_grad = false;
    bool deterministic = false;
    bool saved = false;                  // keep the forward's state instead of rerunning it in the backward
    std::optional<JointText> joint;      // a joint text+video sequence (spec §3c; lean mode only)
};

struct BackwardResult {
    std::size_t saved_bytes = 0; // bytes of the saved state (--saved), 0 in lean mode
    double seconds = 0;          // forward + backward, without the copies to and from the device
};

// q, k, v, dout in the request's layout and one dtype (the compute dtype); dq, dk, dv are overwritten (their
// shapes are q's, k's and v's, that dtype). Errors of the library propagate (ArgumentError, UnsupportedError,
// CudaError for a failed CUDA call).
BackwardResult run_backward(Device device, const BackwardRequest& request, const HostTensor& q, const HostTensor& k,
                            const HostTensor& v, const HostTensor& dout, HostTensor& dq, HostTensor& dk,
                            HostTensor& dv);

} // namespace vmonarch::cli
