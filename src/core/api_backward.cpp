// Public entry points of the backward pass (include/vmonarch/backward.hpp): validate every argument,
// then hand a TrainingProblem / BackwardProblem to the CPU or CUDA backend (src/core/backward_problem.hpp).
// The forward's own arguments go through the same checks as attention() (src/core/api.cpp).
#include <cstring>
#include <limits>
#include <new>
#include <sstream>
#include <vector>

#include "core/argument_text.hpp"
#include "core/backward_problem.hpp"

namespace vmonarch {

struct SavedState::Impl {
    std::unique_ptr<std::uint64_t[]> owned; // when the state owns host memory
    std::shared_ptr<void> device_owned;     // when the state owns device memory (cudaMalloc)
    std::array<unsigned char, kSavedStateHeaderBytes> header{}; // host copy of a CUDA state's header
    bool header_known = false;
    void* data = nullptr;
    std::size_t bytes = 0;
    Device device = Device::cpu;
    int device_index = 0;
};

SavedState::SavedState() : impl_(std::make_unique<Impl>()) {}
SavedState::~SavedState() = default;
SavedState::SavedState(SavedState&&) noexcept = default;
SavedState& SavedState::operator=(SavedState&&) noexcept = default;

namespace {

using detail::cat;
using detail::fail;

const char* kAxis[4] = {"batch", "tokens", "heads", "head_dim"};

struct ByteRange {
    std::uintptr_t lo = 0, hi = 0;
};

template <std::size_t R>
ByteRange byte_range(const void* data, DType dtype, const std::array<std::int64_t, R>& shape,
                     const std::array<std::int64_t, R>& strides) {
    std::int64_t last = 0;
    for (std::size_t a = 0; a < R; ++a) last += (shape[a] - 1) * strides[a];
    const auto lo = reinterpret_cast<std::uintptr_t>(data);
    return {lo, lo + std::uintptr_t(last + 1) * dtype_size(dtype)};
}

ByteRange range_of(const TensorView& t) { return byte_range(t.data, t.dtype, t.shape, t.strides); }
ByteRange range_of(const LseView& t) { return byte_range(t.data, t.dtype, t.shape, t.strides); }
bool overlaps(ByteRange a, ByteRange b) { return a.lo < b.hi && b.lo < a.hi; }

void check_shape(const std::string& fn, const std::string& name, const TensorView& t,
                 const std::array<std::int64_t, 4>& want, const std::string& like) {
    for (int a = 0; a < 4; ++a)
        if (t.shape[a] != want[a])
            fail(fn, cat(name, ".shape[", a, "]"),
                 cat("(", kAxis[a], ") is ", t.shape[a], ", expected ", want[a], " like ", like));
}

// A written view must not overlap itself: rows written by different threads would race.
void check_rows_disjoint(const std::string& fn, const std::string& name, const TensorView& t) {
    std::array<std::int64_t, 3> ext{}, str{};
    for (int a = 0; a < 3; ++a) ext[a] = t.shape[a], str[a] = t.strides[a];
    for (int x = 0; x < 3; ++x)
        for (int y = x + 1; y < 3; ++y)
            if (str[y] < str[x]) std::swap(str[x], str[y]), std::swap(ext[x], ext[y]);
    std::int64_t reach = t.head_dim();
    for (int a = 0; a < 3; ++a) {
        if (ext[a] == 1) continue;
        if (str[a] < reach)
            fail(fn, name + ".strides", cat("make elements of ", name, " overlap (stride ", str[a], " < extent ", reach,
                                            "), expected non-overlapping rows"));
        reach = str[a] * (ext[a] - 1) + reach;
    }
}

// dlse: [batch, heads, tokens] like the forward's lse, f32 (or f64 for f64 inputs on the CPU).
void check_dlse(const std::string& fn, const LseView& dlse, const TensorView& q) {
    if (dlse.data == nullptr) fail(fn, "dlse.data", "is null, expected a pointer (or pass no dlse)");
    const bool f64_ok = q.dtype == DType::f64 && q.device == Device::cpu;
    if (dlse.dtype != DType::f32 && !(f64_ok && dlse.dtype == DType::f64))
        fail(fn, "dlse.dtype", cat("is ", to_string(dlse.dtype), ", expected f32", f64_ok ? " or f64" : ""));
    if (dlse.device != q.device || dlse.device_index != q.device_index)
        fail(fn, "dlse.device", cat("is ", to_string(dlse.device), ":", dlse.device_index, ", expected ",
                                    to_string(q.device), ":", q.device_index, " like q"));
    const std::array<std::int64_t, 3> want{q.batch(), q.heads(), q.tokens()};
    const char* axis[3] = {"batch", "heads", "tokens"};
    for (int a = 0; a < 3; ++a) {
        if (dlse.shape[a] != want[a])
            fail(fn, cat("dlse.shape[", a, "]"), cat("(", axis[a], ") is ", dlse.shape[a], ", expected ", want[a], " from q"));
        if (dlse.shape[a] > 1 && dlse.strides[a] < 1)
            fail(fn, cat("dlse.strides[", a, "]"), cat("is ", dlse.strides[a], ", expected >= 1"));
    }
}

using NamedRange = std::pair<std::string, ByteRange>;

// The gradient views of a backward call: dout, dq, dk, dv valid, of q's kind and shaped like out, q, k, v; dlse
// (when given) like the lse. Returns the memory the written gradients must stay apart from (the inputs).
std::vector<NamedRange> check_gradient_views(const std::string& fn, const TensorView& q, const TensorView& k,
                                             const TensorView& v, const TensorView& out, const LseView& lse,
                                             const TensorView& dout, const TensorView& dq, const TensorView& dk,
                                             const TensorView& dv, const LseView* dlse) {
    const std::pair<const char*, const TensorView*> grads[4] = {{"dout", &dout}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv}};
    const TensorView* like[4] = {&out, &q, &k, &v};
    const char* like_name[4] = {"out", "q", "k", "v"};
    for (int g = 0; g < 4; ++g) {
        detail::check_tensor_view(fn, grads[g].first, *grads[g].second);
        detail::check_same_kind(fn, grads[g].first, *grads[g].second, q, "q");
        check_shape(fn, grads[g].first, *grads[g].second, like[g]->shape, like_name[g]);
    }
    if (dlse) check_dlse(fn, *dlse, q);
    std::vector<NamedRange> inputs = {{"q", range_of(q)},     {"k", range_of(k)},     {"v", range_of(v)},
                                      {"out", range_of(out)}, {"lse", range_of(lse)}, {"dout", range_of(dout)}};
    if (dlse) inputs.push_back({"dlse", range_of(*dlse)});
    return inputs;
}

// The written gradients, in order: each free of self-overlap and apart from `others` and from those before it.
void check_written_apart(const std::string& fn, const std::vector<std::pair<std::string, const TensorView*>>& written,
                         std::vector<NamedRange> others) {
    for (const auto& [name, view] : written) {
        check_rows_disjoint(fn, name, *view);
        const ByteRange r = range_of(*view);
        for (const auto& [other, range] : others)
            if (overlaps(r, range)) fail(fn, name, cat("overlaps the memory of ", other, ", expected a separate buffer"));
        others.push_back({name, r});
    }
}

detail::SavedLayout layout_of(const detail::MonarchProblem& p) {
    return detail::SavedLayout{p.q_tokens, p.head_dim, p.value_dim, p.iterations};
}

// Bytes of saved state for a validated problem; ArgumentError when it does not fit in size_t.
std::size_t state_bytes(const std::string& fn, const detail::MonarchProblem& p) {
    if (p.q.device == Device::cuda) { // detail::CudaSavedLayout: 2-byte vectors, f32 scalars, padded regions
        const std::int64_t t = p.iterations;
        const std::int64_t row_bytes = 2 * ((2 * t - 1) * p.head_dim + p.value_dim) + 4 * (3 * t - 1);
        const std::int64_t bytes = checked_product({p.batch, p.heads, p.q_tokens, row_bytes}, fn, "q.shape");
        const std::int64_t padding = std::int64_t(4 * t) * std::int64_t(detail::CudaSavedLayout::kAlign);
        if (bytes > std::numeric_limits<std::int64_t>::max() - padding - std::int64_t(detail::kSavedHeaderBytes))
            fail(fn, "q.shape", "needs more saved-state bytes than fit in int64");
        return detail::kSavedHeaderBytes + detail::cuda_layout_of(p).total();
    }
    const detail::SavedLayout l = layout_of(p);
    const std::int64_t values = checked_product({p.batch, p.heads, l.per_head()}, fn, "q.shape");
    const std::int64_t bytes =
        checked_product({values, std::int64_t(detail::acc_bytes_for(p.q.dtype))}, fn, "q.shape");
    if (bytes > std::int64_t(std::numeric_limits<std::int64_t>::max() - detail::kSavedHeaderBytes))
        fail(fn, "q.shape", "needs more saved-state bytes than fit in int64");
    return std::size_t(bytes) + detail::kSavedHeaderBytes;
}

detail::SavedHeader header_of(const detail::MonarchProblem& p) {
    detail::SavedHeader h;
    h.magic = detail::kSavedMagic;
    h.acc_bytes = p.q.device == Device::cuda ? 2 : std::int32_t(detail::acc_bytes_for(p.q.dtype));
    h.dtype = std::int32_t(p.q.dtype);
    h.iterations = p.iterations;
    h.recompute_first_frame = p.recompute_first_frame ? 1 : 0;
    h.batch = p.batch, h.heads = p.heads, h.tokens = p.q_tokens, h.head_dim = p.head_dim, h.value_dim = p.value_dim;
    h.T = p.grid.T, h.H = p.grid.H, h.W = p.grid.W;
    h.cr_clamp = p.cr_clamp, h.scale = p.scale;
    h.sink_frames = p.sink_frames, h.window_radius = p.window_radius;
    return h;
}

// The saved state must come from a forward on the same shapes, dtype, grid and options.
void check_saved(const std::string& fn, const SavedState& saved, const detail::MonarchProblem& p) {
    if (saved.device() != p.q.device || saved.device_index() != p.q.device_index)
        fail(fn, "backward.saved", cat("is on ", to_string(saved.device()), ":", saved.device_index(), ", expected ",
                                       to_string(p.q.device), ":", p.q.device_index, " like q"));
    if (!saved.filled())
        fail(fn, "backward.saved", "is empty, expected the state filled by attention_training (or nullptr for lean mode)");
    detail::SavedHeader h;
    std::memcpy(&h, saved.header(), sizeof h);
    const detail::SavedHeader w = header_of(p);
    auto mismatch = [&](const char* what, auto have, auto want) {
        fail(fn, "backward.saved", cat("was filled by a forward with ", what, " ", have, ", expected ", want,
                                       " as in this call"));
    };
    if (h.dtype != w.dtype) mismatch("dtype", to_string(DType(h.dtype)), to_string(DType(w.dtype)));
    if (h.acc_bytes != w.acc_bytes) mismatch("value precision (bytes)", h.acc_bytes, w.acc_bytes);
    if (h.batch != w.batch) mismatch("batch", h.batch, w.batch);
    if (h.heads != w.heads) mismatch("heads", h.heads, w.heads);
    if (h.head_dim != w.head_dim) mismatch("head_dim", h.head_dim, w.head_dim);
    if (h.value_dim != w.value_dim) mismatch("value head_dim", h.value_dim, w.value_dim);
    if (h.T != w.T || h.H != w.H || h.W != w.W)
        mismatch("grid", cat(h.T, "x", h.H, "x", h.W), cat(w.T, "x", w.H, "x", w.W));
    if (h.iterations != w.iterations) mismatch("iterations", h.iterations, w.iterations);
    if (h.cr_clamp != w.cr_clamp) mismatch("cr_clamp", h.cr_clamp, w.cr_clamp);
    if (h.recompute_first_frame != w.recompute_first_frame)
        mismatch("recompute_first_frame", bool(h.recompute_first_frame), bool(w.recompute_first_frame));
    if (h.scale != w.scale) mismatch("softmax scale", h.scale, w.scale);
    if (h.sink_frames != w.sink_frames) mismatch("sink_frames", h.sink_frames, w.sink_frames);
    if (h.window_radius != w.window_radius)
        mismatch("window_radius", h.window_radius < 0 ? std::string("none") : cat(h.window_radius),
                 w.window_radius < 0 ? std::string("none") : cat(w.window_radius));
    const std::size_t need = state_bytes(fn, p);
    if (saved.bytes() < need)
        fail(fn, "backward.saved", cat("holds ", saved.bytes(), " bytes, expected ", need, " for these shapes"));
}

// The partial problem saved_state_bytes / saved_state_header / backward_workspace_bytes describe: the
// shapes and options of a forward, without its other tensors.
detail::MonarchProblem shape_problem(const std::string& fn, const TensorView& q, const TensorView& v,
                                     const VideoGrid& grid, const Options& options) {
    detail::check_fit_options(fn, options);
    detail::check_tensor_view(fn, "q", q);
    detail::check_tensor_view(fn, "v", v);
    if (grid.T < 1 || grid.H < 1 || grid.W < 1 || grid.tokens() != q.tokens())
        fail(fn, "grid", cat("is ", grid.T, "x", grid.H, "x", grid.W, ", expected T*H*W = q's tokens ", q.tokens()));
    detail::MonarchProblem p;
    p.q = q, p.v = v;
    p.batch = q.batch(), p.heads = q.heads(), p.q_tokens = p.kv_tokens = q.tokens(), p.head_dim = q.head_dim();
    p.value_dim = v.head_dim(), p.iterations = options.iterations;
    p.grid = grid;
    p.cr_clamp = options.cr_clamp;
    p.recompute_first_frame = options.recompute_first_frame;
    p.scale = detail::resolve_scale(fn, options.softmax_scale, q.head_dim());
    detail::check_exact_options(fn, options);
    p.sink_frames = options.sink_frames;
    p.window_radius = options.window_radius.value_or(-1);
    return p;
}

} // namespace

