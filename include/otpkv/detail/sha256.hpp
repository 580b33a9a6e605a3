// SPDX-License-Identifier: MIT
/// @file
/// SHA-256 (FIPS 180-4, section 6.2) and HMAC-SHA-256 (RFC 2104), for the peer handshake's
/// proofs (command.hpp, "Between nodes"): small, dependency-free, written from the two
/// standards. Checked against FIPS 180-4's examples and RFC 4231's test cases
/// (tests/test_sha256.cpp). Not public API, and not a general cryptography library: no
/// attempt is made to clear secrets from memory or to resist timing attacks beyond
/// `equal_in_constant_time`, which is what comparing proofs needs.
///
/// Thread safety: `sha256` is a plain value (one thread at a time); the functions are pure.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// A SHA-256 digest: 32 bytes.
using sha256_digest = std::array<std::uint8_t, 32>;

/// An incremental SHA-256 computation: `update` with the message in any pieces, then
/// `finish` once.
class sha256 {
  public:
    /// The bytes of a message block.
    static constexpr std::size_t block_size = 64;

    /// Adds `bytes` to the message.
    void update(std::string_view bytes) noexcept;
    /// Pads the message and returns its digest. The object is spent afterwards.
    [[nodiscard]] sha256_digest finish() noexcept;

  private:
    void compress(const std::uint8_t* block) noexcept;

    // FIPS 180-4, 5.3.3: the initial hash value.
    std::array<std::uint32_t, 8> h_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::array<std::uint8_t, block_size> block_{};
    std::size_t used_ = 0;     // bytes of `block_` filled
    std::uint64_t length_ = 0; // message bytes so far
};

/// The SHA-256 digest of `message`.
[[nodiscard]] sha256_digest sha256_of(std::string_view message) noexcept;

/// HMAC-SHA-256 of `message` under `key` (RFC 2104 with SHA-256; a key longer than a block
/// is hashed first).
[[nodiscard]] sha256_digest hmac_sha256(std::string_view key, std::string_view message) noexcept;

/// `bytes` as lower-case hexadecimal, two digits per byte.
[[nodiscard]] std::string to_hex(const std::uint8_t* bytes, std::size_t size);

/// A digest as lower-case hexadecimal (64 digits).
[[nodiscard]] inline std::string to_hex(const sha256_digest& digest) {
    return to_hex(digest.data(), digest.size());
}

/// True when `a` and `b` hold the same bytes, taking a time that depends only on their
/// sizes, never on where they first differ (so an attacker cannot find a proof byte by byte
/// by timing the comparison).
[[nodiscard]] bool equal_in_constant_time(std::string_view a, std::string_view b) noexcept;

// =======================================================================================
// Implementation
// =======================================================================================

