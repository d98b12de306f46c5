// Runs VMonarch or dense attention on host tensors, on the CPU or on a CUDA device (copy there and back).
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "attention_inputs.hpp"

namespace vmonarch::cli {

enum class Method { vmonarch, dense };

struct AttentionResult {
    HostTensor out;          // in the session's layout and compute dtype
    HostTensor lse;          // [B, heads, N] f32 when asked for, else empty
    double seconds = 0;      // median time of one call (kernel time on cuda, without the copies)
};

// q, k, v in one layout and one dtype; on cuda they are copied to the device once, on the CPU they are
// used in place (the tensors must outlive the session). The CUDA kernels take bf16/f16 only.
class AttentionSession {
public:
    AttentionSession(Device device, const HostTensor& q, const HostTensor& k, const HostTensor& v, Layout layout,
                     const AttentionShape& shape);
    ~AttentionSession();
    AttentionSession(const AttentionSession&) = delete;
    AttentionSession& operator=(const AttentionSession&) = delete;

    // warmup calls are untimed; the reported time is the median of `repeats` timed calls.
    AttentionResult run(Method method, const VideoGrid& grid, const Options& options, bool want_lse = false,
                        int warmup = 0, int repeats = 1);

    Device device() const { return device_; }

    // Treat the inputs as joint sequences: VMonarch runs joint_attention(), dense runs exact attention over
    // every valid key (joint_attention with every key frame exact).
    void set_joint_text(JointText text) { joint_ = std::move(text); }

private:
    struct DeviceCopies;
    Device device_;
    const HostTensor& q_;
    const HostTensor& k_;
    const HostTensor& v_;
    Layout layout_;
    AttentionShape shape_;
    std::unique_ptr<DeviceCopies> device_copies_;
    std::optional<JointText> joint_;
};

} // namespace vmonarch::cli
