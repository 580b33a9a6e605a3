// SPDX-License-Identifier: MIT
/// @file
/// Tasks (design.md §2): a `task` is a thread running `f(std::stop_token)` (or `f()`) as a
/// process. Returning is a `normal` exit (or the reason a stop asked for), throwing is an
/// `error` exit, and `otpkv::exit(reason)` exits with that reason. `task_supervisor` is the
/// guide's Task.Supervisor: tasks started on demand, and `async` + `await`.
#pragma once

#include <otpkv/process.hpp>
#include <otpkv/supervisor.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

namespace otpkv {
inline namespace v0 {

/// A process that runs a function on a thread of its own.
///
/// Stopping: `stop(reason, wait)` requests a stop through the function's `std::stop_token`
/// and waits up to `wait` for the exit to be recorded. A function that returns then exits
/// with `reason`; one still running when `wait` ends is recorded `killed` and abandoned:
/// its thread is detached and owns everything it uses, so it may finish later without
/// harm, but nobody hears of it. C++ cannot kill a thread; a task that must be stoppable
/// checks its token. A call the task makes into a supervisor gives up (`shutting_down`)
/// when the task is asked to stop, so a task blocked on its own supervisor still stops.
///
/// Thread safety: every member may be called from any thread; `stop` from the task's own
/// thread requests the stop and returns at once.
class task final : public process {
  public:
    /// Starts `f` on a new thread. `f` takes a `std::stop_token`, or nothing.
    template <class F> [[nodiscard]] static std::shared_ptr<task> start(F f);

    /// See the class comment. Returns the reason the task exited with.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = default_shutdown) override;

    /// Stops the task if it still runs (shutdown, 5000 ms), then joins its thread.
    inline ~task() override; // inline: see ~process

    task(const task&) = delete;
    task& operator=(const task&) = delete;

  private:
    struct shared_state {
        std::stop_source stop;
        std::mutex mutex;
        std::optional<exit_reason> requested; // the reason of the first stop request
    };

    task() = default;

    // Lets go of the thread: joined when it has finished, else detached. Nobody waits for
    // the rest of a task's thread: once the exit is recorded it only runs monitors on state
    // it owns, and those may be waiting on whoever lets go of it.
    void release_thread();

    std::shared_ptr<shared_state> state_ = std::make_shared<shared_state>();
    detail::process_threads thread_;
};

namespace detail {
/// How an async task's value travels: behind a shared_ptr, so a move-only value can be
/// moved out of a shared future; `void` as itself.
template <class T>
using async_slot = std::conditional_t<std::is_void_v<T>, void, std::shared_ptr<T>>;
} // namespace detail

/// The result of `task_supervisor::async`: `await` it, once, for the task's value.
///
/// It keeps the task's shared state until it is destroyed: an exception rethrown by
/// `await` is then never freed by another thread while the awaiter still reads it.
///
/// Thread safety: one thread awaits it.
template <class T> class awaitable {
  public:
    /// Waits for the task and returns its value (moved out: await once), or rethrows the
    /// exception it threw.
    T await() {
        if constexpr (std::is_void_v<T>) {
            future_.get();
        } else {
            return std::move(*future_.get());
        }
    }

    /// Waits up to `wait` for the task to finish; true when it has (then `await` returns
    /// at once).
    [[nodiscard]] bool wait_for(timeout wait) const {
        return future_.wait_for(wait) == std::future_status::ready;
    }

    /// The task's pid.
    [[nodiscard]] process_id pid() const noexcept { return pid_; }

  private:
    friend class task_supervisor;
    awaitable(std::future<detail::async_slot<T>> future, process_id pid)
        : future_(future.share()), pid_(pid) {}

    std::shared_future<detail::async_slot<T>> future_;
    process_id pid_;
};

/// The guide's Task.Supervisor: a dynamic supervisor of tasks.
///
/// Thread safety: every member may be called from any thread.
class task_supervisor final : public dynamic_supervisor {
  public:
    /// Starts an empty task supervisor.
    [[nodiscard]] static std::shared_ptr<task_supervisor>
    start(supervisor_options options = {}, std::size_t max_children = unlimited);

    using dynamic_supervisor::start_child;

    /// Starts `f` as a supervised task: `temporary` by default (never restarted), or
    /// `permanent`/`transient` to have it restarted by the usual rules. Errors:
    /// `max_children`, `shutting_down`.
    template <class F>
    requires std::is_invocable_v<F&, std::stop_token> || std::is_invocable_v<F&> result<process_id>
    start_child(F f, restart type = restart::temporary, timeout shutdown = default_shutdown);

    /// Starts `f` as a temporary task whose value (or exception) `await` delivers (the
    /// guide's `Task.Supervisor.async` with `Task.await`); a task that throws exits with an
    /// `error` reason holding the message, the exception itself going to the awaiter.
    /// Errors: as `start_child`.
    template <class F>
    requires std::is_invocable_v<F&, std::stop_token> || std::is_invocable_v<F&>
    auto async(F f);

  private:
    task_supervisor(supervisor_options options, std::size_t max_children)
        : dynamic_supervisor(std::move(options), max_children) {}
};

// =======================================================================================
// Implementation
// =======================================================================================

template <class F> std::shared_ptr<task> task::start(F f) {
    std::shared_ptr<task> t(new task());
    // The thread holds the shared state and the exit signal, never the task object.
    std::optional<F> body(std::move(f));
    t->thread_.start([state = t->state_, signal = t->signal(), body = std::move(body)]() mutable {
        detail::current_stop_token = state->stop.get_token();
        exit_reason reason;
        try {
            if constexpr (std::is_invocable_v<F&, std::stop_token>) {
                (*body)(state->stop.get_token());
            } else {
                (*body)();
            }
            const std::lock_guard lock(state->mutex);
            reason = state->requested.value_or(exit_reason::normal());
        } catch (const process_exit& e) {
            reason = e.reason();
        } catch (...) {
            reason = exit_reason::from_exception(std::current_exception());
        }
        body.reset(); // what the function holds is let go before anybody hears of the exit
        signal->exit(reason);
    });
    return t;
}

inline exit_reason task::stop(exit_reason reason, timeout wait) {
    if (alive()) {
        {
            const std::lock_guard lock(state_->mutex);
            if (!state_->requested) {
                state_->requested = reason;
            }
        }
        state_->stop.request_stop();
        if (thread_.is_current()) {
            return reason; // we cannot wait for ourselves; the exit comes when f returns
        }
        if (wait == brutal_kill || !wait_recorded(wait)) {
            notify_exit(exit_reason::killed()); // abandoned, unless it exited just now
        }
    }
    release_thread();
    return *exited();
}

inline task::~task() {
    if (alive()) {
        stop(exit_reason::shutdown(), default_shutdown);
    }
    release_thread();
}

inline void task::release_thread() {
    thread_.abandon();
    thread_.release();
}

inline std::shared_ptr<task_supervisor> task_supervisor::start(supervisor_options options,
                                                               std::size_t max_children) {
    std::shared_ptr<task_supervisor> sup(new task_supervisor(std::move(options), max_children));
    sup->launch({}).value(); // no children: cannot fail
    return sup;
}

template <class F>
requires std::is_invocable_v<F&, std::stop_token> || std::is_invocable_v<F&> result<process_id>
task_supervisor::start_child(F f, restart type, timeout shutdown) {
    child_spec spec;
    spec.start = [f = std::move(f)]() -> std::shared_ptr<process> { return task::start(f); };
    spec.restart = type;
    spec.shutdown = shutdown;
    return dynamic_supervisor::start_child(std::move(spec));
}

template <class F>
requires std::is_invocable_v<F&, std::stop_token> || std::is_invocable_v<F&>
auto task_supervisor::async(F f) {
    constexpr bool takes_token = std::is_invocable_v<F&, std::stop_token>;
    using value_type = std::decay_t<typename std::conditional_t<
        takes_token, std::invoke_result<F&, std::stop_token>, std::invoke_result<F&>>::type>;
    auto promise = std::make_shared<std::promise<detail::async_slot<value_type>>>();
    std::future<detail::async_slot<value_type>> future = promise->get_future();
    auto body = [promise, f = std::move(f)](std::stop_token token) mutable {
        try {
            if constexpr (std::is_void_v<value_type>) {
                if constexpr (takes_token) {
                    f(std::move(token));
                } else {
                    f();
                }
                promise->set_value();
            } else if constexpr (takes_token) {
                promise->set_value(std::make_shared<value_type>(f(std::move(token))));
            } else {
                promise->set_value(std::make_shared<value_type>(f()));
            }
        } catch (...) {
            // The exception goes to the awaiter; the monitors get its message. (Sharing one
            // exception object across threads would also be safe, but its last release
            // then happens inside libstdc++'s uninstrumented code, which ThreadSanitizer
            // reports.)
            const std::exception_ptr e = std::current_exception();
            std::string message = exception_message(e);
            promise->set_exception(e);
            exit(exit_reason::error(std::move(message)));
        }
    };
    result<process_id> started = start_child(std::move(body), restart::temporary);
    using answer = result<awaitable<value_type>>;
    if (!started) {
        return answer(started.error());
    }
    return answer(awaitable<value_type>(std::move(future), *started));
}

} // namespace v0
} // namespace otpkv
