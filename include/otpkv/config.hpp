// SPDX-License-Identifier: MIT
/// @file
/// A node's configuration (design.md, "Node and kv_server"): `node_config` holds the values,
/// `load_config` reads them from command-line flags, `OTPKV_*` environment variables and a
/// config file, `parse_route` reads one routing entry, `usage` prints the command line.
///
/// The sources and their spellings, one key at a time:
///
///     flag                     environment            config file
///     --config FILE            OTPKV_CONFIG           (not allowed)
///     --node NAME              OTPKV_NODE             node = NAME
///     --bind ADDR              OTPKV_BIND             bind = ADDR
///     --port N                 OTPKV_PORT             port = N
///     --threads N              OTPKV_THREADS          threads = N
///     --route ROUTE (repeat)   OTPKV_ROUTE (a list)   route = ROUTE (repeat the line)
///     --max-line BYTES         OTPKV_MAX_LINE         max-line = BYTES
///     --max-connections N      OTPKV_MAX_CONNECTIONS  max-connections = N
///     --max-buckets N          OTPKV_MAX_BUCKETS      max-buckets = N
///
/// Flags: `--name value` or `--name=value`. In the first spelling the next argument is the
/// value unless it starts with `-`, in which case the flag is missing its value (so
/// `--node --port 1` is an error, not a node named `--port`); write `--name=-value` for a
/// value that starts with `-`. A flag given twice keeps the last value; `--route` adds one
/// route each time, in order. `-h`/`--help` and `--version` take no value and, when they
/// appear anywhere, win over everything else: no other flag, variable or file is checked,
/// and both may be set at once (print the help). An unknown flag, a flag without its
/// value and a positional argument are errors that name them.
///
/// Environment: only the nine variables above are read; other `OTPKV_*` variables (build
/// settings, say) are ignored, as are entries without `=`. When a variable appears twice in
/// the array the first one counts, as with `getenv`. A variable set to the empty string
/// counts as unset. `OTPKV_ROUTE` holds one or more routes separated by commas and/or
/// whitespace (`a-m=foo@127.0.0.1:4040, n-z=bar@127.0.0.1:4041`); inside it write a
/// FIRST byte `,` as `\x2c`. `load_config` never reads the process's environment by
/// itself: the caller passes `environ` (or a test passes its own array).
///
/// Config file (from `--config`, else `OTPKV_CONFIG`): one `key = value` per line, keys
/// being the flag names without their dashes. Whitespace around the key and the value is
/// trimmed (a CR before the LF too); blank lines and lines whose first non-blank byte is
/// `#` are ignored; `#` elsewhere is part of the value (there are no trailing comments). A
/// UTF-8 byte order mark at the start is skipped. A key given twice keeps the last value;
/// `route` lines add one route each. A file cannot name another file (`config = ...`).
///
/// Values: numbers are decimal digits only (no sign, no spaces, no `0x`; leading zeros are
/// fine), range-checked, with overflow detected. A node name is 1 to 255 bytes of
/// `[A-Za-z0-9_.-]`. An address to bind is an IPv4 dotted quad (four decimal parts 0-255
/// without leading zeros, which `inet_aton` would read as octal) or an IPv6 literal (bare
/// or in brackets, stored bare; an embedded IPv4 tail is allowed, a `%zone` is not).
/// Routes: see `parse_route`.
///
/// Precedence: flags win over the environment, which wins over the file, key by key. For
/// routes, the highest source that gives any route supplies the whole list: lists are never
/// merged. Every value given is checked, even one a higher source overrides; the first
/// error is reported, looking at the flags first, then the environment, then the file.
///
/// Errors are one line that names the source and quotes the bad value (non-printable bytes
/// as `\xHH`, long values cut short):
///
///     --port: expected a number from 0 to 65535, got 'abc'
///     OTPKV_THREADS: expected a number from 1 to 256, got '0'
///     node.conf:3: max-line: expected a number from 1 to 18446744073709551615, got ''
///     node.conf:7: unknown key 'prot'
///     --config: cannot open 'node.conf'
///
/// Thread safety: the types are plain values; every function is pure apart from
/// `load_config` reading the config file, so any thread may call them, on arguments no
/// other thread is writing.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/version.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

