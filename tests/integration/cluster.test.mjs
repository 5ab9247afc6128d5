// Cluster mode: several chatd nodes share channels through a real redis-server on loopback.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, startRedis, redisCommand } from './cluster-util.mjs';
import { startChatd, stopChatd, connectClient, newClient, subscribe, Collector, chatMessage, waitUntil, waitEvent, delay, scrapeMetrics, metricValue } from './helpers.mjs';

test('10 publishers over 3 nodes: every subscriber gets every publication once, in one order', { timeout: 60_000 }, async (t) => {
  const nodes = await startCluster(t, 3);
  const channel = 'chat:cluster';
  const PUBLISHERS = 10;
  const PER_PUBLISHER = 30;
  const total = PUBLISHERS * PER_PUBLISHER;

  const subscribers = [];
  for (let i = 0; i < 6; i++) {
    const client = await connectClient(t, nodes[i % 3], { user: `reader${i}`, url: nodes[i % 3].wsUrl });
    const { sub } = await subscribe(client, channel);
    subscribers.push(new Collector(sub, 'publication'));
  }
  const publishers = [];
  for (let i = 0; i < PUBLISHERS; i++) {
    const client = await connectClient(t, nodes[i % 3], { user: `writer${i}`, url: nodes[i % 3].wsUrl });
    const { sub } = await subscribe(client, channel);
    publishers.push(sub);
  }
  await Promise.all(publishers.map(async (sub, p) => {
    for (let k = 0; k < PER_PUBLISHER; k++) {
      await sub.publish(chatMessage(`${p}:${k}`, `p${p}-${k}`));
    }
  }));

  const orders = [];
  for (const c of subscribers) {
    await c.waitCount(total, 20_000);
    const offsets = c.items.map((p) => p.offset);
    // Offsets are the channel's one total order: consecutive, none missing, none twice.
    assert.deepEqual(offsets, Array.from({ length: total }, (_, i) => offsets[0] + i));
    const texts = c.items.map((p) => p.data.text);
    assert.equal(new Set(texts).size, total);
    // Each publisher's messages keep their own order.
    for (let p = 0; p < PUBLISHERS; p++) {
      const mine = texts.filter((x) => x.startsWith(`${p}:`)).map((x) => Number(x.split(':')[1]));
      assert.deepEqual(mine, Array.from({ length: PER_PUBLISHER }, (_, k) => k));
    }
    orders.push(texts.join('|'));
  }
  assert.equal(new Set(orders).size, 1, 'subscribers on different nodes saw different orders');
});

test('a client recovers on another node what was published while it was away', { timeout: 30_000 }, async (t) => {
  const nodes = await startCluster(t, 2);
  const channel = 'chat:moving';
  const writer = await connectClient(t, nodes[1], { user: 'writer', url: nodes[1].wsUrl });
  const { sub: wsub } = await subscribe(writer, channel);
  for (let i = 0; i < 3; i++) {
    await wsub.publish(chatMessage(`before ${i}`));
  }

  const first = await connectClient(t, nodes[0], { user: 'mover', url: nodes[0].wsUrl });
  const { ctx } = await subscribe(first, channel, { recoverable: true, positioned: true });
  const position = ctx.streamPosition;
  assert.equal(position.offset, 3);
  first.disconnect();

  for (let i = 0; i < 5; i++) {
    await wsub.publish(chatMessage(`missed ${i}`));
  }

  const second = await connectClient(t, nodes[1], { user: 'mover', url: nodes[1].wsUrl });
  const sub = second.newSubscription(channel, { since: position, recoverable: true, positioned: true });
  const got = new Collector(sub, 'publication');
  const subscribed = new Promise((resolve) => sub.once('subscribed', resolve));
  sub.subscribe();
  const sctx = await subscribed;
  assert.equal(sctx.wasRecovering, true);
  assert.equal(sctx.recovered, true);
  await got.waitCount(5, 5000);
  assert.deepEqual(got.items.map((p) => p.data.text), [0, 1, 2, 3, 4].map((i) => `missed ${i}`));
  assert.deepEqual(got.items.map((p) => p.offset), [4, 5, 6, 7, 8]);
});

test('presence is shared across nodes; a subscribe sent with the connect waits for it', { timeout: 30_000 }, async (t) => {
  const nodes = await startCluster(t, 2);
  const channel = 'chat:together';
  const a = await connectClient(t, nodes[0], { user: 'ann', url: nodes[0].wsUrl });
  await subscribe(a, channel);
  // ben's subscription exists before he connects: the SDK sends its subscribe in the same frame
  // as connect, which a cluster node answers only after Redis did.
  const b = newClient(t, nodes[1], { user: 'ben', url: nodes[1].wsUrl });
  const sub = b.newSubscription(channel);
  const subscribed = waitEvent(sub, 'subscribed', { timeoutMs: 5000, what: 'pipelined subscribe' });
  sub.subscribe();
  b.connect();
  await subscribed;
  const users = Object.values((await sub.presence()).clients).map((c) => c.user).sort();
  assert.deepEqual(users, ['ann', 'ben']);
  const stats = await sub.presenceStats();
  assert.equal(stats.numUsers, 2);
});

