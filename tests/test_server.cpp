// SPDX-License-Identifier: MIT
// The server in process: both pollers, containment of a failing handler, start errors,
// stop, backpressure and the subscriber cap with small limits. (tests/test_node.cpp tests
// the node's tree around it; tests/test_kv_server*.cpp run the real kv_server process.)
#include "kv_process.hpp"
#include "support.hpp"

#include <otpkv/net/server.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

using otpkv_test::eventually;
using otpkv_test::guide_replies;
using otpkv_test::guide_requests;
using otpkv_test::kv_client;
using otpkv_test::loopback;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<otpkv::server> start(std::shared_ptr<otpkv::registry> reg,
                                     otpkv::server_options o) {
    auto s = otpkv::server::start(std::move(reg), std::move(o));
    REQUIRE(s.has_value());
    return std::move(s).value();
}

} // namespace

TEST_CASE("server: epoll and poll both serve the guide's session, byte for byte") {
    for (const auto poller : {otpkv::poller_kind::epoll, otpkv::poller_kind::poll}) {
        CAPTURE(static_cast<int>(poller));
        auto reg = otpkv::registry::start();
        auto srv = start(reg, loopback(poller));
        CHECK(srv->address() == "127.0.0.1:" + std::to_string(srv->port()));
        kv_client a(srv->port());
        kv_client b(srv->port());
        CHECK(a.exchange(guide_requests, guide_replies.size()) == guide_replies);
        CHECK(b.exchange("GET shopping eggs\n", 6) == "\r\nOK\r\n");
        CHECK(eventually([&] { return srv->stats().requests == 8; }));
        CHECK(srv->stats().accepted == 2);
        CHECK(srv->stats().connections == 2);
        b.close();
        CHECK(eventually([&] { return srv->stats().connections == 1; }));
        CHECK(srv->stop() == otpkv::exit_reason::shutdown());
        CHECK(a.read_to_eof() == "");
        CHECK(a.end() == kv_client::ending::eof);
    }
}

TEST_CASE("server: a handler that throws gets ERROR internal and closes only its connection") {
    auto reg = otpkv::registry::start();
    auto plain = otpkv::registry_handler(reg);
    auto srv = otpkv::server::start(
                   [plain](const otpkv::command& cmd, std::string& out, otpkv::session& s) {
                       if (cmd.bucket == "boom") {
                           out += "half a reply"; // dropped: the error replaces it
                           throw std::runtime_error("handler failed");
                       }
                       plain(cmd, out, s);
                   },
                   loopback())
                   .value();
    kv_client victim(srv->port());
    kv_client bystander(srv->port());
    CHECK(bystander.exchange("CREATE b\nPUT b k v\n", 8) == "OK\r\nOK\r\n");
    // The line after the failing one is never run: its PUT leaves k2 absent.
    CHECK(victim.send_all("GET b k\nGET boom k\nPUT b k2 v2\n"));
    CHECK(victim.read_to_eof() == "v\r\nOK\r\nERROR internal\r\n");
    CHECK(victim.end() == kv_client::ending::eof);
    CHECK(bystander.exchange("GET b k2\nGET b k\n", 13) == "\r\nOK\r\nv\r\nOK\r\n");
    CHECK(srv->alive());
}

TEST_CASE("server: a CREATE the stopping registry refuses gets ERROR internal and a close") {
    auto reg = otpkv::registry::start();
    auto srv = start(reg, loopback());
    kv_client c(srv->port());
    CHECK(c.exchange("CREATE b\n", 4) == "OK\r\n");
    reg->stop();
    CHECK(c.send_all("CREATE b\nGET b k\n"));
    CHECK(c.read_to_eof() == "ERROR internal\r\n");
    CHECK(c.end() == kv_client::ending::eof);
    kv_client other(srv->port()); // the server itself goes on
    CHECK(other.exchange("GET b k\n", 11) == "NOT FOUND\r\n");
}

TEST_CASE("server: a taken port or a bad address fails start with the system error") {
    auto reg = otpkv::registry::start();
    auto first = start(reg, loopback());
    auto o = loopback();
    o.port = first->port();
    auto second = otpkv::server::start(reg, o);
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().code == otpkv::errc::start_failed);
    const std::string text = otpkv::to_string(second.error().reason);
    CHECK(text.find("127.0.0.1:" + std::to_string(first->port())) != std::string::npos);
    try {
        std::rethrow_exception(second.error().reason.exception());
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::address_in_use);
    }
    o.bind = "localhost"; // a name, not an address: never resolved behind the user's back
    auto third = otpkv::server::start(reg, o);
    REQUIRE_FALSE(third.has_value());
    CHECK(otpkv::to_string(third.error().reason).find("not an IP address") != std::string::npos);
    // The first one was not disturbed.
    kv_client c(first->port());
    CHECK(c.exchange("CREATE x\n", 4) == "OK\r\n");
}

