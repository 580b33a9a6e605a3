// SPDX-License-Identifier: MIT
// kv_load: --slow-subscriber, what a subscriber that never reads costs the publishers of its
// bucket. kv_server promises that publishers never wait for a slow subscriber (one whose
// unsent events pass 32 MiB is disconnected); this measures how far their latency moves.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "options.hpp"
#include "processes.hpp"
#include "report.hpp"
#include "servers.hpp"
#include "workload.hpp"

namespace kv_load {

// ------------------------------------------------------------------------------------------
// The workload: one bucket, N PUTs of V-byte values on one connection, one at a time

// The requests of a pass and the events they publish, the same in every pass: key i gets a
// value of V times the letter 'A' + i % 26.
struct publication {
    std::string bucket = "slow";
    std::vector<std::string> requests;
    std::string events; // what a subscriber that reads everything receives, byte for byte

    publication(std::size_t puts, std::size_t value_size) {
        requests.reserve(puts);
        for (std::size_t i = 0; i < puts; ++i) {
            const std::string key = "k" + std::to_string(i);
            const std::string value(value_size, static_cast<char>('A' + i % 26));
            requests.push_back("PUT " + bucket + " " + key + " " + value + "\r\n");
            events += key + " SET TO " + value + "\r\n";
        }
    }
};

// One pass of the publisher: its latency and what the subscribers received.
struct pass_result {
    histogram latency; // from the send() of a PUT to the recv() that completed its "OK"
    double seconds = 0;
    std::size_t puts = 0;  // acknowledged
    std::size_t worst = 0; // the index of the slowest PUT
    std::int64_t worst_ns = -1;
    std::size_t fast_bytes = 0;
    std::size_t slow_bytes = 0;
    bool slow_cut = false; // the server closed the slow subscriber's connection
    std::uint64_t errors = 0;
};

// SUBSCRIBE has no acknowledgement, so each subscriber is known to be subscribed once an event
// has reached it: the publisher PUTs "sync" keys until every subscriber has seen one, then one
// last one that every subscriber reads through. After that, every subscriber's stream is the
// events of the PUTs that follow, and nothing else.
inline bool subscribe_all(int publisher, const std::vector<int>& subscribers,
                          const std::string& bucket, std::uint64_t& sync_counter) {
    const std::string subscribe = "SUBSCRIBE " + bucket + "\r\n";
    for (const int fd : subscribers) {
        if (!send_all(fd, subscribe)) {
            issue("slow-subscriber: SUBSCRIBE: %s", std::strerror(errno));
            return false;
        }
    }
    const auto put_sync = [&] {
        ++sync_counter;
        return exchange(publisher,
                        "PUT " + bucket + " sync " + std::to_string(sync_counter) + "\r\n",
                        "OK\r\n", now_ns() + 5'000'000'000, false);
    };
    const auto some = [](const std::string& g) { return !g.empty(); };
    std::vector<std::string> seen(subscribers.size());
    const std::int64_t deadline = now_ns() + 5'000'000'000;
    for (std::size_t i = 0; i < subscribers.size(); ++i) {
        while (seen[i].empty()) {
            if (now_ns() > deadline || !put_sync()) {
                issue("slow-subscriber: no event reached subscriber %zu within 5 s", i + 1);
                return false;
            }
            read_until(subscribers[i], now_ns() + 10'000'000, seen[i], some);
        }
    }
    if (!put_sync()) {
        return false;
    }
    const std::string last = "sync SET TO " + std::to_string(sync_counter) + "\r\n";
    for (std::size_t i = 0; i < subscribers.size(); ++i) {
        const auto through = [&](const std::string& g) { return g.ends_with(last); };
        if (read_until(subscribers[i], now_ns() + 5'000'000'000, seen[i], through) !=
            read_end::enough) {
            issue("slow-subscriber: subscriber %zu: expected sync events through %s, got %s", i + 1,
                  printable(last).c_str(), printable(seen[i]).c_str());
            return false;
        }
    }
    return true;
}

// Reads `expected` from fd on its own thread, checking every byte as it arrives; the number
// of bytes that matched is left in `got`.
inline void read_events(int fd, std::string_view expected, std::int64_t deadline, std::size_t& got,
                        std::uint64_t& errors) {
    std::vector<char> buf(std::size_t{256} * 1024);
    got = 0;
    while (got < expected.size()) {
        pollfd p{fd, POLLIN, 0};
        const int ms = ms_until(deadline);
        if (ms <= 0) {
            issue("slow-subscriber: the fast subscriber got %zu of %zu bytes of events in time",
                  got, expected.size());
            ++errors;
            return;
        }
        if (::poll(&p, 1, ms) <= 0) {
            continue;
        }
        const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            issue("slow-subscriber: the fast subscriber's connection %s after %zu of %zu bytes",
                  n == 0 ? "closed" : std::strerror(errno), got, expected.size());
            ++errors;
            return;
        }
        const auto len = static_cast<std::size_t>(n);
        const std::string_view in(buf.data(), len);
        if (len > expected.size() - got || expected.compare(got, len, in) != 0) {
            issue("slow-subscriber: the fast subscriber got %s at byte %zu, expected %s",
                  printable(in).c_str(), got, printable(expected.substr(got, len)).c_str());
            ++errors;
            return;
        }
        got += len;
    }
}

// One pass: a fresh fast subscriber (and, when `lagging`, a slow one that reads nothing), then
// every PUT of `pub` on the publisher's connection, timed one by one.
inline pass_result publish_pass(const server& srv, const publication& pub, bool lagging,
                                std::uint64_t& sync_counter) {
    pass_result r;
    const int publisher = connect_blocking(srv.port);
    const int fast = connect_blocking(srv.port);
    // A small receive buffer, so the kernel holds little of what the server sends the slow one.
    const int slow = lagging ? connect_blocking(srv.port, 16 * 1024) : -1;
    std::vector<int> subscribers{fast};
    if (lagging) {
        subscribers.push_back(slow);
    }
    const auto close_all_fds = [&] {
        for (const int fd : {publisher, fast, slow}) {
            if (fd >= 0) {
                ::close(fd);
            }
        }
    };
    if (publisher < 0 || fast < 0 || (lagging && slow < 0)) {
        issue("slow-subscriber: connect to 127.0.0.1:%d: %s", srv.port, std::strerror(errno));
        ++r.errors;
        close_all_fds();
        return r;
    }
    if (!subscribe_all(publisher, subscribers, pub.bucket, sync_counter)) {
        ++r.errors;
        close_all_fds();
        return r;
    }
    // Every pass is bounded: 60 s, and 10 s more for the subscribers.
    const std::int64_t deadline = now_ns() + 60'000'000'000;
    std::uint64_t fast_errors = 0;
    std::thread reader([&] {
        read_events(fast, pub.events, deadline + 10'000'000'000, r.fast_bytes, fast_errors);
    });
    const std::int64_t start = now_ns();
    for (const std::string& request : pub.requests) {
        const std::int64_t sent = now_ns();
        if (!exchange(publisher, request, "OK\r\n", deadline, false)) {
            ++r.errors;
            ::shutdown(fast, SHUT_RDWR); // the reader stops now, not at its deadline
            break;
        }
        const std::int64_t took = now_ns() - sent;
        r.latency.record(static_cast<std::uint64_t>(took));
        if (took > r.worst_ns) {
            r.worst_ns = took;
            r.worst = r.puts;
        }
        ++r.puts;
    }
    r.seconds = static_cast<double>(now_ns() - start) / 1e9;
    reader.join();
    r.errors += fast_errors;
    if (lagging) {
        // What the slow one was sent before the server cut it off must be a prefix of the
        // events; a connection that is not cut off gets them all.
        std::string slow_got;
        const auto all = [&](const std::string& g) { return g.size() >= pub.events.size(); };
        const read_end end = read_until(slow, now_ns() + 10'000'000'000, slow_got, all);
        r.slow_bytes = slow_got.size();
        r.slow_cut = end == read_end::closed;
        if (end == read_end::timeout || pub.events.compare(0, slow_got.size(), slow_got) != 0) {
            issue("slow-subscriber: the slow subscriber's %zu bytes are %s", slow_got.size(),
                  end == read_end::timeout ? "neither all events nor followed by the end"
                                           : "not a prefix of the events");
            ++r.errors;
        }
    }
    close_all_fds();
    return r;
}

// ------------------------------------------------------------------------------------------
// The mode: passes alternating without and with the lagging subscriber, then their ratios

// Latency and rate of one pass, or of all passes of a kind.
struct pass_total {
    histogram latency;
    std::size_t puts = 0;
    double seconds = 0;

    void add(const pass_result& r) {
        latency.merge(r.latency);
        puts += r.puts;
        seconds += r.seconds;
    }
    double rate() const { return seconds > 0 ? static_cast<double>(puts) / seconds : 0.0; }
};

inline void print_pass_row(const std::string& pass, const std::string& round, const pass_total& p,
                           const std::string& worst, const std::string& fast,
                           const std::string& slow) {
    const histogram& h = p.latency;
    std::printf("| %s | %s | %s | %.0f | %.0f | %.0f | %s | %s | %s | %s |\n", pass.c_str(),
                round.c_str(), with_commas(static_cast<double>(p.puts)).c_str(),
                h.percentile_us(0.50), h.percentile_us(0.99), h.max_us(), worst.c_str(),
                with_commas(p.rate()).c_str(), fast.c_str(), slow.c_str());
    std::fflush(stdout);
}

inline void run_slow_subscriber(session& ss) {
    const options& o = ss.opt;
    const unsigned rounds = o.rounds > 0 ? o.rounds : 3;
    const publication pub(o.puts, o.value_bytes);
    std::printf("\n## slow subscriber: one publisher, %s PUTs of %s-byte values (%s of events), "
                "one at a\ntime, without and with a subscriber that never reads\n\n",
                with_commas(static_cast<double>(o.puts)).c_str(),
                with_commas(static_cast<double>(o.value_bytes)).c_str(),
                mib(static_cast<long>(pub.events.size() / 1024)).c_str());
    std::printf("Each pass opens a fresh publisher and a fresh subscriber that reads and checks "
                "every event;\n\"lagging\" passes add a subscriber with a 16 KiB receive buffer "
                "that reads nothing (kv_server\ndisconnects it once 32 MiB of its events are "
                "unsent). %u round(s) of (alone, lagging); one\nunmeasured pass first puts every "
                "key once. Latency: from the send() of a PUT to the recv() that\ncompleted its "
                "OK.\n\n",
                rounds);
    auto srv = start(server_kind::kv, o, 0);
    if (!srv) {
        ++ss.errors;
        return;
    }
    std::printf("| pass | round | PUTs | p50 us | p99 us | max us | max at PUT | PUT/s | fast "
                "subscriber | slow subscriber |\n|---|---|---|---|---|---|---|---|---|---|\n");
    std::fflush(stdout);
    std::uint64_t sync_counter = 0;
    bool ok = create_buckets(*srv, keyspace{{pub.bucket}, "k", 1, 1});
    if (ok) {
        const pass_result first = publish_pass(*srv, pub, false, sync_counter);
        ok = first.errors == 0;
        ss.errors += first.errors;
    } else {
        ++ss.errors;
    }
    pass_total alone;
    pass_total lagging;
    for (unsigned round = 1; ok && round <= rounds; ++round) {
        for (const bool lag : {false, true}) {
            if (!alive(*srv)) {
                ++ss.errors;
                ok = false;
                break;
            }
            const pass_result r = publish_pass(*srv, pub, lag, sync_counter);
            ss.errors += r.errors;
            pass_total one;
            one.add(r);
            const std::string slow = !lag ? "-"
                                          : mib(static_cast<long>(r.slow_bytes / 1024)) +
                                                (r.slow_cut ? ", then cut off" : ", every event");
            print_pass_row(lag ? "lagging" : "alone", std::to_string(round), one,
                           "#" + std::to_string(r.worst + 1),
                           mib(static_cast<long>(r.fast_bytes / 1024)) + " verified", slow);
            (lag ? lagging : alone).add(r);
            ok = r.errors == 0;
        }
    }
    stop(*srv);
    if (!ok) {
        return;
    }
    print_pass_row("alone, all rounds", "", alone, "", "", "");
    print_pass_row("lagging, all rounds", "", lagging, "", "", "");
    const histogram& a = alone.latency;
    const histogram& l = lagging.latency;
    std::printf("\nlagging / alone, same server, same run: p50 %.2fx, p99 %.2fx, max %.2fx, PUT/s "
                "%.2fx\n(latency above 1 and PUT/s below 1: the publisher is slower while a "
                "subscriber lags)\n",
                l.percentile_us(0.50) / a.percentile_us(0.50),
                l.percentile_us(0.99) / a.percentile_us(0.99), l.max_us() / a.max_us(),
                lagging.rate() / alone.rate());
    std::fflush(stdout);
}

} // namespace kv_load
