// Memory of the CPU backend: O(N·d) per head plus O(T + HW) per thread (never a T×T or N×N block),
// every allocation failure an OutOfMemoryError naming the sizes, no exception lost in a parallel region,
// and a valid call's argument checks allocate (format) nothing.
//
// This file replaces the global operator new of the test binary with one that can count allocations.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>

#include "core/dispatch.hpp"
#include "core/progress.hpp"
#include "support/test_tensors.hpp"
#include "vmonarch/vmonarch.hpp"

namespace {

std::atomic<bool> g_counting{false};
std::atomic<std::int64_t> g_allocations{0};
std::atomic<std::size_t> g_largest{0};

// Counts the allocations (and the largest one) made from any thread while alive.
class AllocationCount {
public:
    AllocationCount() {
        g_allocations = 0;
        g_largest = 0;
        g_counting = true;
    }
    ~AllocationCount() { g_counting = false; }
    std::int64_t allocations() const { return g_allocations.load(); }
    std::size_t largest() const { return g_largest.load(); }
};

} // namespace

void* operator new(std::size_t size) {
    if (g_counting.load(std::memory_order_relaxed)) {
        g_allocations.fetch_add(1, std::memory_order_relaxed);
        std::size_t seen = g_largest.load(std::memory_order_relaxed);
        while (size > seen && !g_largest.compare_exchange_weak(seen, size)) {
        }
    }
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

// Under AddressSanitizer an allocation that cannot be served returns null (and operator new above throws
// std::bad_alloc, as without the sanitizer) instead of ending the process with a report.
#if defined(__SANITIZE_ADDRESS__)
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }
#endif

using namespace vmtest;
using vmonarch::Options;
using vmonarch::VideoGrid;

namespace {

struct Inputs {
    VideoGrid grid;
    std::int64_t d, dv;
    HostBuffer q, k, v, out;
    Inputs(VideoGrid g, std::int64_t d_, std::int64_t dv_, DType dtype, std::uint64_t seed)
        : grid(g), d(d_), dv(dv_),
          q(random_normal(std::size_t(g.tokens() * d_), seed, 1.5), dtype, Layout::bshd, 1, g.tokens(), 1, d_),
          k(random_normal(std::size_t(g.tokens() * d_), seed + 1, 1.5), dtype, Layout::bshd, 1, g.tokens(), 1, d_),
          v(random_normal(std::size_t(g.tokens() * dv_), seed + 2), dtype, Layout::bshd, 1, g.tokens(), 1, dv_),
          out(HostBuffer::empty(dtype, Layout::bshd, 1, g.tokens(), 1, dv_)) {}
};

} // namespace

// ---- the success path formats nothing --------------------------------------------------------------

TEST(SuccessPath, ArgumentChecksOfAValidCallAllocateNothing) {
    // Multi-digit sizes, so that any formatted message would outgrow std::string's in-place buffer.
    Inputs in({3, 11, 13}, 16, 24, DType::f32, 1);
    std::vector<float> lse(std::size_t(in.grid.tokens()));
    const auto lse_view = vmonarch::LseView::contiguous(lse.data(), DType::f32, vmonarch::Device::cpu, 1, 1, in.grid.tokens());
    std::int64_t monarch_allocations = 0, dense_allocations = 0;
    {
        AllocationCount count;
        vmonarch::detail::check_monarch("vmonarch::attention", in.q.view, in.k.view, in.v.view, in.out.view, in.grid,
                                        Options{}, &lse_view);
        monarch_allocations = count.allocations();
    }
    {
        AllocationCount count;
        vmonarch::detail::check_dense("vmonarch::dense_attention", in.q.view, in.k.view, in.v.view, in.out.view,
                                      0.25, &lse_view);
        dense_allocations = count.allocations();
    }
    EXPECT_EQ(monarch_allocations, 0);
    EXPECT_EQ(dense_allocations, 0);
}

TEST(SuccessPath, ProgressWithoutCallbackFormatsNoStageName) {
    vmonarch::set_progress_callback({});
    AllocationCount count;
    {
        vmonarch::detail::ProgressCounter progress("R-step", 1000, 2, 8);
        for (int i = 0; i < 1000; ++i) progress.add();
        vmonarch::detail::report_progress("heads", 0.5);
    }
    EXPECT_EQ(count.allocations(), 0);
}

TEST(SuccessPath, ProgressStageNamesWhenReporting) {
    std::vector<std::string> stages;
    vmonarch::set_progress_callback([&](const std::string& stage, double) {
        if (stages.empty() || stages.back() != stage) stages.push_back(stage);
    });
    Inputs in({3, 2, 5}, 8, 8, DType::f32, 3);
    vmonarch::attention(in.q.view, in.k.view, in.v.view, in.out.view, in.grid);
    vmonarch::set_progress_callback({});
    const std::vector<std::string> want = {"R-step 1/2", "L-step 1/2", "R-step 2/2", "L-step 2/2", "recompute frame 0", "heads"};
    EXPECT_EQ(stages, want);
}

// ---- memory is O(N·d), not O(T²) ---------------------------------------------------------------------

