// The web demo on the local cluster (scripts/cluster: nginx in front of three nodes on one Redis,
// PostgreSQL behind them, llm-mock as the assistant's provider), in Debian's Chromium. Alice on a
// laptop is held by node1, Bob on a phone by node2 (nginx routes by the chat_node cookie): they
// share a room with presence and typing, Alice scrolls back through 500 messages (most of them
// past Redis's window, from Postgres), both watch the assistant's answer stream in, a
// 400-character word keeps both layouts, and when node1 is killed Alice's page carries on
// through another node without losing or repeating a message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { NODES, startLocalCluster } from '../integration/cluster-util.mjs';
import { chatMessage, connectClient, subscribe, userToken, waitUntil } from '../integration/helpers.mjs';
import {
  CHROMIUM, LAUNCH, WEB_ROOT, answer, askAssistant, connected, message, newPage, screenshot, send,
  widerThanViewport,
} from './browser-util.mjs';

const TIMEOUT = 15_000;
const ARCHIVE = 500;

async function nodeOf(page) {
  const c = (await page.context().cookies()).find((x) => x.name === 'chat_node');
  return c ? c.value : null;
}

const badgeNode = (page) => page.getByTestId('connection-node').getAttribute('data-node');
const presenceUser = (page, user) => page.locator(`[data-testid="presence-user"][data-user="${user}"]`);

