// SPDX-License-Identifier: MIT
// The supervision tree seen from outside (issue 15): the log events of supervisors and of
// the registry, each with its level, fields and reason, through a capturing sink; snapshots
// of supervisors on an injected clock (restarts in the window, last exits, uptimes,
// states), nested trees (a supervisor in a supervisor, a registry and its buckets, a task
// supervisor), the max_children cap, the registry's snapshot, and a stress run that takes
// snapshots while children crash and buckets come and go (for ThreadSanitizer too).
#include <otpkv/registry.hpp>
#include <otpkv/snapshot.hpp>
#include <otpkv/supervisor.hpp>
#include <otpkv/task.hpp>

#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace otpkv;
using otpkv_test::children;
using otpkv_test::eventually;
using otpkv_test::exit_of;
using otpkv_test::journal;
using otpkv_test::pid_of;
using namespace std::chrono_literals;

namespace {

using fields = std::vector<std::pair<std::string, std::string>>;

// Keeps every event a logger passes on; must outlive what logs into it.
class capture {
  public:
    logger make(log_level level = log_level::debug) {
        return logger([this](const log_event& e) { add(e); }, level);
    }
    void add(const log_event& e) {
        const std::lock_guard lock(mutex_);
        events_.push_back(e);
    }
    std::vector<log_event> events() {
        const std::lock_guard lock(mutex_);
        return events_;
    }
    std::vector<std::string> whats() {
        std::vector<std::string> out;
        for (const log_event& e : events()) {
            out.push_back(e.what);
        }
        return out;
    }
    // Waits (bounded) until there are `n` events.
    bool wait_for(std::size_t n) {
        return eventually([&] {
            const std::lock_guard lock(mutex_);
            return events_.size() >= n;
        });
    }
    std::size_t size() {
        const std::lock_guard lock(mutex_);
        return events_.size();
    }

  private:
    std::mutex mutex_;
    std::vector<log_event> events_;
};

// Waits until the supervisor has handled the exit of child `id` (it no longer runs as
// `old`).
bool handled(detail::supervisor_base& sup, const std::string& id, process_id old) {
    return eventually([&] { return !sup.alive() || pid_of(sup, id) != old; });
}

const child_snapshot* child_of(const supervisor_snapshot& s, const std::string& id) {
    for (const child_snapshot& c : s.children) {
        if (c.id == id) {
            return &c;
        }
    }
    return nullptr;
}

// A task that runs until it is stopped.
child_spec idle_task(std::string id = {}) {
    child_spec s;
    s.id = std::move(id);
    s.start = [] {
        return std::shared_ptr<process>(task::start([](std::stop_token stop) {
            std::mutex m;
            std::condition_variable_any cv;
            std::unique_lock lock(m);
            cv.wait(lock, stop, [] { return false; });
        }));
    };
    return s;
}

} // namespace

// ---------------------------------------------------------------------------------------
// Log events
// ---------------------------------------------------------------------------------------

