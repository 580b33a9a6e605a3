// SPDX-License-Identifier: MIT
// Supervisors against OTP's rules: strategies x restart types x exit reasons, restart
// intensity on an injected clock, shutdown order and timeouts, the management calls with
// their error cases, nesting, dynamic supervisors, and a stress run for ThreadSanitizer.
#include <otpkv/supervisor.hpp>

#include "support.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace otpkv;
using otpkv_test::children;
using otpkv_test::eventually;
using otpkv_test::exit_of;
using otpkv_test::journal;
using otpkv_test::pid_of;
using namespace std::chrono_literals;
using events = std::vector<std::string>;

namespace {

// A supervisor over A and a child "stubborn" that ignores its stop, with that shutdown.
std::shared_ptr<supervisor> with_stubborn_child(children& kids, timeout shutdown) {
    kids.control_of("stubborn")->ignore_stop = true;
    return supervisor::start({kids.spec("A"), kids.spec("stubborn", restart::permanent, shutdown)})
        .value();
}

const char* name(strategy s) {
    return s == strategy::one_for_one   ? "one_for_one"
           : s == strategy::one_for_all ? "one_for_all"
                                        : "rest_for_one";
}
const char* name(restart r) {
    return r == restart::permanent   ? "permanent"
           : r == restart::transient ? "transient"
                                     : "temporary";
}

// Waits until child `id` no longer runs as `old` (restarted, stopped or gone), then returns
// after the supervisor has handled that exit (a later call is answered after it).
bool exit_handled(detail::supervisor_base& sup, const std::string& id, process_id old) {
    return eventually([&] { return pid_of(sup, id) != old; });
}

} // namespace

TEST_CASE("matrix: strategy x restart type x exit reason, with stop and start order") {
    for (const strategy s :
         {strategy::one_for_one, strategy::one_for_all, strategy::rest_for_one}) {
        for (const restart r : {restart::permanent, restart::transient, restart::temporary}) {
            for (const exit_reason& why :
                 {exit_reason::normal(), exit_reason::shutdown(), exit_reason::error("boom")}) {
                CAPTURE(name(s));
                CAPTURE(name(r));
                CAPTURE(to_string(why));
                journal log;
                children kids(log);
                auto sup = supervisor::start({kids.spec("A"), kids.spec("B", r), kids.spec("C")},
                                             {.strategy = s})
                               .value();
                CHECK(log.take() == events{"start A", "start B", "start C"});
                const process_id a = pid_of(*sup, "A");
                const process_id b = pid_of(*sup, "B");
                const process_id c = pid_of(*sup, "C");

                kids.control_of("B")->exit_with(why); // B exits, on its own thread
                REQUIRE(exit_handled(*sup, "B", b));

                const bool restarted =
                    r == restart::permanent || (r == restart::transient && why.abnormal());
                events expected;
                if (restarted) {
                    expected = s == strategy::one_for_one ? events{"start B"}
                               : s == strategy::one_for_all
                                   ? events{"stop C", "stop A", "start A", "start B", "start C"}
                                   : events{"stop C", "start B", "start C"};
                }
                CHECK(log.take() == expected);

                const auto list = sup->which_children();
                const bool b_kept = r != restart::temporary;
                REQUIRE(list.size() == (b_kept ? 3U : 2U));
                CHECK(list.front().id == "A");
                CHECK(list.back().id == "C");
                const bool a_new = restarted && s == strategy::one_for_all;
                const bool c_new = restarted && s != strategy::one_for_one;
                CHECK((pid_of(*sup, "A") != a) == a_new);
                CHECK((pid_of(*sup, "C") != c) == c_new);
                CHECK(pid_of(*sup, "A"));
                CHECK(pid_of(*sup, "C"));
                if (b_kept) {
                    CHECK(list[1].id == "B");
                    CHECK(static_cast<bool>(list[1].pid) == restarted);
                }
                CHECK(sup->count_children() ==
                      child_counts{b_kept ? 3U : 2U, restarted ? 3U : 2U, 0, b_kept ? 3U : 2U});

                CHECK(sup->stop() == exit_reason::shutdown());
                const events stops =
                    restarted ? events{"stop C", "stop B", "stop A"} : events{"stop C", "stop A"};
                CHECK(log.take() == stops);
            }
        }
    }
}

