// SPDX-License-Identifier: MIT
// A real etcd for the replication tests: `etcd_process` starts the `etcd` binary (from
// OTPKV_ETCD_BINARY, else `etcd` on the PATH: Debian's etcd-server) on two free loopback
// ports with a data directory of its own, waits until it answers, and stops it (its own pid
// only) on `stop`, `kill` or destruction; `restart` starts it again on the same ports and
// data. Its output goes to `etcd.log` in the data directory, shown when it fails to start.
//
// etcd is tuned for fast failure detection (heartbeat 50 ms, election timeout 500 ms), so
// it grants leases of 1 s: its minimum TTL follows the election timeout.
#pragma once

#include "kv_process.hpp"

#include <otpkv/detail/http_client.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace otpkv_test {

/// The etcd binary the tests run.
inline std::string etcd_binary() {
    if (const char* given = std::getenv("OTPKV_ETCD_BINARY"); given != nullptr && *given != 0) {
        return given;
    }
    return "etcd";
}

class etcd_process {
  public:
    /// Starts etcd; fails the test if it does not answer within 10 s.
    etcd_process() {
        char pattern[] = "/tmp/otpkv-etcd-XXXXXX";
        REQUIRE(::mkdtemp(pattern) != nullptr);
        dir_ = pattern;
        for (int attempt = 0;; ++attempt) {
            client_port_ = free_port();
            peer_port_ = free_port();
            if (start() || attempt == 2) {
                break;
            }
        }
        REQUIRE_MESSAGE(pid_ > 0, "etcd did not start (is Debian's etcd-server installed, or "
                                  "OTPKV_ETCD_BINARY set?); its log:\n"
                                      << log());
    }
    ~etcd_process() {
        kill();
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }
    etcd_process(const etcd_process&) = delete;
    etcd_process& operator=(const etcd_process&) = delete;

    /// `http://127.0.0.1:PORT`, for `--etcd`.
    [[nodiscard]] std::string url() const {
        return "http://127.0.0.1:" + std::to_string(client_port_);
    }
    [[nodiscard]] std::uint16_t port() const noexcept { return client_port_; }
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }

    /// SIGKILL, and reaped.
    void kill() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
            pid_ = -1;
        }
    }
    /// Starts it again on the same ports and data directory; fails the test if it does
    /// not answer within 10 s.
    void restart() {
        kill();
        REQUIRE_MESSAGE(start(), "etcd did not start again; its log:\n" << log());
    }
    /// SIGSTOP / SIGCONT.
    void freeze() const { ::kill(pid_, SIGSTOP); }
    void thaw() const { ::kill(pid_, SIGCONT); }

    /// What etcd wrote (the end of it).
    [[nodiscard]] std::string log() const {
        std::ifstream in(dir_ + "/etcd.log");
        std::stringstream text;
        text << in.rdbuf();
        const std::string all = text.str();
        return all.size() > 4000 ? all.substr(all.size() - 4000) : all;
    }

  private:
    bool start() {
        const std::string client = "http://127.0.0.1:" + std::to_string(client_port_);
        const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
        std::vector<std::string> args = {etcd_binary(),
                                         "--name=otpkv-test",
                                         "--data-dir=" + dir_ + "/data",
                                         "--listen-client-urls=" + client,
                                         "--advertise-client-urls=" + client,
                                         "--listen-peer-urls=" + peer,
                                         "--initial-advertise-peer-urls=" + peer,
                                         "--initial-cluster=otpkv-test=" + peer,
                                         "--heartbeat-interval=50",
                                         "--election-timeout=500",
                                         "--log-level=warn"};
        std::vector<char*> argv;
        for (std::string& a : args) {
            argv.push_back(a.data());
        }
        argv.push_back(nullptr);
        const std::string log_path = dir_ + "/etcd.log";
        const pid_t pid = ::fork();
        if (pid == 0) {
#if defined(__linux__)
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
            const int out = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
            if (out >= 0) {
                ::dup2(out, 1);
                ::dup2(out, 2);
            }
            ::execvp(argv[0], argv.data());
            ::_exit(127);
        }
        if (pid < 0) {
            return false;
        }
        pid_ = pid;
        // Ready when a read of the key space answers.
        otpkv::detail::http_connection conn("127.0.0.1", client_port_);
        const auto deadline = steady::now() + 10s;
        while (steady::now() < deadline) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return false; // exited: a port taken since we looked, or no binary
            }
            const auto r = conn.post("/v3/kv/range", "{\"key\":\"AA==\"}", steady::now() + 1s);
            if (r.status == otpkv::detail::http_status::ok && r.code == 200) {
                return true;
            }
            ::poll(nullptr, 0, 50);
        }
        kill();
        return false;
    }

    std::string dir_;
    std::uint16_t client_port_ = 0;
    std::uint16_t peer_port_ = 0;
    pid_t pid_ = -1;
};

} // namespace otpkv_test
