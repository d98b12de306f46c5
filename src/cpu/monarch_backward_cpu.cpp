// VMonarch backward on the CPU (spec §7), exact, one (batch, head) at a time; one method per step of
// the spec. Threads run over positions j (L-steps) and key frames k (R-steps, recompute), and every
// accumulator has one owner, so the result does not depend on the thread count (bitwise repeatable).
// Memory per head: the saved state (or, in lean mode, a temporary one from rerunning the training
// forward, src/cpu/monarch_train_cpu.hpp) plus O(N·d) gradients; no N×N or HW×HW matrix is stored.
// Exact key groups (spec §3b) and the text queries of a joint sequence (spec §3c) add FlashAttention backwards
// against the merged lse (src/cpu/exact_backward_cpu.hpp); the Monarch part's last L-step then weighs its
// rows by exp(z − lse) instead of softmax(z), which folds the merge weights' gradient in.
#include <algorithm>
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "cpu/exact_backward_cpu.hpp"
#include "cpu/monarch_train_cpu.hpp"

namespace vmonarch::detail {
namespace {

template <typename Acc>
std::vector<Acc> load_lse_head(const LseView& lse, std::int64_t b, std::int64_t h, std::int64_t n) {
    std::vector<Acc> dst(static_cast<std::size_t>(n));
    for (std::int64_t r = 0; r < n; ++r) {
        const std::int64_t off = b * lse.strides[0] + h * lse.strides[1] + r * lse.strides[2];
        dst[std::size_t(r)] = lse.dtype == DType::f64 ? Acc(static_cast<const double*>(lse.data)[off])
                                                      : Acc(static_cast<const float*>(lse.data)[off]);
    }
    return dst;
}

template <typename Acc>
class MonarchBackwardHead {
public:
    MonarchBackwardHead(const BackwardProblem& p, std::int64_t b, std::int64_t h, Acc* saved_block)
        : p_(p), T_(p.grid.T), HW_(p.grid.frame_tokens()), N_(p.grid.tokens()), d_(p.head_dim), dv_(p.value_dim),
          t_(p.iterations), scale_(Acc(p.scale)), q_(load_head<Acc>(p.q, b, h, "vmonarch backward (cpu): q of one head")),
          k_(load_head<Acc>(p.k, b, h, "vmonarch backward (cpu): k of one head")),
          v_(load_head<Acc>(p.v, b, h, "vmonarch backward (cpu): v of one head")),
          o_(load_head<Acc>(p.out, b, h, "vmonarch backward (cpu): out of one head")),
          do_(load_head<Acc>(p.dout, b, h, "vmonarch backward (cpu): dout of one head")),
          lse_(load_lse_head<Acc>(*p.lse, b, h, N_)),
          dlse_(p.dlse ? load_lse_head<Acc>(*p.dlse, b, h, N_) : std::vector<Acc>(std::size_t(N_), Acc(0))),
          block_(saved_block ? std::vector<Acc>() : std::vector<Acc>(std::size_t(p.layout.per_head()))),
          s_(saved_block ? saved_block : block_.data(), p.layout), exact_(p.grid.T, p.sink_frames, p.window_radius),
          extra_(load_extra_head<Acc>(p.extra, b, h)) {
        if (!saved_block) { // lean mode: rerun the training forward's fit into the temporary block
            std::vector<Acc> out(static_cast<std::size_t>(N_ * dv_)), lse(static_cast<std::size_t>(N_));
            TrainingHead<Acc>(p, q_.data(), k_.data(), v_.data(), s_).run(out.data(), lse.data(), nullptr, true);
        }
        const auto nd = std::size_t(N_ * d_), ndv = std::size_t(N_ * dv_);
        dq_.assign(nd, Acc(0)), dk_.assign(nd, Acc(0)), dv_acc_.assign(ndv, Acc(0));
        delta_.assign(std::size_t(N_), Acc(0));
        daL_.assign(nd, Acc(0)), dcL_.assign(std::size_t(N_), Acc(0)), dY_.assign(ndv, Acc(0));
        daR_.assign(nd, Acc(0)), dcR_.assign(std::size_t(N_), Acc(0));
        if (p.extra.present) { // all L rows: the padded ones stay 0
            dk_extra_.assign(std::size_t(p.extra.tokens * d_), Acc(0));
            dv_extra_.assign(std::size_t(p.extra.tokens * dv_), Acc(0));
        }
        if (p.text.present) {
            const std::int64_t L = p.text.q.tokens();
            tq_ = load_head<Acc>(p.text.q, b, h, "vmonarch backward (cpu): text queries of one head");
            tdo_ = load_head<Acc>(p.text.dout, b, h, "vmonarch backward (cpu): text queries' dout of one head");
            tlse_ = load_lse_head<Acc>(p.text.lse, b, h, L);
            const std::vector<Acc> to = load_head<Acc>(p.text.out, b, h, "vmonarch backward (cpu): text queries' out");
            const std::vector<Acc> tdlse =
                p.text.dlse ? load_lse_head<Acc>(*p.text.dlse, b, h, L) : std::vector<Acc>(std::size_t(L), Acc(0));
            tdelta_.assign(std::size_t(L), Acc(0));
            for (std::int64_t r = 0; r < L; ++r)
                tdelta_[std::size_t(r)] = dot(tdo_.data() + r * dv_, to.data() + r * dv_, dv_) - tdlse[std::size_t(r)];
            tdq_.assign(std::size_t(L * d_), Acc(0));
        }
    }

