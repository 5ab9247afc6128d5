// Presence and join/leave in a chat room.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, connectClient, subscribe, waitEvent, waitUntil, sdkSocket, userToken } from './helpers.mjs';

const OPTS = { joinLeave: true, recoverable: true, positioned: true };

test('presence, presence stats, join and leave', async (t) => {
  const srv = await startChatd(t);
  const channel = 'chat:presence';
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub: aliceSub } = await subscribe(alice, channel, OPTS);

  // Bob joins: alice sees the join with bob's user and client.
  const joined = waitEvent(aliceSub, 'join', { filter: (c) => c.info.user === 'bob', what: 'join of bob' });
  const { sub: bobSub } = await subscribe(bob, channel, OPTS);
  const join = await joined;
  assert.equal(join.channel, channel);
  assert.equal(join.info.client, bob.clientId);

  // Both see each other in presence.
  for (const sub of [aliceSub, bobSub]) {
    const p = await sub.presence();
    const clients = Object.values(p.clients);
    assert.deepEqual(clients.map((c) => c.user).sort(), ['alice', 'bob'], JSON.stringify(p));
    assert.equal(p.clients[alice.clientId].user, 'alice');
    assert.equal(p.clients[alice.clientId].client, alice.clientId);
    assert.equal(p.clients[bob.clientId].user, 'bob');
    const stats = await sub.presenceStats();
    assert.deepEqual(stats, { numClients: 2, numUsers: 2 });
  }

  // A second connection of alice: two clients of one user.
  const alice2 = await connectClient(t, srv, { user: 'alice' });
  const { sub: alice2Sub } = await subscribe(alice2, channel, OPTS);
  assert.deepEqual(await aliceSub.presenceStats(), { numClients: 3, numUsers: 2 });
  alice2Sub.unsubscribe();
  alice2.disconnect();

  // Bob unsubscribes: alice sees the leave; presence has alice only.
  const left = waitEvent(aliceSub, 'leave', { filter: (c) => c.info.user === 'bob', what: 'leave of bob (unsubscribe)' });
  bobSub.unsubscribe();
  const leave = await left;
  assert.equal(leave.info.client, bob.clientId);
  await waitUntil(async () => (await aliceSub.presenceStats()).numClients === 1, { what: 'presence of alice only' });
  const p1 = await aliceSub.presence();
  assert.deepEqual(Object.values(p1.clients).map((c) => c.user), ['alice']);

  // Bob subscribes again and then disconnects: join, then leave.
  const joined2 = waitEvent(aliceSub, 'join', { filter: (c) => c.info.user === 'bob', what: 'second join of bob' });
  bobSub.subscribe();
  await joined2;
  const left2 = waitEvent(aliceSub, 'leave', { filter: (c) => c.info.user === 'bob', what: 'leave of bob (disconnect)' });
  bob.disconnect();
  await left2;
  await waitUntil(async () => (await aliceSub.presenceStats()).numUsers === 1, { what: 'bob gone from presence' });
});

test('a dropped connection leaves the room too', async (t) => {
  const srv = await startChatd(t);
  const channel = 'chat:presence-drop';
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob', minReconnectDelay: 20000, maxReconnectDelay: 20000 });
  const { sub: aliceSub } = await subscribe(alice, channel, OPTS);
  await subscribe(bob, channel, OPTS);
  const left = waitEvent(aliceSub, 'leave', { filter: (c) => c.info.user === 'bob', timeoutMs: 5000, what: 'leave of bob (socket dropped)' });
  sdkSocket(bob).terminate();
  await left;
  assert.deepEqual(await aliceSub.presenceStats(), { numClients: 1, numUsers: 1 });
});

test('no join/leave pushes without the joinLeave option', async (t) => {
  const srv = await startChatd(t);
  const channel = 'chat:presence-quiet';
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub: aliceSub } = await subscribe(alice, channel, { recoverable: true });
  const joins = [];
  aliceSub.on('join', (c) => joins.push(c));
  const { sub: bobSub } = await subscribe(bob, channel, OPTS);
  // A publication after bob's subscribe is ordered after a join push the server might send.
  const got = waitEvent(aliceSub, 'publication');
  await bobSub.publish({ type: 'message', text: 'hi', client_msg_id: 'quiet-1' });
  await got;
  assert.equal(joins.length, 0);
});

test('token info becomes conn_info in presence, join and publications', async (t) => {
  const srv = await startChatd(t);
  const channel = 'chat:presence-info';
  const info = { name: 'Alice A.', avatar: 'a.png' };
  const alice = await connectClient(t, srv, { token: userToken('alice', { info }) });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub: bobSub } = await subscribe(bob, channel, OPTS);
  const joined = waitEvent(bobSub, 'join', { filter: (c) => c.info.user === 'alice' });
  const { sub: aliceSub } = await subscribe(alice, channel, OPTS);
  assert.deepEqual((await joined).info.connInfo, info);
  const p = await bobSub.presence();
  assert.deepEqual(p.clients[alice.clientId].connInfo, info);
  const got = waitEvent(bobSub, 'publication');
  await aliceSub.publish({ type: 'message', text: 'with info', client_msg_id: 'info-1' });
  assert.deepEqual((await got).info.connInfo, info);
});
