// NumPy .npy files: versions 1.0 / 2.0 / 3.0, float16/32/64, C order (big-endian data is byte-swapped).
//
// Layout: "\x93NUMPY", major, minor, header length (uint16 LE for 1.0, uint32 LE for 2.0/3.0), then a
// Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with spaces and
// a newline, then the raw data.
#include <algorithm>
#include <cstring>

#include "io/io_common.hpp"

namespace vmonarch {

namespace {

using io::printable;

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
constexpr std::uint32_t kMaxHeaderBytes = 1u << 20; // numpy itself refuses headers over 10000 bytes by default

struct HeaderDict {
    std::string descr;
    bool fortran_order = false;
    std::vector<std::int64_t> shape;
};

// A strict parser for the header dict: exactly the keys descr (str), fortran_order (True/False) and
// shape (tuple of non-negative ints), in any order, Python literal syntax, nothing else.
class HeaderParser {
public:
    explicit HeaderParser(const std::string& text) : s_(text) {}

    HeaderDict parse() {
        HeaderDict h;
        bool seen_descr = false, seen_order = false, seen_shape = false;
        skip_ws();
        expect('{');
        skip_ws();
        while (peek() != '}') {
            const std::string key = parse_string("a key");
            skip_ws();
            expect(':');
            skip_ws();
            if (key == "descr") {
                if (seen_descr) fail("duplicate key 'descr'");
                seen_descr = true;
                if (peek() == '[') fail("structured (record) dtypes are not supported");
                h.descr = parse_string("the descr string");
            } else if (key == "fortran_order") {
                if (seen_order) fail("duplicate key 'fortran_order'");
                seen_order = true;
                h.fortran_order = parse_bool();
            } else if (key == "shape") {
                if (seen_shape) fail("duplicate key 'shape'");
                seen_shape = true;
                h.shape = parse_shape();
            } else {
                fail("unknown key '" + printable(key) + "' (expected descr, fortran_order, shape)");
            }
            skip_ws();
            if (peek() == ',') {
                ++pos_;
                skip_ws();
            } else if (peek() != '}') {
                fail("expected ',' or '}' after the value of '" + key + "'");
            }
        }
        ++pos_; // '}'
        skip_ws();
        if (pos_ != s_.size()) fail("unexpected text after the closing '}'");
        if (!seen_descr) fail("missing key 'descr'");
        if (!seen_order) fail("missing key 'fortran_order'");
        if (!seen_shape) fail("missing key 'shape'");
        return h;
    }

private:
    [[noreturn]] void fail(const std::string& why) const {
        throw FileFormatError("malformed .npy header at column " + std::to_string(pos_) + ": " + why +
                              "; header: " + printable(s_));
    }
    int peek() const { return pos_ < s_.size() ? static_cast<unsigned char>(s_[pos_]) : -1; }
    void skip_ws() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
            ++pos_;
    }
    void expect(char c) {
        if (peek() != static_cast<unsigned char>(c)) fail(std::string("expected '") + c + "'");
        ++pos_;
    }
    std::string parse_string(const char* what) {
        const int q = peek();
        if (q != '\'' && q != '"') fail(std::string("expected ") + what + " in quotes");
        ++pos_;
        std::string out;
        while (true) {
            const int c = peek();
            if (c < 0) fail("unterminated string");
            ++pos_;
            if (c == q) return out;
            if (c == '\\' || c < 0x20 || c >= 0x7f) fail("unsupported character in a string");
            out += char(c);
        }
    }
    bool parse_bool() {
        if (s_.compare(pos_, 4, "True") == 0) { pos_ += 4; return true; }
        if (s_.compare(pos_, 5, "False") == 0) { pos_ += 5; return false; }
        fail("fortran_order must be True or False");
    }
    std::int64_t parse_dim() {
        if (peek() == '-') {
            ++pos_;
            if (peek() < '0' || peek() > '9') fail("expected a dimension");
            while (peek() >= '0' && peek() <= '9') ++pos_;
            fail("negative dimension in shape");
        }
        if (peek() < '0' || peek() > '9') fail("expected a non-negative integer dimension");
        std::int64_t v = 0;
        while (peek() >= '0' && peek() <= '9') {
            const auto m = io::checked_mul(v, 10);
            const int digit = peek() - '0';
            if (!m || *m > INT64_MAX - digit) fail("dimension does not fit in int64");
            v = *m + digit;
            ++pos_;
        }
        if (peek() == 'L') ++pos_; // Python 2 long literal, as old numpy wrote them
        return v;
    }
    std::vector<std::int64_t> parse_shape() {
        expect('(');
        skip_ws();
        std::vector<std::int64_t> shape;
        bool trailing_comma = false;
        while (peek() != ')') {
            if (shape.size() >= std::size_t(io::kMaxDims))
                fail("more than " + std::to_string(io::kMaxDims) + " dimensions");
            shape.push_back(parse_dim());
            skip_ws();
            trailing_comma = false;
            if (peek() == ',') {
                ++pos_;
                skip_ws();
                trailing_comma = true;
            } else if (peek() != ')') {
                fail("expected ',' or ')' in shape");
            }
        }
        ++pos_; // ')'
        if (shape.size() == 1 && !trailing_comma) fail("a 1-d shape is written (n,) with a trailing comma");
        return shape;
    }

