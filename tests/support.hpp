// SPDX-License-Identifier: MIT
// Test fixtures for processes and supervisors: a journal of what happened, in order, and
// children that a test can make exit with any reason, on their own thread. And for the node
// client and the router: quick client options, and a fake peer node.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/detail/random.hpp>
#include <otpkv/log.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/process.hpp>
#include <otpkv/supervisor.hpp>
#include <otpkv/task.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace otpkv_test {

using namespace std::chrono_literals;

// Polls `done` until it holds or `limit` passes; true if it held. Every wait in the tests is
// bounded this way, so a bug shows as a failure, not a hang.
inline bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit = 5s) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() > until) {
            return false;
        }
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

// What happened, in order, from any thread.
class journal {
  public:
    void add(std::string event) {
        {
            const std::lock_guard lock(mutex_);
            events_.push_back(std::move(event));
        }
        added_.notify_all();
    }
    std::vector<std::string> take() {
        const std::lock_guard lock(mutex_);
        return std::exchange(events_, {});
    }
    // Takes the events once there are at least `count` (or 10 s have passed): an event is
    // recorded on the thread that publishes it, which may be a moment after the state
    // change a test waited for (a node_client's status changes before it publishes).
    std::vector<std::string> take(std::size_t count) {
        std::unique_lock lock(mutex_);
        added_.wait_for(lock, std::chrono::seconds(10), [&] { return events_.size() >= count; });
        return std::exchange(events_, {});
    }
    std::size_t size() {
        const std::lock_guard lock(mutex_);
        return events_.size();
    }

  private:
    std::mutex mutex_;
    std::condition_variable added_;
    std::vector<std::string> events_;
};

// How a test tells a running child to exit: the order is taken by whichever incarnation
// of the child is running, on its own thread.
struct control {
    std::mutex mutex;
    std::condition_variable_any wake;
    std::optional<otpkv::exit_reason> order;
    bool ignore_stop = false;         // the child will not stop when asked (see stubborn_for)
    std::atomic<int> fail_starts{0};  // this many next starts throw
    std::atomic<bool> release{false}; // lets a child that ignored its stop finish

    void exit_with(otpkv::exit_reason reason) {
        {
            const std::lock_guard lock(mutex);
            order = std::move(reason);
        }
        wake.notify_all();
    }
};

// How long a child that ignores its stop runs at most unless released. Only a supervisor
// that wrongly waits for such a child sees it end: the test then fails instead of hanging.
inline constexpr std::chrono::seconds stubborn_for{20};

// A pool of controllable children that log "start X" and "stop X" (a stop asked for).
class children {
  public:
    explicit children(journal& log) : log_(log) {}

    otpkv::child_spec spec(const std::string& id, otpkv::restart type = otpkv::restart::permanent,
                           std::optional<otpkv::timeout> shutdown = std::nullopt) {
        std::shared_ptr<control> ctl = control_of(id);
        otpkv::child_spec s;
        s.id = id;
        s.restart = type;
        s.shutdown = shutdown;
        s.start = [this, id, ctl]() -> std::shared_ptr<otpkv::process> {
            if (ctl->fail_starts > 0) {
                --ctl->fail_starts;
                log_.add("start " + id + " failed");
                throw std::runtime_error("cannot start " + id);
            }
            log_.add("start " + id);
            ++started;
            return otpkv::task::start([this, id, ctl](std::stop_token stop) {
                std::unique_lock lock(ctl->mutex);
                if (ctl->ignore_stop) {
                    ctl->wake.wait_for(lock, stubborn_for, [&] { return ctl->release.load(); });
                    ++finished;
                    return;
                }
                ctl->wake.wait(lock, stop, [&] { return ctl->order.has_value(); });
                ++finished;
                if (!ctl->order) {
                    log_.add("stop " + id);
                    return; // exits with the reason the stop asked for
                }
                const otpkv::exit_reason reason = *std::exchange(ctl->order, std::nullopt);
                lock.unlock();
                if (reason.what() == otpkv::exit_reason::kind::error) {
                    throw std::runtime_error(reason.detail()); // a real crash
                }
                otpkv::exit(reason);
            });
        };
        return s;
    }

    // Lets a child that ignores its stop (ignore_stop) finish, and waits until it has:
    // its abandoned thread uses this fixture, which must outlive it.
    bool release(const std::string& id, int finished_then) {
        const auto ctl = control_of(id);
        ctl->release = true;
        ctl->wake.notify_all();
        return eventually([&] { return finished.load() == finished_then; });
    }