TEST_CASE("server: stop closes every connection, records the reason once, tells monitors") {
    auto reg = otpkv::registry::start();
    auto srv = start(reg, loopback());
    std::atomic<int> told{0};
    auto m = srv->monitor([&](const otpkv::exit_reason& r) {
        CHECK(r == otpkv::exit_reason::shutdown("bye"));
        ++told;
    });
    kv_client a(srv->port());
    kv_client b(srv->port());
    CHECK(a.exchange("CREATE b\n", 4) == "OK\r\n");
    CHECK(b.send_all("PUT b k")); // a partial line, never run
    CHECK(srv->stop(otpkv::exit_reason::shutdown("bye")) == otpkv::exit_reason::shutdown("bye"));
    CHECK(srv->stop() == otpkv::exit_reason::shutdown("bye"));
    CHECK(a.read_to_eof().empty());
    CHECK(b.read_to_eof().empty());
    // stop() returns once the exit is recorded; the monitors run on the last loop's thread.
    srv->wait();
    CHECK(told == 1);
    CHECK(reg->with("b", [](auto& bucket) { return bucket.size(); }) == std::size_t{0});
}

TEST_CASE("server: a stop that times out on a stuck handler abandons the loop, and destroying "
          "the server does not wait for it") {
    struct shared {
        std::atomic<bool> inside{false};
        std::atomic<bool> release{false};
        std::atomic<bool> left{false};
    };
    auto state = std::make_shared<shared>();
    auto srv = otpkv::server::start(
                   [state](const otpkv::command&, std::string& out, otpkv::session&) {
                       state->inside = true;
                       while (!state->release.load()) {
                           std::this_thread::yield(); // stuck until the test lets it go
                       }
                       out += "late\r\n";
                       state->left = true;
                   },
                   loopback())
                   .value();
    kv_client c(srv->port());
    CHECK(c.send_all("GET b k\n"));
    REQUIRE(eventually([&] { return state->inside.load(); }));
    CHECK(srv->stop(otpkv::exit_reason::shutdown(), 50ms) == otpkv::exit_reason::killed());
    srv.reset(); // returns although the handler has not: its loop thread is detached
    CHECK_FALSE(state->left.load());
    state->release = true;
    CHECK(eventually([&] { return state->left.load(); }));
}

TEST_CASE("server: a subscriber's stream ends when its bucket exits") {
    auto reg = otpkv::registry::start();
    auto srv = start(reg, loopback());
    kv_client sub(srv->port());
    kv_client pub(srv->port());
    CHECK(pub.exchange("CREATE b\n", 4) == "OK\r\n");
    CHECK(sub.send_all("SUBSCRIBE b\n"));
    // SUBSCRIBE is answered by silence; wait until the subscription is in place.
    CHECK(eventually([&] { return srv->stats().requests == 2; }));
    CHECK(pub.exchange("PUT b k v\n", 4) == "OK\r\n");
    CHECK(sub.read_exact(12) == "k SET TO v\r\n");
    reg->lookup("b")->stop(otpkv::exit_reason::error("crash"));
    CHECK(sub.read_to_eof().empty());
    CHECK(sub.end() == kv_client::ending::eof);
    CHECK(pub.exchange("PUT b k v\n", 11) == "NOT FOUND\r\n");
}

TEST_CASE("server: a client that does not read stops being read, then gets every reply") {
    auto reg = otpkv::registry::start();
    auto o = loopback();
    o.threads = 1; // both clients on one loop (see below)
    o.max_output = 64 * 1024;
    auto srv = start(reg, o);
    const std::string value(1000, 'v');
    kv_client setup(srv->port());
    CHECK(setup.exchange("CREATE b\nPUT b k " + value + "\n", 8) == "OK\r\nOK\r\n");

    constexpr std::size_t requests = 20'000; // 20 MB of replies
    std::string batch;
    for (std::size_t i = 0; i < requests; ++i) {
        batch += i % 2 == 0 ? "GET b k\n" : "GET b nothing\n";
    }
    kv_client flood(srv->port(), 64 * 1024);
    std::thread writer([&] { CHECK(flood.send_only(batch, 20s)); });
    REQUIRE(eventually([&] { return srv->stats().requests > 2; })); // the flood's first ones
    // The server pulls requests until 64 KiB of replies are unsent (plus what the kernel's
    // buffers swallow), then none until they drain. Meanwhile another client is served, 50
    // times: each round trip is a turn of the one loop, in which a server that went on
    // reading the flood would take up to 64 KiB more of its 210 KB of requests.
    kv_client other(srv->port());
    constexpr std::size_t round_trips = 50;
    for (std::size_t i = 0; i < round_trips; ++i) {
        CHECK(other.exchange("GET b nothing\n", 6) == "\r\nOK\r\n");
    }
    const std::size_t handled = srv->stats().requests - 2 - round_trips;
    CHECK(handled < requests / 2);

    const std::string found = value + "\r\nOK\r\n";
    std::size_t exact = 0;
    for (std::size_t i = 0; i < requests; ++i) {
        const std::string want = i % 2 == 0 ? found : "\r\nOK\r\n";
        if (flood.read_exact(want.size(), 20s) == want) {
            ++exact;
        } else {
            break;
        }
    }
    writer.join();
    CHECK(exact == requests);
}

