// Subscribe and publish: publications carry an offset and the verified sender, chat messages are
// validated, only subscribers publish, a repeated client_msg_id is published once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, subscribe, rawConnectAs, Collector, chatMessage, waitEvent, randomUUID,
} from './helpers.mjs';

const FAST = { CHAT_RATE_LIMITS: 'free=1000/1000' };

test('subscribe and receive a publication with offset and info of the publisher', async (t) => {
  const srv = await startChatd(t, { env: FAST });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub: aliceSub, ctx: aliceCtx } = await subscribe(alice, 'chat:room1', { recoverable: true, positioned: true });
  assert.equal(aliceCtx.channel, 'chat:room1');
  assert.equal(aliceCtx.recoverable, true, 'chat rooms are recoverable');
  assert.equal(typeof aliceCtx.streamPosition.epoch, 'string');
  const { sub: bobSub } = await subscribe(bob, 'chat:room1', { recoverable: true, positioned: true });

  const got = waitEvent(bobSub, 'publication', { timeoutMs: 5000 });
  const msg = chatMessage('hello bob');
  await aliceSub.publish(msg);
  const pub = await got;
  assert.equal(pub.channel, 'chat:room1');
  const { ts, ...rest } = pub.data;
  assert.deepEqual(rest, msg);
  // The server dates every chat message with its own clock (Unix ms), whatever the client sent.
  assert.ok(Number.isInteger(ts) && Math.abs(ts - Date.now()) < 60_000, `ts: ${ts}`);
  assert.equal(typeof pub.offset, 'number');
  assert.ok(pub.offset >= 1, `offset: ${pub.offset}`);
  assert.ok(pub.info, 'publication has info');
  assert.equal(pub.info.user, 'alice');
  assert.equal(pub.info.client, alice.clientId);

  // The next one has the next offset; the publisher gets it too.
  const gotBob = waitEvent(bobSub, 'publication', { timeoutMs: 5000 });
  const gotAlice = waitEvent(aliceSub, 'publication', { timeoutMs: 5000, filter: (p) => p.data.text === 'hello alice' });
  await bobSub.publish(chatMessage('hello alice'));
  const [p2, p2a] = await Promise.all([gotBob, gotAlice]);
  assert.equal(p2.offset, pub.offset + 1);
  assert.equal(p2.info.user, 'bob');
  assert.equal(p2a.offset, p2.offset);
});

test('publish via the client API (not the subscription) also works for a subscriber', async (t) => {
  const srv = await startChatd(t, { env: FAST });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(alice, 'chat:room2');
  const got = waitEvent(sub, 'publication');
  await alice.publish('chat:room2', chatMessage('via client'));
  assert.equal((await got).data.text, 'via client');
});

test('chat schema: unknown fields dropped, empty text and non-objects refused with 107', async (t) => {
  const srv = await startChatd(t, { env: FAST });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(alice, 'chat:schema');
  const pubs = new Collector(sub, 'publication');

  await sub.publish({ type: 'message', text: 'keep me', client_msg_id: randomUUID(), evil: { x: 1 }, role: 'assistant', ts: 1 });
  await pubs.waitCount(1);
  assert.deepEqual(Object.keys(pubs.items[0].data).sort(), ['client_msg_id', 'text', 'ts', 'type']);
  assert.ok(pubs.items[0].data.ts > 1_700_000_000_000, 'a client cannot date its message');

  for (const bad of [{ type: 'message', text: '' }, { type: 'message' }, 'just a string', 42, [1, 2]]) {
    await assert.rejects(sub.publish(bad), (e) => {
      assert.equal(e.code, 107, `publish ${JSON.stringify(bad).slice(0, 60)}: ${JSON.stringify(e)}`);
      return true;
    });
  }
  // Text over max_message_bytes (4096 in chat): refused (107 bad request or 106 limit exceeded).
  await assert.rejects(sub.publish({ type: 'message', text: 'x'.repeat(5000) }), (e) => {
    assert.ok([106, 107].includes(e.code), `oversized text: ${JSON.stringify(e)}`);
    return true;
  });
  // Still connected and still publishing.
  await sub.publish(chatMessage('after the errors'));
  await pubs.waitCount(2);
  assert.equal(pubs.items[1].data.text, 'after the errors');
  assert.equal(pubs.items.length, 2);
});

