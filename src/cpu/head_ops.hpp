// Internal CPU building blocks, per (batch, head): moving a head between strided views and contiguous
// accumulation-precision arrays, and exact dense attention over row blocks. Acc is float for
// f16/bf16/f32 inputs and double for f64 (spec §5: fp32 accumulation and statistics).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/backend.hpp"
#include "core/progress.hpp"
#include "cpu/parallel.hpp"
#include "vmonarch/half.hpp"

namespace vmonarch::detail {

template <typename Acc>
inline void load_row(const void* base, DType dtype, std::int64_t offset, std::int64_t n, Acc* dst) {
    switch (dtype) {
    case DType::f16: {
        auto p = static_cast<const std::uint16_t*>(base) + offset;
        for (std::int64_t c = 0; c < n; ++c) dst[c] = Acc(f16_to_float(p[c]));
        break;
    }
    case DType::bf16: {
        auto p = static_cast<const std::uint16_t*>(base) + offset;
        for (std::int64_t c = 0; c < n; ++c) dst[c] = Acc(bf16_to_float(p[c]));
        break;
    }
    case DType::f32: {
        auto p = static_cast<const float*>(base) + offset;
        for (std::int64_t c = 0; c < n; ++c) dst[c] = Acc(p[c]);
        break;
    }
    case DType::f64: {
        auto p = static_cast<const double*>(base) + offset;
        for (std::int64_t c = 0; c < n; ++c) dst[c] = Acc(p[c]);
        break;
    }
    }
}

template <typename Acc>
inline void store_row(void* base, DType dtype, std::int64_t offset, std::int64_t n, const Acc* src) {
    switch (dtype) {
    case DType::f16: {
        auto p = static_cast<std::uint16_t*>(base) + offset;
        for (std::int64_t c = 0; c < n; ++c) p[c] = float_to_f16(float(src[c]));
        break;
    }
    case DType::bf16: {
        auto p = static_cast<std::uint16_t*>(base) + offset;
        for (std::int64_t c = 0; c < n; ++c) p[c] = float_to_bf16(float(src[c]));
        break;
    }
    case DType::f32: {
        auto p = static_cast<float*>(base) + offset;
        for (std::int64_t c = 0; c < n; ++c) p[c] = float(src[c]);
        break;
    }
    case DType::f64: {
        auto p = static_cast<double*>(base) + offset;
        for (std::int64_t c = 0; c < n; ++c) p[c] = double(src[c]);
        break;
    }
    }
}

// Head (b, h) of a [B, N, heads, d] view as a contiguous [N][d] array; `what` names it in an
// OutOfMemoryError.
template <typename Acc>
std::vector<Acc> load_head(const TensorView& t, std::int64_t b, std::int64_t h, const char* what) {
    const std::int64_t n = t.tokens(), d = t.head_dim();
    std::vector<Acc> dst = allocate_filled(n * d, Acc(0), what);
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < n; ++r) load_row(t.data, t.dtype, offset_of(t, b, r, h), d, dst.data() + r * d);
    return dst;
}

// Rows [begin, end) of head (b, h) of `t` from a contiguous [N][d] array.
template <typename Acc>
void store_head_rows(const TensorView& t, std::int64_t b, std::int64_t h, const Acc* src, std::int64_t begin,
                     std::int64_t end) {
    const std::int64_t d = t.head_dim();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = begin; r < end; ++r) store_row(t.data, t.dtype, offset_of(t, b, r, h), d, src + r * d);
}

template <typename Acc>
void store_lse_rows(const LseView& lse, std::int64_t b, std::int64_t h, const Acc* src, std::int64_t begin,
                    std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
        const std::int64_t off = b * lse.strides[0] + h * lse.strides[1] + r * lse.strides[2];
        if (lse.dtype == DType::f64) {
            static_cast<double*>(lse.data)[off] = double(src[r]);
        } else {
            static_cast<float*>(lse.data)[off] = float(src[r]);
        }
    }
}

template <typename Acc>
inline Acc dot(const Acc* a, const Acc* b, std::int64_t n) {
    Acc s = 0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t c = 0; c < n; ++c) s += a[c] * b[c];
    return s;
}

template <typename Acc>
inline void axpy(Acc alpha, const Acc* x, Acc* y, std::int64_t n) {
#pragma omp simd
    for (std::int64_t c = 0; c < n; ++c) y[c] += alpha * x[c];
}

// One row of an L-step (spec §3, step L), in place: z[k] <- L[k] = exp(z[k] − mx) / Σ_k' exp(z[k'] − mx) for
// mx = max_k z[k] (finite). Returns logsumexp z = mx + log Σ_k exp(z[k] − mx).
template <typename Acc>
inline Acc softmax_row(Acc* z, std::int64_t n, Acc mx) {
    Acc sum = 0;
    for (std::int64_t k = 0; k < n; ++k) sum += std::exp(z[k] - mx);
    const Acc inv = Acc(1) / sum;
    for (std::int64_t k = 0; k < n; ++k) z[k] = std::exp(z[k] - mx) * inv;
    return mx + std::log(sum);
}

