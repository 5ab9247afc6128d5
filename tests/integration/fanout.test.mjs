// Fan-out: one publisher, 200 SDK subscribers, every message to every subscriber, in order,
// no loss, no duplicates; once with the default flush, once with the flush cut into slices of a
// few connections each (the loop polls between slices, and what it reads meanwhile joins the
// same round).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, subscribe, Collector, chatMessage, waitMetric, scrapeMetrics, metricValue,
} from './helpers.mjs';

const SUBSCRIBERS = 200;
const MESSAGES = 50;

async function fanout(t, env) {
  const srv = await startChatd(t, { env: { CHAT_RATE_LIMITS: 'free=1000/1000', ...env } });
  const channel = 'chat:fanout';

  // Connect and subscribe in batches, each subscriber its own user.
  const collectors = [];
  for (let base = 0; base < SUBSCRIBERS; base += 50) {
    const batch = [];
    for (let i = base; i < Math.min(base + 50, SUBSCRIBERS); i++) {
      batch.push((async () => {
        const c = await connectClient(t, srv, { user: `user-${i}`, connectTimeoutMs: 15000 });
        const { sub } = await subscribe(c, channel, { recoverable: true, positioned: true }, 15000);
        return new Collector(sub, 'publication');
      })());
    }
    collectors.push(...(await Promise.all(batch)));
  }
  assert.equal(collectors.length, SUBSCRIBERS);
  await waitMetric(srv, 'chat_connections', {}, (v) => v >= SUBSCRIBERS + 0);

  const publisher = await connectClient(t, srv, { user: 'publisher' });
  const { sub: pubSub } = await subscribe(publisher, channel);
  for (let i = 0; i < MESSAGES; i++) {
    await pubSub.publish(chatMessage(`m${i}`, `fanout-${i}`));
  }

  await Promise.all(collectors.map((c) => c.waitCount(MESSAGES, 30000)));
  const expected = Array.from({ length: MESSAGES }, (_, i) => `m${i}`);
  for (let s = 0; s < collectors.length; s++) {
    const items = collectors[s].items;
    assert.deepEqual(items.map((p) => p.data.text), expected, `subscriber ${s}: every message once, in order`);
    for (let i = 1; i < items.length; i++) {
      assert.equal(items[i].offset, items[i - 1].offset + 1, `subscriber ${s}: consecutive offsets`);
    }
    assert.ok(items.every((p) => p.info && p.info.user === 'publisher'));
  }
  // A last marker: no subscriber has more than the messages plus the marker (no duplicates late).
  await pubSub.publish(chatMessage('end', 'fanout-end'));
  await Promise.all(collectors.map((c) => c.waitCount(MESSAGES + 1, 10000)));
  for (const c of collectors) {
    assert.equal(c.items.length, MESSAGES + 1);
    assert.equal(c.items[MESSAGES].data.text, 'end');
  }
  return srv;
}

test(`one publisher reaches ${SUBSCRIBERS} subscribers with ${MESSAGES} messages in order`, { timeout: 120_000 }, async (t) => {
  await fanout(t, {});
});

// CHAT_FLUSH_SLICE_US=1 ends a slice at the first clock reading, every 16 connections: each
// round of 200 subscribers takes 13 slices with polls between them. A slice that did not go on
// after its poll would leave the last publication (the marker) unwritten, since nothing else
// wakes the loop; one that wrote a connection twice or out of turn would break the order.
test(`the same fan-out with the flush cut into slices of 16 connections`, { timeout: 120_000 }, async (t) => {
  const srv = await fanout(t, { CHAT_FLUSH_SLICE_US: '1' });
  const slices = metricValue(await scrapeMetrics(srv), 'chat_flush_slices_total');
  // A round of 201 connections (the publisher too) takes at least 13 slices.
  assert.ok(slices >= 13, `flushes were cut into slices (${slices})`);
});

// The same with a write delay: the round starts from the delay's timer and goes on after each poll.
test(`the same fan-out with a write delay and the flush cut into slices`, { timeout: 120_000 }, async (t) => {
  const srv = await fanout(t, { CHAT_FLUSH_SLICE_US: '1', CHAT_WRITE_DELAY_MS: '2' });
  const slices = metricValue(await scrapeMetrics(srv), 'chat_flush_slices_total');
  assert.ok(slices >= 13, `flushes were cut into slices (${slices})`);
});
