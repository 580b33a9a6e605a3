// SPDX-License-Identifier: MIT
/// @file
/// The engine under net/client.hpp, which includes it at its end: the I/O thread, its
/// pools of peer connections, the handshake, reply framing, timeouts, heartbeats and
/// backoff, relayed SUBSCRIBE streams, then node_client's members. What a node_client
/// promises is told in client.hpp.
///
/// Nothing here is public API. Thread safety: the loop and its connections belong to the
/// I/O thread; other threads reach it only through its mailbox and the atomic node states.
#pragma once

#include <otpkv/net/client.hpp>

#include <otpkv/detail/event_hub.hpp>
#include <otpkv/detail/mailbox.hpp>
#include <otpkv/detail/random.hpp>
#include <otpkv/detail/socket.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

namespace detail {

using client_clock = std::chrono::steady_clock;

/// One request sent (or queued) on a connection, waiting for its reply.
struct awaited {
    command_kind kind = command_kind::unknown;
    framed_callback done; // a no-op for a SUBSCRIBE (`stream` tells)
    client_clock::time_point deadline;
    std::uint64_t id = 0;     // the request id its reply's header must name
    std::uint64_t stream = 0; // a SUBSCRIBE's: the stream's id (node_client::subscribe's)
    bool counted = false;     // a caller's request or SUBSCRIBE (not a heartbeat, UNSUBSCRIBE)
};

/// A relayed stream on a peer connection (command.hpp, "Between nodes": `*<id>` events,
/// `!<id>` its end), under the request id of its SUBSCRIBE.
struct stream_entry {
    std::uint64_t stream = 0; // node_client::subscribe's id
    stream_callbacks callbacks;
    bool subscribed = false; // SUBSCRIBED came: events may come
    bool cancelled = false;  // cancelled here: its events are dropped until its `!<id>`
};

/// The longest reply header a peer sends: `=` and 20 digits, CR LF.
inline constexpr std::size_t max_peer_header = 23;

/// One pooled TCP connection to a peer: requests, and the streams relayed over it.
struct peer_connection {
    enum class phase : std::uint8_t { closed, connecting, greeting, ready };

    std::size_t node = 0;
    unique_fd fd;
    phase state = phase::closed;
    std::uint32_t interest = io_none;
    client_clock::time_point setup_deadline{}; // connecting and the handshake
    std::string out;                           // on its way to the peer
    std::size_t sent = 0;
    std::string backlog; // requests that wait for the handshake's end
    std::string in;
    std::size_t scanned = 0;              // an INFO reply's whole lines before its OK, so far
    std::deque<awaited> waiting;          // replies owed, in order
    std::uint64_t next_id = 1;            // the next request id (never reused on this object)
    std::string nonce;                    // this connection's handshake nonce
    bool proved = false;                  // handshake: our proof is sent, `OK` is owed
    client_clock::time_point last_used{}; // a request sent or a reply received
    bool dirty = false;                   // requests appended, to be sent once the mail is taken
    std::unordered_map<std::uint64_t, stream_entry> streams; // by their SUBSCRIBE's id
};

/// One peer node: its address, its pool and its state.
struct peer_state {
    peer_node address;
    std::vector<std::unique_ptr<peer_connection>> pool;
    std::atomic<node_status> status{node_status::unknown};
    client_clock::time_point retry_at{};
    std::chrono::milliseconds backoff{0};
    bool probing = false; // down, and a connection attempt is on its way
    std::string refusal;  // the handshake failure last logged (until it is up again)

    // The counters `node_client::stats` reads. Only the I/O thread writes them (a relaxed
    // load and store, no read-modify-write: there is no other writer), any thread reads.
    std::atomic<std::size_t> in_flight{0};
    std::atomic<std::size_t> requests{0};
    std::atomic<std::size_t> failures{0};
    std::atomic<std::size_t> connections{0};
    mutable std::mutex error_mutex; // taken on failures and by `stats`, never per request
    std::string last_error;

