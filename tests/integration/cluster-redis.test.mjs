// Cluster mode through a Redis outage (issue 3, "Redis outages"; DESIGN.md "Failure behaviour":
// Redis down = the node keeps serving local connections, publishes fail fast with a temporary
// error, /readyz fails, the node reconnects and catches up).
//
// - With `appendonly yes` (fsync always) Redis keeps every acknowledged write across a restart,
//   SIGKILL or SIGTERM: every acknowledged publication reaches every subscriber exactly once, in
//   offset order, and the subscribers keep their sockets throughout.
// - Without persistence the channel's history is gone: its epoch changes, clients are told
//   recovered:false, and offsets start again at 1.
//
// Real chatd processes, a real redis-server and the centrifuge SDK, all on loopback.
import net from 'node:net';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, waitReady, redisCommand } from './cluster-util.mjs';
import {
  connectClient, subscribe, Collector, chatMessage, waitUntil, delay, scrapeMetrics, metricValue,
  sdkSocket, httpGet, withTimeout,
} from './helpers.mjs';

const SUB_OPTS = { recoverable: true, positioned: true };

async function readyz(srv) {
  return (await httpGet(`${srv.adminUrl}/readyz`, { timeoutMs: 2000 })).status;
}

/** Waits until every node's /readyz answers status. */
async function waitAllReadyz(nodes, status, timeoutMs) {
  await Promise.all(nodes.map((srv) => waitUntil(async () => (await readyz(srv)) === status,
    { timeoutMs, intervalMs: 25, what: `/readyz ${status} on ${srv.nodeId}` })));
}

/**
 * An SDK client on srv subscribed to channel (recoverable, positioned), with everything it sees
 * recorded: publications, subscribed events, and the WebSocket it started with.
 */
async function member(t, srv, user, channel) {
  const client = await connectClient(t, srv, { user, url: srv.wsUrl });
  const { sub, ctx } = await subscribe(client, channel, SUB_OPTS);
  assert.equal(ctx.recoverable, true);
  const m = {
    user, srv, client, sub, first: ctx,
    pubs: new Collector(sub, 'publication'),
    subscribed: new Collector(sub, 'subscribed'),
    subEvents: [],
    socket: sdkSocket(client),
  };
  for (const ev of ['subscribing', 'unsubscribed', 'error']) {
    sub.on(ev, (c) => m.subEvents.push({ ev, code: c.code, reason: c.reason ?? c.error?.message, at: Date.now() }));
  }
  // One ordered record of what the subscriber saw, to show where a duplicate came from.
  m.timeline = [];
  sub.on('publication', (c) => m.timeline.push(`${c.offset}`));
  sub.on('subscribed', (c) => m.timeline.push(`[subscribed rec=${c.recovered} at=${c.streamPosition?.offset}]`));
  client.on('connecting', (c) => m.timeline.push(`[connecting ${c.code}]`));
  return m;
}

/** Connection events after the first connect: what would show a lost socket. */
function socketHistory(m) {
  const conn = m.client.events.filter((e) => ['connecting', 'connected', 'disconnected'].includes(e.ev));
  const first = conn.findIndex((e) => e.ev === 'connected');
  return conn.slice(first + 1).map((e) => `${e.ev}${e.ctx && e.ctx.code !== undefined ? `(${e.ctx.code} ${e.ctx.reason})` : ''}`);
}

/**
 * A writer publishing count messages one after another. A failed attempt is retried (a new
 * attempt, a new text) until acknowledged. Texts: `${id}:${k}:${attempt}`. Every attempt is
 * recorded with its duration, outcome, and whether Redis was known to be down when it started.
 */
function runWriter(m, id, count, ctl) {
  const w = { id, acked: [], failures: [], done: null };
  w.done = (async () => {
    const deadline = Date.now() + 40_000;
    for (let k = 0; k < count; k++) {
      for (let attempt = 0; ; attempt++) {
        if (attempt >= 400 || Date.now() > deadline) {
          throw new Error(`writer ${id}: message ${k} not acknowledged after ${attempt} attempts`);
        }
        const text = `${id}:${k}:${attempt}`;
        const down = ctl.down;
        const t0 = Date.now();
        try {
          await m.sub.publish(chatMessage(text, `${id}-${k}`));
          w.acked.push({ k, text, at: Date.now() });
          break;
        } catch (err) {
          w.failures.push({ k, text, ms: Date.now() - t0, down, err });
          await delay(ctl.retryMs);
        }
      }
      await delay(ctl.paceMs);
    }
  })();
  w.done.catch(() => {});
  return w;
}

