// vmonarch: VMonarch structured attention for video diffusion transformers.
//
// Public API (spec: shared/spec/VMONARCH.md). One call replaces dense self-attention over a video's
// T·H·W tokens by a Monarch-structured attention matrix fitted in a few closed-form softmax steps.
//
//   vmonarch::VideoGrid grid{T, H, W};
//   auto q = vmonarch::TensorView::bshd(q_ptr, vmonarch::DType::bf16, vmonarch::Device::cuda, B, N, heads, d);
//   ...
//   vmonarch::attention(q, k, v, out, grid);          // Options{} = t=2, clamp 0.1, recompute frame 0
//
// Tensors are views [batch, tokens, heads, head_dim] with arbitrary element strides for the first
// three axes and a contiguous head dim, so BSHD (flash-attn, Wan) and BHSD (PyTorch SDPA) layouts both
// work without copies. Tokens are frame-major: token n = i·H·W + j for frame i and position j.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include "vmonarch/errors.hpp"

namespace vmonarch {

enum class DType { f16, bf16, f32, f64 };
enum class Device { cpu, cuda };

// Memory order of an attention tensor: bshd = [batch, tokens, heads, d] (flash-attn / Wan), bhsd =
// [batch, heads, tokens, d] (PyTorch SDPA). Either is viewed without copies (TensorView::of).
enum class Layout { bshd, bhsd };

std::string to_string(DType dtype);
std::string to_string(Device device);
std::string to_string(Layout layout); // "bshd" / "bhsd"
// "bshd" / "bhsd" exactly (callers lower-case or reword the error as they need); nullopt otherwise.
std::optional<Layout> layout_from_string(std::string_view text);
std::size_t dtype_size(DType dtype);

// Product of sizes, checked: throws ArgumentError naming `argument` (and `function`, the caller shown in the
// message) when a factor is negative or the product does not fit in int64. The one place where the library,
// the CLI and the Python binding multiply user-given sizes (grid, batch, heads, head dim).
std::int64_t checked_product(std::initializer_list<std::int64_t> factors, std::string_view function,
                             std::string_view argument);

// The latent video: T frames of H×W tokens, N = T·H·W. Both products are checked (checked_product): a grid
// with a negative dimension or whose token count overflows int64 throws ArgumentError for argument "grid".
struct VideoGrid {
    std::int64_t T = 1, H = 1, W = 1;
    std::int64_t frame_tokens() const;
    std::int64_t tokens() const;
};

struct Options {
    int iterations = 2;                  // t: R-steps = L-steps = t, 1..8 (spec §3)
    double cr_clamp = 0.1;               // R-step divides by max(cR, clamp); 0 disables the clamp
    bool recompute_first_frame = true;   // exact dense attention for frame-0 queries (spec §3)
    std::optional<double> softmax_scale; // default 1/sqrt(head_dim of q)
    // Exact key groups merged by log-sum-exp (spec §3b). sink_frames = S >= 0: every key of frames 0..S-1 is
    // attended exactly by every query and the Monarch fit runs over key frames S..T-1 (S >= T: dense attention).
    // window_radius = r >= 0: key frames k with |i - k| <= r are exact for query frame i too (none: no window).
    // The defaults are the paper's (no exact group).
    std::int64_t sink_frames = 0;
    std::optional<std::int64_t> window_radius;
};

// A strided 4-D view [batch, tokens, heads, head_dim]; strides in elements, head_dim stride must be 1.
struct TensorView {
    void* data = nullptr;
    DType dtype = DType::f32;
    Device device = Device::cpu;
    int device_index = 0;
    std::array<std::int64_t, 4> shape{};   // batch, tokens, heads, head_dim
    std::array<std::int64_t, 4> strides{}; // elements

    std::int64_t batch() const { return shape[0]; }
    std::int64_t tokens() const { return shape[1]; }
    std::int64_t heads() const { return shape[2]; }
    std::int64_t head_dim() const { return shape[3]; }

    // Contiguous [batch, tokens, heads, d] (flash-attn / Wan layout).
    static TensorView bshd(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t tokens,
                           std::int64_t heads, std::int64_t head_dim, int device_index = 0);
    // Contiguous [batch, heads, tokens, d] (PyTorch SDPA layout), viewed as [batch, tokens, heads, d].
    static TensorView bhsd(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t heads,
                           std::int64_t tokens, std::int64_t head_dim, int device_index = 0);
    // Contiguous in `layout`; the sizes are given in the view's logical order [batch, tokens, heads, d].
    static TensorView of(Layout layout, void* data, DType dtype, Device device, std::int64_t batch,
                         std::int64_t tokens, std::int64_t heads, std::int64_t head_dim, int device_index = 0);
};

// Per-row log-sum-exp output [batch, heads, tokens], f32 (f64 allowed for f64 inputs on the CPU).
// For Monarch rows it is logsumexp_k z of the final L-step, the row's objective value, a lower bound on
// the dense row's log-sum-exp (spec §3); recomputed rows hold the exact dense value.
struct LseView {
    void* data = nullptr;
    DType dtype = DType::f32;
    Device device = Device::cpu;
    int device_index = 0;
    std::array<std::int64_t, 3> shape{};   // batch, heads, tokens
    std::array<std::int64_t, 3> strides{}; // elements

