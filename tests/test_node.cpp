// SPDX-License-Identifier: MIT
// The node (node.hpp) in process, on loopback with ephemeral ports: its supervision tree
// (registry, tasks, router, server under rest_for_one), what restarts when each child
// crashes, start failures (a port in use, an address that is none), stop and its order, the
// root's restart intensity, and the client options reaching the router of a node that
// forwards to another. Every wait is bounded; every check is an outcome (ids, bytes,
// orders), none a duration. (The real kv_server process: tests/test_kv_server*.cpp.)
#include "kv_process.hpp"
#include "support.hpp"

#include <otpkv/node.hpp>

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <vector>

using otpkv::exit_reason;
using otpkv::process_id;
using otpkv_test::eventually;
using otpkv_test::guide_replies;
using otpkv_test::guide_requests;
using otpkv_test::journal;
using otpkv_test::kv_client;
using namespace std::chrono_literals;

namespace {

// One node, everything local, on an ephemeral port, with one event loop.
otpkv::node_config local(std::string name = "n1") {
    otpkv::node_config c;
    c.node = std::move(name);
    c.port = 0;
    c.threads = 1;
    return c;
}

std::shared_ptr<otpkv::node> start_node(otpkv::node_config config,
                                        otpkv::supervisor_options root = {},
                                        otpkv::client_options client = {}) {
    auto n = otpkv::node::start(std::move(config), std::move(root), std::move(client));
    REQUIRE(n.has_value());
    return std::move(n).value();
}

// The root's children by id: their pids (none while one is not running).
std::map<std::string, process_id> pids(otpkv::node& n) {
    std::map<std::string, process_id> out;
    for (const otpkv::child_info& c : n.root().which_children()) {
        out[c.id] = c.pid;
    }
    return out;
}

// Waits until all four children run again, those named in `restarted` as new processes and
// the others as the same ones as in `before`; true if that came (and stays so: nothing else
// crashed).
bool restarted_only(otpkv::node& n, const std::map<std::string, process_id>& before,
                    const std::set<std::string>& restarted) {
    return eventually(
        [&] {
            const auto now = pids(n);
            if (now.size() != before.size()) {
                return false;
            }
            for (const auto& [id, pid] : now) {
                if (!pid || (restarted.count(id) != 0) == (pid == before.at(id))) {
                    return false;
                }
            }
            // The node's accessors name the same processes (they are set by the start
            // functions, before the supervisor records the child).
            return n.registry() && n.registry()->id() == now.at("registry") && n.tasks() &&
                   n.tasks()->id() == now.at("tasks") && n.router() &&
                   n.router()->id() == now.at("router") && n.server() &&
                   n.server()->id() == now.at("server");
        },
        10s);
}

// Whether something accepts a connection on 127.0.0.1:`port` now (loopback answers a
// connect at once, accepted or refused).
bool accepting(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool connected =
        ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return connected;
}

} // namespace

TEST_CASE("node: the tree is registry, tasks, router and server, in that order, all running; "
          "it serves the guide's session on its port") {
    auto n = start_node(local("n1"));
    CHECK(n->alive());
    std::vector<std::string> ids;
    for (const otpkv::child_info& c : n->root().which_children()) {
        ids.push_back(c.id);
        CHECK(c.pid);
        CHECK_FALSE(c.restarting);
    }
    CHECK(ids == std::vector<std::string>{"registry", "tasks", "router", "server"});
    CHECK(n->root().count_children() == otpkv::child_counts{4, 4, 2, 2});
    REQUIRE(restarted_only(*n, pids(*n), {})); // the accessors name those children

    CHECK(n->config() == local("n1"));
    const std::uint16_t port = n->port();
    REQUIRE(port != 0);
    CHECK(n->address() == "127.0.0.1:" + std::to_string(port));
    CHECK(n->server()->port() == port);
    CHECK(n->ready_line() == "otpkv node n1 listening on 127.0.0.1:" + std::to_string(port));
    CHECK(n->router()->self() == "n1");
    CHECK(n->router()->routes().empty());
    CHECK(n->router()->registry() == n->registry()); // the router serves this registry

    kv_client c(port);
    OTPKV_CHECK_EXCHANGE(c, guide_requests, guide_replies);
    CHECK(n->registry()->lookup("shopping") != nullptr); // what clients made is the node's
    auto answer = n->tasks()->async([] { return 42; });
    REQUIRE(answer);
    CHECK(answer->await() == 42);
    CHECK(n->stop() == exit_reason::shutdown());
}

