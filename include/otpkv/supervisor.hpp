// SPDX-License-Identifier: MIT
/// @file
/// Supervisors with OTP's exact rules (design.md §2, "Supervisors"): `supervisor` with the
/// strategies one_for_one, one_for_all and rest_for_one, and `dynamic_supervisor`, whose
/// children are started on demand.
///
/// How it works: a supervisor is a process with one thread of its own and a mailbox, like
/// an OTP supervisor (a gen_server). A child's exit reaches it as a monitor callback that
/// only posts a message, so restarts always run on the supervisor's thread, never on the
/// crashing child's: nothing joins itself and no callback path can deadlock. Management
/// calls (`which_children`, `start_child`, ...) are messages too, answered in order; made
/// from the supervisor's own thread (inside a child's start function, say) they run at once.
///
/// Rules, as in OTP's supervisor.erl:
/// - Children start in list order and stop in reverse order, each with `shutdown` and its
///   own timeout (default 5000 ms for workers, `infinity` for supervisors; `brutal_kill`
///   does not wait). A child that does not stop in time is recorded `killed`.
/// - `permanent` children are always restarted, `transient` ones only after an abnormal
///   exit (a reason other than `normal` and `shutdown`), `temporary` ones never, not even
///   when a sibling's crash terminates them under one_for_all or rest_for_one: their spec is
///   dropped.
/// - Each restart is recorded at the clock's time; a restart at time `t` still counts at
///   `now` while `now <= t + max_seconds`. When the restarts that count, the new one
///   included, are more than `max_restarts`, the supervisor terminates all its children and
///   exits with reason `shutdown`, which its own supervisor sees like any other exit.
///   `max_restarts = 0` gives up on the first crash. Exits that cause no restart never
///   count. A restart whose start fails counts, and is tried again (OTP's
///   try_again_restart).
#pragma once

#include <otpkv/process.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

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

/// How to start and treat one child (OTP's child specification).
struct child_spec {
    /// Unique among a supervisor's children (ignored by dynamic supervisors).
    std::string id;
    /// Starts the child and returns it running. Throwing, or returning nothing, is a
    /// failure to start (the exception becomes the reason).
    std::function<std::shared_ptr<process>()> start;
    /// When to restart it.
    otpkv::restart restart = otpkv::restart::permanent;
    /// How long to wait for it to stop; unset: 5000 ms for a worker, `infinity` for a
    /// supervisor.
    std::optional<timeout> shutdown{};
    /// Worker or supervisor.
    child_type type = child_type::worker;
};

/// One child, as `which_children` reports it.
struct child_info {
    std::string id;                 ///< the spec's id (empty under a dynamic supervisor)
    process_id pid;                 ///< the running process; none when not running
    std::shared_ptr<process> child; ///< the running process itself; null when not running
    child_type type;                ///< worker or supervisor
    bool restarting;                ///< a restart failed and will be tried again
};

/// What `count_children` reports.
struct child_counts {
    std::size_t specs = 0;       ///< children, running or not
    std::size_t active = 0;      ///< running children
    std::size_t supervisors = 0; ///< children that are supervisors
    std::size_t workers = 0;     ///< children that are workers
    /// Equal when all four are.
    friend bool operator==(const child_counts&, const child_counts&) = default;
};

/// A supervisor's settings.
struct supervisor_options {
    otpkv::strategy strategy = otpkv::strategy::one_for_one;         ///< ignored by dynamic ones
    int max_restarts = 3;                                            ///< OTP's intensity
    std::chrono::milliseconds max_seconds = std::chrono::seconds(5); ///< OTP's period
    clock_function clock{}; ///< where restart times come from; empty: steady_clock
};

namespace detail {

/// What `supervisor` and `dynamic_supervisor` share: the thread, the mailbox, the child
/// list and OTP's restart rules.
class supervisor_base : public process {
  public:
    supervisor_base(const supervisor_base&) = delete;
    supervisor_base& operator=(const supervisor_base&) = delete;
    /// Stops (shutdown, waiting for ever) and joins the thread.
    ~supervisor_base() override;

    /// Terminates the children in reverse start order, then exits with `reason`. Waits up
    /// to `wait` (default `infinity`); past it the supervisor is reported `killed` to its
    /// monitors, but it finishes stopping its children before its object can be destroyed.
    exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                     timeout wait = infinity) override;

    /// Every child, in start order. Empty once the supervisor has exited.
    [[nodiscard]] std::vector<child_info> which_children();

    /// Counts of the children. All zero once the supervisor has exited.
    [[nodiscard]] child_counts count_children();

