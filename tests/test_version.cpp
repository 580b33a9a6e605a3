// SPDX-License-Identifier: MIT
#include <otpkv/version.hpp>

#include <doctest/doctest.h>

#include <string>

TEST_CASE("version: the value, the macros and the build system agree") {
    static_assert(OTPKV_VERSION ==
                  OTPKV_VERSION_MAJOR * 10000 + OTPKV_VERSION_MINOR * 100 + OTPKV_VERSION_PATCH);
    CHECK(otpkv::version.major == OTPKV_VERSION_MAJOR);
    CHECK(otpkv::version.minor == OTPKV_VERSION_MINOR);
    CHECK(otpkv::version.patch == OTPKV_VERSION_PATCH);
    // CMake reads the header; meson writes its own copy: both pass theirs in here.
    const std::string dotted = std::to_string(otpkv::version.major) + "." +
                               std::to_string(otpkv::version.minor) + "." +
                               std::to_string(otpkv::version.patch);
    CHECK(dotted == OTPKV_BUILD_SYSTEM_VERSION);
}