TEST_CASE("log: started, exited, crashed, restarted, gave up and stopped, exactly") {
    capture cap;
    journal log;
    children kids(log);
    manual_clock clock;
    auto sup = supervisor::start(
                   {kids.spec("A"), kids.spec("B", restart::transient)},
                   {.max_restarts = 1, .clock = clock.function(), .log = cap.make(), .name = "top"})
                   .value();
    const process_id a = pid_of(*sup, "A");
    const process_id b = pid_of(*sup, "B");
    REQUIRE(cap.wait_for(3));
    std::vector<log_event> got = cap.events();
    CHECK(cap.whats() ==
          std::vector<std::string>{"child_started", "child_started", "supervisor_started"});
    CHECK(got[0].level == log_level::debug);
    CHECK(got[0].pid == a);
    CHECK(got[0].fields == fields{{"supervisor", "top"}, {"child", "A"}});
    CHECK(got[0].reason.empty());
    CHECK(got[1].pid == b);
    CHECK(got[1].fields == fields{{"supervisor", "top"}, {"child", "B"}});
    CHECK(got[2].level == log_level::debug);
    CHECK(got[2].pid == sup->id());
    CHECK(got[2].fields == fields{{"supervisor", "top"}});

    // B (transient) ends normally: reported at info, not restarted.
    kids.control_of("B")->exit_with(exit_reason::normal());
    REQUIRE(handled(*sup, "B", b));
    REQUIRE(cap.wait_for(4));
    got = cap.events();
    CHECK(got[3].what == "child_exited");
    CHECK(got[3].level == log_level::info);
    CHECK(got[3].pid == b);
    CHECK(got[3].fields == fields{{"supervisor", "top"}, {"child", "B"}});
    CHECK(got[3].reason == "normal");

    // A crashes: error, then its restart at info with the new pid.
    kids.control_of("A")->exit_with(exit_reason::error("boom"));
    REQUIRE(handled(*sup, "A", a));
    const process_id a2 = pid_of(*sup, "A");
    REQUIRE(cap.wait_for(6));
    got = cap.events();
    CHECK(got[4].what == "child_crashed");
    CHECK(got[4].level == log_level::error);
    CHECK(got[4].pid == a);
    CHECK(got[4].fields == fields{{"supervisor", "top"}, {"child", "A"}});
    CHECK(got[4].reason == "{error, boom}");
    CHECK(got[5].what == "child_restarted");
    CHECK(got[5].level == log_level::info);
    CHECK(got[5].pid == a2);
    CHECK(got[5].fields == fields{{"supervisor", "top"}, {"child", "A"}});

    // A second crash in the window is one restart too many (max_restarts = 1).
    kids.control_of("A")->exit_with(exit_reason::error("again"));
    REQUIRE(exit_of(*sup) == exit_reason::shutdown());
    got = cap.events();
    REQUIRE(got.size() == 9);
    CHECK(got[6].what == "child_crashed");
    CHECK(got[6].reason == "{error, again}");
    CHECK(got[7].what == "supervisor_gave_up");
    CHECK(got[7].level == log_level::error);
    CHECK(got[7].pid == sup->id());
    CHECK(
        got[7].fields ==
        fields{{"supervisor", "top"}, {"child", "A"}, {"max_restarts", "1"}, {"max_seconds", "5"}});
    CHECK(got[7].reason == "{error, again}");
    CHECK(got[8].what == "supervisor_stopped");
    CHECK(got[8].level == log_level::debug);
    CHECK(got[8].reason == "shutdown");
    CHECK(
        format_log_line(got[7]).find(" error event=supervisor_gave_up pid=" + to_string(sup->id()) +
                                     " supervisor=top child=A max_restarts=1 max_seconds=5 "
                                     "reason=\"{error, again}\"") != std::string::npos);
}

TEST_CASE("log: a failed restart is restart_failed with its reason, then the retry's restart") {
    capture cap;
    journal log;
    children kids(log);
    auto sup = supervisor::start({kids.spec("A")},
                                 {.max_restarts = 10, .max_seconds = 1500ms, .log = cap.make()})
                   .value();
    const process_id a = pid_of(*sup, "A");
    REQUIRE(cap.wait_for(2));
    kids.control_of("A")->fail_starts = 1;
    kids.control_of("A")->exit_with(exit_reason::error("boom"));
    REQUIRE(eventually([&] {
        const process_id now = pid_of(*sup, "A");
        return now && now != a;
    }));
    REQUIRE(cap.wait_for(5));
    const std::vector<log_event> got = cap.events();
    REQUIRE(got.size() == 5);
    const std::string name = to_string(sup->id()); // no name given: the pid's text
    CHECK(got[1].fields == fields{{"supervisor", name}});
    CHECK(got[2].what == "child_crashed");
    CHECK(got[3].what == "restart_failed");
    CHECK(got[3].level == log_level::error);
    CHECK(got[3].fields == fields{{"supervisor", name}, {"child", "A"}});
    CHECK(got[3].reason == "{error, cannot start A}");
    CHECK(got[4].what == "child_restarted");
    CHECK(got[4].pid == pid_of(*sup, "A"));
    sup->stop();
    // (The intensity given in ms shows as seconds with a fraction when it gives up.)
    CHECK(detail::seconds_text(1500ms) == "1.5");
    CHECK(detail::seconds_text(250ms) == "0.25");
    CHECK(detail::seconds_text(60s) == "60");
}

