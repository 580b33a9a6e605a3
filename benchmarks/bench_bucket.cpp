// SPDX-License-Identifier: MIT
// Bucket and registry against the best concurrent maps, all in one run (design.md §3; string
// keys: issue 17). Workloads, each at 1 and 2 threads:
//   1M keys, 90% get / 10% put (2M operations per thread);  16 hot keys, read-only, and
//   16 hot keys, 90% get / 10% put (10M operations per thread each);  each with two key kinds:
//   [u64], scrambled 64-bit indices, and [string], "key0" .. "key999999" (the kv_server's
//   case), formatted with std::to_chars into a buffer on the thread's stack at every
//   operation, the same cost for every contender. Values are 64-bit integers; the 1M-keys
//   mix also runs with string keys and 8-byte string values [string->string].
//   Registry lookups of 16 and 10,000 names (10M per thread);  memory per entry (1M entries,
//   10-byte string keys, 8-byte string values) and per empty bucket.
// Peers are compiled in when their Debian packages are installed (CMake finds them):
// libcuckoo (libcuckoo-dev), liburcu's cds_lfht in the QSBR flavour (liburcu-dev),
// tbb::concurrent_hash_map (libtbb-dev). The baselines, std::unordered_map with a
// std::mutex or a std::shared_mutex, are always there. Each peer uses its own defaults for
// string keys (std::hash<std::string>, TBB's hash_compare); liburcu, which takes a hash
// value, gets std::hash<std::string_view>.
//
// Usage: bench_bucket [repetitions=5] [scale=1.0] [only]   (scale multiplies the operation
// counts; `only`, when given, is a list of names separated by '|': a map workload runs for a
// contender only when "<workload> <contender>" contains one of them, so
// "hot keys, reads [u64]" runs one workload for everyone and "[u64] otpkv|[u64] libcuckoo"
// two contenders on every u64 workload, "registry" the registry's lookups; the memory
// measurements are skipped)
// Prints one line per measurement (median of the repetitions), then the ratios at 2 threads
// (otpkv / each peer, per workload and key kind), then the targets. A run with 3 repetitions
// at scale 1 is meant to take less than 10 minutes on 2 cores.
#include <otpkv/bucket.hpp>
#include <otpkv/registry.hpp>

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
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

