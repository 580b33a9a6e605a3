// SPDX-License-Identifier: MIT
// registry.hpp: the guide's KV.Registry tests, the race contract, events, limits and the
// bucket supervisor.
#include "support.hpp"

#include <otpkv/registry.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

using otpkv::errc;
using otpkv::exit_reason;
using otpkv::registry;
using otpkv::registry_event;
using otpkv::registry_event_kind;
using otpkv_test::journal;

namespace {

std::string describe(const registry_event& e) {
    return (e.kind == registry_event_kind::created ? "created " : "exited ") + e.name +
           (e.kind == registry_event_kind::exited ? " " + otpkv::to_string(e.reason) : "");
}

} // namespace

TEST_CASE("spawns buckets") {
    auto reg = registry::start();
    CHECK(reg->lookup("shopping") == nullptr);
    auto made = reg->create("shopping");
    REQUIRE(made);
    auto bucket = reg->lookup("shopping");
    REQUIRE(bucket != nullptr);
    CHECK(bucket == *made);
    bucket->put("milk", "1");
    CHECK(bucket->get("milk") == "1");
    CHECK(reg->size() == 1);
    CHECK(reg->names() == std::vector<std::string>{"shopping"});
}

TEST_CASE("create is idempotent, also from many threads at once") {
    auto reg = registry::start();
    auto first = reg->create("shopping");
    REQUIRE(first);
    (*first)->put("milk", "1");
    auto again = reg->create("shopping");
    REQUIRE(again);
    CHECK(*again == *first);
    CHECK((*again)->get("milk") == "1"); // not replaced by an empty bucket

    std::vector<std::shared_ptr<otpkv::registry::bucket_type>> got(8);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < got.size(); ++i) {
        threads.emplace_back([&, i] { got[i] = reg->create("race").value(); });
    }
    for (auto& t : threads) {
        t.join();
    }
    for (const auto& b : got) {
        CHECK(b == got[0]);
    }
    CHECK(reg->size() == 2);
    CHECK(reg->bucket_supervisor().count_children().active == 2);
}

TEST_CASE("removes buckets on exit") {
    auto reg = registry::start();
    auto bucket = reg->create("shopping").value();
    bucket->stop(exit_reason::normal());
    // Gone by the time stop returned: no sync needed.
    CHECK(reg->lookup("shopping") == nullptr);
    CHECK(reg->size() == 0);
    CHECK(reg->names().empty());
}

TEST_CASE("removes bucket on crash") {
    auto reg = registry::start();
    journal seen;
    auto events = reg->subscribe([&](const registry_event& e) { seen.add(describe(e)); });
    auto bucket = reg->create("shopping").value();
    bucket->stop(exit_reason::error("crash"));
    CHECK(reg->lookup("shopping") == nullptr);
    CHECK(seen.take() ==
          std::vector<std::string>{"created shopping", "exited shopping {error, crash}"});
    // Temporary: the supervisor does not restart it.
    reg->sync();
    CHECK(reg->bucket_supervisor().count_children().active == 0);
    CHECK(reg->lookup("shopping") == nullptr);
    // The name can be used again, for a new bucket.
    auto fresh = reg->create("shopping").value();
    CHECK(fresh != bucket);
    CHECK(fresh->get("milk") == std::nullopt);
}

TEST_CASE("bucket can crash at any time") {
    auto reg = registry::start();
    auto bucket = reg->create("shopping").value();
    // Simulate the bucket crashing, as the guide does with Agent.stop(bucket, :shutdown).
    bucket->stop(exit_reason::shutdown());
    // Using a handle to a crashed bucket is defined: nothing stored, no crash.
    CHECK_FALSE(bucket->put("milk", "3"));
    CHECK(bucket->get("milk") == std::nullopt);
    CHECK(reg->with("shopping", [](auto& b) { b.put("milk", "3"); }) == false);
}

