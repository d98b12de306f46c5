// .safetensors files: uint64 LE header length, a JSON header
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ..., "__metadata__": {...}}
// and a byte buffer the offsets index into. Dtypes F16, BF16, F32, F64.
//
// Like the reference implementation, the tensors must tile the byte buffer exactly: sorted by offset,
// each starts where the previous one ends and the last ends at the end of the file. Overlapping
// tensors, gaps and trailing bytes are rejected. Unknown keys in a tensor entry and duplicate keys
// anywhere in the header are rejected too.
#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "io/io_common.hpp"

namespace vmonarch {

namespace {

using json = nlohmann::json;
using io::printable;

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000; // the reference implementation's limit

using Entry = io::SafetensorsEntry;

const char* st_name(DType dt) {
    switch (dt) {
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    }
    return "?";
}

json parse_header(const std::string& text) {
    // Tracks the keys of every open object to reject duplicates (nlohmann would keep the last one).
    std::vector<std::set<std::string>> open;
    const json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
        if (depth > 3) throw FileFormatError("header JSON is nested deeper than a safetensors header can be");
        switch (event) {
        case json::parse_event_t::object_start: open.emplace_back(); break;
        case json::parse_event_t::object_end: open.pop_back(); break;
        case json::parse_event_t::key: {
            const std::string& key = parsed.get_ref<const std::string&>();
            if (!open.back().insert(key).second)
                throw FileFormatError("header JSON has the key '" + printable(key) + "' twice in one object");
            break;
        }
        default: break;
        }
        return true;
    };
    try {
        return json::parse(text, cb);
    } catch (const json::exception& e) {
        throw FileFormatError(std::string("header is not valid JSON: ") + e.what());
    }
}

std::uint64_t offset_value(const json& v, const std::string& name) {
    if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<std::int64_t>() < 0))
        throw FileFormatError("tensor '" + name + "': data_offsets must hold two non-negative integers, got " +
                              printable(v.dump()));
    return v.get<std::uint64_t>();
}

Entry parse_entry(const std::string& name, const json& v) {
    if (!v.is_object())
        throw FileFormatError("tensor '" + name + "': expected an object with dtype, shape, data_offsets, got " +
                              printable(v.dump(), 80));
    for (const auto& [key, value] : v.items()) {
        (void)value;
        if (key != "dtype" && key != "shape" && key != "data_offsets")
            throw FileFormatError("tensor '" + name + "': unknown key '" + printable(key) +
                                  "' (expected dtype, shape, data_offsets)");
    }
    for (const char* key : {"dtype", "shape", "data_offsets"})
        if (!v.contains(key)) throw FileFormatError("tensor '" + name + "': missing key '" + key + "'");

    Entry e;
    e.name = name;
    const json& dt = v["dtype"];
    if (!dt.is_string()) throw FileFormatError("tensor '" + name + "': dtype is not a string");
    const std::string& d = dt.get_ref<const std::string&>();
    if (d == "F16") e.dtype = DType::f16;
    else if (d == "BF16") e.dtype = DType::bf16;
    else if (d == "F32") e.dtype = DType::f32;
    else if (d == "F64") e.dtype = DType::f64;
    else
        throw FileFormatError("tensor '" + name + "' has dtype '" + printable(d) +
                              "', which is not supported (F16, BF16, F32, F64)");

    const json& shape = v["shape"];
    if (!shape.is_array()) throw FileFormatError("tensor '" + name + "': shape is not an array");
    if (shape.size() > std::size_t(io::kMaxDims))
        throw FileFormatError("tensor '" + name + "': " + std::to_string(shape.size()) + " dimensions (at most " +
                              std::to_string(io::kMaxDims) + " supported)");
    for (std::size_t i = 0; i < shape.size(); ++i) {
        const json& x = shape[i];
        if (!x.is_number_integer())
            throw FileFormatError("tensor '" + name + "': shape dimension " + std::to_string(i) +
                                  " is not an integer: " + printable(x.dump(), 40));
        if (x.is_number_unsigned()) {
            const std::uint64_t u = x.get<std::uint64_t>();
            if (u > std::uint64_t(INT64_MAX))
                throw FileFormatError("tensor '" + name + "': shape dimension " + std::to_string(i) + " (" +
                                      std::to_string(u) + ") does not fit in int64");
            e.shape.push_back(std::int64_t(u));
        } else {
            e.shape.push_back(x.get<std::int64_t>()); // negative: reported by shape_size below
        }
    }

    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2)
        throw FileFormatError("tensor '" + name + "': data_offsets must be [begin, end], got " + printable(off.dump(), 80));
    e.begin = offset_value(off[0], name);
    e.end = offset_value(off[1], name);
    return e;
}

