// Error of an approximate attention output against a reference, per (batch, head) and over everything.
#pragma once

#include <cstdint>
#include <vector>

#include "attention_inputs.hpp"

namespace vmonarch::cli {

struct OutputError {
    std::int64_t batch = 0, head = 0; // -1 for the aggregate over all heads
    double rel_l2 = 0;                // ||approx − ref|| / ||ref||
    double cosine = 0;                // <approx, ref> / (||approx||·||ref||)
    double max_abs = 0;               // max |approx − ref|
};

struct OutputComparison {
    std::vector<OutputError> heads; // batch-major, then head
    OutputError overall;
};

// approx and reference: [B, heads, N, dv] tensors in `layout` (any dtype, compared in double).
OutputComparison compare_outputs(const HostTensor& approx, const HostTensor& reference, Layout layout,
                                 const AttentionShape& shape);

} // namespace vmonarch::cli
