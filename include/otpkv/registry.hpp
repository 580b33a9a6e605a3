// SPDX-License-Identifier: MIT
/// @file
/// The registry (design.md §2, "Registry"): the guide's KV.Registry with its ETS cache as
/// one object. It names buckets, starts them as temporary children of its own
/// `dynamic_supervisor`, monitors them, and forgets a bucket as soon as it exits.
///
/// How lookups stay lock-free: names live in an open-addressing table of pointers to
/// immutable entries. One writer at a time (under a mutex) publishes an entry with a
/// release store, removes one by storing a tombstone, and grows the table by copying it and
/// publishing the copy; removed entries and old tables are retired through epochs
/// (detail/epoch.hpp). A reader enters an epoch guard, loads the table and probes it with
/// acquire loads: no lock, no write to shared memory, no reference count. `with` runs the
/// caller's function inside that guard, so the bucket cannot be freed under it.
#pragma once

#include <otpkv/bucket.hpp>
#include <otpkv/detail/epoch.hpp>
#include <otpkv/detail/event_hub.hpp>
#include <otpkv/detail/string_hash.hpp>
#include <otpkv/log.hpp>
#include <otpkv/process.hpp>
#include <otpkv/snapshot.hpp>
#include <otpkv/supervisor.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// A registry's settings.
struct registry_options {
    /// At most this many buckets at once; `create` past it returns `errc::max_children`.
    std::size_t max_buckets = 1'000'000;
    /// The settings of every bucket the registry creates.
    bucket_options buckets{};
    /// Where it reports what happens to it (default: nowhere): `limit_hit` (warning,
    /// `limit=max_buckets`, `max_buckets=`, `count=` the creates refused since the last
    /// such event; at most one a second, the first at once, the rest of a flood folded
    /// into the next one or reported when the registry stops), and, through its bucket
    /// supervisor (named `buckets`), the buckets' starts and exits (debug; a crash: error).
    logger log{};
    /// Where the limit reports' pacing reads the time; empty: `steady_clock`.
    clock_function clock{};
};

/// What happened to a named bucket.
enum class registry_event_kind : std::uint8_t {
    created, ///< `create` started it
    exited   ///< it exited, for any reason, and its name is gone
};

/// A registry event (the 2014 guide's GenEvent notifications).
struct registry_event {
    registry_event_kind kind{}; ///< created or exited
    std::string name{};         ///< the bucket's name
    process_id id{};            ///< the bucket's process id
    exit_reason reason{};       ///< `exited`: why
};

/// Names buckets; a name disappears by itself when its bucket exits. A process: stopping it
/// stops every bucket (through its bucket supervisor), then the registry.
///
/// Race contract (the guide's "Race conditions?", made stronger): the thread that created a
/// bucket finds it at once; once a bucket's `stop` has returned, no lookup on any thread
/// returns it (its name is removed by a monitor that runs inside `stop`).
///
/// Thread safety: every member may be called from any thread. Subscribers run on the thread
/// that created or stopped a bucket, one at a time, and must not call `create` or `stop` of
/// this registry.
///
/// Complexity, in each member's comment: n is the number of registered buckets. "Expected"
/// is for names that hash apart (detail/string_hash.hpp, keyed per process, as the bucket's
/// string keys); hashing and comparing a name cost its length on top.
template <class Bucket = bucket<std::string, std::string>>
class basic_registry : public process, public supervision_tree {
  public:
    /// The type of bucket it holds.
    using bucket_type = Bucket;
    /// A bucket handle.
    using handle = std::shared_ptr<Bucket>;
    /// A subscriber's callback.
    using subscriber = std::function<void(const registry_event&)>;

