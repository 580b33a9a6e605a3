// SPDX-License-Identifier: MIT
/// @file
/// The client side of a cluster: `node_client` keeps a pool of persistent TCP connections
/// to each other node and forwards request lines over them, pipelined, from one I/O thread
/// of its own (epoll on Linux, poll(2) elsewhere). The router (router.hpp) uses it; a host
/// program may use it directly.
///
/// Peers. Every connection a node opens to another node starts with the peer greeting
/// (command.hpp, "Between nodes"), so the other node runs its requests locally and never
/// forwards them again (two nodes whose routing tables disagree cannot bounce a request
/// between them). A node that answers with another name than the routing table gives it
/// is treated as down: it is not the node the table means. A SUBSCRIBE goes over a
/// connection of its own, and its `SUBSCRIBED` acknowledgement tells that it took.
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
/// Ordering: requests given the same `affinity` go over the same connection, so the owner
/// runs them in the order they were handed over (the server uses the client connection's
/// id: one client's pipelined requests keep their order).
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/detail/event_hub.hpp>
#include <otpkv/detail/socket.hpp>
#include <otpkv/process.hpp>

#include <netdb.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// Where another node is.
struct peer_node {
    std::string name;       ///< its node name (what it answers the greeting with)
    std::string host;       ///< an IPv4 or IPv6 literal, or a host name
    std::uint16_t port = 0; ///< its TCP port

    /// Equal when every field is.
    friend bool operator==(const peer_node&, const peer_node&) = default;
};

/// A `node_client`'s settings.
struct client_options {
    /// This node's name, sent in the greeting.
    std::string self = "nonode";
    /// How long opening and greeting a connection may take.
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
    /// most a line long.
    std::size_t max_reply = std::size_t{1} << 20;
};

/// A node went up or down (`monitor_nodes`).
struct node_event {
    std::string node; ///< its name
    bool up = false;  ///< true: now up (connected and greeted); false: now down
};

/// A node's state as the client sees it.
enum class node_status : std::uint8_t {
    unknown, ///< never connected yet
    up,      ///< connected and greeted
    down     ///< failed; requests fail at once while it is retried
};

namespace detail {
/// A callable that may be moved but not copied (C++23's `std::move_only_function`, for
/// C++20): what a forwarded request's reply is handed to, since that usually owns a
/// move-only `deferred_reply`.
template <class Signature> class unique_function;
template <class R, class... Args> class unique_function<R(Args...)> {
  public:
    unique_function() = default;
    template <class F>
    requires(!std::is_same_v<std::decay_t<F>, unique_function> &&
             std::is_invocable_r_v<R, F&, Args...>)
        unique_function(
            F&& f) // NOLINT(google-explicit-constructor): a callable, like std::function
        : call_(std::make_unique<holder<std::decay_t<F>>>(std::forward<F>(f))) {}
    R operator()(Args... args) { return call_->invoke(std::move(args)...); }
    explicit operator bool() const noexcept { return call_ != nullptr; }

  private:
    struct base {
        virtual ~base() = default;
        // By reference: an argument is moved once, into the callable (GCC 12 at -O1 also
        // warns of an uninitialized empty std::optional when it is moved twice).
        virtual R invoke(Args&&... args) = 0;
    };
    template <class F> struct holder final : base {
        explicit holder(F&& f) : fn(std::move(f)) {}
        explicit holder(const F& f) : fn(f) {}
        R invoke(Args&&... args) override { return fn(std::forward<Args>(args)...); }
        F fn;
    };
    std::unique_ptr<base> call_;
};
} // namespace detail

/// The outcome of a forwarded request: the reply's exact bytes, or nullopt when the node is
/// unavailable (down, unreachable, or not answering in time).
using reply_callback = detail::unique_function<void(std::optional<std::string> reply)>;

