// SPDX-License-Identifier: MIT
// kv_load: our own load generator for kv_server, measured side by side with redis-server.
//
// One program, one run: it starts the servers itself (child processes it owns, on loopback,
// stopped by PID at the end), fills them with the same data, drives them with the same client
// and prints the numbers and their ratios, so a comparison never depends on two tools or two
// runs agreeing. Redis carries the same workload as inline HSET/HGET, one hash per bucket.
//
//   kv_load [--sweep] [--forward] [--idle N] [--fill N] [--only kv|redis] [--kv-server PATH] ...
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
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

// ------------------------------------------------------------------------------------------
// Clock and latency histogram

std::int64_t now_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void sleep_until_ns(std::int64_t deadline) noexcept {
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(deadline / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(deadline % 1'000'000'000);
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
}

void sleep_ms(int ms) noexcept {
    sleep_until_ns(now_ns() + std::int64_t{ms} * 1'000'000);
}

// The HdrHistogram idea, log-linear: values below 256 ns have a bin each; above, every power
// of two is split into 128 equal bins, so a value is reported within 1/256 of itself (the bin's
// midpoint) and always within 1%. About 5400 bins of 64-bit counts; merged by addition.
class histogram {
  public:
    void record(std::uint64_t ns) noexcept {
        ++counts_[index(ns)];
        ++total_;
        max_ = std::max(max_, ns);
    }
    void merge(const histogram& other) noexcept {
        for (std::size_t i = 0; i < bins; ++i) {
            counts_[i] += other.counts_[i];
        }
        total_ += other.total_;
        max_ = std::max(max_, other.max_);
    }
    std::uint64_t total() const noexcept { return total_; }
    double max_us() const noexcept { return static_cast<double>(max_) / 1000.0; }
    // The value below which a fraction q of the recorded values lie, in microseconds.
    double percentile_us(double q) const noexcept {
        if (total_ == 0) {
            return 0.0;
        }
        auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total_)));
        rank = std::clamp<std::uint64_t>(rank, 1, total_);
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < bins; ++i) {
            seen += counts_[i];
            if (seen >= rank) {
                return std::min(value_of(i), static_cast<double>(max_)) / 1000.0;
            }
        }
        return max_us();
    }

  private:
    static constexpr unsigned sub_bits = 7;   // 128 bins per power of two
    static constexpr unsigned max_shift = 40; // values are clamped below 2^48 ns (78 hours)
    static constexpr std::size_t bins = std::size_t{max_shift + 2} << sub_bits;

    static std::size_t index(std::uint64_t v) noexcept {
        v = std::min<std::uint64_t>(v, (std::uint64_t{1} << (max_shift + sub_bits + 1)) - 1);
        const unsigned top = 63U - static_cast<unsigned>(std::countl_zero(v | 1U));
        const unsigned shift = top > sub_bits ? top - sub_bits : 0;
        return (std::size_t{shift} << sub_bits) + static_cast<std::size_t>(v >> shift);
    }
    static double value_of(std::size_t i) noexcept {
        if (i < (std::size_t{2} << sub_bits)) {
            return static_cast<double>(i);
        }
        const std::size_t shift = (i >> sub_bits) - 1;
        const std::size_t mantissa = i - (shift << sub_bits);
        return static_cast<double>(mantissa << shift) +
               static_cast<double>(std::size_t{1} << shift) / 2.0;
    }

    std::vector<std::uint64_t> counts_ = std::vector<std::uint64_t>(bins);
    std::uint64_t total_ = 0;
    std::uint64_t max_ = 0;
};

// ------------------------------------------------------------------------------------------
// Problems found while running are printed at once (the first few) and counted.

std::atomic<unsigned> issues_printed{0};
constexpr unsigned max_issues_printed = 20;

[[gnu::format(printf, 1, 2)]] void issue(const char* format, ...) {
    const unsigned n = issues_printed.fetch_add(1, std::memory_order_relaxed);
    if (n > max_issues_printed) {
        return;
    }
    if (n == max_issues_printed) {
        std::fputs("kv_load: ERROR: (further errors are counted, not printed)\n", stderr);
        return;
    }
    std::va_list args;
    va_start(args, format);
    std::fputs("kv_load: ERROR: ", stderr);
    std::vfprintf(stderr, format, args);
    std::fputc('\n', stderr);
    va_end(args);
}

void note(const char* text) {
    std::fprintf(stderr, "kv_load: %s\n", text);
    std::fflush(stderr);
}

// Bytes from a reply, quoted for a message (non-printable bytes as \xNN, at most 60 bytes).
std::string printable(std::string_view bytes) {
    std::string out = "\"";
    for (const char ch : bytes.substr(0, 60)) {
        const auto u = static_cast<unsigned char>(ch);
        if (u >= 0x20 && u < 0x7f && ch != '"' && ch != '\\') {
            out += ch;
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", u);
            out += hex;
        }
    }
    out += bytes.size() > 60 ? "\"..." : "\"";
    return out;
}

// ------------------------------------------------------------------------------------------
// The data: keys, values, and the value every key must hold now

// A value is 8 characters from a 64-letter alphabet, so it carries 48 bits: a 16-bit writer id
// and a 32-bit counter. Prefilled values use writer 0xffff and the key's index as counter.
using value_bytes = std::array<char, 8>;
constexpr std::string_view value_alphabet =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/";
constexpr std::uint64_t prefill_writer = 0xffff;

