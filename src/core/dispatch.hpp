// Internal: the validated problem handed from the public API (src/core/api.cpp) to a backend
// (src/cpu, src/cuda). Backends trust these fields; api.cpp checks every one of them first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch::detail {

struct AttentionProblem {
    TensorView q, k, v, out;  // [B, N, heads, d] / [B, N, heads, dv] views, validated
    const LseView* lse = nullptr;  // validated or null
    std::int64_t batch = 0, heads = 0, q_tokens = 0, kv_tokens = 0, head_dim = 0, value_dim = 0;
    double scale = 0;
};

struct MonarchProblem : AttentionProblem {
    VideoGrid grid;             // grid.tokens() == q_tokens == kv_tokens
    int iterations = 2;
    double cr_clamp = 0.1;
    bool recompute_first_frame = true;
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

// CPU backend (src/cpu).
void cpu_monarch_attention(const MonarchProblem& p);
void cpu_dense_attention(const AttentionProblem& p);

// CUDA backend (src/cuda, or src/core/no_cuda.cc in builds without CUDA, which throws UnsupportedError).
void cuda_monarch_attention(const MonarchProblem& p, const CudaContext* ctx);
void cuda_dense_attention(const AttentionProblem& p, const CudaContext* ctx);
std::size_t cuda_monarch_workspace_bytes(const MonarchProblem& p);
bool cuda_device_present();
std::string cuda_device_name_of(int device_index);

// Element access helpers for strided views (host side).
inline std::int64_t offset_of(const TensorView& t, std::int64_t b, std::int64_t n, std::int64_t h) {
    return b * t.strides[0] + n * t.strides[1] + h * t.strides[2];
}

} // namespace vmonarch::detail
