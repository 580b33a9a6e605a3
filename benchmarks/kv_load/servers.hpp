// SPDX-License-Identifier: MIT
// kv_load: Sockets on loopback, and starting the servers under test.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "options.hpp"
#include "processes.hpp"
#include "protocols.hpp"
#include "report.hpp"

namespace kv_load {

// ------------------------------------------------------------------------------------------
// Sockets

inline sockaddr_in loopback(int port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(0x7f000001U);
    return addr;
}

inline void set_nodelay(int fd) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// A blocking connection (control requests), or -1. A receive_buffer above 0 becomes the
// socket's SO_RCVBUF before it connects, so the window it offers is small from the start.
inline int connect_blocking(int port, int receive_buffer = 0) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (receive_buffer > 0) {
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    }
    const sockaddr_in addr = loopback(port);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return -1;
    }
    set_nodelay(fd);
    return fd;
}

// Opens n non-blocking TCP_NODELAY connections, 128 connects at a time (so the listen
// backlog never overflows), each batch given 10 s. Appends to fds; on a failure, closes
// every connection it opened, leaves fds as it was and returns false.
inline bool connect_many(int port, std::size_t n, std::vector<int>& fds) {
    constexpr std::size_t batch = 128;
    const sockaddr_in addr = loopback(port);
    const std::size_t first = fds.size();
    std::vector<pollfd> waiting;
    const auto give_up = [&] {
        for (const auto& w : waiting) {
            if (w.fd >= 0) {
                ::close(w.fd);
            }
        }
        for (std::size_t i = first; i < fds.size(); ++i) {
            ::close(fds[i]);
        }
        fds.resize(first);
        return false;
    };
    for (std::size_t start = 0; start < n; start += batch) {
        waiting.clear();
        for (std::size_t i = start; i < std::min(n, start + batch); ++i) {
            const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                issue("socket (connection %zu): %s", i, std::strerror(errno));
                return give_up();
            }
            set_nodelay(fd);
            if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
                fds.push_back(fd);
            } else if (errno == EINPROGRESS) {
                waiting.push_back(pollfd{fd, POLLOUT, 0});
            } else {
                issue("connect (connection %zu): %s", i, std::strerror(errno));
                ::close(fd);
                return give_up();
            }
        }
        const std::int64_t deadline = now_ns() + 10'000'000'000;
        std::size_t left = waiting.size();
        while (left > 0) {
            const int ms = ms_until(deadline);
            if (ms <= 0 || ::poll(waiting.data(), waiting.size(), ms) < 0) {
                if (ms > 0 && errno == EINTR) {
                    continue;
                }
                issue("%zu connects did not complete within 10 s", left);
                return give_up();
            }
            for (auto& w : waiting) {
                if (w.fd < 0 || w.revents == 0) {
                    continue;
                }
                int error = 0;
                socklen_t len = sizeof error;
                ::getsockopt(w.fd, SOL_SOCKET, SO_ERROR, &error, &len);
                if (error != 0) {
                    issue("connect: %s", std::strerror(error));
                    return give_up();
                }
                fds.push_back(w.fd);
                w.fd = -1;
                --left;
            }
        }
    }
    return true;
}

// Sends all of `bytes` on a blocking socket; false on an error.
inline bool send_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

// Sends one request on a blocking connection and checks that the reply is exactly `expected`
// by the deadline; reports any other outcome unless `quiet`.
inline bool exchange(int fd, std::string_view request, std::string_view expected,
                     std::int64_t deadline, bool quiet) {
    std::string got;
    const bool ok =
        send_all(fd, request) && read_until(fd, deadline, got, [&](const std::string& g) {
                                     return g.size() >= expected.size();
                                 }) == read_end::enough;
    if (!ok || got != expected) {
        if (!quiet) {
            issue("%s got %s, expected %s", printable(request).c_str(), printable(got).c_str(),
                  printable(expected).c_str());
        }
        return false;
    }
    return true;
}

// Sends one request on a new blocking connection and checks the exact reply (5 s bound).
inline bool roundtrip(int port, std::string_view request, std::string_view expected, bool quiet) {
    const int fd = connect_blocking(port);
    if (fd < 0) {
        if (!quiet) {
            issue("connect to 127.0.0.1:%d: %s", port, std::strerror(errno));
        }
        return false;
    }
    const bool ok = exchange(fd, request, expected, now_ns() + 5'000'000'000, quiet);
    ::close(fd);
    return ok;
}

// n distinct ports nobody is listening on right now (the kernel's choices for port 0, all
// bound at once so they differ); 0 for one the kernel would not give.
inline std::vector<int> free_ports(std::size_t n) {
    std::vector<int> fds;
    std::vector<int> ports;
    for (std::size_t i = 0; i < n; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr = loopback(0);
        socklen_t len = sizeof addr;
        int port = 0;
        if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
            port = ntohs(addr.sin_port);
        }
        if (fd >= 0) {
            fds.push_back(fd);
        }
        ports.push_back(port);
    }
    for (const int fd : fds) {
        ::close(fd);
    }
    return ports;
}

inline int free_port() {
    return free_ports(1).front();
}

// ------------------------------------------------------------------------------------------
// Starting the servers

// A node of a cluster (--forward): its name, its port (chosen beforehand, as every node's
// routes name every node's port) and the routes. The default is a lone node on port 0.
// `more` are further kv_server arguments (--observer: --log-level, --admin-port); kv_server's
// stderr goes to `stderr_fd` when it is 0 or more, else to kv_load's own.
struct node_spec {
    std::string name;
    int port = 0;
    std::vector<std::string> routes;
    std::vector<std::string> more;
    int stderr_fd = -1;
};

