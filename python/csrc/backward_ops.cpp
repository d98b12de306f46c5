// PyTorch operators of the backward pass (include/vmonarch/backward.hpp), in the same torch library as
// python/csrc/vmonarch_ops.cpp:
//   attention_train(q, k, v, grid, ...) -> (out, lse, saved)       forward for autograd; saved is the
//       training forward's state as a uint8 tensor (save_state=True) or empty (lean mode)
//   attention_backward(q, k, v, out, lse, dout, dlse, grid, ..., saved) -> (dq, dk, dv)
//   attention_exact_train / attention_exact_backward: the same with sink frames, a window and text keys
//       (spec §3b); the backward also returns the text keys' gradients (empty without text keys)
//   joint_attention_train(...) -> (out, lse), joint_attention_backward(...) -> (dq, dk, dv): joint
//       sequences (spec §3c), lean mode; valid text lengths as an integer tensor [B] (or None: all valid)
// Layouts "bshd" / "bhsd" as in vmonarch_ops.cpp; gradients come back in the inputs' layout and dtype.
// CUDA: work runs on torch's current stream, the workspace and the saved state come from torch's caching
// allocator, and the saved state's header is passed from the host (SavedState::over with the header of
// saved_state_header), so neither op synchronizes or reads device memory: both are CUDA-graph-safe.
// Errors: ArgumentError -> ValueError, UnsupportedError -> NotImplementedError.
// The layout/dtype helpers and the error translation come from binding_common.hpp.
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#ifdef VMONARCH_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <algorithm>

#include "binding_common.hpp"
#include "vmonarch/backward.hpp"

namespace {

using vmonarch::Layout;
using vmonarch_binding::parse_layout;
using vmonarch_binding::to_dtype;
using vmonarch_binding::translate_errors;
using vmonarch_binding::view_of;

void check_tensor(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& q, int64_t dims) {
    TORCH_CHECK_VALUE(t.dim() == dims, fn, ": ", name, " has ", t.dim(), " dimensions, expected ", dims);
    TORCH_CHECK_VALUE(t.device() == q.device(), fn, ": ", name, " is on ", t.device(), ", expected ", q.device(),
                      " like q");
    TORCH_CHECK_VALUE(t.numel() > 0, fn, ": ", name, " is empty (shape ", t.sizes(), ")");
}

void check_qkv(const char* fn, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    const std::pair<const char*, const at::Tensor*> all[3] = {{"q", &q}, {"k", &k}, {"v", &v}};
    for (auto [name, t] : all) {
        TORCH_CHECK_VALUE(t->device().is_cpu() || t->device().is_cuda(), fn, ": ", name, " is on ", t->device(),
                          ", expected a CPU or CUDA tensor");
        check_tensor(fn, name, *t, q, 4);
        TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(), fn, ": ", name, " has dtype ", t->scalar_type(),
                         ", expected ", q.scalar_type(), " like q");
    }
    to_dtype(q);
    TORCH_CHECK_TYPE(!q.is_cuda() || q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, fn,
                     ": the CUDA kernels take bfloat16 or float16, got ", q.scalar_type(),
                     " (use bfloat16/float16 CUDA tensors, or CPU tensors)");
}

// Contiguous in the head dim and no broadcast strides: what the C++ API views without a copy. CUDA views
// also need 16-byte aligned data and strides that are multiples of 8 elements.
at::Tensor viewable(const at::Tensor& t) {
    bool ok = t.size(-1) <= 1 || t.stride(-1) == 1;
    for (int a = 0; a + 1 < t.dim(); ++a) ok = ok && (t.size(a) <= 1 || t.stride(a) >= 1);
    if (t.is_cuda()) {
        ok = ok && reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
        for (int a = 0; a + 1 < t.dim(); ++a) ok = ok && (t.size(a) <= 1 || t.stride(a) % 8 == 0);
    }
    return ok ? t : t.contiguous();
}

