// Pieces both operator files of the extension share (vmonarch_ops.cpp, backward_ops.cpp): the layout and
// dtype of a tensor, its view for the C++ API, the one translation of the C++ library's exceptions into torch's typed errors
// (ArgumentError -> ValueError, UnsupportedError -> NotImplementedError, OutOfMemoryError ->
// torch.OutOfMemoryError, CudaError and anything else -> RuntimeError), the CUDA context on torch's current
// stream, and the kernel that refuses forward-mode AD. The argument checks are in binding_args.hpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "vmonarch/vmonarch.hpp"

#ifdef VMONARCH_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace vmonarch_binding {

inline vmonarch::Layout parse_layout(c10::string_view layout) {
    if (const auto parsed = vmonarch::layout_from_string(std::string_view(layout.data(), layout.size()))) return *parsed;
    TORCH_CHECK_VALUE(false, "vmonarch: layout is '", std::string(layout), "', expected 'bshd' or 'bhsd'");
}

inline vmonarch::DType to_dtype(const at::Tensor& t) {
    switch (t.scalar_type()) {
    case at::kHalf: return vmonarch::DType::f16;
    case at::kBFloat16: return vmonarch::DType::bf16;
    case at::kFloat: return vmonarch::DType::f32;
    case at::kDouble: return vmonarch::DType::f64;
    default: break;
    }
    TORCH_CHECK_TYPE(false, "vmonarch: dtype ", t.scalar_type(),
                     " is not supported, expected bfloat16, float16, float32 or float64");
}

// A tensor [B, N, heads, d] ("bshd") or [B, heads, N, d] ("bhsd") as the C++ API's [batch, tokens, heads,
// head_dim] view, through its strides (the caller makes the head dim contiguous first).
inline vmonarch::TensorView view_of(const at::Tensor& t, vmonarch::Layout layout) {
    vmonarch::TensorView view;
    view.data = t.data_ptr();
    view.dtype = to_dtype(t);
    view.device = t.is_cuda() ? vmonarch::Device::cuda : vmonarch::Device::cpu;
    view.device_index = t.is_cuda() ? t.device().index() : 0;
    const int tok = layout == vmonarch::Layout::bshd ? 1 : 2;
    const int hd = layout == vmonarch::Layout::bshd ? 2 : 1;
    view.shape = {t.size(0), t.size(tok), t.size(hd), t.size(3)};
    view.strides = {t.stride(0), t.stride(tok), t.stride(hd), 1};
    return view;
}

// Runs f, turning the C++ library's exceptions into torch's typed errors.
template <typename F>
void translate_errors(F&& f) {
    try {
        f();
    } catch (const vmonarch::ArgumentError& e) {
        TORCH_CHECK_VALUE(false, e.what());
    } catch (const vmonarch::UnsupportedError& e) {
        TORCH_CHECK_NOT_IMPLEMENTED(false, e.what());
    } catch (const vmonarch::OutOfMemoryError& e) {
        // torch.OutOfMemoryError (a RuntimeError), the error torch itself raises when memory runs out.
        TORCH_CHECK_WITH(OutOfMemoryError, false, "vmonarch: ", e.what());
    } catch (const vmonarch::CudaError& e) {
        TORCH_CHECK(false, "vmonarch CUDA error: ", e.what());
    } catch (const c10::Error&) {
        throw;
    } catch (const std::exception& e) {
        TORCH_CHECK(false, "vmonarch: ", e.what());
    }
}

// Calls f(ctx) with a CudaContext on torch's current stream and a workspace of `ws_bytes()` bytes (at least
// one, so the pointer is never null) from torch's caching allocator, which is stream-ordered and graph-safe
// (captured graphs keep a private pool), for a CUDA tensor q; f(nullptr) otherwise (CPU, or CUDA tensors in a
// build without CUDA kernels, where the library raises UnsupportedError). ws_bytes runs only for CUDA tensors.
template <typename Bytes, typename F>
void with_cuda_context(const at::Tensor& q, Bytes&& ws_bytes, F&& f) {
#ifdef VMONARCH_WITH_CUDA
    if (q.is_cuda()) {
        c10::cuda::CUDAGuard guard(q.device());
        std::size_t bytes = 0;
        translate_errors([&] { bytes = ws_bytes(); });
        at::Tensor workspace =
            at::empty({static_cast<int64_t>(std::max<std::size_t>(bytes, 1))}, q.options().dtype(at::kByte));
        vmonarch::CudaContext ctx;
        ctx.stream = at::cuda::getCurrentCUDAStream(q.device().index()).stream();
        ctx.workspace = workspace.data_ptr();
        ctx.workspace_bytes = bytes;
        translate_errors([&] { f(&ctx); });
        return;
    }
#endif
    (void)ws_bytes;
    translate_errors([&] { f(static_cast<const vmonarch::CudaContext*>(nullptr)); });
}

// Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp): the operators have no forward derivative,
// and their autograd kernel runs them without looking at tangents, so the output would carry none (jvp
// then reports a zero tangent). This kernel sits one dispatch level below autograd (ADInplaceOrView),
// where the inputs still carry their tangents (torch.func's wrappers too: level 0 is the only forward-AD
// level torch uses), and refuses them; without tangents it passes the call on unchanged.
inline void refuse_forward_ad(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    const auto& arguments = op.schema().arguments();
    const auto values = torch::jit::last(*stack, arguments.size());
    for (std::size_t i = 0; i < arguments.size(); ++i) {
        if (!values[i].isTensor()) continue;
        const at::Tensor& t = values[i].toTensor();
        TORCH_CHECK_NOT_IMPLEMENTED(
            !t.defined() || !t._fw_grad(/*level=*/0).defined(), "vmonarch.",
            op.operator_name().name.substr(sizeof("vmonarch::") - 1),
            ": forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not supported: argument '",
            arguments[i].name(), "' has a tangent, but the operator has no forward derivative; call it on plain "
            "tensors, e.g. torch.autograd.forward_ad.unpack_dual(x).primal");
    }
    at::AutoDispatchBelowADInplaceOrView below;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

// Registers refuse_forward_ad for `ops` (in a TORCH_LIBRARY_IMPL(vmonarch, ADInplaceOrView, m) block).
inline void refuse_forward_ad_for(torch::Library& m, std::initializer_list<const char*> ops) {
    for (const char* op : ops) m.impl(op, torch::CppFunction::makeFromBoxedFunction<&refuse_forward_ad>());
}

} // namespace vmonarch_binding
