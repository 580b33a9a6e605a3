// SPDX-License-Identifier: MIT
// A linearizability checker for the replication tests: clients record what they invoked and
// what came back, on one monotonic clock; the checker decides, key by key, whether some
// order of the operations, each taking effect at one instant between its invocation and
// its completion, is the history of a register.
//
// - The model, per key: a register whose value is a string or absent (the key is not in the
//   bucket). PUT writes a value, DELETE writes "absent", GET reads. Every written value must
//   be unique across the history (the checker needs it to tell writes apart and says so).
// - Results: `ok` (the reply came; a GET's value is what it read), `fail` (the operation
//   certainly did not take effect: a refusal before anything was applied), `unknown` (a
//   timeout, a closed connection, `ERROR ... unavailable`: it may have taken effect, at any
//   moment from its invocation to the end of the history). A failed or unknown read tells
//   nothing and is left out; an unknown write may be placed anywhere after its invocation,
//   or nowhere.
// - Unknown writes are narrowed before the search (`narrow_unknown`): one that no read
//   could have observed is left out, and a PUT whose value was read must have taken effect
//   before the first read of it completed.
// - Keys are checked one by one (linearizability is compositional: a history is
//   linearizable when each key's is).
// - The search is Wing and Gong's, with Lowe's memo of (operations placed, register value)
//   pairs already explored: exponential in the worst case, quick on the histories of tests
//   (tens of clients, hundreds of operations per key).
//
// On a violation the report names the key, the operation that completed before any order
// could place it, and the operations around it, with their times relative to the
// history's first event.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace otpkv_test {

enum class lin_kind { read, write };
enum class lin_result { pending, ok, fail, unknown };

// One operation of a history. `value`: what a write wrote or a read read; nullopt: absent.
struct lin_op {
    std::string key;
    lin_kind kind = lin_kind::read;
    std::optional<std::string> value;
    std::int64_t invoked = 0;                                          // ns on the history's clock
    std::int64_t completed = std::numeric_limits<std::int64_t>::max(); // unknown: never
    lin_result result = lin_result::pending;
    int client = 0;
};

// What check() found.
struct lin_verdict {
    bool ok = true;
    std::size_t keys = 0;       // keys checked
    std::size_t operations = 0; // operations that took part (ok ones, unknown writes)
    std::string report;         // the first violation, readable; empty when ok
};

// A history under construction: invoke() and complete() from any thread. Times are taken
// under the lock, so the recorded order is the real order of the calls.
class lin_history {
  public:
    using clock = std::chrono::steady_clock;

    // A PUT (value), DELETE (nullopt) or GET (kind read; the value comes with completion).
    std::size_t invoke(int client, std::string key, lin_kind kind,
                       std::optional<std::string> written = std::nullopt) {
        const std::lock_guard lock(mutex_);
        lin_op op;
        op.key = std::move(key);
        op.kind = kind;
        op.value = kind == lin_kind::write ? std::move(written) : std::nullopt;
        op.invoked = now();
        op.client = client;
        ops_.push_back(std::move(op));
        return ops_.size() - 1;
    }

    // How it ended; a read's `read` is the value it returned (nullopt: absent).
    void complete(std::size_t id, lin_result result,
                  std::optional<std::string> read = std::nullopt) {
        const std::lock_guard lock(mutex_);
        lin_op& op = ops_.at(id);
        op.result = result;
        if (result != lin_result::unknown) {
            op.completed = now();
        }
        if (op.kind == lin_kind::read) {
            op.value = std::move(read);
        }
    }

    // The operations so far; one still pending counts as unknown.
    std::vector<lin_op> operations() const {
        const std::lock_guard lock(mutex_);
        std::vector<lin_op> out = ops_;
        for (lin_op& op : out) {
            if (op.result == lin_result::pending) {
                op.result = lin_result::unknown;
                op.completed = std::numeric_limits<std::int64_t>::max();
            }
        }
        return out;
    }

    // Now, on the history's clock (ns since its start): to mark a moment of the run, such
    // as a fault.
    std::int64_t now() const {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start_).count();
    }

  private:
    mutable std::mutex mutex_;
    const clock::time_point start_ = clock::now();
    std::vector<lin_op> ops_;
};