std::uint64_t value_code(std::uint64_t writer, std::uint64_t counter) noexcept {
    return (writer << 32) | (counter & 0xffff'ffffU);
}

value_bytes encode_value(std::uint64_t code) noexcept {
    value_bytes out{};
    for (std::size_t i = 0; i < out.size(); ++i) {
        out[out.size() - 1 - i] = value_alphabet[(code >> (6 * i)) & 63U];
    }
    return out;
}

// Buckets and fixed-width keys ("key000123"); key k of bucket b has the linear index b*keys+k.
struct keyspace {
    std::vector<std::string> buckets;
    std::string prefix;
    std::size_t digits = 6;
    std::uint32_t keys = 0;

    std::uint64_t size() const noexcept { return buckets.size() * std::uint64_t{keys}; }
    std::size_t key_size() const noexcept { return prefix.size() + digits; }
    char* write_key(char* out, std::uint32_t k) const noexcept {
        std::memcpy(out, prefix.data(), prefix.size());
        out += prefix.size();
        for (std::size_t i = digits; i-- > 0;) {
            out[i] = static_cast<char>('0' + k % 10);
            k /= 10;
        }
        return out + digits;
    }
};

std::size_t decimal_digits(std::uint64_t n) noexcept {
    std::size_t d = 1;
    for (; n >= 10; n /= 10) {
        ++d;
    }
    return d;
}

// ------------------------------------------------------------------------------------------
// Requests and replies of the two servers

enum class server_kind { kv, redis };
enum class op : std::uint8_t { get, put };

const char* label(server_kind kind) noexcept {
    return kind == server_kind::kv ? "kv_server" : "redis";
}

// Both servers get CRLF-terminated lines, as the guide's own clients send them:
//   kv_server: "GET b k\r\n"  "PUT b k v\r\n"      redis: "HGET b k\r\n"  "HSET b k v\r\n"
std::size_t max_request_size(const keyspace& ks) {
    std::size_t bucket = 0;
    for (const auto& b : ks.buckets) {
        bucket = std::max(bucket, b.size());
    }
    return 5 + bucket + 1 + ks.key_size() + 1 + std::tuple_size_v<value_bytes> + 2;
}

char* write_request(char* out, server_kind kind, op o, const keyspace& ks, std::uint32_t bucket,
                    std::uint32_t key, const value_bytes& value) noexcept {
    const std::string_view verb = kind == server_kind::kv ? (o == op::get ? "GET " : "PUT ")
                                                          : (o == op::get ? "HGET " : "HSET ");
    std::memcpy(out, verb.data(), verb.size());
    out += verb.size();
    const std::string& b = ks.buckets[bucket];
    std::memcpy(out, b.data(), b.size());
    out += b.size();
    *out++ = ' ';
    out = ks.write_key(out, key);
    if (o == op::put) {
        *out++ = ' ';
        std::memcpy(out, value.data(), value.size());
        out += value.size();
    }
    *out++ = '\r';
    *out++ = '\n';
    return out;
}

// One request in flight: what was asked, what must come back, when it was sent.
struct pending {
    std::int64_t sent_ns = 0;
    std::uint32_t bucket = 0;
    std::uint32_t key = 0;
    op kind = op::get;
    value_bytes value{}; // the value a GET must return, or the value a PUT wrote
};

enum class verdict { incomplete, ok, mismatch, error_reply, protocol_error };

struct reply {
    verdict v = verdict::incomplete;
    std::size_t used = 0; // bytes of the stream this reply took
    std::string_view got;
};

// The line starting at `from`: returns the offset after its terminator, or 0 while it is not
// complete. Both servers end lines with CRLF; a bare LF is flagged.
std::size_t find_line(std::string_view in, std::size_t from, std::string_view& line,
                      bool& bare_lf) noexcept {
    const std::size_t lf = in.find('\n', from);
    if (lf == std::string_view::npos) {
        return 0;
    }
    if (lf == from || in[lf - 1] != '\r') {
        bare_lf = true;
        line = in.substr(from, lf - from);
    } else {
        line = in.substr(from, lf - 1 - from);
    }
    return lf + 1;
}

// kv_server: PUT -> "OK"; GET -> the value line, then "OK". An error is one line ("NOT FOUND",
// "UNKNOWN COMMAND", "ERROR ..."), so the stream stays in step after one; anything else means
// the client no longer knows where a reply starts: a protocol error, and the connection is
// dropped.
reply parse_kv(std::string_view in, const pending& p) noexcept {
    std::string_view first;
    bool bare = false;
    const std::size_t after_first = find_line(in, 0, first, bare);
    if (after_first == 0) {
        return {};
    }
    if (bare) {
        return {verdict::protocol_error, after_first, first};
    }
    const std::string_view expected(p.value.data(), p.value.size());
    const bool error_line =
        first == "NOT FOUND" || first == "UNKNOWN COMMAND" || first.starts_with("ERROR");
    if (p.kind == op::put) {
        if (first == "OK") {
            return {verdict::ok, after_first, first};
        }
        return {error_line ? verdict::error_reply : verdict::protocol_error, after_first, first};
    }
    if (first != expected && error_line) {
        return {verdict::error_reply, after_first, first};
    }
    std::string_view second;
    const std::size_t after_second = find_line(in, after_first, second, bare);
    if (after_second == 0) {
        return {};
    }
    if (bare || second != "OK") {
        return {verdict::protocol_error, after_second, second};
    }
    return {first == expected ? verdict::ok : verdict::mismatch, after_second, first};
}

// Redis: HSET -> ":0" or ":1"; HGET -> "$8", the value, or "$-1" (absent: a mismatch here, as
// every key exists); "-..." is an error reply.
reply parse_redis(std::string_view in, const pending& p) noexcept {
    std::string_view first;
    bool bare = false;
    const std::size_t after_first = find_line(in, 0, first, bare);
    if (after_first == 0) {
        return {};
    }
    if (bare || first.empty()) {
        return {verdict::protocol_error, after_first, first};
    }
    if (first[0] == '-') {
        return {verdict::error_reply, after_first, first};
    }
    if (p.kind == op::put) {
        const bool ok = first == ":0" || first == ":1";
        return {ok ? verdict::ok : verdict::protocol_error, after_first, first};
    }
    if (first == "$-1") {
        return {verdict::mismatch, after_first, "(nil)"};
    }
    std::size_t length = 0;
    const char* end = first.data() + first.size();
    const auto [ptr, ec] = std::from_chars(first.data() + 1, end, length);
    if (first[0] != '$' || ec != std::errc{} || ptr != end || length > 65536) {
        return {verdict::protocol_error, after_first, first};
    }
    if (in.size() < after_first + length + 2) {
        return {};
    }
    const std::size_t after = after_first + length + 2;
    if (in[after - 2] != '\r' || in[after - 1] != '\n') {
        return {verdict::protocol_error, after, in.substr(after_first, length + 2)};
    }
    const std::string_view value = in.substr(after_first, length);
    const std::string_view expected(p.value.data(), p.value.size());
    return {value == expected ? verdict::ok : verdict::mismatch, after, value};
}

// ------------------------------------------------------------------------------------------
// Connections and the epoll driver

// splitmix64: a fast, well-mixed generator; each connection owns one (no shared state).
std::uint64_t next_random(std::uint64_t& state) noexcept {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15U);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9U;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebU;
    return z ^ (z >> 31);
}

