// SPDX-License-Identifier: MIT
/// @file
/// Ordered event delivery for buckets and registries: `subscription`, the handle a
/// subscriber keeps, and `detail::event_hub`, which queues events in the order their
/// writes took effect and delivers them from one thread at a time.
///
/// A writer pushes its event while it still holds the lock that ordered its write, so the
/// queue's order is the write order. It then returns, unless nobody is delivering: then it
/// becomes the deliverer, after releasing its own lock, and delivers until the queue is
/// empty. Publishers thus never wait for one another's subscribers, a callback may write to
/// the same bucket (its event is queued and delivered next, by the same loop), and one
/// subscriber's callbacks never run at the same time on two threads.
#pragma once

#include <otpkv/detail/registration.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

namespace detail {
/// What a `subscription` cancels through.
class hub_base {
  public:
    virtual ~hub_base() = default;
    virtual void cancel(std::uint64_t id) noexcept = 0;

  protected:
    hub_base() = default;
    hub_base(const hub_base&) = default;
    hub_base& operator=(const hub_base&) = default;
};
} // namespace detail

/// A subscription to a bucket's or a registry's events. Dropping or cancelling it
/// unsubscribes. Movable, not copyable; it may outlive what it subscribed to.
///
/// Thread safety: one handle is used by one thread at a time; `cancel` may be called from
/// inside the subscriber's own callback.
class subscription {
  public:
    /// Subscribed to nothing.
    subscription() noexcept = default;
    /// A subscription to `hub`, as `id`.
    subscription(std::shared_ptr<detail::hub_base> hub, std::uint64_t id) noexcept
        : registration_(std::move(hub), id) {}

    /// True while subscribed (a subscriber dropped because its callback threw still counts
    /// until cancelled: the handle cannot know).
    [[nodiscard]] bool active() const noexcept { return registration_.active(); }

    /// After this returns, the callback is not called again; if it is running on another
    /// thread, this waits for it to return (from inside the callback, it returns at once).
    void cancel() noexcept { registration_.cancel(); }

  private:
    detail::registration<detail::hub_base> registration_; // cancels when dropped
};

namespace detail {

/// The subscribers of one bucket or registry and its queue of undelivered events.
template <class Event>
class event_hub final : public hub_base, public std::enable_shared_from_this<event_hub<Event>> {
  public:
    using callback = std::function<void(const Event&)>;

    /// True when someone is subscribed: publishers skip building events otherwise.
    [[nodiscard]] bool active() const noexcept {
        return count_.load(std::memory_order_acquire) != 0;
    }

    /// Adds a subscriber. It receives the events queued from now on.
    subscription subscribe(callback f) {
        auto s = std::make_shared<subscriber>();
        s->f = std::move(f);
        const std::lock_guard lock(mutex_);
        s->id = ++last_id_;
        s->from = next_seq_;
        subs_.push_back(s);
        count_.fetch_add(1, std::memory_order_release);
        return {this->shared_from_this(), s->id};
    }

    /// Queues `e`. Call it under the lock that ordered the write. Returns true when the
    /// caller must call `drain` once it has released its own locks.
    bool push(Event e) {
        const std::lock_guard lock(mutex_);
        if (subs_.empty()) {
            return false;
        }
        queue_.push_back({next_seq_++, std::move(e)});
        if (draining_) {
            return false;
        }
        draining_ = true;
        drainer_ = std::this_thread::get_id();
        return true;
    }

    /// Delivers queued events, in order, until none is left.
    void drain() {
        std::unique_lock lock(mutex_);
        for (;;) {
            if (queue_.empty()) {
                draining_ = false;
                drainer_ = {};
                idle_.notify_all();
                return;
            }
            // The whole queue at once, with one copy of the subscriber list: a subscriber
            // added meanwhile starts after every event of this batch (its `from`), and one
            // removed meanwhile is skipped by `deliver`.
            // `batch_` belongs to the one deliverer; swapping keeps both buffers' memory.
            std::swap(queue_, batch_);
            const std::vector<std::shared_ptr<subscriber>> subs = subs_;
            lock.unlock();
            for (const queued& next : batch_) {
                for (const auto& s : subs) {
                    deliver(*s, next);
                }
            }
            batch_.clear();
            lock.lock();
        }
    }

    /// Waits until every queued event has been delivered. From the delivering thread
    /// (inside a callback) it returns at once.
    void wait_idle() {
        std::unique_lock lock(mutex_);
        if (draining_ && drainer_ == std::this_thread::get_id()) {
            return;
        }
        idle_.wait(lock, [&] { return !draining_ && queue_.empty(); });
    }

    void cancel(std::uint64_t id) noexcept override {
        std::shared_ptr<subscriber> s = remove(id);
        if (s) {
            // Waits for a callback running on another thread; recursive, so a callback
            // may cancel its own subscription.
            const std::lock_guard running(s->running);
            s->active = false;
        }
    }

  private:
    struct subscriber {
        std::uint64_t id = 0;
        std::uint64_t from = 0; // the first event sequence number it receives
        callback f;
        std::recursive_mutex running; // held while its callback runs
        bool active = true;           // guarded by `running`
    };
    struct queued {
        std::uint64_t seq;
        Event event;
    };

    void deliver(subscriber& s, const queued& q) {
        std::unique_lock running(s.running);
        if (!s.active || q.seq < s.from) {
            return;
        }
        try {
            s.f(q.event);
        } catch (...) {
            // A subscriber that throws is dropped; the others and the publisher go on.
            s.active = false;
            running.unlock();
            remove(s.id);
        }
    }

    std::shared_ptr<subscriber> remove(std::uint64_t id) {
        const std::lock_guard lock(mutex_);
        for (auto it = subs_.begin(); it != subs_.end(); ++it) {
            if ((*it)->id == id) {
                std::shared_ptr<subscriber> s = std::move(*it);
                subs_.erase(it);
                count_.fetch_sub(1, std::memory_order_release);
                return s;
            }
        }
        return nullptr;
    }

    std::mutex mutex_;
    std::condition_variable idle_;
    std::vector<std::shared_ptr<subscriber>> subs_;
    std::vector<queued> queue_;
    std::vector<queued> batch_; // being delivered, by the deliverer only
    std::uint64_t next_seq_ = 0;
    std::uint64_t last_id_ = 0;
    bool draining_ = false;
    std::thread::id drainer_;
    std::atomic<std::size_t> count_{0};
};

} // namespace detail
} // namespace v0
} // namespace otpkv
