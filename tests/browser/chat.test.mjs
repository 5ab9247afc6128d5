// Browser test of the web demo: Debian's Chromium driven by playwright-core against a chatd in
// demo mode serving web-demo/. Two users in two browser contexts chat with each other.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { startChatd } from '../integration/helpers.mjs';
import { CHROMIUM, LAUNCH, WEB_ROOT, message, send } from './browser-util.mjs';
const TIMEOUT = 10_000;

async function setup(t) {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install -y chromium)`);
  assert.ok(existsSync(`${WEB_ROOT}node_modules/centrifuge/dist/centrifuge.js`), 'run npm install in web-demo/ first');
  const srv = await startChatd(t, { demo: true, env: { CHAT_WEB_ROOT: WEB_ROOT } });
  const browser = await chromium.launch(LAUNCH);
  t.after(() => browser.close());
  const pageErrors = [];
  const open = async (user, room) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') {
        pageErrors.push(`${user} console: ${m.text()}`);
      }
    });
    await page.goto(`${srv.httpUrl}/`);
    await page.getByTestId('name-input').fill(user);
    await page.getByTestId('room-input').fill(room);
    await page.getByTestId('join-button').click();
    try {
      await page.locator('[data-testid="connection-state"][data-state="connected"]').waitFor();
    } catch (e) {
      const shown = await page.getByTestId('error').textContent().catch(() => '?');
      throw new Error(`${user} did not get connected; the page shows: ${JSON.stringify(shown)}\n${e.message}`);
    }
    return page;
  };
  return { srv, open, pageErrors };
}

const presenceUser = (page, user) => page.locator(`[data-testid="presence-user"][data-user="${user}"]`);

test('alice and bob chat in the web demo', { timeout: 60_000 }, async (t) => {
  const { open, pageErrors } = await setup(t);
  const room = 'chat:browser';
  const alice = await open('alice', room);
  const bob = await open('bob', room);

  // Presence shows both, on both pages.
  for (const page of [alice, bob]) {
    await presenceUser(page, 'alice').waitFor();
    await presenceUser(page, 'bob').waitFor();
  }

  await send(alice, 'hello bob, this is alice');
  await message(bob, 'alice', 'hello bob, this is alice').waitFor();
  await message(alice, 'alice', 'hello bob, this is alice').waitFor();

  await send(bob, 'hi alice!');
  await message(alice, 'bob', 'hi alice!').waitFor();

  // Each message shown once.
  assert.equal(await message(bob, 'alice', 'hello bob, this is alice').count(), 1);
  assert.equal(await message(alice, 'bob', 'hi alice!').count(), 1);

  // A late joiner gets the conversation from history.
  const carol = await open('carol', room);
  await message(carol, 'alice', 'hello bob, this is alice').waitFor();
  await message(carol, 'bob', 'hi alice!').waitFor();
  const texts = await carol.getByTestId('message-text').allTextContents();
  assert.deepEqual(texts, ['hello bob, this is alice', 'hi alice!']);
  await presenceUser(alice, 'carol').waitFor();

  // Carol leaves: the others see it in presence.
  await carol.context().close();
  await presenceUser(alice, 'carol').waitFor({ state: 'detached' });

  await alice.screenshot({ path: '/tmp/chatd-browser-alice.png', fullPage: true });
  await bob.screenshot({ path: '/tmp/chatd-browser-bob.png', fullPage: true });
  assert.deepEqual(pageErrors, []);
});

test('typing indicator: bob typing shows on alice\'s page', { timeout: 60_000 }, async (t) => {
  const { open, pageErrors } = await setup(t);
  const room = 'chat:typing-test';
  const alice = await open('alice', room);
  const bob = await open('bob', room);
  await presenceUser(alice, 'bob').waitFor();
  await bob.getByTestId('message-input').pressSequentially('typing something', { delay: 20 });
  await alice.getByTestId('typing').getByText('bob is typing…').waitFor();
  assert.equal(await bob.getByTestId('typing').textContent(), '', 'no indicator for one\'s own typing');
  assert.deepEqual(pageErrors, []);
});
