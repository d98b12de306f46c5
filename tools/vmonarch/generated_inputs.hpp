// make_video_attention_inputs for `demo` and `make-inputs`: its argument errors are told in terms of the
// command's options (--head-dim 1: ..., not head_dim), like every other CLI error.
#pragma once

#include <string>

#include "vmonarch/extras/video_data.hpp"

namespace vmonarch::cli {

// `grid_text`: the --grid value as given ("" when the command used its default grid).
VideoAttentionInputs generate_inputs(const VideoDataOptions& data, const std::string& grid_text);

} // namespace vmonarch::cli
