// SPDX-License-Identifier: MIT
// kv_load: our own load generator for kv_server, measured side by side with redis-server.
//
// One program, one run: it starts the servers itself (child processes it owns, on loopback,
// stopped by PID at the end), fills them with the same data, drives them with the same client
// and prints the numbers and their ratios, so a comparison never depends on two tools or two
// runs agreeing. Redis carries the same workload as inline HSET/HGET, one hash per bucket.
//
//   kv_load [--sweep] [--forward] [--idle N] [--fill N] [--slow-subscriber] [--observer]
//           [--replication] [--failover N] [--only kv|redis] [--kv-server PATH] ...
//   (kv_load --help lists every option; with no mode given, --sweep runs.)
//
// Modes (several may be given; each starts fresh servers):
//   --sweep   C connections (50) keep P requests in flight each, P = 1 and then 16, a 90:10
//             GET:PUT mix over K keys (100000, prefilled) for 1 s of warm-up and 5 s measured:
//             ops/s and p50/p99/p999 latency per server, then the kv_server/redis ratios.
//   --forward the --sweep workload on a cluster of two kv_server nodes whose routes make n1
//             the owner of every bucket it uses: through n1 directly and through n2, which
//             forwards to n1, alternating; then the forwarded/direct ratios.
//   --idle N  N connections per server, each checked with one request and then left idle:
//             the server's RSS before and after, per connection.
//   --fill N  N entries (10-byte keys, 8-byte values) into one bucket/hash: RSS per entry.
//   --slow-subscriber
//             one kv_server, one bucket, a publisher PUTting 840 values of 60,000 bytes one at
//             a time: its p50/p99/max latency with one subscriber that reads every event, and
//             with one more that reads nothing (cut off by the server past 32 MiB), in
//             alternating passes; then the lagging/alone ratios.
//   --observer three kv_server, --log-level error, info and error again (a control), with
//             admin ports and stderr in a file each: the --sweep workload at P=16 on the error
//             one unscraped and with /metrics scraped 10 times a second in every other 250 ms
//             window of a pass, and on the info and control ones, in rounds with the order
//             alternating; the medians of the paired ratios and their confidence intervals.
//   --replication  the --sweep workload through the head of chains of R = 1, 2 and 3 nodes
//             (three kv_server nodes and an etcd each) and on a lone node, alternating.
//   --failover N   R=3 under writes, N kill -9 of a chain member, each node restarted and
//             rejoined before the next kill: how soon writes are acknowledged again.
//
// The client shares the machine with the server under test, so it is kept cheap: one thread
// by default (--client-threads), non-blocking sockets on one epoll per thread, TCP_NODELAY,
// the requests a connection may add after a read written with one send(), replies read up to
// 256 KiB at a time and parsed in place, no allocation per request, one clock read per recv()
// and per send() (latency runs from the send() of a request to the recv() that completed its
// reply, into a log-linear histogram with less than 1% error).
//
// Every reply is verified, exactly, while connections write concurrently: keys [0, K/2) are
// written by the prefill only and are read-only afterwards; keys [K/2, K) are split into one
// range per connection, and only that connection writes them. A GET reads a read-only key or
// one of its connection's own keys, so the value it must return is known when the request is
// sent (one connection's requests run in order). Values are 8 bytes encoding (writer id,
// counter), so another key's value or an older write never passes. A mismatch, an error reply,
// an unparsable reply, a closed connection or a timeout is reported on stderr and makes the
// exit status 1.
//
// The parts, each in its own file of this directory, included here in one translation unit:
//   report.hpp     the clock, the latency histogram, problems and numbers as printed
//   protocols.hpp  keys and values; requests and replies of kv_server and Redis
//   processes.hpp  the child processes kv_load owns: spawn, watch, stop, RSS and CPU
//   options.hpp    the command line
//   servers.hpp    loopback sockets; starting kv_server and redis-server
//   workload.hpp   connections, the epoll driver that verifies every reply, one run's state
//   sweep.hpp      --sweep and --forward
//   memory.hpp     --idle and --fill
//   slow_subscriber.hpp  --slow-subscriber
//   observer_overhead.hpp  --observer
//   replication.hpp  --replication and --failover
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "memory.hpp"
#include "observer_overhead.hpp"
#include "options.hpp"
#include "processes.hpp"
#include "replication.hpp"
#include "report.hpp"
#include "slow_subscriber.hpp"
#include "sweep.hpp"
#include "workload.hpp"

