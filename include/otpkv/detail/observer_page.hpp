// SPDX-License-Identifier: MIT
/// @file
/// The observer's web page: the HTML that a node's admin port serves at `/`.
///
/// One self-contained page (inline CSS and script; it loads nothing from any other URL,
/// not even a font) that fetches `cluster.json` from the node serving it every 500 ms and
/// draws, for every node of the cluster, its supervision tree as SVG (the root on the left,
/// each child a box, a dynamic supervisor's unlisted children as one "+N more" box) and
/// its main counters. Restarting and stopped children, children restarted in the current
/// window and down nodes are marked by colour and by a text label. When the fetch fails
/// (the node serving the page is down) a banner says so and the page keeps retrying.
///
/// Every text from the JSON reaches the page through `textContent` or an attribute, never
/// as markup, so a bucket name or an exit reason cannot inject HTML.
///
/// Hooks for tests and scripts: each node's `section` has `data-node` (its name) and
/// `data-up` (`true` or `false`); each drawn child is an SVG `g class="child"` with
/// `data-id` and `data-state`; the "+N more" box is a `g class="more"` with `data-count`;
/// each counter is a `dd` with `data-counter`; the `body` has `data-updated`, the number
/// of successful refreshes, and the class `offline` while the last fetch failed.
#pragma once

#include <string_view>

namespace otpkv {
inline namespace v0 {
namespace detail {

/// The page served at `/` by the admin port (UTF-8 HTML, under 64 KiB).
inline constexpr std::string_view observer_page = R"otpkvpage(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>otpkv observer</title>
<style>
:root {
  --bg: #f4f6f8; --fg: #1b2129; --muted: #5b6673; --card: #fff; --line: #cfd6de;
  --run: #2f7d34; --run-bg: #e7f4e8; --sup: #1f4f8f; --sup-bg: #e5eefb;
  --hot: #a54a00; --hot-bg: #ffe9c7; --warm: #8a6d00; --warm-bg: #fff6cf;
  --stop: #5f6670; --stop-bg: #e9ebee; --down: #b3261e; --down-bg: #fdecea;
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  background: var(--bg); color: var(--fg); }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: .4em 1.2em;
  padding: .55em 1.2em; background: #1b2129; color: #fff; }
header h1 { font-size: 1.05em; margin: 0; letter-spacing: .02em; }
#status { color: #c3ccd6; font-size: .9em; }
#legend { margin-left: auto; display: flex; gap: .8em; font-size: .8em; color: #c3ccd6; }
#legend span::before { content: ""; display: inline-block; width: .8em; height: .8em;
  margin-right: .3em; vertical-align: -.05em; border: 1.5px solid; border-radius: 2px; }
#legend .l-run::before { background: var(--run-bg); border-color: var(--run); }
#legend .l-sup::before { background: var(--sup-bg); border-color: var(--sup); }
#legend .l-warm::before { background: var(--warm-bg); border-color: var(--warm); }
#legend .l-hot::before { background: var(--hot-bg); border-color: var(--hot); }
#legend .l-stop::before { background: var(--stop-bg); border-color: var(--stop);
  border-style: dashed; }
#banner { display: none; padding: .5em 1.2em; background: var(--down); color: #fff;
  font-weight: 600; }
body.offline #banner { display: block; }
body.offline main { opacity: .55; }
main { padding: 1em 1.2em; display: grid; gap: 1em; align-items: start;
  grid-template-columns: repeat(auto-fill, minmax(34em, 1fr)); }
#empty { color: var(--muted); }
section.node { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: .6em 1em .8em; min-width: 0; }
section.node[data-up="false"] { border: 2px solid var(--down); background: var(--down-bg); }
section.node h2 { font-size: 1.05em; margin: 0 0 .3em; display: flex; gap: .6em;
  align-items: center; flex-wrap: wrap; }
.tag { font-size: .72em; padding: .1em .5em; border-radius: 3px; font-weight: 700;
  letter-spacing: .04em; text-transform: uppercase; }
