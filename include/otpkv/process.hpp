// SPDX-License-Identifier: MIT
/// @file
/// The "process" vocabulary of OTP in C++ (design.md §2): process ids, exit reasons,
/// monitors, the `process` base class that supervisors hold, and the small value types the
/// supervision API returns (`result`, a clock that tests can drive).
///
/// A C++ thread cannot be killed and memory is shared, so otpkv keeps OTP's contracts and
/// maps the mechanisms: a process *exits* exactly once, with a reason; everybody that
/// monitors it is told exactly once; a process that will not stop in time is recorded as
/// `killed` and abandoned (its thread is detached, never touched again).
#pragma once

#include <otpkv/detail/registration.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace otpkv {
inline namespace v0 {

// ---------------------------------------------------------------------------------------
// Process ids and exit reasons
// ---------------------------------------------------------------------------------------

/// A process's unique id (OTP's pid). The default value, 0, names no process (OTP's
/// `undefined`). Ids are never reused within a program run.
class process_id {
  public:
    /// No process.
    constexpr process_id() noexcept = default;
    /// The id with this number (for tests and logs; processes get theirs from `next`).
    explicit constexpr process_id(std::uint64_t value) noexcept : value_(value) {}

    /// A fresh id. The one piece of program-wide state in otpkv: a counter, so that ids
    /// stay unique across every supervisor and registry the program owns.
    /// Thread safety: any thread.
    [[nodiscard]] static process_id next() noexcept;

    /// The number; 0 for no process.
    [[nodiscard]] constexpr std::uint64_t value() const noexcept { return value_; }
    /// True when this names a process.
    explicit constexpr operator bool() const noexcept { return value_ != 0; }

    /// Ordered by creation.
    friend constexpr auto operator<=>(process_id, process_id) noexcept = default;

  private:
    std::uint64_t value_ = 0;
};

/// Printed the way Elixir prints a local pid: `<0.42.0>`; no process prints `undefined`.
[[nodiscard]] std::string to_string(process_id pid);

/// Why a process exited (OTP's exit reasons). A plain value: copy it freely.
class exit_reason {
  public:
    /// The kinds of reason.
    enum class kind : std::uint8_t {
        normal,   ///< finished its work
        shutdown, ///< asked to stop (by its supervisor, say); may carry a detail
        killed,   ///< did not stop in time, or was stopped without waiting (brutal_kill)
        error,    ///< crashed: an exception escaped, with its message and the exception
        noproc    ///< given to a monitor of a process that had already exited
    };

    /// `normal`.
    exit_reason() = default;
    /// `normal`.
    [[nodiscard]] static exit_reason normal() { return {}; }
    /// `shutdown`, or `{shutdown, detail}`.
    [[nodiscard]] static exit_reason shutdown(std::string detail = {}) {
        return {kind::shutdown, std::move(detail), nullptr};
    }
    /// `killed`.
    [[nodiscard]] static exit_reason killed() { return {kind::killed, {}, nullptr}; }
    /// `error` with a message, and the exception when there is one.
    [[nodiscard]] static exit_reason error(std::string message, std::exception_ptr e = {}) {
        return {kind::error, std::move(message), std::move(e)};
    }
    /// `error` from an exception: its `what()` as the message (any other exception type:
    /// "unknown exception").
    [[nodiscard]] static exit_reason from_exception(std::exception_ptr e);
    /// `noproc`.
    [[nodiscard]] static exit_reason noproc() { return {kind::noproc, {}, nullptr}; }

    /// Which kind of reason.
    [[nodiscard]] kind what() const noexcept { return kind_; }
    /// The shutdown detail or the error message; empty otherwise.
    [[nodiscard]] const std::string& detail() const noexcept { return detail_; }
    /// The exception of an `error`, when there was one.
    [[nodiscard]] const std::exception_ptr& exception() const noexcept { return exception_; }
    /// True for every reason but `normal` and `shutdown` (OTP's rule for `transient`).
    [[nodiscard]] bool abnormal() const noexcept {
        return kind_ != kind::normal && kind_ != kind::shutdown;
    }

    /// Equal kinds and details (exceptions are not compared).
    friend bool operator==(const exit_reason& a, const exit_reason& b) noexcept {
        return a.kind_ == b.kind_ && a.detail_ == b.detail_;
    }

  private:
    exit_reason(kind k, std::string detail, std::exception_ptr e)
        : kind_(k), detail_(std::move(detail)), exception_(std::move(e)) {}

    kind kind_ = kind::normal;
    std::string detail_;
    std::exception_ptr exception_;
};

/// `normal`, `shutdown`, `{shutdown, detail}`, `killed`, `{error, message}`, `noproc`.
[[nodiscard]] std::string to_string(const exit_reason& reason);

/// The `what()` of an exception, or "unknown exception" for other thrown types.
[[nodiscard]] std::string exception_message(const std::exception_ptr& e);

/// Thrown by `exit` from a process's own code to end it with a given reason (Erlang's
/// `exit(Reason)`); tasks catch it and exit with that reason.
class process_exit : public std::exception {
  public:
    /// Carries `reason`.
    explicit process_exit(exit_reason reason) : reason_(std::move(reason)) {}
    /// The reason to exit with.
    [[nodiscard]] const exit_reason& reason() const noexcept { return reason_; }
    /// "process_exit".
    [[nodiscard]] const char* what() const noexcept override { return "process_exit"; }

  private:
    exit_reason reason_;
};

/// Ends the calling process's code with `reason` (throws `process_exit`). Inside a task,
/// `exit(exit_reason::shutdown())` ends it with `shutdown`, which a `transient` child's
/// supervisor does not restart.
[[noreturn]] inline void exit(exit_reason reason) {
    throw process_exit(std::move(reason));
}

// ---------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------

/// How long to wait; `infinity` waits for ever, `brutal_kill` does not wait at all.
using timeout = std::chrono::milliseconds;
/// Wait for ever (OTP's `infinity`).
inline constexpr timeout infinity = timeout::max();
/// Do not wait: the process is recorded `killed` unless it had exited already.
inline constexpr timeout brutal_kill = timeout::zero();
/// The default shutdown timeout of a worker (OTP's 5000 ms).
inline constexpr timeout default_shutdown = std::chrono::milliseconds(5000);

/// The clock supervisors read restart times from. Empty means `steady_clock::now`.
using clock_function = std::function<std::chrono::steady_clock::time_point()>;

/// A clock that moves only when told to: restart windows are then tested exactly and
/// without sleeping. Thread safety: any thread may read and advance it.
class manual_clock {
  public:
    /// The current time.
    [[nodiscard]] std::chrono::steady_clock::time_point now() const noexcept {
        return std::chrono::steady_clock::time_point(
            std::chrono::steady_clock::duration(ticks_.load(std::memory_order_acquire)));
    }
    /// Moves the clock forward by `d`.
    void advance(std::chrono::steady_clock::duration d) noexcept {
        ticks_.fetch_add(d.count(), std::memory_order_acq_rel);
    }
    /// A `clock_function` reading this clock, which must outlive its users.
    [[nodiscard]] clock_function function() const {
        return [this] { return now(); };
    }

  private:
    std::atomic<std::chrono::steady_clock::rep> ticks_{0};
};

// ---------------------------------------------------------------------------------------
// Supervision vocabulary (here, not in supervisor.hpp, so that snapshot.hpp can name them)
// ---------------------------------------------------------------------------------------

/// Which children a crash takes down with it.
enum class strategy : std::uint8_t {
    one_for_one, ///< only the crashed child is restarted
    one_for_all, ///< all others are terminated, then all are started again
    rest_for_one ///< the children started after it are terminated, then it and they start
};

/// When a child is restarted.
enum class restart : std::uint8_t {
    permanent, ///< always
    transient, ///< only after an abnormal exit
    temporary  ///< never; its spec is dropped when it exits
};

/// What a child is; supervisors get an `infinity` shutdown by default.
enum class child_type : std::uint8_t { worker, supervisor };

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// Why a supervision call was refused (OTP's error atoms).
enum class errc : std::uint8_t {
    not_found,       ///< no child with that id (or pid)
    running,         ///< the child is running (restart_child, delete_child)
    restarting,      ///< the child is being restarted after a failed start
    already_present, ///< a child with that id exists, not running (start_child)
    already_started, ///< a child with that id is running (start_child); `pid` names it
    start_failed,    ///< the child's start function threw or returned nothing; see `reason`
    max_children,    ///< a dynamic supervisor is full
    shutting_down,   ///< the supervisor has exited or is exiting, or the caller is stopping
    calling_self     ///< a call that changes children, made from the supervisor's own thread
};

/// The name of an error code (`"not_found"`, ...).
[[nodiscard]] std::string_view to_string(errc code) noexcept;

/// A refused call: the code, and where it applies the running child's pid or the reason a
/// start failed.
struct error {
    errc code = errc::not_found; ///< what went wrong
    process_id pid{};            ///< `already_started`: the running child
    exit_reason reason{};        ///< `start_failed`: why
};

/// Thrown by `result::value()` on an error.
class bad_result_access : public std::exception {
  public:
    /// Carries the error.
    explicit bad_result_access(otpkv::error e);
    /// The error the result held.
    [[nodiscard]] const otpkv::error& error() const noexcept { return error_; }
    /// "otpkv: <code>" and, for a failed start, its reason: "otpkv: start_failed: {error, x}".
    [[nodiscard]] const char* what() const noexcept override { return what_.c_str(); }

  private:
    otpkv::error error_;
    std::string what_;
};

/// A value or an `error` (C++20 has no std::expected). Expected failures of the supervision
/// API come back this way, never as exceptions.
template <class T> class result {
  public:
    /// A value.
    result(T value) : state_(std::in_place_index<0>, std::move(value)) {}
    /// An error.
    result(otpkv::error e) : state_(std::in_place_index<1>, std::move(e)) {}

    /// True when it holds a value.
    [[nodiscard]] bool has_value() const noexcept { return state_.index() == 0; }
    /// True when it holds a value.
    explicit operator bool() const noexcept { return has_value(); }
    /// The value; throws `bad_result_access` on an error (handy inside a child's start
    /// function, where an exception means "failed to start").
    [[nodiscard]] T& value() & {
        throw_if_error();
        return std::get<0>(state_);
    }
    /// The value; throws `bad_result_access` on an error.
    [[nodiscard]] T&& value() && {
        throw_if_error();
        return std::get<0>(std::move(state_));
    }
    /// The value; throws `bad_result_access` on an error.
    [[nodiscard]] const T& value() const& {
        throw_if_error();
        return std::get<0>(state_);
    }
    /// The value, which must be there.
    [[nodiscard]] T& operator*() noexcept { return *std::get_if<0>(&state_); }
    /// The value, which must be there.
    [[nodiscard]] const T& operator*() const noexcept { return *std::get_if<0>(&state_); }
    /// The value, which must be there.
    [[nodiscard]] T* operator->() noexcept { return std::get_if<0>(&state_); }
    /// The value, which must be there.
    [[nodiscard]] const T* operator->() const noexcept { return std::get_if<0>(&state_); }
    /// The error, which must be there.
    [[nodiscard]] const otpkv::error& error() const noexcept { return *std::get_if<1>(&state_); }

  private:
    void throw_if_error() const {
        if (!has_value()) {
            throw bad_result_access(error());
        }
    }
    std::variant<T, otpkv::error> state_;
};

/// Success without a value, or an `error`.
template <> class result<void> {
  public:
    /// Success.
    result() = default;
    /// An error.
    result(otpkv::error e) : error_(std::move(e)) {}
    /// True on success.
    [[nodiscard]] bool has_value() const noexcept { return !error_; }
    /// True on success.
    explicit operator bool() const noexcept { return has_value(); }
    /// Throws `bad_result_access` on an error.
    void value() const {
        if (error_) {
            throw bad_result_access(*error_);
        }
    }
    /// The error, which must be there.
    [[nodiscard]] const otpkv::error& error() const noexcept { return *error_; }

  private:
    std::optional<otpkv::error> error_;
};

// ---------------------------------------------------------------------------------------
// Monitors and processes
// ---------------------------------------------------------------------------------------

namespace detail {
class exit_signal;
} // namespace detail

/// What a monitor runs, once, with the exit reason.
using exit_callback = std::function<void(const exit_reason&)>;

/// A monitor (OTP's `Process.monitor`): returned by `process::monitor`. Dropping or
/// cancelling it demonitors. Movable, not copyable.
///
/// Thread safety: like any object, one handle is used by one thread at a time; `cancel` may
/// be called from inside the callback it guards.
class monitor_handle {
  public:
    /// Monitors nothing.
    monitor_handle() = default;

    /// After this returns, the callback will not run: if it was not yet called it never
    /// will be, and if it is running on another thread this waits for it to return (from
    /// inside the callback itself, it returns at once).
    void cancel() noexcept;

  private:
    friend class process;
    monitor_handle(std::shared_ptr<detail::exit_signal> signal, std::uint64_t id) noexcept
        : registration_(std::move(signal), id) {}

    detail::registration<detail::exit_signal> registration_; // cancels when dropped
};

/// Anything a supervisor can hold: it has an id, exits exactly once with a reason, can be
/// monitored, and can be asked to stop. Tasks, supervisors, buckets, the registry and the
/// server are processes.
///
/// Thread safety: every member may be called from any thread.
class process {
  public:
    process(const process&) = delete;
    process& operator=(const process&) = delete;
    // Declared inline here, not only where it is defined: a class whose virtual functions
    // are all inline at its definition has no key function, so its vtable and virtual
    // functions are emitted only where an object is made, not in every file that includes
    // this header (Itanium C++ ABI). Every process below does the same.
    inline virtual ~process();

    /// This process's id.
    [[nodiscard]] process_id id() const noexcept { return id_; }

    /// True until the process has exited. Lock-free.
    [[nodiscard]] bool alive() const noexcept;

    /// The exit reason once the process has exited.
    [[nodiscard]] std::optional<exit_reason> exited() const;

    /// Runs `on_exit` once, with the exit reason, when the process exits: on the thread
    /// that ends it, after the exit is recorded. A process already dead calls it at once,
    /// on this thread, with `noproc`. A callback must not throw (an exception from it is
    /// dropped) and should be short: it delays the other monitors.
    [[nodiscard]] monitor_handle monitor(exit_callback on_exit);

    /// Asks the process to exit with `reason` and waits up to `wait` (from a supervisor:
    /// the child's shutdown timeout) for the exit to be recorded; its monitors may still
    /// be running on its own thread. Returns the reason it exited with: `killed` when it
    /// did not exit in time, in which case it is abandoned. On a process that has exited
    /// already, returns its reason. (A process may promise more: a bucket's stop returns
    /// after its monitors have run.)
    virtual exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                             timeout wait = default_shutdown) = 0;

    /// Waits until the process has exited and its monitors have run; returns its reason.
    exit_reason wait() const;

  protected:
    /// A process with a fresh id, alive.
    process();

    /// Records the exit and runs the monitors, in the order they were set, on this thread.
    /// Only the first call counts; it returns true, later ones false.
    bool notify_exit(const exit_reason& reason);

    /// Waits up to `wait` for the exit to be recorded (its monitors may still be running:
    /// a stopper must not wait on other parties' callbacks, which may wait on it).
    bool wait_recorded(timeout wait) const;

    /// For a `start` that failed with the exception being handled: records the exit with it
    /// (the process never ran) and returns the `start_failed` error that carries it.
    [[nodiscard]] error start_failed(std::exception_ptr e);

    /// For a destructor: stops the process (shutdown, `default_shutdown`) if it still runs.
    void stop_if_alive();

    /// The exit state itself, for a thread that must record the exit without holding the
    /// process object (a task's thread).
    [[nodiscard]] const std::shared_ptr<detail::exit_signal>& signal() const noexcept {
        return signal_;
    }

  private:
    process_id id_;
    std::shared_ptr<detail::exit_signal> signal_;
};

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

