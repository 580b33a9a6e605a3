// SPDX-License-Identifier: MIT
/// @file
/// Umbrella header: includes every public otpkv header. Programs that want only a part
/// (say, the protocol without sockets) include that part's header instead.
#pragma once

#include <otpkv/bucket.hpp>
#include <otpkv/command.hpp>
#include <otpkv/config.hpp>
#include <otpkv/etcd.hpp>
#include <otpkv/log.hpp>
#include <otpkv/membership.hpp>
#include <otpkv/net/client.hpp>
#include <otpkv/net/poller.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/node.hpp>
#include <otpkv/observer.hpp>
#include <otpkv/process.hpp>
#include <otpkv/registry.hpp>
#include <otpkv/replication.hpp>
#include <otpkv/route.hpp>
#include <otpkv/router.hpp>
#include <otpkv/snapshot.hpp>
#include <otpkv/supervisor.hpp>
#include <otpkv/task.hpp>
#include <otpkv/version.hpp>
