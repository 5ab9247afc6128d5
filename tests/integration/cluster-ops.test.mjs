// Cluster operations: the node registry behind /api/info, the rate limit shared by every node,
// and what a node does when Redis stops answering without closing its sockets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, redisCommand } from './cluster-util.mjs';
import { stopChatd, connectClient, subscribe, chatMessage, waitUntil, scrapeMetrics, metricValue } from './helpers.mjs';

const API_KEY = 'cluster-ops-test-key';

async function info(srv, headers = { 'X-API-Key': API_KEY }) {
  const res = await fetch(`${srv.adminUrl}/api/info`, { headers });
  return { status: res.status, body: await res.json() };
}

const names = (body) => body.result.nodes.map((n) => n.name).sort();

test('/api/info lists the live nodes; a killed node leaves within its TTL, a draining one says so', { timeout: 30_000 }, async (t) => {
  const TTL_S = 2;
  const nodes = await startCluster(t, 3, { CHAT_API_KEY: API_KEY, CHAT_NODE_TTL: TTL_S });
  for (const srv of nodes) {
    await waitUntil(async () => names((await info(srv)).body).join() === 'node0,node1,node2',
      { timeoutMs: 5000, what: `${srv.nodeId} to list every node` });
  }
  const { body } = await info(nodes[0]);
  const byName = Object.fromEntries(body.result.nodes.map((n) => [n.name, n]));
  for (const srv of nodes) {
    assert.equal(byName[srv.nodeId].address, srv.publicAddr);
    assert.equal(byName[srv.nodeId].draining, false);
  }
  const client = await connectClient(t, nodes[1], { user: 'counted', url: nodes[1].wsUrl });
  await subscribe(client, 'chat:counted');
  await waitUntil(async () => {
    const n = (await info(nodes[0])).body.result.nodes.find((x) => x.name === 'node1');
    // Its channels: chat:counted and the user's personal channel every connection gets.
    return n.num_clients === 1 && n.num_channels === 2;
  }, { timeoutMs: 5000, what: "node1's client in node0's view" });
  assert.equal(metricValue(await scrapeMetrics(nodes[0]), 'chat_cluster_nodes'), 3);

  // The API wants its key, in either header form.
  assert.equal((await info(nodes[0], {})).status, 401);
  assert.equal((await info(nodes[0], { 'X-API-Key': 'wrong' })).status, 401);
  assert.equal((await info(nodes[0], { Authorization: `apikey ${API_KEY}` })).status, 200);

  await stopChatd(nodes[2], { signal: 'SIGKILL' });
  const killedAt = Date.now();
  await waitUntil(async () => names((await info(nodes[0])).body).join() === 'node0,node1',
    { timeoutMs: (TTL_S + 3) * 1000, what: 'the killed node to leave the registry' });
  // TTL plus one announcement period of the observer and scheduling slack.
  assert.ok(Date.now() - killedAt <= (TTL_S + 2) * 1000, `took ${Date.now() - killedAt} ms`);

  // A draining node announces it at once (its clients keep it alive for a moment).
  const stopping = stopChatd(nodes[1]);
  await waitUntil(async () => {
    const n = (await info(nodes[0])).body.result.nodes.find((x) => x.name === 'node1');
    return n === undefined || n.draining === true;
  }, { timeoutMs: 5000, what: 'node1 draining or gone' });
  assert.equal((await stopping).code, 0);
  // Stopped on purpose, it took itself out of the registry rather than waiting for its TTL.
  assert.equal(await redisCommand(nodes.redis.url, 'HEXISTS', '{chat}.nodes', 'node1'), ':0');
  assert.equal(await redisCommand(nodes.redis.url, 'HEXISTS', '{chat}.nodes', 'node0'), ':1');
});

test('one user publishing through three nodes is held to one rate limit', { timeout: 30_000 }, async (t) => {
  // One token per 10 s, a burst of 5: however the publishes spread, 5 pass in this test's
  // lifetime (a sixth only if it ran 10 s). Limited per node, 15 would.
  const nodes = await startCluster(t, 3, { CHAT_RATE_LIMITS: 'free=0.1/5' });
  const channel = 'chat:limited';
  const subs = [];
  for (const srv of nodes) {
    const c = await connectClient(t, srv, { user: 'eager', url: srv.wsUrl });
    subs.push((await subscribe(c, channel)).sub);
  }
  const started = Date.now();
  const outcomes = [];
  for (let i = 0; i < 15; i++) {
    try {
      await subs[i % 3].publish(chatMessage(`m${i}`));
      outcomes.push('ok');
    } catch (e) {
      outcomes.push(e.code);
    }
  }
  const extra = Math.floor((Date.now() - started) / 10_000);
  const ok = outcomes.filter((o) => o === 'ok').length;
  assert.equal(ok, 5 + extra, JSON.stringify(outcomes));
  assert.deepEqual([...new Set(outcomes.filter((o) => o !== 'ok'))], [429]);
  let fallbacks = 0;
  for (const srv of nodes) {
    const m = await scrapeMetrics(srv);
    assert.equal(metricValue(m, 'chat_rate_limit_shared'), 1);
    fallbacks += metricValue(m, 'chat_rate_limit_fallback_total');
  }
  assert.equal(fallbacks, 0);
});

test('Redis that stops answering: the node times out, turns not ready, falls back to its own limiter, and recovers', { timeout: 40_000 }, async (t) => {
  const nodes = await startCluster(t, 1, { CHAT_RATE_LIMITS: 'free=100/100' });
  const [srv] = nodes;
  const redis = nodes.redis;
  const client = await connectClient(t, srv, { user: 'patient', url: srv.wsUrl });
  const { sub } = await subscribe(client, 'chat:hung');
  await sub.publish(chatMessage('before'));

  // SIGSTOP keeps the sockets open: only the node's own command timeout can tell.
  redis.child.kill('SIGSTOP');
  t.after(() => { try { redis.child.kill('SIGCONT'); } catch { /* already gone */ } });
  const stoppedAt = Date.now();
  const hung = sub.publish(chatMessage('during')).then(() => 'ok', (e) => e.code);
  await waitUntil(async () => (await fetch(`${srv.adminUrl}/readyz`)).status === 503,
    { timeoutMs: 10_000, what: 'not ready while Redis hangs' });
  assert.equal(await hung, 100, 'the publish waiting on the hung Redis fails as temporary');
  assert.ok(Date.now() - stoppedAt < 8000, `detected after ${Date.now() - stoppedAt} ms`);
  let m = await scrapeMetrics(srv);
  assert.ok(metricValue(m, 'chat_broker_timeouts_total') >= 1);
  // With the shared limiter unreachable the local one decides; the publish itself still fails
  // fast because Redis is what stores it.
  const before = metricValue(m, 'chat_rate_limit_fallback_total');
  const t0 = Date.now();
  await assert.rejects(sub.publish(chatMessage('while down')), (e) => e.code === 100);
  assert.ok(Date.now() - t0 < 1000, 'publishes fail fast while Redis is unreachable');
  m = await scrapeMetrics(srv);
  assert.equal(metricValue(m, 'chat_rate_limit_fallback_total'), before + 1);
  assert.equal(client.state, 'connected', 'local clients keep their sockets');

  redis.child.kill('SIGCONT');
  await waitUntil(async () => (await fetch(`${srv.adminUrl}/readyz`)).status === 200,
    { timeoutMs: 10_000, what: 'ready again' });
  await sub.publish(chatMessage('after'));
});