/// One routing entry: bucket names whose first byte is in [first, last] (inclusive) belong
/// to node `node` at host:port. Written `FIRST-LAST=NAME@HOST:PORT`, e.g.
/// `a-m=foo@127.0.0.1:4040`. `host` is stored without the brackets an IPv6 literal is
/// written with.
struct route_entry {
    unsigned char first = 0; ///< lowest first byte of the bucket names this entry covers
    unsigned char last = 0;  ///< highest first byte covered (`first <= last`)
    std::string node;        ///< the owner node's name
    std::string host;        ///< the owner's IPv4 or IPv6 literal (no brackets) or host name
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

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// Everything a node is configured with. The defaults are design.md's and protocol.md's.
/// Thread safety: a plain value.
struct node_config {
    /// `--node NAME`: this node's name, which the routing table refers to (like Elixir's
    /// `nonode@nohost`); see `is_node_name`.
    std::string node = "nonode";
    /// `--bind ADDR`: the IPv4 or IPv6 literal to listen on (never all interfaces unless
    /// asked); an IPv6 address is stored without brackets.
    std::string bind = "127.0.0.1";
    /// `--port N`: the TCP port, 0 to 65535; 0 takes an ephemeral port.
    std::uint16_t port = 4040;
    /// `--threads N`: worker threads, 1 to 256 when given; 0 (the default, which cannot be
    /// given explicitly) means `std::thread::hardware_concurrency()`.
    unsigned threads = 0;
    /// `--route ...`, in the order given; empty: every bucket is local.
    std::vector<route_entry> routes;
    /// `--max-line BYTES`: longest request line, terminator not counted; at least 1.
    std::size_t max_line = default_max_line;
    /// `--max-connections N`: most connections open at once; at least 1.
    std::size_t max_connections = 10000;
    /// `--max-buckets N`: most buckets at once; at least 1.
    std::size_t max_buckets = 1'000'000;

    /// Equal when every field is.
    friend bool operator==(const node_config&, const node_config&) = default;
};

/// What load_config found.
struct config_load {
    node_config config; ///< valid when ok(); the defaults when help or version is set
    /// Empty on success; otherwise one line naming the flag / variable / file:line and the
    /// bad value, e.g. "--port: expected a number from 0 to 65535, got 'abc'". A program
    /// prints it and exits with status 2.
    std::string error;
    bool help = false;    ///< --help or -h was given: print usage() and exit 0
    bool version = false; ///< --version was given: print version_text() and exit 0

    /// True when no error was found.
    [[nodiscard]] bool ok() const noexcept { return error.empty(); }
};

/// Reads the configuration by the rules at the top of this file. `argv` holds `argc`
/// argv-style flags (argv[0] is the program; argv may be null when argc is 0), `envp` a
/// null-terminated "KEY=VALUE" array like `environ` (may be null). Reads the config file
/// named by `--config` or `OTPKV_CONFIG`, if any. Never throws for bad input (only
/// `std::bad_alloc`).
[[nodiscard]] config_load load_config(int argc, const char* const* argv, const char* const* envp);

/// The usage text: the command line of design.md, then one option per line with its
/// default, then the environment and file spellings. Ends with a newline.
[[nodiscard]] std::string usage(std::string_view program);

/// The `--version` line, e.g. `kv_server (otpkv) 0.1.0`, ending with a newline.
[[nodiscard]] std::string version_text(std::string_view program);

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

/// The bytes trimmed around keys and values, and between routes in OTPKV_ROUTE.
[[nodiscard]] constexpr bool is_config_space(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/// `s` without leading and trailing `is_config_space` bytes.
[[nodiscard]] constexpr std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && is_config_space(s.front())) {
        s.remove_prefix(1);
    }
    while (!s.empty() && is_config_space(s.back())) {
        s.remove_suffix(1);
    }
    return s;
}

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