void check_metadata(const json& v) {
    if (!v.is_object()) throw FileFormatError("__metadata__ is not an object of strings");
    for (const auto& [key, value] : v.items())
        if (!value.is_string())
            throw FileFormatError("__metadata__ value for '" + printable(key) + "' is not a string");
}

} // namespace

namespace io {

SafetensorsIndex read_safetensors_index(ByteSource& src) {
    const std::uint64_t size = src.size();
    if (size == 0) throw FileFormatError("empty file (a .safetensors file starts with an 8-byte header length)");
    if (size < 8)
        throw FileFormatError("truncated .safetensors file: " + std::to_string(size) +
                              " bytes, the 8-byte header length is cut off");
    std::uint8_t len_bytes[8];
    src.read(0, 8, len_bytes);
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
    if (header_len > size - 8)
        throw FileFormatError("header length " + std::to_string(header_len) + " runs past the end of the file (" +
                              std::to_string(size - 8) + " bytes follow the length field)");
    if (header_len > kMaxHeaderBytes)
        throw FileFormatError("header of " + std::to_string(header_len) + " bytes is larger than the " +
                              std::to_string(kMaxHeaderBytes) + "-byte limit");
    std::string text(std::size_t(header_len), '\0');
    src.read(8, text.size(), text.data());
    const json header = parse_header(text);
    if (!header.is_object()) throw FileFormatError("header JSON is not an object");

    const std::uint64_t data_start = 8 + header_len;
    const std::uint64_t buffer = size - data_start;
    std::vector<Entry> entries;
    for (const auto& [name, value] : header.items()) {
        if (name == "__metadata__") {
            check_metadata(value);
            continue;
        }
        Entry e = parse_entry(printable(name), value);
        e.name = name;
        const std::string label = "tensor '" + printable(name) + "'";
        const ShapeSize ss = shape_size(e.shape, itemsize(e.dtype));
        if (!ss.error.empty()) throw FileFormatError(label + ": shape " + shape_string(e.shape) + ": " + ss.error);
        if (e.begin > e.end)
            throw FileFormatError(label + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                                  "] end before they begin");
        if (e.end > buffer)
            throw FileFormatError(label + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                                  "] run past the " + std::to_string(buffer) + "-byte data buffer");
        if (e.end - e.begin != std::uint64_t(ss.bytes))
            throw FileFormatError(label + ": shape " + shape_string(e.shape) + " of " + st_name(e.dtype) + " is " +
                                  std::to_string(ss.bytes) + " bytes but data_offsets [" + std::to_string(e.begin) +
                                  ", " + std::to_string(e.end) + "] span " + std::to_string(e.end - e.begin));
        entries.push_back(std::move(e));
    }

    // The tensors must tile [0, buffer) exactly.
    std::vector<const Entry*> order;
    for (const Entry& e : entries) order.push_back(&e);
    std::sort(order.begin(), order.end(),
              [](const Entry* a, const Entry* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
    std::uint64_t cursor = 0;
    const Entry* prev = nullptr;
    for (const Entry* e : order) {
        if (e->begin < cursor)
            throw FileFormatError("tensor '" + printable(e->name) + "' at bytes [" + std::to_string(e->begin) + ", " +
                                  std::to_string(e->end) + ") overlaps tensor '" + printable(prev->name) + "'");
        if (e->begin > cursor)
            throw FileFormatError(std::to_string(e->begin - cursor) + " unused bytes before tensor '" +
                                  printable(e->name) + "' at offset " + std::to_string(e->begin));
        cursor = e->end;
        prev = e;
    }
    if (cursor != buffer)
        throw FileFormatError("the header describes " + std::to_string(cursor) + " bytes of tensor data but the file holds " +
                              std::to_string(buffer) + " (" + std::to_string(buffer - cursor) + " trailing bytes)");

    SafetensorsIndex index;
    index.data_start = data_start;
    index.entries = std::move(entries);
    return index;
}

HostTensor read_safetensors_entry(ByteSource& src, const SafetensorsIndex& index, const SafetensorsEntry& e) {
    HostTensor t;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.bytes = allocate_bytes(e.end - e.begin, "tensor '" + printable(e.name) + "' of shape " + shape_string(e.shape) +
                                                  " " + dtype_label(e.dtype));
    src.read(index.data_start + e.begin, t.bytes.size(), t.bytes.data());
    return t;
}

TensorMap read_safetensors_from(ByteSource& src) {
    const SafetensorsIndex index = read_safetensors_index(src);
    TensorMap out;
    for (const Entry& e : index.entries) out.emplace(e.name, read_safetensors_entry(src, index, e));
    return out;
}

} // namespace io

TensorMap parse_safetensors(const std::uint8_t* data, std::size_t size) {
    if (data == nullptr && size != 0)
        throw ArgumentError("data", "parse_safetensors: null data with size " + std::to_string(size));
    io::MemorySource src(data, size);
    return io::read_safetensors_from(src);
}

TensorMap read_safetensors(const std::string& path) {
    return io::with_path(path, [&] {
        io::FileSource src(path);
        return io::read_safetensors_from(src);
    });
}

HostTensor read_safetensors_tensor(const std::string& path, const std::string& name) {
    return io::with_path(path, [&] {
        io::FileSource src(path);
        const io::SafetensorsIndex index = io::read_safetensors_index(src);
        std::string names;
        for (const Entry& e : index.entries) {
            if (e.name == name) return io::read_safetensors_entry(src, index, e);
            if (names.size() < 400) names += std::string(names.empty() ? "" : ", ") + "'" + printable(e.name, 80) + "'";
        }
        throw FileFormatError("no tensor named '" + printable(name) + "' (the file holds " +
                              (names.empty() ? std::string("none") : names) + ")");
    });
}

std::map<std::string, TensorInfo> read_safetensors_info(const std::string& path) {
    return io::with_path(path, [&] {
        io::FileSource src(path);
        std::map<std::string, TensorInfo> out;
        for (const Entry& e : io::read_safetensors_index(src).entries) out[e.name] = TensorInfo{e.dtype, e.shape};
        return out;
    });
}

void io::write_safetensors_refs(const std::string& path,
                                const std::vector<std::pair<std::string, const HostTensor*>>& tensors) {
    json header = json::object();
    std::vector<const std::vector<std::byte>*> payloads;
    std::uint64_t offset = 0;
    for (const auto& [name, tp] : tensors) { // sorted by name: the data follows the header's key order
        const HostTensor& t = *tp;
        if (name == "__metadata__")
            throw ArgumentError("tensors", path + ": '__metadata__' is reserved and cannot name a tensor");
        io::check_writable(t, path + " tensor '" + printable(name) + "'");
        header[name] = {{"dtype", st_name(t.dtype)},
                        {"shape", t.shape},
                        {"data_offsets", {offset, offset + t.bytes.size()}}};
        offset += t.bytes.size();
        payloads.push_back(&t.bytes);
    }
    std::string text;
    try {
        text = header.dump();
    } catch (const json::exception& e) {
        throw ArgumentError("tensors", path + ": cannot write the header (tensor names must be valid UTF-8): " +
                                           e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    std::string head(8, '\0');
    for (int i = 0; i < 8; ++i) head[std::size_t(i)] = char(std::uint64_t(text.size()) >> (8 * i) & 0xff);
    io::write_file(path, head + text, payloads);
}

void write_safetensors(const std::string& path, const TensorMap& tensors) {
    std::vector<std::pair<std::string, const HostTensor*>> refs;
    for (const auto& [name, t] : tensors) refs.emplace_back(name, &t);
    io::write_safetensors_refs(path, refs);
}

void write_safetensors_refs(const std::string& path, const std::map<std::string, const HostTensor*>& tensors) {
    std::vector<std::pair<std::string, const HostTensor*>> refs;
    for (const auto& [name, t] : tensors) {
        if (t == nullptr) throw ArgumentError("tensors", path + ": tensor '" + printable(name) + "' is null");
        refs.emplace_back(name, t);
    }
    io::write_safetensors_refs(path, refs);
}

} // namespace vmonarch
