// SPDX-License-Identifier: MIT
/// @file
/// The router: which node owns a bucket, and getting a request there (the guide's
/// `KV.Router`, without its failures).
///
/// The routing table is a list of `route_entry`s (route.hpp: `FIRST-LAST=NAME@HOST:PORT`),
/// matched on a bucket name's first byte, inclusive; the first entry that contains the byte
/// wins. Entries naming this node (`router_options::self`) are run here, against the
/// registry; others are forwarded to their node over `node_client`'s pooled connections and
/// the owner's reply is relayed byte for byte. An empty table makes every bucket local (a
/// single node); in a non-empty one, a name whose first byte no entry covers gets
/// `ERROR no route`.
/// An owner that is down, unreachable or does not answer within the request timeout gives
/// `ERROR node <name> unavailable`, quickly once it is known to be down, and only for its
/// buckets; it is retried in the background and used again once it is back.
///
/// An entry that names several nodes is a replicated range (replication.hpp): its requests
/// go through the router's `replicator`, writes to the head of the range's chain and GET and
/// SUBSCRIBE to its tail, run here when this node is that one and forwarded otherwise; a
/// client connection's pipelined requests to such a range keep their order: writes may be
/// in flight together, and reads, but a request of the other kind waits for the replies
/// before it (`router::chained`). It needs
/// `router_options::membership` (etcd in kv_server): without it `start` fails, saying why.
///
/// Requests arriving on a peer connection (one whose handshake proved the cluster cookie, see
/// command.hpp, "Between nodes") are run here whatever the table says: a forwarded request is
/// never forwarded again, so nodes whose tables disagree cannot loop; the bucket is simply
/// looked up where the request landed. Only another node of the table can become a peer, and
/// only with the cookie: a handshake that fails gets `ERROR not a peer`, its connection is
/// closed, and nothing sent after it runs (the router tells `client.log` why). Peer
/// connections tag requests with ids (command.hpp, "Between nodes"), and take lines
/// `peer_line_margin` longer than `max_line`, so a client's line of `max_line` bytes reaches
/// the owner whole behind its id (and the head's successors behind the replication header).
/// A SUBSCRIBE to another node's bucket is relayed over the pooled connections to the owner,
/// multiplexed (the owner tags each stream's events with its id and pushes them through
/// `session::channel` while the connection goes on serving): the client gets the owner's
/// events through the node it is connected to, and no number of relayed subscriptions takes
/// more of the owner's connection slots than the pool. When the connection to the owner is
/// lost, a relayed subscriber gets `ERROR node <name> unavailable` before its connection is
/// closed; when the bucket exits, a plain close.
///
/// `INFO [SECTION] [NODE]` (command.hpp) is answered from `router_options::info`, the node's
/// own look inside itself: with no NODE, or this node's name, here (`UNKNOWN COMMAND` when
/// there is no provider, as from a node that does not know the verb); naming another node of
/// the table, forwarded to it as `INFO [SECTION]` over the pooled connections and its reply
/// relayed unchanged (the guide's remote `which_children`); `ERROR node <name> unavailable`
/// when that node is down or does not answer within the request timeout, and
/// `ERROR no route` for a name the table does not have. A peer's INFO always runs here. A
/// reply past `client_options::max_info_reply` (4 MiB) is cut: its connection is closed and
/// the request fails as unavailable. `fetch_info` does the same for a host program (the admin
/// port's `/cluster.json`).
///
/// Events (`router_options::log`): `node_up`, `node_down`, `peer_refused` and
/// `peer_protocol_error` from its node_client (net/client.hpp), and `peer_refused` for the
/// handshakes its handler refuses (fields `connection=` and `count=`; at most one line per
/// `refused_log_interval`, whose `count=` tells how many refusals it stands for).
/// `snapshot` shows the table and every other node: up or down, requests in flight, forwarded
/// and failed, pooled connections, and its last error.
///
/// A router is a process: it exits when stopped, or when its client's I/O thread fails (a
/// supervisor then restarts it, and the server after it). Host programs use it without a
/// server too: `call`/`send` take any command, `create`/`put`/`get`/`erase` a bucket
/// operation, and both go to the owner.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/detail/callback.hpp>
#include <otpkv/detail/random.hpp>
#include <otpkv/log.hpp>
#include <otpkv/membership.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/process.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/replication.hpp>
#include <otpkv/route.hpp>
#include <otpkv/snapshot.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// A router's settings.
struct router_options {
    /// This node's name: entries naming it are local.
    std::string self = "nonode";
    /// The table, in order; empty: every bucket is local.
    std::vector<route_entry> routes;
    /// Timeouts, retries and pool size of the connections to other nodes (`self` and
    /// `cookie` are taken from here). Its `log` is also told of the peers the router's
    /// handler refuses.
    client_options client{};
    /// The cluster cookie: the secret that every node of the cluster is given, and that
    /// peers prove they know (never sent). Needed when the table names other nodes; a node
    /// without one accepts no peer.
    std::string cookie{};
    /// Where it reports peers going up and down and peers refused (default: nowhere). Also
    /// its client's `client_options::event_log`, unless that has a sink of its own.
    logger log{};
    /// This node's `INFO`: the reply's lines for a SECTION word as the request spelled it
    /// (any letter case; empty: every section), each ending in CRLF, without the final `OK`
    /// (which the router adds; a last line without its line end gets one). None of them may
    /// be `OK`, and the first may not be `NOT FOUND`, `UNKNOWN COMMAND` or start with
    /// `ERROR ` (command.hpp, `read_reply`). Called on the server's event-loop threads,
    /// several at once, and by `fetch_info`'s callers: it must be thread-safe and quick (a
    /// snapshot, rendered). Empty: `INFO` gets `UNKNOWN COMMAND` here. The node sets it.
    std::function<std::string(std::string_view section)> info{};
    /// The membership authority of the replicated ranges (entries naming several nodes;
    /// replication.hpp): required when there are any, unused otherwise.
    std::shared_ptr<view_service> membership{};
    /// A replicated range's chain length: 0 for as many nodes as its entry names.
    std::size_t replicas = 0;
    /// **Tests only** (replication_options::unsafe_ack_at_head).
    bool unsafe_ack_at_head = false;
    /// The handler's `peer_refused` events come at most once per this interval; each tells
    /// in `count=` the refusals since the last one (a flood of bad greetings is one line a
    /// second). Zero: one event per refusal.
    std::chrono::milliseconds refused_log_interval{1000};
};

