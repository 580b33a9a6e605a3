// SPDX-License-Identifier: MIT
/// @file
/// Replication (design.md, "Replication"; issue 16): chain replication per route range
/// (van Renesse and Schneider, OSDI 2004), with membership decided by an outside authority
/// (`view_service`, membership.hpp; etcd in kv_server), never by otpkv itself.
///
/// **The chain.** A route entry that names several nodes is a replicated range; its chain
/// (head to tail, at most `replicas` long) and epoch live in the authority. CREATE, PUT
/// and DELETE are run by the head, which gives each a sequence number and sends it down
/// the chain as `REPL <range> <epoch> <seq> <request>`; each node applies it in sequence
/// order and passes it on; the tail applies it and answers `OK`, and the `OK` travels back
/// up: the client gets the head's reply only when the tail has applied the write. GET is
/// answered by the tail. SUBSCRIBE is relayed to the tail, so a subscriber never sees a
/// write that could still be lost. Any node takes any request and forwards it (router.hpp)
/// to the head or the tail its picture of the chain names.
///
/// **Fencing.** Every replication message carries its epoch; a node answers a message of
/// another epoch than its own with `ERROR range unavailable: epoch <n>`, so a frozen head
/// that wakes up can never get a write acknowledged (its successors have moved on). A tail
/// answers reads itself only while its lease surely holds (`view_service::lease_deadline`,
/// checked *after* the read): a tail removed from the chain has let its lease lapse first,
/// since only an expired node is removed. When it cannot be sure (etcd out of reach), the
/// read goes down the chain from the head like a write, fenced the same way
/// (`REPL <range> <epoch> 0 GET ...`, answered by the tail in order after every write the
/// head had sent).
///
/// **Sequence and repair.** Each node keeps the last sequence number it applied and the
/// messages it sent down but has not had acknowledged. A message out of order is refused
/// (`ERROR range unavailable: gap <last>`) and one already applied is acknowledged again
/// without being applied, so when a node's successor changes (a middle node died), the node
/// asks its new successor for its last number (`REPL-LAST <range> <epoch>`) and sends it
/// everything after that from its list; until then the range takes no writes there. Every
/// node's state is thus a prefix of its predecessor's, and the new tail after any removal
/// holds every acknowledged write.
///
/// **Reconfiguration.** Each node watches the authority. When a chain holds a node whose
/// lease is gone, its first surviving member writes the chain without it, epoch + 1, by a
/// compare-and-swap on the record's version (a conflict means someone else did: it reads
/// again). A live node of the range's entry that is not in its chain (a new node, one that
/// restarted, or one that was removed while frozen, which first drops what it held of the
/// range) asks the tail to take it (`REPL-JOIN <range> <epoch>`); the tail resets it
/// (`REPL-RESET <range> <epoch> <seq>`), forwards it every write from then on, copies it
/// every bucket and key of the range (`REPL-COPY ...`, each under the range's lock so copies
/// and writes reach it in the order the tail's state changed), waits until all of it is
/// acknowledged, and writes the chain with the new node as its tail, epoch + 1. The first
/// chain of a range is its first live node alone (epoch 1); the others join it. A chain
/// whose every node died is started again, empty, by the first live node of its entry, and
/// that loss is logged: persistence is another issue.
///
/// **Line length.** A replication message is the request a client sent (rebuilt by
/// `request_line`, never longer) behind a header of at most `detail::max_repl_header` bytes
/// (`REPL <range> <epoch> <seq> `; `REPL-COPY <range> <epoch> ` is shorter), and every peer
/// request has its `<id> ` in front: a client's line of `max_line` bytes would be refused by
/// a successor with the same `max_line`, its peer connection closed and the message sent
/// again at each repair, so no write of the range would go through again. A peer connection
/// takes `peer_line_margin` bytes more than `max_line` (command.hpp, "Between nodes"; the
/// server grants it only to connections that proved the cookie), and a compile-time check
/// here keeps both headers within that margin. The nodes of a range need the same
/// `max_line`: a successor with a smaller one refuses what its head took.
///
/// **Stated consistency.** Per bucket, acknowledged operations are linearizable while
/// nodes fail by stopping (crash, kill, freeze), at most R-1 of a range's R nodes fail at
/// once, and the authority is available. An `ERROR range unavailable` or
/// `ERROR node ... unavailable` reply to a write means *unknown*: it may have taken effect
/// (at every node of the chain, later) or not. While the authority cannot be reached the
/// chains keep their last configuration: writes go on while every node of a chain is up,
/// and a chain that loses a node takes no writes until the authority is back.
///
/// **Unreachable nodes.** A node whose successor does not answer (the connection's request
/// timeout or heartbeat gives up on it) while etcd still counts it alive ends its lease
/// (`view_service::expel`): it is then removed like a dead node, and joins again once it can
/// be reached. A removed tail may go on answering reads until its own lease deadline, so the
/// node that expelled it, the new tail, serves nothing until a lease time has passed.
///
/// Events (`replication_options::log`): `chain_changed` (info: range, epoch, chain),
/// `node_expelled` (warning: a successor this node could not reach),
/// `chain_reconfigured` (warning: a dead node removed, by this node), `chain_joined` (a node
/// copied and added, by the tail), `chain_join_failed` (warning), `range_lost` (error: every
/// node of a chain died; the range restarts empty), `range_dropped` (this node left a chain
/// and dropped its copy).
///
/// Thread safety: every member may be called from any thread.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/log.hpp>
#include <otpkv/membership.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/route.hpp>
#include <otpkv/task.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// A replicator's settings.
struct replication_options {
    /// This node's name.
    std::string self{};
    /// The chain's length: 0 for as many nodes as each entry names.
    std::size_t replicas = 0;
    /// The membership authority (required).
    std::shared_ptr<view_service> view{};
    /// Where its events go.
    logger log{};
    /// The longest a repair or copy step waits for a node.
    std::chrono::milliseconds step_timeout{2000};
    /// **Tests only**: the head acknowledges a write before the chain has it. Unsafe: it
    /// exists to show that the linearizability checker catches the lost writes it causes.
    bool unsafe_ack_at_head = false;
};

