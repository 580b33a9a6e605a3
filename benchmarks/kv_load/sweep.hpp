// SPDX-License-Identifier: MIT
// kv_load: --sweep (kv_server against redis-server) and --forward (a node directly against through
// another node): throughput and latency at several pipeline depths, with ratios.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "options.hpp"
#include "processes.hpp"
#include "protocols.hpp"
#include "report.hpp"
#include "servers.hpp"
#include "workload.hpp"

namespace kv_load {

struct sweep_row {
    std::string name;
    std::uint32_t depth;
    double ops_per_s;
    double p99;
};

// The keys of a sweep and the value each must hold now. Targets that reach the same data
// (--forward: n1 directly and through n2) share one: their runs take turns, and each
// connection still writes only its own keys, so every expected value stays known.
struct sweep_data {
    keyspace ks;
    std::vector<std::uint64_t> expected;
};

// One way into a server under the sweep, a row of the table: where the client connects, the
// processes that serve it (all must stay up; their CPU is summed) and the data behind it.
struct sweep_target {
    std::string name;
    server_kind kind = server_kind::kv;
    int port = 0;
    std::vector<server*> servers;
    sweep_data* data = nullptr;
    bool usable = false;
};

// kv_server's own connection limit (10000 by default) is raised only when the run needs more.
inline std::size_t sweep_max_connections(const options& o) {
    return o.connections + 16 > 10000 ? o.connections + 16 : 0;
}

// Creates the buckets through `via` and prefills every key (4 pipelined connections).
inline bool sweep_prefill(session& ss, const server& via, sweep_data& d) {
    const options& o = ss.opt;
    for (std::uint32_t b = 0; b < o.buckets; ++b) {
        d.ks.buckets.push_back(o.buckets == 1 ? std::string("bench") : "bench" + std::to_string(b));
    }
    d.ks.prefix = "key";
    d.ks.digits = std::max<std::size_t>(6, decimal_digits(o.keys - 1));
    d.ks.keys = o.keys;
    d.expected.assign(d.ks.size(), 0);
    if (!create_buckets(via, d.ks)) {
        ++ss.errors;
        return false;
    }
    const auto prefill = run_sequence(via, d.ks, d.expected, op::put, 1, 4, o.client_threads);
    if (!prefill || prefill->s.errors() > 0) {
        issue("%s: the prefill failed", label(via.kind));
        ss.errors += prefill ? prefill->s.errors() : 1;
        return false;
    }
    std::fprintf(stderr, "kv_load: %s prefilled %s entries in %.2f s\n", label(via.kind),
                 with_commas(static_cast<double>(d.ks.size())).c_str(), prefill->seconds);
    return true;
}

// One timed run: C fresh connections with P in flight each, warm-up, then the window; with
// `during` and `progress` as in workload.
inline void sweep_run(session& ss, sweep_target& t, std::uint32_t depth,
                      std::vector<sweep_row>& rows, std::function<void()> during = {},
                      std::atomic<std::uint64_t>* progress = nullptr) {
    const options& o = ss.opt;
    std::vector<pid_t> pids;
    for (server* s : t.servers) {
        if (!alive(*s)) {
            ++ss.errors;
            t.usable = false;
            return;
        }
        pids.push_back(s->pid);
    }
    std::vector<int> fds;
    if (!connect_many(t.port, o.connections, fds)) {
        ++ss.errors;
        return;
    }
    // Keys [0, read_only) stay as prefilled; [read_only, keys) are split between connections.
    const std::uint32_t read_only = o.keys / 2;
    const std::uint64_t writable = o.keys - read_only;
    std::vector<connection> conns(o.connections);
    for (std::size_t i = 0; i < conns.size(); ++i) {
        connection& c = conns[i];
        prepare(c, fds[i], static_cast<std::uint32_t>(i), depth, t.data->ks);
        c.src = connection::source::mix;
        c.writer = ss.take_writer();
        c.rng = c.writer * 0x9e3779b97f4a7c15U + depth;
        c.own_lo = read_only + static_cast<std::uint32_t>(writable * i / conns.size());
        c.own_hi = read_only + static_cast<std::uint32_t>(writable * (i + 1) / conns.size());
    }
    workload w;
    w.kind = t.kind;
    w.name = t.name.c_str();
    w.keys = &t.data->ks;
    w.expected = &t.data->expected;
    w.depth = depth;
    w.read_only = read_only;
    w.get_threshold = static_cast<std::uint64_t>(std::llround(o.get_ratio * 4294967296.0));
    w.timed = true;
    w.window_begin = now_ns() + static_cast<std::int64_t>(o.warmup * 1e9);
    w.window_end = w.window_begin + static_cast<std::int64_t>(o.seconds * 1e9);
    w.deadline = w.window_end + 10'000'000'000;
    w.progress = progress;
    w.during = std::move(during);
    std::fprintf(stderr, "kv_load: %s, %zu connections, P=%u: %.1f s + %.1f s\n", t.name.c_str(),
                 o.connections, depth, o.warmup, o.seconds);
    const outcome r = drive(w, conns, o.client_threads, pids);
    close_all(conns);
    const double ops = static_cast<double>(r.s.ops) / r.seconds;
    const histogram& h = r.s.latency;
    std::printf(
        "| %s | %zu | %u | %s | %.1f | %.1f | %.1f | %.1f | %s | %llu | %.0f%% | %.0f%% |\n",
        t.name.c_str(), o.connections, depth, with_commas(ops).c_str(), h.percentile_us(0.50),
        h.percentile_us(0.99), h.percentile_us(0.999), h.max_us(),
        with_commas(static_cast<double>(r.s.replies)).c_str(),
        static_cast<unsigned long long>(r.s.errors()), r.server_cpu * 100, r.client_cpu * 100);
    std::fflush(stdout);
    ss.errors += r.s.errors();
    if (r.s.errors() == 0) {
        rows.push_back({t.name, depth, ops, h.percentile_us(0.99)});
    }
}

// The workload's description and the table's head (--sweep and --forward).
inline void print_sweep_head(const options& o, const char* first_column) {
    std::printf("%u bucket(s) x %s keys (%zu-byte keys, 8-byte values), prefilled; half the keys\n"
                "read-only, half split between the connections, which alone write their own;\n"
                "%.1f s warm-up + %.1f s measured per run; %u client thread(s); every reply "
                "verified.\n\n",
                o.buckets, with_commas(o.keys).c_str(),
                std::max<std::size_t>(6, decimal_digits(o.keys - 1)) + 3, o.warmup, o.seconds,
                o.client_threads);
    std::printf("| %s | conns | P | ops/s | p50 us | p99 us | p999 us | max us | replies "
                "verified | errors | server CPU | client CPU |\n",
                first_column);
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    std::fflush(stdout);
}

// Every P of --pipeline on every usable target. The targets are all up and prefilled first;
// then the runs alternate between them (A P=1, B P=1, A P=16, ...), so a change in the
// machine's background load falls on both sides of a ratio rather than on one target. The
// idle one costs nothing meanwhile.
inline std::vector<sweep_row> sweep_runs(session& ss, std::vector<sweep_target>& targets) {
    std::vector<sweep_row> rows;
    for (const std::uint32_t depth : ss.opt.pipelines) {
        for (auto& t : targets) {
            if (t.usable) {
                sweep_run(ss, t, depth, rows);
            }
        }
    }
    return rows;
}

// `top` over `bottom` at every P both were measured at without errors.
inline void print_ratios(const std::vector<sweep_row>& rows, const std::string& top,
                         const std::string& bottom, const char* title) {
    bool header = false;
    for (const auto& a : rows) {
        for (const auto& b : rows) {
            if (a.name == top && b.name == bottom && a.depth == b.depth) {
                if (!header) {
                    std::printf("\n%s\n", title);
                    header = true;
                }
                std::printf("- P=%u: ops/s %.2fx, p99 latency %.2fx (below 1 is better)\n", a.depth,
                            a.ops_per_s / b.ops_per_s, a.p99 / b.p99);
            }
        }
    }
    std::fflush(stdout);
}

inline void run_sweep(session& ss) {
    const options& o = ss.opt;
    std::printf("\n## sweep: %zu connections, P requests in flight each, GET:PUT %.0f:%.0f\n\n",
                o.connections, o.get_ratio * 100, (1 - o.get_ratio) * 100);
    print_sweep_head(o, "server");
    const std::vector<server_kind> kinds = ss.servers();
    std::vector<server> procs(kinds.size()); // never resized: the targets point into both
    std::vector<sweep_data> data(kinds.size());
    std::vector<sweep_target> targets;
    for (std::size_t i = 0; i < kinds.size(); ++i) {
        auto srv = start(kinds[i], o, sweep_max_connections(o));
        if (!srv) {
            ++ss.errors;
            continue;
        }
        procs[i] = *srv;
        sweep_target& t = targets.emplace_back();
        t.name = label(kinds[i]);
        t.kind = kinds[i];
        t.port = procs[i].port;
        t.servers = {&procs[i]};
        t.data = &data[i];
        t.usable = sweep_prefill(ss, procs[i], data[i]);
    }
    const std::vector<sweep_row> rows = sweep_runs(ss, targets);
    for (auto& p : procs) {
        stop(p);
    }
    print_ratios(rows, label(server_kind::kv), label(server_kind::redis),
                 "kv_server / redis, same client, same run:");
}

// Two kv_server nodes with the same routes: n1 owns the bucket names starting with a
// lower-case letter (every bucket of the workload: "bench..."), n2 those starting with an
// upper-case one (none of the workload's). The --sweep workload runs through n1 directly and
// through n2, which forwards each request to n1 over its pooled peer connections and relays
// the reply, alternating; the ratios are the cost of the extra hop.
inline void run_forward(session& ss) {
    const options& o = ss.opt;
    std::printf("\n## forward: n1 directly and through n2 (forwarding to n1), %zu connections, "
                "P requests in\nflight each, GET:PUT %.0f:%.0f\n\n",
                o.connections, o.get_ratio * 100, (1 - o.get_ratio) * 100);
    std::fflush(stdout);
    // Every node's routes name every node's port, so both ports are chosen before either node
    // starts. Another process may take one in between: a failed start is retried on new ports.
    server n1;
    server n2;
    for (int attempt = 0; attempt < 3 && n2.pid < 0; ++attempt) {
        if (attempt > 0) {
            note("retrying the two nodes on new ports");
        }
        const std::vector<int> ports = free_ports(2);
        if (ports[0] == 0 || ports[1] == 0) {
            continue;
        }
        const std::vector<std::string> routes{"a-z=n1@127.0.0.1:" + std::to_string(ports[0]),
                                              "A-Z=n2@127.0.0.1:" + std::to_string(ports[1])};
        auto first =
            start(server_kind::kv, o, sweep_max_connections(o), {"n1", ports[0], routes, {}, -1});
        if (!first) {
            continue;
        }
        n1 = *first;
        auto second =
            start(server_kind::kv, o, sweep_max_connections(o), {"n2", ports[1], routes, {}, -1});
        if (!second) {
            stop(n1);
            continue;
        }
        n2 = *second;
    }
    if (n2.pid < 0) {
        issue("the two kv_server nodes did not start (3 attempts)");
        ++ss.errors;
        return;
    }
    std::printf("- n1: `%s`\n- n2: `%s`\n\n", n1.command.c_str(), n2.command.c_str());
    std::printf("The buckets are created and prefilled through n1, so a request n2 served itself\n"
                "instead of forwarding would find no bucket and count as an error. Server CPU: "
                "both nodes.\n\n");
    print_sweep_head(o, "path");
    sweep_data data;
    std::vector<sweep_target> targets(2);
    targets[0].name = "n1 (direct)";
    targets[0].port = n1.port;
    targets[1].name = "n2 -> n1 (forwarded)";
    targets[1].port = n2.port;
    const bool prefilled = sweep_prefill(ss, n1, data);
    for (auto& t : targets) {
        t.kind = server_kind::kv;
        t.servers = {&n1, &n2};
        t.data = &data;
        t.usable = prefilled;
    }
    const std::vector<sweep_row> rows = sweep_runs(ss, targets);
    stop(n2);
    stop(n1);
    print_ratios(rows, targets[1].name, targets[0].name,
                 "forwarded / direct, same client, same run:");
}

} // namespace kv_load
