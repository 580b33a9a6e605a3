// SPDX-License-Identifier: MIT
/// @file
/// A small HTTP/1.1 client for one purpose: speaking to etcd's v3 JSON gateway
/// (`POST /v3/kv/range` and the like, JSON in and out) from a background thread, without a
/// runtime dependency. Not a general HTTP client: plain TCP only (no TLS), `POST` with a
/// JSON body, replies framed by `Content-Length` or `Transfer-Encoding: chunked`, no
/// redirects, no proxies, no `100 Continue`.
///
/// Every call is blocking and bounded by a deadline on the steady clock (connect, send and
/// each wait for bytes poll(2) against it), so the thread that calls it can always come
/// back to check whether it should stop. A connection is kept open between requests
/// (keep-alive) and opened again when the server closed it.
///
/// Streams (`/v3/watch`): `open_stream` sends the request and reads the reply's head; then
/// `next_line` hands out the body's lines one by one as they arrive (the gateway writes one
/// JSON message per line into a chunked body), and a deadline that passes with no line is
/// not an error (`http_status::waiting`): the stream stays usable.
///
/// Limits (a reply past one is an error and closes the connection): a head of at most
/// 64 KiB, a body or a stream line of at most `http_connection::max_body` bytes (64 MiB).
///
/// Thread safety: an `http_connection` belongs to one thread at a time.
#pragma once

#include <otpkv/detail/socket.hpp>
#include <otpkv/route.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include <poll.h>
#include <sys/socket.h>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// How an HTTP call ended.
enum class http_status : std::uint8_t {
    ok,      ///< a reply was read (its HTTP status code may still be an error)
    waiting, ///< a stream: the deadline passed before a whole line came (still usable)
    failed   ///< no reply: connect, send or read failed, timed out, or the reply was bad
};

/// One reply: the HTTP status code and the body, or why there is none.
struct http_reply {
    http_status status = http_status::failed;
    int code = 0;        ///< HTTP status code (200, 400, ...) when `status == ok`
    std::string body{};  ///< the whole body (for `next_line`: one line, without its `\n`)
    std::string error{}; ///< `failed`: a short reason (`connect to 127.0.0.1:2379: ...`)
};

/// One keep-alive HTTP/1.1 connection to `host:port`.
class http_connection {
  public:
    using clock = std::chrono::steady_clock;
    /// The largest body, or stream line, accepted.
    static constexpr std::size_t max_body = std::size_t{64} << 20;
    /// The largest reply head accepted.
    static constexpr std::size_t max_head = std::size_t{64} << 10;

    http_connection(std::string host, std::uint16_t port) : host_(std::move(host)), port_(port) {}

    /// `host:port` as given (an IPv6 literal in brackets).
    [[nodiscard]] std::string address() const {
        return (host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_) + ":" +
               std::to_string(port_);
    }

    /// POSTs `body` (JSON) to `path` and reads the whole reply. A kept-alive connection the
    /// server had closed is opened again once, when nothing of the reply had come.
    [[nodiscard]] http_reply post(std::string_view path, std::string_view body,
                                  clock::time_point deadline);

    /// POSTs `body` to `path` on a fresh connection and reads the reply's head: `ok` with
    /// code 200 when the stream is open (its lines then come from `next_line`), `ok` with
    /// another code and the whole body when the server refused it, or `failed`.
    [[nodiscard]] http_reply open_stream(std::string_view path, std::string_view body,
                                         clock::time_point deadline);

    /// The stream's next non-empty line (`ok`), `waiting` when none came by `deadline`, or
    /// `failed` (the stream ended, broke, or sent something that is not HTTP); after
    /// `failed` the connection is closed.
    [[nodiscard]] http_reply next_line(clock::time_point deadline);

    /// Closes the connection (the next `post` opens another).
    void close() noexcept {
        fd_.reset();
        in_.clear();
        streaming_ = false;
    }