/** PUBSUB NUMSUB of one Redis pub/sub channel (the whole RESP reply read, then parsed). */
function numsub(url, name) {
  const port = Number(new URL(url).port);
  return withTimeout(new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let reply = '';
    sock.on('connect', () => sock.write(`*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n$${Buffer.byteLength(name)}\r\n${name}\r\n`));
    sock.on('data', (d) => {
      reply += d.toString();
      const m = /^\*2\r\n\$\d+\r\n[^\r]*\r\n:(\d+)\r\n$/.exec(reply);
      if (m) {
        sock.destroy();
        resolve(Number(m[1]));
      }
    });
    sock.on('error', reject);
  }), 2000, 'PUBSUB NUMSUB');
}

async function stateLost(nodes) {
  const out = {};
  for (const srv of nodes) {
    out[srv.nodeId] = metricValue(await scrapeMetrics(srv), 'chat_state_lost_total') ?? 0;
  }
  return out;
}

function nodeLogs(nodes, re = /redis|gap|state|cluster/i) {
  return nodes.map((srv) => `--- ${srv.nodeId} ---\n${srv.stderr.split('\n').filter((l) => re.test(l)).slice(-30).join('\n')}`).join('\n');
}

/**
 * Steady publishing from a writer on every node, two more subscribers on every node; Redis (AOF,
 * fsync always) is stopped with SIGKILL (kill) or SIGTERM. With observe it stays away until every
 * node reports not ready, every writer saw its publishes fail and every client is checked to be
 * still connected; without, it is restarted at once (restart({kill})). Then it comes back on the
 * same port and directory, the writers finish (retrying what failed), and every subscriber must
 * hold every stored publication once, in offset order, on the socket it started with.
 */
