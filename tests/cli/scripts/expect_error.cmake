# ctest driver: runs the vmonarch CLI with the arguments after "--" and passes only when it exits non-zero
# and prints exactly one line on stderr that matches EXPECT (a regular expression) and starts with
# "vmonarch". Usage: cmake -DVMONARCH=<exe> -DEXPECT=<regex> -P expect_error.cmake -- <args...>
include(${CMAKE_CURRENT_LIST_DIR}/args_after_separator.cmake)

execute_process(COMMAND ${VMONARCH} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "exit status ${rc}; stderr: ${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit status, got 0 (stdout: ${out})")
endif()
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the process did not exit normally: ${rc}")
endif()
string(REGEX REPLACE "\n$" "" line "${err}")
if(line STREQUAL "" OR line MATCHES "\n")
  message(FATAL_ERROR "expected exactly one line on stderr, got: [${err}]")
endif()
if(NOT line MATCHES "^vmonarch")
  message(FATAL_ERROR "stderr line does not start with 'vmonarch': ${line}")
endif()
if(NOT line MATCHES "${EXPECT}")
  message(FATAL_ERROR "stderr does not match '${EXPECT}': ${line}")
endif()
