// IEEE binary16 and bfloat16 <-> float conversion on the host (round to nearest even).
#pragma once

#include <bit>
#include <cstdint>

namespace vmonarch {

// bfloat16 is the upper half of a float's bits.
inline float bf16_to_float(std::uint16_t h) { return std::bit_cast<float>(std::uint32_t(h) << 16); }

inline std::uint16_t float_to_bf16(float f) {
    std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
    if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) return std::uint16_t((bits >> 16) | 0x40); // quiet NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return std::uint16_t(bits >> 16);
}

inline float f16_to_float(std::uint16_t h) {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { // subnormal: normalise
            int e = -1;
            do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
            bits = sign | std::uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | man << 13;
    } else {
        bits = sign | (exp + 112u) << 23 | man << 13;
    }
    return std::bit_cast<float>(bits);
}

inline std::uint16_t float_to_f16(float f) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
    const std::uint16_t sign = std::uint16_t((bits >> 16) & 0x8000u);
    const std::uint32_t abs = bits & 0x7fffffffu;
    if (abs >= 0x7f800000u) return std::uint16_t(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u)); // inf/NaN
    if (abs >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);                                       // overflow
    if (abs < 0x38800000u) { // result is subnormal or zero: round (abs as float) * 2^24 to an integer
        const float scaled = std::bit_cast<float>(abs) * 16777216.0f; // exact, < 1024
        std::uint32_t m = std::uint32_t(scaled);
        const float rem = scaled - float(m);
        if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
        return std::uint16_t(sign | m);
    }
    std::uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return std::uint16_t(sign | ((rounded - (112u << 23)) >> 13));
}

} // namespace vmonarch
