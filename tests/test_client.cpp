// SPDX-License-Identifier: MIT
// The node client (net/client.hpp) in process, on loopback only, against peers the test
// controls: fake ones (support.hpp's fake_peer) that give the wrong name, freeze, hang, are
// not there, close a working connection or send a reply that never ends; and a real node's
// server for SUBSCRIBE. The greeting, a node going down and up (its events, request_timeout,
// heartbeats, retries), affinity, reply framing, streams, and stop. Timeouts are a minute
// long unless a test is about one (then that one is short, 250 ms or 1 s, and the other is
// long), and nothing checks how fast anything happened. (The router over it:
// tests/test_router.cpp.)
#include "kv_process.hpp"
#include "support.hpp"

#include <otpkv/command.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/router.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

using otpkv::command_kind;
using otpkv::node_status;
using otpkv::parse;
using otpkv_test::eventually;
using otpkv_test::fake_peer;
using otpkv_test::journal;
using otpkv_test::quick;
using otpkv_test::record_into;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

std::shared_ptr<otpkv::node_client> start_client(std::vector<otpkv::peer_node> nodes,
                                                 otpkv::client_options o) {
    auto c = otpkv::node_client::start(std::move(nodes), std::move(o));
    REQUIRE(c.has_value());
    return std::move(c).value();
}

// quick()'s options with these two timeouts. A test about one timeout keeps that one short
// and the other long: greetings and requests that must succeed ride on it, and a slow moment
// of a loaded machine must not pass for a dead peer.
otpkv::client_options timeouts(std::chrono::milliseconds connect,
                               std::chrono::milliseconds request) {
    otpkv::client_options o = quick();
    o.connect_timeout = connect;
    o.request_timeout = request;
    return o;
}

// What a request's callback got, and when.
struct outcome {
    std::optional<std::string> reply;
    steady::time_point at;
    node_status status = node_status::unknown; // the node's, as the callback ran
};

// Hands `line` to `client` for node `node` and returns the future of its outcome.
std::future<outcome> request(otpkv::node_client& client, std::string line, command_kind kind,
                             std::uint64_t affinity = 0, std::size_t node = 0) {
    auto done = std::make_shared<std::promise<outcome>>();
    auto f = done->get_future();
    client.request(node, std::move(line), kind, affinity,
                   [done, c = &client, node](std::optional<std::string> r) {
                       done->set_value({std::move(r), steady::now(), c->status(node)});
                   });
    return f;
}

// A callback that adds the reply (or "(unavailable)") to `replies`.
otpkv::reply_callback into(journal& replies) {
    return [&replies](std::optional<std::string> r) { replies.add(r.value_or("(unavailable)")); };
}

// A real node for streams: a registry served through a router whose table keeps every bucket
// here and names n1 (so that n1 passes its handshake), as kv_server serves it, so a peer
// connection's SUBSCRIBE is acknowledged and then streams events.
struct real_peer {
    explicit real_peer(std::string name) : reg(otpkv::registry::start()) {
        otpkv::router_options ro;
        ro.self = name;
        // Every bucket here; the entry that never wins names n1, so n1 is a peer.
        ro.routes = {{0, 255, std::move(name), "127.0.0.1", 1}, {'a', 'a', "n1", "127.0.0.1", 1}};
        ro.cookie = otpkv_test::test_cookie;
        auto r = otpkv::router::start(reg, ro);
        REQUIRE(r.has_value());
        router = std::move(r).value();
        otpkv::server_options so;
        so.port = 0;
        so.threads = 1;
        auto s = otpkv::server::start(otpkv::router_handler(router), so);
        REQUIRE(s.has_value());
        server = std::move(s).value();
    }
    ~real_peer() {
        server->stop();
        router->stop();
    }
    real_peer(const real_peer&) = delete;
    real_peer& operator=(const real_peer&) = delete;

    [[nodiscard]] std::uint16_t port() const { return server->port(); }
    [[nodiscard]] std::size_t connections() const { return server->stats().connections; }

    std::shared_ptr<otpkv::registry> reg;
    std::shared_ptr<otpkv::router> router;
    std::shared_ptr<otpkv::server> server;
};

// What a stream's callbacks saw: in order, "refused <reply>" (or "refused (unavailable)"),
// "subscribed <id>", "ended" and "lost"; the calls of `data` and their bytes. With `keep` false,
// `data` returns false (which closes the stream) every time.
struct stream_log {
    journal seen;
    std::atomic<int> data_calls{0};
    std::mutex mutex;
    std::string data;
    bool keep = true;

    otpkv::stream_callbacks callbacks() {
        otpkv::stream_callbacks cb;
        cb.refused = [this](std::optional<std::string> r) {
            seen.add("refused " + r.value_or("(unavailable)"));
        };
        cb.subscribed = [this](std::uint64_t id) { seen.add("subscribed " + std::to_string(id)); };
        cb.data = [this](std::string_view bytes) {
            ++data_calls;
            const std::lock_guard lock(mutex);
            data.append(bytes);
            return keep;
        };
        cb.ended = [this] { seen.add("ended"); };
        cb.lost = [this] { seen.add("lost"); };
        return cb;
    }
    std::string received() {
        const std::lock_guard lock(mutex);
        return data;
    }
};

} // namespace

// ---------------------------------------------------------------------------------------
// The greeting, a node going down and coming back
// ---------------------------------------------------------------------------------------

