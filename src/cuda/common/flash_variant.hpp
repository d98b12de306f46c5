// Internal: the flash forward's named variants (docs/algorithm.md §5) and the one dispatch from run-time
// (element type, head dim, variant) to the compile-time instances both peers (sm80, sm90) are built from.
// Plain C++: included by the host launchers and by the instance files.
#pragma once

#include <string>

#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

// Which FlashParams outputs exist selects the variant (kernel_params.hpp):
enum class FlashVariant {
    rstep_first,  // K as a value: aL, cL                   (R-step 1 of t > 1)
    rstep_middle, // per-row logit scale; aL, cL            (R-steps 2 … t − 1)
    rstep_last,   // per-row logit scale; K and V: aL, cL, y (R-step t of t > 1)
    rstep_only,   // K and V: aL, cL, y                     (the one R-step of t = 1)
    dense,        // V: O (+ lse)                           (dense attention, first-frame recompute)
};

struct FlashVariantFlags {
    bool row_scale, k_value, v_value;
};
constexpr FlashVariantFlags flags_of(FlashVariant v) {
    switch (v) {
    case FlashVariant::rstep_first: return {false, true, false};
    case FlashVariant::rstep_middle: return {true, true, false};
    case FlashVariant::rstep_last: return {true, true, true};
    case FlashVariant::rstep_only: return {false, true, true};
    case FlashVariant::dense: break;
    }
    return {false, false, true};
}

// The variant p's outputs ask for; false when no kernel has that combination.
inline bool flash_variant_of(const FlashParams& p, FlashVariant* v) {
    const bool rs = p.rs.ptr != nullptr, kv = p.a.ptr != nullptr, vv = p.o.ptr != nullptr;
    if (kv && !rs && !vv) *v = FlashVariant::rstep_first;
    else if (kv && rs && !vv) *v = FlashVariant::rstep_middle;
    else if (kv && rs && vv) *v = FlashVariant::rstep_last;
    else if (kv && !rs && vv) *v = FlashVariant::rstep_only;
    else if (!kv && !rs && vv) *v = FlashVariant::dense;
    else return false;
    return true;
}

// "what [kernel<bf16, d=128, row-scale, K-value+entropy, V-value, lse> batch=… heads=… segments=… len_q=…
// len_k=…]": the context every flash error message carries (flash_router.cu).
std::string describe_flash(const FlashParams& p, const char* kernel, const char* what);

// f.template operator()<BF16, D>() for p's element type and head dim (64 or 128; the caller checks).
template <typename F> decltype(auto) with_elem_and_head_dim(const FlashParams& p, F&& f) {
    const bool bf = p.elem == Elem::bf16;
    if (p.head_dim == 64) return bf ? f.template operator()<true, 64>() : f.template operator()<false, 64>();
    return bf ? f.template operator()<true, 128>() : f.template operator()<false, 128>();
}

// f.template operator()<V>() for the variant v.
template <typename F> decltype(auto) with_variant(FlashVariant v, F&& f) {
    switch (v) {
    case FlashVariant::rstep_first: return f.template operator()<FlashVariant::rstep_first>();
    case FlashVariant::rstep_middle: return f.template operator()<FlashVariant::rstep_middle>();
    case FlashVariant::rstep_last: return f.template operator()<FlashVariant::rstep_last>();
    case FlashVariant::rstep_only: return f.template operator()<FlashVariant::rstep_only>();
    case FlashVariant::dense: break;
    }
    return f.template operator()<FlashVariant::dense>();
}

} // namespace vmonarch::cuda
