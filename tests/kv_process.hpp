// SPDX-License-Identifier: MIT
// The integration tests' harness: runs the real kv_server (the binary named by the
// OTPKV_KV_SERVER environment variable, which ctest and meson set) as a child process on an
// ephemeral loopback port, and talks to it with a plain blocking-style client.
//
// Every wait here is bounded (a deadline for each call), so a server bug shows as a failed
// check, never as a hung test. Sockets and pipes are close-on-exec, so a server started by
// one test never inherits another test's client sockets (which would keep those
// connections open after the test closed them).
#pragma once

#include <otpkv/command.hpp>
#include <otpkv/detail/random.hpp>
#include <otpkv/net/server.hpp>

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

extern char** environ; // NOLINT: POSIX declares it for us to declare

namespace otpkv_test {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using millis = std::chrono::milliseconds;

/// How long any single wait of the harness lasts at most unless told otherwise. Generous,
/// because the tests also run under AddressSanitizer next to other tests on two cores.
inline constexpr millis default_wait = 10s;

/// The cluster cookie every kv_server of the tests is given (see `detail::spawn`), unless
/// the test gives its own (`OTPKV_COOKIE`, `--cookie`...) or a HOME of its own.
inline const std::string process_cookie = "otpkv-test-process-cookie";

/// Milliseconds left until `deadline`, clamped to [0, INT_MAX] for poll().
inline int millis_left(steady::time_point deadline) {
    const auto left =
        std::chrono::duration_cast<millis>(deadline - steady::now()).count() + 1; // round up
    return static_cast<int>(std::clamp<long long>(left, 0, 1'000'000'000));
}

/// The time left until `deadline`, for a call that takes a limit: loops over many clients
/// share one deadline, so a dead server fails them in bounded time, not one wait each.
inline millis until(steady::time_point deadline) {
    return millis(millis_left(deadline));
}

/// Milliseconds since `start`.
inline double ms_since(steady::time_point start) {
    return std::chrono::duration<double, std::milli>(steady::now() - start).count();
}

/// `bytes` as a C-like string literal body (otpkv's own, from command.hpp).
using otpkv::escaped;

/// The protocol's fixed replies, as bytes on the wire.
inline const std::string ok = "OK\r\n";
inline const std::string not_found = "NOT FOUND\r\n";
inline const std::string unknown = "UNKNOWN COMMAND\r\n";
inline const std::string too_long = "ERROR line too long\r\n";

// The guide's session (its integration test), and the replies it gets, byte for byte.
inline const std::string guide_requests = "UNKNOWN shopping\n"
                                          "GET shopping eggs\n"
                                          "CREATE shopping\n"
                                          "PUT shopping eggs 3\n"
                                          "GET shopping eggs\n"
                                          "DELETE shopping eggs\n"
                                          "GET shopping eggs\n";
inline const std::string guide_replies = "UNKNOWN COMMAND\r\n"
                                         "NOT FOUND\r\n"
                                         "OK\r\n"
                                         "OK\r\n"
                                         "3\r\nOK\r\n"
                                         "OK\r\n"
                                         "\r\nOK\r\n";

/// Why two byte strings differ, for a failure message: both sizes, the first differing
/// offset, and the bytes around it (whole strings when they are short).
inline std::string difference(std::string_view got, std::string_view expected) {
    if (got == expected) {
        return "equal";
    }
    std::size_t at = 0;
    while (at < got.size() && at < expected.size() && got[at] == expected[at]) {
        ++at;
    }
    std::string text = "got " + std::to_string(got.size()) + " bytes, expected " +
                       std::to_string(expected.size()) + "; first difference at byte " +
                       std::to_string(at);
    if (got.size() <= 400 && expected.size() <= 400) {
        return text + "\n  got:      \"" + escaped(got) + "\"\n  expected: \"" + escaped(expected) +
               "\"";
    }
    const std::size_t from = at > 60 ? at - 60 : 0;
    return text + "\n  got:      ...\"" + escaped(got.substr(std::min(from, got.size()), 160)) +
           "\"...\n  expected: ...\"" +
           escaped(expected.substr(std::min(from, expected.size()), 160)) + "\"...";
}

} // namespace otpkv_test

/// CHECKs that two byte strings are equal; a failure prints where and how they differ, with
/// the bytes escaped (replies hold CR, LF, NUL and bytes >= 0x80).
#define OTPKV_CHECK_BYTES(got, expected)                                                           \
    do {                                                                                           \
        const std::string otpkv_got_(got);                                                         \
        const std::string otpkv_expected_(expected);                                               \
        const bool same_bytes = otpkv_got_ == otpkv_expected_;                                     \
        CHECK_MESSAGE(same_bytes, ::otpkv_test::difference(otpkv_got_, otpkv_expected_));          \
    } while (false)

/// Sends `request` on `client` and CHECKs that the reply is exactly `reply` (reading as many
/// bytes as `reply` has, so a short reply shows as a failure after the wait, not a hang).
#define OTPKV_CHECK_EXCHANGE(client, request, reply)                                               \
    do {                                                                                           \
        const std::string otpkv_reply_(reply);                                                     \
        OTPKV_CHECK_BYTES((client).exchange(request, otpkv_reply_.size()), otpkv_reply_);          \
    } while (false)

/// CHECKs that the next bytes `client` receives are exactly `expected` (reading as many).
#define OTPKV_CHECK_RECEIVES(client, expected)                                                     \
    do {                                                                                           \
        const std::string otpkv_expected_bytes_(expected);                                         \
        OTPKV_CHECK_BYTES((client).read_exact(otpkv_expected_bytes_.size()),                       \
                          otpkv_expected_bytes_);                                                  \
    } while (false)

namespace otpkv_test {

/// The kv_server binary, from OTPKV_KV_SERVER; fails the test when it is not set.
inline std::string kv_server_path() {
    const char* path = std::getenv("OTPKV_KV_SERVER");
    REQUIRE_MESSAGE((path != nullptr && *path != '\0'),
                    "OTPKV_KV_SERVER is not set: it must name the kv_server binary (ctest and "
                    "meson set it; by hand: OTPKV_KV_SERVER=build/test/examples/kv_server)");
    return path;
}

/// A limit on a server's open files (RLIMIT_NOFILE) set in the child before it runs
/// kv_server, as `prlimit --nofile=SOFT:HARD` would. 0 keeps the inherited value.
struct open_files_limit {
    rlim_t soft = 0;
    rlim_t hard = 0;
};

namespace detail {

/// A child process with its stdout and stderr on pipes (read ends non-blocking).
struct spawned {
    pid_t pid = -1;
    int out = -1;
    int err = -1;
    std::string error; // why it could not be started
};

inline void close_fd(int& fd) noexcept {
    if (fd >= 0) {
        ::close(fd);
        fd = -1;
    }
}

/// Starts `path args...` with the test's environment minus every OTPKV_* variable (so a
/// developer's shell cannot change what a test sees), plus `env` ("NAME=value" entries).
/// Everything the child needs is built before fork(): between fork and exec it only calls
/// async-signal-safe functions (and setrlimit, a plain system call), as a multi-threaded
/// parent requires. `files` limits the child's open files.
inline spawned spawn(const std::string& path, const std::vector<std::string>& args,
                     const std::vector<std::string>& env, open_files_limit files = {}) {
    spawned child;
    rlimit open_files{};
    const bool limit_files =
        (files.soft != 0 || files.hard != 0) && ::getrlimit(RLIMIT_NOFILE, &open_files) == 0;
    if (limit_files) {
        open_files.rlim_cur = files.soft != 0 ? files.soft : open_files.rlim_cur;
        open_files.rlim_max = files.hard != 0 ? files.hard : open_files.rlim_max;
    }
    std::vector<std::string> argv_text{path};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_text) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);

    std::vector<std::string> env_text;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        const std::string_view entry = *e;
        // A variable the test sets (HOME, say) replaces the test's own.
        const std::string_view name = entry.substr(0, entry.find('=') + 1);
        const bool replaced = std::any_of(env.begin(), env.end(), [&](const std::string& mine) {
            return !name.empty() && mine.starts_with(name);
        });
        if (entry.substr(0, 6) != "OTPKV_" && !replaced) {
            env_text.emplace_back(*e);
        }
    }
    env_text.insert(env_text.end(), env.begin(), env.end());
    // Never the developer's ~/.otpkv.cookie: a cookie of the tests' own, unless the test
    // gives one, or a HOME of its own (to test ~/.otpkv.cookie).
    const bool own = std::any_of(env.begin(), env.end(), [](const std::string& e) {
        return e.starts_with("OTPKV_COOKIE=") || e.starts_with("HOME=");
    });
    if (!own) {
        env_text.push_back("OTPKV_COOKIE=" + process_cookie);
    }
    std::vector<char*> envp;
    for (std::string& e : env_text) {
        envp.push_back(e.data());
    }
    envp.push_back(nullptr);

    int out_pipe[2] = {-1, -1};
    int err_pipe[2] = {-1, -1};
    if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) {
        child.error = std::string("pipe2: ") + std::strerror(errno);
        for (int& fd : out_pipe) {
            close_fd(fd);
        }
        return child;
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
#if defined(__linux__)
        // If the test process dies (a crash, ctest's timeout), the server goes with it
        // instead of running on as an orphan. Every server is started from the test's
        // main thread, which lives as long as the process.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        struct sigaction dfl {};
        dfl.sa_handler = SIG_DFL;
        ::sigaction(SIGTERM, &dfl, nullptr);
        ::sigaction(SIGINT, &dfl, nullptr);
        ::sigaction(SIGPIPE, &dfl, nullptr);
        const int null_fd = ::open("/dev/null", O_RDONLY);
        if (null_fd >= 0) {
            ::dup2(null_fd, 0);
        }
        ::dup2(out_pipe[1], 1);
        ::dup2(err_pipe[1], 2);
        if (limit_files && ::setrlimit(RLIMIT_NOFILE, &open_files) != 0) {
            static constexpr char failed[] = "kv_process: setrlimit failed\n";
            [[maybe_unused]] const auto ignored = ::write(2, failed, sizeof failed - 1);
            ::_exit(127);
        }
        ::execve(path.c_str(), argv.data(), envp.data());
        static constexpr char message[] = "kv_process: execve failed\n";
        [[maybe_unused]] const auto ignored = ::write(2, message, sizeof message - 1);
        ::_exit(127);
    }
    close_fd(out_pipe[1]);
    close_fd(err_pipe[1]);
    if (pid < 0) {
        child.error = std::string("fork: ") + std::strerror(errno);
        close_fd(out_pipe[0]);
        close_fd(err_pipe[0]);
        return child;
    }
    ::fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
    ::fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);
    child.pid = pid;
    child.out = out_pipe[0];
    child.err = err_pipe[0];
    return child;
}

