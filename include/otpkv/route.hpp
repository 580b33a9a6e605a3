// SPDX-License-Identifier: MIT
/// @file
/// Routes (design.md, "Router and cluster"): `route_entry` is one entry of a routing table,
/// `parse_route` reads one from its text `FIRST-LAST=NAME@HOST:PORT[,NAME@HOST:PORT]...`
/// (the guide's `a-m=foo@127.0.0.1:4040`), `to_string` prints it back, `route_nodes` lists
/// the nodes it names, `is_node_name` checks a node's name.
///
/// An entry names one node, the owner of its range, or several (at most `max_route_nodes`):
/// then they are the range's replica set in preferred order, replicated by chain
/// replication with etcd as the membership authority (issue 16). The first node stays in
/// `route_entry::node`, `host` and `port`, so code that knows one owner per range reads the
/// preferred one; the others are in `route_entry::replicas`.
///
/// `parse_http_url` reads an etcd client URL, `http://HOST:PORT`, whose HOST and PORT follow
/// the rules of a route's.
///
/// The router (router.hpp) holds a table of these, and the configuration (config.hpp) reads
/// them from flags, the environment and a file; both include this header, which includes
/// nothing of otpkv's and no I/O header, so a program that embeds the router compiles no
/// configuration parser.
///
/// Thread safety: `route_entry`, `route_node` and `http_endpoint` are plain values; every
/// function is pure, so any thread may call them, on arguments no other thread is writing.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// The most nodes one route entry may name: the longest replica set (chain) of a range.
inline constexpr std::size_t max_route_nodes = 7;

/// One node a route entry names, written `NAME@HOST:PORT` (e.g. `n1@127.0.0.1:4041`).
/// `host` is stored without the brackets an IPv6 literal is written with.
struct route_node {
    std::string name{};     ///< the node's name (`is_node_name`)
    std::string host{};     ///< its IPv4 or IPv6 literal (no brackets) or host name
    std::uint16_t port = 0; ///< its TCP port, 1 to 65535

    /// Equal when every field is.
    friend bool operator==(const route_node&, const route_node&) = default;
};

/// One routing entry: bucket names whose first byte is in [first, last] (inclusive) belong
/// to node `node` at host:port. Written `FIRST-LAST=NAME@HOST:PORT`, e.g.
/// `a-m=foo@127.0.0.1:4040`. `host` is stored without the brackets an IPv6 literal is
/// written with.
///
/// An entry may name further nodes after commas,
/// `a-m=n1@127.0.0.1:4041,n2@127.0.0.1:4042,n3@127.0.0.1:4043`: the range's replica set in
/// preferred order. `node`, `host` and `port` are the first (preferred) one, `replicas` the
/// others; `route_nodes` gives all of them.
struct route_entry {
    unsigned char first = 0; ///< lowest first byte of the bucket names this entry covers
    unsigned char last = 0;  ///< highest first byte covered (`first <= last`)
    std::string node{};      ///< the owner node's name (the first, preferred node)
    std::string host{};      ///< the owner's IPv4 or IPv6 literal (no brackets) or host name
    std::uint16_t port = 0;  ///< the owner's TCP port, 1 to 65535
    /// The nodes the entry names after the first, in preferred order; empty for an entry
    /// naming one node. At most `max_route_nodes - 1`; no name appears twice in an entry.
    std::vector<route_node> replicas{};

    /// Equal when every field is.
    friend bool operator==(const route_entry&, const route_entry&) = default;
};

/// Parses `FIRST-LAST=NAME@HOST:PORT[,NAME@HOST:PORT]...` (e.g. `a-m=foo@127.0.0.1:4040`);
/// on failure returns nullopt and, when `why` is given, a short reason (e.g. `PORT must be a
/// number from 1 to 65535`). The rules:
/// - FIRST and LAST are single bytes, read by position (so `--/=...` is the range `-` to
///   `/`): a printable ASCII byte other than space (0x21-0x7e, `-`, `=` and `\` included),
///   or `\xHH` (two hex digits, either case) for any byte, such as `\x80-\xff` for names
///   that start with a non-ASCII UTF-8 byte. FIRST <= LAST.
/// - Then one to `max_route_nodes` nodes separated by commas, no spaces (no NAME, HOST or
///   PORT holds a comma). An empty one (`a-m=n1@h:1,` or `,,`) is refused, and so are a
///   name given twice and two nodes at the same HOST:PORT. When the entry names several
///   nodes, a reason about one of them starts with `node N: ` (N from 1).
/// - In each node, NAME is a node name (`is_node_name`), ended by the first `@`.
/// - HOST is an IPv4 dotted quad, an IPv6 literal in brackets (`[::1]`), or a host name:
///   dot-separated labels of 1 to 63 letters, digits and `-` (not at a label's start or
///   end), at most 253 bytes, not all digits and dots (that must be an IPv4 address).
/// - PORT is 1 to 65535, decimal digits only.
/// Complexity: linear in the text. Thread safety: a pure function.
[[nodiscard]] std::optional<route_entry> parse_route(std::string_view text,
                                                     std::string* why = nullptr);