// A uniform number below n from 32 random bits, by multiplication (Lemire), no division.
std::uint32_t below(std::uint64_t random, std::uint64_t n) noexcept {
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

void prepare(connection& c, int fd, std::uint32_t number, std::uint32_t depth, const keyspace& ks) {
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
                        issue("%s: connection %u: no reply within the deadline (%zu in flight)",
                              who(), c->number, c->count);
                        ++s_.protocol_errors;
                        drop(*c);
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
                issue("%s: connection %u: send: %s", who(), c.number, std::strerror(errno));
                ++s_.protocol_errors;
                drop(c);
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
            issue("%s: connection %u: %s with %zu requests in flight", who(), c.number,
                  n == 0 ? "closed by the server" : std::strerror(errno), c.count);
            ++s_.protocol_errors;
            drop(c);
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
                issue("%s: connection %u: unexpected reply %s to %s", who(), c.number,
                      printable(r.got).c_str(), describe(p).c_str());
                ++s_.protocol_errors;
                drop(c);
                return;
            }
            account(c, p, r);
            at += r.used;
            c.head = c.head + 1 == w_.depth ? 0 : c.head + 1;
            --c.count;
        }
        if (at < have && c.count == 0) {
            issue("%s: connection %u: %zu bytes nobody asked for: %s", who(), c.number, have - at,
                  printable(in.substr(at)).c_str());
            ++s_.protocol_errors;
            drop(c);
            return;
        }
        if (have - at > max_carry) {
            issue("%s: connection %u: a reply longer than %zu bytes", who(), c.number, max_carry);
            ++s_.protocol_errors;
            drop(c);
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
};

// ------------------------------------------------------------------------------------------
// Processes we own: spawn, watch, stop

// The children, for the signal handler (killed if we are interrupted; the children also get
// SIGKILL from the kernel if we die, through PR_SET_PDEATHSIG).
std::array<std::atomic<pid_t>, 8> children{};

void on_fatal_signal(int sig) {
    for (auto& child : children) {
        const pid_t pid = child.load();
        if (pid > 0) {
            ::kill(pid, SIGKILL);
        }
    }
    ::_exit(128 + sig);
}

void track_child(pid_t pid, bool add) {
    for (auto& child : children) {
        pid_t expected = add ? 0 : pid;
        if (child.compare_exchange_strong(expected, add ? pid : 0)) {
            return;
        }
    }
}

// fork + execv; between them only async-signal-safe calls.
pid_t spawn(const std::vector<std::string>& args, int stdout_fd, int stderr_fd) {
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (const auto& a : args) {
        argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, static_cast<unsigned long>(SIGKILL));
        if (::getppid() != parent) {
            ::_exit(127);
        }
        if (stdout_fd >= 0) {
            ::dup2(stdout_fd, STDOUT_FILENO);
        }
        if (stderr_fd >= 0) {
            ::dup2(stderr_fd, STDERR_FILENO);
        }
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    if (pid > 0) {
        track_child(pid, true);
    }
    return pid;
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) {
        return "exit status " + std::to_string(WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        return "killed by signal " + std::to_string(WTERMSIG(status));
    }
    return "status " + std::to_string(status);
}

