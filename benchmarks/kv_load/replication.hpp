// SPDX-License-Identifier: MIT
// kv_load: --replication (the --sweep workload on a lone node and on chains of R = 1, 2 and 3
// nodes) and --failover N (N kills of a chain member under writes: how soon the range
// acknowledges writes again).
//
// Both start etcd themselves (Debian's etcd-server, --etcd-server PATH), one per cluster, on
// free loopback ports with a temporary data directory removed at the end, tuned as the tests
// and examples/cluster.sh tune it (heartbeat 50 ms, election timeout 500 ms: leases of 1 s).
// A cluster is three kv_server nodes n1, n2, n3 with the same route `a-z=n1@...,n2@...,n3@...`
// and `--etcd URL --replicas R`, started one at a time, each once the chain has taken the one
// before it in, so the chain is n1 (head) .. nR (tail). What the chain is, kv_load reads from
// etcd (otpkv::read_membership), never from the nodes.
#pragma once

#include <otpkv/etcd.hpp>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "options.hpp"
#include "processes.hpp"
#include "report.hpp"
#include "servers.hpp"
#include "sweep.hpp"
#include "workload.hpp"

namespace kv_load {

// ------------------------------------------------------------------------------------------
// etcd and a cluster of three nodes on it

// etcd; `proc.port` is its client port.
struct etcd_server {
    server proc;
    std::string dir; // its temporary data directory (and log)

    [[nodiscard]] std::string url() const {
        return "http://127.0.0.1:" + std::to_string(proc.port);
    }
    [[nodiscard]] std::optional<otpkv::membership_view> read() const {
        return otpkv::read_membership({"127.0.0.1", static_cast<std::uint16_t>(proc.port)},
                                      "/otpkv/", std::chrono::seconds(2));
    }
};

inline void stop(etcd_server& e) {
    stop(e.proc);
    if (!e.dir.empty()) {
        std::error_code ignored;
        std::filesystem::remove_all(e.dir, ignored);
        e.dir.clear();
    }
}

// etcd on two free ports (client, peer) with a data directory of its own; ready when a read
// of otpkv's keys answers (10 s). A port taken between our probe and etcd's bind: retried.
inline std::optional<etcd_server> start_etcd(const options& o) {
    char pattern[] = "/tmp/kv_load-etcd-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) {
        issue("mkdtemp: %s", std::strerror(errno));
        return std::nullopt;
    }
    etcd_server e;
    e.dir = pattern;
    e.proc.kind = server_kind::etcd;
    const std::string log_path = e.dir + "/etcd.log";
    for (int attempt = 0; attempt < 3; ++attempt) {
        const std::vector<int> ports = free_ports(2);
        e.proc.port = ports[0];
        const std::string client = "http://127.0.0.1:" + std::to_string(ports[0]);
        const std::string peer = "http://127.0.0.1:" + std::to_string(ports[1]);
        const std::vector<std::string> args{o.etcd_path,
                                            "--name=kv-load",
                                            "--data-dir=" + e.dir + "/data",
                                            "--listen-client-urls=" + client,
                                            "--advertise-client-urls=" + client,
                                            "--listen-peer-urls=" + peer,
                                            "--initial-advertise-peer-urls=" + peer,
                                            "--initial-cluster=kv-load=" + peer,
                                            "--heartbeat-interval=50",
                                            "--election-timeout=500",
                                            "--log-level=warn"};
        const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        e.proc.command = command_line(args);
        e.proc.pid = spawn(args, log, log);
        if (log >= 0) {
            ::close(log);
        }
        const std::int64_t deadline = now_ns() + 10'000'000'000;
        while (e.proc.pid > 0 && now_ns() < deadline && alive(e.proc)) {
            if (e.read()) {
                std::fprintf(stderr, "kv_load: etcd pid %d on %s\n", static_cast<int>(e.proc.pid),
                             e.url().c_str());
                return e;
            }
            sleep_ms(50);
        }
        stop(e.proc);
    }
    issue("etcd (%s) did not start; its log is %s", o.etcd_path.c_str(), log_path.c_str());
    return std::nullopt;
}

// etcd and nodes n1..n3 whose route names all three, chains of `replicas`.
struct chain_cluster {
    std::size_t replicas = 0;
    etcd_server etcd;
    std::vector<int> ports;
    std::vector<std::string> routes;
    std::vector<server> nodes;

