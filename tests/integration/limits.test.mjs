// Connection limits changed at run time with `chatctl limits` on a two-node cluster: the
// per-user cap (close 3504), the node's connect rate (close 3013, the SDKs come back after their
// backoff) and the node-wide cap (HTTP 503); each node applies the values asked of it, and a bad
// value changes nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runChatctl, RawClient, metricValue, scrapeMetrics, userToken, waitUntil, withTimeout } from './helpers.mjs';
import { startCluster } from './cluster-util.mjs';

const API_KEY = 'limits-test-key';

function ctl(srv, ...args) {
  return runChatctl(args, { CHAT_ADMIN_LISTEN: srv.adminAddr, CHAT_API_KEY: API_KEY });
}

async function limits(srv, ...args) {
  const r = await ctl(srv, '--json', 'limits', ...args);
  assert.equal(r.code, 0, `chatctl limits ${args.join(' ')}: ${r.stderr}`);
  return Object.fromEntries(JSON.parse(r.stdout).map((n) => [n.node, n]));
}

/** Opens a WebSocket and sends connect as user: {reply} when the node took it, {closed} when it
 * closed the socket instead, {status} when it refused the upgrade. */
async function tryConnect(t, srv, user) {
  const c = new RawClient(srv.wsUrl);
  t.after(() => c.close());
  const refused = new Promise((resolve) => c.ws.once('unexpected-response', (req, res) => {
    res.resume();
    resolve({ status: res.statusCode });
  }));
  const opened = await withTimeout(Promise.race([c.opened.then(() => null), refused]), 5000, 'the handshake');
  if (opened) return opened;
  const reply = c.call('connect', { token: userToken(user), name: 'limits-test' });
  return withTimeout(Promise.race([
    reply.then((r) => ({ reply: r, client: c }), () => c.closed.then((closed) => ({ closed }))),
    c.closed.then((closed) => ({ closed })),
  ]), 5000, `connect of ${user}`);
}