TEST_CASE("server: a subscriber past its cap is disconnected; publishers never wait") {
    auto reg = otpkv::registry::start();
    auto o = loopback();
    o.max_subscriber_output = 256 * 1024;
    auto srv = start(reg, o);
    kv_client pub(srv->port());
    CHECK(pub.exchange("CREATE b\n", 4) == "OK\r\n");
    kv_client sub(srv->port(), 16 * 1024);
    CHECK(sub.send_all("SUBSCRIBE b\n"));
    CHECK(eventually([&] { return srv->stats().requests == 2; }));

    const std::string put = "PUT b k " + std::string(4000, 'x') + "\n";
    constexpr int puts = 5000; // 20 MB of events, far past the cap and the kernel's buffers
    std::string batch;
    for (int i = 0; i < puts; ++i) {
        batch += put;
    }
    std::string oks;
    for (int i = 0; i < puts; ++i) {
        oks += "OK\r\n";
    }
    CHECK(pub.exchange(batch, oks.size(), 20s) == oks);
    CHECK(eventually([&] { return srv->stats().connections == 1; }));
    // What it did receive is an exact prefix of the events, and it is not all of them.
    const std::string event = "k SET TO " + std::string(4000, 'x') + "\r\n";
    std::string all;
    for (int i = 0; i < puts; ++i) {
        all += event;
    }
    const std::string got = sub.read_to_eof(10s);
    CHECK(got.size() < all.size());
    CHECK(all.compare(0, got.size(), got) == 0);
    CHECK(sub.end() != kv_client::ending::timeout);
}

TEST_CASE("server: idle_timeout closes silent connections, silently; never a subscriber, a "
          "peer's connection, or one waiting for a reply") {
    for (const auto poller : {otpkv::poller_kind::epoll, otpkv::poller_kind::poll}) {
        CAPTURE(static_cast<int>(poller));
        auto reg = otpkv::registry::start();
        auto plain = otpkv::registry_handler(reg);
        // `PEER` marks its connection as a peer's; `SLOW` is deferred, and the test answers it.
        std::mutex slow_mutex;
        otpkv::deferred_reply slow_reply;
        auto handler = [&](const otpkv::command& cmd, std::string& out, otpkv::session& s) {
            if (s.line() == "PEER") {
                s.mark_peer();
                out += "OK\r\n";
            } else if (s.line() == "SLOW") {
                const std::lock_guard lock(slow_mutex);
                slow_reply = s.defer();
            } else {
                plain(cmd, out, s);
            }
        };
        auto o = loopback(poller);
        o.idle_timeout = 500ms;
        auto started = otpkv::server::start(handler, o);
        REQUIRE(started.has_value());
        const auto srv = std::move(started).value();

        kv_client pub(srv->port());
        CHECK(pub.exchange("CREATE b\n", 4) == "OK\r\n");
        kv_client silent(srv->port());
        kv_client partial(srv->port());
        CHECK(partial.send_all("GET b")); // a partial line does not keep it open
        kv_client peer(srv->port());
        CHECK(peer.exchange("PEER\n", 4) == "OK\r\n");
        kv_client sub(srv->port());
        CHECK(sub.send_all("SUBSCRIBE b\n"));
        kv_client slow(srv->port());
        CHECK(slow.send_all("SLOW\n"));
        CHECK(eventually([&] { return srv->stats().requests == 4; }));

        // The publisher talks every 20 ms for 2 s (4 timeouts): it is never idle that long.
        for (int i = 0; i < 100; ++i) {
            CHECK(pub.exchange("PUT b k " + std::to_string(i) + "\n", 4) == "OK\r\n");
            std::this_thread::sleep_for(20ms);
        }
        CHECK(silent.read_to_eof().empty()); // closed without a word
        CHECK(silent.end() == kv_client::ending::eof);
        CHECK(partial.read_to_eof().empty());
        CHECK(partial.end() == kv_client::ending::eof);
        CHECK(peer.exchange("GET b k\n", 8) == "99\r\nOK\r\n");
        std::string events;
        for (int i = 0; i < 100; ++i) {
            events += "k SET TO " + std::to_string(i) + "\r\n";
        }
        CHECK(sub.read_exact(events.size()) == events);
        CHECK(srv->stats().idle_closed == 2);
        CHECK(srv->stats().connections == 4); // pub, peer, sub and slow
        {
            const std::lock_guard lock(slow_mutex);
            slow_reply.complete("done\r\n");
        }
        CHECK(slow.read_exact(6) == "done\r\n"); // waited for 4 timeouts, not cut
        // Once its reply is out, the slow one is idle like any other.
        CHECK(slow.read_to_eof().empty());
        CHECK(slow.end() == kv_client::ending::eof);
        // And so is the publisher, now silent. Only the peer and the subscriber stay.
        CHECK(pub.read_to_eof().empty());
        CHECK(pub.end() == kv_client::ending::eof);
        CHECK(eventually([&] { return srv->stats().connections == 2; }));
        CHECK(srv->stats().idle_closed == 4);
        CHECK(peer.read_for(10ms).empty());
        CHECK(peer.end() == kv_client::ending::open);
        CHECK(sub.read_for(10ms).empty());
        CHECK(sub.end() == kv_client::ending::open);
        srv->stop();
    }
}

