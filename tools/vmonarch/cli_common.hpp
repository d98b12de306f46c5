// Shared helpers of the vmonarch command-line tool: parsing of option values, formatting of numbers,
// the progress line on stderr, and the small error type the subcommands throw for bad option values.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch::cli {

// One registered subcommand: its CLI11 node and what runs when it was chosen (returns the exit code).
struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;
};

// Exit statuses of every subcommand (main.cpp maps the errors; README "Errors" lists them).
enum ExitStatus : int {
    exit_success = 0,
    exit_invalid = 1,        // invalid arguments or files (ArgumentError, FileFormatError, parse errors)
    exit_unsupported = 2,    // unsupported requests and CUDA failures
    exit_internal = 3,       // anything else
    exit_out_of_memory = 4,  // an allocation failed (OutOfMemoryError, std::bad_alloc)
    exit_non_finite = 5,     // finished, but the results hold NaN/inf (run: written; compare: reported)
};

// "bhsd" / "bshd" in any case (vmonarch::Layout, the memory order of an attention tensor in a file);
// anything else: ArgumentError naming `option`.
Layout parse_layout(const std::string& text, const std::string& option = "--layout");

// "T,H,W" (commas, or 'x' as in 16x28x52) of positive integers, nothing else (no spaces or signs), whose
// product T*H*W fits in int64; ArgumentError naming `option` otherwise.
VideoGrid parse_grid(const std::string& text, const std::string& option = "--grid");

// A seed: decimal digits only, 0 .. 2^64-1 (a negative number is an error, not a wrapped value).
std::uint64_t parse_seed(const std::string& text, const std::string& option = "--seed");
std::string format_grid(const VideoGrid& grid); // "16x28x52"

// "f16", "bf16", "f32", "f64" (also "float16", "bfloat16", "float32", "float64").
DType parse_dtype(const std::string& text, const std::string& option);

// "cpu", "cuda" or "auto" (cuda when this build has kernels and a device is visible, else cpu).
// Asking for cuda where there is none is an UnsupportedError that says why.
Device resolve_device(const std::string& text, const std::string& option = "--device");

// The CUDA kernels take 16-bit tensors; throws ArgumentError naming `option` for anything else on cuda.
void require_device_dtype(Device device, DType dtype, const std::string& source);

// Positive integer from a flag, with a message naming the flag.
void require_positive(std::int64_t value, const std::string& option);

// Number formatting for the human-readable outputs.
std::string format_flops(double flops);        // "4.30 GFLOP", "159.7 TFLOP"
std::string format_seconds(double seconds);    // "512 ms", "3.21 s", "41.2 us"
std::string format_fixed(double value, int digits);
std::string format_thousands(std::int64_t value); // 23,296
std::string format_shape(const std::vector<std::int64_t>& shape); // [1, 12, 23296, 128]
std::string format_metric(double value, int digits); // fixed, or "nan" / "inf" / "-inf"

// "vmonarch <command>: warning: <message>" on stderr (after flushing stdout).
void print_warning(const std::string& command, const std::string& message);

// A path to a tensor inside a file: "x.npy", "x.safetensors" or "x.safetensors:name", split as read_tensor
// splits it.
struct TensorPath {
    std::string file;
    std::string name; // empty unless given after the colon
};
TensorPath split_tensor_path(const std::string& spec);

// "<option> <message>" when the message already starts with the file name, else "<option> <spec>: <message>".
std::string with_option(const std::string& option, const std::string& spec, const std::string& message);

// Throws ArgumentError "<option> <spec>: no such file" when the file part does not exist (or the reason it
// cannot be looked at, e.g. "Too many levels of symbolic links").
void require_existing_file(const std::string& spec, const std::string& option);

// Throws ArgumentError when the file part does not end in .npy or .safetensors, or the name after
// ".safetensors:" is empty.
void require_tensor_extension(const std::string& spec, const std::string& option);
bool is_npy_path(const std::string& spec);

// Shows vmonarch's progress callback as one updating line on stderr while alive (when enabled: stderr is a
// TTY, or the user asked with --progress). Clears the line and removes the callback when destroyed.
class ProgressLine {
public:
    explicit ProgressLine(bool forced);
    ~ProgressLine();
    ProgressLine(const ProgressLine&) = delete;
    ProgressLine& operator=(const ProgressLine&) = delete;
    bool enabled() const { return enabled_; }

private:
    bool enabled_ = false;
};

// Wall-clock stopwatch in seconds.
class Stopwatch {
public:
    Stopwatch() : start_(std::chrono::steady_clock::now()) {}
    double seconds() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

private:
    std::chrono::steady_clock::time_point start_;
};

} // namespace vmonarch::cli