/// The program-wide counter behind process_id::next (see there).
inline std::atomic<std::uint64_t> process_id_counter{0};

/// The stop token of the process running on this thread (a task's, or a supervisor's own
/// thread's): a call into a supervisor gives up when it is requested, as an OTP process
/// blocked in a call dies with the exit signal of its supervisor.
inline thread_local std::stop_token current_stop_token{};

/// The exit state of one process and its monitors. Shared by the process and its monitor
/// handles, so a handle may outlive the process.
class exit_signal {
  public:
    bool exited() const noexcept { return exited_.load(std::memory_order_acquire); }

    // Returns the monitor's id, or 0 when the process had exited (the caller then runs the
    // callback with noproc itself).
    std::uint64_t add(exit_callback cb) {
        const std::lock_guard lock(mutex_);
        if (exited_.load(std::memory_order_relaxed)) {
            return 0;
        }
        const std::uint64_t id = ++last_monitor_id_;
        monitors_.push_back({id, std::move(cb)});
        return id;
    }

    void cancel(std::uint64_t id) noexcept {
        std::unique_lock lock(mutex_);
        for (auto it = monitors_.begin(); it != monitors_.end(); ++it) {
            if (it->id == id) {
                monitors_.erase(it);
                return;
            }
        }
        // Not pending: it may be running. Wait for it, unless it runs on this thread.
        if (running_id_ == id && running_thread_ != std::this_thread::get_id()) {
            changed_.wait(lock, [&] { return running_id_ != id; });
        }
    }