async function outageWithAof(t, { kill, observe }) {
  const NODES = 3;
  const PER_WRITER = 45;
  const nodes = await startCluster(t, NODES, {}, { redis: { appendonly: true } });
  const redis = nodes.redis;
  const channel = `chat:outage-${kill ? 'kill' : 'term'}-${observe ? 'long' : 'blip'}`;

  const readers = [];
  for (let i = 0; i < 2 * NODES; i++) {
    readers.push(await member(t, nodes[i % NODES], `reader${i}`, channel));
  }
  const writerMembers = [];
  for (let i = 0; i < NODES; i++) {
    writerMembers.push(await member(t, nodes[i], `writer${i}`, channel));
  }
  const everyone = [...readers, ...writerMembers];

  const ctl = { down: false, retryMs: 40, paceMs: 15 };
  const writers = writerMembers.map((m, i) => runWriter(m, `w${i}`, PER_WRITER, ctl));

  // Under way: every writer has had some publications acknowledged.
  await waitUntil(() => writers.every((w) => w.acked.length >= 10), { timeoutMs: 10_000, what: 'writers under way' });

  const report = { kill, observe };
  if (observe) {
    await redis.stop({ kill });
    ctl.down = true;
    const downAt = Date.now();
    // Every node says it is not ready while Redis is away.
    await waitAllReadyz(nodes, 503, 5000);
    report.allNotReadyAfterMs = Date.now() - downAt;
    // Every writer sees its publishes fail meanwhile.
    await waitUntil(() => writers.every((w) => w.failures.filter((f) => f.down).length >= 3),
      { timeoutMs: 5000, what: 'every writer to see publishes fail while Redis is down' });
    // Still not ready just before Redis returns (nothing came back by itself).
    for (const srv of nodes) {
      assert.equal(await readyz(srv), 503, `${srv.nodeId} ready while Redis is down`);
    }
    // Local connections are served meanwhile: every client still on the socket it started with.
    for (const m of everyone) {
      assert.ok(m.client.state === 'connected' && sdkSocket(m.client) === m.socket && socketHistory(m).length === 0,
        `${m.user}@${m.srv.nodeId} lost its connection while Redis was down: ${socketHistory(m).join(', ')}`);
    }
    report.downMs = Date.now() - downAt;
    ctl.restartAt = Date.now();
    await redis.restart();
    ctl.down = false;
  } else {
    ctl.down = true;
    ctl.restartAt = Date.now();
    await redis.restart({ kill });
    ctl.down = false;
  }
  const backAt = Date.now();
  report.closedAfterRestartMs = [];
  await waitReady(nodes, 10_000);
  report.readyAfterMs = Date.now() - backAt;

  await Promise.all(writers.map((w) => w.done));

  // What the channel holds now: every stored publication, acknowledged or not (an attempt whose
  // reply was lost with the connection may still have been stored).
  const { offset: top } = await writerMembers[0].sub.history({ limit: 0 });
  const acked = writers.flatMap((w) => w.acked);
  assert.equal(acked.length, NODES * PER_WRITER);
  assert.ok(top >= acked.length, `top offset ${top} < ${acked.length} acknowledged publications`);

  const problems = [];
  for (const m of everyone) {
    try {
      // All of 1..top: the count alone could be reached early by a duplicate.
      await waitUntil(() => m.pubs.items.length >= top && m.pubs.items.some((p) => p.offset === top),
        { timeoutMs: 15_000, what: `${top} publications (${m.pubs.items.length} in)` });
    } catch (e) {
      problems.push(`${m.user}@${m.srv.nodeId}: ${e.message}`);
    }
    const offsets = m.pubs.items.map((p) => p.offset);
    const texts = m.pubs.items.map((p) => p.data.text);
    // Every stored publication once, in offset order: 1..top, nothing else.
    if (offsets.join() !== Array.from({ length: top }, (_, i) => i + 1).join()) {
      const dups = offsets.filter((o, i) => offsets.indexOf(o) !== i);
      const missing = Array.from({ length: top }, (_, i) => i + 1).filter((o) => !offsets.includes(o));
      problems.push(`${m.user}@${m.srv.nodeId}: offsets not 1..${top}: ${offsets.length} received, missing [${missing.slice(0, 20)}], twice [${dups.slice(0, 20)}], order ${offsets.slice(0, 5)}..; seen: ${m.timeline.join(' ')}`);
    }
    const seen = new Map();
    for (const x of texts) {
      seen.set(x, (seen.get(x) || 0) + 1);
    }
    const lost = acked.filter((a) => seen.get(a.text) !== 1);
    if (lost.length) {
      problems.push(`${m.user}@${m.srv.nodeId}: ${lost.length} acknowledged publications not received exactly once: ${lost.slice(0, 10).map((a) => `${a.text}x${seen.get(a.text) || 0}`)}`);
    }
    // Each writer's acknowledged messages in the order they were sent.
    for (const w of writers) {
      const ks = texts.filter((x) => x.startsWith(`${w.id}:`) && w.acked.some((a) => a.text === x)).map((x) => Number(x.split(':')[1]));
      if (ks.join() !== Array.from({ length: PER_WRITER }, (_, k) => k).join()) {
        problems.push(`${m.user}@${m.srv.nodeId}: ${w.id}'s messages out of order: ${ks.join(',')}`);
      }
    }
  }

  // Publishes failed fast, with the temporary internal error, while Redis was away.
  const failures = writers.flatMap((w) => w.failures);
  const duringOutage = failures.filter((f) => f.down);
  report.failures = failures.length;
  report.failuresDuringOutage = duringOutage.length;
  const outageMs = duringOutage.map((f) => f.ms).sort((a, b) => a - b);
  report.outageFailureMs = { max: outageMs[outageMs.length - 1], median: outageMs[Math.floor(outageMs.length / 2)] };
  report.failureMs = { max: Math.max(0, ...failures.map((f) => f.ms)) };
  report.errors = [...new Set(failures.map((f) => JSON.stringify(f.err)))];
  for (const f of failures) {
    if (f.err?.code !== 100 || f.err?.temporary !== true) {
      problems.push(`publish ${f.text} failed with ${JSON.stringify(f.err)} (${f.err?.stack ?? ''}), not the temporary error 100`);
    }
    if (f.ms > 1000) {
      problems.push(`publish ${f.text} took ${f.ms} ms to fail`);
    }
  }
  if (observe && duringOutage.length < 3 * NODES) {
    problems.push(`only ${duringOutage.length} publishes failed while Redis was down`);
  }

  // Local connections were served throughout: the same socket, the same subscription.
  for (const m of everyone) {
    const history = socketHistory(m);
    if (history.length || m.client.state !== 'connected' || sdkSocket(m.client) !== m.socket) {
      const closes = m.client.events.filter((e) => e.ev === 'connecting' && e.at >= ctl.restartAt).map((e) => e.at - ctl.restartAt);
      report.closedAfterRestartMs.push(...closes);
      problems.push(`${m.user}@${m.srv.nodeId} lost its connection after Redis was restarted (+${closes.join(', +')} ms): ${history.join(', ')}`);
    }
    if (m.subscribed.items.length || m.subEvents.length) {
      problems.push(`${m.user}@${m.srv.nodeId} resubscribed: ${JSON.stringify(m.subEvents)} then ${JSON.stringify(m.subscribed.items.map((c) => ({ wasRecovering: c.wasRecovering, recovered: c.recovered })))}`);
    }
  }
  // With the history intact no gap needed giving up on.
  const lostState = await stateLost(nodes);
  report.stateLost = lostState;
  if (Object.values(lostState).some((v) => v !== 0)) {
    problems.push(`chat_state_lost_total ${JSON.stringify(lostState)}: history was kept, yet nodes gave up on a gap`);
  }
  report.top = top;
  report.acked = acked.length;
  t.diagnostic(JSON.stringify(report));
  assert.deepEqual(problems, [], `${problems.length} problems\n${nodeLogs(nodes)}`);
}

