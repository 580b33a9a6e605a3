// SPDX-License-Identifier: MIT
/// @file
/// A small JSON reader (RFC 8259) that builds a tree: `parse_json` and `json_value`, for
/// reading replies such as etcd's v3 JSON gateway's
/// (`{"header":{"revision":"5"},"kvs":[{"key":"Zm9v","value":"YmF6"}],"count":"1"}`). Not a
/// general JSON library: no writer (observer_json.hpp writes), no pointers, no mutation.
///
/// The grammar is RFC 8259's, strictly: one value with optional whitespace around it and
/// nothing else; no leading zeros, `+`, `.5` or `1.`; strings hold valid UTF-8 (RFC 3629: no
/// overlong forms, no surrogates, at most U+10FFFF) and no raw control byte below 0x20;
/// escapes are `\" \\ \/ \b \f \n \r \t` and `\u` with four hex digits. A tree's strings are
/// UTF-8, so a `\u` escape of a UTF-16 surrogate must be a high one followed at once by an
/// escaped low one (the pair becomes one 4-byte sequence); `\u0000` gives a NUL byte.
/// Nesting is bounded (`max_depth`), and the parser keeps its own stack on the heap, so a
/// hostile `[[[[...` is refused, never a stack overflow.
///
/// The same grammar also serves `is_json_object` (observer_json.hpp), which only checks and
/// builds nothing: `json_parser` in its `check` mode. That mode follows RFC 8259's ABNF
/// literally and accepts any four hex digits after `\u` (a lone surrogate too, as the ABNF
/// does), since nothing is decoded.
///
/// Numbers are kept as the text that was written (`text()`); `integer()` reads the
/// integers, and also the strings that hold one, as protobuf's JSON mapping writes 64-bit
/// integers as strings (`"revision":"5"`).
///
/// Thread safety: `json_value` is a plain value: its const members may be called from
/// several threads at once, as long as none modifies it (assignment). `parse_json` is pure.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// The six kinds of JSON value.
enum class json_type : std::uint8_t { null, boolean, number, string, array, object };

class json_parser;

/// One JSON value, as `parse_json` read it: a null, a boolean, a number (kept as written), a
/// string (unescaped UTF-8), an array of values or an object of named values in the order
/// written. A default-constructed value is a null.
///
/// Copying copies the whole tree; copying and destroying recurse once per level of nesting,
/// which `parse_json`'s `max_depth` bounds.
///
/// Thread safety: a plain value; const members may run on several threads at once.
class json_value {
  public:
    /// A null.
    json_value() = default;

    /// Which kind of value this is.
    [[nodiscard]] json_type type() const noexcept { return type_; }
    /// True for `null` (and for the value `at` gives for a missing member).
    [[nodiscard]] bool is_null() const noexcept { return type_ == json_type::null; }
    /// True for `true` and `false`.
    [[nodiscard]] bool is_bool() const noexcept { return type_ == json_type::boolean; }
    /// True for a number.
    [[nodiscard]] bool is_number() const noexcept { return type_ == json_type::number; }
    /// True for a string.
    [[nodiscard]] bool is_string() const noexcept { return type_ == json_type::string; }
    /// True for an array.
    [[nodiscard]] bool is_array() const noexcept { return type_ == json_type::array; }
    /// True for an object.
    [[nodiscard]] bool is_object() const noexcept { return type_ == json_type::object; }

    /// True only for the boolean `true`; false for `false` and for every other kind.
    [[nodiscard]] bool boolean() const noexcept { return boolean_; }
    /// A string's unescaped UTF-8 bytes (NUL bytes included, from `\u0000`); a number's text
    /// exactly as written (`-1.50e+3`); empty for the other kinds.
    [[nodiscard]] std::string_view text() const noexcept { return text_; }
    /// The value as a 64-bit integer: a number written without fraction or exponent, or a
    /// string whose whole content is such a number (`"5"`, `"-12"`; not `"05"`, `" 5"`,
    /// `"+5"`, `""`), when it fits `std::int64_t`. Otherwise (another kind, `1.0`, `1e3`,
    /// out of range) nullopt.
    [[nodiscard]] std::optional<std::int64_t> integer() const noexcept;
    /// An array's elements in order; empty for the other kinds.
    [[nodiscard]] const std::vector<json_value>& items() const noexcept { return items_; }
    /// An object's members (name, value) in the order written, repeated names included;
    /// empty for the other kinds.
    [[nodiscard]] const std::vector<std::pair<std::string, json_value>>& members() const noexcept {
        return members_;
    }
    /// The member named `key` (the last one, when the name is repeated), or nullptr when
    /// there is none or this is not an object. Linear in the number of members.
    [[nodiscard]] const json_value* find(std::string_view key) const noexcept;
    /// The member named `key` as `find` picks it, or a null value when there is none, so that
    /// lookups chain: `reply.at("header").at("revision").integer()`.
    [[nodiscard]] const json_value& at(std::string_view key) const noexcept;