TEST_CASE("one_for_all and rest_for_one drop temporary siblings they terminate") {
    for (const strategy s : {strategy::one_for_all, strategy::rest_for_one}) {
        CAPTURE(name(s));
        journal log;
        children kids(log);
        auto sup = supervisor::start({kids.spec("A", restart::temporary), kids.spec("B"),
                                      kids.spec("C", restart::temporary)},
                                     {.strategy = s})
                       .value();
        log.take();
        const process_id b = pid_of(*sup, "B");
        kids.control_of("B")->exit_with(exit_reason::error("boom"));
        REQUIRE(exit_handled(*sup, "B", b));
        std::vector<std::string> ids;
        for (const auto& c : sup->which_children()) {
            ids.push_back(c.id);
        }
        if (s == strategy::one_for_all) {
            CHECK(log.take() == events{"stop C", "stop A", "start B"});
            CHECK(ids == std::vector<std::string>{"B"});
        } else {
            CHECK(log.take() == events{"stop C", "start B"});
            CHECK(ids == std::vector<std::string>{"A", "B"});
        }
    }
}

// ---------------------------------------------------------------------------------------
// Restart intensity, on a manual clock
// ---------------------------------------------------------------------------------------

namespace {

struct intensity_rig {
    journal log;
    children kids{log};
    manual_clock clock;
    std::shared_ptr<supervisor> sup;
    std::atomic<int> sup_exits{0};
    exit_reason sup_reason;
    monitor_handle watch;

    explicit intensity_rig(int max_restarts, std::chrono::milliseconds max_seconds = 5s) {
        sup = supervisor::start({kids.spec("A"), kids.spec("B")}, {.max_restarts = max_restarts,
                                                                   .max_seconds = max_seconds,
                                                                   .clock = clock.function()})
                  .value();
        watch = sup->monitor([this](const exit_reason& r) {
            sup_reason = r;
            ++sup_exits;
        });
    }

    // Three restarts of B, at 0 s, 1 s and 2 s on the clock; the supervisor stays up.
    void three_restarts_in_two_seconds() {
        CHECK(crash_b());
        clock.advance(1s);
        CHECK(crash_b());
        clock.advance(1s);
        CHECK(crash_b());
    }

    // Crashes B and waits until the supervisor has dealt with it; true if it is still up.
    bool crash_b() {
        const process_id b = pid_of(*sup, "B");
        kids.control_of("B")->exit_with(exit_reason::error("boom"));
        return eventually([&] { return !sup->alive() || pid_of(*sup, "B") != b; }) && sup->alive();
    }
};

} // namespace

TEST_CASE("intensity: with 3 in 5 s, the 4th restart inside the window escalates") {
    intensity_rig rig(3);
    rig.three_restarts_in_two_seconds();
    rig.clock.advance(3s); // now = first restart + 5 s: it still counts (OTP: Now =< Then + Period)
    CHECK_FALSE(rig.crash_b());
    REQUIRE(exit_of(*rig.sup));
    CHECK(rig.sup_reason == exit_reason::shutdown());
    CHECK(rig.sup_exits == 1);
    // All children were terminated, in reverse order, before the supervisor exited.
    const events log = rig.log.take();
    REQUIRE(log.size() >= 2);
    CHECK(events(log.end() - 1, log.end()) == events{"stop A"});
    CHECK(rig.sup->which_children().empty());
    CHECK(rig.kids.started - rig.kids.finished == 0);
}

TEST_CASE("intensity: just past the window the oldest restart no longer counts") {
    intensity_rig rig(3);
    rig.three_restarts_in_two_seconds();
    rig.clock.advance(3s + 1ms);
    CHECK(rig.crash_b());
    CHECK(rig.sup_exits == 0);
}

