// SPDX-License-Identifier: MIT
/// @file
/// The client side of a cluster: `node_client` keeps a pool of persistent TCP connections
/// to each other node and forwards request lines over them, pipelined, from one I/O thread
/// of its own (epoll on Linux, poll(2) elsewhere). The router (router.hpp) uses it; a host
/// program may use it directly.
///
/// Peers. Every connection a node opens to another node starts with the peer handshake
/// (command.hpp, "Between nodes"): both prove that they know the cluster cookie
/// (`client_options::cookie`), and the other node then runs its requests locally and never
/// forwards them again (two nodes whose routing tables disagree cannot bounce a request
/// between them). Requests go out only once the handshake is done. A node that answers with
/// another name than the routing table gives it, with a wrong proof (another cookie), or with
/// `ERROR not a peer` (it does not know this node, or not this cookie) is treated as down:
/// it is not the node the table means, or not one of this cluster. `client_options::event_log`
/// (and `client_options::log`) is told why. Each request carries an id that
/// its reply echoes; a reply that does not name the oldest request waiting on its
/// connection closes that connection, and its requests fail as unavailable (command.hpp,
/// "Between nodes"). SUBSCRIBEs are multiplexed over the same pooled connections (events
/// tagged with their stream's id), so no number of relayed subscriptions takes more than the
/// pool's connections at the owner.
///
/// Failure. Each request has a deadline (`request_timeout`, 1 s, from the moment it is
/// handed over) and each connection attempt one (`connect_timeout`, 1 s, greeting
/// included). A node is **down** when a connection to it cannot be made or greeted in
/// time, when a request times out (a frozen node: SIGSTOP, a hung process), or when a
/// connection breaks and cannot be made again at once (a dead node: its kernel refuses).
/// Going down fails every request in flight to it with "unavailable"; while it is down,
/// requests to it fail at once, and it is retried in the background with exponential
/// backoff (`retry_min` doubling up to `retry_max`) until a connection is greeted again:
/// then it is **up**, and used again. Other nodes are never affected. Connections are
/// opened on first use, like Erlang's (`connect` opens them eagerly). Up and down
/// transitions are published to `monitor_nodes` subscribers (`:net_kernel.monitor_nodes`).
///
/// Events (`client_options::event_log`; the router passes its `router_options::log`), each
/// with the fields `node=` and `address=` (`host:port`) and a `reason` where there is one:
/// - `node_up` (info): a node is up, from unknown or down; once per transition.
/// - `node_down` (warning): a node is down, from unknown or up, with why (the connection
///   was refused, a request timed out, ...); once per transition, never per failed retry
///   or request.
/// - `peer_refused` (warning): a node failed the handshake (another name, another cookie,
///   `ERROR not a peer`); told once until it was up again or fails another way.
/// - `peer_protocol_error` (warning): a node broke the framing between nodes (a reply for
///   another request, bytes nobody asked for, an unknown stream, a reply past its cap); its
///   connection is closed and its requests fail as unavailable.
///
/// Counters (`stats`): per node, kept by the I/O thread alone (nothing is added to a
/// caller's path), read by any thread.
///
/// Ordering: requests given the same `affinity` go over the same connection, so the owner
/// runs them in the order they were handed over (the server uses the client connection's
/// id: one client's pipelined requests keep their order).
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/detail/callback.hpp>
#include <otpkv/detail/event_hub.hpp> // subscription
#include <otpkv/log.hpp>
#include <otpkv/process.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// Where another node is.
struct peer_node {
    std::string name{};     ///< its node name (what it answers the greeting with)
    std::string host{};     ///< an IPv4 or IPv6 literal, or a host name
    std::uint16_t port = 0; ///< its TCP port

    /// Equal when every field is.
    friend bool operator==(const peer_node&, const peer_node&) = default;
};

