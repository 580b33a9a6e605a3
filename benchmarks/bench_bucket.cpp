// SPDX-License-Identifier: MIT
// Bucket and registry against the best concurrent maps, all in one run (design.md §3):
//   1M keys, 90% get / 10% put;  16 hot keys, read-only;  registry lookups of 16 and
//   10,000 names;  at 1 and 2 threads; plus memory per entry and per empty bucket.
// Peers are compiled in when their Debian packages are installed (CMake finds them):
// libcuckoo (libcuckoo-dev), liburcu's cds_lfht in the QSBR flavour (liburcu-dev),
// tbb::concurrent_hash_map (libtbb-dev). The baselines, std::unordered_map with a
// std::mutex or a std::shared_mutex, are always there.
//
// Usage: bench_bucket [repetitions=5] [scale=1.0]   (scale multiplies the operation counts)
// Prints one line per measurement (median of the repetitions), then the ratios.
#include <otpkv/bucket.hpp>
#include <otpkv/registry.hpp>

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#if defined(OTPKV_BENCH_HAVE_LIBCUCKOO)
#include <libcuckoo/cuckoohash_map.hh>
#endif
#if defined(OTPKV_BENCH_HAVE_TBB)
#include <tbb/concurrent_hash_map.h>
#endif
#if defined(OTPKV_BENCH_HAVE_URCU)
#include <urcu-qsbr.h>
#include <urcu/rculfhash.h>
#endif

namespace {

using clock_type = std::chrono::steady_clock;
using key_t = std::uint64_t;

// Keys are scrambled indices, so that no contender gets sequential keys.
constexpr key_t key_of(std::uint64_t i) noexcept {
    return (i + 1) * 0x9E3779B97F4A7C15ULL;
}
// One step of a per-thread generator (the same cost for every contender).
inline std::uint64_t next(std::uint64_t& s) noexcept {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

// ---- contenders: get(key, value&) -> bool, put(key, value), and per-thread hooks ----

// The per-thread hooks of a contender that needs none (only liburcu's QSBR threads do).
struct no_hooks {
    static void thread_start() {}
    static void quiescent() {}
    static void thread_end() {}
};

struct otpkv_bucket : no_hooks {
    static constexpr const char* name = "otpkv bucket";
    otpkv::bucket<key_t, std::uint64_t> b;
    bool get(key_t k, std::uint64_t& v) const {
        auto got = b.get(k);
        if (got) {
            v = *got;
        }
        return got.has_value();
    }
    void put(key_t k, std::uint64_t v) { b.put(k, v); }
};

// std::unordered_map under one lock; readers take `ReadLock` (shared or exclusive).
template <class Mutex, template <class> class ReadLock> struct locked_map : no_hooks {
    mutable Mutex m;
    std::unordered_map<key_t, std::uint64_t> map;
    bool get(key_t k, std::uint64_t& v) const {
        const ReadLock<Mutex> lock(m);
        auto it = map.find(k);
        if (it == map.end()) {
            return false;
        }
        v = it->second;
        return true;
    }
    void put(key_t k, std::uint64_t v) {
        const std::unique_lock lock(m);
        map[k] = v;
    }
};
struct mutex_map : locked_map<std::mutex, std::unique_lock> {
    static constexpr const char* name = "unordered_map + mutex";
};
struct shared_mutex_map : locked_map<std::shared_mutex, std::shared_lock> {
    static constexpr const char* name = "unordered_map + shared_mutex";
};

#if defined(OTPKV_BENCH_HAVE_LIBCUCKOO)
struct cuckoo_map : no_hooks {
    static constexpr const char* name = "libcuckoo";
    libcuckoo::cuckoohash_map<key_t, std::uint64_t> map;
    bool get(key_t k, std::uint64_t& v) const { return map.find(k, v); }
    void put(key_t k, std::uint64_t v) { map.insert_or_assign(k, v); }
};
#endif

#if defined(OTPKV_BENCH_HAVE_TBB)
struct tbb_map : no_hooks {
    static constexpr const char* name = "tbb::concurrent_hash_map";
    tbb::concurrent_hash_map<key_t, std::uint64_t> map;
    bool get(key_t k, std::uint64_t& v) const {
        tbb::concurrent_hash_map<key_t, std::uint64_t>::const_accessor a;
        if (!map.find(a, k)) {
            return false;
        }
        v = a->second;
        return true;
    }
    void put(key_t k, std::uint64_t v) {
        tbb::concurrent_hash_map<key_t, std::uint64_t>::accessor a;
        map.insert(a, k);
        a->second = v;
    }
};
#endif

#if defined(OTPKV_BENCH_HAVE_URCU)
// cds_lfht, QSBR flavour: lookups take no lock at all (QSBR read-side sections are free);
// each thread announces a quiescent state every 1,024 operations; a put replaces the node
// and frees the old one through call_rcu.
struct urcu_map {
    static constexpr const char* name = "liburcu cds_lfht (QSBR)";
    struct node {
        key_t key;
        std::uint64_t value;
        cds_lfht_node ht_node;
        rcu_head rcu;
    };
    cds_lfht* ht = cds_lfht_new(1024, 1024, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING, nullptr);
    static unsigned long hash(key_t k) noexcept {
        k ^= k >> 32;
        k *= 0x9E3779B97F4A7C15ULL;
        return static_cast<unsigned long>(k ^ (k >> 29));
    }
    static int match(cds_lfht_node* n, const void* key) {
        return caa_container_of(n, node, ht_node)->key == *static_cast<const key_t*>(key);
    }
    static void free_node(rcu_head* head) { delete caa_container_of(head, node, rcu); }
    bool get(key_t k, std::uint64_t& v) const {
        cds_lfht_iter iter;
        cds_lfht_lookup(ht, hash(k), match, &k, &iter);
        cds_lfht_node* found = cds_lfht_iter_get_node(&iter);
        if (found == nullptr) {
            return false;
        }
        v = caa_container_of(found, node, ht_node)->value;
        return true;
    }
    void put(key_t k, std::uint64_t v) {
        auto* n = new node{k, v, {}, {}};
        cds_lfht_node_init(&n->ht_node);
        cds_lfht_node* old = cds_lfht_add_replace(ht, hash(k), match, &k, &n->ht_node);
        if (old != nullptr) {
            call_rcu(&caa_container_of(old, node, ht_node)->rcu, free_node);
        }
    }
    static void thread_start() { rcu_register_thread(); }
    static void quiescent() { rcu_quiescent_state(); }
    static void thread_end() { rcu_unregister_thread(); }
};
#endif

// ---- timing ----

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Runs `work(thread index)` on `threads` threads started together; returns seconds.
double timed(int threads, const std::function<void(int)>& work) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) {
            }
            work(t);
        });
    }
    while (ready.load() != threads) {
    }
    const auto start = clock_type::now();
    go.store(true, std::memory_order_release);
    for (auto& th : pool) {
        th.join();
    }
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

