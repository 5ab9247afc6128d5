// Error replies say what went wrong: a channel name too long or with control characters is a
// bad request that says so (not "channel required"), and a broker that cannot be reached is
// "broker unavailable", temporary (not a bare "internal error"). Control characters never reach
// the log raw.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, rawConnectAs, userToken, rawConnect, waitUntil } from './helpers.mjs';
import { startRedis } from './cluster-util.mjs';

test('channel names over 255 bytes or with control characters are refused with 107 saying why', async (t) => {
  const srv = await startChatd(t);
  const raw = await rawConnectAs(t, srv, 'alice');

  const longest = `chat:${'a'.repeat(250)}`;
  assert.equal(Buffer.byteLength(longest), 255);
  const ok = await raw.command('subscribe', { channel: longest });
  assert.ok(ok.subscribe, `a 255-byte name is fine: ${JSON.stringify(ok)}`);

  const tooLong = `chat:${'b'.repeat(251)}`;
  for (const method of ['subscribe', 'publish', 'history', 'presence']) {
    const params = method === 'publish' ? { channel: tooLong, data: { type: 'message', text: 'x' } } : { channel: tooLong };
    const r = await raw.command(method, params);
    assert.equal(r.error && r.error.code, 107, `${method}: ${JSON.stringify(r)}`);
    assert.match(r.error.message, /too long/, `${method}: ${JSON.stringify(r)}`);
  }
  // Multi-byte characters count in bytes.
  const r2 = await raw.command('subscribe', { channel: `chat:${'é'.repeat(126)}` });
  assert.match(r2.error && r2.error.message, /too long/, JSON.stringify(r2));

  for (const channel of ['chat:a\nb', 'chat:\u001b[31mred', 'chat:del\u007f', 'chat:c1\u0085', 'chat:tab\t']) {
    const r = await raw.command('subscribe', { channel });
    assert.equal(r.error && r.error.code, 107, `${JSON.stringify(channel)}: ${JSON.stringify(r)}`);
    assert.match(r.error.message, /control character/, `${JSON.stringify(channel)}: ${JSON.stringify(r)}`);
  }
  const missing = await raw.command('subscribe', {});
  assert.match(missing.error && missing.error.message, /channel required/, JSON.stringify(missing));
  assert.equal(raw.closeInfo, null);
});

test('a channel name from a token with a newline is logged escaped, on one line', async (t) => {
  const srv = await startChatd(t);
  const forged = '2030-01-01T00:00:00.000Z error chat    forged line';
  const c = await rawConnect(t, srv);
  const reply = await c.call('connect', { token: userToken('alice', { channels: [`nosuch:x\n${forged}`, `chat:y\n${forged}`] }) });
  assert.ok(reply.client);
  assert.deepEqual(Object.keys(reply.subs || {}).filter((ch) => ch.includes('\n')), [], 'a token channel with a newline is not subscribed');
  await waitUntil(() => /token channel/.test(srv.stderr), { what: 'the log line about the token channels' });
  for (const line of srv.stderr.split('\n')) {
    assert.ok(!line.startsWith(forged), `a log line was forged: ${JSON.stringify(line)}`);
  }
  assert.match(srv.stderr, /\\n2030-01-01T00:00:00\.000Z error chat {4}forged line/);
});

test('broker unavailable: subscribe, history, presence and publish answer 100 "broker unavailable", temporary', { timeout: 30_000 }, async (t) => {
  const redis = await startRedis(t);
  const srv = await startChatd(t, { env: { REDIS_URL: redis.url, CHAT_NODE_ID: 'node0' } });
  await waitUntil(async () => (await fetch(`${srv.adminUrl}/readyz`)).status === 200, { what: 'ready' });
  const raw = await rawConnectAs(t, srv, 'alice');
  await raw.call('subscribe', { channel: 'chat:kept' });

  await redis.stop();
  await waitUntil(async () => (await fetch(`${srv.adminUrl}/readyz`)).status === 503, { what: 'not ready without Redis' });

  const calls = [
    ['subscribe', { channel: 'chat:new' }],
    ['history', { channel: 'chat:kept', limit: 10 }],
    ['presence', { channel: 'chat:kept' }],
    ['presence_stats', { channel: 'chat:kept' }],
    ['publish', { channel: 'chat:kept', data: { type: 'message', text: 'hi' } }],
  ];
  for (const [method, params] of calls) {
    const r = await raw.command(method, params, { timeoutMs: 10_000 });
    assert.ok(r.error, `${method}: ${JSON.stringify(r)}`);
    assert.equal(r.error.code, 100, `${method}: ${JSON.stringify(r)}`);
    assert.equal(r.error.temporary, true, `${method}: ${JSON.stringify(r)}`);
    assert.match(r.error.message, /broker unavailable/, `${method}: ${JSON.stringify(r)}`);
  }
  assert.equal(raw.closeInfo, null, 'the client stays connected');
});
