// SPDX-License-Identifier: MIT
/// @file
/// The POSIX plumbing under `net/`: an owned file descriptor, socket addresses, a listening
/// socket, a wake-up pipe, and a readiness poller with two backends: epoll on Linux and
/// poll(2) everywhere (selectable on Linux too, so the fallback is tested there).
///
/// Nothing here is public API; `net/server.hpp` and `net/client.hpp` are.
#pragma once

#include <otpkv/net/poller.hpp>
#include <otpkv/process.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/epoll.h>
#endif

namespace otpkv {
inline namespace v0 {

namespace detail {

/// An owned file descriptor: closed on destruction. Movable.
class unique_fd {
  public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& other) noexcept {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    [[nodiscard]] int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = fd;
    }

  private:
    int fd_ = -1;
};

/// A std::system_error for the current errno, saying what was being done.
inline std::system_error errno_error(const std::string& what) {
    return {errno, std::generic_category(), what};
}

inline void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL, 0);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        throw errno_error("fcntl(O_NONBLOCK)");
    }
}

inline void set_cloexec(int fd) noexcept {
    const int flags = ::fcntl(fd, F_GETFD, 0);
    if (flags >= 0) {
        ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
}

/// An IPv4 or IPv6 socket address.
struct socket_address {
    sockaddr_storage storage{};
    socklen_t length = 0;

    [[nodiscard]] const sockaddr* get() const noexcept {
        return reinterpret_cast<const sockaddr*>(&storage); // NOLINT: the sockets API
    }
    [[nodiscard]] sockaddr* get() noexcept {
        return reinterpret_cast<sockaddr*>(&storage); // NOLINT: the sockets API
    }
    [[nodiscard]] int family() const noexcept { return storage.ss_family; }

    /// The address of a numeric IPv4 or IPv6 literal, or nothing.
    static bool parse(std::string_view host, std::uint16_t port, socket_address& out) {
        const std::string text(host);
        out = {};
        const auto keep = [&out](const auto& address) {
            std::memcpy(&out.storage, &address, sizeof address);
            out.length = sizeof address;
            return true;
        };
        sockaddr_in v4{
            .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = {}, .sin_zero = {}};
        if (::inet_pton(AF_INET, text.c_str(), &v4.sin_addr) == 1) {
            return keep(v4);
        }
        sockaddr_in6 v6{};
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons(port);
        return ::inet_pton(AF_INET6, text.c_str(), &v6.sin6_addr) == 1 && keep(v6);
    }

    [[nodiscard]] std::uint16_t port() const noexcept {
        if (family() == AF_INET6) {
            sockaddr_in6 v6{};
            std::memcpy(&v6, &storage, sizeof v6);
            return ntohs(v6.sin6_port);
        }
        sockaddr_in v4{};
        std::memcpy(&v4, &storage, sizeof v4);
        return ntohs(v4.sin_port);
    }

    /// The address without the port: `127.0.0.1`, `::1`.
    [[nodiscard]] std::string host() const {
        char text[INET6_ADDRSTRLEN] = {};
        if (family() == AF_INET6) {
            sockaddr_in6 v6{};
            std::memcpy(&v6, &storage, sizeof v6);
            ::inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof text);
        } else {
            sockaddr_in v4{};
            std::memcpy(&v4, &storage, sizeof v4);
            ::inet_ntop(AF_INET, &v4.sin_addr, text, sizeof text);
        }
        return text;
    }

    /// `127.0.0.1:4040`, `[::1]:4040`.
    [[nodiscard]] std::string to_string() const {
        const std::string h = host();
        return (family() == AF_INET6 ? "[" + h + "]" : h) + ":" + std::to_string(port());
    }
};

/// Resolves `host:port` (a literal at once; a host name through getaddrinfo, which may
/// block) into the first address found.
inline bool resolve(const std::string& host, std::uint16_t port, socket_address& out) {
    if (socket_address::parse(host, port, out)) {
        return true;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(port);
    if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &found) != 0 || found == nullptr) {
        return false;
    }
    std::memcpy(&out.storage, found->ai_addr, found->ai_addrlen);
    out.length = static_cast<socklen_t>(found->ai_addrlen);
    ::freeaddrinfo(found);
    return true;
}

