// Recovery: a subscriber whose connection drops while others publish gets the missed messages
// on resubscribe (wasRecovering and recovered true), every message exactly once, in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, subscribe, rawConnectAs, Collector, chatMessage, waitEvent, sdkSocket,
} from './helpers.mjs';

const FAST = { CHAT_RATE_LIMITS: 'free=1000/1000' };
const texts = (items) => items.map((p) => p.data.text);
const range = (from, to) => Array.from({ length: to - from }, (_, i) => `m${from + i}`);

async function setup(t, channel, subscriberOpts = {}) {
  const srv = await startChatd(t, { env: FAST });
  const publisher = await connectClient(t, srv, { user: 'publisher' });
  const { sub: pubSub } = await subscribe(publisher, channel);
  // A fixed reconnect delay leaves time to publish while the subscriber is away.
  const subscriber = await connectClient(t, srv, { user: 'reader', minReconnectDelay: 1500, maxReconnectDelay: 1500, ...subscriberOpts });
  const { sub, ctx } = await subscribe(subscriber, channel, { recoverable: true, positioned: true });
  assert.equal(ctx.recoverable, true);
  assert.equal(ctx.wasRecovering, false);
  const pubs = new Collector(sub, 'publication');
  const subscribed = new Collector(sub, 'subscribed');
  return { srv, publisher, pubSub, subscriber, sub, pubs, subscribed };
}

test('recovery after the socket is dropped while another client publishes', async (t) => {
  const { pubSub, subscriber, pubs, subscribed } = await setup(t, 'chat:recover1');
  for (let i = 0; i < 5; i++) {
    await pubSub.publish(chatMessage(`m${i}`));
  }
  await pubs.waitCount(5);

  // Drop the TCP connection under the SDK (no close frame).
  const connecting = waitEvent(subscriber, 'connecting', { timeoutMs: 5000 });
  sdkSocket(subscriber).terminate();
  await connecting;
  assert.equal(subscriber.state, 'connecting');
  for (let i = 5; i < 15; i++) {
    await pubSub.publish(chatMessage(`m${i}`));
  }
  assert.equal(subscriber.state, 'connecting', 'published while the subscriber was away');

  await subscribed.waitCount(1, 10000);
  const ctx = subscribed.items[0];
  assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
  assert.equal(ctx.recovered, true, JSON.stringify(ctx));
  await pubs.waitCount(15, 5000);
  await pubSub.publish(chatMessage('m15'));
  await pubs.waitCount(16, 5000);
  assert.deepEqual(texts(pubs.items), range(0, 16), 'every message exactly once, in order');
  const offsets = pubs.items.map((p) => p.offset);
  assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i), 'consecutive offsets');
});

test('recovery after disconnect() and connect() of the SDK client', async (t) => {
  const { pubSub, subscriber, pubs, subscribed } = await setup(t, 'chat:recover2');
  for (let i = 0; i < 3; i++) {
    await pubSub.publish(chatMessage(`m${i}`));
  }
  await pubs.waitCount(3);
  subscriber.disconnect();
  for (let i = 3; i < 10; i++) {
    await pubSub.publish(chatMessage(`m${i}`));
  }
  subscriber.connect();
  await subscribed.waitCount(1, 10000);
  assert.equal(subscribed.items[0].wasRecovering, true);
  assert.equal(subscribed.items[0].recovered, true);
  await pubs.waitCount(10);
  await pubSub.publish(chatMessage('m10'));
  await pubs.waitCount(11);
  assert.deepEqual(texts(pubs.items), range(0, 11));
});

test('recovery with nothing missed: recovered true, no publication repeated', async (t) => {
  const { pubSub, subscriber, pubs, subscribed } = await setup(t, 'chat:recover3', { minReconnectDelay: 100, maxReconnectDelay: 100 });
  await pubSub.publish(chatMessage('m0'));
  await pubs.waitCount(1);
  sdkSocket(subscriber).terminate();
  await subscribed.waitCount(1, 10000);
  assert.equal(subscribed.items[0].recovered, true);
  assert.equal(subscribed.items[0].hasRecoveredPublications, false);
  await pubSub.publish(chatMessage('m1'));
  await pubs.waitCount(2);
  assert.deepEqual(texts(pubs.items), ['m0', 'm1']);
});

