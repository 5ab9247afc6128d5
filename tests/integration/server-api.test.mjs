// The server API (PROTOCOL.md section 4) driven by cent.js, a Centrifugo HTTP API client from
// npm, unchanged: publish, broadcast, history, presence, presence_stats, channels, disconnect,
// unsubscribe, its pipeline (lines of commands) and Centrifugo v5's batch; on one node and
// across two nodes through Redis. Real chatd processes, the centrifuge SDK as the clients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CentClient, CentException } from 'cent.js';
import { startChatd, connectClient, subscribe, Collector, waitEvent, waitUntil } from './helpers.mjs';
import { startCluster } from './cluster-util.mjs';

const API_KEY = 'server-api-test-key';

function cent(srv) {
  return new CentClient({ url: `${srv.adminUrl}/api`, apiKey: API_KEY });
}

async function post(srv, path, body, headers = { 'X-API-Key': API_KEY }) {
  const res = await fetch(`${srv.adminUrl}${path}`, {
    method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, text: await res.text() };
}

async function apiError(srv, method, params) {
  const r = await post(srv, `/api/${method}`, params);
  assert.equal(r.status, 200, r.text);
  const body = JSON.parse(r.text);
  assert.ok(body.error, `${method} ${JSON.stringify(params)} should fail: ${r.text}`);
  return body.error;
}

test('cent.js publishes into a room, reads its history and presence', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_API_KEY: API_KEY } });
  const api = cent(srv);
  const alice = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(alice, 'chat:api', { recoverable: true, positioned: true });
  const pubs = new Collector(sub, 'publication');

  const r1 = await api.publish({ channel: 'chat:api', data: { type: 'message', text: 'from the server' } });
  const r2 = await api.publish({ channel: 'chat:api', data: { type: 'message', text: 'again' } });
  assert.equal(r1.offset, 1);
  assert.equal(r2.offset, 2);
  assert.equal(r2.epoch, r1.epoch);
  const got = await pubs.waitCount(2);
  assert.deepEqual(got.map((p) => [p.offset, p.data.text]), [[1, 'from the server'], [2, 'again']]);
  // A server publication names no publisher.
  assert.equal(got[0].info, undefined);

  const h = await api.getHistory({ channel: 'chat:api', limit: 10 });
  assert.deepEqual(h.publications.map((p) => p.data.text), ['from the server', 'again']);
  assert.equal(h.offset, 2);
  assert.equal(h.epoch, r1.epoch);
  const since = await api.getHistory({ channel: 'chat:api', limit: 10, since: { offset: 1, epoch: r1.epoch } });
  assert.deepEqual(since.publications.map((p) => p.offset), [2]);
  const rev = await api.getHistory({ channel: 'chat:api', limit: 1, reverse: true });
  assert.deepEqual(rev.publications.map((p) => p.offset), [2]);
  assert.equal((await apiError(srv, 'history', { channel: 'chat:api', limit: 5, since: { offset: 1, epoch: 'stale' } })).code, 112);

  const p = await api.getPresence({ channel: 'chat:api' });
  assert.deepEqual(Object.keys(p.presence), [alice.clientId]);
  assert.equal(p.presence[alice.clientId].user, 'alice');
  assert.deepEqual(await api.getPresenceStats({ channel: 'chat:api' }), { num_clients: 1, num_users: 1 });

  const ch = await api.getChannels({ pattern: 'chat:*' });
  assert.deepEqual(ch.channels['chat:api'], { num_clients: 1 });
  assert.equal(ch.channels['personal:#alice'], undefined);

  // skip_history: delivered, not kept.
  const r3 = await api.publish({ channel: 'chat:api', data: { type: 'message', text: 'live only' }, skip_history: true });
  assert.equal(r3.offset, undefined);
  assert.equal((await pubs.waitCount(3))[2].data.text, 'live only');
  assert.equal((await api.getHistory({ channel: 'chat:api', limit: -1 })).publications.length, 2);

  // broadcast: one answer per channel, in order.
  const b = await api.broadcast({ channels: ['chat:api', 'chat:other', 'nope:x'], data: { type: 'message', text: 'all' } });
  assert.equal(b.responses.length, 3);
  assert.equal(b.responses[0].result.offset, 3);
  assert.equal(b.responses[1].result.offset, 1);
  assert.equal(b.responses[2].error.code, 102);
  assert.equal((await pubs.waitCount(4))[3].data.text, 'all');
});

