// TLS on the node: CHAT_TLS_CERT/CHAT_TLS_KEY (made here with the openssl CLI) turn the public
// listener into wss:// and https://; both SDK forms connect and get every publication of a
// burst in order (the batched writes go through the connection's OpenSSL object); a plain
// ws:// client on the TLS port fails cleanly; TLS 1.1 is refused; SIGHUP loads a new
// certificate for new connections while open ones stay; CHAT_ADMIN_TLS=1 puts the admin
// listener on TLS too; a TLS client that stops reading gets, once it reads again, every
// publication whole and in order (the records its socket did not take waited in the node).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import {
  startChatd, connectClient, subscribe, Collector, waitUntil, withTimeout, WebSocket, chatMessage, scrapeMetrics,
  metricValue, userToken,
} from './helpers.mjs';

/** A self-signed certificate for 127.0.0.1 as PEM files in dir, named prefix-{cert,key}.pem. */
function makeCert(dir, prefix) {
  const cert = path.join(dir, `${prefix}-cert.pem`);
  const key = path.join(dir, `${prefix}-key.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=chatd test ${prefix}`,
    '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  return { cert, key, pem: readFileSync(cert, 'utf8') };
}

/** The fingerprint of the certificate the node presents now, trusting any of cas. */
function presented(addr, cas, opts = {}) {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host, port: Number(port), ca: cas, servername: undefined, ...opts }, () => {
      const fp = s.getPeerX509Certificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.once('error', reject);
    s.setTimeout(5000, () => { s.destroy(); reject(new Error('TLS handshake timeout')); });
  });
}

function httpsGet(url, ca) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

test('wss: both SDK forms over TLS, plain ws refused, SIGHUP reloads the certificate', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chat-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const a = makeCert(dir, 'a');
  const b = makeCert(dir, 'b');
  // The node reads its files by these names; a reload swaps their contents.
  const live = { cert: path.join(dir, 'live-cert.pem'), key: path.join(dir, 'live-key.pem') };
  writeFileSync(live.cert, readFileSync(a.cert));
  writeFileSync(live.key, readFileSync(a.key));
  const srv = await startChatd(t, { env: { CHAT_TLS_CERT: live.cert, CHAT_TLS_KEY: live.key, CHAT_ADMIN_TLS: 1, CHAT_RATE_LIMITS: 'free=100000/100000' } });
  const wss = `wss://${srv.publicAddr}/connection/websocket`;
  const cas = [a.pem, b.pem];
  // The ws package with the test's CA, as the SDKs take a WebSocket class.
  class TrustingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca: cas });
    }
  }

  assert.equal(await presented(srv.publicAddr, cas), new X509Certificate(a.pem).fingerprint256);
  await assert.rejects(presented(srv.publicAddr, cas, { maxVersion: 'TLSv1.1', minVersion: 'TLSv1' }), 'TLS 1.1 is refused');
  const health = await httpsGet(`https://${srv.publicAddr}/healthz`, cas);
  assert.equal(health.status, 200);
  assert.equal((await httpsGet(`https://${srv.adminAddr}/healthz`, cas)).status, 200, 'admin over TLS');

  // Both forms in one room, a burst of 300 publications: every one, in order, for each.
  const members = [];
  for (const protocol of ['json', 'protobuf']) {
    const c = await connectClient(t, srv, { user: `tls-${protocol}`, protocol, url: wss, websocket: TrustingWebSocket });
    const { sub } = await subscribe(c, 'chat:tls');
    members.push({ c, sub, got: new Collector(sub, 'publication'), protocol });
  }
  const N = 300;
  await Promise.all(Array.from({ length: N }, (_, i) => members[i % 2].sub.publish({ type: 'message', text: `m${i}` })));
  for (const m of members) {
    const got = await m.got.waitCount(N, 10000);
    assert.deepEqual(got.map((p) => p.offset), Array.from({ length: N }, (_, i) => i + 1), `${m.protocol}: in order`);
  }

  // A plain WebSocket to the TLS port fails at once, and the node goes on.
  const plain = new WebSocket(`ws://${srv.publicAddr}/connection/websocket`);
  const failed = await withTimeout(new Promise((resolve) => {
    plain.once('error', (e) => resolve(e.message));
    plain.once('open', () => resolve('opened'));
  }), 5000, 'the plain client to fail');
  assert.notEqual(failed, 'opened');

  // SIGHUP with new files: new handshakes get certificate b; the open connections stay.
  writeFileSync(path.join(dir, 'next-cert.pem'), readFileSync(b.cert));
  writeFileSync(path.join(dir, 'next-key.pem'), readFileSync(b.key));
  renameSync(path.join(dir, 'next-key.pem'), live.key);
  renameSync(path.join(dir, 'next-cert.pem'), live.cert);
  process.kill(srv.pid, 'SIGHUP');
  const fpB = new X509Certificate(b.pem).fingerprint256;
  await waitUntil(async () => (await presented(srv.publicAddr, cas)) === fpB, { what: 'certificate b presented' });
  for (const m of members) assert.equal(m.c.state, 'connected', `${m.protocol} stayed connected`);
  await members[0].sub.publish({ type: 'message', text: 'after the reload' });
  for (const m of members) {
    const got = await m.got.waitCount(N + 1, 5000);
    assert.equal(got[N].data.text, 'after the reload');
  }
  const fresh = await connectClient(t, srv, { user: 'tls-fresh', url: wss, websocket: TrustingWebSocket });
  assert.equal(fresh.state, 'connected');
  // A broken certificate file: the reload is refused and b stays in use.
  writeFileSync(live.cert, 'not a certificate');
  process.kill(srv.pid, 'SIGHUP');
  await waitUntil(() => srv.stderr.includes('certificate not reloaded'), { what: 'the refused reload logged' });
  assert.equal(await presented(srv.publicAddr, cas), fpB);
  assert.ok(members.every((m) => m.c.state === 'connected'));
});

