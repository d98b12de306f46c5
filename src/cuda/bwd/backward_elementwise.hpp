// Internal: the backward pass's small row-wise kernels (spec §7.1 and the finalize), their host launchers.
// Views are RowViews (cuda/common/kernel_params.hpp) indexed (b, h, frame, position), in elements.
#pragma once

#include <cstdint>

#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

// Preprocess (spec §7.1), per row (b, h, frame i, position j):  D = ⟨dO, O⟩ − dlse (dlse null: 0) → d_full (f32).
// The frame-0 recompute's masking of the Monarch path (§7.2: dO and D of frame 0 set to 0) is the last L-step
// backward's (LStepBwdParams::zero_frame0), so no masked copies are made here.
struct PreprocessParams {
    Elem elem = Elem::bf16;
    int value_dim = 128;
    RowView o, dout;               // input dtype
    RowView dlse;                  // f32, or null
    RowView d_full;                // f32 out
    std::int64_t frames = 1, positions = 1;
    int heads = 1, batch = 1;
};
void launch_backward_preprocess(const PreprocessParams& p, void* stream, const char* what);

// Finalize: dst(b, h, n, c) = acc[((b·heads + h)·tokens + n)·dim + c] + [n < add_tokens]·add[((b·heads + h)·
// add_tokens + n)·dim + c], summed in f32 in that order and rounded to the input dtype, for the user's strided
// dq / dk / dv (dst indexed with frame = 0, position = n). add (or null) is a second accumulator of the first
// add_tokens rows per (b, h): the concurrent schedule's frame-0 recompute backward (backward_plan.hpp).
struct FinalizeParams {
    Elem elem = Elem::bf16;
    int dim = 128;
    const float* acc = nullptr;
    const float* add = nullptr;
    std::int64_t add_tokens = 0;
    RowView dst;
    std::int64_t tokens = 1;
    int heads = 1, batch = 1;
};
// Up to kMaxFinalize gradients in one launch (one grid row each); every dim a multiple of 4.
constexpr int kMaxFinalize = 3;
void launch_backward_finalize(const FinalizeParams* grads, int count, void* stream, const char* what);

// Copies `bytes` (a multiple of 8, at most 128) from a host value into device memory as a kernel argument,
// so the write is ordered on `stream` and legal inside CUDA graph capture (no pageable-memory copy).
struct HeaderBytes {
    std::uint64_t words[16];
};
void launch_write_header(void* device_dst, const HeaderBytes& bytes, void* stream, const char* what);

} // namespace vmonarch::cuda
