// The CPU training forward (spec §3 keeping what §7 needs), per (batch, head): the same R-steps,
// L-steps and frame-0 recompute as the inference forward (src/cpu/monarch_cpu.cpp), writing every
// iteration's aL, cL, lse_R, the next iteration's aR, cR and the last Y into a saved-state block
// (layout: SavedLayout in src/core/backward_problem.hpp). Used by attention_training() and, into a
// temporary block, by the lean backward (src/cpu/monarch_backward_cpu.cpp). Exact key groups (spec §3b): the
// L-steps mask each row's exact key frames, R-steps of key frames no row fits are skipped (their state is 0),
// and the exact groups are merged into out and lse as in the inference forward.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/backward_problem.hpp"
#include "core/exact_frames.hpp"
#include "cpu/exact_groups_cpu.hpp"
#include "cpu/head_ops.hpp"

namespace vmonarch::detail {

// Pointers into one head's saved-state block.
template <typename Acc>
struct HeadState {
    std::vector<Acc*> aL, cL, lse_r, aR, cR; // per iteration; aR[0] = cR[0] = nullptr (aR = Q, cR = 1)
    Acc* y = nullptr;

    HeadState(Acc* base, const SavedLayout& l) {
        for (int r = 0; r < l.t; ++r) {
            aL.push_back(base + l.aL(r));
            cL.push_back(base + l.cL(r));
            lse_r.push_back(base + l.lse_r(r));
            aR.push_back(r == 0 ? nullptr : base + l.aR(r));
            cR.push_back(r == 0 ? nullptr : base + l.cR(r));
        }
        y = base + l.y();
    }
};

template <typename Acc>
class TrainingHead {
public:
    // q, k, v: this head as contiguous [N][d] / [N][dv] arrays; state: its block.
    TrainingHead(const MonarchProblem& p, const Acc* q, const Acc* k, const Acc* v, HeadState<Acc> state)
        : p_(p), T_(p.grid.T), HW_(p.grid.frame_tokens()), N_(p.grid.tokens()), d_(p.head_dim), dv_(p.value_dim),
          scale_(Acc(p.scale)), q_(q), k_(k), v_(v), s_(std::move(state)),
          exact_(p.grid.T, p.sink_frames, p.window_radius) {}

    // Runs the t alternating steps, the exact groups' merge (spec §3b) and the recompute into out ([N][dv])
    // and lse ([N]); extra: this head's valid extra keys (or null for none). fit_only: only the state is
    // wanted (the lean backward), so the merge and the recompute are skipped and out, lse hold the Monarch part.
    void run(Acc* out, Acc* lse, const ExtraHead<Acc>* extra = nullptr, bool fit_only = false) {
        const int t = p_.iterations;
        for (int it = 0; it < t; ++it) {
            r_step(it);
            l_step(it, out, lse);
        }
        if (fit_only) return;
        const ExtraHead<Acc> none;
        if (!extra) extra = &none;
        if (p_.has_exact_groups()) merge_exact_groups<Acc>(p_, exact_, q_, k_, v_, *extra, out, lse);
        if (p_.recompute_first_frame) {
            // spec §3, first-frame recompute: frame-0 queries get exact attention over all N keys and the valid
            // extra keys (spec §3b).
            ProgressCounter progress("training recompute frame 0", HW_);
            dense_rows<Acc>(q_, HW_, k_, v_, N_, d_, dv_, scale_, out, lse, &progress);
            merge_exact_keys<Acc>(q_, HW_, extra->keys.data(), extra->values.data(), extra->valid, d_, dv_, scale_,
                                  out, lse);
        }
    }

