// SPDX-License-Identifier: MIT
/// @file
/// `bucket<K, V, Hash, Eq>`: the guide's KV.Bucket (an Agent holding a map) as a concurrent
/// hash map with a process lifecycle (design.md §2, "Bucket").
///
/// How it is built:
/// - Keys are spread over shards by hash bits; each shard has a small lock for its writers,
///   its own size counter and its own open-addressing table of 8-slot groups (one control
///   byte per slot, as in Swiss tables, probed group by group).
/// - Reads never lock and never write shared memory. Each group carries a version
///   (a seqlock): a writer makes it odd while it changes the group; a reader copies what it
///   needs, then checks that the version is even and unchanged, and retries otherwise.
/// - Small entries live in the slot itself (a key and a value of `std::string`, integer or
///   enum key types, trivially copyable values, up to 22 bytes together). Larger ones live in
///   an immutable node the slot points to; replacing or erasing one retires the node.
///   Slots are three words; a bucket whose keys (integers, enums) and values both have at
///   most 8 bytes uses two-word slots instead (key word, value word), a third smaller.
/// - A lookup turns its key once into a `key_probe` (the words an inline slot of that key
///   holds, and a mask of the key's bytes) and compares each candidate slot's words with it
///   in registers, inside the seqlock read; nothing is copied through memory first.
/// - `std::string` keys with the default hash are hashed by detail/string_hash.hpp (inline,
///   keyed per process), not by `std::hash`, and compared without calling `memcmp`.
/// - Old tables (after growth or `clear`) and retired nodes are freed through epochs
///   (detail/epoch.hpp): a reader inside its guard can still read them safely.
#pragma once

#include <otpkv/detail/epoch.hpp>
#include <otpkv/detail/event_hub.hpp>
#include <otpkv/detail/string_hash.hpp>
#include <otpkv/process.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// A bucket's settings.
struct bucket_options {
    /// Writer shards: rounded up to a power of two, from 1 to 256. More shards let more
    /// writers run at once; each costs one cache line.
    std::size_t shards = 8;
};

/// What a write did, as subscribers see it.
enum class bucket_event_kind : std::uint8_t {
    put,  ///< a value was stored (PUT, `put`, `update`, `get_and_update`)
    erase ///< a key was deleted (DELETE, `erase`, or an update that removed it)
};

namespace detail {
template <class K, class V, class Hash, class Eq> struct bucket_traits;
class shard_lock;
/// An entry too large for its slot: immutable once published, retired when replaced.
template <class K, class V> struct bucket_node {
    K key;
    V value;
};
/// A slot: its group and its index in the group.
struct slot_position {
    std::size_t group;
    std::size_t slot;
};
} // namespace detail

/// A concurrent map from `K` to `V` that is also a process (the guide's KV.Bucket).
///
/// Reads (`get`, `contains`, `for_each`, `size`) never block and never write shared
/// memory; writes lock one shard. Keys of `std::string` with the default hash and equality
/// are looked up by `std::string_view` (no allocation); values of `std::string` are passed
/// as `std::string_view`.
///
/// After `stop`: the data is released at once; reads find nothing (`get` gives no value,
/// `size` 0, `for_each` visits nothing); writes change nothing and say so (`put`, `update`
/// return false, `erase` and `get_and_update` no value, without calling the function);
/// `subscribe` returns an inactive subscription. Handles stay valid: the object lives as
/// long as someone holds it.
///
/// Thread safety: every member may be called from any thread at any time. The functions
/// given to `update` and `get_and_update` run under the key's shard lock and must not call
/// this bucket. Subscribers run on the thread of some writer, after it released its lock;
/// one subscriber's callbacks never run at the same time.
///
/// Complexity, in each member's comment: n is the number of entries, S the number of shards
/// (at most 256), c the number of slots in the shards' tables (about 12n/7 right after a
/// table is rebuilt; a table never shrinks, but `clear` drops it). "Expected" assumes that
/// `Hash` spreads the keys (its result is mixed again, so integers hashed to themselves
/// do; `std::string` keys with the default `Hash` use the library's keyed hash instead); a lookup
/// then probes a few 8-slot groups. Hashing and comparing a key, and copying a key or a value, cost
/// their length on top. A lock-free read that meets a writer in the same group retries after it.
template <class K, class V, class Hash = std::hash<K>, class Eq = std::equal_to<K>>
class bucket : public process {
    using traits = detail::bucket_traits<K, V, Hash, Eq>;

  public:
    using key_type = K;
    using mapped_type = V;
    /// How keys are passed: `std::string_view` for string keys with the default hash and
    /// equality, `const K&` otherwise.
    using key_arg = typename traits::key_arg;
    /// How values are passed: `std::string_view` for string values, `const V&` otherwise.
    using value_arg = typename traits::value_arg;

    /// One write, as subscribers see it: the key and, for `put`, the new value.
    struct event {
        bucket_event_kind kind; ///< put or erase
        K key;                  ///< the key written
        std::optional<V> value; ///< the value stored; empty for erase
    };
    /// A subscriber's callback.
    using subscriber = std::function<void(const event&)>;

    /// An empty, running bucket. Buckets are usually held by `std::shared_ptr` (see `start`).
    /// Complexity: O(1); no memory is taken for the shards before the first write.
    explicit bucket(bucket_options options = {});
    /// A running bucket, shared (what a supervisor's start function returns).
    /// Complexity: O(1), one allocation.
    [[nodiscard]] static std::shared_ptr<bucket> start(bucket_options options = {}) {
        return std::make_shared<bucket>(options);
    }
    /// A bucket still running when destroyed exits with `shutdown` (its monitors run).
    /// Complexity: O(c + S) to free the tables and the entries, plus running the monitors.
    ~bucket() override;