  private:
    friend class json_parser;

    json_type type_ = json_type::null;
    bool boolean_ = false;
    std::string text_{};
    std::vector<json_value> items_{};
    std::vector<std::pair<std::string, json_value>> members_{};
};

/// Reads `text`, which must be exactly one JSON value with nothing but whitespace (space,
/// tab, CR, LF) around it, by the rules at the top of this file. Arrays and objects may nest
/// at most `max_depth` deep (`[1]` is depth 1; with `max_depth` 0 only a scalar passes).
/// On failure returns nullopt and, when `why` is not null, sets `*why` to a short reason with
/// the byte offset where reading stopped, as in `at byte 17: expected ':'`; on success `*why`
/// is left as it was. Linear in the size of `text`.
[[nodiscard]] std::optional<json_value> parse_json(std::string_view text,
                                                   std::string* why = nullptr, int max_depth = 64);

/// The length of the well-formed UTF-8 sequence at the start of `s`, or 0 when the first
/// byte does not start one (RFC 3629's table: no overlong forms, no surrogates, at most
/// U+10FFFF). `s` must not be empty.
[[nodiscard]] std::size_t utf8_sequence(std::string_view s) noexcept;

/// The value of `text` when it is an integer in JSON's grammar (`-?(0|[1-9][0-9]*)`, nothing
/// else) that fits `std::int64_t`; otherwise nullopt.
[[nodiscard]] std::optional<std::int64_t> json_integer_text(std::string_view text) noexcept;

/// The one implementation of the grammar, behind `parse_json` (mode `tree`) and
/// `is_json_object` (mode `check`: builds nothing, and takes `\u` escapes as the ABNF does,
/// without pairing surrogates). Iterative: its stack of open arrays and objects is a vector.
///
/// Thread safety: one object per parse, on one thread.
class json_parser {
  public:
    /// What a parse produces.
    enum class mode : std::uint8_t {
        tree, ///< the `json_value`; surrogates in `\u` escapes must pair up
        check ///< nothing but the verdict and the top value's type
    };

    /// A parser of `text` (which must outlive it).
    json_parser(std::string_view text, int max_depth, mode m) noexcept
        : s_(text), max_depth_(max_depth), mode_(m) {}

    /// Reads the whole text. True when it is one valid JSON value; then `take_result()` gives it
    /// (mode `tree`) or just its type (mode `check`). False otherwise, with `error_offset()`
    /// and `error()` saying where and why.
    [[nodiscard]] bool run();
    /// The value read (mode `tree`: the whole tree; mode `check`: an empty value of the right
    /// type). Moved out: call once, after `run` returned true.
    [[nodiscard]] json_value take_result() noexcept { return std::move(result_); }
    /// After a failed `run`: the byte offset where reading stopped.
    [[nodiscard]] std::size_t error_offset() const noexcept { return error_at_; }
    /// After a failed `run`: what was wrong there (`expected ':'`).
    [[nodiscard]] std::string_view error() const noexcept { return error_; }

  private:
    struct frame {
        json_value value; // the array or object being filled
        std::string key;  // an object's member name waiting for its value
    };

    bool fail(std::size_t at, std::string_view what) noexcept;
    void space() noexcept;
    [[nodiscard]] bool at_end() const noexcept { return i_ >= s_.size(); }
    bool open(char bracket);
    bool member_name();
    bool scalar(json_value& out);
    bool number(json_value& out);
    bool literal(std::string_view word) noexcept;
    bool string(std::string& out);
    bool escape(std::string& out);
    bool hex4(std::size_t at, unsigned& out) noexcept;
    bool close_or_continue(json_value& done, bool& finished);

