// SPDX-License-Identifier: MIT
// Integration tests: the real kv_server process (OTPKV_KV_SERVER) on an ephemeral loopback
// port, checked byte for byte against protocol.md: the guide's own test, every row of the
// command table, pipelining, any split of the request stream, SUBSCRIBE, and the command
// line (design.md, "Node and kv_server"). The limits and bad clients are in
// test_kv_server_limits.cpp.
#include "kv_process.hpp"

#include <doctest/doctest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::string_literals;
using namespace std::chrono_literals;
using otpkv_test::exchange_each;
using otpkv_test::exchange_pipelined;
using otpkv_test::free_port;
using otpkv_test::kv_client;
using otpkv_test::kv_process;
using otpkv_test::millis;
using otpkv_test::not_found;
using otpkv_test::ok;
using otpkv_test::read_through;
using otpkv_test::row;
using otpkv_test::stop_cleanly;
using otpkv_test::subscribe_synced;
using otpkv_test::too_long;
using otpkv_test::unknown;

namespace {

// Every row of protocol.md's command table, in an order whose replies depend only on the
// rows before it (so running them on a fresh server always gives these replies).
std::vector<row> command_table() {
    std::vector<row> rows = {
        // A bucket that does not exist.
        {"GET nobucket k\r\n", not_found},
        {"PUT nobucket k v\r\n", not_found},
        {"DELETE nobucket k\r\n", not_found},
        {"SUBSCRIBE nobucket\r\n", not_found},
        // CREATE is idempotent.
        {"CREATE b\r\n", ok},
        {"CREATE b\r\n", ok},
        // Absent keys.
        {"GET b absent\r\n", "\r\nOK\r\n"},
        {"DELETE b absent\r\n", ok},
        // Put, overwrite, delete.
        {"PUT b k v\r\n", ok},
        {"GET b k\r\n", "v\r\nOK\r\n"},
        {"PUT b k w\r\n", ok},
        {"GET b k\r\n", "w\r\nOK\r\n"},
        {"DELETE b k\r\n", ok},
        {"GET b k\r\n", "\r\nOK\r\n"},
        {"DELETE b k\r\n", ok},
        // Names are case-sensitive.
        {"GET B k\r\n", not_found},
        // Unknown verbs; verbs are case-sensitive and upper-case.
        {"UNKNOWN b\r\n", unknown},
        {"FETCH b k\r\n", unknown},
        {"create c\r\n", unknown},
        {"Get b k\r\n", unknown},
        {"put b k v\r\n", unknown},
        {"GETb k\r\n", unknown},
        {"GET\x00 b k\r\n"s, unknown},
        // Wrong numbers of tokens.
        {"CREATE\r\n", unknown},
        {"CREATE b c\r\n", unknown},
        {"GET\r\n", unknown},
        {"GET b\r\n", unknown},
        {"GET b k x\r\n", unknown},
        {"PUT b\r\n", unknown},
        {"PUT b k\r\n", unknown},
        {"PUT b k hello world\r\n", unknown}, // a value cannot hold whitespace
        {"DELETE b\r\n", unknown},
        {"DELETE b k x\r\n", unknown},
        {"SUBSCRIBE\r\n", unknown},
        {"SUBSCRIBE b c\r\n", unknown},
        {"PUT b k v\rx\r\n", unknown}, // a CR not before the LF separates tokens
        // Empty and blank lines.
        {"\r\n", unknown},
        {"\n", unknown},
        {" \r\n", unknown},
        {"\t \t\n", unknown},
        {"\r\r\n", unknown},
        {"\v\f \r\n", unknown},
        // Terminators: CRLF and bare LF.
        {"PUT b lf 1\n", ok},
        {"GET b lf\n", "1\r\nOK\r\n"},
        {"GET b lf\r\n", "1\r\nOK\r\n"},
        // Separators: runs of space, tab, CR, VT, FF; leading and trailing ones ignored.
        {"PUT\tb\ttab\t2\r\n", ok},
        {"GET\tb\ttab\r\n", "2\r\nOK\r\n"},
        {"  PUT  b \t spaced \t 3 \t \r\n", ok},
        {"\t GET b spaced \n", "3\r\nOK\r\n"},
        {"PUT\vb\fvt\r4\r\n", ok},
        {"GET b vt\n", "4\r\nOK\r\n"},
        // Binary keys, values and bucket names come back exactly.
        {"PUT b bin \x80\xff\xfe\x01\x7f\r\n", ok},
        {"GET b bin\r\n", "\x80\xff\xfe\x01\x7f\r\nOK\r\n"},
        {"PUT b caf\xc3\xa9 \xe2\x82\xac\r\n", ok},
        {"GET b caf\xc3\xa9\r\n", "\xe2\x82\xac\r\nOK\r\n"},
        {"CREATE \xff\xfe\r\n", ok},
        {"PUT \xff\xfe \x00k a\0b\0\r\n"s, ok},
        {"GET \xff\xfe \x00k\r\n"s, "a\0b\0\r\nOK\r\n"s},
        {"GET \xff\xfe k\r\n", "\r\nOK\r\n"},
    };
    // A key and a value holding every byte that is not whitespace.
    std::string every;
    for (int b = 0; b < 256; ++b) {
        const char ch = static_cast<char>(b);
        if (std::string_view(" \t\n\v\f\r").find(ch) == std::string_view::npos) {
            every += ch;
        }
    }
    rows.push_back({"PUT b " + every + " " + every + "\r\n", ok});
    rows.push_back({"GET b " + every + "\r\n", every + "\r\nOK\r\n"});
    return rows;
}

// A temporary directory, removed with everything in it.
class temp_dir {
  public:
    temp_dir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "otpkv_kv_XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path_ = pattern;
    }
    ~temp_dir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    // Writes `text` into `name` in the directory; its path.
    std::string write(const std::string& name, const std::string& text) const {
        const std::filesystem::path file = path_ / name;
        std::ofstream(file, std::ios::binary) << text;
        return file.string();
    }