struct server {
    server_kind kind = server_kind::kv;
    pid_t pid = -1;
    int port = 0;
    int stdout_fd = -1; // kv_server's stdout, kept open so it never gets SIGPIPE
    std::string command;
};

// True while the child runs; reports it once if it has exited.
bool alive(server& s) {
    if (s.pid <= 0) {
        return false;
    }
    int status = 0;
    if (::waitpid(s.pid, &status, WNOHANG) == s.pid) {
        issue("%s (pid %d) exited early: %s", label(s.kind), static_cast<int>(s.pid),
              describe_status(status).c_str());
        track_child(s.pid, false);
        s.pid = -1;
        return false;
    }
    return true;
}

// SIGTERM, then up to 5 s for it to exit; SIGKILL after that. Only our own child, by PID.
void stop(server& s) {
    if (s.pid > 0 && alive(s)) {
        ::kill(s.pid, SIGTERM);
        const std::int64_t deadline = now_ns() + 5'000'000'000;
        int status = 0;
        pid_t done = 0;
        while ((done = ::waitpid(s.pid, &status, WNOHANG)) == 0 && now_ns() < deadline) {
            sleep_ms(10);
        }
        if (done != s.pid) {
            issue("%s (pid %d) did not exit within 5 s of SIGTERM; killing it", label(s.kind),
                  static_cast<int>(s.pid));
            ::kill(s.pid, SIGKILL);
            ::waitpid(s.pid, &status, 0);
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            std::fprintf(stderr, "kv_load: warning: %s ended with %s after SIGTERM\n",
                         label(s.kind), describe_status(status).c_str());
        }
        track_child(s.pid, false);
        s.pid = -1;
    }
    if (s.stdout_fd >= 0) {
        ::close(s.stdout_fd);
        s.stdout_fd = -1;
    }
}

long proc_rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("VmRSS:")) {
            return std::strtol(line.c_str() + 6, nullptr, 10);
        }
    }
    return -1;
}

// User + system CPU seconds of a process (fields 14 and 15 of /proc/PID/stat).
double proc_cpu_seconds(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::size_t paren = text.rfind(')');
    if (paren == std::string::npos) {
        return 0.0;
    }
    std::istringstream fields(text.substr(paren + 1));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
        if (i >= 14) {
            ticks += std::strtod(field.c_str(), nullptr);
        }
    }
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The RSS once it stops moving: sampled every 0.5 s; after at least `min_seconds`, the first
// time the last 2 s of samples lie within max(256 KiB, 1% of the value); at most 30 s.
// Servers give memory back after a burst lazily: Redis shrinks the query buffer of a client
// idle for 2 s in its once-a-second client cron, then jemalloc returns the pages gradually
// over its 10 s decay time. A sample taken at once would charge a server for buffers it gives
// back, so "after" waits 4 s before it looks for a plateau (the same rule for both servers).
long settled_rss_kib(pid_t pid, double min_seconds, double& waited) {
    const std::int64_t start = now_ns();
    std::vector<long> samples;
    for (;;) {
        sleep_ms(500);
        samples.push_back(proc_rss_kib(pid));
        waited = static_cast<double>(now_ns() - start) / 1e9;
        if (samples.size() >= 5 && waited >= min_seconds) {
            const auto [lo, hi] = std::minmax_element(samples.end() - 5, samples.end());
            if (*hi - *lo <= std::max(256L, *hi / 100) || waited >= 30.0) {
                return samples.back();
            }
        }
    }
}

double self_cpu_seconds() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// ------------------------------------------------------------------------------------------
// Sockets

sockaddr_in loopback(int port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(0x7f000001U);
    return addr;
}

void set_nodelay(int fd) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// A blocking connection (control requests), or -1.
int connect_blocking(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    const sockaddr_in addr = loopback(port);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return -1;
    }
    set_nodelay(fd);
    return fd;
}

// Opens n non-blocking TCP_NODELAY connections, 128 connects at a time (so the listen
// backlog never overflows), each batch given 10 s. Appends to fds; false on a failure.
bool connect_many(int port, std::size_t n, std::vector<int>& fds) {
    constexpr std::size_t batch = 128;
    const sockaddr_in addr = loopback(port);
    for (std::size_t start = 0; start < n; start += batch) {
        std::vector<pollfd> waiting;
        for (std::size_t i = start; i < std::min(n, start + batch); ++i) {
            const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                issue("socket (connection %zu): %s", i, std::strerror(errno));
                return false;
            }
            set_nodelay(fd);
            if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
                fds.push_back(fd);
            } else if (errno == EINPROGRESS) {
                waiting.push_back(pollfd{fd, POLLOUT, 0});
            } else {
                issue("connect (connection %zu): %s", i, std::strerror(errno));
                ::close(fd);
                return false;
            }
        }
        const std::int64_t deadline = now_ns() + 10'000'000'000;
        std::size_t left = waiting.size();
        while (left > 0) {
            const auto ms = static_cast<int>((deadline - now_ns()) / 1'000'000);
            if (ms <= 0 || ::poll(waiting.data(), waiting.size(), ms) < 0) {
                if (ms > 0 && errno == EINTR) {
                    continue;
                }
                issue("%zu connects did not complete within 10 s", left);
                for (const auto& w : waiting) {
                    if (w.fd >= 0) {
                        ::close(w.fd);
                    }
                }
                return false;
            }
            for (auto& w : waiting) {
                if (w.fd < 0 || w.revents == 0) {
                    continue;
                }
                int error = 0;
                socklen_t len = sizeof error;
                ::getsockopt(w.fd, SOL_SOCKET, SO_ERROR, &error, &len);
                if (error != 0) {
                    issue("connect: %s", std::strerror(error));
                    ::close(w.fd);
                    w.fd = -1;
                    for (const auto& other : waiting) {
                        if (other.fd >= 0) {
                            ::close(other.fd);
                        }
                    }
                    return false;
                }
                fds.push_back(w.fd);
                w.fd = -1;
                --left;
            }
        }
    }
    return true;
}

