// SPDX-License-Identifier: MIT
// bucket.hpp: every call with exact values, both storage paths (inline slots and nodes),
// events and their order, the lifecycle, and lock-free reads racing writers.
#include "support.hpp"

#include <otpkv/bucket.hpp>
#include <otpkv/detail/string_hash.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

using otpkv::bucket;
using otpkv::bucket_event_kind;
using otpkv::exit_reason;
using otpkv_test::journal;
using sbucket = bucket<std::string, std::string>;

namespace {

// Runs `reader(done)` on a thread of its own while two threads run `writer(0)` and
// `writer(1)` to their end; then `done` turns true, and the reader must return soon after.
template <class Reader, class Writer> void race(Reader reader, Writer writer) {
    std::atomic<bool> done{false};
    std::thread r([&] { reader(static_cast<const std::atomic<bool>&>(done)); });
    std::thread w1([&] { writer(0); });
    std::thread w2([&] { writer(1); });
    w1.join();
    w2.join();
    done.store(true);
    r.join();
}

// A value long enough to live in a node, not in the slot.
std::string big(const std::string& tag) {
    return tag + std::string(60, '#');
}

std::map<std::string, std::string> contents(const sbucket& b) {
    std::map<std::string, std::string> out;
    b.for_each([&](const std::string& k, const std::string& v) {
        CHECK(out.emplace(k, v).second); // each key once
    });
    return out;
}

std::string describe(const sbucket::event& e) {
    return e.kind == bucket_event_kind::put ? e.key + "=" + e.value.value_or("?")
                                            : e.key + " deleted";
}

void reclaim_all() {
    auto& domain = otpkv::detail::epoch_domain::instance();
    domain.synchronize();
    domain.synchronize();
}

} // namespace

TEST_CASE("get, put, erase, contains and size with exact values") {
    sbucket b;
    CHECK(b.alive());
    CHECK(b.get("milk") == std::nullopt);
    CHECK_FALSE(b.contains("milk"));
    CHECK(b.size() == 0);

    CHECK(b.put("milk", "3"));
    CHECK(b.get("milk") == "3");
    CHECK(b.contains("milk"));
    CHECK(b.size() == 1);

    CHECK(b.put("milk", "4")); // replaces
    CHECK(b.get("milk") == "4");
    CHECK(b.size() == 1);

    CHECK(b.put("eggs", ""));
    CHECK(b.get("eggs") == ""); // an empty value is a value
    CHECK(b.size() == 2);

    CHECK(b.erase("milk") == "4"); // the guide's delete returns the old value
    CHECK(b.erase("milk") == std::nullopt);
    CHECK(b.get("milk") == std::nullopt);
    CHECK(b.size() == 1);
    CHECK(contents(b) == std::map<std::string, std::string>{{"eggs", ""}});
}

TEST_CASE("keys and values of every size: inline, at the limit, and in nodes") {
    sbucket b;
    // 22 bytes of key and value together fit the slot; 23 do not.
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"k", "v"},
        {std::string(11, 'a'), std::string(11, 'b')},
        {std::string(12, 'c'), std::string(11, 'd')},
        {std::string(22, 'e'), ""},
        {std::string(23, 'f'), "x"},
        {"short", big("value")},
        {big("key"), "short"},
        {std::string("nul\0key", 7), std::string("bin\0\xff", 5)},
    };
    for (const auto& [k, v] : cases) {
        CHECK(b.put(k, v));
    }
    for (const auto& [k, v] : cases) {
        CHECK(b.get(k) == v);
    }
    CHECK(b.size() == cases.size());
    CHECK(b.get(std::string("nul", 3)) == std::nullopt); // no prefix match
    // Sizes change between inline and node in place.
    CHECK(b.put("k", big("now big")));
    CHECK(b.get("k") == big("now big"));
    CHECK(b.put("k", "small again"));
    CHECK(b.get("k") == "small again");
    CHECK(b.erase(big("key")) == "short");
    CHECK(b.size() == cases.size() - 1);
    std::map<std::string, std::string> expected(cases.begin(), cases.end());
    expected.erase(big("key"));
    expected["k"] = "small again";
    CHECK(contents(b) == expected);
}

