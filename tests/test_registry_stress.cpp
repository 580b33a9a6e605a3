// SPDX-License-Identifier: MIT
// The registry's race contract under load (run in the test, asan and tsan presets): two
// reader threads do at least 10 million lookups while a writer creates 100,000 buckets and
// stops half of them.
#include <otpkv/registry.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

TEST_CASE("lookups race creates and stops: never a stopped bucket, never a foreign one") {
    constexpr std::size_t buckets = 100'000;
    constexpr long lookups_per_reader = 5'000'000;
    auto reg = otpkv::registry::start();

    // Per name: the id of its bucket once create returned, and whether its stop returned.
    auto ids = std::make_unique<std::atomic<std::uint64_t>[]>(buckets);
    auto stopped = std::make_unique<std::atomic<bool>[]>(buckets);
    std::atomic<std::size_t> created{0};
    std::atomic<bool> writer_done{false};
    std::atomic<long> after_stop{0};
    std::atomic<long> foreign{0};
    std::atomic<long> found{0};

    auto name_of = [](std::size_t i) { return "bucket-" + std::to_string(i); };

    std::thread writer([&] {
        for (std::size_t i = 0; i < buckets; ++i) {
            auto b = reg->create(name_of(i)).value();
            ids[i].store(b->id().value(), std::memory_order_release);
            created.store(i + 1, std::memory_order_release);
            // Stop every odd bucket a little after creating it, while readers look it up.
            if (i >= 64 && (i - 64) % 2 == 1) {
                const std::size_t victim = i - 64;
                reg->lookup(name_of(victim))->stop(otpkv::exit_reason::error("stress"));
                // release: a reader that sees the flag sees everything stop did.
                stopped[victim].store(true, std::memory_order_release);
            }
        }
        for (std::size_t victim = buckets - 64; victim < buckets; ++victim) {
            if (victim % 2 == 1) {
                reg->lookup(name_of(victim))->stop(otpkv::exit_reason::error("stress"));
                stopped[victim].store(true, std::memory_order_release);
            }
        }
        writer_done.store(true, std::memory_order_release);
    });

    auto reader = [&](std::uint64_t seed) {
        long done = 0;
        std::string name;
        while (done < lookups_per_reader || !writer_done.load(std::memory_order_acquire)) {
            const std::size_t n = created.load(std::memory_order_acquire);
            if (n == 0) {
                continue;
            }
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            // Mostly recent names (where the races are), sometimes any.
            const std::size_t back = static_cast<std::size_t>(seed >> 33) % (seed & 1 ? 256 : n);
            const std::size_t i = n - 1 - std::min(back, n - 1);
            name = name_of(i);
            const bool was_stopped = stopped[i].load(std::memory_order_acquire);
            const std::uint64_t id = ids[i].load(std::memory_order_acquire);
            std::uint64_t seen = 0;
            if (done % 2 == 0) {
                if (auto b = reg->lookup(name)) {
                    seen = b->id().value();
                }
            } else {
                reg->with(name, [&](auto& b) { seen = b.id().value(); });
            }
            ++done;
            if (seen == 0) {
                continue;
            }
            found.fetch_add(1, std::memory_order_relaxed);
            if (was_stopped) {
                after_stop.fetch_add(1, std::memory_order_relaxed);
            }
            if (id != 0 && seen != id) {
                foreign.fetch_add(1, std::memory_order_relaxed);
            }
        }
        return done;
    };
    long total = 0;
    std::atomic<long> other_total{0};
    std::thread second([&] { other_total.store(reader(12345)); });
    total += reader(987654321);
    second.join();
    writer.join();
    total += other_total.load();

    CHECK(total >= 2 * lookups_per_reader);
    CHECK(found.load() > 0);
    CHECK(after_stop.load() == 0);
    CHECK(foreign.load() == 0);
    // Every surviving name resolves to its own bucket; every stopped one to nothing.
    CHECK(reg->size() == buckets / 2);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < buckets; ++i) {
        auto b = reg->lookup(name_of(i));
        if (i % 2 == 1) {
            wrong += b != nullptr ? 1U : 0U;
        } else {
            wrong += b == nullptr || b->id().value() != ids[i].load() ? 1U : 0U;
        }
    }
    CHECK(wrong == 0);
    reg->stop();
    CHECK(reg->size() == 0);
    otpkv::detail::epoch_domain::instance().synchronize();
    otpkv::detail::epoch_domain::instance().synchronize();
    CHECK(otpkv::detail::epoch_domain::instance().retired() == 0);
}
