// SPDX-License-Identifier: MIT
// libFuzzer target for the line framer and the parser. It checks invariants, not survival:
//  1. the framer agrees with a reference model written the plain way (split at LF, drop
//     the CR before it; a line is too long when its content passes max_line, which for an
//     unterminated tail is known once it passes max_line + a possible trailing CR);
//  2. the same lines and the same verdict come out for three chunkings of one input: all
//     at once, one byte at a time, and chunk sizes the input chooses, through both `feed`
//     and `prepare`/`commit`; and for the input repeated past 6 KB, so that the buffer
//     (first allocation 4 KiB, more than most fuzz inputs) fills, compacts, and grows
//     under a pending partial line;
//  3. no line is longer than max_line or holds an LF, a drained framer holds at most
//     max_line + 1 bytes, and the views of a pulled batch stay valid until it is used,
//     also when the batch ends with too_long;
//  4. a parsed command's tokens are non-empty views into the line with no separator, the
//     command written back as a request parses to the same command (`request_line` too),
//     and a terminator added to the line changes nothing; an INFO's SECTION is a section
//     word and its NODE a node name, and it has no other token.
//  5. the input read as a stream of replies, to each kind of request: each reply read ends
//     with an LF and is no longer than the input, has as many lines as its shape (an
//     INFO's: as a plain model of its framing says), is not whole one byte earlier, reads
//     the same alone; a reply read as `known` is written back by `format_reply` with the
//     same bytes (up to the CR before each LF; an INFO's text: its lines, then OK), and
//     `parse_routed_reply` gives the same fields.
//  6. see check_handshake.
// Input layout: byte 0 picks max_line (1..96, small so that limits are hit often), byte 1
// seeds the chunk sizes, the rest is the byte stream.
#include <otpkv/command.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace {

// The lines, each followed by an LF (which no line holds), then the verdict: one string
// rather than a string per line keeps an execution cheap enough for a million of them.
struct outcome {
    std::string lines;
    std::size_t count = 0;
    bool too_long = false;
    void add(std::string_view line) {
        lines += line;
        lines += '\n';
        ++count;
    }
    bool operator==(const outcome&) const = default;
};

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant broken: %s\n", what);
        std::abort();
    }
}

outcome reference(std::string_view in, std::size_t max_line) {
    outcome out;
    std::size_t start = 0;
    for (;;) {
        const std::size_t lf = in.find('\n', start);
        std::string_view line =
            in.substr(start, lf == std::string_view::npos ? in.npos : lf - start);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        if (line.size() > max_line) {
            out.too_long = true;
            return out;
        }
        if (lf == std::string_view::npos) {
            return out; // a partial line is never a line
        }
        out.add(line);
        start = lf + 1;
    }
}

// Pulls every available line. The views are kept until the drain ends, as a server
// keeps a batch, so a view invalidated by a later next() (an overflow, say) is caught.
void drain(otpkv::line_framer& framer, outcome& out) {
    static std::vector<std::string_view> batch;
    batch.clear();
    for (;;) {
        const otpkv::frame f = framer.next();
        if (f.status != otpkv::frame_status::line) {
            out.too_long = f.status == otpkv::frame_status::too_long;
            break;
        }
        check(f.line.size() <= framer.max_line(), "line longer than max_line");
        check(f.line.find('\n') == std::string_view::npos, "line holds an LF");
        batch.push_back(f.line);
    }
    for (const std::string_view line : batch) {
        out.add(line);
    }
    check(framer.pending() <= framer.max_line() + 1, "drained framer holds too much");
}

// Feeds `in` in chunks whose sizes the seed picks, the way a server reads: through feed or
// through prepare(n) with a read of up to n bytes; sometimes several chunks before pulling
// (backpressure), sometimes giving memory back after a drain.
outcome frame_chunked(std::string_view in, std::size_t max_line, std::uint32_t seed,
                      std::size_t max_chunk) {
    otpkv::line_framer framer(max_line);
    outcome out;
    while (!in.empty()) {
        seed = seed * 1103515245U + 12345U;
        const std::uint32_t r = seed >> 8;
        // Mostly small chunks; one in eight up to max_chunk.
        const std::size_t limit = r % 8 == 0 ? max_chunk : 40;
        std::size_t n = std::min<std::size_t>(in.size(), 1 + (seed >> 16) % limit);
        if ((r >> 3) % 2 == 0) {
            framer.feed(in.substr(0, n));
        } else {
            const std::span<char> room = framer.prepare(n + (r >> 4) % 16);
            if (!room.empty()) { // empty once overflowed: nothing more is taken
                n = std::min(n, room.size());
                std::memcpy(room.data(), in.data(), n);
                framer.commit(n);
            }
        }
        in.remove_prefix(n);
        if ((r >> 5) % 4 != 0) {
            drain(framer, out);
            if ((r >> 7) % 8 == 0) {
                framer.shrink_to_fit();
            }
        }
    }
    drain(framer, out);
    return out;
}