TEST_CASE("a key of every length 0-30 is found, and a key one byte or one length apart is not") {
    // Lookups compare a slot's words with the key's in registers, each word masked to the
    // key's bytes (bucket.hpp, `probe_of`): every length and every byte position counts.
    sbucket b;
    const std::string base = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (std::size_t n = 0; n <= 30; n += 2) { // every other length is stored
        const std::string key = base.substr(0, n);
        // A value that fills the slot with the key where it can (22 bytes in all), so the
        // value's bytes sit right after the key's.
        const std::string value(n <= 20 ? 20 - n : 3, static_cast<char>('A' + n));
        CHECK(b.put(key, value));
    }
    for (std::size_t n = 0; n <= 30; ++n) {
        CAPTURE(n);
        const std::string key = base.substr(0, n);
        if (n % 2 == 0) {
            CHECK(b.get(key) == std::string(n <= 20 ? 20 - n : 3, static_cast<char>('A' + n)));
        } else {
            CHECK(b.get(key) == std::nullopt); // a prefix of a stored key, and an extension
        }
        for (std::size_t at = 0; at < n; ++at) {
            std::string other = key;
            other[at] = static_cast<char>(other[at] ^ 0x01);
            CHECK(b.get(other) == std::nullopt);
        }
        // The value's first byte in place of the key's next byte: not a longer key.
        CHECK(b.get(key + static_cast<char>('A' + n)) == std::nullopt);
    }
    CHECK(b.size() == 16);
}

TEST_CASE("a key's probe matches the slot of that key only, whatever the value beside it") {
    // Slots built as bucket.hpp lays them out: byte 0 the key's length, byte 1 the value's,
    // the key from byte 2, the value's bytes ending the slot. The hash's tag usually keeps
    // other keys from being compared at all, so the comparison is checked here directly.
    using otpkv::detail::probe_matches;
    using otpkv::detail::slot_bytes;
    const std::string base = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    auto slot = [&](const std::string& key, const std::string& value) {
        unsigned char bytes[slot_bytes] = {};
        bytes[0] = static_cast<unsigned char>(key.size());
        bytes[1] = static_cast<unsigned char>(value.size());
        std::memcpy(bytes + 2, key.data(), key.size());
        std::memcpy(bytes + slot_bytes - value.size(), value.data(), value.size());
        std::uint64_t words[otpkv::detail::slot_words];
        std::memcpy(words, bytes, sizeof words);
        return std::vector<std::uint64_t>(words, words + 3);
    };
    auto matches = [&](const std::string& probe_key, const std::vector<std::uint64_t>& w) {
        const std::uint64_t words[3] = {w[0], w[1], w[2]};
        return probe_matches(
            words, otpkv::detail::probe_of(reinterpret_cast<const unsigned char*>(probe_key.data()),
                                           probe_key.size()));
    };
    int wrong = 0;
    for (std::size_t n = 0; n <= 22; ++n) {
        const std::string key = base.substr(0, n);
        for (std::size_t vs = 0; n + vs <= 22; ++vs) {
            // The value continues the key's letters: a longer probe would see them.
            const std::string value = base.substr(n, vs);
            const auto w = slot(key, value);
            wrong += !matches(key, w);
            for (std::size_t m = 0; m <= 23; ++m) {
                wrong += m != n && matches(base.substr(0, m), w); // prefixes and extensions
            }
            for (std::size_t at = 0; at < n; ++at) {
                std::string other = key;
                other[at] = static_cast<char>(other[at] ^ 0x40);
                wrong += matches(other, w);
            }
        }
    }
    // A node slot (byte 0 = 0xFF) and a key too long for a slot match nothing inline.
    unsigned char node_bytes[slot_bytes] = {otpkv::detail::node_marker};
    std::vector<std::uint64_t> node_slot(3);
    std::memcpy(node_slot.data(), node_bytes, sizeof node_bytes);
    for (std::size_t m = 0; m <= 23; ++m) {
        wrong += matches(base.substr(0, m), node_slot);
    }
    wrong += matches(base.substr(0, 23), slot(base.substr(0, 22), ""));
    CHECK(wrong == 0);
}

