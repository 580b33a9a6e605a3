#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cluster.sh: a three-node otpkv cluster on loopback, started with one command, the way the
# guide starts several nodes on one machine. `examples/cluster.sh --help` says how to use
# it; README.md ("Running a cluster") shows a session.
#
# How it works: the three kv_server processes run in the background with the same routes,
# their standard output going to a temporary folder, where the script looks for their ready
# lines. Once all three are ready it prints those lines and its own, then waits. A signal
# (SIGINT, SIGTERM, SIGHUP) stops every node by its PID with SIGTERM; a node that exits on
# its own, or never gets ready, stops the others too and the script fails, naming it. The
# EXIT trap stops whatever still runs on every other path (an error in the script
# included), so no node outlives the script, unless the script itself is SIGKILLed.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: examples/cluster.sh [--port N] [--kv-server PATH] [--replicas R] [--etcd PATH]
                          [-- KV_SERVER_OPTION...]
       examples/cluster.sh --help

Starts three otpkv nodes on 127.0.0.1, each given the same routes:

  node  port      buckets whose name starts with
  n1    N         a to i   (--route a-i=n1@127.0.0.1:N)
  n2    N + 1     j to r   (--route j-r=n2@127.0.0.1:N+1)
  n3    N + 2     s to z   (--route s-z=n3@127.0.0.1:N+2)

Any other first byte (a capital, a digit, ...) has no route. Connect to any node: it runs
its own buckets and forwards the others to their owner.

When all three nodes are ready it prints their ready lines, then this one, and runs until
SIGINT (Ctrl-C), SIGTERM or SIGHUP:

  otpkv cluster ready: a-i=n1@127.0.0.1:N j-r=n2@127.0.0.1:N+1 s-z=n3@127.0.0.1:N+2

With --replicas R (1 to 3), every range is replicated on R nodes (README.md,
"Replication"): the script first starts etcd, the membership authority, on a free
loopback port with a temporary data directory, and each route names all three nodes,
its owner first (a-i=n1,n2,n3  j-r=n2,n3,n1  s-z=n3,n1,n2); the ready line waits until
every range answers, and ends with ` (replicas R, etcd http://127.0.0.1:PORT)`. Stopping
stops the nodes, then etcd.

(A script that starts it with & and no job control makes it ignore SIGINT, as POSIX
says: stop it with SIGTERM then, or run `set -m` first.)

Options:
  --port N          n1's port; n2 and n3 take the next two (default: 4041, or $CLUSTER_PORT)
  --kv-server PATH  the kv_server program (default: $KV_SERVER, or
                    build/release/examples/kv_server in the repository)
  --replicas R      replicate every range on R nodes (1 to 3), with etcd
  --etcd PATH       the etcd program (default: $ETCD, or etcd on the PATH: Debian's
                    etcd-server)
  -- OPTION...      passed to every node, e.g. -- --threads 1
  -h, --help        print this text and exit

Exit status: 0 after a signal once every node stopped cleanly; 1 when a node could not
start (its port is taken, say), did not get ready within 10 s, exited by itself, or did
not stop within 10 s of SIGTERM (the message names it; the others are stopped too);
2 for a bad argument.
EOF
}

prog=cluster.sh
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
usage_error() {
    say "$* (--help lists the options)"
    exit 2
}

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
    say "needs bash 4.4 or later (this is $BASH_VERSION)"
    exit 1
fi

pids=()     # each node's PID, by index
running=()  # indices of the nodes not yet waited for
statuses=() # each node's exit status, by index, once waited for
ended=()    # indices of the nodes `reap` found gone
timer=      # PID of the sleep `pause` waits for, while there is one
stopping=0  # set by a signal: stop the cluster
out=        # the temporary folder of the nodes' standard output
etcd_pid=   # etcd's PID, with --replicas

# Waits $1 seconds, or less when a signal comes: `wait` returns at once then, which a
# foreground `sleep` would not (bash would even drop a SIGINT sent to it alone, taking it
# for the sleep's).
pause() {
    sleep "$1" &
    timer=$!
    wait "$timer" || true
    stop_timer
}

stop_timer() {
    if [[ -n $timer ]]; then
        kill -TERM "$timer" 2>/dev/null || true
        wait "$timer" 2>/dev/null || true
        timer=
    fi
}

