// The assistant (llm.ask): answers stream into the room for every member, with the built-in mock
// provider of a zero-config node and with both provider wire formats through llm-mock; the
// stored answer is recovered after a reconnect; cancel and disconnect stop the upstream stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, connectClient, subscribe, Collector, waitUntil, rawConnectAs, chatMessage, scrapeMetrics, metricValue, delay, withTimeout } from './helpers.mjs';
import { startMock, providerEnv, ask, watchAnswer, llmState, waitLlmState, API_KEY } from './llm-util.mjs';

const BASE = { CHAT_API_KEY: API_KEY, CHAT_RATE_LIMITS: 'free=100/100,plus=100/100,pro=100/100,executive=100/100' };

/** Two members of a room; alice asks; both watch the same answer. */
async function askInRoom(t, srv, room, prompt, extra) {
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub: sa } = await subscribe(alice, room);
  const { sub: sb } = await subscribe(bob, room);
  let id = null;
  const wa = watchAnswer(sa, () => id);
  const wb = watchAnswer(sb, () => id);
  const res = await ask(alice, room, prompt, extra);
  id = res.request_id;
  wa.sync(); wb.sync();
  await Promise.all([wa.done, wb.done]);
  return { res, wa, wb, alice, bob };
}

function checkAnswer(w, { model }) {
  assert.ok(w.start, 'llm.start published');
  assert.equal(w.start.data.model, model);
  assert.equal(w.start.offset, undefined, 'llm.start is not stored');
  assert.ok(w.deltas.length > 0, 'deltas arrived');
  w.deltas.forEach((d, i) => {
    assert.equal(d.data.index, i, 'deltas in order, none missing');
    assert.equal(d.offset, undefined, 'deltas are not stored');
  });
  assert.ok(w.final, `final message (error: ${JSON.stringify(w.error && w.error.data)})`);
  const f = w.final.data;
  assert.equal(f.role, 'assistant');
  assert.equal(f.model, model);
  assert.equal(f.text, w.deltas.map((d) => d.data.text).join(''), 'the stored text is the deltas joined');
  assert.ok(typeof w.final.offset === 'number' && w.final.offset > 0, 'the answer is stored with an offset');
  assert.ok(f.usage.output_tokens > 0 && f.usage.input_tokens > 0, JSON.stringify(f.usage));
  assert.equal(w.final.info.user, 'assistant');
  assert.ok(Math.abs(f.ts - Date.now()) < 60_000, `the answer is dated by the server: ${f.ts}`);
  assert.ok(w.all.indexOf(w.start) < w.all.indexOf(w.deltas[0]), 'start before the first delta');
}

test('zero-config node: the built-in mock answers llm.ask; both members see it stream in and stored', async (t) => {
  const srv = await startChatd(t, { env: BASE });
  const { res, wa, wb } = await askInRoom(t, srv, 'chat:mock', 'hello there');
  assert.match(res.request_id, /^rq_/);
  assert.equal(res.queue_position, 1);
  // Where the asker stands in the free plan's daily quota (50 messages by default), to the next
  // UTC midnight.
  const midnight = Math.floor(Date.now() / 86_400_000) * 86_400 + 86_400;
  assert.deepEqual(res.quota, { used: 1, limit: 50, reset_at: midnight });
  checkAnswer(wa, { model: 'mock-1' });
  checkAnswer(wb, { model: 'mock-1' });
  assert.equal(wa.final.data.text, wb.final.data.text);
  assert.match(wa.final.data.text, /^Mock answer to "hello there":/);
  assert.equal(wa.final.offset, wb.final.offset);
});