TEST_CASE("server: idle_timeout never cuts a client whose replies wait to be read") {
    auto reg = otpkv::registry::start();
    auto o = loopback();
    o.idle_timeout = 300ms;
    o.max_output = 64 * 1024;
    auto srv = start(reg, o);
    const std::string value(1000, 'v');
    kv_client setup(srv->port());
    CHECK(setup.exchange("CREATE b\nPUT b k " + value + "\n", 8) == "OK\r\nOK\r\n");

    constexpr std::size_t requests = 20'000; // 20 MB of replies: the server stops reading it
    std::string batch;
    for (std::size_t i = 0; i < requests; ++i) {
        batch += "GET b k\n";
    }
    kv_client flood(srv->port(), 64 * 1024);
    std::thread writer([&] { CHECK(flood.send_only(batch, 20s)); });
    // Neither side moves for 4 timeouts: the flood sends nothing, the server has replies
    // it cannot send.
    std::this_thread::sleep_for(1200ms);
    const std::string found = value + "\r\nOK\r\n";
    std::size_t exact = 0;
    for (std::size_t i = 0; i < requests && flood.read_exact(found.size(), 20s) == found; ++i) {
        ++exact;
    }
    writer.join();
    CHECK(exact == requests);
    CHECK(srv->stats().idle_closed <= 1); // `setup` may be closed, never the flood
}

TEST_CASE("server: idle_timeout zero never closes a connection") {
    auto reg = otpkv::registry::start();
    auto o = loopback();
    o.idle_timeout = 0ms;
    auto srv = start(reg, o);
    kv_client c(srv->port());
    CHECK(c.read_for(700ms).empty());
    CHECK(c.end() == kv_client::ending::open);
    CHECK(c.exchange("GET b k\n", 11) == "NOT FOUND\r\n");
    CHECK(srv->stats().idle_closed == 0);
}

TEST_CASE("server: a subscriber that half-closes gets every event; its close is noticed at the "
          "next event") {
    for (const auto poller : {otpkv::poller_kind::epoll, otpkv::poller_kind::poll}) {
        CAPTURE(static_cast<int>(poller));
        auto reg = otpkv::registry::start();
        auto srv = start(reg, loopback(poller));
        kv_client pub(srv->port());
        CHECK(pub.exchange("CREATE b\n", 4) == "OK\r\n");
        kv_client sub(srv->port());
        CHECK(sub.send_all("SUBSCRIBE b\n"));
        CHECK(eventually([&] { return srv->stats().requests == 2; }));
        sub.shutdown_write(); // as `nc -N` does
        CHECK(sub.read_for(100ms).empty());
        CHECK(sub.end() == kv_client::ending::open); // not closed on it
        std::string events;
        for (int i = 0; i < 100; ++i) {
            CHECK(pub.exchange("PUT b k " + std::to_string(i) + "\n", 4) == "OK\r\n");
            events += "k SET TO " + std::to_string(i) + "\r\n";
        }
        CHECK(pub.exchange("DELETE b k\n", 4) == "OK\r\n");
        CHECK(sub.read_exact(events.size() + 11) == events + "k DELETED\r\n");
        CHECK(srv->stats().connections == 2);
        // Gone for good: the next events fail to reach it, and the server lets it go (and
        // does not spin on its hang-up: the publisher is still served at once).
        sub.close();
        int puts = 0;
        CHECK(eventually([&] {
            ++puts;
            return pub.exchange("PUT b k x\n", 4) == "OK\r\n" && srv->stats().connections == 1;
        }));
        CHECK(pub.exchange("GET b k\n", 7) == "x\r\nOK\r\n");
        CAPTURE(puts);
    }
}