/// One replicated range as this node sees it (for INFO and tests).
struct range_snapshot {
    std::string name{};               ///< `FIRST-LAST`
    std::uint64_t epoch = 0;          ///< the epoch this node follows
    std::vector<std::string> chain{}; ///< head first
    bool ready = false;               ///< a member taking requests
    std::uint64_t applied = 0;        ///< the last sequence number applied here
    std::size_t unacknowledged = 0;   ///< messages sent down, not yet acknowledged
};

namespace detail {
/// Messages sent and not yet answered, and whether any was refused: a copy or a repair
/// waits on it. Copies share the counters.
struct ack_count {
    std::shared_ptr<std::atomic<std::size_t>> outstanding =
        std::make_shared<std::atomic<std::size_t>>(0);
    std::shared_ptr<std::atomic<bool>> failed = std::make_shared<std::atomic<bool>>(false);
    /// Counts one message sent; returns the callback for its reply (`OK`, or a refusal).
    [[nodiscard]] std::function<void(std::optional<std::string>)> sent() const {
        outstanding->fetch_add(1);
        return [o = outstanding, f = failed](std::optional<std::string> reply) {
            if (!reply || *reply != "OK\r\n") {
                f->store(true);
            }
            o->fetch_sub(1);
        };
    }
    /// Waits until at most `left` messages are unanswered, or `limit` passed; true when
    /// that many are and none was refused (`left` 0: every message answered `OK`).
    [[nodiscard]] bool wait(std::chrono::milliseconds limit, std::size_t left = 0) const {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        while (outstanding->load() > left && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return outstanding->load() <= left && !failed->load();
    }
};

} // namespace detail

/// The chains of one node (this file's comment). Made by the router (router.hpp) for the
/// entries of its table that name several nodes.
class replicator {
  public:
    /// Starts the control thread. `ranges` are the replicated entries, in table order
    /// (their index is the one `client_request` takes); `client` reaches every node they
    /// name.
    [[nodiscard]] static std::shared_ptr<replicator> start(std::shared_ptr<registry> reg,
                                                           std::shared_ptr<node_client> client,
                                                           std::vector<route_entry> ranges,
                                                           replication_options options);
    ~replicator() { stop(); }
    replicator(const replicator&) = delete;
    replicator& operator=(const replicator&) = delete;

    /// Stops the control thread (requests are refused from then on).
    void stop();

    /// Hands out a reply's completion, for a reply that comes later (a write waiting for
    /// the chain): a server's `session::defer`, a host program's callback.
    using completion = std::function<void(std::string reply)>;
    using later_fn = std::function<completion()>;

    /// The node range `range`'s requests of `kind` go to: writes to the head, GET and
    /// SUBSCRIBE to the tail (as this node's picture of the chain says; empty when there
    /// is no chain yet).
    [[nodiscard]] std::string target(std::size_t range, command_kind kind) const;
    /// Runs a CREATE, PUT, DELETE or GET for a bucket of range `range` here, as its head
    /// (writes) or tail (GET); a node that is not (or not now) refuses with `ERROR range
    /// unavailable: ...`. The reply goes to `out`, or later through `later()`.
    void local_request(std::size_t range, const command& cmd, std::string& out,
                       const later_fn& later);
    /// A peer's replication line (`REPL...`, the request part after its id): true when it
    /// was one (its reply written or deferred), false when it is something else.
    [[nodiscard]] bool peer_line(std::string_view request, std::string& out, const later_fn& later);

    /// Every range as this node sees it.
    [[nodiscard]] std::vector<range_snapshot> snapshot() const;

  private:
    /// How a refusal for a message out of order starts (after `range unavailable: `).
    static constexpr std::string_view gap_word = "gap ";
    /// The most messages a node keeps sent and unacknowledged; past it, writes are refused.
    static constexpr std::size_t max_unacked = 65536;
    struct pending_message {
        std::uint64_t seq = 0;
        std::string request; // the request line, without the `REPL` header
    };
    struct range_state {
        route_entry entry;
        std::string name;
        std::size_t length = 0; // the chain's target length
        std::uint64_t affinity = 0;
        mutable std::mutex mutex; // everything below; taken for an apply-and-send, never
                                  // across a wait for another node
        std::uint64_t epoch = 0;
        std::vector<std::string> chain;
        int position = -1;                    // in `chain`; -1: not a member
        std::optional<std::size_t> successor; // node_client index
        bool ready = false;                   // a member, repaired: takes requests
        std::uint64_t applied = 0;
        std::deque<pending_message> unacked;
        // Joining, at the tail: the node being copied to (also sent every write).
        std::optional<std::size_t> joiner;
        detail::ack_count joiner_acks;
        // Joining, at the joiner: the epoch it was reset in (0: not joining).
        std::uint64_t joined_epoch = 0;
        // The epoch of a chain this node started itself (alone in it).
        std::uint64_t created_epoch = 0;
        // The chain names this node, but not as a member this node knows it is (a record
        // from before it restarted or lost its lease): it takes itself out.
        bool stranger = false;
        // Not ready before this: this node expelled its successor, the tail, which may still
        // answer reads until its own lease deadline (at most a lease time from then).
        std::chrono::steady_clock::time_point fence_until{};
        // The control thread's: work to do.
        bool needs_repair = false;
        std::uint64_t join_asked_epoch = 0;
        std::chrono::steady_clock::time_point join_asked_at{};
        std::optional<std::string> join_request; // a node asking this tail to take it
    };