test('a member who reconnects recovers the stored answer', async (t) => {
  const srv = await startChatd(t, { env: BASE });
  const carol = await connectClient(t, srv, { user: 'carol' });
  const { sub: sc } = await subscribe(carol, 'chat:recover', { recoverable: true, positioned: true });
  // A message first, so the room has history (an empty room is forgotten with its last member).
  const own = new Collector(sc, 'publication');
  await sc.publish({ type: 'message', text: 'before I leave' });
  await own.waitCount(1);
  own.stop();
  const pos = { offset: own.items[0].offset };
  carol.disconnect();
  const { wa } = await askInRoom(t, srv, 'chat:recover', 'what did I miss');
  // carol comes back and recovers from where she left.
  const pubs = new Collector(sc, 'publication');
  const resubscribed = new Promise((resolve) => sc.once('subscribed', resolve));
  carol.connect();
  const rctx = await resubscribed;
  assert.equal(rctx.recovered, true, JSON.stringify({ pos, rctx }));
  await pubs.waitCount(1);
  const got = pubs.items.find((p) => p.data.request_id === wa.final.data.request_id && p.data.type === 'message');
  assert.ok(got, 'the stored answer was recovered');
  assert.equal(got.data.text, wa.final.data.text);
});

for (const type of ['anthropic', 'openai']) {
  test(`${type} wire format through llm-mock: start, ordered deltas, stored message with the provider's usage`, async (t) => {
    const mock = await startMock(t);
    await mock.control({ key: '*', scenario: 'ok', tokens: 12, tokens_per_s: 200 });
    const srv = await startChatd(t, { env: { ...BASE, CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock, { type })]) } });
    const { wa, wb } = await askInRoom(t, srv, 'chat:prov', 'tell me something');
    const model = type === 'anthropic' ? 'claude-test' : 'gpt-test';
    checkAnswer(wa, { model });
    checkAnswer(wb, { model });
    assert.equal(wa.final.data.usage.output_tokens, 12, 'usage from the stream');
    assert.match(wa.final.data.text, /tell me something/);
    const st = await mock.stats();
    assert.equal(st.requests, 1);
    assert.equal(st.streams_completed, 1);
  });
}

test('the room is the context: the question posted into the room is sent once, earlier turns with their answers stay', async (t) => {
  const mock = await startMock(t);
  await mock.control({ key: '*', scenario: 'ok', tokens: 5, tokens_per_s: 500 });
  const srv = await startChatd(t, { env: { ...BASE, CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock)]) } });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const room = 'chat:ctx';
  const { sub: sa } = await subscribe(alice, room);
  const { sub: sb } = await subscribe(bob, room);
  const seen = new Collector(sa, 'publication');
  await sb.publish({ type: 'message', text: 'hello from bob' });
  // The question reaches the room's history before the ask: as when a client posts it first,
  // or when a queued ask starts after the web demo posted it.
  const question = 'what is two and two';
  await sa.publish({ type: 'message', text: question });
  await seen.waitCount(2);
  const sent = async () => {
    const st = await mock.stats();
    return st.keys.k1.last_request.messages.map((m) => `${m.role}: ${m.content}`);
  };
  let id = null;
  let w = watchAnswer(sa, () => id);
  id = (await ask(alice, room, question)).request_id;
  w.sync();
  await w.done;
  assert.ok(w.final, 'answered');
  const answer = w.final.data.text;
  const first = await sent();
  assert.deepEqual(first.slice(-2), ['user: hello from bob', `user: ${question}`], JSON.stringify(first));
  assert.equal(first.filter((m) => m === `user: ${question}`).length, 1, 'the question once, not twice');
  // The same question again: the earlier one is a past turn with its answer, and stays.
  id = null;
  w = watchAnswer(sa, () => id);
  id = (await ask(alice, room, question)).request_id;
  w.sync();
  await w.done;
  const second = await sent();
  assert.deepEqual(second.slice(-4), ['user: hello from bob', `user: ${question}`, `assistant: ${answer}`, `user: ${question}`], JSON.stringify(second));
  assert.equal(second.filter((m) => m === `user: ${question}`).length, 2);
});