    /// The value of `key`, copied. Lock-free.
    /// Complexity: expected O(1), plus copying the value.
    [[nodiscard]] std::optional<V> get(key_arg key) const;
    /// Calls `f(value)` with the value of `key` and returns true, or returns false when
    /// there is none. Lock-free and copy-free: for string values `f` gets a
    /// `std::string_view` valid only during the call, otherwise a `const V&`. `f` runs
    /// inside a read guard and should be short.
    /// Complexity: expected O(1), plus `f`.
    template <class F> bool visit(key_arg key, F&& f) const;
    /// True when `key` has a value. Lock-free.
    /// Complexity: expected O(1).
    [[nodiscard]] bool contains(key_arg key) const;
    /// Stores `value` under `key`. False after `stop` (nothing stored).
    /// Complexity: expected O(1) amortised, plus copying the key and the value (and, when
    /// subscribed, an event). The insert that finds its shard's table 7/8 full (entries and
    /// deleted slots) rebuilds it under the shard's lock, about 7/12 full for its entries,
    /// in time linear in the shard's slots.
    bool put(key_arg key, value_arg value);
    /// Deletes `key`; returns the value it had (the guide's `delete`). Nothing after `stop`.
    /// Complexity: expected O(1), plus copying the old value.
    std::optional<V> erase(key_arg key);
    /// Atomic read-modify-write of one key (Agent.get_and_update): `f(current)`, given the
    /// current value or nothing, returns a pair {what to return, new value or nothing to
    /// delete the key}. Returns the first part; nothing after `stop`, when `f` is not
    /// called. An exception from `f` leaves the key unchanged and propagates.
    /// Complexity: that of `put`, plus `f`, which runs under the shard's lock.
    template <class F> auto get_and_update(key_arg key, F&& f);
    /// Atomic update of one key: `f(current)` returns the new value, or nothing to delete
    /// the key. False after `stop`, when `f` is not called.
    /// Complexity: that of `put`, plus `f`, which runs under the shard's lock.
    template <class F> bool update(key_arg key, F&& f);
    /// The number of keys: the sum of the shards' counters, each exact; a sum taken while
    /// writers run may mix moments.
    /// Complexity: O(S).
    [[nodiscard]] std::size_t size() const noexcept;
    /// The bytes of the keys and values held: a `std::string`'s length, `sizeof` of any
    /// other type (not the table's overhead). Each shard counts its own under the lock its
    /// writers hold anyway; reads do not touch the counters. A sum taken while writers run
    /// may mix moments, like `size`.
    /// Complexity: O(S).
    [[nodiscard]] std::size_t bytes() const noexcept;
    /// Calls `f(key, value)` for every entry. Not a snapshot (like an ETS traversal): an
    /// entry written meanwhile may or may not be seen; one that stays is seen exactly once
    /// unless the table grows meanwhile. `f` must not hold up other threads for long: it
    /// runs inside a read guard, delaying the reclamation of retired memory.
    /// Complexity: O(c + S), every slot, plus copying each entry once and `f` for each.
    template <class F> void for_each(F&& f) const;
    /// Removes every entry. Subscribers are not told (it is not a DELETE).
    /// Complexity: O(S), taking each shard's lock once; the tables are freed later through
    /// epochs, in O(c), by whichever thread reclaims them.
    void clear();

    /// Subscribes `f` to the writes that take effect from now on: for each key, events come
    /// in the order its writes took effect. A callback that throws is dropped; the bucket and
    /// the other subscribers go on. An erase of an absent key is reported too (protocol.md:
    /// SUBSCRIBE reports every DELETE).
    /// Complexity: O(1); every write afterwards also delivers its event to each subscriber.
    [[nodiscard]] subscription subscribe(subscriber f);

    /// Exits with `reason`: releases the data and runs the monitors, on this thread, before
    /// it returns (also when another thread stopped it first). `wait` is not used: a bucket
    /// has no thread and stops at once. Returns the reason it exited with.
    /// Complexity: that of `clear`, plus running the monitors.
    exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                     timeout wait = default_shutdown) override;

  private:
    struct shard;
    struct table;

    // The shards exist from the first write on: an empty bucket costs no shard memory. They
    // are made in one block: the shards (a writer's lock and counters, a line each), then
    // their table pointers, which lookups read, together on lines that only a table's
    // replacement writes, so that a write does not take them away from other cores' readers.
    static shard* make_shards(std::size_t n);
    static void free_shards(shard* all, std::size_t n) noexcept;
    // The table pointer of the shard of `h`, if the shards exist (touches no shard's line).
    const std::atomic<table*>* find_table(std::uint64_t h) const noexcept {
        // acquire: pairs with the publishing exchange in `shard_for`.
        const shard* all = shards_.load(std::memory_order_acquire);
        if (all == nullptr) {
            return nullptr;
        }
        return std::launder(reinterpret_cast<const std::atomic<table*>*>(all + shard_mask_ + 1)) +
               (h & shard_mask_);
    }
    shard& shard_for(std::uint64_t h);
    detail::event_hub<event>* hub() const noexcept { return hub_.load(std::memory_order_acquire); }
    // Queues an event when someone listens (under the shard lock); true: drain afterwards.
    bool publish(bucket_event_kind kind, key_arg key, const std::remove_cvref_t<value_arg>* value);
    // Runs `on_hit(slot image)` for the key's slot, if any, inside a read guard.
    template <class OnHit> bool read(key_arg key, OnHit&& on_hit) const;
    // Under the shard lock: the table an insert goes into, grown or cleaned when an insert
    // would pass 7/8 full (the old table is retired).
    table* room_for_one(shard& s, table* t, bool& retired);
    // Under the shard lock: stores `key` -> `value` at `at`, or in a free slot (`t` must
    // have room); returns the node the slot held, which the caller retires.
    detail::bucket_node<K, V>* store(shard& s, table& t, const detail::slot_position* at,
                                     std::uint64_t h, key_arg key, value_arg value);
    // The one write path: under the key's shard lock, unless the bucket has stopped, runs
    // `body(shard&, table* t, std::optional<position> at, hash, bool& retired)`, where `at`
    // is the key's slot if present; `body` returns whether an event must be delivered.
    // Afterwards, outside the lock, delivers events and frees what can be freed. Returns
    // false when the bucket had stopped.
    template <class Body> bool locked_write(key_arg key, Body&& body);
    // Under the shard lock: empties the slot at `p` and retires its node, if any.
    void remove_at(shard& s, table& t, detail::slot_position p, bool& retired);
    static void retire_node(detail::bucket_node<K, V>* n, bool& retired);
    // Under the shard lock: the value in the slot at `p`.
    static V get_at(const table& t, detail::slot_position p);

    std::atomic<shard*> shards_{nullptr}; // shard_mask_ + 1 of them, made on first write
    std::uint64_t shard_mask_;
    std::atomic<bool> stopped_{false};
    std::atomic<detail::event_hub<event>*> hub_{nullptr};
    std::shared_ptr<detail::event_hub<event>> hub_owner_; // set once, with hub_
    std::once_flag hub_once_;
};

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

/// A shard's writer lock: a futex-style mutex in one word (uncontended: one CAS each way).
class shard_lock {
  public:
    void lock() noexcept {
        std::uint32_t expected = 0;
        if (state_.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
            return;
        }
        for (int spin = 0; spin < 64; ++spin) {
            pause();
            expected = 0;
            if (state_.load(std::memory_order_relaxed) == 0 &&
                state_.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
                return;
            }
        }
        // 2 means "locked, maybe with waiters": the unlocker then wakes one.
        while (state_.exchange(2, std::memory_order_acquire) != 0) {
            state_.wait(2, std::memory_order_relaxed);
        }
    }
    void unlock() noexcept {
        if (state_.exchange(0, std::memory_order_release) == 2) {
            state_.notify_one();
        }
    }
    static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#else
        std::this_thread::yield();
#endif
    }

  private:
    std::atomic<std::uint32_t> state_{0};
};

