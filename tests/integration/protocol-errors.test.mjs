// Protocol errors on a raw WebSocket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, rawConnect, rawConnectAs, userToken, waitMetric, chatMessage, WebSocket } from './helpers.mjs';

test('malformed JSON closes with 3501', async (t) => {
  const srv = await startChatd(t);
  const c = await rawConnect(t, srv);
  c.sendRaw('{"id":1,"connect":');
  assert.equal((await c.waitClose()).code, 3501);

  // Also after a successful connect.
  const c2 = await rawConnectAs(t, srv, 'alice');
  c2.sendRaw('{"id":2,"history":{"channel":"chat:x"}}\nnot json');
  assert.equal((await c2.waitClose()).code, 3501);
});

test('a command before connect closes with 3501', async (t) => {
  const srv = await startChatd(t);
  const c = await rawConnect(t, srv);
  c.sendRaw(JSON.stringify({ id: 1, subscribe: { channel: 'chat:lobby' } }));
  assert.equal((await c.waitClose()).code, 3501);
});

test('a binary frame closes with 3501', async (t) => {
  const srv = await startChatd(t);
  const c = await rawConnect(t, srv);
  c.sendRaw(Buffer.from(JSON.stringify({ id: 1, connect: { token: userToken('alice') } })), { binary: true });
  assert.equal((await c.waitClose()).code, 3501);
});

test('invalid UTF-8 in a text frame closes the socket (3501 or 1007)', async (t) => {
  const srv = await startChatd(t);
  const c = await rawConnectAs(t, srv, 'alice');
  const bad = Buffer.concat([Buffer.from('{"id":2,"presence":{"channel":"chat:'), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('"}}')]);
  c.sendRaw(bad, { binary: false });
  const close = await c.waitClose();
  assert.ok([3501, 1007].includes(close.code), `close: ${JSON.stringify(close)}`);
});

test('an unknown method is error 104 and the connection stays usable', async (t) => {
  const srv = await startChatd(t);
  const c = await rawConnectAs(t, srv, 'alice');
  const r = await c.command('frobnicate', { x: 1 });
  assert.ok(r.error, JSON.stringify(r));
  assert.equal(r.error.code, 104, JSON.stringify(r));
  const ok = await c.call('subscribe', { channel: 'chat:after-104' });
  assert.ok(ok);
  assert.equal(c.closeInfo, null);
});

test('no connect within CHAT_STALE_TIMEOUT closes with 3502', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_STALE_TIMEOUT: 1 } });
  const c = await rawConnect(t, srv);
  const started = Date.now();
  const close = await c.waitClose(5000);
  assert.equal(close.code, 3502, JSON.stringify(close));
  assert.ok(Date.now() - started >= 500, 'not closed long before the stale timeout');
  // A client that connects in time is not closed.
  const ok = await rawConnectAs(t, srv, 'alice');
  await waitMetric(srv, 'chat_disconnects_total', { code: '3502' }, (v) => v >= 1);
  assert.equal(ok.closeInfo, null);
});

test('a frame over CHAT_MAX_FRAME_BYTES closes with 3501', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_MAX_FRAME_BYTES: 4096 } });
  const c = await rawConnectAs(t, srv, 'alice');
  await c.call('subscribe', { channel: 'chat:big' });
  // Just under the limit is fine.
  const small = JSON.stringify({ id: 50, publish: { channel: 'chat:big', data: chatMessage('y'.repeat(3000)) } });
  assert.ok(Buffer.byteLength(small) < 4096);
  c.sendRaw(small);
  const okReply = await c.waitMessage((m) => m.id === 50);
  assert.ok(okReply.publish, JSON.stringify(okReply));

  c.sendRaw(JSON.stringify({ id: 51, publish: { channel: 'chat:big', data: chatMessage('z'.repeat(8000)) } }));
  const close = await c.waitClose();
  assert.equal(close.code, 3501, JSON.stringify(close));
});

test('a reply carries the command id; an empty object (pong) is accepted silently', async (t) => {
  const srv = await startChatd(t);
  const c = await rawConnectAs(t, srv, 'alice');
  await c.call('subscribe', { channel: 'chat:lobby' });
  c.sendRaw(JSON.stringify({ id: 4242, presence_stats: { channel: 'chat:lobby' } }));
  const r = await c.waitMessage((m) => m.id === 4242);
  assert.deepEqual(Object.keys(r).sort(), ['id', 'presence_stats']);
  // An empty object is the pong: nothing happens.
  c.sendRaw('{}');
  const r2 = await c.call('presence_stats', { channel: 'chat:lobby' });
  assert.ok(r2);
  assert.equal(c.closeInfo, null);
});

test('an upgrade on another path is refused and the node keeps serving', async (t) => {
  const srv = await startChatd(t);
  const wrong = srv.wsUrl.replace('/connection/websocket', '/not-the-endpoint');
  for (let i = 0; i < 3; i++) {
    const outcome = await new Promise((resolve) => {
      const ws = new WebSocket(wrong);
      ws.on('open', () => { ws.close(); resolve('open'); });
      ws.on('error', () => resolve('refused'));
    });
    assert.equal(outcome, 'refused');
  }
  // The refused sessions are closed by lws after the filter; the node must survive that.
  const c = await rawConnectAs(t, srv, 'alice');
  assert.ok(await c.call('subscribe', { channel: 'chat:after-refused-upgrade' }));
  assert.equal(c.closeInfo, null);
});

test('too many non-temporary errors close with 3509; rate-limit refusals do not count', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_MAX_ERRORS: 5, CHAT_RATE_LIMITS: 'free=1/1' } });
  // Twenty 429s (temporary) leave the connection open.
  const limited = await rawConnectAs(t, srv, 'bursty');
  await limited.call('subscribe', { channel: 'chat:errors' });
  let refused = 0;
  for (let i = 0; i < 21; i++) {
    const r = await limited.command('publish', { channel: 'chat:errors', data: chatMessage(`m${i}`) });
    if (r.error) {
      assert.equal(r.error.code, 429, JSON.stringify(r));
      refused++;
    }
  }
  assert.ok(refused >= 19, `only ${refused} refusals`);
  assert.equal(limited.closeInfo, null);

  // Five permission errors are answered; the sixth closes the socket with 3509.
  const broken = await rawConnectAs(t, srv, 'broken');
  for (let i = 0; i < 5; i++) {
    const r = await broken.command('publish', { channel: 'chat:not-subscribed', data: chatMessage('x') });
    assert.equal(r.error.code, 103, JSON.stringify(r));
  }
  broken.sendRaw(JSON.stringify({ id: 100, publish: { channel: 'chat:not-subscribed', data: chatMessage('x') } }));
  assert.equal((await broken.waitClose()).code, 3509);
  await waitMetric(srv, 'chat_disconnects_total', { code: '3509' }, (v) => v === 1);
});
