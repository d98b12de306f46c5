// read_tensor / write_tensor: pick the format by extension; "x.safetensors:name" picks one tensor.
#include <algorithm>
#include <cctype>

#include "io/io_common.hpp"

namespace vmonarch {

namespace {

enum class Format { npy, safetensors };

bool ends_with_ci(const std::string& s, const std::string& suffix) {
    if (s.size() < suffix.size()) return false;
    return std::equal(suffix.begin(), suffix.end(), s.end() - std::ptrdiff_t(suffix.size()), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
    });
}

struct PathSpec {
    std::string path;
    Format format;
    bool has_name = false;
    std::string name;
};

// "x.npy" | "x.safetensors" | "x.safetensors:name" (the name may itself hold ':').
PathSpec parse_spec(const std::string& spec, const char* fn) {
    if (ends_with_ci(spec, ".npy")) return {spec, Format::npy, false, {}};
    if (ends_with_ci(spec, ".safetensors")) return {spec, Format::safetensors, false, {}};
    std::string lower = spec;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    const std::size_t at = lower.find(".safetensors:");
    if (at != std::string::npos) {
        const std::size_t colon = at + std::string(".safetensors").size();
        if (colon + 1 == spec.size())
            throw ArgumentError("path", std::string(fn) + ": '" + spec +
                                            "': empty tensor name after ':'; write FILE.safetensors or "
                                            "FILE.safetensors:NAME");
        return {spec.substr(0, colon), Format::safetensors, true, spec.substr(colon + 1)};
    }
    throw ArgumentError("path", std::string(fn) + ": '" + spec +
                                    "' has no known tensor-file extension (accepted: .npy, .safetensors, "
                                    ".safetensors:tensor_name)");
}

template <class Map>
std::string names_of(const Map& m) {
    std::string s;
    for (const auto& [name, t] : m) {
        (void)t;
        if (!s.empty()) s += ", ";
        if (s.size() > 400) return s + "...";
        s += "'" + io::printable(name, 80) + "'";
    }
    return s.empty() ? "none" : s;
}

} // namespace

HostTensor read_tensor(const std::string& path_spec) {
    PathSpec p = parse_spec(path_spec, "read_tensor");
    if (p.format == Format::npy) return read_npy(p.path);
    if (p.has_name) return read_safetensors_tensor(p.path, p.name);
    const std::map<std::string, TensorInfo> infos = read_safetensors_info(p.path);
    if (infos.size() != 1)
        throw FileFormatError(p.path + ": holds " + std::to_string(infos.size()) + " tensors (" + names_of(infos) +
                              "); pick one with '" + p.path + ":name'");
    return read_safetensors_tensor(p.path, infos.begin()->first);
}

TensorInfo read_tensor_info(const std::string& path_spec) {
    PathSpec p = parse_spec(path_spec, "read_tensor_info");
    if (p.format == Format::npy)
        return io::with_path(p.path, [&] {
            io::FileSource src(p.path);
            const io::NpyHeader h = io::read_npy_header(src);
            return TensorInfo{h.dtype, h.shape};
        });
    const std::map<std::string, TensorInfo> infos = read_safetensors_info(p.path);
    if (p.has_name) {
        const auto it = infos.find(p.name);
        if (it == infos.end())
            throw FileFormatError(p.path + ": no tensor named '" + io::printable(p.name) + "' (the file holds " +
                                  names_of(infos) + ")");
        return it->second;
    }
    if (infos.size() != 1)
        throw FileFormatError(p.path + ": holds " + std::to_string(infos.size()) + " tensors (" + names_of(infos) +
                              "); pick one with '" + p.path + ":name'");
    return infos.begin()->second;
}

void write_tensor(const std::string& path, const HostTensor& tensor, const std::string& name) {
    PathSpec p = parse_spec(path, "write_tensor");
    if (p.format == Format::npy) return write_npy(p.path, tensor);
    io::write_safetensors_refs(p.path, {{p.has_name ? p.name : name, &tensor}});
}

} // namespace vmonarch