    bool exit(const exit_reason& reason) {
        {
            const std::lock_guard lock(mutex_);
            if (exited_.load(std::memory_order_relaxed)) {
                return false;
            }
            reason_ = reason;
            delivering_ = true;
            delivering_thread_ = std::this_thread::get_id();
            // release: a reader that sees `exited` also sees the reason written above.
            exited_.store(true, std::memory_order_release);
        }
        changed_.notify_all();
        std::unique_lock lock(mutex_);
        while (!monitors_.empty()) {
            entry next = std::move(monitors_.front());
            monitors_.erase(monitors_.begin());
            running_id_ = next.id;
            running_thread_ = std::this_thread::get_id();
            lock.unlock();
            try {
                next.callback(reason_);
            } catch (...) { // NOLINT(bugprone-empty-catch): documented: dropped
            }
            lock.lock();
            running_id_ = 0;
            running_thread_ = {};
            changed_.notify_all();
        }
        delivering_ = false;
        delivering_thread_ = {};
        changed_.notify_all();
        return true;
    }

    std::optional<exit_reason> reason() const {
        const std::lock_guard lock(mutex_);
        if (!exited_.load(std::memory_order_relaxed)) {
            return std::nullopt;
        }
        return reason_;
    }

    // Waits for the exit to be recorded, not for the monitors to have run.
    bool wait_recorded(timeout wait) const {
        std::unique_lock lock(mutex_);
        const auto recorded = [&] { return exited_.load(std::memory_order_relaxed); };
        if (wait == infinity) {
            changed_.wait(lock, recorded);
            return true;
        }
        return changed_.wait_for(lock, wait, recorded);
    }

