// SPDX-License-Identifier: MIT
/// @file
/// The admin HTTP endpoint (kv_server's `--admin-port`): a small HTTP/1.1 server on its own
/// thread, one poller, non-blocking sockets, never touching the request loops of the main
/// server. It serves
///
///     GET /metrics        metrics_text(snapshot())   text/plain; version=0.0.4; charset=utf-8
///     GET /tree.json      snapshot_json(snapshot())  application/json
///     GET /cluster.json   what `cluster` calls back  application/json
///     GET /               detail::observer_page      text/html; charset=utf-8
///
/// and HEAD for each (the same head, no body). The query string of a target is ignored
/// (`/metrics?x=1` is `/metrics`); the absolute form (`http://host/metrics`) is accepted.
///
/// Replies always carry `Content-Length` and `Connection: close` (one request per
/// connection; no keep-alive, no chunked encoding). After the reply is sent the write side
/// is shut down and the connection is read until the client closes (or the request timeout
/// passes), so unread bytes never turn into a reset that would destroy the reply.
///
/// Bounded like the main port:
/// - Only GET and HEAD: any other method is `405 Method Not Allowed` with `Allow: GET, HEAD`.
/// - A request line that is not `METHOD SP TARGET SP HTTP/1.x`, a target that is not a path,
///   a header line without `name:` (a token, no space before the colon), or an HTTP/1.1
///   request without `Host`: `400 Bad Request`. Another HTTP version: `505`.
/// - A request head (request line and headers, up to the blank line) longer than
///   `max_request` bytes: `431 Request Header Fields Too Large`, then the connection closes.
/// - More than `max_connections` connections at once: the next ones get `503 Service
///   Unavailable` and are closed (as many as `max_connections` more are held while that reply
///   is delivered; past those, new connections are closed at once). Logged as `limit_hit`
///   (`server=admin limit=max_connections count=N`), at most once a second.
/// - Out of file descriptors: the listener is left alone for 100 ms at a time (the waiting
///   clients stay in the kernel's backlog), so the admin thread never spins.
/// - `request_timeout` from the accept: a client that has not sent its whole request head by
///   then (slowloris) gets `408 Request Timeout` and is closed; one that has not read its
///   whole reply by then is reset (what the kernel still holds for it is dropped). A client that
///   never reads a large reply holds only its own connection: the others are served meanwhile.
/// - A `snapshot` that throws: `500 Internal Server Error`; no `cluster`: `/cluster.json` is
///   `404`; a `cluster` that has not called back within `request_timeout`: `504`.
///
/// Thread safety: every member of `admin_server` may be called from any thread. `snapshot`
/// runs on the admin thread; `cluster` is called on the admin thread and may call back from
/// any thread, at most once (later calls, and calls after the server stopped or the client
/// left, do nothing).
#pragma once

#include <otpkv/detail/observer_page.hpp>
#include <otpkv/detail/socket.hpp>
#include <otpkv/log.hpp>
#include <otpkv/net/poller.hpp>
#include <otpkv/observer.hpp>
#include <otpkv/process.hpp>
#include <otpkv/snapshot.hpp>

#include <algorithm>
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

/// An admin server's settings.
struct admin_options {
    /// The address to listen on: an IPv4 or IPv6 literal.
    std::string bind = "127.0.0.1";
    /// The port; 0 takes an ephemeral one (see `admin_server::port`).
    std::uint16_t port = 0;
    /// Connections served at once; more get `503`.
    std::size_t max_connections = 64;
    /// Longest request head (request line and headers) in bytes; longer gets `431`.
    std::size_t max_request = 8192;
    /// How long a connection may take from its accept to its reply's last byte.
    std::chrono::milliseconds request_timeout = std::chrono::seconds(5);
    /// Takes the node's snapshot (for `/metrics` and `/tree.json`), on the admin thread. It
    /// should be quick (the admin thread waits for it); empty: both paths are `404`.
    std::function<node_snapshot()> snapshot{};
    /// Starts building `/cluster.json` and calls its argument back with the body when done,
    /// from any thread (the router's, say). Empty: `/cluster.json` is `404`.
    std::function<void(std::function<void(std::string)>)> cluster{};
    /// Where limits hit are reported (`limit_hit`).
    logger log{};
    /// The readiness mechanism.
    poller_kind poller = poller_kind::automatic;
};

