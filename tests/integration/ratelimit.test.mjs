// Per-user publish rate limit (CHAT_RATE_LIMITS=free=2/3): a burst beyond the bucket gets
// error 429 (temporary, message with retry_after_ms=N); after that time a publish succeeds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, connectClient, subscribe, chatMessage, delay, waitMetric, Collector } from './helpers.mjs';

test('rate limit: burst gets 429 with retry_after_ms, temporary; after the wait a publish succeeds', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_RATE_LIMITS: 'free=2/3' } });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub } = await subscribe(alice, 'chat:ratelimit');
  const { sub: bobSub } = await subscribe(bob, 'chat:ratelimit');
  const received = new Collector(bobSub, 'publication');

  const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => sub.publish(chatMessage(`burst ${i}`))));
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
  assert.ok(ok.length >= 3, `the burst of 3 is allowed (${ok.length} succeeded)`);
  assert.ok(ok.length <= 4, `at most burst + one refill succeed (${ok.length})`);
  assert.ok(refused.length >= 4, `${refused.length} refused`);
  let retryMs = 0;
  for (const e of refused) {
    assert.equal(e.code, 429, JSON.stringify(e));
    assert.equal(e.temporary, true, JSON.stringify(e));
    const m = /retry_after_ms=(\d+)/.exec(e.message);
    assert.ok(m, `message carries retry_after_ms: ${JSON.stringify(e)}`);
    const v = Number(m[1]);
    assert.ok(v > 0 && v <= 1000, `retry_after_ms=${v} fits a rate of 2/s`);
    retryMs = Math.max(retryMs, v);
  }
  assert.equal(alice.state, 'connected', 'a rate-limited client stays connected');

  // Other users are not limited by alice's bucket.
  await bobSub.publish(chatMessage('bob is fine'));

  // The refused ones were not published.
  await received.waitCount(ok.length + 1);
  await delay(retryMs + 50);
  await sub.publish(chatMessage('after the wait'));
  await received.waitCount(ok.length + 2);
  assert.equal(received.items.length, ok.length + 2);
  assert.equal(received.items[received.items.length - 1].data.text, 'after the wait');

  await waitMetric(srv, 'chat_rate_limited_total', {}, (v) => v >= refused.length);
  await waitMetric(srv, 'chat_errors_total', { code: '429' }, (v) => v >= refused.length);
});
