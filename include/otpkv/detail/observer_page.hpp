// SPDX-License-Identifier: MIT
/// @file
/// The admin port's `/` page (net/admin.hpp). A minimal placeholder: the page that draws
/// the supervision trees replaces it.
#pragma once

#include <string_view>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// The HTML page the admin server serves at `/`: self-contained (no outside URL).
inline constexpr std::string_view observer_page =
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>otpkv</title></head>\n"
    "<body><h1>otpkv</h1><p><a href=\"/tree.json\">tree.json</a> "
    "<a href=\"/cluster.json\">cluster.json</a> <a "
    "href=\"/metrics\">metrics</a></p></body></html>\n";

} // namespace detail
} // namespace v0
} // namespace otpkv
