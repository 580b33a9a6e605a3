// SPDX-License-Identifier: MIT
// Chapter "Simple state management with agents" of the guide: KV.Bucket.
//
// The guide's bucket is an Agent holding a map; ours is a concurrent map that is also a
// process. This program walks through its calls in the guide's order: get and put, delete
// returning the old value, atomic read-modify-writes (two threads drawing numbered tickets
// from one counter), a subscriber told of every write, and the lifecycle: a monitor, a stop
// with a reason, and what every call does after it. Each call is printed, then what it
// returned; a subscriber's lines show up in between, as it runs during the write.
//
//   ./01_bucket
#include <otpkv/bucket.hpp>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using kv_bucket = otpkv::bucket<std::string, std::string>;

// How a call's result is printed: strings quoted, an empty optional as "nothing".
std::string show(bool b) {
    return b ? "true" : "false";
}
std::string show(std::size_t n) {
    return std::to_string(n);
}
std::string show(const std::string& s) {
    return "\"" + s + "\"";
}
template <class T> std::string show(const std::optional<T>& v) {
    return v ? show(*v) : "nothing";
}

// Prints the call, runs it (a subscriber may print meanwhile), then prints its result.
template <class F> void step(std::string_view call, F&& f) {
    std::cout << call << "\n";
    const auto result = f();
    std::cout << "  -> " << show(result) << "\n";
}

// Every entry, sorted: for_each visits them in no particular order.
std::vector<std::string> entries(const kv_bucket& b) {
    std::vector<std::string> out;
    b.for_each([&](const std::string& key, const std::string& value) {
        out.push_back(key + "=" + value);
    });
    std::sort(out.begin(), out.end());
    return out;
}

void print_entries(const kv_bucket& b) {
    const std::vector<std::string> all = entries(b);
    std::cout << "for_each (sorted):";
    for (const std::string& entry : all) {
        std::cout << " " << entry;
    }
    std::cout << (all.empty() ? " (nothing)\n" : "\n");
}

} // namespace

