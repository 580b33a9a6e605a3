// SPDX-License-Identifier: MIT
/// @file
/// Part of <otpkv/observer.hpp>: `snapshot_json` (the one-line JSON of a node's snapshot, as
/// `INFO JSON` and the admin port's `/tree.json` give it) and `cluster_json` (the admin
/// port's `/cluster.json`, from this node's snapshot and the other nodes' JSON texts).
///
/// Strings: every byte of a name, an address or a reason is written so that the result is
/// always valid JSON (RFC 8259) in valid UTF-8, whatever the bytes were. `"` and `\` get a
/// backslash; the control bytes 0x00-0x1f and 0x7f are written `\u00XX`; a well-formed UTF-8
/// sequence (no overlong form, no surrogate, at most U+10FFFF) is copied as it is; any other
/// byte 0x80-0xff (a bucket name is arbitrary bytes) is written `\u00XX` with its own value,
/// that is as the Latin-1 character of that number: distinct bytes stay distinct, and a
/// reader sees, say, `\u00ff` where the name held the byte 0xff.
///
/// Numbers: counts as decimal integers; durations in seconds with at most three decimals
/// (`12.3`, `5`); the latency bounds and sum in the shortest fixed notation that reads back
/// as the same double (`0.00001`); a value that is not finite is written `0`.
#pragma once

#include <otpkv/detail/json.hpp>
#include <otpkv/log.hpp>
#include <otpkv/observer.hpp>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// One other node's part of `/cluster.json`: the one line of `snapshot_json` it answered
/// to `INFO JSON`, or why there is none.
struct cluster_member {
    std::string name{};  ///< its node name, as the routing table spells it
    bool up = false;     ///< true: `json` holds its snapshot; false: `error` says why not
    std::string json{};  ///< its `snapshot_json` line (when `up`)
    std::string error{}; ///< why it could not be asked (when not `up`), e.g. `node n2 unavailable`
};

/// `/cluster.json`: `{"node":SELF,"nodes":[...]}`, this node first (`up`, its own snapshot),
/// then `others` in the order given (the routing table's), each name once (a repeated name,
/// and this node's own, are skipped). A member that is up but whose text is not one valid
/// JSON object is shown down, with the error `invalid snapshot`, so the result is always
/// valid JSON. One line, no newline.
[[nodiscard]] std::string cluster_json(const node_snapshot& self,
                                       const std::vector<cluster_member>& others);

namespace detail {

/// Appends `text` to `out` as a JSON string, quotes included, by the rules at the top of
/// this file.
inline void append_json_string(std::string& out, std::string_view text);
/// Appends a double: shortest fixed notation that reads back the same; `0` if not finite.
inline void append_json_double(std::string& out, double value);
/// Appends a duration as seconds with at most three decimals.
inline void append_json_seconds(std::string& out, std::chrono::milliseconds d);
/// True when `text` is exactly one JSON object, with nothing but whitespace around it, nested
/// at most `max_depth` deep: json.hpp's grammar (`json_parser` in its `check` mode), which
/// builds nothing and takes any four hex digits after `\u`, as RFC 8259's ABNF does.
[[nodiscard]] inline bool is_json_object(std::string_view text, int max_depth = 64);

} // namespace detail

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

inline void append_json_string(std::string& out, std::string_view text) {
    constexpr std::string_view hex = "0123456789abcdef";
    out += '"';
    std::size_t i = 0;
    while (i < text.size()) {
        const char c = text[i];
        const auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
            ++i;
            continue;
        }
        if (u < 0x20 || u == 0x7f) {
            out += "\\u00";
            out += hex[u >> 4U];
            out += hex[u & 15U];
            ++i;
            continue;
        }
        const std::size_t n = u < 0x80 ? 1 : utf8_sequence(text.substr(i));
        if (n == 0) {
            out += "\\u00"; // a stray byte: its Latin-1 character
            out += hex[u >> 4U];
            out += hex[u & 15U];
            ++i;
            continue;
        }
        out.append(text.substr(i, n));
        i += n;
    }
    out += '"';
}

inline void append_json_double(std::string& out, double value) {
    if (!std::isfinite(value)) {
        out += '0';
        return;
    }
    char buffer[400]; // fixed notation of the largest double: 309 digits
    const auto [end, ec] =
        std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed);
    if (ec != std::errc{}) {
        out += '0';
        return;
    }
    out.append(buffer, end);
}

inline void append_json_seconds(std::string& out, std::chrono::milliseconds d) {
    const long long ms = d.count() < 0 ? 0 : static_cast<long long>(d.count());
    out += std::to_string(ms / 1000);
    long long fraction = ms % 1000;
    if (fraction == 0) {
        return;
    }
    std::string digits = std::to_string(fraction);
    digits.insert(0, 3 - digits.size(), '0');
    while (digits.back() == '0') {
        digits.pop_back();
    }
    out += '.';
    out += digits;
}