TEST_CASE("node: a crashed server alone is restarted, on the port first bound, the data "
          "untouched") {
    auto n = start_node(local());
    const std::uint16_t port = n->port();
    {
        kv_client c(port);
        OTPKV_CHECK_EXCHANGE(c, "CREATE b\nPUT b k v\n", "OK\r\nOK\r\n");
    }
    for (int crash = 0; crash < 2; ++crash) {
        CAPTURE(crash);
        const auto before = pids(*n);
        n->server()->stop(exit_reason::error("crash"));
        REQUIRE(restarted_only(*n, before, {"server"}));
        CHECK(n->port() == port); // config.port was 0: the first port is kept
        kv_client c(port);
        OTPKV_CHECK_EXCHANGE(c, "GET b k\n", "v\r\nOK\r\n");
    }
    CHECK(n->stop() == exit_reason::shutdown());
}

TEST_CASE("node: a crashed router takes the server with it; the registry and the tasks stay") {
    auto n = start_node(local());
    const std::uint16_t port = n->port();
    {
        kv_client c(port);
        OTPKV_CHECK_EXCHANGE(c, "CREATE b\nPUT b k v\n", "OK\r\nOK\r\n");
    }
    const auto registry = n->registry();
    const auto before = pids(*n);
    n->router()->stop(exit_reason::error("crash"));
    REQUIRE(restarted_only(*n, before, {"router", "server"}));
    CHECK(n->registry() == registry);
    CHECK(n->router()->registry() == registry); // the new router serves the same registry
    CHECK(n->port() == port);
    kv_client c(port);
    OTPKV_CHECK_EXCHANGE(c, "GET b k\n", "v\r\nOK\r\n");
    CHECK(n->stop() == exit_reason::shutdown());
}

TEST_CASE("node: a crashed task supervisor takes the router and the server with it, not the "
          "registry") {
    auto n = start_node(local());
    const std::uint16_t port = n->port();
    {
        kv_client c(port);
        OTPKV_CHECK_EXCHANGE(c, "CREATE b\nPUT b k v\n", "OK\r\nOK\r\n");
    }
    const auto before = pids(*n);
    n->tasks()->stop(exit_reason::error("crash"));
    REQUIRE(restarted_only(*n, before, {"tasks", "router", "server"}));
    kv_client c(port);
    OTPKV_CHECK_EXCHANGE(c, "GET b k\n", "v\r\nOK\r\n");
    auto answer = n->tasks()->async([] { return 7; });
    REQUIRE(answer);
    CHECK(answer->await() == 7);
    CHECK(n->stop() == exit_reason::shutdown());
}

TEST_CASE("node: a crashed registry takes everything after it down; its buckets are gone") {
    auto n = start_node(local());
    const std::uint16_t port = n->port();
    {
        kv_client c(port);
        OTPKV_CHECK_EXCHANGE(c, "CREATE b\nPUT b k v\n", "OK\r\nOK\r\n");
    }
    const auto bucket = n->registry()->lookup("b");
    REQUIRE(bucket != nullptr);
    const auto before = pids(*n);
    n->registry()->stop(exit_reason::error("crash"));
    REQUIRE(restarted_only(*n, before, {"registry", "tasks", "router", "server"}));
    CHECK_FALSE(bucket->alive()); // stopped with its registry
    CHECK(n->router()->registry() == n->registry());
    CHECK(n->port() == port);
    kv_client c(port);
    OTPKV_CHECK_EXCHANGE(c, "GET b k\n", "NOT FOUND\r\n");
    OTPKV_CHECK_EXCHANGE(c, "CREATE b\nGET b k\n", "OK\r\n\r\nOK\r\n"); // a fresh registry
    CHECK(n->stop() == exit_reason::shutdown());
}

