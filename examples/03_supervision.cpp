// SPDX-License-Identifier: MIT
// Chapter "Supervisors and Applications" of the guide: what crashes is replaced.
//
// Starts 20 loops under a task supervisor, each reading messages from its own mailbox and
// understanding only "ping". One of them is sent a message it does not understand, so it
// crashes; being permanent, it is replaced by a fresh loop, and the other 19 are left
// alone, which the lists of children before and after show.
//
//   ./03_supervision
#include <otpkv/task.hpp>

#include <array>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace {

// One loop's mailbox: messages wait here until the loop takes them.
class mailbox {
  public:
    void send(std::string message) {
        {
            const std::lock_guard lock(mutex_);
            messages_.push_back(std::move(message));
        }
        ready_.notify_one();
    }

    // The next message, or nothing once the loop is asked to stop.
    std::optional<std::string> receive(std::stop_token stop) {
        std::unique_lock lock(mutex_);
        if (!ready_.wait(lock, stop, [&] { return !messages_.empty(); })) {
            return std::nullopt;
        }
        std::string message = std::move(messages_.front());
        messages_.pop_front();
        return message;
    }

  private:
    std::mutex mutex_;
    std::condition_variable_any ready_;
    std::deque<std::string> messages_;
};

constexpr std::size_t loops = 20;

} // namespace

int main() {
    std::array<mailbox, loops> mailboxes;
    auto sup = otpkv::task_supervisor::start();

    for (mailbox& box : mailboxes) {
        // A loop that knows one message. Anything else is a crash: the exception ends the
        // task with an error, and the supervisor starts the same function again.
        const auto started = sup->start_child(
            [&box](std::stop_token stop) {
                while (const std::optional<std::string> message = box.receive(stop)) {
                    if (*message != "ping") {
                        throw std::runtime_error("unknown message: " + *message);
                    }
                }
            },
            otpkv::restart::permanent);
        if (!started) {
            std::cerr << "could not start a loop: " << otpkv::to_string(started.error().code)
                      << "\n";
            return 1;
        }
    }
    std::cout << "task supervisor " << otpkv::to_string(sup->id()) << " runs " << loops
              << " loops\n";

    std::vector<otpkv::child_info> before = sup->which_children();
    constexpr std::size_t victim = 7;
    std::optional<otpkv::exit_reason> crash;
    std::mutex crash_mutex;
    std::condition_variable crashed;
    const otpkv::monitor_handle watch =
        before[victim].child->monitor([&](const otpkv::exit_reason& reason) {
            const std::lock_guard lock(crash_mutex);
            crash = reason;
            crashed.notify_one();
        });

    std::cout << "sending \"hello?\" to loop " << victim << ", which only understands \"ping\"\n";
    mailboxes[victim].send("hello?");
    {
        std::unique_lock lock(crash_mutex);
        crashed.wait(lock, [&] { return crash.has_value(); });
    }
    std::cout << "loop " << victim << " exited: " << otpkv::to_string(*crash) << "\n";

    // The supervisor restarts it in place; wait until the list shows the new loop.
    std::vector<otpkv::child_info> after = sup->which_children();
    while (after[victim].pid == before[victim].pid || !after[victim].pid) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        after = sup->which_children();
    }

    std::size_t replaced = 0;
    std::cout << "loop  before     after\n";
    for (std::size_t i = 0; i < loops; ++i) {
        const bool changed = before[i].pid != after[i].pid;
        replaced += changed ? 1 : 0;
        std::cout << (i < 10 ? "   " : "  ") << i << "  " << otpkv::to_string(before[i].pid)
                  << (before[i].pid.value() < 10 ? "    " : "   ") << otpkv::to_string(after[i].pid)
                  << (changed ? "   replaced" : "") << "\n";
    }
    std::cout << replaced << " replaced, " << loops - replaced << " untouched\n";

    mailboxes[victim].send("ping"); // the new loop answers to its mailbox like the old one
    std::cout << "stopping: " << otpkv::to_string(sup->stop()) << "\n";
    return replaced == 1 ? 0 : 1;
}