SavedState SavedState::over(void* data, std::size_t bytes, Device device, int device_index, const void* header) {
    const std::string fn = "vmonarch::SavedState::over";
    if (data == nullptr) fail(fn, "data", "is null, expected a pointer to the state's memory");
    if (reinterpret_cast<std::uintptr_t>(data) % 8 != 0) fail(fn, "data", "is not 8-byte aligned, expected 8-byte alignment");
    if (bytes < detail::kSavedHeaderBytes)
        fail(fn, "bytes", cat("is ", bytes, ", expected at least ", detail::kSavedHeaderBytes, " (see saved_state_bytes)"));
    if (device != Device::cpu && device != Device::cuda) fail(fn, "device", cat("has value ", int(device), ", expected cpu or cuda"));
    if (device == Device::cuda && reinterpret_cast<std::uintptr_t>(data) % 16 != 0)
        fail(fn, "data", "is not 16-byte aligned, expected 16-byte alignment for a CUDA state (the kernels' vector loads)");
    if (device_index < 0) fail(fn, "device_index", cat("is ", device_index, ", expected >= 0"));
    SavedState s;
    s.impl_->data = data;
    s.impl_->bytes = bytes;
    s.impl_->device = device;
    s.impl_->device_index = device_index;
    if (device == Device::cuda && header != nullptr) { // the host copy filled() and the backward's checks read
        std::memcpy(s.impl_->header.data(), header, kSavedStateHeaderBytes);
        s.impl_->header_known = true;
    }
    return s;
}

