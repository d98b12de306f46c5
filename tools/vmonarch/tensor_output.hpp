// Writing result files safely: every output path is checked before anything is computed (its folder
// exists and takes a new file, it is not a folder, not an input file — by file identity, so also through
// symbolic and hard links — and not another output), and the outputs are written to temporary files that
// replace their targets only once all of them were written (StagedFile). .safetensors outputs may share a
// file (out.safetensors:out, out.safetensors:lse); an existing .safetensors file keeps the tensors that are
// not rewritten.
#pragma once

#include <string>
#include <vector>

#include "vmonarch/extras/tensor_file.hpp"

namespace vmonarch::cli {

// A file the command reads, which no output may replace.
struct InputFile {
    std::string option; // "--q"
    std::string spec;   // as given, e.g. "qkv.safetensors:q"
};

// Checks an output file path before anything is computed, and returns the file that writing it will
// replace (symbolic links followed). ArgumentError naming `option` when the folder is missing or takes no
// new file, the path is a folder, not a regular file, a dangling link, or one of `inputs`. Messages show
// `shown` (default: `file`) after the option.
std::string check_output_path(const std::string& file, const std::string& option, const std::vector<InputFile>& inputs,
                              const std::string& shown = {});

struct TensorOutput {
    std::string spec;         // FILE.npy, FILE.safetensors or FILE.safetensors:NAME
    std::string option;       // flag that named it, for messages
    std::string default_name; // safetensors name when the spec has none
    const HostTensor* tensor = nullptr;
};

// One file to be written, from one or more outputs.
struct OutputFilePlan {
    std::string file;                // as the first output named it
    std::string resolved;            // the file that gets replaced
    bool npy = false;
    std::vector<std::size_t> outputs; // indices into the outputs
    std::vector<std::string> kept;    // tensors of the existing .safetensors file that are kept
};
using OutputPlan = std::vector<OutputFilePlan>;

// Checks, before anything is computed: extensions, dtypes that fit the format (.npy has no bf16), every
// path (check_output_path), that no two outputs name the same .npy file or the same tensor of one
// .safetensors file, and that an existing .safetensors target is readable (its other tensors are kept).
OutputPlan check_tensor_outputs(const std::vector<TensorOutput>& outputs, const std::vector<DType>& dtypes,
                                const std::vector<InputFile>& inputs);

// Writes every output file of `plan` to a temporary file, then renames them all over their targets: either
// all outputs appear, whole, or (on an error) none of them changes. outputs[i].tensor must be set.
void write_tensor_outputs(const OutputPlan& plan, const std::vector<TensorOutput>& outputs);

// " (kept tensors a, b of out.safetensors)" for the files whose other tensors were kept, else "".
std::string kept_tensors_note(const OutputPlan& plan);

} // namespace vmonarch::cli
