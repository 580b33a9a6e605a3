#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# compile_time.sh: how long it takes to compile a file that includes one public otpkv
# header and nothing else, against a baseline file that includes only the standard and
# system headers that header pulls in (directly or through other otpkv headers). Prints
# a markdown table of medians, in milliseconds.
#
# Usage:
#   benchmarks/compile_time.sh [-n RUNS] [-c COMPILER]... [-w] INCLUDE_DIR [INCLUDE_DIR_AFTER]
#
#   INCLUDE_DIR        the directory that holds otpkv/ (for this tree: include)
#   INCLUDE_DIR_AFTER  optional second tree, e.g. before and after a change:
#                        git worktree add --detach ../otpkv-base <commit>
#                        benchmarks/compile_time.sh ../otpkv-base/include include
#                      the two are measured in the same run, header by header, and the table
#                      gets an after/before ratio per header
#   -n RUNS            compilations per measurement, the median is reported (default 3)
#   -c COMPILER        a compiler to time, repeatable (default: g++); e.g. -c g++ -c clang++
#   -w                 wall-clock time instead of the compiler's CPU time (user + system)
#
# Every compilation is `COMPILER -std=c++20 -O2 -c` of a one-line translation unit into
# /dev/null. Public headers are those under otpkv/ outside any detail/ directory. The
# baseline's header list is taken from the preprocessor (-E -dI), so headers behind an
# #if that is false on this platform are not counted; the last column names which of
# <fstream>, <filesystem> and <iostream> are among them. A header that only one of two
# trees has gets "-" on the other side. The time is the CPU time (user + system) of the
# compiler and its subprocesses, which other work on a shared machine disturbs far less
# than the wall clock (it still slows caches and clocks down): run it when the machine is
# quiet and compare trees measured in the same run.
set -euo pipefail

runs=3
compilers=()
clock=cpu
while getopts "n:c:wh" opt; do
    case "$opt" in
    n) runs="$OPTARG" ;;
    c) compilers+=("$OPTARG") ;;
    w) clock=wall ;;
    h)
        sed -n '3,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"
        exit 0
        ;;
    *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 [-n RUNS] [-c COMPILER]... [-w] INCLUDE_DIR [INCLUDE_DIR_AFTER]" >&2
    exit 2
fi
if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: -n wants a positive number, got '$runs'" >&2
    exit 2
fi
[[ ${#compilers[@]} -gt 0 ]] || compilers=(g++)

dirs=()
for d in "$@"; do
    if [[ ! -d "$d/otpkv" ]]; then
        echo "$0: '$d' has no otpkv/ directory" >&2
        exit 2
    fi
    dirs+=("$(cd "$d" && pwd)")
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The public headers of every tree, relative to its include dir, sorted and merged.
mapfile -t headers < <(for d in "${dirs[@]}"; do
    (cd "$d" && find otpkv -name '*.hpp' -not -path '*/detail/*')
done | sort -u)

# std_includes COMPILER DIR HEADER: the non-otpkv #include lines that the preprocessor
# takes inside DIR's files when compiling a TU that includes HEADER.
std_includes() {
    printf '#include <%s>\n' "$3" >"$work/probe.cpp"
    "$1" -std=c++20 -O2 -E -dI -I"$2" "$work/probe.cpp" | awk -v dir="$2/" '
        /^# [0-9]+ "/ { file = $3; gsub(/"/, "", file); next }
        /^#include </ && index(file, dir) == 1 && $2 !~ /^<otpkv\// && !seen[$2]++ {
            print "#include " $2
        }
    '
}

# time_ms COMPILER DIR TU: the median over $runs compilations, in milliseconds.
time_ms() {
    local i real user sys samples=()
    local TIMEFORMAT='%3R %3U %3S'
    for ((i = 0; i < runs; i++)); do
        # bash's `time` counts the command's children too (cc1plus, as).
        if ! { time "$1" -std=c++20 -O2 -I"$2" -c "$3" -o /dev/null 2>"$work/errors"; } \
            2>"$work/time"; then
            echo "$0: $1 failed on $3:" >&2
            cat "$work/errors" "$3" >&2
            exit 1
        fi
        read -r real user sys <"$work/time"
        if [[ $clock == wall ]]; then
            samples+=("$real")
        else
            samples+=("$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')")
        fi
    done
    printf '%s\n' "${samples[@]}" | sort -g |
        awk '{ v[NR] = $1 } END { printf "%d\n", v[int((NR + 1) / 2)] * 1000 + 0.5 }'
}

# The costly standard headers the issue names, and which of them a baseline includes.
heavy_list="\`<fstream>\`, \`<filesystem>\`, \`<iostream>\`"
heavy_of() {
    local found
    # shellcheck disable=SC2016 # the backquotes are markdown's
    found="$(grep -oE '<(fstream|filesystem|iostream)>' "$1" | sed 's/.*/`&`/' | paste -sd ' ' -)"
    echo "${found:-none}"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }

for cxx in "${compilers[@]}"; do
    version="$("$cxx" --version | head -n 1)"
    echo
    what="CPU time (user + system)"
    [[ $clock == cpu ]] || what="wall-clock time"
    echo "$version, \`-std=c++20 -O2 -c\`, $what in ms, median of $runs"
    echo
    if [[ ${#dirs[@]} -eq 1 ]]; then
        echo "| header | standard headers alone | with the header | header's own cost" \
            "| of $heavy_list |"
        echo "|---|---:|---:|---:|---|"
    else
        echo "| header | std before | before | std after | after | after / before" \
            "| of $heavy_list, before -> after |"
        echo "|---|---:|---:|---:|---:|---:|---|"
    fi
    for h in "${headers[@]}"; do
        cells=()
        heavy=()
        for i in "${!dirs[@]}"; do
            d="${dirs[$i]}"
            if [[ ! -f "$d/$h" ]]; then
                cells+=("-" "-")
                heavy+=("-")
                continue
            fi
            printf '#include <%s>\n' "$h" >"$work/header_$i.cpp"
            std_includes "$cxx" "$d" "$h" >"$work/baseline_$i.cpp"
            cells+=("$(time_ms "$cxx" "$d" "$work/baseline_$i.cpp")")
            cells+=("$(time_ms "$cxx" "$d" "$work/header_$i.cpp")")
            heavy+=("$(heavy_of "$work/baseline_$i.cpp")")
        done
        if [[ ${#dirs[@]} -eq 1 ]]; then
            echo "| \`$h\` | ${cells[0]} | ${cells[1]} | $((cells[1] - cells[0])) | ${heavy[0]} |"
        else
            r="-"
            if [[ "${cells[1]}" != "-" && "${cells[3]}" != "-" ]]; then
                r="$(ratio "${cells[3]}" "${cells[1]}")"
            fi
            echo "| \`$h\` | ${cells[0]} | ${cells[1]} | ${cells[2]} | ${cells[3]} | $r" \
                "| ${heavy[0]} -> ${heavy[1]} |"
        fi
    done
done
