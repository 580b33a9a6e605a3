// SPDX-License-Identifier: MIT
// Tasks and the task supervisor.
#include <otpkv/task.hpp>

#include "support.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

using namespace otpkv;
using otpkv_test::eventually;
using otpkv_test::exit_of;
using namespace std::chrono_literals;

namespace {

// What a task that ignores its stop shares with the test, which its thread may outlive.
struct stubborn_state {
    std::atomic<bool> release{false};  // lets it finish
    std::atomic<bool> finished{false}; // it has
};

// A task that ignores its stop: it runs until released, or for otpkv_test::stubborn_for at
// most (only a stop that wrongly waits for it sees it end; the test then fails, not hangs).
std::shared_ptr<task> start_stubborn(const std::shared_ptr<stubborn_state>& state) {
    return task::start([state] {
        const auto give_up = std::chrono::steady_clock::now() + otpkv_test::stubborn_for;
        while (!state->release && std::chrono::steady_clock::now() < give_up) {
            std::this_thread::sleep_for(1ms);
        }
        state->finished = true;
    });
}

} // namespace

TEST_CASE("task: returning is a normal exit, throwing an error exit, exit() any reason") {
    auto done = task::start([] {});
    CHECK(exit_of(*done) == exit_reason::normal());
    auto crash = task::start([] { throw std::runtime_error("boom"); });
    const auto crashed = exit_of(*crash);
    REQUIRE(crashed);
    CHECK(crashed->what() == exit_reason::kind::error);
    CHECK(crashed->detail() == "boom");
    CHECK(crashed->exception() != nullptr);
    auto leaving = task::start([] { otpkv::exit(exit_reason::shutdown("done here")); });
    CHECK(exit_of(*leaving) == exit_reason::shutdown("done here"));
}

TEST_CASE("task: stop asks through the stop token and returns the reason asked for") {
    auto t = task::start([](std::stop_token stop) {
        while (!stop.stop_requested()) {
            std::this_thread::sleep_for(1ms);
        }
    });
    CHECK(t->alive());
    CHECK(t->stop(exit_reason::shutdown("maintenance")) == exit_reason::shutdown("maintenance"));
    CHECK_FALSE(t->alive());
    CHECK(t->stop() == exit_reason::shutdown("maintenance")); // stopping again: same reason
}

TEST_CASE("task: one that ignores stop is recorded killed once its timeout has passed") {
    // Shared, not on the stack: the abandoned thread outlives this test.
    const auto state = std::make_shared<stubborn_state>();
    auto stubborn = start_stubborn(state);
    int told = 0;
    const monitor_handle watch = stubborn->monitor([&](const exit_reason& r) {
        CHECK(r == exit_reason::killed());
        ++told;
    });
    const auto before = std::chrono::steady_clock::now();
    CHECK(stubborn->stop(exit_reason::shutdown(), 100ms) == exit_reason::killed());
    CHECK(std::chrono::steady_clock::now() - before >= 100ms); // it was given its timeout
    CHECK_FALSE(state->finished);                              // abandoned, not waited for
    CHECK(told == 1);
    CHECK_FALSE(stubborn->alive());
    state->release = true; // the abandoned thread finishes on its own; nobody hears of it
}

TEST_CASE("task: brutal_kill does not wait") {
    const auto state = std::make_shared<stubborn_state>();
    auto stubborn = start_stubborn(state);
    const auto before = std::chrono::steady_clock::now();
    CHECK(stubborn->stop(exit_reason::shutdown(), brutal_kill) == exit_reason::killed());
    CHECK_FALSE(state->finished); // it was not waited for
    // Nor was a timeout waited out: a bound far from now, to tell "no wait" from the 5 s
    // default a stop without brutal_kill would wait (a guard, not a measure of speed).
    CHECK(std::chrono::steady_clock::now() - before < default_shutdown);
    state->release = true;
}