/// What `router::fetch_info` got from a node.
struct info_reply {
    /// True when the node answered with its lines (the reply ended in `OK`).
    bool ok = false;
    /// `ok`: the lines, each with its line end, the final `OK` left out.
    std::string lines{};
    /// Not `ok`: why, as `/cluster.json` shows it: the reason of an `ERROR` reply
    /// (`node n2 unavailable`, `no route`), else the reply's first line (`UNKNOWN COMMAND`:
    /// it has no INFO, or the request was not a valid INFO).
    std::string error{};
    /// The reply exactly as it came.
    std::string bytes{};
};

/// Where a bucket's requests go.
struct route_target {
    enum class kind : std::uint8_t {
        local,  ///< this node
        remote, ///< another node: `node` is its index in `router::nodes()`
        none,   ///< no entry covers the name: `ERROR no route`
        chain   ///< a replicated range: `node` is its index among them (replication.hpp)
    };
    kind where = kind::none;
    std::size_t node = 0;
    /// Equal when both fields are.
    friend bool operator==(const route_target&, const route_target&) = default;
};

/// The routing table and the way to the owner of every bucket.
///
/// Thread safety: every member may be called from any thread.
class router : public process {
  public:
    /// Starts the connections' I/O thread (no connection is opened until it is used).
    /// Errors: `start_failed` when two entries give one node different addresses.
    [[nodiscard]] static result<std::shared_ptr<router>> start(std::shared_ptr<registry> reg,
                                                               router_options options = {});
    /// Stops it if it still runs.
    inline ~router() override; // inline: see ~process
    router(const router&) = delete;
    router& operator=(const router&) = delete;

    /// This node's name.
    [[nodiscard]] const std::string& self() const noexcept { return options_.self; }
    /// The table.
    [[nodiscard]] const std::vector<route_entry>& routes() const noexcept {
        return options_.routes;
    }
    /// The other nodes the table names, each once, in order of first appearance.
    [[nodiscard]] const std::vector<peer_node>& nodes() const noexcept;
    /// The registry local requests run against.
    [[nodiscard]] const std::shared_ptr<otpkv::registry>& registry() const noexcept {
        return registry_;
    }
    /// Where `bucket`'s requests go. O(1): a table of 256 first bytes.
    [[nodiscard]] route_target route(std::string_view bucket) const noexcept;
    /// The state of the node named `name` (`down` for a name it does not know).
    [[nodiscard]] node_status status(std::string_view name) const noexcept;
    /// Subscribes to other nodes going up and down (`Node.monitor`); callbacks run on the
    /// router's I/O thread and must not block.
    [[nodiscard]] subscription monitor_nodes(std::function<void(const node_event&)> callback);
    /// Opens the connections to every other node now instead of on first use.
    void connect_all();

    /// Sends `cmd` to its owner and hands the reply's exact bytes to `done`: at once (before
    /// returning) for a local bucket, a missing route or a node known to be down; otherwise
    /// later, from the router's I/O thread. Requests with the same `affinity` keep their
    /// order. SUBSCRIBE is not a request with one reply: it gets `UNKNOWN COMMAND` here
    /// (subscribe to a local bucket through the registry, or serve a connection).
    void send(const command& cmd, std::function<void(std::string reply)> done,
              std::uint64_t affinity = 0);
    /// INFO goes where its NODE says (the file's comment): here at once, or to that node.
    /// `send`, waiting for the reply. Not from the router's own thread (a monitor callback).
    [[nodiscard]] std::string call(const command& cmd, std::uint64_t affinity = 0);
    /// `CREATE bucket` on its owner.
    [[nodiscard]] routed_reply create(std::string_view bucket);
    /// `PUT bucket key value` on its owner.
    [[nodiscard]] routed_reply put(std::string_view bucket, std::string_view key,
                                   std::string_view value);
    /// `GET bucket key` on its owner: `kind == value` with the value (empty: absent).
    [[nodiscard]] routed_reply get(std::string_view bucket, std::string_view key);
    /// `DELETE bucket key` on its owner.
    [[nodiscard]] routed_reply erase(std::string_view bucket, std::string_view key);

    /// `INFO section node` as a client would send it (`node` empty or this node's name:
    /// here; `section` empty: all), its reply handed to `done`: at once (before returning)
    /// when it is answered here, for a name the table does not have, a node known to be
    /// down, or a `section` that is not a section word or a `node` that is not a node name
    /// (`UNKNOWN COMMAND`, as for such a line); otherwise later,
    /// from the router's I/O thread (within the request timeout). `done` must not block.
    /// From any thread. The admin port's `/cluster.json` asks each node for `INFO JSON`.
    void fetch_info(std::string node, std::string section, std::function<void(info_reply)> done);