    bool wait_done(timeout wait) const {
        std::unique_lock lock(mutex_);
        if (delivering_ && delivering_thread_ == std::this_thread::get_id()) {
            return false; // inside our own monitors: the rest runs after we return
        }
        const auto done = [&] { return exited_.load(std::memory_order_relaxed) && !delivering_; };
        if (wait == infinity) {
            changed_.wait(lock, done);
            return true;
        }
        return changed_.wait_for(lock, wait, done);
    }

  private:
    struct entry {
        std::uint64_t id;
        exit_callback callback;
    };

    mutable std::mutex mutex_;
    mutable std::condition_variable changed_;
    std::atomic<bool> exited_{false};
    exit_reason reason_;
    // A vector, not a deque: empty until the first monitor (libstdc++'s deque allocates
    // over 500 bytes up front, and every bucket is a process); monitors are few.
    std::vector<entry> monitors_;
    std::uint64_t last_monitor_id_ = 0;
    std::uint64_t running_id_ = 0;
    std::thread::id running_thread_;
    bool delivering_ = false;
    std::thread::id delivering_thread_;
};

/// The threads of a process (one for a supervisor, a task or a node_client, one per event
/// loop for a server), and the one rule for letting go of them: they are joined, unless
/// they are let go of from one of those very threads (a process stopped or dropped by its
/// own code: a thread cannot join itself) or they were abandoned (`abandon`: a stop timed
/// out, so the thread may never finish); then they are detached. A thread that has finished
/// is always joined, which returns at once. A detached thread must own everything it still
/// touches: each body holds the shared state it uses, never the process object.
///
/// Thread safety: `start` from the owner before it shares the process; the rest from any
/// thread. Not copyable or movable; releases on destruction.
class process_threads {
  public:
    process_threads() = default;
    process_threads(const process_threads&) = delete;
    process_threads& operator=(const process_threads&) = delete;
    ~process_threads() { release(); }

