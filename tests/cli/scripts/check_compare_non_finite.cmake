# ctest driver: `compare` on outputs that hold a NaN or an inf must not report a match. Runs
#   compare <common> --approx APPROX --reference REFERENCE [--json]
# and checks: exit status 5, one warning line on stderr naming the non-finite values; in the table the
# affected head and the total show nan/inf; in the JSON their rel_l2/cosine/max_abs are null with the
# counts of non-finite elements, while the unaffected head (GOOD_HEAD) keeps finite numbers.
# Usage: cmake -DVMONARCH=<exe> -DAPPROX=.. -DREFERENCE=.. -DBAD_HEAD=<h> [-DGOOD_HEAD=<h>]
#              -DAPPROX_COUNT=<n> -DREFERENCE_COUNT=<n> -P check_compare_non_finite.cmake -- <common args>
include(${CMAKE_CURRENT_LIST_DIR}/args_after_separator.cmake)
set(command ${VMONARCH} compare ${args} --approx ${APPROX} --reference ${REFERENCE})

function(check_warning rc err)
  if(NOT rc EQUAL 5)
    message(FATAL_ERROR "expected exit status 5 (non-finite values), got ${rc}; stderr: ${err}")
  endif()
  string(REGEX REPLACE "\n$" "" line "${err}")
  if(line MATCHES "\n" OR NOT line MATCHES "^vmonarch compare: warning: .*non-finite")
    message(FATAL_ERROR "expected one warning line about non-finite values on stderr, got: [${err}]")
  endif()
endfunction()

execute_process(COMMAND ${command} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "table (exit ${rc}):\n${out}\nstderr: ${err}")
check_warning("${rc}" "${err}")
string(REGEX MATCH "\n +0 +${BAD_HEAD} [^\n]*" bad_row "${out}")
string(REGEX MATCH "\n +all [^\n]*" all_row "${out}")
foreach(row bad_row all_row)
  if(NOT ${row} MATCHES "(nan|inf)")
    message(FATAL_ERROR "${row} '${${row}}' does not show a non-finite error")
  endif()
endforeach()
if(out MATCHES "all +0\\.00000")
  message(FATAL_ERROR "the total claims a zero error")
endif()

execute_process(COMMAND ${command} --json RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "json (exit ${rc}):\n${out}")
check_warning("${rc}" "${err}")
foreach(where "overall" "per_head;${BAD_HEAD}")
  foreach(metric rel_l2 cosine max_abs)
    string(JSON type TYPE "${out}" ${where} ${metric})
    if(NOT type STREQUAL "NULL")
      string(JSON value GET "${out}" ${where} ${metric})
      message(FATAL_ERROR "${where} ${metric} is ${value}, expected null")
    endif()
  endforeach()
endforeach()
string(JSON approx_count GET "${out}" overall non_finite approx)
string(JSON reference_count GET "${out}" overall non_finite reference)
if(NOT approx_count EQUAL APPROX_COUNT OR NOT reference_count EQUAL REFERENCE_COUNT)
  message(FATAL_ERROR "non_finite counts approx ${approx_count}, reference ${reference_count}; expected "
                      "${APPROX_COUNT}, ${REFERENCE_COUNT}")
endif()
if(DEFINED GOOD_HEAD)
  string(JSON type TYPE "${out}" per_head ${GOOD_HEAD} rel_l2)
  string(JSON good GET "${out}" per_head ${GOOD_HEAD} rel_l2)
  if(NOT type STREQUAL "NUMBER" OR good STREQUAL "0.0")
    message(FATAL_ERROR "head ${GOOD_HEAD} (finite) rel_l2 is ${good} (${type}), expected a positive number")
  endif()
endif()
