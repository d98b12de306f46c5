# CLI safety tests (label "cli"): inputs are never overwritten, outputs appear whole or not at all, outputs
# are checked before anything is computed, headers before data, non-finite values are reported, sizes are
# checked, out of memory is an error with its own exit status. Uses the fixture folder <build>/tests/cli/safety
# (tests/cli/scripts/setup_safety_inputs.cmake) and the helper make_test_files (tests/cli/make_test_files.cpp).
add_executable(vmonarch_cli_test_files ${CMAKE_CURRENT_LIST_DIR}/make_test_files.cpp)
target_link_libraries(vmonarch_cli_test_files PRIVATE vmonarch::extras)
set(VMONARCH_CLI_HELPER $<TARGET_FILE:vmonarch_cli_test_files>)
set(VMONARCH_SAFETY_DIR ${VMONARCH_CLI_DIR}/safety)

add_test(NAME cli_safety_inputs
  COMMAND ${CMAKE_COMMAND} -DVMONARCH=${VMONARCH_CLI_EXE} -DHELPER=${VMONARCH_CLI_HELPER}
          -DDIR=${VMONARCH_SAFETY_DIR} -P ${VMONARCH_CLI_SCRIPTS}/setup_safety_inputs.cmake)
set_tests_properties(cli_safety_inputs PROPERTIES LABELS cli FIXTURES_SETUP cli_safety_inputs)

# vmonarch_safety_error_test(<name> <stderr regex> [EXIT_CODE n] [UNCHANGED f|g] [ABSENT f|g]
#   [FORBID_STDOUT regex] [LIMIT_AS_KB n] [LIMIT_FILE_BLOCKS n] [NO_TEMPORARIES_IN dir] ARGS <cli args>):
# the command must fail with one stderr line matching the regex (tests/cli/scripts/expect_error.cmake).
function(vmonarch_safety_error_test name regex)
  cmake_parse_arguments(T "" "EXIT_CODE;UNCHANGED;ABSENT;FORBID_STDOUT;LIMIT_AS_KB;LIMIT_FILE_BLOCKS;NO_TEMPORARIES_IN"
                        "ARGS" ${ARGN})
  set(defines)
  foreach(key EXIT_CODE UNCHANGED ABSENT FORBID_STDOUT LIMIT_AS_KB LIMIT_FILE_BLOCKS NO_TEMPORARIES_IN)
    if(DEFINED T_${key})
      list(APPEND defines "-D${key}=${T_${key}}")
    endif()
  endforeach()
  add_test(NAME cli_safety_${name}
    COMMAND ${CMAKE_COMMAND} -DVMONARCH=${VMONARCH_CLI_EXE} "-DEXPECT=${regex}" ${defines}
            -P ${VMONARCH_CLI_SCRIPTS}/expect_error.cmake -- ${T_ARGS})
  set_tests_properties(cli_safety_${name} PROPERTIES LABELS cli WORKING_DIRECTORY ${VMONARCH_SAFETY_DIR}
    FIXTURES_REQUIRED cli_safety_inputs)
endfunction()

# vmonarch_safety_status_test(<name> <exit code> [EXPECT_STDERR regex] [EXPECT_STDOUT regex] [EXISTS f|g]
#   ARGS <cli args>): exit status and output of a command that does not fail outright.
function(vmonarch_safety_status_test name code)
  cmake_parse_arguments(T "" "EXPECT_STDERR;EXPECT_STDOUT;EXISTS" "ARGS" ${ARGN})
  set(defines)
  foreach(key EXPECT_STDERR EXPECT_STDOUT EXISTS)
    if(DEFINED T_${key})
      list(APPEND defines "-D${key}=${T_${key}}")
    endif()
  endforeach()
  add_test(NAME cli_safety_${name}
    COMMAND ${CMAKE_COMMAND} -DVMONARCH=${VMONARCH_CLI_EXE} -DEXIT_CODE=${code} ${defines}
            -P ${VMONARCH_CLI_SCRIPTS}/expect_status.cmake -- ${T_ARGS})
  set_tests_properties(cli_safety_${name} PROPERTIES LABELS cli WORKING_DIRECTORY ${VMONARCH_SAFETY_DIR}
    FIXTURES_REQUIRED cli_safety_inputs)
endfunction()

set(inputs --q q.npy --k k.npy --v v.npy --grid 3,4,4 --device cpu)
set(st_inputs --q qkv.safetensors:q --k qkv.safetensors:k --v qkv.safetensors:v --grid 3,4,4 --device cpu)

