#include "head_metrics.hpp"

#include <algorithm>
#include <cmath>
#include <exception>

namespace vmonarch::cli {

namespace {

struct Sums {
    double dot = 0, approx_sq = 0, ref_sq = 0, diff_sq = 0, max_abs = 0;
    std::int64_t approx_non_finite = 0, reference_non_finite = 0;
    void add(const Sums& o) {
        dot += o.dot;
        approx_sq += o.approx_sq;
        ref_sq += o.ref_sq;
        diff_sq += o.diff_sq;
        max_abs = std::max(max_abs, o.max_abs);
        approx_non_finite += o.approx_non_finite;
        reference_non_finite += o.reference_non_finite;
    }
    OutputError error(std::int64_t batch, std::int64_t head) const {
        OutputError e;
        e.batch = batch;
        e.head = head;
        e.approx_non_finite = approx_non_finite;
        e.reference_non_finite = reference_non_finite;
        if (!e.finite()) {
            e.rel_l2 = e.cosine = e.max_abs = NAN;
            return e;
        }
        // A zero reference: the error is 0 for a zero approximation, else unbounded.
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
    const std::int64_t B = shape.batch, Hn = shape.heads, N = shape.tokens, D = shape.value_dim;
    const std::int64_t heads = checked_product({B, Hn}, "compare", "heads");

    std::vector<Sums> sums(static_cast<std::size_t>(heads));
    std::exception_ptr failure; // an exception must not leave the parallel region
#pragma omp parallel for schedule(static)
    for (std::int64_t bh = 0; bh < heads; ++bh) {
        try {
            const std::int64_t b = bh / Hn, h = bh % Hn;
            std::vector<double> a(static_cast<std::size_t>(D)), r(static_cast<std::size_t>(D)); // one row of each, exact in double
            Sums s;
            for (std::int64_t n = 0; n < N; ++n) {
                const std::int64_t base =
                    layout == Layout::bhsd ? ((b * Hn + h) * N + n) * D : ((b * N + n) * Hn + h) * D;
                approx.to_doubles(base, D, a.data());
                reference.to_doubles(base, D, r.data());
                for (std::int64_t d = 0; d < D; ++d) {
                    const double x = a[std::size_t(d)], y = r[std::size_t(d)];
                    const bool x_ok = std::isfinite(x), y_ok = std::isfinite(y);
                    s.approx_non_finite += !x_ok;
                    s.reference_non_finite += !y_ok;
                    if (!x_ok || !y_ok) continue;
                    const double diff = x - y;
                    s.dot += x * y;
                    s.approx_sq += x * x;
                    s.ref_sq += y * y;
                    s.diff_sq += diff * diff;
                    s.max_abs = std::max(s.max_abs, std::fabs(diff));
                }
            }
            sums[std::size_t(bh)] = s;
        } catch (...) {
#pragma omp critical(vmonarch_compare_failure)
            if (!failure) failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);

    OutputComparison result;
    Sums total;
    for (std::int64_t bh = 0; bh < heads; ++bh) {
        result.heads.push_back(sums[std::size_t(bh)].error(bh / Hn, bh % Hn));
        total.add(sums[std::size_t(bh)]);
    }
    result.overall = total.error(-1, -1);
    return result;
}

} // namespace vmonarch::cli
