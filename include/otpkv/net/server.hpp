// SPDX-License-Identifier: MIT
/// @file
/// The event-driven TCP line server: a fixed set of event-loop threads, each with its own
/// poller (epoll on Linux, poll(2) elsewhere), non-blocking sockets, a line framer and an
/// output buffer per connection. No thread per connection.
///
/// One request walks: socket → `line_framer` → `parse` → the request handler (by default
/// `run` against a registry) → the connection's output buffer → socket. The replies of
/// everything one read brought in (a pipelined batch) go out in one `send`.
///
/// The limits of protocol.md, and how they are kept:
/// - A line longer than `max_line`: `ERROR line too long`, nothing of it runs, and the
///   connection is closed once the reply is delivered. A connection marked as another
///   node's (`session::mark_peer`, once its handshake proved the cookie) may send lines
///   `peer_line_margin` (command.hpp) longer: what a node relays is a client's line with a
///   header in front. The limit belongs to the connection, not to the framer's buffer a
///   loop lends it for a read, so a client never gets a peer's margin.
/// - A client that sends faster than it reads: once its unsent replies pass `max_output`
///   (4 MiB) the server stops pulling its requests (and reading its socket) until they
///   drain below half of that. Nothing is dropped, the order is kept, and no other
///   connection waits: each loop serves its ready connections in turn, at most a few reads
///   each per turn.
/// - A subscriber whose unsent events pass `max_subscriber_output` (32 MiB) is
///   disconnected; a publisher only appends to a buffer under a short lock, never waits.
/// - All subscribers together (local ones and relayed `event_stream`s, on every loop) hold
///   at most `max_subscriber_memory` (256 MiB) of unsent events: past it, the subscribers
///   with the largest backlogs are disconnected, largest first, until the total is back
///   under the cap (`server_stats::subscribers_cut` counts them). The total is one atomic
///   counter: a publisher adds what it appends (and the loops subtract what they send, or
///   what a closed connection held), so publishing stays a short per-connection lock plus
///   an atomic add. The loop that takes an event past the cap chooses the victims: one
///   loop at a time (the others do not wait for it) scans the server's list of subscriber
///   links for the largest backlogs, and tells their loops to disconnect them. What is
///   counted is unsent bytes; the buffers that hold them take somewhat more (a connection's
///   output drops what was sent once that is a quarter of what is not, and grows by
///   doubling).
/// - `max_connections`: a connection past it gets `ERROR too many connections` and is
///   closed.
/// - Out of file descriptors (accept fails with EMFILE or ENFILE): the server keeps one spare
///   descriptor (`/dev/null`, opened at start) for this. It closes the spare, accepts the
///   waiting connection, answers it `ERROR too many connections`, closes it and opens the
///   spare again, for every connection that waits, so none is left hanging in the listen
///   backlog. Counted in `server_stats::rejected` and `server_stats::out_of_descriptors` (the
///   host logs it: kv_server says so on stderr once per burst).
/// - `idle_timeout` (default 300 s; 0: never): a connection that sends nothing for that long
///   while it is idle is closed, silently (no reply; the socket is just closed). Idle means:
///   no request being handled or deferred, no unsent output, no subscription (local, or
///   relayed through `deferred_reply::stream`), and not another node's (`session::mark_peer`,
///   which the router calls for its peers' connections, whose liveness the peers' heartbeat
///   watches). Subscribers are never cut. A partial line does not keep a connection open;
///   its bytes count as activity. Each loop keeps a last-activity time per connection (set
///   from the loop's clock, read once per wake-up, never per request) and sweeps its
///   connections at most every `idle_timeout / 4`, and at least every second: a connection
///   is closed between `idle_timeout` and about 1.25 times it after its last byte. Closed so
///   far: `server_stats::idle_closed`.
/// - A subscriber that half-closes (shutdown(SHUT_WR), as `nc -N` does) keeps its stream:
///   events flow until the subscription ends or the client closes for good. A close looks
///   like a half-close until a write fails: the server learns of it at the next event (or,
///   on a quiet bucket, from TCP keepalive probes, within about a minute and a half on
///   Linux). A peer's stream (`session::mark_peer`) ends at its end of input instead: a node
///   closes, it never half-closes. A half-closed client with requests in flight still gets
///   their replies, then the connection is closed.
/// - A request whose handler throws gets `ERROR internal` and only its connection is closed
///   (the guide gives each client a supervised Task for the same containment).
/// - A partial line followed by a close (or half-close) is dropped; complete lines before
///   it run and their replies are still sent. A connection reset costs nothing lasting.
/// - "Closed after the reply has been delivered" means: the output is flushed, the write
///   side is shut down (FIN), and input is read and discarded until the peer closes (or 2 s
///   pass), so the kernel never turns unread input into a reset that would destroy the
///   reply in flight.
///
/// Statistics (`server::snapshot`): each event loop keeps its own block of counters
/// (commands per verb, error replies per reason, bytes in and out, the request-latency
/// histogram), written only by its thread under a sequence lock, so a request costs a few
/// plain stores and no shared write; a snapshot reads each block until it gets one
/// consistent copy (its latency count, the histogram's sum and the commands' sum agree) and
/// adds them up. A request is counted when its reply is queued (a deferred one when it
/// completes), under the verb `parse` gives its line (`unknown` for anything else, bad
/// arity included); its reply, when it is `ERROR` and a reason, `NOT FOUND` or `UNKNOWN
/// COMMAND`, under one of `server_error_reasons` (`node NAME unavailable` as `node
/// unavailable`, a reason no node gives as `other`): never a client's bytes. Its latency
/// runs from its line being framed to its reply being queued. The requests a loop runs back
/// to back (a pipelined batch, up to 64) are timed together, with two clock reads: the
/// batch's time is spread over them by their place, the `i`-th of `n` taking `(i + 1) / n`
/// of it (it waited for those before it). A deferred request is timed on its own, to its
/// completion.
///
/// Events (`server_options::log`), aggregated: the first of a kind is reported at once,
/// the ones after it at most once a second per kind as one event whose `count=` says how
/// many there were since the last (a flood of refused connections is one line a second):
/// - `limit_hit` (warning), fields `limit=`, `count=`, `max=` (the limit's value), `address=`
///   (the server's), for `limit=max_connections` (refused: `reason=too many connections`),
///   `out_of_descriptors` (refused; `max=` is the soft RLIMIT_NOFILE), `max_line` (`ERROR
///   line too long`, connection closed), `max_subscriber_output` (a subscriber or channel
///   disconnected), `max_subscriber_memory` (subscribers cut; `count=` counts them),
///   `max_deferred` (a connection stopped being read until its deferred replies complete).
/// - `idle_closed` (debug), fields `count=`, `idle_timeout_ms=`, `address=`.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/log.hpp>
#include <otpkv/net/poller.hpp>
#include <otpkv/process.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/snapshot.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace otpkv {
inline namespace v0 {

/// A server's settings (protocol.md's limits; all have its defaults).
struct server_options {
    /// The address to listen on: an IPv4 or IPv6 literal. Never all interfaces by default.
    std::string bind = "127.0.0.1";
    /// The port; 0 takes an ephemeral one (see `server::port`).
    std::uint16_t port = 4040;
    /// Event-loop threads; 0 means `std::thread::hardware_concurrency()`.
    unsigned threads = 0;
    /// Longest request line, terminator not counted (`peer_line_margin` more on a
    /// connection marked by `session::mark_peer`).
    std::size_t max_line = default_max_line;
    /// Open connections at most; one more is answered `ERROR too many connections`.
    std::size_t max_connections = 10000;
    /// Unsent reply bytes past which a connection's requests stop being read.
    std::size_t max_output = std::size_t{4} << 20;
    /// Unsent event bytes past which a subscriber is disconnected; 0: no limit.
    std::size_t max_subscriber_output = std::size_t{32} << 20;
    /// Unsent event bytes of all subscribers together (local and relayed streams, on every
    /// loop) past which the subscribers with the largest backlogs are disconnected, largest
    /// first, until the total is back under it; 0: no limit.
    std::size_t max_subscriber_memory = std::size_t{256} << 20;
    /// How long a closing connection's unread input is drained before it is closed hard.
    std::chrono::milliseconds linger = std::chrono::seconds(2);
    /// The readiness mechanism.
    poller_kind poller = poller_kind::automatic;
    /// Deferred replies (`session::defer`) outstanding per connection at most (0 is taken as
    /// 1); past it the connection's requests stop being read until some complete.
    std::size_t max_deferred = 1024;
    /// An idle connection (nothing in flight, nothing unsent, no subscription, not marked by
    /// `session::mark_peer`) that sends nothing for this long is closed
    /// silently; zero: never. See the header comment for the exact rule.
    std::chrono::milliseconds idle_timeout = std::chrono::seconds(300);
    /// Where it reports limits hit and connections closed for `idle_timeout` (default:
    /// nowhere); see the header comment, "Events", for what it says.
    logger log{};
};

/// The reasons a server counts error replies under (`server_snapshot::errors`), in this
/// order: `error_text` of each `error_code`, then `not found` (`NOT FOUND`), `unknown
/// command` (`UNKNOWN COMMAND`) and `other` (an `ERROR` line with any other reason, as a
/// handler may relay).
inline constexpr std::array<std::string_view, 10> server_error_reasons{
    "line too long", "no route",   "node unavailable", "too many buckets", "too many connections",
    "internal",      "not a peer", "not found",        "unknown command",  "other"};

/// Counters of a running server (each read on its own, so together only roughly
/// consistent). Thread safety: any thread.
struct server_stats {
    std::size_t connections = 0; ///< open connections now, counted against the limit
    std::size_t accepted = 0;    ///< connections accepted since start
    std::size_t rejected = 0;    ///< connections refused (`max_connections`, descriptors)
    std::size_t requests = 0;    ///< request lines handled
    /// Of `rejected`: refused because the process had no file descriptor left (EMFILE,
    /// ENFILE).
    std::size_t out_of_descriptors = 0;
    std::size_t idle_closed = 0; ///< connections closed for `idle_timeout`
    /// Unsent event bytes of all subscribers now (counted against `max_subscriber_memory`).
    std::size_t subscriber_memory = 0;
    /// Subscribers disconnected for `max_subscriber_memory` since start.
    std::size_t subscribers_cut = 0;
};

namespace detail {
struct connection;
struct server_core;
struct subscriber_link;
class event_loop;
} // namespace detail

class deferred_reply;
class event_stream;

/// One connection, as a request handler sees it while it handles a request.
/// Thread safety: only on the event-loop thread running the handler, during the call.
class session {
  public:
    /// Streams `b`'s events to this connection from now on (`k SET TO v`, `k DELETED`);
    /// the connection then runs no more requests and ignores its input. When the bucket
    /// exits the stream ends and the connection is closed.
    void subscribe(registry::bucket_type& b);
    /// Closes the connection once the replies written so far are delivered.
    void close_after_reply() noexcept;
    /// Answers this request later, from any thread (the router's forwarded requests): the
    /// handler writes nothing for it, and returns at once. Replies to later requests are
    /// held back until this one is complete, so the client still sees request order; the
    /// connection goes on running its requests meanwhile (pipelining), up to
    /// `max_deferred` outstanding ones.
    [[nodiscard]] deferred_reply defer();
    /// Like `defer`, but no later request runs until this one completes, because its
    /// completion may turn the connection into an event stream (`deferred_reply::stream`:
    /// a SUBSCRIBE answered by another node).
    [[nodiscard]] deferred_reply defer_stream();
    /// Runs this request again once no deferred reply of the connection is outstanding,
    /// instead of now: true when it will (the handler then writes nothing and returns; no
    /// later request runs before it), false when none is outstanding (run it now). For a
    /// request that must see what the earlier ones did although they still run elsewhere
    /// (the router: a GET after a PUT to a replicated range).
    [[nodiscard]] bool run_after_replies();
    /// A way for other threads to add bytes to this connection's output while it goes on
    /// serving requests (unlike `subscribe`, the connection does not become a subscriber):
    /// the router pushes the events of the streams a peer node subscribed to through it.
    /// Bytes pushed go out after everything the connection wrote before the push; with
    /// deferred replies outstanding they may overtake those (the router defers nothing on
    /// a peer's connection). They count toward `max_subscriber_output` with the connection's
    /// unsent replies: past it the connection is disconnected and `push` returns false.
    /// `end()` closes the connection once what was pushed is delivered. `on_close` runs
    /// once, on the server's thread, when the connection goes away; it must not block. One
    /// channel per connection: a second call returns the same one (and drops its
    /// `on_close`).
    [[nodiscard]] event_stream channel(std::function<void()> on_close);
    /// The request line being handled, terminator excluded (for verbs `parse` does not
    /// know, such as the router's peer greeting).
    [[nodiscard]] std::string_view line() const noexcept { return line_; }
    /// This connection's number, unique within its server (from 1).
    [[nodiscard]] std::uint64_t id() const noexcept;
    /// A word the handler may keep per connection (0 on a new connection); the router marks
    /// its peers' connections with it.
    [[nodiscard]] std::uint64_t& context() noexcept;
    /// Bytes the handler may keep per connection (empty on a new connection), for what does
    /// not fit `context`; freed with the connection. The router keeps a peer's handshake in
    /// them between its two lines.
    [[nodiscard]] std::string& storage() noexcept;
    /// Marks this connection as another node's (the router's peers), not a client's:
    /// `server_options::idle_timeout` never closes it (the peers' heartbeat watches it), and
    /// when it streams events, the end of its input ends it at once (a node that is done with
    /// a stream closes; only a client half-closes and goes on reading). Its next lines may be
    /// `peer_line_margin` bytes longer than `server_options::max_line`.
    void mark_peer() noexcept;

    /// For the server only.
    session(detail::connection& c, detail::event_loop& loop, std::string_view line) noexcept
        : conn_(c), loop_(loop), line_(line) {}

  private:
    detail::connection& conn_;
    detail::event_loop& loop_;
    std::string_view line_;
};

/// Handles one parsed request: appends the exact reply bytes to `out`. Through `session`
/// it may switch the connection to streaming a bucket's events (SUBSCRIBE) or have it
/// closed after the reply. An exception thrown from it becomes `ERROR internal` and closes
/// that connection only. It runs on an event-loop thread: it must not block for long (it
/// delays that loop's connections).
using request_handler = std::function<void(const command&, std::string& out, session&)>;

namespace detail {
struct deferred_state;
} // namespace detail

/// A stream of event bytes into a connection that a deferred SUBSCRIBE turned into a
/// subscriber (`deferred_reply::stream`): the router relays another node's events through
/// it; or into a connection that goes on serving (`session::channel`). The same caps as for
/// local subscribers apply (`max_subscriber_output`, and its share of
/// `max_subscriber_memory`): a connection that does not read is disconnected, and `push`
/// then returns false.
///
/// Thread safety: any thread, one at a time. Movable, not copyable; dropping it without
/// `end()` leaves the connection subscribed until the client closes it.
class event_stream {
  public:
    event_stream() = default;
    /// Appends `bytes` (whole event lines) to the connection's output. False once the
    /// connection is gone (closed by its client, disconnected for the cap, server stopped)
    /// or after `end()`.
    bool push(std::string_view bytes);
    /// Ends the stream: the connection is closed once what was pushed is delivered.
    void end();
    /// For the server only.
    explicit event_stream(std::shared_ptr<detail::subscriber_link> link) noexcept
        : link_(std::move(link)) {}

  private:
    std::shared_ptr<detail::subscriber_link> link_;
};

/// The promise of one request's reply (`session::defer`), completed from any thread.
/// A reply dropped without being completed answers `ERROR internal` and closes its
/// connection, so a request is never left without a reply. Completing after the
/// connection has gone, or after the server stopped, does nothing.
///
/// Thread safety: any thread, one at a time. Movable, not copyable.
class deferred_reply {
  public:
    deferred_reply() = default;
    deferred_reply(deferred_reply&&) noexcept = default;
    deferred_reply& operator=(deferred_reply&& other) noexcept;
    deferred_reply(const deferred_reply&) = delete;
    deferred_reply& operator=(const deferred_reply&) = delete;
    ~deferred_reply();

    /// Delivers the reply's exact bytes (in request order with the connection's others);
    /// with `then_close`, the connection is closed once they are delivered, and replies to
    /// later requests are dropped (as after a local `ERROR internal`).
    void complete(std::string bytes, bool then_close = false);
    /// For a `defer_stream` reply: the connection becomes a subscriber, as after a local
    /// SUBSCRIBE (it runs no more requests and ignores its input), and receives what is
    /// pushed into the returned stream. `on_close` runs once, on the server's thread, when
    /// the connection goes away (closed, disconnected for the cap, server stopped), so the
    /// source can stop; it must not block. When the server has already stopped, or the reply
    /// came from plain `defer` (which cannot become a stream: it completes as an empty
    /// reply), `on_close` runs at once, on the calling thread.
    event_stream stream(std::function<void()> on_close);
    /// True until completed (or moved from).
    [[nodiscard]] bool pending() const noexcept { return state_ != nullptr; }

    /// For the server only.
    explicit deferred_reply(std::shared_ptr<detail::deferred_state> s) noexcept
        : state_(std::move(s)) {}

  private:
    std::shared_ptr<detail::deferred_state> state_;
};

/// The handler that runs every request with `run` against `reg`; SUBSCRIBE subscribes the
/// connection.
[[nodiscard]] request_handler registry_handler(std::shared_ptr<registry> reg);

/// What `registry_handler` does for one request: `run` against `reg`, SUBSCRIBE
/// subscribing the session, and the connection closed after a reply that closes it
/// (`closes_connection`). Returns the reply's outcome.
reply_outcome run_in_session(const command& cmd, registry& reg, std::string& out, session& s);

/// The TCP line server, a process: it exits when stopped, or with an `error` reason when an
/// event loop fails (a supervisor then restarts it).
///
/// Thread safety: every member may be called from any thread.
class server : public process {
  public:
    /// Binds, listens and starts the event loops. Errors: `start_failed`, whose reason holds
    /// the `std::system_error` (EADDRINUSE when the port is taken; the message names the
    /// address).
    [[nodiscard]] static result<std::shared_ptr<server>> start(request_handler handler,
                                                               server_options options = {});
    /// Serves `reg` with `registry_handler`.
    [[nodiscard]] static result<std::shared_ptr<server>> start(std::shared_ptr<registry> reg,
                                                               server_options options = {});
    /// Stops the server if it still runs.
    inline ~server() override; // inline: see ~process
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    /// The port it listens on (the real one when started with port 0).
    [[nodiscard]] std::uint16_t port() const noexcept;
    /// The address it listens on, `127.0.0.1:4040` or `[::1]:4040`.
    [[nodiscard]] std::string address() const;
    /// The counters.
    [[nodiscard]] server_stats stats() const noexcept;
    /// The server's part of a node's snapshot: the counters above, and the sums of every
    /// event loop's statistics, each loop's read consistently (see the header comment).
    /// Cheap: a few hundred loads per loop, no lock; it never makes a loop wait.
    [[nodiscard]] server_snapshot snapshot() const;

    /// Stops accepting, closes every connection (after one last attempt to send what each
    /// still has to send) and exits with `reason`, waiting up to `wait` for the loops.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = default_shutdown) override;

  private:
    server() = default;
    std::shared_ptr<detail::server_core> core_;
};

} // namespace v0
} // namespace otpkv

// The engine (event loops, connections, deferred replies) and the members above.
#include <otpkv/net/detail/server_loop.hpp>