  protected:
    supervisor_base(supervisor_options options, bool dynamic, std::size_t max_children);

    // Starts the thread, then the children in order; on a failure, stops those started.
    result<void> launch(std::vector<child_spec> children);
    result<process_id> add_child(child_spec spec);
    result<void> terminate_by_id(const std::string& id);
    result<void> terminate_by_pid(process_id pid);
    result<process_id> restart_by_id(const std::string& id);
    result<void> delete_by_id(const std::string& id);

  private:
    struct child_record {
        child_spec spec;
        std::shared_ptr<process> proc; // null when not running
        monitor_handle watch;
        bool restarting = false;
        std::uint64_t serial = 0; // identifies the record across edits of the list
    };
    using record_iter = std::vector<child_record>::iterator;

    // Runs `f` on the supervisor's thread and returns what it returned; nothing when the
    // supervisor has exited. From the supervisor's own thread it runs at once.
    template <class F> auto call(F f) -> std::optional<decltype(f())>;
    // `call` for the management calls, whose answer is a result: `shutting_down` when the
    // supervisor has exited.
    template <class F> auto ask(F f) -> decltype(f());
    // Why child `it` cannot be restarted or deleted by hand (it must exist and be stopped).
    std::optional<error> refuse_unless_stopped(record_iter it);
    bool post(std::function<void()> job);
    void loop();

    // All below run on the supervisor's thread only.
    bool start_record(child_record& c, exit_reason* failure = nullptr);
    void terminate(child_record& c);
    void on_child_exit(process_id pid, const exit_reason& reason);
    void restart_from(std::uint64_t serial);
    bool add_restart();
    void shut_down(const exit_reason& reason);
    record_iter find_id(const std::string& id);
    record_iter find_serial(std::uint64_t serial);

    const supervisor_options options_;
    const bool dynamic_;
    const std::size_t max_children_;

    std::mutex mailbox_mutex_;
    std::condition_variable mailbox_ready_;
    std::deque<std::function<void()>> mailbox_;
    bool mailbox_closed_ = false;
    std::thread thread_;
    std::thread::id thread_id_;

    std::vector<child_record> children_;
    std::deque<std::chrono::steady_clock::time_point> restarts_;
    std::uint64_t last_serial_ = 0;
    bool exiting_ = false;
};

} // namespace detail

/// A supervisor with a fixed list of children, plus OTP's management calls.
///
/// Thread safety: every member may be called from any thread; calls are answered in order
/// by the supervisor's thread.
class supervisor final : public detail::supervisor_base {
  public:
    /// Starts a supervisor and its children, in order. If a child fails to start, those
    /// started are stopped in reverse order and the error (`start_failed`) comes back.
    [[nodiscard]] static result<std::shared_ptr<supervisor>> start(std::vector<child_spec> children,
                                                                   supervisor_options options = {});

    /// A child spec for a nested supervisor with these children (type `supervisor`,
    /// shutdown `infinity`, permanent).
    [[nodiscard]] static child_spec child(std::string id, std::vector<child_spec> children,
                                          supervisor_options options = {});

    /// Adds and starts a child at the end of the list. Errors: `already_started` (with its
    /// pid), `already_present`, `start_failed`, `shutting_down`.
    result<process_id> start_child(child_spec spec) { return add_child(std::move(spec)); }

    /// Stops a child, keeping its spec (a temporary child's spec is dropped). Errors:
    /// `not_found`.
    result<void> terminate_child(const std::string& id) { return terminate_by_id(id); }

    /// Starts a stopped child again. Errors: `running`, `restarting`, `not_found`,
    /// `start_failed`.
    result<process_id> restart_child(const std::string& id) { return restart_by_id(id); }

    /// Drops a stopped child's spec. Errors: `running`, `restarting`, `not_found`.
    result<void> delete_child(const std::string& id) { return delete_by_id(id); }

  private:
    explicit supervisor(supervisor_options options)
        : supervisor_base(std::move(options), false, 0) {}
};

/// A supervisor whose children are started on demand (Elixir's DynamicSupervisor):
/// one_for_one, children known by pid, a child that exits and is not restarted is
/// forgotten.
///
/// Thread safety: every member may be called from any thread.
class dynamic_supervisor : public detail::supervisor_base {
  public:
    /// No limit on children.
    static constexpr std::size_t unlimited = static_cast<std::size_t>(-1);

    /// Starts an empty dynamic supervisor that holds at most `max_children` children.
    [[nodiscard]] static std::shared_ptr<dynamic_supervisor>
    start(supervisor_options options = {}, std::size_t max_children = unlimited);

