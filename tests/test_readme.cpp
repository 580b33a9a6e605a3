// SPDX-License-Identifier: MIT
// The C++ snippets of README.md, compiled and run. .ci/readme.py checks that every ```cpp
// block of the README appears here line for line, so the README cannot drift from code
// that builds and works.
#include <otpkv/supervisor.hpp>
#include <otpkv/task.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <stop_token>
#include <thread>

namespace {

void run_cache(std::stop_token stop) {
    while (!stop.stop_requested()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

void run_web(std::stop_token stop) {
    run_cache(stop);
}

} // namespace

TEST_CASE("README: Supervision") {
    // README snippet begins
    auto sup = otpkv::supervisor::start(
                   {{"cache", [] { return otpkv::task::start(run_cache); }},
                    {"web", [] { return otpkv::task::start(run_web); }, otpkv::restart::transient}},
                   {.strategy = otpkv::strategy::rest_for_one})
                   .value();

    auto children = sup->which_children(); // cache, then web: ids, pids, processes
    sup->terminate_child("web");           // stops web; its spec stays
    sup->restart_child("web");             // and starts it again
    sup->stop();                           // web, then cache
    // README snippet ends

    REQUIRE(children.size() == 2);
    CHECK(children[0].id == "cache");
    CHECK(children[1].id == "web");
    CHECK_FALSE(children[1].child->alive()); // the first web was terminated
    CHECK(sup->exited() == otpkv::exit_reason::shutdown());
}