const void* SavedState::header() const {
    if (!impl_ || !impl_->data || impl_->bytes < detail::kSavedHeaderBytes) return nullptr;
    if (impl_->device == Device::cpu) return impl_->data;
    if (!impl_->header_known) { // a CUDA buffer wrapped without a header: read it once (synchronous copy)
        detail::cuda_copy_to_host(impl_->header.data(), impl_->data, kSavedStateHeaderBytes, impl_->device_index,
                                  "vmonarch::SavedState::header");
        impl_->header_known = true;
    }
    return impl_->header.data();
}

bool SavedState::filled() const {
    const void* h = header();
    if (h == nullptr) return false;
    std::uint64_t magic = 0;
    std::memcpy(&magic, h, sizeof magic);
    return magic == detail::kSavedMagic;
}
std::size_t SavedState::bytes() const { return impl_ ? impl_->bytes : 0; }
const void* SavedState::data() const { return impl_ ? impl_->data : nullptr; }
void* SavedState::data() { return impl_ ? impl_->data : nullptr; }
Device SavedState::device() const { return impl_ ? impl_->device : Device::cpu; }
int SavedState::device_index() const { return impl_ ? impl_->device_index : 0; }

std::size_t saved_state_bytes(const TensorView& q, const TensorView& v, const VideoGrid& grid, const Options& options) {
    const std::string fn = "vmonarch::saved_state_bytes";
    return state_bytes(fn, shape_problem(fn, q, v, grid, options));
}

