#include "head_metrics.hpp"

#include <algorithm>
#include <cmath>

namespace vmonarch::cli {

namespace {

struct Sums {
    double dot = 0, approx_sq = 0, ref_sq = 0, diff_sq = 0, max_abs = 0;
    void add(const Sums& o) {
        dot += o.dot;
        approx_sq += o.approx_sq;
        ref_sq += o.ref_sq;
        diff_sq += o.diff_sq;
        max_abs = std::isnan(o.max_abs) ? o.max_abs : std::max(max_abs, o.max_abs);
    }
    OutputError error(std::int64_t batch, std::int64_t head) const {
        OutputError e;
        e.batch = batch;
        e.head = head;
        e.rel_l2 = ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : (diff_sq > 0 ? INFINITY : 0.0);
        const double norms = std::sqrt(approx_sq) * std::sqrt(ref_sq);
        e.cosine = norms > 0 ? dot / norms : (approx_sq == 0 && ref_sq == 0 ? 1.0 : 0.0);
        e.max_abs = max_abs;
        return e;
    }
};

} // namespace

OutputComparison compare_outputs(const HostTensor& approx, const HostTensor& reference, Layout layout,
                                 const AttentionShape& shape) {
    const std::vector<std::int64_t> expected =
        file_shape(layout, shape.batch, shape.heads, shape.tokens, shape.value_dim);
    if (approx.shape != expected)
        throw ArgumentError("approx", "output shape " + format_shape(approx.shape) + " differs from the expected " +
                                          format_shape(expected));
    if (reference.shape != expected)
        throw ArgumentError("--reference", "reference shape " + format_shape(reference.shape) +
                                               " differs from the expected " + format_shape(expected) +
                                               " (same layout as the inputs)");
    const std::vector<float> a = approx.to_floats();
    const std::vector<float> r = reference.to_floats();
    const std::int64_t B = shape.batch, Hn = shape.heads, N = shape.tokens, D = shape.value_dim;

    std::vector<Sums> sums(std::size_t(B * Hn));
#pragma omp parallel for schedule(static)
    for (std::int64_t bh = 0; bh < B * Hn; ++bh) {
        const std::int64_t b = bh / Hn, h = bh % Hn;
        Sums s;
        for (std::int64_t n = 0; n < N; ++n) {
            const std::int64_t base =
                layout == Layout::bhsd ? ((b * Hn + h) * N + n) * D : ((b * N + n) * Hn + h) * D;
            for (std::int64_t d = 0; d < D; ++d) {
                const double x = a[std::size_t(base + d)], y = r[std::size_t(base + d)];
                const double diff = x - y;
                s.dot += x * y;
                s.approx_sq += x * x;
                s.ref_sq += y * y;
                s.diff_sq += diff * diff;
                s.max_abs = std::max(s.max_abs, std::fabs(diff));
                if (std::isnan(diff)) s.max_abs = NAN;
            }
        }
        sums[std::size_t(bh)] = s;
    }

    OutputComparison result;
    Sums total;
    for (std::int64_t bh = 0; bh < B * Hn; ++bh) {
        result.heads.push_back(sums[std::size_t(bh)].error(bh / Hn, bh % Hn));
        total.add(sums[std::size_t(bh)]);
    }
    result.overall = total.error(-1, -1);
    return result;
}

} // namespace vmonarch::cli
