// CHAT_LOG_FORMAT=json: one JSON object per line, each with time, level, node; a client command's
// trace id on every line it causes, in the chat layer, in the Redis calls it makes and in the
// assistant request it starts; and no secret, token or key in any line, error paths included.
// (helpers.mjs checks every chatd of every test for the secrets it was given as well.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, connectClient, subscribe, Collector, newClient, waitEvent, waitUntil, userToken, JWT_SECRET, chatMessage } from './helpers.mjs';
import { startRedis } from './cluster-util.mjs';
import { startMock, providerEnv, ask, watchAnswer, API_KEY } from './llm-util.mjs';

const PROVIDER_KEY = 'sk-live-logs-test-0123456789abcdef';
const FALLBACK_KEY = 'sk-fallback-logs-test-fedcba9876543210';

function jsonLines(srv) {
  return srv.stderr.split('\n').filter((l) => l !== '').map((l) => {
    try {
      return JSON.parse(l);
    } catch {
      assert.fail(`a log line that is not JSON: ${l}`);
    }
  });
}

test('json logs: one command\'s trace id on every line it causes, through Redis and the assistant', async (t) => {
  const redis = await startRedis(t);
  const mock = await startMock(t);
  await mock.control({ key: '*', scenario: 'ok', tokens: 8, tokens_per_s: 400 });
  const srv = await startChatd(t, {
    env: {
      REDIS_URL: redis.url,
      CHAT_NODE_ID: 'logs-node',
      CHAT_API_KEY: API_KEY,
      CHAT_LOG_FORMAT: 'json',
      CHAT_LOG_LEVEL: 'debug',
      CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock, { keys: [PROVIDER_KEY] })]),
    },
  });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(alice, 'chat:logs');
  const seen = new Collector(sub, 'publication');
  await alice.publish('chat:logs', chatMessage('traced'));
  await seen.waitCount(1);
  let id = null;
  const w = watchAnswer(sub, () => id);
  id = (await ask(alice, 'chat:logs', 'say something')).request_id;
  w.sync();
  await w.done;
  assert.ok(w.final, 'answered');
  // The last lines of the request (its end) are written before the final message goes out.
  await waitUntil(() => jsonLines(srv).some((l) => l.msg === 'llm request ended' && l.request === id),
    { what: 'the request\'s last line' });

  const lines = jsonLines(srv);
  for (const l of lines) {
    assert.match(l.ts, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(['error', 'warn', 'info', 'debug'].includes(l.level), JSON.stringify(l));
    assert.equal(typeof l.msg, 'string');
  }
  assert.ok(lines.filter((l) => l.module !== 'lws').every((l) => l.node === 'logs-node'),
    'every line of the node names it');

  // The publish: its command line, and the Redis publish it caused, under one trace.
  const pubCmd = lines.find((l) => l.msg === 'command' && l.method === 'publish');
  assert.ok(pubCmd, 'the publish command is logged at debug');
  assert.equal(pubCmd.user, 'alice');
  assert.match(pubCmd.conn, /^[0-9a-f-]{8,}$/);
  assert.match(pubCmd.trace, /^[0-9a-f]{16}$/);
  const pubLines = lines.filter((l) => l.trace === pubCmd.trace);
  assert.ok(pubLines.some((l) => l.module === 'cluster' && l.msg === 'redis call' && l.op === 'publish'),
    JSON.stringify(pubLines));

  // The ask: the rpc command's trace is on every line about its request, in every module.
  const askCmd = lines.find((l) => l.msg === 'command' && l.method === 'rpc');
  assert.ok(askCmd);
  assert.notEqual(askCmd.trace, pubCmd.trace, 'each command has its own trace');
  const about = lines.filter((l) => l.request === id);
  assert.ok(about.some((l) => l.msg === 'llm attempt'), JSON.stringify(about));
  assert.ok(about.some((l) => l.msg === 'llm request ended' && l.outcome === 'ok'));
  for (const l of about) assert.equal(l.trace, askCmd.trace, `a line of the request without its trace: ${JSON.stringify(l)}`);
  const traced = lines.filter((l) => l.trace === askCmd.trace);
  const ops = new Set(traced.filter((l) => l.msg === 'redis call').map((l) => l.op));
  // The lease (a cluster semaphore) and the answer's publications are Redis calls of the ask.
  for (const op of ['sem_acquire', 'publish']) assert.ok(ops.has(op), `redis ${op} under the ask's trace: ${[...ops]}`);
  assert.deepEqual([...new Set(traced.map((l) => l.module))].sort(), ['chat', 'cluster', 'llm']);
  // The key appears as its fingerprint only.
  const attempt = about.find((l) => l.msg === 'llm attempt');
  assert.ok(attempt.key && !PROVIDER_KEY.includes(attempt.key) && attempt.key.length < 16, attempt.key);
});

