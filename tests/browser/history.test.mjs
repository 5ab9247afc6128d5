// Browser test of the web demo's scroll-back: a node with durable history (a PostgreSQL of the
// test's own) and a 5-message window; the page pages back through 120 messages to the first.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { JWT_SECRET, chatMessage, connectClient, startChatd, subscribe } from '../integration/helpers.mjs';
import { startPostgres } from '../integration/pg-util.mjs';
import { LAUNCH, WEB_ROOT, joinAs } from './browser-util.mjs';

test('the web demo scrolls back through durable history past the server\'s window', { timeout: 90_000 }, async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('demo');
  const namespaces = {
    chat: { history_size: 5, history_ttl: 3600, presence: true, join_leave: true, allow_subscribe: true, allow_publish: true, message_schema: 'chat', max_message_bytes: 4096 },
    typing: { history_size: 0, allow_subscribe: true, allow_publish: false, max_message_bytes: 512 },
    personal: { history_size: 10, history_ttl: 3600, allow_subscribe: false, allow_publish: false },
  };
  const srv = await startChatd(t, {
    env: {
      DATABASE_URL: url, CHAT_WEB_ROOT: WEB_ROOT, CHAT_JWT_SECRET: JWT_SECRET, CHAT_DEMO_TOKENS: 1,
      CHAT_NAMESPACES: JSON.stringify(namespaces), CHAT_RATE_LIMITS: 'free=10000/10000',
    },
  });
  const writer = await connectClient(t, srv, { user: 'writer' });
  const { sub } = await subscribe(writer, 'chat:archive');
  for (let i = 1; i <= 120; i++) {
    await sub.publish(chatMessage(`m${i}`));
  }
  const browser = await chromium.launch(LAUNCH);
  t.after(() => browser.close());
  const errors = [];
  const page = await joinAs(browser, srv.httpUrl, 'reader', 'chat:archive', errors);
  const texts = () => page.getByTestId('message-text').allTextContents();
  const want = (from, to) => [...Array(to - from + 1).keys()].map((k) => `m${from + k}`);
  // The newest page first.
  await page.getByTestId('message-text').getByText('m71', { exact: true }).waitFor();
  assert.deepEqual(await texts(), want(71, 120));
  const older = page.getByTestId('older-button');
  await older.click();
  await page.getByTestId('message-text').getByText('m21', { exact: true }).waitFor();
  assert.deepEqual(await texts(), want(21, 120));
  await older.click();
  await page.getByTestId('message-text').getByText('m1', { exact: true }).waitFor();
  assert.deepEqual(await texts(), want(1, 120), 'every message, in order, back to the first');
  await older.waitFor({ state: 'hidden' });
  await page.screenshot({ path: '/tmp/chatd-browser-history.png' });
  assert.deepEqual(errors, []);
});