/// A non-blocking listening TCP socket bound to `address`. Throws std::system_error naming
/// the address (EADDRINUSE: the port is taken).
inline unique_fd listen_on(const socket_address& address, int backlog) {
    unique_fd fd(::socket(address.family(), SOCK_STREAM, 0));
    if (!fd) {
        throw errno_error("socket");
    }
    set_cloexec(fd.get());
    const int one = 1;
    // SO_REUSEADDR: a restarted server (or node) rebinds its port while old connections of
    // the previous one are still in TIME_WAIT.
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), address.get(), address.length) < 0) {
        throw errno_error("cannot listen on " + address.to_string());
    }
    if (::listen(fd.get(), backlog) < 0) {
        throw errno_error("listen on " + address.to_string());
    }
    set_nonblocking(fd.get());
    return fd;
}

/// The address a socket is bound to.
inline socket_address local_address(int fd) {
    socket_address a;
    a.length = sizeof a.storage;
    if (::getsockname(fd, a.get(), &a.length) < 0) {
        throw errno_error("getsockname");
    }
    return a;
}

/// Accepts one connection, non-blocking and close-on-exec; -1 with errno set when none.
inline int accept_connection(int listener) noexcept {
#if defined(__linux__)
    return ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    const int fd = ::accept(listener, nullptr, nullptr);
    if (fd >= 0) {
        set_cloexec(fd);
        const int flags = ::fcntl(fd, F_GETFL, 0);
        ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    }
    return fd;
#endif
}

/// Sends without raising SIGPIPE on a connection the peer has closed.
inline ssize_t send_some(int fd, const char* data, std::size_t size) noexcept {
#if defined(MSG_NOSIGNAL)
    return ::send(fd, data, size, MSG_NOSIGNAL);
#else
    return ::send(fd, data, size, 0);
#endif
}

/// Interest in readiness, and what a wait reports.
/// Sends what `out` holds past `sent`, as much as the socket takes now; once all is sent,
/// empties `out` (and gives back its memory when more than `keep` bytes were reserved).
/// False when the connection is broken (reset, closed): nothing more can be delivered.
inline bool send_pending(int fd, std::string& out, std::size_t& sent, std::size_t keep) {
    while (sent < out.size()) {
        const ssize_t n = send_some(fd, out.data() + sent, out.size() - sent);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return true;
        } else {
            return false;
        }
    }
    sent = 0;
    out.clear();
    if (out.capacity() > keep) {
        std::string().swap(out); // a burst is over: give its memory back
    }
    return true;
}

enum io_events : std::uint32_t { io_none = 0, io_read = 1, io_write = 2, io_error = 4 };

/// One readiness report: the pointer registered with the descriptor, and its events.
struct io_event {
    void* tag;
    std::uint32_t events;
};

/// A readiness poller over file descriptors, each registered with a tag pointer.
/// epoll is level-triggered here, like poll(2), so the two behave the same.
/// Thread safety: none; one poller belongs to one event loop.
class poller {
  public:
    explicit poller(poller_kind kind) {
#if defined(__linux__)
        use_epoll_ = kind != poller_kind::poll;
        if (use_epoll_) {
            epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
            if (!epoll_) {
                throw errno_error("epoll_create1");
            }
        }
#else
        if (kind == poller_kind::epoll) {
            throw std::system_error(ENOSYS, std::generic_category(), "epoll");
        }
#endif
    }

    /// Registers `fd`. `exclusive`: only one of the pollers sharing `fd` is woken for it
    /// (EPOLLEXCLUSIVE; a listening socket shared by every loop).
    void add(int fd, void* tag, std::uint32_t interest, bool exclusive = false) {
#if defined(__linux__)
        if (use_epoll_) {
            epoll_event ev = make(tag, interest);
            if (exclusive) {
                ev.events |= EPOLLEXCLUSIVE;
            }
            if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
                throw errno_error("epoll_ctl(ADD)");
            }
            return;
        }
#endif
        (void)exclusive;
        index_[fd] = fds_.size();
        fds_.push_back({fd, to_poll(interest), 0});
        tags_.push_back(tag);
    }

    void modify(int fd, void* tag, std::uint32_t interest) {
#if defined(__linux__)
        if (use_epoll_) {
            epoll_event ev = make(tag, interest);
            ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev);
            return;
        }