// Sends one request on a new blocking connection and checks the exact reply (5 s bound).
bool roundtrip(int port, std::string_view request, std::string_view expected, bool quiet) {
    const int fd = connect_blocking(port);
    if (fd < 0) {
        if (!quiet) {
            issue("connect to 127.0.0.1:%d: %s", port, std::strerror(errno));
        }
        return false;
    }
    std::string got;
    bool ok = ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
              static_cast<ssize_t>(request.size());
    const std::int64_t deadline = now_ns() + 5'000'000'000;
    while (ok && got.size() < expected.size()) {
        pollfd p{fd, POLLIN, 0};
        const auto ms = static_cast<int>((deadline - now_ns()) / 1'000'000);
        if (ms <= 0 || ::poll(&p, 1, ms) <= 0) {
            ok = false;
            break;
        }
        char buf[4096];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
            ok = false;
            break;
        }
        got.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    if (!ok || got != expected) {
        if (!quiet) {
            issue("%s got %s, expected %s", printable(request).c_str(), printable(got).c_str(),
                  printable(expected).c_str());
        }
        return false;
    }
    return true;
}

// ------------------------------------------------------------------------------------------
// Options

struct options {
    std::string kv_path;
    std::string redis_path = "/usr/bin/redis-server";
    bool want_kv = true;
    bool want_redis = true;
    bool sweep = false;
    bool forward = false;
    std::size_t idle = 0;
    std::size_t fill = 0;
    double seconds = 5.0;
    double warmup = 1.0;
    std::size_t connections = 50;
    std::vector<std::uint32_t> pipelines{1, 16};
    double get_ratio = 0.9;
    std::uint32_t keys = 100000;
    std::uint32_t buckets = 1;
    unsigned kv_threads = 0; // 0: kv_server's default
    unsigned client_threads = 1;
};

constexpr const char* usage_text = R"(usage: kv_load [modes] [options]
modes (default --sweep; several may be given, each starts fresh servers):
  --sweep               C connections, P in flight each, for each P of --pipeline
  --forward             the --sweep workload on two kv_server nodes, n1 owning the buckets:
                        through n1 directly and through n2 (forwarded), alternating
  --idle N              N idle connections per server: RSS before/after, per connection
  --fill N              N entries (10-byte keys, 8-byte values): RSS bytes per entry
options:
  --only kv|redis       run one server only
  --kv-server PATH      kv_server binary (default: ../examples/kv_server next to kv_load)
  --redis-server PATH   redis-server binary (default /usr/bin/redis-server; skipped if absent)
  --threads N           passed to every kv_server as --threads N
  --client-threads N    client threads, each with its own epoll (default 1)
  --connections C       connections for --sweep and --forward (default 50)
  --pipeline P[,P...]   requests in flight per connection (default 1,16)
  --get-ratio G:P|F     GET:PUT mix, e.g. 90:10 or 0.9 (default 90:10)
  --keys K              keys per bucket, prefilled (default 100000)
  --buckets B           buckets/hashes (default 1)
  --seconds S           measured seconds per run (default 5)
  --warmup S            unmeasured seconds before each run (default 1)
)";

template <class T> bool parse_number(std::string_view text, T& out) {
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc{} && ptr == text.data() + text.size();
}

bool parse_seconds(std::string_view text, double& out) {
    const std::string s(text);
    char* end = nullptr;
    out = std::strtod(s.c_str(), &end);
    return end == s.c_str() + s.size() && out >= 0 && std::isfinite(out);
}

bool parse_ratio(std::string_view text, double& out) {
    const std::size_t colon = text.find(':');
    if (colon == std::string_view::npos) {
        return parse_seconds(text, out) && out <= 1.0;
    }
    double gets = 0;
    double puts = 0;
    if (!parse_seconds(text.substr(0, colon), gets) ||
        !parse_seconds(text.substr(colon + 1), puts) || gets + puts <= 0) {
        return false;
    }
    out = gets / (gets + puts);
    return true;
}

// Default kv_server: build/<preset>/examples/kv_server, beside build/<preset>/benchmarks/.
std::string default_kv_path() {
    std::array<char, 4096> self{};
    const ssize_t n = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
    if (n > 0) {
        std::string path(self.data(), static_cast<std::size_t>(n));
        path.resize(path.rfind('/'));
        path += "/../examples/kv_server";
        if (::access(path.c_str(), X_OK) == 0) {
            return path;
        }
    }
    return "build/release/examples/kv_server";
}

