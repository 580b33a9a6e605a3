// SPDX-License-Identifier: MIT
/// @file
/// A node's configuration (design.md, "Node and kv_server"): `node_config` holds the values,
/// `load_config` reads them from command-line flags, `OTPKV_*` environment variables and a
/// config file, `usage` prints the command line. Routes are read by `parse_route`
/// (route.hpp).
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
///     --cookie COOKIE          OTPKV_COOKIE           cookie = COOKIE
///     --cookie-file FILE       OTPKV_COOKIE_FILE      cookie-file = FILE
///     --idle-timeout SECONDS   OTPKV_IDLE_TIMEOUT     idle-timeout = SECONDS
///     --max-subscriber-memory BYTES
///                              OTPKV_MAX_SUBSCRIBER_MEMORY
///                                                     max-subscriber-memory = BYTES
///     --log-level LEVEL        OTPKV_LOG_LEVEL        log-level = LEVEL
///     --admin-port N           OTPKV_ADMIN_PORT       admin-port = N
///     --admin-bind ADDR        OTPKV_ADMIN_BIND       admin-bind = ADDR
///     --etcd URL[,URL...]      OTPKV_ETCD             etcd = URL[,URL...]
///     --replicas R             OTPKV_REPLICAS         replicas = R
///     --lease-ms MS            OTPKV_LEASE_MS         lease-ms = MS
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
/// Environment: only the variables above are read; other `OTPKV_*` variables (build
/// settings, say) are ignored, as are entries without `=`. When a variable appears twice in
/// the array the first one counts, as with `getenv`. A variable set to the empty string
/// counts as unset. `OTPKV_ROUTE` holds one or more routes separated by commas and/or
/// whitespace (`a-m=foo@127.0.0.1:4040, n-z=bar@127.0.0.1:4041`); inside it write a
/// FIRST byte `,` as `\x2c`. A comma also separates the nodes of one route, so the list is
/// read in pieces between commas and whitespace: a piece that starts with a route's
/// `FIRST-LAST=` (read by position, so a LAST of `,` stays in it) begins a new route, and
/// any other piece is one more node of the route before it:
/// `a-m=n1@h:4041,n2@h:4042 n-z=n2@h:4042, n3@h:4043` is two routes of two nodes each.
/// `--route` and the file's `route = ...` take one route each, which may name several nodes
/// (commas, no spaces). `load_config` never reads the process's environment by itself: the
/// caller passes `environ` (or a test passes its own array).
///
/// Config file (from `--config`, else `OTPKV_CONFIG`): one `key = value` per line, keys
/// being the flag names without their leading dashes; in a key, `_` may be written for `-`
/// (`idle_timeout` and `idle-timeout` are the same key). Whitespace around the key and the
/// value is trimmed (a CR before the LF too); blank lines and lines whose first non-blank
/// byte is `#` are ignored; `#` elsewhere is part of the value (there are no trailing
/// comments). A UTF-8 byte order mark at the start is skipped. A key given twice (in either
/// spelling) keeps the last value; `route` lines add one route each. A file cannot name another
/// file (`config = ...`).
///
/// Values: numbers are decimal digits only (no sign, no spaces, no `0x`; leading zeros are
/// fine), range-checked, with overflow detected. A log level is `error`, `warning`, `info` or
/// `debug`, in lower case. A node name is 1 to 255 bytes of
/// `[A-Za-z0-9_.-]`. An address to bind is an IPv4 dotted quad (four decimal parts 0-255
/// without leading zeros, which `inet_aton` would read as octal) or an IPv6 literal (bare
/// or in brackets, stored bare; an embedded IPv4 tail is allowed, a `%zone` is not).
/// Routes: see `parse_route` in route.hpp. etcd URLs (`--etcd`): one or more
/// `http://HOST:PORT` (see `parse_http_url` in route.hpp), separated by commas and/or
/// whitespace, no endpoint twice. `--replicas`: 1 to `max_route_nodes` (7). `--lease-ms`:
/// 100 to 60000. A cookie is any non-empty value (bytes other than the separators, in a flag
/// or variable; inner spaces are kept in a file's `cookie = ...`).
///
/// The cluster cookie (as Erlang's): `--cookie` gives it, `--cookie-file` names a file that
/// holds it (its contents, whitespace trimmed at both ends; an empty file is an error). The
/// two are one setting: the highest source that gives either supplies it, and one source
/// giving both is an error. Only the file that is used is read; a cookie file that others
/// than its owner may read or change is used, with a warning (`config_load::warnings`;
/// Erlang refuses such a file, we say how to fix it: `chmod 400`). With neither, `cookie` is
/// left empty and the program decides: kv_server then uses `home_cookie` (`~/.otpkv.cookie`,
/// created when missing), when its table names another node.
///
/// Replication (issue 16): a route naming several nodes names its range's replica set, which
/// chain replication keeps with etcd (`--etcd`) as the membership authority; `--replicas R`
/// is each range's chain length (unset: as many nodes as its route names) and `--lease-ms`
/// the node's etcd lease. `load_config` checks each value; `replication_config_error` checks
/// them together, by these rules:
/// - a route naming several nodes needs `--etcd` (without a membership authority there is
///   no chain to keep);
/// - `--replicas R` with R > 1 needs `--etcd` too, and every route must name at least R
///   nodes (with no route at all, R > 1 is refused: every bucket is local); `--replicas 1`
///   is always fine;
/// - `--etcd` with routes that each name one node (or with none) is fine, and so is
///   `--lease-ms` without `--etcd` (it is then unused).
/// Its messages use the flags' spellings, whichever source gave the value.
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
/// `load_config` reading the config file and a cookie file, and `home_cookie`, so any thread may
/// call them, on arguments no other thread is writing.
///
/// Includes: the config file is read with `<cstdio>`, not `<fstream>` and `<filesystem>`.
/// Those two add some 9,000 preprocessed lines (libstdc++ 12), about 8% of node.hpp and of
/// the umbrella otpkv.hpp, which include this header, to read one small file once; a
/// directory is recognised by the `EISDIR` it gives instead of `is_directory`. No otpkv
/// header includes `<fstream>`, `<filesystem>` or `<iostream>`.
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/detail/cookie_file.hpp>
#include <otpkv/log.hpp>
#include <otpkv/route.hpp>
#include <otpkv/version.hpp>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

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
    std::vector<route_entry> routes{};
    /// `--max-line BYTES`: longest request line, terminator not counted; at least 1.
    std::size_t max_line = default_max_line;
    /// `--max-connections N`: most connections open at once; at least 1.
    std::size_t max_connections = 10000;
    /// `--max-buckets N`: most buckets at once; at least 1.
    std::size_t max_buckets = 1'000'000;
    /// `--cookie COOKIE`, or the contents of `--cookie-file FILE`: the cluster cookie, which
    /// peers prove they know (router.hpp). Empty: none given.
    std::string cookie{};
    /// `--idle-timeout SECONDS`: an idle client connection (nothing in flight, no
    /// subscription) that sends nothing for this long is closed; 0 to 2147483647, 0: never
    /// (`server_options::idle_timeout`).
    std::chrono::seconds idle_timeout{300};
    /// `--max-subscriber-memory BYTES`: unsent event bytes of all subscribers together past
    /// which the largest backlogs are disconnected (`server_options::max_subscriber_memory`);
    /// at least 1.
    std::size_t max_subscriber_memory = std::size_t{256} << 20;
    /// `--log-level LEVEL`: the least level of the events kv_server writes to stderr.
    otpkv::log_level log_level = otpkv::log_level::info;
    /// `--admin-port N`: the port of the admin HTTP endpoint (net/admin.hpp), 0 to 65535,
    /// 0 taking an ephemeral one. Not given (the default): no admin endpoint. "Off" is the
    /// empty optional, since 0 already means "any free port".
    std::optional<std::uint16_t> admin_port{};
    /// `--admin-bind ADDR`: the address the admin endpoint listens on (as `bind`).
    std::string admin_bind = "127.0.0.1";
    /// `--etcd URL[,URL...]`: the client URLs of the etcd cluster that is the membership
    /// authority of replicated ranges (route.hpp, `parse_http_url`), in the order given.
    /// Empty (the default): no etcd.
    std::vector<http_endpoint> etcd{};
    /// `--replicas R`: each range's chain length, 1 to `max_route_nodes`. Unset (the
    /// default): as many nodes as its route names.
    std::optional<std::size_t> replicas{};
    /// `--lease-ms MS`: this node's etcd lease (how long after its last keep-alive etcd
    /// counts it dead), 100 to 60000 ms.
    std::chrono::milliseconds lease{1000};
    /// **Tests only**, never read from flags, files or `OTPKV_*` variables: the heads of
    /// replicated ranges acknowledge writes before their chains have them (unsafe: writes
    /// acknowledged and then lost), to show that the tests' linearizability checker sees it.
    /// kv_server sets it from `OTPKV_TEST_UNSAFE_ACK_AT_HEAD=1`, with a warning.
    bool unsafe_ack_at_head = false;

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
    /// Lines to show the operator although the configuration is valid (a cookie file that
    /// others may read), without a program name.
    std::vector<std::string> warnings;

    /// True when no error was found.
    [[nodiscard]] bool ok() const noexcept { return error.empty(); }
};

