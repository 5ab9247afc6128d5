// Writes the seed corpora of fuzz_jwt, fuzz_command and fuzz_session (tests/fuzz/corpus/<target>/).
// Usage (after `cd tests && npm ci`): node tests/fuzz/seeds/make-seeds.mjs
//
// The command frames are what the centrifuge SDK itself sends: a client runs against an
// in-process fake WebSocket that records every frame and answers like a server would, so the
// seeds follow the SDK's field order, batching and recovery shapes. Around them come hand-made
// near-valid inputs (wrong types, bad ids, broken UTF-8) that a parser must refuse. Output is
// deterministic (fixed tokens, ids and times), so running this again changes nothing unless the
// SDK or this file changed. Files it does not write are left alone.

import { createHmac } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Centrifuge } from 'centrifuge';

const CORPUS = fileURLToPath(new URL('../corpus/', import.meta.url));

// Secrets and clock of the drivers (fuzz_jwt.c, fuzz_session.c).
const JWT_SECRET = 'fuzz-default-secret';
const JWT_SECRET_K1 = 'fuzz-k1-secret';
const JWT_NOW = 1700000000;
const SESSION_SECRET = 'fuzz-session-secret';
const FAR_EXP = 4102444800; // 2100-01-01: valid whenever the fuzzer runs

const b64url = (b) => Buffer.from(b).toString('base64url');

function sign(header, payload, secret) {
  const h = b64url(typeof header === 'string' ? header : JSON.stringify(header));
  const p = b64url(typeof payload === 'string' ? payload : JSON.stringify(payload));
  const s = b64url(createHmac('sha256', secret).update(`${h}.${p}`).digest());
  return `${h}.${p}.${s}`;
}

const HS = { alg: 'HS256', typ: 'JWT' };

function write(target, name, content) {
  const dir = CORPUS + target;
  mkdirSync(dir, { recursive: true });
  writeFileSync(`${dir}/${name}`, content);
}

// ---------------------------------------------------------------- fuzz_jwt

