// Exact key groups on the CPU (spec §3b, §3c): the per-query-frame exact groups merged into the Monarch rows,
// and the exact text queries of a joint sequence. Memory per head O(N·d): one frame's exact-group output at
// a time, never a row of logits longer than a tile (dense_rows).
#include "cpu/exact_groups_cpu.hpp"

#include <cmath>
#include <limits>
#include <string>

#include "cpu/head_ops.hpp"

namespace vmonarch::detail {

template <typename Acc>
ExtraHead<Acc> load_extra_head(const ExtraKeysProblem& extra, std::int64_t b, std::int64_t h) {
    ExtraHead<Acc> e;
    if (!extra.present) return e;
    e.valid = extra.lens[std::size_t(b)];
    const std::int64_t d = extra.k.head_dim(), dv = extra.v.head_dim();
    assign_filled(e.keys, e.valid * d, Acc(0), "vmonarch::attention (cpu): extra keys of one head (L x d)");
    assign_filled(e.values, e.valid * dv, Acc(0), "vmonarch::attention (cpu): extra values of one head (L x dv)");
    for (std::int64_t r = 0; r < e.valid; ++r) {
        load_row(extra.k.data, extra.k.dtype, offset_of(extra.k, b, r, h), d, e.keys.data() + r * d);
        load_row(extra.v.data, extra.v.dtype, offset_of(extra.v, b, r, h), dv, e.values.data() + r * dv);
    }
    return e;
}

template <typename Acc>
void merge_exact_keys(const Acc* q, std::int64_t nq, const Acc* keys, const Acc* values, std::int64_t nk,
                      std::int64_t d, std::int64_t dv, Acc scale, Acc* out, Acc* lse) {
    if (nk <= 0 || nq <= 0) return;
    std::vector<Acc> group_out = allocate_filled(nq * dv, Acc(0), "exact key group: output of one frame (HW x dv)");
    std::vector<Acc> group_lse = allocate_filled(nq, Acc(0), "exact key group: lse of one frame (HW)");
    dense_rows<Acc>(q, nq, keys, values, nk, d, dv, scale, group_out.data(), group_lse.data(), nullptr);
    constexpr Acc kNegInf = -std::numeric_limits<Acc>::infinity();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < nq; ++r) {
        const Acc a = lse[r], e = group_lse[std::size_t(r)]; // e is finite: nk >= 1 keys
        Acc* o = out + r * dv;
        const Acc* g = group_out.data() + r * dv;
        if (a == kNegInf) { // the row had no keys yet (e.g. no Monarch key frame): the group alone
            for (std::int64_t c = 0; c < dv; ++c) o[c] = g[c];
            lse[r] = e;
            continue;
        }
        const Acc hi = std::max(a, e), tot = hi + std::log1p(std::exp(std::min(a, e) - hi));
        const Acc wa = std::exp(a - tot), we = std::exp(e - tot);
        for (std::int64_t c = 0; c < dv; ++c) o[c] = wa * o[c] + we * g[c];
        lse[r] = tot;
    }
}

template <typename Acc>
void merge_exact_groups(const MonarchProblem& p, const ExactFrames& frames, const Acc* q, const Acc* k, const Acc* v,
                        const ExtraHead<Acc>& extra, Acc* out, Acc* lse) {
    const std::int64_t T = p.grid.T, HW = p.grid.frame_tokens(), d = p.head_dim, dv = p.value_dim;
    const Acc scale = Acc(p.scale);
    const std::int64_t first = p.recompute_first_frame ? 1 : 0; // frame 0 is recomputed over every key anyway
    ProgressCounter progress("exact key groups", T - first);
    for (std::int64_t i = first; i < T; ++i) {
        const Acc* qi = q + i * HW * d;
        Acc* oi = out + i * HW * dv;
        Acc* li = lse + i * HW;
        std::pair<std::int64_t, std::int64_t> ranges[2];
        // Each range of exact key frames is one contiguous key block (frame-major tokens).
        for (int a = 0, n = frames.ranges(i, ranges); a < n; ++a) {
            const auto [k0, k1] = ranges[a];
            merge_exact_keys<Acc>(qi, HW, k + k0 * HW * d, v + k0 * HW * dv, (k1 - k0) * HW, d, dv, scale, oi, li);
        }
        merge_exact_keys<Acc>(qi, HW, extra.keys.data(), extra.values.data(), extra.valid, d, dv, scale, oi, li);
        progress.add();
    }
}

namespace {

template <typename Acc>
void run_text_queries(const TextQueryProblem& p) {
    for (std::int64_t b = 0; b < p.batch; ++b)
        for (std::int64_t h = 0; h < p.heads; ++h) {
            const auto q = load_head<Acc>(p.q, b, h, "vmonarch::joint_attention (cpu): text queries of one head");
            const auto k = load_head<Acc>(p.k, b, h, "vmonarch::joint_attention (cpu): video keys of one head");
            const auto v = load_head<Acc>(p.v, b, h, "vmonarch::joint_attention (cpu): video values of one head");
            const ExtraHead<Acc> text = load_extra_head<Acc>(p.extra, b, h);
            std::vector<Acc> out = allocate_filled(p.q_tokens * p.value_dim, Acc(0),
                                                   "vmonarch::joint_attention (cpu): text query output of one head");
            std::vector<Acc> lse = allocate_filled(p.q_tokens, Acc(0), "vmonarch::joint_attention (cpu): text query lse");
            // spec §3c: exact attention over every video key, then the valid text keys merged by log-sum-exp.
            dense_rows<Acc>(q.data(), p.q_tokens, k.data(), v.data(), p.kv_tokens, p.head_dim, p.value_dim,
                            Acc(p.scale), out.data(), lse.data(), nullptr);
            merge_exact_keys<Acc>(q.data(), p.q_tokens, text.keys.data(), text.values.data(), text.valid, p.head_dim,
                                  p.value_dim, Acc(p.scale), out.data(), lse.data());
            store_head_rows(p.out, b, h, out.data(), 0, p.q_tokens);
            if (p.lse) store_lse_rows(*p.lse, b, h, lse.data(), 0, p.q_tokens);
            report_progress("text queries", double(b * p.heads + h + 1) / double(p.batch * p.heads));
        }
}

} // namespace

void cpu_text_query_attention(const TextQueryProblem& p) {
    if (p.q.dtype == DType::f64) {
        run_text_queries<double>(p);
    } else {
        run_text_queries<float>(p);
    }
}

#define VMONARCH_EXACT_GROUPS_INSTANTIATE(Acc)                                                                     \
    template ExtraHead<Acc> load_extra_head<Acc>(const ExtraKeysProblem&, std::int64_t, std::int64_t);            \
    template void merge_exact_keys<Acc>(const Acc*, std::int64_t, const Acc*, const Acc*, std::int64_t,            \
                                        std::int64_t, std::int64_t, Acc, Acc*, Acc*);                              \
    template void merge_exact_groups<Acc>(const MonarchProblem&, const ExactFrames&, const Acc*, const Acc*,       \
                                          const Acc*, const ExtraHead<Acc>&, Acc*, Acc*);
VMONARCH_EXACT_GROUPS_INSTANTIATE(float)
VMONARCH_EXACT_GROUPS_INSTANTIATE(double)
#undef VMONARCH_EXACT_GROUPS_INSTANTIATE

} // namespace vmonarch::detail