test('raw: recover with a stale epoch gives recovered false; a current position returns the missed publications oldest first', async (t) => {
  const srv = await startChatd(t, { env: FAST });
  const pub = await rawConnectAs(t, srv, 'publisher');
  const first = await pub.call('subscribe', { channel: 'chat:recover4', recoverable: true, positioned: true });
  assert.equal(first.recoverable, true, JSON.stringify(first));
  assert.equal(typeof first.epoch, 'string');
  for (let i = 0; i < 4; i++) {
    await pub.call('publish', { channel: 'chat:recover4', data: chatMessage(`m${i}`) });
  }
  const reader = await rawConnectAs(t, srv, 'reader');
  const stale = await reader.call('subscribe', { channel: 'chat:recover4', recoverable: true, recover: true, epoch: 'stale-epoch', offset: 1 });
  assert.equal(stale.was_recovering, true, JSON.stringify(stale));
  assert.ok(!stale.recovered, JSON.stringify(stale));
  assert.equal(stale.epoch, first.epoch);
  assert.equal(stale.offset, (first.offset || 0) + 4);
  await reader.call('unsubscribe', { channel: 'chat:recover4' });

  const good = await reader.call('subscribe', { channel: 'chat:recover4', recoverable: true, recover: true, epoch: first.epoch, offset: (first.offset || 0) + 1 });
  assert.equal(good.recovered, true, JSON.stringify(good));
  assert.equal(good.was_recovering, true);
  assert.deepEqual(good.publications.map((p) => p.data.text), ['m1', 'm2', 'm3']);
  assert.deepEqual(good.publications.map((p) => p.offset), [2, 3, 4].map((n) => n + (first.offset || 0)));
});

test('recovery impossible (missed more than history_size): recovered false, the app reloads', async (t) => {
  const namespaces = {
    chat: { history_size: 5, history_ttl: 3600, presence: true, join_leave: true, allow_subscribe: true, allow_publish: true, message_schema: 'chat', max_message_bytes: 4096 },
    personal: { history_size: 10, history_ttl: 3600, allow_subscribe: false, allow_publish: false },
  };
  const srv = await startChatd(t, { env: { ...FAST, CHAT_NAMESPACES: JSON.stringify(namespaces) } });
  const publisher = await connectClient(t, srv, { user: 'publisher' });
  const { sub: pubSub } = await subscribe(publisher, 'chat:small');
  const subscriber = await connectClient(t, srv, { user: 'reader' });
  const { sub } = await subscribe(subscriber, 'chat:small', { recoverable: true, positioned: true });
  const pubs = new Collector(sub, 'publication');
  const subscribed = new Collector(sub, 'subscribed');
  await pubSub.publish(chatMessage('m0'));
  await pubs.waitCount(1);
  subscriber.disconnect();
  for (let i = 1; i <= 8; i++) {
    await pubSub.publish(chatMessage(`m${i}`));
  }
  subscriber.connect();
  await subscribed.waitCount(1, 10000);
  assert.equal(subscribed.items[0].wasRecovering, true);
  assert.equal(subscribed.items[0].recovered, false, 'm1..m3 fell out of a 5-entry history');
  assert.equal(subscribed.items[0].streamPosition.offset, 9);
  // History holds the last 5.
  const h = await sub.history({ limit: 100 });
  assert.deepEqual(h.publications.map((p) => p.data.text), ['m4', 'm5', 'm6', 'm7', 'm8']);
  // Live delivery goes on.
  const live = waitEvent(sub, 'publication', { filter: (p) => p.data.text === 'm9' });
  await pubSub.publish(chatMessage('m9'));
  assert.equal((await live).offset, 10);
});
