// TLS on the node: CHAT_TLS_CERT/CHAT_TLS_KEY (made here with the openssl CLI) turn the public
// listener into wss:// and https://; both SDK forms connect and get every publication of a
// burst in order (the batched writes go through the connection's OpenSSL object); a plain
// ws:// client on the TLS port fails cleanly; TLS 1.1 is refused; SIGHUP loads a new
// certificate for new connections while open ones stay; CHAT_ADMIN_TLS=1 puts the admin
// listener on TLS too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { startChatd, connectClient, subscribe, Collector, waitUntil, withTimeout, WebSocket } from './helpers.mjs';

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