test('Redis (AOF) SIGKILLed under publishing: nodes not ready, publishes fail fast, sockets kept, every acked publication once, in order', { timeout: 60_000 }, async (t) => {
  await outageWithAof(t, { kill: true, observe: true });
});

test('Redis (AOF) stopped with SIGTERM under publishing: the same', { timeout: 60_000 }, async (t) => {
  await outageWithAof(t, { kill: false, observe: true });
});

test('Redis (AOF) restarted at once with restart({kill:true}) under publishing: every acked publication once, in order', { timeout: 60_000 }, async (t) => {
  await outageWithAof(t, { kill: true, observe: false });
});

test('Redis restarted without persistence: new epoch, subscribers told recovered:false, offsets from 1 again', { timeout: 60_000 }, async (t) => {
  const NODES = 3;
  const BEFORE = 20;
  const AFTER = 10;
  const nodes = await startCluster(t, NODES);
  const redis = nodes.redis;
  const channel = 'chat:amnesia';

  const readers = [];
  for (let i = 0; i < 2 * NODES; i++) {
    readers.push(await member(t, nodes[i % NODES], `reader${i}`, channel));
  }
  const writer = await member(t, nodes[0], 'writer', channel);
  const everyone = [...readers, writer];
  const oldEpoch = writer.first.streamPosition.epoch;
  assert.ok(oldEpoch, 'the channel has an epoch');

  // A client that is away during the restart, holding its position.
  const away = await member(t, nodes[1], 'away', channel);

  for (let k = 0; k < BEFORE; k++) {
    await writer.sub.publish(chatMessage(`before ${k}`));
  }
  for (const m of [...everyone, away]) {
    await m.pubs.waitCount(BEFORE, 5000);
    assert.deepEqual(m.pubs.items.map((p) => p.offset), Array.from({ length: BEFORE }, (_, i) => i + 1));
  }
  away.client.disconnect();
  const position = { offset: BEFORE, epoch: away.first.streamPosition.epoch };
  assert.equal(position.epoch, oldEpoch);

  await redis.stop();
  await waitAllReadyz(nodes, 503, 5000);
  await redis.restart();
  await waitReady(nodes, 10_000);

  // Every connected subscriber is resubscribed and told its position is gone: recovered false.
  const problems = [];
  for (const m of everyone) {
    try {
      await m.subscribed.waitCount(1, 15_000);
    } catch (e) {
      problems.push(`${m.user}@${m.srv.nodeId} never resubscribed after the restart (${e.message}); socket: ${socketHistory(m).join(', ') || 'kept'}; sub events ${JSON.stringify(m.subEvents)}`);
      continue;
    }
    const ctx = m.subscribed.items[0];
    if (ctx.wasRecovering !== true || ctx.recovered !== false) {
      problems.push(`${m.user}@${m.srv.nodeId} resubscribed with wasRecovering=${ctx.wasRecovering} recovered=${ctx.recovered}`);
    }
    if (!ctx.streamPosition || ctx.streamPosition.epoch === oldEpoch) {
      problems.push(`${m.user}@${m.srv.nodeId} resubscribed in the old epoch: ${JSON.stringify(ctx.streamPosition)}`);
    }
  }
  assert.deepEqual(problems, [], `${problems.join('\n')}\n${nodeLogs(nodes)}`);
  // How they learnt it: the node closed them with 3010 (insufficient state) and they came back.
  const how = everyone.map((m) => `${m.user}@${m.srv.nodeId}: ${socketHistory(m).join(', ')}`);
  for (const m of everyone) {
    assert.ok(m.client.events.some((e) => e.ev === 'connecting' && e.ctx?.code === 3010), `${m.user} was not closed with 3010: ${how.join('\n')}`);
  }
  const lostState = await stateLost(nodes);
  for (const srv of nodes) {
    assert.ok(lostState[srv.nodeId] >= 1, `chat_state_lost_total ${JSON.stringify(lostState)}`);
  }
  const newEpoch = everyone[0].subscribed.items[0].streamPosition.epoch;
  for (const m of everyone) {
    assert.equal(m.subscribed.items[0].streamPosition.epoch, newEpoch, 'every subscriber in one new epoch');
  }

  // The client that was away comes back with its old position: told recovered:false too.
  const back = await connectClient(t, nodes[1], { user: 'away', url: nodes[1].wsUrl });
  const bsub = back.newSubscription(channel, { ...SUB_OPTS, since: position });
  const bpubs = new Collector(bsub, 'publication');
  const bsubscribed = new Collector(bsub, 'subscribed');
  bsub.subscribe();
  const [bctx] = await bsubscribed.waitCount(1, 5000);
  assert.equal(bctx.wasRecovering, true);
  assert.equal(bctx.recovered, false);
  assert.equal(bctx.streamPosition.epoch, newEpoch);
  assert.equal(bpubs.items.length, 0, 'nothing replayed from a lost history');

  // Publications after the restart reach everyone; offsets start again at 1 in the new epoch.
  for (let k = 0; k < AFTER; k++) {
    await writer.sub.publish(chatMessage(`after ${k}`));
  }
  for (const c of [...everyone.map((m) => ({ who: m.user, items: () => m.pubs.items.slice(BEFORE), coll: m.pubs, base: BEFORE })), { who: 'away', items: () => bpubs.items, coll: bpubs, base: 0 }]) {
    await c.coll.waitCount(c.base + AFTER, 5000);
    const got = c.items();
    assert.deepEqual(got.map((p) => p.data.text), Array.from({ length: AFTER }, (_, k) => `after ${k}`), c.who);
    assert.deepEqual(got.map((p) => p.offset), Array.from({ length: AFTER }, (_, k) => k + 1), c.who);
  }
  // Told once: no second 3010 after the resubscribe into the new epoch.
  const again = everyone.filter((m) => m.subscribed.items.length !== 1 || socketHistory(m).filter((e) => e.startsWith('connecting')).length !== 1);
  assert.deepEqual(again.map((m) => `${m.user}@${m.srv.nodeId}: ${socketHistory(m).join(', ')}`), [], `closed again after resubscribing\n${nodeLogs(nodes)}`);
  const h = await writer.sub.history({ limit: 0 });
  assert.equal(h.epoch, newEpoch);
  assert.equal(h.offset, AFTER);
  t.diagnostic(JSON.stringify({ oldEpoch, newEpoch, stateLost: lostState, how }));
});