  private:
    struct head {
        int code = 0;
        bool chunked = false;
        bool close = false;
        std::size_t length = 0;
        bool has_length = false;
    };
    /// A `failed` reply saying `why`, the connection closed.
    [[nodiscard]] http_reply fail(std::string why) {
        close();
        http_reply r;
        r.error = std::move(why);
        return r;
    }
    [[nodiscard]] std::string connect(clock::time_point deadline);
    [[nodiscard]] std::string send_all(std::string_view bytes, clock::time_point deadline);
    /// Reads more bytes into `in_`: "" when some came, "timeout", or why it failed.
    [[nodiscard]] std::string read_more(clock::time_point deadline);
    [[nodiscard]] std::string read_head(head& h, clock::time_point deadline);
    /// Decodes whole chunks of `in_` into `body_` (up to the last chunk when `finished`).
    [[nodiscard]] std::string take_chunks(bool& finished);
    [[nodiscard]] std::string request_text(std::string_view path, std::string_view body) const;
    [[nodiscard]] http_reply exchange(std::string_view path, std::string_view body,
                                      clock::time_point deadline, bool& nothing_read);

    std::string host_;
    std::uint16_t port_;
    unique_fd fd_;
    std::string in_;   ///< bytes read and not yet consumed
    std::string body_; ///< a stream's decoded body bytes not yet handed out
    bool streaming_ = false;
    bool stream_ended_ = false;
};

// =======================================================================================
// Implementation
// =======================================================================================

/// Milliseconds left until `deadline`, at least 0, for poll(2).
[[nodiscard]] inline int poll_timeout(std::chrono::steady_clock::time_point deadline) {
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(left.count(), 0, 1 << 30));
}

/// Waits until `fd` is ready for `events`; false when the deadline passed first.
[[nodiscard]] inline bool wait_ready(int fd, short events,
                                     std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        pollfd p{fd, events, 0};
        const int n = ::poll(&p, 1, poll_timeout(deadline));
        if (n > 0) {
            return true;
        }
        if (n == 0 || errno != EINTR) {
            return false;
        }
    }
}

inline std::string http_connection::connect(clock::time_point deadline) {
    socket_address where;
    if (!resolve(host_, port_, where)) {
        return "cannot resolve " + host_;
    }
    unique_fd fd(::socket(where.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
        return std::string("socket: ") + std::strerror(errno);
    }
    if (::connect(fd.get(), where.get(), where.length) != 0) {
        if (errno != EINPROGRESS) {
            return "connect to " + address() + ": " + std::strerror(errno);
        }
        if (!wait_ready(fd.get(), POLLOUT, deadline)) {
            return "connect to " + address() + ": timed out";
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            return "connect to " + address() + ": " + std::strerror(err != 0 ? err : errno);
        }
    }
    const int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fd_ = std::move(fd);
    in_.clear();
    return {};
}

inline std::string http_connection::send_all(std::string_view bytes, clock::time_point deadline) {
    while (!bytes.empty()) {
        const ssize_t n = send_some(fd_.get(), bytes.data(), bytes.size());
        if (n > 0) {
            bytes.remove_prefix(static_cast<std::size_t>(n));
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_ready(fd_.get(), POLLOUT, deadline)) {
                return "send to " + address() + ": timed out";
            }
        } else {
            return "send to " + address() + ": " + std::strerror(errno);
        }
    }
    return {};
}

inline std::string http_connection::read_more(clock::time_point deadline) {
    char buffer[16384];
    for (;;) {
        const ssize_t n = ::recv(fd_.get(), buffer, sizeof buffer, 0);
        if (n > 0) {
            in_.append(buffer, static_cast<std::size_t>(n));
            return {};
        }
        if (n == 0) {
            return "closed by " + address();
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return "read from " + address() + ": " + std::strerror(errno);
        }
        if (!wait_ready(fd_.get(), POLLIN, deadline)) {
            return "timeout";
        }
    }
}

/// Compares ASCII letters without regard to case.
[[nodiscard]] inline bool same_letters(std::string_view a, std::string_view b) noexcept {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               const auto lower = [](char c) {
                   return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
               };
               return lower(x) == lower(y);
           });
}