function jwtSeeds() {
  const t = 'fuzz_jwt';
  const exp = JWT_NOW + 3600;
  const conn = { sub: 'u1', iat: JWT_NOW - 60, exp };
  // 1. Whole tokens, as a client sends them in connect and subscribe.
  write(t, 'token-connect', sign(HS, conn, JWT_SECRET));
  write(t, 'token-all-claims', sign(HS, {
    sub: 'u1', iat: JWT_NOW - 60, nbf: JWT_NOW - 60, exp, aud: 'chat', iss: 'iss',
    info: { name: 'Ann', avatar: null }, channels: ['chat:lobby', 'personal:#u1'],
    plan: 'pro', roles: ['admin', 'mod'],
  }, JWT_SECRET));
  write(t, 'token-aud-array', sign(HS, { ...conn, aud: ['other', 'chat'], iss: 'iss' }, JWT_SECRET));
  write(t, 'token-subscription', sign(HS, { sub: 'u1', channel: 'chat:x', exp, info: { role: 'reader' } },
    JWT_SECRET));
  write(t, 'token-kid-k1', sign({ ...HS, kid: 'k1' }, conn, JWT_SECRET_K1));
  write(t, 'token-kid-unknown', sign({ ...HS, kid: 'k9' }, conn, JWT_SECRET_K1));
  write(t, 'token-no-typ', sign({ alg: 'HS256' }, { sub: 'u1' }, JWT_SECRET));
  write(t, 'token-plan-each', sign(HS, { sub: 'u2', plan: 'executive', exp: exp + 0.5 }, JWT_SECRET));
  write(t, 'token-expired', sign(HS, { sub: 'u1', exp: JWT_NOW - 31 }, JWT_SECRET));
  write(t, 'token-not-yet', sign(HS, { sub: 'u1', nbf: JWT_NOW + 31 }, JWT_SECRET));
  write(t, 'token-unknown-plan', sign(HS, { sub: 'u1', plan: 'gold' }, JWT_SECRET));
  write(t, 'token-empty-sub', sign(HS, { sub: '', exp }, JWT_SECRET));
  write(t, 'token-wrong-types', sign(HS, { sub: 7, exp: 'soon', channels: 'chat:x', roles: [1] },
    JWT_SECRET));
  write(t, 'token-alg-none', `${b64url('{"alg":"none","typ":"JWT"}')}.${b64url(JSON.stringify(conn))}.`);
  write(t, 'token-alg-rs256', sign({ alg: 'RS256', typ: 'JWT' }, conn, JWT_SECRET));
  const good = sign(HS, conn, JWT_SECRET);
  write(t, 'token-bad-signature', good.slice(0, -2) + (good.endsWith('AA') ? 'AB' : 'AA'));
  write(t, 'token-padded', good.replace(/\.([^.]*)$/, '.$1=='));
  write(t, 'token-two-parts', good.slice(0, good.lastIndexOf('.')));
  write(t, 'token-four-parts', `${good}.x`);
  write(t, 'token-header-array', sign('[1,2]', conn, JWT_SECRET));
  // 2. Payloads: the driver signs the whole input under a fixed header with the default secret.
  write(t, 'payload-connect', JSON.stringify({ ...conn, info: { name: 'Ann' }, plan: 'plus' }));
  write(t, 'payload-subscription', JSON.stringify({ sub: 'u1', channel: 'chat:x', exp }));
  write(t, 'payload-audience', JSON.stringify({ sub: 'u1', aud: 'chat', iss: 'iss', exp }));
  write(t, 'payload-unicode', '{"sub":"\\u00e9l\\u00e8ve \\ud83d\\ude00","exp":1700003600}');
  write(t, 'payload-duplicate', '{"sub":"u1","sub":"u2"}');
  // 3. header NUL payload, signed with k1's secret.
  write(t, 'split-kid-k1', `{"alg":"HS256","kid":"k1"}\0${JSON.stringify(conn)}`);
  write(t, 'split-kid-k2', `{"alg":"HS256","typ":"JWT","kid":"k2"}\0{"sub":"u1","plan":"free"}`);
  write(t, 'split-kid-number', `{"alg":"HS256","kid":1}\0{"sub":"u1"}`);
  write(t, 'split-alg-none', `{"alg":"none"}\0{"sub":"u1"}`);
  // 4. CHAT_JWT_SECRET spec, newline, a token for it.
  write(t, 'spec-single', `s3cret\n${sign(HS, { sub: 'u1' }, 's3cret')}`);
  write(t, 'spec-rotation', `k1:aaa,k2:bbb\n${sign({ ...HS, kid: 'k2' }, { sub: 'u1' }, 'bbb')}`);
  write(t, 'spec-bad', `k1:,:x\n${good}`);
  // 5. The same split as a channel name and a user.
  write(t, 'limited-allowed', 'chat:room#u1,u2\nu2');
  write(t, 'limited-denied', 'personal:#u1\nu2');
  write(t, 'limited-empty', 'chat:#\n');
}

// ---------------------------------------------------------------- a fake server for the SDK

const frames = [];

// Channel epochs as fuzz_session.c makes them: e0000001, e0000002, ... in the order channels
// appear, so the recovery positions the SDK sends back are current ones there too.
const epochs = new Map();
const tops = new Map();
function epoch(channel) {
  if (!epochs.has(channel)) epochs.set(channel, `e${String(epochs.size + 1).padStart(7, '0')}`);
  return epochs.get(channel);
}

// Answers every command with a plausible result so the SDK moves on to its next step.
function answer(cmd) {
  const id = cmd.id;
  if (!id) return null;
  if (cmd.connect) {
    const r = { client: 'c-1', version: '0.0.0', ping: 25, pong: true };
    if (connectTtl) Object.assign(r, { expires: true, ttl: connectTtl });
    const personal = 'personal:#u1';
    r.subs = { [personal]: { recoverable: true, positioned: true, epoch: epoch(personal), offset: 0 } };
    return { id, connect: r };
  }
  if (cmd.subscribe) {
    const ch = cmd.subscribe.channel;
    const r = { recoverable: true, positioned: true, epoch: epoch(ch), offset: tops.get(ch) || 0 };
    if (cmd.subscribe.token) Object.assign(r, { expires: true, ttl: 1 });
    if (cmd.subscribe.recover) Object.assign(r, { recovered: true, was_recovering: true, publications: [] });
    return { id, subscribe: r };
  }
  if (cmd.publish) {
    tops.set(cmd.publish.channel, (tops.get(cmd.publish.channel) || 0) + 1);
    return { id, publish: {} };
  }
  if (cmd.unsubscribe) return { id, unsubscribe: {} };
  if (cmd.history) {
    const ch = cmd.history.channel;
    return { id, history: { publications: [], epoch: epoch(ch), offset: tops.get(ch) || 0 } };
  }
  if (cmd.presence) return { id, presence: { presence: {} } };
  if (cmd.presence_stats) return { id, presence_stats: { num_clients: 1, num_users: 1 } };
  if (cmd.rpc) return { id, rpc: { data: { ok: true } } };
  if (cmd.refresh) return { id, refresh: { client: 'c-1', version: '0.0.0', expires: true, ttl: 3600 } };
  if (cmd.sub_refresh) return { id, sub_refresh: { expires: true, ttl: 3600 } };
  return { id, error: { code: 104, message: 'method not found' } };
}

