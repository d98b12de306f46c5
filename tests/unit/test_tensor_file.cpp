// Tensor files: HostTensor conversions, .npy and .safetensors round trips and every rejected input.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "vmonarch/half.hpp"
#include "vmonarch/extras/tensor_file.hpp"

namespace vm = vmonarch;

namespace {

using Bytes = std::vector<std::uint8_t>;

// Fails unless `stmt` throws `type` whose what() contains `substr`.
#define EXPECT_THROW_WITH(stmt, type, substr)                                                          \
    do {                                                                                               \
        try {                                                                                          \
            stmt;                                                                                      \
            ADD_FAILURE() << #stmt " did not throw " #type;                                            \
        } catch (const type& e) {                                                                      \
            EXPECT_NE(std::string(e.what()).find(substr), std::string::npos)                           \
                << "message '" << e.what() << "' lacks '" << (substr) << "'";                          \
        }                                                                                              \
    } while (0)

std::string temp_path(const std::string& name) {
    return ::testing::TempDir() + "vmonarch_tf_" + std::to_string(::getpid()) + "_" + name;
}

void write_bytes(const std::string& path, const Bytes& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

Bytes read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void append(Bytes& b, const std::string& s) { b.insert(b.end(), s.begin(), s.end()); }
void append(Bytes& b, const Bytes& s) { b.insert(b.end(), s.begin(), s.end()); }

template <class T>
Bytes raw(const std::vector<T>& v) {
    Bytes b(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
    return b;
}

// An .npy image with the given version, header text (used verbatim) and data bytes.
Bytes npy(int major, const std::string& header, const Bytes& data) {
    Bytes b = {0x93, 'N', 'U', 'M', 'P', 'Y', std::uint8_t(major), 0};
    const std::size_t n = header.size();
    b.push_back(std::uint8_t(n & 0xff));
    b.push_back(std::uint8_t(n >> 8 & 0xff));
    if (major >= 2) {
        b.push_back(std::uint8_t(n >> 16 & 0xff));
        b.push_back(std::uint8_t(n >> 24 & 0xff));
    }
    append(b, header);
    append(b, data);
    return b;
}

std::string npy_dict(const std::string& descr, const std::string& shape, const std::string& order = "False") {
    return "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': " + shape + ", }\n";
}

// A .safetensors image: declared header length `len` (default: the header's size), header, data.
Bytes st(const std::string& header, const Bytes& data, std::uint64_t len = ~0ull) {
    if (len == ~0ull) len = header.size();
    Bytes b;
    for (int i = 0; i < 8; ++i) b.push_back(std::uint8_t(len >> (8 * i) & 0xff));
    append(b, header);
    append(b, data);
    return b;
}

vm::HostTensor parse_npy(const Bytes& b) { return vm::parse_npy(b.data(), b.size()); }
vm::TensorMap parse_st(const Bytes& b) { return vm::parse_safetensors(b.data(), b.size()); }

std::uint16_t bits16(const vm::HostTensor& t, std::size_t i) {
    std::uint16_t h;
    std::memcpy(&h, t.bytes.data() + 2 * i, 2);
    return h;
}

std::vector<float> ramp(std::size_t n) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = float(i) * 0.375f - 1.25f; // exact in f16 and bf16
    return v;
}

std::int64_t count(const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

// ------------------------------------------------------------------------------------------------
// HostTensor

TEST(TensorFileHost, NumelAndZeros) {
    EXPECT_EQ(vm::HostTensor::zeros(vm::DType::f32, {2, 3, 4}).numel(), 24);
    EXPECT_EQ(vm::HostTensor::zeros(vm::DType::f32, {}).numel(), 1);
    EXPECT_EQ(vm::HostTensor::zeros(vm::DType::f32, {0, 5}).numel(), 0);
    EXPECT_EQ(vm::HostTensor::zeros(vm::DType::f64, {3, 5}).bytes.size(), 120u);
    EXPECT_EQ(vm::HostTensor::zeros(vm::DType::bf16, {7}).bytes.size(), 14u);
    EXPECT_THROW(vm::HostTensor::zeros(vm::DType::f32, {2, -1}), vm::ArgumentError);
    EXPECT_THROW(vm::HostTensor::zeros(vm::DType::f32, {std::int64_t(1) << 62, 8}), vm::ArgumentError);
    EXPECT_THROW(vm::HostTensor::from_floats({1, 2, 3}, {2, 2}, vm::DType::f32), vm::ArgumentError);
}

TEST(TensorFileHost, F16ExactValues) {
    const std::vector<float> v = {0.0f, -0.0f, 1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -14), std::ldexp(1.0f, -24),
                                  1025.0f, 0.333251953125f};
    const auto t = vm::HostTensor::from_floats(v, {9}, vm::DType::f16);
    EXPECT_EQ(t.to_floats(), v);
    EXPECT_EQ(bits16(t, 1), 0x8000);
    EXPECT_EQ(bits16(t, 2), 0x3c00);
    EXPECT_EQ(bits16(t, 3), 0xc000);
    EXPECT_EQ(bits16(t, 4), 0x7bff);
    EXPECT_EQ(bits16(t, 5), 0x0400);
    EXPECT_EQ(bits16(t, 6), 0x0001);
    const auto d = t.to_doubles();
    EXPECT_EQ(d[7], 1025.0);
}

TEST(TensorFileHost, F16RoundToNearestEven) {
    const float one = 1.0f, ulp = std::ldexp(1.0f, -10);
    const std::vector<float> v = {
        one + ulp / 2,                         // tie -> even (1.0)
        one + 3 * ulp / 2,                     // tie -> even (1 + 2 ulp)
        one + ulp / 2 + std::ldexp(1.0f, -20), // just above the tie -> up
        one + ulp / 2 - std::ldexp(1.0f, -20), // just below -> down
        65519.0f,                              // below the overflow threshold -> 65504
        65520.0f,                              // at it -> inf
        std::ldexp(1.0f, -25),                 // subnormal tie -> 0
        3 * std::ldexp(1.0f, -25),             // subnormal tie -> 2 * 2^-24
    };
    const auto t = vm::HostTensor::from_floats(v, {8}, vm::DType::f16);
    EXPECT_EQ(bits16(t, 0), 0x3c00);
    EXPECT_EQ(bits16(t, 1), 0x3c02);
    EXPECT_EQ(bits16(t, 2), 0x3c01);
    EXPECT_EQ(bits16(t, 3), 0x3c00);
    EXPECT_EQ(bits16(t, 4), 0x7bff);
    EXPECT_EQ(bits16(t, 5), 0x7c00);
    EXPECT_EQ(bits16(t, 6), 0x0000);
    EXPECT_EQ(bits16(t, 7), 0x0002);
}

TEST(TensorFileHost, BF16ExactAndRounding) {
    const float one = 1.0f, ulp = std::ldexp(1.0f, -7);
    const std::vector<float> exact = {1.0f, -3.5f, 0.0078125f, std::ldexp(1.0f, 100), -0.0f};
    const auto e = vm::HostTensor::from_floats(exact, {5}, vm::DType::bf16);
    EXPECT_EQ(e.to_floats(), exact);
    EXPECT_EQ(bits16(e, 0), 0x3f80);
    EXPECT_EQ(bits16(e, 1), 0xc060);

    const std::vector<float> v = {one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + std::ldexp(1.0f, -20),
                                  std::numeric_limits<float>::quiet_NaN()};
    const auto t = vm::HostTensor::from_floats(v, {4}, vm::DType::bf16);
    EXPECT_EQ(bits16(t, 0), 0x3f80);
    EXPECT_EQ(bits16(t, 1), 0x3f82);
    EXPECT_EQ(bits16(t, 2), 0x3f81);
    EXPECT_TRUE(std::isnan(t.to_floats()[3]));
}

TEST(TensorFileHost, ConvertedRoundsOnceFromDouble) {
    // Just above a tie in f16 / bf16 but within half a float ulp of it: double -> float -> 16-bit would
    // round twice and land on the even neighbour below; a single rounding goes up.
    auto t = vm::HostTensor::zeros(vm::DType::f64, {3});
    const std::vector<double> d = {1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40),
                                   1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40), 0.1};
    std::memcpy(t.bytes.data(), d.data(), 24);
    const auto h = t.converted(vm::DType::f16);
    const auto b = t.converted(vm::DType::bf16);
    EXPECT_EQ(bits16(h, 0), 0x3c01);
    EXPECT_EQ(bits16(b, 1), 0x3f81);
    EXPECT_EQ(t.converted(vm::DType::f32).to_floats()[2], 0.1f);
    EXPECT_EQ(bits16(h, 2), vm::float_to_f16(0.1f));