    void run(std::int64_t b, std::int64_t h) {
        preprocess();
        if (p_.recompute_first_frame) recompute_backward();
        if (exact_.any()) exact_frames_backward();
        if (extra_.valid > 0) extra_keys_backward();
        if (p_.text.present) text_queries_backward();
        for (int it = t_ - 1; it >= 0; --it) {
            if (it == t_ - 1) {
                last_l_step_backward();
            } else {
                earlier_l_step_backward(it);
            }
            r_step_backward(it);
        }
        finalize(b, h);
    }

private:
    // §7 step 1: D = ⟨dO, O⟩ − dlse per row.
    void preprocess() {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N_; ++n)
            delta_[n] = dot(do_.data() + n * dv_, o_.data() + n * dv_, dv_) - dlse_[n];
    }

    // §7 step 2: FlashAttention backward of the HW frame-0 queries over all N keys, with P recomputed
    // from the saved row LSE: dS = P∘(⟨dO, V⟩ − D), dq += s·dS·K, dk += s·dSᵀ·q, dv += Pᵀ·dO. One task
    // per key frame; its dq part goes to its own buffer, summed in frame order afterwards.
    void recompute_backward() {
        std::vector<Acc> dq_part = allocate_filled(T_ * HW_ * d_, Acc(0), "vmonarch backward (cpu): recompute dq parts (N x d)");
        ProgressCounter progress("backward recompute frame 0", T_);
#pragma omp parallel for schedule(dynamic)
        for (std::int64_t kf = 0; kf < T_; ++kf) {
            for (std::int64_t j = 0; j < HW_; ++j) {
                const Acc* qj = q_.data() + j * d_;
                const Acc* doj = do_.data() + j * dv_;
                Acc* part = dq_part.data() + (kf * HW_ + j) * d_;
                for (std::int64_t l = 0; l < HW_; ++l) {
                    const std::int64_t m = kf * HW_ + l;
                    const Acc* km = k_.data() + m * d_;
                    const Acc prob = std::exp(scale_ * dot(qj, km, d_) - lse_[j]);
                    const Acc ds = prob * (dot(doj, v_.data() + m * dv_, dv_) - delta_[j]);
                    axpy(scale_ * ds, km, part, d_);
                    axpy(scale_ * ds, qj, dk_.data() + m * d_, d_);
                    axpy(prob, doj, dv_acc_.data() + m * dv_, dv_);
                }
            }
            progress.add();
        }
#pragma omp parallel for schedule(static)
        for (std::int64_t j = 0; j < HW_; ++j)
            for (std::int64_t kf = 0; kf < T_; ++kf) axpy(Acc(1), dq_part.data() + (kf * HW_ + j) * d_, dq_.data() + j * d_, d_);
    }

