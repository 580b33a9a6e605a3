// SPDX-License-Identifier: MIT
// The etcd client (etcd.hpp) and the HTTP/1.1 client under it (detail/http_client.hpp).
// The HTTP client is tested against canned replies from a one-connection loopback server
// the test controls (framing, chunking, bad and cut replies, limits, timeouts, keep-alive);
// `etcd_view` against a real etcd (tests/etcd_process.hpp): registration, the lease and its
// deadline, a lease lost and taken again, a name still held by an earlier run, chains
// swapped by compare-and-swap and seen by a watcher, a node's key gone at once on stop, and
// etcd killed and started again. Nothing checks how fast anything happened.
#include "etcd_process.hpp"
#include "support.hpp"

#include <otpkv/detail/http_client.hpp>
#include <otpkv/etcd.hpp>
#include <otpkv/membership.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using otpkv::detail::http_connection;
using otpkv::detail::http_status;
using otpkv_test::eventually;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

// A loopback server for one connection at a time: each request read whole (head and
// Content-Length body) is answered with the next canned reply; a reply of "" closes the
// connection without answering.
class canned_server {
  public:
    explicit canned_server(std::vector<std::string> replies) : replies_(std::move(replies)) {
        otpkv::detail::socket_address a;
        REQUIRE(otpkv::detail::socket_address::parse("127.0.0.1", 0, a));
        listener_ = otpkv::detail::listen_on(a, 8);
        port_ = otpkv::detail::local_address(listener_.get()).port();
        thread_ = std::thread([this] { serve(); });
    }
    ~canned_server() {
        stop_ = true;
        thread_.join();
    }
    canned_server(const canned_server&) = delete;
    canned_server& operator=(const canned_server&) = delete;
    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    [[nodiscard]] int connections() const noexcept { return connections_.load(); }
    [[nodiscard]] std::string requests() const {
        const std::lock_guard lock(mutex_);
        return requests_;
    }

  private:
    void serve() {
        std::size_t next = 0;
        while (!stop_) {
            pollfd p{listener_.get(), POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) {
                continue;
            }
            otpkv::detail::unique_fd c(otpkv::detail::accept_connection(listener_.get()));
            if (!c) {
                continue;
            }
            ++connections_;
            std::string in;
            while (!stop_ && next < replies_.size()) {
                // One request: its head, then Content-Length bytes.
                std::size_t head_end = 0;
                std::size_t need = 0;
                bool whole = false;
                while (!stop_ && !whole) {
                    head_end = in.find("\r\n\r\n");
                    if (head_end != std::string::npos) {
                        const std::size_t at = in.find("Content-Length: ");
                        need = at < head_end ? std::stoul(in.substr(at + 16)) : 0;
                        whole = in.size() >= head_end + 4 + need;
                        if (whole) {
                            break;
                        }
                    }
                    pollfd q{c.get(), POLLIN, 0};
                    if (::poll(&q, 1, 20) <= 0) {
                        continue;
                    }
                    char buf[4096];
                    const ssize_t n = ::recv(c.get(), buf, sizeof buf, 0);
                    if (n <= 0) {
                        break;
                    }
                    in.append(buf, static_cast<std::size_t>(n));
                }
                if (!whole) {
                    break;
                }
                {
                    const std::lock_guard lock(mutex_);
                    requests_.append(in, 0, head_end + 4 + need);
                }
                in.erase(0, head_end + 4 + need);
                const std::string& reply = replies_[next++];
                if (reply.empty()) {
                    break; // close without a word
                }
                std::string_view rest = reply;
                while (!rest.empty()) {
                    const ssize_t n = otpkv::detail::send_some(c.get(), rest.data(), rest.size());
                    if (n <= 0) {
                        break;
                    }
                    rest.remove_prefix(static_cast<std::size_t>(n));
                }
            }
            // Hold the connection until the client closes it or the test ends.
            while (!stop_) {
                pollfd q{c.get(), POLLIN, 0};
                if (::poll(&q, 1, 20) > 0) {
                    char buf[256];
                    if (::recv(c.get(), buf, sizeof buf, 0) <= 0) {
                        break;
                    }
                }
                if (next < replies_.size()) {
                    break; // another request may come on a new connection
                }
            }
        }
    }

