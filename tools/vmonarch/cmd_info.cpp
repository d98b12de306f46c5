// vmonarch info: what this build and machine can do.
#include <iostream>
#include <memory>
#include <thread>

#include "commands.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vmonarch::cli {

namespace {

int info_command() {
    std::cout << "vmonarch 0.1.0\n";
#ifdef VMONARCH_WITH_CUDA
    std::cout << "CUDA kernels: built in\n";
#else
    std::cout << "CUDA kernels: not built (CPU only)\n";
#endif
    const bool cuda = cuda_available();
    std::cout << "CUDA device:  " << (cuda ? cuda_device_name(0) : std::string("none visible")) << "\n";
#ifdef _OPENMP
    std::cout << "CPU threads:  " << omp_get_max_threads() << " (OpenMP; set OMP_NUM_THREADS to change)\n";
#else
    std::cout << "CPU threads:  " << std::thread::hardware_concurrency() << "\n";
#endif
    std::cout << "demo device:  " << (cuda ? "cuda" : "cpu") << " (vmonarch demo --device auto)\n";
    return 0;
}

} // namespace

Command add_info_command(CLI::App& app) {
    CLI::App* cmd = app.add_subcommand("info", "Show the build's CUDA support, the visible GPU and CPU threads.");
    return Command{cmd, [] { return info_command(); }};
}

} // namespace vmonarch::cli
