// SPDX-License-Identifier: MIT
// Routes: parse_route and to_string, and the address, name and number checks behind them.
#include <otpkv/route.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using otpkv::parse_route;
using otpkv::route_entry;

namespace {

route_entry route(unsigned char first, unsigned char last, std::string node, std::string host,
                  std::uint16_t port) {
    return route_entry{first, last, std::move(node), std::move(host), port};
}

} // namespace

TEST_CASE("route: parse_route accepts the documented forms and prints them back") {
    struct good_case {
        std::string text;
        route_entry expected;
    };
    const std::vector<good_case> cases{
        {"a-m=foo@127.0.0.1:4040", route('a', 'm', "foo", "127.0.0.1", 4040)},
        {"n-z=bar@localhost:1", route('n', 'z', "bar", "localhost", 1)},
        {"a-a=n.1_x-y@node-2.example.com:65535",
         route('a', 'a', "n.1_x-y", "node-2.example.com", 65535)},
        {"0-9=n@[::1]:4041", route('0', '9', "n", "::1", 4041)},
        {"!-~=n@[2001:db8::1]:80", route('!', '~', "n", "2001:db8::1", 80)},
        {"--/=n@h:1", route('-', '/', "n", "h", 1)},           // '-' as FIRST, read by position
        {"=-==n@h:1", route('=', '=', "n", "h", 1)},           // '=' as FIRST and LAST
        {"\\-\\=n@h:1", route('\\', '\\', "n", "h", 1)},       // a literal backslash
        {"\\x80-\\xff=n@h:1", route(0x80, 0xff, "n", "h", 1)}, // non-ASCII first bytes
        {"\\x00-\\x20=n@h:1", route(0x00, 0x20, "n", "h", 1)}, // NUL to space
        {"\\x41-\\x5A=n@h:1", route('A', 'Z', "n", "h", 1)},   // either case of hex
        {"a-z=n@h:00080", route('a', 'z', "n", "h", 80)},
    };
    for (const auto& c : cases) {
        INFO(c.text);
        std::string why = "untouched";
        const auto r = parse_route(c.text, &why);
        REQUIRE(r);
        CHECK(*r == c.expected);
        CHECK(why == "untouched");
        // The canonical text reads back to the same route.
        CHECK(parse_route(otpkv::to_string(*r)) == c.expected);
    }
    CHECK(otpkv::to_string(route('a', 'm', "foo", "127.0.0.1", 4040)) == "a-m=foo@127.0.0.1:4040");
    CHECK(otpkv::to_string(route('0', '9', "n", "::1", 4041)) == "0-9=n@[::1]:4041");
    CHECK(otpkv::to_string(route(0x80, 0xff, "n", "h", 1)) == "\\x80-\\xff=n@h:1");
    CHECK(otpkv::to_string(route('A', 'Z', "n", "h", 1)) == "A-Z=n@h:1");
    CHECK(otpkv::to_string(route(' ', '~', "n", "h", 1)) == "\\x20-~=n@h:1");
}

