// SPDX-License-Identifier: MIT
/// @file
/// One node's supervision tree, assembled from a `node_config` the way the guide's
/// application assembles `KV.Supervisor`:
///
/// ```
/// root (rest_for_one)
///  ├── registry          the buckets' names, over its own dynamic supervisor of buckets
///  ├── tasks             a task_supervisor for the host program's work
///  ├── membership        only with `etcd` in the config: this node's window on etcd
///  │                     (etcd.hpp), the authority of the replicated ranges' chains
///  ├── router            the routing table, the connections to the other nodes, and the
///  │                     chains of the replicated ranges (replication.hpp)
///  └── server            the TCP line server, its requests handled by the router
/// ```
///
/// The membership child registers the node in etcd under its own route's address (the
/// address the table gives it; its name alone when no route names it) with a lease of
/// `config.lease`; a restarted one takes a new lease (the old one was revoked on its
/// stop), and the router started after it follows.
///
/// `rest_for_one`, as in the guide: a registry that crashes takes the router and the server
/// started after it down too, and all are restarted in order, so the server never serves a
/// dead registry; a router that fails takes the server with it; a server that crashes is
/// restarted alone, on the same port (also when the config asked for port 0: the port first
/// bound is kept). With no routes in the config, every bucket is local.
///
/// Observing it: `root_options.log` is where the whole node reports (the root supervisor,
/// the registry's and the task supervisor's, the server, the router and the connections to
/// other nodes all get it), and the node itself reports `node_started` (node=, address=)
/// and `node_stopped` (node=, reason). `snapshot()` takes a `node_snapshot`; `INFO` asks it
/// over the wire (the router is given a provider that renders it with `info_text`), and
/// `cluster_json` gathers every node's through the router, for an admin page.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/config.hpp>
#include <otpkv/etcd.hpp>
#include <otpkv/log.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/observer.hpp>
#include <otpkv/process.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/router.hpp>
#include <otpkv/supervisor.hpp>
#include <otpkv/task.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// A running node: a process whose exit is its root supervisor's.
///
/// Thread safety: every member may be called from any thread.
class node : public process {
  public:
    /// Starts the tree. Errors: `start_failed` with the failing child's reason (a port in
    /// use: an `error` reason whose exception is the `std::system_error`, EADDRINUSE, and
    /// whose message names the address).
    /// `client` sets the timeouts, retries and pool of the connections to other nodes, and
    /// where they log (its `self` and `cookie` come from `config`; its `event_log` is
    /// `root_options.log` when empty). A config whose routes name other nodes needs a
    /// `cookie`: without one the router cannot start. `root_options.log` is the node's
    /// logger (see the file's comment); the root's `name` is `root` unless given.
    [[nodiscard]] static result<std::shared_ptr<node>>
    start(node_config config, supervisor_options root_options = {}, client_options client = {});
    /// Stops the tree if it still runs.
    inline ~node() override; // inline: see ~process
    node(const node&) = delete;
    node& operator=(const node&) = delete;

    /// The configuration it was started with (`threads` as given; 0 means hardware threads).
    [[nodiscard]] const node_config& config() const noexcept { return config_; }
    /// The port the server listens on (the real one when the config said 0).
    [[nodiscard]] std::uint16_t port() const;
    /// The address the server listens on, `127.0.0.1:4040`.
    [[nodiscard]] std::string address() const;
    /// `otpkv node NAME listening on ADDR:PORT`: what kv_server prints when it is ready.
    [[nodiscard]] std::string ready_line() const;

    /// The running registry (a new one after a restart); null while it is being restarted.
    [[nodiscard]] std::shared_ptr<otpkv::registry> registry() const;
    /// The running router; null while it is being restarted.
    [[nodiscard]] std::shared_ptr<otpkv::router> router() const;
    /// The running server; null while it is being restarted.
    [[nodiscard]] std::shared_ptr<otpkv::server> server() const;
    /// The running task supervisor; null while it is being restarted.
    [[nodiscard]] std::shared_ptr<task_supervisor> tasks() const;
    /// The root supervisor.
    [[nodiscard]] supervisor& root() const noexcept { return *root_; }

