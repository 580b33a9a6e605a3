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
/// calls (`which_children`, `start_child`, ...) are messages too, answered in order. Made
/// from the supervisor's own thread (a child's start function, the monitors of a child it
/// stops), the calls that read answer at once and those that would change the children are
/// refused with `calling_self`, as in OTP. A call made by a process that is asked to stop
/// meanwhile gives up with `shutting_down`, so a child blocked on its own supervisor still
/// stops when that supervisor stops it. The supervisor's state belongs to its thread as
/// much as to the object, so the object may be let go from any thread, its own included.
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
///   try_again_restart) as long as the child is still waiting for it; under one_for_all
///   and rest_for_one the children after the failed one stay down until it starts.
///
/// Logging (`supervisor_options::log`), as OTP's supervisor reports. Every event has the field
/// `supervisor=` with the supervisor's name; those about a child have `child=` with its id
/// (under a dynamic supervisor: its pid's text) and the child's process as `pid`:
/// - `child_started` (debug): a child started (at the supervisor's start, `start_child`,
///   `restart_child`).
/// - `child_exited` (info; debug under a dynamic supervisor, whose children, buckets and
///   tasks, come and go by design): a child exited by itself with `normal` or `shutdown`;
///   `reason=`.
/// - `child_crashed` (error): a child exited with any other reason (`reason=`), or did not
///   stop in time when the supervisor stopped it (`reason=killed`).
/// - `child_restarted` (info): the supervisor restarted a child (the crashed one and, under
///   one_for_all and rest_for_one, those it took down); `pid` is the new process.
/// - `restart_failed` (error): a restart's start failed (`reason=`); it is tried again.
/// - `supervisor_gave_up` (error): the restart intensity was reached: `child=` the child
///   whose restart was one too many, `max_restarts=`, `max_seconds=`, `reason=` its exit.
/// - `supervisor_started`, `supervisor_stopped` (debug; `reason=` its exit reason), with
///   the supervisor's own `pid`.
/// Nothing is built for an event whose level the logger does not take, so a dynamic
/// supervisor of millions of children pays one branch per event when logging is off.
#pragma once

#include <otpkv/log.hpp>
#include <otpkv/process.hpp>
#include <otpkv/snapshot.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// How to start and treat one child (OTP's child specification).
struct child_spec {
    /// Unique among a supervisor's children (ignored by dynamic supervisors).
    std::string id{};
    /// Starts the child and returns it running. Throwing, or returning nothing, is a
    /// failure to start (the exception becomes the reason).
    std::function<std::shared_ptr<process>()> start{};
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
    std::string id{};                 ///< the spec's id (empty under a dynamic supervisor)
    process_id pid{};                 ///< the running process; none when not running
    std::shared_ptr<process> child{}; ///< the running process itself; null when not running
    child_type type{};                ///< worker or supervisor
    bool restarting{};                ///< a restart failed and will be tried again
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
    /// Where it reports what happens to its children and to itself (default: nowhere);
    /// see "Logging" in the file comment for the events.
    logger log{};
    /// Its name in log events (`supervisor=`) and snapshots; empty: its pid's text.
    /// `supervisor::child` gives a nested supervisor its child id when this is empty.
    std::string name{};
};

/// Anything that can show a supervision tree below it: every supervisor, and processes
/// that own one without being one (a registry shows its bucket supervisor). A supervisor's
/// snapshot looks for this interface (with `dynamic_cast`) on each child to go down.
///
/// Thread safety: `tree_snapshot` may be called from any thread.
class supervision_tree {
  public:
    supervision_tree() = default;
    supervision_tree(const supervision_tree&) = delete;
    supervision_tree& operator=(const supervision_tree&) = delete;
    /// Nothing to release.
    virtual ~supervision_tree() = default;

    /// The supervisor under this process, recursively (see `supervisor_base::snapshot`).
    [[nodiscard]] virtual supervisor_snapshot tree_snapshot(const snapshot_options& options) = 0;
};

