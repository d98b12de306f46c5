#include "tensor_output.hpp"

#include <filesystem>
#include <map>
#include <memory>

#include "cli_common.hpp"

namespace vmonarch::cli {

namespace {

namespace fs = std::filesystem;

std::string name_of(const TensorOutput& o) {
    const TensorPath path = split_tensor_path(o.spec);
    return path.name.empty() ? o.default_name : path.name;
}

bool same_existing_file(const std::string& a, const std::string& b) {
    std::error_code ec;
    return fs::equivalent(a, b, ec) && !ec;
}

// A write error of the temporary file, told about the output the user named.
FileFormatError output_error(const TensorOutput& o, const std::string& temp, const std::string& message) {
    std::string reason = message;
    if (!temp.empty() && reason.rfind(temp + ": ", 0) == 0) reason.erase(0, temp.size() + 2);
    return FileFormatError(o.option + " " + o.spec + ": " + reason);
}

} // namespace

std::string check_output_path(const std::string& file, const std::string& option, const std::vector<InputFile>& inputs,
                              const std::string& shown_spec) {
    const std::string shown = option + " " + (shown_spec.empty() ? file : shown_spec);
    if (file.empty()) throw ArgumentError(option, option + ": empty output path");
    const fs::path path(file);
    const fs::path folder = path.has_parent_path() ? path.parent_path() : fs::path(".");
    std::error_code ec;
    const fs::file_status folder_status = fs::status(folder, ec);
    if (ec && ec != std::errc::no_such_file_or_directory)
        throw ArgumentError(option, shown + ": folder " + folder.string() + ": " + ec.message());
    if (!fs::exists(folder_status))
        throw ArgumentError(option, shown + ": folder " + folder.string() + " does not exist");
    if (!fs::is_directory(folder_status))
        throw ArgumentError(option, shown + ": " + folder.string() + " is not a folder");

    const fs::file_status status = fs::status(path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) throw ArgumentError(option, shown + ": " + ec.message());
    std::string resolved;
    if (fs::exists(status)) {
        if (fs::is_directory(status)) throw ArgumentError(option, shown + ": is a folder, expected a file name");
        if (!fs::is_regular_file(status))
            throw ArgumentError(option, shown + ": is not a regular file (a device, pipe or socket); expected a file name");
        for (const InputFile& input : inputs) {
            const std::string input_file = split_tensor_path(input.spec).file;
            if (same_existing_file(input_file, file))
                throw ArgumentError(option, shown + ": is the input " + input.option + " " + input_file +
                                                " (the same file); inputs are never overwritten, choose another "
                                                "output path");
        }
        resolved = fs::canonical(path, ec).string();
        if (ec) throw ArgumentError(option, shown + ": " + ec.message());
    } else {
        if (fs::is_symlink(fs::symlink_status(path, ec)))
            throw ArgumentError(option, shown + ": is a symbolic link to a missing file; remove it or choose "
                                                "another output path");
        const fs::path canonical_folder = fs::canonical(folder, ec);
        if (ec) throw ArgumentError(option, shown + ": folder " + folder.string() + ": " + ec.message());
        resolved = (canonical_folder / path.filename()).string();
    }
    // The folder must take a new file: create the temporary a write would create, and remove it again.
    try {
        StagedFile probe(resolved);
    } catch (const FileFormatError& e) {
        throw ArgumentError(option, shown + ": cannot create a file in the folder " + folder.string() + " (" +
                                        e.what() + ")");
    }
    return resolved;
}

OutputPlan check_tensor_outputs(const std::vector<TensorOutput>& outputs, const std::vector<DType>& dtypes,
                                const std::vector<InputFile>& inputs) {
    OutputPlan plan;
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        const TensorOutput& o = outputs[i];
        const TensorPath path = split_tensor_path(o.spec);
        const std::string resolved = check_output_path(path.file, o.option, inputs, o.spec);
        require_tensor_extension(o.spec, o.option);
        const bool npy = is_npy_path(o.spec);
        if (npy && i < dtypes.size() && dtypes[i] == DType::bf16)
            throw ArgumentError(o.option, o.option + " " + o.spec +
                                              ": .npy has no bfloat16; write a .safetensors file or choose "
                                              "another output dtype");
        OutputFilePlan* same = nullptr;
        for (OutputFilePlan& file : plan)
            if (file.resolved == resolved || same_existing_file(file.resolved, resolved)) same = &file;
        if (same == nullptr) {
            plan.push_back(OutputFilePlan{path.file, resolved, npy, {i}, {}});
            continue;
        }
        const TensorOutput& first = outputs[same->outputs.front()];
        if (same->npy || npy)
            throw ArgumentError(o.option, o.option + " " + o.spec + ": is the same file as " + first.option + " " +
                                              first.spec + "; give each output its own file");
        for (std::size_t j : same->outputs)
            if (name_of(outputs[j]) == name_of(o))
                throw ArgumentError(o.option, o.option + " " + o.spec + ": tensor '" + name_of(o) +
                                                  "' is written twice into " + same->file + " (also by " +
                                                  outputs[j].option + ")");
        same->outputs.push_back(i);
    }

