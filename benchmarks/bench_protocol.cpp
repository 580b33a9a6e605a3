// SPDX-License-Identifier: MIT
// Protocol throughput: framing + parsing + reply formatting of a pipelined request stream,
// otpkv against the naive way (std::getline into a std::string per line, tokens read with
// an std::istringstream into std::strings, replies built by string concatenation).
// Both do the same work on the same bytes in the same run; the median of several
// repetitions is reported, with the ratio.
//
//   bench_protocol [requests=1000000] [repetitions=7]
#include <otpkv/command.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

// 90% GET / 10% PUT over 1000 keys, CRLF-terminated, as a client would pipeline them.
std::string make_requests(std::size_t count) {
    std::string out;
    for (std::size_t i = 0; i < count; ++i) {
        const std::string key = "key" + std::to_string(i % 1000);
        out +=
            i % 10 == 0 ? "PUT bucket " + key + " value" + std::to_string(i) : "GET bucket " + key;
        out += "\r\n";
    }
    return out;
}

// Each side answers GET with a fixed value, so only protocol work is measured.
std::size_t run_otpkv(std::string_view input, std::string& out) {
    otpkv::line_framer framer;
    std::size_t commands = 0;
    // Feed in 64 KiB reads, as a server would.
    for (std::size_t at = 0; at < input.size(); at += 65536) {
        framer.feed(input.substr(at, 65536));
        for (otpkv::frame f = framer.next(); f.status == otpkv::frame_status::line;
             f = framer.next()) {
            const otpkv::command cmd = otpkv::parse(f.line);
            otpkv::append_reply(out, cmd.kind == otpkv::command_kind::get ? otpkv::reply::found("v")
                                                                          : otpkv::reply::ok());
            ++commands;
        }
    }
    return commands;
}

std::size_t run_naive(std::string_view input, std::string& out) {
    std::istringstream stream{std::string(input)};
    std::string line;
    std::size_t commands = 0;
    while (std::getline(stream, line)) {
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        std::istringstream tokens(line);
        std::vector<std::string> tok;
        for (std::string t; tokens >> t;) {
            tok.push_back(t);
        }
        out += (!tok.empty() && tok[0] == "GET") ? std::string("v") + "\r\nOK\r\n" : "OK\r\n";
        ++commands;
    }
    return commands;
}

template <class F> double median_seconds(int reps, F&& body) {
    std::vector<double> times;
    for (int r = 0; r < reps; ++r) {
        const auto start = std::chrono::steady_clock::now();
        body();
        times.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
    const std::size_t requests = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1000000;
    const int reps = std::max(1, argc > 2 ? std::atoi(argv[2]) : 7);
    const std::string input = make_requests(requests);

    std::string expected;
    std::string got;
    if (run_naive(input, expected) != requests || run_otpkv(input, got) != requests ||
        got != expected) {
        std::fprintf(stderr, "the two sides disagree\n");
        return 1;
    }
    std::string sink;
    const double t_otpkv = median_seconds(reps, [&] {
        sink.clear();
        run_otpkv(input, sink);
    });
    const double t_naive = median_seconds(reps, [&] {
        sink.clear();
        run_naive(input, sink);
    });
    const double mb = static_cast<double>(input.size()) / 1e6;
    std::printf("protocol: %zu pipelined requests (%.1f MB), median of %d\n", requests, mb, reps);
    std::printf("  %-34s %8.1f Mreq/s %8.1f MB/s\n", "otpkv line_framer+parse+append",
                static_cast<double>(requests) / t_otpkv / 1e6, mb / t_otpkv);
    std::printf("  %-34s %8.1f Mreq/s %8.1f MB/s\n", "naive getline+istringstream",
                static_cast<double>(requests) / t_naive / 1e6, mb / t_naive);
    std::printf("  ratio otpkv / naive: %.2fx\n", t_naive / t_otpkv);
    return 0;
}
