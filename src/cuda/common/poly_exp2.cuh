// Internal: 2^x evaluated on the FMA pipe, the companion of fast_exp2 (mma_ptx.cuh, MUFU.EX2) in the
// flash kernels' softmax.
#pragma once

namespace vmonarch::cuda {

// 2^x on the FMA pipe instead of MUFU, for finite x (x below −126 gives about 2^−126, never NaN or a negative): x = n + f
// with n = ⌊x⌋ (rounding-down add of 1.5·2²³ leaves n in the low mantissa bits), 2^f by a cubic on [0, 1)
// (relative error ≤ 8e-5, far below the bf16 rounding of P), and n added to the exponent field. Ten
// FMA-pipe and integer instructions; the flash kernels take it for part of a tile's exponentials so that
// MUFU and the FMA pipe share the work (at d = 64 MUFU alone is as busy as the tensor cores).
__device__ __forceinline__ float poly_exp2(float x) {
    constexpr float kShift = 12582912.f; // 1.5·2²³
    x = fmaxf(x, -126.f);
    const float t = __fadd_rd(x, kShift);
    const float fr = __fsub_rn(x, __fsub_rn(t, kShift));
    float p = __fmaf_rn(0.07800822f, fr, 0.22605148f);
    p = __fmaf_rn(p, fr, 0.69586086f);
    p = __fmaf_rn(p, fr, 0.99992055f);
    return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

} // namespace vmonarch::cuda
