// SPDX-License-Identifier: MIT
// kv_server: one otpkv node, ready to run. It reads its configuration (flags, then
// OTPKV_* environment variables, then a config file), starts a `node` (registry, task
// supervisor, TCP server), prints one ready line, and waits for SIGINT or SIGTERM.
//
//   kv_server [--config FILE] [--node NAME] [--bind ADDR] [--port N] [--threads N]
//             [--route FIRST-LAST=NAME@HOST:PORT]... [--max-line BYTES]
//             [--max-connections N] [--max-buckets N] [--max-subscriber-memory BYTES]
//
// Subscribers disconnected because all subscribers' unsent events passed
// --max-subscriber-memory are reported on stderr (within 200 ms, as a count).
//
// Exit codes: 0 after a signal (a graceful stop takes well under 5 s), 1 when the node
// cannot start (the port is in use, say) or its supervision tree gives up, 2 for a bad flag
// or value (the message names it).
#include <otpkv/config.hpp>
#include <otpkv/node.hpp>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>

extern char** environ; // NOLINT: POSIX declares it for us to declare

namespace {

int fail(const std::string& message, int code) {
    std::fprintf(stderr, "kv_server: %s\n", message.c_str());
    return code;
}

// Tells stderr about subscribers the server disconnected for --max-subscriber-memory, from
// its counter (a restarted server counts from 0 again).
class subscriber_cuts {
  public:
    void report(const otpkv::node& node) {
        const std::shared_ptr<otpkv::server> server = node.server();
        if (server == nullptr) {
            return;
        }
        if (server != server_) {
            server_ = server;
            told_ = 0;
        }
        const std::size_t cut = server->stats().subscribers_cut;
        if (cut > told_) {
            std::fprintf(stderr,
                         "kv_server: disconnected %zu subscriber%s with the largest backlogs: the "
                         "unsent events of all subscribers passed --max-subscriber-memory "
                         "(%zu bytes)\n",
                         cut - told_, cut - told_ == 1 ? "" : "s",
                         node.config().max_subscriber_memory);
            told_ = cut;
        }
    }

  private:
    std::shared_ptr<otpkv::server> server_;
    std::size_t told_ = 0;
};

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

    auto started = otpkv::node::start(loaded.config);
    if (!started) {
        return fail(otpkv::to_string(started.error().reason), 1);
    }
    const std::shared_ptr<otpkv::node> node = std::move(started).value();
    std::printf("%s\n", node->ready_line().c_str());
    std::fflush(stdout);

    // Wait for a signal, looking every 200 ms whether the tree gave up by itself, and
    // whether subscribers were cut for the memory cap.
    const timespec tick{0, 200'000'000};
    subscriber_cuts cuts;
    while (node->alive()) {
        const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            node->stop(otpkv::exit_reason::shutdown(), std::chrono::seconds(4));
            return 0;
        }
        cuts.report(*node);
    }
    return fail("the node exited: " + otpkv::to_string(*node->exited()), 1);
}