    std::vector<std::string> replies_;
    otpkv::detail::unique_fd listener_;
    std::uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<int> connections_{0};
    mutable std::mutex mutex_;
    std::string requests_;
    std::thread thread_;
};

const std::string ok_reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             "Content-Length: 7\r\n\r\n{\"a\":1}";

} // namespace

TEST_CASE("http client: a Content-Length reply, then a chunked one on the same connection") {
    canned_server server({ok_reply, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    "3\r\n{\"b\r\n4;ext=1\r\n\":2}\r\n0\r\n\r\n"});
    http_connection c("127.0.0.1", server.port());
    const auto first = c.post("/v3/kv/range", "{\"key\":\"YQ==\"}", steady::now() + 10s);
    REQUIRE(first.status == http_status::ok);
    CHECK(first.code == 200);
    CHECK(first.body == "{\"a\":1}");
    const auto second = c.post("/v3/kv/put", "{}", steady::now() + 10s);
    REQUIRE(second.status == http_status::ok);
    CHECK(second.body == "{\"b\":2}");
    CHECK(server.connections() == 1);
    CHECK(server.requests() ==
          "POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(server.port()) +
              "\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"key\":\"YQ==\"}"
              "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:" +
              std::to_string(server.port()) +
              "\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
}

TEST_CASE("http client: an error status is a reply; its body is kept") {
    canned_server server(
        {"HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\n\r\n{\"code\":3,\"\"}"});
    http_connection c("127.0.0.1", server.port());
    const auto r = c.post("/v3/kv/txn", "{}", steady::now() + 10s);
    REQUIRE(r.status == http_status::ok);
    CHECK(r.code == 400);
    CHECK(r.body == "{\"code\":3,\"\"}");
}

TEST_CASE("http client: a kept-alive connection closed by the server is opened again once") {
    canned_server server({ok_reply, "", ok_reply});
    http_connection c("127.0.0.1", server.port());
    CHECK(c.post("/a", "{}", steady::now() + 10s).status == http_status::ok);
    // The server closes instead of answering the second request: sent again, answered.
    const auto r = c.post("/b", "{}", steady::now() + 10s);
    REQUIRE(r.status == http_status::ok);
    CHECK(r.body == "{\"a\":1}");
    CHECK(server.connections() == 2);
}

TEST_CASE("http client: bad replies fail with a reason and close the connection") {
    struct bad {
        std::string reply;
        std::string reason;
    };
    const std::vector<bad> cases = {
        {"SMTP ready\r\n\r\n", "not an HTTP/1.x reply"},
        {"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"},
        {"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"},
        {"HTTP/1.1 200 OK\r\n\r\n{}", "without a length"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size line"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd", "chunk without"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n",
         "trailers after the last chunk"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "larger than 64 MiB"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8000000\r\n", "larger than 64 MiB"},
    };
    for (const bad& b : cases) {
        CAPTURE(b.reply);
        canned_server server({b.reply});
        http_connection c("127.0.0.1", server.port());
        const auto r = c.post("/x", "{}", steady::now() + 2s);
        CHECK(r.status == http_status::failed);
        CHECK(r.error.find(b.reason) != std::string::npos);
    }
}

TEST_CASE("http client: a head past 64 KiB is refused") {
    canned_server server({"HTTP/1.1 200 OK\r\nX-Long: " + std::string(70000, 'a') +
                          "\r\nContent-Length: 0\r\n\r\n"});
    http_connection c("127.0.0.1", server.port());
    const auto r = c.post("/x", "{}", steady::now() + 10s);
    CHECK(r.status == http_status::failed);
    CHECK(r.error.find("longer than 64 KiB") != std::string::npos);
}

TEST_CASE("http client: no reply by the deadline, a cut reply, and nobody listening") {
    SUBCASE("silent") {
        canned_server server({"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\""});
        http_connection c("127.0.0.1", server.port());
        const auto r = c.post("/x", "{}", steady::now() + 300ms);
        CHECK(r.status == http_status::failed);
        CHECK(r.error.find("cut short") != std::string::npos);
    }
    SUBCASE("refused") {
        const std::uint16_t port = otpkv_test::free_port();
        http_connection c("127.0.0.1", port);
        const auto r = c.post("/x", "{}", steady::now() + 2s);
        CHECK(r.status == http_status::failed);
        CHECK(r.error.find("connect to 127.0.0.1:" + std::to_string(port)) == 0);
    }
}

TEST_CASE("http client: a stream's lines, across and within chunks, then its end") {
    canned_server server({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "5\r\n{\"a\":\r\n9\r\n1}\n{\"b\":2\r\n3\r\n}\n\n\r\n0\r\n\r\n"});
    http_connection c("127.0.0.1", server.port());
    const auto head = c.open_stream("/v3/watch", "{}", steady::now() + 10s);
    REQUIRE(head.status == http_status::ok);
    CHECK(head.code == 200);
    const auto one = c.next_line(steady::now() + 10s);
    REQUIRE(one.status == http_status::ok);
    CHECK(one.body == "{\"a\":1}");
    const auto two = c.next_line(steady::now() + 10s);
    REQUIRE(two.status == http_status::ok);
    CHECK(two.body == "{\"b\":2}");
    const auto end = c.next_line(steady::now() + 10s);
    CHECK(end.status == http_status::failed);
    CHECK(end.error.find("ended") != std::string::npos);
}

TEST_CASE("http client: a quiet stream is waiting, not failed; a refused one has its body") {
    SUBCASE("quiet") {
        canned_server server({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "4\r\n{}\n\n\r\n"});
        http_connection c("127.0.0.1", server.port());
        REQUIRE(c.open_stream("/v3/watch", "{}", steady::now() + 10s).code == 200);
        CHECK(c.next_line(steady::now() + 10s).body == "{}");
        CHECK(c.next_line(steady::now() + 100ms).status == http_status::waiting);
        CHECK(c.next_line(steady::now() + 100ms).status == http_status::waiting);
    }
    SUBCASE("refused") {
        canned_server server({"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"});
        http_connection c("127.0.0.1", server.port());
        const auto r = c.open_stream("/v3/watch", "{}", steady::now() + 10s);
        REQUIRE(r.status == http_status::ok);
        CHECK(r.code == 404);
        CHECK(r.body == "not found");
        CHECK(c.next_line(steady::now() + 100ms).status == http_status::failed);
    }
}

TEST_CASE("chain records: written and read back; anything else refused") {
    otpkv::chain_record c{7, {"n1", "n2", "n3"}, 0};
    CHECK(otpkv::chain_text(c) == "epoch=7 nodes=n1,n2,n3");
    otpkv::chain_record back;
    REQUIRE(otpkv::parse_chain_text("epoch=7 nodes=n1,n2,n3", back));
    CHECK(back == c);
    REQUIRE(otpkv::parse_chain_text("epoch=12 nodes=", back));
    CHECK(back.epoch == 12);
    CHECK(back.nodes.empty());
    for (const char* bad :
         {"", "epoch=", "epoch=x nodes=a", "epoch=1 nodes=a,", "epoch=1 nodes=,a", "epoch=1",
          "epoch=1 node=a", "epoch=1 nodes=a b", "epoch=99999999999999999999 nodes=a"}) {
        CAPTURE(bad);
        otpkv::chain_record untouched{3, {"x"}, 5};
        CHECK_FALSE(otpkv::parse_chain_text(bad, untouched));
        CHECK(untouched == otpkv::chain_record{3, {"x"}, 5});
    }
}

namespace {

otpkv::etcd_options options_for(const otpkv_test::etcd_process& etcd, std::string node,
                                otpkv::logger log = {}) {
    otpkv::etcd_options o;
    o.endpoints = {{"127.0.0.1", etcd.port()}};
    o.node = std::move(node);
    o.address = "127.0.0.1:1";
    o.lease = 1000ms;
    o.log = std::move(log);
    return o;
}

// The range's chain as `v` sees it (an empty record when it sees none).
otpkv::chain_record chain_of(const otpkv::view_service& v, const std::string& range) {
    const auto seen = v.view();
    const auto it = seen.chains.find(range);
    return it == seen.chains.end() ? otpkv::chain_record{} : it->second;
}

std::shared_ptr<otpkv::etcd_view> start_view(otpkv::etcd_options o) {
    auto v = otpkv::etcd_view::start(std::move(o));
    REQUIRE(v.has_value());
    return std::move(v).value();
}

// The events' kinds, in order.
struct event_log {
    std::mutex mutex;
    std::vector<std::string> kinds;
    otpkv::logger logger() {
        return otpkv::logger(
            [this](const otpkv::log_event& e) {
                const std::lock_guard lock(mutex);
                kinds.push_back(e.what);
            },
            otpkv::log_level::debug);
    }
    bool has(const std::string& kind) {
        const std::lock_guard lock(mutex);
        return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
    }
};

} // namespace

TEST_CASE("etcd view: registers with a lease, renews it, and is seen by another node") {
    otpkv_test::etcd_process etcd;
    const auto a = start_view(options_for(etcd, "a"));
    REQUIRE(eventually([&] { return a->incarnation() == 1; }, 10s));
    CHECK(a->granted_ttl() == 1s);
    const auto b = start_view(options_for(etcd, "b"));
    REQUIRE(eventually([&] { return b->incarnation() == 1; }, 10s));
    REQUIRE(eventually([&] { return a->view().nodes.size() == 2; }, 10s));
    const otpkv::membership_view seen = a->view();
    CHECK(seen.connected);
    CHECK(seen.nodes.at("a") == "127.0.0.1:1");
    CHECK(seen.nodes.at("b") == "127.0.0.1:1");
    // Renewed: three TTLs later still registered, the same incarnation, its deadline ahead.
    std::this_thread::sleep_for(3s);
    CHECK(a->incarnation() == 1);
    CHECK(a->lease_deadline() > steady::now());
    CHECK(a->lease_deadline() <= steady::now() + 1s);
    CHECK(b->view().nodes.count("a") == 1);
    // Stopped: its key is gone at once (revoked), not a TTL later.
    a->stop();
    CHECK(a->lease_deadline() == steady::time_point{});
    REQUIRE(eventually([&] { return b->view().nodes.count("a") == 0; }, 900ms));
}

TEST_CASE("etcd view: chains change only by compare-and-swap, and watchers see each change") {
    otpkv_test::etcd_process etcd;
    const auto a = start_view(options_for(etcd, "a"));
    const auto b = start_view(options_for(etcd, "b"));
    REQUIRE(eventually([&] { return a->incarnation() == 1 && b->incarnation() == 1; }, 10s));
    const otpkv::chain_record first{1, {"a", "b"}, 0};
    const auto created = a->swap_chain("a-m", 0, first);
    REQUIRE(created.what == otpkv::swap_result::outcome::swapped);
    CHECK(created.version > 0);
    // The same expectation again: the record exists now.
    const auto again = b->swap_chain("a-m", 0, {1, {"b"}, 0});
    CHECK(again.what == otpkv::swap_result::outcome::conflict);
    REQUIRE(eventually([&] { return chain_of(*b, "a-m").version == created.version; }, 10s));
    CHECK(b->view().chains.at("a-m").nodes == std::vector<std::string>{"a", "b"});
    const auto moved = b->swap_chain("a-m", created.version, {2, {"b"}, 0});
    REQUIRE(moved.what == otpkv::swap_result::outcome::swapped);
    REQUIRE(eventually([&] { return chain_of(*a, "a-m").epoch == 2; }, 10s));
    CHECK(a->view().chains.at("a-m") == otpkv::chain_record{2, {"b"}, moved.version});
    // A stale expectation loses.
    CHECK(a->swap_chain("a-m", created.version, {3, {"a"}, 0}).what ==
          otpkv::swap_result::outcome::conflict);
    CHECK(a->view().chains.at("a-m").epoch == 2);
}

TEST_CASE("etcd view: a lease lost at etcd is taken again, as a new incarnation") {
    otpkv_test::etcd_process etcd;
    event_log events;
    const auto a = start_view(options_for(etcd, "a", events.logger()));
    REQUIRE(eventually([&] { return a->incarnation() == 1; }, 10s));
    // Revoke a's lease behind its back (as etcd does when it expires).
    http_connection c("127.0.0.1", etcd.port());
    const auto key = otpkv::detail::base64_encode("/otpkv/nodes/a");
    const auto r = c.post("/v3/kv/range", "{\"key\":\"" + key + "\"}", steady::now() + 5s);
    REQUIRE(r.code == 200);
    const auto doc = otpkv::detail::parse_json(r.body);
    REQUIRE(doc);
    const auto lease = doc->at("kvs").items().at(0).at("lease").integer();
    REQUIRE(lease);
    REQUIRE(c.post("/v3/lease/revoke", "{\"ID\":\"" + std::to_string(*lease) + "\"}",
                   steady::now() + 5s)
                .code == 200);
    REQUIRE(eventually([&] { return a->incarnation() == 2; }, 10s));
    CHECK(events.has("etcd_lease_lost"));
    REQUIRE(eventually([&] { return a->view().nodes.count("a") == 1; }, 10s));
    // Its old registration cannot swap; the new one can.
    CHECK(a->swap_chain("a-m", 0, {1, {"a"}, 0}).what == otpkv::swap_result::outcome::swapped);
}

TEST_CASE("etcd view: a name still held by an earlier run waits for it to go") {
    otpkv_test::etcd_process etcd;
    event_log events;
    auto first = start_view(options_for(etcd, "a"));
    REQUIRE(eventually([&] { return first->incarnation() == 1; }, 10s));
    const auto second = start_view(options_for(etcd, "a", events.logger()));
    REQUIRE(eventually([&] { return events.has("etcd_waiting"); }, 10s));
    CHECK(second->incarnation() == 0);
    CHECK(second->lease_deadline() == steady::time_point{});
    CHECK(second->swap_chain("a-m", 0, {1, {"a"}, 0}).what ==
          otpkv::swap_result::outcome::conflict);
    first->stop();
    REQUIRE(eventually([&] { return second->incarnation() == 1; }, 10s));
    CHECK(second->lease_deadline() > steady::now());
}

TEST_CASE("etcd view: etcd killed and started again; the lease and the picture survive") {
    otpkv_test::etcd_process etcd;
    event_log events;
    const auto a = start_view(options_for(etcd, "a", events.logger()));
    REQUIRE(eventually([&] { return a->incarnation() == 1; }, 10s));
    REQUIRE(a->swap_chain("a-m", 0, {1, {"a"}, 0}).what == otpkv::swap_result::outcome::swapped);
    REQUIRE(eventually([&] { return chain_of(*a, "a-m").epoch == 1; }, 10s));
    etcd.kill();
    REQUIRE(eventually([&] { return !a->view().connected; }, 10s));
    CHECK(events.has("etcd_unreachable"));
    CHECK(a->view().chains.at("a-m").nodes == std::vector<std::string>{"a"});
    CHECK(a->swap_chain("a-m", 1, {2, {}, 0}).what == otpkv::swap_result::outcome::unavailable);
    // Its deadline runs out while etcd is away: the node cannot know it still holds.
    REQUIRE(eventually([&] { return a->lease_deadline() < steady::now(); }, 10s));
    etcd.restart();
    REQUIRE(eventually([&] { return a->view().connected; }, 10s));
    // The log line follows the view's change, from the view's thread: it may come just after.
    CHECK(eventually([&] { return events.has("etcd_connected"); }, 10s));
    REQUIRE(eventually([&] { return a->lease_deadline() > steady::now(); }, 10s));
    CHECK(a->incarnation() == 1); // etcd restores leases it had granted
    CHECK(a->view().nodes.count("a") == 1);
    CHECK(a->view().chains.at("a-m").epoch == 1);
}
