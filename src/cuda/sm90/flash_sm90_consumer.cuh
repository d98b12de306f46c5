// Internal: an sm90 consumer warpgroup's schedules over the key tiles (the per-tile pieces are in
// flash_sm90_tile.cuh) and its epilogue. MODE: 0 = one tile at a time; 1 = intra-warpgroup pipelining
// (S of tile n + 1 overlaps the softmax … P·V of tile n); 2 = 1 plus ping-pong of the two consumer
// warpgroups' GEMM issue (named barriers).
#pragma once

#include <cstdint>

#include "cuda/common/flash_epilogue.cuh"
#include "cuda/sm90/flash_sm90_tile.cuh"

namespace vmonarch::cuda::hopper {

#ifdef VMONARCH_HOPPER_DEVICE
template <bool BF16, int D, bool ROW_SCALE, bool K_VALUE, bool V_VALUE, int BN, int MODE>
struct Sm90Consumer : Sm90Tile<BF16, D, ROW_SCALE, K_VALUE, V_VALUE, BN> {
    using Tile = Sm90Tile<BF16, D, ROW_SCALE, K_VALUE, V_VALUE, BN>;
    using Tile::Tile;
    using Tile::acc_k, Tile::acc_v, Tile::compute_s, Tile::fence_acc, Tile::fence_p, Tile::fence_s, Tile::issue_pv, Tile::issue_s,
        Tile::issue_s_at, Tile::lane, Tile::len_q, Tile::multipliers, Tile::p, Tile::pack_p, Tile::q0, Tile::rescale,
        Tile::reset_query_tile, Tile::ring, Tile::ring0, Tile::row, Tile::sm, Tile::softmax, Tile::softmax_stale, Tile::sQwg, Tile::st,
        Tile::start_query_tile, Tile::wg, Tile::wg_rows;
    static constexpr int NS = Tile::NS, KS = Tile::KS;

    // This warp no longer reads key tile n's stage (ring position g = ring(n)).
    __device__ __forceinline__ void release(int n) {
        __syncwarp();
        if (lane == 0) mbar_arrive(sm.empty_bar(ring(n) % Tile::Ring::STAGES));
    }
    // Key tile n has landed in its stage (the stage's (g / STAGES)-th fill, g = ring(n)); wait_full_at: the key
    // tile at ring position g.
    __device__ __forceinline__ void wait_full(int n) { wait_full_at(ring(n)); }
    __device__ __forceinline__ void wait_full_at(int g) {
        mbar_wait(sm.full_bar(g % Tile::Ring::STAGES), std::uint32_t(g / Tile::Ring::STAGES) & 1u);
    }
    // Ping-pong (MODE 2): the two consumer warpgroups take turns to issue their GEMMs, so that one's
    // softmax runs while the other's GEMMs occupy the tensor cores. Named barrier 1 + w: "warpgroup w may
    // issue"; 256 threads = the waiting warpgroup (bar.sync) + the other one (bar.arrive).
    __device__ __forceinline__ void turn_wait() {
        if constexpr (MODE == 2) named_bar_sync(1 + wg, 256);
    }
    __device__ __forceinline__ void turn_pass() {
        if constexpr (MODE == 2) named_bar_arrive(2 - wg, 256);
    }
    // Softmax of tile n whose S has landed in sacc: the stale-offset update where it may (a full tile after
    // the first, when allowed) and holds, else the exact one (after S is computed again if the stale attempt
    // consumed it). al = 1 on the stale path (m did not move).
    __device__ __forceinline__ void softmax_tile(float (&sacc)[NS], int n, float (&al)[2], bool stale_max) {
        if (stale_max && n > 0 && std::int64_t(n + 1) * BN <= p.len_k) {
            if (softmax_stale(sacc)) {
                al[0] = al[1] = 1.f;
                return;
            }
            compute_s(sacc, n);
        }
        softmax(sacc, n, al);
    }

    // A warpgroup whose 64 rows all lie past len_q (warpgroup 1 in the last block of a view whose length is
    // not a multiple of BM, e.g. 64 of 128 rows at HW = 3520) computes nothing: it only keeps the ring's
    // empty barriers and, under ping-pong, the turn order (n_tiles + 1 turns; the last one passes nothing,
    // as in the working path), so that warpgroup 0 runs alone on the tensor cores.
    __device__ __forceinline__ void idle(int n_tiles) {
        if constexpr (MODE == 2) named_bar_arrive(1, 256); // only warpgroup 1 can be idle: warpgroup 0 goes first
        for (int n = 0; n <= n_tiles; ++n) {
            turn_wait();
            if (n < n_tiles) {
                turn_pass();
                wait_full(n);
                release(n);
            }
        }
    }