/// Reads the configuration by the rules at the top of this file. `argv` holds `argc`
/// argv-style flags (argv[0] is the program; argv may be null when argc is 0), `envp` a
/// null-terminated "KEY=VALUE" array like `environ` (may be null). Reads the config file
/// named by `--config` or `OTPKV_CONFIG`, if any. Never throws for bad input (only
/// `std::bad_alloc`).
[[nodiscard]] config_load load_config(int argc, const char* const* argv, const char* const* envp);

/// What `home_cookie` found.
struct cookie_load {
    std::string cookie; ///< the cookie, when ok()
    /// Empty on success; otherwise one line saying why there is no cookie.
    std::string error;
    /// Lines to show the operator (a cookie file that others may read), also on success.
    std::vector<std::string> warnings;
    std::string path;     ///< the file read (or that could not be read)
    bool created = false; ///< the file did not exist, and this call made it

    /// True when a cookie was found.
    [[nodiscard]] bool ok() const noexcept { return error.empty(); }
};

/// The cookie of a node given none, as Erlang finds it: the contents of `$HOME/.otpkv.cookie`
/// (`HOME` from `envp`, a `environ`-like array), created when missing with 32 random letters
/// A-Z and mode 0400. Creating is atomic (a temporary file linked to the name, never
/// replacing one), so nodes of one user started at the same moment all read the same cookie.
/// Errors: HOME unset or empty, the file cannot be read or made, or it is empty. A file that
/// others than its owner may read or change is used, with a warning.
[[nodiscard]] cookie_load home_cookie(const char* const* envp);

