# The extension must share torch's C++ runtime. libtorch NEEDs the shared libstdc++.so.6; a module that
# links its own static copy of libstdc++ brings a second copy of the runtime's global state (locales,
# stream initialisation) into the process, and its first formatted output crashes (SIGSEGV in
# std::ostream inserts) or prints nothing. Some toolchains link libstdc++ statically into shared
# libraries (a spec file, -static-libstdc++ in the flags, a compiler shipped without a shared
# libstdc++). These functions find that out at configure time, before the long build, by linking a
# probe module with the chosen compiler and flags; repair it by linking torch's own libstdc++.so.6
# explicitly (it then comes first on the link line, so the static archive the driver appends is never
# used); or stop with a message naming the compiler. check_module_runtime.cmake checks the built module.

set(_VMONARCH_CXX_RUNTIME_DIR "${CMAKE_CURRENT_LIST_DIR}")

# <out>: the NEEDED entries of the ELF shared library <file> (readelf -d, or objdump -p).
function(vmonarch_elf_needed file out)
  find_program(VMONARCH_READELF NAMES readelf llvm-readelf)
  find_program(VMONARCH_OBJDUMP NAMES objdump llvm-objdump)
  if(VMONARCH_READELF)
    execute_process(COMMAND ${VMONARCH_READELF} -d ${file} OUTPUT_VARIABLE text RESULT_VARIABLE rc ERROR_QUIET)
    string(REGEX MATCHALL "\\(NEEDED\\)[^\n]*\\[[^]\n]+\\]" lines "${text}")
  elseif(VMONARCH_OBJDUMP)
    execute_process(COMMAND ${VMONARCH_OBJDUMP} -p ${file} OUTPUT_VARIABLE text RESULT_VARIABLE rc ERROR_QUIET)
    string(REGEX MATCHALL "NEEDED[ \t]+[^ \t\n]+" lines "${text}")
  else()
    message(FATAL_ERROR "vmonarch python: neither readelf nor objdump was found (binutils); they are needed "
                        "to check which C++ runtime the extension links")
  endif()
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "vmonarch python: cannot read the dynamic section of ${file}")
  endif()
  set(needed "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE ".*\\[([^]]+)\\]$" "\\1" name "${line}")
    string(REGEX REPLACE "^NEEDED[ \t]+" "" name "${name}")
    list(APPEND needed "${name}")
  endforeach()
  set(${out} "${needed}" PARENT_SCOPE)
endfunction()

# <out>: TRUE when the NEEDED list has the shared libstdc++ and not LLVM's libc++ (another ABI than torch's).
function(vmonarch_needed_shared_libstdcxx needed out)
  set(ok FALSE)
  foreach(name IN LISTS needed)
    if(name MATCHES "^libstdc\\+\\+\\.so")
      set(ok TRUE)
    endif()
  endforeach()
  foreach(name IN LISTS needed)
    if(name MATCHES "^libc\\+\\+\\.so")
      set(ok FALSE)
    endif()
  endforeach()
  set(${out} ${ok} PARENT_SCOPE)
endfunction()

# <out>: "<compiler> (<first line of its --version>)", for messages.
function(vmonarch_describe_compiler compiler out)
  execute_process(COMMAND ${compiler} --version OUTPUT_VARIABLE text ERROR_QUIET)
  string(REGEX MATCH "^[^\n]*" first "${text}")
  set(${out} "${compiler} (${first})" PARENT_SCOPE)
endfunction()

# Links the probe module in <dir> with <compiler>, <cxx_flags> and <link_flags> (lists) plus the link
# items <extra>; <ok>: whether it NEEDs the shared libstdc++, <detail>: what it NEEDs or why it failed.
function(vmonarch_probe_cxx_runtime dir compiler cxx_flags link_flags extra ok detail)
  file(MAKE_DIRECTORY "${dir}")
  file(REMOVE "${dir}/probe.so")
  execute_process(
    COMMAND ${compiler} ${cxx_flags} -fPIC -shared ${link_flags} "${_VMONARCH_CXX_RUNTIME_DIR}/cxx_runtime_probe.cpp"
            -o "${dir}/probe.so" ${extra}
    RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
  if(NOT rc EQUAL 0 OR NOT EXISTS "${dir}/probe.so")
    set(${ok} FALSE PARENT_SCOPE)
    set(${detail} "linking a probe module failed: ${log}" PARENT_SCOPE)
    return()
  endif()
  vmonarch_elf_needed("${dir}/probe.so" needed)
  vmonarch_needed_shared_libstdcxx("${needed}" shared)
  set(${ok} ${shared} PARENT_SCOPE)
  string(REPLACE ";" ", " shown "${needed}")
  set(${detail} "a probe module linked with it NEEDs: ${shown}" PARENT_SCOPE)
endfunction()

# Decides how the extension links the C++ runtime. <out_link>: "" when <compiler> links libstdc++
# dynamically, or <torch_runtime> (the libstdc++.so.6 torch loads, a full path) when its default is
# static and linking that file explicitly repairs it; otherwise stops with FATAL_ERROR. <out_what>: a
# description for messages and the build info.
function(vmonarch_choose_cxx_runtime dir compiler cxx_flags link_flags torch_runtime out_link out_what)
  vmonarch_describe_compiler("${compiler}" who)
  vmonarch_probe_cxx_runtime("${dir}" "${compiler}" "${cxx_flags}" "${link_flags}" "" ok detail)
  if(ok)
    message(STATUS "vmonarch python: C++ runtime: ${who} links libstdc++ dynamically (libstdc++.so.6, as torch)")
    set(${out_link} "" PARENT_SCOPE)
    set(${out_what} "libstdc++.so.6 (shared, as the compiler links it)" PARENT_SCOPE)
    return()
  endif()
  set(why "${detail}")
  if(torch_runtime AND EXISTS "${torch_runtime}")
    vmonarch_probe_cxx_runtime("${dir}" "${compiler}" "${cxx_flags}" "${link_flags}" "${torch_runtime}" ok detail)
    if(ok)
      message(STATUS "vmonarch python: C++ runtime: ${who} links libstdc++ statically into shared libraries "
                     "(${why}); the extension links torch's ${torch_runtime} instead")
      set(${out_link} "${torch_runtime}" PARENT_SCOPE)
      set(${out_what} "libstdc++.so.6 (shared: torch's ${torch_runtime}, linked explicitly)" PARENT_SCOPE)
      return()
    endif()
    set(why "${why}; with torch's ${torch_runtime} on the link line, ${detail}")
  endif()
  message(FATAL_ERROR
    "vmonarch python: the C++ compiler ${who} links the C++ runtime (libstdc++) statically into shared "
    "libraries, or not at all (${why}). An extension built that way carries its own copy of libstdc++ next "
    "to torch's (libtorch NEEDs libstdc++.so.6) and crashes or prints nothing on its first call. Build with "
    "the system g++ instead: CXX=g++ pip install --no-build-isolation --no-deps . (and remove any "
    "-static-libstdc++ from CXXFLAGS/LDFLAGS; delete the old build directory, build-py/, so that CMake "
    "picks up the new compiler).")
endfunction()
