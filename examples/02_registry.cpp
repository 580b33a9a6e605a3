// SPDX-License-Identifier: MIT
// Chapters "Client-server communication with GenServer", "Monitors" and "Speeding up with
// ETS" (its "Race conditions?") of the guide: KV.Registry.
//
// The registry names buckets and starts them under its own supervisor. This program creates
// and looks up buckets, uses one through its handle and inside `with`, crashes it and shows
// its name gone as soon as the crash is over (the registry monitors its buckets), hits the
// limit on buckets, and stops the registry. A subscriber prints the registry's events; its
// lines start with "|" and show up during the call that caused them.
//
//   ./02_registry
#include <otpkv/registry.hpp>

#include <algorithm>
#include <cstddef>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

std::string show(bool b) {
    return b ? "true" : "false";
}

// A bucket handle: its process id, or null.
std::string show(const otpkv::registry::handle& bucket) {
    return bucket ? otpkv::to_string(bucket->id()) : "null";
}

// What `create` returned: the bucket, or the error's code.
std::string show(const otpkv::result<otpkv::registry::handle>& created) {
    return created ? show(*created)
                   : "error " + std::string(otpkv::to_string(created.error().code));
}

// Prints the call, makes it (the subscriber may print meanwhile), then prints its result.
otpkv::result<otpkv::registry::handle> create(otpkv::registry& reg, const std::string& name) {
    std::cout << "create " << name << "\n";
    otpkv::result<otpkv::registry::handle> created = reg.create(name);
    std::cout << "  -> " << show(created) << "\n";
    return created;
}

// The names, sorted (the registry lists them in no particular order), and how many.
void print_names(const otpkv::registry& reg) {
    std::vector<std::string> names = reg.names();
    std::sort(names.begin(), names.end());
    std::cout << "names:";
    for (const std::string& name : names) {
        std::cout << " " << name;
    }
    std::cout << (names.empty() ? " (none)" : "") << "; size " << reg.size() << "\n";
}

} // namespace

int main() {
    // At most two buckets at once, to show the limit below.
    const std::shared_ptr<otpkv::registry> reg =
        otpkv::registry::start(otpkv::registry_options{.max_buckets = 2});
    std::cout << "registry " << otpkv::to_string(reg->id()) << " started, its bucket supervisor "
              << otpkv::to_string(reg->bucket_supervisor().id()) << ", max_buckets "
              << reg->max_buckets() << "\n";

    // The 2014 guide's event manager: every bucket created, and every bucket gone and why.
    // Callbacks run on the thread that created or stopped the bucket.
    const otpkv::subscription events = reg->subscribe([](const otpkv::registry_event& e) {
        if (e.kind == otpkv::registry_event_kind::created) {
            std::cout << "  | created " << e.name << " " << otpkv::to_string(e.id) << "\n";
        } else {
            std::cout << "  | exited " << e.name << " " << otpkv::to_string(e.id) << " "
                      << otpkv::to_string(e.reason) << "\n";
        }
    });

    // -- GenServer: lookup, create. create is synchronous: the creator finds the bucket at
    // once. It is also idempotent: a second create returns the same bucket, and no event.
    std::cout << "lookup shopping -> " << show(reg->lookup("shopping")) << "\n";
    const otpkv::registry::handle shopping = *create(*reg, "shopping");
    const otpkv::result<otpkv::registry::handle> again = create(*reg, "shopping");
    std::cout << "the same bucket: " << show(*again == shopping) << "\n";
    std::cout << "lookup shopping -> " << show(reg->lookup("shopping"))
              << ", the same bucket: " << show(reg->lookup("shopping") == shopping) << "\n";

    // A handle is a bucket like in the last chapter; writes through it are seen by anyone
    // who looks the name up.
    std::cout << "put milk 1 through the handle -> " << show(shopping->put("milk", "1")) << "\n";
    // with(name, f) runs f on the bucket without taking a reference: the answer comes back
    // in an optional, empty when no bucket has that name.
    const auto get_milk = [](otpkv::registry::bucket_type& b) { return b.get("milk"); };
    const std::optional<std::optional<std::string>> milk = reg->with("shopping", get_milk);
    std::cout << "with shopping: get milk -> " << (milk ? "\"" + milk->value_or("?") + "\"" : "?")
              << "\n";
    std::cout << "with groceries: get milk -> ran: "
              << show(reg->with("groceries", get_milk).has_value()) << "\n";
    // When f returns nothing, with says whether it ran.
    const bool ran =
        reg->with("shopping", [](otpkv::registry::bucket_type& b) { b.put("eggs", "6"); });
    std::cout << "with shopping: put eggs 6 -> ran: " << show(ran) << "; the handle sees size "
              << shopping->size() << "\n";
    print_names(*reg);

    // -- The limit: create refuses a bucket past max_buckets.
    const otpkv::result<otpkv::registry::handle> work = create(*reg, "work");
    create(*reg, "games");
    print_names(*reg);

    // -- Monitors: a bucket crashes. The registry monitors every bucket; the monitor runs
    // inside stop, so the name is gone when stop returns: no sync, no sleep (the guide's
    // "Race conditions?" answered once and for all).
    std::cout << "stop shopping {error, crash}\n";
    const otpkv::exit_reason why = shopping->stop(otpkv::exit_reason::error("crash"));
    std::cout << "  -> " << otpkv::to_string(why) << "\n";
    std::cout << "lookup shopping -> " << show(reg->lookup("shopping")) << "\n";
    std::cout << "with shopping: get milk -> ran: "
              << show(reg->with("shopping", get_milk).has_value()) << "\n";
    print_names(*reg);
    // The old handle stays valid: a stopped bucket, with its data gone.
    std::cout << "old handle: alive " << show(shopping->alive()) << ", size " << shopping->size()
              << "\n";

    // The crashed bucket's room is free at once too. Creating the name again gives a fresh,
    // empty bucket (the milk went with the crash).
    const otpkv::result<otpkv::registry::handle> fresh = create(*reg, "shopping");
    std::cout << "a new bucket: " << show(*fresh != shopping) << ", size " << (*fresh)->size()
              << "\n";
    create(*reg, "games");

    // -- Stopping the registry stops its buckets (in reverse start order, on its
    // supervisor's thread), and each name goes with an exited event.
    std::cout << "stop registry\n";
    const otpkv::exit_reason stopped = reg->stop();
    std::cout << "  -> " << otpkv::to_string(stopped) << "\n";
    print_names(*reg);
    create(*reg, "shopping");
    std::cout << "work's handle: alive " << show((*work)->alive()) << ", exited with "
              << otpkv::to_string((*work)->exited().value()) << "\n";
    return 0;
}
