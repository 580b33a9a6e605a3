// SPDX-License-Identifier: MIT
// Node configuration: flags, OTPKV_* environment, config file, routes (of one node or
// several), the replication settings and their checks, precedence.
#include <otpkv/command.hpp>
#include <otpkv/config.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/registry.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::string_literals;
using otpkv::config_load;
using otpkv::http_endpoint;
using otpkv::load_config;
using otpkv::node_config;
using otpkv::route_entry;
using otpkv::route_node;

namespace {

// Runs load_config on `args` (argv[0] is added) and `env` ("KEY=VALUE" strings).
config_load load(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    std::vector<const char*> argv{"kv_server"};
    for (const auto& a : args) {
        argv.push_back(a.c_str());
    }
    argv.push_back(nullptr);
    std::vector<const char*> envp;
    for (const auto& e : env) {
        envp.push_back(e.c_str());
    }
    envp.push_back(nullptr);
    return load_config(static_cast<int>(argv.size() - 1), argv.data(), envp.data());
}

// A fresh directory under the system's temporary directory, removed with everything in it.
class temp_dir {
  public:
    temp_dir() {
        std::random_device seed;
        std::mt19937_64 random(seed() ^
                               static_cast<std::uint64_t>(
                                   std::chrono::steady_clock::now().time_since_epoch().count()));
        for (;;) {
            path_ = std::filesystem::temp_directory_path() /
                    ("otpkv_test_config_" + std::to_string(random()));
            if (std::filesystem::create_directory(path_)) {
                return;
            }
        }
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }

    // Writes `content` to the file `name` in this directory; returns its path.
    std::string write(const std::string& name, const std::string& content) const {
        const auto file = path_ / name;
        std::ofstream out(file, std::ios::binary);
        out << content;
        return file.string();
    }
    std::string path() const { return path_.string(); }

  private:
    std::filesystem::path path_;
};

route_entry route(unsigned char first, unsigned char last, std::string node, std::string host,
                  std::uint16_t port) {
    return route_entry{first, last, std::move(node), std::move(host), port};
}

// An entry naming `nodes` (at least one), the first being the preferred one.
route_entry chain(unsigned char first, unsigned char last, std::vector<route_node> nodes) {
    route_entry r{first, last, nodes.front().name, nodes.front().host, nodes.front().port};
    r.replicas.assign(nodes.begin() + 1, nodes.end());
    return r;
}

const std::string size_max_text = std::to_string(std::numeric_limits<std::size_t>::max());

} // namespace

TEST_CASE("config: defaults") {
    const config_load r = load({});
    REQUIRE(r.ok());
    CHECK_FALSE(r.help);
    CHECK_FALSE(r.version);
    CHECK(r.config == node_config{});
    CHECK(r.config.node == "nonode");
    CHECK(r.config.bind == "127.0.0.1");
    CHECK(r.config.port == 4040);
    CHECK(r.config.threads == 0);
    CHECK(r.config.routes.empty());
    CHECK(r.config.max_line == 65536);
    CHECK(r.config.max_connections == 10000);
    CHECK(r.config.max_buckets == 1'000'000);
    CHECK(r.config.idle_timeout == std::chrono::seconds(300));
    CHECK(r.config.max_subscriber_memory == 256 * 1024 * 1024);
    CHECK(r.config.log_level == otpkv::log_level::info);
    CHECK_FALSE(r.config.admin_port.has_value());
    CHECK(r.config.admin_bind == "127.0.0.1");
    CHECK(r.config.etcd.empty());
    CHECK_FALSE(r.config.replicas.has_value());
    CHECK(r.config.lease == std::chrono::milliseconds(1000));
    CHECK(otpkv::replication_config_error(r.config).empty());
    // The same defaults as the protocol core, the registry and the server.
    CHECK(r.config.max_line == otpkv::default_max_line);
    CHECK(r.config.max_buckets == otpkv::registry_options{}.max_buckets);
    CHECK(r.config.max_subscriber_memory == otpkv::server_options{}.max_subscriber_memory);

    // No arguments at all, and no environment.
    const config_load bare = load_config(0, nullptr, nullptr);
    CHECK(bare.ok());
    CHECK(bare.config == node_config{});
}

TEST_CASE("config: every flag in both spellings") {
    struct flag_case {
        std::string flag;
        std::string value;
    };
    const std::vector<flag_case> cases{
        {"--node", "n1"},
        {"--bind", "::1"},
        {"--port", "5050"},
        {"--threads", "3"},
        {"--route", "a-m=foo@127.0.0.1:4040"},
        {"--max-line", "100"},
        {"--max-connections", "7"},
        {"--max-buckets", "9"},
        {"--max-subscriber-memory", "1048576"},
        {"--log-level", "debug"},
        {"--admin-port", "0"},
        {"--admin-bind", "::1"},
        {"--etcd", "http://127.0.0.1:2379"},
        {"--replicas", "2"},
        {"--lease-ms", "500"},
    };
    node_config expected;
    expected.node = "n1";
    expected.bind = "::1";
    expected.port = 5050;
    expected.threads = 3;
    expected.routes = {route('a', 'm', "foo", "127.0.0.1", 4040)};
    expected.max_line = 100;
    expected.max_connections = 7;
    expected.max_buckets = 9;
    expected.max_subscriber_memory = 1048576;
    expected.log_level = otpkv::log_level::debug;
    expected.admin_port = 0;
    expected.admin_bind = "::1";
    expected.etcd = {http_endpoint{"127.0.0.1", 2379}};
    expected.replicas = 2;
    expected.lease = std::chrono::milliseconds(500);

    std::vector<std::string> separate;
    std::vector<std::string> joined;
    for (const auto& c : cases) {
        separate.push_back(c.flag);
        separate.push_back(c.value);
        joined.push_back(c.flag + "=" + c.value);
        // Each flag alone, in each spelling, changes only its own key.
        const config_load one = load({c.flag, c.value});
        const config_load other = load({c.flag + "=" + c.value});
        INFO(c.flag);
        REQUIRE(one.ok());
        REQUIRE(other.ok());
        CHECK(one.config == other.config);
        CHECK(one.config != node_config{});
    }
    const config_load a = load(separate);
    const config_load b = load(joined);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a.config == expected);
    CHECK(b.config == expected);

    // --config in both spellings.
    temp_dir dir;
    const std::string file = dir.write("node.conf", "port = 6060\n");
    CHECK(load({"--config", file}).config.port == 6060);
    CHECK(load({"--config=" + file}).config.port == 6060);

    // A value may contain '='; the last of a repeated flag wins.
    CHECK(load({"--route", "=-==a@h:1"}).config.routes ==
          std::vector<route_entry>{route('=', '=', "a", "h", 1)});
    CHECK(load({"--port", "1", "--port=2"}).config.port == 2);
    CHECK(load({"--node=a", "--node", "b"}).config.node == "b");
}

TEST_CASE("config: the exact error for a bad port, from each source") {
    CHECK(load({"--port", "abc"}).error == "--port: expected a number from 0 to 65535, got 'abc'");
    CHECK(load({"--port=abc"}).error == "--port: expected a number from 0 to 65535, got 'abc'");
    CHECK(load({}, {"OTPKV_PORT=abc"}).error ==
          "OTPKV_PORT: expected a number from 0 to 65535, got 'abc'");
    temp_dir dir;
    const std::string file = dir.write("node.conf", "# a node\n\nport = abc\n");
    CHECK(load({"--config", file}).error ==
          file + ":3: port: expected a number from 0 to 65535, got 'abc'");
    CHECK(load({"--port", "65536"}).error ==
          "--port: expected a number from 0 to 65535, got '65536'");
    CHECK(load({"--port="}).error == "--port: expected a number from 0 to 65535, got ''");
    CHECK(load({"--port", "99999999999999999999999"}).error ==
          "--port: expected a number from 0 to 65535, got '99999999999999999999999'");
    // Bytes that are not printable are escaped, so the error stays one line.
    CHECK(load({"--port", "4\n0\x01"}).error ==
          "--port: expected a number from 0 to 65535, got '4\\x0a0\\x01'");
    // Long values are cut short.
    const config_load long_value = load({"--port", std::string(1000, '9')});
    CHECK(long_value.error ==
          "--port: expected a number from 0 to 65535, got '" + std::string(80, '9') + "...'");
}

