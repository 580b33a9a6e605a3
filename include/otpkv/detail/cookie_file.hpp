// SPDX-License-Identifier: MIT
/// @file
/// Cookie files (config.hpp: `read_cookie_file`, `home_cookie`): reading one, and creating
/// `~/.otpkv.cookie` when it is missing so that nodes started at the same moment agree. Not
/// public API; POSIX only.
///
/// Thread safety: any thread; several processes (or threads) may create the same file at
/// once, and all of them end up with the one that was linked first.
#pragma once

#include <otpkv/detail/random.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// The longest cookie file read, in bytes (a cookie is a short line; /dev/zero is not one).
inline constexpr std::size_t max_cookie_file = 4096;
/// The letters of a new cookie.
inline constexpr std::size_t new_cookie_letters = 32;

/// What reading or making a cookie file gave: the cookie, or an error line; warnings either
/// way.
struct cookie_file_result {
    std::string cookie;
    std::string error;
    std::vector<std::string> warnings;
    bool created = false;
    /// The errno of a failed open(2), 0 when the file was opened.
    int open_error = 0;
};

/// `strerror(error)`, thread-safe enough for our messages (GNU and XSI `strerror_r` differ,
/// so the common `strerror` under no lock: the messages are static on the systems we run on).
[[nodiscard]] inline std::string errno_text(int error) {
    return std::strerror(error); // NOLINT(concurrency-mt-unsafe): see above
}

/// `path` in quotes for a message.
[[nodiscard]] inline std::string quoted_path(const std::string& path) {
    return "'" + path + "'";
}

/// Reads the cookie in `path`: its contents, whitespace trimmed at both ends. Errors: the
/// file cannot be opened or read, is a directory, is longer than `max_cookie_file`, or holds
/// no cookie. A file that others than its owner may read or write gets a warning (Erlang
/// refuses such a file; we start, and say how to fix it).
[[nodiscard]] inline cookie_file_result read_cookie(const std::string& path) {
    cookie_file_result r;
    int fd = -1;
    do {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        r.open_error = errno;
        r.error = "cannot open " + quoted_path(path) + ": " + errno_text(r.open_error);
        return r;
    }
    struct ::stat st {};
    if (::fstat(fd, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            ::close(fd);
            r.error = "cannot read " + quoted_path(path) + ": it is a directory";
            return r;
        }
        if (S_ISREG(st.st_mode) && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
            constexpr std::string_view digits = "01234567";
            std::string mode = "0";
            for (int shift = 6; shift >= 0; shift -= 3) {
                mode += digits[(st.st_mode >> shift) & 7U];
            }
            r.warnings.push_back("the cookie file " + quoted_path(path) + " has mode " + mode +
                                 ": others than its owner may read or change it (chmod 400 " +
                                 quoted_path(path) + ")");
        }
    }
    std::string bytes;
    char buffer[1024];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            const int error = errno;
            ::close(fd);
            r.warnings.clear();
            r.error = "cannot read " + quoted_path(path) + ": " + errno_text(error);
            return r;
        }
        if (n == 0) {
            break;
        }
        bytes.append(buffer, static_cast<std::size_t>(n));
        if (bytes.size() > max_cookie_file) {
            ::close(fd);
            r.warnings.clear();
            r.error = quoted_path(path) + " is longer than " + std::to_string(max_cookie_file) +
                      " bytes: not a cookie file";
            return r;
        }
    }
    ::close(fd);
    std::string_view text = bytes;
    const auto space = [](char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
    };
    while (!text.empty() && space(text.front())) {
        text.remove_prefix(1);
    }
    while (!text.empty() && space(text.back())) {
        text.remove_suffix(1);
    }
    if (text.empty()) {
        r.error = quoted_path(path) + " holds no cookie (it is empty)";
        return r;
    }
    r.cookie = std::string(text);
    return r;
}

/// A new cookie: `new_cookie_letters` random letters A-Z (about 150 bits); empty when the
/// system gives no random bytes.
[[nodiscard]] inline std::string new_cookie() {
    std::string cookie;
    std::uint8_t bytes[64];
    while (cookie.size() < new_cookie_letters) {
        if (!random_bytes(bytes, sizeof bytes)) {
            return {};
        }
        for (const std::uint8_t b : bytes) {
            // 234 = 9 * 26: taking only bytes below it keeps every letter equally likely.
            if (b < 234 && cookie.size() < new_cookie_letters) {
                cookie += static_cast<char>('A' + b % 26);
            }
        }
    }
    return cookie;
}

/// Reads the cookie in `path`, first creating the file with a new cookie when it does not
/// exist. Creating is atomic, so that nodes started at the same moment agree: the cookie is
/// written to a temporary file next to `path` (mode 0400, synced), which is then linked to
/// `path`. link(2) never replaces a file: if another process linked its own first, ours
/// fails with EEXIST and is dropped, and the one there is read. A file is never renamed over
/// `path`, and `path` never exists half written.
[[nodiscard]] inline cookie_file_result read_or_create_cookie(const std::string& path) {
    cookie_file_result r = read_cookie(path);
    if (r.open_error != ENOENT) {
        // There is a file (readable or not), never replaced. Only open's own errno tells:
        // a second look (access) could see the file another process linked meanwhile and
        // return the first look's "cannot open".
        return r;
    }
    const std::string cookie = new_cookie();
    std::uint8_t tag[8];
    if (cookie.empty() || !random_bytes(tag, sizeof tag)) {
        r.error = "cannot create " + quoted_path(path) + ": no random bytes";
        return r;
    }
    const std::string temporary =
        path + ".tmp." + std::to_string(::getpid()) + "." + to_hex(tag, sizeof tag);
    const auto failed = [&](const std::string& what, int error) {
        r.error = "cannot create " + quoted_path(path) + ": " + what + " " +
                  quoted_path(temporary) + ": " + errno_text(error);
        ::unlink(temporary.c_str());
        return r;
    };
    int fd = -1;
    do {
        fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, S_IRUSR);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        const int error = errno;
        r.error = "cannot create " + quoted_path(path) + ": " + errno_text(error);
        return r;
    }
    std::size_t written = 0;
    bool ok = ::fchmod(fd, S_IRUSR) == 0; // whatever the umask
    while (ok && written < cookie.size()) {
        const ssize_t n = ::write(fd, cookie.data() + written, cookie.size() - written);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        ok = n > 0;
        written += ok ? static_cast<std::size_t>(n) : 0;
    }
    ok = ok && ::fsync(fd) == 0;
    const int write_error = errno;
    ok = (::close(fd) == 0) && ok;
    if (!ok) {
        return failed("writing", write_error);
    }
    if (::link(temporary.c_str(), path.c_str()) != 0) {
        if (errno != EEXIST) {
            return failed("linking", errno);
        }
    } else {
        r.created = true;
    }
    ::unlink(temporary.c_str());
    const bool created = r.created;
    r = read_cookie(path); // ours, or the one another process linked first
    r.created = created;
    return r;
}

} // namespace detail
} // namespace v0
} // namespace otpkv
