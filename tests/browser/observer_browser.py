#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The observer page (include/otpkv/detail/observer_page.hpp) in a real headless Chromium.

Modes:
  --canned                serves the page and canned cluster.json files (data/) from a
                          local HTTP server on 127.0.0.1, port 0, and checks what the page
                          draws: every node and every child, a change shown within 2 s, a
                          failing fetch shown as a banner and recovered from, every text
                          from the JSON shown as text, no request to another origin.
  --kv-server PATH        starts a 3-node cluster of that kv_server with admin ports, loads
                          node n1's page, checks the three trees, kills n3 (SIGKILL) and
                          checks that the page shows n3 down within 2 s.
  --screenshot FILE.png   the README's picture: the canned cluster with one restarting
                          child and one down node, 1200x800.

Exit status 0 when every check passed, 1 when one failed (Chromium missing or unable to
run included: a registered browser test must not pass without a browser), 2 for bad usage.
"""

import argparse
import http.server
import json
import os
import pathlib
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cdp import Browser, BrowserError  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PAGE_HEADER = ROOT / "include" / "otpkv" / "detail" / "observer_page.hpp"
DATA = HERE / "data"
SHOW_WITHIN = 2.0  # seconds: the bound for a change to show
COOKIE = "otpkv-browser-test-cookie"


def log(*words):
    print("observer_browser:", *words, flush=True)


class Failed(Exception):
    """A check failed."""


def check(condition, what):
    if not condition:
        raise Failed(what)
    log("ok:", what)


def page_html():
    """The page, as the header's raw string literal holds it (raw: no escapes to undo)."""
    text = PAGE_HEADER.read_text(encoding="utf-8")
    found = re.findall(r'R"otpkvpage\((.*?)\)otpkvpage"', text, re.S)
    if len(found) != 1:
        raise Failed("observer_page.hpp holds %d page literals, not 1" % len(found))
    return found[0]


# --- What the page should show, from the JSON ------------------------------------------


def expected_children(sup):
    """(ids of every listed child, depth first; counts of the "+N more" boxes)."""
    ids, more = [], []
    for c in sup.get("children", []):
        ids.append(c["id"])
        if c.get("supervisor"):
            i, m = expected_children(c["supervisor"])
            ids += i
            more += m
    if sup["child_count"] > len(sup["children"]):
        more.append(sup["child_count"] - len(sup["children"]))
    return ids, more


def p99_text(latency):
    """The page's p99 estimate: interpolated in its bucket, 3 digits, in ms or µs."""
    counts, bounds = latency["counts"], latency["bounds"]
    rank, below = 0.99 * sum(counts), 0
    for i, c in enumerate(counts):
        if c > 0 and below + c >= rank:
            lo = bounds[i - 1] if i > 0 else 0
            s = lo + (bounds[i] - lo) * (rank - below) / c
            return "%.3g %s" % ((s * 1e3, "ms") if s >= 1e-3 else (s * 1e6, "µs"))
        below += c
    raise Failed("no p99 in %s" % latency)


# The page's view of itself, as JSON: per node section its flags, children and boxes.
DOM_STATE = """JSON.stringify({
  updated: Number(document.body.dataset.updated),
  offline: document.body.classList.contains('offline'),
  banner: document.getElementById('banner').textContent,
  nodes: Array.from(document.querySelectorAll('section[data-node]')).map(s => ({
    name: s.dataset.node, up: s.dataset.up,
    text: s.textContent,
    children: Array.from(s.querySelectorAll('svg g.child')).map(g => ({
      id: g.dataset.id, state: g.dataset.state,
      restarts: g.dataset.restarts, text: g.textContent})),
    more: Array.from(s.querySelectorAll('svg g.more')).map(g => Number(g.dataset.count)),
    root: s.querySelectorAll('svg g.root').length,
    counters: Object.fromEntries(Array.from(s.querySelectorAll('dd[data-counter]'))
      .map(d => [d.dataset.counter, d.textContent]))}))})"""


def dom(browser):
    return json.loads(browser.evaluate(DOM_STATE))


