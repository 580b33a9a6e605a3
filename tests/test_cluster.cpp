// SPDX-License-Identifier: MIT
// Integration tests of a cluster (design.md, "Router and cluster"): three real kv_server
// processes (OTPKV_KV_SERVER) on loopback, every one given the same routing table: n1 owns
// the buckets whose name starts with a-i, n2 j-r, n3 s-z; any other first byte has no route.
// Checked byte for byte against protocol.md: every command through every node with the
// owner's reply relayed unchanged and in order, the data on the owner only, `ERROR no
// route`, a killed and a frozen node (`ERROR node n3 unavailable`, quickly, other buckets
// unharmed, service back by itself), read-your-writes under 20 concurrent clients, routing
// tables that disagree (no loops), SUBSCRIBE through a node that does not own the bucket,
// and the peer greeting.
#include "cluster_process.hpp"
#include "kv_process.hpp"

#include <otpkv/detail/random.hpp>

#include <doctest/doctest.h>

#include <stdlib.h> // mkdtemp
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

using namespace std::string_literals;
using namespace std::chrono_literals;
using otpkv_test::answered;
using otpkv_test::cluster;
using otpkv_test::escaped;
using otpkv_test::exchange_each;
using otpkv_test::exchange_pipelined;
using otpkv_test::exit_status;
using otpkv_test::handshake_as;
using otpkv_test::kv_client;
using otpkv_test::kv_process;
using otpkv_test::millis;
using otpkv_test::ms_since;
using otpkv_test::node_spec;
using otpkv_test::not_found;
using otpkv_test::ok;
using otpkv_test::process_cookie;
using otpkv_test::read_through;
using otpkv_test::route;
using otpkv_test::row;
using otpkv_test::steady;
using otpkv_test::stop_cleanly;
using otpkv_test::subscribe_synced;
using otpkv_test::tagged;
using otpkv_test::unknown;
using otpkv_test::until;
using otpkv_test::unused_ports;

namespace {

const std::string no_route = "ERROR no route\r\n";

// The reply to a request for a bucket of the node `name` while that node is down.
std::string unavailable(const std::string& name) {
    return "ERROR node " + name + " unavailable\r\n";
}

// A GET's reply carrying `value` (empty: the key is absent).
std::string value_reply(const std::string& value) {
    return value + "\r\nOK\r\n";
}

// The cluster of most tests: n1, n2 and n3 on free ports, each with the same table (n1 owns
// a-i, n2 j-r, n3 s-z).
std::vector<node_spec> three_nodes() {
    const std::vector<std::uint16_t> ports = unused_ports(3);
    const std::vector<std::string> table = {
        route("a-i", "n1", ports[0]), route("j-r", "n2", ports[1]), route("s-z", "n3", ports[2])};
    return {{"n1", ports[0], table}, {"n2", ports[1], table}, {"n3", ports[2], table}};
}

// The guide's integration test on bucket `b` (a fresh one).
std::vector<row> guide_session(const std::string& b) {
    return {
        {"UNKNOWN " + b + "\r\n", unknown},
        {"GET " + b + " eggs\r\n", not_found},
        {"CREATE " + b + "\r\n", ok},
        {"PUT " + b + " eggs 3\r\n", ok},
        {"GET " + b + " eggs\r\n", value_reply("3")},
        {"DELETE " + b + " eggs\r\n", ok},
        {"GET " + b + " eggs\r\n", value_reply("")},
    };
}

// Every command on the fresh bucket `b`, ending with `kept` stored under the key "kept".
std::vector<row> every_command(const std::string& b, const std::string& kept) {
    std::vector<row> rows = {
        {"PUT " + b + " k v\r\n", not_found},
        {"DELETE " + b + " k\r\n", not_found},
        {"GET " + b + " k\r\n", not_found},
        {"CREATE " + b + "\r\n", ok},
        {"CREATE " + b + "\r\n", ok}, // idempotent
        {"GET " + b + " k\r\n", value_reply("")},
        {"DELETE " + b + " k\r\n", ok}, // an absent key
        {"PUT " + b + " k v\r\n", ok},
        {"GET " + b + " k\r\n", value_reply("v")},
        {"PUT " + b + " k w\r\n", ok},
        {"GET " + b + " k\r\n", value_reply("w")},
        {"DELETE " + b + " k\r\n", ok},
        {"GET " + b + " k\r\n", value_reply("")},
        // Bytes that are not text, relayed exactly both ways.
        {"PUT " + b + " \x80k\x01 \xff\x00v\x7f\r\n"s, ok},
        {"GET " + b + " \x80k\x01\r\n"s, value_reply("\xff\x00v\x7f"s)},
        // Separators and terminators of every kind (the forwarded line is rebuilt).
        {" \tPUT\t" + b + "  spaced \v 1 \f\n", ok},
        {"GET " + b + " spaced\n", value_reply("1")},
        // Wrong numbers of tokens, unknown and lower-case verbs: never forwarded.
        {"GET " + b + "\r\n", unknown},
        {"PUT " + b + " k hello world\r\n", unknown},
        {"get " + b + " k\r\n", unknown},
        {"FETCH " + b + " k\r\n", unknown},
        {"\r\n", unknown},
        {"PUT " + b + " kept " + kept + "\r\n", ok},
    };
    return rows;
}

// How a poll of a node that is coming back ended.
struct polled {
    bool reached = false; // `want` came back
    double ms = 0;        // from the start of the poll to its end
    int attempts = 0;
    std::string last; // the last reply
};

// Sends `request` on `c` again and again (every 10 ms) while the reply is an `ERROR` line
// (the owner is still unavailable), until it is `want` or `limit` passes. A reply that is
// neither ends the poll too: that is a wrong answer, not "not yet".
polled poll_until(kv_client& c, const std::string& request, const std::string& want,
                  millis limit = 5s) {
    polled p;
    const auto start = steady::now();
    const auto deadline = start + limit;
    while (steady::now() < deadline) {
        ++p.attempts;
        if (!c.send_all(request)) {
            p.last = "(cannot send)";
            break;
        }
        p.last = c.read_lines(1);
        if (p.last.starts_with("ERROR ") && p.last.ends_with("\r\n")) {
            std::this_thread::sleep_for(10ms);
            continue;
        }
        if (p.last != want && want.starts_with(p.last) && p.last.ends_with("\r\n")) {
            p.last += c.read_exact(want.size() - p.last.size()); // a GET's second line
        }
        p.reached = p.last == want;
        break;
    }
    p.ms = ms_since(start);
    return p;
}

// Checks that a poll reached its reply; else says how it ended.
void check_polled(const polled& p, const std::string& what) {
    CHECK_MESSAGE(p.reached, what << ": after " << p.attempts << " attempts in " << p.ms
                                  << " ms, the last reply was \"" << escaped(p.last) << "\"");
}

// The first letters of a bucket of n1, n2 and n3 under three_nodes()' table.
constexpr std::array<char, 3> owner_letter = {'a', 'k', 't'};

// A fresh directory (a HOME of a test's own), removed with what is in it.
class temp_home {
  public:
    temp_home() {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "otpkv_home_XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path_ = pattern;
    }
    temp_home(const temp_home&) = delete;
    temp_home& operator=(const temp_home&) = delete;
    ~temp_home() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    [[nodiscard]] const std::string& path() const { return path_; }
    [[nodiscard]] std::string cookie_path() const { return path_ + "/.otpkv.cookie"; }
    // The names of the files in it.
    [[nodiscard]] std::vector<std::string> files() const {
        std::vector<std::string> names;
        for (const auto& e : std::filesystem::directory_iterator(path_)) {
            names.push_back(e.path().filename().string());
        }
        return names;
    }

