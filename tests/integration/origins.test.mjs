// CHAT_ALLOWED_ORIGINS: which browser origins may open a WebSocket (Centrifugo's allowed_origins).
// Unset, any origin may; set, an upgrade whose Origin matches no entry gets HTTP 403; a request
// without Origin (not a browser) is allowed either way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, scrapeMetrics, metricValue, WebSocket } from './helpers.mjs';

/** Opens a raw WebSocket with the given Origin (or none): {open: true} or {status}. */
function upgrade(srv, origin) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(srv.wsUrl, origin === undefined ? {} : { origin });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`no answer to the upgrade with origin ${origin}`));
    }, 5000);
    ws.once('open', () => {
      clearTimeout(timer);
      ws.close();
      resolve({ open: true });
    });
    ws.once('unexpected-response', (req, res) => {
      clearTimeout(timer);
      res.resume();
      req.destroy();
      resolve({ status: res.statusCode });
    });
    ws.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

test('without CHAT_ALLOWED_ORIGINS any origin may connect', async (t) => {
  const srv = await startChatd(t);
  assert.deepEqual(await upgrade(srv, 'https://evil.example'), { open: true });
  assert.deepEqual(await upgrade(srv, undefined), { open: true });
});

test('CHAT_ALLOWED_ORIGINS: listed origins and wildcard hosts connect, others get 403', async (t) => {
  const srv = await startChatd(t, {
    env: { CHAT_ALLOWED_ORIGINS: 'https://chat.example.com, https://*.example.org http://127.0.0.1:*' },
  });
  for (const origin of [
    'https://chat.example.com',
    'HTTPS://Chat.Example.COM',
    'https://a.example.org',
    'https://a.b.example.org',
    'http://127.0.0.1:8000',
    undefined, // not a browser
  ]) {
    assert.deepEqual(await upgrade(srv, origin), { open: true }, `origin ${origin}`);
  }
  const refused = [
    'https://evil.example',
    'http://chat.example.com',
    'https://chat.example.com.evil.example',
    'https://chat.example.com:8443',
    'https://evil.example/https://chat.example.com',
    'https://a.example.org:444',
    'https://example.org',
    'null',
  ];
  for (const origin of refused) {
    assert.deepEqual(await upgrade(srv, origin), { status: 403 }, `origin ${origin}`);
  }
  const m = await scrapeMetrics(srv);
  assert.equal(metricValue(m, 'chat_connections_refused_total', { reason: 'origin' }), refused.length);
});

test('CHAT_ALLOWED_ORIGINS=* allows every origin', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_ALLOWED_ORIGINS: '*' } });
  assert.deepEqual(await upgrade(srv, 'https://anything.example'), { open: true });
});