  private:
    std::filesystem::path path_;
};

} // namespace

TEST_CASE("kv_server: the guide's integration test, byte for byte") {
    kv_process server;
    CHECK(server.ready_line() ==
          "otpkv node nonode listening on 127.0.0.1:" + std::to_string(server.port()));

    const std::vector<row> guide = {
        {"UNKNOWN shopping\r\n", unknown},
        {"GET shopping eggs\r\n", not_found},
        {"CREATE shopping\r\n", ok},
        {"PUT shopping eggs 3\r\n", ok},
        {"GET shopping eggs\r\n", "3\r\nOK\r\n"},
        {"DELETE shopping eggs\r\n", ok},
        {"GET shopping eggs\r\n", "\r\nOK\r\n"},
    };
    SUBCASE("one request at a time") {
        kv_client c(server.port());
        exchange_each(c, guide);
    }
    SUBCASE("all in one write") {
        kv_client c(server.port());
        exchange_pipelined(c, guide);
    }
    stop_cleanly(server);
}

TEST_CASE("kv_server: every row of the command table") {
    const std::vector<row> rows = command_table();
    SUBCASE("one request at a time") {
        kv_process server;
        kv_client c(server.port());
        exchange_each(c, rows);
        // Another connection sees the same data.
        kv_client other(server.port());
        OTPKV_CHECK_EXCHANGE(other, "GET b spaced\r\n", "3\r\nOK\r\n");
        stop_cleanly(server);
    }
    SUBCASE("all pipelined in one write") {
        kv_process server;
        kv_client c(server.port());
        exchange_pipelined(c, rows);
        stop_cleanly(server);
    }
}

