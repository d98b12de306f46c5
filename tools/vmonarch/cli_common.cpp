#include "cli_common.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <sstream>

namespace vmonarch::cli {

namespace {

std::string lower(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return text;
}

bool ends_with(const std::string& text, const std::string& suffix) {
    return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

} // namespace

Layout parse_layout(const std::string& text, const std::string& option) {
    if (const auto layout = layout_from_string(lower(text))) return *layout;
    throw ArgumentError(option, option + " '" + text +
                                    "': unknown layout; expected bhsd ([batch, heads, tokens, dim], PyTorch SDPA) "
                                    "or bshd ([batch, tokens, heads, dim], flash-attn / Wan)");
}

VideoGrid parse_grid(const std::string& text, const std::string& option) {
    const auto fail = [&](const std::string& why) -> VideoGrid {
        throw ArgumentError(option, option + " '" + text + "': " + why +
                                        "; expected three positive integers T,H,W (frames, latent height, latent "
                                        "width), e.g. 16,28,52");
    };
    // Strictly digits and separators: no signs, spaces or other characters anywhere.
    std::vector<std::int64_t> parts;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= text.size(); ++i) {
        const bool end = i == text.size();
        const char c = end ? ',' : text[i];
        if (c >= '0' && c <= '9') continue;
        if (c != ',' && c != 'x' && c != 'X') return fail(std::string("unexpected character '") + c + "'");
        if (i == start) return fail("empty number");
        std::int64_t value = 0;
        const auto [ptr, error] = std::from_chars(text.data() + start, text.data() + i, value);
        if (error != std::errc() || ptr != text.data() + i) return fail("number too large");
        parts.push_back(value);
        start = i + 1;
    }
    if (parts.size() != 3) return fail("got " + std::to_string(parts.size()) + " number(s)");
    for (auto p : parts)
        if (p <= 0) return fail("sizes must be at least 1");
    const VideoGrid grid{parts[0], parts[1], parts[2]};
    try {
        (void)grid.tokens();
    } catch (const ArgumentError&) {
        throw ArgumentError(option, option + " '" + text + "': T*H*W = " + std::to_string(grid.T) + "*" +
                                        std::to_string(grid.H) + "*" + std::to_string(grid.W) +
                                        " overflows int64 (at most " +
                                        std::to_string(std::numeric_limits<std::int64_t>::max()) + " tokens)");
    }
    return grid;
}

std::uint64_t parse_seed(const std::string& text, const std::string& option) {
    std::uint64_t value = 0;
    const auto [ptr, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || text[0] == '-' || text[0] == '+' || error != std::errc() || ptr != text.data() + text.size())
        throw ArgumentError(option, option + " '" + text + "': expected an integer from 0 to " +
                                        std::to_string(std::numeric_limits<std::uint64_t>::max()));
    return value;
}

std::string format_grid(const VideoGrid& grid) {
    return std::to_string(grid.T) + "x" + std::to_string(grid.H) + "x" + std::to_string(grid.W);
}

DType parse_dtype(const std::string& text, const std::string& option) {
    const std::string value = lower(text);
    if (value == "f16" || value == "float16" || value == "fp16" || value == "half") return DType::f16;
    if (value == "bf16" || value == "bfloat16") return DType::bf16;
    if (value == "f32" || value == "float32" || value == "fp32" || value == "float") return DType::f32;
    if (value == "f64" || value == "float64" || value == "fp64" || value == "double") return DType::f64;
    throw ArgumentError(option, option + " '" + text + "': unknown dtype; expected f16, bf16, f32 or f64");
}

Device resolve_device(const std::string& text, const std::string& option) {
    const std::string value = lower(text);
    if (value == "cpu") return Device::cpu;
    if (value == "auto") return cuda_available() ? Device::cuda : Device::cpu;
    if (value == "cuda" || value == "gpu") {
#ifndef VMONARCH_WITH_CUDA
        throw UnsupportedError(option + " cuda: this vmonarch build has no CUDA kernels (rebuild with nvcc on "
                                        "the PATH or -DVMONARCH_CUDA=ON), use " + option + " cpu");
#else
        if (!cuda_available())
            throw UnsupportedError(option + " cuda: no CUDA device is visible (check nvidia-smi and "
                                            "CUDA_VISIBLE_DEVICES), use " + option + " cpu");
        return Device::cuda;
#endif
    }
    throw ArgumentError(option, option + " '" + text + "': unknown device; expected cpu, cuda or auto");
}

void require_device_dtype(Device device, DType dtype, const std::string& source) {
    if (device != Device::cuda || dtype == DType::bf16 || dtype == DType::f16) return;
    throw ArgumentError("--cast", source + " holds " + vmonarch::to_string(dtype) +
                                      " but the CUDA kernels take bf16 or f16: pass --cast bf16 (or --cast f16) to "
                                      "convert on the way in, or use --device cpu");
}

void require_positive(std::int64_t value, const std::string& option) {
    if (value < 1)
        throw ArgumentError(option, option + " " + std::to_string(value) + ": must be a positive integer");
}

std::string format_fixed(double value, int digits) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.*f", digits, value);
    return buffer;
}

std::string format_flops(double flops) {
    static const char* units[] = {"FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"};
    int unit = 0;
    double value = flops;
    while (std::fabs(value) >= 1000.0 && unit < 6) {
        value /= 1000.0;
        ++unit;
    }
    const int digits = std::fabs(value) >= 100 ? 1 : 2;
    return format_fixed(value, digits) + " " + units[unit];
}