    static void add(std::atomic<std::size_t>& counter, std::size_t n = 1) noexcept {
        counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    static void sub(std::atomic<std::size_t>& counter) noexcept {
        counter.store(counter.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    }
    void set_error(std::string why) {
        const std::lock_guard lock(error_mutex);
        last_error = std::move(why);
    }
};

/// `host:port`, an IPv6 literal in brackets.
[[nodiscard]] inline std::string host_port(const peer_node& n) {
    const bool v6 = n.host.find(':') != std::string::npos;
    return (v6 ? "[" + n.host + "]" : n.host) + ":" + std::to_string(n.port);
}

/// The text of an errno value.
[[nodiscard]] inline std::string socket_error_text(int err) {
    return std::system_category().message(err);
}

/// What other threads hand the loop.
struct client_mail {
    enum class kind : std::uint8_t { request, subscribe, cancel, connect };
    kind what = kind::request;
    std::size_t node = 0;
    std::uint64_t affinity = 0; // request: which pooled connection; subscribe/cancel: id
    std::string line;           // request: the line; subscribe: the bucket
    command_kind command = command_kind::unknown;
    framed_callback done;
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
    }

    const std::vector<peer_node>& addresses() const noexcept { return addresses_; }
    const client_options& options() const noexcept { return options_; }
    node_status status(std::size_t node) const noexcept {
        return node < peers_.size() ? peers_[node]->status.load(std::memory_order_acquire)
                                    : node_status::down;
    }
    std::shared_ptr<event_hub<node_event>> hub() const noexcept { return hub_; }
    node_stats stats(std::size_t node) const {
        node_stats s;
        s.status = status(node);
        if (node >= peers_.size()) {
            return s;
        }
        const peer_state& p = *peers_[node];
        s.in_flight = p.in_flight.load(std::memory_order_relaxed);
        s.requests = p.requests.load(std::memory_order_relaxed);
        s.failures = p.failures.load(std::memory_order_relaxed);
        s.connections = p.connections.load(std::memory_order_relaxed);
        const std::lock_guard lock(p.error_mutex);
        s.last_error = p.last_error;
        return s;
    }

    /// From any thread. False when the loop has finished (the mail is not taken).
    bool post(client_mail&& m) { return mailbox_.post(std::move(m)); }
    std::uint64_t next_stream_id() noexcept {
        return next_stream_id_.fetch_add(1, std::memory_order_relaxed);
    }
    /// From any thread; the first reason asked for is the one the loop exits with.
    void request_stop(const exit_reason& why) {
        {
            const std::lock_guard lock(reason_mutex_);
            if (!stop_reason_) {
                stop_reason_ = why;
            }
        }
        stopping_.store(true, std::memory_order_release);
        wake_.notify();
    }
    /// The reason the loop was asked to stop with (shutdown when it was not asked).
    exit_reason stop_reason() const {
        const std::lock_guard lock(reason_mutex_);
        return stop_reason_.value_or(exit_reason::shutdown());
    }

    void run();

  private:
    void take_mail();
    void handle(peer_connection& c, std::uint32_t events);
    void open(peer_connection& c);
    void on_connected(peer_connection& c);
    void read_replies(peer_connection& c);
    bool deliver(peer_connection& c);
    bool handshake(peer_connection& c);
    void refuse(peer_connection& c, const std::string& why);
    void violation(peer_connection& c, std::string_view why, std::string_view line);
    void flush(peer_connection& c);
    void set_interest(peer_connection& c, std::uint32_t want);
    void close(peer_connection& c);
    void broken(peer_connection& c, std::string why);
    void node_down(std::size_t node, std::string why);
    void node_up(std::size_t node);
    void fail_all(peer_connection& c);
    void log(log_level level, std::string_view what, std::size_t node, std::string reason = {});
    void queue(peer_connection& c, std::uint64_t id, std::string_view request);
    bool stream_line(peer_connection& c, std::string_view line);
    void unsubscribe(peer_connection& c, std::uint64_t id);
    int check_timers();
    void publish(std::size_t node, bool up);
    void shut_down();

    client_options options_;
    std::vector<peer_node> addresses_;
    std::vector<std::unique_ptr<peer_state>> peers_;
    // Where each stream runs: its connection and its SUBSCRIBE's id there.
    std::unordered_map<std::uint64_t, std::pair<peer_connection*, std::uint64_t>> stream_index_;
    poller poller_;
    wake_pipe wake_;
    std::vector<io_event> events_;
    std::shared_ptr<event_hub<node_event>> hub_ = std::make_shared<event_hub<node_event>>();
    std::atomic<bool> stopping_{false};
    mutable std::mutex reason_mutex_;
    std::optional<exit_reason> stop_reason_;
    std::atomic<std::uint64_t> next_stream_id_{1};

    mailbox<client_mail> mailbox_{wake_};
    std::vector<client_mail> taken_;
    std::vector<peer_connection*> dirty_;
};

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
            if (p != nullptr) {
                peer_state::add(p->requests);
            }
            if (refuse) {
                if (p != nullptr) {
                    peer_state::add(p->failures);
                }
                m.done(std::nullopt);
                break;
            }
            peer_connection& c = *p->pool[m.affinity % p->pool.size()];
            const std::uint64_t id = c.next_id++;
            c.waiting.push_back({m.command, std::move(m.done), m.deadline, id, 0, true});
            peer_state::add(p->in_flight);
            queue(c, id, m.line);
            break;
        }
        case client_mail::kind::subscribe: {
            if (p != nullptr) {
                peer_state::add(p->requests);
            }
            if (refuse) {
                if (p != nullptr) {
                    peer_state::add(p->failures);
                }
                m.callbacks.refused(std::nullopt);
                break;
            }
            // Multiplexed over the pool, like requests: no connection of its own, so relayed
            // subscriptions never take the owner's connection slots.
            peer_connection& c = *p->pool[m.affinity % p->pool.size()];
            const std::uint64_t id = c.next_id++;
            c.streams.emplace(id, stream_entry{m.affinity, std::move(m.callbacks), false, false});
            stream_index_[m.affinity] = {&c, id};
            c.waiting.push_back({command_kind::subscribe, [](std::optional<framed_reply>) {},
                                 m.deadline, id, m.affinity, true});
            peer_state::add(p->in_flight);
            queue(c, id, "SUBSCRIBE " + m.line + "\r\n");
            break;
        }
        case client_mail::kind::cancel: {
            const auto found = stream_index_.find(m.affinity);
            if (found == stream_index_.end()) {
                break; // ended already
            }
            auto [c, id] = found->second;
            stream_index_.erase(found);
            stream_entry& e = c->streams.at(id);
            e.callbacks = {};
            e.cancelled = true;
            if (e.subscribed) {
                unsubscribe(*c, id);
            } // else: when its SUBSCRIBED comes
            break;
        }
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

inline void client_loop::queue(peer_connection& c, std::uint64_t id, std::string_view request) {
    std::string& to = c.state == peer_connection::phase::ready ? c.out : c.backlog;
    append_peer_id(to, id); // `<id> <request>`: its reply must name it
    to.push_back(' ');
    to.append(request);
    if (c.state == peer_connection::phase::ready) {
        if (!c.dirty) {
            c.dirty = true;
            dirty_.push_back(&c);
        }
    } else if (c.state == peer_connection::phase::closed) {
        open(c);
    }
}

inline void client_loop::unsubscribe(peer_connection& c, std::uint64_t id) {
    // `<id2> UNSUBSCRIBE <id>`; the owner ends the stream with `!<id>` after its last event,
    // and the entry goes then.
    const std::uint64_t request = c.next_id++;
    c.waiting.push_back({command_kind::unknown, [](std::optional<framed_reply>) {},
                         client_clock::now() + options_.request_timeout, request, 0});
    std::string line(peer_unsubscribe);
    line.push_back(' ');
    append_peer_id(line, id);
    line.append("\r\n");
    queue(c, request, line);
}

inline bool client_loop::stream_line(peer_connection& c, std::string_view line) {
    const auto tag = parse_peer_reply(line);
    const auto found = tag ? c.streams.find(tag->id) : c.streams.end();
    if (found == c.streams.end() || !found->second.subscribed) {
        return false; // a stream it does not have
    }
    stream_entry& e = found->second;
    if (tag->mark == peer_end_mark) {
        // The bucket exited (or the cancel was done): the stream's last line.
        auto callbacks = std::move(e.callbacks);
        const bool tell = !e.cancelled;
        stream_index_.erase(e.stream);
        c.streams.erase(found);
        if (tell && callbacks.ended) {
            callbacks.ended();
        }
        return true;
    }
    if (e.cancelled) {
        return true; // on its way before the cancel: dropped
    }
    std::string event(tag->rest);
    event.append("\r\n");
    if (!e.callbacks.data(event)) {
        // The relayed subscriber is gone: cancel it at the owner.
        e.callbacks = {};
        e.cancelled = true;
        stream_index_.erase(e.stream);
        unsubscribe(c, found->first);
    }
    return true;
}

inline void client_loop::open(peer_connection& c) {
    const peer_node& where = peers_[c.node]->address;
    c.setup_deadline = client_clock::now() + options_.connect_timeout;
    c.in.clear();
    c.sent = 0;
    c.nonce = new_peer_nonce();
    c.proved = false;
    c.out = peer_greeting_line(options_.self, c.nonce);
    socket_address address;
    int fd = -1;
    std::string why;
    if (c.nonce.empty()) {
        why = "no random bytes for a handshake nonce";
    } else if (!resolve(where.host, where.port, address)) {
        why = "cannot resolve " + where.host;
    } else {
        fd = ::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            why = "socket: " + socket_error_text(errno);
        }
    }
    if (fd < 0) {
        c.state = peer_connection::phase::connecting; // so that `broken` sees an attempt
        broken(c, std::move(why));
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
        broken(c, "connect: " + socket_error_text(errno));
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
            broken(c, "connect: " + socket_error_text(err != 0 ? err : errno));
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
        broken(c, "send: " + socket_error_text(errno));
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
            c.in.append(buffer, static_cast<std::size_t>(n));
            if (!deliver(c)) {
                return;
            }
            if (!c.out.empty()) {
                flush(c); // an UNSUBSCRIBE that a stream's answer or event asked for
                if (!c.fd) {
                    return;
                }
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
            broken(c, n == 0 ? std::string("it closed the connection")
                             : "read: " + socket_error_text(errno));
            return;
        }
    }
}