# --- inputs are never overwritten -----------------------------------------------------------------------
vmonarch_safety_error_test(out_is_input "--out q\\.npy: is the input --q q\\.npy" UNCHANGED q.npy
  ARGS run ${inputs} --out q.npy)
vmonarch_safety_error_test(lse_is_input "--lse k\\.npy: is the input --k k\\.npy" UNCHANGED k.npy ABSENT fresh.npy
  ARGS run ${inputs} --out fresh.npy --lse k.npy)
vmonarch_safety_error_test(out_symlink_to_input "--out q_sym\\.npy: is the input --q q\\.npy" UNCHANGED q.npy
  ARGS run ${inputs} --out q_sym.npy)
vmonarch_safety_error_test(out_hard_link_to_input "--out q_hard\\.npy: is the input --q q\\.npy"
  UNCHANGED q.npy|q_hard.npy ARGS run ${inputs} --out q_hard.npy)
vmonarch_safety_error_test(out_into_input_safetensors "--out qkv\\.safetensors: is the input --q qkv\\.safetensors"
  UNCHANGED qkv.safetensors ARGS run ${st_inputs} --out qkv.safetensors)
vmonarch_safety_error_test(out_tensor_into_input_safetensors
  "--out qkv\\.safetensors:out: is the input --q qkv\\.safetensors" UNCHANGED qkv.safetensors
  ARGS run ${st_inputs} --out qkv.safetensors:out)
vmonarch_safety_error_test(out_and_lse_same_file "--lse \\./same\\.npy: is the same file as --out same\\.npy"
  ABSENT same.npy ARGS run ${inputs} --out same.npy --lse ./same.npy)
vmonarch_safety_error_test(out_and_lse_same_tensor
  "--lse \\./same\\.safetensors:out: tensor 'out' is written twice into same\\.safetensors" ABSENT same.safetensors
  ARGS run ${inputs} --out same.safetensors --lse ./same.safetensors:out)
add_test(NAME cli_safety_keeps_other_tensors
  COMMAND ${CMAKE_COMMAND} -DVMONARCH=${VMONARCH_CLI_EXE} -DHELPER=${VMONARCH_CLI_HELPER}
          -DFILE=other.safetensors "-DNAMES=keep_k|keep_q|keep_v|out" "-DEXPECT_STDOUT=kept keep_k, keep_q, keep_v"
          -P ${VMONARCH_CLI_SCRIPTS}/check_safetensors_names.cmake -- run ${inputs} --out other.safetensors:out)
add_test(NAME cli_safety_keeps_other_tensors_out_and_lse
  COMMAND ${CMAKE_COMMAND} -DVMONARCH=${VMONARCH_CLI_EXE} -DHELPER=${VMONARCH_CLI_HELPER}
          -DFILE=other2.safetensors "-DNAMES=keep_k|keep_q|keep_v|lse|out"
          -P ${VMONARCH_CLI_SCRIPTS}/check_safetensors_names.cmake --
          run ${inputs} --out other2.safetensors --lse other2.safetensors:lse)
set_tests_properties(cli_safety_keeps_other_tensors cli_safety_keeps_other_tensors_out_and_lse PROPERTIES
  LABELS cli WORKING_DIRECTORY ${VMONARCH_SAFETY_DIR} FIXTURES_REQUIRED cli_safety_inputs)

# --- outputs are checked before anything is computed, and appear whole or not at all --------------------
vmonarch_safety_error_test(out_folder_missing "--out no_such_folder/o\\.npy: folder no_such_folder does not exist"
  ARGS run ${inputs} --out no_such_folder/o.npy)
vmonarch_safety_error_test(lse_folder_is_a_file "--lse q\\.npy/l\\.npy: q\\.npy is not a folder"
  ABSENT written_before_lse.npy ARGS run ${inputs} --out written_before_lse.npy --lse q.npy/l.npy)
vmonarch_safety_error_test(out_is_a_folder "--out fsize: is a folder" ARGS run ${inputs} --out fsize)
vmonarch_safety_error_test(out_dangling_link "--out dangling\\.npy: is a symbolic link to a missing file"
  ARGS run ${inputs} --out dangling.npy)
# Writes past `ulimit -f` fail (EFBIG): no truncated output, no temporary file, neither output written.
vmonarch_safety_error_test(failed_write_leaves_nothing "--out fsize/o\\.npy: .*(File too large|write failed)"
  LIMIT_FILE_BLOCKS 4 ABSENT fsize/o.npy|fsize/l.npy NO_TEMPORARIES_IN fsize
  ARGS run ${inputs} --out fsize/o.npy --lse fsize/l.npy)
