// Pieces both operator files of the extension share (vmonarch_ops.cpp, backward_ops.cpp): the layout and
// dtype of a tensor, its view for the C++ API, and the one translation of the C++ library's exceptions into torch's typed errors
// (ArgumentError -> ValueError, UnsupportedError -> NotImplementedError, OutOfMemoryError ->
// torch.OutOfMemoryError, CudaError and anything else -> RuntimeError).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>
#include <string_view>

#include "vmonarch/vmonarch.hpp"

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

} // namespace vmonarch_binding
