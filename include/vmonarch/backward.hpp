// vmonarch backward pass (spec §7): gradients of VMonarch attention for training and fine-tuning.
//
//   // lean mode: keep only out and lse from the forward; the backward reruns the forward itself
//   vmonarch::attention(q, k, v, out, grid, options, &lse);
//   vmonarch::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, grid, options);
//
//   // saved mode: the training forward keeps the intermediates (no second forward in the backward)
//   vmonarch::SavedState state;
//   vmonarch::attention_training(q, k, v, out, lse, grid, options, state);
//   vmonarch::BackwardOptions bo;
//   bo.saved = &state;
//   vmonarch::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, grid, options, nullptr, bo);
//
// The gradient is that of `out` (and optionally of `lse`) with respect to q, k, v for the forward as
// configured by `options` (iterations, clamp, frame-0 recompute, scale). By default it is the paper's
// gradient, which treats the R-step entropy cL as a constant; entropy_grad = true gives the exact one.
// Exact key groups (options.sink_frames, window_radius, ExtraKeys; spec §3b) and joint sequences (spec §3c)
// are covered on the CPU and on CUDA: their exact part is a FlashAttention backward with the merged LSE (§7).
#pragma once

#include <cstddef>
#include <cstdint>
#include <array>
#include <memory>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch {

constexpr std::size_t kSavedStateHeaderBytes = 128; // header at the start of every saved state

// What attention_training() keeps for attention_backward() (spec §7): per iteration aL, cL and the
// R-step log-sum-exp; aR and cR for iterations 2..t; the last R-step's values Y.
// CPU tensors: stored in the accumulation precision (f32; f64 for f64 inputs), per (batch, head):
//   t·(d + 2) + (t − 1)·(d + 1) + dv   values per token,
// e.g. 517 floats = 2068 bytes per token per head at d = dv = 128, t = 2 (plus a 128-byte header).
// CUDA tensors: device memory, vectors in the input dtype (bf16/f16) and scalars in f32, i.e.
//   2·(t·d + (t − 1)·d + dv) + 4·(3t − 1)   bytes per token per head (+ 256-byte padding per region),
// e.g. 1044 bytes per token per head at d = dv = 128, t = 2 (with O and the LSE 1304; FlashAttention keeps
// those 260).
// The state records the shapes, dtype, grid and options of its forward; attention_backward checks them.
// Move-only. Either owns its memory (default constructor; attention_training sizes it: host memory for CPU
// tensors, cudaMalloc for CUDA tensors) or lives in caller memory of saved_state_bytes(...) bytes
// (SavedState::over), e.g. a framework's tensor.
class SavedState {
public:
    SavedState();
    ~SavedState();
    SavedState(SavedState&&) noexcept;
    SavedState& operator=(SavedState&&) noexcept;
    SavedState(const SavedState&) = delete;
    SavedState& operator=(const SavedState&) = delete;

    // A state in caller-owned memory (host memory for CPU tensors, device memory for CUDA tensors), at least
    // saved_state_bytes(...) long and 8-byte aligned (16-byte for CUDA states). The memory must outlive every use of the state. A
    // buffer that attention_training filled can be wrapped again later (the header inside it says what it
    // holds). CUDA: a host copy of the header is kept; `header` gives it (SavedState::header() of the filled
    // state, or saved_state_header(...) for the forward that filled it), else it is read once, on the first
    // header() / filled() call, with a synchronous cudaMemcpy (after the filling forward's stream work is
    // complete). With `header` no device memory is ever read from the host, which keeps attention_backward
    // legal during CUDA graph capture. attention_training on the state replaces the copy. CPU states ignore it.
    static SavedState over(void* data, std::size_t bytes, Device device = Device::cpu, int device_index = 0,
                           const void* header = nullptr);

    bool filled() const;         // true after attention_training wrote it (see over() for CUDA states)
    // The header (its first kSavedStateHeaderBytes bytes) in host memory; nullptr when there is none.
    const void* header() const;
    std::size_t bytes() const;   // bytes of memory in use (0 when empty)
    const void* data() const;
    void* data();
    Device device() const;
    int device_index() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    friend void attention_training(const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                                   const LseView&, const VideoGrid&, const Options&, SavedState&,
                                   const CudaContext*, const ExtraKeys*);
};

// Bytes of saved state for a forward on these shapes (header included), as attention_training needs; the
// CPU and CUDA layouts differ (q.device decides).
std::size_t saved_state_bytes(const TensorView& q, const TensorView& v, const VideoGrid& grid,
                              const Options& options = {});

// The header attention_training writes at the start of a state for a forward with these arguments.
std::array<unsigned char, kSavedStateHeaderBytes> saved_state_header(const TensorView& q, const TensorView& v,
                                                                     const VideoGrid& grid,
                                                                     const Options& options = {});

struct BackwardOptions {
    // false (default): the paper's gradient, cL treated as a constant (vmonarch_reference with
    // detach_entropy=True). true: the exact gradient, through the entropy term as well.
    bool entropy_grad = false;
    // Bitwise repeatable results. The CPU backward always is (ordered accumulation, independent of the
    // thread count); the flag is accepted there and matters for the CUDA kernels.
    bool deterministic = false;
    // State of attention_training() on the same q, k, v, grid and options; nullptr = lean mode
    // (the forward is rerun inside the backward, one head at a time).
    const SavedState* saved = nullptr;
};

