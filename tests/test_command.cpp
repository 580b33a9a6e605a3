// SPDX-License-Identifier: MIT
// The protocol core (shared/protocol.md): framing, parsing, reply bytes.
#include <otpkv/command.hpp>
#include <otpkv/registry.hpp>

#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

using namespace std::string_literals;
using namespace std::string_view_literals;
using otpkv::command;
using otpkv::command_kind;
using otpkv::error_code;
using otpkv::frame_status;
using otpkv::line_framer;
using otpkv::parse;
using otpkv::reply;
using otpkv::reply_kind;

namespace {

// What a framer produced from some input: its lines, then whether it ended too_long.
struct framed {
    std::vector<std::string> lines;
    bool too_long = false;
    bool operator==(const framed&) const = default;
};

// Pulls every available line; records the verdict it stops on.
void drain(line_framer& framer, framed& out) {
    for (;;) {
        const otpkv::frame f = framer.next();
        if (f.status != frame_status::line) {
            out.too_long = f.status == frame_status::too_long;
            return;
        }
        out.lines.emplace_back(f.line);
    }
}

// Frames `input` cut into the given pieces, pulling after each piece.
framed frame_pieces(const std::vector<std::string_view>& pieces,
                    std::size_t max_line = otpkv::default_max_line) {
    line_framer framer(max_line);
    framed out;
    for (const std::string_view piece : pieces) {
        framer.feed(piece);
        drain(framer, out);
    }
    return out;
}

framed frame_all(std::string_view input, std::size_t max_line = otpkv::default_max_line) {
    return frame_pieces({input}, max_line);
}

std::string bytes_of(const reply& r) {
    return otpkv::format_reply(r);
}

// Undoes the C escapes used in the header's doc examples (\r \n \t \\ \" \xHH).
std::string unescape(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '\\' || i + 1 == s.size()) {
            out += s[i];
            continue;
        }
        const char e = s[++i];
        if (e == 'r') {
            out += '\r';
        } else if (e == 'n') {
            out += '\n';
        } else if (e == 't') {
            out += '\t';
        } else if (e == 'x' && i + 2 < s.size()) {
            out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
            i += 2;
        } else {
            out += e;
        }
    }
    return out;
}

} // namespace

// ---------------------------------------------------------------------------------------
// Framing rules
// ---------------------------------------------------------------------------------------

TEST_CASE("framing: LF ends a line, and a CR right before it belongs to the terminator") {
    CHECK(frame_all("CREATE a\nCREATE b\r\n") == framed{{"CREATE a", "CREATE b"}, false});
    CHECK(frame_all("\n") == framed{{""}, false});
    CHECK(frame_all("\r\n") == framed{{""}, false});
    CHECK(frame_all("\n\r\n\n") == framed{{"", "", ""}, false});
}

TEST_CASE("framing: a CR anywhere else is part of the line") {
    CHECK(frame_all("a\rb\n") == framed{{"a\rb"}, false});
    CHECK(frame_all("a\r\r\n") == framed{{"a\r"}, false});
    CHECK(frame_all("\r\r\n") == framed{{"\r"}, false});
    CHECK(frame_all("a\rb\r") == framed{{}, false}); // no LF: nothing yet
}

TEST_CASE("framing: a partial line is never a line") {
    line_framer framer;
    framer.feed("GET b k");
    CHECK(framer.next().status == frame_status::incomplete);
    CHECK(framer.pending() == 7);
    framer.feed("\r");
    CHECK(framer.next().status == frame_status::incomplete);
    framer.feed("\nGET b");
    const otpkv::frame f = framer.next();
    CHECK(f.status == frame_status::line);
    CHECK(f.line == "GET b k");
    CHECK(framer.next().status == frame_status::incomplete);
    CHECK(framer.pending() == 5);
    // Input ends here: the partial "GET b" is dropped with the framer, never returned.
}

TEST_CASE("framing: empty input and a fresh framer give nothing") {
    line_framer framer;
    CHECK(framer.next().status == frame_status::incomplete);
    framer.feed("");
    CHECK(framer.next().status == frame_status::incomplete);
    CHECK(framer.pending() == 0);
    CHECK(framer.max_line() == otpkv::default_max_line);
}

TEST_CASE("framing: every split of the input into two or three pieces gives the same lines") {
    const std::string input =
        "CREATE shopping\r\nPUT shopping eggs 3\n\r\nGET shopping eggs\r\r\n\tDELETE a b \r\n"
        "PUT b k \x00\xff\n"
        "tail"s;
    const framed whole = frame_all(input);
    REQUIRE(whole.lines.size() == 6);
    CHECK(whole.lines[3] == "GET shopping eggs\r");
    CHECK(whole.lines[5] == "PUT b k \x00\xff"s);
    const std::string_view in = input;
    for (std::size_t i = 0; i <= in.size(); ++i) {
        CHECK(frame_pieces({in.substr(0, i), in.substr(i)}) == whole);
        for (std::size_t j = i; j <= in.size(); j += 7) {
            CHECK(frame_pieces({in.substr(0, i), in.substr(i, j - i), in.substr(j)}) == whole);
        }
    }
    std::vector<std::string_view> bytes;
    for (std::size_t i = 0; i < in.size(); ++i) {
        bytes.push_back(in.substr(i, 1));
    }
    CHECK(frame_pieces(bytes) == whole);
}

TEST_CASE("framing: prepare/commit writes straight into the buffer") {
    line_framer framer;
    const std::string_view part1 = "PUT b k v\r\nGE";
    std::span<char> room = framer.prepare(part1.size());
    REQUIRE(room.size() >= part1.size());
    std::memcpy(room.data(), part1.data(), part1.size());
    framer.commit(part1.size());
    framed out;
    drain(framer, out);
    const std::string_view part2 = "T b k\n";
    room = framer.prepare(2);
    REQUIRE(room.size() >= part2.size());
    std::memcpy(room.data(), part2.data(), part2.size());
    framer.commit(part2.size());
    drain(framer, out);
    CHECK(out == framed{{"PUT b k v", "GET b k"}, false});
}

TEST_CASE("framing: lines pulled between two feeds stay valid together") {
    line_framer framer;
    framer.feed("CREATE a\nCREATE b\nCREATE c\n");
    const std::string_view a = framer.next().line;
    const std::string_view b = framer.next().line;
    const std::string_view c = framer.next().line;
    CHECK(a == "CREATE a");
    CHECK(b == "CREATE b");
    CHECK(c == "CREATE c");
}

TEST_CASE("framing: a long stream through a small buffer keeps every line in order") {
    std::string input;
    for (int i = 0; i < 5000; ++i) {
        input += "PUT bucket key" + std::to_string(i) + " value" + std::to_string(i) + "\r\n";
    }
    line_framer framer(64);
    framed out;
    for (std::size_t at = 0; at < input.size(); at += 1000) {
        framer.feed(std::string_view(input).substr(at, 1000));
        drain(framer, out);
        CHECK(framer.pending() <= 64 + 1);
    }
    REQUIRE(out.lines.size() == 5000);
    CHECK_FALSE(out.too_long);
    for (std::size_t i = 0; i < out.lines.size(); ++i) {
        if (out.lines[i] != "PUT bucket key" + std::to_string(i) + " value" + std::to_string(i)) {
            FAIL_CHECK("line " << i << " is " << out.lines[i]);
        }
    }
}

