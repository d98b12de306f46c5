// Internal: OpenMP regions that never let an exception escape (which would call std::terminate), and
// per-thread scratch memory allocated before the region, so that nothing inside it allocates.
#pragma once

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <vector>

#include "core/host_memory.hpp"

namespace vmonarch::detail {

// Loop bodies of a parallel region run through guard(): the first exception is kept, the iterations after
// it are skipped, and rethrow_first() throws it once the region has ended.
class RegionErrors {
public:
    template <typename Body>
    void guard(Body&& body) noexcept {
        if (failed_.load(std::memory_order_relaxed)) return;
        try {
            body();
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!first_) first_ = std::current_exception();
            failed_.store(true, std::memory_order_relaxed);
        }
    }
    void rethrow_first() const {
        if (first_) std::rethrow_exception(first_);
    }

private:
    std::mutex mutex_;
    std::exception_ptr first_;
    std::atomic<bool> failed_{false};
};

// `per_thread` elements for each thread of the next parallel region, in one allocation. Run the region
// with num_threads(scratch.threads()) and take the calling thread's slice with mine().
template <typename T>
class ThreadScratch {
public:
    ThreadScratch(std::int64_t per_thread, const char* what) : threads_(omp_get_max_threads()) {
        constexpr std::int64_t line = 64 / sizeof(T) > 0 ? 64 / sizeof(T) : 1;
        std::int64_t total = 0;
        // Slices start on separate 64-byte cache lines (no false sharing between threads).
        if (per_thread < 0 || __builtin_add_overflow(per_thread, line - 1, &stride_) ||
            __builtin_mul_overflow(stride_ / line * line, std::int64_t(threads_), &total))
            throw_out_of_memory(what, per_thread, sizeof(T) * std::size_t(threads_));
        stride_ = stride_ / line * line;
        assign_filled(data_, total, T(0), what);
    }
    int threads() const { return threads_; }
    T* mine() { return data_.data() + std::int64_t(omp_get_thread_num()) * stride_; }

private:
    int threads_;
    std::int64_t stride_ = 0;
    std::vector<T> data_;
};

} // namespace vmonarch::detail