    // L = softmax_k z of query (i, j) in iteration it, z[k] = ⟨Q[i][j], aL[k][j]⟩ − cL[k][j] (spec §3); the row's
    // exact key frames have z = −inf and a row without Monarch key frames gets L = 0 (spec §3b). merged: the
    // last L-step with exact groups, whose rows are weighed by w_M: w_M·L[k] = exp(z[k] − lse) with the
    // merged lse (see exact_backward_cpu.hpp).
    void l_row(int it, std::int64_t i, std::int64_t j, Acc* l, bool merged = false) const {
        constexpr Acc kNegInf = -std::numeric_limits<Acc>::infinity();
        const Acc* qi = q_.data() + (i * HW_ + j) * d_;
        Acc mx = kNegInf;
        for (std::int64_t k = 0; k < T_; ++k) {
            const std::int64_t n = k * HW_ + j;
            l[k] = exact_.exact(i, k) ? kNegInf : dot(qi, s_.aL[it] + n * d_, d_) - s_.cL[it][n];
            mx = std::max(mx, l[k]);
        }
        const Acc row_lse = lse_[std::size_t(i * HW_ + j)];
        if (mx == kNegInf || (merged && row_lse == kNegInf)) {
            std::fill(l, l + T_, Acc(0));
            return;
        }
        if (merged) {
            for (std::int64_t k = 0; k < T_; ++k) l[k] = std::exp(l[k] - row_lse);
            return;
        }
        Acc sum = 0;
        for (std::int64_t k = 0; k < T_; ++k) sum += (l[k] = std::exp(l[k] - mx));
        const Acc inv = Acc(1) / sum;
        for (std::int64_t k = 0; k < T_; ++k) l[k] *= inv;
    }

    // §7 step 3 (last L-step, position j): dL = ⟨dO_i, Y_k⟩, dY_k = Σ_i L·dO_i, dZ = L∘(dL − D); then step 4.
    // Frame-0 queries are skipped when the recompute replaced their Monarch output. With exact groups L is
    // w_M·L = exp(z − lse): dO_M = w_M·dO and D_M = ⟨dO_M, O_M⟩ − dF = w_M·D (spec §3b, §7).
    void last_l_step_backward() {
        const int it = t_ - 1;
        const std::int64_t first = p_.recompute_first_frame ? 1 : 0;
        const bool merged = p_.has_exact_groups();
        ProgressCounter progress("backward L-step", HW_, it + 1, t_);
        ThreadScratch<Acc> dz_rows(T_ * T_, "vmonarch backward (cpu): L-step dZ (T x T per thread)");
#pragma omp parallel num_threads(dz_rows.threads())
        {
            Acc* const dz = dz_rows.mine();
#pragma omp for schedule(static)
            for (std::int64_t j = 0; j < HW_; ++j) {
                for (std::int64_t k = 0; k < T_; ++k) std::fill_n(dY_.data() + (k * HW_ + j) * dv_, dv_, Acc(0));
                std::fill(dz, dz + T_ * T_, Acc(0));
                for (std::int64_t i = first; i < T_; ++i) {
                    Acc* l = dz + i * T_;
                    l_row(it, i, j, l, merged);
                    const Acc* doi = do_.data() + (i * HW_ + j) * dv_;
                    for (std::int64_t k = 0; k < T_; ++k) {
                        const std::int64_t n = k * HW_ + j;
                        const Acc dl = dot(doi, s_.y + n * dv_, dv_);
                        axpy(l[k], doi, dY_.data() + n * dv_, dv_);
                        l[k] = l[k] * (dl - delta_[i * HW_ + j]);
                    }
                }
                l_step_parameter_grads(it, j, dz);
                progress.add();
            }
        }
    }

