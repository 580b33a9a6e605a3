// SPDX-License-Identifier: MIT
// admin_server (net/admin.hpp) on 127.0.0.1, port 0: each path with GET and HEAD, the
// error statuses (400, 404, 405, 408, 431, 500, 503, 504, 505), a slowloris client, and a
// client that never reads a large reply while others are served; and kv_server's
// --admin-port and --log-level.
#include <otpkv/net/admin.hpp>

#include "kv_process.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using otpkv_test::eventually;

otpkv::node_snapshot small_snapshot() {
    otpkv::node_snapshot s;
    s.node = "n1";
    s.version = "0.3.0";
    s.tree.name = "root";
    s.server.commands = {1, 2, 3, 0, 0, 0, 0};
    return s;
}

// A blocking client socket with a 5 s receive timeout, connected to 127.0.0.1:port.
struct client {
    int fd = -1;
    explicit client(std::uint16_t port) {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd >= 0);
        timeval tv{5, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
    }
    ~client() { ::close(fd); }
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    void send(const std::string& bytes) const {
        REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
                static_cast<ssize_t>(bytes.size()));
    }
    // Everything until the server closes (or 5 s pass without a byte).
    std::string read_all() const {
        std::string out;
        char buffer[65536];
        ssize_t n = 0;
        while ((n = ::recv(fd, buffer, sizeof buffer, 0)) > 0) {
            out.append(buffer, static_cast<std::size_t>(n));
        }
        return out;
    }
};

std::string http_exchange(std::uint16_t port, const std::string& request) {
    const client c(port);
    c.send(request);
    return c.read_all();
}

std::string get(std::uint16_t port, const std::string& path, const std::string& method = "GET") {
    return http_exchange(port, method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

std::string body_of(const std::string& reply) {
    const std::size_t at = reply.find("\r\n\r\n");
    return at == std::string::npos ? std::string() : reply.substr(at + 4);
}

std::string head_of(const std::string& reply) {
    return reply.substr(0, reply.find("\r\n\r\n") + 4);
}

std::string expected_head(int status, std::string_view reason, std::string_view type,
                          std::size_t length, std::string_view extra = {}) {
    return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) +
           "\r\nContent-Type: " + std::string(type) +
           "\r\nContent-Length: " + std::to_string(length) + std::string(extra) +
           "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
}

std::shared_ptr<otpkv::admin_server> start(otpkv::admin_options options) {
    auto started = otpkv::admin_server::start(std::move(options));
    REQUIRE(started.has_value());
    return std::move(started).value();
}

otpkv::admin_options with_snapshot() {
    otpkv::admin_options o;
    o.snapshot = small_snapshot;
    return o;
}

} // namespace

TEST_CASE("admin_server: /metrics, /tree.json, / and /cluster.json with GET and HEAD") {
    otpkv::admin_options o = with_snapshot();
    std::vector<std::thread> repliers;
    std::mutex m;
    o.cluster = [&](std::function<void(std::string)> done) {
        const std::lock_guard lock(m);
        repliers.emplace_back([done = std::move(done)] { done(R"({"node":"n1","nodes":[]})"); });
    };
    const auto server = start(std::move(o));
    CHECK(server->port() != 0);
    CHECK(server->address() == "127.0.0.1:" + std::to_string(server->port()));

    const std::string metrics = otpkv::metrics_text(small_snapshot());
    std::string reply = get(server->port(), "/metrics");
    CHECK(head_of(reply) ==
          expected_head(200, "OK", "text/plain; version=0.0.4; charset=utf-8", metrics.size()));
    CHECK(body_of(reply) == metrics);
    CHECK(get(server->port(), "/metrics", "HEAD") == head_of(reply));
    CHECK(body_of(get(server->port(), "/metrics?name[]=x")) == metrics);

    const std::string json = otpkv::snapshot_json(small_snapshot());
    reply = get(server->port(), "/tree.json");
    CHECK(reply == expected_head(200, "OK", "application/json", json.size()) + json);
    CHECK(get(server->port(), "/tree.json", "HEAD") ==
          expected_head(200, "OK", "application/json", json.size()));

    const std::string page(otpkv::detail::observer_page);
    reply = get(server->port(), "/");
    CHECK(reply == expected_head(200, "OK", "text/html; charset=utf-8", page.size()) + page);
    // HTTP/1.0 needs no Host; the absolute form names the same path.
    CHECK(http_exchange(server->port(), "GET / HTTP/1.0\r\n\r\n") == reply);
    CHECK(http_exchange(server->port(), "GET http://localhost:1/ HTTP/1.1\nHost: x\n\n") == reply);

    const std::string cluster = R"({"node":"n1","nodes":[]})";
    CHECK(get(server->port(), "/cluster.json") ==
          expected_head(200, "OK", "application/json", cluster.size()) + cluster);
    CHECK(get(server->port(), "/cluster.json", "HEAD") ==
          expected_head(200, "OK", "application/json", cluster.size()));
    CHECK(server->stats().requests == 10);
    server->stop();
    const std::lock_guard lock(m);
    for (std::thread& t : repliers) {
        t.join();
    }
}