test('chatctl limits: read and changed at run time on every node', async (t) => {
  const [n1, n2] = await startCluster(t, 2, { CHAT_API_KEY: API_KEY });

  let before;
  await waitUntil(async () => Object.keys(before = await limits(n1, 'get')).length === 2,
    { timeoutMs: 5000, what: 'both nodes in the registry' });
  assert.deepEqual(Object.keys(before).sort(), ['node0', 'node1']);
  for (const n of Object.values(before)) {
    assert.equal(n.max_connections_per_user, 64);
    assert.equal(n.connect_rate, 0);
    assert.ok(n.max_connections > 1000, 'the default cap follows the open-file limit');
  }
  const table = await ctl(n1, 'limits', 'get');
  assert.match(table.stdout, /^NODE\s+CONNECTIONS\s+MAX_CONNECTIONS\s+PER_USER\s+CONNECT_RATE\s+CONNECT_BURST$/m);
  assert.match(table.stdout, /^node1\s+0\s+\d+\s+64\s+0\s+0$/m);

  // Per user: one connection per node from now on.
  const set = await limits(n1, 'set', 'max_connections_per_user=1');
  assert.equal(set.node0.max_connections_per_user, 1);
  assert.equal(set.node1.max_connections_per_user, 1);
  const first = await tryConnect(t, n2, 'ann');
  assert.ok(first.reply?.client, 'the first connection of ann is taken');
  const second = await tryConnect(t, n2, 'ann');
  assert.equal(second.closed?.code, 3504, `second connection of ann: ${JSON.stringify(second)}`);
  assert.ok((await tryConnect(t, n1, 'ann')).reply?.client, 'the cap is per node');
  assert.ok((await tryConnect(t, n2, 'bob')).reply?.client, 'the cap is per user');

  // Connect rate on one node only: 4 per second with a burst of 4. A burst of 20 sockets gets
  // the burst and what the rate refills while they arrive; the rest are closed with 3013.
  const one = await limits(n1, 'set', 'connect_rate=4', 'connect_burst=4', 'max_connections_per_user=64', '--node', 'node1');
  assert.deepEqual(Object.keys(one), ['node1']);
  assert.equal((await limits(n1, 'get')).node0.connect_rate, 0, 'the other node keeps its rate');
  const started = Date.now();
  const burst = await Promise.all(Array.from({ length: 20 }, (_, i) => tryConnect(t, n2, `u${i}`)));
  const elapsedS = (Date.now() - started) / 1000;
  const taken = burst.filter((r) => r.reply?.client).length;
  const closed = burst.filter((r) => r.closed);
  assert.equal(taken + closed.length, 20, JSON.stringify(burst.filter((r) => !r.reply && !r.closed)));
  assert.ok(taken >= 4 && taken <= 4 + Math.ceil(elapsedS * 4) + 1, `${taken} taken in ${elapsedS} s`);
  for (const c of closed) {
    assert.deepEqual(c.closed, { code: 3013, reason: 'too many requests' });
  }
  const m2 = await scrapeMetrics(n2);
  assert.equal(metricValue(m2, 'chat_connections_refused_total', { reason: 'rate' }), closed.length);
  assert.equal(metricValue(m2, 'chat_disconnects_total', { code: '3013' }), closed.length);
  // Unlimited again: the same burst is taken whole.
  await limits(n1, 'set', 'connect_rate=0', '--node', 'node1');
  const again = await Promise.all(Array.from({ length: 20 }, (_, i) => tryConnect(t, n2, `v${i}`)));
  assert.equal(again.filter((r) => r.reply?.client).length, 20);

  // Node-wide cap: upgrades over it get HTTP 503; node0 holds one client (ann).
  await limits(n1, 'set', 'max_connections=2', '--node', 'node0');
  assert.ok((await tryConnect(t, n1, 'cat')).reply?.client);
  assert.deepEqual(await tryConnect(t, n1, 'dan'), { status: 503 });
  const back = await limits(n1, 'set', 'max_connections=0', '--node', 'node0');
  assert.equal(back.node0.max_connections, before.node0.max_connections, '0 restores the default');
  assert.ok((await tryConnect(t, n1, 'dan')).reply?.client);

  // Bad values change nothing: the node's error (1), chatctl's usage (2).
  const zero = await ctl(n1, 'limits', 'set', 'connect_rate=9', 'max_connections_per_user=0');
  assert.equal(zero.code, 1);
  assert.match(zero.stderr, /error 107: .*max_connections_per_user is at least 1/);
  const huge = await ctl(n1, 'limits', 'set', 'max_connections=4000000000');
  assert.equal(huge.code, 1);
  assert.match(huge.stderr, /over what the open-file limit allows/);
  const after = await limits(n1, 'get');
  assert.equal(after.node0.connect_rate, 0, 'a refused set applies none of its values');
  assert.equal(after.node0.max_connections_per_user, 1, 'as the first set left it');
  assert.equal((await ctl(n1, 'limits', 'set', 'frobs=1')).code, 2);
  assert.equal((await ctl(n1, 'limits', 'set', 'connect_rate=-1')).code, 2);
  assert.equal((await ctl(n1, 'limits', 'get', 'connect_rate=1')).code, 2);
  assert.equal((await ctl(n1, 'limits')).code, 2);
  assert.equal((await ctl(n1, 'limits', 'get', '--node', 'node9')).code, 1);
});

test('limits: the connect rate of the configuration holds from the start', async (t) => {
  const [n] = await startCluster(t, 1, { CHAT_API_KEY: API_KEY, CHAT_CONNECT_RATE: '2', CHAT_CONNECT_BURST: '3' });
  const got = await limits(n, 'get');
  assert.equal(got.node0.connect_rate, 2);
  assert.equal(got.node0.connect_burst, 3);
  const burst = await Promise.all(Array.from({ length: 10 }, (_, i) => tryConnect(t, n, `w${i}`)));
  const taken = burst.filter((r) => r.reply?.client).length;
  assert.ok(taken >= 3 && taken <= 5, `${taken} of 10 taken: ${JSON.stringify(burst.map((r) => r.closed || r.status || "ok"))}`);
  assert.equal(burst.filter((r) => r.closed?.code === 3013).length, 10 - taken);
});