TEST_CASE("node_client: a peer greeting with another name is down; it is used once it is right") {
    fake_peer peer("impostor");
    journal events;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, quick(60s));
    auto watch = client->monitor_nodes(record_into(events));
    CHECK(client->status(0) == node_status::unknown);
    auto refused = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(refused.wait_for(10s) == std::future_status::ready);
    const outcome o = refused.get();
    CHECK(o.reply == std::nullopt);
    CHECK(o.status == node_status::down);
    CHECK(client->status(0) == node_status::down);
    const auto greetings = peer.greetings();
    REQUIRE_FALSE(greetings.empty());
    CHECK(greetings.front() == "OTPKV-PEER 2 n1");
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
    CHECK(events.take(1) == std::vector<std::string>{"n2 up"});
    const auto lines = peer.requests();
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].text == "GET b k");
    client->stop();
}

// A log that keeps what `client_options::log` is told.
struct log_lines {
    std::mutex mutex;
    std::vector<std::string> lines;
    std::function<void(const std::string&)> sink() {
        return [this](const std::string& line) {
            const std::lock_guard lock(mutex);
            lines.push_back(line);
        };
    }
    std::vector<std::string> take() {
        const std::lock_guard lock(mutex);
        return std::exchange(lines, {});
    }
};

TEST_CASE("node_client: the handshake proves the cookie both ways; requests go out after its OK") {
    fake_peer peer("n2");
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, quick(60s));
    CHECK(client->call(0, parse("PUT b k 1")) == "OK\r\n");
    CHECK(client->status(0) == node_status::up);
    CHECK(peer.greetings() == std::vector<std::string>{"OTPKV-PEER 2 n1"});
    CHECK(peer.proofs_accepted() == 1); // n1's proof was right
    CHECK(peer.refused() == 0);
    CHECK(peer.requests().size() == 1); // fake_peer fails the test for one before the OK
    client->stop();
}

TEST_CASE("node_client: a peer with another cookie is down, and the log says why once; with the "
          "same cookie it is up") {
    fake_peer peer("n2", "another-cookie");
    log_lines log;
    journal events;
    auto options = quick(60s);
    options.log = log.sink();
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    auto watch = client->monitor_nodes(record_into(events));
    auto refused = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(refused.wait_for(10s) == std::future_status::ready);
    CHECK(refused.get().reply == std::nullopt);
    CHECK(client->status(0) == node_status::down);
    // Retried in the background, refused each time, told once.
    CHECK(eventually([&] { return peer.greetings().size() >= 3; }));
    CHECK(peer.requests().empty());
    CHECK(peer.proofs_accepted() == 0);
    const std::string why = "node n2 at 127.0.0.1:" + std::to_string(peer.port()) +
                            " gave a wrong proof (is its cookie another?)";
    CHECK(log.take() == std::vector<std::string>{why});

    peer.set_cookie(otpkv_test::test_cookie);
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    CHECK(client->call(0, parse("GET b k")) == "k\r\nOK\r\n");
    CHECK(events.take(1) == std::vector<std::string>{"n2 up"});
    CHECK(log.take().empty());
    client->stop();
}

TEST_CASE("node_client: a peer that refuses the greeting or the proof (ERROR not a peer) is down, "
          "and the log says so") {
    fake_peer peer("n2");
    peer.set_known(false); // its table does not name n1
    log_lines log;
    auto options = quick(60s);
    options.log = log.sink();
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    auto refused = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(refused.wait_for(10s) == std::future_status::ready);
    CHECK(refused.get().reply == std::nullopt);
    CHECK(client->status(0) == node_status::down);
    const std::string at = "node n2 at 127.0.0.1:" + std::to_string(peer.port()) + " ";
    CHECK(eventually([&] { return peer.refused() >= 2; }));
    CHECK(log.take() == std::vector<std::string>{at + "refused the greeting (ERROR not a peer): "
                                                      "this node is not in its routing table"});
    CHECK(peer.requests().empty());
    client->stop();

    // A client with another cookie than the peer: the peer's proof is wrong for it, so it
    // never sends its own; a client whose proof the peer refuses is told so.
    fake_peer strict("n2");
    auto other = quick(60s);
    other.cookie = "another-cookie";
    other.log = log.sink();
    auto impostor = start_client({{"n2", "127.0.0.1", strict.port()}}, other);
    CHECK(impostor->call(0, parse("GET b k")) == std::nullopt);
    CHECK(strict.proofs_accepted() == 0);
    CHECK(strict.requests().empty());
    impostor->stop();
}

TEST_CASE("node_client: no cookie, no start, when there are nodes to connect to") {
    auto options = quick();
    options.cookie.clear();
    const auto failed = otpkv::node_client::start({{"n2", "127.0.0.1", 1}}, options);
    REQUIRE_FALSE(failed.has_value());
    CHECK(otpkv::to_string(failed.error().reason).find("no cluster cookie") != std::string::npos);
    const auto alone = otpkv::node_client::start({}, options);
    CHECK(alone.has_value());
}

TEST_CASE("node_client: a frozen peer fails a request after request_timeout, is down, and comes "
          "back by itself") {
    fake_peer peer("n2");
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, timeouts(60s, 1000ms));
    CHECK(client->call(0, parse("PUT b k 1")) == "OK\r\n");
    CHECK(client->status(0) == node_status::up);
    journal events;
    auto watch = client->monitor_nodes(record_into(events));

    peer.set_mode(fake_peer::mode::freeze);
    const auto start = steady::now();
    auto timed_out = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(timed_out.wait_for(10s) == std::future_status::ready);
    const outcome o = timed_out.get();
    const double waited = std::chrono::duration<double, std::milli>(o.at - start).count();
    CHECK(o.reply == std::nullopt);
    CHECK(o.status == node_status::down);
    CHECK(waited >= 1000.0); // it was given its request_timeout (the future's wait is the bound)
    CHECK(client->status(0) == node_status::down);
    CHECK(peer.requests().back().text == "GET b k"); // it was sent, and never answered

    // Known down: the next request fails at once, before `request` returns.
    bool failed_at_once = false;
    client->request(0, "GET b k2\r\n", command_kind::get, 0,
                    [&](std::optional<std::string> r) { failed_at_once = !r.has_value(); });
    CHECK(failed_at_once);
    // A retry meanwhile reaches the frozen peer, whose greeting waits, with no other event.
    CHECK(eventually([&] { return peer.greetings().size() >= 2; }));
    CHECK(client->status(0) == node_status::down);
    CHECK(events.take(1) == std::vector<std::string>{"n2 down"});

    peer.set_mode(fake_peer::mode::answer);
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    CHECK(events.take(1) == std::vector<std::string>{"n2 up"});
    CHECK(client->call(0, parse("GET b again")) == "again\r\nOK\r\n");
    CHECK(events.size() == 0);
    client->stop();
}

