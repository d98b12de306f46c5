// Public entry points: validate every argument, then hand a MonarchProblem / AttentionProblem to the
// CPU or CUDA backend (src/core/dispatch.hpp).
#include <cmath>
#include <limits>
#include <sstream>

#include "core/dispatch.hpp"
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

std::size_t dtype_size(DType dtype) {
    switch (dtype) {
    case DType::f16:
    case DType::bf16: return 2;
    case DType::f32: return 4;
    case DType::f64: return 8;
    }
    throw ArgumentError("dtype", "unknown dtype value " + std::to_string(int(dtype)));
}

TensorView TensorView::bshd(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t tokens,
                            std::int64_t heads, std::int64_t head_dim, int device_index) {
    return TensorView{data, dtype, device, device_index, {batch, tokens, heads, head_dim},
                      {tokens * heads * head_dim, heads * head_dim, head_dim, 1}};
}

TensorView TensorView::bhsd(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t heads,
                            std::int64_t tokens, std::int64_t head_dim, int device_index) {
    return TensorView{data, dtype, device, device_index, {batch, tokens, heads, head_dim},
                      {heads * tokens * head_dim, head_dim, tokens * head_dim, 1}};
}

LseView LseView::contiguous(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t heads,
                            std::int64_t tokens, int device_index) {
    return LseView{data, dtype, device, device_index, {batch, heads, tokens}, {heads * tokens, tokens, 1}};
}