    /// Starts a child (its id is ignored). Errors: `max_children`, `start_failed`,
    /// `shutting_down`.
    result<process_id> start_child(child_spec spec) { return add_child(std::move(spec)); }

    /// Stops a child and forgets it. Errors: `not_found`.
    result<void> terminate_child(process_id pid) { return terminate_by_pid(pid); }

  protected:
    /// For derived supervisors (task_supervisor).
    dynamic_supervisor(supervisor_options options, std::size_t max_children)
        : supervisor_base(std::move(options), true, max_children) {}
};

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

inline supervisor_base::supervisor_base(supervisor_options options, bool dynamic,
                                        std::size_t max_children)
    : options_(std::move(options)), dynamic_(dynamic), max_children_(max_children) {}

inline supervisor_base::~supervisor_base() {
    if (thread_.joinable()) {
        stop(exit_reason::shutdown(), infinity);
        if (std::this_thread::get_id() == thread_id_) {
            thread_.detach(); // destroyed by its own thread: the loop ends by itself
        } else {
            thread_.join();
        }
    }
}

inline result<void> supervisor_base::launch(std::vector<child_spec> children) {
    thread_ = std::thread([this] { loop(); });
    thread_id_ = thread_.get_id();
    auto started = call([this, &children]() -> result<void> {
        for (child_spec& spec : children) {
            if (find_id(spec.id) != children_.end()) {
                return error{errc::already_present, {}, {}};
            }
            children_.push_back({std::move(spec), nullptr, {}, false, ++last_serial_});
            exit_reason failure;
            if (!start_record(children_.back(), &failure)) {
                children_.pop_back();
                return error{errc::start_failed, {}, std::move(failure)};
            }
        }
        return {};
    });
    if (started && *started) {
        return {};
    }
    error failed = started ? started->error() : error{errc::shutting_down, {}, {}};
    stop(exit_reason::shutdown(), infinity);
    return failed;
}

template <class F> auto supervisor_base::call(F f) -> std::optional<decltype(f())> {
    using R = decltype(f());
    if (std::this_thread::get_id() == thread_id_) {
        return f();
    }
    // The promise lives only in the job (the caller keeps just the future): a job dropped
    // unrun by a closing mailbox breaks it, which wakes the caller.
    auto promise = std::make_shared<std::promise<R>>();
    std::future<R> answer = promise->get_future();
    if (!post([promise = std::move(promise), f = std::move(f)]() mutable {
            promise->set_value(f());
        })) {
        return std::nullopt;
    }
    try {
        return answer.get();
    } catch (const std::future_error&) {
        return std::nullopt;
    }
}

template <class F> auto supervisor_base::ask(F f) -> decltype(f()) {
    auto answer = call(std::move(f));
    return answer ? std::move(*answer) : decltype(f())(error{errc::shutting_down, {}, {}});
}

inline std::optional<error> supervisor_base::refuse_unless_stopped(record_iter it) {
    if (it == children_.end()) {
        return error{errc::not_found, {}, {}};
    }
    if (it->proc) {
        return error{errc::running, it->proc->id(), {}};
    }
    if (it->restarting) {
        return error{errc::restarting, {}, {}};
    }
    return std::nullopt;
}

inline bool supervisor_base::post(std::function<void()> job) {
    {
        const std::lock_guard lock(mailbox_mutex_);
        if (mailbox_closed_) {
            return false;
        }
        mailbox_.push_back(std::move(job));
    }
    mailbox_ready_.notify_one();
    return true;
}

inline void supervisor_base::loop() {
    for (;;) {
        std::function<void()> job;
        {
            std::unique_lock lock(mailbox_mutex_);
            mailbox_ready_.wait(lock, [&] { return !mailbox_.empty() || mailbox_closed_; });
            if (mailbox_.empty()) {
                return; // closed and drained
            }
            job = std::move(mailbox_.front());
            mailbox_.pop_front();
        }
        job();
    }
}

inline bool supervisor_base::start_record(child_record& c, exit_reason* failure) {
    try {
        if (!c.spec.start) {
            throw std::invalid_argument("child spec '" + c.spec.id + "' has no start function");
        }
        std::shared_ptr<process> proc = c.spec.start();
        if (!proc) {
            throw std::runtime_error("start of '" + c.spec.id + "' returned no process");
        }
        c.proc = std::move(proc);
        c.restarting = false;
        const process_id pid = c.proc->id();
        // The callback only posts: it runs on the child's thread. `this` is safe: every
        // watch is cancelled (which waits for a running callback) before we go away.
        c.watch = c.proc->monitor([this, pid](const exit_reason& reason) {
            post([this, pid, reason] { on_child_exit(pid, reason); });
        });
        return true;
    } catch (...) {
        c.restarting = true;
        if (failure != nullptr) {
            *failure = exit_reason::from_exception(std::current_exception());
        }
        return false;
    }
}