TEST_CASE("node_client: an idle connection's heartbeat notices a frozen peer with no request") {
    fake_peer peer("n2");
    auto options = timeouts(60s, 1000ms);
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
    CHECK(eventually([&] { return client->status(0) == node_status::down; }, 10s));
    CHECK(peer.requests().empty()); // no request was needed to notice
    peer.set_mode(fake_peer::mode::answer);
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    CHECK(events.take(3) == std::vector<std::string>{"n2 up", "n2 down", "n2 up"});
    client->stop();
}

TEST_CASE("node_client: a refused connection is down at once, without waiting for a timeout") {
    const std::uint16_t port = otpkv_test::free_port();
    journal events;
    // Timeouts of a minute: a failure reported within the future's 10 s wait came from the
    // refusal itself.
    auto client = start_client({{"n2", "127.0.0.1", port}}, quick(60s));
    auto watch = client->monitor_nodes(record_into(events));
    auto refused = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(refused.wait_for(10s) == std::future_status::ready);
    const outcome o = refused.get();
    CHECK(o.reply == std::nullopt);
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

TEST_CASE("node_client: a peer that never answers the greeting is down after connect_timeout; "
          "never up, so no event") {
    fake_peer peer("n2");
    peer.set_mode(fake_peer::mode::freeze);
    journal events;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, timeouts(250ms, 60s));
    auto watch = client->monitor_nodes(record_into(events));
    const auto start = steady::now();
    auto waiting = request(*client, "GET b k\r\n", command_kind::get);
    REQUIRE(waiting.wait_for(10s) == std::future_status::ready);
    const outcome o = waiting.get();
    CHECK(o.reply == std::nullopt);
    CHECK(o.status == node_status::down);
    CHECK(std::chrono::duration<double, std::milli>(o.at - start).count() >= 250.0);
    CHECK(peer.greetings().size() == 1);
    CHECK(peer.requests().empty()); // a request waits for the greeting's answer
    CHECK(events.size() == 0);

    // Answered at last (the held greetings with it): up, and the request goes through.
    peer.set_mode(fake_peer::mode::answer);
    CHECK(eventually([&] { return client->status(0) == node_status::up; }, 10s));
    CHECK(client->call(0, parse("GET b k")) == "k\r\nOK\r\n");
    CHECK(events.take(1) == std::vector<std::string>{"n2 up"});
    client->stop();
}

TEST_CASE("node_client: a node that does not answer fails every request in flight to it, on "
          "every connection, and goes down once") {
    fake_peer peer("n2");
    auto options = timeouts(60s, 1000ms);
    options.connections = 2;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    journal events;
    auto watch = client->monitor_nodes(record_into(events));
    client->connect(0);
    REQUIRE(eventually([&] { return peer.greetings().size() == 2; }));
    CHECK(client->call(0, parse("PUT b k 1"), 0) == "OK\r\n");
    CHECK(client->call(0, parse("PUT b k 1"), 1) == "OK\r\n");

    // Frozen: nothing is answered, the retries' greetings neither, so it stays down.
    peer.set_mode(fake_peer::mode::freeze);
    journal replies;
    for (std::uint64_t i = 0; i < 6; ++i) {
        client->request(0, "GET b k" + std::to_string(i) + "\r\n", command_kind::get, i,
                        into(replies));
    }
    REQUIRE(eventually([&] { return replies.size() == 6; }, 10s));
    CHECK(replies.take() == std::vector<std::string>(6, "(unavailable)"));
    CHECK(client->status(0) == node_status::down);
    // All six reached the peer (three per connection) and were never answered.
    std::map<std::uint64_t, int> per_connection;
    for (const auto& l : peer.requests()) {
        if (l.text.starts_with("GET b k")) {
            ++per_connection[l.connection];
        }
    }
    CHECK(per_connection.size() == 2);
    for (const auto& [connection, count] : per_connection) {
        CHECK(count == 3);
    }
    CHECK(eventually([&] { return peer.greetings().size() >= 3; })); // retried meanwhile
    CHECK(events.take(2) == std::vector<std::string>{"n2 up", "n2 down"});
    client->stop();
}

TEST_CASE("node_client: a hung node delays no other node") {
    fake_peer hung("n2");
    hung.set_mode(fake_peer::mode::hang);
    fake_peer fine("n3");
    // Timeouts of a minute: the hung node's requests stay in flight throughout the test.
    auto client = start_client({{"n2", "127.0.0.1", hung.port()}, {"n3", "127.0.0.1", fine.port()}},
                               quick(60s));
    journal replies;
    for (std::uint64_t i = 0; i < 3; ++i) {
        client->request(0, "GET b k" + std::to_string(i) + "\r\n", command_kind::get, i,
                        into(replies));
    }
    REQUIRE(eventually([&] { return hung.requests().size() == 3; }));
    // The other node answers, again and again, on the affinities the hung requests use.
    for (std::uint64_t i = 0; i < 30; ++i) {
        CHECK(client->call(1, parse("GET b v" + std::to_string(i)), i % 3) ==
              "v" + std::to_string(i) + "\r\nOK\r\n");
    }
    CHECK(replies.size() == 0); // still in flight
    CHECK(client->status(0) == node_status::up);
    CHECK(client->status(1) == node_status::up);
    // Stopping the client fails them, by the time stop returns.
    CHECK(client->stop() == otpkv::exit_reason::shutdown());
    CHECK(replies.take() == std::vector<std::string>(3, "(unavailable)"));
}