    std::shared_ptr<control> control_of(const std::string& id) {
        const std::lock_guard lock(mutex_);
        auto& slot = controls_[id];
        if (!slot) {
            slot = std::make_shared<control>();
        }
        return slot;
    }

    std::atomic<int> started{0};
    std::atomic<int> finished{0};

  private:
    journal& log_;
    std::mutex mutex_;
    std::map<std::string, std::shared_ptr<control>> controls_;
};

// The pid of child `id`, or none.
inline otpkv::process_id pid_of(otpkv::detail::supervisor_base& sup, const std::string& id) {
    for (const otpkv::child_info& c : sup.which_children()) {
        if (c.id == id) {
            return c.pid;
        }
    }
    return {};
}

// Waits for a process's exit (bounded) and returns its reason.
inline std::optional<otpkv::exit_reason> exit_of(otpkv::process& p,
                                                 std::chrono::milliseconds limit = 5s) {
    if (!eventually([&] { return !p.alive(); }, limit)) {
        return std::nullopt;
    }
    return p.wait();
}

// ---------------------------------------------------------------------------------------
// The node client and the router
// ---------------------------------------------------------------------------------------

// The cluster cookie of the in-process nodes and fake peers of the tests.
inline const std::string test_cookie = "otpkv-test-cookie";

// Short timeouts and quick retries, one pooled connection, no heartbeats (so that what a
// fake peer sees is only what a test sent): the failure cases run in a fraction of a second.
inline otpkv::client_options quick(std::chrono::milliseconds timeout = 250ms) {
    otpkv::client_options o;
    o.self = "n1";
    o.cookie = test_cookie;
    o.connect_timeout = timeout;
    o.request_timeout = timeout;
    o.retry_min = 20ms;
    o.retry_max = 100ms;
    o.connections = 1;
    o.heartbeat = 0ms;
    return o;
}

// A monitor_nodes callback that adds "<node> up" or "<node> down" to `events`.
inline std::function<void(const otpkv::node_event&)> record_into(journal& events) {
    return [&events](const otpkv::node_event& e) { events.add(e.node + (e.up ? " up" : " down")); };
}

// A peer node the test controls: a server whose handler does the accepting side of the
// handshake (command.hpp) with whatever name and cookie it is told (and answers
// `ERROR not a peer` to every greeting while it does not `know` the greeting node), then
// speaks the peer protocol's request ids (`<id> <request>` answered `=<id>` and the reply;
// a line without an id gets `ERROR internal` and a close, as from a real node). It echoes a
// GET's key as the value (`GET b k` -> `k\r\nOK\r\n`; the key `close` closes the connection
// after the reply, `internal` answers `ERROR internal` and closes, as a real node does, and
// `endless` answers `endless_reply` bytes that never end their line, as no node does),
// answers every other request `OK`, and records every request it gets (without its id).
// Faults of a peer that misattributes replies: the key `extra` sends its tagged reply twice,
// `stray` follows its reply with an untagged line, `wrongid` tags its reply with the next
// id. `hang` holds every request's reply back (a hung process: the handshake and heartbeats
// are still answered; `release` sends what was held, in order); `freeze` holds back every
// reply, the handshake's included (SIGSTOP). It records each greeting as
// `OTPKV-PEER 2 <name>` (the nonce left out), and counts the proofs it accepted and the
// handshakes it refused. An INFO is answered `set_info_reply`'s bytes (`OK` by default).
class fake_peer {
  public:
    enum class mode { answer, hang, freeze };
    static constexpr std::size_t endless_reply = 4096;
    struct line {
        std::uint64_t connection = 0;
        std::string text;
    };

    explicit fake_peer(std::string name, std::string cookie = test_cookie)
        : state_(std::make_shared<state>()) {
        state_->name = std::move(name);
        state_->cookie = std::move(cookie);
        otpkv::server_options o;
        o.port = 0;
        o.threads = 1;
        auto started =
            otpkv::server::start([st = state_](const otpkv::command& cmd, std::string& out,
                                               otpkv::session& s) { st->handle(cmd, out, s); },
                                 o);
        REQUIRE(started.has_value());
        server_ = std::move(started).value();
    }
    ~fake_peer() {
        server_->stop();
        std::vector<held_reply> dropped;
        const std::lock_guard lock(state_->mutex);
        dropped.swap(state_->held);
    }
    fake_peer(const fake_peer&) = delete;
    fake_peer& operator=(const fake_peer&) = delete;

