// SPDX-License-Identifier: MIT
/// @file
/// A node's snapshot (`<otpkv/snapshot.hpp>`) rendered for people and tools: the text of
/// the `INFO` verb, JSON (`INFO JSON`, the admin port's `/tree.json` and `/cluster.json`),
/// and Prometheus' text exposition format (`/metrics`).
///
/// Thread safety: pure functions of their arguments.
#pragma once

#include <otpkv/snapshot.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace otpkv {
inline namespace v0 {

/// What `INFO` shows: one section, or all the text ones; `json` is the whole snapshot as
/// one line of JSON (what `/cluster.json` fetches from the other nodes).
enum class info_section : std::uint8_t { all, server, tree, stats, cluster, json };

/// `SERVER`, `TREE`, `STATS`, `CLUSTER`, `JSON` (`all`: empty).
[[nodiscard]] std::string_view to_string(info_section section) noexcept;
/// The section a request names, in any letter case; nothing for any other word.
[[nodiscard]] std::optional<info_section> parse_info_section(std::string_view word) noexcept;

/// The lines of `INFO`'s reply for `section`, each ending in `\r\n`, without the final
/// `OK` (`json`: the one line of `snapshot_json`).
[[nodiscard]] std::string info_text(const node_snapshot& snapshot, info_section section);

/// The snapshot as one line of JSON (no newline in it).
[[nodiscard]] std::string snapshot_json(const node_snapshot& snapshot);

/// The snapshot as Prometheus metrics, text exposition format 0.0.4.
[[nodiscard]] std::string metrics_text(const node_snapshot& snapshot);

} // namespace v0
} // namespace otpkv

#include <otpkv/detail/observer_json.hpp>
#include <otpkv/detail/observer_metrics.hpp>
#include <otpkv/detail/observer_text.hpp>
