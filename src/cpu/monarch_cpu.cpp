// VMonarch forward on the CPU (spec §3), exact algorithm, one (batch, head) at a time with threads over
// frames and positions. Memory per head: O(N·d) for q, k, v, aR, aL, y and the output, plus per thread one
// R-step row block's logits over one frame (16·HW) and one L-step query row's logits (T); neither L nor R
// nor any N×N or T×T matrix is ever stored. Every buffer is allocated outside the parallel regions (an
// allocation failure is an OutOfMemoryError, core/host_memory.hpp), and no exception leaves a region.
//
// Sizes: every count below (N·d, N·dv, T·HW, ...) is at most the element count of a validated input view,
// which api.cpp checked to fit in int64.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/exact_groups_cpu.hpp"
#include "cpu/head_ops.hpp"
#include "cpu/parallel.hpp"

namespace vmonarch::detail {
namespace {

template <typename Acc>
class MonarchHead {
public:
    MonarchHead(const MonarchProblem& p, std::int64_t b, std::int64_t h)
        : p_(p), T_(p.grid.T), HW_(p.grid.frame_tokens()), N_(p.grid.tokens()), d_(p.head_dim), dv_(p.value_dim),
          scale_(Acc(p.scale)), q_(load_head<Acc>(p.q, b, h, "vmonarch::attention (cpu): q of one head")),
          k_(load_head<Acc>(p.k, b, h, "vmonarch::attention (cpu): k of one head")),
          v_(load_head<Acc>(p.v, b, h, "vmonarch::attention (cpu): v of one head")),
          aL_(allocate_filled(N_ * d_, Acc(0), "vmonarch::attention (cpu): aL of one head (N x d)")),
          cL_(allocate_filled(N_, Acc(0), "vmonarch::attention (cpu): cL of one head (N)")),
          exact_(p.grid.T, p.sink_frames, p.window_radius) {}

