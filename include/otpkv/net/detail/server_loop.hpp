// SPDX-License-Identifier: MIT
/// @file
/// The engine under net/server.hpp, which includes it at its end: each event loop's
/// connections, framing, output and backpressure, lingering closes, subscriber links and
/// deferred replies, then the members of server.hpp's public classes. How a request walks
/// through it and how protocol.md's limits are kept is told in server.hpp.
///
/// Nothing here is public API. Thread safety: a loop and its connections belong to the
/// loop's thread; other threads reach them only through the loop's mailbox (and a
/// subscriber link's mutex), as each type below says.
#pragma once

#include <otpkv/net/server.hpp>

#include <otpkv/detail/epoch.hpp>
#include <otpkv/detail/mailbox.hpp>
#include <otpkv/detail/socket.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

namespace detail {

class event_loop;
struct subscriber_link;

/// The index in `command_verbs` (and `server_snapshot::commands`) of a parsed kind.
[[nodiscard]] constexpr std::size_t verb_index(command_kind kind) noexcept {
    switch (kind) {
    case command_kind::create:
        return 0;
    case command_kind::put:
        return 1;
    case command_kind::get:
        return 2;
    case command_kind::erase:
        return 3;
    case command_kind::subscribe:
        return 4;
    case command_kind::info:
        return 5;
    case command_kind::unknown:
        break;
    }
    return 6;
}

/// No error reply (`reply_reason`).
inline constexpr std::size_t no_error = server_error_reasons.size();

/// The index in `server_error_reasons` of the reply that starts `bytes` (its first line),
/// or `no_error`. Cheap for the usual reply: one byte is looked at.
[[nodiscard]] constexpr std::size_t reply_reason(std::string_view bytes) noexcept {
    if (bytes.empty() || (bytes[0] != 'E' && bytes[0] != 'N' && bytes[0] != 'U')) {
        return no_error;
    }
    if (bytes.starts_with("NOT FOUND\r\n")) {
        return 7;
    }
    if (bytes.starts_with("UNKNOWN COMMAND\r\n")) {
        return 8;
    }
    if (!bytes.starts_with("ERROR ")) {
        return no_error; // a value that starts with one of those letters
    }
    std::string_view reason = bytes.substr(6);
    reason = reason.substr(0, reason.find('\n'));
    if (!reason.empty() && reason.back() == '\r') {
        reason.remove_suffix(1);
    }
    for (std::size_t i = 0; i < 7; ++i) {
        if (reason == server_error_reasons[i]) {
            return i;
        }
    }
    if (reason.starts_with("node ") && reason.ends_with(" unavailable") && reason.size() > 17) {
        return 2;
    }
    return 9;
}

static_assert(server_error_reasons[0] == error_text(error_code::line_too_long) &&
              server_error_reasons[1] == error_text(error_code::no_route) &&
              server_error_reasons[2] == error_text(error_code::node_unavailable) &&
              server_error_reasons[3] == error_text(error_code::too_many_buckets) &&
              server_error_reasons[4] == error_text(error_code::too_many_connections) &&
              server_error_reasons[5] == error_text(error_code::internal) &&
              server_error_reasons[6] == error_text(error_code::not_a_peer));

/// The request-latency bounds in nanoseconds (`latency_bounds`).
inline constexpr std::array<std::uint64_t, latency_bounds.size()> latency_bounds_ns = [] {
    std::array<std::uint64_t, latency_bounds.size()> ns{};
    for (std::size_t i = 0; i < ns.size(); ++i) {
        ns[i] = static_cast<std::uint64_t>(latency_bounds[i] * 1e9 + 0.5);
    }
    return ns;
}();

/// One event loop's statistics: written by that loop's thread only, read by any thread.
///
/// A sequence lock: the writer makes `seq_` odd, updates the counters, and makes it even
/// again; a reader copies the counters between two reads of `seq_` and keeps the copy only
/// when both saw the same even value, else tries again. The counters are relaxed atomics
/// (a reader may read them while they change; the sequence tells it to throw such a copy
/// away), each written with a plain load and store: one writer, so no read-modify-write.
/// A writer never waits; a reader waits only while a write is in progress (a few
/// nanoseconds each).
///
/// Thread safety: `record`, `add_in`, `add_out` on the owning loop's thread only; `read` on
/// any thread.
class loop_counters {
  public:
    /// A consistent copy.
    struct values {
        std::array<std::uint64_t, command_verbs.size()> commands{};
        std::array<std::uint64_t, server_error_reasons.size()> errors{};
        std::uint64_t bytes_in = 0;
        std::uint64_t bytes_out = 0;
        std::array<std::uint64_t, latency_bounds.size() + 1> latency{};
        std::uint64_t latency_sum_ns = 0;
    };

    /// One request: its verb, its reply's error reason (or `no_error`), its latency.
    void record(std::size_t verb, std::size_t reason, std::chrono::nanoseconds took) noexcept {
        const auto ns = static_cast<std::uint64_t>(std::max<std::int64_t>(0, took.count()));
        std::size_t bucket = 0;
        while (bucket < latency_bounds_ns.size() && ns > latency_bounds_ns[bucket]) {
            ++bucket;
        }
        begin_write();
        bump(commands_[verb], 1);
        if (reason != no_error) {
            bump(errors_[reason], 1);
        }
        bump(latency_[bucket], 1);
        bump(latency_sum_ns_, ns);
        end_write();
    }
    /// The requests of one batch that ran back to back (`request_batch`): `verb_of[i]` and
    /// `reason_of[i]` of each, and the time from the first one's line being framed to the last
    /// one's reply being queued, spread over them in proportion to their places (the
    /// `i`-th of `n` took `(i + 1) / n` of it: each waited for those before it).
    void record_batch(const std::uint8_t* verb_of, const std::uint8_t* reason_of, std::size_t n,
                      std::chrono::nanoseconds took) noexcept {
        const auto total = static_cast<std::uint64_t>(std::max<std::int64_t>(0, took.count()));
        begin_write();
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint64_t ns = total * (i + 1) / n;
            std::size_t bucket = 0;
            while (bucket < latency_bounds_ns.size() && ns > latency_bounds_ns[bucket]) {
                ++bucket;
            }
            bump(commands_[verb_of[i]], 1);
            if (reason_of[i] != no_error) {
                bump(errors_[reason_of[i]], 1);
            }
            bump(latency_[bucket], 1);
            bump(latency_sum_ns_, ns);
        }
        end_write();
    }
    /// An error reply that answers no request (`line too long`, `too many connections`).
    void record_error(std::size_t reason) noexcept {
        begin_write();
        bump(errors_[reason], 1);
        end_write();
    }
    /// Bytes read from a client.
    void add_in(std::uint64_t n) noexcept {
        begin_write();
        bump(bytes_in_, n);
        end_write();
    }
    /// Bytes written to a client.
    void add_out(std::uint64_t n) noexcept {
        begin_write();
        bump(bytes_out_, n);
        end_write();
    }

    /// A copy no write was in progress during.
    [[nodiscard]] values read() const noexcept {
        values v;
        for (unsigned tries = 0;; ++tries) {
            // acquire: pairs with end_write's release, so the counters read below are at
            // least those of the write that made `seq_` this even value.
            const std::uint64_t before = seq_.load(std::memory_order_acquire);
            if ((before & 1U) == 0) {
                copy(commands_, v.commands);
                copy(errors_, v.errors);
                v.bytes_in = bytes_in_.load(seqlock_load);
                v.bytes_out = bytes_out_.load(seqlock_load);
                copy(latency_, v.latency);
                v.latency_sum_ns = latency_sum_ns_.load(seqlock_load);
                // acquire fence: pairs with begin_write's release fence. If a load above
                // saw a store of a write that began after `before`, the load of `seq_`
                // below sees that write's odd value (or later), and the copy is retried.
                // (epoch.hpp's seqlock helpers: under ThreadSanitizer, which does not
                // model fences, acquire loads and release stores instead.)
                seqlock_read_fence();
                if (seq_.load(std::memory_order_relaxed) == before) {
                    return v;
                }
            }
            if (tries % 64 == 63) {
                std::this_thread::yield(); // the writer was preempted mid-write
            }
        }
    }