/** The whole reply of one command answered with a bulk string (CLIENT LIST), as text. */
function redisBulk(url, ...args) {
  const port = Number(new URL(url).port);
  return withTimeout(new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let reply = Buffer.alloc(0);
    sock.on('connect', () => {
      sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
    });
    sock.on('data', (d) => {
      reply = Buffer.concat([reply, d]);
      const eol = reply.indexOf('\r\n');
      if (eol < 0) {
        return;
      }
      const head = reply.subarray(0, eol).toString();
      if (!head.startsWith('$')) {
        sock.destroy();
        reject(new Error(`${args.join(' ')} answered ${head}`));
        return;
      }
      const len = Number(head.slice(1));
      if (reply.length >= eol + 2 + len + 2) {
        sock.destroy();
        resolve(reply.subarray(eol + 2, eol + 2 + len).toString());
      }
    });
    sock.on('error', reject);
  }), 2000, args.join(' '));
}

/**
 * Connections that ran a command other than SUBSCRIBE and are not in pub/sub mode: the nodes'
 * command connections (each loads its scripts first thing), not the asker's own.
 */
async function commandConnections(url) {
  const list = await redisBulk(url, 'CLIENT', 'LIST');
  return list.split('\n').filter((l) => /\bsub=0 psub=0\b/.test(l) && !/\bcmd=(NULL|subscribe|client\|list)\b/.test(l)).length;
}

/**
 * A writer publishing one message after another until ctl.stop. A failed attempt is retried as a
 * new attempt with a new text, `${id}:${k}:${attempt}`. Every attempt is recorded: text, when it
 * started (t0) and ended (at), and the error of a failure.
 */
