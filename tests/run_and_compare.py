#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""run_and_compare.py INPUT EXPECTED PROGRAM [ARGS...]: runs PROGRAM ARGS with INPUT on
stdin; its stdout must equal EXPECTED byte for byte. meson's twin of
tests/cmake/run_and_compare.cmake (meson always has python)."""
import subprocess
import sys

input_path, expected_path, program, *args = sys.argv[1:]
with open(input_path, "rb") as stdin:
    done = subprocess.run([program, *args], stdin=stdin, capture_output=True, timeout=60)
with open(expected_path, "rb") as f:
    expected = f.read()
if done.returncode != 0:
    sys.exit(f"{program} exited with {done.returncode}: {done.stderr.decode(errors='replace')}")
if done.stdout != expected:
    sys.exit(f"{program} printed:\n{done.stdout!r}\nexpected:\n{expected!r}")