namespace detail {

class supervisor_core;

/// What `supervisor` and `dynamic_supervisor` share. The state (mailbox, children, restart
/// history) lives in a core that the supervisor's thread owns with this object, so the
/// object may be destroyed on any thread, its own included.
class supervisor_base : public process, public supervision_tree {
  public:
    supervisor_base(const supervisor_base&) = delete;
    supervisor_base& operator=(const supervisor_base&) = delete;
    /// Stops (shutdown, waiting for ever) and joins the thread. On the supervisor's own
    /// thread, or after a stop that timed out, it asks for the shutdown and lets the
    /// thread finish it on its own.
    inline ~supervisor_base() override; // inline: see ~process

    /// Terminates the children in reverse start order, then exits with `reason`. Waits up
    /// to `wait` (default `infinity`) for the exit; past it the supervisor is reported
    /// `killed` and finishes stopping its children on its own. From the supervisor's own
    /// thread (a start function, say) it asks for the shutdown and returns at once.
    inline exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                            timeout wait = infinity) override;

    /// Every child, in start order. Empty once the supervisor has exited.
    [[nodiscard]] std::vector<child_info> which_children();

    /// Counts of the children. All zero once the supervisor has exited.
    [[nodiscard]] child_counts count_children();

    /// The supervisor and its children at one moment, answered by its thread like
    /// `which_children` (from that thread itself, at once): settings, the restarts that
    /// count in the intensity window now, and each child's id, pid, type, restart type,
    /// state, restarts in the window, last exit and uptime, times read from
    /// `supervisor_options::clock`. Then, after that answer and outside this supervisor's
    /// thread, each listed child that is a `supervision_tree` (a nested supervisor, a
    /// registry) is asked for its own snapshot, recursively; a supervisor's thread never
    /// waits on another's, so from this supervisor's own thread the children's trees are
    /// left out. A dynamic supervisor lists its first `options.max_children` children, in
    /// start order, and counts them all in `child_count`. Once the supervisor has exited:
    /// its name, pid and settings, no children.
    /// Complexity: on its thread, O(listed children + restarts in the window log of them);
    /// then the nested snapshots.
    [[nodiscard]] supervisor_snapshot snapshot(const snapshot_options& options = {});

    /// `snapshot(options)`.
    [[nodiscard]] supervisor_snapshot tree_snapshot(const snapshot_options& options) override {
        return snapshot(options);
    }

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
    std::shared_ptr<supervisor_core> core_;
    process_threads thread_; // abandoned when a stop timed out: it finishes alone
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

/// The state and the rules of one supervisor; every member but `post`, `call`, `ask` and
/// the accessors runs on the supervisor's thread only.
class supervisor_core : public std::enable_shared_from_this<supervisor_core> {
  public:
    supervisor_core(supervisor_options options, bool dynamic, std::size_t max_children,
                    std::shared_ptr<exit_signal> signal, process_id self)
        : options_(std::move(options)), dynamic_(dynamic), max_children_(max_children),
          signal_(std::move(signal)), self_(self),
          name_(options_.name.empty() ? to_string(self) : options_.name) {}

    void loop();
    bool post(std::function<void()> job);

    // Runs `f` on the supervisor's thread and returns what it returned; nothing when the
    // supervisor has exited or the calling process is asked to stop meanwhile. From the
    // supervisor's own thread it runs at once: only for calls that read.
    template <class F> auto call(F f) -> std::optional<decltype(f())>;
    // `call` for a management call that changes children, whose answer is a result:
    // `calling_self` from the supervisor's own thread, `shutting_down` when nobody answers.
    template <class F> auto ask(F f) -> decltype(f());

    // Asks for the shutdown: the caller's wait for it may be cut short, the shutdown runs.
    void request_shutdown(const exit_reason& reason);

    bool on_own_thread() const noexcept { return std::this_thread::get_id() == thread_id_; }
    void set_thread(std::thread::id id) noexcept { thread_id_ = id; }

    // The supervisor's thread only.
    result<void> start_all(std::vector<child_spec> children);
    result<process_id> add_child(child_spec spec);
    result<void> terminate_by_id(const std::string& id);
    result<void> terminate_by_pid(process_id pid);
    result<process_id> restart_by_id(const std::string& id);
    result<void> delete_by_id(const std::string& id);
    std::vector<child_info> list() const;
    child_counts counts() const;

