// SPDX-License-Identifier: MIT
/// @file
/// Part of <otpkv/observer.hpp>: the text of the `INFO` verb (`info_text`), and the names
/// of its sections (`to_string`, `parse_info_section`).
///
/// The format, Redis `INFO`-like. Every line ends in CRLF; a section starts with a line
/// `# Server`, `# Tree`, `# Stats` or `# Cluster`; no section (`all`) is the four of them
/// in that order, without blank lines. The reply a server sends is these lines then `OK`.
/// No line of it is ever exactly `OK` or starts with `ERROR`, `NOT FOUND` or `UNKNOWN` (a
/// client reading up to `OK` cannot be fooled): bytes that come from users or from other
/// nodes (bucket names, exit reasons, peers' errors, ids) are escaped as `escaped` does
/// (`\\`, `\"`, `\r`, `\n`, `\t`, `\xHH` for any other byte outside printable ASCII), so
/// no CR, LF or control byte reaches the wire, and a line that would still start like a
/// reply has its first byte written `\xHH`. Numbers are decimal; durations are in
/// seconds, with up to 3 (uptimes) or 9 (latencies) decimals and no trailing zeros.
///
///     # Server
///     node:n1
///     version:0.3.0
///     time:2026-12-07T03:00:00.123Z
///     uptime_seconds:12.3
///     address:127.0.0.1:4040
///     connections:1
///     max_connections:10000
///     accepted:3
///     rejected:0
///     idle_closed:0
///     subscribers:0
///     subscriber_memory:0
///     subscribers_cut:0
///     # Tree
///     root rest_for_one max_restarts=3 max_seconds=5 restarts=0 children=2 pid=<0.1.0>
///       registry supervisor permanent running restarts=0 uptime_seconds=12.3 pid=<0.2.0>
///         strategy=one_for_one dynamic max_restarts=3 max_seconds=5 child_restarts=0
///         children=1000 (one line: a child that is a supervisor carries its own figures)
///         <0.7.0> worker temporary running restarts=0 uptime_seconds=1.5 pid=<0.7.0>
///         ... 999 more
///       server worker permanent restarting restarts=2 uptime_seconds=0 last_exit="..."
///     # Stats
///     commands_create:1       (one line per verb of `command_verbs`)
///     errors_not_found:1      (one line per reason counted, spaces as `_`, most first)
///     bytes_in:100
///     bytes_out:200
///     latency_count:7
///     latency_sum_seconds:0.01
///     latency_p50_seconds:0.00002  (estimates from the histogram, interpolated in a bucket)
///     latency_p99_seconds:0.0001
///     registry_buckets:2
///     registry_max_buckets:1000000
///     registry_keys:5
///     registry_bytes:80
///     bucket:shopping keys=3 bytes=50   (the largest buckets, most keys first)
///     # Cluster
///     router_node:n1
///     route:a-m=n1@127.0.0.1:4040      (the table, in order)
///     peer:n2 address=127.0.0.1:4041 up=true in_flight=0 requests=0 failures=0
///          connections=1 last_error="node n2 unavailable"   (one line per peer)
///
/// In the tree, each child is indented two spaces deeper than its supervisor: its id, its
/// type, its restart type, its state, then `key=value` pairs (`pid=` only when it runs,
/// `last_exit=` only when it exited, last, quoted when it holds a space). `last_error=`
/// likewise only when the peer failed. A word (an id, a bucket name, an error reason in a
/// key) that holds a space has it written `\x20`, so the line splits into its fields.
///
/// The `json` section is one line: `snapshot_json` and CRLF.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/log.hpp>
#include <otpkv/observer.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace otpkv {
inline namespace v0 {

inline std::string_view to_string(info_section section) noexcept {
    switch (section) {
    case info_section::all:
        break;
    case info_section::server:
        return "SERVER";
    case info_section::tree:
        return "TREE";
    case info_section::stats:
        return "STATS";
    case info_section::cluster:
        return "CLUSTER";
    case info_section::json:
        return "JSON";
    }
    return "";
}

inline std::optional<info_section> parse_info_section(std::string_view word) noexcept {
    for (const info_section s : {info_section::server, info_section::tree, info_section::stats,
                                 info_section::cluster, info_section::json}) {
        const std::string_view name = to_string(s);
        if (word.size() == name.size() &&
            std::equal(word.begin(), word.end(), name.begin(), [](char a, char b) {
                return (a >= 'a' && a <= 'z' ? static_cast<char>(a - 'a' + 'A') : a) == b;
            })) {
            return s;
        }
    }
    return std::nullopt;
}

namespace detail {

/// `text` for the rest of an `INFO` line: `escaped`, so no control byte is left.
[[nodiscard]] inline std::string info_value(std::string_view text) {
    return escaped(text);
}

/// `text` as one word of an `INFO` line: `escaped`, a space as `\x20`, empty as `""`.
[[nodiscard]] inline std::string info_word(std::string_view text) {
    if (text.empty()) {
        return "\"\"";
    }
    std::string out;
    for (const char c : escaped(text)) {
        if (c == ' ') {
            out += "\\x20";
        } else {
            out += c;
        }
    }
    return out;
}

/// A decimal of `units` divided by 10^`digits`, without trailing zeros (`12300`, 3:
/// `12.3`).
[[nodiscard]] inline std::string info_decimal(std::uint64_t units, unsigned digits) {
    std::uint64_t scale = 1;
    for (unsigned i = 0; i < digits; ++i) {
        scale *= 10;
    }
    std::string out = std::to_string(units / scale);
    std::string fraction = std::to_string(units % scale);
    fraction.insert(0, digits - fraction.size(), '0');
    while (!fraction.empty() && fraction.back() == '0') {
        fraction.pop_back();
    }
    if (!fraction.empty()) {
        out += '.';
        out += fraction;
    }
    return out;
}

/// Seconds from milliseconds, up to 3 decimals.
[[nodiscard]] inline std::string info_seconds(std::chrono::milliseconds ms) {
    return info_decimal(static_cast<std::uint64_t>(std::max<std::int64_t>(0, ms.count())), 3);
}

/// Seconds from a double, up to 9 decimals (nanoseconds).
[[nodiscard]] inline std::string info_seconds(double seconds) {
    if (!(seconds > 0)) {
        return "0";
    }
    return info_decimal(static_cast<std::uint64_t>(std::llround(seconds * 1e9)), 9);
}

/// The `q` quantile (0..1) of a latency histogram, interpolated linearly inside its bucket
/// (the `+Inf` bucket gives the last bound); 0 when it is empty.
[[nodiscard]] inline double
latency_quantile(const std::array<std::size_t, latency_bounds.size() + 1>& counts, double q) {
    std::size_t total = 0;
    for (const std::size_t c : counts) {
        total += c;
    }
    if (total == 0) {
        return 0;
    }
    const double rank = q * static_cast<double>(total);
    std::size_t below = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
        if (counts[i] == 0 || static_cast<double>(below + counts[i]) < rank) {
            below += counts[i];
            continue;
        }
        if (i == latency_bounds.size()) {
            return latency_bounds.back();
        }
        const double lower = i == 0 ? 0.0 : latency_bounds[i - 1];
        const double upper = latency_bounds[i];
        return lower + (upper - lower) * (rank - static_cast<double>(below)) /
                           static_cast<double>(counts[i]);
    }
    return latency_bounds.back();
}

[[nodiscard]] inline std::string_view info_name(strategy s) noexcept {
    switch (s) {
    case strategy::one_for_one:
        break;
    case strategy::one_for_all:
        return "one_for_all";
    case strategy::rest_for_one:
        return "rest_for_one";
    }
    return "one_for_one";
}

[[nodiscard]] inline std::string_view info_name(restart r) noexcept {
    switch (r) {
    case restart::permanent:
        break;
    case restart::transient:
        return "transient";
    case restart::temporary:
        return "temporary";
    }
    return "permanent";
}

[[nodiscard]] inline std::string_view info_name(child_type t) noexcept {
    return t == child_type::supervisor ? "supervisor" : "worker";
}

[[nodiscard]] inline std::string_view info_name(child_state s) noexcept {
    switch (s) {
    case child_state::running:
        break;
    case child_state::restarting:
        return "restarting";
    case child_state::stopped:
        return "stopped";
    }
    return "running";
}

/// Appends `line` and CRLF; a line that would read as the end of a reply (`OK`) or as an
/// error (`ERROR`, `NOT FOUND`, `UNKNOWN`) gets its first byte as `\xHH`.
inline void info_line(std::string& out, std::string_view line) {
    if (line == "OK" || line.starts_with("ERROR") || line.starts_with("NOT FOUND") ||
        line.starts_with("UNKNOWN")) {
        constexpr std::string_view hex = "0123456789abcdef";
        const auto first = static_cast<unsigned char>(line.front());
        out += "\\x";
        out += hex[first >> 4U];
        out += hex[first & 15U];
        line.remove_prefix(1);
    }
    out += line;
    out += "\r\n";
}

/// `key:value` for a number.
inline void info_number(std::string& out, std::string_view key, std::size_t value) {
    std::string line(key);
    line += ':';
    line += std::to_string(value);
    info_line(out, line);
}

/// A supervisor's own figures, after its name (the root) or in its child's line.
inline void info_supervisor_figures(std::string& line, const supervisor_snapshot& s,
                                    bool as_child) {
    line += as_child ? " strategy=" : " ";
    line += info_name(s.strategy);
    if (s.dynamic) {
        line += " dynamic";
    }
    line += " max_restarts=" + std::to_string(s.max_restarts);
    line += " max_seconds=" + info_seconds(s.max_seconds);
    line += as_child ? " child_restarts=" : " restarts=";
    line += std::to_string(s.restarts);
    line += " children=" + std::to_string(s.child_count);
}

inline void info_children(std::string& out, const supervisor_snapshot& s, std::size_t depth) {
    const std::string indent(2 * depth, ' ');
    for (const child_snapshot& c : s.children) {
        std::string line = indent;
        line += info_word(c.id);
        line += ' ';
        line += info_name(c.type);
        line += ' ';
        line += info_name(c.restart);
        line += ' ';
        line += info_name(c.state);
        line += " restarts=" + std::to_string(c.restarts);
        line += " uptime_seconds=" + info_seconds(c.uptime);
        if (c.pid) {
            line += " pid=" + to_string(c.pid);
        }
        if (!c.supervisor.empty()) {
            info_supervisor_figures(line, c.supervisor.front(), true);
        }
        if (!c.last_exit.empty()) {
            line += " last_exit=" + log_value(c.last_exit);
        }
        info_line(out, line);
        if (!c.supervisor.empty()) {
            info_children(out, c.supervisor.front(), depth + 1);
        }
    }
    if (s.child_count > s.children.size()) {
        info_line(out,
                  indent + "... " + std::to_string(s.child_count - s.children.size()) + " more");
    }
}

inline void info_server(std::string& out, const node_snapshot& n) {
    const server_snapshot& s = n.server;
    info_line(out, "# Server");
    info_line(out, "node:" + info_value(n.node));
    info_line(out, "version:" + info_value(n.version));
    info_line(out, "time:" + utc_timestamp(n.time));
    info_line(out, "uptime_seconds:" + info_seconds(n.uptime));
    info_line(out, "address:" + info_value(s.address));
    info_number(out, "connections", s.connections);
    info_number(out, "max_connections", s.max_connections);
    info_number(out, "accepted", s.accepted);
    info_number(out, "rejected", s.rejected);
    info_number(out, "idle_closed", s.idle_closed);
    info_number(out, "subscribers", s.subscribers);
    info_number(out, "subscriber_memory", s.subscriber_memory);
    info_number(out, "subscribers_cut", s.subscribers_cut);
}

inline void info_tree(std::string& out, const node_snapshot& n) {
    info_line(out, "# Tree");
    std::string root = info_word(n.tree.name);
    info_supervisor_figures(root, n.tree, false);
    if (n.tree.pid) {
        root += " pid=" + to_string(n.tree.pid);
    }
    info_line(out, root);
    info_children(out, n.tree, 1);
}

inline void info_stats(std::string& out, const node_snapshot& n) {
    const server_snapshot& s = n.server;
    info_line(out, "# Stats");
    for (std::size_t i = 0; i < command_verbs.size(); ++i) {
        info_number(out, "commands_" + std::string(command_verbs[i]), s.commands[i]);
    }
    for (const auto& [reason, count] : s.errors) {
        std::string key = "errors_"; // a fixed phrase, its spaces as `_`
        for (const char c : info_value(reason)) {
            key += c == ' ' ? '_' : c;
        }
        info_number(out, key, count);
    }
    info_number(out, "bytes_in", s.bytes_in);
    info_number(out, "bytes_out", s.bytes_out);
    info_number(out, "latency_count", s.latency_count);
    info_line(out, "latency_sum_seconds:" + info_seconds(s.latency_sum));
    info_line(out, "latency_p50_seconds:" + info_seconds(latency_quantile(s.latency, 0.5)));
    info_line(out, "latency_p99_seconds:" + info_seconds(latency_quantile(s.latency, 0.99)));
    const registry_snapshot& r = n.registry;
    info_number(out, "registry_buckets", r.buckets);
    info_number(out, "registry_max_buckets", r.max_buckets);
    info_number(out, "registry_keys", r.keys);
    info_number(out, "registry_bytes", r.bytes);
    for (const bucket_snapshot& b : r.largest) {
        info_line(out, "bucket:" + info_word(b.name) + " keys=" + std::to_string(b.keys) +
                           " bytes=" + std::to_string(b.bytes));
    }
}

inline void info_cluster(std::string& out, const node_snapshot& n) {
    const router_snapshot& r = n.router;
    info_line(out, "# Cluster");
    info_line(out, "router_node:" + info_value(r.node));
    for (const std::string& route : r.routes) {
        info_line(out, "route:" + info_value(route));
    }
    for (const peer_snapshot& p : r.peers) {
        std::string line = "peer:" + info_word(p.name);
        line += " address=" + info_word(p.address);
        line += p.up ? " up=true" : " up=false";
        line += " in_flight=" + std::to_string(p.in_flight);
        line += " requests=" + std::to_string(p.requests);
        line += " failures=" + std::to_string(p.failures);
        line += " connections=" + std::to_string(p.connections);
        if (!p.last_error.empty()) {
            line += " last_error=" + log_value(p.last_error);
        }
        info_line(out, line);
    }
}

} // namespace detail

inline std::string info_text(const node_snapshot& snapshot, info_section section) {
    std::string out;
    switch (section) {
    case info_section::json:
        out = snapshot_json(snapshot);
        out += "\r\n";
        return out;
    case info_section::server:
        detail::info_server(out, snapshot);
        return out;
    case info_section::tree:
        detail::info_tree(out, snapshot);
        return out;
    case info_section::stats:
        detail::info_stats(out, snapshot);
        return out;
    case info_section::cluster:
        detail::info_cluster(out, snapshot);
        return out;
    case info_section::all:
        break;
    }
    detail::info_server(out, snapshot);
    detail::info_tree(out, snapshot);
    detail::info_stats(out, snapshot);
    detail::info_cluster(out, snapshot);
    return out;
}

} // namespace v0
} // namespace otpkv