/// Spreads a user hash over all 64 bits (std::hash of integers is the identity).
constexpr std::uint64_t mix_hash(std::uint64_t h) noexcept {
    h ^= h >> 32;
    h *= 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

/// Maps a hash to [0, n) with its high bits (Lemire's multiply-shift).
inline std::size_t reduce(std::uint64_t h, std::size_t n) noexcept {
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 wide;
    return static_cast<std::size_t>((static_cast<wide>(h) * n) >> 64);
#else
    return static_cast<std::size_t>(((h >> 32) * static_cast<std::uint64_t>(n)) >> 32);
#endif
}

/// The bytes [at, at + 8) of the `n` bytes at `p`, as a little-endian word, zero past
/// byte n; never reads outside the n bytes (n may be below 8).
OTPKV_DETAIL_HOT_INLINE std::uint64_t byte_window(const unsigned char* p, std::size_t n,
                                                  std::size_t at) noexcept {
    if (at >= n) {
        return 0;
    }
    if (at + 8 <= n) {
        return load_word(p + at);
    }
    if (n >= 8) {
        // The last 8 bytes, shifted down past the ones before `at`.
        return load_word(p + n - 8) >> (8 * (at + 8 - n));
    }
    std::uint64_t all = 0; // the n < 8 bytes, assembled from loads inside them
    if (n >= 4) {
        all = load_half(p) | (load_half(p + n - 4) << (8 * (n - 4)));
    } else {
        for (std::size_t i = 0; i < n; ++i) {
            all |= std::uint64_t{p[i]} << (8 * i);
        }
    }
    return all >> (8 * at);
}

/// A word whose `n` low bytes (n <= 8) are 0xFF.
constexpr std::uint64_t low_bytes(std::size_t n) noexcept {
    return n >= 8 ? ~std::uint64_t{0} : (std::uint64_t{1} << (8 * n)) - 1;
}

/// Slot layout (three words): byte 0 is the key's length (or `node_marker`), byte 1 the
/// value's, then the key's bytes from byte 2 on; the value's bytes end the slot (so an
/// 8-byte value is word 2, whole). A node slot holds the node pointer in word 1. (The
/// two-word layout of small fixed-size keys and values: `bucket_traits::pair_slots`.)
inline constexpr std::size_t slot_words = 3;
inline constexpr std::size_t slot_bytes = slot_words * 8;
inline constexpr std::size_t inline_capacity = slot_bytes - 2;
inline constexpr unsigned char node_marker = 0xFF;
inline constexpr std::size_t group_slots = 8;
inline constexpr std::uint64_t ctrl_empty = 0x80;
inline constexpr std::uint64_t ctrl_deleted = 0xFE;
inline constexpr std::uint64_t lsbs = 0x0101010101010101ULL;
inline constexpr std::uint64_t msbs = 0x8080808080808080ULL;

/// A key as the words of an inline slot holding it read: a slot holds the key when
/// `(word[w] ^ probe.word[w]) & probe.mask[w]` is 0 for each word w (`probe_matches`). The
/// mask covers the length byte and the key's bytes, not the value's. A key that cannot be
/// inline gets a length byte no slot has (neither a length nor `node_marker`).
template <std::size_t Words = slot_words> struct key_probe {
    std::uint64_t word[Words];
    std::uint64_t mask[Words];
};

/// The probe of the `n` bytes of a key at `p`.
OTPKV_DETAIL_HOT_INLINE key_probe<> probe_of(const unsigned char* p, std::size_t n) noexcept {
    key_probe<> probe{{0xFE, 0, 0}, {0xFF, 0, 0}};
    if (n > inline_capacity) {
        return probe;
    }
    if constexpr (std::endian::native == std::endian::little) {
        // Byte j of the slot is byte j % 8 of word j / 8: the key's bytes 0-5 go to word 0
        // after the two length bytes, 6-13 to word 1, 14-21 to word 2.
        probe.word[0] = n | (byte_window(p, n, 0) << 16);
        probe.word[1] = byte_window(p, n, 6);
        probe.word[2] = byte_window(p, n, 14);
        probe.mask[0] = 0xFF | (low_bytes(std::min<std::size_t>(n, 6)) << 16);
        probe.mask[1] = n > 6 ? low_bytes(n - 6) : 0;
        probe.mask[2] = n > 14 ? low_bytes(n - 14) : 0;
    } else {
        unsigned char key[slot_bytes] = {};
        unsigned char mask[slot_bytes] = {};
        key[0] = static_cast<unsigned char>(n);
        mask[0] = 0xFF;
        copy_short(key + 2, p, n);
        std::memset(mask + 2, 0xFF, n);
        std::memcpy(probe.word, key, sizeof key);
        std::memcpy(probe.mask, mask, sizeof mask);
    }
    return probe;
}

/// True when the slot whose words are `w` holds the key of `probe` inline.
template <std::size_t Words>
inline bool probe_matches(const std::uint64_t (&w)[Words], const key_probe<Words>& probe) noexcept {
    std::uint64_t differ = 0;
    for (std::size_t i = 0; i < Words; ++i) {
        differ |= (w[i] ^ probe.word[i]) & probe.mask[i];
    }
    return differ == 0;
}

/// How a type is stored inline: as its bytes (`fixed`) or as a string's bytes.
template <class T> struct codec { static constexpr bool inlinable = false; };
template <class T>
requires std::is_trivially_copyable_v<T>
struct codec<T> {
    static constexpr bool inlinable = sizeof(T) <= inline_capacity;
    static std::size_t size(const T&) noexcept { return sizeof(T); }
    static void write(const T& v, unsigned char* out) noexcept { std::memcpy(out, &v, sizeof(T)); }
    static T read(const unsigned char* in, std::size_t) noexcept {
        T v;
        std::memcpy(&v, in, sizeof(T));
        return v;
    }
};
template <> struct codec<std::string> {
    static constexpr bool inlinable = true;
    static std::size_t size(std::string_view v) noexcept { return v.size(); }
    // Only strings that fit a slot are written (`fits`).
    static void write(std::string_view v, unsigned char* out) noexcept {
        copy_short(out, v.data(), v.size());
    }
    static std::string read(const unsigned char* in, std::size_t n) {
        return {reinterpret_cast<const char*>(in), n};
    }
};

template <class K, class V, class Hash, class Eq> struct bucket_traits {
    static constexpr bool string_key =
        std::is_same_v<K, std::string> && std::is_same_v<Hash, std::hash<std::string>> &&
        (std::is_same_v<Eq, std::equal_to<std::string>> || std::is_same_v<Eq, std::equal_to<>>);
    // Inline keys are compared by their bytes, which is only right when equal bytes and
    // equal keys are the same thing: strings, integers and enums with the default equality.
    static constexpr bool key_inlinable =
        string_key ||
        ((std::is_integral_v<K> || std::is_enum_v<K>)&&(std::is_same_v<Eq, std::equal_to<K>> ||
                                                        std::is_same_v<Eq, std::equal_to<>>));
    static constexpr bool value_inlinable = codec<V>::inlinable;
    // The two-word layout: a key of at most 8 bytes compared by its bytes, and a value of
    // at most 8 bytes, are word 0 and word 1 of the slot, with no length bytes and never a
    // node (so 16 bytes a slot instead of 24: a third less memory for the table to miss in).
    static constexpr bool pair_slots = key_inlinable && !string_key && sizeof(K) <= 8 &&
                                       std::is_trivially_copyable_v<V> && sizeof(V) <= 8;
    static constexpr std::size_t slot_words = pair_slots ? 2 : detail::slot_words;

    using key_arg = std::conditional_t<string_key, std::string_view, const K&>;
    using value_arg =
        std::conditional_t<std::is_same_v<V, std::string>, std::string_view, const V&>;

    OTPKV_DETAIL_HOT_INLINE static std::uint64_t hash(key_arg k) {
        if constexpr (string_key) {
            // Equal strings hash equally whatever `Hash` would give: only the bucket sees it.
            return hash_bytes(k);
        } else {
            return mix_hash(static_cast<std::uint64_t>(Hash{}(k)));
        }
    }
    static bool equal(const K& stored, key_arg k) {
        if constexpr (string_key) {
            return stored.size() == k.size() && bytes_equal(stored.data(), k.data(), k.size());
        } else {
            return Eq{}(stored, k);
        }
    }
    static std::size_t key_size(key_arg k) noexcept {
        if constexpr (key_inlinable) {
            return codec<K>::size(k);
        } else {
            return inline_capacity + 1;
        }
    }
    static std::size_t value_size(value_arg v) noexcept {
        if constexpr (value_inlinable) {
            return codec<V>::size(v);
        } else {
            return inline_capacity + 1;
        }
    }
    // The bytes an entry counts for (`bucket::bytes`).
    static std::size_t payload(key_arg k, value_arg v) noexcept {
        std::size_t n = 0;
        if constexpr (std::is_same_v<K, std::string>) {
            n += std::string_view(k).size();
        } else {
            n += sizeof(K);
        }
        if constexpr (std::is_same_v<V, std::string>) {
            n += std::string_view(v).size();
        } else {
            n += sizeof(V);
        }
        return n;
    }
    static bool fits(key_arg k, value_arg v) noexcept {
        if constexpr (key_inlinable && value_inlinable) {
            return key_size(k) + value_size(v) <= inline_capacity;
        } else {
            return false;
        }
    }
};

} // namespace detail