TEST_CASE("server: past max_subscriber_memory the largest backlog is cut first, until the "
          "total is back under the cap") {
    auto reg = otpkv::registry::start();
    auto o = loopback();
    o.max_subscriber_memory = std::size_t{16} << 20;
    auto srv = start(reg, o);
    kv_client pub(srv->port());
    CHECK(pub.exchange("CREATE a\nCREATE b\nCREATE c\n", 12) == "OK\r\nOK\r\nOK\r\n");
    // Three subscribers that do not read, with small receive buffers so the kernel holds
    // little of what is sent to them.
    kv_client big(srv->port(), 16 * 1024);
    kv_client middle(srv->port(), 16 * 1024);
    kv_client small(srv->port(), 16 * 1024);
    CHECK(big.send_all("SUBSCRIBE a\n"));
    CHECK(middle.send_all("SUBSCRIBE b\n"));
    CHECK(small.send_all("SUBSCRIBE c\n"));
    REQUIRE(eventually([&] { return srv->stats().requests == 6; }));
    CHECK(srv->stats().subscriber_memory == 0);

    // Events of 64 KiB values put straight into the buckets (the publisher is this thread);
    // each subscriber's expected stream is kept.
    const std::string value(64 * 1024, 'v');
    std::map<std::string, std::string> streams;
    std::map<std::string, int> counts;
    const auto publish = [&](const std::string& bucket) {
        const std::string key = bucket + std::to_string(counts[bucket]++);
        REQUIRE(reg->lookup(bucket)->put(key, value));
        streams[bucket] += key + " SET TO " + value + "\r\n";
    };
    // Publishes into `bucket` until the server holds `target` bytes of unsent events, also
    // once the loop has sent what the kernel takes (at most 64 MiB of events).
    const auto fill_to = [&](const std::string& bucket, std::size_t target) {
        for (int round = 0; round < 100; ++round) {
            while (srv->stats().subscriber_memory < target && counts[bucket] < 1024) {
                publish(bucket);
            }
            std::this_thread::sleep_for(20ms);
            if (srv->stats().subscriber_memory >= target) {
                return;
            }
        }
        FAIL("the server never held " << target << " bytes for " << bucket);
    };
    constexpr std::size_t mib = std::size_t{1} << 20;
    fill_to("a", 10 * mib); // big holds about 10 MiB
    fill_to("b", 14 * mib); // middle about 4 MiB
    CHECK(srv->stats().subscribers_cut == 0);
    CHECK(srv->stats().subscriber_memory <= 16 * mib + value.size() + 64);

    // Now small's backlog takes the total past 16 MiB, by one event: big, the largest, is
    // cut, which brings the total back under the cap, so nobody else is.
    while (srv->stats().subscribers_cut == 0 && counts["c"] < 1024) {
        publish("c");
    }
    CHECK(srv->stats().subscribers_cut == 1);
    CHECK(eventually([&] { return srv->stats().connections == 3; }));
    CHECK(srv->stats().subscriber_memory < 16 * mib);
    // big gets a prefix of its events (what the kernel held), then the end.
    const std::string got = big.read_to_eof(10s);
    CHECK(big.end() == kv_client::ending::eof);
    CHECK(got.size() < streams["a"].size());
    CHECK(streams["a"].compare(0, got.size(), got) == 0);

    // small keeps growing until it has the largest backlog of those left: it goes next, and
    // middle, smaller, stays.
    while (srv->stats().subscribers_cut == 1 && counts["c"] < 1024) {
        publish("c");
    }
    CHECK(srv->stats().subscribers_cut == 2);
    CHECK(eventually([&] { return srv->stats().connections == 2; }));
    const std::string small_got = small.read_to_eof(10s);
    CHECK(small.end() == kv_client::ending::eof);
    CHECK(small_got.size() < streams["c"].size());
    CHECK(streams["c"].compare(0, small_got.size(), small_got) == 0);

    // middle was never cut: every one of its events, in order, and the stream goes on.
    CHECK(middle.read_exact(streams["b"].size(), 10s) == streams["b"]);
    const std::string last = "b" + std::to_string(counts["b"]) + " SET TO " + value + "\r\n";
    publish("b");
    CHECK(middle.read_exact(last.size(), 10s) == last);
    CHECK(middle.end() == kv_client::ending::open);
    // Everything sent: the server holds nothing for its subscribers any more.
    CHECK(eventually([&] { return srv->stats().subscriber_memory == 0; }));
    CHECK(srv->stats().subscribers_cut == 2);
    // A subscriber's close is noticed at the next events it cannot take (a close reads like
    // a half-close, after which a subscriber keeps its stream).
    middle.close();
    CHECK(eventually([&] {
        publish("b");
        return srv->stats().connections == 1;
    }));
    CHECK(eventually([&] { return srv->stats().subscriber_memory == 0; }));
}

TEST_CASE("server: a peer's subscribed connection (session::mark_peer) ends at its end of input") {
    auto reg = otpkv::registry::start();
    auto plain = otpkv::registry_handler(reg);
    auto handler = [&](const otpkv::command& cmd, std::string& out, otpkv::session& s) {
        if (s.line() == "PEER") {
            s.mark_peer();
            out += "OK\r\n";
        } else {
            plain(cmd, out, s);
        }
    };
    auto started = otpkv::server::start(handler, loopback());
    REQUIRE(started.has_value());
    const auto srv = std::move(started).value();
    kv_client pub(srv->port());
    CHECK(pub.exchange("CREATE b\n", 4) == "OK\r\n");
    kv_client node(srv->port());
    CHECK(node.exchange("PEER\nSUBSCRIBE b\n", 4) == "OK\r\n");
    CHECK(eventually([&] { return srv->stats().requests == 3; }));
    CHECK(pub.exchange("PUT b k v\n", 4) == "OK\r\n");
    CHECK(node.read_exact(12) == "k SET TO v\r\n");
    node.shutdown_write();
    CHECK(node.read_to_eof().empty()); // closed at once, no event needed
    CHECK(node.end() == kv_client::ending::eof);
    CHECK(eventually([&] { return srv->stats().connections == 1; }));
}

