// SPDX-License-Identifier: MIT
/// @file
/// Epoch-based reclamation: how memory that concurrent readers may still be looking at
/// (a bucket's old table, a registry entry that was removed) is freed only once no reader
/// can reach it any more.
///
/// Readers enter a *guard* (`epoch_guard`) around a lookup. Entering writes one word: the
/// reader's own record, on a cache line of its own that no other thread writes, so readers
/// never write memory that another thread writes and never bounce a cache line (no reader
/// counts, no reference counts). Writers unlink memory first, then `retire` it with the
/// epoch current at that time; it is freed once the global epoch has moved on twice, which
/// the epoch can only do after every reader that was inside a guard at the retirement has
/// left it.
///
/// The store-to-load order a reader needs (its record must be visible before it reads a
/// pointer) costs a full fence on every entry with the plain scheme. On Linux, when the
/// kernel offers `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, the reader only needs a
/// compiler barrier, and the rare reclaimer pays instead: it makes every running thread of
/// the process execute a full barrier before it reads the records (the "asymmetric fence"
/// of liburcu's memb flavour). Where membarrier is missing, the reader fences.
///
/// One domain serves the whole program (like `process_id`'s counter): a thread that reads
/// many buckets and registries has one record. Being an inline function's static, it is one
/// per copy the linker keeps: one per shared object that keeps its own (README.md, "Shared
/// libraries"); memory retired into one domain must only be read under its guards. The
/// domain is never destroyed, so objects destroyed during static destruction may still
/// retire memory into it; memory still retired at exit is reachable from it (not a leak to
/// LeakSanitizer).
#pragma once

#include <otpkv/detail/hot_inline.hpp>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

// ThreadSanitizer cannot see what membarrier orders, so under it readers keep the fences.
#if defined(__SANITIZE_THREAD__)
#define OTPKV_DETAIL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define OTPKV_DETAIL_TSAN 1
#endif
#endif

