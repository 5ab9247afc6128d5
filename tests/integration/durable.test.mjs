// Durable history in PostgreSQL (issue 13): real PostgreSQL servers of the tests' own on
// loopback ports, real Redis, real chatd nodes, centrifuge-js and the server API as clients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import {
  Collector, chatMessage, connectClient, metricValue, scrapeMetrics, startChatd, subscribe, userToken, waitMetric, waitUntil,
} from './helpers.mjs';
import { startRedis, waitReady } from './cluster-util.mjs';
import { startPgBouncer, startPostgres } from './pg-util.mjs';
import { ask, watchAnswer } from './llm-util.mjs';

const run = promisify(execFile);
const API_KEY = 'durable-test-api-key';
const SMALL = {
  chat: { history_size: 5, history_ttl: 3600, presence: false, join_leave: false, allow_subscribe: true, allow_publish: true, message_schema: 'chat', max_message_bytes: 4096 },
};

async function api(srv, method, body) {
  const r = await fetch(`${srv.adminUrl}/api/${method}`, {
    method: 'POST',
    headers: { authorization: `apikey ${API_KEY}` },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const j = await r.json();
  if (j.error) throw Object.assign(new Error(`${method}: ${JSON.stringify(j.error)}`), { apiError: j.error });
  return j.result;
}

async function rows(pg, db, channel) {
  const out = await pg.query(db, `SELECT "offset", convert_from(data, 'UTF8')::json->>'text' FROM chat_messages WHERE channel = '${channel}' ORDER BY "offset"`);
  return out ? out.split('\n').map((l) => { const [o, text] = l.split('|'); return { offset: Number(o), text }; }) : [];
}

/** Every stored row as "channel/offset" -> text, in one query. */
async function allRows(pg, db) {
  const out = await pg.query(db, `SELECT channel, "offset", convert_from(data, 'UTF8')::json->>'text' FROM chat_messages`);
  return new Map(out ? out.split('\n').map((l) => { const [c, o, text] = l.split('|'); return [`${c}/${o}`, text]; }) : []);
}

/**
 * Kills the node (SIGKILL) and drops the test's clients, starts it again with the same env, and
 * publishes text into channel as a fresh client: returns the new node, client and subscription,
 * and the channel's position after that publish.
 */
async function restartAndPublish(t, srv, clients, env, channel, connectOpts, text) {
  await srv.stop({ signal: 'SIGKILL' });
  for (const c of clients) c.disconnect();
  const srv2 = await startChatd(t, { env });
  const c = await connectClient(t, srv2, connectOpts);
  const { sub } = await subscribe(c, channel);
  await sub.publish(chatMessage(text));
  return { srv: srv2, c, sub, top: await sub.history({ limit: 0 }) };
}

async function redisCli(redis, ...args) {
  const { stdout } = await run('redis-cli', ['-p', String(redis.port), ...args]);
  return stdout.trim();
}

test('one node without Redis keeps its channels across kill -9: offsets go on in the same epoch, history reaches past the window', async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('single');
  const env = { DATABASE_URL: url, CHAT_NAMESPACES: JSON.stringify(SMALL), CHAT_API_KEY: API_KEY, CHAT_RATE_LIMITS: 'free=100000/100000' };
  let srv = await startChatd(t, { env });
  let c = await connectClient(t, srv, { user: 'alice' });
  let { sub } = await subscribe(c, 'chat:keep');
  const sentFrom = Date.now();
  for (let i = 1; i <= 12; i++) {
    await sub.publish(chatMessage(`m${i}`));
  }
  const sentTo = Date.now();
  // Acknowledged means committed: every one is in Postgres before the node dies.
  assert.deepEqual((await rows(pg, 'single', 'chat:keep')).map((r) => r.offset), [...Array(12).keys()].map((i) => i + 1));
  // created_at is the publish time (retention deletes by it), to the millisecond.
  const [first, last] = (await pg.query('single', `SELECT (extract(epoch FROM min(created_at)) * 1000)::int8, (extract(epoch FROM max(created_at)) * 1000)::int8 FROM chat_messages WHERE channel = 'chat:keep'`)).split('|').map(Number);
  assert.ok(first >= sentFrom - 1 && last <= sentTo + 1 && first <= last, `created_at ${first}..${last} outside the publishing ${sentFrom}..${sentTo}`);
  const before = await sub.history({ limit: 0 });
  let top;
  ({ srv, c, sub, top } = await restartAndPublish(t, srv, [c], env, 'chat:keep', { user: 'alice' }, 'm13'));
  assert.equal(top.epoch, before.epoch, 'same epoch after the restart');
  assert.equal(top.offset, 13, 'offsets continue');
  // Oldest first from the beginning: Postgres for 1..8, the window for 9..13.
  const all = await sub.history({ limit: 100 });
  assert.deepEqual(all.publications.map((p) => p.data.text), [...Array(13).keys()].map((i) => `m${i + 1}`));
  assert.deepEqual(all.publications.map((p) => p.offset), [...Array(13).keys()].map((i) => i + 1));
  // Scroll back newest first, 5 a page, as the web demo does.
  const pages = [];
  let since;
  for (let i = 0; i < 4; i++) {
    const page = await sub.history({ limit: 5, reverse: true, ...(since ? { since } : {}) });
    if (!page.publications.length) break;
    pages.push(page.publications.map((p) => p.offset));
    since = { offset: page.publications.at(-1).offset, epoch: page.epoch };
  }
  assert.deepEqual(pages, [[13, 12, 11, 10, 9], [8, 7, 6, 5, 4], [3, 2, 1]]);
  // Forward from a position the window no longer holds.
  const from3 = await sub.history({ limit: 4, since: { offset: 3, epoch: top.epoch } });
  assert.deepEqual(from3.publications.map((p) => p.offset), [4, 5, 6, 7]);
  const m = await scrapeMetrics(srv);
  assert.ok(metricValue(m, 'chat_store_history_answers_total') >= 3);
  // The client's message id and the publisher are columns too.
  assert.equal(await pg.query('single', `SELECT count(*) FROM chat_messages WHERE user_id = 'alice' AND message_id IS NOT NULL`), '13');
  // history_remove clears the database's rows too: nothing comes back from past the window.
  await api(srv, 'history_remove', { channel: 'chat:keep' });
  assert.equal(await pg.query('single', `SELECT count(*) FROM chat_messages WHERE channel = 'chat:keep'`), '0');
  assert.deepEqual((await sub.history({ limit: 100 })).publications, []);
  await assert.rejects(sub.history({ limit: 10, since: { offset: 3, epoch: top.epoch } }), (e) => e.code === 112);
  // With every row gone, a restart still continues after the newest offset the channel had:
  // going back would hand out offsets that clients already saw.
  const { top: after } = await restartAndPublish(t, srv, [c], env, 'chat:keep', { user: 'alice' }, 'm14');
  assert.deepEqual([after.epoch, after.offset], [top.epoch, 14], 'offsets go on after history_remove and a restart');
});

test('a subscriber away for longer than the window recovers everything from Postgres', async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('recover');
  const srv = await startChatd(t, { env: { DATABASE_URL: url, CHAT_NAMESPACES: JSON.stringify(SMALL), CHAT_RATE_LIMITS: 'free=100000/100000' } });
  const publisher = await connectClient(t, srv, { user: 'pub' });
  const { sub: pubSub } = await subscribe(publisher, 'chat:away');
  const reader = await connectClient(t, srv, { user: 'reader' });
  const { sub } = await subscribe(reader, 'chat:away', { recoverable: true, positioned: true });
  const pubs = new Collector(sub, 'publication');
  const subscribed = new Collector(sub, 'subscribed');
  await pubSub.publish(chatMessage('m0'));
  await pubs.waitCount(1);
  reader.disconnect();
  for (let i = 1; i <= 30; i++) {
    await pubSub.publish(chatMessage(`m${i}`));
  }
  reader.connect();
  await subscribed.waitCount(1, 10_000);
  const ctx = subscribed.items[0];
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true, '30 publications past a 5-entry window are still recoverable');
  await pubs.waitCount(31);
  assert.deepEqual(pubs.items.map((p) => p.data.text), [...Array(31).keys()].map((i) => `m${i}`));
});