    // §7 step 6 (L-step it < t − 1, position j), given daR, dcR of iteration it + 1:
    // dL = ⟨Q_i, daR_k⟩ + dcR_k, dQ_i += Σ_k L·daR_k, dZ = L∘(dL − Σ_k L·dL); then step 4.
    void earlier_l_step_backward(int it) {
        ProgressCounter progress("backward L-step", HW_, it + 1, t_);
        ThreadScratch<Acc> dz_rows(T_ * T_ + T_, "vmonarch backward (cpu): L-step dZ, dL (T x T + T per thread)");
#pragma omp parallel num_threads(dz_rows.threads())
        {
            Acc* const dz = dz_rows.mine();
            Acc* const dl = dz + T_ * T_;
#pragma omp for schedule(static)
            for (std::int64_t j = 0; j < HW_; ++j) {
                for (std::int64_t i = 0; i < T_; ++i) {
                    Acc* l = dz + i * T_;
                    l_row(it, i, j, l);
                    const Acc* qi = q_.data() + (i * HW_ + j) * d_;
                    Acc* dqi = dq_.data() + (i * HW_ + j) * d_;
                    Acc dl_mean = 0;
                    for (std::int64_t k = 0; k < T_; ++k) {
                        const std::int64_t n = k * HW_ + j;
                        dl[k] = dot(qi, daR_.data() + n * d_, d_) + dcR_[n];
                        axpy(l[k], daR_.data() + n * d_, dqi, d_);
                        dl_mean += l[k] * dl[k];
                    }
                    for (std::int64_t k = 0; k < T_; ++k) l[k] = l[k] * (dl[k] - dl_mean);
                }
                l_step_parameter_grads(it, j, dz);
                progress.add();
            }
        }
    }

    // §7 step 4 (every L-step, position j, dZ[i][k] given): dQ_i += Σ_k dZ·aL_k; daL_k = Σ_i dZ·Q_i;
    // dcL_k = −Σ_i dZ (0 for the paper's gradient, which treats cL as a constant).
    void l_step_parameter_grads(int it, std::int64_t j, const Acc* dz) {
        for (std::int64_t i = 0; i < T_; ++i) {
            Acc* dqi = dq_.data() + (i * HW_ + j) * d_;
            for (std::int64_t k = 0; k < T_; ++k) axpy(dz[i * T_ + k], s_.aL[it] + (k * HW_ + j) * d_, dqi, d_);
        }
        for (std::int64_t k = 0; k < T_; ++k) {
            const std::int64_t n = k * HW_ + j;
            Acc* dal = daL_.data() + n * d_;
            std::fill_n(dal, d_, Acc(0));
            Acc dcl = 0;
            for (std::int64_t i = 0; i < T_; ++i) {
                axpy(dz[i * T_ + k], q_.data() + (i * HW_ + j) * d_, dal, d_);
                dcl -= dz[i * T_ + k];
            }
            dcL_[n] = p_.entropy_grad ? dcl : Acc(0);
        }
    }

    // §7 step 5 (R-step it, one task per key frame k, rows j, keys l of frame k), P recomputed from the
    // saved aR, γ and lse_R: D_R = ⟨daL, aL⟩ + dcL·cL + [last]·⟨dY, Y⟩,
    // dP = s·⟨daL, K_l⟩ + [last]·⟨dY, V_l⟩ + dcL·(X − lse_R), dX = P∘(dP − D_R),
    // dK_l += s·P·daL + γ·dX·aR, dV_l += [last]·P·dY, daR = γ·Σ_l dX·K_l, and
    // dcR = −⟨aR, daR⟩/cR where cR > clamp (0 where clamped). In iteration 1, aR = Q: daR goes to dQ.
    void r_step_backward(int it) {
        const bool last = it == t_ - 1;
        const Acc* aR = it == 0 ? q_.data() : s_.aR[it];
        const Acc clamp = Acc(p_.cr_clamp);
        ProgressCounter progress("backward R-step", T_, it + 1, t_);
#pragma omp parallel for schedule(dynamic)
        for (std::int64_t k = 0; k < T_; ++k) {
            if (!exact_.fitted(k)) { // spec §3b: no row fits key frame k, nothing flows through its R-steps
                progress.add();
                continue;
            }
            const Acc* keys = k_.data() + k * HW_ * d_;
            const Acc* values = v_.data() + k * HW_ * dv_;
            Acc* dkeys = dk_.data() + k * HW_ * d_;
            Acc* dvalues = dv_acc_.data() + k * HW_ * dv_;
            for (std::int64_t j = 0; j < HW_; ++j) {
                const std::int64_t n = k * HW_ + j;
                const Acc gamma = TrainingHead<Acc>::row_scale(p_, s_, it, n);
                const Acc* ar = aR + n * d_;
                const Acc* dal = daL_.data() + n * d_;
                const Acc* dy = dY_.data() + n * dv_;
                const Acc lse_r = s_.lse_r[it][n];
                const Acc dcl = dcL_[n];
                const Acc d_r = dot(dal, s_.aL[it] + n * d_, d_) + dcl * s_.cL[it][n] +
                                (last ? dot(dy, s_.y + n * dv_, dv_) : Acc(0));
                Acc* dar = daR_.data() + n * d_;
                std::fill_n(dar, d_, Acc(0));
                for (std::int64_t l = 0; l < HW_; ++l) {
                    const Acc* kl = keys + l * d_;
                    const Acc x = gamma * dot(ar, kl, d_);
                    const Acc prob = std::exp(x - lse_r);
                    Acc dp = scale_ * dot(dal, kl, d_) + dcl * (x - lse_r);
                    if (last) dp += dot(dy, values + l * dv_, dv_);
                    const Acc dx = prob * (dp - d_r);
                    axpy(gamma * dx, kl, dar, d_);
                    axpy(scale_ * prob, dal, dkeys + l * d_, d_);
                    axpy(gamma * dx, ar, dkeys + l * d_, d_);
                    if (last) axpy(prob, dy, dvalues + l * dv_, dv_);
                }
                if (it == 0) {
                    axpy(Acc(1), dar, dq_.data() + n * d_, d_);
                } else {
                    const Acc cr = s_.cR[it][n];
                    dcR_[n] = cr > clamp ? -dot(ar, dar, d_) / cr : Acc(0); // strict: 0 at cR = clamp
                }
            }
            progress.add();
        }
    }