TEST_CASE("task: concurrent stops never wait for an abandoned thread") {
    for (int round = 0; round < 50; ++round) {
        CAPTURE(round);
        const auto state = std::make_shared<stubborn_state>();
        auto stubborn = start_stubborn(state);
        exit_reason other_got = exit_reason::noproc();
        std::thread other([&] { other_got = stubborn->stop(exit_reason::shutdown(), 1ms); });
        CHECK(stubborn->stop(exit_reason::shutdown(), brutal_kill) == exit_reason::killed());
        other.join();
        CHECK(other_got == exit_reason::killed());
        // Both returned while the thread still runs: neither waited for it.
        REQUIRE_FALSE(state->finished);
        state->release = true;
    }
}

TEST_CASE("task: stopping itself from its own thread does not deadlock") {
    std::shared_ptr<task> self;
    std::atomic<bool> ready{false};
    auto t = task::start([&](std::stop_token stop) {
        while (!ready) {
            std::this_thread::sleep_for(1ms);
        }
        self->stop(exit_reason::shutdown("self")); // returns at once
        CHECK(stop.stop_requested());
    });
    self = t;
    ready = true;
    CHECK(exit_of(*t) == exit_reason::shutdown("self"));
    self.reset();
}

TEST_CASE("task_supervisor: async returns the value, or rethrows on await") {
    auto sup = task_supervisor::start();
    auto answer = sup->async([] { return std::string("forty-two"); });
    REQUIRE(answer);
    CHECK(answer->await() == "forty-two");
    std::atomic<bool> go{false};
    auto failing = sup->async([&go]() -> int {
        while (!go) {
            std::this_thread::sleep_for(1ms);
        }
        throw std::invalid_argument("bad input");
    });
    REQUIRE(failing);
    std::optional<exit_reason> reason;
    std::atomic<bool> exited{false};
    // The failing task by its pid: the first task may still be listed, its exit not yet
    // handled by the supervisor.
    std::shared_ptr<otpkv::process> failing_task;
    for (const auto& c : sup->which_children()) {
        if (c.pid == failing->pid()) {
            failing_task = c.child;
        }
    }
    REQUIRE(failing_task != nullptr);
    const monitor_handle watch = failing_task->monitor([&](const exit_reason& r) {
        reason = r;
        exited = true;
    });
    go = true;
    CHECK_THROWS_WITH_AS(failing->await(), "bad input", std::invalid_argument);
    REQUIRE(eventually([&] { return exited.load(); }));
    CHECK(reason == exit_reason::error("bad input")); // the monitors get the message
    auto owned = sup->async([] { return std::make_unique<int>(7); }); // move-only values
    REQUIRE(owned);
    CHECK(*owned->await() == 7);
    auto nothing = sup->async([](std::stop_token) {});
    REQUIRE(nothing);
    CHECK(nothing->wait_for(5s));
    nothing->await();
    // Temporary tasks that are done are forgotten.
    CHECK(eventually([&] { return sup->count_children().specs == 0; }));
}

TEST_CASE("task_supervisor: a permanent task that crashes is replaced; temporary ones are not") {
    auto sup = task_supervisor::start();
    std::atomic<int> runs{0};
    const auto pid = sup->start_child(
        [&runs](std::stop_token stop) {
            if (++runs == 1) {
                throw std::runtime_error("first run crashes");
            }
            while (!stop.stop_requested()) {
                std::this_thread::sleep_for(1ms);
            }
        },
        restart::permanent);
    REQUIRE(pid);
    REQUIRE(eventually([&] { return runs.load() == 2; }));
    const auto kids = sup->which_children();
    REQUIRE(kids.size() == 1);
    CHECK(kids[0].pid != *pid);
    CHECK(kids[0].child->alive());

    REQUIRE(sup->start_child([] { throw std::runtime_error("once"); }));
    CHECK(eventually([&] { return sup->count_children().specs == 1; }));
}

TEST_CASE("task_supervisor: max_children refuses the next task") {
    auto sup = task_supervisor::start({}, 1);
    REQUIRE(sup->start_child([](std::stop_token stop) {
        while (!stop.stop_requested()) {
            std::this_thread::sleep_for(1ms);
        }
    }));
    const auto refused = sup->async([] { return 1; });
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == errc::max_children);
}
