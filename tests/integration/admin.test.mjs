// Admin listener: /healthz, /readyz, /metrics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, subscribe, httpGet, scrapeMetrics, metricValue, waitMetric, chatMessage,
} from './helpers.mjs';

const FAMILIES = {
  chat_connections: 'gauge',
  chat_connections_accepted_total: 'counter',
  chat_commands_total: 'counter',
  chat_publications_in_total: 'counter',
  chat_publications_out_total: 'counter',
  chat_errors_total: 'counter',
  chat_disconnects_total: 'counter',
  chat_rate_limited_total: 'counter',
  chat_write_calls_total: 'counter',
  chat_write_bytes_total: 'counter',
  chat_write_queue_bytes: 'gauge',
  chat_fanout_latency_seconds: 'histogram',
  chat_loop_pass_seconds: 'histogram',
  chat_channels: 'gauge',
  process_resident_memory_bytes: 'gauge',
  process_cpu_seconds_total: 'counter',
  process_open_fds: 'gauge',
};

// TYPE lines name the family: counters may be declared without the _total suffix.
function familyType(types, name) {
  return types[name] ?? types[name.replace(/_total$/, '')];
}

test('/healthz and /readyz answer 200', async (t) => {
  const srv = await startChatd(t);
  const h = await httpGet(`${srv.adminUrl}/healthz`);
  assert.equal(h.status, 200);
  assert.equal(h.body.trim(), 'ok');
  const r = await httpGet(`${srv.adminUrl}/readyz`);
  assert.equal(r.status, 200);
  assert.equal(r.body.trim(), 'ready');
});

test('/metrics: Prometheus text with the documented families and live values', async (t) => {
  const srv = await startChatd(t);
  const before = await scrapeMetrics(srv);
  assert.match(before.contentType || '', /^text\/plain/);
  for (const [name, type] of Object.entries(FAMILIES)) {
    assert.equal(familyType(before.types, name), type, `# TYPE of ${name}`);
  }
  assert.equal(metricValue(before, 'chat_connections'), 0);
  assert.ok(metricValue(before, 'process_resident_memory_bytes') > 1024 * 1024);
  assert.ok(metricValue(before, 'process_open_fds') > 0);
  // Histogram series.
  assert.ok(before.samples.some((s) => s.name === 'chat_fanout_latency_seconds_bucket' && s.labels.le === '+Inf'));
  assert.ok(before.samples.some((s) => s.name === 'chat_fanout_latency_seconds_count'));
  assert.ok(before.samples.some((s) => s.name === 'chat_fanout_latency_seconds_sum'));

  const alice = await connectClient(t, srv, { user: 'alice' });
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub } = await subscribe(alice, 'chat:metrics');
  await subscribe(bob, 'chat:metrics');
  await sub.publish(chatMessage('counted'));
  await assert.rejects(alice.publish('chat:not-subscribed', chatMessage('x')));

  await waitMetric(srv, 'chat_publications_out_total', {}, (v) => v >= 2);
  const m = await scrapeMetrics(srv);
  assert.equal(metricValue(m, 'chat_connections'), 2);
  assert.ok(metricValue(m, 'chat_connections_accepted_total') >= 2);
  assert.ok(metricValue(m, 'chat_commands_total', { method: 'connect' }) >= 2);
  assert.ok(metricValue(m, 'chat_commands_total', { method: 'subscribe' }) >= 2);
  assert.ok(metricValue(m, 'chat_commands_total', { method: 'publish' }) >= 2);
  assert.ok(metricValue(m, 'chat_publications_in_total') >= 1);
  assert.ok(metricValue(m, 'chat_errors_total', { code: '103' }) >= 1);
  assert.ok(metricValue(m, 'chat_channels') >= 1);
  assert.ok(metricValue(m, 'chat_write_calls_total') >= 1);
  assert.ok(metricValue(m, 'chat_write_bytes_total') > 0);
  assert.ok(metricValue(m, 'chat_fanout_latency_seconds_count') >= 1);
  // Every pass of the loop is measured: more passes than the scrapes and commands above.
  assert.ok(metricValue(m, 'chat_loop_pass_seconds_count') > metricValue(before, 'chat_loop_pass_seconds_count'));
  assert.ok(metricValue(m, 'chat_loop_pass_seconds_sum') > 0);

  alice.disconnect();
  bob.disconnect();
  await waitMetric(srv, 'chat_connections', {}, (v) => v === 0);
});

test('with a configured secret /demo/token is 404', async (t) => {
  const srv = await startChatd(t);
  const r = await httpGet(`${srv.httpUrl}/demo/token?user=zed`);
  assert.equal(r.status, 404);
  assert.ok(!/demo token:|api key:/.test(srv.stdout), 'nothing secret printed with a configured secret');
});

test('CHAT_DEMO_TOKENS=1 serves /demo/token signed with the configured secret (a demo of several nodes)', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_DEMO_TOKENS: 1 } });
  assert.ok(!/demo token:|api key:/.test(srv.stdout), 'still nothing secret printed');
  const r = await httpGet(`${srv.httpUrl}/demo/token?user=zed`);
  assert.equal(r.status, 200);
  const { token, user } = JSON.parse(r.body);
  assert.equal(user, 'zed');
  // A second node with the same secret and no demo tokens accepts it: the secret signed it.
  const other = await startChatd(t);
  const client = await connectClient(t, other, { token });
  assert.equal(client.state, 'connected');
});

test('/api/info on one node lists itself; GET, or POST with a JSON body as server SDKs send it', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_API_KEY: 'api-test-key', CHAT_NODE_ID: 'solo' } });
  const url = `${srv.adminUrl}/api/info`;
  const headers = { 'X-API-Key': 'api-test-key', 'Content-Type': 'application/json' };
  for (const init of [{ headers }, { method: 'POST', headers, body: '{}' }, { method: 'POST', headers }]) {
    const res = await fetch(url, init);
    assert.equal(res.status, 200, JSON.stringify(init));
    const { result } = await res.json();
    assert.deepEqual(result.nodes.map((n) => [n.name, n.address, n.draining]), [['solo', srv.publicAddr, false]]);
  }
  // POSTs one after another reuse the keep-alive connection: no body is taken for the next
  // request.
  for (let i = 0; i < 3; i++) {
    const res = await fetch(url, { method: 'POST', headers, body: '{"x":1}' });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).result.nodes.length, 1);
  }
  const denied = await fetch(url, { method: 'POST', body: '{}' });
  assert.equal(denied.status, 401);
  assert.equal((await denied.json()).error.code, 401);
  const big = await fetch(url, { method: 'POST', headers, body: 'x'.repeat(70_000) });
  assert.equal(big.status, 413);
  const unknown = await fetch(`${srv.adminUrl}/api/nope`, { method: 'POST', headers, body: '{}' });
  assert.equal(unknown.status, 404);
  assert.equal((await unknown.json()).error.code, 104); // Centrifugo's code for an unknown method
});

test('CHAT_ADVERTISE is the address /api/info gives for the node', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_API_KEY: 'k2', CHAT_ADVERTISE: 'chat-1.internal:8000' } });
  const res = await fetch(`${srv.adminUrl}/api/info`, { headers: { 'X-API-Key': 'k2' } });
  assert.equal((await res.json()).result.nodes[0].address, 'chat-1.internal:8000');
});
