// SPDX-License-Identifier: MIT
// Routes: parse_route and to_string (one node and several), route_nodes, parse_http_url, and
// the address, name and number checks behind them.
#include <otpkv/route.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using otpkv::http_endpoint;
using otpkv::parse_http_url;
using otpkv::parse_route;
using otpkv::route_entry;
using otpkv::route_node;

namespace {

route_entry route(unsigned char first, unsigned char last, std::string node, std::string host,
                  std::uint16_t port) {
    return route_entry{first, last, std::move(node), std::move(host), port};
}

// An entry naming `nodes` (at least one), the first being the preferred one.
route_entry chain(unsigned char first, unsigned char last, std::vector<route_node> nodes) {
    route_entry r{first, last, nodes.front().name, nodes.front().host, nodes.front().port};
    r.replicas.assign(nodes.begin() + 1, nodes.end());
    return r;
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
        {"a-m=foo@h:1,n-z=bar@h:2",
         "node 2: expected NAME@HOST:PORT, got another route's FIRST-LAST="},
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

TEST_CASE("route: an entry may name several nodes, its replica set in preferred order") {
    const std::string text = "a-m=n1@127.0.0.1:4041,n2@127.0.0.1:4042,n3@127.0.0.1:4043";
    std::string why = "untouched";
    const auto r = parse_route(text, &why);
    REQUIRE(r);
    CHECK(why == "untouched");
    // The first node is the entry's node, host and port, as for an entry naming one.
    CHECK(r->first == 'a');
    CHECK(r->last == 'm');
    CHECK(r->node == "n1");
    CHECK(r->host == "127.0.0.1");
    CHECK(r->port == 4041);
    CHECK(r->replicas ==
          std::vector<route_node>{{"n2", "127.0.0.1", 4042}, {"n3", "127.0.0.1", 4043}});
    CHECK(otpkv::route_nodes(*r) == std::vector<route_node>{{"n1", "127.0.0.1", 4041},
                                                            {"n2", "127.0.0.1", 4042},
                                                            {"n3", "127.0.0.1", 4043}});
    CHECK(otpkv::to_string(*r) == text);
    CHECK(parse_route(otpkv::to_string(*r)) == r);
    // One node: no replicas, and route_nodes gives that one.
    const auto one = parse_route("a-m=n1@h:1");
    REQUIRE(one);
    CHECK(one->replicas.empty());
    CHECK(otpkv::route_nodes(*one) == std::vector<route_node>{{"n1", "h", 1}});
    CHECK(otpkv::to_string(route_node{"n2", "::1", 4042}) == "n2@[::1]:4042");

    struct good_case {
        std::string text;
        route_entry expected;
        std::string printed; // the canonical text, when it differs
    };
    const std::vector<good_case> cases{
        {"a-m=n1@h:1,n2@h:2", chain('a', 'm', {{"n1", "h", 1}, {"n2", "h", 2}}), ""},
        // IPv6 and host names; the same host on other ports; a port with leading zeros.
        {"0-9=a@[::1]:1,b@[fe80::2]:1,c@node-3.example.com:01",
         chain('0', '9', {{"a", "::1", 1}, {"b", "fe80::2", 1}, {"c", "node-3.example.com", 1}}),
         "0-9=a@[::1]:1,b@[fe80::2]:1,c@node-3.example.com:1"},
        // A LAST of ',' is read by position, not as a separator; \xHH ranges too.
        {"!-,=a@h:1,b@h:2", chain('!', ',', {{"a", "h", 1}, {"b", "h", 2}}), ""},
        {"\\x2c-\\x2c=a@h:1,b@h:2", chain(',', ',', {{"a", "h", 1}, {"b", "h", 2}}),
         ",-,=a@h:1,b@h:2"},
        {"\\x80-\\xff=a@h:1,b@h:2", chain(0x80, 0xff, {{"a", "h", 1}, {"b", "h", 2}}), ""},
        // Names that look like ranges but have no '=' are names.
        {"a-z=a-b@h:1,c-d@h:2", chain('a', 'z', {{"a-b", "h", 1}, {"c-d", "h", 2}}), ""},
        // The most nodes an entry may name.
        {"a-z=n1@h:1,n2@h:2,n3@h:3,n4@h:4,n5@h:5,n6@h:6,n7@h:7",
         chain('a', 'z',
               {{"n1", "h", 1},
                {"n2", "h", 2},
                {"n3", "h", 3},
                {"n4", "h", 4},
                {"n5", "h", 5},
                {"n6", "h", 6},
                {"n7", "h", 7}}),
         ""},
    };
    for (const auto& c : cases) {
        INFO(c.text);
        const auto parsed = parse_route(c.text);
        REQUIRE(parsed);
        CHECK(*parsed == c.expected);
        CHECK(otpkv::to_string(*parsed) == (c.printed.empty() ? c.text : c.printed));
        CHECK(parse_route(otpkv::to_string(*parsed)) == c.expected);
    }
    static_assert(otpkv::max_route_nodes == 7);
    // Entries that differ only in their further nodes, or in their order, differ.
    CHECK(*parse_route("a-m=n1@h:1,n2@h:2") != *parse_route("a-m=n1@h:1"));
    CHECK(*parse_route("a-m=n1@h:1,n2@h:2,n3@h:3") != *parse_route("a-m=n1@h:1,n3@h:3,n2@h:2"));
}

TEST_CASE("route: an entry naming several nodes is refused with a reason naming the node") {
    struct bad_case {
        std::string text;
        std::string why;
    };
    const std::vector<bad_case> cases{
        {"a-m=n1@h:1,", "node 2 is empty: expected NAME@HOST:PORT on each side of a ','"},
        {"a-m=,n1@h:1", "node 1 is empty: expected NAME@HOST:PORT on each side of a ','"},
        {"a-m=n1@h:1,,n2@h:2", "node 2 is empty: expected NAME@HOST:PORT on each side of a ','"},
        {"a-m=,", "node 1 is empty: expected NAME@HOST:PORT on each side of a ','"},
        {"a-m=n1@h:1, n2@h:2", "node 2: NAME must be 1 to 255 of A-Z a-z 0-9 _ . -"},
        {"a-m=n1@h:1,n2@h", "node 2: expected ':PORT' after HOST"},
        {"a-m=n1@h,n2@h:2", "node 1: expected ':PORT' after HOST"},
        {"a-m=n1@h:1,n2", "node 2: expected '@' between NAME and HOST"},
        {"a-m=n1@h:1,n2@h:0", "node 2: PORT must be a number from 1 to 65535"},
        {"a-m=n1@h:1,n2@h:1 ", "node 2: PORT must be a number from 1 to 65535"},
        {"a-m=n1@h:1,n2@::1:2", "node 2: an IPv6 HOST must be in brackets, e.g. [::1]:4040"},
        {"a-m=n1@h:1,n2@[::1:2", "node 2: expected ']' after an IPv6 HOST"},
        {"a-m=n1@h:1,n2@ho_st:2",
         "node 2: HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"a-m=n1@h:1,n2@h:2,n1@h:3",
         "node 3: n1 is named twice (also node 1): a node may appear once in a route"},
        {"a-m=n1@h:1,n1@h:1",
         "node 2: n1 is named twice (also node 1): a node may appear once in a route"},
        {"a-m=n1@h:1,n2@h:2,n3@h:2", "node 3: n3 is at h:2, the address of n2 (node 2)"},
        {"a-m=n1@[::1]:1,n2@[::1]:1", "node 2: n2 is at [::1]:1, the address of n1 (node 1)"},
        {"a-m=n1@h:1,n-z=n2@h:2",
         "node 2: expected NAME@HOST:PORT, got another route's FIRST-LAST="},
        {"a-z=n1@h:1,n2@h:2,n3@h:3,n4@h:4,n5@h:5,n6@h:6,n7@h:7,n8@h:8",
         "a route names at most 7 nodes, got 8"},
        {"a-z=" + std::string(100, ','), "a route names at most 7 nodes, got 101"},
    };
    for (const auto& c : cases) {
        INFO(c.text);
        std::string why;
        CHECK_FALSE(parse_route(c.text, &why));
        CHECK(why == c.why);
        CHECK_FALSE(parse_route(c.text));
    }
    // Other hosts at the same port, and one host at other ports, are different addresses.
    CHECK(parse_route("a-m=n1@h:1,n2@h:2,n3@g:1"));
}

TEST_CASE("route: parse_http_url reads etcd client URLs, http://HOST:PORT") {
    struct good_case {
        std::string url;
        http_endpoint expected;
    };
    const std::vector<good_case> cases{
        {"http://127.0.0.1:2379", {"127.0.0.1", 2379}},
        {"http://127.0.0.1:2379/", {"127.0.0.1", 2379}},
        {"http://localhost:1", {"localhost", 1}},
        {"http://etcd-1.example.com:65535/", {"etcd-1.example.com", 65535}},
        {"http://[::1]:2379", {"::1", 2379}},
        {"http://[2001:db8::1]:2379/", {"2001:db8::1", 2379}},
        {"HTTP://h:2379", {"h", 2379}}, // the scheme in either case
        {"Http://h:02379", {"h", 2379}},
    };
    for (const auto& c : cases) {
        INFO(c.url);
        std::string why = "untouched";
        const auto e = parse_http_url(c.url, &why);
        REQUIRE(e);
        CHECK(*e == c.expected);
        CHECK(why == "untouched");
        CHECK(parse_http_url(otpkv::to_string(*e)) == c.expected);
    }
    CHECK(otpkv::to_string(http_endpoint{"::1", 2379}) == "http://[::1]:2379");
    CHECK(otpkv::to_string(http_endpoint{"127.0.0.1", 2379}) == "http://127.0.0.1:2379");

    struct bad_case {
        std::string url;
        std::string why;
    };
    const std::string tls =
        "TLS (https) is not supported: give etcd's plain http:// client URL, on a trusted "
        "network";
    const std::vector<bad_case> bad{
        {"", "empty URL, expected http://HOST:PORT"},
        {"127.0.0.1:2379", "expected http://HOST:PORT (the scheme is required)"},
        {"localhost", "expected http://HOST:PORT (the scheme is required)"},
        {"https://127.0.0.1:2379", tls},
        {"HTTPS://h:2379/", tls},
        {"unix://h:2379", "the scheme must be http, expected http://HOST:PORT"},
        {"unixs:///tmp/etcd.sock", "the scheme must be http, expected http://HOST:PORT"},
        {"httpx://h:1", "the scheme must be http, expected http://HOST:PORT"},
        {"://h:1", "the scheme must be http, expected http://HOST:PORT"},
        {"http://", "expected HOST:PORT after http://"},
        {"http:///", "expected HOST:PORT after http://"},
        {"http://user@h:2379",
         "user info (USER@ before HOST) is not supported, expected http://HOST:PORT"},
        {"http://user:secret@h:2379/",
         "user info (USER@ before HOST) is not supported, expected http://HOST:PORT"},
        {"http://h", "expected ':PORT' after HOST"},
        {"http://h/", "expected ':PORT' after HOST"},
        {"http://h:", "PORT must be a number from 1 to 65535"},
        {"http://h:0", "PORT must be a number from 1 to 65535"},
        {"http://h:65536", "PORT must be a number from 1 to 65535"},
        {"http://h:2379 ", "PORT must be a number from 1 to 65535"},
        {"http://h:23x9", "PORT must be a number from 1 to 65535"},
        {"http://::1:2379", "an IPv6 HOST must be in brackets, e.g. [::1]:4040"},
        {"http://[::1:2379", "expected ']' after an IPv6 HOST"},
        {"http://[127.0.0.1]:2379", "HOST in brackets must be an IPv6 address"},
        {"http://ho_st:2379",
         "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"http://10.1:2379",
         "HOST must be an IPv4 address, an IPv6 address in brackets, or a host name"},
        {"http://h:2379/v3",
         "a path is not allowed, expected http://HOST:PORT (a single '/' may follow)"},
        {"http://h:2379//",
         "a path is not allowed, expected http://HOST:PORT (a single '/' may follow)"},
        {"http://h:2379/v3/kv/range",
         "a path is not allowed, expected http://HOST:PORT (a single '/' may follow)"},
        {"http://h:2379?x=1", "a query is not allowed, expected http://HOST:PORT"},
        {"http://h:2379/?x=1", "a query is not allowed, expected http://HOST:PORT"},
        {"http://h:2379#top", "a fragment is not allowed, expected http://HOST:PORT"},
        {"http://h:2379/#top", "a fragment is not allowed, expected http://HOST:PORT"},
    };
    for (const auto& c : bad) {
        INFO(c.url);
        std::string why;
        CHECK_FALSE(parse_http_url(c.url, &why));
        CHECK(why == c.why);
        CHECK_FALSE(parse_http_url(c.url));
    }
}
