// SPDX-License-Identifier: MIT
/// @file
/// The hash and the comparison of short byte strings on the lookup paths of `bucket` (its
/// `std::string` keys) and `registry` (bucket names). Not public API.
///
/// Why not `std::hash<std::string_view>`: libstdc++'s is an out-of-line call (Murmur over
/// the bytes), a fifth of a hot string-key lookup, and `std::memcmp` of a few bytes is
/// another call through the PLT. Keys of the line protocol are short (a slot holds up to
/// 22 bytes), so both are done here inline, with loads that never pass the string's end:
/// - `hash_bytes`: up to 16 bytes, two (overlapping) words, folded by one 64x64->128-bit
///   multiplication and mixed once more; longer strings fold 16 bytes at a time. The
///   multiplications take process-wide random keys, drawn once from the operating system
///   (detail/random.hpp): like Redis' SipHash seed, they keep network clients from
///   choosing keys that all collide; equal strings hash equally within a process only.
/// - `bytes_equal`: up to 24 bytes by (overlapping) word compares, else `std::memcmp`.
/// - `copy_short`: up to 24 bytes by (overlapping) word copies.
///
/// Thread safety: any thread; the keys are made once, on first use (a function's static).
#pragma once

#include <otpkv/detail/hot_inline.hpp>
#include <otpkv/detail/random.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// The high and low halves of `a * b` (128 bits), added with xor.
inline std::uint64_t fold_multiply(std::uint64_t a, std::uint64_t b) noexcept {
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 wide;
    const wide p = static_cast<wide>(a) * b;
    return static_cast<std::uint64_t>(p) ^ static_cast<std::uint64_t>(p >> 64);
#else
    // The four 32x32-bit partial products, summed as the 128-bit product would be.
    const std::uint64_t al = a & 0xFFFFFFFFU;
    const std::uint64_t ah = a >> 32;
    const std::uint64_t bl = b & 0xFFFFFFFFU;
    const std::uint64_t bh = b >> 32;
    const std::uint64_t ll = al * bl;
    const std::uint64_t lh = al * bh;
    const std::uint64_t hl = ah * bl;
    const std::uint64_t hh = ah * bh;
    const std::uint64_t mid = (ll >> 32) + (lh & 0xFFFFFFFFU) + (hl & 0xFFFFFFFFU);
    const std::uint64_t lo = (mid << 32) | (ll & 0xFFFFFFFFU);
    const std::uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

/// Unaligned loads in the machine's byte order (the hash is not meant to travel).
inline std::uint64_t load_word(const unsigned char* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline std::uint64_t load_half(const unsigned char* p) noexcept {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

/// The process's hash keys: random, or fixed odd constants when the system gives no
/// random bytes (the hash then still spreads keys, only without the protection).
struct hash_keys {
    std::uint64_t k[4] = {0x9E3779B97F4A7C15ULL, 0xC2B2AE3D27D4EB4FULL, 0x165667B19E3779F9ULL,
                          0xD6E8FEB86659FD93ULL};
};
inline const hash_keys& process_hash_keys() noexcept {
    static const hash_keys keys = [] {
        hash_keys made;
        hash_keys drawn;
        if (random_bytes(reinterpret_cast<std::uint8_t*>(drawn.k), sizeof drawn.k)) {
            for (std::size_t i = 0; i < 4; ++i) {
                made.k[i] ^= drawn.k[i];
            }
        }
        return made;
    }();
    return keys;
}

/// The hash of `s`'s bytes (see the file comment). Every bit of the result depends on every
/// byte and on the length.
OTPKV_DETAIL_HOT_INLINE std::uint64_t hash_bytes(std::string_view s) noexcept {
    const hash_keys& keys = process_hash_keys();
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::uint64_t a = 0;
    std::uint64_t b = 0;
    if (n <= 16) {
        if (n >= 8) {
            a = load_word(p);
            b = load_word(p + n - 8);
        } else if (n >= 4) {
            a = load_half(p);
            b = load_half(p + n - 4);
        } else if (n > 0) {
            a = (std::uint64_t{p[0]} << 16) | (std::uint64_t{p[n / 2]} << 8) | p[n - 1];
        }
    } else {
        std::uint64_t acc = keys.k[2];
        std::size_t i = 0;
        for (; n - i > 16; i += 16) {
            acc = fold_multiply(load_word(p + i) ^ keys.k[0], load_word(p + i + 8) ^ acc);
        }
        // The last 16 bytes (overlapping the previous block when n is not a multiple of 16).
        a = load_word(p + n - 16) ^ acc;
        b = load_word(p + n - 8);
    }
    const std::uint64_t h = fold_multiply(a ^ keys.k[0], b ^ keys.k[1] ^ n);
    return fold_multiply(h ^ keys.k[2], keys.k[3]);
}

/// True when the `n` bytes at `a` and at `b` are equal.
inline bool bytes_equal(const void* a, const void* b, std::size_t n) noexcept {
    const auto* x = static_cast<const unsigned char*>(a);
    const auto* y = static_cast<const unsigned char*>(b);
    if (n >= 8) {
        if (n > 24) {
            return std::memcmp(x, y, n) == 0;
        }
        std::uint64_t diff =
            (load_word(x) ^ load_word(y)) | (load_word(x + n - 8) ^ load_word(y + n - 8));
        if (n > 16) {
            diff |= load_word(x + 8) ^ load_word(y + 8);
        }
        return diff == 0;
    }
    if (n >= 4) {
        return ((load_half(x) ^ load_half(y)) | (load_half(x + n - 4) ^ load_half(y + n - 4))) == 0;
    }
    for (std::size_t i = 0; i < n; ++i) {
        if (x[i] != y[i]) {
            return false;
        }
    }
    return true;
}

/// Copies `n` bytes, at most 24, from `from` to `to` (which must not overlap).
inline void copy_short(void* to, const void* from, std::size_t n) noexcept {
    auto* d = static_cast<unsigned char*>(to);
    const auto* s = static_cast<const unsigned char*>(from);
    if (n >= 8) {
        const std::size_t middle_at = n > 16 ? 8 : 0;
        const std::uint64_t first = load_word(s);
        const std::uint64_t middle = load_word(s + middle_at);
        const std::uint64_t last = load_word(s + n - 8);
        std::memcpy(d, &first, 8);
        std::memcpy(d + middle_at, &middle, 8);
        std::memcpy(d + n - 8, &last, 8);
    } else if (n >= 4) {
        const auto first = static_cast<std::uint32_t>(load_half(s));
        const auto last = static_cast<std::uint32_t>(load_half(s + n - 4));
        std::memcpy(d, &first, 4);
        std::memcpy(d + n - 4, &last, 4);
    } else {
        for (std::size_t i = 0; i < n; ++i) {
            d[i] = s[i];
        }
    }
}

} // namespace detail
} // namespace v0
} // namespace otpkv
