// SPDX-License-Identifier: MIT
// The router and the node client, in process and on loopback only: the routing table, the
// helpers that frame and parse peer traffic, two nodes forwarding through the host API and
// through the server, peer connections that never forward, relayed SUBSCRIBE, stopping a
// router with requests in flight, and a node_client against fake peers that give the wrong
// name, freeze, are not there, or close a working connection.
// (tests/test_cluster.cpp runs real kv_server processes.)
#include "kv_process.hpp"
#include "support.hpp"

#include <otpkv/config.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/router.hpp>

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
#include <utility>
#include <vector>

using otpkv::command_kind;
using otpkv::error_code;
using otpkv::node_status;
using otpkv::parse;
using otpkv::reply_kind;
using otpkv::route_entry;
using otpkv::route_target;
using otpkv_test::eventually;
using otpkv_test::journal;
using otpkv_test::kv_client;
using otpkv_test::ms_since;
using namespace std::chrono_literals;
using namespace std::string_literals;
using namespace std::string_view_literals;
using steady = std::chrono::steady_clock;

namespace {

route_entry entry(unsigned char first, unsigned char last, std::string node, std::uint16_t port,
                  std::string host = "127.0.0.1") {
    return {first, last, std::move(node), std::move(host), port};
}

std::shared_ptr<otpkv::router>
start_router(std::string self, std::vector<route_entry> routes, otpkv::client_options client = {},
             std::shared_ptr<otpkv::registry> reg = otpkv::registry::start()) {
    otpkv::router_options o;
    o.self = std::move(self);
    o.routes = std::move(routes);
    o.client = std::move(client);
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

std::shared_ptr<otpkv::node_client> start_client(std::vector<otpkv::peer_node> nodes,
                                                 otpkv::client_options o) {
    auto c = otpkv::node_client::start(std::move(nodes), std::move(o));
    REQUIRE(c.has_value());
    return std::move(c).value();
}

// Short timeouts and quick retries, one pooled connection, no heartbeats (so that what a
// fake peer sees is only what a test sent): the failure cases run in a fraction of a second.
otpkv::client_options quick(std::chrono::milliseconds timeout = 250ms) {
    otpkv::client_options o;
    o.self = "n1";
    o.connect_timeout = timeout;
    o.request_timeout = timeout;
    o.retry_min = 20ms;
    o.retry_max = 100ms;
    o.connections = 1;
    o.heartbeat = 0ms;
    return o;
}

// Who owns `bucket` by `r`'s table: the node's name, "(local)" or "(none)".
std::string owner(const otpkv::router& r, std::string_view bucket) {
    const route_target t = r.route(bucket);
    switch (t.where) {
    case route_target::kind::local:
        return "(local)";
    case route_target::kind::none:
        return "(none)";
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

std::function<void(const otpkv::node_event&)> record_into(journal& events) {
    return [&events](const otpkv::node_event& e) { events.add(e.node + (e.up ? " up" : " down")); };
}

// What a request's callback got, and when.
struct outcome {
    std::optional<std::string> reply;
    steady::time_point at;
    node_status status = node_status::unknown; // the node's, as the callback ran
};

// Hands `line` to `client` and returns the future of its outcome.
std::future<outcome> request(otpkv::node_client& client, std::string line, command_kind kind,
                             std::uint64_t affinity = 0) {
    auto done = std::make_shared<std::promise<outcome>>();
    auto f = done->get_future();
    client.request(0, std::move(line), kind, affinity,
                   [done, c = &client](std::optional<std::string> r) {
                       done->set_value({std::move(r), steady::now(), c->status(0)});
                   });
    return f;
}

// A peer node the test controls: a server whose handler answers the greeting with whatever
// name it is told, echoes a GET's key as the value (`GET b k` -> `k\r\nOK\r\n`; the key
// `close` closes the connection after the reply, `internal` answers `ERROR internal` and
// closes, as a real node does), answers every other request `OK`, and records every line it
// gets. `hang` holds every request's reply back (a hung process: greetings and heartbeats
// are still answered); `freeze` holds back every reply, greetings included (SIGSTOP).
class fake_peer {
  public:
    enum class mode { answer, hang, freeze };
    struct line {
        std::uint64_t connection = 0;
        std::string text;
    };

    explicit fake_peer(std::string name) : state_(std::make_shared<state>()) {
        state_->name = std::move(name);
        otpkv::server_options o;
        o.port = 0;
        o.threads = 1;
        auto started =
            otpkv::server::start([st = state_](const otpkv::command& cmd, std::string& out,
                                               otpkv::session& s) { st->handle(cmd, out, s); },
                                 o);
        REQUIRE(started.has_value());
        server_ = std::move(started).value();
    }
    ~fake_peer() {
        server_->stop();
        std::vector<held_reply> dropped;
        const std::lock_guard lock(state_->mutex);
        dropped.swap(state_->held);
    }
    fake_peer(const fake_peer&) = delete;
    fake_peer& operator=(const fake_peer&) = delete;

    [[nodiscard]] std::uint16_t port() const { return server_->port(); }
    [[nodiscard]] otpkv::server_stats stats() const { return server_->stats(); }

    void set_name(std::string name) {
        const std::lock_guard lock(state_->mutex);
        state_->name = std::move(name);
    }
    // Back to `answer` also answers the greetings held back meanwhile (a frozen node that
    // goes on answers what waited); replies held for requests stay held.
    void set_mode(mode m) {
        const std::lock_guard lock(state_->mutex);
        state_->how = m;
        if (m == mode::answer) {
            for (auto& h : state_->held) {
                if (h.greeting && h.reply.pending()) {
                    h.reply.complete(otpkv::peer_greeting_line(state_->name));
                }
            }
        }
    }
    [[nodiscard]] std::vector<line> requests() const {
        const std::lock_guard lock(state_->mutex);
        return state_->requests;
    }
    [[nodiscard]] std::vector<std::string> greetings() const {
        const std::lock_guard lock(state_->mutex);
        return state_->greetings;
    }
    [[nodiscard]] int heartbeats() const {
        const std::lock_guard lock(state_->mutex);
        return state_->heartbeats;
    }

  private:
    struct held_reply {
        bool greeting = false;
        otpkv::deferred_reply reply;
    };
    struct state {
        mutable std::mutex mutex;
        std::string name;
        mode how = mode::answer;
        std::vector<line> requests;
        std::vector<std::string> greetings;
        int heartbeats = 0;
        std::vector<held_reply> held;

        void handle(const otpkv::command& cmd, std::string& out, otpkv::session& s) {
            const std::lock_guard lock(mutex);
            if (cmd.kind == command_kind::unknown) {
                if (otpkv::parse_peer_greeting(s.line())) {
                    greetings.emplace_back(s.line());
                    if (how == mode::freeze) {
                        held.push_back({true, s.defer()});
                    } else {
                        out += otpkv::peer_greeting_line(name);
                    }
                    return;
                }
                heartbeats += s.line().empty() ? 1 : 0;
                if (how == mode::freeze) {
                    held.push_back({false, s.defer()});
                } else {
                    out += "UNKNOWN COMMAND\r\n";
                }
                return;
            }
            requests.push_back({s.id(), std::string(s.line())});
            if (how != mode::answer) {
                held.push_back({false, s.defer()});
                return;
            }
            if (cmd.kind != command_kind::get) {
                out += "OK\r\n";
            } else if (cmd.key == "internal") {
                out += "ERROR internal\r\n";
                s.close_after_reply();
            } else {
                out.append(cmd.key).append("\r\nOK\r\n");
                if (cmd.key == "close") {
                    s.close_after_reply();
                }
            }
        }
    };

    std::shared_ptr<state> state_;
    std::shared_ptr<otpkv::server> server_;
};

// Two nodes in one process, each a registry, a router and a server on an ephemeral port:
// B serves everything locally (an empty table), A owns a-m and forwards n-y to B; z and
// everything outside a-y has no route at A.
struct two_nodes {
    explicit two_nodes(otpkv::client_options client = {}) {
        client.heartbeat = 0ms;
        reg_b = otpkv::registry::start();
        router_b = start_router("B", {}, {}, reg_b);
        server_b = serve(router_b);
        reg_a = otpkv::registry::start();
        router_a =
            start_router("A", {entry('a', 'm', "A", 1), entry('n', 'y', "B", server_b->port())},
                         std::move(client), reg_a);
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
// node_client against fake peers
// ---------------------------------------------------------------------------------------

TEST_CASE("node_client: a peer greeting with another name is down; it is used once it is right") {
    fake_peer peer("impostor");
    journal events;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, quick());
    auto watch = client->monitor_nodes(record_into(events));
    CHECK(client->status(0) == node_status::unknown);
    auto refused = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(refused.wait_for(5s) == std::future_status::ready);
    const outcome o = refused.get();
    CHECK(o.reply == std::nullopt);
    CHECK(o.status == node_status::down);
    CHECK(client->status(0) == node_status::down);
    const auto greetings = peer.greetings();
    REQUIRE_FALSE(greetings.empty());
    CHECK(greetings.front() == "OTPKV-PEER 1 n1");
    CHECK(peer.requests().empty()); // nothing goes past a wrong answer

    // While it is down, a request fails before `request` returns.
    bool failed_at_once = false;
    client->request(0, "GET b k\r\n", command_kind::get, 0,
                    [&](std::optional<std::string> r) { failed_at_once = !r.has_value(); });
    CHECK(failed_at_once);

    // It is retried in the background; with the right name it is up, without any request.
    peer.set_name("n2");
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    CHECK(client->call(0, parse("GET b k")) == "k\r\nOK\r\n");
    CHECK(events.take() == std::vector<std::string>{"n2 up"});
    const auto lines = peer.requests();
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].text == "GET b k");
    client->stop();
}

TEST_CASE("node_client: a frozen peer fails a request after request_timeout, is down, and comes "
          "back by itself") {
    fake_peer peer("n2");
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, quick(250ms));
    CHECK(client->call(0, parse("PUT b k 1")) == "OK\r\n");
    CHECK(client->status(0) == node_status::up);
    journal events;
    auto watch = client->monitor_nodes(record_into(events));

    peer.set_mode(fake_peer::mode::freeze);
    const auto start = steady::now();
    auto timed_out = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(timed_out.wait_for(5s) == std::future_status::ready);
    const outcome o = timed_out.get();
    const double waited = std::chrono::duration<double, std::milli>(o.at - start).count();
    CHECK(o.reply == std::nullopt);
    CHECK(o.status == node_status::down);
    CHECK(waited >= 250.0);
    CHECK(waited < 250.0 + 2000.0);
    CHECK(client->status(0) == node_status::down);
    CHECK(peer.requests().back().text == "GET b k"); // it was sent, and never answered

    // Known down: the next request fails at once, before `request` returns.
    bool failed_at_once = false;
    client->request(0, "GET b k2\r\n", command_kind::get, 0,
                    [&](std::optional<std::string> r) { failed_at_once = !r.has_value(); });
    CHECK(failed_at_once);
    // Retries meanwhile reach the frozen peer and fail without another event.
    CHECK(eventually([&] { return peer.greetings().size() >= 3; }));
    CHECK(client->status(0) == node_status::down);
    CHECK(events.take() == std::vector<std::string>{"n2 down"});

    peer.set_mode(fake_peer::mode::answer);
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    CHECK(events.take() == std::vector<std::string>{"n2 up"});
    CHECK(client->call(0, parse("GET b again")) == "again\r\nOK\r\n");
    CHECK(events.size() == 0);
    client->stop();
}

TEST_CASE("node_client: an idle connection's heartbeat notices a frozen peer with no request") {
    fake_peer peer("n2");
    auto options = quick(250ms);
    options.heartbeat = 50ms;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    journal events;
    auto watch = client->monitor_nodes(record_into(events));
    client->connect(0);
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    CHECK(eventually([&] { return peer.heartbeats() >= 2; })); // answered: it stays up
    CHECK(client->status(0) == node_status::up);
    CHECK(peer.requests().empty());

    peer.set_mode(fake_peer::mode::freeze);
    const auto frozen = steady::now();
    CHECK(eventually([&] { return client->status(0) == node_status::down; }, 5s));
    CHECK(ms_since(frozen) < 50.0 + 250.0 + 2000.0);
    peer.set_mode(fake_peer::mode::answer);
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    CHECK(events.take() == std::vector<std::string>{"n2 up", "n2 down", "n2 up"});
    client->stop();
}

TEST_CASE("node_client: a refused connection is down at once, well within the timeouts") {
    const std::uint16_t port = otpkv_test::free_port();
    journal events;
    auto client = start_client({{"n2", "127.0.0.1", port}}, quick(5000ms));
    auto watch = client->monitor_nodes(record_into(events));
    const auto start = steady::now();
    auto refused = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(refused.wait_for(5s) == std::future_status::ready);
    const outcome o = refused.get();
    CHECK(o.reply == std::nullopt);
    CHECK(std::chrono::duration<double, std::milli>(o.at - start).count() < 2000.0);
    // Down by the time the failure is reported, as after a timeout or a wrong greeting, so
    // that a caller retrying at once fails fast instead of starting another attempt.
    CHECK(o.status == node_status::down);
    REQUIRE(eventually([&] { return client->status(0) == node_status::down; }));
    bool failed_at_once = false;
    client->request(0, "GET b k\r\n", command_kind::get, 0,
                    [&](std::optional<std::string> r) { failed_at_once = !r.has_value(); });
    CHECK(failed_at_once);
    CHECK(events.size() == 0); // never up, so never down either
    client->stop();
}

TEST_CASE("node_client: requests with one affinity reach the peer in order on one connection") {
    fake_peer peer("n2");
    auto options = quick(5000ms);
    options.connections = 2;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    constexpr int count = 300;
    std::mutex mutex;
    std::map<std::uint64_t, std::vector<std::string>> replies; // by affinity
    for (int i = 0; i < count; ++i) {
        for (const std::uint64_t affinity : {3U, 4U}) {
            const std::string key = "k" + std::to_string(i);
            client->request(0, "GET b" + std::to_string(affinity) + " " + key + "\r\n",
                            command_kind::get, affinity,
                            [&, affinity](std::optional<std::string> r) {
                                const std::lock_guard lock(mutex);
                                replies[affinity].push_back(r.value_or("(unavailable)"));
                            });
        }
    }
    REQUIRE(eventually(
        [&] {
            const std::lock_guard lock(mutex);
            return replies[3].size() + replies[4].size() == 2 * count;
        },
        10s));
    for (const std::uint64_t affinity : {3U, 4U}) {
        CAPTURE(affinity);
        std::vector<std::string> expected_replies;
        std::vector<std::string> expected_lines;
        for (int i = 0; i < count; ++i) {
            expected_replies.push_back("k" + std::to_string(i) + "\r\nOK\r\n");
            expected_lines.push_back("GET b" + std::to_string(affinity) + " k" + std::to_string(i));
        }
        {
            const std::lock_guard lock(mutex);
            CHECK(replies[affinity] == expected_replies);
        }
        std::vector<std::string> lines;
        std::vector<std::uint64_t> connections;
        for (const auto& l : peer.requests()) {
            if (l.text.starts_with("GET b" + std::to_string(affinity) + " ")) {
                lines.push_back(l.text);
                if (connections.empty() || connections.back() != l.connection) {
                    connections.push_back(l.connection);
                }
            }
        }
        CHECK(lines == expected_lines);
        CHECK(connections.size() == 1);
    }
    client->stop();
}

TEST_CASE("node_client: a peer closing a working connection is reconnected for later requests") {
    fake_peer peer("n2");
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, quick(2000ms));
    journal events;
    auto watch = client->monitor_nodes(record_into(events));
    CHECK(client->call(0, parse("GET b first")) == "first\r\nOK\r\n");
    CHECK(client->call(0, parse("GET b close")) == "close\r\nOK\r\n"); // then the peer closes
    CHECK(eventually([&] { return peer.stats().accepted == 2; }));     // reconnected at once
    CHECK(client->call(0, parse("GET b later")) == "later\r\nOK\r\n");
    CHECK(client->call(0, parse("PUT b k v")) == "OK\r\n");
    CHECK(client->status(0) == node_status::up);
    CHECK(peer.stats().accepted == 2);
    CHECK(peer.greetings().size() == 2);
    CHECK(events.take() == std::vector<std::string>{"n2 up"}); // never down
    client->stop();
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
    otpkv::client_options options = quick(1000ms);
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
    const auto start = steady::now();
    CHECK(a.get("nut", "k").bytes == "ERROR node B unavailable\r\n");
    CHECK(a.create("nothing").bytes == "ERROR node B unavailable\r\n");
    CHECK(ms_since(start) < 500.0);                         // known down: no waiting
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
    CHECK(events.take() == std::vector<std::string>{"B down", "B up"});
}

TEST_CASE("router_handler: a peer's connection runs everything here; a client's is forwarded") {
    two_nodes n;
    REQUIRE(n.router_a->create("nut").kind == reply_kind::ok); // on B
    REQUIRE(n.router_a->put("nut", "k", "fromB").kind == reply_kind::ok);

    kv_client peer(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(peer, "OTPKV-PEER 1 x\r\n", "OTPKV-PEER 1 A\r\n");
    OTPKV_CHECK_EXCHANGE(peer, "GET nut k\r\n", "NOT FOUND\r\n"); // A has no bucket nut
    OTPKV_CHECK_EXCHANGE(peer, "CREATE nut\r\n", "OK\r\n");
    CHECK(n.reg_a->lookup("nut") != nullptr);
    OTPKV_CHECK_EXCHANGE(peer, "PUT nut k fromA\r\n", "OK\r\n");
    OTPKV_CHECK_EXCHANGE(peer, "GET nut k\r\n", "fromA\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(peer, "GET zebra k\r\n", "NOT FOUND\r\n"); // no route: still local
    OTPKV_CHECK_EXCHANGE(peer, "BOGUS\r\n", "UNKNOWN COMMAND\r\n");
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

    // A greeting of another version is no greeting: the connection stays a client's.
    kv_client other(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(other, "OTPKV-PEER 2 x\r\n", "UNKNOWN COMMAND\r\n");
    OTPKV_CHECK_EXCHANGE(other, "GET nut k\r\n", "2\r\nOK\r\n");
    CHECK(value_on(*n.reg_a, "nut", "k") == "fromA");
}

TEST_CASE("router_handler: SUBSCRIBE on a peer's connection is acknowledged, then events follow") {
    two_nodes n;
    REQUIRE(n.router_a->create("nut").kind == reply_kind::ok); // on B only
    REQUIRE(n.reg_a->create("apple").has_value());

    kv_client sub(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(sub, "OTPKV-PEER 1 x\r\n", "OTPKV-PEER 1 A\r\n");
    OTPKV_CHECK_EXCHANGE(sub, "SUBSCRIBE missing\r\n", "NOT FOUND\r\n");
    OTPKV_CHECK_EXCHANGE(sub, "SUBSCRIBE nut\r\n", "NOT FOUND\r\n"); // local, never relayed
    OTPKV_CHECK_EXCHANGE(sub, "SUBSCRIBE apple\r\n", "SUBSCRIBED\r\n");

    kv_client pub(n.server_a->port());
    OTPKV_CHECK_EXCHANGE(pub, "OTPKV-PEER 1 y\r\n", "OTPKV-PEER 1 A\r\n");
    OTPKV_CHECK_EXCHANGE(pub, "PUT apple eggs 3\r\n", "OK\r\n");
    OTPKV_CHECK_EXCHANGE(pub, "DELETE apple eggs\r\n", "OK\r\n");
    n.reg_a->lookup("apple")->put("milk", "1");
    OTPKV_CHECK_RECEIVES(sub, "eggs SET TO 3\r\neggs DELETED\r\nmilk SET TO 1\r\n");
    // Further input on the subscribed connection is ignored.
    REQUIRE(sub.send_all("GET apple milk\r\n"));
    CHECK(sub.read_for(100ms) == "");
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
    CHECK(n.server_b->stats().connections == pool + 1); // the relay's own connection
    OTPKV_CHECK_EXCHANGE(pub, "PUT nut eggs 3\r\n", "OK\r\n");
    OTPKV_CHECK_EXCHANGE(pub, "DELETE nut eggs\r\n", "OK\r\n");
    n.reg_b->lookup("nut")->put("milk", "2"); // at the owner itself
    OTPKV_CHECK_RECEIVES(sub, "eggs SET TO 3\r\neggs DELETED\r\nmilk SET TO 2\r\n");
    REQUIRE(sub.send_all("GET nut milk\r\n")); // ignored, as on a local subscription
    CHECK(sub.read_for(100ms) == "");

    // The subscriber leaving closes A's stream to B.
    sub.close();
    CHECK(eventually([&] { return n.server_b->stats().connections == pool; }));

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
    CHECK(n.server_b->stats().connections == pool + 1);
    a.stop();
    CHECK(sub3.read_to_eof(5s) == "");
    CHECK(sub3.end() == kv_client::ending::eof);
    CHECK(eventually([&] { return n.server_b->stats().connections == 0; }));
}

TEST_CASE("router_handler: a relayed ERROR internal closes the client's connection as well") {
    fake_peer peer("n2");
    auto r = start_router("A", {entry('a', 'm', "A", 1), entry('n', 'z', "n2", peer.port())},
                          quick(2000ms));
    auto srv = serve(r);
    kv_client c(srv->port());
    OTPKV_CHECK_EXCHANGE(c, "GET nut k\r\n", "k\r\nOK\r\n");
    REQUIRE(c.send_all("GET nut internal\r\nGET nut after\r\n"));
    CHECK(c.read_to_eof(5s) == "ERROR internal\r\n"); // nothing runs after it
    CHECK(c.end() == kv_client::ending::eof);
    kv_client d(srv->port());
    OTPKV_CHECK_EXCHANGE(d, "GET nut k2\r\n", "k2\r\nOK\r\n");
    srv->stop();
    r->stop();
}

TEST_CASE("router: stop fails the requests in flight as unavailable; later calls answer at once") {
    fake_peer peer("n2");
    peer.set_mode(fake_peer::mode::hang);
    auto options = quick(5000ms);
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

    const auto stopping = steady::now();
    CHECK(r->stop() == otpkv::exit_reason::shutdown());
    CHECK(ms_since(stopping) < 2000.0); // not the 5 s request timeout
    CHECK_FALSE(r->alive());
    CHECK(replies.take() == std::vector<std::string>(10, "ERROR node n2 unavailable\r\n"));
    OTPKV_CHECK_RECEIVES(c, "ERROR node n2 unavailable\r\n");

    const auto after = steady::now();
    CHECK(r->call(parse("GET nut k")) == "ERROR node n2 unavailable\r\n");
    CHECK(r->get("nut", "k").error == error_code::node_unavailable);
    CHECK(r->call(parse("CREATE apple")) == "OK\r\n"); // local buckets need no connection
    CHECK(r->get("apple", "k").bytes == "\r\nOK\r\n");
    CHECK(r->call(parse("GET zebra k")) == "ERROR node n2 unavailable\r\n");
    CHECK(r->call(parse("GET Zebra k")) == "ERROR no route\r\n");
    OTPKV_CHECK_EXCHANGE(c, "GET nut k\r\n", "ERROR node n2 unavailable\r\n");
    OTPKV_CHECK_EXCHANGE(c, "GET apple k\r\n", "\r\nOK\r\n");
    CHECK(ms_since(after) < 1000.0);
    srv->stop();
}