TEST_CASE("config: numeric flags reject bad values and name the flag") {
    struct numeric {
        std::string flag;
        std::string env;
        std::string range; // "from LO to HI"
        std::vector<std::string> out_of_range;
    };
    const std::vector<numeric> flags{
        {"--port", "OTPKV_PORT", "from 0 to 65535", {"65536", "70000", "100000"}},
        {"--threads", "OTPKV_THREADS", "from 1 to 256", {"0", "257", "4294967296"}},
        {"--max-line", "OTPKV_MAX_LINE", "from 1 to " + size_max_text, {"0", "00"}},
        {"--max-connections", "OTPKV_MAX_CONNECTIONS", "from 1 to " + size_max_text, {"0"}},
        {"--max-buckets", "OTPKV_MAX_BUCKETS", "from 1 to " + size_max_text, {"0"}},
        {"--max-subscriber-memory",
         "OTPKV_MAX_SUBSCRIBER_MEMORY",
         "from 1 to " + size_max_text,
         {"0", "256MiB", "1M"}},
        {"--replicas", "OTPKV_REPLICAS", "from 1 to 7", {"0", "8", "00"}},
        {"--lease-ms", "OTPKV_LEASE_MS", "from 100 to 60000", {"0", "99", "60001", "1s"}},
    };
    const std::vector<std::string> not_numbers{"abc",
                                               "",
                                               "-1",
                                               "+5",
                                               " 5",
                                               "5 ",
                                               "0x10",
                                               "1e3",
                                               "1.5",
                                               "1,000",
                                               "١",
                                               "99999999999999999999999",
                                               "18446744073709551616",
                                               "184467440737095516150"};
    for (const auto& f : flags) {
        std::vector<std::string> bad = not_numbers;
        bad.insert(bad.end(), f.out_of_range.begin(), f.out_of_range.end());
        for (const auto& value : bad) {
            INFO(f.flag, " ", value);
            const std::string expected =
                "expected a number " + f.range + ", got " + otpkv::detail::error_quote(value);
            CHECK(load({f.flag + "=" + value}).error == f.flag + ": " + expected);
            if (!value.empty() && value.front() != '-') {
                CHECK(load({f.flag, value}).error == f.flag + ": " + expected);
            }
            if (!value.empty()) { // an empty variable counts as unset
                CHECK(load({}, {f.env + "=" + value}).error == f.env + ": " + expected);
            }
        }
    }
}

TEST_CASE("config: numbers at the edges of their ranges") {
    CHECK(load({"--port", "0"}).config.port == 0);
    CHECK(load({"--port", "65535"}).config.port == 65535);
    CHECK(load({"--port", "00080"}).config.port == 80); // leading zeros are fine
    CHECK(load({"--threads", "1"}).config.threads == 1);
    CHECK(load({"--threads", "256"}).config.threads == 256);
    CHECK(load({"--max-line", "1"}).config.max_line == 1);
    CHECK(load({"--max-line", size_max_text}).config.max_line ==
          std::numeric_limits<std::size_t>::max());
    CHECK(load({"--max-connections", "1"}).config.max_connections == 1);
    CHECK(load({"--max-buckets", "1"}).config.max_buckets == 1);
    CHECK(load({"--max-subscriber-memory", "1"}).config.max_subscriber_memory == 1);
    CHECK(load({"--max-subscriber-memory", size_max_text}).config.max_subscriber_memory ==
          std::numeric_limits<std::size_t>::max());
    CHECK(load({"--replicas", "1"}).config.replicas == std::optional<std::size_t>(1));
    CHECK(load({"--replicas", "7"}).config.replicas == std::optional<std::size_t>(7));
    CHECK(load({"--lease-ms", "100"}).config.lease == std::chrono::milliseconds(100));
    CHECK(load({"--lease-ms", "60000"}).config.lease == std::chrono::milliseconds(60000));
}

TEST_CASE("config: unknown flags, missing values and positional arguments are errors") {
    CHECK(load({"--prot", "1"}).error == "unknown flag '--prot'");
    CHECK(load({"--prot=1"}).error == "unknown flag '--prot'");
    CHECK(load({"-p", "1"}).error == "unknown flag '-p'");
    CHECK(load({"--"}).error == "unknown flag '--'");
    CHECK(load({"--=1"}).error == "unknown flag '--'");
    CHECK(load({"--PORT", "1"}).error == "unknown flag '--PORT'");
    CHECK(load({"--max_line", "1"}).error == "unknown flag '--max_line'");
    CHECK(load({"n1"}).error == "unexpected argument 'n1'");
    CHECK(load({"-"}).error == "unexpected argument '-'");
    CHECK(load({"--port", "1", "extra"}).error == "unexpected argument 'extra'");
    CHECK(load({""}).error == "unexpected argument ''");

    for (const std::string flag :
         {"--config", "--node", "--bind", "--port", "--threads", "--route", "--max-line",
          "--max-connections", "--max-buckets", "--max-subscriber-memory", "--etcd", "--replicas",
          "--lease-ms"}) {
        INFO(flag);
        CHECK(load({flag}).error == flag + ": missing value");
        // The next argument is not a value when it looks like a flag.
        CHECK(load({flag, "--port", "1"}).error == flag + ": missing value");
        CHECK(load({flag, "-1"}).error == flag + ": missing value");
    }
    CHECK(load({"--node=-x"}).config.node == "-x"); // the joined spelling takes anything
    CHECK(load({"--help=yes"}).error == "--help: takes no value");
    CHECK(load({"--version=1"}).error == "--version: takes no value");

    // The first error is the one reported.
    CHECK(load({"--port", "x", "--prot"}).error ==
          "--port: expected a number from 0 to 65535, got 'x'");
    // A flag error comes before any environment error.
    CHECK(load({"--threads", "0"}, {"OTPKV_PORT=x"}).error ==
          "--threads: expected a number from 1 to 256, got '0'");
}

TEST_CASE("config: --help, -h and --version win over everything else") {
    for (const std::string flag : {"--help", "-h"}) {
        INFO(flag);
        const config_load r = load({flag});
        CHECK(r.ok());
        CHECK(r.help);
        CHECK_FALSE(r.version);
        CHECK(r.config == node_config{});
        // Bad flags before or after, a bad environment, an unreadable file: help anyway.
        const config_load busy =
            load({"--prot", "--port", "x", flag, "stray", "--config", "/nonexistent/otpkv.conf"},
                 {"OTPKV_PORT=x"});
        CHECK(busy.ok());
        CHECK(busy.help);
        CHECK(busy.config == node_config{});
    }
    const config_load v = load({"--version"});
    CHECK(v.ok());
    CHECK(v.version);
    CHECK_FALSE(v.help);
    const config_load both = load({"--version", "-h"}, {"OTPKV_CONFIG=/nonexistent"});
    CHECK(both.ok());
    CHECK(both.help);
    CHECK(both.version);
    // "-h" after a flag that wants a value is not that value.
    CHECK(load({"--node", "-h"}).help);
}

