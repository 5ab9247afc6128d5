# What the benchmark scripts share (sourced by run_bench.sh and durable_bench.sh): stopping the
# processes they start by PID, starting a redis-server on a free loopback port, reading a
# node's ready line and key=value fields. The sourcing script sets bench_name (for messages)
# and redis_server, and keeps redis_pid and redis_port.

die() {
    echo "$bench_name: $*" >&2
    exit 1
}

# Waits up to $2 tenths of a second for PID $1 to be gone. Returns 1 if it is still there.
wait_gone() {
    local pid=$1 tenths=$2
    for _ in $(seq 1 "$tenths"); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$pid" 2>/dev/null
}

# Stops one process started here by its PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
    local pid=$1 what=$2
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" 100; then
            echo "$bench_name: $what $pid ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
}

# Starts a redis-server without persistence on a free loopback port: tries random ports until
# one binds (a port taken by anything else makes the server exit at once). $1 = log file, then
# ports not to try. Sets redis_pid and redis_port.
start_redis() {
    local log=$1 port pid
    shift
    for _ in $(seq 1 20); do
        port=$((20000 + RANDOM % 30000))
        case " $* " in *" $port "*) continue ;; esac
        "$redis_server" --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --daemonize no --logfile '' >"$log" 2>&1 &
        pid=$!
        redis_pid=$pid
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            if grep -q 'Ready to accept connections' "$log" 2>/dev/null; then
                redis_port=$port
                return 0
            fi
            sleep 0.1
        done
        stop_pid "$pid" redis-server
        redis_pid=""
    done
    cat "$log" >&2
    die "redis-server did not start on a free loopback port (20 tries)"
}

# Prints the "chatd ready" line of the node PID $2 logging to $1, waiting up to $3 seconds;
# dies (showing the log) when the node exits or stays silent.
node_ready_line() {
    local log=$1 pid=$2 seconds=$3 line=""
    for _ in $(seq 1 $((seconds * 10))); do
        line=$(grep -m1 '^chatd ready ' "$log" 2>/dev/null || true)
        [ -n "$line" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "chatd exited at start (log $log)"; }
        sleep 0.1
    done
    [ -n "$line" ] || { cat "$log" >&2; die "chatd printed no ready line within $seconds s"; }
    echo "$line"
}

# Waits up to $2 seconds for /readyz of the admin listener $1 to answer 200 (a cluster node
# prints its ready line before it has reached Redis); dies otherwise, showing log $3 if given.
wait_readyz() {
    local code=""
    for _ in $(seq 1 $(($2 * 10))); do
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://$1/readyz" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    [ -z "${3:-}" ] || cat "$3" >&2
    die "chatd at $1 not ready within $2 s (/readyz answered ${code:-nothing})"
}

# The value of key $2 in the key=value line $1.
field() {
    awk -v k="$2" '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (n > 0 && substr($i, 1, n - 1) == k) { print substr($i, n + 1); exit } } }' <<<"$1"
}