/// What a remote SUBSCRIBE reports (all on the client's thread, at most one of `refused`
/// and `subscribed`, then any number of `data`, then at most one `ended`).
struct stream_callbacks {
    /// The owner did not subscribe: its reply (`NOT FOUND\r\n`, ...) or nullopt when the
    /// node is unavailable. Nothing else follows.
    std::function<void(std::optional<std::string> reply)> refused;
    /// The owner subscribed (the stream's id, as `subscribe` returned it): events follow.
    std::function<void(std::uint64_t id)> subscribed;
    /// Event bytes as they arrive. Returning false closes the stream (`ended` is not
    /// called).
    std::function<bool(std::string_view bytes)> data;
    /// The stream ended: the bucket exited, or the owner went away, or the client stopped.
    std::function<void()> ended;
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
    ~node_client() override;
    node_client(const node_client&) = delete;
    node_client& operator=(const node_client&) = delete;

    /// The nodes it knows, in the order given (the index is what the members below take).
    [[nodiscard]] const std::vector<peer_node>& nodes() const noexcept;
    /// The index of the node named `name`.
    [[nodiscard]] std::optional<std::size_t> find(std::string_view name) const noexcept;
    /// A node's state.
    [[nodiscard]] node_status status(std::size_t node) const noexcept;

    /// Sends `line` (one request, with its terminator) to `node` and calls `done` with the
    /// reply. `kind` tells how long the reply is (`read_reply`). Requests with the same
    /// `affinity` use the same connection, so they run in order.
    void request(std::size_t node, std::string line, command_kind kind, std::uint64_t affinity,
                 reply_callback done);
    /// Sends `command` and blocks for the reply: its bytes, or nullopt when the node is
    /// unavailable. Not from the client's own thread (a callback): it would wait for itself.
    [[nodiscard]] std::optional<std::string> call(std::size_t node, const command& cmd,
                                                  std::uint64_t affinity = 0);
    /// Opens a connection of its own to `node` and subscribes to `bucket` there; returns an
    /// id for `cancel_stream`.
    std::uint64_t subscribe(std::size_t node, std::string bucket, stream_callbacks callbacks);
    /// Closes a stream; no callback of it runs afterwards (unless one is running now).
    void cancel_stream(std::uint64_t id);
    /// Opens the connections to `node` now, instead of on first use.
    void connect(std::size_t node);
    /// Subscribes to nodes going up and down. Callbacks run on the client's thread.
    [[nodiscard]] subscription monitor_nodes(std::function<void(const node_event&)> callback);

    /// Stops the thread; requests in flight fail as unavailable, streams end.
    exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                     timeout wait = default_shutdown) override;

  private:
    node_client() = default;
    std::shared_ptr<detail::client_loop> loop_;
    detail::process_threads thread_;
};

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

using client_clock = std::chrono::steady_clock;

/// Calls `start` with a callback taking a `T`, and blocks until that callback has run (on
/// any thread, or inside `start`); returns what it was given.
template <class T, class Start> T wait_for_callback(Start&& start) {
    std::mutex mutex;
    std::condition_variable ready;
    std::optional<T> result;
    std::forward<Start>(start)([&](T value) {
        const std::lock_guard lock(mutex); // notified under the lock: the waiter's frame lives
        result.emplace(std::move(value));
        ready.notify_one();
    });
    std::unique_lock lock(mutex);
    ready.wait(lock, [&] { return result.has_value(); });
    return std::move(*result);
}

/// One request sent (or queued) on a connection, waiting for its reply.
struct awaited {
    command_kind kind = command_kind::unknown;
    reply_callback done; // empty for the greeting
    client_clock::time_point deadline;
};

/// One TCP connection to a peer: a pooled one, or a stream's own.
struct peer_connection {
    enum class phase : std::uint8_t { closed, connecting, greeting, ready };