    // A snapshot without the nested trees, and for each listed child the process to ask
    // for its tree (null when it is not a supervision_tree).
    struct snapshot_answer {
        supervisor_snapshot snapshot;
        std::vector<std::shared_ptr<process>> trees;
    };
    snapshot_answer take_snapshot(std::size_t max_listed) const;
    // Any thread: what a snapshot shows once the supervisor has exited (const state only).
    supervisor_snapshot empty_snapshot() const;

  private:
    struct child_record {
        child_spec spec;
        std::shared_ptr<process> proc; // null when not running
        monitor_handle watch;
        bool restarting = false;  // a restart failed; try_again will start it
        std::uint64_t serial = 0; // identifies the record across edits of the list
        process_id pid{};         // its current or last process (a dynamic child's id)
        std::chrono::steady_clock::time_point started{}; // when `proc` started
        // Its last exit, or why its last start failed; null: neither happened yet. A
        // pointer, so that the many children of a dynamic supervisor stay small.
        std::unique_ptr<const exit_reason> last_exit{};
    };
    using record_iter = std::vector<child_record>::iterator;

    child_record make_record(child_spec spec) {
        return {std::move(spec), nullptr, {}, false, ++last_serial_, {}, {}, nullptr};
    }
    bool start_record(child_record& c, exit_reason* failure = nullptr);
    void terminate(child_record& c);
    void erase(record_iter it);
    void on_child_exit(process_id pid, const exit_reason& reason);
    void restart(std::uint64_t serial);
    void try_again(std::uint64_t serial);
    bool add_restart(std::uint64_t serial);
    std::chrono::steady_clock::time_point now() const {
        return options_.clock ? options_.clock() : std::chrono::steady_clock::now();
    }
    // Logging: each builds its event only when the logger takes `level`.
    void report_child(log_level level, std::string_view what, const child_record& c,
                      const exit_reason* reason) const;
    void report_self(log_level level, std::string_view what, const exit_reason* reason,
                     const child_record* c = nullptr) const;
    void shut_down(const exit_reason& reason);
    std::optional<error> refuse_unless_stopped(record_iter it);
    record_iter find_id(const std::string& id);
    record_iter find_serial(std::uint64_t serial);
    record_iter find_pid(process_id pid); // a running child

    const supervisor_options options_;
    const bool dynamic_;
    const std::size_t max_children_;
    const std::shared_ptr<exit_signal> signal_;
    const process_id self_;
    const std::string name_; // in logs and snapshots

    std::mutex mailbox_mutex_;
    std::condition_variable mailbox_ready_;
    std::deque<std::function<void()>> mailbox_;
    bool mailbox_closed_ = false;
    std::stop_source stop_; // requested when a shutdown is asked for
    std::thread::id thread_id_;