    /// This node, the table (each entry as `route.hpp` writes it) and every other node:
    /// its address, whether it is up now (as the last request or heartbeat found it), its
    /// counters (`node_client::stats`) and its last error; and the handshakes refused here.
    /// Cheap: no lock on any request's path is taken.
    [[nodiscard]] router_snapshot snapshot() const;

    /// Stops the I/O thread: requests in flight fail as unavailable, relayed streams end.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = default_shutdown) override;

  private:
    friend request_handler router_handler(std::shared_ptr<router> r);
    struct handler_state;
    struct peer_streams;
    router() = default;
    void run_peer(session& s, std::string& out);
    [[nodiscard]] bool run_replicated(const command& cmd, std::string_view line,
                                      const std::string& header, std::string& out, session& s);
    void peer_subscribe(const command& cmd, std::uint64_t id, std::string& out, session& s);
    void cancel_peer_stream(std::uint64_t id, session& s);
    void run_local(const command& cmd, std::string& out, session& s, bool peer);
    void append_info(std::string_view section, std::string& out) const;
    void info(const command& cmd, std::string& out, session& s);
    [[nodiscard]] route_target route_node(std::string_view node) const noexcept;
    void handshake(std::string& out, session& s);
    void log_refused(const session& s, std::string why);
    void forward(const command& cmd, std::size_t node, session& s);
    void forward_subscribe(const command& cmd, std::size_t node, session& s);
    void chained(const command& cmd, std::size_t range, std::string& out, session& s);
    [[nodiscard]] routed_reply operation(const command& cmd);

    router_options options_;
    std::shared_ptr<otpkv::registry> registry_;
    std::shared_ptr<node_client> client_;
    monitor_handle client_monitor_;
    /// By first byte: `local_slot`, `no_route_slot`, or a node index.
    std::array<std::uint32_t, 256> table_{};
    /// The streams of each peer connection that subscribed here, by its session id.
    std::mutex peers_mutex_;
    std::unordered_map<std::uint64_t, std::shared_ptr<peer_streams>> peers_;
    /// Handshakes the handler refused (a failure path only), and their aggregated events.
    std::atomic<std::size_t> refused_{0};
    std::mutex refused_mutex_;
    std::chrono::steady_clock::time_point refused_next_{};
    std::size_t refused_unlogged_ = 0;
    std::shared_ptr<replicator> replicator_; // null without replicated ranges
    static constexpr std::uint32_t chain_slot_base = 0x80000000;
    static constexpr std::uint32_t local_slot = 0xffffffff;
    static constexpr std::uint32_t no_route_slot = 0xfffffffe;
};

/// The server's request handler for `r`: routes each request, runs the local ones, forwards
/// the others (their replies come back through `session::defer`, in order), relays remote
/// SUBSCRIBEs, and answers other nodes' greetings (their requests then always run here).
/// The handler keeps the router alive.
[[nodiscard]] request_handler router_handler(std::shared_ptr<router> r);

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {
/// The `session::context` mark of a peer's connection.
inline constexpr std::uint64_t peer_connection_mark = 0x70656572; // "peer"
/// A client connection's `session::context`: the kind of its last request to a replicated
/// range (`router::chained`), 0 before the first.
inline constexpr std::uint64_t client_read_mark = 1;
inline constexpr std::uint64_t client_write_mark = 2;
inline constexpr std::uint64_t client_stream_mark = 3;
/// The `session::context` mark of a connection whose greeting was answered: its next line
/// must be its proof. `session::storage` holds the proof expected, then the peer's name.
inline constexpr std::uint64_t peer_greeted_mark = 0x6772656574; // "greet"

/// A forwarded request's reply as relayed: the owner's bytes, or `ERROR node <name>
/// unavailable` when it gave none.
[[nodiscard]] inline std::string relayed(std::optional<std::string> reply, std::string_view node) {
    return reply ? std::move(*reply)
                 : format_reply(otpkv::reply::error(error_code::node_unavailable, node));
}

/// A `replicator::later_fn` over a session: the reply is deferred, behind `header` (a peer
/// reply's `=<id>` line; empty for a client's).
[[nodiscard]] inline replicator::later_fn defer_into(session& s, std::string header = {}) {
    return [&s, header = std::move(header)]() -> replicator::completion {
        auto d = std::make_shared<deferred_reply>(s.defer());
        return [d, header](std::string bytes) {
            d->complete(header.empty() ? std::move(bytes) : header + bytes);
        };
    };
}
} // namespace detail