  private:
    std::string path_;
};

// kv_server's flags for node `name` on `port` with `table`, and `extra`.
std::vector<std::string> node_args(const std::string& name, std::uint16_t port,
                                   const std::vector<std::string>& table,
                                   const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"--node",    name, "--port", std::to_string(port),
                                     "--threads", "1"};
    for (const std::string& r : table) {
        args.push_back("--route");
        args.push_back(r);
    }
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

// Sends `request` on `c` until its one-line reply is `want` (a node coming up), for 5 s at
// most; the last reply.
std::string retry_until(kv_client& c, const std::string& request, const std::string& want) {
    const auto deadline = steady::now() + 5s;
    std::string got;
    do {
        REQUIRE(c.send_all(request));
        got = c.read_lines(1);
        if (got == want) {
            break;
        }
        std::this_thread::sleep_for(20ms);
    } while (steady::now() < deadline);
    return got;
}

// The contents of the file at `path`.
std::string contents(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

} // namespace

TEST_CASE("cluster: every command through every node, for buckets of every node; data only on "
          "the owner") {
    cluster c(three_nodes());
    // bucket(owner, via): a fresh bucket of node `owner`, used through node `via`.
    const auto bucket = [](std::size_t owner, std::size_t via) {
        return owner_letter[owner] + "bucket"s + std::to_string(via + 1);
    };
    const auto kept = [](std::size_t owner, std::size_t via) {
        return "from-n" + std::to_string(via + 1) + "-to-n" + std::to_string(owner + 1);
    };
    for (std::size_t via = 0; via < 3; ++via) {
        kv_client client = c.client(via);
        for (std::size_t owner = 0; owner < 3; ++owner) {
            INFO("through " << c.name(via) << ", a bucket of " << c.name(owner));
            exchange_each(client,
                          guide_session(owner_letter[owner] + "shop"s + std::to_string(via + 1)));
            exchange_each(client, every_command(bucket(owner, via), kept(owner, via)));
        }
    }
    {
        // The guide's literal session (shopping is n3's) through n1, in one write.
        kv_client client = c.client(0);
        exchange_pipelined(client, guide_session("shopping"));
    }

    // Every node reads the same data (its own directly, the others' through their owners);
    // peer connections show that each bucket lives on its owner and nowhere else.
    std::array<kv_client, 3> plain = {c.client(0), c.client(1), c.client(2)};
    std::array<kv_client, 3> peers = {c.peer(0), c.peer(1), c.peer(2)};
    for (std::size_t owner = 0; owner < 3; ++owner) {
        for (std::size_t via = 0; via < 3; ++via) {
            const std::string get = "GET " + bucket(owner, via) + " kept\r\n";
            const std::string stored = value_reply(kept(owner, via));
            INFO("bucket " << bucket(owner, via) << " of " << c.name(owner));
            for (std::size_t at = 0; at < 3; ++at) {
                INFO("asking " << c.name(at));
                OTPKV_CHECK_EXCHANGE(plain[at], get, stored);
                OTPKV_CHECK_EXCHANGE(peers[at], tagged(get),
                                     answered(at == owner ? stored : not_found));
            }
        }
    }
    for (std::size_t at = 0; at < 3; ++at) {
        OTPKV_CHECK_EXCHANGE(peers[at], tagged("GET shopping eggs\r\n"),
                             answered(at == 2 ? value_reply("") : not_found));
    }

    {
        // Pipelined: 1,500 requests for buckets of all three nodes in one write, through each
        // node; the replies come back exact and in order.
        for (std::size_t via = 0; via < 3; ++via) {
            INFO("through " << c.name(via));
            kv_client client = c.client(via);
            std::map<std::string, std::string> model; // "bucket key" -> value
            std::vector<row> rows;
            std::vector<std::string> buckets;
            for (std::size_t owner = 0; owner < 3; ++owner) {
                buckets.push_back(owner_letter[owner] + "pipe"s + std::to_string(via + 1));
                rows.push_back({"CREATE " + buckets.back() + "\r\n", ok});
            }
            for (int i = 0; i < 1'500; ++i) {
                const std::string& b = buckets[static_cast<std::size_t>(i * 7 % 3)];
                const std::string key = "k" + std::to_string(i % 11);
                if (i % 50 == 49) {
                    rows.push_back({"NOPE " + b + "\r\n", unknown});
                } else if (i % 50 == 24) {
                    rows.push_back({"GET 0" + b + " " + key + "\r\n", no_route});
                } else if (i % 3 == 0) {
                    const std::string value = "v" + std::to_string(i) + "\xfe";
                    rows.push_back({"PUT " + b + " " + key + " " + value + "\r\n", ok});
                    model[b + " " + key] = value;
                } else if (i % 10 == 7) {
                    rows.push_back({"DELETE " + b + " " + key + "\n", ok});
                    model.erase(b + " " + key);
                } else {
                    const auto found = model.find(b + " " + key);
                    rows.push_back({"GET " + b + " " + key + "\r\n",
                                    value_reply(found == model.end() ? "" : found->second)});
                }
            }
            exchange_pipelined(client, rows);
        }
    }
    c.stop();
}

// The reply to an INFO, read up to its OK (or its one refusal line); what came when nothing
// more comes within the client's wait.
std::string read_info(kv_client& c) {
    std::string got;
    for (;;) {
        const std::string line = c.read_lines(1);
        got += line;
        if (line.empty() || otpkv::read_reply(otpkv::command_kind::info, got).size == got.size()) {
            return got;
        }
    }
}

TEST_CASE("cluster: INFO through kv_server: another node's relayed as it answers it, a killed "
          "node's unavailable, a node not in the table no route; the rest goes on") {
    cluster c(three_nodes());
    kv_client via1 = c.client(0);
    exchange_each(via1, {
                            {"INFO n2 TREE\r\n", unknown},
                            {"INFO TREE n2 x\r\n", unknown},
                            {"INFO nobody\r\n", "ERROR no route\r\n"},
                            {"INFO JSON nobody\r\n", "ERROR no route\r\n"},
                            {"CREATE alpha\r\nCREATE sierra\r\n", ok + ok},
                        });
    // n2's INFO through n1, and n2's own: one JSON line naming n2, then OK.
    REQUIRE(via1.send_all("INFO JSON n2\r\nGET alpha k\r\n"));
    const std::string relayed = read_info(via1);
    OTPKV_CHECK_RECEIVES(via1, value_reply(""));
    kv_client direct = c.client(1);
    REQUIRE(direct.send_all("INFO JSON\r\n"));
    const std::string own = read_info(direct);
    for (const std::string& reply : {own, relayed}) {
        CHECK(reply.starts_with("{\"node\":\"n2\","));
        CHECK(reply.ends_with("}\r\nOK\r\n"));
        CHECK(std::count(reply.begin(), reply.end(), '\n') == 2);
    }
    // Text sections, through n1 and at n2 itself: n2's tree and its server.
    REQUIRE(via1.send_all("INFO TREE n2\r\n"));
    const std::string tree = read_info(via1);
    CHECK(tree.starts_with("# Tree\r\n"));
    CHECK(tree.find("registry") != std::string::npos);
    CHECK(tree.find("server") != std::string::npos);
    CHECK(tree.ends_with("\r\nOK\r\n"));
    REQUIRE(direct.send_all("INFO SERVER\r\n"));
    const std::string server = read_info(direct);
    CHECK(server.find("node:n2\r\n") != std::string::npos);

    // A killed node: unavailable within the wait, then at once; the others' buckets served.
    c.kill(2);
    OTPKV_CHECK_EXCHANGE(via1, "INFO TREE n3\r\n", unavailable("n3"));
    OTPKV_CHECK_EXCHANGE(via1, "INFO n3\r\nGET alpha k\r\nGET sierra k\r\nINFO TREE nobody\r\n",
                         unavailable("n3") + value_reply("") + unavailable("n3") +
                             "ERROR no route\r\n");
    kv_client via2 = c.client(1);
    OTPKV_CHECK_EXCHANGE(via2, "INFO STATS n3\r\n", unavailable("n3"));
    c.stop();
}

TEST_CASE("cluster: a bucket no route covers gets ERROR no route; the connection goes on") {
    cluster c(three_nodes());
    for (std::size_t via = 0; via < 3; ++via) {
        INFO("through " << c.name(via));
        kv_client client = c.client(via);
        const std::string mine = owner_letter[via] + "mine"s;
        exchange_each(client, {
                                  {"CREATE 0abc\r\n", no_route},
                                  {"CREATE " + mine + "\r\n", ok},
                                  {"PUT Zed k v\r\n", no_route},
                                  {"PUT " + mine + " k v\r\n", ok},
                                  {"GET Apple k\r\n", no_route}, // names are case-sensitive
                                  {"GET " + mine + " k\r\n", value_reply("v")},
                                  {"DELETE ~x k\r\n", no_route},
                                  {"GET \x80\xff k\r\n", no_route},
                                  {"SUBSCRIBE 9lives\r\n", no_route},
                                  {"DELETE " + mine + " k\r\n", ok},
                                  {"GET " + mine + " k\r\n", value_reply("")},
                              });
        // Pipelined, between requests for every node's buckets.
        exchange_pipelined(client, {
                                       {"CREATE abc\r\n", ok},
                                       {"GET 0abc k\r\n", no_route},
                                       {"CREATE kilo\r\n", ok},
                                       {"CREATE Zulu\r\n", no_route},
                                       {"CREATE tango\r\n", ok},
                                       {"PUT {x k v\r\n", no_route},
                                       {"GET tango k\r\n", value_reply("")},
                                   });
    }
    c.stop();
}

TEST_CASE("cluster: with --max-line above 1 MiB, a value that long goes through another node "
          "both ways, and to a subscriber through it") {
    const std::vector<std::string> big_lines{"--max-line", "3000000"};
    cluster c(three_nodes(), {{0, big_lines}, {1, big_lines}, {2, big_lines}});
    const std::string bucket = owner_letter[2] + "big"s; // n3's
    const std::string value(1'500'000, 'v');
    kv_client via = c.client(0);
    kv_client watcher = c.client(1);
    OTPKV_CHECK_EXCHANGE(via, "CREATE " + bucket + "\r\n", ok);
    int counter = 0;
    subscribe_synced(watcher, via, bucket, counter);
    OTPKV_CHECK_EXCHANGE(via, "PUT " + bucket + " k " + value + "\r\n", ok);
    OTPKV_CHECK_EXCHANGE(via, "GET " + bucket + " k\r\n", value_reply(value));
    OTPKV_CHECK_RECEIVES(watcher, "k SET TO " + value + "\r\n");
    kv_client owner = c.client(2);
    OTPKV_CHECK_EXCHANGE(owner, "GET " + bucket + " k\r\n", value_reply(value));
    c.stop();
}

TEST_CASE("cluster: kill -9 a node: its buckets get ERROR node n3 unavailable, the others keep "
          "working; restarted on its port, it serves again") {
    cluster c(three_nodes());
    kv_client via1 = c.client(0);
    kv_client via2 = c.client(1);
    // n1 has talked to n3 (its pooled connections are open); n2 never has.
    exchange_pipelined(via1,
                       {
                           {"CREATE alpha\r\nCREATE kilo\r\nCREATE sierra\r\n", ok + ok + ok},
                           {"PUT alpha k a1\r\nPUT kilo k k1\r\nPUT sierra k s1\r\n", ok + ok + ok},
                           {"GET sierra k\r\n", value_reply("s1")},
                       });
    const pid_t pid1 = c.pid(0);
    const pid_t pid2 = c.pid(1);

    const auto killed_at = steady::now();
    const exit_status st = c.kill(2);
    CHECK_MESSAGE(st.signal == SIGKILL, "n3 " << st.describe());
    for (kv_client* via : {&via1, &via2}) {
        // Within the exchange's wait (10 s, ten request timeouts): a reply, never a hang.
        OTPKV_CHECK_EXCHANGE(*via, "GET sierra k\r\n", unavailable("n3"));
        MESSAGE("ERROR node n3 unavailable " << ms_since(killed_at) << " ms after the kill");
    }

    // Now known down: every request for n3's buckets is refused, on both nodes; the
    // connection goes on (a refused SUBSCRIBE too).
    for (kv_client* via : {&via1, &via2}) {
        for (const std::string request :
             {"GET sierra k\r\n", "PUT sierra k x\r\n", "DELETE sierra k\r\n", "CREATE tango\r\n",
              "SUBSCRIBE sierra\r\n", "GET sierra k\r\n"}) {
            INFO("request \"" << escaped(request) << "\"");
            OTPKV_CHECK_EXCHANGE(*via, request, unavailable("n3"));
        }
        // The other nodes' buckets are served meanwhile, also between n3's in one write.
        exchange_pipelined(*via, {
                                     {"GET alpha k\r\n", value_reply("a1")},
                                     {"GET sierra k\r\n", unavailable("n3")},
                                     {"GET kilo k\r\n", value_reply("k1")},
                                 });
    }
    exchange_each(via2, {
                            {"PUT alpha k a2\r\n", ok},
                            {"PUT kilo k k2\r\n", ok},
                        });
    exchange_each(via1, {
                            {"GET alpha k\r\n", value_reply("a2")},
                            {"GET kilo k\r\n", value_reply("k2")},
                        });

    // Back on its port, empty (its buckets died with it): both nodes find it by themselves.
    c.restart(2);
    const polled back1 = poll_until(via1, "CREATE sierra\r\n", ok);
    check_polled(back1, "n1 reaching the restarted n3");
    const polled back2 = poll_until(via2, "GET sierra k\r\n", value_reply(""));
    check_polled(back2, "n2 reaching the restarted n3");
    MESSAGE("service back " << back1.ms << " ms (through n1) and " << back2.ms
                            << " ms (through n2) after the restart");
    exchange_each(via2, {
                            {"PUT sierra k s2\r\n", ok},
                            {"GET sierra k\r\n", value_reply("s2")},
                            {"GET alpha k\r\n", value_reply("a2")},
                        });
    exchange_each(via1, {
                            {"GET sierra k\r\n", value_reply("s2")},
                            {"GET kilo k\r\n", value_reply("k2")},
                        });
    kv_client owner = c.client(2);
    OTPKV_CHECK_EXCHANGE(owner, "GET sierra k\r\n", value_reply("s2"));
    // The others were never restarted.
    CHECK(c.pid(0) == pid1);
    CHECK(c.pid(1) == pid2);
    CHECK(c.running(0));
    CHECK(c.running(1));
    c.stop();
}

TEST_CASE("cluster: SIGSTOP a node: ERROR node n3 unavailable, then without forwarding; the "
          "others keep working; after SIGCONT it serves again, its data intact") {
    cluster c(three_nodes());
    kv_client via1 = c.client(0);
    kv_client via2 = c.client(1);
    exchange_pipelined(via1,
                       {
                           {"CREATE alpha\r\nCREATE kilo\r\nCREATE sierra\r\n", ok + ok + ok},
                           {"PUT alpha k a1\r\nPUT kilo k k1\r\nPUT sierra k s1\r\n", ok + ok + ok},
                           {"GET sierra k\r\n", value_reply("s1")},
                       });
    c.freeze(2);

    // Through n1, whose connections to n3 are open: the request goes out and is never
    // answered. While it waits, other clients' requests for other buckets are served.
    // (That nothing waits for it is shown without a clock by test_server_deferred.cpp and
    // test_client.cpp; here, each reply comes within the exchange's wait.)
    const auto asked = steady::now();
    REQUIRE(via1.send_all("GET sierra k\r\n"));
    {
        kv_client other = c.client(0);
        exchange_each(other, {{"GET alpha k\r\n", value_reply("a1")},
                              {"GET kilo k\r\n", value_reply("k1")},
                              {"PUT kilo k k2\r\n", ok}});
    }
    OTPKV_CHECK_RECEIVES(via1, unavailable("n3"));
    const double first1 = ms_since(asked);
    // Through n2, which has no connection to n3: connecting works (the kernel accepts for
    // the frozen process), the greeting is never answered.
    const auto asked2 = steady::now();
    OTPKV_CHECK_EXCHANGE(via2, "GET sierra k\r\n", unavailable("n3"));
    const double first2 = ms_since(asked2);
    MESSAGE("first ERROR node n3 unavailable after " << first1 << " ms (n1) and " << first2
                                                     << " ms (n2)");

    // Known down now: later requests are refused without being forwarded. A PUT forwarded to
    // the frozen node would wait in its socket and could run after SIGCONT: the value checked
    // there would not be "s1" then.
    for (kv_client* via : {&via1, &via2}) {
        OTPKV_CHECK_EXCHANGE(*via, "PUT sierra k unseen\r\n", unavailable("n3"));
        for (int i = 0; i < 5; ++i) {
            OTPKV_CHECK_EXCHANGE(*via, "GET sierra k\r\n", unavailable("n3"));
        }
        exchange_pipelined(*via, {
                                     {"GET alpha k\r\n", value_reply("a1")},
                                     {"GET sierra k\r\n", unavailable("n3")},
                                     {"GET kilo k\r\n", value_reply("k2")},
                                 });
    }

    // SIGCONT: both nodes use it again by themselves; what it held is still there.
    c.thaw(2);
    const polled back1 = poll_until(via1, "GET sierra k\r\n", value_reply("s1"));
    check_polled(back1, "n1 reaching the thawed n3");
    const polled back2 = poll_until(via2, "GET sierra k\r\n", value_reply("s1"));
    check_polled(back2, "n2 reaching the thawed n3");
    MESSAGE("service back " << back1.ms << " ms (through n1) and " << back2.ms
                            << " ms (through n2) after SIGCONT");
    exchange_each(via2, {
                            {"PUT sierra k s2\r\n", ok},
                            {"GET alpha k\r\n", value_reply("a1")},
                        });
    exchange_each(via1, {{"GET sierra k\r\n", value_reply("s2")}});
    kv_client owner = c.client(2);
    OTPKV_CHECK_EXCHANGE(owner, "GET sierra k\r\n", value_reply("s2"));
    c.stop();
}

TEST_CASE("cluster: 20 clients over the 3 nodes, 2,000 mixed operations each: every client "
          "reads its own writes") {
    cluster c(three_nodes());
    const std::vector<std::string> buckets = {"alpha", "juliet", "sierra"}; // n1, n2, n3
    {
        kv_client setup = c.client(0);
        exchange_pipelined(setup,
                           {{"CREATE alpha\r\nCREATE juliet\r\nCREATE sierra\r\n", ok + ok + ok}});
    }
    constexpr int clients = 20;
    constexpr int operations = 2'000;
    constexpr int keys = 8;
    std::vector<kv_client> conns;
    for (int i = 0; i < clients; ++i) {
        conns.push_back(c.client(static_cast<std::size_t>(i % 3)));
    }

    // Client i's keys are its own ("c<i>.<j>", in all three buckets), so its model of them
    // is exact: a GET must return what it last PUT there, or nothing after a DELETE or before
    // any PUT. It sends its operations in batches of 1 to 16 in one write (the replies must
    // come back in order too), and stops at its first wrong reply (the stream after it may
    // be out of step).
    struct outcome {
        int done = 0;
        int mismatches = 0;
        std::string first;
    };
    std::vector<outcome> outcomes(clients);
    std::vector<std::thread> threads;
    const auto start = steady::now();
    for (int i = 0; i < clients; ++i) {
        threads.emplace_back([&, i] {
            kv_client& conn = conns[static_cast<std::size_t>(i)];
            outcome& out = outcomes[static_cast<std::size_t>(i)];
            std::mt19937 random(static_cast<unsigned>(i) * 7919U + 17U);
            std::map<std::string, std::string> model;
            int n = 0;
            while (n < operations && out.mismatches == 0) {
                const int batch =
                    std::min(operations - n, std::uniform_int_distribution<int>(1, 16)(random));
                std::string requests;
                std::vector<std::pair<std::string, std::string>> expected; // request, reply
                for (int b = 0; b < batch; ++b, ++n) {
                    const std::string& bucket =
                        buckets[std::uniform_int_distribution<std::size_t>(0, 2)(random)];
                    const std::string key =
                        "c" + std::to_string(i) + "." +
                        std::to_string(std::uniform_int_distribution<int>(0, keys - 1)(random));
                    const int op = std::uniform_int_distribution<int>(0, 99)(random);
                    std::string request;
                    std::string reply;
                    if (op < 40) {
                        const std::string value = "v" + std::to_string(i) + "." + std::to_string(n);
                        request = "PUT " + bucket + " " + key + " " + value + "\r\n";
                        reply = ok;
                        model[bucket + " " + key] = value;
                    } else if (op < 80) {
                        request = "GET " + bucket + " " + key + "\r\n";
                        const auto found = model.find(bucket + " " + key);
                        reply = value_reply(found == model.end() ? "" : found->second);
                    } else {
                        request = "DELETE " + bucket + " " + key + "\r\n";
                        reply = ok;
                        model.erase(bucket + " " + key);
                    }
                    requests += request;
                    expected.emplace_back(std::move(request), std::move(reply));
                }
                const auto deadline = steady::now() + otpkv_test::default_wait;
                if (!conn.send_all(requests, until(deadline))) {
                    ++out.mismatches;
                    out.first = "client " + std::to_string(i) + " cannot send";
                    break;
                }
                for (const auto& [request, reply] : expected) {
                    const std::string got = conn.read_exact(reply.size(), until(deadline));
                    if (got != reply) {
                        ++out.mismatches;
                        out.first = "client " + std::to_string(i) + " (through n" +
                                    std::to_string(i % 3 + 1) + ") request \"" + escaped(request) +
                                    "\": " + otpkv_test::difference(got, reply);
                        break;
                    }
                    ++out.done;
                }
            }
        });
    }
    for (std::thread& t : threads) {
        t.join();
    }
    const double ms = ms_since(start);
    int done = 0;
    int mismatches = 0;
    for (const outcome& o : outcomes) {
        done += o.done;
        mismatches += o.mismatches;
        CHECK_MESSAGE(o.mismatches == 0, o.first);
    }
    MESSAGE(done << " operations by " << clients << " clients in " << ms << " ms");
    CHECK(mismatches == 0);
    CHECK(done == clients * operations);
    c.stop();
}

TEST_CASE("cluster: routing tables that disagree: a forwarded request runs where it lands, "
          "never forwarded again") {
    SUBCASE("n1 says a-z is n2's, n2 says a-z is n1's") {
        const std::vector<std::uint16_t> ports = unused_ports(2);
        cluster c({{"n1", ports[0], {route("a-z", "n2", ports[1])}},
                   {"n2", ports[1], {route("a-z", "n1", ports[0])}}});
        kv_client via1 = c.client(0);
        kv_client via2 = c.client(1);
        // Through n1: forwarded once, to n2, and run there (the bucket does not exist yet).
        const auto asked = steady::now();
        OTPKV_CHECK_EXCHANGE(via1, "GET apple k\r\n", not_found);
        MESSAGE("first forwarded reply after " << ms_since(asked) << " ms");
        exchange_each(via1, {
                                {"CREATE apple\r\n", ok},
                                {"PUT apple k from-n1\r\n", ok},
                                {"GET apple k\r\n", value_reply("from-n1")},
                            });
        // It lives on n2 only.
        kv_client peer1 = c.peer(0);
        kv_client peer2 = c.peer(1);
        OTPKV_CHECK_EXCHANGE(peer2, tagged("GET apple k\r\n"), answered(value_reply("from-n1")));
        OTPKV_CHECK_EXCHANGE(peer1, tagged("GET apple k\r\n"), answered(not_found));
        // Through n2 the same name goes to n1, where it does not exist; created through n2 it
        // lives on n1. Two buckets of one name, one per node, each reached from the other.
        exchange_each(via2, {
                                {"GET apple k\r\n", not_found},
                                {"CREATE apple\r\n", ok},
                                {"PUT apple k from-n2\r\n", ok},
                                {"GET apple k\r\n", value_reply("from-n2")},
                            });
        OTPKV_CHECK_EXCHANGE(peer1, tagged("GET apple k\r\n"), answered(value_reply("from-n2")));
        OTPKV_CHECK_EXCHANGE(peer2, tagged("GET apple k\r\n"), answered(value_reply("from-n1")));
        // Both still serve, many times over (pipelined; a request that looped would never be
        // answered, and the exchange would fail when its wait runs out).
        std::string requests;
        std::string replies;
        for (int i = 0; i < 200; ++i) {
            requests += "GET apple k\r\n";
            replies += value_reply("from-n1");
        }
        OTPKV_CHECK_EXCHANGE(via1, requests, replies);
        OTPKV_CHECK_EXCHANGE(via2, "GET apple k\r\n", value_reply("from-n2"));
        c.stop();
    }

    SUBCASE("a node's own entry names another node's address; the other node follows it to "
            "itself and is answered with the wrong name") {
        // Both nodes: a-m is n1's at n2's port, n-z is n2's (at n2's port, rightly).
        const std::vector<std::uint16_t> ports = unused_ports(2);
        const std::vector<std::string> table = {route("a-m", "n1", ports[1]),
                                                route("n-z", "n2", ports[1])};
        cluster c({{"n1", ports[0], table}, {"n2", ports[1], table}});
        kv_client via1 = c.client(0);
        kv_client via2 = c.client(1);
        // n1 knows its entries by its name: a-m runs on n1, whatever address the entry has.
        exchange_each(via1, {
                                {"CREATE apple\r\n", ok},
                                {"PUT apple k v\r\n", ok},
                                {"GET apple k\r\n", value_reply("v")},
                                {"CREATE november\r\n", ok}, // n2's, forwarded there
                                {"PUT november k w\r\n", ok},
                            });
        kv_client peer1 = c.peer(0);
        kv_client peer2 = c.peer(1);
        OTPKV_CHECK_EXCHANGE(peer1, tagged("GET apple k\r\n"), answered(value_reply("v")));
        OTPKV_CHECK_EXCHANGE(peer2, tagged("GET apple k\r\n"), answered(not_found));
        OTPKV_CHECK_EXCHANGE(peer2, tagged("GET november k\r\n"), answered(value_reply("w")));
        OTPKV_CHECK_EXCHANGE(peer1, tagged("GET november k\r\n"), answered(not_found));
        // n2 sends a-m to "n1" at its own port: it answers the greeting as n2, not n1, so
        // "n1" is down for n2; no request runs twice or loops.
        const auto asked = steady::now();
        OTPKV_CHECK_EXCHANGE(via2, "GET apple k\r\n", unavailable("n1"));
        MESSAGE("ERROR node n1 unavailable after " << ms_since(asked) << " ms");
        for (int i = 0; i < 3; ++i) {
            OTPKV_CHECK_EXCHANGE(via2, "PUT apple k x\r\n", unavailable("n1"));
        }
        OTPKV_CHECK_EXCHANGE(peer2, tagged("GET apple k\r\n"),
                             answered(not_found)); // still none on n2
        // Both still serve everything else.
        exchange_each(via2, {
                                {"GET november k\r\n", value_reply("w")},
                                {"CREATE zulu\r\n", ok},
                                {"PUT zulu k z\r\n", ok},
                            });
        exchange_each(via1, {
                                {"GET zulu k\r\n", value_reply("z")},
                                {"GET apple k\r\n", value_reply("v")},
                            });
        c.stop();
    }
}

TEST_CASE("cluster: SUBSCRIBE through a node that does not own the bucket") {
    cluster c(three_nodes());
    std::array<kv_client, 3> pub = {c.client(0), c.client(1), c.client(2)};
    exchange_pipelined(pub[1], {{"CREATE subs\r\n", ok}, {"CREATE sother\r\n", ok}}); // n3's
    int counter = 0;

    // Subscribed through n1 and through n2 (n3 owns the bucket).
    kv_client sub1 = c.client(0);
    kv_client sub2 = c.client(1);
    subscribe_synced(sub1, pub[1], "subs", counter);
    subscribe_synced(sub2, pub[0], "subs", counter);
    const std::string last_sync = "sync SET TO " + std::to_string(counter) + "\r\n";
    CHECK(read_through(sub1, last_sync).ends_with(last_sync)); // sub2's sync events

    // Events of writes made through every node, the owner included, in order.
    exchange_each(pub[0], {{"PUT subs k v1\r\n", ok}});
    exchange_each(pub[1], {{"PUT sother k x\r\n", ok}}); // another bucket of n3: no event
    exchange_each(pub[2], {{"PUT subs k v2\r\n", ok}});
    exchange_each(pub[1], {{"DELETE subs k\r\n", ok}});
    exchange_each(pub[2], {{"DELETE subs absent\r\n", ok}});
    exchange_each(pub[0], {{"PUT subs bin \xff\x00\x80\r\n"s, ok}});
    const std::string events =
        "k SET TO v1\r\nk SET TO v2\r\nk DELETED\r\nabsent DELETED\r\nbin SET TO \xff\x00\x80\r\n"s;
    OTPKV_CHECK_RECEIVES(sub1, events);
    OTPKV_CHECK_RECEIVES(sub2, events);
    CHECK(sub1.read_for(100ms).empty());
    CHECK(sub2.read_for(1ms).empty());

    // A missing remote bucket: NOT FOUND, and the connection stays an ordinary one.
    for (std::size_t via = 0; via < 2; ++via) {
        INFO("through " << c.name(via));
        kv_client probe = c.client(via);
        exchange_each(probe, {
                                 {"SUBSCRIBE snothing\r\n", not_found},
                                 {"GET subs bin\r\n", value_reply("\xff\x00\x80"s)},
                                 {"PUT subs after " + std::to_string(via) + "\r\n", ok},
                                 {"CREATE alpha\r\n", ok},
                             });
        const std::string after = "after SET TO " + std::to_string(via) + "\r\n";
        OTPKV_CHECK_RECEIVES(sub1, after);
        OTPKV_CHECK_RECEIVES(sub2, after);
        CHECK(probe.read_for(50ms).empty()); // no events for it
    }

    // The owner dies: each relayed subscriber is told, then its connection is closed (EOF),
    // within the usual wait.
    const auto killed_at = steady::now();
    c.kill(2);
    const auto deadline = steady::now() + otpkv_test::default_wait;
    for (kv_client* sub : {&sub1, &sub2}) {
        OTPKV_CHECK_BYTES(sub->read_to_eof(until(deadline)), unavailable("n3"));
        CHECK_MESSAGE(sub->end() == kv_client::ending::eof,
                      "the stream ended with " << otpkv_test::to_string(sub->end()));
    }
    MESSAGE("both relayed streams ended " << ms_since(killed_at)
                                          << " ms after the owner was "
                                             "killed");
    // The publishers' nodes go on.
    exchange_each(pub[0], {{"GET subs k\r\n", unavailable("n3")}, {"CREATE alpha\r\n", ok}});
    c.stop();
}

namespace {

// The TCP connections process `pid` has open to 127.0.0.1:`port` (established, from its
// side), found through /proc: its socket descriptors, matched in /proc/net/tcp by inode.
std::size_t connections_to(pid_t pid, std::uint16_t port) {
    std::set<std::string> inodes;
    const std::filesystem::path fds = "/proc/" + std::to_string(pid) + "/fd";
    std::error_code ec;
    for (const auto& fd : std::filesystem::directory_iterator(fds, ec)) {
        const std::string target = std::filesystem::read_symlink(fd.path(), ec).string();
        if (!ec && target.starts_with("socket:[")) {
            inodes.insert(target.substr(8, target.size() - 9));
        }
    }
    std::size_t count = 0;
    std::ifstream table("/proc/net/tcp");
    std::string line;
    std::getline(table, line); // the header
    while (std::getline(table, line)) {
        std::istringstream fields(line);
        std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
        fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
            timeout >> inode;
        const auto colon = remote.find(':');
        if (colon != std::string::npos && state == "01" && inodes.contains(inode) &&
            std::stoul(remote.substr(colon + 1), nullptr, 16) == port) {
            ++count;
        }
    }
    return count;
}

} // namespace

TEST_CASE("cluster: 60 SUBSCRIBEs through n1 to buckets of n3, which takes 20 connections: every "
          "subscriber gets every event in order, n3 still serves everyone, n1 holds a bounded "
          "number of connections to it") {
    cluster c(three_nodes(), {{2, {"--max-connections", "20"}}});
    kv_client pub = c.client(2); // n3's own client
    constexpr std::size_t subscribers = 60;
    constexpr std::size_t buckets = 3;
    for (std::size_t b = 0; b < buckets; ++b) {
        OTPKV_CHECK_EXCHANGE(pub, "CREATE sub" + std::to_string(b) + "\r\n", ok);
    }
    std::vector<kv_client> subs;
    for (std::size_t i = 0; i < subscribers; ++i) {
        subs.push_back(c.client(0));
        REQUIRE(subs.back().send_all("SUBSCRIBE sub" + std::to_string(i % buckets) + "\r\n"));
    }
    // Every subscription has taken once a PUT's event reaches it (a sync through each bucket,
    // repeated until all have seen one: a SUBSCRIBE is acknowledged by silence).
    std::vector<std::string> seen(subscribers);
    int sync = 0;
    const auto deadline = steady::now() + 10s;
    const auto all_subscribed = [&] {
        return std::all_of(seen.begin(), seen.end(), [](const auto& s) { return !s.empty(); });
    };
    while (!all_subscribed() && steady::now() < deadline) {
        ++sync;
        for (std::size_t b = 0; b < buckets; ++b) {
            OTPKV_CHECK_EXCHANGE(
                pub, "PUT sub" + std::to_string(b) + " sync " + std::to_string(sync) + "\r\n", ok);
        }
        for (std::size_t i = 0; i < subscribers; ++i) {
            seen[i] += subs[i].read_for(1ms);
        }
    }
    REQUIRE(all_subscribed());
    const std::string last_sync = "sync SET TO " + std::to_string(sync) + "\r\n";
    for (std::size_t i = 0; i < subscribers; ++i) {
        if (!seen[i].ends_with(last_sync)) {
            read_through(subs[i], last_sync);
        }
    }
    // n1 holds its pool to n3 (2 connections by default), whatever the number of streams.
    const std::size_t from_n1 = connections_to(c.pid(0), c.port(2));
    MESSAGE(from_n1 << " connections from n1 to n3 carry " << subscribers << " subscriptions");
    CHECK(from_n1 >= 1);
    CHECK(from_n1 <= 2);

    // Events of writes through every node, in order, to every subscriber of each bucket.
    std::array<kv_client, 2> others = {c.client(0), c.client(1)};
    std::array<std::string, buckets> events;
    for (std::size_t n = 0; n <= 50; ++n) {
        for (std::size_t b = 0; b < buckets; ++b) {
            kv_client& via = n % 3 == 2 ? pub : others[n % 3];
            const std::string bucket = "sub" + std::to_string(b);
            const std::string v = std::to_string(n);
            if (n % 5 == 4) {
                OTPKV_CHECK_EXCHANGE(via, "DELETE " + bucket + " k\r\n", ok);
                events[b] += "k DELETED\r\n";
            } else {
                OTPKV_CHECK_EXCHANGE(via, "PUT " + bucket + " k " + v + "\r\n", ok);
                events[b] += "k SET TO " + v + "\r\n";
            }
        }
    }
    for (std::size_t i = 0; i < subscribers; ++i) {
        INFO("subscriber " << i);
        OTPKV_CHECK_RECEIVES(subs[i], events[i % buckets]);
    }
    // n3 still serves its direct clients and n2's forwarded requests.
    std::vector<kv_client> direct;
    for (int i = 0; i < 5; ++i) {
        direct.push_back(c.client(2));
        OTPKV_CHECK_EXCHANGE(direct.back(), "GET sub0 k\r\n", value_reply("50"));
    }
    kv_client via2 = c.client(1);
    exchange_each(via2, {{"CREATE sdirect\r\n", ok},
                         {"PUT sdirect k v\r\n", ok},
                         {"GET sdirect k\r\n", value_reply("v")}});
    // Subscribers leaving cancel their streams at n3; the others go on.
    for (std::size_t i = 0; i < subscribers; i += 2) {
        subs[i].close();
    }
    OTPKV_CHECK_EXCHANGE(pub, "PUT sub1 k last\r\n", ok);
    for (std::size_t i = 1; i < subscribers; i += 2) {
        if (i % buckets == 1) {
            OTPKV_CHECK_RECEIVES(subs[i], "k SET TO last\r\n");
        }
    }
    CHECK(connections_to(c.pid(0), c.port(2)) <= 2);
    c.stop();
}

TEST_CASE("cluster: the peer handshake proves the cookie; that connection's requests run on that "
          "node") {
    cluster c(three_nodes());
    for (std::size_t i = 0; i < 3; ++i) {
        INFO("node " << c.name(i));
        kv_client client = c.client(i);
        // Lines that read like greetings but are none: unknown commands.
        exchange_each(client, {{"OTPKV-PEERS 1 x\r\n", unknown}, {"PEER 2 x\r\n", unknown}});
        // A handshake: then a bucket of n3's name (of n1's for n3) is made right here.
        kv_client peer = c.client(i);
        REQUIRE(handshake_as(peer, c.name((i + 1) % 3), c.name(i), process_cookie));
        exchange_each(peer, {
                                {tagged(i == 2 ? "CREATE apeer\r\n" : "CREATE tpeer\r\n", 7),
                                 answered(ok, 7)},
                                // Its heartbeat: an id alone.
                                {tagged("\r\n", 8), answered(unknown, 8)},
                            });
        // After the handshake a line without an id is no request of a peer: it does not
        // run, and the connection ends after `ERROR internal`.
        OTPKV_CHECK_EXCHANGE(peer, "CREATE tnoid\r\n", "ERROR internal\r\n");
        CHECK(peer.read_to_eof(2s) == "");
        CHECK(peer.end() == kv_client::ending::eof);
    }
    // Those buckets were made where the peer connections were, not on their owners.
    kv_client via3 = c.client(2);
    kv_client via1 = c.client(0);
    OTPKV_CHECK_EXCHANGE(via3, "GET tpeer k\r\n", not_found);
    OTPKV_CHECK_EXCHANGE(via1, "GET apeer k\r\n", not_found);
    OTPKV_CHECK_EXCHANGE(via3, "GET tnoid k\r\n", not_found);
    for (std::size_t i = 0; i < 3; ++i) {
        kv_client peer = c.peer(i);
        OTPKV_CHECK_EXCHANGE(peer, tagged(i == 2 ? "GET apeer k\r\n" : "GET tpeer k\r\n"),
                             answered(value_reply("")));
    }
    c.stop();
}

TEST_CASE("cluster: a client posing as a peer gets ERROR not a peer and the close, and what it "
          "sent after the greeting does not run") {
    cluster c(three_nodes());
    const std::string refused = "ERROR not a peer\r\n";
    const std::string nonce = otpkv::detail::new_peer_nonce();
    // n1 owns a-i: buckets of n2 (j-r) and of no route (A-Z) must not be made on n1.
    const std::vector<std::string> attempts = {
        "OTPKV-PEER 1 x\r\nCREATE jfake1\r\nCREATE Zfake1\r\n", // the old greeting
        "OTPKV-PEER 1 n2\r\nCREATE jfake2\r\nCREATE Zfake2\r\n",
        "OTPKV-PEER 2 x " + nonce + "\r\nCREATE jfake3\r\n",  // not a node of the table
        "OTPKV-PEER 2 n1 " + nonce + "\r\nCREATE jfake4\r\n", // n1 itself
    };
    for (const std::string& attempt : attempts) {
        CAPTURE(escaped(attempt));
        kv_client attacker = c.client(0);
        REQUIRE(attacker.send_all(attempt));
        OTPKV_CHECK_BYTES(attacker.read_to_eof(), refused);
    }
    // A well-formed greeting as n2, then a proof made with another cookie, with requests
    // pipelined behind it: the answer, then the refusal, then EOF.
    kv_client forger = c.client(0);
    const std::string mine = otpkv::detail::new_peer_nonce();
    REQUIRE(forger.send_all(otpkv::peer_greeting_line("n2", mine)));
    const std::string line = forger.read_lines(1);
    const auto answer = otpkv::parse_peer_answer(line);
    REQUIRE(answer.has_value());
    CHECK(answer->name == "n1");
    // Its proof cannot be checked without the cookie: with the wrong one it does not match.
    CHECK_FALSE(otpkv::peer_proof_matches(
        otpkv::peer_accept_proof("guess", "n1", "n2", mine, answer->nonce), answer->proof));
    REQUIRE(forger.send_all(otpkv::peer_proof_line(otpkv::peer_connect_proof("guess", "n2", "n1",
                                                                             mine, answer->nonce)) +
                            "CREATE jfake5\r\nCREATE Zfake5\r\n"));
    OTPKV_CHECK_BYTES(forger.read_to_eof(), refused);
    // Nothing ran: no fake bucket on n1 (asked over a real peer connection) or on n2.
    kv_client peer1 = c.peer(0);
    kv_client peer2 = c.peer(1);
    std::uint64_t id = 0;
    for (const std::string name :
         {"jfake1", "Zfake1", "jfake2", "Zfake2", "jfake3", "jfake4", "jfake5", "Zfake5"}) {
        CAPTURE(name);
        ++id;
        OTPKV_CHECK_EXCHANGE(peer1, tagged("GET " + name + " k\r\n", id), answered(not_found, id));
        OTPKV_CHECK_EXCHANGE(peer2, tagged("GET " + name + " k\r\n", id), answered(not_found, id));
    }
    // And the cluster works as before, through n1.
    kv_client client = c.client(0);
    exchange_each(client, {{"CREATE jreal\r\n", ok},
                           {"PUT jreal k v\r\n", ok},
                           {"GET jreal k\r\n", value_reply("v")}});
    c.stop();
}

// ---------------------------------------------------------------------------------------
// The cluster cookie
// ---------------------------------------------------------------------------------------

TEST_CASE("cluster: nodes with different cookies cannot talk (each other's buckets are "
          "unavailable, and both say why); with the same cookie they can") {
    const std::vector<std::uint16_t> ports = unused_ports(2);
    const std::vector<std::string> table = {route("a-m", "n1", ports[0]),
                                            route("n-z", "n2", ports[1])};
    auto n1 = std::make_unique<kv_process>(node_args("n1", ports[0], table, {"--cookie", "alpha"}),
                                           std::vector<std::string>{}, false);
    auto n2 = std::make_unique<kv_process>(node_args("n2", ports[1], table, {"--cookie", "beta"}),
                                           std::vector<std::string>{}, false);
    kv_client c1(ports[0]);
    kv_client c2(ports[1]);
    exchange_each(c1, {{"CREATE nut\r\n", "ERROR node n2 unavailable\r\n"},
                       {"CREATE apple\r\n", ok},
                       {"PUT apple k 1\r\n", ok}});
    exchange_each(
        c2, {{"GET apple k\r\n", "ERROR node n1 unavailable\r\n"}, {"GET nut k\r\n", not_found}});
    // Nothing was made where it does not belong: n2, asked with its own cookie, has no apple.
    kv_client p2(ports[1]);
    REQUIRE(handshake_as(p2, "n1", "n2", "beta"));
    exchange_each(p2, {{tagged("GET apple k\r\n"), answered(not_found)}});
    n2.reset(); // killed: its log is read below from a clean stop
    {
        const exit_status st = n1->stop();
        CHECK(st.clean());
        CHECK_MESSAGE(st.err.find(" warning event=peer_refused node=n2 address=127.0.0.1:" +
                                  std::to_string(ports[1]) +
                                  " reason=\"gave a wrong proof (is its cookie another?)\"\n") !=
                          std::string::npos,
                      st.err);
    }
    // n2 with beta against a new n1 with alpha once more, for n2's side of the log.
    n1 = std::make_unique<kv_process>(node_args("n1", ports[0], table, {"--cookie", "alpha"}),
                                      std::vector<std::string>{}, false);
    n2 = std::make_unique<kv_process>(node_args("n2", ports[1], table, {"--cookie", "beta"}),
                                      std::vector<std::string>{}, false);
    kv_client c2b(ports[1]);
    exchange_each(c2b, {{"GET apple k\r\n", "ERROR node n1 unavailable\r\n"}});
    {
        const exit_status st = n2->stop();
        CHECK(st.clean());
        CHECK_MESSAGE(st.err.find(" warning event=peer_refused node=n1 address=127.0.0.1:" +
                                  std::to_string(ports[0]) + " reason=\"gave a wrong proof") !=
                          std::string::npos,
                      st.err);
    }

    // The same cookie: n2 again, with alpha, on its port; n1 finds it by itself.
    n2 = std::make_unique<kv_process>(node_args("n2", ports[1], table, {"--cookie", "alpha"}),
                                      std::vector<std::string>{}, false);
    kv_client c1b(ports[0]);
    OTPKV_CHECK_BYTES(retry_until(c1b, "CREATE nut\r\n", ok), ok);
    exchange_each(c1b,
                  {{"PUT nut k v\r\n", ok}, {"CREATE apple\r\n", ok}, {"PUT apple k 2\r\n", ok}});
    kv_client c2c(ports[1]);
    exchange_each(c2c,
                  {{"GET nut k\r\n", value_reply("v")}, {"GET apple k\r\n", value_reply("2")}});
    stop_cleanly(*n2);
    stop_cleanly(*n1);
}

TEST_CASE("cluster: nodes started together with a fresh HOME make one ~/.otpkv.cookie, mode "
          "0400, and agree on it") {
    for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        temp_home home;
        const std::vector<std::uint16_t> ports = unused_ports(3);
        const std::vector<std::string> table = {route("a-i", "n1", ports[0]),
                                                route("j-r", "n2", ports[1]),
                                                route("s-z", "n3", ports[2])};
        auto nodes = kv_process::start_together({node_args("n1", ports[0], table),
                                                 node_args("n2", ports[1], table),
                                                 node_args("n3", ports[2], table)},
                                                {"HOME=" + home.path()});
        // One file, no temporary one left; read-only for its owner; 32 random letters.
        CHECK(home.files() == std::vector<std::string>{".otpkv.cookie"});
        struct ::stat st {};
        REQUIRE(::stat(home.cookie_path().c_str(), &st) == 0);
        CHECK((st.st_mode & 0777U) == 0400U);
        const std::string cookie = contents(home.cookie_path());
        CHECK(cookie.size() == 32);
        CHECK(std::all_of(cookie.begin(), cookie.end(),
                          [](char ch) { return ch >= 'A' && ch <= 'Z'; }));
        // All three use it: requests are forwarded every way, and it makes a peer of each.
        kv_client via1(ports[0]);
        kv_client via3(ports[2]);
        exchange_each(via1, {{"CREATE jam\r\n", ok}, {"CREATE soup\r\n", ok}});
        exchange_each(via3, {{"CREATE apple\r\n", ok}, {"GET jam k\r\n", value_reply("")}});
        for (std::size_t i = 0; i < 3; ++i) {
            kv_client peer(ports[i]);
            CHECK(handshake_as(peer, i == 0 ? "n2" : "n1", "n" + std::to_string(i + 1), cookie));
        }
        // Exactly one of them made it, and said so.
        int made = 0;
        for (auto& n : nodes) {
            const exit_status status = n->stop();
            CHECK_MESSAGE(status.clean(), status.describe());
            made += status.err.find("kv_server: made a new cluster cookie in " +
                                    home.cookie_path()) != std::string::npos
                        ? 1
                        : 0;
        }
        CHECK(made == 1);
    }
}