TEST_CASE("kv_server: 10,000 pipelined requests in one write, replies exact and in order") {
    kv_process server;
    kv_client c(server.port());
    std::map<std::string, std::string> model;
    std::string requests = "CREATE pipe\r\n";
    std::string replies = ok;
    for (int i = 0; i < 10'000; ++i) {
        const std::string key = "k" + std::to_string(i % 97);
        const char* end = i % 3 == 0 ? "\n" : "\r\n";
        if (i % 100 == 99) {
            requests += "NOPE pipe "s + end;
            replies += unknown;
        } else if (i % 2 == 0) {
            const std::string value = "v" + std::to_string(i) + "\x80";
            requests += "PUT pipe " + key + " " + value + end;
            replies += ok;
            model[key] = value;
        } else if (i % 10 == 7) {
            requests += "DELETE pipe " + key + end;
            replies += ok;
            model.erase(key);
        } else {
            requests += "GET pipe " + key + end;
            const auto found = model.find(key);
            replies += (found == model.end() ? "" : found->second) + "\r\nOK\r\n";
        }
    }
    REQUIRE(c.send_all(requests));
    OTPKV_CHECK_BYTES(c.read_exact(replies.size()), replies);
    CHECK(c.read_for(50ms).empty());
    stop_cleanly(server);
}

TEST_CASE("kv_server: a request stream split at any byte gives the same replies") {
    const std::string stream = "CREATE split\r\nPUT split k1 v1\nGET split k1\r\nGET split none\r\n"
                               "DELETE split k1\nGET split k1\r\nBOGUS line\r\n\r\n"
                               "PUT split k2 \xff\x80\r\nGET split k2\n  GET\tsplit\tk2  \r\n";
    const std::vector<std::string> line_replies = {
        ok,      ok, "v1\r\nOK\r\n",       "\r\nOK\r\n",        ok, "\r\nOK\r\n", unknown,
        unknown, ok, "\xff\x80\r\nOK\r\n", "\xff\x80\r\nOK\r\n"};
    std::string replies;
    for (const std::string& r : line_replies) {
        replies += r;
    }
    // The replies to the lines complete in the first `k` bytes.
    const auto replies_before = [&](std::size_t k) {
        std::string sum;
        std::size_t line = 0;
        for (std::size_t i = 0; i < k; ++i) {
            if (stream[i] == '\n') {
                sum += line_replies[line++];
            }
        }
        return sum;
    };
    REQUIRE(replies_before(stream.size()) == replies);

    kv_process server;
    for (std::size_t k = 1; k < stream.size(); ++k) {
        CAPTURE(k);
        kv_client c(server.port());
        c.set_nodelay();
        REQUIRE(c.send_all(std::string_view(stream).substr(0, k)));
        // Wait for the first part's replies, so the second part surely comes in a later
        // segment; with no reply to wait for, a short pause does the same almost always.
        const std::string first = replies_before(k);
        std::string got = c.read_exact(first.size());
        if (first.empty()) {
            std::this_thread::sleep_for(2ms);
        }
        REQUIRE(c.send_all(std::string_view(stream).substr(k)));
        got += c.read_exact(replies.size() - got.size());
        OTPKV_CHECK_BYTES(got, replies);
        if (got != replies) {
            break; // one split is enough to show it (and a dead server must not cost n waits)
        }
    }
    {
        // And one byte per segment.
        kv_client c(server.port());
        c.set_nodelay();
        for (const char ch : stream) {
            REQUIRE(c.send_all(std::string_view(&ch, 1)));
            if (ch == '\n') {
                std::this_thread::sleep_for(1ms);
            }
        }
        OTPKV_CHECK_BYTES(c.read_exact(replies.size()), replies);
    }
    stop_cleanly(server);
}

