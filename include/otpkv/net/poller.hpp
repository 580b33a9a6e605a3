// SPDX-License-Identifier: MIT
/// @file
/// The readiness mechanism a server's event loops (and a node_client's I/O thread) use:
/// public, since `server_options` and tests name it; the pollers themselves are in
/// detail/socket.hpp.
#pragma once

#include <cstdint>

namespace otpkv {
inline namespace v0 {

/// Which readiness mechanism a server's event loops use.
enum class poller_kind : std::uint8_t {
    automatic, ///< epoll on Linux, poll(2) elsewhere
    epoll,     ///< Linux only; elsewhere `start` fails
    poll       ///< poll(2): portable, O(connections) per wake-up
};

} // namespace v0
} // namespace otpkv
