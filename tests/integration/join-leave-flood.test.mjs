// Join/leave floods: one connection that sends frames of subscribe+unsubscribe pairs on a room
// must not turn into thousands of join/leave pushes for every member of the room.
// - subscribe and unsubscribe count against the connection's command rate limit
//   (CHAT_COMMAND_RATE): past it they are refused with error 111 (temporary), and a client that
//   keeps going is closed with 3013;
// - a leave followed by a join of the same client in the same channel within a short window is
//   not sent at all (the leave waits that long), so even an unlimited flood gives each member a
//   bounded number of pushes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, rawConnectAs, waitUntil } from './helpers.mjs';

const ROOM = 'chat:flood';
const MEMBERS = 20;
const PAIRS_PER_FRAME = 300;
const FRAMES = 3;

async function members(t, srv) {
  const list = [];
  for (let i = 0; i < MEMBERS; i++) {
    const m = await rawConnectAs(t, srv, `member${i}`);
    await m.call('subscribe', { channel: ROOM, join_leave: true });
    list.push(m);
  }
  return list;
}

/** Sends FRAMES frames of PAIRS_PER_FRAME subscribe+unsubscribe pairs, each once the previous
 * one is answered (or the socket closed). Returns every reply. */
async function flood(attacker) {
  const replies = [];
  attacker._listeners.add((msg) => {
    if (msg.id) {
      replies.push(msg);
    }
  });
  let id = 1000;
  for (let f = 0; f < FRAMES && !attacker.closeInfo; f++) {
    const lines = [];
    for (let i = 0; i < PAIRS_PER_FRAME; i++) {
      lines.push(JSON.stringify({ id: ++id, subscribe: { channel: ROOM, join_leave: true } }));
      lines.push(JSON.stringify({ id: ++id, unsubscribe: { channel: ROOM } }));
    }
    attacker.sendRaw(lines.join('\n'));
    const want = replies.length + lines.length;
    await waitUntil(() => replies.length >= want || attacker.closeInfo, { timeoutMs: 20_000, what: `replies to flood frame ${f}` });
  }
  return replies;
}

/** Join and leave pushes of user in ROOM that m received. */
function joinLeaves(m, user) {
  return m.pushes.filter((p) => p.channel === ROOM && (p.join || p.leave) && (p.join || p.leave).info.user === user);
}

/** Waits until every member saw a leave of the attacker (its last state is unsubscribed or
 * gone), then until every member got a marker publication sent after it: every push of the
 * flood is in by then. */
async function settle(list, publisher, attackerClient) {
  for (const m of list) {
    await m.waitPush((p) => p.channel === ROOM && p.leave && p.leave.info.client === attackerClient,
      { timeoutMs: 10_000, what: 'the leave of the flooding client' });
  }
  const marker = `marker-${Date.now()}`;
  await publisher.call('publish', { channel: ROOM, data: { type: 'message', text: marker } });
  for (const m of list) {
    await m.waitPush((p) => p.channel === ROOM && p.pub && p.pub.data.text === marker, { timeoutMs: 10_000, what: 'the marker publication' });
  }
}

test('a subscribe/unsubscribe flood with the default limits: 111 temporary, then 3013, and each member gets at most 4 join/leave pushes', { timeout: 60_000 }, async (t) => {
  const srv = await startChatd(t);
  const list = await members(t, srv);
  const attacker = await rawConnectAs(t, srv, 'flooder');
  const replies = await flood(attacker);

  const limited = replies.filter((r) => r.error && r.error.code === 111);
  assert.ok(limited.length > 0, `no command was refused with 111 (${replies.length} replies)`);
  assert.ok(limited.every((r) => r.error.temporary === true), JSON.stringify(limited[0]));
  const close = await attacker.waitClose(10_000);
  assert.equal(close.code, 3013, `the flooding client is closed with 3013: ${JSON.stringify(close)}`);

  await settle(list, list[0], attacker.connectResult.client);
  for (const m of list) {
    const got = joinLeaves(m, 'flooder');
    assert.ok(got.length <= 4, `a member got ${got.length} join/leave pushes of the flooding user`);
  }
});

test('an unlimited subscribe/unsubscribe flood still gives each member a bounded number of join/leave pushes (a leave and a join within the window coalesce)', { timeout: 60_000 }, async (t) => {
  const srv = await startChatd(t, { env: { CHAT_COMMAND_RATE: '1000000/1000000' } });
  const list = await members(t, srv);
  const attacker = await rawConnectAs(t, srv, 'flooder');
  const replies = await flood(attacker);
  assert.equal(replies.length, FRAMES * PAIRS_PER_FRAME * 2, 'every command answered');
  assert.ok(replies.every((r) => !r.error), `errors: ${JSON.stringify(replies.find((r) => r.error))}`);
  assert.equal(attacker.closeInfo, null, 'the client stays connected');

  await settle(list, list[0], attacker.connectResult.client);
  for (const m of list) {
    const got = joinLeaves(m, 'flooder');
    assert.ok(got.length <= 4, `a member got ${got.length} join/leave pushes of the flooding user`);
    // What members see still ends in the truth: the last push says the client left.
    assert.ok(got.length >= 1 && got.at(-1).leave, JSON.stringify(got.at(-1)));
  }
});

test('ordinary joins and leaves still arrive: subscribe, unsubscribe, subscribe again after the leave', async (t) => {
  const srv = await startChatd(t);
  const watcher = await rawConnectAs(t, srv, 'watcher');
  await watcher.call('subscribe', { channel: ROOM, join_leave: true });
  const bob = await rawConnectAs(t, srv, 'bob');
  const bobClient = bob.connectResult.client;
  const isBob = (kind) => (p) => p.channel === ROOM && p[kind] && p[kind].info.client === bobClient;

  await bob.call('subscribe', { channel: ROOM });
  await watcher.waitPush(isBob('join'), { what: 'join of bob' });
  await bob.call('unsubscribe', { channel: ROOM });
  await watcher.waitPush(isBob('leave'), { timeoutMs: 5000, what: 'leave of bob' });
  // A new join after the leave went out is a new join.
  watcher.pushes.length = 0;
  await bob.call('subscribe', { channel: ROOM });
  await watcher.waitPush(isBob('join'), { what: 'second join of bob' });
  // A disconnect sends the leave at once.
  bob.close();
  await watcher.waitPush(isBob('leave'), { timeoutMs: 5000, what: 'leave of bob after his disconnect' });
});