test("a namespace's llm_system_prompt is the system prompt of its rooms; other rooms get the node's", async (t) => {
  const mock = await startMock(t);
  await mock.control({ key: '*', scenario: 'ok', tokens: 3, tokens_per_s: 500 });
  const room = { history_size: 50, history_ttl: 600, allow_subscribe: true, allow_publish: true, llm: true };
  const env = {
    ...BASE,
    CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock)]),
    CHAT_LLM_SYSTEM_PROMPT: 'You are the room assistant.',
    CHAT_NAMESPACES: JSON.stringify({ chat: room, support: { ...room, llm_system_prompt: 'You answer billing questions only.' } }),
  };
  const srv = await startChatd(t, { env });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const systemOf = async (channel) => {
    const { sub } = await subscribe(alice, channel);
    let id = null;
    const w = watchAnswer(sub, () => id);
    id = (await ask(alice, channel, 'hello')).request_id;
    w.sync();
    await w.done;
    assert.ok(w.final, `answered in ${channel}`);
    return (await mock.stats()).keys.k1.last_request.system;
  };
  assert.equal(await systemOf('support:1'), 'You answer billing questions only.');
  assert.equal(await systemOf('chat:1'), 'You are the room assistant.');
  // A prompt that is not a string is refused at start, with the namespace named.
  await assert.rejects(startChatd(null, { env: { ...env, CHAT_NAMESPACES: JSON.stringify({ support: { ...room, llm_system_prompt: 7 } }) } }),
    /namespace support: llm_system_prompt must be a string/);
});

test('llm.cancel stops the upstream stream, stores the partial answer as cancelled and frees the lease', async (t) => {
  const mock = await startMock(t);
  await mock.control({ key: '*', scenario: 'ok', tokens: 400, tokens_per_s: 20 });
  const srv = await startChatd(t, { env: { ...BASE, CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock)]) } });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(alice, 'chat:cancel');
  let id = null;
  const w = watchAnswer(sub, () => id);
  id = (await ask(alice, 'chat:cancel', 'a long answer please')).request_id;
  w.sync();
  await waitUntil(() => w.deltas.length >= 2, { what: 'two deltas' });
  await alice.rpc('llm.cancel', { request_id: id });
  await w.done;
  assert.equal(w.final.data.cancelled, true);
  assert.ok(w.final.data.text.length > 0);
  await waitUntil(async () => (await mock.stats()).streams_client_closed === 1, { what: 'the mock saw the connection close' });
  const st = await waitLlmState(srv, (s) => s.leases.length === 0 && s.running === 0, 'lease freed');
  assert.equal(st.providers[0].inflight, 0);
  // Only the owner may cancel.
  const bob = await connectClient(t, srv, { user: 'bob' });
  await assert.rejects(bob.rpc('llm.cancel', { request_id: id }), (e) => e.code === 108);
});

test('the requester disconnecting stops its stream upstream and frees the lease', async (t) => {
  const mock = await startMock(t);
  await mock.control({ key: '*', scenario: 'ok', tokens: 400, tokens_per_s: 20 });
  const srv = await startChatd(t, { env: { ...BASE, CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock)]) } });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  await subscribe(alice, 'chat:gone');
  const { sub: sb } = await subscribe(bob, 'chat:gone');
  let id = null;
  const w = watchAnswer(sb, () => id);
  id = (await ask(alice, 'chat:gone', 'answer slowly')).request_id;
  w.sync();
  await waitUntil(() => w.deltas.length >= 1, { what: 'a delta' });
  alice.disconnect();
  await w.done;
  assert.equal(w.final.data.cancelled, true, 'bob sees the partial answer stored as cancelled');
  await waitUntil(async () => (await mock.stats()).streams_client_closed === 1, { what: 'upstream closed' });
  await waitLlmState(srv, (s) => s.leases.length === 0, 'lease freed');
});