    /// The node now: its tree (from the root down, the registry's buckets and the tasks
    /// included, capped by `options`), its registry, server and router, each part
    /// consistent on its own. A part being restarted is left empty.
    /// Thread safety: any thread but the node's supervisors' own (their start functions).
    [[nodiscard]] node_snapshot snapshot(const snapshot_options& options = {}) const;

    /// Gathers `/cluster.json`: this node's snapshot, and every other node of the routing
    /// table asked for its own (`INFO JSON`) through the router, in table order; a node that
    /// does not answer is shown down with the reason. `done` runs once, on this thread or on
    /// the router's client thread, within the router's request timeout.
    void cluster_json(std::function<void(std::string)> done) const;
    /// Stops the server (no new requests; connections closed), the task supervisor, then
    /// the registry and its buckets, each with its shutdown timeout; exits with `reason`.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = infinity) override;

  private:
    struct children {
        mutable std::mutex mutex;
        std::shared_ptr<otpkv::registry> registry;
        std::shared_ptr<task_supervisor> tasks;
        std::shared_ptr<etcd_view> membership; // null without etcd
        std::shared_ptr<otpkv::router> router;
        std::shared_ptr<otpkv::server> server;
        std::uint16_t port = 0;
        std::string address;
        std::weak_ptr<supervisor> root;
        std::string name;
        std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    };

    static node_snapshot snapshot_of(const children& kids, const snapshot_options& options);

    explicit node(node_config config) : config_(std::move(config)) {}

    node_config config_;
    std::shared_ptr<children> children_ = std::make_shared<children>();
    std::shared_ptr<supervisor> root_;
    monitor_handle root_monitor_;
};

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {
/// A child's start function's process, or, when it failed, the exception it failed with
/// thrown again (the system_error itself, EADDRINUSE say, is then the child's reason).
template <class T> std::shared_ptr<T> started(result<std::shared_ptr<T>> r) {
    if (!r) {
        if (auto e = r.error().reason.exception()) {
            std::rethrow_exception(e);
        }
    }
    return std::move(r).value();
}
} // namespace detail

