// The Protobuf client protocol on the wire: commands written by hand (a minimal Protobuf writer
// below) get Protobuf replies on binary frames, chosen by ?cf_protocol=protobuf (the mobile
// SDKs) as by the centrifuge-protobuf subprotocol (centrifuge-js); malformed input closes with
// 3501 and the node lives on; a room of JSON and Protobuf clients on two nodes sees the same
// publications in the same order. The SDK suite itself runs in both forms (scripts/test,
// CHAT_TEST_PROTOCOL=protobuf).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChatd, connectClient, subscribe, Collector, httpGet, userToken, waitUntil, withTimeout, WebSocket,
} from './helpers.mjs';
import { startCluster } from './cluster-util.mjs';
import { splitDelimited } from './sdk-protocol.mjs';

// ---- a minimal Protobuf writer and reader (varints and length-delimited fields) ----

function varint(n) {
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return Buffer.from(out);
}
const key = (num, wt) => varint((num << 3) | wt);
const uint = (num, v) => Buffer.concat([key(num, 0), varint(v)]);
const bytes = (num, b) => {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b);
  return Buffer.concat([key(num, 2), varint(buf.length), buf]);
};
const msg = (...fields) => Buffer.concat(fields);
const delimited = (...msgs) => Buffer.concat(msgs.flatMap((m) => [varint(m.length), m]));

/** Fields of one message: {num: [values]}, values a BigInt (varint) or a Buffer. */
function fields(buf) {
  const out = {};
  let i = 0;
  const readVarint = () => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      const b = buf[i++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const k = Number(readVarint());
    const num = k >> 3;
    const wt = k & 7;
    let val;
    if (wt === 0) val = readVarint();
    else if (wt === 2) {
      const len = Number(readVarint());
      val = buf.subarray(i, i + len);
      i += len;
    } else throw new Error(`wire type ${wt}`);
    (out[num] ||= []).push(val);
  }
  return out;
}

/** A raw Protobuf client: replies by id, pushes in order, the close code. */
function rawPb(t, url, protocols) {
  const ws = new WebSocket(url, protocols);
  const c = { ws, replies: new Map(), pushes: [], waiters: [], binary: 0, text: 0 };
  c.opened = new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  c.opened.catch(() => {});
  c.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    if (!isBinary) { c.text++; return; }
    c.binary++;
    for (const m of splitDelimited(data)) {
      const f = fields(m);
      const id = f[1] ? Number(f[1][0]) : 0;
      if (id) c.replies.set(id, f);
      else if (f[4]) c.pushes.push(fields(f[4][0]));
      else c.pings = (c.pings || 0) + 1;
    }
    for (const w of c.waiters.splice(0)) w();
  });
  c.reply = (id) => withTimeout(new Promise((resolve) => {
    const check = () => (c.replies.has(id) ? resolve(c.replies.get(id)) : c.waiters.push(check));
    check();
  }), 5000, `reply ${id}`);
  t.after(() => ws.terminate());
  return c;
}

const connectCmd = (id, user, extra = Buffer.alloc(0)) => msg(uint(1, id), bytes(4, msg(bytes(1, userToken(user)), bytes(4, 'raw-pb'))), extra);

test('protobuf: commands by hand get Protobuf replies and pushes, by query or by subprotocol', async (t) => {
  const srv = await startChatd(t);
  for (const [how, url, protocols] of [
    ['query', `${srv.wsUrl}?cf_protocol=protobuf`, undefined],
    ['subprotocol', srv.wsUrl, ['centrifuge-protobuf']],
  ]) {
    const c = rawPb(t, url, protocols);
    await withTimeout(c.opened, 5000, `open (${how})`);
    // connect, subscribe and publish in one frame, as the SDKs batch them; an unknown field
    // (99) in the connect is skipped.
    const data = JSON.stringify({ type: 'message', text: `by ${how}` });
    c.ws.send(delimited(
      connectCmd(1, `pb-${how}`, bytes(99, 'ignored')),
      msg(uint(1, 2), bytes(5, msg(bytes(1, `chat:pb-${how}`), uint(10, 1)))),
      msg(uint(1, 3), bytes(7, msg(bytes(1, `chat:pb-${how}`), bytes(2, data)))),
    ));
    const conn = fields((await c.reply(1))[5][0]);
    assert.match(conn[1][0].toString(), /^[0-9a-f-]{36}$/, 'ConnectResult.client');
    assert.equal(conn[7] ? Number(conn[7][0]) : 0, 25, 'ConnectResult.ping');
    const sub = fields((await c.reply(2))[6][0]);
    assert.equal(Number(sub[3][0]), 1, 'SubscribeResult.recoverable');
    assert.equal((await c.reply(3))[8].length, 1, 'an empty PublishResult');
    await waitUntil(() => c.pushes.length === 1, { what: 'the publication push' });
    const push = c.pushes[0];
    assert.equal(push[2][0].toString(), `chat:pb-${how}`);
    const pub = fields(push[4][0]);
    // The data as sent, dated by the node (the chat schema's "ts").
    const { ts, ...sent } = JSON.parse(pub[4][0].toString());
    assert.deepEqual(sent, JSON.parse(data), 'the data as sent');
    assert.ok(Math.abs(ts - Date.now()) < 60_000, `ts ${ts}`);
    assert.equal(Number(pub[6][0]), 1, 'offset');
    assert.equal(fields(pub[5][0])[1][0].toString(), `pb-${how}`, 'the publisher\'s ClientInfo');
    // An error reply: a channel of no namespace.
    c.ws.send(delimited(msg(uint(1, 4), bytes(5, msg(bytes(1, 'nope:x'))))));
    const err = fields((await c.reply(4))[2][0]);
    assert.equal(Number(err[1][0]), 102);
    assert.equal(err[2][0].toString(), 'unknown channel');
    assert.equal(c.text, 0, 'no text frame to a Protobuf client');
  }
});