TEST_CASE("framing: a partial line survives the buffer's compaction byte for byte") {
    line_framer framer;
    const std::size_t capacity = framer.prepare(1).size();
    framer.commit(0);
    // Fill the buffer but for the partial "XYZ", pull the long line, then add more than
    // the free space: the partial line moves to the front.
    framer.feed(std::string(capacity - 4, 'a') + "\nXYZ");
    CHECK(framer.next().line.size() == capacity - 4);
    CHECK(framer.next().status == frame_status::incomplete);
    framer.feed("W" + std::string(8, 'b') + "\n");
    const otpkv::frame f = framer.next();
    CHECK(f.status == frame_status::line);
    CHECK(f.line == "XYZW" + std::string(8, 'b'));
    CHECK(framer.pending() == 0);
}

TEST_CASE("framing: a drained framer offers its whole buffer again") {
    line_framer framer;
    const std::size_t capacity = framer.prepare(1).size();
    framer.commit(0);
    framer.feed("abc\n");
    CHECK(framer.next().line == "abc");
    CHECK(framer.prepare(1).size() == capacity);
}

TEST_CASE("framing: a moved framer carries its bytes; the moved-from one is empty") {
    line_framer a(16);
    a.feed("CREATE a\nPUT b");
    CHECK(a.next().line == "CREATE a");
    line_framer b = std::move(a);
    CHECK(b.pending() == 5);
    CHECK(b.max_line() == 16);
    b.feed(" k v\n");
    CHECK(b.next().line == "PUT b k v");
    CHECK(a.pending() == 0); // NOLINT(bugprone-use-after-move): the state after a move is specified
    CHECK(a.capacity() == 0);
    a.feed("GET b k\n");
    CHECK(a.next().line == "GET b k");
    line_framer c;
    c = std::move(b);
    CHECK(c.max_line() == 16);
    CHECK(c.next().status == frame_status::incomplete);
    b.feed("x\n");
    CHECK(b.next().line == "x");
}

TEST_CASE("framing: memory grown for a burst is given back once it is pulled") {
    line_framer framer;
    framer.feed(std::string(60000, 'v') + "\n");
    CHECK(framer.capacity() >= 60001);
    CHECK(framer.next().line.size() == 60000);
    framer.feed("GET b k\n");
    CHECK(framer.capacity() == line_framer::initial_capacity);
    CHECK(framer.next().line == "GET b k");
}

TEST_CASE("framing: shrink_to_fit keeps only what pending bytes need") {
    line_framer framer;
    framer.feed("GET b k\nPUT b");
    CHECK(framer.next().line == "GET b k");
    framer.shrink_to_fit();
    CHECK(framer.capacity() == 5);
    framer.feed(" k v\n");
    CHECK(framer.next().line == "PUT b k v");
    framer.shrink_to_fit(); // idle: no buffer at all
    CHECK(framer.capacity() == 0);
    framer.feed("CREATE a\n");
    CHECK(framer.next().line == "CREATE a");
}

TEST_CASE("framing: commit clamps to the space prepare gave") {
    line_framer framer;
    const std::span<char> room = framer.prepare(1);
    std::memset(room.data(), 'x', room.size());
    framer.commit(room.size() + 100);
    CHECK(framer.pending() == room.size());
}

// ---------------------------------------------------------------------------------------
// max_line
// ---------------------------------------------------------------------------------------

TEST_CASE("max_line: a line of exactly max_line bytes passes, terminator not counted") {
    CHECK(frame_all("abcd\n", 4) == framed{{"abcd"}, false});
    CHECK(frame_all("abcd\r\n", 4) == framed{{"abcd"}, false});
    CHECK(frame_all("abc\r\r\n", 4) == framed{{"abc\r"}, false});
}

TEST_CASE("max_line: one byte more is too long, and no part of it is returned") {
    CHECK(frame_all("abcde\n", 4) == framed{{}, true});
    CHECK(frame_all("abcd\r\r\n", 4) == framed{{}, true});
    // In pieces of one byte: still never a fragment.
    CHECK(frame_pieces({"a", "b", "c", "d", "e", "\n"}, 4) == framed{{}, true});
}

TEST_CASE("max_line: the verdict comes as soon as it is certain, before any LF") {
    line_framer framer(4);
    framer.feed("abcd");
    CHECK(framer.next().status == frame_status::incomplete);
    framer.feed("\r"); // may still be the terminator's CR
    CHECK(framer.next().status == frame_status::incomplete);
    framer.feed("x"); // it was not: five bytes of content
    CHECK(framer.next().status == frame_status::too_long);
    CHECK(framer.pending() == 0);
}

TEST_CASE("max_line: a CR at the limit followed by LF is a line") {
    CHECK(frame_pieces({"abcd\r", "\n"}, 4) == framed{{"abcd"}, false});
}

TEST_CASE("max_line: lines before the long one come out; nothing after it ever does") {
    line_framer framer(8);
    framer.feed("GET b k\nPUT b k 12345678\nGET b k\n");
    framed out;
    drain(framer, out);
    CHECK(out == framed{{"GET b k"}, true});
    CHECK(framer.overflowed());
    framer.feed("CREATE x\n");
    CHECK(framer.next().status == frame_status::too_long);
    CHECK(framer.next().status == frame_status::too_long);
    CHECK(framer.pending() == 0);
    CHECK(framer.prepare(0).empty()); // the buffer was released, and feed did not regrow it
}

TEST_CASE("max_line: lines pulled before the long one stay valid after it is reported") {
    line_framer framer(10);
    framer.feed("GET b k\nPUT b k v\n" + std::string(20, 'x'));
    const std::string_view first = framer.next().line;
    const std::string_view second = framer.next().line;
    CHECK(framer.next().status == frame_status::too_long);
    // A server runs the batch it pulled before answering ERROR line too long.
    CHECK(parse(first) == command{command_kind::get, "b", "k", {}});
    CHECK(parse(second) == command{command_kind::put, "b", "k", "v"});
    CHECK(framer.capacity() > 0); // held until the next feed or prepare ...
    CHECK(framer.prepare(1).empty());
    CHECK(framer.capacity() == 0); // ... which release it and take nothing more
}

TEST_CASE("max_line: the default is 65536 bytes") {
    const std::string ok(otpkv::default_max_line, 'x');
    CHECK(frame_all(ok + "\r\n") == framed{{ok}, false});
    CHECK(frame_all(ok + "x\r\n") == framed{{}, true});
}

TEST_CASE("max_line: 10 MiB without a newline is refused with bounded memory") {
    line_framer framer;
    const std::string chunk(4096, 'z');
    std::size_t fed = 0;
    frame_status last = frame_status::incomplete;
    while (fed < 10U * 1024U * 1024U && last == frame_status::incomplete) {
        framer.feed(chunk);
        fed += chunk.size();
        last = framer.next().status;
        CHECK(framer.pending() <= otpkv::default_max_line + chunk.size());
    }
    CHECK(last == frame_status::too_long);
    CHECK(fed == otpkv::default_max_line + chunk.size()); // detected on the first chunk past
    CHECK(framer.pending() == 0);
}

