// vmonarch: command-line front end of the library (demo, run, compare, flops, make-inputs, info).
// Every failure ends with exit status != 0 and one line "vmonarch <command>: error: <reason>" on stderr.
#include <cstdio>
#include <exception>
#include <new>
#include <iostream>
#include <string>
#include <vector>

#include "commands.hpp"

namespace {

std::string one_line(std::string text) {
    for (char& c : text)
        if (c == '\n' || c == '\r') c = ' ';
    while (!text.empty() && text.back() == ' ') text.pop_back();
    return text;
}

int report(const std::string& prefix, const std::string& kind, const std::string& message, int status) {
    std::cerr << prefix << ": " << kind << one_line(message) << std::endl;
    return status;
}

} // namespace

int main(int argc, char** argv) {
    using namespace vmonarch::cli;
    CLI::App app{"vmonarch: VMonarch structured attention for video diffusion transformers.\n"
                 "Start with 'vmonarch demo'; 'vmonarch <command> --help' describes each command.",
                 "vmonarch"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "vmonarch 0.1.0");

    const std::vector<Command> commands = {add_demo_command(app),  add_run_command(app),
                                           add_compare_command(app), add_flops_command(app),
                                           add_make_inputs_command(app), add_info_command(app),
                                           add_backward_command(app)};
    // Set after the subcommands exist so that they do not inherit it.
    app.footer("Exit status: 0 on success, 1 for invalid arguments or files, 2 for unsupported requests and "
               "CUDA failures, 3 for anything else, 4 when memory ran out, 5 when a result holds NaN/inf (run still "
               "writes it, compare reports it).\n"
               "Inputs are never overwritten; outputs appear whole or not at all.\n");

    if (argc <= 1) {
        std::cout << app.help();
        return 0;
    }

    std::string prefix = "vmonarch";
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e); // --help, --help-all, --version
        if (app.get_subcommands().empty() && argv[1][0] != '-') {
            std::string names;
            for (const Command& c : commands) names += (names.empty() ? "" : ", ") + c.app->get_name();
            return report(prefix, "error: ", "unknown command '" + std::string(argv[1]) + "'; commands: " + names, 1);
        }
        for (const Command& c : commands)
            if (c.app->parsed()) prefix = "vmonarch " + c.app->get_name();
        return report(prefix, "error: ", std::string(e.what()) + " (see " + prefix + " --help)", 1);
    }

    for (const Command& c : commands) {
        if (!c.app->parsed()) continue;
        prefix = "vmonarch " + c.app->get_name();
        try {
            return c.run();
        } catch (const vmonarch::ArgumentError& e) {
            return report(prefix, "error: ", e.what(), exit_invalid);
        } catch (const vmonarch::FileFormatError& e) {
            return report(prefix, "error: ", e.what(), exit_invalid);
        } catch (const vmonarch::UnsupportedError& e) {
            return report(prefix, "error: unsupported: ", e.what(), exit_unsupported);
        } catch (const vmonarch::CudaError& e) {
            return report(prefix, "error: CUDA: ", e.what(), exit_unsupported);
        } catch (const vmonarch::OutOfMemoryError& e) {
            return report(prefix, "error: out of memory: ", e.what(), exit_out_of_memory);
        } catch (const std::bad_alloc&) {
            return report(prefix, "error: out of memory: ", "a host memory allocation failed", exit_out_of_memory);
        } catch (const std::exception& e) {
            return report(prefix, "error: ", e.what(), exit_internal);
        }
    }
    return report(prefix, "error: ", "no command given (see vmonarch --help)", 1);
}