TEST_CASE("keys and values of every integer size, read back whole") {
    bucket<char, std::uint64_t> c;
    bucket<std::int16_t, std::int16_t> s;
    bucket<std::uint32_t, double> i;
    struct fourteen {
        char bytes[14];
    };
    bucket<std::uint64_t, fourteen> l;
    const auto wide = [](int k) {
        return std::uint64_t{0x0102030405060708} * static_cast<std::uint64_t>(k + 1000);
    };
    for (int k = -100; k < 100; ++k) {
        CHECK(c.put(static_cast<char>(k), wide(k)));
        CHECK(s.put(static_cast<std::int16_t>(k * 300), static_cast<std::int16_t>(-k)));
        CHECK(i.put(static_cast<std::uint32_t>(k) * 0x01010101U, k / 3.0));
        fourteen v{};
        for (int j = 0; j < 14; ++j) {
            v.bytes[j] = static_cast<char>(k + j);
        }
        CHECK(l.put(static_cast<std::uint64_t>(k) << 56 | 0x00FF00FF00FF00FFULL, v));
    }
    int wrong = 0;
    for (int k = -100; k < 100; ++k) {
        wrong += c.get(static_cast<char>(k)) != wide(k);
        wrong += s.get(static_cast<std::int16_t>(k * 300)) != static_cast<std::int16_t>(-k);
        wrong += i.get(static_cast<std::uint32_t>(k) * 0x01010101U) != k / 3.0;
        const auto v = l.get(static_cast<std::uint64_t>(k) << 56 | 0x00FF00FF00FF00FFULL);
        wrong += !v.has_value();
        for (int j = 0; v && j < 14; ++j) {
            wrong += v->bytes[j] != static_cast<char>(k + j);
        }
        // One bit off in the lowest byte, and in the byte below the highest: absent.
        wrong +=
            l.get((static_cast<std::uint64_t>(k) << 56 | 0x00FF00FF00FF00FFULL) ^ 1U).has_value();
        wrong += l.get((static_cast<std::uint64_t>(k) << 56 | 0x00FF00FF00FF00FFULL) ^ (1ULL << 55))
                     .has_value();
    }
    CHECK(wrong == 0);
    CHECK(s.get(1) == std::nullopt);
    CHECK(c.size() == 200);
}

