// SPDX-License-Identifier: MIT
// parse_json and json_value (detail/json.hpp): real etcd v3 JSON gateway replies read out
// (revisions through integer(), keys through base64_decode), every kind of value, escapes and
// surrogate pairs, int64's limits, each rejection with the byte offset it reports, the
// nesting limit against 100,000 open brackets, and is_json_object (observer_json.hpp), which
// uses the same grammar, agreeing with parse_json.
#include <otpkv/detail/base64.hpp>
#include <otpkv/detail/json.hpp>
#include <otpkv/observer.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

using otpkv::detail::base64_decode;
using otpkv::detail::json_type;
using otpkv::detail::json_value;
using otpkv::detail::parse_json;

namespace {

// The value of `text`, which must parse.
json_value parsed(std::string_view text, int max_depth = 64) {
    std::string why;
    std::optional<json_value> v = parse_json(text, &why, max_depth);
    INFO("text: ", text, " why: ", why);
    REQUIRE(v.has_value());
    return std::move(*v);
}

// Why `text` does not parse (it must not).
std::string refusal(std::string_view text, int max_depth = 64) {
    std::string why;
    const std::optional<json_value> v = parse_json(text, &why, max_depth);
    INFO("text: ", text);
    CHECK_FALSE(v.has_value());
    return why;
}

// The one string `text` (a JSON string literal) decodes to.
std::string string_of(std::string_view text) {
    const json_value v = parsed(text);
    CHECK(v.is_string());
    return std::string(v.text());
}

} // namespace

TEST_CASE("parse_json: an etcd range reply") {
    const json_value reply = parsed(
        R"({"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437",)"
        R"("revision":"5","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2",)"
        R"("mod_revision":"3","version":"2","value":"YmF6"}],"count":"1"})");
    REQUIRE(reply.is_object());
    CHECK(reply.at("header").at("revision").integer() == 5);
    CHECK(reply.at("header").at("raft_term").integer() == 2);
    // A uint64 beyond int64 (protobuf's uint64 cluster_id) is not an int64.
    CHECK(reply.at("header").at("cluster_id").is_string());
    CHECK(reply.at("header").at("cluster_id").text() == "14841639068965178418");
    CHECK_FALSE(reply.at("header").at("cluster_id").integer().has_value());
    CHECK(reply.at("count").integer() == 1);
    const auto& kvs = reply.at("kvs").items();
    REQUIRE(kvs.size() == 1);
    CHECK(base64_decode(kvs[0].at("key").text()) == std::optional<std::string>("foo"));
    CHECK(base64_decode(kvs[0].at("value").text()) == std::optional<std::string>("baz"));
    CHECK(kvs[0].at("mod_revision").integer() == 3);
    CHECK(kvs[0].at("create_revision").integer() == 2);
    // Members keep their order.
    const auto& members = reply.members();
    REQUIRE(members.size() == 3);
    CHECK(members[0].first == "header");
    CHECK(members[1].first == "kvs");
    CHECK(members[2].first == "count");

    // The minimal form from the brief; an empty range has no "kvs" (protobuf leaves out empty
    // fields), which reads as an empty list.
    const json_value small = parsed(R"({"header":{"revision":"5"},"kvs":[{"key":"Zm9v",)"
                                    R"("mod_revision":"3","value":"YmF6"}],"count":"1"})");
    CHECK(small.at("header").at("revision").integer() == 5);
    CHECK(small.at("kvs").items().size() == 1);
    const json_value none = parsed(R"({"header":{"revision":"5"}})");
    CHECK(none.find("kvs") == nullptr);
    CHECK(none.at("kvs").is_null());
    CHECK(none.at("kvs").items().empty());
    CHECK_FALSE(none.at("count").integer().has_value());
}