    replicator() = default;
    [[nodiscard]] bool in_range(const range_state& r, std::string_view bucket) const noexcept {
        if (bucket.empty()) {
            return false;
        }
        const auto b = static_cast<unsigned char>(bucket.front());
        return b >= r.entry.first && b <= r.entry.last;
    }
    [[nodiscard]] range_state* find_range(std::string_view name) const;
    [[nodiscard]] std::optional<std::size_t> node_index(std::string_view name) const;
    [[nodiscard]] static std::string unavailable(std::string_view why);
    [[nodiscard]] bool lease_holds() const noexcept {
        return options_.view->lease_deadline() > std::chrono::steady_clock::now();
    }
    void head_write(range_state& r, const command& cmd, std::string& out, const later_fn& later);
    void tail_read(range_state& r, const command& cmd, std::string& out, const later_fn& later);
    void chain_read(range_state& r, const command& cmd, std::string& out, const later_fn& later);
    /// Sends `REPL` for `m` to `to` (under `r.mutex`); `done` gets the reply.
    void send_down(range_state& r, std::size_t to, const pending_message& m,
                   std::function<void(std::optional<std::string>)> done, command_kind kind);
    void acknowledge(range_state& r, std::uint64_t seq);
    void on_gap(range_state& r);
    void receive(range_state& r, std::uint64_t epoch, std::uint64_t seq, std::string_view request,
                 std::string& out, const later_fn& later);
    void receive_copy(range_state& r, std::uint64_t epoch, std::string_view request,
                      std::string& out);
    void receive_reset(range_state& r, std::uint64_t epoch, std::uint64_t seq, std::string& out);
    void drop_range(range_state& r); // under r.mutex
    void control_loop(const std::stop_token& stop);
    void adopt(range_state& r, const membership_view& v, bool new_incarnation);
    void reconfigure(range_state& r, const membership_view& v);
    void repair(range_state& r);
    void expel_unreachable(range_state& r, const membership_view& v);
    void copy_to_joiner(range_state& r, const std::string& joiner, const membership_view& v);
    void log_event_(log_level level, std::string what, const range_state& r,
                    std::vector<std::pair<std::string, std::string>> fields,
                    std::string reason = {}) const;
    [[nodiscard]] std::size_t chain_length(const range_state& r) const noexcept { return r.length; }
    void wake() {
        {
            const std::lock_guard lock(wake_mutex_);
            woken_ = true;
        }
        wake_cv_.notify_all();
    }