struct results {
    std::map<std::string, double> value; // "workload|contender|threads" -> Mops/s
    void add(const std::string& workload, const std::string& who, int threads, double mops) {
        value[workload + "|" + who + "|" + std::to_string(threads)] = mops;
        std::printf("%-22s %-30s %d thread%s %9.2f Mops/s\n", workload.c_str(), who.c_str(),
                    threads, threads == 1 ? " " : "s", mops);
        std::fflush(stdout);
    }
    double get(const std::string& workload, const std::string& who, int threads) const {
        auto it = value.find(workload + "|" + who + "|" + std::to_string(threads));
        return it == value.end() ? 0 : it->second;
    }
};

std::atomic<std::uint64_t> sink{0}; // keeps lookups from being optimised away

// Runs `body(thread, rep)`, which does `ops` operations and returns a checksum, on 1 thread
// and then on 2, `reps` times each, and records the median Mops/s of each thread count.
template <class Body>
void on_1_and_2_threads(results& out, const std::string& workload, const std::string& who, int reps,
                        std::uint64_t ops, Body body) {
    for (int threads = 1; threads <= 2; ++threads) {
        std::vector<double> runs;
        for (int r = 0; r < reps; ++r) {
            const double s = timed(
                threads, [&](int t) { sink.fetch_add(body(t, r), std::memory_order_relaxed); });
            runs.push_back(static_cast<double>(ops) * threads / s / 1e6);
        }
        out.add(workload, who, threads, median(runs));
    }
}

template <class Map> void mix_1m(results& out, int reps, double scale) {
    constexpr std::uint64_t keys = 1'000'000;
    const auto ops = static_cast<std::uint64_t>(2'000'000 * scale);
    auto map = std::make_unique<Map>();
    Map::thread_start();
    for (std::uint64_t i = 0; i < keys; ++i) {
        map->put(key_of(i), i);
    }
    on_1_and_2_threads(out, "1M keys 90/10", Map::name, reps, ops, [&](int t, int r) {
        Map::thread_start();
        std::uint64_t seed = std::uint64_t{0x12345678} + static_cast<std::uint64_t>(t) * 977 +
                             static_cast<std::uint64_t>(r) * 131;
        std::uint64_t local = 0;
        for (std::uint64_t i = 0; i < ops; ++i) {
            const std::uint64_t x = next(seed);
            const key_t k = key_of(x % keys);
            if ((x >> 40) % 10 == 0) {
                map->put(k, x);
            } else {
                std::uint64_t v = 0;
                local += map->get(k, v) ? v : 1;
            }
            if ((i & 1023) == 0) {
                Map::quiescent();
            }
        }
        Map::thread_end();
        return local;
    });
    Map::thread_end();
}

