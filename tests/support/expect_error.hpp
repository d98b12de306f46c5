// The check every error test makes: the call throws vmonarch::ArgumentError naming `argument`, and its
// message contains each fragment (the function, the value, what was expected).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "vmonarch/errors.hpp"

namespace vmtest {

inline void expect_error(const std::function<void()>& call, const std::string& argument,
                         const std::vector<std::string>& fragments) {
    try {
        call();
        ADD_FAILURE() << "no error for " << argument;
    } catch (const vmonarch::ArgumentError& e) {
        EXPECT_EQ(e.argument(), argument) << e.what();
        for (const auto& f : fragments)
            EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what() << " lacks " << f;
    }
}

} // namespace vmtest