/// Reads what `fd` has now into `into`, without blocking; closes `fd` at EOF.
inline void drain_pipe(int& fd, std::string& into) {
    char chunk[4096];
    while (fd >= 0) {
        const ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n > 0) {
            into.append(chunk, static_cast<std::size_t>(n));
        } else if (n == 0) {
            close_fd(fd);
        } else if (errno != EINTR) {
            return; // EAGAIN: nothing more for now
        }
    }
}

/// Waits up to `limit` for something on either pipe (or a quarter second, to look at the
/// child again).
inline void wait_pipes(int out, int err, millis limit) {
    pollfd fds[2] = {{out, POLLIN, 0}, {err, POLLIN, 0}};
    ::poll(fds, 2, static_cast<int>(std::min<long long>(limit.count(), 250)));
}

} // namespace detail

/// How a child process ended.
struct exit_status {
    bool exited = false; ///< it ended within the limit (else it was killed with SIGKILL)
    int code = -1;       ///< its exit code, if it exited normally
    int signal = 0;      ///< the signal that killed it, if one did
    double seconds = 0;  ///< from the stop signal (or start) to its end
    std::string out;     ///< what it wrote to stdout (after the ready line, for a server)
    std::string err;     ///< what it wrote to stderr

    /// Exited by itself with code 0.
    [[nodiscard]] bool clean() const { return exited && signal == 0 && code == 0; }
    [[nodiscard]] std::string describe() const {
        std::string text = !exited       ? "did not end in time (killed)"
                           : signal != 0 ? "killed by signal " + std::to_string(signal)
                                         : "exited with code " + std::to_string(code);
        char took[64];
        std::snprintf(took, sizeof took, " after %.3f s", seconds);
        text += took;
        if (!err.empty()) {
            text += "; stderr:\n" + err;
        }
        return text;
    }
    /// `err` without the log lines at info or debug level (`2026-...Z info event=...`):
    /// what an operator must look at.
    [[nodiscard]] std::string err_above_info() const {
        std::string kept;
        std::size_t at = 0;
        while (at < err.size()) {
            std::size_t end = err.find('\n', at);
            end = end == std::string::npos ? err.size() : end + 1;
            const std::string_view line(err.data() + at, end - at);
            const std::size_t space = line.find(' ');
            const bool routine = line.size() > 20 && line[4] == '-' && line[10] == 'T' &&
                                 space != std::string_view::npos &&
                                 (line.substr(space + 1).starts_with("info ") ||
                                  line.substr(space + 1).starts_with("debug "));
            if (!routine) {
                kept += line;
            }
            at = end;
        }
        return kept;
    }
};