TEST_CASE("kv_server: SUBSCRIBE streams a bucket's events; the subscriber's input is ignored") {
    // One event loop: a round trip of one client is a turn of the loop that serves the others.
    kv_process server({"--threads", "1"});
    kv_client pub(server.port());
    OTPKV_CHECK_EXCHANGE(pub, "CREATE sub\r\nCREATE other\r\n", ok + ok);
    int counter = 0;

    SUBCASE("a missing bucket gives NOT FOUND and the connection stays a normal one") {
        kv_client c(server.port());
        OTPKV_CHECK_EXCHANGE(c, "SUBSCRIBE missing\r\n", not_found);
        OTPKV_CHECK_EXCHANGE(c, "CREATE fine\r\nPUT fine k v\r\nGET fine k\r\n",
                             ok + ok + "v\r\nOK\r\n");
        // No event reaches it: it is not subscribed to anything.
        OTPKV_CHECK_EXCHANGE(pub, "PUT sub k v\r\n", ok);
        CHECK(c.read_for(100ms).empty());
    }

    SUBCASE("events of PUT and DELETE, exactly, to every subscriber of that bucket only") {
        kv_client a(server.port());
        kv_client b(server.port());
        subscribe_synced(a, pub, "sub", counter);
        subscribe_synced(b, pub, "sub", counter);
        // a saw b's sync events too.
        const std::string last_sync = "sync SET TO " + std::to_string(counter) + "\r\n";
        const std::string a_sync = read_through(a, last_sync);
        CHECK(a_sync.ends_with(last_sync));

        OTPKV_CHECK_EXCHANGE(pub, "PUT other k x\r\n", ok); // another bucket: no event
        OTPKV_CHECK_EXCHANGE(pub, "PUT sub k v\r\n", ok);
        OTPKV_CHECK_EXCHANGE(pub, "DELETE sub k\r\n", ok);
        OTPKV_CHECK_EXCHANGE(pub, "PUT sub bin \xff\x00\x80\r\n"s, ok);
        OTPKV_CHECK_EXCHANGE(pub, "DELETE sub absent\r\n", ok); // every DELETE is an event
        const std::string events =
            "k SET TO v\r\nk DELETED\r\nbin SET TO \xff\x00\x80\r\nabsent DELETED\r\n"s;
        OTPKV_CHECK_BYTES(a.read_exact(events.size()), events);
        OTPKV_CHECK_BYTES(b.read_exact(events.size()), events);

        // Requests from a subscriber are ignored: nothing of them runs, no reply comes.
        REQUIRE(a.send_all("GET sub k\r\nPUT sub x y\r\nCREATE froma\r\nBOGUS\r\n\r\n"));
        // Two round trips: by the second reply the loop has handled what a sent (it was
        // there before the first), so what it would run has run.
        OTPKV_CHECK_EXCHANGE(pub, "GET other nothing\r\n", "\r\nOK\r\n");
        OTPKV_CHECK_EXCHANGE(pub, "GET other nothing\r\n", "\r\nOK\r\n");
        OTPKV_CHECK_EXCHANGE(pub, "PUT sub after 1\r\n", ok);
        OTPKV_CHECK_RECEIVES(a, "after SET TO 1\r\n");
        OTPKV_CHECK_RECEIVES(b, "after SET TO 1\r\n");
        OTPKV_CHECK_EXCHANGE(pub, "GET sub x\r\n", "\r\nOK\r\n");
        OTPKV_CHECK_EXCHANGE(pub, "GET froma x\r\n", not_found);
        CHECK(a.read_for(100ms).empty());
        CHECK(b.read_for(1ms).empty());
    }

    SUBCASE("requests before SUBSCRIBE in the same write are answered, those after ignored") {
        kv_client a(server.port());
        OTPKV_CHECK_EXCHANGE(a,
                             "CREATE pre\r\nPUT pre a 1\r\nSUBSCRIBE pre\r\nGET pre a\r\n"
                             "CREATE after\r\n",
                             ok + ok);
        // The replies of one batch are sent together, so the subscription is in place.
        OTPKV_CHECK_EXCHANGE(pub, "PUT pre a 2\r\nGET after x\r\n", ok + not_found);
        OTPKV_CHECK_RECEIVES(a, "a SET TO 2\r\n");
        CHECK(a.read_for(100ms).empty());
    }
    stop_cleanly(server);
}

