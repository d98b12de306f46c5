// Internal: reporting progress of long CPU runs through the callback set by set_progress_callback.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace vmonarch::detail {

bool progress_enabled();
void report_progress(std::string_view stage, double fraction);

// Counts finished work items from many threads; reports at most ~100 times per stage. The stage is named
// "<stage>" or, with steps > 0, "<stage> <step>/<steps>"; the name is formatted only when a report is
// made, so a run without a progress callback formats nothing.
class ProgressCounter {
public:
    ProgressCounter(const char* stage, std::int64_t total, std::int64_t step = 0, std::int64_t steps = 0);
    void add(std::int64_t items = 1);

private:
    const char* stage_;
    std::int64_t total_, step_, steps_;
    std::atomic<std::int64_t> done_{0};
    std::atomic<std::int64_t> reported_percent_{-1};
};

} // namespace vmonarch::detail
