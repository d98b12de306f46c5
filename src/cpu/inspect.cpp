// Explicit construction of the Monarch matrix (spec §2–§3) in fp64, independent of the fast path:
// L is stored as HW blocks of T×T, R rows are rebuilt from L on demand, the entropy is Σ R log R
// computed directly. Used for pictures (rows of A) and tests (row sums, M·V, objective trace).
// Memory: O(N·d + HW·T²) per call (the L blocks), every size checked; allocation failures are
// OutOfMemoryError, and no exception leaves a parallel region.
#include "vmonarch/inspect.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "core/host_memory.hpp"
#include "cpu/head_ops.hpp"
#include "cpu/parallel.hpp"

namespace vmonarch {
namespace {

double xlogx(double p) { return p > 0 ? p * std::log(p) : 0.0; }

void softmax_inplace(double* x, std::int64_t n) {
    double mx = -std::numeric_limits<double>::infinity(), sum = 0;
    for (std::int64_t c = 0; c < n; ++c) mx = std::max(mx, x[c]);
    for (std::int64_t c = 0; c < n; ++c) sum += (x[c] = std::exp(x[c] - mx));
    for (std::int64_t c = 0; c < n; ++c) x[c] /= sum;
}

void check_cpu_head(const char* fn, const TensorView& q, const TensorView& k, std::int64_t b, std::int64_t h) {
    const std::pair<const char*, const TensorView*> views[2] = {{"q", &q}, {"k", &k}};
    for (auto [name, t] : views) {
        if (t->data == nullptr) throw ArgumentError(name, std::string(fn) + ": argument '" + name + ".data' is null");
        if (t->device != Device::cpu)
            throw ArgumentError(name, std::string(fn) + ": argument '" + name + ".device' is " + to_string(t->device) +
                                          ", expected cpu");
        if (t->strides[3] != 1)
            throw ArgumentError(name, std::string(fn) + ": argument '" + name + ".strides[3]' is " +
                                          std::to_string(t->strides[3]) + ", expected 1");
        for (int a = 0; a < 4; ++a)
            if (t->shape[a] < 1)
                throw ArgumentError(std::string(name) + ".shape[" + std::to_string(a) + "]",
                                    std::string(fn) + ": argument '" + name + ".shape[" + std::to_string(a) + "]' is " +
                                        std::to_string(t->shape[a]) + ", expected >= 1");
        checked_product({t->shape[0], t->shape[1], t->shape[2], t->shape[3]}, fn, std::string(name) + ".shape");
    }
    if (k.shape[0] != q.shape[0] || k.shape[2] != q.shape[2] || k.shape[3] != q.shape[3])
        throw ArgumentError("k", std::string(fn) + ": argument 'k.shape' does not match q in batch, heads, head_dim");
    if (b < 0 || b >= q.batch())
        throw ArgumentError("batch_index", std::string(fn) + ": argument 'batch_index' is " + std::to_string(b) +
                                               ", expected 0.." + std::to_string(q.batch() - 1));
    if (h < 0 || h >= q.heads())
        throw ArgumentError("head_index", std::string(fn) + ": argument 'head_index' is " + std::to_string(h) +
                                              ", expected 0.." + std::to_string(q.heads() - 1));
}

void check_queries(const char* fn, const std::vector<std::int64_t>& queries, std::int64_t n) {
    for (auto t : queries)
        if (t < 0 || t >= n)
            throw ArgumentError("query_tokens", std::string(fn) + ": argument 'query_tokens' holds " +
                                                    std::to_string(t) + ", expected 0.." + std::to_string(n - 1));
}

// The grid must be valid and match q and k, and the explicit L blocks' element count HW·T·T must fit.
void check_grid(const char* fn, const VideoGrid& grid, const TensorView& q, const TensorView& k) {
    if (grid.T < 1 || grid.H < 1 || grid.W < 1 || checked_product({grid.T, grid.H, grid.W}, fn, "grid") != q.tokens() ||
        q.tokens() != k.tokens())
        throw ArgumentError("grid", std::string(fn) + ": argument 'grid' (" + std::to_string(grid.T) + "x" +
                                        std::to_string(grid.H) + "x" + std::to_string(grid.W) +
                                        ") does not match q/k tokens " + std::to_string(q.tokens()) + "/" +
                                        std::to_string(k.tokens()) + ", expected T*H*W = tokens, each >= 1");
    checked_product({grid.H, grid.W, grid.T, grid.T}, fn, "grid");
}

// Runs `body`, turning an allocation failure that escaped it into OutOfMemoryError naming `fn` and the grid.
template <typename Body>
auto out_of_memory_as_error(const char* fn, const VideoGrid& grid, std::int64_t d, Body&& body) {
    const auto context = [&] {
        return std::string(fn) + " (grid " + std::to_string(grid.T) + "x" + std::to_string(grid.H) + "x" +
               std::to_string(grid.W) + ", d=" + std::to_string(d) + ")";
    };
    try {
        return body();
    } catch (const std::bad_alloc& e) {
        detail::throw_out_of_memory(context(), e);
    } catch (const std::length_error& e) {
        detail::throw_out_of_memory(context(), e);
    }
}

// Checked by check_cpu_head and check_grid before construction: every size product below fits in int64.
class ExplicitMonarch {
public:
    ExplicitMonarch(const TensorView& q, const TensorView& k, const VideoGrid& grid, const Options& options,
                    std::int64_t b, std::int64_t h)
        : T_(grid.T), HW_(grid.frame_tokens()), N_(grid.tokens()), d_(q.head_dim()),
          s_(detail::resolve_scale("vmonarch inspect", options.softmax_scale, q.head_dim())), clamp_(options.cr_clamp),
          q_(detail::load_head<double>(q, b, h, "vmonarch inspect: q of one head")),
          k_(detail::load_head<double>(k, b, h, "vmonarch inspect: k of one head")),
          L_(detail::allocate_filled(HW_ * T_ * T_, 0.0, "vmonarch inspect: L blocks (HW x T x T)")),
          aL_(detail::allocate_filled(N_ * d_, 0.0, "vmonarch inspect: aL (N x d)")),
          cL_(detail::allocate_filled(N_, 0.0, "vmonarch inspect: cL (N)")) {
        for (std::int64_t j = 0; j < HW_; ++j)
            for (std::int64_t i = 0; i < T_; ++i) L(j, i, i) = 1.0; // start: L = identity
    }

