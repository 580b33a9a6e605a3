// SPDX-License-Identifier: MIT
/// @file
/// Part of <otpkv/observer.hpp>: not yet written.
#pragma once