std::array<unsigned char, kSavedStateHeaderBytes> saved_state_header(const TensorView& q, const TensorView& v,
                                                                     const VideoGrid& grid, const Options& options) {
    const std::string fn = "vmonarch::saved_state_header";
    const detail::SavedHeader h = header_of(shape_problem(fn, q, v, grid, options));
    std::array<unsigned char, kSavedStateHeaderBytes> out{};
    std::memcpy(out.data(), &h, sizeof h);
    return out;
}

std::size_t backward_workspace_bytes(const TensorView& q, const TensorView& v, const VideoGrid& grid,
                                     const Options& options, const BackwardOptions& backward,
                                     std::int64_t extra_tokens, bool text_queries) {
    const std::string fn = "vmonarch::backward_workspace_bytes";
    if (extra_tokens < 0) fail(fn, "extra_tokens", cat("is ", extra_tokens, ", expected >= 0"));
    if (text_queries && extra_tokens == 0)
        fail(fn, "text_queries", "is true with extra_tokens 0, expected the joint sequence's text tokens as extra_tokens");
    if (q.device != Device::cuda) return 0;
    detail::BackwardProblem p;
    static_cast<detail::MonarchProblem&>(p) = shape_problem(fn, q, v, grid, options);
    if (extra_tokens > 0) { // only the sizes matter: the extra keys' (and text queries') gradient accumulators
        checked_product({q.batch(), q.heads(), extra_tokens, std::max(q.head_dim(), v.head_dim()), 4}, fn, "extra_tokens");
        p.extra.present = true;
        p.extra.tokens = extra_tokens;
        p.text.present = text_queries;
        p.text.q.shape = {q.batch(), extra_tokens, q.heads(), q.head_dim()};
    }
    state_bytes(fn, p); // the size checks of the (lean mode's) state
    p.entropy_grad = backward.entropy_grad;
    p.deterministic = backward.deterministic;
    p.saved = backward.saved != nullptr ? backward.saved->data() : nullptr;
    return detail::cuda_backward_workspace_bytes(p);
}