inline void supervisor_base::terminate(child_record& c) {
    if (!c.proc) {
        return;
    }
    c.watch.cancel(); // a stop we ask for is not a crash: no exit message
    const timeout wait = c.spec.shutdown.value_or(
        c.spec.type == child_type::supervisor ? infinity : default_shutdown);
    c.proc->stop(exit_reason::shutdown(), wait);
    c.proc.reset();
}

inline void supervisor_base::on_child_exit(process_id pid, const exit_reason& reason) {
    if (exiting_) {
        return;
    }
    const auto it = std::find_if(children_.begin(), children_.end(), [&](const child_record& c) {
        return c.proc && c.proc->id() == pid;
    });
    if (it == children_.end()) {
        return; // an exit from before a restart or a termination we asked for
    }
    it->watch.cancel();
    it->proc.reset();
    const bool restart = it->spec.restart == otpkv::restart::permanent ||
                         (it->spec.restart == otpkv::restart::transient && reason.abnormal());
    if (!restart) {
        if (dynamic_ || it->spec.restart == otpkv::restart::temporary) {
            children_.erase(it);
        }
        return;
    }
    restart_from(it->serial);
}

inline void supervisor_base::restart_from(std::uint64_t serial) {
    if (exiting_ || find_serial(serial) == children_.end()) {
        return;
    }
    if (!add_restart()) {
        shut_down(exit_reason::shutdown());
        return;
    }
    const std::size_t at = static_cast<std::size_t>(find_serial(serial) - children_.begin());
    const strategy s = dynamic_ ? strategy::one_for_one : options_.strategy;
    std::size_t first = at; // the children from `first` on (or only `at`) start again
    if (s != strategy::one_for_one) {
        first = s == strategy::one_for_all ? 0 : at;
        // Terminate the group in reverse start order; temporary ones go for good.
        for (std::size_t i = children_.size(); i-- > first;) {
            if (i != at) {
                terminate(children_[i]);
                if (children_[i].spec.restart == otpkv::restart::temporary) {
                    children_.erase(children_.begin() + static_cast<std::ptrdiff_t>(i));
                }
            }
        }
    }
    const std::uint64_t crashed = serial;
    std::vector<std::uint64_t> to_start;
    for (std::size_t i = first; i < children_.size(); ++i) {
        if (s != strategy::one_for_one || children_[i].serial == crashed) {
            to_start.push_back(children_[i].serial);
        }
    }
    for (const std::uint64_t each : to_start) {
        const auto it = find_serial(each);
        if (it != children_.end() && !it->proc && !start_record(*it)) {
            // Counts as a restart, and is tried again (OTP's try_again_restart).
            post([this, each] { restart_from(each); });
        }
    }
}

inline bool supervisor_base::add_restart() {
    const auto now = options_.clock ? options_.clock() : std::chrono::steady_clock::now();
    restarts_.push_back(now);
    while (now > restarts_.front() + options_.max_seconds) {
        restarts_.pop_front();
    }
    return restarts_.size() <= static_cast<std::size_t>(std::max(options_.max_restarts, 0));
}

inline void supervisor_base::shut_down(const exit_reason& reason) {
    if (exiting_) {
        return;
    }
    exiting_ = true;
    for (std::size_t i = children_.size(); i-- > 0;) {
        terminate(children_[i]);
    }
    children_.clear();
    {
        const std::lock_guard lock(mailbox_mutex_);
        mailbox_closed_ = true; // pending calls are dropped: their callers get nothing
        mailbox_.clear();
    }
    mailbox_ready_.notify_all();
    notify_exit(reason);
}

inline exit_reason supervisor_base::stop(exit_reason reason, timeout wait) {
    if (std::this_thread::get_id() == thread_id_) {
        shut_down(reason); // from a child's start function or our own monitors
        return *exited();
    }
    if (!post([this, reason] { shut_down(reason); }) && !thread_.joinable()) {
        notify_exit(reason); // never launched
    }
    if (!wait_exit(wait)) {
        notify_exit(exit_reason::killed()); // the first exit wins; the thread goes on
    }
    return *exited();
}