// out[0..dim) = Σ_k w[k]·rows[k·stride + c], the L-step output O[i][j] = Σ_k L[k]·y[k][j] (spec §3).
template <typename Acc>
inline void weighted_sum(const Acc* w, std::int64_t n, const Acc* rows, std::int64_t stride, Acc* out,
                         std::int64_t dim) {
    std::fill(out, out + dim, Acc(0));
    for (std::int64_t k = 0; k < n; ++k) axpy(w[k], rows + k * stride, out, dim);
}

// One query row of an R-step (spec §3, step R) over one key frame's hw keys: x_l = ⟨qs, k_l⟩ (qs already
// carries the row scale), P = softmax x; writes al = scale·Σ_l P·k_l and, when yr is set, yr = Σ_l P·v_l.
// Returns lse = logsumexp x and cl = Σ_l P·x_l − lse (the negative entropy of P). x: hw scratch values.
template <typename Acc> struct RowFit {
    Acc lse, cl;
};
template <typename Acc>
RowFit<Acc> fit_row(const Acc* qs, const Acc* keys, const Acc* values, std::int64_t hw, std::int64_t d,
                    std::int64_t dv, Acc scale, Acc* x, Acc* al, Acc* yr) {
    Acc mx = -std::numeric_limits<Acc>::infinity();
    for (std::int64_t l = 0; l < hw; ++l) {
        x[l] = dot(qs, keys + l * d, d);
        mx = std::max(mx, x[l]);
    }
    Acc sum = 0, weighted = 0;
    for (std::int64_t l = 0; l < hw; ++l) {
        const Acc e = std::exp(x[l] - mx);
        sum += e;
        weighted += e * x[l];
        x[l] = e;
    }
    const Acc lse = mx + std::log(sum), inv = Acc(1) / sum;
    std::fill(al, al + d, Acc(0));
    if (yr) std::fill(yr, yr + dv, Acc(0));
    for (std::int64_t l = 0; l < hw; ++l) {
        const Acc prob = x[l] * inv;
        axpy(prob, keys + l * d, al, d);
        if (yr) axpy(prob, values + l * dv, yr, dv);
    }
    for (std::int64_t c = 0; c < d; ++c) al[c] *= scale;
    return {lse, weighted / sum - lse};
}

// Exact attention of nq query rows against nk keys, tiled with an online softmax (never nq×nk in
// memory): out[r] = softmax(q[r]·kᵀ·scale)·v, lse[r] = logsumexp(q[r]·kᵀ·scale) (lse may be null).
template <typename Acc>
void dense_rows(const Acc* q, std::int64_t nq, const Acc* k, const Acc* v, std::int64_t nk, std::int64_t d,
                std::int64_t dv, Acc scale, Acc* out, Acc* lse, ProgressCounter* progress) {
    constexpr std::int64_t kRows = 16, kKeys = 256;
    const std::int64_t blocks = (nq + kRows - 1) / kRows;
    ThreadScratch<Acc> logit_rows(kRows * kKeys, "dense attention rows: logits (16 x 256 per thread)");
    ThreadScratch<Acc> acc_rows(kRows * dv, "dense attention rows: accumulators (16 x dv per thread)");
    RegionErrors errors;
#pragma omp parallel num_threads(logit_rows.threads())
    {
        Acc* const logits = logit_rows.mine();
        Acc* const acc = acc_rows.mine();
        Acc m[kRows], l[kRows];
#pragma omp for schedule(dynamic)
        for (std::int64_t blk = 0; blk < blocks; ++blk) errors.guard([&] {
            const std::int64_t r0 = blk * kRows, rows = std::min(kRows, nq - r0);
            std::fill(acc, acc + kRows * dv, Acc(0));
            std::fill(m, m + kRows, -std::numeric_limits<Acc>::infinity());
            std::fill(l, l + kRows, Acc(0));
            for (std::int64_t c0 = 0; c0 < nk; c0 += kKeys) {
                const std::int64_t cols = std::min(kKeys, nk - c0);
                for (std::int64_t r = 0; r < rows; ++r) {
                    const Acc* qr = q + (r0 + r) * d;
                    Acc* x = logits + r * kKeys;
                    Acc tile_max = -std::numeric_limits<Acc>::infinity();
                    for (std::int64_t c = 0; c < cols; ++c) {
                        x[c] = dot(qr, k + (c0 + c) * d, d) * scale;
                        tile_max = std::max(tile_max, x[c]);
                    }
                    const Acc m_new = std::max(m[r], tile_max);
                    const Acc rescale = std::exp(m[r] - m_new); // exp(-inf) = 0 on the first tile
                    Acc* a = acc + r * dv;
                    for (std::int64_t c = 0; c < dv; ++c) a[c] *= rescale;
                    l[r] *= rescale;
                    for (std::int64_t c = 0; c < cols; ++c) {
                        const Acc p = std::exp(x[c] - m_new);
                        l[r] += p;
                        axpy(p, v + (c0 + c) * dv, a, dv);
                    }
                    m[r] = m_new;
                }
            }
            for (std::int64_t r = 0; r < rows; ++r) {
                const Acc inv = Acc(1) / l[r];
                for (std::int64_t c = 0; c < dv; ++c) out[(r0 + r) * dv + c] = acc[r * dv + c] * inv;
                if (lse) lse[r0 + r] = m[r] + std::log(l[r]);
            }
            if (progress) progress->add(rows);
        });
    }
    errors.rethrow_first();
}

} // namespace vmonarch::detail
