// SPDX-License-Identifier: MIT
// kv_server: one otpkv node, ready to run. It reads its configuration (flags, then
// OTPKV_* environment variables, then a config file), starts a `node` (registry, task
// supervisor, TCP server), prints one ready line, and waits for SIGINT or SIGTERM.
//
//   kv_server [--config FILE] [--node NAME] [--bind ADDR] [--port N] [--threads N]
//             [--route FIRST-LAST=NAME@HOST:PORT]... [--max-line BYTES]
//             [--max-connections N] [--max-buckets N] [--idle-timeout SECONDS]
//             [--max-subscriber-memory BYTES]
//             [--cookie COOKIE | --cookie-file FILE]
//             [--log-level error|warning|info|debug] [--admin-port N] [--admin-bind ADDR]
//             [--etcd URL[,URL...]] [--replicas R] [--lease-ms MS]
//
// Logging: the node's events (node_started, node_stopped, ...) go to stderr, one line each
// (`format_log_line`), at --log-level and above, through a bounded queue written by a
// thread of its own (`log_writer`): a stderr nobody reads never blocks the node; lines that
// do not fit are dropped and counted (`log_dropped count=N`).
//
// Admin endpoint: with --admin-port N (0: an ephemeral port) it serves /metrics,
// /tree.json, /cluster.json and / over HTTP on --admin-bind (default 127.0.0.1), and prints
// `otpkv node NAME admin on http://ADDR:PORT/` before the ready line, which stays last.
//
// The cluster cookie: --cookie, --cookie-file, OTPKV_COOKIE or `cookie` in the config file;
// with none, ~/.otpkv.cookie (made with a random cookie and mode 0400 when missing), read
// only when the routes name another node. Peers that fail the handshake are logged on
// stderr.
//
// File descriptors: at start it raises its soft RLIMIT_NOFILE to --max-connections plus a
// margin for its own descriptors, as far as the hard limit allows, and says on stderr when
// that is not enough. Connections the descriptors cannot hold get `ERROR too many
// connections` (the server keeps a spare descriptor for that), and so do those past
// --max-connections; either is logged as `limit_hit` (limit=out_of_descriptors or
// max_connections), the first at once, then at most once a second with the count. So are
// subscribers cut for --max-subscriber-memory (limit=max_subscriber_memory).
//
// Replication (issue 16): a route may name several nodes, its range's replica set
// (`a-m=n1@h:4041,n2@h:4042`), kept by chain replication with etcd (--etcd) as the
// membership authority. The settings are checked together at start
// (`replication_config_error`): a route naming several nodes, or --replicas above 1,
// without --etcd is refused, as a bad value is. Replication itself is not wired into this
// build yet: --etcd together with a route naming several nodes is refused too.
//
// Exit codes: 0 after a signal (a graceful stop takes well under 5 s), 1 when the node
// cannot start (the port is in use, say) or its supervision tree gives up, 2 for a bad flag
// or value (the message names it) or replication settings that do not fit together. SIGHUP is
// ignored: a node started in the background from a terminal outlives the terminal (stop it with
// SIGTERM or SIGINT).
#include <otpkv/config.hpp>
#include <otpkv/log_writer.hpp>
#include <otpkv/net/admin.hpp>
#include <otpkv/node.hpp>
#include <otpkv/observer.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

extern char** environ; // NOLINT: POSIX declares it for us to declare

namespace {

int fail(const std::string& message, int code) {
    std::fprintf(stderr, "kv_server: %s\n", message.c_str());
    return code;
}

// What the operator reads when the node cannot start: the sentence of the error itself
// ("cannot listen on 127.0.0.1:4040: Address already in use"), not its Erlang form.
std::string start_failure(const otpkv::exit_reason& why) {
    return why.what() == otpkv::exit_reason::kind::error && !why.detail().empty()
               ? why.detail()
               : otpkv::to_string(why);
}

/// Descriptors the node needs besides its client connections: standard streams, the
/// listener, each loop's poller and wake pipe, the spare, connections to other nodes.
constexpr rlim_t descriptor_margin = 256;

/// Raises the soft limit on open files toward what `max_connections` needs (never lowers
/// it); says on stderr when the hard limit, or the system, stops it short. Returns the soft
/// limit now in force.
rlim_t raise_descriptor_limit(std::size_t max_connections) {
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) {
        return RLIM_INFINITY;
    }
    const auto wanted = static_cast<rlim_t>(max_connections) + descriptor_margin;
    if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur >= wanted) {
        return lim.rlim_cur;
    }
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max == RLIM_INFINITY ? wanted : std::min(wanted, lim.rlim_max);
    if (raised.rlim_cur > lim.rlim_cur && ::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
        lim = raised;
    }
    if (lim.rlim_cur < wanted) {
        std::fprintf(stderr,
                     "kv_server: --max-connections %zu needs about %llu file descriptors, but "
                     "the limit is %llu (hard limit %llu): connections past it get ERROR too "
                     "many connections\n",
                     max_connections, static_cast<unsigned long long>(wanted),
                     static_cast<unsigned long long>(lim.rlim_cur),
                     static_cast<unsigned long long>(lim.rlim_max));
    }
    return lim.rlim_cur;
}

} // namespace

