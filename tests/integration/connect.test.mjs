// Connect: the SDK connects, the connect reply carries the documented fields, bad tokens are
// refused with 3500 (no reconnect), an expired token makes the SDK get a new one and reconnect,
// the server pings and closes a client that does not answer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, newClient, rawConnect, rawConnectAs, mintToken, userToken, nowSec,
  waitEvent, sdkSocket, WebSocket, countPings,
} from './helpers.mjs';

test('SDK client connects: connected event with a client id', async (t) => {
  const srv = await startChatd(t);
  const client = await connectClient(t, srv, { user: 'alice' });
  assert.equal(client.state, 'connected');
  assert.equal(typeof client.clientId, 'string');
  assert.ok(client.clientId.length > 0, 'client id is not empty');
  const ctx = client.events.find((e) => e.ev === 'connected').ctx;
  assert.equal(ctx.transport, 'websocket');

  const other = await connectClient(t, srv, { user: 'alice' });
  assert.notEqual(other.clientId, client.clientId, 'every connection gets its own client id');
});

test('connect reply: client, version, ping, pong; expires+ttl only when the token has exp', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_PING_INTERVAL: 7 } });

  const withExp = await rawConnectAs(t, srv, 'alice', { token: mintToken({ sub: 'alice', exp: nowSec() + 600 }) });
  const r = withExp.connectResult;
  assert.equal(typeof r.client, 'string');
  assert.ok(r.client.length > 0);
  assert.equal(typeof r.version, 'string', `version is a string: ${JSON.stringify(r)}`);
  assert.equal(r.ping, 7, `ping is CHAT_PING_INTERVAL seconds: ${JSON.stringify(r)}`);
  assert.equal(r.pong, true, `pong: true: ${JSON.stringify(r)}`);
  assert.equal(r.expires, true, `expires set for a token with exp: ${JSON.stringify(r)}`);
  assert.equal(typeof r.ttl, 'number');
  assert.ok(r.ttl > 590 && r.ttl <= 600, `ttl is about exp - now: ${r.ttl}`);

  const noExp = await rawConnectAs(t, srv, 'bob', { token: mintToken({ sub: 'bob' }) });
  const r2 = noExp.connectResult;
  assert.ok(!r2.expires, `no expires without exp: ${JSON.stringify(r2)}`);
  assert.ok(!r2.ttl, `no ttl without exp: ${JSON.stringify(r2)}`);
  assert.notEqual(r2.client, r.client);
});

test('bad token: SDK is disconnected with 3500 and does not reconnect', async (t) => {
  const srv = await startChatd(t);
  const client = newClient(t, srv, { token: userToken('mallory', {}, { secret: 'not-the-secret' }) });
  const disconnected = waitEvent(client, 'disconnected', { timeoutMs: 5000 });
  client.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3500, `disconnected code: ${JSON.stringify(ctx)}`);
  assert.equal(client.state, 'disconnected', 'the SDK stays disconnected (no reconnect)');
  assert.equal(client.events.filter((e) => e.ev === 'connected').length, 0);
});

test('bad tokens of every kind are refused with close 3500', async (t) => {
  const srv = await startChatd(t);
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const good = userToken('alice');
  const [gh, gp] = good.split('.');
  const cases = {
    'wrong secret': userToken('alice', {}, { secret: 'wrong' }),
    'alg none': `${b64({ alg: 'none', typ: 'JWT' })}.${gp}.`,
    'alg RS256 header': mintToken({ sub: 'alice' }, { header: { alg: 'RS256' } }),
    'no sub': mintToken({ exp: nowSec() + 60 }),
    'empty sub': mintToken({ sub: '', exp: nowSec() + 60 }),
    'tampered payload': `${gh}.${b64({ sub: 'admin', exp: nowSec() + 60 })}.${good.split('.')[2]}`,
    'not a jwt': 'garbage',
    'nbf in the future': mintToken({ sub: 'alice', nbf: nowSec() + 3600 }),
  };
  for (const [name, token] of Object.entries(cases)) {
    const c = await rawConnect(t, srv);
    const reply = c.command('connect', { token }).catch(() => null);
    const close = await c.waitClose(5000).catch((e) => ({ code: `none (${e.message})` }));
    const r = await reply;
    assert.equal(close.code, 3500, `${name}: close code (reply was ${JSON.stringify(r)})`);
  }
  // No token at all: refused too (3500 invalid token, or 3501 bad request).
  const c = await rawConnect(t, srv);
  c.command('connect', {}).catch(() => null);
  const close = await c.waitClose(5000);
  assert.ok([3500, 3501].includes(close.code), `connect without a token: close ${JSON.stringify(close)}`);
});