  private:
    template <std::size_t N>
    static void copy(const std::array<std::atomic<std::uint64_t>, N>& from,
                     std::array<std::uint64_t, N>& to) noexcept {
        for (std::size_t i = 0; i < N; ++i) {
            to[i] = from[i].load(seqlock_load);
        }
    }
    static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n) noexcept {
        c.store(c.load(std::memory_order_relaxed) + n, seqlock_store);
    }
    void begin_write() noexcept {
        seq_.store(seq_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        // release fence: the odd value above is ordered before the counters' stores that
        // follow (see `read`'s acquire fence).
        seqlock_write_fence();
    }
    void end_write() noexcept {
        // release: the counters' stores are visible to a reader that sees this even value.
        seq_.store(seq_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }

    std::atomic<std::uint64_t> seq_{0};
    std::array<std::atomic<std::uint64_t>, command_verbs.size()> commands_{};
    std::array<std::atomic<std::uint64_t>, server_error_reasons.size()> errors_{};
    std::atomic<std::uint64_t> bytes_in_{0};
    std::atomic<std::uint64_t> bytes_out_{0};
    std::array<std::atomic<std::uint64_t>, latency_bounds.size() + 1> latency_{};
    std::atomic<std::uint64_t> latency_sum_ns_{0};
};

/// The requests a loop runs back to back in one pull (a pipelined batch), counted together
/// when it ends: two clock reads and one write of the loop's counters per batch, not per
/// request.
class request_batch {
  public:
    static constexpr std::size_t capacity = 64;

    explicit request_batch(loop_counters& counters) noexcept : counters_(counters) {}
    request_batch(const request_batch&) = delete;
    request_batch& operator=(const request_batch&) = delete;
    ~request_batch() { flush(); }

    /// When the batch's first line was framed (read at the first call).
    [[nodiscard]] std::chrono::steady_clock::time_point start() noexcept {
        if (n_ == 0 && !started_) {
            start_ = std::chrono::steady_clock::now();
            started_ = true;
        }
        return start_;
    }
    /// One request of the batch, answered.
    void add(std::size_t verb, std::size_t reason) noexcept {
        verbs_[n_] = static_cast<std::uint8_t>(verb);
        reasons_[n_] = static_cast<std::uint8_t>(reason);
        if (++n_ == capacity) {
            flush();
        }
    }
    /// Counts the requests so far; the next one starts a new batch.
    void flush() noexcept {
        if (n_ > 0) {
            counters_.record_batch(verbs_.data(), reasons_.data(), n_,
                                   std::chrono::steady_clock::now() - start_);
        }
        n_ = 0;
        started_ = false;
    }

  private:
    loop_counters& counters_;
    std::chrono::steady_clock::time_point start_{};
    bool started_ = false;
    std::size_t n_ = 0;
    std::array<std::uint8_t, capacity> verbs_{};
    std::array<std::uint8_t, capacity> reasons_{};
};

/// The kinds of event a server aggregates (`event_tally`), in `server_event_names` order.
enum class server_event : std::uint8_t {
    max_connections,
    out_of_descriptors,
    max_line,
    max_subscriber_output,
    max_subscriber_memory,
    max_deferred,
    idle_closed
};
inline constexpr std::size_t server_event_kinds = 7;
/// The `limit=` word of each kind (the last is the `idle_closed` event's own name).
inline constexpr std::array<std::string_view, server_event_kinds> server_event_names{
    "max_connections",       "out_of_descriptors", "max_line",   "max_subscriber_output",
    "max_subscriber_memory", "max_deferred",       "idle_closed"};

/// Turns a flood of events of a kind into at most one report per `period`: the first hit
/// is reported at once, the hits after it are counted and reported together (`count`) at
/// the first hit or `due` call at least `period` after the last report.
///
/// Thread safety: any thread; lock-free. Relaxed atomics throughout: the count and the
/// time are independent figures, and a report that comes a hit early or late is fine (no
/// hit is lost or counted twice: `exchange` hands each to exactly one report).
class event_tally {
  public:
    /// Reports at most once per `period`.
    explicit event_tally(std::chrono::nanoseconds period = std::chrono::seconds(1)) noexcept
        : period_(period.count()) {}

    /// Counts one hit of `kind` (or `n`) at `now` (any monotonic clock, in nanoseconds);
    /// returns how many hits to report now (0: none).
    [[nodiscard]] std::uint64_t hit(server_event kind, std::int64_t now,
                                    std::uint64_t n = 1) noexcept {
        slots_[index(kind)].pending.fetch_add(n, std::memory_order_relaxed);
        return due(kind, now);
    }
    /// The hits of `kind` to report at `now`, if a report is due (0: none).
    [[nodiscard]] std::uint64_t due(server_event kind, std::int64_t now) noexcept {
        slot& s = slots_[index(kind)];
        if (s.pending.load(std::memory_order_relaxed) == 0) {
            return 0;
        }
        std::int64_t next = s.next.load(std::memory_order_relaxed);
        if (now < next ||
            !s.next.compare_exchange_strong(next, now + period_, std::memory_order_relaxed)) {
            return 0; // too soon, or another thread reports
        }
        return s.pending.exchange(0, std::memory_order_relaxed);
    }
    /// True when some hits wait to be reported.
    [[nodiscard]] bool pending() const noexcept {
        return std::any_of(slots_.begin(), slots_.end(), [](const slot& s) {
            return s.pending.load(std::memory_order_relaxed) != 0;
        });
    }

  private:
    struct slot {
        std::atomic<std::uint64_t> pending{0};
        std::atomic<std::int64_t> next{std::numeric_limits<std::int64_t>::min()};
    };
    static std::size_t index(server_event kind) noexcept { return static_cast<std::size_t>(kind); }

    std::int64_t period_;
    std::array<slot, server_event_kinds> slots_{};
};

/// The unsent event bytes of all of a server's subscribers, kept under
/// `max_subscriber_memory` (server.hpp tells how). `total` counts what publishers appended
/// to links and what subscribed connections have not sent yet; `doomed` the part of it held
/// by connections already cut, whose loops have not closed them yet (so they are not cut
/// twice, and no more is cut for them). Shared by the core and its links, so a link that
/// outlives the server (an event_stream the router still holds) can still leave the list.
///
/// Thread safety: the atomics from any thread; `links` under `mutex`, which is taken when a
/// link comes and goes and while victims are chosen, never by a publisher. Lock order:
/// `mutex`, then a link's `mutex`. The counters are relaxed: each is a sum of adds and
/// subtractions that the link's mutex or its loop already order (a byte is subtracted after
/// it was added, never before), and a figure a moment old only moves a cut by an event.
struct subscriber_budget {
    std::size_t cap = 0;                // max_subscriber_memory; 0: none
    std::atomic<std::size_t> total{0};  // unsent event bytes of every link and subscriber
    std::atomic<std::size_t> doomed{0}; // of `total`, what links already cut still hold
    std::atomic<std::size_t> cut{0};    // subscribers cut for the cap (server_stats)
    std::atomic<bool> choosing{false};  // a loop is choosing victims; the others go on
    std::mutex mutex;
    std::vector<subscriber_link*> links; // every link not yet detached (`slot`: its index)

    void add(std::size_t n) noexcept { total.fetch_add(n, std::memory_order_relaxed); }
    void sub(std::size_t n) noexcept { total.fetch_sub(n, std::memory_order_relaxed); }
    /// Past the cap, not counting what is already on its way out.
    [[nodiscard]] bool over() const noexcept {
        return cap != 0 && excess(total.load(std::memory_order_relaxed),
                                  doomed.load(std::memory_order_relaxed)) > 0;
    }
    /// How far `now` bytes, of which `spared` are on their way out, are past the cap.
    [[nodiscard]] std::size_t excess(std::size_t now, std::size_t spared) const noexcept {
        return now > cap && now - cap > spared ? now - cap - spared : 0;
    }
    void enlist(subscriber_link& l);
    void remove(subscriber_link& l) noexcept;
    /// Marks the links with the largest backlogs cut, largest first, until what they hold
    /// brings the total back to the cap; returns those to post to their loops (the others
    /// are posted already), and in `cuts` how many it cut.
    [[nodiscard]] std::vector<std::shared_ptr<subscriber_link>> choose_victims(std::size_t& cuts);
};

/// What joins a subscribed connection and the bucket's publishers, who run on any thread.
/// Publishers append under `mutex` and post the link to the connection's loop; the loop
/// moves the bytes into the connection's output. `loop` is valid for as long as the
/// subscription and the monitor that use this link: both are cancelled (cancel waits for a
/// callback in progress) before the connection, and so before the loop, goes away.
/// Every byte in `pending` is counted in `budget->total`.
struct subscriber_link : std::enable_shared_from_this<subscriber_link> {
    subscriber_link() = default;
    subscriber_link(const subscriber_link&) = delete;
    subscriber_link& operator=(const subscriber_link&) = delete;
    ~subscriber_link() {
        // Normally detached (and so out of the list) already; this is for one that never was.
        if (budget != nullptr) {
            budget->remove(*this);
            budget->sub(pending.size());
            budget->doomed.fetch_sub(doomed, std::memory_order_relaxed);
        }
    }

    /// Under `mutex`, after a publisher appended to `pending` from `before` on: counts the
    /// new bytes, and past this link's own cap marks it overflowed (and drops what it holds).
    void appended(std::size_t before) {
        if (budget != nullptr) {
            budget->add(pending.size() - before);
        }
        // relaxed on `unsent`: a loop's figure a moment old only moves the cut-off by what
        // one flush sent.
        if (cap != 0 && pending.size() + unsent.load(std::memory_order_relaxed) > cap) {
            overflowed = true;
            drop_pending();
        }
    }
    /// Under `mutex`: forgets the events not yet handed to the loop.
    void drop_pending() noexcept {
        if (budget != nullptr) {
            budget->sub(pending.size());
        }
        std::string().swap(pending);
    }
    /// Under `mutex`: what this subscriber holds unsent, as far as this link knows.
    [[nodiscard]] std::size_t backlog() const noexcept {
        return pending.size() + (conn != nullptr ? unsent.load(std::memory_order_relaxed) : 0);
    }

    std::mutex mutex;
    std::function<void()> on_detach;    // an event_stream's source: the connection went away
    std::weak_ptr<server_core> core;    // an event_stream's: keeps `loop` alive to post
    bool detached = false;              // the connection went away (or never came)
    std::string pending;                // events not yet handed to the loop
    bool queued = false;                // posted to the loop and not yet taken
    bool overflowed = false;            // passed the cap: disconnect
    bool cut_for_memory = false;        // overflowed: cut for max_subscriber_memory
    bool ended = false;                 // the bucket exited: close after the last event
    std::atomic<std::size_t> unsent{0}; // the connection's unsent bytes, as its loop saw last
    std::size_t cap = 0;
    event_loop* loop = nullptr;
    connection* conn = nullptr; // set and cleared by the loop thread (under `mutex`)
    // The server's budget (null for a stream made after its server stopped); `slot` and
    // `listed` (under budget->mutex): where in its list; `doomed` (under `mutex`): cut for
    // it, what this link adds to budget->doomed until it is detached.
    std::shared_ptr<subscriber_budget> budget;
    std::size_t slot = 0;
    bool listed = false;
    std::size_t doomed = 0;
};

/// Marks a link's connection gone and tells an event_stream's source, once.
void detach(const std::shared_ptr<subscriber_link>& link);

/// One deferred reply (`session::defer`). The completing thread fills `reply`, `dropped`,
/// `then_close` and `stream` and posts the state to the loop; the rest is the loop thread's.
struct deferred_state {
    std::weak_ptr<server_core> core;
    event_loop* loop = nullptr;
    connection* conn = nullptr; // null once the connection is gone
    bool barrier = false;       // no request runs after it until it is done
    bool done = false;          // completed, and taken by the loop
    std::string after;          // replies of later requests, held back until this one is sent
    std::string reply;
    bool dropped = false;    // dropped without a reply: `ERROR internal`, then close
    bool then_close = false; // close after `reply`
    std::shared_ptr<subscriber_link> stream;
    // The loop thread's: a request the handler deferred is counted when it completes.
    bool timed = false;
    std::uint8_t verb = 0; // its index in command_verbs
    std::chrono::steady_clock::time_point started{};
};

/// One client connection. Owned by its loop; touched only by the loop's thread.
struct connection {
    enum class phase : std::uint8_t {
        open,      // running requests
        closing,   // no more requests; close once `out` is sent
        lingering, // `out` sent and write side shut down; discarding input until EOF
    };

    unique_fd fd;
    line_framer framer;
    // This connection's longest line: the server's max_line, peer_line_margin more once it is
    // a peer's. The framer it reads with (its own or the loop's spare) is set to it.
    std::size_t max_line;
    std::string out;
    std::size_t sent = 0;
    phase state = phase::open;
    std::uint32_t interest = io_read;
    bool paused = false;     // backpressure: requests are not pulled
    bool subscribed = false; // streaming events; input is discarded
    bool peer_done = false;  // the peer closed its side: no lingering needed
    bool counted = false;    // counts against max_connections
    bool dirty = false;      // in the loop's list of connections to flush after the mail
    bool peer_node = false;  // another node's connection (session::mark_peer)
    std::size_t index = 0;   // position in the loop's list
    std::chrono::steady_clock::time_point linger_until{};
    std::uint64_t id = 0;      // session::id
    std::uint64_t context = 0; // session::context
    std::string storage;       // session::storage
    // For idle_timeout: when the last byte was read, or when it was last seen busy.
    std::chrono::steady_clock::time_point last_active{};
    std::shared_ptr<subscriber_link> link;
    std::shared_ptr<subscriber_link> channel; // session::channel: bytes from other threads
    subscription events;
    monitor_handle bucket_monitor;
    std::deque<std::shared_ptr<deferred_state>> waiting; // deferred replies, request order
    std::string again;        // session::run_after_replies: the line to run once `waiting`
    bool waits_again = false; // empties, and whether there is one
    std::size_t held = 0;     // bytes held in `waiting`'s `after` buffers
    std::size_t charged = 0;  // subscribed: of `out`, the bytes counted in the server's budget

    connection(int socket, std::size_t limit) : fd(socket), framer(limit), max_line(limit) {}
    [[nodiscard]] std::size_t unsent() const noexcept { return out.size() - sent; }
    /// Where the next reply goes: the output, or behind the last deferred reply.
    [[nodiscard]] std::string& reply_target() noexcept {
        return waiting.empty() ? out : waiting.back()->after;
    }
    /// A deferred reply that may become a stream is outstanding, or a request waits for
    /// every outstanding one (`again`): nothing more runs.
    [[nodiscard]] bool barred() const noexcept {
        return !waiting.empty() && (waiting.back()->barrier || waits_again);
    }
    /// What `idle_timeout` may close: open, nothing in flight or unsent, no subscription
    /// (`link` is set as soon as one is made, also while it waits behind deferred replies),
    /// not a peer's, and counted (a refused connection closes by itself).
    [[nodiscard]] bool idle() const noexcept {
        return state == phase::open && counted && !peer_node && !subscribed && link == nullptr &&
               waiting.empty() && unsent() == 0;
    }
    /// No more requests: the connection closes once its output is sent.
    void begin_close() noexcept {
        if (state == phase::open) {
            state = phase::closing;
            paused = false;
        }
    }
};

/// Everything a server's threads share; kept alive by each of them.
struct server_core : std::enable_shared_from_this<server_core> {
    server_options options;
    request_handler handler;
    unique_fd listener;
    unique_fd spare;        // a descriptor given up to accept-and-refuse when out of descriptors
    std::mutex spare_mutex; // the loops share `spare`
    socket_address address;
    std::vector<std::unique_ptr<event_loop>> loops;
    process_threads threads; // one per loop
    std::shared_ptr<exit_signal> signal;

    std::atomic<bool> stopping{false};
    // Requested with `stopping`. The loops' threads take its token as their
    // `current_stop_token`, so a handler waiting on a supervisor (INFO's snapshot asks the
    // node's supervisors) gives up when the server is stopped, by that very supervisor say,
    // instead of deadlocking the stop that waits for the loop.
    std::stop_source stop_requests;
    std::mutex reason_mutex;
    exit_reason reason;
    std::atomic<std::size_t> loops_running{0};

    std::atomic<std::size_t> connections{0};
    std::atomic<std::size_t> accepted{0};
    std::atomic<std::size_t> rejected{0};
    std::atomic<std::size_t> out_of_descriptors{0};
    std::atomic<std::size_t> idle_closed{0};
    std::atomic<std::size_t> lingering{0};
    std::atomic<std::size_t> subscribers{0}; // connections streaming events now
    std::atomic<std::uint64_t> next_id{1};
    std::string address_text; // `address`, for the events
    event_tally tally;        // limit_hit and idle_closed, at most one a second per kind
    std::shared_ptr<subscriber_budget> budget = std::make_shared<subscriber_budget>();

    void request_stop(const exit_reason& why);
    void loop_finished();
    /// Counts `n` events of `kind` (when the logger takes them) and reports them if due.
    void hit(server_event kind, std::uint64_t n = 1);
    /// Reports every kind whose report is due.
    void report_due();
    /// Tells the logger about `count` events of `kind`.
    void report(server_event kind, std::uint64_t count) const;
};

/// Nanoseconds on the steady clock (the event tally's time).
[[nodiscard]] inline std::int64_t steady_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

[[nodiscard]] inline log_level level_of(server_event kind) noexcept {
    return kind == server_event::idle_closed ? log_level::debug : log_level::warning;
}

inline void server_core::hit(server_event kind, std::uint64_t n) {
    if (!options.log.enabled(level_of(kind))) {
        return;
    }
    if (const std::uint64_t count = tally.hit(kind, steady_ns(), n)) {
        report(kind, count);
    }
}

inline void server_core::report_due() {
    const std::int64_t now = steady_ns();
    for (std::size_t i = 0; i < server_event_kinds; ++i) {
        const auto kind = static_cast<server_event>(i);
        if (const std::uint64_t count = tally.due(kind, now)) {
            report(kind, count);
        }
    }
}

inline void server_core::report(server_event kind, std::uint64_t count) const {
    log_event e;
    e.level = level_of(kind);
    e.what = kind == server_event::idle_closed ? "idle_closed" : "limit_hit";
    if (kind != server_event::idle_closed) {
        e.fields.emplace_back("limit", server_event_names[static_cast<std::size_t>(kind)]);
    }
    e.fields.emplace_back("count", std::to_string(count));
    std::uint64_t max = 0;
    switch (kind) {
    case server_event::max_connections:
        max = options.max_connections;
        e.reason = error_text(error_code::too_many_connections);
        break;
    case server_event::out_of_descriptors: {
        rlimit lim{};
        max = ::getrlimit(RLIMIT_NOFILE, &lim) == 0 ? static_cast<std::uint64_t>(lim.rlim_cur) : 0;
        e.reason = error_text(error_code::too_many_connections);
        break;
    }
    case server_event::max_line:
        max = options.max_line;
        e.reason = error_text(error_code::line_too_long);
        break;
    case server_event::max_subscriber_output:
        max = options.max_subscriber_output;
        break;
    case server_event::max_subscriber_memory:
        max = options.max_subscriber_memory;
        break;
    case server_event::max_deferred:
        max = options.max_deferred;
        break;
    case server_event::idle_closed:
        e.fields.emplace_back("idle_timeout_ms", std::to_string(options.idle_timeout.count()));
        break;
    }
    if (kind != server_event::idle_closed) {
        e.fields.emplace_back("max", std::to_string(max));
    }
    e.fields.emplace_back("address", address_text);
    options.log.log(std::move(e));
}

/// Lingering connections at most (closing ones that drain input, refused ones included);
/// past it a closing connection is closed at once.
inline constexpr std::size_t max_lingering = 4096;
/// How often a loop with lingering connections looks for expired ones.
inline constexpr std::chrono::milliseconds linger_scan_every{100};
/// TCP keepalive for a subscriber that half-closed: a client that has in fact closed is
/// noticed at the next event, since a write to it fails; on a quiet bucket there may be
/// none for a long time. The probes find it instead once the client's side is gone (Linux
/// keeps a closed socket's FIN_WAIT_2 state `tcp_fin_timeout`, 60 s, and then answers with a
/// reset), or its host unreachable: some 15 s after that.
inline constexpr int half_closed_keepalive_idle_s = 15;
inline constexpr int half_closed_keepalive_interval_s = 15;
inline constexpr int half_closed_keepalive_count = 4;

/// Turns on the keepalive probes above on `fd` (where the system lets them be tuned;
/// elsewhere its defaults apply).
inline void probe_half_closed(int fd) noexcept {
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
#if defined(TCP_KEEPIDLE) && defined(TCP_KEEPINTVL) && defined(TCP_KEEPCNT)
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &half_closed_keepalive_idle_s,
                 sizeof half_closed_keepalive_idle_s);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &half_closed_keepalive_interval_s,
                 sizeof half_closed_keepalive_interval_s);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &half_closed_keepalive_count,
                 sizeof half_closed_keepalive_count);