inline bool client_loop::deliver(peer_connection& c) {
    if (c.state == peer_connection::phase::greeting) {
        if (!handshake(c)) {
            return false;
        }
        if (c.state == peer_connection::phase::greeting) {
            return true; // the rest of a handshake line is on its way
        }
    }
    std::size_t used = 0;
    while (true) {
        const std::string_view rest = std::string_view(c.in).substr(used);
        if (!rest.empty() && (rest.front() == peer_event_mark || rest.front() == peer_end_mark) &&
            c.state == peer_connection::phase::ready) {
            // A stream's event or end, between two replies.
            const std::size_t end = rest.find('\n');
            if (end == std::string_view::npos) {
                if (rest.size() > options_.max_reply) {
                    violation(c, "sent a stream line longer than max_reply", {});
                    return false;
                }
                break;
            }
            used += end + 1;
            if (!stream_line(c, rest.substr(0, end + 1))) {
                // An unknown stream: nothing more of it can be trusted.
                violation(c, "sent an event of a stream it was not asked for", rest.substr(0, end));
                return false;
            }
            if (c.state != peer_connection::phase::ready) {
                return false; // closed by a callback's doing
            }
            continue;
        }
        if (c.waiting.empty()) {
            if (!rest.empty()) {
                // Bytes nobody asked for: not a peer to trust with replies.
                violation(c, "sent bytes when no reply was owed", rest);
                return false;
            }
            break;
        }
        // A request's reply comes behind its header, `=<id>`, which must name the oldest
        // request waiting here.
        std::size_t header = 0;
        {
            const std::size_t end = rest.find('\n');
            if (end == std::string_view::npos) {
                if (rest.size() > max_peer_header) {
                    violation(c, "sent a reply without its header", rest);
                    return false;
                }
                break;
            }
            const auto tag = parse_peer_reply(rest.substr(0, end + 1));
            if (!tag || tag->mark != peer_reply_mark || tag->id != c.waiting.front().id) {
                // Another id, or not a header: its replies cannot be matched.
                violation(c,
                          "answered request " + std::to_string(c.waiting.front().id) +
                              " with another header",
                          rest.substr(0, end));
                return false;
            }
            header = end + 1;
        }
        const std::string_view body = rest.substr(header);
        const command_kind kind = c.waiting.front().kind;
        reply_view framed;
        if (kind != command_kind::info) {
            framed = read_reply(kind, body);
        } else {
            // Many lines: each is looked at once, however many reads the reply takes
            // (`scanned`), and the reply is read whole once its OK is there.
            std::size_t whole = 0;
            if (c.scanned == 0) {
                const std::size_t first_end = body.find('\n');
                if (first_end != std::string_view::npos) {
                    // ERROR, UNKNOWN COMMAND, NOT FOUND, or OK alone: one line.
                    whole = read_reply(kind, body.substr(0, first_end + 1)).size;
                    if (whole == 0) {
                        whole = detail::info_reply_size(body, c.scanned);
                    }
                }
            } else {
                whole = detail::info_reply_size(body, c.scanned);
            }
            if (whole != 0) {
                framed = read_reply(kind, body.substr(0, whole));
            }
        }
        const std::size_t size = framed.size;
        const bool info = kind == command_kind::info;
        if ((size == 0 ? body.size() : size) >
            (info ? options_.max_info_reply : options_.max_reply)) {
            // No reply is that long: not a peer we understand.
            violation(c,
                      info ? "sent an INFO reply longer than max_info_reply"
                           : "sent a reply longer than max_reply",
                      {});
            return false;
        }
        if (size == 0) {
            break;
        }
        awaited front = std::move(c.waiting.front());
        c.waiting.pop_front();
        c.scanned = 0;
        c.last_used = client_clock::now();
        if (front.counted) {
            peer_state::sub(peers_[c.node]->in_flight);
        }
        const std::string_view bytes = body.substr(0, size);
        used += header + size;
        if (front.stream != 0) {
            // A SUBSCRIBE's answer: `SUBSCRIBED`, or the refusal.
            const auto found = c.streams.find(front.id);
            if (found == c.streams.end()) {
                broken(c, "internal: a stream without its entry"); // cannot happen
                return false;
            }
            stream_entry& e = found->second;
            if (detail::without_cr(bytes.substr(0, bytes.size() - 1)) == peer_subscribed) {
                e.subscribed = true;
                if (e.cancelled) {
                    unsubscribe(c, front.id);
                } else if (e.callbacks.subscribed) {
                    e.callbacks.subscribed(e.stream);
                }
                continue;
            }
            auto refused = std::move(e.callbacks.refused);
            const bool tell = !e.cancelled;
            stream_index_.erase(e.stream);
            c.streams.erase(found);
            if (tell && refused) {
                refused(std::string(bytes));
            }
            continue;
        }
        front.done(framed_reply{std::string(bytes), framed.outcome});
    }
    c.in.erase(0, used);
    return true;
}

