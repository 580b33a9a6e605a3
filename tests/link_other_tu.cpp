// SPDX-License-Identifier: MIT
// The second translation unit of the link test (see test_link.cpp).
#include <otpkv/otpkv.hpp>

#include <string>

std::string otpkv_link_other_tu();

std::string otpkv_link_other_tu() {
    otpkv::line_framer framer;
    framer.feed("CREATE there\n");
    return otpkv::to_string(otpkv::parse(framer.next().line)) + " " +
           otpkv::format_reply(otpkv::reply::ok());
}
