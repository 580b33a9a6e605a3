#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A stand-in for kv_server's admin port, to check observer_browser.py's cluster mode alone.

    observer_browser.py --kv-server tests/browser/fake_kv_server.py

Takes kv_server's --node, --port, --route and --admin-port, listens on --port (accepting
nothing), serves the real page at / and a /cluster.json built from data/cluster_up.json's
first node, in which another node is up while its --port accepts a connection. It prints
kv_server's two lines (admin URL, then ready) and runs until a signal.
"""

import argparse
import copy
import http.server
import json
import pathlib
import signal
import socket
import socketserver
import sys
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from observer_browser import load, page_html  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--node", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--route", action="append", default=[])
    p.add_argument("--admin-port", type=int, default=0)
    args = p.parse_args()
    template = load("cluster_up.json")["nodes"][0]["snapshot"]
    peers = []  # (name, port) of each node of the routes, in table order, once each
    for r in args.route:
        name, address = r.split("=", 1)[1].split("@")
        if name not in [n for n, _ in peers]:
            peers.append((name, int(address.rsplit(":", 1)[1])))

    def snapshot(name, port):
        s = copy.deepcopy(template)
        s["node"] = name
        s["server"]["address"] = "127.0.0.1:%d" % port
        if name == args.node:  # its own buckets; the others' stay as in the template
            registry = s["tree"]["children"][0]["supervisor"]
            registry["children"] = [dict(registry["children"][0], id=b) for b in buckets]
            registry["child_count"] = len(buckets)
        return s

    def cluster():
        nodes = [{"name": args.node, "up": True, "snapshot": snapshot(args.node, args.port)}]
        for name, port in peers:
            if name == args.node:
                continue
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                nodes.append({"name": name, "up": True, "snapshot": snapshot(name, port)})
            except OSError:
                nodes.append({"name": name, "up": False, "error": "node %s unavailable" % name})
        return {"node": args.node, "nodes": nodes}

    html = page_html().encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/":
                body, kind = html, "text/html; charset=utf-8"
            elif self.path == "/cluster.json":
                body, kind = json.dumps(cluster()).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    buckets = []

    class Main(socketserver.StreamRequestHandler):
        def handle(self):  # CREATE only, as far as this test needs
            for line in self.rfile:
                words = line.split()
                if len(words) == 2 and words[0] == b"CREATE":
                    buckets.append(words[1].decode())
                    self.wfile.write(b"OK\r\n")
                else:
                    self.wfile.write(b"UNKNOWN COMMAND\r\n")

    main_port = socketserver.ThreadingTCPServer(("127.0.0.1", args.port), Main)
    main_port.daemon_threads = True
    threading.Thread(target=main_port.serve_forever, daemon=True).start()
    admin = http.server.ThreadingHTTPServer(("127.0.0.1", args.admin_port), Handler)
    admin.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("otpkv node %s admin on http://127.0.0.1:%d/" % (args.node, admin.server_address[1]),
          flush=True)
    print("otpkv node %s listening on 127.0.0.1:%d" % (args.node, args.port), flush=True)
    try:
        admin.serve_forever()
    finally:
        main_port.server_close()


if __name__ == "__main__":
    main()
