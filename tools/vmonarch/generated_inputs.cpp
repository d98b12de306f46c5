#include "generated_inputs.hpp"

#include "cli_common.hpp"

namespace vmonarch::cli {

VideoAttentionInputs generate_inputs(const VideoDataOptions& data, const std::string& grid_text) {
    const std::string grid = "--grid " + (grid_text.empty() ? format_grid(data.grid) : grid_text);
    try {
        return make_video_attention_inputs(data);
    } catch (const ArgumentError& e) {
        // The generator names its VideoDataOptions fields; the user typed options.
        const std::string& field = e.argument();
        std::string option;
        if (field == "head_dim") option = "--head-dim " + std::to_string(data.head_dim);
        else if (field == "value_dim") option = "--value-dim " + std::to_string(data.value_dim);
        else if (field == "heads") option = "--heads " + std::to_string(data.heads);
        else if (field == "batch") option = "--batch " + std::to_string(data.batch);
        else if (field == "sharpness") option = "--sharpness " + format_fixed(data.sharpness, 3);
        else // the grid, or the total size, which all of them make up
            option = "--batch " + std::to_string(data.batch) + " --heads " + std::to_string(data.heads) + " " + grid +
                     " --head-dim " + std::to_string(data.head_dim);
        throw ArgumentError(option.substr(0, option.find(' ')), option + ": " + e.what());
    }
}

} // namespace vmonarch::cli
