// SPDX-License-Identifier: MIT
// The replication tests' linearizability checker (linearizability.hpp), checked on histories
// whose verdict is known: linearizable ones, and the classic violations (a stale read, a lost
// write, a read of a value never written) that it must reject, each with a report that names
// the key and the operation that cannot be ordered.
#include "linearizability.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using otpkv_test::check_linearizable;
using otpkv_test::lin_kind;
using otpkv_test::lin_op;
using otpkv_test::lin_result;

constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();

lin_op put(int client, const std::string& key, const std::string& value, std::int64_t from,
           std::int64_t to, lin_result r = lin_result::ok) {
    return {key, lin_kind::write, value, from, r == lin_result::unknown ? never : to, r, client};
}

lin_op del(int client, const std::string& key, std::int64_t from, std::int64_t to,
           lin_result r = lin_result::ok) {
    return {key, lin_kind::write, std::nullopt, from, r == lin_result::unknown ? never : to,
            r,   client};
}

lin_op get(int client, const std::string& key, std::optional<std::string> read, std::int64_t from,
           std::int64_t to) {
    return {key, lin_kind::read, std::move(read), from, to, lin_result::ok, client};
}

} // namespace

TEST_CASE("linearizability: sequential and overlapping histories of a register are accepted") {
    // One client, one after the other: PUT, GET, DELETE, GET.
    const auto sequential = check_linearizable({put(1, "k", "a", 0, 10), get(1, "k", "a", 11, 20),
                                                del(1, "k", 21, 30), get(1, "k", {}, 31, 40)});
    CHECK(sequential.ok);
    CHECK(sequential.keys == 1);
    CHECK(sequential.operations == 4);
    CHECK(sequential.report.empty());

    // A read overlapping a write may see either the old or the new value...
    CHECK(check_linearizable({put(1, "k", "a", 0, 100), get(2, "k", {}, 10, 20)}).ok);
    CHECK(check_linearizable({put(1, "k", "a", 0, 100), get(2, "k", "a", 10, 20)}).ok);
    // ...but once one read saw the new value, a later read cannot see the old one.
    const auto flicker = check_linearizable(
        {put(1, "k", "a", 0, 100), get(2, "k", "a", 10, 20), get(3, "k", {}, 30, 40)});
    CHECK_FALSE(flicker.ok);

    // Two overlapping writes may take effect in either order; the reads decide which.
    CHECK(check_linearizable(
              {put(1, "k", "a", 0, 50), put(2, "k", "b", 10, 60), get(3, "k", "a", 70, 80)})
              .ok);
    CHECK(check_linearizable(
              {put(1, "k", "a", 0, 50), put(2, "k", "b", 10, 60), get(3, "k", "b", 70, 80)})
              .ok);
    // A read that ends at the instant a write starts may not see it; one that starts as the
    // write ends may.
    CHECK_FALSE(check_linearizable({put(1, "k", "a", 10, 20), get(2, "k", "a", 0, 9)}).ok);
    CHECK(check_linearizable({put(1, "k", "a", 10, 20), get(2, "k", "a", 20, 30)}).ok);
}

TEST_CASE("linearizability: a stale read is rejected, and the report names the key and the read") {
    const auto v = check_linearizable(
        {put(1, "cart", "a", 0, 10), put(2, "cart", "b", 20, 30), get(3, "cart", "a", 40, 50)});
    CHECK_FALSE(v.ok);
    CHECK(v.report.find("key cart: not linearizable") == 0);
    CHECK(v.report.find("no order places: client 3 GET -> \"a\"") != std::string::npos);
    CHECK(v.report.find("client 2 PUT \"b\"") != std::string::npos); // the write it missed
}

TEST_CASE("linearizability: a lost write is rejected") {
    // An acknowledged PUT, then a read that finds nothing.
    const auto v = check_linearizable({put(1, "k", "a", 0, 10), get(2, "k", std::nullopt, 20, 30)});
    CHECK_FALSE(v.ok);
    CHECK(v.report.find("no order places: client 2 GET -> absent") != std::string::npos);
    // The same with a DELETE acknowledged and the value still read afterwards.
    CHECK_FALSE(
        check_linearizable({put(1, "k", "a", 0, 10), del(1, "k", 20, 30), get(2, "k", "a", 40, 50)})
            .ok);
}

