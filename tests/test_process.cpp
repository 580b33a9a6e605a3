// SPDX-License-Identifier: MIT
// The process vocabulary: ids, exit reasons, monitors, results, the manual clock.
#include <otpkv/process.hpp>

#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace otpkv;
using otpkv_test::eventually;
using namespace std::chrono_literals;

namespace {

// A process the test ends by hand, on whatever thread it likes.
class manual_process final : public process {
  public:
    exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                     timeout /*wait*/ = default_shutdown) override {
        notify_exit(reason);
        return *exited();
    }
    bool end(const exit_reason& reason) { return notify_exit(reason); }
};

} // namespace

TEST_CASE("process ids are unique, ordered and print like Elixir pids") {
    std::set<std::uint64_t> seen;
    process_id last;
    for (int i = 0; i < 1000; ++i) {
        const process_id id = process_id::next();
        CHECK(id);
        CHECK(id > last);
        seen.insert(id.value());
        last = id;
    }
    CHECK(seen.size() == 1000);
    CHECK(to_string(process_id(42)) == "<0.42.0>");
    CHECK(to_string(process_id{}) == "undefined");
    CHECK_FALSE(process_id{});
}

TEST_CASE("exit reasons: kinds, abnormality, text") {
    CHECK_FALSE(exit_reason::normal().abnormal());
    CHECK_FALSE(exit_reason::shutdown().abnormal());
    CHECK_FALSE(exit_reason::shutdown("bye").abnormal());
    CHECK(exit_reason::killed().abnormal());
    CHECK(exit_reason::error("boom").abnormal());
    CHECK(exit_reason::noproc().abnormal());
    CHECK(to_string(exit_reason::normal()) == "normal");
    CHECK(to_string(exit_reason::shutdown()) == "shutdown");
    CHECK(to_string(exit_reason::shutdown("bye")) == "{shutdown, bye}");
    CHECK(to_string(exit_reason::killed()) == "killed");
    CHECK(to_string(exit_reason::error("boom")) == "{error, boom}");
    CHECK(to_string(exit_reason::noproc()) == "noproc");
    CHECK(exit_reason::shutdown("a") == exit_reason::shutdown("a"));
    CHECK_FALSE(exit_reason::shutdown("a") == exit_reason::shutdown("b"));
    CHECK_FALSE(exit_reason::killed() == exit_reason::normal());
}

TEST_CASE("exit reasons: from an exception keep its message and the exception") {
    std::exception_ptr e;
    try {
        throw std::runtime_error("disk on fire");
    } catch (...) {
        e = std::current_exception();
    }
    const exit_reason r = exit_reason::from_exception(e);
    CHECK(r.what() == exit_reason::kind::error);
    CHECK(r.detail() == "disk on fire");
    CHECK(r.exception() == e);
    try {
        throw 7;
    } catch (...) {
        CHECK(exit_reason::from_exception(std::current_exception()).detail() ==
              "unknown exception");
    }
}

TEST_CASE("monitor: the callback runs exactly once, with the reason") {
    manual_process p;
    std::vector<std::string> seen;
    monitor_handle a =
        p.monitor([&](const exit_reason& r) { seen.push_back("a " + to_string(r)); });
    monitor_handle b =
        p.monitor([&](const exit_reason& r) { seen.push_back("b " + to_string(r)); });
    CHECK(p.alive());
    CHECK(p.end(exit_reason::error("boom")));
    CHECK_FALSE(p.end(exit_reason::normal())); // only the first exit counts
    CHECK_FALSE(p.alive());
    CHECK(seen == std::vector<std::string>{"a {error, boom}", "b {error, boom}"});
    CHECK(p.exited() == exit_reason::error("boom"));
}

TEST_CASE("monitor: monitoring something already dead calls back at once with noproc") {
    manual_process p;
    p.end(exit_reason::normal());
    int calls = 0;
    exit_reason got;
    const monitor_handle h = p.monitor([&](const exit_reason& r) {
        ++calls;
        got = r;
    });
    CHECK(calls == 1);
    CHECK(got == exit_reason::noproc());
}

TEST_CASE("monitor: cancelled or dropped handles never call back") {
    manual_process p;
    int calls = 0;
    monitor_handle cancelled = p.monitor([&](const exit_reason&) { ++calls; });
    cancelled.cancel();
    {
        const monitor_handle dropped = p.monitor([&](const exit_reason&) { ++calls; });
    }
    monitor_handle moved_from = p.monitor([&](const exit_reason&) { calls += 100; });
    monitor_handle kept = std::move(moved_from);
    moved_from
        .cancel(); // NOLINT(bugprone-use-after-move): cancelling a moved-from handle is a no-op
    p.end(exit_reason::shutdown());
    CHECK(calls == 100);
}