namespace lin_detail {

inline std::string show_value(const std::optional<std::string>& v) {
    return v ? "\"" + *v + "\"" : std::string("absent");
}

inline std::string show_time(std::int64_t ns) {
    if (ns == std::numeric_limits<std::int64_t>::max()) {
        return "end";
    }
    return std::to_string(ns / 1000) + " us";
}

inline std::string show(const lin_op& op) {
    std::string s = "client " + std::to_string(op.client) + " ";
    if (op.kind == lin_kind::read) {
        s += "GET -> " + show_value(op.value);
    } else {
        s += op.value ? "PUT " + show_value(op.value) : std::string("DELETE");
    }
    s += " [" + show_time(op.invoked) + ", " + show_time(op.completed) + "]";
    if (op.result == lin_result::unknown) {
        s += " unknown";
    }
    return s;
}

// One key's operations, checked. Returns an empty string when they are linearizable, else
// the report.
inline std::string check_key(const std::string& key, const std::vector<const lin_op*>& ops,
                             const std::optional<std::string>& initial) {
    const std::size_t n = ops.size();
    // Register values as numbers: 0 absent, i + 1 the value written by write i (unique), and
    // a value nobody wrote gets a number no write produces.
    std::unordered_map<std::string, std::size_t> written;
    std::vector<std::size_t> value_of(n, 0); // a write: the value it writes; a read: it reads
    const std::size_t never = n + 1;
    for (std::size_t i = 0; i < n; ++i) {
        if (ops[i]->kind == lin_kind::write && ops[i]->value) {
            if (!written.emplace(*ops[i]->value, i + 1).second) {
                return "key " + key + ": the value " + show_value(ops[i]->value) +
                       " is written twice; the checker needs every written value unique";
            }
        }
    }
    if (initial) {
        written.emplace(*initial, n + 2); // a value from before the history (unless written)
    }
    for (std::size_t i = 0; i < n; ++i) {
        const auto& v = ops[i]->value;
        if (v && ops[i]->kind == lin_kind::write) {
            value_of[i] = i + 1;
        } else if (v) {
            const auto it = written.find(*v);
            value_of[i] = it != written.end() ? it->second : never;
        }
    }
    std::size_t state = initial ? written.at(*initial) : 0;

    // The events in time order (a call before a return at the same instant), as a doubly
    // linked list that placed operations are lifted out of. Unknown writes have no return.
    struct entry {
        std::size_t op;
        bool call;
        std::int64_t at;
        std::size_t prev, next; // indexes into `list`; npos ends
        std::size_t match;      // a call's return entry, or npos
    };
    constexpr std::size_t npos = static_cast<std::size_t>(-1);
    std::vector<entry> list;
    std::size_t required = 0;
    for (std::size_t i = 0; i < n; ++i) {
        list.push_back({i, true, ops[i]->invoked, npos, npos, npos});
        if (ops[i]->result == lin_result::ok) {
            list.push_back({i, false, ops[i]->completed, npos, npos, npos});
            ++required;
        }
    }
    std::vector<std::size_t> order(list.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return list[a].at != list[b].at ? list[a].at < list[b].at : list[a].call && !list[b].call;
    });
    std::vector<std::size_t> call_of(n, npos);
    const std::size_t head = list.size(); // a sentinel before the first event
    list.push_back({npos, false, 0, npos, npos, npos});
    std::size_t last = head;
    for (const std::size_t e : order) {
        list[last].next = e;
        list[e].prev = last;
        last = e;
        if (list[e].call) {
            call_of[list[e].op] = e;
        } else {
            list[call_of[list[e].op]].match = e;
        }
    }
    // An entry out of the list and back in (its neighbours still name it, dancing links).
    const auto unlink = [&](std::size_t e) {
        list[list[e].prev].next = list[e].next;
        if (list[e].next != npos) {
            list[list[e].next].prev = list[e].prev;
        }
    };
    const auto relink = [&](std::size_t e) {
        list[list[e].prev].next = e;
        if (list[e].next != npos) {
            list[list[e].next].prev = e;
        }
    };
    // An operation placed: its call and its return (if it has one) leave the list.
    const auto lift = [&](std::size_t call) {
        unlink(call);
        if (list[call].match != npos) {
            unlink(list[call].match);
        }
    };
    const auto unlift = [&](std::size_t call) {
        if (list[call].match != npos) {
            relink(list[call].match);
        }
        relink(call);
    };

