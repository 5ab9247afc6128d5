// The node at its open-file limit: the node-wide connection cap (CHAT_MAX_CONNECTIONS, by default
// a margin below the limit) answers upgrades over it with HTTP 503; descriptors the cap does not
// cover (set it too high) are kept in reserve, so clients are refused at once instead of waiting
// in the listen backlog, without a busy accept loop or a flood of log lines, while the admin
// listener keeps answering. The node's limit is lowered with prlimit; the test runner's is not.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startChatd, httpGet, metricValue, parsePrometheus, scrapeMetrics, waitUntil, WebSocket } from './helpers.mjs';

const NOFILE = 300;
const CLK_TCK = 100; // getconf CLK_TCK on Linux

/** utime + stime of a process, in clock ticks. */
function cpuTicks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/**
 * Opens a WebSocket and settles as {open: ws}, {status} (an HTTP answer instead of the upgrade),
 * {error} (the socket was closed or reset), or {timeout} after timeoutMs.
 */
function attempt(srv, { timeoutMs = 3000, headers } = {}) {
  return new Promise((resolve) => {
    const ws = new WebSocket(srv.wsUrl, { headers });
    const timer = setTimeout(() => {
      ws.terminate();
      resolve({ timeout: true });
    }, timeoutMs);
    const done = (r) => {
      clearTimeout(timer);
      resolve(r);
    };
    ws.once('open', () => done({ open: ws }));
    ws.once('unexpected-response', (req, res) => {
      res.resume();
      req.destroy();
      done({ status: res.statusCode });
    });
    ws.once('error', (e) => done({ error: e.message }));
  });
}

/** n attempts, at most `parallel` in flight. */
async function attempts(srv, n, parallel = 25) {
  const out = [];
  for (let i = 0; i < n; i += parallel) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(parallel, n - i) }, () => attempt(srv)))));
  }
  return out;
}

function closeAll(results) {
  for (const r of results) {
    if (r.open) {
      r.open.terminate();
    }
  }
}

async function adminAnswers(srv) {
  const t0 = Date.now();
  const h = await httpGet(`${srv.adminUrl}/healthz`, { timeoutMs: 1000 });
  assert.equal(h.status, 200);
  const m = await httpGet(`${srv.adminUrl}/metrics`, { timeoutMs: 1000 });
  assert.equal(m.status, 200);
  assert.ok(Date.now() - t0 < 2000);
  return m.body;
}

function countStderr(srv) {
  let bytes = 0;
  srv.child.stderr.on('data', (d) => {
    bytes += d.length;
  });
  return () => bytes;
}

test('descriptor exhaustion: clients refused at once, no busy loop, admin answers, clients return', async (t) => {
  const srv = await startChatd(t, {
    prefix: ['prlimit', `--nofile=${NOFILE}`, '--'],
    // A cap above what the descriptors allow: the descriptor reserve is what refuses.
    env: { CHAT_MAX_CONNECTIONS: 10000, CHAT_STALE_TIMEOUT: 120 },
  });
  const stderrBytes = countStderr(srv);
  const results = await attempts(srv, NOFILE + 20);
  t.after(() => closeAll(results));
  const opened = results.filter((r) => r.open).length;
  const refused = results.filter((r) => r.error || r.status).length;
  const hung = results.filter((r) => r.timeout).length;
  assert.equal(hung, 0, `clients left waiting instead of refused (opened ${opened}, refused ${refused})`);
  assert.ok(opened >= NOFILE - 100, `opened ${opened}`);
  assert.ok(refused >= 20, `refused ${refused}`);

  // While clients keep knocking, the node idles: no accept loop spins on the full table.
  const c0 = cpuTicks(srv.pid);
  const w0 = Date.now();
  const knocking = attempts(srv, 20, 5);
  const more = await knocking;
  closeAll(more);
  const body = await adminAnswers(srv);
  while (Date.now() - w0 < 1500) {
    await adminAnswers(srv);
  }
  const cpu = (cpuTicks(srv.pid) - c0) / CLK_TCK / ((Date.now() - w0) / 1000);
  // A spinning accept loop takes a whole core; serving the knocks and admin requests costs a
  // fraction of one (more under the sanitizer build).
  assert.ok(cpu < 0.6, `chatd used ${(cpu * 100).toFixed(0)} % CPU while refusing clients`);
  assert.ok(more.every((r) => !r.timeout), 'late clients were refused at once');
  assert.ok(metricValue(parsePrometheus(body), 'chat_connections_refused_total', { reason: 'descriptors' }) >= 20, body);
  assert.ok(stderrBytes() < 16 * 1024, `${stderrBytes()} bytes of log while refusing`);
  assert.match(srv.stderr, /connections refused.*reason=descriptors.*count=\d+/);

  // Once clients leave, new ones connect again.
  closeAll(results.splice(0, 50));
  await waitUntil(
    async () => {
      const r = await attempts(srv, 10, 10);
      closeAll(r);
      return r.every((x) => x.open);
    },
    { what: 'new clients connecting after 50 left', timeoutMs: 5000, intervalMs: 100 },
  );
});

test('CHAT_MAX_CONNECTIONS: upgrades over the cap get HTTP 503, and connect again below it', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_MAX_CONNECTIONS: 5, CHAT_STALE_TIMEOUT: 120 } });
  const first = await attempts(srv, 5);
  t.after(() => closeAll(first));
  assert.ok(first.every((r) => r.open));
  const over = await attempt(srv);
  assert.equal(over.status, 503);
  const m = await scrapeMetrics(srv);
  assert.equal(metricValue(m, 'chat_connections_refused_total', { reason: 'limit' }), 1);
  first.shift().open.close();
  await waitUntil(
    async () => {
      const r = await attempt(srv);
      closeAll([r]);
      return r.open;
    },
    { what: 'a client connecting once one left', intervalMs: 50 },
  );
});

test('the default cap is a margin below the open-file limit: 503 instead of exhaustion', async (t) => {
  const srv = await startChatd(t, { prefix: ['prlimit', `--nofile=${NOFILE}`, '--'], env: { CHAT_STALE_TIMEOUT: 120 } });
  const stderrBytes = countStderr(srv);
  const results = await attempts(srv, NOFILE);
  t.after(() => closeAll(results));
  const opened = results.filter((r) => r.open).length;
  const limited = results.filter((r) => r.status === 503).length;
  assert.equal(opened, NOFILE - 64, JSON.stringify(results.filter((r) => !r.open).slice(0, 3)));
  // Attempts in flight beside the capped sessions may find the descriptor reserve instead.
  assert.ok(limited >= 32, `${limited} answered 503`);
  assert.equal(results.filter((r) => r.timeout).length, 0, 'every client over the cap was refused at once');
  await adminAnswers(srv);
  assert.ok(stderrBytes() < 16 * 1024);
});
