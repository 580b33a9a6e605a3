// SPDX-License-Identifier: MIT
/// @file
/// One node's supervision tree, assembled from a `node_config` the way the guide's
/// application assembles `KV.Supervisor`:
///
/// ```
/// root (rest_for_one)
///  ├── registry          the buckets' names, over its own dynamic supervisor of buckets
///  ├── tasks             a task_supervisor for the host program's work
///  ├── router            the routing table and the connections to the other nodes
///  └── server            the TCP line server, its requests handled by the router
/// ```
///
/// `rest_for_one`, as in the guide: a registry that crashes takes the router and the server
/// started after it down too, and all are restarted in order, so the server never serves a
/// dead registry; a router that fails takes the server with it; a server that crashes is
/// restarted alone, on the same port (also when the config asked for port 0: the port first
/// bound is kept). With no routes in the config, every bucket is local.
#pragma once

#include <otpkv/config.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/process.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/router.hpp>
#include <otpkv/supervisor.hpp>
#include <otpkv/task.hpp>

#include <memory>
#include <mutex>
#include <string>

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
    /// where they log (its `self` and `cookie` come from `config`). A config whose routes
    /// name other nodes needs a `cookie`: without one the router cannot start.
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

    /// Stops the server (no new requests; connections closed), the task supervisor, then
    /// the registry and its buckets, each with its shutdown timeout; exits with `reason`.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = infinity) override;

  private:
    struct children {
        std::mutex mutex;
        std::shared_ptr<otpkv::registry> registry;
        std::shared_ptr<task_supervisor> tasks;
        std::shared_ptr<otpkv::router> router;
        std::shared_ptr<otpkv::server> server;
        std::uint16_t port = 0;
        std::string address;
    };

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
    const node_config& cfg = n->config_;

    child_spec registry_spec{"registry",
                             [kids, max_buckets = cfg.max_buckets] {
                                 auto reg = otpkv::registry::start({.max_buckets = max_buckets});
                                 const std::lock_guard lock(kids->mutex);
                                 kids->registry = reg;
                                 return reg;
                             },
                             restart::permanent, infinity, child_type::supervisor};
    child_spec tasks_spec{"tasks",
                          [kids] {
                              auto tasks = task_supervisor::start();
                              const std::lock_guard lock(kids->mutex);
                              kids->tasks = tasks;
                              return tasks;
                          },
                          restart::permanent, infinity, child_type::supervisor};
    const router_options routing{cfg.node, cfg.routes, client, cfg.cookie};
    child_spec router_spec{"router", [kids, options = routing] {
                               std::shared_ptr<otpkv::registry> reg;
                               {
                                   const std::lock_guard lock(kids->mutex);
                                   reg = kids->registry;
                               }
                               auto r = detail::started(otpkv::router::start(reg, options));
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
                           .idle_timeout = cfg.idle_timeout};
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
    auto root =
        supervisor::start({registry_spec, tasks_spec, router_spec, server_spec}, root_options);
    if (!root) {
        n->notify_exit(root.error().reason);
        return root.error();
    }
    n->root_ = std::move(root).value();
    // The node exits with its root. The monitor holds the exit state, never the node.
    n->root_monitor_ =
        n->root_->monitor([signal = n->signal()](const exit_reason& why) { signal->exit(why); });
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

inline exit_reason node::stop(exit_reason reason, timeout wait) {
    root_->stop(std::move(reason), wait);
    wait_recorded(infinity); // the root's monitor records it before root_->stop returns
    return *exited();
}

} // namespace v0
} // namespace otpkv