    std::vector<std::uint64_t> placed((n + 63) / 64, 0);
    struct seen_hash {
        std::size_t operator()(const std::pair<std::vector<std::uint64_t>, std::size_t>& k) const {
            std::uint64_t h = k.second * 0x9e3779b97f4a7c15U;
            for (const std::uint64_t w : k.first) {
                h = (h ^ w) * 0x100000001b3U;
                h ^= h >> 29;
            }
            return static_cast<std::size_t>(h);
        }
    };
    std::unordered_set<std::pair<std::vector<std::uint64_t>, std::size_t>, seen_hash> seen;
    std::vector<std::pair<std::size_t, std::size_t>> stack; // (call entry, state before it)
    std::size_t placed_required = 0;
    std::size_t deepest = 0;
    std::size_t blocked = npos; // the return that stopped the deepest attempt
    // Unknown DELETEs all write "absent" and stay open to the end: any one of them does what
    // another does. They are placed in the order they were invoked (the k-th placed is the
    // k-th invoked): if some order places k of them, the first k invoked, in that order, fit
    // the same places, since the k-th place comes after at least k of their calls. This
    // keeps their placements from multiplying the search.
    std::vector<std::size_t> open_deletes; // ops, by invocation
    for (std::size_t i = 0; i < n; ++i) {
        if (ops[i]->kind == lin_kind::write && !ops[i]->value &&
            ops[i]->result == lin_result::unknown) {
            open_deletes.push_back(i);
        }
    }
    std::stable_sort(open_deletes.begin(), open_deletes.end(), [&](std::size_t a, std::size_t b) {
        return ops[a]->invoked < ops[b]->invoked;
    });
    std::vector<bool> is_open_delete(n, false);
    for (const std::size_t i : open_deletes) {
        is_open_delete[i] = true;
    }
    std::size_t deletes_placed = 0;
    std::size_t entry_at = list[head].next;
    while (placed_required < required) {
        if (entry_at == npos) {
            break; // only unknown calls are left, and required ones cannot be: impossible
        }
        const entry& e = list[entry_at];
        if (e.call) {
            const std::size_t i = e.op;
            const bool is_write = ops[i]->kind == lin_kind::write;
            const bool in_turn = !is_open_delete[i] || (deletes_placed < open_deletes.size() &&
                                                        open_deletes[deletes_placed] == i);
            const bool fits = in_turn && (is_write || value_of[i] == state);
            std::size_t next_state = is_write ? value_of[i] : state;
            bool fresh = false;
            if (fits) {
                placed[i / 64] |= std::uint64_t{1} << (i % 64);
                fresh = seen.emplace(placed, next_state).second;
                if (!fresh) {
                    placed[i / 64] &= ~(std::uint64_t{1} << (i % 64));
                }
            }
            if (fresh) {
                stack.emplace_back(entry_at, state);
                state = next_state;
                placed_required += ops[i]->result == lin_result::ok ? 1U : 0U;
                deletes_placed += is_open_delete[i] ? 1U : 0U;
                lift(entry_at);
                entry_at = list[head].next;
                if (placed_required > deepest) {
                    deepest = placed_required;
                }
            } else {
                entry_at = e.next;
            }
        } else {
            // An operation completed before it could be placed: undo the last placement.
            if (placed_required >= deepest) {
                blocked = entry_at;
            }
            if (stack.empty()) {
                break;
            }
            const auto [call, before] = stack.back();
            stack.pop_back();
            const std::size_t i = list[call].op;
            placed[i / 64] &= ~(std::uint64_t{1} << (i % 64));
            placed_required -= ops[i]->result == lin_result::ok ? 1U : 0U;
            deletes_placed -= is_open_delete[i] ? 1U : 0U;
            state = before;
            unlift(call);
            entry_at = list[call].next;
        }
    }
    if (placed_required == required) {
        return {};
    }