    [[nodiscard]] node_spec spec(std::size_t i) const {
        return {"n" + std::to_string(i + 1),
                ports[i],
                routes,
                {"--etcd", etcd.url(), "--replicas", std::to_string(replicas)},
                -1};
    }
    // The chain of a-z in `v` (empty when it has none).
    [[nodiscard]] static std::vector<std::string> chain_in(const otpkv::membership_view& v) {
        const auto found = v.chains.find("a-z");
        return found == v.chains.end() ? std::vector<std::string>{} : found->second.nodes;
    }
    // The chain of a-z as etcd has it (empty when etcd does not answer or has none).
    [[nodiscard]] std::vector<std::string> chain() const {
        const auto v = etcd.read();
        return v ? chain_in(*v) : std::vector<std::string>{};
    }
    // Waits (up to `seconds`) until the chain has `length` nodes and `count` nodes hold a lease.
    [[nodiscard]] bool wait_for(std::size_t length, std::size_t count, double seconds) const {
        const std::int64_t deadline = now_ns() + static_cast<std::int64_t>(seconds * 1e9);
        while (now_ns() < deadline) {
            const auto v = etcd.read();
            if (v && chain_in(*v).size() == length && v->nodes.size() == count) {
                return true;
            }
            sleep_ms(20);
        }
        return false;
    }
};

inline void stop(chain_cluster& c) {
    for (auto it = c.nodes.rbegin(); it != c.nodes.rend(); ++it) {
        stop(*it);
    }
    stop(c.etcd);
}

// Starts etcd and the three nodes, one at a time; nullopt (reported) if any part fails.
inline std::optional<chain_cluster> start_cluster(const options& o, std::size_t replicas) {
    for (int attempt = 0; attempt < 3; ++attempt) {
        auto etcd = start_etcd(o);
        if (!etcd) {
            return std::nullopt;
        }
        chain_cluster c;
        c.replicas = replicas;
        c.etcd = *etcd;
        c.ports = free_ports(3);
        std::string route = "a-z=";
        for (std::size_t i = 0; i < 3; ++i) {
            route += (i ? "," : "") + std::string("n") + std::to_string(i + 1) +
                     "@127.0.0.1:" + std::to_string(c.ports[i]);
        }
        c.routes = {route};
        for (std::size_t i = 0; i < 3; ++i) {
            auto node = start(server_kind::kv, o, sweep_max_connections(o), c.spec(i));
            if (!node) {
                break;
            }
            c.nodes.push_back(*node);
            if (!c.wait_for(std::min(i + 1, replicas), i + 1, 30)) {
                issue("R=%zu: the chain did not take n%zu in within 30 s", replicas, i + 1);
                break;
            }
        }
        if (c.nodes.size() == 3) {
            return c;
        }
        stop(c);
        note("retrying the cluster on new ports");
    }
    issue("R=%zu: the cluster did not start (3 attempts)", replicas);
    return std::nullopt;
}

// ------------------------------------------------------------------------------------------
// --replication

inline void run_replication(session& ss) {
    const options& o = ss.opt;
    std::printf("\n## replication: a lone node, and chains of R = 1, 2, 3 of three nodes, "
                "through the head;\n%zu connections, P requests in flight each, GET:PUT "
                "%.0f:%.0f\n\n",
                o.connections, o.get_ratio * 100, (1 - o.get_ratio) * 100);
    std::fflush(stdout);
    auto lone = start(server_kind::kv, o, sweep_max_connections(o));
    if (!lone) {
        ++ss.errors;
        return;
    }
    std::vector<chain_cluster> clusters;
    for (std::size_t r = 1; r <= 3; ++r) {
        auto c = start_cluster(o, r);
        if (!c) {
            ++ss.errors;
            break;
        }
        clusters.push_back(std::move(*c));
    }
    std::printf("- lone node: `%s`\n", lone->command.c_str());
    for (const auto& c : clusters) {
        std::printf("- R=%zu: etcd `%s`; n1 `%s`\n", c.replicas, c.etcd.proc.command.c_str(),
                    c.nodes[0].command.c_str());
    }
    std::printf("\nEvery cluster's client connections go to n1, its head: a write is applied by "
                "every node of the\nchain before its reply; a GET is answered by the tail "
                "(n1 itself when R=1, else forwarded). Server\nCPU: the nodes and etcd.\n\n");
    print_sweep_head(o, "setup");
    std::vector<sweep_data> data(1 + clusters.size());
    std::vector<sweep_target> targets(1 + clusters.size());
    targets[0].name = "lone node";
    targets[0].port = lone->port;
    targets[0].servers = {&*lone};
    targets[0].usable = sweep_prefill(ss, *lone, data[0]);
    for (std::size_t i = 0; i < clusters.size(); ++i) {
        chain_cluster& c = clusters[i];
        sweep_target& t = targets[i + 1];
        t.name = "R=" + std::to_string(c.replicas);
        t.port = c.nodes[0].port;
        for (auto& n : c.nodes) {
            t.servers.push_back(&n);
        }
        t.servers.push_back(&c.etcd.proc);
        t.usable = sweep_prefill(ss, c.nodes[0], data[i + 1]);
    }
    for (std::size_t i = 0; i < targets.size(); ++i) {
        targets[i].data = &data[i];
    }
    const std::vector<sweep_row> rows = sweep_runs(ss, targets);
    for (auto& c : clusters) {
        stop(c);
    }
    stop(*lone);
    print_ratios(rows, "R=1", "lone node", "R=1 / lone node, same client, same run:");
    print_ratios(rows, "R=2", "R=1", "R=2 / R=1:");
    print_ratios(rows, "R=3", "R=1", "R=3 / R=1:");
}