TEST_CASE("parse_json: an etcd txn reply with nested responses") {
    const json_value reply = parsed(R"({
  "header": {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437",
             "revision": "7", "raft_term": "2"},
  "succeeded": true,
  "responses": [
    {"response_put": {"header": {"revision": "7"}}},
    {"response_range": {"header": {"revision": "7"},
                        "kvs": [{"key": "L2EvYg==", "create_revision": "6",
                                 "mod_revision": "7", "version": "2", "value": "MQ=="}],
                        "count": "1"}},
    {"response_delete_range": {"header": {"revision": "7"}, "deleted": "1"}}
  ]
}
)");
    CHECK(reply.at("succeeded").is_bool());
    CHECK(reply.at("succeeded").boolean());
    CHECK(reply.at("header").at("revision").integer() == 7);
    const auto& responses = reply.at("responses").items();
    REQUIRE(responses.size() == 3);
    CHECK(responses[0].find("response_put") != nullptr);
    CHECK(responses[0].find("response_range") == nullptr);
    const json_value& range = responses[1].at("response_range");
    REQUIRE(range.at("kvs").items().size() == 1);
    const json_value& kv = range.at("kvs").items()[0];
    CHECK(base64_decode(kv.at("key").text()) == std::optional<std::string>("/a/b"));
    CHECK(base64_decode(kv.at("value").text()) == std::optional<std::string>("1"));
    CHECK(kv.at("version").integer() == 2);
    CHECK(responses[2].at("response_delete_range").at("deleted").integer() == 1);

    const json_value failed = parsed(R"({"header":{"revision":"7"},"succeeded":false})");
    CHECK(failed.at("succeeded").is_bool());
    CHECK_FALSE(failed.at("succeeded").boolean());
    // Left out (protobuf's default false): null, and boolean() is false.
    const json_value omitted = parsed(R"({"header":{"revision":"7"}})");
    CHECK_FALSE(omitted.at("succeeded").boolean());
}

TEST_CASE("parse_json: etcd watch messages") {
    const json_value created =
        parsed(R"({"result":{"header":{"cluster_id":"14841639068965178418",)"
               R"("member_id":"10276657743932975437","revision":"8","raft_term":"2"},)"
               R"("created":true}})");
    CHECK(created.at("result").at("created").boolean());
    CHECK(created.at("result").at("header").at("revision").integer() == 8);
    CHECK(created.at("result").at("events").items().empty());

    const json_value events =
        parsed(R"({"result":{"header":{"revision":"10"},"events":[)"
               R"({"kv":{"key":"Zm9v","create_revision":"8","mod_revision":"9","version":"2",)"
               R"("value":"YmFy"}},)"
               R"({"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"10"}}]}})");
    const auto& list = events.at("result").at("events").items();
    REQUIRE(list.size() == 2);
    // A PUT is protobuf's default enum value, so its "type" is left out.
    CHECK(list[0].at("type").is_null());
    CHECK(list[0].at("type").text().empty());
    CHECK(base64_decode(list[0].at("kv").at("value").text()) == std::optional<std::string>("bar"));
    CHECK(list[0].at("kv").at("mod_revision").integer() == 9);
    CHECK(list[1].at("type").text() == "DELETE");
    CHECK(base64_decode(list[1].at("kv").at("key").text()) == std::optional<std::string>("foo"));
    CHECK(list[1].at("kv").at("mod_revision").integer() == 10);
    CHECK(list[1].at("kv").find("value") == nullptr);
}