def check_drawn(state, cluster, what):
    """Every node of cluster.json drawn in order with its up flag, every child and box."""
    names = [n["name"] for n in cluster["nodes"]]
    check([n["name"] for n in state["nodes"]] == names, "%s: sections %s" % (what, names))
    for want, got in zip(cluster["nodes"], state["nodes"]):
        name = want["name"]
        if not want["up"]:
            check(got["up"] == "false" and not got["children"] and want["error"] in got["text"],
                  "%s: %s drawn down with its error %r" % (what, name, want["error"]))
            continue
        ids, more = expected_children(want["snapshot"]["tree"])
        check(got["up"] == "true" and got["root"] == 1, "%s: %s up with one root" % (what, name))
        check([c["id"] for c in got["children"]] == ids,
              "%s: %s has its %d children in order" % (what, name, len(ids)))
        check(got["more"] == more, "%s: %s has the +N more boxes %s" % (what, name, more))


# --- Canned mode --------------------------------------------------------------------------


class CannedServer:
    """The page at / and a replaceable cluster.json, on 127.0.0.1, port 0."""

    def __init__(self, html):
        self.html = html.encode()
        self.cluster = b"{}"
        self.failing = False  # answer nothing: as if the node had gone away
        self.asked = 0  # requests for cluster.json so far
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/":
                    body, kind = outer.html, "text/html; charset=utf-8"
                elif self.path == "/cluster.json":
                    outer.asked += 1
                    if outer.failing:
                        self.close_connection = True
                        return
                    body, kind = outer.cluster, "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d/" % self.httpd.server_address[1]

    def serve(self, cluster):
        self.cluster = json.dumps(cluster).encode()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def load(name):
    return json.loads((DATA / name).read_text())


def wait_updates(browser, count, timeout=5.0):
    """Waits for count more successful refreshes than now; returns the seconds taken."""
    start = dom(browser)["updated"]
    return browser.wait_for("Number(document.body.dataset.updated) >= %d" % (start + count),
                            timeout)