// Calls f(ctx) with a CudaContext on torch's current stream and a workspace of `ws_bytes()` bytes from
// torch's caching allocator (stream-ordered and graph-safe) for CUDA tensors; f(nullptr) otherwise (CPU,
// or CUDA tensors in a build without CUDA kernels, where the library raises UnsupportedError).
template <typename Bytes, typename F>
void with_cuda_context(const at::Tensor& q, Bytes&& ws_bytes, F&& f) {
#ifdef VMONARCH_WITH_CUDA
    if (q.is_cuda()) {
        c10::cuda::CUDAGuard guard(q.device());
        std::size_t bytes = 0;
        translate_errors([&] { bytes = ws_bytes(); });
        at::Tensor workspace = at::empty({static_cast<int64_t>(std::max<std::size_t>(bytes, 1))}, q.options().dtype(at::kByte));
        vmonarch::CudaContext ctx;
        ctx.stream = at::cuda::getCurrentCUDAStream(q.device().index()).stream();
        ctx.workspace = workspace.data_ptr();
        ctx.workspace_bytes = bytes;
        translate_errors([&] { f(&ctx); });
        return;
    }
#endif
    (void)ws_bytes;
    translate_errors([&] { f(static_cast<const vmonarch::CudaContext*>(nullptr)); });
}

// SavedState over a torch tensor. CUDA: with the header a forward with these arguments writes, given from the
// host (the tensor is the one attention_train returned for them, the autograd rule guarantees it).
vmonarch::SavedState state_over(const at::Tensor& s, std::size_t bytes, const vmonarch::TensorView& qv,
                                const vmonarch::TensorView& vv, const vmonarch::VideoGrid& g, const vmonarch::Options& o) {
    if (qv.device != vmonarch::Device::cuda) return vmonarch::SavedState::over(s.data_ptr(), bytes, qv.device, qv.device_index);
    const auto header = vmonarch::saved_state_header(qv, vv, g, o);
    return vmonarch::SavedState::over(s.data_ptr(), bytes, qv.device, qv.device_index, header.data());
}

vmonarch::LseView lse_view_of(const at::Tensor& t) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
                     "vmonarch.attention_backward: lse tensors are float32 or float64, got ", t.scalar_type());
    vmonarch::LseView view;
    view.data = t.data_ptr();
    view.dtype = t.scalar_type() == at::kDouble ? vmonarch::DType::f64 : vmonarch::DType::f32;
    view.device = t.is_cuda() ? vmonarch::Device::cuda : vmonarch::Device::cpu;
    view.device_index = t.is_cuda() ? t.device().index() : 0;
    view.shape = {t.size(0), t.size(1), t.size(2)};
    view.strides = {t.stride(0), t.stride(1), t.stride(2)};
    return view;
}

// The optional gradient of the LSE output: checked like lse, converted to lse's dtype, kept alive with its view.
struct OptionalLse {
    at::Tensor tensor;
    vmonarch::LseView view;
    const vmonarch::LseView* view_or_null() const { return tensor.defined() ? &view : nullptr; }
};

OptionalLse optional_lse_of(const char* fn, const std::optional<at::Tensor>& dlse_in, const at::Tensor& q,
                            const at::Tensor& lse) {
    OptionalLse d;
    if (dlse_in.has_value() && dlse_in->defined()) {
        check_tensor(fn, "dlse", *dlse_in, q, 3);
        d.tensor = dlse_in->to(lse.scalar_type()).contiguous();
        d.view = lse_view_of(d.tensor);
    }
    return d;
}

at::Tensor empty_like_layout(const at::Tensor& like) {
    return at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}