// ------------------------------------------------------------------------------------------
// --failover N

// One writer per node, each on its own key: PUT failover k<i> <n> with n rising, one request
// at a time, a new connection after a close or a 5 s silence. It keeps the latest time an
// acknowledged write was sent and completed, and the highest value acknowledged.
class failover_probe {
  public:
    failover_probe(int port, std::size_t id) : port_(port), id_(id) {
        thread_ = std::jthread([this](const std::stop_token& stop) { run(stop); });
    }
    failover_probe(const failover_probe&) = delete;
    failover_probe& operator=(const failover_probe&) = delete;

    // The completion time of the first acknowledged write sent at or after `since`; 0 if none.
    [[nodiscard]] std::int64_t first_ok_since(std::int64_t since) const {
        const std::lock_guard lock(mutex_);
        for (const auto& [sent, done] : acks_) {
            if (sent >= since) {
                return done;
            }
        }
        return 0;
    }
    [[nodiscard]] std::uint64_t acknowledged() const { return acknowledged_; }
    [[nodiscard]] std::string key() const { return "k" + std::to_string(id_); }

  private:
    void run(const std::stop_token& stop) {
        int fd = -1;
        std::uint64_t n = 0;
        while (!stop.stop_requested()) {
            if (fd < 0 && (fd = connect_blocking(port_)) < 0) {
                sleep_ms(10);
                continue;
            }
            ++n;
            const std::string request = "PUT failover " + key() + " " + std::to_string(n) + "\r\n";
            const std::int64_t sent = now_ns();
            std::string got;
            if (!send_all(fd, request) ||
                read_until(fd, sent + 5'000'000'000, got, has_line) != read_end::enough) {
                ::close(fd);
                fd = -1;
                continue;
            }
            if (got == "OK\r\n") {
                const std::lock_guard lock(mutex_);
                acks_.emplace_back(sent, now_ns());
                acknowledged_ = n;
            } else {
                sleep_ms(2); // an ERROR (the range or a node unavailable): try again soon
            }
        }
        if (fd >= 0) {
            ::close(fd);
        }
    }

    int port_;
    std::size_t id_;
    std::atomic<std::uint64_t> acknowledged_{0};
    mutable std::mutex mutex_;
    std::vector<std::pair<std::int64_t, std::int64_t>> acks_; // (sent, completed), in order
    std::jthread thread_;                                     // last: stopped and joined first
};

inline double percentile_of(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    const auto at = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(at, v.size() - 1)];
}