inline std::vector<child_info> supervisor_base::which_children() {
    auto list = call([this] {
        std::vector<child_info> out;
        out.reserve(children_.size());
        for (const child_record& c : children_) {
            out.push_back({c.spec.id, c.proc ? c.proc->id() : process_id{}, c.proc, c.spec.type,
                           c.restarting});
        }
        return out;
    });
    return list ? std::move(*list) : std::vector<child_info>{};
}

inline child_counts supervisor_base::count_children() {
    return call([this] {
               child_counts n;
               for (const child_record& c : children_) {
                   ++n.specs;
                   n.active += c.proc ? 1U : 0U;
                   ++(c.spec.type == child_type::supervisor ? n.supervisors : n.workers);
               }
               return n;
           })
        .value_or(child_counts{});
}

inline result<process_id> supervisor_base::add_child(child_spec spec) {
    return ask([this, &spec]() -> result<process_id> {
        if (exiting_) {
            return error{errc::shutting_down, {}, {}};
        }
        if (dynamic_) {
            if (children_.size() >= max_children_) {
                return error{errc::max_children, {}, {}};
            }
        } else if (const auto it = find_id(spec.id); it != children_.end()) {
            return it->proc ? error{errc::already_started, it->proc->id(), {}}
                            : error{errc::already_present, {}, {}};
        }
        children_.push_back({std::move(spec), nullptr, {}, false, ++last_serial_});
        exit_reason failure;
        if (!start_record(children_.back(), &failure)) {
            children_.pop_back();
            return error{errc::start_failed, {}, std::move(failure)};
        }
        return children_.back().proc->id();
    });
}

inline result<void> supervisor_base::terminate_by_id(const std::string& id) {
    return ask([this, &id]() -> result<void> {
        const auto it = find_id(id);
        if (it == children_.end()) {
            return error{errc::not_found, {}, {}};
        }
        terminate(*it);
        it->restarting = false;
        if (it->spec.restart == otpkv::restart::temporary) {
            children_.erase(it);
        }
        return {};
    });
}

inline result<void> supervisor_base::terminate_by_pid(process_id pid) {
    return ask([this, pid]() -> result<void> {
        const auto it =
            std::find_if(children_.begin(), children_.end(),
                         [&](const child_record& c) { return c.proc && c.proc->id() == pid; });
        if (it == children_.end()) {
            return error{errc::not_found, {}, {}};
        }
        terminate(*it);
        children_.erase(it);
        return {};
    });
}

inline result<process_id> supervisor_base::restart_by_id(const std::string& id) {
    return ask([this, &id]() -> result<process_id> {
        const auto it = find_id(id);
        if (auto refused = refuse_unless_stopped(it)) {
            return *refused;
        }
        exit_reason failure;
        if (!start_record(*it, &failure)) {
            it->restarting = false; // a manual restart that failed leaves it stopped
            return error{errc::start_failed, {}, std::move(failure)};
        }
        return it->proc->id();
    });
}

inline result<void> supervisor_base::delete_by_id(const std::string& id) {
    return ask([this, &id]() -> result<void> {
        const auto it = find_id(id);
        if (auto refused = refuse_unless_stopped(it)) {
            return *refused;
        }
        children_.erase(it);
        return {};
    });
}

inline supervisor_base::record_iter supervisor_base::find_id(const std::string& id) {
    return std::find_if(children_.begin(), children_.end(),
                        [&](const child_record& c) { return c.spec.id == id; });
}

inline supervisor_base::record_iter supervisor_base::find_serial(std::uint64_t serial) {
    return std::find_if(children_.begin(), children_.end(),
                        [&](const child_record& c) { return c.serial == serial; });
}

} // namespace detail

inline result<std::shared_ptr<supervisor>> supervisor::start(std::vector<child_spec> children,
                                                             supervisor_options options) {
    std::shared_ptr<supervisor> sup(new supervisor(std::move(options)));
    if (result<void> started = sup->launch(std::move(children)); !started) {
        return started.error();
    }
    return sup;
}

inline child_spec supervisor::child(std::string id, std::vector<child_spec> children,
                                    supervisor_options options) {
    auto start = [children = std::move(children), options = std::move(options)]() {
        return std::shared_ptr<process>(supervisor::start(children, options).value());
    };
    return {std::move(id), std::move(start), restart::permanent, infinity, child_type::supervisor};
}

inline std::shared_ptr<dynamic_supervisor> dynamic_supervisor::start(supervisor_options options,
                                                                     std::size_t max_children) {
    std::shared_ptr<dynamic_supervisor> sup(
        new dynamic_supervisor(std::move(options), max_children));
    sup->launch({}).value(); // no children: cannot fail
    return sup;
}

} // namespace v0
} // namespace otpkv
