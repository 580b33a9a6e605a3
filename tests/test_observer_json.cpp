// SPDX-License-Identifier: MIT
// snapshot_json, cluster_json and metrics_text (observer.hpp): the exact text for a
// hand-built snapshot, valid JSON for hostile bytes (checked by python3's json module), and
// `promtool check metrics` on the metrics (registered only where CMake finds promtool).
#include <otpkv/node.hpp>
#include <otpkv/observer.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;

otpkv::node_snapshot sample_snapshot() {
    otpkv::node_snapshot s;
    s.node = "n1";
    s.version = "0.3.0";
    s.time = std::chrono::system_clock::time_point(1'796'612'400'123ms); // 2026-12-07T03:00:00.123Z
    s.uptime = 12'300ms;
    s.tree.name = "root";
    s.tree.pid = otpkv::process_id(1);
    s.tree.strategy = otpkv::strategy::rest_for_one;
    s.tree.max_restarts = 3;
    s.tree.max_seconds = 5000ms;
    s.tree.restarts = 1;
    s.tree.child_count = 2;
    otpkv::child_snapshot reg;
    reg.id = "registry";
    reg.pid = otpkv::process_id(2);
    reg.type = otpkv::child_type::supervisor;
    reg.uptime = 12'000ms;
    otpkv::supervisor_snapshot buckets;
    buckets.name = "registry";
    buckets.pid = otpkv::process_id(2);
    buckets.dynamic = true;
    buckets.child_count = 1;
    otpkv::child_snapshot b;
    b.id = "<0.9.0>";
    b.pid = otpkv::process_id(9);
    b.restart = otpkv::restart::temporary;
    b.uptime = 1'250ms;
    buckets.children.push_back(b);
    reg.supervisor.push_back(buckets);
    s.tree.children.push_back(reg);
    otpkv::child_snapshot server;
    server.id = "server";
    server.restart = otpkv::restart::transient;
    server.state = otpkv::child_state::restarting;
    server.restarts = 1;
    server.last_exit = "{error, boom}";
    s.tree.children.push_back(server);

    s.registry = {2, 1'000'000, 5, 80, {{"shopping", 3, 50}}};
    s.server.address = "127.0.0.1:4040";
    s.server.connections = 1;
    s.server.max_connections = 10000;
    s.server.accepted = 3;
    s.server.bytes_in = 100;
    s.server.bytes_out = 200;
    s.server.commands = {1, 2, 3, 0, 0, 1, 0};
    s.server.errors = {{"not found", 1}};
    s.server.latency[0] = 4;
    s.server.latency[3] = 2;
    s.server.latency[14] = 1;
    s.server.latency_sum = 2.5;
    s.server.latency_count = 7;
    s.router.node = "n1";
    s.router.routes = {"a-m=n1@127.0.0.1:4040", "n-z=n2@127.0.0.1:4041"};
    s.router.peers = {{"n2", "127.0.0.1:4041", true, 0, 4, 1, 1, "timeout"}};
    return s;
}

// Runs `command` with `input` on its standard input; its exit status and output.
std::pair<int, std::string> run_with_input(const std::string& command, const std::string& input) {
    char in_path[] = "/tmp/otpkv_observer_XXXXXX";
    const int fd = ::mkstemp(in_path);
    REQUIRE(fd >= 0);
    ::close(fd);
    {
        std::ofstream out(in_path, std::ios::binary);
        out << input;
    }
    const std::string full = command + " < " + in_path + " 2>&1";
    std::FILE* pipe = ::popen(full.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::string output;
    char buffer[4096];
    std::size_t n = 0;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) {
        output.append(buffer, n);
    }
    const int status = ::pclose(pipe);
    std::remove(in_path);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// Whether python3's json module reads `text` (decoded as strict UTF-8) as one object.
bool python_reads_json(const std::string& text) {
    const auto [status, output] = run_with_input(
        "python3 -c 'import json,sys; v = json.loads(sys.stdin.buffer.read().decode(\"utf-8\")); "
        "assert isinstance(v, dict)'",
        text);
    if (status != 0) {
        MESSAGE(output);
    }
    return status == 0;
}

std::string json_string(std::string_view s) {
    std::string out;
    otpkv::detail::append_json_string(out, s);
    return out;
}

} // namespace

