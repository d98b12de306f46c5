// libFuzzer target: parse_safetensors on arbitrary bytes. Only the documented rejections are swallowed;
// any other exception, a sanitizer report or a broken invariant is a finding.
#include <cstdint>
#include <cstdlib>

#include "vmonarch/extras/tensor_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const vmonarch::TensorMap m = vmonarch::parse_safetensors(data, size);
        std::size_t total = 0;
        for (const auto& [name, t] : m) {
            const std::size_t item = t.dtype == vmonarch::DType::f64 ? 8 : t.dtype == vmonarch::DType::f32 ? 4 : 2;
            if (t.bytes.size() != std::size_t(t.numel()) * item) std::abort();
            if (t.converted(vmonarch::DType::f32).bytes.size() != std::size_t(t.numel()) * 4) std::abort();
            total += t.bytes.size();
        }
        if (total > size) std::abort(); // tensors tile the data buffer, never more
    } catch (const vmonarch::FileFormatError&) {
    } catch (const vmonarch::ArgumentError&) {
    }
    return 0;
}
