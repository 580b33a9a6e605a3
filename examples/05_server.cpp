// SPDX-License-Identifier: MIT
// Chapter "Task and gen_tcp" of the guide: the server, inside your own program.
//
// kv_server is one program that runs otpkv's TCP server; any program can run it. This one
// owns a registry and a server for it on 127.0.0.1, on a port the kernel picks, and then
// talks to itself over loopback as any client would: it sends each line of its standard
// input on one connection and prints the exact bytes of the reply. Its own code uses the
// same buckets directly meanwhile: it makes one before any client comes and reads what the
// client wrote. Then a second connection subscribes to that bucket and receives the events
// of writes the program makes, and everything stops.
//
//   printf 'PUT shopping milk 1\nGET shopping milk\n' | ./05_server
#include <otpkv/command.hpp>
#include <otpkv/net/server.hpp>
#include <otpkv/registry.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace {

// A blocking client of the line protocol, the kind any program in any language can write:
// connect, send a line, read until the reply is whole.
class loopback_client {
  public:
    explicit loopback_client(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(port);
        // A reply that never comes fails the read after 10 s instead of hanging forever.
        const timeval limit{10, 0};
        connected_ = fd_ >= 0 &&
                     ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) == 0 &&
                     ::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
    }
    ~loopback_client() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    loopback_client(const loopback_client&) = delete;
    loopback_client& operator=(const loopback_client&) = delete;

    [[nodiscard]] bool connected() const { return connected_; }

    // Sends one request line (LF ends it; CR LF would do as well).
    void send_line(std::string_view line) {
        const std::string bytes = std::string(line) + "\n";
        for (std::size_t sent = 0; sent < bytes.size();) {
            // MSG_NOSIGNAL: a connection the server closed is an error here, not SIGPIPE.
            const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
            if (n <= 0) {
                return; // the read that follows reports the closed connection
            }
            sent += static_cast<std::size_t>(n);
        }
    }

    // The whole reply to a request of `kind`: one line, or a GET's value and OK.
    // otpkv::read_reply says how many buffered bytes make it. "" if the connection ended.
    std::string read_reply(otpkv::command_kind kind) {
        return read([kind](std::string_view in) { return otpkv::read_reply(kind, in).size; });
    }

    // One line: what a subscriber receives for each write to its bucket.
    std::string read_line() {
        return read([](std::string_view in) {
            const std::size_t end = in.find('\n');
            return end == std::string_view::npos ? 0 : end + 1;
        });
    }

  private:
    template <class Whole> std::string read(Whole whole) {
        for (;;) {
            if (const std::size_t n = whole(std::string_view(in_)); n > 0) {
                std::string reply = in_.substr(0, n);
                in_.erase(0, n);
                return reply;
            }
            char chunk[4096];
            const ssize_t got = ::recv(fd_, chunk, sizeof chunk, 0);
            if (got <= 0) {
                return {}; // closed by the server, or no answer within the limit
            }
            in_.append(chunk, static_cast<std::size_t>(got));
        }
    }

    int fd_;
    bool connected_ = false;
    std::string in_; // received and not yet returned
};

// SUBSCRIBE has no reply, so a client cannot tell when its subscription is in place. The
// program can: it wraps the server's request handler, and this counts the SUBSCRIBEs run.
struct subscribe_count {
    std::mutex mutex;
    std::condition_variable changed;
    int count = 0;

    void wait_for(int n) {
        std::unique_lock lock(mutex);
        changed.wait(lock, [&] { return count >= n; });
    }
};

} // namespace

int main() {
    // -- The program's own buckets: a registry, and a bucket made before any client comes.
    const std::shared_ptr<otpkv::registry> reg = otpkv::registry::start();
    const otpkv::registry::handle shopping = reg->create("shopping").value();
    shopping->put("eggs", "12");
    std::cout << "the program created bucket shopping and put eggs 12 in it\n";

    // -- The server. registry_handler(reg) is what server::start(reg, ...) serves with:
    // `run` for each request against the registry, and SUBSCRIBE streaming a bucket's
    // events. server::start takes any request handler, so we wrap it, to count SUBSCRIBEs
    // (a handler runs on an event-loop thread; it must be quick, and may not block).
    const auto subscribes = std::make_shared<subscribe_count>();
    otpkv::request_handler handler = [serve = otpkv::registry_handler(reg),
                                      subscribes](const otpkv::command& cmd, std::string& out,
                                                  otpkv::session& session) {
        serve(cmd, out, session);
        if (cmd.kind == otpkv::command_kind::subscribe) {
            const std::lock_guard lock(subscribes->mutex);
            ++subscribes->count;
            subscribes->changed.notify_all();
        }
    };
    // 127.0.0.1 is the default address; port 0 lets the kernel pick a free port, which
    // server->port() then tells. One event-loop thread is plenty here.
    otpkv::server_options options;
    options.port = 0;
    options.threads = 1;
    auto started = otpkv::server::start(std::move(handler), options);
    if (!started) {
        std::cerr << "cannot start the server: " << otpkv::to_string(started.error().reason)
                  << "\n";
        return 1;
    }
    const std::shared_ptr<otpkv::server> server = std::move(started).value();
    std::cout << "server listening on 127.0.0.1, on the port the kernel picked\n";

    {
        // -- A client: each line of standard input, sent over loopback, and its reply.
        loopback_client client(server->port());
        if (!client.connected()) {
            std::cerr << "cannot connect to " << server->address() << "\n";
            return 1;
        }
        std::cout << "client connected\n";
        for (std::string line; std::getline(std::cin, line);) {
            std::cout << "request  \"" << otpkv::escaped(line) << "\"\n";
            const otpkv::command cmd = otpkv::parse(line);
            if (cmd.kind == otpkv::command_kind::subscribe) {
                // Its only reply would be the bucket's events, forever: see below instead.
                std::cout << "         not sent: a subscribed connection only gets events\n";
                continue;
            }
            client.send_line(line);
            const std::string reply = client.read_reply(cmd.kind);
            if (reply.empty()) {
                std::cout << "         the server closed the connection\n";
                break;
            }
            std::cout << "reply    \"" << otpkv::escaped(reply) << "\"\n";
        }
    } // the client hangs up

    // The program and its clients share the buckets: what a client wrote is there.
    std::cout << "the program reads milk from shopping: "
              << shopping->get("milk").value_or("(nothing)") << "\n";

    {
        // -- A subscriber: after SUBSCRIBE, every write to the bucket is pushed to the
        // connection as one line, whoever made it: a client, or here the program itself.
        loopback_client subscriber(server->port());
        if (!subscriber.connected()) {
            std::cerr << "cannot connect to " << server->address() << "\n";
            return 1;
        }
        subscriber.send_line("SUBSCRIBE shopping");
        subscribes->wait_for(1);
        std::cout << "subscriber sent SUBSCRIBE shopping; the program puts eggs 6, then "
                     "erases eggs\n";
        shopping->put("eggs", "6");
        shopping->erase("eggs");
        for (int i = 0; i < 2; ++i) {
            std::cout << "subscriber got \"" << otpkv::escaped(subscriber.read_line()) << "\"\n";
        }

        // -- Stopping the server closes every connection: the subscriber reads the end.
        std::cout << "server stopped: " << otpkv::to_string(server->stop()) << "\n";
        std::cout << "subscriber "
                  << (subscriber.read_line().empty() ? "sees its connection closed"
                                                     : "got more than expected")
                  << "\n";
    }

    // The buckets outlive the server; stopping the registry stops them.
    std::cout << "registry stopped: " << otpkv::to_string(reg->stop()) << "\n";
    return 0;
}
