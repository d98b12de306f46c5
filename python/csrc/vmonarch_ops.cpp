// PyTorch custom operators over the vmonarch C++ library (torch.ops.vmonarch.*).
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
// Autograd: forward only (the backward and its errors are registered in vmonarch/_ops.py); forward-mode
// AD raises NotImplementedError (refuse_forward_ad below).
//
// CUDA: work runs on torch's current stream; the workspace comes from torch's caching allocator, so the
// operator is safe under CUDA graph capture as long as the C++ library itself allocates nothing.
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "binding_common.hpp"
#include "vmonarch/vmonarch.hpp"

#ifdef VMONARCH_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace {

using vmonarch::Layout;
using vmonarch_binding::parse_layout;
using vmonarch_binding::to_dtype;
using vmonarch_binding::translate_errors;
using vmonarch_binding::view_of;

// Checks the torch-level facts the C++ API cannot see (rank, device type, one dtype and device for
// all) and raises TypeError for dtype problems, so that `except TypeError` catches all of those.
void check_inputs(const char* fn, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    const std::pair<const char*, const at::Tensor*> all[3] = {{"q", &q}, {"k", &k}, {"v", &v}};
    for (auto [name, t] : all) {
        TORCH_CHECK_VALUE(t->dim() == 4, fn, ": ", name, " has ", t->dim(), " dimensions, expected 4 ",
                          "([batch, tokens, heads, head_dim] or [batch, heads, tokens, head_dim])");
        TORCH_CHECK_VALUE(t->device().is_cpu() || t->device().is_cuda(), fn, ": ", name, " is on ", t->device(),
                          ", expected a CPU or CUDA tensor");
        TORCH_CHECK_VALUE(t->device() == q.device(), fn, ": ", name, " is on ", t->device(), ", expected ",
                          q.device(), " like q");
        TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(), fn, ": ", name, " has dtype ", t->scalar_type(),
                         ", expected ", q.scalar_type(), " like q");
        TORCH_CHECK_VALUE(t->numel() > 0, fn, ": ", name, " is empty (shape ", t->sizes(), ")");
    }
    to_dtype(q);
    if (q.is_cuda()) {
        TORCH_CHECK_TYPE(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, fn,
                         ": the CUDA kernels take bfloat16 or float16, got ", q.scalar_type(),
                         " on ", q.device(), "; cast with .to(torch.bfloat16) (or run float32 on the CPU)");
    }
}

// True when the C++ API takes this tensor's memory as it is (see vmonarch.hpp and src/core/api.cpp).
bool viewable(const at::Tensor& t) {
    if (t.size(3) > 1 && t.stride(3) != 1) return false;
    for (int a = 0; a < 3; ++a)
        if (t.size(a) > 1 && t.stride(a) < 1) return false;
    if (t.is_cuda()) {
        if (reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 != 0) return false;
        for (int a = 0; a < 3; ++a)
            if (t.size(a) > 1 && t.stride(a) % 8 != 0) return false;
    }
    return true;
}

at::Tensor prepare(const at::Tensor& t) { return viewable(t) ? t : t.contiguous(); }

at::Tensor empty_out(const at::Tensor& q, const at::Tensor& v, Layout layout) {
    const int tok = layout == Layout::bshd ? 1 : 2;
    const int hd = layout == Layout::bshd ? 2 : 1;
    const int64_t B = q.size(0), N = q.size(tok), H = q.size(hd), dv = v.size(3);
    return layout == Layout::bshd ? at::empty({B, N, H, dv}, q.options()) : at::empty({B, H, N, dv}, q.options());
}