TEST_CASE("linearizability: a read of a value never written is rejected") {
    const auto v = check_linearizable({put(1, "k", "a", 0, 10), get(2, "k", "zzz", 5, 30)});
    CHECK_FALSE(v.ok);
    CHECK(v.report.find("GET -> \"zzz\"") != std::string::npos);
    // Unless the key held it before the history began.
    CHECK(
        check_linearizable({get(2, "k", "zzz", 0, 3), put(1, "k", "a", 5, 10)}, {{"k", "zzz"}}).ok);
}

TEST_CASE("linearizability: an unknown write may take effect at any time after its call, or "
          "never; a failed one never") {
    // Never seen: fine.
    CHECK(check_linearizable({put(1, "k", "a", 0, 0, lin_result::unknown), get(2, "k", {}, 10, 20)})
              .ok);
    // Seen late, long after the client gave up: fine.
    CHECK(check_linearizable({put(1, "k", "a", 0, 0, lin_result::unknown), get(2, "k", {}, 10, 20),
                              get(2, "k", "a", 1000, 1010)})
              .ok);
    // Seen, then unseen with no other write: a flicker, rejected.
    CHECK_FALSE(check_linearizable({put(1, "k", "a", 0, 0, lin_result::unknown),
                                    get(2, "k", "a", 10, 20), get(2, "k", {}, 30, 40)})
                    .ok);
    // Not before its call.
    CHECK_FALSE(
        check_linearizable({get(2, "k", "a", 0, 5), put(1, "k", "a", 10, 0, lin_result::unknown)})
            .ok);
    // A failed write certainly did not happen.
    CHECK_FALSE(
        check_linearizable({put(1, "k", "a", 0, 5, lin_result::fail), get(2, "k", "a", 10, 20)})
            .ok);
    // Failed and unknown reads tell nothing.
    lin_op lost_read = get(2, "k", "zzz", 10, 20);
    lost_read.result = lin_result::unknown;
    lin_op refused_read = get(3, "k", "yyy", 10, 20);
    refused_read.result = lin_result::fail;
    const auto v = check_linearizable({put(1, "k", "a", 0, 5), lost_read, refused_read});
    CHECK(v.ok);
    CHECK(v.operations == 1);
}

TEST_CASE("linearizability: keys are checked apart; the bad one is named") {
    const auto v = check_linearizable({put(1, "k1", "a", 0, 10), put(1, "k2", "b", 0, 10),
                                       get(2, "k1", "a", 20, 30), get(2, "k2", {}, 20, 30),
                                       put(3, "k3", "c", 0, 10)});
    CHECK_FALSE(v.ok);
    CHECK(v.report.find("key k2:") == 0);
    // A value read under another key does not count as written under this one.
    CHECK_FALSE(check_linearizable({put(1, "k1", "a", 0, 10), get(2, "k2", "a", 20, 30)}).ok);
}

TEST_CASE("linearizability: a value written twice is refused, since writes must be told apart") {
    const auto v = check_linearizable({put(1, "k", "a", 0, 10), put(2, "k", "a", 20, 30)});
    CHECK_FALSE(v.ok);
    CHECK(v.report.find("written twice") != std::string::npos);
}

