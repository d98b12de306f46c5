// The backward pass's row-wise kernels (backward_elementwise.hpp): one warp per row for the preprocess's
// dot product, a grid-stride loop for the finalize's rounding.
#include "cuda/bwd/backward_elementwise.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda/common/cuda_check.hpp"

namespace vmonarch::cuda {

namespace {

template <bool BF16> struct Half;
template <> struct Half<true> {
    using T = __nv_bfloat16;
    __device__ static float load(T x) { return __bfloat162float(x); }
    __device__ static T store(float x) { return __float2bfloat16_rn(x); }
};
template <> struct Half<false> {
    using T = __half;
    __device__ static float load(T x) { return __half2float(x); }
    __device__ static T store(float x) { return __float2half_rn(x); }
};

template <typename T>
__device__ T* row_of(const RowView& v, std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r) {
    return static_cast<T*>(v.ptr) + b * v.sb + h * v.sh + f * v.sf + r * v.sr;
}

constexpr int kWarpsPerBlock = 8;

// One warp per row: D = Σ_c dO·O − dlse (fp32), then the masked copies.
template <bool BF16>
__global__ void preprocess_kernel(PreprocessParams p) {
    using H = Half<BF16>;
    using T = typename H::T;
    const std::int64_t rows = std::int64_t(p.batch) * p.heads * p.frames * p.positions;
    const std::int64_t row = std::int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
    if (row >= rows) return;
    const int lane = threadIdx.x % 32;
    std::int64_t rest = row;
    const std::int64_t j = rest % p.positions; rest /= p.positions;
    const std::int64_t i = rest % p.frames; rest /= p.frames;
    const std::int64_t h = rest % p.heads;
    const std::int64_t b = rest / p.heads;
    const T* o = row_of<T>(p.o, b, h, i, j);
    const T* dout = row_of<T>(p.dout, b, h, i, j);
    float acc = 0.f;
    for (int c = lane; c < p.value_dim; c += 32) acc += H::load(dout[c]) * H::load(o[c]);
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    const bool zero = p.mask_frame0 && i == 0;
    if (p.mask_frame0) {
        T* dm = row_of<T>(p.dout_monarch, b, h, i, j);
        for (int c = lane; c < p.value_dim; c += 32) dm[c] = zero ? H::store(0.f) : dout[c];
    }
    if (lane != 0) return;
    if (p.dlse.ptr != nullptr) acc -= *row_of<const float>(p.dlse, b, h, i, j);
    *row_of<float>(p.d_full, b, h, i, j) = acc;
    if (p.mask_frame0) *row_of<float>(p.d_monarch, b, h, i, j) = zero ? 0.f : acc;
}

template <bool BF16>
__global__ void finalize_kernel(FinalizeParams p) {
    using H = Half<BF16>;
    using T = typename H::T;
    const std::int64_t total = std::int64_t(p.batch) * p.heads * p.tokens * p.dim;
    for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
         e += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t c = e % p.dim;
        std::int64_t rest = e / p.dim;
        const std::int64_t n = rest % p.tokens; rest /= p.tokens;
        const std::int64_t h = rest % p.heads;
        const std::int64_t b = rest / p.heads;
        row_of<T>(p.dst, b, h, 0, n)[c] = H::store(p.acc[e]);
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
    const std::int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
    if (blocks > 0x7fffffff) throw CudaError(std::string(what) + ": too many rows for the preprocess kernel");
    auto st = static_cast<cudaStream_t>(stream);
    if (p.elem == Elem::bf16) preprocess_kernel<true><<<unsigned(blocks), 32 * kWarpsPerBlock, 0, st>>>(p);
    else preprocess_kernel<false><<<unsigned(blocks), 32 * kWarpsPerBlock, 0, st>>>(p);
    check_launch(std::string(what) + " [backward preprocess]");
}

void launch_backward_finalize(const FinalizeParams& p, void* stream, const char* what) {
    const std::int64_t total = std::int64_t(p.batch) * p.heads * p.tokens * p.dim;
    if (total == 0) return;
    constexpr int threads = 256;
    auto st = static_cast<cudaStream_t>(stream);
    if (p.elem == Elem::bf16) finalize_kernel<true><<<grid_for(total, threads), threads, 0, st>>>(p);
    else finalize_kernel<false><<<grid_for(total, threads), threads, 0, st>>>(p);
    check_launch(std::string(what) + " [backward finalize]");
}

void launch_write_header(void* device_dst, const HeaderBytes& bytes, void* stream, const char* what) {
    write_header_kernel<<<1, 32, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<std::uint64_t*>(device_dst), bytes);
    check_launch(std::string(what) + " [saved-state header]");
}

} // namespace vmonarch::cuda