#endif
        if (const auto it = index_.find(fd); it != index_.end()) {
            fds_[it->second].events = to_poll(interest);
            tags_[it->second] = tag;
        }
    }

    void remove(int fd) noexcept {
#if defined(__linux__)
        if (use_epoll_) {
            ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
            return;
        }
#endif
        const auto it = index_.find(fd);
        if (it == index_.end()) {
            return;
        }
        const std::size_t slot = it->second;
        index_.erase(it);
        if (slot + 1 != fds_.size()) {
            fds_[slot] = fds_.back();
            tags_[slot] = tags_.back();
            index_[fds_[slot].fd] = slot;
        }
        fds_.pop_back();
        tags_.pop_back();
    }

    /// Waits up to `timeout_ms` (-1: for ever) and fills `out` with what is ready.
    void wait(std::vector<io_event>& out, int timeout_ms) {
        out.clear();
#if defined(__linux__)
        if (use_epoll_) {
            epoll_event events[256];
            const int n = ::epoll_wait(epoll_.get(), events, 256, timeout_ms);
            for (int i = 0; i < n; ++i) {
                const epoll_event& ev = events[i];
                std::uint32_t got = io_none;
                got |= (ev.events & EPOLLIN) != 0 ? io_read : io_none;
                got |= (ev.events & EPOLLOUT) != 0 ? io_write : io_none;
                got |= (ev.events & (EPOLLERR | EPOLLHUP)) != 0 ? io_error : io_none;
                out.push_back({ev.data.ptr, got});
            }
            return;
        }
#endif
        if (::poll(fds_.data(), fds_.size(), timeout_ms) <= 0) {
            return;
        }
        for (std::size_t i = 0; i < fds_.size(); ++i) {
            const auto revents = static_cast<unsigned>(fds_[i].revents);
            if (revents == 0) {
                continue;
            }
            std::uint32_t got = io_none;
            got |= (revents & POLLIN) != 0 ? io_read : io_none;
            got |= (revents & POLLOUT) != 0 ? io_write : io_none;
            got |= (revents & (POLLERR | POLLHUP | POLLNVAL)) != 0 ? io_error : io_none;
            out.push_back({tags_[i], got});
        }
    }

  private:
#if defined(__linux__)
    static epoll_event make(void* tag, std::uint32_t interest) noexcept {
        epoll_event ev{};
        ev.events = ((interest & io_read) != 0 ? EPOLLIN : 0U) |
                    ((interest & io_write) != 0 ? EPOLLOUT : 0U);
        ev.data.ptr = tag;
        return ev;
    }
    bool use_epoll_ = true;
    unique_fd epoll_;
#endif
    static short to_poll(std::uint32_t interest) noexcept {
        return static_cast<short>(((interest & io_read) != 0 ? POLLIN : 0) |
                                  ((interest & io_write) != 0 ? POLLOUT : 0));
    }
    std::vector<pollfd> fds_;
    std::vector<void*> tags_;
    std::unordered_map<int, std::size_t> index_;
};

/// A self-pipe that wakes a poller from another thread. `notify` is async-signal-safe.
class wake_pipe {
  public:
    wake_pipe() {
        int fds[2];
        if (::pipe(fds) < 0) {
            throw errno_error("pipe");
        }
        read_.reset(fds[0]);
        write_.reset(fds[1]);
        for (const int fd : fds) {
            set_cloexec(fd);
            set_nonblocking(fd);
        }
    }
    [[nodiscard]] int read_fd() const noexcept { return read_.get(); }
    /// Makes `read_fd` readable (a full pipe is already readable, so the error is moot).
    void notify() const noexcept {
        const char byte = 1;
        [[maybe_unused]] const auto n = ::write(write_.get(), &byte, 1);
    }
    /// Empties the pipe.
    void drain() const noexcept {
        char bytes[256];
        while (::read(read_.get(), bytes, sizeof bytes) > 0) {
        }
    }

  private:
    unique_fd read_;
    unique_fd write_;
};

} // namespace detail
} // namespace v0
} // namespace otpkv