/// Counters of a running admin server. Thread safety: a plain value.
struct admin_stats {
    std::size_t accepted = 0;  ///< connections accepted (served or refused)
    std::size_t rejected = 0;  ///< refused for `max_connections` (`503`, or closed at once)
    std::size_t requests = 0;  ///< requests answered, any status
    std::size_t timed_out = 0; ///< connections closed for `request_timeout`
};

namespace detail {
struct admin_core;
} // namespace detail

/// The admin HTTP server, a process: it exits when stopped, or with an `error` reason when
/// its thread fails.
///
/// Thread safety: every member may be called from any thread.
class admin_server : public process {
  public:
    /// Binds, listens and starts the admin thread. Errors: `start_failed`, whose reason names
    /// the address (EADDRINUSE when the port is taken).
    [[nodiscard]] static result<std::shared_ptr<admin_server>> start(admin_options options);
    /// Stops the server if it still runs.
    inline ~admin_server() override; // inline: see ~process
    admin_server(const admin_server&) = delete;
    admin_server& operator=(const admin_server&) = delete;

    /// The port it listens on (the real one when started with port 0).
    [[nodiscard]] std::uint16_t port() const noexcept;
    /// The address it listens on, `127.0.0.1:9090` or `[::1]:9090`.
    [[nodiscard]] std::string address() const;
    /// The counters.
    [[nodiscard]] admin_stats stats() const noexcept;

    /// Closes the listener and every connection and exits with `reason`, waiting up to
    /// `wait` for the admin thread.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = default_shutdown) override;

  private:
    admin_server() = default;
    std::shared_ptr<detail::admin_core> core_;
};

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

/// What a request head asks for: `status` 0 when it is a GET or HEAD to serve, else the
/// error status to answer.
struct http_request {
    int status = 0;          ///< 0, or 400, 405, 505
    bool head = false;       ///< HEAD: no body in the reply
    std::string_view path{}; ///< the target's path, without the query
};

/// True for an RFC 9110 token character.
[[nodiscard]] constexpr bool is_http_token_char(char c) noexcept {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return true;
    }
    return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

/// Reads a request head (the bytes before the blank line, line ends `\r\n` or `\n`).
[[nodiscard]] inline http_request parse_http_head(std::string_view head) {
    http_request r;
    const auto next_line = [&head]() {
        const std::size_t lf = head.find('\n');
        std::string_view line = head.substr(0, lf);
        head = lf == std::string_view::npos ? std::string_view{} : head.substr(lf + 1);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        return line;
    };
    const std::string_view line = next_line();
    const std::size_t sp1 = line.find(' ');
    const std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp1 == 0 || sp2 == std::string_view::npos ||
        line.find(' ', sp2 + 1) != std::string_view::npos) {
        r.status = 400;
        return r;
    }
    const std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const std::string_view version = line.substr(sp2 + 1);
    if (!std::all_of(method.begin(), method.end(), is_http_token_char) || target.empty()) {
        r.status = 400;
        return r;
    }
    if (version.size() != 8 || !version.starts_with("HTTP/") || version[6] != '.' ||
        version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9') {
        r.status = 400;
        return r;
    }
    const bool http11 = version == "HTTP/1.1";
    if (version != "HTTP/1.0" && !http11) {
        r.status = 505;
        return r;
    }
    for (const char c : target) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f) {
            r.status = 400;
            return r;
        }
    }
    if (target.starts_with("http://") || target.starts_with("https://")) {
        target.remove_prefix(target.find("//") + 2);
        const std::size_t slash = target.find('/');
        target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    }
    if (target.front() != '/') {
        r.status = 400;
        return r;
    }
    r.path = target.substr(0, target.find('?'));
    bool host = false;
    while (!head.empty()) {
        const std::string_view h = next_line();
        if (h.empty()) {
            break;
        }
        const std::size_t colon = h.find(':');
        if (colon == 0 || colon == std::string_view::npos ||
            !std::all_of(h.begin(), h.begin() + static_cast<std::ptrdiff_t>(colon),
                         is_http_token_char)) {
            r.status = 400;
            return r;
        }
        std::string name(h.substr(0, colon));
        std::transform(name.begin(), name.end(), name.begin(), [](char c) {
            return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
        });
        host = host || name == "host";
    }
    if (http11 && !host) {
        r.status = 400;
        return r;
    }
    if (method == "HEAD") {
        r.head = true;
    } else if (method != "GET") {
        r.status = 405;
    }
    return r;
}

