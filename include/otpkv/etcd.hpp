// SPDX-License-Identifier: MIT
/// @file
/// `etcd_view`: the `view_service` (membership.hpp) backed by etcd, spoken to through its
/// v3 JSON gateway over plain HTTP/1.1 (etcd 3.4 and later serve it at `/v3/...` on the
/// client URL), so no runtime package is needed. Keys and values travel base64-encoded.
///
/// What it keeps in etcd, under `etcd_options::prefix` (default `/otpkv/`):
/// - `nodes/<name>`: this node's address (`HOST:PORT`), attached to its lease. Taken with
///   a transaction that succeeds only when the key is absent, so a node restarted while its
///   previous incarnation's lease still runs waits for that lease to expire (its old self
///   could be frozen, not dead) and logs `etcd_waiting`.
/// - `chains/<range>`: `epoch=N nodes=a,b,c` (membership.hpp), replaced only by
///   `swap_chain`: a transaction comparing the record's mod_revision and this node's key's
///   create_revision (its lease still holds), never a lock.
///
/// One thread (a `task`) does the rest: it grants the lease (TTL: `lease` rounded up to
/// whole seconds, as etcd counts them; etcd may raise it to its minimum, which follows its
/// election timeout), renews it every third of the TTL, reads the prefix and then watches
/// it (`/v3/watch`, a chunked stream of JSON lines) to keep `view()` current. A renewal
/// records its *send* time: `lease_deadline()` is that time plus the TTL granted. A renewal
/// that finds the lease gone (TTL 0) means etcd expired it: the node registers again with a
/// new lease and `incarnation()` rises. When etcd cannot be reached the picture is kept, as
/// last seen, with `connected == false`, and every URL of `endpoints` is tried in turn.
///
/// On `stop` the lease is revoked, so the node's key disappears at once and the others
/// reconfigure without waiting for a TTL. The owner must stop serving before that.
///
/// Events (`etcd_options::log`, field `etcd=` the URL): `etcd_connected`,
/// `etcd_unreachable` (warning, once per outage, with the reason), `etcd_lease_lost`
/// (warning), `etcd_waiting` (a previous incarnation's key still held), `etcd_refused` (an
/// error reply from etcd, with its message).
///
/// Thread safety: every member may be called from any thread.
#pragma once

