// The dispatcher across a cluster: two chatd nodes on one real redis-server and one llm-mock.
// The cluster-wide concurrency limit holds across nodes, a killed node's leases come back within
// the lease TTL, and a provider breaker opened on one node stops the other nodes too.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connectClient, startChatd, stopChatd, subscribe, waitUntil, withTimeout } from './helpers.mjs';
import { startRedis, waitReady } from './cluster-util.mjs';
import { API_KEY, ask, chatctl, llmState, providerEnv, startMock, waitLlmState, watchAnswer } from './llm-util.mjs';

const RATES = 'free=1000/1000,plus=1000/1000,pro=1000/1000,executive=1000/1000';
const QUOTAS = 'free=0/0,plus=0/0,pro=0/0,executive=0/0';

/** Two nodes on one Redis; nodeEnv[i] is merged into node i's environment. */
async function twoNodes(t, mock, common, nodeEnv = [{}, {}]) {
  const redis = await startRedis(t);
  const nodes = [];
  for (let i = 0; i < 2; i++) {
    nodes.push(await startChatd(t, {
      env: {
        REDIS_URL: redis.url,
        CHAT_NODE_ID: `node${i}`,
        CHAT_API_KEY: API_KEY,
        CHAT_RATE_LIMITS: RATES,
        CHAT_LLM_QUOTAS: QUOTAS,
        ...common,
        ...nodeEnv[i],
      },
    }));
  }
  await waitReady(nodes);
  return nodes;
}

const providers = (mock, keys) => JSON.stringify([providerEnv(mock, { keys })]);
const retryAfter = (msg) => Number(/retry_after_ms=(\d+)/.exec(msg)[1]);

test('two nodes, cluster limit 4, 40 concurrent asks: the provider never sees more than 4 streams', async (t) => {
  const mock = await startMock(t);
  // About 300 ms per answer, so 40 asks through 4 slots take several rounds.
  await mock.control({ key: '*', scenario: 'ok', tokens: 10, ttft_ms: 100, tokens_per_s: 50 });
  const nodes = await twoNodes(t, mock, {
    CHAT_LLM_CONCURRENCY: '4',
    CHAT_LLM_PROVIDERS: providers(mock, ['k1', 'k2']),
  });
  const room = 'chat:limit';
  // One watcher per node: every answer reaches both, whichever node streams it.
  const watchers = [];
  for (const srv of nodes) {
    const c = await connectClient(t, srv, { user: `watch-${srv.nodeId}` });
    const { sub } = await subscribe(c, room);
    const finals = new Set();
    sub.on('publication', (ctx) => {
      if (ctx.data && ctx.data.type === 'message' && ctx.data.request_id) finals.add(ctx.data.request_id);
    });
    watchers.push(finals);
  }
  const askers = [];
  for (let i = 0; i < 40; i++) {
    const c = await connectClient(t, nodes[i % 2], { user: `asker${i}` });
    await subscribe(c, room);
    askers.push(c);
  }
  const answers = await Promise.all(askers.map((c, i) => ask(c, room, `question ${i}`)));
  const ids = answers.map((a) => a.request_id);
  assert.equal(new Set(ids).size, 40);
  await waitUntil(() => watchers.every((f) => ids.every((id) => f.has(id))),
    { timeoutMs: 30000, what: 'all 40 answers stored and seen on both nodes' });
  const st = await mock.stats();
  assert.equal(st.streams_completed, 40, JSON.stringify(st));
  assert.ok(st.streams_open_max <= 4, `llm-mock saw ${st.streams_open_max} streams at once`);
  // The limit is a ceiling, not a throttle: the cluster used it.
  assert.ok(st.streams_open_max >= 3, `only ${st.streams_open_max} streams at once`);
  for (const srv of nodes) {
    const s = await llmState(srv);
    assert.equal(s.leases.length, 0, `${srv.nodeId} holds no lease after the work: ${JSON.stringify(s.leases)}`);
  }
});