    const std::string& s_;
    std::size_t pos_ = 0;
};

struct NpyDtype {
    DType dtype;
    bool big_endian;
};

NpyDtype dtype_from_descr(const std::string& descr) {
    std::string body = descr;
    char order = '=';
    if (!body.empty() && std::strchr("<>=|", body[0]) != nullptr) {
        order = body[0];
        body.erase(0, 1);
    }
    DType dt;
    if (body == "f2") dt = DType::f16;
    else if (body == "f4") dt = DType::f32;
    else if (body == "f8") dt = DType::f64;
    else
        throw FileFormatError("dtype '" + printable(descr) +
                              "' is not supported (float16/32/64 only: '<f2', '<f4', '<f8')");
    if (order == '|')
        throw FileFormatError("dtype '" + descr + "': byte order '|' (not applicable) is invalid for a " +
                              std::to_string(io::itemsize(dt)) + "-byte float");
    return {dt, order == '>'};
}

void byte_swap(std::vector<std::byte>& bytes, std::size_t item) {
    for (std::size_t i = 0; i + item <= bytes.size(); i += item) std::reverse(bytes.begin() + i, bytes.begin() + i + item);
}

std::uint32_t load_le(const std::uint8_t* p, int n) {
    std::uint32_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = v << 8 | p[i];
    return v;
}

} // namespace