    std::string r = "key " + key + ": not linearizable (" + std::to_string(n) +
                    " operations, at most " + std::to_string(deepest) + " of the " +
                    std::to_string(required) + " completed ones could be ordered";
    r += !initial ? ", starting absent)\n" : ", starting from " + show_value(initial) + ")\n";
    if (blocked != npos) {
        const lin_op& stuck = *ops[list[blocked].op];
        r += "  no order places: " + show(stuck) + "\n  with the operations around it:\n";
        std::size_t shown = 0;
        for (const lin_op* op : ops) {
            if (op != &stuck && op->invoked <= stuck.completed && op->completed >= stuck.invoked &&
                shown < 20) {
                r += "    " + show(*op) + "\n";
                ++shown;
            }
        }
        r += shown == 0 ? "    (none)\n" : "";
        r += "  and the last writes completed before it:\n";
        std::vector<const lin_op*> before;
        for (const lin_op* op : ops) {
            if (op->kind == lin_kind::write && op->completed < stuck.invoked) {
                before.push_back(op);
            }
        }
        std::sort(before.begin(), before.end(),
                  [](const lin_op* a, const lin_op* b) { return a->completed > b->completed; });
        for (std::size_t k = 0; k < before.size() && k < 3; ++k) {
            r += "    " + show(*before[k]) + "\n";
        }
    }
    return r;
}

// Narrows the unknown writes before the search (each one left open to the end of the
// history multiplies it):
// - one that no successful read could have observed (no read completing after the write's
//   invocation returned its value, or "absent" for a DELETE) is left out: placing it can
//   only constrain the reads after it, never explain one, so the history is linearizable
//   with it exactly when it is without it;
// - a PUT whose value some read returned must have taken effect before the first such read
//   completed (values are unique, so nothing else explains that read): it becomes a
//   completed write that returned then.
// `storage` keeps the rewritten operations; `ops` points into it or at the originals.
inline void narrow_unknown(std::vector<const lin_op*>& ops, std::vector<lin_op>& storage) {
    // The earliest and the latest completion of a successful read of each value ("" stands
    // for absent, which no written value can be: a token is never empty).
    std::unordered_map<std::string, std::pair<std::int64_t, std::int64_t>> reads;
    for (const lin_op* op : ops) {
        if (op->kind == lin_kind::read && op->result == lin_result::ok) {
            auto [it, fresh] =
                reads.try_emplace(op->value.value_or(""), op->completed, op->completed);
            if (!fresh) {
                it->second.first = std::min(it->second.first, op->completed);
                it->second.second = std::max(it->second.second, op->completed);
            }
        }
    }
    std::erase_if(ops, [&](const lin_op* op) {
        if (op->kind != lin_kind::write || op->result != lin_result::unknown) {
            return false;
        }
        const auto it = reads.find(op->value.value_or(""));
        return it == reads.end() || it->second.second <= op->invoked;
    });
    storage.reserve(ops.size()); // no reallocation below: `ops` points into it
    for (const lin_op*& op : ops) {
        if (op->kind == lin_kind::write && op->result == lin_result::unknown && op->value) {
            lin_op bounded = *op;
            bounded.result = lin_result::ok;
            bounded.completed = std::max(reads.at(*op->value).first, op->invoked);
            storage.push_back(std::move(bounded));
            op = &storage.back();
        }
    }
}

} // namespace lin_detail

// Checks `ops` key by key; a key starts absent unless `initial` gives its value. Stops at
// the first key that is not linearizable.
inline lin_verdict
check_linearizable(const std::vector<lin_op>& ops,
                   const std::unordered_map<std::string, std::string>& initial = {}) {
    lin_verdict v;
    std::unordered_map<std::string, std::vector<const lin_op*>> by_key;
    std::vector<std::string> keys;
    for (const lin_op& op : ops) {
        const bool takes_part = op.result == lin_result::ok ||
                                (op.result == lin_result::unknown && op.kind == lin_kind::write);
        if (!takes_part) {
            continue;
        }
        auto [it, inserted] = by_key.try_emplace(op.key);
        if (inserted) {
            keys.push_back(op.key);
        }
        it->second.push_back(&op);
        ++v.operations;
    }
    std::sort(keys.begin(), keys.end());
    for (const std::string& key : keys) {
        ++v.keys;
        std::vector<lin_op> bounded;
        lin_detail::narrow_unknown(by_key[key], bounded);
        const auto init = initial.find(key);
        std::string report = lin_detail::check_key(
            key, by_key[key],
            init != initial.end() ? std::optional<std::string>(init->second) : std::nullopt);
        if (!report.empty()) {
            v.ok = false;
            v.report = std::move(report);
            return v;
        }
    }
    return v;
}

} // namespace otpkv_test
