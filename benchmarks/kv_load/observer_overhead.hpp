// SPDX-License-Identifier: MIT
// kv_load: --observer, what watching a kv_server costs it under load: its /metrics scraped ten
// times a second, and its event log at info level, each against the same setup unwatched.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "options.hpp"
#include "processes.hpp"
#include "report.hpp"
#include "servers.hpp"
#include "sweep.hpp"
#include "workload.hpp"

namespace kv_load {

// ------------------------------------------------------------------------------------------
// The scraper: GET /metrics over plain HTTP/1.0, as Prometheus would, on a thread of its own

// One scrape: the server's request count (the histogram's _count) or what went wrong.
struct scrape_reply {
    bool ok = false;
    std::uint64_t requests = 0;
    std::string error;
};

// One GET /metrics on a new connection, read until the server closes it (its replies carry
// `Connection: close`), by `deadline`: the status must be 200 and the body must have the
// sample `otpkv_request_duration_seconds_count N`.
inline scrape_reply scrape_metrics(int port, std::int64_t deadline) {
    scrape_reply r;
    const int fd = connect_blocking(port);
    if (fd < 0) {
        r.error = std::string("connect: ") + std::strerror(errno);
        return r;
    }
    std::string got;
    const bool sent = send_all(fd, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    const auto to_the_end = [](const std::string&) { return false; };
    const read_end end = sent ? read_until(fd, deadline, got, to_the_end) : read_end::closed;
    ::close(fd);
    constexpr std::string_view sample = "\notpkv_request_duration_seconds_count ";
    const std::size_t head_end = got.find("\r\n\r\n");
    const std::size_t at =
        head_end == std::string::npos ? head_end : got.find(sample, head_end + 3);
    const std::size_t line_end = at == std::string::npos ? at : got.find('\n', at + sample.size());
    if (!sent) {
        r.error = std::string("send: ") + std::strerror(errno);
    } else if (end == read_end::timeout) {
        r.error = "no complete reply within 2 s (got " + std::to_string(got.size()) + " bytes)";
    } else if (!got.starts_with("HTTP/1.") || got.size() < 13 || got.compare(8, 5, " 200 ") != 0) {
        r.error = "status " + printable(got.substr(0, got.find('\r')));
    } else if (line_end == std::string::npos) {
        r.error = "no otpkv_request_duration_seconds_count sample in the body";
    } else if (!parse_number(
                   std::string_view(got).substr(at + sample.size(), line_end - at - sample.size()),
                   r.requests)) {
        r.error = "otpkv_request_duration_seconds_count is not a count: " +
                  printable(got.substr(at + 1, line_end - at - 1));
    } else {
        r.ok = true;
    }
    return r;
}

// What a scraper saw over its life.
struct scrape_totals {
    std::size_t done = 0;    // 200, with a request count
    std::size_t failed = 0;  // reported as they happen
    histogram latency;       // of a good scrape: from connect() to the server's close
    std::uint64_t first = 0; // the request count at the first good scrape
    std::uint64_t last = 0;  // and at the last
    bool went_back = false;  // a count below the one before it (a counter never falls)
    double seconds = 0;      // spent active
};

// Scrapes 127.0.0.1:port/metrics every `period_ns` on a thread of its own while it is active
// (from construction to stop(), paused and resumed by set_active), on a fixed schedule: a
// scrape that overruns its slot starts the next one at once, missed slots are not made up
// with a burst, and a resumed scraper scrapes at once.
// Thread safety: set_active and stop() from one thread, stop() once; the totals are read
// only after the join.
class scraper {
  public:
    scraper(int port, std::int64_t period_ns, bool active)
        : active_(active), thread_([this, port, period_ns] { run(port, period_ns); }) {}
    scraper(const scraper&) = delete;
    scraper& operator=(const scraper&) = delete;
    ~scraper() {
        if (thread_.joinable()) {
            stop();
        }
    }

    // Pauses (a scrape under way finishes) or resumes the scraping.
    void set_active(bool on) {
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            active_ = on;
        }
        wake_.notify_one();
    }

    // Ends the scraping (a scrape under way finishes) and returns what it saw.
    scrape_totals stop() {
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_one();
        thread_.join();
        return totals_;
    }

  private:
    void run(int port, std::int64_t period_ns) {
        std::unique_lock<std::mutex> lock(mutex_);
        std::int64_t next = now_ns();
        std::int64_t active_since = next;
        while (!stopping_) {
            if (!active_) {
                wake_.wait(lock, [this] { return active_ || stopping_; });
                next = active_since = now_ns();
                continue;
            }
            lock.unlock();
            const std::int64_t began = now_ns();
            const scrape_reply r = scrape_metrics(port, began + 2'000'000'000);
            if (!r.ok) {
                ++totals_.failed;
                issue("observer: GET http://127.0.0.1:%d/metrics: %s", port, r.error.c_str());
            } else {
                totals_.latency.record(static_cast<std::uint64_t>(now_ns() - began));
                totals_.went_back =
                    totals_.went_back || (totals_.done > 0 && r.requests < totals_.last);
                totals_.first = totals_.done == 0 ? r.requests : totals_.first;
                totals_.last = r.requests;
                ++totals_.done;
            }
            next = std::max(next + period_ns, now_ns());
            lock.lock();
            const auto at = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(next));
            if (wake_.wait_until(lock, at, [this] { return !active_ || stopping_; })) {
                totals_.seconds += static_cast<double>(now_ns() - active_since) / 1e9;
            }
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_;
    bool active_;           // guarded by mutex_
    bool stopping_ = false; // guarded by mutex_
    scrape_totals totals_;  // the scraping thread's until the join
    std::thread thread_;    // last: it starts once the members above exist
};

// ------------------------------------------------------------------------------------------
// The mode

inline double median_of(std::vector<double> values) {
    if (values.empty()) {
        return 0.0;
    }
    std::sort(values.begin(), values.end());
    const std::size_t mid = values.size() / 2;
    return values.size() % 2 == 1 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

inline std::size_t count_lines(const std::string& path) {
    std::ifstream in(path);
    std::size_t lines = 0;
    for (std::string line; std::getline(in, line);) {
        ++lines;
    }
    return lines;
}

// One kv_server of --observer: its log level and the file its stderr goes to.
struct observed_node {
    const char* name;
    const char* level;
    std::string log_path;
    server srv;
    sweep_data data;
    std::size_t lines_before = 0; // lines in its log once it is prefilled
};

// The passes of one variant, as measured.
struct variant_passes {
    const char* name;
    std::size_t node; // of the observed_node array
    std::vector<double> ops_per_s;
    std::vector<double> p99;
};

// A distribution-free 95% confidence interval of the median of n values (n >= 6): the ranks
// k and n+1-k (from 1) of the sorted values, k the largest with P(Binomial(n, 1/2) < k) <=
// 2.5%. Returns k, or 0 when n is too small for one.
inline std::size_t median_ci_rank(std::size_t n) {
    double below = 0;                                    // P(X < k), X ~ Binomial(n, 1/2)
    double term = std::pow(0.5, static_cast<double>(n)); // P(X == 0)
    std::size_t k = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (below + term > 0.025) {
            break;
        }
        below += term;
        k = i + 1;
        term = term * static_cast<double>(n - i) / static_cast<double>(i + 1); // P(X == i + 1)
    }
    return k;
}

// The median of paired ops/s ratios (each pair measured side by side, so a drift of the
// machine cancels out), its 95% confidence interval, and whether the target (0.98 or more)
// holds; then each ratio, when there are few.
inline void print_paired_ratios(std::vector<double> ratios, const char* title, const char* pairs) {
    if (ratios.empty()) {
        return;
    }
    const std::vector<double> in_order = ratios;
    std::sort(ratios.begin(), ratios.end());
    const double median = median_of(ratios);
    std::printf("- %s: median of %zu %s ratios %.3fx (%+.1f%%), ", title, ratios.size(), pairs,
                median, (median - 1) * 100);
    if (const std::size_t k = median_ci_rank(ratios.size()); k > 0) {
        std::printf("95%% confidence interval %.3f-%.3f; ", ratios[k - 1],
                    ratios[ratios.size() - k]);
    } else {
        std::printf("too few for a confidence interval; ");
    }
    std::printf("%s the 2%% target\n", median >= 0.98 ? "within" : "MISSES");
    if (in_order.size() <= 50) {
        std::printf("  - in order:");
        for (const double r : in_order) {
            std::printf(" %.3f", r);
        }
        std::printf("\n");
    }
}

// `top` over `bottom`, round by round when both have every round (a failed pass leaves no
// row, and the rounds would no longer pair up), then the ratio of their medians and p99s.
inline void print_round_ratios(const variant_passes& top, const variant_passes& bottom,
                               const char* title) {
    if (top.ops_per_s.empty() || bottom.ops_per_s.empty()) {
        return;
    }
    if (top.ops_per_s.size() == bottom.ops_per_s.size()) {
        std::vector<double> ratios;
        for (std::size_t i = 0; i < top.ops_per_s.size(); ++i) {
            ratios.push_back(top.ops_per_s[i] / bottom.ops_per_s[i]);
        }
        print_paired_ratios(ratios, title, "round-by-round ops/s");
    } else {
        std::printf("- %s: a pass failed, so the rounds do not pair up\n", title);
    }
    std::printf("  - ratio of the median ops/s %.3fx, median p99 latency %.2fx\n",
                median_of(top.ops_per_s) / median_of(bottom.ops_per_s),
                median_of(top.p99) / median_of(bottom.p99));
}

// The scraping, interleaved within passes: ops/s in consecutive windows of 250 ms, scraped
// in every other one, in pairs ordered off-on, on-off, off-on..., so that each pair's two
// windows see the same connections, the same spread of them over the server's event loops,
// and nearly the same machine.
struct interleaved_windows {
    static constexpr std::int64_t window_ns = 250'000'000;
    std::vector<double> pair_ratios; // on / off, pair by pair
    double on_ops = 0, on_seconds = 0, off_ops = 0, off_seconds = 0;

    static bool scraped(std::size_t k) noexcept { return ((k / 2) % 2 == 1) == (k % 2 == 0); }

    // On the drive()'s calling thread during a window of `seconds`: toggles `s` window by
    // window and samples `progress` at each window's end.
    void run(scraper& s, const std::atomic<std::uint64_t>& progress, double seconds) {
        const auto windows = static_cast<std::size_t>(seconds * 1e9 / window_ns) / 2 * 2;
        const std::int64_t begin = now_ns();
        std::int64_t at = begin;
        std::uint64_t count = progress.load(std::memory_order_relaxed);
        double off_rate = 0, on_rate = 0;
        for (std::size_t k = 0; k < windows; ++k) {
            const bool on = scraped(k);
            s.set_active(on);
            sleep_until_ns(begin + static_cast<std::int64_t>(k + 1) * window_ns);
            const std::uint64_t c = progress.load(std::memory_order_relaxed);
            const std::int64_t t = now_ns();
            const double ops = static_cast<double>(c - count);
            const double secs = static_cast<double>(t - at) / 1e9;
            (on ? on_ops : off_ops) += ops;
            (on ? on_seconds : off_seconds) += secs;
            (on ? on_rate : off_rate) = ops / secs;
            if (k % 2 == 1 && off_rate > 0) {
                pair_ratios.push_back(on_rate / off_rate);
            }
            count = c;
            at = t;
        }
        s.set_active(false);
    }
};

// Three kv_server processes, alike but for --log-level: "error", "info", and "control" (error
// again: the spread between two identical processes), each with an admin port and its stderr
// in a file. The --sweep workload runs in rounds of four passes: "unscraped" (error), "scraped
// half" (error again, /metrics scraped ten times a second in every other window of 250 ms,
// see interleaved_windows), "info" and "control"; odd rounds in that order, even rounds
// backwards, so that a drift in the machine's load falls on both sides of each ratio. The
// idle servers cost nothing meanwhile.
inline void run_observer(session& ss) {
    const options& o = ss.opt;
    const unsigned rounds = o.rounds > 0 ? o.rounds : 5;
    const std::uint32_t depth = o.pipelines.back();
    constexpr std::int64_t scrape_period_ns = 100'000'000;
    std::printf("\n## observer: /metrics scraped 10 times a second, and logging at info level, "
                "against neither;\n%zu connections, P=%u, GET:PUT %.0f:%.0f, %u round(s)\n\n",
                o.connections, depth, o.get_ratio * 100, (1 - o.get_ratio) * 100, rounds);
    std::fflush(stdout);

    char dir_template[] = "/tmp/kv_load.XXXXXX";
    if (::mkdtemp(dir_template) == nullptr) {
        issue("mkdtemp: %s", std::strerror(errno));
        ++ss.errors;
        return;
    }
    const std::string dir = dir_template;
    std::array<observed_node, 3> nodes{observed_node{"error", "error", {}, {}, {}, 0},
                                       observed_node{"info", "info", {}, {}, {}, 0},
                                       observed_node{"control", "error", {}, {}, {}, 0}};
    bool started = true;
    for (observed_node& n : nodes) {
        n.log_path = dir + "/kv_server." + n.name + ".stderr";
        node_spec spec;
        spec.more = {"--log-level", n.level, "--admin-port", "0"};
        spec.stderr_fd =
            ::open(n.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        if (spec.stderr_fd < 0) {
            issue("open %s: %s", n.log_path.c_str(), std::strerror(errno));
            started = false;
            break;
        }
        auto srv = start(server_kind::kv, o, sweep_max_connections(o), spec);
        ::close(spec.stderr_fd); // kv_server has its own copy, as its stderr
        if (srv && srv->admin_port == 0) {
            issue("kv_server announced no admin port: %s", srv->command.c_str());
            stop(*srv);
            srv.reset();
        }
        if (!srv) {
            started = false;
            break;
        }
        n.srv = *srv;
        std::printf("- %s: `%s 2>>%s` (admin port %d)\n", n.name, n.srv.command.c_str(),
                    n.log_path.c_str(), n.srv.admin_port);
    }
    if (!started) {
        ++ss.errors;
        for (observed_node& n : nodes) {
            stop(n.srv);
            ::unlink(n.log_path.c_str());
        }
        ::rmdir(dir.c_str());
        return;
    }
    std::printf(
        "\nEach kv_server's stderr is a file, as an operator's would be (nothing can fill "
        "up and block\nits logging). Passes per round: unscraped (error), scraped half "
        "(error: GET /metrics every\n100 ms on a new connection, HTTP/1.0, checked: 200 and "
        "an otpkv_request_duration_seconds_count\nsample, in every other window of 250 ms), "
        "info, control (error again); odd rounds in that\norder, even rounds backwards.\n\n");
    print_sweep_head(o, "pass");

    std::array<variant_passes, 4> variants{
        variant_passes{"unscraped", 0, {}, {}}, variant_passes{"scraped half", 0, {}, {}},
        variant_passes{"info", 1, {}, {}}, variant_passes{"control", 2, {}, {}}};
    constexpr std::size_t scraped_half = 1;
    std::array<sweep_target, 4> targets;
    for (std::size_t v = 0; v < targets.size(); ++v) {
        observed_node& n = nodes[variants[v].node];
        targets[v].kind = server_kind::kv;
        targets[v].port = n.srv.port;
        targets[v].servers = {&n.srv};
        targets[v].data = &n.data;
    }
    for (observed_node& n : nodes) {
        const bool prefilled = sweep_prefill(ss, n.srv, n.data);
        for (sweep_target& t : targets) {
            t.usable = t.data == &n.data ? prefilled : t.usable;
        }
        n.lines_before = count_lines(n.log_path);
    }

    std::vector<sweep_row> rows;
    std::vector<scrape_totals> scrapes;
    interleaved_windows windows;
    for (unsigned round = 1; round <= rounds; ++round) {
        for (std::size_t i = 0; i < targets.size(); ++i) {
            const std::size_t v = round % 2 == 1 ? i : targets.size() - 1 - i;
            sweep_target& t = targets[v];
            if (!t.usable) {
                continue;
            }
            t.name = std::string(variants[v].name) + ", round " + std::to_string(round);
            const std::size_t rows_before = rows.size();
            if (v == scraped_half) {
                std::atomic<std::uint64_t> progress{0};
                scraper scraping(nodes[0].srv.admin_port, scrape_period_ns, false);
                sweep_run(
                    ss, t, depth, rows, [&] { windows.run(scraping, progress, o.seconds); },
                    &progress);
                scrapes.push_back(scraping.stop());
            } else {
                sweep_run(ss, t, depth, rows);
            }
            if (rows.size() > rows_before) {
                variants[v].ops_per_s.push_back(rows.back().ops_per_s);
                variants[v].p99.push_back(rows.back().p99);
            }
        }
    }
    std::array<std::size_t, 3> lines_during{};
    for (std::size_t i = 0; i < nodes.size(); ++i) {
        lines_during[i] = count_lines(nodes[i].log_path) - nodes[i].lines_before;
        stop(nodes[i].srv);
    }

    // The scrapes: every one answered, and the server's request count grew in every pass.
    if (!scrapes.empty()) {
        std::printf("\n| scraped pass | scrapes | per second scraping | p50 ms | p99 ms | max ms | "
                    "failed | requests counted, first to last scrape |\n"
                    "|---|---|---|---|---|---|---|---|\n");
    }
    for (std::size_t i = 0; i < scrapes.size(); ++i) {
        const scrape_totals& s = scrapes[i];
        std::printf("| %zu | %zu | %.1f | %.2f | %.2f | %.2f | %zu | %s to %s |\n", i + 1, s.done,
                    s.seconds > 0 ? static_cast<double>(s.done) / s.seconds : 0.0,
                    s.latency.percentile_us(0.5) / 1000, s.latency.percentile_us(0.99) / 1000,
                    s.latency.max_us() / 1000, s.failed,
                    with_commas(static_cast<double>(s.first)).c_str(),
                    with_commas(static_cast<double>(s.last)).c_str());
        ss.errors += s.failed;
        if (s.went_back) {
            issue("observer: scraped pass %zu: the request count fell between two scrapes", i + 1);
            ++ss.errors;
        }
        if (s.done < 2 || s.last <= s.first) {
            issue("observer: scraped pass %zu: the request count did not grow (%llu to %llu in %zu "
                  "scrapes)",
                  i + 1, static_cast<unsigned long long>(s.first),
                  static_cast<unsigned long long>(s.last), s.done);
            ++ss.errors;
        }
    }

    std::printf("\n| variant | passes | median ops/s | lowest | highest | median p99 us |\n"
                "|---|---|---|---|---|---|\n");
    for (const variant_passes& v : variants) {
        if (v.ops_per_s.empty()) {
            continue;
        }
        std::printf("| %s | %zu | %s | %s | %s | %.1f |\n", v.name, v.ops_per_s.size(),
                    with_commas(median_of(v.ops_per_s)).c_str(),
                    with_commas(*std::min_element(v.ops_per_s.begin(), v.ops_per_s.end())).c_str(),
                    with_commas(*std::max_element(v.ops_per_s.begin(), v.ops_per_s.end())).c_str(),
                    median_of(v.p99));
    }
    std::printf("\nSame client, same run (the target: at most 2%% fewer ops/s, a ratio of 0.98 or "
                "more):\n");
    if (windows.on_seconds > 0 && windows.off_seconds > 0 && windows.off_ops > 0) {
        print_paired_ratios(windows.pair_ratios,
                            "scraped / unscraped (the same server, the same connections)",
                            "adjacent 250 ms window");
        const double on = windows.on_ops / windows.on_seconds;
        const double off = windows.off_ops / windows.off_seconds;
        std::printf("  - all windows pooled: %s ops/s scraped, %s unscraped, %.3fx\n",
                    with_commas(on).c_str(), with_commas(off).c_str(), on / off);
    }
    print_round_ratios(variants[2], variants[0],
                       "info / error (two servers, --log-level info and error, unscraped)");
    print_round_ratios(variants[3], variants[0],
                       "control / error (two servers, both --log-level error: the spread between "
                       "two identical processes)");

    std::printf("\nLines on stderr during the passes: %zu error, %zu info, %zu control. The info "
                "server's log:\n```\n",
                lines_during[0], lines_during[1], lines_during[2]);
    std::ifstream info_log(nodes[1].log_path);
    std::size_t shown = 0;
    for (std::string line; shown < 5 && std::getline(info_log, line); ++shown) {
        std::printf("%s\n", line.c_str());
    }
    std::printf("```\n");
    std::fflush(stdout);
    for (const observed_node& n : nodes) {
        ::unlink(n.log_path.c_str());
    }
    ::rmdir(dir.c_str());
}

} // namespace kv_load
