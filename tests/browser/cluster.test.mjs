// The web demo through the local cluster (scripts/cluster: nginx in front of three nodes on one
// Redis), in Debian's Chromium: two users chat through nginx, the node holding them is killed
// with SIGKILL, and the pages carry on through another node, which the browser's chat_node
// cookie then names, with the conversation intact (nothing lost, nothing shown twice). Then the
// assistant answers through the surviving nodes from the cluster's llm-mock, streaming to both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { NODES, startLocalCluster } from '../integration/cluster-util.mjs';
import { waitUntil } from '../integration/helpers.mjs';
import { CHROMIUM, LAUNCH, WEB_ROOT, answer, askAssistant, message, send } from './browser-util.mjs';

const TIMEOUT = 15_000;

async function nodeOf(page) {
  const c = (await page.context().cookies()).find((x) => x.name === 'chat_node');
  return c ? c.value : null;
}

test('web demo through nginx: a killed node\'s users carry on through another node', { timeout: 120_000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install -y chromium)`);
  assert.ok(existsSync(`${WEB_ROOT}node_modules/centrifuge/dist/centrifuge.js`), 'run npm install in web-demo/ first');
  const cluster = await startLocalCluster(t);
  const browser = await chromium.launch(LAUNCH);
  t.after(() => browser.close());
  const pageErrors = [];
  const open = async (user, room) => {
    const page = await (await browser.newContext()).newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
    await page.goto(`${cluster.httpUrl}/`);
    await page.getByTestId('name-input').fill(user);
    await page.getByTestId('room-input').fill(room);
    await page.getByTestId('join-button').click();
    await page.locator('[data-testid="connection-state"][data-state="connected"]').waitFor();
    return page;
  };
  const room = 'chat:cluster-browser';
  const alice = await open('alice', room);
  const bob = await open('bob', room);
  await send(alice, 'hello from alice');
  await message(bob, 'alice', 'hello from alice').waitFor();

  // Both came from 127.0.0.1 without a cookie, so nginx's address hash gave them one node,
  // which every response since (the upgrade included) named in their cookie.
  const victim = await nodeOf(alice);
  assert.ok(NODES.includes(victim), `alice's chat_node cookie: ${victim}`);
  assert.equal(await nodeOf(bob), victim);

  process.kill(cluster.pid(victim), 'SIGKILL');
  cluster.nodes.find((n) => n.id === victim).killed = true;
  // The SDK reconnects through nginx, which sends the dead node's cookie to a backup; that
  // node's upgrade answer re-points the cookie.
  for (const page of [alice, bob]) {
    await waitUntil(async () => {
      const n = await nodeOf(page);
      return n !== victim && NODES.includes(n);
    }, { timeoutMs: TIMEOUT, what: 'a new chat_node cookie' });
    await page.locator('[data-testid="connection-state"][data-state="connected"]').waitFor();
  }
  await send(bob, 'bob, after the failover');
  await message(alice, 'bob', 'bob, after the failover').waitFor();
  await send(alice, 'alice, after the failover');
  await message(bob, 'alice', 'alice, after the failover').waitFor();
  // Nothing shown twice, nothing lost from before.
  for (const page of [alice, bob]) {
    assert.deepEqual(await page.getByTestId('message-text').allTextContents(),
      ['hello from alice', 'bob, after the failover', 'alice, after the failover']);
  }

  // The assistant of the cluster: llm-mock in the Anthropic format, paced so that bob watches
  // the answer grow before it is stored.
  await askAssistant(alice, 'are you there?');
  await bob.waitForFunction(() => {
    const li = document.querySelector('[data-testid="message"].assistant[data-state="streaming"]');
    return li && Number(li.dataset.deltas) >= 2;
  });
  for (const page of [alice, bob]) {
    await answer(page, 'done').waitFor();
    assert.equal(await answer(page, 'done').getByTestId('message-sender').textContent(), 'assistant (claude-demo)');
  }
  const stored = await answer(alice, 'done').getByTestId('message-text').textContent();
  assert.match(stored, /^are you there\? /);
  assert.equal(await answer(bob, 'done').getByTestId('message-text').textContent(), stored);
  const stats = await (await fetch(`${cluster.llmMockUrl}/stats`)).json();
  assert.equal(stats.streams_completed, 1, JSON.stringify(stats));
  assert.deepEqual(pageErrors, []);
});
