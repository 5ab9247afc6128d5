// Demo mode (no CHAT_JWT_SECRET): demo token printed, /demo/token signs in by name, the web demo
// folder is served.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, connectClient, httpGet, waitUntil, rawConnectAs } from './helpers.mjs';

test('demo mode: /demo/token?user=NAME gives a token that connects as NAME', async (t) => {
  const srv = await startChatd(t, { demo: true, env: { CHAT_WEB_ROOT: new URL('../../web-demo/', import.meta.url).pathname } });
  await waitUntil(() => /demo token:\s+\S+/.test(srv.stdout) && /api key:\s+\S+/.test(srv.stdout), { what: 'demo token and api key on stdout' });

  const r = await httpGet(`${srv.httpUrl}/demo/token?user=zed`);
  assert.equal(r.status, 200, r.body);
  const body = JSON.parse(r.body);
  assert.equal(body.user, 'zed');
  assert.equal(typeof body.token, 'string');
  const payload = JSON.parse(Buffer.from(body.token.split('.')[1], 'base64url').toString());
  assert.equal(payload.sub, 'zed');
  // The page learns which node answered and where rooms can be made: the default namespaces
  // let clients subscribe and publish only in chat (typing and personal are not rooms).
  assert.equal(body.node, srv.nodeId ?? body.node);
  assert.equal(typeof body.node, 'string');
  assert.deepEqual(body.rooms, [{ namespace: 'chat', history: true, presence: true, llm: true }]);

  const client = await connectClient(t, srv, { token: body.token });
  const raw = await rawConnectAs(t, srv, null, { token: body.token });
  const sub = client.newSubscription('chat:demo');
  sub.subscribe();
  await sub.ready(5000);
  const p = await sub.presence();
  assert.deepEqual(Object.values(p.clients).map((c) => c.user), ['zed']);
  assert.ok(raw.connectResult.client);

  const printed = /demo token:\s+(\S+)/.exec(srv.stdout)[1];
  const demo = await connectClient(t, srv, { token: printed });
  assert.ok(demo.clientId);

  const page = await httpGet(`${srv.httpUrl}/`);
  assert.equal(page.status, 200);
  assert.match(page.body, /<html/i);
  const sdk = await httpGet(`${srv.httpUrl}/node_modules/centrifuge/dist/centrifuge.js`);
  assert.equal(sdk.status, 200, 'the SDK bundle is served from web-demo/node_modules');
});

test('/demo/token lists as rooms only chat-schema namespaces that clients may join and post in', async (t) => {
  const ns = {
    chat: { history_size: 10, history_ttl: 60, allow_subscribe: true, allow_publish: true, message_schema: 'chat' },
    talk: { history_size: 0, presence: true, allow_subscribe: true, allow_publish: true, message_schema: 'chat' },
    raw: { history_size: 10, history_ttl: 60, allow_subscribe: true, allow_publish: true, message_schema: 'any' },
    news: { history_size: 10, history_ttl: 60, allow_subscribe: true, allow_publish: false, message_schema: 'chat' },
  };
  const srv = await startChatd(t, { demo: true, env: { CHAT_NAMESPACES: JSON.stringify(ns) } });
  const r = await httpGet(`${srv.httpUrl}/demo/token?user=zed`);
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(JSON.parse(r.body).rooms.sort((a, b) => a.namespace.localeCompare(b.namespace)), [
    { namespace: 'chat', history: true, presence: false, llm: false },
    { namespace: 'talk', history: false, presence: true, llm: false },
  ]);
});