// The connecting side of the handshake (command.hpp, "Between nodes"): reads the other
// node's answer and checks its name and proof, sends this node's proof, and reads the `OK`
// that ends it. Then the requests queued while connecting go out. False when the
// connection failed (the node is then down) or went away.
inline bool client_loop::handshake(peer_connection& c) {
    // The longest line of a handshake: an answer, whose name is at most 255 bytes.
    constexpr std::size_t longest = 1024;
    const peer_node& peer = peers_[c.node]->address;
    while (c.state == peer_connection::phase::greeting) {
        const std::size_t end = c.in.find('\n');
        if (end == std::string::npos) {
            if (c.in.size() > longest) {
                refuse(c, "answered with a line longer than a handshake's");
                return false;
            }
            return true;
        }
        std::string_view line = std::string_view(c.in).substr(0, end);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        const bool refused_here =
            line.starts_with(detail::error_prefix) &&
            line.substr(detail::error_prefix.size()) == error_text(error_code::not_a_peer);
        if (!c.proved) {
            const auto answer = parse_peer_answer(line);
            if (!answer) {
                refuse(c, refused_here ? "refused the greeting (ERROR not a peer): this node is "
                                         "not in its routing table"
                                       : "answered the greeting with \"" +
                                             escaped(line.substr(0, 100)) + "\"");
                return false;
            }
            if (answer->name != peer.name) {
                refuse(c, "answered as node " + escaped(answer->name));
                return false;
            }
            const std::string expected = peer_accept_proof(options_.cookie, peer.name,
                                                           options_.self, c.nonce, answer->nonce);
            if (!peer_proof_matches(expected, answer->proof)) {
                refuse(c, "gave a wrong proof (is its cookie another?)");
                return false;
            }
            c.out.append(peer_proof_line(peer_connect_proof(options_.cookie, options_.self,
                                                            peer.name, c.nonce, answer->nonce)));
            c.proved = true;
            c.in.erase(0, end + 1);
            flush(c);
            if (!c.fd) {
                return false;
            }
            continue;
        }
        if (line != detail::ok_line) {
            refuse(c, refused_here
                          ? "refused this node's proof (ERROR not a peer): is its "
                            "cookie another?"
                          : "answered the proof with \"" + escaped(line.substr(0, 100)) + "\"");
            return false;
        }
        c.in.erase(0, end + 1);
        c.state = peer_connection::phase::ready;
        peer_state::add(peers_[c.node]->connections);
        node_up(c.node);
        c.out.append(c.backlog);
        std::string().swap(c.backlog);
        flush(c);
    }
    return c.fd && c.state == peer_connection::phase::ready;
}

