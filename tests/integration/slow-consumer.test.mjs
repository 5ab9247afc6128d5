// Slow consumer: a raw client that stops reading while a publisher floods the channel is closed
// with 3008 once its write queue passes CHAT_WRITE_QUEUE_BYTES; a normal subscriber keeps
// receiving every message; chatd's memory stays bounded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, subscribe, rawConnectAs, Collector, chatMessage, scrapeMetrics,
  metricValue, readRssBytes, waitMetric,
} from './helpers.mjs';

const QUEUE_BYTES = 262144;
const MAX_MESSAGES = 20000; // bound of the flood
const FLOOD_MS = 60_000; // bound of the flood in time
const BATCH = 20; // in flight to a reading client: 20 x 3 KB, far below the queue limit
const RSS_GROWTH_LIMIT = 64 * 1024 * 1024;

test('a client that stops reading is closed with 3008; others get every message; RSS bounded', { timeout: 180_000 }, async (t) => {
  const srv = await startChatd(t, {
    env: { CHAT_WRITE_QUEUE_BYTES: QUEUE_BYTES, CHAT_RATE_LIMITS: 'free=100000/100000', CHAT_PING_INTERVAL: 25 },
  });
  const channel = 'chat:flood';

  const slow = await rawConnectAs(t, srv, 'slowpoke');
  await slow.call('subscribe', { channel });

  const reader = await connectClient(t, srv, { user: 'reader', timeout: 20000 });
  const { sub: readerSub } = await subscribe(reader, channel);
  const received = new Collector(readerSub, 'publication');

  const publisher = await connectClient(t, srv, { user: 'publisher', timeout: 20000 });
  const { sub: pubSub } = await subscribe(publisher, channel);

  const rssBefore = readRssBytes(srv.pid);
  let rssMax = rssBefore;

  // Stop reading: the kernel buffers fill, then chatd's write queue for this client.
  slow.ws._socket.pause();

  const text = 'x'.repeat(3000);
  let sent = 0;
  let closedBy3008 = false;
  const started = Date.now();
  while (sent < MAX_MESSAGES && Date.now() - started < FLOOD_MS) {
    const batch = [];
    for (let i = 0; i < BATCH; i++, sent++) {
      batch.push(pubSub.publish(chatMessage(`${sent} ${text}`, `flood-${sent}`)));
    }
    await Promise.all(batch);
    rssMax = Math.max(rssMax, readRssBytes(srv.pid));
    const m = await scrapeMetrics(srv);
    if ((metricValue(m, 'chat_disconnects_total', { code: '3008' }) || 0) >= 1) {
      closedBy3008 = true;
      break;
    }
  }
  assert.ok(closedBy3008, `chat_disconnects_total{code="3008"} stayed 0 after ${sent} messages of ~3 KB`);

  // Some more after the close: the other subscriber is unaffected.
  for (let i = 0; i < BATCH; i++, sent++) {
    await pubSub.publish(chatMessage(`${sent} after`, `flood-${sent}`));
  }
  rssMax = Math.max(rssMax, readRssBytes(srv.pid));

  // The slow client, reading again, drains what the kernel held and then sees the 3008 close.
  slow.ws._socket.resume();
  const close = await slow.waitClose(15000);
  assert.equal(close.code, 3008, `slow client close: ${JSON.stringify(close)}`);

  await received.waitCount(sent, 60000);
  assert.equal(received.items.length, sent);
  for (let i = 0; i < sent; i++) {
    const n = Number(received.items[i].data.text.split(' ')[0]);
    if (n !== i) {
      assert.fail(`reader: message ${i} is #${n}`);
    }
  }
  assert.equal(reader.state, 'connected');
  assert.equal(publisher.state, 'connected');

  const growth = rssMax - rssBefore;
  assert.ok(growth < RSS_GROWTH_LIMIT, `RSS grew by ${(growth / 1048576).toFixed(1)} MiB (limit 64)`);
  await waitMetric(srv, 'chat_connections', {}, (v) => v === 2);
  const m = await scrapeMetrics(srv);
  const queued = metricValue(m, 'chat_write_queue_bytes');
  assert.ok(queued !== undefined && queued < QUEUE_BYTES * 2, `chat_write_queue_bytes after the flood: ${queued}`);
});
