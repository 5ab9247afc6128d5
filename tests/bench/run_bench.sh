#!/usr/bin/env bash
# Runs the chatd benchmark scenarios: starts a fresh chatd (or a fresh redis-server and chatd
# cluster) on loopback for every run, drives it with chat-load, stops it, and prints the
# per-step medians over the runs.
#
# usage: tests/bench/run_bench.sh SCENARIO[,SCENARIO...] [--runs R] [--bin DIR] [--out DIR]
#                                 [--step-seconds S] [--rates LIST] [-- extra chat-load options]
#   SCENARIO   fanout-1k | fanout-10k | idle-20k | all (these three)
#              cluster-2n | cluster-3n (1,000 subscribers over 2 or 3 nodes on one Redis)
#              cluster-compare (fanout-1k, cluster-2n, cluster-3n, then cluster/single ratios)
#              rooms-1k (10,000 subscribers in 1,000 rooms of 10, 1 and 5 publications/s per
#              room; "-- --subscribers 2000 --rooms 200" for a smaller run)
#              llm-2k (2,000 rooms of 10 members, one llm.ask stream each, against llm-mock;
#              with a chat fan-out probe before and during the streams)
#   --runs R   runs per scenario (default 3); the medians are over these runs
#   --bin DIR  where chatd and chat-load are (default <repo>/build/bin); CHATD, CHAT_LOAD,
#              LLM_LOAD, LLM_MOCK and REDIS_SERVER override each binary
#   --llm-rooms N  llm-2k: rooms (= concurrent streams) instead of 2,000
#   --llm-conns K  llm-2k: distinct member sockets instead of min(rooms x 10, 16,000)
#   --out DIR  keep every run's output and the logs here (default a temporary folder)
#   --tls      the nodes serve wss:// with a self-signed certificate made here (openssl CLI);
#              chat-load connects over TLS. "-- --protobuf" makes chat-load speak Protobuf.
#   --pin      the node(s) run on CPU 0 and chat-load on CPU 1 (taskset),
#              so that neither preempts the other on the shared cores (kernel work still
#              runs where the kernel puts it)
# Nothing is built here: build first with cmake -S . -B build && cmake --build build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=run_bench
# shellcheck source=tests/bench/bench_lib.sh
. "$here/bench_lib.sh"
root=$(cd "$here/../.." && pwd)
bindir="$root/build/bin"
runs=3
out=""
step_seconds=""
rates=""
scenario=""
extra=()
llm_rooms=2000
llm_conns=""
llm_seconds=${LLM_SECONDS:-12}
tls=0
pin=0

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
    --llm-rooms) llm_rooms=$2; shift 2 ;;
    --llm-conns) llm_conns=$2; shift 2 ;;
    --tls) tls=1; shift ;;
    --pin) pin=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$scenario" ] || die "one scenario only"; scenario=$1; shift ;;
    esac
done
[ -n "$scenario" ] || die "which scenario? fanout-1k, fanout-10k, idle-20k, all, cluster-2n, cluster-3n, cluster-compare, rooms-1k or llm-2k (see --help)"
# The scenario list, with all and cluster-compare expanded.
scenarios=()
IFS=, read -r -a _names <<<"$scenario"
for s in "${_names[@]}"; do
    case "$s" in
    all) scenarios+=(fanout-1k idle-20k fanout-10k) ;;
    cluster-compare) scenarios+=(fanout-1k cluster-2n cluster-3n) ;;
    fanout-1k | fanout-10k | idle-20k | cluster-2n | cluster-3n | rooms-1k | llm-2k) scenarios+=("$s") ;;
    *) die "unknown scenario $s" ;;
    esac
done
chatd=${CHATD:-$bindir/chatd}
load=${CHAT_LOAD:-$bindir/chat-load}
redis_server=${REDIS_SERVER:-$(command -v redis-server || true)}
llm_load=${LLM_LOAD:-$bindir/llm-load}
llm_mock=${LLM_MOCK:-$bindir/llm-mock}
[ -x "$chatd" ] || die "no chatd at $chatd (build first or set CHATD)"
[ -x "$load" ] || die "no chat-load at $load (build first or set CHAT_LOAD)"
for s in "${scenarios[@]}"; do
    if [ "$s" = llm-2k ]; then
        [ -x "$llm_load" ] || die "no llm-load at $llm_load (build first or set LLM_LOAD)"
        [ -x "$llm_mock" ] || die "no llm-mock at $llm_mock (build first or set LLM_MOCK)"
    fi
