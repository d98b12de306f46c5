# ctest driver: runs the vmonarch CLI with the arguments after "--" (it must succeed), then lists the
# tensors of FILE with the test helper and compares them with NAMES (sorted, '|'-separated).
# Usage: cmake -DVMONARCH=<exe> -DHELPER=<make_test_files exe> -DFILE=<x.safetensors> -DNAMES=a|b|c
#              [-DEXPECT_STDOUT=<regex>] -P check_safetensors_names.cmake -- <args...>
include(${CMAKE_CURRENT_LIST_DIR}/args_after_separator.cmake)
execute_process(COMMAND ${VMONARCH} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "exit status ${rc}\nstdout: ${out}\nstderr: ${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "vmonarch ${args} failed (${rc}): ${err}")
endif()
if(DEFINED EXPECT_STDOUT AND NOT out MATCHES "${EXPECT_STDOUT}")
  message(FATAL_ERROR "stdout does not match '${EXPECT_STDOUT}'")
endif()
execute_process(COMMAND ${HELPER} names ${FILE} RESULT_VARIABLE rc OUTPUT_VARIABLE listed ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cannot list ${FILE}: ${err}")
endif()
string(REGEX REPLACE "\n$" "" listed "${listed}")
string(REPLACE "\n" "|" listed "${listed}")
if(NOT listed STREQUAL NAMES)
  message(FATAL_ERROR "${FILE} holds ${listed}, expected ${NAMES}")
endif()
