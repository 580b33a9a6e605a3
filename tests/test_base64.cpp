// SPDX-License-Identifier: MIT
// base64_encode and base64_decode (detail/base64.hpp): RFC 4648's section 10 vectors both
// ways, every byte value round-tripped, and each text that strict decoding refuses.
#include <otpkv/detail/base64.hpp>

#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>

using otpkv::detail::base64_decode;
using otpkv::detail::base64_encode;

TEST_CASE("base64: RFC 4648's section 10 vectors, both ways") {
    const std::pair<std::string_view, std::string_view> vectors[] = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };
    // Named copies, not a structured binding: clang 15 cannot CAPTURE one.
    for (const auto& v : vectors) {
        const std::string_view plain = v.first;
        const std::string_view encoded = v.second;
        CAPTURE(plain);
        CHECK(base64_encode(plain) == encoded);
        const std::optional<std::string> decoded = base64_decode(encoded);
        REQUIRE(decoded.has_value());
        CHECK(*decoded == plain);
    }
}

TEST_CASE("base64: every byte value, and both characters past 'z', round-trip") {
    std::string all;
    for (int b = 0; b < 256; ++b) {
        all += static_cast<char>(b);
    }
    for (std::size_t n = 0; n <= all.size(); n += 1) {
        const std::string_view bytes = std::string_view(all).substr(0, n);
        const std::string text = base64_encode(bytes);
        CHECK(text.size() == (n + 2) / 3 * 4);
        const std::optional<std::string> back = base64_decode(text);
        REQUIRE(back.has_value());
        CHECK(*back == bytes);
    }
    CHECK(base64_encode("\xfb\xff\xbf") == "+/+/");
    CHECK(base64_decode("+/+/") == std::optional<std::string>("\xfb\xff\xbf"));
    CHECK(base64_encode(std::string_view("\0\0\0", 3)) == "AAAA");
    CHECK(base64_decode("AAAA") == std::optional<std::string>(std::string(3, '\0')));
}

TEST_CASE("base64: etcd's keys and values") {
    CHECK(base64_decode("Zm9v") == std::optional<std::string>("foo"));
    CHECK(base64_decode("YmF6") == std::optional<std::string>("baz"));
    CHECK(base64_encode("/registry/pods/default") == "L3JlZ2lzdHJ5L3BvZHMvZGVmYXVsdA==");
}

TEST_CASE("base64: strict decoding refuses everything but the one canonical text") {
    // Length not a multiple of four (missing or partial padding).
    CHECK_FALSE(base64_decode("Z"));
    CHECK_FALSE(base64_decode("Zg"));
    CHECK_FALSE(base64_decode("Zg="));
    CHECK_FALSE(base64_decode("Zm9vY"));
    CHECK_FALSE(base64_decode("Zm9vYg="));
    // Padding in the wrong place or too much of it.
    CHECK_FALSE(base64_decode("===="));
    CHECK_FALSE(base64_decode("Z==="));
    CHECK_FALSE(base64_decode("Zg=A"));
    CHECK_FALSE(base64_decode("=Zg="));
    CHECK_FALSE(base64_decode("Zg==Zg=="));
    CHECK_FALSE(base64_decode("Zm8=Zm9v"));
    // Characters outside the standard alphabet: base64url, whitespace, NUL, high bytes.
    CHECK_FALSE(base64_decode("-_-_"));
    CHECK_FALSE(base64_decode("Zm9v\n"));
    CHECK_FALSE(base64_decode("Zm 9"));
    CHECK_FALSE(base64_decode(std::string_view("Zm9\0", 4)));
    CHECK_FALSE(base64_decode("Zm9\xff"));
    // Non-zero unused bits in the last character: "Zh==" and "Zm9=" would also give "f"
    // and "fo".
    CHECK_FALSE(base64_decode("Zh=="));
    CHECK_FALSE(base64_decode("Zv=="));
    CHECK_FALSE(base64_decode("Zm9="));
    CHECK_FALSE(base64_decode("Zm/="));
    CHECK(base64_decode("Zg==") == std::optional<std::string>("f"));
    CHECK(base64_decode("Zm8=") == std::optional<std::string>("fo"));
    // Empty text: empty bytes.
    const std::optional<std::string> empty = base64_decode("");
    REQUIRE(empty.has_value());
    CHECK(empty->empty());
}