done
for s in "${scenarios[@]}"; do
    case "$s" in
    cluster-*)
        if [ -z "$redis_server" ] || [ ! -x "$redis_server" ]; then
            die "the cluster scenarios need redis-server (install it or set REDIS_SERVER)"
        fi
        ;;
    esac
done
if [ -z "$out" ]; then
    out=$(mktemp -d /tmp/chat-bench.XXXXXX)
fi
mkdir -p "$out"
# Every run of one invocation uses the same binaries even when the build folder is rebuilt
# meanwhile: they are copied into the output folder first.
mkdir -p "$out/bin"
cp "$chatd" "$out/bin/chatd"
cp "$load" "$out/bin/chat-load"
chatd_src=$chatd
load_src=$load
chatd=$out/bin/chatd
load=$out/bin/chat-load
for s in "${scenarios[@]}"; do
    if [ "$s" = llm-2k ]; then
        cp "$llm_load" "$out/bin/llm-load"
        cp "$llm_mock" "$out/bin/llm-mock"
        llm_load=$out/bin/llm-load
        llm_mock=$out/bin/llm-mock
        break
    fi
done

# Both processes get the whole open-file hard limit: the node needs one descriptor per client
# just as the tool does, and each process has its own limit.
ulimit -n "$(ulimit -Hn)"
fd_limit=$(ulimit -n)

secret="bench-secret-$(date +%s)-$$"
# The nodes of the current run (one, or one per cluster member), and its redis-server.
node_pids=()
publics=()
admins=()
redis_pid=""
redis_port=""
# Extra environment of the nodes (llm-2k), and the run's llm-mock and llm-load.
node_env=()
ws_scheme=ws
if [ "$tls" = 1 ]; then
    # One certificate for every run: the handshake's cost is part of the figures, the
    # certificate's provenance is not.
    mkdir -p "$out/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$out/tls/key.pem" -out "$out/tls/cert.pem" -days 2 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 2>/dev/null || die "openssl could not make a certificate"
    node_env=(CHAT_TLS_CERT="$out/tls/cert.pem" CHAT_TLS_KEY="$out/tls/key.pem")
    ws_scheme=wss
fi
mock_pid=""
llm_pid=""
node_pin=()
load_pin=()
if [ "$pin" = 1 ]; then
    command -v taskset >/dev/null || die "--pin needs taskset (util-linux)"
    node_pin=(taskset -c 0)
    load_pin=(taskset -c 1)
fi