TEST_CASE("linearizability: a large simulated history of a real register is accepted, and one "
          "stale read in it is found") {
    // 20 clients on 5 keys; each operation takes effect at a random instant inside its
    // interval, against a true register; intervals overlap heavily.
    std::mt19937_64 rng(42);
    struct pending {
        lin_op op;
        std::int64_t effect;
    };
    std::vector<pending> all;
    std::vector<std::int64_t> free_at(20, 0);
    int written = 0;
    for (int i = 0; i < 4000; ++i) {
        const int client = static_cast<int>(rng() % 20);
        const std::string key = "k" + std::to_string(rng() % 5);
        const std::int64_t from =
            free_at[static_cast<std::size_t>(client)] + static_cast<std::int64_t>(rng() % 50);
        const std::int64_t to = from + 1 + static_cast<std::int64_t>(rng() % 400);
        free_at[static_cast<std::size_t>(client)] = to + 1;
        const std::int64_t effect =
            from + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(to - from + 1));
        const unsigned dice = static_cast<unsigned>(rng() % 10);
        lin_op op = dice < 6   ? get(client, key, {}, from, to)
                    : dice < 9 ? put(client, key, "v" + std::to_string(++written), from, to)
                               : del(client, key, from, to);
        all.push_back({op, effect});
    }
    // Apply them in effect order, so each read gets the value current at its instant.
    std::vector<std::size_t> by_effect(all.size());
    for (std::size_t i = 0; i < all.size(); ++i) {
        by_effect[i] = i;
    }
    std::stable_sort(by_effect.begin(), by_effect.end(),
                     [&](std::size_t a, std::size_t b) { return all[a].effect < all[b].effect; });
    std::map<std::string, std::optional<std::string>> reg;
    for (const std::size_t i : by_effect) {
        lin_op& op = all[i].op;
        if (op.kind == lin_kind::write) {
            reg[op.key] = op.value;
        } else {
            op.value = reg[op.key];
        }
    }
    std::vector<lin_op> history;
    for (const pending& p : all) {
        history.push_back(p.op);
    }
    const auto good = check_linearizable(history);
    CHECK(good.ok);
    CHECK(good.keys == 5);
    CHECK(good.operations == 4000);
    CHECK(good.report.empty());

    // Now make one read stale: the last read of k0 whose value was overwritten by a write
    // that completed before the read began returns the overwritten value.
    bool made_stale = false;
    for (std::size_t r = history.size(); r-- > 0 && !made_stale;) {
        const lin_op& read = history[r];
        if (read.kind != lin_kind::read || read.key != "k0") {
            continue;
        }
        // Two writes of k0 (values), both completed before the read began, the second
        // invoked after the first completed: the first's value is stale for the read.
        for (std::size_t a = 0; a < history.size() && !made_stale; ++a) {
            const lin_op& w1 = history[a];
            if (w1.kind != lin_kind::write || w1.key != "k0" || !w1.value ||
                w1.value == read.value) {
                continue;
            }
            for (std::size_t b = 0; b < history.size(); ++b) {
                const lin_op& w2 = history[b];
                if (w2.kind == lin_kind::write && w2.key == "k0" && w2.invoked > w1.completed &&
                    w2.completed < read.invoked) {
                    history[r].value = w1.value;
                    made_stale = true;
                    break;
                }
            }
        }
    }
    REQUIRE(made_stale);
    const auto bad = check_linearizable(history);
    CHECK_FALSE(bad.ok);
    CHECK(bad.report.find("key k0: not linearizable") == 0);
}