/// `s` in single quotes for an error line: printable ASCII stays (`'` and `\` get a
/// backslash), any other byte becomes `\xHH`; past 80 bytes the rest is `...`.
[[nodiscard]] inline std::string error_quote(std::string_view s) {
    constexpr std::size_t limit = 80;
    constexpr std::string_view digits = "0123456789abcdef";
    std::string out = "'";
    const std::size_t n = s.size() < limit ? s.size() : limit;
    for (std::size_t i = 0; i < n; ++i) {
        const auto byte = static_cast<unsigned char>(s[i]);
        if (byte == '\'' || byte == '\\') {
            out += '\\';
            out += s[i];
        } else if (byte >= 0x20 && byte < 0x7f) {
            out += s[i];
        } else {
            out += "\\x";
            out += digits[byte >> 4];
            out += digits[byte & 0xf];
        }
    }
    if (s.size() > limit) {
        out += "...";
    }
    out += '\'';
    return out;
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

/// Splits OTPKV_ROUTE into routes at commas and whitespace. Each piece's `FIRST-LAST` is
/// read by position first, so a LAST of `,` stays inside its route.
[[nodiscard]] inline std::vector<std::string_view> split_routes(std::string_view s) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i < s.size()) {
        if (is_config_space(s[i]) || s[i] == ',') {
            ++i;
            continue;
        }
        std::size_t j = i + route_head_length(s.substr(i));
        while (j < s.size() && !is_config_space(s[j]) && s[j] != ',') {
            ++j;
        }
        out.push_back(s.substr(i, j - i));
        i = j;
    }
    return out;
}

/// The keys of a configuration, in usage order.
enum class config_key : std::uint8_t {
    config,
    node,
    bind,
    port,
    threads,
    route,
    max_line,
    max_connections,
    max_buckets
};

/// How one key is spelled in each source.
struct config_key_spelling {
    config_key key;
    std::string_view flag; ///< `--port`
    std::string_view file; ///< `port`
    std::string_view env;  ///< `OTPKV_PORT`
};

/// The one place the keys are spelled (the flags, the file and the environment read it).
inline constexpr std::array<config_key_spelling, 9> config_keys{{
    {config_key::config, "--config", "config", "OTPKV_CONFIG"},
    {config_key::node, "--node", "node", "OTPKV_NODE"},
    {config_key::bind, "--bind", "bind", "OTPKV_BIND"},
    {config_key::port, "--port", "port", "OTPKV_PORT"},
    {config_key::threads, "--threads", "threads", "OTPKV_THREADS"},
    {config_key::route, "--route", "route", "OTPKV_ROUTE"},
    {config_key::max_line, "--max-line", "max-line", "OTPKV_MAX_LINE"},
    {config_key::max_connections, "--max-connections", "max-connections", "OTPKV_MAX_CONNECTIONS"},
    {config_key::max_buckets, "--max-buckets", "max-buckets", "OTPKV_MAX_BUCKETS"},
}};

/// What one source (flags, environment or file) gave; nullopt or empty: not given.
struct config_layer {
    std::optional<std::string> config;
    std::optional<std::string> node;
    std::optional<std::string> bind;
    std::optional<std::uint16_t> port;
    std::optional<unsigned> threads;
    std::vector<route_entry> routes;
    std::optional<std::size_t> max_line;
    std::optional<std::size_t> max_connections;
    std::optional<std::size_t> max_buckets;
};

/// Stores a number from `lo` to `hi` into `slot`; returns "" or the reason it is bad.
template <class T>
[[nodiscard]] std::string set_number(std::optional<T>& slot, std::string_view value,
                                     std::uint64_t lo, std::uint64_t hi) {
    const auto number = parse_decimal(value, hi);
    if (!number || *number < lo) {
        return "expected a number from " + std::to_string(lo) + " to " + std::to_string(hi) +
               ", got " + error_quote(value);
    }
    slot = static_cast<T>(*number);
    return {};
}