// 6. the peer handshake's lines: what parses as a greeting, an answer or a proof is a
//    handshake line, is one of them only, and written back parses to the same fields.
void check_handshake(std::string_view line) {
    const auto greeting = otpkv::parse_peer_greeting(line);
    const auto answer = otpkv::parse_peer_answer(line);
    const auto proof = otpkv::parse_peer_proof(line);
    check((greeting ? 1 : 0) + (answer ? 1 : 0) + (proof ? 1 : 0) <= 1,
          "a line parses as two handshake steps");
    if (greeting || answer || proof) {
        check(otpkv::is_peer_handshake(line), "a handshake step is no handshake line");
        check(otpkv::parse(line).kind == otpkv::command_kind::unknown,
              "a handshake line parses as a request");
    }
    if (greeting) {
        check(otpkv::parse_peer_greeting(
                  otpkv::peer_greeting_line(greeting->name, greeting->nonce)) == greeting,
              "a greeting written back parses differently");
    }
    if (answer) {
        check(otpkv::parse_peer_answer(
                  otpkv::peer_answer_line(answer->name, answer->nonce, answer->proof)) == answer,
              "an answer written back parses differently");
    }
    if (proof) {
        check(otpkv::parse_peer_proof(otpkv::peer_proof_line(*proof)) == proof,
              "a proof written back parses differently");
    }
}

void check_parse(std::string_view line) {
    check_handshake(line);
    const otpkv::command cmd = otpkv::parse(line);
    check(cmd == otpkv::parse(std::string(line) + "\r\n"), "a terminator changed the parse");
    if (cmd.kind == otpkv::command_kind::unknown) {
        check(cmd == otpkv::command{}, "unknown command carries tokens");
        return;
    }
    if (cmd.kind == otpkv::command_kind::info) {
        check(cmd.bucket.empty() && cmd.key.empty() && cmd.value.empty(),
              "an INFO carries a bucket, key or value");
        check(cmd.section.empty() || otpkv::detail::is_info_section(cmd.section),
              "an INFO's section is no section word");
        check(cmd.node.empty() || otpkv::is_node_name(cmd.node), "an INFO's node is no node name");
    } else {
        check(cmd.section.empty() && cmd.node.empty(), "a command other than INFO has a section");
    }
    std::string request(otpkv::verb_name(cmd.kind));
    for (const std::string_view tok : {cmd.bucket, cmd.key, cmd.value, cmd.section, cmd.node}) {
        if (tok.empty()) {
            continue;
        }
        check(tok.data() >= line.data() && tok.data() + tok.size() <= line.data() + line.size(),
              "token is not a view into the line");
        for (const char c : tok) {
            check(!otpkv::is_token_separator(c), "token holds a separator");
        }
        request += ' ';
        request += tok;
    }
    check(otpkv::parse(request) == cmd, "written back, the command parses differently");
    check(otpkv::request_line(cmd) == request + "\r\n", "request_line writes another line");
}

// The plain model of an INFO reply's framing: one line when the first is NOT FOUND, UNKNOWN
// COMMAND or ERROR <reason>; else every line up to the first that is OK. Its size, or 0.
std::size_t info_reference(std::string_view in) {
    std::size_t start = 0;
    for (bool first = true;; first = false) {
        const std::size_t lf = in.find('\n', start);
        if (lf == std::string_view::npos) {
            return 0;
        }
        std::string_view line = in.substr(start, lf - start);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        if (line == "OK" || (first && (line == "NOT FOUND" || line == "UNKNOWN COMMAND" ||
                                       line.substr(0, 6) == "ERROR "))) {
            return lf + 1;
        }
        start = lf + 1;
    }
}

// The bytes with the CR before each LF removed: a reader accepts both line ends.
std::string bare_lf(std::string_view bytes) {
    std::string out;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (!(bytes[i] == '\r' && i + 1 < bytes.size() && bytes[i + 1] == '\n')) {
            out += bytes[i];
        }
    }
    return out;
}

