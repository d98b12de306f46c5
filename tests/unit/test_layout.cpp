// The public Layout: names, parsing, and TensorView::of against the layout-specific factories.
#include <gtest/gtest.h>

#include "vmonarch/vmonarch.hpp"

namespace {

using vmonarch::DType;
using vmonarch::Device;
using vmonarch::Layout;
using vmonarch::TensorView;

TEST(Layout, NamesRoundTrip) {
    for (Layout l : {Layout::bshd, Layout::bhsd}) EXPECT_EQ(vmonarch::layout_from_string(vmonarch::to_string(l)), l);
    EXPECT_EQ(vmonarch::to_string(Layout::bshd), "bshd");
    EXPECT_EQ(vmonarch::to_string(Layout::bhsd), "bhsd");
    EXPECT_FALSE(vmonarch::layout_from_string("BSHD").has_value());
    EXPECT_FALSE(vmonarch::layout_from_string("bsdh").has_value());
    EXPECT_FALSE(vmonarch::layout_from_string("").has_value());
}

TEST(Layout, OfMatchesTheLayoutFactories) {
    float x = 0;
    const TensorView s = TensorView::of(Layout::bshd, &x, DType::f32, Device::cpu, 2, 7, 3, 16);
    const TensorView h = TensorView::of(Layout::bhsd, &x, DType::f32, Device::cpu, 2, 7, 3, 16);
    EXPECT_EQ(s.strides, TensorView::bshd(&x, DType::f32, Device::cpu, 2, 7, 3, 16).strides);
    EXPECT_EQ(h.strides, TensorView::bhsd(&x, DType::f32, Device::cpu, 2, 3, 7, 16).strides);
    EXPECT_EQ(s.shape, (std::array<std::int64_t, 4>{2, 7, 3, 16}));
    EXPECT_EQ(h.shape, s.shape);
    EXPECT_EQ(s.strides, (std::array<std::int64_t, 4>{7 * 3 * 16, 3 * 16, 16, 1}));
    EXPECT_EQ(h.strides, (std::array<std::int64_t, 4>{3 * 7 * 16, 16, 7 * 16, 1}));
    EXPECT_THROW(TensorView::of(Layout::bhsd, &x, DType::f32, Device::cpu, 1, -2, 1, 4), vmonarch::ArgumentError);
}

} // namespace
