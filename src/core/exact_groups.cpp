// Exact key groups merged by log-sum-exp (spec §3b) and joint text+video attention (spec §3c): argument checks
// of the sink/window options and the extra keys, and the joint entry point, which splits one MMDiT sequence
// into its video and text parts (views, no copies) and runs attention() on the video queries and exact
// attention on the text queries.
#include <sstream>

#include "core/argument_text.hpp"
#include "core/backend.hpp"

namespace vmonarch {

namespace {

using detail::cat;
using detail::fail;

// lens[b] in 0..L for every batch element (nullptr: all L valid).
std::vector<std::int64_t> checked_lens(std::string_view fn, const std::string& name, const std::int64_t* lens,
                                       std::int64_t batch, std::int64_t L, const std::string& what_l) {
    std::vector<std::int64_t> out(std::size_t(batch), L);
    if (!lens) return out;
    for (std::int64_t b = 0; b < batch; ++b) {
        if (lens[b] < 0 || lens[b] > L)
            fail(fn, cat(name, "[", b, "]"), cat("is ", lens[b], ", expected 0..", L, " (", what_l, ")"));
        out[std::size_t(b)] = lens[b];
    }
    return out;
}

// Extra keys against the validated video problem p: shapes, dtype, device, strides, lens, aliasing with out.
detail::ExtraKeysProblem check_extra_keys(std::string_view fn, const ExtraKeys& e, const detail::MonarchProblem& p) {
    const TensorView& k = e.k;
    const TensorView& v = e.v;
    if (k.shape[1] < 0) fail(fn, "extra_keys.k.shape[1]", cat("(tokens) is ", k.shape[1], ", expected >= 0"));
    if (v.shape[1] != k.shape[1])
        fail(fn, "extra_keys.v.shape[1]", cat("(tokens) is ", v.shape[1], ", expected ", k.shape[1], " (extra_keys.k's tokens)"));
    const std::int64_t L = k.shape[1];
    detail::check_same_kind(fn, "extra_keys.k", k, p.q, "q");
    detail::check_same_kind(fn, "extra_keys.v", v, p.q, "q");
    const std::pair<const char*, const TensorView*> views[2] = {{"extra_keys.k", &k}, {"extra_keys.v", &v}};
    const std::pair<std::int64_t, std::int64_t> want[2] = {{p.head_dim, p.head_dim}, {p.value_dim, p.value_dim}};
    for (int a = 0; a < 2; ++a) {
        const auto [name, t] = views[a];
        if (t->shape[0] != p.batch)
            fail(fn, cat(name, ".shape[0]"), cat("(batch) is ", t->shape[0], ", expected ", p.batch, " (q's batch)"));
        if (t->shape[2] != p.heads)
            fail(fn, cat(name, ".shape[2]"), cat("(heads) is ", t->shape[2], ", expected ", p.heads, " (q's heads)"));
        if (t->shape[3] != want[a].first)
            fail(fn, cat(name, ".shape[3]"), cat("(head_dim) is ", t->shape[3], ", expected ", want[a].first,
                                                 a == 0 ? " (q's head_dim)" : " (v's head_dim)"));
    }
    detail::ExtraKeysProblem x;
    x.tokens = L;
    x.lens = checked_lens(fn, "extra_keys.lens", e.lens, p.batch, L, "the extra keys' tokens L");
    if (L == 0) return x; // nothing to attend; the views' memory is never touched
    detail::check_tensor_view(fn, "extra_keys.k", k);
    detail::check_tensor_view(fn, "extra_keys.v", v);
    if (detail::views_overlap(fn, "out", p.out, "extra_keys.k", k))
        fail(fn, "out", "overlaps the memory of extra_keys.k, expected a separate output buffer");
    if (detail::views_overlap(fn, "out", p.out, "extra_keys.v", v))
        fail(fn, "out", "overlaps the memory of extra_keys.v, expected a separate output buffer");
    x.present = true;
    x.k = k;
    x.v = v;
    return x;
}

} // namespace

namespace detail {

TensorView token_slice(const TensorView& t, std::int64_t begin, std::int64_t count) {
    TensorView s = t;
    if (count > 0) s.data = static_cast<char*>(t.data) + begin * t.strides[1] * std::int64_t(dtype_size(t.dtype));
    s.shape[1] = count;
    return s;
}

LseView lse_slice(const LseView& l, std::int64_t begin, std::int64_t count) {
    LseView s = l;
    const std::int64_t elem = l.dtype == DType::f64 ? 8 : 4;
    if (count > 0) s.data = static_cast<char*>(l.data) + begin * l.strides[2] * elem;
    s.shape[2] = count;
    return s;
}

void check_exact_options(std::string_view fn, const Options& options) {
    if (options.sink_frames < 0)
        fail(fn, "options.sink_frames", cat("is ", options.sink_frames, ", expected >= 0 (0: no sink frames)"));
    if (options.window_radius && *options.window_radius < 0)
        fail(fn, "options.window_radius", cat("is ", *options.window_radius, ", expected >= 0 or none (no window)"));
}

void check_no_exact_groups(std::string_view fn, const Options& options) {
    if (options.sink_frames != 0)
        fail(fn, "options.sink_frames", cat("is ", options.sink_frames, ", expected 0 (the explicit construction has no "
                                            "exact key groups)"));
    if (options.window_radius)
        fail(fn, "options.window_radius", cat("is ", *options.window_radius, ", expected none (the explicit construction "
                                              "has no exact key groups)"));
}

void attach_exact_groups(std::string_view fn, const Options& options, const ExtraKeys* extra, MonarchProblem& p) {
    check_exact_options(fn, options);
    p.sink_frames = options.sink_frames;
    p.window_radius = options.window_radius ? *options.window_radius : -1;
    if (extra) p.extra = check_extra_keys(fn, *extra, p);
}

} // namespace detail

using detail::lse_slice;
using detail::token_slice;

void joint_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                     const VideoGrid& grid, std::int64_t text_tokens, TextPosition text_position,
                     const std::int64_t* text_lens, const Options& options, const LseView* lse,
                     const CudaContext* cuda) {
    const std::string fn = "vmonarch::joint_attention";
    if (text_position != TextPosition::first && text_position != TextPosition::last)
        fail(fn, "text_position", cat("has value ", int(text_position), ", expected TextPosition::first or last"));
    const std::pair<const char*, std::int64_t> dims[3] = {{"grid.T", grid.T}, {"grid.H", grid.H}, {"grid.W", grid.W}};
    for (auto [name, value] : dims)
        if (value <= 0) fail(fn, name, cat("is ", value, ", expected >= 1"));
    const std::int64_t N = grid.tokens();
    if (text_tokens < 0) fail(fn, "text_tokens", cat("is ", text_tokens, ", expected >= 0"));
    detail::check_exact_options(fn, options);
    // Whole-sequence checks (shapes, dtypes, devices, aliasing) first, so errors name the joint arguments.
    detail::AttentionProblem whole;
    detail::check_attention(fn, q, k, v, out, lse, whole);
    if (q.tokens() != k.tokens())
        fail(fn, "k.shape[1]", cat("(tokens) is ", k.tokens(), ", expected ", q.tokens(), " (q's tokens)"));
    if (q.tokens() - text_tokens != N)
        fail(fn, "q.shape[1]", cat("(tokens) is ", q.tokens(), ", expected N + L = ", N, " + ", text_tokens,
                                   " (grid ", grid.T, "x", grid.H, "x", grid.W, " video tokens and text_tokens)"));
    const std::vector<std::int64_t> lens =
        checked_lens(fn, "text_lens", text_lens, whole.batch, text_tokens, "text_tokens");

    const std::int64_t L = text_tokens;
    const std::int64_t video0 = text_position == TextPosition::first ? L : 0;
    const std::int64_t text0 = text_position == TextPosition::first ? 0 : N;
    ExtraKeys text_keys{token_slice(k, text0, L), token_slice(v, text0, L), lens.data()};
    const TensorView qv = token_slice(q, video0, N), kv = token_slice(k, video0, N), vv = token_slice(v, video0, N);
    LseView lse_video, lse_text;
    if (lse) lse_video = lse_slice(*lse, video0, N), lse_text = lse_slice(*lse, text0, L);

    // Text queries: exact attention over every video key and the valid text keys (spec §3c). On CUDA they run
    // with the video part (beside it when they need no workspace); their scale is the video part's.
    detail::TextQueryProblem t;
    static_cast<detail::AttentionProblem&>(t) = whole;
    t.q = token_slice(q, text0, L);
    t.k = kv;
    t.v = vv;
    t.out = token_slice(out, text0, L);
    t.lse = lse ? &lse_text : nullptr;
    t.q_tokens = L;
    t.kv_tokens = N;
    t.extra.present = true;
    t.extra.k = text_keys.k;
    t.extra.v = text_keys.v;
    t.extra.tokens = L;
    t.extra.lens = lens;
    const bool on_cuda = q.device == Device::cuda;
    detail::monarch_attention(qv, kv, vv, token_slice(out, video0, N), grid, options, lse ? &lse_video : nullptr, cuda,
                              L > 0 ? &text_keys : nullptr, on_cuda && L > 0 ? &t : nullptr);
    if (L == 0 || on_cuda) return;
    t.scale = detail::resolve_scale(fn, options.softmax_scale, q.head_dim());
    detail::cpu_text_query_attention(t);
}

} // namespace vmonarch