/// Checks the replication settings of `c` together (the rules at the top of this file):
/// empty when they are fine, else one line saying what is wrong and why, without a program
/// name, e.g. `route a-m names 3 nodes (a replica set): replication needs --etcd URL, ...`.
/// A program prints it and exits with status 2, as for `config_load::error`.
/// Complexity: linear in the routes. Thread safety: a pure function.
[[nodiscard]] std::string replication_config_error(const node_config& c);

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

/// Splits OTPKV_ROUTE into the texts of its routes. Pieces are separated by commas and/or
/// whitespace. A piece that starts with a route's `FIRST-LAST=` (read by position, so a
/// LAST of `,` stays inside it) begins a new route; any other piece is one more node of the
/// route before it, joined to it with a `,`. A first piece that is no route's start stands
/// alone (parse_route then says what is wrong with it).
[[nodiscard]] inline std::vector<std::string> split_routes(std::string_view s) {
    std::vector<std::string> out;
    std::size_t i = 0;
    while (i < s.size()) {
        if (is_config_space(s[i]) || s[i] == ',') {
            ++i;
            continue;
        }
        const bool starts = starts_route(s.substr(i));
        std::size_t j = starts ? i + route_head_length(s.substr(i)) + 1 : i;
        while (j < s.size() && !is_config_space(s[j]) && s[j] != ',') {
            ++j;
        }
        const std::string_view piece = s.substr(i, j - i);
        if (starts || out.empty()) {
            out.emplace_back(piece);
        } else {
            out.back() += ',';
            out.back() += piece;
        }
        i = j;
    }
    return out;
}

