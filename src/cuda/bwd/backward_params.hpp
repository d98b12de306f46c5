// Internal: plain-C++ description of the backward kernels' operands (spec §7) and their host launchers.
// Views are the forward's RowView (cuda/common/kernel_params.hpp): rows indexed (b, h, segment, row).
// Gradient accumulators are f32 and are added into (+=): the caller zeroes them first.
#pragma once

#include <cstdint>

#include "cuda/common/kernel_params.hpp"

namespace vmonarch::cuda {

// FlashAttention-2-style backward of one flash forward (the R-step of an iteration, or the dense frame-0
// recompute), spec §7.5, for every (segment, head, batch): queries q (aR, or Q), keys k, row scale
// γ = scale / max(rs, clamp) when rs is set, else γ = qk_scale; X = γ·⟨q, k_l⟩, P = exp(X − lse).
//   dP  = scale·⟨da, k_l⟩ [da set] + ⟨dy, v_l⟩ [dy set] + dent·(X − lse) [dent set]
//   dX  = P∘(dP − drow)                  (drow: the row constant D_R, or D = ⟨dO, O⟩ − dlse for dense)
//   dk_l += scale·Σ_rows P·da + Σ_rows γ·dX·q;   dv_l += Σ_rows P·dy;   dq += γ·Σ_l dX·k_l
// Rows at or past len_q and keys at or past len_k contribute nothing (masked after dX is formed).
struct FlashBwdParams {
    Elem elem = Elem::bf16;
    int head_dim = 128;
    RowView q, k, v;        // forward operands, input dtype (v only with dy)
    RowView lse;            // f32 logsumexp_l X of every query row
    RowView rs;             // f32 cR per query row, or null
    RowView da;             // input dtype: gradient of the K-value output (daL), or null
    RowView dy;             // input dtype: gradient of the V-value output (dY, or dO for dense), or null
    RowView dent;           // f32: gradient of the entropy output (dcL), or null (paper's gradient)
    RowView drow;           // f32: row constant
    RowView dq, dk, dv;     // f32 accumulators (+=); dv only with dy
    std::int64_t len_q = 0, len_k = 0;
    int segments = 1, heads = 1, batch = 1;
    float scale = 1.f, qk_scale = 1.f, clamp = 0.f;
    bool deterministic = false;   // bitwise repeatable accumulation order
    bool dkdv_overwrite = false;  // dk, dv stored (=), not added into: the launch is their first writer
};
void launch_flash_bwd(const FlashBwdParams& p, void* stream, const char* what);

// L-step backward for every position j of a T-frame grid (spec §7.3–7.4, 7.6); all views (b, h, frame, position).
// Recomputes z[i][k] = ⟨q(i,j), a(k,j)⟩ − c(k,j), L = softmax_k z, then
//   last  (dout set):  dL = ⟨dout_i, y_k⟩,  dy_k = Σ_i L·dout_i (written, input dtype),  dZ = L∘(dL − drow_i)
//   earlier (dar set): dcR_k = −⟨ar_k, dar_k⟩ / cr_k if cr_k > clamp else 0   (ar, cr: the next iteration's
//                      aR, cR); dL = ⟨q_i, dar_k⟩ + dcR_k; G_i = Σ_k L·dar_k; dq_i += G_i;
//                      D_L = ⟨q_i, G_i⟩ + Σ_k L·dcR_k; dZ = L∘(dL − D_L)
//   both: dq_i += Σ_k dZ·a_k;  da_k = Σ_i dZ·q_i (written, input dtype);  dc_k = −Σ_i dZ (written f32, only when
//         dc is set: the exact gradient);  drow_r_k = ⟨da_k, a_k⟩ + dc_k·c_k + [last]·⟨dy_k, y_k⟩ (written f32:
//         the R-step backward's row constant, with dc_k = 0 when dc is null).
// drow (last): D per query row, f32. dq: f32 accumulator (+=).
struct LStepBwdParams {
    Elem elem = Elem::bf16;
    int head_dim = 128;
    RowView q, a, c;          // Q, aL, cL (f32) of this iteration
    RowView y, dout, drow;    // last: Y, dO, D
    RowView dy;               // last: output
    RowView ar, cr, dar;      // earlier: next iteration's aR (input dtype), cR (f32), daR (f32)
    float clamp = 0.1f;
    RowView dq;               // f32 accumulator
    RowView da, dc, drow_r;   // outputs (dc optional)
    std::int64_t frames = 1, positions = 1;
    int heads = 1, batch = 1;
    // Exact key groups (spec §3b), as in the forward's LStepParams: key frame k is out of query frame i's fit
    // when k < sink_frames or |i − k| <= window_radius (< 0: no window): z = −inf, L = 0; the a, c, y, ar, cr
    // rows of a key frame no query frame fits are not read (zeros instead). A row without fitted frames has L = 0.
    std::int64_t sink_frames = 0, window_radius = -1;
    // last, merged_lse set (the forward merged the row with its exact group): L[i][k] = exp(z[i][k] − lse_i)
    // with the row's merged lse (f32, indexed like drow) instead of softmax_k z. This is w_M·softmax_k z, so
    // dZ = L∘(dL − D) is the gradient through the merge as well (spec §7, exact_backward_cpu.hpp).
    RowView merged_lse;
    // last: frame 0's dO and D rows read as 0, not loaded (the frame-0 recompute owns those rows, spec §7.2),
    // so they give dZ = 0 and no dY; the same as passing copies with those rows zeroed.
    bool zero_frame0 = false;
    // last: dq is written (=) instead of added into: the caller's accumulator has no earlier contribution
    // (no zero fill needed). Every (row, value) of dq is written once, frame 0's with 0 under zero_frame0.
    bool dq_overwrite = false;
};
void launch_lstep_bwd(const LStepBwdParams& p, void* stream, const char* what);

} // namespace vmonarch::cuda
