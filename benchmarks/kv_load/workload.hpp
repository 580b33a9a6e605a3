// SPDX-License-Identifier: MIT
// kv_load: Connections, the epoll driver that runs them and verifies every reply, and the state of
// one run of kv_load.
#pragma once

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "options.hpp"
#include "processes.hpp"
#include "protocols.hpp"
#include "report.hpp"
#include "servers.hpp"

namespace kv_load {

// ------------------------------------------------------------------------------------------
// Connections and the epoll driver

// splitmix64: a fast, well-mixed generator; each connection owns one (no shared state).
inline std::uint64_t next_random(std::uint64_t& state) noexcept {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15U);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9U;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebU;
    return z ^ (z >> 31);
}

// A uniform number below n from 32 random bits, by multiplication (Lemire), no division.
inline std::uint32_t below(std::uint64_t random, std::uint64_t n) noexcept {
    return static_cast<std::uint32_t>(((random & 0xffff'ffffU) * n) >> 32);
}

struct connection {
    int fd = -1;
    std::uint32_t number = 0; // in its run, for messages

    // What it sends: the random mix, or a sequence of linear key indices (prefill, checks).
    enum class source : std::uint8_t { mix, sequence } src = source::mix;
    std::uint64_t rng = 0;
    std::uint64_t writer = 0; // id encoded in the values it writes
    std::uint32_t writes = 0; // counter encoded in the values it writes
    std::uint32_t own_lo = 0; // keys [own_lo, own_hi) are written by this connection alone
    std::uint32_t own_hi = 0;
    op seq_op = op::put;
    std::uint64_t seq_next = 0;
    std::uint64_t seq_end = 0;
    std::uint64_t seq_step = 1;

    // Requests in flight, oldest at head: a ring of the pipeline depth.
    std::vector<pending> ring;
    std::size_t head = 0;
    std::size_t count = 0;

    // Bytes not yet accepted by send(), and the start of a reply not yet complete.
    std::vector<char> out;
    std::size_t out_begin = 0;
    std::size_t out_end = 0;
    std::string carry;

    bool want_write = false;
    bool finished = false;
};

// What one run does; shared read-only by the client threads, except `expected`, whose entries
// are each written by one connection only (the owner of the key) and read by that connection
// or, for keys nobody writes, by anyone.
struct workload {
    server_kind kind = server_kind::kv;
    const char* name = nullptr; // in messages; nullptr: the server's label
    const keyspace* keys = nullptr;
    std::vector<std::uint64_t>* expected = nullptr; // value code every key must hold now
    std::uint32_t depth = 1;                        // requests in flight per connection
    std::uint32_t read_only = 0;                    // keys [0, read_only) are never written
    std::uint64_t get_threshold = 0;                // a mix draw below this (of 2^32) is a GET
    bool timed = false;
    std::int64_t window_begin = 0; // replies received in [begin, end) are measured
    std::int64_t window_end = 0;   // no request is sent from here on
    std::int64_t deadline = 0;     // connections still waiting for replies here fail
    // Replies so far, all client threads together, published after each epoll round, for a
    // caller that samples throughput within the window; nullptr: not published.
    std::atomic<std::uint64_t>* progress = nullptr;
    // Runs on drive()'s calling thread once the window opens (a timed run only), and returns
    // by its end: what changes the conditions part way through a window, and samples progress.
    std::function<void()> during;
};

struct stats {
    std::uint64_t replies = 0; // every verified reply, measured or not
    std::uint64_t ops = 0;     // replies received inside the window
    std::uint64_t mismatches = 0;
    std::uint64_t error_replies = 0;
    std::uint64_t protocol_errors = 0; // unparsable replies, closed connections, timeouts
    std::uint64_t lost = 0;            // requests whose reply never came
    histogram latency;

    std::uint64_t errors() const noexcept {
        return mismatches + error_replies + protocol_errors + lost;
    }
    void merge(const stats& o) {
        replies += o.replies;
        ops += o.ops;
        mismatches += o.mismatches;
        error_replies += o.error_replies;
        protocol_errors += o.protocol_errors;
        lost += o.lost;
        latency.merge(o.latency);
    }
};

inline void prepare(connection& c, int fd, std::uint32_t number, std::uint32_t depth,
                    const keyspace& ks) {
    c.fd = fd;
    c.number = number;
    c.ring.assign(depth, pending{});
    c.out.assign(std::size_t{depth} * max_request_size(ks) + 16, '\0');
    c.carry.reserve(512);
}

// One client thread: its connections on one level-triggered epoll.
class driver {
  public:
    driver(const workload& w, stats& s) : w_(w), s_(s), scratch_(scratch_size) {}
    driver(const driver&) = delete;
    driver& operator=(const driver&) = delete;
    ~driver() {
        if (epoll_ >= 0) {
            ::close(epoll_);
        }
    }

    void run(const std::vector<connection*>& conns) {
        epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
        if (epoll_ < 0) {
            issue("epoll_create1: %s", std::strerror(errno));
            ++s_.protocol_errors;
            return;
        }
        now_ = now_ns();
        for (connection* c : conns) {
            c->finished = false;
            c->want_write = false;
            c->head = c->count = c->out_begin = c->out_end = 0;
            c->carry.clear();
            if (c->fd < 0) {
                c->finished = true;
                continue;
            }
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = c;
            ::epoll_ctl(epoll_, EPOLL_CTL_ADD, c->fd, &ev);
            ++active_;
        }
        for (connection* c : conns) {
            if (!c->finished) {
                send_more(*c);
                check_finished(*c);
            }
        }
        std::array<epoll_event, 256> events{};
        bool swept = false;
        while (active_ > 0) {
            const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 10);
            if (n < 0 && errno != EINTR) {
                issue("epoll_wait: %s", std::strerror(errno));
                ++s_.protocol_errors;
                break;
            }
            now_ = now_ns();
            for (int i = 0; i < n; ++i) {
                const epoll_event& ev = events[static_cast<std::size_t>(i)];
                auto& c = *static_cast<connection*>(ev.data.ptr);
                if (c.finished) {
                    continue;
                }
                if ((ev.events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) {
                    on_readable(c);
                }
                if (c.fd >= 0 && (ev.events & EPOLLOUT) != 0) {
                    flush(c);
                }
                check_finished(c);
            }
            if (w_.progress != nullptr && s_.replies != published_) {
                w_.progress->fetch_add(s_.replies - published_, std::memory_order_relaxed);
                published_ = s_.replies;
            }
            // When sending stops, connections with nothing in flight are done at once.
            if (!swept && stopping()) {
                swept = true;
                for (connection* c : conns) {
                    check_finished(*c);
                }
            }
            if (now_ > w_.deadline) {
                for (connection* c : conns) {
                    if (!c->finished) {
                        fail(*c, "no reply within the deadline (%zu in flight)", c->count);
                        check_finished(*c);
                    }
                }
            }
        }
    }

  private:
    static constexpr std::size_t scratch_size = std::size_t{256} * 1024;
    static constexpr std::size_t max_carry = std::size_t{64} * 1024;

    bool stopping() const noexcept { return w_.timed && now_ >= w_.window_end; }
    const char* who() const noexcept { return w_.name != nullptr ? w_.name : label(w_.kind); }

    static bool exhausted(const connection& c) noexcept {
        return c.src == connection::source::sequence && c.seq_next >= c.seq_end;
    }

    void check_finished(connection& c) {
        if (c.finished) {
            return;
        }
        const bool idle = c.count == 0 && c.out_begin == c.out_end;
        if (c.fd >= 0 && !(idle && (stopping() || exhausted(c)))) {
            return;
        }
        if (c.fd >= 0) {
            ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
        }
        c.finished = true;
        --active_;
    }

    // Closes a connection that can no longer be trusted; its requests in flight are lost.
    void drop(connection& c) {
        if (c.fd >= 0) {
            ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
            ::close(c.fd);
            c.fd = -1;
        }
        s_.lost += c.count;
        c.count = 0;
    }

    // A connection gone wrong: reported under its name, counted as a protocol error, dropped.
    [[gnu::format(printf, 3, 4)]] void fail(connection& c, const char* format, ...) {
        char what[1024];
        std::va_list args;
        va_start(args, format);
        std::vsnprintf(what, sizeof what, format, args);
        va_end(args);
        issue("%s: connection %u: %s", who(), c.number, what);
        ++s_.protocol_errors;
        drop(c);
    }

    void set_write_interest(connection& c, bool on) {
        epoll_event ev{};
        ev.events = on ? static_cast<std::uint32_t>(EPOLLIN | EPOLLOUT) : std::uint32_t{EPOLLIN};
        ev.data.ptr = &c;
        ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
        c.want_write = on;
    }

    // Picks the next request of a connection; false when its sequence is exhausted.
    bool next_request(connection& c, pending& p) noexcept {
        const keyspace& ks = *w_.keys;
        std::vector<std::uint64_t>& expected = *w_.expected;
        if (c.src == connection::source::sequence) {
            if (c.seq_next >= c.seq_end) {
                return false;
            }
            const std::uint64_t i = c.seq_next;
            c.seq_next += c.seq_step;
            p.bucket = static_cast<std::uint32_t>(i / ks.keys);
            p.key = static_cast<std::uint32_t>(i % ks.keys);
            p.kind = c.seq_op;
            if (p.kind == op::put) {
                expected[i] = value_code(prefill_writer, i);
            }
            p.value = encode_value(expected[i]);
            return true;
        }
        const std::uint64_t r = next_random(c.rng);
        const std::uint32_t own = c.own_hi - c.own_lo;
        p.bucket = ks.buckets.size() == 1 ? 0 : below(r, ks.buckets.size());
        p.kind = (r >> 32) < w_.get_threshold || own == 0 ? op::get : op::put;
        const std::uint64_t r2 = next_random(c.rng);
        if (p.kind == op::get) {
            const std::uint32_t x = below(r2, std::uint64_t{w_.read_only} + own);
            p.key = x < w_.read_only ? x : c.own_lo + (x - w_.read_only);
        } else {
            p.key = c.own_lo + below(r2, own);
        }
        const std::uint64_t i = std::uint64_t{p.bucket} * ks.keys + p.key;
        if (p.kind == op::put) {
            expected[i] = value_code(c.writer, ++c.writes);
        }
        p.value = encode_value(expected[i]);
        return true;
    }

    // Tops the connection up to `depth` requests in flight, all in one send().
    void send_more(connection& c) {
        if (c.fd < 0) {
            return;
        }
        now_ = now_ns();
        if (stopping()) {
            return;
        }
        if (c.out_begin > 0) { // rare: the previous send() was partial
            std::memmove(c.out.data(), c.out.data() + c.out_begin, c.out_end - c.out_begin);
            c.out_end -= c.out_begin;
            c.out_begin = 0;
        }
        char* out = c.out.data() + c.out_end;
        while (c.count < w_.depth) {
            std::size_t slot = c.head + c.count;
            if (slot >= w_.depth) {
                slot -= w_.depth;
            }
            pending& p = c.ring[slot];
            if (!next_request(c, p)) {
                break;
            }
            p.sent_ns = now_;
            out = write_request(out, w_.kind, p.kind, *w_.keys, p.bucket, p.key, p.value);
            ++c.count;
        }
        c.out_end = static_cast<std::size_t>(out - c.out.data());
        flush(c);
    }

    void flush(connection& c) {
        while (c.out_begin < c.out_end) {
            const ssize_t n =
                ::send(c.fd, c.out.data() + c.out_begin, c.out_end - c.out_begin, MSG_NOSIGNAL);
            if (n > 0) {
                c.out_begin += static_cast<std::size_t>(n);
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (!c.want_write) {
                    set_write_interest(c, true);
                }
                return;
            } else {
                fail(c, "send: %s", std::strerror(errno));
                return;
            }
        }
        c.out_begin = c.out_end = 0;
        if (c.want_write) {
            set_write_interest(c, false);
        }
    }

    std::string describe(const pending& p) const {
        std::string text(max_request_size(*w_.keys), '\0');
        const char* end =
            write_request(text.data(), w_.kind, p.kind, *w_.keys, p.bucket, p.key, p.value);
        text.resize(static_cast<std::size_t>(end - text.data()) - 2);
        return text;
    }

    void on_readable(connection& c) {
        char* buf = scratch_.data();
        std::size_t have = c.carry.size();
        std::memcpy(buf, c.carry.data(), have);
        const ssize_t n = ::recv(c.fd, buf + have, scratch_.size() - have, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            return;
        }
        if (n <= 0) {
            fail(c, "%s with %zu requests in flight",
                 n == 0 ? "closed by the server" : std::strerror(errno), c.count);
            return;
        }
        now_ = now_ns();
        have += static_cast<std::size_t>(n);
        const std::string_view in(buf, have);
        std::size_t at = 0;
        while (c.count > 0 && at < have) {
            const pending& p = c.ring[c.head];
            const reply r = w_.kind == server_kind::kv ? parse_kv(in.substr(at), p)
                                                       : parse_redis(in.substr(at), p);
            if (r.v == verdict::incomplete) {
                break;
            }
            if (r.v == verdict::protocol_error) {
                fail(c, "unexpected reply %s to %s", printable(r.got).c_str(), describe(p).c_str());
                return;
            }
            account(c, p, r);
            at += r.used;
            c.head = c.head + 1 == w_.depth ? 0 : c.head + 1;
            --c.count;
        }
        if (at < have && c.count == 0) {
            fail(c, "%zu bytes nobody asked for: %s", have - at, printable(in.substr(at)).c_str());
            return;
        }
        if (have - at > max_carry) {
            fail(c, "a reply longer than %zu bytes", max_carry);
            return;
        }
        c.carry.assign(buf + at, have - at);
        send_more(c);
    }

    void account(const connection& c, const pending& p, const reply& r) {
        ++s_.replies;
        if (r.v == verdict::mismatch) {
            ++s_.mismatches;
            issue("%s: connection %u: MISMATCH: %s returned %s, expected \"%.8s\"", who(), c.number,
                  describe(p).c_str(), printable(r.got).c_str(), p.value.data());
        } else if (r.v == verdict::error_reply) {
            ++s_.error_replies;
            issue("%s: connection %u: error reply %s to %s", who(), c.number,
                  printable(r.got).c_str(), describe(p).c_str());
        }
        if (!w_.timed || (now_ >= w_.window_begin && now_ < w_.window_end)) {
            ++s_.ops;
            s_.latency.record(static_cast<std::uint64_t>(now_ - p.sent_ns));
        }
    }

    const workload& w_;
    stats& s_;
    std::vector<char> scratch_;
    int epoll_ = -1;
    std::size_t active_ = 0;
    std::int64_t now_ = 0;
    std::uint64_t published_ = 0; // s_.replies as last added to w_.progress
};

// ------------------------------------------------------------------------------------------
// Running connections

struct outcome {
    stats s;
    double seconds = 0;    // wall time of the run (the window, when timed)
    double server_cpu = 0; // CPU seconds per second during the window
    double client_cpu = 0;
};

// CPU seconds used so far by all of these processes together.
inline double servers_cpu_seconds(const std::vector<pid_t>& pids) {
    double sum = 0;
    for (const pid_t pid : pids) {
        sum += proc_cpu_seconds(pid);
    }
    return sum;
}

// Runs the connections on `threads` client threads; for a timed run, the calling thread
// samples the servers' (summed) and the client's CPU time at the window's edges.
inline outcome drive(const workload& w, std::vector<connection>& conns, unsigned threads,
                     const std::vector<pid_t>& server_pids) {
    threads = std::max(1U, std::min<unsigned>(threads, static_cast<unsigned>(conns.size())));
    std::vector<std::vector<connection*>> parts(threads);
    for (std::size_t i = 0; i < conns.size(); ++i) {
        parts[i % threads].push_back(&conns[i]);
    }
    std::vector<stats> per_thread(threads);
    outcome out;
    const std::int64_t start = now_ns();
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&w, &parts, &per_thread, t] {
            driver d(w, per_thread[t]);
            d.run(parts[t]);
        });
    }
    if (w.timed) {
        sleep_until_ns(w.window_begin);
        const double server0 = servers_cpu_seconds(server_pids);
        const double client0 = self_cpu_seconds();
        if (w.during) {
            w.during();
        }
        sleep_until_ns(w.window_end);
        out.seconds = static_cast<double>(w.window_end - w.window_begin) / 1e9;
        out.server_cpu = (servers_cpu_seconds(server_pids) - server0) / out.seconds;
        out.client_cpu = (self_cpu_seconds() - client0) / out.seconds;
    }
    for (auto& t : pool) {
        t.join();
    }
    if (!w.timed) {
        out.seconds = static_cast<double>(now_ns() - start) / 1e9;
    }
    for (const auto& s : per_thread) {
        out.s.merge(s);
    }
    return out;
}