TEST_CASE("snapshot_json: the exact JSON of a hand-built snapshot") {
    const std::string expected =
        R"({"node":"n1","version":"0.3.0","time":"2026-12-07T03:00:00.123Z","uptime_seconds":12.3,)"
        R"("tree":{"name":"root","pid":"<0.1.0>","dynamic":false,"strategy":"rest_for_one",)"
        R"("max_restarts":3,"max_seconds":5,"restarts":1,"child_count":2,"children":[)"
        R"({"id":"registry","pid":"<0.2.0>","type":"supervisor","restart":"permanent",)"
        R"("state":"running","restarts":0,"last_exit":"","uptime_seconds":12,)"
        R"("supervisor":{"name":"registry","pid":"<0.2.0>","dynamic":true,"strategy":"one_for_one",)"
        R"("max_restarts":3,"max_seconds":5,"restarts":0,"child_count":1,"children":[)"
        R"({"id":"<0.9.0>","pid":"<0.9.0>","type":"worker","restart":"temporary","state":"running",)"
        R"("restarts":0,"last_exit":"","uptime_seconds":1.25,"supervisor":null}]}},)"
        R"({"id":"server","pid":null,"type":"worker","restart":"transient","state":"restarting",)"
        R"("restarts":1,"last_exit":"{error, boom}","uptime_seconds":0,"supervisor":null}]},)"
        R"("registry":{"buckets":2,"max_buckets":1000000,"keys":5,"bytes":80,)"
        R"("largest":[{"name":"shopping","keys":3,"bytes":50}]},)"
        R"("server":{"address":"127.0.0.1:4040","connections":1,"max_connections":10000,)"
        R"("accepted":3,"rejected":0,"idle_closed":0,"subscribers":0,"subscriber_memory":0,)"
        R"("subscribers_cut":0,"bytes_in":100,"bytes_out":200,)"
        R"("commands":{"create":1,"put":2,"get":3,"delete":0,"subscribe":0,"info":1,"unknown":0},)"
        R"("errors":{"not found":1},)"
        R"("latency":{"bounds":[0.00001,0.000025,0.00005,0.0001,0.00025,0.0005,0.001,0.0025,)"
        R"(0.005,0.01,0.025,0.05,0.1,1],"counts":[4,0,0,2,0,0,0,0,0,0,0,0,0,0,1],"sum":2.5,)"
        R"("count":7}},)"
        R"("router":{"node":"n1","routes":["a-m=n1@127.0.0.1:4040","n-z=n2@127.0.0.1:4041"],)"
        R"("peers":[{"name":"n2","address":"127.0.0.1:4041","up":true,"in_flight":0,)"
        R"("requests":4,"failures":1,"connections":1,"last_error":"timeout"}]}})";
    const std::string json = otpkv::snapshot_json(sample_snapshot());
    CHECK(json == expected);
    CHECK(json.find('\n') == std::string::npos);
    CHECK(otpkv::detail::is_json_object(json));
    CHECK(python_reads_json(json));
}

TEST_CASE("snapshot_json: an empty snapshot is valid JSON too") {
    const std::string json = otpkv::snapshot_json(otpkv::node_snapshot{});
    CHECK(json.starts_with(R"({"node":"","version":"","time":"1970-01-01T00:00:00.000Z")"));
    CHECK(json.find(R"("tree":{"name":"","pid":null,)") != std::string::npos);
    CHECK(python_reads_json(json));
}

TEST_CASE("JSON strings: quotes, backslashes, control bytes, UTF-8 and stray bytes") {
    CHECK(json_string("") == R"("")");
    CHECK(json_string("a\"b\\c/") == R"("a\"b\\c/")");
    CHECK(json_string(std::string("\0\x01\n\r\t\x1f\x7f", 7)) ==
          R"("\u0000\u0001\u000a\u000d\u0009\u001f\u007f")");
    CHECK(json_string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") ==
          "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\""); // well-formed UTF-8 stays
    CHECK(json_string("\xff\xfe") == R"("\u00ff\u00fe")");
    CHECK(json_string("\xc3") == R"("\u00c3")");                               // cut short
    CHECK(json_string("\xc0\xaf") == R"("\u00c0\u00af")");                     // overlong '/'
    CHECK(json_string("\xed\xa0\x80") == R"("\u00ed\u00a0\u0080")");           // a surrogate
    CHECK(json_string("\xf4\x90\x80\x80") == R"("\u00f4\u0090\u0080\u0080")"); // > U+10FFFF
    CHECK(json_string("\xe2\x82") == R"("\u00e2\u0082")");
    CHECK(json_string("a\xe2\x82z") == R"("a\u00e2\u0082z")");
}