TEST_CASE("config: --node and --bind values") {
    CHECK(load({"--node", "a"}).config.node == "a");
    CHECK(load({"--node", "Node_1.example-2"}).config.node == "Node_1.example-2");
    CHECK(load({"--node", std::string(255, 'n')}).config.node == std::string(255, 'n'));
    const std::string name_error = "expected a node name (1 to 255 of A-Z a-z 0-9 _ . -), got ";
    CHECK(load({"--node", std::string(256, 'n')}).error.starts_with("--node: " + name_error));
    CHECK(load({"--node="}).error == "--node: " + name_error + "''");
    CHECK(load({"--node", "a b"}).error == "--node: " + name_error + "'a b'");
    CHECK(load({"--node", "foo@host"}).error == "--node: " + name_error + "'foo@host'");
    CHECK(load({"--node", "caf\xc3\xa9"}).error == "--node: " + name_error + "'caf\\xc3\\xa9'");
    CHECK(load({"--node", "it's"}).error == "--node: " + name_error + "'it\\'s'");
    CHECK(load({}, {"OTPKV_NODE=a/b"}).error == "OTPKV_NODE: " + name_error + "'a/b'");

    for (const std::string good :
         {"127.0.0.1", "0.0.0.0", "255.255.255.255", "10.0.0.1", "::", "::1", "fe80::1",
          "2001:db8::8a2e:370:7334", "1:2:3:4:5:6:7:8", "::ffff:192.0.2.1", "1:2:3:4:5:6:1.2.3.4",
          "ABCD:ef01::", "1::"}) {
        INFO(good);
        const config_load r = load({"--bind", good});
        REQUIRE(r.ok());
        CHECK(r.config.bind == good);
    }
    // Brackets around an IPv6 address are accepted and dropped.
    CHECK(load({"--bind", "[::1]"}).config.bind == "::1");
    for (const std::string bad :
         {"",          "localhost", "example.com",  "256.0.0.1",     "1.2.3",
          "1.2.3.4.5", "01.2.3.4",  "1.2.3.4 ",     " 1.2.3.4",      "1..2.3",
          "[1.2.3.4]", "[::1",      "::1]",         ":::",           "1:2:3:4:5:6:7:8:9",
          "1::2::3",   "12345::",   "fe80::1%eth0", "1:2:3:4:5:6:7", "g::1",
          ":1",        "1:",        "::1.2.3",      "1.2.3.4::"}) {
        INFO(bad);
        CHECK(load({"--bind=" + bad}).error ==
              "--bind: expected an IPv4 or IPv6 address, got " + otpkv::detail::error_quote(bad));
    }
    CHECK(load({}, {"OTPKV_BIND=nohost"}).error ==
          "OTPKV_BIND: expected an IPv4 or IPv6 address, got 'nohost'");
}

TEST_CASE("config: --route repeats in order, and a bad one names the flag") {
    const config_load r = load({"--route", "a-m=foo@127.0.0.1:4040", "--route=n-z=bar@[::1]:4041",
                                "--route", "0-9=foo@127.0.0.1:4040"});
    REQUIRE(r.ok());
    CHECK(r.config.routes == std::vector<route_entry>{
                                 route('a', 'm', "foo", "127.0.0.1", 4040),
                                 route('n', 'z', "bar", "::1", 4041),
                                 route('0', '9', "foo", "127.0.0.1", 4040),
                             });
    CHECK(load({"--route", "a-m=foo@h:0"}).error ==
          "--route: bad route 'a-m=foo@h:0': PORT must be a number from 1 to 65535");
    CHECK(load({"--route="}).error ==
          "--route: bad route '': empty route, expected FIRST-LAST=NAME@HOST:PORT");
    // One route per flag: a list of routes is not split.
    CHECK(load({"--route", "a-m=foo@h:1,n-z=bar@h:2"}).error ==
          "--route: bad route 'a-m=foo@h:1,n-z=bar@h:2': node 2: expected NAME@HOST:PORT, got "
          "another route's FIRST-LAST=");
    // A route may name several nodes: its replica set, in preferred order.
    const config_load several =
        load({"--route", "a-m=n1@127.0.0.1:4041,n2@127.0.0.1:4042,n3@[::1]:4043", "--route",
              "n-z=n2@127.0.0.1:4042"});
    REQUIRE(several.ok());
    CHECK(several.config.routes ==
          std::vector<route_entry>{
              chain('a', 'm',
                    {{"n1", "127.0.0.1", 4041}, {"n2", "127.0.0.1", 4042}, {"n3", "::1", 4043}}),
              route('n', 'z', "n2", "127.0.0.1", 4042)});
    CHECK(load({"--route", "a-m=n1@h:1,n1@h:2"}).error ==
          "--route: bad route 'a-m=n1@h:1,n1@h:2': node 2: n1 is named twice (also node 1): a "
          "node may appear once in a route");
    CHECK(load({"--route", "a-m=n1@h:1,"}).error ==
          "--route: bad route 'a-m=n1@h:1,': node 2 is empty: expected NAME@HOST:PORT on each "
          "side of a ','");
    CHECK(load({"--route=a-m=n1@h:1,n2@h:2,n3@h:3,n4@h:4,n5@h:5,n6@h:6,n7@h:7,n8@h:8"}).error ==
          "--route: bad route 'a-m=n1@h:1,n2@h:2,n3@h:3,n4@h:4,n5@h:5,n6@h:6,n7@h:7,n8@h:8': a "
          "route names at most 7 nodes, got 8");
}

TEST_CASE("config: OTPKV_ROUTE: a piece that starts with FIRST-LAST= begins a route, any other "
          "piece is one more node of the route before it") {
    using otpkv::detail::split_routes;
    CHECK(split_routes("a-m=n1@h:1,n2@h:2,n3@h:3") ==
          std::vector<std::string>{"a-m=n1@h:1,n2@h:2,n3@h:3"});
    // Commas and whitespace both separate; runs of them count as one.
    CHECK(split_routes(" a-m=n1@h:1, n2@h:2\tn-z=n2@h:2 ,, n3@h:3 ") ==
          std::vector<std::string>{"a-m=n1@h:1,n2@h:2", "n-z=n2@h:2,n3@h:3"});
    CHECK(split_routes("a-m=n1@h:1,b-c=n2@h:2") ==
          std::vector<std::string>{"a-m=n1@h:1", "b-c=n2@h:2"});
    // A LAST of ',' stays in its route; a FIRST of ',' is written \x2c.
    CHECK(split_routes("!-,=n1@h:1,n2@h:2,\\x2c-.=m@h:3") ==
          std::vector<std::string>{"!-,=n1@h:1,n2@h:2", "\\x2c-.=m@h:3"});
    // A node name that looks like a range has no '=' after it: a node, not a route.
    CHECK(split_routes("a-z=n1@h:1,a-b@h:2") == std::vector<std::string>{"a-z=n1@h:1,a-b@h:2"});
    // A first piece that starts no route stands alone.
    CHECK(split_routes("n1@h:1,a-m=n2@h:2") == std::vector<std::string>{"n1@h:1", "a-m=n2@h:2"});
    CHECK(split_routes(" ,\n").empty());

    const config_load r =
        load({}, {"OTPKV_ROUTE=a-m=n1@127.0.0.1:4041,n2@127.0.0.1:4042, n3@127.0.0.1:4043 "
                  "n-z=n3@127.0.0.1:4043,n1@127.0.0.1:4041"});
    REQUIRE(r.ok());
    CHECK(
        r.config.routes ==
        std::vector<route_entry>{
            chain(
                'a', 'm',
                {{"n1", "127.0.0.1", 4041}, {"n2", "127.0.0.1", 4042}, {"n3", "127.0.0.1", 4043}}),
            chain('n', 'z', {{"n3", "127.0.0.1", 4043}, {"n1", "127.0.0.1", 4041}}),
        });
    // Errors quote the route as it was put together.
    CHECK(load({}, {"OTPKV_ROUTE=a-m=n1@h:1, n1@h:2"}).error ==
          "OTPKV_ROUTE: bad route 'a-m=n1@h:1,n1@h:2': node 2: n1 is named twice (also node 1): "
          "a node may appear once in a route");
    CHECK(load({}, {"OTPKV_ROUTE=a-m=n1@h:1 junk"}).error ==
          "OTPKV_ROUTE: bad route 'a-m=n1@h:1,junk': node 2: expected '@' between NAME and HOST");
    CHECK(load({}, {"OTPKV_ROUTE=n1@h:1,a-m=n2@h:2"}).error ==
          "OTPKV_ROUTE: bad route 'n1@h:1': expected '-' after FIRST");
    CHECK(load({}, {"OTPKV_ROUTE=a-z=n1@h:1,n2@h:2,n3@h:3,n4@h:4,n5@h:5,n6@h:6,n7@h:7,n8@h:8"})
              .error == "OTPKV_ROUTE: bad route "
                        "'a-z=n1@h:1,n2@h:2,n3@h:3,n4@h:4,n5@h:5,n6@h:6,n7@h:7,n8@h:8': a route "
                        "names at most 7 nodes, got 8");

    // In the file, one route per line, which may name several nodes.
    temp_dir dir;
    const std::string file =
        dir.write("node.conf", "route = a-m=n1@h:1,n2@h:2\nroute = n-z=n2@h:2\n");
    CHECK(load({"--config", file}).config.routes ==
          std::vector<route_entry>{chain('a', 'm', {{"n1", "h", 1}, {"n2", "h", 2}}),
                                   route('n', 'z', "n2", "h", 2)});
    const std::string spaced = dir.write("spaced.conf", "route = a-m=n1@h:1, n2@h:2\n");
    CHECK(load({"--config", spaced}).error ==
          spaced + ":1: route: bad route 'a-m=n1@h:1, n2@h:2': node 2: NAME must be 1 to 255 of "
                   "A-Z a-z 0-9 _ . -");
}