vmonarch_safety_error_test(demo_png_folder_missing "--png no_such_folder/d\\.png: folder no_such_folder does not exist"
  FORBID_STDOUT "VMonarch output" ARGS demo --device cpu --grid 2,4,4 --heads 2 --head-dim 8 --png no_such_folder/d.png)
vmonarch_safety_error_test(demo_png_not_png "--png q\\.npy: expected a \\.png file" UNCHANGED q.npy
  FORBID_STDOUT "VMonarch output" ARGS demo --device cpu --grid 2,4,4 --heads 2 --head-dim 8 --png q.npy)
vmonarch_safety_error_test(make_inputs_folder_missing "--k no_such_folder/k\\.npy: folder no_such_folder does not exist"
  ABSENT mk_q.npy ARGS make-inputs --q mk_q.npy --k no_such_folder/k.npy --v mk_v.npy)

# --- non-finite values are reported -------------------------------------------------------------------------
add_test(NAME cli_safety_compare_nan_reference
  COMMAND ${CMAKE_COMMAND} -DVMONARCH=${VMONARCH_CLI_EXE} -DAPPROX=approx.npy -DREFERENCE=dense_nan.npy
          -DBAD_HEAD=0 -DGOOD_HEAD=1 -DAPPROX_COUNT=0 -DREFERENCE_COUNT=1
          -P ${VMONARCH_CLI_SCRIPTS}/check_compare_non_finite.cmake -- ${inputs})
add_test(NAME cli_safety_compare_nan_against_itself
  COMMAND ${CMAKE_COMMAND} -DVMONARCH=${VMONARCH_CLI_EXE} -DAPPROX=dense_nan.npy -DREFERENCE=dense_nan.npy
          -DBAD_HEAD=0 -DAPPROX_COUNT=1 -DREFERENCE_COUNT=1
          -P ${VMONARCH_CLI_SCRIPTS}/check_compare_non_finite.cmake -- ${inputs})
add_test(NAME cli_safety_compare_inf_approx
  COMMAND ${CMAKE_COMMAND} -DVMONARCH=${VMONARCH_CLI_EXE} -DAPPROX=approx_inf.npy -DREFERENCE=dense.npy
          -DBAD_HEAD=1 -DGOOD_HEAD=0 -DAPPROX_COUNT=1 -DREFERENCE_COUNT=0
          -P ${VMONARCH_CLI_SCRIPTS}/check_compare_non_finite.cmake -- ${inputs})
set_tests_properties(cli_safety_compare_nan_reference cli_safety_compare_nan_against_itself
  cli_safety_compare_inf_approx PROPERTIES LABELS cli WORKING_DIRECTORY ${VMONARCH_SAFETY_DIR}
  FIXTURES_REQUIRED cli_safety_inputs)
vmonarch_safety_status_test(run_nan_input_warns 5 EXPECT_STDERR "warning: --out nan_out\\.npy holds [0-9]+ non-finite"
  EXISTS nan_out.npy ARGS run --q q.npy --k k.npy --v v_nan.npy --grid 3,4,4 --device cpu --out nan_out.npy)
vmonarch_safety_status_test(backward_nan_input_warns 5 EXPECT_STDERR "warning: --dq nan_dq\\.npy holds [0-9]+ non-finite"
  EXISTS nan_dv.npy ARGS backward --q q.npy --k k.npy --v v_nan.npy --dout v.npy --grid 3,4,4 --device cpu
  --dq nan_dq.npy --dk nan_dk.npy --dv nan_dv.npy)
vmonarch_safety_error_test(cast_f16_overflow "--cast f16: .*--q q_big\\.npy.*outside the f16 range" EXIT_CODE 1
  ABSENT cast.npy ARGS run --q q_big.npy --k k.npy --v v.npy --grid 3,4,4 --device cpu --cast f16 --out cast.npy)
vmonarch_safety_error_test(out_dtype_f16_overflow "--out-dtype f16: .*outside the f16 range" EXIT_CODE 1
  ABSENT od.npy ARGS run --q q.npy --k k.npy --v v_big.npy --grid 3,4,4 --device cpu --out-dtype f16 --out od.npy)

# --- sizes and strict option values ---------------------------------------------------------------------------
# 5326291 * 6379396 * 3800260 = 7 * 2^64 + 48: wraps to the 48 tokens of q.npy in int64.
vmonarch_safety_error_test(grid_wrapping_to_file_tokens "--grid '5326291,6379396,3800260': T\\*H\\*W .*overflows"
  EXIT_CODE 1 ARGS run --q q.npy --k k.npy --v v.npy --grid 5326291,6379396,3800260 --device cpu --dense
  --out wrapped.npy)
