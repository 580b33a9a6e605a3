// SPDX-License-Identifier: MIT
/// @file
/// Callbacks across threads: `unique_function`, a move-only callable (what a forwarded
/// request's reply is handed to), and `wait_for_callback`, which turns a call that answers
/// through a callback into one that blocks for the answer. Not public API.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>

namespace otpkv {
inline namespace v0 {
namespace detail {
/// A callable that may be moved but not copied (C++23's `std::move_only_function`, for
/// C++20): what a forwarded request's reply is handed to, since that usually owns a
/// move-only `deferred_reply`.
///
/// Thread safety: none of its own; one callable is called by one thread at a time.
template <class Signature> class unique_function;
template <class R, class... Args> class unique_function<R(Args...)> {
  public:
    unique_function() = default;
    template <class F>
    requires(!std::is_same_v<std::decay_t<F>, unique_function> &&
             std::is_invocable_r_v<R, F&, Args...>)
        unique_function(
            F&& f) // NOLINT(google-explicit-constructor): a callable, like std::function
        : call_(std::make_unique<holder<std::decay_t<F>>>(std::forward<F>(f))) {}
    R operator()(Args... args) { return call_->invoke(std::move(args)...); }
    explicit operator bool() const noexcept { return call_ != nullptr; }

  private:
    struct base {
        virtual ~base() = default;
        // By reference: an argument is moved once, into the callable (GCC 12 at -O1 also
        // warns of an uninitialized empty std::optional when it is moved twice).
        virtual R invoke(Args&&... args) = 0;
    };
    template <class F> struct holder final : base {
        explicit holder(F&& f) : fn(std::move(f)) {}
        explicit holder(const F& f) : fn(f) {}
        R invoke(Args&&... args) override { return fn(std::forward<Args>(args)...); }
        F fn;
    };
    std::unique_ptr<base> call_;
};

/// Calls `start` with a callback taking a `T`, and blocks until that callback has run (on
/// any thread, or inside `start`); returns what it was given.
template <class T, class Start> T wait_for_callback(Start&& start) {
    std::mutex mutex;
    std::condition_variable ready;
    std::optional<T> result;
    std::forward<Start>(start)([&](T value) {
        const std::lock_guard lock(mutex); // notified under the lock: the waiter's frame lives
        result.emplace(std::move(value));
        ready.notify_one();
    });
    std::unique_lock lock(mutex);
    ready.wait(lock, [&] { return result.has_value(); });
    return std::move(*result);
}
} // namespace detail

} // namespace v0
} // namespace otpkv