namespace detail {

inline void record_status(int status, exit_status& into) {
    into.exited = true;
    if (WIFEXITED(status)) {
        into.code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        into.signal = WTERMSIG(status);
    }
}

/// Waits up to `limit` for `pid` to end, draining its pipes meanwhile; kills it (SIGKILL,
/// that pid only) and reaps it if the limit passes.
inline exit_status wait_for_exit(pid_t pid, int& out, int& err, millis limit,
                                 steady::time_point since) {
    exit_status st;
    const auto deadline = steady::now() + limit;
    for (;;) {
        drain_pipe(out, st.out);
        drain_pipe(err, st.err);
        int status = 0;
        const pid_t done = ::waitpid(pid, &status, WNOHANG);
        if (done == pid) {
            record_status(status, st);
            break;
        }
        if (done < 0 && errno != EINTR) {
            st.err += "waitpid: " + std::string(std::strerror(errno));
            break;
        }
        if (steady::now() >= deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            st.exited = false;
            break;
        }
        if (out < 0 && err < 0) {
            ::poll(nullptr, 0, 5); // both pipes closed: just wait a little for the exit
        } else {
            wait_pipes(out, err, millis(millis_left(deadline)));
        }
    }
    st.seconds = ms_since(since) / 1000;
    drain_pipe(out, st.out);
    drain_pipe(err, st.err);
    close_fd(out);
    close_fd(err);
    return st;
}

} // namespace detail