function runSteadyWriter(m, id, ctl) {
  const w = { id, node: m.srv.nodeId, acked: [], failures: [], done: null };
  w.done = (async () => {
    const deadline = Date.now() + 60_000;
    for (let k = 0; !ctl.stop; k++) {
      for (let attempt = 0; ; attempt++) {
        if (Date.now() > deadline) {
          throw new Error(`writer ${id}: still publishing after 60 s`);
        }
        const text = `${id}:${k}:${attempt}`;
        const t0 = Date.now();
        try {
          await m.sub.publish(chatMessage(text, `${id}-${k}-${attempt}`));
          w.acked.push({ text, t0, at: Date.now(), node: w.node });
          break;
        } catch (err) {
          w.failures.push({ text, t0, at: Date.now(), err });
          if (ctl.stop) {
            return;
          }
          await delay(ctl.retryMs);
        }
      }
      await delay(ctl.paceMs);
    }
  })();
  w.done.catch(() => {});
  return w;
}

// Redis restarts empty (a new epoch) and the nodes' command connections come back before their
// pub/sub connections can subscribe again: here Redis refuses SUBSCRIBE (an ACL) until the test
// lifts it, which makes the window of the race deterministic. Writers on both nodes publish
// throughout. What the protocol promises each subscriber:
// - a node acknowledges no publication while it is not subscribed again: its own subscribers
//   could not get it, and it would exist only in the new epoch's history (fails fast with the
//   temporary error 100 instead, and the writer retries);
// - every acknowledged publication reaches every subscriber exactly once, or the subscriber was
//   told: closed with 3010, resubscribed with recovered:false at a position at or after the
//   publication (or in a later epoch than it), and it finds the publication in the history;
// - what a subscriber receives is never silently gappy: after each subscribe answer, offsets run
//   on one by one from the answer's position.
test('Redis restarted without persistence, pub/sub back after commands: nothing acked a node cannot feed, every acked publication received or told (3010, recovered:false) and in history', { timeout: 90_000 }, async (t) => {
  const nodes = await startCluster(t, 2);
  const redis = nodes.redis;
  const channel = 'chat:amnesia-live';
  const everyone = [];
  for (let i = 0; i < 4; i++) {
    everyone.push(await member(t, nodes[i % 2], `reader${i}`, channel));
  }
  const writerMembers = [await member(t, nodes[0], 'writer0', channel), await member(t, nodes[1], 'writer1', channel)];
  everyone.push(...writerMembers);
  const oldEpoch = writerMembers[0].first.streamPosition.epoch;
  // Each subscriber's feed in arrival order: publications and subscribe answers.
  for (const m of everyone) {
    m.feed = [];
    m.sub.on('publication', (c) => m.feed.push({ offset: c.offset, text: c.data.text }));
    m.sub.on('subscribed', (c) => m.feed.push({ sub: c }));
  }

  const ctl = { stop: false, retryMs: 25, paceMs: 20 };
  const writers = writerMembers.map((m, i) => runSteadyWriter(m, `w${i}`, ctl));
  await waitUntil(() => writers.every((w) => w.acked.length >= 10), { timeoutMs: 10_000, what: 'writers under way' });

  const restartAt = Date.now();
  await redis.restart({ extraArgs: ['--user', 'default', 'on', 'nopass', '~*', '&*', '+@all', '-subscribe'] });
  // Both nodes' command connections are back (they loaded their scripts); publishing goes on.
  await waitUntil(async () => (await commandConnections(redis.url)) >= 2, { timeoutMs: 10_000, intervalMs: 10, what: 'both command connections back' });
  const windowFrom = Date.now();
  const attemptsSince = (w, from) => w.acked.concat(w.failures).filter((a) => a.t0 >= from).length;
  await waitUntil(() => writers.every((w) => attemptsSince(w, windowFrom) >= 5), { timeoutMs: 10_000, intervalMs: 10, what: 'publish attempts while the nodes cannot subscribe' });
  const windowTo = Date.now();
  assert.equal(await redisCommand(redis.url, 'ACL', 'SETUSER', 'default', '+subscribe'), '+OK');
  await waitReady(nodes, 10_000);

  const problems = [];
  // Every subscriber is told its position is gone: a resubscribe with recovered:false.
  for (const m of everyone) {
    try {
      await waitUntil(() => m.subscribed.items.some((c) => c.recovered === false), { timeoutMs: 15_000, what: 'a resubscribe with recovered:false' });
    } catch (e) {
      problems.push(`${m.user}@${m.srv.nodeId}: ${e.message}; socket: ${socketHistory(m).join(', ') || 'kept'}`);
    }
  }
  // Publishing goes on once everyone is back.
  const backAt = Date.now();
  await waitUntil(() => writers.every((w) => w.acked.filter((a) => a.t0 >= backAt).length >= 10), { timeoutMs: 15_000, what: 'publishing after the resubscribes' });
  ctl.stop = true;
  await Promise.all(writers.map((w) => w.done));
  const acked = writers.flatMap((w) => w.acked);

  // The channel's history now: every publication of the new epoch (fewer than history_size).
  const h = await writerMembers[0].sub.history({ limit: 1000 });
  assert.notEqual(h.epoch, oldEpoch, 'a new epoch after Redis restarted empty');
  assert.equal(h.publications.length, h.offset, `the whole new epoch is in history (${h.publications.length} of ${h.offset})`);
  assert.ok(h.offset < 200, `${h.offset} publications: more than the history keeps`);
  const inHistory = new Map(h.publications.map((p) => [p.data.text, p.offset]));

  // Nothing acknowledged while the nodes could not subscribe.
  const inWindow = writers.flatMap((w) => w.acked.filter((a) => a.t0 >= windowFrom && a.at <= windowTo));
  if (inWindow.length) {
    problems.push(`${inWindow.length} publications acknowledged while their node could not subscribe (${windowTo - windowFrom} ms): ${inWindow.slice(0, 8).map((a) => `${a.text}@${a.node} offset ${inHistory.get(a.text)}`).join(', ')}`);
  }
  // Failures were fast and temporary; or the SDK's own "connection closed" (11) for a publish in
  // flight when the writer's connection was closed with 3010.
  for (const [i, w] of writers.entries()) {
    for (const f of w.failures) {
      const closed3010 = writerMembers[i].client.events.some((e) => e.ev === 'connecting' && e.ctx?.code === 3010 && e.at >= f.t0 && e.at <= f.at + 100);
      const ok = (f.err?.code === 100 && f.err?.temporary === true) || (f.err?.code === 11 && closed3010);
      if (!ok || f.at - f.t0 > 1000) {
        problems.push(`publish ${f.text} failed after ${f.at - f.t0} ms with ${JSON.stringify(f.err)}, not the temporary error 100 at once`);
        break;
      }
    }
  }

  for (const m of everyone) {
    const who = `${m.user}@${m.srv.nodeId}`;
    // Every subscriber receives up to the top of the new epoch.
    try {
      await waitUntil(() => m.feed.some((e) => e.offset === h.offset && inHistory.get(e.text) === h.offset), { timeoutMs: 10_000, what: `offset ${h.offset} of the new epoch` });
    } catch (e) {
      problems.push(`${who}: ${e.message}`);
    }
    // No silent gap: after each subscribe answer, offsets run on one by one from its position.
    let next = m.first.streamPosition.offset + 1;
    const told = []; // positions of the recovered:false answers
    for (const e of m.feed) {
      if (e.sub) {
        if (e.sub.recovered === false) {
          next = e.sub.streamPosition.offset + 1;
          told.push(e.sub.streamPosition);
        }
      } else if (e.offset !== next) {
        problems.push(`${who}: offset ${e.offset} (${e.text}) where ${next} was due; feed: ${m.feed.map((x) => (x.sub ? `[sub rec=${x.sub.recovered} at=${x.sub.streamPosition?.offset}]` : x.offset)).join(' ')}`);
        break;
      } else {
        next++;
      }
    }
    if (!m.client.events.some((e) => e.ev === 'connecting' && e.ctx?.code === 3010)) {
      problems.push(`${who} was not closed with 3010: ${socketHistory(m).join(', ')}`);
    }
    // Every acknowledged publication received once, or the subscriber was told and finds it in
    // the history.
    const count = new Map();
    for (const e of m.feed) {
      if (!e.sub) {
        count.set(e.text, (count.get(e.text) || 0) + 1);
      }
    }
    const hist = await m.sub.history({ limit: 1000 });
    const readable = new Set(hist.publications.map((p) => p.data.text));
    const silent = [];
    for (const a of acked) {
      const n = count.get(a.text) || 0;
      if (n > 1) {
        problems.push(`${who}: ${a.text} received ${n} times`);
        continue;
      }
      if (n === 1) {
        continue;
      }
      const off = inHistory.get(a.text);
      const covered = off === undefined
        ? told.length > 0 // of the lost epoch: told by any recovered:false answer
        : told.some((p) => p.epoch === h.epoch && p.offset >= off) && readable.has(a.text);
      if (off === undefined && a.t0 >= restartAt) {
        silent.push(`${a.text} (acked after the restart, not in the new epoch's history)`);
      } else if (!covered) {
        silent.push(`${a.text}@${a.node} offset ${off ?? `lost epoch`}${readable.has(a.text) ? '' : ', not readable'}`);
      }
    }
    if (silent.length) {
      problems.push(`${who}: ${silent.length} acknowledged publications neither received nor covered by a recovered:false answer (told at ${JSON.stringify(told)}): ${silent.slice(0, 8).join(', ')}`);
    }
  }
  const lostState = await stateLost(nodes);
  t.diagnostic(JSON.stringify({
    windowMs: windowTo - windowFrom,
    ackedInWindow: inWindow.length,
    failures: writers.map((w) => w.failures.length),
    acked: acked.length,
    newEpochTop: h.offset,
    stateLost: lostState,
    told: everyone.map((m) => `${m.user}@${m.srv.nodeId}: ${m.subscribed.items.map((c) => `rec=${c.recovered} at=${c.streamPosition?.offset}`).join(' ')}`),
  }));
  assert.deepEqual(problems, [], `${problems.length} problems\n${nodeLogs(nodes)}`);
});