TEST_CASE("the creator sees its bucket at once, on every thread") {
    auto reg = registry::start();
    std::atomic<int> missing{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 200; ++i) {
                const std::string name = std::to_string(t) + "-" + std::to_string(i);
                auto made = reg->create(name).value();
                if (reg->lookup(name) != made) {
                    missing.fetch_add(1);
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    CHECK(missing.load() == 0);
    CHECK(reg->size() == 800);
    CHECK(reg->names().size() == 800);
}

TEST_CASE("with runs on the bucket without a handle and reports a missing one") {
    auto reg = registry::start();
    reg->create("b").value()->put("k", "v");
    CHECK(reg->with("b", [](auto& b) { return b.get("k"); }) ==
          std::optional<std::optional<std::string>>(std::string("v")));
    CHECK(reg->with("nope", [](auto& b) { return b.get("k"); }) == std::nullopt);
    int calls = 0;
    CHECK(reg->with("b", [&](auto&) { ++calls; }));
    CHECK_FALSE(reg->with("nope", [&](auto&) { ++calls; }));
    CHECK(calls == 1);
}

TEST_CASE("max_buckets: creating past it is an error value, and the others are untouched") {
    otpkv::registry_options options;
    options.max_buckets = 3;
    auto reg = registry::start(options);
    CHECK(reg->max_buckets() == 3);
    for (const char* name : {"a", "b", "c"}) {
        REQUIRE(reg->create(name));
        reg->lookup(name)->put("k", name);
    }
    auto refused = reg->create("d");
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == errc::max_children);
    CHECK(reg->lookup("d") == nullptr);
    // An existing name is still found (create is idempotent, not a new bucket).
    CHECK(reg->create("a"));
    CHECK(reg->size() == 3);
    for (const char* name : {"a", "b", "c"}) {
        CHECK(reg->lookup(name)->get("k") == name);
    }
    // Room again once one exits.
    reg->lookup("b")->stop();
    CHECK(reg->create("d"));
    CHECK(reg->size() == 3);
}

TEST_CASE("events: created and exited exactly once each, in order") {
    auto reg = registry::start();
    std::mutex m;
    std::vector<registry_event> events;
    auto sub = reg->subscribe([&](const registry_event& e) {
        const std::lock_guard lock(m);
        events.push_back(e);
    });
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 100; ++i) {
                auto b = reg->create(std::to_string(t) + "/" + std::to_string(i)).value();
                if (i % 2 == 0) {
                    b->stop(exit_reason::normal());
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    reg->stop(); // the other half exit now, with shutdown
    reg->sync();
    const std::lock_guard lock(m);
    std::map<std::string, std::vector<std::string>> per_name;
    for (const auto& e : events) {
        per_name[e.name].push_back(e.kind == registry_event_kind::created
                                       ? "created"
                                       : "exited " + otpkv::to_string(e.reason));
    }
    REQUIRE(per_name.size() == 200);
    for (const auto& [name, seq] : per_name) {
        const bool stopped_early = std::stoi(name.substr(name.find('/') + 1)) % 2 == 0;
        CHECK(seq == std::vector<std::string>{"created",
                                              stopped_early ? "exited normal" : "exited shutdown"});
    }
}

TEST_CASE("stopping the registry stops every bucket and refuses new ones") {
    auto reg = registry::start();
    auto a = reg->create("a").value();
    auto b = reg->create("b").value();
    CHECK(reg->stop() == exit_reason::shutdown());
    CHECK_FALSE(a->alive());
    CHECK_FALSE(b->alive());
    CHECK(reg->size() == 0);
    CHECK(reg->lookup("a") == nullptr);
    auto late = reg->create("c");
    REQUIRE_FALSE(late);
    CHECK(late.error().code == errc::shutting_down);
    CHECK(reg->stop() == exit_reason::shutdown());
}

TEST_CASE("a registry is a process: a supervisor can hold it") {
    journal seen;
    std::shared_ptr<registry> current;
    otpkv::child_spec spec;
    spec.id = "registry";
    spec.start = [&] {
        current = registry::start();
        seen.add("started");
        return current;
    };
    auto sup = otpkv::supervisor::start({spec}).value();
    auto first = current;
    CHECK(first->create("x"));
    first->stop(exit_reason::error("boom"));
    REQUIRE(otpkv_test::eventually([&] { return seen.size() == 2; }));
    CHECK(current != first);
    CHECK(current->lookup("x") == nullptr); // a restarted registry starts empty
    sup->stop();
    CHECK_FALSE(current->alive());
}

TEST_CASE("registry memory is reclaimed after churn") {
    auto& domain = otpkv::detail::epoch_domain::instance();
    domain.synchronize();
    domain.synchronize();
    REQUIRE(domain.retired() == 0);
    {
        auto reg = registry::start();
        for (int i = 0; i < 2000; ++i) {
            auto b = reg->create("b" + std::to_string(i)).value();
            b->put("k", std::string(100, 'v'));
            if (i % 2 == 1) {
                b->stop();
            }
        }
        CHECK(reg->size() == 1000);
    }
    domain.synchronize();
    domain.synchronize();
    CHECK(domain.retired() == 0);
}
