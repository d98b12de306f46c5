// Wan-style 3-D rotary position embedding (see video_internal.hpp).
#include "data/fp_strict.hpp" // first: keeps floating-point results identical across compilers/CPUs

#include <string>

#include "data/detmath.hpp"
#include "data/video_internal.hpp"
#include "vmonarch/errors.hpp"

namespace vmonarch::data {

RotarySplit wan_rotary_split(std::int64_t head_dim) {
    if (head_dim < 2 || head_dim % 2 != 0)
        throw ArgumentError("head_dim", "head_dim must be even and >= 2 for the rotary embedding, got " +
                                            std::to_string(head_dim));
    RotarySplit s;
    s.height = 2 * (head_dim / 6);
    s.width = 2 * (head_dim / 6);
    s.time = head_dim - s.height - s.width;
    return s;
}

Rotary::Rotary(std::int64_t head_dim, const VideoGrid& grid, double theta) : head_dim_(head_dim), grid_(grid) {
    const RotarySplit split = wan_rotary_split(head_dim);
    const std::array<std::int64_t, 3> dims{split.time, split.height, split.width};
    const std::array<std::int64_t, 3> extent{grid.T, grid.H, grid.W};
    const double log_theta = det_log(theta);
    for (int a = 0; a < 3; ++a) {
        axis_pairs_[a] = dims[a] / 2;
        for (std::int64_t i = 0; i < axis_pairs_[a]; ++i) {
            axis_.push_back(a);
            local_.push_back(i);
            // θ^(−2i/D) as exp(−(2i/D)·ln θ)
            freq_.push_back(det_exp(-(2.0 * static_cast<double>(i) / static_cast<double>(dims[a])) * log_theta));
        }
        cos_[a].resize(static_cast<std::size_t>(extent[a] * axis_pairs_[a]));
        sin_[a].resize(cos_[a].size());
    }
    for (std::int64_t p = 0; p < pairs(); ++p) {
        const int a = axis_[p];
        for (std::int64_t pos = 0; pos < extent[a]; ++pos) {
            double s, c;
            det_sincos(static_cast<double>(pos) * freq_[p], s, c);
            const auto idx = static_cast<std::size_t>(pos * axis_pairs_[a] + local_[p]);
            cos_[a][idx] = c;
            sin_[a][idx] = s;
        }
    }
}

namespace {
template <class Real>
void rotate(Real* v, const std::array<std::int64_t, 3>& axis_pairs, const std::array<std::vector<double>, 3>& cs,
            const std::array<std::vector<double>, 3>& sn, const std::array<std::int64_t, 3>& pos) {
    std::int64_t pair = 0;
    for (int a = 0; a < 3; ++a) {
        const double* c = cs[a].data() + pos[a] * axis_pairs[a];
        const double* s = sn[a].data() + pos[a] * axis_pairs[a];
        for (std::int64_t i = 0; i < axis_pairs[a]; ++i, ++pair) {
            const double x0 = v[2 * pair], x1 = v[2 * pair + 1];
            const double p0 = x0 * c[i], p1 = x1 * s[i], p2 = x0 * s[i], p3 = x1 * c[i];
            v[2 * pair] = static_cast<Real>(p0 - p1);
            v[2 * pair + 1] = static_cast<Real>(p2 + p3);
        }
    }
}
} // namespace

void Rotary::apply(float* v, std::int64_t t, std::int64_t y, std::int64_t x) const {
    rotate(v, axis_pairs_, cos_, sin_, {t, y, x});
}
void Rotary::apply(double* v, std::int64_t t, std::int64_t y, std::int64_t x) const {
    rotate(v, axis_pairs_, cos_, sin_, {t, y, x});
}

} // namespace vmonarch::data