#endif
}

/// How often a loop looks for idle connections at most apart (see `idle_sweep_interval`).
inline constexpr std::chrono::milliseconds idle_sweep_max{1000};

/// How often a loop sweeps its connections for `idle_timeout`: a quarter of it, at most a
/// second (at least a millisecond). A sweep, not a timer wheel: one pass over the loop's
/// connections per interval costs about a microsecond per hundred connections, so 10,000
/// idle connections cost a loop some 0.1 ms a second, and a request costs nothing but the
/// store of the loop's clock into its connection.
[[nodiscard]] inline std::chrono::milliseconds
idle_sweep_interval(std::chrono::milliseconds idle_timeout) noexcept {
    return std::clamp(idle_timeout / 4, std::chrono::milliseconds(1), idle_sweep_max);
}
/// Bytes asked of the framer for one read.
inline constexpr std::size_t read_size = 16384;
/// Reads per connection per turn of the loop, so a flooding client cannot hold its loop.
inline constexpr int reads_per_turn = 4;
/// Sent bytes at the front of a connection's output past which they are dropped, once they
/// are at least a quarter of the unsent ones: a byte sent costs at most four bytes moved, and
/// a client that stopped reading holds at most a quarter more than its unsent bytes.
inline constexpr std::size_t compact_after = 65536;
/// A subscriber link's buffer capacity kept after its events were handed to the loop.
inline constexpr std::size_t max_kept_pending = 65536;