    // Runs the t alternating steps and the recompute; writes out[b, :, h] and lse[b, h, :].
    void run(std::int64_t b, std::int64_t h) {
        const int t = p_.iterations;
        std::vector<Acc> out = allocate_filled(N_ * dv_, Acc(0), "vmonarch::attention (cpu): output of one head (N x dv)");
        std::vector<Acc> lse = allocate_filled(N_, Acc(0), "vmonarch::attention (cpu): lse of one head (N)");
        for (int it = 0; it < t; ++it) {
            const bool last = it == t - 1;
            r_step(it, last);
            l_step(it, last, out.data(), lse.data());
        }
        const ExtraHead<Acc> extra = load_extra_head<Acc>(p_.extra, b, h);
        if (p_.has_exact_groups()) // spec §3b: exact key groups merged into the Monarch rows by log-sum-exp
            merge_exact_groups<Acc>(p_, exact_, q_.data(), k_.data(), v_.data(), extra, out.data(), lse.data());
        if (p_.recompute_first_frame) {
            // spec §3, first-frame recompute: frame-0 queries get exact attention over all N keys (and the
            // valid extra keys, spec §3b).
            ProgressCounter progress("recompute frame 0", HW_);
            dense_rows<Acc>(q_.data(), HW_, k_.data(), v_.data(), N_, d_, dv_, scale_, out.data(), lse.data(),
                            &progress);
            merge_exact_keys<Acc>(q_.data(), HW_, extra.keys.data(), extra.values.data(), extra.valid, d_, dv_,
                                  scale_, out.data(), lse.data());
        }
        store_head_rows(p_.out, b, h, out.data(), 0, N_);
        if (p_.lse) store_lse_rows(*p_.lse, b, h, lse.data(), 0, N_);
    }

private:
    // R-step (spec §3): for key frame k and position j, x[l] = s·⟨aR[k][j], K[k][l]⟩ / max(cR[k][j], clamp),
    // R = softmax_l x, aL = s·Σ R·K, cL = Σ R·x − logsumexp x (= Σ R log R), y = Σ R·V on the last step.
    void r_step(int it, bool last) {
        constexpr std::int64_t kRows = 16;
        const std::int64_t blocks_per_frame = (HW_ + kRows - 1) / kRows, blocks = T_ * blocks_per_frame;
        const Acc* aR = it == 0 ? q_.data() : aR_.data(); // first step: L = identity, aR = Q, cR = 1
        if (last) assign_filled(y_, N_ * dv_, Acc(0), "vmonarch::attention (cpu): y of one head (N x dv)");
        ProgressCounter progress("R-step", blocks, it + 1, p_.iterations);
        ThreadScratch<Acc> x_rows(kRows * HW_, "vmonarch::attention (cpu): R-step logits (16 x HW per thread)");
        ThreadScratch<Acc> q_rows(kRows * d_, "vmonarch::attention (cpu): R-step queries (16 x d per thread)");
        RegionErrors errors;
#pragma omp parallel num_threads(x_rows.threads())
        {
            Acc* const x = x_rows.mine();
            Acc* const qs = q_rows.mine();
#pragma omp for schedule(dynamic)
            for (std::int64_t blk = 0; blk < blocks; ++blk) errors.guard([&] {
                const std::int64_t k = blk / blocks_per_frame, j0 = (blk % blocks_per_frame) * kRows;
                const std::int64_t rows = std::min(kRows, HW_ - j0);
                if (!exact_.fitted(k)) { // spec §3b: no query frame fits this key frame
                    progress.add();
                    return;
                }
                const Acc* keys = k_.data() + k * HW_ * d_;
                const Acc* values = v_.data() + k * HW_ * dv_;
                for (std::int64_t r = 0; r < rows; ++r) {
                    const std::int64_t n = k * HW_ + j0 + r;
                    const Acc cr = it == 0 ? Acc(1) : cR_[std::size_t(n)];
                    const Acc row_scale = scale_ / std::max(cr, Acc(p_.cr_clamp));
                    for (std::int64_t c = 0; c < d_; ++c) qs[r * d_ + c] = aR[n * d_ + c] * row_scale;
                }
                for (std::int64_t r = 0; r < rows; ++r) {
                    const std::int64_t n = k * HW_ + j0 + r;
                    cL_[std::size_t(n)] = fit_row(qs + r * d_, keys, values, HW_, d_, dv_, scale_, x + r * HW_,
                                                  aL_.data() + n * d_, last ? y_.data() + n * dv_ : nullptr).cl;
                }
                progress.add();
            });
        }
        errors.rethrow_first();
    }

    // L-step (spec §3): for position j and query frame i, z[k] = ⟨Q[i][j], aL[j][k]⟩ − cL[j][k],
    // L = softmax_k z; then cR, aR for the next R-step, or O[i][j] = Σ_k L·y[k][j] and lse = logsumexp z.
    // Rows are streamed: query row (i, j) is fitted and used at once, cR[k][j] = Σ_i L[j][i][k] and
    // aR[k][j] = Σ_i L[j][i][k]·Q[i][j] accumulate over i in place, so a thread holds T logits, not T×T.
    void l_step(int it, bool last, Acc* out, Acc* lse) {
        if (!last) {
            assign_filled(aR_, N_ * d_, Acc(0), "vmonarch::attention (cpu): aR of one head (N x d)");
            assign_filled(cR_, N_, Acc(0), "vmonarch::attention (cpu): cR of one head (N)");
        }
        const std::int64_t first_frame = (last && p_.recompute_first_frame) ? 1 : 0;
        ProgressCounter progress("L-step", HW_, it + 1, p_.iterations);
        ThreadScratch<Acc> z_rows(T_, "vmonarch::attention (cpu): L-step logits (T per thread)");
        RegionErrors errors;
#pragma omp parallel num_threads(z_rows.threads())
        {
            Acc* const zi = z_rows.mine(); // one query row's logits z, then its L row
#pragma omp for schedule(static)
            for (std::int64_t j = 0; j < HW_; ++j) errors.guard([&] {
                for (std::int64_t i = first_frame; i < T_; ++i) {
                    const Acc* qi = q_.data() + (i * HW_ + j) * d_;
                    Acc mx = -std::numeric_limits<Acc>::infinity();
                    for (std::int64_t k = 0; k < T_; ++k) {
                        const std::int64_t n = k * HW_ + j;
                        // spec §3b: the row's exact key frames leave its fit (z = -inf, L = 0).
                        zi[k] = exact_.exact(i, k) ? -std::numeric_limits<Acc>::infinity()
                                                   : dot(qi, aL_.data() + n * d_, d_) - cL_[std::size_t(n)];
                        mx = std::max(mx, zi[k]);
                    }
                    if (mx == -std::numeric_limits<Acc>::infinity()) { // no Monarch key frame: L row = 0
                        if (last) {
                            std::fill(out + (i * HW_ + j) * dv_, out + (i * HW_ + j + 1) * dv_, Acc(0));
                            lse[i * HW_ + j] = mx;
                        }
                        continue; // adds nothing to cR, aR
                    }
                    const Acc row_lse = softmax_row(zi, T_, mx); // z now holds L
                    if (last) {
                        weighted_sum(zi, T_, y_.data() + j * dv_, HW_ * dv_, out + (i * HW_ + j) * dv_, dv_);
                        lse[i * HW_ + j] = row_lse;
                    } else { // positions j are disjoint across threads: no races on aR, cR
                        for (std::int64_t k = 0; k < T_; ++k) {
                            const std::int64_t n = k * HW_ + j;
                            cR_[std::size_t(n)] += zi[k];
                            axpy(zi[k], qi, aR_.data() + n * d_, d_);
                        }
                    }
                }
                progress.add();
            });
        }
        errors.rethrow_first();
    }