TEST_CASE("node: stop ends the server, the router, the tasks, then the registry; clients get "
          "EOF and the port is closed") {
    auto n = start_node(local());
    const std::uint16_t port = n->port();
    kv_client c(port);
    OTPKV_CHECK_EXCHANGE(c, "CREATE b\n", "OK\r\n");
    const auto bucket = n->registry()->lookup("b");
    REQUIRE(bucket != nullptr);

    // Each child, as it exits, notes which of the others have exited already. A monitor
    // may run a little after its child's exit is recorded, but the root records each exit
    // before it stops the next child: so the ones stopped earlier are always seen gone.
    const std::vector<std::string> order = {"server", "router", "tasks", "registry"};
    std::map<std::string, std::shared_ptr<otpkv::process>> child;
    for (const otpkv::child_info& info : n->root().which_children()) {
        child[info.id] = info.child;
    }
    REQUIRE(child.size() == 4);
    journal seen;
    std::vector<otpkv::monitor_handle> watches;
    for (const std::string& id : order) {
        watches.push_back(child[id]->monitor([&, id](const exit_reason& r) {
            std::string gone;
            for (const std::string& other : order) {
                if (other != id && !child[other]->alive()) {
                    gone += " " + other;
                }
            }
            seen.add(id + " (" + otpkv::to_string(r) + ") after:" + gone);
        }));
    }

    CHECK(n->stop(exit_reason::shutdown("maintenance")) == exit_reason::shutdown("maintenance"));
    CHECK_FALSE(n->alive());
    REQUIRE(eventually([&] { return seen.size() == 4; }));
    std::map<std::string, std::string> by_child;
    for (const std::string& line : seen.take()) {
        by_child[line.substr(0, line.find(' '))] = line;
    }
    for (std::size_t i = 0; i < order.size(); ++i) {
        const std::string& line = by_child[order[i]];
        CAPTURE(line);
        CHECK(line.find("(shutdown)") != std::string::npos);
        for (std::size_t j = 0; j < i; ++j) {
            CHECK(line.find(" " + order[j]) != std::string::npos); // stopped before it
        }
    }
    CHECK_FALSE(bucket->alive()); // the registry's buckets go with it

    CHECK(c.read_to_eof().empty());
    CHECK(c.end() == kv_client::ending::eof);
    CHECK_FALSE(accepting(port));
    CHECK(n->registry() == nullptr);
    CHECK(n->tasks() == nullptr);
    CHECK(n->router() == nullptr);
    CHECK(n->server() == nullptr);
    CHECK(n->stop() == exit_reason::shutdown("maintenance")); // stopping again: the same
}

TEST_CASE("node: dropping the last reference stops the tree") {
    auto n = start_node(local());
    const std::uint16_t port = n->port();
    const auto server = n->server();
    const auto registry = n->registry();
    const auto root_exit = std::make_shared<journal>();
    const otpkv::monitor_handle watch =
        n->root().monitor([root_exit](const exit_reason& r) { root_exit->add(to_string(r)); });
    n.reset();
    CHECK_FALSE(server->alive());
    CHECK_FALSE(registry->alive());
    CHECK(eventually([&] { return root_exit->size() == 1; }));
    CHECK(root_exit->take() == std::vector<std::string>{"shutdown"});
    CHECK_FALSE(accepting(port));
}

TEST_CASE("node: start fails on a port in use, naming the address; the other node goes on") {
    auto other = start_node(local("n0"));
    const std::uint16_t port = other->port();
    otpkv::node_config taken = local("n1");
    taken.port = port;
    const auto failed = otpkv::node::start(taken);
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().code == otpkv::errc::start_failed);
    const exit_reason& why = failed.error().reason;
    CHECK(why.what() == exit_reason::kind::error);
    CHECK(why.detail().find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
    REQUIRE(why.exception() != nullptr);
    try {
        std::rethrow_exception(why.exception());
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == EADDRINUSE);
    } catch (...) {
        FAIL("not a std::system_error");
    }
    {
        kv_client c(port);
        OTPKV_CHECK_EXCHANGE(c, "CREATE b\n", "OK\r\n");
    }
    CHECK(other->registry()->lookup("b") != nullptr); // it was the other node that answered
    CHECK(other->stop() == exit_reason::shutdown());

    // Once it is free, a node starts there.
    auto again = start_node(taken);
    CHECK(again->port() == port);
    kv_client c(port);
    OTPKV_CHECK_EXCHANGE(c, "GET b k\n", "NOT FOUND\r\n");
    CHECK(again->stop() == exit_reason::shutdown());
}

TEST_CASE("node: start fails for a bind address that is not an IP literal") {
    otpkv::node_config bad = local();
    bad.bind = "localhost";
    const auto failed = otpkv::node::start(bad);
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().code == otpkv::errc::start_failed);
    CHECK(failed.error().reason.what() == exit_reason::kind::error);
    CHECK(failed.error().reason.detail().find("localhost") != std::string::npos);
}