# Nodes first, so they do not spend their last moments reconnecting to a Redis that is gone.
stop_all() {
    local p
    stop_pid "$llm_pid" llm-load
    llm_pid=""
    for p in ${node_pids[@]+"${node_pids[@]}"}; do
        stop_pid "$p" chatd
    done
    node_pids=()
    publics=()
    admins=()
    stop_pid "$mock_pid" llm-mock
    mock_pid=""
    stop_pid "$redis_pid" redis-server
    redis_pid=""
    redis_port=""
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Starts chatd with :0 ports and reads the real ones from its ready line; appends its PID and
# addresses to node_pids, publics and admins.
# $1 = log file, $2 = write queue bytes, $3 = write queue messages, $4 = node id,
# $5 = REDIS_URL (cluster mode; empty for a single node).
start_node() {
    local log=$1 pid
    # REDIS_URL is set only for cluster nodes: an inherited one would turn the single-node
    # scenarios into a one-node cluster.
    env -u REDIS_URL ${5:+REDIS_URL="$5"} ${node_env[@]+"${node_env[@]}"} \
        CHAT_LISTEN=127.0.0.1:0 CHAT_ADMIN_LISTEN=127.0.0.1:0 CHAT_NODE_ID="$4" \
        CHAT_JWT_SECRET="$secret" CHAT_LOG_LEVEL=warn \
        CHAT_RATE_LIMITS="free=5/10,plus=10/20,pro=20/40,executive=100000/100000" \
        CHAT_WRITE_QUEUE_BYTES="$2" CHAT_WRITE_QUEUE_MESSAGES="$3" \
        ${node_pin[@]+"${node_pin[@]}"} "$chatd" >"$log" 2>&1 &
    pid=$!
    node_pids+=("$pid")
    local line
    line=$(node_ready_line "$log" "$pid" 10)
    publics+=("$(sed -n 's/.* public=\([^ ]*\).*/\1/p' <<<"$line")")
    admins+=("$(sed -n 's/.* admin=\([^ ]*\).*/\1/p' <<<"$line")")
}



# Prints the median of every numeric key=value field of the lines starting with $1 (for STEP
# and URL lines: grouped by their number) over the given files. Non-numeric values ("-") are
# skipped.
medians() {
    local tag=$1
    shift
    local files=("$@")
    local steps
    local grouped=0
    case "$tag" in STEP | URL) grouped=1 ;; esac
    steps=$(cat "${files[@]}" | awk -v t="$tag" -v g="$grouped" '$1 == t { print (g ? $2 : 1) }' |
        sort -n -u)
    for s in $steps; do
        local keys
        keys=$(cat "${files[@]}" | awk -v t="$tag" -v s="$s" -v g="$grouped" '
            $1 == t && (!g || $2 == s) {
                for (i = 2; i <= NF; i++) if (index($i, "=") > 0) { split($i, kv, "="); print kv[1] }
            }' | awk '!seen[$0]++')
        local line="$tag"
        [ "$grouped" = 1 ] && line="$line $s"
        for k in $keys; do
            local vals n med
            vals=$(cat "${files[@]}" | awk -v t="$tag" -v s="$s" -v k="$k" -v g="$grouped" '
                $1 == t && (!g || $2 == s) {
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
                    END { if (n % 2) print v[(n + 1) / 2]; else printf "%.10g\n", (v[n / 2] + v[n / 2 + 1]) / 2 }')
            fi
            # A URL line's url differs between runs (ports): leave it out.
            [ "$tag" = URL ] && [ "$med" = - ] && continue
            line="$line $k=$med"
        done
        echo "$line"
    done
}

# The fan-out scenarios pass --batch-us 500: chat-load then reads each socket at most every
# 0.5 ms, which takes several pushes per recv and leaves more of the shared cores to the node.
# It adds at most 0.5 ms to latencies that are tens of milliseconds or more once a room is busy;
# pass "-- --batch-us 0" for exact low-load latencies.
# rooms-1k passes --batch-us 0 instead: its latencies are below a millisecond.
# They also pass --host-cpu: the machine's busy CPU per step and `other_cpu`, the part of it
# that was neither the node(s), Redis nor chat-load, i.e. whatever else was running.
run_scenario() {
    local name=$1
    local wq_bytes wq_msgs
    local nodes=0 # cluster members; 0 = one node without Redis
    local -a args
    case "$name" in
    cluster-2n | cluster-3n | fanout-1k)
        # cluster-Nn: fanout-1k's load with the 1,000 subscribers and 10 publishers spread
        # round-robin over N nodes, so (N - 1) / N of the deliveries cross nodes through Redis;
        # every node gets fanout-1k's write queue.
        if [ "$name" != fanout-1k ]; then
            nodes=${name#cluster-}
            nodes=${nodes%n}
        fi
        # 1,000 subscribers on one room, 10 publishers. At 4,000 publications/s each subscriber
        # receives about 1 MB/s; 8 MiB of write queue rides out a few seconds of lag before the
        # node would drop a slow consumer with 3008.
        wq_bytes=8388608
        wq_msgs=65536
        args=(--subscribers 1000 --publishers 10 --rates "${rates:-100,250,500,1000,2000}"
            --step-seconds "${step_seconds:-10}" --drain-seconds 2
            --batch-us 500 --host-cpu)
        ;;
    fanout-10k)
        # 10,000 subscribers on one room: every publication becomes 10,000 deliveries, so the
        # rates are lower. 2 MiB per subscriber bounds the node's worst case to 20 GiB less than
        # the machine's memory, yet holds more than 20 s of backlog at the top rate.
        wq_bytes=2097152
        wq_msgs=16384
        args=(--subscribers 10000 --publishers 10 --rates "${rates:-10,25,50,100,200}"
            --step-seconds "${step_seconds:-10}" --drain-seconds 3
            --batch-us 500 --host-cpu)
        ;;
    rooms-1k)
        # The usual chat case: many small rooms at a low rate. 10,000 subscribers in 1,000 rooms
        # of 10 (chat:bench-0 .. chat:bench-999, subscriber i in room i mod 1,000); room r
        # belongs to publisher r mod 10, which is subscribed to its 100 rooms and publishes into
        # them in turn, so every room gets rate / 1,000 publications/s (1 and 5). Each
        # publication reaches 10 subscribers, plus its publisher's own copy (not counted).
        # Latencies are sub-millisecond here, so no read batching: p99.9 and max show the
        # node's loop stalls. fanout-1k's write queue.
        wq_bytes=8388608
        wq_msgs=65536
        args=(--subscribers 10000 --publishers 10 --rooms 1000 --rates "${rates:-1000,5000}"
            --step-seconds "${step_seconds:-10}" --drain-seconds 2
            --batch-us 0 --host-cpu)
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
    echo "   chatd: $chatd_src (sha256 $(sha256sum "$chatd" | cut -c1-12)), chat-load: $load_src" \
        "(sha256 $(sha256sum "$load" | cut -c1-12)), open-file limit: $fd_limit"
    [ "$nodes" -gt 0 ] && echo "   $nodes chatd nodes on one $("$redis_server" --version | cut -d' ' -f1-3)"
    local files=()
    for r in $(seq 1 "$runs"); do
        local res="$out/$name-run$r.txt"
        local -a target=()
        if [ "$nodes" -eq 0 ]; then
            local log="$out/$name-run$r.chatd.log"
            start_node "$log" "$wq_bytes" "$wq_msgs" bench ""
            echo "-- run $r/$runs: chatd pid ${node_pids[0]} public=${publics[0]} admin=${admins[0]}"
        else
            start_redis "$out/$name-run$r.redis.log"
            local k
            for k in $(seq 1 "$nodes"); do
                start_node "$out/$name-run$r.chatd$k.log" "$wq_bytes" "$wq_msgs" "bench-$k" \
                    "redis://127.0.0.1:$redis_port"
            done
            for k in $(seq 1 "$nodes"); do
                wait_readyz "${admins[k - 1]}" 10 "$out/$name-run$r.chatd$k.log"
            done
            echo "-- run $r/$runs: redis-server pid $redis_pid port $redis_port"
            for k in $(seq 1 "$nodes"); do
                echo "   node bench-$k: chatd pid ${node_pids[k - 1]} public=${publics[k - 1]} admin=${admins[k - 1]}"
            done
            target+=(--redis-pid "$redis_pid")
        fi
        local i
        for i in "${!node_pids[@]}"; do
            target+=(--url "$ws_scheme://${publics[i]}/connection/websocket" --node-pid "${node_pids[i]}"
                --admin "http://${admins[i]}")
        done
        local rc=0
        ${load_pin[@]+"${load_pin[@]}"} "$load" "${target[@]}" --secret "$secret" --channel chat:bench \
            "${args[@]}" ${extra[@]+"${extra[@]}"} >"$res" || rc=$?
        cat "$res"
        for i in "${!node_pids[@]}"; do
            kill -0 "${node_pids[i]}" 2>/dev/null ||
                echo "run_bench: chatd ${node_pids[i]} died during the run (see its log in $out)"
        done
        if [ -n "$redis_pid" ] && ! kill -0 "$redis_pid" 2>/dev/null; then
            echo "run_bench: redis-server died during the run (see $out/$name-run$r.redis.log)"
        fi
        stop_all
        [ "$rc" -eq 0 ] || echo "run_bench: chat-load exited with $rc"
        files+=("$res")
    done
    echo "== $name: medians over $runs run(s)"
    {
        medians CONNECT "${files[@]}"
        [ "$nodes" -gt 0 ] && medians URL "${files[@]}"
        if [ "$name" = idle-20k ]; then
            medians IDLE "${files[@]}"
        else
            medians STEP "${files[@]}"
        fi
        [ "$nodes" -gt 0 ] && medians TOTALS "${files[@]}"
        true
    } | tee "$out/$name.medians"
}

# Prints the value of key $2 in the line $1 ("-" when absent).

# With fanout-1k and a cluster scenario in one invocation: per step with the same rate, the
# cluster's median deliveries/s over the single node's, and the latencies and CPU side by side.
compare() {
    local single="$out/fanout-1k.medians" name
    [ -f "$single" ] || return 0
    for name in cluster-2n cluster-3n; do
        local cl="$out/$name.medians"
        [ -f "$cl" ] || continue
        echo "== $name vs fanout-1k: ratios of the medians (cluster / single node)"
        local line
        while read -r line; do
            local step rate sline
            step=$(awk '{ print $2 }' <<<"$line")
            rate=$(field "$line" rate)
            sline=$(awk -v s="$step" '$1 == "STEP" && $2 == s' "$single")
            if [ -z "$sline" ] || [ "$(field "$sline" rate)" != "$rate" ]; then
                echo "RATIO step=$step rate=$rate (no fanout-1k step at this rate)"
                continue
            fi
            awk -v n="$name" -v s="$step" -v r="$rate" \
                -v cd="$(field "$line" deliv/s)" -v sd="$(field "$sline" deliv/s)" \
                -v c50="$(field "$line" p50_ms)" -v s50="$(field "$sline" p50_ms)" \
                -v c99="$(field "$line" p99_ms)" -v s99="$(field "$sline" p99_ms)" \
                -v cc="$(field "$line" node_cpu)" -v sc="$(field "$sline" node_cpu)" \
                -v rc="$(field "$line" redis_cpu)" -v cl="$(field "$line" lost)" \
                -v ct="$(field "$line" tool_cpu)" -v st="$(field "$sline" tool_cpu)" \
                -v co="$(field "$line" other_cpu)" -v so="$(field "$sline" other_cpu)" 'BEGIN {
                    printf "RATIO step=%s rate=%s deliv_ratio=%s deliv/s=%s single_deliv/s=%s", s, r, (sd > 0 ? sprintf("%.3f", cd / sd) : "-"), cd, sd
                    printf " p50_ms=%s single_p50_ms=%s p99_ms=%s single_p99_ms=%s", c50, s50, c99, s99
                    printf " nodes_cpu=%s single_node_cpu=%s redis_cpu=%s tool_cpu=%s single_tool_cpu=%s", cc, sc, rc, ct, st
                    printf " other_cpu=%s single_other_cpu=%s lost=%s\n", co, so, cl
                }'
        done < <(awk '$1 == "STEP"' "$cl")
    done
}