    const MonarchProblem& p_;
    const std::int64_t T_, HW_, N_, d_, dv_;
    const Acc scale_;
    std::vector<Acc> q_, k_, v_;         // this head, contiguous [N][d] (frame-major tokens)
    std::vector<Acc> aR_, cR_, aL_, cL_; // indexed by token k·HW + j of the key frame k (spec §3)
    std::vector<Acc> y_;
    const ExactFrames exact_;            // which key frames are exact for each query frame (spec §3b)
};

template <typename Acc>
void run_monarch(const MonarchProblem& p) {
    for (std::int64_t b = 0; b < p.batch; ++b)
        for (std::int64_t h = 0; h < p.heads; ++h) {
            MonarchHead<Acc> head(p, b, h);
            head.run(b, h);
            report_progress("heads", double(b * p.heads + h + 1) / double(p.batch * p.heads));
        }
}

template <typename Acc>
void run_dense(const AttentionProblem& p) {
    for (std::int64_t b = 0; b < p.batch; ++b)
        for (std::int64_t h = 0; h < p.heads; ++h) {
            const auto q = load_head<Acc>(p.q, b, h, "vmonarch::dense_attention (cpu): q of one head");
            const auto k = load_head<Acc>(p.k, b, h, "vmonarch::dense_attention (cpu): k of one head");
            const auto v = load_head<Acc>(p.v, b, h, "vmonarch::dense_attention (cpu): v of one head");
            std::vector<Acc> out = allocate_filled(p.q_tokens * p.value_dim, Acc(0),
                                                   "vmonarch::dense_attention (cpu): output of one head (N x dv)");
            std::vector<Acc> lse = allocate_filled(p.q_tokens, Acc(0), "vmonarch::dense_attention (cpu): lse of one head (N)");
            ProgressCounter progress("dense head", p.q_tokens, b * p.heads + h + 1, p.batch * p.heads);
            dense_rows<Acc>(q.data(), p.q_tokens, k.data(), v.data(), p.kv_tokens, p.head_dim, p.value_dim,
                            Acc(p.scale), out.data(), lse.data(), &progress);
            store_head_rows(p.out, b, h, out.data(), 0, p.q_tokens);
            if (p.lse) store_lse_rows(*p.lse, b, h, lse.data(), 0, p.q_tokens);
        }
}

} // namespace

void cpu_monarch_attention(const MonarchProblem& p) {
    if (p.q.dtype == DType::f64) {
        run_monarch<double>(p);
    } else {
        run_monarch<float>(p);
    }
}

void cpu_dense_attention(const AttentionProblem& p) {
    if (p.q.dtype == DType::f64) {
        run_dense<double>(p);
    } else {
        run_dense<float>(p);
    }
}

} // namespace vmonarch::detail
