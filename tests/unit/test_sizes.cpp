// Size arithmetic: every product of user-given sizes is checked (checked_product), so negative sizes and
// overflowing grids, shapes, strides and FLOP-count arguments are ArgumentErrors naming the argument,
// never wrapped counts.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "support/test_tensors.hpp"
#include "vmonarch/inspect.hpp"
#include "vmonarch/vmonarch.hpp"

using namespace vmtest;
using vmonarch::ArgumentError;
using vmonarch::Device;
using vmonarch::Options;
using vmonarch::VideoGrid;

namespace {

constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t k2to31 = std::int64_t(1) << 31;

// Expects ArgumentError for `argument` whose message contains every fragment.
void expect_error(const std::function<void()>& call, const std::string& argument,
                  const std::vector<std::string>& fragments) {
    try {
        call();
        ADD_FAILURE() << "no error for " << argument;
    } catch (const ArgumentError& e) {
        EXPECT_EQ(e.argument(), argument) << e.what();
        for (const auto& f : fragments)
            EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what() << " lacks " << f;
    }
}

// Grids whose T·H·W does not fit in int64: one far beyond, and ones whose wrapped product (mod 2^64) is a
// small positive token count, 12 = 4·3 and 2^31·2^31·4 = 2^64 wraps to 0.
const std::vector<VideoGrid> kOverflowingGrids = {
    {k2to31, k2to31, 4},                    // 2^64
    {4, (std::int64_t(1) << 62) + 1, 3},     // 3·2^64 + 12: wraps to 12
    {kMax, 2, 1},                           // 2^64 − 2
    {3, 3, (kMax / 9) + 1},                 // just past int64
};

// Small real tensors (12 tokens, 1 head, d = 8) to hand to attention with a grid of the wrong size.
struct SmallProblem {
    HostBuffer q = HostBuffer(random_normal(12 * 8, 1), DType::f32, Layout::bshd, 1, 12, 1, 8);
    HostBuffer k = HostBuffer(random_normal(12 * 8, 2), DType::f32, Layout::bshd, 1, 12, 1, 8);
    HostBuffer v = HostBuffer(random_normal(12 * 8, 3), DType::f32, Layout::bshd, 1, 12, 1, 8);
    HostBuffer out = HostBuffer::empty(DType::f32, Layout::bshd, 1, 12, 1, 8);
};

} // namespace

// ---- checked_product and VideoGrid ------------------------------------------------------------------

TEST(CheckedProduct, ExactProductsAndZero) {
    EXPECT_EQ(vmonarch::checked_product({}, "f", "x"), 1);
    EXPECT_EQ(vmonarch::checked_product({3, 5, 7}, "f", "x"), 105);
    EXPECT_EQ(vmonarch::checked_product({k2to31, k2to31}, "f", "x"), std::int64_t(1) << 62);
    expect_error([] { vmonarch::checked_product({k2to31, k2to31, 2}, "f", "x"); }, "x", {"overflows"}); // 2^63
    EXPECT_EQ(vmonarch::checked_product({kMax, 1}, "f", "x"), kMax);
    EXPECT_EQ(vmonarch::checked_product({kMax, 0}, "f", "x"), 0);
    EXPECT_EQ(vmonarch::checked_product({0, kMax, kMax}, "f", "x"), 0); // zero first: no overflow either
}

TEST(CheckedProduct, OverflowAndNegativeNameTheArgument) {
    expect_error([] { vmonarch::checked_product({k2to31, k2to31, 4}, "my_fn", "grid"); }, "grid",
                 {"my_fn", "'grid'", "2147483648*2147483648*4", "overflows int64"});
    expect_error([] { vmonarch::checked_product({4, -3}, "my_fn", "size"); }, "size", {"my_fn", "'size'", "-3", ">= 0"});
    expect_error([] { vmonarch::checked_product({kMax, 2}, "f", "n"); }, "n", {"overflows"});
}

TEST(VideoGridSizes, TokensAreCheckedNeverWrapped) {
    EXPECT_EQ((VideoGrid{16, 28, 52}.tokens()), 23296);
    EXPECT_EQ((VideoGrid{16, 28, 52}.frame_tokens()), 1456);
    for (const VideoGrid& g : kOverflowingGrids) expect_error([&] { (void)g.tokens(); }, "grid", {"overflows int64"});
    expect_error([] { (void)VideoGrid{2, -3, 2}.tokens(); }, "grid", {"-3", ">= 0"});
    expect_error([] { (void)VideoGrid{1, kMax, 2}.frame_tokens(); }, "grid", {"overflows int64"});
}

// ---- attention, dense attention and workspace_bytes ---------------------------------------------------