/// One slot's words, one group's slots and control bytes, one shard's table. The table's
/// header (which every lookup reads) has a cache line of its own: a writer changing the first
/// group does not take the line away from the readers of every other group.
template <class K, class V, class Hash, class Eq>
struct alignas(detail::cache_line) bucket<K, V, Hash, Eq>::table {
    using node = detail::bucket_node<K, V>;
    using position = detail::slot_position;
    struct group {
        std::atomic<std::uint32_t> version{0}; // odd while a writer changes the group
        std::atomic<std::uint64_t> ctrl{detail::ctrl_empty * detail::lsbs};
        std::atomic<std::uint64_t> words[detail::group_slots][traits::slot_words]{};
    };
    static constexpr std::size_t slot_words = traits::slot_words;
    static constexpr std::size_t slot_bytes = slot_words * 8;
    using slot_image = unsigned char[slot_bytes];

    std::size_t groups = 0;
    std::size_t used = 0;    // full and deleted slots (writer only)
    bool owns_nodes = false; // set when the table is dropped with its entries

    group* data() noexcept { return reinterpret_cast<group*>(this + 1); }
    std::size_t bytes() const noexcept { return sizeof(table) + groups * sizeof(group); }
    const group* data() const noexcept { return reinterpret_cast<const group*>(this + 1); }

    static table* make(std::size_t groups) {
        void* mem = ::operator new (sizeof(table) + groups * sizeof(group),
                                    std::align_val_t{alignof(table)});
        auto* t = new (mem) table();
        t->groups = groups;
        for (std::size_t g = 0; g < groups; ++g) {
            new (t->data() + g) group();
        }
        return t;
    }
    // Frees the table; with `owns_nodes`, also the nodes its slots point to.
    static void destroy(void* p) noexcept {
        auto* t = static_cast<table*>(p);
        if (t->owns_nodes) {
            for (std::size_t g = 0; g < t->groups; ++g) {
                group& gr = t->data()[g];
                const std::uint64_t ctrl = gr.ctrl.load(std::memory_order_relaxed);
                for (std::size_t i = 0; i < detail::group_slots; ++i) {
                    if (((ctrl >> (8 * i)) & 0x80) == 0) {
                        slot_image img;
                        load(gr, i, img);
                        delete node_of(img);
                    }
                }
            }
        }
        t->~table();
        ::operator delete (p, std::align_val_t{alignof(table)});
    }