template <class Map> void hot_16(results& out, int reps, double scale) {
    const auto ops = static_cast<std::uint64_t>(20'000'000 * scale);
    auto map = std::make_unique<Map>();
    Map::thread_start();
    for (std::uint64_t i = 0; i < 16; ++i) {
        map->put(key_of(i), i);
    }
    on_1_and_2_threads(out, "16 hot keys, reads", Map::name, reps, ops, [&](int t, int r) {
        Map::thread_start();
        std::uint64_t seed = std::uint64_t{0x9876} + static_cast<std::uint64_t>(t) * 31 +
                             static_cast<std::uint64_t>(r);
        std::uint64_t local = 0;
        for (std::uint64_t i = 0; i < ops; ++i) {
            std::uint64_t v = 0;
            local += map->get(key_of(next(seed) & 15), v) ? v : 1;
            if ((i & 1023) == 0) {
                Map::quiescent();
            }
        }
        Map::thread_end();
        return local;
    });
    Map::thread_end();
}

void registry_lookups(results& out, int reps, double scale, std::size_t count) {
    const auto ops = static_cast<std::uint64_t>(10'000'000 * scale);
    auto reg = otpkv::registry::start();
    std::vector<std::string> names;
    for (std::size_t i = 0; i < count; ++i) {
        names.push_back("bucket-" + std::to_string(i));
        reg->create(names.back()).value()->put("k", "v");
    }
    const std::string workload = "registry " + std::to_string(count) + " names";
    for (const bool refcounted : {false, true}) {
        on_1_and_2_threads(
            out, workload, refcounted ? "lookup (shared_ptr copy)" : "with (no refcount)", reps,
            ops, [&](int t, int r) {
                std::uint64_t seed = std::uint64_t{0x5151} + static_cast<std::uint64_t>(t) * 7 +
                                     static_cast<std::uint64_t>(r);
                std::uint64_t local = 0;
                for (std::uint64_t i = 0; i < ops; ++i) {
                    const std::string& name = names[next(seed) % count];
                    if (refcounted) {
                        local += reg->lookup(name) ? 1U : 0U;
                    } else {
                        local +=
                            reg->with(name, [](auto& b) { return b.id().value(); }).value_or(0);
                    }
                }
                return local;
            });
    }
}

// ---- memory ----

std::size_t heap_bytes() {
    const struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

template <class Insert> double bytes_per_entry(Insert insert) {
    constexpr int entries = 1'000'000;
    char key[16];
    char value[16];
    const std::size_t before = heap_bytes();
    for (int i = 0; i < entries; ++i) {
        std::snprintf(key, sizeof key, "k%09d", i);     // 10 bytes
        std::snprintf(value, sizeof value, "v%07d", i); // 8 bytes
        insert(std::string_view(key, 10), std::string_view(value, 8));
    }
    return static_cast<double>(heap_bytes() - before) / entries;
}

void memory(std::map<std::string, double>& out) {
    {
        otpkv::bucket<std::string, std::string> b;
        out["otpkv bucket"] =
            bytes_per_entry([&](std::string_view k, std::string_view v) { b.put(k, v); });
    }
    {
        std::unordered_map<std::string, std::string> m;
        out["std::unordered_map"] = bytes_per_entry(
            [&](std::string_view k, std::string_view v) { m.emplace(std::string(k), v); });
    }
#if defined(OTPKV_BENCH_HAVE_LIBCUCKOO)
    {
        libcuckoo::cuckoohash_map<std::string, std::string> m;
        out["libcuckoo"] = bytes_per_entry([&](std::string_view k, std::string_view v) {
            m.insert(std::string(k), std::string(v));
        });
    }
#endif
#if defined(OTPKV_BENCH_HAVE_TBB)
    {
        tbb::concurrent_hash_map<std::string, std::string> m;
        out["tbb::concurrent_hash_map"] =
            bytes_per_entry([&](std::string_view k, std::string_view v) {
                m.insert({std::string(k), std::string(v)});
            });
    }
#endif
    for (const auto& [who, bytes] : out) {
        if (bytes < 1) { // TBB allocates through its own allocator, which mallinfo2 misses
            std::printf("memory per entry        %-30s not measured (own allocator)\n",
                        who.c_str());
        } else {
            std::printf("memory per entry        %-30s %9.1f bytes\n", who.c_str(), bytes);
        }
    }
}

std::pair<double, double> empty_bucket_bytes() {
    constexpr int count = 10'000;
    std::vector<std::shared_ptr<otpkv::bucket<std::string, std::string>>> alone;
    std::size_t before = heap_bytes();
    for (int i = 0; i < count; ++i) {
        alone.push_back(otpkv::bucket<std::string, std::string>::start());
    }
    const double standalone = static_cast<double>(heap_bytes() - before) / count;
    auto reg = otpkv::registry::start();
    before = heap_bytes();
    for (int i = 0; i < count; ++i) {
        (void)reg->create("bucket-" + std::to_string(i));
    }
    const double registered = static_cast<double>(heap_bytes() - before) / count;
    std::printf("memory per empty bucket standalone %.0f bytes, created by a registry %.0f bytes\n",
                standalone, registered);
    return {standalone, registered};
}

void verdict(const char* what, double measured, double target, bool at_most = false) {
    const bool ok = at_most ? measured <= target : measured >= target;
    std::printf("  %-58s %8.2f (target %s %.2f) %s\n", what, measured,
                at_most ? "<=" : ">=", target, ok ? "MET" : "MISSED");
}

} // namespace

