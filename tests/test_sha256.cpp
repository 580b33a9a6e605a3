// SPDX-License-Identifier: MIT
// SHA-256 and HMAC-SHA-256 (detail/sha256.hpp) against the standards' own vectors:
// FIPS 180-4's examples (csrc.nist.gov, "SHA256.pdf" of the example values) and every test
// case of RFC 4231.
#include <otpkv/detail/sha256.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <string>
#include <string_view>

using otpkv::detail::equal_in_constant_time;
using otpkv::detail::hmac_sha256;
using otpkv::detail::sha256;
using otpkv::detail::sha256_of;
using otpkv::detail::to_hex;

namespace {

// `n` copies of the byte `b`.
std::string bytes(std::size_t n, unsigned char b) {
    return std::string(n, static_cast<char>(b));
}

std::string hex_sha256(std::string_view message) {
    return to_hex(sha256_of(message));
}

std::string hex_hmac(std::string_view key, std::string_view message) {
    return to_hex(hmac_sha256(key, message));
}

} // namespace

TEST_CASE("sha256: FIPS 180-4's examples") {
    // One block.
    CHECK(hex_sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    // 448 bits: the padding takes a second block.
    CHECK(hex_sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    // One million 'a'.
    CHECK(hex_sha256(std::string(1'000'000, 'a')) ==
          "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256: the empty message and the lengths around a block's padding boundary") {
    // Values from an independent implementation (Python's hashlib).
    CHECK(hex_sha256("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(hex_sha256(std::string(55, 'a')) ==
          "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
    CHECK(hex_sha256(std::string(56, 'a')) ==
          "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
    CHECK(hex_sha256(std::string(63, 'a')) ==
          "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34");
    CHECK(hex_sha256(std::string(64, 'a')) ==
          "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
    CHECK(hex_sha256(std::string(119, 'a')) ==
          "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb");
    CHECK(hex_sha256(std::string(120, 'a')) ==
          "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c");
}

TEST_CASE("sha256: a message fed in two pieces, split anywhere, has the same digest") {
    const std::string message(200, 'x');
    const std::string whole = hex_sha256(message);
    for (std::size_t at = 0; at <= message.size(); ++at) {
        CAPTURE(at);
        sha256 s;
        s.update(std::string_view(message).substr(0, at));
        s.update(std::string_view(message).substr(at));
        CHECK(to_hex(s.finish()) == whole);
    }
}

TEST_CASE("hmac_sha256: RFC 4231's test cases 1 to 7") {
    // 1: a 20-byte key.
    CHECK(hex_hmac(bytes(20, 0x0b), "Hi There") ==
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    // 2: a key shorter than the digest.
    CHECK(hex_hmac("Jefe", "what do ya want for nothing?") ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    // 3: key and data of bytes that are not text.
    CHECK(hex_hmac(bytes(20, 0xaa), bytes(50, 0xdd)) ==
          "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
    // 4: the key 0x01..0x19.
    std::string key4;
    for (int b = 1; b <= 25; ++b) {
        key4 += static_cast<char>(b);
    }
    CHECK(hex_hmac(key4, bytes(50, 0xcd)) ==
          "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
    // 5: truncated to 128 bits (the RFC gives only those).
    CHECK(hex_hmac(bytes(20, 0x0c), "Test With Truncation").substr(0, 32) ==
          "a3b6167473100ee06e0c796c2955552b");
    // 6: a key longer than a block is hashed first.
    CHECK(hex_hmac(bytes(131, 0xaa), "Test Using Larger Than Block-Size Key - Hash Key First") ==
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    // 7: and data longer than a block too.
    CHECK(hex_hmac(bytes(131, 0xaa),
                   "This is a test using a larger than block-size key and a larger than "
                   "block-size data. The key needs to be hashed before being used by the HMAC "
                   "algorithm.") ==
          "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

TEST_CASE("equal_in_constant_time: equal only when every byte is") {
    CHECK(equal_in_constant_time("", ""));
    CHECK(equal_in_constant_time("abc", "abc"));
    CHECK_FALSE(equal_in_constant_time("abc", "abd"));
    CHECK_FALSE(equal_in_constant_time("abc", "xbc"));
    CHECK_FALSE(equal_in_constant_time("abc", "ab"));
    CHECK_FALSE(equal_in_constant_time("", "a"));
    CHECK_FALSE(equal_in_constant_time(std::string_view("a\0b", 3), std::string_view("a\0c", 3)));
}
