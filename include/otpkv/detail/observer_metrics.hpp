// SPDX-License-Identifier: MIT
/// @file
/// Part of <otpkv/observer.hpp>: `metrics_text`, a node's snapshot in Prometheus' text
/// exposition format 0.0.4 (what the admin port's `/metrics` serves).
///
/// Every family has `# HELP` and `# TYPE`, the prefix `otpkv_`, base units (seconds, bytes)
/// and, for counters, the suffix `_total`. Labels take only bounded sets of values: `verb`
/// (`command_verbs`), `reason` (the server's fixed error texts), `node` (the peers of the
/// routing table), `supervisor` (the static supervision tree: the children of a dynamic
/// supervisor, one per bucket, are not walked) and `version`. No bucket name appears.
///
///     otpkv_build_info{version}                 gauge, always 1
///     otpkv_uptime_seconds                      gauge
///     otpkv_connections                         gauge, open now
///     otpkv_connections_max                     gauge, the limit
///     otpkv_connections_accepted_total          counter
///     otpkv_connections_rejected_total          counter
///     otpkv_connections_idle_closed_total       counter
///     otpkv_subscribers                         gauge
///     otpkv_subscriber_memory_bytes             gauge
///     otpkv_subscribers_cut_total               counter
///     otpkv_received_bytes_total                counter
///     otpkv_sent_bytes_total                    counter
///     otpkv_commands_total{verb}                counter
///     otpkv_errors_total{reason}                counter
///     otpkv_request_duration_seconds            histogram (`latency_bounds`, +Inf)
///     otpkv_buckets, otpkv_buckets_max          gauges
///     otpkv_keys, otpkv_stored_bytes            gauges (key and value bytes)
///     otpkv_peer_up{node}                       gauge, 1 or 0
///     otpkv_peer_in_flight{node}                gauge
///     otpkv_peer_connections{node}              gauge
///     otpkv_peer_requests_total{node}           counter
///     otpkv_peer_failures_total{node}           counter
///     otpkv_supervisor_restarts{supervisor}     gauge: restarts in the current intensity
///                                               window (it falls as the window slides)
///     otpkv_supervisor_children{supervisor}     gauge
///
/// A supervisor's label is its name; when two supervisors of the tree share a name, the
/// later ones are labelled with their path from the root (`root/registry/buckets`), so the
/// series stay distinct.
#pragma once

#include <otpkv/observer.hpp>

#include <charconv>
#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// Appends `text` as a label value: `\`, `"` and newline escaped (the format's only
/// escapes). Bytes are copied as they are; the label values here are fixed words, node
/// names (`[A-Za-z0-9_.-]`) and supervisor ids.
inline void append_label_value(std::string& out, std::string_view text) {
    out += '"';
    for (const char c : text) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '"') {
            out += "\\\"";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    out += '"';
}

/// Appends a sample value: the shortest form that reads back the same (`NaN`, `+Inf`,
/// `-Inf` for the others).
inline void append_metric_double(std::string& out, double value) {
    if (std::isnan(value)) {
        out += "NaN";
        return;
    }
    if (std::isinf(value)) {
        out += value > 0 ? "+Inf" : "-Inf";
        return;
    }
    char buffer[400]; // fixed notation of the largest double: 309 digits
    const auto [end, ec] =
        std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed);
    out.append(buffer, ec == std::errc{} ? end : buffer);
}

/// Writes families, one `# HELP` / `# TYPE` pair each, then their samples.
class metrics_writer {
  public:
    explicit metrics_writer(std::string& out) : out_(out) {}

    void family(std::string_view name, std::string_view type, std::string_view help) {
        out_ += "# HELP ";
        out_ += name;
        out_ += ' ';
        out_ += help;
        out_ += "\n# TYPE ";
        out_ += name;
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }
    /// `name{label="value"} number`; no label when `label` is empty.
    void sample(std::string_view name, std::string_view label, std::string_view value,
                std::size_t number) {
        head(name, label, value);
        out_ += std::to_string(number);
        out_ += '\n';
    }
    void sample_double(std::string_view name, std::string_view label, std::string_view value,
                       double number) {
        head(name, label, value);
        append_metric_double(out_, number);
        out_ += '\n';
    }
    /// A family of one unlabelled sample.
    void single(std::string_view name, std::string_view type, std::string_view help,
                std::size_t number) {
        family(name, type, help);
        sample(name, {}, {}, number);
    }

  private:
    void head(std::string_view name, std::string_view label, std::string_view value) {
        out_ += name;
        if (!label.empty()) {
            out_ += '{';
            out_ += label;
            out_ += '=';
            append_label_value(out_, value);
            out_ += '}';
        }
        out_ += ' ';
    }
    std::string& out_;
};

/// The supervisors of the static tree under (and including) `s`, labelled as the file's
/// comment says, in depth-first order.
inline void collect_supervisors( // NOLINT(misc-no-recursion): bounded by the tree's depth
    const supervisor_snapshot& s, const std::string& path,
    std::vector<std::pair<std::string, const supervisor_snapshot*>>& out) {
    bool taken = false;
    for (const auto& [label, sup] : out) {
        taken = taken || label == s.name;
    }
    out.emplace_back(taken ? path : s.name, &s);
    if (s.dynamic) {
        return; // its children are per-bucket (or per-task): unbounded
    }
    for (const child_snapshot& c : s.children) {
        if (!c.supervisor.empty()) {
            collect_supervisors(c.supervisor.front(), path + "/" + c.supervisor.front().name, out);
        }
    }
}

} // namespace detail

