// SPDX-License-Identifier: MIT
/// @file
/// The guide's line protocol (shared/protocol.md): framing bytes into lines, parsing a line
/// into a command, and formatting every reply byte for byte.
///
/// Nothing here allocates per command: `parse` returns views into the line, the framer
/// hands out views into its own buffer, and replies are appended to any byte sink (a
/// `std::string`, or a server's output buffer). No sockets and no threads are involved.
///
/// Thread safety: `parse`, `to_string`, `escaped` and the reply functions are pure: any
/// thread may call them on data no other thread is writing. `command`, `frame` and `reply`
/// are plain values. A `line_framer` is used by one thread at a time.
#pragma once

#include <otpkv/detail/sha256.hpp>
#include <otpkv/process.hpp>
#include <otpkv/route.hpp> // is_node_name

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace otpkv {
inline namespace v0 {

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// Default longest accepted line, in bytes, terminator not counted (protocol.md, Limits).
inline constexpr std::size_t default_max_line = 65536;

/// What a request line asks for. `erase` is the guide's DELETE (`delete` being a C++
/// keyword; the bucket's operation has the same name).
enum class command_kind : std::uint8_t {
    unknown,   ///< unknown verb, wrong number of tokens, empty or blank line
    create,    ///< `CREATE bucket`
    put,       ///< `PUT bucket key value`
    get,       ///< `GET bucket key`
    erase,     ///< `DELETE bucket key`
    subscribe, ///< `SUBSCRIBE bucket`
    info       ///< `INFO [SECTION] [NODE]`: a look inside this node or another one
};

/// One parsed request. The views point into the line that was parsed, so a command is
/// valid only as long as that line's bytes are. Fields a kind does not use are empty; the
/// tokens a kind uses are never empty (INFO's two are optional: empty when not given).
struct command {
    command_kind kind = command_kind::unknown; ///< what is asked
    std::string_view bucket{};                 ///< every kind but `unknown` and `info`
    std::string_view key{};                    ///< `put`, `get`, `erase`
    std::string_view value{};                  ///< `put`
    std::string_view section{}; ///< `info`: the SECTION word as sent; empty: all sections
    std::string_view node{};    ///< `info`: the NODE; empty: the node that was asked

    /// Equal when the kinds and all fields hold the same bytes.
    friend constexpr bool operator==(const command&, const command&) = default;
};

/// True for the bytes that separate tokens: space, tab, CR, VT, FF, and LF (which a framed
/// line never holds, but which lets `parse` take a line with its terminator, as the guide's
/// `parse` does).
[[nodiscard]] constexpr bool is_token_separator(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/// Parses one request line, with or without its terminator, by protocol.md's rules:
/// tokens are runs of bytes other than `is_token_separator`; verbs are case-sensitive;
/// each verb takes an exact number of tokens; anything else is `command_kind::unknown`.
/// Tokens may hold any other byte (NUL, non-UTF-8) and come back unchanged.
///
/// `INFO [SECTION] [NODE]` takes 1 to 3 tokens. A SECTION is one of `SERVER`, `TREE`,
/// `STATS`, `CLUSTER`, `JSON` in any letter case (kept as sent: `command::section`); a NODE
/// is a node name (`is_node_name`: 1 to 255 of `A-Z a-z 0-9 _ . -`). With one argument, a
/// section word is a SECTION (so a node named like a section is asked for one with both
/// arguments), any other node name a NODE; with two, they must be a SECTION then a NODE.
/// Anything else is unknown.
///
/// The guide's doctests for `KVServer.Command.parse`, in C++ (tests/test_command.cpp reads
/// the lines below from this header and checks each one, so they cannot go stale):
///
///     parse("CREATE shopping\r\n")          => create shopping
///     parse("CREATE  shopping  \r\n")       => create shopping
///     parse("PUT shopping milk 1\r\n")      => put shopping milk 1
///     parse("GET shopping milk\r\n")        => get shopping milk
///     parse("DELETE shopping eggs\r\n")     => delete shopping eggs
///     parse("UNKNOWN shopping eggs\r\n")    => unknown
///     parse("GET shopping\r\n")             => unknown
///     parse("INFO tree n2\r\n")             => info tree n2
///     parse("INFO n2 TREE\r\n")             => unknown
///
/// Complexity: one pass over the line. Thread safety: a pure function.
[[nodiscard]] constexpr command parse(std::string_view line) noexcept;

/// The protocol verb of a kind (`"CREATE"`, ..., `"INFO"`, `""` for unknown).
[[nodiscard]] constexpr std::string_view verb_name(command_kind kind) noexcept;

/// A readable form of a command, as in the examples above: the lower-case kind followed by
/// its tokens, each passed through `escaped` (so a token with NUL reads `a\x00b`).
[[nodiscard]] std::string to_string(const command& cmd);

/// Bytes made printable for logs and examples: printable ASCII stays, except `\` and `"`
/// which get a backslash; CR, LF and tab become `\r`, `\n`, `\t`; any other byte `\xHH`.
[[nodiscard]] std::string escaped(std::string_view bytes);

/// The request line for `cmd`, as a client (or a node forwarding it) sends it: its tokens
/// separated by single spaces, then CRLF; `parse` gives `cmd` back. INFO's are `INFO`, then
/// its SECTION and its NODE when it has them (a router forwarding an INFO to its NODE clears
/// `node` first: the owner is sent `INFO [SECTION]`). Not for `command_kind::unknown`, and
/// every token must be one (`is_token`).
[[nodiscard]] std::string request_line(const command& cmd);

/// True when `token` can be sent as one token of a request line: not empty, and no byte of
/// it is a separator.
[[nodiscard]] constexpr bool is_token(std::string_view token) noexcept;

// ---------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------

/// What `line_framer::next` found.
enum class frame_status : std::uint8_t {
    line,       ///< a complete line, terminator removed
    incomplete, ///< no complete line is buffered; feed more bytes
    too_long    ///< a line exceeded max_line; sticky: the framer yields nothing else
};

/// One result of `line_framer::next`.
struct frame {
    frame_status status = frame_status::incomplete; ///< what was found
    std::string_view line{};                        ///< the line when `status == line`, else empty
};

/// Turns a byte stream, arriving in chunks of any size, into request lines.
///
/// Rules (protocol.md, Framing): a line ends at LF; a CR right before the LF belongs to the
/// terminator; a bare LF is accepted. A line whose content is longer than `max_line` bytes
/// is reported as `too_long` as soon as that is certain (before its LF arrives, so memory
/// stays bounded), none of it is ever returned as a line, and the framer stays in that
/// state. Bytes after the last LF are a partial line and are never returned: when input
/// ends there, the partial line is simply dropped with the framer. Lines before an
/// over-long line in the same input are returned first. How the input is chunked never
/// changes the lines returned.
///
/// Two ways to put bytes in: `feed(bytes)` copies; `prepare(n)` + `commit(k)` let a reader
/// write straight into the framer's buffer (one `read(2)` per call, no copy). Lines are
/// pulled with `next()`, one at a time, so a server may stop pulling (backpressure) and go
/// on later. A line's view stays valid until the next `feed`, `prepare`, `reset` or
/// `shrink_to_fit`; views from several `next()` calls in between are all valid together,
/// also when a later `next()` reports `too_long`.
///
/// Memory: the buffer holds what was put in and not yet pulled; when a caller pulls after
/// each chunk it stays below `max_line + 1` plus one chunk. A buffer that grew for a burst
/// is given back once the burst is pulled, `shrink_to_fit` gives back what pending bytes
/// do not need (an idle connection then holds no buffer), and an overflow releases it all.
///
/// Thread safety: none; one framer belongs to one connection. Movable, not copyable; a
/// moved-from framer is empty and usable.
class line_framer {
  public:
    /// Bytes allocated when the first bytes come in.
    static constexpr std::size_t initial_capacity = 4096;

    /// A framer that accepts lines of up to `max_line` bytes, terminator not counted.
    explicit line_framer(std::size_t max_line = default_max_line) noexcept : max_line_(max_line) {}
    /// Takes `other`'s bytes and state; `other` is left empty, with the same limit.
    line_framer(line_framer&& other) noexcept : max_line_(other.max_line_) { swap(other); }
    /// Takes `other`'s bytes and state; `other` is left empty, with the same limit.
    line_framer& operator=(line_framer&& other) noexcept {
        line_framer taken(std::move(other));
        swap(taken);
        return *this;
    }
    line_framer(const line_framer&) = delete;
    line_framer& operator=(const line_framer&) = delete;
    ~line_framer() = default;

    /// Appends a copy of `bytes`, which must not be a view into this framer's own buffer.
    /// Once `overflowed()`, the bytes are dropped and the buffer is released.
    void feed(std::string_view bytes);

    /// Returns the free space at the end of the buffer, at least `n` bytes, for a reader to
    /// fill; then `commit` how many it wrote. Invalidates the views of earlier lines.
    /// Once `overflowed()`, returns an empty span (nothing more is taken) and releases the
    /// buffer.
    std::span<char> prepare(std::size_t n);

    /// Adds `n` bytes written into the last `prepare` area (a larger `n` is clamped to it).
    void commit(std::size_t n) noexcept;

    /// The next complete line, `incomplete`, or (from then on) `too_long`.
    /// Complexity: amortised linear in the bytes put in; no byte is scanned twice.
    [[nodiscard]] frame next() noexcept;

    /// Bytes buffered and not yet returned as lines (after `next()` gave `incomplete`, the
    /// length of the partial line; 0 once overflowed).
    [[nodiscard]] std::size_t pending() const noexcept { return end_ - begin_; }

    /// Bytes of buffer held now.
    [[nodiscard]] std::size_t capacity() const noexcept { return cap_; }

    /// True once a line was too long.
    [[nodiscard]] bool overflowed() const noexcept { return overflowed_; }

    /// The limit: the one given at construction, or by the last `set_max_line`.
    [[nodiscard]] std::size_t max_line() const noexcept { return max_line_; }

    /// Sets the limit for the lines not yet returned (a server raises it for a connection
    /// that proved to be another node's: `peer_line_margin`). An overflow stays sticky.
    void set_max_line(std::size_t max_line) noexcept { max_line_ = max_line; }

    /// Forgets every buffered byte and the overflow; keeps the limit and the memory.
    void reset() noexcept;

    /// Gives back the memory that the pending bytes do not need: all of it when nothing is
    /// pending. Invalidates the views of earlier lines.
    void shrink_to_fit();

    /// Exchanges the whole state of two framers.
    void swap(line_framer& other) noexcept;

  private:
    void release() noexcept;
    void reallocate(std::size_t capacity);

    std::unique_ptr<char[]> buf_;
    std::size_t cap_ = 0;
    std::size_t begin_ = 0;   // first byte not yet returned
    std::size_t end_ = 0;     // one past the last byte put in
    std::size_t scanned_ = 0; // [begin_, scanned_) is known to hold no LF
    std::size_t max_line_;
    bool overflowed_ = false;
};

// ---------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------

/// The `ERROR <reason>` extensions of protocol.md ("Errors beyond the guide").
enum class error_code : std::uint8_t {
    line_too_long,        ///< `ERROR line too long`; the connection is then closed
    no_route,             ///< `ERROR no route`
    node_unavailable,     ///< `ERROR node <name> unavailable`
    too_many_buckets,     ///< `ERROR too many buckets`
    too_many_connections, ///< `ERROR too many connections`; the connection is then closed
    internal,             ///< `ERROR internal`; the connection is then closed
    not_a_peer, ///< `ERROR not a peer`: a failed peer handshake; the connection is then closed
    /// `ERROR range unavailable: <why>`: a replicated range cannot take the request now
    /// (its chain is changing, etcd is out of reach, ...); whether a write it answers took
    /// effect is unknown (replication.hpp)
    range_unavailable
};

/// The reason text after `ERROR ` (`"node unavailable"` when no node name is known).
[[nodiscard]] constexpr std::string_view error_text(error_code code) noexcept;

/// True for the errors after which the server closes the connection (protocol.md). The one
/// place that decides it: servers and relaying nodes ask this, never the reply's text.
[[nodiscard]] constexpr bool closes_connection(error_code code) noexcept;

/// The shapes of reply in protocol.md's command table.
enum class reply_kind : std::uint8_t {
    ok,              ///< `OK\r\n`
    value,           ///< GET: `v\r\nOK\r\n`, or `\r\nOK\r\n` when the key is absent
    not_found,       ///< `NOT FOUND\r\n`: no such bucket
    unknown_command, ///< `UNKNOWN COMMAND\r\n`
    subscribed,      ///< no bytes: SUBSCRIBE is acknowledged by silence, and the
                     ///< connection now streams events and ignores its input
    error            ///< `ERROR <reason>\r\n`
};

/// What one command produced, before it is turned into bytes by `append_reply`.
/// The views must outlive the formatting. The server's `run()` (registry issue) appends a
/// reply to a `byte_sink` directly; these types are what it and the router speak.
struct reply {
    reply_kind kind = reply_kind::ok;       ///< the shape
    std::string_view value{};               ///< `value`: the value; empty = key absent
    error_code code = error_code::internal; ///< `error`: which error
    std::string_view node{};                ///< `error`/`node_unavailable`: the node

    /// `OK`.
    static constexpr reply ok() noexcept { return {}; }
    /// GET of a present key (a stored value is never empty: it is a token).
    static constexpr reply found(std::string_view v) noexcept {
        return {reply_kind::value, v, {}, {}};
    }
    /// GET of an absent key.
    static constexpr reply missing() noexcept { return {reply_kind::value, {}, {}, {}}; }
    /// `NOT FOUND`.
    static constexpr reply not_found() noexcept { return {reply_kind::not_found, {}, {}, {}}; }
    /// `UNKNOWN COMMAND`.
    static constexpr reply unknown_command() noexcept {
        return {reply_kind::unknown_command, {}, {}, {}};
    }
    /// A successful SUBSCRIBE: no reply bytes; the server switches the connection over.
    static constexpr reply subscribed() noexcept { return {reply_kind::subscribed, {}, {}, {}}; }
    /// `ERROR <reason>`; `node` names the node for `node_unavailable`, and says why for
    /// `range_unavailable`.
    static constexpr reply error(error_code c, std::string_view node = {}) noexcept {
        return {reply_kind::error, {}, c, node};
    }

    /// Equal when every field is (the factories leave unused fields at their defaults).
    friend constexpr bool operator==(const reply&, const reply&) = default;
};

/// What a reply says, without its bytes: its shape and, for an error, which one. `run`
/// returns it for the reply it wrote, and `read_reply` finds it in a reply read off the wire,
/// so whether a connection closes after a reply is decided from it (`closes_connection`),
/// never from the reply's text.
struct reply_outcome {
    reply_kind kind = reply_kind::ok;       ///< the shape
    error_code code = error_code::internal; ///< `error`: which error (else left at its default)

    /// The outcome of a reply made by one of `reply`'s factories.
    static constexpr reply_outcome of(const reply& r) noexcept {
        return {r.kind, r.kind == reply_kind::error ? r.code : error_code::internal};
    }
    /// Equal when both fields are.
    friend constexpr bool operator==(const reply_outcome&, const reply_outcome&) = default;
};

/// True when protocol.md closes the connection after a reply with this outcome: an error
/// for which `closes_connection(error_code)` holds.
[[nodiscard]] constexpr bool closes_connection(const reply_outcome& outcome) noexcept;

/// Anything bytes can be appended to: `std::string`, or a buffer with `append(ptr, n)`.
template <class Out>
concept byte_sink = requires(Out& out, const char* data, std::size_t size) {
    out.append(data, size);
};

/// Appends the exact reply bytes of protocol.md. Values, keys and node names are written
/// as given: `run()` passes tokens, which never hold CR or LF; a caller passing other
/// bytes must not pass those, or the client's framing breaks.
template <byte_sink Out> void append_reply(Out& out, const reply& r);

/// The exact reply bytes as a string (for tests and examples; servers use `append_reply`).
[[nodiscard]] std::string format_reply(const reply& r);

/// Appends a SUBSCRIBE event for a PUT: `k SET TO v\r\n`.
template <byte_sink Out>
void append_set_event(Out& out, std::string_view key, std::string_view value);

/// Appends a SUBSCRIBE event for a DELETE: `k DELETED\r\n`.
template <byte_sink Out> void append_deleted_event(Out& out, std::string_view key);

// ---------------------------------------------------------------------------------------
// Running a command
// ---------------------------------------------------------------------------------------

/// What `run` does on SUBSCRIBE by default: nothing (the caller subscribes itself).
struct ignore_subscribe {
    /// Does nothing.
    template <class Bucket> void operator()(Bucket&) const noexcept {}
};

/// Executes `cmd` against `reg` (a `basic_registry`, or anything with its `create` and
/// `with`) and appends protocol.md's exact reply bytes to `out`: `OK`, the two-line GET,
/// `NOT FOUND`, `UNKNOWN COMMAND`, `ERROR too many buckets`. Returns the reply's outcome
/// (its shape and error code: `closes_connection` tells a server to close after it).
///
/// SUBSCRIBE appends nothing: it calls `on_subscribe(bucket&)` while the bucket is held by
/// the lookup (the server subscribes the connection there) and returns `subscribed`, or
/// appends `NOT FOUND`. A CREATE the registry refuses for another reason than its limit
/// (it is stopping) gives `ERROR internal`, after which protocol.md closes the connection.
/// Exceptions (from allocation, say) propagate: the server turns them into `ERROR internal`.
/// This is the server's whole request path: it allocates nothing beyond the reply's bytes
/// (a GET appends the value straight from the bucket; a PUT of a small entry stores it in
/// place).
template <class Registry, byte_sink Out, class OnSubscribe = ignore_subscribe>
reply_outcome run(const command& cmd, Registry& reg, Out& out, OnSubscribe&& on_subscribe = {});

// ---------------------------------------------------------------------------------------
// Replies, as a client reads them
// ---------------------------------------------------------------------------------------

/// A reply found at the start of a stream of reply bytes (`read_reply`). The views point
/// into the bytes read.
struct reply_view {
    /// Bytes of the whole reply; 0 while it is not all there yet.
    std::size_t size = 0;
    /// Its shape and error code. A reply protocol.md does not define is an `internal` error.
    reply_outcome outcome{reply_kind::error, error_code::internal};
    /// False for a line protocol.md does not define as a reply to such a request (a peer's
    /// greeting or `SUBSCRIBED`, or garbage): it is still framed as one line.
    bool known = false;
    /// `value`: the value; empty when the key is absent. An INFO's `ok`: its lines, each
    /// with its terminator, the final `OK` left out.
    std::string_view value{};
    /// `error`/`node_unavailable`: the node named (empty in `ERROR node unavailable`);
    /// `range_unavailable`: the reason after `: `.
    std::string_view node{};
};

/// Reads the reply to a `kind` request at the start of `in` (which may hold more replies
/// after it, or only part of this one). Every reply is one line, except a GET's value, which
/// is two (`v`, `OK`; with another second line it is framed the same, but not `known`), and
/// an INFO's text, which is any number of lines up to the first line that is `OK` (an `ok`
/// reply whose `value` is the lines before it). A GET's first line is a value unless it is
/// `NOT FOUND`, `UNKNOWN COMMAND` or `ERROR <reason>`: a value is one token, so it can be none
/// of those; an INFO's reply is one line when its first line is one of those (so an INFO's
/// text never starts with them, and none of its lines is `OK`). Lines end at LF, with or
/// without CR, as the framer's do. Complexity: one pass over the reply's bytes. Thread
/// safety: a pure function.
[[nodiscard]] constexpr reply_view read_reply(command_kind kind, std::string_view in) noexcept;

/// A reply a host program got (through the router, say), parsed, with its bytes kept.
struct routed_reply {
    reply_kind kind = reply_kind::error;     ///< its shape
    std::string value{};                     ///< `value`: the value (empty: key absent)
    error_code error = error_code::internal; ///< `error`: which
    std::string node{};                      ///< `error`/`node_unavailable`: the node
    std::string bytes{};                     ///< exactly as on the wire

    /// True for `OK` and a GET's value.
    [[nodiscard]] bool ok() const noexcept {
        return kind == reply_kind::ok || kind == reply_kind::value;
    }
};

/// Parses the bytes of one whole reply to a `kind` request (`read_reply`; an INFO's lines are
/// its `value`); bytes that are not one (a reply protocol.md does not define, or not all of
/// one) are an `internal` error.
[[nodiscard]] routed_reply parse_routed_reply(command_kind kind, std::string bytes);

// ---------------------------------------------------------------------------------------
// Between nodes
// ---------------------------------------------------------------------------------------
//
// Every connection a node opens to another node starts with a handshake in which each side
// proves that it knows the cluster cookie (a secret every node of the cluster is given, as
// Erlang's nodes are; kv_server's `--cookie`), without sending it. Node A connects to B:
//
//   1. A -> B  `OTPKV-PEER 2 <nameA> <nonceA>`
//   2. B -> A  `OTPKV-PEER 2 <nameB> <nonceB> <proofB>`, if the line is well formed and nameA
//              is another node of B's routing table; else `ERROR not a peer`, and B closes.
//   3. A checks that nameB is the name its table gives that address and that proofB is
//              right; if not, A closes (the node counts as down). Else
//      A -> B  `OTPKV-PROOF <proofA>`
//   4. B -> A  `OK` when proofA is right; else `ERROR not a peer`, and B closes.
//
// A nonce is 32 fresh random bytes as 64 lower-case hex digits; a proof is the HMAC-SHA-256
// of a text under the cookie, in the same spelling:
//
//   proofB = HMAC(cookie, "otpkv-peer-2 accept <nameB> <nameA> <nonceA> <nonceB>")
//   proofA = HMAC(cookie, "otpkv-peer-2 connect <nameA> <nameB> <nonceA> <nonceB>")
//
// Both nonces are in both texts, so neither proof can be replayed on another connection; the
// words `accept` and `connect` keep a proof B gives from serving as A's. A sends its queued
// requests only after the `OK` (the handshake counts against its connect timeout). From then
// on B runs every request of that connection locally, never forwarding it again. Any line
// whose first token is `OTPKV-PEER` or `OTPKV-PROOF` that is not the step the connection is at
// (the old `OTPKV-PEER 1 <name>` included, or a greeting on a connection that is already a
// peer's), and any line other than `OTPKV-PROOF` after a greeting, is answered
// `ERROR not a peer` and closes the connection: nothing sent after it runs. Lines end in CRLF
// and tokens are separated as in requests.
//
// These lines are internal to otpkv: protocol.md's clients never see them (other than
// `ERROR not a peer` when they send one).
//
// Request ids. After the handshake, every line the connecting node (A) sends is
// `<id> <request line>`: `<id>` a decimal number from 1 to 2^64-1 (no sign, no leading
// zero) that A chooses, increasing on each connection. A heartbeat is `<id>` alone (an
// empty request, answered `UNKNOWN COMMAND`). The other node (B) answers each request
// with the header line `=<id>\r\n` followed by the reply's usual bytes (`OK\r\n`,
// `v\r\nOK\r\n`, `NOT FOUND\r\n`, ...), in request order. A checks that each header names
// the oldest request it is waiting for on that connection before it frames the reply;
// anything else (another id, a line that is not a header, bytes when nothing is waiting)
// closes that connection, and its requests in flight fail as unavailable: one stray line
// from a faulty peer can never shift a reply onto another request. A line on a peer
// connection whose first token is not an id gets `ERROR internal` (untagged, so A closes
// too) and B closes the connection after it; nothing of that line runs.
//
// Line length. The handshake's lines are held to B's `max_line` like a client's. After its
// `OK`, B takes lines of up to `max_line + peer_line_margin` bytes on that connection: room
// for the `<id> ` and the replication header a node puts in front of a client's request,
// so that every line B would take from a client also reaches B whole from another node.
//
// Streams. `<id> SUBSCRIBE <bucket>` is answered `=<id>\r\nSUBSCRIBED\r\n` when the
// subscription took (or with the refusal, `=<id>\r\nNOT FOUND\r\n`); the connection stays
// an ordinary peer connection, and A multiplexes all its streams to B over its pooled
// connections, so no number of relayed subscriptions takes more of B's connection slots
// than the pool. Each event of that subscription then comes as `*<id> <event line>\r\n`
// (`k SET TO v` / `k DELETED`, as clients get them), all of one stream in order and after
// its `SUBSCRIBED`, between two replies; `!<id>\r\n` ends the stream (the bucket exited).
// `<id2> UNSUBSCRIBE <id>` cancels a stream: B answers `=<id2>\r\nOK\r\n` (also for a stream
// that has ended already) and, for a stream still running, sends `!<id>` after its last
// event; events of `<id>` that were on their way are dropped by A, which forgets the stream
// at its `!<id>`. A line `*<id>` or `!<id>` for a stream A does not have is a mismatch like
// any other: the connection is closed. B pushes the events through the connection's
// `session::channel`: a peer that does not read is disconnected past
// `max_subscriber_output`, as a subscriber is. When A's connection to B is lost while
// streams run, A's relayed subscribers get `ERROR node <name> unavailable` before their
// connections are closed; a stream ended by `!<id>` closes them without a word, as for a
// local subscriber.

/// The first token of a greeting (steps 1 and 2).
inline constexpr std::string_view peer_greeting = "OTPKV-PEER";
/// The version of the peer handshake.
inline constexpr std::string_view peer_version = "2";
/// The first token of the connecting node's proof (step 3).
inline constexpr std::string_view peer_proof = "OTPKV-PROOF";
/// A peer's acknowledgement of a SUBSCRIBE that took (peer connections only).
inline constexpr std::string_view peer_subscribed = "SUBSCRIBED";
/// The random bytes of a nonce (sent as twice as many hex digits).
inline constexpr std::size_t peer_nonce_bytes = 32;

/// What a greeting (step 1) or its answer (step 2) says. Views into the line parsed.
struct peer_hello {
    std::string_view name;  ///< the sender's node name
    std::string_view nonce; ///< its nonce: 64 lower-case hex digits
    std::string_view proof; ///< the answer's proof, 64 lower-case hex digits; empty in a greeting

    /// Equal when all three fields hold the same bytes.
    friend constexpr bool operator==(const peer_hello&, const peer_hello&) = default;
};

/// Step 1, terminator included: `OTPKV-PEER 2 <name> <nonce>\r\n`.
[[nodiscard]] std::string peer_greeting_line(std::string_view name, std::string_view nonce);
/// Step 2, terminator included: `OTPKV-PEER 2 <name> <nonce> <proof>\r\n`.
[[nodiscard]] std::string peer_answer_line(std::string_view name, std::string_view nonce,
                                           std::string_view proof);
/// Step 3, terminator included: `OTPKV-PROOF <proof>\r\n`.
[[nodiscard]] std::string peer_proof_line(std::string_view proof);

/// A greeting (step 1; terminator optional), or nullopt when `line` is not exactly one.
[[nodiscard]] constexpr std::optional<peer_hello>
parse_peer_greeting(std::string_view line) noexcept;
/// An answer to a greeting (step 2; terminator optional), or nullopt when `line` is not one.
[[nodiscard]] constexpr std::optional<peer_hello> parse_peer_answer(std::string_view line) noexcept;
/// The proof of a step 3 line (terminator optional), or nullopt when `line` is not one.
[[nodiscard]] constexpr std::optional<std::string_view>
parse_peer_proof(std::string_view line) noexcept;
/// True when `line`'s first token is `OTPKV-PEER` or `OTPKV-PROOF`: a handshake line, well
/// formed or not (a server refuses the ones that are not the step it expects).
[[nodiscard]] constexpr bool is_peer_handshake(std::string_view line) noexcept;

/// The accepting node's proof (step 2): the hex HMAC-SHA-256 under `cookie` of
/// `otpkv-peer-2 accept <accepting> <connecting> <connecting_nonce> <accepting_nonce>`.
[[nodiscard]] std::string peer_accept_proof(std::string_view cookie, std::string_view accepting,
                                            std::string_view connecting,
                                            std::string_view connecting_nonce,
                                            std::string_view accepting_nonce);
/// The connecting node's proof (step 3): the hex HMAC-SHA-256 under `cookie` of
/// `otpkv-peer-2 connect <connecting> <accepting> <connecting_nonce> <accepting_nonce>`.
[[nodiscard]] std::string peer_connect_proof(std::string_view cookie, std::string_view connecting,
                                             std::string_view accepting,
                                             std::string_view connecting_nonce,
                                             std::string_view accepting_nonce);
/// True when the proof `got` is `expected`, compared in a time that does not depend on where
/// they differ.
[[nodiscard]] bool peer_proof_matches(std::string_view expected, std::string_view got) noexcept;

/// The first byte of a peer's reply header (`=<id>`), stream event (`*<id> <event>`) and
/// stream end (`!<id>`).
inline constexpr char peer_reply_mark = '=';
inline constexpr char peer_event_mark = '*';
inline constexpr char peer_end_mark = '!';
/// The verb that cancels a stream on a peer connection: `<id2> UNSUBSCRIBE <id>`.
inline constexpr std::string_view peer_unsubscribe = "UNSUBSCRIBE";

/// The longest `<id> ` a request on a peer connection starts with: 20 digits and a space.
inline constexpr std::size_t max_peer_id_prefix = 21;
/// How many bytes longer than the server's `max_line` a line on a peer connection may be
/// (granted by the server once `session::mark_peer` was called, net/server.hpp). A node
/// never sends a request longer than the client's line it came from (`request_line` only
/// drops whitespace), but it puts a header in front of it: the `<id> ` of every peer request
/// (`max_peer_id_prefix`), and, for a write going down a chain or copied to a joining node,
/// the replication header (`REPL <range> <epoch> <seq> `, replication.hpp, which checks at
/// compile time that both fit). So any line a client may send (at most `max_line`) still
/// fits once a node relays it; clients never get the margin, and a peer gets no more.
inline constexpr std::size_t peer_line_margin = 128;

/// The longest line a peer connection takes, or a peer's reply carries, when a client's may
/// be `max_line` long: `peer_line_margin` more, saturated (`max_line` may be as large as
/// `size_t` holds).
[[nodiscard]] constexpr std::size_t peer_line_limit(std::size_t max_line) noexcept {
    return max_line > std::numeric_limits<std::size_t>::max() - peer_line_margin
               ? std::numeric_limits<std::size_t>::max()
               : max_line + peer_line_margin;
}

/// A request id as a token (decimal, 1 to 2^64-1, no sign, no leading zero), or nullopt.
[[nodiscard]] constexpr std::optional<std::uint64_t> parse_peer_id(std::string_view token) noexcept;

/// Appends `id` in decimal.
template <byte_sink Out> void append_peer_id(Out& out, std::uint64_t id);

/// A line on a peer connection split at its first token: `<id> <rest>` (a request), or
/// `=<id>`, `*<id> <rest>`, `!<id>` (what a peer sends back; `mark` is the first byte).
struct peer_line {
    char mark = 0;           ///< 0 for a request line, else `=`, `*` or `!`
    std::uint64_t id = 0;    ///< the id
    std::string_view rest{}; ///< what follows the id and its separators (terminator excluded)
};

/// Splits a request line `<id> <request>` (terminator optional); nullopt when its first
/// token is not an id.
[[nodiscard]] constexpr std::optional<peer_line> parse_peer_request(std::string_view line) noexcept;

/// Splits a line a peer sends back (`=<id>`, `*<id> <event>`, `!<id>`; terminator
/// optional); nullopt for anything else.
[[nodiscard]] constexpr std::optional<peer_line> parse_peer_reply(std::string_view line) noexcept;

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {
/// One verb of the protocol: its kind, its spelling, and how many tokens its line has.
struct verb_spec {
    command_kind kind;
    std::string_view name;
    std::size_t tokens;
};
/// The protocol's verbs, the one place they are spelled (parse and verb_name read it).
/// INFO's 0 stands for its 1 to 3 tokens, which `parse_info` reads.
inline constexpr std::array<verb_spec, 6> verbs{{
    {command_kind::create, "CREATE", 2},
    {command_kind::put, "PUT", 4},
    {command_kind::get, "GET", 3},
    {command_kind::erase, "DELETE", 3},
    {command_kind::subscribe, "SUBSCRIBE", 2},
    {command_kind::info, "INFO", 0},
}};

/// INFO's sections, as `parse` accepts them in any letter case.
inline constexpr std::array<std::string_view, 5> info_sections{"SERVER", "TREE", "STATS", "CLUSTER",
                                                               "JSON"};

/// True when `word` is one of `info_sections`, in any letter case.
[[nodiscard]] constexpr bool is_info_section(std::string_view word) noexcept {
    for (const std::string_view section : info_sections) {
        if (section.size() != word.size()) {
            continue;
        }
        bool same = true;
        for (std::size_t i = 0; i < word.size() && same; ++i) {
            const char c = word[i];
            same = (c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c) == section[i];
        }
        if (same) {
            return true;
        }
    }
    return false;
}

/// The fixed words of replies, spelled once for writing them and reading them.
inline constexpr std::string_view ok_line = "OK";
inline constexpr std::string_view not_found_line = "NOT FOUND";
inline constexpr std::string_view unknown_command_line = "UNKNOWN COMMAND";
inline constexpr std::string_view error_prefix = "ERROR ";
inline constexpr std::string_view node_prefix = "node ";        // ERROR node <name> unavailable
inline constexpr std::string_view node_suffix = " unavailable"; // ERROR node <name> unavailable
inline constexpr std::string_view reason_separator = ": ";      // ERROR range unavailable: <why>
inline constexpr std::string_view line_end = "\r\n";

/// Splits `line` into its tokens (runs of bytes that are not `is_token_separator`) and
/// returns how many it has, or `N + 1` as soon as it has more than `N` (the rest is not
/// looked at). Tokens past the count are left empty.
template <std::size_t N>
constexpr std::size_t split_tokens(std::string_view line,
                                   std::array<std::string_view, N>& tokens) noexcept {
    std::size_t count = 0;
    std::size_t i = 0;
    const std::size_t size = line.size();
    for (;;) {
        while (i < size && is_token_separator(line[i])) {
            ++i;
        }
        if (i == size) {
            return count;
        }
        if (count == N) {
            return N + 1;
        }
        const std::size_t start = i;
        while (i < size && !is_token_separator(line[i])) {
            ++i;
        }
        tokens[count++] = line.substr(start, i - start);
    }
}
} // namespace detail

namespace detail {
/// `INFO [SECTION] [NODE]` from its `count` tokens (`parse`'s rules), or unknown.
constexpr command parse_info(const std::array<std::string_view, 4>& tok,
                             std::size_t count) noexcept {
    command cmd;
    cmd.kind = command_kind::info;
    if (count == 2 && is_info_section(tok[1])) {
        cmd.section = tok[1];
    } else if (count == 2 && is_node_name(tok[1])) {
        cmd.node = tok[1];
    } else if (count == 3 && is_info_section(tok[1]) && is_node_name(tok[2])) {
        cmd.section = tok[1];
        cmd.node = tok[2];
    } else if (count != 1) {
        return {};
    }
    return cmd;
}
} // namespace detail

constexpr command parse(std::string_view line) noexcept {
    // No verb takes more than 4 tokens, so a 5th settles the matter without looking on.
    std::array<std::string_view, 4> tok{};
    const std::size_t count = detail::split_tokens(line, tok);
    if (count == 0 || count > tok.size()) {
        return {};
    }
    for (const detail::verb_spec& verb : detail::verbs) {
        if (verb.name == tok[0]) {
            if (verb.tokens == 0) {
                return detail::parse_info(tok, count);
            }
            // Tokens past `count` are empty views, as the fields a kind does not use are.
            return count == verb.tokens ? command{verb.kind, tok[1], tok[2], tok[3]} : command{};
        }
    }
    return {};
}

constexpr std::string_view verb_name(command_kind kind) noexcept {
    for (const detail::verb_spec& verb : detail::verbs) {
        if (verb.kind == kind) {
            return verb.name;
        }
    }
    return "";
}

inline std::string escaped(std::string_view bytes) {
    static constexpr std::string_view hex = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size());
    for (const char ch : bytes) {
        const auto b = static_cast<unsigned char>(ch);
        switch (ch) {
        case '\r':
            out += "\\r";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\t':
            out += "\\t";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '"':
            out += "\\\"";
            break;
        default:
            if (b >= 0x20 && b < 0x7f) {
                out += ch;
            } else {
                out += "\\x";
                out += hex[b >> 4U];
                out += hex[b & 0xfU];
            }
        }
    }
    return out;
}

constexpr bool is_token(std::string_view token) noexcept {
    if (token.empty()) {
        return false;
    }
    for (const char c : token) {
        if (is_token_separator(c)) {
            return false;
        }
    }
    return true;
}

inline std::string request_line(const command& cmd) {
    std::string line;
    line.reserve(verb_name(cmd.kind).size() + cmd.bucket.size() + cmd.key.size() +
                 cmd.value.size() + cmd.section.size() + cmd.node.size() + 6);
    line.append(verb_name(cmd.kind));
    if (cmd.kind != command_kind::info) {
        line.append(" ").append(cmd.bucket);
    }
    for (const std::string_view tok : {cmd.key, cmd.value, cmd.section, cmd.node}) {
        if (!tok.empty()) {
            line.append(" ").append(tok);
        }
    }
    line.append(detail::line_end);
    return line;
}

inline std::string to_string(const command& cmd) {
    if (cmd.kind == command_kind::unknown) {
        return "unknown";
    }
    std::string out;
    for (const char ch : verb_name(cmd.kind)) {
        out += static_cast<char>(ch - 'A' + 'a');
    }
    for (const std::string_view tok : {cmd.bucket, cmd.key, cmd.value, cmd.section, cmd.node}) {
        if (!tok.empty()) {
            out += ' ';
            out += escaped(tok);
        }
    }
    return out;
}

inline void line_framer::feed(std::string_view bytes) {
    if (overflowed_) {
        release();
        return;
    }
    if (bytes.empty()) {
        return;
    }
    std::memcpy(prepare(bytes.size()).data(), bytes.data(), bytes.size());
    commit(bytes.size());
}

inline std::span<char> line_framer::prepare(std::size_t n) {
    if (overflowed_) {
        release();
        return {};
    }
    if (begin_ == end_) {
        // Everything was pulled: start over at the front (earlier views become invalid,
        // as documented), and give back a buffer that grew for a burst now over.
        begin_ = end_ = scanned_ = 0;
        if (cap_ > 4 * std::max(n, initial_capacity)) {
            release();
        }
    }
    if (cap_ - end_ < n) {
        const std::size_t used = end_ - begin_;
        if (cap_ - used >= n && begin_ > 0) {
            // Enough room once the pulled prefix is dropped.
            std::memmove(buf_.get(), buf_.get() + begin_, used);
            scanned_ -= begin_;
            begin_ = 0;
            end_ = used;
        } else {
            reallocate(std::max({cap_ * 2, used + n, initial_capacity}));
        }
    }
    return {buf_.get() + end_, cap_ - end_};
}

inline void line_framer::commit(std::size_t n) noexcept {
    if (!overflowed_) {
        end_ += std::min(n, cap_ - end_);
    }
}

inline frame line_framer::next() noexcept {
    if (overflowed_) {
        return {frame_status::too_long, {}};
    }
    const char* const base = buf_.get();
    const void* lf =
        scanned_ < end_ ? std::memchr(base + scanned_, '\n', end_ - scanned_) : nullptr;
    std::size_t len = 0;
    if (lf == nullptr) {
        scanned_ = end_;
        // The content length known so far: a trailing CR may still turn out to be the
        // terminator's, so it is not counted yet. This only grows as bytes arrive, which is
        // what makes the verdict independent of chunking.
        len = end_ - begin_;
        if (len > 0 && base[end_ - 1] == '\r') {
            --len;
        }
    } else {
        const auto lf_at = static_cast<std::size_t>(static_cast<const char*>(lf) - base);
        len = lf_at - begin_;
        if (len > 0 && base[lf_at - 1] == '\r') {
            --len;
        }
        if (len <= max_line_) {
            const std::string_view line(base + begin_, len);
            begin_ = scanned_ = lf_at + 1;
            return {frame_status::line, line};
        }
    }
    if (len > max_line_) {
        // Lines already pulled keep pointing into the buffer, so it is only released by
        // the next feed or prepare.
        overflowed_ = true;
        begin_ = end_ = scanned_ = 0;
        return {frame_status::too_long, {}};
    }
    return {frame_status::incomplete, {}};
}

inline void line_framer::reset() noexcept {
    begin_ = end_ = scanned_ = 0;
    overflowed_ = false;
}

inline void line_framer::shrink_to_fit() {
    if (pending() == 0) {
        release();
    } else if (pending() < cap_) {
        reallocate(pending());
    }
}

inline void line_framer::swap(line_framer& other) noexcept {
    std::swap(buf_, other.buf_);
    std::swap(cap_, other.cap_);
    std::swap(begin_, other.begin_);
    std::swap(end_, other.end_);
    std::swap(scanned_, other.scanned_);
    std::swap(max_line_, other.max_line_);
    std::swap(overflowed_, other.overflowed_);
}

inline void line_framer::release() noexcept {
    buf_.reset();
    cap_ = begin_ = end_ = scanned_ = 0;
}

inline void line_framer::reallocate(std::size_t capacity) {
    const std::size_t used = end_ - begin_;
    // Not make_unique: that would zero bytes about to be overwritten (and
    // make_unique_for_overwrite is missing from libc++ before 16).
    std::unique_ptr<char[]> fresh(new char[capacity]); // NOLINT(modernize-make-unique)
    if (used > 0) {
        std::memcpy(fresh.get(), buf_.get() + begin_, used);
    }
    buf_ = std::move(fresh);
    cap_ = capacity;
    scanned_ -= begin_;
    begin_ = 0;
    end_ = used;
}

constexpr std::string_view error_text(error_code code) noexcept {
    switch (code) {
    case error_code::line_too_long:
        return "line too long";
    case error_code::no_route:
        return "no route";
    case error_code::node_unavailable:
        return "node unavailable";
    case error_code::too_many_buckets:
        return "too many buckets";
    case error_code::too_many_connections:
        return "too many connections";
    case error_code::not_a_peer:
        return "not a peer";
    case error_code::range_unavailable:
        return "range unavailable";
    case error_code::internal:
        break;
    }
    return "internal";
}

constexpr bool closes_connection(error_code code) noexcept {
    switch (code) {
    case error_code::line_too_long:
    case error_code::too_many_connections:
    case error_code::internal:
    case error_code::not_a_peer:
        return true;
    case error_code::no_route:
    case error_code::node_unavailable:
    case error_code::too_many_buckets:
    case error_code::range_unavailable:
        break;
    }
    return false;
}

constexpr bool closes_connection(const reply_outcome& outcome) noexcept {
    return outcome.kind == reply_kind::error && closes_connection(outcome.code);
}

namespace detail {
template <byte_sink Out> void append(Out& out, std::string_view bytes) {
    out.append(bytes.data(), bytes.size());
}
} // namespace detail

template <byte_sink Out> void append_reply(Out& out, const reply& r) {
    switch (r.kind) {
    case reply_kind::ok:
        detail::append(out, detail::ok_line);
        break;
    case reply_kind::value:
        detail::append(out, r.value);
        detail::append(out, detail::line_end);
        detail::append(out, detail::ok_line);
        break;
    case reply_kind::not_found:
        detail::append(out, detail::not_found_line);
        break;
    case reply_kind::unknown_command:
        detail::append(out, detail::unknown_command_line);
        break;
    case reply_kind::subscribed:
        return;
    case reply_kind::error:
        detail::append(out, detail::error_prefix);
        if (r.code == error_code::node_unavailable && !r.node.empty()) {
            detail::append(out, detail::node_prefix);
            detail::append(out, r.node);
            detail::append(out, detail::node_suffix);
        } else if (r.code == error_code::range_unavailable && !r.node.empty()) {
            detail::append(out, error_text(r.code));
            detail::append(out, detail::reason_separator);
            detail::append(out, r.node);
        } else {
            detail::append(out, error_text(r.code));
        }
        break;
    }
    detail::append(out, detail::line_end);
}

inline std::string format_reply(const reply& r) {
    std::string out;
    append_reply(out, r);
    return out;
}

template <byte_sink Out>
void append_set_event(Out& out, std::string_view key, std::string_view value) {
    detail::append(out, key);
    detail::append(out, " SET TO ");
    detail::append(out, value);
    detail::append(out, "\r\n");
}

template <byte_sink Out> void append_deleted_event(Out& out, std::string_view key) {
    detail::append(out, key);
    detail::append(out, " DELETED\r\n");
}

template <class Registry, byte_sink Out, class OnSubscribe>
reply_outcome run(const command& cmd, Registry& reg, Out& out, OnSubscribe&& on_subscribe) {
    reply r = reply::not_found();
    switch (cmd.kind) {
    case command_kind::create:
        if (auto made = reg.create(cmd.bucket)) {
            r = reply::ok();
        } else {
            r = reply::error(made.error().code == errc::max_children ? error_code::too_many_buckets
                                                                     : error_code::internal);
        }
        break;
    case command_kind::put:
        if (reg.with(cmd.bucket, [&](auto& b) { b.put(cmd.key, cmd.value); })) {
            r = reply::ok();
        }
        break;
    case command_kind::get:
        // The reply is written inside the lookup, straight from the bucket's validated
        // copy of the slot: no string is built for the value.
        if (reg.with(cmd.bucket, [&](auto& b) {
                if (!b.visit(cmd.key,
                             [&](std::string_view v) { append_reply(out, reply::found(v)); })) {
                    append_reply(out, reply::missing());
                }
            })) {
            return {reply_kind::value};
        }
        break;
    case command_kind::erase:
        if (reg.with(cmd.bucket, [&](auto& b) { b.erase(cmd.key); })) {
            r = reply::ok();
        }
        break;
    case command_kind::subscribe:
        if (reg.with(cmd.bucket, [&](auto& b) { on_subscribe(b); })) {
            return {reply_kind::subscribed};
        }
        break;
    case command_kind::info: // answered by the router, which knows the node
    case command_kind::unknown:
        r = reply::unknown_command();
        break;
    }
    append_reply(out, r);
    return reply_outcome::of(r);
}

namespace detail {
/// `line` without the CR of its terminator.
constexpr std::string_view without_cr(std::string_view line) noexcept {
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    return line;
}

/// The error an `ERROR <reason>` line's reason names, with the node of
/// `node <name> unavailable`; `known` false for a reason no node gives.
constexpr void read_error_reason(std::string_view reason, reply_view& r) noexcept {
    r.outcome = {reply_kind::error, error_code::internal};
    // `node unavailable` too: what `append_reply` writes when it knows no node name.
    constexpr std::array codes{error_code::line_too_long,        error_code::no_route,
                               error_code::node_unavailable,     error_code::too_many_buckets,
                               error_code::too_many_connections, error_code::internal,
                               error_code::not_a_peer,           error_code::range_unavailable};
    for (const error_code code : codes) {
        if (reason == error_text(code)) {
            r.outcome.code = code;
            r.known = true;
            return;
        }
    }
    const std::string_view range = error_text(error_code::range_unavailable);
    if (reason.size() > range.size() + reason_separator.size() && reason.starts_with(range) &&
        reason.substr(range.size()).starts_with(reason_separator)) {
        r.outcome.code = error_code::range_unavailable;
        r.node = reason.substr(range.size() + reason_separator.size());
        r.known = true;
        return;
    }
    if (reason.size() > node_prefix.size() + node_suffix.size() &&
        reason.starts_with(node_prefix) && reason.ends_with(node_suffix)) {
        r.outcome.code = error_code::node_unavailable;
        r.node = reason.substr(node_prefix.size(),
                               reason.size() - node_prefix.size() - node_suffix.size());
        r.known = true;
    }
}

/// How an INFO's text reply ends: the size of the reply at the start of `in` through its
/// `OK` line, or 0 when that line is not there yet. `scanned` is where to go on from: the
/// lines before it are known to be whole and not `OK` (0 the first time; kept between calls
/// on a growing `in`, it makes reading a reply that arrives in pieces linear). When the reply
/// is whole, `scanned` is where its `OK` line starts. The first line is not looked at for
/// `NOT FOUND`, `UNKNOWN COMMAND` or `ERROR` (`read_reply` does that).
constexpr std::size_t info_reply_size(std::string_view in, std::size_t& scanned) noexcept {
    while (scanned < in.size()) {
        const std::size_t end = in.find('\n', scanned);
        if (end == std::string_view::npos) {
            return 0;
        }
        if (without_cr(in.substr(scanned, end - scanned)) == ok_line) {
            return end + 1;
        }
        scanned = end + 1;
    }
    return 0;
}
} // namespace detail

constexpr reply_view read_reply(command_kind kind, std::string_view in) noexcept {
    reply_view r;
    const std::size_t first_end = in.find('\n');
    if (first_end == std::string_view::npos) {
        return r;
    }
    const std::string_view first = detail::without_cr(in.substr(0, first_end));
    r.size = first_end + 1;
    if (first == detail::not_found_line) {
        r.outcome = {reply_kind::not_found};
        r.known = true;
    } else if (first == detail::unknown_command_line) {
        r.outcome = {reply_kind::unknown_command};
        r.known = true;
    } else if (first.starts_with(detail::error_prefix)) {
        detail::read_error_reason(first.substr(detail::error_prefix.size()), r);
    } else if (kind == command_kind::info) {
        std::size_t scanned = 0;
        const std::size_t size = detail::info_reply_size(in, scanned);
        if (size == 0) {
            return reply_view{};
        }
        r.size = size;
        r.outcome = {reply_kind::ok};
        r.value = in.substr(0, scanned);
        r.known = true;
    } else if (kind == command_kind::get) {
        // A value (one token, or nothing for an absent key), then `OK`.
        const std::size_t second_end = in.find('\n', first_end + 1);
        if (second_end == std::string_view::npos) {
            return reply_view{};
        }
        r.size = second_end + 1;
        if (detail::without_cr(in.substr(first_end + 1, second_end - first_end - 1)) ==
            detail::ok_line) {
            r.outcome = {reply_kind::value};
            r.value = first;
            r.known = true;
        }
    } else if (first == detail::ok_line) {
        r.outcome = {reply_kind::ok};
        r.known = true;
    }
    return r;
}

inline routed_reply parse_routed_reply(command_kind kind, std::string bytes) {
    routed_reply r;
    const reply_view v = read_reply(kind, bytes);
    if (v.known && v.size == bytes.size()) {
        r.kind = v.outcome.kind;
        r.error = v.outcome.code;
        r.value = v.value;
        r.node = v.node;
    }
    r.bytes = std::move(bytes);
    return r;
}

namespace detail {
/// True for a nonce or a proof: 64 lower-case hex digits.
[[nodiscard]] constexpr bool is_peer_hex(std::string_view token) noexcept {
    if (token.size() != 2 * peer_nonce_bytes) {
        return false;
    }
    return std::all_of(token.begin(), token.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

/// `head` and the words of `rest`, each after one space, then CRLF.
[[nodiscard]] inline std::string handshake_line(std::string_view head,
                                                std::initializer_list<std::string_view> rest) {
    std::string line(head);
    for (const std::string_view word : rest) {
        line.append(" ").append(word);
    }
    line.append(line_end);
    return line;
}

/// The hex HMAC-SHA-256 under `cookie` of `otpkv-peer-2 ROLE WORD...` (each word after one
/// space).
[[nodiscard]] inline std::string peer_mac(std::string_view cookie, std::string_view role,
                                          std::initializer_list<std::string_view> words) {
    std::string text = "otpkv-peer-2 ";
    text.append(role);
    for (const std::string_view word : words) {
        text.append(" ").append(word);
    }
    return to_hex(hmac_sha256(cookie, text));
}
} // namespace detail

inline std::string peer_greeting_line(std::string_view name, std::string_view nonce) {
    return detail::handshake_line(peer_greeting, {peer_version, name, nonce});
}

inline std::string peer_answer_line(std::string_view name, std::string_view nonce,
                                    std::string_view proof) {
    return detail::handshake_line(peer_greeting, {peer_version, name, nonce, proof});
}

inline std::string peer_proof_line(std::string_view proof) {
    return detail::handshake_line(peer_proof, {proof});
}

constexpr std::optional<peer_hello> parse_peer_greeting(std::string_view line) noexcept {
    std::array<std::string_view, 4> tokens{};
    if (detail::split_tokens(line, tokens) != tokens.size() || tokens[0] != peer_greeting ||
        tokens[1] != peer_version || !detail::is_peer_hex(tokens[3])) {
        return std::nullopt;
    }
    return peer_hello{tokens[2], tokens[3], {}};
}

constexpr std::optional<peer_hello> parse_peer_answer(std::string_view line) noexcept {
    std::array<std::string_view, 5> tokens{};
    if (detail::split_tokens(line, tokens) != tokens.size() || tokens[0] != peer_greeting ||
        tokens[1] != peer_version || !detail::is_peer_hex(tokens[3]) ||
        !detail::is_peer_hex(tokens[4])) {
        return std::nullopt;
    }
    return peer_hello{tokens[2], tokens[3], tokens[4]};
}

constexpr std::optional<std::string_view> parse_peer_proof(std::string_view line) noexcept {
    std::array<std::string_view, 2> tokens{};
    if (detail::split_tokens(line, tokens) != tokens.size() || tokens[0] != peer_proof ||
        !detail::is_peer_hex(tokens[1])) {
        return std::nullopt;
    }
    return tokens[1];
}

constexpr bool is_peer_handshake(std::string_view line) noexcept {
    std::array<std::string_view, 1> first{};
    detail::split_tokens(line, first);
    return first[0] == peer_greeting || first[0] == peer_proof;
}

inline std::string peer_accept_proof(std::string_view cookie, std::string_view accepting,
                                     std::string_view connecting, std::string_view connecting_nonce,
                                     std::string_view accepting_nonce) {
    return detail::peer_mac(cookie, "accept",
                            {accepting, connecting, connecting_nonce, accepting_nonce});
}

inline std::string peer_connect_proof(std::string_view cookie, std::string_view connecting,
                                      std::string_view accepting, std::string_view connecting_nonce,
                                      std::string_view accepting_nonce) {
    return detail::peer_mac(cookie, "connect",
                            {connecting, accepting, connecting_nonce, accepting_nonce});
}

inline bool peer_proof_matches(std::string_view expected, std::string_view got) noexcept {
    return detail::equal_in_constant_time(expected, got);
}

constexpr std::optional<std::uint64_t> parse_peer_id(std::string_view token) noexcept {
    if (token.empty() || token.size() > 20 || token.front() == '0') {
        return std::nullopt;
    }
    std::uint64_t id = 0;
    for (const char c : token) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        const auto digit = static_cast<std::uint64_t>(c - '0');
        if (id > (~std::uint64_t{0} - digit) / 10) {
            return std::nullopt; // past 2^64-1
        }
        id = id * 10 + digit;
    }
    return id;
}

template <byte_sink Out> void append_peer_id(Out& out, std::uint64_t id) {
    char digits[20];
    std::size_t n = 0;
    do {
        digits[sizeof digits - ++n] = static_cast<char>('0' + id % 10);
        id /= 10;
    } while (id != 0);
    out.append(digits + sizeof digits - n, n);
}

namespace detail {
/// `line` without its terminator (LF, CR LF) and split at the end of its first token.
constexpr std::optional<peer_line> split_peer_line(std::string_view line, char mark) noexcept {
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
        line.remove_suffix(1);
    }
    if (mark != 0) {
        if (line.empty() || line.front() != mark) {
            return std::nullopt;
        }
        line.remove_prefix(1);
    }
    std::size_t end = 0;
    while (end < line.size() && !is_token_separator(line[end])) {
        ++end;
    }
    const auto id = parse_peer_id(line.substr(0, end));
    if (!id) {
        return std::nullopt;
    }
    std::size_t rest = end;
    while (rest < line.size() && is_token_separator(line[rest])) {
        ++rest;
    }
    return peer_line{mark, *id, line.substr(rest)};
}
} // namespace detail

constexpr std::optional<peer_line> parse_peer_request(std::string_view line) noexcept {
    return detail::split_peer_line(line, 0);
}

constexpr std::optional<peer_line> parse_peer_reply(std::string_view line) noexcept {
    if (line.empty()) {
        return std::nullopt;
    }
    const char mark = line.front();
    if (mark != peer_reply_mark && mark != peer_event_mark && mark != peer_end_mark) {
        return std::nullopt;
    }
    auto r = detail::split_peer_line(line, mark);
    // Only an event has something after its id.
    if (r && (mark == peer_event_mark) == r->rest.empty()) {
        return std::nullopt;
    }
    return r;
}

} // namespace v0
} // namespace otpkv