test('cent.js disconnects a user and unsubscribes one from a channel', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_API_KEY: API_KEY } });
  const api = cent(srv);
  const bob1 = await connectClient(t, srv, { user: 'bob' });
  const bob2 = await connectClient(t, srv, { user: 'bob' });
  const carol = await connectClient(t, srv, { user: 'carol' });
  const { sub: carolSub } = await subscribe(carol, 'chat:room');
  const { sub: carolOther } = await subscribe(carol, 'chat:other');

  const unsub = waitEvent(carolSub, 'unsubscribed', { what: 'unsubscribe push' });
  assert.deepEqual(await api.unsubscribe({ user: 'carol', channel: 'chat:room' }), {});
  const u = await unsub;
  assert.equal(u.code, 2000);
  assert.equal(carolSub.state, 'unsubscribed');
  assert.equal(carolOther.state, 'subscribed');
  await waitUntil(async () => (await api.getPresenceStats({ channel: 'chat:room' })).num_clients === 0,
    { what: 'carol out of the room presence' });

  const d1 = waitEvent(bob1, 'disconnected', { what: 'bob1 disconnected' });
  const d2 = waitEvent(bob2, 'disconnected', { what: 'bob2 disconnected' });
  assert.deepEqual(await api.disconnect({ user: 'bob' }), {});
  assert.equal((await d1).code, 3503);
  assert.equal((await d2).code, 3503);
  assert.equal(carol.state, 'connected');

  // One client of a user, with a code of the operator's choosing (3000-3499: reconnect).
  const dc = waitEvent(carol, 'connecting', { what: 'carol told to reconnect' });
  await api.disconnect({ user: 'carol', client: carol.clientId, disconnect: { code: 3011, reason: 'move' } });
  assert.equal((await dc).code, 3011);
  assert.equal((await apiError(srv, 'disconnect', { user: 'carol', disconnect: { code: 1000 } })).code, 107);
  assert.equal((await apiError(srv, 'disconnect', {})).code, 107);
});

