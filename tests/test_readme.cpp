// SPDX-License-Identifier: MIT
// The C++ snippets of README.md, compiled and run. .ci/readme.py checks that every ```cpp
// block of the README appears here line for line, so the README cannot drift from code
// that builds and works.
#include <otpkv/command.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/node.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/router.hpp>
#include <otpkv/supervisor.hpp>
#include <otpkv/task.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

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

TEST_CASE("README: Buckets and the registry") {
    {
        // README snippet begins
        auto registry = otpkv::registry::start({.max_buckets = 1000});
        auto shopping = registry->create("shopping").value(); // idempotent
        shopping->put("milk", "3");
        auto milk = shopping->get("milk");  // std::optional<std::string>{"3"}
        auto old = shopping->erase("milk"); // the old value, like the guide's delete
        std::vector<std::string> seen;      // keys written, in order, once subscribed
        auto sub = shopping->subscribe([&](const auto& event) { seen.push_back(event.key); });

        std::string reply;
        otpkv::run(otpkv::parse("PUT shopping eggs 3"), *registry, reply); // "OK\r\n"
        otpkv::run(otpkv::parse("GET shopping eggs"), *registry, reply);   // "3\r\nOK\r\n"

        shopping->stop(otpkv::exit_reason::error("crash"));
        auto gone = registry->lookup("shopping"); // nullptr: gone before stop() returned
        // README snippet ends

        CHECK(registry->max_buckets() == 1000);
        CHECK(milk == "3");
        CHECK(old == "3");
        CHECK(sub.active());
        CHECK(seen == std::vector<std::string>{"eggs"});
        CHECK(reply == "OK\r\n3\r\nOK\r\n");
        CHECK(gone == nullptr);
        CHECK(registry->size() == 0);
        CHECK_FALSE(shopping->put("milk", "4"));
    }
}

TEST_CASE("README: A node in your own program") {
    otpkv::node_config config; // or otpkv::load_config(argc, argv, environ).config
    config.node = "n1";
    config.port = 0; // any free port
    auto node = otpkv::node::start(config).value();
    auto line = node->ready_line();       // "otpkv node n1 listening on 127.0.0.1:<port>"
    node->registry()->create("shopping"); // the buckets its clients see
    node->stop();                         // server, tasks, then registry and buckets
    CHECK(line == "otpkv node n1 listening on 127.0.0.1:" + std::to_string(node->port()));
    CHECK_FALSE(node->alive());
}

// The README shows options set by designated initializers (`{.self = "n1", .routes = ...}`).
// Every public aggregate takes them naming any subset of its fields, with no
// -Wmissing-field-initializers under -Wextra (this file is built with -Werror in CI), and
// the fields not named keep their documented defaults.
TEST_CASE("README: public aggregates take designated initializers naming some fields") {
    const std::vector<otpkv::route_entry> routes{{'a', 'z', "n1", "127.0.0.1", 4040}};
    const otpkv::router_options router{.self = "n1", .routes = routes};
    CHECK(router.client.connections == 2);
    CHECK(router.client.self == "nonode");
    const otpkv::client_options client{.self = "n2"};
    CHECK(client.heartbeat == std::chrono::milliseconds(1000));
    const otpkv::server_options server{.port = 0};
    CHECK(server.bind == "127.0.0.1");
    CHECK(server.max_connections == 10000);
    const otpkv::node_config node{.node = "n3"};
    CHECK(node.routes.empty());
    CHECK(node.port == 4040);
    const otpkv::peer_node peer{.name = "n4"};
    CHECK(peer.host.empty());
    CHECK(peer.port == 0);
    const otpkv::route_entry route{.node = "n5"};
    CHECK(route.host.empty());
    const otpkv::node_event event{.node = "n6"};
    CHECK_FALSE(event.up);
    const otpkv::stream_callbacks callbacks{.data = [](std::string_view) { return true; }};
    CHECK_FALSE(callbacks.refused);
    const otpkv::command cmd{.bucket = "b"};
    CHECK(cmd.kind == otpkv::command_kind::unknown);
    const otpkv::child_spec child{.id = "c"};
    CHECK(child.restart == otpkv::restart::permanent);
    const otpkv::supervisor_options sup{.max_restarts = 5};
    CHECK(sup.strategy == otpkv::strategy::one_for_one);
    const otpkv::registry_options registry{.max_buckets = 7};
    CHECK(registry.max_buckets == 7);
    const otpkv::bucket_options bucket{.shards = 4};
    CHECK(bucket.shards == 4);
    const otpkv::registry_event created{.name = "b"};
    CHECK(created.name == "b");
    const otpkv::routed_reply reply{.value = "v"};
    CHECK(reply.node.empty());
    const otpkv::reply_view view{.size = 3};
    CHECK(view.value.empty());
    const otpkv::child_info info{.id = "i"};
    CHECK(info.id == "i");
}
