// q/k/v tensors for `run` and `compare`: reading them, checking their shapes against each other and the
// grid before anything runs, and viewing them as vmonarch::TensorView in either file layout.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cli_common.hpp"
#include "tensor_output.hpp"
#include "vmonarch/extras/tensor_file.hpp"

namespace vmonarch::cli {

struct AttentionShape {
    std::int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0, value_dim = 0;
};

// The shape of a [B, heads, N, d] tensor as stored in `layout`.
std::vector<std::int64_t> file_shape(Layout layout, std::int64_t batch, std::int64_t heads, std::int64_t tokens,
                                     std::int64_t dim);

// A TensorView over a contiguous host or device buffer holding a tensor in `layout`; `dim` is the last axis.
TensorView view_of(void* data, DType dtype, Device device, Layout layout, const AttentionShape& shape,
                   std::int64_t dim);
LseView lse_view_of(void* data, Device device, const AttentionShape& shape);

// The text part of a joint text+video sequence (spec §3c): the session's tokens are N video + `tokens` text.
struct JointText {
    std::int64_t tokens = 0;
    TextPosition position = TextPosition::last;
    std::vector<std::int64_t> lens; // valid text tokens per batch element; empty = all
};

struct AttentionInputs {
    HostTensor q, k, v; // empty until read_attention_data
    DType dtype = DType::f32; // of the files
    Layout layout = Layout::bhsd;
    AttentionShape shape;
    VideoGrid grid;
    std::string q_path, k_path, v_path;

    // The files, for the check that no output replaces one of them.
    std::vector<InputFile> files() const;
};

// A tensor file's header / data, read for the command-line option `option`: errors name the option and the
// file ("<option> <spec>: ..."; FileFormatError, OutOfMemoryError, ArgumentError). The header check also
// requires the file to exist.
TensorInfo tensor_header_for(const std::string& spec, const std::string& option);
HostTensor tensor_data_for(const std::string& spec, const std::string& option);

// Reads the headers of q, k, v (read_tensor specs) and checks, before any tensor data is read: each file
// exists, 4-D, q and k the same shape, v the same batch/heads/tokens, one dtype, tokens == T·H·W + text_tokens.
// Every message names the option and the file.
AttentionInputs inspect_attention_inputs(const std::string& q_spec, const std::string& k_spec,
                                         const std::string& v_spec, const VideoGrid& grid, Layout layout,
                                         std::int64_t text_tokens = 0);

// Reads the data of inspected inputs (a file changed since is an error), converted to `cast` when given. A
// cast that turns finite values into inf (out of the target dtype's range) is an ArgumentError naming --cast.
void read_attention_data(AttentionInputs& inputs, std::optional<DType> cast = std::nullopt);

// `tensor` converted to `dtype`; ArgumentError naming `option` (e.g. --cast, --out-dtype) and `source`
// when finite values fall outside the dtype's range and would become inf.
HostTensor convert_checked(const HostTensor& tensor, DType dtype, const std::string& option, const std::string& source);

// The header of a saved output (--reference, --approx) checked against the inputs' output shape.
void check_output_file_header(const std::string& spec, const std::string& option, const AttentionInputs& inputs);

// Command-line options shared by `run` and `compare`.
struct AttentionFileOptions {
    std::string q, k, v;
    std::string grid;
    std::string layout = "bhsd";
    std::string device = "auto";
    std::string cast;
    int iterations = 2;
    double clamp = 0.1;
    bool no_recompute = false;
    std::optional<double> scale;
    bool progress = false;
    // Exact key groups and joint text+video sequences (spec §3b-3c).
    std::int64_t sink_frames = 0;
    std::optional<std::int64_t> window_radius;
    std::int64_t text_tokens = 0;
    std::string text_position = "last";
    std::string text_lens;
};
void add_attention_file_options(CLI::App& command, AttentionFileOptions& options);

// Options{} from the flags, with their ranges checked.
Options monarch_options_from(const AttentionFileOptions& options);

// The flags of an attention command that need no file, parsed and checked before any file is opened:
// --layout, --grid, the Options{} flags, --device and --cast (in this order; errors name the flag).
struct AttentionFlags {
    Layout layout = Layout::bhsd;
    VideoGrid grid;
    Options options;
    Device device = Device::cpu;
    std::optional<DType> cast;
};
AttentionFlags parse_attention_flags(const AttentionFileOptions& options);

// inspect_attention_inputs for the --q, --k, --v files and --text-tokens of `options`.
AttentionInputs inspect_attention_files(const AttentionFileOptions& options, const AttentionFlags& flags);

// The joint text of --text-tokens / --text-position / --text-lens, checked against the batch; nullopt without
// --text-tokens (video-only inputs).
std::optional<JointText> joint_text_from(const AttentionFileOptions& options, std::int64_t batch);

} // namespace vmonarch::cli
