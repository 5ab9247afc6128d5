// Hostile or odd input: chatd answers with an error or closes that one socket, keeps serving
// everyone else, and never leaks what a user may not read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, subscribe, rawConnect, rawConnectAs, userToken, chatMessage, httpGet,
  waitEvent, waitMetric, sdkSocket, Collector,
} from './helpers.mjs';

async function assertAlive(t, srv) {
  const h = await httpGet(`${srv.adminUrl}/healthz`);
  assert.equal(h.status, 200);
  const c = await rawConnectAs(t, srv, 'probe');
  assert.ok(c.connectResult.client);
  c.close();
}

test('non-members cannot read a user-limited channel: history and presence are refused (103)', async (t) => {
  const srv = await startChatd(t);
  const alice = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(alice, 'chat:dm#alice,bob');
  await sub.publish(chatMessage('secret for bob'));

  const carol = await rawConnectAs(t, srv, 'carol');
  for (const method of ['history', 'presence', 'presence_stats']) {
    const r = await carol.command(method, { channel: 'chat:dm#alice,bob', limit: 10 });
    assert.ok(r.error, `${method} by carol must fail: ${JSON.stringify(r)}`);
    assert.equal(r.error.code, 103, `${method}: ${JSON.stringify(r)}`);
  }
  const p = await carol.command('history', { channel: 'personal:#alice', limit: 10 });
  assert.equal(p.error && p.error.code, 103, `history of another user's personal channel: ${JSON.stringify(p)}`);
  const pub = await carol.command('publish', { channel: 'chat:dm#alice,bob', data: chatMessage('let me in') });
  assert.equal(pub.error && pub.error.code, 103, JSON.stringify(pub));
});

test('after unsubscribe no publication of that channel arrives', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_RATE_LIMITS: 'free=1000/1000' } });
  const raw = await rawConnectAs(t, srv, 'reader');
  await raw.call('subscribe', { channel: 'chat:left' });
  await raw.call('subscribe', { channel: 'chat:stayed' });
  await raw.call('unsubscribe', { channel: 'chat:left' });
  const pub = await connectClient(t, srv, { user: 'publisher' });
  const { sub: left } = await subscribe(pub, 'chat:left');
  const { sub: stayed } = await subscribe(pub, 'chat:stayed');
  await left.publish(chatMessage('should not arrive'));
  await stayed.publish(chatMessage('marker'));
  await raw.waitPush((p) => p.channel === 'chat:stayed' && p.pub);
  assert.deepEqual(raw.pushes.filter((p) => p.pub).map((p) => p.channel), ['chat:stayed']);
});

test('text survives the round trip byte for byte (unicode, escapes, markup)', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_RATE_LIMITS: 'free=1000/1000' } });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub } = await subscribe(alice, 'chat:unicode');
  const { sub: bobSub } = await subscribe(bob, 'chat:unicode');
  const samples = [
    'héllo wörld — ñ', '日本語のテキスト', 'emoji 👩‍👩‍👧‍👦 🎉', 'quotes " and \\ backslash', 'new\nline\ttab',
    '</script><script>alert(1)</script>', 'line sep \u2028 para sep \u2029', 'nul-ish \u0001\u001f', '{"json":"in text"}',
  ];
  const got = new Collector(bobSub, 'publication', (p) => p.data.text);
  for (const s of samples) {
    await sub.publish(chatMessage(s));
  }
  await got.waitCount(samples.length);
  assert.deepEqual(got.items, samples);
  const h = await bobSub.history({ limit: 100 });
  assert.deepEqual(h.publications.map((p) => p.data.text), samples);
});

