// History: limit, forward paging with since, reverse, stale epoch (112).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, connectClient, subscribe, chatMessage, rawConnectAs } from './helpers.mjs';

const N = 25;
const texts = (h) => h.publications.map((p) => p.data.text);
const offsets = (h) => h.publications.map((p) => p.offset);
const seq = (from, to, step = 1) => {
  const out = [];
  for (let i = from; step > 0 ? i <= to : i >= to; i += step) {
    out.push(i);
  }
  return out;
};

async function setup(t) {
  const srv = await startChatd(t, { env: { CHAT_RATE_LIMITS: 'free=1000/1000' } });
  const alice = await connectClient(t, srv, { user: 'alice' });
  const { sub } = await subscribe(alice, 'chat:history');
  for (let i = 1; i <= N; i++) {
    await sub.publish(chatMessage(`m${i}`));
  }
  return { srv, alice, sub };
}

test('history: position only without limit; limit returns the oldest first', async (t) => {
  const { sub } = await setup(t);
  const top = await sub.history();
  assert.equal(top.publications.length, 0, 'no publications without a limit');
  assert.equal(top.offset, N);
  assert.equal(typeof top.epoch, 'string');
  assert.ok(top.epoch.length > 0);

  const first = await sub.history({ limit: 10 });
  assert.deepEqual(offsets(first), seq(1, 10));
  assert.deepEqual(texts(first), seq(1, 10).map((i) => `m${i}`));
  assert.equal(first.offset, N);
  assert.equal(first.epoch, top.epoch);
  assert.ok(first.publications.every((p) => p.info && p.info.user === 'alice'), 'history keeps info');
});

test('history: forward paging with since, page by page', async (t) => {
  const { sub } = await setup(t);
  const top = await sub.history();
  const seen = [];
  let since = { offset: 0, epoch: top.epoch };
  for (let page = 0; page < 10; page++) {
    const h = await sub.history({ limit: 10, since });
    assert.equal(h.epoch, top.epoch);
    if (h.publications.length === 0) {
      break;
    }
    assert.ok(h.publications.length <= 10);
    seen.push(...offsets(h));
    since = { offset: h.publications[h.publications.length - 1].offset, epoch: h.epoch };
  }
  assert.deepEqual(seen, seq(1, N), 'pages cover every offset once, in order');

  const middle = await sub.history({ limit: 5, since: { offset: 12, epoch: top.epoch } });
  assert.deepEqual(offsets(middle), seq(13, 17));
});

test('history: reverse gives the newest first; reverse with since pages backwards', async (t) => {
  const { sub } = await setup(t);
  const top = await sub.history();
  const last = await sub.history({ limit: 5, reverse: true });
  assert.deepEqual(offsets(last), seq(N, N - 4, -1));
  assert.deepEqual(texts(last), seq(N, N - 4, -1).map((i) => `m${i}`));

  const before = await sub.history({ limit: 5, reverse: true, since: { offset: N - 4, epoch: top.epoch } });
  assert.deepEqual(offsets(before), seq(N - 5, N - 9, -1));

  const all = await sub.history({ limit: 1000, reverse: true });
  assert.deepEqual(offsets(all), seq(N, 1, -1));
});

test('history: a stale epoch in since is error 112', async (t) => {
  const { sub } = await setup(t);
  await assert.rejects(sub.history({ limit: 10, since: { offset: 3, epoch: 'not-the-epoch' } }), (e) => {
    assert.equal(e.code, 112, JSON.stringify(e));
    return true;
  });
});

test('history: an empty channel has offset 0 and no publications; raw history reply fields', async (t) => {
  const { srv } = await setup(t);
  const bob = await connectClient(t, srv, { user: 'bob' });
  const { sub: emptySub } = await subscribe(bob, 'chat:nothing-here');
  const empty = await emptySub.history({ limit: 10 });
  assert.equal(empty.publications.length, 0);
  assert.equal(empty.offset, 0);

  const raw = await rawConnectAs(t, srv, 'carol');
  await raw.call('subscribe', { channel: 'chat:history' });
  const r = await raw.call('history', { channel: 'chat:history', limit: 3, reverse: true });
  assert.deepEqual(r.publications.map((p) => p.offset), [N, N - 1, N - 2]);
  assert.equal(r.offset, N);
});
