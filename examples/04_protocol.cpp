// SPDX-License-Identifier: MIT
// Chapter "Doctests, patterns and with" of the guide: the protocol of our server.
//
// Reads requests from standard input, one per line, exactly as a node frames one
// connection's bytes, and shows for each the parsed command and the reply bytes the node
// sends back (escaped, so that "\r\n" is visible). The buckets are a toy std::map here, so
// that the protocol stands alone; 05_server puts the registry of 02_registry behind the same
// replies, on a TCP server.
//
//   printf 'CREATE shopping\nPUT shopping eggs 3\nGET shopping eggs\n' | ./04_protocol
//   ./04_protocol --max-line 16 < requests     (a smaller line limit than 65536)
#include <otpkv/command.hpp>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <string_view>

namespace {

using bucket = std::map<std::string, std::string, std::less<>>;

// The toy store: bucket name -> keys -> values.
struct toy_store {
    std::map<std::string, bucket, std::less<>> buckets;

    otpkv::reply run(const otpkv::command& cmd) {
        using otpkv::command_kind;
        using otpkv::reply;
        if (cmd.kind == command_kind::unknown) {
            return reply::unknown_command();
        }
        if (cmd.kind == command_kind::create) {
            buckets.try_emplace(std::string(cmd.bucket));
            return reply::ok();
        }
        const auto found = buckets.find(cmd.bucket);
        if (found == buckets.end()) {
            return reply::not_found();
        }
        bucket& b = found->second;
        switch (cmd.kind) {
        case command_kind::put:
            b.insert_or_assign(std::string(cmd.key), std::string(cmd.value));
            return reply::ok();
        case command_kind::get: {
            const auto value = b.find(cmd.key);
            return value == b.end() ? reply::missing() : reply::found(value->second);
        }
        case command_kind::erase:
            b.erase(std::string(cmd.key));
            return reply::ok();
        default: // subscribe
            return reply::subscribed();
        }
    }
};

// What a subscriber is sent from then on, shown with placeholders.
std::string event_shapes() {
    std::string shapes;
    otpkv::append_set_event(shapes, "k", "v");
    otpkv::append_deleted_event(shapes, "k");
    return otpkv::escaped(shapes);
}

} // namespace

int main(int argc, char** argv) {
    std::size_t max_line = otpkv::default_max_line;
    if (argc == 3 && std::string_view(argv[1]) == "--max-line") {
        max_line = std::strtoull(argv[2], nullptr, 10);
    } else if (argc != 1) {
        std::cerr << "usage: " << argv[0] << " [--max-line BYTES] < requests\n";
        return 2;
    }
    otpkv::line_framer framer(max_line);
    toy_store store;
    bool subscribed = false;
    char chunk[4096];
    for (std::size_t n; (n = std::fread(chunk, 1, sizeof chunk, stdin)) > 0;) {
        framer.feed({chunk, n});
        for (otpkv::frame f = framer.next(); f.status != otpkv::frame_status::incomplete;
             f = framer.next()) {
            if (f.status == otpkv::frame_status::too_long) {
                // The node answers, then closes the connection: nothing more is read.
                const auto bytes =
                    otpkv::format_reply(otpkv::reply::error(otpkv::error_code::line_too_long));
                std::cout << "request  (longer than " << framer.max_line() << " bytes)\n"
                          << "reply    \"" << otpkv::escaped(bytes) << "\" and close\n";
                return 0;
            }
            std::cout << "request  \"" << otpkv::escaped(f.line) << "\"";
            if (subscribed) {
                std::cout << " ignored: this connection subscribed\n";
                continue;
            }
            const otpkv::command cmd = otpkv::parse(f.line);
            const otpkv::reply r = store.run(cmd);
            std::cout << "\ncommand  " << otpkv::to_string(cmd) << "\n"
                      << "reply    \"" << otpkv::escaped(otpkv::format_reply(r)) << "\"\n";
            if (r.kind == otpkv::reply_kind::subscribed) {
                subscribed = true;
                std::cout << "         then events from any client: \"" << event_shapes() << "\"\n";
            }
        }
    }
    if (framer.pending() > 0) {
        std::cout << "(input ended inside a line of " << framer.pending()
                  << " bytes: it is dropped, never run)\n";
    }
    return 0;
}