TEST_CASE("config: --etcd, --replicas and --lease-ms from each source") {
    const http_endpoint local{"127.0.0.1", 2379};
    CHECK(load({"--etcd", "http://127.0.0.1:2379"}).config.etcd ==
          std::vector<http_endpoint>{local});
    CHECK(load({"--etcd=http://127.0.0.1:2379/,http://[::1]:2380,http://etcd-3.example.com:2379"})
              .config.etcd ==
          std::vector<http_endpoint>{local, {"::1", 2380}, {"etcd-3.example.com", 2379}});
    CHECK(load({}, {"OTPKV_ETCD=http://a:1, http://b:2\thttp://c:3"}).config.etcd ==
          std::vector<http_endpoint>{{"a", 1}, {"b", 2}, {"c", 3}});
    // A repeated flag keeps its last value, as for every key but --route.
    CHECK(load({"--etcd", "http://a:1", "--etcd", "http://b:2"}).config.etcd ==
          std::vector<http_endpoint>{{"b", 2}});
    CHECK(load({}, {"OTPKV_ETCD="}).config.etcd.empty()); // "" is unset

    CHECK(load({"--etcd="}).error ==
          "--etcd: expected one or more etcd URLs (http://HOST:PORT), got ''");
    CHECK(load({"--etcd", ", ,"}).error ==
          "--etcd: expected one or more etcd URLs (http://HOST:PORT), got ', ,'");
    CHECK(load({"--etcd", "https://127.0.0.1:2379"}).error ==
          "--etcd: bad etcd URL 'https://127.0.0.1:2379': TLS (https) is not supported: give "
          "etcd's plain http:// client URL, on a trusted network");
    CHECK(load({"--etcd", "http://a:1,http://b"}).error ==
          "--etcd: bad etcd URL 'http://b': expected ':PORT' after HOST");
    CHECK(load({"--etcd", "http://a:1/v3"}).error ==
          "--etcd: bad etcd URL 'http://a:1/v3': a path is not allowed, expected "
          "http://HOST:PORT (a single '/' may follow)");
    CHECK(load({"--etcd", "http://a:1,http://a:01/"}).error ==
          "--etcd: etcd URL 'http://a:01/' names http://a:1 again");
    CHECK(load({}, {"OTPKV_ETCD=127.0.0.1:2379"}).error ==
          "OTPKV_ETCD: bad etcd URL '127.0.0.1:2379': expected http://HOST:PORT (the scheme is "
          "required)");
    CHECK(load({"--etcd", "-x"}).error == "--etcd: missing value");

    CHECK(load({"--replicas", "3"}).config.replicas == std::optional<std::size_t>(3));
    CHECK(load({}, {"OTPKV_REPLICAS=2"}).config.replicas == std::optional<std::size_t>(2));
    CHECK(load({"--replicas", "3"}, {"OTPKV_REPLICAS=2"}).config.replicas ==
          std::optional<std::size_t>(3));
    CHECK(load({}, {"OTPKV_REPLICAS="}).config.replicas == std::nullopt);
    CHECK(load({"--lease-ms", "250"}).config.lease == std::chrono::milliseconds(250));
    CHECK(load({}, {"OTPKV_LEASE_MS=2000"}).config.lease == std::chrono::milliseconds(2000));
    CHECK(load({"--lease-ms=300"}, {"OTPKV_LEASE_MS=2000"}).config.lease ==
          std::chrono::milliseconds(300));

    temp_dir dir;
    const std::string file = dir.write("node.conf", "etcd = http://a:1, http://b:2\n"
                                                    "replicas = 2\n"
                                                    "lease_ms = 5000\n");
    const config_load r = load({"--config", file});
    REQUIRE(r.ok());
    CHECK(r.config.etcd == std::vector<http_endpoint>{{"a", 1}, {"b", 2}});
    CHECK(r.config.replicas == std::optional<std::size_t>(2));
    CHECK(r.config.lease == std::chrono::milliseconds(5000));
    CHECK(load({"--config", dir.write("dash.conf", "lease-ms = 400\n")}).config.lease ==
          std::chrono::milliseconds(400));
    // The highest source that gives etcd URLs gives the whole list; flags > env > file.
    CHECK(load({"--config", file}, {"OTPKV_ETCD=http://c:3"}).config.etcd ==
          std::vector<http_endpoint>{{"c", 3}});
    CHECK(load({"--config", file, "--etcd", "http://d:4"}, {"OTPKV_ETCD=http://c:3"}).config.etcd ==
          std::vector<http_endpoint>{{"d", 4}});
    CHECK(load({"--config", file, "--replicas", "3", "--lease-ms", "100"}).config.replicas ==
          std::optional<std::size_t>(3));
    CHECK(load({"--config", file, "--lease-ms", "100"}).config.lease ==
          std::chrono::milliseconds(100));
    const std::string bad = dir.write("bad.conf", "etcd = http://a:1 unix://b:2\n");
    CHECK(load({"--config", bad}).error ==
          bad + ":1: etcd: bad etcd URL 'unix://b:2': the scheme must be http, expected "
                "http://HOST:PORT");
    const std::string bad_lease = dir.write("lease.conf", "\nlease_ms = 50\n");
    CHECK(load({"--config", bad_lease}).error ==
          bad_lease + ":2: lease_ms: expected a number from 100 to 60000, got '50'");
}