/// Checks `value` for `key` and stores it in `layer`; a `route` value holds a list of
/// routes when `route_list` (OTPKV_ROUTE), else exactly one. Returns "" or the reason the
/// value is bad, without the source's name.
[[nodiscard]] inline std::string apply(config_layer& layer, config_key key, std::string_view value,
                                       bool route_list) {
    constexpr auto size_max = static_cast<std::uint64_t>(std::numeric_limits<std::size_t>::max());
    switch (key) {
    case config_key::config:
        if (value.empty()) {
            return "expected a file name, got ''";
        }
        layer.config = std::string(value);
        return {};
    case config_key::node:
        if (!is_node_name(value)) {
            return "expected a node name (1 to 255 of A-Z a-z 0-9 _ . -), got " +
                   error_quote(value);
        }
        layer.node = std::string(value);
        return {};
    case config_key::bind: {
        std::string_view address = value;
        if (address.size() >= 2 && address.front() == '[' && address.back() == ']') {
            address = address.substr(1, address.size() - 2);
            if (!is_ipv6(address)) {
                address = value; // brackets hold only IPv6
            }
        }
        if (!is_ipv4(address) && !is_ipv6(address)) {
            return "expected an IPv4 or IPv6 address, got " + error_quote(value);
        }
        layer.bind = std::string(address);
        return {};
    }
    case config_key::port:
        return set_number(layer.port, value, 0, std::numeric_limits<std::uint16_t>::max());
    case config_key::threads:
        return set_number(layer.threads, value, 1, 256);
    case config_key::route: {
        std::vector<std::string_view> texts;
        if (route_list) {
            texts = split_routes(value);
        } else {
            texts.push_back(value);
        }
        for (const std::string_view text : texts) {
            std::string why;
            auto route = parse_route(text, &why);
            if (!route) {
                return "bad route " + error_quote(text) + ": " + why;
            }
            layer.routes.push_back(std::move(*route));
        }
        return {};
    }
    case config_key::max_line:
        return set_number(layer.max_line, value, 1, size_max);
    case config_key::max_connections:
        return set_number(layer.max_connections, value, 1, size_max);
    case config_key::max_buckets:
        return set_number(layer.max_buckets, value, 1, size_max);
    }
    return "unknown key"; // not reached: the switch covers every key
}

/// Reads the config file at `path` (named by `source`, `--config` or `OTPKV_CONFIG`) into
/// `layer`; returns "" or the error line.
[[nodiscard]] inline std::string read_config_file(std::string_view source, const std::string& path,
                                                  config_layer& layer) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
        return std::string(source) + ": cannot read " + error_quote(path) + ": it is a directory";
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return std::string(source) + ": cannot open " + error_quote(path);
    }
    std::string line;
    std::size_t number = 0;
    while (std::getline(in, line)) {
        ++number;
        std::string_view text = line;
        if (number == 1 && text.starts_with("\xEF\xBB\xBF")) {
            text.remove_prefix(3); // a UTF-8 byte order mark
        }
        text = trim(text);
        if (text.empty() || text.front() == '#') {
            continue;
        }
        const std::string where = path + ":" + std::to_string(number) + ": ";
        const std::size_t equals = text.find('=');
        if (equals == std::string_view::npos) {
            return where + "expected 'key = value', got " + error_quote(text);
        }
        const std::string_view key = trim(text.substr(0, equals));
        const std::string_view value = trim(text.substr(equals + 1));
        const config_key_spelling* spelling = nullptr;
        for (const auto& k : config_keys) {
            if (k.file == key) {
                spelling = &k;
            }
        }
        if (spelling == nullptr) {
            return where + "unknown key " + error_quote(key);
        }
        if (spelling->key == config_key::config) {
            return where + "config: a config file cannot name another";
        }
        if (auto why = apply(layer, spelling->key, value, false); !why.empty()) {
            return where + std::string(key) + ": " + why;
        }
    }
    if (in.bad()) {
        return path + ": read error after line " + std::to_string(number);
    }
    return {};
}