    // Asks for every cache line of a group at once: the control word and the slot a probe
    // needs then arrive together instead of one miss after the other.
    static void prefetch(const group& g) noexcept {
#if defined(__GNUC__)
        const auto* bytes = reinterpret_cast<const char*>(&g);
        for (std::size_t off = 0; off < sizeof(group); off += detail::cache_line) {
            __builtin_prefetch(bytes + off);
        }
        __builtin_prefetch(bytes + sizeof(group) - 1);
#else
        (void)g;
#endif
    }
    static void load(const group& g, std::size_t i, slot_image& out) noexcept {
        std::uint64_t w[slot_words];
        load_words(g, i, w);
        std::memcpy(out, w, sizeof w);
    }
    static void store(group& g, std::size_t i, const slot_image& in) noexcept {
        for (std::size_t w = 0; w < slot_words; ++w) {
            std::uint64_t word = 0;
            std::memcpy(&word, in + 8 * w, 8);
            g.words[i][w].store(word, detail::seqlock_store);
        }
    }
    static node* node_of(const slot_image& img) noexcept {
        std::uint64_t w[slot_words];
        std::memcpy(w, img, sizeof w);
        return node_in(w);
    }
    static void encode(slot_image& img, key_arg k, value_arg v, node* n) noexcept {
        std::memset(img, 0, slot_bytes);
        if constexpr (traits::pair_slots) {
            // Never a node here: every such entry `fits`.
            detail::codec<K>::write(k, img);
            detail::codec<V>::write(v, img + 8);
            return;
        }
        if (n != nullptr) {
            img[0] = detail::node_marker;
            std::memcpy(img + 8, &n, sizeof(n));
            return;
        }
        if constexpr (traits::key_inlinable && traits::value_inlinable) {
            const std::size_t vs = traits::value_size(v);
            img[0] = static_cast<unsigned char>(traits::key_size(k));
            img[1] = static_cast<unsigned char>(vs);
            detail::codec<K>::write(k, img + 2);
            detail::codec<V>::write(v, img + slot_bytes - vs);
        }
    }
    using probe = detail::key_probe<slot_words>;
    OTPKV_DETAIL_HOT_INLINE static probe probe_of(key_arg k) noexcept {
        if constexpr (traits::pair_slots) {
            // Word 0 holds the key's bytes, zero above them; word 1 is the value's.
            probe p{{0, 0}, {detail::low_bytes(sizeof(K)), 0}};
            std::memcpy(&p.word[0], &k, sizeof(K));
            return p;
        } else if constexpr (traits::key_inlinable) {
            if constexpr (traits::string_key) {
                return detail::probe_of(reinterpret_cast<const unsigned char*>(k.data()), k.size());
            } else {
                return detail::probe_of(reinterpret_cast<const unsigned char*>(&k),
                                        traits::key_size(k));
            }
        } else {
            return detail::probe_of(nullptr, detail::inline_capacity + 1);
        }
    }
    // The node of a slot whose words are `w`, if it is a node slot.
    static node* node_in(const std::uint64_t (&w)[slot_words]) noexcept {
        if constexpr (traits::pair_slots) {
            return nullptr;
        }
        unsigned char first = 0;
        std::memcpy(&first, w, 1);
        if (first != detail::node_marker) {
            return nullptr;
        }
        node* n = nullptr;
        std::memcpy(&n, &w[1], sizeof(n));
        return n;
    }
    // One load per word, written out: compilers do not unroll a loop of atomic loads, and
    // the array it fills then lives on the stack instead of in registers.
    static void load_words(const group& g, std::size_t i, std::uint64_t (&w)[slot_words]) noexcept {
        [&]<std::size_t... J>(std::index_sequence<J...>) {
            ((w[J] = g.words[i][J].load(detail::seqlock_load)), ...);
        }
        (std::make_index_sequence<slot_words>{});
    }
    static K key_of(const slot_image& img) {
        if (node* n = node_of(img)) {
            return n->key;
        }
        if constexpr (traits::pair_slots) {
            return detail::codec<K>::read(img, sizeof(K));
        } else if constexpr (traits::key_inlinable) {
            return detail::codec<K>::read(img + 2, img[0]);
        } else {
            std::terminate(); // unreachable: such keys always live in nodes
        }
    }
    // The bytes the entry in `img` counts for: its inline lengths are the codecs' sizes,
    // which are `payload`'s.
    static std::size_t payload_of(const slot_image& img) noexcept {
        if (node* n = node_of(img)) {
            return traits::payload(n->key, n->value);
        }
        if constexpr (traits::pair_slots) {
            return sizeof(K) + sizeof(V);
        }
        return std::size_t{img[0]} + std::size_t{img[1]};
    }
    static V value_of(const slot_image& img) {
        if (node* n = node_of(img)) {
            return n->value;
        }
        if constexpr (traits::pair_slots) {
            return detail::codec<V>::read(img + 8, sizeof(V));
        } else if constexpr (traits::key_inlinable && std::is_same_v<V, std::string>) {
            return detail::codec<V>::read(img + slot_bytes - img[1], img[1]);
        } else if constexpr (traits::key_inlinable && traits::value_inlinable) {
            // A fixed-size value: at a constant offset, which the compiler can keep in a
            // register from the words just read.
            return detail::codec<V>::read(img + slot_bytes - sizeof(V), sizeof(V));
        } else {
            std::terminate(); // unreachable: such entries always live in nodes
        }
    }
    static std::uint64_t hash_of(const slot_image& img) {
        if (node* n = node_of(img)) {
            return traits::hash(n->key);
        }
        if constexpr (traits::pair_slots) {
            return traits::hash(key_of(img));
        } else if constexpr (traits::string_key) {
            return traits::hash(std::string_view(reinterpret_cast<const char*>(img + 2), img[0]));
        } else if constexpr (traits::key_inlinable) {
            return traits::hash(detail::codec<K>::read(img + 2, img[0]));
        } else {
            std::terminate();
        }
    }

    static std::uint64_t match(std::uint64_t ctrl, std::uint64_t tag) noexcept {
        const std::uint64_t x = ctrl ^ (detail::lsbs * tag);
        // Bytes of x that are zero (with rare false positives, which the key check drops).
        return (x - detail::lsbs) & ~x & detail::msbs;
    }
    static std::uint64_t match_empty(std::uint64_t ctrl) noexcept {
        return ctrl & ~(ctrl << 6) & detail::msbs;
    }
    static std::uint64_t match_free(std::uint64_t ctrl) noexcept {
        return ctrl & detail::msbs;
    }
    static std::size_t lowest(std::uint64_t bits) noexcept {
        return static_cast<std::size_t>(std::countr_zero(bits)) / 8;
    }
    static std::uint64_t tag_of(std::uint64_t h) noexcept {
        return (h >> 7) & 0x7F;
    }
    static std::uint64_t match_full(std::uint64_t ctrl) noexcept {
        return ~ctrl & detail::msbs;
    }

    // Reader side (no lock), the one seqlock read: copies into `images` the slots that
    // `pick(ctrl)` selects (one high bit per slot, as `match` gives them) and retries until
    // the group's version was even and the same before and after, so that the control word
    // returned and the copies are one state of the group that no writer was changing.
    template <class Pick>
    static std::uint64_t read_group(const group& gr, Pick pick,
                                    slot_image (&images)[detail::group_slots]) noexcept {
        for (;;) {
            // acquire: pairs with end_write; the words read below are at least that new.
            const std::uint32_t v1 = gr.version.load(std::memory_order_acquire);
            if ((v1 & 1) != 0) {
                detail::shard_lock::pause(); // a writer is inside the group: wait for it
                continue;
            }
            const std::uint64_t ctrl = gr.ctrl.load(detail::seqlock_load);
            for (std::uint64_t m = pick(ctrl); m != 0; m &= m - 1) {
                const std::size_t i = lowest(m);
                load(gr, i, images[i]);
            }
            // acquire fence: the reads above happen before the version is read again, so
            // an unchanged even version means no writer touched them meanwhile.
            detail::seqlock_read_fence();
            if (gr.version.load(std::memory_order_relaxed) == v1) {
                return ctrl;
            }
        }
    }