inline result<std::shared_ptr<router>> router::start(std::shared_ptr<otpkv::registry> reg,
                                                     router_options options) {
    std::shared_ptr<router> r(new router());
    try {
        // The other nodes, each once, in order of first appearance; then the table, walked
        // backwards so that the first entry covering a byte is the one left standing.
        std::vector<peer_node> nodes;
        std::vector<std::uint32_t> slots;
        std::vector<route_entry> chained;
        for (const auto& e : options.routes) {
            for (const otpkv::route_node& n : route_nodes(e)) {
                if (n.name != options.self &&
                    std::none_of(nodes.begin(), nodes.end(),
                                 [&](const peer_node& p) { return p.name == n.name; })) {
                    nodes.push_back({n.name, n.host, n.port});
                }
            }
            std::uint32_t slot = local_slot;
            if (!e.replicas.empty()) {
                slot = chain_slot_base + static_cast<std::uint32_t>(chained.size());
                chained.push_back(e);
            } else if (e.node != options.self) {
                slot = 0;
                while (nodes[slot].name != e.node) {
                    ++slot;
                }
            }
            slots.push_back(slot);
        }
        if (!chained.empty() && options.membership == nullptr) {
            const std::string text = to_string(chained.front());
            throw std::invalid_argument(
                "route " + text.substr(0, text.find('=')) + " names " +
                std::to_string(1 + chained.front().replicas.size()) +
                " nodes (a replica set): replication needs a membership authority (etcd)");
        }
        r->table_.fill(options.routes.empty() ? local_slot : no_route_slot);
        for (std::size_t i = options.routes.size(); i-- > 0;) {
            for (unsigned b = options.routes[i].first; b <= options.routes[i].last; ++b) {
                r->table_[b] = slots[i];
            }
        }
        // Two addresses for one node is a mistake in the table, not something to guess at.
        for (const auto& e : options.routes) {
            for (const otpkv::route_node& m : route_nodes(e)) {
                for (const auto& n : nodes) {
                    if (n.name == m.name && (n.host != m.host || n.port != m.port)) {
                        throw std::invalid_argument("routes give node " + m.name +
                                                    " two addresses: " + n.host + ":" +
                                                    std::to_string(n.port) + " and " + m.host +
                                                    ":" + std::to_string(m.port));
                    }
                }
            }
        }
        options.client.self = options.self;
        options.client.cookie = options.cookie;
        if (!options.client.event_log.enabled(log_level::error)) {
            options.client.event_log = options.log; // no sink of its own
        }
        auto client = node_client::start(std::move(nodes), options.client);
        if (!client) {
            r->notify_exit(client.error().reason);
            return client.error();
        }
        r->client_ = std::move(client).value();
        r->registry_ = std::move(reg);
        if (!chained.empty()) {
            replication_options ro;
            ro.self = options.self;
            ro.replicas = options.replicas;
            ro.view = options.membership;
            ro.log = options.log;
            ro.unsafe_ack_at_head = options.unsafe_ack_at_head;
            r->replicator_ =
                replicator::start(r->registry_, r->client_, std::move(chained), std::move(ro));
        }
        r->options_ = std::move(options);
        // The router exits with its client's thread (a failure there is the router's).
        r->client_monitor_ = r->client_->monitor(
            [signal = r->signal()](const exit_reason& why) { signal->exit(why); });
    } catch (...) {
        return r->start_failed(std::current_exception());
    }
    return r;
}

inline router::~router() {
    stop_if_alive(); // not after a failed start: that exit is recorded already
}

inline const std::vector<peer_node>& router::nodes() const noexcept {
    return client_->nodes();
}

inline route_target router::route(std::string_view bucket) const noexcept {
    if (bucket.empty()) { // never from the protocol (a token is never empty)
        return {options_.routes.empty() ? route_target::kind::local : route_target::kind::none, 0};
    }
    const std::uint32_t slot = table_[static_cast<unsigned char>(bucket.front())];
    if (slot == local_slot) {
        return {route_target::kind::local, 0};
    }
    if (slot == no_route_slot) {
        return {route_target::kind::none, 0};
    }
    if (slot >= chain_slot_base) {
        return {route_target::kind::chain, slot - chain_slot_base};
    }
    return {route_target::kind::remote, slot};
}

inline node_status router::status(std::string_view name) const noexcept {
    const auto i = client_->find(name);
    return i ? client_->status(*i) : node_status::down;
}

inline subscription router::monitor_nodes(std::function<void(const node_event&)> callback) {
    return client_->monitor_nodes(std::move(callback));
}

inline void router::connect_all() {
    for (std::size_t i = 0; i < client_->nodes().size(); ++i) {
        client_->connect(i);
    }
}

inline request_handler router_handler(std::shared_ptr<router> r) {
    // The router holds no server, so this is no cycle.
    return [self = std::move(r)](const command& cmd, std::string& out, session& s) {
        const std::uint64_t context = s.context();
        if (context == detail::peer_greeted_mark ||
            (cmd.kind == command_kind::unknown && is_peer_handshake(s.line()))) {
            self->handshake(out, s);
            return;
        }
        if (context == detail::peer_connection_mark) {
            self->run_peer(s, out);
            return;
        }
        if (cmd.kind == command_kind::unknown) {
            append_reply(out, reply::unknown_command());
            return;
        }
        if (cmd.kind == command_kind::info) {
            self->info(cmd, out, s);
            return;
        }
        const route_target to = self->route(cmd.bucket);
        switch (to.where) {
        case route_target::kind::local:
            self->run_local(cmd, out, s, false);
            return;
        case route_target::kind::none:
            append_reply(out, reply::error(error_code::no_route));
            return;
        case route_target::kind::chain:
            self->chained(cmd, to.node, out, s);
            return;
        case route_target::kind::remote:
            if (self->client_->status(to.node) == node_status::down) {
                // Known down: answered here, without deferring or waking the client.
                append_reply(out, reply::error(error_code::node_unavailable,
                                               self->client_->nodes()[to.node].name));
            } else if (cmd.kind == command_kind::subscribe) {
                self->forward_subscribe(cmd, to.node, s);
            } else {
                self->forward(cmd, to.node, s);
            }
            return;
        }
    };
}