    [[nodiscard]] std::uint16_t port() const { return server_->port(); }
    [[nodiscard]] otpkv::server_stats stats() const { return server_->stats(); }

    void set_name(std::string name) {
        const std::lock_guard lock(state_->mutex);
        state_->name = std::move(name);
    }
    void set_cookie(std::string cookie) {
        const std::lock_guard lock(state_->mutex);
        state_->cookie = std::move(cookie);
    }
    // False: every greeting is answered `ERROR not a peer` (a node whose table lacks it).
    void set_known(bool known) {
        const std::lock_guard lock(state_->mutex);
        state_->known = known;
    }
    [[nodiscard]] int proofs_accepted() const {
        const std::lock_guard lock(state_->mutex);
        return state_->accepted;
    }
    [[nodiscard]] int refused() const {
        const std::lock_guard lock(state_->mutex);
        return state_->refused;
    }
    // Back to `answer` also answers the greetings held back meanwhile (a frozen node that
    // goes on answers what waited); replies held for requests stay held.
    void set_mode(mode m) {
        const std::lock_guard lock(state_->mutex);
        state_->how = m;
        if (m == mode::answer) {
            for (auto& h : state_->held) {
                if (h.greeting && h.reply.pending()) {
                    h.reply.complete(h.text, h.then_close);
                }
            }
        }
    }
    // Sends the replies held for requests (`hang`), in the order they came.
    void release() {
        const std::lock_guard lock(state_->mutex);
        for (auto& h : state_->held) {
            if (!h.greeting && h.reply.pending()) {
                h.reply.complete(std::move(h.text), h.then_close);
            }
        }
    }
    [[nodiscard]] std::vector<line> requests() const {
        const std::lock_guard lock(state_->mutex);
        return state_->requests;
    }
    [[nodiscard]] std::vector<std::string> greetings() const {
        const std::lock_guard lock(state_->mutex);
        return state_->greetings;
    }
    [[nodiscard]] int heartbeats() const {
        const std::lock_guard lock(state_->mutex);
        return state_->heartbeats;
    }
    // What it answers to an INFO, after the header, as it is (any bytes: a faulty or endless
    // reply too).
    void set_info_reply(std::string bytes) {
        const std::lock_guard lock(state_->mutex);
        state_->info_reply = std::move(bytes);
    }

  private:
    struct held_reply {
        bool greeting = false; // a handshake's: `text` (then closed if `then_close`)
        otpkv::deferred_reply reply;
        std::string text; // what it answers (for `release`, or once unfrozen)
        bool then_close = false;
    };
    static constexpr std::uint64_t greeted = 1; // session::context: the proof is owed
    static constexpr std::uint64_t peer = 2;    // session::context: a peer's connection
    struct state {
        mutable std::mutex mutex;
        std::string name;
        std::string cookie;
        bool known = true;
        int accepted = 0;
        int refused = 0;
        mode how = mode::answer;
        std::vector<line> requests;
        std::vector<std::string> greetings;
        int heartbeats = 0;
        std::vector<held_reply> held;
        std::string info_reply = "OK\r\n";

        void handle(const otpkv::command& cmd, std::string& out, otpkv::session& s) {
            const std::lock_guard lock(mutex);
            if (s.context() == greeted ||
                (cmd.kind == otpkv::command_kind::unknown && otpkv::is_peer_handshake(s.line()))) {
                handshake(out, s);
                return;
            }
            if (s.context() != peer) {
                FAIL_CHECK("a request before the handshake's end: " << s.line());
            }
            const auto request = otpkv::parse_peer_request(s.line());
            if (!request) {
                out += "ERROR internal\r\n";
                s.close_after_reply();
                return;
            }
            const otpkv::command req = otpkv::parse(request->rest);
            std::string answer = "=" + std::to_string(request->id) + "\r\n";
            bool then_close = false;
            if (req.kind == otpkv::command_kind::unknown) {
                heartbeats += request->rest.empty() ? 1 : 0;
                answer += "UNKNOWN COMMAND\r\n";
                if (how == mode::freeze) {
                    held.push_back({false, s.defer(), std::move(answer), false});
                } else {
                    out += answer;
                }
                return;
            }
            requests.push_back({s.id(), std::string(request->rest)});
            if (req.kind == otpkv::command_kind::info) {
                answer += info_reply;
            } else if (req.kind != otpkv::command_kind::get) {
                answer += "OK\r\n";
            } else if (req.key == "endless") {
                answer.append(endless_reply, 'x'); // and never a line end
            } else if (req.key == "internal") {
                answer += "ERROR internal\r\n";
                then_close = true;
            } else if (req.key == "wrongid") {
                answer = "=" + std::to_string(request->id + 1) + "\r\nwrongid\r\nOK\r\n";
            } else {
                answer.append(req.key).append("\r\nOK\r\n");
                if (req.key == "extra") {
                    answer += answer; // the same reply twice
                } else if (req.key == "stray") {
                    answer += "stray\r\n";
                }
                then_close = req.key == "close";
            }
            if (how != mode::answer) {
                held.push_back({false, s.defer(), std::move(answer), then_close});
                return;
            }
            out += answer;
            if (then_close) {
                s.close_after_reply();
            }
        }