TEST_CASE("snapshot_json: hostile bytes in every string still give valid JSON") {
    std::string hostile;
    for (int i = 0; i < 256; ++i) {
        hostile += static_cast<char>(i);
    }
    hostile += "\xed\xa0\x80\xc0\xaf\xf4\x90\x80\x80\"\\\xe2\x80\xa8";
    otpkv::node_snapshot s = sample_snapshot();
    s.node = hostile;
    s.registry.largest = {{hostile, 1, 2}, {"\xff", 3, 4}};
    s.tree.children[1].last_exit = hostile;
    s.tree.children[1].id = hostile;
    s.server.errors = {{hostile, 1}};
    s.router.routes = {hostile};
    s.router.peers[0].last_error = hostile;
    const std::string json = otpkv::snapshot_json(s);
    CHECK(json.find('\n') == std::string::npos);
    CHECK(otpkv::detail::is_json_object(json));
    CHECK(python_reads_json(json));
    CHECK(json.find(R"("largest":[{"name":"\u0000\u0001)") != std::string::npos);
    CHECK(json.find(R"({"name":"\u00ff","keys":3,"bytes":4})") != std::string::npos);
}

TEST_CASE("snapshot_json: durations and numbers") {
    otpkv::node_snapshot s;
    std::string json;
    s.uptime = 0ms;
    CHECK(otpkv::snapshot_json(s).find(R"("uptime_seconds":0,)") != std::string::npos);
    s.uptime = 1ms;
    CHECK(otpkv::snapshot_json(s).find(R"("uptime_seconds":0.001,)") != std::string::npos);
    s.uptime = 61'010ms;
    CHECK(otpkv::snapshot_json(s).find(R"("uptime_seconds":61.01,)") != std::string::npos);
    s.uptime = -5ms;
    CHECK(otpkv::snapshot_json(s).find(R"("uptime_seconds":0,)") != std::string::npos);
    s.server.latency_sum = 0.1 + 0.2;
    CHECK(otpkv::snapshot_json(s).find(R"("sum":0.30000000000000004,)") != std::string::npos);
    s.server.latency_sum = std::numeric_limits<double>::infinity();
    CHECK(otpkv::snapshot_json(s).find(R"("sum":0,)") != std::string::npos);
    s.server.latency_sum = std::numeric_limits<double>::quiet_NaN();
    json = otpkv::snapshot_json(s);
    CHECK(json.find(R"("sum":0,)") != std::string::npos);
    CHECK(python_reads_json(json));
}

TEST_CASE("is_json_object: accepts one object, refuses anything else") {
    using otpkv::detail::is_json_object;
    CHECK(is_json_object("{}"));
    CHECK(is_json_object(" {\"a\":[1,-2.5e+3,true,false,null,\"x\\u00e9\"],\"b\":{}} \r\n"));
    CHECK_FALSE(is_json_object(""));
    CHECK_FALSE(is_json_object("[]"));
    CHECK_FALSE(is_json_object("{"));
    CHECK_FALSE(is_json_object("{}{}"));
    CHECK_FALSE(is_json_object("{\"a\":}"));
    CHECK_FALSE(is_json_object("{\"a\":1,}"));
    CHECK_FALSE(is_json_object("{\"a\":01}"));
    CHECK_FALSE(is_json_object("{\"a\":\"\x01\"}"));
    CHECK_FALSE(is_json_object("{\"a\":\"\xff\"}"));
    CHECK_FALSE(is_json_object("{\"a\":\"\\x\"}"));
    CHECK_FALSE(is_json_object("{\"a\":tru}"));
    CHECK_FALSE(is_json_object("{a:1}"));
    std::string deep(100, '[');
    deep = "{\"a\":" + deep + std::string(100, ']') + "}";
    CHECK_FALSE(is_json_object(deep));
    CHECK(is_json_object(deep, 200));
}

TEST_CASE("cluster_json: this node first, then the others in order, once each; down ones "
          "with their error") {
    const otpkv::node_snapshot self = sample_snapshot();
    otpkv::node_snapshot two;
    two.node = "n2";
    const std::string two_json = otpkv::snapshot_json(two);
    const std::vector<otpkv::cluster_member> others{
        {"n2", true, two_json + "\r\n", ""},
        {"n1", true, "{}", ""}, // this node again: skipped
        {"n3", false, "", "node n3 unavailable"},
        {"n2", false, "", "repeated"},        // skipped
        {"n4", true, "{\"node\":\"n4\"", ""}, // broken text: shown down
    };
    const std::string json = otpkv::cluster_json(self, others);
    const std::string expected = R"({"node":"n1","nodes":[{"name":"n1","up":true,"snapshot":)" +
                                 otpkv::snapshot_json(self) +
                                 R"(},{"name":"n2","up":true,"snapshot":)" + two_json +
                                 R"(},{"name":"n3","up":false,"error":"node n3 unavailable"},)"
                                 R"({"name":"n4","up":false,"error":"invalid snapshot"}]})";
    CHECK(json == expected);
    CHECK(python_reads_json(json));
    CHECK(otpkv::cluster_json(otpkv::node_snapshot{}, {}) ==
          R"({"node":"","nodes":[{"name":"","up":true,"snapshot":)" +
              otpkv::snapshot_json(otpkv::node_snapshot{}) + "}]}");
}

TEST_CASE("metrics_text: families, labels and values of a hand-built snapshot") {
    const std::string text = otpkv::metrics_text(sample_snapshot());
    const auto has = [&text](const std::string& line) {
        return text.find("\n" + line + "\n") != std::string::npos || text.starts_with(line + "\n");
    };
    CHECK(text.starts_with("# HELP otpkv_build_info otpkv's version, as a label; always 1.\n"
                           "# TYPE otpkv_build_info gauge\n"
                           "otpkv_build_info{version=\"0.3.0\"} 1\n"));
    CHECK(has("otpkv_uptime_seconds 12.3"));
    CHECK(has("# TYPE otpkv_connections gauge"));
    CHECK(has("otpkv_connections 1"));
    CHECK(has("otpkv_connections_max 10000"));
    CHECK(has("# TYPE otpkv_connections_accepted_total counter"));
    CHECK(has("otpkv_connections_accepted_total 3"));
    CHECK(has("otpkv_received_bytes_total 100"));
    CHECK(has("otpkv_sent_bytes_total 200"));
    CHECK(has("otpkv_commands_total{verb=\"get\"} 3"));
    CHECK(has("otpkv_commands_total{verb=\"unknown\"} 0"));
    CHECK(has("otpkv_errors_total{reason=\"not found\"} 1"));
    CHECK(text.find("# TYPE otpkv_request_duration_seconds histogram\n"
                    "otpkv_request_duration_seconds_bucket{le=\"0.00001\"} 4\n"
                    "otpkv_request_duration_seconds_bucket{le=\"0.000025\"} 4\n"
                    "otpkv_request_duration_seconds_bucket{le=\"0.00005\"} 4\n"
                    "otpkv_request_duration_seconds_bucket{le=\"0.0001\"} 6\n") !=
          std::string::npos);
    CHECK(text.find("otpkv_request_duration_seconds_bucket{le=\"1\"} 6\n"
                    "otpkv_request_duration_seconds_bucket{le=\"+Inf\"} 7\n"
                    "otpkv_request_duration_seconds_sum 2.5\n"
                    "otpkv_request_duration_seconds_count 7\n") != std::string::npos);
    CHECK(has("otpkv_buckets 2"));
    CHECK(has("otpkv_buckets_max 1000000"));
    CHECK(has("otpkv_keys 5"));
    CHECK(has("otpkv_stored_bytes 80"));
    CHECK(has("otpkv_peer_up{node=\"n2\"} 1"));
    CHECK(has("otpkv_peer_requests_total{node=\"n2\"} 4"));
    CHECK(has("otpkv_peer_failures_total{node=\"n2\"} 1"));
    CHECK(has("otpkv_supervisor_restarts{supervisor=\"root\"} 1"));
    // The registry's supervisor shares its name with nothing; its per-bucket children are
    // not walked, and no bucket name appears anywhere.
    CHECK(has("otpkv_supervisor_restarts{supervisor=\"registry\"} 0"));
    CHECK(has("otpkv_supervisor_children{supervisor=\"registry\"} 1"));
    CHECK(text.find("shopping") == std::string::npos);
    CHECK(text.find("<0.9.0>") == std::string::npos);
    // Every family has its HELP and TYPE, and every sample line belongs to the family above.
    std::istringstream lines(text);
    std::string line;
    std::string family;
    int families = 0;
    while (std::getline(lines, line)) {
        if (line.starts_with("# HELP ")) {
            family = line.substr(7, line.find(' ', 7) - 7);
            ++families;
            REQUIRE(std::getline(lines, line));
            CHECK(line.starts_with("# TYPE " + family + " "));
            continue;
        }
        CHECK_MESSAGE(line.starts_with(family), line);
        CHECK(line.starts_with("otpkv_"));
    }
    CHECK(families == 26);
}

TEST_CASE("metrics_text: label values are escaped; supervisors sharing a name get their path") {
    otpkv::node_snapshot s;
    s.version = "a\"b\\c\nd";
    s.tree.name = "root";
    otpkv::child_snapshot c;
    c.type = otpkv::child_type::supervisor;
    otpkv::supervisor_snapshot inner;
    inner.name = "root";
    c.supervisor.push_back(inner);
    s.tree.children.push_back(c);
    s.server.latency_sum = std::numeric_limits<double>::quiet_NaN();
    const std::string text = otpkv::metrics_text(s);
    CHECK(text.find("otpkv_build_info{version=\"a\\\"b\\\\c\\nd\"} 1\n") != std::string::npos);
    CHECK(text.find("otpkv_supervisor_restarts{supervisor=\"root\"} 0\n"
                    "otpkv_supervisor_restarts{supervisor=\"root/root\"} 0\n") !=
          std::string::npos);
    CHECK(text.find("otpkv_request_duration_seconds_sum NaN\n") != std::string::npos);
}

// Registered as its own ctest entry (metrics_promtool) only where CMake finds promtool,
// which it names in OTPKV_PROMTOOL; skipped in the plain run of this file.
TEST_CASE("metrics_text: promtool check metrics is clean" * doctest::skip()) {
    const char* promtool = std::getenv("OTPKV_PROMTOOL");
    REQUIRE_MESSAGE(promtool != nullptr, "OTPKV_PROMTOOL names no promtool");
    otpkv::node_snapshot hostile = sample_snapshot();
    hostile.server.errors = {{"not found", 1}, {"line too long", 2}, {"a \"quoted\" \\ one", 3}};
    // And a real node's, with buckets, a forwarded-to node that is down, and errors counted.
    otpkv::node_config config;
    config.node = "n1";
    config.port = 0;
    config.threads = 1;
    config.cookie = "test";
    config.routes = {{'a', 'm', "n1", "127.0.0.1", 1}, {'n', 'z', "n2", "127.0.0.1", 1}};
    auto started = otpkv::node::start(config);
    REQUIRE(started.has_value());
    const std::shared_ptr<otpkv::node> n = std::move(started).value();
    REQUIRE(n->registry()->create("apples").has_value());
    const otpkv::node_snapshot real = n->snapshot();
    n->stop();
    CHECK(real.registry.buckets == 1);
    REQUIRE(real.router.peers.size() == 1);
    for (const otpkv::node_snapshot& s :
         {sample_snapshot(), otpkv::node_snapshot{}, hostile, real}) {
        const auto checked =
            run_with_input(std::string("'") + promtool + "' check metrics", otpkv::metrics_text(s));
        INFO(checked.second);
        CHECK(checked.first == 0);
        CHECK(checked.second.empty());
    }
}