    std::string_view s_;
    std::size_t i_ = 0;
    int max_depth_;
    mode mode_;
    std::vector<frame> stack_{};
    json_value result_{};
    std::size_t error_at_ = 0;
    std::string_view error_{};
};

// =======================================================================================
// Implementation
// =======================================================================================

inline std::size_t utf8_sequence(std::string_view s) noexcept {
    const auto at = [&s](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned char b0 = at(0);
    const auto tail = [&](std::size_t n, unsigned char lo, unsigned char hi) -> std::size_t {
        if (s.size() < n || at(1) < lo || at(1) > hi) {
            return 0;
        }
        for (std::size_t i = 2; i < n; ++i) {
            if (at(i) < 0x80 || at(i) > 0xbf) {
                return 0;
            }
        }
        return n;
    };
    if (b0 < 0x80) {
        return 1;
    }
    if (b0 >= 0xc2 && b0 <= 0xdf) {
        return tail(2, 0x80, 0xbf);
    }
    if (b0 == 0xe0) {
        return tail(3, 0xa0, 0xbf);
    }
    if (b0 == 0xed) {
        return tail(3, 0x80, 0x9f); // not the surrogates
    }
    if (b0 >= 0xe1 && b0 <= 0xef) {
        return tail(3, 0x80, 0xbf);
    }
    if (b0 == 0xf0) {
        return tail(4, 0x90, 0xbf);
    }
    if (b0 >= 0xf1 && b0 <= 0xf3) {
        return tail(4, 0x80, 0xbf);
    }
    if (b0 == 0xf4) {
        return tail(4, 0x80, 0x8f); // at most U+10FFFF
    }
    return 0;
}

inline std::optional<std::int64_t> json_integer_text(std::string_view text) noexcept {
    std::size_t i = 0;
    if (i < text.size() && text[i] == '-') {
        ++i;
    }
    if (i >= text.size() || text[i] < '0' || text[i] > '9') {
        return std::nullopt;
    }
    if (text[i] == '0' && i + 1 < text.size()) {
        return std::nullopt; // a leading zero, or something after "0"
    }
    for (std::size_t k = i; k < text.size(); ++k) {
        if (text[k] < '0' || text[k] > '9') {
            return std::nullopt;
        }
    }
    std::int64_t value = 0;
    const char* const end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc{} || ptr != end) {
        return std::nullopt; // out of range
    }
    return value;
}

inline std::optional<std::int64_t> json_value::integer() const noexcept {
    if (type_ != json_type::number && type_ != json_type::string) {
        return std::nullopt;
    }
    return json_integer_text(text_);
}

inline const json_value* json_value::find(std::string_view key) const noexcept {
    const auto it = std::find_if(members_.rbegin(), members_.rend(),
                                 [key](const auto& member) { return member.first == key; });
    return it != members_.rend() ? &it->second : nullptr;
}

inline const json_value& json_value::at(std::string_view key) const noexcept {
    static const json_value null_value; // immutable: shared by every missing member
    const json_value* found = find(key);
    return found != nullptr ? *found : null_value;
}

inline bool json_parser::fail(std::size_t at, std::string_view what) noexcept {
    error_at_ = at;
    error_ = what;
    return false;
}

inline void json_parser::space() noexcept {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
        ++i_;
    }
}

inline bool json_parser::run() {
    // One loop over values: a scalar, or the opening of an array or object (pushed on
    // `stack_`); after each complete value, `close_or_continue` files it in its container
    // and reads the `,` or the closing brackets that follow.
    for (;;) {
        space();
        if (at_end()) {
            return fail(i_, "unexpected end of text");
        }
        const char c = s_[i_];
        json_value done;
        if (c == '[' || c == '{') {
            if (!open(c)) {
                return false;
            }
            space();
            const char end = c == '[' ? ']' : '}';
            if (i_ < s_.size() && s_[i_] == end) {
                ++i_;
                done = std::move(stack_.back().value);
                stack_.pop_back();
            } else {
                if (c == '{' && !member_name()) {
                    return false;
                }
                continue;
            }
        } else if (!scalar(done)) {
            return false;
        }
        bool finished = false;
        if (!close_or_continue(done, finished)) {
            return false;
        }
        if (finished) {
            return true;
        }
    }
}