/// A `node_client`'s settings.
struct client_options {
    /// This node's name, sent in the greeting.
    std::string self = "nonode";
    /// The cluster cookie, which the handshake proves knowledge of (never sent). Must not
    /// be empty when there are nodes to connect to.
    std::string cookie{};
    /// Told one line of text when something happens that an operator should know of: a
    /// node failed the handshake (the router's handler also reports the peers it refuses),
    /// or broke the framing between nodes (a reply that is not the one for the oldest
    /// request, bytes nobody asked for), which closes that connection.
    /// A repeated failure of one node is told once, until the node was up again. Called on
    /// the client's thread or a server's, possibly from several at once; must not block.
    /// Empty: nobody is told. The same reports, and nodes going up and down, come as
    /// structured events through `event_log`, which a new host should use instead.
    std::function<void(const std::string& message)> log{};
    /// Where it reports nodes going up and down, refused handshakes and framing violations
    /// as structured events (see the file's comment for the kinds). Called on the client's
    /// thread (the router's handler also reports the peers it refuses, from a server's).
    /// The router sets it to `router_options::log`.
    logger event_log{};
    /// How long opening a connection and its handshake may take.
    std::chrono::milliseconds connect_timeout{1000};
    /// How long a request may wait for its reply, from the moment it is handed over.
    std::chrono::milliseconds request_timeout{1000};
    /// The first retry of a down node comes this long after it went down...
    std::chrono::milliseconds retry_min{50};
    /// ...and each next one twice as long after the last, up to this.
    std::chrono::milliseconds retry_max{1000};
    /// An open connection that has carried nothing for this long sends a heartbeat (an empty
    /// line, which any node answers `UNKNOWN COMMAND`), so that a node that froze is noticed
    /// (within `heartbeat` + `request_timeout`) even when nobody asks it anything, as
    /// Erlang's net_ticktime does. Zero: no heartbeats.
    std::chrono::milliseconds heartbeat{1000};
    /// Pooled connections per node (at least 1).
    unsigned connections = 2;
    /// A reply longer than this is a broken peer (its connection is dropped): a value is at
    /// most a line long. `node::start` raises it to its `max_line` and a header's room.
    std::size_t max_reply = std::size_t{1} << 20;
    /// The same for the reply to an INFO, which is many lines: one that is not whole within
    /// this many bytes closes its connection, and the request fails as unavailable.
    std::size_t max_info_reply = std::size_t{4} << 20;
};

/// A node went up or down (`monitor_nodes`).
struct node_event {
    std::string node{}; ///< its name
    bool up = false;    ///< true: now up (connected and greeted); false: now down
};

/// A node's state as the client sees it.
enum class node_status : std::uint8_t {
    unknown, ///< never connected yet
    up,      ///< connected and greeted
    down     ///< failed; requests fail at once while it is retried
};

/// What a `node_client` counted for one node (`node_client::stats`).
struct node_stats {
    node_status status = node_status::unknown; ///< up, down, or never connected
    std::size_t in_flight = 0;                 ///< requests sent (or queued) and not answered yet
    std::size_t requests = 0;                  ///< requests and SUBSCRIBEs handed to its I/O thread
    std::size_t failures = 0;    ///< of those, the ones that failed (unavailable, timeout)
    std::size_t connections = 0; ///< pooled connections open and greeted now
    std::string last_error{};    ///< why it last went down or failed; empty: never
};

/// The outcome of a forwarded request: the reply's exact bytes, or nullopt when the node is
/// unavailable (down, unreachable, or not answering in time).
using reply_callback = detail::unique_function<void(std::optional<std::string> reply)>;

/// A reply as the client framed it off the wire: its exact bytes and what they say
/// (`read_reply`'s outcome), so that whoever relays it need not read it again.
struct framed_reply {
    std::string bytes;     ///< the reply, exactly as the owner sent it (without the id header)
    reply_outcome outcome; ///< its shape and error code
};

/// `reply_callback` with the reply's outcome: nullopt when the node is unavailable.
using framed_callback = detail::unique_function<void(std::optional<framed_reply> reply)>;