// The accepting side of the handshake (command.hpp, "Between nodes"). What step 4 needs
// from step 2 (the proof expected, and the name for the log) is kept in the connection's
// `session::storage`, freed once the handshake ends: B's nonce is fresh from the system's
// generator, and nothing is kept in the router for connections that greet and go away.
inline void router::handshake(std::string& out, session& s) {
    std::uint64_t& context = s.context();
    std::string& stored = s.storage();
    const std::string_view line = s.line();
    const std::string& cookie = options_.cookie;
    std::string why;
    if (context != detail::peer_greeted_mark && context != detail::peer_connection_mark) {
        // A greeting (on a connection that may have been a client's so far).
        const auto hello = parse_peer_greeting(line);
        std::string nonce;
        if (!hello) {
            why = "not a valid greeting: \"" + escaped(line.substr(0, 100)) + "\"";
        } else if (!client_->find(hello->name) || cookie.empty()) {
            why = "node " + escaped(hello->name) + " is not in the routing table";
        } else if (nonce = detail::new_peer_nonce(); nonce.empty()) {
            why = "no random bytes for a nonce";
        } else {
            out.append(peer_answer_line(
                options_.self, nonce,
                peer_accept_proof(cookie, options_.self, hello->name, hello->nonce, nonce)));
            stored = peer_connect_proof(cookie, hello->name, options_.self, hello->nonce, nonce);
            stored.append(hello->name);
            context = detail::peer_greeted_mark;
            return;
        }
    } else if (context == detail::peer_greeted_mark) {
        const std::size_t proof_size = 2 * peer_nonce_bytes;
        const std::string_view expected = std::string_view(stored).substr(0, proof_size);
        const std::string name(std::string_view(stored).substr(proof_size));
        const auto proof = parse_peer_proof(line);
        if (proof && peer_proof_matches(expected, *proof)) {
            out.append(detail::ok_line).append(detail::line_end);
            context = detail::peer_connection_mark;
            s.mark_peer(); // no idle timeout (the heartbeat watches it); EOF ends its streams
            std::string().swap(stored);
            return;
        }
        why = proof ? "node " + name + " gave a wrong proof (is its cookie another?)"
                    : "node " + name + " sent \"" + escaped(line.substr(0, 100)) +
                          "\" instead of its proof";
    } else {
        why = "a handshake line on a connection that is a peer's already";
    }
    append_reply(out, reply::error(error_code::not_a_peer));
    s.close_after_reply();
    std::string().swap(stored);
    if (options_.client.log) {
        options_.client.log("refused a peer on connection " + std::to_string(s.id()) + ": " + why);
    }
    log_refused(s, std::move(why));
}

// A flood of bad greetings (anyone may connect and send one) must not become a flood of
// lines: the first refusal of an interval is told at once, with the number of refusals since
// the last one told; the others are only counted. Only refusals take the lock.
inline void router::log_refused(const session& s, std::string why) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    if (!options_.log.enabled(log_level::warning)) {
        return;
    }
    std::size_t count = 0;
    {
        const auto now = std::chrono::steady_clock::now();
        const std::lock_guard lock(refused_mutex_);
        ++refused_unlogged_;
        if (now >= refused_next_) {
            count = std::exchange(refused_unlogged_, 0);
            refused_next_ = now + options_.refused_log_interval;
        }
    }
    if (count == 0) {
        return;
    }
    log_event e;
    e.level = log_level::warning;
    e.what = "peer_refused";
    e.reason = std::move(why);
    e.fields = {{"connection", std::to_string(s.id())}, {"count", std::to_string(count)}};
    options_.log.log(std::move(e));
}

// A peer's replication line, or its request for a bucket of a replicated range (run only by
// that range's head or tail, which may answer later): true when it was one of those.
inline bool router::run_replicated(const command& cmd, std::string_view line,
                                   const std::string& header, std::string& out, session& s) {
    const route_target to = route(cmd.bucket);
    const bool chained_request =
        (cmd.kind == command_kind::create || cmd.kind == command_kind::put ||
         cmd.kind == command_kind::get || cmd.kind == command_kind::erase) &&
        to.where == route_target::kind::chain;
    if (!chained_request &&
        (cmd.kind != command_kind::unknown || !line.starts_with(detail::repl_verb))) {
        return false; // an ordinary peer request: nothing built for it here
    }
    std::string mine;
    const auto later = detail::defer_into(s, header);
    if (chained_request) {
        replicator_->local_request(to.node, cmd, mine, later);
    } else if (!replicator_->peer_line(line, mine, later)) {
        return false;
    }
    if (!mine.empty()) {
        out.append(header).append(mine);
    }
    return true;
}

inline void router::run_peer(session& s, std::string& out) {
    // `<id> <request>` (command.hpp, "Between nodes"): run here, whatever the table says,
    // behind the header `=<id>` that lets the relaying node match the reply to its request.
    const auto request = parse_peer_request(s.line());
    if (!request) {
        // Not a line of this protocol: nothing of it runs, and the connection ends. The
        // error is untagged, so the other node closes its side too.
        append_reply(out, reply::error(error_code::internal));
        s.close_after_reply();
        return;
    }
    std::string header(1, peer_reply_mark);
    append_peer_id(header, request->id);
    header.append("\r\n");
    const command cmd = parse(request->rest);
    if (replicator_ != nullptr && run_replicated(cmd, request->rest, header, out, s)) {
        return;
    }
    out.append(header);
    if (cmd.kind == command_kind::subscribe) {
        peer_subscribe(cmd, request->id, out, s);
        return;
    }
    if (cmd.kind == command_kind::info) {
        append_info(cmd.section, out); // here, whatever node it names: never forwarded again
        return;
    }
    if (cmd.kind == command_kind::unknown) {
        // `UNSUBSCRIBE <id>`; anything else (a heartbeat, `<id>` alone, too) is unknown.
        std::array<std::string_view, 2> tokens{};
        if (detail::split_tokens(request->rest, tokens) == 2 && tokens[0] == peer_unsubscribe) {
            if (const auto stream = parse_peer_id(tokens[1])) {
                cancel_peer_stream(*stream, s);
                append_reply(out, reply::ok());
                return;
            }
        }
        append_reply(out, reply::unknown_command());
        return;
    }
    run_local(cmd, out, s, true);
}