# Waits until file $1 has a line equal to $2, for at most $3 seconds, while PID $4 lives.
wait_line() {
    local i
    for i in $(seq 1 $(($3 * 10))); do
        grep -qx "$2" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# llm-2k: llm-mock (50 ms to the first token, 200 tokens at 100 tokens/s), one chatd with the
# mock as its Anthropic provider and no quota, queue or concurrency limit in the way, llm-load
# with $llm_rooms rooms of 10 members (one stream per room at a time, re-asked as soon as the
# answer is stored), and chat-load as a fan-out probe in another room, run once before the
# streams start (same node, same idle member sockets) and once while they run.
run_llm() {
    local name=llm-2k
    local conns=${llm_conns:-$((llm_rooms * 10 < 16000 ? llm_rooms * 10 : 16000))}
    local -a probe=(--subscribers 200 --publishers 10 --rates 50 --step-seconds "$llm_seconds"
        --drain-seconds 2 --batch-us 0 --host-cpu)
    echo "== $name: $llm_rooms rooms x 10 members on $conns sockets, one stream per room;" \
        "fan-out probe: ${probe[*]} (runs: $runs, output: $out)"
    echo "   chatd: $chatd_src (sha256 $(sha256sum "$chatd" | cut -c1-12)), llm-load sha256" \
        "$(sha256sum "$llm_load" | cut -c1-12), llm-mock sha256 $(sha256sum "$llm_mock" | cut -c1-12)," \
        "open-file limit: $fd_limit"
    local files=()
    for r in $(seq 1 "$runs"); do
        local pre="$out/$name-run$r"
        "$llm_mock" --listen 127.0.0.1:0 >"$pre.mock.log" 2>&1 &
        mock_pid=$!
        local mport=""
        for _ in $(seq 1 50); do
            mport=$(sed -n 's/^llm-mock listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$pre.mock.log")
            [ -n "$mport" ] && break
            sleep 0.1
        done
        [ -n "$mport" ] || die "llm-mock printed no ready line within 5 s (see $pre.mock.log)"
        curl -s -f -m 5 -X POST "http://127.0.0.1:$mport/control" \
            -d '{"key":"*","scenario":"ok","tokens":200,"tokens_per_s":100,"ttft_ms":50}' \
            >/dev/null || die "llm-mock /control refused the scenario"
        node_env=(
            "CHAT_LLM_PROVIDERS=[{\"name\":\"mock\",\"type\":\"anthropic\",\"base_url\":\"http://127.0.0.1:$mport\",\"model\":\"claude-bench\",\"keys\":[\"bench-key\"]}]"
            "CHAT_LLM_CONCURRENCY=$((llm_rooms * 2 > 4000 ? llm_rooms * 2 : 4000))"
            "CHAT_LLM_QUOTAS=free=0/0,plus=0/0,pro=0/0,executive=0/0"
            "CHAT_LLM_QUEUE=free=100000/600000,plus=100000/600000,pro=100000/600000,executive=100000/600000"
        )
        start_node "$pre.chatd.log" 1048576 16384 bench ""
        node_env=()
        echo "-- run $r/$runs: llm-mock pid $mock_pid port $mport, chatd pid ${node_pids[0]}" \
            "public=${publics[0]} admin=${admins[0]}"
        local url="ws://${publics[0]}/connection/websocket"
        "$llm_load" --url "$url" --secret "$secret" --mock "http://127.0.0.1:$mport" \
            --rooms "$llm_rooms" --room-size 10 --conns "$conns" --ramp-seconds 3 --seconds 600 \
            --direct-samples 100 --probe-ms 100 --node-pid "${node_pids[0]}" --mock-pid "$mock_pid" \
            ${extra[@]+"${extra[@]}"} >"$pre.llm.txt" 2>"$pre.llm.err" &
        llm_pid=$!
        wait_line "$pre.llm.err" READY 300 "$llm_pid" || {
            cat "$pre.llm.txt" "$pre.llm.err" >&2
            die "llm-load did not get ready (connect + direct baseline) within 300 s"
        }
        local rc=0
        "$load" --url "$url" --node-pid "${node_pids[0]}" --secret "$secret" --channel chat:bench \
            "${probe[@]}" >"$pre.base.txt" || rc=$?
        [ "$rc" -eq 0 ] || echo "run_bench: chat-load (no streams) exited with $rc"
        kill -USR1 "$llm_pid"
        wait_line "$pre.llm.err" STEADY 60 "$llm_pid" || die "llm-load did not start asking"
        rc=0
        "$load" --url "$url" --node-pid "${node_pids[0]}" --secret "$secret" --channel chat:bench \
            "${probe[@]}" >"$pre.during.txt" || rc=$?
        [ "$rc" -eq 0 ] || echo "run_bench: chat-load (with streams) exited with $rc"
        kill -USR2 "$llm_pid" 2>/dev/null || true
        rc=0
        wait "$llm_pid" || rc=$?
        llm_pid=""
        [ "$rc" -eq 0 ] || echo "run_bench: llm-load exited with $rc"
        # The most provider streams that were open at once, as llm-mock counted them.
        local smax
        smax=$(curl -s -m 5 "http://127.0.0.1:$mport/stats" |
            sed -n 's/.*"streams_open_max":\([0-9]*\).*/\1/p' || true)
        echo "MOCK streams_open_max=${smax:--}" >>"$pre.llm.txt"
        kill -0 "${node_pids[0]}" 2>/dev/null ||
            echo "run_bench: chatd ${node_pids[0]} died during the run (see $pre.chatd.log)"
        {
            cat "$pre.llm.txt"
            sed -n 's/^STEP 1 /FANOUT_BASE /p' "$pre.base.txt"
            sed -n 's/^STEP 1 /FANOUT_LLM /p' "$pre.during.txt"
            local b d
            b=$(field "$(grep '^STEP 1 ' "$pre.base.txt")" p99_ms)
            d=$(field "$(grep '^STEP 1 ' "$pre.during.txt")" p99_ms)
            awk -v b="$b" -v d="$d" 'BEGIN { if (b + 0 > 0 && d != "") printf "FANOUT_RATIO p99_ratio=%.2f\n", d / b }'
        } >"$pre.txt"
        cat "$pre.txt"
        stop_all
        files+=("$pre.txt")
    done
    echo "== $name: medians over $runs run(s)"
    {
        medians CONNECT "${files[@]}"
        medians DIRECT "${files[@]}"
        medians LLM "${files[@]}"
        medians MOCK "${files[@]}"
        medians FANOUT_BASE "${files[@]}"
        medians FANOUT_LLM "${files[@]}"
        medians FANOUT_RATIO "${files[@]}"
    } | tee "$out/$name.medians"
}

for s in "${scenarios[@]}"; do
    if [ "$s" = llm-2k ]; then
        run_llm
    else
        run_scenario "$s"
    fi
done
compare