at::ScalarType lse_dtype(const at::Tensor& q) {
    return (q.is_cpu() && q.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

vmonarch::VideoGrid grid_of(const char* fn, at::IntArrayRef grid) {
    TORCH_CHECK_VALUE(grid.size() == 3, fn, ": grid has ", grid.size(),
                      " entries, expected 3 (frames T, height H, width W in tokens)");
    return vmonarch::VideoGrid{grid[0], grid[1], grid[2]};
}

vmonarch::Options options_of(const char* fn, int64_t iterations, double clamp, bool recompute,
                             std::optional<double> scale) {
    TORCH_CHECK_VALUE(iterations >= 1 && iterations <= 8, fn, ": iterations is ", iterations, ", expected 1..8");
    vmonarch::Options o;
    o.iterations = static_cast<int>(iterations);
    o.cr_clamp = clamp;
    o.recompute_first_frame = recompute;
    o.softmax_scale = scale;
    return o;
}

// The tensors of a backward op: q, k, v checked as the forward checks them; out and dout of q's rank, device and
// dtype; lse of rank 3; all viewable (lse contiguous); and dq, dk, dv allocated in the inputs' layout.
struct BackwardTensors {
    at::Tensor q, k, v, out, dout, lse, dq, dk, dv;
};
BackwardTensors backward_tensors(const char* fn, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                 const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& dout_in) {
    check_qkv(fn, q_in, k_in, v_in);
    check_tensor(fn, "out", out_in, q_in, 4);
    check_tensor(fn, "dout", dout_in, q_in, 4);
    check_tensor(fn, "lse", lse_in, q_in, 3);
    TORCH_CHECK_TYPE(out_in.scalar_type() == q_in.scalar_type(), fn, ": out has dtype ", out_in.scalar_type(),
                     ", expected ", q_in.scalar_type(), " like q");
    TORCH_CHECK_TYPE(dout_in.scalar_type() == q_in.scalar_type(), fn, ": dout has dtype ", dout_in.scalar_type(),
                     ", expected ", q_in.scalar_type(), " like q");
    return {viewable(q_in),          viewable(k_in),          viewable(v_in),
            viewable(out_in),        viewable(dout_in),       lse_in.contiguous(),
            empty_like_layout(q_in), empty_like_layout(k_in), empty_like_layout(v_in)};
}

vmonarch::BackwardOptions backward_options(bool entropy_grad, bool deterministic) {
    vmonarch::BackwardOptions bo;
    bo.entropy_grad = entropy_grad;
    bo.deterministic = deterministic;
    return bo;
}

// The training forward's state in `saved_in` (the uint8 tensor `train_op` returned), or nullopt when it is
// absent or empty (lean mode).
std::optional<vmonarch::SavedState> saved_state_of(const char* fn, const char* train_op,
                                                   const std::optional<at::Tensor>& saved_in, const at::Tensor& q_in,
                                                   const vmonarch::TensorView& qv, const vmonarch::TensorView& vv,
                                                   const vmonarch::VideoGrid& g, const vmonarch::Options& opts) {
    std::optional<vmonarch::SavedState> state;
    if (!saved_in.has_value() || !saved_in->defined() || saved_in->numel() == 0) return state;
    const at::Tensor& s = *saved_in;
    TORCH_CHECK_TYPE(s.scalar_type() == at::kByte, fn, ": saved has dtype ", s.scalar_type(), ", expected uint8 (the state ",
                     train_op, " returned)");
    TORCH_CHECK_VALUE(s.dim() == 1 && s.is_contiguous() && s.device() == q_in.device(), fn,
                      ": saved must be the contiguous 1-D uint8 tensor ", train_op, " returned on ", q_in.device());
    translate_errors([&] { state.emplace(state_over(s, static_cast<std::size_t>(s.numel()), qv, vv, g, opts)); });
    return state;
}

// The training forward into ov / lv: lean (save_state false) runs the plain forward and returns an empty
// state; otherwise the state is kept in 8-byte aligned storage (exposed as bytes) that the returned tensor owns.
at::Tensor training_forward(const at::Tensor& q, const vmonarch::TensorView& qv, const vmonarch::TensorView& kv,
                            const vmonarch::TensorView& vv, const vmonarch::TensorView& ov, const vmonarch::LseView& lv,
                            const vmonarch::VideoGrid& g, const vmonarch::Options& opts, bool save_state,
                            const vmonarch::ExtraKeys* extra) {
    if (!save_state) {
        with_cuda_context(q, [&] { return vmonarch::workspace_bytes(qv, vv, g, opts); },
                          [&](const vmonarch::CudaContext* ctx) { vmonarch::attention(qv, kv, vv, ov, g, opts, &lv, ctx, extra); });
        return at::empty({0}, q.options().dtype(at::kByte));
    }
    std::size_t bytes = 0;
    translate_errors([&] { bytes = vmonarch::saved_state_bytes(qv, vv, g, opts); });
    at::Tensor storage = at::empty({static_cast<int64_t>((bytes + 7) / 8)}, q.options().dtype(at::kDouble));
    at::Tensor saved = storage.view(at::kByte).narrow(0, 0, static_cast<int64_t>(bytes));
    with_cuda_context(q, [] { return std::size_t(0); }, [&](const vmonarch::CudaContext* ctx) {
        vmonarch::SavedState state = state_over(saved, bytes, qv, vv, g, opts);
        vmonarch::attention_training(qv, kv, vv, ov, lv, g, opts, state, ctx, extra);
    });
    return saved;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_train_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, at::IntArrayRef grid, int64_t iterations,
    double clamp, bool recompute_first_frame, std::optional<double> scale, c10::string_view layout, bool entropy_grad,
    bool deterministic, bool save_state) {
    (void)entropy_grad, (void)deterministic; // used by the backward (registered in vmonarch/_backward.py)
    const char* fn = "vmonarch.attention";
    const Layout lay = parse_layout(layout);
    check_qkv(fn, q_in, k_in, v_in);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = options_of(fn, iterations, clamp, recompute_first_frame, scale);
    const at::Tensor q = viewable(q_in), k = viewable(k_in), v = viewable(v_in);
    const vmonarch::TensorView qv = view_of(q, lay), kv = view_of(k, lay), vv = view_of(v, lay);
    const std::vector<int64_t> out_shape = lay == Layout::bshd
                                               ? std::vector<int64_t>{qv.batch(), qv.tokens(), qv.heads(), vv.head_dim()}
                                               : std::vector<int64_t>{qv.batch(), qv.heads(), qv.tokens(), vv.head_dim()};
    at::Tensor out = at::empty(out_shape, q.options());
    at::Tensor lse = at::empty({qv.batch(), qv.heads(), qv.tokens()}, q.options().dtype(lse_dtype(q)));
    const vmonarch::TensorView ov = view_of(out, lay);
    const vmonarch::LseView lv = lse_view_of(lse);
    return {out, lse, training_forward(q, qv, kv, vv, ov, lv, g, opts, save_state, nullptr)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& dout_in, const std::optional<at::Tensor>& dlse_in, at::IntArrayRef grid,
    int64_t iterations, double clamp, bool recompute_first_frame, std::optional<double> scale, c10::string_view layout,
    bool entropy_grad, bool deterministic, const std::optional<at::Tensor>& saved_in) {
    const char* fn = "vmonarch.attention_backward";
    const Layout lay = parse_layout(layout);
    const BackwardTensors t = backward_tensors(fn, q_in, k_in, v_in, out_in, lse_in, dout_in);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = options_of(fn, iterations, clamp, recompute_first_frame, scale);
    const vmonarch::TensorView qv = view_of(t.q, lay), kv = view_of(t.k, lay), vv = view_of(t.v, lay);
    const vmonarch::TensorView ov = view_of(t.out, lay), dov = view_of(t.dout, lay);
    const vmonarch::TensorView dqv = view_of(t.dq, lay), dkv = view_of(t.dk, lay), dvv = view_of(t.dv, lay);
    const vmonarch::LseView lv = lse_view_of(t.lse);
    const OptionalLse dlse = optional_lse_of(fn, dlse_in, q_in, t.lse);
    vmonarch::BackwardOptions bo = backward_options(entropy_grad, deterministic);
    const std::optional<vmonarch::SavedState> state = saved_state_of(fn, "attention_train", saved_in, q_in, qv, vv, g, opts);
    if (state) bo.saved = &*state;
    with_cuda_context(t.q, [&] { return vmonarch::backward_workspace_bytes(qv, vv, g, opts, bo); },
                      [&](const vmonarch::CudaContext* ctx) {
                          vmonarch::attention_backward(qv, kv, vv, ov, lv, dov, dqv, dkv, dvv, g, opts,
                                                       dlse.view_or_null(), bo, ctx);
                      });
    return {t.dq, t.dk, t.dv};
}

// ---- exact key groups (spec §3b) and joint sequences (spec §3c) ------------------------------------------
vmonarch::Options exact_options_of(const char* fn, int64_t iterations, double clamp, bool recompute,
                                   std::optional<double> scale, int64_t sink_frames,
                                   std::optional<int64_t> window_radius) {
    vmonarch::Options o = options_of(fn, iterations, clamp, recompute, scale);
    o.sink_frames = sink_frames;
    o.window_radius = window_radius;
    return o;
}

// text_lens ([B] integers; the library checks the range) as a host vector, or nullopt.
std::optional<std::vector<int64_t>> lens_of(const char* fn, const std::optional<at::Tensor>& lens, int64_t batch) {
    if (!lens.has_value() || !lens->defined()) return std::nullopt;
    TORCH_CHECK_TYPE(!at::isFloatingType(lens->scalar_type()) && lens->scalar_type() != at::kBool, fn,
                     ": text_lens has dtype ", lens->scalar_type(), ", expected an integer tensor");
    TORCH_CHECK_VALUE(lens->dim() == 1 && lens->size(0) == batch, fn, ": text_lens has shape ", lens->sizes(),
                      ", expected [", batch, "] (one valid length per batch element)");
    const at::Tensor host = lens->to(at::kCPU, at::kLong).contiguous();
    const int64_t* p = host.data_ptr<int64_t>();
    return std::vector<int64_t>(p, p + batch);
}

// The text keys of attention() as ExtraKeys over prepared (viewable) tensors kept alive by the caller.
struct TextKeys {
    at::Tensor k, v;
    std::optional<std::vector<int64_t>> lens;
    vmonarch::ExtraKeys extra;
    bool present = false;
};

TextKeys text_keys_of(const char* fn, const std::optional<at::Tensor>& text_k, const std::optional<at::Tensor>& text_v,
                      const std::optional<at::Tensor>& text_lens, const at::Tensor& q, Layout lay) {
    TextKeys t;
    const bool has_k = text_k.has_value() && text_k->defined(), has_v = text_v.has_value() && text_v->defined();
    TORCH_CHECK_VALUE(has_k == has_v, fn, ": ", has_k ? "text_k" : "text_v", " is given without ",
                      has_k ? "text_v" : "text_k", ", expected both or neither");
    TORCH_CHECK_VALUE(has_k || !(text_lens.has_value() && text_lens->defined()), fn,
                      ": text_lens is given without text_k/text_v");
    if (!has_k) return t;
    const std::pair<const char*, const at::Tensor*> both[2] = {{"text_k", &*text_k}, {"text_v", &*text_v}};
    for (auto [name, x] : both) {
        TORCH_CHECK_VALUE(x->dim() == 4, fn, ": ", name, " has ", x->dim(), " dimensions, expected 4 (like q)");
        TORCH_CHECK_VALUE(x->device() == q.device(), fn, ": ", name, " is on ", x->device(), ", expected ", q.device(),
                          " like q");
        TORCH_CHECK_TYPE(x->scalar_type() == q.scalar_type(), fn, ": ", name, " has dtype ", x->scalar_type(),
                         ", expected ", q.scalar_type(), " like q");
    }
    t.k = viewable(*text_k), t.v = viewable(*text_v);
    t.extra.k = view_of(t.k, lay), t.extra.v = view_of(t.v, lay);
    t.lens = lens_of(fn, text_lens, q.size(0));
    t.extra.lens = t.lens ? t.lens->data() : nullptr;
    t.present = true;
    return t;
}

std::vector<int64_t> out_shape_of(const vmonarch::TensorView& qv, const vmonarch::TensorView& vv, Layout lay) {
    return lay == Layout::bshd ? std::vector<int64_t>{qv.batch(), qv.tokens(), qv.heads(), vv.head_dim()}
                               : std::vector<int64_t>{qv.batch(), qv.heads(), qv.tokens(), vv.head_dim()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_exact_train_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, at::IntArrayRef grid, int64_t iterations,
    double clamp, bool recompute_first_frame, std::optional<double> scale, c10::string_view layout, int64_t sink_frames,
    std::optional<int64_t> window_radius, const std::optional<at::Tensor>& text_k,
    const std::optional<at::Tensor>& text_v, const std::optional<at::Tensor>& text_lens, bool entropy_grad,
    bool deterministic, bool save_state) {
    (void)entropy_grad, (void)deterministic; // used by the backward (registered in vmonarch/_backward.py)
    const char* fn = "vmonarch.attention";
    const Layout lay = parse_layout(layout);
    check_qkv(fn, q_in, k_in, v_in);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts =
        exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames, window_radius);
    const at::Tensor q = viewable(q_in), k = viewable(k_in), v = viewable(v_in);
    const TextKeys text = text_keys_of(fn, text_k, text_v, text_lens, q_in, lay);
    const vmonarch::TensorView qv = view_of(q, lay), kv = view_of(k, lay), vv = view_of(v, lay);
    at::Tensor out = at::empty(out_shape_of(qv, vv, lay), q.options());
    at::Tensor lse = at::empty({qv.batch(), qv.heads(), qv.tokens()}, q.options().dtype(lse_dtype(q)));
    const vmonarch::TensorView ov = view_of(out, lay);
    const vmonarch::LseView lv = lse_view_of(lse);
    const vmonarch::ExtraKeys* extra = text.present ? &text.extra : nullptr;
    return {out, lse, training_forward(q, qv, kv, vv, ov, lv, g, opts, save_state, extra)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_exact_backward_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& dout_in, const std::optional<at::Tensor>& dlse_in, at::IntArrayRef grid,
    int64_t iterations, double clamp, bool recompute_first_frame, std::optional<double> scale, c10::string_view layout,
    int64_t sink_frames, std::optional<int64_t> window_radius, const std::optional<at::Tensor>& text_k,
    const std::optional<at::Tensor>& text_v, const std::optional<at::Tensor>& text_lens, bool entropy_grad,
    bool deterministic, const std::optional<at::Tensor>& saved_in) {
    const char* fn = "vmonarch.attention_backward";
    const Layout lay = parse_layout(layout);
    const BackwardTensors t = backward_tensors(fn, q_in, k_in, v_in, out_in, lse_in, dout_in);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts =
        exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames, window_radius);
    const TextKeys text = text_keys_of(fn, text_k, text_v, text_lens, q_in, lay);
    at::Tensor dtk = text.present ? empty_like_layout(*text_k) : at::empty({0}, q_in.options());
    at::Tensor dtv = text.present ? empty_like_layout(*text_v) : at::empty({0}, q_in.options());
    vmonarch::ExtraKeyGrads extra_grads;
    if (text.present) extra_grads.dk = view_of(dtk, lay), extra_grads.dv = view_of(dtv, lay);
    const OptionalLse dlse = optional_lse_of(fn, dlse_in, q_in, t.lse);
    vmonarch::BackwardOptions bo = backward_options(entropy_grad, deterministic);
    const std::optional<vmonarch::SavedState> state =
        saved_state_of(fn, "attention_exact_train", saved_in, q_in, view_of(t.q, lay), view_of(t.v, lay), g, opts);
    if (state) bo.saved = &*state;
    const std::int64_t text_tokens = text.present ? text.extra.k.tokens() : 0;
    with_cuda_context(
        t.q, [&] { return vmonarch::backward_workspace_bytes(view_of(t.q, lay), view_of(t.v, lay), g, opts, bo, text_tokens); },
        [&](const vmonarch::CudaContext* ctx) {
            vmonarch::attention_backward(view_of(t.q, lay), view_of(t.k, lay), view_of(t.v, lay), view_of(t.out, lay),
                                         lse_view_of(t.lse), view_of(t.dout, lay), view_of(t.dq, lay), view_of(t.dk, lay),
                                         view_of(t.dv, lay), g, opts, dlse.view_or_null(), bo, ctx,
                                         text.present ? &text.extra : nullptr, text.present ? &extra_grads : nullptr);
        });
    return {t.dq, t.dk, t.dv, dtk, dtv};
}

std::tuple<at::Tensor, at::Tensor> joint_attention_train_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, at::IntArrayRef grid, int64_t text_len,
    bool text_first, const std::optional<at::Tensor>& text_lens, int64_t iterations, double clamp,
    bool recompute_first_frame, std::optional<double> scale, c10::string_view layout, int64_t sink_frames,
    std::optional<int64_t> window_radius, bool entropy_grad, bool deterministic) {
    (void)entropy_grad, (void)deterministic; // used by the backward (registered in vmonarch/_backward.py)
    const char* fn = "vmonarch.joint_attention";
    const Layout lay = parse_layout(layout);
    check_qkv(fn, q_in, k_in, v_in);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts =
        exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames, window_radius);
    const at::Tensor q = viewable(q_in), k = viewable(k_in), v = viewable(v_in);
    const auto lens = lens_of(fn, text_lens, q_in.size(0));
    const vmonarch::TensorView qv = view_of(q, lay), kv = view_of(k, lay), vv = view_of(v, lay);
    at::Tensor out = at::empty(out_shape_of(qv, vv, lay), q.options());
    at::Tensor lse = at::empty({qv.batch(), qv.heads(), qv.tokens()}, q.options().dtype(lse_dtype(q)));
    const vmonarch::LseView lv = lse_view_of(lse);
    vmonarch::TensorView video_q = qv, video_v = vv; // the workspace covers the video part
    video_q.shape[1] = video_v.shape[1] = std::max<int64_t>(0, qv.tokens() - text_len);
    with_cuda_context(q,
                      [&] { // a sequence that does not split into N + text_len gets joint_attention's own error
                          if (text_len < 0 || video_q.tokens() != g.tokens()) return std::size_t(0);
                          return vmonarch::workspace_bytes(video_q, video_v, g, opts);
                      },
                      [&](const vmonarch::CudaContext* ctx) {
                          vmonarch::joint_attention(qv, kv, vv, view_of(out, lay), g, text_len,
                                                    text_first ? vmonarch::TextPosition::first : vmonarch::TextPosition::last,
                                                    lens ? lens->data() : nullptr, opts, &lv, ctx);
                      });
    return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> joint_attention_backward_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& dout_in, const std::optional<at::Tensor>& dlse_in, at::IntArrayRef grid,
    int64_t text_len, bool text_first, const std::optional<at::Tensor>& text_lens, int64_t iterations, double clamp,
    bool recompute_first_frame, std::optional<double> scale, c10::string_view layout, int64_t sink_frames,
    std::optional<int64_t> window_radius, bool entropy_grad, bool deterministic) {
    const char* fn = "vmonarch.joint_attention_backward";
    const Layout lay = parse_layout(layout);
    const BackwardTensors t = backward_tensors(fn, q_in, k_in, v_in, out_in, lse_in, dout_in);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts =
        exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames, window_radius);
    const auto lens = lens_of(fn, text_lens, q_in.size(0));
    const OptionalLse dlse = optional_lse_of(fn, dlse_in, q_in, t.lse);
    const vmonarch::BackwardOptions bo = backward_options(entropy_grad, deterministic);
    vmonarch::TensorView video_q = view_of(t.q, lay), video_v = view_of(t.v, lay); // the workspace: the video part's
    video_q.shape[1] = video_v.shape[1] = std::max<int64_t>(0, video_q.tokens() - text_len);
    with_cuda_context(
        t.q,
        [&] { // a sequence that does not split into N + text_len gets joint_attention_backward's own error
            if (text_len < 0 || video_q.tokens() != g.tokens()) return std::size_t(0);
            return vmonarch::backward_workspace_bytes(video_q, video_v, g, opts, bo, text_len, text_len > 0);
        },
        [&](const vmonarch::CudaContext* ctx) {
            vmonarch::joint_attention_backward(
                view_of(t.q, lay), view_of(t.k, lay), view_of(t.v, lay), view_of(t.out, lay), lse_view_of(t.lse),
                view_of(t.dout, lay), view_of(t.dq, lay), view_of(t.dk, lay), view_of(t.dv, lay), g, text_len,
                text_first ? vmonarch::TextPosition::first : vmonarch::TextPosition::last,
                lens ? lens->data() : nullptr, opts, dlse.view_or_null(), bo, ctx);
        });
    return {t.dq, t.dk, t.dv};
}

