// PyTorch custom operators over the vmonarch C++ library (torch.ops.vmonarch.*).
//
// The argument checks and tensor preparation are binding_args.hpp's, shared with backward_ops.cpp.
//
// The operators take tensors in either layout the C++ API views without copies:
//   "bshd": [batch, tokens, heads, head_dim]   (flash-attn, Wan)
//   "bhsd": [batch, heads, tokens, head_dim]   (PyTorch SDPA)
// and build vmonarch::TensorView's from their data pointers and strides. An input whose strides the
// C++ API does not take (head dim not contiguous, a broadcast (zero) stride, or on CUDA a pointer not
// 16-byte aligned or a stride not a multiple of 8 elements) is copied with .contiguous() first.
//
// Errors: vmonarch::ArgumentError -> c10::ValueError (Python ValueError), dtype problems ->
// c10::TypeError (TypeError), vmonarch::UnsupportedError -> c10::NotImplementedError, anything else
// -> c10::Error (RuntimeError). The messages are the C++ library's.
//
// Autograd: the backward rules are registered in vmonarch/_backward.py (operators in backward_ops.cpp);
// forward-mode AD raises NotImplementedError (refuse_forward_ad, binding_common.hpp).
//
// CUDA: work runs on torch's current stream; the workspace comes from torch's caching allocator, so the
// operator is safe under CUDA graph capture as long as the C++ library itself allocates nothing.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "binding_args.hpp"
#include "binding_common.hpp"
#include "forward_ops.hpp"
#include "vmonarch/vmonarch.hpp"

namespace {

using vmonarch::Layout;
using namespace vmonarch_binding; // the shared checks and helpers (binding_args.hpp, binding_common.hpp)

std::tuple<at::Tensor, at::Tensor> attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  at::IntArrayRef grid, int64_t iterations, double clamp,
                                                  bool recompute_first_frame, std::optional<double> scale,
                                                  c10::string_view layout, bool return_lse) {
    const char* fn = "vmonarch.attention";
    const Layout lay = parse_layout(layout);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = options_of(fn, iterations, clamp, recompute_first_frame, scale);
    const Prepared p = prepare_all(fn, q, k, v, lay, return_lse);
    with_cuda_context(p.q, [&] { return vmonarch::workspace_bytes(p.qv, p.vv, g, opts); },
                      [&](const vmonarch::CudaContext* ctx) {
                          vmonarch::attention(p.qv, p.kv, p.vv, p.ov, g, opts, p.lse_or_null(), ctx);
                      });
    return {p.out, p.lse};
}

std::tuple<at::Tensor, at::Tensor> dense_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              std::optional<double> scale, c10::string_view layout,
                                              bool return_lse) {
    const Layout lay = parse_layout(layout);
    const Prepared p = prepare_all("vmonarch.dense_attention", q, k, v, lay, return_lse);
    with_cuda_context(p.q, [] { return std::size_t(0); }, [&](const vmonarch::CudaContext* ctx) {
        vmonarch::dense_attention(p.qv, p.kv, p.vv, p.ov, scale, p.lse_or_null(), ctx);
    });
    return {p.out, p.lse};
}

// FLOPs of spec §4. Every size must be >= 1 and the problem must be representable: the element count of
// q, batch*T*H*W*heads*head_dim, must fit int64 (checked_product), as for any tensor the operators take.
std::vector<double> flops_impl(at::IntArrayRef grid, int64_t head_dim, int64_t heads, int64_t batch,
                               int64_t iterations, bool recompute_first_frame) {
    constexpr const char* fn = "vmonarch.flops";
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const std::pair<const char*, int64_t> sizes[6] = {{"grid[0] (T)", g.T}, {"grid[1] (H)", g.H},
                                                      {"grid[2] (W)", g.W}, {"head_dim", head_dim},
                                                      {"heads", heads},     {"batch", batch}};
    for (auto [name, value] : sizes)
        TORCH_CHECK_VALUE(value >= 1, fn, ": argument '", name, "' is ", value, ", expected >= 1");
    const vmonarch::Options opts = options_of(fn, iterations, 0.1, recompute_first_frame, std::nullopt);
    translate_errors([&] { vmonarch::checked_product({batch, g.tokens(), heads, head_dim}, fn,
                                                     "batch*T*H*W*heads*head_dim"); });
    vmonarch::FlopCount f;
    translate_errors([&] { f = vmonarch::flops(g, head_dim, heads, batch, opts); });
    return {f.r_steps, f.l_steps, f.recompute, f.vmonarch, f.dense};
}

