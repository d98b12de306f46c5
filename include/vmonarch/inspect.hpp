// Looking inside the approximation: explicit attention rows, for pictures and tests (CPU, fp64).
#pragma once

#include <cstdint>
#include <vector>

#include "vmonarch/vmonarch.hpp"

namespace vmonarch {

// Rows of the fitted Monarch attention matrix A[(i,j),(k,l)] = L[j][i][k]·R[k][j][l] (spec §2) for the
// given query tokens of one (batch, head): result[r·N + n]. With options.recompute_first_frame, frame-0
// rows are the exact dense rows, as attention() outputs them. q, k: CPU views of any dtype.
std::vector<double> monarch_attention_rows(const TensorView& q, const TensorView& k, const VideoGrid& grid,
                                           const Options& options, std::int64_t batch_index,
                                           std::int64_t head_index, const std::vector<std::int64_t>& query_tokens);

// Rows of the dense attention matrix softmax(q·kᵀ·scale), same indexing.
std::vector<double> dense_attention_rows(const TensorView& q, const TensorView& k, const Options& options,
                                         std::int64_t batch_index, std::int64_t head_index,
                                         const std::vector<std::int64_t>& query_tokens);

// The objective ⟨A, S⟩ + H(A) (spec §3) of the Monarch fit after each half-step, summed over all rows
// of one (batch, head), with the recompute and clamp as in options. Entry 2·s is after R-step s, entry
// 2·s+1 after L-step s. Block-coordinate ascent makes it non-decreasing when cr_clamp = 0. Small sizes
// only: O(N·(T+HW)·d) work per entry, O(N·(T+HW)) memory.
std::vector<double> monarch_objective_trace(const TensorView& q, const TensorView& k, const VideoGrid& grid,
                                            const Options& options, std::int64_t batch_index,
                                            std::int64_t head_index);

} // namespace vmonarch