    // f32 -> f64 -> f32 and f16 -> f32 -> f16 are exact.
    const auto f = vm::HostTensor::from_floats(ramp(6), {2, 3}, vm::DType::f32);
    EXPECT_EQ(f.converted(vm::DType::f64).converted(vm::DType::f32).bytes, f.bytes);
    const auto g = f.converted(vm::DType::f16);
    EXPECT_EQ(g.shape, f.shape);
    EXPECT_EQ(g.converted(vm::DType::f32).converted(vm::DType::f16).bytes, g.bytes);
    EXPECT_EQ(g.to_floats(), ramp(6));
    EXPECT_EQ(f.converted(vm::DType::bf16).converted(vm::DType::f16).bytes, g.bytes);
}

// ------------------------------------------------------------------------------------------------
// .npy

class TensorFileNpyRoundTrip : public ::testing::TestWithParam<vm::DType> {};

TEST_P(TensorFileNpyRoundTrip, Shapes) {
    const std::vector<std::vector<std::int64_t>> shapes = {{}, {5}, {1}, {2, 3}, {2, 0, 3}, {1, 2, 3, 4}};
    int k = 0;
    for (const auto& shape : shapes) {
        const auto t = vm::HostTensor::from_floats(ramp(std::size_t(count(shape))), shape, GetParam());
        const std::string path = temp_path("rt" + std::to_string(k++) + ".npy");
        vm::write_npy(path, t);
        const Bytes file = read_bytes(path);
        ASSERT_GE(file.size(), 10u);
        const std::size_t header_len = file[8] | file[9] << 8;
        EXPECT_EQ(file[6], 1);
        EXPECT_EQ(file[7], 0);
        EXPECT_EQ((10 + header_len) % 64, 0u);
        EXPECT_EQ(file[10 + header_len - 1], '\n');
        EXPECT_EQ(file.size(), 10 + header_len + t.bytes.size());

        const auto r = vm::read_npy(path);
        EXPECT_EQ(r.dtype, GetParam());
        EXPECT_EQ(r.shape, shape);
        EXPECT_EQ(r.bytes, t.bytes);
        EXPECT_EQ(r.to_floats(), ramp(std::size_t(count(shape))));
        const auto p = parse_npy(file);
        EXPECT_EQ(p.bytes, t.bytes);
        std::filesystem::remove(path);
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, TensorFileNpyRoundTrip, ::testing::Values(vm::DType::f16, vm::DType::f32, vm::DType::f64),
                         [](const auto& info) { return std::string(info.param == vm::DType::f16   ? "f16"
                                                                   : info.param == vm::DType::f32 ? "f32"
                                                                                                  : "f64"); });

TEST(TensorFileNpy, HeaderBytesAsNumpyWritesThem) {
    // numpy.save writes a 1.0 header padded with spaces and a newline so the data starts at byte 128.
    const auto expect = [](const std::string& dict) {
        std::string h = std::string("\x93NUMPY\x01\x00\x76\x00", 10) + dict;
        h.append(127 - h.size(), ' ');
        return h + "\n";
    };
    const std::string path = temp_path("hdr.npy");
    vm::write_npy(path, vm::HostTensor::from_floats({1, 2, 3}, {3}, vm::DType::f32));
    const Bytes b = read_bytes(path);
    ASSERT_EQ(b.size(), 128u + 12u);
    EXPECT_EQ(std::string(b.begin(), b.begin() + 128), expect("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"));
    vm::write_npy(path, vm::HostTensor::from_floats({7}, {}, vm::DType::f64));
    const Bytes c = read_bytes(path);
    ASSERT_EQ(c.size(), 128u + 8u);
    EXPECT_EQ(std::string(c.begin(), c.begin() + 128), expect("{'descr': '<f8', 'fortran_order': False, 'shape': (), }"));
    std::filesystem::remove(path);
}

TEST(TensorFileNpy, Versions2And3AndSyntaxVariants) {
    const std::vector<float> v = {1.5f, -2.0f, 3.25f, 4.0f, 5.0f, 6.0f};
    const Bytes data = raw(v);
    for (int major : {1, 2, 3}) {
        const auto t = parse_npy(npy(major, npy_dict("<f4", "(2, 3)"), data));
        EXPECT_EQ(t.shape, (std::vector<std::int64_t>{2, 3}));
        EXPECT_EQ(t.to_floats(), v);
    }
    // Double quotes, another key order, no trailing comma, Python-2 long literals, native byte order.
    const auto a = parse_npy(npy(1, "{\"shape\": (6L,), \"fortran_order\": False, \"descr\": \"=f4\"}  \n", data));
    EXPECT_EQ(a.shape, (std::vector<std::int64_t>{6}));
    EXPECT_EQ(a.to_floats(), v);
    // fortran_order True is harmless when at most one dim exceeds 1.
    const auto f = parse_npy(npy(1, npy_dict("<f4", "(1, 6)", "True"), data));
    EXPECT_EQ(f.to_floats(), v);
}

TEST(TensorFileNpy, BigEndianIsByteSwapped) {
    const std::vector<float> v = {1.5f, -2.0f, 1e-3f};
    Bytes be = raw(v);
    for (std::size_t i = 0; i < be.size(); i += 4) std::reverse(be.begin() + std::ptrdiff_t(i), be.begin() + std::ptrdiff_t(i + 4));
    const auto t = parse_npy(npy(1, npy_dict(">f4", "(3,)"), be));
    EXPECT_EQ(t.to_floats(), v);

    const std::vector<double> d = {3.141592653589793, -1e300};
    Bytes bd = raw(d);
    for (std::size_t i = 0; i < bd.size(); i += 8) std::reverse(bd.begin() + std::ptrdiff_t(i), bd.begin() + std::ptrdiff_t(i + 8));
    EXPECT_EQ(parse_npy(npy(1, npy_dict(">f8", "(2,)"), bd)).to_doubles(), d);

    const Bytes h = {0x3c, 0x00}; // 1.0 in big-endian f16
    EXPECT_EQ(parse_npy(npy(1, npy_dict(">f2", "()"), h)).to_floats(), std::vector<float>{1.0f});
}

TEST(TensorFileNpy, WriteRejectsBf16AndBadTensors) {
    const std::string path = temp_path("bf16.npy");
    EXPECT_THROW_WITH(vm::write_npy(path, vm::HostTensor::zeros(vm::DType::bf16, {2})), vm::ArgumentError, "bfloat16");
    EXPECT_FALSE(std::filesystem::exists(path));
    auto t = vm::HostTensor::zeros(vm::DType::f32, {2, 2});
    t.bytes.resize(12);
    EXPECT_THROW_WITH(vm::write_npy(path, t), vm::ArgumentError, "needs 16 bytes");
    EXPECT_THROW_WITH(vm::write_npy(temp_path("no/such/dir/x.npy"), vm::HostTensor::zeros(vm::DType::f32, {1})),
                      vm::FileFormatError, "no/such/dir/x.npy");
}

TEST(TensorFileNpy, RejectsEmptyFile) {
    EXPECT_THROW_WITH(parse_npy(Bytes{}), vm::FileFormatError, "empty file");
    const std::string path = temp_path("empty.npy");
    write_bytes(path, {});
    EXPECT_THROW_WITH(vm::read_npy(path), vm::FileFormatError, path + ": empty file");
}

TEST(TensorFileNpy, RejectsFileNotFound) {
    const std::string path = temp_path("missing.npy");
    EXPECT_THROW_WITH(vm::read_npy(path), vm::FileFormatError, path + ": no such file");
    EXPECT_THROW_WITH(vm::read_npy(::testing::TempDir()), vm::FileFormatError, "is a directory");
}

TEST(TensorFileNpy, RejectsBadMagic) {
    Bytes b = npy(1, npy_dict("<f4", "(1,)"), raw(std::vector<float>{1}));
    b[1] = 'X';
    EXPECT_THROW_WITH(parse_npy(b), vm::FileFormatError, "bad magic");
    EXPECT_THROW_WITH(parse_npy(Bytes{'P', 'K', 3, 4}), vm::FileFormatError, "bad magic");
}

TEST(TensorFileNpy, RejectsTruncatedPrefix) {
    const Bytes good = npy(1, npy_dict("<f4", "(1,)"), raw(std::vector<float>{1}));
    EXPECT_THROW_WITH(parse_npy(Bytes(good.begin(), good.begin() + 4)), vm::FileFormatError, "version");
    EXPECT_THROW_WITH(parse_npy(Bytes(good.begin(), good.begin() + 9)), vm::FileFormatError, "length field");
    Bytes v2 = npy(2, npy_dict("<f4", "(1,)"), {});
    EXPECT_THROW_WITH(parse_npy(Bytes(v2.begin(), v2.begin() + 11)), vm::FileFormatError, "length field");
}

TEST(TensorFileNpy, RejectsUnsupportedVersion) {
    Bytes b = npy(1, npy_dict("<f4", "(1,)"), raw(std::vector<float>{1}));
    b[6] = 4;
    EXPECT_THROW_WITH(parse_npy(b), vm::FileFormatError, "version 4.0");
    b[6] = 1;
    b[7] = 1;
    EXPECT_THROW_WITH(parse_npy(b), vm::FileFormatError, "version 1.1");
}

TEST(TensorFileNpy, RejectsHeaderLengthPastEof) {
    Bytes b = npy(1, npy_dict("<f4", "(1,)"), {});
    b[8] = 0xff;
    b[9] = 0x7f;
    EXPECT_THROW_WITH(parse_npy(b), vm::FileFormatError, "header length 32767 runs past the end");
    const Bytes c = npy(3, npy_dict("<f4", "(1,)"), {});
    EXPECT_THROW_WITH(parse_npy(Bytes(c.begin(), c.end() - 5)), vm::FileFormatError, "runs past the end");
}

TEST(TensorFileNpy, RejectsBadHeaderSyntax) {
    const Bytes d4 = raw(std::vector<float>{1});
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "expected ',' or '}'"},
        {"'descr': '<f4'", "expected '{'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } x", "after the closing"},
        {"{'descr': '<f4', 'fortran_order': false, 'shape': (1,), }", "True or False"},
        {"{'descr': '<f4', 'fortran_order': False, }", "missing key 'shape'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}", "unknown key 'extra'"},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "duplicate key 'descr'"},
        {"{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}", "after the value of 'descr'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1)}", "trailing comma"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,,)}", "non-negative integer"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [1]}", "expected '('"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", "does not fit in int64"},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", "structured"},
        {"{'descr': '<f\\x34', 'fortran_order': False, 'shape': (1,)}", "unsupported character"},
        {"{'descr': '<f4", "unterminated string"},
    };
    for (const auto& [header, why] : cases) {
        SCOPED_TRACE(header);
        EXPECT_THROW_WITH(parse_npy(npy(1, header, d4)), vm::FileFormatError, why);
    }
}