/// Runs kv_server with `args` (and `env` added to the environment) to completion, as the
/// command-line tests do; a run longer than `limit` is killed and reported as not exited.
inline exit_status run_kv_server(const std::vector<std::string>& args,
                                 const std::vector<std::string>& env = {},
                                 millis limit = default_wait) {
    const auto start = steady::now();
    detail::spawned child = detail::spawn(kv_server_path(), args, env);
    REQUIRE_MESSAGE(child.pid > 0, "cannot start kv_server: " << child.error);
    return detail::wait_for_exit(child.pid, child.out, child.err, limit, start);
}

/// A running kv_server. Started by the constructor, which waits (5 s at most) for its ready
/// line and fails the test if it does not come; stopped by `stop()`; the destructor kills
/// (SIGKILL, its own pid only) a server that still runs.
///
/// Thread safety: `port()` from any thread; the rest from the thread that made it.
class kv_process {
  public:
    /// Starts `kv_server --port 0 args...` (a later `--port` in `args` wins); with
    /// `ephemeral` false, no `--port` is added (the environment or a config file says it).
    /// `files` limits its open files.
    explicit kv_process(std::vector<std::string> args = {}, std::vector<std::string> env = {},
                        bool ephemeral = true, open_files_limit files = {}) {
        if (ephemeral) {
            args.insert(args.begin(), {"--port", "0"});
        }
        const auto start = steady::now();
        adopt(detail::spawn(kv_server_path(), args, env, files), start);
    }
    /// Starts one kv_server per entry of `args` (each `kv_server args...`, nothing added) at
    /// nearly the same moment: all are spawned before any ready line is waited for.
    static std::vector<std::unique_ptr<kv_process>>
    start_together(const std::vector<std::vector<std::string>>& args,
                   const std::vector<std::string>& env = {}) {
        const auto start = steady::now();
        std::vector<detail::spawned> children;
        for (const auto& a : args) {
            children.push_back(detail::spawn(kv_server_path(), a, env));
        }
        // Each is owned (and killed on a failure) before any is waited for.
        std::vector<std::unique_ptr<kv_process>> started;
        for (const detail::spawned& child : children) {
            started.push_back(std::unique_ptr<kv_process>(new kv_process(adopting{})));
            if (child.pid > 0) {
                started.back()->take(child);
            }
        }
        for (std::size_t i = 0; i < children.size(); ++i) {
            REQUIRE_MESSAGE(children[i].pid > 0, "cannot start kv_server: " << children[i].error);
            started[i]->wait_ready(start);
        }
        return started;
    }
    ~kv_process() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
        }
        detail::close_fd(out_);
        detail::close_fd(err_);
    }
    kv_process(const kv_process&) = delete;
    kv_process& operator=(const kv_process&) = delete;

    /// The port from the ready line.
    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    /// The ready line, without its newline.
    [[nodiscard]] const std::string& ready_line() const noexcept { return ready_; }
    /// The server's pid (-1 once it has been reaped).
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }

    /// True while the process has not ended (it is not reaped here).
    [[nodiscard]] bool running() const {
        if (pid_ <= 0) {
            return false;
        }
        siginfo_t info{};
        return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
               info.si_pid == 0;
    }

    /// Sends `signal` and waits up to `limit` for the process to end (killing it after
    /// that); `seconds` in the result counts from the signal.
    exit_status stop(int signal = SIGTERM, millis limit = 5s) {
        REQUIRE(pid_ > 0);
        const auto start = steady::now();
        ::kill(pid_, signal);
        exit_status st = detail::wait_for_exit(pid_, out_, err_, limit, start);
        pid_ = -1;
        return st;
    }

    /// The server's resident memory in KiB (Linux: /proc), if it can be read.
    [[nodiscard]] std::optional<long> resident_kib() const {
        std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
        std::string word;
        while (status >> word) {
            if (word == "VmRSS:") {
                long kib = 0;
                if (status >> kib) {
                    return kib;
                }
                break;
            }
        }
        return std::nullopt;
    }

  private:
    struct adopting {};
    explicit kv_process(adopting) {}
    // Takes a spawned child as this process and waits (5 s at most from `start`) for its
    // ready line; fails the test if it does not come.
    void adopt(const detail::spawned& child, steady::time_point start) {
        take(child);
        wait_ready(start);
    }
    void take(const detail::spawned& child) {
        REQUIRE_MESSAGE(child.pid > 0, "cannot start kv_server: " << child.error);
        pid_ = child.pid;
        out_ = child.out;
        err_ = child.err;
    }
    void wait_ready(steady::time_point start) {
        const std::string failure = read_ready_line(start + 5s);
        if (!failure.empty()) {
            const exit_status st = detail::wait_for_exit(pid_, out_, err_, 1s, start);
            pid_ = -1;
            FAIL("kv_server did not become ready: " << failure << "; the server " << st.describe());
        }
    }
    // Reads stdout up to the first newline and parses the port; "" or what went wrong.
    std::string read_ready_line(steady::time_point deadline) {
        std::string text;
        for (;;) {
            detail::drain_pipe(out_, text);
            const std::size_t nl = text.find('\n');
            if (nl != std::string::npos) {
                ready_ = text.substr(0, nl);
                break;
            }
            if (out_ < 0) {
                return "stdout closed before a ready line (got \"" + escaped(text) + "\")";
            }
            if (steady::now() >= deadline) {
                return "no ready line within 5 s (got \"" + escaped(text) + "\")";
            }
            detail::wait_pipes(out_, err_, millis(millis_left(deadline)));
        }
        static constexpr std::string_view prefix = "otpkv node ";
        static constexpr std::string_view middle = " listening on 127.0.0.1:";
        const std::size_t at = ready_.find(middle);
        if (ready_.substr(0, prefix.size()) != prefix || at == std::string::npos) {
            return "unexpected ready line \"" + escaped(ready_) + "\"";
        }
        const std::string digits = ready_.substr(at + middle.size());
        if (digits.empty() || digits.size() > 5 ||
            digits.find_first_not_of("0123456789") != std::string::npos) {
            return "no port in ready line \"" + escaped(ready_) + "\"";
        }
        const unsigned long port = std::stoul(digits);
        if (port == 0 || port > 65535) {
            return "bad port in ready line \"" + escaped(ready_) + "\"";
        }
        port_ = static_cast<std::uint16_t>(port);
        return "";
    }

    pid_t pid_ = -1;
    int out_ = -1;
    int err_ = -1;
    std::uint16_t port_ = 0;
    std::string ready_;
};

