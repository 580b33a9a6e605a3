// SPDX-License-Identifier: MIT
// A cluster of real kv_server processes for the integration tests (test_cluster.cpp,
// test_replication.cpp): ports known before any node starts, and a `cluster` that starts,
// kills, freezes, thaws and restarts its nodes, each signalled by its own pid only.
#pragma once

#include "kv_process.hpp"

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace otpkv_test {

// `n` distinct loopback ports that nothing uses now, for nodes that must know each other's
// ports before any of them starts. They are taken below the kernel's ephemeral range
// (ip_local_port_range), where neither a `--port 0` server of a test running next to this
// one nor any outgoing connection is ever given a port: so a node's port stays free while
// the node is down and restarted on it, and a node retrying a dead peer's port can never
// connect to itself (TCP's self-connect, possible only inside the ephemeral range). Each is
// checked by binding it (without SO_REUSEADDR, so a port with connections lingering in
// TIME_WAIT is passed over too); all are held until all are found. Where the range cannot
// be read or leaves no room below it, the kernel picks them (bind to port 0).
inline std::vector<std::uint16_t> unused_ports(std::size_t n) {
    unsigned long low = 0;
    unsigned long high = 0;
    std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> low >> high;
    constexpr unsigned long lowest = 10'000;
    const bool below_range = low > lowest + 1'000 && low <= 65'536;
    std::mt19937 random(std::random_device{}());
    std::vector<int> held;
    std::vector<std::uint16_t> ports;
    for (int attempt = 0; ports.size() < n && attempt < 1'000; ++attempt) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (below_range) {
            addr.sin_port = htons(static_cast<std::uint16_t>(
                lowest +
                std::uniform_int_distribution<unsigned long>(0, low - lowest - 1)(random)));
        }
        socklen_t size = sizeof addr;
        if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &size) == 0) {
            held.push_back(fd);
            ports.push_back(ntohs(addr.sin_port));
        } else {
            ::close(fd);
        }
    }
    for (const int fd : held) {
        ::close(fd);
    }
    REQUIRE_MESSAGE(ports.size() == n, "found only " << ports.size() << " free ports");
    return ports;
}

// One node of a test cluster: its name, its port, and its --route list.
struct node_spec {
    std::string name;
    std::uint16_t port = 0;
    std::vector<std::string> routes; // FIRST-LAST=NAME@127.0.0.1:PORT each
};

// A route entry as kv_server's --route takes it.
inline std::string route(std::string_view range, const std::string& name, std::uint16_t port) {
    return std::string(range) + "=" + name + "@127.0.0.1:" + std::to_string(port);
}