at::ScalarType lse_dtype(const at::Tensor& q) {
    return (q.is_cpu() && q.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

struct Prepared {
    at::Tensor q, k, v, out, lse;
    vmonarch::TensorView qv, kv, vv, ov;
    vmonarch::LseView lv;
};

Prepared prepare_all(const char* fn, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                     Layout layout, bool return_lse) {
    check_inputs(fn, q_in, k_in, v_in);
    Prepared p;
    p.q = prepare(q_in);
    p.k = prepare(k_in);
    p.v = prepare(v_in);
    p.out = empty_out(p.q, p.v, layout);
    p.qv = view_of(p.q, layout);
    p.kv = view_of(p.k, layout);
    p.vv = view_of(p.v, layout);
    p.ov = view_of(p.out, layout);
    if (return_lse) {
        p.lse = at::empty({p.qv.batch(), p.qv.heads(), p.qv.tokens()}, p.q.options().dtype(lse_dtype(p.q)));
        p.lv = vmonarch::LseView::contiguous(p.lse.data_ptr(), to_dtype(p.lse), p.qv.device, p.qv.batch(),
                                             p.qv.heads(), p.qv.tokens(), p.qv.device_index);
    } else {
        p.lse = at::empty({0}, p.q.options().dtype(lse_dtype(p.q)));
    }
    return p;
}

// The grid's products T*H*W and H*W are checked by the library (VideoGrid::tokens / frame_tokens go
// through vmonarch::checked_product): a negative or overflowing grid raises ValueError here, before use.
vmonarch::VideoGrid grid_of(const char* fn, at::IntArrayRef grid) {
    TORCH_CHECK_VALUE(grid.size() == 3, fn, ": grid has ", grid.size(),
                      " entries, expected 3 (frames T, height H, width W in tokens)");
    const vmonarch::VideoGrid g{grid[0], grid[1], grid[2]};
    translate_errors([&] { g.tokens(); });
    return g;
}

vmonarch::Options options_of(const char* fn, int64_t iterations, double clamp, bool recompute,
                             std::optional<double> scale) {
    vmonarch::Options o;
    TORCH_CHECK_VALUE(iterations >= INT32_MIN && iterations <= INT32_MAX, fn, ": argument 'iterations' is ",
                      iterations, ", expected 1..8");
    o.iterations = static_cast<int>(iterations);
    o.cr_clamp = clamp;
    o.recompute_first_frame = recompute;
    o.softmax_scale = scale;
    return o;
}

std::tuple<at::Tensor, at::Tensor> attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  at::IntArrayRef grid, int64_t iterations, double clamp,
                                                  bool recompute_first_frame, std::optional<double> scale,
                                                  c10::string_view layout, bool return_lse) {
    const Layout lay = parse_layout(layout);
    const vmonarch::VideoGrid g = grid_of("vmonarch.attention", grid);
    const vmonarch::Options opts = options_of("vmonarch.attention", iterations, clamp, recompute_first_frame, scale);
    Prepared p = prepare_all("vmonarch.attention", q, k, v, lay, return_lse);
    const vmonarch::LseView* lse = return_lse ? &p.lv : nullptr;
    if (p.q.is_cuda()) {
#ifdef VMONARCH_WITH_CUDA
        c10::cuda::CUDAGuard guard(p.q.device());
        std::size_t ws_bytes = 0;
        translate_errors([&] { ws_bytes = vmonarch::workspace_bytes(p.qv, p.vv, g, opts); });
        // From torch's caching allocator: stream-ordered, and graph-safe (captured graphs keep a
        // private pool). At least one byte so the pointer is never null.
        at::Tensor workspace =
            at::empty({static_cast<int64_t>(std::max<std::size_t>(ws_bytes, 1))}, p.q.options().dtype(at::kByte));
        vmonarch::CudaContext ctx;
        ctx.stream = at::cuda::getCurrentCUDAStream(p.q.device().index()).stream();
        ctx.workspace = workspace.data_ptr();
        ctx.workspace_bytes = ws_bytes;
        translate_errors([&] { vmonarch::attention(p.qv, p.kv, p.vv, p.ov, g, opts, lse, &ctx); });
        return {p.out, p.lse};
#endif
    }
    // CPU, or a CUDA tensor in a build without CUDA kernels (the library raises UnsupportedError).
    translate_errors([&] { vmonarch::attention(p.qv, p.kv, p.vv, p.ov, g, opts, lse, nullptr); });
    return {p.out, p.lse};
}

std::tuple<at::Tensor, at::Tensor> dense_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              std::optional<double> scale, c10::string_view layout,
                                              bool return_lse) {
    const Layout lay = parse_layout(layout);
    Prepared p = prepare_all("vmonarch.dense_attention", q, k, v, lay, return_lse);
    const vmonarch::LseView* lse = return_lse ? &p.lv : nullptr;
    if (p.q.is_cuda()) {
#ifdef VMONARCH_WITH_CUDA
        c10::cuda::CUDAGuard guard(p.q.device());
        vmonarch::CudaContext ctx;
        ctx.stream = at::cuda::getCurrentCUDAStream(p.q.device().index()).stream();
        translate_errors([&] { vmonarch::dense_attention(p.qv, p.kv, p.vv, p.ov, scale, lse, &ctx); });
        return {p.out, p.lse};
#endif
    }
    translate_errors([&] { vmonarch::dense_attention(p.qv, p.kv, p.vv, p.ov, scale, lse, nullptr); });
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
    TORCH_CHECK_VALUE(iterations >= 1 && iterations <= 8, fn, ": argument 'iterations' is ", iterations,
                      ", expected 1..8");
    translate_errors([&] { vmonarch::checked_product({batch, g.tokens(), heads, head_dim}, fn,
                                                     "batch*T*H*W*heads*head_dim"); });
    const vmonarch::Options opts = options_of(fn, iterations, 0.1, recompute_first_frame, std::nullopt);
    vmonarch::FlopCount f;
    translate_errors([&] { f = vmonarch::flops(g, head_dim, heads, batch, opts); });
    return {f.r_steps, f.l_steps, f.recompute, f.vmonarch, f.dense};
}

// Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp): the operators have no forward derivative,
// and their autograd kernel runs them without looking at tangents, so the output would carry none (jvp
// then reports a zero tangent). This kernel sits one dispatch level below autograd (ADInplaceOrView),
// where the inputs still carry their tangents (torch.func's wrappers too: level 0 is the only forward-AD
// level torch uses), and refuses them; without tangents it passes the call on unchanged.
void refuse_forward_ad(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    const auto& arguments = op.schema().arguments();
    const auto values = torch::jit::last(*stack, arguments.size());
    for (std::size_t i = 0; i < arguments.size(); ++i) {
        if (!values[i].isTensor()) continue;
        const at::Tensor& t = values[i].toTensor();
        TORCH_CHECK_NOT_IMPLEMENTED(
            !t.defined() || !t._fw_grad(/*level=*/0).defined(), "vmonarch.",
            op.operator_name().name.substr(sizeof("vmonarch::") - 1),
            ": forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not supported: argument '",
            arguments[i].name(), "' has a tangent, but the operator has no forward derivative (it is "
            "forward-only); call it on plain tensors, e.g. torch.autograd.forward_ad.unpack_dual(x).primal");
    }
    at::AutoDispatchBelowADInplaceOrView below;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
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

TORCH_LIBRARY_IMPL(vmonarch, ADInplaceOrView, m) {
    m.impl("attention", torch::CppFunction::makeFromBoxedFunction<&refuse_forward_ad>());
    m.impl("dense_attention", torch::CppFunction::makeFromBoxedFunction<&refuse_forward_ad>());
}

TORCH_LIBRARY_IMPL(vmonarch, CPU, m) {
    m.impl("attention", &attention_impl);
    m.impl("dense_attention", &dense_impl);
}

TORCH_LIBRARY_IMPL(vmonarch, CUDA, m) {
    m.impl("attention", &attention_impl);
    m.impl("dense_attention", &dense_impl);
}

// ---- exact key groups (spec §3b) and joint text+video sequences (spec §3c) ------------------------------
// vmonarch::attention_exact_groups: attention with sink frames, a temporal window and extra (text) keys.
// vmonarch::joint_attention: one MMDiT sequence of video and text tokens, text first or last.
// Valid text lengths come as an integer tensor [B] (text_lens) or a bool key-padding mask [B, L] that must be
// a prefix (text_mask); both are read on the host.
namespace {

void check_text_tensor(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& q) {
    TORCH_CHECK_VALUE(t.dim() == 4, fn, ": ", name, " has ", t.dim(), " dimensions, expected 4 (like q)");
    TORCH_CHECK_VALUE(t.device() == q.device(), fn, ": ", name, " is on ", t.device(), ", expected ", q.device(),
                      " like q");
    TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), fn, ": ", name, " has dtype ", t.scalar_type(),
                     ", expected ", q.scalar_type(), " like q");
}

