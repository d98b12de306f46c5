// PyTorch operators of the backward pass (include/vmonarch/backward.hpp), in the same torch library as
// python/csrc/vmonarch_ops.cpp:
//   attention_train(q, k, v, grid, ...) -> (out, lse, saved)       forward for autograd; saved is the
//       training forward's state as a uint8 tensor (save_state=True) or empty (lean mode)
//   attention_backward(q, k, v, out, lse, dout, dlse, grid, ..., saved) -> (dq, dk, dv)
//   attention_exact_train / attention_exact_backward: the same with sink frames, a window and text keys
//       (spec §3b); the backward also returns the text keys' gradients (empty without text keys)
//   joint_attention_train(...) -> (out, lse), joint_attention_backward(...) -> (dq, dk, dv): joint
//       sequences (spec §3c), lean mode; valid text lengths as an integer tensor [B] (or None: all valid),
//       for the training forward also as a bool key-padding prefix mask [B, L] (text_mask) as for joint_attention
// Layouts "bshd" / "bhsd" as in vmonarch_ops.cpp; gradients come back in the inputs' layout and dtype.
// CUDA: work runs on torch's current stream, the workspace and the saved state come from torch's caching
// allocator, and the saved state's header is passed from the host (SavedState::over with the header of
// saved_state_header), so neither op synchronizes or reads device memory: both are CUDA-graph-safe.
// Errors: ArgumentError -> ValueError, UnsupportedError -> NotImplementedError, dtype problems -> TypeError.
// The argument checks and tensor preparation (binding_args.hpp), the layout/dtype helpers, the CUDA context,
// the forward-mode AD refusal and the error translation (binding_common.hpp) are shared with vmonarch_ops.cpp;
// joint_attention_train runs joint_attention's forward (forward_ops.hpp).
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
#include "vmonarch/backward.hpp"

namespace {

using vmonarch::Layout;
using namespace vmonarch_binding; // the shared checks and helpers (binding_args.hpp, binding_common.hpp)

// SavedState over a torch tensor. CUDA: with the header a forward with these arguments writes, given from the
// host (the tensor is the one attention_train returned for them, the autograd rule guarantees it).
vmonarch::SavedState state_over(const at::Tensor& s, std::size_t bytes, const vmonarch::TensorView& qv,
                                const vmonarch::TensorView& vv, const vmonarch::VideoGrid& g, const vmonarch::Options& o) {
    if (qv.device != vmonarch::Device::cuda) return vmonarch::SavedState::over(s.data_ptr(), bytes, qv.device, qv.device_index);
    const auto header = vmonarch::saved_state_header(qv, vv, g, o);
    return vmonarch::SavedState::over(s.data_ptr(), bytes, qv.device, qv.device_index, header.data());
}

// The view of a given LSE tensor [B, heads, N] (lse, or dlse converted to lse's dtype).
vmonarch::LseView lse_view_of(const char* fn, const char* name, const at::Tensor& t) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, fn, ": ", name, " has dtype ",
                     t.scalar_type(), ", expected float32 or float64");
    vmonarch::LseView view;
    view.data = t.data_ptr();
    view.dtype = t.scalar_type() == at::kDouble ? vmonarch::DType::f64 : vmonarch::DType::f32;
    view.device = t.is_cuda() ? vmonarch::Device::cuda : vmonarch::Device::cpu;
    view.device_index = t.is_cuda() ? t.device().index() : 0;
    view.shape = {t.size(0), t.size(1), t.size(2)};
    view.strides = {t.stride(0), t.stride(1), t.stride(2)};
    return view;
}

constexpr const char* kLseShape = "([batch, heads, tokens])";

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
        check_rank_and_device(fn, "dlse", *dlse_in, q, 3, kLseShape);
        check_not_empty(fn, "dlse", *dlse_in);
        d.tensor = dlse_in->to(lse.scalar_type()).contiguous();
        d.view = lse_view_of(fn, "dlse", d.tensor);
    }
    return d;
}

at::Tensor empty_like_layout(const at::Tensor& like) {
    return at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}