TEST_CASE("config: replication_config_error checks the replication settings together") {
    using otpkv::replication_config_error;
    const auto error = [](const std::vector<std::string>& args) {
        const config_load r = load(args);
        REQUIRE_MESSAGE(r.ok(), r.error);
        return replication_config_error(r.config);
    };
    const std::string three = "a-m=n1@127.0.0.1:4041,n2@127.0.0.1:4042,n3@127.0.0.1:4043";
    const std::string etcd = "http://127.0.0.1:2379";

    // Fine: nothing of replication; routes of one node each, with or without etcd; etcd
    // alone; --replicas 1 anywhere; --lease-ms without etcd; a replica set with etcd.
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {},
             {"--route", "a-m=n1@h:1", "--route", "n-z=n2@h:2"},
             {"--route", "a-m=n1@h:1", "--etcd", etcd},
             {"--etcd", etcd},
             {"--replicas", "1"},
             {"--replicas", "1", "--route", "a-m=n1@h:1"},
             {"--lease-ms", "200"},
             {"--route", three, "--etcd", etcd},
             {"--route", three, "--etcd", etcd, "--replicas", "3"},
             {"--route", three, "--etcd", etcd, "--replicas", "2", "--lease-ms", "500"},
             {"--route", three, "--route", "n-z=n1@h:1,n2@h:2", "--etcd", etcd, "--replicas", "2"},
         }) {
        INFO(args.size());
        CHECK(error(args) == "");
    }

    // A route naming several nodes needs etcd; the first such route is named.
    CHECK(error({"--route", "0-9=n1@h:1", "--route", three}) ==
          "route a-m names 3 nodes (a replica set): replication needs --etcd URL, the membership "
          "authority that keeps each range's chain; give --etcd or name one node per route");
    CHECK(error({"--route", "\\x80-\\xff=n1@h:1,n2@h:2", "--lease-ms", "200"}) ==
          "route \\x80-\\xff names 2 nodes (a replica set): replication needs --etcd URL, the "
          "membership authority that keeps each range's chain; give --etcd or name one node per "
          "route");
    CHECK(error({"--route", three, "--replicas", "3"}).starts_with("route a-m names 3 nodes"));

    // --replicas above 1 needs etcd, and routes that name that many nodes.
    CHECK(error({"--replicas", "2"}) ==
          "--replicas 2 needs --etcd URL: a chain of more than one node is kept by etcd, the "
          "membership authority; give --etcd, or leave --replicas out");
    CHECK(error({"--replicas", "2", "--route", "a-m=n1@h:1"}) ==
          "--replicas 2 needs --etcd URL: a chain of more than one node is kept by etcd, the "
          "membership authority; give --etcd, or leave --replicas out");
    CHECK(error({"--replicas", "2", "--etcd", etcd}) ==
          "--replicas 2: there is no route, so every bucket is local to this node and has no "
          "chain; give routes that name 2 nodes or more");
    CHECK(error({"--route", three, "--etcd", etcd, "--replicas", "4"}) ==
          "--replicas 4 is more than route a-m names (3 nodes): a range's chain is made of the "
          "nodes its route names");
    CHECK(error({"--route", three, "--route", "n-z=n1@h:1", "--etcd", etcd, "--replicas", "2"}) ==
          "--replicas 2 is more than route n-z names (1 node): a range's chain is made of the "
          "nodes its route names");

    // The same from the environment (the messages use the flags' spellings).
    const config_load env =
        load({}, {"OTPKV_ROUTE=a-m=n1@h:1,n2@h:2 n-z=n2@h:2,n1@h:1", "OTPKV_REPLICAS=2"});
    REQUIRE(env.ok());
    CHECK(replication_config_error(env.config).starts_with("route a-m names 2 nodes"));
}

TEST_CASE("config: the environment") {
    const config_load r =
        load({}, {"PATH=/usr/bin", "OTPKV_NODE=n2", "OTPKV_BIND=0.0.0.0", "OTPKV_PORT=0",
                  "OTPKV_THREADS=2", "OTPKV_MAX_LINE=10", "OTPKV_MAX_CONNECTIONS=20",
                  "OTPKV_MAX_BUCKETS=30", "OTPKV_MAX_SUBSCRIBER_MEMORY=40",
                  "OTPKV_ROUTE= a-m=foo@127.0.0.1:4040,n-z=bar@h:2 ,\t0-9=baz@[::1]:3,, ",
                  // Other OTPKV_ variables, odd entries: ignored.
                  "OTPKV_BUILD_TESTS=ON", "OTPKV_PROT=1", "OTPKV_=x", "OTPKV_PORT_X=1",
                  "otpkv_port=1", "OTPKV_PORTX", "NOEQUALS", ""});
    REQUIRE(r.ok());
    node_config expected;
    expected.node = "n2";
    expected.bind = "0.0.0.0";
    expected.port = 0;
    expected.threads = 2;
    expected.max_line = 10;
    expected.max_connections = 20;
    expected.max_buckets = 30;
    expected.max_subscriber_memory = 40;
    expected.routes = {route('a', 'm', "foo", "127.0.0.1", 4040), route('n', 'z', "bar", "h", 2),
                       route('0', '9', "baz", "::1", 3)};
    CHECK(r.config == expected);

    // The first occurrence counts, as with getenv; an empty value counts as unset.
    CHECK(load({}, {"OTPKV_PORT=1", "OTPKV_PORT=2"}).config.port == 1);
    CHECK(load({}, {"OTPKV_PORT=1", "OTPKV_PORT=x"}).ok());
    CHECK(load({}, {"OTPKV_PORT=", "OTPKV_PORT=2"}).config.port == 4040);
    CHECK(load({}, {"OTPKV_NODE=", "OTPKV_ROUTE=", "OTPKV_CONFIG="}).config == node_config{});
    // Separators only: no route given.
    CHECK(load({}, {"OTPKV_ROUTE= , "}).config.routes.empty());
    // A LAST of ',' stays in its route; a FIRST of ',' is written \x2c.
    CHECK(load({}, {"OTPKV_ROUTE=!-,=n@h:1,\\x2c-.=m@h:2"}).config.routes ==
          std::vector<route_entry>{route('!', ',', "n", "h", 1), route(',', '.', "m", "h", 2)});
    // A value may contain '='.
    CHECK(load({}, {"OTPKV_ROUTE==-==n@h:1"}).config.routes ==
          std::vector<route_entry>{route('=', '=', "n", "h", 1)});
}

TEST_CASE("config: environment errors name the variable") {
    CHECK(load({}, {"OTPKV_THREADS=257"}).error ==
          "OTPKV_THREADS: expected a number from 1 to 256, got '257'");
    CHECK(load({}, {"OTPKV_MAX_LINE=0"}).error ==
          "OTPKV_MAX_LINE: expected a number from 1 to " + size_max_text + ", got '0'");
    CHECK(load({}, {"OTPKV_MAX_CONNECTIONS=-5"}).error ==
          "OTPKV_MAX_CONNECTIONS: expected a number from 1 to " + size_max_text + ", got '-5'");
    CHECK(load({}, {"OTPKV_MAX_BUCKETS= 5"}).error ==
          "OTPKV_MAX_BUCKETS: expected a number from 1 to " + size_max_text + ", got ' 5'");
    CHECK(load({}, {"OTPKV_ROUTE=a-m=foo@h:1 n-z=bar"}).error ==
          "OTPKV_ROUTE: bad route 'n-z=bar': expected '@' between NAME and HOST");
    CHECK(load({}, {"OTPKV_CONFIG=/nonexistent/otpkv.conf"}).error ==
          "OTPKV_CONFIG: cannot open '/nonexistent/otpkv.conf'");
}

TEST_CASE("config: the config file") {
    temp_dir dir;
    const std::string file = dir.write("node.conf", "\xEF\xBB\xBF# otpkv node n3\n"
                                                    "\n"
                                                    "   # an indented comment\n"
                                                    "node = n3\n"
                                                    "bind=::1\n"
                                                    "\tport\t=\t5000\t\r\n"
                                                    "threads = 4\n"
                                                    "route = a-m=foo@127.0.0.1:4040\n"
                                                    "route = #-#=bar@h:2\n"
                                                    "max-line = 1000\n"
                                                    "max-line = 2000\n"
                                                    "max-connections = 3\n"
                                                    "max-buckets = 5\n"
                                                    "max-subscriber-memory = 67108864\n"
                                                    "   \t  \n"
                                                    "route=n-z=baz@h:3"); // no final newline
    const config_load r = load({"--config", file});
    REQUIRE(r.ok());
    node_config expected;
    expected.node = "n3";
    expected.bind = "::1";
    expected.port = 5000;
    expected.threads = 4;
    expected.max_line = 2000; // the last one wins
    expected.max_connections = 3;
    expected.max_buckets = 5;
    expected.max_subscriber_memory = 67108864;
    expected.routes = {route('a', 'm', "foo", "127.0.0.1", 4040), route('#', '#', "bar", "h", 2),
                       route('n', 'z', "baz", "h", 3)};
    CHECK(r.config == expected);
    // The same file through OTPKV_CONFIG.
    CHECK(load({}, {"OTPKV_CONFIG=" + file}).config == expected);
    // An empty file is fine.
    CHECK(load({"--config", dir.write("empty.conf", "")}).config == node_config{});
}