TEST_CASE("node_client: a peer whose reply is not the one for the oldest request loses that "
          "connection: its requests fail as unavailable, none gets another's reply") {
    // The fake peer's faults (support.hpp): a reply sent twice, a stray line after a reply,
    // a reply tagged with the next request's id.
    for (const std::string fault : {"extra", "stray", "wrongid"}) {
        INFO("the peer's fault: " << fault);
        fake_peer peer("n2");
        peer.set_mode(fake_peer::mode::hang);
        journal told;
        otpkv::client_options o = quick(60s);
        o.log = [&told](const std::string& message) { told.add(message); };
        auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, o);
        journal replies;
        // One connection: the faulty reply's request first, two more in flight behind it.
        client->request(0, "GET b " + fault + "\r\n", command_kind::get, 0, into(replies));
        client->request(0, "GET b k1\r\n", command_kind::get, 0, into(replies));
        client->request(0, "GET b k2\r\n", command_kind::get, 0, into(replies));
        REQUIRE(eventually([&] { return peer.requests().size() == 3; }));
        peer.release(); // all three replies, in order, the fault among them
        std::vector<std::string> expected(3, "(unavailable)");
        if (fault != "wrongid") {
            expected[0] = fault + "\r\nOK\r\n"; // its own reply came right
        }
        CHECK(replies.take(3) == expected);
        // The operator is told which node broke the framing, and how.
        const std::string header = fault == "extra" ? "=1" : fault == "stray" ? "stray" : "=2";
        const std::string request = fault == "wrongid" ? "1" : "2";
        CHECK(told.take(1) ==
              std::vector<std::string>{"node n2 at 127.0.0.1:" + std::to_string(peer.port()) +
                                       " answered request " + request + " with another header (\"" +
                                       header +
                                       "\"): its connection is closed, its requests fail as "
                                       "unavailable"});
        // That connection is closed; later requests go over a new one, and work.
        peer.set_mode(fake_peer::mode::answer);
        CHECK(client->call(0, parse("GET b k3")) == "k3\r\nOK\r\n");
        CHECK(client->call(0, parse("GET b k4")) == "k4\r\nOK\r\n");
        CHECK(peer.greetings().size() == 2);
        CHECK(peer.stats().accepted == 2);
        CHECK(client->status(0) == node_status::up);
        client->stop();
        CHECK(replies.size() == 0); // nothing else was delivered, to anyone
        CHECK(told.size() == 0);
    }
}

TEST_CASE("node_client: requests and heartbeats carry increasing ids; replies are framed once, "
          "with their outcome") {
    fake_peer peer("n2");
    otpkv::client_options o = quick(5s);
    o.heartbeat = 20ms;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, o);
    std::promise<std::optional<otpkv::framed_reply>> got;
    client->request(0, "GET b internal\r\n", command_kind::get, 0,
                    [&got](std::optional<otpkv::framed_reply> r) { got.set_value(std::move(r)); });
    const auto framed = got.get_future().get();
    REQUIRE(framed.has_value());
    CHECK(framed->bytes == "ERROR internal\r\n");
    CHECK(framed->outcome ==
          otpkv::reply_outcome{otpkv::reply_kind::error, otpkv::error_code::internal});
    CHECK(otpkv::closes_connection(framed->outcome));
    // The peer closes that connection after its reply; a request handed over before the
    // client reads the close would go out on it and fail: wait for the new connection.
    CHECK(eventually([&] { return peer.stats().accepted == 2; }));
    CHECK(client->call(0, parse("GET b v")) == "v\r\nOK\r\n");
    CHECK(eventually([&] { return peer.heartbeats() >= 2; }));
    CHECK(client->call(0, parse("PUT b k v")) == "OK\r\n"); // after heartbeats: still matched
    CHECK(client->status(0) == node_status::up);
    client->stop();
}

// ---------------------------------------------------------------------------------------
// Nodes, connections and replies
// ---------------------------------------------------------------------------------------

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
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, quick(60s));
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
    CHECK(events.take(1) == std::vector<std::string>{"n2 up"}); // never down
    client->stop();
}

TEST_CASE("node_client: nodes() in the order given, find() by name; an index it does not know "
          "is down and fails at once") {
    fake_peer peer("n2");
    const std::uint16_t nobody = otpkv_test::free_port();
    auto client =
        start_client({{"n2", "127.0.0.1", peer.port()}, {"n3", "localhost", nobody}}, quick(60s));
    CHECK(client->nodes() == std::vector<otpkv::peer_node>{{"n2", "127.0.0.1", peer.port()},
                                                           {"n3", "localhost", nobody}});
    CHECK(client->find("n2") == std::size_t{0});
    CHECK(client->find("n3") == std::size_t{1});
    CHECK_FALSE(client->find("n4").has_value());
    CHECK_FALSE(client->find("").has_value());
    CHECK(client->status(0) == node_status::unknown); // nothing is connected before use
    CHECK(client->status(1) == node_status::unknown);

    CHECK(client->status(2) == node_status::down);
    bool failed_at_once = false;
    client->request(2, "GET b k\r\n", command_kind::get, 0,
                    [&](std::optional<std::string> r) { failed_at_once = !r.has_value(); });
    CHECK(failed_at_once);
    CHECK(client->call(2, parse("GET b k")) == std::nullopt);
    stream_log refused;
    client->subscribe(2, "b", refused.callbacks());
    CHECK(refused.seen.take() == std::vector<std::string>{"refused (unavailable)"});

    // The nodes it knows are untouched by that; only the one used is connected.
    CHECK(client->call(0, parse("GET b k")) == "k\r\nOK\r\n");
    CHECK(peer.greetings() == std::vector<std::string>{"OTPKV-PEER 2 n1"});
    CHECK(client->status(1) == node_status::unknown);
    client->stop();
}

