// make_video_attention_inputs: per-head projections of the scene to q, k, v with Wan's 3-D RoPE, head
// kinds and calibrated logit sharpness (see include/vmonarch/extras/video_data.hpp, the README's data section).
#include "data/fp_strict.hpp" // first: keeps floating-point results identical across compilers/CPUs

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "data/detmath.hpp"
#include "data/video_internal.hpp"
#include "vmonarch/extras/video_data.hpp"

namespace vmonarch {

std::string to_string(HeadKind kind) {
    switch (kind) {
    case HeadKind::positional: return "positional";
    case HeadKind::semantic: return "semantic";
    case HeadKind::sink: return "sink";
    case HeadKind::mixed: return "mixed";
    }
    return "unknown";
}

HeadKind head_kind_of(std::int64_t head) {
    if (head < 0) throw ArgumentError("head", "head must be >= 0, got " + std::to_string(head));
    static constexpr HeadKind kCycle[4] = {HeadKind::positional, HeadKind::semantic, HeadKind::sink, HeadKind::mixed};
    return kCycle[head % 4];
}

namespace data {
namespace {

constexpr int kChannels = 32;
constexpr std::uint64_t kTagScene = 0x5343454E45ull; // "SCENE"
constexpr std::uint64_t kTagHead = 0x48454144ull;    // "HEAD"
constexpr std::uint64_t kTagNoise = 0x4E4F495345ull; // "NOISE"

// Within-row standard deviation of the logits q·k/√d at sharpness 1. With N ≈ 1000 keys this gives
// rows whose top probability is a few percent to a few tens of percent, like trained DiT heads.
constexpr double kLogitStd = 2.0;
// Share of every row's attention mass that sink heads put on frame 0 (on average, sharpness 1).
constexpr double kSinkShare = 0.4;
// Isotropic noise added to q and k, relative to the rms of the structured part (keeps q, k full rank).
constexpr double kNoise = 0.3;
// Calibration sample: keys and rows.
constexpr std::int64_t kSampleKeys = 1024;
constexpr std::int64_t kSampleRows = 48;

struct KindWeights {
    double positional; // share of the logit variance from the rotary-only positional part
    double content;    // share from the content (scene features) part
    double bias;       // common query component, relative to the typical |q|
    double logit_std;  // within-row logit std, relative to kLogitStd
};

KindWeights weights_of(HeadKind kind) {
    switch (kind) {
    case HeadKind::positional: return {1.0, 0.05, 0.0, 1.5};
    case HeadKind::semantic: return {0.1, 1.0, 0.0, 1.0};
    case HeadKind::sink: return {0.5, 0.5, 0.7, 1.0};
    case HeadKind::mixed: return {0.6, 0.6, 0.0, 1.1};
    }
    return {1, 1, 0, 1};
}

// One head's weights. q = rope(a_c·Pqᵀf + a_p·u + nq·z) + b, k = rope(a_c·Pkᵀf + a_p·u + nk·z')
// (+ g·s for frame-0 keys), v = Pvᵀf + nv·z''; the overall scale is folded into the coefficients.
struct HeadModel {
    HeadKind kind = HeadKind::positional;
    std::int64_t d = 0, dv = 0;
    std::vector<float> pq, pk; // [C][d]
    std::vector<float> pv;     // [C][dv]
    std::vector<double> u;     // [d]: positional vector, same for q and k so the rope kernel peaks at Δ = 0
    std::vector<double> bias;  // [d]: common query component (after rope)
    std::vector<double> sink;  // [d]: direction added to frame-0 keys
    double a_c = 0, a_p = 0, nq = 0, nk = 0, nv = 0, bias_scale = 0, sink_scale = 0;
};

HeadModel init_head(std::uint64_t seed, std::int64_t h, std::int64_t d, std::int64_t dv, const Rotary& rope) {
    HeadModel m;
    m.kind = head_kind_of(h);
    m.d = d;
    m.dv = dv;
    Rng rng(stream_key(seed, kTagHead, static_cast<std::uint64_t>(h)));
    const double inv_sqrt_c = 1.0 / std::sqrt(static_cast<double>(kChannels));
    // Pq and Pk share most of their weights so that similar content matches (q·k ≈ fᵀPᵀPf').
    m.pq.resize(static_cast<std::size_t>(kChannels * d));
    m.pk.resize(m.pq.size());
    for (std::size_t i = 0; i < m.pq.size(); ++i) {
        const double shared = rng.normal();
        m.pq[i] = static_cast<float>((shared + 0.35 * rng.normal()) * inv_sqrt_c);
        m.pk[i] = static_cast<float>((shared + 0.35 * rng.normal()) * inv_sqrt_c);
    }
    m.pv.resize(static_cast<std::size_t>(kChannels * dv));
    for (auto& x : m.pv) x = static_cast<float>(rng.normal() * inv_sqrt_c);
    // Positional vector: the same for q and k, so q·k = Σ_pairs |u_p|²·cos(ω_p·Δ) over the axes' offsets
    // Δ. Pair weights ∝ ω·exp(−(ω/ω_c)²) (pairs are log-spaced in ω, so this is a Gaussian spectrum)
    // give a smooth bump of width ~1/ω_c tokens per axis without the periodic side lobes the highest
    // frequencies would add; a per-head emphasis on time vs space; random phase per pair.
    std::array<double, 3> axis_weight{}, cutoff{};
    for (auto& w : axis_weight) w = rng.uniform(0.6, 1.4);
    for (auto& c : cutoff) c = rng.uniform(0.35, 0.7);
    m.u.resize(static_cast<std::size_t>(d));
    for (std::int64_t p = 0; p < d / 2; ++p) {
        const int axis = rope.axis_of_pair(p);
        const double w = rope.frequency_of_pair(p), x = w / cutoff[axis];
        const double amp2 = axis_weight[axis] * w * det_exp(-x * x) * rng.uniform(0.7, 1.3);
        double s, c;
        det_sincos(2.0 * kPi * rng.uniform(), s, c);
        m.u[2 * p] = std::sqrt(amp2) * c;
        m.u[2 * p + 1] = std::sqrt(amp2) * s;
    }
    m.bias.resize(static_cast<std::size_t>(d));
    m.sink.resize(static_cast<std::size_t>(d));
    double norm = 0;
    for (auto& x : m.bias) {
        x = rng.normal();
        norm += x * x;
    }
    for (auto& x : m.bias) x /= std::sqrt(norm);
    return m;
}

// out[r] = Σ_c P[c][r]·f[c] (c outer so the inner loop vectorises and the order is fixed).
template <class Out>
void project(const float* p, const float* f, std::int64_t rows, Out* out) {
    for (std::int64_t r = 0; r < rows; ++r) out[r] = 0;
    for (int c = 0; c < kChannels; ++c) {
        const float fc = f[c];
        const float* pc = p + c * rows;
        for (std::int64_t r = 0; r < rows; ++r) out[r] += static_cast<Out>(pc[r] * fc);
    }
}

struct TokenPos {
    std::int64_t t, y, x;
};
TokenPos position_of(const VideoGrid& g, std::int64_t n) {
    const std::int64_t j = n % g.frame_tokens();
    return {n / g.frame_tokens(), j / g.W, j % g.W};
}

// Noise streams: one per (seed, batch, head, tensor).
std::uint64_t noise_key(std::uint64_t seed, std::int64_t b, std::int64_t h, int which) {
    return stream_key(seed, kTagNoise, static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(h),
                      static_cast<std::uint64_t>(which));
}

double dot(const double* a, const double* b, std::int64_t n) {
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

// Mean over rows of the within-row standard deviation of s·q_r·k_m over the sampled keys.
double mean_row_std(const std::vector<double>& q, const std::vector<double>& k, std::int64_t rows, std::int64_t keys,
                    std::int64_t d, double scale) {
    double total = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
        double s1 = 0, s2 = 0;
        for (std::int64_t m = 0; m < keys; ++m) {
            const double x = scale * dot(q.data() + r * d, k.data() + m * d, d);
            s1 += x;
            s2 += x * x;
        }
        const double mean = s1 / static_cast<double>(keys);
        total += std::sqrt(std::max(0.0, s2 / static_cast<double>(keys) - mean * mean));
    }
    return total / static_cast<double>(rows);
}

// Fits the head's coefficients on a sample of batch 0's tokens (see the constants above).
void calibrate_head(HeadModel& m, const Scene& scene, const Rotary& rope, std::uint64_t seed, std::int64_t h) {
    const VideoGrid& g = scene.grid;
    const std::int64_t N = g.tokens(), d = m.d;
    const double s = 1.0 / std::sqrt(static_cast<double>(d));
    const KindWeights w = weights_of(m.kind);

    const std::int64_t K = std::min(N, kSampleKeys);
    std::vector<std::int64_t> keys(static_cast<std::size_t>(K));
    for (std::int64_t i = 0; i < K; ++i)
        keys[i] = std::min(N - 1, static_cast<std::int64_t>((static_cast<double>(i) + 0.5) * static_cast<double>(N) / static_cast<double>(K)));
    const std::int64_t R = std::min(K, kSampleRows);
    std::vector<std::int64_t> rows(static_cast<std::size_t>(R)); // indices into keys
    for (std::int64_t i = 0; i < R; ++i)
        rows[i] = std::min(K - 1, static_cast<std::int64_t>((static_cast<double>(i) + 0.5) * static_cast<double>(K) / static_cast<double>(R)));

    // Rotated parts at the sampled tokens: content q, content k, positional.
    std::vector<double> cq(static_cast<std::size_t>(K * d)), ck(cq.size()), pu(cq.size());
    for (std::int64_t i = 0; i < K; ++i) {
        const std::int64_t n = keys[i];
        const TokenPos p = position_of(g, n);
        const float* f = scene.features.data() + n * kChannels;
        double* a = cq.data() + i * d;
        double* b = ck.data() + i * d;
        double* c = pu.data() + i * d;
        project(m.pq.data(), f, d, a);
        project(m.pk.data(), f, d, b);
        std::copy(m.u.begin(), m.u.end(), c);
        rope.apply(a, p.t, p.y, p.x);
        rope.apply(b, p.t, p.y, p.x);
        rope.apply(c, p.t, p.y, p.x);
    }
    auto gather_rows = [&](const std::vector<double>& all) {
        std::vector<double> out(static_cast<std::size_t>(R * d));
        for (std::int64_t r = 0; r < R; ++r) std::copy_n(all.data() + rows[r] * d, d, out.data() + r * d);
        return out;
    };
    const double sigma_c = mean_row_std(gather_rows(cq), ck, R, K, d, s);
    const double sigma_p = mean_row_std(gather_rows(pu), pu, R, K, d, s);
    m.a_c = sigma_c > 0 ? std::sqrt(w.content / sigma_c) : 0.0;
    m.a_p = sigma_p > 0 ? std::sqrt(w.positional / sigma_p) : 0.0;

    // Structured q and k, their rms per dim, then the noise and the query bias relative to it.
    std::vector<double> q(static_cast<std::size_t>(K * d)), k(q.size());
    double q2 = 0, k2 = 0;
    for (std::size_t i = 0; i < q.size(); ++i) {
        q[i] = m.a_c * cq[i] + m.a_p * pu[i];
        k[i] = m.a_c * ck[i] + m.a_p * pu[i];
        q2 += q[i] * q[i];
        k2 += k[i] * k[i];
    }
    const double rms_q = std::sqrt(q2 / static_cast<double>(q.size()));
    const double rms_k = std::sqrt(k2 / static_cast<double>(k.size()));
    m.nq = kNoise * rms_q;
    m.nk = kNoise * rms_k;
    m.bias_scale = w.bias * rms_q * std::sqrt(static_cast<double>(d));
    const std::uint64_t zq = noise_key(seed, 0, h, 0), zk = noise_key(seed, 0, h, 1);
    std::vector<double> z(static_cast<std::size_t>(d));
    for (std::int64_t i = 0; i < K; ++i) {
        const std::int64_t n = keys[i];
        const TokenPos p = position_of(g, n);
        for (int which = 0; which < 2; ++which) {
            const std::uint64_t key = which == 0 ? zq : zk;
            for (std::int64_t r = 0; r < d; ++r) z[r] = draw_approx_normal(key, static_cast<std::uint64_t>(n * d + r));
            rope.apply(z.data(), p.t, p.y, p.x);
            double* dst = (which == 0 ? q.data() : k.data()) + i * d;
            const double amp = which == 0 ? m.nq : m.nk;
            for (std::int64_t r = 0; r < d; ++r) dst[r] += amp * z[r];
        }
        for (std::int64_t r = 0; r < d; ++r) q[i * d + r] += m.bias_scale * m.bias[r];
    }

    // Overall scale: the within-row logit std becomes kLogitStd (q and k each get the square root).
    const std::vector<double> qr = gather_rows(q);
    const double sigma = mean_row_std(qr, k, R, K, d, s);
    const double alpha = sigma > 0 ? std::sqrt(w.logit_std * kLogitStd / sigma) : 1.0;
    m.a_c *= alpha;
    m.a_p *= alpha;
    m.nq *= alpha;
    m.nk *= alpha;
    m.bias_scale *= alpha;
    for (auto& x : q) x *= alpha;
    for (auto& x : k) x *= alpha;

    // Sink: frame-0 keys move along the mean query direction ŝ by g, so row r's frame-0 logits rise by
    // s·g·(q_r·ŝ); g is bisected until frame 0 holds kSinkShare of the sampled rows' mass on average.
    m.sink_scale = 0;
    if (m.kind != HeadKind::sink || g.T < 2) return;
    std::vector<double> mean_q(static_cast<std::size_t>(d), 0.0);
    for (std::int64_t i = 0; i < K; ++i)
        for (std::int64_t r = 0; r < d; ++r) mean_q[r] += q[i * d + r];
    const double mq_norm = std::sqrt(dot(mean_q.data(), mean_q.data(), d));
    if (!(mq_norm > 0)) return;
    for (std::int64_t r = 0; r < d; ++r) m.sink[r] = mean_q[r] / mq_norm;
    // Per row: log of the frame-0 and of the other keys' softmax mass without the lift; the frame-0
    // share with gain g is then 1 / (1 + exp(log_rest − log_first − g·lift)).
    std::vector<double> lift(static_cast<std::size_t>(R)), log_odds(static_cast<std::size_t>(R));
    std::vector<double> logits(static_cast<std::size_t>(K));
    for (std::int64_t r = 0; r < R; ++r) {
        const double* qrow = q.data() + rows[r] * d;
        lift[r] = s * dot(qrow, m.sink.data(), d);
        double mx = -std::numeric_limits<double>::infinity();
        for (std::int64_t i = 0; i < K; ++i) {
            logits[i] = s * dot(qrow, k.data() + i * d, d);
            mx = std::max(mx, logits[i]);
        }
        double first = 0, rest = 0;
        for (std::int64_t i = 0; i < K; ++i) (keys[i] < g.frame_tokens() ? first : rest) += det_exp(logits[i] - mx);
        // No frame-0 key in the sample (T > kSampleKeys): treat frame 0 as holding ~no mass.
        log_odds[r] = first > 0 ? (rest > 0 ? det_log(rest) - det_log(first) : -700.0) : 700.0;
    }
    auto frame0_share = [&](double gain) {
        double total = 0;
        for (std::int64_t r = 0; r < R; ++r) {
            const double z = log_odds[r] - gain * lift[r];
            total += z > 0 ? det_exp(-z) / (1.0 + det_exp(-z)) : 1.0 / (1.0 + det_exp(z));
        }
        return total / static_cast<double>(R);
    };
    if (frame0_share(0.0) >= kSinkShare) return;
    double lo = 0, hi = 1;
    while (frame0_share(hi) < kSinkShare && hi < 1e6) hi *= 2;
    for (int it = 0; it < 40; ++it) {
        const double mid = 0.5 * (lo + hi);
        (frame0_share(mid) < kSinkShare ? lo : hi) = mid;
    }
    m.sink_scale = 0.5 * (lo + hi);
}

void validate(const VideoDataOptions& o) {
    const VideoGrid& g = o.grid;
    if (g.T < 1 || g.H < 1 || g.W < 1)
        throw ArgumentError("grid", "grid sizes must be >= 1, got T=" + std::to_string(g.T) + " H=" + std::to_string(g.H) +
                                        " W=" + std::to_string(g.W));
    if (o.batch < 1) throw ArgumentError("batch", "batch must be >= 1, got " + std::to_string(o.batch));
    if (o.heads < 1) throw ArgumentError("heads", "heads must be >= 1, got " + std::to_string(o.heads));
    if (o.head_dim < 2 || o.head_dim % 2 != 0 || o.head_dim > 4096)
        throw ArgumentError("head_dim", "head_dim must be even and in [2, 4096], got " + std::to_string(o.head_dim));
    if (o.value_dim < 0 || o.value_dim > 4096)
        throw ArgumentError("value_dim", "value_dim must be in [0, 4096] (0: head_dim), got " + std::to_string(o.value_dim));
    if (!(o.sharpness > 0) || !std::isfinite(o.sharpness))
        throw ArgumentError("sharpness", "sharpness must be finite and > 0, got " + std::to_string(o.sharpness));
    // Element count of the largest output must stay addressable (and sane).
    const double elems = static_cast<double>(o.batch) * static_cast<double>(o.heads) * static_cast<double>(g.T) *
                         static_cast<double>(g.H) * static_cast<double>(g.W) *
                         static_cast<double>(std::max(o.head_dim, o.value_dim));
    if (elems > 4.0e10)
        throw ArgumentError("grid", "batch·heads·tokens·dim = " + std::to_string(elems) + " elements is too large");
}

} // namespace

Scene video_scene(const VideoDataOptions& options, std::int64_t batch) {
    validate(options);
    return render_scene(options.grid, kChannels, stream_key(options.seed, kTagScene, static_cast<std::uint64_t>(batch)));
}

} // namespace data

VideoAttentionInputs make_video_attention_inputs(const VideoDataOptions& options) {
    using namespace data;
    validate(options);
    const VideoGrid g = options.grid;
    const std::int64_t B = options.batch, Hn = options.heads, N = g.tokens(), d = options.head_dim;
    const std::int64_t dv = options.value_dim == 0 ? d : options.value_dim;
    const std::uint64_t seed = options.seed;
    const Rotary rope(d, g);

    VideoAttentionInputs out;
    out.batch = B;
    out.heads = Hn;
    out.tokens = N;
    out.head_dim = d;
    out.value_dim = dv;
    out.grid = g;
    out.q.resize(static_cast<std::size_t>(B * Hn * N * d));
    out.k.resize(out.q.size());
    out.v.resize(static_cast<std::size_t>(B * Hn * N * dv));
    out.head_kinds.resize(static_cast<std::size_t>(Hn));

    std::vector<Scene> scenes;
    scenes.reserve(static_cast<std::size_t>(B));
    for (std::int64_t b = 0; b < B; ++b) scenes.push_back(video_scene(options, b));

    // Heads are fitted independently (in parallel: each fit is serial, so the result is the same for any
    // number of threads).
    std::vector<HeadModel> models(static_cast<std::size_t>(Hn));
#pragma omp parallel for schedule(dynamic, 1) if (Hn > 1 && N * d > (1 << 15))
    for (std::int64_t h = 0; h < Hn; ++h) {
        models[h] = init_head(seed, h, d, dv, rope);
        calibrate_head(models[h], scenes[0], rope, seed, h);
    }

    // The overall scale and √sharpness folded into per-head float coefficients.
    struct Folded {
        float a_c, nq, nk;
        std::vector<float> u, bias, sink;
    };
    const double root_sharp = std::sqrt(options.sharpness);
    std::vector<Folded> folded(static_cast<std::size_t>(Hn));
    for (std::int64_t h = 0; h < Hn; ++h) {
        const HeadModel& m = models[h];
        out.head_kinds[h] = m.kind;
        Folded& f = folded[h];
        f.a_c = static_cast<float>(m.a_c * root_sharp);
        f.nq = static_cast<float>(m.nq * root_sharp);
        f.nk = static_cast<float>(m.nk * root_sharp);
        f.u.resize(static_cast<std::size_t>(d));
        f.bias.resize(f.u.size());
        f.sink.resize(f.u.size());
        for (std::int64_t r = 0; r < d; ++r) {
            f.u[r] = static_cast<float>(m.u[r] * m.a_p * root_sharp);
            f.bias[r] = static_cast<float>(m.bias[r] * m.bias_scale * root_sharp);
            f.sink[r] = static_cast<float>(m.sink[r] * m.sink_scale * root_sharp);
        }
    }
    constexpr float kValueNoise = 0.3f;

    // One parallel loop over every (batch, head, token): each element's numbers depend only on its
    // indices, so any split over threads gives the same bits.
    const std::int64_t total = B * Hn * N;
#pragma omp parallel for schedule(static) if (total * (2 * d + dv) > (1 << 16))
    for (std::int64_t idx = 0; idx < total; ++idx) {
        const std::int64_t bh = idx / N, n = idx % N, b = bh / Hn, h = bh % Hn;
        const HeadModel& m = models[h];
        const Folded& c = folded[h];
        const TokenPos p = position_of(g, n);
        const float* f = scenes[b].features.data() + n * kChannels;
        float* q = out.q.data() + idx * d;
        float* k = out.k.data() + idx * d;
        float* v = out.v.data() + idx * dv;
        project(m.pq.data(), f, d, q);
        project(m.pk.data(), f, d, k);
        project(m.pv.data(), f, dv, v);
        const std::uint64_t zq = noise_key(seed, b, h, 0), zk = noise_key(seed, b, h, 1), zv = noise_key(seed, b, h, 2);
        const std::uint64_t base = static_cast<std::uint64_t>(n * d);
        for (std::int64_t r = 0; r < d; ++r) {
            q[r] = c.a_c * q[r] + c.u[r] + c.nq * draw_approx_normal(zq, base + static_cast<std::uint64_t>(r));
            k[r] = c.a_c * k[r] + c.u[r] + c.nk * draw_approx_normal(zk, base + static_cast<std::uint64_t>(r));
        }
        rope.apply(q, p.t, p.y, p.x);
        rope.apply(k, p.t, p.y, p.x);
        for (std::int64_t r = 0; r < d; ++r) q[r] += c.bias[r];
        if (p.t == 0)
            for (std::int64_t r = 0; r < d; ++r) k[r] += c.sink[r];
        const std::uint64_t vbase = static_cast<std::uint64_t>(n * dv);
        for (std::int64_t r = 0; r < dv; ++r) v[r] += kValueNoise * draw_approx_normal(zv, vbase + static_cast<std::uint64_t>(r));
    }
    return out;
}

} // namespace vmonarch