    std::vector<child_record> children_; // in start order, so sorted by serial
    // Running children: pid -> serial, so that an exit among many dynamic children (a
    // registry's buckets) is found without a scan.
    std::unordered_map<std::uint64_t, std::uint64_t> serial_of_pid_;
    // When each restart that may still count happened, and whose it was (a serial).
    std::deque<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>> restarts_;
    std::uint64_t last_serial_ = 0;
    bool exiting_ = false;
};

// The answer to one call: filled by the job, or marked dropped when the job dies unrun.
template <class R> struct reply_slot {
    std::mutex mutex;
    std::condition_variable_any ready;
    std::optional<R> value;
    bool dropped = false;
};

template <class R> struct responder {
    std::shared_ptr<reply_slot<R>> slot;
    explicit responder(std::shared_ptr<reply_slot<R>> s) : slot(std::move(s)) {}
    responder(const responder&) = delete;
    responder& operator=(const responder&) = delete;
    ~responder() {
        {
            const std::lock_guard lock(slot->mutex);
            slot->dropped = !slot->value;
        }
        slot->ready.notify_all();
    }
};

template <class F> auto supervisor_core::call(F f) -> std::optional<decltype(f())> {
    using R = decltype(f());
    if (on_own_thread()) {
        return f();
    }
    auto slot = std::make_shared<reply_slot<R>>();
    // The responder lives only in the job: a job dropped unrun by a closing mailbox
    // destroys it, which wakes the caller.
    auto answer = std::make_shared<responder<R>>(slot);
    if (!post([answer = std::move(answer), f = std::move(f)]() mutable {
            R value = f();
            const std::lock_guard lock(answer->slot->mutex);
            answer->slot->value.emplace(std::move(value));
        })) {
        return std::nullopt;
    }
    std::unique_lock lock(slot->mutex);
    // Gives up when the calling process is asked to stop (its supervisor may be the one
    // we wait for, stopping us).
    slot->ready.wait(lock, current_stop_token, [&] { return slot->value || slot->dropped; });
    if (!slot->value) {
        return std::nullopt;
    }
    return std::move(*slot->value);
}

template <class F> auto supervisor_core::ask(F f) -> decltype(f()) {
    using R = decltype(f());
    if (on_own_thread()) {
        return R(error{errc::calling_self, {}, {}});
    }
    auto answer = call(std::move(f));
    return answer ? std::move(*answer) : R(error{errc::shutting_down, {}, {}});
}

inline bool supervisor_core::post(std::function<void()> job) {
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

inline void supervisor_core::loop() {
    current_stop_token = stop_.get_token();
    for (;;) {
        std::function<void()> job;
        {
            std::unique_lock lock(mailbox_mutex_);
            mailbox_ready_.wait(lock, [&] { return !mailbox_.empty() || mailbox_closed_; });
            if (mailbox_.empty()) {
                break; // closed and drained
            }
            job = std::move(mailbox_.front());
            mailbox_.pop_front();
        }
        job();
    }
}

inline void supervisor_core::request_shutdown(const exit_reason& reason) {
    stop_.request_stop();
    post([this, reason] { shut_down(reason); });
}

inline result<void> supervisor_core::start_all(std::vector<child_spec> children) {
    for (child_spec& spec : children) {
        if (find_id(spec.id) != children_.end()) {
            return error{errc::already_present, {}, {}};
        }
        children_.push_back(make_record(std::move(spec)));
        exit_reason failure;
        if (!start_record(children_.back(), &failure)) {
            erase(children_.end() - 1);
            return error{errc::start_failed, {}, std::move(failure)};
        }
        report_child(log_level::debug, "child_started", children_.back(), nullptr);
    }
    report_self(log_level::debug, "supervisor_started", nullptr);
    return {};
}

inline bool supervisor_core::start_record(child_record& c, exit_reason* failure) {
    try {
        if (!c.spec.start) {
            throw std::invalid_argument("child spec '" + c.spec.id + "' has no start function");
        }
        std::shared_ptr<process> proc = c.spec.start();
        if (!proc) {
            throw std::runtime_error("start of '" + c.spec.id + "' returned no process");
        }
        // `c` is still valid: a start function runs on this thread, where calls that would
        // change the list are refused (a stop it asks for runs after this job).
        c.proc = std::move(proc);
        c.restarting = false;
        const process_id pid = c.proc->id();
        c.pid = pid;
        c.started = now();
        serial_of_pid_[pid.value()] = c.serial;
        // The callback only posts: it runs on the child's thread, and holds the core
        // weakly, so it never keeps a finished supervisor alive.
        c.watch = c.proc->monitor([weak = weak_from_this(), pid](const exit_reason& reason) {
            if (const auto self = weak.lock()) {
                self->post([raw = self.get(), pid, reason] { raw->on_child_exit(pid, reason); });
            }
        });
        return true;
    } catch (...) {
        c.restarting = true;
        exit_reason why = exit_reason::from_exception(std::current_exception());
        if (failure != nullptr) {
            *failure = why;
        }
        c.last_exit = std::make_unique<const exit_reason>(std::move(why));
        return false;
    }
}

inline void supervisor_core::terminate(child_record& c) {
    if (!c.proc) {
        return;
    }
    c.watch.cancel(); // a stop we ask for is not a crash: no exit message
    serial_of_pid_.erase(c.proc->id().value());
    const timeout wait = c.spec.shutdown.value_or(
        c.spec.type == child_type::supervisor ? infinity : default_shutdown);
    // Moved out first: the child's monitors may call back in (reads only) meanwhile.
    const std::shared_ptr<process> proc = std::move(c.proc);
    const exit_reason why = proc->stop(exit_reason::shutdown(), wait);
    // `c` is still valid: the monitors that ran meanwhile could only read.
    if (why.abnormal()) {
        // It did not stop in time (killed), or it crashed before the stop reached it.
        report_child(log_level::error, "child_crashed", c, &why);
    }
    if (!exiting_) { // a supervisor that shuts down forgets its children anyway
        c.last_exit = std::make_unique<const exit_reason>(why);
    }
}

inline void supervisor_core::erase(record_iter it) {
    // The record dies after the list is consistent again: its spec may own anything.
    if (it->proc) {
        serial_of_pid_.erase(it->proc->id().value());
    }
    child_record gone = std::move(*it);
    children_.erase(it);
}

inline void supervisor_core::on_child_exit(process_id pid, const exit_reason& told) {
    if (exiting_) {
        return;
    }
    const auto it = find_pid(pid);
    if (it == children_.end()) {
        return; // an exit from before a restart or a termination we asked for
    }
    it->watch.cancel();
    serial_of_pid_.erase(pid.value());
    // A child that exited before its monitor was set is told `noproc`; what counts (for
    // the restart, the log, the snapshot) is the reason it really exited with.
    const exit_reason reason = told.what() == exit_reason::kind::noproc && it->proc
                                   ? it->proc->exited().value_or(told)
                                   : told;
    it->last_exit = std::make_unique<const exit_reason>(reason);
    if (reason.abnormal()) {
        report_child(log_level::error, "child_crashed", *it, &reason);
    } else {
        // A dynamic supervisor's children come and go on demand (a registry's buckets,
        // tasks): their normal ends are routine, reported at debug only.
        report_child(dynamic_ ? log_level::debug : log_level::info, "child_exited", *it, &reason);
    }
    // The dead process is let go when this returns, after the list is consistent again.
    const std::shared_ptr<process> gone = std::move(it->proc);
    const bool again = it->spec.restart == otpkv::restart::permanent ||
                       (it->spec.restart == otpkv::restart::transient && reason.abnormal());
    if (!again) {
        if (dynamic_ || it->spec.restart == otpkv::restart::temporary) {
            erase(it);
        }
        return;
    }
    restart(it->serial);
}

inline void supervisor_core::try_again(std::uint64_t serial) {
    // Only a child still waiting for its restart (OTP: pid == restarting); one terminated
    // or deleted by hand meanwhile stays so.
    const auto it = find_serial(serial);
    if (!exiting_ && it != children_.end() && it->restarting && !it->proc) {
        restart(serial);
    }
}

inline void supervisor_core::restart(std::uint64_t serial) {
    if (exiting_ || find_serial(serial) == children_.end()) {
        return;
    }
    if (!add_restart(serial)) {
        const auto it = find_serial(serial);
        report_self(log_level::error, "supervisor_gave_up", it->last_exit.get(), &*it);
        shut_down(exit_reason::shutdown());
        return;
    }
    const auto at = static_cast<std::size_t>(find_serial(serial) - children_.begin());
    const strategy s = dynamic_ ? strategy::one_for_one : options_.strategy;
    const std::size_t first = s == strategy::one_for_all ? 0 : at;
    if (s != strategy::one_for_one) {
        // Terminate the group in reverse start order; temporary ones go for good.
        for (std::size_t i = children_.size(); i-- > first;) {
            if (children_[i].serial != serial) {
                terminate(children_[i]);
                if (children_[i].spec.restart == otpkv::restart::temporary) {
                    erase(children_.begin() + static_cast<std::ptrdiff_t>(i));
                }
            }
        }
    }
    std::vector<std::uint64_t> to_start;
    for (auto it = find_serial(s == strategy::one_for_all ? children_.front().serial : serial);
         it != children_.end(); ++it) {
        if (s != strategy::one_for_one || it->serial == serial) {
            to_start.push_back(it->serial);
        }
    }
    for (const std::uint64_t each : to_start) {
        const auto it = find_serial(each);
        if (it == children_.end() || it->proc) {
            continue;
        }
        if (!start_record(*it)) {
            report_child(log_level::error, "restart_failed", *it, it->last_exit.get());
            // As OTP: the children after it stay down, and this one is tried again, which
            // counts as another restart.
            post([this, each] { try_again(each); });
            return;
        }
        report_child(log_level::info, "child_restarted", *it, nullptr);
    }
}

inline bool supervisor_core::add_restart(std::uint64_t serial) {
    const auto at = now();
    restarts_.emplace_back(at, serial);
    while (at > restarts_.front().first + options_.max_seconds) {
        restarts_.pop_front();
    }
    return restarts_.size() <= static_cast<std::size_t>(std::max(options_.max_restarts, 0));
}

inline void supervisor_core::shut_down(const exit_reason& reason) {
    if (exiting_) {
        return;
    }
    exiting_ = true;
    stop_.request_stop();
    for (std::size_t i = children_.size(); i-- > 0;) {
        terminate(children_[i]);
    }
    std::vector<child_record> gone = std::move(children_);
    children_.clear();
    serial_of_pid_.clear();
    {
        const std::lock_guard lock(mailbox_mutex_);
        mailbox_closed_ = true;
    }
    mailbox_ready_.notify_all();
    report_self(log_level::debug, "supervisor_stopped", &reason);
    signal_->exit(reason);
    // Calls still waiting in the mailbox are dropped, after our exit is recorded: each
    // dropped job wakes its caller with nothing (shutting_down).
    std::deque<std::function<void()>> dropped;
    {
        const std::lock_guard lock(mailbox_mutex_);
        dropped.swap(mailbox_);
    }
}

inline std::optional<error> supervisor_core::refuse_unless_stopped(record_iter it) {
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

inline std::vector<child_info> supervisor_core::list() const {
    std::vector<child_info> out;
    out.reserve(children_.size());
    for (const child_record& c : children_) {
        out.push_back(
            {c.spec.id, c.proc ? c.proc->id() : process_id{}, c.proc, c.spec.type, c.restarting});
    }
    return out;
}

inline child_counts supervisor_core::counts() const {
    child_counts n;
    for (const child_record& c : children_) {
        ++n.specs;
        n.active += c.proc ? 1U : 0U;
        ++(c.spec.type == child_type::supervisor ? n.supervisors : n.workers);
    }
    return n;
}

inline result<process_id> supervisor_core::add_child(child_spec spec) {
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
    children_.push_back(make_record(std::move(spec)));
    exit_reason failure;
    if (!start_record(children_.back(), &failure)) {
        erase(children_.end() - 1); // a spec that fails to start is not kept
        return error{errc::start_failed, {}, std::move(failure)};
    }
    report_child(log_level::debug, "child_started", children_.back(), nullptr);
    return children_.back().proc->id();
}

inline result<void> supervisor_core::terminate_by_id(const std::string& id) {
    const auto it = find_id(id);
    if (it == children_.end()) {
        return error{errc::not_found, {}, {}};
    }
    const std::uint64_t serial = it->serial;
    terminate(*it);
    const auto still = find_serial(serial);
    if (still != children_.end()) {
        still->restarting = false; // a pending retry leaves it stopped
        if (still->spec.restart == otpkv::restart::temporary) {
            erase(still);
        }
    }
    return {};
}

inline result<void> supervisor_core::terminate_by_pid(process_id pid) {
    const auto it = find_pid(pid);
    if (it == children_.end()) {
        return error{errc::not_found, {}, {}};
    }
    const std::uint64_t serial = it->serial;
    terminate(*it);
    if (const auto still = find_serial(serial); still != children_.end()) {
        erase(still);
    }
    return {};
}

inline result<process_id> supervisor_core::restart_by_id(const std::string& id) {
    const auto it = find_id(id);
    if (auto refused = refuse_unless_stopped(it)) {
        return *refused;
    }
    exit_reason failure;
    if (!start_record(*it, &failure)) {
        it->restarting = false; // a manual restart that failed leaves it stopped
        return error{errc::start_failed, {}, std::move(failure)};
    }
    report_child(log_level::debug, "child_started", *it, nullptr);
    return it->proc->id();
}

inline result<void> supervisor_core::delete_by_id(const std::string& id) {
    const auto it = find_id(id);
    if (auto refused = refuse_unless_stopped(it)) {
        return *refused;
    }
    erase(it);
    return {};
}

inline supervisor_core::record_iter supervisor_core::find_id(const std::string& id) {
    return std::find_if(children_.begin(), children_.end(),
                        [&](const child_record& c) { return c.spec.id == id; });
}

inline supervisor_core::record_iter supervisor_core::find_serial(std::uint64_t serial) {
    const auto it = std::lower_bound(
        children_.begin(), children_.end(), serial,
        [](const child_record& c, std::uint64_t wanted) { return c.serial < wanted; });
    return it != children_.end() && it->serial == serial ? it : children_.end();
}

inline supervisor_core::record_iter supervisor_core::find_pid(process_id pid) {
    const auto known = serial_of_pid_.find(pid.value());
    if (known == serial_of_pid_.end()) {
        return children_.end();
    }
    const auto it = find_serial(known->second);
    return it != children_.end() && it->proc && it->proc->id() == pid ? it : children_.end();
}

inline supervisor_snapshot supervisor_core::empty_snapshot() const {
    supervisor_snapshot s;
    s.name = name_;
    s.pid = self_;
    s.dynamic = dynamic_;
    s.strategy = dynamic_ ? strategy::one_for_one : options_.strategy;
    s.max_restarts = options_.max_restarts;
    s.max_seconds = options_.max_seconds;
    return s;
}

inline supervisor_core::snapshot_answer
supervisor_core::take_snapshot(std::size_t max_listed) const {
    using std::chrono::duration_cast;
    using std::chrono::milliseconds;
    snapshot_answer out{empty_snapshot(), {}};
    supervisor_snapshot& s = out.snapshot;
    const auto at = now();
    // The restarts that count now (the rule of add_restart), by child.
    std::vector<std::uint64_t> counted;
    for (const auto& [when, serial] : restarts_) {
        if (at <= when + options_.max_seconds) {
            counted.push_back(serial);
        }
    }
    std::sort(counted.begin(), counted.end());
    s.restarts = counted.size();
    s.child_count = children_.size();
    const std::size_t listed = dynamic_ ? std::min(max_listed, children_.size()) : children_.size();
    s.children.reserve(listed);
    out.trees.reserve(listed);
    for (std::size_t i = 0; i < listed; ++i) {
        const child_record& c = children_[i];
        child_snapshot cs;
        cs.id = dynamic_ ? to_string(c.pid) : c.spec.id;
        cs.pid = c.proc ? c.pid : process_id{};
        cs.type = c.spec.type;
        cs.restart = c.spec.restart;
        cs.state = c.proc         ? child_state::running
                   : c.restarting ? child_state::restarting
                                  : child_state::stopped;
        const auto [first, last] = std::equal_range(counted.begin(), counted.end(), c.serial);
        cs.restarts = static_cast<std::size_t>(last - first);
        cs.last_exit = c.last_exit ? to_string(*c.last_exit) : std::string();
        cs.uptime = c.proc ? duration_cast<milliseconds>(at - c.started) : milliseconds(0);
        s.children.push_back(std::move(cs));
        out.trees.push_back(dynamic_cast<supervision_tree*>(c.proc.get()) != nullptr
                                ? c.proc
                                : std::shared_ptr<process>());
    }
    return out;
}

/// `5000 ms` as `5`, `1500 ms` as `1.5`: seconds, as the options are spoken of.
[[nodiscard]] inline std::string seconds_text(std::chrono::milliseconds d) {
    std::string out = std::to_string(d.count() / 1000);
    if (const auto rest = d.count() % 1000; rest != 0) {
        std::string frac = std::to_string(rest + 1000).substr(1); // three digits
        while (frac.back() == '0') {
            frac.pop_back();
        }
        out += '.' + frac;
    }
    return out;
}

inline void supervisor_core::report_child(log_level level, std::string_view what,
                                          const child_record& c, const exit_reason* reason) const {
    if (!options_.log.enabled(level)) {
        return; // nothing is built: a dynamic supervisor may have millions of children
    }
    log_event e;
    e.level = level;
    e.what = what;
    e.pid = c.pid;
    e.fields.emplace_back("supervisor", name_);
    e.fields.emplace_back("child", dynamic_ ? to_string(c.pid) : c.spec.id);
    if (reason != nullptr) {
        e.reason = to_string(*reason);
    }
    options_.log.log(std::move(e));
}

inline void supervisor_core::report_self(log_level level, std::string_view what,
                                         const exit_reason* reason, const child_record* c) const {
    if (!options_.log.enabled(level)) {
        return;
    }
    log_event e;
    e.level = level;
    e.what = what;
    e.pid = self_;
    e.fields.emplace_back("supervisor", name_);
    if (c != nullptr) { // giving up: the child whose restart was one too many
        e.fields.emplace_back("child", dynamic_ ? to_string(c->pid) : c->spec.id);
        e.fields.emplace_back("max_restarts", std::to_string(options_.max_restarts));
        e.fields.emplace_back("max_seconds", seconds_text(options_.max_seconds));
    }
    if (reason != nullptr) {
        e.reason = to_string(*reason);
    }
    options_.log.log(std::move(e));
}

// ---- supervisor_base: the handle

inline supervisor_base::supervisor_base(supervisor_options options, bool dynamic,
                                        std::size_t max_children)
    : core_(std::make_shared<supervisor_core>(std::move(options), dynamic, max_children, signal(),
                                              id())) {}

inline supervisor_base::~supervisor_base() {
    if (!thread_.started()) {
        return;
    }
    if (thread_.is_current() || thread_.abandoned()) {
        // On its own thread, or abandoned by a stop that timed out: the thread owns the
        // core and finishes the shutdown by itself (the release detaches it).
        core_->request_shutdown(exit_reason::shutdown());
    } else {
        stop(exit_reason::shutdown(), infinity);
    }
    thread_.release();
}

inline result<void> supervisor_base::launch(std::vector<child_spec> children) {
    core_->set_thread(thread_.start([core = core_] { core->loop(); }));
    // Jobs own their arguments: a caller that gives up (it is being stopped) may be gone
    // by the time its job runs.
    auto started = core_->call([core = core_.get(), children = std::move(children)]() mutable {
        return core->start_all(std::move(children));
    });
    if (started && *started) {
        return {};
    }
    error failed = started ? started->error() : error{errc::shutting_down, {}, {}};
    stop(exit_reason::shutdown(), infinity);
    return failed;
}

inline exit_reason supervisor_base::stop(exit_reason reason, timeout wait) {
    if (alive()) {
        core_->request_shutdown(reason);
        if (core_->on_own_thread()) {
            return reason; // the shutdown runs when the current job returns
        }
        if (!thread_.started()) {
            notify_exit(reason); // never launched
        } else if (!wait_recorded(wait) && notify_exit(exit_reason::killed())) {
            thread_.abandon(); // the thread goes on stopping the children by itself
        }
    }
    wait_recorded(infinity);
    return *exited();
}

inline std::vector<child_info> supervisor_base::which_children() {
    return core_->call([core = core_.get()] { return core->list(); })
        .value_or(std::vector<child_info>{});
}

inline child_counts supervisor_base::count_children() {
    return core_->call([core = core_.get()] { return core->counts(); }).value_or(child_counts{});
}

inline supervisor_snapshot supervisor_base::snapshot(const snapshot_options& options) {
    auto answer = core_->call(
        [core = core_.get(), max = options.max_children] { return core->take_snapshot(max); });
    if (!answer) {
        return core_->empty_snapshot();
    }
    supervisor_snapshot out = std::move(answer->snapshot);
    if (!core_->on_own_thread()) {
        for (std::size_t i = 0; i < answer->trees.size(); ++i) {
            if (auto* tree = dynamic_cast<supervision_tree*>(answer->trees[i].get())) {
                out.children[i].supervisor.push_back(tree->tree_snapshot(options));
            }
        }
    }
    // The children held for this are let go here, on the caller's thread; a process may be
    // let go from any thread.
    return out;
}

inline result<process_id> supervisor_base::add_child(child_spec spec) {
    return core_->ask([core = core_.get(), spec = std::move(spec)]() mutable {
        return core->add_child(std::move(spec));
    });
}

inline result<void> supervisor_base::terminate_by_id(const std::string& id) {
    return core_->ask([core = core_.get(), id] { return core->terminate_by_id(id); });
}

inline result<void> supervisor_base::terminate_by_pid(process_id pid) {
    return core_->ask([core = core_.get(), pid] { return core->terminate_by_pid(pid); });
}

inline result<process_id> supervisor_base::restart_by_id(const std::string& id) {
    return core_->ask([core = core_.get(), id] { return core->restart_by_id(id); });
}

inline result<void> supervisor_base::delete_by_id(const std::string& id) {
    return core_->ask([core = core_.get(), id] { return core->delete_by_id(id); });
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
    if (options.name.empty()) {
        options.name = id;
    }
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