bool cuda_built_impl() {
#ifdef VMONARCH_WITH_CUDA
    return true;
#else
    return false;
#endif
}

bool cuda_available_impl() { return vmonarch::cuda_available(); }

} // namespace

TORCH_LIBRARY(vmonarch, m) {
    m.def("attention(Tensor q, Tensor k, Tensor v, int[] grid, int iterations=2, float clamp=0.1, "
          "bool recompute_first_frame=True, float? scale=None, str layout=\"bshd\", bool return_lse=False) "
          "-> (Tensor out, Tensor lse)");
    m.def("dense_attention(Tensor q, Tensor k, Tensor v, float? scale=None, str layout=\"bshd\", "
          "bool return_lse=False) -> (Tensor out, Tensor lse)");
    // No tensor arguments: these get a catch-all kernel.
    m.def("flops(int[] grid, int head_dim, int heads=1, int batch=1, int iterations=2, "
          "bool recompute_first_frame=True) -> float[]",
          &flops_impl);
    m.def("cuda_built() -> bool", &cuda_built_impl);
    m.def("cuda_available() -> bool", &cuda_available_impl);
}

// ---- exact key groups (spec §3b) and joint text+video sequences (spec §3c) ------------------------------
// vmonarch::attention_exact_groups: attention with sink frames, a temporal window and extra (text) keys.
// vmonarch::joint_attention: one MMDiT sequence of video and text tokens, text first or last.
// Valid text lengths come as an integer tensor [B] (text_lens) or a bool key-padding mask [B, L] that must be
// a prefix (text_mask); both are read on the host.
namespace vmonarch_binding {

std::tuple<at::Tensor, at::Tensor> joint_attention_forward(
    const char* fn, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::IntArrayRef grid,
    int64_t text_len, bool text_first, const std::optional<at::Tensor>& text_lens,
    const std::optional<at::Tensor>& text_mask, int64_t iterations, double clamp, bool recompute_first_frame,
    std::optional<double> scale, c10::string_view layout, bool return_lse, int64_t sink_frames,
    std::optional<int64_t> window_radius) {
    const vmonarch::Layout lay = parse_layout(layout);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames,
                                                    window_radius);
    const Prepared p = prepare_all(fn, q, k, v, lay, return_lse);
    check_text_len(fn, text_len, p.qv.tokens());
    const auto lens = text_lengths(fn, text_lens, text_mask, p.qv.batch(), text_len);
    const vmonarch::TensorView video_q = video_part(p.qv, text_len), video_v = video_part(p.vv, text_len);
    with_cuda_context(
        p.q,
        [&] { // a sequence that does not split into N + text_len gets joint_attention's own error
            if (video_q.tokens() != g.tokens()) return std::size_t(0);
            return vmonarch::workspace_bytes(video_q, video_v, g, opts);
        },
        [&](const vmonarch::CudaContext* ctx) {
            vmonarch::joint_attention(p.qv, p.kv, p.vv, p.ov, g, text_len, text_position(text_first),
                                      lens ? lens->data() : nullptr, opts, p.lse_or_null(), ctx);
        });
    return {p.out, p.lse};
}

} // namespace vmonarch_binding

namespace {


std::tuple<at::Tensor, at::Tensor> attention_exact_impl(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::IntArrayRef grid, int64_t iterations,
    double clamp, bool recompute_first_frame, std::optional<double> scale, c10::string_view layout, bool return_lse,
    int64_t sink_frames, std::optional<int64_t> window_radius, const std::optional<at::Tensor>& text_k,
    const std::optional<at::Tensor>& text_v, const std::optional<at::Tensor>& text_lens) {
    const char* fn = "vmonarch.attention";
    const Layout lay = parse_layout(layout);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames,
                                                    window_radius);
    const Prepared p = prepare_all(fn, q, k, v, lay, return_lse);
    const TextKeys text = text_keys_of(fn, text_k, text_v, text_lens, q, lay);
    with_cuda_context(p.q, [&] { return vmonarch::workspace_bytes(p.qv, p.vv, g, opts); },
                      [&](const vmonarch::CudaContext* ctx) {
                          vmonarch::attention(p.qv, p.kv, p.vv, p.ov, g, opts, p.lse_or_null(), ctx,
                                              text.extra_or_null());
                      });
    return {p.out, p.lse};
}