test('kill -9 of a node holding leases: the other node gets the capacity back within the lease TTL', async (t) => {
  const TTL = 3000;
  const mock = await startMock(t);
  // Node 0's key hangs (the stream holds its lease until the node dies); node 1's answers.
  await mock.control({ key: 'hang-key', scenario: 'hang' });
  await mock.control({ key: 'ok-key', scenario: 'ok', tokens: 4 });
  const common = { CHAT_LLM_CONCURRENCY: '2', CHAT_LLM_LEASE_TTL_MS: String(TTL), CHAT_LLM_TTFT_TIMEOUT_MS: '60000' };
  const [n0, n1] = await twoNodes(t, mock, common, [
    { CHAT_LLM_PROVIDERS: providers(mock, ['hang-key']) },
    { CHAT_LLM_PROVIDERS: providers(mock, ['ok-key']) },
  ]);
  const room = 'chat:lease';
  const a = await connectClient(t, n0, { user: 'holder' });
  await subscribe(a, room);
  await ask(a, room, 'first');
  await ask(a, room, 'second');
  await waitUntil(async () => (await mock.stats()).keys?.['hang-key']?.requests === 2,
    { what: 'both hanging streams reached the provider' });
  assert.equal((await llmState(n0)).leases.length, 2);

  const b = await connectClient(t, n1, { user: 'waiter' });
  const { sub } = await subscribe(b, room);
  let id = null;
  const w = watchAnswer(sub, () => id);
  let startedAt = null;
  sub.on('publication', (ctx) => {
    if (ctx.data?.type === 'llm.start' && ctx.data.request_id === id) startedAt = Date.now();
  });
  id = (await ask(b, room, 'third')).request_id;
  w.sync();
  // Node 1 keeps it queued while node 0 holds both slots of the cluster.
  await waitLlmState(n1, (s) => s.queue.entries.length === 1 && s.leases.length === 0, 'queued on node 1');
  assert.equal((await mock.stats()).keys['ok-key'].requests, 0, 'no stream past the cluster limit');
  // Still queued well past the renewal period: the held leases are renewed, not lost.
  await new Promise((r) => setTimeout(r, TTL / 2));
  assert.equal((await llmState(n1)).queue.entries.length, 1, 'still queued while the holder lives');

  const killedAt = Date.now();
  await stopChatd(n0, { signal: 'SIGKILL' });
  await withTimeout(w.done, 4 * TTL, 'the queued ask answered after the kill');
  assert.ok(w.final, 'answered once the dead node\'s leases expired');
  const waited = startedAt - killedAt;
  // The leases were renewed at most TTL/3 before the kill; 1.5 s covers the retry interval and a
  // busy machine.
  assert.ok(waited <= TTL + 1500, `capacity came back ${waited} ms after the kill (TTL ${TTL} ms)`);
  assert.equal((await mock.stats()).keys['ok-key'].statuses['200'], 1);
});

test('a provider breaker opened on one node stops the other node too', async (t) => {
  const mock = await startMock(t);
  await mock.control({ key: 'bad-key', scenario: 'server_error' });
  await mock.control({ key: 'good-key', scenario: 'ok', tokens: 4 });
  const [n0, n1] = await twoNodes(t, mock, {}, [
    { CHAT_LLM_PROVIDERS: providers(mock, ['bad-key']) },
    { CHAT_LLM_PROVIDERS: providers(mock, ['good-key']) },
  ]);
  const room = 'chat:breaker';
  const a = await connectClient(t, n0, { user: 'alice' });
  const { sub } = await subscribe(a, room);
  // Sustained 5xx on node 0 until its provider breaker opens.
  let opened = false;
  for (let i = 0; i < 8 && !opened; i++) {
    let id = null;
    const w = watchAnswer(sub, () => id);
    try {
      id = (await ask(a, room, `fail ${i}`)).request_id;
      w.sync();
      await withTimeout(w.done, 10000, 'a failing ask ended');
    } catch (e) {
      assert.equal(e.code, 502, e.message);
    }
    w.stop();
    opened = (await llmState(n0)).providers[0].breaker.state === 'open';
  }
  assert.ok(opened, 'node 0 opened its provider breaker');
  assert.equal((await mock.stats()).keys['good-key'].requests, 0);

  // Node 1 never saw a failure of its own; it learns of the open breaker through Redis.
  const s1 = await waitLlmState(n1, (s) => s.providers[0].breaker.state === 'open', 'breaker open on node 1', 5000);
  assert.ok(s1.providers[0].breaker.open_ms > 0);
  const b = await connectClient(t, n1, { user: 'bob' });
  await subscribe(b, room);
  await assert.rejects(ask(b, room, 'while open elsewhere'),
    (e) => e.code === 502 && retryAfter(e.message) > 0);
  assert.equal((await mock.stats()).keys['good-key'].requests, 0, 'no upstream call from node 1 while open');

  // An operator closes the breaker on node 1 (chatctl, that node only): the shared decision
  // ends, so node 0 closes too.
  const closed = await chatctl(n1, '--json', 'llm', 'breaker-close', 'p1', '--node', 'node1');
  assert.equal(closed.code, 0, closed.stderr);
  assert.deepEqual(JSON.parse(closed.stdout), { nodes: ['node1'] });
  assert.equal((await chatctl(n0, 'llm', 'breaker-close', 'nope')).code, 1, 'an unknown provider');
  assert.equal((await chatctl(n0, 'llm', 'breaker-close')).code, 2);
  assert.equal((await llmState(n1)).providers[0].breaker.state, 'closed');
  await waitLlmState(n0, (s) => s.providers[0].breaker.state === 'closed', 'breaker closed on node 0', 5000);
  // Node 1 stays closed past its next reads of the shared decision, and serves again.
  let id = null;
  const w = watchAnswer(sub, () => id);
  id = (await ask(b, room, 'after the operator closed it')).request_id;
  w.sync();
  await withTimeout(w.done, 10000, 'answer after the breaker closed');
  assert.ok(w.final, 'node 1 serves again');
  assert.equal((await mock.stats()).keys['good-key'].statuses['200'], 1);
});