TEST_CASE("kv_server: command line: bad flags exit 2 naming them, --help and --version exit 0") {
    struct bad {
        std::vector<std::string> args;
        std::string named;
    };
    const std::vector<bad> cases = {
        {{"--bogus"}, "--bogus"},
        {{"--port", "abc"}, "--port"},
        {{"--port", "70000"}, "--port"},
        {{"--port"}, "--port"},
        {{"--threads", "0"}, "--threads"},
        {{"--max-line", "x"}, "--max-line"},
        {{"--max-connections", "0"}, "--max-connections"},
        {{"--max-buckets", "1e3"}, "--max-buckets"},
        {{"--bind", "999.0.0.1"}, "--bind"},
        {{"--node", "bad name"}, "--node"},
        {{"--route", "garbage"}, "--route"},
        {{"--config", "/nonexistent/otpkv.conf"}, "--config"},
        {{"--port", "0", "stray"}, "stray"},
    };
    for (const bad& b : cases) {
        CAPTURE(b.named);
        const otpkv_test::exit_status st = otpkv_test::run_kv_server(b.args);
        CHECK_MESSAGE(st.exited, st.describe());
        CHECK(st.signal == 0);
        CHECK(st.code == 2);
        CHECK_MESSAGE(st.err.find(b.named) != std::string::npos, "stderr: " << st.err);
        CHECK(st.out.find("listening") == std::string::npos);
    }
    for (const std::string flag : {"--help", "-h"}) {
        const otpkv_test::exit_status st = otpkv_test::run_kv_server({flag});
        CHECK_MESSAGE(st.clean(), st.describe());
        CHECK(st.out.find("usage") != std::string::npos);
        CHECK(st.out.find("--max-buckets") != std::string::npos);
    }
    const otpkv_test::exit_status version = otpkv_test::run_kv_server({"--version"});
    CHECK_MESSAGE(version.clean(), version.describe());
    CHECK(version.out.starts_with("kv_server (otpkv) "));
}

TEST_CASE("kv_server: a port in use exits 1 with a message; the first server is unharmed") {
    kv_process first;
    const std::string port = std::to_string(first.port());
    const otpkv_test::exit_status st = otpkv_test::run_kv_server({"--port", port});
    CHECK_MESSAGE(st.exited, st.describe());
    CHECK(st.signal == 0);
    CHECK(st.code == 1);
    // The sentence the README shows, not the exit reason's `{error, ...}` form.
    CHECK(st.err == "kv_server: cannot listen on 127.0.0.1:" + port + ": Address already in use\n");
    CHECK(st.out.empty());
    kv_client c(first.port());
    OTPKV_CHECK_EXCHANGE(c, "CREATE x\r\nPUT x k v\r\nGET x k\r\n", ok + ok + "v\r\nOK\r\n");
    stop_cleanly(first);
}

TEST_CASE("kv_server: replication settings that do not fit exit 2 with the reason before "
          "listening") {
    // The port is held by another server: one that tried to listen would exit 1 with
    // "cannot listen on ...", so exit 2 with the reason shows it refused before listening.
    kv_process holder;
    const std::string port = std::to_string(holder.port());
    const std::string three = "a-m=n1@127.0.0.1:4041,n2@127.0.0.1:4042,n3@127.0.0.1:4043";
    struct refused {
        std::vector<std::string> args;
        std::vector<std::string> env;
        std::string err;
    };
    const std::vector<refused> cases{
        {{"--node", "n1", "--route", three},
         {},
         "kv_server: route a-m names 3 nodes (a replica set): replication needs --etcd URL, the "
         "membership authority that keeps each range's chain; give --etcd or name one node per "
         "route\n"},
        {{"--replicas", "2", "--route", "a-z=n1@127.0.0.1:4041"},
         {},
         "kv_server: --replicas 2 needs --etcd URL: a chain of more than one node is kept by "
         "etcd, the membership authority; give --etcd, or leave --replicas out\n"},
        {{"--node", "n1"},
         {"OTPKV_ROUTE=a-m=n1@127.0.0.1:4041, n2@127.0.0.1:4042",
          "OTPKV_ETCD=http://127.0.0.1:2379", "OTPKV_REPLICAS=3", "OTPKV_LEASE_MS=500"},
         "kv_server: --replicas 3 is more than route a-m names (2 nodes): a range's chain is "
         "made of the nodes its route names\n"},
    };
    for (const refused& c : cases) {
        CAPTURE(c.err);
        std::vector<std::string> args{"--port", port};
        args.insert(args.end(), c.args.begin(), c.args.end());
        const otpkv_test::exit_status st = otpkv_test::run_kv_server(args, c.env);
        CHECK_MESSAGE(st.exited, st.describe());
        CHECK(st.signal == 0);
        CHECK(st.code == 2);
        CHECK(st.err == c.err);
        CHECK(st.out.empty()); // no ready line
    }
    // A bad etcd URL is a bad value like any other.
    const otpkv_test::exit_status tls =
        otpkv_test::run_kv_server({"--port", port, "--etcd", "https://127.0.0.1:2379"});
    CHECK(tls.code == 2);
    CHECK(tls.err == "kv_server: --etcd: bad etcd URL 'https://127.0.0.1:2379': TLS (https) is "
                     "not supported: give etcd's plain http:// client URL, on a trusted "
                     "network\n(kv_server --help lists the options)\n");
    CHECK(tls.out.empty());
    // The holder was never disturbed.
    kv_client c(holder.port());
    OTPKV_CHECK_EXCHANGE(c, "CREATE r\r\n", ok);
    stop_cleanly(holder);
}