    static LseView contiguous(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t heads,
                              std::int64_t tokens, int device_index = 0);
};

// Extra keys attended exactly by every video query and merged with its Monarch row by log-sum-exp (spec §3b):
// the text tokens of joint text+video models. k: [B, L, heads, d], v: [B, L, heads, dv], any L >= 0, either
// layout, own strides, q's dtype and device (with L = 0 the data pointers may be null). lens: host array of
// B valid prefix lengths in 0..L (keys at positions >= lens[b] are padding and ignored); nullptr = all valid.
struct ExtraKeys {
    TensorView k, v;
    const std::int64_t* lens = nullptr;
};

// Where the text tokens of a joint sequence sit: before the video (CogVideoX) or after it (HunyuanVideo, Mochi).
enum class TextPosition { first, last };

// Where CUDA work runs. stream: a cudaStream_t (nullptr = default stream). workspace: caller-owned device
// memory of at least workspace_bytes(...) bytes, or nullptr to let the library use its own cached buffer.
struct CudaContext {
    void* stream = nullptr;
    void* workspace = nullptr;
    std::size_t workspace_bytes = 0;
};

// VMonarch attention: out = M·V with M the fitted Monarch matrix, frame-0 rows exact when
// options.recompute_first_frame. q, k: [B, N, heads, d]; v, out: [B, N, heads, dv]. All on one device,
// one dtype. Throws ArgumentError (see errors.hpp) for every invalid argument, CudaError on CUDA failure.
// With options.sink_frames / window_radius or extra keys, each row's exact key group (its sink and window
// key frames and the valid extra keys) is attended exactly and merged with its Monarch row by log-sum-exp
// (spec §3b); the lse is then logaddexp(Monarch objective, exact group's lse), exact for rows with no
// Monarch part. CPU and CUDA (workspace_bytes covers the exact groups, extra keys included).
void attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const VideoGrid& grid, const Options& options = {}, const LseView* lse = nullptr,
               const CudaContext* cuda = nullptr, const ExtraKeys* extra_keys = nullptr);

// MMDiT self-attention over one sequence of N = grid.tokens() video and text_tokens = L text tokens (spec §3c).
// q, k: [B, N + L, heads, d]; v, out: [B, N + L, heads, dv]; text tokens first or last, video frame-major.
// Video queries: VMonarch over the video keys with the valid text keys as extra keys (spec §3b); text queries:
// exact attention over every valid key. text_lens: host array of B valid text lengths in 0..L (nullptr = all).
// out and lse ([B, heads, N + L]) come back in the sequence's order; padded text queries are computed too.
// On CUDA a caller's cuda->workspace sized by workspace_bytes for the video part ([B, N, heads, d]) suffices.
void joint_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                     const VideoGrid& grid, std::int64_t text_tokens, TextPosition text_position,
                     const std::int64_t* text_lens = nullptr, const Options& options = {},
                     const LseView* lse = nullptr, const CudaContext* cuda = nullptr);

// Exact softmax(q·kᵀ·scale)·v with optional per-row log-sum-exp. Never materialises N×N.
void dense_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                     std::optional<double> softmax_scale = std::nullopt, const LseView* lse = nullptr,
                     const CudaContext* cuda = nullptr);

// Bytes of device workspace attention() needs for these shapes (0 on the CPU), with any exact groups and
// extra keys (their count does not change it).
std::size_t workspace_bytes(const TensorView& q, const TensorView& v, const VideoGrid& grid,
                            const Options& options = {});

// Forward FLOPs (spec §4), all batches and heads.
struct FlopCount {
    double r_steps = 0, l_steps = 0, recompute = 0; // parts of the VMonarch total
    double exact = 0;                               // exact key groups of the video queries (spec §3b)
    double text_queries = 0;                        // exact text queries of a joint sequence (spec §3c)
    double vmonarch = 0;
    double dense = 0;
};
// Video queries of attention() with extra_tokens extra keys (spec §4, exact groups from options); dense =
// 4·N·(N + extra_tokens)·d per head. R-steps count only key frames some row fits, L-steps only fitted pairs.
FlopCount flops(const VideoGrid& grid, std::int64_t head_dim, std::int64_t heads = 1, std::int64_t batch = 1,
                const Options& options = {}, std::int64_t extra_tokens = 0);
// A joint sequence of grid.tokens() video and text_tokens text tokens (joint_attention): flops(...) with the
// text as extra keys plus the text queries 4·L·(N + L)·d; dense = 4·(N + L)²·d per head.
FlopCount joint_flops(const VideoGrid& grid, std::int64_t text_tokens, std::int64_t head_dim,
                      std::int64_t heads = 1, std::int64_t batch = 1, const Options& options = {});

// Progress of long CPU runs: called with a stage name ("monarch R-step 1/2", "dense", ...) and the
// fraction done in [0, 1]. Process-wide; pass an empty function to switch it off. Not called on CUDA.
using ProgressCallback = std::function<void(const std::string& stage, double fraction)>;
void set_progress_callback(ProgressCallback callback);

// True when this build has CUDA kernels and a CUDA device is visible.
bool cuda_available();
// "NVIDIA H100 80GB HBM3" etc., or "" without a device.
std::string cuda_device_name(int device_index = 0);

} // namespace vmonarch
