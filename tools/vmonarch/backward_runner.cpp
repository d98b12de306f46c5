#include "backward_runner.hpp"

#include "device_buffer.hpp"

namespace vmonarch::cli {

namespace {

// The forward and the backward on views of one device's memory: dq, dk, dv get the gradients of
// <out, dout> (spec §7); returns the saved state's bytes (0 in lean mode).
std::size_t forward_and_backward(const BackwardRequest& r, const TensorView& q, const TensorView& k, const TensorView& v,
                                 const TensorView& out, const LseView& lse, const TensorView& dout, const TensorView& dq,
                                 const TensorView& dk, const TensorView& dv) {
    BackwardOptions bo;
    bo.entropy_grad = r.entropy_grad;
    bo.deterministic = r.deterministic;
    if (r.joint) {
        const std::int64_t* lens = r.joint->lens.empty() ? nullptr : r.joint->lens.data();
        joint_attention(q, k, v, out, r.grid, r.joint->tokens, r.joint->position, lens, r.options, &lse);
        joint_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, r.grid, r.joint->tokens, r.joint->position, lens,
                                 r.options, nullptr, bo);
        return 0;
    }
    if (!r.saved) {
        attention(q, k, v, out, r.grid, r.options, &lse);
        attention_backward(q, k, v, out, lse, dout, dq, dk, dv, r.grid, r.options, nullptr, bo);
        return 0;
    }
    SavedState state; // host memory for CPU views, device memory for CUDA views
    attention_training(q, k, v, out, lse, r.grid, r.options, state);
    bo.saved = &state;
    attention_backward(q, k, v, out, lse, dout, dq, dk, dv, r.grid, r.options, nullptr, bo);
    return state.bytes();
}

} // namespace

BackwardResult run_backward(Device device, const BackwardRequest& r, const HostTensor& q, const HostTensor& k,
                            const HostTensor& v, const HostTensor& dout, HostTensor& dq, HostTensor& dk,
                            HostTensor& dv) {
    const AttentionShape& s = r.shape;
    const DType dtype = q.dtype;
    const auto out_shape = file_shape(r.layout, s.batch, s.heads, s.tokens, s.value_dim);
    BackwardResult result;
    if (device == Device::cpu) {
        const auto view = [&](const HostTensor& t, std::int64_t dim) {
            return view_of(const_cast<void*>(t.data()), dtype, Device::cpu, r.layout, s, dim);
        };
        HostTensor out = HostTensor::zeros(dtype, out_shape);
        const DType lse_dtype = dtype == DType::f64 ? DType::f64 : DType::f32;
        HostTensor lse = HostTensor::zeros(lse_dtype, {s.batch, s.heads, s.tokens});
        const LseView lv = LseView::contiguous(lse.data(), lse_dtype, Device::cpu, s.batch, s.heads, s.tokens);
        Stopwatch clock;
        result.saved_bytes = forward_and_backward(r, view(q, s.head_dim), view(k, s.head_dim), view(v, s.value_dim),
                                                  view(out, s.value_dim), lv, view(dout, s.value_dim),
                                                  view(dq, s.head_dim), view(dk, s.head_dim), view(dv, s.value_dim));
        result.seconds = clock.seconds();
        return result;
    }
#ifdef VMONARCH_WITH_CUDA
    require_device_dtype(device, dtype, "the input");
    DeviceBuffer dq_buf(dq.bytes.size()), dk_buf(dk.bytes.size()), dv_buf(dv.bytes.size());
    DeviceBuffer q_buf(q.bytes.size()), k_buf(k.bytes.size()), v_buf(v.bytes.size()), dout_buf(dout.bytes.size());
    DeviceBuffer out_buf(dout.bytes.size()); // out has dout's shape and dtype
    DeviceBuffer lse_buf(std::size_t(s.batch) * std::size_t(s.heads) * std::size_t(s.tokens) * 4);
    q_buf.upload(q.data());
    k_buf.upload(k.data());
    v_buf.upload(v.data());
    dout_buf.upload(dout.data());
    const auto view = [&](const DeviceBuffer& b, std::int64_t dim) {
        return view_of(b.data(), dtype, Device::cuda, r.layout, s, dim);
    };
    const LseView lv = lse_view_of(lse_buf.data(), Device::cuda, s);
    Stopwatch clock;
    result.saved_bytes = forward_and_backward(r, view(q_buf, s.head_dim), view(k_buf, s.head_dim),
                                              view(v_buf, s.value_dim), view(out_buf, s.value_dim), lv,
                                              view(dout_buf, s.value_dim), view(dq_buf, s.head_dim),
                                              view(dk_buf, s.head_dim), view(dv_buf, s.value_dim));
    check_cuda(cudaDeviceSynchronize(), "the backward's kernels");
    result.seconds = clock.seconds();
    dq_buf.download(dq.data());
    dk_buf.download(dk.data());
    dv_buf.download(dv.data());
    return result;
#else
    throw UnsupportedError("--device cuda: this vmonarch build has no CUDA kernels; use --device cpu");
#endif
}

} // namespace vmonarch::cli