    // R-step row scale γ = s / max(cR, clamp) of token n (key frame k, position j) in iteration it (spec §7).
    static Acc row_scale(const MonarchProblem& p, const HeadState<Acc>& s, int it, std::int64_t n) {
        const Acc cr = it == 0 ? Acc(1) : s.cR[it][n];
        return Acc(p.scale) / std::max(cr, Acc(p.cr_clamp));
    }

private:
    // R-step (spec §3): x[l] = γ·⟨aR[k][j], K[k][l]⟩, R = softmax_l x, aL = s·Σ R·K,
    // cL = Σ R·x − logsumexp x, y = Σ R·V on the last step; keeps lse_R = logsumexp x (spec §7).
    void r_step(int it) {
        const bool last = it == p_.iterations - 1;
        const Acc* aR = it == 0 ? q_ : s_.aR[it];
        Acc* aL = s_.aL[it];
        Acc* cL = s_.cL[it];
        Acc* lse_r = s_.lse_r[it];
        ProgressCounter progress("training R-step", N_, it + 1, p_.iterations);
        ThreadScratch<Acc> scratch(HW_ + d_, "vmonarch training forward (cpu): R-step logits (HW + d per thread)");
#pragma omp parallel num_threads(scratch.threads())
        {
            Acc* const x = scratch.mine();
            Acc* const qs = x + HW_;
#pragma omp for schedule(dynamic, 16)
            for (std::int64_t n = 0; n < N_; ++n) {
                const std::int64_t k = n / HW_;
                if (!exact_.fitted(k)) { // spec §3b: no row fits key frame k; its state is never read
                    std::fill_n(aL + n * d_, d_, Acc(0));
                    cL[n] = lse_r[n] = Acc(0);
                    if (last) std::fill_n(s_.y + n * dv_, dv_, Acc(0));
                    progress.add();
                    continue;
                }
                const Acc* keys = k_ + k * HW_ * d_;
                const Acc* values = v_ + k * HW_ * dv_;
                const Acc gamma = row_scale(p_, s_, it, n);
                for (std::int64_t c = 0; c < d_; ++c) qs[c] = aR[n * d_ + c] * gamma;
                const RowFit<Acc> fit = fit_row(qs, keys, values, HW_, d_, dv_, scale_, x, aL + n * d_,
                                                last ? s_.y + n * dv_ : nullptr);
                lse_r[n] = fit.lse;
                cL[n] = fit.cl;
                progress.add();
            }
        }
    }

    // L-step (spec §3): z[k] = ⟨Q[i][j], aL[j][k]⟩ − cL[j][k], L = softmax_k z; then the next cR, aR,
    // or O[i][j] = Σ_k L·y[k][j] and lse = logsumexp z after the last one. Row i's exact key frames have
    // z = −inf (L = 0); a row without Monarch key frames has L = 0, O = 0 and lse = −inf (spec §3b).
    void l_step(int it, Acc* out, Acc* lse) {
        const bool last = it == p_.iterations - 1;
        const std::int64_t first_frame = (last && p_.recompute_first_frame) ? 1 : 0;
        const Acc* aL = s_.aL[it];
        const Acc* cL = s_.cL[it];
        Acc* aR_next = last ? nullptr : s_.aR[it + 1];
        Acc* cR_next = last ? nullptr : s_.cR[it + 1];
        ProgressCounter progress("training L-step", HW_, it + 1, p_.iterations);
        ThreadScratch<Acc> z_rows(T_ * T_, "vmonarch training forward (cpu): L-step logits (T x T per thread)");
#pragma omp parallel num_threads(z_rows.threads())
        {
            Acc* const z = z_rows.mine();
#pragma omp for schedule(static)
            for (std::int64_t j = 0; j < HW_; ++j) {
                for (std::int64_t i = first_frame; i < T_; ++i) {
                    const Acc* qi = q_ + (i * HW_ + j) * d_;
                    Acc* zi = z + i * T_;
                    constexpr Acc kNegInf = -std::numeric_limits<Acc>::infinity();
                    Acc mx = kNegInf;
                    for (std::int64_t k = 0; k < T_; ++k) {
                        const std::int64_t n = k * HW_ + j;
                        zi[k] = exact_.exact(i, k) ? kNegInf : dot(qi, aL + n * d_, d_) - cL[n];
                        mx = std::max(mx, zi[k]);
                    }
                    if (mx == kNegInf) { // no Monarch key frame in this row
                        std::fill(zi, zi + T_, Acc(0));
                        if (last) {
                            std::fill_n(out + (i * HW_ + j) * dv_, dv_, Acc(0));
                            lse[i * HW_ + j] = kNegInf;
                        }
                        continue;
                    }
                    const Acc row_lse = softmax_row(zi, T_, mx); // z now holds L
                    if (last) {
                        weighted_sum(zi, T_, s_.y + j * dv_, HW_ * dv_, out + (i * HW_ + j) * dv_, dv_);
                        lse[i * HW_ + j] = row_lse;
                    }
                }
                if (!last) { // positions j are disjoint across threads
                    for (std::int64_t k = 0; k < T_; ++k) {
                        const std::int64_t n = k * HW_ + j;
                        Acc* ar = aR_next + n * d_;
                        std::fill(ar, ar + d_, Acc(0));
                        Acc cr = 0;
                        for (std::int64_t i = 0; i < T_; ++i) {
                            const Acc w = z[std::size_t(i * T_ + k)];
                            cr += w;
                            axpy(w, q_ + (i * HW_ + j) * d_, ar, d_);
                        }
                        cR_next[n] = cr;
                    }
                }
                progress.add();
            }
        }
    }

    const MonarchProblem& p_;
    const std::int64_t T_, HW_, N_, d_, dv_;
    const Acc scale_;
    const Acc *q_, *k_, *v_;
    HeadState<Acc> s_;
    const ExactFrames exact_; // which key frames are exact for each query frame (spec §3b)
};

} // namespace vmonarch::detail