/// Prints back the canonical text of a route: FIRST and LAST as themselves when printable
/// ASCII other than space, else `\xHH` (lower case); every node, comma-separated; an IPv6
/// host in brackets. For a valid route, `parse_route(to_string(r)) == r`.
[[nodiscard]] std::string to_string(const route_entry& r);

/// Prints one node, `NAME@HOST:PORT` (an IPv6 host in brackets).
[[nodiscard]] std::string to_string(const route_node& n);

/// Every node `r` names, in preferred order: its first node (`node`, `host`, `port`), then
/// `replicas`. Complexity: linear in the number of nodes.
[[nodiscard]] std::vector<route_node> route_nodes(const route_entry& r);

/// An HTTP endpoint, `http://HOST:PORT`: where an etcd client URL points.
struct http_endpoint {
    std::string host{};     ///< an IPv4 or IPv6 literal (no brackets) or host name
    std::uint16_t port = 0; ///< the TCP port, 1 to 65535

    /// Equal when every field is.
    friend bool operator==(const http_endpoint&, const http_endpoint&) = default;
};

/// Parses an etcd client URL, `http://HOST:PORT` with at most a `/` after it; on failure
/// returns nullopt and, when `why` is given, a short reason. The scheme is `http` in either
/// case; HOST follows the rules of a route's HOST (an IPv4 address, an IPv6 literal in
/// brackets, stored without them, or a host name) and PORT, which is required, those of a
/// route's PORT (1 to 65535). Refused with a reason: `https://` (TLS is not supported: give
/// etcd's plain http client URL, on a trusted network), any other scheme or none, user
/// info (`user@`), a path, a query and a fragment.
/// Complexity: linear in the text. Thread safety: a pure function.
[[nodiscard]] std::optional<http_endpoint> parse_http_url(std::string_view url,
                                                          std::string* why = nullptr);

/// Prints an endpoint as its URL, `http://HOST:PORT` (an IPv6 host in brackets). For a
/// valid endpoint, `parse_http_url(to_string(e)) == e`.
[[nodiscard]] std::string to_string(const http_endpoint& e);

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

/// True when `s` starts with a route's `FIRST-LAST=` (read by position): the start of a
/// route, never of a node (no NAME, HOST or PORT holds `=`).
[[nodiscard]] constexpr bool starts_route(std::string_view s) noexcept {
    const std::size_t head = route_head_length(s);
    return head != 0 && head < s.size() && s[head] == '=';
}

/// A HOST:PORT read by `read_host_port`; `host` views the text read, without brackets.
struct parsed_address {
    std::string_view host;
    std::uint16_t port = 0;
};

