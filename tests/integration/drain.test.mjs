// A drain spread over time: one node of two holding 2,000 clients drains (chatctl's API call);
// its clients leave in batches over CHAT_DRAIN_PERIOD_MS, reconnect through a load balancer to
// the other node at a bounded rate, and recover every publication made meanwhile.
// The balancer is a TCP proxy in this test: each connection goes to the first node that
// accepts it, as a balancer does once a draining node closes its listener.
import net from 'node:net';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connectClient, subscribe, waitUntil, withTimeout } from './helpers.mjs';
import { startCluster } from './cluster-util.mjs';

const API_KEY = 'drain-test-key';
const CLIENTS = 2000;
const ROOMS = 20;
const PERIOD_MS = 4000;

function proxy(t, upstreams) {
  const sockets = new Set();
  const server = net.createServer((down) => {
    sockets.add(down);
    down.on('close', () => sockets.delete(down));
    down.pause();
    const tryAt = (i) => {
      if (i >= upstreams.length) {
        down.destroy();
        return;
      }
      const [host, port] = upstreams[i].split(':');
      const up = net.connect(Number(port), host);
      up.once('error', () => { if (!up.connected) tryAt(i + 1); else down.destroy(); });
      up.once('connect', () => {
        sockets.add(up);
        up.on('close', () => { sockets.delete(up); down.destroy(); });
        down.on('close', () => up.destroy());
        down.on('error', () => up.destroy());
        up.on('error', () => down.destroy());
        down.pipe(up);
        up.pipe(down);
        down.resume();
      });
    };
    tryAt(0);
  });
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`127.0.0.1:${server.address().port}`)));
}

/** The most of the sorted times (ms) that fall within one second of each other. */
function maxInOneSecond(times) {
  let most = 0;
  for (let i = 0, j = 0; i < times.length; i++) {
    while (times[i] - times[j] >= 1000) j++;
    most = Math.max(most, i - j + 1);
  }
  return most;
}