TEST_CASE("node_client: connect opens every pooled connection, greeted, with no request; each "
          "affinity keeps to one") {
    fake_peer peer("n2");
    auto options = quick(60s);
    options.connections = 3;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    journal events;
    auto watch = client->monitor_nodes(record_into(events));
    client->connect(0);
    CHECK(eventually([&] { return peer.greetings().size() == 3; }));
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    CHECK(peer.greetings() == std::vector<std::string>(3, "OTPKV-PEER 2 n1"));
    CHECK(peer.requests().empty());

    // Affinities 0 to 5 over the three connections: two affinities on each, and no new
    // connection for them.
    std::map<std::uint64_t, std::set<std::uint64_t>> affinities_of; // by connection
    for (int round = 0; round < 2; ++round) {
        for (std::uint64_t a = 0; a < 6; ++a) {
            const std::string key = "a" + std::to_string(a);
            CHECK(client->call(0, parse("GET b " + key), a) == key + "\r\nOK\r\n");
        }
    }
    for (const auto& l : peer.requests()) {
        affinities_of[l.connection].insert(
            std::stoull(l.text.substr(std::string("GET b a").size())));
    }
    CHECK(affinities_of.size() == 3);
    std::set<std::uint64_t> all;
    for (const auto& [connection, affinities] : affinities_of) {
        CHECK(affinities.size() == 2);
        all.insert(affinities.begin(), affinities.end());
    }
    CHECK(all.size() == 6);
    CHECK(peer.stats().accepted == 3);
    CHECK(events.take(1) == std::vector<std::string>{"n2 up"}); // one node, up once
    client->stop();
}

TEST_CASE("node_client: pipelined replies that read like other replies stay paired with their "
          "requests") {
    fake_peer peer("n2");
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, quick(60s));
    // The fake peer answers a GET with its key as the value: values that are a reply's words
    // (a GET's value line is one token, so it can be "OK" or "ERROR" but never an error).
    const std::vector<std::string> values = {"OK",         "ERROR",      "UNKNOWN",      "NOT",
                                             "SUBSCRIBED", "OTPKV-PEER", "\x80\xff\x01", "v"};
    std::vector<std::pair<std::string, command_kind>> requests;
    std::vector<std::string> expected;
    for (int round = 0; round < 3; ++round) {
        for (const std::string& v : values) {
            requests.emplace_back("GET b " + v + "\r\n", command_kind::get);
            expected.push_back(v + "\r\nOK\r\n");
            requests.emplace_back("PUT b " + v + " " + v + "\r\n", command_kind::put);
            expected.emplace_back("OK\r\n");
            requests.emplace_back("DELETE b " + v + "\r\n", command_kind::erase);
            expected.emplace_back("OK\r\n");
        }
        requests.emplace_back("CREATE b\r\n", command_kind::create);
        expected.emplace_back("OK\r\n");
    }
    journal replies;
    for (auto& [line, kind] : requests) {
        client->request(0, line, kind, 7, into(replies));
    }
    REQUIRE(eventually([&] { return replies.size() == requests.size(); }, 10s));
    CHECK(replies.take() == expected);
    CHECK(client->status(0) == node_status::up);
    CHECK(peer.stats().accepted == 1); // one connection carried them all
    client->stop();
}

TEST_CASE("node_client: a reply that never ends is a broken peer once past max_reply: the "
          "request fails and the connection is made again") {
    fake_peer peer("n2");
    auto options = quick(60s);
    options.max_reply = 1024; // the fake peer's endless reply is 4096 bytes
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    journal events;
    auto watch = client->monitor_nodes(record_into(events));
    CHECK(client->call(0, parse("GET b first")) == "first\r\nOK\r\n");
    CHECK(client->call(0, parse("GET b endless")) == std::nullopt);
    CHECK(client->call(0, parse("GET b after")) == "after\r\nOK\r\n");
    CHECK(peer.stats().accepted == 2); // the broken connection, then a new one
    CHECK(client->status(0) == node_status::up);
    CHECK(events.take(1) == std::vector<std::string>{"n2 up"}); // it answered again at once
    client->stop();
}

TEST_CASE("node_client: a whole reply longer than max_reply is a broken peer too") {
    fake_peer peer("n2");
    auto options = quick(60s);
    options.max_reply = 1024;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    // The fake peer answers a GET with its key as the value: 2,000 bytes, whole at once.
    CHECK(client->call(0, parse("GET b " + std::string(2000, 'k'))) == std::nullopt);
    CHECK(client->call(0, parse("GET b " + std::string(1000, 'k'))) ==
          std::string(1000, 'k') + "\r\nOK\r\n"); // within the limit: delivered
    CHECK(peer.stats().accepted == 2);            // the broken connection, then a new one
    CHECK(client->status(0) == node_status::up);
    client->stop();
}