void check_replies(std::string_view in) {
    using otpkv::command_kind;
    for (const command_kind kind :
         {command_kind::create, command_kind::put, command_kind::get, command_kind::erase,
          command_kind::subscribe, command_kind::unknown, command_kind::info}) {
        for (std::string_view rest = in;;) {
            const otpkv::reply_view r = otpkv::read_reply(kind, rest);
            if (kind == command_kind::info) {
                check(r.size == info_reference(rest), "an INFO reply framed unlike the model");
            }
            if (r.size == 0) {
                break;
            }
            check(r.size <= rest.size() && rest[r.size - 1] == '\n', "a reply ends past its LF");
            const std::string_view bytes = rest.substr(0, r.size);
            const auto lines =
                static_cast<std::size_t>(std::count(bytes.begin(), bytes.end(), '\n'));
            const bool two_lines = kind == command_kind::get &&
                                   r.outcome.kind != otpkv::reply_kind::not_found &&
                                   r.outcome.kind != otpkv::reply_kind::unknown_command &&
                                   !bytes.starts_with("ERROR ");
            if (kind != command_kind::info) {
                check(lines == (two_lines ? 2U : 1U), "a reply has the wrong number of lines");
            }
            check(otpkv::read_reply(kind, bytes.substr(0, r.size - 1)).size == 0,
                  "a reply is whole before its last byte");
            const otpkv::reply_view alone = otpkv::read_reply(kind, bytes);
            check(alone.size == r.size && alone.outcome == r.outcome && alone.known == r.known &&
                      alone.value == r.value && alone.node == r.node,
                  "a reply reads differently alone");
            const otpkv::routed_reply parsed = otpkv::parse_routed_reply(kind, std::string(bytes));
            if (r.known && kind == command_kind::info && r.outcome.kind == otpkv::reply_kind::ok) {
                check(bare_lf(std::string(r.value) + "OK\r\n") == bare_lf(bytes),
                      "an INFO's lines and OK are not its bytes");
                check(parsed.kind == otpkv::reply_kind::ok && parsed.value == r.value,
                      "parse_routed_reply disagrees with read_reply on an INFO");
            } else if (r.known) {
                otpkv::reply back{r.outcome.kind, r.value, r.outcome.code, r.node};
                check(bare_lf(otpkv::format_reply(back)) == bare_lf(bytes),
                      "a reply read does not write back to its bytes");
                check(parsed.kind == r.outcome.kind && parsed.error == r.outcome.code &&
                          parsed.value == r.value && parsed.node == r.node,
                      "parse_routed_reply disagrees with read_reply");
            } else {
                check(parsed.kind == otpkv::reply_kind::error &&
                          parsed.error == otpkv::error_code::internal,
                      "an unknown reply is not an internal error");
            }
            check(parsed.bytes == bytes, "parse_routed_reply changed the bytes");
            rest.remove_prefix(r.size);
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) {
        return 0;
    }
    const std::size_t max_line = 1 + data[0] % 96U;
    const std::uint32_t seed = data[1];
    const std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);

    const outcome expected = reference(in, max_line);

    otpkv::line_framer whole(max_line);
    outcome at_once;
    whole.feed(in);
    drain(whole, at_once);
    check(at_once == expected, "framer (one chunk) disagrees with the reference");

    otpkv::line_framer bytewise(max_line);
    outcome by_byte;
    for (std::size_t i = 0; i < in.size(); ++i) {
        bytewise.feed(in.substr(i, 1));
        drain(bytewise, by_byte);
    }
    drain(bytewise, by_byte);
    check(by_byte == expected, "framer (byte by byte) disagrees with the reference");
    check(frame_chunked(in, max_line, seed, 400) == expected,
          "framer (input-chosen chunks) disagrees with the reference");
    if (!in.empty()) {
        std::string repeated;
        while (repeated.size() < 6000) {
            repeated += in;
        }
        check(frame_chunked(repeated, max_line, seed, 6000) == reference(repeated, max_line),
              "framer (repeated input, large chunks) disagrees with the reference");
    }

    for (std::string_view rest = expected.lines; !rest.empty();) {
        const std::size_t lf = rest.find('\n');
        check_parse(rest.substr(0, lf));
        rest.remove_prefix(lf + 1);
    }
    check_replies(in);
    return 0;
}