void attention_training(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                        const LseView& lse, const VideoGrid& grid, const Options& options, SavedState& state,
                        const CudaContext* cuda, const ExtraKeys* extra_keys) {
    const std::string fn = "vmonarch::attention_training";
    detail::TrainingProblem p;
    static_cast<detail::MonarchProblem&>(p) = detail::check_monarch(fn, q, k, v, out, grid, options, &lse);
    detail::attach_exact_groups(fn, options, extra_keys, p);
    const std::size_t need = state_bytes(fn, p);
    const bool owned = state.data() == nullptr || state.impl_->owned != nullptr || state.impl_->device_owned != nullptr;
    if (owned) { // memory of its own, sized (again) for these shapes
        if (state.bytes() != need || state.device() != q.device || state.device_index() != q.device_index) {
            SavedState fresh;
            if (q.device == Device::cuda) {
                const int index = q.device_index;
                fresh.impl_->device_owned = std::shared_ptr<void>(
                    detail::cuda_allocate(need, index, fn + ": device memory for the saved state"),
                    [index](void* ptr) { detail::cuda_release(ptr, index); });
                fresh.impl_->data = fresh.impl_->device_owned.get();
            } else {
                try {
                    fresh.impl_->owned.reset(new std::uint64_t[(need + 7) / 8]);
                } catch (const std::bad_alloc&) {
                    throw OutOfMemoryError(cat(fn, ": could not allocate ", need, " bytes of host memory for the saved state"));
                }
                fresh.impl_->data = fresh.impl_->owned.get();
            }
            fresh.impl_->bytes = need;
            fresh.impl_->device = q.device, fresh.impl_->device_index = q.device_index;
            state = std::move(fresh);
        }
    } else {
        if (state.device() != q.device || state.device_index() != q.device_index)
            fail(fn, "state", cat("is on ", to_string(state.device()), ":", state.device_index(), ", expected ",
                                  to_string(q.device), ":", q.device_index, " like q"));
        if (state.bytes() < need)
            fail(fn, "state", cat("holds ", state.bytes(), " bytes, expected at least ", need,
                                  " (saved_state_bytes for these shapes)"));
    }
    const std::pair<const char*, const TensorView*> tensors[4] = {{"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}};
    const ByteRange s{reinterpret_cast<std::uintptr_t>(state.data()),
                      reinterpret_cast<std::uintptr_t>(state.data()) + need};
    for (auto [name, t] : tensors)
        if (overlaps(s, range_of(*t))) fail(fn, "state", cat("overlaps the memory of ", name, ", expected a separate buffer"));
    if (overlaps(s, range_of(lse))) fail(fn, "state", "overlaps the memory of lse, expected a separate buffer");
    if (reinterpret_cast<std::uintptr_t>(state.data()) % (q.device == Device::cuda ? 16 : 8) != 0)
        fail(fn, "state", q.device == Device::cuda ? "is not 16-byte aligned, expected 16-byte aligned device memory"
                                                   : "is not 8-byte aligned, expected 8-byte aligned memory");

    detail::SavedHeader header = header_of(p);
    p.saved = state.data();
    if (q.device == Device::cuda) {
        // The kernels write the regions and then the header (magic included) on the stream; the host copy
        // is what filled() and the backward's checks read.
        state.impl_->header_known = false;
        p.header = &header;
        detail::cuda_monarch_training(p, cuda);
        std::memcpy(state.impl_->header.data(), &header, sizeof header);
        state.impl_->header_known = true;
        return;
    }
    header.magic = 0; // marked filled only once the forward finished
    std::memcpy(state.data(), &header, sizeof header);
    p.layout = layout_of(p);
    detail::cpu_monarch_training(p);
    header.magic = detail::kSavedMagic;
    std::memcpy(state.data(), &header, sizeof header);
}

void attention_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                        const LseView& lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                        const TensorView& dv, const VideoGrid& grid, const Options& options, const LseView* dlse,
                        const BackwardOptions& backward, const CudaContext* cuda, const ExtraKeys* extra_keys,
                        const ExtraKeyGrads* extra_grads) {
    const std::string fn = "vmonarch::attention_backward";
    detail::BackwardProblem p;
    static_cast<detail::MonarchProblem&>(p) = detail::check_monarch(fn, q, k, v, out, grid, options, &lse);
    detail::attach_exact_groups(fn, options, extra_keys, p);
    // The gradients are written: each must be free of self-overlap and apart from everything else.
    std::vector<NamedRange> others = check_gradient_views(fn, q, k, v, out, lse, dout, dq, dk, dv, dlse);
    std::vector<std::pair<std::string, const TensorView*>> written = {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}};
    if (p.extra.present) { // the extra keys' gradients (spec §3b), shaped like the extra keys
        if (!extra_grads)
            fail(fn, "extra_grads", cat("is null, expected the gradient views dk, dv of the ", p.extra.tokens,
                                        " extra keys"));
        const std::pair<const char*, const TensorView*> eg[2] = {{"extra_grads.dk", &extra_grads->dk},
                                                                 {"extra_grads.dv", &extra_grads->dv}};
        const TensorView* elike[2] = {&p.extra.k, &p.extra.v};
        const char* elike_name[2] = {"extra_keys.k", "extra_keys.v"};
        for (int g = 0; g < 2; ++g) {
            detail::check_tensor_view(fn, eg[g].first, *eg[g].second);
            detail::check_same_kind(fn, eg[g].first, *eg[g].second, q, "q");
            check_shape(fn, eg[g].first, *eg[g].second, elike[g]->shape, elike_name[g]);
            written.push_back({eg[g].first, eg[g].second});
        }
        others.push_back({"extra_keys.k", range_of(p.extra.k)});
        others.push_back({"extra_keys.v", range_of(p.extra.v)});
        p.dk_extra = extra_grads->dk, p.dv_extra = extra_grads->dv;
    }
    check_written_apart(fn, written, std::move(others));
    if (backward.saved) {
        check_saved(fn, *backward.saved, p);
        const auto base = reinterpret_cast<std::uintptr_t>(backward.saved->data());
        const ByteRange state{base, base + state_bytes(fn, p)};
        for (std::size_t g = 0; g < 3; ++g) // dq, dk, dv
            if (overlaps(state, range_of(*written[g].second)))
                fail(fn, "backward.saved", cat("overlaps the memory of ", written[g].first, ", expected a separate buffer"));
    }

    p.dout = dout, p.dq = dq, p.dk = dk, p.dv = dv, p.dlse = dlse;
    p.entropy_grad = backward.entropy_grad;
    p.deterministic = backward.deterministic;
    p.saved = backward.saved ? backward.saved->data() : nullptr;
    p.layout = layout_of(p);
    if (q.device == Device::cuda) {
        detail::cuda_monarch_backward(p, cuda);
        return;
    }
    detail::cpu_monarch_backward(p);
}