TEST_CASE("kv_server: SIGTERM and SIGINT stop it with exit code 0 within 5 s") {
    for (const int sig : {SIGTERM, SIGINT}) {
        CAPTURE(sig);
        kv_process server;
        kv_client pub(server.port());
        OTPKV_CHECK_EXCHANGE(pub, "CREATE s\r\n", ok);
        int counter = 0;
        kv_client subscriber(server.port());
        subscribe_synced(subscriber, pub, "s", counter);
        kv_client idle(server.port());
        kv_client partial(server.port());
        REQUIRE(partial.send_all("PUT s half"));
        kv_client unread(server.port()); // replies it never reads
        std::string many;
        for (int i = 0; i < 2000; ++i) {
            many += "GET s sync\r\n";
        }
        REQUIRE(unread.send_only(many));
        OTPKV_CHECK_EXCHANGE(idle, "GET s sync\r\n", std::to_string(counter) + "\r\nOK\r\n");

        const otpkv_test::exit_status st = server.stop(sig);
        CHECK_MESSAGE(st.clean(), st.describe());
        CHECK(st.seconds < 5.0);
        MESSAGE("stopped by signal " << sig << " in " << st.seconds << " s");
        // Every connection is closed by the stop.
        for (kv_client* c : {&pub, &subscriber, &idle, &partial}) {
            c->read_to_eof(2s);
            CHECK(c->end() != kv_client::ending::timeout);
        }
    }
}

TEST_CASE("kv_server: SIGHUP is ignored: the node goes on serving, and SIGTERM still stops it") {
    kv_process server;
    kv_client before(server.port());
    OTPKV_CHECK_EXCHANGE(before, "CREATE h\r\nPUT h k 1\r\n", ok + ok);
    REQUIRE(::kill(server.pid(), SIGHUP) == 0);
    // A new connection and the old one are both served after the hangup.
    kv_client after(server.port());
    OTPKV_CHECK_EXCHANGE(after, "GET h k\r\n", "1\r\nOK\r\n");
    OTPKV_CHECK_EXCHANGE(before, "PUT h k 2\r\nGET h k\r\n", ok + "2\r\nOK\r\n");
    CHECK(server.running());
    const otpkv_test::exit_status st = server.stop(SIGTERM);
    CHECK_MESSAGE(st.clean(), st.describe());
    CHECK(st.err_above_info().empty());
}