TEST_CASE("max_line: reset forgets the overflow and framing starts over") {
    line_framer framer(3);
    framer.feed("abcdef");
    CHECK(framer.next().status == frame_status::too_long);
    framer.reset();
    CHECK_FALSE(framer.overflowed());
    framer.feed("abc\n");
    const otpkv::frame f = framer.next();
    CHECK(f.status == frame_status::line);
    CHECK(f.line == "abc");
}

// ---------------------------------------------------------------------------------------
// Parsing: tokens and arity
// ---------------------------------------------------------------------------------------

TEST_CASE("parse: each verb with its exact arity") {
    CHECK(parse("CREATE shopping") == command{command_kind::create, "shopping", {}, {}});
    CHECK(parse("PUT shopping eggs 3") == command{command_kind::put, "shopping", "eggs", "3"});
    CHECK(parse("GET shopping eggs") == command{command_kind::get, "shopping", "eggs", {}});
    CHECK(parse("DELETE shopping eggs") == command{command_kind::erase, "shopping", "eggs", {}});
    CHECK(parse("SUBSCRIBE shopping") == command{command_kind::subscribe, "shopping", {}, {}});
}

TEST_CASE("parse: a wrong number of tokens is an unknown command") {
    for (const std::string_view line :
         {"CREATE"sv, "CREATE a b"sv, "PUT"sv, "PUT b"sv, "PUT b k"sv, "PUT b k v x"sv, "GET"sv,
          "GET b"sv, "GET b k x"sv, "DELETE"sv, "DELETE b"sv, "DELETE b k x"sv, "SUBSCRIBE"sv,
          "SUBSCRIBE a b"sv, "PUT b k hello world"sv}) {
        CAPTURE(line);
        CHECK(parse(line) == command{});
    }
}

TEST_CASE("parse: verbs are case-sensitive and exact") {
    for (const std::string_view line :
         {"create a"sv, "Create a"sv, "put b k v"sv, "Get b k"sv, "delete b k"sv, "subscribe a"sv,
          "CREATEa"sv, "CREATE\x01 a"sv, "UNKNOWN shopping"sv, "HELLO"sv}) {
        CAPTURE(line);
        CHECK(parse(line).kind == command_kind::unknown);
    }
}

TEST_CASE("parse: empty and blank lines are unknown commands") {
    CHECK(parse("") == command{});
    CHECK(parse(" ") == command{});
    CHECK(parse(" \t\r\v\f\n") == command{});
}

TEST_CASE("parse: runs of any ASCII whitespace separate tokens; ends are trimmed") {
    CHECK(parse("\t PUT\v\vb \f k\r\r v \r") == command{command_kind::put, "b", "k", "v"});
    CHECK(parse("  CREATE  shopping  \r\n") == command{command_kind::create, "shopping", {}, {}});
}

TEST_CASE("parse: any other byte is part of a token, and comes back unchanged") {
    const std::string line = "PUT b\x00 k\xff\x01 v\x80\x00\x1b"s;
    const command cmd = parse(line);
    CHECK(cmd.kind == command_kind::put);
    CHECK(cmd.bucket == "b\x00"sv);
    CHECK(cmd.key == "k\xff\x01"sv);
    CHECK(cmd.value == "v\x80\x00\x1b"sv);
    CHECK(parse("CREATE\x00 b"sv).kind == command_kind::unknown); // the verb is "CREATE\0"
}

TEST_CASE("parse: tokens are views into the line, no copies") {
    const std::string line = "PUT shopping eggs 3";
    const command cmd = parse(line);
    CHECK(cmd.bucket.data() == line.data() + 4);
    CHECK(cmd.key.data() == line.data() + 13);
    CHECK(cmd.value.data() == line.data() + 18);
}

TEST_CASE("parse: works at compile time") {
    static_assert(parse("GET b k") == command{command_kind::get, "b", "k", {}});
    static_assert(parse("GET b").kind == command_kind::unknown);
    static_assert(parse("PUT b k v x") == command{}); // a 5th token is never stored
    static_assert(parse("PUT b k v x y z") == command{});
    CHECK(otpkv::verb_name(command_kind::erase) == "DELETE");
    CHECK(otpkv::verb_name(command_kind::unknown).empty());
}

TEST_CASE("parse: the guide's examples in command.hpp's doc comment all hold") {
    std::ifstream header(OTPKV_SOURCE_DIR "/include/otpkv/command.hpp");
    REQUIRE(header.good());
    // Lines of the form:  ///     parse("<escaped request>")   => <to_string of the command>
    constexpr std::string_view open = "parse(\"";
    constexpr std::string_view close = "\")";
    constexpr std::string_view arrow = "=>";
    std::string text;
    int checked = 0;
    while (std::getline(header, text)) {
        const std::size_t at = text.starts_with("///") ? text.find(open) : std::string::npos;
        const std::size_t end = at == std::string::npos ? at : text.find(close, at);
        const std::size_t result = end == std::string::npos ? end : text.find(arrow, end);
        if (result == std::string::npos) {
            continue;
        }
        const std::string line = unescape(text.substr(at + open.size(), end - at - open.size()));
        std::string expected = text.substr(result + arrow.size());
        expected.erase(0, expected.find_first_not_of(' '));
        CAPTURE(line);
        CHECK(otpkv::to_string(parse(line)) == expected);
        ++checked;
    }
    // CREATE, CREATE with spaces, PUT, GET, DELETE, unknown, GET short, INFO, INFO reversed
    CHECK(checked == 9);
}

// ---- INFO [SECTION] [NODE] ----

namespace {
constexpr command info(std::string_view section = {}, std::string_view node = {}) {
    command c;
    c.kind = command_kind::info;
    c.section = section;
    c.node = node;
    return c;
}
} // namespace

TEST_CASE("parse: INFO takes an optional SECTION, in any letter case, then an optional NODE") {
    struct example {
        std::string_view line;
        command cmd;
    };
    const std::string longest_name(255, 'n');
    const example valid[] = {
        {"INFO", info()},
        {"  INFO \r\n", info()},
        {"INFO SERVER", info("SERVER")},
        {"INFO TREE", info("TREE")},
        {"INFO STATS", info("STATS")},
        {"INFO CLUSTER", info("CLUSTER")},
        {"INFO JSON", info("JSON")},
        {"INFO server", info("server")}, // kept as sent
        {"INFO Tree", info("Tree")},
        {"INFO sTaTs", info("sTaTs")},
        {"INFO cluster", info("cluster")},
        {"INFO json", info("json")},
        {"INFO n2", info({}, "n2")},
        {"INFO kv.b-1_X", info({}, "kv.b-1_X")},
        {"INFO TREE n2", info("TREE", "n2")},
        {"INFO\ttree \v n2\r\n", info("tree", "n2")},
        {"INFO JSON kv.b-1", info("JSON", "kv.b-1")},
        {"INFO STATS STATS", info("STATS", "STATS")}, // a node named like a section
        {"INFO servers", info({}, "servers")},        // not a section: a node name
        {"INFO TREES", info({}, "TREES")},
        {"INFO 0", info({}, "0")},
        {"INFO -", info({}, "-")},
    };
    for (const example& e : valid) {
        CAPTURE(otpkv::escaped(e.line));
        const command cmd = parse(e.line);
        CHECK(cmd == e.cmd);
        CHECK(cmd.bucket.empty());
        CHECK(cmd.key.empty());
        CHECK(cmd.value.empty());
    }
    const std::string with_longest = "INFO SERVER " + longest_name;
    CHECK(parse(with_longest) == info("SERVER", longest_name));
    CHECK(parse("INFO " + longest_name) == info({}, longest_name));
    // The views point into the line.
    const std::string line = "INFO tree n2";
    const command cmd = parse(line);
    CHECK(cmd.section.data() == line.data() + 5);
    CHECK(cmd.node.data() == line.data() + 10);
    static_assert(parse("INFO TREE n2") == info("TREE", "n2"));
    static_assert(parse("INFO n2 TREE").kind == command_kind::unknown);
    CHECK(otpkv::verb_name(command_kind::info) == "INFO");
}