TEST_CASE("string_hash.hpp: equal bytes hash equally wherever they are; every byte and the length "
          "count") {
    using otpkv::detail::bytes_equal;
    using otpkv::detail::copy_short;
    using otpkv::detail::hash_bytes;
    // The same bytes at every alignment.
    alignas(8) char one[64];
    alignas(8) char two[64];
    const std::string text = "The quick brown fox jumps over the lazy dog";
    std::set<std::uint64_t> hashes;
    for (std::size_t n = 0; n <= 40; ++n) {
        std::memcpy(one, text.data(), n);
        const std::uint64_t h = hash_bytes({one, n});
        for (std::size_t off = 1; off < 8; ++off) {
            std::memcpy(two + off, text.data(), n);
            CHECK(hash_bytes({two + off, n}) == h);
            CHECK(bytes_equal(one, two + off, n));
        }
        CHECK(hashes.insert(h).second); // each prefix its own hash
        for (std::size_t at = 0; at < n; ++at) {
            std::memcpy(two, text.data(), n);
            two[at] = static_cast<char>(two[at] ^ 0x20);
            CHECK(hash_bytes({two, n}) != h);
            CHECK_FALSE(bytes_equal(one, two, n));
        }
        if (n <= 24) {
            char copied[32];
            std::memset(copied, '#', sizeof copied);
            copy_short(copied + 3, text.data(), n);
            CHECK(std::string(copied + 3, n) == text.substr(0, n));
            CHECK(copied[2] == '#'); // nothing written outside
            CHECK(copied[3 + n] == '#');
        }
    }
    // Zero bytes count: "", "\0", "\0\0" ... differ.
    const std::string zeros(24, '\0');
    std::set<std::uint64_t> zero_hashes;
    for (std::size_t n = 0; n <= 24; ++n) {
        CHECK(zero_hashes.insert(hash_bytes({zeros.data(), n})).second);
    }
    // Spread: 100,000 keys "key0".."key99999" give as many distinct hashes, and each of
    // the bits a table uses (shard, tag and group bits) is set about half the time.
    std::set<std::uint64_t> spread;
    int ones[64] = {};
    for (int i = 0; i < 100'000; ++i) {
        const std::string key = "key" + std::to_string(i);
        const std::uint64_t h = hash_bytes(key);
        spread.insert(h);
        for (int bit = 0; bit < 64; ++bit) {
            ones[bit] += static_cast<int>((h >> bit) & 1U);
        }
    }
    CHECK(spread.size() == 100'000);
    for (int bit = 0; bit < 64; ++bit) {
        CAPTURE(bit);
        CHECK(ones[bit] > 48'500);
        CHECK(ones[bit] < 51'500);
    }
}

TEST_CASE("readers racing writers on keys 1-22 bytes long never take one key for another") {
    // The keys are prefixes of one string: each is another's prefix and extension, and
    // inline slots hold the key's bytes right next to the value's. The values change
    // length (so where the value's bytes start moves) and turn into nodes and back; keys
    // come and go. A reader must see, for each key, only one of that key's values.
    sbucket b(otpkv::bucket_options{1});
    const std::string base = "0123456789abcdefghijkl"; // 22 bytes
    auto value_for = [&](std::size_t n, int version) {
        // Starts with the key's length, then the version; short or long (a node).
        std::string v = std::to_string(n) + "." + std::to_string(version) + ".";
        const std::size_t room = 22 - n;
        if (version % 3 == 2) {
            v += std::string(40, 'N');
        } else if (v.size() < room && version % 3 == 1) {
            v += std::string(room - v.size(), 'F'); // fills the slot exactly
        }
        return v;
    };
    auto valid = [&](std::size_t n, const std::string& v) {
        const std::string head = std::to_string(n) + ".";
        if (v.compare(0, head.size(), head) != 0) {
            return false;
        }
        const std::size_t dot = v.find('.', head.size());
        if (dot == std::string::npos) {
            return false;
        }
        return v == value_for(n, std::stoi(v.substr(head.size(), dot - head.size())));
    };
    std::atomic<long> bad{0};
    std::atomic<long> hits{0};
    auto writer = [&](std::size_t which) {
        for (int version = 0; version < 3000; ++version) {
            for (std::size_t n = which + 1; n <= 22; n += 2) {
                if ((static_cast<std::size_t>(version) + n) % 5 == 0) {
                    b.erase(base.substr(0, n));
                } else {
                    b.put(base.substr(0, n), value_for(n, version));
                }
            }
        }
    };
    auto reader = [&](const std::atomic<bool>& done) {
        long seen = 0;
        while (!done.load()) {
            for (std::size_t n = 1; n <= 22; ++n) {
                b.visit(base.substr(0, n), [&](std::string_view v) {
                    ++seen;
                    if (!valid(n, std::string(v))) {
                        bad.fetch_add(1);
                    }
                });
            }
        }
        hits.fetch_add(seen);
    };
    race(reader, writer);
    CHECK(bad.load() == 0);
    CHECK(hits.load() > 0);
    for (std::size_t n = 1; n <= 22; ++n) {
        CAPTURE(n);
        const bool erased = (2999 + n) % 5 == 0;
        CHECK(b.get(base.substr(0, n)) ==
              (erased ? std::nullopt : std::optional(value_for(n, 2999))));
    }
}

TEST_CASE("integer keys, struct values and keys that only a node can hold") {
    bucket<int, long> ints;
    CHECK(ints.put(-1, 10L));
    CHECK(ints.put(0, 20L));
    CHECK(ints.get(-1) == 10L);
    CHECK(ints.get(0) == 20L);
    CHECK(ints.get(1) == std::nullopt);

    struct point {
        int x, y;
    };
    bucket<std::uint64_t, point> points;
    CHECK(points.put(7, point{1, 2}));
    CHECK(points.get(7)->y == 2);

    // A custom equality cannot be checked on bytes: such keys always live in nodes.
    struct ci_equal {
        bool operator()(const std::string& a, const std::string& b) const {
            return a.size() == b.size() &&
                   std::equal(a.begin(), a.end(), b.begin(), [](char l, char r) {
                       return std::tolower(static_cast<unsigned char>(l)) ==
                              std::tolower(static_cast<unsigned char>(r));
                   });
        }
    };
    struct ci_hash {
        std::size_t operator()(const std::string& s) const {
            std::string lower;
            for (char c : s) {
                lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            }
            return std::hash<std::string>{}(lower);
        }
    };
    bucket<std::string, int, ci_hash, ci_equal> ci;
    CHECK(ci.put("Milk", 1));
    CHECK(ci.get("MILK") == 1);
    CHECK(ci.put("milk", 2));
    CHECK(ci.size() == 1);
    CHECK(ci.erase("mIlK") == 2);
    CHECK(ci.size() == 0);
}

TEST_CASE("get_and_update and update are atomic read-modify-writes") {
    sbucket b;
    auto first = b.get_and_update("n", [](const std::optional<std::string>& cur) {
        CHECK(cur == std::nullopt);
        return std::pair{std::string("was empty"), std::optional<std::string>("1")};
    });
    CHECK(first == "was empty");
    CHECK(b.get("n") == "1");

    CHECK(b.update("n", [](const std::optional<std::string>& cur) {
        return std::optional<std::string>(*cur + "+1");
    }));
    CHECK(b.get("n") == "1+1");

    // Returning nothing deletes the key.
    auto gone = b.get_and_update("n", [](const std::optional<std::string>& cur) {
        return std::pair{cur.value_or(""), std::optional<std::string>()};
    });
    CHECK(gone == "1+1");
    CHECK_FALSE(b.contains("n"));
    CHECK(b.size() == 0);

    // An exception from the function leaves the key as it was.
    CHECK(b.put("n", "kept"));
    CHECK_THROWS_AS(b.update("n",
                             [](const std::optional<std::string>&) -> std::optional<std::string> {
                                 throw std::runtime_error("no");
                             }),
                    std::runtime_error);
    CHECK(b.get("n") == "kept");

    // Two threads incrementing one counter lose nothing.
    bucket<int, long> counter;
    auto add = [&] {
        for (int i = 0; i < 20000; ++i) {
            counter.update(1, [](const std::optional<long>& c) {
                return std::optional<long>(c.value_or(0) + 1);
            });
        }
    };
    std::thread t1(add);
    std::thread t2(add);
    t1.join();
    t2.join();
    CHECK(counter.get(1) == 40000L);
}

TEST_CASE("growth keeps every entry; erase and re-insert reuse the space") {
    bucket<std::string, std::string> b(otpkv::bucket_options{4});
    const int n = 100000;
    for (int i = 0; i < n; ++i) {
        b.put("key" + std::to_string(i), std::to_string(i * 7));
    }
    CHECK(b.size() == static_cast<std::size_t>(n));
    int wrong = 0;
    for (int i = 0; i < n; ++i) {
        wrong += b.get("key" + std::to_string(i)) != std::to_string(i * 7) ? 1 : 0;
    }
    CHECK(wrong == 0);
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < n; i += 2) {
            CHECK(b.erase("key" + std::to_string(i)).has_value());
        }
        CHECK(b.size() == static_cast<std::size_t>(n / 2));
        for (int i = 0; i < n; i += 2) {
            b.put("key" + std::to_string(i), "again");
        }
        CHECK(b.size() == static_cast<std::size_t>(n));
    }
    CHECK(b.get("key0") == "again");
    CHECK(b.get("key1") == "7");
    CHECK(contents(b).size() == static_cast<std::size_t>(n));
    b.clear();
    CHECK(b.size() == 0);
    CHECK(b.get("key1") == std::nullopt);
    CHECK(contents(b).empty());
    CHECK(b.put("after", "clear"));
    CHECK(b.get("after") == "clear");
}

TEST_CASE("subscribers receive puts and erases in write order") {
    sbucket b;
    CHECK(b.put("before", "1")); // before the subscription: not reported
    journal seen;
    otpkv::subscription sub = b.subscribe([&](const sbucket::event& e) { seen.add(describe(e)); });
    CHECK(sub.active());
    b.put("a", "1");
    b.put("a", big("2"));
    b.erase("a");
    b.erase("never-there"); // every DELETE is reported (protocol.md)
    b.update("c",
             [](const std::optional<std::string>&) { return std::optional<std::string>("3"); });
    b.get_and_update("c", [](const std::optional<std::string>&) {
        return std::pair{0, std::optional<std::string>()};
    });
    b.clear(); // not a DELETE: not reported
    CHECK(seen.take() == std::vector<std::string>{"a=1", "a=" + big("2"), "a deleted",
                                                  "never-there deleted", "c=3", "c deleted"});
    sub.cancel();
    CHECK_FALSE(sub.active());
    b.put("a", "after cancel");
    CHECK(seen.size() == 0);
}

TEST_CASE("per-key order holds with writers on two threads") {
    sbucket b;
    std::mutex m;
    std::map<std::string, std::vector<int>> order;
    auto sub = b.subscribe([&](const sbucket::event& e) {
        const std::lock_guard lock(m);
        order[e.key].push_back(std::stoi(*e.value));
    });
    auto writer = [&](const std::string& key) {
        for (int i = 0; i < 5000; ++i) {
            b.put(key, std::to_string(i));
            b.put("shared", std::to_string(i));
        }
    };
    std::thread t1(writer, "one");
    std::thread t2(writer, "two");
    t1.join();
    t2.join();
    const std::lock_guard lock(m);
    for (const std::string key : {"one", "two"}) {
        REQUIRE(order[key].size() == 5000);
        CHECK(std::is_sorted(order[key].begin(), order[key].end()));
    }
    CHECK(order["shared"].size() == 10000);
    // The last event of a key is the value that stayed.
    CHECK(std::to_string(order["shared"].back()) == b.get("shared"));
}

TEST_CASE("a subscriber that throws is dropped; the bucket and the others go on") {
    sbucket b;
    journal seen;
    int thrown = 0;
    auto bad = b.subscribe([&](const sbucket::event&) {
        ++thrown;
        throw std::runtime_error("subscriber bug");
    });
    auto good = b.subscribe([&](const sbucket::event& e) { seen.add(describe(e)); });
    CHECK(b.put("a", "1"));
    CHECK(b.put("b", "2"));
    CHECK(thrown == 1);
    CHECK(seen.take() == std::vector<std::string>{"a=1", "b=2"});
    CHECK(b.get("a") == "1");
}

TEST_CASE("a callback may write to its own bucket and cancel itself") {
    sbucket b;
    journal seen;
    otpkv::subscription sub;
    sub = b.subscribe([&](const sbucket::event& e) {
        seen.add(describe(e));
        if (e.key == "ping") {
            b.put("pong", "1"); // delivered after this callback, by the same loop
        }
        if (e.key == "stop") {
            sub.cancel();
        }
    });
    b.put("ping", "1");
    b.put("stop", "1");
    b.put("ignored", "1");
    CHECK(seen.take() == std::vector<std::string>{"ping=1", "pong=1", "stop=1"});
}

TEST_CASE("stop: monitors run before it returns; every call afterwards is defined") {
    auto b = sbucket::start();
    b->put("a", "1");
    b->put("large", big("v"));
    journal seen;
    auto watch = b->monitor([&](const exit_reason& r) { seen.add(otpkv::to_string(r)); });
    auto events = b->subscribe([&](const sbucket::event& e) { seen.add(describe(e)); });

    CHECK(b->stop(exit_reason::error("crash")) == exit_reason::error("crash"));
    CHECK(seen.take() == std::vector<std::string>{"{error, crash}"});
    CHECK_FALSE(b->alive());
    // A second stop returns the first reason.
    CHECK(b->stop() == exit_reason::error("crash"));

    CHECK(b->get("a") == std::nullopt);
    CHECK_FALSE(b->contains("a"));
    CHECK(b->size() == 0);
    CHECK(contents(*b).empty());
    CHECK_FALSE(b->put("a", "2"));
    CHECK(b->erase("a") == std::nullopt);
    bool called = false;
    CHECK(b->get_and_update("a", [&](const std::optional<std::string>&) {
        called = true;
        return std::pair{1, std::optional<std::string>("x")};
    }) == std::nullopt);
    CHECK_FALSE(b->update("a", [&](const std::optional<std::string>&) {
        called = true;
        return std::optional<std::string>("x");
    }));
    CHECK_FALSE(called);
    CHECK_FALSE(b->subscribe([](const sbucket::event&) {}).active());
    b->clear();
    CHECK(seen.size() == 0); // no events for the refused writes
    // Monitoring a stopped bucket reports noproc at once.
    auto late = b->monitor([&](const exit_reason& r) { seen.add(otpkv::to_string(r)); });
    CHECK(seen.take() == std::vector<std::string>{"noproc"});
}

TEST_CASE("concurrent stops: each returns after the monitors ran, with the first reason") {
    for (int round = 0; round < 50; ++round) {
        auto b = sbucket::start();
        std::atomic<int> monitors_done{0};
        auto slow = b->monitor([&](const exit_reason&) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            monitors_done.fetch_add(1);
        });
        std::atomic<int> saw_done{0};
        auto stopper = [&] {
            b->stop(exit_reason::shutdown());
            saw_done.fetch_add(monitors_done.load());
        };
        std::thread t1(stopper);
        std::thread t2(stopper);
        t1.join();
        t2.join();
        CHECK(saw_done.load() == 2);
        CHECK(b->exited() == exit_reason::shutdown());
    }
}