def run_canned(browser):
    html = page_html()
    check(len(html.encode()) < 65536, "the page is %d bytes (< 64 KiB)" % len(html.encode()))
    outside = [u for u in re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", html)
               if u != "http://www.w3.org/2000/svg"]
    check(not outside, "the page names no outside URL %s" % outside)
    up, changed, hostile = load("cluster_up.json"), load("cluster_changed.json"), \
        load("cluster_hostile.json")
    server = CannedServer(html)
    try:
        server.serve(up)
        t0 = time.monotonic()
        browser.navigate(server.url)
        browser.wait_for("Number(document.body.dataset.updated) >= 1", 10)
        log("first drawing after %.0f ms" % ((time.monotonic() - t0) * 1000))
        state = dom(browser)
        check_drawn(state, up, "all up")
        n1 = state["nodes"][0]["counters"]
        snap = up["nodes"][0]["snapshot"]
        check(n1["buckets"] == str(snap["registry"]["buckets"]) and
              n1["keys"] == str(snap["registry"]["keys"]) and
              n1["commands"] == str(sum(snap["server"]["commands"].values())) and
              n1["errors"] == str(sum(snap["server"]["errors"].values())) and
              n1["peers"] == "2 up · 0 down" and n1["connections"] == "3 / 10000",
              "n1's counters %s" % n1)
        check(n1["p99"] == "≈ %s" % p99_text(snap["server"]["latency"]),
              "n1's p99 estimate %r" % n1["p99"])
        n3_bucket = [c for c in state["nodes"][2]["children"] if c["id"] == "sessions"][0]
        check(n3_bucket["restarts"] == "1" and "1 restart" in n3_bucket["text"],
              "a child restarted in the window is labelled %r" % n3_bucket["text"])
        # At least one refresh a second: the page's own period says so, and refreshes do
        # come (the time they took is reported, not bounded: a loaded machine stretches it).
        period = re.search(r"const refresh_ms = (\d+);", html)
        check(period is not None and int(period.group(1)) <= 1000,
              "the page refreshes every %s ms" % (period.group(1) if period else "?"))
        refreshes = wait_updates(browser, 4, 30.0)
        log("4 refreshes took %.2f s" % refreshes)

        # The change: a child of n2 restarting, n3 down. Measured from the swap.
        server.serve(changed)
        shown = browser.wait_for(
            "document.querySelector('section[data-node=\"n3\"]').dataset.up === 'false' && "
            "document.querySelector('section[data-node=\"n2\"] g.child[data-id=\"kitchen\"]')"
            ".dataset.state === 'restarting'", SHOW_WITHIN)
        check(shown < SHOW_WITHIN, "the change shows after %.0f ms" % (shown * 1000))
        state = dom(browser)
        check_drawn(state, changed, "changed")
        kitchen = [c for c in state["nodes"][1]["children"] if c["id"] == "kitchen"][0]
        check("RESTARTING · 1 restart" in kitchen["text"], "the restarting child says so in text")
        figs = [c for c in state["nodes"][0]["children"] if c["id"] == "figs"][0]
        check(figs["state"] == "stopped" and "STOPPED · shutdown" in figs["text"],
              "a stopped child says so in text, with its exit reason")
        check(state["nodes"][0]["counters"]["peers"] == "1 up · 1 down", "n1 counts n3 down")

        # The node serving the page goes away: a banner, the last trees kept; then it is back.
        server.failing = True
        gone = browser.wait_for("document.body.classList.contains('offline')", SHOW_WITHIN)
        state = dom(browser)
        check("Cannot reach" in state["banner"] and len(state["nodes"]) == 3,
              "a failed fetch shows a banner after %.0f ms, trees kept" % (gone * 1000))
        before, asked = state["updated"], server.asked
        deadline = time.monotonic() + 3 * SHOW_WITHIN
        while server.asked < asked + 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        check(server.asked >= asked + 3, "it goes on asking while the fetch fails")
        check(dom(browser)["updated"] == before, "no refresh counted while the fetch fails")
        server.failing = False
        server.serve(up)
        back = browser.wait_for("!document.body.classList.contains('offline') && "
                                "document.querySelector('section[data-node=\"n3\"]')"
                                ".dataset.up === 'true'", SHOW_WITHIN)
        check(back < SHOW_WITHIN, "it retried and recovered after %.0f ms" % (back * 1000))
        check_drawn(dom(browser), up, "recovered")

        # Text from the JSON is text, never markup.
        server.serve(hostile)
        browser.wait_for("document.querySelector('section[data-node=\"n3\"]')"
                         ".dataset.up === 'false'", SHOW_WITHIN)
        wait_updates(browser, 1)
        state = dom(browser)
        evil = hostile["nodes"][0]["snapshot"]["tree"]["children"][0]["supervisor"][
            "children"][0]["id"]
        check(state["nodes"][0]["children"][1]["id"] == evil, "a hostile bucket name is kept")
        check(browser.evaluate("document.querySelectorAll('main img, main b, #bold').length "
                               "=== 0 && document.body.dataset.pwned === undefined"),
              "no markup from the JSON became elements")
        check(hostile["nodes"][2]["error"] in state["nodes"][2]["text"],
              "a down node's error is shown as its text")

        foreign = [u for u in browser.requested_urls() if not u.startswith(server.url)]
        check(not foreign, "every request went to the serving node %s" % foreign)
    finally:
        server.close()


def run_screenshot(browser, out):
    server = CannedServer(page_html())
    try:
        server.serve(load("cluster_changed.json"))
        browser.navigate(server.url)
        browser.wait_for("Number(document.body.dataset.updated) >= 2", 10)
        png = browser.screenshot()
    finally:
        server.close()
    pathlib.Path(out).write_bytes(png)
    log("wrote %s (%d bytes)" % (out, len(png)))


# --- A real cluster -------------------------------------------------------------------------


