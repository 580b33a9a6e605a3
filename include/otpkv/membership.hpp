// SPDX-License-Identifier: MIT
/// @file
/// Membership (design.md, "Replication"): who is alive and what each range's chain is, as
/// an authority outside otpkv decides it. otpkv never decides membership by itself (no
/// home-made consensus): a `view_service` is its window on the authority. `etcd_view`
/// (etcd.hpp) is the one otpkv ships; a host program may plug another, such as a test's
/// in-memory authority, by implementing this interface.
///
/// What an authority must offer:
/// - **Liveness.** Each node holds a lease and renews it; a node whose lease expires
///   (it died, froze, or lost its way to the authority) disappears from `nodes`. A node
///   knows until when its own lease certainly holds (`lease_deadline`): it was renewed at
///   or after the moment the renewal was *sent*, so the authority cannot expire it before
///   `send time + TTL` (clocks running at the same rate). The chain layer answers reads
///   locally only before that deadline.
/// - **Chains.** One record per range: an epoch and the nodes head to tail
///   (`chain_record`), replaced only by `swap_chain`, a compare-and-swap on the record's
///   version that succeeds only while the caller still holds its lease. Never a lock.
/// - **Watching.** `view` is the latest picture; `wait_for_change` blocks until a newer one
///   (or a deadline), so a follower learns of a new chain within the authority's watch
///   latency.
///
/// Thread safety: every member of a `view_service` may be called from any thread.
#pragma once

#include <otpkv/route.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// One range's chain as the authority holds it.
struct chain_record {
    /// Raised by one at every change; every replication message carries it (fencing).
    std::uint64_t epoch = 0;
    /// The chain, head first, tail last (node names). Empty: the range has no live copy.
    std::vector<std::string> nodes{};
    /// The authority's version of the record, for `swap_chain` (etcd: its mod_revision);
    /// 0 when there is no record yet.
    std::int64_t version = 0;

    /// Equal when every field is.
    friend bool operator==(const chain_record&, const chain_record&) = default;
};

/// What the authority held at one moment.
struct membership_view {
    /// Grows with every change the authority made (etcd: its revision); 0 before the first
    /// answer.
    std::int64_t revision = 0;
    /// The nodes whose leases hold now: name, and the address they gave (`HOST:PORT`).
    std::map<std::string, std::string, std::less<>> nodes{};
    /// The chains, by range (the route entry's `FIRST-LAST` text).
    std::map<std::string, chain_record, std::less<>> chains{};
    /// False while the authority cannot be reached (this picture is the last one known).
    bool connected = false;
};

/// What `swap_chain` did.
struct swap_result {
    enum class outcome : std::uint8_t {
        swapped,    ///< the record is now the one given; `version` is its new version
        conflict,   ///< the record had changed (or this node's lease was gone): nothing done
        unavailable ///< the authority did not answer: unknown whether it was done
    };
    outcome what = outcome::unavailable;
    std::int64_t version = 0;
    /// Not swapped: why, for the log.
    std::string error{};
};

/// The window on a membership authority (this file's comment).
class view_service {
  public:
    using clock = std::chrono::steady_clock;
    virtual ~view_service() = default;

    /// The latest picture.
    [[nodiscard]] virtual membership_view view() const = 0;
    /// Blocks until the picture's revision is past `seen`, its `connected` differs from
    /// `was_connected`, or `deadline`; returns the picture then.
    [[nodiscard]] virtual membership_view wait_for_change(std::int64_t seen, bool was_connected,
                                                          clock::time_point deadline) const = 0;
    /// Replaces `range`'s record by `next` (its `version` is ignored) if its version is
    /// still `expected` (0: there is none) and this node's lease still holds. Blocking,
    /// bounded by the service's request timeout.
    [[nodiscard]] virtual swap_result swap_chain(std::string_view range, std::int64_t expected,
                                                 const chain_record& next) = 0;
    /// Ends the lease of `node`, which a peer could not reach: its key goes at once, so it
    /// is taken out of its chains, and it must register again (and be copied again) to come
    /// back. `swapped` when that was done, `conflict` when it holds no lease, `unavailable`
    /// when the authority did not answer. The node may still be alive and believe its
    /// lease holds until its own `lease_deadline`: whoever expels a node serving reads
    /// waits `lease_time` before serving in its place (replication.hpp).
    [[nodiscard]] virtual swap_result expel(std::string_view node) = 0;
    /// Until when this node's lease certainly holds (the epoch of the steady clock when it
    /// holds no lease). Lock-free.
    [[nodiscard]] virtual clock::time_point lease_deadline() const noexcept = 0;
    /// The time to live of a lease, as granted (0 before the first grant). Lock-free.
    [[nodiscard]] virtual std::chrono::milliseconds lease_time() const noexcept = 0;
    /// Counts this node's registrations: it rises each time the node had to take a new
    /// lease because its last one was lost; 0 before the first. A node whose incarnation
    /// changed may have been removed from every chain meanwhile.
    [[nodiscard]] virtual std::uint64_t incarnation() const noexcept = 0;
};

/// The text of a chain record as stored: `epoch=7 nodes=n1,n2,n3` (`nodes=` empty for an
/// empty chain).
[[nodiscard]] inline std::string chain_text(const chain_record& c) {
    std::string text = "epoch=" + std::to_string(c.epoch) + " nodes=";
    for (std::size_t i = 0; i < c.nodes.size(); ++i) {
        if (i > 0) {
            text.push_back(',');
        }
        text.append(c.nodes[i]);
    }
    return text;
}

/// Reads `chain_text`'s format (each name a node name, route.hpp); false (and `out` unchanged) for
/// anything else.
[[nodiscard]] inline bool parse_chain_text(std::string_view text, chain_record& out) {
    constexpr std::string_view epoch_key = "epoch=";
    constexpr std::string_view nodes_key = " nodes=";
    if (!text.starts_with(epoch_key)) {
        return false;
    }
    text.remove_prefix(epoch_key.size());
    const std::size_t space = text.find(' ');
    if (space == 0 || space == std::string_view::npos || space > 19) {
        return false;
    }
    std::uint64_t epoch = 0;
    for (const char c : text.substr(0, space)) {
        if (c < '0' || c > '9') {
            return false;
        }
        epoch = epoch * 10 + static_cast<std::uint64_t>(c - '0');
    }
    text.remove_prefix(space);
    if (!text.starts_with(nodes_key)) {
        return false;
    }
    text.remove_prefix(nodes_key.size());
    std::vector<std::string> nodes;
    while (!text.empty()) {
        const std::size_t comma = text.find(',');
        const std::string_view name = text.substr(0, comma);
        if (!is_node_name(name)) {
            return false;
        }
        nodes.emplace_back(name);
        if (comma == std::string_view::npos) {
            break;
        }
        text.remove_prefix(comma + 1);
        if (text.empty()) {
            return false;
        }
    }
    out.epoch = epoch;
    out.nodes = std::move(nodes);
    return true;
}

} // namespace v0
} // namespace otpkv
