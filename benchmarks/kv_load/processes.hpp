// SPDX-License-Identifier: MIT
// kv_load: The processes kv_load owns: spawned, watched, stopped by PID; their memory and CPU.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "protocols.hpp"
#include "report.hpp"

namespace kv_load {

// ------------------------------------------------------------------------------------------
// Bounded reads: a child's output, a reply

enum class read_end { enough, closed, timeout };

// Reads from fd (a pipe or a socket) into `got` until `enough(got)` holds, the stream ends
// (or fails: `closed`), or the deadline passes (`timeout`).
template <class Enough>
read_end read_until(int fd, std::int64_t deadline, std::string& got, Enough enough) {
    while (!enough(got)) {
        const int ms = ms_until(deadline);
        if (ms <= 0) {
            return read_end::timeout;
        }
        pollfd p{fd, POLLIN, 0};
        const int ready = ::poll(&p, 1, ms);
        if (ready <= 0) {
            if (ready < 0 && errno != EINTR) {
                return read_end::closed;
            }
            continue;
        }
        char buf[4096];
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return read_end::closed;
        }
        got.append(buf, static_cast<std::size_t>(n));
    }
    return read_end::enough;
}

inline bool has_line(const std::string& got) {
    return got.find('\n') != std::string::npos;
}

// ------------------------------------------------------------------------------------------
// Processes we own: spawn, watch, stop

// A command line as printed: the arguments separated by spaces, an empty one as ''.
inline std::string command_line(const std::vector<std::string>& args) {
    std::string out;
    for (const auto& a : args) {
        out += (out.empty() ? "" : " ") + (a.empty() ? std::string("''") : a);
    }
    return out;
}

// The children, for the signal handler (killed if we are interrupted; the children also get
// SIGKILL from the kernel if we die, through PR_SET_PDEATHSIG).
inline std::array<std::atomic<pid_t>, 16> children{};

inline void on_fatal_signal(int sig) {
    for (auto& child : children) {
        const pid_t pid = child.load();
        if (pid > 0) {
            ::kill(pid, SIGKILL);
        }
    }
    ::_exit(128 + sig);
}

inline void track_child(pid_t pid, bool add) {
    for (auto& child : children) {
        pid_t expected = add ? 0 : pid;
        if (child.compare_exchange_strong(expected, add ? pid : 0)) {
            return;
        }
    }
}

// fork + execv; between them only async-signal-safe calls.
inline pid_t spawn(const std::vector<std::string>& args, int stdout_fd, int stderr_fd) {
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (const auto& a : args) {
        argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, static_cast<unsigned long>(SIGKILL));
        if (::getppid() != parent) {
            ::_exit(127);
        }
        if (stdout_fd >= 0) {
            ::dup2(stdout_fd, STDOUT_FILENO);
        }
        if (stderr_fd >= 0) {
            ::dup2(stderr_fd, STDERR_FILENO);
        }
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    if (pid > 0) {
        track_child(pid, true);
    }
    return pid;
}

inline std::string describe_status(int status) {
    if (WIFEXITED(status)) {
        return "exit status " + std::to_string(WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        return "killed by signal " + std::to_string(WTERMSIG(status));
    }
    return "status " + std::to_string(status);
}

struct server {
    server_kind kind = server_kind::kv;
    pid_t pid = -1;
    int port = 0;
    int stdout_fd = -1; // kv_server's stdout, kept open so it never gets SIGPIPE
    int admin_port = 0; // kv_server's admin HTTP port, when it announced one
    std::string command;
};

// True while the child runs; reports it once if it has exited.
inline bool alive(server& s) {
    if (s.pid <= 0) {
        return false;
    }
    int status = 0;
    if (::waitpid(s.pid, &status, WNOHANG) == s.pid) {
        issue("%s (pid %d) exited early: %s", label(s.kind), static_cast<int>(s.pid),
              describe_status(status).c_str());
        track_child(s.pid, false);
        s.pid = -1;
        return false;
    }
    return true;
}

// SIGTERM, then up to 5 s for it to exit; SIGKILL after that. Only our own child, by PID.
inline void stop(server& s) {
    if (s.pid > 0 && alive(s)) {
        ::kill(s.pid, SIGTERM);
        const std::int64_t deadline = now_ns() + 5'000'000'000;
        int status = 0;
        pid_t done = 0;
        while ((done = ::waitpid(s.pid, &status, WNOHANG)) == 0 && now_ns() < deadline) {
            sleep_ms(10);
        }
        if (done != s.pid) {
            issue("%s (pid %d) did not exit within 5 s of SIGTERM; killing it", label(s.kind),
                  static_cast<int>(s.pid));
            ::kill(s.pid, SIGKILL);
            ::waitpid(s.pid, &status, 0);
        } else if ((!WIFEXITED(status) || WEXITSTATUS(status) != 0) &&
                   !(s.kind == server_kind::etcd && WIFSIGNALED(status) &&
                     WTERMSIG(status) == SIGTERM)) { // etcd ends so on SIGTERM
            std::fprintf(stderr, "kv_load: warning: %s ended with %s after SIGTERM\n",
                         label(s.kind), describe_status(status).c_str());
        }
        track_child(s.pid, false);
        s.pid = -1;
    }
    if (s.stdout_fd >= 0) {
        ::close(s.stdout_fd);
        s.stdout_fd = -1;
    }
}

inline long proc_rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("VmRSS:")) {
            return std::strtol(line.c_str() + 6, nullptr, 10);
        }
    }
    return -1;
}

// User + system CPU seconds of a process (fields 14 and 15 of /proc/PID/stat).
inline double proc_cpu_seconds(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::size_t paren = text.rfind(')');
    if (paren == std::string::npos) {
        return 0.0;
    }
    std::istringstream fields(text.substr(paren + 1));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
        if (i >= 14) {
            ticks += std::strtod(field.c_str(), nullptr);
        }
    }
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The RSS once it stops moving: sampled every 0.5 s; after at least `min_seconds`, the first
// time the last 2 s of samples lie within max(256 KiB, 1% of the value); at most 30 s.
// Servers give memory back after a burst lazily: Redis shrinks the query buffer of a client
// idle for 2 s in its once-a-second client cron, then jemalloc returns the pages gradually
// over its 10 s decay time. A sample taken at once would charge a server for buffers it gives
// back, so "after" waits 4 s before it looks for a plateau (the same rule for both servers).
inline long settled_rss_kib(pid_t pid, double min_seconds, double& waited) {
    const std::int64_t start = now_ns();
    std::vector<long> samples;
    for (;;) {
        sleep_ms(500);
        samples.push_back(proc_rss_kib(pid));
        waited = static_cast<double>(now_ns() - start) / 1e9;
        if (samples.size() >= 5 && waited >= min_seconds) {
            const auto [lo, hi] = std::minmax_element(samples.end() - 5, samples.end());
            if (*hi - *lo <= std::max(256L, *hi / 100) || waited >= 30.0) {
                return samples.back();
            }
        }
    }
}

inline double self_cpu_seconds() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// The first line a program prints for `--version`, through a pipe, bounded to 5 s.
inline std::string version_of(const std::string& path) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        return "?";
    }
    const pid_t pid = spawn({path, "--version"}, fds[1], -1);
    ::close(fds[1]);
    std::string out;
    read_until(fds[0], now_ns() + 5'000'000'000, out, has_line);
    ::close(fds[0]);
    if (pid > 0) {
        ::kill(pid, SIGKILL); // only if it is still running; it is ours
        ::waitpid(pid, nullptr, 0);
        track_child(pid, false);
    }
    return out.substr(0, out.find('\n'));
}

} // namespace kv_load