// Real kv_server processes, one per spec, started in order (each waits for its ready line).
// A node can be killed (SIGKILL), frozen (SIGSTOP) and thawed (SIGCONT), and restarted with
// the same flags on the same port. Only the processes it started are ever signalled, each by
// its own pid. `stop` ends every node with SIGTERM and checks that it exits cleanly (a crash
// or a sanitizer report in a server shows there); the destructor kills what still runs.
//
// Thread safety: `port` from any thread; the rest from the thread that made it (the test's
// main thread, which the servers' PR_SET_PDEATHSIG is tied to).
class cluster {
  public:
    // `flags`: more flags for some nodes, by index (`--max-connections 20`, ...); `env`:
    // variables every node gets ("NAME=value").
    explicit cluster(std::vector<node_spec> specs,
                     std::map<std::size_t, std::vector<std::string>> flags = {},
                     std::vector<std::string> env = {})
        : specs_(std::move(specs)), flags_(std::move(flags)), env_(std::move(env)) {
        nodes_.resize(specs_.size());
        frozen_.assign(specs_.size(), false);
        for (std::size_t i = 0; i < specs_.size(); ++i) {
            start(i);
        }
    }
    ~cluster() {
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            if (frozen_[i] && nodes_[i] != nullptr && nodes_[i]->pid() > 0) {
                ::kill(nodes_[i]->pid(), SIGCONT); // then kv_process kills it
            }
        }
    }
    cluster(const cluster&) = delete;
    cluster& operator=(const cluster&) = delete;

    [[nodiscard]] const std::string& name(std::size_t i) const { return specs_.at(i).name; }
    [[nodiscard]] std::uint16_t port(std::size_t i) const { return specs_.at(i).port; }
    [[nodiscard]] pid_t pid(std::size_t i) const { return nodes_.at(i)->pid(); }
    [[nodiscard]] bool running(std::size_t i) const {
        return nodes_.at(i) != nullptr && nodes_[i]->running();
    }

    // A client connection to node i.
    [[nodiscard]] kv_client client(std::size_t i) const { return kv_client(port(i)); }

    // A connection to node i that has done the handshake as another node of the table
    // would (with the tests' cookie): its requests run on node i whatever the table says, so
    // it shows what node i itself holds.
    [[nodiscard]] kv_client peer(std::size_t i) const {
        kv_client c(port(i));
        REQUIRE(handshake_as(c, name((i + 1) % specs_.size()), name(i), process_cookie));
        return c;
    }

    // kill -9 node i; returns once it has been reaped.
    exit_status kill(std::size_t i) {
        REQUIRE(running(i));
        frozen_[i] = false;
        return nodes_[i]->stop(SIGKILL);
    }

    // SIGSTOP node i; returns once the kernel reports it stopped.
    void freeze(std::size_t i) {
        REQUIRE(running(i));
        REQUIRE(::kill(pid(i), SIGSTOP) == 0);
        frozen_[i] = true;
        const auto deadline = steady::now() + 5s;
        for (;;) {
            siginfo_t info{};
            const int rc =
                ::waitid(P_PID, static_cast<id_t>(pid(i)), &info, WSTOPPED | WNOHANG | WNOWAIT);
            if (rc == 0 && info.si_pid == pid(i) && info.si_code == CLD_STOPPED) {
                return;
            }
            REQUIRE_MESSAGE(steady::now() < deadline, name(i) << " did not stop within 5 s");
            std::this_thread::sleep_for(1ms);
        }
    }

    // SIGCONT node i.
    void thaw(std::size_t i) {
        REQUIRE(frozen_[i]);
        REQUIRE(::kill(pid(i), SIGCONT) == 0);
        frozen_[i] = false;
    }

    // Starts node i again, with the same flags and port, after `kill`.
    void restart(std::size_t i) {
        REQUIRE(!running(i));
        start(i);
    }

    // Stops every running node with SIGTERM (thawing it first); each must exit cleanly.
    void stop() {
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            if (running(i)) {
                if (frozen_[i]) {
                    thaw(i);
                }
                INFO("stopping " << name(i));
                stop_cleanly(*nodes_[i]);
            }
        }
    }

  private:
    void start(std::size_t i) {
        const node_spec& s = specs_[i];
        std::vector<std::string> args = {"--node", s.name, "--port", std::to_string(s.port)};
        for (const std::string& r : s.routes) {
            args.push_back("--route");
            args.push_back(r);
        }
        const auto more = flags_.find(i);
        if (more != flags_.end()) {
            args.insert(args.end(), more->second.begin(), more->second.end());
        }
        nodes_[i].reset();
        nodes_[i] = std::make_unique<kv_process>(args, env_, false);
        REQUIRE(nodes_[i]->port() == s.port);
        CHECK(nodes_[i]->ready_line() ==
              "otpkv node " + s.name + " listening on 127.0.0.1:" + std::to_string(s.port));
    }

    std::vector<node_spec> specs_;
    std::map<std::size_t, std::vector<std::string>> flags_; // more flags of node i
    std::vector<std::string> env_;
    std::vector<std::unique_ptr<kv_process>> nodes_;
    std::vector<bool> frozen_;
};

} // namespace otpkv_test
