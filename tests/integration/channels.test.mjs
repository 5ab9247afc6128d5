// Channel permissions: user-limited channels (`#u1,u2`), the personal namespace and its
// server-side subscription, unknown namespaces.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, connectClient, subscribe, newClient, waitEvent, rawConnectAs } from './helpers.mjs';

test('user-limited channel chat:dm#alice,bob: alice and bob subscribe, carol is refused with 103', async (t) => {
  const srv = await startChatd(t);
  const channel = 'chat:dm#alice,bob';
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const carol = await connectClient(t, srv, { user: 'carol' });
  const { ctx } = await subscribe(alice, channel);
  assert.equal(ctx.channel, channel);
  await subscribe(bob, channel);

  const sub = carol.newSubscription(channel);
  const unsubscribed = waitEvent(sub, 'unsubscribed', { what: 'carol refused' });
  sub.subscribe();
  const u = await unsubscribed;
  assert.equal(u.code, 103, JSON.stringify(u));
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(carol.state, 'connected', 'a refused subscribe does not disconnect');

  // Raw: the error reply.
  const raw = await rawConnectAs(t, srv, 'carol');
  const r = await raw.command('subscribe', { channel });
  assert.equal(r.error && r.error.code, 103, JSON.stringify(r));
  // A prefix or a similar name is no way in either.
  for (const ch of ['chat:dm#alice,bobx', 'chat:dm#alicebob']) {
    const ok = await raw.command('subscribe', { channel: ch });
    assert.equal(ok.error && ok.error.code, 103, `${ch}: ${JSON.stringify(ok)}`);
  }
});

test('personal:#user: the server subscribes each connection to its own; others are refused with 103', async (t) => {
  const srv = await startChatd(t);
  const alice = newClient(t, srv, { user: 'alice' });
  const serverSub = waitEvent(alice, 'subscribed', { filter: (c) => c.channel === 'personal:#alice', what: 'server-side personal subscription' });
  alice.connect();
  await serverSub;

  const carol = await connectClient(t, srv, { user: 'carol' });
  const sub = carol.newSubscription('personal:#alice');
  const unsubscribed = waitEvent(sub, 'unsubscribed');
  sub.subscribe();
  assert.equal((await unsubscribed).code, 103);

  const raw = await rawConnectAs(t, srv, 'bob');
  assert.ok(raw.connectResult.subs && raw.connectResult.subs['personal:#bob'], `connect result subs: ${JSON.stringify(raw.connectResult)}`);
  assert.ok(!raw.connectResult.subs['personal:#alice']);
});

test('a channel of an unknown namespace is error 102', async (t) => {
  const srv = await startChatd(t);
  const raw = await rawConnectAs(t, srv, 'alice');
  const r = await raw.command('subscribe', { channel: 'nosuchns:room' });
  assert.equal(r.error && r.error.code, 102, JSON.stringify(r));
  const r2 = await raw.command('subscribe', { channel: 'chat:room' });
  assert.ok(r2.subscribe, JSON.stringify(r2));
  const r3 = await raw.command('subscribe', { channel: 'chat:room' });
  assert.equal(r3.error && r3.error.code, 105, `already subscribed: ${JSON.stringify(r3)}`);
});

test('subscriptions over CHAT_MAX_CHANNELS are error 106', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_MAX_CHANNELS: 3 } });
  const raw = await rawConnectAs(t, srv, 'alice');
  const replies = [];
  for (let i = 0; i < 6; i++) {
    replies.push(await raw.command('subscribe', { channel: `chat:many-${i}` }));
  }
  const ok = replies.filter((r) => r.subscribe).length;
  const refused = replies.filter((r) => r.error);
  // Whether the server-side personal subscription counts is the server's choice: 2 or 3 fit.
  assert.ok(ok === 2 || ok === 3, `${ok} subscriptions accepted: ${JSON.stringify(replies)}`);
  assert.ok(refused.every((r) => r.error.code === 106), JSON.stringify(refused));
  assert.deepEqual(replies.map((r) => Boolean(r.subscribe)), replies.map((_, i) => i < ok), 'the first ones succeed');
  // Unsubscribing frees a slot.
  await raw.call('unsubscribe', { channel: 'chat:many-0' });
  assert.ok(await raw.call('subscribe', { channel: 'chat:many-5' }));
});

test('typing RPC: an ephemeral {type:"typing", user} publication in typing:<room>, without offset', async (t) => {
  const srv = await startChatd(t);
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  await subscribe(alice, 'chat:typers');
  const { sub } = await subscribe(bob, 'typing:typers');
  const got = waitEvent(sub, 'publication');
  const r = await alice.rpc('typing', { channel: 'chat:typers' });
  assert.ok(r);
  const pub = await got;
  assert.equal(pub.data.type, 'typing');
  assert.equal(pub.data.user, 'alice');
  assert.equal(pub.offset, undefined, 'typing publications are not stored');
  const h = await sub.history({ limit: 10 }).catch((e) => e);
  assert.ok(h instanceof Error || h.code || h.publications.length === 0, `nothing in typing history: ${JSON.stringify(h)}`);
});