def free_ports(count):
    """Ports free now, found by binding port 0 (all held until all are known)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Node:
    """One kv_server started by this test; stopped by its PID."""

    def __init__(self, program, name, port, routes, workdir):
        args = [program, "--node", name, "--port", str(port), "--admin-port", "0"]
        for r in routes:
            args += ["--route", r]
        env = dict(os.environ, OTPKV_COOKIE=COOKIE, HOME=workdir)
        self.name = name
        self.stderr = open(os.path.join(workdir, name + ".stderr"), "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env)
        self.admin = None

    def wait_ready(self, deadline):
        """Reads stdout up to the ready line; the admin URL comes before it."""
        admin = re.compile(r"^otpkv node %s admin on (http://\S+/)$" % re.escape(self.name))
        ready = "otpkv node %s listening on " % self.name
        fd = self.proc.stdout.fileno()
        buffer = b""
        while True:
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed("node %s not ready in time" % self.name)
                r, _, _ = select.select([fd], [], [], left)
                if r:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        raise Failed("node %s exited: %s" % (self.name, self.proc.wait()))
                    buffer += chunk
            line, buffer = buffer.split(b"\n", 1)
            line = line.decode()
            m = admin.match(line)
            if m:
                self.admin = m.group(1)
            elif line.startswith(ready):
                if not self.admin:
                    raise Failed("node %s got ready without an admin line" % self.name)
                return

    def kill(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self):
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def run_cluster(browser, program):
    names = ["n1", "n2", "n3"]
    ranges = ["a-i", "j-r", "s-z"]
    ports = free_ports(3)
    routes = ["%s=%s@127.0.0.1:%d" % (r, n, p) for r, n, p in zip(ranges, names, ports)]
    nodes = []
    with tempfile.TemporaryDirectory(prefix="otpkv-browser.") as workdir:
        try:
            for name, port in zip(names, ports):
                nodes.append(Node(program, name, port, routes, workdir))
            deadline = time.monotonic() + 10
            for n in nodes:
                n.wait_ready(deadline)
            log("cluster up:", " ".join("%s admin %s" % (n.name, n.admin) for n in nodes))
            # A bucket on each node, so that each registry has a child to draw.
            for bucket, port in zip(("apples", "kitchen", "shopping"), ports):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"CREATE %s\r\n" % bucket.encode())
                    answer = c.makefile("rb").readline()
                check(answer == b"OK\r\n", "CREATE %s on port %d: %r" % (bucket, port, answer))
            browser.navigate(nodes[0].admin)
            # Every node up and drawn, each tree with the node's four children.
            browser.wait_for("Array.from(document.querySelectorAll('section[data-node]'))"
                             ".filter(s => s.dataset.up === 'true').length === 3", 10)
            state = dom(browser)
            check([s["name"] for s in state["nodes"]] == names, "sections n1, n2, n3")
            for s in state["nodes"]:
                ids = [c["id"] for c in s["children"]]
                check(s["root"] == 1 and all(k in ids for k in
                                              ("registry", "tasks", "router", "server")),
                      "%s drawn with registry, tasks, router, server (%s)" % (s["name"], ids))
                check(all(c["state"] == "running" for c in s["children"]),
                      "%s: every child running" % s["name"])
            # Every child the node lists in its cluster.json is drawn (the cluster is idle:
            # a refresh after the fetch below draws the same children).
            with urllib.request.urlopen(nodes[0].admin + "cluster.json", timeout=5) as r:
                cluster = json.load(r)
            wait_updates(browser, 1)
            check_drawn(dom(browser), cluster, "real cluster")
            wait_updates(browser, 1)

            nodes[2].kill(signal.SIGKILL)
            t0 = time.monotonic()
            browser.wait_for("document.querySelector('section[data-node=\"n3\"]')"
                             ".dataset.up === 'false'", SHOW_WITHIN + 1)
            shown = time.monotonic() - t0
            check(shown < SHOW_WITHIN, "n3 shown down %.0f ms after SIGKILL" % (shown * 1000))
            state = dom(browser)
            check(state["nodes"][0]["up"] == "true" and state["nodes"][1]["up"] == "true",
                  "n1 and n2 still up")
            foreign = [u for u in browser.requested_urls() if not u.startswith(nodes[0].admin)]
            check(not foreign, "every request went to n1's admin port %s" % foreign)
        except BaseException:
            for n in nodes:
                n.stderr.flush()
                tail = pathlib.Path(n.stderr.name).read_bytes()[-2000:]
                log("%s's stderr:\n%s" % (n.name, tail.decode(errors="replace")))
            raise
        finally:
            for n in nodes:
                n.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--canned", action="store_true")
    mode.add_argument("--kv-server", metavar="PATH")
    mode.add_argument("--screenshot", metavar="FILE")
    parser.add_argument("--chromium", metavar="PATH", help="default: $CHROMIUM or PATH's")
    args = parser.parse_args()
    started = time.monotonic()
    try:
        with Browser.launch(args.chromium) as browser:
            if args.canned:
                run_canned(browser)
            elif args.kv_server:
                run_cluster(browser, args.kv_server)
            else:
                run_screenshot(browser, args.screenshot)
    except (Failed, BrowserError) as e:
        log("FAILED:", e)
        return 1
    log("passed in %.1f s" % (time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