.tag.up { background: var(--run-bg); color: var(--run); }
.tag.down { background: var(--down); color: #fff; }
.sub { font-weight: 400; color: var(--muted); font-size: .85em; }
.error { color: var(--down); font-weight: 600; margin: .2em 0; }
dl.counters { display: flex; flex-wrap: wrap; gap: .3em .9em; margin: .2em 0 .4em; }
dl.counters div { display: flex; flex-direction: column; }
dl.counters dt { font-size: .72em; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
dl.counters dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
dl.counters dd.bad { color: var(--down); }
.peers { font-size: .85em; color: var(--muted); margin: 0 0 .4em; }
.peers .p-down { color: var(--down); font-weight: 600; }
.tree { overflow-x: auto; }
svg { display: block; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 12px;
  fill: var(--fg); }
svg text.id { font-weight: 600; }
svg text.note { font-size: 11px; fill: var(--muted); }
svg path.edge { stroke: #9aa6b2; stroke-width: 1.2; fill: none; }
svg rect { stroke-width: 1.5; }
g.child rect { fill: var(--run-bg); stroke: var(--run); }
g.child.sup rect, g.root rect { fill: var(--sup-bg); stroke: var(--sup); }
g.child.warm rect { fill: var(--warm-bg); stroke: var(--warm); }
g.child[data-state="restarting"] rect { fill: var(--hot-bg); stroke: var(--hot);
  stroke-width: 2.5; }
g.child[data-state="restarting"] text.note { fill: var(--hot); font-weight: 700; }
g.child[data-state="stopped"] rect { fill: var(--stop-bg); stroke: var(--stop);
  stroke-dasharray: 4 3; }
g.child[data-state="stopped"] text { fill: var(--stop); }
g.more rect { fill: #fff; stroke: #9aa6b2; stroke-dasharray: 2 2; }
g.more text { fill: var(--muted); }
</style>
</head>
<body data-updated="0">
<header>
  <h1>otpkv observer</h1>
  <span id="status">connecting…</span>
  <span id="legend"><span class="l-sup">supervisor</span><span class="l-run">running</span><span
    class="l-warm">restarted</span><span class="l-hot">restarting</span><span
    class="l-stop">stopped</span></span>
</header>
<div id="banner" role="alert"></div>
<main id="nodes"><p id="empty">Waiting for the first answer of cluster.json…</p></main>
<script>
"use strict";
(function () {
  const svg_ns = "http://www.w3.org/2000/svg";
  const refresh_ms = 500;
  const fetch_timeout_ms = 3000;
  const box_w = 160, box_h = 34, col_gap = 26, row_gap = 6, pad = 2;
  const max_id = 20, max_note = 26;
  let updated = 0;

  // Elements are made only through these two: text goes in as textContent, never as markup.
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(svg_ns, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }
  function sum(o) {
    let s = 0;
    if (o && typeof o === "object") for (const k in o) s += num(o[k]);
    return s;
  }
  function clip(s, max) {
    s = String(s);
    return s.length > max ? s.slice(0, max - 1) + "…" : s;
  }
  function seconds(s) {
    if (!(s > 0)) return "0";
    if (s < 1e-3) return (s * 1e6).toPrecision(3) + " µs";
    if (s < 1) return (s * 1e3).toPrecision(3) + " ms";
    return s.toPrecision(3) + " s";
  }
  function duration(s) {
    s = num(s);
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
  }
  // The 99th percentile, interpolated inside its bucket as Prometheus' histogram_quantile
  // does; past the last bound only "more than" it is known.
  function p99(lat) {
    if (!lat || !Array.isArray(lat.bounds) || !Array.isArray(lat.counts)) return "–";
    const total = lat.counts.reduce((a, c) => a + num(c), 0);
    if (total === 0) return "–";
    const rank = 0.99 * total;
    let below = 0;
    for (let i = 0; i < lat.counts.length; ++i) {
      const c = num(lat.counts[i]);
      if (c > 0 && below + c >= rank) {
        if (i >= lat.bounds.length) return "> " + seconds(num(lat.bounds[lat.bounds.length - 1]));
        const lo = i === 0 ? 0 : num(lat.bounds[i - 1]), hi = num(lat.bounds[i]);
        return "≈ " + seconds(lo + (hi - lo) * (rank - below) / c);
      }
      below += c;
    }
    return "–";
  }

  // The tree to draw: the root supervisor, its children, a supervisor child's own children
  // under it, and "+N more" where a supervisor lists fewer children than it has.
  function items_of(sup) {
    const out = [];
    if (!sup || !Array.isArray(sup.children)) return out;
    for (const c of sup.children) {
      if (!c || typeof c !== "object") continue;
      out.push({kind: "child", c: c, kids: c.supervisor ? items_of(c.supervisor) : []});
    }
    const more = num(sup.child_count) - sup.children.length;
    if (more > 0) out.push({kind: "more", n: more, kids: []});
    return out;
  }
  // Left to right: depth is the column, each leaf takes the next row, a parent sits
  // level with the middle of its children.
  function place(item, depth, state) {
    item.x = pad + depth * (box_w + col_gap);
    state.depth = Math.max(state.depth, depth);
    if (item.kids.length === 0) {
      item.y = pad + state.row++ * (box_h + row_gap);
    } else {
      for (const k of item.kids) place(k, depth + 1, state);
      item.y = (item.kids[0].y + item.kids[item.kids.length - 1].y) / 2;
    }
  }
  function child_note(c) {
    const words = [];
    const r = num(c.restarts);
    if (c.state === "restarting") words.push("RESTARTING");
    else if (c.state === "stopped") words.push("STOPPED");
    else if (c.supervisor) words.push(String(c.supervisor.strategy || "supervisor"));
    else if (r > 0) words.push(String(c.state || "?"));
    else words.push(String(c.type || "worker") + " · " + String(c.state || "?"));
    if (r > 0) words.push(r === 1 ? "1 restart" : r + " restarts");
    if (c.state === "stopped" && c.last_exit) words.push(String(c.last_exit));
    return words.join(" · ");
  }
  function child_title(c) {
    const lines = [String(c.id)];
    lines.push("pid: " + (c.pid === null || c.pid === undefined ? "none" : String(c.pid)));
    lines.push("type: " + String(c.type) + ", restart: " + String(c.restart));
    lines.push("state: " + String(c.state) + ", restarts in window: " + num(c.restarts));
    lines.push("uptime: " + duration(c.uptime_seconds));
    if (c.last_exit) lines.push("last exit: " + String(c.last_exit));
    if (c.supervisor) lines.push(sup_words(c.supervisor));
    return lines.join("\n");
  }
  function sup_words(s) {
    return String(s.strategy || "?") + (s.dynamic ? " (dynamic)" : "") + ", " +
      num(s.restarts) + " of " + num(s.max_restarts) + " restarts in " + num(s.max_seconds) +
      " s, " + num(s.child_count) + " children";
  }
  function box(g, id, note, title) {
    g.appendChild(sv("title", {}, title));
    g.appendChild(sv("rect", {width: box_w, height: box_h, rx: 4}));
    g.appendChild(sv("text", {"class": "id", x: 7, y: 14}, clip(id, max_id)));
    g.appendChild(sv("text", {"class": "note", x: 7, y: 28}, clip(note, max_note)));
  }
  // Pre-order (a parent's box before its children's), edges in a layer under the boxes.
  function draw(layers, item) {
    const g = sv("g", {transform: "translate(" + item.x + "," + item.y + ")"});
    if (item.kind === "root") {
      g.setAttribute("class", "root");
      g.setAttribute("data-id", String(item.sup.name));
      box(g, item.sup.name, String(item.sup.strategy || "supervisor") + " · " +
        num(item.sup.restarts) + "/" + num(item.sup.max_restarts) + " in " +
        num(item.sup.max_seconds) + " s", String(item.sup.name) + "\n" + sup_words(item.sup));
    } else if (item.kind === "more") {
      g.setAttribute("class", "more");
      g.setAttribute("data-count", String(item.n));
      box(g, "+" + item.n + " more", "not listed", item.n + " more children");
    } else {
      const c = item.c;
      let cls = "child";
      if (c.supervisor) cls += " sup";
      if (num(c.restarts) > 0) cls += " warm";
      g.setAttribute("class", cls);
      g.setAttribute("data-id", String(c.id));
      g.setAttribute("data-state", String(c.state));
      g.setAttribute("data-restarts", String(num(c.restarts)));
      box(g, c.id, child_note(c), child_title(c));
    }
    layers.boxes.appendChild(g);
    for (const k of item.kids) {
      const x0 = item.x + box_w, y0 = item.y + box_h / 2;
      const x1 = k.x, y1 = k.y + box_h / 2, xm = x0 + col_gap / 2;
      layers.edges.appendChild(sv("path", {"class": "edge",
        d: "M" + x0 + "," + y0 + " H" + xm + " V" + y1 + " H" + x1}));
      draw(layers, k);
    }
  }
  function tree_svg(sup) {
    const root = {kind: "root", sup: sup, kids: items_of(sup)};
    const state = {row: 0, depth: 0};
    place(root, 0, state);
    const w = 2 * pad + (state.depth + 1) * box_w + state.depth * col_gap;
    const h = 2 * pad + Math.max(1, state.row) * (box_h + row_gap) - row_gap;
    const svg = sv("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h,
      role: "img", "aria-label": "supervision tree of " + String(sup.name)});
    const layers = {edges: sv("g", {"class": "edges"}), boxes: sv("g", {"class": "boxes"})};
    svg.appendChild(layers.edges);
    svg.appendChild(layers.boxes);
    draw(layers, root);
    return svg;
  }

  function counter(dl, key, label, value, bad, title) {
    const d = el("div");
    d.appendChild(el("dt", {}, label));
    const dd = el("dd", {"data-counter": key}, value);
    if (bad) dd.className = "bad";
    if (title) dd.title = title;
    d.appendChild(dd);
    dl.appendChild(d);
  }
  function fill_up(sec, snap) {
    const srv = snap.server || {}, reg = snap.registry || {}, rt = snap.router || {};
    const peers = Array.isArray(rt.peers) ? rt.peers : [];
    const peers_up = peers.filter((p) => p && p.up === true).length;
    const errors = sum(srv.errors);
    const dl = el("dl", {"class": "counters"});
    counter(dl, "connections", "connections",
      num(srv.connections) + " / " + num(srv.max_connections));
    counter(dl, "commands", "commands", sum(srv.commands), false,
      Object.entries(srv.commands || {}).map(([k, v]) => k + ": " + num(v)).join("\n"));
    counter(dl, "buckets", "buckets", num(reg.buckets));
    counter(dl, "keys", "keys", num(reg.keys));
    counter(dl, "errors", "errors", errors, false,
      Object.entries(srv.errors || {}).map(([k, v]) => k + ": " + num(v)).join("\n"));
    counter(dl, "p99", "p99 latency", p99(srv.latency));
    counter(dl, "peers", "peers", peers_up + " up · " + (peers.length - peers_up) + " down",
      peers.length > peers_up);
    sec.appendChild(dl);
    if (peers.length > 0) {
      const p = el("p", {"class": "peers"}, "peers: ");
      peers.forEach((peer, i) => {
        if (i > 0) p.appendChild(document.createTextNode(", "));
        const s = el("span", {"class": peer.up === true ? "p-up" : "p-down"},
          String(peer.name) + (peer.up === true ? " up" : " DOWN"));
        if (peer.last_error) s.title = String(peer.last_error);
        p.appendChild(s);
      });
      sec.appendChild(p);
    }
    const t = el("div", {"class": "tree"});
    if (snap.tree) t.appendChild(tree_svg(snap.tree));
    sec.appendChild(t);
  }
  function fill_section(sec, n, self) {
    const up = n.up === true && n.snapshot && typeof n.snapshot === "object";
    sec.setAttribute("data-up", up ? "true" : "false");
    sec.replaceChildren();
    const h = el("h2", {}, String(n.name));
    h.appendChild(el("span", {"class": up ? "tag up" : "tag down"}, up ? "up" : "down"));
    if (up) {
      const s = n.snapshot;
      let sub = "";
      if (s.server && s.server.address) sub += String(s.server.address);
      if (s.version) sub += (sub ? " · " : "") + "version " + String(s.version);
      sub += (sub ? " · " : "") + "up " + duration(s.uptime_seconds);
      if (n.name === self) sub += (sub ? " · " : "") + "serving this page";
      h.appendChild(el("span", {"class": "sub"}, sub));
    }
    sec.appendChild(h);
    if (up) fill_up(sec, n.snapshot);
    else sec.appendChild(el("p", {"class": "error"},
      "node down: " + String(n.error || "no answer")));
  }
  function render(data) {
    const main = document.getElementById("nodes");
    const nodes = data && Array.isArray(data.nodes) ? data.nodes : [];
    const seen = new Set();
    let before = null;
    for (let i = nodes.length - 1; i >= 0; --i) {
      const n = nodes[i];
      if (!n || typeof n.name !== "string" || seen.has(n.name)) continue;
      seen.add(n.name);
      let sec = null;
      for (const s of main.querySelectorAll("section.node")) {
        if (s.getAttribute("data-node") === n.name) { sec = s; break; }
      }
      if (!sec) sec = el("section", {"class": "node", "data-node": n.name});
      fill_section(sec, n, data.node);
      main.insertBefore(sec, before);
      before = sec;
    }
    for (const s of Array.from(main.children)) {
      if (!(s.matches("section.node") && seen.has(s.getAttribute("data-node")))) s.remove();
    }
    if (seen.size === 0) main.appendChild(el("p", {id: "empty"}, "cluster.json lists no node"));
    const down = nodes.filter((n) => n && n.up !== true).length;
    document.getElementById("status").textContent = "node " + String(data.node) + " · " +
      seen.size + " nodes, " + down + " down · updated " + new Date().toLocaleTimeString();
  }

  async function refresh() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), fetch_timeout_ms);
    try {
      const r = await fetch("cluster.json", {cache: "no-store", signal: abort.signal});
      if (!r.ok) throw new Error("HTTP " + r.status);
      const data = await r.json();
      render(data);
      ++updated;
      document.body.setAttribute("data-updated", String(updated));
      document.body.classList.remove("offline");
    } catch (e) {
      document.body.classList.add("offline");
      document.getElementById("banner").textContent = "Cannot reach the node at " +
        location.host + " (" + (e && e.name === "AbortError" ? "timed out" : String(e)) +
        "); retrying every " + refresh_ms + " ms. The trees below are from the last answer.";
    } finally {
      clearTimeout(timer);
      setTimeout(refresh, refresh_ms);
    }
  }
  refresh();
})();
</script>
</body>
</html>
)otpkvpage";

} // namespace detail
} // namespace v0
} // namespace otpkv