    /// Starts an empty registry and its bucket supervisor.
    /// Complexity: O(1), plus starting the bucket supervisor's thread.
    [[nodiscard]] static std::shared_ptr<basic_registry> start(registry_options options = {});
    /// Stops the registry (and so every bucket) if it still runs.
    /// Complexity: that of `stop` when it still runs, then freeing the name table, linear in
    /// its slots (see `names`).
    ~basic_registry() override;
    basic_registry(const basic_registry&) = delete;
    basic_registry& operator=(const basic_registry&) = delete;

    /// The bucket named `name`, started if there is none (synchronous and idempotent: two
    /// threads creating the same name get the same bucket). Errors: `max_children` when
    /// `max_buckets` buckets exist, `shutting_down` once the registry stops, `start_failed`.
    /// Complexity: for a registered name, that of `lookup`. For a new one, expected O(1)
    /// amortised, plus a round trip to the bucket supervisor's thread, which starts the
    /// bucket, and the `created` event; one create at a time. The insert that finds the name
    /// table 3/4 full (names and removed slots) rebuilds it, O(n).
    result<handle> create(std::string_view name);

    /// The running bucket named `name`, or null. Lock-free.
    /// Complexity: expected O(1), plus a reference count on the handle returned.
    [[nodiscard]] handle lookup(std::string_view name) const;

    /// Runs `f(bucket&)` on the running bucket named `name` inside a read guard: no lock and
    /// no reference count. Returns `f`'s result as an optional (empty when there is no such
    /// bucket), or, when `f` returns nothing, whether it ran. `f` should be short: it delays
    /// the reclamation of retired memory.
    /// Complexity: expected O(1), plus `f`.
    template <class F> auto with(std::string_view name, F&& f) const;

    /// The names of the running buckets, in no particular order.
    /// Complexity: linear in the name table's slots (between 8/3 and 16/3 of the buckets it
    /// held when it was last rebuilt, at least 16), plus copying each name.
    [[nodiscard]] std::vector<std::string> names() const;

    /// How many buckets are registered.
    /// Complexity: O(1).
    [[nodiscard]] std::size_t size() const noexcept;

    /// The limit given at start.
    /// Complexity: O(1).
    [[nodiscard]] std::size_t max_buckets() const noexcept;

    /// A barrier: returns once the bucket supervisor has handled every exit that happened
    /// before the call, and every event published before it has been delivered (from a
    /// subscriber's own callback, it does not wait for the delivery it is part of).
    /// Complexity: a round trip to the bucket supervisor's thread, after the exits queued
    /// before it, then waiting for the events being delivered.
    void sync();

    /// Subscribes `f` to `created` and `exited` events from now on: each comes exactly once,
    /// and a bucket's `created` comes before its `exited`. A callback that throws is dropped.
    /// Complexity: O(1); every event afterwards is also delivered to `f`.
    [[nodiscard]] subscription subscribe(subscriber f);

    /// The dynamic supervisor whose temporary children the buckets are.
    /// Complexity: O(1).
    [[nodiscard]] dynamic_supervisor& bucket_supervisor() const noexcept;

    /// The buckets' count, limit, keys and bytes (of keys and values: `bucket::bytes`), and
    /// the `largest` buckets by keys, most first (ties by name). Each bucket's numbers are
    /// its own counters' sums, read without a lock; the totals are the sums of the buckets
    /// listed in `buckets`, so they always agree with each other. Needs `Bucket::size` and
    /// `Bucket::bytes`.
    /// Complexity: linear in the name table's slots (see `names`), plus O(log largest) per
    /// bucket and copying the names of the largest.
    [[nodiscard]] registry_snapshot snapshot(std::size_t largest = 10) const;

    /// The bucket supervisor's snapshot (`supervisor_base::snapshot`): in a node's tree,
    /// the registry shows its buckets under it.
    [[nodiscard]] supervisor_snapshot tree_snapshot(const snapshot_options& options) override {
        return core_->supervisor->snapshot(options);
    }