// One step of a per-thread generator (the same cost for every contender).
inline std::uint64_t next(std::uint64_t& s) noexcept {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

// ---- key and value kinds ----

// A kind names the type the maps store and, through `maker`, makes what the contenders are
// given for an index: the integer itself, or a view of the maker's buffer, which lives on
// the thread's stack and is valid until the maker's next call.
struct u64_kind {
    using type = std::uint64_t;
    static constexpr const char* name = "u64";
    struct maker {
        // Keys are scrambled indices, so that no contender gets sequential keys.
        static std::uint64_t key(std::uint64_t i) noexcept {
            return (i + 1) * 0x9E3779B97F4A7C15ULL;
        }
        static std::uint64_t value(std::uint64_t x) noexcept { return x; }
    };
    static std::uint64_t checksum(std::uint64_t v) noexcept { return v; }
};

struct string_kind {
    using type = std::string;
    static constexpr const char* name = "string";
    struct maker {
        char buf[24];
        char keys[2][24]; // taken in turn: a key stays valid while the next one is made
        unsigned turn = 0;
        // "key" and the index in decimal: at most 9 bytes for 1M keys, so a std::string made
        // from it fits the small buffer (no allocation).
        std::string_view key(std::uint64_t i) noexcept {
            char* out = keys[turn ^= 1U];
            std::memcpy(out, "key", 3);
            const char* end = std::to_chars(out + 3, out + 24, i).ptr;
            return {out, static_cast<std::size_t>(end - out)};
        }
        // Always 8 hex digits: the top bit of the 32 formatted is set.
        std::string_view value(std::uint64_t x) noexcept {
            std::to_chars(buf, buf + 8, static_cast<std::uint32_t>(x) | 0x8000'0000U, 16);
            return {buf, 8};
        }
    };
    static std::uint64_t checksum(const std::string& v) noexcept {
        return v.size() + (v.empty() ? 0U : static_cast<unsigned char>(v[0]));
    }
};

// What a contender is given for a stored type: a view for a string, anything else by value.
template <class T>
using arg_t = std::conditional_t<std::is_same_v<T, std::string>, std::string_view, T>;

// ---- contenders: get(key, value&) -> bool, put(key, value), and per-thread hooks ----
// Each is a template over the key type K and the value type V (std::uint64_t or
// std::string); keys and values come in as arg_t. A peer whose lookup takes only its own key
// type gets a std::string made from the view: the keys fit its small buffer, so it costs a
// copy of a few bytes and no allocation.

constexpr const char* ours_name = "otpkv bucket";
constexpr const char* cuckoo_name = "libcuckoo";
constexpr const char* urcu_name = "liburcu cds_lfht (QSBR)";

// The hooks of a contender that needs none (only liburcu does): per thread, and `loaded`,
// called after the keys are loaded, on the thread that loaded them.
struct no_hooks {
    static void thread_start() {}
    static void quiescent() {}
    static void thread_end() {}
    void loaded(std::uint64_t /*keys*/) {}
};

// A thread's registration with a contender (`thread_start` .. `thread_end`).
template <class Map> struct registered {
    registered() { Map::thread_start(); }
    ~registered() { Map::thread_end(); }
    registered(const registered&) = delete;
    registered& operator=(const registered&) = delete;
};

// otpkv::bucket takes string keys and values as views; `visit` copies the value out of the
// slot (a string value's bytes straight into `v`, no std::string in between).
template <class K, class V> struct otpkv_bucket : no_hooks {
    static constexpr const char* name = ours_name;
    otpkv::bucket<K, V> b;
    bool get(arg_t<K> k, V& v) const {
        return b.visit(k, [&](const auto& x) { v = x; });
    }
    void put(arg_t<K> k, arg_t<V> v) { b.put(k, v); }
};

// std::unordered_map under one lock; readers take `ReadLock` (shared or exclusive). Its
// std::hash<std::string> is not transparent: the key is made before the lock is taken.
template <class Mutex, template <class> class ReadLock, class K, class V>
struct locked_map : no_hooks {
    mutable Mutex m;
    std::unordered_map<K, V> map;
    bool get(arg_t<K> k, V& v) const {
        const K key(k);
        const ReadLock<Mutex> lock(m);
        auto it = map.find(key);
        if (it == map.end()) {
            return false;
        }
        v = it->second;
        return true;
    }
    void put(arg_t<K> k, arg_t<V> v) {
        K key(k);
        const std::unique_lock lock(m);
        map[std::move(key)] = v;
    }
};
template <class K, class V> struct mutex_map : locked_map<std::mutex, std::unique_lock, K, V> {
    static constexpr const char* name = "unordered_map + mutex";
};
template <class K, class V>
struct shared_mutex_map : locked_map<std::shared_mutex, std::shared_lock, K, V> {
    static constexpr const char* name = "unordered_map + shared_mutex";
};

#if defined(OTPKV_BENCH_HAVE_LIBCUCKOO)
// libcuckoo's find is a template over the key, but hashes it with std::hash<K>, which takes
// no view: it gets a K. insert_or_assign assigns the value as given (a view: no temporary).
template <class K, class V> struct cuckoo_map : no_hooks {
    static constexpr const char* name = cuckoo_name;
    libcuckoo::cuckoohash_map<K, V> map;
    bool get(arg_t<K> k, V& v) const { return map.find(K(k), v); }
    void put(arg_t<K> k, arg_t<V> v) { map.insert_or_assign(K(k), v); }
};
#endif

#if defined(OTPKV_BENCH_HAVE_TBB)
template <class K, class V> struct tbb_map : no_hooks {
    static constexpr const char* name = "tbb::concurrent_hash_map";
    using map_type = tbb::concurrent_hash_map<K, V>;
    map_type map;
    bool get(arg_t<K> k, V& v) const {
        typename map_type::const_accessor a;
        if (!map.find(a, K(k))) {
            return false;
        }
        v = a->second;
        return true;
    }
    void put(arg_t<K> k, arg_t<V> v) {
        typename map_type::accessor a;
        map.insert(a, K(k));
        a->second = v;
    }
};
#endif

#if defined(OTPKV_BENCH_HAVE_URCU)
// cds_lfht, QSBR flavour: lookups take no lock at all (QSBR read-side sections are free);
// each thread announces a quiescent state every 1,024 operations; a put replaces the node
// and frees the old one through call_rcu. A thread not measuring is unregistered: a
// registered thread that never announces a quiescent state would hold back every grace
// period, so call_rcu would free nothing while the others run. The node keeps its key as
// a K (a string compared with the view looked up); string keys are hashed with
// std::hash<std::string_view>.
template <class K, class V> struct urcu_map {
    static constexpr const char* name = urcu_name;
    struct node {
        K key;
        V value;
        cds_lfht_node ht_node;
        rcu_head rcu;
    };
    cds_lfht* ht = cds_lfht_new(1024, 1024, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING, nullptr);

    urcu_map() = default;
    urcu_map(const urcu_map&) = delete;
    urcu_map& operator=(const urcu_map&) = delete;
    // On a registered thread, once no other thread uses the map: unlinks every node, then,
    // offline (a resize or call_rcu may wait for a grace period), destroys the table and
    // waits until call_rcu has freed every node, so that the next measurement starts clean.
    ~urcu_map() {
        cds_lfht_iter iter;
        cds_lfht_first(ht, &iter);
        while (cds_lfht_node* n = cds_lfht_iter_get_node(&iter)) {
            cds_lfht_next(ht, &iter);
            cds_lfht_del(ht, n);
            call_rcu(&caa_container_of(n, node, ht_node)->rcu, free_node);
        }
        rcu_thread_offline();
        cds_lfht_destroy(ht, nullptr);
        rcu_barrier();
        rcu_thread_online();
    }

    static unsigned long hash(arg_t<K> k) noexcept {
        if constexpr (std::is_same_v<K, std::string>) {
            return std::hash<std::string_view>{}(k);
        } else {
            k ^= k >> 32;
            k *= 0x9E3779B97F4A7C15ULL;
            return static_cast<unsigned long>(k ^ (k >> 29));
        }
    }
    static int match(cds_lfht_node* n, const void* key) {
        return caa_container_of(n, node, ht_node)->key == *static_cast<const arg_t<K>*>(key);
    }
    static void free_node(rcu_head* head) { delete caa_container_of(head, node, rcu); }
    bool get(arg_t<K> k, V& v) const {
        cds_lfht_iter iter;
        cds_lfht_lookup(ht, hash(k), match, &k, &iter);
        cds_lfht_node* found = cds_lfht_iter_get_node(&iter);
        if (found == nullptr) {
            return false;
        }
        v = caa_container_of(found, node, ht_node)->value;
        return true;
    }
    void put(arg_t<K> k, arg_t<V> v) {
        auto* n = new node{K(k), V(v), {}, {}};
        cds_lfht_node_init(&n->ht_node);
        cds_lfht_node* old = cds_lfht_add_replace(ht, hash(k), match, &k, &n->ht_node);
        if (old != nullptr) {
            call_rcu(&caa_container_of(old, node, ht_node)->rcu, free_node);
        }
    }
    static void thread_start() { rcu_register_thread(); }
    static void quiescent() { rcu_quiescent_state(); }
    static void thread_end() { rcu_unregister_thread(); }
    // Auto-resize grows the table in the background, and after 1M keys it may still be
    // growing, or have stopped short, when the measurement starts (seen here: lookups 3 times
    // slower, and once a table left near its first size, 100 times slower). Growing it now,
    // offline (cds_lfht_resize must not run in a read-side section), to the size it settles
    // at (a bucket per key), measures every run on the same table.
    void loaded(std::uint64_t keys) {
        rcu_thread_offline();
        cds_lfht_resize(ht, static_cast<unsigned long>(std::bit_ceil(keys)));
        rcu_thread_online();
    }
};
#endif

// Calls `f(std::type_identity<Map>{})` for each contender compiled in, with keys K and
// values V.
template <class K, class V, class F> void for_each_contender(F&& f) {
    f(std::type_identity<otpkv_bucket<K, V>>{});
#if defined(OTPKV_BENCH_HAVE_LIBCUCKOO)
    f(std::type_identity<cuckoo_map<K, V>>{});
#endif
#if defined(OTPKV_BENCH_HAVE_URCU)
    f(std::type_identity<urcu_map<K, V>>{});
#endif
#if defined(OTPKV_BENCH_HAVE_TBB)
    f(std::type_identity<tbb_map<K, V>>{});
#endif
    f(std::type_identity<mutex_map<K, V>>{});
    f(std::type_identity<shared_mutex_map<K, V>>{});
}

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
    std::vector<std::string> workloads;  // in the order they ran
    std::vector<std::string> contenders; // in the order they first ran
    void add(const std::string& workload, const std::string& who, int threads, double mops) {
        value[workload + "|" + who + "|" + std::to_string(threads)] = mops;
        const auto remember = [](std::vector<std::string>& names, const std::string& name) {
            if (std::find(names.begin(), names.end(), name) == names.end()) {
                names.push_back(name);
            }
        };
        remember(workloads, workload);
        remember(contenders, who);
        std::printf("%-30s %-30s %d thread%s %9.2f Mops/s\n", workload.c_str(), who.c_str(),
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

// ---- map workloads ----

// A map workload: `keys` keys loaded first, then `ops` operations per thread (at scale 1) on
// keys drawn by the thread's generator, which also decides, when `puts`, that one operation
// in ten is a put (of a value made from the same draw) instead of a get.
struct mix_1m {
    static constexpr const char* name = "1M keys 90/10";
    static constexpr std::uint64_t keys = 1'000'000;
    static constexpr bool puts = true;
    static constexpr double ops = 2'000'000;
    static constexpr std::uint64_t seed = 0x12345678;
};
struct hot_reads {
    static constexpr const char* name = "16 hot keys, reads";
    static constexpr std::uint64_t keys = 16;
    static constexpr bool puts = false;
    static constexpr double ops = 10'000'000;
    static constexpr std::uint64_t seed = 0x9876;
};
struct hot_mix {
    static constexpr const char* name = "16 hot keys 90/10";
    static constexpr std::uint64_t keys = 16;
    static constexpr bool puts = true;
    static constexpr double ops = 10'000'000;
    static constexpr std::uint64_t seed = 0x4321;
};

// "1M keys 90/10 [string]"; the value kind is named when it is not u64.
template <class Load, class Keys, class Values> std::string workload_name() {
    std::string name = std::string(Load::name) + " [" + Keys::name;
    if constexpr (!std::is_same_v<Values, u64_kind>) {
        name += std::string("->") + Values::name;
    }
    return name + "]";
}

// Set from the command line (see Usage): when not empty, the names of what runs.
std::vector<std::string> only;

bool selected(const std::string& workload, const char* contender) {
    const std::string both = workload + " " + contender;
    return only.empty() || std::any_of(only.begin(), only.end(), [&](const std::string& name) {
               return both.find(name) != std::string::npos;
           });
}

template <class Load, class Map, class Keys, class Values>
void run(results& out, int reps, double scale) {
    if (!selected(workload_name<Load, Keys, Values>(), Map::name)) {
        return;
    }
    const auto ops = static_cast<std::uint64_t>(Load::ops * scale);
    auto map = std::make_unique<Map>();
    {
        const registered<Map> online;
        typename Keys::maker keys;
        typename Values::maker values;
        for (std::uint64_t i = 0; i < Load::keys; ++i) {
            map->put(keys.key(i), values.value(i));
        }
        map->loaded(Load::keys);
    }
    const std::string workload = workload_name<Load, Keys, Values>();
    on_1_and_2_threads(out, workload, Map::name, reps, ops, [&](int t, int r) {
        const registered<Map> online;
        typename Keys::maker keys;
        typename Values::maker values;
        std::uint64_t seed =
            Load::seed + static_cast<std::uint64_t>(t) * 977 + static_cast<std::uint64_t>(r) * 131;
        std::uint64_t local = 0;
        // Each key is made one operation ahead, as a server's keys arrive in a buffer written
        // long before: a lookup that reads the bytes just written one at a time would wait
        // for them (a store-forwarding stall) and measure the key's making, not the map.
        std::uint64_t x_next = next(seed);
        auto k_next = keys.key(x_next % Load::keys);
        for (std::uint64_t i = 0; i < ops; ++i) {
            const std::uint64_t x = x_next;
            const auto k = k_next;
            x_next = next(seed);
            k_next = keys.key(x_next % Load::keys);
            if (Load::puts && (x >> 40) % 10 == 0) {
                map->put(k, values.value(x));
            } else {
                typename Values::type v{};
                local += map->get(k, v) ? Values::checksum(v) : 1;
            }
            if ((i & 1023) == 0) {
                Map::quiescent();
            }
        }
        return local;
    });
    const registered<Map> online;
    map.reset();
}

// The workload `Load` with keys of kind `Keys` and values of kind `Values`, for every
// contender.
template <class Load, class Keys, class Values = u64_kind>
void run_all(results& out, int reps, double scale) {
    for_each_contender<typename Keys::type, typename Values::type>(
        [&](auto map) { run<Load, typename decltype(map)::type, Keys, Values>(out, reps, scale); });
}

void registry_lookups(results& out, int reps, double scale, std::size_t count) {
    constexpr const char* with_name = "with (no refcount)";
    constexpr const char* lookup_name = "lookup (shared_ptr copy)";
    const std::string workload = "registry " + std::to_string(count) + " names";
    if (!selected(workload, with_name) && !selected(workload, lookup_name)) {
        return;
    }
    const auto ops = static_cast<std::uint64_t>(10'000'000 * scale);
    auto reg = otpkv::registry::start();
    std::vector<std::string> names;
    for (std::size_t i = 0; i < count; ++i) {
        names.push_back("bucket-" + std::to_string(i));
        reg->create(names.back()).value()->put("k", "v");
    }
    for (const bool refcounted : {false, true}) {
        if (!selected(workload, refcounted ? lookup_name : with_name)) {
            continue;
        }
        on_1_and_2_threads(
            out, workload, refcounted ? lookup_name : with_name, reps, ops, [&](int t, int r) {
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

// ---- report ----

void verdict(const char* what, double measured, double target, bool at_most = false) {
    const bool ok = at_most ? measured <= target : measured >= target;
    std::printf("  %-62s %8.2f (target %s %.2f) %s\n", what, measured,
                at_most ? "<=" : ">=", target, ok ? "MET" : "MISSED");
}

// otpkv / each peer at 2 threads, for every map workload (those otpkv ran in).
void ratios(const results& r) {
    std::printf("\nratios (same run), 2 threads, otpkv / peer:\n");
    for (const std::string& workload : r.workloads) {
        const double ours = r.get(workload, ours_name, 2);
        if (ours <= 0) {
            continue;
        }
        for (const std::string& who : r.contenders) {
            if (const double theirs = r.get(workload, who, 2); theirs > 0 && who != ours_name) {
                std::printf("  %-30s otpkv / %-30s %6.2fx\n", workload.c_str(), who.c_str(),
                            ours / theirs);
            }
        }
    }
}

// The verdict on otpkv / `peer` at 2 threads in `workload` (`short_name` in the label).
void peer_target(const results& r, const std::string& workload, const char* peer,
                 const char* short_name, const char* package, double target) {
    const std::string what =
        "bucket / " + std::string(short_name) + ", " + workload + ", 2 threads";
    if (const double theirs = r.get(workload, peer, 2); theirs > 0) {
        verdict(what.c_str(), r.get(workload, ours_name, 2) / theirs, target);
    } else {
        std::printf("  %s: %s not installed (%s)\n", what.c_str(), short_name, package);
    }
}

} // namespace

int main(int argc, char** argv) {
    const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
    const double scale = argc > 2 ? std::atof(argv[2]) : 1.0;
    const std::string wanted = argc > 3 ? argv[3] : "";
    for (std::size_t at = 0; at < wanted.size();) {
        const std::size_t comma = std::min(wanted.find('|', at), wanted.size());
        only.push_back(wanted.substr(at, comma - at));
        at = comma + 1;
    }
    std::printf("bench_bucket: %d repetitions, scale %.2f, membarrier %s%s%s\n", reps, scale,
                otpkv::detail::epoch_domain::instance().asymmetric() ? "on" : "off",
                wanted.empty() ? "" : ", only ", wanted.c_str());
    results r;
    run_all<mix_1m, u64_kind>(r, reps, scale);
    run_all<mix_1m, string_kind>(r, reps, scale);
    run_all<mix_1m, string_kind, string_kind>(r, reps, scale);
    run_all<hot_reads, u64_kind>(r, reps, scale);
    run_all<hot_reads, string_kind>(r, reps, scale);
    run_all<hot_mix, u64_kind>(r, reps, scale);
    run_all<hot_mix, string_kind>(r, reps, scale);
    registry_lookups(r, reps, scale, 16);
    registry_lookups(r, reps, scale, 10'000);
    if (!only.empty()) {
        ratios(r);
        return sink.load() == 42 ? 1 : 0;
    }

    std::map<std::string, double> mem;
    memory(mem);
    const auto [standalone, registered] = empty_bucket_bytes();

    ratios(r);
    std::printf("\ntargets (design.md §3, issue 17):\n");
    for (const char* kind : {u64_kind::name, string_kind::name}) {
        const auto in = [kind](const char* load) { return std::string(load) + " [" + kind + "]"; };
        peer_target(r, in(mix_1m::name), cuckoo_name, "libcuckoo", "libcuckoo-dev", 1.3);
        peer_target(r, in(hot_reads::name), urcu_name, "liburcu", "liburcu-dev", 1.3);
        peer_target(r, in(hot_mix::name), urcu_name, "liburcu", "liburcu-dev", 1.0);
    }
    for (const char* names : {"registry 16 names", "registry 10000 names"}) {
        const double scaling =
            r.get(names, "with (no refcount)", 2) / r.get(names, "with (no refcount)", 1);
        verdict((std::string(names) + ": 2 threads / 1 thread").c_str(), scaling, 1.8);
    }
    verdict("bytes per entry, 1M entries (10-byte keys, 8-byte values)", mem["otpkv bucket"], 34,
            true);
    verdict("bytes per empty bucket, created by a registry", registered, 1024, true);
    (void)standalone;
    return sink.load() == 42 ? 1 : 0;
}