test('batch and pipeline run commands in order; errors are Centrifugo codes', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_API_KEY: API_KEY } });
  const api = cent(srv);
  const lines = await api.pipeline([
    { method: 'publish', params: { channel: 'chat:b', data: { n: 1 } } },
    { method: 'publish', params: { channel: 'chat:b', data: { n: 2 } } },
    { method: 'history', params: { channel: 'chat:b', limit: -1 } },
  ]);
  assert.equal(lines[1].offset, 2);
  assert.deepEqual(lines[2].publications.map((p) => p.data.n), [1, 2]);

  const b = JSON.parse((await post(srv, '/api/batch', {
    commands: [
      { publish: { channel: 'chat:b', data: { n: 3 } } },
      { history: { channel: 'chat:b', limit: -1 } },
      { nosuch: {} },
      { publish: { channel: 'chat:b' } },
    ],
  })).text);
  assert.equal(b.replies.length, 4);
  assert.equal(b.replies[0].publish.offset, 3);
  assert.deepEqual(b.replies[1].history.publications.map((p) => p.data.n), [1, 2, 3]);
  assert.equal(b.replies[2].error.code, 104);
  assert.equal(b.replies[3].error.code, 107);

  await assert.rejects(api.publish({ channel: 'nope:x', data: 1 }), CentException);
  assert.equal((await apiError(srv, 'publish', { channel: 'nope:x', data: 1 })).code, 102);
  assert.equal((await apiError(srv, 'publish', { channel: 'chat:b' })).code, 107);
  assert.equal((await apiError(srv, 'publish', { channel: 'chat:\u0001', data: 1 })).code, 107);
  assert.equal((await apiError(srv, 'history', { channel: 'typing:b' })).code, 108);
  assert.equal((await apiError(srv, 'presence', { channel: 'typing:b' })).code, 108);
  assert.equal((await apiError(srv, 'publish', { channel: 'chat:b', data: 'x'.repeat(5000) })).code, 107);
  const notJson = await post(srv, '/api/publish', '{"channel":');
  assert.equal(JSON.parse(notJson.text).error.code, 107);
  const unknown = await post(srv, '/api/nosuch', {});
  assert.equal(unknown.status, 404);
  assert.equal(JSON.parse(unknown.text).error.code, 104);
  assert.equal((await post(srv, '/api/publish', { channel: 'chat:b', data: 1 }, { 'X-API-Key': 'wrong' })).status, 401);
  assert.equal((await post(srv, '/api/publish', { channel: 'chat:auth', data: 1 }, { Authorization: `apikey ${API_KEY}` })).status, 200);
  const big = await post(srv, '/api/publish', JSON.stringify({ channel: 'chat:b', data: 'y'.repeat(70000) }));
  assert.equal(big.status, 413);
  // Nothing that failed was published.
  assert.equal((await api.getHistory({ channel: 'chat:b', limit: -1 })).publications.length, 3);
});

test('two nodes: a publish, a disconnect and an unsubscribe sent to one node reach clients of the other', async (t) => {
  const [n1, n2] = await startCluster(t, 2, { CHAT_API_KEY: API_KEY });
  const api1 = cent(n1);
  const dave = await connectClient(t, n2, { user: 'dave' });
  const { sub } = await subscribe(dave, 'chat:x', { recoverable: true, positioned: true });
  const pubs = new Collector(sub, 'publication');
  const r = await api1.publish({ channel: 'chat:x', data: { type: 'message', text: 'across' } });
  assert.equal((await pubs.waitCount(1))[0].offset, r.offset);
  assert.equal((await cent(n2).getHistory({ channel: 'chat:x', limit: -1 })).publications[0].data.text, 'across');
  assert.equal(Object.values((await api1.getPresence({ channel: 'chat:x' })).presence)[0].user, 'dave');

  // channels: a survey of both nodes, the counts summed (once both are in the registry).
  const eve = await connectClient(t, n1, { user: 'eve' });
  await subscribe(eve, 'chat:x');
  await subscribe(eve, 'chat:y');
  await waitUntil(async () => (await api1.getInfo()).nodes.length === 2, { what: 'both nodes in the registry' });
  await waitUntil(async () => (await api1.getChannels({ pattern: 'chat:*' })).channels['chat:x']?.num_clients === 2,
    { what: 'chat:x counted on both nodes' });
  assert.deepEqual((await cent(n2).getChannels({ pattern: 'chat:*' })).channels,
    { 'chat:x': { num_clients: 2 }, 'chat:y': { num_clients: 1 } });
  assert.deepEqual((await api1.getChannels({ pattern: 'chat:y' })).channels, { 'chat:y': { num_clients: 1 } });

  const unsub = waitEvent(sub, 'unsubscribed', { what: 'unsubscribe across nodes' });
  await api1.unsubscribe({ user: 'dave', channel: 'chat:x' });
  assert.equal((await unsub).code, 2000);
  const gone = waitEvent(dave, 'disconnected', { what: 'disconnect across nodes' });
  await api1.disconnect({ user: 'dave' });
  assert.equal((await gone).code, 3503);
});