TEST_CASE("config: config file errors name the file, the line and the key") {
    temp_dir dir;
    const auto error_of = [&dir](const std::string& content) {
        const std::string file = dir.write("bad.conf", content);
        const std::string error = load({"--config", file}).error;
        REQUIRE(error.starts_with(file + ":"));
        return error.substr(file.size());
    };
    CHECK(error_of("# comment\nport = 1\nprot = 2\n") == ":3: unknown key 'prot'");
    CHECK(error_of("\n\n\n\nport 4040\n") == ":5: expected 'key = value', got 'port 4040'");
    CHECK(error_of("= 5\n") == ":1: unknown key ''");
    CHECK(error_of("--port = 5\n") == ":1: unknown key '--port'");
    CHECK(error_of("help = 1\n") == ":1: unknown key 'help'");
    CHECK(error_of("port = 1 # comment\n") ==
          ":1: port: expected a number from 0 to 65535, got '1 # comment'");
    CHECK(error_of("threads =\n") == ":1: threads: expected a number from 1 to 256, got ''");
    CHECK(error_of("node = n\nmax-buckets = 0\n") ==
          ":2: max-buckets: expected a number from 1 to " + size_max_text + ", got '0'");
    CHECK(error_of("max-line = 99999999999999999999999\n") ==
          ":1: max-line: expected a number from 1 to " + size_max_text +
              ", got '99999999999999999999999'");
    CHECK(error_of("route = a-m=foo@h:1\nroute = a-m=foo\n") ==
          ":2: route: bad route 'a-m=foo': expected '@' between NAME and HOST");
    CHECK(error_of("config = other.conf\n") == ":1: config: a config file cannot name another");
    CHECK(error_of("bind = localhost\r\n") ==
          ":1: bind: expected an IPv4 or IPv6 address, got 'localhost'");

    // A line past 1 MiB (a file with no line end, like /dev/zero) is refused, not read on.
    CHECK(error_of("node = " + std::string(std::size_t{1} << 20, 'n') + "\n") ==
          ":1: longer than 1048576 bytes");
    // A line of exactly 1 MiB is read, and so is what follows it.
    CHECK(error_of("#" + std::string((std::size_t{1} << 20) - 1, 'c') + "\nprot = 2\n") ==
          ":2: unknown key 'prot'");
    CHECK(load({"--config", dir.path() + "/missing.conf"}).error ==
          "--config: cannot open '" + dir.path() + "/missing.conf'");
    CHECK(load({"--config", dir.path()}).error ==
          "--config: cannot read '" + dir.path() + "': it is a directory");
    CHECK(load({"--config="}).error == "--config: expected a file name, got ''");
    // --config wins over OTPKV_CONFIG, which is then not read.
    const std::string good = dir.write("good.conf", "port = 7\n");
    CHECK(load({"--config", good}, {"OTPKV_CONFIG=/nonexistent"}).config.port == 7);
}

TEST_CASE("config: --idle-timeout from each source; 0 means never; config file keys may use _") {
    CHECK(load({"--idle-timeout", "0"}).config.idle_timeout == std::chrono::seconds(0));
    CHECK(load({"--idle-timeout=2147483647"}).config.idle_timeout ==
          std::chrono::seconds(2147483647));
    CHECK(load({}, {"OTPKV_IDLE_TIMEOUT=7"}).config.idle_timeout == std::chrono::seconds(7));
    CHECK(load({"--idle-timeout", "8"}, {"OTPKV_IDLE_TIMEOUT=7"}).config.idle_timeout ==
          std::chrono::seconds(8));
    CHECK(load({"--idle-timeout", "2147483648"}).error ==
          "--idle-timeout: expected a number from 0 to 2147483647, got '2147483648'");
    CHECK(load({"--idle-timeout", "-1"}).error == "--idle-timeout: missing value");
    CHECK(load({}, {"OTPKV_IDLE_TIMEOUT=1s"}).error ==
          "OTPKV_IDLE_TIMEOUT: expected a number from 0 to 2147483647, got '1s'");

    // In a config file, `_` and `-` are the same in a key: `idle_timeout` is the issue's
    // spelling, `idle-timeout` the flag's. The last line of either wins.
    temp_dir dir;
    const std::string file = dir.write("node.conf", "idle_timeout = 9\n"
                                                    "max_connections = 4\n"
                                                    "max-line = 5\n"
                                                    "max_buckets = 6\n");
    const config_load r = load({"--config", file});
    REQUIRE(r.ok());
    CHECK(r.config.idle_timeout == std::chrono::seconds(9));
    CHECK(r.config.max_connections == 4);
    CHECK(r.config.max_line == 5);
    CHECK(r.config.max_buckets == 6);
    CHECK(load({"--config", dir.write("both.conf", "idle_timeout = 1\nidle-timeout = 2\n")})
              .config.idle_timeout == std::chrono::seconds(2));
    CHECK(load({"--config", dir.write("both.conf", "idle-timeout = 2\nidle_timeout = 1\n")})
              .config.idle_timeout == std::chrono::seconds(1));
    // Errors quote the key as written; `_` is no wildcard elsewhere.
    const std::string bad = dir.write("bad.conf", "idle_timeout = x\n");
    CHECK(load({"--config", bad}).error ==
          bad + ":1: idle_timeout: expected a number from 0 to 2147483647, got 'x'");
    const std::string unknown = dir.write("unknown.conf", "idle__timeout = 1\n");
    CHECK(load({"--config", unknown}).error == unknown + ":1: unknown key 'idle__timeout'");
    // Flags and variables keep their one spelling.
    CHECK(load({"--idle_timeout", "1"}).error == "unknown flag '--idle_timeout'");
    CHECK(load({}, {"OTPKV_IDLE-TIMEOUT=1"}).ok());
    CHECK(load({}, {"OTPKV_IDLE-TIMEOUT=1"}).config.idle_timeout == std::chrono::seconds(300));
}

TEST_CASE("config: flags win over the environment, which wins over the file, key by key") {
    temp_dir dir;
    const std::string file = dir.write("node.conf", "node = file\n"
                                                    "port = 1\n"
                                                    "threads = 1\n"
                                                    "max-line = 1\n"
                                                    "max-connections = 1\n"
                                                    "max-buckets = 1\n");
    const config_load r =
        load({"--config", file, "--port", "3", "--max-connections", "3"},
             {"OTPKV_NODE=env", "OTPKV_PORT=2", "OTPKV_MAX_LINE=2", "OTPKV_MAX_CONNECTIONS=2"});
    REQUIRE(r.ok());
    CHECK(r.config.port == 3);            // flag > env > file
    CHECK(r.config.max_connections == 3); // flag > env > file
    CHECK(r.config.node == "env");        // env > file
    CHECK(r.config.max_line == 2);        // env > file
    CHECK(r.config.threads == 1);         // file only
    CHECK(r.config.max_buckets == 1);     // file only
    CHECK(r.config.bind == "127.0.0.1");  // nobody: the default

    // Every value given is checked, even one a higher source overrides.
    CHECK(load({"--port", "3"}, {"OTPKV_PORT=x"}).error ==
          "OTPKV_PORT: expected a number from 0 to 65535, got 'x'");
    const std::string bad = dir.write("bad.conf", "port = x\n");
    CHECK(load({"--config", bad, "--port", "3"}).error ==
          bad + ":1: port: expected a number from 0 to 65535, got 'x'");
}