std::optional<options> parse_options(int argc, char** argv) {
    options o;
    bool any_mode = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        const bool has_value = i + 1 < argc;
        const std::string_view value = has_value ? argv[i + 1] : "";
        bool ok = true;
        bool used_value = true;
        if (arg == "--help" || arg == "-h") {
            std::fputs(usage_text, stdout);
            std::exit(0);
        } else if (arg == "--sweep") {
            o.sweep = any_mode = true;
            used_value = false;
        } else if (arg == "--forward") {
            o.forward = any_mode = true;
            used_value = false;
        } else if (arg == "--idle") {
            ok = parse_number(value, o.idle) && o.idle > 0;
            any_mode = true;
        } else if (arg == "--fill") {
            ok = parse_number(value, o.fill) && o.fill > 0 && o.fill < 1'000'000'000;
            any_mode = true;
        } else if (arg == "--only") {
            ok = value == "kv" || value == "redis";
            o.want_kv = value == "kv";
            o.want_redis = value == "redis";
        } else if (arg == "--kv-server") {
            o.kv_path = value;
        } else if (arg == "--redis-server") {
            o.redis_path = value;
        } else if (arg == "--threads") {
            ok = parse_number(value, o.kv_threads) && o.kv_threads > 0;
        } else if (arg == "--client-threads") {
            ok = parse_number(value, o.client_threads) && o.client_threads > 0;
        } else if (arg == "--connections") {
            ok = parse_number(value, o.connections) && o.connections > 0 && o.connections < 0xfff0;
        } else if (arg == "--pipeline") {
            o.pipelines.clear();
            std::string_view rest = value;
            while (ok && !rest.empty()) {
                const std::size_t comma = std::min(rest.find(','), rest.size());
                std::uint32_t p = 0;
                ok = parse_number(rest.substr(0, comma), p) && p > 0 && p <= 4096;
                o.pipelines.push_back(p);
                rest = rest.substr(std::min(comma + 1, rest.size()));
            }
            ok = ok && !o.pipelines.empty();
        } else if (arg == "--get-ratio") {
            ok = parse_ratio(value, o.get_ratio);
        } else if (arg == "--keys") {
            ok = parse_number(value, o.keys) && o.keys >= 2;
        } else if (arg == "--buckets") {
            ok = parse_number(value, o.buckets) && o.buckets > 0 && o.buckets <= 100000;
        } else if (arg == "--seconds") {
            ok = parse_seconds(value, o.seconds) && o.seconds > 0;
        } else if (arg == "--warmup") {
            ok = parse_seconds(value, o.warmup);
        } else {
            std::fprintf(stderr, "kv_load: unknown argument '%s'\n%s", argv[i], usage_text);
            return std::nullopt;
        }
        if (used_value && !has_value) {
            ok = false;
        }
        if (!ok) {
            std::fprintf(stderr, "kv_load: bad value for %s\n%s", argv[i], usage_text);
            return std::nullopt;
        }
        if (used_value) {
            ++i;
        }
    }
    if (!any_mode) {
        o.sweep = true;
    }
    if (o.kv_path.empty()) {
        o.kv_path = default_kv_path();
    }
    if (std::uint64_t{o.keys} * o.buckets >= 0xffff'ffffU) {
        std::fputs("kv_load: --keys times --buckets must stay below 2^32\n", stderr);
        return std::nullopt;
    }
    return o;
}

// ------------------------------------------------------------------------------------------
// Starting the servers

// A node of a cluster (--forward): its name, its port (chosen beforehand, as every node's
// routes name every node's port) and the routes. The default is a lone node on port 0.
struct node_spec {
    std::string name;
    int port = 0;
    std::vector<std::string> routes;
};

// kv_server; it announces its port with one line on stdout:
//   otpkv node NAME listening on 127.0.0.1:PORT
std::optional<server> start_kv(const options& o, std::size_t max_connections,
                               const node_spec& spec) {
    std::vector<std::string> args{o.kv_path, "--port", std::to_string(spec.port), "--bind",
                                  "127.0.0.1"};
    if (!spec.name.empty()) {
        args.insert(args.end(), {"--node", spec.name});
    }
    for (const auto& r : spec.routes) {
        args.insert(args.end(), {"--route", r});
    }
    if (o.kv_threads > 0) {
        args.insert(args.end(), {"--threads", std::to_string(o.kv_threads)});
    }
    if (max_connections > 0) {
        args.insert(args.end(), {"--max-connections", std::to_string(max_connections)});
    }
    server s;
    s.kind = server_kind::kv;
    for (const auto& a : args) {
        s.command += (s.command.empty() ? "" : " ") + a;
    }
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
        issue("pipe2: %s", std::strerror(errno));
        return std::nullopt;
    }
    s.pid = spawn(args, pipe_fds[1], -1);
    ::close(pipe_fds[1]);
    s.stdout_fd = pipe_fds[0];
    if (s.pid < 0) {
        issue("fork: %s", std::strerror(errno));
        stop(s);
        return std::nullopt;
    }
    std::string line;
    const std::int64_t deadline = now_ns() + 15'000'000'000;
    while (line.find('\n') == std::string::npos) {
        pollfd p{s.stdout_fd, POLLIN, 0};
        const auto ms = static_cast<int>((deadline - now_ns()) / 1'000'000);
        if (ms <= 0) {
            issue("kv_server printed no ready line within 15 s");
            stop(s);
            return std::nullopt;
        }
        if (::poll(&p, 1, ms) <= 0) {
            continue;
        }
        char buf[512];
        const ssize_t n = ::read(s.stdout_fd, buf, sizeof buf);
        if (n <= 0) {
            issue("kv_server closed its stdout before its ready line (got %s)",
                  printable(line).c_str());
            alive(s);
            stop(s);
            return std::nullopt;
        }
        line.append(buf, static_cast<std::size_t>(n));
    }
    line.resize(line.find('\n'));
    const std::size_t colon = line.rfind(':');
    if (!line.starts_with("otpkv node ") || line.find(" listening on ") == std::string::npos ||
        colon == std::string::npos ||
        !parse_number(std::string_view(line).substr(colon + 1), s.port) || s.port <= 0 ||
        (spec.port != 0 && s.port != spec.port)) {
        issue("kv_server's ready line is not understood: %s", printable(line).c_str());
        stop(s);
        return std::nullopt;
    }
    return s;
}

