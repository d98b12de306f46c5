// Internal: an environment switch that names one of a few choices (VMONARCH_BACKWARD_SCHEDULE,
// VMONARCH_LSTEP_BWD, VMONARCH_EXACT_SCHEDULE), for A/B runs of the CUDA backend's schedules.
#pragma once

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

namespace vmonarch::detail {

template <typename E> struct EnvChoice {
    const char* name;
    E value;
};

// The choice `var` names now: read at each call (tests and benchmarks change it within one process); unset
// or empty gives `unset`. Any other value throws Error("<who>: <var> is '<value>', expected 'a', 'b' or 'c'"),
// the choices in the order given.
template <typename Error, typename E>
E env_choice(const char* var, E unset, std::initializer_list<EnvChoice<E>> choices, const char* who) {
    const char* env = std::getenv(var);
    if (env == nullptr || *env == '\0') return unset;
    for (const EnvChoice<E>& c : choices)
        if (std::strcmp(env, c.name) == 0) return c.value;
    std::string expected;
    std::size_t i = 0;
    for (const EnvChoice<E>& c : choices) {
        expected += (i == 0 ? "'" : i + 1 == choices.size() ? " or '" : ", '") + std::string(c.name) + "'";
        ++i;
    }
    throw Error(std::string(who) + ": " + var + " is '" + env + "', expected " + expected);
}

} // namespace vmonarch::detail