TEST_CASE("parse: INFO with arguments in the wrong order, too many, or no valid name is unknown") {
    const std::string too_long_name(256, 'n');
    for (const std::string_view line : {"INFO n2 TREE"sv,
                                        "INFO n2 n3"sv,
                                        "INFO TREE JSON n2"sv,
                                        "INFO TREE n2 x"sv,
                                        "INFO a b c d e"sv,
                                        "INFO TREE n2@host"sv,
                                        "INFO n2@host"sv,
                                        "INFO n:2"sv,
                                        "INFO TREE n/2"sv,
                                        "INFO \x80"sv,
                                        "INFO TREE \xc3\xa9"sv,
                                        "INFO a\0b"sv,
                                        "INFO TREE a\0b"sv,
                                        "INFO *"sv,
                                        "INFO a=b"sv,
                                        "info"sv,
                                        "Info"sv,
                                        "info TREE"sv,
                                        "INFOS"sv,
                                        "INFO\x00"sv,
                                        "XINFO TREE"sv}) {
        CAPTURE(otpkv::escaped(line));
        CHECK(parse(line) == command{});
    }
    CHECK(parse("INFO " + too_long_name) == command{});
    CHECK(parse("INFO TREE " + too_long_name) == command{});
}

TEST_CASE("INFO: to_string, request_line and run") {
    CHECK(otpkv::to_string(parse("INFO")) == "info");
    CHECK(otpkv::to_string(parse("INFO json")) == "info json");
    CHECK(otpkv::to_string(parse("INFO n2")) == "info n2");
    CHECK(otpkv::to_string(parse("INFO TREE n2")) == "info TREE n2");
    CHECK(otpkv::request_line(parse("INFO")) == "INFO\r\n");
    CHECK(otpkv::request_line(parse(" INFO  tree \r\n")) == "INFO tree\r\n");
    CHECK(otpkv::request_line(parse("INFO n2")) == "INFO n2\r\n");
    CHECK(otpkv::request_line(parse("INFO\tTREE\tn2")) == "INFO TREE n2\r\n");
    for (const char* line : {"INFO", "INFO tree", "INFO n2", "INFO CLUSTER n2"}) {
        CAPTURE(line);
        CHECK(parse(otpkv::request_line(parse(line))) == parse(line));
    }
    // `run` knows no node: a registry alone answers INFO as an unknown verb (the router
    // answers it).
    auto reg = otpkv::registry::start();
    for (const char* line : {"INFO", "INFO TREE", "INFO TREE n2"}) {
        std::string out;
        const otpkv::reply_outcome outcome = otpkv::run(parse(line), *reg, out);
        CHECK(out == "UNKNOWN COMMAND\r\n");
        CHECK(outcome.kind == reply_kind::unknown_command);
    }
}

TEST_CASE("to_string and escaped make any bytes readable") {
    CHECK(otpkv::to_string(parse("DELETE shopping eggs")) == "delete shopping eggs");
    CHECK(otpkv::to_string(parse("SUBSCRIBE s")) == "subscribe s");
    CHECK(otpkv::to_string(parse("PUT b\x00 k v"sv)) == "put b\\x00 k v");
    CHECK(otpkv::escaped("a\0b\r\n\t\\\"\x7f\xff~ "sv) == R"(a\x00b\r\n\t\\\"\x7f\xff~ )");
}

// ---------------------------------------------------------------------------------------
// Replies: every row of protocol.md's command table and error table, byte for byte
// ---------------------------------------------------------------------------------------

TEST_CASE("reply bytes: the command table") {
    CHECK(bytes_of(reply::ok()) == "OK\r\n");               // CREATE, PUT, DELETE
    CHECK(bytes_of(reply::found("3")) == "3\r\nOK\r\n");    // GET of a present key
    CHECK(bytes_of(reply::missing()) == "\r\nOK\r\n");      // GET of an absent key
    CHECK(bytes_of(reply::not_found()) == "NOT FOUND\r\n"); // no such bucket
    CHECK(bytes_of(reply::subscribed()).empty());           // SUBSCRIBE
    CHECK(bytes_of(reply::unknown_command()) == "UNKNOWN COMMAND\r\n");
}

TEST_CASE("reply bytes: a value comes back exactly as stored") {
    const std::string_view binary = "\x00\xff\x80z"sv;
    CHECK(bytes_of(reply::found(binary)) == "\x00\xff\x80z\r\nOK\r\n"s);
}

TEST_CASE("reply bytes: the ERROR extensions, and which close the connection") {
    struct row {
        reply r;
        std::string_view bytes;
        bool closes;
    };
    for (const row& x : {
             row{reply::error(error_code::line_too_long), "ERROR line too long\r\n", true},
             row{reply::error(error_code::no_route), "ERROR no route\r\n", false},
             row{reply::error(error_code::node_unavailable, "n2@127.0.0.1"),
                 "ERROR node n2@127.0.0.1 unavailable\r\n", false},
             row{reply::error(error_code::node_unavailable), "ERROR node unavailable\r\n", false},
             row{reply::error(error_code::too_many_buckets), "ERROR too many buckets\r\n", false},
             row{reply::error(error_code::too_many_connections), "ERROR too many connections\r\n",
                 true},
             row{reply::error(error_code::internal), "ERROR internal\r\n", true},
             row{reply::error(error_code::not_a_peer), "ERROR not a peer\r\n", true},
         }) {
        CAPTURE(x.bytes);
        CHECK(bytes_of(x.r) == x.bytes);
        CHECK(otpkv::closes_connection(x.r.code) == x.closes);
        CHECK(otpkv::closes_connection(otpkv::reply_outcome::of(x.r)) == x.closes);
        // Read back by a client: the same outcome, so it closes after the same replies.
        const otpkv::reply_view read = otpkv::read_reply(command_kind::get, x.bytes);
        CHECK(read.known);
        CHECK(read.size == x.bytes.size());
        CHECK(read.outcome == otpkv::reply_outcome::of(x.r));
        CHECK(read.node == x.r.node);
        CHECK(bytes_of(x.r).starts_with("ERROR")); // clients of the guide match the prefix
    }
}