test('json logs: no secret, token or key in any line, on the paths that handle them', async (t) => {
  const mock = await startMock(t);
  // Primary key refused by the provider (401), the fallback answers: both keys pass through.
  await mock.control({ key: PROVIDER_KEY, scenario: 'unauthorized' });
  await mock.control({ key: FALLBACK_KEY, scenario: 'ok', tokens: 4, tokens_per_s: 400 });
  const srv = await startChatd(t, {
    env: {
      CHAT_API_KEY: API_KEY,
      CHAT_LOG_FORMAT: 'json',
      CHAT_LOG_LEVEL: 'debug',
      CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock, { keys: [PROVIDER_KEY], fallbackKeys: [FALLBACK_KEY] })]),
    },
  });
  const tokens = [];
  // A good token; one signed with another secret; an expired one; garbage.
  const good = userToken('alice');
  tokens.push(good);
  const alice = await connectClient(t, srv, { token: good });
  for (const bad of [userToken('mallory', {}, { secret: 'not-the-secret' }), userToken('old', { exp: 1000 }), 'eyJnot.a.token']) {
    tokens.push(bad);
    const c = newClient(t, srv, { token: bad });
    const closed = waitEvent(c, 'disconnected', { what: 'a bad token refused' });
    c.connect();
    await closed;
  }
  // The server API with a wrong key and with the right one.
  for (const key of ['wrong-api-key-123456', API_KEY]) {
    await fetch(`${srv.adminUrl}/api/publish`, {
      method: 'POST', headers: { 'X-API-Key': key }, body: JSON.stringify({ channel: 'chat:x', data: { text: 'hi' } }),
    });
  }
  const { sub } = await subscribe(alice, 'chat:secrets');
  let id = null;
  const w = watchAnswer(sub, () => id);
  id = (await ask(alice, 'chat:secrets', 'hello')).request_id;
  w.sync();
  await w.done;
  assert.ok(w.final, `answered by the fallback key: ${JSON.stringify(w.error?.data)}`);
  await waitUntil(() => srv.stderr.includes('"llm request ended"'), { what: 'the request\'s last line' });
  const lines = jsonLines(srv);
  assert.ok(lines.some((l) => l.level === 'warn' || l.level === 'error'), 'the key refusal is logged');
  const text = srv.stderr;
  for (const secret of [JWT_SECRET, API_KEY, PROVIDER_KEY, FALLBACK_KEY, ...tokens]) {
    assert.ok(!text.includes(secret), `a secret in the logs: ${secret.slice(0, 12)}...`);
  }
  // Nor the parts of a token: its signature.
  for (const tok of tokens.filter((x) => x.split('.').length === 3 && x.split('.')[2].length > 20)) {
    assert.ok(!text.includes(tok.split('.')[2]), 'a token signature in the logs');
  }
});

test('the log scan of every test finds a secret when one is written', async () => {
  // The API key set to the node's id, which every line carries: the scan must see it.
  const srv = await startChatd(null, { env: { CHAT_NODE_ID: 'leaky-node-0123', CHAT_API_KEY: 'leaky-node-0123', CHAT_LOG_FORMAT: 'json' } });
  try {
    await waitUntil(() => srv.stderr.includes('"started"'), { what: 'the started line' });
    assert.ok(srv.leaks.length > 0, 'the scan saw the key in the started line');
  } finally {
    await srv.stop();
  }
});