inline bool json_parser::open(char bracket) {
    if (max_depth_ <= 0 || stack_.size() >= static_cast<std::size_t>(max_depth_)) {
        return fail(i_, "nested too deeply");
    }
    ++i_;
    stack_.emplace_back();
    stack_.back().value.type_ = bracket == '[' ? json_type::array : json_type::object;
    return true;
}

inline bool json_parser::member_name() {
    if (at_end()) {
        return fail(i_, "unexpected end of text");
    }
    if (s_[i_] != '"') {
        return fail(i_, "expected a member name");
    }
    std::string& key = stack_.back().key;
    key.clear();
    if (!string(key)) {
        return false;
    }
    space();
    if (at_end()) {
        return fail(i_, "unexpected end of text");
    }
    if (s_[i_] != ':') {
        return fail(i_, "expected ':'");
    }
    ++i_;
    return true;
}

inline bool json_parser::close_or_continue(json_value& done, bool& finished) {
    for (;;) {
        if (stack_.empty()) {
            space();
            if (!at_end()) {
                return fail(i_, "unexpected bytes after the value");
            }
            if (mode_ == mode::tree) {
                result_ = std::move(done);
            } else {
                result_.type_ = done.type_;
            }
            finished = true;
            return true;
        }
        frame& top = stack_.back();
        const bool object = top.value.type_ == json_type::object;
        if (mode_ == mode::tree) {
            if (object) {
                top.value.members_.emplace_back(std::move(top.key), std::move(done));
            } else {
                top.value.items_.push_back(std::move(done));
            }
        }
        space();
        if (at_end()) {
            return fail(i_, "unexpected end of text");
        }
        const char c = s_[i_];
        if (c == ',') {
            ++i_;
            if (object) {
                space();
                return member_name();
            }
            return true;
        }
        if (c != (object ? '}' : ']')) {
            return fail(i_, object ? "expected ',' or '}'" : "expected ',' or ']'");
        }
        ++i_;
        done = std::move(top.value);
        stack_.pop_back();
    }
}

inline bool json_parser::scalar(json_value& out) {
    const char c = s_[i_];
    if (c == '"') {
        out.type_ = json_type::string;
        return string(out.text_);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        return number(out);
    }
    if (c == 't' || c == 'f') {
        out.type_ = json_type::boolean;
        out.boolean_ = c == 't';
        return literal(c == 't' ? "true" : "false");
    }
    if (c == 'n') {
        return literal("null");
    }
    return fail(i_, "expected a value");
}

inline bool json_parser::literal(std::string_view word) noexcept {
    if (s_.substr(i_, word.size()) != word) {
        return fail(i_, "invalid literal");
    }
    i_ += word.size();
    return true;
}

inline bool json_parser::number(json_value& out) {
    const auto digit = [this] { return i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9'; };
    const std::size_t from = i_;
    if (s_[i_] == '-') {
        ++i_;
        if (!digit()) {
            return fail(i_, "expected a digit after '-'");
        }
    }
    if (s_[i_] == '0') {
        ++i_;
        if (digit()) {
            return fail(i_ - 1, "leading zero in a number");
        }
    } else {
        while (digit()) {
            ++i_;
        }
    }
    if (i_ < s_.size() && s_[i_] == '.') {
        ++i_;
        if (!digit()) {
            return fail(i_, "expected a digit after '.'");
        }
        while (digit()) {
            ++i_;
        }
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
        ++i_;
        if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) {
            ++i_;
        }
        if (!digit()) {
            return fail(i_, "expected a digit in the exponent");
        }
        while (digit()) {
            ++i_;
        }
    }
    out.type_ = json_type::number;
    if (mode_ == mode::tree) {
        out.text_.assign(s_.substr(from, i_ - from));
    }
    return true;
}

