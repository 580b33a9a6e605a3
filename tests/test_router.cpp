// SPDX-License-Identifier: MIT
// The router, in process and on loopback only: the routing table, two nodes forwarding through the
// host API and through the server, peer connections that never forward, relayed SUBSCRIBE, and
// stopping a router with requests in flight. (tests/test_client.cpp tests the node_client under it
// against fake peers; tests/test_cluster.cpp runs real kv_server processes.)
#include "kv_process.hpp"
#include "support.hpp"

#include <otpkv/detail/random.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/route.hpp>
#include <otpkv/router.hpp>

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

using otpkv::command_kind;
using otpkv::error_code;
using otpkv::node_status;
using otpkv::parse;
using otpkv::reply_kind;
using otpkv::route_entry;
using otpkv::route_target;
using otpkv_test::answered;
using otpkv_test::eventually;
using otpkv_test::fake_peer;
using otpkv_test::journal;
using otpkv_test::kv_client;
using otpkv_test::kv_process;
using otpkv_test::quick;
using otpkv_test::record_into;
using otpkv_test::tagged;
using namespace std::chrono_literals;
using namespace std::string_literals;
using namespace std::string_view_literals;

namespace {

route_entry entry(unsigned char first, unsigned char last, std::string node, std::uint16_t port,
                  std::string host = "127.0.0.1") {
    return {first, last, std::move(node), std::move(host), port};
}

using info_provider = std::function<std::string(std::string_view section)>;

std::shared_ptr<otpkv::router>
start_router(std::string self, std::vector<route_entry> routes, otpkv::client_options client = {},
             std::shared_ptr<otpkv::registry> reg = otpkv::registry::start(),
             info_provider info = {}, otpkv::logger log = {}) {
    otpkv::router_options o;
    o.self = std::move(self);
    o.routes = std::move(routes);
    o.client = std::move(client);
    o.cookie = otpkv_test::test_cookie;
    o.info = std::move(info);
    o.log = std::move(log);
    auto r = otpkv::router::start(std::move(reg), std::move(o));
    REQUIRE(r.has_value());
    return std::move(r).value();
}

std::shared_ptr<otpkv::server> serve(std::shared_ptr<otpkv::router> r, std::uint16_t port = 0) {
    otpkv::server_options o;
    o.port = port;
    o.threads = 2;
    auto s = otpkv::server::start(otpkv::router_handler(std::move(r)), o);
    REQUIRE(s.has_value());
    return std::move(s).value();
}

// Who owns `bucket` by `r`'s table: the node's name, "(local)" or "(none)".
std::string owner(const otpkv::router& r, std::string_view bucket) {
    const route_target t = r.route(bucket);
    switch (t.where) {
    case route_target::kind::local:
        return "(local)";
    case route_target::kind::none:
        return "(none)";
    case route_target::kind::chain:
        return "(chain " + std::to_string(t.node) + ")";
    case route_target::kind::remote:
        return t.node < r.nodes().size() ? r.nodes()[t.node].name : "(bad index)";
    }
    return "?";
}

// Every first byte's owner, counted: {"(local)": 13, "n2": 13, "(none)": 230}.
std::map<std::string, int> owners_by_first_byte(const otpkv::router& r) {
    std::map<std::string, int> count;
    for (unsigned b = 0; b < 256; ++b) {
        ++count[owner(r, std::string(1, static_cast<char>(b)) + "tail")];
    }
    return count;
}

// A node's INFO in the tests: which node answered, and for which section word (as sent);
// STATS is long (2,000 lines, about 50 KB), to travel in many reads.
std::string info_lines(std::string_view node, std::string_view section) {
    std::string text = "node:" + std::string(node) + "\r\nsection:" + std::string(section) + "\r\n";
    if (section == "STATS") {
        for (int i = 0; i < 2000; ++i) {
            text += "stat_" + std::to_string(i) + ":" + std::string(12, 'v') + "\r\n";
        }
    }
    return text;
}

info_provider info_of(std::string node) {
    return [node = std::move(node)](std::string_view section) { return info_lines(node, section); };
}

// Two nodes in one process, each a registry, a router and a server on an ephemeral port:
// B serves everything locally (its table's first entry covers every byte; the second, which
// never wins, names A, so that B accepts A as a peer), A owns a-m and forwards n-y to B; z
// and everything outside a-y has no route at A.
// With `info`, each node's INFO is `info_lines` of its name.
struct two_nodes {
    explicit two_nodes(otpkv::client_options client = {}, bool info = false,
                       otpkv::logger log_a = {}) {
        client.heartbeat = 0ms;
        reg_b = otpkv::registry::start();
        router_b = start_router("B", {entry(0, 255, "B", 1), entry('a', 'a', "A", 1)}, {}, reg_b,
                                info ? info_of("B") : info_provider{});
        server_b = serve(router_b);
        reg_a = otpkv::registry::start();
        router_a = start_router(
            "A", {entry('a', 'm', "A", 1), entry('n', 'y', "B", server_b->port())},
            std::move(client), reg_a, info ? info_of("A") : info_provider{}, std::move(log_a));
        server_a = serve(router_a);
    }
    ~two_nodes() {
        for (otpkv::process* p : std::initializer_list<otpkv::process*>{
                 server_a.get(), router_a.get(), server_b.get(), router_b.get()}) {
            if (p->alive()) {
                p->stop();
            }
        }
    }
    two_nodes(const two_nodes&) = delete;
    two_nodes& operator=(const two_nodes&) = delete;

    std::shared_ptr<otpkv::registry> reg_a;
    std::shared_ptr<otpkv::registry> reg_b;
    std::shared_ptr<otpkv::router> router_a;
    std::shared_ptr<otpkv::router> router_b;
    std::shared_ptr<otpkv::server> server_a;
    std::shared_ptr<otpkv::server> server_b;
};

std::optional<std::string> value_on(otpkv::registry& reg, std::string_view bucket,
                                    std::string_view key) {
    const auto b = reg.lookup(bucket);
    REQUIRE(b != nullptr);
    return b->get(std::string(key));
}

} // namespace

// ---------------------------------------------------------------------------------------
// The routing table
// ---------------------------------------------------------------------------------------

TEST_CASE("router: the first entry covering the first byte wins, both bounds included") {
    auto r = start_router("A", {entry('m', 'm', "n3", 4043), entry('a', 'z', "n2", 4042),
                                entry('a', 'z', "n4", 4044), entry('0', '9', "A", 4040)});
    CHECK(owner(*r, "m") == "n3");
    CHECK(owner(*r, "mango") == "n3");
    CHECK(owner(*r, "a") == "n2"); // the first byte of the range
    CHECK(owner(*r, "apple") == "n2");
    CHECK(owner(*r, "l") == "n2");
    CHECK(owner(*r, "nut") == "n2");
    CHECK(owner(*r, "z") == "n2"); // the last byte of the range
    CHECK(owner(*r, "zz") == "n2");
    CHECK(owner(*r, "`") == "(none)"); // 'a' - 1
    CHECK(owner(*r, "{") == "(none)"); // 'z' + 1
    CHECK(owner(*r, "Apple") == "(none)");
    CHECK(owner(*r, "0") == "(local)");
    CHECK(owner(*r, "9lives") == "(local)");
    CHECK(owner(*r, "/") == "(none)"); // '0' - 1
    CHECK(owner(*r, ":") == "(none)"); // '9' + 1
    // n4's entry is shadowed everywhere: no byte reaches it.
    CHECK(owners_by_first_byte(*r) ==
          std::map<std::string, int>{{"(local)", 10}, {"(none)", 220}, {"n2", 25}, {"n3", 1}});
    // The indexes `route` gives are positions in `nodes()`, and the route does not depend
    // on anything after the first byte.
    const route_target m = r->route("m");
    CHECK(m.where == route_target::kind::remote);
    CHECK(r->route("m\xff\x00"sv) == m);
}

TEST_CASE("router: \\x80-\\xff ranges, NUL, and this node's entries are local at any address") {
    const auto high = otpkv::parse_route("\\x80-\\xff=n2@127.0.0.1:4042");
    REQUIRE(high.has_value());
    CHECK(*high == entry(0x80, 0xff, "n2", 4042));
    const auto own = otpkv::parse_route("\\x00-\\x7f=A@10.255.0.1:9");
    REQUIRE(own.has_value());
    auto r = start_router("A", {*high, *own});
    CHECK(owner(*r, "\x80") == "n2");
    CHECK(owner(*r, "\xc3\xa9t\xc3\xa9") == "n2"); // UTF-8 "été"
    CHECK(owner(*r, "\xff") == "n2");
    CHECK(owner(*r, "\x7f") == "(local)");
    CHECK(owner(*r, "\x00zero"sv) == "(local)");
    CHECK(owner(*r, "apple") == "(local)"); // named by NAME, whatever the address says
    CHECK(owners_by_first_byte(*r) == std::map<std::string, int>{{"(local)", 128}, {"n2", 128}});
    // This node is never one of the others, nor connected to.
    REQUIRE(r->nodes().size() == 1);
    CHECK(r->nodes()[0] == otpkv::peer_node{"n2", "127.0.0.1", 4042});
    CHECK(r->status("A") == node_status::down); // not a node it knows
    CHECK(r->status("n2") == node_status::unknown);
}