/// A small writer of one JSON object after another: keys, commas and values.
class json_writer {
  public:
    explicit json_writer(std::string& out) : out_(out) {}
    void open(char bracket) {
        out_ += bracket;
        first_ = true;
    }
    void close(char bracket) {
        out_ += bracket;
        first_ = false;
    }
    /// Starts an element of an array (the comma before it).
    void element() {
        if (!first_) {
            out_ += ',';
        }
        first_ = true; // a value written next opens with its own bracket, or is scalar
    }
    /// Starts `"key":` inside an object.
    void key(std::string_view k) {
        if (!first_) {
            out_ += ',';
        }
        append_json_string(out_, k);
        out_ += ':';
        first_ = true;
    }
    void string(std::string_view k, std::string_view v) {
        key(k);
        append_json_string(out_, v);
        first_ = false;
    }
    void number(std::string_view k, std::size_t v) {
        key(k);
        out_ += std::to_string(v);
        first_ = false;
    }
    void integer(std::string_view k, long long v) {
        key(k);
        out_ += std::to_string(v);
        first_ = false;
    }
    void boolean(std::string_view k, bool v) {
        key(k);
        out_ += v ? "true" : "false";
        first_ = false;
    }
    void seconds(std::string_view k, std::chrono::milliseconds v) {
        key(k);
        append_json_seconds(out_, v);
        first_ = false;
    }
    void real(std::string_view k, double v) {
        key(k);
        append_json_double(out_, v);
        first_ = false;
    }
    void pid(std::string_view k, process_id p) {
        key(k);
        if (p) {
            append_json_string(out_, to_string(p));
        } else {
            out_ += "null";
        }
        first_ = false;
    }
    void raw(std::string_view k, std::string_view json) {
        key(k);
        out_ += json;
        first_ = false;
    }
    /// Marks the value just written by hand (after `key`).
    void done() { first_ = false; }
    [[nodiscard]] std::string& out() noexcept { return out_; }

  private:
    std::string& out_;
    bool first_ = true;
};

[[nodiscard]] inline std::string_view json_name(strategy s) noexcept {
    switch (s) {
    case strategy::one_for_one:
        return "one_for_one";
    case strategy::one_for_all:
        return "one_for_all";
    case strategy::rest_for_one:
        return "rest_for_one";
    }
    return "one_for_one";
}

[[nodiscard]] inline std::string_view json_name(otpkv::restart r) noexcept {
    switch (r) {
    case otpkv::restart::permanent:
        return "permanent";
    case otpkv::restart::transient:
        return "transient";
    case otpkv::restart::temporary:
        return "temporary";
    }
    return "permanent";
}

[[nodiscard]] inline std::string_view json_name(child_state s) noexcept {
    switch (s) {
    case child_state::running:
        return "running";
    case child_state::restarting:
        return "restarting";
    case child_state::stopped:
        return "stopped";
    }
    return "stopped";
}

inline void write_supervisor_json(json_writer& w, const supervisor_snapshot& s) {
    w.open('{');
    w.string("name", s.name);
    w.pid("pid", s.pid);
    w.boolean("dynamic", s.dynamic);
    w.string("strategy", json_name(s.strategy));
    w.integer("max_restarts", s.max_restarts);
    w.seconds("max_seconds", s.max_seconds);
    w.number("restarts", s.restarts);
    w.number("child_count", s.child_count);
    w.key("children");
    w.open('[');
    for (const child_snapshot& c : s.children) {
        w.element();
        w.open('{');
        w.string("id", c.id);
        w.pid("pid", c.pid);
        w.string("type", c.type == child_type::supervisor ? "supervisor" : "worker");
        w.string("restart", json_name(c.restart));
        w.string("state", json_name(c.state));
        w.number("restarts", c.restarts);
        w.string("last_exit", c.last_exit);
        w.seconds("uptime_seconds", c.uptime);
        w.key("supervisor");
        if (c.supervisor.empty()) {
            w.out() += "null";
            w.done();
        } else {
            write_supervisor_json(w, c.supervisor.front());
        }
        w.close('}');
    }
    w.close(']');
    w.close('}');
}

inline bool is_json_object(std::string_view text, int max_depth) {
    // json.hpp's grammar, checking only; a text that does not start with `{` is refused
    // before any of it is read.
    const std::size_t first = text.find_first_not_of(" \t\n\r");
    if (first == std::string_view::npos || text[first] != '{') {
        return false;
    }
    json_parser parser(text, max_depth, json_parser::mode::check);
    return parser.run() && parser.take_result().is_object();
}

} // namespace detail

