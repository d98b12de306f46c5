// Error metrics of the unit and GPU suites, over values in the same logical order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace vmtest {

// ‖got − ref‖₂ / ‖ref‖₂ (the denominator floored at 1e-300, so an all-zero reference matched exactly gives 0).
inline double rel_l2(const std::vector<double>& got, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const double dlt = got[i] - ref[i];
        num += dlt * dlt;
        den += ref[i] * ref[i];
    }
    return std::sqrt(num / std::max(den, 1e-300));
}

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
}

inline bool all_finite(const std::vector<double>& a) {
    for (double x : a)
        if (!std::isfinite(x)) return false;
    return true;
}

inline std::size_t count_nonfinite(const std::vector<double>& v) {
    std::size_t n = 0;
    for (double x : v) n += !std::isfinite(x);
    return n;
}

} // namespace vmtest