// A node's first subscriber of a channel that already has history. The node subscribes in Redis
// (pub/sub) and asks for the channel position (script) at once; when the position comes back
// first, the pub/sub confirmation then makes the node check the history after that position: it
// must find no gap and keep its subscriber.
test("a node's first subscriber of a channel with history keeps its connection", { timeout: 30_000 }, async (t) => {
  const nodes = await startCluster(t, 2);
  const channel = 'chat:first-here';
  const writer = await member(t, nodes[0], 'writer', channel);
  for (let k = 0; k < 5; k++) {
    await writer.sub.publish(chatMessage(`m${k}`));
  }
  const reader = await member(t, nodes[1], 'reader', channel);
  assert.equal(reader.first.streamPosition.offset, 5);
  // Both nodes on the channel's feed, then one more publication through it.
  await waitUntil(async () => (await numsub(nodes.redis.url, `chat.pub.{${channel}}`)) === 2, { timeoutMs: 5000, what: 'both nodes subscribed in Redis' });
  await writer.sub.publish(chatMessage('m5'));
  await reader.pubs.waitCount(1, 5000);
  assert.deepEqual(reader.pubs.items.map((p) => [p.offset, p.data.text]), [[6, 'm5']]);
  assert.deepEqual(socketHistory(reader), [], `reader closed\n${nodeLogs(nodes)}`);
  assert.deepEqual(reader.subEvents, []);
  assert.deepEqual(await stateLost(nodes), { node0: 0, node1: 0 }, nodeLogs(nodes));
});

