// Token expiry and refresh (CHAT_JWT_LEEWAY=0).
//
// What the SDK (centrifuge 5.8.0) does: the connect reply's ttl arms a timer; when it fires the
// SDK calls getToken and sends `refresh` with the new token. Without getToken, the timer's
// _refresh finds no way to get a token: it emits an error of type 'configuration' and
// disconnects with code 1 (unauthorized), no reconnect. On the server side an expired
// connection is closed with 3005; connecting again with the expired token is error 109.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, subscribe, rawConnect, mintToken, nowSec, userToken, waitEvent,
  waitMetric, delay, chatMessage,
} from './helpers.mjs';

const ENV = { CHAT_JWT_LEEWAY: 0, CHAT_PING_INTERVAL: 1, CHAT_PONG_TIMEOUT: 2 };

test('a client with getToken refreshes before expiry and stays connected past it', { timeout: 30_000 }, async (t) => {
  const srv = await startChatd(t, { env: ENV });
  const exp = nowSec() + 4;
  const calls = [];
  const client = await connectClient(t, srv, {
    token: mintToken({ sub: 'alice', exp }),
    getToken: async (ctx) => {
      calls.push(ctx);
      return userToken('alice', { exp: nowSec() + 600 });
    },
  });
  const { sub } = await subscribe(client, 'chat:refresh');
  // The refresh command reaches the server.
  await waitMetric(srv, 'chat_commands_total', { method: 'refresh' }, (v) => v >= 1, { timeoutMs: 8000 });
  assert.equal(calls.length, 1, 'getToken called once');
  // Past the original expiry (plus the ping interval, so an expiry check had its chance).
  const waitMs = (exp + 2) * 1000 - Date.now();
  if (waitMs > 0) {
    await delay(waitMs);
  }
  assert.equal(client.state, 'connected');
  assert.deepEqual(client.events.filter((e) => e.ev === 'disconnected' || (e.ev === 'connecting' && e.ctx.code !== 0)), [],
    'no disconnect and no reconnect');
  const got = waitEvent(sub, 'publication');
  await sub.publish(chatMessage('still here'));
  assert.equal((await got).data.text, 'still here');
});

test('raw refresh: the reply carries expires and the new ttl; a refresh token of another user is refused', async (t) => {
  const srv = await startChatd(t, { env: ENV });
  const c = await rawConnect(t, srv);
  const r = await c.call('connect', { token: mintToken({ sub: 'alice', exp: nowSec() + 30 }) });
  assert.equal(r.expires, true);
  const refreshed = await c.call('refresh', { token: mintToken({ sub: 'alice', exp: nowSec() + 300 }) });
  assert.equal(refreshed.expires, true, JSON.stringify(refreshed));
  assert.ok(refreshed.ttl > 290 && refreshed.ttl <= 300, JSON.stringify(refreshed));

  const other = await rawConnect(t, srv);
  await other.call('connect', { token: mintToken({ sub: 'bob', exp: nowSec() + 30 }) });
  const reply = other.command('refresh', { token: mintToken({ sub: 'carol', exp: nowSec() + 300 }) }).catch(() => null);
  const first = await Promise.race([reply, other.closed]);
  // Refused: an error reply or a close (3500 invalid token); never a success.
  assert.ok(!(first && first.refresh), `refresh with another user's token must fail: ${JSON.stringify(first)}`);
});

test('a client without getToken is disconnected when its token expires', { timeout: 30_000 }, async (t) => {
  const srv = await startChatd(t, { env: ENV });
  const client = await connectClient(t, srv, { token: mintToken({ sub: 'alice', exp: nowSec() + 3 }) });
  const configError = waitEvent(client, 'error', { filter: (e) => e.type === 'configuration', timeoutMs: 8000 });
  const disconnected = waitEvent(client, 'disconnected', { timeoutMs: 8000 });
  const [err, ctx] = await Promise.all([configError, disconnected]);
  assert.equal(err.error.code, 12); // errorCodes.badConfiguration: no getToken
  // The SDK's refresh timer fires at ttl; the server closes at exp with 3005. Whichever comes
  // first: disconnectedCodes.unauthorized (1) from the SDK, or - if the server's 3005 came
  // first - the SDK reconnects with the expired token, gets 109 and ends unauthorized too.
  assert.equal(ctx.code, 1, JSON.stringify(ctx));
  assert.equal(client.state, 'disconnected');
});

test('raw: the server closes an expired connection with 3005; reconnecting with that token is error 109', { timeout: 30_000 }, async (t) => {
  const srv = await startChatd(t, { env: ENV });
  const exp = nowSec() + 2;
  const token = mintToken({ sub: 'alice', exp });
  const c = await rawConnect(t, srv);
  const r = await c.call('connect', { token });
  assert.equal(r.expires, true);
  assert.ok(r.ttl <= 2, `ttl ${r.ttl}`);
  const close = await c.waitClose(8000);
  // The disconnect may also come as a push before the close; the close code is the contract.
  assert.equal(close.code, 3005, JSON.stringify(close));
  assert.ok(Date.now() >= exp * 1000 - 1000, 'not closed long before exp');

  const again = await rawConnect(t, srv);
  const reply = await again.command('connect', { token });
  assert.ok(reply.error, JSON.stringify(reply));
  assert.equal(reply.error.code, 109, JSON.stringify(reply));
  await waitMetric(srv, 'chat_disconnects_total', { code: '3005' }, (v) => v >= 1);
});