    double& L(std::int64_t j, std::int64_t i, std::int64_t k) { return L_[std::size_t((j * T_ + i) * T_ + k)]; }

    // R[k][j][:] given L (spec §3 R-step with cR = Σ_i L[j][i][k], aR = Σ_i L[j][i][k]·Q[i][j]).
    std::vector<double> r_row(std::int64_t k, std::int64_t j, const std::vector<double>& Lm) const {
        std::vector<double> ar(static_cast<std::size_t>(d_), 0.0), x(static_cast<std::size_t>(HW_));
        double cr = 0;
        for (std::int64_t i = 0; i < T_; ++i) {
            const double w = Lm[std::size_t((j * T_ + i) * T_ + k)];
            cr += w;
            for (std::int64_t c = 0; c < d_; ++c) ar[c] += w * q_[(i * HW_ + j) * d_ + c];
        }
        const double scale = s_ / std::max(cr, clamp_);
        for (std::int64_t l = 0; l < HW_; ++l) x[l] = scale * detail::dot(ar.data(), &k_[(k * HW_ + l) * d_], d_);
        softmax_inplace(x.data(), HW_);
        return x;
    }

    void r_step() {
        R_from_ = L_;
        detail::RegionErrors errors;
#pragma omp parallel for schedule(dynamic)
        for (std::int64_t n = 0; n < N_; ++n) errors.guard([&] {
            const std::int64_t k = n / HW_, j = n % HW_;
            const auto r = r_row(k, j, R_from_);
            double* al = &aL_[n * d_];
            std::fill(al, al + d_, 0.0);
            double neg_entropy = 0;
            for (std::int64_t l = 0; l < HW_; ++l) {
                detail::axpy(s_ * r[l], &k_[(k * HW_ + l) * d_], al, d_);
                neg_entropy += xlogx(r[l]);
            }
            cL_[n] = neg_entropy;
        });
        errors.rethrow_first();
    }

    void l_step() {
#pragma omp parallel for schedule(static)
        for (std::int64_t j = 0; j < HW_; ++j)
            for (std::int64_t i = 0; i < T_; ++i) {
                double* row = &L(j, i, 0);
                for (std::int64_t k = 0; k < T_; ++k)
                    row[k] = detail::dot(&q_[(i * HW_ + j) * d_], &aL_[(k * HW_ + j) * d_], d_) - cL_[k * HW_ + j];
                softmax_inplace(row, T_);
            }
    }

    // ⟨A, S⟩ + H(A) over all rows for the current L and R (R as of the last R-step).
    double objective() {
        double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
        for (std::int64_t j = 0; j < HW_; ++j)
            for (std::int64_t i = 0; i < T_; ++i)
                for (std::int64_t k = 0; k < T_; ++k) {
                    const double w = L(j, i, k);
                    const double inner = detail::dot(&q_[(i * HW_ + j) * d_], &aL_[(k * HW_ + j) * d_], d_) -
                                         cL_[k * HW_ + j];
                    total += w * inner - xlogx(w);
                }
        return total;
    }

