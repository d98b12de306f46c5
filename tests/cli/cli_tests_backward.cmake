# Tests of `vmonarch backward` (label "cli"). Included after cli_tests.cmake (its helpers and fixtures).
vmonarch_cli_test(help_backward "Usage: vmonarch backward.*--dout.*--entropy-grad" backward --help)

set(backward_inputs --q q.npy --k k.npy --v v.npy --dout v.npy --grid 3,4,4 --device cpu)
add_test(NAME cli_backward_npy_lean
  COMMAND ${VMONARCH_CLI_EXE} backward ${backward_inputs} --dq bw_dq.npy --dk bw_dk.npy --dv bw_dv.npy)
set_tests_properties(cli_backward_npy_lean PROPERTIES LABELS cli WORKING_DIRECTORY ${VMONARCH_CLI_DIR}
  FIXTURES_REQUIRED cli_inputs_npy FIXTURES_SETUP cli_backward_lean
  PASS_REGULAR_EXPRESSION "wrote bw_dq\\.npy, bw_dk\\.npy, bw_dv\\.npy \\[1, 2, 48, 16\\] f32: VMonarch backward t=2, frame-0 recompute, paper gradient.*lean"
  FAIL_REGULAR_EXPRESSION "error:")
add_test(NAME cli_backward_npy_saved_exact
  COMMAND ${VMONARCH_CLI_EXE} backward ${backward_inputs} --dq bw_dq_x.npy --dk bw_dk_x.npy --dv bw_dv_x.npy
          --saved --entropy-grad)
set_tests_properties(cli_backward_npy_saved_exact PROPERTIES LABELS cli WORKING_DIRECTORY ${VMONARCH_CLI_DIR}
  FIXTURES_REQUIRED cli_inputs_npy FIXTURES_SETUP cli_backward_saved
  PASS_REGULAR_EXPRESSION "exact gradient \\(entropy\\), saved state \\(26,624 bytes\\)" FAIL_REGULAR_EXPRESSION "error:")
# dv does not depend on the gradient variant (spec §7): the two files are equal; dq differs.
add_test(NAME cli_backward_dv_same_across_variants
  COMMAND ${VMONARCH_CLI_EXE} compare --q q.npy --k k.npy --v v.npy --grid 3,4,4 --reference bw_dv.npy
          --approx bw_dv_x.npy --json)
add_test(NAME cli_backward_dq_differs_across_variants
  COMMAND ${VMONARCH_CLI_EXE} compare --q q.npy --k k.npy --v v.npy --grid 3,4,4 --reference bw_dq.npy
          --approx bw_dq_x.npy --json)
set_tests_properties(cli_backward_dv_same_across_variants PROPERTIES PASS_REGULAR_EXPRESSION "\"max_abs\": 0\\.0,")
set_tests_properties(cli_backward_dq_differs_across_variants PROPERTIES PASS_REGULAR_EXPRESSION "\"max_abs\": (0\\.0*[1-9]|[1-9])")
set_tests_properties(cli_backward_dv_same_across_variants cli_backward_dq_differs_across_variants PROPERTIES
  LABELS cli WORKING_DIRECTORY ${VMONARCH_CLI_DIR} FAIL_REGULAR_EXPRESSION "error:"
  FIXTURES_REQUIRED "cli_inputs_npy;cli_backward_lean;cli_backward_saved")
vmonarch_cli_test(backward_safetensors_bf16 "wrote bw\\.safetensors:dq, bw\\.safetensors:dk, bw\\.safetensors:dv \\[1, 48, 3, 16\\] bf16.*t=1, no recompute.*in f32"
  backward --q qkv.safetensors:q --k qkv.safetensors:k --v qkv.safetensors:v --dout qkv.safetensors:v --grid 3,4,4
  --layout bshd --device cpu --cast f32 --iterations 1 --no-recompute --clamp 0.2
  --dq bw.safetensors:dq --dk bw.safetensors:dk --dv bw.safetensors:dv)
set_tests_properties(cli_backward_safetensors_bf16 PROPERTIES FIXTURES_REQUIRED cli_inputs_safetensors)

vmonarch_cli_error_test(backward_dout_shape "--dout q\\.npy: shape \\[1, 2, 48, 16\\], expected \\[1, 48, 3, 8\\]"
  backward --q qkv.safetensors:q --k qkv.safetensors:k --v qkv.safetensors:v --dout q.npy --grid 3,4,4 --layout bshd
  --dq x.safetensors:dq --dk x.safetensors:dk --dv x.safetensors:dv)
vmonarch_cli_error_test(backward_never_overwrites_inputs "--dk k\\.npy: is the input --k k\\.npy"
  backward ${backward_inputs} --dq x_dq.npy --dk k.npy --dv x_dv.npy)
vmonarch_cli_error_test(backward_missing_dout "--dout nothing\\.npy: no such file"
  backward --q q.npy --k k.npy --v v.npy --dout nothing.npy --grid 3,4,4 --dq x_dq.npy --dk x_dk.npy --dv x_dv.npy)
vmonarch_cli_error_test(backward_bad_iterations "--iterations 0: must be 1\\.\\.8"
  backward ${backward_inputs} --dq x_dq.npy --dk x_dk.npy --dv x_dv.npy --iterations 0)
# Builds without CUDA kernels (where ctest runs) refuse --device cuda with the reason; the GPU runs of
# `backward --device cuda`: tests/python/test_gpu_cli_backward.py.
vmonarch_cli_error_test(backward_cuda_without_kernels "--device cuda: (this vmonarch build has no CUDA kernels|no CUDA device is visible)"
  backward --q q.npy --k k.npy --v v.npy --dout v.npy --grid 3,4,4 --dq x_dq.npy --dk x_dk.npy --dv x_dv.npy
  --device cuda)
set_tests_properties(cli_error_backward_dout_shape PROPERTIES
  FIXTURES_REQUIRED "cli_inputs_npy;cli_inputs_safetensors")

# Exact key groups (spec §3b): the flags of `run` reach the backward; joint sequences run in lean mode only.
vmonarch_cli_test(backward_sink_window "VMonarch backward t=2, frame-0 recompute, sink frames 1, window radius 0, paper gradient"
  backward ${backward_inputs} --dq bs_dq.npy --dk bs_dk.npy --dv bs_dv.npy --sink-frames 1 --window-radius 0)
set_tests_properties(cli_backward_sink_window PROPERTIES FIXTURES_REQUIRED cli_inputs_npy)
vmonarch_cli_error_test(backward_joint_saved "--saved: a joint sequence \\(--text-tokens 16\\) runs in lean mode only"
  backward --q q.npy --k k.npy --v v.npy --dout v.npy --grid 2,4,4 --text-tokens 16 --saved
  --dq x_dq.npy --dk x_dk.npy --dv x_dv.npy)
vmonarch_cli_error_test(backward_bad_sink_frames "--sink-frames -1: must be >= 0"
  backward ${backward_inputs} --dq x_dq.npy --dk x_dk.npy --dv x_dv.npy --sink-frames -1)