TEST_CASE("parse_json: every kind of value, and what the accessors give for each") {
    const json_value v = parsed(R"( [null, true, false, -1.5e+3, "s", [1], {"k":2}] )");
    REQUIRE(v.is_array());
    CHECK(v.type() == json_type::array);
    const auto& x = v.items();
    REQUIRE(x.size() == 7);
    CHECK(x[0].type() == json_type::null);
    CHECK(x[0].is_null());
    CHECK(x[1].type() == json_type::boolean);
    CHECK(x[1].is_bool());
    CHECK(x[1].boolean());
    CHECK(x[2].is_bool());
    CHECK_FALSE(x[2].boolean());
    CHECK(x[3].type() == json_type::number);
    CHECK(x[3].is_number());
    CHECK(x[3].text() == "-1.5e+3");
    CHECK_FALSE(x[3].integer().has_value());
    CHECK(x[4].type() == json_type::string);
    CHECK(x[4].text() == "s");
    CHECK(x[5].is_array());
    CHECK(x[5].items().size() == 1);
    CHECK(x[6].type() == json_type::object);
    CHECK(x[6].is_object());
    CHECK(x[6].at("k").integer() == 2);

    // Each accessor is empty, false, null or nullopt on the kinds it does not fit.
    for (const json_value& e : x) {
        CHECK(e.is_null() + e.is_bool() + e.is_number() + e.is_string() + e.is_array() +
                  e.is_object() ==
              1);
        if (!e.is_array()) {
            CHECK(e.items().empty());
        }
        if (!e.is_object()) {
            CHECK(e.members().empty());
            CHECK(e.find("k") == nullptr);
            CHECK(e.at("k").is_null());
        }
        if (!e.is_string() && !e.is_number()) {
            CHECK(e.text().empty());
            CHECK_FALSE(e.integer().has_value());
        }
        if (&e != &x[1]) {
            CHECK_FALSE(e.boolean());
        }
    }
    CHECK_FALSE(x[4].boolean());
    CHECK(json_value().is_null());

    // A scalar alone is a whole document, with whitespace around it.
    CHECK(parsed("\t\r\n 42 \n").integer() == 42);
    CHECK(parsed("null").is_null());
    CHECK(parsed("\"\"").text().empty());
    CHECK(parsed("{}").members().empty());
    CHECK(parsed("[ ]").items().empty());
    CHECK(parsed("[[],{},[{}]]").items().size() == 3);
}

TEST_CASE("parse_json: objects: repeated names, the last one wins; find and at") {
    const json_value v = parsed(R"({"a":1,"b":{"c":"x"},"a":2,"":"empty"})");
    REQUIRE(v.members().size() == 4);
    CHECK(v.members()[0].second.integer() == 1);
    CHECK(v.members()[2].second.integer() == 2);
    REQUIRE(v.find("a") != nullptr);
    CHECK(v.find("a")->integer() == 2);
    CHECK(v.at("a").integer() == 2);
    CHECK(v.at("").text() == "empty");
    CHECK(v.at("b").at("c").text() == "x");
    CHECK(v.find("z") == nullptr);
    CHECK(v.at("z").is_null());
    CHECK(v.at("z").at("y").at("x").is_null());
    CHECK(&v.at("z") == &v.at("y")); // the one shared null
    // Names are compared after unescaping, byte for byte.
    const json_value e = parsed(R"({"\u0061\/b":1,"A":2})");
    CHECK(e.at("a/b").integer() == 1);
    CHECK(e.find("a") == nullptr);
    CHECK(e.at("A").integer() == 2);
}

