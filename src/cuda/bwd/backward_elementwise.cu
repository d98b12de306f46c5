// The backward pass's row-wise kernels (backward_elementwise.hpp): a few lanes per row (16-byte loads) or a warp
// per row for the preprocess's dot product, a grid-stride loop over 4-value chunks for the finalize's sum and rounding (all gradients in one launch).
#include "cuda/bwd/backward_elementwise.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

namespace {

template <bool BF16> struct Half;
template <> struct Half<true> {
    using T = __nv_bfloat16;
    __device__ static float load(T x) { return __bfloat162float(x); }
    __device__ static T store(float x) { return __float2bfloat16_rn(x); }
    __device__ static unsigned bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
};
template <> struct Half<false> {
    using T = __half;
    __device__ static float load(T x) { return __half2float(x); }
    __device__ static T store(float x) { return __float2half_rn(x); }
    __device__ static unsigned bits(float x) { return __half_as_ushort(__float2half_rn(x)); }
};

template <typename T>
__device__ T* row_of(const RowView& v, std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r) {
    return static_cast<T*>(v.ptr) + b * v.sb + h * v.sh + f * v.sf + r * v.sr;
}

constexpr int kWarpsPerBlock = 8;

// D = Σ_c dO·O − dlse (fp32), TPR threads per row (a power of two dividing 32), each reading VEC consecutive
// values of dO and O per step: VEC = 8 by 16-byte loads (TPR = value_dim / 8, one step), VEC = 1 element by
// element (TPR = 32). The row's partial sums meet by shuffles within its TPR lanes.
template <bool BF16, int VEC>
__global__ void preprocess_kernel(PreprocessParams p) {
    using H = Half<BF16>;
    using T = typename H::T;
    const std::int64_t rows = std::int64_t(p.batch) * p.heads * p.frames * p.positions;
    const int tpr = VEC == 8 ? p.value_dim / 8 : 32;
    const int lane = threadIdx.x % 32, sub = lane % tpr;
    const std::int64_t row = (std::int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32) * (32 / tpr) + lane / tpr;
    const bool valid = row < rows; // the shuffles below need every lane of the warp
    std::int64_t rest = valid ? row : 0;
    const std::int64_t j = rest % p.positions; rest /= p.positions;
    const std::int64_t i = rest % p.frames; rest /= p.frames;
    const std::int64_t h = rest % p.heads;
    const std::int64_t b = rest / p.heads;
    const T* o = row_of<T>(p.o, b, h, i, j);
    const T* dout = row_of<T>(p.dout, b, h, i, j);
    float acc = 0.f;
    if (valid) {
        if constexpr (VEC == 8) {
            for (int c = sub * 8; c < p.value_dim; c += tpr * 8) {
                const uint4 ov = *reinterpret_cast<const uint4*>(o + c), gv = *reinterpret_cast<const uint4*>(dout + c);
                const T* oe = reinterpret_cast<const T*>(&ov);
                const T* ge = reinterpret_cast<const T*>(&gv);
#pragma unroll
                for (int e = 0; e < 8; ++e) acc += H::load(ge[e]) * H::load(oe[e]);
            }
        } else {
            for (int c = sub; c < p.value_dim; c += tpr) acc += H::load(dout[c]) * H::load(o[c]);
        }
    }
    for (int off = tpr / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (sub != 0 || !valid) return;
    if (p.dlse.ptr != nullptr) acc -= *row_of<const float>(p.dlse, b, h, i, j);
    *row_of<float>(p.d_full, b, h, i, j) = acc;
}

struct FinalizeBatch {
    FinalizeParams g[kMaxFinalize];
};

// Grid row blockIdx.y is gradient g[blockIdx.y]; each thread rounds VEC consecutive values of one row (VEC
// divides dim), so the row's (b, h, n) is found once per VEC values.
template <bool BF16, int VEC>
__global__ void finalize_kernel(const FinalizeBatch batch) {
    using H = Half<BF16>;
    using T = typename H::T;
    const FinalizeParams& p = batch.g[blockIdx.y];
    const std::int64_t per_row = p.dim / VEC;
    const std::int64_t chunks = std::int64_t(p.batch) * p.heads * p.tokens * per_row;
    for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < chunks;
         e += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t row = e / per_row;
        const int c = int(e - row * per_row) * VEC;
        const std::int64_t n = row % p.tokens, bh = row / p.tokens;
        const std::int64_t h = bh % p.heads, b = bh / p.heads;
        float v[VEC];
        if constexpr (VEC == 4) {
            const float4 x = *reinterpret_cast<const float4*>(p.acc + row * p.dim + c);
            v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
        } else {
            v[0] = p.acc[row * p.dim + c];
        }
        if (p.add != nullptr && n < p.add_tokens) {
            const float* add = p.add + (bh * p.add_tokens + n) * p.dim + c;
            if constexpr (VEC == 4) {
                const float4 x = *reinterpret_cast<const float4*>(add);
                v[0] += x.x, v[1] += x.y, v[2] += x.z, v[3] += x.w;
            } else {
                v[0] += add[0];
            }
        }
        T* dst = row_of<T>(p.dst, b, h, 0, n) + c;
        if constexpr (VEC == 4) {
            *reinterpret_cast<uint2*>(dst) = make_uint2(H::bits(v[0]) | (H::bits(v[1]) << 16), H::bits(v[2]) | (H::bits(v[3]) << 16));
        } else {
            dst[0] = H::store(v[0]);
        }
    }
}

__global__ void write_header_kernel(std::uint64_t* dst, HeaderBytes bytes) {
    if (threadIdx.x < 16) dst[threadIdx.x] = bytes.words[threadIdx.x];
}

int grid_for(std::int64_t work, int threads) {
    const std::int64_t blocks = (work + threads - 1) / threads;
    return int(std::min<std::int64_t>(std::max<std::int64_t>(blocks, 1), 65535 * 8));
}

} // namespace