// The pub/sub connection comes back (as after any Redis outage) before any publication reached a
// node's subscription of a channel that already has history: the node checks the history for a
// gap, finds none, and keeps its subscribers.
test('pub/sub connection lost before the first publication reaches a fresh subscription: no gap, no 3010', { timeout: 30_000 }, async (t) => {
  const nodes = await startCluster(t, 2);
  const channel = 'chat:fresh';
  const writer = await member(t, nodes[0], 'writer', channel);
  for (let k = 0; k < 5; k++) {
    await writer.sub.publish(chatMessage(`m${k}`));
  }
  const reader = await member(t, nodes[1], 'reader', channel);
  assert.equal(reader.first.streamPosition.offset, 5);
  const feed = `chat.pub.{${channel}}`;
  await waitUntil(async () => (await numsub(nodes.redis.url, feed)) === 2, { timeoutMs: 5000, what: 'both nodes subscribed in Redis' });
  assert.deepEqual(socketHistory(reader), [], `reader closed before the pub/sub connections were killed (the previous test's case)\n${nodeLogs(nodes)}`);
  const r = await redisCommand(nodes.redis.url, 'CLIENT', 'KILL', 'TYPE', 'pubsub');
  assert.match(r, /^:[12]$/, `CLIENT KILL answered ${r}`);
  // Both nodes subscribed again: the node's check of the history runs from this confirmation.
  await waitUntil(async () => (await numsub(nodes.redis.url, feed)) === 2, { timeoutMs: 5000, what: 'both nodes subscribed again' });
  await writer.sub.publish(chatMessage('m5'));
  await reader.pubs.waitCount(1, 5000);
  assert.deepEqual(reader.pubs.items.map((p) => [p.offset, p.data.text]), [[6, 'm5']]);
  assert.deepEqual(socketHistory(reader), [], `reader closed\n${nodeLogs(nodes)}`);
  assert.deepEqual(await stateLost(nodes), { node0: 0, node1: 0 }, nodeLogs(nodes));
});
