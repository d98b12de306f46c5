// Error of an approximate attention output against a reference, per (batch, head) and over everything.
// Non-finite values are never hidden: where either output holds a NaN or inf, the metrics are NaN and the
// counts say how many elements were non-finite.
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
    std::int64_t approx_non_finite = 0, reference_non_finite = 0; // NaN/inf elements; metrics are NaN if > 0

    bool finite() const { return approx_non_finite == 0 && reference_non_finite == 0; }
};

struct OutputComparison {
    std::vector<OutputError> heads; // batch-major, then head
    OutputError overall;
};

// approx and reference: [B, heads, N, dv] tensors in `layout` (any dtype, compared in double).
OutputComparison compare_outputs(const HostTensor& approx, const HostTensor& reference, Layout layout,
                                 const AttentionShape& shape);

} // namespace vmonarch::cli
