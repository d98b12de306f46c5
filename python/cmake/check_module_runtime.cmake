# Post-build check of the extension (script mode, run by python/CMakeLists.txt after linking _C.so):
#   cmake -DMODULE=<_C.so> -DCOMPILER=<description> [-DPYTHON=<python> -DSMOKE=<vmonarch/_smoke.py>] -P ...
# 1. The module NEEDs the shared libstdc++ (torch's runtime), not a static copy (cxx_runtime.cmake says why).
# 2. With PYTHON: one attention and one dense_attention call on CPU tensors in a child process (_smoke.py).
# On failure the module is deleted, so that no build directory or wheel keeps a module that crashes.
include("${CMAKE_CURRENT_LIST_DIR}/cxx_runtime.cmake")

function(fail text)
  file(REMOVE "${MODULE}")
  message(FATAL_ERROR "vmonarch python: ${text} The module (${MODULE}) was deleted. Build with the system g++: "
                      "CXX=g++ pip install --no-build-isolation --no-deps . (after deleting the build directory).")
endfunction()

vmonarch_elf_needed("${MODULE}" needed)
vmonarch_needed_shared_libstdcxx("${needed}" ok)
if(NOT ok)
  string(REPLACE ";" ", " shown "${needed}")
  fail("the extension built with ${COMPILER} does not link the shared libstdc++ like torch (it NEEDs: ${shown}); "
       "it would carry its own copy of the C++ runtime and crash on its first call.")
endif()
if(PYTHON)
  execute_process(COMMAND "${PYTHON}" "${SMOKE}" --library "${MODULE}" --compiler "${COMPILER}" --device cpu
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    fail("the smoke test of the freshly built extension failed:\n${out}\n")
  endif()
  message(STATUS "vmonarch python: smoke test of ${MODULE} passed (attention and dense_attention on CPU)")
endif()