TEST_CASE("reply bytes: SUBSCRIBE events") {
    std::string out;
    otpkv::append_set_event(out, "eggs", "3");
    otpkv::append_deleted_event(out, "eggs");
    CHECK(out == "eggs SET TO 3\r\neggs DELETED\r\n");
}

TEST_CASE("reply bytes: a pipelined batch is the replies in request order") {
    std::string out;
    for (const reply& r : {reply::not_found(), reply::ok(), reply::found("3"), reply::missing(),
                           reply::unknown_command()}) {
        otpkv::append_reply(out, r);
    }
    CHECK(out == "NOT FOUND\r\nOK\r\n3\r\nOK\r\n\r\nOK\r\nUNKNOWN COMMAND\r\n");
}

TEST_CASE("reply bytes: any byte sink with append(ptr, n) works") {
    struct sink {
        std::vector<char> bytes;
        void append(const char* data, std::size_t size) {
            bytes.insert(bytes.end(), data, data + size);
        }
    };
    static_assert(otpkv::byte_sink<sink>);
    static_assert(!otpkv::byte_sink<std::vector<char>>);
    sink s;
    otpkv::append_reply(s, reply::found("v"));
    CHECK(std::string(s.bytes.begin(), s.bytes.end()) == "v\r\nOK\r\n");
}

// ---------------------------------------------------------------------------------------
// The guide's session, framed, parsed and answered by a toy store
// ---------------------------------------------------------------------------------------

TEST_CASE("the guide's integration sequence, framed and parsed, gives the guide's bytes") {
    // A stand-in for the registry (which comes with its own issue): one bucket at most.
    bool have_bucket = false;
    std::string stored;
    auto run = [&](const command& cmd) -> reply {
        if (cmd.kind == command_kind::unknown) {
            return reply::unknown_command();
        }
        if (cmd.kind == command_kind::create) {
            have_bucket = true;
            return reply::ok();
        }
        if (!have_bucket) {
            return reply::not_found();
        }
        if (cmd.kind == command_kind::put) {
            stored = cmd.value;
            return reply::ok();
        }
        if (cmd.kind == command_kind::erase) {
            stored.clear();
            return reply::ok();
        }
        return stored.empty() ? reply::missing() : reply::found(stored);
    };
    line_framer framer;
    framer.feed("UNKNOWN shopping\r\nGET shopping eggs\r\nCREATE shopping\r\n"
                "PUT shopping eggs 3\r\nGET shopping eggs\r\nDELETE shopping eggs\r\n"
                "GET shopping eggs\r\n");
    std::string out;
    for (otpkv::frame f = framer.next(); f.status == frame_status::line; f = framer.next()) {
        otpkv::append_reply(out, run(parse(f.line)));
    }
    CHECK(out == "UNKNOWN COMMAND\r\nNOT FOUND\r\nOK\r\nOK\r\n3\r\nOK\r\nOK\r\n\r\nOK\r\n");
}

// ---- run(): a parsed command against a real registry, with exact bytes ----

namespace {

// Runs each line in turn and returns everything appended, plus the last reply's shape.
struct session {
    std::shared_ptr<otpkv::registry> reg;
    std::string out;
    otpkv::reply_outcome last{};

    explicit session(otpkv::registry_options options = {}) : reg(otpkv::registry::start(options)) {}
    std::string operator()(std::string_view line) {
        out.clear();
        last = otpkv::run(parse(line), *reg, out);
        return out;
    }
};

} // namespace

TEST_CASE("run: CREATE gives OK, also when the bucket exists") {
    session s;
    CHECK(s("CREATE shopping") == "OK\r\n");
    CHECK(s.last.kind == otpkv::reply_kind::ok);
    s.reg->lookup("shopping")->put("eggs", "3");
    CHECK(s("CREATE shopping") == "OK\r\n");
    CHECK(s.reg->lookup("shopping")->get("eggs") == "3"); // the same bucket
    CHECK(s.reg->size() == 1);
}

TEST_CASE("run: PUT, GET and DELETE on an existing bucket") {
    session s;
    s("CREATE b");
    CHECK(s("PUT b k v") == "OK\r\n");
    CHECK(s.reg->lookup("b")->get("k") == "v");
    CHECK(s("GET b k") == "v\r\nOK\r\n");
    CHECK(s.last.kind == otpkv::reply_kind::value);
    CHECK(s("GET b absent") == "\r\nOK\r\n");
    CHECK(s("DELETE b k") == "OK\r\n");
    CHECK(s("DELETE b k") == "OK\r\n"); // also when absent
    CHECK(s("GET b k") == "\r\nOK\r\n");
    // Values come back exactly as stored, any bytes but whitespace.
    CHECK(s("PUT b bin \x01\x7f\xff\x00z"sv) == "OK\r\n");
    CHECK(s("GET b bin") == "\x01\x7f\xff\x00z\r\nOK\r\n"s);
}

TEST_CASE("run: NOT FOUND for every command on a missing bucket, and nothing is created") {
    session s;
    CHECK(s("PUT nope k v") == "NOT FOUND\r\n");
    CHECK(s("GET nope k") == "NOT FOUND\r\n");
    CHECK(s.last.kind == otpkv::reply_kind::not_found);
    CHECK(s("DELETE nope k") == "NOT FOUND\r\n");
    CHECK(s("SUBSCRIBE nope") == "NOT FOUND\r\n");
    CHECK(s.reg->size() == 0);
}

TEST_CASE("run: unknown verbs, wrong arity and blank lines are UNKNOWN COMMAND") {
    session s;
    s("CREATE b");
    for (const char* line : {"UNKNOWN shopping", "PUT b k", "PUT b k hello world", "GET b",
                             "CREATE", "create b", "", "   "}) {
        CHECK(s(line) == "UNKNOWN COMMAND\r\n");
        CHECK(s.last.kind == otpkv::reply_kind::unknown_command);
    }
    CHECK(s.reg->lookup("b")->size() == 0); // nothing was written
}

TEST_CASE("run: SUBSCRIBE sends no bytes and hands over the bucket") {
    session s;
    s("CREATE b");
    std::string events;
    otpkv::subscription sub;
    std::string out;
    const auto kind = otpkv::run(parse("SUBSCRIBE b"), *s.reg, out, [&](auto& bucket) {
        sub = bucket.subscribe([&](const auto& e) {
            if (e.kind == otpkv::bucket_event_kind::put) {
                otpkv::append_set_event(events, e.key, *e.value);
            } else {
                otpkv::append_deleted_event(events, e.key);
            }
        });
    });
    CHECK(kind.kind == otpkv::reply_kind::subscribed);
    CHECK(out.empty());
    s("PUT b milk 3");
    s("DELETE b milk");
    CHECK(events == "milk SET TO 3\r\nmilk DELETED\r\n");
}