void launch_backward_preprocess(const PreprocessParams& p, void* stream, const char* what) {
    const std::int64_t rows = std::int64_t(p.batch) * p.heads * p.frames * p.positions;
    if (rows == 0) return;
    // 16-byte loads where every row of o and dout starts 16-byte aligned and value_dim / 8 lanes cover a row.
    const auto rows_aligned = [](const RowView& v) {
        return reinterpret_cast<std::uintptr_t>(v.ptr) % 16 == 0 && v.sb % 8 == 0 && v.sh % 8 == 0 && v.sf % 8 == 0 && v.sr % 8 == 0;
    };
    const int lanes = p.value_dim / 8;
    const bool vec8 = p.value_dim % 8 == 0 && lanes >= 1 && lanes <= 32 && (lanes & (lanes - 1)) == 0 && rows_aligned(p.o) &&
                      rows_aligned(p.dout);
    const int tpr = vec8 ? lanes : 32;
    const std::int64_t rows_per_block = std::int64_t(kWarpsPerBlock) * (32 / tpr);
    const std::int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
    if (blocks > 0x7fffffff) throw CudaError(std::string(what) + ": too many rows for the preprocess kernel");
    auto st = static_cast<cudaStream_t>(stream);
    const unsigned grid = unsigned(blocks), threads = 32 * kWarpsPerBlock;
    if (p.elem == Elem::bf16) {
        if (vec8) preprocess_kernel<true, 8><<<grid, threads, 0, st>>>(p);
        else preprocess_kernel<true, 1><<<grid, threads, 0, st>>>(p);
    } else {
        if (vec8) preprocess_kernel<false, 8><<<grid, threads, 0, st>>>(p);
        else preprocess_kernel<false, 1><<<grid, threads, 0, st>>>(p);
    }
    check_launch(std::string(what) + " [backward preprocess]");
}

void launch_backward_finalize(const FinalizeParams* grads, int count, void* stream, const char* what) {
    if (count < 1 || count > kMaxFinalize)
        throw CudaError(std::string(what) + ": finalize of " + std::to_string(count) + " gradients, expected 1.." +
                        std::to_string(kMaxFinalize));
    FinalizeBatch batch;
    std::int64_t most = 0;
    bool vec4 = true; // 8-byte stores of 4 values: the destination's base and strides in multiples of 4 elements
    for (int i = 0; i < count; ++i) {
        const FinalizeParams& p = grads[i];
        if (p.dim <= 0 || p.dim % 4 != 0)
            throw CudaError(std::string(what) + ": finalize dim is " + std::to_string(p.dim) + ", expected a positive multiple of 4");
        batch.g[i] = p;
        most = std::max(most, std::int64_t(p.batch) * p.heads * p.tokens * p.dim);
        const RowView& d = p.dst;
        vec4 = vec4 && reinterpret_cast<std::uintptr_t>(d.ptr) % 8 == 0 && d.sb % 4 == 0 && d.sh % 4 == 0 && d.sf % 4 == 0 &&
               d.sr % 4 == 0;
    }
    if (most == 0) return;
    constexpr int threads = 256;
    const dim3 grid(unsigned(grid_for(vec4 ? most / 4 : most, threads)), unsigned(count));
    auto st = static_cast<cudaStream_t>(stream);
    if (grads[0].elem == Elem::bf16) {
        if (vec4) finalize_kernel<true, 4><<<grid, threads, 0, st>>>(batch);
        else finalize_kernel<true, 1><<<grid, threads, 0, st>>>(batch);
    } else {
        if (vec4) finalize_kernel<false, 4><<<grid, threads, 0, st>>>(batch);
        else finalize_kernel<false, 1><<<grid, threads, 0, st>>>(batch);
    }
    check_launch(std::string(what) + " [backward finalize]");
}

void launch_write_header(void* device_dst, const HeaderBytes& bytes, void* stream, const char* what) {
    write_header_kernel<<<1, 32, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<std::uint64_t*>(device_dst), bytes);
    check_launch(std::string(what) + " [saved-state header]");
}

} // namespace vmonarch::cuda
