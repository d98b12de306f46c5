// Shared by the benchmark programs: CUDA error check that exits, and event-timed medians.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

namespace vmbench {

inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
        std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
        std::exit(1);
    }
}

// Median milliseconds of fn over reps after warm-up calls, timed with events around each call.
inline double time_ms(const std::function<void()>& fn, int warmup, int reps) {
    cudaEvent_t a, b;
    check(cudaEventCreate(&a), "event");
    check(cudaEventCreate(&b), "event");
    for (int i = 0; i < warmup; ++i) fn();
    check(cudaDeviceSynchronize(), "warm-up");
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
        check(cudaEventRecord(a), "record");
        fn();
        check(cudaEventRecord(b), "record");
        check(cudaEventSynchronize(b), "sync");
        float ms = 0;
        check(cudaEventElapsedTime(&ms, a, b), "elapsed");
        t.push_back(ms);
    }
    check(cudaGetLastError(), "launches");
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

} // namespace vmbench