/// What the owner keeps of one peer connection's streams (command.hpp, "Between nodes").
/// The subscriptions' callbacks run on the publishers' threads and push through `sink`; the
/// table is the connection's thread's (and `on_close`'s), under `mutex`.
struct router::peer_streams {
    /// The connection's channel, one push at a time (each push is whole lines).
    struct sink {
        std::mutex mutex;
        event_stream channel;
        void push(std::string_view bytes) {
            const std::lock_guard lock(mutex);
            channel.push(bytes);
        }
    };
    struct stream {
        subscription events;
        monitor_handle exited;
        std::shared_ptr<std::atomic<bool>> ended; // `!<id>` sent (bucket exited, or cancelled)
    };
    std::shared_ptr<sink> out = std::make_shared<sink>();
    std::mutex mutex;
    std::unordered_map<std::uint64_t, stream> streams;
};

inline void router::peer_subscribe(const command& cmd, std::uint64_t id, std::string& out,
                                   session& s) {
    std::shared_ptr<peer_streams> streams;
    {
        const std::lock_guard lock(peers_mutex_);
        auto& slot = peers_[s.id()];
        if (slot == nullptr) {
            slot = std::make_shared<peer_streams>();
            streams = slot;
            // The connection going away (closed, cut for not reading, server stopped) drops
            // its subscriptions. The handler holds the router for as long as the server runs.
            streams->out->channel = s.channel([this, conn = s.id()] {
                std::shared_ptr<peer_streams> gone;
                {
                    const std::lock_guard l(peers_mutex_);
                    const auto found = peers_.find(conn);
                    if (found != peers_.end()) {
                        gone = std::move(found->second);
                        peers_.erase(found);
                    }
                }
                if (gone != nullptr) {
                    std::unordered_map<std::uint64_t, peer_streams::stream> dropped;
                    const std::lock_guard l(gone->mutex);
                    dropped.swap(gone->streams);
                }
            });
        }
        streams = slot;
    }
    std::string end_line(1, peer_end_mark);
    append_peer_id(end_line, id);
    end_line.append("\r\n");
    peer_streams::stream entry;
    entry.ended = std::make_shared<std::atomic<bool>>(false);
    const reply_outcome outcome = run(cmd, *registry_, out, [&](registry::bucket_type& b) {
        entry.events = b.subscribe([sink = streams->out, id](const auto& e) {
            std::string line(1, peer_event_mark);
            append_peer_id(line, id);
            line.push_back(' ');
            if (e.kind == bucket_event_kind::put) {
                append_set_event(line, e.key,
                                 e.value ? std::string_view(*e.value) : std::string_view());
            } else {
                append_deleted_event(line, e.key);
            }
            sink->push(line);
        });
        entry.exited =
            b.monitor([sink = streams->out, ended = entry.ended, end_line](const exit_reason&) {
                if (!ended->exchange(true)) {
                    sink->push(end_line); // after the stream's last event
                }
            });
    });
    if (outcome.kind != reply_kind::subscribed) {
        return; // NOT FOUND, written by `run`
    }
    // Its events go through the channel, which the loop adds to the output after this reply.
    out.append(peer_subscribed).append("\r\n");
    std::vector<peer_streams::stream> finished; // ended streams are forgotten here
    const std::lock_guard lock(streams->mutex);
    for (auto it = streams->streams.begin(); it != streams->streams.end();) {
        if (it->second.ended->load()) {
            finished.push_back(std::move(it->second));
            it = streams->streams.erase(it);
        } else {
            ++it;
        }
    }
    streams->streams[id] = std::move(entry);
}

inline void router::cancel_peer_stream(std::uint64_t id, session& s) {
    std::shared_ptr<peer_streams> streams;
    {
        const std::lock_guard lock(peers_mutex_);
        const auto found = peers_.find(s.id());
        if (found == peers_.end()) {
            return;
        }
        streams = found->second;
    }
    peer_streams::stream gone;
    {
        const std::lock_guard lock(streams->mutex);
        const auto found = streams->streams.find(id);
        if (found == streams->streams.end()) {
            return; // ended already: its `!<id>` went out
        }
        gone = std::move(found->second);
        streams->streams.erase(found);
    }
    // Cancelled first (waiting for an event being published), so `!<id>` is its last line.
    gone.events.cancel();
    gone.exited.cancel();
    if (!gone.ended->exchange(true)) {
        std::string end_line(1, peer_end_mark);
        append_peer_id(end_line, id);
        end_line.append("\r\n");
        streams->out->push(end_line);
    }
}

inline void router::run_local(const command& cmd, std::string& out, session& s, bool) {
    run_in_session(cmd, *registry_, out, s); // a peer's SUBSCRIBE never comes here
}