inline std::string snapshot_json(const node_snapshot& snapshot) {
    std::string out;
    out.reserve(4096);
    detail::json_writer w(out);
    w.open('{');
    w.string("node", snapshot.node);
    w.string("version", snapshot.version);
    w.string("time", detail::utc_timestamp(snapshot.time));
    w.seconds("uptime_seconds", snapshot.uptime);
    w.key("tree");
    detail::write_supervisor_json(w, snapshot.tree);

    const registry_snapshot& r = snapshot.registry;
    w.key("registry");
    w.open('{');
    w.number("buckets", r.buckets);
    w.number("max_buckets", r.max_buckets);
    w.number("keys", r.keys);
    w.number("bytes", r.bytes);
    w.key("largest");
    w.open('[');
    for (const bucket_snapshot& b : r.largest) {
        w.element();
        w.open('{');
        w.string("name", b.name);
        w.number("keys", b.keys);
        w.number("bytes", b.bytes);
        w.close('}');
    }
    w.close(']');
    w.close('}');

    const server_snapshot& s = snapshot.server;
    w.key("server");
    w.open('{');
    w.string("address", s.address);
    w.number("connections", s.connections);
    w.number("max_connections", s.max_connections);
    w.number("accepted", s.accepted);
    w.number("rejected", s.rejected);
    w.number("idle_closed", s.idle_closed);
    w.number("subscribers", s.subscribers);
    w.number("subscriber_memory", s.subscriber_memory);
    w.number("subscribers_cut", s.subscribers_cut);
    w.number("bytes_in", s.bytes_in);
    w.number("bytes_out", s.bytes_out);
    w.key("commands");
    w.open('{');
    for (std::size_t i = 0; i < command_verbs.size(); ++i) {
        w.number(command_verbs[i], s.commands[i]);
    }
    w.close('}');
    w.key("errors");
    w.open('{');
    for (const auto& [reason, count] : s.errors) {
        w.number(reason, count);
    }
    w.close('}');
    w.key("latency");
    w.open('{');
    w.key("bounds");
    w.open('[');
    for (const double bound : latency_bounds) {
        w.element();
        detail::append_json_double(out, bound);
        w.done();
    }
    w.close(']');
    w.key("counts");
    w.open('[');
    for (const std::size_t count : s.latency) {
        w.element();
        out += std::to_string(count);
        w.done();
    }
    w.close(']');
    w.real("sum", s.latency_sum);
    w.number("count", s.latency_count);
    w.close('}');
    w.close('}');

    const router_snapshot& rt = snapshot.router;
    w.key("router");
    w.open('{');
    w.string("node", rt.node);
    w.key("routes");
    w.open('[');
    for (const std::string& route : rt.routes) {
        w.element();
        detail::append_json_string(out, route);
        w.done();
    }
    w.close(']');
    w.key("peers");
    w.open('[');
    for (const peer_snapshot& p : rt.peers) {
        w.element();
        w.open('{');
        w.string("name", p.name);
        w.string("address", p.address);
        w.boolean("up", p.up);
        w.number("in_flight", p.in_flight);
        w.number("requests", p.requests);
        w.number("failures", p.failures);
        w.number("connections", p.connections);
        w.string("last_error", p.last_error);
        w.close('}');
    }
    w.close(']');
    w.close('}');
    w.close('}');
    return out;
}

inline std::string cluster_json(const node_snapshot& self,
                                const std::vector<cluster_member>& others) {
    std::string out;
    detail::json_writer w(out);
    w.open('{');
    w.string("node", self.node);
    w.key("nodes");
    w.open('[');
    w.element();
    w.open('{');
    w.string("name", self.node);
    w.boolean("up", true);
    w.raw("snapshot", snapshot_json(self));
    w.close('}');
    std::vector<std::string_view> seen{self.node};
    for (const cluster_member& m : others) {
        bool repeated = false;
        for (const std::string_view name : seen) {
            repeated = repeated || name == m.name;
        }
        if (repeated) {
            continue;
        }
        seen.push_back(m.name);
        w.element();
        w.open('{');
        w.string("name", m.name);
        std::string_view text = m.json;
        while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ' ||
                                 text.back() == '\t')) {
            text.remove_suffix(1);
        }
        while (!text.empty() && (text.front() == '\n' || text.front() == '\r' ||
                                 text.front() == ' ' || text.front() == '\t')) {
            text.remove_prefix(1);
        }
        if (m.up && detail::is_json_object(text)) {
            w.boolean("up", true);
            w.raw("snapshot", text);
        } else {
            w.boolean("up", false);
            w.string("error",
                     m.up ? std::string_view("invalid snapshot") : std::string_view(m.error));
        }
        w.close('}');
    }
    w.close(']');
    w.close('}');
    return out;
}

} // namespace v0
} // namespace otpkv