namespace {

constexpr std::int64_t kMaxCpuHeadDim = 1024;

template <typename... Parts>
std::string cat(const Parts&... parts) {
    std::ostringstream os;
    (os << ... << parts);
    return os.str();
}

[[noreturn]] void fail(const std::string& fn, const std::string& argument, const std::string& what) {
    throw ArgumentError(argument, cat(fn, ": argument '", argument, "' ", what));
}

const char* kAxis[4] = {"batch", "tokens", "heads", "head_dim"};

// Byte range [lo, hi) a view can touch; used for the aliasing check.
struct ByteRange {
    std::uintptr_t lo, hi;
};

template <std::size_t R>
ByteRange byte_range(const void* data, DType dtype, const std::array<std::int64_t, R>& shape,
                     const std::array<std::int64_t, R>& strides) {
    std::int64_t last = 0;
    for (std::size_t a = 0; a < R; ++a) last += (shape[a] - 1) * strides[a];
    const auto lo = reinterpret_cast<std::uintptr_t>(data);
    return {lo, lo + std::uintptr_t(last + 1) * dtype_size(dtype)};
}

bool overlaps(ByteRange a, ByteRange b) { return a.lo < b.hi && b.lo < a.hi; }

void check_view(const std::string& fn, const std::string& name, const TensorView& t) {
    if (t.data == nullptr) fail(fn, name + ".data", "is null, expected a pointer to the tensor's memory");
    if (t.dtype != DType::f16 && t.dtype != DType::bf16 && t.dtype != DType::f32 && t.dtype != DType::f64)
        fail(fn, name + ".dtype", cat("has value ", int(t.dtype), ", expected one of f16, bf16, f32, f64"));
    if (t.device != Device::cpu && t.device != Device::cuda)
        fail(fn, name + ".device", cat("has value ", int(t.device), ", expected cpu or cuda"));
    if (t.device_index < 0) fail(fn, name + ".device_index", cat("is ", t.device_index, ", expected >= 0"));
    std::int64_t numel = 1;
    for (int a = 0; a < 4; ++a) {
        if (t.shape[a] <= 0)
            fail(fn, cat(name, ".shape[", a, "]"), cat("(", kAxis[a], ") is ", t.shape[a], ", expected >= 1"));
        if (numel > std::numeric_limits<std::int64_t>::max() / t.shape[a])
            fail(fn, name + ".shape", "has more elements than fit in int64");
        numel *= t.shape[a];
    }
    if (t.strides[3] != 1)
        fail(fn, name + ".strides[3]", cat("(head_dim stride) is ", t.strides[3], ", expected 1 (contiguous head dim)"));
    for (int a = 0; a < 3; ++a)
        if (t.shape[a] > 1 && t.strides[a] < 1)
            fail(fn, cat(name, ".strides[", a, "]"), cat("(", kAxis[a], " stride) is ", t.strides[a], ", expected >= 1"));
    if (t.device == Device::cuda) {
        if (t.dtype != DType::f16 && t.dtype != DType::bf16)
            fail(fn, name + ".dtype", cat("is ", to_string(t.dtype), " on cuda, expected f16 or bf16"));
        if (t.shape[3] != 64 && t.shape[3] != 128)
            fail(fn, name + ".shape[3]", cat("(head_dim) is ", t.shape[3], " on cuda, expected 64 or 128"));
        if (reinterpret_cast<std::uintptr_t>(t.data) % 16 != 0)
            fail(fn, name + ".data", "is not 16-byte aligned, expected a 16-byte aligned pointer on cuda");
        for (int a = 0; a < 3; ++a)
            if (t.shape[a] > 1 && t.strides[a] % 8 != 0)
                fail(fn, cat(name, ".strides[", a, "]"),
                     cat("(", kAxis[a], " stride) is ", t.strides[a], ", expected a multiple of 8 elements on cuda"));
    } else if (t.shape[3] > kMaxCpuHeadDim) {
        fail(fn, name + ".shape[3]", cat("(head_dim) is ", t.shape[3], ", expected <= ", kMaxCpuHeadDim));
    }
}

void check_same(const std::string& fn, const std::string& name, const TensorView& t, const TensorView& ref,
                const std::string& ref_name) {
    if (t.dtype != ref.dtype)
        fail(fn, name + ".dtype", cat("is ", to_string(t.dtype), ", expected ", to_string(ref.dtype), " like ", ref_name));
    if (t.device != ref.device || t.device_index != ref.device_index)
        fail(fn, name + ".device", cat("is ", to_string(t.device), ":", t.device_index, ", expected ",
                                       to_string(ref.device), ":", ref.device_index, " like ", ref_name));
}

void check_axis(const std::string& fn, const std::string& name, const TensorView& t, int axis, std::int64_t want,
                const std::string& why) {
    if (t.shape[axis] != want)
        fail(fn, cat(name, ".shape[", axis, "]"), cat("(", kAxis[axis], ") is ", t.shape[axis], ", expected ", want, " ", why));
}


void check_lse(const std::string& fn, const LseView& lse, const TensorView& q) {
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

// Shared checks of dense and Monarch attention; fills the common problem fields.
void check_attention(const std::string& fn, const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& out, const LseView* lse, detail::AttentionProblem& p) {
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

    const ByteRange o = byte_range(out.data, out.dtype, out.shape, out.strides);
    const std::pair<const char*, const TensorView*> inputs[3] = {{"q", &q}, {"k", &k}, {"v", &v}};
    for (auto [name, t] : inputs)
        if (overlaps(o, byte_range(t->data, t->dtype, t->shape, t->strides)))
            fail(fn, "out", cat("overlaps the memory of ", name, ", expected a separate output buffer"));
    // out must not overlap itself: rows written by different threads would race.
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
        const ByteRange l = byte_range(lse->data, lse->dtype, lse->shape, lse->strides);
        if (overlaps(l, o)) fail(fn, "lse", "overlaps out, expected a separate buffer");
        for (auto [name, t] : inputs)
            if (overlaps(l, byte_range(t->data, t->dtype, t->shape, t->strides)))
                fail(fn, "lse", cat("overlaps the memory of ", name, ", expected a separate buffer"));
    }
    p.q = q, p.k = k, p.v = v, p.out = out, p.lse = lse;
    p.batch = q.batch(), p.heads = q.heads(), p.q_tokens = q.tokens(), p.kv_tokens = k.tokens();
    p.head_dim = q.head_dim(), p.value_dim = v.head_dim();
}

detail::MonarchProblem check_monarch(const std::string& fn, const TensorView& q, const TensorView& k,
                                     const TensorView& v, const TensorView& out, const VideoGrid& grid,
                                     const Options& options, const LseView* lse) {
    detail::MonarchProblem p;
    const std::pair<const char*, std::int64_t> dims[3] = {{"grid.T", grid.T}, {"grid.H", grid.H}, {"grid.W", grid.W}};
    for (auto [name, value] : dims)
        if (value <= 0) fail(fn, name, cat("is ", value, ", expected >= 1"));
    if (grid.T > std::numeric_limits<std::int64_t>::max() / grid.H ||
        grid.T * grid.H > std::numeric_limits<std::int64_t>::max() / grid.W)
        fail(fn, "grid", cat("is ", grid.T, "x", grid.H, "x", grid.W, ", whose token count overflows int64"));
    detail::check_fit_options(fn, options);
    check_attention(fn, q, k, v, out, lse, p);
    const std::int64_t n = grid.tokens();
    const std::string why = cat("(T*H*W = ", grid.T, "*", grid.H, "*", grid.W, ")");
    check_axis(fn, "q", q, 1, n, why);
    check_axis(fn, "k", k, 1, n, why);
    p.grid = grid;
    p.iterations = options.iterations;
    p.cr_clamp = options.cr_clamp;
    p.recompute_first_frame = options.recompute_first_frame;
    p.scale = detail::resolve_scale(fn, options.softmax_scale, q.head_dim());
    return p;
}

} // namespace