    FlashRows<Acc> video_rows() const { return {q_.data(), do_.data(), lse_.data(), delta_.data()}; }

    // Exact key frames (spec §3b): rows of query frames i >= first (frame 0 is recomputed over all keys when the
    // recompute is on) against the keys of their exact frames E(i), a FlashAttention backward with the merged
    // lse. Key side per key frame k (rows of every query frame that has k exact), then the query side per frame.
    void exact_frames_backward() {
        const std::int64_t first = p_.recompute_first_frame ? 1 : 0;
        const FlashRows<Acc> rows = video_rows();
        ProgressCounter progress("backward exact key frames", 2 * T_ - first);
        std::vector<std::pair<std::int64_t, std::int64_t>> row_ranges;
        for (std::int64_t k = 0; k < T_; ++k) {
            row_ranges.clear();
            for (std::int64_t i = first; i < T_; ++i) {
                if (!exact_.exact(i, k)) continue;
                if (!row_ranges.empty() && row_ranges.back().second == i * HW_) {
                    row_ranges.back().second += HW_;
                } else {
                    row_ranges.push_back({i * HW_, (i + 1) * HW_});
                }
            }
            flash_backward_keys<Acc>(rows, row_ranges, k_.data() + k * HW_ * d_, v_.data() + k * HW_ * dv_, HW_, d_,
                                     dv_, scale_, dk_.data() + k * HW_ * d_, dv_acc_.data() + k * HW_ * dv_);
            progress.add();
        }
        std::vector<KeyBlock<Acc>> blocks;
        for (std::int64_t i = first; i < T_; ++i) {
            std::pair<std::int64_t, std::int64_t> ranges[2];
            blocks.clear();
            for (int a = 0, n = exact_.ranges(i, ranges); a < n; ++a)
                blocks.push_back({k_.data() + ranges[a].first * HW_ * d_, v_.data() + ranges[a].first * HW_ * dv_,
                                  (ranges[a].second - ranges[a].first) * HW_});
            flash_backward_queries<Acc>(rows, i * HW_, (i + 1) * HW_, blocks, d_, dv_, scale_, dq_.data());
            progress.add();
        }
    }

    // Extra (text) keys (spec §3b): in the exact group of every video query row (frame 0's included, also when
    // the recompute is on, which attends them too).
    void extra_keys_backward() {
        const FlashRows<Acc> rows = video_rows();
        flash_backward_keys<Acc>(rows, {{0, N_}}, extra_.keys.data(), extra_.values.data(), extra_.valid, d_, dv_,
                                 scale_, dk_extra_.data(), dv_extra_.data());
        flash_backward_queries<Acc>(rows, 0, N_, {{extra_.keys.data(), extra_.values.data(), extra_.valid}}, d_, dv_,
                                    scale_, dq_.data());
    }