test('expired token: connect error 109, the SDK calls getToken and reconnects with the new token', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_JWT_LEEWAY: 0 } });
  const expired = mintToken({ sub: 'alice', exp: nowSec() - 10 });

  // Raw: the reply to connect is error 109 (token expired), which tells the SDK to get a new token.
  const raw = await rawConnect(t, srv);
  const reply = await raw.command('connect', { token: expired });
  assert.ok(reply.error, `connect with an expired token fails: ${JSON.stringify(reply)}`);
  assert.equal(reply.error.code, 109, JSON.stringify(reply));

  // SDK.
  let getTokenCalls = 0;
  const client = newClient(t, srv, {
    token: expired,
    getToken: async () => {
      getTokenCalls++;
      return userToken('alice');
    },
  });
  const connectError = waitEvent(client, 'error', { filter: (e) => e.type === 'connect', timeoutMs: 5000 });
  const connected = waitEvent(client, 'connected', { timeoutMs: 8000 });
  client.connect();
  const err = await connectError;
  assert.equal(err.error.code, 109);
  const ctx = await connected;
  assert.ok(ctx.client);
  assert.equal(getTokenCalls, 1);
  assert.equal(client.events.filter((e) => e.ev === 'disconnected').length, 0);
});

test('server pings with {} every ping seconds; a client that answers stays connected', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_PING_INTERVAL: 1, CHAT_PONG_TIMEOUT: 1 } });
  const c = await rawConnectAs(t, srv, 'alice');
  assert.equal(c.connectResult.ping, 1);
  // Three pings, each answered, and the socket still open after them.
  for (let i = 0; i < 3; i++) {
    await c.waitMessage((m) => !m.id && !m.push && Object.keys(m).length === 0, { timeoutMs: 3000, what: `ping #${i + 1}` });
  }
  assert.equal(c.closeInfo, null, 'still open after answering pings');
  const r = await c.call('subscribe', { channel: 'chat:lobby' });
  assert.ok(r);
});

test('a client that does not answer pings is closed with 3012', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_PING_INTERVAL: 1, CHAT_PONG_TIMEOUT: 1 } });
  const c = await rawConnectAs(t, srv, 'alice', { autoPong: false });
  const close = await c.waitClose(6000);
  assert.equal(close.code, 3012, JSON.stringify(close));
  assert.ok(c.pings >= 1, 'got at least one ping before the close');
});

test('SDK answers pings and stays connected over several ping intervals', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_PING_INTERVAL: 1, CHAT_PONG_TIMEOUT: 1 } });
  const client = await connectClient(t, srv, { user: 'alice' });
  const sock = sdkSocket(client);
  let pings = 0;
  sock.on('message', (d, isBinary) => {
    pings += countPings(d, isBinary);
  });
  await waitEvent(sock, 'message', { filter: () => pings >= 3, timeoutMs: 6000, what: '3 pings' });
  assert.equal(client.state, 'connected');
  assert.equal(client.events.filter((e) => e.ev === 'connecting' || e.ev === 'disconnected').length, 1,
    'only the initial connecting event');
});