// Forward-mode AD: like the forward operators (vmonarch_ops.cpp), these have no forward derivative; a
// kernel below autograd refuses inputs that carry a tangent instead of returning none.
void refuse_tangents(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    const auto& arguments = op.schema().arguments();
    const auto values = torch::jit::last(*stack, arguments.size());
    for (std::size_t i = 0; i < arguments.size(); ++i) {
        if (!values[i].isTensor()) continue;
        const at::Tensor& t = values[i].toTensor();
        TORCH_CHECK_NOT_IMPLEMENTED(!t.defined() || !t._fw_grad(/*level=*/0).defined(), "vmonarch.attention: "
                                    "forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not supported: "
                                    "argument '", arguments[i].name(), "' of ", op.operator_name().name,
                                    " has a tangent; call it on plain tensors");
    }
    at::AutoDispatchBelowADInplaceOrView below;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

} // namespace

TORCH_LIBRARY_IMPL(vmonarch, ADInplaceOrView, m) {
    m.impl("attention_train", torch::CppFunction::makeFromBoxedFunction<&refuse_tangents>());
    m.impl("attention_backward", torch::CppFunction::makeFromBoxedFunction<&refuse_tangents>());
    m.impl("attention_exact_train", torch::CppFunction::makeFromBoxedFunction<&refuse_tangents>());
    m.impl("attention_exact_backward", torch::CppFunction::makeFromBoxedFunction<&refuse_tangents>());
    m.impl("joint_attention_train", torch::CppFunction::makeFromBoxedFunction<&refuse_tangents>());
    m.impl("joint_attention_backward", torch::CppFunction::makeFromBoxedFunction<&refuse_tangents>());
}