/**
 * One node without Redis on a database of its own, a subscriber that has stored one
 * publication ("before", offset 1), then the database stopped: the start of every outage test.
 */
async function nodeThenOutage(t, db, channel, env) {
  const pg = await startPostgres(t);
  const url = await pg.createDb(db);
  const srv = await startChatd(t, { env: { DATABASE_URL: url, CHAT_NAMESPACES: JSON.stringify(SMALL), CHAT_RATE_LIMITS: 'free=100000/100000', ...env } });
  const c = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(c, channel);
  await sub.publish(chatMessage('before'));
  await pg.stop();
  return { pg, srv, sub };
}

test('one node, Postgres stopped: publishes are acknowledged only once committed, the backlog is capped, nothing acknowledged is lost', async (t) => {
  const { pg, srv, sub } = await nodeThenOutage(t, 'outage', 'chat:down', { CHAT_PERSIST_MAX: 8 });
  const acked = [];
  const pending = [];
  for (let i = 1; i <= 8; i++) {
    pending.push(sub.publish(chatMessage(`w${i}`)).then(() => acked.push(i)));
  }
  await waitMetric(srv, 'chat_store_backlog', {}, (v) => v === 8);
  assert.equal(acked.length, 0, 'no publish is acknowledged while its row is not committed');
  const down = await scrapeMetrics(srv);
  assert.equal(metricValue(down, 'chat_store_up', { pool: 'primary' }), 0);
  assert.ok(metricValue(down, 'chat_store_backlog_age_seconds') > 0);
  assert.equal((await fetch(`${srv.adminUrl}/readyz`)).status, 200, 'a database outage leaves the node ready');
  // Over the cap: refused at once with a temporary error, before anyone saw it.
  await assert.rejects(sub.publish(chatMessage('over')), (e) => e.code === 100 && /broker unavailable/.test(e.message));
  await pg.start();
  await Promise.all(pending);
  assert.equal(acked.length, 8);
  const got = await rows(pg, 'outage', 'chat:down');
  assert.deepEqual(got.map((r) => r.text), ['before', 'w1', 'w2', 'w3', 'w4', 'w5', 'w6', 'w7', 'w8']);
  assert.deepEqual(got.map((r) => r.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const m = await scrapeMetrics(srv);
  assert.equal(metricValue(m, 'chat_store_up', { pool: 'primary' }), 1);
  assert.equal(metricValue(m, 'chat_store_refused_total'), 1);
  assert.equal(metricValue(m, 'chat_store_backlog'), 0);
});

test('a backlog of large messages goes in batches of at most CHAT_DB_BATCH_BYTES, in order, none lost', async (t) => {
  const { pg, srv, sub } = await nodeThenOutage(t, 'bigrows', 'chat:big', { CHAT_DB_BATCH_BYTES: 3000 });
  // Eight rows of about 1.1 KB each wait while the database is down; with a 3,000-byte cap
  // they cannot go as one batch when it is back (CHAT_DB_BATCH alone would allow 500 rows).
  const texts = Array.from({ length: 8 }, (_, i) => `b${i + 1}-` + 'x'.repeat(1000));
  const pending = texts.map((txt) => sub.publish(chatMessage(txt)));
  await waitMetric(srv, 'chat_store_backlog', {}, (v) => v === 8);
  await pg.start();
  await Promise.all(pending);
  const got = await rows(pg, 'bigrows', 'chat:big');
  assert.deepEqual(got.map((r) => r.text), ['before', ...texts]);
  assert.deepEqual(got.map((r) => r.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const m = await scrapeMetrics(srv);
  assert.equal(metricValue(m, 'chat_store_rows_total'), 9);
  const batches = metricValue(m, 'chat_store_batch_rows_count');
  assert.ok(batches >= 5, `the eight large rows went in ${batches - 1} batch(es), want at least 4`);
  assert.equal(metricValue(m, 'chat_store_batch_rows_bucket', { le: '2' }), batches, 'no batch holds more than 2 of the large rows');
});

test('one node, Postgres frozen (SIGSTOP) mid-write: the statement timeout drops the connection, the batch is sent again after SIGCONT, stored once', async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('frozen');
  const srv = await startChatd(t, {
    env: { DATABASE_URL: url, CHAT_NAMESPACES: JSON.stringify(SMALL), CHAT_RATE_LIMITS: 'free=100000/100000', CHAT_DB_STATEMENT_TIMEOUT_MS: 500, CHAT_DB_CONNECT_TIMEOUT_MS: 500 },
  });
  const c = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(c, 'chat:frozen');
  await sub.publish(chatMessage('before'));
  const pids = await pg.pids();
  for (const pid of pids) process.kill(pid, 'SIGSTOP');
  let thawed = false;
  t.after(() => { if (!thawed) for (const pid of pids) { try { process.kill(pid, 'SIGCONT'); } catch { /* gone */ } } });
  const acks = [1, 2, 3].map((i) => sub.publish(chatMessage(`f${i}`)));
  // The frozen statement is abandoned, not waited for forever.
  await waitMetric(srv, 'chat_store_write_retries_total', {}, (v) => v >= 1, { timeoutMs: 10_000 });
  assert.equal(metricValue(await scrapeMetrics(srv), 'chat_store_backlog'), 3);
  for (const pid of pids) process.kill(pid, 'SIGCONT');
  thawed = true;
  await Promise.all(acks);
  const got = await rows(pg, 'frozen', 'chat:frozen');
  assert.deepEqual(got.map((r) => r.text), ['before', 'f1', 'f2', 'f3']);
});

test('retention deletes only what is older than the namespace and the publisher\'s plan allow', async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('retention');
  const namespaces = {
    chat: { ...SMALL.chat, retention_days: { default: 10, pro: 100 } },
    archive: { history_size: 5, history_ttl: 3600, allow_subscribe: true, allow_publish: true, max_message_bytes: 4096 },
  };
  const env = { DATABASE_URL: url, CHAT_NAMESPACES: JSON.stringify(namespaces), CHAT_API_KEY: API_KEY, CHAT_RETENTION_INTERVAL_MS: 200, CHAT_RATE_LIMITS: 'free=1000/1000,pro=1000/1000' };
  const srv = await startChatd(t, { env });
  const free = await connectClient(t, srv, { token: userToken('fu', { plan: 'free' }) });
  const pro = await connectClient(t, srv, { token: userToken('pu', { plan: 'pro' }) });
  const { sub: fs } = await subscribe(free, 'chat:r');
  const { sub: ps } = await subscribe(pro, 'chat:r');
  const { sub: xs } = await subscribe(free, 'archive:r');
  await fs.publish(chatMessage('f1'));
  await fs.publish(chatMessage('f2'));
  await ps.publish(chatMessage('p1'));
  await ps.publish(chatMessage('p2'));
  await api(srv, 'publish', { channel: 'chat:r', data: { text: 'a1' } });
  await xs.publish({ text: 'x1' });
  // Each row keeps its publisher's plan; the server API's has none.
  assert.equal(await pg.query('retention', `SELECT string_agg(coalesce(plan, '-'), ',' ORDER BY channel, "offset") FROM chat_messages`), 'free,free,free,pro,pro,-');
  const age = { f1: 20, f2: 5, p1: 50, p2: 150, a1: 20, x1: 1000 };
  for (const [text, days] of Object.entries(age)) {
    await pg.query('retention', `UPDATE chat_messages SET created_at = now() - interval '${days} days' WHERE convert_from(data, 'UTF8')::json->>'text' = '${text}'`);
  }
  await waitMetric(srv, 'chat_store_retention_deleted_total', {}, (v) => v === 3, { timeoutMs: 10_000 });
  const left = await pg.query('retention', `SELECT string_agg(convert_from(data, 'UTF8')::json->>'text', ',' ORDER BY channel, "offset") FROM chat_messages`);
  assert.equal(left, 'x1,f2,p1', 'free past 10 days, pro past 100 days and the server API\'s past the default are gone');
  const m = await scrapeMetrics(srv);
  assert.ok(metricValue(m, 'chat_store_retention_runs_total') >= 2);
  assert.equal(metricValue(m, 'chat_store_retention_deleted_total'), 3, 'later rounds find nothing more');
  // chat:r's newest rows (p2 at 4, a1 at 5) went: after a restart its offsets still go on from 5.
  const epoch = (await fs.history({ limit: 0 })).epoch;
  const { top: now } = await restartAndPublish(t, srv, [free, pro], env, 'chat:r', { token: userToken('fu', { plan: 'free' }) }, 'f3');
  assert.deepEqual([now.epoch, now.offset], [epoch, 6], 'offsets go on after retention and a restart');
});

test('history past the window is read from the replica (DATABASE_READ_URL), from the primary while the replica is down', async (t) => {
  const primary = await startPostgres(t);
  const url = await primary.createDb('rep');
  const replica = await startPostgres(t, { replicaOf: primary });
  const srv = await startChatd(t, {
    env: { DATABASE_URL: url, DATABASE_READ_URL: replica.url('rep'), CHAT_NAMESPACES: JSON.stringify(SMALL), CHAT_API_KEY: API_KEY, CHAT_RATE_LIMITS: 'free=100000/100000' },
  });
  for (let i = 1; i <= 20; i++) {
    await api(srv, 'publish', { channel: 'chat:rep', data: { text: `m${i}` } });
  }
  await waitUntil(async () => (await replica.query('rep', 'SELECT count(*) FROM chat_messages')) === '20', { timeoutMs: 10_000, what: 'rows streamed to the replica' });
  const texts = (h) => h.publications.map((p) => p.data.text);
  const want = [...Array(20).keys()].map((i) => `m${i + 1}`);
  // The primary away: only the replica can answer for offsets 1..15.
  await primary.stop();
  await waitMetric(srv, 'chat_store_up', { pool: 'primary' }, (v) => v === 0);
  assert.equal(metricValue(await scrapeMetrics(srv), 'chat_store_up', { pool: 'replica' }), 1);
  assert.deepEqual(texts(await api(srv, 'history', { channel: 'chat:rep', limit: 100 })), want);
  // The replica away: the primary answers.
  await primary.start();
  await replica.stop();
  await waitMetric(srv, 'chat_store_up', { pool: 'replica' }, (v) => v === 0);
  await waitMetric(srv, 'chat_store_up', { pool: 'primary' }, (v) => v === 1, { timeoutMs: 10_000 });
  assert.deepEqual(texts(await api(srv, 'history', { channel: 'chat:rep', limit: 100 })), want);
});

test('every settled assistant request is a row of the usage ledger, and its answer is durable history', async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('ledger');
  const srv = await startChatd(t, { env: { DATABASE_URL: url, CHAT_API_KEY: API_KEY, CHAT_RATE_LIMITS: 'free=100/100,pro=100/100' } });
  const c = await connectClient(t, srv, { token: userToken('asker', { plan: 'pro' }) });
  const { sub } = await subscribe(c, 'chat:llm');
  let id = null;
  const w = watchAnswer(sub, () => id);
  id = (await ask(c, 'chat:llm', 'hello ledger')).request_id;
  w.sync();
  await w.done;
  assert.ok(w.final, JSON.stringify(w.error?.data));
  const usage = w.final.data.usage;
  await waitUntil(async () => (await pg.query('ledger', 'SELECT count(*) FROM chat_llm_usage')) === '1', { what: 'the ledger row' });
  const row = await pg.query('ledger', 'SELECT request_id, user_id, plan, provider, model, tokens_in, tokens_out, outcome FROM chat_llm_usage');
  assert.equal(row, [id, 'asker', 'pro', 'mock', 'mock-1', usage.input_tokens, usage.output_tokens, 'ok'].join('|'));
  // The stored answer is a durable row like any message.
  assert.equal(await pg.query('ledger', `SELECT plan FROM chat_messages WHERE channel = 'chat:llm' AND "offset" = ${w.final.offset}`), 'pro',
    'the answer is kept as long as the asker\'s plan keeps messages');
});

async function startNodes(t, n, redis, url, env = {}) {
  const nodes = await Promise.all([...Array(n).keys()].map((i) => startChatd(t, {
    env: { REDIS_URL: redis.url, DATABASE_URL: url, CHAT_NODE_ID: `node${i}`, CHAT_API_KEY: API_KEY, CHAT_RATE_LIMITS: 'free=100000/100000', ...env },
  })));
  await waitReady(nodes);
  return nodes;
}

test('three nodes starting at once apply the migrations exactly once', async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('migrate');
  const redis = await startRedis(t);
  const nodes = await startNodes(t, 3, redis, url);
  const applied = nodes.filter((n) => /applying migration/.test(n.stderr));
  assert.equal(applied.length, 1, 'one node migrated');
  const versions = await pg.query('migrate', 'SELECT string_agg(version::text, \',\' ORDER BY version) FROM chat_schema_migrations');
  assert.match(versions, /^1(,\d+)*$/);
  assert.equal(await pg.query('migrate', 'SELECT count(*) = count(DISTINCT version) FROM chat_schema_migrations'), 't');
  // A later node finds nothing to do.
  const [late] = await startNodes(t, 1, redis, url, { CHAT_NODE_ID: 'late' });
  assert.doesNotMatch(late.stderr, /applying migration/);
  assert.match(late.stderr, /database schema ready.*applied=0/);
});

