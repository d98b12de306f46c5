// The argument checks and tensor preparation that the forward operators (vmonarch_ops.cpp) and the training /
// backward operators (backward_ops.cpp) share, so that one argument gets one check and one message. Scalar
// arguments: "fn: argument 'iterations' is 9, expected 1..8"; tensors: "fn: k has dtype Float, expected
// Double like q". Wrong dtypes raise TypeError, everything else ValueError.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "binding_common.hpp"
#include "vmonarch/vmonarch.hpp"

namespace vmonarch_binding {

// The video grid (T, H, W) in tokens. Its products T*H*W and H*W are checked by the library (VideoGrid::tokens
// goes through vmonarch::checked_product): a negative or overflowing grid raises ValueError here, before use.
inline vmonarch::VideoGrid grid_of(const char* fn, at::IntArrayRef grid) {
    TORCH_CHECK_VALUE(grid.size() == 3, fn, ": argument 'grid' is ", grid, " (", grid.size(),
                      " entries), expected 3 entries (frames T, height H, width W in tokens)");
    const vmonarch::VideoGrid g{grid[0], grid[1], grid[2]};
    translate_errors([&] { g.tokens(); });
    return g;
}

// The options of spec §3: t = iterations alternating R/L steps (1..8), the cL clamp, the first frame's
// recomputation and the softmax scale (None: 1/sqrt(d)); the library checks the clamp and scale.
inline vmonarch::Options options_of(const char* fn, int64_t iterations, double clamp, bool recompute,
                                    std::optional<double> scale) {
    TORCH_CHECK_VALUE(iterations >= 1 && iterations <= 8, fn, ": argument 'iterations' is ", iterations,
                      ", expected 1..8");
    vmonarch::Options o;
    o.iterations = static_cast<int>(iterations);
    o.cr_clamp = clamp;
    o.recompute_first_frame = recompute;
    o.softmax_scale = scale;
    return o;
}

// options_of plus the exact key groups of spec §3b (sink frames, temporal window; the library checks them).
inline vmonarch::Options exact_options_of(const char* fn, int64_t iterations, double clamp, bool recompute,
                                          std::optional<double> scale, int64_t sink_frames,
                                          std::optional<int64_t> window_radius) {
    vmonarch::Options o = options_of(fn, iterations, clamp, recompute, scale);
    o.sink_frames = sink_frames;
    o.window_radius = window_radius;
    return o;
}

// The LSE's dtype: float64 for float64 CPU inputs, float32 otherwise (the accumulation precision).
inline at::ScalarType lse_dtype(const at::Tensor& q) {
    return (q.is_cpu() && q.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

constexpr const char* kQkvShape = "([batch, tokens, heads, head_dim] or [batch, heads, tokens, head_dim])";

// t has `dims` dimensions (shape: how they read, for the message) and is on q's device.
inline void check_rank_and_device(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& q,
                                  int64_t dims, const char* shape) {
    TORCH_CHECK_VALUE(t.dim() == dims, fn, ": ", name, " has ", t.dim(), " dimensions, expected ", dims, " ", shape);
    TORCH_CHECK_VALUE(t.device() == q.device(), fn, ": ", name, " is on ", t.device(), ", expected ", q.device(),
                      " like q");
}

inline void check_dtype_like_q(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& q) {
    TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), fn, ": ", name, " has dtype ", t.scalar_type(),
                     ", expected ", q.scalar_type(), " like q");
}

inline void check_not_empty(const char* fn, const char* name, const at::Tensor& t) {
    TORCH_CHECK_VALUE(t.numel() > 0, fn, ": ", name, " is empty (shape ", t.sizes(), ")");
}

// The torch-level facts of q, k, v that the C++ API cannot see (rank, device type, one dtype and device for
// all); dtype problems raise TypeError, so that `except TypeError` catches all of those.
inline void check_qkv(const char* fn, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    const std::pair<const char*, const at::Tensor*> all[3] = {{"q", &q}, {"k", &k}, {"v", &v}};
    for (auto [name, t] : all) {
        TORCH_CHECK_VALUE(t->device().is_cpu() || t->device().is_cuda(), fn, ": ", name, " is on ", t->device(),
                          ", expected a CPU or CUDA tensor");
        check_rank_and_device(fn, name, *t, q, 4, kQkvShape);
        check_dtype_like_q(fn, name, *t, q);
        check_not_empty(fn, name, *t);
    }
    to_dtype(q);
    if (q.is_cuda()) {
        TORCH_CHECK_TYPE(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, fn,
                         ": the CUDA kernels take bfloat16 or float16, got ", q.scalar_type(), " on ", q.device(),
                         "; cast with .to(torch.bfloat16) (or run float32 on the CPU)");
    }
}

// t itself when the C++ API takes its memory as it is (head dim contiguous, no broadcast (zero) strides; on CUDA
// also 16-byte aligned data and strides that are multiples of 8 elements), else a contiguous copy.
inline at::Tensor viewable(const at::Tensor& t) {
    const int64_t last = t.dim() - 1;
    bool ok = t.size(last) <= 1 || t.stride(last) == 1;
    for (int64_t a = 0; a < last; ++a) ok = ok && (t.size(a) <= 1 || t.stride(a) >= 1);
    if (t.is_cuda()) {
        ok = ok && reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
        for (int64_t a = 0; a < last; ++a) ok = ok && (t.size(a) <= 1 || t.stride(a) % 8 == 0);
    }
    return ok ? t : t.contiguous();
}

// The tensors of a forward: q, k, v checked and viewable, out [B, N, heads, dv] in the layout, and lse
// [B, heads, N] when it is wanted (else an empty tensor of its dtype), with their views.
struct Prepared {
    at::Tensor q, k, v, out, lse;
    vmonarch::TensorView qv, kv, vv, ov;
    vmonarch::LseView lv;
    bool has_lse = false;
    const vmonarch::LseView* lse_or_null() const { return has_lse ? &lv : nullptr; }
};

inline Prepared prepare_all(const char* fn, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                            vmonarch::Layout layout, bool return_lse) {
    check_qkv(fn, q_in, k_in, v_in);
    Prepared p;
    p.q = viewable(q_in);
    p.k = viewable(k_in);
    p.v = viewable(v_in);
    p.qv = view_of(p.q, layout);
    p.kv = view_of(p.k, layout);
    p.vv = view_of(p.v, layout);
    const int64_t B = p.qv.batch(), N = p.qv.tokens(), H = p.qv.heads(), dv = p.vv.head_dim();
    p.out = layout == vmonarch::Layout::bshd ? at::empty({B, N, H, dv}, p.q.options())
                                             : at::empty({B, H, N, dv}, p.q.options());
    p.ov = view_of(p.out, layout);
    p.has_lse = return_lse;
    p.lse = at::empty(return_lse ? std::vector<int64_t>{B, H, N} : std::vector<int64_t>{0},
                      p.q.options().dtype(lse_dtype(p.q)));
    if (return_lse)
        p.lv = vmonarch::LseView::contiguous(p.lse.data_ptr(), to_dtype(p.lse), p.qv.device, B, H, N,
                                             p.qv.device_index);
    return p;
}

// Per-batch valid text lengths from text_lens ([B] integers; the library checks their range) or text_mask
// ([B, L] bool, True = valid key, which must be a prefix per row), read on the host; nullopt: all valid.
inline std::optional<std::vector<int64_t>> text_lengths(const char* fn, const std::optional<at::Tensor>& lens,
                                                        const std::optional<at::Tensor>& mask, int64_t batch,
                                                        int64_t L) {
    const bool has_lens = lens.has_value() && lens->defined(), has_mask = mask.has_value() && mask->defined();
    TORCH_CHECK_VALUE(!(has_lens && has_mask), fn, ": text_lens and text_mask are both given, expected at most one");
    if (has_lens) {
        TORCH_CHECK_TYPE(!at::isFloatingType(lens->scalar_type()) && lens->scalar_type() != at::kBool, fn,
                         ": text_lens has dtype ", lens->scalar_type(), ", expected an integer tensor");
        TORCH_CHECK_VALUE(lens->dim() == 1 && lens->size(0) == batch, fn, ": text_lens has shape ", lens->sizes(),
                          ", expected [", batch, "] (one valid length per batch element)");
        const at::Tensor host = lens->to(at::kCPU, at::kLong).contiguous();
        const int64_t* p = host.data_ptr<int64_t>();
        return std::vector<int64_t>(p, p + batch);
    }
    if (has_mask) {
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

// The extra (text) keys of attention() (spec §3b) as ExtraKeys over viewable tensors that this struct keeps alive.
struct TextKeys {
    at::Tensor k, v;
    std::optional<std::vector<int64_t>> lens;
    vmonarch::ExtraKeys extra;
    bool present = false;
    const vmonarch::ExtraKeys* extra_or_null() const { return present ? &extra : nullptr; }
};

inline TextKeys text_keys_of(const char* fn, const std::optional<at::Tensor>& text_k,
                             const std::optional<at::Tensor>& text_v, const std::optional<at::Tensor>& text_lens,
                             const at::Tensor& q, vmonarch::Layout layout) {
    TextKeys t;
    const bool has_k = text_k.has_value() && text_k->defined(), has_v = text_v.has_value() && text_v->defined();
    TORCH_CHECK_VALUE(has_k == has_v, fn, ": ", has_k ? "text_k" : "text_v", " is given without ",
                      has_k ? "text_v" : "text_k", ", expected both or neither");
    TORCH_CHECK_VALUE(has_k || !(text_lens.has_value() && text_lens->defined()), fn,
                      ": text_lens is given without text_k/text_v");
    if (!has_k) return t;
    const std::pair<const char*, const at::Tensor*> both[2] = {{"text_k", &*text_k}, {"text_v", &*text_v}};
    for (auto [name, x] : both) { // any text length L >= 0: an empty text tensor is fine
        check_rank_and_device(fn, name, *x, q, 4, "(like q)");
        check_dtype_like_q(fn, name, *x, q);
    }
    t.k = viewable(*text_k);
    t.v = viewable(*text_v);
    t.extra.k = view_of(t.k, layout);
    t.extra.v = view_of(t.v, layout);
    t.lens = text_lengths(fn, text_lens, std::nullopt, q.size(0), t.extra.k.tokens());
    t.extra.lens = t.lens ? t.lens->data() : nullptr;
    t.present = true;
    return t;
}

// A joint sequence of N video and text_len text tokens (spec §3c): text_len in 0..N + text_len.
inline void check_text_len(const char* fn, int64_t text_len, int64_t tokens) {
    TORCH_CHECK_VALUE(text_len >= 0 && text_len <= tokens, fn, ": argument 'text_len' is ", text_len, ", expected 0..",
                      tokens, " (the sequence's tokens)");
}

// The video part of a joint sequence's view (its first tokens - text_len tokens, wherever the text sits: only
// the shape matters), what the CUDA workspace is sized for.
inline vmonarch::TensorView video_part(vmonarch::TensorView view, int64_t text_len) {
    view.shape[1] = std::max<int64_t>(0, view.shape[1] - text_len);
    return view;
}

inline vmonarch::TextPosition text_position(bool text_first) {
    return text_first ? vmonarch::TextPosition::first : vmonarch::TextPosition::last;
}

} // namespace vmonarch_binding