inline void close_all(std::vector<connection>& conns) {
    for (auto& c : conns) {
        if (c.fd >= 0) {
            ::close(c.fd);
            c.fd = -1;
        }
    }
}

// Sends `o` for every step-th linear key index, split into contiguous ranges over `nconns`
// pipelined connections: the prefill (PUT) and the read-back checks (GET).
inline std::optional<outcome> run_sequence(const server& s, const keyspace& ks,
                                           std::vector<std::uint64_t>& expected, op o,
                                           std::uint64_t step, std::size_t nconns,
                                           unsigned threads) {
    constexpr std::uint32_t depth = 256;
    std::vector<int> fds;
    if (!connect_many(s.port, nconns, fds)) {
        return std::nullopt;
    }
    const std::uint64_t total = ks.size();
    std::vector<connection> conns(nconns);
    for (std::size_t i = 0; i < nconns; ++i) {
        connection& c = conns[i];
        prepare(c, fds[i], static_cast<std::uint32_t>(i), depth, ks);
        c.src = connection::source::sequence;
        c.seq_op = o;
        c.seq_step = step;
        const std::uint64_t lo = total * i / nconns;
        const std::uint64_t hi = total * (i + 1) / nconns;
        c.seq_next = (lo + step - 1) / step * step; // the multiples of step in [lo, hi)
        c.seq_end = hi;
    }
    workload w;
    w.kind = s.kind;
    w.keys = &ks;
    w.expected = &expected;
    w.depth = depth;
    w.deadline = now_ns() + 60'000'000'000 + static_cast<std::int64_t>(total / step) * 20'000;
    outcome out = drive(w, conns, threads, {s.pid});
    close_all(conns);
    return out;
}

// ------------------------------------------------------------------------------------------
// One run of kv_load

struct session {
    options opt;
    bool have_kv = false;
    bool have_redis = false;
    std::uint64_t next_writer = 1; // writer ids, unique over the program (below 0xffff)
    std::uint64_t errors = 0;

    std::vector<server_kind> servers() const {
        std::vector<server_kind> out;
        if (have_kv) {
            out.push_back(server_kind::kv);
        }
        if (have_redis) {
            out.push_back(server_kind::redis);
        }
        return out;
    }
    std::uint64_t take_writer() {
        const std::uint64_t id = next_writer;
        next_writer = next_writer + 1 >= prefill_writer ? 1 : next_writer + 1;
        return id;
    }
};

} // namespace kv_load
