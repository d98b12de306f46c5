// The CPU implementation on video-like inputs (include/vmonarch/extras/video_data.hpp): fast path against the
// explicit fp64 construction, low precision against fp64, and how close VMonarch stays to dense.
#include <gtest/gtest.h>

#include <cmath>

#include "support/test_tensors.hpp"
#include "vmonarch/inspect.hpp"
#include "vmonarch/extras/video_data.hpp"

using namespace vmtest;
using vmonarch::Options;
using vmonarch::VideoGrid;

namespace {

struct VideoProblem {
    VideoGrid grid;
    std::int64_t B, H, d;
    HostBuffer q, k, v;
    std::vector<vmonarch::HeadKind> kinds;
};

// The generator writes BHSD floats; HostBuffer takes logical [b][n][h][c] order.
std::vector<double> to_logical(const std::vector<float>& bhsd, std::int64_t B, std::int64_t H, std::int64_t N,
                               std::int64_t D) {
    std::vector<double> out(bhsd.size());
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t n = 0; n < N; ++n)
                for (std::int64_t c = 0; c < D; ++c)
                    out[std::size_t(((b * N + n) * H + h) * D + c)] = bhsd[std::size_t(((b * H + h) * N + n) * D + c)];
    return out;
}

VideoProblem make_video(VideoGrid grid, std::int64_t B, std::int64_t H, std::int64_t d, DType dtype, Layout layout,
                        std::uint64_t seed) {
    vmonarch::VideoDataOptions o;
    o.grid = grid, o.batch = B, o.heads = H, o.head_dim = d, o.seed = seed;
    const auto in = vmonarch::make_video_attention_inputs(o);
    const std::int64_t N = grid.tokens();
    return {grid, B, H, d, HostBuffer(to_logical(in.q, B, H, N, d), dtype, layout, B, N, H, d),
            HostBuffer(to_logical(in.k, B, H, N, d), dtype, layout, B, N, H, d),
            HostBuffer(to_logical(in.v, B, H, N, d), dtype, layout, B, N, H, d), in.head_kinds};
}

std::vector<double> monarch(VideoProblem& p, const Options& o, DType out_dtype) {
    auto out = HostBuffer::empty(out_dtype, Layout::bshd, p.B, p.grid.tokens(), p.H, p.d);
    vmonarch::attention(p.q.view, p.k.view, p.v.view, out.view, p.grid, o);
    return out.read();
}

std::vector<double> dense(VideoProblem& p) {
    auto out = HostBuffer::empty(DType::f64, Layout::bshd, p.B, p.grid.tokens(), p.H, p.d);
    vmonarch::dense_attention(p.q.view, p.k.view, p.v.view, out.view);
    return out.read();
}

std::vector<double> head_slice(const std::vector<double>& x, const VideoProblem& p, std::int64_t b, std::int64_t h,
                               std::int64_t first_token = 0) {
    std::vector<double> s;
    for (std::int64_t n = first_token; n < p.grid.tokens(); ++n)
        for (std::int64_t c = 0; c < p.d; ++c) s.push_back(x[std::size_t(((b * p.grid.tokens() + n) * p.H + h) * p.d + c)]);
    return s;
}

} // namespace

TEST(MonarchVideo, FastPathMatchesExplicitConstruction) {
    auto p = make_video({5, 3, 7}, 1, 4, 64, DType::f64, Layout::bhsd, 3);
    const std::int64_t N = p.grid.tokens();
    std::vector<std::int64_t> all(static_cast<std::size_t>(N));
    for (std::int64_t n = 0; n < N; ++n) all[std::size_t(n)] = n;
    for (int t : {1, 2, 3}) {
        Options o;
        o.iterations = t;
        const auto fast = monarch(p, o, DType::f64);
        for (std::int64_t h = 0; h < p.H; ++h) {
            const auto A = vmonarch::monarch_attention_rows(p.q.view, p.k.view, p.grid, o, 0, h, all);
            std::vector<double> want(std::size_t(N * p.d), 0.0);
            for (std::int64_t n = 0; n < N; ++n)
                for (std::int64_t m = 0; m < N; ++m)
                    for (std::int64_t c = 0; c < p.d; ++c)
                        want[std::size_t(n * p.d + c)] +=
                            A[std::size_t(n * N + m)] * p.v.values[std::size_t((m * p.H + h) * p.d + c)];
            EXPECT_LT(rel_l2(head_slice(fast, p, 0, h), want), 1e-12) << "t=" << t << " head " << h;
        }
    }
}

TEST(MonarchVideo, LowPrecisionMatchesFp64AtAwkwardShapes) {
    struct Case {
        VideoGrid grid;
        std::int64_t B, H, d;
        DType dtype;
        double tol;
    };
    const Case cases[] = {{{3, 7, 9}, 2, 4, 128, DType::bf16, 1e-2},  // HW = 63
                          {{1, 5, 13}, 1, 4, 64, DType::f16, 3e-3},   // T = 1, HW = 65
                          {{7, 1, 7}, 1, 4, 64, DType::f32, 1e-5}};   // T odd, HW prime
    for (const auto& c : cases) {
        auto low = make_video(c.grid, c.B, c.H, c.d, c.dtype, Layout::bshd, 9);
        const std::int64_t N = c.grid.tokens();
        VideoProblem ref{c.grid, c.B, c.H, c.d, HostBuffer(low.q.values, DType::f64, Layout::bhsd, c.B, N, c.H, c.d),
                         HostBuffer(low.k.values, DType::f64, Layout::bhsd, c.B, N, c.H, c.d),
                         HostBuffer(low.v.values, DType::f64, Layout::bhsd, c.B, N, c.H, c.d), low.kinds};
        const auto got = monarch(low, Options{}, c.dtype);
        const auto want = monarch(ref, Options{}, DType::f64);
        EXPECT_TRUE(all_finite(got));
        EXPECT_LT(rel_l2(got, want), c.tol) << vmonarch::to_string(c.dtype) << " T=" << c.grid.T;
    }
}

TEST(MonarchVideo, StaysCloseToDenseAndRecomputeFixesTheSinkFrame) {
    auto p = make_video({6, 6, 8}, 1, 4, 64, DType::f64, Layout::bshd, 12);
    const auto d = dense(p);
    Options no_recompute;
    no_recompute.recompute_first_frame = false;
    const auto with = monarch(p, Options{}, DType::f64);
    const auto without = monarch(p, no_recompute, DType::f64);
    const std::int64_t HW = p.grid.frame_tokens();
    for (std::int64_t h = 0; h < p.H; ++h) {
        const double err = rel_l2(head_slice(with, p, 0, h), head_slice(d, p, 0, h));
        // Structured attention is an approximation, but on video-like heads it keeps most of the signal.
        EXPECT_LT(err, 0.5) << "head " << h << " (" << vmonarch::to_string(p.kinds[std::size_t(h)]) << ")";
        // Later frames do not depend on the recompute; frame 0 becomes exact.
        EXPECT_EQ(head_slice(with, p, 0, h, HW), head_slice(without, p, 0, h, HW));
        std::vector<double> f0_with, f0_dense;
        for (std::int64_t c = 0; c < HW * p.d; ++c) {
            f0_with.push_back(head_slice(with, p, 0, h)[std::size_t(c)]);
            f0_dense.push_back(head_slice(d, p, 0, h)[std::size_t(c)]);
        }
        EXPECT_LT(rel_l2(f0_with, f0_dense), 1e-12);
    }
}