    // Row of A for query token n = i·HW + j: A[(k,l)] = L[j][i][k]·R[k][j][l].
    std::vector<double> row(std::int64_t n) const {
        const std::int64_t i = n / HW_, j = n % HW_;
        std::vector<double> a(static_cast<std::size_t>(N_));
        for (std::int64_t k = 0; k < T_; ++k) {
            const auto r = r_row(k, j, R_from_);
            const double w = L_[std::size_t((j * T_ + i) * T_ + k)];
            for (std::int64_t l = 0; l < HW_; ++l) a[k * HW_ + l] = w * r[l];
        }
        return a;
    }

    std::vector<double> dense_row(std::int64_t n) const {
        std::vector<double> a(static_cast<std::size_t>(N_));
        for (std::int64_t m = 0; m < N_; ++m) a[m] = s_ * detail::dot(&q_[n * d_], &k_[m * d_], d_);
        softmax_inplace(a.data(), N_);
        return a;
    }

    std::int64_t HW() const { return HW_; }

private:
    const std::int64_t T_, HW_, N_, d_;
    const double s_, clamp_;
    std::vector<double> q_, k_;
    std::vector<double> L_, R_from_; // current L; the L the last R-step was fitted to
    std::vector<double> aL_, cL_;
};

} // namespace

std::vector<double> monarch_attention_rows(const TensorView& q, const TensorView& k, const VideoGrid& grid,
                                           const Options& options, std::int64_t batch_index,
                                           std::int64_t head_index, const std::vector<std::int64_t>& query_tokens) {
    const char* fn = "vmonarch::monarch_attention_rows";
    check_cpu_head(fn, q, k, batch_index, head_index);
    detail::check_fit_options(fn, options);
    detail::check_no_exact_groups(fn, options);
    check_queries(fn, query_tokens, q.tokens());
    check_grid(fn, grid, q, k);
    const std::int64_t result_size =
        checked_product({std::int64_t(query_tokens.size()), q.tokens()}, fn, "query_tokens");
    return out_of_memory_as_error(fn, grid, q.head_dim(), [&] {
        ExplicitMonarch fit(q, k, grid, options, batch_index, head_index);
        for (int it = 0; it < options.iterations; ++it) {
            fit.r_step();
            fit.l_step();
        }
        std::vector<double> rows = detail::allocate_filled(result_size, 0.0, "vmonarch::monarch_attention_rows: result");
        std::size_t at = 0;
        for (auto n : query_tokens) {
            const auto r = (options.recompute_first_frame && n < fit.HW()) ? fit.dense_row(n) : fit.row(n);
            at = std::size_t(std::copy(r.begin(), r.end(), rows.begin() + std::ptrdiff_t(at)) - rows.begin());
        }
        return rows;
    });
}

std::vector<double> dense_attention_rows(const TensorView& q, const TensorView& k, const Options& options,
                                         std::int64_t batch_index, std::int64_t head_index,
                                         const std::vector<std::int64_t>& query_tokens) {
    const char* fn = "vmonarch::dense_attention_rows";
    check_cpu_head(fn, q, k, batch_index, head_index);
    check_queries(fn, query_tokens, q.tokens());
    const std::int64_t d = q.head_dim(), nk = k.tokens();
    const double s = detail::resolve_scale(fn, options.softmax_scale, d);
    const std::int64_t result_size = checked_product({std::int64_t(query_tokens.size()), nk}, fn, "query_tokens");
    const auto qh = detail::load_head<double>(q, batch_index, head_index, "vmonarch::dense_attention_rows: q of one head");
    const auto kh = detail::load_head<double>(k, batch_index, head_index, "vmonarch::dense_attention_rows: k of one head");
    std::vector<double> rows = detail::allocate_filled(result_size, 0.0, "vmonarch::dense_attention_rows: result");
    for (std::size_t r = 0; r < query_tokens.size(); ++r) {
        double* a = &rows[r * std::size_t(nk)];
        for (std::int64_t m = 0; m < nk; ++m) a[m] = s * detail::dot(&qh[query_tokens[r] * d], &kh[m * d], d);
        softmax_inplace(a, nk);
    }
    return rows;
}

std::vector<double> monarch_objective_trace(const TensorView& q, const TensorView& k, const VideoGrid& grid,
                                            const Options& options, std::int64_t batch_index,
                                            std::int64_t head_index) {
    const char* fn = "vmonarch::monarch_objective_trace";
    check_cpu_head(fn, q, k, batch_index, head_index);
    detail::check_fit_options(fn, options);
    detail::check_no_exact_groups(fn, options);
    check_grid(fn, grid, q, k);
    return out_of_memory_as_error(fn, grid, q.head_dim(), [&] {
        ExplicitMonarch fit(q, k, grid, options, batch_index, head_index);
        std::vector<double> trace;
        for (int it = 0; it < options.iterations; ++it) {
            fit.r_step();
            trace.push_back(fit.objective());
            fit.l_step();
            trace.push_back(fit.objective());
        }
        return trace;
    });
}

} // namespace vmonarch
