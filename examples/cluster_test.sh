#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# example_cluster: examples/cluster.sh starts three nodes that route to each other, fails
# clearly on a port in use, and leaves no process behind. Arguments: cluster.sh, kv_server.
set -euo pipefail
cluster_sh=$1 kv_server=$2
dir=$(mktemp -d)
# The nodes find their cluster cookie in ~/.otpkv.cookie, made by the first of them (as for
# a user who runs cluster.sh): a HOME of the test's own, never the real one.
export HOME="$dir/home"
mkdir "$HOME"
clusters=() # PIDs of the cluster.sh started, each also its process group's ID
# After a failure: SIGTERM to whatever runs (cluster.sh cleans up after itself), SIGKILL
# to what still runs 10 s later.
cleanup() {
    local g _ alive
    for g in "${clusters[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
    for _ in $(seq 100); do
        alive=0
        for g in "${clusters[@]}"; do
            if kill -0 -- "-$g" 2>/dev/null; then alive=1; fi
        done
        if ((!alive)); then break; fi
        sleep 0.1
    done
    for g in "${clusters[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    printf 'FAIL: %s\n' "$*"
    tail -n +1 "$dir"/*
    exit 1
}

# start NAME PORT: cluster.sh in the background (output in $dir/NAME.*); `pid` is its PID.
# Started with job control on, it takes SIGINT (it would ignore it otherwise), and it runs
# in a process group of its own, named by `pid`, where its nodes are too.
start() {
    set -m
    KV_SERVER=$kv_server "$cluster_sh" --port "$2" -- --threads 1 >"$dir/$1.out" \
        2>"$dir/$1.err" &
    pid=$!
    set +m
    clusters+=("$pid")
}
# ready NAME PID: waits up to 20 s for the cluster's ready line; fails when it exits first.
ready() {
    for _ in $(seq 200); do
        if grep -q '^otpkv cluster ready: ' "$dir/$1.out"; then return 0; fi
        if ! kill -0 "$2" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    fail "$1: no ready line within 20 s"
}
# finish PID: waits up to 20 s for cluster.sh to exit, sets `status`, and checks that no
# process of its group (no node) remains.
finish() {
    for _ in $(seq 200); do
        if ! kill -0 "$1" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if kill -0 "$1" 2>/dev/null; then fail "cluster.sh $1 still runs"; fi
    status=0
    wait "$1" || status=$?
    if kill -0 -- "-$1" 2>/dev/null; then fail "processes of cluster.sh $1 remain"; fi
}
# session PORT REQUESTS REPLIES: sends the request lines to a node and reads back exactly
# the reply lines (each ending in CR LF), then nothing more.
session() {
    local fd line want
    exec {fd}<>"/dev/tcp/127.0.0.1/$1"
    printf '%s\n' "$2" >&"$fd"
    while IFS= read -r want; do
        IFS= read -r -t 5 -u "$fd" line || fail "port $1: no reply, wanted '$want'"
        [[ $line == "$want"$'\r' ]] || fail "port $1: got '$line', wanted '$want'"
    done <<<"$3"
    if IFS= read -r -t 0.3 -u "$fd" line; then fail "port $1: more came: '$line'"; fi
    exec {fd}>&-
}

# A base port that is free, with the next two: tried at random, away from the ephemeral
# range (where the nodes' own connections take theirs).
port=
for _ in 1 2 3 4 5; do
    try=$((20000 + RANDOM % 10000))
    start main "$try"
    if ready main "$pid"; then
        port=$try
        break
    fi
    finish "$pid"
    grep -q 'Address already in use' "$dir/main.err" || fail "cluster.sh exited with $status"
done
[[ -n $port ]] || fail "no free ports in 5 tries"
main=$pid
p1=$port p2=$((port + 1)) p3=$((port + 2))
[[ $(<"$dir/main.out") == "otpkv node n1 listening on 127.0.0.1:$p1
otpkv node n2 listening on 127.0.0.1:$p2
otpkv node n3 listening on 127.0.0.1:$p3
otpkv cluster ready: a-i=n1@127.0.0.1:$p1 j-r=n2@127.0.0.1:$p2 s-z=n3@127.0.0.1:$p3" ]] ||
    fail "ready lines"
# One cookie file, made at random, readable by its owner only; no temporary file left.
[[ $(stat -c %a "$HOME/.otpkv.cookie") == 400 ]] || fail "cookie file mode"
[[ $(<"$HOME/.otpkv.cookie") =~ ^[A-Z]{32}$ ]] || fail "cookie file contents"
[[ $(ls -A "$HOME") == .otpkv.cookie ]] || fail "files in HOME: $(ls -A "$HOME")"

# Buckets of every node through n1; another node sees the same data.
session "$p1" 'CREATE fruit
PUT fruit apples 3
CREATE pantry
PUT pantry rice 1
CREATE shopping
PUT shopping milk 2
GET shopping milk
CREATE Shopping' 'OK
OK
OK
OK
OK
OK
2
OK
ERROR no route'
session "$p3" 'GET fruit apples
GET pantry rice
GET shopping milk' '3
OK
1
OK
2
OK'

# SUBSCRIBE to n3's bucket through n1, written through n2 (until the subscription took).
exec {sub}<>"/dev/tcp/127.0.0.1/$p1"
printf 'SUBSCRIBE shopping\n' >&"$sub"
event=
for v in $(seq 20); do
    session "$p2" "PUT shopping eggs $v" 'OK'
    if IFS= read -r -t 0.5 -u "$sub" event; then break; fi
done
[[ $event == "eggs SET TO "[0-9]*$'\r' ]] || fail "subscriber got '$event'"
exec {sub}>&-

# A second cluster on ports the first one holds: it fails, naming a node, and stops the
# node that did start; the first cluster is untouched.
start taken "$p2"
finish "$pid"
((status == 1)) || fail "cluster.sh on a port in use exited with $status"
grep -q 'Address already in use' "$dir/taken.err" || fail "no 'Address already in use'"
grep -Eq '^cluster.sh: node n[12] ' "$dir/taken.err" || fail "no node named"
session "$p2" 'GET fruit apples' '3
OK'

# SIGINT to cluster.sh alone: it stops its nodes itself and exits 0.
kill -INT "$main"
finish "$main"
((status == 0)) || fail "cluster.sh exited with $status on SIGINT"
[[ $(tail -n 1 "$dir/main.err") == 'cluster.sh: stopped n1 n2 n3' ]] || fail "stop message"
for p in "$p1" "$p2" "$p3"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p still open"; fi
done
echo "example_cluster: ok (ports $p1-$p3)"