#include <otpkv/detail/base64.hpp>
#include <otpkv/detail/http_client.hpp>
#include <otpkv/detail/json.hpp>
#include <otpkv/log.hpp>
#include <otpkv/membership.hpp>
#include <otpkv/route.hpp>
#include <otpkv/task.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace otpkv {
inline namespace v0 {

/// An `etcd_view`'s settings.
struct etcd_options {
    /// etcd's client URLs (route.hpp, `parse_http_url`), tried in turn. At least one.
    std::vector<http_endpoint> endpoints{};
    /// Where otpkv's keys live. Nodes of one cluster share it; give each cluster its own.
    std::string prefix = "/otpkv/";
    /// This node's name and the address others reach it at (`HOST:PORT`).
    std::string node{};
    std::string address{};
    /// The lease's time to live, rounded up to whole seconds.
    std::chrono::milliseconds lease{1000};
    /// The longest one request to etcd may take.
    std::chrono::milliseconds request_timeout{1000};
    /// Where its events go.
    logger log{};
};

/// The etcd-backed `view_service` (this file's comment). A process: it exits when stopped,
/// or when its thread fails (a bug; an unreachable etcd is not a failure), so a supervisor
/// can hold it.
class etcd_view final : public view_service, public process {
  public:
    /// Starts its thread; it connects and registers in the background (`view().connected`,
    /// `incarnation()`). Errors: `start_failed` for options without an endpoint or node.
    [[nodiscard]] static result<std::shared_ptr<etcd_view>> start(etcd_options options);
    /// Stops (revoking the lease) if it still runs.
    ~etcd_view() override { stop_if_alive(); }
    etcd_view(const etcd_view&) = delete;
    etcd_view& operator=(const etcd_view&) = delete;

    [[nodiscard]] membership_view view() const override;
    [[nodiscard]] membership_view wait_for_change(std::int64_t seen, bool was_connected,
                                                  clock::time_point deadline) const override;
    [[nodiscard]] swap_result swap_chain(std::string_view range, std::int64_t expected,
                                         const chain_record& next) override;
    [[nodiscard]] swap_result expel(std::string_view node) override;
    [[nodiscard]] std::chrono::milliseconds lease_time() const noexcept override {
        return granted_ttl();
    }
    [[nodiscard]] clock::time_point lease_deadline() const noexcept override {
        return clock::time_point(clock::duration(lease_deadline_.load(std::memory_order_acquire)));
    }
    [[nodiscard]] std::uint64_t incarnation() const noexcept override {
        return incarnation_.load(std::memory_order_acquire);
    }
    /// The TTL etcd granted (0 before the first grant).
    [[nodiscard]] std::chrono::seconds granted_ttl() const noexcept {
        return std::chrono::seconds(ttl_.load(std::memory_order_relaxed));
    }
    /// Stops the thread and revokes the lease (best effort, within the request timeout), so
    /// the node's key goes at once; then exits with `reason`.
    exit_reason stop(exit_reason reason = exit_reason::shutdown(),
                     timeout wait = default_shutdown) override;

    /// The key of a node / of a range's chain.
    [[nodiscard]] std::string node_key(std::string_view name) const {
        return options_.prefix + "nodes/" + std::string(name);
    }
    [[nodiscard]] std::string chain_key(std::string_view range) const {
        return options_.prefix + "chains/" + std::string(range);
    }

  private:
    explicit etcd_view(etcd_options options) : options_(std::move(options)) {}
    /// One connection to the current endpoint, moving on to the next after a failure.
    struct channel {
        std::unique_ptr<detail::http_connection> conn;
        std::size_t endpoint = 0;
    };
    [[nodiscard]] detail::http_reply call(channel& ch, std::string_view path,
                                          std::string_view body);
    /// `call` on the thread's channel: etcd's JSON answer, or nullopt when etcd could not
    /// be reached (the view says so) or refused (logged as `etcd_refused` for `what`).
    [[nodiscard]] std::optional<detail::json_value>
    ask(std::string_view path, std::string_view body, std::string_view what);
    void run(const std::stop_token& stop);
    [[nodiscard]] bool register_node(const std::stop_token& stop);
    [[nodiscard]] bool keep_alive();
    [[nodiscard]] bool load(std::int64_t& revision);
    [[nodiscard]] bool open_watch(std::int64_t from);
    [[nodiscard]] bool take_watch_line(const std::string& line);
    void set_connected(bool up, std::string_view why);
    void publish(membership_view next);
    void refused(std::string_view what, const detail::http_reply& r);

    etcd_options options_;
    std::shared_ptr<task> loop_;
    monitor_handle loop_monitor_;
    std::mutex stop_mutex_;
    channel kv_;            // the thread's requests
    channel watch_;         // the thread's watch stream
    std::mutex swap_mutex_; // swap_chain's channel
    channel swap_;
    std::int64_t lease_id_ = 0;                 // the thread's
    std::int64_t registered_at_ = 0;            // create_revision of our node key (the thread's)
    std::atomic<std::int64_t> registration_{0}; // the same, for swap_chain
    std::atomic<clock::rep> lease_deadline_{0};
    std::atomic<std::uint64_t> incarnation_{0};
    std::atomic<std::int64_t> ttl_{0};
    clock::time_point next_renewal_{};
    clock::time_point lease_valid_{}; // the thread's: send time of the last renewal + TTL
    bool waiting_logged_ = false;
    bool unreachable_logged_ = false;
    mutable std::mutex view_mutex_;
    mutable std::condition_variable view_changed_;
    membership_view view_;
};

/// Reads, once, what the nodes of a cluster keep in etcd under `prefix` (the nodes whose
/// leases hold and every range's chain), as an `etcd_view` with that prefix sees it: for
/// tools and tests that look at a cluster from outside (kv_load's replication benchmark,
/// the replication tests). `connected` is true in what it returns; nullopt when etcd did not
/// answer with a readable reply within `limit`.
[[nodiscard]] std::optional<membership_view>
read_membership(const http_endpoint& etcd, std::string_view prefix = "/otpkv/",
                std::chrono::milliseconds limit = std::chrono::seconds(5));

// =======================================================================================
// Implementation
// =======================================================================================

namespace detail {

/// `"key":"<base64>"` pieces and the like for the gateway's JSON bodies.
[[nodiscard]] inline std::string etcd_b64(std::string_view bytes) {
    return "\"" + base64_encode(bytes) + "\"";
}

/// The end of the range of keys that start with `prefix` (etcd's `range_end`): the prefix
/// with its last byte that is not 0xff raised by one.
[[nodiscard]] inline std::string etcd_prefix_end(std::string prefix) {
    while (!prefix.empty()) {
        auto& last = reinterpret_cast<unsigned char&>(prefix.back()); // NOLINT: byte access
        if (last < 0xff) {
            ++last;
            return prefix;
        }
        prefix.pop_back();
    }
    return std::string(1, '\0'); // every key
}

/// The message of an error reply from the gateway (`{"error":...,"message":...}`), or the
/// status code.
[[nodiscard]] inline std::string etcd_error_text(const http_reply& r) {
    if (r.status != http_status::ok) {
        return r.error;
    }
    if (const auto doc = parse_json(r.body)) {
        if (const json_value* m = doc->find("message"); m != nullptr && m->is_string()) {
            return std::string(m->text());
        }
        if (const json_value* m = doc->find("error"); m != nullptr && m->is_string()) {
            return std::string(m->text());
        }
    }
    return "HTTP " + std::to_string(r.code);
}

/// The JSON of a gateway reply that came back `200`; nullopt when etcd was not reached,
/// refused, or sent no JSON (`etcd_error_text` says which).
[[nodiscard]] inline std::optional<json_value> etcd_json(const http_reply& r) {
    if (r.status != http_status::ok || r.code != 200) {
        return std::nullopt;
    }
    return parse_json(r.body);
}

/// A JSON field that protobuf's mapping writes as a string of digits, or leaves out when 0.
[[nodiscard]] inline std::int64_t etcd_int(const json_value& object, std::string_view key) {
    const json_value* v = object.find(key);
    if (v == nullptr) {
        return 0;
    }
    return v->integer().value_or(0);
}

/// The body of a `/v3/kv/range` request for every key under `prefix`.
[[nodiscard]] inline std::string etcd_prefix_range(std::string_view prefix) {
    return "{\"key\":" + etcd_b64(prefix) +
           ",\"range_end\":" + etcd_b64(etcd_prefix_end(std::string(prefix))) + "}";
}

/// Applies one key's new value (or its deletion, `value` null) under `prefix` to `v`;
/// `mod_revision` becomes a chain's version. Keys of other shapes are ignored.
inline void etcd_apply(membership_view& v, std::string_view prefix, const std::string& key,
                       const std::string* value, std::int64_t mod_revision) {
    const std::string nodes = std::string(prefix) + "nodes/";
    const std::string chains = std::string(prefix) + "chains/";
    if (key.starts_with(nodes)) {
        const std::string name = key.substr(nodes.size());
        if (value != nullptr) {
            v.nodes[name] = *value;
        } else {
            v.nodes.erase(name);
        }
    } else if (key.starts_with(chains)) {
        const std::string range = key.substr(chains.size());
        chain_record c;
        if (value != nullptr && parse_chain_text(*value, c)) {
            c.version = mod_revision;
            v.chains[range] = std::move(c);
        } else {
            v.chains.erase(range); // deleted, or not ours to read
        }
    }
}

/// The picture a `/v3/kv/range` reply over `prefix` gives (`connected` left false).
[[nodiscard]] inline membership_view etcd_view_of(const json_value& doc, std::string_view prefix) {
    membership_view v;
    v.revision = etcd_int(doc.at("header"), "revision");
    for (const json_value& kv : doc.at("kvs").items()) {
        const auto key = base64_decode(kv.at("key").text());
        const auto value = base64_decode(kv.at("value").text());
        if (key && value) {
            etcd_apply(v, prefix, *key, &*value, etcd_int(kv, "mod_revision"));
        }
    }
    return v;
}

} // namespace detail

inline result<std::shared_ptr<etcd_view>> etcd_view::start(etcd_options options) {
    if (options.endpoints.empty() || options.node.empty()) {
        return error{errc::start_failed,
                     {},
                     exit_reason::error(options.endpoints.empty() ? "etcd: no endpoint given"
                                                                  : "etcd: no node name given")};
    }
    std::shared_ptr<etcd_view> v(new etcd_view(std::move(options)));
    v->loop_ = task::start([raw = v.get()](std::stop_token stop) { raw->run(stop); });
    // The view exits with its thread (a failure there is the view's).
    v->loop_monitor_ =
        v->loop_->monitor([signal = v->signal()](const exit_reason& why) { signal->exit(why); });
    return v;
}

inline exit_reason etcd_view::stop(exit_reason reason, timeout wait) {
    const std::lock_guard lock(stop_mutex_);
    if (loop_ != nullptr) {
        loop_monitor_.cancel();
        loop_->stop(exit_reason::shutdown(), wait);
        loop_.reset();
        lease_deadline_.store(0, std::memory_order_release);
        if (lease_id_ != 0) {
            // Gone at once rather than after a TTL: the others reconfigure now.
            (void)call(kv_, "/v3/lease/revoke", "{\"ID\":\"" + std::to_string(lease_id_) + "\"}");
            lease_id_ = 0;
        }
    }
    notify_exit(reason);
    return *exited();
}

inline detail::http_reply etcd_view::call(channel& ch, std::string_view path,
                                          std::string_view body) {
    const http_endpoint& where = options_.endpoints[ch.endpoint % options_.endpoints.size()];
    if (ch.conn == nullptr) {
        ch.conn = std::make_unique<detail::http_connection>(where.host, where.port);
    }
    detail::http_reply r = ch.conn->post(path, body, clock::now() + options_.request_timeout);
    if (r.status != detail::http_status::ok || r.code >= 500) {
        // The next call tries the next URL.
        ch.conn.reset();
        ch.endpoint = (ch.endpoint + 1) % options_.endpoints.size();
        if (r.status == detail::http_status::ok) {
            r.status = detail::http_status::failed;
            r.error = detail::etcd_error_text(r);
        }
    }
    return r;
}

inline std::optional<detail::json_value>
etcd_view::ask(std::string_view path, std::string_view body, std::string_view what) {
    const detail::http_reply r = call(kv_, path, body);
    if (r.status != detail::http_status::ok) {
        set_connected(false, r.error);
        return std::nullopt;
    }
    auto doc = detail::etcd_json(r);
    if (!doc) {
        refused(what, r);
        return std::nullopt;
    }
    set_connected(true, {});
    return doc;
}

inline void etcd_view::refused(std::string_view what, const detail::http_reply& r) {
    if (options_.log.enabled(log_level::error)) {
        log_event e;
        e.level = log_level::error;
        e.what = "etcd_refused";
        e.reason = detail::etcd_error_text(r);
        e.fields = {{"request", std::string(what)}, {"node", options_.node}};
        options_.log.log(std::move(e));
    }
}

inline void etcd_view::set_connected(bool up, std::string_view why) {
    {
        const std::lock_guard lock(view_mutex_);
        if (view_.connected == up) {
            return;
        }
        view_.connected = up;
    }
    view_changed_.notify_all();
    if (up == unreachable_logged_ || (!up && !unreachable_logged_)) {
        log_event e;
        e.level = up ? log_level::info : log_level::warning;
        e.what = up ? "etcd_connected" : "etcd_unreachable";
        e.reason = std::string(why);
        const http_endpoint& where = options_.endpoints[kv_.endpoint % options_.endpoints.size()];
        e.fields = {
            {"node", options_.node},
            {"etcd", "http://" + detail::http_connection(where.host, where.port).address()}};
        options_.log.log(std::move(e));
        unreachable_logged_ = !up;
    }
}

inline void etcd_view::publish(membership_view next) {
    {
        const std::lock_guard lock(view_mutex_);
        next.connected = view_.connected;
        view_ = std::move(next);
    }
    view_changed_.notify_all();
}

inline membership_view etcd_view::view() const {
    const std::lock_guard lock(view_mutex_);
    return view_;
}

inline membership_view etcd_view::wait_for_change(std::int64_t seen, bool was_connected,
                                                  clock::time_point deadline) const {
    std::unique_lock lock(view_mutex_);
    view_changed_.wait_until(
        lock, deadline, [&] { return view_.revision > seen || view_.connected != was_connected; });
    return view_;
}

inline bool etcd_view::load(std::int64_t& revision) {
    const auto doc = ask("/v3/kv/range", detail::etcd_prefix_range(options_.prefix), "range");
    if (!doc) {
        return false;
    }
    membership_view next = detail::etcd_view_of(*doc, options_.prefix);
    revision = next.revision;
    publish(std::move(next));
    return true;
}

inline std::optional<membership_view> read_membership(const http_endpoint& etcd,
                                                      std::string_view prefix,
                                                      std::chrono::milliseconds limit) {
    detail::http_connection conn(etcd.host, etcd.port);
    const auto r = conn.post("/v3/kv/range", detail::etcd_prefix_range(prefix),
                             detail::http_connection::clock::now() + limit);
    const auto doc = detail::etcd_json(r);
    if (!doc) {
        return std::nullopt;
    }
    membership_view v = detail::etcd_view_of(*doc, prefix);
    v.connected = true;
    return v;
}

inline bool etcd_view::open_watch(std::int64_t from) {
    const http_endpoint& where = options_.endpoints[watch_.endpoint % options_.endpoints.size()];
    watch_.conn = std::make_unique<detail::http_connection>(where.host, where.port);
    const std::string body =
        "{\"create_request\":{\"key\":" + detail::etcd_b64(options_.prefix) +
        ",\"range_end\":" + detail::etcd_b64(detail::etcd_prefix_end(options_.prefix)) +
        ",\"start_revision\":\"" + std::to_string(from) + "\"}}";
    const detail::http_reply r =
        watch_.conn->open_stream("/v3/watch", body, clock::now() + options_.request_timeout);
    if (r.status != detail::http_status::ok || r.code != 200) {
        watch_.conn.reset();
        watch_.endpoint = (watch_.endpoint + 1) % options_.endpoints.size();
        return false;
    }
    return true;
}

/// One line of the watch stream: false when the watch must be started again (cancelled,
/// compacted, or not understood).
inline bool etcd_view::take_watch_line(const std::string& line) {
    const auto doc = detail::parse_json(line);
    if (!doc) {
        return false;
    }
    const detail::json_value& result = doc->at("result");
    if (!result.is_object() || result.at("canceled").boolean() ||
        detail::etcd_int(result, "compact_revision") != 0) {
        return false;
    }
    const std::int64_t revision = detail::etcd_int(result.at("header"), "revision");
    const auto& events = result.at("events").items();
    if (events.empty()) {
        return true; // `created`, or a progress notification
    }
    membership_view next = view();
    for (const detail::json_value& ev : events) {
        const detail::json_value& kv = ev.at("kv");
        const auto key = detail::base64_decode(kv.at("key").text());
        if (!key) {
            continue;
        }
        if (ev.at("type").text() == "DELETE") {
            detail::etcd_apply(next, options_.prefix, *key, nullptr, 0);
            continue;
        }
        const auto value = detail::base64_decode(kv.at("value").text());
        if (!value) {
            continue;
        }
        detail::etcd_apply(next, options_.prefix, *key, &*value,
                           detail::etcd_int(kv, "mod_revision"));
    }
    next.revision = std::max(next.revision, revision);
    publish(std::move(next));
    return true;
}

inline bool etcd_view::register_node(const std::stop_token& stop) {
    if (lease_id_ == 0) {
        const auto seconds = std::max<std::int64_t>(1, (options_.lease.count() + 999) / 1000);
        const auto sent = clock::now();
        const auto doc =
            ask("/v3/lease/grant", "{\"TTL\":\"" + std::to_string(seconds) + "\"}", "lease/grant");
        if (!doc || detail::etcd_int(*doc, "ID") == 0) {
            return false;
        }
        lease_id_ = detail::etcd_int(*doc, "ID");
        const std::int64_t ttl = detail::etcd_int(*doc, "TTL");
        ttl_.store(ttl, std::memory_order_relaxed);
        lease_valid_ = sent + std::chrono::seconds(ttl);
        next_renewal_ = sent + std::chrono::milliseconds(ttl * 1000 / 3);
    }
    // The key, only if nobody holds it: a previous incarnation may still be alive.
    const std::string key = node_key(options_.node);
    const std::string body =
        "{\"compare\":[{\"key\":" + detail::etcd_b64(key) +
        ",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
        "\"success\":[{\"request_put\":{\"key\":" +
        detail::etcd_b64(key) + ",\"value\":" + detail::etcd_b64(options_.address) +
        ",\"lease\":\"" + std::to_string(lease_id_) + "\"}}]}";
    while (!stop.stop_requested()) {
        const auto doc = ask("/v3/kv/txn", body, "register");
        if (!doc) {
            return false;
        }
        if (doc->at("succeeded").boolean()) {
            registered_at_ = detail::etcd_int(doc->at("header"), "revision");
            registration_.store(registered_at_, std::memory_order_release);
            lease_deadline_.store(lease_valid_.time_since_epoch().count(),
                                  std::memory_order_release);
            incarnation_.fetch_add(1, std::memory_order_acq_rel);
            waiting_logged_ = false;
            return true;
        }
        if (!waiting_logged_) {
            waiting_logged_ = true;
            log_event e;
            e.level = log_level::warning;
            e.what = "etcd_waiting";
            e.reason = "node " + options_.node +
                       " is still registered (an earlier run's lease has not expired)";
            e.fields = {{"node", options_.node}};
            options_.log.log(std::move(e));
        }
        // Our new lease is kept alive while the old one runs out.
        if (clock::now() >= next_renewal_ && !keep_alive()) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
}

inline bool etcd_view::keep_alive() {
    const auto sent = clock::now();
    const auto doc = ask("/v3/lease/keepalive", "{\"ID\":\"" + std::to_string(lease_id_) + "\"}",
                         "lease/keepalive");
    if (!doc) {
        // Still ours as far as anybody knows; tried again soon.
        next_renewal_ = clock::now() + std::chrono::milliseconds(100);
        return true;
    }
    const std::int64_t ttl = detail::etcd_int(doc->at("result"), "TTL");
    if (ttl <= 0) {
        // Expired at etcd: whatever chains we were in have moved on (or will) without us.
        lease_deadline_.store(0, std::memory_order_release);
        registration_.store(0, std::memory_order_release);
        registered_at_ = 0;
        log_event e;
        e.level = log_level::warning;
        e.what = "etcd_lease_lost";
        e.reason = "lease " + std::to_string(lease_id_) + " expired";
        e.fields = {{"node", options_.node}};
        options_.log.log(std::move(e));
        lease_id_ = 0;
        return false;
    }
    ttl_.store(ttl, std::memory_order_relaxed);
    lease_valid_ = sent + std::chrono::seconds(ttl);
    if (registered_at_ != 0) {
        lease_deadline_.store(lease_valid_.time_since_epoch().count(), std::memory_order_release);
    }
    next_renewal_ = sent + std::chrono::milliseconds(ttl * 1000 / 3);
    return true;
}

inline void etcd_view::run(const std::stop_token& stop) {
    std::int64_t revision = 0;
    bool watching = false;
    while (!stop.stop_requested()) {
        if (registered_at_ == 0 && !register_node(stop)) {
            watching = false;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        if (!watching) {
            watching = load(revision) && open_watch(revision + 1);
            if (!watching) {
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
        }
        if (watching) {
            const auto until =
                std::min(next_renewal_, clock::now() + std::chrono::milliseconds(50));
            const detail::http_reply line = watch_.conn->next_line(until);
            if (line.status == detail::http_status::failed) {
                watching = false;
                watch_.endpoint = (watch_.endpoint + 1) % options_.endpoints.size();
            } else if (line.status == detail::http_status::ok && !take_watch_line(line.body)) {
                watching = false;
            }
        }
        if (clock::now() >= next_renewal_ && !keep_alive()) {
            watching = false; // registered again next round; read everything afresh
        }
    }
}

inline swap_result etcd_view::swap_chain(std::string_view range, std::int64_t expected,
                                         const chain_record& next) {
    swap_result out;
    const std::int64_t registered = registration_.load(std::memory_order_acquire);
    if (registered == 0) {
        out.what = swap_result::outcome::conflict;
        out.error = "this node holds no lease";
        return out;
    }
    const std::string key = chain_key(range);
    const std::string body =
        "{\"compare\":[{\"key\":" + detail::etcd_b64(key) +
        ",\"target\":\"MOD\",\"result\":\"EQUAL\",\"mod_revision\":\"" + std::to_string(expected) +
        "\"},{\"key\":" + detail::etcd_b64(node_key(options_.node)) +
        ",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"" +
        std::to_string(registered) +
        "\"}],\"success\":[{\"request_put\":{\"key\":" + detail::etcd_b64(key) +
        ",\"value\":" + detail::etcd_b64(chain_text(next)) + "}}]}";
    const std::lock_guard lock(swap_mutex_);
    const detail::http_reply r = call(swap_, "/v3/kv/txn", body);
    const auto doc = detail::etcd_json(r);
    if (!doc) {
        out.error = detail::etcd_error_text(r);
        return out;
    }
    if (!doc->at("succeeded").boolean()) {
        out.what = swap_result::outcome::conflict;
        out.error = "the chain of " + std::string(range) + " changed, or our lease is gone";
        return out;
    }
    out.what = swap_result::outcome::swapped;
    out.version = detail::etcd_int(doc->at("header"), "revision");
    return out;
}

inline swap_result etcd_view::expel(std::string_view node) {
    swap_result out;
    const std::string key = node_key(node);
    const std::lock_guard lock(swap_mutex_);
    detail::http_reply r = call(swap_, "/v3/kv/range", "{\"key\":" + detail::etcd_b64(key) + "}");
    const auto doc = detail::etcd_json(r);
    if (!doc) {
        out.error = detail::etcd_error_text(r);
        return out;
    }
    const auto& kvs = doc->at("kvs").items();
    const std::int64_t lease = kvs.empty() ? 0 : detail::etcd_int(kvs.front(), "lease");
    if (lease == 0) {
        out.what = swap_result::outcome::conflict;
        out.error = "node " + std::string(node) + " holds no lease";
        return out;
    }
    r = call(swap_, "/v3/lease/revoke", "{\"ID\":\"" + std::to_string(lease) + "\"}");
    if (r.status != detail::http_status::ok || r.code != 200) {
        // A lease gone meanwhile is refused (not found): the node is out either way.
        out.what = r.status == detail::http_status::ok ? swap_result::outcome::conflict
                                                       : swap_result::outcome::unavailable;
        out.error = detail::etcd_error_text(r);
        return out;
    }
    out.what = swap_result::outcome::swapped;
    return out;
}

} // namespace v0
} // namespace otpkv
