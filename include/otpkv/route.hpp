// SPDX-License-Identifier: MIT
/// @file
/// Routes (design.md, "Router and cluster"): `route_entry` is one entry of a routing table,
/// `parse_route` reads one from its text `FIRST-LAST=NAME@HOST:PORT` (the guide's
/// `a-m=foo@127.0.0.1:4040`), `to_string` prints it back, `is_node_name` checks a node's
/// name.
///
/// The router (router.hpp) holds a table of these, and the configuration (config.hpp) reads
/// them from flags, the environment and a file; both include this header, which includes
/// nothing of otpkv's and no I/O header, so a program that embeds the router compiles no
/// configuration parser.
///
/// Thread safety: `route_entry` is a plain value; every function is pure, so any thread may
/// call them, on arguments no other thread is writing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace otpkv {
inline namespace v0 {

/// One routing entry: bucket names whose first byte is in [first, last] (inclusive) belong
/// to node `node` at host:port. Written `FIRST-LAST=NAME@HOST:PORT`, e.g.
/// `a-m=foo@127.0.0.1:4040`. `host` is stored without the brackets an IPv6 literal is
/// written with.
struct route_entry {
    unsigned char first = 0; ///< lowest first byte of the bucket names this entry covers
    unsigned char last = 0;  ///< highest first byte covered (`first <= last`)
    std::string node{};      ///< the owner node's name
    std::string host{};      ///< the owner's IPv4 or IPv6 literal (no brackets) or host name
    std::uint16_t port = 0;  ///< the owner's TCP port, 1 to 65535

    /// Equal when every field is.
    friend bool operator==(const route_entry&, const route_entry&) = default;
};

/// Parses `FIRST-LAST=NAME@HOST:PORT` (e.g. `a-m=foo@127.0.0.1:4040`); on failure returns
/// nullopt and, when `why` is given, a short reason (e.g. `PORT must be a number from 1 to
/// 65535`). The rules:
/// - FIRST and LAST are single bytes, read by position (so `--/=...` is the range `-` to
///   `/`): a printable ASCII byte other than space (0x21-0x7e, `-`, `=` and `\` included),
///   or `\xHH` (two hex digits, either case) for any byte, such as `\x80-\xff` for names
///   that start with a non-ASCII UTF-8 byte. FIRST <= LAST.
/// - NAME is a node name (`is_node_name`), ended by the first `@`.
/// - HOST is an IPv4 dotted quad, an IPv6 literal in brackets (`[::1]`), or a host name:
///   dot-separated labels of 1 to 63 letters, digits and `-` (not at a label's start or
///   end), at most 253 bytes, not all digits and dots (that must be an IPv4 address).
/// - PORT is 1 to 65535, decimal digits only.
/// Complexity: linear in the text. Thread safety: a pure function.
[[nodiscard]] std::optional<route_entry> parse_route(std::string_view text,
                                                     std::string* why = nullptr);

/// Prints back the canonical text of a route: FIRST and LAST as themselves when printable
/// ASCII other than space, else `\xHH` (lower case); an IPv6 host in brackets. For a valid
/// route, `parse_route(to_string(r)) == r`.
[[nodiscard]] std::string to_string(const route_entry& r);

/// True for a valid node name: 1 to 255 bytes of `[A-Za-z0-9_.-]`.
[[nodiscard]] constexpr bool is_node_name(std::string_view name) noexcept;

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

/// ASCII classes, independent of the C locale.
[[nodiscard]] constexpr bool is_digit(char c) noexcept {
    return c >= '0' && c <= '9';
}
/// True for `[A-Za-z0-9]`.
[[nodiscard]] constexpr bool is_alnum(char c) noexcept {
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
/// True for `[0-9A-Fa-f]`.
[[nodiscard]] constexpr bool is_hex(char c) noexcept {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
/// The value of a hex digit.
[[nodiscard]] constexpr unsigned hex_value(char c) noexcept {
    if (is_digit(c)) {
        return static_cast<unsigned>(c - '0');
    }
    if (c >= 'a' && c <= 'f') {
        return static_cast<unsigned>(c - 'a' + 10);
    }
    return static_cast<unsigned>(c - 'A' + 10);
}

/// A non-empty run of decimal digits whose value is at most `max`; nullopt otherwise
/// (overflow included).
[[nodiscard]] constexpr std::optional<std::uint64_t> parse_decimal(std::string_view s,
                                                                   std::uint64_t max) noexcept {
    if (s.empty()) {
        return std::nullopt;
    }
    std::uint64_t value = 0;
    for (const char c : s) {
        if (!is_digit(c)) {
            return std::nullopt;
        }
        const auto digit = static_cast<std::uint64_t>(c - '0');
        // value * 10 + digit <= max, without computing anything that could wrap.
        if (digit > max || value > (max - digit) / 10) {
            return std::nullopt;
        }
        value = value * 10 + digit;
    }
    return value;
}

/// An IPv4 dotted quad: four decimal parts 0-255, no leading zeros.
[[nodiscard]] constexpr bool is_ipv4(std::string_view s) noexcept {
    std::size_t i = 0;
    for (int part = 1;; ++part) {
        std::size_t j = i;
        unsigned value = 0;
        while (j < s.size() && is_digit(s[j]) && j - i < 3) {
            value = value * 10 + static_cast<unsigned>(s[j] - '0');
            ++j;
        }
        if (j == i || (j - i > 1 && s[i] == '0') || value > 255) {
            return false;
        }
        if (j == s.size()) {
            return part == 4;
        }
        if (s[j] != '.' || part == 4) {
            return false;
        }
        i = j + 1;
    }
}

/// An IPv6 literal without brackets: eight groups of 1 to 4 hex digits, at most one `::`
/// standing for one or more zero groups, optionally ending in an IPv4 dotted quad (worth
/// two groups). No zone (`%eth0`).
[[nodiscard]] constexpr bool is_ipv6(std::string_view s) noexcept {
    std::size_t i = 0;
    int groups = 0;
    bool compressed = false;
    if (s.starts_with("::")) {
        compressed = true;
        i = 2;
        if (i == s.size()) {
            return true;
        }
    }
    while (i < s.size()) {
        std::size_t j = i;
        while (j < s.size() && is_hex(s[j])) {
            ++j;
        }
        if (j < s.size() && s[j] == '.') {
            if (!is_ipv4(s.substr(i))) {
                return false;
            }
            groups += 2;
            break;
        }
        if (j == i || j - i > 4) {
            return false;
        }
        ++groups;
        i = j;
        if (i == s.size()) {
            break;
        }
        if (s[i] != ':') {
            return false;
        }
        ++i;
        if (i < s.size() && s[i] == ':') {
            if (compressed) {
                return false;
            }
            compressed = true;
            ++i;
        } else if (i == s.size()) {
            return false; // a single trailing colon
        }
    }
    return compressed ? groups <= 7 : groups == 8;
}

/// A host name: labels of 1 to 63 `[A-Za-z0-9-]` (no `-` first or last) joined by dots, at
/// most 253 bytes, and not made only of digits and dots (that is an IPv4 address or
/// nothing: resolvers read `10.1` as an address).
[[nodiscard]] constexpr bool is_hostname(std::string_view s) noexcept {
    if (s.empty() || s.size() > 253) {
        return false;
    }
    bool numeric = true;
    std::size_t label = 0;
    for (std::size_t i = 0; i <= s.size(); ++i) {
        if (i == s.size() || s[i] == '.') {
            if (label == 0 || label > 63 || s[i - 1] == '-') {
                return false;
            }
            label = 0;
            continue;
        }
        const char c = s[i];
        if (!is_alnum(c) && c != '-') {
            return false;
        }
        if (c == '-' && label == 0) {
            return false;
        }
        numeric = numeric && is_digit(c);
        ++label;
    }
    return !numeric;
}
/// A route's FIRST or LAST byte as read at the start of some text.
struct route_byte {
    unsigned char value;
    std::size_t length; ///< bytes of text it took: 1, or 4 for `\xHH`
};

/// Reads FIRST or LAST at the start of `s`: `\xHH`, else one byte in 0x21-0x7e. A `\x` not
/// followed by two hex digits is refused (a literal `\` is never followed by `x` in a valid
/// route: `-` or `=` comes next).
[[nodiscard]] constexpr std::optional<route_byte> read_route_byte(std::string_view s) noexcept {
    if (s.starts_with("\\x")) {
        if (s.size() >= 4 && is_hex(s[2]) && is_hex(s[3])) {
            return route_byte{static_cast<unsigned char>(hex_value(s[2]) * 16 + hex_value(s[3])),
                              4};
        }
        return std::nullopt;
    }
    if (!s.empty() && s[0] > ' ' && s[0] < '\x7f') {
        return route_byte{static_cast<unsigned char>(s[0]), 1};
    }
    return std::nullopt;
}

/// The length of a well-formed `FIRST-LAST` at the start of `s`, or 0.
[[nodiscard]] constexpr std::size_t route_head_length(std::string_view s) noexcept {
    const auto first = read_route_byte(s);
    if (!first || first->length >= s.size() || s[first->length] != '-') {
        return 0;
    }
    const auto last = read_route_byte(s.substr(first->length + 1));
    return last ? first->length + 1 + last->length : 0;
}

/// Why FIRST or LAST (`which`) could not be read from `s`.
[[nodiscard]] inline std::string route_byte_problem(std::string_view which, std::string_view s) {
    if (s.starts_with("\\x")) {
        return "expected two hex digits after \\x in " + std::string(which);
    }
    if (s.empty() || s.front() == '=') {
        return "expected FIRST-LAST=NAME@HOST:PORT";
    }
    return std::string(which) + " must be printable ASCII other than space, or \\xHH";
}

} // namespace detail

constexpr bool is_node_name(std::string_view name) noexcept {
    if (name.empty() || name.size() > 255) {
        return false;
    }
    for (const char c : name) {
        if (!detail::is_alnum(c) && c != '_' && c != '.' && c != '-') {
            return false;
        }
    }
    return true;
}

inline std::optional<route_entry> parse_route(std::string_view text, std::string* why) {
    const auto fail = [why](std::string reason) -> std::optional<route_entry> {
        if (why != nullptr) {
            *why = std::move(reason);
        }
        return std::nullopt;
    };
    if (text.empty()) {
        return fail("empty route, expected FIRST-LAST=NAME@HOST:PORT");
    }
    route_entry r;
    const auto first = detail::read_route_byte(text);
    if (!first) {
        return fail(detail::route_byte_problem("FIRST", text));
    }
    std::string_view rest = text.substr(first->length);
    if (!rest.starts_with('-')) {
        return fail("expected '-' after FIRST");
    }
    rest.remove_prefix(1);
    const auto last = detail::read_route_byte(rest);
    if (!last) {
        return fail(detail::route_byte_problem("LAST", rest));
    }
    rest.remove_prefix(last->length);
    if (!rest.starts_with('=')) {
        return fail("expected '=' after LAST");
    }
    rest.remove_prefix(1);
    if (first->value > last->value) {
        return fail("FIRST is after LAST");
    }
    r.first = first->value;
    r.last = last->value;

    const std::size_t at = rest.find('@');
    if (at == std::string_view::npos) {
        return fail("expected '@' between NAME and HOST");
    }
    if (!is_node_name(rest.substr(0, at))) {
        return fail("NAME must be 1 to 255 of A-Z a-z 0-9 _ . -");
    }
    r.node = std::string(rest.substr(0, at));
    rest.remove_prefix(at + 1);

    std::string_view host;
    if (rest.starts_with('[')) {
        const std::size_t close = rest.find(']');
        if (close == std::string_view::npos) {
            return fail("expected ']' after an IPv6 HOST");
        }
        host = rest.substr(1, close - 1);
        if (!detail::is_ipv6(host)) {
            return fail("HOST in brackets must be an IPv6 address");
        }
        rest.remove_prefix(close + 1);
        if (!rest.starts_with(':')) {
            return fail("expected ':PORT' after HOST");
        }
    } else {
        // A host name or IPv4 address holds no ':', so the first one ends it.
        const std::size_t colon = rest.find(':');
        if (colon == std::string_view::npos) {
            return fail("expected ':PORT' after HOST");
        }
        if (const std::size_t last_colon = rest.rfind(':');
            last_colon != colon && detail::is_ipv6(rest.substr(0, last_colon))) {
            return fail("an IPv6 HOST must be in brackets, e.g. [::1]:4040");
        }
        host = rest.substr(0, colon);
        if (!detail::is_ipv4(host) && !detail::is_hostname(host)) {
            return fail("HOST must be an IPv4 address, an IPv6 address in brackets, or a host "
                        "name");
        }
        rest.remove_prefix(colon);
    }
    rest.remove_prefix(1); // the ':'
    const auto port = detail::parse_decimal(rest, std::numeric_limits<std::uint16_t>::max());
    if (!port || *port == 0) {
        return fail("PORT must be a number from 1 to 65535");
    }
    r.host = std::string(host);
    r.port = static_cast<std::uint16_t>(*port);
    return r;
}

inline std::string to_string(const route_entry& r) {
    constexpr std::string_view digits = "0123456789abcdef";
    std::string out;
    const auto append_byte = [&out, digits](unsigned char byte) {
        if (byte > ' ' && byte < 0x7f) {
            out += static_cast<char>(byte);
        } else {
            out += "\\x";
            out += digits[byte >> 4];
            out += digits[byte & 0xf];
        }
    };
    append_byte(r.first);
    out += '-';
    append_byte(r.last);
    out += '=';
    out += r.node;
    out += '@';
    if (r.host.find(':') != std::string::npos) {
        out += '[';
        out += r.host;
        out += ']';
    } else {
        out += r.host;
    }
    out += ':';
    out += std::to_string(r.port);
    return out;
}

} // namespace v0
} // namespace otpkv