int main() {
    const std::shared_ptr<kv_bucket> b = kv_bucket::start();
    std::cout << "bucket " << otpkv::to_string(b->id()) << " started, alive: " << show(b->alive())
              << "\n";

    // -- get and put: a key without a value gives nothing (the guide's nil).
    step("get milk", [&] { return b->get("milk"); });

    // A subscriber sees every write from now on, on the writer's thread, once the write is
    // done and before the call returns to the writer.
    const auto print_event = [](const kv_bucket::event& e) {
        if (e.kind == otpkv::bucket_event_kind::put) {
            std::cout << "  | event: put " << e.key << " = " << *e.value << "\n";
        } else {
            std::cout << "  | event: erase " << e.key << "\n";
        }
    };
    otpkv::subscription log = b->subscribe(print_event);
    std::cout << "subscribed: active " << show(log.active()) << "\n";

    step("put milk 3", [&] { return b->put("milk", "3"); });
    step("get milk", [&] { return b->get("milk"); });
    step("put milk 4 (replaces)", [&] { return b->put("milk", "4"); });
    step("put eggs 12", [&] { return b->put("eggs", "12"); });
    step("contains eggs", [&] { return b->contains("eggs"); });
    step("size", [&] { return b->size(); });
    print_entries(*b);

    // -- delete: the guide's KV.Bucket.delete returns the value the key had.
    step("erase milk", [&] { return b->erase("milk"); });
    // Nothing to delete: nothing comes back, but subscribers still hear of the DELETE.
    step("erase milk (again)", [&] { return b->erase("milk"); });

    // -- get_and_update (Agent.get_and_update): one atomic read-modify-write of one key.
    // The function gets the current value (or nothing) and returns {what the call returns,
    // the new value (or nothing: delete the key)}. Here it pops the key, like Map.pop.
    // The call wraps the answer in one more optional, empty only after stop (see below).
    const auto pop = [](const std::optional<std::string>& current) {
        return std::pair<std::optional<std::string>, std::optional<std::string>>{current,
                                                                                 std::nullopt};
    };
    step("get_and_update eggs (pop)", [&] { return *b->get_and_update("eggs", pop); });
    // Popping a missing key removes nothing, so no event this time.
    step("get_and_update eggs (pop, again)", [&] { return *b->get_and_update("eggs", pop); });

    // -- update: the function returns the new value, or nothing to delete the key.
    const auto add_one = [](const std::optional<std::string>& current) {
        return std::optional<std::string>(std::to_string(current ? std::stoi(*current) + 1 : 1));
    };
    step("update bread (+1, from nothing)", [&] { return b->update("bread", add_one); });
    step("update bread (+1)", [&] { return b->update("bread", add_one); });
    step("get bread", [&] { return b->get("bread"); });
    step("update bread (delete)", [&] {
        return b->update("bread", [](const auto&) { return std::optional<std::string>(); });
    });
    step("size", [&] { return b->size(); });

    // -- Atomicity across threads. The printing subscriber goes (2000 lines are too many);
    // a quiet one checks that the counter's events come in the order its writes took effect,
    // whichever thread made them.
    log.cancel();
    std::cout << "log cancelled: active " << show(log.active()) << "\n";

    // Only one callback of a subscriber runs at a time, so its state needs no lock.
    struct order_check {
        int expected = 1;
        bool in_order = true;
    } seen;
    const otpkv::subscription checker = b->subscribe([&seen](const kv_bucket::event& e) {
        if (e.key == "tickets") {
            seen.in_order = seen.in_order && e.value == std::to_string(seen.expected);
            ++seen.expected;
        }
    });

    // Each thread draws tickets: get_and_update returns the counter as it was and stores it
    // plus one, so no two draws can get the same number.
    constexpr int draws = 1000;
    const auto draw_tickets = [&b](std::vector<int>& mine) {
        for (int i = 0; i < draws; ++i) {
            const std::optional<int> ticket =
                b->get_and_update("tickets", [](const std::optional<std::string>& current) {
                    const int n = current ? std::stoi(*current) : 0;
                    return std::pair<int, std::optional<std::string>>{n, std::to_string(n + 1)};
                });
            mine.push_back(*ticket);
        }
    };
    std::vector<int> first;
    std::vector<int> second;
    std::thread one(draw_tickets, std::ref(first));
    std::thread two(draw_tickets, std::ref(second));
    one.join();
    two.join();

    std::vector<int> all = first;
    all.insert(all.end(), second.begin(), second.end());
    std::sort(all.begin(), all.end());
    bool each_once = all.size() == std::size_t{2 * draws};
    for (std::size_t i = 0; each_once && i < all.size(); ++i) {
        each_once = all[i] == static_cast<int>(i);
    }
    std::cout << "two threads drew " << draws << " tickets each\n";
    step("get tickets", [&] { return b->get("tickets"); });
    std::cout << "tickets 0.." << 2 * draws - 1 << " each drawn exactly once: " << show(each_once)
              << "\n"
              << "subscriber saw the counter go 1.." << seen.expected - 1
              << " in order: " << show(seen.in_order) << "\n";

    // -- clear empties the bucket without telling subscribers (it is not a DELETE). The
    // printing subscriber is back to show it.
    log = b->subscribe(print_event);
    std::cout << "subscribed again: active " << show(log.active()) << "\n";
    step("put pasta 1", [&] { return b->put("pasta", "1"); });
    print_entries(*b);
    b->clear();
    std::cout << "clear\n";
    step("size", [&] { return b->size(); });

    // -- The lifecycle. A monitor runs once, with the exit reason, on the stopping thread.
    step("put milk 1", [&] { return b->put("milk", "1"); });
    const otpkv::monitor_handle watch = b->monitor([](const otpkv::exit_reason& reason) {
        std::cout << "  | monitor: bucket exited with " << otpkv::to_string(reason) << "\n";
    });
    // stop runs the monitors before it returns: a bucket has no thread of its own.
    std::cout << "stop {shutdown, closing time}\n";
    const otpkv::exit_reason reason = b->stop(otpkv::exit_reason::shutdown("closing time"));
    std::cout << "  -> " << otpkv::to_string(reason) << "\n"
              << "alive: " << show(b->alive())
              << ", exited with: " << otpkv::to_string(b->exited().value()) << "\n";

    // After stop the data is gone and nothing changes any more (so no event either); the
    // handle stays valid.
    bool called = false;
    step("get milk", [&] { return b->get("milk"); });
    step("contains milk", [&] { return b->contains("milk"); });
    step("size", [&] { return b->size(); });
    print_entries(*b);
    step("put milk 2", [&] { return b->put("milk", "2"); });
    step("erase milk", [&] { return b->erase("milk"); });
    step("update milk", [&] {
        return b->update("milk", [&](const std::optional<std::string>& current) {
            called = true;
            return current;
        });
    });
    step("get_and_update milk", [&] {
        return b->get_and_update("milk", [&](const std::optional<std::string>& current) {
            called = true;
            return std::pair<std::optional<std::string>, std::optional<std::string>>{current,
                                                                                     current};
        });
    });
    std::cout << "update functions called: " << show(called) << "\n";
    const otpkv::subscription late = b->subscribe([](const kv_bucket::event&) {});
    std::cout << "subscribe: active " << show(late.active()) << "\n";

    // A second stop changes nothing: a process exits once, with its first reason.
    std::cout << "stop {error, too late}\n";
    const otpkv::exit_reason again = b->stop(otpkv::exit_reason::error("too late"));
    std::cout << "  -> " << otpkv::to_string(again) << "\n";
    // Monitoring a process that has exited calls back at once, with noproc.
    std::cout << "monitor (after the exit)\n";
    const otpkv::monitor_handle late_watch = b->monitor([](const otpkv::exit_reason& why) {
        std::cout << "  | monitor: " << otpkv::to_string(why) << "\n";
    });
    return 0;
}