TEST(TensorFileNpy, RejectsUnsupportedDtype) {
    EXPECT_THROW_WITH(parse_npy(npy(1, npy_dict("<i4", "(1,)"), Bytes(4))), vm::FileFormatError, "dtype '<i4'");
    EXPECT_THROW_WITH(parse_npy(npy(1, npy_dict("<c8", "(1,)"), Bytes(8))), vm::FileFormatError, "not supported");
    EXPECT_THROW_WITH(parse_npy(npy(1, npy_dict("|f4", "(1,)"), Bytes(4))), vm::FileFormatError, "byte order '|'");
}

TEST(TensorFileNpy, RejectsNegativeDim) {
    EXPECT_THROW_WITH(parse_npy(npy(1, npy_dict("<f4", "(2, -3)"), Bytes(24))), vm::FileFormatError,
                      "negative dimension");
}

TEST(TensorFileNpy, RejectsOverflowingShape) {
    EXPECT_THROW_WITH(parse_npy(npy(1, npy_dict("<f4", "(4611686018427387904, 4)"), Bytes(4))), vm::FileFormatError,
                      "element count overflows int64");
    EXPECT_THROW_WITH(parse_npy(npy(1, npy_dict("<f8", "(2305843009213693952,)"), Bytes(8))), vm::FileFormatError,
                      "overflow int64");
    // A zero dim makes the array empty however large the others are.
    const auto t = parse_npy(npy(1, npy_dict("<f4", "(4611686018427387904, 4, 0)"), {}));
    EXPECT_EQ(t.numel(), 0);
}