// n distinct ports nobody is listening on right now (the kernel's choices for port 0, all
// bound at once so they differ); 0 for one the kernel would not give.
std::vector<int> free_ports(std::size_t n) {
    std::vector<int> fds;
    std::vector<int> ports;
    for (std::size_t i = 0; i < n; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr = loopback(0);
        socklen_t len = sizeof addr;
        int port = 0;
        if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
            port = ntohs(addr.sin_port);
        }
        if (fd >= 0) {
            fds.push_back(fd);
        }
        ports.push_back(port);
    }
    for (const int fd : fds) {
        ::close(fd);
    }
    return ports;
}

int free_port() {
    return free_ports(1).front();
}

// redis-server on a free port, with no persistence; ready when it answers PING. Another
// process may take the port between our probe and redis's bind, so a start that fails is
// retried on a new port.
std::optional<server> start_redis(const options& o) {
    const int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    for (int attempt = 0; attempt < 5; ++attempt) {
        server s;
        s.kind = server_kind::redis;
        s.port = free_port();
        const std::vector<std::string> args{o.redis_path,
                                            "--port",
                                            std::to_string(s.port),
                                            "--bind",
                                            "127.0.0.1",
                                            "--save",
                                            "",
                                            "--appendonly",
                                            "no",
                                            "--daemonize",
                                            "no",
                                            "--maxclients",
                                            "20000"};
        for (const auto& a : args) {
            s.command += (s.command.empty() ? "" : " ") + (a.empty() ? std::string("''") : a);
        }
        s.pid = spawn(args, devnull, devnull);
        if (s.pid < 0) {
            issue("fork: %s", std::strerror(errno));
            break;
        }
        const std::int64_t deadline = now_ns() + 5'000'000'000;
        while (now_ns() < deadline && alive(s)) {
            if (roundtrip(s.port, "PING\r\n", "+PONG\r\n", true)) {
                ::close(devnull);
                return s;
            }
            sleep_ms(20);
        }
        stop(s);
    }
    ::close(devnull);
    issue("redis-server did not start (5 attempts)");
    return std::nullopt;
}

// `spec` applies to kv_server only.
std::optional<server> start(server_kind kind, const options& o, std::size_t max_connections,
                            const node_spec& spec = {}) {
    std::fprintf(stderr, "kv_load: starting %s\n", label(kind));
    auto s = kind == server_kind::kv ? start_kv(o, max_connections, spec) : start_redis(o);
    if (s) {
        std::fprintf(stderr, "kv_load: %s pid %d on 127.0.0.1:%d: %s\n", label(kind),
                     static_cast<int>(s->pid), s->port, s->command.c_str());
    }
    return s;
}

// kv_server needs CREATE; a Redis hash exists once a field is set.
bool create_buckets(const server& s, const keyspace& ks) {
    if (s.kind != server_kind::kv) {
        return true;
    }
    for (const auto& b : ks.buckets) {
        if (!roundtrip(s.port, "CREATE " + b + "\r\n", "OK\r\n", false)) {
            return false;
        }
    }
    return true;
}

// ------------------------------------------------------------------------------------------
// Running connections

struct outcome {
    stats s;
    double seconds = 0;    // wall time of the run (the window, when timed)
    double server_cpu = 0; // CPU seconds per second during the window
    double client_cpu = 0;
};

// CPU seconds used so far by all of these processes together.
double servers_cpu_seconds(const std::vector<pid_t>& pids) {
    double sum = 0;
    for (const pid_t pid : pids) {
        sum += proc_cpu_seconds(pid);
    }
    return sum;
}

// Runs the connections on `threads` client threads; for a timed run, the calling thread
// samples the servers' (summed) and the client's CPU time at the window's edges.
outcome drive(const workload& w, std::vector<connection>& conns, unsigned threads,
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

void close_all(std::vector<connection>& conns) {
    for (auto& c : conns) {
        if (c.fd >= 0) {
            ::close(c.fd);
            c.fd = -1;
        }
    }
}

// Sends `o` for every step-th linear key index, split into contiguous ranges over `nconns`
// pipelined connections: the prefill (PUT) and the read-back checks (GET).
std::optional<outcome> run_sequence(const server& s, const keyspace& ks,
                                    std::vector<std::uint64_t>& expected, op o, std::uint64_t step,
                                    std::size_t nconns, unsigned threads) {
    constexpr std::uint32_t depth = 256;
    std::vector<int> fds;
    if (!connect_many(s.port, nconns, fds)) {
        for (const int fd : fds) {
            ::close(fd);
        }
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
// The modes

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

std::string with_commas(double value) {
    auto n = static_cast<std::uint64_t>(std::llround(value));
    std::string digits = std::to_string(n);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) {
            out += ',';
        }
        out += digits[i];
    }
    return out;
}

std::string mib(long kib) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(kib) / 1024.0);
    return buf;
}

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
std::size_t sweep_max_connections(const options& o) {
    return o.connections + 16 > 10000 ? o.connections + 16 : 0;
}

