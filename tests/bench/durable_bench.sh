#!/usr/bin/env bash
# Durable-history benchmark: starts a PostgreSQL of its own (initdb in a temporary folder, fsync
# on, loopback only), redis-servers without persistence and chatd nodes on loopback, drives them
# with chat-load and the server API, and prints four groups of figures, each run R times, then
# their medians:
#
#   1. PERSIST  3 nodes + Redis + Postgres, publications into 1,000 rooms (chat:persist-N) at
#               rising total rates: rows committed per second, publish acks per second, the
#               persist stream's length and age, the commit time histogram's p50/p99 bucket and
#               the publish -> store lag seen in Postgres.
#   2. FANOUT   run_bench.sh fanout-1k's load (1,000 subscribers, 10 publishers, one room, rates
#               100, 500, 1,000, 2,000/s, 8 s steps) on one node without Redis, with and without
#               DATABASE_URL, in the same run: p99 per rate and the on/off ratio.
#   3. DRAIN    3 nodes + Redis + Postgres, publishing at 2,000/s while Postgres is stopped, then
#               Postgres started: time until the persist stream is empty.
#   4. HISTORY  one node without Redis, 1,000,000 rows in 1,000 channels inserted with SQL:
#               latency of /api/history pages (limit 50, forward) from deep in the past.
#
# usage: tests/bench/durable_bench.sh [--runs R] [--quick] [--sections 1,2,3,4] [--out DIR]
#                                     [--bin DIR]
#   --runs R      runs of every section (default 3, about 4 minutes each on 2 cores); the
#                 MEDIANS section is over these runs
#   --quick       smoke test: 1 run, 5 s persist steps, 4 s fan-out steps, 20 s of publishing
#                 while Postgres is down (about 2 minutes)
#   --sections L  which of the four sections to run (default all)
#   --out DIR     keep the outputs and logs here (default a new /tmp/durable-bench.XXXXXX)
#   --bin DIR     where chatd and chat-load are (default <repo>/build/bin)
# Environment: PG_BIN (default /usr/lib/postgresql/15/bin), REDIS_SERVER, CHATD, CHAT_LOAD;
# DURABLE_RATE_LIMITS replaces the nodes' CHAT_RATE_LIMITS (default 100000/100000 for every plan,
# as run_bench.sh; "executive=0/1" turns chat-load's users' limit off, and with it the shared
# limit's Redis round trip per publish in cluster mode). DURABLE_PERSIST_RATES replaces section
# 1's rates (default 5000,10000,20000,30000), e.g. 12000,14000,16000 to find the highest rate
# sustained. DURABLE_PERSIST_STEP replaces their length in seconds (default 10; --quick makes it 5).
# Output: PERSIST, PERSIST_CHECK, FANOUT, DRAIN and HISTORY lines of key=value per run, then the
# same tags under "== MEDIANS" (median of each field over the runs), then what each field is.
# As root, the PostgreSQL programs run as the postgres user (runuser), as PostgreSQL requires.
# Every process started here is stopped by its PID when the script ends (also on Ctrl-C).
# Nothing is built here: build first with cmake -S . -B build && cmake --build build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_name=durable_bench
# shellcheck source=tests/bench/bench_lib.sh
. "$here/bench_lib.sh"
root=$(cd "$here/../.." && pwd)
bindir="$root/build/bin"
runs=3
quick=0
out=""
sections=1,2,3,4

die() {
    echo "durable_bench: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --sections) sections=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --bin) bindir=$2; shift 2 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"

# ---- durations and loads ----
persist_rates=${DURABLE_PERSIST_RATES:-5000,10000,20000,30000}
persist_step=${DURABLE_PERSIST_STEP:-10}
persist_rooms=1000
persist_pubs=12
fanout_rates="100,500,1000,2000"
fanout_step=8
drain_rate=2000
drain_publish=60
hist_channels=1000
hist_per_channel=1000
hist_calls=500
hist_limit=50
if [ "$quick" = 1 ]; then
    runs=1
    persist_step=5
    fanout_step=4
    drain_publish=20
fi
hist_rows=$((hist_channels * hist_per_channel))

chatd=${CHATD:-$bindir/chatd}
load=${CHAT_LOAD:-$bindir/chat-load}
redis_server=${REDIS_SERVER:-$(command -v redis-server || true)}
redis_cli=$(command -v redis-cli || true)
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$chatd" ] || die "no chatd at $chatd (build first or set CHATD)"
[ -x "$load" ] || die "no chat-load at $load (build first or set CHAT_LOAD)"
if [ -z "$redis_server" ] || [ ! -x "$redis_server" ]; then
    die "no redis-server (install it or set REDIS_SERVER)"
fi
[ -n "$redis_cli" ] || die "no redis-cli on the PATH"
for p in initdb pg_ctl psql postgres; do
    [ -x "$pg_bin/$p" ] || die "no $p in $pg_bin (set PG_BIN)"
done
command -v node >/dev/null || die "no node on the PATH"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || die "node 18 or later needed (have $(node --version))"
command -v curl >/dev/null || die "no curl on the PATH"

if [ -z "$out" ]; then
    out=$(mktemp -d /tmp/durable-bench.XXXXXX)
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
# The binaries are copied first, so a rebuild meanwhile does not change the runs.
mkdir -p "$out/bin"
cp "$chatd" "$out/bin/chatd"
cp "$load" "$out/bin/chat-load"
chatd=$out/bin/chatd
load=$out/bin/chat-load

ulimit -n "$(ulimit -Hn)"
secret="durable-bench-secret-$(date +%s)-$$"
api_key="durable-bench-api-key-$$"
rate_limits=${DURABLE_RATE_LIMITS:-free=100000/100000,plus=100000/100000,pro=100000/100000,executive=100000/100000}
is_root=0
[ "$(id -u)" = 0 ] && is_root=1

# ---- processes started here, stopped by PID on exit ----
node_pids=()
publics=()
admins=()
redis_pid=""
redis_port=""
pg_dir=""
pg_port=""
pg_pid=""
bg_pids=() # chat-load and helper processes running in the background


stop_nodes() {
    local p
    for p in ${node_pids[@]+"${node_pids[@]}"}; do
        stop_pid "$p" chatd
    done
    node_pids=()
    publics=()
    admins=()
}

stop_redis() {
    stop_pid "$redis_pid" redis-server
    redis_pid=""
    redis_port=""
}

as_pg() {
    if [ "$is_root" = 1 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Stops the postmaster: pg_ctl (which signals the PID in postmaster.pid), then the PID itself.
pg_stop() {
    local mode=${1:-fast}
    [ -n "$pg_pid" ] || return 0
    if kill -0 "$pg_pid" 2>/dev/null; then
        as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -w -t 60 -m "$mode" stop >/dev/null 2>&1 || true
    fi
    # pg_ctl returns once the PID file is gone; the postmaster exits a moment later.
    if ! wait_gone "$pg_pid" 100; then
        echo "durable_bench: postgres $pg_pid still up after pg_ctl stop; killing it" >&2
        kill -QUIT "$pg_pid" 2>/dev/null || true
        wait_gone "$pg_pid" 50 || kill -KILL "$pg_pid" 2>/dev/null || true
    fi
    pg_pid=""
}

cleanup() {
    local p
    for p in ${bg_pids[@]+"${bg_pids[@]}"}; do
        stop_pid "$p" "background job"
    done
    bg_pids=()
    stop_nodes
    stop_redis
    if [ -n "$pg_dir" ]; then
        pg_stop immediate
        cp "$pg_dir/log" "$out/postgres.log" 2>/dev/null || true
        rm -rf "$pg_dir"
        pg_dir=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in the background and waits for it: a signal to this script is then handled at
# once (the trap stops the command by its PID) instead of after the command ends.
run_wait() {
    "$@" &
    local pid=$! rc=0 p keep=()
    bg_pids+=("$pid")
    wait "$pid" || rc=$?
    for p in ${bg_pids[@]+"${bg_pids[@]}"}; do
        [ "$p" = "$pid" ] || keep+=("$p")
    done
    bg_pids=(${keep[@]+"${keep[@]}"})
    return "$rc"
}

# ---- the Node.js helper: metrics, Redis, the history client ----
helper=$out/durable-helper.mjs
cat >"$helper" <<'EOF'
// durable_bench.sh's helper: Prometheus scrapes, a minimal Redis client, the per-step persist
// monitor, the drain watch and the history client. Prints key=value fields.
import { execFile } from 'node:child_process';
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';

const run = promisify(execFile);
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

function opts(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) o[argv[i].slice(2)] = argv[++i];
  }
  return o;
}

function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const lm of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2];
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: Number(m[3]) });
  }
  return out;
}