TEST(TensorFileNpy, RejectsFortranOrder) {
    EXPECT_THROW_WITH(parse_npy(npy(1, npy_dict("<f4", "(2, 3)", "True"), Bytes(24))), vm::FileFormatError,
                      "fortran_order True");
}

TEST(TensorFileNpy, RejectsDataSizeMismatch) {
    const std::string path = temp_path("q.npy");
    write_bytes(path, npy(1, npy_dict("<f4", "(2, 1000, 64)"), Bytes(4096, 1)));
    EXPECT_THROW_WITH(vm::read_npy(path), vm::FileFormatError,
                      path + ": header says shape (2, 1000, 64) = 512000 bytes of <f4 but the file holds 4096 bytes "
                             "of data");
    // Trailing garbage after the data is rejected as well.
    write_bytes(path, npy(1, npy_dict("<f4", "(2,)"), Bytes(9, 1)));
    EXPECT_THROW_WITH(vm::read_npy(path), vm::FileFormatError, "= 8 bytes of <f4 but the file holds 9 bytes");
    std::filesystem::remove(path);
}

// ------------------------------------------------------------------------------------------------
// .safetensors

TEST(TensorFileSafetensors, RoundTripSeveralTensors) {
    vm::TensorMap m;
    m["a_f16"] = vm::HostTensor::from_floats(ramp(6), {2, 3}, vm::DType::f16);
    m["b_bf16"] = vm::HostTensor::from_floats(ramp(4), {4}, vm::DType::bf16);
    m["c_f32"] = vm::HostTensor::from_floats(ramp(1), {}, vm::DType::f32);
    m["d_f64"] = vm::HostTensor::from_floats(ramp(24), {2, 3, 4}, vm::DType::f64);
    m["e_empty"] = vm::HostTensor::zeros(vm::DType::f32, {0, 3});
    m["layer.0/weight"] = vm::HostTensor::from_floats(ramp(5), {5, 1}, vm::DType::f32);
    const std::string path = temp_path("several.safetensors");
    vm::write_safetensors(path, m);

    const Bytes file = read_bytes(path);
    ASSERT_GE(file.size(), 8u);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | file[std::size_t(i)];
    EXPECT_EQ(n % 8, 0u);
    EXPECT_EQ(file[8], '{');
    EXPECT_NE(std::string(file.begin() + 8, file.begin() + 8 + std::ptrdiff_t(n)).find("\"dtype\":\"BF16\""),
              std::string::npos);

    const vm::TensorMap r = vm::read_safetensors(path);
    ASSERT_EQ(r.size(), m.size());
    for (const auto& [name, t] : m) {
        SCOPED_TRACE(name);
        ASSERT_EQ(r.count(name), 1u);
        EXPECT_EQ(r.at(name).dtype, t.dtype);
        EXPECT_EQ(r.at(name).shape, t.shape);
        EXPECT_EQ(r.at(name).bytes, t.bytes);
    }
    EXPECT_EQ(r.at("d_f64").to_floats(), ramp(24));
    EXPECT_EQ(parse_st(file).at("b_bf16").to_floats(), ramp(4));
    std::filesystem::remove(path);
}