    std::size_t node = 0;
    unique_fd fd;
    phase state = phase::closed;
    std::uint32_t interest = io_none;
    client_clock::time_point setup_deadline{}; // connecting and greeting
    std::string out;                           // on its way to the peer
    std::size_t sent = 0;
    std::string backlog; // requests that wait for the greeting's answer
    std::string in;
    std::deque<awaited> waiting;          // replies owed, in order (the greeting's first)
    client_clock::time_point last_used{}; // a request sent or a reply received
    bool dirty = false;                   // requests appended, to be sent once the mail is taken

    // A stream's (SUBSCRIBE) only.
    std::uint64_t stream_id = 0;
    stream_callbacks callbacks;
    bool subscribed = false;
    client_clock::time_point stream_deadline{};
};

/// One peer node: its address, its pool and its state.
struct peer_state {
    peer_node address;
    std::vector<std::unique_ptr<peer_connection>> pool;
    std::atomic<node_status> status{node_status::unknown};
    client_clock::time_point retry_at{};
    std::chrono::milliseconds backoff{0};
    bool probing = false; // down, and a connection attempt is on its way
};

/// What other threads hand the loop.
struct client_mail {
    enum class kind : std::uint8_t { request, subscribe, cancel, connect };
    kind what = kind::request;
    std::size_t node = 0;
    std::uint64_t affinity = 0; // request: which pooled connection; subscribe/cancel: id
    std::string line;           // request: the line; subscribe: the bucket
    command_kind command = command_kind::unknown;
    reply_callback done;
    stream_callbacks callbacks;
    client_clock::time_point deadline{};
};

/// The I/O thread's state.
class client_loop {
  public:
    client_loop(std::vector<peer_node> nodes, client_options options)
        : options_(std::move(options)), poller_(poller_kind::automatic) {
        options_.connections = std::max(1U, options_.connections);
        for (auto& n : nodes) {
            auto p = std::make_unique<peer_state>();
            p->address = std::move(n);
            for (unsigned i = 0; i < options_.connections; ++i) {
                auto c = std::make_unique<peer_connection>();
                c->node = peers_.size();
                p->pool.push_back(std::move(c));
            }
            addresses_.push_back(p->address);
            peers_.push_back(std::move(p));
        }
        poller_.add(wake_.read_fd(), &wake_, io_read);
        greeting_ = peer_greeting_line(options_.self);
    }

    const std::vector<peer_node>& addresses() const noexcept { return addresses_; }
    const client_options& options() const noexcept { return options_; }
    node_status status(std::size_t node) const noexcept {
        return node < peers_.size() ? peers_[node]->status.load(std::memory_order_acquire)
                                    : node_status::down;
    }
    std::shared_ptr<event_hub<node_event>> hub() const noexcept { return hub_; }

    /// From any thread. False when the loop has finished (the mail is not taken).
    bool post(client_mail&& m) { return mailbox_.post(std::move(m)); }
    std::uint64_t next_stream_id() noexcept {
        return next_stream_id_.fetch_add(1, std::memory_order_relaxed);
    }
    void request_stop() noexcept {
        stopping_.store(true, std::memory_order_release);
        wake_.notify();
    }

    void run();

  private:
    void take_mail();
    void handle(peer_connection& c, std::uint32_t events);
    void open(peer_connection& c);
    void on_connected(peer_connection& c);
    void read_replies(peer_connection& c);
    bool deliver(peer_connection& c);
    void flush(peer_connection& c);
    void set_interest(peer_connection& c, std::uint32_t want);
    void close(peer_connection& c);
    void broken(peer_connection& c);
    void node_down(std::size_t node);
    void node_up(std::size_t node);
    void fail_all(peer_connection& c);
    void end_stream(peer_connection& c, bool tell);
    int check_timers();
    void publish(std::size_t node, bool up);
    void shut_down();

