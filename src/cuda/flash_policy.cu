// The flash launch policy (flash_policy.hpp): environment parsed once, replaceable by tests.
#include "cuda/flash_policy.hpp"

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace vmonarch::cuda {

namespace {

const char* env(const char* name) {
    const char* e = std::getenv(name);
    return e != nullptr && e[0] != '\0' ? e : nullptr;
}

std::mutex& policy_mutex() {
    static std::mutex mu;
    return mu;
}

FlashPolicy& policy_slot() {
    static FlashPolicy p = flash_policy_from_env();
    return p;
}

} // namespace

bool flash_sm90_mode_available(int mode) {
#ifdef VMONARCH_EXPERIMENTS
    return mode >= 0 && mode <= 2;
#else
    return mode == 2;
#endif
}

FlashPolicy flash_policy_from_env() {
    FlashPolicy p;
    if (const char* e = env("VMONARCH_DISABLE_HOPPER")) p.sm90 = std::strcmp(e, "0") == 0;
    if (const char* e = env("VMONARCH_HOPPER_TILE")) {
        if (std::strcmp(e, "narrow") == 0) p.tile = FlashPolicy::Tile::narrow;
        else if (std::strcmp(e, "wide") == 0) p.tile = FlashPolicy::Tile::wide;
    }
    if (const char* e = env("VMONARCH_HOPPER_LONG_Q_TILES")) {
        const int n = std::atoi(e);
        if (n >= 1 && n <= 16) p.sm90_long_q_tiles = n;
    }
#ifdef VMONARCH_EXPERIMENTS
    if (const char* e = env("VMONARCH_HOPPER_MODE"); e != nullptr && e[1] == '\0' && e[0] >= '0' && e[0] <= '2') p.sm90_mode = e[0] - '0';
    if (const char* e = env("VMONARCH_HOPPER_STALE_MAX"); e != nullptr && std::strcmp(e, "0") == 0) p.sm90_stale_max = false;
#endif
    return p;
}

FlashPolicy flash_policy() {
    std::lock_guard<std::mutex> lock(policy_mutex());
    return policy_slot();
}

void set_flash_policy(const FlashPolicy& policy) {
    std::lock_guard<std::mutex> lock(policy_mutex());
    policy_slot() = policy;
}

} // namespace vmonarch::cuda