test('presence outlives its TTL while the node lives, and a killed node\'s users leave it', { timeout: 30_000 }, async (t) => {
  const TTL_S = 3;
  const nodes = await startCluster(t, 2, { CHAT_PRESENCE_TTL: TTL_S });
  const channel = 'chat:ttl';
  const a = await connectClient(t, nodes[0], { user: 'ann', url: nodes[0].wsUrl });
  await subscribe(a, channel);
  const b = await connectClient(t, nodes[1], { user: 'ben', url: nodes[1].wsUrl });
  const { sub } = await subscribe(b, channel, { joinLeave: true });
  const leaves = [];
  sub.on('leave', (ctx) => leaves.push(ctx.info));
  const users = async () => Object.values((await sub.presence()).clients).map((c) => c.user).sort();
  assert.deepEqual(await users(), ['ann', 'ben']);

  // Nothing to observe here but the passing of time: the entries must survive past the TTL
  // because their nodes refresh them.
  await delay((TTL_S + 1.5) * 1000);
  assert.deepEqual(await users(), ['ann', 'ben']);

  await stopChatd(nodes[0], { signal: 'SIGKILL' });
  const killedAt = Date.now();
  await waitUntil(async () => (await users()).join() === 'ben',
    { timeoutMs: (TTL_S + 2) * 1000, what: "ann's entry to expire" });
  assert.ok(Date.now() - killedAt <= (TTL_S + 2) * 1000);
  // Her leave is announced once, by the node that found the entry expired; no one else left.
  await waitUntil(() => leaves.length > 0,
    { timeoutMs: (TTL_S + 2) * 1000, what: "ann's leave event" });
  assert.ok(Date.now() - killedAt <= (TTL_S + 2) * 1000 + TTL_S * 1000 / 3);
  await sub.presence(); // one more round trip to Redis: a second leave would be here by now
  assert.deepEqual(leaves.map((i) => [i.user, i.client]), [['ann', a.clientId]]);
});

test('pub/sub connections killed in Redis: every subscriber still gets every publication, in order', { timeout: 60_000 }, async (t) => {
  const { url } = await startRedis(t);
  const nodes = [];
  for (let i = 0; i < 2; i++) {
    nodes.push(await startChatd(t, { env: { REDIS_URL: url, CHAT_NODE_ID: `node${i}`, CHAT_RATE_LIMITS: 'free=100000/100000' } }));
  }
  for (const srv of nodes) {
    await waitUntil(async () => (await fetch(`${srv.adminUrl}/readyz`)).status === 200, { timeoutMs: 5000, what: 'node ready' });
  }
  const channel = 'chat:killed';
  const readers = [];
  for (let i = 0; i < 2; i++) {
    const c = await connectClient(t, nodes[i], { user: `reader${i}`, url: nodes[i].wsUrl });
    const { sub } = await subscribe(c, channel);
    readers.push(new Collector(sub, 'publication'));
  }
  const writer = await connectClient(t, nodes[1], { user: 'writer', url: nodes[1].wsUrl });
  const { sub: wsub } = await subscribe(writer, channel);
  const TOTAL = 150;
  let kills = 0;
  // While the writer's node is not subscribed again its publishes fail with the temporary error
  // (it acknowledges none its own subscribers could not get); the writer retries, as clients
  // should. The other node may be back later: what it missed meanwhile comes from history.
  const refused = [];
  for (let i = 0; i < TOTAL; i++) {
    if (i === 40 || i === 100) {
      const r = await redisCommand(url, 'CLIENT', 'KILL', 'TYPE', 'pubsub');
      assert.match(r, /^:[1-9]/, `CLIENT KILL answered ${r}`);
      kills++;
    }
    const msg = chatMessage(`n${i}`);
    for (let attempt = 0; ; attempt++) {
      try {
        await wsub.publish(msg);
        break;
      } catch (err) {
        assert.ok(err.code === 100 && err.temporary === true && attempt < 100, `publish n${i} failed with ${JSON.stringify(err)} (attempt ${attempt})`);
        refused.push(i);
        await delay(10);
      }
    }
  }
  assert.equal(kills, 2);
  t.diagnostic(`publishes refused while the writer's node re-subscribed: ${refused.length}`);
  for (const r of readers) {
    await r.waitCount(TOTAL, 15_000);
    assert.deepEqual(r.items.map((p) => p.data.text), Array.from({ length: TOTAL }, (_, i) => `n${i}`));
    assert.deepEqual(r.items.map((p) => p.offset), Array.from({ length: TOTAL }, (_, i) => i + 1));
  }
  // The gaps were filled from history, not given up on.
  for (const srv of nodes) {
    assert.equal(metricValue(await scrapeMetrics(srv), 'chat_state_lost_total'), 0);
  }
});