TEST_CASE("node: past the root's restart intensity the node exits, and its port closes") {
    otpkv::manual_clock clock;
    auto n = start_node(local(), {.max_restarts = 1, .max_seconds = 5s, .clock = clock.function()});
    const std::uint16_t port = n->port();
    const auto node_exit = std::make_shared<journal>();
    const otpkv::monitor_handle watch =
        n->monitor([node_exit](const exit_reason& r) { node_exit->add(to_string(r)); });

    // One restart in the window is allowed; the window then moves past it.
    auto before = pids(*n);
    n->server()->stop(exit_reason::error("crash"));
    REQUIRE(restarted_only(*n, before, {"server"}));
    clock.advance(10s);
    before = pids(*n);
    n->server()->stop(exit_reason::error("crash"));
    REQUIRE(restarted_only(*n, before, {"server"}));
    CHECK(n->alive());
    CHECK(node_exit->size() == 0);

    // A second one within the window is one too many: the root gives up, and the node
    // exits with it.
    n->server()->stop(exit_reason::error("crash"));
    REQUIRE(eventually([&] { return node_exit->size() == 1; }, 10s));
    CHECK(node_exit->take() == std::vector<std::string>{"shutdown"});
    CHECK_FALSE(n->alive());
    CHECK(n->exited() == exit_reason::shutdown());
    CHECK(n->server() == nullptr);
    CHECK(n->registry() == nullptr);
    CHECK_FALSE(accepting(port));
}

TEST_CASE("node: a node with routes forwards to the node that owns a bucket, with the client "
          "options it was started with") {
    otpkv::node_config c2 = local("n2");
    // Everything local; the entry that never wins names n1, so n1 is a peer of n2.
    c2.routes = {{0, 255, "n2", "127.0.0.1", 1}, {'a', 'a', "n1", "127.0.0.1", 1}};
    c2.cookie = "node-test-cookie";
    auto n2 = start_node(c2);
    otpkv::node_config c1 = local("n1");
    c1.routes = {{'a', 'm', "n1", "127.0.0.1", 1}, {'n', 'z', "n2", "127.0.0.1", n2->port()}};
    c1.cookie = "node-test-cookie";
    otpkv::client_options client;
    client.connections = 3;
    client.heartbeat = 0ms;
    auto n1 = start_node(c1, {}, client);
    CHECK(n1->router()->nodes() == std::vector<otpkv::peer_node>{{"n2", "127.0.0.1", n2->port()}});

    kv_client via1(n1->port());
    OTPKV_CHECK_EXCHANGE(via1, "CREATE nut\nPUT nut k v\nGET nut k\n", "OK\r\nOK\r\nv\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(via1, "CREATE apple\nGET Zebra k\n", "OK\r\nERROR no route\r\n");
    CHECK(n2->registry()->lookup("nut") != nullptr); // n-z lives on n2
    CHECK(n1->registry()->lookup("nut") == nullptr);
    CHECK(n1->registry()->lookup("apple") != nullptr); // a-m on n1
    CHECK(n2->registry()->lookup("apple") == nullptr);
    CHECK(n1->router()->status("n2") == otpkv::node_status::up);

    // The pool has the size the client options gave.
    n1->router()->connect_all();
    CHECK(eventually([&] { return n2->server()->stats().connections == 3; }));

    // n2's crash is n1's peer going away; restarted on its port, n2 is used again.
    const auto before = pids(*n2);
    n2->registry()->stop(exit_reason::error("crash"));
    REQUIRE(restarted_only(*n2, before, {"registry", "tasks", "router", "server"}));
    // Until then its buckets get `ERROR node n2 unavailable`, one line, like OK.
    std::string got;
    const bool back = eventually(
        [&] {
            got = via1.send_all("CREATE nut\n") ? via1.read_lines(1) : "(cannot send)";
            return got == "OK\r\n";
        },
        10s);
    CHECK_MESSAGE(back, "the last reply: " << otpkv::escaped(got));
    CHECK(n2->registry()->lookup("nut") != nullptr);
    CHECK(n1->stop() == exit_reason::shutdown());
    CHECK(n2->stop() == exit_reason::shutdown());
}