// A handshake that failed: the node is down (it is not the node the table means, or not of
// this cluster), and the log is told why, once until the node was up again.
inline void client_loop::refuse(peer_connection& c, const std::string& why) {
    peer_state& p = *peers_[c.node];
    if (p.refusal != why) {
        p.refusal = why;
        if (options_.log) {
            options_.log("node " + p.address.name + " at " + p.address.host + ":" +
                         std::to_string(p.address.port) + " " + why);
        }
        log(log_level::warning, "peer_refused", c.node, why);
    }
    broken(c, why); // not ready: the node goes down (a stream is refused as unavailable)
}

// A peer that broke the framing between nodes (command.hpp, "Between nodes"): told to the
// log, with the start of the offending line, and the connection is closed (its requests
// fail as unavailable; the node is tried again as after any broken connection).
inline void client_loop::violation(peer_connection& c, std::string_view why,
                                   std::string_view line) {
    std::string reason(why);
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    if (!line.empty()) {
        reason += " (\"" + escaped(line.substr(0, 60)) + "\")";
    }
    if (options_.log) {
        const peer_node& p = peers_[c.node]->address;
        options_.log("node " + p.name + " at " + p.host + ":" + std::to_string(p.port) + " " +
                     reason + ": its connection is closed, its requests fail as unavailable");
    }
    log(log_level::warning, "peer_protocol_error", c.node, reason);
    broken(c, std::move(reason));
}