    client_options options_;
    std::vector<peer_node> addresses_;
    std::vector<std::unique_ptr<peer_state>> peers_;
    std::vector<std::unique_ptr<peer_connection>> streams_;
    std::string greeting_;
    poller poller_;
    wake_pipe wake_;
    std::vector<io_event> events_;
    std::shared_ptr<event_hub<node_event>> hub_ = std::make_shared<event_hub<node_event>>();
    std::atomic<bool> stopping_{false};
    std::atomic<std::uint64_t> next_stream_id_{1};

    mailbox<client_mail> mailbox_{wake_};
    std::vector<client_mail> taken_;
    std::vector<peer_connection*> dirty_;
};

/// Resolves `host:port` (a literal at once; a host name through getaddrinfo, which may
/// block) into the first address found.
inline bool resolve(const std::string& host, std::uint16_t port, socket_address& out) {
    if (socket_address::parse(host, port, out)) {
        return true;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(port);
    if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &found) != 0 || found == nullptr) {
        return false;
    }
    std::memcpy(&out.storage, found->ai_addr, found->ai_addrlen);
    out.length = static_cast<socklen_t>(found->ai_addrlen);
    ::freeaddrinfo(found);
    return true;
}

inline void client_loop::run() {
    while (!stopping_.load(std::memory_order_acquire)) {
        poller_.wait(events_, check_timers());
        for (const io_event& ev : events_) {
            if (ev.tag == &wake_) {
                wake_.drain();
                take_mail();
            } else {
                auto& c = *static_cast<peer_connection*>(ev.tag);
                if (c.fd) {
                    handle(c, ev.events);
                }
            }
        }
        // Streams closed during the batch are freed here, once no event can name them.
        std::erase_if(streams_,
                      [](const auto& s) { return s->state == peer_connection::phase::closed; });
    }
    shut_down();
}

inline void client_loop::take_mail() {
    mailbox_.take(taken_);
    const bool stopping = stopping_.load(std::memory_order_acquire);
    for (client_mail& m : taken_) {
        peer_state* const p = m.node < peers_.size() ? peers_[m.node].get() : nullptr;
        const bool refuse = stopping || p == nullptr ||
                            p->status.load(std::memory_order_relaxed) == node_status::down;
        switch (m.what) {
        case client_mail::kind::request: {
            if (refuse) {
                m.done(std::nullopt);
                break;
            }
            peer_connection& c = *p->pool[m.affinity % p->pool.size()];
            c.waiting.push_back({m.command, std::move(m.done), m.deadline});
            if (c.state == peer_connection::phase::ready) {
                c.out.append(m.line);
                if (!c.dirty) {
                    c.dirty = true;
                    dirty_.push_back(&c);
                }
            } else {
                c.backlog.append(m.line);
                if (c.state == peer_connection::phase::closed) {
                    open(c);
                }
            }
            break;
        }
        case client_mail::kind::subscribe: {
            if (refuse) {
                m.callbacks.refused(std::nullopt);
                break;
            }
            auto s = std::make_unique<peer_connection>();
            s->node = m.node;
            s->stream_id = m.affinity;
            s->callbacks = std::move(m.callbacks);
            s->stream_deadline = m.deadline;
            s->backlog = "SUBSCRIBE " + m.line + "\r\n";
            peer_connection& c = *s;
            streams_.push_back(std::move(s));
            open(c);
            break;
        }
        case client_mail::kind::cancel:
            for (const auto& s : streams_) {
                if (s->stream_id == m.affinity && s->state != peer_connection::phase::closed) {
                    s->callbacks = {};
                    close(*s);
                }
            }
            break;
        case client_mail::kind::connect:
            if (!refuse) {
                for (const auto& c : p->pool) {
                    if (c->state == peer_connection::phase::closed) {
                        open(*c);
                    }
                }
            }
            break;
        }
    }
    taken_.clear();
    // One send per connection for all the requests this batch of mail brought it.
    const auto now = client_clock::now();
    for (peer_connection* c : dirty_) {
        c->dirty = false;
        if (c->state == peer_connection::phase::ready) {
            c->last_used = now;
            flush(*c);
        }
    }
    dirty_.clear();
}