TEST_CASE("server: a peer's connection (session::mark_peer) takes lines peer_line_margin longer; "
          "a client never does, also after a peer used the loop's spare framer") {
    for (const auto poller : {otpkv::poller_kind::epoll, otpkv::poller_kind::poll}) {
        CAPTURE(static_cast<int>(poller));
        // `PEER` marks its connection as a peer's; every other line is answered with its
        // length.
        auto handler = [](const otpkv::command&, std::string& out, otpkv::session& s) {
            if (s.line() == "PEER") {
                s.mark_peer();
            }
            out += std::to_string(s.line().size()) + "\r\n";
        };
        auto o = loopback(poller);
        o.threads = 1; // one loop, one spare framer, lent to every connection in turn
        o.max_line = 100;
        auto started = otpkv::server::start(handler, o);
        REQUIRE(started.has_value());
        const auto srv = std::move(started).value();
        const std::size_t peer_max = 100 + otpkv::peer_line_margin;
        const std::string longest = std::to_string(peer_max) + "\r\n";

        kv_client node(srv->port());
        CHECK(node.exchange("PEER\n", 3) == "4\r\n");
        CHECK(node.exchange(std::string(peer_max, 'p') + "\r\n", longest.size()) == longest);
        // A client after it, on the same loop: max_line, not the peer's limit.
        kv_client client(srv->port());
        CHECK(client.exchange(std::string(100, 'c') + "\n", 5) == "100\r\n");
        REQUIRE(client.send_all(std::string(101, 'c') + "\n"));
        CHECK(client.read_to_eof() == "ERROR line too long\r\n");
        // The peer keeps its limit, whichever framer it reads with; one byte more is too long.
        CHECK(node.exchange(std::string(peer_max, 'q') + "\n", longest.size()) == longest);
        REQUIRE(node.send_all(std::string(peer_max + 1, 'p') + "\r\n"));
        CHECK(node.read_to_eof() == "ERROR line too long\r\n");
    }
}

// ---------------------------------------------------------------------------------------
// Statistics (server::snapshot) and events (server_options::log)
// ---------------------------------------------------------------------------------------

namespace {

std::size_t sum(const auto& counts) {
    std::size_t n = 0;
    for (const auto c : counts) {
        n += c;
    }
    return n;
}

std::size_t verb(std::string_view name) {
    for (std::size_t i = 0; i < otpkv::command_verbs.size(); ++i) {
        if (otpkv::command_verbs[i] == name) {
            return i;
        }
    }
    FAIL("no verb " << name);
    return 0;
}

std::size_t errors_of(const otpkv::server_snapshot& s, std::string_view reason) {
    for (const auto& [r, n] : s.errors) {
        if (r == reason) {
            return n;
        }
    }
    return 0;
}

// The events a logger handed over, kept for the test.
class event_log {
  public:
    otpkv::logger logger(otpkv::log_level level = otpkv::log_level::debug) {
        return otpkv::logger(
            [this](const otpkv::log_event& e) {
                const std::lock_guard lock(mutex_);
                events_.push_back(e);
            },
            level);
    }
    std::vector<otpkv::log_event> events() {
        const std::lock_guard lock(mutex_);
        return events_;
    }
    // The events of `what` (and `limit=`, when given), and the sum of their `count=`.
    std::pair<std::size_t, std::size_t> tally(std::string_view what, std::string_view limit = {}) {
        std::size_t events = 0;
        std::size_t count = 0;
        for (const auto& e : this->events()) {
            if (e.what != what || (!limit.empty() && field(e, "limit") != limit)) {
                continue;
            }
            ++events;
            count += std::stoul(field(e, "count"));
        }
        return {events, count};
    }
    static std::string field(const otpkv::log_event& e, std::string_view key) {
        for (const auto& [k, v] : e.fields) {
            if (k == key) {
                return v;
            }
        }
        return {};
    }

  private:
    std::mutex mutex_;
    std::vector<otpkv::log_event> events_;
};

} // namespace

TEST_CASE("server: snapshot counts commands per verb, errors per reason, bytes and latency") {
    auto reg = otpkv::registry::start();
    auto srv = start(reg, loopback());
    kv_client a(srv->port());
    const std::string requests = "CREATE a\nPUT a k v\nGET a k\nGET nope k\nDELETE a k\n"
                                 "FOO a\nGET a\nput a k v\nPUT a k v extra\n";
    const std::string replies = "OK\r\nOK\r\nv\r\nOK\r\nNOT FOUND\r\nOK\r\nUNKNOWN COMMAND\r\n"
                                "UNKNOWN COMMAND\r\nUNKNOWN COMMAND\r\nUNKNOWN COMMAND\r\n";
    CHECK(a.exchange(requests, replies.size()) == replies);
    kv_client sub(srv->port());
    CHECK(sub.send_all("SUBSCRIBE a\n"));
    CHECK(eventually([&] { return srv->snapshot().subscribers == 1; }));
    // The counters of a reply are written right after its send: wait for the last one.
    CHECK(eventually([&] { return srv->snapshot().bytes_out == replies.size(); }));
    const otpkv::server_snapshot s = srv->snapshot();
    CHECK(s.address == srv->address());
    CHECK(s.connections == 2);
    CHECK(s.accepted == 2);
    CHECK(s.max_connections == 10000);
    CHECK(s.commands[verb("create")] == 1);
    CHECK(s.commands[verb("put")] == 1);
    CHECK(s.commands[verb("get")] == 2);
    CHECK(s.commands[verb("delete")] == 1);
    CHECK(s.commands[verb("subscribe")] == 1);
    CHECK(s.commands[verb("info")] == 0);
    CHECK(s.commands[verb("unknown")] == 4); // FOO, bad arity twice, a verb in lower case
    CHECK(s.errors == std::vector<std::pair<std::string, std::size_t>>{{"unknown command", 4},
                                                                       {"not found", 1}});
    CHECK(s.bytes_in == requests.size() + std::string("SUBSCRIBE a\n").size());
    CHECK(s.bytes_out == replies.size());
    CHECK(s.latency_count == 10);
    CHECK(sum(s.latency) == 10);
    CHECK(sum(s.commands) == 10);
    CHECK(s.latency_sum > 0);
    CHECK(s.latency_sum < 10.0);
    CHECK(srv->stats().requests == 10);
}