inline void client_loop::log(log_level level, std::string_view what, std::size_t node,
                             std::string reason) {
    if (!options_.event_log.enabled(level)) {
        return;
    }
    const peer_node& p = peers_[node]->address;
    log_event e;
    e.level = level;
    e.what = std::string(what);
    e.reason = std::move(reason);
    e.fields = {{"node", p.name}, {"address", host_port(p)}};
    options_.event_log.log(std::move(e));
}

inline void client_loop::fail_all(peer_connection& c) {
    // Taken out first: a callback may hand over new requests (they queue behind).
    std::deque<awaited> failed;
    failed.swap(c.waiting);
    std::unordered_map<std::uint64_t, stream_entry> streams;
    streams.swap(c.streams);
    peer_state& p = *peers_[c.node];
    for (auto& w : failed) {
        if (w.counted) {
            peer_state::sub(p.in_flight);
            peer_state::add(p.failures);
        }
    }
    for (auto& w : failed) {
        if (w.done) {
            w.done(std::nullopt);
        }
    }
    // Its streams end: lost with the connection (the owner died, or broke the protocol), or
    // never subscribed (unavailable); when the client stops, they just end.
    const bool stopping = stopping_.load(std::memory_order_acquire);
    for (auto& [id, e] : streams) {
        stream_index_.erase(e.stream);
        if (e.cancelled) {
            continue;
        }
        if (!e.subscribed) {
            if (e.callbacks.refused) {
                e.callbacks.refused(std::nullopt);
            }
        } else if (!stopping && e.callbacks.lost) {
            e.callbacks.lost();
        } else if (e.callbacks.ended) {
            e.callbacks.ended();
        }
    }
}

inline void client_loop::close(peer_connection& c) {
    if (c.state == peer_connection::phase::ready) {
        peer_state::sub(peers_[c.node]->connections);
    }
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
    c.scanned = 0;
    c.proved = false;
}