TEST_CASE("a bucket destroyed while running exits with shutdown") {
    journal seen;
    otpkv::monitor_handle watch;
    {
        sbucket b;
        watch = b.monitor([&](const exit_reason& r) { seen.add(otpkv::to_string(r)); });
    }
    CHECK(seen.take() == std::vector<std::string>{"shutdown"});
}

TEST_CASE("lock-free readers never see a torn or foreign value while writers churn") {
    // Each value starts with its key: a reader that ever sees another key's value, or a
    // mix of two writes, fails. Values alternate between inline and node sizes, and the
    // writers insert, replace, erase and grow the table meanwhile.
    sbucket b(otpkv::bucket_options{2});
    constexpr int keys = 2000;
    std::atomic<long> bad{0};
    std::atomic<long> reads{0};
    auto value_for = [](int key, int version) {
        const std::string head = std::to_string(key) + ":" + std::to_string(version) + ":";
        return version % 2 == 0 ? head : head + std::string(40, static_cast<char>('a' + key % 26));
    };
    auto check = [&](int key, const std::string& v) {
        const std::string head = std::to_string(key) + ":";
        if (v.compare(0, head.size(), head) != 0) {
            return false;
        }
        const std::size_t colon = v.find(':', head.size());
        if (colon == std::string::npos) {
            return false;
        }
        const int version = std::stoi(v.substr(head.size(), colon - head.size()));
        return v == value_for(key, version);
    };
    auto writer = [&](int first) {
        for (int version = 0; version < 30; ++version) {
            for (int k = first; k < keys; k += 2) {
                if ((k + version) % 7 == 0) {
                    b.erase(std::to_string(k));
                } else {
                    b.put(std::to_string(k), value_for(k, version));
                }
            }
        }
    };
    auto reader = [&](const std::atomic<bool>& done) {
        long n = 0;
        while (!done.load()) {
            for (int k = 0; k < keys; k += 3) {
                if (auto v = b.get(std::to_string(k)); v && !check(k, *v)) {
                    bad.fetch_add(1);
                }
                ++n;
            }
        }
        reads.fetch_add(n);
    };
    race(reader, writer);
    CHECK(bad.load() == 0);
    CHECK(reads.load() > 0);
    // Every key ends with its last write.
    int wrong = 0;
    for (int k = 0; k < keys; ++k) {
        const auto v = b.get(std::to_string(k));
        const bool erased = (k + 29) % 7 == 0;
        wrong += erased ? v.has_value() : v != value_for(k, 29);
    }
    CHECK(wrong == 0);
}

