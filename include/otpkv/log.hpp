// SPDX-License-Identifier: MIT
/// @file
/// Structured log events, OTP Logger style: the library says what happens (a child crashed
/// and was restarted, a supervisor gave up, a node went down, a limit was hit, a node
/// started or stopped) as `log_event`s handed to a `logger`, which passes those at or above
/// its level to the host program's sink. The default `logger` has no sink and costs one
/// branch: the library writes nothing by itself. kv_server installs a sink that writes one
/// `format_log_line` per event to stderr without blocking (`<otpkv/log_writer.hpp>`).
///
/// A logger is a small value (one shared pointer) handed to the pieces through their
/// options: `supervisor_options::log`, `server_options::log`, `router_options::log`,
/// `node::start`. There is no global logger.
#pragma once

#include <otpkv/process.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// How much an event matters, least first (Logger's levels, the ones a node uses).
enum class log_level : std::uint8_t { debug, info, warning, error };

/// `debug`, `info`, `warning`, `error`.
[[nodiscard]] std::string_view to_string(log_level level) noexcept;
/// The level named by `text` (as `to_string` spells it); nothing for any other text.
[[nodiscard]] std::optional<log_level> parse_log_level(std::string_view text) noexcept;

/// One thing that happened. `what` names the kind (a fixed word such as `child_crashed`;
/// see each piece's documentation for the kinds it reports); `fields` carry the details as
/// key = value pairs, in the order they should be shown.
struct log_event {
    log_level level = log_level::info;            ///< how much it matters
    std::chrono::system_clock::time_point time{}; ///< when (set by `logger` when empty)
    std::string what{};                           ///< the kind of event, one word
    process_id pid{};                             ///< the process it is about, if any
    std::string name{};                           ///< that process's name or id, if any
    std::string reason{};                         ///< an exit reason or error, if any
    std::vector<std::pair<std::string, std::string>> fields{}; ///< the other details
};

/// Where events go. Called on whichever thread the event happened (an event loop, a
/// supervisor's thread), possibly on several at once: a sink must be thread-safe, and must
/// not block for long (kv_server's queues the line and returns).
using log_sink = std::function<void(const log_event&)>;

/// A sink and the least level passed to it. Copies share the sink.
///
/// Thread safety: a logger is immutable; any thread may log through it (the sink sees
/// concurrent calls).
class logger {
  public:
    /// Writes nothing.
    logger() = default;
    /// Passes the events at `min_level` or above to `sink` (none when `sink` is empty).
    explicit logger(log_sink sink, log_level min_level = log_level::info);

    /// Whether an event of `level` would reach a sink (test it before building costly
    /// fields).
    [[nodiscard]] bool enabled(log_level level) const noexcept {
        return sink_ != nullptr && level >= min_level_;
    }
    /// The least level passed on.
    [[nodiscard]] log_level level() const noexcept { return min_level_; }

    /// Hands `event` to the sink if its level is enabled, stamping the time when it has
    /// none. An exception from the sink is swallowed: logging never crashes its caller.
    void log(log_event event) const;

  private:
    std::shared_ptr<const log_sink> sink_;
    log_level min_level_ = log_level::info;
};

/// One line for `event`, without the newline:
/// `2026-12-06T18:00:00.123Z info event=child_crashed pid=<0.12.0> name=server reason=...`
/// then the fields, as `key=value`. The time is UTC with milliseconds. A value that is
/// empty or holds a space, `"`, `=`, `\` or a byte outside printable ASCII is quoted, with
/// `\"`, `\\`, `\n`, `\r`, `\t` and `\xHH` escapes, so a line is always one line and can be
/// split back into its pairs. Keys are written as given (the library's are `[a-z_]+`).
[[nodiscard]] std::string format_log_line(const log_event& event);

/// `text` as `format_log_line` writes a value: as it is, or quoted and escaped.
[[nodiscard]] std::string log_value(std::string_view text);

// =======================================================================================
// Implementation
// =======================================================================================

inline std::string_view to_string(log_level level) noexcept {
    switch (level) {
    case log_level::debug:
        return "debug";
    case log_level::info:
        return "info";
    case log_level::warning:
        return "warning";
    case log_level::error:
        return "error";
    }
    return "info";
}

inline std::optional<log_level> parse_log_level(std::string_view text) noexcept {
    for (const log_level l :
         {log_level::debug, log_level::info, log_level::warning, log_level::error}) {
        if (text == to_string(l)) {
            return l;
        }
    }
    return std::nullopt;
}

inline logger::logger(log_sink sink, log_level min_level)
    : sink_(sink ? std::make_shared<const log_sink>(std::move(sink)) : nullptr),
      min_level_(min_level) {}

inline void logger::log(log_event event) const {
    if (!enabled(event.level)) {
        return;
    }
    if (event.time == std::chrono::system_clock::time_point{}) {
        event.time = std::chrono::system_clock::now();
    }
    try {
        (*sink_)(event);
    } catch (...) { // NOLINT(bugprone-empty-catch): a sink's failure is not the caller's
    }
}

inline std::string log_value(std::string_view text) {
    bool plain = !text.empty();
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f || c == '"' || c == '=' || c == '\\') {
            plain = false;
            break;
        }
    }
    if (plain) {
        return std::string(text);
    }
    constexpr std::string_view hex = "0123456789abcdef";
    std::string out = "\"";
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        default:
            if (u < 0x20 || u >= 0x7f) {
                out += "\\x";
                out += hex[u >> 4U];
                out += hex[u & 15U];
            } else {
                out += c;
            }
        }
    }
    out += '"';
    return out;
}

namespace detail {
/// `2026-12-06T18:00:00.123Z`.
[[nodiscard]] inline std::string utc_timestamp(std::chrono::system_clock::time_point t) {
    using namespace std::chrono;
    const auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
    auto days = ms / 86'400'000;
    auto in_day = ms % 86'400'000;
    if (in_day < 0) {
        in_day += 86'400'000;
        --days;
    }
    const year_month_day date{sys_days{std::chrono::days{days}}};
    const auto two = [](long long v) {
        return std::string(1, static_cast<char>('0' + v / 10)) + static_cast<char>('0' + v % 10);
    };
    const long long y = static_cast<int>(date.year());
    std::string out = std::to_string(y);
    out += '-' + two(static_cast<unsigned>(date.month())) + '-' +
           two(static_cast<unsigned>(date.day())) + 'T' + two(in_day / 3'600'000) + ':' +
           two(in_day / 60'000 % 60) + ':' + two(in_day / 1000 % 60) + '.';
    const long long milli = in_day % 1000;
    out += static_cast<char>('0' + milli / 100);
    out += two(milli % 100);
    out += 'Z';
    return out;
}
} // namespace detail

inline std::string format_log_line(const log_event& event) {
    std::string line = detail::utc_timestamp(event.time);
    line += ' ';
    line += to_string(event.level);
    const auto pair = [&line](std::string_view key, std::string_view value) {
        line += ' ';
        line += key;
        line += '=';
        line += log_value(value);
    };
    pair("event", event.what);
    if (event.pid) {
        pair("pid", to_string(event.pid));
    }
    if (!event.name.empty()) {
        pair("name", event.name);
    }
    for (const auto& [key, value] : event.fields) {
        pair(key, value);
    }
    if (!event.reason.empty()) {
        pair("reason", event.reason);
    }
    return line;
}

} // namespace v0
} // namespace otpkv
