#include "attention_runner.hpp"

#include <algorithm>
#include <vector>

#include "device_buffer.hpp"

namespace vmonarch::cli {

namespace {

double median(std::vector<double> values) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    const std::size_t mid = values.size() / 2;
    return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

void call_attention(Method method, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& out, const VideoGrid& grid, const Options& options, const LseView* lse,
                    const std::optional<JointText>& joint) {
    if (joint) { // spec §3c; dense: every key frame exact (sink_frames = T), i.e. exact over all valid keys
        Options o = options;
        if (method == Method::dense) o.sink_frames = grid.T, o.window_radius = std::nullopt, o.iterations = 1;
        joint_attention(q, k, v, out, grid, joint->tokens, joint->position, joint->lens.empty() ? nullptr : joint->lens.data(),
                        o, lse);
        return;
    }
    if (method == Method::vmonarch)
        attention(q, k, v, out, grid, options, lse);
    else
        dense_attention(q, k, v, out, options.softmax_scale, lse);
}

} // namespace

#ifdef VMONARCH_WITH_CUDA

namespace {

class EventPair {
public:
    EventPair() {
        check_cuda(cudaEventCreate(&start_), "cudaEventCreate");
        check_cuda(cudaEventCreate(&stop_), "cudaEventCreate");
    }
    ~EventPair() {
        cudaEventDestroy(start_);
        cudaEventDestroy(stop_);
    }
    EventPair(const EventPair&) = delete;
    EventPair& operator=(const EventPair&) = delete;
    void start() { check_cuda(cudaEventRecord(start_, nullptr), "cudaEventRecord"); }
    double stop_seconds() {
        check_cuda(cudaEventRecord(stop_, nullptr), "cudaEventRecord");
        check_cuda(cudaEventSynchronize(stop_), "waiting for the attention kernels");
        float ms = 0;
        check_cuda(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
        return ms * 1e-3;
    }

private:
    cudaEvent_t start_{}, stop_{};
};

} // namespace

struct AttentionSession::DeviceCopies {
    DeviceBuffer q, k, v;
    DeviceCopies(const HostTensor& hq, const HostTensor& hk, const HostTensor& hv)
        : q(hq.bytes.size()), k(hk.bytes.size()), v(hv.bytes.size()) {
        q.upload(hq.data());
        k.upload(hk.data());
        v.upload(hv.data());
    }
};

#else

struct AttentionSession::DeviceCopies {};

#endif

AttentionSession::AttentionSession(Device device, const HostTensor& q, const HostTensor& k, const HostTensor& v,
                                   Layout layout, const AttentionShape& shape)
    : device_(device), q_(q), k_(k), v_(v), layout_(layout), shape_(shape) {
    if (device_ == Device::cuda) {
        require_device_dtype(device_, q.dtype, "the input");
#ifdef VMONARCH_WITH_CUDA
        device_copies_ = std::make_unique<DeviceCopies>(q, k, v);
#else
        throw UnsupportedError("--device cuda: this vmonarch build has no CUDA kernels; use --device cpu");
#endif
    }
}

AttentionSession::~AttentionSession() = default;

AttentionResult AttentionSession::run(Method method, const VideoGrid& grid, const Options& options, bool want_lse,
                                      int warmup, int repeats) {
    repeats = std::max(repeats, 1);
    warmup = std::max(warmup, 0);
    const DType dtype = q_.dtype;
    AttentionResult result;
    result.out = HostTensor::zeros(dtype, file_shape(layout_, shape_.batch, shape_.heads, shape_.tokens,
                                                     shape_.value_dim));
    if (want_lse) result.lse = HostTensor::zeros(DType::f32, {shape_.batch, shape_.heads, shape_.tokens});
    std::vector<double> times;

    if (device_ == Device::cpu) {
        const auto view = [&](const HostTensor& t, std::int64_t dim) {
            return view_of(const_cast<void*>(t.data()), dtype, Device::cpu, layout_, shape_, dim);
        };
        const TensorView q = view(q_, shape_.head_dim), k = view(k_, shape_.head_dim), v = view(v_, shape_.value_dim);
        const TensorView out = view(result.out, shape_.value_dim);
        LseView lse_view;
        if (want_lse) lse_view = lse_view_of(result.lse.data(), Device::cpu, shape_);
        for (int i = 0; i < warmup + repeats; ++i) {
            Stopwatch watch;
            call_attention(method, q, k, v, out, grid, options, want_lse ? &lse_view : nullptr, joint_);
            if (i >= warmup) times.push_back(watch.seconds());
        }
        result.seconds = median(times);
        return result;
    }

#ifdef VMONARCH_WITH_CUDA
    DeviceBuffer out_buffer(result.out.bytes.size());
    DeviceBuffer lse_buffer(want_lse ? result.lse.bytes.size() : 0);
    const auto view = [&](const DeviceBuffer& b, std::int64_t dim) {
        return view_of(b.data(), dtype, Device::cuda, layout_, shape_, dim);
    };
    const TensorView q = view(device_copies_->q, shape_.head_dim), k = view(device_copies_->k, shape_.head_dim),
                     v = view(device_copies_->v, shape_.value_dim), out = view(out_buffer, shape_.value_dim);
    LseView lse_view;
    if (want_lse) lse_view = lse_view_of(lse_buffer.data(), Device::cuda, shape_);
    EventPair events;
    for (int i = 0; i < warmup + repeats; ++i) {
        events.start();
        call_attention(method, q, k, v, out, grid, options, want_lse ? &lse_view : nullptr, joint_);
        const double seconds = events.stop_seconds();
        if (i >= warmup) times.push_back(seconds);
    }
    check_cuda(cudaGetLastError(), method == Method::vmonarch ? "vmonarch::attention" : "vmonarch::dense_attention");
    out_buffer.download(result.out.data());
    if (want_lse) lse_buffer.download(result.lse.data());
    result.seconds = median(times);
    return result;
#else
    throw UnsupportedError("--device cuda: this vmonarch build has no CUDA kernels; use --device cpu");
#endif
}

} // namespace vmonarch::cli