// Per-batch valid text lengths from text_lens ([B] integers) or text_mask ([B, L] bool prefix); none: all valid.
std::optional<std::vector<int64_t>> text_lengths(const char* fn, const std::optional<at::Tensor>& lens,
                                                 const std::optional<at::Tensor>& mask, int64_t batch, int64_t L) {
    TORCH_CHECK_VALUE(!(lens && mask), fn, ": text_lens and text_mask are both given, expected at most one");
    if (lens) {
        TORCH_CHECK_TYPE(!at::isFloatingType(lens->scalar_type()) && lens->scalar_type() != at::kBool, fn,
                         ": text_lens has dtype ", lens->scalar_type(), ", expected an integer tensor");
        TORCH_CHECK_VALUE(lens->dim() == 1 && lens->size(0) == batch, fn, ": text_lens has shape ", lens->sizes(),
                          ", expected [", batch, "] (one valid length per batch element)");
        const at::Tensor host = lens->to(at::kCPU, at::kLong).contiguous();
        const int64_t* p = host.data_ptr<int64_t>();
        return std::vector<int64_t>(p, p + batch);
    }
    if (mask) {
        TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, fn, ": text_mask has dtype ", mask->scalar_type(),
                         ", expected torch.bool (True = valid key)");
        TORCH_CHECK_VALUE(mask->dim() == 2 && mask->size(0) == batch && mask->size(1) == L, fn,
                          ": text_mask has shape ", mask->sizes(), ", expected [", batch, ", ", L, "]");
        const at::Tensor host = mask->to(at::kCPU).contiguous();
        const bool* p = host.data_ptr<bool>();
        std::vector<int64_t> out(static_cast<std::size_t>(batch));
        for (int64_t b = 0; b < batch; ++b) {
            int64_t n = 0;
            while (n < L && p[b * L + n]) ++n;
            for (int64_t i = n; i < L; ++i)
                TORCH_CHECK_VALUE(!p[b * L + i], fn, ": text_mask[", b, "] is not a key-padding prefix (True at ", i,
                                  " after False at ", n, "), expected the valid text tokens first");
            out[static_cast<std::size_t>(b)] = n;
        }
        return out;
    }
    return std::nullopt;
}

vmonarch::Options exact_options_of(const char* fn, int64_t iterations, double clamp, bool recompute,
                                   std::optional<double> scale, int64_t sink_frames,
                                   std::optional<int64_t> window_radius) {
    vmonarch::Options o = options_of(fn, iterations, clamp, recompute, scale);
    o.sink_frames = sink_frames;
    o.window_radius = window_radius;
    return o;
}

