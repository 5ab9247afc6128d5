// The zero-config demo does not fail open: with no CHAT_JWT_SECRET the public listener defaults to
// loopback, and a node that serves demo tokens on an address other machines can reach says so
// with a WARN line.
//
// The default port (8000) may be taken on this machine, so the default-address cases run chatd in
// a network namespace of its own (unshare -rn): its ready line tells the address it bound.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { startChatd, httpGet, waitUntil, JWT_SECRET } from './helpers.mjs';

const WARN_RE = /\bwarn\b.*demo tokens.*non-loopback/i;
const ownNetns = spawnSync('unshare', ['-rn', 'true']).status === 0;

/** Waits for the log line that follows the ready line, so that an absent line is truly absent. */
async function startedLogged(srv) {
  await waitUntil(() => /\bstarted\b/.test(srv.stderr), { what: 'the started log line' });
}

test('no secret and no CHAT_LISTEN: the public listener binds 127.0.0.1:8000', { skip: !ownNetns && 'unshare -rn is not permitted here' }, async (t) => {
  const srv = await startChatd(t, { demo: true, prefix: ['unshare', '-rn'], env: { CHAT_LISTEN: null }, anyAddress: true });
  assert.match(srv.stdout, /chatd ready public=127\.0\.0\.1:8000 /);
  await startedLogged(srv);
  assert.doesNotMatch(srv.stderr, WARN_RE);
});

test('a configured secret and no CHAT_LISTEN: the public listener binds 0.0.0.0:8000', { skip: !ownNetns && 'unshare -rn is not permitted here' }, async (t) => {
  const srv = await startChatd(t, { prefix: ['unshare', '-rn'], env: { CHAT_LISTEN: null }, anyAddress: true });
  assert.match(srv.stdout, /chatd ready public=0\.0\.0\.0:8000 /);
  await startedLogged(srv);
  assert.doesNotMatch(srv.stderr, WARN_RE);
});

test('demo mode on 0.0.0.0 (CHAT_LISTEN given): demo tokens served, with a WARN line', async (t) => {
  const srv = await startChatd(t, { demo: true, env: { CHAT_LISTEN: '0.0.0.0:0' }, anyAddress: true });
  await waitUntil(() => WARN_RE.test(srv.stderr), { what: 'a WARN line about demo tokens on a non-loopback address' });
  const r = await httpGet(`${srv.httpUrl}/demo/token?user=zed`);
  assert.equal(r.status, 200);
});

test('CHAT_DEMO_TOKENS=1 on 0.0.0.0 with a secret: a WARN line', async (t) => {
  const srv = await startChatd(t, { env: { CHAT_JWT_SECRET: JWT_SECRET, CHAT_DEMO_TOKENS: 1, CHAT_LISTEN: '0.0.0.0:0' }, anyAddress: true });
  await waitUntil(() => WARN_RE.test(srv.stderr), { what: 'a WARN line about demo tokens on a non-loopback address' });
});

test('demo mode on loopback, or a secret without demo tokens on 0.0.0.0: no warning', async (t) => {
  const demo = await startChatd(t, { demo: true });
  const real = await startChatd(t, { env: { CHAT_LISTEN: '0.0.0.0:0' }, anyAddress: true });
  await startedLogged(demo);
  await startedLogged(real);
  assert.doesNotMatch(demo.stderr, WARN_RE);
  assert.doesNotMatch(real.stderr, WARN_RE);
  assert.equal((await httpGet(`${real.httpUrl}/demo/token?user=zed`)).status, 404);
});
