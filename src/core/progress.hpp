// Internal: reporting progress of long CPU runs through the callback set by set_progress_callback.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

namespace vmonarch::detail {

bool progress_enabled();
void report_progress(const std::string& stage, double fraction);

// Counts finished work items from many threads; reports at most ~100 times per stage.
class ProgressCounter {
public:
    ProgressCounter(std::string stage, std::int64_t total);
    void add(std::int64_t items = 1);

private:
    std::string stage_;
    std::int64_t total_;
    std::atomic<std::int64_t> done_{0};
    std::atomic<std::int64_t> reported_percent_{-1};
};

} // namespace vmonarch::detail