// Gradients of the extra keys of attention() (ExtraKeys, spec §3b): dk [B, L, heads, d] and dv [B, L, heads, dv]
// like extra_keys.k / .v (any strides, either layout, q's dtype and device). Overwritten; positions at or past
// lens[b] (padding) get 0.
struct ExtraKeyGrads {
    TensorView dk, dv;
};

// Training forward: like attention() (the same out and lse up to rounding), and also fills `state` with
// what attention_backward() needs. lse is required (the backward needs it). extra_keys as in attention();
// the state does not depend on them (only out and lse do), but the backward needs the same ones again.
// CUDA tensors: the forward's kernels on cuda->stream (default stream when null), writing into the state's
// device memory (no workspace); the state is complete once that stream's work is. Exact key groups (spec §3b)
// as in attention(): the groups first, then the Monarch steps whose last L-step merges.
void attention_training(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                        const LseView& lse, const VideoGrid& grid, const Options& options, SavedState& state,
                        const CudaContext* cuda = nullptr, const ExtraKeys* extra_keys = nullptr);

// Gradients dq, dk, dv ([B, N, heads, d] / [B, N, heads, dv], any strides like the inputs, dtype of q)
// of the loss given dout = dLoss/dout ([B, N, heads, dv]) and optionally dlse = dLoss/dlse
// ([B, heads, N], f32 or f64 like lse; nullptr = 0). out and lse are what attention() returned for these
// q, k, v, grid and options. dq, dk, dv are overwritten (not accumulated into) and must not overlap
// each other or any input. CPU: exact, fp32 accumulation (fp64 for f64). CUDA (bf16/f16, head_dim 64 or
// 128): fp32 accumulators, work on cuda->stream (default stream when null), workspace cuda->workspace or the
// library's cached buffer; deterministic = true gives bitwise repeatable gradients (exact key groups included:
// their flash backwards accumulate in launch order). Throws ArgumentError for every invalid argument.
// Exact key groups (spec §3b): options.sink_frames / window_radius as in the forward, and extra_keys the same
// extra keys the forward had; with L >= 1 extra keys, extra_grads is required and receives their gradients.
// The merge O = w_M·O_M + w_E·O_E (w = softmax over the Monarch objective and the exact group's LSE) is
// differentiated exactly: the exact group gets a FlashAttention backward with P = exp(s·q·k − lse) of the
// merged lse, the Monarch part its backward with the last L-step's weights exp(z − lse) (spec §7).
void attention_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                        const LseView& lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                        const TensorView& dv, const VideoGrid& grid, const Options& options = {},
                        const LseView* dlse = nullptr, const BackwardOptions& backward = {},
                        const CudaContext* cuda = nullptr, const ExtraKeys* extra_keys = nullptr,
                        const ExtraKeyGrads* extra_grads = nullptr);

// Backward of joint_attention() (spec §3c) over one MMDiT sequence of N video and L = text_tokens text tokens:
// dq, dk, dv ([B, N + L, heads, d] / dv, the sequence's order, overwritten) of the loss given dout (and dlse,
// [B, heads, N + L], optional). out and lse are what joint_attention() returned for these arguments (lse is
// required). Video queries: the backward of attention() with the text keys as extra keys; text queries: a
// FlashAttention backward over every valid key. Lean mode only (backward.saved must be null). CPU and CUDA
// (CUDA: workspace as attention_backward's, backward_workspace_bytes of the video part with
// extra_tokens = L and text_queries = true).
void joint_attention_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                              const LseView& lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                              const TensorView& dv, const VideoGrid& grid, std::int64_t text_tokens,
                              TextPosition text_position, const std::int64_t* text_lens = nullptr,
                              const Options& options = {}, const LseView* dlse = nullptr,
                              const BackwardOptions& backward = {}, const CudaContext* cuda = nullptr);

// Device memory attention_backward needs as CudaContext::workspace for CUDA tensors (0 for CPU tensors):
// f32 gradient accumulators, the L-steps' gradients, the row constants and, in lean mode
// (backward.saved == nullptr; only its presence matters here), room for the rerun forward's state. Without a
// caller workspace the library uses its cached per-(device, stream) buffer, as the forward does.
// extra_tokens: L of the call's extra keys (their f32 gradient accumulators); text_queries: the call is
// joint_attention_backward's video part (q, v of the N video tokens) with L = extra_tokens text queries.
std::size_t backward_workspace_bytes(const TensorView& q, const TensorView& v, const VideoGrid& grid,
                                     const Options& options = {}, const BackwardOptions& backward = {},
                                     std::int64_t extra_tokens = 0, bool text_queries = false);

// Backward FLOPs (spec §7), all batches and heads, without the lean mode's forward rerun:
// (10t + 4)·N·b·d + 10t·N·m·d + 10·b·N·d per head (the last term with the recompute on).
double backward_flops(const VideoGrid& grid, std::int64_t head_dim, std::int64_t heads = 1,
                      std::int64_t batch = 1, const Options& options = {});

} // namespace vmonarch