TEST_CASE("monitor: cancel waits for a callback running on another thread") {
    manual_process p;
    std::atomic<bool> entered{false};
    std::atomic<bool> finished{false};
    monitor_handle h = p.monitor([&](const exit_reason&) {
        entered = true;
        std::this_thread::sleep_for(50ms);
        finished = true;
    });
    std::thread ender([&] { p.end(exit_reason::killed()); });
    REQUIRE(eventually([&] { return entered.load(); }));
    h.cancel();
    CHECK(finished.load()); // it had run to the end by the time cancel returned
    ender.join();
}

TEST_CASE("monitor: a callback may cancel its own handle and stop other processes") {
    manual_process p1;
    manual_process p2;
    monitor_handle h1;
    int second = 0;
    const monitor_handle h2 = p2.monitor([&](const exit_reason& r) {
        CHECK(r == exit_reason::shutdown());
        ++second;
    });
    h1 = p1.monitor([&](const exit_reason&) {
        h1.cancel(); // from inside: returns at once
        p2.stop();   // stopping another process from a callback
        p1.stop();   // and the dying one itself: it has exited, nothing happens
    });
    p1.end(exit_reason::error("x"));
    CHECK(second == 1);
    CHECK_FALSE(p2.alive());
}

TEST_CASE("monitor: a callback that throws is dropped; the others still run") {
    manual_process p;
    int later = 0;
    const monitor_handle a = p.monitor([](const exit_reason&) { throw std::logic_error("bad"); });
    const monitor_handle b = p.monitor([&](const exit_reason&) { ++later; });
    p.end(exit_reason::normal());
    CHECK(later == 1);
}

TEST_CASE("result: values, errors, and value() on an error throws") {
    result<int> good(7);
    CHECK(good);
    CHECK(*good == 7);
    CHECK(good.value() == 7);
    result<int> bad(error{errc::not_found, {}, {}});
    CHECK_FALSE(bad);
    CHECK(bad.error().code == errc::not_found);
    CHECK_THROWS_AS((void)bad.value(), bad_result_access);
    const result<void> ok;
    CHECK(ok);
    const result<void> refused(error{errc::running, process_id(9), {}});
    CHECK_FALSE(refused);
    CHECK(refused.error().pid == process_id(9));
    CHECK_THROWS_AS(refused.value(), bad_result_access);
    CHECK(to_string(errc::already_started) == "already_started");
}

TEST_CASE("manual_clock moves only when told") {
    manual_clock clock;
    const auto t0 = clock.now();
    CHECK(clock.function()() == t0);
    clock.advance(5s);
    CHECK(clock.now() - t0 == 5s);
}

// ---- process_threads: the one rule for letting go of a process's threads

TEST_CASE("process_threads: each thread knows itself; release joins what the bodies did") {
    detail::process_threads threads;
    CHECK_FALSE(threads.started());
    std::atomic<bool> go{false};
    std::atomic<int> done{0};
    std::atomic<int> knew_itself{0};
    std::vector<std::thread::id> ids;
    for (int i = 0; i < 3; ++i) {
        ids.push_back(threads.start([&] {
            if (threads.is_current()) {
                ++knew_itself;
            }
            while (!go.load()) {
                std::this_thread::yield();
            }
            for (int spin = 0; spin < 1000; ++spin) {
                std::this_thread::yield(); // still running when release is called, mostly
            }
            ++done;
        }));
    }
    CHECK(threads.started());
    CHECK_FALSE(threads.is_current());
    CHECK(std::set<std::thread::id>(ids.begin(), ids.end()).size() == 3);
    CHECK(std::find(ids.begin(), ids.end(), std::thread::id{}) == ids.end());
    go = true;
    threads.release(); // joins: every body is over when it returns
    CHECK(done == 3);
    CHECK(knew_itself == 3);
    threads.release(); // once only: nothing left to let go of
}

TEST_CASE("process_threads: released from one of its own threads, they are detached") {
    auto threads = std::make_shared<detail::process_threads>();
    auto finished = std::make_shared<std::atomic<bool>>(false);
    // The body lets go of its own thread (joining itself would throw), then of the object.
    threads->start([threads, finished]() mutable {
        threads->release();
        threads.reset();
        finished->store(true);
    });
    threads.reset(); // the thread holds the last reference now
    CHECK(eventually([&] { return finished->load(); }));
}

TEST_CASE("process_threads: abandoned, a thread still running is detached, not waited for") {
    struct shared {
        std::atomic<bool> go{false};
        std::atomic<bool> done{false};
    };
    auto state = std::make_shared<shared>();
    {
        detail::process_threads threads;
        threads.start([state] { // owns what it touches, as an abandoned thread must
            while (!state->go.load()) {
                std::this_thread::yield();
            }
            state->done = true;
        });
        threads.abandon();
        CHECK(threads.abandoned());
        threads.release(); // would wait for ever if it joined: `go` is set only below
        CHECK_FALSE(state->done.load());
    }
    state->go = true;
    CHECK(eventually([&] { return state->done.load(); }));
}