/// What other threads post to a loop: a subscriber link with events (or news), or a
/// completed deferred reply.
struct mail {
    std::shared_ptr<subscriber_link> link;
    std::shared_ptr<deferred_state> reply;
};

/// One event-loop thread's state: its poller, its connections, and its mailbox for
/// subscriber links and deferred replies posted from other threads.
class event_loop {
  public:
    event_loop(server_core& core, poller_kind kind)
        : core_(core), poller_(kind), spare_framer_(core.options.max_line),
          logging_(core.options.log.enabled(log_level::debug) ||
                   core.options.log.enabled(log_level::warning)) {
        poller_.add(wake_.read_fd(), &wake_, io_read);
        poller_.add(core_.listener.get(), &core_.listener, io_read, true);
    }
    event_loop(const event_loop&) = delete;
    event_loop& operator=(const event_loop&) = delete;
    ~event_loop() {
        // Normally empty by now (run() closes everything); a loop that never ran, or that
        // failed, still owns connections.
        while (!conns_.empty()) {
            destroy(*conns_.back());
        }
    }

    void run();
    void wake() const noexcept { wake_.notify(); }

    /// From any thread: a link has events (or news) for its connection, or a deferred reply
    /// is complete. False once the loop has finished (the mail is not taken).
    bool post(mail m) { return mailbox_.post(std::move(m)); }

    void subscribe(connection& c, registry::bucket_type& b);
    [[nodiscard]] std::shared_ptr<subscriber_link> open_channel(connection& c,
                                                                std::function<void()> on_close);
    [[nodiscard]] std::shared_ptr<deferred_state> defer(connection& c, bool barrier);
    [[nodiscard]] std::size_t requests() const noexcept {
        return requests_.load(std::memory_order_relaxed);
    }
    [[nodiscard]] const loop_counters& counters() const noexcept { return counters_; }

  private:
    void accept_all();
    void handle(connection& c, std::uint32_t events);
    void read_requests(connection& c);
    void discard_input(connection& c);
    void pull_requests(connection& c);
    void flush(connection& c);
    void set_interest(connection& c);
    void take_mail();
    void settle(deferred_state& d);
    void to_flush(connection& c);
    void orphan(deferred_state& d);
    void attach(connection& c, const std::shared_ptr<subscriber_link>& link);
    void recount(connection& c) noexcept;
    void relieve();
    [[nodiscard]] bool may_resume(const connection& c) const noexcept;
    void expire_lingering();
    void expire_idle();
    [[nodiscard]] bool refuse_without_descriptor();
    [[nodiscard]] int wait_limit() const noexcept;
    void adopt(int fd, bool counted);
    void destroy(connection& c);
    void shut_down_all();

    server_core& core_;
    poller poller_;
    wake_pipe wake_;
    std::vector<std::unique_ptr<connection>> conns_;
    std::vector<std::unique_ptr<connection>> graveyard_; // freed after each batch of events
    std::vector<io_event> events_;
    line_framer spare_framer_; // lent to the connection being read (see read_requests)
    std::size_t lingering_here_ = 0;
    std::chrono::steady_clock::time_point next_linger_scan_{};
    // The loop's clock, read once per wake-up when `idle_timeout` is on (connections' last
    // activity is stamped with it, so a request costs no clock read).
    std::chrono::steady_clock::time_point now_ = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point next_idle_sweep_{};
    std::atomic<std::size_t> requests_{0};
    bool logging_ = false; // the logger takes some of the server's events
    // Its own cache lines: other threads read it (snapshots), only this one writes it.
    alignas(64) loop_counters counters_;

    mailbox<mail> mailbox_{wake_};
    std::vector<mail> taken_;
    std::vector<connection*> dirty_; // to flush once the mail is taken
};

inline void server_core::request_stop(const exit_reason& why) {
    {
        const std::lock_guard lock(reason_mutex);
        if (stopping.load(std::memory_order_relaxed)) {
            return;
        }
        reason = why;
        stopping.store(true, std::memory_order_release);
    }
    stop_requests.request_stop();
    for (const auto& loop : loops) {
        loop->wake();
    }
}

inline void server_core::loop_finished() {
    if (loops_running.fetch_sub(1, std::memory_order_acq_rel) != 1) {
        return;
    }
    // The last loop out: nobody uses the listener any more. Record the exit.
    listener.reset();
    exit_reason why;
    {
        const std::lock_guard lock(reason_mutex);
        why = reason;
    }
    signal->exit(why);
}

inline int event_loop::wait_limit() const noexcept {
    int limit = lingering_here_ > 0 ? static_cast<int>(linger_scan_every.count()) : -1;
    if (core_.options.idle_timeout.count() > 0 && !conns_.empty()) {
        const auto every = idle_sweep_interval(core_.options.idle_timeout);
        limit = limit < 0 ? static_cast<int>(every.count())
                          : std::min(limit, static_cast<int>(every.count()));
    }
    if (logging_ && core_.tally.pending()) {
        // Events counted and not yet reported: look again soon, so the last of a burst is
        // reported within about a second even if nothing else happens.
        limit = limit < 0 ? 250 : std::min(limit, 250);
    }
    return limit;
}

inline void event_loop::run() {
    current_stop_token = core_.stop_requests.get_token();
    const bool idle_timeout = core_.options.idle_timeout.count() > 0;
    while (!core_.stopping.load(std::memory_order_acquire)) {
        poller_.wait(events_, wait_limit());
        if (idle_timeout) {
            now_ = std::chrono::steady_clock::now();
        }
        for (const io_event& ev : events_) {
            if (ev.tag == &wake_) {
                wake_.drain();
                take_mail();
            } else if (ev.tag == &core_.listener) {
                accept_all();
            } else {
                auto& c = *static_cast<connection*>(ev.tag);
                if (c.fd) {
                    handle(c, ev.events);
                }
            }
        }
        if (idle_timeout && now_ >= next_idle_sweep_) {
            expire_idle();
        }
        graveyard_.clear();
        if (lingering_here_ > 0) {
            expire_lingering();
        }
        if (logging_ && core_.tally.pending()) {
            core_.report_due();
        }
    }
    shut_down_all();
}