TEST_CASE("log: a child that does not stop in time is child_crashed with reason killed") {
    capture cap;
    journal log;
    children kids(log);
    kids.control_of("S")->ignore_stop = true;
    auto sup = supervisor::start({kids.spec("S", restart::permanent, 30ms)},
                                 {.log = cap.make(log_level::info)})
                   .value();
    const process_id s = pid_of(*sup, "S");
    REQUIRE(sup->terminate_child("S"));
    REQUIRE(cap.wait_for(1));
    const std::vector<log_event> got = cap.events();
    REQUIRE(got.size() == 1);
    CHECK(got[0].what == "child_crashed");
    CHECK(got[0].pid == s);
    CHECK(got[0].reason == "killed");
    CHECK(kids.release("S", 1));
}

TEST_CASE("log: a dynamic supervisor names children by pid; their normal ends are debug") {
    capture cap;
    auto dyn = dynamic_supervisor::start({.log = cap.make(), .name = "dyn"});
    REQUIRE(cap.wait_for(1));
    CHECK(cap.whats() == std::vector<std::string>{"supervisor_started"});
    const process_id t = dyn->start_child(idle_task()).value();
    REQUIRE(dyn->terminate_child(t)); // a stop asked for is no event
    child_spec quick;
    quick.restart = restart::temporary;
    quick.start = [] { return std::shared_ptr<process>(task::start([] {})); };
    const process_id q = dyn->start_child(quick).value();
    REQUIRE(eventually([&] { return dyn->count_children().specs == 0; }));
    child_spec crash;
    crash.restart = restart::temporary;
    crash.start = [] {
        return std::shared_ptr<process>(task::start([] { throw std::runtime_error("bad"); }));
    };
    const process_id c = dyn->start_child(crash).value();
    REQUIRE(cap.wait_for(6));
    const std::vector<log_event> got = cap.events();
    REQUIRE(got.size() == 6);
    CHECK(got[1].what == "child_started");
    CHECK(got[1].fields == fields{{"supervisor", "dyn"}, {"child", to_string(t)}});
    CHECK(got[2].what == "child_started");
    CHECK(got[2].pid == q);
    CHECK(got[3].what == "child_exited");
    CHECK(got[3].level == log_level::debug);
    CHECK(got[3].fields == fields{{"supervisor", "dyn"}, {"child", to_string(q)}});
    CHECK(got[3].reason == "normal");
    CHECK(got[4].what == "child_started");
    CHECK(got[5].what == "child_crashed");
    CHECK(got[5].level == log_level::error);
    CHECK(got[5].fields == fields{{"supervisor", "dyn"}, {"child", to_string(c)}});
    CHECK(got[5].reason == "{error, bad}");
    dyn->stop(); // a temporary's crash restarts nothing: no more events but the stop's
    CHECK(cap.whats().back() == "supervisor_stopped");
    CHECK(cap.size() == 7);
}

TEST_CASE("log: nothing reaches a sink below its level, and a default logger has none") {
    capture cap;
    journal log;
    children kids(log);
    auto sup =
        supervisor::start({kids.spec("A")}, {.log = cap.make(log_level::error), .name = "quiet"})
            .value();
    const process_id a = pid_of(*sup, "A");
    kids.control_of("A")->exit_with(exit_reason::error("boom"));
    REQUIRE(handled(*sup, "A", a));
    sup->stop();
    CHECK(cap.whats() == std::vector<std::string>{"child_crashed"});

    CHECK_FALSE(logger{}.enabled(log_level::error));
    CHECK_FALSE(logger(log_sink{}, log_level::debug).enabled(log_level::error));
    auto plain = supervisor::start({kids.spec("B")}).value(); // default options: no sink
    const process_id b = pid_of(*plain, "B");
    kids.control_of("B")->exit_with(exit_reason::error("boom"));
    CHECK(handled(*plain, "B", b));
    CHECK(cap.size() == 1);
}