TEST_CASE("intensity: crashes spaced wider than the window never escalate") {
    intensity_rig rig(3);
    for (int i = 0; i < 12; ++i) {
        CHECK(rig.crash_b());
        rig.clock.advance(2s);
    }
    CHECK(rig.sup->alive());
    CHECK(rig.kids.started == 2 + 12);
}

TEST_CASE("intensity: max_restarts = 0 gives up on the first crash") {
    intensity_rig rig(0);
    CHECK_FALSE(rig.crash_b());
    CHECK(exit_of(*rig.sup) == exit_reason::shutdown());
}

TEST_CASE("intensity: exits that restart nothing never count") {
    journal log;
    children kids(log);
    manual_clock clock;
    auto sup =
        supervisor::start({kids.spec("P")}, {.max_restarts = 1, .clock = clock.function()}).value();
    for (int i = 0; i < 10; ++i) {
        const std::string id = "T" + std::to_string(i);
        REQUIRE(sup->start_child(kids.spec(id, restart::temporary)));
        const process_id t = pid_of(*sup, id);
        kids.control_of(id)->exit_with(exit_reason::error("boom"));
        REQUIRE(exit_handled(*sup, id, t));
        const std::string tr = "R" + std::to_string(i);
        REQUIRE(sup->start_child(kids.spec(tr, restart::transient)));
        const process_id u = pid_of(*sup, tr);
        kids.control_of(tr)->exit_with(exit_reason::normal());
        REQUIRE(exit_handled(*sup, tr, u));
    }
    // One real restart is within max_restarts = 1.
    const process_id p = pid_of(*sup, "P");
    kids.control_of("P")->exit_with(exit_reason::error("boom"));
    REQUIRE(exit_handled(*sup, "P", p));
    CHECK(sup->alive());
    CHECK(pid_of(*sup, "P"));
}

TEST_CASE("intensity: an escalating child supervisor is an exit its parent sees") {
    journal log;
    children kids(log);
    manual_clock clock;
    auto inner_spec = supervisor::child("inner", {kids.spec("W")},
                                        {.max_restarts = 0, .clock = clock.function()});
    auto outer = supervisor::start({inner_spec}, {.clock = clock.function()}).value();
    const process_id inner_before = pid_of(*outer, "inner");
    log.take();
    kids.control_of("W")->exit_with(exit_reason::error("boom"));
    // The inner supervisor gives up (shutdown); the outer one restarts it (permanent).
    REQUIRE(eventually([&] {
        const process_id now = pid_of(*outer, "inner");
        return now && now != inner_before;
    }));
    CHECK(log.take() == events{"start W"});
    CHECK(outer->count_children() == child_counts{1, 1, 1, 0});
}