namespace detail {

double resolve_scale(const std::string& fn, const std::optional<double>& scale, std::int64_t head_dim) {
    if (!scale) return 1.0 / std::sqrt(double(head_dim));
    if (!std::isfinite(*scale) || *scale <= 0)
        fail(fn, "softmax_scale", cat("is ", *scale, ", expected a finite value > 0"));
    return *scale;
}

void check_fit_options(const std::string& fn, const Options& options) {
    if (options.iterations < 1 || options.iterations > 8)
        fail(fn, "options.iterations", cat("is ", options.iterations, ", expected 1..8"));
    if (!std::isfinite(options.cr_clamp) || options.cr_clamp < 0)
        fail(fn, "options.cr_clamp", cat("is ", options.cr_clamp, ", expected a finite value >= 0 (0 disables the clamp)"));
}

void check_tensor_view(const std::string& fn, const std::string& name, const TensorView& t) { check_view(fn, name, t); }

void check_same_kind(const std::string& fn, const std::string& name, const TensorView& t, const TensorView& ref,
                     const std::string& ref_name) {
    check_same(fn, name, t, ref, ref_name);
}

bool views_overlap(const TensorView& a, const TensorView& b) {
    return overlaps(byte_range(a.data, a.dtype, a.shape, a.strides), byte_range(b.data, b.dtype, b.shape, b.strides));
}

AttentionProblem check_attention_views(const std::string& fn, const TensorView& q, const TensorView& k,
                                       const TensorView& v, const TensorView& out, const LseView* lse) {
    AttentionProblem p;
    check_attention(fn, q, k, v, out, lse, p);
    return p;
}

} // namespace detail

void attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const VideoGrid& grid, const Options& options, const LseView* lse, const CudaContext* cuda,
               const ExtraKeys* extra_keys) {
    auto p = check_monarch("vmonarch::attention", q, k, v, out, grid, options, lse);
    detail::attach_exact_groups("vmonarch::attention", options, extra_keys, p);
    if (q.device == Device::cuda) {
        detail::cuda_monarch_attention(p, cuda);
    } else {
        detail::cpu_monarch_attention(p);
    }
}

void dense_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                     std::optional<double> softmax_scale, const LseView* lse, const CudaContext* cuda) {
    const std::string fn = "vmonarch::dense_attention";
    detail::AttentionProblem p;
    check_attention(fn, q, k, v, out, lse, p);
    p.scale = detail::resolve_scale(fn, softmax_scale, q.head_dim());
    if (q.device == Device::cuda) {
        detail::cuda_dense_attention(p, cuda);
    } else {
        detail::cpu_dense_attention(p);
    }
}

std::size_t workspace_bytes(const TensorView& q, const TensorView& v, const VideoGrid& grid, const Options& options) {
    if (q.device != Device::cuda) return 0;
    // Validate with q standing in for k and out (same shapes as far as the workspace is concerned).
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
    if (grid.T < 1 || grid.H < 1 || grid.W < 1 || grid.tokens() != q.tokens())
        fail("vmonarch::workspace_bytes", "grid",
             cat("is ", grid.T, "x", grid.H, "x", grid.W, ", expected T*H*W = q's tokens ", q.tokens()));
    return detail::cuda_monarch_workspace_bytes(p);
}

bool cuda_available() { return detail::cuda_device_present(); }

std::string cuda_device_name(int device_index) { return detail::cuda_device_name_of(device_index); }

} // namespace vmonarch