inline void router::append_info(std::string_view section, std::string& out) const {
    if (!options_.info) {
        append_reply(out, reply::unknown_command()); // as from a node without INFO
        return;
    }
    const std::string text = options_.info(section);
    out.append(text);
    if (!text.empty() && text.back() != '\n') {
        out.append(detail::line_end);
    }
    out.append(detail::ok_line).append(detail::line_end);
}

inline route_target router::route_node(std::string_view node) const noexcept {
    if (node.empty() || node == options_.self) {
        return {route_target::kind::local, 0};
    }
    if (const auto i = client_->find(node)) {
        return {route_target::kind::remote, *i};
    }
    return {route_target::kind::none, 0};
}

inline void router::info(const command& cmd, std::string& out, session& s) {
    const route_target to = route_node(cmd.node);
    switch (to.where) {
    case route_target::kind::local:
        append_info(cmd.section, out);
        return;
    case route_target::kind::none:
    case route_target::kind::chain: // not a node: route_node never gives it
        append_reply(out, reply::error(error_code::no_route));
        return;
    case route_target::kind::remote:
        if (client_->status(to.node) == node_status::down) {
            append_reply(
                out, reply::error(error_code::node_unavailable, client_->nodes()[to.node].name));
            return;
        }
        command forwarded = cmd;
        forwarded.node = {}; // the owner is asked about itself: `INFO [SECTION]`
        forward(forwarded, to.node, s);
        return;
    }
}

inline void router::forward(const command& cmd, std::size_t node, session& s) {
    const std::string_view name = client_->nodes()[node].name;
    client_->request(node, request_line(cmd), cmd.kind, s.id(),
                     [d = s.defer(), name](std::optional<framed_reply> reply) mutable {
                         if (!reply) {
                             d.complete(detail::relayed(std::nullopt, name)); // does not close
                             return;
                         }
                         // protocol.md's closing errors close the client's connection too. The
                         // client framed the reply already: its outcome comes with it.
                         const bool closes = closes_connection(reply->outcome);
                         d.complete(std::move(reply->bytes), closes);
                     });
}

// A client's request for a replicated range: run here when this node is the head (writes)
// or the tail (reads, SUBSCRIBE) of the chain as it sees it, else forwarded to that node.
//
// A connection's pipelined requests keep their order although writes and reads run on
// different nodes: writes (CREATE, PUT, DELETE) may be in flight together, as they reach
// the head in order (here, or over the one peer connection their client's `affinity`
// picks) and the head numbers them so; reads may be in flight together, as none changes
// what another sees. A request of the other kind (a GET after a PUT, a PUT after a GET) or
// a SUBSCRIBE waits until every earlier reply is in (`session::run_after_replies`), so it
// sees what came before it and nothing after. The kind last sent is the connection's
// `session::context` (client marks; a peer's connection never comes here).
inline void router::chained(const command& cmd, std::size_t range, std::string& out, session& s) {
    const std::uint64_t kind = cmd.kind == command_kind::get         ? detail::client_read_mark
                               : cmd.kind == command_kind::subscribe ? detail::client_stream_mark
                                                                     : detail::client_write_mark;
    std::uint64_t& last = s.context();
    if ((kind != last || kind == detail::client_stream_mark) && s.run_after_replies()) {
        return; // runs again once the replies before it are in
    }
    last = kind;
    const std::string to = replicator_->target(range, cmd.kind);
    if (to.empty()) {
        append_reply(out, reply::error(error_code::range_unavailable, "no chain yet"));
        return;
    }
    if (to == options_.self) {
        if (cmd.kind == command_kind::subscribe) {
            run_local(cmd, out, s, false);
        } else {
            replicator_->local_request(range, cmd, out, detail::defer_into(s));
        }
        return;
    }
    const auto node = client_->find(to);
    if (!node || client_->status(*node) == node_status::down) {
        append_reply(out, reply::error(error_code::node_unavailable, to));
    } else if (cmd.kind == command_kind::subscribe) {
        forward_subscribe(cmd, *node, s);
    } else {
        forward(cmd, *node, s);
    }
}

/// What a relayed SUBSCRIBE's callbacks share (all on the client's thread).
struct router::handler_state {
    deferred_reply reply;
    event_stream stream;
};

inline void router::forward_subscribe(const command& cmd, std::size_t node, session& s) {
    const std::string_view name = client_->nodes()[node].name;
    auto state = std::make_shared<handler_state>();
    state->reply = s.defer_stream();
    stream_callbacks callbacks;
    callbacks.refused = [state, name](std::optional<std::string> reply) {
        state->reply.complete(detail::relayed(std::move(reply), name));
    };
    callbacks.subscribed = [state, client = std::weak_ptr<node_client>(client_)](std::uint64_t id) {
        // The client's connection closing (or the server stopping) closes the relay.
        state->stream = state->reply.stream([client, id] {
            if (const auto c = client.lock()) {
                c->cancel_stream(id);
            }
        });
    };
    callbacks.data = [state](std::string_view bytes) { return state->stream.push(bytes); };
    callbacks.ended = [state] { state->stream.end(); }; // the bucket exited
    // The owner died (or broke the protocol): the subscriber is told before the close.
    callbacks.lost = [state, name] {
        state->stream.push(format_reply(reply::error(error_code::node_unavailable, name)));
        state->stream.end();
    };
    client_->subscribe(node, std::string(cmd.bucket), std::move(callbacks));
}