inline void event_loop::accept_all() {
    for (int i = 0; i < 64; ++i) {
        const int fd = accept_connection(core_.listener.get());
        if (fd < 0) {
            if ((errno == EMFILE || errno == ENFILE) && refuse_without_descriptor()) {
                continue; // the next one waiting, if any, is refused the same way
            }
            return; // EAGAIN: nothing more; ECONNABORTED and the like: try next time
        }
        const std::size_t open = core_.connections.fetch_add(1, std::memory_order_relaxed);
        if (open >= core_.options.max_connections) {
            core_.connections.fetch_sub(1, std::memory_order_relaxed);
            core_.rejected.fetch_add(1, std::memory_order_relaxed);
            adopt(fd, false);
            connection& c = *conns_.back();
            append_reply(c.out, reply::error(error_code::too_many_connections));
            counters_.record_error(reply_reason(c.out));
            core_.hit(server_event::max_connections);
            c.begin_close();
            flush(c);
            continue;
        }
        core_.accepted.fetch_add(1, std::memory_order_relaxed);
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        adopt(fd, true);
    }
}

inline bool event_loop::refuse_without_descriptor() {
    // Out of descriptors: give up the spare, take the waiting connection off the queue,
    // answer it and close it, so that it is not left hanging in the backlog and the listener
    // does not stay readable for ever. The answer cannot linger like the `max_connections`
    // one (the descriptor is needed back at once): input the client sent already is read
    // first, so that closing does not turn it into a reset that would destroy the answer.
    // Another loop may take the freed descriptor number between the close and the reopen;
    // the spare is then missing until a descriptor frees up, and a connection waiting
    // meanwhile stays in the backlog until then (the loops find the listener ready at each
    // turn and try again).
    const std::lock_guard lock(core_.spare_mutex);
    core_.spare.reset();
    const int victim = accept_connection(core_.listener.get());
    if (victim >= 0) {
        char sink[4096];
        for (int i = 0; i < reads_per_turn; ++i) {
            if (::read(victim, sink, sizeof sink) <= 0) {
                break;
            }
        }
        std::string answer;
        append_reply(answer, reply::error(error_code::too_many_connections));
        const ssize_t n = send_some(victim, answer.data(), answer.size());
        ::shutdown(victim, SHUT_WR);
        ::close(victim);
        core_.rejected.fetch_add(1, std::memory_order_relaxed);
        core_.out_of_descriptors.fetch_add(1, std::memory_order_relaxed);
        if (n > 0) {
            counters_.add_out(static_cast<std::uint64_t>(n));
        }
        counters_.record_error(reply_reason(answer));
    }
    core_.spare.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (victim >= 0) {
        core_.hit(server_event::out_of_descriptors); // after the spare is back
    }
    return victim >= 0;
}

inline void event_loop::adopt(int fd, bool counted) {
    auto c = std::make_unique<connection>(fd, core_.options.max_line);
    c->counted = counted;
    c->last_active = now_;
    c->index = conns_.size();
    c->id = core_.next_id.fetch_add(1, std::memory_order_relaxed);
    try {
        poller_.add(fd, c.get(), io_read);
    } catch (...) {
        if (counted) {
            core_.connections.fetch_sub(1, std::memory_order_relaxed);
        }
        throw;
    }
    conns_.push_back(std::move(c));
}

inline void event_loop::handle(connection& c, std::uint32_t events) {
    if ((events & io_error) != 0 && c.state == connection::phase::open &&
        ((!c.subscribed && c.paused && c.unsent() == 0) || (c.subscribed && c.peer_done))) {
        // Reset (or hung up) while it reads nothing and has nothing to send (waiting for
        // deferred replies), or a half-closed subscriber that has now closed for good (a
        // hang-up: both directions are shut): nothing would notice, and the poller would
        // report it for ever.
        destroy(c);
        return;
    }
    if ((events & (io_read | io_error)) != 0) {
        if (c.state == connection::phase::open && !c.subscribed) {
            read_requests(c);
        } else {
            discard_input(c);
        }
    }
    if (c.fd && (events & io_write) != 0) {
        flush(c);
    }
}