int main(int argc, char** argv) {
    using namespace kv_load;
    auto parsed = parse_options(argc, argv);
    if (!parsed) {
        return 2;
    }
    session ss;
    ss.opt = *parsed;
    const options& o = ss.opt;

    struct sigaction sa {};
    sa.sa_handler = on_fatal_signal;
    ::sigemptyset(&sa.sa_mask);
    for (const int sig : {SIGINT, SIGTERM, SIGHUP}) {
        ::sigaction(sig, &sa, nullptr);
    }
    // The children inherit the raised limit, which --idle needs on both sides.
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &lim);
    }

    ss.have_kv = o.want_kv && ::access(o.kv_path.c_str(), X_OK) == 0;
    ss.have_redis = o.want_redis && ::access(o.redis_path.c_str(), X_OK) == 0;

    std::vector<std::string> invocation{"kv_load"};
    invocation.insert(invocation.end(), argv + 1, argv + argc);
    utsname un{};
    ::uname(&un);
    std::printf("# kv_load\n\n");
    std::printf("- command: `%s`\n", command_line(invocation).c_str());
    std::printf("- machine: %ld CPUs (nproc), %s, Linux %s, RLIMIT_NOFILE %llu\n",
                ::sysconf(_SC_NPROCESSORS_ONLN), cpu_model().c_str(), un.release,
                static_cast<unsigned long long>(lim.rlim_cur));
    if (o.want_kv) {
        std::string args = " --port 0 --bind 127.0.0.1";
        if (o.kv_threads > 0) {
            args += " --threads " + std::to_string(o.kv_threads);
        }
        std::printf("- kv_server: `%s%s`%s\n", o.kv_path.c_str(), args.c_str(),
                    ss.have_kv ? " (--idle N adds --max-connections N+16)"
                               : " (not found: skipped)");
    }
    if (o.want_redis) {
        const std::string version = ss.have_redis ? version_of(o.redis_path) : "";
        std::printf("- redis: %s%s\n", ss.have_redis ? version.c_str() : o.redis_path.c_str(),
                    ss.have_redis ? "" : " (not found: skipped)");
    }
    if (o.replication || o.failover > 0) {
        const bool have_etcd = ::access(o.etcd_path.c_str(), X_OK) == 0;
        std::printf("- etcd: %s\n", have_etcd ? version_of(o.etcd_path).c_str()
                                              : (o.etcd_path + " (not found)").c_str());
    }
    std::fflush(stdout);
    if (!ss.have_kv && !ss.have_redis) {
        std::fputs("kv_load: no server to run\n", stderr);
        return 1;
    }
    if (!ss.have_kv && o.want_kv) {
        note("kv_server not found; measuring redis alone (no ratios)");
    }
    if (!ss.have_redis && o.want_redis) {
        note("redis-server not found; measuring kv_server alone (no ratios)");
    }

    if (o.sweep) {
        run_sweep(ss);
    }
    // The modes that measure kv_server against itself need it; without it they are skipped.
    const auto kv_mode = [&ss](bool wanted, void (*run)(session&), const char* skipped) {
        if (wanted && ss.have_kv) {
            run(ss);
        } else if (wanted) {
            note(skipped);
        }
    };
    kv_mode(o.forward, run_forward, "--forward needs kv_server; skipped");
    if (o.idle > 0) {
        run_idle(ss);
    }
    if (o.fill > 0) {
        run_fill(ss);
    }
    kv_mode(o.slow_subscriber, run_slow_subscriber, "--slow-subscriber needs kv_server; skipped");
    kv_mode(o.observer, run_observer, "--observer needs kv_server; skipped");
    kv_mode(o.replication, run_replication, "--replication needs kv_server; skipped");
    kv_mode(o.failover > 0, run_failover, "--failover needs kv_server; skipped");
    if (ss.errors > 0) {
        std::printf("\nFAILED: %llu errors (mismatches, error replies, protocol errors, lost "
                    "replies; details on stderr)\n",
                    static_cast<unsigned long long>(ss.errors));
        std::fprintf(stderr, "kv_load: FAILED: %llu errors\n",
                     static_cast<unsigned long long>(ss.errors));
        return 1;
    }
    std::printf("\nAll replies verified: no mismatch, no error.\n");
    return 0;
}