inline void router::send(const command& cmd, std::function<void(std::string reply)> done,
                         std::uint64_t affinity) {
    std::string out;
    if (cmd.kind == command_kind::unknown || cmd.kind == command_kind::subscribe) {
        append_reply(out, reply::unknown_command());
        done(std::move(out));
        return;
    }
    const bool info = cmd.kind == command_kind::info;
    const route_target to = info ? route_node(cmd.node) : route(cmd.bucket);
    if (info && to.where == route_target::kind::local) {
        append_info(cmd.section, out);
        done(std::move(out));
        return;
    }
    if (to.where == route_target::kind::local) {
        run(cmd, *registry_, out);
        done(std::move(out));
        return;
    }
    if (to.where == route_target::kind::none) {
        append_reply(out, reply::error(error_code::no_route));
        done(std::move(out));
        return;
    }
    std::size_t node = to.node;
    if (to.where == route_target::kind::chain) {
        const std::string target = replicator_->target(to.node, cmd.kind);
        const auto found = client_->find(target);
        if (target == options_.self) {
            auto shared = std::make_shared<std::function<void(std::string)>>(std::move(done));
            replicator_->local_request(to.node, cmd, out, [shared] {
                return [shared](std::string bytes) { (*shared)(std::move(bytes)); };
            });
            if (!out.empty()) {
                (*shared)(std::move(out));
            }
            return;
        }
        if (!found) {
            append_reply(out, reply::error(error_code::range_unavailable, "no chain yet"));
            done(std::move(out));
            return;
        }
        node = *found;
    }
    const std::string_view name = client_->nodes()[node].name;
    command forwarded = cmd;
    forwarded.node = {}; // an INFO's owner is asked about itself
    client_->request(node, request_line(forwarded), cmd.kind, affinity,
                     [done = std::move(done), name](std::optional<std::string> reply) {
                         done(detail::relayed(std::move(reply), name));
                     });
}

inline void router::fetch_info(std::string node, std::string section,
                               std::function<void(info_reply)> done) {
    // What a client sending `INFO section node` would get; each must be one word of its kind.
    command cmd;
    if ((section.empty() || detail::is_info_section(section)) &&
        (node.empty() || is_node_name(node))) {
        cmd.kind = command_kind::info;
        cmd.section = section;
        cmd.node = node;
    }
    const auto answer = [done = std::move(done)](std::string bytes) {
        info_reply r;
        const routed_reply read = parse_routed_reply(command_kind::info, bytes);
        if (read.kind == reply_kind::ok) {
            r.ok = true;
            r.lines = read.value;
        } else {
            std::string_view first = bytes;
            first = detail::without_cr(first.substr(0, first.find('\n')));
            if (read.kind == reply_kind::error && first.starts_with(detail::error_prefix)) {
                first.remove_prefix(detail::error_prefix.size());
            }
            r.error = std::string(first);
        }
        r.bytes = std::move(bytes);
        done(std::move(r));
    };
    if (cmd.kind != command_kind::info) {
        answer(format_reply(reply::unknown_command()));
        return;
    }
    send(cmd, answer);
}

inline router_snapshot router::snapshot() const {
    router_snapshot snap;
    snap.node = options_.self;
    snap.routes.reserve(options_.routes.size());
    for (const route_entry& e : options_.routes) {
        snap.routes.push_back(to_string(e));
    }
    const std::vector<peer_node>& others = client_->nodes();
    snap.peers.reserve(others.size());
    for (std::size_t i = 0; i < others.size(); ++i) {
        node_stats st = client_->stats(i);
        peer_snapshot p;
        p.name = others[i].name;
        p.address = detail::host_port(others[i]);
        p.up = st.status == node_status::up;
        p.in_flight = st.in_flight;
        p.requests = st.requests;
        p.failures = st.failures;
        p.connections = st.connections;
        p.last_error = std::move(st.last_error);
        snap.peers.push_back(std::move(p));
    }
    snap.peers_refused = refused_.load(std::memory_order_relaxed);
    return snap;
}

inline std::string router::call(const command& cmd, std::uint64_t affinity) {
    return detail::wait_for_callback<std::string>(
        [&](auto done) { send(cmd, std::move(done), affinity); });
}

inline routed_reply router::operation(const command& cmd) {
    if (!is_token(cmd.bucket) || (cmd.kind != command_kind::create && !is_token(cmd.key)) ||
        (cmd.kind == command_kind::put && !is_token(cmd.value))) {
        // Not sendable as a line: it would be read as other tokens.
        return parse_routed_reply(cmd.kind, format_reply(reply::unknown_command()));
    }
    return parse_routed_reply(cmd.kind, call(cmd));
}

inline routed_reply router::create(std::string_view bucket) {
    return operation({command_kind::create, bucket, {}, {}});
}

inline routed_reply router::put(std::string_view bucket, std::string_view key,
                                std::string_view value) {
    return operation({command_kind::put, bucket, key, value});
}

inline routed_reply router::get(std::string_view bucket, std::string_view key) {
    return operation({command_kind::get, bucket, key, {}});
}

inline routed_reply router::erase(std::string_view bucket, std::string_view key) {
    return operation({command_kind::erase, bucket, key, {}});
}

inline exit_reason router::stop(exit_reason reason, timeout wait) {
    if (replicator_ != nullptr) {
        replicator_->stop(); // refuses requests from now on
    }
    client_monitor_.cancel();
    client_->stop(exit_reason::shutdown(), wait);
    notify_exit(reason);
    return *exited();
}

} // namespace v0
} // namespace otpkv
