# SPDX-License-Identifier: MIT
"""A headless Chromium driven through the DevTools protocol, with the standard library only.

Chromium runs with --remote-debugging-pipe: it reads the protocol's commands from its file
descriptor 3 and writes answers and events on its descriptor 4, each message a JSON text
ended by a NUL byte (no websocket needed). One page is opened and attached in "flat" mode,
so the page's commands carry its sessionId on the same pipe.

    with Browser.launch() as b:
        b.navigate("http://127.0.0.1:8080/")
        b.wait_for("document.body.dataset.updated > 0", timeout=5)
        png = b.screenshot()

Chromium runs in a process group of its own (its renderer and GPU processes join it);
close() asks it to quit, then kills that group by its id, the PID of the process started.
"""

import base64
import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time


class BrowserError(Exception):
    """Chromium could not be started, answered with an error, or did not answer in time."""


def find_chromium():
    """The Chromium program: $CHROMIUM, else chromium or chromium-browser on PATH, else None."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _become_subreaper():
    """Makes Chromium's helpers orphaned by its exit children of this process (Linux's
    PR_SET_CHILD_SUBREAPER), so close() can wait for every one of them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # then init reaps them


class Browser:
    """One headless Chromium with one page. Not thread-safe: one thread drives it."""

    def __init__(self, proc, to_browser, from_browser, profile):
        self.proc = proc
        self._out = to_browser
        self._in = from_browser
        self._profile = profile
        self._buffer = b""
        self._next_id = 0
        self._session = None
        self.events = []  # every event received, (method, params), oldest first

    @classmethod
    def launch(cls, program=None, width=1200, height=800, timeout=30.0):
        """Starts Chromium headless and opens a blank page of width x height CSS pixels."""
        _become_subreaper()
        program = program or find_chromium()
        if not program:
            raise BrowserError("no chromium program found (install Debian's chromium)")
        profile = tempfile.mkdtemp(prefix="otpkv-chromium.")
        # Our ends and Chromium's; Chromium's are moved to 3 and 4 in the child. They are
        # duplicated above 100 first so that moving one cannot overwrite the other.
        cmd_read, cmd_write = os.pipe()
        ans_read, ans_write = os.pipe()
        child_in = fcntl.fcntl(cmd_read, fcntl.F_DUPFD_CLOEXEC, 100)
        child_out = fcntl.fcntl(ans_write, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(cmd_read)
        os.close(ans_write)

        def to_3_and_4():
            os.dup2(child_in, 3)  # dup2 clears close-on-exec on the copy
            os.dup2(child_out, 4)

        args = [program, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--remote-debugging-pipe",
                "--user-data-dir=" + profile, "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps", "--mute-audio",
                "--hide-scrollbars", "--window-size=%d,%d" % (width, height), "about:blank"]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, pass_fds=(3, 4),
                                    preexec_fn=to_3_and_4, start_new_session=True)
        except OSError as e:
            for fd in (cmd_write, ans_read, child_in, child_out):
                os.close(fd)
            shutil.rmtree(profile, ignore_errors=True)
            raise BrowserError("cannot start %s: %s" % (program, e)) from e
        os.close(child_in)
        os.close(child_out)
        b = cls(proc, cmd_write, ans_read, profile)
        try:
            b._open_page(width, height, timeout)
        except BaseException:
            b.close()
            raise
        return b

    def _open_page(self, width, height, timeout):
        target = self.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout,
                           browser=True)["targetId"]
        self._session = self.call("Target.attachToTarget",
                                  {"targetId": target, "flatten": True},
                                  timeout=timeout, browser=True)["sessionId"]
        self.call("Page.enable")
        self.call("Network.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, message):
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                n = os.write(self._out, data)
                data = data[n:]
        except OSError as e:
            raise BrowserError("cannot write to chromium (exit status %s): %s"
                               % (self.proc.poll(), e)) from e

    def _receive(self, deadline):
        """The next message, or BrowserError past the deadline or when Chromium is gone."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium did not answer in time")
            ready, _, _ = select.select([self._in], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed the pipe (exit status %s)" % self.proc.poll())
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, timeout=10.0, browser=False):
        """Sends a command (to the page unless browser) and returns its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + timeout
        while True:
            m = self._receive(deadline)
            if m.get("id") == self._next_id:
                if "error" in m:
                    raise BrowserError("%s: %s" % (method, m["error"]))
                return m.get("result", {})
            if "method" in m:
                self.events.append((m["method"], m.get("params", {})))

    def navigate(self, url):
        """Loads url in the page (returns once the navigation is committed)."""
        r = self.call("Page.navigate", {"url": url})
        if r.get("errorText"):
            raise BrowserError("cannot load %s: %s" % (url, r["errorText"]))

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (JSON-like values only)."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise BrowserError("%s threw: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def wait_for(self, expression, timeout, interval=0.02):
        """Evaluates expression until it is truthy; returns the seconds it took, or raises
        BrowserError after timeout seconds (naming the expression). An expression that
        throws (the page not loaded yet: no body) counts as false."""
        start = time.monotonic()
        last = "false"
        while True:
            r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
            if "exceptionDetails" not in r and r["result"].get("value"):
                return time.monotonic() - start
            if "exceptionDetails" in r:
                last = r["exceptionDetails"].get("exception", {}).get("description", "threw")
            if time.monotonic() - start > timeout:
                raise BrowserError("not true within %.1f s (last: %s): %s"
                                   % (timeout, last, expression))
            time.sleep(interval)

    def screenshot(self):
        """The page's viewport as PNG bytes."""
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def requested_urls(self):
        """Every URL the page asked the network for so far."""
        self.evaluate("0")  # collects the events sent before now
        return [p["request"]["url"] for m, p in self.events if m == "Network.requestWillBeSent"]

    def close(self):
        """Asks Chromium to quit, waits up to 5 s, then kills its process group."""
        if self.proc.poll() is None:
            try:
                self._send({"id": self._next_id + 1, "method": "Browser.close"})
            except BrowserError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # The group's id is the PID of the process started (start_new_session); helpers of
        # Chromium's still in it are ended with it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait()
        while True:  # the group's other processes, killed above: wait for each
            try:
                os.waitpid(-self.proc.pid, 0)
            except ChildProcessError:
                break
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)