async function scrapeOne(admin) {
  const r = await fetch(`http://${admin}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (!r.ok) throw new Error(`${admin}/metrics answered ${r.status}`);
  return parseMetrics(await r.text());
}

// Counters summed over the nodes, gauges of the shared stream as their maximum, histogram
// buckets summed per bound.
async function snapshot(admins) {
  const t = Date.now();
  const all = await Promise.all(admins.map(scrapeOne));
  const s = { t, rows: 0, acked: 0, consumed: 0, batches: 0, backlog: 0, streamLen: 0, streamAge: 0, answers: 0, reads: 0, pubs: 0, limited: 0, commit: new Map(), batchRows: new Map() };
  for (const m of all) {
    const sum = (n) => (m.get(n) || []).reduce((a, x) => a + (Number.isFinite(x.value) ? x.value : 0), 0);
    s.rows += sum('chat_store_rows_total');
    s.acked += sum('chat_persist_acked_total');
    s.consumed += sum('chat_persist_consumed_total');
    s.batches += sum('chat_store_batches_total');
    s.backlog += sum('chat_store_backlog');
    s.answers += sum('chat_store_history_answers_total');
    s.reads += sum('chat_store_history_reads_total');
    s.pubs += sum('chat_broker_publishes_total');
    s.limited += sum('chat_rate_limited_total');
    s.streamLen = Math.max(s.streamLen, sum('chat_persist_stream_length'));
    s.streamAge = Math.max(s.streamAge, sum('chat_persist_stream_age_seconds'));
    for (const [name, into] of [['chat_store_commit_seconds_bucket', s.commit], ['chat_store_batch_rows_bucket', s.batchRows]]) {
      for (const x of m.get(name) || []) into.set(x.labels.le, (into.get(x.labels.le) || 0) + x.value);
    }
  }
  return s;
}

const leNum = (le) => (le === '+Inf' ? Infinity : Number(le));

// The upper bound of the bucket holding quantile q of the observations between two snapshots.
function bucketQuantile(b0, b1, q) {
  const les = [...b1.keys()].sort((a, b) => leNum(a) - leNum(b));
  if (!les.length) return '-';
  const d = les.map((le) => [le, (b1.get(le) || 0) - (b0.get(le) || 0)]);
  const total = d[d.length - 1][1];
  if (total <= 0) return '-';
  for (const [le, c] of d) if (c >= q * total) return le === '+Inf' ? 'inf' : le;
  return 'inf';
}

class Redis {
  constructor(port) {
    this.buf = Buffer.alloc(0);
    this.q = [];
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.drain(); });
    this.sock.on('error', (e) => { this.err = e; for (const w of this.q) w.reject(e); this.q = []; });
  }
  cmd(...a) {
    return new Promise((resolve, reject) => {
      if (this.err) { reject(this.err); return; }
      this.q.push({ resolve, reject });
      this.sock.write(`*${a.length}\r\n${a.map((x) => { const s = String(x); return `$${Buffer.byteLength(s)}\r\n${s}\r\n`; }).join('')}`);
    });
  }
  drain() {
    while (this.q.length) {
      const r = respParse(this.buf, 0);
      if (!r) return;
      this.buf = this.buf.subarray(r.end);
      const w = this.q.shift();
      if (r.value instanceof Error) w.reject(r.value); else w.resolve(r.value);
    }
  }
  close() { this.sock.destroy(); }
}

function respParse(buf, i) {
  if (i >= buf.length) return null;
  const nl = buf.indexOf('\r\n', i);
  if (nl < 0) return null;
  const type = String.fromCharCode(buf[i]);
  const line = buf.toString('utf8', i + 1, nl);
  const next = nl + 2;
  switch (type) {
    case '+': return { value: line, end: next };
    case '-': return { value: new Error(line), end: next };
    case ':': return { value: Number(line), end: next };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, end: next };
      if (buf.length < next + n + 2) return null;
      return { value: buf.toString('utf8', next, next + n), end: next + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, end: next };
      const arr = [];
      let p = next;
      for (let k = 0; k < n; k++) {
        const r = respParse(buf, p);
        if (!r) return null;
        arr.push(r.value);
        p = r.end;
      }
      return { value: arr, end: p };
    }
    default: throw new Error(`bad Redis reply byte ${type}`);
  }
}

// Length of the persist stream and the age of its oldest entry (its ID is the Redis time of
// the publish, in ms): how long the oldest publication not committed yet has waited.
async function streamState(redis) {
  const [len, first] = await Promise.all([redis.cmd('XLEN', 'chat.persist'), redis.cmd('XRANGE', 'chat.persist', '-', '+', 'COUNT', '1')]);
  const age = first && first.length ? Math.max(0, Date.now() - Number(String(first[0][0]).split('-')[0])) : 0;
  return { len, age };
}

async function psql(o, sql) {
  const { stdout } = await run(o.psql, ['-h', '127.0.0.1', '-p', o['pg-port'], '-U', 'postgres', '-d', o.db, '-At', '-F', ' ', '-v', 'ON_ERROR_STOP=1', '-c', sql], { timeout: 30_000 });
  return stdout.trim();
}

// CPU ticks (utime + stime) of the postmaster and its children (the backends, which live as
// long as the nodes' pool connections).
function pgTicks(pgPid) {
  let ticks = 0;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    let st;
    try { st = readFileSync(`/proc/${d}/stat`, 'utf8'); } catch { continue; }
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    if (Number(d) === pgPid || Number(f[1]) === pgPid) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks;
}

const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');
const f3 = (x) => (Number.isFinite(x) ? x.toFixed(3) : '-');

// One step's window: from the step's start (chat-load's previous line) for step-seconds.
async function measureStep(o, admins, redis, k) {
  const S = Number(o['step-seconds']) * 1000;
  const pgPid = Number(o['pg-pid'] || 0);
  const ticks0 = pgPid ? pgTicks(pgPid) : 0;
  const s0 = await snapshot(admins);
  let lenMax = 0;
  let ageMax = 0;
  let lockMax = -1;
  let sampling = true;
  // Backends of the nodes waiting for a lock (once a second).
  const lockSampler = (async () => {
    while (sampling) {
      await sleep(1000);
      if (!sampling) break;
      try {
        lockMax = Math.max(lockMax, Number(await psql(o, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")));
      } catch { /* a missed sample */ }
    }
  })();
  const sampler = (async () => {
    while (sampling) {
      try {
        const st = await streamState(redis);
        lenMax = Math.max(lenMax, st.len);
        ageMax = Math.max(ageMax, st.age);
      } catch { /* a missed sample */ }
      await sleep(250);
    }
  })();
  await sleep(s0.t + S - Date.now());
  sampling = false;
  const [s1, end] = await Promise.all([snapshot(admins), streamState(redis)]);
  const ticks1 = pgPid ? pgTicks(pgPid) : 0;
  await sampler;
  await lockSampler;
  lenMax = Math.max(lenMax, end.len);
  ageMax = Math.max(ageMax, end.age);
  const secs = (s1.t - s0.t) / 1000;
  const text = [
    `rows/s=${f1((s1.rows - s0.rows) / secs)}`,
    `persist_acked/s=${f1((s1.acked - s0.acked) / secs)}`,
    `stream_len_end=${end.len}`,
    `stream_len_max=${lenMax}`,
    `stream_age_end_s=${f3(end.age / 1000)}`,
    `stream_age_max_s=${f3(ageMax / 1000)}`,
    `commit_p50_le_s=${bucketQuantile(s0.commit, s1.commit, 0.5)}`,
    `commit_p99_le_s=${bucketQuantile(s0.commit, s1.commit, 0.99)}`,
    `batch_rows_p50_le=${bucketQuantile(s0.batchRows, s1.batchRows, 0.5)}`,
    `batches/s=${f1((s1.batches - s0.batches) / secs)}`,
    `rows_per_batch=${s1.batches > s0.batches ? f1((s1.rows - s0.rows) / (s1.batches - s0.batches)) : '-'}`,
    `pg_cpu=${pgPid ? f1(((ticks1 - ticks0) / 100 / secs) * 100) : '-'}`,
    `pg_lock_waiters_max=${lockMax < 0 ? '-' : lockMax}`,
    `rate_limited/s=${f1((s1.limited - s0.limited) / secs)}`,
    `window_s=${secs.toFixed(2)}`,
  ].join(' ');
  return { text, t0: s0.t, t1: s1.t };
}

// Publish -> commit lag of every row published in a step's window: the row's transaction's
// commit time (track_commit_timestamp) minus its created_at (the Redis time of its publish).
// Asked once every row is in (the stream empty), so rows that waited long count too.
async function stepLag(o, w) {
  try {
    const r = await psql(o, `SELECT count(*), coalesce(round(percentile_disc(0.5) WITHIN GROUP (ORDER BY ms)), -1), coalesce(round(percentile_disc(0.99) WITHIN GROUP (ORDER BY ms)), -1), coalesce(round(max(ms)), -1) FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - created_at) * 1000 AS ms FROM chat_messages WHERE created_at >= to_timestamp(${w.t0 / 1000}) AND created_at < to_timestamp(${w.t1 / 1000})) t`);
    const [n, p50, p99, mx] = r.split(' ');
    return Number(n) > 0 ? `pg_lag_rows=${n} pg_lag_p50_ms=${p50} pg_lag_p99_ms=${p99} pg_lag_max_ms=${mx}` : `pg_lag_rows=0 pg_lag_p50_ms=- pg_lag_p99_ms=- pg_lag_max_ms=-`;
  } catch (e) {
    process.stderr.write(`persist-monitor: lag query failed: ${e.message}\n`);
    return 'pg_lag_rows=- pg_lag_p50_ms=- pg_lag_p99_ms=- pg_lag_max_ms=-';
  }
}

function field(line, key) {
  for (const tok of line.split(/\s+/)) {
    const i = tok.indexOf('=');
    if (i > 0 && tok.slice(0, i) === key) return tok.slice(i + 1);
  }
  return '-';
}

// Follows chat-load's output file: a step starts when the line before it (CONNECT, then the
// previous STEP) appears; prints one PERSIST line per step once both the window's figures and
// chat-load's STEP line are there.
async function persistMonitor(o) {
  const admins = o.admins.split(',');
  const steps = Number(o.steps);
  const pid = Number(o['load-pid']);
  const redis = new Redis(Number(o['redis-port']));
  const alive = () => { try { process.kill(pid, 0); return true; } catch { return false; } };
  const windows = new Map();
  const loadLines = new Map();
  const printed = new Set();
  let pos = 0;
  let partial = '';
  const fd = openSync(o['load-out'], 'r');
  const start = (k) => {
    if (k <= steps && !windows.has(k)) {
      windows.set(k, measureStep(o, admins, redis, k).catch((e) => ({ text: `window_error=${JSON.stringify(e.message)}` })));
    }
  };
  // Every step's line waits for the last step: the lag query reads every row of a window, and
  // running it while the next step publishes would load the machine being measured.
  const flush = async (final) => {
    if (!final && (windows.size < steps || loadLines.size < steps)) return;
    // Every publication in (at most 60 s), so the lag counts the rows that waited longest.
    const until = Date.now() + 60_000;
    while (Date.now() < until) {
      try {
        if ((await redis.cmd('XLEN', 'chat.persist')) === 0) break;
      } catch { break; }
      await sleep(100);
    }
    for (let k = 1; k <= steps; k++) {
      if (printed.has(k) || !windows.has(k)) continue;
      const w = await windows.get(k);
      const lag = w.t0 ? await stepLag(o, w) : '';
      const l = loadLines.get(k) || '';
      const keys = ['sent/s', 'ok/s', 'pub_err', 'p99_ms', 'node_cpu', 'redis_cpu', 'host_cpu', 'other_cpu'];
      const fromLoad = keys.map((key) => `${key === 'ok/s' ? 'acks/s' : key === 'p99_ms' ? 'deliv_p99_ms' : key}=${field(l, key)}`).join(' ');
      console.log(`PERSIST step=${k} rate=${l ? field(l, 'rate') : '-'} ${fromLoad} ${w.text} ${lag}`);
      printed.add(k);
    }
  };
  for (;;) {
    const size = fstatSync(fd).size;
    let got = false;
    if (size > pos) {
      const b = Buffer.alloc(size - pos);
      readSync(fd, b, 0, b.length, pos);
      pos = size;
      got = true;
      const text = partial + b.toString('utf8');
      const lines = text.split('\n');
      partial = lines.pop();
      for (const line of lines) {
        if (line.startsWith('CONNECT ')) start(1);
        const m = /^STEP (\d+) /.exec(line);
        if (m) {
          const k = Number(m[1]);
          loadLines.set(k, line);
          start(k + 1);
        }
      }
    }
    await flush(false);
    if (printed.size >= steps) break;
    if (!got && !alive()) {
      await flush(true);
      break;
    }
    await sleep(20);
  }
  closeSync(fd);
  redis.close();
}

// After Postgres is started again: time until the persist stream is empty, from --t0 (ms).
async function drainWatch(o) {
  const admins = o.admins.split(',');
  const redis = new Redis(Number(o['redis-port']));
  const t0 = Number(o.t0);
  const rows0 = Number(o.rows0);
  const timeout = Number(o.timeout || 600) * 1000;
  let first = null;
  let done = null;
  let len = -1;
  while (Date.now() - t0 < timeout) {
    const [s, st] = await Promise.all([snapshot(admins).catch(() => null), redis.cmd('XLEN', 'chat.persist')]);
    len = st;
    if (first === null && s && s.rows > rows0) first = Date.now();
    if (len === 0) {
      done = Date.now();
      break;
    }
    await sleep(100);
  }
  redis.close();
  const fin = await snapshot(admins);
  console.log(`first_commit_s=${first === null ? '-' : ((first - t0) / 1000).toFixed(2)} seconds=${done === null ? '-' : ((done - t0) / 1000).toFixed(2)} left=${len} committed=${fin.rows - rows0}`);
}

async function sumMetric(o) {
  const s = await snapshot(o.admins.split(','));
  console.log(s[o.key]);
}

// Sequential /api/history calls, limit L, forward, from random positions deep in the past.
async function history(o) {
  const n = Number(o.n);
  const warm = Number(o.warmup || 20);
  const chans = Number(o.channels);
  const top = Number(o.top);
  const limit = Number(o.limit);
  const deep = Math.max(1, top - 200 - limit); // never the newest 200 (the chat window's size)
  let seed = Number(o.seed || 1) >>> 0;
  const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 4294967296; };
  const times = [];
  let errors = 0;
  let bad = 0;
  let lastErr = '';
  for (let i = 0; i < warm + n; i++) {
    const channel = `${o.prefix}${Math.floor(rnd() * chans)}`;
    const since = Math.floor(rnd() * deep);
    const t = performance.now();
    let j;
    try {
      const r = await fetch(`http://${o.admin}/api/history`, {
        method: 'POST',
        headers: { authorization: `apikey ${o.key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ channel, limit, since: { offset: since, epoch: o.epoch } }),
        signal: AbortSignal.timeout(10_000),
      });
      j = await r.json();
    } catch (e) {
      errors++;
      lastErr = e.message;
      continue;
    }
    const dt = performance.now() - t;
    if (j.error) {
      errors++;
      lastErr = JSON.stringify(j.error);
      continue;
    }
    const p = j.result.publications;
    if (p.length !== limit || p[0].offset !== since + 1 || p[p.length - 1].offset !== since + limit) bad++;
    if (i >= warm) times.push(dt);
  }
  times.sort((a, b) => a - b);
  const q = (x) => (times.length ? times[Math.min(times.length - 1, Math.ceil(x * times.length) - 1)].toFixed(3) : '-');
  const mean = times.length ? (times.reduce((a, b) => a + b, 0) / times.length).toFixed(3) : '-';
  console.log(`calls=${times.length} p50_ms=${q(0.5)} p99_ms=${q(0.99)} max_ms=${times.length ? times.at(-1).toFixed(3) : '-'} mean_ms=${mean} errors=${errors} bad_pages=${bad}`);
  if (lastErr) process.stderr.write(`history: last error ${lastErr}\n`);
}

const [cmd, ...rest] = process.argv.slice(2);
const o = opts(rest);
const cmds = { 'persist-monitor': persistMonitor, drain: drainWatch, 'sum-metric': sumMetric, history };
if (!cmds[cmd]) {
  console.error(`unknown command ${cmd}`);
  process.exit(2);
}
cmds[cmd](o).catch((e) => {
  console.error(`${cmd}: ${e.stack || e.message}`);
  process.exit(1);
});
EOF

# ---- PostgreSQL ----
free_port() {
    local p
    for _ in $(seq 1 20); do
        p=$(node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
        case "$p" in 15433 | 16379) continue ;; esac
        echo "$p"
        return 0
    done
    die "no free loopback port"
}

# $1 = keep: the port must stay (the nodes know it), no retry on another port.
pg_start() {
    local i
    for i in 1 2 3 4 5; do
        if as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -w -t 60 -l "$pg_dir/log" \
            -o "-k $pg_dir -c listen_addresses=127.0.0.1 -p $pg_port -c track_commit_timestamp=on" \
            start >/dev/null 2>&1; then
            pg_pid=$(head -1 "$pg_dir/data/postmaster.pid")
            return 0
        fi
        [ "${1:-}" = keep ] && break
        # The port may have been taken meanwhile: another one.
        if [ -f "$pg_dir/data/postmaster.pid" ]; then
            pg_pid=$(head -1 "$pg_dir/data/postmaster.pid")
            pg_stop immediate
        fi
        pg_port=$(free_port)
    done
    tail -20 "$pg_dir/log" >&2 || true
    die "PostgreSQL did not start (see above)"
}

psql_db() {
    PGCONNECT_TIMEOUT=10 PGOPTIONS="-c client_min_messages=warning" "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d "$1" -At -q \
        -v ON_ERROR_STOP=1 -c "$2"
}

db_url() {
    echo "postgresql://postgres@127.0.0.1:$pg_port/$1"
}

make_db() {
    psql_db postgres "DROP DATABASE IF EXISTS $1" >/dev/null
    psql_db postgres "CREATE DATABASE $1" >/dev/null
}

drop_db() {
    psql_db postgres "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null || true
}

setup_pg() {
    pg_dir=$(mktemp -d /tmp/durable-bench-pg.XXXXXX)
    if [ "$is_root" = 1 ]; then
        chown postgres:postgres "$pg_dir"
    fi
    # --no-sync only skips initdb's own final sync of the new folder; the server runs with its
    # defaults (fsync on, synchronous_commit on).
    as_pg "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres --no-sync >"$out/initdb.log" 2>&1 ||
        { cat "$out/initdb.log" >&2; die "initdb failed"; }
    pg_port=$(free_port)
    pg_start
    local fs sc sb
    fs=$(psql_db postgres "SHOW fsync")
    sc=$(psql_db postgres "SHOW synchronous_commit")
    sb=$(psql_db postgres "SHOW shared_buffers")
    [ "$fs" = on ] || die "fsync is $fs"
    echo "   postgres: $("$pg_bin/postgres" --version) pid $pg_pid port $pg_port data $pg_dir/data" \
        "fsync=$fs synchronous_commit=$sc shared_buffers=$sb"
}

# ---- Redis and chatd ----

# Extra environment of the next nodes (DATABASE_URL, REDIS_URL, ...).
node_env=()

# $1 = log file, $2 = node id. Appends to node_pids, publics, admins.
start_node() {
    local log=$1 pid
    env -u REDIS_URL -u DATABASE_URL -u DATABASE_READ_URL ${node_env[@]+"${node_env[@]}"} \
        CHAT_LISTEN=127.0.0.1:0 CHAT_ADMIN_LISTEN=127.0.0.1:0 CHAT_NODE_ID="$2" \
        CHAT_JWT_SECRET="$secret" CHAT_API_KEY="$api_key" CHAT_LOG_LEVEL=warn \
        CHAT_RATE_LIMITS="$rate_limits" \
        CHAT_WRITE_QUEUE_BYTES=8388608 CHAT_WRITE_QUEUE_MESSAGES=65536 \
        "$chatd" >"$log" 2>&1 &
    pid=$!
    node_pids+=("$pid")
    local line
    line=$(node_ready_line "$log" "$pid" 60) # migrations run before the ready line
    publics+=("$(sed -n 's/.* public=\([^ ]*\).*/\1/p' <<<"$line")")
    admins+=("$(sed -n 's/.* admin=\([^ ]*\).*/\1/p' <<<"$line")")
}

wait_ready_all() {
    local a
    for a in "${admins[@]}"; do
        wait_readyz "$a" 30
    done
}

# Starts redis and 3 nodes on database $1; logs prefixed $2.
start_cluster() {
    local db=$1 pre=$2 k
    start_redis "$pre.redis.log" "$pg_port"
    node_env=("REDIS_URL=redis://127.0.0.1:$redis_port" "DATABASE_URL=$(db_url "$db")" ${3:+"$3"})
    for k in 1 2 3; do
        start_node "$pre.chatd$k.log" "bench-$k"
    done
    node_env=()
    wait_ready_all
    echo "   redis-server pid $redis_pid port $redis_port; chatd pids ${node_pids[*]}; admins ${admins[*]}"
}

admins_csv() {
    local IFS=,
    echo "${admins[*]}"
}

# chat-load's --url/--node-pid/--admin for every node.
target_args() {
    target=()
    local i
    for i in "${!node_pids[@]}"; do
        target+=(--url "ws://${publics[i]}/connection/websocket" --node-pid "${node_pids[i]}"
            --admin "http://${admins[i]}")
    done
}


# Medians of every numeric key=value of the lines tagged $1, grouped by the value of key $2
# ("" = one group), over the files given.
medians() {
    local tag=$1 gk=$2
    shift 2
    local f files=()
    for f in "$@"; do
        [ -f "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || return 0
    awk -v t="$tag" -v gk="$gk" '
        $1 == t {
            g = ""
            for (i = 2; i <= NF; i++) { n = index($i, "="); if (n > 0 && substr($i, 1, n - 1) == gk) g = substr($i, n + 1) }
            if (!(g in gseen)) { gseen[g] = 1; gorder[++ng] = g }
            for (i = 2; i <= NF; i++) {
                n = index($i, "=")
                if (!n) continue
                k = substr($i, 1, n - 1); v = substr($i, n + 1)
                if (!((g, k) in kseen)) { kseen[g, k] = 1; korder[g, ++nk[g]] = k }
                if (v ~ /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/) { c = ++cnt[g, k]; val[g, k, c] = v + 0 }
            }
        }
        END {
            for (a = 1; a <= ng; a++) {
                g = gorder[a]
                line = t
                if (gk != "") line = line " " gk "=" g
                for (b = 1; b <= nk[g]; b++) {
                    k = korder[g, b]
                    if (k == gk) continue
                    n = cnt[g, k]
                    if (!n) { med = "-" } else {
                        for (x = 1; x <= n; x++) arr[x] = val[g, k, x]
                        for (x = 2; x <= n; x++) { y = arr[x]; z = x - 1; while (z > 0 && arr[z] > y) { arr[z + 1] = arr[z]; z-- } arr[z + 1] = y }
                        med = (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
                        med = sprintf("%.10g", med)
                    }
                    line = line " " k "=" med
                }
                print line
            }
        }' "${files[@]}"
}

# ---- 1. persisted messages/s ----
section_persist() {
    local r=$1
    local pre="$out/persist-run$r" db="persist_r$r"
    echo "-- 1. persist, run $r/$runs: 3 nodes + Redis + Postgres, $persist_rooms rooms, rates $persist_rates, ${persist_step} s steps"
    make_db "$db"
    start_cluster "$db" "$pre"
    local -a target
    target_args
    local nsteps
    nsteps=$(awk -F, '{ print NF }' <<<"$persist_rates")
    "$load" "${target[@]}" --redis-pid "$redis_pid" --secret "$secret" --channel chat:persist \
        --rooms "$persist_rooms" --subscribers "$persist_rooms" --publishers "$persist_pubs" \
        --rates "$persist_rates" --step-seconds "$persist_step" --drain-seconds 2 --batch-us 500 \
        --host-cpu >"$pre.load.txt" 2>"$pre.load.err" &
    local load_pid=$!
    bg_pids+=("$load_pid")
    local mrc=0
    run_wait node "$helper" persist-monitor --load-out "$pre.load.txt" --load-pid "$load_pid" \
        --steps "$nsteps" --step-seconds "$persist_step" --admins "$(admins_csv)" \
        --redis-port "$redis_port" --psql "$pg_bin/psql" --pg-port "$pg_port" --db "$db" \
        --pg-pid "$pg_pid" \
        >"$pre.txt" 2>"$pre.monitor.err" || mrc=$?
    local rc=0
    wait "$load_pid" || rc=$?
    bg_pids=()
    [ "$rc" -eq 0 ] || { echo "durable_bench: chat-load exited with $rc"; cat "$pre.load.err"; }
    [ "$mrc" -eq 0 ] || { echo "durable_bench: persist monitor exited with $mrc"; cat "$pre.monitor.err"; }
    grep -E '^(CONNECT|URL|STEP|TOTALS|CLOSES|ERRORS|DISCONNECTS)' "$pre.load.txt" | sed 's/^/   load: /' || true
    cat "$pre.txt"
    # Everything acknowledged ends up in Postgres once the stream is empty (at most 60 s).
    local t0 len=-1 stored accepted
    t0=$(date +%s)
    while [ $(($(date +%s) - t0)) -lt 60 ]; do
        len=$("$redis_cli" -p "$redis_port" XLEN chat.persist)
        [ "$len" = 0 ] && break
        sleep 0.2
    done
    stored=$(psql_db "$db" "SELECT count(*) FROM chat_messages")
    accepted=$(node "$helper" sum-metric --admins "$(admins_csv)" --key pubs)
    echo "PERSIST_CHECK accepted_publishes=$accepted stored_rows=$stored missing=$((accepted - stored)) stream_left=$len drain_after_s=$(($(date +%s) - t0))" | tee -a "$pre.txt"
    local i
    for i in "${!node_pids[@]}"; do
        kill -0 "${node_pids[i]}" 2>/dev/null || echo "durable_bench: chatd ${node_pids[i]} died (see $pre.chatd$((i + 1)).log)"
    done
    stop_nodes
    stop_redis
    drop_db "$db"
}

# ---- 2. fan-out with persistence off and on ----
fanout_one() {
    local mode=$1 r=$2
    local pre="$out/fanout-run$r-$mode" db="fanout_r$r"
    if [ "$mode" = on ]; then
        make_db "$db"
        node_env=("DATABASE_URL=$(db_url "$db")")
    else
        node_env=()
    fi
    start_node "$pre.chatd.log" bench-1
    node_env=()
    wait_ready_all
    local -a target
    target_args
    local rc=0
    run_wait "$load" "${target[@]}" --secret "$secret" --channel chat:bench --subscribers 1000 \
        --publishers 10 --rates "$fanout_rates" --step-seconds "$fanout_step" --drain-seconds 2 \
        --batch-us 500 --host-cpu >"$pre.txt" 2>"$pre.err" || rc=$?
    [ "$rc" -eq 0 ] || { echo "durable_bench: chat-load ($mode) exited with $rc"; cat "$pre.err"; }
    grep -E '^(CONNECT|STEP|CLOSES|ERRORS|DISCONNECTS)' "$pre.txt" | sed "s/^/   $mode: /" || true
    if [ "$mode" = on ]; then
        echo "   on: rows committed $(node "$helper" sum-metric --admins "$(admins_csv)" --key rows)"
    fi
    kill -0 "${node_pids[0]}" 2>/dev/null || echo "durable_bench: chatd died (see $pre.chatd.log)"
    stop_nodes
    [ "$mode" = on ] && drop_db "$db"
    return 0
}

section_fanout() {
    local r=$1
    echo "-- 2. fan-out, run $r/$runs: one node, 1,000 subscribers, 10 publishers, rates $fanout_rates, ${fanout_step} s steps, persistence off and on"
    # The order alternates between runs, so drift over time does not favour one side.
    if [ $((r % 2)) = 1 ]; then
        fanout_one off "$r"
        fanout_one on "$r"
    else
        fanout_one on "$r"
        fanout_one off "$r"
    fi
    local off="$out/fanout-run$r-off.txt" on="$out/fanout-run$r-on.txt" line rate sline
    : >"$out/fanout-run$r.txt"
    while read -r line; do
        rate=$(field "$line" rate)
        sline=$(awk -v r="$rate" '$1 == "STEP" { for (i = 2; i <= NF; i++) if ($i == "rate=" r) print }' "$on" | head -1)
        awk -v r="$rate" \
            -v p99f="$(field "$line" p99_ms)" -v p99n="$(field "$sline" p99_ms)" \
            -v p50f="$(field "$line" p50_ms)" -v p50n="$(field "$sline" p50_ms)" \
            -v okf="$(field "$line" ok/s)" -v okn="$(field "$sline" ok/s)" \
            -v df="$(field "$line" deliv/s)" -v dn="$(field "$sline" deliv/s)" \
            -v lf="$(field "$line" lost)" -v ln="$(field "$sline" lost)" \
            -v cf="$(field "$line" node_cpu)" -v cn="$(field "$sline" node_cpu)" \
            -v of="$(field "$line" other_cpu)" -v on="$(field "$sline" other_cpu)" 'BEGIN {
                ratio = (p99f + 0 > 0 && p99n != "" && p99n != "-") ? sprintf("%.3f", p99n / p99f) : "-"
                printf "FANOUT rate=%s p99_off=%s p99_on=%s ratio=%s p50_off=%s p50_on=%s", r, p99f, p99n, ratio, p50f, p50n
                printf " deliv/s_off=%s deliv/s_on=%s acks/s_off=%s acks/s_on=%s lost_off=%s lost_on=%s", df, dn, okf, okn, lf, ln
                printf " node_cpu_off=%s node_cpu_on=%s other_cpu_off=%s other_cpu_on=%s\n", cf, cn, of, on
            }' >>"$out/fanout-run$r.txt"
    done < <(awk '$1 == "STEP"' "$off")
    cat "$out/fanout-run$r.txt"
}

# ---- 3. backlog drain ----
section_drain() {
    local r=$1
    local pre="$out/drain-run$r" db="drain_r$r"
    echo "-- 3. drain, run $r/$runs: 3 nodes + Redis, $drain_rate publications/s for $drain_publish s into 100 rooms while Postgres is stopped"
    make_db "$db"
    # The stream must hold the whole outage: the default cap (100,000) would refuse publishes.
    start_cluster "$db" "$pre" "CHAT_PERSIST_MAX=2000000"
    local -a target
    target_args
    pg_stop fast
    echo "   postgres stopped (pg_ctl stop -m fast)"
    local rc=0
    run_wait "$load" "${target[@]}" --redis-pid "$redis_pid" --secret "$secret" --channel chat:drain \
        --rooms 100 --subscribers 100 --publishers 10 --rates "$drain_rate" \
        --step-seconds "$drain_publish" --drain-seconds 2 --batch-us 500 \
        >"$pre.load.txt" 2>"$pre.load.err" || rc=$?
    [ "$rc" -eq 0 ] || { echo "durable_bench: chat-load exited with $rc"; cat "$pre.load.err"; }
    grep -E '^(CONNECT|STEP|TOTALS|CLOSES|ERRORS|DISCONNECTS)' "$pre.load.txt" | sed 's/^/   load: /' || true
    local xlen0 rows0 t0 res pg_up_s
    xlen0=$("$redis_cli" -p "$redis_port" XLEN chat.persist)
    rows0=$(node "$helper" sum-metric --admins "$(admins_csv)" --key rows)
    t0=$(date +%s%3N)
    pg_start keep
    pg_up_s=$(awk -v a="$t0" -v b="$(date +%s%3N)" 'BEGIN { printf "%.2f", (b - a) / 1000 }')
    run_wait node "$helper" drain --admins "$(admins_csv)" --redis-port "$redis_port" --t0 "$t0" \
        --rows0 "$rows0" --timeout 600 >"$pre.drain.txt" || die "drain watch failed"
    res=$(cat "$pre.drain.txt")
    local secs first stored accepted
    secs=$(field "$res" seconds)
    first=$(field "$res" first_commit_s)
    stored=$(psql_db "$db" "SELECT count(*) FROM chat_messages")
    accepted=$(node "$helper" sum-metric --admins "$(admins_csv)" --key pubs)
    awk -v rows="$xlen0" -v s="$secs" -v f="$first" -v up="$pg_up_s" \
        -v stored="$stored" -v acc="$accepted" 'BEGIN {
            rps = (s + 0 > 0) ? sprintf("%.0f", rows / s) : "-"
            rps2 = (s + 0 > f + 0 && f != "-") ? sprintf("%.0f", rows / (s - f)) : "-"
            printf "DRAIN rows=%s seconds=%s rows/s=%s pg_start_s=%s first_commit_s=%s rows/s_after_first_commit=%s accepted_publishes=%s stored_rows=%s missing=%d\n", rows, s, rps, up, f, rps2, acc, stored, acc - stored
        }' | tee "$pre.txt"
    echo "   drain watch: $res"
    local i
    for i in "${!node_pids[@]}"; do
        kill -0 "${node_pids[i]}" 2>/dev/null || echo "durable_bench: chatd ${node_pids[i]} died (see $pre.chatd$((i + 1)).log)"
    done
    stop_nodes
    stop_redis
    drop_db "$db"
}

# ---- 4. history pages at 1M stored rows ----
section_history() {
    local r=$1
    local pre="$out/history-run$r" db="history_r$r" epoch="hbench$r"
    echo "-- 4. history, run $r/$runs: $hist_rows rows in $hist_channels channels (chat:hist-N), $hist_calls sequential /api/history calls, limit $hist_limit, forward"
    make_db "$db"
    # A first start applies the migrations; the rows go in while no node runs, so the next
    # start loads the channels' positions from chat_channels.
    node_env=("DATABASE_URL=$(db_url "$db")")
    start_node "$pre.migrate.log" bench-1
    node_env=()
    stop_nodes
    local t0 t1 ins_s size
    t0=$(date +%s%3N)
    # Rows in publishing order (offset by offset over all channels), as a live chat stores them.
    psql_db "$db" "INSERT INTO chat_messages (channel, epoch, \"offset\", user_id, client_id, data, created_at)
        SELECT 'chat:hist-' || c, '$epoch', o, 'user-' || (o % 37), 'client-' || (o % 37),
               convert_to('{\"text\":\"message ' || o || ' of room ' || c || ' lorem ipsum dolor sit amet\"}', 'UTF8'),
               now() - make_interval(secs => ($hist_per_channel - o))
        FROM generate_series(1, $hist_per_channel) o, generate_series(0, $((hist_channels - 1))) c
        ORDER BY o, c" >/dev/null
    psql_db "$db" "INSERT INTO chat_channels (channel, epoch, top)
        SELECT 'chat:hist-' || c, '$epoch', $hist_per_channel FROM generate_series(0, $((hist_channels - 1))) c" >/dev/null
    psql_db "$db" "ANALYZE chat_messages" >/dev/null
    psql_db "$db" "CHECKPOINT" >/dev/null
    t1=$(date +%s%3N)
    ins_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
    size=$(psql_db "$db" "SELECT pg_total_relation_size('chat_messages') / 1048576")
    local n
    n=$(psql_db "$db" "SELECT count(*) FROM chat_messages")
    echo "   inserted $n rows in ${ins_s} s (with ANALYZE and CHECKPOINT); chat_messages with indexes: ${size} MiB"
    node_env=("DATABASE_URL=$(db_url "$db")")
    start_node "$pre.chatd.log" bench-1
    node_env=()
    wait_ready_all
    local a0 a1 res
    a0=$(node "$helper" sum-metric --admins "$(admins_csv)" --key answers)
    run_wait node "$helper" history --admin "${admins[0]}" --key "$api_key" --prefix chat:hist- \
        --channels "$hist_channels" --top "$hist_per_channel" --limit "$hist_limit" \
        --epoch "$epoch" --n "$hist_calls" --warmup 20 --seed "$r" >"$pre.hist.txt" 2>"$pre.err" ||
        { cat "$pre.err"; die "history client failed"; }
    res=$(cat "$pre.hist.txt")
    a1=$(node "$helper" sum-metric --admins "$(admins_csv)" --key answers)
    echo "HISTORY rows=$n $res warmup_calls=20 store_answers=$((a1 - a0)) insert_s=$ins_s table_mib=$size" | tee "$pre.txt"
    [ -s "$pre.err" ] && sed 's/^/   /' "$pre.err"
    stop_nodes
    drop_db "$db"
}

# ---- main ----
want() {
    [[ ",$sections," == *",$1,"* ]]
}
started=$(date +%s)
echo "== durable_bench: runs=$runs quick=$quick sections=$sections output=$out"
echo "   chatd sha256 $(sha256sum "$chatd" | cut -c1-12), chat-load sha256 $(sha256sum "$load" | cut -c1-12)," \
    "$("$redis_server" --version | cut -d' ' -f1-3), node $(node --version), $(nproc) cores, open-file limit $(ulimit -n)"
setup_pg

if want 1; then
    echo "== 1. sustained persisted messages/s (3 nodes + Redis + Postgres)"
    for r in $(seq 1 "$runs"); do section_persist "$r"; done
fi
if want 2; then
    echo "== 2. fan-out p99 with persistence off / on (one node, no Redis)"
    for r in $(seq 1 "$runs"); do section_fanout "$r"; done
fi
if want 3; then
    echo "== 3. backlog drain after a Postgres outage (3 nodes + Redis)"
    for r in $(seq 1 "$runs"); do section_drain "$r"; done
fi
if want 4; then
    echo "== 4. history page latency at $hist_rows stored rows (one node, no Redis)"
    for r in $(seq 1 "$runs"); do section_history "$r"; done
fi

echo "== MEDIANS over $runs run(s) (elapsed $(($(date +%s) - started)) s)"
{
    files() { local r; for r in $(seq 1 "$runs"); do echo "$out/$1-run$r.txt"; done; }
    if want 1; then
        mapfile -t fl < <(files persist)
        medians PERSIST rate "${fl[@]}"
        medians PERSIST_CHECK "" "${fl[@]}"
    fi
    if want 2; then
        mapfile -t fl < <(files fanout)
        medians FANOUT rate "${fl[@]}"
    fi
    if want 3; then
        mapfile -t fl < <(files drain)
        medians DRAIN "" "${fl[@]}"
    fi
    if want 4; then
        mapfile -t fl < <(files history)
        medians HISTORY "" "${fl[@]}"
    fi
} | tee "$out/medians.txt"
cat <<'NOTES'
== What is measured
PERSIST: rows/s = increase of chat_store_rows_total summed over the 3 nodes over the step's
  publishing window, divided by its length; acks/s = publish replies chat-load received (with
  Redis a publish is acknowledged once the publish script appended it to the persist stream,
  before it is in Postgres); stream_len_* = XLEN chat.persist (entries not committed yet) at the
  window's end and its maximum (sampled every 250 ms); stream_age_* = age of the stream's oldest
  entry (now - its ID's time), i.e. how long the oldest publication not committed yet has waited
  since its publish; commit_p50/p99_le_s = the upper bound of the chat_store_commit_seconds
  bucket holding that quantile of the window's rows (buckets 1, 2.5, 5, 10, 25, 50, 100, 250 ms,
  0.5, 1, 2.5, 5, 10, 30 s), from a row reaching a node's writer (read from the stream) to its
  commit: it does not include the time in the stream; pg_lag_* = over every row published
  during the window (pg_lag_rows of them), its transaction's commit time
  (pg_xact_commit_timestamp, with track_commit_timestamp on) - its created_at (Redis time of
  the publish): the publish-to-commit lag, asked after the last step once the stream is empty,
  so rows that waited longest count too. pg_cpu = CPU of the postmaster and its backends (% of one core);
  chat-load's other_cpu includes it. pub_err counts refused publishes: 429 when a connection has
  1,024 shared rate-limit checks waiting on Redis, 100 when the persist stream holds
  CHAT_PERSIST_MAX (100,000) entries. PERSIST_CHECK: after the last step and the stream's drain,
  publications the brokers accepted (chat_broker_publishes_total) against rows in Postgres.
FANOUT: chat-load's end-to-end delivery p99 (publish sent -> push received) per rate, the same
  command against a node without (off) and with (on) DATABASE_URL; ratio = on / off.
DRAIN: rows = XLEN chat.persist when Postgres is started again; seconds = from pg_ctl start
  until XLEN is 0 (includes the server's start and the nodes' reconnect back-off, up to 5 s;
  first_commit_s is when the first row was committed); nothing is published meanwhile.
HISTORY: wall time of each POST /api/history (limit 50, forward, since a random offset of a
  random channel, all answered from Postgres: the node's window is empty), sequential, after
  20 unmeasured calls.
NOTES