/// Splits a list of values (`--etcd`'s URLs) at commas and whitespace; empty pieces are
/// skipped.
[[nodiscard]] inline std::vector<std::string_view> split_list(std::string_view s) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i < s.size()) {
        if (is_config_space(s[i]) || s[i] == ',') {
            ++i;
            continue;
        }
        std::size_t j = i;
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
    max_buckets,
    cookie,
    cookie_file,
    idle_timeout,
    max_subscriber_memory,
    log_level,
    admin_port,
    admin_bind,
    etcd,
    replicas,
    lease_ms
};

/// How one key is spelled in each source.
struct config_key_spelling {
    config_key key;
    std::string_view flag; ///< `--port`
    std::string_view file; ///< `port`
    std::string_view env;  ///< `OTPKV_PORT`
};

/// The one place the keys are spelled (the flags, the file and the environment read it).
inline constexpr std::array<config_key_spelling, 19> config_keys{{
    {config_key::config, "--config", "config", "OTPKV_CONFIG"},
    {config_key::node, "--node", "node", "OTPKV_NODE"},
    {config_key::bind, "--bind", "bind", "OTPKV_BIND"},
    {config_key::port, "--port", "port", "OTPKV_PORT"},
    {config_key::threads, "--threads", "threads", "OTPKV_THREADS"},
    {config_key::route, "--route", "route", "OTPKV_ROUTE"},
    {config_key::max_line, "--max-line", "max-line", "OTPKV_MAX_LINE"},
    {config_key::max_connections, "--max-connections", "max-connections", "OTPKV_MAX_CONNECTIONS"},
    {config_key::max_buckets, "--max-buckets", "max-buckets", "OTPKV_MAX_BUCKETS"},
    {config_key::cookie, "--cookie", "cookie", "OTPKV_COOKIE"},
    {config_key::cookie_file, "--cookie-file", "cookie-file", "OTPKV_COOKIE_FILE"},
    {config_key::idle_timeout, "--idle-timeout", "idle-timeout", "OTPKV_IDLE_TIMEOUT"},
    {config_key::max_subscriber_memory, "--max-subscriber-memory", "max-subscriber-memory",
     "OTPKV_MAX_SUBSCRIBER_MEMORY"},
    {config_key::log_level, "--log-level", "log-level", "OTPKV_LOG_LEVEL"},
    {config_key::admin_port, "--admin-port", "admin-port", "OTPKV_ADMIN_PORT"},
    {config_key::admin_bind, "--admin-bind", "admin-bind", "OTPKV_ADMIN_BIND"},
    {config_key::etcd, "--etcd", "etcd", "OTPKV_ETCD"},
    {config_key::replicas, "--replicas", "replicas", "OTPKV_REPLICAS"},
    {config_key::lease_ms, "--lease-ms", "lease-ms", "OTPKV_LEASE_MS"},
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
    std::optional<std::string> cookie;
    std::optional<std::string> cookie_file;
    std::optional<std::chrono::seconds::rep> idle_timeout;
    std::optional<std::size_t> max_subscriber_memory;
    std::optional<otpkv::log_level> log_level;
    std::optional<std::uint16_t> admin_port;
    std::optional<std::string> admin_bind;
    std::optional<std::vector<http_endpoint>> etcd;
    std::optional<std::size_t> replicas;
    std::optional<std::chrono::milliseconds::rep> lease_ms;
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

/// The longest `--idle-timeout`, in seconds (68 years: as milliseconds it fits any clock).
inline constexpr std::uint64_t max_idle_timeout = 2147483647;

/// The shortest and the longest `--lease-ms`, in milliseconds.
inline constexpr std::uint64_t min_lease_ms = 100;
inline constexpr std::uint64_t max_lease_ms = 60000;

/// `key` as the config file's table spells it: a `_` read as `-`.
[[nodiscard]] inline std::string file_key(std::string_view key) {
    std::string out(key);
    for (char& c : out) {
        if (c == '_') {
            c = '-';
        }
    }
    return out;
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
    case config_key::bind:
    case config_key::admin_bind: {
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
        (key == config_key::bind ? layer.bind : layer.admin_bind) = std::string(address);
        return {};
    }
    case config_key::port:
        return set_number(layer.port, value, 0, std::numeric_limits<std::uint16_t>::max());
    case config_key::threads:
        return set_number(layer.threads, value, 1, 256);
    case config_key::route: {
        std::vector<std::string> texts;
        if (route_list) {
            texts = split_routes(value);
        } else {
            texts.emplace_back(value);
        }
        for (const std::string& text : texts) {
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
    case config_key::cookie:
        if (value.empty()) {
            return "expected a cookie, got '' (an empty cookie proves nothing)";
        }
        layer.cookie = std::string(value);
        return {};
    case config_key::cookie_file:
        if (value.empty()) {
            return "expected a file name, got ''";
        }
        layer.cookie_file = std::string(value);
        return {};
    case config_key::idle_timeout:
        return set_number(layer.idle_timeout, value, 0, max_idle_timeout);
    case config_key::max_subscriber_memory:
        return set_number(layer.max_subscriber_memory, value, 1, size_max);
    case config_key::log_level:
        layer.log_level = parse_log_level(value);
        if (!layer.log_level) {
            return "expected error, warning, info or debug, got " + error_quote(value);
        }
        return {};
    case config_key::admin_port:
        return set_number(layer.admin_port, value, 0, std::numeric_limits<std::uint16_t>::max());
    case config_key::etcd: {
        std::vector<http_endpoint> endpoints;
        for (const std::string_view url : split_list(value)) {
            std::string why;
            auto endpoint = parse_http_url(url, &why);
            if (!endpoint) {
                return "bad etcd URL " + error_quote(url) + ": " + why;
            }
            for (const http_endpoint& earlier : endpoints) {
                if (earlier == *endpoint) {
                    return "etcd URL " + error_quote(url) + " names " + to_string(earlier) +
                           " again";
                }
            }
            endpoints.push_back(std::move(*endpoint));
        }
        if (endpoints.empty()) {
            return "expected one or more etcd URLs (http://HOST:PORT), got " + error_quote(value);
        }
        layer.etcd = std::move(endpoints);
        return {};
    }
    case config_key::replicas:
        return set_number(layer.replicas, value, 1, max_route_nodes);
    case config_key::lease_ms:
        return set_number(layer.lease_ms, value, min_lease_ms, max_lease_ms);
    }
    return "unknown key"; // not reached: the switch covers every key
}

/// The longest line a config file may have, in bytes.
inline constexpr std::size_t max_config_line = std::size_t{1} << 20;

/// Closes the file of a `std::unique_ptr<std::FILE, file_closer>`.
struct file_closer {
    void operator()(std::FILE* f) const noexcept {
        // Opened for reading: a failed close loses nothing.
        (void)std::fclose(f); // NOLINT(cppcoreguidelines-owning-memory): `f` is the owner
    }
};

/// Reads the config file at `path` (named by `source`, `--config` or `OTPKV_CONFIG`) into
/// `layer`; returns "" or the error line. Lines end at LF; a last line without one counts.
/// A directory is told apart by the `EISDIR` that opening or reading it gives (Linux, the
/// BSDs and macOS); elsewhere reading one is some other error.
[[nodiscard]] inline std::string read_config_file(std::string_view source, const std::string& path,
                                                  config_layer& layer) {
    const std::string cannot = std::string(source) + ": cannot ";
    // NOLINTNEXTLINE(cppcoreguidelines-owning-memory): the unique_ptr owns the FILE
    const std::unique_ptr<std::FILE, file_closer> file(std::fopen(path.c_str(), "rb"));
    if (!file) {
        return errno == EISDIR ? cannot + "read " + error_quote(path) + ": it is a directory"
                               : cannot + "open " + error_quote(path);
    }
    std::string line;
    std::size_t number = 0;
    for (;;) {
        line.clear();
        int c = 0;
        while ((c = std::getc(file.get())) != EOF && c != '\n') {
            if (line.size() == max_config_line) { // /dev/zero, say: no config line is that long
                return path + ":" + std::to_string(number + 1) + ": longer than " +
                       std::to_string(max_config_line) + " bytes";
            }
            line += static_cast<char>(c);
        }
        if (c == EOF && std::ferror(file.get()) != 0) {
            if (errno == EISDIR && number == 0) {
                return cannot + "read " + error_quote(path) + ": it is a directory";
            }
            return path + ": read error after line " + std::to_string(number);
        }
        if (c == EOF && line.empty()) {
            return {};
        }
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
        const std::string spelled = file_key(key);
        const config_key_spelling* spelling = nullptr;
        for (const auto& k : config_keys) {
            if (k.file == spelled) {
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

/// Reads the OTPKV_* variables of `config_keys` from `envp` into `layer`; returns "" or the first
/// error.
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
    c.idle_timeout = std::chrono::seconds(detail::first_given(
        c.idle_timeout.count(), flags.idle_timeout, env.idle_timeout, file.idle_timeout));
    c.max_subscriber_memory =
        detail::first_given(c.max_subscriber_memory, flags.max_subscriber_memory,
                            env.max_subscriber_memory, file.max_subscriber_memory);
    c.log_level = detail::first_given(c.log_level, flags.log_level, env.log_level, file.log_level);
    c.admin_bind =
        detail::first_given(c.admin_bind, flags.admin_bind, env.admin_bind, file.admin_bind);
    for (const auto* port : {&flags.admin_port, &env.admin_port, &file.admin_port}) {
        if (*port) {
            c.admin_port = *port;
            break;
        }
    }
    for (detail::config_layer* layer : {&flags, &env, &file}) {
        if (!layer->routes.empty()) {
            c.routes = std::move(layer->routes);
            break;
        }
    }
    for (detail::config_layer* layer : {&flags, &env, &file}) {
        if (layer->etcd) {
            c.etcd = std::move(*layer->etcd);
            break;
        }
    }
    for (const auto* replicas : {&flags.replicas, &env.replicas, &file.replicas}) {
        if (*replicas) {
            c.replicas = *replicas;
            break;
        }
    }
    c.lease = std::chrono::milliseconds(
        detail::first_given(c.lease.count(), flags.lease_ms, env.lease_ms, file.lease_ms));
    // The cookie: the highest source that gives it, either way.
    const auto& cookie_key =
        detail::config_keys[static_cast<std::size_t>(detail::config_key::cookie)];
    const auto& file_key =
        detail::config_keys[static_cast<std::size_t>(detail::config_key::cookie_file)];
    const std::string config_path = flags.config ? *flags.config : env.config.value_or("");
    const std::array<std::pair<detail::config_layer*, int>, 3> sources{
        {{&flags, 0}, {&env, 1}, {&file, 2}}};
    for (const auto& [layer, which] : sources) {
        const auto spell = [which = which](const detail::config_key_spelling& k) {
            return std::string(which == 0 ? k.flag : which == 1 ? k.env : k.file);
        };
        const std::string where = which == 2 ? config_path + ": " : std::string();
        if (layer->cookie && layer->cookie_file) {
            result.error =
                where + spell(cookie_key) + " and " + spell(file_key) + ": give one, not both";
            return result;
        }
        if (layer->cookie) {
            c.cookie = *layer->cookie;
            break;
        }
        if (layer->cookie_file) {
            auto read = detail::read_cookie(*layer->cookie_file);
            if (!read.error.empty()) {
                result.error = where + spell(file_key) + ": " + read.error;
                return result;
            }
            c.cookie = std::move(read.cookie);
            result.warnings = std::move(read.warnings);
            break;
        }
    }
    return result;
}

inline std::string replication_config_error(const node_config& c) {
    const auto range = [](const route_entry& r) {
        return "route " + detail::route_range_text(r.first, r.last);
    };
    const auto nodes = [](std::size_t n) {
        return std::to_string(n) + (n == 1 ? " node" : " nodes");
    };
    if (c.etcd.empty()) {
        for (const route_entry& r : c.routes) {
            if (!r.replicas.empty()) {
                return range(r) + " names " + nodes(1 + r.replicas.size()) +
                       " (a replica set): replication needs --etcd URL, the membership "
                       "authority that keeps each range's chain; give --etcd or name one node "
                       "per route";
            }
        }
    }
    if (!c.replicas || *c.replicas <= 1) {
        return {};
    }
    const std::string asked = "--replicas " + std::to_string(*c.replicas);
    if (c.etcd.empty()) {
        return asked + " needs --etcd URL: a chain of more than one node is kept by etcd, the "
                       "membership authority; give --etcd, or leave --replicas out";
    }
    if (c.routes.empty()) {
        return asked +
               ": there is no route, so every bucket is local to this node and has no "
               "chain; give routes that name " +
               nodes(*c.replicas) + " or more";
    }
    for (const route_entry& r : c.routes) {
        if (1 + r.replicas.size() < *c.replicas) {
            return asked + " is more than " + range(r) + " names (" + nodes(1 + r.replicas.size()) +
                   "): a range's chain is made of the nodes its route names";
        }
    }
    return {};
}

inline cookie_load home_cookie(const char* const* envp) {
    cookie_load result;
    std::string_view home;
    for (const char* const* entry = envp; entry != nullptr && *entry != nullptr; ++entry) {
        const std::string_view text = *entry;
        if (text.starts_with("HOME=")) {
            home = text.substr(5);
            break;
        }
    }
    if (home.empty()) {
        result.error = "no cluster cookie: HOME is not set, so there is no ~/.otpkv.cookie "
                       "(give --cookie or --cookie-file)";
        return result;
    }
    result.path = std::string(home);
    if (result.path.back() != '/') {
        result.path += '/';
    }
    result.path += ".otpkv.cookie";
    auto read = detail::read_or_create_cookie(result.path);
    result.error = std::move(read.error);
    result.cookie = std::move(read.cookie);
    result.warnings = std::move(read.warnings);
    result.created = read.created;
    return result;
}

inline std::string usage(std::string_view program) {
    const node_config defaults;
    const std::string name(program);
    const std::string indent(7 + name.size() + 1, ' ');
    std::string text;
    text += "usage: " + name + " [--config FILE] [--node NAME] [--bind ADDR] [--port N]\n";
    text += indent + "[--threads N] [--route FIRST-LAST=NAME@HOST:PORT[,NAME@HOST:PORT]...]...\n";
    text += indent + "[--max-line BYTES] [--max-connections N] [--max-buckets N]\n";
    text += indent + "[--cookie COOKIE | --cookie-file FILE]\n";
    text += indent + "[--idle-timeout SECONDS]\n";
    text += indent + "[--max-subscriber-memory BYTES]\n";
    text += indent + "[--log-level LEVEL] [--admin-port N] [--admin-bind ADDR]\n";
    text += indent + "[--etcd URL[,URL...]] [--replicas R] [--lease-ms MS]\n";
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
    option("--route FIRST-LAST=NAME@HOST:PORT[,NAME@HOST:PORT]...",
           "buckets whose name starts with a byte from FIRST to LAST live on node\n" +
               std::string(24, ' ') +
               "NAME at HOST:PORT; repeatable (default: none, every bucket is local);\n" +
               std::string(24, ' ') +
               "several nodes are the range's replica set, preferred first (needs --etcd)");
    option("--max-line BYTES",
           "longest request line (default: " + std::to_string(defaults.max_line) + ")");
    option("--max-connections N",
           "most open connections (default: " + std::to_string(defaults.max_connections) + ")");
    option("--max-buckets N",
           "most buckets (default: " + std::to_string(defaults.max_buckets) + ")");
    option("--cookie COOKIE", "the cluster cookie, which peers prove they know (default: the\n" +
                                  std::string(24, ' ') +
                                  "contents of ~/.otpkv.cookie, made at random when missing)");
    option("--cookie-file FILE", "read the cluster cookie from FILE (mode 0400, like the default)");
    option("--idle-timeout SECONDS",
           "close a client connection idle for that long, 0: never (default: " +
               std::to_string(defaults.idle_timeout.count()) + ")");
    option("--max-subscriber-memory BYTES",
           "unsent events of all subscribers together; past it the largest\n" +
               std::string(24, ' ') + "backlogs are disconnected (default: " +
               std::to_string(defaults.max_subscriber_memory) + ")");
    option("--log-level LEVEL",
           "least level of the events written to stderr: error, warning, info\n" +
               std::string(24, ' ') +
               "or debug (default: " + std::string(to_string(defaults.log_level)) + ")");
    option("--admin-port N", "serve the admin HTTP endpoint (/metrics, /tree.json,\n" +
                                 std::string(24, ' ') +
                                 "/cluster.json, /) on port N, 0 for an ephemeral one\n" +
                                 std::string(24, ' ') + "(default: none, no admin endpoint)");
    option("--admin-bind ADDR",
           "IPv4 or IPv6 address of the admin endpoint (default: " + defaults.admin_bind + ")");
    option("--etcd URL[,URL...]",
           "etcd client URLs (http://HOST:PORT) for replication (default: none)");
    option("--replicas R", "chain length of each range, 1 to " + std::to_string(max_route_nodes) +
                               " (default: the nodes its route names)");
    option("--lease-ms MS", "this node's etcd lease in ms, " +
                                std::to_string(detail::min_lease_ms) + " to " +
                                std::to_string(detail::max_lease_ms) +
                                " (default: " + std::to_string(defaults.lease.count()) + ")");
    option("-h, --help", "print this text and exit");
    option("--version", "print the version and exit");
    text += "\nEach option can also be set in the environment (OTPKV_NODE, OTPKV_MAX_LINE, ...;\n"
            "OTPKV_ROUTE holds routes separated by commas or spaces) or in the config file\n"
            "('max-line = 100' or 'max_line = 100', one 'route = ...' line per route).\n"
            "Flags win over the environment, which wins over the file.\n";
    return text;
}

inline std::string version_text(std::string_view program) {
    return std::string(program) + " (otpkv) " + std::to_string(OTPKV_VERSION_MAJOR) + "." +
           std::to_string(OTPKV_VERSION_MINOR) + "." + std::to_string(OTPKV_VERSION_PATCH) + "\n";
}

} // namespace v0
} // namespace otpkv