void joint_attention_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                              const LseView& lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                              const TensorView& dv, const VideoGrid& grid, std::int64_t text_tokens,
                              TextPosition text_position, const std::int64_t* text_lens, const Options& options,
                              const LseView* dlse, const BackwardOptions& backward, const CudaContext* cuda) {
    const std::string fn = "vmonarch::joint_attention_backward";
    if (text_position != TextPosition::first && text_position != TextPosition::last)
        fail(fn, "text_position", cat("has value ", int(text_position), ", expected TextPosition::first or last"));
    const std::pair<const char*, std::int64_t> dims[3] = {{"grid.T", grid.T}, {"grid.H", grid.H}, {"grid.W", grid.W}};
    for (auto [name, value] : dims)
        if (value <= 0) fail(fn, name, cat("is ", value, ", expected >= 1"));
    const std::int64_t N = grid.tokens(), L = text_tokens;
    if (L < 0) fail(fn, "text_tokens", cat("is ", L, ", expected >= 0"));
    detail::check_exact_options(fn, options);
    // Whole-sequence checks first, so that errors name the joint arguments.
    detail::AttentionProblem whole;
    detail::check_attention(fn, q, k, v, out, &lse, whole);
    if (q.tokens() != k.tokens())
        fail(fn, "k.shape[1]", cat("(tokens) is ", k.tokens(), ", expected ", q.tokens(), " (q's tokens)"));
    if (q.tokens() - L != N)
        fail(fn, "q.shape[1]", cat("(tokens) is ", q.tokens(), ", expected N + L = ", N, " + ", L, " (grid ", grid.T,
                                   "x", grid.H, "x", grid.W, " video tokens and text_tokens)"));
    std::vector<std::int64_t> lens(std::size_t(whole.batch), L);
    for (std::int64_t b = 0; text_lens && b < whole.batch; ++b) {
        if (text_lens[b] < 0 || text_lens[b] > L)
            fail(fn, cat("text_lens[", b, "]"), cat("is ", text_lens[b], ", expected 0..", L, " (text_tokens)"));
        lens[std::size_t(b)] = text_lens[b];
    }
    check_written_apart(fn, {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}},
                        check_gradient_views(fn, q, k, v, out, lse, dout, dq, dk, dv, dlse));
    if (backward.saved)
        fail(fn, "backward.saved", "is set, expected nullptr (joint_attention_backward reruns the forward: lean mode only)");

    // The video part (spec §3c): attention() with the text keys as extra keys; then the text queries.
    using detail::lse_slice;
    using detail::token_slice;
    const std::int64_t video0 = text_position == TextPosition::first ? L : 0;
    const std::int64_t text0 = text_position == TextPosition::first ? 0 : N;
    const ExtraKeys text_keys{token_slice(k, text0, L), token_slice(v, text0, L), lens.data()};
    const LseView lse_video = lse_slice(lse, video0, N);
    LseView dlse_video, dlse_text;
    if (dlse) dlse_video = lse_slice(*dlse, video0, N), dlse_text = lse_slice(*dlse, text0, L);
    detail::BackwardProblem p;
    static_cast<detail::MonarchProblem&>(p) =
        detail::check_monarch(fn, token_slice(q, video0, N), token_slice(k, video0, N), token_slice(v, video0, N),
                              token_slice(out, video0, N), grid, options, &lse_video);
    detail::attach_exact_groups(fn, options, L > 0 ? &text_keys : nullptr, p);
    p.dout = token_slice(dout, video0, N), p.dq = token_slice(dq, video0, N);
    p.dk = token_slice(dk, video0, N), p.dv = token_slice(dv, video0, N);
    p.dlse = dlse ? &dlse_video : nullptr;
    if (L > 0) {
        p.dk_extra = token_slice(dk, text0, L), p.dv_extra = token_slice(dv, text0, L);
        p.text.present = true;
        p.text.q = token_slice(q, text0, L), p.text.out = token_slice(out, text0, L);
        p.text.dout = token_slice(dout, text0, L), p.text.dq = token_slice(dq, text0, L);
        p.text.lse = lse_slice(lse, text0, L);
        p.text.dlse = dlse ? &dlse_text : nullptr;
    }
    p.entropy_grad = backward.entropy_grad;
    p.deterministic = backward.deterministic;
    p.layout = layout_of(p);
    if (q.device == Device::cuda) {
        detail::cuda_monarch_backward(p, cuda);
        return;
    }
    detail::cpu_monarch_backward(p);
}

double backward_flops(const VideoGrid& grid, std::int64_t head_dim, std::int64_t heads, std::int64_t batch,
                      const Options& options) {
    // spec §7, per head: (10t + 4)·N·b·d + 10t·N·m·d + 10·b·N·d (the last with the recompute on).
    const double n = double(grid.tokens()), b = double(grid.frame_tokens()), m = double(grid.T);
    const double d = double(head_dim), t = double(options.iterations), count = double(heads) * double(batch);
    const double recompute = options.recompute_first_frame ? 10 * b * n * d : 0.0;
    return ((10 * t + 4) * n * b * d + 10 * t * n * m * d + recompute) * count;
}

} // namespace vmonarch
