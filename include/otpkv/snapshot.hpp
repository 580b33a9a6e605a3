// SPDX-License-Identifier: MIT
/// @file
/// A node's snapshot, as plain values: the supervision tree (`supervisor_snapshot`), the
/// registry (`registry_snapshot`), the server (`server_snapshot`) and the router
/// (`router_snapshot`), together a `node_snapshot` (`node::snapshot()`). The pieces fill
/// them (`supervisor_base::snapshot`, `registry::snapshot`, `server::snapshot`,
/// `router::snapshot`); `<otpkv/observer.hpp>` renders them as `INFO` text, JSON and
/// Prometheus metrics.
///
/// Each piece's part is consistent on its own (never torn: a count and the histogram it
/// sums agree, a tree is one supervisor's state at one moment); the parts are taken one
/// after another. Taking one is cheap enough to do ten times a second under full load.
#pragma once

#include <otpkv/process.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

struct supervisor_snapshot;

/// A child's state, as a snapshot shows it.
enum class child_state : std::uint8_t {
    running,    ///< its process runs
    restarting, ///< a restart failed and will be tried again
    stopped     ///< not running (terminated by a management call, or not restarted yet)
};

/// One child of a supervisor.
struct child_snapshot {
    std::string id{};                     ///< the spec's id (a dynamic child: its pid)
    process_id pid{};                     ///< none when not running
    child_type type = child_type::worker; ///< worker or supervisor
    otpkv::restart restart = otpkv::restart::permanent; ///< its restart type
    child_state state = child_state::running;           ///< running, restarting, stopped
    std::size_t restarts = 0; ///< its restarts that count in the current intensity window
    std::string last_exit{};  ///< `to_string` of its last exit reason; empty: never exited
    std::chrono::milliseconds uptime{}; ///< since its current process started (0: stopped)
    /// When it is a running supervisor: its own snapshot (one element), else empty.
    std::vector<supervisor_snapshot> supervisor; // no {}: the type is incomplete here
};

/// One supervisor and, recursively, the supervisors under it.
struct supervisor_snapshot {
    std::string name{};   ///< the id its parent gave it (the root: `root`)
    process_id pid{};     ///< the supervisor's own process id
    bool dynamic = false; ///< a dynamic_supervisor (or task_supervisor)
    otpkv::strategy strategy = otpkv::strategy::one_for_one; ///< one_for_one for dynamic ones
    int max_restarts = 3;                                    ///< intensity
    std::chrono::milliseconds max_seconds{5000};             ///< period
    std::size_t restarts = 0;    ///< restarts that count in the current window, all children
    std::size_t child_count = 0; ///< all its children (may be more than `children` holds)
    /// Its children in start order; a dynamic supervisor shows at most the first
    /// `snapshot_options::max_children` (a registry's bucket supervisor may hold millions).
    std::vector<child_snapshot> children{};
};

/// One bucket, as the registry's snapshot shows it.
struct bucket_snapshot {
    std::string name{};    ///< the bucket's name
    std::size_t keys = 0;  ///< entries
    std::size_t bytes = 0; ///< key and value bytes of its entries (not the table's overhead)
};

/// The registry.
struct registry_snapshot {
    std::size_t buckets = 0;     ///< buckets now
    std::size_t max_buckets = 0; ///< its limit
    std::size_t keys = 0;        ///< entries in all buckets
    std::size_t bytes = 0;       ///< key and value bytes in all buckets
    /// The largest buckets by keys, most first, at most `snapshot_options::largest_buckets`.
    std::vector<bucket_snapshot> largest{};
};

/// The verbs a server counts, in this order (`server_snapshot::commands`).
inline constexpr std::array<std::string_view, 7> command_verbs{
    "create", "put", "get", "delete", "subscribe", "info", "unknown"};

/// The upper bounds, in seconds, of the request-latency histogram's buckets (Prometheus
/// `le`); a last bucket, `+Inf`, takes the rest.
inline constexpr std::array<double, 14> latency_bounds{0.00001, 0.000025, 0.00005, 0.0001, 0.00025,
                                                       0.0005,  0.001,    0.0025,  0.005,  0.01,
                                                       0.025,   0.05,     0.1,     1.0};

/// The server.
struct server_snapshot {
    std::string address{};             ///< `127.0.0.1:4040`
    std::size_t connections = 0;       ///< open now
    std::size_t max_connections = 0;   ///< the limit
    std::size_t accepted = 0;          ///< since start
    std::size_t rejected = 0;          ///< refused (limit, descriptors)
    std::size_t idle_closed = 0;       ///< closed for `idle_timeout`
    std::size_t subscribers = 0;       ///< connections streaming events now
    std::size_t subscriber_memory = 0; ///< unsent event bytes now
    std::size_t subscribers_cut = 0;   ///< cut for `max_subscriber_memory`
    std::size_t bytes_in = 0;          ///< read from clients
    std::size_t bytes_out = 0;         ///< written to clients
    /// Requests handled per verb, in `command_verbs` order (lines that parse to no verb
    /// are `unknown`).
    std::array<std::size_t, command_verbs.size()> commands{};
    /// Error replies per reason: the text after `ERROR ` (`not found`, `too many
    /// connections`, ...; a fixed set, never a user's bytes), most first.
    std::vector<std::pair<std::string, std::size_t>> errors{};
    /// Request latency, from the request's line being read to its reply being queued:
    /// counts per bucket of `latency_bounds` plus the `+Inf` one (not cumulative), their
    /// sum in seconds, and their count (equal to the counts' sum and to `commands`' sum).
    std::array<std::size_t, latency_bounds.size() + 1> latency{};
    double latency_sum = 0;        ///< seconds
    std::size_t latency_count = 0; ///< requests timed
};

/// One other node, as the router sees it.
struct peer_snapshot {
    std::string name{};          ///< its node name
    std::string address{};       ///< `host:port`
    bool up = false;             ///< reachable now (its last request or heartbeat succeeded)
    std::size_t in_flight = 0;   ///< requests sent and not answered yet
    std::size_t requests = 0;    ///< forwarded since start
    std::size_t failures = 0;    ///< forwarded requests that failed (unavailable, timeout)
    std::size_t connections = 0; ///< pooled connections open now
    std::string last_error{};    ///< why it last failed; empty: never
};

/// The router.
struct router_snapshot {
    std::string node{};                 ///< this node's name
    std::vector<std::string> routes{};  ///< the table, `a-m=n1@127.0.0.1:4040`, in order
    std::vector<peer_snapshot> peers{}; ///< the other nodes of the table, in table order
    std::size_t peers_refused = 0;      ///< peer handshakes this node refused since start
};

/// How much a snapshot shows.
struct snapshot_options {
    std::size_t max_children = 100;   ///< children listed per dynamic supervisor
    std::size_t largest_buckets = 10; ///< buckets listed by the registry
};

/// Everything about one node at one moment.
struct node_snapshot {
    std::string node{};                           ///< its name
    std::string version{};                        ///< otpkv's version, `0.3.0`
    std::chrono::system_clock::time_point time{}; ///< when it was taken
    std::chrono::milliseconds uptime{};           ///< since the node started
    supervisor_snapshot tree{};                   ///< the root supervisor, recursively
    registry_snapshot registry{};                 ///< empty while it restarts
    server_snapshot server{};                     ///< empty while it restarts
    router_snapshot router{};                     ///< empty while it restarts
};

} // namespace v0
} // namespace otpkv