TEST_CASE("two-word slots: keys one bit apart are told apart, also in one group with one tag") {
    // A one-shard bucket holding two keys has one group: every pair below shares it, and one
    // pair in 128 shares the hash tag too, so that only the compare of the key word tells the
    // two keys apart. Every bit of every integer size, 300 pairs each.
    int wrong = 0;
    const auto pairs = [&]<class Key>(Key) {
        for (unsigned bit = 0; bit < 8 * sizeof(Key); ++bit) {
            for (std::uint64_t i = 0; i < 300; ++i) {
                const auto a = static_cast<Key>(i * 0x9E3779B97F4A7C15ULL);
                const auto b = static_cast<Key>(a ^ static_cast<Key>(std::uint64_t{1} << bit));
                bucket<Key, std::uint64_t> m(otpkv::bucket_options{1});
                m.put(a, 1);
                m.put(b, 2);
                wrong += m.get(a) != 1U || m.get(b) != 2U || m.size() != 2;
            }
        }
    };
    pairs(std::uint8_t{});
    pairs(std::uint16_t{});
    pairs(std::uint32_t{});
    pairs(std::uint64_t{});
    CHECK(wrong == 0);
}

TEST_CASE("two-word slots: readers racing writers see each key's own value, whole") {
    // Integer keys and 8-byte values take the two-word layout (key word, value word).
    static_assert(
        otpkv::detail::bucket_traits<std::uint64_t, std::uint64_t, std::hash<std::uint64_t>,
                                     std::equal_to<std::uint64_t>>::slot_words == 2);
    static_assert(otpkv::detail::bucket_traits<std::uint64_t, std::string, std::hash<std::uint64_t>,
                                               std::equal_to<std::uint64_t>>::slot_words == 3);
    // A value's high half is its key, its low half a version: a read that mixes the key word
    // of one write with the value word of another, or takes a key for a neighbour (the keys
    // differ in one high bit), fails. Writers erase and re-insert, so slots change owners,
    // and the table grows meanwhile.
    bucket<std::uint64_t, std::uint64_t> b(otpkv::bucket_options{2});
    constexpr std::uint64_t keys = 4000;
    const auto key_of = [](std::uint64_t i) { return (i % 2) << 63 | (i / 2); };
    const auto value_for = [](std::uint64_t i, std::uint64_t version) { return i << 32 | version; };
    std::atomic<long> bad{0};
    std::atomic<long> hits{0};
    auto writer = [&](std::uint64_t first) {
        for (std::uint64_t version = 0; version < 40; ++version) {
            for (std::uint64_t i = first; i < keys; i += 2) {
                if ((i + version) % 5 == 0) {
                    b.erase(key_of(i));
                } else {
                    b.put(key_of(i), value_for(i, version));
                }
            }
        }
    };
    auto reader = [&](const std::atomic<bool>& done) {
        long n = 0;
        while (!done.load()) {
            for (std::uint64_t i = 0; i < keys; i += 3) {
                if (const auto v = b.get(key_of(i))) {
                    ++n;
                    if (*v >> 32 != i || (*v & 0xFFFFFFFF) >= 40) {
                        bad.fetch_add(1);
                    }
                }
            }
        }
        hits.fetch_add(n);
    };
    race(reader, writer);
    CHECK(bad.load() == 0);
    CHECK(hits.load() > 0);
    int wrong = 0;
    for (std::uint64_t i = 0; i < keys; ++i) {
        const auto v = b.get(key_of(i));
        wrong += (i + 39) % 5 == 0 ? v.has_value() : v != value_for(i, 39);
    }
    CHECK(wrong == 0);
    CHECK(b.size() == keys - keys / 5);
}

