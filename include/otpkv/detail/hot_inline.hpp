// SPDX-License-Identifier: MIT
/// @file
/// `OTPKV_DETAIL_HOT_INLINE`: asks the compiler to inline a function of a lookup's hot path
/// that it would otherwise call (GCC judges them by size, not by how often they run; a
/// string-key read made four calls: the hash, the probe, the guard's entry and its
/// instance). Not public API.
#pragma once

#if defined(__GNUC__)
#define OTPKV_DETAIL_HOT_INLINE [[gnu::always_inline]] inline
#else
#define OTPKV_DETAIL_HOT_INLINE inline
#endif