test('protobuf: malformed input closes with 3501; the node lives on', async (t) => {
  const srv = await startChatd(t);
  const url = `${srv.wsUrl}?cf_protocol=protobuf`;
  const cases = {
    'truncated varint': Buffer.from([0xff]),
    'length past the frame': Buffer.from([0x05, 0x08, 0x01]),
    '10 MB length prefix': Buffer.concat([varint(10_000_000), Buffer.from([0x08, 0x01, 0x22, 0x00])]),
    'varint of 11 bytes': Buffer.from([0x0b, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
    'wrong wire type for id': delimited(msg(key(1, 2), varint(1), Buffer.from('A'))),
    'two requests in one command': delimited(msg(uint(1, 1), bytes(4, msg(bytes(1, 'x'))), bytes(5, msg(bytes(1, 'chat:a'))))),
    'a token that is not UTF-8': delimited(msg(uint(1, 1), bytes(4, msg(bytes(1, Buffer.from([0x61, 0xff, 0xfe])))))),
    'a command without an id': delimited(msg(bytes(5, msg(bytes(1, 'chat:a'))))),
  };
  for (const [what, frame] of Object.entries(cases)) {
    const c = rawPb(t, url);
    await withTimeout(c.opened, 5000, 'open');
    c.ws.send(frame);
    const closed = await withTimeout(c.closed, 5000, `close after ${what}`);
    assert.equal(closed.code, 3501, `${what}: ${JSON.stringify(closed)}`);
  }
  // A text frame on a Protobuf connection, a binary frame on a JSON one.
  const text = rawPb(t, url);
  await withTimeout(text.opened, 5000, 'open');
  text.ws.send('{"id":1,"connect":{}}');
  assert.deepEqual(await withTimeout(text.closed, 5000, 'close'), { code: 3501, reason: 'text frames are not supported' });
  const json = rawPb(t, srv.wsUrl);
  await withTimeout(json.opened, 5000, 'open');
  json.ws.send(delimited(connectCmd(1, 'x')));
  assert.equal((await withTimeout(json.closed, 5000, 'close')).code, 3501);
  // An unknown wire format is refused as it opens.
  const xml = rawPb(t, `${srv.wsUrl}?cf_protocol=xml`);
  assert.deepEqual(await withTimeout(xml.closed, 5000, 'close'), { code: 3501, reason: 'bad request: unknown cf_protocol' });
  // The node still serves.
  assert.equal((await httpGet(`${srv.adminUrl}/healthz`)).status, 200);
  const ok = rawPb(t, url);
  await withTimeout(ok.opened, 5000, 'open');
  ok.ws.send(delimited(connectCmd(1, 'after')));
  assert.ok((await ok.reply(1))[5], 'connects after all that');
});

test('mixed room: JSON and Protobuf subscribers on two nodes get the same publications in the same order', async (t) => {
  const [n1, n2] = await startCluster(t, 2);
  const room = 'chat:mixed';
  const members = [];
  for (const [srv, protocol, user] of [[n1, 'json', 'j1'], [n1, 'protobuf', 'p1'], [n2, 'json', 'j2'], [n2, 'protobuf', 'p2']]) {
    const c = await connectClient(t, srv, { user, protocol });
    const { sub } = await subscribe(c, room);
    members.push({ c, sub, got: new Collector(sub, 'publication'), protocol, user });
  }
  // Each member publishes in turn; 40 messages from both formats and both nodes.
  const N = 40;
  for (let i = 0; i < N; i++) {
    const m = members[i % members.length];
    await m.sub.publish({ type: 'message', text: `m${i} from ${m.user}` });
  }
  const seqs = await Promise.all(members.map((m) => m.got.waitCount(N, 10000)));
  const want = seqs[0].map((p) => [p.offset, p.data.text, p.info.user]);
  assert.equal(new Set(want.map((w) => w[1])).size, N);
  for (const [i, s] of seqs.entries()) {
    assert.deepEqual(s.map((p) => [p.offset, p.data.text, p.info.user]), want, `${members[i].user} (${members[i].protocol})`);
  }
  assert.deepEqual(want.map((w) => w[0]), Array.from({ length: N }, (_, i) => i + 1), 'offsets 1..N in order');
});
