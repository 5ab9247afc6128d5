// The assistant in the web demo, in Debian's Chromium: one member asks, every member watches the
// answer grow delta by delta until the stored message replaces it, the same text on every page
// and again from history after a reload. With llm-mock behind a one-stream cluster limit: the
// asker's queue position, a full queue (503) and a used-up daily quota (402) with their retry
// times, and Stop, which stores the partial answer marked as cancelled.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { startChatd } from '../integration/helpers.mjs';
import { LLM_MOCK_BIN, providerEnv, startMock } from '../integration/llm-util.mjs';
import { CHROMIUM, LAUNCH, WEB_ROOT, answer, askAssistant, joinAs, message } from './browser-util.mjs';

async function setup(t, env = {}) {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install -y chromium)`);
  assert.ok(existsSync(`${WEB_ROOT}node_modules/centrifuge/dist/centrifuge.js`), 'run npm install in web-demo/ first');
  const srv = await startChatd(t, { demo: true, env: { CHAT_WEB_ROOT: WEB_ROOT, ...env } });
  const browser = await chromium.launch(LAUNCH);
  t.after(() => browser.close());
  const pageErrors = [];
  return { srv, pageErrors, open: (user, room) => joinAs(browser, srv.httpUrl, user, room, pageErrors) };
}

// Records every state of the streaming answer's text on page, as the DOM changes.
function recordStream(page) {
  return page.evaluate(() => {
    window.answerStates = [];
    const seen = () => {
      const li = document.querySelector('[data-testid="message"].assistant[data-state="streaming"]');
      if (!li) {
        return;
      }
      const text = li.querySelector('[data-testid="message-text"]').textContent;
      const last = window.answerStates[window.answerStates.length - 1];
      if (!last || last.text !== text) {
        window.answerStates.push({ text, deltas: Number(li.dataset.deltas) });
      }
    };
    new MutationObserver(seen).observe(document.getElementById('scroller'),
      { childList: true, subtree: true, characterData: true, attributes: true });
  });
}

/** The error line of page, once it shows one. */
async function shownError(page) {
  await page.locator('[data-testid="error"]:not(:empty)').waitFor();
  return page.getByTestId('error').textContent();
}

const textOf = async (loc) => (await loc.getByTestId('message-text').textContent());

test('one member asks; both watch the answer stream in and get the same stored text', { timeout: 60_000 }, async (t) => {
  const { open, pageErrors } = await setup(t);
  const room = 'chat:assistant';
  const alice = await open('alice', room);
  const bob = await open('bob', room);
  await recordStream(bob);

  await askAssistant(alice, 'what is chatd?');
  // The question is in the room for everyone; the asker sees its request until it is answered.
  await message(bob, 'alice', '/ask what is chatd?').waitFor();
  await alice.getByTestId('ask').waitFor();

  // Bob sees the answer grow: at least two deltas applied while it is still streaming.
  await bob.waitForFunction(() => {
    const li = document.querySelector('[data-testid="message"].assistant[data-state="streaming"]');
    return li && Number(li.dataset.deltas) >= 2;
  });
  await answer(alice, 'done').waitFor();
  await answer(bob, 'done').waitFor();
  const finalAlice = await textOf(answer(alice, 'done'));
  const finalBob = await textOf(answer(bob, 'done'));
  assert.match(finalBob, /^Mock answer to "what is chatd\?":/);
  assert.equal(finalAlice, finalBob, 'the same stored text on both pages');

  const states = await bob.evaluate(() => window.answerStates);
  const growing = states.filter((s) => s.deltas > 0);
  assert.ok(growing.length >= 2, `intermediate states on bob's page: ${JSON.stringify(states)}`);
  for (let i = 0; i < growing.length; i++) {
    assert.ok(finalBob.startsWith(growing[i].text), `state ${i} is a prefix of the answer: ${growing[i].text}`);
    assert.ok(growing[i].text.length < finalBob.length || i === growing.length - 1, 'intermediate states are shorter');
    if (i > 0) {
      assert.ok(growing[i].text.length > growing[i - 1].text.length, 'the text only grows');
      assert.ok(growing[i].deltas > growing[i - 1].deltas);
    }
  }
  // The placeholder is gone; one answer line per page; the request line of the asker too.
  for (const page of [alice, bob]) {
    assert.equal(await page.locator('[data-testid="message"].assistant').count(), 1);
  }
  await alice.getByTestId('ask').waitFor({ state: 'detached' });

  // After a reload the answer comes from history, with the same text. The page remembers bob
  // and keeps the room in its URL: it signs him straight back into it.
  await bob.reload();
  await bob.locator('[data-testid="connection-state"][data-state="connected"]').waitFor();
  assert.equal(await bob.getByTestId('room-title').textContent(), 'assistant');
  await answer(bob, 'done').waitFor();
  assert.equal(await textOf(answer(bob, 'done')), finalAlice);
  assert.deepEqual(await bob.getByTestId('message-text').allTextContents(), ['/ask what is chatd?', finalAlice]);

  await alice.screenshot({ path: '/tmp/chatd-browser-assistant.png', fullPage: true });
  assert.deepEqual(pageErrors, []);
});