/// A request line as a peer sends it, tagged with request id `id` (command.hpp, "Between
/// nodes"): `<id> <line>`.
inline std::string tagged(std::string_view line, std::uint64_t id = 1) {
    return std::to_string(id) + " " + std::string(line);
}
/// A peer's answer to the request tagged `id`: the header `=<id>`, then the reply.
inline std::string answered(std::string_view reply, std::uint64_t id = 1) {
    return "=" + std::to_string(id) + "\r\n" + std::string(reply);
}

/// A TCP client of a kv_server on 127.0.0.1. The socket is non-blocking underneath and
/// every call waits with poll() up to its own limit: a call that runs out of time returns
/// what it has (and `end()` says `timeout`), never hangs.
///
/// Thread safety: one thread at a time, except that `send_only` touches nothing but the
/// socket, so one thread may `send_only` while another reads.
class kv_client {
  public:
    /// How the last read that stopped early ended.
    enum class ending { open, eof, reset, timeout };

    /// Connects (waiting up to `limit`); fails the test if it cannot. A `receive_buffer`
    /// above 0 sets SO_RCVBUF before connecting (to keep the kernel from buffering much for
    /// a client that does not read).
    explicit kv_client(std::uint16_t port, int receive_buffer = 0, millis limit = default_wait) {
        const std::string failure = connect_to(port, receive_buffer, limit);
        if (!failure.empty()) {
            detail::close_fd(fd_);
            FAIL("cannot connect to 127.0.0.1:" << port << ": " << failure);
        }
    }
    ~kv_client() { detail::close_fd(fd_); }
    kv_client(kv_client&& other) noexcept
        : fd_(std::exchange(other.fd_, -1)), buffer_(std::move(other.buffer_)), pos_(other.pos_),
          end_(other.end_) {}
    kv_client& operator=(kv_client&& other) noexcept {
        if (this != &other) {
            detail::close_fd(fd_);
            fd_ = std::exchange(other.fd_, -1);
            buffer_ = std::move(other.buffer_);
            pos_ = other.pos_;
            end_ = other.end_;
            error_ = other.error_;
        }
        return *this;
    }
    kv_client(const kv_client&) = delete;
    kv_client& operator=(const kv_client&) = delete;