TEST_CASE("retired tables and nodes are all freed after churn") {
    auto& domain = otpkv::detail::epoch_domain::instance();
    reclaim_all();
    REQUIRE(domain.retired() == 0);
    {
        auto b = sbucket::start(otpkv::bucket_options{2});
        std::thread other([&] {
            for (int i = 0; i < 20000; ++i) {
                b->put("n" + std::to_string(i % 500), big(std::to_string(i)));
                (void)b->get("n" + std::to_string((i * 7) % 500));
            }
        });
        for (int i = 0; i < 20000; ++i) {
            b->put("m" + std::to_string(i), big(std::to_string(i)));
            if (i % 3 == 0) {
                b->erase("m" + std::to_string(i / 2));
            }
        }
        other.join();
        b->clear();
        b->put("x", big("y"));
        b->stop();
    }
    reclaim_all();
    CHECK(domain.retired() == 0);
}

TEST_CASE("visit hands over the stored value without a copy, or reports it missing") {
    sbucket b;
    b.put("small", "inline");
    b.put("large", big("node"));
    std::vector<std::string> seen;
    auto record = [&](std::string_view v) { seen.emplace_back(v); };
    CHECK(b.visit("small", record));
    CHECK(b.visit("large", record));
    CHECK_FALSE(b.visit("absent", record));
    CHECK(seen == std::vector<std::string>{"inline", big("node")});

    bucket<int, long> ints;
    ints.put(3, 30L);
    long got = 0;
    CHECK(ints.visit(3, [&](const long& v) { got = v; }));
    CHECK(got == 30L);
    CHECK_FALSE(ints.visit(4, [&](const long& v) { got = v; }));
    CHECK(got == 30L);

    b.stop();
    CHECK_FALSE(b.visit("small", record));
    CHECK(seen.size() == 2);
}