int main(int argc, char** argv) {
    const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
    const double scale = argc > 2 ? std::atof(argv[2]) : 1.0;
    std::printf("bench_bucket: %d repetitions, scale %.2f, membarrier %s\n", reps, scale,
                otpkv::detail::epoch_domain::instance().asymmetric() ? "on" : "off");
    results r;
    mix_1m<otpkv_bucket>(r, reps, scale);
#if defined(OTPKV_BENCH_HAVE_LIBCUCKOO)
    mix_1m<cuckoo_map>(r, reps, scale);
#endif
#if defined(OTPKV_BENCH_HAVE_URCU)
    mix_1m<urcu_map>(r, reps, scale);
#endif
#if defined(OTPKV_BENCH_HAVE_TBB)
    mix_1m<tbb_map>(r, reps, scale);
#endif
    mix_1m<mutex_map>(r, reps, scale);
    mix_1m<shared_mutex_map>(r, reps, scale);

    hot_16<otpkv_bucket>(r, reps, scale);
#if defined(OTPKV_BENCH_HAVE_LIBCUCKOO)
    hot_16<cuckoo_map>(r, reps, scale);
#endif
#if defined(OTPKV_BENCH_HAVE_URCU)
    hot_16<urcu_map>(r, reps, scale);
#endif
#if defined(OTPKV_BENCH_HAVE_TBB)
    hot_16<tbb_map>(r, reps, scale);
#endif
    hot_16<mutex_map>(r, reps, scale);
    hot_16<shared_mutex_map>(r, reps, scale);

    registry_lookups(r, reps, scale, 16);
    registry_lookups(r, reps, scale, 10'000);

    std::map<std::string, double> mem;
    memory(mem);
    const auto [standalone, registered] = empty_bucket_bytes();

    std::printf("\nratios (same run):\n");
    const double ours_mix = r.get("1M keys 90/10", otpkv_bucket::name, 2);
    const double ours_hot = r.get("16 hot keys, reads", otpkv_bucket::name, 2);
    for (const char* peer : {"libcuckoo", "liburcu cds_lfht (QSBR)", "tbb::concurrent_hash_map",
                             "unordered_map + mutex", "unordered_map + shared_mutex"}) {
        const double mix = r.get("1M keys 90/10", peer, 2);
        const double hot = r.get("16 hot keys, reads", peer, 2);
        if (mix > 0) {
            std::printf("  2 threads, 1M keys 90/10: otpkv / %-28s %6.2fx\n", peer, ours_mix / mix);
        }
        if (hot > 0) {
            std::printf("  2 threads, 16 hot keys:   otpkv / %-28s %6.2fx\n", peer, ours_hot / hot);
        }
    }
    std::printf("\ntargets (design.md §3):\n");
    if (const double cuckoo = r.get("1M keys 90/10", "libcuckoo", 2); cuckoo > 0) {
        verdict("bucket / libcuckoo, 1M keys 90/10, 2 threads", ours_mix / cuckoo, 1.3);
    } else {
        std::printf("  bucket / libcuckoo: libcuckoo not installed (libcuckoo-dev)\n");
    }
    if (const double urcu = r.get("16 hot keys, reads", "liburcu cds_lfht (QSBR)", 2); urcu > 0) {
        verdict("bucket / liburcu, 16 hot keys read-only, 2 threads", ours_hot / urcu, 1.3);
    } else {
        std::printf("  bucket / liburcu: liburcu not installed (liburcu-dev)\n");
    }
    for (const char* names : {"registry 16 names", "registry 10000 names"}) {
        const double scaling =
            r.get(names, "with (no refcount)", 2) / r.get(names, "with (no refcount)", 1);
        verdict((std::string(names) + ": 2 threads / 1 thread").c_str(), scaling, 1.8);
    }
    verdict("bytes per entry, 1M entries (10-byte keys, 8-byte values)", mem["otpkv bucket"], 50,
            true);
    verdict("bytes per empty bucket, created by a registry", registered, 1024, true);
    (void)standalone;
    return sink.load() == 42 ? 1 : 0;
}