TEST_CASE("intensity: the escalating supervisor's own exit reason is shutdown") {
    journal log;
    children kids(log);
    auto inner = supervisor::start({kids.spec("W")}, {.max_restarts = 0}).value();
    kids.control_of("W")->exit_with(exit_reason::error("boom"));
    CHECK(exit_of(*inner) == exit_reason::shutdown());
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

TEST_CASE("shutdown: children stop in reverse start order, including added ones") {
    journal log;
    children kids(log);
    auto sup = supervisor::start({kids.spec("A"), kids.spec("B")}).value();
    REQUIRE(sup->start_child(kids.spec("C")));
    CHECK(log.take() == events{"start A", "start B", "start C"});
    CHECK(sup->stop() == exit_reason::shutdown());
    CHECK(log.take() == events{"stop C", "stop B", "stop A"});
    CHECK_FALSE(sup->alive());
    CHECK(sup->which_children().empty());
    CHECK(sup->count_children() == child_counts{});
    CHECK(sup->start_child(kids.spec("D")).error().code == errc::shutting_down);
}

TEST_CASE("shutdown: a child that ignores stop is killed after its own timeout") {
    journal log;
    children kids(log);
    auto sup = with_stubborn_child(kids, 100ms);
    const auto stubborn = sup->which_children()[1].child;
    log.take();
    const auto before = std::chrono::steady_clock::now();
    CHECK(sup->stop() == exit_reason::shutdown());
    CHECK(std::chrono::steady_clock::now() - before >= 100ms); // it was given its timeout
    CHECK(stubborn->exited() == exit_reason::killed());
    // Abandoned, not waited for: it still runs (A alone has finished) until released.
    CHECK(kids.finished == 1);
    CHECK(log.take() == events{"stop A"});
    REQUIRE(kids.release("stubborn", 2));
}

TEST_CASE("a child that fails to start fails the supervisor's start, stopping the others") {
    journal log;
    children kids(log);
    child_spec broken{
        "broken", []() -> std::shared_ptr<process> { throw std::runtime_error("no database"); }};
    auto started = supervisor::start({kids.spec("A"), broken, kids.spec("C")});
    REQUIRE_FALSE(started);
    CHECK(started.error().code == errc::start_failed);
    CHECK(started.error().reason == exit_reason::error("no database"));
    CHECK(log.take() == events{"start A", "stop A"});
}

// ---------------------------------------------------------------------------------------
// Management calls and OTP's error cases
// ---------------------------------------------------------------------------------------

TEST_CASE("management: start, terminate, restart and delete children, with OTP's errors") {
    journal log;
    children kids(log);
    auto sup = supervisor::start({kids.spec("A")}).value();
    const process_id a = pid_of(*sup, "A");

    auto dup = sup->start_child(kids.spec("A"));
    CHECK(dup.error().code == errc::already_started);
    CHECK(dup.error().pid == a);
    CHECK(sup->restart_child("A").error().code == errc::running);
    CHECK(sup->delete_child("A").error().code == errc::running);
    CHECK(sup->terminate_child("nope").error().code == errc::not_found);
    CHECK(sup->restart_child("nope").error().code == errc::not_found);
    CHECK(sup->delete_child("nope").error().code == errc::not_found);

    CHECK(sup->terminate_child("A"));
    CHECK_FALSE(pid_of(*sup, "A"));
    CHECK(sup->count_children() == child_counts{1, 0, 0, 1});
    CHECK(sup->start_child(kids.spec("A")).error().code == errc::already_present);
    const auto again = sup->restart_child("A");
    REQUIRE(again);
    CHECK(*again != a);
    CHECK(sup->terminate_child("A"));
    CHECK(sup->delete_child("A"));
    CHECK(sup->count_children() == child_counts{});
    CHECK(log.take() == events{"start A", "stop A", "start A", "stop A"});

    // A terminated temporary child is forgotten at once.
    REQUIRE(sup->start_child(kids.spec("T", restart::temporary)));
    CHECK(sup->terminate_child("T"));
    CHECK(sup->terminate_child("T").error().code == errc::not_found);

    child_spec broken{"broken", []() -> std::shared_ptr<process> { return nullptr; }};
    const auto failed = sup->start_child(broken);
    CHECK(failed.error().code == errc::start_failed);
    CHECK(sup->count_children().specs == 0); // a spec that fails to start is not kept
}

TEST_CASE("management: calls from a child's start function on the supervisor's thread") {
    journal log;
    children kids(log);
    std::shared_ptr<supervisor> sup;
    std::size_t seen = 99;
    child_spec curious{"curious", [&]() -> std::shared_ptr<process> {
                           seen = sup->which_children().size(); // answered at once, no deadlock
                           return kids.spec("inner").start();
                       }};
    sup = supervisor::start({kids.spec("A")}).value();
    REQUIRE(sup->start_child(curious));
    CHECK(seen == 2); // A, and the record being started
}

TEST_CASE("dynamic_supervisor: children on demand, by pid, forgotten when done") {
    journal log;
    children kids(log);
    auto sup = dynamic_supervisor::start({}, 2);
    const auto one = sup->start_child(kids.spec("one", restart::transient));
    const auto two = sup->start_child(kids.spec("two", restart::permanent));
    REQUIRE(one);
    REQUIRE(two);
    CHECK(sup->start_child(kids.spec("three")).error().code == errc::max_children);
    CHECK(sup->count_children() == child_counts{2, 2, 0, 2});

    kids.control_of("one")->exit_with(exit_reason::normal()); // transient, normal: forgotten
    REQUIRE(eventually([&] { return sup->count_children().specs == 1; }));
    const process_id before = sup->which_children()[0].pid;
    kids.control_of("two")->exit_with(exit_reason::killed()); // permanent: replaced in place
    REQUIRE(eventually([&] {
        const auto list = sup->which_children();
        return list.size() == 1 && list[0].pid && list[0].pid != before;
    }));
    CHECK(sup->terminate_child(process_id(12345)).error().code == errc::not_found);
    CHECK(sup->terminate_child(sup->which_children()[0].pid));
    CHECK(sup->count_children() == child_counts{});
    CHECK(log.take() == events{"start one", "start two", "start two", "stop two"});
}

// ---------------------------------------------------------------------------------------
// Stress (run under ThreadSanitizer by the tsan preset)
// ---------------------------------------------------------------------------------------

TEST_CASE("stress: 1,000 crashes across 20 children while others list and terminate") {
    journal log;
    children kids(log);
    std::vector<child_spec> specs;
    for (int i = 0; i < 20; ++i) {
        specs.push_back(kids.spec("w" + std::to_string(i)));
    }
    auto sup = supervisor::start(specs, {.max_restarts = 1'000'000}).value();

    std::atomic<bool> done{false};
    std::atomic<int> listed{0};
    std::atomic<int> terminated{0};
    std::thread meddler([&] {
        std::mt19937 rng(7);
        while (!done) {
            const auto list = sup->which_children();
            CHECK(list.size() == 20);
            ++listed;
            const std::string id = "w" + std::to_string(rng() % 20);
            if (rng() % 4 == 0 && sup->terminate_child(id)) {
                ++terminated;
                CHECK(sup->restart_child(id)); // bring it back for the crasher
            }
        }
    });
    int crashes = 0;
    std::mt19937 rng(42);
    while (crashes < 1000) {
        const std::string id = "w" + std::to_string(rng() % 20);
        const process_id pid = pid_of(*sup, id);
        if (!pid) {
            continue;
        }
        kids.control_of(id)->exit_with(exit_reason::error("boom"));
        REQUIRE(eventually([&] { return pid_of(*sup, id) != pid; }));
        ++crashes;
    }
    done = true;
    meddler.join();

    // Everything settles: 20 live children, and every start but those 20 has ended.
    CHECK(eventually([&] {
        return sup->count_children() == child_counts{20, 20, 0, 20} &&
               kids.started - kids.finished == 20;
    }));
    CHECK(listed > 0);
    for (const auto& c : sup->which_children()) {
        CHECK(c.child->alive());
    }
    CHECK(sup->stop() == exit_reason::shutdown());
    CHECK(kids.started == kids.finished);
    MESSAGE("crashes 1000, listings " << listed << ", terminations " << terminated << ", starts "
                                      << kids.started);
}

// ---------------------------------------------------------------------------------------
// Failed restarts (OTP's try_again_restart)
// ---------------------------------------------------------------------------------------

TEST_CASE("failed restarts: retried until they work, visible as restarting meanwhile") {
    journal log;
    children kids(log);
    auto sup = supervisor::start({kids.spec("A")}, {.max_restarts = 100}).value();
    log.take();
    kids.control_of("A")->fail_starts = 3;
    kids.control_of("A")->exit_with(exit_reason::error("boom"));
    REQUIRE(eventually([&] { return pid_of(*sup, "A") != process_id{} && log.size() == 4; }));
    CHECK(log.take() == events{"start A failed", "start A failed", "start A failed", "start A"});
    CHECK_FALSE(sup->which_children()[0].restarting);
}

TEST_CASE("failed restarts: restart_child and delete_child refuse; terminate_child ends it") {
    journal log;
    children kids(log);
    manual_clock clock; // retries count as restarts: keep them all inside the window
    auto sup =
        supervisor::start({kids.spec("A")}, {.max_restarts = 1'000'000, .clock = clock.function()})
            .value();
    log.take();
    kids.control_of("A")->fail_starts = 1'000'000; // never starts again
    kids.control_of("A")->exit_with(exit_reason::error("boom"));
    REQUIRE(eventually([&] { return sup->which_children()[0].restarting; }));
    CHECK(sup->restart_child("A").error().code == errc::restarting);
    CHECK(sup->delete_child("A").error().code == errc::restarting);
    CHECK(sup->terminate_child("A"));
    // No retry is left pending: it stays stopped, and nothing tries to start it. A retry
    // already queued runs on the supervisor's thread before which_children is answered there,
    // and only a retry that fails queues the next.
    const std::size_t attempts = log.size();
    const auto list = sup->which_children();
    CHECK(log.size() == attempts);
    CHECK_FALSE(list[0].pid);
    CHECK_FALSE(list[0].restarting);
    CHECK(sup->delete_child("A"));
}

TEST_CASE("failed restarts: a group start stops at the failure, which alone is retried") {
    journal log;
    children kids(log);
    auto sup = supervisor::start({kids.spec("A"), kids.spec("B"), kids.spec("C"), kids.spec("D")},
                                 {.strategy = strategy::rest_for_one})
                   .value();
    log.take();
    kids.control_of("B")->fail_starts = 1;
    const process_id b = pid_of(*sup, "B");
    kids.control_of("B")->exit_with(exit_reason::error("boom"));
    REQUIRE(exit_handled(*sup, "B", b));
    REQUIRE(eventually([&] { return sup->count_children().active == 4; }));
    CHECK(log.take() ==
          events{"stop D", "stop C", "start B failed", "start B", "start C", "start D"});
}

TEST_CASE("a nested supervisor that fails to start reports why") {
    journal log;
    children kids(log);
    kids.control_of("W")->fail_starts = 1;
    auto outer = supervisor::start({supervisor::child("inner", {kids.spec("W")})});
    REQUIRE_FALSE(outer);
    CHECK(outer.error().code == errc::start_failed);
    CHECK(outer.error().reason.detail().find("cannot start W") != std::string::npos);
}

// ---------------------------------------------------------------------------------------
// No callback path deadlocks; calls from anywhere are safe
// ---------------------------------------------------------------------------------------

TEST_CASE("no deadlock: a child's monitor asks its supervisor while it handles the exit") {
    auto sup = dynamic_supervisor::start();
    journal log;
    children kids(log);
    REQUIRE(sup->start_child(kids.spec("T", restart::temporary)));
    std::atomic<std::size_t> seen{99};
    monitor_handle asking;
    {
        const auto list = sup->which_children();
        asking = list[0].child->monitor([&](const exit_reason&) {
            seen = sup->which_children().size(); // on the child's thread
        });
    } // the test keeps no reference to the child: the supervisor holds the last one
    kids.control_of("T")->exit_with(exit_reason::normal());
    CHECK(eventually([&] { return seen.load() == 0; }, 3s));
}

TEST_CASE("no deadlock: a task terminating itself through its supervisor") {
    for (const timeout shutdown : {default_shutdown, infinity}) {
        auto sup = task_supervisor::start();
        std::atomic<bool> go{false};
        std::atomic<int> answer{-1};
        const auto pid = sup->start_child(
            [&](std::stop_token) {
                while (!go) {
                    std::this_thread::sleep_for(1ms);
                }
                const process_id self = sup->which_children().at(0).pid;
                // The supervisor stops us while we wait for its answer: we give up.
                answer = static_cast<int>(sup->terminate_child(self).error().code);
            },
            restart::temporary, shutdown);
        REQUIRE(pid);
        const auto child = sup->which_children().at(0).child;
        go = true;
        // Stopped, not killed: the supervisor did not wait out a shutdown timeout for a
        // child blocked on it (with `infinity` it would wait for ever, and exit_of give up).
        const auto reason = exit_of(*child, 10s);
        CHECK(reason == exit_reason::shutdown());
        CHECK(answer == static_cast<int>(errc::shutting_down));
        CHECK(eventually([&] { return sup->count_children().specs == 0; }));
    }
}

TEST_CASE("no deadlock: stopping a supervisor whose worker keeps calling it") {
    auto sup = task_supervisor::start();
    REQUIRE(sup->start_child([&sup](std::stop_token stop) {
        while (!stop.stop_requested()) {
            (void)sup->count_children();
        }
    }));
    const auto child = sup->which_children().at(0).child;
    CHECK(sup->stop() == exit_reason::shutdown());
    // Stopped, not killed: it did not wait out the worker's 5 s shutdown timeout.
    CHECK(child->exited() == exit_reason::shutdown());
}

TEST_CASE("no deadlock: a supervisor whose last owner lets go on its own thread") {
    journal log;
    children kids(log);
    auto sup = task_supervisor::start();
    REQUIRE(sup->start_child(kids.spec("W")));
    exit_reason reason = exit_reason::noproc();
    std::atomic<bool> exited{false};
    const monitor_handle watch = sup->monitor([&](const exit_reason& r) {
        reason = r;
        exited = true;
    });
    // A temporary task holds the last reference and ends: the supervisor is destroyed on
    // its own thread, when it forgets that task.
    std::atomic<bool> go{false};
    REQUIRE(sup->start_child([keep = sup, &go] {
        while (!go) {
            std::this_thread::sleep_for(1ms);
        }
    }));
    sup.reset();
    go = true;
    REQUIRE(eventually([&] { return exited.load(); }));
    CHECK(reason == exit_reason::shutdown());
    CHECK(eventually([&] { return log.size() == 2; })); // W was stopped on the way out
    CHECK(log.take() == events{"start W", "stop W"});
}

TEST_CASE("calls from the supervisor's own thread: reads answer, changes are refused") {
    journal log;
    children kids(log);
    std::shared_ptr<supervisor> sup;
    result<process_id> nested(error{errc::not_found, {}, {}});
    child_spec meddling{"meddling", [&]() -> std::shared_ptr<process> {
                            nested = sup->start_child(kids.spec("other"));
                            return kids.spec("inner").start();
                        }};
    sup = supervisor::start({kids.spec("A")}).value();
    REQUIRE(sup->start_child(meddling));
    CHECK(nested.error().code == errc::calling_self);
    CHECK(sup->count_children().specs == 2);

    // A stop asked for from a start function: the shutdown runs once the start is done.
    child_spec quitting{"quitting", [&]() -> std::shared_ptr<process> {
                            CHECK(sup->stop() == exit_reason::shutdown());
                            return kids.spec("last").start();
                        }};
    CHECK(sup->start_child(quitting));
    CHECK(exit_of(*sup) == exit_reason::shutdown());
    CHECK(sup->which_children().empty());
}

TEST_CASE("calls from a killed child's monitor, which runs on the supervisor's thread") {
    journal log;
    children kids(log);
    auto sup = with_stubborn_child(kids, 50ms);
    result<process_id> from_monitor(error{errc::not_found, {}, {}});
    const monitor_handle watch = sup->which_children()[1].child->monitor([&](const exit_reason& r) {
        CHECK(r == exit_reason::killed());
        from_monitor = sup->start_child(kids.spec("late"));
    });
    CHECK(sup->terminate_child("stubborn"));
    CHECK(from_monitor.error().code == errc::calling_self);
    REQUIRE(kids.release("stubborn", 1));
}

TEST_CASE("a child supervisor that does not stop in time does not hold up its parent") {
    journal log;
    children kids(log);
    kids.control_of("stuck")->ignore_stop = true;
    // The inner supervisor waits for ever for its stuck child; the outer one gives the inner
    // one 100 ms.
    child_spec inner =
        supervisor::child("inner", {kids.spec("stuck", restart::permanent, infinity)});
    inner.shutdown = 100ms;
    auto outer = supervisor::start({inner}).value();
    const auto inner_sup = outer->which_children().at(0).child;
    CHECK(outer->stop() == exit_reason::shutdown());
    // It returned while the inner supervisor still waits for its stuck child.
    CHECK(inner_sup->exited() == exit_reason::killed());
    CHECK(kids.finished == 0);
    REQUIRE(kids.release("stuck", 1));
}