    // Writer side (under the shard lock): where `k` is, if present.
    std::optional<position> find(std::uint64_t h, key_arg k) {
        const std::uint64_t tag = tag_of(h);
        const probe key = probe_of(k);
        std::size_t g = detail::reduce(h, groups);
        for (std::size_t probes = 0; probes < groups; ++probes) {
            group& gr = data()[g];
            table::prefetch(gr);
            const std::uint64_t ctrl = gr.ctrl.load(std::memory_order_relaxed);
            for (std::uint64_t m = match(ctrl, tag); m != 0; m &= m - 1) {
                const std::size_t i = lowest(m);
                std::uint64_t w[slot_words];
                load_words(gr, i, w);
                if (detail::probe_matches(w, key)) {
                    return position{g, i};
                }
                if (const node* n = node_in(w); n != nullptr && traits::equal(n->key, k)) {
                    return position{g, i};
                }
            }
            if (match_empty(ctrl) != 0) {
                return std::nullopt;
            }
            g = g + 1 == groups ? 0 : g + 1;
        }
        return std::nullopt;
    }
    // The first empty or deleted slot on `h`'s probe sequence (there is always one).
    position free_slot(std::uint64_t h) noexcept {
        std::size_t g = detail::reduce(h, groups);
        for (;;) {
            const std::uint64_t free = match_free(data()[g].ctrl.load(std::memory_order_relaxed));
            if (free != 0) {
                return {g, lowest(free)};
            }
            g = g + 1 == groups ? 0 : g + 1;
        }
    }
    static std::uint32_t begin_write(group& gr) noexcept {
        const std::uint32_t v = gr.version.load(std::memory_order_relaxed);
        gr.version.store(v + 1, std::memory_order_relaxed);
        // Readers that see a word written below also see the odd version.
        detail::seqlock_write_fence();
        return v;
    }
    static void end_write(group& gr, std::uint32_t v) noexcept {
        // release: a reader that sees v + 2 sees every word written since begin_write.
        gr.version.store(v + 2, std::memory_order_release);
    }
    static void set_ctrl(group& gr, std::size_t i, std::uint64_t byte) noexcept {
        std::uint64_t ctrl = gr.ctrl.load(std::memory_order_relaxed);
        ctrl &= ~(std::uint64_t{0xFF} << (8 * i));
        ctrl |= byte << (8 * i);
        gr.ctrl.store(ctrl, detail::seqlock_store);
    }
    // Writes a slot (new or replaced) of group `p.group`.
    void write_slot(position p, std::uint64_t tag, const slot_image& img) noexcept {
        group& gr = data()[p.group];
        const std::uint32_t v = begin_write(gr);
        store(gr, p.slot, img);
        set_ctrl(gr, p.slot, tag);
        end_write(gr, v);
    }
    // Empties a slot: `empty` when the group has an empty slot already (no probe sequence
    // goes on past this group), else `deleted`, so probes still go on past it.
    void erase_slot(position p) noexcept {
        group& gr = data()[p.group];
        const std::uint32_t v = begin_write(gr);
        const bool stop_here = match_empty(gr.ctrl.load(std::memory_order_relaxed)) != 0;
        set_ctrl(gr, p.slot, stop_here ? detail::ctrl_empty : detail::ctrl_deleted);
        end_write(gr, v);
        if (stop_here) {
            --used;
        }
    }
    // Copies every full slot into `to` (a table nobody reads yet).
    void move_to(table& to) const {
        for (std::size_t g = 0; g < groups; ++g) {
            const group& gr = data()[g];
            const std::uint64_t ctrl = gr.ctrl.load(std::memory_order_relaxed);
            for (std::size_t i = 0; i < detail::group_slots; ++i) {
                const std::uint64_t c = (ctrl >> (8 * i)) & 0xFF;
                if ((c & 0x80) == 0) {
                    slot_image img;
                    load(gr, i, img);
                    const std::uint64_t h = hash_of(img);
                    const position p = to.free_slot(h);
                    group& dst = to.data()[p.group];
                    store(dst, p.slot, img);
                    set_ctrl(dst, p.slot, c);
                    ++to.used;
                }
            }
        }
    }
};

/// One shard's writer side: its lock, its size, and where its table pointer is (see
/// `make_shards`).
template <class K, class V, class Hash, class Eq>
struct alignas(detail::cache_line) bucket<K, V, Hash, Eq>::shard {
    detail::shard_lock lock;
    std::atomic<std::size_t> live{0};
    std::atomic<std::size_t> bytes{0};  // keys' and values' bytes, written under `lock`
    std::atomic<table*>* tab = nullptr; // in the block's table pointers, after the shards
};

template <class K, class V, class Hash, class Eq>
auto bucket<K, V, Hash, Eq>::make_shards(std::size_t n) -> shard* {
    void* block = ::operator new (n*(sizeof(shard) + sizeof(std::atomic<table*>)),
                                  std::align_val_t{alignof(shard)});
    auto* all = static_cast<shard*>(block);
    auto* tabs = reinterpret_cast<std::atomic<table*>*>(all + n);
    for (std::size_t i = 0; i < n; ++i) {
        new (tabs + i) std::atomic<table*>(nullptr);
        new (all + i) shard();
        all[i].tab = tabs + i;
    }
    return all;
}

template <class K, class V, class Hash, class Eq>
void bucket<K, V, Hash, Eq>::free_shards(shard* all, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) {
        all[i].~shard();
    }
    ::operator delete (static_cast<void*>(all), std::align_val_t{alignof(shard)});
}

template <class K, class V, class Hash, class Eq>
bucket<K, V, Hash, Eq>::bucket(bucket_options options) {
    std::size_t n = std::bit_ceil(std::clamp<std::size_t>(options.shards, 1, 256));
    shard_mask_ = n - 1;
}

template <class K, class V, class Hash, class Eq> bucket<K, V, Hash, Eq>::~bucket() {
    if (alive()) {
        notify_exit(exit_reason::shutdown());
    }
    // Nobody can read any more: whoever reaches a bucket holds it.
    shard* all = shards_.load(std::memory_order_acquire);
    if (all == nullptr) {
        return;
    }
    for (std::size_t s = 0; s <= shard_mask_; ++s) {
        if (table* t = all[s].tab->load(std::memory_order_relaxed)) {
            t->owns_nodes = true;
            table::destroy(t);
        }
    }
    free_shards(all, shard_mask_ + 1);
}

template <class K, class V, class Hash, class Eq>
auto bucket<K, V, Hash, Eq>::shard_for(std::uint64_t h) -> shard& {
    shard* all = shards_.load(std::memory_order_acquire);
    if (all == nullptr) [[unlikely]] {
        shard* made = make_shards(shard_mask_ + 1);
        // acq_rel: publishes our shards, or acquires the ones another writer published.
        if (shards_.compare_exchange_strong(all, made, std::memory_order_acq_rel)) {
            all = made;
        } else {
            free_shards(made, shard_mask_ + 1);
        }
    }
    return all[h & shard_mask_];
}