namespace sha256_detail {
// FIPS 180-4, 4.2.2: the first 32 bits of the fractional parts of the cube roots of the
// first 64 primes.
inline constexpr std::array<std::uint32_t, 64> k{
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

// FIPS 180-4, 3.2 and 4.1.2.
constexpr std::uint32_t rotr(std::uint32_t x, unsigned n) noexcept {
    return (x >> n) | (x << (32U - n));
}
constexpr std::uint32_t ch(std::uint32_t x, std::uint32_t y, std::uint32_t z) noexcept {
    return (x & y) ^ (~x & z);
}
constexpr std::uint32_t maj(std::uint32_t x, std::uint32_t y, std::uint32_t z) noexcept {
    return (x & y) ^ (x & z) ^ (y & z);
}
constexpr std::uint32_t big_sigma0(std::uint32_t x) noexcept {
    return rotr(x, 2) ^ rotr(x, 13) ^ rotr(x, 22);
}
constexpr std::uint32_t big_sigma1(std::uint32_t x) noexcept {
    return rotr(x, 6) ^ rotr(x, 11) ^ rotr(x, 25);
}
constexpr std::uint32_t small_sigma0(std::uint32_t x) noexcept {
    return rotr(x, 7) ^ rotr(x, 18) ^ (x >> 3);
}
constexpr std::uint32_t small_sigma1(std::uint32_t x) noexcept {
    return rotr(x, 17) ^ rotr(x, 19) ^ (x >> 10);
}
} // namespace sha256_detail

inline void sha256::compress(const std::uint8_t* block) noexcept {
    using namespace sha256_detail;
    // 6.2.2 step 1: the message schedule (words are big-endian).
    std::array<std::uint32_t, 64> w{};
    for (std::size_t t = 0; t < 16; ++t) {
        w[t] = (std::uint32_t{block[4 * t]} << 24) | (std::uint32_t{block[4 * t + 1]} << 16) |
               (std::uint32_t{block[4 * t + 2]} << 8) | std::uint32_t{block[4 * t + 3]};
    }
    for (std::size_t t = 16; t < 64; ++t) {
        w[t] = small_sigma1(w[t - 2]) + w[t - 7] + small_sigma0(w[t - 15]) + w[t - 16];
    }
    // Steps 2 to 4: the working variables, 64 rounds, and the new hash value.
    std::uint32_t a = h_[0];
    std::uint32_t b = h_[1];
    std::uint32_t c = h_[2];
    std::uint32_t d = h_[3];
    std::uint32_t e = h_[4];
    std::uint32_t f = h_[5];
    std::uint32_t g = h_[6];
    std::uint32_t h = h_[7];
    for (std::size_t t = 0; t < 64; ++t) {
        const std::uint32_t t1 = h + big_sigma1(e) + ch(e, f, g) + k[t] + w[t];
        const std::uint32_t t2 = big_sigma0(a) + maj(a, b, c);
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += b;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
}

inline void sha256::update(std::string_view bytes) noexcept {
    length_ += bytes.size();
    for (const char byte : bytes) {
        block_[used_++] = static_cast<std::uint8_t>(byte);
        if (used_ == block_size) {
            compress(block_.data());
            used_ = 0;
        }
    }
}

inline sha256_digest sha256::finish() noexcept {
    // 5.1.1: a 1 bit, zeros up to 56 bytes into the last block, then the length in bits as
    // a 64-bit big-endian number.
    const std::uint64_t bits = length_ * 8;
    block_[used_++] = 0x80;
    if (used_ > block_size - 8) {
        while (used_ < block_size) {
            block_[used_++] = 0;
        }
        compress(block_.data());
        used_ = 0;
    }
    while (used_ < block_size - 8) {
        block_[used_++] = 0;
    }
    for (int shift = 56; shift >= 0; shift -= 8) {
        block_[used_++] = static_cast<std::uint8_t>(bits >> shift);
    }
    compress(block_.data());
    used_ = 0;
    sha256_digest out{};
    for (std::size_t i = 0; i < 8; ++i) {
        out[4 * i] = static_cast<std::uint8_t>(h_[i] >> 24);
        out[4 * i + 1] = static_cast<std::uint8_t>(h_[i] >> 16);
        out[4 * i + 2] = static_cast<std::uint8_t>(h_[i] >> 8);
        out[4 * i + 3] = static_cast<std::uint8_t>(h_[i]);
    }
    return out;
}

inline sha256_digest sha256_of(std::string_view message) noexcept {
    sha256 s;
    s.update(message);
    return s.finish();
}

inline sha256_digest hmac_sha256(std::string_view key, std::string_view message) noexcept {
    // RFC 2104, section 2: H((K ^ opad) || H((K ^ ipad) || text)), K padded with zeros to
    // the block size, after hashing it when it is longer than a block.
    std::array<std::uint8_t, sha256::block_size> k{};
    if (key.size() > k.size()) {
        const sha256_digest hashed = sha256_of(key);
        for (std::size_t i = 0; i < hashed.size(); ++i) {
            k[i] = hashed[i];
        }
    } else {
        for (std::size_t i = 0; i < key.size(); ++i) {
            k[i] = static_cast<std::uint8_t>(key[i]);
        }
    }
    std::array<char, sha256::block_size> pad{};
    for (std::size_t i = 0; i < pad.size(); ++i) {
        pad[i] = static_cast<char>(k[i] ^ 0x36U);
    }
    sha256 inner;
    inner.update(std::string_view(pad.data(), pad.size()));
    inner.update(message);
    const sha256_digest inner_digest = inner.finish();
    for (std::size_t i = 0; i < pad.size(); ++i) {
        pad[i] = static_cast<char>(k[i] ^ 0x5cU);
    }
    sha256 outer;
    outer.update(std::string_view(pad.data(), pad.size()));
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): bytes as chars
    outer.update(
        std::string_view(reinterpret_cast<const char*>(inner_digest.data()), inner_digest.size()));
    return outer.finish();
}

inline std::string to_hex(const std::uint8_t* bytes, std::size_t size) {
    constexpr std::string_view digits = "0123456789abcdef";
    std::string out;
    out.reserve(2 * size);
    for (std::size_t i = 0; i < size; ++i) {
        out += digits[bytes[i] >> 4];
        out += digits[bytes[i] & 0xfU];
    }
    return out;
}

inline bool equal_in_constant_time(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) {
        return false; // sizes are no secret: a proof's is fixed
    }
    // Every byte is looked at, and the differences are only OR-ed together: no branch and
    // no early exit depends on the contents. `volatile` keeps the compiler from turning the
    // loop back into one that stops at the first difference.
    volatile unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = static_cast<unsigned char>(
            diff | (static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i])));
    }
    return diff == 0;
}

} // namespace detail
} // namespace v0
} // namespace otpkv