test('web demo on the cluster: two nodes, rooms, presence, typing, 500 messages back, the assistant, a node killed', { timeout: 180_000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install -y chromium)`);
  assert.ok(existsSync(`${WEB_ROOT}node_modules/centrifuge/dist/centrifuge.js`), 'run npm install in web-demo/ first');
  const cluster = await startLocalCluster(t);
  const browser = await chromium.launch(LAUNCH);
  t.after(() => browser.close());
  const errors = [];
  const open = async (user, width, nodeId, room) => {
    const page = await newPage(browser, width, errors, user, TIMEOUT);
    await page.context().addCookies([{ name: 'chat_node', value: nodeId, url: cluster.httpUrl }]);
    await page.goto(`${cluster.httpUrl}/?room=${room}`);
    await page.getByTestId('name-input').fill(user);
    await page.getByTestId('join-button').click();
    await connected(page);
    return page;
  };

  // 500 messages in chat:archive before anyone looks (Redis keeps the newest 200).
  const writer = await connectClient(t, { wsUrl: cluster.wsUrl }, { token: userToken('writer', {}, { secret: cluster.secret }) });
  const { sub: archive } = await subscribe(writer, 'chat:archive');
  for (let i = 1; i <= ARCHIVE; i++) {
    await archive.publish(chatMessage(`a${i}`));
  }
  writer.disconnect();

  const alice = await open('alice', 1280, 'node1', 'chat:team');
  const bob = await open('bob', 375, 'node2', 'chat:team');
  assert.equal(await badgeNode(alice), 'node1');
  assert.equal(await badgeNode(bob), 'node2');
  for (const page of [alice, bob]) {
    await presenceUser(page, 'alice').waitFor();
    await presenceUser(page, 'bob').waitFor();
  }

  // Typing and messages across the two nodes.
  await bob.getByTestId('message-input').pressSequentially('typing across nodes', { delay: 20 });
  await alice.getByTestId('typing').getByText('bob is typing…').waitFor();
  await bob.getByTestId('message-input').fill('');
  await send(alice, 'hello from node1');
  await message(bob, 'alice', 'hello from node1').waitFor();
  await send(bob, 'hello from node2');
  await message(alice, 'bob', 'hello from node2').waitFor();

  // Scroll-back: Alice joins the archive and pages back to its first message.
  await alice.getByTestId('new-room-input').fill('archive');
  await alice.getByTestId('new-room-button').click();
  await alice.getByTestId('message-text').getByText(`a${ARCHIVE}`, { exact: true }).waitFor();
  const older = alice.getByTestId('older-button');
  for (let pages = 0; pages < ARCHIVE / 50 + 2 && await older.isVisible(); pages++) {
    const before = await alice.getByTestId('message').count();
    await older.click();
    await waitUntil(async () => (await alice.getByTestId('message').count()) > before, { timeoutMs: TIMEOUT, what: 'an older page' });
  }
  await alice.getByTestId('room-start').waitFor();
  const texts = await alice.getByTestId('message-text').allTextContents();
  assert.deepEqual(texts, [...Array(ARCHIVE).keys()].map((k) => `a${k + 1}`), 'all 500, in order, none twice');
  assert.equal(await alice.getByTestId('message-time').count(), ARCHIVE, 'every message dated');
  await alice.getByTestId('scroller').evaluate((el) => { el.scrollTop = 0; });
  await screenshot(alice, 'cluster-scrollback-1280');
  await alice.locator('[data-testid="room"][data-room="chat:team"]').click();

  // A 400-character word keeps both layouts.
  await send(bob, 'x'.repeat(400));
  for (const page of [alice, bob]) {
    await message(page, 'bob', 'x'.repeat(400)).waitFor();
    assert.equal(await widerThanViewport(page), false, `${page === alice ? 'alice at 1280' : 'bob at 375'} px`);
  }

  // The assistant, paced by llm-mock: Bob watches the answer grow; both get the stored text;
  // Alice sees her quota.
  await askAssistant(alice, 'are you there?');
  await bob.waitForFunction(() => {
    const li = document.querySelector('[data-testid="message"].assistant[data-state="streaming"]');
    return li && Number(li.dataset.deltas) >= 2;
  });
  await screenshot(bob, 'cluster-assistant-streaming-375');
  for (const page of [alice, bob]) {
    await answer(page, 'done').waitFor();
    assert.equal(await answer(page, 'done').getByTestId('message-sender').textContent(), 'assistant (claude-demo)');
  }
  const stored = await answer(alice, 'done').getByTestId('message-text').textContent();
  assert.match(stored, /^are you there\? /);
  assert.equal(await answer(bob, 'done').getByTestId('message-text').textContent(), stored);
  assert.match(await alice.getByTestId('quota').textContent(), /^Assistant: 1 of 50 questions used today, 49 left/);
  const stats = await (await fetch(`${cluster.llmMockUrl}/stats`)).json();
  assert.equal(stats.streams_completed, 1, JSON.stringify(stats));
  await screenshot(alice, 'cluster-assistant-1280');

  // node1 dies with Alice on it. Bob (node2) writes while she is away; her page reconnects
  // through nginx to another node, which the badge and the cookie then name.
  process.kill(cluster.pid('node1'), 'SIGKILL');
  cluster.nodes.find((n) => n.id === 'node1').killed = true;
  await send(bob, 'while alice moves');
  await message(bob, 'bob', 'while alice moves').waitFor();
  await waitUntil(async () => {
    const n = await nodeOf(alice);
    return n !== 'node1' && NODES.includes(n);
  }, { timeoutMs: TIMEOUT, what: 'a new chat_node cookie' });
  await alice.locator('[data-testid="connection-node"]:not([data-node="node1"]):not([data-node=""])').waitFor();
  await connected(alice);
  assert.equal(await badgeNode(alice), await nodeOf(alice));
  await message(alice, 'bob', 'while alice moves').waitFor();
  await send(alice, 'alice is back');
  await message(bob, 'alice', 'alice is back').waitFor();
  // Nothing lost, nothing twice, the same order on both pages.
  const want = ['hello from node1', 'hello from node2', 'x'.repeat(400), '/ask are you there?', stored, 'while alice moves', 'alice is back'];
  for (const page of [alice, bob]) {
    assert.deepEqual(await page.getByTestId('message-text').allTextContents(), want);
  }
  assert.deepEqual(errors, []);
});