inline std::string metrics_text(const node_snapshot& snapshot) {
    std::string out;
    out.reserve(8192);
    detail::metrics_writer m(out);
    const server_snapshot& s = snapshot.server;
    const registry_snapshot& r = snapshot.registry;

    m.family("otpkv_build_info", "gauge", "otpkv's version, as a label; always 1.");
    m.sample("otpkv_build_info", "version", snapshot.version, 1);
    m.family("otpkv_uptime_seconds", "gauge", "Seconds since the node started.");
    m.sample_double("otpkv_uptime_seconds", {}, {},
                    static_cast<double>(snapshot.uptime.count()) / 1000.0);

    m.single("otpkv_connections", "gauge", "Client connections open now.", s.connections);
    m.single("otpkv_connections_max", "gauge", "Most client connections open at once.",
             s.max_connections);
    m.single("otpkv_connections_accepted_total", "counter", "Connections accepted.", s.accepted);
    m.single("otpkv_connections_rejected_total", "counter",
             "Connections refused (max_connections, out of file descriptors).", s.rejected);
    m.single("otpkv_connections_idle_closed_total", "counter",
             "Connections closed for idle_timeout.", s.idle_closed);
    m.single("otpkv_subscribers", "gauge", "Connections streaming a bucket's events now.",
             s.subscribers);
    m.single("otpkv_subscriber_memory_bytes", "gauge", "Unsent event bytes of all subscribers.",
             s.subscriber_memory);
    m.single("otpkv_subscribers_cut_total", "counter",
             "Subscribers disconnected for max_subscriber_memory.", s.subscribers_cut);
    m.single("otpkv_received_bytes_total", "counter", "Bytes read from clients.", s.bytes_in);
    m.single("otpkv_sent_bytes_total", "counter", "Bytes written to clients.", s.bytes_out);

    m.family("otpkv_commands_total", "counter", "Requests handled, by verb.");
    for (std::size_t i = 0; i < command_verbs.size(); ++i) {
        m.sample("otpkv_commands_total", "verb", command_verbs[i], s.commands[i]);
    }
    m.family("otpkv_errors_total", "counter", "Error replies, by reason.");
    for (const auto& [reason, count] : s.errors) {
        m.sample("otpkv_errors_total", "reason", reason, count);
    }

    constexpr std::string_view histogram = "otpkv_request_duration_seconds";
    m.family(histogram, "histogram",
             "Seconds from a request's line being read to its reply being queued.");
    std::size_t cumulative = 0;
    std::string bound;
    for (std::size_t i = 0; i < latency_bounds.size(); ++i) {
        cumulative += s.latency[i];
        bound.clear();
        detail::append_metric_double(bound, latency_bounds[i]);
        m.sample("otpkv_request_duration_seconds_bucket", "le", bound, cumulative);
    }
    cumulative += s.latency.back();
    m.sample("otpkv_request_duration_seconds_bucket", "le", "+Inf", cumulative);
    m.sample_double("otpkv_request_duration_seconds_sum", {}, {}, s.latency_sum);
    m.sample("otpkv_request_duration_seconds_count", {}, {}, cumulative);

    m.single("otpkv_buckets", "gauge", "Buckets now.", r.buckets);
    m.single("otpkv_buckets_max", "gauge", "Most buckets at once.", r.max_buckets);
    m.single("otpkv_keys", "gauge", "Entries in all buckets.", r.keys);
    m.single("otpkv_stored_bytes", "gauge", "Key and value bytes in all buckets.", r.bytes);

    const std::vector<peer_snapshot>& peers = snapshot.router.peers;
    m.family("otpkv_peer_up", "gauge", "1 when the peer node is reachable, else 0.");
    for (const peer_snapshot& p : peers) {
        m.sample("otpkv_peer_up", "node", p.name, p.up ? 1 : 0);
    }
    m.family("otpkv_peer_in_flight", "gauge", "Requests sent to the peer and not answered yet.");
    for (const peer_snapshot& p : peers) {
        m.sample("otpkv_peer_in_flight", "node", p.name, p.in_flight);
    }
    m.family("otpkv_peer_connections", "gauge", "Pooled connections to the peer open now.");
    for (const peer_snapshot& p : peers) {
        m.sample("otpkv_peer_connections", "node", p.name, p.connections);
    }
    m.family("otpkv_peer_requests_total", "counter", "Requests forwarded to the peer.");
    for (const peer_snapshot& p : peers) {
        m.sample("otpkv_peer_requests_total", "node", p.name, p.requests);
    }
    m.family("otpkv_peer_failures_total", "counter",
             "Forwarded requests that failed (unavailable, timeout).");
    for (const peer_snapshot& p : peers) {
        m.sample("otpkv_peer_failures_total", "node", p.name, p.failures);
    }

    std::vector<std::pair<std::string, const supervisor_snapshot*>> sups;
    detail::collect_supervisors(snapshot.tree, snapshot.tree.name, sups);
    m.family("otpkv_supervisor_restarts", "gauge",
             "Restarts counted in the supervisor's current intensity window.");
    for (const auto& [label, sup] : sups) {
        m.sample("otpkv_supervisor_restarts", "supervisor", label, sup->restarts);
    }
    m.family("otpkv_supervisor_children", "gauge", "Children of the supervisor.");
    for (const auto& [label, sup] : sups) {
        m.sample("otpkv_supervisor_children", "supervisor", label, sup->child_count);
    }
    return out;
}

} // namespace v0
} // namespace otpkv
