// Request headers over the limit: a header field over 8 KiB is answered 431 Request Header
// Fields Too Large (a request target over it 414), on plain requests and on the WebSocket upgrade,
// instead of the connection dropping without an answer. Headers as a whole are held in 16 KiB
// (libwebsockets' header buffer): beyond that lws closes the connection without an answer, and
// the node goes on serving.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startChatd } from './helpers.mjs';

/** Sends raw request bytes; resolves with the status code of the answer (0: closed without one). */
function rawRequest(addr, request, timeoutMs = 5000) {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port), host);
    let data = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('no answer and no close'));
    }, timeoutMs);
    const finish = () => {
      clearTimeout(timer);
      sock.destroy();
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(data);
      resolve(m ? Number(m[1]) : 0);
    };
    sock.setEncoding('latin1');
    sock.on('data', (d) => {
      data += d;
      if (data.includes('\r\n\r\n')) {
        finish();
      }
    });
    sock.on('end', finish);
    sock.on('error', finish);
    sock.on('connect', () => sock.write(request));
  });
}

const get = (path, headers = '') => `GET ${path} HTTP/1.1\r\nHost: localhost\r\n${headers}\r\n`;
const upgrade = (headers = '') =>
  get('/connection/websocket', `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${headers}`);
const cookie = (n) => `Cookie: c=${'x'.repeat(n)}\r\n`;

test('a header field over 8 KiB gets 431, on requests and upgrades; one under it is served', async (t) => {
  const srv = await startChatd(t);
  assert.equal(await rawRequest(srv.publicAddr, get('/healthz', cookie(6000))), 200, 'a 6 KB cookie is fine');
  assert.equal(await rawRequest(srv.publicAddr, get('/healthz', cookie(9000))), 431);
  assert.equal(await rawRequest(srv.publicAddr, get('/healthz', `User-Agent: ${'u'.repeat(9000)}\r\n`)), 431);
  assert.equal(await rawRequest(srv.publicAddr, upgrade()), 101);
  assert.equal(await rawRequest(srv.publicAddr, upgrade(cookie(9000))), 431);
  assert.equal(await rawRequest(srv.publicAddr, get(`/healthz?${'q'.repeat(9000)}`)), 414);
  assert.equal(await rawRequest(srv.adminAddr, get('/healthz', cookie(9000))), 431);
  assert.equal(await rawRequest(srv.adminAddr, get('/healthz')), 200);
});

test('headers beyond the 16 KiB buffer: the connection is closed, the node goes on serving', async (t) => {
  const srv = await startChatd(t);
  const many = Array.from({ length: 6 }, (_, i) => `X-Filler-${i}: ${'f'.repeat(4000)}\r\n`).join('');
  const status = await rawRequest(srv.publicAddr, get('/healthz', many));
  assert.ok(status === 0 || status === 431, `answered ${status}`);
  assert.equal(await rawRequest(srv.publicAddr, get('/healthz')), 200);
});
