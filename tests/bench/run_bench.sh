#!/usr/bin/env bash
# Runs the chatd benchmark scenarios: starts a fresh chatd on loopback for every run, drives it
# with chat-load, stops it, and prints the per-step medians over the runs.
#
# usage: tests/bench/run_bench.sh SCENARIO [--runs R] [--bin DIR] [--out DIR]
#                                 [--step-seconds S] [--rates LIST] [-- extra chat-load options]
#   SCENARIO   fanout-1k | fanout-10k | idle-20k | all
#   --runs R   runs per scenario (default 3); the medians are over these runs
#   --bin DIR  where chatd and chat-load are (default <repo>/build/bin); CHATD and CHAT_LOAD
#              override each binary
#   --out DIR  keep every run's output and chatd log here (default a temporary folder)
# Nothing is built here: build first with cmake -S . -B build && cmake --build build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bindir="$root/build/bin"
runs=3
out=""
step_seconds=""
rates=""
scenario=""
extra=()

die() {
    echo "run_bench: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    --bin) bindir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --step-seconds) step_seconds=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$scenario" ] || die "one scenario only"; scenario=$1; shift ;;
    esac
done
[ -n "$scenario" ] || die "which scenario? fanout-1k, fanout-10k, idle-20k or all (see --help)"
chatd=${CHATD:-$bindir/chatd}
load=${CHAT_LOAD:-$bindir/chat-load}
[ -x "$chatd" ] || die "no chatd at $chatd (build first or set CHATD)"
[ -x "$load" ] || die "no chat-load at $load (build first or set CHAT_LOAD)"
if [ -z "$out" ]; then
    out=$(mktemp -d /tmp/chat-bench.XXXXXX)
fi
mkdir -p "$out"

# Both processes get the whole open-file hard limit: the node needs one descriptor per client
# just as the tool does, and each process has its own limit.
ulimit -n "$(ulimit -Hn)"
fd_limit=$(ulimit -n)

secret="bench-secret-$(date +%s)-$$"
node_pid=""
public=""
admin=""

stop_node() {
    if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
        kill -TERM "$node_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$node_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$node_pid" 2>/dev/null; then
            echo "run_bench: chatd $node_pid ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$node_pid" 2>/dev/null || true
        fi
        wait "$node_pid" 2>/dev/null || true
    fi
    node_pid=""
}
trap stop_node EXIT
trap 'exit 130' INT TERM

# Starts chatd with :0 ports and reads the real ones from its ready line.
# $1 = log file, $2 = write queue bytes, $3 = write queue messages.
start_node() {
    local log=$1
    CHAT_LISTEN=127.0.0.1:0 CHAT_ADMIN_LISTEN=127.0.0.1:0 CHAT_NODE_ID=bench \
        CHAT_JWT_SECRET="$secret" CHAT_LOG_LEVEL=warn \
        CHAT_RATE_LIMITS="free=5/10,plus=10/20,pro=20/40,executive=100000/100000" \
        CHAT_WRITE_QUEUE_BYTES="$2" CHAT_WRITE_QUEUE_MESSAGES="$3" \
        "$chatd" >"$log" 2>&1 &
    node_pid=$!
    local line=""
    for _ in $(seq 1 100); do
        line=$(grep -m1 '^chatd ready ' "$log" 2>/dev/null || true)
        [ -n "$line" ] && break
        kill -0 "$node_pid" 2>/dev/null || { cat "$log" >&2; die "chatd exited at start"; }
        sleep 0.1
    done
    [ -n "$line" ] || { cat "$log" >&2; die "chatd printed no ready line within 10 s"; }
    public=$(sed -n 's/.* public=\([^ ]*\).*/\1/p' <<<"$line")
    admin=$(sed -n 's/.* admin=\([^ ]*\).*/\1/p' <<<"$line")
}