template <class K, class V, class Hash, class Eq>
template <class OnHit>
bool bucket<K, V, Hash, Eq>::read(key_arg key, OnHit&& on_hit) const {
    const std::uint64_t h = traits::hash(key);
    const std::atomic<table*>* tab = find_table(h);
    if (tab == nullptr) {
        return false;
    }
    const detail::epoch_guard guard;
    // acquire: the table's contents, written before it was published, are visible.
    const table* t = tab->load(std::memory_order_acquire);
    if (t == nullptr) {
        return false;
    }
    const std::uint64_t tag = table::tag_of(h);
    const typename table::probe probe = table::probe_of(key);
    std::size_t g = detail::reduce(h, t->groups);
    for (std::size_t probes = 0; probes < t->groups; ++probes) {
        const typename table::group& gr = t->data()[g];
        table::prefetch(gr);
        // The seqlock read of one group (see `read_group`), comparing in registers: the
        // candidates' words are loaded (relaxed, or acquire under TSan) and compared with
        // the probe; an inline hit keeps its words, a node slot its pointer. Nothing read
        // is used before the version, re-read after the acquire fence, proves that no
        // writer changed the group meanwhile; a torn read only costs a retry.
        std::uint64_t hit[table::slot_words];
        const typename table::node* nodes[detail::group_slots];
        std::size_t node_count = 0;
        bool found = false;
        std::uint64_t ctrl = 0;
        for (;;) {
            // acquire: pairs with end_write; the words read below are at least that new.
            const std::uint32_t v1 = gr.version.load(std::memory_order_acquire);
            if ((v1 & 1) != 0) {
                detail::shard_lock::pause(); // a writer is inside the group: wait for it
                continue;
            }
            ctrl = gr.ctrl.load(detail::seqlock_load);
            found = false;
            node_count = 0;
            for (std::uint64_t m = table::match(ctrl, tag); m != 0; m &= m - 1) {
                const std::size_t i = table::lowest(m);
                table::load_words(gr, i, hit);
                if (detail::probe_matches(hit, probe)) {
                    found = true;
                    break;
                }
                if (const typename table::node* n = table::node_in(hit)) {
                    nodes[node_count++] = n;
                }
            }
            // acquire fence: the loads above happen before the version is read again.
            detail::seqlock_read_fence();
            if (gr.version.load(std::memory_order_relaxed) == v1) {
                break;
            }
        }
        if (found) {
            typename table::slot_image img;
            std::memcpy(img, hit, sizeof img);
            on_hit(img);
            return true;
        }
        // Nodes are immutable and the epoch guard keeps them: their keys are safe to read.
        for (std::size_t j = 0; j < node_count; ++j) {
            if (traits::equal(nodes[j]->key, key)) {
                typename table::slot_image img{};
                img[0] = detail::node_marker;
                std::memcpy(img + 8, &nodes[j], sizeof(nodes[j]));
                on_hit(img);
                return true;
            }
        }
        if (table::match_empty(ctrl) != 0) {
            return false;
        }
        g = g + 1 == t->groups ? 0 : g + 1;
    }
    return false;
}

template <class K, class V, class Hash, class Eq>
std::optional<V> bucket<K, V, Hash, Eq>::get(key_arg key) const {
    std::optional<V> out;
    visit(key, [&](const auto& value) { out.emplace(value); });
    return out;
}

template <class K, class V, class Hash, class Eq>
template <class F>
bool bucket<K, V, Hash, Eq>::visit(key_arg key, F&& f) const {
    return read(key, [&](const typename table::slot_image& img) {
        if (const typename table::node* n = table::node_of(img)) {
            f(static_cast<value_arg>(n->value));
        } else if constexpr (std::is_same_v<V, std::string>) {
            // The validated copy of the slot holds the bytes: no string is built.
            f(std::string_view(reinterpret_cast<const char*>(img + table::slot_bytes - img[1]),
                               img[1]));
        } else {
            const V value = table::value_of(img);
            f(value);
        }
    });
}

template <class K, class V, class Hash, class Eq>
bool bucket<K, V, Hash, Eq>::contains(key_arg key) const {
    return read(key, [](const typename table::slot_image&) {});
}

template <class K, class V, class Hash, class Eq>
auto bucket<K, V, Hash, Eq>::room_for_one(shard& s, table* t, bool& retired) -> table* {
    if (t != nullptr && (t->used + 1) * 8 <= t->groups * detail::group_slots * 7) {
        return t;
    }
    const std::size_t live = s.live.load(std::memory_order_relaxed) + 1;
    // About 7/12 full afterwards (growth by 1.5): at most 45 bytes per small entry.
    table* bigger = table::make(std::max<std::size_t>(1, (live * 12 + 55) / 56));
    if (t != nullptr) {
        t->move_to(*bigger);
        detail::epoch_domain::instance().retire(t, &table::destroy, t->bytes());
        retired = true;
    }
    // release: readers that load the new table see its contents.
    s.tab->store(bigger, std::memory_order_release);
    return bigger;
}