    [[nodiscard]] int fd() const noexcept { return fd_; }
    /// How the last read that came back short ended (`open` if none did).
    [[nodiscard]] ending end() const noexcept { return end_; }
    /// The errno of the failure that ended the connection (with `end()` == reset), or 0.
    [[nodiscard]] int error() const noexcept { return error_; }
    /// Bytes received and not yet taken by a read.
    [[nodiscard]] std::size_t buffered() const noexcept { return buffer_.size() - pos_; }

    /// Sends every byte of `data`; meanwhile takes in whatever the server sends (so a
    /// large pipelined batch cannot deadlock against its replies). False if the limit
    /// passed or the connection failed first.
    bool send_all(std::string_view data, millis limit = default_wait) {
        return send_bytes(data, limit, true);
    }
    /// Sends every byte of `data` and reads nothing, even when the server's replies pile
    /// up (so the server sees a client that does not read). False as for `send_all`.
    bool send_only(std::string_view data, millis limit = default_wait) {
        return send_bytes(data, limit, false);
    }

    /// Exactly `n` bytes, or fewer if the connection ended or `limit` passed first.
    std::string read_exact(std::size_t n, millis limit = default_wait) {
        const auto deadline = steady::now() + limit;
        while (buffered() < n && fill(deadline)) {
        }
        return take(std::min(n, buffered()));
    }
    /// Everything up to and including the `n`th CRLF, or what came if it did not.
    std::string read_lines(std::size_t n, millis limit = default_wait) {
        const auto deadline = steady::now() + limit;
        std::size_t found = 0;
        std::size_t scan = pos_;
        for (;;) {
            while (found < n) {
                const std::size_t at = buffer_.find("\r\n", scan);
                if (at == std::string::npos) {
                    scan = buffer_.size() > pos_ ? buffer_.size() - 1 : pos_;
                    break;
                }
                ++found;
                scan = at + 2;
            }
            if (found == n) {
                return take(scan - pos_);
            }
            const std::size_t offset = scan - pos_; // fill() may move the buffer's start
            if (!fill(deadline)) {
                return take(buffered());
            }
            scan = pos_ + offset;
        }
    }
    /// Everything until the server closes (`end()` then says eof or reset) or `limit`.
    std::string read_to_eof(millis limit = default_wait) {
        const auto deadline = steady::now() + limit;
        while (fill(deadline)) {
        }
        return take(buffered());
    }
    /// Whatever arrives within `window` (less if the connection ends first).
    std::string read_for(millis window) {
        const auto deadline = steady::now() + window;
        while (fill(deadline)) {
        }
        if (end_ == ending::timeout) {
            end_ = ending::open; // running out of the window is the normal end here
        }
        return take(buffered());
    }
    /// Sends `request` and reads a reply of exactly `reply_size` bytes.
    std::string exchange(std::string_view request, std::size_t reply_size,
                         millis limit = default_wait) {
        const auto deadline = steady::now() + limit;
        if (!send_all(request, limit)) {
            return take(buffered());
        }
        return read_exact(reply_size, millis(millis_left(deadline)));
    }

