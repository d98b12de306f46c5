// Forward FLOPs of VMonarch with exact key groups and of dense attention (spec §4).
#include "core/backend.hpp"
#include "core/exact_frames.hpp"

namespace vmonarch {

namespace detail {

FlopCount exact_group_flops(const VideoGrid& grid, std::int64_t head_dim, std::int64_t heads, std::int64_t batch,
                            const Options& options, std::int64_t extra_tokens) {
    // spec §4, per head (b = HW, m = T): R-steps (4t+2)·b²·d per fitted key frame, L-steps 4t·b·d per fitted
    // (query frame, key frame) pair, exact groups 4·b·(|E(i)|·b + L)·d per query frame (frame 0 skipped with
    // the recompute), recompute 4·b·(N + L)·d, dense 4·N·(N + L)·d. Without exact groups these reduce to
    // (4t+2)·N·b·d, 4t·N·m·d and 4·b·N·d.
    const std::int64_t T = grid.T;
    // In double: the counts may exceed int64 even when N does not.
    const double n = double(grid.T) * double(grid.H) * double(grid.W), b = double(grid.H) * double(grid.W);
    const double d = double(head_dim);
    const double t = double(options.iterations), count = double(heads) * double(batch), L = double(extra_tokens);
    const ExactFrames exact(T, options.sink_frames, options.window_radius.value_or(-1));
    double fitted = 0, pairs = 0, exact_keys = 0;
    for (std::int64_t k = 0; k < T; ++k) fitted += exact.fitted(k) ? 1 : 0;
    for (std::int64_t i = 0; i < T; ++i) {
        const double e = double(exact.count(i));
        pairs += double(T) - e;
        if (i > 0 || !options.recompute_first_frame) exact_keys += e * b + L;
    }
    FlopCount f;
    f.r_steps = (4 * t + 2) * fitted * b * b * d * count;
    f.l_steps = 4 * t * b * pairs * d * count;
    f.exact = 4 * exact_keys * b * d * count;
    f.recompute = options.recompute_first_frame ? 4 * b * (n + L) * d * count : 0.0;
    f.vmonarch = f.r_steps + f.l_steps + f.exact + f.recompute;
    f.dense = 4 * n * (n + L) * d * count;
    return f;
}

} // namespace detail

FlopCount joint_flops(const VideoGrid& grid, std::int64_t text_tokens, std::int64_t head_dim, std::int64_t heads,
                      std::int64_t batch, const Options& options) {
    FlopCount f = flops(grid, head_dim, heads, batch, options, text_tokens); // checks the arguments
    // spec §4: text queries attend every key exactly, 4·L·(N + L)·d per head.
    const double n = double(grid.T) * double(grid.H) * double(grid.W), L = double(text_tokens), d = double(head_dim);
    const double count = double(heads) * double(batch);
    f.text_queries = 4 * L * (n + L) * d * count;
    f.vmonarch += f.text_queries;
    f.dense = 4 * (n + L) * (n + L) * d * count;
    return f;
}

} // namespace vmonarch
