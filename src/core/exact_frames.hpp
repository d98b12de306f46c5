// Internal: which key frames belong to a query frame's exact group (spec §3b). Key frame k is exact for query
// frame i when k < S (sink frames) or |i - k| <= r (temporal window); every other key frame is in i's Monarch
// fit. Used by the CPU backend (masking the L-step, skipping R-steps) and by flops().
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

namespace vmonarch::detail {

class ExactFrames {
public:
    // T >= 1 frames, S >= 0 sink frames, r >= 0 window radius or r < 0 for no window.
    ExactFrames(std::int64_t T, std::int64_t S, std::int64_t r)
        : T_(T), S_(std::min(S, T)), r_(r < 0 ? -1 : std::min(r, T)) {}

    bool any() const { return S_ > 0 || r_ >= 0; }

    bool exact(std::int64_t i, std::int64_t k) const { return k < S_ || (r_ >= 0 && (i > k ? i - k : k - i) <= r_); }

    // Some query frame fits key frame k (its R-steps are needed): k >= S and, with a window, some frame lies
    // farther than r from k.
    bool fitted(std::int64_t k) const {
        if (k < S_) return false;
        return r_ < 0 || k - r_ - 1 >= 0 || k + r_ + 1 <= T_ - 1;
    }

    // The exact key frames of query frame i as at most two ranges [first, second) of frames, in order;
    // returns how many (0, 1 or 2). Frames are contiguous in token order, so each range is one key block.
    int ranges(std::int64_t i, std::pair<std::int64_t, std::int64_t> out[2]) const {
        int n = 0;
        if (S_ > 0) out[n++] = {0, S_};
        if (r_ >= 0) {
            const std::int64_t lo = std::max<std::int64_t>(0, i - r_), hi = std::min(T_, i + r_ + 1);
            if (n == 1 && lo <= S_) {
                out[0].second = std::max(out[0].second, hi);
            } else {
                out[n++] = {lo, hi};
            }
        }
        return n;
    }

    // |E(i)|: the number of exact key frames of query frame i.
    std::int64_t count(std::int64_t i) const {
        std::pair<std::int64_t, std::int64_t> r[2];
        std::int64_t c = 0;
        for (int a = 0, n = ranges(i, r); a < n; ++a) c += r[a].second - r[a].first;
        return c;
    }

private:
    std::int64_t T_, S_, r_;
};

} // namespace vmonarch::detail
