// SPDX-License-Identifier: MIT
// Chapter "Distributed tasks and tags" of the guide: KV.Router, from a host program.
//
// The guide's last chapter spreads buckets over nodes by the first byte of their names.
// This program starts a cluster of three nodes inside itself (the `node` that kv_server
// runs), each on 127.0.0.1 on a port the kernel picks, and then acts as node n1 through a
// router: n1's buckets are run right here, in n1's registry; the others' requests go over
// loopback to their owner, and every reply comes back parsed, as a `routed_reply`. It
// stores and reads a bucket on each node, shows where each bucket lives, asks for what no
// route covers, stops n3 and asks again, and stops the rest.
//
//   ./06_router
#include <otpkv/command.hpp>
#include <otpkv/node.hpp>
#include <otpkv/router.hpp>

#include <algorithm>
#include <initializer_list>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

// The cluster cookie: every node of a cluster is given the same secret, and a connection
// between nodes starts with a handshake in which both prove they know it (kv_server reads
// it from ~/.otpkv.cookie when it is not given).
const std::string cookie = "example-cookie";

// One node, as `kv_server --node NAME --port 0 --threads 1` would start it. Its own routing
// table keeps every bucket here: the nodes' ports are not known before they start, so here
// only the router below has the whole table. A node runs whatever lands on it, and a request
// the router forwards lands on its owner. The second entry never wins (the first covers
// every byte); it names n1, the node the router speaks for, because a node accepts only the
// nodes of its table as peers. (A cluster on fixed ports gives every node the same table:
// README.md, "Running a cluster".)
std::shared_ptr<otpkv::node> start_node(const std::string& name) {
    otpkv::node_config config;
    config.node = name;
    config.port = 0;
    config.threads = 1;
    config.routes = {{0, 255, name, "127.0.0.1", 1}, {0, 0, "n1", "127.0.0.1", 1}};
    config.cookie = cookie;
    auto started = otpkv::node::start(config);
    if (!started) {
        std::cerr << "cannot start node " << name << ": "
                  << otpkv::to_string(started.error().reason) << "\n";
        return nullptr;
    }
    return std::move(started).value();
}

// A routing table entry, `FIRST-LAST=NAME@HOST:PORT`, for a running node.
otpkv::route_entry route(std::string_view range, const otpkv::node& n) {
    return otpkv::parse_route(std::string(range) + "=" + n.config().node + "@" + n.address())
        .value();
}

// Which node a bucket's requests go to. route() only reads the table: no request is sent.
std::string owner(const otpkv::router& r, std::string_view bucket) {
    const otpkv::route_target target = r.route(bucket);
    if (target.where == otpkv::route_target::kind::local) {
        return r.self() + " (here)";
    }
    if (target.where == otpkv::route_target::kind::remote) {
        return r.nodes()[target.node].name;
    }
    return "no node: no route covers its first byte";
}

// Prints a call and what came back: the reply's exact bytes, and a GET's value.
void show(std::string_view call, const otpkv::routed_reply& reply) {
    std::cout << call << " -> \"" << otpkv::escaped(reply.bytes) << "\"";
    if (reply.kind == otpkv::reply_kind::value) {
        std::cout << ", value \"" << reply.value << "\"";
    }
    std::cout << (reply.ok() ? "" : ", not ok") << "\n";
}

// The buckets a node holds, sorted.
void print_buckets(const otpkv::node& n) {
    std::vector<std::string> names = n.registry()->names();
    std::sort(names.begin(), names.end());
    std::cout << n.config().node << " holds:";
    for (const std::string& name : names) {
        std::cout << " " << name;
    }
    std::cout << "\n";
}

} // namespace

int main() {
    // -- The cluster.
    const std::shared_ptr<otpkv::node> n1 = start_node("n1");
    const std::shared_ptr<otpkv::node> n2 = start_node("n2");
    const std::shared_ptr<otpkv::node> n3 = start_node("n3");
    if (!n1 || !n2 || !n3) {
        return 1;
    }
    std::cout << "nodes n1, n2 and n3 listening on 127.0.0.1, on ports the kernel picked\n";

    // -- The router. Its table, as in README.md: names from a to i live on n1, j to r on
    // n2, s to z on n3; the first entry that covers a name's first byte wins. `self` says
    // which entries are run here, against the registry given: n1's own.
    otpkv::router_options options;
    options.self = "n1";
    options.routes = {route("a-i", *n1), route("j-r", *n2), route("s-z", *n3)};
    options.cookie = cookie;
    auto started = otpkv::router::start(n1->registry(), options);
    if (!started) {
        std::cerr << "cannot start the router: " << otpkv::to_string(started.error().reason)
                  << "\n";
        return 1;
    }
    const std::shared_ptr<otpkv::router> router = std::move(started).value();
    std::cout << "router for " << router->self() << ", routes a-i=n1 j-r=n2 s-z=n3\n";
    for (const std::string_view bucket : {"fruit", "pantry", "shopping", "Shopping"}) {
        std::cout << "  " << bucket << " lives on " << owner(*router, bucket) << "\n";
    }

    // -- create, put, get and erase each go to the bucket's owner. A local one is answered
    // before the call returns; a remote one waits for the owner's reply (within the request
    // timeout, 1 s by default). Either way the reply is the same, byte for byte.
    show("create fruit", router->create("fruit"));
    show("put fruit apples 3", router->put("fruit", "apples", "3"));
    show("create pantry", router->create("pantry"));
    show("put pantry rice 1", router->put("pantry", "rice", "1"));
    show("create shopping", router->create("shopping"));
    show("put shopping milk 2", router->put("shopping", "milk", "2"));
    show("put shopping eggs 6", router->put("shopping", "eggs", "6"));
    show("get fruit apples", router->get("fruit", "apples"));
    show("get pantry rice", router->get("pantry", "rice"));
    show("get shopping milk", router->get("shopping", "milk"));
    show("erase shopping eggs", router->erase("shopping", "eggs"));
    show("get shopping eggs (absent: an empty value)", router->get("shopping", "eggs"));

    // Each bucket was made on its owner, and only there.
    print_buckets(*n1);
    print_buckets(*n2);
    print_buckets(*n3);

    // -- What fails, as values. A bucket its owner does not have; a name no route covers;
    // a token with a space in it, which cannot travel as one token of a request line.
    show("get soup salt (n3 has no soup)", router->get("soup", "salt"));
    const otpkv::routed_reply no_route = router->create("Shopping");
    show("create Shopping", no_route);
    std::cout << "  error no_route: "
              << (no_route.error == otpkv::error_code::no_route ? "true" : "false") << "\n";
    show("put fruit note \"two words\"", router->put("fruit", "note", "two words"));

    // -- A node goes down: only its buckets fail, with the node's name in the reply, at
    // once while it is known to be down. The router retries it in the background.
    std::cout << "stop n3 -> " << otpkv::to_string(n3->stop()) << "\n";
    const otpkv::routed_reply down = router->get("shopping", "milk");
    show("get shopping milk", down);
    std::cout << "  error node_unavailable: "
              << (down.error == otpkv::error_code::node_unavailable ? "true" : "false") << ", node "
              << down.node << "\n";
    show("get fruit apples", router->get("fruit", "apples"));
    show("get pantry rice", router->get("pantry", "rice"));

    // -- The router first (it uses n1's registry), then the nodes.
    std::cout << "stop router -> " << otpkv::to_string(router->stop()) << "\n";
    std::cout << "stop n2 -> " << otpkv::to_string(n2->stop()) << "\n";
    std::cout << "stop n1 -> " << otpkv::to_string(n1->stop()) << "\n";
    return 0;
}