    /// Runs `body` on a new thread of this process and returns the thread's id. Throws what
    /// `std::thread` throws.
    template <class F> std::thread::id start(F body) {
        const std::lock_guard lock(mutex_);
        // Room first: nothing may throw between the thread's start and its being kept.
        threads_.reserve(threads_.size() + 1);
        ids_.reserve(ids_.size() + 1);
        running_->fetch_add(1, std::memory_order_relaxed);
        try {
            threads_.emplace_back([running = running_, body = std::move(body)]() mutable {
                body();
                // release: a joiner that sees the count drop sees everything the body did.
                running->fetch_sub(1, std::memory_order_release);
            });
        } catch (...) {
            running_->fetch_sub(1, std::memory_order_relaxed);
            throw;
        }
        ids_.push_back(threads_.back().get_id());
        return ids_.back();
    }

    /// True when called on one of these threads.
    [[nodiscard]] bool is_current() const {
        const std::lock_guard lock(mutex_);
        return current_locked();
    }

    /// True once a thread was started.
    [[nodiscard]] bool started() const {
        const std::lock_guard lock(mutex_);
        return !ids_.empty();
    }

    /// From now on they are not waited for: a thread still running when they are released
    /// is detached and finishes by itself.
    void abandon() noexcept { abandoned_.store(true, std::memory_order_release); }