test('drain of a node streaming an answer: the answer finishes in the room, an ask not started gets 503, the node exits 0', async (t) => {
  const mock = await startMock(t);
  // About 1.5 s per answer: the drain (200 ms) closes its clients while it streams.
  await mock.control({ key: '*', scenario: 'ok', tokens: 30, ttft_ms: 50, tokens_per_s: 20 });
  const [n0, n1] = await twoNodes(t, mock, {
    CHAT_LLM_CONCURRENCY: '1',
    CHAT_LLM_PROVIDERS: providers(mock, ['k1']),
    CHAT_DRAIN_PERIOD_MS: '200',
  });
  const room = 'chat:drain-llm';
  const alice = await connectClient(t, n0, { user: 'alice' });
  await subscribe(alice, room);
  const bob = await connectClient(t, n1, { user: 'bob' });
  const { sub } = await subscribe(bob, room);
  const ids = { first: null, second: null };
  const first = watchAnswer(sub, () => ids.first);
  const second = watchAnswer(sub, () => ids.second);
  let firstStarted;
  const started = new Promise((r) => { firstStarted = r; });
  sub.on('publication', (ctx) => { if (ctx.data?.type === 'llm.delta' && ctx.data.request_id === ids.first) firstStarted(); });
  ids.first = (await ask(alice, room, 'a long answer please')).request_id;
  ids.second = (await ask(alice, room, 'and another')).request_id; // queued: one slot in the cluster
  first.sync(); second.sync();
  await withTimeout(started, 5000, 'the first answer streaming');

  n0.stopRequested = true;
  const res = await fetch(`${n0.adminUrl}/api/node/drain`, { method: 'POST', headers: { 'X-API-Key': API_KEY }, body: '{}' });
  assert.equal(res.status, 200);
  await withTimeout(second.done, 5000, 'the queued ask ended');
  assert.equal(second.error?.data.code, 503, JSON.stringify(second.error?.data));
  assert.match(second.error.data.message, /draining/);
  await withTimeout(first.done, 10000, 'the streaming answer ended');
  assert.ok(first.final, `the answer was stored whole: ${JSON.stringify(first.error?.data)}`);
  assert.equal(first.final.data.cancelled, undefined, 'not cancelled');
  assert.equal(first.final.data.interrupted, undefined, 'not interrupted');
  assert.equal(first.final.data.usage.output_tokens, 30);
  assert.equal(first.final.data.text, first.deltas.map((d) => d.data.text).join(''));
  const exit = await withTimeout(n0.exited, 10000, 'the drained node exiting');
  assert.equal(exit.code, 0);
});

test('drain: an answer still running past CHAT_DRAIN_LLM_MS is cut and stored as cancelled', async (t) => {
  const mock = await startMock(t);
  // 100 tokens at 10/s: 10 s, far past the drain's 200 ms period + 500 ms for answers.
  await mock.control({ key: '*', scenario: 'ok', tokens: 100, ttft_ms: 50, tokens_per_s: 10 });
  const [n0, n1] = await twoNodes(t, mock, {
    CHAT_LLM_PROVIDERS: providers(mock, ['k1']),
    CHAT_DRAIN_PERIOD_MS: '200',
    CHAT_DRAIN_LLM_MS: '500',
  });
  const room = 'chat:drain-cut';
  const alice = await connectClient(t, n0, { user: 'alice' });
  await subscribe(alice, room);
  const bob = await connectClient(t, n1, { user: 'bob' });
  const { sub } = await subscribe(bob, room);
  let id = null;
  const w = watchAnswer(sub, () => id);
  let streaming;
  const started = new Promise((r) => { streaming = r; });
  sub.on('publication', (ctx) => { if (ctx.data?.type === 'llm.delta' && ctx.data.request_id === id) streaming(); });
  id = (await ask(alice, room, 'a very long answer')).request_id;
  w.sync();
  await withTimeout(started, 5000, 'the answer streaming');
  n0.stopRequested = true;
  const t0 = Date.now();
  await fetch(`${n0.adminUrl}/api/node/drain`, { method: 'POST', headers: { 'X-API-Key': API_KEY }, body: '{}' });
  await withTimeout(w.done, 8000, 'the cut answer stored');
  assert.ok(w.final, JSON.stringify(w.error?.data));
  assert.equal(w.final.data.cancelled, true);
  assert.ok(w.final.data.text.length > 0 && w.final.data.text === w.deltas.map((d) => d.data.text).join(''));
  const exit = await withTimeout(n0.exited, 8000, 'the drained node exiting');
  assert.equal(exit.code, 0);
  assert.ok(Date.now() - t0 < 5000, `cut within the drain's bounds, not after the answer (${Date.now() - t0} ms)`);
});