TEST_CASE("run: CREATE past max_buckets gives ERROR too many buckets and keeps the others") {
    otpkv::registry_options options;
    options.max_buckets = 2;
    session s(options);
    CHECK(s("CREATE a") == "OK\r\n");
    CHECK(s("CREATE b") == "OK\r\n");
    CHECK(s("PUT a k 1") == "OK\r\n");
    CHECK(s("CREATE c") == "ERROR too many buckets\r\n");
    CHECK(s.last == otpkv::reply_outcome{reply_kind::error, error_code::too_many_buckets});
    CHECK_FALSE(otpkv::closes_connection(s.last));
    CHECK(s("GET c k") == "NOT FOUND\r\n");
    CHECK(s("GET a k") == "1\r\nOK\r\n");
    CHECK(s("CREATE a") == "OK\r\n"); // existing names still work
}

TEST_CASE("run: a CREATE on a stopped registry is ERROR internal") {
    session s;
    s.reg->stop();
    CHECK(s("CREATE b") == "ERROR internal\r\n");
    CHECK(s.last == otpkv::reply_outcome{reply_kind::error, error_code::internal});
    CHECK(otpkv::closes_connection(s.last)); // the server closes after it
    CHECK(s("GET b k") == "NOT FOUND\r\n");
    CHECK_FALSE(otpkv::closes_connection(s.last));
}

TEST_CASE("run: the guide's integration test, byte for byte") {
    session s;
    std::string all;
    for (const char* line :
         {"UNKNOWN shopping", "GET shopping eggs", "CREATE shopping", "PUT shopping eggs 3",
          "GET shopping eggs", "DELETE shopping eggs", "GET shopping eggs"}) {
        all += s(line);
    }
    CHECK(all == "UNKNOWN COMMAND\r\nNOT FOUND\r\nOK\r\nOK\r\n3\r\nOK\r\nOK\r\n\r\nOK\r\n");
}

// ---------------------------------------------------------------------------------------
// The other direction: request lines, replies as a client reads them, the peer greeting
// ---------------------------------------------------------------------------------------

TEST_CASE("read_reply: every reply shape is whole only with its last byte") {
    struct shape {
        command_kind kind;
        std::string_view bytes;
    };
    const shape shapes[] = {
        {command_kind::create, "OK\r\n"},
        {command_kind::put, "OK\r\n"},
        {command_kind::erase, "OK\r\n"},
        {command_kind::put, "NOT FOUND\r\n"},
        {command_kind::erase, "UNKNOWN COMMAND\r\n"},
        {command_kind::create, "ERROR too many buckets\r\n"},
        {command_kind::get, "3\r\nOK\r\n"},
        {command_kind::get, "\r\nOK\r\n"},      // a missing key
        {command_kind::get, "OK\r\nOK\r\n"},    // the value "OK"
        {command_kind::get, "ERROR\r\nOK\r\n"}, // the value "ERROR" (no reason: a value)
        {command_kind::get, "NOT FOUND\r\n"},
        {command_kind::get, "UNKNOWN COMMAND\r\n"},
        {command_kind::get, "ERROR node n2 unavailable\r\n"},
        {command_kind::get, "ERROR no route\r\n"},
        {command_kind::get, "ERROR internal\r\n"},
        {command_kind::create, "OK\n"}, // bare LF
        {command_kind::get, "v\nOK\n"},
        {command_kind::get, "\nOK\n"},
        {command_kind::get, "NOT FOUND\n"},
        {command_kind::get, "ERROR no route\n"},
        {command_kind::subscribe, "SUBSCRIBED\r\n"},
        {command_kind::unknown, "OTPKV-PEER 2 n2 00 11\r\n"},
        {command_kind::get, "\x80\xff\x00v\r\nOK\r\n"sv},
    };
    for (const shape& s : shapes) {
        CAPTURE(otpkv::escaped(s.bytes));
        CAPTURE(static_cast<int>(s.kind));
        for (std::size_t n = 0; n < s.bytes.size(); ++n) {
            CHECK(otpkv::read_reply(s.kind, s.bytes.substr(0, n)).size == 0); // incomplete
        }
        CHECK(otpkv::read_reply(s.kind, s.bytes).size == s.bytes.size());
        // What follows is the next reply's, never this one's.
        CHECK(otpkv::read_reply(s.kind, std::string(s.bytes) + "OK\r\n").size == s.bytes.size());
        CHECK(otpkv::read_reply(s.kind, std::string(s.bytes) + "NOT FOUND\r\nx").size ==
              s.bytes.size());
    }
    // One line for anything but a GET, even when it reads like a value.
    CHECK(otpkv::read_reply(command_kind::put, "3\r\nOK\r\n").size == 3);
    // A GET's "OK" line alone is a value still waiting for its OK.
    CHECK(otpkv::read_reply(command_kind::get, "OK\r\n").size == 0);
}

TEST_CASE("read_reply: an INFO's reply is its lines up to OK, or one line of refusal") {
    struct shape {
        std::string_view bytes;
        reply_kind kind;
        std::string_view lines; // the value: the lines before OK
    };
    const shape shapes[] = {
        {"OK\r\n", reply_kind::ok, ""}, // no lines
        {"a\r\nOK\r\n", reply_kind::ok, "a\r\n"},
        {"# Server\r\nnode:n2\r\n\r\n# Tree\r\nOKAY\r\n OK\r\nOK \r\nOK\r\n", reply_kind::ok,
         "# Server\r\nnode:n2\r\n\r\n# Tree\r\nOKAY\r\n OK\r\nOK \r\n"},
        {"{\"node\":\"n2\"}\r\nOK\r\n", reply_kind::ok, "{\"node\":\"n2\"}\r\n"},
        {"a\nb\nOK\n", reply_kind::ok, "a\nb\n"}, // bare LF
        {"\r\nOK\r\n", reply_kind::ok, "\r\n"},   // an empty line
        {"a\rb\r\nOK\r\n", reply_kind::ok, "a\rb\r\n"},
        {"UNKNOWN COMMAND\r\n", reply_kind::unknown_command, ""},
        {"NOT FOUND\r\n", reply_kind::not_found, ""},
        {"ERROR node n2 unavailable\r\n", reply_kind::error, ""},
        {"ERROR no route\r\n", reply_kind::error, ""},
        {"ERROR internal\n", reply_kind::error, ""},
    };
    for (const shape& s : shapes) {
        CAPTURE(otpkv::escaped(s.bytes));
        for (std::size_t n = 0; n < s.bytes.size(); ++n) {
            CHECK(otpkv::read_reply(command_kind::info, s.bytes.substr(0, n)).size == 0);
        }
        const otpkv::reply_view r = otpkv::read_reply(command_kind::info, s.bytes);
        CHECK(r.size == s.bytes.size());
        CHECK(r.known);
        CHECK(r.outcome.kind == s.kind);
        CHECK(r.value == s.lines);
        // What follows is the next reply's.
        CHECK(otpkv::read_reply(command_kind::info, std::string(s.bytes) + "OK\r\n").size ==
              s.bytes.size());
        const otpkv::routed_reply routed =
            otpkv::parse_routed_reply(command_kind::info, std::string(s.bytes));
        CHECK(routed.kind == s.kind);
        CHECK(routed.bytes == s.bytes);
        CHECK(routed.value == s.lines);
    }
    // An error's node, as for any request.
    const auto down = otpkv::read_reply(command_kind::info, "ERROR node n2 unavailable\r\nx");
    CHECK(down.outcome.code == error_code::node_unavailable);
    CHECK(down.node == "n2");
    // A refusal word is a refusal only as the first line.
    CHECK(otpkv::read_reply(command_kind::info, "a\r\nERROR internal\r\nOK\r\n").size == 23);
    CHECK(otpkv::read_reply(command_kind::info, "a\r\nERROR internal\r\n").size == 0);
    // Resuming the scan where it stopped gives the same end, however the bytes came.
    const std::string_view whole = "one\r\ntwo\r\nOK\r\n";
    std::size_t scanned = 0;
    std::size_t size = 0;
    for (std::size_t n = 1; n <= whole.size() && size == 0; ++n) {
        size = otpkv::detail::info_reply_size(whole.substr(0, n), scanned);
    }
    CHECK(size == whole.size());
    CHECK(scanned == 10); // where the OK line starts
}