TEST(Sizes, AttentionRejectsOverflowingGridsNamingThem) {
    SmallProblem p;
    for (const VideoGrid& g : kOverflowingGrids)
        expect_error([&] { vmonarch::attention(p.q.view, p.k.view, p.v.view, p.out.view, g); }, "grid",
                     {"vmonarch::attention", "overflows int64"});
    expect_error([&] { vmonarch::attention(p.q.view, p.k.view, p.v.view, p.out.view, {2, 3, -2}); }, "grid.W",
                 {"-2", ">= 1"});
}

TEST(Sizes, ViewFactoriesCheckTheirStrideProducts) {
    float x = 0;
    // bshd's batch stride is tokens·heads·head_dim, bhsd's is heads·tokens·head_dim: 2^31·2^31·4 wraps to 0.
    expect_error([&] { vmonarch::TensorView::bshd(&x, DType::f32, Device::cpu, 1, k2to31, k2to31, 4); }, "shape",
                 {"vmonarch::TensorView::bshd", "overflows int64"});
    expect_error([&] { vmonarch::TensorView::bhsd(&x, DType::f32, Device::cpu, 1, k2to31, k2to31, 4); }, "shape",
                 {"vmonarch::TensorView::bhsd", "overflows int64"});
    // The element count overflows even where every stride fits.
    expect_error([&] { vmonarch::TensorView::bshd(&x, DType::f32, Device::cpu, kMax, 2, 1, 1); }, "shape",
                 {"overflows int64"});
    expect_error([&] { vmonarch::LseView::contiguous(&x, DType::f32, Device::cpu, 1, k2to31, std::int64_t(1) << 33); },
                 "shape", {"vmonarch::LseView::contiguous", "overflows int64"});
    expect_error([&] { vmonarch::TensorView::bshd(&x, DType::f32, Device::cpu, 1, -4, 2, 8); }, "shape",
                 {"-4", ">= 0"});
    expect_error([&] { vmonarch::LseView::contiguous(&x, DType::f32, Device::cpu, 1, 2, -1); }, "shape", {"-1"});
    // In range: the usual strides.
    const auto v = vmonarch::TensorView::bhsd(&x, DType::f32, Device::cpu, 2, 3, 5, 8);
    EXPECT_EQ(v.strides, (std::array<std::int64_t, 4>{120, 8, 40, 1}));
}

TEST(Sizes, ShapesWhoseElementCountOverflowsAreRejected) {
    SmallProblem p;
    auto q = p.q.view;
    q.shape = {k2to31, k2to31, 4, 8}; // 2^67 elements
    expect_error([&] { vmonarch::dense_attention(q, p.k.view, p.v.view, p.out.view); }, "q.shape",
                 {"vmonarch::dense_attention", "overflows int64"});
}

TEST(Sizes, StridesThatReachBeyondTheAddressSpaceAreRejected) {
    // Sizes are fine, but (shape − 1)·stride of the last element overflows int64 (which the aliasing check
    // used to wrap), or its byte count does.
    SmallProblem p;
    auto q = p.q.view;
    q.shape[0] = 4;
    q.strides[0] = std::int64_t(1) << 62; // 3·2^62 overflows
    auto k = p.k.view, v = p.v.view, out = p.out.view;
    k.shape[0] = v.shape[0] = out.shape[0] = 4;
    expect_error([&] { vmonarch::dense_attention(q, k, v, out); }, "q.strides", {"address space"});
    auto o = p.out.view;
    o.strides[1] = (std::int64_t(1) << 61) + 8; // 11·(2^61 + 8) overflows
    expect_error([&] { vmonarch::dense_attention(p.q.view, p.k.view, p.v.view, o); }, "out.strides",
                 {"address space"});
    auto kb = p.k.view;
    kb.strides[1] = std::int64_t(1) << 59; // 11·2^59 fits in int64, its 4-byte elements' byte count does not
    expect_error([&] { vmonarch::dense_attention(p.q.view, kb, p.v.view, p.out.view); }, "k.strides",
                 {"address space"});
}

TEST(Sizes, WorkspaceBytesChecksShapesAndGrid) {
    std::uint16_t x[8] = {};
    auto q = vmonarch::TensorView::bshd(x, DType::bf16, Device::cuda, 1, 12, 1, 64);
    auto v = q;
    expect_error([&] { vmonarch::workspace_bytes(q, v, {k2to31, k2to31, 4}); }, "grid",
                 {"vmonarch::workspace_bytes", "overflows int64"});
    expect_error([&] { vmonarch::workspace_bytes(q, v, {2, 2, 2}); }, "grid", {"q's tokens 12"});
    auto big = q;
    big.shape = {k2to31, k2to31, 4, 64};
    expect_error([&] { vmonarch::workspace_bytes(big, v, {1, k2to31, k2to31}); }, "q.shape", {"overflows int64"});
    // q itself fits (2^62 elements) but its workspace (≥ 6 bytes per element) does not.
    auto huge = q;
    huge.shape = {1, std::int64_t(1) << 56, 1, 64};
    auto huge_v = huge;
    expect_error([&] { vmonarch::workspace_bytes(huge, huge_v, {1, std::int64_t(1) << 28, std::int64_t(1) << 28}); },
                 "q.shape", {"workspace", "overflows int64"});
    auto neg = q;
    neg.shape[2] = -1;
    expect_error([&] { vmonarch::workspace_bytes(neg, v, {1, 3, 4}); }, "q.shape[2]", {"-1", ">= 1"});
    SmallProblem cpu;
    EXPECT_EQ(vmonarch::workspace_bytes(cpu.q.view, cpu.v.view, {1, 3, 4}), 0u); // nothing on the CPU
}