/// The reason phrase of the statuses the admin server sends.
[[nodiscard]] constexpr std::string_view http_reason(int status) noexcept {
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

/// A whole reply: status line, headers, and the body unless `head_only`.
[[nodiscard]] inline std::string http_response(int status, std::string_view content_type,
                                               std::string_view body, bool head_only) {
    std::string out = "HTTP/1.1 " + std::to_string(status) + " ";
    out += http_reason(status);
    out += "\r\nContent-Type: ";
    out += content_type;
    out += "\r\nContent-Length: " + std::to_string(body.size());
    if (status == 405) {
        out += "\r\nAllow: GET, HEAD";
    }
    out += "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    if (!head_only) {
        out += body;
    }
    return out;
}

/// An error reply with a one-line text body.
[[nodiscard]] inline std::string http_error(int status, bool head_only = false) {
    return http_response(status, "text/plain; charset=utf-8",
                         std::to_string(status) + " " + std::string(http_reason(status)) + "\n",
                         head_only);
}

/// The state shared by the admin server, its thread and the `cluster` callbacks.
struct admin_core {
    using clock = std::chrono::steady_clock;

    /// One connection.
    struct connection {
        unique_fd fd;
        std::uint64_t id = 0;
        clock::time_point deadline{};
        std::string in{};
        std::string out{};
        std::size_t sent = 0;
        bool refused = false;     ///< past max_connections
        bool waiting = false;     ///< for `cluster`'s callback
        bool head_only = false;   ///< the request was HEAD
        bool answered = false;    ///< `out` holds the whole reply
        bool write_shut = false;  ///< the reply was sent and the write side shut down
        bool read_closed = false; ///< the client half-closed: nothing more to read
    };

    admin_options options;
    unique_fd listener;
    socket_address address;
    wake_pipe wake;
    detail::poller poll;
    std::shared_ptr<exit_signal> signal;
    process_threads threads;

    std::mutex mutex; // guards the members up to `stopping`
    exit_reason reason{};
    std::vector<std::pair<std::uint64_t, std::string>> cluster_replies{};
    std::atomic<bool> stopping{false};

    std::atomic<std::size_t> accepted{0};
    std::atomic<std::size_t> rejected{0};
    std::atomic<std::size_t> requests{0};
    std::atomic<std::size_t> timed_out{0};

    // The admin thread's own.
    std::unordered_map<std::uint64_t, std::unique_ptr<connection>> connections{};
    std::size_t serving = 0; ///< connections not refused
    std::uint64_t last_id = 0;
    std::size_t unlogged_rejects = 0;
    std::optional<clock::time_point> listener_paused_until{};
    clock::time_point last_reject_log{};

    explicit admin_core(admin_options o) : options(std::move(o)), poll(options.poller) {}

    void request_stop(const exit_reason& why) {
        {
            const std::lock_guard lock(mutex);
            if (stopping.load(std::memory_order_relaxed)) {
                return;
            }
            reason = why;
            stopping.store(true, std::memory_order_release);
        }
        wake.notify();
    }

    /// The admin thread.
    void run(const std::shared_ptr<admin_core>& self);

  private:
    void accept_all(const std::shared_ptr<admin_core>& self);
    void on_ready(connection& c, std::uint32_t events, const std::shared_ptr<admin_core>& self);
    void answer(connection& c, const std::shared_ptr<admin_core>& self);
    void reply(connection& c, std::string bytes);
    bool flush(connection& c);
    void update_interest(connection& c);
    void close(std::uint64_t id);
    void take_cluster_replies();
    void expire(clock::time_point now);
    void log_rejects(clock::time_point now, bool force);
};