TEST_CASE("linearizability: lin_history records threads on one clock; a mutex-guarded map is "
          "linearizable") {
    otpkv_test::lin_history h;
    std::mutex m;
    std::map<std::string, std::string> store;
    std::vector<std::thread> threads;
    for (int c = 0; c < 8; ++c) {
        threads.emplace_back([&, c] {
            std::mt19937 rng(static_cast<unsigned>(c));
            for (int i = 0; i < 300; ++i) {
                const std::string key = "k" + std::to_string(rng() % 4);
                const auto dice = rng() % 10;
                if (dice < 5) {
                    const std::size_t id = h.invoke(c, key, lin_kind::read);
                    std::optional<std::string> got;
                    {
                        const std::lock_guard lock(m);
                        const auto it = store.find(key);
                        if (it != store.end()) {
                            got = it->second;
                        }
                    }
                    h.complete(id, lin_result::ok, got);
                } else if (dice < 9) {
                    const std::string value = std::to_string(c) + "." + std::to_string(i);
                    const std::size_t id = h.invoke(c, key, lin_kind::write, value);
                    {
                        const std::lock_guard lock(m);
                        store[key] = value;
                    }
                    h.complete(id, lin_result::ok);
                } else {
                    const std::size_t id = h.invoke(c, key, lin_kind::write);
                    {
                        const std::lock_guard lock(m);
                        store.erase(key);
                    }
                    h.complete(id, lin_result::ok);
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    const std::vector<lin_op> ops = h.operations();
    REQUIRE(ops.size() == 2400);
    for (const lin_op& op : ops) {
        REQUIRE(op.invoked <= op.completed);
    }
    const auto v = check_linearizable(ops);
    CHECK(v.ok);
    CHECK(v.report.empty());
    CHECK(v.keys == 4);

    // An operation left pending counts as unknown: a write that may or may not have happened.
    otpkv_test::lin_history h2;
    const std::size_t w = h2.invoke(1, "k", lin_kind::write, std::string("x"));
    const std::size_t r = h2.invoke(2, "k", lin_kind::read);
    h2.complete(r, lin_result::ok, std::string("x"));
    const std::vector<lin_op> ops2 = h2.operations();
    CHECK(ops2[w].result == lin_result::unknown);
    CHECK(ops2[w].completed == never);
    CHECK(check_linearizable(ops2).ok);
}

TEST_CASE("linearizability: unknown writes narrowed before the search keep every verdict") {
    // An unknown PUT that was read took effect before that read completed: a read after it
    // cannot see the value it replaced...
    CHECK_FALSE(
        check_linearizable({put(1, "k", "a", 0, 10), put(2, "k", "b", 20, 0, lin_result::unknown),
                            get(3, "k", "b", 30, 40), get(4, "k", "a", 50, 60)})
            .ok);
    // ...but one overlapping that read may.
    CHECK(check_linearizable({put(1, "k", "a", 0, 10), put(2, "k", "b", 20, 0, lin_result::unknown),
                              get(3, "k", "b", 30, 40), get(4, "k", "a", 35, 60)})
              .ok);
    // An unknown PUT read before it was invoked is still a read of a value not yet written.
    CHECK_FALSE(
        check_linearizable({get(3, "k", "b", 0, 10), put(2, "k", "b", 20, 0, lin_result::unknown)})
            .ok);
    // An unknown write nobody could have seen is left out, whatever it wrote: absent stays.
    CHECK(check_linearizable({put(2, "k", "b", 20, 0, lin_result::unknown),
                              del(2, "k", 25, 0, lin_result::unknown), get(3, "k", {}, 0, 10)})
              .ok);
    // An unknown DELETE may explain a later read of absent, at any time after its call.
    CHECK(check_linearizable({put(1, "k", "a", 0, 10), del(2, "k", 20, 0, lin_result::unknown),
                              get(3, "k", "a", 30, 40), get(4, "k", {}, 1000, 1010)})
              .ok);
    CHECK_FALSE(check_linearizable({put(1, "k", "a", 0, 10), get(4, "k", {}, 1000, 1010)}).ok);
    // Two unknown DELETEs explain two reads of absent with a PUT between them; one cannot.
    CHECK(check_linearizable({put(1, "k", "a", 0, 10), del(2, "k", 20, 0, lin_result::unknown),
                              del(3, "k", 25, 0, lin_result::unknown), get(4, "k", {}, 30, 40),
                              put(5, "k", "b", 50, 60), get(6, "k", {}, 70, 80)})
              .ok);
    CHECK_FALSE(check_linearizable(
                    {put(1, "k", "a", 0, 10), del(2, "k", 20, 0, lin_result::unknown),
                     get(4, "k", {}, 30, 40), put(5, "k", "b", 50, 60), get(6, "k", {}, 70, 80)})
                    .ok);
    // 400 unknown writes, each read once soon after its call: each is bounded by its read
    // (left open to the end of the history, every one would stay a candidate at each step).
    std::vector<lin_op> many;
    for (int i = 0; i < 400; ++i) {
        const std::int64_t t = 100 * i;
        many.push_back(put(i, "k", "v" + std::to_string(i), t, 0, lin_result::unknown));
        many.push_back(get(1000, "k", "v" + std::to_string(i), t + 50, t + 60));
    }
    const auto v = check_linearizable(many);
    CHECK(v.ok);
    CHECK(v.operations == 800);
}
