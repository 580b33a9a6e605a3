// SPDX-License-Identifier: MIT
/// @file
/// The library's version: the one place it is written. CMake reads these macros, meson
/// checks its own copy against them, and a test checks the packaging files.
#pragma once

/// Major version; changes break the API or the ABI (the inline namespace follows it).
#define OTPKV_VERSION_MAJOR 0
/// Minor version; changes add features.
#define OTPKV_VERSION_MINOR 1
/// Patch version; changes only fix.
#define OTPKV_VERSION_PATCH 0

/// The version as one number, MAJOR * 10000 + MINOR * 100 + PATCH.
#define OTPKV_VERSION                                                                              \
    (OTPKV_VERSION_MAJOR * 10000 + OTPKV_VERSION_MINOR * 100 + OTPKV_VERSION_PATCH)

// The inline namespace is named after the major version: a major bump renames it.
static_assert(OTPKV_VERSION_MAJOR == 0, "rename otpkv's inline namespace v0 to the new major");

namespace otpkv {
inline namespace v0 {

/// The library's version as a value, for programs that log it.
struct version_info {
    int major; ///< OTPKV_VERSION_MAJOR
    int minor; ///< OTPKV_VERSION_MINOR
    int patch; ///< OTPKV_VERSION_PATCH
};

/// The version of the headers this translation unit was compiled with.
inline constexpr version_info version{OTPKV_VERSION_MAJOR, OTPKV_VERSION_MINOR,
                                      OTPKV_VERSION_PATCH};

} // namespace v0
} // namespace otpkv