inline result<std::shared_ptr<node>>
node::start(node_config config, supervisor_options root_options, client_options client) {
    std::shared_ptr<node> n(new node(std::move(config)));
    const std::shared_ptr<children> kids = n->children_;
    kids->port = n->config_.port;
    kids->name = n->config_.node;
    const node_config& cfg = n->config_;
    const logger log = root_options.log;
    if (root_options.name.empty()) {
        root_options.name = "root";
    }
    if (!client.event_log.enabled(log_level::error)) {
        client.event_log = log;
    }
    // A peer's reply carries a value of up to max_line bytes (a GET's, an event's line)
    // behind at most a header's worth: never refused as too long where the node took it.
    client.max_reply = std::max(client.max_reply, peer_line_limit(cfg.max_line));

    child_spec registry_spec{"registry",
                             [kids, max_buckets = cfg.max_buckets, log] {
                                 auto reg = otpkv::registry::start(
                                     {.max_buckets = max_buckets, .log = log});
                                 const std::lock_guard lock(kids->mutex);
                                 kids->registry = reg;
                                 return reg;
                             },
                             restart::permanent, infinity, child_type::supervisor};
    child_spec tasks_spec{"tasks",
                          [kids, log] {
                              auto tasks = task_supervisor::start({.log = log, .name = "tasks"});
                              const std::lock_guard lock(kids->mutex);
                              kids->tasks = tasks;
                              return tasks;
                          },
                          restart::permanent, infinity, child_type::supervisor};
    router_options routing{cfg.node, cfg.routes, client, cfg.cookie};
    routing.log = log;
    routing.replicas = cfg.replicas.value_or(0);
    routing.unsafe_ack_at_head = cfg.unsafe_ack_at_head;
    std::vector<child_spec> specs;
    if (!cfg.etcd.empty()) {
        etcd_options eo;
        eo.endpoints = cfg.etcd;
        eo.node = cfg.node;
        for (const route_entry& e : cfg.routes) {
            for (const route_node& rn : route_nodes(e)) {
                if (rn.name == cfg.node && eo.address.empty()) {
                    eo.address = detail::host_port(peer_node{rn.name, rn.host, rn.port});
                }
            }
        }
        eo.lease = cfg.lease;
        eo.log = log;
        specs.push_back({"membership", [kids, eo] {
                             auto v = detail::started(etcd_view::start(eo));
                             const std::lock_guard lock(kids->mutex);
                             kids->membership = v;
                             return v;
                         }});
    }
    // INFO's text, from the node's snapshot. A weak pointer: the router (held by `kids`)
    // must not keep `kids` alive; and never the node itself, whose last reference dropped on
    // an event loop would stop the node from its own loop.
    routing.info = [weak = std::weak_ptr<children>(kids)](std::string_view section) {
        const std::shared_ptr<children> alive = weak.lock();
        if (alive == nullptr) {
            return std::string();
        }
        return info_text(snapshot_of(*alive, {}),
                         parse_info_section(section).value_or(info_section::all));
    };
    child_spec router_spec{"router", [kids, options = routing] {
                               std::shared_ptr<otpkv::registry> reg;
                               router_options o = options;
                               {
                                   const std::lock_guard lock(kids->mutex);
                                   reg = kids->registry;
                                   o.membership = kids->membership;
                               }
                               auto r = detail::started(otpkv::router::start(reg, std::move(o)));
                               const std::lock_guard lock(kids->mutex);
                               kids->router = r;
                               return r;
                           }};
    server_options options{.bind = cfg.bind,
                           .port = 0,
                           .threads = cfg.threads,
                           .max_line = cfg.max_line,
                           .max_connections = cfg.max_connections,
                           .max_subscriber_memory = cfg.max_subscriber_memory,
                           .idle_timeout = cfg.idle_timeout,
                           .log = log};
    child_spec server_spec{"server", [kids, options]() mutable {
                               std::shared_ptr<otpkv::router> r;
                               {
                                   const std::lock_guard lock(kids->mutex);
                                   r = kids->router;
                                   options.port = kids->port;
                               }
                               auto s = detail::started(
                                   otpkv::server::start(router_handler(std::move(r)), options));
                               const std::lock_guard lock(kids->mutex);
                               kids->server = s;
                               kids->port = s->port();
                               kids->address = s->address();
                               return s;
                           }};

    root_options.strategy = strategy::rest_for_one;
    specs.insert(specs.begin(), {registry_spec, tasks_spec});
    specs.push_back(router_spec);
    specs.push_back(server_spec);
    auto root = supervisor::start(std::move(specs), root_options);
    if (!root) {
        n->notify_exit(root.error().reason);
        return root.error();
    }
    n->root_ = std::move(root).value();
    {
        const std::lock_guard lock(kids->mutex);
        kids->root = n->root_;
    }
    if (log.enabled(log_level::info)) {
        log.log({.level = log_level::info,
                 .what = "node_started",
                 .pid = n->root_->id(),
                 .fields = {{"node", cfg.node}, {"address", n->address()}}});
    }
    // The node exits with its root. The monitor holds the exit state, never the node.
    n->root_monitor_ = n->root_->monitor(
        [signal = n->signal(), log, name = cfg.node, pid = n->root_->id()](const exit_reason& why) {
            if (log.enabled(log_level::info)) {
                log.log({.level = why.abnormal() ? log_level::error : log_level::info,
                         .what = "node_stopped",
                         .pid = pid,
                         .reason = to_string(why),
                         .fields = {{"node", name}}});
            }
            signal->exit(why);
        });
    return n;
}

inline node::~node() {
    if (root_ != nullptr && alive()) {
        stop();
    }
}

inline std::uint16_t node::port() const {
    const std::lock_guard lock(children_->mutex);
    return children_->port;
}