test('asks are refused where the assistant is off, before subscribing, and with bad data', async (t) => {
  const srv = await startChatd(t, { env: BASE });
  const alice = await connectClient(t, srv, { user: 'alice' });
  await assert.rejects(ask(alice, 'chat:notjoined', 'hi'), (e) => e.code === 103);
  await subscribe(alice, 'chat:r');
  await assert.rejects(alice.rpc('llm.ask', { channel: 'chat:r' }), (e) => e.code === 107);
  await assert.rejects(ask(alice, 'chat:r', 'x'.repeat(9000)), (e) => e.code === 107 && /too long/.test(e.message));
  await assert.rejects(ask(alice, 'chat:r', 'hi', { model: 'nope' }), (e) => e.code === 107 && /model/.test(e.message));
  const state = await llmState(srv);
  assert.equal(state.providers[0].name, 'mock');
});

test('a reader far behind stops the stream upstream; it goes on once the reader catches up', { timeout: 120_000 }, async (t) => {
  const BOUND = 65536;
  const mock = await startMock(t);
  // About one second of answer when nothing holds it back.
  await mock.control({ key: '*', scenario: 'ok', tokens: 20, tokens_per_s: 20 });
  const srv = await startChatd(t, {
    env: {
      ...BASE,
      CHAT_RATE_LIMITS: 'free=100000/100000',
      CHAT_LLM_PROVIDERS: JSON.stringify([providerEnv(mock)]),
      CHAT_LLM_PAUSE_BYTES: String(BOUND),
      CHAT_WRITE_QUEUE_BYTES: String(16 * BOUND),
    },
  });
  const room = 'chat:backpressure';
  const slow = await rawConnectAs(t, srv, 'slowpoke');
  await slow.call('subscribe', { channel: room });
  const alice = await connectClient(t, srv, { user: 'alice', timeout: 20000 });
  const { sub } = await subscribe(alice, room);

  // The slow member stops reading; chat traffic fills the kernel's buffers, then its queue.
  slow.ws._socket.pause();
  const filler = 'x'.repeat(3000);
  let queued = 0;
  for (let i = 0; i < 5000 && queued <= 2 * BOUND; i += 20) {
    await Promise.all(Array.from({ length: 20 }, (_, j) => sub.publish(chatMessage(`${i + j} ${filler}`))));
    queued = metricValue(await scrapeMetrics(srv), 'chat_write_queue_bytes');
  }
  assert.ok(queued > 2 * BOUND, `the slow reader's queue reached ${queued} bytes`);

  let id = null;
  const w = watchAnswer(sub, () => id);
  id = (await ask(alice, room, 'are you there')).request_id;
  w.sync();
  const state = await waitLlmState(srv, (s) => s.leases.some((l) => l.paused), 'the stream paused');
  assert.equal(state.leases[0].request_id, id);
  let m = await scrapeMetrics(srv);
  assert.equal(metricValue(m, 'chat_llm_streams_paused'), 1);
  // Nothing marks "still paused" but time: the whole answer takes about a second unhindered,
  // so after three it must still be waiting for the reader.
  await delay(3000);
  assert.equal(w.final, null, 'the answer waits for the slow reader');
  assert.ok((await llmState(srv)).leases[0].paused);

  // The reader catches up: the stream goes on from where it stopped, nothing lost or repeated.
  slow.ws._socket.resume();
  await withTimeout(w.done, 20000, 'the answer finished after the reader caught up');
  checkAnswer(w, { model: 'claude-test' });
  assert.match(w.final.data.text, /^are you there/);
  assert.equal(w.final.data.usage.output_tokens, 20);
  m = await scrapeMetrics(srv);
  assert.equal(metricValue(m, 'chat_llm_streams_paused'), 0);
  assert.ok(metricValue(m, 'chat_llm_stream_pauses_total') >= 1);
  assert.equal(slow.closeInfo, null, 'the slow reader was not closed');
});