TEST_CASE("route: parse_route rejects bad forms with a reason") {
    struct bad_case {
        std::string text;
        std::string why;
    };
    const std::vector<bad_case> cases{
        {"", "empty route, expected FIRST-LAST=NAME@HOST:PORT"},
        {"a-m", "expected '=' after LAST"},
        {"a-", "expected FIRST-LAST=NAME@HOST:PORT"},
        {"am=foo@h:1", "expected '-' after FIRST"},
        {"ab-m=foo@h:1", "expected '-' after FIRST"},
        {"a-mz=foo@h:1", "expected '=' after LAST"},
        {"m-a=foo@h:1", "FIRST is after LAST"},
        {"\\xff-\\x00=foo@h:1", "FIRST is after LAST"},
        {" -m=foo@h:1", "FIRST must be printable ASCII other than space, or \\xHH"},
        {"a- =foo@h:1", "LAST must be printable ASCII other than space, or \\xHH"},
        {"\xc3\xa9-z=foo@h:1", "FIRST must be printable ASCII other than space, or \\xHH"},
        {"\\xg0-z=foo@h:1", "expected two hex digits after \\x in FIRST"},
        {"a-\\x4=foo@h:1", "expected two hex digits after \\x in LAST"},
        {"a-m=foo", "expected '@' between NAME and HOST"},
        {"a-m=@h:1", "NAME must be 1 to 255 of A-Z a-z 0-9 _ . -"},
        {"a-m=fo o@h:1", "NAME must be 1 to 255 of A-Z a-z 0-9 _ . -"},
        {"a-m=foo@h", "expected ':PORT' after HOST"},
        {"a-m=foo@:1", "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"a-m=foo@ho_st:1",
         "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"a-m=foo@-h:1",
         "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"a-m=foo@h..x:1",
         "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"a-m=foo@256.1.1.1:1",
         "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"a-m=foo@10.1:1",
         "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"a-m=foo@" + std::string(64, 'h') + ":1",
         "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"a-m=foo@::1:4040", "an IPv6 HOST must be in brackets, e.g. [::1]:4040"},
        {"a-m=foo@fe80::1:80", "an IPv6 HOST must be in brackets, e.g. [::1]:4040"},
        {"a-m=foo@h:1:2", "PORT must be a number from 1 to 65535"},
        {"a-m=foo@[::1:4040", "expected ']' after an IPv6 HOST"},
        {"a-m=foo@[::1]", "expected ':PORT' after HOST"},
        {"a-m=foo@[::1]4040", "expected ':PORT' after HOST"},
        {"a-m=foo@[127.0.0.1]:1", "HOST in brackets must be an IPv6 address"},
        {"a-m=foo@h:", "PORT must be a number from 1 to 65535"},
        {"a-m=foo@h:0", "PORT must be a number from 1 to 65535"},
        {"a-m=foo@h:65536", "PORT must be a number from 1 to 65535"},
        {"a-m=foo@h:-1", "PORT must be a number from 1 to 65535"},
        {"a-m=foo@h:40 40", "PORT must be a number from 1 to 65535"},
        {"a-m=foo@h:99999999999999999999999", "PORT must be a number from 1 to 65535"},
        {"a-m=foo@h:1,n-z=bar@h:2", "PORT must be a number from 1 to 65535"},
    };
    for (const auto& c : cases) {
        INFO(c.text);
        std::string why;
        CHECK_FALSE(parse_route(c.text, &why));
        CHECK(why == c.why);
        CHECK_FALSE(parse_route(c.text)); // no reason asked for
    }
}

TEST_CASE("route: decimal numbers, with overflow detected at exactly the limit") {
    using otpkv::detail::parse_decimal;
    constexpr std::uint64_t u64_max = std::numeric_limits<std::uint64_t>::max();
    CHECK(parse_decimal("18446744073709551615", u64_max) == u64_max);
    CHECK_FALSE(parse_decimal("18446744073709551616", u64_max));
    CHECK_FALSE(parse_decimal("18446744073709551620", u64_max));
    CHECK(parse_decimal("255", 255) == 255);
    CHECK_FALSE(parse_decimal("256", 255));
    CHECK(parse_decimal("0", 0) == 0);
    CHECK_FALSE(parse_decimal("1", 0));
    CHECK_FALSE(parse_decimal("", 10));
}

TEST_CASE("route: address and name checks") {
    using otpkv::detail::is_hostname;
    using otpkv::detail::is_ipv4;
    using otpkv::detail::is_ipv6;
    static_assert(is_ipv4("1.2.3.4"));
    static_assert(!is_ipv4("1.2.3.04"));
    static_assert(is_ipv6("::"));
    static_assert(otpkv::is_node_name("nonode"));
    CHECK(is_ipv4("0.0.0.0"));
    CHECK(is_ipv4("255.255.255.255"));
    CHECK_FALSE(is_ipv4("255.255.255.256"));
    CHECK_FALSE(is_ipv4("1.2.3.4."));
    CHECK_FALSE(is_ipv4(".1.2.3.4"));
    CHECK_FALSE(is_ipv4("1234.1.1.1"));
    CHECK_FALSE(is_ipv4(""));
    CHECK(is_ipv6("1:2:3:4:5:6:7::")); // '::' standing for one group
    CHECK(is_ipv6("::2:3:4:5:6:7:8"));
    CHECK_FALSE(is_ipv6("1:2:3:4:5:6:7:8::"));
    CHECK_FALSE(is_ipv6("::1.2.3.4:1"));
    CHECK_FALSE(is_ipv6("1:2:3:4:5:6:7:1.2.3.4")); // nine groups' worth
    CHECK_FALSE(is_ipv6(""));
    CHECK(is_hostname("localhost"));
    CHECK(is_hostname("a1.b-2.c"));
    CHECK(is_hostname("1a"));
    CHECK(is_hostname(std::string(63, 'a') + "." + std::string(63, 'b')));
    CHECK_FALSE(is_hostname("a-.b"));
    CHECK_FALSE(is_hostname("a."));
    CHECK_FALSE(is_hostname("123"));
    CHECK_FALSE(is_hostname(std::string(64, 'a') + ".b")); // a label over 63 bytes
    std::string long_name;
    for (int i = 0; i < 64; ++i) {
        long_name += "abc.";
    }
    long_name += "ab"; // 258 bytes
    CHECK_FALSE(is_hostname(long_name));
    CHECK_FALSE(otpkv::is_node_name(""));
    CHECK_FALSE(otpkv::is_node_name(std::string(256, 'a')));
    CHECK_FALSE(otpkv::is_node_name(std::string_view("a\0b", 3)));
}