TEST_CASE("kv_server: the cookie's flags, variables and files") {
    const std::vector<std::uint16_t> ports = unused_ports(1);
    const std::vector<std::string> table = {route("a-m", "n1", ports[0]), route("n-z", "n2", 1)};
    const std::vector<std::string> no_cookie = {"OTPKV_COOKIE="}; // nor the tests' own
    struct bad {
        std::vector<std::string> args;
        std::vector<std::string> env;
        int code;
        std::string message;
    };
    temp_home home;
    const std::string empty_file = home.path() + "/empty";
    std::ofstream(empty_file) << " \n";
    for (const bad& b : std::vector<bad>{
             {{"--cookie="}, {}, 2, "kv_server: --cookie: expected a cookie, got ''"},
             {{},
              {"OTPKV_COOKIE=", "OTPKV_COOKIE_FILE=" + home.path() + "/none"},
              2,
              "kv_server: OTPKV_COOKIE_FILE: cannot open '" + home.path() + "/none'"},
             {{"--cookie-file", empty_file},
              {},
              2,
              "kv_server: --cookie-file: '" + empty_file + "' holds no cookie"},
             {{"--cookie", "x", "--cookie-file", empty_file},
              {},
              2,
              "kv_server: --cookie and --cookie-file: give one, not both"},
             {{}, {"OTPKV_COOKIE=", "HOME="}, 1, "kv_server: no cluster cookie: HOME is not set"},
         }) {
        CAPTURE(b.message);
        const exit_status st = otpkv_test::run_kv_server(node_args("n1", 0, table, b.args), b.env);
        CHECK(st.code == b.code);
        CHECK_MESSAGE(st.err.starts_with(b.message), st.err);
    }
    // A node alone needs no cookie (it accepts no peer): it starts without a HOME.
    {
        kv_process alone({"--node", "n1"}, {"OTPKV_COOKIE=", "HOME="});
        stop_cleanly(alone);
    }
    // A cookie file that others may read is used, with a warning.
    const std::string loose = home.path() + "/loose";
    std::ofstream(loose) << "loose-cookie\n";
    REQUIRE(::chmod(loose.c_str(), 0644) == 0);
    kv_process warned(node_args("n1", ports[0], table, {"--cookie-file", loose}), no_cookie, false);
    kv_client peer(ports[0]);
    CHECK(handshake_as(peer, "n2", "n1", "loose-cookie"));
    const exit_status st = warned.stop();
    CHECK(st.clean());
    CHECK_MESSAGE(st.err.find("kv_server: warning: the cookie file '" + loose +
                              "' has mode 0644: others than its owner may read or change it "
                              "(chmod 400 '" +
                              loose + "')") != std::string::npos,
                  st.err);
}