TEST_CASE("parse_json: escapes") {
    CHECK(string_of(R"("\"")") == "\"");
    CHECK(string_of(R"("\\")") == "\\");
    CHECK(string_of(R"("\/")") == "/");
    CHECK(string_of(R"("\b")") == "\b");
    CHECK(string_of(R"("\f")") == "\f");
    CHECK(string_of(R"("\n")") == "\n");
    CHECK(string_of(R"("\r")") == "\r");
    CHECK(string_of(R"("\t")") == "\t");
    CHECK(string_of(R"("a\"b\\c\/d\be\ff\ng\rh\ti")") == "a\"b\\c/d\be\ff\ng\rh\ti");
    CHECK(string_of(R"("\u0041\u00e9\u20AC\uFFFF")") == "A\xc3\xa9\xe2\x82\xac\xef\xbf\xbf");
    CHECK(string_of(R"("\u007f\u0080\u07ff\u0800")") == "\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80");
    // \u0000 is a NUL byte inside the string.
    const std::string nul = string_of(R"("a\u0000b")");
    CHECK(nul.size() == 3);
    CHECK(nul == std::string("a\0b", 3));
    // Raw UTF-8 is kept as it is.
    CHECK(string_of("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"") ==
          "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    // DEL (0x7f) is not a control character for JSON.
    CHECK(string_of("\"\x7f\"") == "\x7f");
}

TEST_CASE("parse_json: surrogate pairs become one 4-byte sequence") {
    CHECK(string_of(R"("\ud83d\ude00")") == "\xf0\x9f\x98\x80"); // U+1F600
    CHECK(string_of(R"("\uD834\uDD1E")") == "\xf0\x9d\x84\x9e"); // U+1D11E
    CHECK(string_of(R"("\ud800\udc00")") == "\xf0\x90\x80\x80"); // U+10000
    CHECK(string_of(R"("\udbff\udfff")") == "\xf4\x8f\xbf\xbf"); // U+10FFFF
    CHECK(string_of(R"("x\ud83d\ude00y\ud83d\ude00")") == "x\xf0\x9f\x98\x80y\xf0\x9f\x98\x80");
    CHECK(string_of(R"("\ud7ff\ue000")") == "\xed\x9f\xbf\xee\x80\x80"); // just outside

    CHECK(refusal(R"("\ud83d")") == "at byte 1: unpaired high surrogate");
    CHECK(refusal(R"("\ud83dx")") == "at byte 1: unpaired high surrogate");
    CHECK(refusal(R"("ab\ud83d\u0041")") == "at byte 3: unpaired high surrogate");
    CHECK(refusal(R"("\ud83d\ud83d\ude00")") == "at byte 1: unpaired high surrogate");
    CHECK(refusal(R"("\ud83d\n")") == "at byte 1: unpaired high surrogate");
    CHECK(refusal(R"("\ud83d\ude0")") == "at byte 1: unpaired high surrogate");
    CHECK(refusal(R"("\ude00")") == "at byte 1: unpaired low surrogate");
    CHECK(refusal(R"("\ude00\ud83d")") == "at byte 1: unpaired low surrogate");
    CHECK(refusal(R"(["ok","\udfff"])") == "at byte 7: unpaired low surrogate");
}

TEST_CASE("parse_json: strings: bad escapes, control bytes and invalid UTF-8 refused") {
    CHECK(refusal(R"("\x")") == "at byte 1: invalid escape");
    CHECK(refusal(R"("\'")") == "at byte 1: invalid escape");
    CHECK(refusal(R"("\U0041")") == "at byte 1: invalid escape");
    CHECK(refusal(R"("ab\a")") == "at byte 3: invalid escape");
    CHECK(refusal(R"("\u12")") == "at byte 1: invalid \\u escape");
    CHECK(refusal(R"("\u12G4")") == "at byte 1: invalid \\u escape");
    CHECK(refusal(R"("\u-123")") == "at byte 1: invalid \\u escape");
    CHECK(refusal(R"("\u)") == "at byte 1: invalid \\u escape");
    CHECK(refusal("\"\\") == "at byte 1: unterminated string");
    CHECK(refusal("\"abc") == "at byte 0: unterminated string");
    CHECK(refusal("[\"abc]") == "at byte 1: unterminated string");
    // Every byte below 0x20 must be escaped; NUL too.
    CHECK(refusal("\"a\tb\"") == "at byte 2: control character in a string");
    CHECK(refusal("\"a\nb\"") == "at byte 2: control character in a string");
    CHECK(refusal(std::string_view("\"a\0b\"", 5)) == "at byte 2: control character in a string");
    CHECK(refusal("\"\x1f\"") == "at byte 1: control character in a string");
    CHECK(refusal("{\"k\x01\":1}") == "at byte 3: control character in a string");
    // Invalid UTF-8: a stray byte, a lone continuation, an overlong form, an encoded
    // surrogate, past U+10FFFF, a truncated sequence.
    CHECK(refusal("\"\xff\"") == "at byte 1: invalid UTF-8 in a string");
    CHECK(refusal("\"ab\x80\"") == "at byte 3: invalid UTF-8 in a string");
    CHECK(refusal("\"\xc0\xaf\"") == "at byte 1: invalid UTF-8 in a string");
    CHECK(refusal("\"\xe0\x80\xaf\"") == "at byte 1: invalid UTF-8 in a string");
    CHECK(refusal("\"\xed\xa0\x80\"") == "at byte 1: invalid UTF-8 in a string");
    CHECK(refusal("\"\xf4\x90\x80\x80\"") == "at byte 1: invalid UTF-8 in a string");
    CHECK(refusal("\"\xe2\x82\"") == "at byte 1: invalid UTF-8 in a string");
    CHECK(refusal("\"\xe2\x82") == "at byte 1: invalid UTF-8 in a string");
    CHECK(refusal("{\"a\":\"\xfe\"}") == "at byte 6: invalid UTF-8 in a string");
}

TEST_CASE("parse_json: numbers: RFC 8259's grammar, kept as written") {
    for (const std::string_view ok :
         {"0", "-0", "7", "-7", "10", "0.5", "-0.0", "1e5", "1E5", "1e+5", "1e-5", "1.25e-10",
          "123456789012345678901234567890", "0e0", "-0.000e-000"}) {
        CAPTURE(ok);
        const json_value v = parsed(ok);
        CHECK(v.is_number());
        CHECK(v.text() == ok);
    }
    CHECK(refusal("01") == "at byte 0: leading zero in a number");
    CHECK(refusal("-01") == "at byte 1: leading zero in a number");
    CHECK(refusal("[1,00]") == "at byte 3: leading zero in a number");
    CHECK(refusal("+1") == "at byte 0: expected a value");
    CHECK(refusal(".5") == "at byte 0: expected a value");
    CHECK(refusal("-.5") == "at byte 1: expected a digit after '-'");
    CHECK(refusal("-") == "at byte 1: expected a digit after '-'");
    CHECK(refusal("--1") == "at byte 1: expected a digit after '-'");
    CHECK(refusal("-Infinity") == "at byte 1: expected a digit after '-'");
    CHECK(refusal("Infinity") == "at byte 0: expected a value");
    CHECK(refusal("NaN") == "at byte 0: expected a value");
    CHECK(refusal("1.") == "at byte 2: expected a digit after '.'");
    CHECK(refusal("1.e5") == "at byte 2: expected a digit after '.'");
    CHECK(refusal("[1.]") == "at byte 3: expected a digit after '.'");
    CHECK(refusal("1e") == "at byte 2: expected a digit in the exponent");
    CHECK(refusal("1e+") == "at byte 3: expected a digit in the exponent");
    CHECK(refusal("1E-x") == "at byte 3: expected a digit in the exponent");
    CHECK(refusal("0x10") == "at byte 1: unexpected bytes after the value");
    CHECK(refusal("1.5.2") == "at byte 3: unexpected bytes after the value");
    CHECK(refusal("1 2") == "at byte 2: unexpected bytes after the value");
}

TEST_CASE("json_value::integer: int64's limits, numbers and strings") {
    const std::int64_t max = std::numeric_limits<std::int64_t>::max();
    const std::int64_t min = std::numeric_limits<std::int64_t>::min();
    CHECK(parsed("9223372036854775807").integer() == max);
    CHECK_FALSE(parsed("9223372036854775808").integer().has_value());
    CHECK(parsed("-9223372036854775808").integer() == min);
    CHECK_FALSE(parsed("-9223372036854775809").integer().has_value());
    CHECK_FALSE(parsed("18446744073709551616").integer().has_value());
    CHECK(parsed("\"9223372036854775807\"").integer() == max);
    CHECK_FALSE(parsed("\"9223372036854775808\"").integer().has_value());
    CHECK(parsed("\"-9223372036854775808\"").integer() == min);
    CHECK_FALSE(parsed("\"-9223372036854775809\"").integer().has_value());
    CHECK(parsed("0").integer() == 0);
    CHECK(parsed("-0").integer() == 0);
    CHECK(parsed("\"-0\"").integer() == 0);
    CHECK(parsed("\"5\"").integer() == 5);
    CHECK(parsed("\"-12\"").integer() == -12);
    // The escaped digits of a string count: its content is "12".
    CHECK(parsed(R"("\u0031\u0032")").integer() == 12);
    // Not integers: fraction or exponent; a string that is not exactly an integer in JSON's
    // grammar; the other kinds.
    for (const std::string_view text :
         {"1.0", "1e3", "1E0", "-0.0", "\"1.0\"", "\"1e3\"", "\"05\"", "\"+5\"", "\" 5\"", "\"5 \"",
          "\"\"", "\"-\"", "\"0x10\"", "\"five\"", "\"5\\u0000\"", "true", "null", "[5]",
          "{\"a\":5}"}) {
        CAPTURE(text);
        CHECK_FALSE(parsed(text).integer().has_value());
    }
}

TEST_CASE("parse_json: structure errors, with the byte where reading stopped") {
    CHECK(refusal("") == "at byte 0: unexpected end of text");
    CHECK(refusal(" \n\t") == "at byte 3: unexpected end of text");
    CHECK(refusal("[") == "at byte 1: unexpected end of text");
    CHECK(refusal("[1") == "at byte 2: unexpected end of text");
    CHECK(refusal("[1,") == "at byte 3: unexpected end of text");
    CHECK(refusal("{") == "at byte 1: unexpected end of text");
    CHECK(refusal("{\"a\"") == "at byte 4: unexpected end of text");
    CHECK(refusal("{\"a\":") == "at byte 5: unexpected end of text");
    CHECK(refusal("{\"a\":1") == "at byte 6: unexpected end of text");
    CHECK(refusal(R"({"a" 1})") == "at byte 5: expected ':'");
    CHECK(refusal(R"({"header":{"revision" "5"}})") == "at byte 22: expected ':'");
    CHECK(refusal(R"({"a":1,})") == "at byte 7: expected a member name");
    CHECK(refusal(R"({a:1})") == "at byte 1: expected a member name");
    CHECK(refusal(R"({1:1})") == "at byte 1: expected a member name");
    CHECK(refusal(R"({,})") == "at byte 1: expected a member name");
    CHECK(refusal(R"({"a":})") == "at byte 5: expected a value");
    CHECK(refusal("[1,]") == "at byte 3: expected a value");
    CHECK(refusal("[,1]") == "at byte 1: expected a value");
    CHECK(refusal("[1 2]") == "at byte 3: expected ',' or ']'");
    CHECK(refusal("[1}") == "at byte 2: expected ',' or ']'");
    CHECK(refusal(R"({"a":1 "b":2})") == "at byte 7: expected ',' or '}'");
    CHECK(refusal(R"({"a":1])") == "at byte 6: expected ',' or '}'");
    CHECK(refusal("[1]x") == "at byte 3: unexpected bytes after the value");
    CHECK(refusal("{}{}") == "at byte 2: unexpected bytes after the value");
    CHECK(refusal("{} \n ,") == "at byte 5: unexpected bytes after the value");
    CHECK(refusal(std::string_view("{}\0", 3)) == "at byte 2: unexpected bytes after the value");
    CHECK(refusal("tru") == "at byte 0: invalid literal");
    CHECK(refusal("[nul]") == "at byte 1: invalid literal");
    CHECK(refusal("True") == "at byte 0: expected a value");
    CHECK(refusal("[truex]") == "at byte 5: expected ',' or ']'");
    // Whitespace is space, tab, CR and LF only.
    CHECK(refusal("\f1") == "at byte 0: expected a value");
    CHECK(refusal("1\v") == "at byte 1: unexpected bytes after the value");
    CHECK(refusal("\xc2\xa0"
                  "1") == "at byte 0: expected a value");
    // A byte-order mark is not part of a JSON text here.
    CHECK(refusal("\xef\xbb\xbf{}") == "at byte 0: expected a value");
}

TEST_CASE("parse_json: why is optional, and left alone on success") {
    CHECK_FALSE(parse_json("[").has_value());
    CHECK(parse_json("[1]").has_value());
    std::string why = "unchanged";
    CHECK(parse_json("{}", &why).has_value());
    CHECK(why == "unchanged");
    CHECK_FALSE(parse_json("{", &why).has_value());
    CHECK(why == "at byte 1: unexpected end of text");
}

TEST_CASE("parse_json: nesting is bounded by max_depth, without recursion") {
    CHECK(parsed("[[1]]", 2).items()[0].items()[0].integer() == 1);
    CHECK(refusal("[[[1]]]", 2) == "at byte 2: nested too deeply");
    CHECK(refusal(R"({"a":{"b":{}}})", 2) == "at byte 10: nested too deeply");
    CHECK(parsed("5", 0).integer() == 5);
    CHECK(refusal("[]", 0) == "at byte 0: nested too deeply");
    CHECK(refusal("{}", -1) == "at byte 0: nested too deeply");

    // Exactly 64 levels pass by default; 65 do not.
    const std::string deep64 = std::string(64, '[') + std::string(64, ']');
    CHECK(parsed(deep64).is_array());
    const std::string deep65 = std::string(65, '[') + std::string(65, ']');
    CHECK(refusal(deep65) == "at byte 64: nested too deeply");

    // 100,000 open brackets (closed or not) are refused at the limit, not a stack overflow.
    CHECK(refusal(std::string(100'000, '[')) == "at byte 64: nested too deeply");
    CHECK(refusal(std::string(100'000, '[') + std::string(100'000, ']')) ==
          "at byte 64: nested too deeply");
    std::string objects;
    for (int i = 0; i < 100'000; ++i) {
        objects += "{\"a\":";
    }
    CHECK(refusal(objects) == "at byte 320: nested too deeply");

    // The parser itself keeps its stack on the heap: a deep limit works too.
    const int levels = 5'000;
    const std::string deep = std::string(levels, '[') + "7" + std::string(levels, ']');
    const json_value v = parsed(deep, levels);
    const json_value* p = &v;
    int depth = 0;
    while (p->is_array()) {
        REQUIRE(p->items().size() == 1);
        p = &p->items().front();
        ++depth;
    }
    CHECK(depth == levels);
    CHECK(p->integer() == 7);
    CHECK(refusal(deep, levels - 1) == "at byte 4999: nested too deeply");
}

TEST_CASE("is_json_object and parse_json: one grammar") {
    using otpkv::detail::is_json_object;
    // is_json_object is parse_json's grammar, checking only, and true for objects alone.
    for (const std::string_view text :
         {"{}",
          " {\"a\":[1,-2.5e+3,true,false,null,\"x\\u00e9\"],\"b\":{}} \r\n",
          "",
          "[]",
          "{",
          "{}{}",
          "{\"a\":}",
          "{\"a\":1,}",
          "{\"a\":01}",
          "{\"a\":\"\x01\"}",
          "{\"a\":\"\xff\"}",
          "{\"a\":\"\\x\"}",
          "{\"a\":tru}",
          "{a:1}",
          "5",
          "\"s\"",
          "{\"a\":1.}",
          "{\"a\":\"\\u12\"}",
          "{\"\xf0\x9f\x98\x80\":\"\\ud83d\\ude00\"}",
          "{\"a\":[{\"b\":[]}]} x",
          "\t{\"a\":-0}\n"}) {
        CAPTURE(text);
        const std::optional<json_value> v = parse_json(text);
        CHECK(is_json_object(text) == (v.has_value() && v->is_object()));
    }
    const std::string deep = "{\"a\":" + std::string(100, '[') + std::string(100, ']') + "}";
    CHECK_FALSE(is_json_object(deep));
    CHECK_FALSE(parse_json(deep).has_value());
    CHECK(is_json_object(deep, 200));
    CHECK(parse_json(deep, nullptr, 200).has_value());
    // The one difference: is_json_object decodes nothing, so it takes a lone surrogate as
    // RFC 8259's ABNF does; parse_json, which must give UTF-8, refuses it.
    CHECK(is_json_object(R"({"a":"\ud800"})"));
    CHECK_FALSE(parse_json(R"({"a":"\ud800"})").has_value());
}