// Calls f(ctx) with a CudaContext on torch's current stream and a workspace for `workspace_of` (CUDA), or
// f(nullptr) on the CPU (and for CUDA tensors in builds without kernels: the library raises then).
template <typename F>
void with_context(const Prepared& p, const vmonarch::TensorView& video_q, const vmonarch::TensorView& video_v,
                  const vmonarch::VideoGrid& g, const vmonarch::Options& opts, F&& f) {
#ifdef VMONARCH_WITH_CUDA
    if (p.q.is_cuda()) {
        c10::cuda::CUDAGuard guard(p.q.device());
        std::size_t ws_bytes = 0;
        translate_errors([&] { ws_bytes = vmonarch::workspace_bytes(video_q, video_v, g, opts); });
        at::Tensor workspace =
            at::empty({static_cast<int64_t>(std::max<std::size_t>(ws_bytes, 1))}, p.q.options().dtype(at::kByte));
        vmonarch::CudaContext ctx;
        ctx.stream = at::cuda::getCurrentCUDAStream(p.q.device().index()).stream();
        ctx.workspace = workspace.data_ptr();
        ctx.workspace_bytes = ws_bytes;
        translate_errors([&] { f(&ctx); });
        return;
    }
#else
    (void)video_q, (void)video_v, (void)g, (void)opts;
#endif
    translate_errors([&] { f(static_cast<const vmonarch::CudaContext*>(nullptr)); });
}

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
    Prepared p = prepare_all(fn, q, k, v, lay, return_lse);
    TORCH_CHECK_VALUE(text_k.has_value() == text_v.has_value(), fn, ": ", text_k ? "text_k" : "text_v",
                      " is given without ", text_k ? "text_v" : "text_k", ", expected both or neither");
    TORCH_CHECK_VALUE(text_k || !text_lens, fn, ": text_lens is given without text_k/text_v");
    at::Tensor tk, tv;
    std::optional<std::vector<int64_t>> lens;
    vmonarch::ExtraKeys extra;
    if (text_k) {
        check_text_tensor(fn, "text_k", *text_k, q);
        check_text_tensor(fn, "text_v", *text_v, q);
        tk = prepare(*text_k);
        tv = prepare(*text_v);
        extra.k = view_of(tk, lay);
        extra.v = view_of(tv, lay);
        lens = text_lengths(fn, text_lens, std::nullopt, p.qv.batch(), extra.k.tokens());
        extra.lens = lens ? lens->data() : nullptr;
    }
    const vmonarch::LseView* lse = return_lse ? &p.lv : nullptr;
    with_context(p, p.qv, p.vv, g, opts, [&](const vmonarch::CudaContext* ctx) {
        vmonarch::attention(p.qv, p.kv, p.vv, p.ov, g, opts, lse, ctx, text_k ? &extra : nullptr);
    });
    return {p.out, p.lse};
}

std::tuple<at::Tensor, at::Tensor> joint_attention_impl(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::IntArrayRef grid, int64_t text_len,
    bool text_first, const std::optional<at::Tensor>& text_lens, const std::optional<at::Tensor>& text_mask,
    int64_t iterations, double clamp, bool recompute_first_frame, std::optional<double> scale,
    c10::string_view layout, bool return_lse, int64_t sink_frames, std::optional<int64_t> window_radius) {
    const char* fn = "vmonarch.joint_attention";
    const Layout lay = parse_layout(layout);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames,
                                                    window_radius);
    Prepared p = prepare_all(fn, q, k, v, lay, return_lse);
    TORCH_CHECK_VALUE(text_len >= 0 && text_len <= p.qv.tokens(), fn, ": text_len is ", text_len, ", expected 0..",
                      p.qv.tokens(), " (the sequence's tokens)");
    const auto lens = text_lengths(fn, text_lens, text_mask, p.qv.batch(), text_len);
    const vmonarch::LseView* lse = return_lse ? &p.lv : nullptr;
    vmonarch::TensorView video_q = p.qv, video_v = p.vv; // the workspace covers the video part
    video_q.shape[1] = video_v.shape[1] = p.qv.tokens() - text_len;
    with_context(p, video_q, video_v, g, opts, [&](const vmonarch::CudaContext* ctx) {
        vmonarch::joint_attention(p.qv, p.kv, p.vv, p.ov, g, text_len,
                                  text_first ? vmonarch::TextPosition::first : vmonarch::TextPosition::last,
                                  lens ? lens->data() : nullptr, opts, lse, ctx);
    });
    return {p.out, p.lse};
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

TORCH_LIBRARY_IMPL(vmonarch, ADInplaceOrView, m) {
    m.impl("attention_exact_groups", torch::CppFunction::makeFromBoxedFunction<&refuse_forward_ad>());
    m.impl("joint_attention", torch::CppFunction::makeFromBoxedFunction<&refuse_forward_ad>());
}

TORCH_LIBRARY_IMPL(vmonarch, CPU, m) {
    m.impl("attention_exact_groups", &attention_exact_impl);
    m.impl("joint_attention", &joint_attention_impl);
}

TORCH_LIBRARY_IMPL(vmonarch, CUDA, m) {
    m.impl("attention_exact_groups", &attention_exact_impl);
    m.impl("joint_attention", &joint_attention_impl);
}