TEST_CASE("bytes: keys' and values' bytes through puts, overwrites, erases, growth and clear") {
    bucket<std::string, std::string> b;
    CHECK(b.bytes() == 0);
    b.put("k", "v");
    CHECK(b.bytes() == 2);
    b.put("k", std::string(50, 'x')); // inline to a node
    CHECK(b.bytes() == 51);
    b.put("k", "vv"); // and back
    CHECK(b.bytes() == 3);
    CHECK(b.update(
        "k", [](const std::optional<std::string>&) { return std::optional<std::string>("four"); }));
    CHECK(b.bytes() == 5);
    b.erase("k");
    b.erase("absent");
    CHECK(b.bytes() == 0);
    std::size_t want = 0;
    for (int i = 0; i < 2000; ++i) { // several rebuilds of every shard's table
        const std::string key = "key" + std::to_string(i);
        const std::string value(static_cast<std::size_t>(i % 40), 'v');
        b.put(key, value);
        want += key.size() + value.size();
    }
    CHECK(b.bytes() == want);
    CHECK(b.update("key7", [](const std::optional<std::string>&) {
        return std::optional<std::string>(); // deletes it
    }));
    CHECK(b.bytes() == want - 4 - 7);
    b.clear();
    CHECK(b.bytes() == 0);
    b.put("a", "b");
    b.stop();
    CHECK(b.bytes() == 0);

    bucket<int, std::string> ints;
    ints.put(1, "abc");
    CHECK(ints.bytes() == sizeof(int) + 3);
    bucket<std::string, long> longs;
    longs.put("abc", 5);
    longs.put(std::string(30, 'k'), 6);
    CHECK(longs.bytes() == 3 + sizeof(long) + 30 + sizeof(long));
}