/// Reads the flags into `layer`, and notes --help and --version; returns "" or the first
/// error. Keeps scanning after an error, so that a later --help still wins.
[[nodiscard]] inline std::string read_flags(int argc, const char* const* argv, config_layer& layer,
                                            bool& help, bool& ver) {
    std::string first_error;
    const auto fail = [&first_error](std::string message) {
        if (first_error.empty()) {
            first_error = std::move(message);
        }
    };
    for (int i = 1; i < argc && argv != nullptr && argv[i] != nullptr; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            help = true;
            continue;
        }
        if (arg == "--version") {
            ver = true;
            continue;
        }
        if (!arg.starts_with("--")) {
            fail(arg.size() > 1 && arg.front() == '-' ? "unknown flag " + error_quote(arg)
                                                      : "unexpected argument " + error_quote(arg));
            continue;
        }
        const std::size_t equals = arg.find('=');
        const std::string_view name = arg.substr(0, equals);
        if (name == "--help" || name == "--version") {
            fail(std::string(name) + ": takes no value");
            continue;
        }
        const config_key_spelling* spelling = nullptr;
        for (const auto& k : config_keys) {
            if (k.flag == name) {
                spelling = &k;
            }
        }
        if (spelling == nullptr) {
            fail("unknown flag " + error_quote(name));
            continue;
        }
        std::string_view value;
        if (equals != std::string_view::npos) {
            value = arg.substr(equals + 1);
        } else if (i + 1 < argc && argv[i + 1] != nullptr && argv[i + 1][0] != '-') {
            value = argv[++i];
        } else {
            fail(std::string(name) + ": missing value");
            continue;
        }
        if (auto why = apply(layer, spelling->key, value, false); !why.empty()) {
            fail(std::string(name) + ": " + why);
        }
    }
    return first_error;
}

/// Reads the nine OTPKV_* variables of `envp` into `layer`; returns "" or the first error.
[[nodiscard]] inline std::string read_environment(const char* const* envp, config_layer& layer) {
    std::array<bool, config_keys.size()> seen{};
    for (const char* const* entry = envp; entry != nullptr && *entry != nullptr; ++entry) {
        const std::string_view text = *entry;
        const std::size_t equals = text.find('=');
        if (!text.starts_with("OTPKV_") || equals == std::string_view::npos) {
            continue;
        }
        const std::string_view name = text.substr(0, equals);
        const std::string_view value = text.substr(equals + 1);
        for (std::size_t k = 0; k < config_keys.size(); ++k) {
            if (config_keys[k].env != name || seen[k]) {
                continue;
            }
            seen[k] = true;
            if (value.empty()) {
                continue; // set to "": unset
            }
            if (auto why = apply(layer, config_keys[k].key, value, true); !why.empty()) {
                return std::string(name) + ": " + why;
            }
        }
    }
    return {};
}

