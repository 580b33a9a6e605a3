// SPDX-License-Identifier: MIT
/// @file
/// `log_writer`: writes `format_log_line(event)` and a newline per event to a file
/// descriptor (kv_server's stderr) from a thread of its own, so that a slow or stuck reader
/// of that descriptor never slows the thread that logs: the event is formatted on the
/// caller's thread and queued under a short lock; when the queue is full (`max_lines` lines
/// or `max_bytes` bytes), the event is dropped and counted. Once the writer has emptied the
/// queue, it writes one `log_dropped count=N` line (a warning) for the N events dropped
/// since its last such line.
///
/// The writer thread waits for the descriptor to take bytes with `poll` (in slices of
/// 100 ms, so it notices its end) and writes at most `PIPE_BUF` bytes at a time, so a pipe
/// nobody reads holds the writer, never a logging thread, and never the destructor for
/// longer than `flush_wait`. The descriptor is not owned: it is not closed, and its flags
/// (which a shared stderr shares with other processes) are not changed.
#pragma once

#include <otpkv/log.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include <poll.h>
#include <unistd.h>

namespace otpkv {
inline namespace v0 {

/// A log_writer's bounds.
struct log_writer_options {
    std::size_t max_lines = 10'000;               ///< lines queued at most
    std::size_t max_bytes = std::size_t{4} << 20; ///< bytes queued at most
    /// How long the destructor lets the writer go on writing what is queued.
    std::chrono::milliseconds flush_wait = std::chrono::seconds(1);
};

namespace detail {
struct log_writer_state;
} // namespace detail

/// Writes log lines to a file descriptor through a bounded queue, from its own thread.
///
/// Thread safety: `write`, `sink`'s sinks, `dropped`, `flush` may be called from any thread
/// at once; the destructor from one thread, once no other call is running. A sink may outlive
/// the writer: it then drops everything.
class log_writer {
  public:
    /// Starts the writer thread on `fd` (not owned: the caller keeps it open until the writer
    /// is destroyed). Throws what `std::thread` throws.
    explicit log_writer(int fd, log_writer_options options = {});
    /// Lets the thread write what is queued for up to `flush_wait`, then stops it.
    ~log_writer();
    log_writer(const log_writer&) = delete;
    log_writer& operator=(const log_writer&) = delete;

    /// Queues `format_log_line(event)` and a newline, or drops it when the queue is full.
    /// Never waits for the descriptor. True when queued.
    bool write(const log_event& event);
    /// A sink that calls `write`, for `logger`.
    [[nodiscard]] log_sink sink() const;
    /// Events dropped since the start.
    [[nodiscard]] std::size_t dropped() const noexcept;
    /// Waits up to `wait` until everything queued so far (and the `log_dropped` line it
    /// calls for) is written; true if it was.
    bool flush(std::chrono::milliseconds wait);

  private:
    std::shared_ptr<detail::log_writer_state> state_;
    std::thread thread_;
};

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

/// Shared by the writer, its thread and its sinks.
struct log_writer_state {
    int fd = -1;
    log_writer_options options;
    std::mutex mutex;
    std::condition_variable changed; // the queue grew, or stop was asked, or a write finished
    std::deque<std::string> queue;
    std::size_t queued_bytes = 0;
    std::size_t unreported = 0; // dropped since the last log_dropped line
    bool writing = false;       // the thread holds lines taken from the queue
    bool stopping = false;
    bool finished = false;
    std::chrono::steady_clock::time_point give_up{}; // when stopping: stop writing then
    std::atomic<std::size_t> dropped{0};

    bool push(const log_event& event) {
        std::string line = format_log_line(event);
        line += '\n';
        {
            const std::lock_guard lock(mutex);
            if (stopping || queue.size() >= options.max_lines ||
                queued_bytes + line.size() > options.max_bytes) {
                ++unreported;
                dropped.fetch_add(1, std::memory_order_relaxed);
                return false;
            }
            queued_bytes += line.size();
            queue.push_back(std::move(line));
        }
        changed.notify_all();
        return true;
    }

    /// Writes all of `bytes`; false when the descriptor fails or the writer must give up.
    bool write_all(std::string_view bytes) {
        while (!bytes.empty()) {
            pollfd p{fd, POLLOUT, 0};
            const int ready = ::poll(&p, 1, 100);
            if (ready == 0 || (ready < 0 && errno == EINTR)) {
                const std::lock_guard lock(mutex);
                if (stopping && std::chrono::steady_clock::now() >= give_up) {
                    return false;
                }
                continue;
            }
            if (ready < 0 || (p.revents & (POLLERR | POLLNVAL)) != 0) {
                return false;
            }
            const std::size_t chunk = std::min<std::size_t>(bytes.size(), PIPE_BUF);
            const ssize_t n = ::write(fd, bytes.data(), chunk);
            if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
                continue;
            }
            if (n <= 0) {
                return false;
            }
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    void run() {
        std::deque<std::string> batch;
        bool broken = false; // the descriptor failed: lines are dropped from now on
        std::unique_lock lock(mutex);
        for (;;) {
            changed.wait(lock, [&] { return stopping || !queue.empty() || unreported > 0; });
            if (queue.empty() && unreported == 0) {
                break; // stopping, all written
            }
            batch.swap(queue);
            queued_bytes = 0;
            std::size_t lost = 0;
            if (batch.empty()) {
                lost = std::exchange(unreported, 0); // space has returned: say what was lost
            }
            writing = true;
            lock.unlock();
            std::string bytes;
            for (std::string& line : batch) {
                bytes += line;
            }
            batch.clear();
            if (lost > 0) {
                log_event e;
                e.level = log_level::warning;
                e.time = std::chrono::system_clock::now();
                e.what = "log_dropped";
                e.fields = {{"count", std::to_string(lost)}};
                bytes += format_log_line(e);
                bytes += '\n';
            }
            broken = broken || !write_all(bytes);
            lock.lock();
            writing = false;
            changed.notify_all();
            if (stopping && (broken || std::chrono::steady_clock::now() >= give_up)) {
                break;
            }
        }
        finished = true;
        changed.notify_all();
    }
};

} // namespace detail

inline log_writer::log_writer(int fd, log_writer_options options)
    : state_(std::make_shared<detail::log_writer_state>()) {
    state_->fd = fd;
    state_->options = options;
    thread_ = std::thread([state = state_] { state->run(); });
}

inline log_writer::~log_writer() {
    {
        const std::lock_guard lock(state_->mutex);
        state_->stopping = true;
        state_->give_up = std::chrono::steady_clock::now() + state_->options.flush_wait;
    }
    state_->changed.notify_all();
    bool done = false;
    {
        std::unique_lock lock(state_->mutex);
        // The thread gives up by itself at `give_up` (its polls last 100 ms): a little more
        // for it to notice. A write(2) that blocks past that (a stuck terminal) is left to
        // finish on its own, detached, holding the state it uses.
        done = state_->changed.wait_for(lock,
                                        state_->options.flush_wait + std::chrono::milliseconds(500),
                                        [this] { return state_->finished; });
    }
    if (done) {
        thread_.join();
    } else {
        thread_.detach();
    }
}

inline bool log_writer::write(const log_event& event) {
    return state_->push(event);
}

inline log_sink log_writer::sink() const {
    return [weak = std::weak_ptr<detail::log_writer_state>(state_)](const log_event& event) {
        if (const auto state = weak.lock()) {
            state->push(event);
        }
    };
}

inline std::size_t log_writer::dropped() const noexcept {
    return state_->dropped.load(std::memory_order_relaxed);
}

inline bool log_writer::flush(std::chrono::milliseconds wait) {
    std::unique_lock lock(state_->mutex);
    return state_->changed.wait_for(lock, wait, [this] {
        return state_->finished ||
               (state_->queue.empty() && state_->unreported == 0 && !state_->writing);
    });
}

} // namespace v0
} // namespace otpkv