// The versions of store/migrations/NNNN_name.sql, in order.
const MIGRATIONS = readdirSync(new URL('../../store/migrations/', import.meta.url))
  .filter((f) => /^\d+_.*\.sql$/.test(f)).map((f) => Number.parseInt(f, 10)).sort((a, b) => a - b);

test('behind PgBouncer in transaction mode (2 server connections for two nodes): migrations, persisted publishes, history past the window and recovery all work', async (t) => {
  const pg = await startPostgres(t);
  await pg.createDb('bouncer');
  const bouncer = await startPgBouncer(t, pg, { poolMode: 'transaction', poolSize: 2 });
  const redis = await startRedis(t);
  // Two nodes starting at once, each with a pool of 2 connections (and one for its migrations),
  // all through PgBouncer: more clients than its 2 server connections, which they take turns on.
  const nodes = await startNodes(t, 2, redis, bouncer.url('bouncer'), { CHAT_NAMESPACES: JSON.stringify(SMALL), CHAT_DB_POOL: 2 });
  assert.equal(nodes.filter((n) => /applying migration/.test(n.stderr)).length, 1, 'one node migrated');
  assert.equal(nodes.filter((n) => /database schema ready.*applied=0/.test(n.stderr)).length, 1, 'the other found nothing to do');

  // A subscriber away while the channel outgrows its 5-entry window 60 times over.
  const reader = await connectClient(t, nodes[1], { user: 'reader' });
  const { sub } = await subscribe(reader, 'chat:pgb', { recoverable: true, positioned: true });
  const pubs = new Collector(sub, 'publication');
  const subscribed = new Collector(sub, 'subscribed');
  await api(nodes[0], 'publish', { channel: 'chat:pgb', data: { text: 'm0' } });
  await pubs.waitCount(1);
  reader.disconnect();
  const N = 300;
  for (let i = 1; i <= N; i++) {
    const r = await api(nodes[i % 2], 'publish', { channel: 'chat:pgb', data: { text: `m${i}` } });
    assert.equal(r.offset, i + 1);
  }
  const want = [...Array(N + 1).keys()].map((i) => `m${i}`);
  // A connection PgBouncer's pooling broke (e.g. state kept on one server connection) is logged.
  const trouble = (n) => n.stderr.split('\n').find((l) => /postgres connection lost|batch not committed|history read failed/.test(l));
  for (const n of nodes) assert.equal(trouble(n), undefined, `${n.nodeId}'s log`);
  await waitUntil(async () => (await redisCli(redis, 'XLEN', 'chat.persist')) === '0', { timeoutMs: 30_000, what: 'persist stream drained' });
  await waitUntil(async () => (await redisCli(redis, 'XPENDING', 'chat.persist', 'chat-store')).startsWith('0'), { timeoutMs: 30_000, what: 'no pending entries' });

  // The nodes' queries went through PgBouncer: it counts their transactions, holds their (at
  // least 4) connections as clients, and its 2 server connections are all the backends the
  // database has (checked before this test connects to it directly).
  const clients = (await bouncer.admin('SHOW CLIENTS')).filter((c) => c.database === 'bouncer');
  assert.ok(clients.length >= 4, `PgBouncer has ${clients.length} clients on the database`);
  const backends = Number(await pg.query('postgres', 'SELECT count(*) FROM pg_stat_activity WHERE datname = \'bouncer\''));
  assert.ok(backends >= 1 && backends <= 2, `${backends} backends on the database: PgBouncer's server connections only`);
  const pool = (await bouncer.admin('SHOW POOLS')).find((p) => p.database === 'bouncer');
  assert.equal(pool.pool_mode, 'transaction');
  const stats = await waitUntil(async () => {
    const s = (await bouncer.admin('SHOW STATS')).find((x) => x.database === 'bouncer');
    return s && Number(s.total_xact_count) > 0 && s;
  }, { what: 'PgBouncer counting the nodes\' transactions' });
  assert.ok(Number(stats.total_query_count) >= Number(stats.total_xact_count));

  // Postgres queried directly from here on: each migration recorded once,
  assert.equal(await pg.query('bouncer', 'SELECT string_agg(version::text, \',\' ORDER BY version) FROM chat_schema_migrations'), MIGRATIONS.join(','));
  assert.equal(await pg.query('bouncer', 'SELECT count(*) = count(DISTINCT version) FROM chat_schema_migrations'), 't');
  // every publication stored once, in offset order.
  const got = await rows(pg, 'bouncer', 'chat:pgb');
  assert.deepEqual(got.map((r) => r.offset), want.map((_, i) => i + 1));
  assert.deepEqual(got.map((r) => r.text), want);

  // Recovery from past the window: from Postgres through PgBouncer.
  reader.connect();
  await subscribed.waitCount(1, 10_000);
  assert.equal(subscribed.items[0].wasRecovering, true);
  assert.equal(subscribed.items[0].recovered, true, `${N} publications past a 5-entry window are recovered`);
  await pubs.waitCount(N + 1, 10_000);
  assert.deepEqual(pubs.items.map((p) => p.data.text), want);

  // Scrolling back from the top, 50 a page, alternately on each node; then forward
  // from a position long out of the window.
  const { epoch, offset: top } = await api(nodes[0], 'history', { channel: 'chat:pgb', limit: 0 });
  assert.equal(top, N + 1);
  const back = [];
  let since = null;
  for (let page = 0; page < 10; page++) {
    const h = await api(nodes[page % 2], 'history', { channel: 'chat:pgb', limit: 50, reverse: true, ...(since ? { since } : {}) });
    if (!h.publications.length) break;
    back.push(...h.publications.map((p) => p.data.text));
    since = { offset: h.publications.at(-1).offset, epoch };
  }
  assert.deepEqual(back, [...want].reverse());
  const fwd = await api(nodes[1], 'history', { channel: 'chat:pgb', limit: 100, since: { offset: 100, epoch } });
  assert.deepEqual(fwd.publications.map((p) => p.offset), [...Array(100).keys()].map((k) => 101 + k));
  let answers = 0;
  for (const n of nodes) {
    const m = await scrapeMetrics(n);
    answers += metricValue(m, 'chat_store_history_answers_total');
    assert.equal(metricValue(m, 'chat_store_write_retries_total'), 0, `${n.nodeId}: no write had to be retried`);
    assert.equal(metricValue(m, 'chat_store_history_errors_total'), 0, `${n.nodeId}: no history read failed`);
    assert.equal(trouble(n), undefined, `${n.nodeId}'s log`);
  }
  assert.ok(answers >= 8, `${answers} history answers from Postgres`);
  assert.doesNotMatch(bouncer.log(), /prepared statement|unsupported startup parameter|ERROR/, 'PgBouncer\'s log');
});