inline void admin_core::run(const std::shared_ptr<admin_core>& self) {
    poll.add(listener.get(), nullptr, io_read);
    poll.add(wake.read_fd(), &wake, io_read);
    std::vector<io_event> ready;
    while (!stopping.load(std::memory_order_acquire)) {
        auto now = clock::now();
        auto next = now + std::chrono::seconds(1);
        for (const auto& [id, c] : connections) {
            next = std::min(next, c->deadline);
        }
        if (listener_paused_until) {
            next = std::min(next, *listener_paused_until);
        }
        const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
        poll.wait(ready, static_cast<int>(std::clamp<long long>(wait, 0, 1000)));
        for (const io_event& e : ready) {
            if (e.tag == nullptr) {
                accept_all(self);
            } else if (e.tag == &wake) {
                wake.drain();
                take_cluster_replies();
            } else {
                // The tag is the connection's id, kept in a pointer-sized word.
                const auto id = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(e.tag));
                const auto it = connections.find(id);
                if (it != connections.end()) {
                    on_ready(*it->second, e.events, self);
                }
            }
        }
        now = clock::now();
        if (listener_paused_until && *listener_paused_until <= now) {
            listener_paused_until.reset();
            poll.modify(listener.get(), nullptr, io_read);
        }
        expire(now);
        log_rejects(now, false);
    }
    log_rejects(clock::now(), true);
    for (auto& [id, c] : connections) {
        poll.remove(c->fd.get());
    }
    connections.clear();
    poll.remove(listener.get());
    listener.reset();
}

inline void admin_core::log_rejects(clock::time_point now, bool force) {
    if (unlogged_rejects == 0 || (!force && now - last_reject_log < std::chrono::seconds(1))) {
        return;
    }
    last_reject_log = now;
    log_event e;
    e.level = log_level::warning;
    e.what = "limit_hit";
    e.fields = {{"server", "admin"},
                {"address", address.to_string()},
                {"limit", "max_connections"},
                {"count", std::to_string(unlogged_rejects)}};
    unlogged_rejects = 0;
    options.log.log(std::move(e));
}

inline void admin_core::accept_all(const std::shared_ptr<admin_core>& self) {
    for (int n = 0; n < 64; ++n) {
        unique_fd fd(accept_connection(listener.get()));
        if (!fd) {
            if (errno == EMFILE || errno == ENFILE) {
                // Out of descriptors: the listener would stay ready and spin this thread.
                // Look again in 100 ms (the waiting client stays in the backlog meanwhile).
                poll.modify(listener.get(), nullptr, io_none);
                listener_paused_until = clock::now() + std::chrono::milliseconds(100);
            }
            return; // EAGAIN: all taken
        }
        accepted.fetch_add(1, std::memory_order_relaxed);
        const bool refuse = serving >= options.max_connections;
        if (refuse) {
            rejected.fetch_add(1, std::memory_order_relaxed);
            ++unlogged_rejects;
            if (connections.size() - serving >= options.max_connections) {
                continue; // too many being refused already: closed at once
            }
        }
        auto c = std::make_unique<connection>();
        c->fd = std::move(fd);
        c->id = ++last_id;
        c->deadline = clock::now() + options.request_timeout;
        c->refused = refuse;
        // NOLINTNEXTLINE(performance-no-int-to-ptr): the tag is an id, never dereferenced
        void* tag = reinterpret_cast<void*>(static_cast<std::uintptr_t>(c->id));
        poll.add(c->fd.get(), tag, io_read);
        connection& ref = *c;
        connections.emplace(c->id, std::move(c));
        if (refuse) {
            reply(ref, http_error(503));
        } else {
            ++serving;
        }
        (void)self;
    }
}