std::string format_seconds(double seconds) {
    if (seconds >= 1.0) return format_fixed(seconds, 2) + " s";
    if (seconds >= 1e-3) return format_fixed(seconds * 1e3, seconds >= 0.1 ? 0 : 2) + " ms";
    return format_fixed(seconds * 1e6, 1) + " us";
}

std::string format_thousands(std::int64_t value) {
    std::string digits = std::to_string(value < 0 ? -value : value);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return value < 0 ? "-" + out : out;
}

std::string format_shape(const std::vector<std::int64_t>& shape) {
    std::ostringstream out;
    out << '[';
    for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    out << ']';
    return out.str();
}

TensorPath split_tensor_path(const std::string& spec) {
    // As read_tensor reads it: a name only when the spec does not itself end in .npy / .safetensors.
    const std::string low = lower(spec);
    if (ends_with(low, ".npy") || ends_with(low, ".safetensors")) return TensorPath{spec, ""};
    const std::string marker = ".safetensors:";
    const auto at = low.find(marker);
    if (at == std::string::npos) return TensorPath{spec, ""};
    const auto colon = at + marker.size() - 1;
    return TensorPath{spec.substr(0, colon), spec.substr(colon + 1)};
}

bool is_npy_path(const std::string& spec) { return ends_with(lower(split_tensor_path(spec).file), ".npy"); }

void require_tensor_extension(const std::string& spec, const std::string& option) {
    const TensorPath path = split_tensor_path(spec);
    const std::string file = lower(path.file);
    if (ends_with(file, ".npy") && path.name.empty()) return;
    if (ends_with(file, ".safetensors")) {
        if (path.file.size() + 1 == spec.size())
            throw ArgumentError(option, option + " '" + spec +
                                            "': empty tensor name after ':'; write FILE.safetensors or "
                                            "FILE.safetensors:NAME");
        return;
    }
    throw ArgumentError(option, option + " '" + spec +
                                    "': expected a .npy file or a .safetensors file (optionally file.safetensors:name)");
}

std::string with_option(const std::string& option, const std::string& spec, const std::string& message) {
    const TensorPath path = split_tensor_path(spec);
    if (!path.file.empty() && message.rfind(path.file, 0) == 0) return option + " " + message;
    return option + " " + spec + ": " + message;
}

void require_existing_file(const std::string& spec, const std::string& option) {
    require_tensor_extension(spec, option);
    const TensorPath path = split_tensor_path(spec);
    namespace fs = std::filesystem;
    std::error_code error;
    const fs::file_status status = fs::status(path.file, error);
    if (error && error != std::errc::no_such_file_or_directory)
        throw ArgumentError(option, option + " " + path.file + ": " + error.message());
    if (!fs::exists(status)) {
        if (fs::is_symlink(fs::symlink_status(path.file, error)))
            throw ArgumentError(option, option + " " + path.file + ": is a symbolic link to a missing file");
        throw ArgumentError(option, option + " " + path.file + ": no such file");
    }
    if (fs::is_directory(status))
        throw ArgumentError(option, option + " " + path.file + ": is a directory, expected a tensor file");
}

std::string format_metric(double value, int digits) {
    if (std::isnan(value)) return "nan";
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
    return format_fixed(value, digits);
}

void print_warning(const std::string& command, const std::string& message) {
    std::fflush(stdout);
    std::fprintf(stderr, "vmonarch %s: warning: %s\n", command.c_str(), message.c_str());
    std::fflush(stderr);
}

// --- progress line ------------------------------------------------------------------------------------

namespace {

struct ProgressState {
    std::mutex mutex;
    std::string stage;
    int percent = -1;
    std::chrono::steady_clock::time_point last{};
    std::size_t width = 0;
};

ProgressState& progress_state() {
    static ProgressState state;
    return state;
}

} // namespace

ProgressLine::ProgressLine(bool forced) : enabled_(forced || ::isatty(STDERR_FILENO) == 1) {
    if (!enabled_) return;
    set_progress_callback([](const std::string& stage, double fraction) {
        ProgressState& s = progress_state();
        std::lock_guard<std::mutex> lock(s.mutex);
        const int percent = int(std::clamp(fraction, 0.0, 1.0) * 100.0);
        const auto now = std::chrono::steady_clock::now();
        const bool new_stage = stage != s.stage;
        if (!new_stage && (percent == s.percent || now - s.last < std::chrono::milliseconds(100))) return;
        s.stage = stage;
        s.percent = percent;
        s.last = now;
        std::string line = "  " + stage + " " + std::to_string(percent) + "%";
        const std::size_t width = line.size();
        if (line.size() < s.width) line.append(s.width - line.size(), ' ');
        s.width = width;
        std::fprintf(stderr, "\r%s", line.c_str());
        std::fflush(stderr);
    });
}

ProgressLine::~ProgressLine() {
    if (!enabled_) return;
    set_progress_callback({});
    ProgressState& s = progress_state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.width > 0) {
        std::fprintf(stderr, "\r%s\r", std::string(s.width, ' ').c_str());
        std::fflush(stderr);
    }
    s.stage.clear();
    s.percent = -1;
    s.width = 0;
}

} // namespace vmonarch::cli
