// SPDX-License-Identifier: MIT
/// @file
/// Random bytes from the operating system's cryptographic generator (the one behind
/// /dev/urandom): the peer handshake's nonces and a new cluster cookie. Not public API.
///
/// Linux: getrandom(2), which needs no file descriptor (a node out of descriptors can still
/// handshake). The BSDs and macOS: arc4random_buf(3). Elsewhere: /dev/urandom.
///
/// Thread safety: any thread.
#pragma once

#include <otpkv/detail/sha256.hpp> // to_hex

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>

#if defined(__linux__)
#include <sys/random.h>
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__)
#include <stdlib.h> // NOLINT(modernize-deprecated-headers): arc4random_buf is not in <cstdlib>
#else
#include <fcntl.h>
#include <unistd.h>
#endif

namespace otpkv {
inline namespace v0 {
namespace detail {

/// Fills `out` with `size` random bytes; false when the system gives none (then `out` holds
/// nothing usable).
[[nodiscard]] inline bool random_bytes(std::uint8_t* out, std::size_t size) noexcept {
#if defined(__linux__)
    std::size_t got = 0;
    while (got < size) {
        const ssize_t n = ::getrandom(out + got, size - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        got += static_cast<std::size_t>(n);
    }
    return true;
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__)
    ::arc4random_buf(out, size);
    return true;
#else
    const int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    std::size_t got = 0;
    while (got < size) {
        const ssize_t n = ::read(fd, out + got, size - got);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            ::close(fd);
            return false;
        }
        got += static_cast<std::size_t>(n);
    }
    ::close(fd);
    return true;
#endif
}

/// A fresh nonce for the peer handshake: 32 random bytes as 64 lower-case hex digits; empty
/// when the system gives no random bytes (the handshake then fails).
[[nodiscard]] inline std::string new_peer_nonce() {
    sha256_digest bytes{};
    if (!random_bytes(bytes.data(), bytes.size())) {
        return {};
    }
    return to_hex(bytes);
}

} // namespace detail
} // namespace v0
} // namespace otpkv
