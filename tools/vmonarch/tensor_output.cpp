#include "tensor_output.hpp"

#include <map>
#include <set>

#include "cli_common.hpp"

namespace vmonarch::cli {

namespace {

std::string name_of(const TensorOutput& o) {
    const TensorPath path = split_tensor_path(o.spec);
    return path.name.empty() ? o.default_name : path.name;
}

} // namespace

void check_tensor_outputs(const std::vector<TensorOutput>& outputs, const std::vector<DType>& dtypes) {
    std::set<std::string> npy_files;
    std::set<std::pair<std::string, std::string>> safetensors_entries;
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        const TensorOutput& o = outputs[i];
        require_tensor_extension(o.spec, o.option);
        const TensorPath path = split_tensor_path(o.spec);
        if (is_npy_path(o.spec)) {
            if (i < dtypes.size() && dtypes[i] == DType::bf16)
                throw ArgumentError(o.option, o.option + " " + o.spec +
                                                  ": .npy has no bfloat16; write a .safetensors file or choose "
                                                  "another output dtype");
            if (!npy_files.insert(path.file).second)
                throw ArgumentError(o.option, o.option + " " + o.spec + ": the same .npy file is named twice");
        } else if (!safetensors_entries.insert({path.file, name_of(o)}).second) {
            throw ArgumentError(o.option, o.option + " " + o.spec + ": tensor '" + name_of(o) +
                                              "' is written twice into " + path.file);
        }
    }
}

void write_tensor_outputs(const std::vector<TensorOutput>& outputs) {
    std::map<std::string, TensorMap> files;
    std::vector<std::string> order;
    for (const TensorOutput& o : outputs) {
        const TensorPath path = split_tensor_path(o.spec);
        if (is_npy_path(o.spec)) {
            write_npy(path.file, *o.tensor);
            continue;
        }
        if (!files.count(path.file)) order.push_back(path.file);
        files[path.file][name_of(o)] = *o.tensor;
    }
    for (const std::string& file : order) write_safetensors(file, files[file]);
}

} // namespace vmonarch::cli
