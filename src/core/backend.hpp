// Internal: the validated problem handed from the public API (src/core/api.cpp) to a backend
// (src/cpu, src/cuda). Backends trust these fields; api.cpp checks every one of them first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch::detail {

struct AttentionProblem {
    TensorView q, k, v, out;  // [B, N, heads, d] / [B, N, heads, dv] views, validated
    const LseView* lse = nullptr;  // validated or null
    std::int64_t batch = 0, heads = 0, q_tokens = 0, kv_tokens = 0, head_dim = 0, value_dim = 0;
    double scale = 0;
};

// Validated extra keys (ExtraKeys, spec §3b): present when L >= 1; lens[b] in 0..L for every batch element.
struct ExtraKeysProblem {
    bool present = false;
    TensorView k, v;            // [B, L, heads, d] / [B, L, heads, dv]
    std::int64_t tokens = 0;    // L
    std::vector<std::int64_t> lens;
};

struct TextQueryProblem;

struct MonarchProblem : AttentionProblem {
    VideoGrid grid;             // grid.tokens() == q_tokens == kv_tokens
    int iterations = 2;
    double cr_clamp = 0.1;
    bool recompute_first_frame = true;
    std::int64_t sink_frames = 0;    // S >= 0 (spec §3b)
    std::int64_t window_radius = -1; // r >= 0, or -1: no window
    ExtraKeysProblem extra;
    // The text queries of the joint sequence this is the video part of (vmonarch::joint_attention on CUDA, or
    // null): the CUDA backend runs them with the video part, beside it when they need no workspace. Their
    // scale is this problem's (the same options and head dim).
    const TextQueryProblem* text_queries = nullptr;
    bool has_exact_groups() const { return sink_frames > 0 || window_radius >= 0 || extra.present; }
};

// Text queries of a joint sequence (spec §3c): q = the text queries, k/v = the video keys, extra = the text keys.
struct TextQueryProblem : AttentionProblem {
    ExtraKeysProblem extra;
};

// Argument checks (src/core/api.cpp): throw ArgumentError naming the argument; `fn` is the caller shown in
// the message. They format nothing unless a check fails. check_fit_options and resolve_scale are also used
// by src/cpu/inspect.cpp.
void check_attention(std::string_view fn, const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& out, const LseView* lse, AttentionProblem& p);
MonarchProblem check_monarch(std::string_view fn, const TensorView& q, const TensorView& k, const TensorView& v,
                             const TensorView& out, const VideoGrid& grid, const Options& options, const LseView* lse);
AttentionProblem check_dense(std::string_view fn, const TensorView& q, const TensorView& k, const TensorView& v,
                             const TensorView& out, std::optional<double> softmax_scale, const LseView* lse);
void check_fit_options(std::string_view fn, const Options& options); // iterations, cr_clamp
double resolve_scale(std::string_view fn, const std::optional<double>& scale, std::int64_t head_dim);
// Single-view checks of api.cpp, shared with src/core/exact_groups.cpp.
void check_tensor_view(std::string_view fn, std::string_view name, const TensorView& t);
void check_same_kind(std::string_view fn, std::string_view name, const TensorView& t, const TensorView& ref,
                     std::string_view ref_name); // dtype and device
bool views_overlap(std::string_view fn, std::string_view a_name, const TensorView& a, std::string_view b_name,
                   const TensorView& b);

// vmonarch::attention with a joint sequence's text queries attached to the problem (src/core/api.cpp): the
// same checks (named as vmonarch::attention's) and backend call; text_queries only with CUDA tensors.
void monarch_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                       const VideoGrid& grid, const Options& options, const LseView* lse, const CudaContext* cuda,
                       const ExtraKeys* extra_keys, const TextQueryProblem* text_queries);

// Exact key groups (src/core/exact_groups.cpp): checks options.sink_frames / window_radius and the extra keys
// against p (already checked by check_monarch) and fills p's exact-group fields.
void check_exact_options(std::string_view fn, const Options& options);
// The explicit constructions of inspect.hpp know no exact groups: ArgumentError unless S = 0 and no window.
void check_no_exact_groups(std::string_view fn, const Options& options);
void attach_exact_groups(std::string_view fn, const Options& options, const ExtraKeys* extra, MonarchProblem& p);
// Rows [begin, begin + count) along the token axis of a [B, tokens, heads, d] view / of an lse [B, heads, tokens]
// (src/core/exact_groups.cpp): the video and text parts of a joint sequence.
TensorView token_slice(const TensorView& t, std::int64_t begin, std::int64_t count);
LseView lse_slice(const LseView& l, std::int64_t begin, std::int64_t count);
// FLOPs of flops() (src/core/flops.cpp), arguments already checked.
FlopCount exact_group_flops(const VideoGrid& grid, std::int64_t head_dim, std::int64_t heads, std::int64_t batch,
                            const Options& options, std::int64_t extra_tokens);

// CPU backend (src/cpu).
void cpu_monarch_attention(const MonarchProblem& p);
void cpu_dense_attention(const AttentionProblem& p);
void cpu_text_query_attention(const TextQueryProblem& p); // src/cpu/exact_groups_cpu.cpp

// CUDA backend (src/cuda, or src/core/no_cuda.cc in builds without CUDA, which throws UnsupportedError).
void cuda_monarch_attention(const MonarchProblem& p, const CudaContext* ctx);
void cuda_dense_attention(const AttentionProblem& p, const CudaContext* ctx);
// Text queries of a joint sequence (src/cuda/text_queries.cu); the caller's workspace, when given, is the one
// sized for the video part by cuda_monarch_workspace_bytes, which always covers it.
void cuda_text_query_attention(const TextQueryProblem& p, const CudaContext* ctx);
std::size_t cuda_monarch_workspace_bytes(const MonarchProblem& p);
// Backward pass (spec §7; problems in src/core/backward_problem.hpp, kernels' orchestration in src/cuda/bwd).
struct TrainingProblem;
struct BackwardProblem;
void cuda_monarch_training(const TrainingProblem& p, const CudaContext* ctx); // fills p.saved (device memory)
void cuda_monarch_backward(const BackwardProblem& p, const CudaContext* ctx);
std::size_t cuda_backward_workspace_bytes(const BackwardProblem& p);          // p.saved null: lean mode
void* cuda_allocate(std::size_t bytes, int device_index, const std::string& what); // OutOfMemoryError on failure
void cuda_release(void* ptr, int device_index) noexcept;
void cuda_copy_to_host(void* host, const void* device, std::size_t bytes, int device_index, const std::string& what);
bool cuda_device_present();
std::string cuda_device_name_of(int device_index);

// Element access helpers for strided views (host side).
inline std::int64_t offset_of(const TensorView& t, std::int64_t b, std::int64_t n, std::int64_t h) {
    return b * t.strides[0] + n * t.strides[1] + h * t.strides[2];
}

} // namespace vmonarch::detail
