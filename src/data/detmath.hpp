// Internal: deterministic random numbers and elementary functions for the video data generator.
//
// The generator promises bitwise-identical output for a seed on every machine and thread count, so it
// uses nothing whose result is implementation-defined: no <random> distributions, no libm
// transcendentals (glibc picks FMA / non-FMA variants per CPU). Everything here is integer arithmetic
// or IEEE double +, −, ×, ÷, sqrt, which are correctly rounded. Random values are counter-based
// (a hash of seed, stream and index), so parallel loops draw the same numbers in any order.
#pragma once

#include <cmath>
#include <cstdint>

namespace vmonarch::data {

// splitmix64's finaliser: a bijective 64-bit mix.
inline std::uint64_t mix64(std::uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// A key for one independent stream of numbers: seed, purpose tag and up to three sub-indices.
inline std::uint64_t stream_key(std::uint64_t seed, std::uint64_t tag, std::uint64_t a = 0, std::uint64_t b = 0,
                                std::uint64_t c = 0) {
    std::uint64_t z = mix64(seed ^ 0x5EED5EED00000000ull);
    z = mix64(z ^ tag);
    z = mix64(z ^ a);
    z = mix64(z ^ (b * 0xD6E8FEB86659FD93ull));
    return mix64(z ^ (c * 0xA0761D6478BD642Full));
}

// Uniform in (0, 1) from 64 random bits: 53 bits, offset by half a step so 0 never occurs.
inline double bits_to_unit(std::uint64_t bits) {
    return (static_cast<double>(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// Counter-based draws: the i-th value of stream `key`.
inline std::uint64_t draw_bits(std::uint64_t key, std::uint64_t i) { return mix64(key + i * 0x9E3779B97F4A7C15ull); }
inline double draw_unit(std::uint64_t key, std::uint64_t i) { return bits_to_unit(draw_bits(key, i)); }

// Cheap approximately normal value (mean 0, variance 1) from one 64-bit draw: the centred sum of four
// 16-bit uniforms (Irwin–Hall, bounded by ±√12 ≈ 3.46). Used for bulk noise where Box–Muller's cost
// (a log and a sine per value) would dominate the generator's run time.
inline float draw_approx_normal(std::uint64_t key, std::uint64_t i) {
    const std::uint64_t r = draw_bits(key, i);
    const std::int64_t s = static_cast<std::int64_t>(r & 0xFFFF) + static_cast<std::int64_t>((r >> 16) & 0xFFFF) +
                           static_cast<std::int64_t>((r >> 32) & 0xFFFF) + static_cast<std::int64_t>(r >> 48);
    // Sum of four U{0..65535}: mean 131070, variance 4·(65536²−1)/12.
    constexpr double kMean = 131070.0;
    constexpr double kInvStd = 1.0 / 37837.22723720648; // 1/sqrt(4·(65536²−1)/12)
    return static_cast<float>((static_cast<double>(s) - kMean) * kInvStd);
}

// ---- elementary functions with fixed, portable results (accurate to a few ulp of double) -----------

constexpr double kPi = 3.141592653589793238462643383279502884;
constexpr double kLn2 = 0.693147180559945309417232121458176568;

// sin and cos of x (|x| up to ~1e6). Cody–Waite reduction by π/2 with a three-part constant, then
// Taylor polynomials on [−π/4, π/4].
inline void det_sincos(double x, double& s, double& c) {
    constexpr double kTwoOverPi = 0.636619772367581343075535053490057448;
    constexpr double kPio2a = 1.57079632673412561417e+00;  // π/2 split into parts with 33, 33, 53 bits
    constexpr double kPio2b = 6.07710050630396597660e-11;
    constexpr double kPio2c = 2.02226624879595063154e-21;
    const double kq = std::nearbyint(x * kTwoOverPi);
    const double r = ((x - kq * kPio2a) - kq * kPio2b) - kq * kPio2c;
    const double r2 = r * r;
    // sin r = r·(1 − r²/3! + r⁴/5! − ...), cos r = 1 − r²/2! + r⁴/4! − ...
    double ps = 1.0 / 355687428096000.0; // 1/17!
    ps = ps * -r2 + 1.0 / 1307674368000.0;
    ps = ps * -r2 + 1.0 / 6227020800.0;
    ps = ps * -r2 + 1.0 / 39916800.0;
    ps = ps * -r2 + 1.0 / 362880.0;
    ps = ps * -r2 + 1.0 / 5040.0;
    ps = ps * -r2 + 1.0 / 120.0;
    ps = ps * -r2 + 1.0 / 6.0;
    const double sr = r - r * r2 * ps;
    double pc = 1.0 / 6402373705728000.0; // 1/18!
    pc = pc * -r2 + 1.0 / 20922789888000.0;
    pc = pc * -r2 + 1.0 / 87178291200.0;
    pc = pc * -r2 + 1.0 / 479001600.0;
    pc = pc * -r2 + 1.0 / 3628800.0;
    pc = pc * -r2 + 1.0 / 40320.0;
    pc = pc * -r2 + 1.0 / 720.0;
    pc = pc * -r2 + 1.0 / 24.0;
    pc = pc * -r2 + 0.5;
    const double cr = 1.0 - r2 * pc;
    const long long quadrant = static_cast<long long>(kq) & 3;
    switch (quadrant) {
    case 0: s = sr; c = cr; break;
    case 1: s = cr; c = -sr; break;
    case 2: s = -sr; c = -cr; break;
    default: s = -cr; c = sr; break;
    }
}
inline double det_sin(double x) { double s, c; det_sincos(x, s, c); return s; }
inline double det_cos(double x) { double s, c; det_sincos(x, s, c); return c; }

// Natural log for x > 0: x = m·2^e with m in [√½, √2), log m = 2·atanh((m−1)/(m+1)) as a series.
inline double det_log(double x) {
    int e = 0;
    double m = std::frexp(x, &e); // exact; m in [0.5, 1)
    if (m < 0.70710678118654752440) {
        m *= 2.0;
        e -= 1;
    }
    const double t = (m - 1.0) / (m + 1.0);
    const double t2 = t * t;
    double p = 1.0 / 23.0;
    p = p * t2 + 1.0 / 21.0;
    p = p * t2 + 1.0 / 19.0;
    p = p * t2 + 1.0 / 17.0;
    p = p * t2 + 1.0 / 15.0;
    p = p * t2 + 1.0 / 13.0;
    p = p * t2 + 1.0 / 11.0;
    p = p * t2 + 1.0 / 9.0;
    p = p * t2 + 1.0 / 7.0;
    p = p * t2 + 1.0 / 5.0;
    p = p * t2 + 1.0 / 3.0;
    return static_cast<double>(e) * kLn2 + 2.0 * (t + t * t2 * p);
}

// e^x for moderate x (|x| < 700): x = k·ln2 + r with |r| ≤ ln2/2, Taylor series for e^r.
inline double det_exp(double x) {
    if (x < -700.0) return 0.0;
    constexpr double kInvLn2 = 1.44269504088896340735992468100189214;
    constexpr double kLn2Hi = 6.93147180369123816490e-01; // ln2 split: hi has trailing zero bits
    constexpr double kLn2Lo = 1.90821492927058770002e-10;
    const double k = std::nearbyint(x * kInvLn2);
    const double r = (x - k * kLn2Hi) - k * kLn2Lo;
    double p = 1.0 / 6227020800.0; // 1/13!
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return std::ldexp(p, static_cast<int>(k));
}

// A sequential generator (xoshiro256**) for the model's parameters, seeded through splitmix64.
class Rng {
public:
    explicit Rng(std::uint64_t key) {
        std::uint64_t z = key;
        for (auto& w : s_) {
            z += 0x9E3779B97F4A7C15ull;
            w = mix64(z);
        }
    }
    std::uint64_t next() {
        const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const std::uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }
    double uniform() { return bits_to_unit(next()); }                       // (0, 1)
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    // Standard normal by Box–Muller (both values of a pair are used).
    double normal() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        const double u1 = uniform(), u2 = uniform();
        const double radius = std::sqrt(-2.0 * det_log(u1));
        double s, c;
        det_sincos(2.0 * kPi * u2, s, c);
        spare_ = radius * s;
        has_spare_ = true;
        return radius * c;
    }

private:
    static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    std::uint64_t s_[4];
    double spare_ = 0;
    bool has_spare_ = false;
};

} // namespace vmonarch::data