    /// True after `abandon`.
    [[nodiscard]] bool abandoned() const noexcept {
        return abandoned_.load(std::memory_order_acquire);
    }

    /// Joins or detaches every thread not yet let go of, by the rule above.
    void release() noexcept {
        std::vector<std::thread> taken;
        bool detach = false;
        {
            // Taken out under the lock, joined outside it: a thread being joined may still
            // ask `is_current`.
            const std::lock_guard lock(mutex_);
            taken.swap(threads_);
            const bool finished = running_->load(std::memory_order_acquire) == 0;
            detach = current_locked() || (abandoned() && !finished);
        }
        for (std::thread& t : taken) {
            if (detach) {
                t.detach();
            } else {
                t.join();
            }
        }
    }

  private:
    [[nodiscard]] bool current_locked() const noexcept {
        const std::thread::id self = std::this_thread::get_id();
        for (const std::thread::id id : ids_) {
            if (id == self) {
                return true;
            }
        }
        return false;
    }

    mutable std::mutex mutex_;
    std::vector<std::thread> threads_;
    std::vector<std::thread::id> ids_;
    std::shared_ptr<std::atomic<std::size_t>> running_ =
        std::make_shared<std::atomic<std::size_t>>(0);
    std::atomic<bool> abandoned_{false};
};

} // namespace detail

