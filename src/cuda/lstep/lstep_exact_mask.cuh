// Internal: which key frames the L-step leaves out of a query frame's fit (spec §3b), the device form of
// core/exact_frames.hpp (ExactFrames) for the L-step kernels. Uniform over a launch.
//
// Key frame k is exact for query frame i (z[i][k] = −inf, L[i][k] = 0) when k < S (sink frames) or
// |i − k| <= r (temporal window, r < 0: none). A key frame that no query frame fits (k < S, or with a window
// every frame within r of k) had no R-step: its aL, cL and y rows are uninitialised workspace and the kernels
// never read them (they zero-fill instead).
#pragma once

#include <cstdint>

#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

struct LStepMask {
    int S; // sink frames, clamped to [0, T]
    int R; // window radius clamped to T, or −1 for no window (|i − k| <= −1 never holds)

    __device__ __forceinline__ bool any() const { return S > 0 || R >= 0; }
    __device__ __forceinline__ bool exact(int i, int k) const { return k < S || abs(i - k) <= R; }
    // Some query frame i in [0, T) has k in its fit: k >= S and a frame farther than R from k exists.
    __device__ __forceinline__ bool fitted(int k, int T) const { return k >= S && (k - R - 1 >= 0 || k + R + 1 <= T - 1); }
};

// P: LStepParams, or the backward's LStepBwdParams (the same frames / sink_frames / window_radius fields).
template <typename P>
__device__ __forceinline__ LStepMask lstep_mask(const P& p) {
    const std::int64_t T = p.frames;
    const std::int64_t S = p.sink_frames < 0 ? 0 : (p.sink_frames > T ? T : p.sink_frames);
    const std::int64_t R = p.window_radius < 0 ? -1 : (p.window_radius > T ? T : p.window_radius);
    return {int(S), int(R)};
}

} // namespace vmonarch::cuda
