// attention_training() on the CPU: the training forward of every (batch, head) into its saved-state
// block (src/cpu/monarch_train_cpu.hpp), exact key groups merged (spec §3b), then out and lse into the caller's
// views.
#include "cpu/monarch_train_cpu.hpp"

namespace vmonarch::detail {
namespace {

template <typename Acc>
void run_training(const TrainingProblem& p) {
    Acc* blocks = reinterpret_cast<Acc*>(static_cast<std::byte*>(p.saved) + kSavedHeaderBytes);
    for (std::int64_t b = 0; b < p.batch; ++b)
        for (std::int64_t h = 0; h < p.heads; ++h) {
            const auto q = load_head<Acc>(p.q, b, h, "vmonarch training forward (cpu): q of one head");
            const auto k = load_head<Acc>(p.k, b, h, "vmonarch training forward (cpu): k of one head");
            const auto v = load_head<Acc>(p.v, b, h, "vmonarch training forward (cpu): v of one head");
            std::vector<Acc> out = allocate_filled(p.q_tokens * p.value_dim, Acc(0), "vmonarch training forward (cpu): out");
            std::vector<Acc> lse = allocate_filled(p.q_tokens, Acc(0), "vmonarch training forward (cpu): lse");
            const ExtraHead<Acc> extra = load_extra_head<Acc>(p.extra, b, h);
            HeadState<Acc> state(blocks + (b * p.heads + h) * p.layout.per_head(), p.layout);
            TrainingHead<Acc>(p, q.data(), k.data(), v.data(), state).run(out.data(), lse.data(), &extra);
            store_head_rows(p.out, b, h, out.data(), 0, p.q_tokens);
            store_lse_rows(*p.lse, b, h, lse.data(), 0, p.q_tokens);
            report_progress("heads", double(b * p.heads + h + 1) / double(p.batch * p.heads));
        }
}

} // namespace

void cpu_monarch_training(const TrainingProblem& p) {
    if (p.q.dtype == DType::f64) {
        run_training<double>(p);
    } else {
        run_training<float>(p);
    }
}

} // namespace vmonarch::detail
