#include "core/progress.hpp"

#include <mutex>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch {
namespace {
std::mutex g_mutex;
ProgressCallback g_callback;
std::atomic<bool> g_enabled{false};
} // namespace

void set_progress_callback(ProgressCallback callback) {
    std::lock_guard lock(g_mutex);
    g_callback = std::move(callback);
    g_enabled = bool(g_callback);
}

namespace detail {

bool progress_enabled() { return g_enabled.load(std::memory_order_relaxed); }

void report_progress(std::string_view stage, double fraction) {
    if (!progress_enabled()) return;
    const std::string name(stage);
    std::lock_guard lock(g_mutex);
    if (g_callback) g_callback(name, fraction);
}

ProgressCounter::ProgressCounter(const char* stage, std::int64_t total, std::int64_t step, std::int64_t steps)
    : stage_(stage), total_(total), step_(step), steps_(steps) {}

void ProgressCounter::add(std::int64_t items) {
    if (!progress_enabled() || total_ <= 0) return;
    const std::int64_t done = done_.fetch_add(items, std::memory_order_relaxed) + items;
    const std::int64_t percent = done * 100 / total_;
    std::int64_t last = reported_percent_.load(std::memory_order_relaxed);
    while (percent > last) {
        if (reported_percent_.compare_exchange_weak(last, percent)) {
            const std::string name = steps_ > 0 ? std::string(stage_) + " " + std::to_string(step_) + "/" +
                                                      std::to_string(steps_)
                                                : std::string(stage_);
            report_progress(name, double(done) / double(total_));
            break;
        }
    }
}

} // namespace detail
} // namespace vmonarch
