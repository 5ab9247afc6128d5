// chatctl against a two-node cluster (Redis): every command with --json parsed and checked,
// the human tables spot-checked, exit codes, and `top` run under tmux with its screen read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { CHATCTL_BIN, runChatctl, connectClient, subscribe, Collector, waitEvent, waitUntil, newClient } from './helpers.mjs';
import { startCluster } from './cluster-util.mjs';

const API_KEY = 'chatctl-test-key';
const SECRET = 'chatctl-test-secret';

/** Runs chatctl against srv's admin listener; resolves {code, stdout, stderr}. */
function ctl(srv, ...args) {
  return runChatctl(args, { CHAT_ADMIN_LISTEN: srv ? srv.adminAddr : '127.0.0.1:1', CHAT_API_KEY: API_KEY, CHAT_JWT_SECRET: SECRET });
}

async function ctlJson(srv, ...args) {
  const r = await ctl(srv, '--json', ...args);
  assert.equal(r.code, 0, `chatctl ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

test('chatctl: every command against two nodes', async (t) => {
  const nodes = await startCluster(t, 2, { CHAT_API_KEY: API_KEY, CHAT_JWT_SECRET: SECRET });
  const [n1, n2] = nodes;

  // Each node announces itself to the registry on its own beat.
  let info;
  await waitUntil(async () => (info = await ctlJson(n1, 'status')).nodes.length === 2,
    { timeoutMs: 5000, what: 'both nodes in the registry' });
  assert.deepEqual(info.nodes.map((n) => n.name).sort(), ['node0', 'node1']);
  assert.ok(info.nodes.every((n) => n.ready === true && n.draining === false));
  assert.equal(info.nodes.find((n) => n.name === 'node1').admin, n2.adminAddr);
  const human = await ctl(n1, 'nodes');
  assert.equal(human.code, 0);
  assert.match(human.stdout, /^NODE\s+ADDRESS\s+ADMIN\s+CLIENTS/m);
  assert.match(human.stdout, new RegExp(`^node1\\s+${n2.publicAddr.replace(/\./g, '\\.')}\\s`, 'm'));

  // A token minted by chatctl from the shared secret connects to the other node.
  const tok = await ctl(null, 'token', '--user', 'erin', '--plan', 'pro', '--ttl', '600');
  assert.equal(tok.code, 0, tok.stderr);
  const erin = await connectClient(t, n2, { token: tok.stdout.trim() });
  const { sub } = await subscribe(erin, 'chat:ctl', { recoverable: true, positioned: true });
  const pubs = new Collector(sub, 'publication');
  const bad = newClient(t, n2, { token: (await ctl(null, 'token', '--user', 'x', '--secret', 'other')).stdout.trim() });
  const refused = waitEvent(bad, 'disconnected', { what: 'a token of another secret refused' });
  bad.connect();
  assert.equal((await refused).code, 3500);

  const pub = await ctlJson(n1, 'publish', 'chat:ctl', '{"type":"message","text":"from chatctl"}');
  assert.equal(pub.offset, 1);
  assert.equal((await pubs.waitCount(1))[0].data.text, 'from chatctl');
  await ctlJson(n1, 'publish', 'chat:ctl', '{"type":"message","text":"second"}');
  const hist = await ctlJson(n2, 'history', 'chat:ctl', '--limit', '1');
  assert.deepEqual(hist.publications.map((p) => p.data.text), ['second']);
  const histHuman = await ctl(n2, 'history', 'chat:ctl');
  assert.match(histHuman.stdout, /^\s+1\s+-\s+\{"type":"message","text":"from chatctl"\}$/m);
  assert.ok(histHuman.stdout.indexOf('from chatctl') < histHuman.stdout.indexOf('second'), 'oldest first');

  const pres = await ctlJson(n1, 'presence', 'chat:ctl');
  assert.deepEqual(Object.values(pres.presence).map((p) => p.user), ['erin']);
  const chans = await ctlJson(n2, 'channels', 'chat:*');
  assert.deepEqual(chans.channels, { 'chat:ctl': { num_clients: 1 } });

  const unsub = waitEvent(sub, 'unsubscribed', { what: 'chatctl unsubscribe' });
  assert.deepEqual(await ctlJson(n1, 'unsubscribe', 'erin', 'chat:ctl'), {});
  assert.equal((await unsub).code, 2000);
  const kicked = waitEvent(erin, 'disconnected', { what: 'chatctl kick' });
  assert.deepEqual(await ctlJson(n1, 'kick', 'erin'), {});
  assert.equal((await kicked).code, 3503);

  assert.deepEqual(await ctlJson(n2, 'log-level', 'debug'), { level: 'debug' });
  assert.deepEqual(await ctlJson(n2, 'log-level'), { level: 'debug' });
  const llm = await ctlJson(n1, 'llm');
  assert.ok(Array.isArray(llm.providers) && llm.providers.length > 0);
  assert.ok(llm.queue && typeof llm.queue.depth.free === 'number');

  // Exit codes: the node's error 1, usage 2, unreachable 3.
  const apiErr = await ctl(n1, 'publish', 'nope:x', '1');
  assert.equal(apiErr.code, 1);
  assert.match(apiErr.stderr, /error 102: unknown channel/);
  assert.equal((await ctl(n1, 'log-level', 'loud')).code, 1);
  assert.equal((await ctl(n1, 'frobnicate')).code, 2);
  assert.equal((await ctl(n1, 'presence')).code, 2);
  assert.equal((await ctl(n1, 'publish', 'chat:x', '{not json')).code, 2);
  assert.equal((await ctl(null, 'status')).code, 3);
  const help = await ctl(n1, 'history', '--help');
  assert.equal(help.code, 0);
  assert.match(help.stdout, /history CHANNEL \[--limit N\] \[--reverse\]/);

  // drain NODE through the other node: node1 leaves (exit 0), node0 stays.
  n2.stopRequested = true; // its exit is this step's point, not a crash
  const drained = await ctlJson(n1, 'drain', 'node1');
  assert.equal(drained.node, 'node1');
  const exit = await n2.exited;
  assert.equal(exit.code, 0);
  assert.equal((await ctlJson(n1, 'status')).nodes.some((n) => n.name === 'node0'), true);
});

test('chatctl top under tmux shows the live figures', async (t) => {
  const tmux = spawnSync('tmux', ['-V']);
  assert.equal(tmux.status, 0, 'tmux is installed (scripts/install-deps --test)');
  const [n1] = await startCluster(t, 1, { CHAT_API_KEY: API_KEY });
  const a = await connectClient(t, n1, { user: 'a' });
  const b = await connectClient(t, n1, { user: 'b' });
  const { sub } = await subscribe(a, 'chat:top');
  await subscribe(b, 'chat:top');
  const session = `chatctl-top-${process.pid}`;
  const sock = `chatctl-test-${process.pid}`;
  const tm = (...args) => spawnSync('tmux', ['-L', sock, ...args], { encoding: 'utf8' });
  t.after(() => tm('kill-server'));
  const started = tm('new-session', '-d', '-s', session, '-x', '100', '-y', '20',
    `env CHAT_API_KEY=${API_KEY} ${CHATCTL_BIN} --addr ${n1.adminAddr} top --interval 0.5`);
  assert.equal(started.status, 0, started.stderr);
  // Publications keep flowing while the screen is read, so the rates are not zero.
  const got = new Collector(sub, 'publication');
  let sent = 0;
  const timer = setInterval(() => { a.publish('chat:top', { type: 'message', text: `m${sent++}` }).catch(() => {}); }, 20);
  t.after(() => clearInterval(timer));
  let screen = '';
  await waitUntil(() => {
    screen = tm('capture-pane', '-p', '-t', session).stdout;
    const m = /deliveries\/s\s+([\d.]+)/.exec(screen);
    return /connections\s+2\b/.test(screen) && m && Number(m[1]) > 0 && /fan-out p99\s+[\d.]+ ms/.test(screen);
  }, { timeoutMs: 8000, intervalMs: 200, what: 'a top screen with 2 connections and live rates' }).catch((e) => {
    throw new Error(`${e.message}; last screen:\n${screen}`);
  });
  clearInterval(timer);
  assert.ok(got.items.length > 0);
  assert.match(screen, /chatctl top\s+http:\/\/127\.0\.0\.1:\d+\s+every 0\.5 s/);
  assert.match(screen, /llm queue depth\s+0/);
});
