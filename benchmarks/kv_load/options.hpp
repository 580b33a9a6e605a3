// SPDX-License-Identifier: MIT
// kv_load: kv_load's command line.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace kv_load {

// ------------------------------------------------------------------------------------------
// Options

struct options {
    std::string kv_path;
    std::string redis_path = "/usr/bin/redis-server";
    std::string etcd_path = "/usr/bin/etcd";
    bool want_kv = true;
    bool want_redis = true;
    bool sweep = false;
    bool forward = false;
    std::size_t idle = 0;
    std::size_t fill = 0;
    bool slow_subscriber = false;
    bool observer = false;
    bool replication = false;
    std::size_t failover = 0;        // --failover N: kills
    std::size_t puts = 840;          // --slow-subscriber: PUTs per pass
    std::size_t value_bytes = 60000; // --slow-subscriber: bytes per value
    unsigned rounds = 0;             // --rounds; 0: the mode's own (3 slow-subscriber, 5 observer)
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

inline constexpr const char* usage_text = R"(usage: kv_load [modes] [options]
modes (default --sweep; several may be given, each starts fresh servers):
  --sweep               C connections, P in flight each, for each P of --pipeline
  --forward             the --sweep workload on two kv_server nodes, n1 owning the buckets:
                        through n1 directly and through n2 (forwarded), alternating
  --idle N              N idle connections per server: RSS before/after, per connection
  --fill N              N entries (10-byte keys, 8-byte values): RSS bytes per entry
  --slow-subscriber     one kv_server; a publisher's PUT latency with a fast subscriber only,
                        and with one more that never reads, alternating; then the ratios
  --observer            three kv_server, --log-level error, info and error again (a control),
                        all with --admin-port 0; the --sweep workload at the last P of
                        --pipeline (default 16) on the error one unscraped, then scraped (GET
                        /metrics 10 times a second) in every other 250 ms window, and on the
                        info and control ones; rounds of the four, alternating; medians of
                        the paired ratios with 95% confidence intervals
  --replication         the --sweep workload through the head of chains of R = 1, 2 and 3
                        kv_server nodes (three nodes and an etcd per R), and on a lone node,
                        alternating; then the ratios
  --failover N          R=3 on three nodes under writes: N kill -9 of a chain member (head,
                        middle, tail in turn), each restarted once writes are acknowledged
                        again; the failover and rejoin times and their distribution
options:
  --only kv|redis       run one server only
  --kv-server PATH      kv_server binary (default: ../examples/kv_server next to kv_load)
  --redis-server PATH   redis-server binary (default /usr/bin/redis-server; skipped if absent)
  --etcd-server PATH    etcd binary for --replication and --failover (default /usr/bin/etcd,
                        Debian's etcd-server)
  --threads N           passed to every kv_server as --threads N
  --client-threads N    client threads, each with its own epoll (default 1)
  --connections C       connections for --sweep and --forward (default 50)
  --pipeline P[,P...]   requests in flight per connection (default 1,16)
  --get-ratio G:P|F     GET:PUT mix, e.g. 90:10 or 0.9 (default 90:10)
  --keys K              keys per bucket, prefilled (default 100000)
  --buckets B           buckets/hashes (default 1)
  --seconds S           measured seconds per run (default 5)
  --warmup S            unmeasured seconds before each run (default 1)
  --puts N              --slow-subscriber: PUTs per pass (default 840)
  --value-bytes V       --slow-subscriber: bytes per value (default 60000: 48 MiB of events)
  --rounds R            rounds of passes: --slow-subscriber (alone, lagging), default 3;
                        --observer (unscraped, scraped half, info, control), default 5
)";

template <class T> bool parse_number(std::string_view text, T& out) {
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc{} && ptr == text.data() + text.size();
}

inline bool parse_seconds(std::string_view text, double& out) {
    const std::string s(text);
    char* end = nullptr;
    out = std::strtod(s.c_str(), &end);
    return end == s.c_str() + s.size() && out >= 0 && std::isfinite(out);
}

inline bool parse_ratio(std::string_view text, double& out) {
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
inline std::string default_kv_path() {
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

inline std::optional<options> parse_options(int argc, char** argv) {
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
        } else if (arg == "--slow-subscriber") {
            o.slow_subscriber = any_mode = true;
            used_value = false;
        } else if (arg == "--observer") {
            o.observer = any_mode = true;
            used_value = false;
        } else if (arg == "--replication") {
            o.replication = any_mode = true;
            used_value = false;
        } else if (arg == "--failover") {
            ok = parse_number(value, o.failover) && o.failover > 0 && o.failover <= 1000;
            any_mode = true;
        } else if (arg == "--puts") {
            ok = parse_number(value, o.puts) && o.puts > 0 && o.puts <= 1'000'000;
        } else if (arg == "--value-bytes") {
            ok = parse_number(value, o.value_bytes) && o.value_bytes > 0 &&
                 o.value_bytes <= 65000; // a PUT must stay within kv_server's 64 KiB lines
        } else if (arg == "--rounds") {
            ok = parse_number(value, o.rounds) && o.rounds > 0 && o.rounds <= 100;
        } else if (arg == "--only") {
            ok = value == "kv" || value == "redis";
            o.want_kv = value == "kv";
            o.want_redis = value == "redis";
        } else if (arg == "--kv-server") {
            o.kv_path = value;
        } else if (arg == "--redis-server") {
            o.redis_path = value;
        } else if (arg == "--etcd-server") {
            o.etcd_path = value;
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
    if (o.puts * o.value_bytes > std::size_t{512} << 20) {
        std::fputs("kv_load: --puts times --value-bytes must stay within 512 MiB\n", stderr);
        return std::nullopt;
    }
    if (std::uint64_t{o.keys} * o.buckets >= 0xffff'ffffU) {
        std::fputs("kv_load: --keys times --buckets must stay below 2^32\n", stderr);
        return std::nullopt;
    }
    return o;
}

} // namespace kv_load