// The port of an admin line, `otpkv node NAME admin on http://ADDR:PORT/`; 0 if it is not one.
inline int admin_port_of(std::string_view line) {
    const std::size_t at = line.find(" admin on http://");
    if (!line.starts_with("otpkv node ") || at == std::string_view::npos || !line.ends_with("/")) {
        return 0;
    }
    line.remove_suffix(1);
    const std::size_t colon = line.rfind(':');
    int port = 0;
    return colon > at && parse_number(line.substr(colon + 1), port) && port > 0 ? port : 0;
}

// kv_server; it announces its port with one line on stdout, after its admin port's line when
// it has one:
//   otpkv node NAME admin on http://127.0.0.1:PORT/
//   otpkv node NAME listening on 127.0.0.1:PORT
inline std::optional<server> start_kv(const options& o, std::size_t max_connections,
                                      const node_spec& spec) {
    std::vector<std::string> args{o.kv_path, "--port", std::to_string(spec.port), "--bind",
                                  "127.0.0.1"};
    if (!spec.name.empty()) {
        args.insert(args.end(), {"--node", spec.name});
    }
    for (const auto& r : spec.routes) {
        args.insert(args.end(), {"--route", r});
    }
    if (o.kv_threads > 0) {
        args.insert(args.end(), {"--threads", std::to_string(o.kv_threads)});
    }
    if (max_connections > 0) {
        args.insert(args.end(), {"--max-connections", std::to_string(max_connections)});
    }
    args.insert(args.end(), spec.more.begin(), spec.more.end());
    server s;
    s.kind = server_kind::kv;
    s.command = command_line(args);
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
        issue("pipe2: %s", std::strerror(errno));
        return std::nullopt;
    }
    s.pid = spawn(args, pipe_fds[1], spec.stderr_fd);
    ::close(pipe_fds[1]);
    s.stdout_fd = pipe_fds[0];
    if (s.pid < 0) {
        issue("fork: %s", std::strerror(errno));
        stop(s);
        return std::nullopt;
    }
    // The next line of its stdout into `line`; false (reported, kv_server stopped) if none.
    std::string got;
    std::string line;
    const std::int64_t deadline = now_ns() + 15'000'000'000;
    const auto next_line = [&] {
        const read_end end = read_until(s.stdout_fd, deadline, got, has_line);
        if (end != read_end::enough) {
            if (end == read_end::timeout) {
                issue("kv_server printed no ready line within 15 s");
            } else {
                issue("kv_server closed its stdout before its ready line (got %s)",
                      printable(got).c_str());
                alive(s);
            }
            stop(s);
            return false;
        }
        const std::size_t newline = got.find('\n');
        line = got.substr(0, newline);
        got.erase(0, newline + 1);
        return true;
    };
    if (!next_line()) {
        return std::nullopt;
    }
    s.admin_port = admin_port_of(line);
    if (s.admin_port > 0 && !next_line()) {
        return std::nullopt;
    }
    const std::size_t colon = line.rfind(':');
    if (!line.starts_with("otpkv node ") || line.find(" listening on ") == std::string::npos ||
        colon == std::string::npos ||
        !parse_number(std::string_view(line).substr(colon + 1), s.port) || s.port <= 0 ||
        (spec.port != 0 && s.port != spec.port)) {
        issue("kv_server's ready line is not understood: %s", printable(line).c_str());
        stop(s);
        return std::nullopt;
    }
    return s;
}

// redis-server on a free port, with no persistence; ready when it answers PING. Another
// process may take the port between our probe and redis's bind, so a start that fails is
// retried on a new port.
inline std::optional<server> start_redis(const options& o) {
    const int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    for (int attempt = 0; attempt < 5; ++attempt) {
        server s;
        s.kind = server_kind::redis;
        s.port = free_port();
        const std::vector<std::string> args{o.redis_path,
                                            "--port",
                                            std::to_string(s.port),
                                            "--bind",
                                            "127.0.0.1",
                                            "--save",
                                            "",
                                            "--appendonly",
                                            "no",
                                            "--daemonize",
                                            "no",
                                            "--maxclients",
                                            "20000"};
        s.command = command_line(args);
        s.pid = spawn(args, devnull, devnull);
        if (s.pid < 0) {
            issue("fork: %s", std::strerror(errno));
            break;
        }
        const std::int64_t deadline = now_ns() + 5'000'000'000;
        while (now_ns() < deadline && alive(s)) {
            if (roundtrip(s.port, "PING\r\n", "+PONG\r\n", true)) {
                ::close(devnull);
                return s;
            }
            sleep_ms(20);
        }
        stop(s);
    }
    ::close(devnull);
    issue("redis-server did not start (5 attempts)");
    return std::nullopt;
}

// `spec` applies to kv_server only.
inline std::optional<server> start(server_kind kind, const options& o, std::size_t max_connections,
                                   const node_spec& spec = {}) {
    std::fprintf(stderr, "kv_load: starting %s\n", label(kind));
    auto s = kind == server_kind::kv ? start_kv(o, max_connections, spec) : start_redis(o);
    if (s) {
        std::fprintf(stderr, "kv_load: %s pid %d on 127.0.0.1:%d: %s\n", label(kind),
                     static_cast<int>(s->pid), s->port, s->command.c_str());
    }
    return s;
}

// kv_server needs CREATE; a Redis hash exists once a field is set.
inline bool create_buckets(const server& s, const keyspace& ks) {
    if (s.kind != server_kind::kv) {
        return true;
    }
    for (const auto& b : ks.buckets) {
        if (!roundtrip(s.port, "CREATE " + b + "\r\n", "OK\r\n", false)) {
            return false;
        }
    }
    return true;
}

} // namespace kv_load
