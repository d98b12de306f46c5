// libFuzzer target: parse_npy on arbitrary bytes. Only the documented rejections are swallowed; any
// other exception, a sanitizer report or a broken invariant is a finding.
#include <cstdint>
#include <cstdlib>

#include "vmonarch/extras/tensor_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const vmonarch::HostTensor t = vmonarch::parse_npy(data, size);
        const std::size_t item = t.dtype == vmonarch::DType::f64 ? 8 : t.dtype == vmonarch::DType::f32 ? 4 : 2;
        if (t.bytes.size() != std::size_t(t.numel()) * item || t.bytes.size() > size) std::abort();
        if (t.to_doubles().size() != std::size_t(t.numel())) std::abort();
    } catch (const vmonarch::FileFormatError&) {
    } catch (const vmonarch::ArgumentError&) {
    }
    return 0;
}
