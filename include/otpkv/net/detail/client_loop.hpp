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

#include <netdb.h>

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
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

namespace detail {

using client_clock = std::chrono::steady_clock;

/// One request sent (or queued) on a connection, waiting for its reply.
struct awaited {
    command_kind kind = command_kind::unknown;
    reply_callback done; // empty for a stream's SUBSCRIBE
    client_clock::time_point deadline;
};

/// One TCP connection to a peer: a pooled one, or a stream's own.
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
    std::deque<awaited> waiting;          // replies owed, in order
    std::string nonce;                    // this connection's handshake nonce
    bool proved = false;                  // handshake: our proof is sent, `OK` is owed
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
    std::string refusal;  // the handshake failure last logged (until it is up again)
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
    c.nonce = new_peer_nonce();
    c.proved = false;
    c.out = peer_greeting_line(options_.self, c.nonce);
    socket_address address;
    int fd = -1;
    if (!c.nonce.empty() && resolve(where.host, where.port, address)) {
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
    if (c.state == peer_connection::phase::greeting) {
        if (!handshake(c)) {
            return false;
        }
        if (c.state == peer_connection::phase::greeting) {
            return true; // the rest of a handshake line is on its way
        }
    }
    std::size_t used = 0;
    while (!c.waiting.empty()) {
        const std::string_view rest = std::string_view(c.in).substr(used);
        const std::size_t size = read_reply(c.waiting.front().kind, rest).size;
        if ((size == 0 ? rest.size() : size) > options_.max_reply) {
            broken(c); // no reply is that long: not a peer we understand
            return false;
        }
        if (size == 0) {
            break;
        }
        awaited front = std::move(c.waiting.front());
        c.waiting.pop_front();
        c.last_used = client_clock::now();
        const std::string_view bytes = rest.substr(0, size);
        used += size;
        if (!front.done) {
            // A stream's SUBSCRIBE acknowledgement.
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
        front.done(std::string(bytes));
    }
    c.in.erase(0, used);
    return true;
}

// The connecting side of the handshake (command.hpp, "Between nodes"): reads the other
// node's answer and checks its name and proof, sends this node's proof, and reads the `OK`
// that ends it. Then what waited goes out (a stream's SUBSCRIBE, whose answer is owed next;
// or the requests queued while connecting). False when the connection failed (the node is
// then down) or went away.
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
        if (c.stream_id != 0) {
            c.waiting.push_back({command_kind::subscribe, {}, c.stream_deadline});
        } else {
            node_up(c.node);
        }
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
    }
    broken(c); // not ready: the node goes down (a stream is refused as unavailable)
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
    c.proved = false;
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
    p.refusal.clear();
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