// The tensors of a backward op: q, k, v checked as the forward checks them; out and dout of q's rank, device and
// dtype; lse of rank 3; all viewable (lse contiguous); dq, dk, dv allocated in the inputs' layout; and the views.
struct BackwardTensors {
    at::Tensor q, k, v, out, dout, lse, dq, dk, dv;
    vmonarch::TensorView qv, kv, vv, ov, dov, dqv, dkv, dvv;
    vmonarch::LseView lv;
};

BackwardTensors backward_tensors(const char* fn, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                 const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& dout_in,
                                 Layout lay) {
    check_qkv(fn, q_in, k_in, v_in);
    const std::pair<const char*, const at::Tensor*> outputs[2] = {{"out", &out_in}, {"dout", &dout_in}};
    for (auto [name, t] : outputs) {
        check_rank_and_device(fn, name, *t, q_in, 4, vmonarch_binding::kQkvShape);
        check_not_empty(fn, name, *t);
    }
    check_rank_and_device(fn, "lse", lse_in, q_in, 3, kLseShape);
    check_not_empty(fn, "lse", lse_in);
    for (auto [name, t] : outputs) check_dtype_like_q(fn, name, *t, q_in);
    BackwardTensors t;
    t.q = viewable(q_in), t.k = viewable(k_in), t.v = viewable(v_in);
    t.out = viewable(out_in), t.dout = viewable(dout_in), t.lse = lse_in.contiguous();
    t.dq = empty_like_layout(q_in), t.dk = empty_like_layout(k_in), t.dv = empty_like_layout(v_in);
    t.qv = view_of(t.q, lay), t.kv = view_of(t.k, lay), t.vv = view_of(t.v, lay);
    t.ov = view_of(t.out, lay), t.dov = view_of(t.dout, lay);
    t.dqv = view_of(t.dq, lay), t.dkv = view_of(t.dk, lay), t.dvv = view_of(t.dv, lay);
    t.lv = lse_view_of(fn, "lse", t.lse);
    return t;
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

// The training forward of p (lse wanted): lean (save_state false) runs the plain forward and returns an empty
// state; otherwise the state is kept in 8-byte aligned storage (exposed as bytes) that the returned tensor owns.
at::Tensor training_forward(const Prepared& p, const vmonarch::VideoGrid& g, const vmonarch::Options& opts,
                            bool save_state, const vmonarch::ExtraKeys* extra) {
    if (!save_state) {
        with_cuda_context(p.q, [&] { return vmonarch::workspace_bytes(p.qv, p.vv, g, opts); },
                          [&](const vmonarch::CudaContext* ctx) {
                              vmonarch::attention(p.qv, p.kv, p.vv, p.ov, g, opts, &p.lv, ctx, extra);
                          });
        return at::empty({0}, p.q.options().dtype(at::kByte));
    }
    std::size_t bytes = 0;
    translate_errors([&] { bytes = vmonarch::saved_state_bytes(p.qv, p.vv, g, opts); });
    at::Tensor storage = at::empty({static_cast<int64_t>((bytes + 7) / 8)}, p.q.options().dtype(at::kDouble));
    at::Tensor saved = storage.view(at::kByte).narrow(0, 0, static_cast<int64_t>(bytes));
    with_cuda_context(p.q, [] { return std::size_t(0); }, [&](const vmonarch::CudaContext* ctx) {
        vmonarch::SavedState state = state_over(saved, bytes, p.qv, p.vv, g, opts);
        vmonarch::attention_training(p.qv, p.kv, p.vv, p.ov, p.lv, g, opts, state, ctx, extra);
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
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = options_of(fn, iterations, clamp, recompute_first_frame, scale);
    const Prepared p = prepare_all(fn, q_in, k_in, v_in, lay, /*return_lse=*/true);
    return {p.out, p.lse, training_forward(p, g, opts, save_state, nullptr)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& dout_in, const std::optional<at::Tensor>& dlse_in, at::IntArrayRef grid,
    int64_t iterations, double clamp, bool recompute_first_frame, std::optional<double> scale, c10::string_view layout,
    bool entropy_grad, bool deterministic, const std::optional<at::Tensor>& saved_in) {
    const char* fn = "vmonarch.attention_backward";
    const Layout lay = parse_layout(layout);
    const BackwardTensors t = backward_tensors(fn, q_in, k_in, v_in, out_in, lse_in, dout_in, lay);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts = options_of(fn, iterations, clamp, recompute_first_frame, scale);
    const OptionalLse dlse = optional_lse_of(fn, dlse_in, q_in, t.lse);
    vmonarch::BackwardOptions bo = backward_options(entropy_grad, deterministic);
    const std::optional<vmonarch::SavedState> state = saved_state_of(fn, "attention_train", saved_in, q_in, t.qv, t.vv, g, opts);
    if (state) bo.saved = &*state;
    with_cuda_context(t.q, [&] { return vmonarch::backward_workspace_bytes(t.qv, t.vv, g, opts, bo); },
                      [&](const vmonarch::CudaContext* ctx) {
                          vmonarch::attention_backward(t.qv, t.kv, t.vv, t.ov, t.lv, t.dov, t.dqv, t.dkv, t.dvv, g, opts,
                                                       dlse.view_or_null(), bo, ctx);
                      });
    return {t.dq, t.dk, t.dv};
}

// ---- exact key groups (spec §3b) and joint sequences (spec §3c) ------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_exact_train_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, at::IntArrayRef grid, int64_t iterations,
    double clamp, bool recompute_first_frame, std::optional<double> scale, c10::string_view layout, int64_t sink_frames,
    std::optional<int64_t> window_radius, const std::optional<at::Tensor>& text_k,
    const std::optional<at::Tensor>& text_v, const std::optional<at::Tensor>& text_lens, bool entropy_grad,
    bool deterministic, bool save_state) {
    (void)entropy_grad, (void)deterministic; // used by the backward (registered in vmonarch/_backward.py)
    const char* fn = "vmonarch.attention";
    const Layout lay = parse_layout(layout);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts =
        exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames, window_radius);
    const Prepared p = prepare_all(fn, q_in, k_in, v_in, lay, /*return_lse=*/true);
    const TextKeys text = text_keys_of(fn, text_k, text_v, text_lens, q_in, lay);
    return {p.out, p.lse, training_forward(p, g, opts, save_state, text.extra_or_null())};
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
    const BackwardTensors t = backward_tensors(fn, q_in, k_in, v_in, out_in, lse_in, dout_in, lay);
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
        saved_state_of(fn, "attention_exact_train", saved_in, q_in, t.qv, t.vv, g, opts);
    if (state) bo.saved = &*state;
    const std::int64_t text_tokens = text.present ? text.extra.k.tokens() : 0;
    with_cuda_context(
        t.q, [&] { return vmonarch::backward_workspace_bytes(t.qv, t.vv, g, opts, bo, text_tokens); },
        [&](const vmonarch::CudaContext* ctx) {
            vmonarch::attention_backward(t.qv, t.kv, t.vv, t.ov, t.lv, t.dov, t.dqv, t.dkv, t.dvv, g, opts,
                                         dlse.view_or_null(), bo, ctx, text.extra_or_null(),
                                         text.present ? &extra_grads : nullptr);
        });
    return {t.dq, t.dk, t.dv, dtk, dtv};
}

std::tuple<at::Tensor, at::Tensor> joint_attention_train_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, at::IntArrayRef grid, int64_t text_len,
    bool text_first, const std::optional<at::Tensor>& text_lens, const std::optional<at::Tensor>& text_mask,
    int64_t iterations, double clamp, bool recompute_first_frame, std::optional<double> scale,
    c10::string_view layout, int64_t sink_frames, std::optional<int64_t> window_radius, bool entropy_grad,
    bool deterministic) {
    (void)entropy_grad, (void)deterministic; // used by the backward (registered in vmonarch/_backward.py)
    return vmonarch_binding::joint_attention_forward("vmonarch.joint_attention", q_in, k_in, v_in, grid, text_len,
                                                     text_first, text_lens, text_mask, iterations, clamp,
                                                     recompute_first_frame, scale, layout, /*return_lse=*/true,
                                                     sink_frames, window_radius);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> joint_attention_backward_impl(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& dout_in, const std::optional<at::Tensor>& dlse_in, at::IntArrayRef grid,
    int64_t text_len, bool text_first, const std::optional<at::Tensor>& text_lens, int64_t iterations, double clamp,
    bool recompute_first_frame, std::optional<double> scale, c10::string_view layout, int64_t sink_frames,
    std::optional<int64_t> window_radius, bool entropy_grad, bool deterministic) {
    const char* fn = "vmonarch.joint_attention_backward";
    const Layout lay = parse_layout(layout);
    const BackwardTensors t = backward_tensors(fn, q_in, k_in, v_in, out_in, lse_in, dout_in, lay);
    const vmonarch::VideoGrid g = grid_of(fn, grid);
    const vmonarch::Options opts =
        exact_options_of(fn, iterations, clamp, recompute_first_frame, scale, sink_frames, window_radius);
    check_text_len(fn, text_len, t.qv.tokens());
    const auto lens = text_lengths(fn, text_lens, std::nullopt, t.qv.batch(), text_len);
    const OptionalLse dlse = optional_lse_of(fn, dlse_in, q_in, t.lse);
    const vmonarch::BackwardOptions bo = backward_options(entropy_grad, deterministic);
    const vmonarch::TensorView video_q = video_part(t.qv, text_len), video_v = video_part(t.vv, text_len);
    with_cuda_context(
        t.q,
        [&] { // a sequence that does not split into N + text_len gets joint_attention_backward's own error
            if (video_q.tokens() != g.tokens()) return std::size_t(0);
            return vmonarch::backward_workspace_bytes(video_q, video_v, g, opts, bo, text_len, text_len > 0);
        },
        [&](const vmonarch::CudaContext* ctx) {
            vmonarch::joint_attention_backward(t.qv, t.kv, t.vv, t.ov, t.lv, t.dov, t.dqv, t.dkv, t.dvv, g, text_len,
                                               text_position(text_first), lens ? lens->data() : nullptr, opts,
                                               dlse.view_or_null(), bo, ctx);
        });
    return {t.dq, t.dk, t.dv};
}

// The kernels of this file's operators: the same for CPU and CUDA tensors (as in vmonarch_ops.cpp).
void impl_kernels(torch::Library& m) {
    m.impl("attention_train", &attention_train_impl);
    m.impl("attention_backward", &attention_backward_impl);
    m.impl("attention_exact_train", &attention_exact_train_impl);
    m.impl("attention_exact_backward", &attention_exact_backward_impl);
    m.impl("joint_attention_train", &joint_attention_train_impl);
    m.impl("joint_attention_backward", &joint_attention_backward_impl);
}

} // namespace

TORCH_LIBRARY_IMPL(vmonarch, ADInplaceOrView, m) {
    vmonarch_binding::refuse_forward_ad_for(m, {"attention_train", "attention_backward", "attention_exact_train",
                                                "attention_exact_backward", "joint_attention_train",
                                                "joint_attention_backward"});
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
          "Tensor? text_lens=None, Tensor? text_mask=None, int iterations=2, float clamp=0.1, bool recompute_first_frame=True, "
          "float? scale=None, str layout=\"bshd\", int sink_frames=0, int? window_radius=None, "
          "bool entropy_grad=False, bool deterministic=False) -> (Tensor out, Tensor lse)");
    m.def("joint_attention_backward(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, Tensor? dlse, "
          "int[] grid, int text_len, bool text_first=False, Tensor? text_lens=None, int iterations=2, "
          "float clamp=0.1, bool recompute_first_frame=True, float? scale=None, str layout=\"bshd\", "
          "int sink_frames=0, int? window_radius=None, bool entropy_grad=False, bool deterministic=False) "
          "-> (Tensor dq, Tensor dk, Tensor dv)");
}

TORCH_LIBRARY_IMPL(vmonarch, CPU, m) { impl_kernels(m); }

TORCH_LIBRARY_IMPL(vmonarch, CUDA, m) { impl_kernels(m); }
