// The moving textured scene behind the video data generator (see video_internal.hpp).
#include "data/fp_strict.hpp" // first: keeps floating-point results identical across compilers/CPUs

#include <algorithm>
#include <cmath>

#include "data/detmath.hpp"
#include "data/video_internal.hpp"

namespace vmonarch::data {

namespace {

constexpr std::uint64_t kTagWaves = 0x5741564553ull;   // "WAVES"
constexpr std::uint64_t kTagObjects = 0x4F424A53ull;   // "OBJS"
constexpr std::uint64_t kTagNoise = 0x4E4F495345ull;   // "NOISE"

constexpr int kWaves = 10;           // background sinusoids
constexpr double kFrameNoise = 0.15; // per-frame noise, relative to a unit-variance feature

// Position moving at constant speed inside [0, extent−1], bouncing off the borders (triangle wave).
double bounce(double p, double extent) {
    const double len = extent - 1.0;
    if (len <= 0.0) return 0.0;
    const double period = 2.0 * len;
    double m = p - period * std::floor(p / period);
    return m <= len ? m : period - m;
}

} // namespace

Scene render_scene(const VideoGrid& grid, int channels, std::uint64_t key) {
    Scene scene;
    scene.grid = grid;
    scene.channels = channels;
    const std::int64_t T = grid.T, H = grid.H, W = grid.W, HW = grid.frame_tokens(), N = grid.tokens();
    const double extent = static_cast<double>(std::max(H, W));

    // Camera pan: 0.3–1.2 tokens per frame in a random direction.
    Rng rng(mix64(key ^ kTagWaves));
    {
        double s, c;
        det_sincos(2.0 * kPi * rng.uniform(), s, c);
        const double speed = rng.uniform(0.3, 1.2);
        scene.pan_y = speed * s;
        scene.pan_x = speed * c;
    }

    // Background: kWaves plane waves with wavelengths from 2.5 tokens up to most of the frame, amplitude
    // growing with wavelength (low-pass), mixed into the channels by a random matrix.
    struct Wave { double ky, kx, phase, amp; };
    std::vector<Wave> waves(kWaves);
    const double lambda_lo = 2.5, lambda_hi = std::max(4.0, 0.8 * extent);
    for (auto& w : waves) {
        double s, c;
        det_sincos(2.0 * kPi * rng.uniform(), s, c);
        const double lambda = lambda_lo * det_exp(rng.uniform() * det_log(lambda_hi / lambda_lo));
        const double k = 2.0 * kPi / lambda;
        w.ky = k * s;
        w.kx = k * c;
        w.phase = 2.0 * kPi * rng.uniform();
        w.amp = std::sqrt(lambda / lambda_hi);
    }
    std::vector<double> mixing(static_cast<std::size_t>(channels) * kWaves);
    for (auto& m : mixing) m = rng.normal();
    // Normalise so the background has unit variance per channel on average.
    double var = 0;
    for (int c = 0; c < channels; ++c)
        for (int m = 0; m < kWaves; ++m) {
            const double a = mixing[static_cast<std::size_t>(c) * kWaves + m] * waves[m].amp;
            var += 0.5 * a * a;
        }
    const double bg_norm = 1.0 / std::sqrt(var / channels);
    for (int c = 0; c < channels; ++c)
        for (int m = 0; m < kWaves; ++m) mixing[static_cast<std::size_t>(c) * kWaves + m] *= waves[m].amp * bg_norm;

    // Objects: soft discs with their own features, moving with their own velocity, bouncing.
    Rng orng(mix64(key ^ kTagObjects));
    const int objects = static_cast<int>(std::clamp<std::int64_t>(HW / 256, 2, 5));
    std::vector<std::vector<double>> object_features(static_cast<std::size_t>(objects));
    scene.object_centres.resize(static_cast<std::size_t>(objects));
    scene.object_radius.resize(static_cast<std::size_t>(objects));
    for (int o = 0; o < objects; ++o) {
        auto& f = object_features[o];
        f.resize(static_cast<std::size_t>(channels));
        for (auto& x : f) x = 1.2 * orng.normal();
        const double y0 = orng.uniform(0.0, static_cast<double>(H - 1));
        const double x0 = orng.uniform(0.0, static_cast<double>(W - 1));
        double s, c;
        det_sincos(2.0 * kPi * orng.uniform(), s, c);
        const double speed = orng.uniform(0.5, 1.8);
        scene.object_radius[o] = std::max(1.0, orng.uniform(0.08, 0.16) * static_cast<double>(std::min(H, W)));
        auto& centres = scene.object_centres[o];
        centres.resize(static_cast<std::size_t>(T));
        for (std::int64_t t = 0; t < T; ++t)
            centres[t] = {bounce(y0 + speed * s * static_cast<double>(t), static_cast<double>(H)),
                          bounce(x0 + speed * c * static_cast<double>(t), static_cast<double>(W))};
    }

    scene.features.assign(static_cast<std::size_t>(N * channels), 0.0f);
    const std::uint64_t noise_key = mix64(key ^ kTagNoise);
#pragma omp parallel for schedule(static) if (N * channels > (1 << 15))
    for (std::int64_t n = 0; n < N; ++n) {
        const std::int64_t t = n / HW, j = n % HW, y = j / W, x = j % W;
        const double sy = static_cast<double>(y) - scene.pan_y * static_cast<double>(t);
        const double sx = static_cast<double>(x) - scene.pan_x * static_cast<double>(t);
        double basis[kWaves];
        for (int m = 0; m < kWaves; ++m) basis[m] = det_sin(waves[m].ky * sy + waves[m].kx * sx + waves[m].phase);
        double f[256];
        const int C = channels;
        for (int c = 0; c < C; ++c) {
            double acc = 0;
            for (int m = 0; m < kWaves; ++m) acc += mixing[static_cast<std::size_t>(c) * kWaves + m] * basis[m];
            f[c] = acc;
        }
        for (int o = 0; o < objects; ++o) {
            const auto& centre = scene.object_centres[o][static_cast<std::size_t>(t)];
            const double dy = static_cast<double>(y) - centre[0], dx = static_cast<double>(x) - centre[1];
            const double r = scene.object_radius[o];
            const double w = det_exp(-(dy * dy + dx * dx) / (2.0 * r * r));
            if (w < 1e-6) continue;
            for (int c = 0; c < C; ++c) f[c] = (1.0 - w) * f[c] + w * object_features[o][c];
        }
        float* out = scene.features.data() + n * C;
        for (int c = 0; c < C; ++c)
            out[c] = static_cast<float>(f[c] + kFrameNoise * draw_approx_normal(noise_key, static_cast<std::uint64_t>(n * C + c)));
    }
    return scene;
}

} // namespace vmonarch::data