let current = null;
let connectTtl = 0; // > 0: the connect result expires, so the SDK sends refresh

class FakeWebSocket {
  constructor() {
    current = this;
    this.readyState = 0;
    setTimeout(() => { this.readyState = 1; this.onopen && this.onopen(); }, 0);
  }

  send(data) {
    frames.push(String(data));
    const replies = String(data).split('\n').map((l) => answer(JSON.parse(l))).filter(Boolean);
    if (replies.length) this.deliver(replies.map((r) => JSON.stringify(r)).join('\n'));
  }

  deliver(text) {
    setTimeout(() => this.readyState === 1 && this.onmessage && this.onmessage({ data: text }), 0);
  }

  // The server side closes the socket (drain), so the SDK reconnects and recovers.
  serverClose(code, reason) {
    this.readyState = 3;
    setTimeout(() => this.onclose && this.onclose({ code, reason, wasClean: true }), 0);
  }

  close() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose && this.onclose({ code: 1000, reason: '', wasClean: true }), 0);
  }
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
const once = (em, ev) => new Promise((r) => em.once(ev, r));

// Drives the SDK through every command of PROTOCOL.md section 1 and returns the frames it sent.
async function sdkFrames(token) {
  frames.length = 0;
  epochs.clear();
  tops.clear();
  const client = new Centrifuge('ws://127.0.0.1:1/connection/websocket', {
    websocket: FakeWebSocket, token, minReconnectDelay: 1, maxReconnectDelay: 5, timeout: 2000,
  });
  const lobby = client.newSubscription('chat:lobby', { joinLeave: true, recoverable: true, positioned: true });
  const typing = client.newSubscription('typing:lobby');
  lobby.subscribe();
  typing.subscribe();
  client.connect();
  await once(lobby, 'subscribed');
  await tick();
  await lobby.publish({ type: 'message', text: 'hello', client_msg_id: 'm-0001' });
  await client.publish('chat:lobby', { type: 'message', text: 'caf\u00e9 \u{1F600}' });
  await lobby.history({ limit: 10, since: { offset: 1, epoch: epoch('chat:lobby') }, reverse: true });
  await lobby.history({ limit: 0 });
  await client.history('chat:lobby', { limit: -1 });
  await lobby.presence();
  await lobby.presenceStats();
  await client.rpc('typing', { channel: 'chat:lobby' });
  await client.rpc('llm.ask', { channel: 'chat:lobby', prompt: 'hi', model: 'small' });
  await client.send({ hello: 'server' });
  // A subscription token: subscribe carries it, and the reply's short ttl makes the SDK send
  // sub_refresh.
  const room = client.newSubscription('chat:room#u1,u2', {
    getToken: async () => sign(HS, { sub: 'u1', channel: 'chat:room#u1,u2', exp: FAR_EXP }, SESSION_SECRET),
  });
  room.subscribe();
  await once(room, 'subscribed');
  await tick(1200);
  // The server pings, the SDK answers {}.
  current.deliver('{}');
  await tick();
  // A publication moves the recovery position, then a drain makes the SDK reconnect and
  // recover both the lobby and the server-side personal channel.
  current.deliver(JSON.stringify({ push: { channel: 'chat:lobby', pub: { data: { type: 'message', text: 'x' }, offset: tops.get('chat:lobby') } } }));
  await tick();
  current.serverClose(3001, 'shutdown');
  await once(lobby, 'subscribed');
  await tick();
  room.unsubscribe();
  typing.unsubscribe();
  await tick();
  client.disconnect();
  await tick();
  return frames.slice();
}