TEST_CASE("kv_server: a node named in no route of its table starts, with a warning") {
    {
        kv_process lonely({"--node", "n9", "--route", "a-z=n1@127.0.0.1:1"});
        kv_client c(lonely.port());
        // It forwards what n1 owns (n1 is not there) and has no route for the rest.
        OTPKV_CHECK_EXCHANGE(c, "CREATE x\r\nCREATE 0\r\n",
                             "ERROR node n1 unavailable\r\nERROR no route\r\n");
        const otpkv_test::exit_status st = lonely.stop(SIGTERM);
        CHECK_MESSAGE(st.clean(), st.describe());
        // The warning; n1 being down is said too, as a warning of its own.
        CHECK(st.err_above_info().starts_with(
            "kv_server: warning: node n9 is in no route, so it owns no bucket: every request it "
            "gets is forwarded\n"));
    }
    // Named in a route, or with no table at all (a single node owning everything): no warning.
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{"--node", "n1", "--route", "a-z=n1@127.0.0.1:1"},
          std::vector<std::string>{"--node", "n9"}}) {
        kv_process quiet(args);
        const otpkv_test::exit_status st = quiet.stop(SIGTERM);
        CHECK_MESSAGE(st.clean(), st.describe());
        CHECK(st.err_above_info().empty());
    }
}

TEST_CASE("kv_server: configuration from OTPKV_* variables and from --config FILE") {
    SUBCASE("OTPKV_PORT and OTPKV_NODE") {
        const std::uint16_t port = free_port();
        kv_process server({}, {"OTPKV_PORT=" + std::to_string(port), "OTPKV_NODE=env_node"}, false);
        CHECK(server.ready_line() ==
              "otpkv node env_node listening on 127.0.0.1:" + std::to_string(port));
        CHECK(server.port() == port);
        kv_client c(server.port());
        OTPKV_CHECK_EXCHANGE(c, "CREATE e\r\n", ok);
        stop_cleanly(server);
    }
    SUBCASE("a bad OTPKV_ value exits 2 naming the variable") {
        const otpkv_test::exit_status st =
            otpkv_test::run_kv_server({"--port", "0"}, {"OTPKV_MAX_LINE=lots"});
        CHECK(st.code == 2);
        CHECK_MESSAGE(st.err.find("OTPKV_MAX_LINE") != std::string::npos, "stderr: " << st.err);
    }
    temp_dir dir;
    const std::string conf = dir.write("node.conf", "# a kv_server configuration\n"
                                                    "node = file_node\n"
                                                    "port = 0\r\n"
                                                    "\n"
                                                    "  max-line = 16  \n");
    SUBCASE("--config FILE") {
        kv_process server({"--config", conf}, {}, false);
        CHECK(server.ready_line().starts_with("otpkv node file_node listening on 127.0.0.1:"));
        kv_client c(server.port());
        OTPKV_CHECK_EXCHANGE(c, "CREATE a\r\nGET a 0123456789\r\n", ok + "\r\nOK\r\n");
        // 17 bytes is past the file's max-line.
        OTPKV_CHECK_EXCHANGE(c, "GET a 01234567890\r\n", too_long);
        CHECK(c.read_to_eof(3s).empty());
        CHECK(c.end() == kv_client::ending::eof);
        stop_cleanly(server);
    }
    SUBCASE("OTPKV_CONFIG names the file; the environment wins over it, flags over both") {
        {
            kv_process server({}, {"OTPKV_CONFIG=" + conf}, false);
            CHECK(server.ready_line().starts_with("otpkv node file_node listening on"));
            stop_cleanly(server);
        }
        {
            kv_process server({"--config", conf}, {"OTPKV_NODE=env_node"}, false);
            CHECK(server.ready_line().starts_with("otpkv node env_node listening on"));
            stop_cleanly(server);
        }
        {
            kv_process server({"--config", conf, "--node", "flag_node"}, {"OTPKV_NODE=env_node"},
                              false);
            CHECK(server.ready_line().starts_with("otpkv node flag_node listening on"));
            stop_cleanly(server);
        }
    }
    SUBCASE("a bad key in the file exits 2 naming it") {
        const std::string bad = dir.write("bad.conf", "node = n\nprot = 4040\n");
        const otpkv_test::exit_status st = otpkv_test::run_kv_server({"--config", bad});
        CHECK(st.code == 2);
        CHECK_MESSAGE(st.err.find("prot") != std::string::npos, "stderr: " << st.err);
    }
}
