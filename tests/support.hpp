// SPDX-License-Identifier: MIT
// Test fixtures for processes and supervisors: a journal of what happened, in order, and
// children that a test can make exit with any reason, on their own thread.
#pragma once

#include <otpkv/process.hpp>
#include <otpkv/supervisor.hpp>
#include <otpkv/task.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace otpkv_test {

using namespace std::chrono_literals;

// Polls `done` until it holds or `limit` passes; true if it held. Every wait in the tests is
// bounded this way, so a bug shows as a failure, not a hang.
inline bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit = 5s) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() > until) {
            return false;
        }
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

// What happened, in order, from any thread.
class journal {
  public:
    void add(std::string event) {
        const std::lock_guard lock(mutex_);
        events_.push_back(std::move(event));
    }
    std::vector<std::string> take() {
        const std::lock_guard lock(mutex_);
        return std::exchange(events_, {});
    }
    std::size_t size() {
        const std::lock_guard lock(mutex_);
        return events_.size();
    }

  private:
    std::mutex mutex_;
    std::vector<std::string> events_;
};

// How a test tells a running child to exit: the order is taken by whichever incarnation
// of the child is running, on its own thread.
struct control {
    std::mutex mutex;
    std::condition_variable_any wake;
    std::optional<otpkv::exit_reason> order;
    bool ignore_stop = false;         // the child will not stop when asked (see stubborn_for)
    std::atomic<int> fail_starts{0};  // this many next starts throw
    std::atomic<bool> release{false}; // lets a child that ignored its stop finish

    void exit_with(otpkv::exit_reason reason) {
        {
            const std::lock_guard lock(mutex);
            order = std::move(reason);
        }
        wake.notify_all();
    }
};

// How long a child that ignores its stop runs at most unless released. Only a supervisor
// that wrongly waits for such a child sees it end: the test then fails instead of hanging.
inline constexpr std::chrono::seconds stubborn_for{20};

// A pool of controllable children that log "start X" and "stop X" (a stop asked for).
class children {
  public:
    explicit children(journal& log) : log_(log) {}

    otpkv::child_spec spec(const std::string& id, otpkv::restart type = otpkv::restart::permanent,
                           std::optional<otpkv::timeout> shutdown = std::nullopt) {
        std::shared_ptr<control> ctl = control_of(id);
        otpkv::child_spec s;
        s.id = id;
        s.restart = type;
        s.shutdown = shutdown;
        s.start = [this, id, ctl]() -> std::shared_ptr<otpkv::process> {
            if (ctl->fail_starts > 0) {
                --ctl->fail_starts;
                log_.add("start " + id + " failed");
                throw std::runtime_error("cannot start " + id);
            }
            log_.add("start " + id);
            ++started;
            return otpkv::task::start([this, id, ctl](std::stop_token stop) {
                std::unique_lock lock(ctl->mutex);
                if (ctl->ignore_stop) {
                    ctl->wake.wait_for(lock, stubborn_for, [&] { return ctl->release.load(); });
                    ++finished;
                    return;
                }
                ctl->wake.wait(lock, stop, [&] { return ctl->order.has_value(); });
                ++finished;
                if (!ctl->order) {
                    log_.add("stop " + id);
                    return; // exits with the reason the stop asked for
                }
                const otpkv::exit_reason reason = *std::exchange(ctl->order, std::nullopt);
                lock.unlock();
                if (reason.what() == otpkv::exit_reason::kind::error) {
                    throw std::runtime_error(reason.detail()); // a real crash
                }
                otpkv::exit(reason);
            });
        };
        return s;
    }

    // Lets a child that ignores its stop (ignore_stop) finish, and waits until it has:
    // its abandoned thread uses this fixture, which must outlive it.
    bool release(const std::string& id, int finished_then) {
        const auto ctl = control_of(id);
        ctl->release = true;
        ctl->wake.notify_all();
        return eventually([&] { return finished.load() == finished_then; });
    }

    std::shared_ptr<control> control_of(const std::string& id) {
        const std::lock_guard lock(mutex_);
        auto& slot = controls_[id];
        if (!slot) {
            slot = std::make_shared<control>();
        }
        return slot;
    }

    std::atomic<int> started{0};
    std::atomic<int> finished{0};

  private:
    journal& log_;
    std::mutex mutex_;
    std::map<std::string, std::shared_ptr<control>> controls_;
};

// The pid of child `id`, or none.
inline otpkv::process_id pid_of(otpkv::detail::supervisor_base& sup, const std::string& id) {
    for (const otpkv::child_info& c : sup.which_children()) {
        if (c.id == id) {
            return c.pid;
        }
    }
    return {};
}

// Waits for a process's exit (bounded) and returns its reason.
inline std::optional<otpkv::exit_reason> exit_of(otpkv::process& p,
                                                 std::chrono::milliseconds limit = 5s) {
    if (!eventually([&] { return !p.alive(); }, limit)) {
        return std::nullopt;
    }
    return p.wait();
}

} // namespace otpkv_test