async function publish(srv, channel, n) {
  const res = await fetch(`${srv.adminUrl}/api/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY },
    body: JSON.stringify({ channel, data: { type: 'message', text: `m${n}` } }),
  });
  const body = await res.json();
  if (!body.result) throw new Error(`publish: ${JSON.stringify(body)}`);
  return body.result.offset;
}

test('drain: 2,000 clients move to the other node over the period, at a bounded rate, losing nothing', { timeout: 120_000 }, async (t) => {
  const [n1, n2] = await startCluster(t, 2, {
    CHAT_API_KEY: API_KEY,
    CHAT_DRAIN_PERIOD_MS: PERIOD_MS,
    CHAT_DRAIN_MIN_RATE: 100,
    CHAT_MAX_CONNECTIONS_PER_USER: 4,
  });
  const lb = await proxy(t, [n1.publicAddr, n2.publicAddr]);
  const url = `ws://${lb}/connection/websocket`;

  const members = [];
  for (let i = 0; i < CLIENTS; i += 200) {
    const batch = [];
    for (let j = i; j < Math.min(i + 200, CLIENTS); j++) {
      batch.push((async () => {
        const client = await connectClient(t, n1, { user: `u${j}`, url, connectTimeoutMs: 20_000 });
        const room = `chat:drain${j % ROOMS}`;
        const { sub } = await subscribe(client, room, { recoverable: true, positioned: true }, 20_000);
        const m = { client, room, offsets: [], reconnectedAt: null, node: null };
        sub.on('publication', (ctx) => m.offsets.push(ctx.offset));
        return m;
      })());
    }
    members.push(...await Promise.all(batch));
  }
  // Every client landed on the first node.
  const before = await (await fetch(`${n1.adminUrl}/api/info`, { headers: { 'X-API-Key': API_KEY } })).json();
  assert.equal(before.result.nodes.find((n) => n.name === 'node0').num_clients, CLIENTS);

  // Publications into every room go on through the other node during the whole drain.
  const last = new Map();
  let n = 0;
  let publishing = true;
  const publisher = (async () => {
    while (publishing) {
      const room = `chat:drain${n % ROOMS}`;
      last.set(room, await publish(n2, room, n));
      n++;
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  for (const r of Array.from({ length: ROOMS }, (_, i) => `chat:drain${i}`)) {
    await waitUntil(() => last.has(r), { timeoutMs: 5000, what: `a publication in ${r}` });
  }

  const t0 = Date.now();
  for (const m of members) {
    m.client.once('connecting', (ctx) => { m.closedAt = Date.now() - t0; m.closeCode = ctx.code; });
    m.client.once('connected', () => { m.reconnectedAt = Date.now() - t0; });
  }
  n1.stopRequested = true; // it exits on its own: that is the point
  const dr = await fetch(`${n1.adminUrl}/api/node/drain`, { method: 'POST', headers: { 'X-API-Key': API_KEY } });
  assert.equal(dr.status, 200);
  try {
    await waitUntil(() => members.every((m) => m.reconnectedAt !== null),
      { timeoutMs: PERIOD_MS + 25_000, intervalMs: 100, what: 'every client reconnected' });
  } catch (e) {
    // Which ones, and where they are: a slow machine (some still connecting) is not the same
    // failure as a client the drain never closed.
    const away = members.filter((m) => m.reconnectedAt === null);
    const states = {};
    for (const m of away) {
      const k = `${m.closeCode === undefined ? 'never closed' : `closed ${m.closeCode}`}, now ${m.client.state}`;
      states[k] = (states[k] || 0) + 1;
    }
    throw new Error(`${e.message}: ${away.length} of ${CLIENTS} not back: ${JSON.stringify(states)}`);
  }
  const exit = await withTimeout(n1.exited, 10_000, 'the drained node exits');
  assert.equal(exit.code, 0);
  publishing = false;
  await publisher;

  // The node closed its clients with 3001 in batches over the period: a fair share per second
  // (500 on average), never most of them at once.
  const closes = members.map((m) => m.closedAt).sort((a, b) => a - b);
  assert.ok(members.every((m) => m.closeCode === 3001), 'every client told to reconnect (3001)');
  assert.ok(closes.at(-1) - closes[0] >= PERIOD_MS * 0.75, `closes spanned ${closes.at(-1) - closes[0]} ms`);
  assert.ok(maxInOneSecond(closes) <= 800, `${maxInOneSecond(closes)} closes within one second`);

  // Spread: the reconnects span most of the period, and no second takes most of them (2,000
  // over 4 s is 500 a second on average; closed all at once, they all come back within the
  // SDK's one-second backoff). The bound leaves room for a slow node (the sanitizer build)
  // bunching some of them.
  const times = members.map((m) => m.reconnectedAt).sort((a, b) => a - b);
  const q = (f) => times[Math.min(times.length - 1, Math.floor(f * times.length))];
  t.diagnostic(`reconnects after the drain began, ms: first ${times[0]}, p10 ${q(0.1)}, p50 ${q(0.5)}, p90 ${q(0.9)}, last ${times.at(-1)}`);
  // The last ones soon after the period's end. How soon is the test runner's pace more than the
  // node's: its one process holds all 2,000 SDK clients, and on two shared cores under load it
  // took 14 s (5-8 s on a quiet machine, either build); the bound catches reconnects that are
  // not spread at all but stall.
  assert.ok(times[times.length - 1] <= PERIOD_MS + 15_000, `last reconnect at ${times[times.length - 1]} ms`);
  assert.ok(times[times.length - 1] - times[0] >= PERIOD_MS * 0.6, `reconnects spanned ${times[times.length - 1] - times[0]} ms`);
  const maxPerSecond = maxInOneSecond(times);
  assert.ok(maxPerSecond <= 1200, `${maxPerSecond} reconnects within one second`);
  const info = await (await fetch(`${n2.adminUrl}/api/info`, { headers: { 'X-API-Key': API_KEY } })).json();
  assert.equal(info.result.nodes.find((x) => x.name === 'node1').num_clients, CLIENTS);

  // Nothing lost: each member has every offset of its room from its first one to the last
  // published, once and in order (recovery filled the time it was away).
  for (const r of last.keys()) {
    await waitUntil(() => members.filter((m) => m.room === r).every((m) => m.offsets.at(-1) === last.get(r)),
      { timeoutMs: 10_000, what: `every member of ${r} at offset ${last.get(r)}` });
  }
  for (const m of members) {
    const first = m.offsets[0];
    const want = Array.from({ length: last.get(m.room) - first + 1 }, (_, i) => first + i);
    assert.deepEqual(m.offsets, want, `${m.room}: offsets seen by a member`);
  }
});