test('TLS settings are checked at start', async () => {
  for (const [env, msg] of [
    [{ CHAT_TLS_CERT: '/nonexistent.pem' }, /CHAT_TLS_CERT and CHAT_TLS_KEY go together/],
    [{ CHAT_ADMIN_TLS: '1' }, /CHAT_ADMIN_TLS needs CHAT_TLS_CERT/],
  ]) {
    await assert.rejects(startChatd(null, { env }), msg);
  }
});

test('the zero-config node with a certificate: the web demo and its token over https, both SDK forms over wss', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chat-tls-demo-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const a = makeCert(dir, 'demo');
  // Demo mode: no secret, no other setting but the certificate.
  const srv = await startChatd(t, { demo: true, env: { CHAT_TLS_CERT: a.cert, CHAT_TLS_KEY: a.key } });
  class TrustingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca: [a.pem] });
    }
  }
  const page = await httpsGet(`https://${srv.publicAddr}/`, [a.pem]);
  assert.equal(page.status, 200);
  assert.match(page.body, /<html/i, 'the web demo page');
  for (const protocol of ['json', 'protobuf']) {
    const r = await httpsGet(`https://${srv.publicAddr}/demo/token?user=tls${protocol}`, [a.pem]);
    assert.equal(r.status, 200, r.body);
    const { token } = JSON.parse(r.body);
    const c = await connectClient(t, srv, { token, protocol, url: `wss://${srv.publicAddr}/connection/websocket`, websocket: TrustingWebSocket });
    const { sub } = await subscribe(c, 'chat:lobby');
    const got = new Collector(sub, 'publication');
    await sub.publish({ type: 'message', text: `hello over wss (${protocol})` });
    assert.equal((await got.waitCount(1))[0].data.text, `hello over wss (${protocol})`);
  }
});


// A wss:// subscriber in a process of its own, so that SIGSTOP stalls its reads for certain
// (a paused TLSSocket in this process may still be drained by its TLS layer). It subscribes,
// says "subscribed", and once told on stdin how many publications to expect, checks each
// (offset n + 1, text "n xxx...", length) and prints "ok N", "bad ..." or "closed CODE".
const STALLED_READER = `
import WebSocket from 'ws';
import { createInterface } from 'node:readline';
const { URL_, CA, TOKEN, CHANNEL, TEXT_LEN } = process.env;
const ws = new WebSocket(URL_, { ca: [CA] });
let n = 0;
let want = -1;
let bad = null;
const done = () => {
  if (bad || (want >= 0 && n >= want)) {
    process.stdout.write(bad ? 'bad ' + bad + '\\n' : 'ok ' + n + '\\n', () => process.exit(0));
  }
};
// ws closes (1006) on a socket error without an error event of its own: a record that fails to
// decrypt is seen here.
ws.on('open', () => ws._socket.on('error', (e) => { bad = bad || 'socket ' + e.message.trim(); }));
ws.on('open', () => ws.send(JSON.stringify({ id: 1, connect: { token: TOKEN } }) + '\\n' + JSON.stringify({ id: 2, subscribe: { channel: CHANNEL } })));
ws.on('message', (d) => {
  for (const line of d.toString().split('\\n')) {
    if (!line) continue;
    const m = JSON.parse(line);
    if (m.error) bad = bad || 'error reply ' + line;
    if (m.id === 2) process.stdout.write('subscribed\\n');
    if (Object.keys(m).length === 0) ws.send('{}');
    const p = m.push && m.push.pub;
    if (p) {
      const t = p.data.text;
      if (p.offset !== n + 1 || !t.startsWith(n + ' ') || t.length !== String(n).length + 1 + Number(TEXT_LEN)) {
        bad = bad || 'publication ' + n + ': offset ' + p.offset + ', text ' + t.slice(0, 16) + '... (' + t.length + ' chars)';
      }
      n++;
    }
  }
  done();
});
ws.on('error', (e) => { bad = bad || 'error ' + e.message; });
ws.on('close', (code) => process.stdout.write((bad ? 'bad ' + bad + ', closed ' : 'closed ') + code + '\\n', () => process.exit(0)));
createInterface({ input: process.stdin }).on('line', (l) => { want = Number(l); done(); });
`;