TEST_CASE("admin_server: bad requests get 400, 404, 405, 505; missing callbacks 404") {
    const auto server = start({});
    const auto status = [&](const std::string& request) {
        const std::string reply = http_exchange(server->port(), request);
        return reply.substr(0, reply.find("\r\n"));
    };
    const std::string host = "\r\nHost: x\r\n\r\n";
    CHECK(status("GET /nope HTTP/1.1" + host) == "HTTP/1.1 404 Not Found");
    CHECK(status("GET /metrics HTTP/1.1" + host) == "HTTP/1.1 404 Not Found"); // no snapshot
    CHECK(status("GET /cluster.json HTTP/1.1" + host) == "HTTP/1.1 404 Not Found");
    const std::string not_allowed = http_exchange(server->port(), "POST / HTTP/1.1" + host);
    CHECK(not_allowed == expected_head(405, "Method Not Allowed", "text/plain; charset=utf-8", 23,
                                       "\r\nAllow: GET, HEAD") +
                             "405 Method Not Allowed\n");
    CHECK(status("DELETE / HTTP/1.1" + host) == "HTTP/1.1 405 Method Not Allowed");
    CHECK(status("GET / HTTP/2.0" + host) == "HTTP/1.1 505 HTTP Version Not Supported");
    for (const std::string& bad : {
             std::string("GET / HTTP/1.1\r\n\r\n"),             // no Host
             "GET /" + host,                                    // no version
             "GET  / HTTP/1.1" + host,                          // two spaces
             "GET / HTTP/1.1 x" + host,                         // a fourth word
             "GET x HTTP/1.1" + host,                           // not a path
             "G(T / HTTP/1.1" + host,                           // not a token
             "GET / HTTX/1.1" + host,                           // not HTTP
             "GET /\x01 HTTP/1.1" + host,                       // a control byte in the target
             std::string("GET / HTTP/1.1\r\nHost x\r\n\r\n"),   // no colon
             std::string("GET / HTTP/1.1\r\nHo st: x\r\n\r\n"), // not a token
             std::string("GET / HTTP/1.1\r\n: x\r\n\r\n"),      // no name
             std::string("\r\n\r\n"),                           // nothing
         }) {
        CHECK_MESSAGE(status(bad) == "HTTP/1.1 400 Bad Request", bad);
    }
    // A client that half-closes after a partial request is answered too.
    {
        const client c(server->port());
        c.send("GET /x HTTP/1.0");
        ::shutdown(c.fd, SHUT_WR);
        const std::string reply = c.read_all();
        CHECK(reply.starts_with("HTTP/1.1 404 Not Found\r\n"));
    }
}

