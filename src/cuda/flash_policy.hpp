// Internal: the flash launch policy, read from the environment once per process: which peer may run and
// the sm90 key-tile width; in builds with -DVMONARCH_EXPERIMENTS=ON also the research switches (the sm90
// schedule and its stale-offset softmax). The per-call choices that follow from it (tile width for the
// problem, schedule) are resolved once per launch into Sm90Launch (sm90/flash_sm90_launch.cuh).
//   VMONARCH_DISABLE_HOPPER=1        every flash problem on the portable sm80 peer
//   VMONARCH_HOPPER_TILE=narrow|wide the sm90 key-tile width (otherwise chosen per problem)
//   VMONARCH_HOPPER_MODE=0|1|2       sm90 schedule: one tile at a time, pipelined, pipelined + ping-pong
//                                    (experiments only; the release library carries only 2)
//   VMONARCH_HOPPER_STALE_MAX=0      sm90: the exact row maximum on every tile (experiments only)
//   VMONARCH_HOPPER_LONG_Q_TILES=n   sm90 at d = 64: n (1..16) query tiles per block when the key tiles
//                                    stream through the ring (long key ranges; default 2); 1 = one per block
// Tests and benchmarks that compare the peers in one process replace the policy with set_flash_policy.
#pragma once

namespace vmonarch::cuda {

struct FlashPolicy {
    enum class Tile { per_problem, narrow, wide };
    bool sm90 = true;            // the sm90 peer may take problems
    Tile tile = Tile::per_problem;
    int sm90_mode = 2;           // consumer schedule (flash_sm90_consumer.cuh); 2 unless experiments
    bool sm90_stale_max = true;  // the stale-offset update (docs/algorithm.md §4.2); true unless experiments
    // Query tiles per block at d = 64 for long key ranges (sm90/flash_sm90_shape.cuh). 4: since a block's tiles
    // are joined into one pipeline (flash_sm90_consumer.cuh, run_query_tiles), CogVideoX's whole forward on an
    // H200 is 1.5 % faster at 3 and 4 than at 2 (bench/RESULTS.md); 1 = one tile per block.
    int sm90_long_q_tiles = 4;
    int sm90_long_q_min_waves = 8; // where the grid keeps at least this many waves of blocks (tests: 0)
};

// The policy the environment asks for now (unset or unrecognised values give the defaults).
FlashPolicy flash_policy_from_env();

// The process's policy: the environment's at the first call, or the last set_flash_policy.
FlashPolicy flash_policy();
void set_flash_policy(const FlashPolicy& policy);

// Schedules compiled into this library (sm90): {2}, or {0, 1, 2} with VMONARCH_EXPERIMENTS.
bool flash_sm90_mode_available(int mode);

} // namespace vmonarch::cuda