TEST_CASE("config: routes come whole from the highest source that gives any") {
    temp_dir dir;
    const std::string file = dir.write("node.conf", "route = a-m=file@h:1\nroute = n-z=file@h:2\n");
    const std::vector<route_entry> from_file{route('a', 'm', "file", "h", 1),
                                             route('n', 'z', "file", "h", 2)};
    const std::vector<route_entry> from_env{route('a', 'z', "env", "h", 3)};
    const std::vector<route_entry> from_flags{route('0', '9', "flag", "h", 4)};

    CHECK(load({"--config", file}).config.routes == from_file);
    CHECK(load({"--config", file}, {"OTPKV_ROUTE=a-z=env@h:3"}).config.routes == from_env);
    CHECK(load({"--config", file, "--route", "0-9=flag@h:4"}, {"OTPKV_ROUTE=a-z=env@h:3"})
              .config.routes == from_flags);
    CHECK(load({"--route", "0-9=flag@h:4"}, {"OTPKV_ROUTE=a-z=env@h:3"}).config.routes ==
          from_flags);
    // An environment without routes leaves the file's.
    CHECK(load({"--config", file}, {"OTPKV_ROUTE=", "OTPKV_PORT=5"}).config.routes == from_file);
}

TEST_CASE("config: --log-level, --admin-port and --admin-bind from each source") {
    using otpkv::log_level;
    CHECK(load({"--log-level", "debug"}).config.log_level == log_level::debug);
    CHECK(load({"--log-level=error"}).config.log_level == log_level::error);
    CHECK(load({}, {"OTPKV_LOG_LEVEL=warning"}).config.log_level == log_level::warning);
    CHECK(load({"--log-level", "info"}, {"OTPKV_LOG_LEVEL=debug"}).config.log_level ==
          log_level::info);
    CHECK(load({"--log-level", "INFO"}).error ==
          "--log-level: expected error, warning, info or debug, got 'INFO'");
    CHECK(load({"--log-level", "warn"}).error ==
          "--log-level: expected error, warning, info or debug, got 'warn'");
    CHECK(load({"--log-level="}).error ==
          "--log-level: expected error, warning, info or debug, got ''");
    CHECK(load({}, {"OTPKV_LOG_LEVEL=loud"}).error ==
          "OTPKV_LOG_LEVEL: expected error, warning, info or debug, got 'loud'");
    CHECK(load({"--log-level"}).error == "--log-level: missing value");

    // 0 is an ephemeral port, not "off": off is the absent value.
    CHECK(load({"--admin-port", "0"}).config.admin_port == std::optional<std::uint16_t>(0));
    CHECK(load({"--admin-port=65535"}).config.admin_port == std::optional<std::uint16_t>(65535));
    CHECK(load({}, {"OTPKV_ADMIN_PORT=9090"}).config.admin_port ==
          std::optional<std::uint16_t>(9090));
    CHECK(load({"--admin-port", "1"}, {"OTPKV_ADMIN_PORT=9090"}).config.admin_port ==
          std::optional<std::uint16_t>(1));
    CHECK(load({}, {"OTPKV_ADMIN_PORT="}).config.admin_port == std::nullopt); // "" is unset
    CHECK(load({"--admin-port", "65536"}).error ==
          "--admin-port: expected a number from 0 to 65535, got '65536'");
    CHECK(load({"--admin-port", "-1"}).error == "--admin-port: missing value");
    CHECK(load({}, {"OTPKV_ADMIN_PORT=http"}).error ==
          "OTPKV_ADMIN_PORT: expected a number from 0 to 65535, got 'http'");

    CHECK(load({"--admin-bind", "0.0.0.0"}).config.admin_bind == "0.0.0.0");
    CHECK(load({"--admin-bind", "[::1]"}).config.admin_bind == "::1");
    CHECK(load({}, {"OTPKV_ADMIN_BIND=::"}).config.admin_bind == "::");
    CHECK(load({"--admin-bind", "localhost"}).error ==
          "--admin-bind: expected an IPv4 or IPv6 address, got 'localhost'");
    CHECK(load({"--admin-bind", "010.0.0.1"}).error ==
          "--admin-bind: expected an IPv4 or IPv6 address, got '010.0.0.1'");
    // --bind is untouched by --admin-bind, and the other way round.
    const config_load both = load({"--bind", "::1", "--admin-bind", "127.0.0.2"});
    CHECK(both.config.bind == "::1");
    CHECK(both.config.admin_bind == "127.0.0.2");

    temp_dir dir;
    const std::string file = dir.write("node.conf", "log_level = error\n"
                                                    "admin_port = 8080\n"
                                                    "admin-bind = 127.0.0.3\n");
    const config_load r = load({"--config", file});
    REQUIRE(r.ok());
    CHECK(r.config.log_level == log_level::error);
    CHECK(r.config.admin_port == std::optional<std::uint16_t>(8080));
    CHECK(r.config.admin_bind == "127.0.0.3");
    // Flags win over the file.
    CHECK(load({"--config", file, "--admin-port", "7"}).config.admin_port ==
          std::optional<std::uint16_t>(7));
    const std::string bad = dir.write("bad.conf", "\nlog-level = verbose\n");
    CHECK(load({"--config", bad}).error ==
          bad + ":2: log-level: expected error, warning, info or debug, got 'verbose'");
    const std::string bad_port = dir.write("port.conf", "admin_port = 1e3\n");
    CHECK(load({"--config", bad_port}).error ==
          bad_port + ":1: admin_port: expected a number from 0 to 65535, got '1e3'");
}

TEST_CASE("config: usage mentions every flag with its default, and the version line") {
    const std::string text = otpkv::usage("kv_server");
    CHECK(text.starts_with("usage: kv_server [--config FILE] [--node NAME]"));
    CHECK(text.ends_with("\n"));
    for (const std::string_view word : {"--config FILE",
                                        "--node NAME",
                                        "--bind ADDR",
                                        "--port N",
                                        "--threads N",
                                        "--route FIRST-LAST=NAME@HOST:PORT",
                                        "--max-line BYTES",
                                        "--max-connections N",
                                        "--max-buckets N",
                                        "--idle-timeout SECONDS",
                                        "(default: 300)",
                                        "--max-subscriber-memory BYTES",
                                        "--log-level LEVEL",
                                        "or debug (default: info)",
                                        "--admin-port N",
                                        "(default: none, no admin endpoint)",
                                        "--admin-bind ADDR",
                                        "--route FIRST-LAST=NAME@HOST:PORT[,NAME@HOST:PORT]...",
                                        "replica set",
                                        "--etcd URL[,URL...]",
                                        "--replicas R",
                                        "1 to 7 (default: the nodes its route names)",
                                        "--lease-ms MS",
                                        "100 to 60000 (default: 1000)",
                                        "[--etcd URL[,URL...]] [--replicas R] [--lease-ms MS]",
                                        "[--log-level LEVEL] [--admin-port N] [--admin-bind ADDR]",
                                        "-h, --help",
                                        "--version",
                                        "(default: nonode)",
                                        "(default: 127.0.0.1)",
                                        "(default: 4040)",
                                        "(default: 65536)",
                                        "(default: 10000)",
                                        "(default: 1000000)",
                                        "(default: 268435456)",
                                        "(default: the hardware threads)",
                                        "OTPKV_",
                                        "config file"}) {
        INFO(word);
        CHECK(text.find(word) != std::string::npos);
    }
    // Every key the loader knows appears in the usage, as a flag.
    for (const auto& key : otpkv::detail::config_keys) {
        INFO(key.flag);
        CHECK(text.find(std::string(key.flag) + " ") != std::string::npos);
    }
    // No line is wider than 100 columns.
    std::size_t start = 0;
    while (start < text.size()) {
        const std::size_t end = text.find('\n', start);
        REQUIRE(end != std::string::npos);
        CHECK(end - start <= 100);
        start = end + 1;
    }
    CHECK(otpkv::usage("/usr/bin/kv").starts_with("usage: /usr/bin/kv [--config"));

    const std::string expected_version =
        "kv_server (otpkv) " + std::to_string(otpkv::version.major) + "." +
        std::to_string(otpkv::version.minor) + "." + std::to_string(otpkv::version.patch) + "\n";
    CHECK(otpkv::version_text("kv_server") == expected_version);
}