test('wss: records a stalled reader\'s socket does not take wait in the node and arrive whole, in order', { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chat-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const a = makeCert(dir, 'a');
  // A write queue far above the flood, so a stalled reader is kept rather than closed (3008);
  // messages up to 40 KB, so that one publication makes a frame of several TLS records.
  const ns = { chat: { allow_subscribe: true, allow_publish: true, message_schema: 'chat', max_message_bytes: 40000, presence: false, join_leave: false, history_size: 100, history_ttl: 3600 } };
  const srv = await startChatd(t, {
    env: {
      CHAT_TLS_CERT: a.cert, CHAT_TLS_KEY: a.key, CHAT_RATE_LIMITS: 'free=100000/100000', CHAT_WRITE_QUEUE_BYTES: 256 << 20,
      CHAT_NAMESPACES: JSON.stringify(ns),
    },
  });
  const wss = `wss://${srv.publicAddr}/connection/websocket`;
  class TrustingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca: [a.pem] });
    }
  }
  const publisher = await connectClient(t, srv, { user: 'tls-publisher', url: wss, websocket: TrustingWebSocket, timeout: 20000 });

  // Two readers: frames of one record (3 KB publications, a few per frame) and frames of two
  // (20 KB publications), which the node encrypts into one buffer before a single send.
  const readers = [];
  for (const [i, textLen, perRound] of [[0, 3000, 4], [1, 20000, 1]]) {
    const channel = `chat:tls-stall-${i}`;
    const proc = spawn(process.execPath, ['--input-type=module', '-e', STALLED_READER], {
      cwd: path.dirname(new URL(import.meta.url).pathname),
      env: { ...process.env, URL_: wss, CA: a.pem, TOKEN: userToken(`tls-stalled-${i}`), CHANNEL: channel, TEXT_LEN: String(textLen) },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    t.after(() => proc.kill('SIGKILL'));
    const r = { proc, out: '', text: 'x'.repeat(textLen), perRound, sent: 0, sub: (await subscribe(publisher, channel)).sub };
    proc.stdout.on('data', (d) => { r.out += d; });
    await waitUntil(() => r.out.includes('subscribed'), { timeoutMs: 10000, what: `reader ${i} subscribed` });
    readers.push(r);
  }

  // Each reader stops in turn; publications go on, a few at a time, until the node reports a
  // write the socket did not take whole; then 20 more queue behind that tail. A few at a time,
  // each round leaves in one frame written at once, since nothing is queued before it: a
  // larger round would leave the rest queued, written only when the socket polls writeable,
  // which on a full socket is never a short write.
  const MAX_MESSAGES = 4000;
  let short = 0;
  for (const [i, r] of readers.entries()) {
    r.proc.kill('SIGSTOP');
    const before = short;
    const round = (n) => Promise.all(Array.from({ length: n }, () => r.sub.publish(chatMessage(`${r.sent++} ${r.text}`))));
    while (r.sent < MAX_MESSAGES && short === before) {
      await round(r.perRound);
      short = metricValue(await scrapeMetrics(srv), 'chat_write_short_total') || 0;
    }
    assert.ok(short > before, `reader ${i}: every write was taken whole after ${r.sent} publications`);
    await round(20);
  }

  for (const [i, r] of readers.entries()) {
    r.proc.kill('SIGCONT');
    r.proc.stdin.write(`${r.sent}\n`);
    await waitUntil(() => /^(ok|bad|closed)/m.test(r.out), { timeoutMs: 60000, what: `${r.sent} publications at reader ${i}` });
    assert.equal(r.out.trim().split('\n').pop(), `ok ${r.sent}`, `reader ${i}`);
  }
});
