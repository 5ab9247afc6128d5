// The operator's view: /metrics of cluster nodes is clean under `promtool check metrics` and its
// values count what the test sent; the alert rules pass `promtool check rules` and their unit
// tests (`promtool test rules`); every metric the Grafana dashboard and the rules query exists
// on a node; Redis killed shows as chat_broker_up 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  connectClient, subscribe, Collector, httpGet, metricValue, parsePrometheus, waitMetric, chatMessage,
} from './helpers.mjs';
import { startCluster } from './cluster-util.mjs';
import { startPostgres } from './pg-util.mjs';

const API_KEY = 'metrics-test-key';
const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));

function promtool(args, input, cwd = DEPLOY) {
  const r = spawnSync('promtool', args, { input, cwd, encoding: 'utf8', timeout: 30_000 });
  assert.notEqual(r.error?.code, 'ENOENT', 'promtool is installed (scripts/install-deps --test: prometheus)');
  return r;
}

async function scrapeText(srv) {
  const r = await httpGet(`${srv.adminUrl}/metrics`);
  assert.equal(r.status, 200);
  return r.body;
}

async function api(srv, method, params) {
  const res = await fetch(`${srv.adminUrl}/api/${method}`, {
    method: 'POST', headers: { 'X-API-Key': API_KEY }, body: JSON.stringify(params),
  });
  return res.json();
}

/** Metric families a PromQL text names (chat_* and process_*, as written in the expression). */
function namesIn(expr) {
  return [...expr.matchAll(/\b((?:chat|process)_[a-z0-9_]+)/g)].map((m) => m[1]);
}

test('metrics: promtool-clean, counting what was sent, and what the dashboard and alerts query', async (t) => {
  // With a database, so that the store's families (dashboard, alerts) are served too.
  const pg = await startPostgres(t);
  const nodes = await startCluster(t, 2, { CHAT_API_KEY: API_KEY, DATABASE_URL: await pg.createDb('metrics') });
  const [n1, n2] = nodes;
  const a = await connectClient(t, n1, { user: 'alice' });
  const b = await connectClient(t, n1, { user: 'bob' });
  const c = await connectClient(t, n2, { user: 'carol' });
  const { sub: subA } = await subscribe(a, 'chat:metrics');
  await subscribe(b, 'chat:metrics');
  const { sub: subC } = await subscribe(c, 'chat:metrics');
  const atC = new Collector(subC, 'publication');
  const atA = new Collector(subA, 'publication');

  for (let i = 0; i < 5; i++) await a.publish('chat:metrics', chatMessage(`c${i}`));
  await assert.rejects(a.publish('nope:metrics', chatMessage('x')), (e) => e.code === 102);
  for (let i = 0; i < 3; i++) {
    assert.ok((await api(n2, 'publish', { channel: 'chat:metrics', data: { type: 'message', text: `api${i}` } })).result);
  }
  assert.equal((await api(n2, 'publish', { channel: 'nope:x', data: {} })).error.code, 102);
  await atC.waitCount(8);
  await atA.waitCount(8);

  const text1 = await scrapeText(n1);
  const text2 = await scrapeText(n2);
  for (const text of [text1, text2]) {
    const r = promtool(['check', 'metrics'], text);
    assert.equal(r.status, 0, `promtool check metrics: ${r.stdout}${r.stderr}`);
    assert.equal((r.stdout + r.stderr).trim(), '', 'no lint findings');
  }
  const m1 = parsePrometheus(text1);
  const m2 = parsePrometheus(text2);
  // n1: alice's 6 publishes (one refused with 102), 5 accepted; 8 publications to 2 subscribers.
  assert.equal(metricValue(m1, 'chat_commands_total', { method: 'publish' }), 6);
  assert.equal(metricValue(m1, 'chat_errors_total', { code: '102' }), 1);
  assert.equal(metricValue(m1, 'chat_publications_in_total'), 5);
  assert.equal(metricValue(m1, 'chat_publications_out_total'), 16);
  assert.equal(metricValue(m1, 'chat_connections'), 2);
  assert.equal(metricValue(m1, 'chat_broker_up'), 1);
  assert.ok(metricValue(m1, 'chat_broker_command_seconds_count', { op: 'publish' }) >= 5);
  assert.ok(metricValue(m1, 'chat_broker_command_seconds_bucket', { op: 'publish', le: '+Inf' }) >= 5);
  // n2: the API's 4 publishes (one refused), 8 publications to carol.
  assert.equal(metricValue(m2, 'chat_api_calls_total', { method: 'publish' }), 4);
  assert.equal(metricValue(m2, 'chat_api_errors_total', { code: '102' }), 1);
  assert.equal(metricValue(m2, 'chat_publications_in_total'), 3);
  assert.equal(metricValue(m2, 'chat_publications_out_total'), 8);
  assert.equal(metricValue(m2, 'chat_commands_total', { method: 'publish' }), 0);

  // Every family the dashboard and the alert rules query is one a node serves.
  // A family with no sample yet (no close so far) is still declared by its # TYPE line.
  const served = new Set(m1.samples.map((s) => s.name));
  for (const [name, type] of Object.entries(m1.types)) {
    served.add(name);
    if (type === 'histogram') ['_bucket', '_sum', '_count'].forEach((x) => served.add(name + x));
  }
  const dashboard = JSON.parse(readFileSync(`${DEPLOY}grafana/dashboards/chatd.json`, 'utf8'));
  const exprs = dashboard.panels.flatMap((p) => (p.targets || []).map((x) => x.expr));
  assert.ok(exprs.length >= 30, `${exprs.length} dashboard queries`);
  const rules = readFileSync(`${DEPLOY}prometheus/alerts.yml`, 'utf8');
  const missing = [...new Set([...exprs.flatMap(namesIn), ...namesIn(rules)])].filter((n) => !served.has(n));
  assert.deepEqual(missing, [], 'metrics queried but not served');

  // Redis gone: both nodes say so.
  await nodes.redis.stop({ kill: true });
  for (const n of [n1, n2]) {
    await waitMetric(n, 'chat_broker_up', {}, (v) => v === 0, { timeoutMs: 8000 });
    assert.equal((await httpGet(`${n.adminUrl}/readyz`)).status, 503);
  }
});

test('alert rules: promtool checks them and their unit tests pass', () => {
  const check = promtool(['check', 'rules', 'prometheus/alerts.yml']);
  assert.equal(check.status, 0, check.stdout + check.stderr);
  assert.match(check.stdout, /SUCCESS: 11 rules found/);
  const unit = promtool(['test', 'rules', 'alerts.test.yml'], undefined, `${DEPLOY}prometheus`);
  assert.equal(unit.status, 0, unit.stdout + unit.stderr);
  const cfg = promtool(['check', 'config', '--syntax-only', 'prometheus/prometheus.yml']);
  assert.equal(cfg.status, 0, cfg.stdout + cfg.stderr);
});