test('only subscribers may publish to a chat room (103)', async (t) => {
  const srv = await startChatd(t, { env: FAST });
  const alice = await connectClient(t, srv, { user: 'alice' });
  await assert.rejects(alice.publish('chat:closed', chatMessage('not subscribed')), (e) => {
    assert.equal(e.code, 103, JSON.stringify(e));
    return true;
  });
  // typing:* is not publishable by clients at all.
  const { sub } = await subscribe(alice, 'typing:closed');
  await assert.rejects(sub.publish({ type: 'typing', user: 'alice' }), (e) => {
    assert.equal(e.code, 103, JSON.stringify(e));
    return true;
  });
});

test('duplicate client_msg_id: both publishes succeed, subscribers receive it once', async (t) => {
  const srv = await startChatd(t, { env: FAST });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub: aliceSub } = await subscribe(alice, 'chat:dedupe');
  const { sub: bobSub } = await subscribe(bob, 'chat:dedupe');
  const pubs = new Collector(bobSub, 'publication');

  const msg = chatMessage('only once');
  await aliceSub.publish(msg);
  await aliceSub.publish(msg); // same client_msg_id: same success, not published again
  // Another user may use the same id: it is per user.
  await bobSub.publish(msg);
  await aliceSub.publish(chatMessage('marker'));
  await pubs.waitCount(3);
  // The marker came after everything published before it: nothing more is on its way.
  assert.deepEqual(pubs.items.map((p) => [p.info.user, p.data.text]), [
    ['alice', 'only once'], ['bob', 'only once'], ['alice', 'marker'],
  ]);
  const hist = await aliceSub.history({ limit: 10 });
  assert.equal(hist.publications.length, 3, 'history holds the message once');

  // Raw: both replies are successes (no error) for the repeated id.
  const raw = await rawConnectAs(t, srv, 'carol');
  await raw.call('subscribe', { channel: 'chat:dedupe' });
  const data = chatMessage('raw dup');
  const r1 = await raw.command('publish', { channel: 'chat:dedupe', data });
  const r2 = await raw.command('publish', { channel: 'chat:dedupe', data });
  assert.ok(!r1.error && r1.publish, JSON.stringify(r1));
  assert.ok(!r2.error && r2.publish, JSON.stringify(r2));
});

test('several commands in one frame get their replies', async (t) => {
  const srv = await startChatd(t, { env: FAST });
  const raw = await rawConnectAs(t, srv, 'alice');
  const replies = [];
  const done = raw.waitMessage((m) => {
    if (m.id) {
      replies.push(m);
    }
    return replies.length === 3;
  }, { timeoutMs: 5000, what: '3 replies' });
  raw.sendRaw([
    JSON.stringify({ id: 100, subscribe: { channel: 'chat:batch' } }),
    JSON.stringify({ id: 101, publish: { channel: 'chat:batch', data: chatMessage('batched') } }),
    JSON.stringify({ id: 102, history: { channel: 'chat:batch', limit: 10 } }),
  ].join('\n'));
  await done;
  const byId = Object.fromEntries(replies.map((r) => [r.id, r]));
  assert.ok(byId[100].subscribe, JSON.stringify(byId[100]));
  assert.ok(byId[101].publish, JSON.stringify(byId[101]));
  assert.equal(byId[102].history.publications.length, 1, JSON.stringify(byId[102]));
  const push = await raw.waitPush((p) => p.channel === 'chat:batch' && p.pub);
  assert.equal(push.pub.data.text, 'batched');
  assert.equal(push.pub.info.user, 'alice');
});
