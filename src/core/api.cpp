// Public entry points: validate every argument, then hand a MonarchProblem / AttentionProblem to the
// CPU or CUDA backend (src/core/backend.hpp). Sizes are multiplied only through checked_product (or the
// checked sums below); error messages are formatted only when a check fails, so a valid call formats
// nothing. An allocation failure in a backend surfaces as OutOfMemoryError naming the call and its sizes.
#include <cmath>
#include <limits>
#include <new>
#include <sstream>
#include <stdexcept>

#include "core/argument_text.hpp"
#include "core/backend.hpp"
#include "core/backward_problem.hpp"
#include "core/host_memory.hpp"
#include "core/progress.hpp"

namespace vmonarch {

std::string to_string(DType dtype) {
    switch (dtype) {
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    }
    return "dtype(" + std::to_string(int(dtype)) + ")";
}

std::string to_string(Device device) {
    switch (device) {
    case Device::cpu: return "cpu";
    case Device::cuda: return "cuda";
    }
    return "device(" + std::to_string(int(device)) + ")";
}

std::string to_string(Layout layout) {
    switch (layout) {
    case Layout::bshd: return "bshd";
    case Layout::bhsd: return "bhsd";
    }
    return "layout(" + std::to_string(int(layout)) + ")";
}

std::optional<Layout> layout_from_string(std::string_view text) {
    if (text == "bshd") return Layout::bshd;
    if (text == "bhsd") return Layout::bhsd;
    return std::nullopt;
}

std::size_t dtype_size(DType dtype) {
    switch (dtype) {
    case DType::f16:
    case DType::bf16: return 2;
    case DType::f32: return 4;
    case DType::f64: return 8;
    }
    throw ArgumentError("dtype", "unknown dtype value " + std::to_string(int(dtype)));
}

// The contiguous strides are products of the sizes: checked (a negative size or an overflow is an
// ArgumentError for argument "shape").
TensorView TensorView::bshd(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t tokens,
                            std::int64_t heads, std::int64_t head_dim, int device_index) {
    constexpr const char* fn = "vmonarch::TensorView::bshd";
    checked_product({batch, tokens, heads, head_dim}, fn, "shape");
    return TensorView{data, dtype, device, device_index, {batch, tokens, heads, head_dim},
                      {checked_product({tokens, heads, head_dim}, fn, "shape"), checked_product({heads, head_dim}, fn, "shape"),
                       head_dim, 1}};
}

TensorView TensorView::bhsd(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t heads,
                            std::int64_t tokens, std::int64_t head_dim, int device_index) {
    constexpr const char* fn = "vmonarch::TensorView::bhsd";
    checked_product({batch, heads, tokens, head_dim}, fn, "shape");
    return TensorView{data, dtype, device, device_index, {batch, tokens, heads, head_dim},
                      {checked_product({heads, tokens, head_dim}, fn, "shape"), head_dim,
                       checked_product({tokens, head_dim}, fn, "shape"), 1}};
}

TensorView TensorView::of(Layout layout, void* data, DType dtype, Device device, std::int64_t batch,
                          std::int64_t tokens, std::int64_t heads, std::int64_t head_dim, int device_index) {
    return layout == Layout::bhsd ? bhsd(data, dtype, device, batch, heads, tokens, head_dim, device_index)
                                  : bshd(data, dtype, device, batch, tokens, heads, head_dim, device_index);
}

LseView LseView::contiguous(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t heads,
                            std::int64_t tokens, int device_index) {
    constexpr const char* fn = "vmonarch::LseView::contiguous";
    checked_product({batch, heads, tokens}, fn, "shape");
    return LseView{data, dtype, device, device_index, {batch, heads, tokens},
                   {checked_product({heads, tokens}, fn, "shape"), tokens, 1}};
}

namespace {

constexpr std::int64_t kMaxCpuHeadDim = 1024;

using detail::cat;
using detail::fail;

const char* kAxis[4] = {"batch", "tokens", "heads", "head_dim"};

// Byte range [lo, hi) a view can touch; used for the aliasing check.
struct ByteRange {
    std::uintptr_t lo, hi;
};

// Called after the view's sizes (>= 1, element count in int64) and strides (>= 1 where the size is > 1)
// were checked; the offset of its last element, its byte count and its end address are checked here.
template <std::size_t R>
ByteRange byte_range(std::string_view fn, std::string_view name, const void* data, DType dtype,
                     const std::array<std::int64_t, R>& shape, const std::array<std::int64_t, R>& strides) {
    std::int64_t last = 0;
    bool overflow = false;
    for (std::size_t a = 0; a < R; ++a) {
        std::int64_t step = 0;
        overflow = overflow || __builtin_mul_overflow(shape[a] - 1, strides[a], &step) ||
                   __builtin_add_overflow(last, step, &last);
    }
    std::int64_t bytes = 0;
    overflow = overflow || __builtin_add_overflow(last, std::int64_t(1), &bytes) ||
               __builtin_mul_overflow(bytes, std::int64_t(dtype_size(dtype)), &bytes);
    const auto lo = reinterpret_cast<std::uintptr_t>(data);
    if (overflow || std::uintptr_t(bytes) > std::numeric_limits<std::uintptr_t>::max() - lo)
        fail(fn, cat(name, ".strides"), "reach beyond the address space (the last element's offset overflows), "
                                        "expected strides that address a tensor in memory");
    return {lo, lo + std::uintptr_t(bytes)};
}

bool overlaps(ByteRange a, ByteRange b) { return a.lo < b.hi && b.lo < a.hi; }

// The element count of a view with sizes >= 1 must fit in int64: checked_product's ArgumentError for
// argument "<name>.shape", whose name is built only on overflow.
void check_element_count(std::string_view fn, std::string_view name, const std::array<std::int64_t, 4>& shape) {
    std::int64_t numel = 0;
    if (__builtin_mul_overflow(shape[0], shape[1], &numel) || __builtin_mul_overflow(numel, shape[2], &numel) ||
        __builtin_mul_overflow(numel, shape[3], &numel))
        checked_product({shape[0], shape[1], shape[2], shape[3]}, fn, cat(name, ".shape"));
}

void check_view(std::string_view fn, std::string_view name, const TensorView& t) {
    if (t.data == nullptr) fail(fn, cat(name, ".data"), "is null, expected a pointer to the tensor's memory");
    if (t.dtype != DType::f16 && t.dtype != DType::bf16 && t.dtype != DType::f32 && t.dtype != DType::f64)
        fail(fn, cat(name, ".dtype"), cat("has value ", int(t.dtype), ", expected one of f16, bf16, f32, f64"));
    if (t.device != Device::cpu && t.device != Device::cuda)
        fail(fn, cat(name, ".device"), cat("has value ", int(t.device), ", expected cpu or cuda"));
    if (t.device_index < 0) fail(fn, cat(name, ".device_index"), cat("is ", t.device_index, ", expected >= 0"));
    for (int a = 0; a < 4; ++a)
        if (t.shape[a] <= 0)
            fail(fn, cat(name, ".shape[", a, "]"), cat("(", kAxis[a], ") is ", t.shape[a], ", expected >= 1"));
    check_element_count(fn, name, t.shape);
    if (t.strides[3] != 1)
        fail(fn, cat(name, ".strides[3]"), cat("(head_dim stride) is ", t.strides[3], ", expected 1 (contiguous head dim)"));
    for (int a = 0; a < 3; ++a)
        if (t.shape[a] > 1 && t.strides[a] < 1)
            fail(fn, cat(name, ".strides[", a, "]"), cat("(", kAxis[a], " stride) is ", t.strides[a], ", expected >= 1"));
    if (t.device == Device::cuda) {
        if (t.dtype != DType::f16 && t.dtype != DType::bf16)
            fail(fn, cat(name, ".dtype"), cat("is ", to_string(t.dtype), " on cuda, expected f16 or bf16"));
        if (t.shape[3] != 64 && t.shape[3] != 128)
            fail(fn, cat(name, ".shape[3]"), cat("(head_dim) is ", t.shape[3], " on cuda, expected 64 or 128"));
        if (reinterpret_cast<std::uintptr_t>(t.data) % 16 != 0)
            fail(fn, cat(name, ".data"), "is not 16-byte aligned, expected a 16-byte aligned pointer on cuda");
        for (int a = 0; a < 3; ++a)
            if (t.shape[a] > 1 && t.strides[a] % 8 != 0)
                fail(fn, cat(name, ".strides[", a, "]"),
                     cat("(", kAxis[a], " stride) is ", t.strides[a], ", expected a multiple of 8 elements on cuda"));
    } else if (t.shape[3] > kMaxCpuHeadDim) {
        fail(fn, cat(name, ".shape[3]"), cat("(head_dim) is ", t.shape[3], ", expected <= ", kMaxCpuHeadDim));
    }
}

void check_same(std::string_view fn, std::string_view name, const TensorView& t, const TensorView& ref,
                std::string_view ref_name) {
    if (t.dtype != ref.dtype)
        fail(fn, cat(name, ".dtype"), cat("is ", to_string(t.dtype), ", expected ", to_string(ref.dtype), " like ", ref_name));
    if (t.device != ref.device || t.device_index != ref.device_index)
        fail(fn, cat(name, ".device"), cat("is ", to_string(t.device), ":", t.device_index, ", expected ",
                                           to_string(ref.device), ":", ref.device_index, " like ", ref_name));
}

void check_axis(std::string_view fn, std::string_view name, const TensorView& t, int axis, std::int64_t want,
                std::string_view why) {
    if (t.shape[axis] != want)
        fail(fn, cat(name, ".shape[", axis, "]"), cat("(", kAxis[axis], ") is ", t.shape[axis], ", expected ", want, " ", why));
}

// The tokens axis of q or k must equal the grid's token count N = T·H·W (already checked to fit).
void check_grid_tokens(std::string_view fn, std::string_view name, const TensorView& t, const VideoGrid& grid,
                       std::int64_t n) {
    if (t.tokens() != n)
        fail(fn, cat(name, ".shape[1]"), cat("(tokens) is ", t.tokens(), ", expected ", n, " (T*H*W = ", grid.T, "*",
                                             grid.H, "*", grid.W, ")"));
}

void check_lse(std::string_view fn, const LseView& lse, const TensorView& q) {
    if (lse.data == nullptr) fail(fn, "lse.data", "is null, expected a pointer (or pass no LseView)");
    const bool f64_ok = q.dtype == DType::f64 && q.device == Device::cpu;
    if (lse.dtype != DType::f32 && !(f64_ok && lse.dtype == DType::f64))
        fail(fn, "lse.dtype", cat("is ", to_string(lse.dtype), ", expected f32", f64_ok ? " or f64" : ""));
    if (lse.device != q.device || lse.device_index != q.device_index)
        fail(fn, "lse.device", cat("is ", to_string(lse.device), ":", lse.device_index, ", expected ",
                                   to_string(q.device), ":", q.device_index, " like q"));
    const std::array<std::int64_t, 3> want{q.batch(), q.heads(), q.tokens()};
    const char* axis[3] = {"batch", "heads", "tokens"};
    for (int a = 0; a < 3; ++a) {
        if (lse.shape[a] != want[a])
            fail(fn, cat("lse.shape[", a, "]"), cat("(", axis[a], ") is ", lse.shape[a], ", expected ", want[a], " from q"));
        if (lse.shape[a] > 1 && lse.strides[a] < 1)
            fail(fn, cat("lse.strides[", a, "]"), cat("is ", lse.strides[a], ", expected >= 1"));
    }
}

// The CUDA workspace (src/cuda/monarch_plan.cu) holds, per row of batch·heads·tokens, aR and aL (d
// half-precision values each), y (dv), cR, cL and the exact groups' LSE (f32), each region padded to 256
// bytes: its byte count must fit in int64 so that the backend's size_t sums cannot wrap.
void check_cuda_workspace_size(std::string_view fn, std::int64_t batch, std::int64_t heads, std::int64_t tokens,
                               std::int64_t d, std::int64_t dv) {
    const std::int64_t row_bytes = 2 * (2 * d + dv) + 3 * 4, padding = 6 * 256;
    std::int64_t bytes = 0;
    if (__builtin_mul_overflow(batch, heads, &bytes) || __builtin_mul_overflow(bytes, tokens, &bytes) ||
        __builtin_mul_overflow(bytes, row_bytes, &bytes) || __builtin_add_overflow(bytes, padding, &bytes))
        fail(fn, "q.shape", cat("is [", batch, ", ", tokens, ", ", heads, ", ", d, "], whose CUDA workspace (",
                                row_bytes, " bytes per row of batch*tokens*heads) overflows int64"));
}

} // namespace

namespace detail {

// Shared checks of dense and Monarch attention; fills the common problem fields.
void check_attention(std::string_view fn, const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& out, const LseView* lse, AttentionProblem& p) {
    check_view(fn, "q", q);
    check_view(fn, "k", k);
    check_view(fn, "v", v);
    check_view(fn, "out", out);
    check_same(fn, "k", k, q, "q");
    check_same(fn, "v", v, q, "q");
    check_same(fn, "out", out, q, "q");
    check_axis(fn, "k", k, 0, q.batch(), "(q's batch)");
    check_axis(fn, "k", k, 2, q.heads(), "(q's heads)");
    check_axis(fn, "k", k, 3, q.head_dim(), "(q's head_dim)");
    check_axis(fn, "v", v, 0, q.batch(), "(q's batch)");
    check_axis(fn, "v", v, 1, k.tokens(), "(k's tokens)");
    check_axis(fn, "v", v, 2, q.heads(), "(q's heads)");
    check_axis(fn, "out", out, 0, q.batch(), "(q's batch)");
    check_axis(fn, "out", out, 1, q.tokens(), "(q's tokens)");
    check_axis(fn, "out", out, 2, q.heads(), "(q's heads)");
    check_axis(fn, "out", out, 3, v.head_dim(), "(v's head_dim)");
    if (q.device == Device::cuda && v.head_dim() != q.head_dim())
        fail(fn, "v.shape[3]", cat("(head_dim) is ", v.head_dim(), " on cuda, expected q's head_dim ", q.head_dim()));
    if (lse) check_lse(fn, *lse, q);

    const ByteRange o = byte_range(fn, "out", out.data, out.dtype, out.shape, out.strides);
    const std::pair<const char*, const TensorView*> inputs[3] = {{"q", &q}, {"k", &k}, {"v", &v}};
    for (auto [name, t] : inputs)
        if (overlaps(o, byte_range(fn, name, t->data, t->dtype, t->shape, t->strides)))
            fail(fn, "out", cat("overlaps the memory of ", name, ", expected a separate output buffer"));
    // out must not overlap itself: rows written by different threads would race. (No overflow: every
    // partial reach is at most out's last offset + head_dim, checked by byte_range.)
    {
        std::array<std::int64_t, 3> ext{}, str{};
        for (int a = 0; a < 3; ++a) ext[a] = out.shape[a], str[a] = out.strides[a];
        // Sort the three outer axes by stride and require each to step past the previous one's extent.
        for (int x = 0; x < 3; ++x)
            for (int y = x + 1; y < 3; ++y)
                if (str[y] < str[x]) std::swap(str[x], str[y]), std::swap(ext[x], ext[y]);
        std::int64_t reach = out.head_dim();
        for (int a = 0; a < 3; ++a) {
            if (ext[a] == 1) continue;
            if (str[a] < reach)
                fail(fn, "out.strides", cat("make elements of out overlap (stride ", str[a], " < extent ", reach,
                                            "), expected non-overlapping output rows"));
            reach = str[a] * (ext[a] - 1) + reach;
        }
    }
    if (lse) {
        const ByteRange l = byte_range(fn, "lse", lse->data, lse->dtype, lse->shape, lse->strides);
        if (overlaps(l, o)) fail(fn, "lse", "overlaps out, expected a separate buffer");
        for (auto [name, t] : inputs)
            if (overlaps(l, byte_range(fn, name, t->data, t->dtype, t->shape, t->strides)))
                fail(fn, "lse", cat("overlaps the memory of ", name, ", expected a separate buffer"));
    }
    p.q = q, p.k = k, p.v = v, p.out = out, p.lse = lse;
    p.batch = q.batch(), p.heads = q.heads(), p.q_tokens = q.tokens(), p.kv_tokens = k.tokens();
    p.head_dim = q.head_dim(), p.value_dim = v.head_dim();
}

MonarchProblem check_monarch(std::string_view fn, const TensorView& q, const TensorView& k, const TensorView& v,
                             const TensorView& out, const VideoGrid& grid, const Options& options,
                             const LseView* lse) {
    MonarchProblem p;
    const std::pair<const char*, std::int64_t> dims[3] = {{"grid.T", grid.T}, {"grid.H", grid.H}, {"grid.W", grid.W}};
    for (auto [name, value] : dims)
        if (value <= 0) fail(fn, name, cat("is ", value, ", expected >= 1"));
    const std::int64_t n = checked_product({grid.T, grid.H, grid.W}, fn, "grid");
    check_fit_options(fn, options);
    check_attention(fn, q, k, v, out, lse, p);
    check_grid_tokens(fn, "q", q, grid, n);
    check_grid_tokens(fn, "k", k, grid, n);
    if (q.device == Device::cuda)
        check_cuda_workspace_size(fn, q.batch(), q.heads(), q.tokens(), q.head_dim(), v.head_dim());
    p.grid = grid;
    p.iterations = options.iterations;
    p.cr_clamp = options.cr_clamp;
    p.recompute_first_frame = options.recompute_first_frame;
    p.scale = resolve_scale(fn, options.softmax_scale, q.head_dim());
    return p;
}

AttentionProblem check_dense(std::string_view fn, const TensorView& q, const TensorView& k, const TensorView& v,
                             const TensorView& out, std::optional<double> softmax_scale, const LseView* lse) {
    AttentionProblem p;
    check_attention(fn, q, k, v, out, lse, p);
    p.scale = resolve_scale(fn, softmax_scale, q.head_dim());
    return p;
}

double resolve_scale(std::string_view fn, const std::optional<double>& scale, std::int64_t head_dim) {
    if (!scale) return 1.0 / std::sqrt(double(head_dim));
    if (!std::isfinite(*scale) || *scale <= 0)
        fail(fn, "softmax_scale", cat("is ", *scale, ", expected a finite value > 0"));
    return *scale;
}

void check_fit_options(std::string_view fn, const Options& options) {
    if (options.iterations < 1 || options.iterations > 8)
        fail(fn, "options.iterations", cat("is ", options.iterations, ", expected 1..8"));
    if (!std::isfinite(options.cr_clamp) || options.cr_clamp < 0)
        fail(fn, "options.cr_clamp", cat("is ", options.cr_clamp, ", expected a finite value >= 0 (0 disables the clamp)"));
}

void check_tensor_view(std::string_view fn, std::string_view name, const TensorView& t) { check_view(fn, name, t); }

void check_same_kind(std::string_view fn, std::string_view name, const TensorView& t, const TensorView& ref,
                     std::string_view ref_name) {
    check_same(fn, name, t, ref, ref_name);
}

bool views_overlap(std::string_view fn, std::string_view a_name, const TensorView& a, std::string_view b_name,
                   const TensorView& b) {
    return overlaps(byte_range(fn, a_name, a.data, a.dtype, a.shape, a.strides),
                    byte_range(fn, b_name, b.data, b.dtype, b.shape, b.strides));
}

} // namespace detail

namespace {

// "<fn> on cpu (f32, batch=1 heads=2 tokens=... d=64 dv=64[, grid TxHxW])": the sizes in an
// OutOfMemoryError, built only after an allocation failed.
std::string describe(std::string_view fn, const detail::AttentionProblem& p, const VideoGrid* grid) {
    std::string text = cat(fn, " on ", to_string(p.q.device), " (", to_string(p.q.dtype), ", batch=", p.batch,
                           " heads=", p.heads, " tokens=", p.q_tokens, " d=", p.head_dim, " dv=", p.value_dim);
    if (grid) text += cat(", grid ", grid->T, "x", grid->H, "x", grid->W);
    return text + ")";
}

// Runs a backend call; an allocation failure that escaped it (host memory of either backend) becomes
// OutOfMemoryError with the call's sizes. The backends' own buffers already throw OutOfMemoryError with
// the size of the buffer (core/host_memory.hpp), and those pass through unchanged.
template <typename Call>
void run_backend(std::string_view fn, const detail::AttentionProblem& p, const VideoGrid* grid, Call&& call) {
    try {
        call();
    } catch (const std::bad_alloc& e) {
        detail::throw_out_of_memory(describe(fn, p, grid), e);
    } catch (const std::length_error& e) {
        detail::throw_out_of_memory(describe(fn, p, grid), e);
    }
}

} // namespace

void detail::monarch_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                               const VideoGrid& grid, const Options& options, const LseView* lse,
                               const CudaContext* cuda, const ExtraKeys* extra_keys,
                               const TextQueryProblem* text_queries) {
    constexpr std::string_view fn = "vmonarch::attention";
    auto p = detail::check_monarch(fn, q, k, v, out, grid, options, lse);
    detail::attach_exact_groups(fn, options, extra_keys, p);
    p.text_queries = q.device == Device::cuda ? text_queries : nullptr;
    run_backend(fn, p, &grid, [&] {
        if (q.device == Device::cuda) {
            detail::cuda_monarch_attention(p, cuda);
        } else {
            detail::cpu_monarch_attention(p);
        }
    });
}

void attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const VideoGrid& grid, const Options& options, const LseView* lse, const CudaContext* cuda,
               const ExtraKeys* extra_keys) {
    detail::monarch_attention(q, k, v, out, grid, options, lse, cuda, extra_keys, nullptr);
}

void dense_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                     std::optional<double> softmax_scale, const LseView* lse, const CudaContext* cuda) {
    constexpr std::string_view fn = "vmonarch::dense_attention";
    const auto p = detail::check_dense(fn, q, k, v, out, softmax_scale, lse);
    run_backend(fn, p, nullptr, [&] {
        if (q.device == Device::cuda) {
            detail::cuda_dense_attention(p, cuda);
        } else {
            detail::cpu_dense_attention(p);
        }
    });
}

std::size_t workspace_bytes(const TensorView& q, const TensorView& v, const VideoGrid& grid, const Options& options) {
    if (q.device != Device::cuda) return 0;
    constexpr std::string_view fn = "vmonarch::workspace_bytes";
    for (int a = 0; a < 4; ++a) {
        if (q.shape[a] <= 0) fail(fn, cat("q.shape[", a, "]"), cat("(", kAxis[a], ") is ", q.shape[a], ", expected >= 1"));
        if (v.shape[a] <= 0) fail(fn, cat("v.shape[", a, "]"), cat("(", kAxis[a], ") is ", v.shape[a], ", expected >= 1"));
    }
    check_element_count(fn, "q", q.shape);
    check_element_count(fn, "v", v.shape);
    detail::check_fit_options(fn, options);
    if (grid.T < 1 || grid.H < 1 || grid.W < 1 || checked_product({grid.T, grid.H, grid.W}, fn, "grid") != q.tokens())
        fail(fn, "grid", cat("is ", grid.T, "x", grid.H, "x", grid.W, ", expected T*H*W = q's tokens ", q.tokens()));
    check_cuda_workspace_size(fn, q.batch(), q.heads(), q.tokens(), q.head_dim(), v.head_dim());
    // q stands in for k and out (same shapes as far as the workspace is concerned).
    TensorView out = v;
    out.shape = {q.batch(), q.tokens(), q.heads(), v.head_dim()};
    detail::MonarchProblem p;
    p.q = q, p.k = q, p.v = v, p.out = out;
    p.batch = q.batch(), p.heads = q.heads(), p.q_tokens = p.kv_tokens = q.tokens();
    p.head_dim = q.head_dim(), p.value_dim = v.head_dim();
    p.grid = grid;
    p.iterations = options.iterations;
    p.cr_clamp = options.cr_clamp;
    p.recompute_first_frame = options.recompute_first_frame;
    return detail::cuda_monarch_workspace_bytes(p);
}