TEST_CASE("config: the cookie from a flag, a variable, the file, or a cookie file; one source "
          "at a time") {
    temp_dir dir;
    const std::string cookie_file = dir.write("cookie", "  from-the-file \n");
    CHECK(load({}).config.cookie.empty()); // none given: the program decides
    CHECK(load({"--cookie", "c1"}).config.cookie == "c1");
    CHECK(load({"--cookie=c1"}, {"OTPKV_COOKIE=c2"}).config.cookie == "c1");
    CHECK(load({}, {"OTPKV_COOKIE=c2"}).config.cookie == "c2");
    CHECK(load({}, {"OTPKV_COOKIE="}).config.cookie.empty()); // empty: unset
    const std::string conf = dir.write("node.conf", "cookie = c 3\n");
    CHECK(load({"--config", conf}).config.cookie == "c 3");
    CHECK(load({"--config", conf}, {"OTPKV_COOKIE=c2"}).config.cookie == "c2");
    // A cookie file: its contents, trimmed; the highest source wins, either spelling.
    CHECK(load({"--cookie-file", cookie_file}).config.cookie == "from-the-file");
    CHECK(load({"--cookie-file", cookie_file}, {"OTPKV_COOKIE=c2"}).config.cookie ==
          "from-the-file");
    CHECK(load({"--cookie", "c1"}, {"OTPKV_COOKIE_FILE=" + cookie_file}).config.cookie == "c1");
    CHECK(load({}, {"OTPKV_COOKIE_FILE=" + cookie_file}).config.cookie == "from-the-file");
    const std::string conf_file = dir.write("file.conf", "cookie-file = " + cookie_file + "\n");
    CHECK(load({"--config", conf_file}).config.cookie == "from-the-file");
    // Only the file used is read: a missing one that a higher source overrides is no error.
    CHECK(load({"--cookie", "c1"}, {"OTPKV_COOKIE_FILE=/nonexistent/x"}).ok());
}

TEST_CASE("config: bad cookies and cookie files are errors that name their source") {
    temp_dir dir;
    const std::string blank = dir.write("blank", " \r\n\t");
    const std::string huge = dir.write("huge", std::string(5000, 'x'));
    const std::string cookie_file = dir.write("cookie", "c");
    const auto error = [](const config_load& r) { return r.error; };
    CHECK(error(load({"--cookie="})) ==
          "--cookie: expected a cookie, got '' (an empty cookie proves nothing)");
    CHECK(error(load({"--cookie-file="})) == "--cookie-file: expected a file name, got ''");
    CHECK(error(load({"--cookie-file", blank})) ==
          "--cookie-file: '" + blank + "' holds no cookie (it is empty)");
    CHECK(error(load({}, {"OTPKV_COOKIE_FILE=" + huge})) ==
          "OTPKV_COOKIE_FILE: '" + huge + "' is longer than 4096 bytes: not a cookie file");
    CHECK(error(load({"--cookie-file", dir.path()})) ==
          "--cookie-file: cannot read '" + dir.path() + "': it is a directory");
    CHECK(error(load({"--cookie-file", dir.path() + "/none"})) ==
          "--cookie-file: cannot open '" + dir.path() + "/none': No such file or directory");
    CHECK(error(load({"--cookie", "a", "--cookie-file", cookie_file})) ==
          "--cookie and --cookie-file: give one, not both");
    CHECK(error(load({}, {"OTPKV_COOKIE=a", "OTPKV_COOKIE_FILE=" + cookie_file})) ==
          "OTPKV_COOKIE and OTPKV_COOKIE_FILE: give one, not both");
    const std::string conf = dir.write("node.conf", "cookie = a\ncookie-file = x\n");
    CHECK(error(load({"--config", conf})) == conf + ": cookie and cookie-file: give one, not both");
    // An empty variable is unset, as for every key.
    CHECK(error(load({"--cookie", "a"}, {"OTPKV_COOKIE_FILE="})) == "");
}

TEST_CASE("config: a cookie file others may read is used, with a warning") {
    temp_dir dir;
    const std::string path = dir.write("cookie", "shared");
    std::filesystem::permissions(path, std::filesystem::perms::owner_read |
                                           std::filesystem::perms::group_read |
                                           std::filesystem::perms::others_read);
    const config_load loose = load({"--cookie-file", path});
    REQUIRE(loose.ok());
    CHECK(loose.config.cookie == "shared");
    CHECK(loose.warnings ==
          std::vector<std::string>{"the cookie file '" + path +
                                   "' has mode 0444: others than its owner may read or change it "
                                   "(chmod 400 '" +
                                   path + "')"});
    std::filesystem::permissions(path, std::filesystem::perms::owner_read);
    CHECK(load({"--cookie-file", path}).warnings.empty());
}

TEST_CASE("home_cookie: ~/.otpkv.cookie, made when missing (mode 0400, 32 letters), read after; "
          "threads making it at once all get the same") {
    temp_dir dir;
    const std::string home = "HOME=" + dir.path();
    const std::array<const char*, 2> env{home.c_str(), nullptr};
    const std::string path = dir.path() + "/.otpkv.cookie";

    std::vector<otpkv::cookie_load> found(8);
    std::vector<std::thread> threads;
    for (auto& f : found) {
        threads.emplace_back([&f, &env] { f = otpkv::home_cookie(env.data()); });
    }
    for (auto& t : threads) {
        t.join();
    }
    int made = 0;
    for (const auto& f : found) {
        REQUIRE(f.ok());
        CHECK(f.path == path);
        CHECK(f.cookie == found.front().cookie);
        CHECK(f.warnings.empty());
        made += f.created ? 1 : 0;
    }
    CHECK(made == 1);
    const std::string& cookie = found.front().cookie;
    CHECK(cookie.size() == 32);
    CHECK(std::all_of(cookie.begin(), cookie.end(), [](char c) { return c >= 'A' && c <= 'Z'; }));
    CHECK(std::filesystem::status(path).permissions() == std::filesystem::perms::owner_read);
    std::size_t files = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) {
        ++files; // no temporary file left behind
    }
    CHECK(files == 1);

    // Read again: the same, not made again.
    const otpkv::cookie_load again = otpkv::home_cookie(env.data());
    CHECK(again.cookie == cookie);
    CHECK_FALSE(again.created);

    // No HOME, or an empty one: an error.
    const std::array<const char*, 2> empty_home{"HOME=", nullptr};
    CHECK(otpkv::home_cookie(empty_home.data()).error ==
          "no cluster cookie: HOME is not set, so there is no ~/.otpkv.cookie (give --cookie or "
          "--cookie-file)");
    CHECK_FALSE(otpkv::home_cookie(nullptr).ok());
    // An empty file there is an error, never replaced.
    temp_dir other;
    other.write(".otpkv.cookie", "");
    const std::string other_home = "HOME=" + other.path() + "/"; // a trailing slash is fine
    const std::array<const char*, 2> other_env{other_home.c_str(), nullptr};
    const otpkv::cookie_load empty = otpkv::home_cookie(other_env.data());
    CHECK(empty.error == "'" + other.path() + "/.otpkv.cookie' holds no cookie (it is empty)");
    CHECK(std::filesystem::file_size(other.path() + "/.otpkv.cookie") == 0);
}