/// Reads `HOST:PORT`, the whole of `s`, by the rules of `parse_route`; on failure sets
/// `why` and returns nullopt.
[[nodiscard]] inline std::optional<parsed_address> read_host_port(std::string_view s,
                                                                  std::string& why) {
    const auto fail = [&why](const char* reason) -> std::optional<parsed_address> {
        why = reason;
        return std::nullopt;
    };
    std::string_view host;
    if (s.starts_with('[')) {
        const std::size_t close = s.find(']');
        if (close == std::string_view::npos) {
            return fail("expected ']' after an IPv6 HOST");
        }
        host = s.substr(1, close - 1);
        if (!is_ipv6(host)) {
            return fail("HOST in brackets must be an IPv6 address");
        }
        s.remove_prefix(close + 1);
        if (!s.starts_with(':')) {
            return fail("expected ':PORT' after HOST");
        }
    } else {
        // A host name or IPv4 address holds no ':', so the first one ends it.
        const std::size_t colon = s.find(':');
        if (colon == std::string_view::npos) {
            return fail("expected ':PORT' after HOST");
        }
        if (const std::size_t last_colon = s.rfind(':');
            last_colon != colon && is_ipv6(s.substr(0, last_colon))) {
            return fail("an IPv6 HOST must be in brackets, e.g. [::1]:4040");
        }
        host = s.substr(0, colon);
        if (!is_ipv4(host) && !is_hostname(host)) {
            return fail("HOST must be an IPv4 address, an IPv6 address in brackets, or a host "
                        "name");
        }
        s.remove_prefix(colon);
    }
    s.remove_prefix(1); // the ':'
    const auto port = parse_decimal(s, std::numeric_limits<std::uint16_t>::max());
    if (!port || *port == 0) {
        return fail("PORT must be a number from 1 to 65535");
    }
    return parsed_address{host, static_cast<std::uint16_t>(*port)};
}

/// Appends `HOST:PORT` to `out`, an IPv6 host in brackets.
inline void append_host_port(std::string& out, const std::string& host, std::uint16_t port) {
    if (host.find(':') != std::string::npos) {
        out += '[';
        out += host;
        out += ']';
    } else {
        out += host;
    }
    out += ':';
    out += std::to_string(port);
}

/// Appends `NAME@HOST:PORT` to `out`.
inline void append_route_node(std::string& out, const std::string& name, const std::string& host,
                              std::uint16_t port) {
    out += name;
    out += '@';
    append_host_port(out, host, port);
}

/// A route's `FIRST-LAST` as `to_string` prints it (`a-m`, `\x80-\xff`).
[[nodiscard]] inline std::string route_range_text(unsigned char first, unsigned char last) {
    constexpr std::string_view digits = "0123456789abcdef";
    std::string out;
    for (const unsigned char byte : {first, last}) {
        if (!out.empty()) {
            out += '-';
        }
        if (byte > ' ' && byte < 0x7f) {
            out += static_cast<char>(byte);
        } else {
            out += "\\x";
            out += digits[byte >> 4];
            out += digits[byte & 0xf];
        }
    }
    return out;
}

/// True when `a` equals `b` ignoring the case of ASCII letters.
[[nodiscard]] constexpr bool equal_ignoring_case(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        const auto lower = [](char c) {
            return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
        };
        if (lower(a[i]) != lower(b[i])) {
            return false;
        }
    }
    return true;
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

namespace detail {

/// Reads one node, `NAME@HOST:PORT` (the whole of `s`); on failure sets `why`.
[[nodiscard]] inline std::optional<route_node> read_route_node(std::string_view s,
                                                               std::string& why) {
    const std::size_t at = s.find('@');
    if (at == std::string_view::npos) {
        why = "expected '@' between NAME and HOST";
        return std::nullopt;
    }
    if (!is_node_name(s.substr(0, at))) {
        why = "NAME must be 1 to 255 of A-Z a-z 0-9 _ . -";
        return std::nullopt;
    }
    const auto address = read_host_port(s.substr(at + 1), why);
    if (!address) {
        return std::nullopt;
    }
    return route_node{std::string(s.substr(0, at)), std::string(address->host), address->port};
}

} // namespace detail

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

    // The nodes: pieces between commas, which no NAME, HOST or PORT holds.
    std::size_t count = 1;
    for (const char c : rest) {
        count += c == ',' ? 1 : 0;
    }
    if (count > max_route_nodes) {
        return fail("a route names at most " + std::to_string(max_route_nodes) + " nodes, got " +
                    std::to_string(count));
    }
    std::vector<route_node> nodes;
    nodes.reserve(count);
    for (std::size_t number = 1;; ++number) {
        const std::size_t comma = rest.find(',');
        const std::string_view piece = rest.substr(0, comma);
        const std::string which = "node " + std::to_string(number);
        const std::string prefix = count > 1 ? which + ": " : std::string();
        if (count > 1 && piece.empty()) {
            return fail(which + " is empty: expected NAME@HOST:PORT on each side of a ','");
        }
        if (number > 1 && detail::starts_route(piece)) {
            return fail(prefix + "expected NAME@HOST:PORT, got another route's FIRST-LAST=");
        }
        std::string reason;
        auto node = detail::read_route_node(piece, reason);
        if (!node) {
            return fail(prefix + reason);
        }
        for (std::size_t k = 0; k < nodes.size(); ++k) {
            const std::string other = "node " + std::to_string(k + 1);
            if (nodes[k].name == node->name) {
                return fail(prefix + node->name + " is named twice (also " + other +
                            "): a node may appear once in a route");
            }
            if (nodes[k].host == node->host && nodes[k].port == node->port) {
                std::string address;
                detail::append_host_port(address, node->host, node->port);
                return fail(prefix + node->name + " is at " + address + ", the address of " +
                            nodes[k].name + " (" + other + ")");
            }
        }
        nodes.push_back(std::move(*node));
        if (comma == std::string_view::npos) {
            break;
        }
        rest.remove_prefix(comma + 1);
    }
    r.node = std::move(nodes.front().name);
    r.host = std::move(nodes.front().host);
    r.port = nodes.front().port;
    for (std::size_t k = 1; k < nodes.size(); ++k) {
        r.replicas.push_back(std::move(nodes[k]));
    }
    return r;
}