TEST_CASE("peer request ids: parse_peer_id, append_peer_id, parse_peer_request, "
          "parse_peer_reply") {
    CHECK(otpkv::parse_peer_id("1") == 1U);
    CHECK(otpkv::parse_peer_id("18446744073709551615") == 18446744073709551615ULL);
    for (const std::string_view bad : {"", "0", "01", "-1", "+1", "1a", "18446744073709551616",
                                       "99999999999999999999", "123456789012345678901"}) {
        INFO(bad);
        CHECK_FALSE(otpkv::parse_peer_id(bad).has_value());
    }
    for (const std::uint64_t id : {1ULL, 9ULL, 10ULL, 4096ULL, 18446744073709551615ULL}) {
        std::string out;
        otpkv::append_peer_id(out, id);
        CHECK(out == std::to_string(id));
        CHECK(otpkv::parse_peer_id(out) == id);
    }
    const auto req = otpkv::parse_peer_request("42  GET b k\r\n");
    REQUIRE(req.has_value());
    CHECK(req->id == 42U);
    CHECK(req->rest == "GET b k");
    CHECK(otpkv::parse(req->rest) == otpkv::parse("GET b k"));
    const auto heartbeat = otpkv::parse_peer_request("7\r\n");
    REQUIRE(heartbeat.has_value());
    CHECK(heartbeat->rest.empty());
    CHECK_FALSE(otpkv::parse_peer_request("GET b k\r\n").has_value());
    CHECK_FALSE(otpkv::parse_peer_request("\r\n").has_value());

    const auto header = otpkv::parse_peer_reply("=5\r\n");
    REQUIRE(header.has_value());
    CHECK(header->mark == '=');
    CHECK(header->id == 5U);
    const auto event = otpkv::parse_peer_reply("*6 k SET TO v\r\n");
    REQUIRE(event.has_value());
    CHECK(event->mark == '*');
    CHECK(event->rest == "k SET TO v");
    const auto end = otpkv::parse_peer_reply("!6\n");
    REQUIRE(end.has_value());
    CHECK(end->mark == '!');
    for (const std::string_view bad : {"", "=\r\n", "=0\r\n", "=5 OK\r\n", "*6\r\n", "!6 x\r\n",
                                       "5\r\n", "OK\r\n", "= 5\r\n", "=5x\r\n"}) {
        INFO(bad);
        CHECK_FALSE(otpkv::parse_peer_reply(bad).has_value());
    }
}

TEST_CASE("peer handshake lines: each step's line, and nothing else, parses") {
    const std::string a(64, 'a');
    const std::string b = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    using otpkv::peer_hello;
    CHECK(otpkv::peer_greeting_line("n1", a) == "OTPKV-PEER 2 n1 " + a + "\r\n");
    CHECK(otpkv::peer_answer_line("n2", b, a) == "OTPKV-PEER 2 n2 " + b + " " + a + "\r\n");
    CHECK(otpkv::peer_proof_line(b) == "OTPKV-PROOF " + b + "\r\n");
    CHECK(otpkv::parse_peer_greeting("OTPKV-PEER 2 n2 " + b) == peer_hello{"n2", b, {}});
    CHECK(otpkv::parse_peer_greeting("  OTPKV-PEER\t2 \v node.b-2_x " + b + " \r\n") ==
          peer_hello{"node.b-2_x", b, {}});
    CHECK(otpkv::parse_peer_answer("OTPKV-PEER 2 n2 " + b + " " + a + "\r\n") ==
          peer_hello{"n2", b, a});
    CHECK(otpkv::parse_peer_proof("OTPKV-PROOF " + a + "\n") == std::string_view(a));
    for (const std::string_view name : {"a", "n1", "kv.example-1_2"}) {
        CHECK(otpkv::parse_peer_greeting(otpkv::peer_greeting_line(name, a)) ==
              peer_hello{name, a, {}});
        CHECK(otpkv::parse_peer_answer(otpkv::peer_answer_line(name, a, b)) ==
              peer_hello{name, a, b});
    }
    const std::string upper(64, 'A');
    const std::string short_hex(63, 'a');
    const std::string long_hex(65, 'a');
    const std::string not_hex = std::string(63, 'a') + "g";
    for (const std::string& bad :
         {""s, "\r\n"s, "OTPKV-PEER"s, "OTPKV-PEER 2"s, "OTPKV-PEER 2 n2"s, "OTPKV-PEER 1 n2"s,
          "OTPKV-PEER 1 n2 " + a, "OTPKV-PEER 3 n2 " + a, "OTPKV-PEER 2 n2 " + upper,
          "OTPKV-PEER 2 n2 " + short_hex, "OTPKV-PEER 2 n2 " + long_hex,
          "OTPKV-PEER 2 n2 " + not_hex, "otpkv-peer 2 n2 " + a, "OTPKV-PEERS 2 n2 " + a,
          "OTPKV-PEER 2 n2 " + a + " " + b, "GET b k"s}) {
        CAPTURE(otpkv::escaped(bad));
        CHECK_FALSE(otpkv::parse_peer_greeting(bad).has_value());
    }
    for (const std::string& bad :
         {"OTPKV-PEER 2 n2 " + a, "OTPKV-PEER 2 n2 " + a + " " + upper,
          "OTPKV-PEER 2 n2 " + a + " " + short_hex, "OTPKV-PEER 1 n2 " + a + " " + b,
          "OTPKV-PEER 2 n2 " + a + " " + b + " x", "OTPKV-PROOF " + a}) {
        CAPTURE(otpkv::escaped(bad));
        CHECK_FALSE(otpkv::parse_peer_answer(bad).has_value());
    }
    for (const std::string& bad :
         {"OTPKV-PROOF"s, "OTPKV-PROOF " + upper, "OTPKV-PROOF " + a + " " + a, "OTPKV-PROOFS " + a,
          "OTPKV-PEER 2 n2 " + a}) {
        CAPTURE(otpkv::escaped(bad));
        CHECK_FALSE(otpkv::parse_peer_proof(bad).has_value());
    }
    // Handshake lines, well formed or not (a server refuses the ones out of step).
    for (const std::string_view line :
         {"OTPKV-PEER"sv, " OTPKV-PEER 1 x\r\n"sv, "OTPKV-PROOF x"sv}) {
        CHECK(otpkv::is_peer_handshake(line));
    }
    for (const std::string_view line :
         {""sv, "GET b k"sv, "OTPKV-PEERS"sv, "otpkv-peer 2"sv, "x OTPKV-PEER"sv}) {
        CHECK_FALSE(otpkv::is_peer_handshake(line));
    }
}