inline std::string http_connection::read_head(head& h, clock::time_point deadline) {
    std::size_t end = 0;
    while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
        if (in_.size() > max_head) {
            return "reply head from " + address() + " longer than 64 KiB";
        }
        if (std::string why = read_more(deadline); !why.empty()) {
            return why;
        }
    }
    if (end + 4 > max_head) {
        return "reply head from " + address() + " longer than 64 KiB";
    }
    const std::string text = in_.substr(0, end + 2);
    in_.erase(0, end + 4);
    // Status line: HTTP/1.x NNN reason
    std::string_view rest = text;
    const std::size_t eol = rest.find("\r\n");
    const std::string_view status = rest.substr(0, eol);
    rest.remove_prefix(eol + 2);
    if (status.size() < 12 || !status.starts_with("HTTP/1.") || status[8] != ' ' ||
        !is_digit(status[9]) || !is_digit(status[10]) || !is_digit(status[11])) {
        return "not an HTTP/1.x reply from " + address();
    }
    h.code = (status[9] - '0') * 100 + (status[10] - '0') * 10 + (status[11] - '0');
    h.close = status.starts_with("HTTP/1.0");
    while (!rest.empty()) {
        const std::size_t header_end = rest.find("\r\n");
        std::string_view line = rest.substr(0, header_end);
        rest.remove_prefix(header_end + 2);
        const std::size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
            return "bad header line from " + address();
        }
        const std::string_view name = line.substr(0, colon);
        std::string_view value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
            value.remove_prefix(1);
        }
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
            value.remove_suffix(1);
        }
        if (same_letters(name, "content-length")) {
            std::size_t n = 0;
            if (value.empty() || value.size() > 12 ||
                !std::all_of(value.begin(), value.end(), is_digit)) {
                return "bad Content-Length from " + address();
            }
            for (const char c : value) {
                n = n * 10 + static_cast<std::size_t>(c - '0');
            }
            h.length = n;
            h.has_length = true;
        } else if (same_letters(name, "transfer-encoding")) {
            if (!same_letters(value, "chunked")) {
                return "unsupported Transfer-Encoding from " + address();
            }
            h.chunked = true;
        } else if (same_letters(name, "connection")) {
            h.close = same_letters(value, "close");
        }
    }
    return {};
}

inline std::string http_connection::take_chunks(bool& finished) {
    finished = false;
    for (;;) {
        const std::size_t eol = in_.find("\r\n");
        if (eol == std::string::npos) {
            return in_.size() > 64 ? "bad chunk size line from " + address() : std::string();
        }
        std::size_t size = 0;
        std::size_t i = 0;
        for (; i < eol; ++i) {
            const char c = in_[i];
            int digit = -1;
            if (is_digit(c)) {
                digit = c - '0';
            } else if (c >= 'a' && c <= 'f') {
                digit = c - 'a' + 10;
            } else if (c >= 'A' && c <= 'F') {
                digit = c - 'A' + 10;
            } else {
                break; // a chunk extension (`;name=value`) or bad
            }
            if (size > (max_body >> 4)) {
                return "chunk from " + address() + " larger than 64 MiB";
            }
            size = size * 16 + static_cast<std::size_t>(digit);
        }
        if (i == 0 || (i < eol && in_[i] != ';')) {
            return "bad chunk size line from " + address();
        }
        if (size == 0) {
            // The last chunk: no trailers expected, just its empty line.
            if (in_.size() < eol + 4) {
                return {};
            }
            if (in_.compare(eol + 2, 2, "\r\n") != 0) {
                return "trailers after the last chunk from " + address();
            }
            in_.erase(0, eol + 4);
            finished = true;
            return {};
        }
        if (in_.size() < eol + 2 + size + 2) {
            return {}; // not all of it yet
        }
        if (in_.compare(eol + 2 + size, 2, "\r\n") != 0) {
            return "chunk without its line end from " + address();
        }
        if (body_.size() + size > max_body) {
            return "body from " + address() + " larger than 64 MiB";
        }
        body_.append(in_, eol + 2, size);
        in_.erase(0, eol + 2 + size + 2);
    }
}

inline std::string http_connection::request_text(std::string_view path,
                                                 std::string_view body) const {
    std::string text;
    text.reserve(160 + path.size() + body.size());
    text.append("POST ").append(path).append(" HTTP/1.1\r\nHost: ").append(address());
    text.append("\r\nContent-Type: application/json\r\nContent-Length: ");
    text.append(std::to_string(body.size())).append("\r\n\r\n").append(body);
    return text;
}

