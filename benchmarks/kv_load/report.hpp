// SPDX-License-Identifier: MIT
// kv_load: Clock, latency histogram, and what kv_load prints: problems found while running, numbers
// for people, the machine.
#pragma once

#include <time.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace kv_load {

// ------------------------------------------------------------------------------------------
// Clock and latency histogram

inline std::int64_t now_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

inline void sleep_until_ns(std::int64_t deadline) noexcept {
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(deadline / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(deadline % 1'000'000'000);
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
}

// Whole milliseconds from now to `deadline` (as poll() takes them); 0 or less once it passed.
inline int ms_until(std::int64_t deadline) noexcept {
    return static_cast<int>((deadline - now_ns()) / 1'000'000);
}

inline void sleep_ms(int ms) noexcept {
    sleep_until_ns(now_ns() + std::int64_t{ms} * 1'000'000);
}

// The HdrHistogram idea, log-linear: values below 256 ns have a bin each; above, every power
// of two is split into 128 equal bins, so a value is reported within 1/256 of itself (the bin's
// midpoint) and always within 1%. About 5400 bins of 64-bit counts; merged by addition.
class histogram {
  public:
    void record(std::uint64_t ns) noexcept {
        ++counts_[index(ns)];
        ++total_;
        max_ = std::max(max_, ns);
    }
    void merge(const histogram& other) noexcept {
        for (std::size_t i = 0; i < bins; ++i) {
            counts_[i] += other.counts_[i];
        }
        total_ += other.total_;
        max_ = std::max(max_, other.max_);
    }
    std::uint64_t total() const noexcept { return total_; }
    double max_us() const noexcept { return static_cast<double>(max_) / 1000.0; }
    // The value below which a fraction q of the recorded values lie, in microseconds.
    double percentile_us(double q) const noexcept {
        if (total_ == 0) {
            return 0.0;
        }
        auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total_)));
        rank = std::clamp<std::uint64_t>(rank, 1, total_);
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < bins; ++i) {
            seen += counts_[i];
            if (seen >= rank) {
                return std::min(value_of(i), static_cast<double>(max_)) / 1000.0;
            }
        }
        return max_us();
    }

  private:
    static constexpr unsigned sub_bits = 7;   // 128 bins per power of two
    static constexpr unsigned max_shift = 40; // values are clamped below 2^48 ns (78 hours)
    static constexpr std::size_t bins = std::size_t{max_shift + 2} << sub_bits;

    static std::size_t index(std::uint64_t v) noexcept {
        v = std::min<std::uint64_t>(v, (std::uint64_t{1} << (max_shift + sub_bits + 1)) - 1);
        const unsigned top = 63U - static_cast<unsigned>(std::countl_zero(v | 1U));
        const unsigned shift = top > sub_bits ? top - sub_bits : 0;
        return (std::size_t{shift} << sub_bits) + static_cast<std::size_t>(v >> shift);
    }
    static double value_of(std::size_t i) noexcept {
        if (i < (std::size_t{2} << sub_bits)) {
            return static_cast<double>(i);
        }
        const std::size_t shift = (i >> sub_bits) - 1;
        const std::size_t mantissa = i - (shift << sub_bits);
        return static_cast<double>(mantissa << shift) +
               static_cast<double>(std::size_t{1} << shift) / 2.0;
    }

    std::vector<std::uint64_t> counts_ = std::vector<std::uint64_t>(bins);
    std::uint64_t total_ = 0;
    std::uint64_t max_ = 0;
};

// ------------------------------------------------------------------------------------------
// Problems found while running are printed at once (the first few) and counted.

inline std::atomic<unsigned> issues_printed{0};
inline constexpr unsigned max_issues_printed = 20;

[[gnu::format(printf, 1, 2)]] inline void issue(const char* format, ...) {
    const unsigned n = issues_printed.fetch_add(1, std::memory_order_relaxed);
    if (n > max_issues_printed) {
        return;
    }
    if (n == max_issues_printed) {
        std::fputs("kv_load: ERROR: (further errors are counted, not printed)\n", stderr);
        return;
    }
    std::va_list args;
    va_start(args, format);
    std::fputs("kv_load: ERROR: ", stderr);
    std::vfprintf(stderr, format, args);
    std::fputc('\n', stderr);
    va_end(args);
}

inline void note(const char* text) {
    std::fprintf(stderr, "kv_load: %s\n", text);
    std::fflush(stderr);
}

// Bytes from a reply, quoted for a message (non-printable bytes as \xNN, at most 60 bytes).
inline std::string printable(std::string_view bytes) {
    std::string out = "\"";
    for (const char ch : bytes.substr(0, 60)) {
        const auto u = static_cast<unsigned char>(ch);
        if (u >= 0x20 && u < 0x7f && ch != '"' && ch != '\\') {
            out += ch;
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", u);
            out += hex;
        }
    }
    out += bytes.size() > 60 ? "\"..." : "\"";
    return out;
}

// ------------------------------------------------------------------------------------------
// Numbers for people, and the machine

inline std::string with_commas(double value) {
    auto n = static_cast<std::uint64_t>(std::llround(value));
    std::string digits = std::to_string(n);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) {
            out += ',';
        }
        out += digits[i];
    }
    return out;
}

inline std::string mib(long kib) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(kib) / 1024.0);
    return buf;
}

inline std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("model name")) {
            const std::size_t colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(colon + 2);
        }
    }
    return "unknown CPU";
}

} // namespace kv_load
