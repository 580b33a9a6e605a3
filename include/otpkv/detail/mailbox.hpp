// SPDX-License-Identifier: MIT
/// @file
/// `mailbox<T>`: how other threads hand work to an I/O thread (a server's event loop, a
/// node_client's loop), waking it through its `wake_pipe`. Not public API.
#pragma once

#include <otpkv/detail/socket.hpp>

#include <mutex>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// What other threads hand an I/O thread, woken through its `wake_pipe` when the first item
/// arrives (one wake-up for a burst). The thread takes everything at once.
///
/// Thread safety: `post` from any thread; `take` and `close` from the I/O thread that owns
/// it (each takes the mailbox's lock, so they are safe from anywhere).
template <class T> class mailbox {
  public:
    explicit mailbox(const wake_pipe& wake) noexcept : wake_(wake) {}

    /// From any thread. False once closed (the item is left with the caller).
    bool post(T&& item) {
        bool first = false;
        {
            const std::lock_guard lock(mutex_);
            if (closed_) {
                return false;
            }
            first = items_.empty();
            items_.push_back(std::move(item));
        }
        if (first) {
            wake_.notify();
        }
        return true;
    }
    /// Moves everything posted into `into` (which the caller has emptied).
    void take(std::vector<T>& into) {
        const std::lock_guard lock(mutex_);
        into.swap(items_);
    }
    /// Refuses every later `post`; what was posted before is still there to take.
    void close() {
        const std::lock_guard lock(mutex_);
        closed_ = true;
    }

  private:
    const wake_pipe& wake_;
    std::mutex mutex_;
    bool closed_ = false;
    std::vector<T> items_;
};

} // namespace detail
} // namespace v0
} // namespace otpkv