TEST_CASE("router: an empty table makes every bucket local; a gap in a table has no route") {
    auto solo = start_router("solo", {});
    CHECK(owners_by_first_byte(*solo) == std::map<std::string, int>{{"(local)", 256}});
    CHECK(solo->nodes().empty());
    CHECK(solo->route("") == route_target{route_target::kind::local, 0}); // every bucket
    CHECK(solo->create("apple").kind == reply_kind::ok);
    CHECK(solo->registry()->lookup("apple") != nullptr);

    auto gappy = start_router("A", {entry('a', 'm', "A", 1), entry('o', 'z', "n2", 4042)});
    CHECK(owner(*gappy, "m") == "(local)");
    CHECK(owner(*gappy, "n") == "(none)");
    CHECK(owner(*gappy, "nut") == "(none)");
    CHECK(owner(*gappy, "o") == "n2");
    CHECK(owner(*gappy, "") == "(none)"); // no first byte, so no entry covers it
    const auto no_route = gappy->get("nut", "k");
    CHECK(no_route.kind == reply_kind::error);
    CHECK(no_route.error == error_code::no_route);
    CHECK(no_route.bytes == "ERROR no route\r\n");
    CHECK(gappy->call(parse("CREATE nut")) == "ERROR no route\r\n");
    CHECK(gappy->registry()->size() == 0);
}

TEST_CASE("router: start refuses a table that gives one node two addresses") {
    for (const auto& routes : std::vector<std::vector<route_entry>>{
             {entry('a', 'm', "n2", 4041), entry('n', 'z', "n2", 4042)},
             {entry('a', 'm', "n2", 4041), entry('n', 'z', "n2", 4041, "127.0.0.2")},
             {entry('a', 'b', "n3", 4043), entry('c', 'd', "n2", 4041), entry('e', 'f', "n3", 4043),
              entry('g', 'z', "n2", 4042, "localhost")}}) {
        CAPTURE(routes.size());
        otpkv::router_options o;
        o.self = "A";
        o.routes = routes;
        const auto r = otpkv::router::start(otpkv::registry::start(), o);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == otpkv::errc::start_failed);
        CHECK(r.error().reason.what() == otpkv::exit_reason::kind::error);
        CHECK(r.error().reason.detail().find("n2") != std::string::npos);
    }
    // The same address repeated is one node.
    auto same = start_router("A", {entry('a', 'm', "n2", 4041), entry('n', 'z', "n2", 4041)});
    CHECK(same->nodes() == std::vector<otpkv::peer_node>{{"n2", "127.0.0.1", 4041}});
}

TEST_CASE("router: nodes() lists each other node once, in order of first appearance") {
    auto r = start_router("A", {entry('a', 'c', "n2", 4042), entry('d', 'f', "A", 4040),
                                entry('g', 'i', "n3", 4043), entry('j', 'l', "n2", 4042),
                                entry('m', 'o', "n4", 4044), entry('p', 'r', "n3", 4043)});
    CHECK(r->nodes() == std::vector<otpkv::peer_node>{{"n2", "127.0.0.1", 4042},
                                                      {"n3", "127.0.0.1", 4043},
                                                      {"n4", "127.0.0.1", 4044}});
    // Whatever the order, `route`'s index names the right node.
    CHECK(owner(*r, "b") == "n2");
    CHECK(owner(*r, "e") == "(local)");
    CHECK(owner(*r, "h") == "n3");
    CHECK(owner(*r, "k") == "n2");
    CHECK(owner(*r, "n") == "n4");
    CHECK(owner(*r, "q") == "n3");
    for (const char* name : {"n2", "n3", "n4"}) {
        CHECK(r->status(name) == node_status::unknown); // nothing is connected before use
    }
}

// ---------------------------------------------------------------------------------------
// Two nodes
// ---------------------------------------------------------------------------------------

TEST_CASE("router: the host API runs each operation on the bucket's owner and parses the reply") {
    two_nodes n;
    auto& a = *n.router_a;
    CHECK(owner(a, "apple") == "(local)");
    CHECK(owner(a, "nut") == "B");
    CHECK(owner(a, "zebra") == "(none)");

    auto r = a.create("apple");
    CHECK(r.kind == reply_kind::ok);
    CHECK(r.bytes == "OK\r\n");
    CHECK(n.reg_a->lookup("apple") != nullptr);
    CHECK(n.reg_b->lookup("apple") == nullptr);
    r = a.create("nut");
    CHECK(r.kind == reply_kind::ok);
    CHECK(r.bytes == "OK\r\n");
    CHECK(n.reg_b->lookup("nut") != nullptr);
    CHECK(n.reg_a->lookup("nut") == nullptr);
    CHECK(a.status("B") == node_status::up);

    r = a.put("nut", "eggs", "3");
    CHECK(r.kind == reply_kind::ok);
    CHECK(r.bytes == "OK\r\n");
    CHECK(value_on(*n.reg_b, "nut", "eggs") == "3");
    CHECK(a.put("apple", "eggs", "5").bytes == "OK\r\n");
    CHECK(value_on(*n.reg_a, "apple", "eggs") == "5");
    CHECK(value_on(*n.reg_b, "nut", "eggs") == "3");

    r = a.get("nut", "eggs");
    CHECK(r.kind == reply_kind::value);
    CHECK(r.value == "3");
    CHECK(r.bytes == "3\r\nOK\r\n");
    r = a.get("nut", "milk");
    CHECK(r.kind == reply_kind::value);
    CHECK(r.ok());
    CHECK(r.value.empty());
    CHECK(r.bytes == "\r\nOK\r\n");
    CHECK(a.put("nut", "word", "OK").kind == reply_kind::ok);
    r = a.get("nut", "word");
    CHECK(r.kind == reply_kind::value);
    CHECK(r.value == "OK");
    CHECK(r.bytes == "OK\r\nOK\r\n");
    n.reg_b->lookup("nut")->put("direct", "7"); // written at the owner, read through A
    CHECK(a.get("nut", "direct").value == "7");

    r = a.erase("nut", "eggs");
    CHECK(r.kind == reply_kind::ok);
    CHECK(r.bytes == "OK\r\n");
    CHECK(value_on(*n.reg_b, "nut", "eggs") == std::nullopt);
    CHECK(a.erase("nut", "eggs").kind == reply_kind::ok); // absent: still OK

    r = a.get("nowhere", "k"); // B's, and B has no such bucket
    CHECK(r.kind == reply_kind::not_found);
    CHECK_FALSE(r.ok());
    CHECK(r.bytes == "NOT FOUND\r\n");
    CHECK(a.put("nowhere", "k", "v").kind == reply_kind::not_found);
    CHECK(n.reg_b->lookup("nowhere") == nullptr);
    r = a.get("zebra", "k");
    CHECK(r.kind == reply_kind::error);
    CHECK(r.error == error_code::no_route);
    CHECK(r.bytes == "ERROR no route\r\n");

    // Tokens that cannot travel as one token are refused, not split.
    r = a.put("nut", "k", "two words");
    CHECK(r.kind == reply_kind::unknown_command);
    CHECK(r.bytes == "UNKNOWN COMMAND\r\n");
    CHECK(a.put("nut", "", "v").kind == reply_kind::unknown_command);
    CHECK(a.get("nut", "a\r\nb").kind == reply_kind::unknown_command);
    CHECK(value_on(*n.reg_b, "nut", "k") == std::nullopt);

    // Any byte but whitespace travels unchanged.
    CHECK(a.create("n\xc3\xa9").kind == reply_kind::ok);
    CHECK(a.put("n\xc3\xa9", "k\x01", "v\xff\x80").kind == reply_kind::ok);
    CHECK(value_on(*n.reg_b, "n\xc3\xa9", "k\x01") == "v\xff\x80");
    CHECK(a.get("n\xc3\xa9", "k\x01").value == "v\xff\x80");

    // `call` gives the exact bytes.
    CHECK(a.call(parse("GET nut word")) == "OK\r\nOK\r\n");
    CHECK(a.call(parse("GET apple eggs")) == "5\r\nOK\r\n");
    CHECK(a.call(parse("DELETE nut word")) == "OK\r\n");
    CHECK(a.call(parse("GET nut word")) == "\r\nOK\r\n");
    CHECK(a.call(parse("GET zebra k")) == "ERROR no route\r\n");
    CHECK(a.call(parse("SUBSCRIBE nut")) == "UNKNOWN COMMAND\r\n");
    CHECK(a.call(parse("SUBSCRIBE apple")) == "UNKNOWN COMMAND\r\n");
    CHECK(a.call(parse("BOGUS nut")) == "UNKNOWN COMMAND\r\n");
}