FlopCount flops(const VideoGrid& grid, std::int64_t head_dim, std::int64_t heads, std::int64_t batch,
                const Options& options, std::int64_t extra_tokens) {
    constexpr std::string_view fn = "vmonarch::flops";
    const std::pair<const char*, std::int64_t> dims[3] = {{"grid.T", grid.T}, {"grid.H", grid.H}, {"grid.W", grid.W}};
    for (auto [name, value] : dims)
        if (value <= 0) fail(fn, name, cat("is ", value, ", expected >= 1"));
    checked_product({grid.T, grid.H, grid.W}, fn, "grid");
    const std::pair<const char*, std::int64_t> sizes[3] = {{"head_dim", head_dim}, {"heads", heads}, {"batch", batch}};
    for (auto [name, value] : sizes)
        if (value <= 0) fail(fn, name, cat("is ", value, ", expected >= 1"));
    detail::check_fit_options(fn, options);
    detail::check_exact_options(fn, options);
    if (extra_tokens < 0) fail(fn, "extra_tokens", cat("is ", extra_tokens, ", expected >= 0"));
    return detail::exact_group_flops(grid, head_dim, heads, batch, options, extra_tokens); // src/core/flops.cpp
}

bool cuda_available() { return detail::cuda_device_present(); }

std::string cuda_device_name(int device_index) { return detail::cuda_device_name_of(device_index); }

} // namespace vmonarch
