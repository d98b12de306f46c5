// Internal CPU building blocks of the exact key groups' backward (spec §3b, §7): a FlashAttention backward of
// query rows over one block of exact keys, with the probabilities taken against the rows' merged lse.
//
// Why the merged lse suffices: a row's output is O = w_M·O_M + w_E·O_E with (w_M, w_E) = softmax(F, LSE_E).
// Differentiating the merge gives dO_E = w_E·dO and dLSE_E = w_E·(dlse + ⟨dO, O_E − O⟩), so the exact group's
// own FlashAttention backward has D_E = ⟨dO_E, O_E⟩ − dLSE_E = w_E·D with D = ⟨dO, O⟩ − dlse, and
//   w_E·P_E = exp(s·q·k − LSE_E)·exp(LSE_E − lse) = exp(s·q·k − lse),
// hence dS = exp(s·q·k − lse)·(⟨dO, v⟩ − D) with the row's merged lse and D: neither O_E nor LSE_E is needed.
// (The Monarch part likewise gets dZ = exp(z − lse)∘(dL − D) in its last L-step.)
//
// Both halves are parallel over their outputs (keys for dk/dv, rows for dq) and sum in a fixed order, so the
// results do not depend on the thread count.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/head_ops.hpp"

namespace vmonarch::detail {

// Query rows of one head, contiguous: q [n][d], dout [n][dv], the merged lse [n] and D = ⟨dO, O⟩ − dlse [n].
template <typename Acc>
struct FlashRows {
    const Acc *q = nullptr, *dout = nullptr, *lse = nullptr, *delta = nullptr;
};

// exp(s·⟨q, k⟩ − lse) for a row with finite lse (0 for a row whose lse is −inf: it has no keys at all).
template <typename Acc>
inline Acc merged_probability(const Acc* q, const Acc* key, std::int64_t d, Acc scale, Acc lse) {
    if (lse == -std::numeric_limits<Acc>::infinity()) return Acc(0);
    return std::exp(scale * dot(q, key, d) - lse);
}

// Key side over keys [0, nk) (keys [nk][d], values [nk][dv]) attended by the rows in `row_ranges` ([begin, end)
// row indices of `rows`, summed in the order given): dk[l] += s·Σ_r dS·q_r, dvals[l] += Σ_r P·dO_r.
template <typename Acc>
void flash_backward_keys(const FlashRows<Acc>& rows, const std::vector<std::pair<std::int64_t, std::int64_t>>& row_ranges,
                         const Acc* keys, const Acc* values, std::int64_t nk, std::int64_t d, std::int64_t dv,
                         Acc scale, Acc* dk, Acc* dvals) {
    if (nk <= 0 || row_ranges.empty()) return;
#pragma omp parallel for schedule(dynamic, 8)
    for (std::int64_t l = 0; l < nk; ++l) {
        const Acc* kl = keys + l * d;
        const Acc* vl = values + l * dv;
        Acc* dkl = dk + l * d;
        Acc* dvl = dvals + l * dv;
        for (const auto& [r0, r1] : row_ranges)
            for (std::int64_t r = r0; r < r1; ++r) {
                const Acc* qr = rows.q + r * d;
                const Acc* dor = rows.dout + r * dv;
                const Acc prob = merged_probability(qr, kl, d, scale, rows.lse[r]);
                const Acc ds = prob * (dot(dor, vl, dv) - rows.delta[r]);
                axpy(scale * ds, qr, dkl, d);
                axpy(prob, dor, dvl, dv);
            }
    }
}

// One block of exact keys for the query side: keys [count][d], values [count][dv].
template <typename Acc>
struct KeyBlock {
    const Acc *keys = nullptr, *values = nullptr;
    std::int64_t count = 0;
};

// Query side for rows [r0, r1) of `rows` over the key blocks (summed in the order given): dq[r] += s·Σ_l dS·k_l.
template <typename Acc>
void flash_backward_queries(const FlashRows<Acc>& rows, std::int64_t r0, std::int64_t r1,
                            const std::vector<KeyBlock<Acc>>& blocks, std::int64_t d, std::int64_t dv, Acc scale,
                            Acc* dq) {
    if (r1 <= r0 || blocks.empty()) return;
#pragma omp parallel for schedule(dynamic, 8)
    for (std::int64_t r = r0; r < r1; ++r) {
        const Acc* qr = rows.q + r * d;
        const Acc* dor = rows.dout + r * dv;
        Acc* dqr = dq + r * d;
        for (const KeyBlock<Acc>& b : blocks)
            for (std::int64_t l = 0; l < b.count; ++l) {
                const Acc* kl = b.keys + l * d;
                const Acc prob = merged_probability(qr, kl, d, scale, rows.lse[r]);
                const Acc ds = prob * (dot(dor, b.values + l * dv, dv) - rows.delta[r]);
                axpy(scale * ds, kl, dqr, d);
            }
    }
}

} // namespace vmonarch::detail
