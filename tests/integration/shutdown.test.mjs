// SIGTERM: every client is closed with 3001 (reconnect advised) and chatd exits 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, connectClient, subscribe, rawConnectAs, waitEvent, withTimeout } from './helpers.mjs';

test('SIGTERM closes clients with 3001 and exits 0', { timeout: 30_000 }, async (t) => {
  const srv = await startChatd(t);
  const raws = [];
  for (let i = 0; i < 3; i++) {
    const c = await rawConnectAs(t, srv, `raw-${i}`);
    await c.call('subscribe', { channel: 'chat:shutdown' });
    raws.push(c);
  }
  const sdk = await connectClient(t, srv, { user: 'alice', minReconnectDelay: 60000, maxReconnectDelay: 60000 });
  await subscribe(sdk, 'chat:shutdown');
  const reconnecting = waitEvent(sdk, 'connecting', { filter: (c) => c.code === 3001, timeoutMs: 10000, what: 'SDK connecting with code 3001' });
  reconnecting.catch(() => {}); // awaited below; no unhandled rejection if an assertion fails first

  const result = await srv.stop({ timeoutMs: 10000 });
  assert.ok(!result.killedAfterTimeout, `chatd did not exit within 10 s of SIGTERM\n${srv.describe()}`);
  assert.equal(result.signal, null, `exit by signal ${result.signal}`);
  assert.equal(result.code, 0, `exit code\n${srv.describe()}`);

  for (const c of raws) {
    const close = await withTimeout(c.closed, 5000, 'close of a raw client');
    assert.equal(close.code, 3001, JSON.stringify(close));
  }
  const ctx = await reconnecting;
  assert.equal(ctx.code, 3001);
  assert.equal(sdk.state, 'connecting', 'the SDK will reconnect after 3001 (not a terminal code)');
  sdk.disconnect();
});

test('SIGINT also exits 0', async (t) => {
  const srv = await startChatd(t);
  const c = await rawConnectAs(t, srv, 'alice');
  const result = await srv.stop({ signal: 'SIGINT', timeoutMs: 10000 });
  assert.ok(!result.killedAfterTimeout);
  assert.equal(result.code, 0);
  assert.equal((await withTimeout(c.closed, 5000, 'close')).code, 3001);
});