TEST_CASE("server: error replies are counted under a fixed set of reasons, never the bytes a "
          "handler wrote") {
    auto o = loopback();
    o.max_line = 16;
    const auto srv = [&] {
        auto s = otpkv::server::start(
            [](const otpkv::command&, std::string& out, otpkv::session& session) {
                const std::string_view line = session.line();
                if (line == "down") {
                    out += "ERROR node n\x01zz unavailable\r\n";
                } else if (line == "odd") {
                    out += "ERROR secret user bytes\r\n";
                } else if (line == "route") {
                    out += "ERROR no route\r\n";
                } else if (line == "value") {
                    out += "ERRORS\r\nOK\r\n"; // a value, not an error
                } else {
                    out += "OK\r\n";
                }
            },
            o);
        REQUIRE(s.has_value());
        return std::move(s).value();
    }();
    kv_client a(srv->port());
    const std::string replies = "ERROR node n\x01zz unavailable\r\nERROR secret user bytes\r\n"
                                "ERROR no route\r\nERRORS\r\nOK\r\nOK\r\n";
    CHECK(a.exchange("down\nodd\nroute\nvalue\nfine\n", replies.size()) == replies);
    kv_client b(srv->port());
    CHECK(b.exchange(std::string(17, 'x') + "\n", 21) == "ERROR line too long\r\n");
    CHECK(eventually([&] { return srv->snapshot().errors.size() == 4; }));
    const auto s = srv->snapshot();
    CHECK(errors_of(s, "node unavailable") == 1);
    CHECK(errors_of(s, "other") == 1);
    CHECK(errors_of(s, "no route") == 1);
    CHECK(errors_of(s, "line too long") == 1);
    CHECK(s.commands[verb("unknown")] == 5); // the over-long line is no command
    CHECK(s.latency_count == 5);
}

TEST_CASE("server: a snapshot under load is never torn: count, histogram and commands agree") {
    auto reg = otpkv::registry::start();
    REQUIRE(reg->create("b"));
    auto srv = start(reg, loopback());
    std::atomic<bool> done{false};
    std::vector<std::thread> clients;
    constexpr int rounds = 200;
    for (int t = 0; t < 4; ++t) {
        clients.emplace_back([&, t] {
            kv_client c(srv->port());
            std::string batch;
            std::string expected;
            for (int i = 0; i < 16; ++i) {
                batch +=
                    "PUT b k" + std::to_string(t) + " v\nGET b k" + std::to_string(t) + "\nNOPE\n";
                expected += "OK\r\nv\r\nOK\r\nUNKNOWN COMMAND\r\n";
            }
            for (int r = 0; r < rounds; ++r) {
                CHECK(c.exchange(batch, expected.size()) == expected);
            }
        });
    }
    std::size_t snapshots = 0;
    std::size_t last = 0;
    std::thread reader([&] {
        while (!done.load()) {
            const auto s = srv->snapshot();
            ++snapshots;
            const std::size_t commands = sum(s.commands);
            CHECK(s.latency_count == sum(s.latency));
            CHECK(s.latency_count == commands);
            CHECK(errors_of(s, "unknown command") == s.commands[verb("unknown")]);
            CHECK(commands >= last);
            last = commands;
        }
    });
    for (auto& c : clients) {
        c.join();
    }
    done = true;
    reader.join();
    CHECK(snapshots > 0);
    const auto s = srv->snapshot();
    CHECK(sum(s.commands) == 4 * rounds * 48);
    CHECK(s.commands[verb("put")] == 4 * rounds * 16);
    CHECK(s.latency_count == 4 * rounds * 48);
}

TEST_CASE("server: refused connections are logged once, then at most once a second with a "
          "count") {
    event_log log;
    auto reg = otpkv::registry::start();
    auto o = loopback();
    o.max_connections = 1;
    o.log = log.logger(otpkv::log_level::info);
    auto srv = start(reg, o);
    kv_client held(srv->port());
    CHECK(held.exchange("CREATE a\n", 4) == "OK\r\n");
    constexpr std::size_t refused = 30;
    for (std::size_t i = 0; i < refused; ++i) {
        kv_client c(srv->port());
        CHECK(c.read_to_eof() == "ERROR too many connections\r\n");
    }
    // The first at once; the rest in one or two more within about a second.
    CHECK(eventually([&] { return log.tally("limit_hit").second == refused; }, 5s));
    const auto [events, count] = log.tally("limit_hit", "max_connections");
    CHECK(count == refused);
    CHECK(events >= 2);
    CHECK(events <= 4);
    const auto first = log.events().front();
    CHECK(first.level == otpkv::log_level::warning);
    CHECK(first.what == "limit_hit");
    CHECK(first.reason == "too many connections");
    CHECK(first.fields ==
          std::vector<std::pair<std::string, std::string>>{{"limit", "max_connections"},
                                                           {"count", "1"},
                                                           {"max", "1"},
                                                           {"address", srv->address()}});
    const auto s = srv->snapshot();
    CHECK(s.rejected == refused);
    CHECK(errors_of(s, "too many connections") == refused);
}