// A connection that expires (connect result with ttl 1), so the SDK refreshes its token.
async function refreshFrames(token, fresh) {
  frames.length = 0;
  epochs.clear();
  tops.clear();
  connectTtl = 1;
  const client = new Centrifuge('ws://127.0.0.1:1/connection/websocket', {
    websocket: FakeWebSocket, token, timeout: 2000, getToken: async () => fresh,
  });
  client.connect();
  await once(client, 'connected');
  await tick(1200);
  client.disconnect();
  await tick();
  connectTtl = 0;
  return frames.slice();
}

// ---------------------------------------------------------------- fuzz_command

// A name for a frame from its methods, e.g. "connect+subscribe+subscribe".
function frameName(f) {
  return f.split('\n').map((l) => {
    const o = JSON.parse(l);
    const m = Object.keys(o).filter((k) => k !== 'id');
    return m.length ? m.join('-') : 'pong';
  }).join('+');
}

function commandSeeds(sdk) {
  const t = 'fuzz_command';
  const seen = new Map();
  for (const f of sdk) {
    let name = frameName(f);
    if (seen.has(f)) continue;
    const n = [...seen.values()].filter((v) => v === name || v.startsWith(`${name}.`)).length;
    seen.set(f, n ? `${name}.${n + 1}` : name);
  }
  for (const [f, name] of seen) write(t, `sdk-${name}`, f);
  // Near-valid commands a parser must refuse or take apart carefully.
  const hand = {
    'id-zero-publish': '{"id":0,"publish":{"channel":"chat:x","data":{}}}',
    'id-max': '{"id":4294967295,"presence":{"channel":"chat:x"}}',
    'id-over': '{"id":4294967296,"presence":{"channel":"chat:x"}}',
    'id-negative': '{"id":-1,"presence":{"channel":"chat:x"}}',
    'id-real': '{"id":1.5,"presence":{"channel":"chat:x"}}',
    'id-string': '{"id":"1","presence":{"channel":"chat:x"}}',
    'two-methods': '{"id":1,"publish":{"channel":"chat:x","data":{}},"history":{"channel":"chat:x"}}',
    'params-array': '{"id":1,"subscribe":["chat:x"]}',
    'params-null': '{"id":1,"subscribe":null}',
    'unknown-method': '{"id":9,"map_subscribe":{"channel":"chat:x"}}',
    'ping-with-id': '{"id":3}',
    'not-object': '[{"id":1}]',
    'crlf-lines': '{"id":1,"presence":{"channel":"chat:x"}}\r\n{"id":2,"history":{"channel":"chat:x"}}\r\n',
    'empty-lines': '\n\n{}\n\n',
    'message-full-id': `{"id":5,"publish":{"channel":"chat:x","data":{"type":"message","text":"t","client_msg_id":"${'a'.repeat(64)}"}}}`,
    'message-long-id': `{"id":5,"publish":{"channel":"chat:x","data":{"type":"message","text":"t","client_msg_id":"${'a'.repeat(65)}"}}}`,
    'message-empty-text': '{"id":5,"publish":{"channel":"chat:x","data":{"type":"message","text":""}}}',
    'message-extra-fields': '{"id":5,"publish":{"channel":"chat:x","data":{"type":"message","text":"t","role":"assistant","x":[1]}}}',
    'message-wrong-type': '{"id":5,"publish":{"channel":"chat:x","data":{"type":"llm.delta","text":"t"}}}',
    'message-nul': '{"id":5,"publish":{"channel":"chat:x","data":{"type":"message","text":"a\\u0000b"}}}',
    'message-surrogates': '{"id":5,"publish":{"channel":"chat:x","data":{"type":"message","text":"\\ud83d\\ude00 \\ud800"}}}',
    'message-text-number': '{"id":5,"publish":{"channel":"chat:x","data":{"type":"message","text":42}}}',
    'deep-nesting': `{"id":1,"publish":{"channel":"chat:x","data":${'['.repeat(40)}${']'.repeat(40)}}}`,
  };
  for (const [name, s] of Object.entries(hand)) write(t, `hand-${name}`, s);
  write(t, 'hand-invalid-utf8', Buffer.concat([Buffer.from('{"id":1,"publish":{"channel":"chat:'),
    Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('","data":{}}}')]));
  write(t, 'hand-truncated', sdk[0].slice(0, Math.floor(sdk[0].length / 2)));
}

// ---------------------------------------------------------------- fuzz_session