test('two nodes: cent.js subscribes a user server-side, refreshes its connection and removes a channel\'s history', async (t) => {
  const [n1, n2] = await startCluster(t, 2, { CHAT_API_KEY: API_KEY });
  const api = cent(n1);

  // subscribe: the SDK learns of the subscription by its push, then gets the channel's
  // publications and counts in its presence; a second alice connection on the same node too.
  const erin = await connectClient(t, n2, { user: 'erin' });
  const erin2 = await connectClient(t, n2, { user: 'erin' });
  const subscribed = [erin, erin2].map((c) => waitEvent(c, 'subscribed', { filter: (ctx) => ctx.channel === 'chat:pushed', what: 'the subscribe push' }));
  const pubs = new Collector(erin, 'publication');
  assert.deepEqual(await api.subscribe({ user: 'erin', channel: 'chat:pushed' }), {});
  const ctx = await subscribed[0];
  await subscribed[1];
  assert.equal(ctx.recoverable, true);
  assert.equal(ctx.positioned, true);
  const r = await api.publish({ channel: 'chat:pushed', data: { type: 'message', text: 'to the server-side sub' } });
  const got = await pubs.waitCount(1);
  assert.equal(got[0].channel, 'chat:pushed');
  assert.equal(got[0].offset, r.offset);
  const pres = await api.getPresence({ channel: 'chat:pushed' });
  assert.deepEqual(Object.values(pres.presence).map((p) => p.user), ['erin', 'erin']);
  // Already subscribed: nothing changes; an unknown namespace is refused before any node acts.
  await api.subscribe({ user: 'erin', channel: 'chat:pushed' });
  assert.equal((await apiError(n1, 'subscribe', { user: 'erin', channel: 'nope:x' })).code, 102);
  assert.equal((await apiError(n1, 'subscribe', { channel: 'chat:pushed' })).code, 107);

  // refresh: expired closes the user's connections with 3005, after which the SDK reconnects.
  const expired = [erin, erin2].map((c) => waitEvent(c, 'connecting', { filter: (e) => e.code === 3005, what: 'close 3005' }));
  assert.deepEqual(await api.refresh({ user: 'erin', expired: true }), {});
  for (const e of await Promise.all(expired)) assert.equal(e.reason, 'connection expired');
  await waitEvent(erin, 'connected', { what: 'the reconnect after 3005' });
  assert.equal((await apiError(n1, 'refresh', { user: 'erin', expire_at: 'soon' })).code, 107);
  assert.deepEqual(await api.refresh({ user: 'erin', expire_at: Math.floor(Date.now() / 1000) + 3600 }), {});

  // history_remove: the publications go, the position stays and goes on from there.
  for (let i = 0; i < 3; i++) await api.publish({ channel: 'chat:hr', data: { type: 'message', text: `m${i}` } });
  const before = await api.getHistory({ channel: 'chat:hr', limit: -1 });
  assert.equal(before.publications.length, 3);
  assert.deepEqual(await cent(n2).removeHistory({ channel: 'chat:hr' }), {});
  const after = await api.getHistory({ channel: 'chat:hr', limit: -1 });
  assert.deepEqual(after.publications ?? [], []);
  assert.equal(after.offset, 3);
  assert.equal(after.epoch, before.epoch);
  assert.equal((await api.publish({ channel: 'chat:hr', data: { type: 'message', text: 'm3' } })).offset, 4);
  // A reader from before the removal cannot be served what is gone: recovered:false.
  const late = await connectClient(t, n2, { user: 'late' });
  const { ctx: lateCtx } = await subscribe(late, 'chat:hr', { since: { offset: 1, epoch: before.epoch } });
  assert.equal(lateCtx.wasRecovering, true);
  assert.equal(lateCtx.recovered, false);
  assert.equal((await apiError(n1, 'history_remove', { channel: 'typing:x' })).code, 108);
  // info, last: each node enters the registry on its own beat.
  await waitUntil(async () => (await api.getInfo()).nodes.length === 2, { what: 'both nodes in info' });
  assert.deepEqual((await api.getInfo()).nodes.map((n) => n.name).sort(), ['node0', 'node1']);
});