TEST_CASE("node_client: an INFO's reply is its lines up to OK, however it is read; capped by "
          "max_info_reply, not max_reply") {
    fake_peer peer("n2");
    auto options = quick(60s);
    options.max_reply = 1024;
    options.max_info_reply = 512 * 1024;
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    const auto info = [&client] {
        auto done = std::make_shared<std::promise<std::optional<otpkv::framed_reply>>>();
        auto got = done->get_future();
        client->request(0, "INFO TREE\r\n", command_kind::info, 0,
                        [done](std::optional<otpkv::framed_reply> r) { done->set_value(r); });
        REQUIRE(got.wait_for(10s) == std::future_status::ready);
        return got.get();
    };
    // 400 KB of lines, many reads: whole, and its outcome with it.
    std::string lines;
    for (int i = 0; lines.size() < 400 * 1024; ++i) {
        lines += "line " + std::to_string(i) + (i % 7 == 0 ? "\r\n\r\n" : " OK\r\n");
    }
    peer.set_info_reply(lines + "OK\r\n");
    auto r = info();
    REQUIRE(r.has_value());
    CHECK(r->bytes == lines + "OK\r\n");
    CHECK(r->outcome.kind == otpkv::reply_kind::ok);
    // Followed at once by the next request's reply on the same connection: still paired.
    peer.set_info_reply("a\r\nOK\r\n");
    auto first = request(*client, "INFO\r\n", command_kind::info);
    auto second = request(*client, "GET b k\r\n", command_kind::get);
    CHECK(first.get().reply == "a\r\nOK\r\n");
    CHECK(second.get().reply == "k\r\nOK\r\n");
    for (const std::string refusal :
         {"UNKNOWN COMMAND\r\n", "ERROR node n3 unavailable\r\n", "NOT FOUND\r\n"}) {
        peer.set_info_reply(refusal);
        r = info();
        REQUIRE(r.has_value());
        CHECK(r->bytes == refusal);
    }
    CHECK(peer.stats().accepted == 1);
    // Past max_info_reply: the connection goes, the request fails, the next one is served.
    peer.set_info_reply(lines + lines);
    CHECK(info() == std::nullopt);
    CHECK(client->call(0, parse("GET b after")) == "after\r\nOK\r\n");
    CHECK(peer.stats().accepted == 2);
    CHECK(client->status(0) == node_status::up);
    client->stop();
}

TEST_CASE("node_client: event_log gets node_up and node_down once per transition, peer_refused "
          "once, and each framing violation; the text log is told as before") {
    fake_peer peer("n2", "another-cookie");
    otpkv_test::event_recorder events;
    log_lines text;
    auto options = quick(60s);
    options.event_log = events.logger();
    options.log = text.sink();
    auto client = start_client({{"n2", "127.0.0.1", peer.port()}}, options);
    const std::string address = "127.0.0.1:" + std::to_string(peer.port());
    CHECK(client->call(0, parse("GET b k")) == std::nullopt);
    CHECK(eventually([&] { return peer.greetings().size() >= 4; })); // retried, refused
    CHECK(client->call(0, parse("GET b k")) == std::nullopt);
    CHECK(events.summary() == std::vector<std::string>{"peer_refused n2", "node_down n2"});
    for (const auto& e : events.events()) {
        CHECK(e.level == otpkv::log_level::warning);
        CHECK(e.reason == "gave a wrong proof (is its cookie another?)");
        CHECK(otpkv_test::event_recorder::field(e, "address") == address);
    }
    CHECK(text.take() == std::vector<std::string>{"node n2 at " + address +
                                                  " gave a wrong proof (is its cookie another?)"});

    peer.set_cookie(otpkv_test::test_cookie);
    CHECK(eventually([&] { return client->status(0) == node_status::up; }));
    REQUIRE(events.wait_for("node_up", 1));
    CHECK(events.events("node_up").at(0).level == otpkv::log_level::info);
    // A reply for another request: the connection is closed and made again at once; the node
    // stays up, so no node_down.
    CHECK(client->call(0, parse("GET b wrongid")) == std::nullopt);
    CHECK(client->call(0, parse("GET b k")) == "k\r\nOK\r\n");
    CHECK(events.summary() == std::vector<std::string>{"peer_refused n2", "node_down n2",
                                                       "node_up n2", "peer_protocol_error n2"});
    const auto violation = events.events("peer_protocol_error").at(0);
    CHECK(violation.level == otpkv::log_level::warning);
    CHECK(violation.reason.starts_with("answered request "));
    CHECK(violation.reason.find("with another header (\"=") != std::string::npos);
    const auto told = text.take();
    REQUIRE(told.size() == 1);
    CHECK(told[0].starts_with("node n2 at " + address + " answered request "));

    // A logger at warning is not given node_up.
    otpkv_test::event_recorder warnings;
    auto quiet = quick(60s);
    quiet.event_log = warnings.logger(otpkv::log_level::warning);
    auto other = start_client({{"n2", "127.0.0.1", peer.port()}}, quiet);
    CHECK(other->call(0, parse("GET b k")) == "k\r\nOK\r\n");
    other->stop();
    CHECK(warnings.events().empty());
    client->stop();
}

