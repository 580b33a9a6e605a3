#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Keeps README.md true: runs every command it shows, checks the output it shows, and
finds every build snippet it shows in a consumer project that the tests build.

- Each ```sh block runs, in order, with bash -euo pipefail, from the repository root.
  Where `sudo` is missing and we are root (a CI machine), it runs the command as is.
- A ```text block right after a ```sh block is that command's exact standard output.
- Each ```cmake block must appear, line for line, in some tests/consumers/*/CMakeLists.txt,
  each ```meson block in some tests/consumers/*/meson.build, each ```make block in some
  tests/consumers/*/Makefile: ctest builds and runs those projects (the consumer_* tests).
  Each ```cpp block must appear in tests/test_readme.cpp, which the tests build and run.
- A ```sh server block starts a long-running program (kv_server) in the background; the
  ```text block after it is the last line it prints when ready (what it printed before,
  a build's output, is echoed). It keeps running through the nc sessions that follow and
  is stopped with SIGINT (Ctrl-C) before the next other command: it must exit 0 within
  5 s.
- A ```sh block holding only `nc HOST PORT`, followed by a ```text block, is an
  interactive session: the first line of the text is typed, then the server's reply lines
  (read until it is quiet, CRLF shown as a line break) must be the lines that follow;
  the next line is typed, and so on. So a transcript shows what to type and what comes
  back, and is checked byte for byte (apart from the CR before each LF), except that a
  `…` in a reply line stands for any text within that line (a time, a pid, a port).
- A ```console block is shown and not run: a command for a tool CI cannot have (vcpkg,
  Conan); the README says what tests stand in for it. Any other kind of block is an error,
  so that nothing shown escapes these checks.

Usage: readme.py [README.md]
"""
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fenced_blocks(text):
    """(info string, body) of each fenced block, in order."""
    blocks, info, body = [], None, []
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "".join(body)))
                info = None
        elif info is not None:
            body.append(line)
    if info is not None:
        sys.exit("README.md: a fenced block is not closed")
    return blocks


def run_sh(body):
    prelude = ""
    if shutil.which("sudo") is None and os.geteuid() == 0:
        prelude = 'sudo() { "$@"; }\n'
    print(f"::: README $ {body.strip()}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", prelude + body], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, errors="replace")
    out = []
    for line in proc.stdout:
        sys.stdout.write(line)
        out.append(line)
    sys.stdout.flush()
    if proc.wait() != 0:
        sys.exit(f"README command failed with exit code {proc.returncode}: {body.strip()}")
    print(f"::: README took {time.monotonic() - started:.0f} s", flush=True)
    return "".join(out)


def start_server(body, ready):
    """Runs a server block in the background until it prints `ready`; returns the process."""
    print(f"::: README $ {body.strip()} (in the background)", flush=True)
    # A session of its own, so SIGINT goes to the whole group, as Ctrl-C in a terminal does.
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", body], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    for line in proc.stdout:
        sys.stdout.write(line)
        if line == ready:
            sys.stdout.flush()
            return proc
    sys.exit(f"README server command exited ({proc.wait()}) before printing: {ready}")


def stop_server(proc):
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        sys.exit("README server did not stop within 5 s of SIGINT")
    if code != 0:
        sys.exit(f"README server exited with {code} on SIGINT")
    print("::: README server stopped by SIGINT, exit 0", flush=True)


def read_quiet(fd, quiet=0.3, limit=5.0):
    """What comes out of `fd` until it has been quiet for `quiet` seconds."""
    data, deadline = b"", time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], quiet)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def line_matches(shown, got):
    """A reply line the README shows against the one the server sent: equal, or with each
    `…` of the shown line standing for any text within the line."""
    if "…" not in shown:
        return shown == got
    pattern = ".*?".join(re.escape(part) for part in shown.split("…"))
    return re.fullmatch(pattern, got, flags=re.S) is not None


def nc_session(body, transcript):
    """Runs the nc command and types the transcript's lines into it (see the docstring)."""
    print(f"::: README $ {body.strip()} (typing the session)", flush=True)
    proc = subprocess.Popen(body.split(), cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    lines = transcript.splitlines(keepends=True)
    try:
        i = 0
        while i < len(lines):
            sys.stdout.write("> " + lines[i])
            proc.stdin.write(lines[i].encode())
            proc.stdin.flush()
            got = read_quiet(proc.stdout.fileno()).decode(errors="replace")
            got = got.replace("\r\n", "\n")
            sys.stdout.write(got)
            want = got.splitlines(keepends=True)
            shown = lines[i + 1:i + 1 + len(want)]
            if (not want or len(shown) != len(want)
                    or not all(line_matches(s, g) for s, g in zip(shown, want))):
                sys.exit(f"README session: after typing {lines[i]!r} the server sent "
                         f"{got!r}, the README shows {''.join(lines[i + 1:i + 1 + len(want)])!r}")
            i += 1 + len(want)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        proc.wait(timeout=5)
    sys.stdout.flush()


def snippet_found(body, files):
    want = [l.strip() for l in body.strip().splitlines()]
    for path in files:
        have = [l.strip() for l in path.read_text().splitlines()]
        for i in range(len(have) - len(want) + 1):
            if have[i:i + len(want)] == want:
                return path
    return None


def main():
    readme = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "README.md"
    blocks = fenced_blocks(readme.read_text(encoding="utf-8"))
    consumers = ROOT / "tests" / "consumers"
    snippet_files = {"cmake": sorted(consumers.glob("*/CMakeLists.txt")),
                     "meson": sorted(consumers.glob("*/meson.build")),
                     "make": sorted(consumers.glob("*/Makefile")),
                     "cpp": [ROOT / "tests" / "test_readme.cpp"]}
    ran = checked_outputs = snippets = shown = sessions = 0
    last_output = None
    server = None
    for index, (info, body) in enumerate(blocks):
        following = blocks[index + 1] if index + 1 < len(blocks) else (None, None)
        interactive = info == "sh" and re.fullmatch(r"nc \S+ \d+\n", body)
        if info in ("sh", "sh server") and not interactive and server is not None:
            stop_server(server)
            server = None
        if info == "sh server" or interactive:
            if following[0] != "text":
                sys.exit(f"README: ```{info} block without the ```text block it needs:\n{body}")
            if interactive:
                nc_session(body, following[1])
                sessions += 1
            else:
                server = start_server(body, following[1].splitlines(keepends=True)[-1])
            ran += 1
            blocks[index + 1] = ("checked", following[1])
            continue
        if info == "checked":
            continue
        if info == "sh":
            last_output = run_sh(body)
            ran += 1
            continue
        if info == "text" and last_output is not None:
            if last_output != body:
                sys.exit(f"README shows this output:\n{body}\nbut the command printed:\n"
                         f"{last_output}")
            checked_outputs += 1
        elif info in snippet_files:
            where = snippet_found(body, snippet_files[info])
            if where is None:
                sys.exit(f"README's {info} snippet is in no consumer project:\n{body}")
            print(f"::: README {info} snippet is exercised by {where.relative_to(ROOT)}")
            snippets += 1
        elif info == "console":
            print(f"::: README shows, not run (a tool CI lacks): {body.strip()}")
            shown += 1
        else:
            sys.exit(f"README has a ```{info} block that nothing checks:\n{body}")
        last_output = None
    if server is not None:
        stop_server(server)
    print(f"::: README: {ran} commands ran, {checked_outputs} outputs matched, "
          f"{sessions} nc sessions typed, {snippets} snippets found in consumer projects, "
          f"{shown} shown only")


if __name__ == "__main__":
    main()
