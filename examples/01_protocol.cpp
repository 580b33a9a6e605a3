// SPDX-License-Identifier: MIT
// Chapter "Doctests, patterns and with" of the guide: the protocol of our server.
//
// Reads requests from standard input, one per line, exactly as a node would frame them,
// and shows for each the parsed command and the reply bytes a node sends back (escaped,
// so that "\r\n" is visible). The buckets here are a toy std::map; later chapters put
// real buckets and a registry behind the same replies.
//
//   printf 'CREATE shopping\nPUT shopping eggs 3\nGET shopping eggs\n' | ./01_protocol
#include <otpkv/command.hpp>

#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <string>

namespace {

using bucket = std::map<std::string, std::string, std::less<>>;

// The toy store: bucket name -> keys -> values, plus which buckets have a subscriber.
struct toy_store {
    std::map<std::string, bucket, std::less<>> buckets;
    std::set<std::string, std::less<>> subscribed;

    // Runs one command. `events` receives what a subscriber of the bucket would be sent.
    otpkv::reply run(const otpkv::command& cmd, std::string& events) {
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
        const bool watched = subscribed.contains(cmd.bucket);
        switch (cmd.kind) {
        case command_kind::put:
            b.insert_or_assign(std::string(cmd.key), std::string(cmd.value));
            if (watched) {
                otpkv::append_set_event(events, cmd.key, cmd.value);
            }
            return reply::ok();
        case command_kind::get: {
            const auto value = b.find(cmd.key);
            return value == b.end() ? reply::missing() : reply::found(value->second);
        }
        case command_kind::del:
            b.erase(std::string(cmd.key));
            if (watched) {
                otpkv::append_deleted_event(events, cmd.key);
            }
            return reply::ok();
        case command_kind::subscribe:
            subscribed.emplace(cmd.bucket);
            return reply::silent();
        default:
            return reply::unknown_command();
        }
    }
};

} // namespace

int main() {
    otpkv::line_framer framer; // lines of up to otpkv::default_max_line bytes
    toy_store store;
    char chunk[4096];
    for (;;) {
        const std::size_t n = std::fread(chunk, 1, sizeof chunk, stdin);
        if (n == 0) {
            break;
        }
        framer.feed({chunk, n});
        for (otpkv::frame f = framer.next(); f.status != otpkv::frame_status::incomplete;
             f = framer.next()) {
            if (f.status == otpkv::frame_status::too_long) {
                // A node answers, then closes the connection: nothing more is read.
                const auto bytes =
                    otpkv::format_reply(otpkv::reply::error(otpkv::error_code::line_too_long));
                std::cout << "request  (longer than " << framer.max_line() << " bytes)\n"
                          << "reply    \"" << otpkv::escaped(bytes) << "\" and close\n";
                return 0;
            }
            const otpkv::command cmd = otpkv::parse(f.line);
            std::string events;
            const std::string bytes = otpkv::format_reply(store.run(cmd, events));
            std::cout << "request  \"" << otpkv::escaped(f.line) << "\"\n"
                      << "command  " << otpkv::to_string(cmd) << "\n"
                      << "reply    \"" << otpkv::escaped(bytes) << "\"\n";
            if (!events.empty()) {
                std::cout << "event    \"" << otpkv::escaped(events) << "\"\n";
            }
        }
    }
    if (framer.pending() > 0) {
        std::cout << "(input ended inside a line of " << framer.pending()
                  << " bytes: it is dropped, never run)\n";
    }
    return 0;
}