inline bool json_parser::string(std::string& out) {
    const std::size_t open_at = i_;
    ++i_; // the opening quote
    while (i_ < s_.size()) {
        const auto u = static_cast<unsigned char>(s_[i_]);
        if (u == '"') {
            ++i_;
            return true;
        }
        if (u < 0x20) {
            return fail(i_, "control character in a string");
        }
        if (u == '\\') {
            if (!escape(out)) {
                return false;
            }
            continue;
        }
        const std::size_t n = utf8_sequence(s_.substr(i_));
        if (n == 0) {
            return fail(i_, "invalid UTF-8 in a string");
        }
        if (mode_ == mode::tree) {
            out.append(s_.substr(i_, n));
        }
        i_ += n;
    }
    return fail(open_at, "unterminated string");
}

inline bool json_parser::hex4(std::size_t at, unsigned& out) noexcept {
    out = 0;
    for (std::size_t k = 0; k < 4; ++k) {
        if (at + k >= s_.size()) {
            return false;
        }
        const char h = s_[at + k];
        unsigned d = 0;
        if (h >= '0' && h <= '9') {
            d = static_cast<unsigned>(h - '0');
        } else if (h >= 'a' && h <= 'f') {
            d = static_cast<unsigned>(h - 'a') + 10U;
        } else if (h >= 'A' && h <= 'F') {
            d = static_cast<unsigned>(h - 'A') + 10U;
        } else {
            return false;
        }
        out = out * 16U + d;
    }
    return true;
}

inline bool json_parser::escape(std::string& out) {
    const std::size_t backslash = i_;
    if (i_ + 1 >= s_.size()) {
        return fail(backslash, "unterminated string");
    }
    const char e = s_[i_ + 1];
    constexpr std::string_view from = "\"\\/bfnrt";
    constexpr std::string_view to = "\"\\/\b\f\n\r\t";
    if (const std::size_t k = from.find(e); k != std::string_view::npos) {
        if (mode_ == mode::tree) {
            out += to[k];
        }
        i_ += 2;
        return true;
    }
    if (e != 'u') {
        return fail(backslash, "invalid escape");
    }
    unsigned unit = 0;
    if (!hex4(i_ + 2, unit)) {
        return fail(backslash, "invalid \\u escape");
    }
    i_ += 6;
    if (mode_ == mode::check) {
        return true; // the ABNF takes any four hex digits
    }
    std::uint32_t cp = unit;
    if (unit >= 0xdc00 && unit <= 0xdfff) {
        return fail(backslash, "unpaired low surrogate");
    }
    if (unit >= 0xd800 && unit <= 0xdbff) {
        unsigned low = 0;
        if (i_ + 1 >= s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u' || !hex4(i_ + 2, low) ||
            low < 0xdc00 || low > 0xdfff) {
            return fail(backslash, "unpaired high surrogate");
        }
        i_ += 6;
        cp = 0x10000U + ((unit - 0xd800U) << 10U) + (low - 0xdc00U);
    }
    const auto byte = [](std::uint32_t v) {
        return static_cast<char>(static_cast<unsigned char>(v));
    };
    if (cp < 0x80) {
        out += byte(cp);
    } else if (cp < 0x800) {
        out += byte(0xc0U | (cp >> 6U));
        out += byte(0x80U | (cp & 0x3fU));
    } else if (cp < 0x10000) {
        out += byte(0xe0U | (cp >> 12U));
        out += byte(0x80U | ((cp >> 6U) & 0x3fU));
        out += byte(0x80U | (cp & 0x3fU));
    } else {
        out += byte(0xf0U | (cp >> 18U));
        out += byte(0x80U | ((cp >> 12U) & 0x3fU));
        out += byte(0x80U | ((cp >> 6U) & 0x3fU));
        out += byte(0x80U | (cp & 0x3fU));
    }
    return true;
}

inline std::optional<json_value> parse_json(std::string_view text, std::string* why,
                                            int max_depth) {
    json_parser parser(text, max_depth, json_parser::mode::tree);
    if (!parser.run()) {
        if (why != nullptr) {
            *why = "at byte " + std::to_string(parser.error_offset()) + ": ";
            *why += parser.error();
        }
        return std::nullopt;
    }
    return parser.take_result();
}

} // namespace detail
} // namespace v0
} // namespace otpkv
