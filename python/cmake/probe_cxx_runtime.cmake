# Script mode of cxx_runtime.cmake's configure-time decision (tests/python/test_reliability_cpu.py):
#   cmake -DCMAKE_CXX_COMPILER=<c++> [-DVMONARCH_TORCH_CXX_RUNTIME=<libstdc++.so.6>] [-DCXX_FLAGS=...]
#         [-DLINK_FLAGS=...] -DVMONARCH_PROBE_DIR=<dir> -P probe_cxx_runtime.cmake
# Exits 0 (printing the choice) when the compiler can link libstdc++ dynamically, non-zero otherwise.
include("${CMAKE_CURRENT_LIST_DIR}/cxx_runtime.cmake")
separate_arguments(cxx_flags UNIX_COMMAND "${CXX_FLAGS}")
separate_arguments(link_flags UNIX_COMMAND "${LINK_FLAGS}")
vmonarch_choose_cxx_runtime("${VMONARCH_PROBE_DIR}" "${CMAKE_CXX_COMPILER}" "${cxx_flags}" "${link_flags}"
                            "${VMONARCH_TORCH_CXX_RUNTIME}" link what)
message(STATUS "vmonarch python: extra link item: '${link}'; runtime: ${what}")