    /// Refuses new buckets, stops every bucket (their names go, `exited` events are sent),
    /// then exits with `reason`. Waits up to `wait` for the buckets to stop.
    /// Complexity: n bucket stops (`bucket::stop` each) on the bucket supervisor's thread,
    /// each with its `exited` event, plus running the registry's monitors.
    exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                     timeout wait = infinity) override;

  private:
    struct core;
    explicit basic_registry(registry_options options);

    std::shared_ptr<core> core_;
};

/// The registry of the protocol: buckets of strings.
using registry = basic_registry<>;

// =======================================================================================
// Implementation
// =======================================================================================

template <class Bucket> struct basic_registry<Bucket>::core {
    struct entry {
        std::uint64_t hash;
        std::string name;
        handle bucket;
        process_id id;
        monitor_handle monitor; // writer side only (under table_mutex)
    };
    struct table {
        std::size_t mask = 0; // capacity - 1 (a power of two)
        std::size_t used = 0; // entries and tombstones (writer only)
        std::atomic<entry*>* slots() noexcept {
            return reinterpret_cast<std::atomic<entry*>*>(this + 1);
        }
        const std::atomic<entry*>* slots() const noexcept {
            return reinterpret_cast<const std::atomic<entry*>*>(this + 1);
        }
        static table* make(std::size_t capacity) {
            void* mem = ::operator new(sizeof(table) + capacity * sizeof(std::atomic<entry*>));
            auto* t = new (mem) table();
            t->mask = capacity - 1;
            for (std::size_t i = 0; i < capacity; ++i) {
                new (t->slots() + i) std::atomic<entry*>(nullptr);
            }
            return t;
        }
        static void destroy(void* p) noexcept {
            static_cast<table*>(p)->~table();
            ::operator delete(p);
        }
    };
    // Marks a removed slot; probes go on past it.
    static entry* tombstone() noexcept { return reinterpret_cast<entry*>(alignof(entry)); }
    static std::uint64_t hash(std::string_view name) noexcept { return detail::hash_bytes(name); }

    registry_options options;
    std::shared_ptr<dynamic_supervisor> supervisor;
    std::mutex create_mutex; // one create at a time (it waits for the supervisor)
    std::mutex table_mutex;  // the table's writer; never held while calling out
    std::atomic<table*> tab{nullptr};
    std::atomic<std::size_t> count{0};
    bool closed = false; // guarded by create_mutex
    process_id self{};   // the registry's pid, for its log events
    // limit_hit pacing, guarded by create_mutex: refusals not reported yet, and when the
    // last report went out.
    std::size_t refused = 0;
    std::optional<std::chrono::steady_clock::time_point> reported_at;

    // Under create_mutex: counts a refused create and reports when a second has passed.
    void note_refusal() {
        if (!options.log.enabled(log_level::warning)) {
            return;
        }
        ++refused;
        const auto now = options.clock ? options.clock() : std::chrono::steady_clock::now();
        if (reported_at && now - *reported_at < std::chrono::seconds(1)) {
            return;
        }
        reported_at = now;
        report_refusals();
    }
    // Under create_mutex: one limit_hit for the refusals counted so far, if any.
    void report_refusals() {
        if (refused == 0 || !options.log.enabled(log_level::warning)) {
            return;
        }
        log_event e;
        e.level = log_level::warning;
        e.what = "limit_hit";
        e.pid = self;
        e.fields = {{"limit", "max_buckets"},
                    {"max_buckets", std::to_string(options.max_buckets)},
                    {"count", std::to_string(std::exchange(refused, 0))}};
        options.log.log(std::move(e));
    }
    std::shared_ptr<detail::event_hub<registry_event>> hub =
        std::make_shared<detail::event_hub<registry_event>>();

    ~core() {
        table* t = tab.load(std::memory_order_relaxed);
        if (t != nullptr) {
            for (std::size_t i = 0; i <= t->mask; ++i) {
                entry* e = t->slots()[i].load(std::memory_order_relaxed);
                if (e != nullptr && e != tombstone()) {
                    delete e;
                }
            }
            table::destroy(t);
        }
    }

    // Where a probe found its entry: the slot, and the entry it held when it was read
    // (a reader must use that value: the slot may change right after).
    struct hit {
        std::atomic<entry*>* slot = nullptr;
        entry* e = nullptr;
    };
    // The first entry on `h`'s probe sequence that satisfies `match`. Readers call it inside
    // a guard, writers under table_mutex.
    template <class Match> hit probe(std::uint64_t h, Match match) const noexcept {
        // acquire: an entry's fields and a table's slots are visible once published.
        table* t = tab.load(std::memory_order_acquire);
        if (t == nullptr) {
            return {};
        }
        for (std::size_t i = h & t->mask;; i = (i + 1) & t->mask) {
            entry* e = t->slots()[i].load(std::memory_order_acquire);
            if (e == nullptr) {
                return {};
            }
            if (e != tombstone() && match(*e)) {
                return {&t->slots()[i], e};
            }
        }
    }
    // Inside a guard: the entry named `name`, or null.
    const entry* find(std::string_view name, std::uint64_t h) const noexcept {
        return probe(h,
                     [&](const entry& e) {
                         return e.hash == h && e.name.size() == name.size() &&
                                detail::bytes_equal(e.name.data(), name.data(), name.size());
                     })
            .e;
    }
    // Inside a guard: the running bucket named `name`, or null. A bucket that has exited
    // but whose monitor has not removed it yet is not returned.
    Bucket* running(std::string_view name) const noexcept {
        const entry* e = find(name, hash(name));
        return e != nullptr && e->bucket->alive() ? e->bucket.get() : nullptr;
    }

    // Under table_mutex: adds `e`, growing the table when 3/4 full (tombstones count).
    void insert(entry* e) {
        table* t = tab.load(std::memory_order_relaxed);
        if (t == nullptr || (t->used + 1) * 4 > (t->mask + 1) * 3) {
            std::size_t capacity = 16;
            while (capacity * 3 < (count.load(std::memory_order_relaxed) + 1) * 8) {
                capacity *= 2;
            }
            table* bigger = table::make(capacity);
            if (t != nullptr) {
                for (std::size_t i = 0; i <= t->mask; ++i) {
                    entry* old = t->slots()[i].load(std::memory_order_relaxed);
                    if (old != nullptr && old != tombstone()) {
                        place(*bigger, old);
                    }
                }
                detail::epoch_domain::instance().retire(
                    t, &table::destroy, (t->mask + 1) * sizeof(std::atomic<entry*>));
            }
            // release: readers that load the new table see its slots.
            tab.store(bigger, std::memory_order_release);
            t = bigger;
        }
        place(*t, e);
        count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    static void place(table& t, entry* e) noexcept {
        for (std::size_t i = e->hash & t.mask;; i = (i + 1) & t.mask) {
            entry* here = t.slots()[i].load(std::memory_order_relaxed);
            if (here == nullptr) {
                ++t.used;
            }
            if (here == nullptr || here == tombstone()) {
                // release: readers that see the pointer see the entry's fields.
                t.slots()[i].store(e, std::memory_order_release);
                return;
            }
        }
    }
    // Under table_mutex: the slot holding exactly `e` (by identity), or null.
    std::atomic<entry*>* slot_of(const entry* e) noexcept {
        return probe(e->hash, [&](const entry& here) { return &here == e; }).slot;
    }

    // The monitor of every bucket: removes its name and reports its exit.
    // `h` finds the probe sequence; the id identifies the entry (a name may have been
    // reused by a newer bucket meanwhile).
    void on_exit(std::uint64_t h, process_id id, const exit_reason& reason) {
        bool drain = false;
        {
            const std::lock_guard lock(table_mutex);
            const hit at = probe(h, [&](const entry& here) { return here.id == id; });
            entry* found = at.e;
            if (found == nullptr) {
                return;
            }
            // release: pairs with the readers' acquire loads.
            at.slot->store(tombstone(), std::memory_order_release);
            count.store(count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
            // A monitor set on a bucket that had exited already is told `noproc`; report the
            // reason the bucket really exited with.
            if (hub->active()) {
                // A monitor set on a bucket that had exited already is told `noproc`;
                // report the reason the bucket really exited with.
                exit_reason why = reason;
                if (why.what() == exit_reason::kind::noproc) {
                    why = found->bucket->exited().value_or(reason);
                }
                drain = hub->push({registry_event_kind::exited, found->name, id, std::move(why)});
            }
            detail::epoch_domain::instance().retire(found);
        }
        if (drain) {
            hub->drain();
        }
        detail::epoch_domain::instance().collect();
    }
};

template <class Bucket>
basic_registry<Bucket>::basic_registry(registry_options options) : core_(std::make_shared<core>()) {
    core_->options = options;
    core_->self = id();
    supervisor_options buckets;
    buckets.log = options.log;
    buckets.name = "buckets";
    core_->supervisor = dynamic_supervisor::start(std::move(buckets));
}

template <class Bucket>
std::shared_ptr<basic_registry<Bucket>> basic_registry<Bucket>::start(registry_options options) {
    return std::shared_ptr<basic_registry>(new basic_registry(options));
}

template <class Bucket> basic_registry<Bucket>::~basic_registry() {
    if (alive()) {
        stop(exit_reason::shutdown(), infinity);
    }
}

template <class Bucket>
auto basic_registry<Bucket>::create(std::string_view name) -> result<handle> {
    if (handle found = lookup(name)) {
        return found;
    }
    core& c = *core_;
    const std::lock_guard creating(c.create_mutex);
    if (handle found = lookup(name)) {
        return found;
    }
    if (c.closed) {
        return error{errc::shutting_down, {}, {}};
    }
    if (c.count.load(std::memory_order_relaxed) >= c.options.max_buckets) {
        c.note_refusal();
        return error{errc::max_children, {}, {}};
    }
    // Made here and handed over: the start function owns what it returns (a call
    // abandoned by a caller that is asked to stop may still run it later).
    handle made = std::make_shared<Bucket>(c.options.buckets);
    child_spec spec;
    spec.start = [made]() -> std::shared_ptr<process> { return made; };
    spec.restart = restart::temporary;
    if (auto started = c.supervisor->start_child(std::move(spec)); !started) {
        return started.error();
    }
    auto* e = new typename core::entry{core::hash(name), std::string(name), made, made->id(), {}};
    bool drain = false;
    {
        const std::lock_guard lock(c.table_mutex);
        c.insert(e);
        // The event (a copy of the name) is built only when someone listens.
        drain = c.hub->active() && c.hub->push({registry_event_kind::created, e->name, e->id, {}});
    }
    if (drain) {
        c.hub->drain();
    }
    // Set after the entry is in: a bucket that exited meanwhile calls it at once (noproc)
    // and the entry goes again.
    monitor_handle watch = made->monitor(
        [weak = std::weak_ptr<core>(core_), h = e->hash, id = e->id](const exit_reason& reason) {
            if (auto strong = weak.lock()) {
                strong->on_exit(h, id, reason);
            }
        });
    {
        const std::lock_guard lock(c.table_mutex);
        if (c.slot_of(e) != nullptr) {
            e->monitor = std::move(watch);
        }
    }
    return made;
}

template <class Bucket> auto basic_registry<Bucket>::lookup(std::string_view name) const -> handle {
    const detail::epoch_guard guard;
    const typename core::entry* e = core_->find(name, core::hash(name));
    if (e != nullptr && e->bucket->alive()) {
        return e->bucket;
    }
    return nullptr;
}

template <class Bucket>
template <class F>
auto basic_registry<Bucket>::with(std::string_view name, F&& f) const {
    using result_type = std::invoke_result_t<F&, Bucket&>;
    const detail::epoch_guard guard;
    Bucket* b = core_->running(name);
    if constexpr (std::is_void_v<result_type>) {
        if (b == nullptr) {
            return false;
        }
        f(*b);
        return true;
    } else {
        if (b == nullptr) {
            return std::optional<result_type>();
        }
        return std::optional<result_type>(f(*b));
    }
}

template <class Bucket> std::vector<std::string> basic_registry<Bucket>::names() const {
    std::vector<std::string> out;
    const detail::epoch_guard guard;
    const typename core::table* t = core_->tab.load(std::memory_order_acquire);
    if (t == nullptr) {
        return out;
    }
    for (std::size_t i = 0; i <= t->mask; ++i) {
        const typename core::entry* e = t->slots()[i].load(std::memory_order_acquire);
        if (e != nullptr && e != core::tombstone() && e->bucket->alive()) {
            out.push_back(e->name);
        }
    }
    return out;
}

template <class Bucket> std::size_t basic_registry<Bucket>::size() const noexcept {
    return core_->count.load(std::memory_order_relaxed);
}

template <class Bucket> std::size_t basic_registry<Bucket>::max_buckets() const noexcept {
    return core_->options.max_buckets;
}

template <class Bucket> void basic_registry<Bucket>::sync() {
    (void)core_->supervisor->count_children();
    core_->hub->wait_idle();
}

template <class Bucket> subscription basic_registry<Bucket>::subscribe(subscriber f) {
    return core_->hub->subscribe(std::move(f));
}

template <class Bucket>
dynamic_supervisor& basic_registry<Bucket>::bucket_supervisor() const noexcept {
    return *core_->supervisor;
}

template <class Bucket>
registry_snapshot basic_registry<Bucket>::snapshot(std::size_t largest) const {
    registry_snapshot out;
    out.max_buckets = core_->options.max_buckets;
    struct ranked {
        std::size_t keys;
        std::size_t bytes;
        const typename core::entry* e;
    };
    // Most keys first, then names in order: `heap` is a min-heap of the best so far under
    // this order, its front the first to go.
    const auto before = [](const ranked& a, const ranked& b) {
        return a.keys != b.keys ? a.keys > b.keys : a.e->name < b.e->name;
    };
    std::vector<ranked> heap;
    heap.reserve(std::min(largest, size()));
    const detail::epoch_guard guard; // entries and their names stay valid inside it
    const typename core::table* t = core_->tab.load(std::memory_order_acquire);
    for (std::size_t i = 0; t != nullptr && i <= t->mask; ++i) {
        const typename core::entry* e = t->slots()[i].load(std::memory_order_acquire);
        if (e == nullptr || e == core::tombstone() || !e->bucket->alive()) {
            continue;
        }
        const ranked r{e->bucket->size(), e->bucket->bytes(), e};
        ++out.buckets;
        out.keys += r.keys;
        out.bytes += r.bytes;
        if (largest == 0) {
            continue;
        }
        if (heap.size() < largest) {
            heap.push_back(r);
            std::push_heap(heap.begin(), heap.end(), before);
        } else if (before(r, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), before);
            heap.back() = r;
            std::push_heap(heap.begin(), heap.end(), before);
        }
    }
    std::sort_heap(heap.begin(), heap.end(), before);
    out.largest.reserve(heap.size());
    for (const ranked& r : heap) {
        out.largest.push_back({r.e->name, r.keys, r.bytes});
    }
    return out;
}

template <class Bucket> exit_reason basic_registry<Bucket>::stop(exit_reason reason, timeout wait) {
    {
        const std::lock_guard creating(core_->create_mutex);
        core_->closed = true;
        core_->report_refusals(); // the end of a flood not reported yet
    }
    core_->supervisor->stop(exit_reason::shutdown(), wait);
    if (!notify_exit(reason)) {
        signal()->wait_done(infinity);
    }
    return *exited();
}

} // namespace v0
} // namespace otpkv