TEST_CASE("router: send keeps the order of one affinity's requests; a local one answers at once") {
    two_nodes n;
    auto& a = *n.router_a;
    REQUIRE(a.create("nut").kind == reply_kind::ok);
    REQUIRE(a.create("apple").kind == reply_kind::ok);

    bool answered = false;
    a.send(parse("GET apple k"), [&](std::string reply) { answered = reply == "\r\nOK\r\n"; });
    CHECK(answered); // before send returned

    constexpr int count = 500;
    std::mutex mutex;
    std::map<std::uint64_t, std::vector<std::string>> replies; // by affinity
    const auto send = [&](const std::string& line, std::uint64_t affinity) {
        a.send(
            parse(line),
            [&, affinity](std::string reply) {
                const std::lock_guard lock(mutex);
                replies[affinity].push_back(std::move(reply));
            },
            affinity);
    };
    for (int i = 0; i < count; ++i) {
        send("PUT nut k " + std::to_string(i), 9);
        send("PUT nut j " + std::to_string(i), 10);
    }
    send("GET nut k", 9);
    send("GET nut j", 10);
    REQUIRE(eventually(
        [&] {
            const std::lock_guard lock(mutex);
            return replies[9].size() + replies[10].size() == 2 * (count + 1);
        },
        10s));
    std::vector<std::string> expected(count, "OK\r\n");
    expected.push_back(std::to_string(count - 1) + "\r\nOK\r\n");
    const std::lock_guard lock(mutex);
    CHECK(replies[9] == expected);
    CHECK(replies[10] == expected);
    CHECK(value_on(*n.reg_b, "nut", "k") == std::to_string(count - 1));
}