int main(int argc, char** argv) {
    otpkv::config_load loaded = otpkv::load_config(argc, argv, environ);
    if (loaded.help) {
        std::fputs(otpkv::usage("kv_server").c_str(), stdout);
        return 0;
    }
    if (loaded.version) {
        std::fputs(otpkv::version_text("kv_server").c_str(), stdout);
        return 0;
    }
    if (!loaded.ok()) {
        return fail(loaded.error + "\n(kv_server --help lists the options)", 2);
    }
    if (const std::string why = otpkv::replication_config_error(loaded.config); !why.empty()) {
        return fail(why, 2);
    }
    // For the replication tests only (node_config::unsafe_ack_at_head): loud, never quiet.
    if (const char* unsafe = std::getenv("OTPKV_TEST_UNSAFE_ACK_AT_HEAD");
        unsafe != nullptr && std::string_view(unsafe) == "1") {
        loaded.config.unsafe_ack_at_head = true;
        std::fprintf(stderr, "kv_server: warning: OTPKV_TEST_UNSAFE_ACK_AT_HEAD=1: heads "
                             "acknowledge writes before their chains have them (for tests "
                             "only: acknowledged writes can be lost)\n");
    }

    // The signals are blocked before any thread starts, so every thread inherits the mask
    // and only sigtimedwait below ever takes them. A peer that closes while we write must
    // not kill the process either (the server sends with MSG_NOSIGNAL; this is for
    // everything else).
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);
    std::signal(SIGHUP, SIG_IGN);

    for (const std::string& warning : loaded.warnings) {
        std::fprintf(stderr, "kv_server: warning: %s\n", warning.c_str());
    }
    otpkv::node_config config = loaded.config;
    if (!config.routes.empty() &&
        std::none_of(config.routes.begin(), config.routes.end(), [&](const otpkv::route_entry& e) {
            const auto nodes = otpkv::route_nodes(e);
            return std::any_of(nodes.begin(), nodes.end(),
                               [&](const auto& n) { return n.name == config.node; });
        })) {
        // Legal (a node may only forward), but far more often a typo in --node or a route.
        std::fprintf(stderr,
                     "kv_server: warning: node %s is in no route, so it owns no bucket: every "
                     "request it gets is forwarded\n",
                     config.node.c_str());
    }
    // No cookie given: ~/.otpkv.cookie, as Erlang's nodes do, made when missing. Only a node
    // whose table names another node needs one (a node alone accepts no peer).
    const bool has_peers =
        std::any_of(config.routes.begin(), config.routes.end(), [&](const auto& r) {
            const auto nodes = otpkv::route_nodes(r);
            return std::any_of(nodes.begin(), nodes.end(),
                               [&](const auto& n) { return n.name != config.node; });
        });
    if (config.cookie.empty() && has_peers) {
        const otpkv::cookie_load found = otpkv::home_cookie(environ);
        for (const std::string& warning : found.warnings) {
            std::fprintf(stderr, "kv_server: warning: %s\n", warning.c_str());
        }
        if (!found.ok()) {
            return fail(found.error, 1);
        }
        if (found.created) {
            std::fprintf(stderr, "kv_server: made a new cluster cookie in %s\n",
                         found.path.c_str());
        }
        config.cookie = found.cookie;
    }
    raise_descriptor_limit(config.max_connections);

    // Events (the node's, its peers', the admin server's) go to stderr through a bounded
    // queue (declared first: it outlives the node and the admin server, which log through
    // it).
    otpkv::log_writer log_writer(STDERR_FILENO);
    const otpkv::logger log(log_writer.sink(), config.log_level);
    const std::optional<std::uint16_t> admin_port = config.admin_port;
    const std::string admin_bind = config.admin_bind;

    auto started = otpkv::node::start(std::move(config), {.log = log});
    if (!started) {
        return fail(start_failure(started.error().reason), 1);
    }
    const std::shared_ptr<otpkv::node> node = std::move(started).value();

    std::shared_ptr<otpkv::admin_server> admin;
    if (admin_port) {
        otpkv::admin_options options;
        options.bind = admin_bind;
        options.port = *admin_port;
        options.log = log;
        const std::weak_ptr<otpkv::node> weak = node;
        options.snapshot = [weak] {
            const auto n = weak.lock();
            return n ? n->snapshot() : otpkv::node_snapshot{};
        };
        options.cluster = [weak](std::function<void(std::string)> done) {
            if (const auto n = weak.lock()) {
                n->cluster_json(std::move(done));
            } else {
                done(otpkv::cluster_json(otpkv::node_snapshot{}, {}));
            }
        };
        auto admin_started = otpkv::admin_server::start(std::move(options));
        if (!admin_started) {
            node->stop(otpkv::exit_reason::shutdown(), std::chrono::seconds(4));
            return fail("admin endpoint: " + start_failure(admin_started.error().reason), 1);
        }
        admin = std::move(admin_started).value();
        std::printf("otpkv node %s admin on http://%s/\n", node->config().node.c_str(),
                    admin->address().c_str());
    }
    std::printf("%s\n", node->ready_line().c_str());
    std::fflush(stdout);

    // Wait for a signal, looking every 200 ms whether the tree gave up by itself. (Limits
    // hit, refused connections and subscribers cut are the server's events, logged above.)
    const timespec tick{0, 200'000'000};
    while (node->alive()) {
        const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            if (admin != nullptr) {
                admin->stop(otpkv::exit_reason::shutdown(), std::chrono::seconds(1));
            }
            node->stop(otpkv::exit_reason::shutdown(), std::chrono::seconds(4));
            return 0;
        }
    }
    return fail("the node exited: " + otpkv::to_string(*node->exited()), 1);
}