        // The accepting side of the handshake, as router.hpp's.
        void handshake(std::string& out, otpkv::session& s) {
            std::string reply;
            bool close = false;
            if (s.context() == 0) {
                const auto hello = otpkv::parse_peer_greeting(s.line());
                if (hello) {
                    greetings.push_back("OTPKV-PEER 2 " + std::string(hello->name));
                }
                if (hello && known) {
                    const std::string nonce = otpkv::detail::new_peer_nonce();
                    reply = otpkv::peer_answer_line(
                        name, nonce,
                        otpkv::peer_accept_proof(cookie, name, hello->name, hello->nonce, nonce));
                    s.storage() =
                        otpkv::peer_connect_proof(cookie, hello->name, name, hello->nonce, nonce);
                    s.context() = greeted;
                } else {
                    close = true;
                }
            } else if (s.context() == greeted) {
                const auto proof = otpkv::parse_peer_proof(s.line());
                if (proof && otpkv::peer_proof_matches(s.storage(), *proof)) {
                    reply = "OK\r\n";
                    s.context() = peer;
                    ++accepted;
                } else {
                    close = true;
                }
            } else {
                close = true;
            }
            if (close) {
                reply = "ERROR not a peer\r\n";
                ++refused;
            }
            if (how == mode::freeze) {
                held.push_back({true, s.defer(), std::move(reply), close});
                return;
            }
            out += reply;
            if (close) {
                s.close_after_reply();
            }
        }
    };

    std::shared_ptr<state> state_;
    std::shared_ptr<otpkv::server> server_;
};

// Keeps the structured events a logger is given (any thread), for tests to look at. The
// state is shared with the loggers made from it, so a late event never finds it gone.
class event_recorder {
  public:
    // A logger that passes every event at `level` or above to this recorder.
    [[nodiscard]] otpkv::logger logger(otpkv::log_level level = otpkv::log_level::debug) const {
        return otpkv::logger(
            [st = state_](const otpkv::log_event& e) {
                {
                    const std::lock_guard lock(st->mutex);
                    st->events.push_back(e);
                }
                st->added.notify_all();
            },
            level);
    }
    // The events of kind `what` (all of them when empty), in order.
    [[nodiscard]] std::vector<otpkv::log_event> events(std::string_view what = {}) const {
        const std::lock_guard lock(state_->mutex);
        std::vector<otpkv::log_event> out;
        for (const auto& e : state_->events) {
            if (what.empty() || e.what == what) {
                out.push_back(e);
            }
        }
        return out;
    }
    // Waits (10 s at most) until there are `count` events of kind `what`; true if there are.
    bool wait_for(std::string_view what, std::size_t count) const {
        std::unique_lock lock(state_->mutex);
        return state_->added.wait_for(lock, std::chrono::seconds(10), [&] {
            std::size_t n = 0;
            for (const auto& e : state_->events) {
                n += e.what == what ? 1U : 0U;
            }
            return n >= count;
        });
    }
    // `what node=<node field>`, for each event, in order (a compact view for CHECKs).
    [[nodiscard]] std::vector<std::string> summary() const {
        std::vector<std::string> out;
        for (const auto& e : events()) {
            out.push_back(e.what + " " + field(e, "node"));
        }
        return out;
    }
    // The value of `key` among `e`'s fields, empty when it has none.
    [[nodiscard]] static std::string field(const otpkv::log_event& e, std::string_view key) {
        for (const auto& [k, v] : e.fields) {
            if (k == key) {
                return v;
            }
        }
        return {};
    }

  private:
    struct state {
        std::mutex mutex;
        std::condition_variable added;
        std::vector<otpkv::log_event> events;
    };
    std::shared_ptr<state> state_ = std::make_shared<state>();
};

} // namespace otpkv_test