inline void client_loop::open(peer_connection& c) {
    const peer_node& where = peers_[c.node]->address;
    c.setup_deadline = client_clock::now() + options_.connect_timeout;
    c.in.clear();
    c.sent = 0;
    c.out = greeting_;
    c.waiting.push_front({command_kind::unknown, {}, c.setup_deadline});
    socket_address address;
    int fd = -1;
    if (resolve(where.host, where.port, address)) {
        fd = ::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    }
    if (fd < 0) {
        c.state = peer_connection::phase::connecting; // so that `broken` sees an attempt
        broken(c);
        return;
    }
    c.fd.reset(fd);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c.state = peer_connection::phase::connecting;
    int rc = 0;
    do {
        rc = ::connect(fd, address.get(), address.length);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno != EINPROGRESS) {
        broken(c);
        return;
    }
    c.interest = io_write;
    poller_.add(fd, &c, io_write);
    if (rc == 0) {
        on_connected(c);
    }
}

inline void client_loop::on_connected(peer_connection& c) {
    c.state = peer_connection::phase::greeting;
    flush(c);
}

inline void client_loop::handle(peer_connection& c, std::uint32_t events) {
    if (c.state == peer_connection::phase::connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            broken(c);
            return;
        }
        if ((events & (io_write | io_error)) == 0) {
            return;
        }
        on_connected(c);
        if (!c.fd) {
            return;
        }
    }
    if ((events & (io_read | io_error)) != 0) {
        read_replies(c);
    }
    if (c.fd && (events & io_write) != 0) {
        flush(c);
    }
}

inline void client_loop::flush(peer_connection& c) {
    if (!send_pending(c.fd.get(), c.out, c.sent, 65536)) {
        broken(c);
        return;
    }
    set_interest(c, c.out.empty() ? io_read : io_read | io_write);
}

inline void client_loop::set_interest(peer_connection& c, std::uint32_t want) {
    if (want != c.interest) {
        c.interest = want;
        poller_.modify(c.fd.get(), &c, want);
    }
}

inline void client_loop::read_replies(peer_connection& c) {
    char buffer[16384];
    for (int i = 0; i < 8; ++i) {
        const ssize_t n = ::read(c.fd.get(), buffer, sizeof buffer);
        if (n > 0) {
            if (c.subscribed) {
                if (!c.callbacks.data(std::string_view(buffer, static_cast<std::size_t>(n)))) {
                    c.callbacks = {};
                    close(c);
                    return;
                }
                continue;
            }
            c.in.append(buffer, static_cast<std::size_t>(n));
            if (!deliver(c)) {
                return;
            }
            if (static_cast<std::size_t>(n) < sizeof buffer) {
                return;
            }
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            // EOF or reset.
            if (c.subscribed) {
                end_stream(c, true);
            } else {
                broken(c);
            }
            return;
        }
    }
}