TEST_CASE("admin_server: a request head over max_request gets 431 and is closed") {
    otpkv::admin_options o = with_snapshot();
    o.max_request = 100;
    const auto server = start(std::move(o));
    const std::string at_limit = "GET / HTTP/1.1\r\nHost: x\r\nX: " + std::string(100 - 31, 'a') +
                                 "\r\n\r\n"; // 98 bytes up to the blank line's own CRLF
    CHECK(http_exchange(server->port(), at_limit).starts_with("HTTP/1.1 200 OK\r\n"));
    const std::string over =
        "GET / HTTP/1.1\r\nHost: x\r\nX: " + std::string(200, 'a') + "\r\n\r\n";
    CHECK(http_exchange(server->port(), over) ==
          expected_head(431, "Request Header Fields Too Large", "text/plain; charset=utf-8", 36) +
              "431 Request Header Fields Too Large\n");
    // Without an end at all: answered as soon as it passes the limit.
    const client c(server->port());
    c.send("GET / HTTP/1.1\r\n" + std::string(1000, 'a'));
    CHECK(c.read_all().starts_with("HTTP/1.1 431 "));
}

TEST_CASE("admin_server: past max_connections, 503 and close; logged as limit_hit") {
    std::mutex m;
    std::vector<otpkv::log_event> events;
    otpkv::admin_options o = with_snapshot();
    o.max_connections = 2;
    o.log = otpkv::logger([&](const otpkv::log_event& e) {
        const std::lock_guard lock(m);
        events.push_back(e);
    });
    const auto server = start(std::move(o));
    auto a = std::make_unique<client>(server->port());
    const client b(server->port());
    REQUIRE(eventually([&] { return server->stats().accepted == 2; }));
    CHECK(get(server->port(), "/tree.json") ==
          expected_head(503, "Service Unavailable", "text/plain; charset=utf-8", 24) +
              "503 Service Unavailable\n");
    CHECK(server->stats().rejected == 1);
    REQUIRE(eventually([&] {
        const std::lock_guard lock(m);
        return !events.empty();
    }));
    {
        const std::lock_guard lock(m);
        CHECK(events.front().what == "limit_hit");
        CHECK(events.front().level == otpkv::log_level::warning);
        CHECK(otpkv::format_log_line(events.front())
                  .ends_with(" server=admin address=" + server->address() +
                             " limit=max_connections count=1"));
    }
    // The two held connections are still served.
    a->send("GET /tree.json HTTP/1.0\r\n\r\n");
    CHECK(a->read_all().starts_with("HTTP/1.1 200 OK\r\n"));
    // Once a has closed, its place is free again.
    a.reset();
    CHECK(eventually([&] { return get(server->port(), "/").starts_with("HTTP/1.1 200 OK\r\n"); }));
    CHECK(server->stats().rejected >= 1);
}

