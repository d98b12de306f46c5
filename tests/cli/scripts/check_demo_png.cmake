# ctest driver: runs `vmonarch demo` on a tiny CPU grid and checks its report and the PNG it writes.
# Usage: cmake -DVMONARCH=<exe> -DPNG=<path> -P check_demo_png.cmake
file(REMOVE "${PNG}")
execute_process(
  COMMAND ${VMONARCH} demo --device cpu --grid 3,6,8 --heads 4 --head-dim 16 --png "${PNG}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "vmonarch demo failed (${rc}): ${err}")
endif()
foreach(expected "grid 3x6x8" "positional" "semantic" "sink" "mixed" "rel. L2 error" "cosine sim."
                 "dense .*FLOP" "VMonarch .*FLOP" "x fewer FLOPs" "heat map: ")
  if(NOT out MATCHES "${expected}")
    message(FATAL_ERROR "demo output lacks '${expected}'")
  endif()
endforeach()
if(NOT EXISTS "${PNG}")
  message(FATAL_ERROR "demo did not write ${PNG}")
endif()
file(READ "${PNG}" magic LIMIT 8 HEX)
if(NOT magic STREQUAL "89504e470d0a1a0a")
  message(FATAL_ERROR "${PNG} is not a PNG (starts with ${magic})")
endif()
file(SIZE "${PNG}" size)
if(size LESS 1000)
  message(FATAL_ERROR "${PNG} is suspiciously small (${size} bytes)")
endif()