TEST_CASE("log: the registry's buckets log under `buckets`; refused creates are paced") {
    capture cap;
    manual_clock clock;
    auto reg = registry::start(
        {.max_buckets = 2, .log = cap.make(log_level::debug), .clock = clock.function()});
    REQUIRE(reg->create("a"));
    REQUIRE(reg->create("b"));
    const auto a = reg->lookup("a");
    a->stop(); // a bucket stopped normally: debug
    REQUIRE(reg->create("a2"));
    REQUIRE(cap.wait_for(5));
    std::vector<log_event> got = cap.events();
    REQUIRE(got.size() == 5);
    CHECK(got[0].what == "supervisor_started");
    CHECK(got[0].fields == fields{{"supervisor", "buckets"}});
    CHECK(got[1].what == "child_started");
    CHECK(got[1].fields == fields{{"supervisor", "buckets"}, {"child", to_string(a->id())}});
    CHECK(got[3].what == "child_exited");
    CHECK(got[3].level == log_level::debug);
    CHECK(got[3].reason == "shutdown");
    CHECK(got[4].what == "child_started");

    // The first refusal is reported at once; the rest of a flood once a second.
    for (int i = 0; i < 5; ++i) {
        CHECK(reg->create("c").error().code == errc::max_children);
    }
    got = cap.events();
    REQUIRE(got.size() == 6);
    CHECK(got[5].what == "limit_hit");
    CHECK(got[5].level == log_level::warning);
    CHECK(got[5].pid == reg->id());
    CHECK(got[5].fields == fields{{"limit", "max_buckets"}, {"max_buckets", "2"}, {"count", "1"}});
    clock.advance(999ms);
    CHECK_FALSE(reg->create("c"));
    CHECK(cap.size() == 6);
    clock.advance(1ms);
    CHECK_FALSE(reg->create("c"));
    got = cap.events();
    REQUIRE(got.size() == 7);
    CHECK(got[6].fields == fields{{"limit", "max_buckets"}, {"max_buckets", "2"}, {"count", "6"}});
    // The end of a flood is reported when the registry stops.
    CHECK_FALSE(reg->create("c"));
    CHECK_FALSE(reg->create("d"));
    CHECK(cap.size() == 7);
    reg->stop();
    got = cap.events();
    const auto limit = std::find_if(got.begin() + 7, got.end(),
                                    [](const log_event& e) { return e.what == "limit_hit"; });
    REQUIRE(limit != got.end());
    CHECK(limit->fields == fields{{"limit", "max_buckets"}, {"max_buckets", "2"}, {"count", "2"}});
    // The buckets the stop terminated are not reported one by one.
    CHECK(std::count_if(got.begin() + 7, got.end(), [](const log_event& e) {
              return e.what == "child_exited" || e.what == "child_crashed";
          }) == 0);
}