TEST_CASE("admin_server: a slowloris client gets 408 and is closed after request_timeout") {
    otpkv::admin_options o = with_snapshot();
    o.request_timeout = 300ms;
    const auto server = start(std::move(o));
    const client slow(server->port());
    const auto start_time = std::chrono::steady_clock::now();
    slow.send("GET / HTTP/1.1\r\nHost: x\r\n");
    const std::string reply = slow.read_all();
    const auto took = std::chrono::steady_clock::now() - start_time;
    CHECK(reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    CHECK(took >= 250ms);
    CHECK(took < 3s);
    CHECK(server->stats().timed_out == 1);
    // A client that connects and sends nothing is closed too.
    const client silent(server->port());
    CHECK(silent.read_all().starts_with("HTTP/1.1 408 "));
}

TEST_CASE("admin_server: a client that never reads a large reply does not hold up others") {
    otpkv::admin_options o;
    o.snapshot = [] {
        otpkv::node_snapshot s = small_snapshot();
        otpkv::child_snapshot c;
        c.last_exit = std::string(std::size_t{8} << 20, 'x'); // 8 MiB of JSON
        s.tree.children.push_back(c);
        return s;
    };
    o.request_timeout = 2s;
    const auto server = start(std::move(o));
    const client stuck(server->port());
    const int small_buffer = 4096;
    ::setsockopt(stuck.fd, SOL_SOCKET, SO_RCVBUF, &small_buffer, sizeof small_buffer);
    stuck.send("GET /tree.json HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(eventually([&] { return server->stats().requests == 1; }, 30s));
    for (int i = 0; i < 5; ++i) {
        const auto before = std::chrono::steady_clock::now();
        CHECK(get(server->port(), "/").starts_with("HTTP/1.1 200 OK\r\n"));
        CHECK(std::chrono::steady_clock::now() - before < 1s);
    }
    // Closed at its deadline, without its reply.
    REQUIRE(eventually([&] { return server->stats().timed_out == 1; }));
    const std::string got = stuck.read_all();
    CHECK(got.size() < (std::size_t{8} << 20));
}

TEST_CASE("admin_server: a snapshot that throws is 500; a cluster that never answers is 504") {
    otpkv::admin_options o;
    o.snapshot = []() -> otpkv::node_snapshot { throw std::runtime_error("boom"); };
    std::vector<std::function<void(std::string)>> kept;
    std::mutex m;
    o.cluster = [&](std::function<void(std::string)> done) {
        const std::lock_guard lock(m);
        kept.push_back(std::move(done)); // never called back (until the end)
    };
    o.request_timeout = 300ms;
    const auto server = start(std::move(o));
    CHECK(get(server->port(), "/metrics").starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
    CHECK(get(server->port(), "/cluster.json").starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
    server->stop();
    const std::lock_guard lock(m);
    for (auto& done : kept) {
        done("{}"); // after the stop: nothing happens
    }
}

TEST_CASE("admin_server: start errors and stop") {
    otpkv::admin_options bad;
    bad.bind = "localhost";
    const auto refused = otpkv::admin_server::start(bad);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == otpkv::errc::start_failed);
    CHECK(otpkv::to_string(refused.error().reason).find("not an IP address") != std::string::npos);

    const auto server = start({});
    otpkv::admin_options same;
    same.port = server->port();
    const auto taken = otpkv::admin_server::start(same);
    REQUIRE_FALSE(taken.has_value());
    CHECK(otpkv::to_string(taken.error().reason).find("cannot listen on") != std::string::npos);

    CHECK(server->stop() == otpkv::exit_reason::shutdown());
    CHECK_FALSE(server->alive());
}

namespace {

// A kv_server started with `args`; its first stdout lines until the ready line.
struct kv_server_run {
    otpkv_test::detail::spawned child;
    std::vector<std::string> lines;

    explicit kv_server_run(const std::vector<std::string>& args) {
        child = otpkv_test::detail::spawn(otpkv_test::kv_server_path(), args, {});
        REQUIRE_MESSAGE(child.pid > 0, child.error);
        std::string text;
        const auto until = std::chrono::steady_clock::now() + 10s;
        while (text.find(" listening on ") == std::string::npos || text.back() != '\n') {
            REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, "no ready line: " << text);
            REQUIRE_MESSAGE(child.out >= 0, "stdout closed: " << text);
            otpkv_test::detail::wait_pipes(child.out, child.err, 250ms);
            otpkv_test::detail::drain_pipe(child.out, text);
        }
        std::size_t at = 0;
        while (at < text.size()) {
            const std::size_t nl = text.find('\n', at);
            lines.push_back(text.substr(at, nl - at));
            at = nl + 1;
        }
    }
    ~kv_server_run() {
        if (child.pid > 0) {
            ::kill(child.pid, SIGKILL);
            int status = 0;
            ::waitpid(child.pid, &status, 0);
        }
        otpkv_test::detail::close_fd(child.out);
        otpkv_test::detail::close_fd(child.err);
    }
    kv_server_run(const kv_server_run&) = delete;
    kv_server_run& operator=(const kv_server_run&) = delete;

    otpkv_test::exit_status stop() {
        ::kill(child.pid, SIGTERM);
        auto st = otpkv_test::detail::wait_for_exit(child.pid, child.out, child.err, 10s,
                                                    std::chrono::steady_clock::now());
        child.pid = -1;
        return st;
    }
};

std::uint16_t port_after(const std::string& line, const std::string& before) {
    const std::size_t at = line.find(before);
    REQUIRE(at != std::string::npos);
    return static_cast<std::uint16_t>(std::stoul(line.substr(at + before.size())));
}

} // namespace

TEST_CASE("kv_server --admin-port: announced before the ready line, serves the node's "
          "metrics; node_started and node_stopped on stderr") {
    kv_server_run kv({"--port", "0", "--admin-port", "0", "--node", "adm"});
    REQUIRE(kv.lines.size() == 2);
    CHECK(kv.lines[0].starts_with("otpkv node adm admin on http://127.0.0.1:"));
    CHECK(kv.lines[0].ends_with("/"));
    CHECK(kv.lines[1].starts_with("otpkv node adm listening on 127.0.0.1:"));
    const std::uint16_t admin = port_after(kv.lines[0], "http://127.0.0.1:");
    const std::uint16_t main_port = port_after(kv.lines[1], "listening on 127.0.0.1:");
    const std::string metrics = get(admin, "/metrics");
    CHECK(metrics.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(metrics.find("\r\n\r\n# HELP otpkv_build_info ") != std::string::npos);
    CHECK(metrics.find("\notpkv_connections_max 10000\n") != std::string::npos);
    const std::string tree = get(admin, "/tree.json");
    CHECK(tree.find("\r\n\r\n{\"node\":\"adm\",") != std::string::npos);
    CHECK(body_of(get(admin, "/cluster.json"))
              .starts_with(R"({"node":"adm","nodes":[{"name":"adm","up":true,)"));
    const otpkv_test::exit_status st = kv.stop();
    CHECK(st.clean());
    const std::string address = "127.0.0.1:" + std::to_string(main_port);
    // The root supervisor's pid, then the node; at the stop the reason.
    const std::size_t started = st.err.find(" info event=node_started pid=<0.");
    REQUIRE(started != std::string::npos);
    CHECK(st.err.find(" node=adm address=" + address + "\n", started) != std::string::npos);
    const std::size_t stopped = st.err.find(" info event=node_stopped pid=<0.");
    REQUIRE(stopped != std::string::npos);
    CHECK(st.err.find(" node=adm reason=shutdown\n", stopped) != std::string::npos);
}

TEST_CASE("kv_server: no admin endpoint by default; --log-level error hides info events; "
          "bad flags exit 2, a taken admin port 1") {
    {
        kv_server_run kv({"--port", "0", "--log-level", "error"});
        REQUIRE(kv.lines.size() == 1);
        CHECK(kv.lines[0].find(" listening on ") != std::string::npos);
        const otpkv_test::exit_status st = kv.stop();
        CHECK(st.clean());
        CHECK(st.err.find("event=node_") == std::string::npos);
    }
    otpkv_test::exit_status st = otpkv_test::run_kv_server({"--admin-port", "x"});
    CHECK(st.code == 2);
    CHECK(
        st.err.starts_with("kv_server: --admin-port: expected a number from 0 to 65535, got 'x'"));
    st = otpkv_test::run_kv_server({"--log-level", "trace"});
    CHECK(st.code == 2);
    CHECK(st.err.starts_with(
        "kv_server: --log-level: expected error, warning, info or debug, got 'trace'"));

    const auto taken = start({});
    st = otpkv_test::run_kv_server({"--port", "0", "--admin-port", std::to_string(taken->port())});
    CHECK(st.code == 1);
    CHECK(st.err.find("kv_server: admin endpoint: cannot listen on 127.0.0.1:" +
                      std::to_string(taken->port())) != std::string::npos);
}
