// The subcommands of the vmonarch tool; each file cmd_<name>.cpp registers one.
#pragma once

#include "cli_common.hpp"

namespace vmonarch::cli {

Command add_demo_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_compare_command(CLI::App& app);
Command add_flops_command(CLI::App& app);
Command add_make_inputs_command(CLI::App& app);
Command add_info_command(CLI::App& app);
Command add_backward_command(CLI::App& app);

} // namespace vmonarch::cli