    // Text queries of a joint sequence (spec §3c): exact attention over every video key and the valid text keys,
    // their FlashAttention backward adding to the video keys' and the text keys' gradients.
    void text_queries_backward() {
        const std::int64_t L = p_.text.q.tokens();
        const FlashRows<Acc> rows{tq_.data(), tdo_.data(), tlse_.data(), tdelta_.data()};
        flash_backward_keys<Acc>(rows, {{0, L}}, k_.data(), v_.data(), N_, d_, dv_, scale_, dk_.data(), dv_acc_.data());
        flash_backward_keys<Acc>(rows, {{0, L}}, extra_.keys.data(), extra_.values.data(), extra_.valid, d_, dv_,
                                 scale_, dk_extra_.data(), dv_extra_.data());
        flash_backward_queries<Acc>(rows, 0, L,
                                    {{k_.data(), v_.data(), N_}, {extra_.keys.data(), extra_.values.data(), extra_.valid}},
                                    d_, dv_, scale_, tdq_.data());
    }

    // §7 finalize: the gradients in the caller's views and dtype.
    void finalize(std::int64_t b, std::int64_t h) {
        store_head_rows(p_.dq, b, h, dq_.data(), 0, N_);
        store_head_rows(p_.dk, b, h, dk_.data(), 0, N_);
        store_head_rows(p_.dv, b, h, dv_acc_.data(), 0, N_);
        if (p_.extra.present) {
            store_head_rows(p_.dk_extra, b, h, dk_extra_.data(), 0, p_.extra.tokens);
            store_head_rows(p_.dv_extra, b, h, dv_extra_.data(), 0, p_.extra.tokens);
        }
        if (p_.text.present) store_head_rows(p_.text.dq, b, h, tdq_.data(), 0, p_.text.q.tokens());
    }

    const BackwardProblem& p_;
    const std::int64_t T_, HW_, N_, d_, dv_;
    const int t_;
    const Acc scale_;
    std::vector<Acc> q_, k_, v_, o_, do_, lse_, dlse_; // this head, contiguous, frame-major tokens
    std::vector<Acc> block_;                            // lean mode: the rerun forward's state
    HeadState<Acc> s_;
    const ExactFrames exact_;                           // exact key frames of each query frame (spec §3b)
    const ExtraHead<Acc> extra_;                        // this head's valid extra keys
    std::vector<Acc> dk_extra_, dv_extra_;              // their gradients, all L rows
    std::vector<Acc> tq_, tdo_, tlse_, tdelta_, tdq_;   // joint sequences: the text queries
    std::vector<Acc> dq_, dk_, dv_acc_, delta_;
    std::vector<Acc> daL_, dcL_, dY_, daR_, dcR_;       // per token of the key frame (k·HW + j)
};

template <typename Acc>
void run_backward(const BackwardProblem& p) {
    Acc* blocks = p.saved ? reinterpret_cast<Acc*>(const_cast<std::byte*>(static_cast<const std::byte*>(p.saved)) +
                                                   kSavedHeaderBytes)
                          : nullptr;
    for (std::int64_t b = 0; b < p.batch; ++b)
        for (std::int64_t h = 0; h < p.heads; ++h) {
            try {
                MonarchBackwardHead<Acc> head(p, b, h, blocks ? blocks + (b * p.heads + h) * p.layout.per_head() : nullptr);
                head.run(b, h);
            } catch (const std::bad_alloc&) {
                // One head's arrays: inputs and gradients (about 13 of N x max(d, dv)), the recompute's dq
                // parts (N x d) and, in lean mode, the rerun forward's state.
                const std::int64_t values = 14 * p.q_tokens * std::max(p.head_dim, p.value_dim) +
                                            (p.saved ? 0 : p.layout.per_head());
                throw OutOfMemoryError("vmonarch::attention_backward: could not allocate the host memory of one head "
                                       "(about " + std::to_string(values * std::int64_t(sizeof(Acc))) + " bytes" +
                                       (p.saved ? "" : ", lean mode: the rerun forward's state included") + ")");
            }
            report_progress("heads", double(b * p.heads + h + 1) / double(p.batch * p.heads));
        }
}

} // namespace

void cpu_monarch_backward(const BackwardProblem& p) {
    if (p.q.dtype == DType::f64) {
        run_backward<double>(p);
    } else {
        run_backward<float>(p);
    }
}

} // namespace vmonarch::detail
