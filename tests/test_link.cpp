// SPDX-License-Identifier: MIT
// Two translation units include the umbrella header and link into one program: a function
// defined in a header without `inline` would break the link. This is one; the other is
// link_other_tu.cpp.
#include <otpkv/otpkv.hpp>

#include <doctest/doctest.h>

#include <string>

std::string otpkv_link_other_tu(); // defined in link_other_tu.cpp

namespace {
std::string use_everything_here() {
    otpkv::line_framer framer;
    framer.feed("CREATE here\n");
    return otpkv::to_string(otpkv::parse(framer.next().line)) + " " +
           otpkv::format_reply(otpkv::reply::ok());
}
} // namespace

TEST_CASE("link: two translation units using every header link into one program") {
    CHECK(use_everything_here() == "create here OK\r\n");
    CHECK(otpkv_link_other_tu() == "create there OK\r\n");
}