// Creates the buckets through `via` and prefills every key (4 pipelined connections).
bool sweep_prefill(session& ss, const server& via, sweep_data& d) {
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

// One timed run: C fresh connections with P in flight each, warm-up, then the window.
void sweep_run(session& ss, sweep_target& t, std::uint32_t depth, std::vector<sweep_row>& rows) {
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
        for (const int fd : fds) {
            ::close(fd);
        }
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
void print_sweep_head(const options& o, const char* first_column) {
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
std::vector<sweep_row> sweep_runs(session& ss, std::vector<sweep_target>& targets) {
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
void print_ratios(const std::vector<sweep_row>& rows, const std::string& top,
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

void run_sweep(session& ss) {
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
void run_forward(session& ss) {
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
        auto first = start(server_kind::kv, o, sweep_max_connections(o), {"n1", ports[0], routes});
        if (!first) {
            continue;
        }
        n1 = *first;
        auto second = start(server_kind::kv, o, sweep_max_connections(o), {"n2", ports[1], routes});
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

// Sends one GET on each of conns[lo, hi) and verifies every reply.
bool check_connections(server_kind kind, const keyspace& ks, std::vector<std::uint64_t>& expected,
                       std::vector<connection>& conns, std::size_t lo, std::size_t hi,
                       std::uint64_t& errors) {
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

// N connections, opened 512 at a time; each batch is checked with one GET per connection (so
// every connection is known to be accepted and served), then all stay open and idle while the
// server's RSS settles; at the end every connection is checked once more (still served).
void idle_server(session& ss, server_kind kind) {
    const std::size_t n = ss.opt.idle;
    auto srv = start(kind, ss.opt, n + 16);
    if (!srv) {
        ++ss.errors;
        return;
    }
    keyspace ks{{"bench"}, "key", 6, 1};
    std::vector<std::uint64_t> expected(1);
    const auto setup = create_buckets(*srv, ks) ? run_sequence(*srv, ks, expected, op::put, 1, 1, 1)
                                                : std::nullopt;
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
            for (const int fd : fds) {
                ::close(fd);
            }
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
        std::printf("| %s | %s | failed, see the errors above | | | | |\n", label(kind),
                    with_commas(static_cast<double>(n)).c_str());
    }
    std::fflush(stdout);
    close_all(conns);
    stop(*srv);
}

void run_idle(session& ss) {
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
void fill_server(session& ss, server_kind kind) {
    const std::size_t n = ss.opt.fill;
    auto srv = start(kind, ss.opt, 0);
    if (!srv) {
        ++ss.errors;
        return;
    }
    keyspace ks{{"bench"}, "k", 9, static_cast<std::uint32_t>(n)};
    std::vector<std::uint64_t> expected(n);
    if (!create_buckets(*srv, ks)) {
        ++ss.errors;
        stop(*srv);
        return;
    }
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
        std::printf("| %s | %s | failed, see the errors above | | | | |\n", label(kind),
                    with_commas(static_cast<double>(n)).c_str());
    }
    std::fflush(stdout);
    stop(*srv);
}

void run_fill(session& ss) {
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

// ------------------------------------------------------------------------------------------

std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("model name")) {
            const std::size_t colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(colon + 2);
        }
    }
    return "unknown CPU";
}

// The first line a program prints for `--version`, through a pipe, bounded to 5 s.
std::string version_of(const std::string& path) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        return "?";
    }
    const pid_t pid = spawn({path, "--version"}, fds[1], -1);
    ::close(fds[1]);
    std::string out;
    const std::int64_t deadline = now_ns() + 5'000'000'000;
    for (;;) {
        pollfd p{fds[0], POLLIN, 0};
        const auto ms = static_cast<int>((deadline - now_ns()) / 1'000'000);
        if (ms <= 0 || ::poll(&p, 1, ms) <= 0) {
            break;
        }
        char buf[256];
        const ssize_t n = ::read(fds[0], buf, sizeof buf);
        if (n <= 0) {
            break;
        }
        out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    if (pid > 0) {
        ::kill(pid, SIGKILL); // only if it is still running; it is ours
        ::waitpid(pid, nullptr, 0);
        track_child(pid, false);
    }
    return out.substr(0, out.find('\n'));
}

} // namespace

int main(int argc, char** argv) {
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

    std::string command = "kv_load";
    for (int i = 1; i < argc; ++i) {
        command += ' ';
        command += argv[i];
    }
    utsname un{};
    ::uname(&un);
    std::printf("# kv_load\n\n");
    std::printf("- command: `%s`\n", command.c_str());
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
    if (o.forward) {
        if (ss.have_kv) {
            run_forward(ss);
        } else {
            note("--forward needs kv_server; skipped");
        }
    }
    if (o.idle > 0) {
        run_idle(ss);
    }
    if (o.fill > 0) {
        run_fill(ss);
    }
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