    /// Sends each segment as soon as it is written (TCP_NODELAY).
    void set_nodelay() {
        const int one = 1;
        ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    /// Half-closes: the server sees EOF, we can still read.
    void shutdown_write() { ::shutdown(fd_, SHUT_WR); }
    /// Closes normally (FIN).
    void close() { detail::close_fd(fd_); }
    /// Closes with a reset (SO_LINGER 0): the server sees ECONNRESET, not EOF.
    void reset() {
        const linger abort_close{1, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &abort_close, sizeof abort_close);
        detail::close_fd(fd_);
    }

  private:
    std::string connect_to(std::uint16_t port, int receive_buffer, millis limit) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd_ < 0) {
            return std::string("socket: ") + std::strerror(errno);
        }
        if (receive_buffer > 0) {
            ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
        }
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
            return "";
        }
        if (errno != EINPROGRESS) {
            return std::string("connect: ") + std::strerror(errno);
        }
        pollfd p{fd_, POLLOUT, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(limit.count()));
        if (ready <= 0) {
            return "connect: no answer within " + std::to_string(limit.count()) + " ms";
        }
        int error = 0;
        socklen_t size = sizeof error;
        ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &error, &size);
        return error == 0 ? "" : std::string("connect: ") + std::strerror(error);
    }

    bool send_bytes(std::string_view data, millis limit, bool take_input) {
        const auto deadline = steady::now() + limit;
        std::size_t off = 0;
        bool input_open = take_input;
        while (off < data.size()) {
            const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                return false;
            }
            pollfd p{fd_, static_cast<short>(POLLOUT | (input_open ? POLLIN : 0)), 0};
            const int ready = ::poll(&p, 1, millis_left(deadline));
            if (ready == 0 && steady::now() >= deadline) {
                return false;
            }
            if (ready > 0 && (p.revents & POLLIN) != 0) {
                input_open = receive_once();
            }
        }
        return true;
    }

    // One recv into the buffer: false at EOF or on an error (recorded in end_).
    bool receive_once() {
        if (pos_ > 0 && (pos_ == buffer_.size() || pos_ >= (std::size_t{1} << 20))) {
            buffer_.erase(0, pos_);
            pos_ = 0;
        }
        const std::size_t had = buffer_.size();
        buffer_.resize(had + chunk);
        const ssize_t n = ::recv(fd_, buffer_.data() + had, chunk, 0);
        const int error = errno;
        buffer_.resize(had + (n > 0 ? static_cast<std::size_t>(n) : 0));
        if (n > 0) {
            return true;
        }
        if (n == 0) {
            end_ = ending::eof;
            return false;
        }
        if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR) {
            return true;
        }
        end_ = ending::reset;
        error_ = error;
        return false;
    }

    // Waits for input and takes it: false when the connection ended or the deadline passed.
    bool fill(steady::time_point deadline) {
        for (;;) {
            if (fd_ < 0) {
                end_ = ending::reset;
                error_ = EBADF; // closed by this side
                return false;
            }
            const std::size_t had = buffered();
            if (!receive_once()) {
                return false;
            }
            if (buffered() > had) {
                return true;
            }
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, millis_left(deadline)) == 0 && steady::now() >= deadline) {
                end_ = ending::timeout;
                return false;
            }
        }
    }

    std::string take(std::size_t n) {
        std::string out = buffer_.substr(pos_, n);
        pos_ += n;
        if (pos_ == buffer_.size()) {
            buffer_.clear();
            pos_ = 0;
        }
        return out;
    }

    static constexpr std::size_t chunk = 256 * 1024;

    int fd_ = -1;
    std::string buffer_;
    std::size_t pos_ = 0;
    ending end_ = ending::open;
    int error_ = 0;
};

/// The name of an `ending`, for messages.
inline std::string to_string(kv_client::ending e) {
    switch (e) {
    case kv_client::ending::open:
        return "open";
    case kv_client::ending::eof:
        return "eof";
    case kv_client::ending::reset:
        return "reset";
    case kv_client::ending::timeout:
        return "timeout";
    }
    return "?";
}

// Reads from `c` through `tail`, a line at a time; what it read (ending with `tail`, unless
// the connection ended or `limit` passed).
inline std::string read_through(kv_client& c, const std::string& tail, millis limit = 5s) {
    const auto deadline = steady::now() + limit;
    std::string got;
    while (!got.ends_with(tail)) {
        const std::string line = c.read_lines(1, millis(millis_left(deadline)));
        if (line.empty() || !line.ends_with("\r\n")) {
            got += line;
            break;
        }
        got += line;
    }
    return got;
}