TEST_CASE("server: a line too long and idle closes are logged; debug events stay out of an info "
          "logger") {
    event_log info;
    event_log debug;
    for (auto* log : {&info, &debug}) {
        auto reg = otpkv::registry::start();
        auto o = loopback();
        o.max_line = 8;
        o.idle_timeout = 50ms;
        o.log = log->logger(log == &info ? otpkv::log_level::info : otpkv::log_level::debug);
        auto srv = start(reg, o);
        kv_client a(srv->port());
        CHECK(a.exchange("CREATE aaaaaaaa\n", 21) == "ERROR line too long\r\n");
        kv_client idle1(srv->port());
        kv_client idle2(srv->port());
        CHECK(idle1.read_to_eof() == "");
        CHECK(idle2.read_to_eof() == "");
        CHECK(eventually([&] { return srv->stats().idle_closed == 2; }));
        CHECK(eventually([&] { return log->tally("limit_hit", "max_line").second == 1; }));
        if (log == &debug) {
            CHECK(eventually([&] { return log->tally("idle_closed").second == 2; }));
            for (const auto& e : log->events()) {
                if (e.what == "idle_closed") {
                    CHECK(e.level == otpkv::log_level::debug);
                    CHECK(event_log::field(e, "idle_timeout_ms") == "50");
                }
            }
        }
    }
    CHECK(info.tally("idle_closed").first == 0);
    const auto line = info.events().front();
    CHECK(line.reason == "line too long");
    CHECK(event_log::field(line, "max") == "8");
}

TEST_CASE("server: a subscriber cut for its cap is logged as max_subscriber_output") {
    event_log log;
    auto reg = otpkv::registry::start();
    auto o = loopback();
    o.max_subscriber_output = 64 * 1024;
    o.log = log.logger();
    auto srv = start(reg, o);
    kv_client pub(srv->port());
    CHECK(pub.exchange("CREATE b\n", 4) == "OK\r\n");
    kv_client sub(srv->port(), 16 * 1024);
    CHECK(sub.send_all("SUBSCRIBE b\n"));
    CHECK(eventually([&] { return srv->snapshot().subscribers == 1; }));
    const std::string put = "PUT b k " + std::string(4000, 'x') + "\n";
    std::string batch;
    std::string oks;
    for (int i = 0; i < 1000; ++i) {
        batch += put;
        oks += "OK\r\n";
    }
    CHECK(pub.exchange(batch, oks.size(), 20s) == oks);
    CHECK(eventually([&] { return srv->snapshot().subscribers == 0; }));
    CHECK(eventually([&] { return log.tally("limit_hit", "max_subscriber_output").second == 1; }));
    CHECK(log.tally("limit_hit", "max_subscriber_memory").first == 0);
}

TEST_CASE("server: the event tally reports the first hit at once, then one count a period") {
    otpkv::detail::event_tally t(std::chrono::nanoseconds(1000));
    using otpkv::detail::server_event;
    CHECK(t.hit(server_event::max_line, 0) == 1);
    CHECK(t.hit(server_event::max_line, 10) == 0);
    CHECK(t.hit(server_event::max_line, 20, 5) == 0);
    CHECK(t.hit(server_event::max_connections, 30) == 1); // kinds are apart
    CHECK(t.pending());
    CHECK(t.due(server_event::max_line, 999) == 0);
    CHECK(t.due(server_event::max_line, 1000) == 6);
    CHECK_FALSE(t.pending());
    CHECK(t.due(server_event::max_line, 5000) == 0); // nothing to report: no period used
    CHECK(t.hit(server_event::max_line, 5001) == 1);
    CHECK(t.hit(server_event::max_line, 5002) == 0);
    CHECK(t.hit(server_event::max_line, 6001) == 2);
}

TEST_CASE("server: reply_reason reads only the first line, and only the protocol's shapes") {
    using otpkv::detail::reply_reason;
    const auto is = [](std::string_view bytes, std::string_view reason) {
        const std::size_t i = reply_reason(bytes);
        return i < otpkv::server_error_reasons.size() && otpkv::server_error_reasons[i] == reason;
    };
    CHECK(reply_reason("OK\r\n") == otpkv::detail::no_error);
    CHECK(reply_reason("") == otpkv::detail::no_error);
    CHECK(reply_reason("NOTHING\r\nOK\r\n") == otpkv::detail::no_error);
    CHECK(reply_reason("ERRORS\r\nOK\r\n") == otpkv::detail::no_error);
    CHECK(is("NOT FOUND\r\n", "not found"));
    CHECK(is("UNKNOWN COMMAND\r\n", "unknown command"));
    CHECK(is("ERROR too many buckets\r\n", "too many buckets"));
    CHECK(is("ERROR not a peer\r\n", "not a peer"));
    CHECK(is("ERROR node unavailable\r\n", "node unavailable"));
    CHECK(is("ERROR node n2 unavailable\r\nOK\r\n", "node unavailable"));
    CHECK(is("ERROR internal\n", "internal"));
    CHECK(is("ERROR node  unavailable\r\n", "other"));
    CHECK(is("ERROR \r\n", "other"));
}
