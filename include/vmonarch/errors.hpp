// Typed errors. Every message names the argument, the value it had and what was expected.
#pragma once

#include <stdexcept>
#include <string>

namespace vmonarch {

// A caller passed something invalid (shape, dtype, value, stride, aliasing, ...).
class ArgumentError : public std::invalid_argument {
public:
    ArgumentError(std::string argument, const std::string& message)
        : std::invalid_argument(message), argument_(std::move(argument)) {}
    const std::string& argument() const { return argument_; }

private:
    std::string argument_;
};

// Valid request this build or device cannot serve (CUDA tensor in a CPU-only build, ...).
class UnsupportedError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A CUDA call or kernel failed; the message names the kernel and the shapes.
class CudaError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Memory for the computation (host or device) could not be allocated; the message says how much and what
// for. Allocation failures anywhere in the library surface as this, never as std::bad_alloc or a signal.
class OutOfMemoryError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A tensor file is malformed, truncated, or holds something we do not read.
class FileFormatError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

} // namespace vmonarch