TEST(TensorFileSafetensors, EmptyMapRoundTrips) {
    const std::string path = temp_path("none.safetensors");
    vm::write_safetensors(path, {});
    EXPECT_TRUE(vm::read_safetensors(path).empty());
    std::filesystem::remove(path);
}

TEST(TensorFileSafetensors, AcceptsMetadataAndPadding) {
    const std::vector<float> v = {1.0f, 2.0f};
    const Bytes b = st(R"({"__metadata__": {"format": "pt", "note": "x"}, "w": {"dtype": "F32", "shape": [2], )"
                       R"("data_offsets": [0, 8]}}      )",
                       raw(v));
    const auto m = parse_st(b);
    ASSERT_EQ(m.size(), 1u);
    EXPECT_EQ(m.at("w").to_floats(), v);
}

TEST(TensorFileSafetensors, RejectsEmptyAndTruncated) {
    EXPECT_THROW_WITH(parse_st(Bytes{}), vm::FileFormatError, "empty file");
    EXPECT_THROW_WITH(parse_st(Bytes{8, 0, 0}), vm::FileFormatError, "header length is cut off");
    const std::string path = temp_path("empty.safetensors");
    write_bytes(path, {});
    EXPECT_THROW_WITH(vm::read_safetensors(path), vm::FileFormatError, path + ": empty file");
    std::filesystem::remove(path);
    EXPECT_THROW_WITH(vm::read_safetensors(temp_path("missing.safetensors")), vm::FileFormatError, "no such file");
}

TEST(TensorFileSafetensors, RejectsHeaderLengthPastEof) {
    EXPECT_THROW_WITH(parse_st(st("{}", {}, 1000)), vm::FileFormatError, "header length 1000 runs past the end");
    EXPECT_THROW_WITH(parse_st(st("{}", {}, ~0ull - 1)), vm::FileFormatError, "runs past the end");
}

TEST(TensorFileSafetensors, RejectsBadJson) {
    EXPECT_THROW_WITH(parse_st(st(R"({"w": {"dtype": "F32",)", {})), vm::FileFormatError, "not valid JSON");
    EXPECT_THROW_WITH(parse_st(st("", {})), vm::FileFormatError, "not valid JSON");
    EXPECT_THROW_WITH(parse_st(st("[1, 2]", {})), vm::FileFormatError, "not an object");
    EXPECT_THROW_WITH(parse_st(st(R"({"a": 1, "a": 2})", {})), vm::FileFormatError, "twice");
    EXPECT_THROW_WITH(parse_st(st(R"({"a": [[[[[1]]]]]})", {})), vm::FileFormatError, "nested");
    EXPECT_THROW_WITH(parse_st(st(R"({"w": 3})", {})), vm::FileFormatError, "tensor 'w': expected an object");
}

TEST(TensorFileSafetensors, RejectsBadEntries) {
    const Bytes d8(8, 0);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"w": {"dtype": "F32", "shape": [2]}})", "missing key 'data_offsets'"},
        {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}})", "unknown key 'x'"},
        {R"({"w": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}})", "dtype is not a string"},
        {R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", "shape is not an array"},
        {R"({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", "not an integer"},
        {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}})", "data_offsets must be [begin, end]"},
        {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-1, 8]}})", "non-negative integers"},
        {R"({"__metadata__": {"k": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
         "__metadata__ value for 'k'"},
        {R"({"__metadata__": [], "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
         "__metadata__ is not an object"},
    };
    for (const auto& [header, why] : cases) {
        SCOPED_TRACE(header);
        EXPECT_THROW_WITH(parse_st(st(header, d8)), vm::FileFormatError, why);
    }
}

TEST(TensorFileSafetensors, RejectsUnknownDtype) {
    EXPECT_THROW_WITH(parse_st(st(R"({"ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})", Bytes(8))),
                      vm::FileFormatError, "tensor 'ids' has dtype 'I64'");
    EXPECT_THROW_WITH(parse_st(st(R"({"q": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}})", Bytes(8))),
                      vm::FileFormatError, "'F8_E4M3'");
}

TEST(TensorFileSafetensors, RejectsNegativeDim) {
    EXPECT_THROW_WITH(parse_st(st(R"({"w": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 8]}})", Bytes(8))),
                      vm::FileFormatError, "dimension 1 is negative (-2)");
}