inline bool client_loop::deliver(peer_connection& c) {
    std::size_t used = 0;
    while (!c.waiting.empty()) {
        const std::string_view rest = std::string_view(c.in).substr(used);
        const std::size_t size = read_reply(c.waiting.front().kind, rest).size;
        if (size == 0) {
            if (rest.size() > options_.max_reply) {
                broken(c); // no reply is that long: not a peer we understand
                return false;
            }
            break;
        }
        awaited front = std::move(c.waiting.front());
        c.waiting.pop_front();
        c.last_used = client_clock::now();
        const std::string_view bytes = rest.substr(0, size);
        used += size;
        if (!front.done) {
            // The greeting's answer, or a stream's SUBSCRIBE acknowledgement.
            if (c.stream_id != 0 && c.state == peer_connection::phase::ready) {
                std::string_view line = bytes.substr(0, bytes.size() - 1);
                if (!line.empty() && line.back() == '\r') {
                    line.remove_suffix(1);
                }
                if (line != peer_subscribed) {
                    std::string reply(bytes); // before `close` clears the buffer it views
                    auto refused = std::move(c.callbacks.refused);
                    c.callbacks = {};
                    close(c);
                    if (refused) {
                        refused(std::move(reply));
                    }
                    return false;
                }
                c.subscribed = true;
                const std::string after = c.in.substr(used);
                c.in.clear();
                if (c.callbacks.subscribed) {
                    c.callbacks.subscribed(c.stream_id);
                }
                if (!after.empty() && c.state != peer_connection::phase::closed &&
                    !c.callbacks.data(after)) {
                    c.callbacks = {};
                    close(c);
                }
                return false;
            }
            const auto name = parse_peer_greeting(bytes);
            if (!name || *name != peers_[c.node]->address.name) {
                used = 0;
                c.in.clear();
                node_down(c.node); // someone else answers there
                return false;
            }
            // Greeted: what waited goes out now (a stream's SUBSCRIBE, whose answer is owed
            // next; or the requests queued while connecting).
            c.state = peer_connection::phase::ready;
            if (c.stream_id != 0) {
                c.waiting.push_back({command_kind::subscribe, {}, c.stream_deadline});
            } else {
                node_up(c.node);
            }
            c.out.append(c.backlog);
            std::string().swap(c.backlog);
            flush(c);
            if (!c.fd || c.state != peer_connection::phase::ready) {
                return false; // broken at once (and perhaps reopened: `in` starts afresh)
            }
            continue;
        }
        front.done(std::string(bytes));
    }
    c.in.erase(0, used);
    return true;
}

inline void client_loop::fail_all(peer_connection& c) {
    // Taken out first: a callback may hand over new requests (they queue behind).
    std::deque<awaited> failed;
    failed.swap(c.waiting);
    for (auto& w : failed) {
        if (w.done) {
            w.done(std::nullopt);
        }
    }
}

inline void client_loop::close(peer_connection& c) {
    if (c.fd) {
        poller_.remove(c.fd.get());
        c.fd.reset();
    }
    c.state = peer_connection::phase::closed;
    c.interest = io_none;
    c.out.clear();
    c.sent = 0;
    c.backlog.clear();
    c.in.clear();
    c.subscribed = false;
}

inline void client_loop::end_stream(peer_connection& c, bool tell) {
    auto callbacks = std::move(c.callbacks);
    c.callbacks = {};
    const bool was_subscribed = c.subscribed;
    close(c);
    if (!tell) {
        return;
    }
    if (was_subscribed) {
        if (callbacks.ended) {
            callbacks.ended();
        }
    } else if (callbacks.refused) {
        callbacks.refused(std::nullopt);
    }
}

inline void client_loop::broken(peer_connection& c) {
    const bool was_ready = c.state == peer_connection::phase::ready;
    if (c.stream_id != 0) {
        if (!c.subscribed && c.state != peer_connection::phase::ready) {
            // Could not connect or greet: the node is unreachable. It is marked down before
            // the refusal is reported, so that whoever hears of it sees it down.
            node_down(c.node);
        }
        end_stream(c, true);
        return;
    }
    peer_state& p = *peers_[c.node];
    if (!was_ready || p.status.load(std::memory_order_relaxed) != node_status::up) {
        node_down(c.node); // fails this connection's requests too, with the node down
        return;
    }
    // A working connection broke (the node restarted its server, or died): one attempt at
    // once tells which; its failure takes the node down.
    close(c);
    fail_all(c);
    open(c);
}

