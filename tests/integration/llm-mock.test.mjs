// llm-mock, the provider stand-in: both wire formats as docs LLM.md 1.1 and 1.2 write them, the
// error scenarios and their headers, per-key control, and the stream accounting of /stats.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock } from './llm-util.mjs';


let mock;
before(async () => { mock = await startMock(); });
after(async () => { if (mock) await mock.stop(); });

// A spec-following SSE parser (WHATWG): any line end, comments, one space after the colon,
// multi-line data, BOM at the start.
function parseSSE(text) {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const events = [];
  let data = null;
  let event = '';
  for (const line of text.split(/\r\n|\r|\n/)) {
    if (line === '') {
      if (data !== null) events.push({ event, data });
      data = null;
      event = '';
      continue;
    }
    if (line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data = data === null ? value : `${data}\n${value}`;
    else if (field === 'event') event = value;
  }
  return events;
}

const PROMPT = 'Hello there';
function anthropicBody(extra = {}) {
  return JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 1024, stream: true, system: 'You are a helpful chat bot.',
    messages: [{ role: 'user', content: PROMPT }], ...extra });
}
function openaiBody(extra = {}) {
  return JSON.stringify({ model: 'gpt-4o-mini', stream: true, stream_options: { include_usage: true }, max_tokens: 512,
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: PROMPT }], ...extra });
}
function anthropic(key, { scenario, body, signal } = {}) {
  const headers = { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' };
  if (key) headers['x-api-key'] = key;
  if (scenario) headers['x-mock-scenario'] = scenario;
  return fetch(`${mock.base}/v1/messages`, { method: 'POST', headers, body: body ?? anthropicBody(), signal });
}
function openai(key, { scenario, body, path = '/v1/chat/completions', signal } = {}) {
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${key}` };
  if (scenario) headers['x-mock-scenario'] = scenario;
  return fetch(`${mock.base}${path}`, { method: 'POST', headers, body: body ?? openaiBody(), signal });
}
async function control(obj) {
  const r = await fetch(`${mock.base}/control`, { method: 'POST', body: JSON.stringify(obj) });
  return { status: r.status, body: await r.json() };
}
async function stats() {
  return (await fetch(`${mock.base}/stats`)).json();
}
async function resetStats() {
  assert.equal((await fetch(`${mock.base}/stats/reset`, { method: 'POST' })).status, 200);
}
async function waitStats(pred, what) {
  for (let i = 0; i < 200; i++) {
    const s = await stats();
    if (pred(s)) return s;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`stats never showed ${what}: ${JSON.stringify(await stats())}`);
}
// Input estimate of the mock: 1 + bytes of system and message contents / 4.
const estimate = (...texts) => 1 + Math.floor(texts.reduce((n, t) => n + Buffer.byteLength(t), 0) / 4);

test('Anthropic happy path: headers, event order, text and usage as in LLM.md 1.1', async () => {
  const r = await anthropic('k-anth', { scenario: 'ok;tokens=5' });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'text/event-stream; charset=utf-8');
  assert.equal(r.headers.get('cache-control'), 'no-cache');
  assert.match(r.headers.get('request-id'), /^req_/);
  for (const b of ['requests', 'tokens', 'input-tokens', 'output-tokens']) {
    assert.match(r.headers.get(`anthropic-ratelimit-${b}-limit`), /^\d+$/);
    assert.match(r.headers.get(`anthropic-ratelimit-${b}-remaining`), /^\d+$/);
    assert.match(r.headers.get(`anthropic-ratelimit-${b}-reset`), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  }
  const events = parseSSE(await r.text());
  assert.deepEqual(events.map((e) => e.event), ['message_start', 'content_block_start', 'ping',
    'content_block_delta', 'content_block_delta', 'content_block_delta', 'content_block_delta', 'content_block_delta',
    'content_block_stop', 'message_delta', 'message_stop']);
  const json = events.map((e) => JSON.parse(e.data));
  json.forEach((j, i) => assert.equal(j.type, events[i].event, 'the JSON type repeats the event name'));
  assert.deepEqual(Object.keys(json[0].message.usage), ['input_tokens', 'cache_creation_input_tokens', 'cache_read_input_tokens', 'output_tokens']);
  assert.equal(json[0].message.usage.input_tokens, estimate('You are a helpful chat bot.', PROMPT));
  assert.equal(json[0].message.model, 'claude-sonnet-4-5');
  const text = json.filter((j) => j.type === 'content_block_delta').map((j) => j.delta.text).join('');
  assert.equal(text, 'Hello there token3 token4 token5');
  assert.deepEqual(json[9], { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 5 } });
});

test('OpenAI happy path: data-only chunks, usage chunk with choices [], then [DONE] (LLM.md 1.2)', async () => {
  const r = await openai('k-oai', { scenario: 'ok;tokens=3' });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'text/event-stream; charset=utf-8');
  assert.equal(r.headers.get('x-ratelimit-limit-requests'), '5000');
  assert.equal(r.headers.get('x-ratelimit-remaining-tokens'), '159976');
  assert.equal(r.headers.get('x-ratelimit-reset-requests'), '12ms');
  assert.equal(r.headers.get('x-ratelimit-reset-tokens'), '9ms');
  const events = parseSSE(await r.text());
  assert.ok(events.every((e) => e.event === ''), 'no event names');
  assert.equal(events.at(-1).data, '[DONE]');
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data));
  assert.equal(chunks.length, 6); // role, 3 deltas, finish, usage
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id));
  assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '', refusal: null });
  assert.equal(chunks.slice(1, 4).map((c) => c.choices[0].delta.content).join(''), 'Hello there token3');
  assert.ok(chunks.slice(0, 5).every((c) => c.usage === null), 'usage:null on every chunk but the last');
  assert.equal(chunks[4].choices[0].finish_reason, 'stop');
  assert.deepEqual(chunks[5].choices, []);
  const input = estimate('Be brief.', PROMPT);
  assert.deepEqual(chunks[5].usage, { prompt_tokens: input, completion_tokens: 3, total_tokens: input + 3 });

  // Base URLs with or without /v1 reach the same endpoint.
  for (const path of ['/chat/completions', '/api/v1/chat/completions']) {
    const r2 = await openai('k-oai', { path, scenario: 'ok;tokens=1' });
    assert.equal(r2.status, 200, path);
    assert.match(await r2.text(), /data: \[DONE\]\n\n$/);
  }
});

test('usage variants and max_tokens truncation', async () => {
  const last = async (scenario, body) => {
    const ev = parseSSE(await (await openai('k-usage', { scenario, body })).text());
    return ev.slice(0, -1).map((e) => JSON.parse(e.data));
  };
  let c = await last('ok;tokens=2;usage=null');
  assert.equal(c.at(-1).choices, null);
  assert.equal(c.at(-1).usage.completion_tokens, 2);
  c = await last('ok;tokens=2;usage=missing');
  assert.ok(!('choices' in c.at(-1)));
  assert.equal(c.at(-1).usage.completion_tokens, 2);
  c = await last('ok;tokens=2;usage=none');
  assert.ok(c.every((x) => x.usage === null));
  c = await last('ok;tokens=10', openaiBody({ max_tokens: 4 }));
  assert.equal(c.at(-2).choices[0].finish_reason, 'length');
  assert.equal(c.at(-1).usage.completion_tokens, 4);

  const ev = parseSSE(await (await anthropic('k-usage', { scenario: 'ok;tokens=10;usage_in_delta', body: anthropicBody({ max_tokens: 2 }) })).text());
  const delta = JSON.parse(ev.find((e) => e.event === 'message_delta').data);
  assert.equal(delta.delta.stop_reason, 'max_tokens');
  assert.equal(delta.usage.output_tokens, 2);
  assert.equal(typeof delta.usage.input_tokens, 'number');
});

test('chunking variants parse to the same events as the plain stream', async () => {
  const plain = parseSSE(await (await anthropic('k-chunk', { scenario: 'ok;tokens=4;utf8' })).text());
  const r = await anthropic('k-chunk', { scenario: 'ok;tokens=4;utf8;crlf;bom;multiline;openrouter;pings;split=7;split_ms=1' });
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  const parts = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
  }
  const bytes = Buffer.concat(parts);
  assert.deepEqual([...bytes.subarray(0, 3)], [0xef, 0xbb, 0xbf], 'BOM first');
  const raw = new TextDecoder('utf-8', { ignoreBOM: true, fatal: true }).decode(bytes);
  assert.ok(raw.includes('\r\n') && raw.includes(': OPENROUTER PROCESSING'));
  assert.ok(raw.includes('w\u00f6rd\u20ac'), 'multibyte filler words');
  assert.ok(/data: [^\r]*,\r\ndata: /.test(raw), 'a data field split over two lines');
  assert.ok(parts.length > plain.length, `written in small pieces (${parts.length} reads)`);
  const events = parseSSE(raw);
  const pings = events.filter((e) => e.event === 'ping').length;
  assert.equal(pings, 1 + 3, 'the sample ping and one between deltas');
  const strip = (evs) => evs.filter((e) => e.event !== 'ping').map((e) => [e.event, JSON.parse(e.data)]);
  const a = strip(events);
  const b = strip(plain);
  // Ids and timestamps differ per request; everything else is the same.
  a[0][1].message.id = b[0][1].message.id;
  assert.deepEqual(a, b);

  // Lone CR line ends on the OpenAI side.
  const cr = await (await openai('k-chunk', { scenario: 'ok;tokens=2;cr' })).text();
  assert.ok(cr.includes('\r') && !cr.includes('\n'));
  assert.equal(parseSSE(cr).at(-1).data, '[DONE]');
});

test('429 with retry-after, escalating, retry-after-ms, and reset headers only', async () => {
  let r = await anthropic('k-429', { scenario: 'rate_limit;retry_after=2' });
  assert.equal(r.status, 429);
  assert.equal(r.headers.get('retry-after'), '2');
  assert.equal(r.headers.get('anthropic-ratelimit-requests-remaining'), '0');
  assert.match(r.headers.get('anthropic-ratelimit-requests-reset'), /Z$/);
  const body = await r.json();
  assert.equal(body.type, 'error');
  assert.equal(body.error.type, 'rate_limit_error');
  assert.match(body.request_id, /^req_/);

  await control({ key: 'k-esc', scenario: 'rate_limit', retry_after: 1, escalate: true });
  const seen = [];
  for (let i = 0; i < 3; i++) {
    r = await anthropic('k-esc');
    await r.arrayBuffer();
    seen.push(r.headers.get('retry-after'));
  }
  assert.deepEqual(seen, ['1', '2', '3']);

  r = await openai('k-429', { scenario: 'rate_limit;retry_after_ms=644;no_retry_after' });
  assert.equal(r.headers.get('retry-after'), null);
  assert.equal(r.headers.get('retry-after-ms'), null);
  r = await openai('k-429', { scenario: 'rate_limit;retry_after_ms=644' });
  assert.equal(r.headers.get('retry-after-ms'), '644');
  assert.equal((await r.json()).error.code, 'rate_limit_exceeded');
  r = await openai('k-429', { scenario: 'rate_limit;no_retry_after;reset=6m0s' });
  assert.equal(r.status, 429);
  assert.equal(r.headers.get('retry-after'), null);
  assert.equal(r.headers.get('x-ratelimit-remaining-requests'), '0');
  assert.equal(r.headers.get('x-ratelimit-reset-requests'), '6m0s');
  assert.equal(r.headers.get('x-ratelimit-reset-tokens'), '12ms');
});

test('status errors carry each provider\'s error body', async () => {
  const cases = [
    ['overloaded', 529, (b) => b.error.type === 'overloaded_error' && b.error.message === 'Overloaded'],
    ['server_error', 500, (b) => b.error.type === 'api_error'],
    ['unavailable', 503, (b) => b.type === 'error'],
    ['unauthorized', 401, (b) => b.error.type === 'authentication_error'],
    ['forbidden', 403, (b) => b.error.type === 'permission_error'],
    ['spend_cap', 429, (b) => b.error.details.error_code === 'enforced_spend_limit_reached'],
  ];
  for (const [scenario, status, check] of cases) {
    const r = await anthropic('k-status', { scenario });
    assert.equal(r.status, status, scenario);
    const b = await r.json();
    assert.ok(check(b), `${scenario}: ${JSON.stringify(b)}`);
  }
  let r = await anthropic('k-status', { scenario: 'spend_cap' });
  assert.equal(r.headers.get('retry-after'), null, 'a spend cap has no retry-after');
  r = await openai('k-status', { scenario: 'quota' });
  assert.equal(r.status, 429);
  assert.deepEqual((await r.json()).error, { message: 'You exceeded your current quota, please check your plan and billing details.', type: 'insufficient_quota', param: null, code: 'insufficient_quota' });
  r = await openai('k-status', { scenario: 'payment' });
  assert.equal(r.status, 402);
  assert.equal((await r.json()).error.code, 402, 'OpenRouter: numeric code');
  r = await openai('k-status', { scenario: 'status;status=500;should_retry=false' });
  assert.equal(r.status, 500);
  assert.equal(r.headers.get('x-should-retry'), 'false');
  await r.arrayBuffer();
  r = await anthropic(null);
  assert.equal(r.status, 401, 'no key');
  await r.arrayBuffer();
});

test('error events after 200: before the first delta and after some, in every form', async () => {
  let ev = parseSSE(await (await anthropic('k-ev', { scenario: 'error_event;after=0' })).text());
  assert.deepEqual(ev.map((e) => e.event), ['message_start', 'content_block_start', 'ping', 'error']);
  assert.deepEqual(JSON.parse(ev.at(-1).data), { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } });
  ev = parseSSE(await (await anthropic('k-ev', { scenario: 'error_event;after=2' })).text());
  assert.equal(ev.filter((e) => e.event === 'content_block_delta').length, 2);
  assert.equal(ev.at(-1).event, 'error');
  assert.ok(!ev.some((e) => e.event === 'message_stop'));

  ev = parseSSE(await (await openai('k-ev', { scenario: 'error_event;after=1' })).text());
  assert.equal(JSON.parse(ev.at(-1).data).error.type, 'server_error');
  assert.ok(!ev.some((e) => e.data === '[DONE]'));
  ev = parseSSE(await (await openai('k-ev', { scenario: 'error_event;after=1;form=openrouter' })).text());
  assert.equal(JSON.parse(ev.at(-1).data).error.code, 502);
  ev = parseSSE(await (await openai('k-ev', { scenario: 'error_event;after=0;form=finish' })).text());
  const last = JSON.parse(ev.at(-1).data);
  assert.equal(last.choices[0].finish_reason, 'error');
  assert.equal(last.error.code, 502);
});

test('connection drop after K deltas: no end marker, the body fails', async () => {
  await resetStats();
  const r = await openai('k-drop', { scenario: 'drop;after=2' });
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  let text = '';
  let failed = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
  } catch {
    failed = true;
  }
  assert.ok(failed, 'an incomplete chunked body is an error for the client');
  assert.ok(!text.includes('[DONE]'));
  assert.equal(parseSSE(text).length, 3); // role chunk + 2 deltas
  const s = await stats();
  assert.equal(s.streams_dropped, 1);
  assert.equal(s.keys['k-drop'].streams_dropped, 1);
});

test('per-key control: count, default key, header override, reset, bad scenario', async () => {
  let c = await control({ key: 'k-ctl', scenario: 'overloaded', count: 2 });
  assert.equal(c.status, 200);
  const statuses = [];
  for (let i = 0; i < 3; i++) {
    const r = await anthropic('k-ctl');
    await r.arrayBuffer();
    statuses.push(r.status);
  }
  assert.deepEqual(statuses, [529, 529, 200]);
  await control({ key: 'k-ctl', scenario: 'unauthorized' });
  let r = await anthropic('k-other');
  await r.arrayBuffer();
  assert.equal(r.status, 200, 'other keys are not affected');
  r = await anthropic('k-ctl', { scenario: 'ok;tokens=1' });
  await r.arrayBuffer();
  assert.equal(r.status, 200, 'the request header wins');
  await control({ key: '*', scenario: 'server_error' });
  r = await anthropic('k-fresh');
  await r.arrayBuffer();
  assert.equal(r.status, 500, 'the default scenario applies to keys without their own');
  r = await anthropic('k-ctl');
  await r.arrayBuffer();
  assert.equal(r.status, 401);
  c = await control({ reset: true });
  assert.equal(c.status, 200);
  r = await anthropic('k-ctl');
  await r.arrayBuffer();
  assert.equal(r.status, 200);
  c = await control({ key: 'k-ctl', scenario: 'no_such_thing' });
  assert.equal(c.status, 400);
  c = await control({ key: 'k-ctl', scenario: 'ok', tokenz: 3 });
  assert.equal(c.status, 400, 'a misspelt parameter is refused');
  r = await anthropic('k-ctl', { scenario: 'ok;bogus=1' });
  assert.equal(r.status, 400);
  await r.arrayBuffer();
  const s = await stats();
  assert.deepEqual(s.keys['k-ctl'].statuses, { 200: 3, 401: 1, 529: 2 });
});

test('Venice-style lockout after more than 20 failures in 30 s', async () => {
  await control({ key: 'k-venice', scenario: 'server_error', lockout: true });
  const statuses = [];
  for (let i = 0; i < 22; i++) {
    const r = await openai('k-venice');
    await r.arrayBuffer();
    statuses.push(r.status);
  }
  assert.deepEqual(statuses, [...Array(21).fill(500), 429]);
  await control({ key: 'k-venice', scenario: 'ok' });
  const r = await openai('k-venice');
  assert.equal(r.status, 429, 'still locked out after the scenario changed');
  assert.match((await r.json()).error.message, /Too many failed attempts \(> 20\).*Please wait 30s/);
  await control({ reset: true });
});

test('stats count parallel open streams, their maximum, and client cancels', async () => {
  await resetStats();
  const N = 200;
  const aborts = [];
  // Headers come at once; the first delta only after ttft_ms, so all N stay open together.
  const responses = await Promise.all(Array.from({ length: N }, (_, i) => {
    const ac = new AbortController();
    aborts.push(ac);
    return anthropic(`k-par-${i % 4}`, { scenario: 'ok;tokens=3;ttft_ms=60000', signal: ac.signal });
  }));
  assert.ok(responses.every((r) => r.status === 200));
  let s = await stats();
  assert.equal(s.streams_open, N);
  assert.equal(s.streams_open_max, N);
  for (const ac of aborts) ac.abort();
  s = await waitStats((x) => x.streams_open === 0, 'every stream closed');
  assert.equal(s.streams_client_closed, N);
  assert.equal(s.streams_open_max, N);
  assert.equal(s.keys['k-par-0'].streams_client_closed, N / 4);
  await resetStats();
  s = await stats();
  assert.equal(s.streams_open_max, 0, 'reset brings the maximum down to what is open now');
});

test('a client aborting mid-stream is counted, a complete stream is not', async () => {
  await resetStats();
  const done = await anthropic('k-abort', { scenario: 'ok;tokens=2' });
  await done.text();
  const ac = new AbortController();
  const r = await anthropic('k-abort', { scenario: 'ok;tokens=100;tokens_per_s=20', signal: ac.signal });
  const reader = r.body.getReader();
  let text = '';
  while (!text.includes('content_block_delta')) text += new TextDecoder().decode((await reader.read()).value);
  ac.abort();
  const s = await waitStats((x) => x.streams_client_closed === 1, 'one client cancel');
  assert.equal(s.streams_completed, 1);
  assert.equal(s.keys['k-abort'].streams_client_closed, 1);
  assert.equal(s.streams_open, 0);
});

test('hangs: silence with no bytes at all, and pings only', async () => {
  await resetStats();
  const ac = new AbortController();
  const pending = anthropic('k-hang', { scenario: 'hang', signal: ac.signal });
  await waitStats((x) => x.streams_open === 1, 'the hanging request open');
  ac.abort();
  await assert.rejects(pending);
  await waitStats((x) => x.streams_client_closed === 1, 'the hang cancelled');

  const ac2 = new AbortController();
  const r = await anthropic('k-hang', { scenario: 'hang_pings;ping_ms=20', signal: ac2.signal });
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  let text = '';
  while ((text.match(/event: ping/g) || []).length < 3) text += new TextDecoder().decode((await reader.read()).value);
  ac2.abort();
  assert.deepEqual([...new Set(parseSSE(text).map((e) => e.event))], ['ping']);
  await waitStats((x) => x.streams_client_closed === 2 && x.streams_open === 0, 'the pinging hang cancelled');
});

test('oversized bodies are refused with 413; SIGTERM exits 0 with streams open', async () => {
  const big = 'x'.repeat(1024 * 1024 + 1);
  const r = await fetch(`${mock.base}/v1/messages`, { method: 'POST', headers: { 'x-api-key': 'k-big' }, body: big });
  assert.equal(r.status, 413);
  await r.arrayBuffer();

  const own = await startMock();
  const ac = new AbortController();
  const base = mock.base;
  mock.base = own.base;
  try {
    const s = await anthropic('k-term', { scenario: 'ok;ttft_ms=60000', signal: ac.signal });
    assert.equal(s.status, 200);
    const res = await own.stop();
    assert.deepEqual(res, { code: 0, signal: null });
  } finally {
    mock.base = base;
    ac.abort();
  }
});