inline http_reply http_connection::exchange(std::string_view path, std::string_view body,
                                            clock::time_point deadline, bool& nothing_read) {
    nothing_read = true;
    if (std::string why = send_all(request_text(path, body), deadline); !why.empty()) {
        return fail(std::move(why));
    }
    head h;
    if (std::string why = read_head(h, deadline); !why.empty()) {
        nothing_read = in_.empty() && why.starts_with("closed");
        return fail(why == "timeout" ? "no reply from " + address() + " in time" : why);
    }
    nothing_read = false;
    http_reply r;
    body_.clear();
    if (h.chunked) {
        bool finished = false;
        for (;;) {
            if (std::string why = take_chunks(finished); !why.empty()) {
                return fail(std::move(why));
            }
            if (finished) {
                break;
            }
            if (std::string why = read_more(deadline); !why.empty()) {
                return fail(why == "timeout" ? "reply from " + address() + " cut short" : why);
            }
        }
        r.body = std::move(body_);
        body_.clear();
    } else if (h.has_length) {
        if (h.length > max_body) {
            return fail("body from " + address() + " larger than 64 MiB");
        }
        while (in_.size() < h.length) {
            if (std::string why = read_more(deadline); !why.empty()) {
                return fail(why == "timeout" ? "reply from " + address() + " cut short" : why);
            }
        }
        r.body = in_.substr(0, h.length);
        in_.erase(0, h.length);
    } else {
        return fail("reply from " + address() + " without a length");
    }
    r.status = http_status::ok;
    r.code = h.code;
    if (h.close) {
        close();
    }
    return r;
}

inline http_reply http_connection::post(std::string_view path, std::string_view body,
                                        clock::time_point deadline) {
    if (streaming_) {
        close();
    }
    for (int attempt = 0;; ++attempt) {
        const bool reused = static_cast<bool>(fd_);
        if (!reused) {
            if (std::string why = connect(deadline); !why.empty()) {
                return fail(std::move(why));
            }
        }
        bool nothing_read = true;
        http_reply r = exchange(path, body, deadline, nothing_read);
        // A kept-alive connection closed by the server (its idle timeout) before this
        // request: a POST that got no byte back is sent once more on a new connection.
        if (r.status == http_status::failed && reused && nothing_read && attempt == 0) {
            continue;
        }
        return r;
    }
}

inline http_reply http_connection::open_stream(std::string_view path, std::string_view body,
                                               clock::time_point deadline) {
    close();
    if (std::string why = connect(deadline); !why.empty()) {
        return fail(std::move(why));
    }
    if (std::string why = send_all(request_text(path, body), deadline); !why.empty()) {
        return fail(std::move(why));
    }
    head h;
    if (std::string why = read_head(h, deadline); !why.empty()) {
        return fail(why == "timeout" ? "no reply from " + address() + " in time" : why);
    }
    http_reply r;
    r.status = http_status::ok;
    r.code = h.code;
    if (h.code != 200 || !h.chunked) {
        // A refusal: read its body whole (bounded) and close.
        if (h.has_length && h.length <= max_head) {
            while (in_.size() < h.length && read_more(deadline).empty()) {
            }
            r.body = in_.substr(0, std::min(h.length, in_.size()));
        }
        close();
        return r;
    }
    streaming_ = true;
    stream_ended_ = false;
    body_.clear();
    return r;
}

inline http_reply http_connection::next_line(clock::time_point deadline) {
    if (!streaming_) {
        return fail("no stream open");
    }
    for (;;) {
        const std::size_t eol = body_.find('\n');
        if (eol != std::string::npos) {
            http_reply r;
            r.status = http_status::ok;
            r.code = 200;
            r.body = body_.substr(0, eol);
            body_.erase(0, eol + 1);
            if (!r.body.empty() && r.body.back() == '\r') {
                r.body.pop_back();
            }
            if (r.body.empty()) {
                continue;
            }
            return r;
        }
        if (stream_ended_) {
            return fail("stream from " + address() + " ended");
        }
        if (body_.size() > max_body) {
            return fail("stream line from " + address() + " longer than 64 MiB");
        }
        bool finished = false;
        if (std::string why = take_chunks(finished); !why.empty()) {
            return fail(std::move(why));
        }
        if (finished) {
            stream_ended_ = true;
            continue;
        }
        if (body_.find('\n') != std::string::npos) {
            continue;
        }
        if (std::string why = read_more(deadline); !why.empty()) {
            if (why == "timeout") {
                http_reply r;
                r.status = http_status::waiting;
                return r;
            }
            return fail(std::move(why));
        }
    }
}

} // namespace detail
} // namespace v0
} // namespace otpkv
