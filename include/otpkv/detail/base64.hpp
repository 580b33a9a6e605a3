// SPDX-License-Identifier: MIT
/// @file
/// Base64 (RFC 4648, section 4: the standard alphabet `A-Z a-z 0-9 + /`, with `=` padding),
/// as etcd's v3 JSON gateway writes keys and values (protobuf's JSON mapping of `bytes`).
///
/// Encoding always pads to a multiple of four characters and never breaks lines. Decoding is
/// strict, so that one byte string has exactly one accepted text (RFC 4648, sections 3.1-3.5,
/// leaves these choices to the application; this one takes the strict reading of each):
/// - only the standard alphabet: no `-` or `_` (base64url), no whitespace or line breaks;
/// - the length is a multiple of four, and padding is complete (`Zg==`, never `Zg` or
///   `Zg=`); `=` appears only as the last one or two characters;
/// - the bits that the last character before the padding carries beyond the data must be
///   zero (`Zg==` is accepted, `Zh==` is not, although both would give `f`);
/// - the empty text decodes to the empty string.
/// Anything else is refused with nullopt, never an exception.
///
/// Thread safety: pure functions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// `bytes` in base64, standard alphabet, padded with `=` to a multiple of four characters.
[[nodiscard]] std::string base64_encode(std::string_view bytes);

/// The bytes that `text` encodes, or nullopt when `text` is not strict base64 as described at
/// the top of this file.
[[nodiscard]] std::optional<std::string> base64_decode(std::string_view text);

// =======================================================================================
// Implementation
// =======================================================================================

namespace base64_detail {

inline constexpr std::string_view alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Marks a byte that is not in the alphabet in `values`.
inline constexpr std::uint8_t invalid = 0xff;

/// Each byte's 6-bit value, or `invalid`.
inline constexpr std::array<std::uint8_t, 256> values = [] {
    std::array<std::uint8_t, 256> table{};
    table.fill(invalid);
    for (std::size_t i = 0; i < alphabet.size(); ++i) {
        table[static_cast<unsigned char>(alphabet[i])] = static_cast<std::uint8_t>(i);
    }
    return table;
}();

} // namespace base64_detail

inline std::string base64_encode(std::string_view bytes) {
    using base64_detail::alphabet;
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    const auto byte = [&bytes](std::size_t i) {
        return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i]));
    };
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        const std::uint32_t n = (byte(i) << 16U) | (byte(i + 1) << 8U) | byte(i + 2);
        out += alphabet[(n >> 18U) & 63U];
        out += alphabet[(n >> 12U) & 63U];
        out += alphabet[(n >> 6U) & 63U];
        out += alphabet[n & 63U];
    }
    const std::size_t rest = bytes.size() - i;
    if (rest == 1) {
        const std::uint32_t n = byte(i) << 16U;
        out += alphabet[(n >> 18U) & 63U];
        out += alphabet[(n >> 12U) & 63U];
        out += "==";
    } else if (rest == 2) {
        const std::uint32_t n = (byte(i) << 16U) | (byte(i + 1) << 8U);
        out += alphabet[(n >> 18U) & 63U];
        out += alphabet[(n >> 12U) & 63U];
        out += alphabet[(n >> 6U) & 63U];
        out += '=';
    }
    return out;
}

inline std::optional<std::string> base64_decode(std::string_view text) {
    using base64_detail::invalid;
    using base64_detail::values;
    if (text.size() % 4 != 0) {
        return std::nullopt;
    }
    std::size_t padding = 0;
    if (!text.empty() && text.back() == '=') {
        padding = text[text.size() - 2] == '=' ? 2 : 1;
    }
    const std::size_t data = text.size() - padding; // characters that carry bits
    std::string out;
    out.reserve(text.size() / 4 * 3);
    std::uint32_t bits = 0; // the characters read so far, 6 bits each, at most 4 of them
    for (std::size_t i = 0; i < data; ++i) {
        const std::uint8_t v = values[static_cast<unsigned char>(text[i])];
        if (v == invalid) {
            return std::nullopt; // another byte, or `=` before the end
        }
        bits = (bits << 6U) | v;
        if (i % 4 == 3) {
            out += static_cast<char>(static_cast<unsigned char>((bits >> 16U) & 0xffU));
            out += static_cast<char>(static_cast<unsigned char>((bits >> 8U) & 0xffU));
            out += static_cast<char>(static_cast<unsigned char>(bits & 0xffU));
            bits = 0;
        }
    }
    if (padding == 2) {
        // Two characters: 12 bits, one byte and 4 unused bits that must be zero.
        if ((bits & 0x0fU) != 0) {
            return std::nullopt;
        }
        out += static_cast<char>(static_cast<unsigned char>((bits >> 4U) & 0xffU));
    } else if (padding == 1) {
        // Three characters: 18 bits, two bytes and 2 unused bits that must be zero.
        if ((bits & 0x03U) != 0) {
            return std::nullopt;
        }
        out += static_cast<char>(static_cast<unsigned char>((bits >> 10U) & 0xffU));
        out += static_cast<char>(static_cast<unsigned char>((bits >> 2U) & 0xffU));
    }
    return out;
}

} // namespace detail
} // namespace v0
} // namespace otpkv