vmonarch_safety_error_test(flops_grid_overflow "--latent-grid '5326291,6379396,3800260': T\\*H\\*W .*overflows"
  ARGS flops --model wan2.1-1.3b --latent-grid 5326291,6379396,3800260)
vmonarch_safety_error_test(flops_video_overflow "--frames 4000000000000000001 --height 1600000 --width 1600000: .*overflows"
  ARGS flops --model wan2.1-1.3b --frames 4000000000000000001 --height 1600000 --width 1600000)
vmonarch_safety_error_test(make_inputs_too_large "--heads 1000000000.*--grid 1000,1000,1000.*too large"
  ARGS make-inputs --q big_q.npy --k big_k.npy --v big_v.npy --grid 1000,1000,1000 --heads 1000000000)
vmonarch_safety_error_test(grid_with_space "--grid '1 6,4,4': unexpected character ' '"
  ARGS run --q q.npy --k k.npy --v v.npy --grid "1 6,4,4" --out space.npy)
vmonarch_safety_error_test(flops_dim_not_divisible "--dim 100 is not divisible by --heads 3"
  ARGS flops --model custom --dim 100 --heads 3 --ffn 64 --layers 1 --latent-grid 2,2,2)
vmonarch_safety_error_test(make_inputs_negative_seed "--seed '-1': expected an integer from 0 to 18446744073709551615"
  ARGS make-inputs --q s_q.npy --k s_k.npy --v s_v.npy --seed -1)
vmonarch_safety_error_test(demo_negative_seed "--seed '-5': expected an integer from 0"
  ARGS demo --device cpu --grid 2,4,4 --heads 2 --head-dim 8 --no-png --seed -5)
vmonarch_safety_error_test(symlink_loop "--q loop_a\\.npy: [Tt]oo many levels of symbolic links"
  ARGS run --q loop_a.npy --k k.npy --v v.npy --grid 3,4,4 --out loop_out.npy)
vmonarch_safety_error_test(make_inputs_odd_head_dim "--head-dim 1: .*even"
  ARGS make-inputs --q h_q.npy --k h_k.npy --v h_v.npy --head-dim 1)
vmonarch_safety_error_test(demo_odd_head_dim "--head-dim 1: .*even" FORBID_STDOUT "grid"
  ARGS demo --device cpu --grid 2,4,4 --heads 2 --head-dim 1 --no-png)
vmonarch_safety_error_test(write_empty_tensor_name "--out 'x\\.safetensors:': empty tensor name after ':'"
  ABSENT x.safetensors ARGS run ${inputs} --out x.safetensors:)
vmonarch_safety_error_test(read_empty_tensor_name "--q 'qkv\\.safetensors:': empty tensor name after ':'"
  ARGS run --q qkv.safetensors: --k k.npy --v v.npy --grid 3,4,4 --out e.npy)
vmonarch_cli_test(flops_wide_columns "total TFLOPs +[0-9.e+]+ +[0-9.e+]+ +\\("
  flops --model wan2.1-14b --latent-grid 1000000,100000,100000)

# --- headers before data, and out of memory (not under ASan: it needs the address space `ulimit -v` takes) --
if(NOT VMONARCH_SANITIZE)
  set(huge --grid 2,4096,4096 --device cpu)
  vmonarch_safety_error_test(headers_before_data "--k k\\.npy: shape \\[1, 2, 48, 16\\] differs from --q q_huge\\.npy"
    LIMIT_AS_KB 2000000 ARGS run --q q_huge.npy --k k.npy --v v.npy ${huge} --out h.npy)
  vmonarch_safety_error_test(reference_header_before_data "--reference k\\.npy: shape \\[1, 2, 48, 16\\]"
    LIMIT_AS_KB 2000000 ARGS compare --q q_huge.npy --k q_huge.npy --v q_huge.npy ${huge} --reference k.npy)
  vmonarch_safety_error_test(outputs_before_data "--out no_such_folder/h\\.npy: folder no_such_folder"
    LIMIT_AS_KB 2000000 ARGS run --q q_huge.npy --k q_huge.npy --v q_huge.npy ${huge} --out no_such_folder/h.npy)
  vmonarch_safety_error_test(out_of_memory "error: out of memory: .*q_huge\\.npy" EXIT_CODE 4 LIMIT_AS_KB 2000000
    ABSENT h.npy ARGS run --q q_huge.npy --k q_huge.npy --v q_huge.npy ${huge} --out h.npy)
endif()