inline std::string node::address() const {
    const std::lock_guard lock(children_->mutex);
    return children_->address;
}

inline std::string node::ready_line() const {
    return "otpkv node " + config_.node + " listening on " + address();
}

inline std::shared_ptr<otpkv::registry> node::registry() const {
    const std::lock_guard lock(children_->mutex);
    return children_->registry && children_->registry->alive() ? children_->registry : nullptr;
}

inline std::shared_ptr<otpkv::router> node::router() const {
    const std::lock_guard lock(children_->mutex);
    return children_->router && children_->router->alive() ? children_->router : nullptr;
}

inline std::shared_ptr<otpkv::server> node::server() const {
    const std::lock_guard lock(children_->mutex);
    return children_->server && children_->server->alive() ? children_->server : nullptr;
}

inline std::shared_ptr<task_supervisor> node::tasks() const {
    const std::lock_guard lock(children_->mutex);
    return children_->tasks && children_->tasks->alive() ? children_->tasks : nullptr;
}

inline node_snapshot node::snapshot_of(const children& kids, const snapshot_options& options) {
    std::shared_ptr<supervisor> root;
    std::shared_ptr<otpkv::registry> reg;
    std::shared_ptr<otpkv::server> srv;
    std::shared_ptr<otpkv::router> rt;
    node_snapshot s;
    {
        const std::lock_guard lock(kids.mutex);
        root = kids.root.lock();
        reg = kids.registry;
        srv = kids.server;
        rt = kids.router;
        s.node = kids.name;
        s.uptime = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - kids.started);
    }
    s.version = std::to_string(OTPKV_VERSION_MAJOR) + "." + std::to_string(OTPKV_VERSION_MINOR) +
                "." + std::to_string(OTPKV_VERSION_PATCH);
    s.time = std::chrono::system_clock::now();
    if (root != nullptr) {
        s.tree = root->snapshot(options);
    }
    if (reg != nullptr && reg->alive()) {
        s.registry = reg->snapshot(options.largest_buckets);
    }
    if (srv != nullptr && srv->alive()) {
        s.server = srv->snapshot();
    }
    if (rt != nullptr && rt->alive()) {
        s.router = rt->snapshot();
    }
    return s;
}

inline node_snapshot node::snapshot(const snapshot_options& options) const {
    return snapshot_of(*children_, options);
}

inline void node::cluster_json(std::function<void(std::string)> done) const {
    struct gathering {
        std::mutex mutex;
        node_snapshot self;
        std::vector<cluster_member> others;
        std::size_t left = 0;
        std::function<void(std::string)> done;
    };
    auto g = std::make_shared<gathering>();
    g->self = snapshot();
    g->done = std::move(done);
    const std::shared_ptr<otpkv::router> rt = router();
    for (const peer_snapshot& p : g->self.router.peers) {
        g->others.push_back({.name = p.name});
    }
    g->left = g->others.size();
    if (rt == nullptr || g->left == 0) {
        g->done(otpkv::cluster_json(g->self, g->others));
        return;
    }
    for (std::size_t i = 0; i < g->others.size(); ++i) {
        rt->fetch_info(g->others[i].name, "JSON", [g, i](info_reply r) {
            bool last = false;
            {
                const std::lock_guard lock(g->mutex);
                cluster_member& m = g->others[i];
                m.up = r.ok;
                if (r.ok) {
                    while (!r.lines.empty() && (r.lines.back() == '\n' || r.lines.back() == '\r')) {
                        r.lines.pop_back();
                    }
                    m.json = std::move(r.lines);
                } else {
                    m.error = std::move(r.error);
                }
                last = --g->left == 0;
            }
            if (last) {
                g->done(otpkv::cluster_json(g->self, g->others));
            }
        });
    }
}

inline exit_reason node::stop(exit_reason reason, timeout wait) {
    root_->stop(std::move(reason), wait);
    wait_recorded(infinity); // the root's monitor records it before root_->stop returns
    return *exited();
}

} // namespace v0
} // namespace otpkv
