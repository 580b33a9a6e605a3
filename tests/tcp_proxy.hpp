// SPDX-License-Identifier: MIT
// A user-space TCP proxy for partition tests (no root needed): it listens on a loopback port
// of its own and forwards each connection to a target port, both ways, until `cut()`: then
// every connection through it is closed and new ones are accepted and held silent (as
// behind a network that drops everything) until `heal()`. One thread polls it all.
#pragma once

#include <otpkv/detail/socket.hpp>

#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace otpkv_test {

class tcp_proxy {
  public:
    explicit tcp_proxy(std::uint16_t target) : target_(target) {
        otpkv::detail::socket_address a;
        REQUIRE(otpkv::detail::socket_address::parse("127.0.0.1", 0, a));
        listener_ = otpkv::detail::listen_on(a, 64);
        port_ = otpkv::detail::local_address(listener_.get()).port();
        thread_ = std::thread([this] { run(); });
    }
    ~tcp_proxy() {
        stop_ = true;
        thread_.join();
    }
    tcp_proxy(const tcp_proxy&) = delete;
    tcp_proxy& operator=(const tcp_proxy&) = delete;

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    // Drops every connection through it; new ones are held silent until `heal`.
    void cut() { cut_ = true; }
    void heal() { cut_ = false; }

  private:
    struct link {
        otpkv::detail::unique_fd client;
        otpkv::detail::unique_fd server;
        std::string to_server; // read from the client, not yet written
        std::string to_client;
    };

    static bool pump(int from, int to, std::string& pending) {
        char buffer[16384];
        const ssize_t n = ::recv(from, buffer, sizeof buffer, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            return false;
        }
        if (n > 0) {
            pending.append(buffer, static_cast<std::size_t>(n));
        }
        return flush(to, pending);
    }
    static bool flush(int to, std::string& pending) {
        while (!pending.empty()) {
            const ssize_t n = otpkv::detail::send_some(to, pending.data(), pending.size());
            if (n > 0) {
                pending.erase(0, static_cast<std::size_t>(n));
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                return true;
            } else {
                return false;
            }
        }
        return true;
    }

    void run() {
        std::vector<std::unique_ptr<link>> links;
        std::vector<otpkv::detail::unique_fd> held; // accepted while cut
        while (!stop_) {
            if (cut_) {
                links.clear();
            } else {
                held.clear();
            }
            std::vector<pollfd> fds{{listener_.get(), POLLIN, 0}};
            for (const auto& l : links) {
                fds.push_back({l->client.get(),
                               static_cast<short>(POLLIN | (l->to_client.empty() ? 0 : POLLOUT)),
                               0});
                fds.push_back({l->server.get(),
                               static_cast<short>(POLLIN | (l->to_server.empty() ? 0 : POLLOUT)),
                               0});
            }
            if (::poll(fds.data(), fds.size(), 20) <= 0) {
                continue;
            }
            const std::size_t polled = links.size(); // a link accepted below waits a round
            if ((fds[0].revents & POLLIN) != 0) {
                otpkv::detail::unique_fd c(otpkv::detail::accept_connection(listener_.get()));
                if (c && cut_) {
                    held.push_back(std::move(c));
                } else if (c) {
                    auto l = std::make_unique<link>();
                    l->client = std::move(c);
                    l->server = connect_target();
                    if (l->server) {
                        links.push_back(std::move(l));
                    }
                }
            }
            for (std::size_t i = 0; i < polled; ++i) {
                link& l = *links[i];
                const short rc = fds[1 + 2 * i].revents;
                const short rs = fds[2 + 2 * i].revents;
                bool alive = true;
                if ((rc & (POLLIN | POLLHUP | POLLERR)) != 0) {
                    alive = pump(l.client.get(), l.server.get(), l.to_server);
                }
                if (alive && (rs & (POLLIN | POLLHUP | POLLERR)) != 0) {
                    alive = pump(l.server.get(), l.client.get(), l.to_client);
                }
                if (alive && (rc & POLLOUT) != 0) {
                    alive = flush(l.client.get(), l.to_client);
                }
                if (alive && (rs & POLLOUT) != 0) {
                    alive = flush(l.server.get(), l.to_server);
                }
                if (!alive) {
                    l.client.reset();
                    l.server.reset();
                }
            }
            std::erase_if(links, [](const auto& l) { return !l->client; });
        }
    }

    // A blocking connect to the target on loopback (it is local: at once or refused).
    [[nodiscard]] otpkv::detail::unique_fd connect_target() const {
        otpkv::detail::socket_address a;
        (void)otpkv::detail::socket_address::parse("127.0.0.1", target_, a);
        otpkv::detail::unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!fd || ::connect(fd.get(), a.get(), a.length) != 0) {
            return {};
        }
        otpkv::detail::set_nonblocking(fd.get());
        return fd;
    }

    std::uint16_t target_;
    otpkv::detail::unique_fd listener_;
    std::uint16_t port_ = 0;
    std::atomic<bool> cut_{false};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

} // namespace otpkv_test