    // An existing .safetensors file keeps its other tensors, so it must be readable now.
    for (OutputFilePlan& file : plan) {
        std::error_code ec;
        if (file.npy || !fs::exists(file.resolved, ec)) continue;
        const TensorOutput& first = outputs[file.outputs.front()];
        std::map<std::string, TensorInfo> existing;
        try {
            existing = read_safetensors_info(file.resolved);
        } catch (const FileFormatError& e) {
            throw ArgumentError(first.option, first.option + " " + first.spec +
                                                  ": the existing file is not a readable .safetensors file (" +
                                                  e.what() + "); writing would lose its contents: remove it or "
                                                  "choose another output path");
        }
        for (const auto& [name, info] : existing) {
            (void)info;
            bool rewritten = false;
            for (std::size_t j : file.outputs) rewritten = rewritten || name_of(outputs[j]) == name;
            if (!rewritten) file.kept.push_back(name);
        }
    }
    return plan;
}

void write_tensor_outputs(const OutputPlan& plan, const std::vector<TensorOutput>& outputs) {
    std::vector<std::unique_ptr<StagedFile>> staged;
    for (const OutputFilePlan& file : plan) {
        const TensorOutput& first = outputs[file.outputs.front()];
        std::string temp;
        try {
            auto target = std::make_unique<StagedFile>(file.resolved);
            temp = target->path();
            if (file.npy) {
                write_npy(temp, *first.tensor);
            } else {
                TensorMap kept;
                for (const std::string& name : file.kept) kept[name] = read_safetensors_tensor(file.resolved, name);
                std::map<std::string, const HostTensor*> tensors;
                for (const auto& [name, tensor] : kept) tensors[name] = &tensor;
                for (std::size_t j : file.outputs) tensors[name_of(outputs[j])] = outputs[j].tensor;
                write_safetensors_refs(temp, tensors);
            }
            staged.push_back(std::move(target));
        } catch (const FileFormatError& e) {
            throw output_error(first, temp, e.what());
        }
    }
    // Everything is written: only now replace the targets.
    for (std::size_t i = 0; i < staged.size(); ++i) {
        try {
            staged[i]->commit();
        } catch (const FileFormatError& e) {
            throw output_error(outputs[plan[i].outputs.front()], "", e.what());
        }
    }
}

std::string kept_tensors_note(const OutputPlan& plan) {
    std::string note;
    for (const OutputFilePlan& file : plan) {
        if (file.kept.empty()) continue;
        std::string names;
        for (const std::string& name : file.kept) names += (names.empty() ? "" : ", ") + name;
        note += (note.empty() ? " (kept " : "; kept ") + names + " in " + file.file;
    }
    return note.empty() ? note : note + ")";
}

} // namespace vmonarch::cli