test('several secrets by kid: each kid verifies its own tokens, an unknown kid is refused', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_JWT_SECRET: 'old:secret-one,new:secret-two' } });
  const c1 = await rawConnectAs(t, srv, 'alice', { token: mintToken({ sub: 'alice' }, { secret: 'secret-one', header: { kid: 'old' } }) });
  assert.ok(c1.connectResult.client);
  const c2 = await rawConnectAs(t, srv, 'bob', { token: mintToken({ sub: 'bob' }, { secret: 'secret-two', header: { kid: 'new' } }) });
  assert.ok(c2.connectResult.client);
  for (const [name, token] of [
    ['kid of the other secret', mintToken({ sub: 'eve' }, { secret: 'secret-one', header: { kid: 'new' } })],
    ['unknown kid', mintToken({ sub: 'eve' }, { secret: 'secret-one', header: { kid: 'nope' } })],
  ]) {
    const c = await rawConnect(t, srv);
    c.command('connect', { token }).catch(() => null);
    assert.equal((await c.waitClose()).code, 3500, name);
  }
});

test('audience and issuer are checked when configured', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_JWT_AUDIENCE: 'chat-web', CHAT_JWT_ISSUER: 'https://auth.example' } });
  const ok = await rawConnectAs(t, srv, 'alice', { token: userToken('alice', { aud: 'chat-web', iss: 'https://auth.example' }) });
  assert.ok(ok.connectResult.client);
  for (const [name, claims] of [
    ['no aud', { iss: 'https://auth.example' }],
    ['wrong aud', { aud: 'other', iss: 'https://auth.example' }],
    ['no iss', { aud: 'chat-web' }],
    ['wrong iss', { aud: 'chat-web', iss: 'https://evil.example' }],
  ]) {
    const c = await rawConnect(t, srv);
    c.command('connect', { token: userToken('alice', claims) }).catch(() => null);
    assert.equal((await c.waitClose()).code, 3500, name);
  }
});

test('connections per user over CHAT_MAX_CONNECTIONS_PER_USER are closed with 3504 (SDK: no reconnect)', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_MAX_CONNECTIONS_PER_USER: 2 } });
  await connectClient(t, srv, { user: 'alice' });
  await connectClient(t, srv, { user: 'alice' });
  await connectClient(t, srv, { user: 'bob' }); // other users unaffected

  const third = newClient(t, srv, { user: 'alice' });
  const disconnected = waitEvent(third, 'disconnected');
  third.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3504, JSON.stringify(ctx));
  assert.equal(third.state, 'disconnected');

  const raw = await rawConnect(t, srv);
  raw.command('connect', { token: userToken('alice') }).catch(() => null);
  assert.equal((await raw.waitClose()).code, 3504);
});

test('every public response names the node in the chat_node cookie, the WebSocket upgrade too', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_NODE_ID: 'node-a.1' } });
  const expected = 'chat_node=node-a.1; Path=/; HttpOnly; SameSite=Lax';
  for (const path of ['/', '/healthz', '/no-such-file']) {
    const res = await fetch(`${srv.httpUrl}${path}`);
    await res.arrayBuffer();
    assert.deepEqual(res.headers.getSetCookie(), [expected], `GET ${path}`);
  }
  const ws = new WebSocket(srv.wsUrl);
  const upgrade = await waitEvent(ws, 'upgrade', { what: 'upgrade response' });
  assert.deepEqual(upgrade.headers['set-cookie'], [expected]);
  ws.close();
  // Operators' listener: no cookie, a balancer never sees it.
  const admin = await fetch(`${srv.adminUrl}/healthz`);
  assert.deepEqual(admin.headers.getSetCookie(), []);
});

test('a node id that cannot go into a cookie is refused at start', async () => {
  await assert.rejects(startChatd(null, { env: { CHAT_NODE_ID: 'node 1;x' } }), /CHAT_NODE_ID must be/);
});