inline void run_failover(session& ss) {
    const options& o = ss.opt;
    std::printf("\n## failover: R=3 on three nodes, kill -9 of a chain member, %zu times\n\n",
                o.failover);
    std::fflush(stdout);
    auto started = start_cluster(o, 3);
    if (!started) {
        ++ss.errors;
        return;
    }
    chain_cluster& c = *started;
    std::printf("- etcd: `%s`\n- n1: `%s`\n\n", c.etcd.proc.command.c_str(),
                c.nodes[0].command.c_str());
    std::printf(
        "One writer per node (PUT, one at a time, its own key). Kill k takes the node at\n"
        "position k mod 3 of the chain etcd holds (head, middle, tail), at once after the last\n"
        "one rejoined. Failover: from the kill (the node reaped) to the first acknowledged write\n"
        "sent after it, by any writer. Rejoin: from the restart to the chain of 3 again.\n\n");
    std::printf("| kill | position | node | failover ms | rejoin ms |\n|---|---|---|---|---|\n");
    std::fflush(stdout);
    if (!roundtrip(c.nodes[0].port, "CREATE failover\r\n", "OK\r\n", false)) {
        ++ss.errors;
        stop(c);
        return;
    }
    std::vector<std::unique_ptr<failover_probe>> probes;
    for (std::size_t i = 0; i < 3; ++i) {
        probes.push_back(std::make_unique<failover_probe>(c.nodes[i].port, i));
    }
    static constexpr const char* positions[] = {"head", "middle", "tail"};
    std::vector<double> failovers;
    std::vector<double> rejoins;
    for (std::size_t k = 0; k < o.failover; ++k) {
        const std::vector<std::string> chain = c.chain();
        if (chain.size() != 3) {
            issue("kill %zu: the chain is not 3 nodes long", k + 1);
            ++ss.errors;
            break;
        }
        const std::string victim_name = chain[k % 3];
        const auto victim = static_cast<std::size_t>(victim_name.at(1) - '1');
        sleep_ms(300); // the writers settle on the chain as it is
        server& v = c.nodes[victim];
        ::kill(v.pid, SIGKILL);
        int status = 0;
        ::waitpid(v.pid, &status, 0);
        track_child(v.pid, false);
        v.pid = -1;
        ::close(v.stdout_fd);
        v.stdout_fd = -1;
        const std::int64_t killed = now_ns();
        std::int64_t back = 0;
        while (back == 0 && now_ns() < killed + 30'000'000'000) {
            for (const auto& p : probes) {
                const std::int64_t t = p->first_ok_since(killed);
                back = t != 0 && (back == 0 || t < back) ? t : back;
            }
            if (back == 0) {
                sleep_ms(10);
            }
        }
        if (back == 0) {
            issue("kill %zu (%s): no write acknowledged within 30 s", k + 1, victim_name.c_str());
            ++ss.errors;
            break;
        }
        const double failover_ms = static_cast<double>(back - killed) / 1e6;
        const std::int64_t restart = now_ns();
        auto again = start(server_kind::kv, o, sweep_max_connections(o), c.spec(victim));
        if (!again) {
            ++ss.errors;
            break;
        }
        v = *again;
        if (!c.wait_for(3, 3, 30)) {
            issue("kill %zu: %s did not rejoin within 30 s", k + 1, victim_name.c_str());
            ++ss.errors;
            break;
        }
        const double rejoin_ms = static_cast<double>(now_ns() - restart) / 1e6;
        failovers.push_back(failover_ms);
        rejoins.push_back(rejoin_ms);
        std::printf("| %zu | %s | %s | %.0f | %.0f |\n", k + 1, positions[k % 3],
                    victim_name.c_str(), failover_ms, rejoin_ms);
        std::fflush(stdout);
    }
    // Every writer's latest acknowledged value (or a later one whose reply was lost) is there.
    const std::vector<std::uint64_t> last = [&] {
        std::vector<std::uint64_t> out;
        for (const auto& p : probes) {
            out.push_back(p->acknowledged());
        }
        probes.clear();
        return out;
    }();
    for (std::size_t i = 0; i < last.size(); ++i) {
        const int fd = connect_blocking(c.nodes[0].port);
        std::string got;
        const bool read = fd >= 0 && send_all(fd, "GET failover k" + std::to_string(i) + "\r\n") &&
                          read_until(fd, now_ns() + 5'000'000'000, got, [](const std::string& g) {
                              return g.ends_with("OK\r\n") || g.starts_with("ERROR");
                          }) == read_end::enough;
        if (fd >= 0) {
            ::close(fd);
        }
        std::uint64_t value = 0;
        const std::size_t eol = got.find("\r\n");
        if (!read || eol == std::string::npos ||
            !parse_number(std::string_view(got).substr(0, eol), value) || value < last[i]) {
            issue("k%zu: read %s after the kills, acknowledged up to %llu", i,
                  printable(got).c_str(), static_cast<unsigned long long>(last[i]));
            ++ss.errors;
        }
    }
    stop(c);
    if (failovers.empty()) {
        return;
    }
    const auto within =
        std::count_if(failovers.begin(), failovers.end(), [](double ms) { return ms <= 2000; });
    std::printf("\nfailover over %zu kills: min %.0f ms, median %.0f ms, p90 %.0f ms, max %.0f ms; "
                "%lld of %zu within 2 s\n",
                failovers.size(), *std::min_element(failovers.begin(), failovers.end()),
                percentile_of(failovers, 0.5), percentile_of(failovers, 0.9),
                *std::max_element(failovers.begin(), failovers.end()),
                static_cast<long long>(within), failovers.size());
    std::printf("rejoin: min %.0f ms, median %.0f ms, max %.0f ms\n",
                *std::min_element(rejoins.begin(), rejoins.end()), percentile_of(rejoins, 0.5),
                *std::max_element(rejoins.begin(), rejoins.end()));
    std::fflush(stdout);
}

} // namespace kv_load
