// SPDX-License-Identifier: MIT
/// @file
/// `registration<Source>`: what a `monitor_handle` and a `subscription` hold, the one place
/// where a handle undoes its registration when it is cancelled, moved over or dropped. Not
/// public API.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// A registration `id` with `source` (a monitor on a process's exit signal, a subscriber of
/// an event hub), undone by `source->cancel(id)` once: by `cancel`, by moving another
/// registration over it, or on destruction. Movable, not copyable; the source is kept alive
/// by it, so it may outlive what registered it.
///
/// Thread safety: one registration is used by one thread at a time.
template <class Source> class registration {
  public:
    registration() noexcept = default;
    registration(std::shared_ptr<Source> source, std::uint64_t id) noexcept
        : source_(std::move(source)), id_(id) {}
    registration(registration&& other) noexcept
        : source_(std::move(other.source_)), id_(std::exchange(other.id_, 0)) {}
    registration& operator=(registration&& other) noexcept {
        if (this != &other) {
            cancel();
            source_ = std::move(other.source_);
            id_ = std::exchange(other.id_, 0);
        }
        return *this;
    }
    registration(const registration&) = delete;
    registration& operator=(const registration&) = delete;
    ~registration() { cancel(); }

    /// True until cancelled (or moved from).
    [[nodiscard]] bool active() const noexcept { return source_ != nullptr; }

    /// Undoes the registration, if there is one.
    void cancel() noexcept {
        if (source_ != nullptr && id_ != 0) {
            source_->cancel(id_);
        }
        source_.reset();
        id_ = 0;
    }

  private:
    std::shared_ptr<Source> source_;
    std::uint64_t id_ = 0;
};

} // namespace detail
} // namespace v0
} // namespace otpkv
