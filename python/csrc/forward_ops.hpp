// Forward operator bodies (defined in vmonarch_ops.cpp) that the training operators of backward_ops.cpp run
// as they are.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace vmonarch_binding {

// vmonarch::joint_attention over one joint sequence [B, N + text_len, heads, d] (spec §3c), with the valid text
// lengths from text_lens or text_mask (binding_args.hpp: text_lengths); lse [B, heads, N + text_len] when
// return_lse, else empty. fn names the operator in messages.
std::tuple<at::Tensor, at::Tensor> joint_attention_forward(
    const char* fn, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::IntArrayRef grid,
    int64_t text_len, bool text_first, const std::optional<at::Tensor>& text_lens,
    const std::optional<at::Tensor>& text_mask, int64_t iterations, double clamp, bool recompute_first_frame,
    std::optional<double> scale, c10::string_view layout, bool return_lse, int64_t sink_frames,
    std::optional<int64_t> window_radius);

} // namespace vmonarch_binding