// SUBSCRIBE has no acknowledgement. To know when `subscriber`'s subscription to `bucket`
// is in place, `publisher` PUTs `sync N` (N counting up from `counter`, which is shared by
// the calls of one test so every value is new) until the subscriber sees an event, then
// the subscriber reads through the event of the last PUT. Checks that everything it read
// is those events, in order; afterwards its stream holds only what comes next.
inline void subscribe_synced(kv_client& subscriber, kv_client& publisher, const std::string& bucket,
                             int& counter) {
    REQUIRE(subscriber.send_all("SUBSCRIBE " + bucket + "\r\n"));
    const int first = counter + 1;
    std::string seen;
    const auto deadline = steady::now() + 5s;
    while (seen.empty() && steady::now() < deadline) {
        ++counter;
        OTPKV_CHECK_EXCHANGE(
            publisher, "PUT " + bucket + " sync " + std::to_string(counter) + "\r\n", "OK\r\n");
        seen += subscriber.read_for(10ms);
    }
    REQUIRE_MESSAGE(!seen.empty(), "no event reached the subscriber of " << bucket);
    const std::string last = "sync SET TO " + std::to_string(counter) + "\r\n";
    if (!seen.ends_with(last)) {
        seen += read_through(subscriber, last);
    }
    // The events seen are those of the PUTs j, j+1, ..., counter for some j.
    std::string expected;
    for (int n = counter; n >= first && expected.size() < seen.size(); --n) {
        expected.insert(0, "sync SET TO " + std::to_string(n) + "\r\n");
    }
    OTPKV_CHECK_BYTES(seen, expected);
}

/// Stops `server` with SIGTERM and checks it exited by itself, with code 0 (a crash, a
/// sanitizer report or a hang during the test shows up here). `limit` only bounds a hang:
/// how long a stop takes is not asserted (it depends on the machine's load).
inline void stop_cleanly(kv_process& server, std::chrono::seconds limit = 30s) {
    const exit_status st = server.stop(SIGTERM, limit);
    CHECK_MESSAGE(st.clean(), "kv_server " << st.describe());
}

/// One request and the exact reply it must get.
struct row {
    std::string request;
    std::string reply;
};

/// Sends each row and checks its reply, one exchange at a time; then nothing more comes.
inline void exchange_each(kv_client& c, const std::vector<row>& rows) {
    for (const row& r : rows) {
        CAPTURE(escaped(r.request));
        OTPKV_CHECK_EXCHANGE(c, r.request, r.reply);
    }
    CHECK(c.read_for(millis(50)).empty());
}

/// Sends every row in one write and checks all the replies, in order; then nothing more.
inline void exchange_pipelined(kv_client& c, const std::vector<row>& rows) {
    std::string requests;
    std::string replies;
    for (const row& r : rows) {
        requests += r.request;
        replies += r.reply;
    }
    OTPKV_CHECK_EXCHANGE(c, requests, replies);
    CHECK(c.read_for(millis(50)).empty());
}

/// A loopback port nothing listens on right now (bound to 0 and released): connecting to it
/// is refused, and a test may name it in an environment variable or a file.
inline std::uint16_t free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof addr;
    const bool bound = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 &&
                       ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &size) == 0;
    ::close(fd);
    REQUIRE(bound);
    return ntohs(addr.sin_port);
}

/// A server's options for an in-process test: loopback, an ephemeral port, 2 loops.
inline otpkv::server_options loopback(otpkv::poller_kind poller = otpkv::poller_kind::automatic) {
    otpkv::server_options o;
    o.port = 0;
    o.threads = 2;
    o.poller = poller;
    return o;
}

/// Does the connecting side of the peer handshake (command.hpp, "Between nodes") on `c` as
/// node `name`, with `cookie`, toward the node `node`: sends the greeting, checks the answer
/// names `node` and carries the right proof, sends the proof and checks the `OK`. True when
/// `c` is then a peer connection (the failed checks say why not).
inline bool handshake_as(kv_client& c, std::string_view name, std::string_view node,
                         std::string_view cookie) {
    const std::string nonce = otpkv::detail::new_peer_nonce();
    REQUIRE(c.send_all(otpkv::peer_greeting_line(name, nonce)));
    const std::string line = c.read_lines(1);
    const auto answer = otpkv::parse_peer_answer(line);
    CHECK_MESSAGE(answer.has_value(), "the greeting got \"" << escaped(line) << "\"");
    if (!answer) {
        return false;
    }
    CHECK(answer->name == node);
    const bool right = otpkv::peer_proof_matches(
        otpkv::peer_accept_proof(cookie, node, name, nonce, answer->nonce), answer->proof);
    CHECK_MESSAGE(right, "node " << node << " gave a wrong proof");
    if (!right || answer->name != node) {
        return false;
    }
    const std::string proof = otpkv::peer_connect_proof(cookie, name, node, nonce, answer->nonce);
    const std::string got = c.exchange(otpkv::peer_proof_line(proof), ok.size());
    OTPKV_CHECK_BYTES(got, ok);
    return got == ok;
}

} // namespace otpkv_test