TEST_CASE("node_client: stats counts each node's requests, failures, requests in flight, "
          "connections and last error; heartbeats are not requests") {
    fake_peer hung("n2");
    fake_peer fine("n3");
    hung.set_mode(fake_peer::mode::hang);
    auto options = quick(60s);
    options.connections = 2;
    auto client =
        start_client({{"n2", "127.0.0.1", hung.port()}, {"n3", "127.0.0.1", fine.port()}}, options);
    otpkv::node_stats s = client->stats(0);
    CHECK(s.status == node_status::unknown);
    CHECK(s.requests == 0);
    CHECK(s.connections == 0);
    CHECK(s.last_error.empty());
    CHECK(client->stats(7).status == node_status::down); // no such node

    journal replies;
    for (std::uint64_t i = 0; i < 4; ++i) {
        client->request(0, "GET b k\r\n", command_kind::get, i, into(replies));
    }
    // Sent (the peer has them all, so both connections were greeted), not answered.
    CHECK(eventually([&] { return hung.requests().size() == 4; }));
    s = client->stats(0);
    CHECK(s.in_flight == 4);
    CHECK(s.requests == 4);
    CHECK(s.failures == 0);
    CHECK(s.status == node_status::up);
    CHECK(s.connections == 2); // affinities 0 to 3 over a pool of two
    CHECK(client->call(1, parse("GET b k")) == "k\r\nOK\r\n");
    CHECK(client->stats(1).requests == 1);
    CHECK(client->stats(1).connections == 1);
    CHECK(client->stats(0).requests == 4); // each node its own

    hung.release();
    CHECK(replies.take(4).size() == 4);
    CHECK(eventually([&] { return client->stats(0).in_flight == 0; }));
    CHECK(client->stats(0).failures == 0);

    // Failures: a reply that breaks the framing fails its request; the last error says why.
    hung.set_mode(fake_peer::mode::answer);
    CHECK(client->call(0, parse("GET b wrongid")) == std::nullopt);
    s = client->stats(0);
    CHECK(s.requests == 5);
    CHECK(s.failures == 1);
    CHECK(s.in_flight == 0);
    CHECK(s.last_error.starts_with("answered request "));
    client->stop();
    s = client->stats(0);
    CHECK(s.connections == 0);

    // Heartbeats do not count.
    fake_peer beating("n4");
    auto beat = quick(60s);
    beat.heartbeat = 20ms;
    auto c2 = start_client({{"n4", "127.0.0.1", beating.port()}}, beat);
    CHECK(c2->call(0, parse("GET b k")) == "k\r\nOK\r\n");
    CHECK(eventually([&] { return beating.heartbeats() >= 3; }));
    CHECK(c2->stats(0).requests == 1);
    CHECK(c2->stats(0).in_flight == 0);
    c2->stop();
}

// ---------------------------------------------------------------------------------------
// Streams (SUBSCRIBE)
// ---------------------------------------------------------------------------------------

TEST_CASE("node_client: subscribe streams a bucket's events from its owner") {
    real_peer owner("n2");
    REQUIRE(owner.reg->create("s").has_value());
    auto client = start_client({{"n2", "127.0.0.1", owner.port()}}, quick(60s));
    stream_log log;

    SUBCASE("a bucket the owner does not have: refused with its reply, nothing else") {
        const std::uint64_t id = client->subscribe(0, "missing", log.callbacks());
        CHECK(id != 0);
        REQUIRE(eventually([&] { return log.seen.size() == 1; }));
        CHECK(log.seen.take() == std::vector<std::string>{"refused NOT FOUND\r\n"});
        CHECK(owner.connections() == 1); // the pooled one, which goes on
        CHECK(client->call(0, parse("GET s k")) == "\r\nOK\r\n");
        CHECK(log.data_calls == 0);
        CHECK(log.seen.size() == 0);
    }

    SUBCASE("events, exactly, until the bucket exits; then ended") {
        const std::uint64_t id = client->subscribe(0, "s", log.callbacks());
        REQUIRE(eventually([&] { return log.seen.size() == 1; }));
        CHECK(log.seen.take() == std::vector<std::string>{"subscribed " + std::to_string(id)});
        CHECK(owner.connections() == 1); // the pooled connection: no connection of its own
        const auto bucket = owner.reg->lookup("s");
        REQUIRE(bucket != nullptr);
        bucket->put("k", "v");
        bucket->put("bin", std::string("\0\xff", 2));
        CHECK(bucket->erase("k") == "v");
        const std::string events =
            "k SET TO v\r\n" + std::string("bin SET TO \0\xff\r\n", 15) + "k DELETED\r\n";
        CHECK(eventually([&] { return log.received().size() >= events.size(); }));
        CHECK(log.received() == events);
        bucket->stop();
        REQUIRE(eventually([&] { return log.seen.size() == 1; }));
        CHECK(log.seen.take() == std::vector<std::string>{"ended"});
        CHECK(owner.connections() == 1);
        CHECK(client->call(0, parse("GET s k")) == "NOT FOUND\r\n"); // the connection goes on
    }

    SUBCASE("many streams and requests share the pooled connection; each gets its own events, "
            "in order") {
        REQUIRE(owner.reg->create("t").has_value());
        std::array<stream_log, 20> logs;
        for (std::size_t i = 0; i < logs.size(); ++i) {
            client->subscribe(0, i % 2 == 0 ? "s" : "t", logs[i].callbacks());
        }
        for (auto& l : logs) {
            REQUIRE(eventually([&] { return l.seen.size() == 1; }));
        }
        std::string s_events;
        std::string t_events;
        for (int i = 0; i < 100; ++i) {
            const std::string v = std::to_string(i);
            CHECK(client->call(0, parse("PUT s k " + v)) == "OK\r\n");
            owner.reg->lookup("t")->put("k", v);
            s_events += "k SET TO " + v + "\r\n";
            t_events += "k SET TO " + v + "\r\n";
        }
        for (std::size_t i = 0; i < logs.size(); ++i) {
            const std::string& want = i % 2 == 0 ? s_events : t_events;
            CHECK(eventually([&] { return logs[i].received().size() >= want.size(); }));
            CHECK(logs[i].received() == want);
        }
        CHECK(owner.connections() == 1);
        client->stop();
    }

    SUBCASE("the connection to the owner is lost: lost, not ended") {
        client->subscribe(0, "s", log.callbacks());
        REQUIRE(eventually([&] { return log.seen.size() == 1; }));
        owner.server->stop();
        REQUIRE(eventually([&] { return log.seen.size() == 2; }));
        CHECK(log.seen.take().back() == "lost");
    }

    SUBCASE("cancel_stream: the stream's connection closes and no callback runs after it") {
        const std::uint64_t id = client->subscribe(0, "s", log.callbacks());
        REQUIRE(eventually([&] { return log.seen.size() == 1; }));
        owner.reg->lookup("s")->put("k", "1");
        REQUIRE(eventually([&] { return log.data_calls > 0; }));
        client->cancel_stream(id);
        // The UNSUBSCRIBE goes ahead of this request on the one connection: once it is
        // answered, the owner has cancelled the stream.
        CHECK(client->call(0, parse("GET s k")) == "1\r\nOK\r\n");
        const int calls = log.data_calls;
        owner.reg->lookup("s")->put("k", "2");
        owner.reg->lookup("s")->stop();
        CHECK(client->call(0, parse("GET s k")) == "NOT FOUND\r\n"); // the client goes on
        CHECK(log.data_calls == calls);
        CHECK(log.received() == "k SET TO 1\r\n");
        CHECK(log.seen.take() == std::vector<std::string>{"subscribed " + std::to_string(id)});
    }

    SUBCASE("data returning false closes the stream, and ended is not called") {
        log.keep = false;
        client->subscribe(0, "s", log.callbacks());
        REQUIRE(eventually([&] { return log.seen.size() == 1; }));
        owner.reg->lookup("s")->put("k", "1");
        REQUIRE(eventually([&] { return log.data_calls == 1; }));
        CHECK(client->call(0, parse("GET s k")) == "1\r\nOK\r\n"); // after the UNSUBSCRIBE
        owner.reg->lookup("s")->put("k", "2");
        owner.reg->lookup("s")->stop();
        CHECK(client->call(0, parse("GET s k")) == "NOT FOUND\r\n");
        CHECK(log.data_calls == 1);
        CHECK(log.seen.size() == 1); // "subscribed" only
    }

    SUBCASE("the client stops: ended") {
        client->subscribe(0, "s", log.callbacks());
        REQUIRE(eventually([&] { return log.seen.size() == 1; }));
        CHECK(client->stop() == otpkv::exit_reason::shutdown());
        CHECK(log.seen.size() == 2); // told by the time stop returned
        CHECK(log.seen.take().back() == "ended");
        CHECK(eventually([&] { return owner.connections() == 0; }));
    }
    client->stop();
}