TEST(Memory, LargestBufferIsLinearInTokensNotQuadraticInFrames) {
    // HW = 1 and many frames: the L-step's T×T logits per thread (4 MB here) would dwarf the N×d buffers
    // (64 KB); the streamed L-step holds one row of T logits per thread.
    for (bool recompute : {false, true}) {
        Inputs in({1024, 1, 1}, 16, 16, DType::f32, 5);
        Options o;
        o.recompute_first_frame = recompute;
        std::size_t largest = 0;
        {
            AllocationCount count;
            vmonarch::attention(in.q.view, in.k.view, in.v.view, in.out.view, in.grid, o);
            largest = count.largest();
        }
        const std::size_t head_bytes = std::size_t(in.grid.tokens() * in.d) * sizeof(float); // one N×d buffer
        const std::size_t per_thread = std::size_t(in.grid.T + 16) * sizeof(float) * std::size_t(omp_get_max_threads());
        EXPECT_LE(largest, 2 * head_bytes + per_thread)
            << "largest allocation " << largest << " bytes, N*d*4 = " << head_bytes;
        EXPECT_TRUE(all_finite(in.out.read()));
    }
}

TEST(Memory, PerThreadBuffersStayLinearForOneFrame) {
    // T = 1: the R-step's per-thread logits are 16·HW, the dense recompute's 16·256: both O(N), never N×N.
    Inputs in({1, 40, 50}, 8, 8, DType::f64, 9);
    std::size_t largest = 0;
    {
        AllocationCount count;
        vmonarch::attention(in.q.view, in.k.view, in.v.view, in.out.view, in.grid);
        largest = count.largest();
    }
    const std::size_t n = std::size_t(in.grid.tokens()), threads = std::size_t(omp_get_max_threads());
    EXPECT_LE(largest, std::max(2 * n * 8, threads * (16 * n + 16)) * sizeof(double)) << largest;
}

// ---- allocation failures ----------------------------------------------------------------------------

namespace {

// Valid views of N = 2^40 tokens, d = 64 over a tiny buffer: one head's q alone needs 2^48 bytes, more than
// any 64-bit address space serves, so the first buffer the backend allocates fails. Only the sizes are
// read; out lies (on paper) beyond the inputs so that the aliasing check passes.
struct HugeViews {
    std::vector<float> buf = std::vector<float>(64, 0.5f);
    VideoGrid grid{1 << 20, 1 << 10, 1 << 10};
    TensorView q, out;
    explicit HugeViews(DType dtype) {
        q = TensorView::bshd(buf.data(), dtype, vmonarch::Device::cpu, 1, grid.tokens(), 1, 64);
        out = TensorView::bshd(reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(buf.data()) + (std::uintptr_t(1) << 52)),
                               dtype, vmonarch::Device::cpu, 1, grid.tokens(), 1, 64);
    }
};

void expect_out_of_memory(const std::function<void()>& call, const std::vector<std::string>& fragments) {
    try {
        call();
        ADD_FAILURE() << "no OutOfMemoryError";
    } catch (const vmonarch::OutOfMemoryError& e) {
        for (const auto& f : fragments)
            EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what() << " lacks " << f;
    }
}

} // namespace

TEST(Memory, AllocationFailureIsOutOfMemoryErrorWithSizes) {
    for (DType dtype : {DType::f32, DType::f64}) {
        HugeViews h(dtype);
        const std::string elements = std::to_string(std::int64_t(1) << 46); // N·d
        expect_out_of_memory([&] { vmonarch::attention(h.q, h.q, h.q, h.out, h.grid); },
                             {"vmonarch::attention", "out of memory", elements, "TiB"});
        expect_out_of_memory([&] { vmonarch::dense_attention(h.q, h.q, h.q, h.out); },
                             {"vmonarch::dense_attention", "out of memory", elements});
    }
}

// ---- exceptions inside parallel regions ------------------------------------------------------------

TEST(Memory, ExceptionFromProgressCallbackInsideParallelRegionsPropagates) {
    // The callback runs on worker threads inside the R-step, L-step and dense loops; what it throws must
    // reach the caller (an exception leaving an OpenMP region would end the process).
    for (const char* stop_at : {"R-step 1/2", "L-step 1/2", "recompute frame 0", "dense head 1/1"}) {
        vmonarch::set_progress_callback([stop_at](const std::string& stage, double) {
            if (stage == stop_at) throw std::runtime_error(std::string("stopped at ") + stage);
        });
        Inputs in({4, 6, 7}, 8, 8, DType::f32, 11);
        try {
            if (std::string(stop_at).rfind("dense", 0) == 0) {
                vmonarch::dense_attention(in.q.view, in.k.view, in.v.view, in.out.view);
            } else {
                vmonarch::attention(in.q.view, in.k.view, in.v.view, in.out.view, in.grid);
            }
            ADD_FAILURE() << "no exception for " << stop_at;
        } catch (const std::runtime_error& e) {
            EXPECT_EQ(std::string(e.what()), std::string("stopped at ") + stop_at);
        }
    }
    vmonarch::set_progress_callback({});
}