# Prints the median of every numeric key=value field of the lines starting with $1 (for STEP
# lines: grouped by step number) over the given files. Non-numeric values ("-") are skipped.
medians() {
    local tag=$1
    shift
    local files=("$@")
    local steps
    steps=$(cat "${files[@]}" | awk -v t="$tag" '$1 == t { print (t == "STEP" ? $2 : 1) }' |
        sort -n -u)
    for s in $steps; do
        local keys
        keys=$(cat "${files[@]}" | awk -v t="$tag" -v s="$s" '
            $1 == t && (t != "STEP" || $2 == s) {
                for (i = 2; i <= NF; i++) if (index($i, "=") > 0) { split($i, kv, "="); print kv[1] }
            }' | awk '!seen[$0]++')
        local line="$tag"
        [ "$tag" = STEP ] && line="$line $s"
        for k in $keys; do
            local vals n med
            vals=$(cat "${files[@]}" | awk -v t="$tag" -v s="$s" -v k="$k" '
                $1 == t && (t != "STEP" || $2 == s) {
                    for (i = 2; i <= NF; i++) {
                        split($i, kv, "=")
                        if (kv[1] == k && kv[2] ~ /^-?[0-9.]+$/) print kv[2]
                    }
                }' | sort -g)
            n=$(printf '%s\n' "$vals" | grep -c . || true)
            if [ "$n" -eq 0 ]; then
                med="-"
            else
                med=$(printf '%s\n' "$vals" | awk -v n="$n" '
                    { v[NR] = $1 }
                    END { if (n % 2) print v[(n + 1) / 2]; else printf "%g\n", (v[n / 2] + v[n / 2 + 1]) / 2 }')
            fi
            line="$line $k=$med"
        done
        echo "$line"
    done
}

# The fan-out scenarios pass --batch-us 500: chat-load then reads each socket at most every
# 0.5 ms, which takes several pushes per recv and leaves more of the shared cores to the node.
# It adds at most 0.5 ms to latencies that are tens of milliseconds or more once a room is busy;
# pass "-- --batch-us 0" for exact low-load latencies.
run_scenario() {
    local name=$1
    local wq_bytes wq_msgs
    local -a args
    case "$name" in
    fanout-1k)
        # 1,000 subscribers on one room, 10 publishers. At 4,000 publications/s each subscriber
        # receives about 1 MB/s; 8 MiB of write queue rides out a few seconds of lag before the
        # node would drop a slow consumer with 3008.
        wq_bytes=8388608
        wq_msgs=65536
        args=(--subscribers 1000 --publishers 10 --rates "${rates:-100,250,500,1000,2000}"
            --step-seconds "${step_seconds:-10}" --drain-seconds 2
            --batch-us 500)
        ;;
    fanout-10k)
        # 10,000 subscribers on one room: every publication becomes 10,000 deliveries, so the
        # rates are lower. 2 MiB per subscriber bounds the node's worst case to 20 GiB less than
        # the machine's memory, yet holds more than 20 s of backlog at the top rate.
        wq_bytes=2097152
        wq_msgs=16384
        args=(--subscribers 10000 --publishers 10 --rates "${rates:-10,25,50,100,200}"
            --step-seconds "${step_seconds:-10}" --drain-seconds 3
            --batch-us 500)
        ;;
    idle-20k)
        # As many idle subscribers as the open-file limit leaves room for, in both processes:
        # about 1,000 descriptors stay free for the node's listeners, logs and the tool's own.
        local n=$((fd_limit - 1000))
        [ "$n" -gt 19000 ] && n=19000
        wq_bytes=1048576
        wq_msgs=16384
        args=(--idle --subscribers "$n" --hold-seconds 20 --sources 4)
        ;;
    *) die "unknown scenario $name" ;;
    esac

    echo "== $name: ${args[*]} ${extra[*]:-} (runs: $runs, output: $out)"
    echo "   chatd: $chatd, chat-load: $load, open-file limit: $fd_limit"
    local files=()
    for r in $(seq 1 "$runs"); do
        local log="$out/$name-run$r.chatd.log"
        local res="$out/$name-run$r.txt"
        start_node "$log" "$wq_bytes" "$wq_msgs"
        echo "-- run $r/$runs: chatd pid $node_pid public=$public admin=$admin"
        local rc=0
        "$load" --url "ws://$public/connection/websocket" --secret "$secret" \
            --channel chat:bench --node-pid "$node_pid" --admin "http://$admin" \
            "${args[@]}" ${extra[@]+"${extra[@]}"} >"$res" || rc=$?
        cat "$res"
        kill -0 "$node_pid" 2>/dev/null || echo "run_bench: chatd died during the run (see $log)"
        stop_node
        [ "$rc" -eq 0 ] || echo "run_bench: chat-load exited with $rc"
        files+=("$res")
    done
    echo "== $name: medians over $runs run(s)"
    medians CONNECT "${files[@]}"
    if [ "$name" = idle-20k ]; then
        medians IDLE "${files[@]}"
    else
        medians STEP "${files[@]}"
    fi
}

case "$scenario" in
all) for s in fanout-1k idle-20k fanout-10k; do run_scenario "$s"; done ;;
*) run_scenario "$scenario" ;;
esac