TEST_CASE("log: a registry at info level says nothing of its buckets' normal lives") {
    capture cap;
    auto reg = registry::start({.max_buckets = 1, .log = cap.make(log_level::info)});
    for (int i = 0; i < 20; ++i) {
        auto b = reg->create("x").value();
        b->stop();
    }
    reg->sync();
    CHECK(cap.size() == 0);
    REQUIRE(reg->create("y"));
    CHECK_FALSE(reg->create("z"));
    CHECK(cap.whats() == std::vector<std::string>{"limit_hit"});
    reg->stop();
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

TEST_CASE("snapshot: settings, states, restarts in the window, last exits and uptimes") {
    journal log;
    children kids(log);
    manual_clock clock;
    auto sup = supervisor::start({kids.spec("A"), kids.spec("B", restart::transient),
                                  kids.spec("T", restart::temporary)},
                                 {.strategy = strategy::rest_for_one,
                                  .max_restarts = 3,
                                  .max_seconds = 5s,
                                  .clock = clock.function(),
                                  .name = "root"})
                   .value();
    supervisor_snapshot s = sup->snapshot();
    CHECK(s.name == "root");
    CHECK(s.pid == sup->id());
    CHECK_FALSE(s.dynamic);
    CHECK(s.strategy == strategy::rest_for_one);
    CHECK(s.max_restarts == 3);
    CHECK(s.max_seconds == 5000ms);
    CHECK(s.restarts == 0);
    CHECK(s.child_count == 3);
    REQUIRE(s.children.size() == 3);
    CHECK(s.children[0].id == "A");
    CHECK(s.children[0].pid == pid_of(*sup, "A"));
    CHECK(s.children[0].type == child_type::worker);
    CHECK(s.children[0].restart == restart::permanent);
    CHECK(s.children[1].restart == restart::transient);
    CHECK(s.children[2].restart == restart::temporary);
    for (const child_snapshot& c : s.children) {
        CHECK(c.state == child_state::running);
        CHECK(c.restarts == 0);
        CHECK(c.last_exit.empty());
        CHECK(c.uptime == 0ms);
        CHECK(c.supervisor.empty());
    }

    clock.advance(2s);
    s = sup->snapshot();
    CHECK(s.children[1].uptime == 2000ms);

    // B crashes at 2 s: under rest_for_one T (temporary) goes for good, B restarts.
    const process_id b = pid_of(*sup, "B");
    kids.control_of("B")->exit_with(exit_reason::error("boom"));
    REQUIRE(handled(*sup, "B", b));
    clock.advance(1s);
    s = sup->snapshot();
    CHECK(s.restarts == 1);
    CHECK(s.child_count == 2);
    REQUIRE(s.children.size() == 2);
    CHECK(s.children[0].uptime == 3000ms);
    CHECK(s.children[0].restarts == 0);
    CHECK(s.children[1].restarts == 1);
    CHECK(s.children[1].last_exit == "{error, boom}");
    CHECK(s.children[1].uptime == 1000ms);
    CHECK(s.children[1].state == child_state::running);

    // A crashes at 3 s: rest_for_one restarts A and B; one restart, A's.
    const process_id a = pid_of(*sup, "A");
    kids.control_of("A")->exit_with(exit_reason::error("bang"));
    REQUIRE(handled(*sup, "A", a));
    s = sup->snapshot();
    CHECK(s.restarts == 2);
    CHECK(s.children[0].restarts == 1);
    CHECK(s.children[0].last_exit == "{error, bang}");
    CHECK(s.children[1].restarts == 1);
    CHECK(s.children[1].last_exit == "shutdown"); // stopped by its supervisor
    CHECK(s.children[1].uptime == 0ms);

    // B's restart (at 2 s) counts up to 7 s inclusive, and not a nanosecond after.
    clock.advance(4s);
    s = sup->snapshot();
    CHECK(s.restarts == 2);
    CHECK(s.children[1].restarts == 1);
    clock.advance(std::chrono::nanoseconds(1));
    s = sup->snapshot();
    CHECK(s.restarts == 1);
    CHECK(s.children[0].restarts == 1);
    CHECK(s.children[1].restarts == 0);
    clock.advance(1s);
    s = sup->snapshot();
    CHECK(s.restarts == 0);
    CHECK(s.children[0].restarts == 0);

    // B ends normally: transient, kept stopped.
    const process_id b2 = pid_of(*sup, "B");
    kids.control_of("B")->exit_with(exit_reason::normal());
    REQUIRE(handled(*sup, "B", b2));
    s = sup->snapshot();
    CHECK(s.children[1].state == child_state::stopped);
    CHECK(s.children[1].pid == process_id{});
    CHECK(s.children[1].last_exit == "normal");
    CHECK(s.children[1].uptime == 0ms);
    REQUIRE(sup->terminate_child("A"));
    s = sup->snapshot();
    CHECK(s.children[0].state == child_state::stopped);
    CHECK(s.children[0].last_exit == "shutdown");

    // After it exits: name, pid and settings only.
    sup->stop();
    s = sup->snapshot();
    CHECK(s.name == "root");
    CHECK(s.pid == sup->id());
    CHECK(s.max_restarts == 3);
    CHECK(s.child_count == 0);
    CHECK(s.children.empty());
}

TEST_CASE("snapshot: giving up, and a child waiting for its restart is `restarting`") {
    journal log;
    children kids(log);
    manual_clock clock;
    std::atomic<supervisor*> self{nullptr};
    std::optional<supervisor_snapshot> seen; // taken on the supervisor's own thread
    child_spec a = kids.spec("A");
    a.start = [inner = a.start, &self, &seen, &kids] {
        if (supervisor* s = self.load();
            s != nullptr && kids.control_of("A")->fail_starts == 0 && !seen) {
            seen = s->snapshot(); // the retry of a failed restart: answered at once
        }
        return inner();
    };
    auto sup = supervisor::start({std::move(a), supervisor::child("sub", {kids.spec("x")})},
                                 {.max_restarts = 2, .clock = clock.function()})
                   .value();
    self = sup.get();
    const process_id pa = pid_of(*sup, "A");
    kids.control_of("A")->fail_starts = 1;
    kids.control_of("A")->exit_with(exit_reason::error("boom"));
    REQUIRE(eventually([&] {
        const process_id now = pid_of(*sup, "A"); // one look: running again, as another
        return now && now != pa;
    }));
    REQUIRE(seen);
    const child_snapshot* sa = child_of(*seen, "A");
    REQUIRE(sa != nullptr);
    CHECK(sa->state == child_state::restarting);
    CHECK(sa->pid == process_id{});
    CHECK(sa->last_exit == "{error, cannot start A}");
    CHECK(sa->restarts == 2); // the restart that failed and its retry
    CHECK(seen->restarts == 2);
    // From the supervisor's own thread the nested trees are left out.
    REQUIRE(child_of(*seen, "sub") != nullptr);
    CHECK(child_of(*seen, "sub")->supervisor.empty());
    const supervisor_snapshot later = sup->snapshot();
    REQUIRE(child_of(later, "sub")->supervisor.size() == 1);
    CHECK(child_of(later, "sub")->supervisor[0].name == "sub");

    // A third restart in the window: it gives up, and shows no children any more.
    kids.control_of("A")->exit_with(exit_reason::error("boom"));
    REQUIRE(exit_of(*sup) == exit_reason::shutdown());
    const supervisor_snapshot after = sup->snapshot();
    CHECK(after.children.empty());
    CHECK(after.child_count == 0);
}

TEST_CASE("snapshot: nested trees: a supervisor, a registry with buckets, a task supervisor") {
    journal log;
    children kids(log);
    std::shared_ptr<registry> reg;
    std::shared_ptr<task_supervisor> tasks;
    child_spec reg_spec{"registry",
                        [&reg] {
                            reg = registry::start();
                            return std::shared_ptr<process>(reg);
                        },
                        restart::permanent, infinity, child_type::supervisor};
    child_spec task_spec{"tasks",
                         [&tasks] {
                             tasks = task_supervisor::start({.name = "tasks"});
                             return std::shared_ptr<process>(tasks);
                         },
                         restart::permanent, infinity, child_type::supervisor};
    auto root = supervisor::start({kids.spec("w"),
                                   supervisor::child("sub", {kids.spec("x"), kids.spec("y")},
                                                     {.strategy = strategy::one_for_all}),
                                   reg_spec, task_spec},
                                  {.strategy = strategy::rest_for_one, .name = "root"})
                    .value();
    auto b1 = reg->create("one").value();
    auto b2 = reg->create("two").value();
    const process_id t1 = tasks
                              ->start_child([](std::stop_token stop) {
                                  std::mutex m;
                                  std::condition_variable_any cv;
                                  std::unique_lock lock(m);
                                  cv.wait(lock, stop, [] { return false; });
                              })
                              .value();

    const supervisor_snapshot s = root->snapshot();
    CHECK(s.name == "root");
    CHECK(s.child_count == 4);
    REQUIRE(s.children.size() == 4);
    CHECK(s.children[0].supervisor.empty()); // a worker
    REQUIRE(s.children[1].supervisor.size() == 1);
    const supervisor_snapshot& sub = s.children[1].supervisor[0];
    CHECK(s.children[1].type == child_type::supervisor);
    CHECK(sub.name == "sub"); // a nested supervisor is named after its child id
    CHECK(sub.strategy == strategy::one_for_all);
    CHECK(sub.pid == s.children[1].pid);
    REQUIRE(sub.children.size() == 2);
    CHECK(sub.children[0].id == "x");
    CHECK(sub.children[1].id == "y");

    REQUIRE(s.children[2].supervisor.size() == 1);
    const supervisor_snapshot& buckets = s.children[2].supervisor[0];
    CHECK(s.children[2].pid == reg->id());
    CHECK(buckets.name == "buckets");
    CHECK(buckets.dynamic);
    CHECK(buckets.pid == reg->bucket_supervisor().id());
    CHECK(buckets.child_count == 2);
    REQUIRE(buckets.children.size() == 2);
    CHECK(buckets.children[0].id == to_string(b1->id()));
    CHECK(buckets.children[0].pid == b1->id());
    CHECK(buckets.children[1].pid == b2->id());
    CHECK(buckets.children[0].restart == restart::temporary);
    CHECK(buckets.children[0].supervisor.empty());

    REQUIRE(s.children[3].supervisor.size() == 1);
    const supervisor_snapshot& ts = s.children[3].supervisor[0];
    CHECK(ts.name == "tasks");
    CHECK(ts.dynamic);
    REQUIRE(ts.children.size() == 1);
    CHECK(ts.children[0].pid == t1);
    CHECK(ts.children[0].id == to_string(t1));

    // A registry asked directly for its tree gives the same supervisor.
    CHECK(reg->tree_snapshot({}).pid == buckets.pid);
    supervision_tree& as_tree = *root;
    CHECK(as_tree.tree_snapshot({}).child_count == 4);
    root->stop();
}

TEST_CASE("snapshot: a dynamic supervisor lists max_children, counts them all") {
    auto dyn = dynamic_supervisor::start();
    std::vector<process_id> pids;
    for (int i = 0; i < 150; ++i) {
        pids.push_back(dyn->start_child(idle_task()).value());
    }
    supervisor_snapshot s = dyn->snapshot({.max_children = 100});
    CHECK(s.child_count == 150);
    REQUIRE(s.children.size() == 100);
    for (std::size_t i = 0; i < 100; ++i) {
        CHECK(s.children[i].pid == pids[i]);
    }
    s = dyn->snapshot({.max_children = 0});
    CHECK(s.child_count == 150);
    CHECK(s.children.empty());
    s = dyn->snapshot({.max_children = 1000});
    CHECK(s.children.size() == 150);
    dyn->stop();

    auto reg = registry::start();
    for (int i = 0; i < 40; ++i) {
        REQUIRE(reg->create("b" + std::to_string(i)));
    }
    const supervisor_snapshot t = reg->tree_snapshot({.max_children = 7});
    CHECK(t.child_count == 40);
    CHECK(t.children.size() == 7);
    reg->stop();
}

TEST_CASE("registry snapshot: keys, bytes and the largest buckets after writes") {
    auto reg = registry::start({.max_buckets = 100});
    registry_snapshot s = reg->snapshot();
    CHECK(s.buckets == 0);
    CHECK(s.max_buckets == 100);
    CHECK(s.keys == 0);
    CHECK(s.bytes == 0);
    CHECK(s.largest.empty());

    auto a = reg->create("a").value();
    auto b = reg->create("b").value();
    auto c = reg->create("c").value();
    REQUIRE(reg->create("empty"));
    a->put("k1", "v1");                 // 4
    a->put("k2", "v2");                 // 4
    a->put("k1", std::string(40, 'x')); // k1 now 2 + 40 (a node)
    b->put("key", "value");             // 8
    b->put("gone", "soon");             // 8, then deleted
    CHECK(b->erase("gone"));
    c->put("x", "1");   // 2
    c->put("y", "22");  // 3
    c->put("z", "333"); // 4
    s = reg->snapshot(2);
    CHECK(s.buckets == 4);
    CHECK(s.keys == 2 + 1 + 3);
    CHECK(s.bytes == 42 + 4 + 8 + 9);
    REQUIRE(s.largest.size() == 2);
    CHECK(s.largest[0].name == "c");
    CHECK(s.largest[0].keys == 3);
    CHECK(s.largest[0].bytes == 9);
    CHECK(s.largest[1].name == "a");
    CHECK(s.largest[1].keys == 2);
    CHECK(s.largest[1].bytes == 46);

    s = reg->snapshot();
    REQUIRE(s.largest.size() == 4);
    CHECK(s.largest[2].name == "b");
    CHECK(s.largest[3].name == "empty"); // ties and zeros: by name
    CHECK(s.largest[3].keys == 0);
    CHECK(reg->snapshot(0).largest.empty());

    c->stop();
    reg->sync();
    s = reg->snapshot();
    CHECK(s.buckets == 3);
    CHECK(s.keys == 3);
    CHECK(s.bytes == 46 + 8);
    reg->stop();
}

TEST_CASE("stress: snapshots stay consistent while children crash and buckets come and go") {
    journal log;
    children kids(log);
    std::shared_ptr<registry> reg;
    std::mutex reg_mutex;
    child_spec reg_spec{"registry",
                        [&] {
                            auto r = registry::start({.max_buckets = 64});
                            const std::lock_guard lock(reg_mutex);
                            reg = r;
                            return std::shared_ptr<process>(r);
                        },
                        restart::permanent, infinity, child_type::supervisor};
    const std::vector<std::string> workers{"w0", "w1", "w2", "w3"};
    auto root =
        supervisor::start({kids.spec("w0"), kids.spec("w1"),
                           supervisor::child("sub", {kids.spec("w2"), kids.spec("w3")},
                                             {.max_restarts = 1'000'000, .max_seconds = 3600s}),
                           reg_spec},
                          {.max_restarts = 1'000'000, .max_seconds = 3600s, .name = "root"})
            .value();
    std::atomic<bool> done{false};
    std::atomic<int> crashes{0};
    std::thread crasher([&] {
        std::mt19937 rng(7);
        while (!done) {
            kids.control_of(workers[rng() % workers.size()])->exit_with(exit_reason::error("x"));
            ++crashes;
            std::this_thread::sleep_for(500us);
        }
    });
    std::thread churn([&] {
        std::mt19937 rng(11);
        std::shared_ptr<registry> r;
        {
            const std::lock_guard lock(reg_mutex);
            r = reg;
        }
        while (!done) {
            const std::string name = "b" + std::to_string(rng() % 80);
            if (auto made = r->create(name)) {
                (*made)->put("k" + std::to_string(rng() % 10), "v");
                if (rng() % 3 == 0) {
                    (*made)->stop();
                }
            }
        }
    });
    const auto check_tree = [](const supervisor_snapshot& s, auto& self) -> void {
        CHECK(s.child_count >= s.children.size());
        std::size_t sum = 0;
        for (const child_snapshot& c : s.children) {
            sum += c.restarts;
            CHECK((c.state == child_state::running || c.state == child_state::restarting ||
                   c.state == child_state::stopped));
            CHECK((c.state == child_state::running) == static_cast<bool>(c.pid));
            CHECK(c.uptime >= 0ms);
            CHECK(c.supervisor.size() <= 1);
            for (const supervisor_snapshot& below : c.supervisor) {
                self(below, self);
            }
        }
        if (!s.dynamic) {
            CHECK(s.restarts == sum); // permanent children only: none was dropped
            CHECK(s.child_count == s.children.size());
        } else {
            CHECK(s.restarts == 0); // buckets are temporary
        }
    };
    int taken = 0;
    const auto until = std::chrono::steady_clock::now() + 2s;
    while (std::chrono::steady_clock::now() < until || taken < 50) {
        const supervisor_snapshot s = root->snapshot({.max_children = 16});
        REQUIRE(s.children.size() == 4);
        check_tree(s, check_tree);
        CHECK(s.children[2].supervisor.size() == 1);
        CHECK(s.children[3].supervisor.size() == 1);
        registry_snapshot rs;
        {
            const std::lock_guard lock(reg_mutex);
            rs = reg->snapshot(5);
        }
        CHECK(rs.buckets <= 64);
        CHECK(rs.largest.size() <= std::min<std::size_t>(5, rs.buckets));
        std::size_t listed_keys = 0;
        for (std::size_t i = 0; i < rs.largest.size(); ++i) {
            listed_keys += rs.largest[i].keys;
            // Keys "k0".."k9" with "v": keys and bytes are read one after the other, so
            // only their bounds are certain.
            CHECK(rs.largest[i].keys <= 10);
            CHECK(rs.largest[i].bytes <= 30);
            if (i > 0) {
                CHECK(rs.largest[i - 1].keys >= rs.largest[i].keys);
            }
        }
        CHECK(listed_keys <= rs.keys);
        ++taken;
    }
    done = true;
    crasher.join();
    churn.join();
    MESSAGE(taken << " snapshots during " << crashes.load() << " crashes");
    const supervisor_snapshot last = root->snapshot();
    CHECK(last.restarts > 0);
    root->stop();
}