    // MODE 0: S, wait, softmax, P·V, wait, per tile.
    __device__ __forceinline__ void run_serial(int n_tiles, bool stale_max) {
        for (int n = 0; n < n_tiles; ++n) {
            wait_full(n);
            float sacc[NS];
            compute_s(sacc, n);
            float al[2];
            softmax_tile(sacc, n, al, stale_max);
            rescale(al);
            std::uint32_t pa[KS][4];
            pack_p(sacc, pa);
            fence_acc();
            wgmma_fence();
            issue_pv(pa, n);
            wgmma_commit();
            wgmma_wait<0>();
            fence_acc();
            fence_p(pa);
            release(n);
        }
    }

    // MODE 1 and 2, software-pipelined (FlashAttention-3's intra-warpgroup overlap): S of tile n is issued
    // together with P·V of tile n − 1; the softmax of tile n runs while P·V of tile n − 1 is still on the
    // tensor cores, and the accumulators are rescaled only once that has finished. In three pieces, so that
    // consecutive query tiles of a block can be joined (run_query_tiles): the start (S and softmax of key
    // tile 0), the steady loop (tiles 1 … n_tiles − 1), and the finish (the last P·V).
    __device__ __forceinline__ void pipeline_start(float (&sacc)[NS], std::uint32_t (&pa)[KS][4]) {
        if constexpr (MODE == 2) {
            if (wg == 1) named_bar_arrive(1, 256); // warpgroup 0 goes first
        }
        float al[2];
        wait_full(0);
        turn_wait();
        wgmma_fence();
        issue_s(sacc, 0);
        wgmma_commit();
        turn_pass();
        wgmma_wait<0>();
        fence_s(sacc);
        softmax(sacc, 0, al); // al is 1 or 0 here and the accumulators are zero: no rescale needed
        pack_p(sacc, pa);
    }
    __device__ __forceinline__ void pipeline_loop(float (&sacc)[NS], std::uint32_t (&pa)[KS][4], int n_tiles, bool stale_max) {
        float al[2];
        for (int n = 1; n < n_tiles; ++n) {
            wait_full(n);
            turn_wait();
            fence_acc();
            wgmma_fence();
            issue_s(sacc, n);
            wgmma_commit();
            issue_pv(pa, n - 1);
            wgmma_commit();
            turn_pass();
            wgmma_wait<1>(); // S of tile n is ready; P·V of tile n − 1 may still run
            fence_s(sacc);
            softmax_tile(sacc, n, al, stale_max);
            wgmma_wait<0>();
            fence_acc();
            fence_p(pa);
            release(n - 1);
            rescale(al);
            pack_p(sacc, pa);
        }
    }
    __device__ __forceinline__ void pipeline_finish(std::uint32_t (&pa)[KS][4], int n_tiles) {
        turn_wait();
        fence_acc();
        wgmma_fence();
        issue_pv(pa, n_tiles - 1);
        wgmma_commit();
        if (wg == 0) turn_pass(); // warpgroup 1's last arrival would have no matching wait
        wgmma_wait<0>();
        fence_acc();
        fence_p(pa);
        release(n_tiles - 1);
    }
    __device__ __forceinline__ void run_pipelined(int n_tiles, bool stale_max) {
        float sacc[NS];
        std::uint32_t pa[KS][4];
        pipeline_start(sacc, pa);
        pipeline_loop(sacc, pa, n_tiles, stale_max);
        pipeline_finish(pa, n_tiles);
    }

