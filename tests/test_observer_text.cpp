// SPDX-License-Identifier: MIT
// The text of INFO (observer.hpp, detail/observer_text.hpp): the exact lines for a
// hand-built snapshot, every section, escaping of hostile names and reasons, and the
// section names.
#include <otpkv/observer.hpp>

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

namespace {

otpkv::process_id pid(std::uint64_t n) {
    return otpkv::process_id{n};
}

// A node with a tree of two levels, a registry, counters, and two peers.
otpkv::node_snapshot sample() {
    otpkv::node_snapshot n;
    n.node = "n1";
    n.version = "0.3.0";
    n.time = std::chrono::system_clock::time_point{} + 1796612400123ms; // 2026-12-07T03:00:00.123Z
    n.uptime = 12300ms;
    n.tree.name = "root";
    n.tree.pid = pid(1);
    n.tree.strategy = otpkv::strategy::rest_for_one;
    n.tree.max_restarts = 3;
    n.tree.max_seconds = 5000ms;
    n.tree.child_count = 2;

    otpkv::child_snapshot registry;
    registry.id = "registry";
    registry.pid = pid(2);
    registry.type = otpkv::child_type::supervisor;
    registry.uptime = 12300ms;
    otpkv::supervisor_snapshot buckets;
    buckets.name = "registry";
    buckets.pid = pid(2);
    buckets.dynamic = true;
    buckets.max_seconds = 500ms;
    buckets.child_count = 3;
    otpkv::child_snapshot bucket;
    bucket.id = "<0.7.0>";
    bucket.pid = pid(7);
    bucket.restart = otpkv::restart::temporary;
    bucket.uptime = 1500ms;
    buckets.children.push_back(bucket);
    registry.supervisor.push_back(buckets);
    n.tree.children.push_back(registry);

    otpkv::child_snapshot server;
    server.id = "server";
    server.state = otpkv::child_state::restarting;
    server.restarts = 2;
    server.last_exit = "{error, bind failed}";
    n.tree.children.push_back(server);

    n.registry.buckets = 2;
    n.registry.max_buckets = 1000000;
    n.registry.keys = 5;
    n.registry.bytes = 80;
    n.registry.largest = {{"shopping", 3, 50}, {"b", 2, 30}};

    n.server.address = "127.0.0.1:4040";
    n.server.connections = 1;
    n.server.max_connections = 10000;
    n.server.accepted = 3;
    n.server.bytes_in = 100;
    n.server.bytes_out = 200;
    n.server.commands = {1, 2, 3, 0, 0, 1, 0};
    n.server.errors = {{"not found", 1}};
    n.server.latency[1] = 4; // (10 us, 25 us]
    n.server.latency[3] = 3; // (50 us, 100 us]
    n.server.latency_count = 7;
    n.server.latency_sum = 0.0003;

    n.router.node = "n1";
    n.router.routes = {"a-m=n1@127.0.0.1:4040", "n-z=n2@127.0.0.1:4041"};
    n.router.peers = {{"n2", "127.0.0.1:4041", true, 1, 10, 0, 1, ""},
                      {"n3", "127.0.0.1:4042", false, 0, 4, 4, 0, "node n3 unavailable"}};
    return n;
}

const std::string server_text = "# Server\r\n"
                                "node:n1\r\n"
                                "version:0.3.0\r\n"
                                "time:2026-12-07T03:00:00.123Z\r\n"
                                "uptime_seconds:12.3\r\n"
                                "address:127.0.0.1:4040\r\n"
                                "connections:1\r\n"
                                "max_connections:10000\r\n"
                                "accepted:3\r\n"
                                "rejected:0\r\n"
                                "idle_closed:0\r\n"
                                "subscribers:0\r\n"
                                "subscriber_memory:0\r\n"
                                "subscribers_cut:0\r\n";

const std::string tree_text =
    "# Tree\r\n"
    "root rest_for_one max_restarts=3 max_seconds=5 restarts=0 children=2 pid=<0.1.0>\r\n"
    "  registry supervisor permanent running restarts=0 uptime_seconds=12.3 pid=<0.2.0> "
    "strategy=one_for_one dynamic max_restarts=3 max_seconds=0.5 child_restarts=0 "
    "children=3\r\n"
    "    <0.7.0> worker temporary running restarts=0 uptime_seconds=1.5 pid=<0.7.0>\r\n"
    "    ... 2 more\r\n"
    "  server worker permanent restarting restarts=2 uptime_seconds=0 "
    "last_exit=\"{error, bind failed}\"\r\n";

const std::string stats_text = "# Stats\r\n"
                               "commands_create:1\r\n"
                               "commands_put:2\r\n"
                               "commands_get:3\r\n"
                               "commands_delete:0\r\n"
                               "commands_subscribe:0\r\n"
                               "commands_info:1\r\n"
                               "commands_unknown:0\r\n"
                               "errors_not_found:1\r\n"
                               "bytes_in:100\r\n"
                               "bytes_out:200\r\n"
                               "latency_count:7\r\n"
                               "latency_sum_seconds:0.0003\r\n"
                               "latency_p50_seconds:0.000023125\r\n"
                               "latency_p99_seconds:0.000098833\r\n"
                               "registry_buckets:2\r\n"
                               "registry_max_buckets:1000000\r\n"
                               "registry_keys:5\r\n"
                               "registry_bytes:80\r\n"
                               "bucket:shopping keys=3 bytes=50\r\n"
                               "bucket:b keys=2 bytes=30\r\n";

const std::string cluster_text =
    "# Cluster\r\n"
    "router_node:n1\r\n"
    "route:a-m=n1@127.0.0.1:4040\r\n"
    "route:n-z=n2@127.0.0.1:4041\r\n"
    "peer:n2 address=127.0.0.1:4041 up=true in_flight=1 requests=10 failures=0 "
    "connections=1\r\n"
    "peer:n3 address=127.0.0.1:4042 up=false in_flight=0 requests=4 failures=4 connections=0 "
    "last_error=\"node n3 unavailable\"\r\n";

// Every line of `text` ends in CRLF, holds no other CR or LF and no control byte, and
// cannot be read as the end of a reply or as an error.
void check_lines(std::string_view text) {
    CHECK(text.ends_with("\r\n"));
    std::size_t at = 0;
    while (at < text.size()) {
        const std::size_t end = text.find("\r\n", at);
        REQUIRE(end != std::string_view::npos);
        const std::string_view line = text.substr(at, end - at);
        CAPTURE(line);
        CHECK(line != "OK");
        CHECK_FALSE(line.starts_with("ERROR"));
        CHECK_FALSE(line.starts_with("NOT FOUND"));
        CHECK_FALSE(line.starts_with("UNKNOWN"));
        for (const char c : line) {
            const auto u = static_cast<unsigned char>(c);
            CHECK((u >= 0x20 && u < 0x7f));
        }
        at = end + 2;
    }
}

} // namespace