template <class K, class V, class Hash, class Eq>
detail::bucket_node<K, V>*
bucket<K, V, Hash, Eq>::store(shard& s, table& t, const detail::slot_position* at, std::uint64_t h,
                              key_arg key, value_arg value) {
    typename table::node* n = nullptr;
    if (!traits::fits(key, value)) {
        n = new typename table::node{K(key), V(value)};
    }
    typename table::slot_image img;
    table::encode(img, key, value, n);
    // Only this shard's writers write its counters (under the lock): no atomic add needed;
    // unsigned arithmetic wraps back to the right sum.
    const std::size_t added = traits::payload(key, value);
    if (at != nullptr) {
        typename table::slot_image old;
        table::load(t.data()[at->group], at->slot, old);
        t.write_slot(*at, table::tag_of(h), img);
        s.bytes.store(s.bytes.load(std::memory_order_relaxed) + added - table::payload_of(old),
                      std::memory_order_relaxed);
        return table::node_of(old);
    }
    s.bytes.store(s.bytes.load(std::memory_order_relaxed) + added, std::memory_order_relaxed);
    const typename table::position p = t.free_slot(h);
    const std::uint64_t was =
        (t.data()[p.group].ctrl.load(std::memory_order_relaxed) >> (8 * p.slot)) & 0xFF;
    t.write_slot(p, table::tag_of(h), img);
    if (was == detail::ctrl_empty) {
        ++t.used;
    }
    // Only this shard's writers write the counter (under the lock): no atomic add needed.
    s.live.store(s.live.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return nullptr;
}

template <class K, class V, class Hash, class Eq>
template <class Body>
bool bucket<K, V, Hash, Eq>::locked_write(key_arg key, Body&& body) {
    const std::uint64_t h = traits::hash(key);
    shard& s = shard_for(h);
    bool drain = false;
    bool retired = false;
    {
        const std::lock_guard lock(s.lock);
        // Under the lock: `stop` sets the flag, then clears every shard under its lock.
        if (stopped_.load(std::memory_order_relaxed)) {
            return false;
        }
        table* t = s.tab->load(std::memory_order_relaxed);
        std::optional<typename table::position> at;
        if (t != nullptr) {
            at = t->find(h, key);
        }
        drain = body(s, t, at, h, retired);
    }
    if (drain) {
        hub()->drain();
    }
    if (retired) {
        detail::epoch_domain::instance().collect();
    }
    return true;
}

template <class K, class V, class Hash, class Eq>
void bucket<K, V, Hash, Eq>::retire_node(detail::bucket_node<K, V>* n, bool& retired) {
    if (n != nullptr) {
        detail::epoch_domain::instance().retire(n);
        retired = true;
    }
}

template <class K, class V, class Hash, class Eq>
V bucket<K, V, Hash, Eq>::get_at(const table& t, detail::slot_position p) {
    typename table::slot_image img;
    table::load(t.data()[p.group], p.slot, img);
    return table::value_of(img);
}

template <class K, class V, class Hash, class Eq>
void bucket<K, V, Hash, Eq>::remove_at(shard& s, table& t, detail::slot_position p, bool& retired) {
    typename table::slot_image img;
    table::load(t.data()[p.group], p.slot, img);
    t.erase_slot(p);
    s.live.store(s.live.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    s.bytes.store(s.bytes.load(std::memory_order_relaxed) - table::payload_of(img),
                  std::memory_order_relaxed);
    retire_node(table::node_of(img), retired);
}

template <class K, class V, class Hash, class Eq>
bool bucket<K, V, Hash, Eq>::publish(bucket_event_kind kind, key_arg key,
                                     const std::remove_cvref_t<value_arg>* value) {
    detail::event_hub<event>* h = hub();
    if (h == nullptr || !h->active()) {
        return false;
    }
    return h->push(
        event{kind, K(key), value != nullptr ? std::optional<V>(V(*value)) : std::nullopt});
}

template <class K, class V, class Hash, class Eq>
bool bucket<K, V, Hash, Eq>::put(key_arg key, value_arg value) {
    return locked_write(key, [&](shard& s, table* t, auto at, std::uint64_t h, bool& retired) {
        if (!at) {
            t = room_for_one(s, t, retired);
        }
        retire_node(store(s, *t, at ? &*at : nullptr, h, key, value), retired);
        return publish(bucket_event_kind::put, key, &value);
    });
}

template <class K, class V, class Hash, class Eq>
std::optional<V> bucket<K, V, Hash, Eq>::erase(key_arg key) {
    std::optional<V> old;
    locked_write(key, [&](shard& s, table* t, auto at, std::uint64_t, bool& retired) {
        if (at) {
            old.emplace(get_at(*t, *at));
            remove_at(s, *t, *at, retired);
        }
        return publish(bucket_event_kind::erase, key, nullptr);
    });
    return old;
}

template <class K, class V, class Hash, class Eq>
template <class F>
auto bucket<K, V, Hash, Eq>::get_and_update(key_arg key, F&& f) {
    using pair_type = std::invoke_result_t<F&, const std::optional<V>&>;
    using result_type = std::remove_cvref_t<decltype(std::declval<pair_type>().first)>;
    std::optional<result_type> out;
    locked_write(key, [&](shard& s, table* t, auto at, std::uint64_t h, bool& retired) {
        std::optional<V> current;
        if (at) {
            current.emplace(get_at(*t, *at));
        }
        auto [answer, next] = f(std::as_const(current));
        out.emplace(std::move(answer));
        if (next) {
            const value_arg v = *next;
            if (!at) {
                t = room_for_one(s, t, retired);
            }
            retire_node(store(s, *t, at ? &*at : nullptr, h, key, v), retired);
            return publish(bucket_event_kind::put, key, &v);
        }
        if (at) {
            remove_at(s, *t, *at, retired);
            return publish(bucket_event_kind::erase, key, nullptr);
        }
        return false;
    });
    return out;
}

template <class K, class V, class Hash, class Eq>
template <class F>
bool bucket<K, V, Hash, Eq>::update(key_arg key, F&& f) {
    return get_and_update(key,
                          [&](const std::optional<V>& current) {
                              return std::pair<bool, std::optional<V>>{true, f(current)};
                          })
        .has_value();
}

template <class K, class V, class Hash, class Eq>
std::size_t bucket<K, V, Hash, Eq>::size() const noexcept {
    std::size_t n = 0;
    const shard* all = shards_.load(std::memory_order_acquire);
    for (std::size_t s = 0; all != nullptr && s <= shard_mask_; ++s) {
        n += all[s].live.load(std::memory_order_relaxed);
    }
    return n;
}

template <class K, class V, class Hash, class Eq>
std::size_t bucket<K, V, Hash, Eq>::bytes() const noexcept {
    std::size_t n = 0;
    const shard* all = shards_.load(std::memory_order_acquire);
    for (std::size_t s = 0; all != nullptr && s <= shard_mask_; ++s) {
        n += all[s].bytes.load(std::memory_order_relaxed);
    }
    return n;
}

template <class K, class V, class Hash, class Eq>
template <class F>
void bucket<K, V, Hash, Eq>::for_each(F&& f) const {
    const detail::epoch_guard guard;
    std::vector<std::pair<K, V>> entries;
    const shard* all = shards_.load(std::memory_order_acquire);
    for (std::size_t s = 0; all != nullptr && s <= shard_mask_; ++s) {
        const table* t = all[s].tab->load(std::memory_order_acquire);
        if (t == nullptr) {
            continue;
        }
        for (std::size_t g = 0; g < t->groups; ++g) {
            const typename table::group& gr = t->data()[g];
            typename table::slot_image images[detail::group_slots];
            const std::uint64_t ctrl = table::read_group(gr, table::match_full, images);
            entries.clear();
            for (std::uint64_t m = table::match_full(ctrl); m != 0; m &= m - 1) {
                const std::size_t i = table::lowest(m);
                entries.emplace_back(table::key_of(images[i]), table::value_of(images[i]));
            }
            for (const auto& [k, v] : entries) {
                f(std::as_const(k), std::as_const(v));
            }
        }
    }
}

template <class K, class V, class Hash, class Eq> void bucket<K, V, Hash, Eq>::clear() {
    shard* all = shards_.load(std::memory_order_acquire);
    for (std::size_t s = 0; all != nullptr && s <= shard_mask_; ++s) {
        shard& sh = all[s];
        table* old = nullptr;
        {
            const std::lock_guard lock(sh.lock);
            old = sh.tab->load(std::memory_order_relaxed);
            sh.tab->store(nullptr, std::memory_order_release);
            sh.live.store(0, std::memory_order_relaxed);
            sh.bytes.store(0, std::memory_order_relaxed);
            if (old != nullptr) {
                old->owns_nodes = true;
                detail::epoch_domain::instance().retire(old, &table::destroy, old->bytes());
            }
        }
    }
    detail::epoch_domain::instance().collect();
}

template <class K, class V, class Hash, class Eq>
subscription bucket<K, V, Hash, Eq>::subscribe(subscriber f) {
    if (stopped_.load(std::memory_order_acquire)) {
        return {};
    }
    std::call_once(hub_once_, [&] {
        hub_owner_ = std::make_shared<detail::event_hub<event>>();
        // release: writers that load the pointer see a constructed hub.
        hub_.store(hub_owner_.get(), std::memory_order_release);
    });
    return hub()->subscribe(std::move(f));
}

template <class K, class V, class Hash, class Eq>
exit_reason bucket<K, V, Hash, Eq>::stop(exit_reason reason, timeout) {
    if (!stopped_.exchange(true, std::memory_order_acq_rel)) {
        clear();
    }
    if (!notify_exit(reason)) {
        // Stopped by someone else: return once its monitors have run, as they promise.
        signal()->wait_done(infinity);
    }
    return *exited();
}

} // namespace v0
} // namespace otpkv