inline void admin_core::on_ready(connection& c, std::uint32_t events,
                                 const std::shared_ptr<admin_core>& self) {
    const std::uint64_t id = c.id; // `c` is gone once closed
    if ((events & (io_read | io_error)) != 0 && !c.read_closed) {
        char buffer[4096];
        for (;;) {
            const ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
            if (n > 0) {
                if (!c.answered && !c.waiting) {
                    c.in.append(buffer, static_cast<std::size_t>(n));
                    if (c.in.size() > options.max_request) {
                        break; // answered 431 below, whatever follows
                    }
                }
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            }
            // Reset, or closed after its reply (or before asking anything): done with it.
            if (n < 0 || c.write_shut || (!c.answered && !c.waiting && c.in.empty())) {
                close(id);
                return;
            }
            // A half-close: its reply still goes out, but there is nothing more to read.
            c.read_closed = true;
            update_interest(c);
            if (!c.answered && !c.waiting) {
                c.in += "\n\n"; // the end of input ends the head: answer what came
            }
            break;
        }
        if (!c.answered && !c.waiting) {
            answer(c, self);
        }
    } else if ((events & io_error) != 0 && (events & io_write) == 0) {
        close(id);
        return;
    }
    const auto it = connections.find(id);
    if (it != connections.end() && (events & io_write) != 0 && c.answered && !flush(c)) {
        close(id);
    }
}

inline void admin_core::update_interest(connection& c) {
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the tag is an id, never dereferenced
    void* tag = reinterpret_cast<void*>(static_cast<std::uintptr_t>(c.id));
    const std::uint32_t interest =
        (c.read_closed ? io_none : io_read) |
        (c.answered && !c.write_shut && !c.out.empty() ? io_write : io_none);
    poll.modify(c.fd.get(), tag, interest);
}

inline void admin_core::answer(connection& c, const std::shared_ptr<admin_core>& self) {
    std::size_t end = c.in.find("\r\n\r\n");
    std::size_t head_size = end == std::string::npos ? end : end + 2;
    if (const std::size_t lf = c.in.find("\n\n"); lf != std::string::npos && lf + 1 < head_size) {
        head_size = lf + 1;
    }
    if (head_size == std::string::npos) {
        if (c.in.size() > options.max_request) {
            reply(c, http_error(431));
        }
        return;
    }
    if (head_size > options.max_request) {
        reply(c, http_error(431));
        return;
    }
    const http_request r = parse_http_head(std::string_view(c.in).substr(0, head_size));
    c.head_only = r.head;
    if (r.status != 0) {
        reply(c, http_error(r.status, r.head));
        return;
    }
    const auto content = [&](std::string_view type, std::string_view body) {
        reply(c, http_response(200, type, body, r.head));
    };
    if (r.path == "/") {
        content("text/html; charset=utf-8", observer_page);
    } else if ((r.path == "/metrics" || r.path == "/tree.json") && options.snapshot) {
        try {
            const node_snapshot snap = options.snapshot();
            if (r.path == "/metrics") {
                content("text/plain; version=0.0.4; charset=utf-8", metrics_text(snap));
            } else {
                content("application/json", snapshot_json(snap));
            }
        } catch (...) {
            reply(c, http_error(500, r.head));
        }
    } else if (r.path == "/cluster.json" && options.cluster) {
        c.waiting = true;
        c.in.clear();
        const std::weak_ptr<admin_core> weak = self;
        auto done = [weak, id = c.id,
                     fired = std::make_shared<std::atomic<bool>>(false)](std::string body) {
            if (fired->exchange(true)) {
                return;
            }
            if (const auto core = weak.lock()) {
                {
                    const std::lock_guard lock(core->mutex);
                    core->cluster_replies.emplace_back(id, std::move(body));
                }
                core->wake.notify();
            }
        };
        try {
            options.cluster(std::move(done));
        } catch (...) {
            c.waiting = false;
            reply(c, http_error(500, r.head));
        }
    } else {
        reply(c, http_error(404, r.head));
    }
}

inline void admin_core::take_cluster_replies() {
    std::vector<std::pair<std::uint64_t, std::string>> taken;
    {
        const std::lock_guard lock(mutex);
        taken.swap(cluster_replies);
    }
    for (auto& [id, body] : taken) {
        const auto it = connections.find(id);
        if (it == connections.end() || !it->second->waiting) {
            continue; // the client left, or timed out
        }
        connection& c = *it->second;
        c.waiting = false;
        reply(c, http_response(200, "application/json", body, c.head_only));
    }
}

inline void admin_core::reply(connection& c, std::string bytes) {
    requests.fetch_add(c.refused ? 0 : 1, std::memory_order_relaxed);
    c.answered = true;
    c.in.clear();
    c.in.shrink_to_fit();
    c.out = std::move(bytes);
    c.sent = 0;
    if (!flush(c)) {
        close(c.id);
    }
}