std::tuple<at::Tensor, at::Tensor> joint_attention_impl(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::IntArrayRef grid, int64_t text_len,
    bool text_first, const std::optional<at::Tensor>& text_lens, const std::optional<at::Tensor>& text_mask,
    int64_t iterations, double clamp, bool recompute_first_frame, std::optional<double> scale,
    c10::string_view layout, bool return_lse, int64_t sink_frames, std::optional<int64_t> window_radius) {
    return vmonarch_binding::joint_attention_forward("vmonarch.joint_attention", q, k, v, grid, text_len, text_first,
                                                     text_lens, text_mask, iterations, clamp, recompute_first_frame,
                                                     scale, layout, return_lse, sink_frames, window_radius);
}

std::vector<double> exact_flops_impl(at::IntArrayRef grid, int64_t head_dim, int64_t heads, int64_t batch,
                                     int64_t iterations, bool recompute_first_frame, int64_t sink_frames,
                                     std::optional<int64_t> window_radius, int64_t text_len, bool joint) {
    const char* fn = "vmonarch.flops";
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = exact_options_of(fn, iterations, 0.1, recompute_first_frame,
                                                    std::nullopt, sink_frames, window_radius);
    vmonarch::FlopCount f;
    translate_errors([&] {
        f = joint ? vmonarch::joint_flops(g, text_len, head_dim, heads, batch, opts)
                  : vmonarch::flops(g, head_dim, heads, batch, opts, text_len);
    });
    return {f.r_steps, f.l_steps, f.recompute, f.vmonarch, f.dense, f.exact, f.text_queries};
}

} // namespace

TORCH_LIBRARY_FRAGMENT(vmonarch, m) {
    m.def("attention_exact_groups(Tensor q, Tensor k, Tensor v, int[] grid, int iterations=2, float clamp=0.1, "
          "bool recompute_first_frame=True, float? scale=None, str layout=\"bshd\", bool return_lse=False, "
          "int sink_frames=0, int? window_radius=None, Tensor? text_k=None, Tensor? text_v=None, "
          "Tensor? text_lens=None) -> (Tensor out, Tensor lse)");
    m.def("joint_attention(Tensor q, Tensor k, Tensor v, int[] grid, int text_len, bool text_first=False, "
          "Tensor? text_lens=None, Tensor? text_mask=None, int iterations=2, float clamp=0.1, "
          "bool recompute_first_frame=True, float? scale=None, str layout=\"bshd\", bool return_lse=False, "
          "int sink_frames=0, int? window_radius=None) -> (Tensor out, Tensor lse)");
    m.def("exact_flops(int[] grid, int head_dim, int heads=1, int batch=1, int iterations=2, "
          "bool recompute_first_frame=True, int sink_frames=0, int? window_radius=None, int text_len=0, "
          "bool joint=False) -> float[]",
          &exact_flops_impl);
}

namespace {

// The kernels of this file's operators: the same for CPU and CUDA tensors (the library dispatches on the views'
// device; a build without CUDA kernels raises UnsupportedError for CUDA tensors).
void impl_kernels(torch::Library& m) {
    m.impl("attention", &attention_impl);
    m.impl("dense_attention", &dense_impl);
    m.impl("attention_exact_groups", &attention_exact_impl);
    m.impl("joint_attention", &joint_attention_impl);
}

} // namespace

TORCH_LIBRARY_IMPL(vmonarch, ADInplaceOrView, m) {
    vmonarch_binding::refuse_forward_ad_for(m, {"attention", "dense_attention", "attention_exact_groups",
                                                "joint_attention"});
}

TORCH_LIBRARY_IMPL(vmonarch, CPU, m) { impl_kernels(m); }

TORCH_LIBRARY_IMPL(vmonarch, CUDA, m) { impl_kernels(m); }