// ---- flops() ----------------------------------------------------------------------------------------

TEST(Sizes, FlopsRejectsInvalidArgumentsNamingThem) {
    const VideoGrid grid{4, 6, 8};
    expect_error([&] { vmonarch::flops(grid, 0); }, "head_dim", {"vmonarch::flops", "0", ">= 1"});
    expect_error([&] { vmonarch::flops(grid, -64); }, "head_dim", {"-64"});
    expect_error([&] { vmonarch::flops(grid, 64, 0); }, "heads", {"0", ">= 1"});
    expect_error([&] { vmonarch::flops(grid, 64, -3); }, "heads", {"-3"});
    expect_error([&] { vmonarch::flops(grid, 64, 2, 0); }, "batch", {"0", ">= 1"});
    expect_error([&] { vmonarch::flops(grid, 64, 2, -1); }, "batch", {"-1"});
    for (int it : {0, 9, -2}) {
        Options o;
        o.iterations = it;
        expect_error([&] { vmonarch::flops(grid, 64, 2, 1, o); }, "options.iterations", {std::to_string(it), "1..8"});
    }
    expect_error([&] { vmonarch::flops({0, 6, 8}, 64); }, "grid.T", {"0", ">= 1"});
    expect_error([&] { vmonarch::flops({4, -6, 8}, 64); }, "grid.H", {"-6"});
    expect_error([&] { vmonarch::flops({4, 6, -8}, 64); }, "grid.W", {"-8"});
    for (const VideoGrid& g : kOverflowingGrids)
        expect_error([&] { vmonarch::flops(g, 64); }, "grid", {"vmonarch::flops", "overflows int64"});
}

TEST(Sizes, FlopsOfLargeValidGridsArePositiveAndExact) {
    // N = 2^40 tokens fits in int64; the FLOP counts (≈ 2^87 dense) are doubles and never wrap.
    const VideoGrid grid{1 << 20, 1 << 10, 1 << 10};
    const auto f = vmonarch::flops(grid, 128, 40, 2);
    const double n = std::ldexp(1.0, 40), b = std::ldexp(1.0, 20), m = std::ldexp(1.0, 20);
    EXPECT_DOUBLE_EQ(f.dense, 4 * n * n * 128 * 80);
    EXPECT_DOUBLE_EQ(f.r_steps, 10 * n * b * 128 * 80);
    EXPECT_DOUBLE_EQ(f.l_steps, 8 * n * m * 128 * 80);
    EXPECT_GT(f.vmonarch, 0);
    EXPECT_LT(f.vmonarch, f.dense);
}

// ---- inspection -------------------------------------------------------------------------------------

TEST(Sizes, InspectionChecksTheGridBeforeAllocating) {
    SmallProblem p;
    // HW·T² (the explicit L blocks) overflows although N = T·H·W = 2^33 fits; q's view claims that many
    // tokens but its memory is never read: the size check comes first.
    auto q = p.q.view, k = p.k.view;
    q.shape[1] = k.shape[1] = std::int64_t(1) << 33;
    const VideoGrid grid{std::int64_t(1) << 33, 1, 1};
    expect_error([&] { vmonarch::monarch_attention_rows(q, k, grid, Options{}, 0, 0, {0}); }, "grid",
                 {"vmonarch::monarch_attention_rows", "overflows int64"});
    expect_error([&] { vmonarch::monarch_objective_trace(q, k, grid, Options{}, 0, 0); }, "grid",
                 {"vmonarch::monarch_objective_trace", "overflows int64"});
    // A grid that does not match, or wraps to, the tokens of q.
    expect_error([&] { vmonarch::monarch_objective_trace(p.q.view, p.k.view, {4, (std::int64_t(1) << 62) + 1, 3}, Options{}, 0, 0); },
                 "grid", {"overflows int64"});
    expect_error([&] { vmonarch::monarch_objective_trace(p.q.view, p.k.view, {2, 2, 2}, Options{}, 0, 0); }, "grid",
                 {"does not match", "12"});
    auto neg = p.q.view;
    neg.shape[3] = -8;
    expect_error([&] { vmonarch::dense_attention_rows(neg, p.k.view, Options{}, 0, 0, {0}); }, "q.shape[3]", {"-8", ">= 1"});
}
