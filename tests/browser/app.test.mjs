// The web demo as people use it, on one node in demo mode, in Debian's Chromium: the sign-in
// name rules as typed, the remembered name and sign out, rooms with unread counts and the room
// in the URL, keyboard-only use, WCAG AA contrast and no sideways scrolling at 375 and 1280 px;
// then messages pending while the node is frozen, refused ones with the server's reason and a
// Retry, the composer and presence while disconnected, and a node restarted with a new secret
// that the page signs in to again without a reload.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { startChatd, waitUntil } from '../integration/helpers.mjs';
import {
  CHROMIUM, LAUNCH, WEB_ROOT, connected, contrastProblems, message, newPage, screenshot, send,
  widerThanViewport,
} from './browser-util.mjs';

function setupBrowser(t) {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install -y chromium)`);
  assert.ok(existsSync(`${WEB_ROOT}node_modules/centrifuge/dist/centrifuge.js`), 'run npm install in web-demo/ first');
  return chromium.launch(LAUNCH).then((browser) => {
    t.after(() => browser.close());
    return browser;
  });
}

const roomButton = (page, channel) => page.locator(`[data-testid="room"][data-room="${channel}"]`);
const presenceUser = (page, user) => page.locator(`[data-testid="presence-user"][data-user="${user}"]`);

test('sign-in rules, rooms with unread counts and links, keyboard only, contrast and layout at 375 and 1280 px, sign out', { timeout: 90_000 }, async (t) => {
  const srv = await startChatd(t, { demo: true, env: { CHAT_WEB_ROOT: WEB_ROOT } });
  const browser = await setupBrowser(t);
  const errors = [];

  for (const width of [375, 1280]) {
    const page = await newPage(browser, width, errors, `sign-in@${width}`);
    await page.goto(`${srv.httpUrl}/`);
    assert.deepEqual(await contrastProblems(page), [], `sign-in page at ${width} px`);
    assert.equal(await widerThanViewport(page), false);
    await screenshot(page, `signin-${width}`);
    await page.context().close();
  }

  // Alice, on a laptop, with the keyboard only: the name field has the focus; the rules are
  // stated beside it and enforced as she types.
  const alice = await newPage(browser, 1280, errors, 'alice');
  await alice.goto(`${srv.httpUrl}/`);
  assert.match(await alice.getByTestId('name-rules').textContent(), /1 to 32 characters: letters, digits, _ or -/);
  assert.equal(await alice.evaluate(() => document.activeElement.id), 'name');
  await alice.keyboard.type('alice smith!');
  assert.match(await alice.getByTestId('name-error').textContent(), /Not allowed: spaces, “!”/);
  assert.equal(await alice.getByTestId('join-button').isDisabled(), true);
  await alice.keyboard.press('Enter'); // refused as typed: nothing is asked of the server
  assert.equal(await alice.getByTestId('join-form').isVisible(), true);
  await alice.getByTestId('name-input').fill('');
  await alice.keyboard.type('x'.repeat(40));
  assert.equal((await alice.getByTestId('name-input').inputValue()).length, 32, 'the field stops at 32');
  await alice.getByTestId('name-input').fill('');
  await alice.keyboard.type('alice');
  assert.equal(await alice.getByTestId('name-error').textContent(), '');
  assert.equal(await alice.getByTestId('join-button').isDisabled(), false);
  await alice.keyboard.press('Enter');
  await connected(alice);
  // The badge names the node serving the connection.
  assert.equal(await alice.getByTestId('connection-node').getAttribute('data-node'), srv.nodeId);
  assert.match(await alice.getByTestId('connection-state').textContent(), new RegExp(`connected · ${srv.nodeId}`));
  assert.equal(new URL(alice.url()).searchParams.get('room'), 'chat:lobby');
  assert.equal(await alice.evaluate(() => document.activeElement.id), 'text', 'the composer has the focus');
  await alice.keyboard.type('hello lobby');
  await alice.keyboard.press('Enter');
  await message(alice, 'alice', 'hello lobby').waitFor();
  // Dated by the server: a <time> with the message.
  const when = await message(alice, 'alice', 'hello lobby').getByTestId('message-time').getAttribute('datetime');
  assert.ok(Math.abs(Date.parse(when) - Date.now()) < 60_000, `message time ${when}`);

  // A room that cannot be one (typing is no room namespace) gets a reason, and the page goes on.
  await alice.getByTestId('new-room-input').fill('typing:lobby');
  await alice.getByTestId('new-room-input').press('Enter');
  assert.match(await alice.getByTestId('room-error').textContent(), /“typing” has no rooms; rooms can be made in: chat/);
  await alice.getByTestId('new-room-input').fill('no spaces please');
  await alice.getByTestId('new-room-input').press('Enter');
  assert.match(await alice.getByTestId('room-error').textContent(), /Room names are 1 to 64 letters/);

  // A new room, by keyboard: Tab to the room field, type, Enter.
  await alice.getByTestId('new-room-input').fill('');
  await alice.getByTestId('message-input').focus();
  for (let i = 0; i < 30 && await alice.evaluate(() => document.activeElement.id) !== 'new-room'; i++) {
    await alice.keyboard.press('Shift+Tab');
  }
  assert.equal(await alice.evaluate(() => document.activeElement.id), 'new-room');
  await alice.keyboard.type('design');
  await alice.keyboard.press('Enter');
  await roomButton(alice, 'chat:design').waitFor();
  assert.equal(await alice.getByTestId('room-title').textContent(), 'design');
  assert.equal(new URL(alice.url()).searchParams.get('room'), 'chat:design');

  // Bob, on a phone, opens alice's link: the room in the URL is the room he is shown.
  const bob = await newPage(browser, 375, errors, 'bob');
  await bob.goto(alice.url());
  await bob.getByTestId('name-input').fill('bob');
  await bob.getByTestId('join-button').click();
  await connected(bob);
  assert.equal(await bob.getByTestId('room-title').textContent(), 'design');
  await presenceUser(alice, 'bob').waitFor();
  await presenceUser(bob, 'alice').waitFor();

  // Bob joins the lobby too and writes there while alice looks at design: her lobby counts it.
  await bob.getByTestId('new-room-input').fill('lobby');
  await bob.getByTestId('new-room-button').click();
  await message(bob, 'alice', 'hello lobby').waitFor();
  await send(bob, 'lobby news 1');
  await send(bob, 'lobby news 2');
  await roomButton(alice, 'chat:lobby').getByTestId('unread').getByText('2', { exact: true }).waitFor();
  assert.equal(await roomButton(alice, 'chat:design').getByTestId('unread').count(), 0);
  await screenshot(alice, 'rooms-unread-1280');

  // A 400-character word keeps the layout on both. Alice's count goes to 3 (a page that
  // counted twice would go 2, 4, 6).
  await send(bob, 'w'.repeat(400));
  await message(bob, 'bob', 'w'.repeat(400)).waitFor();
  await roomButton(alice, 'chat:lobby').getByTestId('unread').getByText('3', { exact: true }).waitFor();
  assert.equal(await widerThanViewport(bob), false, 'the phone page does not scroll sideways');
  await screenshot(bob, 'room-375');

  // Alice goes to the lobby by keyboard: Tab to its button, Enter; the count goes.
  await alice.getByTestId('message-input').focus();
  const focusedRoom = () => alice.evaluate(() => document.activeElement.dataset.testid === 'room' && document.activeElement.dataset.room);
  for (let i = 0; i < 30 && await focusedRoom() !== 'chat:lobby'; i++) {
    await alice.keyboard.press('Shift+Tab');
  }
  assert.equal(await focusedRoom(), 'chat:lobby');
  await alice.keyboard.press('Enter');
  await alice.getByTestId('room-title').getByText('lobby', { exact: true }).waitFor();
  assert.equal(await focusedRoom(), 'chat:lobby', 'the focus stays on the room button');
  await message(alice, 'bob', 'lobby news 2').waitFor();
  await message(alice, 'bob', 'w'.repeat(400)).waitFor();
  assert.equal(await roomButton(alice, 'chat:lobby').getByTestId('unread').count(), 0);
  assert.deepEqual(await alice.getByTestId('message-text').allTextContents(),
    ['hello lobby', 'lobby news 1', 'lobby news 2', 'w'.repeat(400)]);
  assert.equal(await widerThanViewport(alice), false, 'the laptop page does not scroll sideways');
  // Back in the browser's history: design again.
  await alice.goBack();
  await alice.getByTestId('room-title').getByText('design', { exact: true }).waitFor();
  for (const [page, name] of [[alice, 'alice@1280'], [bob, 'bob@375']]) {
    assert.deepEqual(await contrastProblems(page), [], `chat page of ${name}`);
  }
  await screenshot(alice, 'room-1280');

  // Bob leaves design: off his list, and out of the room for alice.
  await roomButton(bob, 'chat:design').locator('xpath=..').getByTestId('leave-room').click();
  await roomButton(bob, 'chat:design').waitFor({ state: 'detached' });
  await presenceUser(alice, 'bob').waitFor({ state: 'detached' });
  assert.equal(await bob.getByTestId('room-title').textContent(), 'lobby');

  // The name is remembered: a reload signs alice straight in, to the room of the URL.
  await alice.reload();
  await connected(alice);
  assert.equal(await alice.getByTestId('me').textContent(), 'alice');
  assert.equal(await alice.getByTestId('room-title').textContent(), 'design');
  await roomButton(alice, 'chat:lobby').waitFor(); // and her rooms
  // A second tab of her browser offers her name but does not sign in on its own: the quick
  // start's two tabs can be two people.
  const tab = await alice.context().newPage();
  await tab.goto(`${srv.httpUrl}/`);
  await tab.getByTestId('join-form').waitFor();
  assert.equal(await tab.getByTestId('name-input').inputValue(), 'alice');
  assert.equal(await tab.getByTestId('connection-state').getAttribute('data-state'), 'disconnected');
  await tab.close();
  // Sign out: the sign-in form, nothing remembered, bob sees her go.
  await alice.getByTestId('sign-out').click();
  await alice.getByTestId('join-form').waitFor();
  assert.equal(await alice.getByTestId('name-input').inputValue(), '');
  await presenceUser(bob, 'alice').waitFor({ state: 'detached' });
  await alice.reload();
  await alice.getByTestId('join-form').waitFor();
  assert.equal(await alice.getByTestId('chat').isVisible(), false);
  // The next person on this browser gets none of alice's rooms: only the one in the URL.
  await alice.getByTestId('name-input').fill('carl');
  await alice.getByTestId('join-button').click();
  await connected(alice);
  assert.deepEqual(await alice.getByTestId('room').evaluateAll((els) => els.map((e) => e.dataset.room)), ['chat:design']);
  assert.equal(await alice.getByTestId('leave-room').count(), 0, 'the only room cannot be left');
  assert.deepEqual(errors, []);
});

test('pending while the node is frozen, refused with the reason and a Retry, disconnected composer, a restarted node with a new secret', { timeout: 90_000 }, async (t) => {
  // Two messages a second with a burst of 3: the fourth quick message is refused.
  const env = { CHAT_WEB_ROOT: WEB_ROOT, CHAT_RATE_LIMITS: 'free=0.5/3' };
  let srv = await startChatd(t, { demo: true, env });
  const browser = await setupBrowser(t);
  const errors = [];
  const open = async (user, width) => {
    const page = await newPage(browser, width, errors, user);
    await page.goto(`${srv.httpUrl}/?room=chat:state`);
    await page.getByTestId('name-input').fill(user);
    await page.getByTestId('join-button').click();
    await connected(page);
    return page;
  };
  const ann = await open('ann', 1280);
  const ben = await open('ben', 375);
  await presenceUser(ann, 'ben').waitFor();

  // Frozen node: the message shows as pending until the node answers.
  process.kill(srv.pid, 'SIGSTOP');
  let frozen = true;
  t.after(() => frozen && process.kill(srv.pid, 'SIGCONT'));
  await send(ann, 'sent while frozen');
  const pending = ann.getByTestId('message').filter({ hasText: 'sent while frozen' });
  await pending.and(ann.locator('[data-state="pending"]')).waitFor();
  assert.equal(await pending.getByTestId('message-mark').textContent(), 'sending…');
  await screenshot(ann, 'message-pending');
  process.kill(srv.pid, 'SIGCONT');
  frozen = false;
  await message(ben, 'ann', 'sent while frozen').waitFor();
  await ann.locator('[data-testid="message"][data-offset]').filter({ hasText: 'sent while frozen' }).waitFor();
  assert.equal(await ann.getByTestId('message').filter({ hasText: 'sent while frozen' }).count(), 1, 'shown once');

  // Refused: the rate limit's reason and wait on the message, and Retry sends it.
  // Five at once (one script turn, so a slow machine cannot spread them over the refill).
  await ann.evaluate(() => {
    for (let i = 1; i <= 5; i++) {
      document.getElementById('text').value = `burst ${i}`;
      document.getElementById('composer').requestSubmit();
    }
  });
  const failed = ann.locator('[data-testid="message"][data-state="failed"]').first();
  await failed.waitFor();
  const mark = await failed.getByTestId('message-mark').textContent();
  assert.match(mark, /^not sent: .*\(429\), try again in \d+ s$/);
  await screenshot(ann, 'message-failed');
  const bursts = async () => (await ann.getByTestId('message-text').allTextContents()).filter((x) => x.startsWith('burst'));
  const sentOrder = ['burst 1', 'burst 2', 'burst 3', 'burst 4', 'burst 5'];
  await waitUntil(async () => (await ann.locator('[data-testid="message"][data-state="pending"]').count()) === 0, { what: 'every send answered' });
  assert.deepEqual(await bursts(), sentOrder, 'in the order sent, refused ones in their place');
  const refused = await failed.getByTestId('message-text').textContent();
  const line = (page) => page.getByTestId('message').filter({ has: page.getByTestId('message-text').getByText(refused, { exact: true }) });
  // Retry after the wait the server asked for, as a person would (bounded).
  for (let i = 0; i < 5 && await line(ann).getAttribute('data-state') === 'failed'; i++) {
    const wait = Number(/try again in (\d+) s/.exec(await line(ann).getByTestId('message-mark').textContent())[1]);
    await ann.waitForTimeout(wait * 1000);
    await line(ann).getByTestId('retry-button').click();
    await ann.locator('[data-testid="message"][data-state="failed"], [data-testid="message"][data-offset]').filter({ hasText: refused }).first().waitFor();
  }
  await message(ben, 'ann', refused).waitFor();
  assert.equal(await message(ben, 'ann', refused).count(), 1);
  assert.equal(await message(ann, 'ann', refused).count(), 1, 'retried, shown once');
  assert.deepEqual(await bursts(), sentOrder, 'the retried one stays in its place');

  // The node stops: the badge says so, nothing can be sent, presence greys out.
  const port = srv.publicAddr.split(':')[1];
  await srv.stop();
  for (const page of [ann, ben]) {
    await page.locator('[data-testid="connection-state"]:not([data-state="connected"])').waitFor();
    assert.equal(await page.getByTestId('message-input').isDisabled(), true);
    assert.equal(await page.getByTestId('send-button').isDisabled(), true);
    assert.equal(await page.getByTestId('presence').getAttribute('data-stale'), 'true');
  }
  assert.deepEqual(await contrastProblems(ben), [], 'disconnected page');
  await screenshot(ben, 'disconnected-375');

  // The node comes back on its port with a new random secret: the old tokens are refused with
  // 3500, and the pages get new ones and connect without a reload.
  srv = await startChatd(t, { demo: true, env: { ...env, CHAT_LISTEN: `127.0.0.1:${port}` } });
  for (const page of [ann, ben]) {
    // The SDK's reconnect backoff grows to 20 s while the node is away.
    await page.locator('[data-testid="connection-state"][data-state="connected"]').waitFor({ timeout: 30_000 });
    assert.equal(await page.getByTestId('message-input').isDisabled(), false);
    assert.equal(await page.getByTestId('presence').getAttribute('data-stale'), 'false');
  }
  await presenceUser(ann, 'ben').waitFor();
  await send(ben, 'after the restart');
  await message(ann, 'ben', 'after the restart').waitFor();
  assert.deepEqual(errors, []);
});

test('away longer than the server keeps: the page shows what is kept and says older messages are gone, no silent gap', { timeout: 60_000 }, async (t) => {
  // A window of 5 messages and no database: 9 messages missed cannot be recovered.
  const namespaces = {
    chat: { history_size: 5, history_ttl: 3600, presence: true, join_leave: true, allow_subscribe: true, allow_publish: true, message_schema: 'chat', max_message_bytes: 4096 },
    typing: { history_size: 0, allow_subscribe: true, allow_publish: false, max_message_bytes: 512 },
  };
  const srv = await startChatd(t, { demo: true, env: { CHAT_WEB_ROOT: WEB_ROOT, CHAT_NAMESPACES: JSON.stringify(namespaces), CHAT_RATE_LIMITS: 'free=1000/1000' } });
  const browser = await setupBrowser(t);
  const errors = [];
  const open = async (user) => {
    const page = await newPage(browser, 1280, errors, user);
    await page.goto(`${srv.httpUrl}/?room=chat:gap`);
    await page.getByTestId('name-input').fill(user);
    await page.getByTestId('join-button').click();
    await connected(page);
    return page;
  };
  const writer = await open('writer');
  const reader = await open('reader');
  for (let i = 1; i <= 3; i++) {
    await send(writer, `m${i}`);
    await message(reader, 'writer', `m${i}`).waitFor();
  }
  assert.equal(await reader.getByTestId('room-start').textContent(), 'The beginning of this room.');
  await reader.context().setOffline(true);
  await reader.locator('[data-testid="connection-state"]:not([data-state="connected"])').waitFor();
  for (let i = 4; i <= 12; i++) {
    await send(writer, `m${i}`);
    await writer.locator('[data-testid="message"][data-offset]').filter({ hasText: new RegExp(`^writer.*m${i}$`) }).waitFor();
  }
  await reader.context().setOffline(false);
  await connected(reader);
  await message(reader, 'writer', 'm12').waitFor();
  await reader.getByTestId('room-start').getByText('Older messages are no longer kept.').waitFor();
  assert.deepEqual(await reader.getByTestId('message-text').allTextContents(), ['m8', 'm9', 'm10', 'm11', 'm12'],
    'what the server keeps, not m1-m3 beside it as if nothing were missing');
  assert.deepEqual(errors, []);
});
