#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Runs PROGRAM with INPUT on stdin; its stdout must equal EXPECTED byte for byte.
meson's twin of tests/cmake/run_and_compare.cmake (meson always has python)."""
import subprocess
import sys

program, input_path, expected_path = sys.argv[1:4]
with open(input_path, "rb") as stdin:
    done = subprocess.run([program], stdin=stdin, capture_output=True, timeout=60)
with open(expected_path, "rb") as f:
    expected = f.read()
if done.returncode != 0:
    sys.exit(f"{program} exited with {done.returncode}: {done.stderr.decode(errors='replace')}")
if done.stdout != expected:
    sys.exit(f"{program} printed:\n{done.stdout!r}\nexpected:\n{expected!r}")