test('three nodes, 10,000 messages, one node killed halfway: Postgres holds every acknowledged message once, in offset order', async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('kill');
  const redis = await startRedis(t);
  const nodes = await startNodes(t, 3, redis, url, { CHAT_PERSIST_CLAIM_MS: 2000 });
  const CHANNELS = ['chat:k0', 'chat:k1', 'chat:k2', 'chat:k3'];
  const TOTAL = 10_000;
  const acked = new Map(); // text -> {channel, offset}
  const attempted = new Set();
  let next = 0;
  let killed = false;
  const worker = async () => {
    while (next < TOTAL) {
      const i = next++;
      if (i === TOTAL / 2 && !killed) {
        killed = true;
        nodes[2].stop({ signal: 'SIGKILL' });
      }
      const node = nodes[i % 3];
      const channel = CHANNELS[i % CHANNELS.length];
      const text = `m${i}`;
      attempted.add(text);
      try {
        const r = await api(node, 'publish', { channel, data: { text } });
        acked.set(text, { channel, offset: r.offset });
      } catch {
        // the killed node: not acknowledged
      }
    }
  };
  await Promise.all([...Array(24).keys()].map(worker));
  await nodes[2].exited;
  assert.ok(acked.size >= TOTAL * 0.6, `acknowledged ${acked.size}`);
  // Everything in the stream is stored and acknowledged, the dead node's pending entries too.
  await waitUntil(async () => (await redisCli(redis, 'XLEN', 'chat.persist')) === '0', { timeoutMs: 30_000, what: 'persist stream drained' });
  await waitUntil(async () => (await redisCli(redis, 'XPENDING', 'chat.persist', 'chat-store')).startsWith('0'), { timeoutMs: 30_000, what: 'no pending entries' });
  let stored = 0;
  for (const ch of CHANNELS) {
    const got = await rows(pg, 'kill', ch);
    stored += got.length;
    // Offsets 1..top with no gap and no repeat: every publication Redis numbered is here once.
    assert.deepEqual(got.map((r) => r.offset), got.map((_, k) => k + 1), `${ch}: offsets in order without gaps`);
    const texts = new Set(got.map((r) => r.text));
    assert.equal(texts.size, got.length, `${ch}: no message twice`);
    for (const r of got) assert.ok(attempted.has(r.text), `${r.text} was sent`);
  }
  const stored_ = await allRows(pg, 'kill');
  for (const [text, { channel, offset }] of acked) {
    const row = stored_.get(`${channel}/${offset}`);
    if (row !== text) assert.fail(`acknowledged ${text} at ${channel}/${offset}, stored ${row}`);
  }
  // Only publishes cut by the kill (at most one per worker) may be stored unacknowledged.
  assert.ok(stored - acked.size >= 0 && stored - acked.size <= 24, `stored ${stored}, acknowledged ${acked.size}`);
  // History past the 200-entry window from any node, both directions.
  const h = await api(nodes[0], 'history', { channel: 'chat:k1', limit: 50, since: { offset: 100, epoch: (await api(nodes[1], 'history', { channel: 'chat:k1', limit: 0 })).epoch } });
  assert.deepEqual(h.publications.map((p) => p.offset), [...Array(50).keys()].map((k) => 101 + k));
  const back = await api(nodes[1], 'history', { channel: 'chat:k1', limit: 10, reverse: true, since: { offset: 11, epoch: h.epoch } });
  assert.deepEqual(back.publications.map((p) => p.offset), [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
  // An entry the publish script never writes is dropped, not claimed again forever.
  await redisCli(redis, 'XADD', 'chat.persist', '*', 'junk', '1');
  await waitUntil(async () => (await redisCli(redis, 'XLEN', 'chat.persist')) === '0', { timeoutMs: 10_000, what: 'malformed entry dropped' });
  await waitUntil(async () => (await redisCli(redis, 'XPENDING', 'chat.persist', 'chat-store')).startsWith('0'), { timeoutMs: 10_000, what: 'nothing pending' });
});

test('three nodes, Postgres stopped for 20 s under publishing: publishing goes on, the backlog drains after, a dead node\'s entries are claimed', async (t) => {
  const pg = await startPostgres(t);
  const url = await pg.createDb('outage3');
  const redis = await startRedis(t);
  const nodes = await startNodes(t, 3, redis, url, { CHAT_PERSIST_CLAIM_MS: 2000 });
  const acked = [];
  let i = 0;
  const publishSome = async (n) => {
    for (let k = 0; k < n; k++, i++) {
      const node = nodes.filter((x) => x.exitCode === undefined)[i % 2];
      const r = await api(node, 'publish', { channel: `chat:o${i % 3}`, data: { text: `m${i}` } });
      acked.push({ channel: `chat:o${i % 3}`, offset: r.offset, text: `m${i}` });
    }
  };
  await publishSome(30);
  await pg.stop();
  const downAt = Date.now();
  await publishSome(300);
  for (const n of nodes) assert.equal((await fetch(`${n.adminUrl}/readyz`)).status, 200, 'ready during the outage');
  await waitMetric(nodes[0], 'chat_persist_stream_length', {}, (v) => v > 0, { timeoutMs: 5000 });
  // node2 holds entries it read but could not store: killed, they must be claimed by the others.
  await waitUntil(async () => {
    const out = await redisCli(redis, 'XINFO', 'CONSUMERS', 'chat.persist', 'chat-store');
    const m = /name\nnode2\npending\n(\d+)/.exec(out);
    return m && Number(m[1]) > 0;
  }, { timeoutMs: 5000, what: 'node2 holding pending entries' });
  await nodes[2].stop({ signal: 'SIGKILL' });
  while (Date.now() - downAt < 20_000) {
    await publishSome(10);
  }
  const mid = await scrapeMetrics(nodes[0]);
  assert.ok(metricValue(mid, 'chat_persist_stream_length') > 0);
  assert.equal(metricValue(mid, 'chat_store_up', { pool: 'primary' }), 0);
  // History past the window needs the database: a temporary error meanwhile, not a wrong answer.
  const { epoch } = await api(nodes[0], 'history', { channel: 'chat:o0', limit: 0 });
  assert.ok(acked.filter((a) => a.channel === 'chat:o0').length > 250, 'chat:o0 outgrew its window');
  await assert.rejects(api(nodes[0], 'history', { channel: 'chat:o0', limit: 10, since: { offset: 1, epoch } }), (e) => e.apiError?.code === 100);
  await pg.start();
  await waitUntil(async () => (await redisCli(redis, 'XLEN', 'chat.persist')) === '0', { timeoutMs: 30_000, what: 'persist stream drained' });
  await waitUntil(async () => (await redisCli(redis, 'XPENDING', 'chat.persist', 'chat-store')).startsWith('0'), { timeoutMs: 30_000, what: 'dead node\'s entries claimed' });
  const stored = await allRows(pg, 'outage3');
  for (const a of acked) {
    const got = stored.get(`${a.channel}/${a.offset}`);
    if (got !== a.text) assert.fail(`acknowledged ${a.text} at ${a.channel}/${a.offset}, stored ${JSON.stringify(got)}`);
  }
  assert.equal(stored.size, acked.length);
  await waitMetric(nodes[0], 'chat_persist_stream_length', {}, (v) => v === 0, { timeoutMs: 5000 });
  const acks = metricValue(await scrapeMetrics(nodes[0]), 'chat_persist_acked_total') + metricValue(await scrapeMetrics(nodes[1]), 'chat_persist_acked_total');
  assert.ok(acks >= acked.length, `the two live nodes stored ${acks} of ${acked.length}`);
  const h = await api(nodes[1], 'history', { channel: 'chat:o0', limit: 10, since: { offset: 1, epoch } });
  assert.deepEqual(h.publications.map((p) => p.offset), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
});