// Input layout of fuzz_session.c: one flags byte, then frames; a 0x00 byte before a frame sends
// it to client A, 0x01 to client B (the first frame goes to A); 0x02 d advances the clock by
// d*d seconds and runs the timers.
const FLAG_CONNECT_A = 0x01;
const FLAG_CONNECT_B = 0x02;
const FLAG_SAME_USER = 0x04;
const FLAG_SMALL_HISTORY = 0x40;
const FLAG_EXPIRING = 0x80;

function session(flags, steps) {
  const parts = [Buffer.from([flags])];
  steps.forEach(([who, frame], i) => {
    if (who === 'T') {
      parts.push(Buffer.from([2, frame]));
      return;
    }
    if (i > 0 || who === 'B') parts.push(Buffer.from([who === 'B' ? 1 : 0]));
    parts.push(Buffer.from(frame));
  });
  return Buffer.concat(parts);
}

function sessionSeeds(sdk, refresh, tokenU1) {
  const t = 'fuzz_session';
  const A = (f) => ['A', f];
  const B = (f) => ['B', f];
  const T = (d) => ['T', d]; // d*d seconds later
  // The SDK's whole conversation; its connect carries a valid token. After the drain the SDK
  // reconnects on a new socket (client B) and recovers from the position it saw.
  const again = sdk.findIndex((f, i) => i > 0 && f.startsWith('{"connect"'));
  write(t, 'sdk-conversation', session(0, sdk.map((f, i) => (i < again ? A(f) : B(f)))));
  write(t, 'sdk-refresh', session(0, refresh.map(A)));
  // The same commands after a connect the driver prepends.
  const after = sdk.filter((f) => !f.includes('"connect"'));
  write(t, 'prepended-conversation', session(FLAG_CONNECT_A, after.map(A)));
  const sub = '{"subscribe":{"channel":"chat:lobby","join_leave":true,"flag":1},"id":2}';
  const pub = (id, text, mid) => `{"publish":{"channel":"chat:lobby","data":{"type":"message","text":"${text}"${mid ? `,"client_msg_id":"${mid}"` : ''}}},"id":${id}}`;
  // Two users in one room: publications, join/leave and presence cross between them.
  write(t, 'two-clients-room', session(FLAG_CONNECT_A | FLAG_CONNECT_B, [
    A(sub), B(sub), A(pub(3, 'hi', 'm1')), B(pub(3, 'hello', null)),
    A(pub(4, 'hi', 'm1')), B('{"presence":{"channel":"chat:lobby"},"id":4}'),
    A('{"rpc":{"method":"typing","data":{"channel":"chat:lobby"}},"id":5}'),
    B('{"unsubscribe":{"channel":"chat:lobby"},"id":5}'), A('{"presence_stats":{"channel":"chat:lobby"},"id":6}'),
  ]));
  write(t, 'same-user-personal', session(FLAG_CONNECT_A | FLAG_CONNECT_B | FLAG_SAME_USER, [
    A('{"subscribe":{"channel":"personal:#u1"},"id":2}'), B('{"history":{"channel":"personal:#u1","limit":5},"id":2}'),
    A('{"subscribe":{"channel":"chat:dm#u1,u2"},"id":3}'), B(pub(3, 'note', null)),
  ]));
  // Recovery: publish, then subscribe again from a position in the current epoch (chat:lobby is
  // the third channel: e0000003), a stale epoch, a future offset.
  const rsub = (id, offset, ep) => `{"subscribe":{"channel":"chat:lobby","recover":true,"offset":${offset},"epoch":"${ep}","recoverable":true,"positioned":true},"id":${id}}`;
  const unsub = (id) => `{"unsubscribe":{"channel":"chat:lobby"},"id":${id}}`;
  write(t, 'recover-positions', session(FLAG_CONNECT_A | FLAG_CONNECT_B, [
    A(sub), A(pub(3, 'one', null)), A(pub(4, 'two', null)), A(pub(5, 'three', null)),
    B(rsub(2, 1, 'e0000003')),
    B('{"history":{"channel":"chat:lobby","limit":2,"since":{"offset":1,"epoch":"e0000003"},"reverse":true},"id":3}'),
    B(unsub(4)), A(pub(6, 'four', null)), B(rsub(5, 2, 'e0000002')),
    B(unsub(6)), B(rsub(7, 99, 'e0000003')),
  ]));
  // Small history cap: the broker evicts channels while they are used.
  write(t, 'evicting-history', session(FLAG_CONNECT_A | FLAG_SMALL_HISTORY, [
    A(sub), ...[3, 4, 5, 6, 7, 8].map((i) => A(pub(i, 'x'.repeat(400), null))),
    A('{"history":{"channel":"chat:lobby","limit":-1},"id":9}'),
  ]));
  // Everything in one frame, as the SDK batches it: connect, then commands held until it ends.
  write(t, 'batched-connect', session(0, [A([`{"connect":{"token":"${tokenU1}","name":"js"},"id":1}`,
    sub, pub(3, 'x', null), '{"presence":{"channel":"chat:lobby"},"id":4}'].join('\n'))]));
  // Protocol errors: a command before connect, a second connect, a bad token, garbage.
  write(t, 'no-connect-first', session(0, [A(sub)]));
  write(t, 'connect-twice', session(FLAG_CONNECT_A, [A(`{"connect":{"token":"${tokenU1}"},"id":2}`)]));
  write(t, 'connect-bad-token', session(0, [A('{"connect":{"token":"a.b.c"},"id":1}')]));
  write(t, 'garbage-after-connect', session(FLAG_CONNECT_A, [A(sub), A('{"id":3,'), A(pub(4, 'late', null))]));
  write(t, 'errors-and-limits', session(FLAG_CONNECT_A, [
    A('{"subscribe":{"channel":"nons:x"},"id":2}'), A('{"subscribe":{"channel":"personal:#u9"},"id":3}'),
    A(sub), A(sub), A('{"publish":{"channel":"typing:lobby","data":{}},"id":5}'),
    A('{"refresh":{"token":"x"},"id":6}'), A('{"sub_refresh":{"channel":"chat:lobby","token":"x"},"id":7}'),
    A('{"rpc":{"method":"nope"},"id":8}'), A('{"id":9,"frobnicate":{}}'), A('{}'),
  ]));
  // Time: pings and the pong deadline, the connect deadline, token expiry, windows and TTLs.
  write(t, 'time-ping-pong', session(FLAG_CONNECT_A, [A(sub), T(5), A('{}'), T(5), T(4)]));
  write(t, 'time-stale', session(0, [T(4), A(sub)]));
  write(t, 'time-expiring', session(FLAG_CONNECT_A | FLAG_CONNECT_B | FLAG_EXPIRING, [
    A(sub), B(sub), B('{"refresh":{"token":"x"},"id":3}'), T(8), A(pub(3, 'late', null)),
  ]));
  write(t, 'time-rate-limit-dedupe', session(FLAG_CONNECT_A, [
    A(sub), ...[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14].map((i) => A(pub(i, 'spam', null))),
    A(pub(15, 'once', 'm1')), T(1), A(pub(16, 'once', 'm1')), T(11), A(pub(17, 'once', 'm1')),
    A('{"rpc":{"method":"typing","data":{"channel":"chat:lobby"}},"id":18}'),
  ]));
  write(t, 'time-ttls', session(FLAG_CONNECT_A | FLAG_CONNECT_B, [
    A(sub), B(sub), A(pub(3, 'old', null)), T(6), A('{}'), B('{}'),
    B('{"presence_stats":{"channel":"chat:lobby"},"id":3}'),
    T(255), B('{}'), T(255), B('{}'), B('{"history":{"channel":"chat:lobby","limit":-1},"id":4}'),
    B('{"subscribe":{"channel":"chat:other","recover":true,"offset":1,"epoch":"e0000003"},"id":5}'),
  ]));
}

// ---------------------------------------------------------------- main

// The SDK steps wait for events; should a new SDK version never send one, fail instead of hanging.
setTimeout(() => {
  console.error('make-seeds: the SDK conversation did not finish within 30 s');
  process.exit(1);
}, 30_000).unref();
jwtSeeds();
const tokenU1 = sign(HS, { sub: 'u1', exp: FAR_EXP, info: { name: 'Ann' } }, SESSION_SECRET);
const sdk = await sdkFrames(tokenU1);
const fresh = sign(HS, { sub: 'u1', iat: 1700000000, exp: FAR_EXP }, SESSION_SECRET);
const refresh = await refreshFrames(tokenU1, fresh);
commandSeeds([...sdk, ...refresh]);
sessionSeeds(sdk, refresh, tokenU1);
console.log(`seeds written under ${CORPUS} (${sdk.length + refresh.length} SDK frames)`);