inline std::string to_string(const route_entry& r) {
    std::string out = detail::route_range_text(r.first, r.last);
    out += '=';
    detail::append_route_node(out, r.node, r.host, r.port);
    for (const route_node& n : r.replicas) {
        out += ',';
        detail::append_route_node(out, n.name, n.host, n.port);
    }
    return out;
}

inline std::string to_string(const route_node& n) {
    std::string out;
    detail::append_route_node(out, n.name, n.host, n.port);
    return out;
}

inline std::vector<route_node> route_nodes(const route_entry& r) {
    std::vector<route_node> nodes;
    nodes.reserve(1 + r.replicas.size());
    nodes.push_back(route_node{r.node, r.host, r.port});
    nodes.insert(nodes.end(), r.replicas.begin(), r.replicas.end());
    return nodes;
}

inline std::optional<http_endpoint> parse_http_url(std::string_view url, std::string* why) {
    const auto fail = [why](std::string reason) -> std::optional<http_endpoint> {
        if (why != nullptr) {
            *why = std::move(reason);
        }
        return std::nullopt;
    };
    if (url.empty()) {
        return fail("empty URL, expected http://HOST:PORT");
    }
    const std::size_t scheme_end = url.find("://");
    if (scheme_end == std::string_view::npos) {
        return fail("expected http://HOST:PORT (the scheme is required)");
    }
    const std::string_view scheme = url.substr(0, scheme_end);
    if (detail::equal_ignoring_case(scheme, "https")) {
        return fail("TLS (https) is not supported: give etcd's plain http:// client URL, on a "
                    "trusted network");
    }
    if (!detail::equal_ignoring_case(scheme, "http")) {
        return fail("the scheme must be http, expected http://HOST:PORT");
    }
    const std::string_view rest = url.substr(scheme_end + 3);
    // RFC 3986: the authority ends at the first '/', '?' or '#'.
    const std::size_t authority_end = rest.find_first_of("/?#");
    const std::string_view authority = rest.substr(0, authority_end);
    if (authority.find('@') != std::string_view::npos) {
        return fail("user info (USER@ before HOST) is not supported, expected http://HOST:PORT");
    }
    if (authority.empty()) {
        return fail("expected HOST:PORT after http://");
    }
    std::string reason;
    const auto address = detail::read_host_port(authority, reason);
    if (!address) {
        return fail(reason);
    }
    if (authority_end != std::string_view::npos) {
        std::string_view tail = rest.substr(authority_end);
        if (tail.starts_with('/')) {
            tail.remove_prefix(1);
        }
        if (tail.starts_with('?')) {
            return fail("a query is not allowed, expected http://HOST:PORT");
        }
        if (tail.starts_with('#')) {
            return fail("a fragment is not allowed, expected http://HOST:PORT");
        }
        if (!tail.empty()) {
            return fail("a path is not allowed, expected http://HOST:PORT (a single '/' may "
                        "follow)");
        }
    }
    return http_endpoint{std::string(address->host), address->port};
}

inline std::string to_string(const http_endpoint& e) {
    std::string out = "http://";
    detail::append_host_port(out, e.host, e.port);
    return out;
}

} // namespace v0
} // namespace otpkv
