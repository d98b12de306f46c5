// Exact text queries of a joint sequence on the GPU (spec §3c): softmax attention of each text query over
// every video key and the valid text keys of its batch element, as a dense flash launch over the video keys
// (which writes the user's out and an LSE) and, per batch element with lens[b] > 0, a dense launch over its
// text keys into a workspace partial merged in by log-sum-exp (spec §3b's merge). Query rows go in chunks of
// min(L, N) rows: per (batch, head) and chunk row, a dv-vector partial output, its LSE and, when the caller
// asks for no lse, the accumulator's LSE. When the keys of every batch element are one contiguous range of
// the key sequence (see text_queries_direct), one launch per run of equal batch elements replaces all that.
#include <algorithm>
#include <string>

#include "cuda/monarch_plan.hpp"

namespace vmonarch::cuda {

namespace {

constexpr std::size_t kAlign = 256;
std::size_t align_up(std::size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

RowView shift_rows(RowView v, std::int64_t n, std::size_t elem_bytes) {
    if (v.ptr != nullptr) v.ptr = static_cast<char*>(v.ptr) + n * v.sr * std::int64_t(elem_bytes);
    return v;
}

struct ChunkLayout {
    std::size_t part_o = 0, part_lse = 0, acc_lse = 0, total = 0;
};

ChunkLayout chunk_layout(const detail::TextQueryProblem& p, std::int64_t rows) {
    const std::size_t n = std::size_t(p.batch) * std::size_t(p.heads) * std::size_t(rows);
    ChunkLayout c;
    c.part_o = 0;
    c.part_lse = align_up(n * std::size_t(p.value_dim) * 2);
    c.acc_lse = c.part_lse + align_up(n * 4);
    c.total = c.acc_lse + align_up(n * 4);
    return c;
}

FlashParams dense(const detail::TextQueryProblem& p, Elem elem, const RowView& q, std::int64_t len_q, int batch,
                  const RowView& k, const RowView& v, std::int64_t len_k, const RowView& o, const RowView& lse) {
    FlashParams f;
    f.elem = elem;
    f.head_dim = int(p.head_dim);
    f.q = q, f.k = k, f.v = v, f.o = o, f.lse = lse;
    f.len_q = len_q;
    f.len_k = len_k;
    f.segments = 1;
    f.heads = int(p.heads);
    f.batch = batch;
    f.scale = f.qk_scale = float(p.scale);
    return f;
}

// The keys of batch element b's text queries as one contiguous range: rows [0, *len) of the video keys
// (no valid text) or of the joint key sequence starting at *k / *v; false when they are not one range.
bool direct_keys(const detail::TextQueryProblem& p, KeyJoin join, std::int64_t b, RowView* k, RowView* v,
                 std::int64_t* len) {
    const std::int64_t N = p.kv_tokens, L = p.extra.present ? p.extra.tokens : 0;
    const std::int64_t valid = p.extra.present ? p.extra.lens[std::size_t(b)] : 0;
    if (valid == 0) {
        *k = user_rows(p.k, N), *v = user_rows(p.v, N), *len = N;
    } else if (join == KeyJoin::video_then_text) { // video keys, then the valid text prefix
        *k = user_rows(p.k, N), *v = user_rows(p.v, N), *len = N + valid;
    } else if (join == KeyJoin::text_then_video && valid == L) { // all text keys, then the video keys
        *k = user_rows(p.extra.k, L), *v = user_rows(p.extra.v, L), *len = L + N;
    } else {
        return false;
    }
    return true;
}

KeyJoin join_of(const detail::TextQueryProblem& p) {
    return p.extra.present ? key_join(p.k, p.v, p.extra.k, p.extra.v) : KeyJoin::apart;
}

} // namespace

bool text_queries_direct(const detail::TextQueryProblem& p) {
    if (exact_schedule_serial()) return false;
    const KeyJoin join = join_of(p);
    RowView k, v;
    std::int64_t len = 0;
    for (std::int64_t b = 0; b < p.batch; ++b)
        if (!direct_keys(p, join, b, &k, &v, &len)) return false;
    return true;
}

void launch_text_queries_direct(const detail::TextQueryProblem& p, void* stream) {
    const std::int64_t L = p.q_tokens, B = p.batch;
    if (L <= 0 || B <= 0 || p.heads <= 0) return;
    const Elem elem = elem_of(p.q.dtype);
    const KeyJoin join = join_of(p);
    const RowView q = user_rows(p.q, L), out = user_rows(p.out, L), lse = user_lse(p.lse, L);
    for (std::int64_t b0 = 0, b1 = 0; b0 < B; b0 = b1) {
        RowView k, v, k1, v1;
        std::int64_t len = 0, len1 = 0;
        if (!direct_keys(p, join, b0, &k, &v, &len))
            throw CudaError("vmonarch::joint_attention text queries: batch element " + std::to_string(b0) +
                            "'s keys are not one range (text_queries_direct was not asked)");
        for (b1 = b0 + 1; b1 < B && direct_keys(p, join, b1, &k1, &v1, &len1) && k1.ptr == k.ptr && len1 == len;) ++b1;
        launch_flash(dense(p, elem, shift_batch(q, b0, 2), L, int(b1 - b0), shift_batch(k, b0, 2), shift_batch(v, b0, 2), len,
                           shift_batch(out, b0, 2), shift_batch(lse, b0, 4)),
                     stream, "vmonarch::joint_attention text queries over their key range");
    }
}

std::size_t text_query_workspace_bytes(const detail::TextQueryProblem& p, std::int64_t rows) {
    return chunk_layout(p, rows).total;
}

void run_text_queries(const detail::TextQueryProblem& p, void* ws, std::size_t ws_bytes, void* stream) {
    const std::int64_t L = p.q_tokens, N = p.kv_tokens, B = p.batch;
    if (L <= 0 || B <= 0 || p.heads <= 0) return;
    // Chunks of min(L, N) query rows: the video part's workspace always holds them (its y, cL and LSE_E regions
    // alone are that size), and the same chunks with the library's workspace or the caller's give the same bits
    // (on the GPU, chunkings of 254 + 2 and of 256 rows gave different low bits). A smaller workspace than that
    // takes the largest chunk that fits.
    std::int64_t chunk = std::min(L, N);
    if (chunk_layout(p, chunk).total > ws_bytes) {
        const std::size_t per_row = std::size_t(B) * std::size_t(p.heads) * (std::size_t(p.value_dim) * 2 + 8);
        chunk = std::min<std::int64_t>(chunk, std::int64_t(ws_bytes / per_row)); // bytes(c) >= c·per_row
        while (chunk > 0 && chunk_layout(p, chunk).total > ws_bytes) --chunk;
    }
    if (chunk < 1)
        throw CudaError("vmonarch::joint_attention (text queries): CudaContext::workspace has " + std::to_string(ws_bytes) +
                        " bytes, needs at least " + std::to_string(chunk_layout(p, 1).total) +
                        " (vmonarch::workspace_bytes of the video part covers it)");
    const Elem elem = elem_of(p.q.dtype);
    const std::int64_t H = p.heads, dv = p.value_dim;
    const ChunkLayout c = chunk_layout(p, chunk);
    char* base = static_cast<char*>(ws);
    // Workspace views [b][h][row] of `chunk` rows each (one segment).
    const RowView part_o{base + c.part_o, H * chunk * dv, chunk * dv, 0, dv};
    const RowView part_lse{base + c.part_lse, H * chunk, chunk, 0, 1};
    const RowView ws_lse{base + c.acc_lse, H * chunk, chunk, 0, 1};
    const RowView q = user_rows(p.q, L), out = user_rows(p.out, L), lse = user_lse(p.lse, L);
    const RowView video_k = user_rows(p.k, N), video_v = user_rows(p.v, N);
    const RowView text_k = user_rows(p.extra.k, p.extra.tokens), text_v = user_rows(p.extra.v, p.extra.tokens);

    for (std::int64_t r0 = 0; r0 < L; r0 += chunk) {
        const std::int64_t n = std::min(chunk, L - r0);
        const RowView q_c = shift_rows(q, r0, 2), out_c = shift_rows(out, r0, 2);
        const RowView acc_lse = lse.ptr ? shift_rows(lse, r0, 4) : ws_lse;
        launch_flash(dense(p, elem, q_c, n, int(B), video_k, video_v, N, out_c, acc_lse), stream,
                     "vmonarch::joint_attention text queries over the video keys");
        for (std::int64_t b = 0; b < B; ++b) {
            const std::int64_t valid = p.extra.present ? p.extra.lens[std::size_t(b)] : 0;
            if (valid == 0) continue;
            launch_flash(dense(p, elem, shift_batch(q_c, b, 2), n, 1, shift_batch(text_k, b, 2),
                               shift_batch(text_v, b, 2), valid, shift_batch(part_o, b, 2), shift_batch(part_lse, b, 4)),
                         stream, "vmonarch::joint_attention text queries over the text keys");
            LseMergeParams m;
            m.elem = elem;
            m.value_dim = int(dv);
            m.acc_o = shift_batch(out_c, b, 2);
            m.acc_lse = shift_batch(acc_lse, b, 4);
            m.part_o = shift_batch(part_o, b, 2);
            m.part_lse = shift_batch(part_lse, b, 4);
            m.segments = 1;
            m.rows = n;
            m.heads = int(H);
            m.batch = 1;
            launch_lse_merge(m, false, stream, "vmonarch::joint_attention text queries: merge");
        }
    }
}

} // namespace vmonarch::cuda