/// The first of `values` that is set, else `fallback`.
template <class T, class... Optionals>
[[nodiscard]] T first_given(T fallback, const Optionals&... values) {
    std::optional<T> chosen;
    ((chosen = chosen ? chosen : values), ...);
    return chosen ? *chosen : fallback;
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

inline config_load load_config(int argc, const char* const* argv, const char* const* envp) {
    config_load result;
    detail::config_layer flags;
    detail::config_layer env;
    detail::config_layer file;
    result.error = detail::read_flags(argc, argv, flags, result.help, result.version);
    if (result.help || result.version) {
        result.error.clear();
        return result;
    }
    if (result.error.empty()) {
        result.error = detail::read_environment(envp, env);
    }
    if (result.error.empty() && (flags.config || env.config)) {
        result.error = flags.config ? detail::read_config_file("--config", *flags.config, file)
                                    : detail::read_config_file("OTPKV_CONFIG", *env.config, file);
    }
    if (!result.error.empty()) {
        return result;
    }
    node_config& c = result.config;
    c.node = detail::first_given(c.node, flags.node, env.node, file.node);
    c.bind = detail::first_given(c.bind, flags.bind, env.bind, file.bind);
    c.port = detail::first_given(c.port, flags.port, env.port, file.port);
    c.threads = detail::first_given(c.threads, flags.threads, env.threads, file.threads);
    c.max_line = detail::first_given(c.max_line, flags.max_line, env.max_line, file.max_line);
    c.max_connections = detail::first_given(c.max_connections, flags.max_connections,
                                            env.max_connections, file.max_connections);
    c.max_buckets =
        detail::first_given(c.max_buckets, flags.max_buckets, env.max_buckets, file.max_buckets);
    for (detail::config_layer* layer : {&flags, &env, &file}) {
        if (!layer->routes.empty()) {
            c.routes = std::move(layer->routes);
            break;
        }
    }
    return result;
}

inline std::string usage(std::string_view program) {
    const node_config defaults;
    const std::string name(program);
    const std::string indent(7 + name.size() + 1, ' ');
    std::string text;
    text += "usage: " + name + " [--config FILE] [--node NAME] [--bind ADDR] [--port N]\n";
    text += indent + "[--threads N] [--route FIRST-LAST=NAME@HOST:PORT]...\n";
    text += indent + "[--max-line BYTES] [--max-connections N] [--max-buckets N]\n";
    text += "       " + name + " --help | --version\n";
    text += "\nRuns one otpkv node. Options, with their defaults:\n";
    const auto option = [&text](std::string_view flag, std::string_view what) {
        constexpr std::size_t column = 24;
        text += "  ";
        text += flag;
        text += flag.size() + 2 < column ? std::string(column - 2 - flag.size(), ' ')
                                         : "\n" + std::string(column, ' ');
        text += what;
        text += '\n';
    };
    option("--config FILE", "read 'key = value' lines from FILE (default: none)");
    option("--node NAME",
           "this node's name, 1-255 of A-Z a-z 0-9 _ . - (default: " + defaults.node + ")");
    option("--bind ADDR", "IPv4 or IPv6 address to listen on (default: " + defaults.bind + ")");
    option("--port N",
           "TCP port, 0 for an ephemeral one (default: " + std::to_string(defaults.port) + ")");
    option("--threads N", "event-loop threads, 1 to 256 (default: the hardware threads)");
    option("--route FIRST-LAST=NAME@HOST:PORT",
           "buckets whose name starts with a byte from FIRST to LAST live on node\n" +
               std::string(24, ' ') +
               "NAME at HOST:PORT; repeatable (default: none, every bucket is local)");
    option("--max-line BYTES",
           "longest request line (default: " + std::to_string(defaults.max_line) + ")");
    option("--max-connections N",
           "most open connections (default: " + std::to_string(defaults.max_connections) + ")");
    option("--max-buckets N",
           "most buckets (default: " + std::to_string(defaults.max_buckets) + ")");
    option("-h, --help", "print this text and exit");
    option("--version", "print the version and exit");
    text += "\nEach option can also be set in the environment (OTPKV_NODE, OTPKV_MAX_LINE, ...;\n"
            "OTPKV_ROUTE holds routes separated by commas or spaces) or in the config file\n"
            "('max-line = 100', one 'route = ...' line per route). Flags win over the\n"
            "environment, which wins over the file.\n";
    return text;
}

inline std::string version_text(std::string_view program) {
    return std::string(program) + " (otpkv) " + std::to_string(OTPKV_VERSION_MAJOR) + "." +
           std::to_string(OTPKV_VERSION_MINOR) + "." + std::to_string(OTPKV_VERSION_PATCH) + "\n";
}

} // namespace v0
} // namespace otpkv