inline bool admin_core::flush(connection& c) {
    if (c.write_shut) {
        return true;
    }
    if (!send_pending(c.fd.get(), c.out, c.sent, 0)) {
        return false;
    }
    if (c.out.empty()) {
        // All sent: FIN, then read until the client closes, so no reset destroys the reply.
        ::shutdown(c.fd.get(), SHUT_WR);
        c.write_shut = true;
        if (c.read_closed) {
            return false; // the client is done too
        }
    }
    update_interest(c);
    return true;
}

inline void admin_core::close(std::uint64_t id) {
    const auto it = connections.find(id);
    if (it == connections.end()) {
        return;
    }
    if (!it->second->refused) {
        --serving;
    }
    poll.remove(it->second->fd.get());
    connections.erase(it);
}

inline void admin_core::expire(clock::time_point now) {
    std::vector<std::uint64_t> late;
    for (const auto& [id, c] : connections) {
        if (c->deadline <= now) {
            late.push_back(id);
        }
    }
    for (const std::uint64_t id : late) {
        connection& c = *connections.at(id);
        if (!c.answered && !c.waiting) {
            // Slowloris: one last try to say why, without waiting for it.
            timed_out.fetch_add(1, std::memory_order_relaxed);
            std::string bytes = http_error(408);
            [[maybe_unused]] const auto n = send_some(c.fd.get(), bytes.data(), bytes.size());
        } else if (c.waiting) {
            timed_out.fetch_add(1, std::memory_order_relaxed);
            std::string bytes = http_error(504, c.head_only);
            [[maybe_unused]] const auto n = send_some(c.fd.get(), bytes.data(), bytes.size());
        } else if (!c.write_shut) {
            // It did not read its reply: reset, so the kernel drops what is still queued
            // instead of trickling it out to a reader that may never take it.
            timed_out.fetch_add(1, std::memory_order_relaxed);
            const linger abort{1, 0};
            ::setsockopt(c.fd.get(), SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
        }
        close(id);
    }
}

} // namespace detail

inline result<std::shared_ptr<admin_server>> admin_server::start(admin_options options) {
    std::shared_ptr<admin_server> s(new admin_server());
    try {
        detail::socket_address where;
        if (!detail::socket_address::parse(options.bind, options.port, where)) {
            throw std::system_error(EINVAL, std::generic_category(),
                                    "not an IP address: '" + options.bind + "'");
        }
        options.max_connections = std::max<std::size_t>(1, options.max_connections);
        auto core = std::make_shared<detail::admin_core>(std::move(options));
        core->listener = detail::listen_on(where, SOMAXCONN);
        core->address = detail::local_address(core->listener.get());
        core->signal = s->signal();
        core->threads.start([core] {
            try {
                core->run(core);
            } catch (...) {
                core->request_stop(exit_reason::from_exception(std::current_exception()));
            }
            exit_reason why;
            {
                const std::lock_guard lock(core->mutex);
                why = core->reason;
            }
            core->signal->exit(why);
        });
        s->core_ = std::move(core);
    } catch (...) {
        return s->start_failed(std::current_exception());
    }
    return s;
}

inline admin_server::~admin_server() {
    if (core_ != nullptr) {
        stop_if_alive();
        core_->threads.release();
    }
}

inline std::uint16_t admin_server::port() const noexcept {
    return core_->address.port();
}

inline std::string admin_server::address() const {
    return core_->address.to_string();
}

inline admin_stats admin_server::stats() const noexcept {
    return {core_->accepted.load(std::memory_order_relaxed),
            core_->rejected.load(std::memory_order_relaxed),
            core_->requests.load(std::memory_order_relaxed),
            core_->timed_out.load(std::memory_order_relaxed)};
}

inline exit_reason admin_server::stop(exit_reason reason, timeout wait) {
    core_->request_stop(reason);
    if (core_->threads.is_current()) {
        return reason;
    }
    if (!wait_recorded(wait) && notify_exit(exit_reason::killed())) {
        core_->threads.abandon();
    }
    return *exited();
}

} // namespace v0
} // namespace otpkv