inline void event_loop::read_requests(connection& c) {
    // A connection with nothing buffered (the usual case: requests arrive whole) borrows
    // the loop's framer and its buffer for this turn, and gives them back if it again has
    // nothing pending: no allocation per read, and an idle connection holds no buffer.
    const bool borrowed = c.framer.capacity() == 0 && !c.framer.overflowed();
    if (borrowed) {
        // The limit goes with the connection, not with the buffer: the spare was last lent
        // to another connection, perhaps a peer's, whose limit is larger.
        c.framer.swap(spare_framer_);
        c.framer.set_max_line(c.max_line);
    }
    for (int i = 0; i < reads_per_turn && c.fd && c.state == connection::phase::open && !c.paused &&
                    !c.subscribed;
         ++i) {
        const std::span<char> space = c.framer.prepare(read_size);
        const ssize_t n = ::read(c.fd.get(), space.data(), space.size());
        if (n > 0) {
            c.last_active = now_;
            counters_.add_in(static_cast<std::uint64_t>(n));
            c.framer.commit(static_cast<std::size_t>(n));
            pull_requests(c);
            if (static_cast<std::size_t>(n) < space.size()) {
                break; // drained, most likely: do not pay for a read that finds nothing
            }
        } else if (n == 0) {
            // The peer is done sending: what is complete has run; a partial line is
            // dropped. Its replies still go out (a half-closed peer may be reading).
            c.peer_done = true;
            c.framer.reset();
            c.begin_close();
            break;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else {
            destroy(c); // reset by the peer, or worse: nothing can be delivered
            return;
        }
    }
    if (!c.fd) {
        return; // destroyed: the buffer goes with it if it was borrowed
    }
    if (borrowed && c.framer.pending() == 0 && !c.framer.overflowed()) {
        c.framer.swap(spare_framer_);
    } else if (borrowed || c.framer.pending() == 0) {
        // An idle connection holds no input buffer; a partial line keeps only what it needs.
        c.framer.shrink_to_fit();
    }
    flush(c);
}

inline void event_loop::discard_input(connection& c) {
    char sink[4096];
    for (int i = 0; i < reads_per_turn; ++i) {
        const ssize_t n = ::read(c.fd.get(), sink, sizeof sink);
        if (n > 0) {
            counters_.add_in(static_cast<std::uint64_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        // EOF or an error.
        if (c.state == connection::phase::open && n == 0 && !c.peer_node) {
            // A subscriber that half-closed (`nc -N`): it may still be reading, so the
            // events go on until a write fails or the socket reports a hang-up (`handle`).
            // Its input is over: stop asking for it. A client that closed for good looks
            // the same until then; keepalive probes find it on a quiet bucket.
            c.peer_done = true;
            probe_half_closed(c.fd.get());
            set_interest(c);
        } else if (c.state == connection::phase::open) {
            destroy(c); // a subscriber that went away, or a peer's stream that it closed
        } else if (c.state == connection::phase::lingering || n < 0) {
            destroy(c);
        } else {
            c.peer_done = true; // closing: send what is left, then close
            flush(c);
        }
        return;
    }
}

inline void event_loop::pull_requests(connection& c) {
    // A request's latency runs from its line being framed to its reply being queued; the
    // requests pulled here run back to back and are timed together (request_batch).
    request_batch batch(counters_);
    while (c.state == connection::phase::open && !c.subscribed) {
        if (c.unsent() + c.held > core_.options.max_output ||
            c.waiting.size() >= core_.options.max_deferred || c.barred()) {
            if (c.waiting.size() >= core_.options.max_deferred && !c.paused) {
                core_.hit(server_event::max_deferred);
            }
            c.paused = true;
            return;
        }
        // A request that waited for the replies before it runs first (from its own copy).
        std::string waited;
        std::string_view line;
        if (c.waits_again) {
            c.waits_again = false;
            waited.swap(c.again);
            line = waited;
        } else {
            const frame f = c.framer.next();
            if (f.status == frame_status::incomplete) {
                return;
            }
            if (f.status == frame_status::too_long) {
                append_reply(c.reply_target(), reply::error(error_code::line_too_long));
                counters_.record_error(0);
                core_.hit(server_event::max_line);
                c.begin_close();
                return;
            }
            line = f.line;
        }
        const auto started = batch.start();
        // One writer: a plain increment, no read-modify-write shared between loops.
        requests_.store(requests_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        std::string& out = c.reply_target();
        const bool holding = &out != &c.out;
        const std::size_t before = out.size();
        const std::size_t deferred_before = c.waiting.size();
        session s(c, *this, line);
        const command cmd = parse(line);
        try {
            // The command's views point into the framer's buffer: it is left alone until
            // the handler returns.
            core_.handler(cmd, out, s);
            if (c.subscribed) {
                c.framer.reset(); // what follows SUBSCRIBE is ignored
                c.framer.shrink_to_fit();
            }
        } catch (...) {
            // Contained: this connection gets the error and is closed; nothing else is.
            // A reply the handler deferred before it threw is dropped with it.
            while (c.waiting.size() > deferred_before) {
                orphan(*c.waiting.back());
                c.waiting.pop_back();
            }
            out.resize(before);
            append_reply(out, reply::error(error_code::internal));
            c.begin_close();
        }
        if (holding) {
            c.held += out.size() - before;
        }
        if (c.waits_again) { // put back to run later: counted when it runs
            requests_.store(requests_.load(std::memory_order_relaxed) - 1,
                            std::memory_order_relaxed);
            continue; // barred now: the loop pauses
        }
        const std::size_t verb = verb_index(cmd.kind);
        deferred_state* deferred = nullptr;
        for (std::size_t i = deferred_before; i < c.waiting.size(); ++i) {
            if (!c.waiting[i]->done) { // the handler's (a SUBSCRIBE's wait is done already)
                deferred = c.waiting[i].get();
                break;
            }
        }
        if (deferred != nullptr) {
            deferred->timed = true; // counted when it completes (settle)
            deferred->verb = static_cast<std::uint8_t>(verb);
            deferred->started = started;
        } else {
            batch.add(verb, reply_reason(std::string_view(out).substr(before)));
        }
    }
}

inline void event_loop::flush(connection& c) {
    const std::size_t unsent_before = c.unsent();
    const bool sent = send_pending(c.fd.get(), c.out, c.sent, 4096);
    if (c.unsent() < unsent_before) { // what it sent (it clears `out` once all is sent)
        counters_.add_out(unsent_before - c.unsent());
    }
    if (!sent) {
        destroy(c);
        return;
    }
    if (c.sent >= compact_after && c.sent >= c.unsent() / 4) {
        // A client that never catches up entirely (a subscriber that stopped reading, a
        // pipelining client that reads slowly) would keep what was sent to it: drop it.
        c.out.erase(0, c.sent);
        c.sent = 0;
    }
    if (c.link) {
        c.link->unsent.store(c.unsent(), std::memory_order_relaxed);
        if (c.subscribed) {
            recount(c);
        }
    }
    if (c.channel) {
        c.channel->unsent.store(c.unsent(), std::memory_order_relaxed);
    }
    if (c.paused && may_resume(c)) {
        // Drained enough: run what is buffered, then read again. Pulling may fill the
        // output again, so flush once more (a recursion of at most one level per drain).
        c.paused = false;
        pull_requests(c);
        if (c.unsent() > 0 || c.state != connection::phase::open) {
            flush(c);
            return;
        }
    }
    if (c.state == connection::phase::closing && c.unsent() == 0 && c.waiting.empty()) {
        if (c.peer_done || core_.lingering.load(std::memory_order_relaxed) >= max_lingering) {
            destroy(c);
            return;
        }
        ::shutdown(c.fd.get(), SHUT_WR);
        c.state = connection::phase::lingering;
        c.linger_until = std::chrono::steady_clock::now() + core_.options.linger;
        core_.lingering.fetch_add(1, std::memory_order_relaxed);
        ++lingering_here_;
    }
    set_interest(c);
}

inline void event_loop::recount(connection& c) noexcept {
    // What the budget counts for this connection follows its unsent output.
    const std::size_t now = c.unsent();
    if (now > c.charged) {
        core_.budget->add(now - c.charged);
    } else if (now < c.charged) {
        core_.budget->sub(c.charged - now);
    }
    c.charged = now;
}

inline void event_loop::set_interest(connection& c) {
    std::uint32_t want = c.unsent() > 0 ? io_write : io_none;
    if (!c.paused && !c.peer_done) { // a client that shut its side has no more to give
        want |= io_read;
    }
    if (want != c.interest) {
        c.interest = want;
        poller_.modify(c.fd.get(), &c, want);
    }
}

inline bool event_loop::may_resume(const connection& c) const noexcept {
    return c.unsent() + c.held <= core_.options.max_output / 2 &&
           c.waiting.size() < core_.options.max_deferred && !c.barred();
}

inline void event_loop::take_mail() {
    mailbox_.take(taken_);
    for (const mail& m : taken_) {
        if (m.reply != nullptr) {
            settle(*m.reply);
            continue;
        }
        const auto& link = m.link;
        connection* c = nullptr;
        bool overflowed = false;
        bool ended = false;
        {
            const std::lock_guard lock(link->mutex);
            link->queued = false;
            c = link->conn;
            overflowed = link->overflowed;
            ended = link->ended;
            if (c != nullptr && !overflowed) {
                c->out.append(link->pending);
                c->charged += link->pending.size(); // still counted: now as unsent output
            }
            if (c != nullptr) {
                link->pending.clear();
                if (link->pending.capacity() > max_kept_pending) {
                    std::string().swap(link->pending); // a burst is over
                }
            }
        }
        if (c == nullptr) {
            continue;
        }
        if (overflowed) {
            if (!link->cut_for_memory) { // those are reported by the loop that cut them
                core_.hit(server_event::max_subscriber_output);
            }
            destroy(*c); // protocol.md: a subscriber past a cap is disconnected
            continue;
        }
        if (ended) {
            c->begin_close();
        }
        to_flush(*c);
    }
    taken_.clear();
    // One send per connection for everything this batch of mail brought it.
    for (connection* c : dirty_) {
        c->dirty = false;
        if (c->fd) { // not destroyed meanwhile (its object lives until the batch is over)
            flush(*c);
        }
    }
    dirty_.clear();
    relieve(); // after the sends, which may have brought the total back under the cap
}

inline void event_loop::relieve() {
    subscriber_budget& b = *core_.budget;
    // One loop chooses at a time; a loop that finds another choosing goes on with its work
    // (the chooser looks again when it is done, so nothing added meanwhile is missed).
    while (b.over() && !b.choosing.exchange(true, std::memory_order_acquire)) {
        std::size_t cuts = 0;
        std::vector<std::shared_ptr<subscriber_link>> victims;
        try {
            victims = b.choose_victims(cuts);
        } catch (...) {
            b.choosing.store(false, std::memory_order_release);
            throw;
        }
        b.choosing.store(false, std::memory_order_release);
        for (const auto& v : victims) {
            v->loop->post({v, nullptr}); // its loop disconnects it (this one too, by mail)
        }
        if (cuts > 0) {
            core_.hit(server_event::max_subscriber_memory, cuts);
        }
        if (cuts == 0) {
            return; // nothing left to cut: what is over is on its way out
        }
    }
}

inline void subscriber_budget::enlist(subscriber_link& l) {
    const std::lock_guard lock(mutex);
    l.slot = links.size();
    links.push_back(&l);
    l.listed = true;
}

inline void subscriber_budget::remove(subscriber_link& l) noexcept {
    const std::lock_guard lock(mutex);
    if (!l.listed) {
        return;
    }
    links[l.slot] = links.back();
    links[l.slot]->slot = l.slot;
    links.pop_back();
    l.listed = false;
}

inline std::vector<std::shared_ptr<subscriber_link>>
subscriber_budget::choose_victims(std::size_t& cuts) {
    std::vector<std::shared_ptr<subscriber_link>> victims;
    // Links held while the list is locked are let go after it is unlocked: a last
    // reference dropped under the lock would take it again in ~subscriber_link.
    std::vector<std::shared_ptr<subscriber_link>> held_here;
    const std::lock_guard lock(mutex);
    std::size_t over_by =
        excess(total.load(std::memory_order_relaxed), doomed.load(std::memory_order_relaxed));
    if (cap == 0 || over_by == 0) {
        return victims;
    }
    // A scan of every subscriber, so only when the cap is passed, and one loop at a time.
    std::vector<std::pair<std::size_t, subscriber_link*>> largest;
    largest.reserve(links.size());
    for (subscriber_link* l : links) {
        const std::lock_guard link_lock(l->mutex);
        if (!l->detached && !l->overflowed && l->backlog() > 0) {
            largest.emplace_back(l->backlog(), l);
        }
    }
    std::sort(largest.begin(), largest.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    for (const auto& [size, l] : largest) {
        if (over_by == 0) {
            break;
        }
        std::shared_ptr<subscriber_link> owner = l->weak_from_this().lock();
        if (owner == nullptr) {
            continue; // being destroyed: it leaves by itself
        }
        held_here.push_back(owner);
        const std::lock_guard link_lock(l->mutex);
        if (l->detached || l->overflowed) {
            continue;
        }
        const std::size_t held = l->backlog();
        l->overflowed = true; // its loop disconnects it, as past its own cap
        l->cut_for_memory = true;
        l->drop_pending();
        l->doomed = l->conn != nullptr ? l->unsent.load(std::memory_order_relaxed) : 0;
        doomed.fetch_add(l->doomed, std::memory_order_relaxed);
        cut.fetch_add(1, std::memory_order_relaxed);
        ++cuts;
        over_by -= std::min(over_by, held);
        if (!l->queued) {
            l->queued = true;
            victims.push_back(std::move(owner));
        }
    }
    return victims;
}

inline void event_loop::to_flush(connection& c) {
    if (!c.dirty) {
        c.dirty = true;
        dirty_.push_back(&c);
    }
}

inline void event_loop::settle(deferred_state& d) {
    if (d.timed) {
        // The request the handler deferred is counted now that its reply is complete.
        d.timed = false;
        counters_.record(d.verb, d.dropped ? std::size_t{5} /* internal */ : reply_reason(d.reply),
                         std::chrono::steady_clock::now() - d.started);
    }
    connection* const c = d.conn;
    if (c == nullptr) {
        detach(d.stream); // the connection went away first: a stream's source is told
        return;
    }
    d.done = true;
    // Deliver every reply now complete at the front, with what was held behind each.
    while (!c->waiting.empty() && c->waiting.front()->done) {
        const std::shared_ptr<deferred_state> front = std::move(c->waiting.front());
        c->waiting.pop_front();
        front->conn = nullptr;
        c->held -= front->after.size();
        if (front->dropped) {
            // A reply dropped unanswered: the connection ends here, like after a handler
            // that threw.
            append_reply(c->out, reply::error(error_code::internal));
        } else {
            c->out.append(front->reply);
        }
        if (front->dropped || front->then_close) {
            for (const auto& later : c->waiting) {
                orphan(*later);
            }
            c->waiting.clear();
            c->held = 0;
            c->begin_close();
            break;
        }
        if (front->stream != nullptr) {
            attach(*c, front->stream); // a barrier: nothing was held behind it
            c->framer.reset();         // what follows SUBSCRIBE is ignored
            c->framer.shrink_to_fit();
            break;
        }
        c->out.append(front->after);
    }
    to_flush(*c);
}

inline void detach(const std::shared_ptr<subscriber_link>& link) {
    if (link == nullptr) {
        return;
    }
    std::function<void()> detached;
    {
        const std::lock_guard lock(link->mutex);
        link->conn = nullptr;
        if (link->detached) {
            return;
        }
        link->detached = true;
        detached = std::move(link->on_detach);
        link->drop_pending();
        if (link->budget != nullptr) {
            link->budget->doomed.fetch_sub(link->doomed, std::memory_order_relaxed);
        }
        link->doomed = 0;
    }
    if (link->budget != nullptr) {
        link->budget->remove(*link);
    }
    if (detached) {
        detached();
    }
}

inline void event_loop::orphan(deferred_state& d) {
    d.conn = nullptr;
    if (d.done) {
        detach(d.stream); // a stream already made (not yet attached) is told now
    }
    // Not yet done: `settle` tells its stream, if it gets one, when it comes.
}

inline void event_loop::attach(connection& c, const std::shared_ptr<subscriber_link>& link) {
    {
        const std::lock_guard lock(link->mutex);
        link->conn = &c;
        link->cap = core_.options.max_subscriber_output;
        link->unsent.store(c.unsent(), std::memory_order_relaxed);
    }
    c.link = link;
    if (!c.subscribed) {
        core_.subscribers.fetch_add(1, std::memory_order_relaxed);
    }
    c.subscribed = true;
    recount(c); // replies still unsent count from now on, like the events behind them
    c.paused = false;
    // The input that follows is dropped by the caller: pull_requests once the handler that
    // subscribed has returned (its session's line() lives in the framer until then), settle
    // for a deferred SUBSCRIBE.
    // Events pushed before the connection took the stream wait in the link: take them.
    post({link, nullptr});
}

inline void event_loop::expire_lingering() {
    // A scan of every connection, so at most one per `linger_scan_every`.
    const auto now = std::chrono::steady_clock::now();
    if (now < next_linger_scan_) {
        return;
    }
    next_linger_scan_ = now + linger_scan_every;
    for (std::size_t i = 0; i < conns_.size();) {
        connection& c = *conns_[i];
        if (c.state == connection::phase::lingering && now >= c.linger_until) {
            destroy(c); // moves the last connection into slot i
        } else {
            ++i;
        }
    }
}

inline void event_loop::expire_idle() {
    // A sweep of the loop's connections (see `idle_sweep_interval`): an idle one whose last
    // activity is `idle_timeout` old is closed; a busy one is stamped now, so its idle time
    // counts from when it was last seen busy (within one sweep interval of when it stopped).
    next_idle_sweep_ = now_ + idle_sweep_interval(core_.options.idle_timeout);
    for (std::size_t i = 0; i < conns_.size();) {
        connection& c = *conns_[i];
        if (!c.idle()) {
            c.last_active = now_;
        } else if (now_ - c.last_active >= core_.options.idle_timeout) {
            core_.idle_closed.fetch_add(1, std::memory_order_relaxed);
            core_.hit(server_event::idle_closed);
            destroy(c); // silently; moves the last connection into slot i
            continue;
        }
        ++i;
    }
}

inline void event_loop::destroy(connection& c) {
    if (!c.fd) {
        return;
    }
    poller_.remove(c.fd.get());
    c.fd.reset();
    for (const auto& d : c.waiting) {
        orphan(*d); // completed later, they are dropped
    }
    c.waiting.clear();
    c.held = 0;
    if (c.link) {
        // Cancelling waits for a publisher running on another thread; after it, nobody
        // but this loop touches the link.
        c.events.cancel();
        c.bucket_monitor.cancel();
        // Its unsent output leaves the budget before the link does (and with it the part
        // of `doomed` that spared it), so the total never looks over the cap for it.
        core_.budget->sub(c.charged);
        c.charged = 0;
        detach(c.link); // an event_stream's source: stop sending
    }
    detach(c.channel); // its source: stop sending
    if (c.subscribed) {
        core_.subscribers.fetch_sub(1, std::memory_order_relaxed);
    }
    if (c.counted) {
        core_.connections.fetch_sub(1, std::memory_order_relaxed);
    }
    if (c.state == connection::phase::lingering) {
        core_.lingering.fetch_sub(1, std::memory_order_relaxed);
        --lingering_here_;
    }
    // Swap-remove from the list; the object itself lives until the batch is over, since
    // later events of this batch may still name it.
    const std::size_t at = c.index;
    std::unique_ptr<connection> owned = std::move(conns_[at]);
    if (at + 1 != conns_.size()) {
        conns_[at] = std::move(conns_.back());
        conns_[at]->index = at;
    }
    conns_.pop_back();
    graveyard_.push_back(std::move(owned));
}

inline void event_loop::shut_down_all() {
    poller_.remove(core_.listener.get());
    while (!conns_.empty()) {
        connection& c = *conns_.back();
        if (c.unsent() > 0) {
            // One last attempt; a client that does not read loses the rest.
            const auto n = send_some(c.fd.get(), c.out.data() + c.sent, c.out.size() - c.sent);
            if (n > 0) {
                counters_.add_out(static_cast<std::uint64_t>(n));
            }
        }
        destroy(c);
    }
    // Mail that came meanwhile, and any that comes later (refused by `post`): deferred
    // replies find their connection gone, and their streams are told.
    mailbox_.close();
    take_mail();
    graveyard_.clear();
}

inline void event_loop::subscribe(connection& c, registry::bucket_type& b) {
    auto link = std::make_shared<subscriber_link>();
    link->loop = this;
    link->cap = core_.options.max_subscriber_output; // also while it waits to be attached
    link->budget = core_.budget;
    core_.budget->enlist(*link);
    c.link = link;
    const auto post_if_first = [](const std::shared_ptr<subscriber_link>& l,
                                  std::unique_lock<std::mutex>& lock) {
        if (!l->queued) {
            l->queued = true;
            lock.unlock();
            l->loop->post({l, nullptr});
        }
    };
    c.events = b.subscribe([link, post_if_first](const registry::bucket_type::event& e) {
        std::unique_lock lock(link->mutex);
        if (link->overflowed || link->detached) {
            return;
        }
        const std::size_t before = link->pending.size();
        if (e.kind == bucket_event_kind::put) {
            append_set_event(link->pending, e.key,
                             e.value ? std::string_view(*e.value) : std::string_view());
        } else {
            append_deleted_event(link->pending, e.key);
        }
        link->appended(before);
        post_if_first(link, lock); // once per batch: a link already posted is left alone
    });
    // A bucket that exits (stopped, or gone already: `noproc`) ends the stream.
    c.bucket_monitor = b.monitor([link, post_if_first](const exit_reason&) {
        std::unique_lock lock(link->mutex);
        link->ended = true;
        post_if_first(link, lock);
    });
    if (c.waiting.empty()) {
        attach(c, link);
    } else {
        // Replies to earlier requests are still to come: the events wait in the link (and
        // no request runs) until those are sent.
        const auto d = defer(c, true);
        d->stream = link;
        d->done = true;
    }
}

} // namespace detail

inline void session::subscribe(registry::bucket_type& b) {
    loop_.subscribe(conn_, b);
}

inline event_stream session::channel(std::function<void()> on_close) {
    return event_stream(loop_.open_channel(conn_, std::move(on_close)));
}

inline void session::close_after_reply() noexcept {
    conn_.begin_close();
}

inline deferred_reply session::defer() {
    return deferred_reply(loop_.defer(conn_, false));
}

inline deferred_reply session::defer_stream() {
    return deferred_reply(loop_.defer(conn_, true));
}

inline bool session::run_after_replies() {
    if (conn_.waiting.empty() || conn_.state != detail::connection::phase::open) {
        return false;
    }
    conn_.again.assign(line_);
    conn_.waits_again = true;
    return true;
}

inline std::uint64_t session::id() const noexcept {
    return conn_.id;
}

inline std::uint64_t& session::context() noexcept {
    return conn_.context;
}

inline std::string& session::storage() noexcept {
    return conn_.storage;
}

inline void session::mark_peer() noexcept {
    if (!conn_.peer_node) {
        conn_.peer_node = true;
        // What a node relays is a client's line with a header in front (command.hpp).
        conn_.max_line = peer_line_limit(conn_.max_line);
        conn_.framer.set_max_line(conn_.max_line);
    }
}

namespace detail {

inline std::shared_ptr<subscriber_link> event_loop::open_channel(connection& c,
                                                                 std::function<void()> on_close) {
    if (c.channel == nullptr) {
        // Attached at once: what is pushed goes to the output when the loop takes it (after
        // the reply the handler is writing now), through the same mail as a subscriber's.
        auto link = std::make_shared<subscriber_link>();
        link->on_detach = std::move(on_close);
        link->core = core_.weak_from_this();
        link->loop = this;
        link->cap = core_.options.max_subscriber_output;
        link->conn = &c;
        link->unsent.store(c.unsent(), std::memory_order_relaxed);
        c.channel = std::move(link);
    }
    return c.channel;
}

inline std::shared_ptr<deferred_state> event_loop::defer(connection& c, bool barrier) {
    auto d = std::make_shared<deferred_state>();
    d->core = core_.weak_from_this();
    d->loop = this;
    d->conn = &c;
    d->barrier = barrier;
    c.waiting.push_back(d);
    return d;
}

/// Hands a completed deferred reply to its loop; when the server is gone or stopped, a
/// stream it carries is told at once.
inline void post_completed(std::shared_ptr<deferred_state> d) {
    std::shared_ptr<subscriber_link> stream = d->stream;
    if (const auto core = d->core.lock()) {
        event_loop* const loop = d->loop;
        if (loop->post({nullptr, std::move(d)})) {
            return;
        }
    }
    detach(stream);
}

} // namespace detail

inline deferred_reply& deferred_reply::operator=(deferred_reply&& other) noexcept {
    if (this != &other) {
        deferred_reply dropped(std::move(*this));
        state_ = std::move(other.state_);
    }
    return *this;
}

inline deferred_reply::~deferred_reply() {
    if (state_ != nullptr) {
        state_->dropped = true;
        try {
            detail::post_completed(std::move(state_));
        } catch (...) {
            // Out of memory while posting: the connection keeps waiting until it closes.
        }
    }
}

inline void deferred_reply::complete(std::string bytes, bool then_close) {
    if (state_ == nullptr) {
        return;
    }
    state_->reply = std::move(bytes);
    state_->then_close = then_close;
    detail::post_completed(std::move(state_));
}

inline event_stream deferred_reply::stream(std::function<void()> on_close) {
    if (state_ == nullptr) {
        return {};
    }
    auto link = std::make_shared<detail::subscriber_link>();
    link->on_detach = std::move(on_close);
    link->core = state_->core;
    link->loop = state_->loop;
    if (const auto core = state_->core.lock()) {
        link->cap = core->options.max_subscriber_output; // also before it is attached
        link->budget = core->budget;
        core->budget->enlist(*link);
    }
    if (!state_->barrier) {
        // Not a `defer_stream` reply: replies held behind it would be lost in a stream.
        // It completes as an empty reply, and the stream is gone from the start.
        complete({});
        detail::detach(link);
        return event_stream(std::move(link));
    }
    state_->stream = link;
    detail::post_completed(std::move(state_));
    return event_stream(std::move(link));
}

inline bool event_stream::push(std::string_view bytes) {
    if (link_ == nullptr) {
        return false;
    }
    const auto core = link_->core.lock();
    if (core == nullptr) {
        return false;
    }
    std::unique_lock lock(link_->mutex);
    if (link_->detached || link_->overflowed || link_->ended) {
        return false;
    }
    const std::size_t before = link_->pending.size();
    link_->pending.append(bytes);
    link_->appended(before);
    if (!link_->queued) {
        link_->queued = true;
        lock.unlock();
        link_->loop->post({link_, nullptr});
    }
    return true;
}

inline void event_stream::end() {
    if (link_ == nullptr) {
        return;
    }
    const auto core = link_->core.lock();
    if (core == nullptr) {
        return;
    }
    std::unique_lock lock(link_->mutex);
    link_->ended = true;
    if (!link_->queued) {
        link_->queued = true;
        lock.unlock();
        link_->loop->post({link_, nullptr});
    }
}

inline reply_outcome run_in_session(const command& cmd, registry& reg, std::string& out,
                                    session& s) {
    const reply_outcome outcome =
        run(cmd, reg, out, [&](registry::bucket_type& b) { s.subscribe(b); });
    if (closes_connection(outcome)) {
        s.close_after_reply(); // `ERROR internal`: a CREATE the registry refuses while it stops
    }
    return outcome;
}

inline request_handler registry_handler(std::shared_ptr<registry> reg) {
    return [reg = std::move(reg)](const command& cmd, std::string& out, session& s) {
        run_in_session(cmd, *reg, out, s);
    };
}

inline result<std::shared_ptr<server>> server::start(std::shared_ptr<registry> reg,
                                                     server_options options) {
    return start(registry_handler(std::move(reg)), std::move(options));
}

inline result<std::shared_ptr<server>> server::start(request_handler handler,
                                                     server_options options) {
    std::shared_ptr<server> s(new server());
    std::shared_ptr<detail::server_core> core;
    try {
        core = std::make_shared<detail::server_core>();
        core->handler = std::move(handler);
        core->signal = s->signal();
        detail::socket_address where;
        if (!detail::socket_address::parse(options.bind, options.port, where)) {
            throw std::system_error(EINVAL, std::generic_category(),
                                    "not an IP address: '" + options.bind + "'");
        }
        core->listener = detail::listen_on(where, SOMAXCONN);
        core->address = detail::local_address(core->listener.get());
        core->address_text = core->address.to_string();
        core->spare.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        if (options.threads == 0) {
            options.threads = std::max(1U, std::thread::hardware_concurrency());
        }
        options.max_deferred = std::max<std::size_t>(1, options.max_deferred);
        core->budget->cap = options.max_subscriber_memory;
        core->options = std::move(options);
        for (unsigned i = 0; i < core->options.threads; ++i) {
            core->loops.push_back(
                std::make_unique<detail::event_loop>(*core, core->options.poller));
        }
        for (const auto& loop : core->loops) {
            core->loops_running.fetch_add(1, std::memory_order_relaxed);
            core->threads.start([core, l = loop.get()] {
                try {
                    l->run();
                } catch (...) {
                    core->request_stop(exit_reason::from_exception(std::current_exception()));
                }
                core->loop_finished();
            });
        }
        s->core_ = std::move(core);
    } catch (...) {
        const auto reason = exit_reason::from_exception(std::current_exception());
        if (core != nullptr && core->threads.started()) {
            core->request_stop(reason); // some loops started: they record the exit
            s->core_ = std::move(core);
        } else {
            s->notify_exit(reason);
        }
        return error{errc::start_failed, {}, reason};
    }
    return s;
}

inline server::~server() {
    if (core_ != nullptr) {
        stop_if_alive();
        core_->threads.release();
    }
}

inline std::uint16_t server::port() const noexcept {
    return core_->address.port();
}

inline std::string server::address() const {
    return core_->address.to_string();
}

inline server_stats server::stats() const noexcept {
    std::size_t requests = 0;
    for (const auto& loop : core_->loops) {
        requests += loop->requests();
    }
    return {core_->connections.load(std::memory_order_relaxed),
            core_->accepted.load(std::memory_order_relaxed),
            core_->rejected.load(std::memory_order_relaxed),
            requests,
            core_->out_of_descriptors.load(std::memory_order_relaxed),
            core_->idle_closed.load(std::memory_order_relaxed),
            core_->budget->total.load(std::memory_order_relaxed),
            core_->budget->cut.load(std::memory_order_relaxed)};
}

inline server_snapshot server::snapshot() const {
    server_snapshot s;
    const detail::server_core& core = *core_;
    s.address = core.address_text;
    s.connections = core.connections.load(std::memory_order_relaxed);
    s.max_connections = core.options.max_connections;
    s.accepted = core.accepted.load(std::memory_order_relaxed);
    s.rejected = core.rejected.load(std::memory_order_relaxed);
    s.idle_closed = core.idle_closed.load(std::memory_order_relaxed);
    s.subscribers = core.subscribers.load(std::memory_order_relaxed);
    s.subscriber_memory = core.budget->total.load(std::memory_order_relaxed);
    s.subscribers_cut = core.budget->cut.load(std::memory_order_relaxed);
    std::array<std::uint64_t, server_error_reasons.size()> errors{};
    std::uint64_t latency_ns = 0;
    for (const auto& loop : core.loops) {
        const auto v = loop->counters().read();
        s.bytes_in += static_cast<std::size_t>(v.bytes_in);
        s.bytes_out += static_cast<std::size_t>(v.bytes_out);
        for (std::size_t i = 0; i < v.commands.size(); ++i) {
            s.commands[i] += static_cast<std::size_t>(v.commands[i]);
        }
        for (std::size_t i = 0; i < v.errors.size(); ++i) {
            errors[i] += v.errors[i];
        }
        for (std::size_t i = 0; i < v.latency.size(); ++i) {
            s.latency[i] += static_cast<std::size_t>(v.latency[i]);
            s.latency_count += static_cast<std::size_t>(v.latency[i]);
        }
        latency_ns += v.latency_sum_ns;
    }
    s.latency_sum = static_cast<double>(latency_ns) / 1e9;
    for (std::size_t i = 0; i < errors.size(); ++i) {
        if (errors[i] != 0) {
            s.errors.emplace_back(std::string(server_error_reasons[i]),
                                  static_cast<std::size_t>(errors[i]));
        }
    }
    std::stable_sort(s.errors.begin(), s.errors.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    return s;
}

inline exit_reason server::stop(exit_reason reason, timeout wait) {
    core_->request_stop(reason);
    if (core_->threads.is_current()) {
        return reason; // a handler stopping its own server: the exit comes after it
    }
    if (!wait_recorded(wait) && notify_exit(exit_reason::killed())) {
        core_->threads.abandon(); // a handler that does not return
    }
    return *exited();
}

} // namespace v0
} // namespace otpkv
