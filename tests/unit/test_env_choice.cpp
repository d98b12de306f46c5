// detail::env_choice (src/core/env_choice.hpp), the parser of the CUDA backend's A/B environment switches:
// unset and empty give the default, each name its choice, re-read at every call, anything else an error
// naming the variable, the value and every choice.
#include <gtest/gtest.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "core/env_choice.hpp"

namespace {

enum class Pick { automatic, first, second };

constexpr const char* kVar = "VMONARCH_TEST_ENV_CHOICE";

Pick pick() {
    return vmonarch::detail::env_choice<std::invalid_argument>(
        kVar, Pick::automatic, {{"auto", Pick::automatic}, {"first", Pick::first}, {"second-one", Pick::second}}, "test switch");
}

struct EnvChoice : ::testing::Test {
    void TearDown() override { unsetenv(kVar); }
};

TEST_F(EnvChoice, UnsetAndEmptyGiveTheDefault) {
    unsetenv(kVar);
    EXPECT_EQ(pick(), Pick::automatic);
    setenv(kVar, "", 1);
    EXPECT_EQ(pick(), Pick::automatic);
}

TEST_F(EnvChoice, EachNameItsChoiceReadAtEveryCall) {
    setenv(kVar, "second-one", 1);
    EXPECT_EQ(pick(), Pick::second);
    setenv(kVar, "first", 1);
    EXPECT_EQ(pick(), Pick::first);
    setenv(kVar, "auto", 1);
    EXPECT_EQ(pick(), Pick::automatic);
}

TEST_F(EnvChoice, AnythingElseNamesVariableValueAndChoices) {
    for (const char* bad : {"First", "first ", "fastest", "0"}) {
        setenv(kVar, bad, 1);
        try {
            pick();
            ADD_FAILURE() << "no error for " << kVar << "=" << bad;
        } catch (const std::invalid_argument& e) {
            EXPECT_EQ(std::string(e.what()), std::string("test switch: VMONARCH_TEST_ENV_CHOICE is '") + bad +
                                                 "', expected 'auto', 'first' or 'second-one'");
        }
    }
}

TEST_F(EnvChoice, TwoChoicesReadAsAPair) {
    setenv(kVar, "x", 1);
    try {
        vmonarch::detail::env_choice<std::runtime_error>(kVar, false, {{"auto", false}, {"serial", true}}, "w");
        ADD_FAILURE() << "no error";
    } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()), "w: VMONARCH_TEST_ENV_CHOICE is 'x', expected 'auto' or 'serial'");
    }
}

} // namespace