inline void client_loop::broken(peer_connection& c, std::string why) {
    const bool was_ready = c.state == peer_connection::phase::ready;
    peer_state& p = *peers_[c.node];
    if (!was_ready || p.status.load(std::memory_order_relaxed) != node_status::up) {
        // Fails this connection's requests too, with the node down.
        node_down(c.node, std::move(why));
        return;
    }
    // A working connection broke (the node restarted its server, or died): one attempt at
    // once tells which; its failure takes the node down.
    if (!c.waiting.empty()) {
        p.set_error(why); // its requests fail
    }
    close(c);
    fail_all(c);
    open(c);
}

inline void client_loop::node_down(std::size_t node, std::string why) {
    peer_state& p = *peers_[node];
    const node_status before = p.status.exchange(node_status::down, std::memory_order_acq_rel);
    p.probing = false;
    p.set_error(why);
    if (before != node_status::down) {
        log(log_level::warning, "node_down", node, std::move(why));
    }
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
    p.refusal.clear();
    const node_status before = p.status.exchange(node_status::up, std::memory_order_acq_rel);
    if (before != node_status::up) {
        p.backoff = options_.retry_min;
        log(log_level::info, "node_up", node);
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
        const char* down = nullptr; // why
        for (const auto& c : p.pool) {
            if (c->state == peer_connection::phase::connecting ||
                c->state == peer_connection::phase::greeting) {
                if (now >= c->setup_deadline) {
                    down = c->state == peer_connection::phase::connecting
                               ? "not connected within connect_timeout"
                               : "no handshake within connect_timeout";
                    break;
                }
                consider(c->setup_deadline);
            }
            if (!c->waiting.empty()) {
                // One timeout for all, so the oldest request has the earliest deadline.
                const auto deadline = c->waiting.front().deadline;
                if (now >= deadline) {
                    // Frozen or hung: it does not answer.
                    down = c->waiting.front().counted ? "no reply within request_timeout"
                                                      : "no answer to a heartbeat within "
                                                        "request_timeout";
                    break;
                }
                consider(deadline);
            } else if (c->state == peer_connection::phase::ready &&
                       options_.heartbeat.count() > 0) {
                const auto due = c->last_used + options_.heartbeat;
                if (now >= due) {
                    // `<id>` alone: an empty request, answered `UNKNOWN COMMAND`.
                    const std::uint64_t id = c->next_id++;
                    append_peer_id(c->out, id);
                    c->out.append("\r\n");
                    c->waiting.push_back({command_kind::unknown, [](std::optional<framed_reply>) {},
                                          now + options_.request_timeout, id});
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
        if (down != nullptr) {
            node_down(i, down);
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
}

} // namespace detail

inline result<std::shared_ptr<node_client>> node_client::start(std::vector<peer_node> nodes,
                                                               client_options options) {
    std::shared_ptr<node_client> c(new node_client());
    try {
        if (!nodes.empty() && options.cookie.empty()) {
            throw std::invalid_argument("no cluster cookie: the handshake with other nodes "
                                        "needs one (client_options::cookie)");
        }
        c->loop_ = std::make_shared<detail::client_loop>(std::move(nodes), std::move(options));
        c->thread_.start([loop = c->loop_, signal = c->signal()] {
            try {
                loop->run();
                signal->exit(loop->stop_reason());
            } catch (...) {
                signal->exit(exit_reason::from_exception(std::current_exception()));
            }
        });
    } catch (...) {
        return c->start_failed(std::current_exception());
    }
    return c;
}

inline node_client::~node_client() {
    stop_if_alive(); // not after a failed start: that exit is recorded already
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

inline node_stats node_client::stats(std::size_t node) const {
    return loop_->stats(node);
}

inline void node_client::request(std::size_t node, std::string line, command_kind kind,
                                 std::uint64_t affinity, reply_callback done) {
    request(node, std::move(line), kind, affinity,
            [done = std::move(done)](std::optional<framed_reply> reply) mutable {
                done(reply ? std::optional<std::string>(std::move(reply->bytes)) : std::nullopt);
            });
}

inline void node_client::request(std::size_t node, std::string line, command_kind kind,
                                 std::uint64_t affinity, framed_callback done) {
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
    loop_->request_stop(reason);
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