test('queue position, full queue (503) and used-up quota (402) with retry times, and Stop', { timeout: 90_000 }, async (t) => {
  assert.ok(existsSync(LLM_MOCK_BIN), `${LLM_MOCK_BIN} is missing (scripts/build release)`);
  const mock = await startMock(t);
  // Alice's answer runs long enough to hold the only stream while the others ask.
  await mock.control({ key: '*', scenario: 'ok', tokens: 2000, tokens_per_s: 20 });
  const { open, pageErrors } = await setup(t, {
    CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock, { type: 'openai' })]),
    CHAT_LLM_CONCURRENCY: '1',
    CHAT_LLM_QUEUE: 'free=1/60000,plus=1/60000,pro=1/60000,executive=1/60000',
    CHAT_LLM_QUOTAS: 'free=1/0,plus=1/0,pro=1/0,executive=1/0',
  });
  const room = 'chat:queue';
  const alice = await open('alice', room);
  const bob = await open('bob', room);
  const carol = await open('carol', room);

  await askAssistant(alice, 'a long story please');
  await alice.locator('[data-testid="ask"][data-state="answering"]').waitFor();
  await bob.waitForFunction(() => {
    const li = document.querySelector('[data-testid="message"].assistant[data-state="streaming"]');
    return li && Number(li.dataset.deltas) >= 1;
  });

  // Bob waits behind alice's stream, first in the queue.
  await askAssistant(bob, 'and a short one');
  const bobAsk = bob.locator('[data-testid="ask"][data-state="queued"]');
  await bobAsk.waitFor();
  assert.equal(await bobAsk.getAttribute('data-position'), '1');
  assert.equal(await bobAsk.getByTestId('ask-state').textContent(), 'next in the queue');

  // The queue of the free plan holds one: carol is turned away with a retry time, and her
  // question stays in the input for another try.
  await askAssistant(carol, 'me too');
  assert.match(await shownError(carol), /^assistant: assistant queue full \(503\), try again in \d+ (s|min)$/);
  assert.equal(await carol.getByTestId('message-input').inputValue(), 'me too');
  assert.equal(await message(carol, 'carol', '/ask me too').count(), 0, 'a refused question is not posted');
  // Alice has used her one question of the day.
  await askAssistant(alice, 'another one');
  assert.match(await shownError(alice), /^assistant: daily assistant quota used up \(402\), try again in \d+ (h|min|s)/);

  // Alice stops her answer: everyone sees the partial text stored and marked cancelled; bob's
  // question gets the stream.
  await mock.control({ key: '*', scenario: 'ok', tokens: 30, tokens_per_s: 60 });
  await alice.locator('[data-testid="ask"][data-state="answering"]').getByTestId('ask-cancel').click();
  for (const page of [alice, bob, carol]) {
    const cancelled = answer(page, 'cancelled');
    await cancelled.waitFor();
    assert.equal(await cancelled.getByTestId('message-mark').textContent(), 'cancelled');
    assert.match(await textOf(cancelled), /a long story please/);
  }
  await bob.locator('[data-testid="ask"][data-state="answering"]').or(answer(bob, 'done')).first().waitFor();
  await answer(bob, 'done').waitFor();
  await answer(carol, 'done').waitFor();
  assert.match(await textOf(answer(carol, 'done')), /^and a short one/);
  await bob.getByTestId('ask').waitFor({ state: 'detached' });
  assert.deepEqual(pageErrors, []);
});

test('a provider that fails after opening its stream: the answer line stays, marked failed, on every page', { timeout: 60_000 }, async (t) => {
  assert.ok(existsSync(LLM_MOCK_BIN), `${LLM_MOCK_BIN} is missing (scripts/build release)`);
  const mock = await startMock(t);
  // The stream opens (llm.start reaches the room), then an error event ends it before any text;
  // the retries meet the same.
  await mock.control({ key: '*', scenario: 'error_event' });
  const { open, pageErrors } = await setup(t, {
    CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock, { type: 'anthropic' })]),
  });
  const room = 'chat:failing';
  const alice = await open('alice', room);
  const bob = await open('bob', room);
  await askAssistant(alice, 'will this work?');
  for (const page of [alice, bob]) {
    const failed = answer(page, 'failed');
    await failed.waitFor({ timeout: 30_000 });
    assert.match(await failed.getByTestId('message-mark').textContent(), /^could not answer: /);
    assert.equal(await page.locator('[data-testid="message"].assistant').count(), 1, 'one line: the failed answer');
  }
  await alice.getByTestId('ask').waitFor({ state: 'detached' });
  assert.deepEqual(pageErrors, []);
});
