// SPDX-License-Identifier: MIT
// kv_load: The data (keys, values, and the value every key must hold now) and the requests and
// replies of the two servers, kv_server and Redis.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <vector>

#include "report.hpp"

namespace kv_load {

// ------------------------------------------------------------------------------------------
// The data: keys, values, and the value every key must hold now

// A value is 8 characters from a 64-letter alphabet, so it carries 48 bits: a 16-bit writer id
// and a 32-bit counter. Prefilled values use writer 0xffff and the key's index as counter.
using value_bytes = std::array<char, 8>;
inline constexpr std::string_view value_alphabet =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/";
inline constexpr std::uint64_t prefill_writer = 0xffff;

inline std::uint64_t value_code(std::uint64_t writer, std::uint64_t counter) noexcept {
    return (writer << 32) | (counter & 0xffff'ffffU);
}

inline value_bytes encode_value(std::uint64_t code) noexcept {
    value_bytes out{};
    for (std::size_t i = 0; i < out.size(); ++i) {
        out[out.size() - 1 - i] = value_alphabet[(code >> (6 * i)) & 63U];
    }
    return out;
}

// Buckets and fixed-width keys ("key000123"); key k of bucket b has the linear index b*keys+k.
struct keyspace {
    std::vector<std::string> buckets;
    std::string prefix;
    std::size_t digits = 6;
    std::uint32_t keys = 0;

    std::uint64_t size() const noexcept { return buckets.size() * std::uint64_t{keys}; }
    std::size_t key_size() const noexcept { return prefix.size() + digits; }
    char* write_key(char* out, std::uint32_t k) const noexcept {
        std::memcpy(out, prefix.data(), prefix.size());
        out += prefix.size();
        for (std::size_t i = digits; i-- > 0;) {
            out[i] = static_cast<char>('0' + k % 10);
            k /= 10;
        }
        return out + digits;
    }
};

inline std::size_t decimal_digits(std::uint64_t n) noexcept {
    std::size_t d = 1;
    for (; n >= 10; n /= 10) {
        ++d;
    }
    return d;
}

// ------------------------------------------------------------------------------------------
// Requests and replies of the two servers

// etcd is no server under test: --replication and --failover run it beside kv_server.
enum class server_kind { kv, redis, etcd };
enum class op : std::uint8_t { get, put };

inline const char* label(server_kind kind) noexcept {
    return kind == server_kind::kv ? "kv_server" : kind == server_kind::redis ? "redis" : "etcd";
}

// Both servers get CRLF-terminated lines, as the guide's own clients send them:
//   kv_server: "GET b k\r\n"  "PUT b k v\r\n"      redis: "HGET b k\r\n"  "HSET b k v\r\n"
inline std::size_t max_request_size(const keyspace& ks) {
    std::size_t bucket = 0;
    for (const auto& b : ks.buckets) {
        bucket = std::max(bucket, b.size());
    }
    return 5 + bucket + 1 + ks.key_size() + 1 + std::tuple_size_v<value_bytes> + 2;
}

inline char* write_request(char* out, server_kind kind, op o, const keyspace& ks,
                           std::uint32_t bucket, std::uint32_t key,
                           const value_bytes& value) noexcept {
    const std::string_view verb = kind == server_kind::kv ? (o == op::get ? "GET " : "PUT ")
                                                          : (o == op::get ? "HGET " : "HSET ");
    std::memcpy(out, verb.data(), verb.size());
    out += verb.size();
    const std::string& b = ks.buckets[bucket];
    std::memcpy(out, b.data(), b.size());
    out += b.size();
    *out++ = ' ';
    out = ks.write_key(out, key);
    if (o == op::put) {
        *out++ = ' ';
        std::memcpy(out, value.data(), value.size());
        out += value.size();
    }
    *out++ = '\r';
    *out++ = '\n';
    return out;
}

// One request in flight: what was asked, what must come back, when it was sent.
struct pending {
    std::int64_t sent_ns = 0;
    std::uint32_t bucket = 0;
    std::uint32_t key = 0;
    op kind = op::get;
    value_bytes value{}; // the value a GET must return, or the value a PUT wrote
};

enum class verdict { incomplete, ok, mismatch, error_reply, protocol_error };

struct reply {
    verdict v = verdict::incomplete;
    std::size_t used = 0; // bytes of the stream this reply took
    std::string_view got;
};

// The line starting at `from`: returns the offset after its terminator, or 0 while it is not
// complete. Both servers end lines with CRLF; a bare LF is flagged.
inline std::size_t find_line(std::string_view in, std::size_t from, std::string_view& line,
                             bool& bare_lf) noexcept {
    const std::size_t lf = in.find('\n', from);
    if (lf == std::string_view::npos) {
        return 0;
    }
    if (lf == from || in[lf - 1] != '\r') {
        bare_lf = true;
        line = in.substr(from, lf - from);
    } else {
        line = in.substr(from, lf - 1 - from);
    }
    return lf + 1;
}

// kv_server: PUT -> "OK"; GET -> the value line, then "OK". An error is one line ("NOT FOUND",
// "UNKNOWN COMMAND", "ERROR ..."), so the stream stays in step after one; anything else means
// the client no longer knows where a reply starts: a protocol error, and the connection is
// dropped.
inline reply parse_kv(std::string_view in, const pending& p) noexcept {
    std::string_view first;
    bool bare = false;
    const std::size_t after_first = find_line(in, 0, first, bare);
    if (after_first == 0) {
        return {};
    }
    if (bare) {
        return {verdict::protocol_error, after_first, first};
    }
    const std::string_view expected(p.value.data(), p.value.size());
    const bool error_line =
        first == "NOT FOUND" || first == "UNKNOWN COMMAND" || first.starts_with("ERROR");
    if (p.kind == op::put) {
        if (first == "OK") {
            return {verdict::ok, after_first, first};
        }
        return {error_line ? verdict::error_reply : verdict::protocol_error, after_first, first};
    }
    if (first != expected && error_line) {
        return {verdict::error_reply, after_first, first};
    }
    std::string_view second;
    const std::size_t after_second = find_line(in, after_first, second, bare);
    if (after_second == 0) {
        return {};
    }
    if (bare || second != "OK") {
        return {verdict::protocol_error, after_second, second};
    }
    return {first == expected ? verdict::ok : verdict::mismatch, after_second, first};
}

// Redis: HSET -> ":0" or ":1"; HGET -> "$8", the value, or "$-1" (absent: a mismatch here, as
// every key exists); "-..." is an error reply.
inline reply parse_redis(std::string_view in, const pending& p) noexcept {
    std::string_view first;
    bool bare = false;
    const std::size_t after_first = find_line(in, 0, first, bare);
    if (after_first == 0) {
        return {};
    }
    if (bare || first.empty()) {
        return {verdict::protocol_error, after_first, first};
    }
    if (first[0] == '-') {
        return {verdict::error_reply, after_first, first};
    }
    if (p.kind == op::put) {
        const bool ok = first == ":0" || first == ":1";
        return {ok ? verdict::ok : verdict::protocol_error, after_first, first};
    }
    if (first == "$-1") {
        return {verdict::mismatch, after_first, "(nil)"};
    }
    std::size_t length = 0;
    const char* end = first.data() + first.size();
    const auto [ptr, ec] = std::from_chars(first.data() + 1, end, length);
    if (first[0] != '$' || ec != std::errc{} || ptr != end || length > 65536) {
        return {verdict::protocol_error, after_first, first};
    }
    if (in.size() < after_first + length + 2) {
        return {};
    }
    const std::size_t after = after_first + length + 2;
    if (in[after - 2] != '\r' || in[after - 1] != '\n') {
        return {verdict::protocol_error, after, in.substr(after_first, length + 2)};
    }
    const std::string_view value = in.substr(after_first, length);
    const std::string_view expected(p.value.data(), p.value.size());
    return {value == expected ? verdict::ok : verdict::mismatch, after, value};
}

} // namespace kv_load