    // This warp no longer reads Q slot `slot` (every wgmma of the schedule has completed): the producer
    // may load the block's next query tile but one into it.
    __device__ __forceinline__ void release_q(int slot) {
        __syncwarp();
        if (lane == 0) mbar_arrive(sm.q_empty_bar(slot));
    }
    __device__ __forceinline__ void store(int b, int h, int f) {
        store_flash_rows<BF16, D, K_VALUE, V_VALUE>(p, b, h, f, std::int64_t(q0), row, len_q, lane, st, acc_v(), acc_k());
    }
    // The whole consumer for one query tile: wait for its Q (the fill of Q slot `slot` with parity
    // `phase`), run the schedule over the key tiles, release the Q slot, store this thread's two rows
    // (docs/algorithm.md §4.3). A later query tile of the block finds the key tiles still in the ring: their
    // full barriers have completed phase 0, and waiting on it again returns at once.
    // ring_base: the ring position of key tile 0 for this query tile (0 when the key tiles stay in the ring).
    __device__ __forceinline__ void run(int n_tiles, bool stale_max, int b, int h, int f, int slot, std::uint32_t phase,
                                        int ring_base = 0) {
        ring0 = ring_base;
        mbar_wait(sm.q_full_bar(slot), phase);
        if (wg * 64 >= len_q) {
            idle(n_tiles);
            return release_q(slot);
        }
        if constexpr (MODE == 0) run_serial(n_tiles, stale_max);
        else run_pipelined(n_tiles, stale_max);
        release_q(slot);
        store(b, h, f);
    }

    // The block's q_count consecutive query tiles under the pipelined schedules (MODE 1 and 2; the first tile
    // is the one this consumer was constructed for; tile j in Q slot j % 2, its key tile 0 at ring position
    // j · n_tiles when ring_per_tile, else 0). A tile boundary is joined where both warpgroups have rows in the
    // next tile: the last P·V of tile j is issued together with S of tile j + 1's key tile 0 (one GEMM turn),
    // and tile j's epilogue (statistics, stores) and tile j + 1's row multipliers run while that S is on the
    // tensor cores, so the boundary costs no pipeline drain and refill. Elsewhere (the view's last tile when a
    // warpgroup is idle in it) one tile after another, as run().
    __device__ __forceinline__ void run_query_tiles(int q_count, int n_tiles, bool stale_max, int b, int h, int f, bool ring_per_tile) {
        static_assert(MODE != 0, "MODE 0 runs its tiles one after another (flash_sm90_kernel.cuh)");
        float sacc[NS];
        std::uint32_t pa[KS][4];
        bool joined = false; // this tile's S and softmax of key tile 0 were done at the previous boundary
        for (int j = 0; j < q_count; ++j) {
            const int slot = j & 1;
            if (!joined) {
                if (j > 0) start_query_tile(q0 + HopperShape::BM, sm.q_slot(slot), b, h, f);
                ring0 = ring_per_tile ? j * n_tiles : 0;
                mbar_wait(sm.q_full_bar(slot), std::uint32_t(j >> 1) & 1u);
                if (wg * 64 >= len_q) { // only a view's last tile: the next boundary is not joined
                    idle(n_tiles);
                    release_q(slot);
                    continue;
                }
                pipeline_start(sacc, pa);
            }
            pipeline_loop(sacc, pa, n_tiles, stale_max);
            // Join when both warpgroups have rows in tile j + 1 (the same answer in both: it depends on the block).
            joined = j + 1 < q_count && int(p.len_q - (q0 + HopperShape::BM)) > 64;
            if (!joined) {
                pipeline_finish(pa, n_tiles);
                release_q(slot);
                store(b, h, f);
                continue;
            }
            const int next_q0 = q0 + HopperShape::BM, next_slot = slot ^ 1, next_ring0 = ring_per_tile ? (j + 1) * n_tiles : 0;
            mbar_wait(sm.q_full_bar(next_slot), std::uint32_t((j + 1) >> 1) & 1u);
            wait_full_at(next_ring0);
            turn_wait();
            fence_acc();
            wgmma_fence();
            issue_pv(pa, n_tiles - 1);
            wgmma_commit();
            issue_s_at(sacc, next_ring0, wg_rows(sm.q_slot(next_slot)));
            wgmma_commit();
            turn_pass();
            float next_mult[2];
            multipliers(next_q0, b, h, f, next_mult);
            wgmma_wait<1>(); // the last P·V of tile j is done; S of tile j + 1 may still run
            fence_acc();
            fence_p(pa);
            release(n_tiles - 1); // ring0 is still tile j's
            release_q(slot);
            store(b, h, f);
            reset_query_tile(next_q0, sm.q_slot(next_slot), next_mult);
            ring0 = next_ring0;
            wgmma_wait<0>();
            fence_s(sacc);
            float al[2];
            softmax(sacc, 0, al); // fresh statistics and zero accumulators: no rescale needed
            pack_p(sacc, pa);
        }
    }
};
#endif

} // namespace vmonarch::cuda::hopper
