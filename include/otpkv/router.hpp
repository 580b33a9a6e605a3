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
/// Requests arriving on a peer connection (one that greeted with `OTPKV-PEER`, see
/// command.hpp) are run here whatever the table says: a forwarded request is never
/// forwarded again, so nodes whose tables disagree cannot loop; the bucket is simply looked
/// up where the request landed. A SUBSCRIBE to another node's bucket is relayed through a
/// connection of its own to the owner: the client gets the owner's events through the node
/// it is connected to.
///
/// A router is a process: it exits when stopped, or when its client's I/O thread fails (a
/// supervisor then restarts it, and the server after it). Host programs use it without a
/// server too: `call`/`send` take any command, `create`/`put`/`get`/`erase` a bucket
/// operation, and both go to the owner.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/detail/callback.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/process.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/route.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// A router's settings.
struct router_options {
    /// This node's name: entries naming it are local.
    std::string self = "nonode";
    /// The table, in order; empty: every bucket is local.
    std::vector<route_entry> routes;
    /// Timeouts, retries and pool size of the connections to other nodes (`self` is taken
    /// from above).
    client_options client;
};

/// Where a bucket's requests go.
struct route_target {
    enum class kind : std::uint8_t {
        local,  ///< this node
        remote, ///< another node: `node` is its index in `router::nodes()`
        none    ///< no entry covers the name: `ERROR no route`
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

    /// Stops the I/O thread: requests in flight fail as unavailable, relayed streams end.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = default_shutdown) override;

  private:
    friend request_handler router_handler(std::shared_ptr<router> r);
    struct handler_state;
    router() = default;
    void run_local(const command& cmd, std::string& out, session& s, bool peer);
    void forward(const command& cmd, std::size_t node, session& s);
    void forward_subscribe(const command& cmd, std::size_t node, session& s);
    [[nodiscard]] routed_reply operation(const command& cmd);

    router_options options_;
    std::shared_ptr<otpkv::registry> registry_;
    std::shared_ptr<node_client> client_;
    monitor_handle client_monitor_;
    /// By first byte: `local_slot`, `no_route_slot`, or a node index.
    std::array<std::uint32_t, 256> table_{};
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

/// A forwarded request's reply as relayed: the owner's bytes, or `ERROR node <name>
/// unavailable` when it gave none.
[[nodiscard]] inline std::string relayed(std::optional<std::string> reply, std::string_view node) {
    return reply ? std::move(*reply)
                 : format_reply(otpkv::reply::error(error_code::node_unavailable, node));
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
        for (const auto& e : options.routes) {
            std::uint32_t slot = local_slot;
            if (e.node != options.self) {
                slot = 0;
                while (slot < nodes.size() && nodes[slot].name != e.node) {
                    ++slot;
                }
                if (slot == nodes.size()) {
                    nodes.push_back({e.node, e.host, e.port});
                }
            }
            slots.push_back(slot);
        }
        r->table_.fill(options.routes.empty() ? local_slot : no_route_slot);
        for (std::size_t i = options.routes.size(); i-- > 0;) {
            for (unsigned b = options.routes[i].first; b <= options.routes[i].last; ++b) {
                r->table_[b] = slots[i];
            }
        }
        // Two addresses for one node is a mistake in the table, not something to guess at.
        for (const auto& e : options.routes) {
            for (const auto& n : nodes) {
                if (n.name == e.node && (n.host != e.host || n.port != e.port)) {
                    throw std::invalid_argument(
                        "routes give node " + e.node + " two addresses: " + n.host + ":" +
                        std::to_string(n.port) + " and " + e.host + ":" + std::to_string(e.port));
                }
            }
        }
        options.client.self = options.self;
        auto client = node_client::start(std::move(nodes), options.client);
        if (!client) {
            r->notify_exit(client.error().reason);
            return client.error();
        }
        r->client_ = std::move(client).value();
        r->registry_ = std::move(reg);
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
        std::uint64_t& context = s.context();
        if (cmd.kind == command_kind::unknown) {
            if (parse_peer_greeting(s.line())) {
                context = detail::peer_connection_mark;
                s.mark_peer(); // no idle timeout (the heartbeat watches it); EOF ends a stream
                out.append(peer_greeting_line(self->options_.self));
                return;
            }
            append_reply(out, reply::unknown_command());
            return;
        }
        if (context == detail::peer_connection_mark) {
            self->run_local(cmd, out, s, true);
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

inline void router::run_local(const command& cmd, std::string& out, session& s, bool peer) {
    const reply_outcome outcome = run_in_session(cmd, *registry_, out, s);
    if (peer && outcome.kind == reply_kind::subscribed) {
        out.append(peer_subscribed).append("\r\n"); // the relaying node waits for it
    }
}

inline void router::forward(const command& cmd, std::size_t node, session& s) {
    const std::string_view name = client_->nodes()[node].name;
    client_->request(
        node, request_line(cmd), cmd.kind, s.id(),
        [d = s.defer(), name, kind = cmd.kind](std::optional<std::string> reply) mutable {
            std::string bytes = detail::relayed(std::move(reply), name);
            // protocol.md's closing errors close the client's connection too.
            const bool closes = closes_connection(read_reply(kind, bytes).outcome);
            d.complete(std::move(bytes), closes);
        });
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
    callbacks.ended = [state] { state->stream.end(); };
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
    const route_target to = route(cmd.bucket);
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
    const std::string_view name = client_->nodes()[to.node].name;
    client_->request(to.node, request_line(cmd), cmd.kind, affinity,
                     [done = std::move(done), name](std::optional<std::string> reply) {
                         done(detail::relayed(std::move(reply), name));
                     });
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
    client_monitor_.cancel();
    client_->stop(exit_reason::shutdown(), wait);
    notify_exit(reason);
    return *exited();
}

} // namespace v0
} // namespace otpkv