# Moves the nodes that have exited from `running` to `ended`, with their `statuses`. bash
# reaps a child as soon as it exits, after which `kill -0` fails, and a plain `wait PID`
# still gives its status (`wait -n PID` would not, once bash has started another job).
# Status -1: bash lost it (bash 5.2 does when the child ends just as a signal interrupts a
# `wait`, as when Ctrl-C reaches the nodes and this script together).
reap() {
    local i still=()
    ended=()
    for i in "${running[@]}"; do
        if kill -0 "${pids[i]}" 2>/dev/null; then
            still+=("$i")
        else
            statuses[i]=0
            wait "${pids[i]}" 2>/dev/null || statuses[i]=$?
            if ((statuses[i] < 0 || statuses[i] > 255)); then statuses[i]=-1; fi
            ended+=("$i")
        fi
    done
    running=("${still[@]}")
}

describe() { # exit status -> words
    if (($1 < 0)); then
        printf 'exited (its status is unknown)'
    elif (($1 > 128)); then
        printf 'was killed by SIG%s' "$(kill -l "$(($1 - 128))" 2>/dev/null || echo "$1")"
    else
        printf 'exited with status %s' "$1"
    fi
}

# Stops every node still running: SIGTERM to each PID, up to 10 s for them all to exit,
# then SIGKILL. Returns 1 when one did not stop cleanly: a clean stop is exit 0, death by
# the signal itself when it came before the node had set up its handling (SIGTERM, or the
# terminal's SIGINT), or an exit whose status bash lost.
stop_nodes() {
    local i clean=0 deadline=$((SECONDS + 10))
    stop_timer
    for i in "${running[@]}"; do kill -TERM "${pids[i]}" 2>/dev/null || true; done
    while ((${#running[@]} > 0)); do
        reap
        for i in "${ended[@]}"; do
            if ((statuses[i] > 0 && statuses[i] != 128 + 15 && statuses[i] != 128 + 2)); then
                say "node ${names[i]} $(describe "${statuses[i]}") while stopping"
                clean=1
            fi
        done
        ((${#running[@]} > 0)) || break
        if ((SECONDS >= deadline)); then
            for i in "${running[@]}"; do
                say "node ${names[i]} did not stop within 10 s of SIGTERM; killing it"
                kill -KILL "${pids[i]}" 2>/dev/null || true
                wait "${pids[i]}" 2>/dev/null || true
            done
            running=()
            clean=1
            break
        fi
        pause 0.02
    done
    return "$clean"
}

# shellcheck disable=SC2317 # the EXIT trap calls it
cleanup() {
    trap '' INT TERM HUP
    set +eu # whatever happens, finish
    stop_nodes
    stop_etcd
    if [[ -n $out ]]; then rm -rf -- "$out"; fi
}

# Stops etcd (started with --replicas) by its PID: SIGTERM, then SIGKILL after 5 s.
stop_etcd() {
    local deadline=$((SECONDS + 5))
    [[ -n $etcd_pid ]] || return 0
    kill -TERM "$etcd_pid" 2>/dev/null || true
    while kill -0 "$etcd_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
    kill -KILL "$etcd_pid" 2>/dev/null || true
    wait "$etcd_pid" 2>/dev/null || true
    etcd_pid=
}

# True when something listens on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# From here on a signal only sets `stopping`, and the EXIT trap cleans up, whatever
# happens: a signal is never lost, even in the middle of a command.
trap 'stopping=1' INT TERM HUP
trap cleanup EXIT

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
kv_server=${KV_SERVER:-$root/build/release/examples/kv_server}
port=${CLUSTER_PORT:-4041}
replicas=
etcd=${ETCD:-etcd}
node_options=()
while (($# > 0)); do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --port | --kv-server)
        (($# >= 2)) || usage_error "$1 needs a value"
        if [[ $1 == --port ]]; then port=$2; else kv_server=$2; fi
        shift 2
        ;;
    --replicas | --etcd)
        (($# >= 2)) || usage_error "$1 needs a value"
        if [[ $1 == --replicas ]]; then replicas=$2; else etcd=$2; fi
        shift 2
        ;;
    --port=*) port=${1#--port=} && shift ;;
    --kv-server=*) kv_server=${1#--kv-server=} && shift ;;
    --)
        shift
        node_options=("$@")
        break
        ;;
    *) usage_error "unknown argument '$1'" ;;
    esac
done
if ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65533)); then
    usage_error "bad port '$port': n1's port must be 1 to 65533"
fi
port=$((10#$port))
if [[ -n $replicas ]] && ! [[ $replicas =~ ^[1-3]$ ]]; then
    usage_error "bad --replicas '$replicas': 1 to 3"
fi
if [[ -n $replicas ]] && ! command -v "$etcd" >/dev/null; then
    say "no etcd program '$etcd' (Debian: apt install etcd-server; or --etcd PATH)"
    exit 1
fi
if [[ ! -x $kv_server ]]; then
    say "no kv_server program at $kv_server"
    say "build it with 'cmake --workflow --preset release', or point KV_SERVER at one"
    exit 1
fi

names=(n1 n2 n3)
ranges=(a-i j-r s-z)
routes=()
table=()
for i in 0 1 2; do
    entry="${ranges[i]}=${names[i]}@127.0.0.1:$((port + i))"
    if [[ -n $replicas ]]; then # the owner first, then the next two
        for j in 1 2; do
            k=$(((i + j) % 3))
            entry+=",${names[k]}@127.0.0.1:$((port + k))"
        done
    fi
    table+=("$entry")
    routes+=(--route "$entry")
done

out=$(mktemp -d "${TMPDIR:-/tmp}/otpkv-cluster.XXXXXX")

# With --replicas: etcd first, on the first two free ports from n1's port + 100.
suffix=
if [[ -n $replicas ]]; then
    client=$((port + 100))
    while listening "$client" || listening "$((client + 1))"; do client=$((client + 2)); done
    "$etcd" --name otpkv-cluster --data-dir "$out/etcd" \
        --listen-client-urls "http://127.0.0.1:$client" \
        --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$((client + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((client + 1))" \
        --initial-cluster "otpkv-cluster=http://127.0.0.1:$((client + 1))" \
        --heartbeat-interval 50 --election-timeout 500 --log-level warn >"$out/etcd.log" 2>&1 &
    etcd_pid=$!
    deadline=$((SECONDS + 10))
    until listening "$client"; do
        if ! kill -0 "$etcd_pid" 2>/dev/null || ((SECONDS >= deadline)); then
            say "etcd did not start on 127.0.0.1:$client; its log:"
            cat "$out/etcd.log" >&2
            exit 1
        fi
        pause 0.05
    done
    node_options=(--etcd "http://127.0.0.1:$client" --replicas "$replicas" "${node_options[@]}")
    suffix=" (replicas $replicas, etcd http://127.0.0.1:$client)"
fi

# True when every range answers through n1 (a GET of a bucket nobody made: NOT FOUND).
serving() {
    local r reply
    for r in a j s; do
        reply=$({
            exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET %s-ready k\r\n' "$r" >&3 &&
                IFS= read -r -t 2 reply <&3 && printf '%s' "$reply"
        } 2>/dev/null) || return 1
        [[ $reply == $'NOT FOUND\r' ]] || return 1
    done
}

for i in 0 1 2; do
    ((!stopping)) || break
    : >"$out/${names[i]}" # there before the node opens it, for the reads below
    "$kv_server" --node "${names[i]}" --port "$((port + i))" "${routes[@]}" \
        "${node_options[@]}" >"$out/${names[i]}" &
    pids[i]=$!
    running+=("$i")
done

# Wait for the three ready lines, looking every 50 ms, for at most 10 s; then for a signal
# or a node's exit, looking every 250 ms.
failed=0
ready=0
deadline=$((SECONDS + 10))
while ((!stopping)); do
    reap
    for i in "${ended[@]}"; do
        if ((ready)); then
            say "node ${names[i]} (pid ${pids[i]}) $(describe "${statuses[i]}");" \
                "stopping the cluster"
        else
            say "node ${names[i]} failed to start: kv_server $(describe "${statuses[i]}");" \
                "stopping the cluster"
        fi
        failed=1
    done
    ((!failed)) || break
    if ((ready)); then
        pause 0.25
        continue
    fi
    lines=()
    for i in 0 1 2; do
        # The ready line is the first a node prints; read stops short of a line half
        # written (no newline yet) and fails.
        line=
        IFS= read -r line <"$out/${names[i]}" || break
        [[ $line == "otpkv node ${names[i]} listening on "* ]] || break
        lines+=("$line")
    done
    if ((${#lines[@]} == 3)) && { [[ -z $replicas ]] || serving; }; then
        ready=1
        printf '%s\n' "${lines[@]}" "otpkv cluster ready: ${table[*]}$suffix"
    elif ((SECONDS >= deadline)); then
        if ((${#lines[@]} == 3)); then
            say "the replicated ranges did not answer within 10 s; stopping the cluster"
        else
            say "node ${names[${#lines[@]}]} did not get ready within 10 s; stopping the cluster"
        fi
        failed=1
        break
    else
        pause 0.05
    fi
done

if stop_nodes && ((!failed)); then
    stopped=()
    for i in "${!pids[@]}"; do stopped+=("${names[i]}"); done
    say "stopped ${stopped[*]:-before starting a node}"
    exit 0
fi
exit 1