namespace io {

NpyHeader read_npy_header(ByteSource& src) {
    const std::uint64_t size = src.size();
    if (size == 0) throw FileFormatError("empty file (an .npy file starts with \\x93NUMPY)");
    std::uint8_t pre[12] = {};
    const std::size_t n = std::size_t(std::min<std::uint64_t>(size, sizeof pre));
    src.read(0, n, pre);
    const std::size_t cmp = std::min(n, kMagicLen);
    if (std::memcmp(pre, kMagic, cmp) != 0)
        throw FileFormatError("not an .npy file: bad magic '" +
                              printable(std::string(reinterpret_cast<const char*>(pre), cmp)) +
                              "' (expected '\\x93NUMPY')");
    if (n < 8) throw FileFormatError("truncated .npy file: " + std::to_string(size) + " bytes, no version bytes");
    const int major = pre[6], minor = pre[7];
    if (!((major == 1 || major == 2 || major == 3) && minor == 0))
        throw FileFormatError("unsupported .npy format version " + std::to_string(major) + "." +
                              std::to_string(minor) + " (1.0, 2.0 and 3.0 are read)");
    const int len_bytes = major == 1 ? 2 : 4;
    const std::size_t header_start = 8 + std::size_t(len_bytes);
    if (n < header_start)
        throw FileFormatError("truncated .npy file: " + std::to_string(size) + " bytes, the header length field is cut off");
    const std::uint32_t header_len = load_le(pre + 8, len_bytes);
    if (header_len > size - header_start)
        throw FileFormatError("header length " + std::to_string(header_len) + " runs past the end of the file (" +
                              std::to_string(size - header_start) + " bytes follow the length field)");
    if (header_len > kMaxHeaderBytes)
        throw FileFormatError("header of " + std::to_string(header_len) + " bytes is larger than the " +
                              std::to_string(kMaxHeaderBytes) + "-byte limit");
    std::string text(header_len, '\0');
    src.read(header_start, header_len, text.data());
    const HeaderDict h = HeaderParser(text).parse();

    const NpyDtype dt = dtype_from_descr(h.descr);
    const std::size_t item = itemsize(dt.dtype);
    const ShapeSize ss = shape_size(h.shape, item);
    if (!ss.error.empty()) throw FileFormatError("header shape " + shape_string(h.shape) + ": " + ss.error);
    const std::int64_t non_unit = std::count_if(h.shape.begin(), h.shape.end(), [](std::int64_t d) { return d != 1; });
    if (h.fortran_order && non_unit > 1)
        throw FileFormatError("fortran_order True (column-major) arrays are not supported; save a C-ordered array "
                              "(numpy.ascontiguousarray)");

    NpyHeader header;
    header.dtype = dt.dtype;
    header.shape = h.shape;
    header.big_endian = dt.big_endian;
    header.data_start = header_start + header_len;
    header.data_bytes = size - header.data_start;
    if (header.data_bytes != std::uint64_t(ss.bytes))
        throw FileFormatError("header says shape " + shape_string(h.shape) + " = " + std::to_string(ss.bytes) +
                              " bytes of " + h.descr + " but the file holds " + std::to_string(header.data_bytes) +
                              " bytes of data");
    return header;
}

HostTensor read_npy_from(ByteSource& src) {
    const NpyHeader header = read_npy_header(src);
    HostTensor t;
    t.dtype = header.dtype;
    t.shape = header.shape;
    t.bytes = allocate_bytes(header.data_bytes, "tensor of shape " + shape_string(header.shape) + " " +
                                                    dtype_label(header.dtype));
    src.read(header.data_start, t.bytes.size(), t.bytes.data());
    if (header.big_endian) byte_swap(t.bytes, itemsize(header.dtype));
    return t;
}

} // namespace io

HostTensor parse_npy(const std::uint8_t* data, std::size_t size) {
    if (data == nullptr && size != 0) throw ArgumentError("data", "parse_npy: null data with size " + std::to_string(size));
    io::MemorySource src(data, size);
    return io::read_npy_from(src);
}

HostTensor read_npy(const std::string& path) {
    return io::with_path(path, [&] {
        io::FileSource src(path);
        return io::read_npy_from(src);
    });
}

void write_npy(const std::string& path, const HostTensor& tensor) {
    if (tensor.dtype == DType::bf16)
        throw ArgumentError("tensor", path + ": .npy has no bfloat16 dtype; convert to f32 (HostTensor::converted) "
                                             "or write .safetensors");
    io::check_writable(tensor, path);
    const char* descr = tensor.dtype == DType::f16 ? "<f2" : tensor.dtype == DType::f32 ? "<f4" : "<f8";
    std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " +
                       io::shape_string(tensor.shape) + ", }";
    // Version 1.0: magic, 1, 0, uint16 length; pad with spaces so the data starts at a multiple of 64.
    const std::size_t unpadded = kMagicLen + 2 + 2 + dict.size() + 1;
    dict.append((64 - unpadded % 64) % 64, ' ');
    dict += '\n';
    if (dict.size() > 0xffff) throw ArgumentError("tensor", path + ": .npy header too long"); // unreachable: <= 64 dims
    std::string head(kMagic, kMagicLen);
    head += char(1);
    head += char(0);
    head += char(dict.size() & 0xff);
    head += char(dict.size() >> 8);
    head += dict;
    io::write_file(path, head, {&tensor.bytes});
}

} // namespace vmonarch
