# ctest fixture: a private folder of inputs for the safety tests (inputs never overwritten, outputs whole or
# not at all, non-finite values reported, sizes checked, headers checked before data).
# Usage: cmake -DVMONARCH=<exe> -DHELPER=<make_test_files exe> -DDIR=<folder> -P setup_safety_inputs.cmake
file(REMOVE_RECURSE "${DIR}")
file(MAKE_DIRECTORY "${DIR}" "${DIR}/fsize")

function(step)
  execute_process(COMMAND ${ARGN} WORKING_DIRECTORY "${DIR}" RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN} failed (${rc}): ${out} ${err}")
  endif()
endfunction()

set(shape --grid 3,4,4 --heads 2 --head-dim 16 --seed 11)
step(${VMONARCH} make-inputs --q q.npy --k k.npy --v v.npy ${shape})
step(${VMONARCH} make-inputs --q qkv.safetensors --k qkv.safetensors --v qkv.safetensors ${shape})
# Existing output files that hold tensors of their own.
foreach(other other other2)
  step(${VMONARCH} make-inputs --q ${other}.safetensors:keep_q --k ${other}.safetensors:keep_k
       --v ${other}.safetensors:keep_v ${shape})
endforeach()
set(inputs --q q.npy --k k.npy --v v.npy --grid 3,4,4 --device cpu)
step(${VMONARCH} run ${inputs} --dense --out dense.npy)
step(${VMONARCH} run ${inputs} --out approx.npy)

# Non-finite and out-of-range values: element 5 lies in head 0 ([1, 2, 48, 16]: 768 per head).
step(${HELPER} poke dense.npy dense_nan.npy 5 nan)
step(${HELPER} poke approx.npy approx_inf.npy 800 inf)
step(${HELPER} poke v.npy v_nan.npy 3 nan)
step(${HELPER} scale q.npy q_big.npy 1e6)
step(${HELPER} scale v.npy v_big.npy 1e6)
# 4 GiB of f32 data in a hole: [1, 2, 2*4096*4096, 16], grid 2,4096,4096.
step(${HELPER} sparse-npy q_huge.npy 1 2 33554432 16)

# Links to an input, a symlink loop and a dangling link.
file(CREATE_LINK q.npy "${DIR}/q_sym.npy" SYMBOLIC)
file(CREATE_LINK "${DIR}/q.npy" "${DIR}/q_hard.npy")
file(CREATE_LINK loop_b.npy "${DIR}/loop_a.npy" SYMBOLIC)
file(CREATE_LINK loop_a.npy "${DIR}/loop_b.npy" SYMBOLIC)
file(CREATE_LINK nowhere.npy "${DIR}/dangling.npy" SYMBOLIC)