TEST(TensorFileSafetensors, RejectsOverflowingShape) {
    EXPECT_THROW_WITH(
        parse_st(st(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", Bytes(8))),
        vm::FileFormatError, "element count overflows int64");
    EXPECT_THROW_WITH(parse_st(st(R"({"w": {"dtype": "F64", "shape": [2305843009213693952], "data_offsets": [0, 8]}})",
                                  Bytes(8))),
                      vm::FileFormatError, "overflow int64");
    EXPECT_THROW_WITH(parse_st(st(R"({"w": {"dtype": "F64", "shape": [18446744073709551615], "data_offsets": [0, 8]}})",
                                  Bytes(8))),
                      vm::FileFormatError, "does not fit in int64");
}

TEST(TensorFileSafetensors, RejectsOffsetsOutOfRange) {
    EXPECT_THROW_WITH(parse_st(st(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", Bytes(8))),
                      vm::FileFormatError, "end before they begin");
    EXPECT_THROW_WITH(parse_st(st(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", Bytes(8))),
                      vm::FileFormatError, "run past the 8-byte data buffer");
    EXPECT_THROW_WITH(parse_st(st(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 18446744073709551615]}})",
                                  Bytes(8))),
                      vm::FileFormatError, "run past");
}

TEST(TensorFileSafetensors, RejectsSizeMismatch) {
    EXPECT_THROW_WITH(parse_st(st(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", Bytes(8))),
                      vm::FileFormatError, "tensor 'w': shape (3,) of F32 is 12 bytes but data_offsets [0, 8] span 8");
}

TEST(TensorFileSafetensors, RejectsOverlapGapsAndTrailingBytes) {
    EXPECT_THROW_WITH(parse_st(st(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                  R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                                  Bytes(8))),
                      vm::FileFormatError, "overlaps tensor 'a'");
    EXPECT_THROW_WITH(parse_st(st(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", Bytes(8))),
                      vm::FileFormatError, "4 unused bytes before tensor 'a'");
    EXPECT_THROW_WITH(parse_st(st(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", Bytes(12))),
                      vm::FileFormatError, "8 trailing bytes");
    const std::string path = temp_path("short.safetensors");
    write_bytes(path, st(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", Bytes(12)));
    EXPECT_THROW_WITH(vm::read_safetensors(path), vm::FileFormatError, path + ": tensor 'a'");
    std::filesystem::remove(path);
}

TEST(TensorFileSafetensors, WriteRejectsReservedNameAndBadTensor) {
    const std::string path = temp_path("bad.safetensors");
    vm::TensorMap m;
    m["__metadata__"] = vm::HostTensor::zeros(vm::DType::f32, {1});
    EXPECT_THROW_WITH(vm::write_safetensors(path, m), vm::ArgumentError, "reserved");
    vm::TensorMap n;
    n["x"] = vm::HostTensor::zeros(vm::DType::f32, {2});
    n["x"].bytes.pop_back();
    EXPECT_THROW_WITH(vm::write_safetensors(path, n), vm::ArgumentError, "tensor 'x'");
    vm::TensorMap u;
    u[std::string("bad\xff")] = vm::HostTensor::zeros(vm::DType::f32, {1});
    EXPECT_THROW_WITH(vm::write_safetensors(path, u), vm::ArgumentError, "UTF-8");
}

// ------------------------------------------------------------------------------------------------
// read_tensor / write_tensor

TEST(TensorFileDispatch, ByExtension) {
    const auto t = vm::HostTensor::from_floats(ramp(6), {3, 2}, vm::DType::f32);
    const std::string n = temp_path("d.npy"), s = temp_path("d.safetensors");
    vm::write_tensor(n, t);
    vm::write_tensor(s, t);
    EXPECT_EQ(vm::read_tensor(n).bytes, t.bytes);
    EXPECT_EQ(vm::read_tensor(s).bytes, t.bytes);
    EXPECT_EQ(vm::read_safetensors(s).count("out"), 1u);
    EXPECT_EQ(vm::read_tensor(s + ":out").shape, t.shape);

    vm::write_tensor(s + ":other", t.converted(vm::DType::bf16));
    EXPECT_EQ(vm::read_safetensors(s).count("other"), 1u);
    EXPECT_EQ(vm::read_tensor(s).dtype, vm::DType::bf16);

    vm::TensorMap m;
    m["a"] = t;
    m["b:c"] = t.converted(vm::DType::f64);
    vm::write_safetensors(s, m);
    EXPECT_THROW_WITH(vm::read_tensor(s), vm::FileFormatError, "holds 2 tensors ('a', 'b:c')");
    EXPECT_EQ(vm::read_tensor(s + ":b:c").dtype, vm::DType::f64);
    EXPECT_THROW_WITH(vm::read_tensor(s + ":zzz"), vm::FileFormatError, "no tensor named 'zzz'");
    std::filesystem::remove(n);
    std::filesystem::remove(s);
}

TEST(TensorFileDispatch, UnknownExtension) {
    const auto t = vm::HostTensor::zeros(vm::DType::f32, {1});
    EXPECT_THROW_WITH(vm::read_tensor("weights.pt"), vm::ArgumentError, "'weights.pt' has no known tensor-file extension");
    EXPECT_THROW_WITH(vm::read_tensor("weights.pt"), vm::ArgumentError, ".npy, .safetensors");
    EXPECT_THROW_WITH(vm::write_tensor("out.bin", t), vm::ArgumentError, "'out.bin'");
    EXPECT_THROW_WITH(vm::read_tensor(temp_path("nope.npy")), vm::FileFormatError, "no such file");
}


// ------------------------------------------------------------------------------------------------
// Failures: no partial files, the real reason, allocation failures as OutOfMemoryError

// Files in `folder` whose name contains `part` (to find leftover temporaries).
std::vector<std::string> files_containing(const std::string& folder, const std::string& part) {
    std::vector<std::string> found;
    for (const auto& entry : std::filesystem::directory_iterator(folder)) {
        const std::string name = entry.path().filename().string();
        if (name.find(part) != std::string::npos) found.push_back(name);
    }
    return found;
}

bool built_with_sanitizers() {
#if defined(__SANITIZE_ADDRESS__)
    return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return true;
#else
    return false;
#endif
#else
    return false;
#endif
}

// Sets a resource limit for the scope and restores the previous one.
class ScopedLimit {
public:
    ScopedLimit(int resource, rlim_t soft) : resource_(resource) {
        ::getrlimit(resource_, &saved_);
        rlimit limit = saved_;
        limit.rlim_cur = soft;
        ok_ = ::setrlimit(resource_, &limit) == 0;
    }
    ~ScopedLimit() { ::setrlimit(resource_, &saved_); }
    bool ok() const { return ok_; }

private:
    int resource_;
    rlimit saved_{};
    bool ok_ = false;
};

TEST(TensorFileFailures, EmptyTensorNameIsRejectedForWritingAndReading) {
    const auto t = vm::HostTensor::from_floats(ramp(4), {4}, vm::DType::f32);
    const std::string s = temp_path("empty_name.safetensors");
    std::filesystem::remove(s);
    EXPECT_THROW_WITH(vm::write_tensor(s + ":", t), vm::ArgumentError, "empty tensor name after ':'");
    EXPECT_FALSE(std::filesystem::exists(s));
    vm::write_tensor(s, t);
    EXPECT_THROW_WITH(vm::read_tensor(s + ":"), vm::ArgumentError, "empty tensor name after ':'");
    std::filesystem::remove(s);
}

TEST(TensorFileFailures, SymlinkLoopIsReportedAsALoop) {
    const std::string a = temp_path("loop_a.npy"), b = temp_path("loop_b.npy");
    std::filesystem::remove(a);
    std::filesystem::remove(b);
    std::filesystem::create_symlink(b, a);
    std::filesystem::create_symlink(a, b);
    EXPECT_THROW_WITH(vm::read_npy(a), vm::FileFormatError, "Too many levels of symbolic links");
    EXPECT_THROW_WITH(vm::read_tensor(a), vm::FileFormatError, a + ": ");
    std::filesystem::remove(a);
    std::filesystem::remove(b);
}

// A write that fails half-way (here: past RLIMIT_FSIZE, with SIGXFSZ ignored so write() returns EFBIG) leaves
// the previous file untouched and no temporary file behind.
TEST(TensorFileFailures, FailedWriteKeepsTheOldFileAndLeavesNoTemporary) {
    const std::string path = temp_path("failed_write.npy");
    const auto old_tensor = vm::HostTensor::from_floats(ramp(8), {2, 4}, vm::DType::f32);
    vm::write_npy(path, old_tensor);
    const Bytes before = read_bytes(path);
    const std::string stem = "vmonarch_tf_" + std::to_string(::getpid()) + "_failed_write.npy";
    const std::size_t files_before = files_containing(::testing::TempDir(), stem).size();

    const auto big = vm::HostTensor::from_floats(ramp(64 * 1024), {64, 1024}, vm::DType::f32); // 256 KiB
    {
        const auto previous = std::signal(SIGXFSZ, SIG_IGN);
        ScopedLimit limit(RLIMIT_FSIZE, 16 * 1024);
        ASSERT_TRUE(limit.ok());
        EXPECT_THROW_WITH(vm::write_npy(path, big), vm::FileFormatError, "write failed");
        EXPECT_THROW_WITH(vm::write_tensor(temp_path("failed_new.safetensors"), big), vm::FileFormatError,
                          "write failed");
        std::signal(SIGXFSZ, previous);
    }
    EXPECT_EQ(read_bytes(path), before);
    EXPECT_EQ(files_containing(::testing::TempDir(), stem).size(), files_before);
    EXPECT_FALSE(std::filesystem::exists(temp_path("failed_new.safetensors")));
    EXPECT_TRUE(files_containing(::testing::TempDir(),
                                    "vmonarch_tf_" + std::to_string(::getpid()) + "_failed_new.safetensors")
                    .empty());
    std::filesystem::remove(path);
}

TEST(TensorFileFailures, ImpossibleAllocationIsOutOfMemoryError) {
    if (built_with_sanitizers()) GTEST_SKIP() << "ASan aborts on impossible allocations instead of failing them";
    EXPECT_THROW_WITH(vm::HostTensor::zeros(vm::DType::f32, {std::int64_t(1) << 58}), vm::OutOfMemoryError,
                      "cannot allocate 1152921504606846976 bytes");
}

// A 4 GiB tensor (a sparse file: no disk space) under a 1 GiB address-space limit: an OutOfMemoryError that
// says what, never std::bad_alloc.
TEST(TensorFileFailures, TensorTooLargeForMemoryIsOutOfMemoryError) {
    if (built_with_sanitizers()) GTEST_SKIP() << "ASan needs more address space than the limit leaves";
    const std::string path = temp_path("huge.npy");
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1073741824,), }";
    dict.append(64 - (10 + dict.size() + 1) % 64, ' ');
    dict += '\n';
    write_bytes(path, npy(1, dict, {}));
    std::filesystem::resize_file(path, 10 + dict.size() + (std::uintmax_t(1) << 32));

    std::ifstream statm("/proc/self/statm");
    std::uint64_t pages = 0;
    statm >> pages;
    {
        ScopedLimit limit(RLIMIT_AS, pages * std::uint64_t(::sysconf(_SC_PAGESIZE)) + (std::uint64_t(1) << 30));
        ASSERT_TRUE(limit.ok());
        EXPECT_THROW_WITH(vm::read_npy(path), vm::OutOfMemoryError, "cannot allocate 4294967296 bytes");
        EXPECT_THROW_WITH(vm::read_tensor(path), vm::OutOfMemoryError, "(1073741824,) f32");
    }
    std::filesystem::remove(path);
}

// ------------------------------------------------------------------------------------------------
// Headers without data, one tensor of a file, staged writes, value statistics

TEST(TensorFileHeaders, InfoMatchesTheTensorWithoutReadingData) {
    const auto a = vm::HostTensor::from_floats(ramp(24), {2, 3, 4}, vm::DType::f16);
    const auto b = vm::HostTensor::from_floats(ramp(5), {5}, vm::DType::bf16);
    const std::string n = temp_path("info.npy"), s = temp_path("info.safetensors"), one = temp_path("one.safetensors");
    vm::write_npy(n, a);
    vm::write_safetensors(s, {{"a", a}, {"b", b}});
    vm::write_tensor(one, b);
    for (const std::string& spec : {n, s + ":a", s + ":b", one}) {
        const vm::TensorInfo info = vm::read_tensor_info(spec);
        const vm::HostTensor t = vm::read_tensor(spec);
        EXPECT_EQ(info.shape, t.shape) << spec;
        EXPECT_EQ(info.dtype, t.dtype) << spec;
    }
    const auto infos = vm::read_safetensors_info(s);
    ASSERT_EQ(infos.size(), 2u);
    EXPECT_EQ(infos.at("a").shape, (std::vector<std::int64_t>{2, 3, 4}));
    EXPECT_EQ(infos.at("b").dtype, vm::DType::bf16);
    EXPECT_EQ(vm::read_safetensors_tensor(s, "b").bytes, b.bytes);
    EXPECT_THROW_WITH(vm::read_tensor_info(s), vm::FileFormatError, "holds 2 tensors ('a', 'b')");
    EXPECT_THROW_WITH(vm::read_tensor_info(s + ":c"), vm::FileFormatError, "no tensor named 'c'");
    EXPECT_THROW_WITH(vm::read_safetensors_tensor(s, "c"), vm::FileFormatError, s + ": no tensor named 'c'");

    // The header alone still has to agree with the file's size.
    Bytes truncated = read_bytes(n);
    truncated.resize(truncated.size() - 2);
    write_bytes(n, truncated);
    EXPECT_THROW_WITH(vm::read_tensor_info(n), vm::FileFormatError, "but the file holds 46 bytes of data");
    for (const auto& p : {n, s, one}) std::filesystem::remove(p);
}

TEST(TensorFileHeaders, InfoOfAHugeFileAllocatesNothing) {
    if (built_with_sanitizers()) GTEST_SKIP() << "ASan needs more address space than the limit leaves";
    const std::string path = temp_path("huge_info.npy");
    std::string dict = "{'descr': '<f2', 'fortran_order': False, 'shape': (4, 1073741824), }";
    dict.append(64 - (10 + dict.size() + 1) % 64, ' ');
    dict += '\n';
    write_bytes(path, npy(1, dict, {}));
    std::filesystem::resize_file(path, 10 + dict.size() + (std::uintmax_t(1) << 33));
    std::ifstream statm("/proc/self/statm");
    std::uint64_t pages = 0;
    statm >> pages;
    {
        ScopedLimit limit(RLIMIT_AS, pages * std::uint64_t(::sysconf(_SC_PAGESIZE)) + (std::uint64_t(256) << 20));
        ASSERT_TRUE(limit.ok());
        const vm::TensorInfo info = vm::read_tensor_info(path);
        EXPECT_EQ(info.shape, (std::vector<std::int64_t>{4, 1073741824}));
        EXPECT_EQ(info.dtype, vm::DType::f16);
    }
    std::filesystem::remove(path);
}

TEST(TensorFileStaged, CommitReplacesWholeAndAbandonRemovesTheTemporary) {
    const std::string target = temp_path("staged.bin");
    write_bytes(target, {1, 2, 3});
    const std::string stem = "vmonarch_tf_" + std::to_string(::getpid()) + "_staged.bin";
    {
        vm::StagedFile staged(target);
        EXPECT_NE(staged.path(), target);
        EXPECT_EQ(std::filesystem::path(staged.path()).parent_path(), std::filesystem::path(target).parent_path());
        write_bytes(staged.path(), {9, 9});
        EXPECT_EQ(read_bytes(target), (Bytes{1, 2, 3})); // nothing visible before commit
    } // abandoned
    EXPECT_EQ(read_bytes(target), (Bytes{1, 2, 3}));
    EXPECT_EQ(files_containing(::testing::TempDir(), stem).size(), 1u); // the target only
    {
        vm::StagedFile staged(target);
        write_bytes(staged.path(), {7});
        staged.commit();
    }
    EXPECT_EQ(read_bytes(target), (Bytes{7}));
    EXPECT_EQ(files_containing(::testing::TempDir(), stem).size(), 1u);
    EXPECT_THROW_WITH(vm::StagedFile(temp_path("no_such_folder") + "/x.npy"), vm::FileFormatError,
                      "cannot create a file in the folder");
    std::filesystem::remove(target);
}

TEST(TensorFileStaged, WriteThroughASymlinkKeepsTheLinkAndThePermissions) {
    const std::string file = temp_path("linked.npy"), link = temp_path("link.npy");
    std::filesystem::remove(link);
    vm::write_npy(file, vm::HostTensor::from_floats(ramp(4), {4}, vm::DType::f32));
    std::filesystem::permissions(file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                                           std::filesystem::perms::group_read);
    std::filesystem::create_symlink(file, link);
    const auto t = vm::HostTensor::from_floats(ramp(6), {2, 3}, vm::DType::f64);
    vm::write_npy(link, t);
    EXPECT_TRUE(std::filesystem::is_symlink(link));
    EXPECT_EQ(vm::read_npy(file).bytes, t.bytes);
    EXPECT_EQ(std::filesystem::status(file).permissions() & std::filesystem::perms::all,
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                  std::filesystem::perms::group_read);
    std::filesystem::remove(link);
    std::filesystem::remove(file);
}

TEST(TensorFileHost, ValueStatsCountNonFiniteInEveryDtype) {
    const float inf = std::numeric_limits<float>::infinity();
    const std::vector<float> values = {1.5f, -3.25f, std::nanf(""), inf, -inf, 2.0f, -0.5f};
    for (vm::DType dt : {vm::DType::f16, vm::DType::bf16, vm::DType::f32, vm::DType::f64}) {
        const auto t = vm::HostTensor::from_floats(values, {7}, dt);
        const vm::ValueStats stats = t.value_stats();
        EXPECT_EQ(stats.non_finite, 3) << vm::to_string(dt);
        EXPECT_EQ(stats.max_abs, 3.25) << vm::to_string(dt);
    }
    const auto clean = vm::HostTensor::from_floats(ramp(10), {10}, vm::DType::f32);
    EXPECT_EQ(clean.value_stats().non_finite, 0);
    EXPECT_FLOAT_EQ(float(clean.value_stats().max_abs), 2.125f);
    // f32 values past the f16 range become inf in the conversion: what the CLI's --cast refuses.
    const auto big = vm::HostTensor::from_floats({70000.0f, 1.0f, -1e6f}, {3}, vm::DType::f32);
    EXPECT_EQ(big.converted(vm::DType::f16).value_stats().non_finite, 2);
    EXPECT_EQ(big.converted(vm::DType::bf16).value_stats().non_finite, 0);
}

TEST(TensorFileHost, RangedToDoublesMatchesTheWholeConversion) {
    const auto t = vm::HostTensor::from_floats(ramp(20), {4, 5}, vm::DType::bf16);
    const std::vector<double> all = t.to_doubles();
    std::vector<double> part(7);
    t.to_doubles(9, 7, part.data());
    EXPECT_EQ(part, std::vector<double>(all.begin() + 9, all.begin() + 16));
    t.to_doubles(20, 0, part.data());
    EXPECT_THROW_WITH(t.to_doubles(15, 6, part.data()), vm::ArgumentError, "outside the tensor's 20 elements");
    EXPECT_THROW_WITH(t.to_doubles(-1, 2, part.data()), vm::ArgumentError, "outside");
}

} // namespace