/// What a remote SUBSCRIBE reports (all on the client's thread, at most one of `refused`
/// and `subscribed`, then any number of `data`, then at most one `ended`).
struct stream_callbacks {
    /// The owner did not subscribe: its reply (`NOT FOUND\r\n`, ...) or nullopt when the
    /// node is unavailable. Nothing else follows.
    std::function<void(std::optional<std::string> reply)> refused{};
    /// The owner subscribed (the stream's id, as `subscribe` returned it): events follow.
    std::function<void(std::uint64_t id)> subscribed{};
    /// Event bytes as they arrive. Returning false closes the stream (`ended` is not
    /// called).
    std::function<bool(std::string_view bytes)> data{};
    /// The stream ended: the bucket exited, the client stopped, or the owner went away and
    /// `lost` is empty.
    std::function<void()> ended{};
    /// The connection to the owner was lost (it died, or broke the protocol) while the
    /// stream ran: nothing more comes (`ended` is not called).
    std::function<void()> lost{};
};

namespace detail {
class client_loop;
} // namespace detail

/// Connections to the other nodes of a cluster, a process (its I/O thread): it exits when
/// stopped, or with an `error` reason if its loop fails.
///
/// Callbacks run on the client's thread (or, for a request handed over after the client
/// stopped or to a node known to be down, on the caller's thread before `request`
/// returns). They must not block: they delay every forwarded request.
///
/// Thread safety: every member may be called from any thread.
class node_client : public process {
  public:
    /// Starts the I/O thread. Connections are opened on first use (or by `connect`).
    [[nodiscard]] static result<std::shared_ptr<node_client>> start(std::vector<peer_node> nodes,
                                                                    client_options options = {});
    /// Stops it if it still runs.
    inline ~node_client() override; // inline: see ~process
    node_client(const node_client&) = delete;
    node_client& operator=(const node_client&) = delete;

    /// The nodes it knows, in the order given (the index is what the members below take).
    [[nodiscard]] const std::vector<peer_node>& nodes() const noexcept;
    /// The index of the node named `name`.
    [[nodiscard]] std::optional<std::size_t> find(std::string_view name) const noexcept;
    /// A node's state.
    [[nodiscard]] node_status status(std::size_t node) const noexcept;
    /// A node's counters and state (`down` and zeros for an index it does not have). A
    /// request refused at once because its node is known down never reaches the I/O
    /// thread and is not counted. Each counter is read on its own (together they are only
    /// roughly consistent).
    [[nodiscard]] node_stats stats(std::size_t node) const;

    /// Sends `line` (one request, with its terminator) to `node` and calls `done` with the
    /// reply. `kind` tells how long the reply is (`read_reply`). Requests with the same
    /// `affinity` use the same connection, so they run in order.
    void request(std::size_t node, std::string line, command_kind kind, std::uint64_t affinity,
                 reply_callback done);
    /// `request`, handing over the reply with its outcome (the router relays it without
    /// reading it again).
    void request(std::size_t node, std::string line, command_kind kind, std::uint64_t affinity,
                 framed_callback done);
    /// Sends `command` and blocks for the reply: its bytes, or nullopt when the node is
    /// unavailable. Not from the client's own thread (a callback): it would wait for itself.
    [[nodiscard]] std::optional<std::string> call(std::size_t node, const command& cmd,
                                                  std::uint64_t affinity = 0);
    /// Subscribes to `bucket` on `node`, over the pooled connections (multiplexed with the
    /// requests and the other streams: no connection of its own); returns an id for
    /// `cancel_stream`.
    std::uint64_t subscribe(std::size_t node, std::string bucket, stream_callbacks callbacks);
    /// Closes a stream; no callback of it runs afterwards (unless one is running now).
    void cancel_stream(std::uint64_t id);
    /// Opens the connections to `node` now, instead of on first use.
    void connect(std::size_t node);
    /// Subscribes to nodes going up and down. Callbacks run on the client's thread.
    [[nodiscard]] subscription monitor_nodes(std::function<void(const node_event&)> callback);

    /// Stops the thread; requests in flight fail as unavailable, streams end.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = default_shutdown) override;

  private:
    node_client() = default;
    std::shared_ptr<detail::client_loop> loop_;
    detail::process_threads thread_;
};

} // namespace v0
} // namespace otpkv

// The engine (the I/O thread, the pools, failure detection) and node_client's members.
#include <otpkv/net/detail/client_loop.hpp>