inline void client_loop::node_down(std::size_t node) {
    peer_state& p = *peers_[node];
    const node_status before = p.status.exchange(node_status::down, std::memory_order_acq_rel);
    p.probing = false;
    for (const auto& c : p.pool) {
        close(*c);
        fail_all(*c);
    }
    if (before != node_status::down) {
        p.backoff = options_.retry_min;
    } else {
        p.backoff = std::min(p.backoff * 2, options_.retry_max);
    }
    p.retry_at = client_clock::now() + p.backoff;
    if (before == node_status::up) {
        publish(node, false);
    }
}

inline void client_loop::node_up(std::size_t node) {
    peer_state& p = *peers_[node];
    p.probing = false;
    const node_status before = p.status.exchange(node_status::up, std::memory_order_acq_rel);
    if (before != node_status::up) {
        p.backoff = options_.retry_min;
        publish(node, true);
    }
}

inline void client_loop::publish(std::size_t node, bool up) {
    if (hub_->push(node_event{peers_[node]->address.name, up})) {
        hub_->drain();
    }
}

inline int client_loop::check_timers() {
    const auto now = client_clock::now();
    auto next = client_clock::time_point::max();
    const auto consider = [&](client_clock::time_point t) { next = std::min(next, t); };
    for (std::size_t i = 0; i < peers_.size(); ++i) {
        peer_state& p = *peers_[i];
        bool down = false;
        for (const auto& c : p.pool) {
            if (c->state == peer_connection::phase::connecting ||
                c->state == peer_connection::phase::greeting) {
                if (now >= c->setup_deadline) {
                    down = true;
                    break;
                }
                consider(c->setup_deadline);
            }
            if (!c->waiting.empty()) {
                // One timeout for all, so the oldest request has the earliest deadline.
                const auto deadline = c->waiting.front().deadline;
                if (now >= deadline) {
                    down = true; // frozen or hung: it does not answer
                    break;
                }
                consider(deadline);
            } else if (c->state == peer_connection::phase::ready &&
                       options_.heartbeat.count() > 0) {
                const auto due = c->last_used + options_.heartbeat;
                if (now >= due) {
                    c->out.append("\r\n"); // answered `UNKNOWN COMMAND` by any node
                    c->waiting.push_back({command_kind::unknown, [](std::optional<std::string>) {},
                                          now + options_.request_timeout});
                    c->last_used = now;
                    flush(*c);
                    if (c->fd) {
                        consider(c->waiting.front().deadline);
                    }
                } else {
                    consider(due);
                }
            }
        }
        if (down) {
            node_down(i);
        }
        if (p.status.load(std::memory_order_relaxed) == node_status::down) {
            if (!p.probing && now >= p.retry_at) {
                p.probing = true;
                open(*p.pool.front());
            }
            if (!p.probing) {
                consider(p.retry_at);
            } else if (p.pool.front()->state != peer_connection::phase::closed) {
                consider(p.pool.front()->setup_deadline);
            }
        }
    }
    for (const auto& s : streams_) {
        if (s->state == peer_connection::phase::closed || s->subscribed) {
            continue;
        }
        const auto deadline = std::min(s->setup_deadline, s->stream_deadline);
        if (now >= deadline) {
            const std::size_t node = s->node;
            end_stream(*s, true);
            node_down(node);
        } else {
            consider(deadline);
        }
    }
    if (next == client_clock::time_point::max()) {
        return -1;
    }
    const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
    return static_cast<int>(std::clamp<long long>(wait, 0, 60'000));
}

inline void client_loop::shut_down() {
    mailbox_.close();
    take_mail(); // what came before the close; nothing comes after it
    for (const auto& p : peers_) {
        for (const auto& c : p->pool) {
            close(*c);
            fail_all(*c);
        }
    }
    for (const auto& s : streams_) {
        if (s->state != peer_connection::phase::closed) {
            end_stream(*s, true);
        }
    }
    streams_.clear();
}

} // namespace detail

inline result<std::shared_ptr<node_client>> node_client::start(std::vector<peer_node> nodes,
                                                               client_options options) {
    std::shared_ptr<node_client> c(new node_client());
    try {
        c->loop_ = std::make_shared<detail::client_loop>(std::move(nodes), std::move(options));
        c->thread_.start([loop = c->loop_, signal = c->signal()] {
            exit_reason why = exit_reason::shutdown();
            try {
                loop->run();
            } catch (...) {
                why = exit_reason::from_exception(std::current_exception());
            }
            signal->exit(why);
        });
    } catch (...) {
        const auto reason = exit_reason::from_exception(std::current_exception());
        c->notify_exit(reason);
        return error{errc::start_failed, {}, reason};
    }
    return c;
}

inline node_client::~node_client() {
    if (loop_ == nullptr) {
        return;
    }
    if (alive()) {
        stop(exit_reason::shutdown(), default_shutdown);
    }
    thread_.release();
}

inline const std::vector<peer_node>& node_client::nodes() const noexcept {
    return loop_->addresses();
}

inline std::optional<std::size_t> node_client::find(std::string_view name) const noexcept {
    const auto& all = loop_->addresses();
    for (std::size_t i = 0; i < all.size(); ++i) {
        if (all[i].name == name) {
            return i;
        }
    }
    return std::nullopt;
}

inline node_status node_client::status(std::size_t node) const noexcept {
    return loop_->status(node);
}

inline void node_client::request(std::size_t node, std::string line, command_kind kind,
                                 std::uint64_t affinity, reply_callback done) {
    if (loop_->status(node) == node_status::down) {
        done(std::nullopt); // fail fast: it is being retried in the background
        return;
    }
    detail::client_mail m;
    m.what = detail::client_mail::kind::request;
    m.node = node;
    m.affinity = affinity;
    m.line = std::move(line);
    m.command = kind;
    m.deadline = detail::client_clock::now() + loop_->options().request_timeout;
    m.done = std::move(done);
    if (!loop_->post(std::move(m))) {
        m.done(std::nullopt); // stopped: `post` left the mail alone
    }
}

inline std::optional<std::string> node_client::call(std::size_t node, const command& cmd,
                                                    std::uint64_t affinity) {
    return detail::wait_for_callback<std::optional<std::string>>(
        [&](auto done) { request(node, request_line(cmd), cmd.kind, affinity, std::move(done)); });
}

inline std::uint64_t node_client::subscribe(std::size_t node, std::string bucket,
                                            stream_callbacks callbacks) {
    const std::uint64_t id = loop_->next_stream_id();
    if (loop_->status(node) == node_status::down) {
        callbacks.refused(std::nullopt);
        return id;
    }
    detail::client_mail m;
    m.what = detail::client_mail::kind::subscribe;
    m.node = node;
    m.affinity = id;
    m.line = std::move(bucket);
    m.deadline = detail::client_clock::now() + loop_->options().request_timeout;
    m.callbacks = std::move(callbacks);
    if (!loop_->post(std::move(m))) {
        m.callbacks.refused(std::nullopt);
    }
    return id;
}

inline void node_client::cancel_stream(std::uint64_t id) {
    detail::client_mail m;
    m.what = detail::client_mail::kind::cancel;
    m.affinity = id;
    loop_->post(std::move(m));
}

inline void node_client::connect(std::size_t node) {
    detail::client_mail m;
    m.what = detail::client_mail::kind::connect;
    m.node = node;
    loop_->post(std::move(m));
}

inline subscription node_client::monitor_nodes(std::function<void(const node_event&)> callback) {
    return loop_->hub()->subscribe(std::move(callback));
}

inline exit_reason node_client::stop(exit_reason reason, timeout wait) {
    loop_->request_stop();
    if (thread_.is_current()) {
        return reason; // from a callback: the exit comes once it returns
    }
    if (!wait_recorded(wait) && notify_exit(exit_reason::killed())) {
        thread_.abandon(); // a callback that does not return
    }
    return *exited();
}

} // namespace v0
} // namespace otpkv