TEST_CASE("observer_text: every section of a hand-built snapshot, line for line") {
    const auto n = sample();
    CHECK(otpkv::info_text(n, otpkv::info_section::server) == server_text);
    CHECK(otpkv::info_text(n, otpkv::info_section::tree) == tree_text);
    CHECK(otpkv::info_text(n, otpkv::info_section::stats) == stats_text);
    CHECK(otpkv::info_text(n, otpkv::info_section::cluster) == cluster_text);
    const std::string all = otpkv::info_text(n, otpkv::info_section::all);
    CHECK(all == server_text + tree_text + stats_text + cluster_text);
    check_lines(all);
}

TEST_CASE("observer_text: an empty snapshot (a node whose pieces restart) still has every "
          "header, and quantiles of nothing are 0") {
    const otpkv::node_snapshot n;
    const std::string all = otpkv::info_text(n, otpkv::info_section::all);
    check_lines(all);
    CHECK(all.find("# Server\r\nnode:\r\n") == 0);
    CHECK(all.find("\r\n# Tree\r\n\"\" one_for_one max_restarts=3 max_seconds=5 restarts=0 "
                   "children=0\r\n# Stats\r\n") != std::string::npos);
    CHECK(all.find("latency_p50_seconds:0\r\nlatency_p99_seconds:0\r\n") != std::string::npos);
    CHECK(all.ends_with("# Cluster\r\nrouter_node:\r\n"));
}