test('odd parameters get an error reply or close that socket only; chatd keeps serving', async (t) => {
  const srv = await startChatd(t);
  const bystander = await connectClient(t, srv, { user: 'bystander' });
  const { sub } = await subscribe(bystander, 'chat:bystander');
  const cases = [
    ['subscribe', { channel: '' }],
    ['subscribe', { channel: 123 }],
    ['subscribe', {}],
    ['subscribe', { channel: `chat:${'x'.repeat(5000)}` }],
    ['subscribe', { channel: 'chat:a', recover: 'yes', offset: -1, epoch: 7 }],
    ['history', { channel: 'chat:bystander', limit: -5 }],
    ['history', { channel: 'chat:bystander', limit: 10, since: { offset: 'a' } }],
    ['publish', { channel: 'chat:bystander' }],
    ['presence', { channel: null }],
    ['rpc', { method: 'typing', data: 'not an object' }],
    ['rpc', { method: 'no.such.method', data: {} }],
    ['refresh', { token: 'garbage' }],
    ['unsubscribe', { channel: 'chat:never-subscribed' }],
  ];
  for (const [method, params] of cases) {
    const c = await rawConnectAs(t, srv, 'fuzzer');
    const reply = await Promise.race([c.command(method, params).catch(() => null), c.closed]);
    const what = `${method} ${JSON.stringify(params).slice(0, 80)}`;
    if (reply && reply.id) {
      if (reply.error) {
        assert.equal(typeof reply.error.code, 'number', what);
      }
    } else {
      const close = await c.waitClose();
      assert.ok(close.code >= 3000 && close.code < 5000, `${what}: closed with ${JSON.stringify(close)}`);
    }
    c.close();
  }
  await assertAlive(t, srv);
  const got = waitEvent(sub, 'publication');
  await sub.publish(chatMessage('still fine'));
  await got;
});

test('deeply nested JSON does not crash chatd', async (t) => {
  const srv = await startChatd(t);
  const c = await rawConnectAs(t, srv, 'alice');
  await c.call('subscribe', { channel: 'chat:deep' });
  const depth = 30000;
  c.sendRaw(`{"id":9,"publish":{"channel":"chat:deep","data":${'['.repeat(depth)}${']'.repeat(depth)}}}`);
  const r = await Promise.race([c.waitMessage((m) => m.id === 9), c.closed]);
  assert.ok(r.code >= 3000 || (r.error && r.error.code), `refused: ${JSON.stringify(r).slice(0, 200)}`);
  await assertAlive(t, srv);
});

test('many short-lived connections: the connections gauge returns to 0, nothing leaks', async (t) => {
  const srv = await startChatd(t);
  for (let round = 0; round < 5; round++) {
    const clients = await Promise.all(Array.from({ length: 20 }, (_, i) => rawConnectAs(t, srv, `u${i}`)));
    await Promise.all(clients.map((c) => c.call('subscribe', { channel: 'chat:churn', join_leave: true })));
    // Half close politely, half drop the TCP connection.
    clients.forEach((c, i) => (i % 2 ? c.ws.close(1000) : c.ws.terminate()));
  }
  const sdk = await connectClient(t, srv, { user: 'sdk', minReconnectDelay: 60000, maxReconnectDelay: 60000 });
  await subscribe(sdk, 'chat:churn');
  sdkSocket(sdk).terminate();
  await waitMetric(srv, 'chat_connections', {}, (v) => v === 0, { timeoutMs: 10000 });
  const c = await rawConnectAs(t, srv, 'last');
  await c.call('subscribe', { channel: 'chat:churn' });
  const stats = await c.call('presence_stats', { channel: 'chat:churn' });
  assert.equal(stats.num_clients, 1, JSON.stringify(stats));
  assert.equal(stats.num_users, 1, JSON.stringify(stats));
  await assertAlive(t, srv);
});

test('a token for one user cannot publish as another: info comes from the token', async (t) => {
  const srv = await startChatd(t);
  const raw = await rawConnect(t, srv);
  await raw.call('connect', { token: userToken('mallory') });
  await raw.call('subscribe', { channel: 'chat:spoof' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub } = await subscribe(bob, 'chat:spoof');
  const got = waitEvent(sub, 'publication');
  await raw.call('publish', { channel: 'chat:spoof', data: { type: 'message', text: 'hi', user: 'admin', info: { user: 'admin' } } });
  const p = await got;
  assert.equal(p.info.user, 'mallory');
  assert.equal(p.data.user, undefined);
  assert.equal(p.data.info, undefined);
});
