// SPDX-License-Identifier: MIT
// kv_load: --idle and --fill: the RSS of idle connections and of entries, per server.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "processes.hpp"
#include "protocols.hpp"
#include "report.hpp"
#include "servers.hpp"
#include "workload.hpp"

namespace kv_load {

// Sends one GET on each of conns[lo, hi) and verifies every reply.
inline bool check_connections(server_kind kind, const keyspace& ks,
                              std::vector<std::uint64_t>& expected, std::vector<connection>& conns,
                              std::size_t lo, std::size_t hi, std::uint64_t& errors) {
    std::vector<connection*> part;
    for (std::size_t i = lo; i < hi; ++i) {
        connection& c = conns[i];
        c.src = connection::source::sequence;
        c.seq_op = op::get;
        c.seq_next = 0;
        c.seq_end = 1;
        part.push_back(&c);
    }
    workload w;
    w.kind = kind;
    w.keys = &ks;
    w.expected = &expected;
    w.depth = 1;
    w.deadline = now_ns() + 30'000'000'000;
    stats st;
    driver d(w, st);
    d.run(part);
    if (st.errors() > 0 || st.replies != hi - lo) {
        errors += std::max<std::uint64_t>(1, st.errors());
        return false;
    }
    return true;
}

// A fresh server of `kind` with the bucket of `ks` created; a failure is counted and stops
// whatever started.
inline std::optional<server> start_with_bucket(session& ss, server_kind kind,
                                               std::size_t max_connections, const keyspace& ks) {
    auto srv = start(kind, ss.opt, max_connections);
    if (srv && !create_buckets(*srv, ks)) {
        stop(*srv);
        srv.reset();
    }
    if (!srv) {
        ++ss.errors;
    }
    return srv;
}

inline void print_failed_row(server_kind kind, std::size_t n) {
    std::printf("| %s | %s | failed, see the errors above | | | | |\n", label(kind),
                with_commas(static_cast<double>(n)).c_str());
}

// N connections, opened 512 at a time; each batch is checked with one GET per connection (so
// every connection is known to be accepted and served), then all stay open and idle while the
// server's RSS settles; at the end every connection is checked once more (still served).
inline void idle_server(session& ss, server_kind kind) {
    const std::size_t n = ss.opt.idle;
    const keyspace ks{{"bench"}, "key", 6, 1};
    auto srv = start_with_bucket(ss, kind, n + 16, ks);
    if (!srv) {
        return;
    }
    std::vector<std::uint64_t> expected(1);
    const auto setup = run_sequence(*srv, ks, expected, op::put, 1, 1, 1);
    if (!setup || setup->s.errors() > 0) {
        ++ss.errors;
        stop(*srv);
        return;
    }
    double ignored = 0;
    const long before = settled_rss_kib(srv->pid, 0.0, ignored);
    std::vector<connection> conns(n);
    const std::int64_t start_time = now_ns();
    bool ok = true;
    constexpr std::size_t batch = 512;
    for (std::size_t lo = 0; ok && lo < n; lo += batch) {
        const std::size_t hi = std::min(n, lo + batch);
        std::vector<int> fds;
        ok = connect_many(srv->port, hi - lo, fds);
        if (!ok) {
            ++ss.errors;
            break;
        }
        for (std::size_t i = lo; i < hi; ++i) {
            prepare(conns[i], fds[i - lo], static_cast<std::uint32_t>(i), 1, ks);
        }
        ok = check_connections(kind, ks, expected, conns, lo, hi, ss.errors);
    }
    const double seconds = static_cast<double>(now_ns() - start_time) / 1e9;
    const long at_once = proc_rss_kib(srv->pid);
    double waited = 0;
    const long after = ok ? settled_rss_kib(srv->pid, 4.0, waited) : 0;
    for (std::size_t lo = 0; ok && lo < n; lo += batch) {
        ok = check_connections(kind, ks, expected, conns, lo, std::min(n, lo + batch), ss.errors);
    }
    if (ok && alive(*srv)) {
        std::printf("| %s | %s | %s | %s | %s (%.1f s) | %.0f B | %.2f s |\n", label(kind),
                    with_commas(static_cast<double>(n)).c_str(), mib(before).c_str(),
                    mib(at_once).c_str(), mib(after).c_str(), waited,
                    static_cast<double>(after - before) * 1024.0 / static_cast<double>(n), seconds);
    } else {
        print_failed_row(kind, n);
    }
    std::fflush(stdout);
    close_all(conns);
    stop(*srv);
}

inline void run_idle(session& ss) {
    std::printf("\n## idle connections: %s per server, each served one GET, then idle (and "
                "checked again\nwith one more GET after the RSS was taken)\n\n",
                with_commas(static_cast<double>(ss.opt.idle)).c_str());
    std::printf("RSS after: at once, then settled (after 4 s, stable for 2 s); per connection: "
                "settled minus before.\n\n");
    std::printf("| server | connections | RSS before | RSS at once | RSS settled | per "
                "connection | open + check |\n|---|---|---|---|---|---|---|\n");
    std::fflush(stdout);
    for (const server_kind kind : ss.servers()) {
        idle_server(ss, kind);
    }
}

// N entries with 10-byte keys ("k000000123") and 8-byte values in one bucket/hash, written
// over 4 pipelined connections; RSS growth per entry; then every (N/10000)th entry read back.
inline void fill_server(session& ss, server_kind kind) {
    const std::size_t n = ss.opt.fill;
    const keyspace ks{{"bench"}, "k", 9, static_cast<std::uint32_t>(n)};
    auto srv = start_with_bucket(ss, kind, 0, ks);
    if (!srv) {
        return;
    }
    std::vector<std::uint64_t> expected(n);
    double ignored = 0;
    const long before = settled_rss_kib(srv->pid, 0.0, ignored);
    const auto fill = run_sequence(*srv, ks, expected, op::put, 1, 4, ss.opt.client_threads);
    double waited = 0;
    const long after = settled_rss_kib(srv->pid, 4.0, waited);
    const std::uint64_t step = std::max<std::uint64_t>(1, n / 10000);
    const auto check = fill ? run_sequence(*srv, ks, expected, op::get, step, 1, 1) : std::nullopt;
    const std::uint64_t errors = !fill || !check ? 1 : fill->s.errors() + check->s.errors();
    if (errors == 0 && alive(*srv)) {
        std::printf("| %s | %s | %s | %s (%.1f s) | %.1f B | %s/s | %s |\n", label(kind),
                    with_commas(static_cast<double>(n)).c_str(), mib(before).c_str(),
                    mib(after).c_str(), waited,
                    static_cast<double>(after - before) * 1024.0 / static_cast<double>(n),
                    with_commas(static_cast<double>(n) / fill->seconds).c_str(),
                    with_commas(static_cast<double>(check->s.replies)).c_str());
    } else {
        ss.errors += errors;
        print_failed_row(kind, n);
    }
    std::fflush(stdout);
    stop(*srv);
}

inline void run_fill(session& ss) {
    std::printf("\n## memory per entry: %s entries, 10-byte keys, 8-byte values, one "
                "bucket/hash\n\n",
                with_commas(static_cast<double>(ss.opt.fill)).c_str());
    std::printf("RSS settled (after: 4 s, then stable for 2 s) before and after; per entry: "
                "the difference\nover the entries; read back: entries checked with GET "
                "afterwards.\n\n");
    std::printf("| server | entries | RSS before | RSS after | per entry | PUT rate | read back "
                "|\n|---|---|---|---|---|---|---|\n");
    std::fflush(stdout);
    for (const server_kind kind : ss.servers()) {
        fill_server(ss, kind);
    }
}

} // namespace kv_load