TEST_CASE("observer_text: hostile bucket names, ids, reasons and errors never break a line") {
    auto n = sample();
    n.node = "OK\r\nERROR x";
    n.tree.name = "ERROR boom";
    n.tree.children[1].id = "OK";
    n.tree.children[1].last_exit = "bad\r\nOK\r\n\"q\" \\ \x01";
    n.registry.largest = {{"evil\r\nOK", 1, 2}, {std::string("nul\0x y=1", 9), 3, 4}};
    n.server.errors = {{"weird\nreason", 2}};
    n.router.routes = {"r\ns"};
    n.router.peers[1].last_error = "ERROR\r\nNOT FOUND\xff";
    n.router.peers[0].name = "UNKNOWN COMMAND";
    const std::string all = otpkv::info_text(n, otpkv::info_section::all);
    check_lines(all);
    CHECK(all.find("node:OK\\r\\nERROR x\r\n") != std::string::npos);
    CHECK(all.find("\r\n\\x45RROR\\x20boom rest_for_one ") != std::string::npos);
    CHECK(all.find("\r\n  OK worker permanent restarting restarts=2 uptime_seconds=0 "
                   "last_exit=\"bad\\r\\nOK\\r\\n\\\"q\\\" \\\\ \\x01\"\r\n") != std::string::npos);
    CHECK(all.find("\r\nbucket:evil\\r\\nOK keys=1 bytes=2\r\n") != std::string::npos);
    CHECK(all.find("\r\nbucket:nul\\x00x\\x20y=1 keys=3 bytes=4\r\n") != std::string::npos);
    CHECK(all.find("\r\nerrors_weird\\nreason:2\r\n") != std::string::npos);
    CHECK(all.find("\r\nroute:r\\ns\r\n") != std::string::npos);
    CHECK(all.find("\r\npeer:UNKNOWN\\x20COMMAND address=") != std::string::npos);
    CHECK(all.find(" last_error=\"ERROR\\r\\nNOT FOUND\\xff\"\r\n") != std::string::npos);
}

TEST_CASE("observer_text: the json section is snapshot_json on one line") {
    const auto n = sample();
    const std::string json = otpkv::info_text(n, otpkv::info_section::json);
    CHECK(json == otpkv::snapshot_json(n) + "\r\n");
    CHECK(json.find('\n') == json.size() - 1);
}

TEST_CASE("observer_text: section names, in any letter case") {
    using otpkv::info_section;
    CHECK(otpkv::to_string(info_section::all).empty());
    for (const auto& [s, name] :
         {std::pair{info_section::server, "SERVER"}, std::pair{info_section::tree, "TREE"},
          std::pair{info_section::stats, "STATS"}, std::pair{info_section::cluster, "CLUSTER"},
          std::pair{info_section::json, "JSON"}}) {
        CHECK(otpkv::to_string(s) == name);
        CHECK(otpkv::parse_info_section(name) == s);
        std::string lower(name);
        for (char& c : lower) {
            c = static_cast<char>(c - 'A' + 'a');
        }
        CHECK(otpkv::parse_info_section(lower) == s);
        lower[0] = static_cast<char>(lower[0] - 'a' + 'A');
        CHECK(otpkv::parse_info_section(lower) == s);
    }
    CHECK_FALSE(otpkv::parse_info_section(""));
    CHECK_FALSE(otpkv::parse_info_section("ALL"));
    CHECK_FALSE(otpkv::parse_info_section("SERVERS"));
    CHECK_FALSE(otpkv::parse_info_section("SERVE"));
    CHECK_FALSE(otpkv::parse_info_section("tr\xc3\xa9"));
}

TEST_CASE("observer_text: latency quantiles interpolate inside their bucket") {
    std::array<std::size_t, otpkv::latency_bounds.size() + 1> h{};
    h[0] = 10; // (0, 10 us]
    CHECK(otpkv::detail::latency_quantile(h, 0.5) == doctest::Approx(0.000005));
    h = {};
    h.back() = 3; // past the last bound: the last bound
    CHECK(otpkv::detail::latency_quantile(h, 0.99) == doctest::Approx(1.0));
    CHECK(otpkv::detail::info_seconds(0.000023125) == "0.000023125");
    CHECK(otpkv::detail::info_seconds(std::chrono::milliseconds(5000)) == "5");
    CHECK(otpkv::detail::info_seconds(-1.0) == "0");
}