TORCH_LIBRARY_FRAGMENT(vmonarch, m) {
    m.def("attention_train(Tensor q, Tensor k, Tensor v, int[] grid, int iterations=2, float clamp=0.1, "
          "bool recompute_first_frame=True, float? scale=None, str layout=\"bshd\", bool entropy_grad=False, "
          "bool deterministic=False, bool save_state=False) -> (Tensor out, Tensor lse, Tensor saved)");
    m.def("attention_backward(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, Tensor? dlse, "
          "int[] grid, int iterations=2, float clamp=0.1, bool recompute_first_frame=True, float? scale=None, "
          "str layout=\"bshd\", bool entropy_grad=False, bool deterministic=False, Tensor? saved=None) "
          "-> (Tensor dq, Tensor dk, Tensor dv)");
    m.def("attention_exact_train(Tensor q, Tensor k, Tensor v, int[] grid, int iterations=2, float clamp=0.1, "
          "bool recompute_first_frame=True, float? scale=None, str layout=\"bshd\", int sink_frames=0, "
          "int? window_radius=None, Tensor? text_k=None, Tensor? text_v=None, Tensor? text_lens=None, "
          "bool entropy_grad=False, bool deterministic=False, bool save_state=False) "
          "-> (Tensor out, Tensor lse, Tensor saved)");
    m.def("attention_exact_backward(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, Tensor? dlse, "
          "int[] grid, int iterations=2, float clamp=0.1, bool recompute_first_frame=True, float? scale=None, "
          "str layout=\"bshd\", int sink_frames=0, int? window_radius=None, Tensor? text_k=None, Tensor? text_v=None, "
          "Tensor? text_lens=None, bool entropy_grad=False, bool deterministic=False, Tensor? saved=None) "
          "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dtext_k, Tensor dtext_v)");
    m.def("joint_attention_train(Tensor q, Tensor k, Tensor v, int[] grid, int text_len, bool text_first=False, "
          "Tensor? text_lens=None, int iterations=2, float clamp=0.1, bool recompute_first_frame=True, "
          "float? scale=None, str layout=\"bshd\", int sink_frames=0, int? window_radius=None, "
          "bool entropy_grad=False, bool deterministic=False) -> (Tensor out, Tensor lse)");
    m.def("joint_attention_backward(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, Tensor? dlse, "
          "int[] grid, int text_len, bool text_first=False, Tensor? text_lens=None, int iterations=2, "
          "float clamp=0.1, bool recompute_first_frame=True, float? scale=None, str layout=\"bshd\", "
          "int sink_frames=0, int? window_radius=None, bool entropy_grad=False, bool deterministic=False) "
          "-> (Tensor dq, Tensor dk, Tensor dv)");
}

TORCH_LIBRARY_IMPL(vmonarch, CPU, m) {
    m.impl("attention_train", &attention_train_impl);
    m.impl("attention_backward", &attention_backward_impl);
    m.impl("attention_exact_train", &attention_exact_train_impl);
    m.impl("attention_exact_backward", &attention_exact_backward_impl);
    m.impl("joint_attention_train", &joint_attention_train_impl);
    m.impl("joint_attention_backward", &joint_attention_backward_impl);
}

TORCH_LIBRARY_IMPL(vmonarch, CUDA, m) {
    m.impl("attention_train", &attention_train_impl);
    m.impl("attention_backward", &attention_backward_impl);
    m.impl("attention_exact_train", &attention_exact_train_impl);
    m.impl("attention_exact_backward", &attention_exact_backward_impl);
    m.impl("joint_attention_train", &joint_attention_train_impl);
    m.impl("joint_attention_backward", &joint_attention_backward_impl);
}