TEST_CASE("node_client: subscribe to an unreachable node is refused as unavailable, and the "
          "node is down") {
    auto client = start_client({{"n2", "127.0.0.1", otpkv_test::free_port()}}, quick(60s));
    stream_log log;
    client->subscribe(0, "s", log.callbacks());
    REQUIRE(eventually([&] { return log.seen.size() == 1; }, 10s));
    CHECK(log.seen.take() == std::vector<std::string>{"refused (unavailable)"});
    CHECK(client->status(0) == node_status::down);
    // Known down: refused before subscribe returns.
    stream_log again;
    client->subscribe(0, "s", again.callbacks());
    CHECK(again.seen.take() == std::vector<std::string>{"refused (unavailable)"});
    client->stop();
}

// ---------------------------------------------------------------------------------------
// Stop
// ---------------------------------------------------------------------------------------

TEST_CASE("node_client: stop fails the requests in flight and ends the streams before it "
          "returns; later requests fail before returning") {
    fake_peer hung("n2");
    hung.set_mode(fake_peer::mode::hang);
    real_peer owner("n3");
    REQUIRE(owner.reg->create("s").has_value());
    auto client = start_client(
        {{"n2", "127.0.0.1", hung.port()}, {"n3", "127.0.0.1", owner.port()}}, quick(60s));
    journal replies;
    for (std::uint64_t i = 0; i < 3; ++i) {
        client->request(0, "PUT b k " + std::to_string(i) + "\r\n", command_kind::put, i,
                        into(replies));
    }
    stream_log log;
    client->subscribe(1, "s", log.callbacks());
    REQUIRE(eventually([&] { return hung.requests().size() == 3; }));
    REQUIRE(eventually([&] { return log.seen.size() == 1; }));

    CHECK(client->stop() == otpkv::exit_reason::shutdown());
    CHECK_FALSE(client->alive());
    CHECK(replies.take() == std::vector<std::string>(3, "(unavailable)"));
    const auto seen = log.seen.take();
    REQUIRE(seen.size() == 2);
    CHECK(seen[1] == "ended");

    bool failed_at_once = false;
    client->request(1, "GET s k\r\n", command_kind::get, 0,
                    [&](std::optional<std::string> r) { failed_at_once = !r.has_value(); });
    CHECK(failed_at_once);
    CHECK(client->call(1, parse("GET s k")) == std::nullopt);
    stream_log late;
    client->subscribe(1, "s", late.callbacks());
    CHECK(late.seen.take() == std::vector<std::string>{"refused (unavailable)"});
    CHECK(client->stop() == otpkv::exit_reason::shutdown()); // stopping again: the same
    CHECK(eventually([&] { return owner.connections() == 0; }));
}

TEST_CASE("node_client: stop exits with the reason it is given, once") {
    auto client = start_client({}, quick(60s));
    const auto maintenance = otpkv::exit_reason::shutdown("maintenance");
    CHECK(client->stop(maintenance) == maintenance);
    CHECK(client->wait() == maintenance);
    CHECK(client->stop(otpkv::exit_reason::shutdown("later")) == maintenance);
}