TEST_CASE("peer proofs: HMAC-SHA-256 of the step's text under the cookie; each part counts") {
    const std::string na(64, '1');
    const std::string nb(64, '2');
    const std::string accept = otpkv::peer_accept_proof("secret", "n2", "n1", na, nb);
    const std::string connect = otpkv::peer_connect_proof("secret", "n1", "n2", na, nb);
    // As PEER_PROTOCOL_2 spells the texts (values from Python's hmac module).
    CHECK(accept == otpkv::detail::to_hex(otpkv::detail::hmac_sha256(
                        "secret", "otpkv-peer-2 accept n2 n1 " + na + " " + nb)));
    CHECK(connect == otpkv::detail::to_hex(otpkv::detail::hmac_sha256(
                         "secret", "otpkv-peer-2 connect n1 n2 " + na + " " + nb)));
    CHECK(accept == "913461b62ceb108e8de93c0cb62b4bf156dec366693f79b22cb6a8fdc3b546a2");
    CHECK(connect == "10ad14414e63a29a1fd1f830a3bdc1448e197c40086b4a1ed7b7f4b292b2b86f");
    CHECK(accept != connect); // B's proof never serves as A's
    // Another cookie, name or nonce, another proof.
    CHECK(otpkv::peer_accept_proof("secreT", "n2", "n1", na, nb) != accept);
    CHECK(otpkv::peer_accept_proof("secret", "n3", "n1", na, nb) != accept);
    CHECK(otpkv::peer_accept_proof("secret", "n2", "n3", na, nb) != accept);
    CHECK(otpkv::peer_accept_proof("secret", "n2", "n1", nb, na) != accept);
    CHECK(otpkv::peer_proof_matches(accept, accept));
    CHECK_FALSE(otpkv::peer_proof_matches(accept, connect));
    CHECK_FALSE(otpkv::peer_proof_matches(accept, accept.substr(1)));
}

TEST_CASE("request_line: a command's canonical line, which parses back to the same command") {
    struct example {
        std::string_view line;
        std::string_view wire;
    };
    const example examples[] = {
        {"CREATE shopping", "CREATE shopping\r\n"},
        {"PUT shopping eggs 3\r\n", "PUT shopping eggs 3\r\n"},
        {"GET shopping eggs\n", "GET shopping eggs\r\n"},
        {"DELETE shopping eggs", "DELETE shopping eggs\r\n"},
        {"SUBSCRIBE shopping", "SUBSCRIBE shopping\r\n"},
        {"  PUT\tb \v k \f v \r\n", "PUT b k v\r\n"},
        {"PUT \x80\xff k\0ey v\x01"sv, "PUT \x80\xff k\0ey v\x01\r\n"sv},
        {"GET OK OK", "GET OK OK\r\n"},
    };
    for (const example& e : examples) {
        CAPTURE(otpkv::escaped(e.line));
        const otpkv::command cmd = parse(e.line);
        REQUIRE(cmd.kind != command_kind::unknown);
        const std::string wire = otpkv::request_line(cmd);
        CHECK(wire == e.wire);
        CHECK(parse(wire) == cmd);
    }
}

TEST_CASE("parse_routed_reply: every reply shape, its fields and its exact bytes") {
    const auto check = [](command_kind kind, std::string bytes, reply_kind shape,
                          std::string value = {}, error_code error = error_code::internal,
                          std::string node = {}) {
        CAPTURE(otpkv::escaped(bytes));
        const otpkv::routed_reply r = otpkv::parse_routed_reply(kind, bytes);
        CHECK(r.kind == shape);
        CHECK(r.bytes == bytes);
        CHECK(r.ok() == (shape == reply_kind::ok || shape == reply_kind::value));
        if (shape == reply_kind::value) {
            CHECK(r.value == value);
        }
        if (shape == reply_kind::error) {
            CHECK(static_cast<int>(r.error) == static_cast<int>(error));
            CHECK(r.node == node);
        }
    };
    check(command_kind::create, "OK\r\n", reply_kind::ok);
    check(command_kind::put, "OK\r\n", reply_kind::ok);
    check(command_kind::erase, "OK\n", reply_kind::ok);
    check(command_kind::get, "3\r\nOK\r\n", reply_kind::value, "3");
    check(command_kind::get, "\r\nOK\r\n", reply_kind::value, "");
    check(command_kind::get, "OK\r\nOK\r\n", reply_kind::value, "OK");
    check(command_kind::get, "ERROR\r\nOK\r\n", reply_kind::value, "ERROR");
    check(command_kind::get, "\x80\x00v\r\nOK\r\n"s, reply_kind::value, "\x80\x00v"s);
    check(command_kind::get, "v\nOK\n", reply_kind::value, "v");
    check(command_kind::get, "NOT FOUND\r\n", reply_kind::not_found);
    check(command_kind::put, "NOT FOUND\r\n", reply_kind::not_found);
    check(command_kind::get, "UNKNOWN COMMAND\r\n", reply_kind::unknown_command);
    check(command_kind::create, "UNKNOWN COMMAND\r\n", reply_kind::unknown_command);
    check(command_kind::get, "ERROR node n2 unavailable\r\n", reply_kind::error, {},
          error_code::node_unavailable, "n2");
    check(command_kind::put, "ERROR node kv.b-1 unavailable\r\n", reply_kind::error, {},
          error_code::node_unavailable, "kv.b-1");
    check(command_kind::get, "ERROR no route\r\n", reply_kind::error, {}, error_code::no_route);
    check(command_kind::create, "ERROR too many buckets\r\n", reply_kind::error, {},
          error_code::too_many_buckets);
    check(command_kind::get, "ERROR line too long\r\n", reply_kind::error, {},
          error_code::line_too_long);
    check(command_kind::get, "ERROR too many connections\r\n", reply_kind::error, {},
          error_code::too_many_connections);
    check(command_kind::put, "ERROR internal\r\n", reply_kind::error, {}, error_code::internal);
    // Something no node says is an internal error, its bytes kept.
    check(command_kind::put, "HELLO\r\n", reply_kind::error, {}, error_code::internal);
    check(command_kind::put, "ERROR who knows\r\n", reply_kind::error, {}, error_code::internal);
    // What format_reply writes parses back to the same error, also without a node name.
    for (const error_code code :
         {error_code::line_too_long, error_code::no_route, error_code::node_unavailable,
          error_code::too_many_buckets, error_code::too_many_connections, error_code::internal,
          error_code::not_a_peer}) {
        const std::string bytes = otpkv::format_reply(otpkv::reply::error(code));
        CAPTURE(bytes);
        CHECK(static_cast<int>(otpkv::parse_routed_reply(command_kind::get, bytes).error) ==
              static_cast<int>(code));
    }
}