TEST_CASE("router: a node that goes away fails only its buckets, and is used again when back") {
    otpkv::client_options options = quick(60s); // nothing here waits for a timeout
    two_nodes n(options);
    auto& a = *n.router_a;
    REQUIRE(a.create("nut").kind == reply_kind::ok);
    REQUIRE(a.put("nut", "k", "1").kind == reply_kind::ok);
    REQUIRE(a.create("apple").kind == reply_kind::ok);
    journal events;
    auto watch = a.monitor_nodes(record_into(events));
    kv_client client(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(client, "GET nut k\r\n", "1\r\nOK\r\n");

    const std::uint16_t port_b = n.server_b->port();
    n.server_b->stop();
    auto r = a.get("nut", "k");
    CHECK(r.kind == reply_kind::error);
    CHECK(r.error == error_code::node_unavailable);
    CHECK(r.node == "B");
    CHECK(r.bytes == "ERROR node B unavailable\r\n");
    CHECK(eventually([&] { return a.status("B") == node_status::down; }));
    // Known down: answered before `send` returns, with no connection tried or waited for.
    std::string at_once;
    a.send(parse("GET nut k"), [&](std::string reply) { at_once = std::move(reply); });
    CHECK(at_once == "ERROR node B unavailable\r\n");
    CHECK(a.get("nut", "k").bytes == "ERROR node B unavailable\r\n");
    CHECK(a.create("nothing").bytes == "ERROR node B unavailable\r\n");
    CHECK(a.put("apple", "k", "2").kind == reply_kind::ok); // the other buckets work
    CHECK(a.get("apple", "k").value == "2");
    OTPKV_CHECK_EXCHANGE(client, "GET nut k\r\n", "ERROR node B unavailable\r\n");
    OTPKV_CHECK_EXCHANGE(client, "GET apple k\r\n", "2\r\nOK\r\n"); // the connection goes on
    OTPKV_CHECK_EXCHANGE(client, "SUBSCRIBE nut\r\n", "ERROR node B unavailable\r\n");
    OTPKV_CHECK_EXCHANGE(client, "GET apple k\r\n", "2\r\nOK\r\n");

    n.server_b = serve(n.router_b, port_b); // B is back, with its buckets
    CHECK(eventually([&] { return a.status("B") == node_status::up; }));
    CHECK(a.get("nut", "k").value == "1");
    OTPKV_CHECK_EXCHANGE(client, "GET nut k\r\n", "1\r\nOK\r\n");
    CHECK(events.take(2) == std::vector<std::string>{"B down", "B up"});
}

TEST_CASE("router_handler: a peer's connection runs everything here; a client's is forwarded") {
    two_nodes n;
    REQUIRE(n.router_a->create("nut").kind == reply_kind::ok); // on B
    REQUIRE(n.router_a->put("nut", "k", "fromB").kind == reply_kind::ok);

    kv_client peer(n.server_a->port());
    REQUIRE(otpkv_test::handshake_as(peer, "B", "A", otpkv_test::test_cookie));
    // Each request comes tagged with its id, and its reply behind the header naming it.
    OTPKV_CHECK_EXCHANGE(peer, tagged("GET nut k\r\n", 1), answered("NOT FOUND\r\n", 1));
    OTPKV_CHECK_EXCHANGE(peer, tagged("CREATE nut\r\n", 2), answered("OK\r\n", 2));
    CHECK(n.reg_a->lookup("nut") != nullptr);
    OTPKV_CHECK_EXCHANGE(peer, tagged("PUT nut k fromA\r\n", 3), answered("OK\r\n", 3));
    OTPKV_CHECK_EXCHANGE(peer, tagged("GET nut k\r\n", 4), answered("fromA\r\nOK\r\n", 4));
    // No route: still local.
    OTPKV_CHECK_EXCHANGE(peer, tagged("GET zebra k\r\n", 5), answered("NOT FOUND\r\n", 5));
    OTPKV_CHECK_EXCHANGE(peer, tagged("BOGUS\r\n", 6), answered("UNKNOWN COMMAND\r\n", 6));
    OTPKV_CHECK_EXCHANGE(peer, "18446744073709551615\r\n",
                         "=18446744073709551615\r\nUNKNOWN COMMAND\r\n"); // a heartbeat
    // A line whose first token is no id (none, 0, past 2^64-1, a leading zero) does not run:
    // `ERROR internal`, and the connection is closed.
    for (const std::string bad :
         {"CREATE apple\r\n", "0 CREATE apple\r\n", "18446744073709551616 CREATE apple\r\n",
          "01 CREATE apple\r\n", "=1 CREATE apple\r\n"}) {
        INFO(bad);
        kv_client p2(n.server_a->port());
        REQUIRE(otpkv_test::handshake_as(p2, "B", "A", otpkv_test::test_cookie));
        OTPKV_CHECK_EXCHANGE(p2, bad + "1 CREATE apple\r\n", "ERROR internal\r\n");
        CHECK(p2.read_to_eof() == "");
    }
    CHECK(n.reg_a->lookup("apple") == nullptr);
    CHECK(value_on(*n.reg_a, "nut", "k") == "fromA");
    CHECK(value_on(*n.reg_b, "nut", "k") == "fromB");

    kv_client client(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(client, "GET nut k\r\n", "fromB\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(client, "GET zebra k\r\n", "ERROR no route\r\n");
    OTPKV_CHECK_EXCHANGE(client, "GET apple k\r\n", "NOT FOUND\r\n");
    // Pipelined, forwarded and local replies interleave in request order.
    OTPKV_CHECK_EXCHANGE(
        client,
        "GET nut k\r\nGET zebra k\r\nCREATE apple\r\nPUT nut k 2\r\n"
        "PUT apple k 1\r\nGET nut k\r\nGET apple k\r\n",
        "fromB\r\nOK\r\nERROR no route\r\nOK\r\nOK\r\nOK\r\n2\r\nOK\r\n1\r\nOK\r\n");

    // A greeting that is not right is refused, and the connection closed.
    kv_client other(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(other, "OTPKV-PEER 2 x\r\n", "ERROR not a peer\r\n");
    CHECK(other.read_to_eof() == "");
    CHECK(value_on(*n.reg_a, "nut", "k") == "fromA");
}

TEST_CASE("router_handler: a handshake that fails gets ERROR not a peer and the close; nothing "
          "sent after it runs, and the log says why") {
    std::mutex mutex;
    std::vector<std::string> told;
    otpkv::client_options logged;
    logged.log = [&](const std::string& line) {
        const std::lock_guard lock(mutex);
        told.push_back(line);
    };
    two_nodes n(logged);
    const std::string refused = "ERROR not a peer\r\n";
    const std::string zeros(64, '0');
    const auto nonce = [] { return otpkv::detail::new_peer_nonce(); };
    // Each: what a client sends in one write; it gets exactly `refused`, then EOF.
    const std::vector<std::string> attempts = {
        "OTPKV-PEER 1 B\r\nCREATE apple1\r\n",                         // the old greeting
        "OTPKV-PEER 2 B\r\nCREATE apple2\r\n",                         // no nonce
        "OTPKV-PEER 2 B " + zeros.substr(1) + "\r\nCREATE apple3\r\n", // a short nonce
        "OTPKV-PEER 2 X " + nonce() + "\r\nCREATE apple4\r\n",         // not in A's table
        "OTPKV-PEER 2 A " + nonce() + "\r\nCREATE apple5\r\n",         // A itself
        "OTPKV-PROOF " + zeros + "\r\nCREATE apple6\r\n",              // a proof, no greeting
    };
    for (const std::string& attempt : attempts) {
        CAPTURE(attempt);
        kv_client c(n.server_a->port());
        REQUIRE(c.send_all(attempt));
        OTPKV_CHECK_BYTES(c.read_to_eof(), refused);
    }
    // A right greeting, then a wrong proof, or anything but a proof: refused after the answer.
    for (const std::string& second : {"OTPKV-PROOF " + zeros + "\r\n", "CREATE apple7\r\n"s,
                                      "OTPKV-PEER 2 B " + nonce() + "\r\n"}) {
        CAPTURE(second);
        kv_client c(n.server_a->port());
        REQUIRE(c.send_all(otpkv::peer_greeting_line("B", nonce()) + second + "CREATE apple8\r\n"));
        const std::string line = c.read_lines(1);
        const auto answer = otpkv::parse_peer_answer(line);
        REQUIRE(answer.has_value());
        CHECK(answer->name == "A");
        OTPKV_CHECK_BYTES(c.read_to_eof(), refused);
    }
    // A peer connection greeting again is refused too.
    kv_client twice(n.server_a->port());
    REQUIRE(otpkv_test::handshake_as(twice, "B", "A", otpkv_test::test_cookie));
    REQUIRE(twice.send_all(otpkv::peer_greeting_line("B", nonce()) + "CREATE apple9\r\n"));
    OTPKV_CHECK_BYTES(twice.read_to_eof(), refused);
    // None of the requests ran: a is A's, and A has no apple bucket.
    CHECK(n.reg_a->size() == 0);
    CHECK(n.reg_b->size() == 0);
    kv_client client(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(client, "GET apple1 k\r\n", "NOT FOUND\r\n");
    // Each refusal was told, with its reason.
    const std::lock_guard lock(mutex);
    REQUIRE(told.size() == attempts.size() + 4);
    CHECK(told[0].find("not a valid greeting: \"OTPKV-PEER 1 B\"") != std::string::npos);
    CHECK(told[3].find("node X is not in the routing table") != std::string::npos);
    CHECK(told[4].find("node A is not in the routing table") != std::string::npos);
    CHECK(told[6].find("node B gave a wrong proof") != std::string::npos);
    CHECK(told[7].find("node B sent \"CREATE apple7\" instead of its proof") != std::string::npos);
    CHECK(told[9].find("a peer's already") != std::string::npos);
}

TEST_CASE("router: nodes with different cookies cannot talk; with the same one they can") {
    auto reg_b = otpkv::registry::start();
    otpkv::router_options ob;
    ob.self = "B";
    ob.routes = {entry(0, 255, "B", 1), entry('a', 'a', "A", 1)};
    ob.cookie = "cookie-of-b";
    auto router_b = otpkv::router::start(reg_b, ob).value();
    auto server_b = serve(router_b);
    auto a = start_router("A", {entry('a', 'm', "A", 1), entry('n', 'y', "B", server_b->port())},
                          quick(60s));
    CHECK(a->call(parse("CREATE nut")) == "ERROR node B unavailable\r\n");
    CHECK(a->status("B") == node_status::down);
    CHECK(reg_b->size() == 0);

    // The same cookie: a new B on the same port, and A's retries find it.
    const std::uint16_t port = server_b->port();
    server_b->stop();
    router_b->stop();
    ob.cookie = otpkv_test::test_cookie;
    router_b = otpkv::router::start(reg_b, ob).value();
    server_b = serve(router_b, port);
    CHECK(eventually([&] { return a->call(parse("CREATE nut")) == "OK\r\n"; }));
    CHECK(reg_b->lookup("nut") != nullptr);
    server_b->stop();
    router_b->stop();
    a->stop();
}

TEST_CASE("router_handler: SUBSCRIBE on a peer's connection is acknowledged, then events follow") {
    two_nodes n;
    REQUIRE(n.router_a->create("nut").kind == reply_kind::ok); // on B only
    REQUIRE(n.reg_a->create("apple").has_value());

    kv_client sub(n.server_a->port());
    REQUIRE(otpkv_test::handshake_as(sub, "B", "A", otpkv_test::test_cookie));
    OTPKV_CHECK_EXCHANGE(sub, tagged("SUBSCRIBE missing\r\n", 1), answered("NOT FOUND\r\n", 1));
    // Local, never relayed.
    OTPKV_CHECK_EXCHANGE(sub, tagged("SUBSCRIBE nut\r\n", 2), answered("NOT FOUND\r\n", 2));
    OTPKV_CHECK_EXCHANGE(sub, tagged("SUBSCRIBE apple\r\n", 3), answered("SUBSCRIBED\r\n", 3));

    kv_client pub(n.server_a->port());
    REQUIRE(otpkv_test::handshake_as(pub, "B", "A", otpkv_test::test_cookie));
    OTPKV_CHECK_EXCHANGE(pub, tagged("PUT apple eggs 3\r\n"), answered("OK\r\n"));
    OTPKV_CHECK_EXCHANGE(pub, tagged("DELETE apple eggs\r\n", 2), answered("OK\r\n", 2));
    n.reg_a->lookup("apple")->put("milk", "1");
    // Each event tagged with its stream's id.
    OTPKV_CHECK_RECEIVES(sub, "*3 eggs SET TO 3\r\n*3 eggs DELETED\r\n*3 milk SET TO 1\r\n");
    // The connection goes on serving requests, and more streams.
    OTPKV_CHECK_EXCHANGE(sub, tagged("GET apple milk\r\n", 4), answered("1\r\nOK\r\n", 4));
    OTPKV_CHECK_EXCHANGE(sub, tagged("SUBSCRIBE apple\r\n", 5), answered("SUBSCRIBED\r\n", 5));
    OTPKV_CHECK_EXCHANGE(pub, tagged("PUT apple k v\r\n", 3), answered("OK\r\n", 3));
    OTPKV_CHECK_RECEIVES(sub, "*3 k SET TO v\r\n*5 k SET TO v\r\n");
    // UNSUBSCRIBE: answered, then `!<id>` after the stream's last event; the other goes on.
    OTPKV_CHECK_EXCHANGE(sub, tagged("UNSUBSCRIBE 3\r\n", 6), answered("OK\r\n", 6) + "!3\r\n");
    OTPKV_CHECK_EXCHANGE(pub, tagged("DELETE apple k\r\n", 4), answered("OK\r\n", 4));
    OTPKV_CHECK_RECEIVES(sub, "*5 k DELETED\r\n");
    OTPKV_CHECK_EXCHANGE(sub, tagged("UNSUBSCRIBE 3\r\n", 7), answered("OK\r\n", 7)); // gone
    // The bucket exiting ends its streams with `!<id>`; the connection stays open.
    n.reg_a->lookup("apple")->stop();
    OTPKV_CHECK_RECEIVES(sub, "!5\r\n");
    OTPKV_CHECK_EXCHANGE(sub, tagged("GET apple milk\r\n", 8), answered("NOT FOUND\r\n", 8));
}

TEST_CASE("router: a relayed SUBSCRIBE streams the owner's events until either side ends it") {
    otpkv::client_options options;
    options.connections = 1;
    two_nodes n(options);
    auto& a = *n.router_a;
    REQUIRE(a.create("nut").kind == reply_kind::ok);
    kv_client pub(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(pub, "PUT nut warm up\r\n", "OK\r\n");
    REQUIRE(eventually([&] { return n.server_b->stats().connections == 1; })); // A's pool
    const std::size_t pool = n.server_b->stats().connections;

    kv_client sub(n.server_a->port());
    int counter = 0;
    otpkv_test::subscribe_synced(sub, pub, "nut", counter);
    CHECK(n.server_b->stats().connections == pool); // multiplexed over the pool
    OTPKV_CHECK_EXCHANGE(pub, "PUT nut eggs 3\r\n", "OK\r\n");
    OTPKV_CHECK_EXCHANGE(pub, "DELETE nut eggs\r\n", "OK\r\n");
    n.reg_b->lookup("nut")->put("milk", "2"); // at the owner itself
    OTPKV_CHECK_RECEIVES(sub, "eggs SET TO 3\r\neggs DELETED\r\nmilk SET TO 2\r\n");
    REQUIRE(sub.send_all("GET nut milk\r\n")); // ignored, as on a local subscription
    CHECK(sub.read_for(100ms) == "");

    // The subscriber leaving cancels A's stream at B; the pool stays. (A close looks like a
    // half-close, after which a client's subscription still gets its events: A learns of it
    // at the next event.)
    sub.close();
    OTPKV_CHECK_EXCHANGE(pub, "PUT nut eggs 4\r\n", "OK\r\n");
    CHECK(n.server_b->stats().connections == pool);

    // A bucket B does not have: NOT FOUND, and the connection goes on as a client's.
    kv_client c(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(c, "SUBSCRIBE nothing\r\n", "NOT FOUND\r\n");
    OTPKV_CHECK_EXCHANGE(c, "GET nut milk\r\n", "2\r\nOK\r\n");
    CHECK(eventually([&] { return n.server_b->stats().connections == pool; }));

    // The bucket exiting at the owner ends the stream: the subscriber's connection closes.
    kv_client sub2(n.server_a->port());
    otpkv_test::subscribe_synced(sub2, pub, "nut", counter);
    n.reg_b->lookup("nut")->stop();
    CHECK(sub2.read_to_eof(5s) == "");
    CHECK(sub2.end() == kv_client::ending::eof);
    CHECK(eventually([&] { return n.server_b->stats().connections == pool; }));

    // Stopping A's router ends the relayed streams too, and closes the pool.
    REQUIRE(a.create("nuts").kind == reply_kind::ok);
    kv_client sub3(n.server_a->port());
    otpkv_test::subscribe_synced(sub3, pub, "nuts", counter);
    CHECK(n.server_b->stats().connections == pool);
    a.stop();
    CHECK(sub3.read_to_eof(5s) == "");
    CHECK(sub3.end() == kv_client::ending::eof);
    CHECK(eventually([&] { return n.server_b->stats().connections == 0; }));
}

TEST_CASE("router_handler: idle_timeout never closes a peer's connection, nor a relayed stream") {
    // B (the owner) and A (which forwards n-y to B) close idle client connections after
    // 300 ms; A sends B no heartbeats, so its pooled connection is silent between requests.
    otpkv::server_options fast_idle;
    fast_idle.port = 0;
    fast_idle.threads = 2;
    fast_idle.idle_timeout = 300ms;
    auto reg_b = otpkv::registry::start();
    auto router_b = start_router("B", {entry(0, 255, "B", 1), entry('a', 'a', "A", 1)}, {}, reg_b);
    auto started_b = otpkv::server::start(otpkv::router_handler(router_b), fast_idle);
    REQUIRE(started_b.has_value());
    const auto server_b = std::move(started_b).value();
    otpkv::client_options client;
    client.connections = 1;
    client.heartbeat = 0ms;
    auto router_a = start_router(
        "A", {entry('a', 'm', "A", 1), entry('n', 'y', "B", server_b->port())}, client);
    auto started_a = otpkv::server::start(otpkv::router_handler(router_a), fast_idle);
    REQUIRE(started_a.has_value());
    const auto server_a = std::move(started_a).value();

    REQUIRE(router_a->create("nut").kind == reply_kind::ok); // on B, through the pool
    REQUIRE(eventually([&] { return server_b->stats().connections == 1; }));
    kv_client sub(server_a->port());
    {
        kv_client pub(server_a->port());
        int counter = 0;
        otpkv_test::subscribe_synced(sub, pub, "nut", counter);
    }
    // The stream is relayed over the pool: still one connection.
    CHECK(eventually([&] { return server_b->stats().connections == 1; }));
    const std::size_t accepted = server_b->stats().accepted;

    // Five timeouts of silence everywhere.
    std::this_thread::sleep_for(1500ms);
    CHECK(server_b->stats().idle_closed == 0);
    CHECK(server_b->stats().connections == 1);
    CHECK(server_b->stats().accepted == accepted); // nothing was cut and opened again
    CHECK(server_a->stats().idle_closed == 0);     // the relayed stream stays
    REQUIRE(router_a->put("nut", "k", "v").kind == reply_kind::ok);
    OTPKV_CHECK_RECEIVES(sub, "k SET TO v\r\n");
    CHECK(server_b->stats().accepted == accepted);

    // A plain client of B is cut as usual.
    kv_client plain(server_b->port());
    CHECK(plain.read_to_eof().empty());
    CHECK(plain.end() == kv_client::ending::eof);
    CHECK(server_b->stats().idle_closed == 1);
    server_a->stop();
    router_a->stop();
    server_b->stop();
    router_b->stop();
}

TEST_CASE("router_handler: a relayed ERROR internal closes the client's connection as well") {
    fake_peer peer("n2");
    auto r = start_router("A", {entry('a', 'm', "A", 1), entry('n', 'z', "n2", peer.port())},
                          quick(60s));
    auto srv = serve(r);
    kv_client c(srv->port());
    OTPKV_CHECK_EXCHANGE(c, "GET nut k\r\n", "k\r\nOK\r\n");
    REQUIRE(c.send_all("GET nut internal\r\nGET nut after\r\n"));
    CHECK(c.read_to_eof(5s) == "ERROR internal\r\n"); // nothing runs after it
    CHECK(c.end() == kv_client::ending::eof);
    // The peer closed its connection after that reply, and the router's client opens a new
    // one once it reads the close. A request handed over before that would go out on the
    // closed connection and fail as unavailable: wait for the new connection first.
    CHECK(eventually([&] { return peer.stats().accepted == 2; }));
    kv_client d(srv->port());
    OTPKV_CHECK_EXCHANGE(d, "GET nut k2\r\n", "k2\r\nOK\r\n");
    srv->stop();
    r->stop();
}

TEST_CASE("router: stop fails the requests in flight as unavailable; later calls answer at once") {
    fake_peer peer("n2");
    peer.set_mode(fake_peer::mode::hang);
    auto options = quick(60s); // no request times out during the test: only the stop fails them
    options.connections = 2;
    auto r =
        start_router("A", {entry('a', 'm', "A", 1), entry('n', 'z', "n2", peer.port())}, options);
    auto srv = serve(r);

    journal replies;
    for (int i = 0; i < 10; ++i) {
        r->send(
            parse("GET nut k" + std::to_string(i)),
            [&replies](std::string reply) { replies.add(std::move(reply)); },
            static_cast<std::uint64_t>(i));
    }
    kv_client c(srv->port());
    REQUIRE(c.send_all("GET nut through-server\r\n"));
    REQUIRE(eventually([&] { return peer.requests().size() == 11; }));
    CHECK(replies.size() == 0); // all in flight

    // Stopped, not killed after its 5 s shutdown timeout; and every request in flight failed
    // by the time it returned (by the stop: their own timeouts are a minute away).
    CHECK(r->stop() == otpkv::exit_reason::shutdown());
    CHECK_FALSE(r->alive());
    CHECK(replies.take() == std::vector<std::string>(10, "ERROR node n2 unavailable\r\n"));
    OTPKV_CHECK_RECEIVES(c, "ERROR node n2 unavailable\r\n");

    // Later requests are answered before `send` returns.
    std::string at_once;
    r->send(parse("GET nut k"), [&](std::string reply) { at_once = std::move(reply); });
    CHECK(at_once == "ERROR node n2 unavailable\r\n");
    CHECK(r->call(parse("GET nut k")) == "ERROR node n2 unavailable\r\n");
    CHECK(r->get("nut", "k").error == error_code::node_unavailable);
    CHECK(r->call(parse("CREATE apple")) == "OK\r\n"); // local buckets need no connection
    CHECK(r->get("apple", "k").bytes == "\r\nOK\r\n");
    CHECK(r->call(parse("GET zebra k")) == "ERROR node n2 unavailable\r\n");
    CHECK(r->call(parse("GET Zebra k")) == "ERROR no route\r\n");
    OTPKV_CHECK_EXCHANGE(c, "GET nut k\r\n", "ERROR node n2 unavailable\r\n");
    OTPKV_CHECK_EXCHANGE(c, "GET apple k\r\n", "\r\nOK\r\n");
    srv->stop();
}

TEST_CASE("kv_server: an owner that sends one extra reply line cannot shift another client's "
          "reply: that client gets ERROR node n2 unavailable, never the other's value") {
    // n2 is a fake owner that holds its replies back and then answers `GET b extra` twice;
    // n1 is a real kv_server whose table sends every bucket to it.
    fake_peer owner("n2", otpkv_test::process_cookie);
    owner.set_mode(fake_peer::mode::hang);
    kv_process n1({"--node", "n1", "--route", "a-z=n2@127.0.0.1:" + std::to_string(owner.port())});
    // n1 pools its connections to n2 by client connection: open clients until the attacker's
    // and the victim's requests share one, so the extra line lands where it would hurt.
    kv_client attacker(n1.port());
    REQUIRE(attacker.send_all("GET b extra\r\n"));
    REQUIRE(eventually([&] { return owner.requests().size() == 1; }));
    const std::uint64_t shared = owner.requests()[0].connection;
    std::vector<kv_client> others;
    std::optional<kv_client> victim;
    for (int i = 0; i < 8 && !victim; ++i) {
        kv_client c(n1.port());
        const std::size_t before = owner.requests().size();
        REQUIRE(c.send_all("GET b mine\r\n"));
        REQUIRE(eventually([&] { return owner.requests().size() == before + 1; }));
        if (owner.requests().back().connection == shared) {
            victim.emplace(std::move(c));
        } else {
            others.push_back(std::move(c));
        }
    }
    REQUIRE(victim.has_value());
    owner.release(); // `extra\r\nOK\r\n` twice on the shared connection, then `mine`'s reply
    OTPKV_CHECK_RECEIVES(attacker, "extra\r\nOK\r\n");
    OTPKV_CHECK_RECEIVES(*victim, "ERROR node n2 unavailable\r\n");
    CHECK(victim->read_for(100ms).empty()); // nothing else, and never `extra`
    for (kv_client& c : others) {
        OTPKV_CHECK_RECEIVES(c, "mine\r\nOK\r\n"); // other connections are unaffected
    }
    // n1 says what happened, and serves again over a new connection.
    owner.set_mode(fake_peer::mode::answer);
    CHECK(eventually(
        [&] { return kv_client(n1.port()).exchange("GET b again\r\n", 11) == "again\r\nOK\r\n"; }));
    const otpkv_test::exit_status st = n1.stop();
    CHECK_MESSAGE(st.clean(), st.describe());
    CHECK_MESSAGE(st.err.find(" warning event=peer_protocol_error node=n2 address=127.0.0.1:" +
                              std::to_string(owner.port()) + " reason=\"answered request ") !=
                      std::string::npos,
                  st.err);
}

// ---------------------------------------------------------------------------------------
// INFO [SECTION] [NODE]
// ---------------------------------------------------------------------------------------

namespace {

// `fetch_info`, waited for (bounded).
otpkv::info_reply fetch(otpkv::router& r, std::string node, std::string section) {
    auto done = std::make_shared<std::promise<otpkv::info_reply>>();
    auto got = done->get_future();
    r.fetch_info(std::move(node), std::move(section),
                 [done](otpkv::info_reply reply) { done->set_value(std::move(reply)); });
    REQUIRE(got.wait_for(10s) == std::future_status::ready);
    return got.get();
}

} // namespace

TEST_CASE("router_handler: INFO with no node, or naming this one, answers the provider's lines "
          "then OK, byte for byte, in request order") {
    std::atomic<int> calls{0};
    auto r = start_router("A", {entry('a', 'm', "A", 1), entry('n', 'y', "n2", 1)}, quick(60s),
                          otpkv::registry::start(), [&calls](std::string_view section) {
                              ++calls;
                              return info_lines("A", section);
                          });
    auto srv = serve(r);
    kv_client c(srv->port());
    OTPKV_CHECK_EXCHANGE(c, "INFO\r\n", "node:A\r\nsection:\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO tree\r\n", "node:A\r\nsection:tree\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO JSON A\r\n", "node:A\r\nsection:JSON\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "  INFO\tA \r\n", "node:A\r\nsection:\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO STATS\r\n", info_lines("A", "STATS") + "OK\r\n");
    CHECK(calls == 5);
    // Pipelined with other requests: each reply in its place.
    OTPKV_CHECK_EXCHANGE(c, "CREATE apple\r\nINFO cluster\r\nGET apple k\r\nINFO server A\r\n",
                         "OK\r\nnode:A\r\nsection:cluster\r\nOK\r\n\r\nOK\r\n"
                         "node:A\r\nsection:server\r\nOK\r\n");
    CHECK(calls == 7);
    // What is not an INFO is an unknown command, as before; the provider is not asked.
    OTPKV_CHECK_EXCHANGE(c, "INFO A TREE\r\nINFO TREE A x\r\ninfo\r\nINFO A@h\r\n",
                         "UNKNOWN COMMAND\r\nUNKNOWN COMMAND\r\nUNKNOWN COMMAND\r\n"
                         "UNKNOWN COMMAND\r\n");
    // A node the table does not have: no route; the connection goes on.
    OTPKV_CHECK_EXCHANGE(c, "INFO nobody\r\nINFO TREE nobody\r\nGET apple k\r\n",
                         "ERROR no route\r\nERROR no route\r\n\r\nOK\r\n");
    CHECK(calls == 7);
    // The host API: the same bytes.
    CHECK(r->call(parse("INFO tree")) == "node:A\r\nsection:tree\r\nOK\r\n");
    CHECK(r->call(parse("INFO TREE A")) == "node:A\r\nsection:TREE\r\nOK\r\n");
    CHECK(r->call(parse("INFO nobody")) == "ERROR no route\r\n");
    srv->stop();
    r->stop();
}

TEST_CASE("router_handler: a provider's last line gets its line end; no provider: UNKNOWN "
          "COMMAND") {
    auto unended = start_router("A", {}, {}, otpkv::registry::start(),
                                [](std::string_view) { return std::string("a\r\nb"); });
    auto empty = start_router("A", {}, {}, otpkv::registry::start(),
                              [](std::string_view) { return std::string(); });
    auto none = start_router("A", {});
    CHECK(unended->call(parse("INFO")) == "a\r\nb\r\nOK\r\n");
    CHECK(empty->call(parse("INFO")) == "OK\r\n");
    CHECK(none->call(parse("INFO")) == "UNKNOWN COMMAND\r\n");
    CHECK(none->call(parse("INFO TREE A")) == "UNKNOWN COMMAND\r\n");
    CHECK(none->call(parse("INFO n2")) == "ERROR no route\r\n"); // a table without n2
    auto srv = serve(none);
    kv_client c(srv->port());
    OTPKV_CHECK_EXCHANGE(c, "INFO\r\nCREATE apple\r\n", "UNKNOWN COMMAND\r\nOK\r\n");
    srv->stop();
}

TEST_CASE("router: INFO naming another node is forwarded to it and its reply relayed byte for "
          "byte; a peer's INFO always runs here") {
    two_nodes n({}, true);
    kv_client c(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(c, "INFO TREE B\r\n", "node:B\r\nsection:TREE\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO B\r\n", "node:B\r\nsection:\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO json B\r\n", "node:B\r\nsection:json\r\nOK\r\n");
    // About 50 KB: many reads at A, relayed whole.
    OTPKV_CHECK_EXCHANGE(c, "INFO STATS B\r\n", info_lines("B", "STATS") + "OK\r\n");
    // Interleaved with local and forwarded requests, pipelined: in request order.
    OTPKV_CHECK_EXCHANGE(c,
                         "CREATE nut\r\nINFO CLUSTER B\r\nINFO CLUSTER\r\nPUT nut k v\r\n"
                         "INFO STATS B\r\nGET nut k\r\n",
                         "OK\r\nnode:B\r\nsection:CLUSTER\r\nOK\r\nnode:A\r\nsection:CLUSTER\r\n"
                         "OK\r\nOK\r\n" +
                             info_lines("B", "STATS") + "OK\r\nv\r\nOK\r\n");
    CHECK(n.router_a->call(parse("INFO SERVER B")) == "node:B\r\nsection:SERVER\r\nOK\r\n");
    CHECK(n.router_a->snapshot().peers.at(0).requests >= 7);

    // On a peer's connection, INFO runs here whatever node it names: never forwarded again.
    kv_client peer(n.server_a->port());
    REQUIRE(otpkv_test::handshake_as(peer, "B", "A", otpkv_test::test_cookie));
    OTPKV_CHECK_EXCHANGE(peer, tagged("INFO TREE\r\n", 1),
                         answered("node:A\r\nsection:TREE\r\nOK\r\n", 1));
    OTPKV_CHECK_EXCHANGE(peer, tagged("INFO TREE B\r\n", 2),
                         answered("node:A\r\nsection:TREE\r\nOK\r\n", 2));
    OTPKV_CHECK_EXCHANGE(peer, tagged("INFO nobody\r\n", 3),
                         answered("node:A\r\nsection:\r\nOK\r\n", 3));
}

TEST_CASE("router: INFO to a node that is down or does not answer is ERROR node <name> "
          "unavailable within the request timeout; the other buckets are served") {
    two_nodes n(quick(60s), true); // a stopped node refuses at once: nothing waits for 60 s
    REQUIRE(n.router_a->create("nut").kind == reply_kind::ok);
    REQUIRE(n.router_a->create("apple").kind == reply_kind::ok);
    kv_client c(n.server_a->port());
    n.server_b->stop();
    const auto start = std::chrono::steady_clock::now();
    OTPKV_CHECK_EXCHANGE(c, "INFO TREE B\r\n", "ERROR node B unavailable\r\n");
    CHECK(std::chrono::steady_clock::now() - start < 5s); // not the client's 10 s wait
    CHECK(eventually([&] { return n.router_a->status("B") == node_status::down; }));
    // Known down: at once, also through the host API; the rest goes on.
    OTPKV_CHECK_EXCHANGE(c, "INFO B\r\nGET apple k\r\nINFO\r\nGET nut k\r\n",
                         "ERROR node B unavailable\r\n\r\nOK\r\nnode:A\r\nsection:\r\nOK\r\n"
                         "ERROR node B unavailable\r\n");
    CHECK(n.router_a->call(parse("INFO json B")) == "ERROR node B unavailable\r\n");

    // A node that hangs: the request times out (request_timeout 250 ms), the node is down.
    fake_peer hung("n2");
    hung.set_mode(fake_peer::mode::hang);
    auto r = start_router("A", {entry('a', 'm', "A", 1), entry('n', 'z', "n2", hung.port())},
                          quick(250ms), otpkv::registry::start(), info_of("A"));
    auto srv = serve(r);
    kv_client d(srv->port());
    const auto asked = std::chrono::steady_clock::now();
    OTPKV_CHECK_EXCHANGE(d, "INFO TREE n2\r\n", "ERROR node n2 unavailable\r\n");
    CHECK(std::chrono::steady_clock::now() - asked < 5s);
    OTPKV_CHECK_EXCHANGE(d, "CREATE apple\r\nINFO TREE\r\n",
                         "OK\r\nnode:A\r\nsection:TREE\r\nOK\r\n");
    srv->stop();
    r->stop();
}

TEST_CASE("router: the owner is asked INFO [SECTION] without the node; a reply past "
          "max_info_reply is cut, the request fails as unavailable, and the log says why") {
    fake_peer peer("n2");
    otpkv_test::event_recorder events;
    auto options = quick(60s);
    options.max_info_reply = 64 * 1024;
    auto r = start_router("A", {entry('a', 'm', "A", 1), entry('n', 'z', "n2", peer.port())},
                          options, otpkv::registry::start(), {}, events.logger());
    auto srv = serve(r);
    kv_client c(srv->port());
    peer.set_info_reply("line one\r\n\r\nline three\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO TREE n2\r\n", "line one\r\n\r\nline three\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO n2\r\n", "line one\r\n\r\nline three\r\nOK\r\n");
    const auto lines = peer.requests();
    REQUIRE(lines.size() == 2);
    CHECK(lines[0].text == "INFO TREE");
    CHECK(lines[1].text == "INFO");
    // The owner's refusals are relayed as they are.
    peer.set_info_reply("UNKNOWN COMMAND\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO n2\r\nGET nut k\r\n", "UNKNOWN COMMAND\r\nk\r\nOK\r\n");
    // Just under the cap, whole: relayed.
    std::string big;
    while (big.size() < 60 * 1024) {
        big += "a line of the reply, " + std::to_string(big.size()) + "\r\n";
    }
    peer.set_info_reply(big + "OK\r\n");
    OTPKV_CHECK_EXCHANGE(c, "INFO STATS n2\r\n", big + "OK\r\n");
    CHECK(events.events("peer_protocol_error").empty());

    // Past it, with no OK: lines, or one line that never ends.
    std::string lines_without_end;
    while (lines_without_end.size() < 200 * 1024) {
        lines_without_end += "more\r\n";
    }
    std::size_t cut = 0;
    for (const std::string& endless : {lines_without_end, std::string(200 * 1024, 'x')}) {
        CAPTURE(endless.size());
        peer.set_info_reply(endless);
        const std::size_t accepted = peer.stats().accepted;
        OTPKV_CHECK_EXCHANGE(c, "INFO n2\r\n", "ERROR node n2 unavailable\r\n");
        ++cut;
        REQUIRE(events.wait_for("peer_protocol_error", cut));
        const auto told = events.events("peer_protocol_error").back();
        CHECK(told.level == otpkv::log_level::warning);
        CHECK(told.reason == "sent an INFO reply longer than max_info_reply");
        CHECK(otpkv_test::event_recorder::field(told, "node") == "n2");
        CHECK(otpkv_test::event_recorder::field(told, "address") ==
              "127.0.0.1:" + std::to_string(peer.port()));
        // The connection was closed, and a new one serves again.
        CHECK(eventually([&] { return peer.stats().accepted == accepted + 1; }));
        peer.set_info_reply("OK\r\n");
        OTPKV_CHECK_EXCHANGE(c, "GET nut k\r\nINFO n2\r\n", "k\r\nOK\r\nOK\r\n");
    }
    const otpkv::router_snapshot snap = r->snapshot();
    REQUIRE(snap.peers.size() == 1);
    CHECK(snap.peers[0].failures == 2);
    CHECK(snap.peers[0].last_error == "sent an INFO reply longer than max_info_reply");
    srv->stop();
    r->stop();
}

TEST_CASE("router: the default max_info_reply (4 MiB) cuts an endless INFO reply") {
    fake_peer peer("n2");
    auto r = start_router("A", {entry('n', 'z', "n2", peer.port())}, quick(60s));
    CHECK(otpkv::client_options{}.max_info_reply == std::size_t{4} << 20);
    std::string five_mib;
    five_mib.reserve(5U << 20);
    while (five_mib.size() < (5U << 20)) {
        five_mib += "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n";
    }
    peer.set_info_reply(five_mib);
    CHECK(r->call(parse("INFO n2")) == "ERROR node n2 unavailable\r\n");
    five_mib.resize((4U << 20) - 64); // whole lines of 64 bytes
    five_mib += "OK\r\n";             // a whole reply of 4 MiB - 60 passes
    REQUIRE(five_mib.size() == (4U << 20) - 60);
    peer.set_info_reply(five_mib);
    CHECK(eventually([&] { return r->call(parse("INFO n2")) == five_mib; }));
    r->stop();
}

TEST_CASE("router: fetch_info gives a node's lines, or why not, from any thread") {
    two_nodes n({}, true);
    auto& a = *n.router_a;
    auto here = fetch(a, "", "TREE");
    CHECK(here.ok);
    CHECK(here.lines == "node:A\r\nsection:TREE\r\n");
    CHECK(here.bytes == "node:A\r\nsection:TREE\r\nOK\r\n");
    CHECK(here.error.empty());
    CHECK(fetch(a, "A", "").lines == "node:A\r\nsection:\r\n");
    auto there = fetch(a, "B", "json");
    CHECK(there.ok);
    CHECK(there.lines == "node:B\r\nsection:json\r\n");
    std::optional<otpkv::info_reply> from_thread;
    std::thread([&] { from_thread = fetch(a, "B", "STATS"); }).join();
    REQUIRE(from_thread.has_value());
    CHECK(from_thread->lines == info_lines("B", "STATS"));

    auto nowhere = fetch(a, "nobody", "");
    CHECK_FALSE(nowhere.ok);
    CHECK(nowhere.error == "no route");
    CHECK(nowhere.bytes == "ERROR no route\r\n");
    for (const auto& asked : std::vector<std::pair<std::string, std::string>>{{"B", "bogus"},
                                                                              {"B b", ""},
                                                                              {"", "TREE JSON"},
                                                                              {"n@x", ""},
                                                                              {"", "TREE\r\n"},
                                                                              {"B\r\nGET", ""}}) {
        CAPTURE(asked.first);
        CAPTURE(asked.second);
        auto bad = fetch(a, asked.first, asked.second);
        CHECK_FALSE(bad.ok);
        CHECK(bad.error == "UNKNOWN COMMAND");
        CHECK(bad.lines.empty());
    }
    CHECK(fetch(*n.router_b, "", "").lines == "node:B\r\nsection:\r\n");

    n.server_b->stop();
    auto down = fetch(a, "B", "JSON");
    CHECK_FALSE(down.ok);
    CHECK(down.error == "node B unavailable");
    CHECK(down.bytes == "ERROR node B unavailable\r\n");
    // Without a provider: UNKNOWN COMMAND, as from a node that does not know INFO.
    auto none = start_router("C", {});
    auto unknown = fetch(*none, "", "");
    CHECK_FALSE(unknown.ok);
    CHECK(unknown.error == "UNKNOWN COMMAND");
}

// ---------------------------------------------------------------------------------------
// snapshot and events
// ---------------------------------------------------------------------------------------

TEST_CASE("router: snapshot shows the table and each other node: up or down, in flight, "
          "forwarded, failed, connections, last error") {
    fake_peer peer("n3");
    auto options = quick(60s);
    options.connections = 2;
    two_nodes n(options);
    auto& a = *n.router_a;
    otpkv::router_snapshot snap = a.snapshot();
    CHECK(snap.node == "A");
    CHECK(snap.routes ==
          std::vector<std::string>{"a-m=A@127.0.0.1:1",
                                   "n-y=B@127.0.0.1:" + std::to_string(n.server_b->port())});
    REQUIRE(snap.peers.size() == 1);
    CHECK(snap.peers[0].name == "B");
    CHECK(snap.peers[0].address == "127.0.0.1:" + std::to_string(n.server_b->port()));
    CHECK_FALSE(snap.peers[0].up); // never connected
    CHECK(snap.peers[0].requests == 0);
    CHECK(snap.peers[0].connections == 0);
    CHECK(snap.peers[0].last_error.empty());
    CHECK(snap.peers_refused == 0);

    REQUIRE(a.create("nut").kind == reply_kind::ok);
    REQUIRE(a.put("nut", "k", "v").kind == reply_kind::ok);
    REQUIRE(a.create("apple").kind == reply_kind::ok); // local: not counted
    snap = a.snapshot();
    CHECK(snap.peers[0].up);
    CHECK(snap.peers[0].requests == 2);
    CHECK(snap.peers[0].failures == 0);
    CHECK(snap.peers[0].in_flight == 0);
    CHECK(snap.peers[0].connections == 1); // affinity 0: one of the pool's two
    a.connect_all();
    CHECK(eventually([&] { return a.snapshot().peers[0].connections == 2; }));

    // Down: a request sent to it fails and is counted, with why; one refused at once, the
    // node being known down already (its connections' close may be seen first, on a busy
    // machine), never leaves and is not counted. Either way, the counts agree.
    const std::uint16_t port_b = n.server_b->port();
    n.server_b->stop();
    CHECK(a.get("nut", "k").error == error_code::node_unavailable);
    CHECK(eventually([&] { return !a.snapshot().peers[0].up; }));
    snap = a.snapshot();
    CHECK(snap.peers[0].connections == 0);
    const std::size_t sent = snap.peers[0].requests;
    CHECK(
        ((sent == 3 && snap.peers[0].failures == 1) || (sent == 2 && snap.peers[0].failures == 0)));
    CHECK(snap.peers[0].in_flight == 0);
    CHECK_FALSE(snap.peers[0].last_error.empty());
    CHECK(a.get("nut", "k").error == error_code::node_unavailable);
    CHECK(a.snapshot().peers[0].requests == sent);
    // Up again.
    n.server_b = serve(n.router_b, port_b);
    CHECK(eventually([&] { return a.snapshot().peers[0].up; }));
    CHECK(a.get("nut", "k").value == "v");

    // In flight: a node that holds its replies back.
    peer.set_mode(fake_peer::mode::hang);
    auto r = start_router("A", {entry('n', 'z', "n3", peer.port())}, quick(60s));
    journal replies;
    for (int i = 0; i < 3; ++i) {
        r->send(parse("GET nut k" + std::to_string(i)),
                [&replies](std::string reply) { replies.add(std::move(reply)); });
    }
    CHECK(eventually([&] { return r->snapshot().peers[0].in_flight == 3; }));
    CHECK(r->snapshot().peers[0].requests == 3);
    // Sent is not yet received: release only once the peer holds all three (a reply the
    // peer holds after `release` would stay held).
    CHECK(eventually([&] { return peer.requests().size() == 3; }));
    peer.release();
    CHECK(replies.take(3).size() == 3);
    CHECK(eventually([&] { return r->snapshot().peers[0].in_flight == 0; }));
    CHECK(r->snapshot().peers[0].failures == 0);
    r->stop();
}

TEST_CASE("router: node_up and node_down are logged once per transition, with the reason, "
          "never per failed request or retry") {
    fake_peer peer("n2");
    otpkv_test::event_recorder events;
    auto r = start_router("A", {entry('n', 'z', "n2", peer.port())}, quick(60s),
                          otpkv::registry::start(), {}, events.logger());
    const std::string address = "127.0.0.1:" + std::to_string(peer.port());
    for (int i = 0; i < 5; ++i) {
        CHECK(r->call(parse("GET nut k")) == "k\r\nOK\r\n");
    }
    REQUIRE(events.wait_for("node_up", 1));
    const auto up = events.events("node_up").at(0);
    CHECK(up.level == otpkv::log_level::info);
    CHECK(otpkv_test::event_recorder::field(up, "node") == "n2");
    CHECK(otpkv_test::event_recorder::field(up, "address") == address);

    // Refused from now on: down once, refused once, however many retries and requests.
    peer.set_known(false);
    CHECK(r->call(parse("GET nut close")) == "close\r\nOK\r\n"); // its connection closes
    CHECK(eventually([&] { return peer.refused() >= 4; }));      // retried, refused each time
    for (int i = 0; i < 5; ++i) {
        CHECK(r->call(parse("GET nut k")) == "ERROR node n2 unavailable\r\n");
    }
    CHECK(events.summary() ==
          std::vector<std::string>{"node_up n2", "peer_refused n2", "node_down n2"});
    const auto down = events.events("node_down").at(0);
    CHECK(down.level == otpkv::log_level::warning);
    CHECK(down.reason == "refused the greeting (ERROR not a peer): this node is not in its "
                         "routing table");
    CHECK(otpkv_test::event_recorder::field(down, "address") == address);
    CHECK(events.events("peer_refused").at(0).reason == down.reason);

    peer.set_known(true);
    CHECK(eventually([&] { return r->status("n2") == node_status::up; }));
    REQUIRE(events.wait_for("node_up", 2));
    CHECK(r->call(parse("GET nut k")) == "k\r\nOK\r\n");
    CHECK(events.summary() ==
          std::vector<std::string>{"node_up n2", "peer_refused n2", "node_down n2", "node_up n2"});
    r->stop();
}

TEST_CASE("router_handler: refused handshakes are logged as peer_refused, at most one event per "
          "interval, whose count= says how many it stands for") {
    for (const std::chrono::milliseconds interval : {0ms, 3'600'000ms}) {
        CAPTURE(interval.count());
        otpkv_test::event_recorder events;
        otpkv::router_options o;
        o.self = "A";
        o.routes = {entry('a', 'm', "A", 1), entry('n', 'z', "B", 1)};
        o.cookie = otpkv_test::test_cookie;
        o.log = events.logger();
        o.refused_log_interval = interval;
        auto r = otpkv::router::start(otpkv::registry::start(), o).value();
        auto srv = serve(r);
        for (int i = 0; i < 5; ++i) {
            kv_client bad(srv->port());
            OTPKV_CHECK_EXCHANGE(bad, "OTPKV-PEER 2 X " + otpkv::detail::new_peer_nonce() + "\r\n",
                                 "ERROR not a peer\r\n");
            CHECK(bad.read_to_eof() == "");
        }
        CHECK(r->snapshot().peers_refused == 5);
        const auto told = events.events("peer_refused");
        REQUIRE(told.size() == (interval == 0ms ? 5U : 1U));
        for (const auto& e : told) {
            CHECK(e.level == otpkv::log_level::warning);
            CHECK(e.reason == "node X is not in the routing table");
            CHECK(otpkv_test::event_recorder::field(e, "count") == "1");
            CHECK_FALSE(otpkv_test::event_recorder::field(e, "connection").empty());
        }
        srv->stop();
        r->stop();
    }
    // A short interval: the refusals in between are told with the next event's count.
    otpkv_test::event_recorder events;
    otpkv::router_options o;
    o.self = "A";
    o.routes = {entry('n', 'z', "B", 1)};
    o.cookie = otpkv_test::test_cookie;
    o.log = events.logger();
    o.refused_log_interval = 50ms;
    auto r = otpkv::router::start(otpkv::registry::start(), o).value();
    auto srv = serve(r);
    std::size_t sent = 0;
    const auto counted = [&] {
        std::size_t sum = 0;
        bool aggregated = false;
        for (const auto& e : events.events("peer_refused")) {
            const std::size_t count = std::stoul(otpkv_test::event_recorder::field(e, "count"));
            sum += count;
            aggregated = aggregated || count > 1;
        }
        return std::pair{sum, aggregated};
    };
    CHECK(eventually([&] {
        kv_client bad(srv->port());
        bad.exchange("OTPKV-PROOF " + std::string(64, 'a') + "\r\n", 18);
        ++sent;
        return counted().second;
    }));
    CHECK(r->snapshot().peers_refused == sent);
    CHECK(counted().first <= sent);
    CHECK(events.events("peer_refused").size() < sent);
    srv->stop();
    r->stop();
}
