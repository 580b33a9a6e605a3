// SPDX-License-Identifier: MIT
// kv_server: one otpkv node, ready to run. It reads its configuration (flags, then
// OTPKV_* environment variables, then a config file), starts a `node` (registry, task
// supervisor, TCP server), prints one ready line, and waits for SIGINT or SIGTERM.
//
//   kv_server [--config FILE] [--node NAME] [--bind ADDR] [--port N] [--threads N]
//             [--route FIRST-LAST=NAME@HOST:PORT]... [--max-line BYTES]
//             [--max-connections N] [--max-buckets N]
//             [--cookie COOKIE | --cookie-file FILE]
//
// The cluster cookie: --cookie, --cookie-file, OTPKV_COOKIE or `cookie` in the config file;
// with none, ~/.otpkv.cookie (made with a random cookie and mode 0400 when missing), read
// only when the routes name another node. Peers that fail the handshake are logged on
// stderr.
//
// Exit codes: 0 after a signal (a graceful stop takes well under 5 s), 1 when the node
// cannot start (the port is in use, say) or its supervision tree gives up, 2 for a bad flag
// or value (the message names it). SIGHUP is ignored: a node started in the background
// from a terminal outlives the terminal (stop it with SIGTERM or SIGINT).
#include <otpkv/config.hpp>
#include <otpkv/node.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <string>

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

} // namespace

int main(int argc, char** argv) {
    const otpkv::config_load loaded = otpkv::load_config(argc, argv, environ);
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
        std::none_of(config.routes.begin(), config.routes.end(),
                     [&](const otpkv::route_entry& e) { return e.node == config.node; })) {
        // Legal (a node may only forward), but far more often a typo in --node or a route.
        std::fprintf(stderr,
                     "kv_server: warning: node %s is in no route, so it owns no bucket: every "
                     "request it gets is forwarded\n",
                     config.node.c_str());
    }
    // No cookie given: ~/.otpkv.cookie, as Erlang's nodes do, made when missing. Only a node
    // whose table names another node needs one (a node alone accepts no peer).
    const bool has_peers = std::any_of(config.routes.begin(), config.routes.end(),
                                       [&](const auto& r) { return r.node != config.node; });
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
    // Peers refused, either way, are told on stderr.
    otpkv::client_options client;
    client.log = [](const std::string& message) {
        std::fprintf(stderr, "kv_server: %s\n", message.c_str());
    };

    auto started = otpkv::node::start(std::move(config), {}, std::move(client));
    if (!started) {
        return fail(start_failure(started.error().reason), 1);
    }
    const std::shared_ptr<otpkv::node> node = std::move(started).value();
    std::printf("%s\n", node->ready_line().c_str());
    std::fflush(stdout);

    // Wait for a signal, looking every 200 ms whether the tree gave up by itself.
    const timespec tick{0, 200'000'000};
    while (node->alive()) {
        const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            node->stop(otpkv::exit_reason::shutdown(), std::chrono::seconds(4));
            return 0;
        }
    }
    return fail("the node exited: " + otpkv::to_string(*node->exited()), 1);
}
