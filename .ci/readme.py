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
- A ```console block is shown and not run: a command for a tool CI cannot have (vcpkg,
  Conan); the README says what tests stand in for it. Any other kind of block is an error,
  so that nothing shown escapes these checks.

Usage: readme.py [README.md]
"""
import os
import pathlib
import shutil
import subprocess
import sys

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
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", prelude + body], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, errors="replace")
    out = []
    for line in proc.stdout:
        sys.stdout.write(line)
        out.append(line)
    sys.stdout.flush()
    if proc.wait() != 0:
        sys.exit(f"README command failed with exit code {proc.returncode}: {body.strip()}")
    return "".join(out)


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
    blocks = fenced_blocks(readme.read_text())
    consumers = ROOT / "tests" / "consumers"
    snippet_files = {"cmake": sorted(consumers.glob("*/CMakeLists.txt")),
                     "meson": sorted(consumers.glob("*/meson.build")),
                     "make": sorted(consumers.glob("*/Makefile")),
                     "cpp": [ROOT / "tests" / "test_readme.cpp"]}
    ran = checked_outputs = snippets = shown = 0
    last_output = None
    for info, body in blocks:
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
    print(f"::: README: {ran} commands ran, {checked_outputs} outputs matched, "
          f"{snippets} snippets found in consumer projects, {shown} shown only")


if __name__ == "__main__":
    main()