    replication_options options_;
    std::shared_ptr<registry> registry_;
    std::shared_ptr<node_client> client_;
    std::vector<std::unique_ptr<range_state>> ranges_;
    std::shared_ptr<task> control_;
    std::atomic<bool> stopped_{false};
    std::mutex wake_mutex_;
    std::condition_variable wake_cv_;
    bool woken_ = false;
    std::uint64_t incarnation_seen_ = 0; // the control thread's
    // When this node last expelled each node (the control thread's): once per step timeout.
    std::map<std::string, std::chrono::steady_clock::time_point, std::less<>> expelled_at_;
};

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {
inline constexpr std::string_view repl_verb = "REPL";
inline constexpr std::string_view repl_last_verb = "REPL-LAST";
inline constexpr std::string_view repl_join_verb = "REPL-JOIN";
inline constexpr std::string_view repl_reset_verb = "REPL-RESET";
inline constexpr std::string_view repl_copy_verb = "REPL-COPY";

/// The longest header a replication message puts in front of the request it carries:
/// `REPL <range> <epoch> <seq> `, a range being at most `\xff-\xff` (9 bytes,
/// `route_range_text`) and an epoch and a sequence number at most 20 digits each.
inline constexpr std::size_t max_repl_header = repl_verb.size() + 1 + 9 + 1 + 20 + 1 + 20 + 1;
static_assert(repl_copy_verb.size() + 1 + 9 + 1 + 20 + 1 <= max_repl_header);
// A peer request's id and this header fit in the room a peer connection has beyond max_line.
static_assert(max_peer_id_prefix + max_repl_header <= peer_line_margin);

/// A decimal number of at most 19 digits, without sign or leading zero (0 itself allowed).
[[nodiscard]] inline std::optional<std::uint64_t> parse_decimal(std::string_view t) noexcept {
    if (t.empty() || t.size() > 19 || (t.size() > 1 && t.front() == '0')) {
        return std::nullopt;
    }
    std::uint64_t n = 0;
    for (const char c : t) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return n;
}

/// Splits the first `n` space-separated tokens off `line`; the rest (after one space) in
/// `rest`. False when there are fewer.
template <std::size_t N>
[[nodiscard]] bool take_tokens(std::string_view line, std::array<std::string_view, N>& tokens,
                               std::string_view& rest) noexcept {
    for (std::size_t i = 0; i < N; ++i) {
        const std::size_t space = line.find(' ');
        tokens[i] = line.substr(0, space);
        if (tokens[i].empty()) {
            return false;
        }
        line = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
    }
    rest = line;
    return true;
}

} // namespace detail

inline std::shared_ptr<replicator> replicator::start(std::shared_ptr<registry> reg,
                                                     std::shared_ptr<node_client> client,
                                                     std::vector<route_entry> ranges,
                                                     replication_options options) {
    std::shared_ptr<replicator> r(new replicator());
    r->registry_ = std::move(reg);
    r->client_ = std::move(client);
    for (route_entry& e : ranges) {
        auto state = std::make_unique<range_state>();
        state->name = to_string(route_entry{e.first, e.last, {}, {}, 0, {}});
        state->name = state->name.substr(0, state->name.find('='));
        const std::size_t named = 1 + e.replicas.size();
        state->length = options.replicas == 0 ? named : std::min(options.replicas, named);
        state->affinity = 0x7265706c00000000ULL + e.first; // one connection per range
        state->entry = std::move(e);
        r->ranges_.push_back(std::move(state));
    }
    r->options_ = std::move(options);
    r->control_ = task::start([raw = r.get()](std::stop_token stop) { raw->control_loop(stop); });
    return r;
}

inline void replicator::stop() {
    if (stopped_.exchange(true)) {
        return;
    }
    wake();
    if (control_ != nullptr) {
        control_->stop();
    }
    for (auto& r : ranges_) {
        const std::lock_guard lock(r->mutex);
        r->ready = false;
    }
}

inline replicator::range_state* replicator::find_range(std::string_view name) const {
    for (const auto& r : ranges_) {
        if (r->name == name) {
            return r.get();
        }
    }
    return nullptr;
}

inline std::optional<std::size_t> replicator::node_index(std::string_view name) const {
    return client_->find(name);
}

inline std::string replicator::unavailable(std::string_view why) {
    return format_reply(reply::error(error_code::range_unavailable, why));
}

inline void replicator::log_event_(log_level level, std::string what, const range_state& r,
                                   std::vector<std::pair<std::string, std::string>> fields,
                                   std::string reason) const {
    if (!options_.log.enabled(level)) {
        return;
    }
    log_event e;
    e.level = level;
    e.what = std::move(what);
    e.reason = std::move(reason);
    e.fields = {{"node", options_.self}, {"range", r.name}};
    e.fields.insert(e.fields.end(), std::make_move_iterator(fields.begin()),
                    std::make_move_iterator(fields.end()));
    options_.log.log(std::move(e));
}

inline std::string replicator::target(std::size_t range, command_kind kind) const {
    const range_state& r = *ranges_.at(range);
    const std::lock_guard lock(r.mutex);
    if (r.chain.empty()) {
        return {};
    }
    const bool write = kind != command_kind::get && kind != command_kind::subscribe;
    return write ? r.chain.front() : r.chain.back();
}

inline std::vector<range_snapshot> replicator::snapshot() const {
    std::vector<range_snapshot> out;
    for (const auto& r : ranges_) {
        const std::lock_guard lock(r->mutex);
        out.push_back({r->name, r->epoch, r->chain, r->ready, r->applied, r->unacked.size()});
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

inline void replicator::local_request(std::size_t range, const command& cmd, std::string& out,
                                      const later_fn& later) {
    range_state& r = *ranges_.at(range);
    if (cmd.kind == command_kind::get) {
        tail_read(r, cmd, out, later);
    } else if (cmd.kind == command_kind::create || cmd.kind == command_kind::put ||
               cmd.kind == command_kind::erase) {
        head_write(r, cmd, out, later);
    } else {
        append_reply(out, reply::unknown_command());
    }
}

inline void replicator::send_down(range_state& r, std::size_t to, const pending_message& m,
                                  std::function<void(std::optional<std::string>)> done,
                                  command_kind kind) {
    std::string line;
    line.reserve(m.request.size() + r.name.size() + 48);
    line.append(detail::repl_verb).append(" ").append(r.name).append(" ");
    line.append(std::to_string(r.epoch)).append(" ").append(std::to_string(m.seq));
    line.append(" ").append(m.request);
    if (!line.ends_with('\n')) {
        line.append("\r\n"); // a request passed on from the line it came in (no terminator)
    }
    client_->request(
        to, std::move(line), kind, r.affinity,
        [done = std::move(done)](std::optional<std::string> reply) { done(std::move(reply)); });
}

inline void replicator::acknowledge(range_state& r, std::uint64_t seq) {
    const std::lock_guard lock(r.mutex);
    while (!r.unacked.empty() && r.unacked.front().seq <= seq) {
        r.unacked.pop_front();
    }
}

inline void replicator::on_gap(range_state& r) {
    {
        const std::lock_guard lock(r.mutex);
        if (r.successor) {
            r.needs_repair = true;
            r.ready = false;
        }
    }
    wake();
}

inline void replicator::head_write(range_state& r, const command& cmd, std::string& out,
                                   const later_fn& later) {
    const std::lock_guard lock(r.mutex);
    if (!r.ready || r.position != 0 || stopped_.load(std::memory_order_relaxed)) {
        append_reply(out, reply::error(error_code::range_unavailable,
                                       r.position == 0 ? "chain of " + r.name + " changing"
                                                       : "not the head of " + r.name));
        return;
    }
    if (r.successor &&
        (client_->status(*r.successor) == node_status::down || r.unacked.size() >= max_unacked)) {
        // Refused before it runs: nothing is applied that the chain cannot take.
        append_reply(out, reply::error(error_code::range_unavailable,
                                       "successor of " + r.name + " not answering"));
        return;
    }
    std::string local;
    run(cmd, *registry_, local);
    const std::uint64_t seq = ++r.applied;
    const std::optional<std::size_t> next = r.successor;
    if (r.joiner) {
        // A node being copied to: sent every write too, its reply only counted.
        send_down(r, *r.joiner, {seq, request_line(cmd)}, r.joiner_acks.sent(), command_kind::put);
    }
    if (!next || options_.unsafe_ack_at_head) {
        if (next) {
            r.unacked.push_back({seq, request_line(cmd)});
            send_down(
                r, *next, r.unacked.back(), [](std::optional<std::string>) {}, command_kind::put);
        }
        out.append(local);
        return;
    }
    r.unacked.push_back({seq, request_line(cmd)});
    send_down(
        r, *next, r.unacked.back(),
        [this, &r, seq, d = later(),
         local = std::move(local)](std::optional<std::string> reply) mutable {
            if (reply && *reply == "OK\r\n") {
                acknowledge(r, seq);
                d(std::move(local));
                return;
            }
            if (reply && reply->find(gap_word) != std::string::npos) {
                on_gap(r);
            }
            d(unavailable("write to " + r.name + " not acknowledged"));
        },
        command_kind::put);
}

inline void replicator::tail_read(range_state& r, const command& cmd, std::string& out,
                                  const later_fn& later) {
    {
        const std::lock_guard lock(r.mutex);
        if (!r.ready || r.chain.empty() || r.chain.back() != options_.self) {
            append_reply(out,
                         reply::error(error_code::range_unavailable, "not the tail of " + r.name));
            return;
        }
    }
    // Read, then check the lease: the read happened while it held. Straight into `out`,
    // taken back when the lease did not surely hold.
    const std::size_t before = out.size();
    run(cmd, *registry_, out);
    if (lease_holds()) {
        return;
    }
    out.resize(before);
    chain_read(r, cmd, out, later);
}

inline void replicator::chain_read(range_state& r, const command& cmd, std::string& out,
                                   const later_fn& later) {
    std::string head;
    {
        const std::lock_guard lock(r.mutex);
        head = r.chain.empty() ? std::string() : r.chain.front();
    }
    if (head.empty()) {
        append_reply(out, reply::error(error_code::range_unavailable, "no chain"));
        return;
    }
    // `REPL <range> <epoch> 0 GET ...` from the head: sent as the head's, in order.
    if (head == options_.self) {
        const std::lock_guard lock(r.mutex);
        if (!r.ready || r.position != 0) {
            append_reply(out, reply::error(error_code::range_unavailable,
                                           "chain of " + r.name + " changing"));
            return;
        }
        if (!r.successor) {
            run(cmd, *registry_, out); // alone in its chain: its state is the range's
            return;
        }
        send_down(
            r, *r.successor, {0, request_line(cmd)},
            [d = later(), name = r.name](std::optional<std::string> reply) {
                d(reply ? std::move(*reply) : unavailable("read of " + name + " not answered"));
            },
            command_kind::get);
        return;
    }
    std::string line = std::string(detail::repl_verb) + " " + r.name + " 0 0 " + request_line(cmd);
    const auto i = node_index(head);
    if (!i) {
        append_reply(out, reply::error(error_code::range_unavailable, "no head"));
        return;
    }
    client_->request(*i, std::move(line), command_kind::get, r.affinity,
                     [d = later(), name = r.name](std::optional<std::string> reply) {
                         d(reply ? std::move(*reply)
                                 : unavailable("read of " + name + " not answered"));
                     });
}

inline bool replicator::peer_line(std::string_view request, std::string& out,
                                  const later_fn& later) {
    // Every line is `<verb> <range> <epoch> <rest>`.
    std::array<std::string_view, 3> head{};
    std::string_view rest;
    if (!request.starts_with(detail::repl_verb) || !detail::take_tokens(request, head, rest)) {
        return false;
    }
    const std::string_view verb = head[0];
    const bool known = verb == detail::repl_verb || verb == detail::repl_last_verb ||
                       verb == detail::repl_join_verb || verb == detail::repl_reset_verb ||
                       verb == detail::repl_copy_verb;
    if (!known) {
        return false;
    }
    range_state* r = find_range(head[1]);
    const auto epoch = detail::parse_decimal(head[2]);
    // REPL and REPL-RESET carry a sequence number next.
    const bool needs_seq = verb == detail::repl_verb || verb == detail::repl_reset_verb;
    std::optional<std::uint64_t> seq;
    if (needs_seq) {
        const std::size_t space = rest.find(' ');
        seq = detail::parse_decimal(rest.substr(0, space));
        rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
    }
    const bool needs_rest = verb != detail::repl_last_verb && verb != detail::repl_reset_verb;
    if (r == nullptr || !epoch || (needs_seq && !seq) || needs_rest == rest.empty()) {
        append_reply(out, reply::error(error_code::range_unavailable, "bad " + std::string(verb)));
        return true;
    }
    if (verb == detail::repl_verb) {
        if (*epoch == 0) { // a chain read from a node that is not the head
            const command cmd = parse(rest);
            if (cmd.kind != command_kind::get) {
                append_reply(out, reply::error(error_code::range_unavailable, "bad REPL"));
                return true;
            }
            chain_read(*r, cmd, out, later);
            return true;
        }
        receive(*r, *epoch, *seq, rest, out, later);
    } else if (verb == detail::repl_last_verb) {
        const std::lock_guard lock(r->mutex);
        if (r->epoch != *epoch) {
            append_reply(out, reply::error(error_code::range_unavailable,
                                           "epoch " + std::to_string(r->epoch)));
            return true;
        }
        append_reply(out, reply::found(std::to_string(r->applied)));
    } else if (verb == detail::repl_join_verb) {
        if (!is_node_name(rest)) {
            append_reply(out, reply::error(error_code::range_unavailable, "bad REPL-JOIN"));
            return true;
        }
        {
            const std::lock_guard lock(r->mutex);
            if (r->epoch != *epoch || r->chain.empty() || r->chain.back() != options_.self) {
                append_reply(
                    out, reply::error(error_code::range_unavailable, "not the tail of " + r->name));
                return true;
            }
            r->join_request = std::string(rest);
        }
        wake();
        append_reply(out, reply::ok());
    } else if (verb == detail::repl_reset_verb) {
        receive_reset(*r, *epoch, *seq, out);
    } else {
        receive_copy(*r, *epoch, rest, out);
    }
    return true;
}

inline void replicator::receive(range_state& r, std::uint64_t epoch, std::uint64_t seq,
                                std::string_view request, std::string& out, const later_fn& later) {
    const std::lock_guard lock(r.mutex);
    const bool joining = r.position < 0 && r.joined_epoch != 0 && r.joined_epoch == epoch;
    if (!joining && (r.epoch != epoch || r.position <= 0)) {
        append_reply(
            out, reply::error(error_code::range_unavailable, "epoch " + std::to_string(r.epoch)));
        return;
    }
    const command cmd = parse(request);
    if (seq == 0) {
        // A chain read: answered by the tail after every write sent before it.
        if (cmd.kind != command_kind::get) {
            append_reply(out, reply::error(error_code::range_unavailable, "bad REPL"));
            return;
        }
        if (!r.successor) {
            run(cmd, *registry_, out);
            return;
        }
        send_down(
            r, *r.successor, {0, std::string(request)},
            [d = later(), name = r.name](std::optional<std::string> reply) {
                d(reply ? std::move(*reply) : unavailable("read of " + name + " not answered"));
            },
            command_kind::get);
        return;
    }
    if (!joining && !r.ready) {
        append_reply(
            out, reply::error(error_code::range_unavailable, "chain of " + r.name + " changing"));
        return;
    }
    if (seq <= r.applied) {
        append_reply(out, reply::ok()); // applied already (sent again after a repair)
        return;
    }
    if (seq != r.applied + 1) {
        append_reply(out, reply::error(error_code::range_unavailable,
                                       std::string(gap_word) + std::to_string(r.applied)));
        return;
    }
    if (cmd.kind != command_kind::create && cmd.kind != command_kind::put &&
        cmd.kind != command_kind::erase) {
        append_reply(out, reply::error(error_code::range_unavailable, "bad REPL"));
        return;
    }
    std::string ignored;
    run(cmd, *registry_, ignored);
    r.applied = seq;
    if (r.joiner) {
        send_down(r, *r.joiner, {seq, std::string(request)}, r.joiner_acks.sent(),
                  command_kind::put);
    }
    if (joining || !r.successor) {
        append_reply(out, reply::ok());
        return;
    }
    r.unacked.push_back({seq, std::string(request)});
    send_down(
        r, *r.successor, r.unacked.back(),
        [this, &r, seq, d = later()](std::optional<std::string> reply) {
            if (reply && *reply == "OK\r\n") {
                acknowledge(r, seq);
                d(format_reply(reply::ok()));
                return;
            }
            if (reply && reply->find(gap_word) != std::string::npos) {
                on_gap(r); // between this node and its successor: repaired here
            }
            d(unavailable("write to " + r.name + " not acknowledged"));
        },
        command_kind::put);
}

inline void replicator::drop_range(range_state& r) {
    for (const std::string& name : registry_->names()) {
        if (in_range(r, name)) {
            if (const auto b = registry_->lookup(name)) {
                b->stop();
            }
        }
    }
    registry_->sync();
    r.applied = 0;
    r.unacked.clear();
}

inline void replicator::receive_reset(range_state& r, std::uint64_t epoch, std::uint64_t seq,
                                      std::string& out) {
    const std::lock_guard lock(r.mutex);
    if (r.position >= 0 || epoch != r.epoch) {
        append_reply(
            out, reply::error(error_code::range_unavailable, "epoch " + std::to_string(r.epoch)));
        return;
    }
    drop_range(r);
    r.applied = seq;
    r.joined_epoch = epoch;
    append_reply(out, reply::ok());
}

inline void replicator::receive_copy(range_state& r, std::uint64_t epoch, std::string_view request,
                                     std::string& out) {
    const std::lock_guard lock(r.mutex);
    if (r.position >= 0 || r.joined_epoch != epoch) {
        append_reply(
            out, reply::error(error_code::range_unavailable, "epoch " + std::to_string(r.epoch)));
        return;
    }
    const command cmd = parse(request);
    if (cmd.kind != command_kind::create && cmd.kind != command_kind::put &&
        cmd.kind != command_kind::erase) {
        append_reply(out, reply::error(error_code::range_unavailable, "bad REPL-COPY"));
        return;
    }
    std::string ignored;
    run(cmd, *registry_, ignored);
    append_reply(out, reply::ok());
}

// ---------------------------------------------------------------------------------------
// The control thread
// ---------------------------------------------------------------------------------------

inline void replicator::control_loop(const std::stop_token& stop) {
    std::int64_t seen = -1;
    bool was_connected = false;
    while (!stop.stop_requested() && !stopped_.load()) {
        const membership_view v = options_.view->wait_for_change(
            seen, was_connected, std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
        {
            std::unique_lock lock(wake_mutex_);
            woken_ = false;
        }
        if (stop.stop_requested()) {
            break;
        }
        seen = v.revision;
        was_connected = v.connected;
        const std::uint64_t incarnation = options_.view->incarnation();
        if (incarnation == 0 || v.revision == 0) {
            continue; // not registered yet
        }
        const bool new_incarnation = incarnation != incarnation_seen_;
        incarnation_seen_ = incarnation;
        for (auto& r : ranges_) {
            adopt(*r, v, new_incarnation);
            bool repair_now = false;
            {
                const std::lock_guard lock(r->mutex);
                repair_now = r->needs_repair;
            }
            if (repair_now) {
                repair(*r);
            }
            {
                // Past a fence (and not repairing, copying or stopping): ready again.
                const std::lock_guard lock(r->mutex);
                if (!r->ready && r->position >= 0 && !r->needs_repair && !stopped_.load() &&
                    std::chrono::steady_clock::now() >= r->fence_until) {
                    r->ready = true;
                }
            }
            if (v.connected) {
                expel_unreachable(*r, v);
                reconfigure(*r, v);
            }
        }
    }
}

inline void replicator::adopt(range_state& r, const membership_view& v, bool new_incarnation) {
    const auto found = v.chains.find(r.name);
    const std::lock_guard lock(r.mutex);
    if (new_incarnation && (r.position >= 0 || r.joined_epoch != 0)) {
        // Our lease was lost: we may have been removed meanwhile. Start again from nothing.
        drop_range(r);
        r.position = -1;
        r.ready = false;
        r.joined_epoch = 0;
        log_event_(log_level::warning, "range_dropped", r, {}, "this node's lease was lost");
    }
    if (found != v.chains.end() && found->second.epoch <= r.epoch) {
        // No news; but a chain naming us that we are no member of is ours to leave.
        r.stranger =
            r.position < 0 && std::find(found->second.nodes.begin(), found->second.nodes.end(),
                                        options_.self) != found->second.nodes.end();
        return;
    }
    if (found == v.chains.end()) {
        return;
    }
    const chain_record& c = found->second;
    const int was = r.position;
    const std::optional<std::size_t> old_successor = r.successor;
    int at = -1;
    for (std::size_t i = 0; i < c.nodes.size(); ++i) {
        if (c.nodes[i] == options_.self) {
            at = static_cast<int>(i);
        }
    }
    // A member only by staying one, by being copied to and added, or by starting the chain.
    const bool legit = at >= 0 && (was >= 0 || c.epoch == r.created_epoch ||
                                   (r.joined_epoch != 0 && c.epoch == r.joined_epoch + 1));
    r.stranger = at >= 0 && !legit;
    r.epoch = c.epoch;
    r.chain = c.nodes;
    r.position = legit ? at : -1;
    r.successor.reset();
    if (r.position >= 0 && static_cast<std::size_t>(r.position) + 1 < c.nodes.size()) {
        r.successor = node_index(c.nodes[static_cast<std::size_t>(r.position) + 1]);
    }
    if (r.position < 0 && was >= 0) {
        drop_range(r);
        log_event_(log_level::warning, "range_dropped", r, {{"epoch", std::to_string(c.epoch)}},
                   "no longer in the chain");
    }
    if (r.position >= 0) {
        r.joined_epoch = 0;
    }
    r.joiner.reset();
    r.needs_repair = r.position >= 0 && r.successor && r.successor != old_successor;
    r.ready =
        r.position >= 0 && !r.needs_repair && std::chrono::steady_clock::now() >= r.fence_until;
    log_event_(log_level::info, "chain_changed", r,
               {{"epoch", std::to_string(c.epoch)},
                {"chain", chain_text(c).substr(chain_text(c).find("nodes=") + 6)}});
}

inline void replicator::repair(range_state& r) {
    std::size_t to = 0;
    std::uint64_t epoch = 0;
    {
        const std::lock_guard lock(r.mutex);
        if (!r.needs_repair || !r.successor) {
            r.needs_repair = false;
            r.ready = r.position >= 0;
            return;
        }
        to = *r.successor;
        epoch = r.epoch;
        r.ready = false;
    }
    // The new successor's last sequence number.
    const std::string ask =
        std::string(detail::repl_last_verb) + " " + r.name + " " + std::to_string(epoch) + "\r\n";
    command probe;
    probe.kind = command_kind::get;
    const auto reply = detail::wait_for_callback<std::optional<std::string>>([&](auto done) {
        client_->request(to, ask, command_kind::get, r.affinity,
                         [done = std::move(done)](std::optional<std::string> got) mutable {
                             done(std::move(got));
                         });
    });
    const routed_reply read =
        reply ? parse_routed_reply(command_kind::get, *reply) : routed_reply{};
    const auto last =
        read.kind == reply_kind::value ? detail::parse_decimal(read.value) : std::nullopt;
    if (!last) {
        return; // not in our epoch yet, or gone: tried again at the next change or wake
    }
    const detail::ack_count acks;
    {
        const std::lock_guard lock(r.mutex);
        if (r.epoch != epoch) {
            return;
        }
        for (const pending_message& m : r.unacked) {
            if (m.seq > *last) {
                send_down(r, to, m, acks.sent(), command_kind::put);
            }
        }
    }
    const bool all = acks.wait(options_.step_timeout);
    const std::lock_guard lock(r.mutex);
    if (r.epoch == epoch && all) {
        r.needs_repair = false;
        r.ready = true;
        r.unacked.clear(); // all of it is at the successor now
    }
}

// A successor this node cannot reach while etcd still counts it alive (a partition, a node
// too slow to answer): its lease is ended, so it is removed like a dead node, and it joins
// again once it can. If it was the tail, it may go on answering reads until its own lease
// deadline: this node, the tail after it, serves nothing until a lease time has passed.
inline void replicator::expel_unreachable(range_state& r, const membership_view& v) {
    std::optional<std::size_t> next;
    std::string name;
    bool was_tail = false;
    const auto record = v.chains.find(r.name);
    if (!lease_holds() || record == v.chains.end()) {
        return; // only a node that surely is a member judges others (not one just thawed)
    }
    {
        const std::lock_guard lock(r.mutex);
        if (r.position < 0 || !r.successor || r.epoch != record->second.epoch) {
            return;
        }
        const auto at = static_cast<std::size_t>(r.position) + 1;
        next = r.successor;
        name = r.chain[at];
        was_tail = at + 1 == r.chain.size();
    }
    if (client_->status(*next) != node_status::down || v.nodes.count(name) == 0) {
        return;
    }
    const auto now = std::chrono::steady_clock::now();
    auto& last = expelled_at_[name];
    if (last != std::chrono::steady_clock::time_point{} && now - last < options_.step_timeout) {
        return;
    }
    last = now;
    const swap_result done = options_.view->expel(name);
    if (done.what != swap_result::outcome::swapped) {
        return;
    }
    if (was_tail) {
        const std::lock_guard lock(r.mutex);
        r.fence_until = std::chrono::steady_clock::now() + options_.view->lease_time();
        r.ready = false;
    }
    log_event_(log_level::warning, "node_expelled", r, {{"expelled", name}},
               "not reachable from " + options_.self + " while etcd counts it alive");
}

inline void replicator::reconfigure(range_state& r, const membership_view& v) {
    const auto found = v.chains.find(r.name);
    const std::vector<route_node> named = route_nodes(r.entry);
    const auto live = [&](const std::string& n) { return v.nodes.count(n) != 0; };
    std::string first_live; // of the entry, in preferred order
    for (const route_node& n : named) {
        if (live(n.name)) {
            first_live = n.name;
            break;
        }
    }
    if (found == v.chains.end() || found->second.nodes.empty()) {
        // No chain yet (or every node of it died): the first live node starts one.
        if (first_live != options_.self) {
            return;
        }
        const chain_record next{
            found == v.chains.end() ? 1 : found->second.epoch + 1, {options_.self}, 0};
        if (found != v.chains.end()) {
            log_event_(log_level::error, "range_lost", r, {{"epoch", std::to_string(next.epoch)}},
                       "every node of the chain died: the range starts again empty");
        }
        {
            const std::lock_guard lock(r.mutex);
            if (r.position >= 0) {
                return; // ours already: followed at the next change
            }
            drop_range(r);
            r.created_epoch = next.epoch;
        }
        (void)options_.view->swap_chain(r.name, found == v.chains.end() ? 0 : found->second.version,
                                        next);
        return;
    }
    const chain_record& c = found->second;
    bool stranger = false;
    {
        const std::lock_guard lock(r.mutex);
        stranger = r.stranger && r.epoch == c.epoch;
    }
    if (stranger) {
        chain_record next{c.epoch + 1, {}, 0};
        for (const std::string& n : c.nodes) {
            if (n != options_.self) {
                next.nodes.push_back(n);
            }
        }
        const swap_result done = options_.view->swap_chain(r.name, c.version, next);
        if (done.what == swap_result::outcome::swapped) {
            log_event_(log_level::warning, "chain_reconfigured", r,
                       {{"epoch", std::to_string(next.epoch)}, {"removed", options_.self}},
                       "this node restarted or lost its lease: it joins again");
        }
        return;
    }
    std::vector<std::string> survivors;
    for (const std::string& n : c.nodes) {
        if (live(n)) {
            survivors.push_back(n);
        }
    }
    if (survivors.size() != c.nodes.size()) {
        if (!survivors.empty() && survivors.front() == options_.self) {
            const chain_record next{c.epoch + 1, survivors, 0};
            const swap_result done = options_.view->swap_chain(r.name, c.version, next);
            if (done.what == swap_result::outcome::swapped) {
                std::string gone;
                for (const std::string& n : c.nodes) {
                    if (!live(n)) {
                        gone += gone.empty() ? n : "," + n;
                    }
                }
                log_event_(log_level::warning, "chain_reconfigured", r,
                           {{"epoch", std::to_string(next.epoch)}, {"removed", gone}},
                           "lease expired");
            }
        } else if (survivors.empty() && first_live == options_.self) {
            const chain_record next{c.epoch + 1, {}, 0};
            (void)options_.view->swap_chain(r.name, c.version, next);
        }
        return;
    }
    // A tail asked to take a joiner.
    std::optional<std::string> joiner;
    {
        const std::lock_guard lock(r.mutex);
        joiner = std::exchange(r.join_request, std::nullopt);
    }
    if (joiner && c.nodes.back() == options_.self && c.nodes.size() < chain_length(r) &&
        live(*joiner)) {
        const auto to = node_index(*joiner);
        if (to && client_->status(*to) == node_status::down) {
            // Our link to it is not up again yet (it has just restarted): a copy now would
            // fail at once. Kept for a later pass (this loop runs at least every 100 ms).
            const std::lock_guard lock(r.mutex);
            if (!r.join_request) {
                r.join_request = std::move(joiner);
            }
            return;
        }
        copy_to_joiner(r, *joiner, v);
        return;
    }
    // Not in the chain, live, wanted: ask the tail to take us (once per epoch).
    const bool member = std::find(c.nodes.begin(), c.nodes.end(), options_.self) != c.nodes.end();
    const bool named_here = std::any_of(
        named.begin(), named.end(), [&](const route_node& n) { return n.name == options_.self; });
    std::uint64_t asked = 0;
    {
        const std::lock_guard lock(r.mutex);
        asked = r.join_asked_epoch;
        // Asked again when nothing came of it for a while (the tail's copy failed). A tail
        // still copying takes the new request only after the copy (then the chain is full).
        if (asked == c.epoch &&
            std::chrono::steady_clock::now() - r.join_asked_at > options_.step_timeout) {
            asked = 0;
        }
        if (!member && named_here && c.nodes.size() < chain_length(r) && asked != c.epoch) {
            r.join_asked_epoch = c.epoch;
            r.join_asked_at = std::chrono::steady_clock::now();
        }
    }
    if (!member && named_here && c.nodes.size() < chain_length(r) && asked != c.epoch) {
        const auto tail_index = node_index(c.nodes.back());
        if (tail_index) {
            const std::string line = std::string(detail::repl_join_verb) + " " + r.name + " " +
                                     std::to_string(c.epoch) + " " + options_.self + "\r\n";
            client_->request(*tail_index, line, command_kind::put, r.affinity,
                             [&r](std::optional<std::string> reply) {
                                 if (!reply || *reply != "OK\r\n") {
                                     const std::lock_guard lock(r.mutex);
                                     r.join_asked_epoch = 0; // ask again
                                 }
                             });
        }
    }
}

inline void replicator::copy_to_joiner(range_state& r, const std::string& joiner,
                                       const membership_view& v) {
    const auto to = node_index(joiner);
    const auto found = v.chains.find(r.name);
    if (!to || found == v.chains.end()) {
        return;
    }
    const chain_record c = found->second;
    const detail::ack_count acks;
    const auto send_raw = [&](std::string line) {
        client_->request(*to, std::move(line), command_kind::put, r.affinity, acks.sent());
    };
    {
        const std::lock_guard lock(r.mutex);
        if (!r.ready || r.epoch != c.epoch || r.chain.empty() || r.chain.back() != options_.self) {
            return;
        }
        send_raw(std::string(detail::repl_reset_verb) + " " + r.name + " " +
                 std::to_string(r.epoch) + " " + std::to_string(r.applied) + "\r\n");
        r.joiner = *to;
        r.joiner_acks = acks;
    }
    const std::string copy_head =
        std::string(detail::repl_copy_verb) + " " + r.name + " " + std::to_string(c.epoch) + " ";
    const auto still = [&] {
        return !acks.failed->load() && !stopped_.load() && r.epoch == c.epoch && r.joiner == to;
    };
    bool ok = true;
    for (const std::string& bucket : registry_->names()) {
        if (!in_range(r, bucket)) {
            continue;
        }
        std::vector<std::string> keys;
        {
            const std::lock_guard lock(r.mutex);
            if (!(ok = still())) {
                break;
            }
            send_raw(copy_head + request_line({command_kind::create, bucket, {}, {}}));
            registry_->with(bucket, [&](auto& b) {
                b.for_each([&](const auto& key, const auto&) { keys.emplace_back(key); });
            });
        }
        for (std::size_t at = 0; at < keys.size() && ok;) {
            const std::lock_guard lock(r.mutex);
            if (!(ok = still())) {
                break;
            }
            for (const std::size_t end = std::min(keys.size(), at + 256); at < end; ++at) {
                std::optional<std::string> value;
                registry_->with(bucket, [&](auto& b) {
                    if (auto got = b.get(keys[at])) {
                        value = std::string(*got);
                    }
                });
                send_raw(copy_head +
                         (value ? request_line({command_kind::put, bucket, keys[at], *value})
                                : request_line({command_kind::erase, bucket, keys[at], {}})));
            }
        }
        // Keep the number in flight bounded (a refusal is seen by `still` next).
        (void)acks.wait(options_.step_timeout, 4096);
    }
    // Everything acknowledged, writes held meanwhile, then the chain grows to it.
    {
        const std::lock_guard lock(r.mutex);
        ok = ok && still();
        r.ready = false;
    }
    ok = ok && acks.wait(options_.step_timeout);
    swap_result done;
    if (ok) {
        chain_record next{c.epoch + 1, c.nodes, 0};
        next.nodes.push_back(joiner);
        done = options_.view->swap_chain(r.name, c.version, next);
        if (done.what == swap_result::outcome::swapped) {
            const std::lock_guard lock(r.mutex);
            // Followed at once: the joiner is our successor from now on.
            r.epoch = next.epoch;
            r.chain = next.nodes;
            r.successor = to;
            r.joiner.reset();
            r.ready = true;
            log_event_(log_level::info, "chain_joined", r,
                       {{"epoch", std::to_string(next.epoch)}, {"joined", joiner}});
            return;
        }
    }
    const std::lock_guard lock(r.mutex);
    r.joiner.reset();
    r.ready = r.epoch == c.epoch && r.position >= 0;
    log_event_(log_level::warning, "chain_join_failed", r, {{"joiner", joiner}},
               ok ? done.error : "the copy was not acknowledged");
}

} // namespace v0
} // namespace otpkv
