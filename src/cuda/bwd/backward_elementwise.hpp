// Internal: the backward pass's small row-wise kernels (spec §7.1 and the finalize), their host launchers.
// Views are RowViews (cuda/common/kernel_params.hpp) indexed (b, h, frame, position), in elements.
#pragma once

#include <cstdint>

#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

// Preprocess (spec §7.1–7.2), per row (b, h, frame i, position j):
//   D = ⟨dO, O⟩ − dlse                         (dlse null: 0)           → d_full (f32)
// With mask_frame0 (the frame-0 recompute is on), the Monarch path gets dO and D with frame 0 set to 0:
//   d_monarch = [i > 0]·D (f32),   dout_monarch = [i > 0]·dO  (input dtype)
// Without it only d_full is written (the Monarch path reads dO in place).
struct PreprocessParams {
    Elem elem = Elem::bf16;
    int value_dim = 128;
    RowView o, dout;               // input dtype
    RowView dlse;                  // f32, or null
    RowView d_full;                // f32 out
    RowView d_monarch, dout_monarch; // outputs with mask_frame0
    bool mask_frame0 = false;
    std::int64_t frames = 1, positions = 1;
    int heads = 1, batch = 1;
};
void launch_backward_preprocess(const PreprocessParams& p, void* stream, const char* what);

// Finalize: dst(b, h, n, c) = acc[((b·heads + h)·tokens + n)·dim + c] rounded to the input dtype, for the
// user's strided dq / dk / dv (dst indexed with frame = 0, position = n).
struct FinalizeParams {
    Elem elem = Elem::bf16;
    int dim = 128;
    const float* acc = nullptr;
    RowView dst;
    std::int64_t tokens = 1;
    int heads = 1, batch = 1;
};
void launch_backward_finalize(const FinalizeParams& p, void* stream, const char* what);

// Copies `bytes` (a multiple of 8, at most 128) from a host value into device memory as a kernel argument,
// so the write is ordered on `stream` and legal inside CUDA graph capture (no pageable-memory copy).
struct HeaderBytes {
    std::uint64_t words[16];
};
void launch_write_header(void* device_dst, const HeaderBytes& bytes, void* stream, const char* what);

} // namespace vmonarch::cuda