inline process_id process_id::next() noexcept {
    // relaxed: only uniqueness matters, which the atomic increment gives by itself.
    return process_id(detail::process_id_counter.fetch_add(1, std::memory_order_relaxed) + 1);
}

inline std::string to_string(process_id pid) {
    return pid ? "<0." + std::to_string(pid.value()) + ".0>" : "undefined";
}

inline std::string exception_message(const std::exception_ptr& e) {
    try {
        if (e) {
            std::rethrow_exception(e);
        }
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) { // NOLINT(bugprone-empty-catch): any other type has no message
    }
    return "unknown exception";
}

inline exit_reason exit_reason::from_exception(std::exception_ptr e) {
    std::string message = exception_message(e);
    return error(std::move(message), std::move(e));
}

inline std::string to_string(const exit_reason& reason) {
    switch (reason.what()) {
    case exit_reason::kind::normal:
        return "normal";
    case exit_reason::kind::shutdown:
        return reason.detail().empty() ? "shutdown" : "{shutdown, " + reason.detail() + "}";
    case exit_reason::kind::killed:
        return "killed";
    case exit_reason::kind::error:
        return "{error, " + reason.detail() + "}";
    case exit_reason::kind::noproc:
        break;
    }
    return "noproc";
}

inline std::string_view to_string(errc code) noexcept {
    switch (code) {
    case errc::not_found:
        return "not_found";
    case errc::running:
        return "running";
    case errc::restarting:
        return "restarting";
    case errc::already_present:
        return "already_present";
    case errc::already_started:
        return "already_started";
    case errc::start_failed:
        return "start_failed";
    case errc::max_children:
        return "max_children";
    case errc::shutting_down:
        return "shutting_down";
    case errc::calling_self:
        break;
    }
    return "calling_self";
}

inline bad_result_access::bad_result_access(otpkv::error e) : error_(std::move(e)) {
    what_ = "otpkv: " + std::string(to_string(error_.code));
    if (error_.code == errc::start_failed) {
        what_ += ": " + to_string(error_.reason);
    }
}

inline void monitor_handle::cancel() noexcept {
    registration_.cancel();
}

inline process::process()
    : id_(process_id::next()), signal_(std::make_shared<detail::exit_signal>()) {}

inline process::~process() = default;

inline bool process::alive() const noexcept {
    return !signal_->exited();
}

inline std::optional<exit_reason> process::exited() const {
    return signal_->reason();
}

inline monitor_handle process::monitor(exit_callback on_exit) {
    const std::uint64_t id = signal_->add(on_exit);
    if (id == 0) {
        try {
            on_exit(exit_reason::noproc());
        } catch (...) { // NOLINT(bugprone-empty-catch): documented: dropped
        }
        return {};
    }
    return {signal_, id};
}

inline exit_reason process::wait() const {
    signal_->wait_done(infinity);
    return *signal_->reason();
}

inline bool process::notify_exit(const exit_reason& reason) {
    return signal_->exit(reason);
}

inline bool process::wait_recorded(timeout wait) const {
    return signal_->wait_recorded(wait);
}

inline error process::start_failed(std::exception_ptr e) {
    exit_reason reason = exit_reason::from_exception(std::move(e));
    notify_exit(reason);
    return error{errc::start_failed, {}, std::move(reason)};
}

inline void process::stop_if_alive() {
    if (alive()) {
        stop(exit_reason::shutdown(), default_shutdown);
    }
}

} // namespace v0
} // namespace otpkv