#if defined(__linux__)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace otpkv {
inline namespace v0 {
namespace detail {

/// The size that keeps independently written data on separate cache lines.
inline constexpr std::size_t cache_line = 64;

// Fences, and the orders of seqlock data accesses. ThreadSanitizer does not model fences
// (GCC refuses them under -fsanitize=thread), so there the same orderings come from
// acquire loads, release stores and a sequentially consistent read-modify-write instead:
// slower, equally correct, and visible to the sanitizer.
#if defined(OTPKV_DETAIL_TSAN)
inline constexpr std::memory_order seqlock_load = std::memory_order_acquire;
inline constexpr std::memory_order seqlock_store = std::memory_order_release;
inline void seqlock_read_fence() noexcept {}
inline void seqlock_write_fence() noexcept {}
inline std::atomic<int> fence_word{0};
inline void full_fence() noexcept {
    fence_word.fetch_add(0, std::memory_order_seq_cst);
}
#else
/// Seqlock data are read with relaxed loads, ordered by `seqlock_read_fence`.
inline constexpr std::memory_order seqlock_load = std::memory_order_relaxed;
/// Seqlock data are written with relaxed stores, ordered by `seqlock_write_fence`.
inline constexpr std::memory_order seqlock_store = std::memory_order_relaxed;
/// A reader's data loads happen before its second read of the version.
inline void seqlock_read_fence() noexcept {
    std::atomic_thread_fence(std::memory_order_acquire);
}
/// A writer's odd version is visible before any data it writes next.
inline void seqlock_write_fence() noexcept {
    std::atomic_thread_fence(std::memory_order_release);
}
/// A full (store-load) fence.
inline void full_fence() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
}
#endif

/// The program's reclamation domain. Thread safety: every member may be called from any
/// thread; `synchronize` must not be called inside a guard.
class epoch_domain {
  public:
    /// One thread's announcement. Written by its owner only; read by reclaimers.
    struct alignas(cache_line) record {
        std::atomic<std::uint64_t> epoch{0}; ///< 0 outside a guard, else the epoch entered
        std::atomic<bool> in_use{false};     ///< owned by a live thread
        record* next = nullptr;              ///< the domain's list; records are never freed
        std::uint32_t depth = 0;             ///< nested guards (owner only)
        /// The domain's epoch and barrier kind, copied here so that entering a guard needs
        /// neither `instance` (a call, and a check of its static's guard) nor the domain.
        const std::atomic<std::uint64_t>* global = nullptr;
        bool asymmetric = false;
    };

    /// The domain (created on first use, never destroyed).
    static epoch_domain& instance();

    epoch_domain();
    epoch_domain(const epoch_domain&) = delete;
    epoch_domain& operator=(const epoch_domain&) = delete;

    /// Enters a guard on this thread (nested guards are counted); returns its record.
    static record& enter() noexcept;
    /// Leaves the guard entered by `enter`.
    static void leave(record& r) noexcept;

    /// Hands `p` over, to be freed by `del(p)` once no reader can hold it. The caller must
    /// have unlinked it already. Never frees anything itself, so it may be called under the
    /// caller's locks; call `collect` afterwards, outside them.
    /// `bytes` is how much it holds: large retirements are collected sooner.
    void retire(void* p, void (*del)(void*), std::size_t bytes = 0);
    /// `retire` for an object allocated with `new`.
    template <class T> void retire(T* p) {
        retire(
            static_cast<void*>(p), [](void* q) { delete static_cast<T*>(q); }, sizeof(T));
    }

    /// Frees what can be freed when enough has piled up (cheap otherwise). Call it outside
    /// every lock: deleters may run arbitrary destructors.
    void collect();
    /// Tries once to move the epoch on and frees what is safe; returns how many it freed.
    std::size_t reclaim();
    /// Frees everything retired before the call, waiting for readers still inside a guard.
    /// Must not be called from inside a guard (it would wait for itself).
    void synchronize();

    /// Objects retired and not freed yet (for tests and statistics).
    [[nodiscard]] std::size_t retired() const noexcept {
        return retired_count_.load(std::memory_order_relaxed);
    }
    /// True when readers use the asymmetric barrier (membarrier).
    [[nodiscard]] bool asymmetric() const noexcept { return asymmetric_; }

  private:
    struct retired_item {
        void* p;
        void (*del)(void*);
        std::uint64_t epoch;
        std::size_t bytes;
    };

    record* acquire_record();
    void heavy_barrier() const noexcept;

    std::atomic<std::uint64_t> global_{1};
    std::atomic<record*> records_{nullptr};
    bool asymmetric_ = false;
    std::mutex retired_mutex_;
    std::vector<retired_item> retired_;
    std::atomic<std::size_t> retired_count_{0};
    // When `collect` reclaims (guarded by retired_mutex_): past this many items or bytes.
    std::size_t collect_at_ = 128;
    std::size_t collect_bytes_at_ = std::size_t{1} << 20;
    std::size_t retired_bytes_ = 0; // what the retired items hold
};

/// This thread's record, once it has one (constant-initialised: no TLS wrapper call).
inline thread_local epoch_domain::record* epoch_thread_record = nullptr;

/// A read-side critical section: memory reachable when it starts is not freed before it
/// ends. Cheap (no shared writes), nestable, and must stay on one thread.
class epoch_guard {
  public:
    OTPKV_DETAIL_HOT_INLINE epoch_guard() noexcept : record_(&epoch_domain::enter()) {}
    OTPKV_DETAIL_HOT_INLINE ~epoch_guard() { epoch_domain::leave(*record_); }
    epoch_guard(const epoch_guard&) = delete;
    epoch_guard& operator=(const epoch_guard&) = delete;

  private:
    epoch_domain::record* record_;
};

// =======================================================================================
// Implementation
// =======================================================================================

inline epoch_domain& epoch_domain::instance() {
    // Deliberately never destroyed (see the file comment).
    static epoch_domain* const domain = new epoch_domain();
    return *domain;
}

inline epoch_domain::epoch_domain() {
#if defined(__linux__) && defined(__NR_membarrier) && !defined(OTPKV_DETAIL_TSAN) &&               \
    !defined(OTPKV_NO_MEMBARRIER)
    const long supported = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (supported > 0 && (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
        syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0) {
        asymmetric_ = true;
    }
#endif
}

OTPKV_DETAIL_HOT_INLINE epoch_domain::record& epoch_domain::enter() noexcept {
    record* r = epoch_thread_record;
    if (r == nullptr) [[unlikely]] {
        r = instance().acquire_record();
    }
    if (r->depth++ == 0) {
        // acquire: whatever a writer unlinked before moving the epoch to this value is
        // visible to the reads that follow.
        r->epoch.store(r->global->load(std::memory_order_acquire), std::memory_order_relaxed);
        // The record must be visible before the reads of the guarded section: a full fence,
        // or, with membarrier, a compiler barrier that the reclaimer's barrier completes.
        if (r->asymmetric) {
            std::atomic_signal_fence(std::memory_order_seq_cst);
        } else {
            full_fence();
        }
    }
    return *r;
}

inline void epoch_domain::leave(record& r) noexcept {
    if (--r.depth == 0) {
        // release: the section's reads happen before a reclaimer that sees 0 frees anything.
        r.epoch.store(0, std::memory_order_release);
    }
}

inline epoch_domain::record* epoch_domain::acquire_record() {
    // Gives the record back when the thread ends, so records are reused.
    struct releaser {
        record* r = nullptr;
        releaser() = default;
        releaser(const releaser&) = delete;
        releaser& operator=(const releaser&) = delete;
        ~releaser() {
            if (r != nullptr) {
                r->depth = 0;
                r->epoch.store(0, std::memory_order_release);
                r->in_use.store(false, std::memory_order_release);
                epoch_thread_record = nullptr;
            }
        }
    };
    thread_local releaser owner;

    record* found = nullptr;
    for (record* r = records_.load(std::memory_order_acquire); r != nullptr; r = r->next) {
        bool expected = false;
        if (!r->in_use.load(std::memory_order_relaxed) &&
            r->in_use.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) {
            found = r;
            break;
        }
    }
    if (found == nullptr) {
        found = new record();
        found->in_use.store(true, std::memory_order_relaxed);
        record* head = records_.load(std::memory_order_relaxed);
        do {
            found->next = head;
            // release: a reclaimer that walks to this record sees it initialised.
        } while (!records_.compare_exchange_weak(head, found, std::memory_order_release,
                                                 std::memory_order_relaxed));
    }
    found->global = &global_;
    found->asymmetric = asymmetric_;
    owner.r = found;
    epoch_thread_record = found;
    return found;
}

inline void epoch_domain::heavy_barrier() const noexcept {
#if defined(__linux__) && defined(__NR_membarrier)
    if (asymmetric_) {
        // Every running thread of the process executes a full barrier before this returns.
        syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
        return;
    }
#endif
    full_fence();
}

inline void epoch_domain::retire(void* p, void (*del)(void*), std::size_t bytes) {
    const std::lock_guard lock(retired_mutex_);
    retired_bytes_ += bytes;
    // The epoch read under the mutex: a reclaimer that advances the epoch later takes the
    // mutex after us, so a reader that enters at the new epoch cannot see `p` linked.
    retired_.push_back({p, del, global_.load(std::memory_order_acquire), bytes});
    retired_count_.fetch_add(1, std::memory_order_relaxed);
}

inline void epoch_domain::collect() {
    std::size_t pending = 0;
    {
        const std::lock_guard lock(retired_mutex_);
        pending = retired_.size();
        if (pending < collect_at_ && retired_bytes_ < collect_bytes_at_) {
            return;
        }
    }
    const std::size_t freed = reclaim();
    const std::lock_guard lock(retired_mutex_);
    // Readers holding guards for long keep memory retired; collect less often meanwhile
    // instead of scanning on every call.
    collect_at_ = freed == 0 ? std::max<std::size_t>(128, retired_.size() * 2) : 128;
    collect_bytes_at_ =
        freed == 0 ? std::max(collect_bytes_at_, retired_bytes_ * 2) : std::size_t{1} << 20;
}

inline std::size_t epoch_domain::reclaim() {
    std::vector<retired_item> ready;
    {
        const std::lock_guard lock(retired_mutex_);
        heavy_barrier();
        std::uint64_t epoch = global_.load(std::memory_order_acquire);
        bool quiet = true;
        for (record* r = records_.load(std::memory_order_acquire); r != nullptr; r = r->next) {
            // acquire: pairs with `leave`; what that reader did happens before our frees.
            const std::uint64_t seen = r->epoch.load(std::memory_order_acquire);
            if (seen != 0 && seen != epoch) {
                quiet = false;
                break;
            }
        }
        if (quiet) {
            global_.store(++epoch, std::memory_order_release);
        }
        auto keep = retired_.begin();
        for (auto& item : retired_) {
            if (item.epoch + 2 <= epoch) {
                ready.push_back(item);
            } else {
                *keep++ = item;
            }
        }
        retired_.erase(keep, retired_.end());
        for (const auto& item : ready) {
            retired_bytes_ -= item.bytes;
        }
    }
    // Outside the mutex: a deleter may retire more (a bucket's destructor, say).
    for (const auto& item : ready) {
        item.del(item.p);
    }
    retired_count_.fetch_sub(ready.size(), std::memory_order_relaxed);
    return ready.size();
}

inline void epoch_domain::synchronize() {
    assert(epoch_thread_record == nullptr || epoch_thread_record->depth == 0);
    // Items retired before the call carry an epoch below `target - 1`; the reclaim that
    // moves the epoch to `target` frees them.
    const std::uint64_t target = global_.load(std::memory_order_acquire) + 2;
    for (;;) {
        reclaim();
        if (global_.load(std::memory_order_acquire) >= target) {
            return;
        }
        std::this_thread::yield();
    }
}

} // namespace detail
} // namespace v0
} // namespace otpkv
