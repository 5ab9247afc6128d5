// User ids and the owner part of user-limited channels (PROTOCOL.md section 3: a channel ending in
// `#u1,u2` may be subscribed by those users only). The owner list is matched whole: a user id
// that would make a channel name ambiguous (`#`, `,` or a control character in it) is refused at
// connect with close 3500 (an unusable token, like any other invalid token), and a channel
// whose owner part itself contains `#` belongs to nobody.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatd, rawConnect, rawConnectAs, userToken } from './helpers.mjs';

async function connectOutcome(t, srv, user) {
  const c = await rawConnect(t, srv);
  const reply = await c.command('connect', { token: userToken(user) }).catch((e) => ({ failed: e.message }));
  if (reply.connect) {
    return { connected: true, client: c, reply };
  }
  const close = await c.waitClose(5000).catch((e) => ({ code: `none (${e.message})` }));
  return { connected: false, reply, close };
}

test('a user id with # cannot connect, and its personal channel is not readable by the user id after the last #', async (t) => {
  const srv = await startChatd(t);
  const owner = await connectOutcome(t, srv, 'alice#1234');

  // Whoever the server API or another node may have addressed before: user 1234 reads none of
  // the channels whose owner part merely ends in "1234".
  const mallory = await rawConnectAs(t, srv, '1234');
  for (const channel of ['personal:#alice#1234', 'chat:dm#alice#1234', 'chat:dm#x#1234,bob']) {
    const r = await mallory.command('subscribe', { channel });
    assert.equal(r.error && r.error.code, 103, `${channel}: ${JSON.stringify(r)}`);
    const h = await mallory.command('history', { channel, limit: 10 });
    assert.ok(h.error, `history of ${channel} answered: ${JSON.stringify(h)}`);
  }
  // The exact owner still gets in.
  const dm = await mallory.command('subscribe', { channel: 'chat:dm#bob,1234' });
  assert.ok(dm.subscribe, JSON.stringify(dm));

  assert.equal(owner.connected, false, `user alice#1234 was accepted: ${JSON.stringify(owner.reply)}`);
  assert.equal(owner.close.code, 3500, `close of alice#1234: ${JSON.stringify(owner.close)}`);
  assert.match(owner.close.reason, /user id/, `the reason says what is wrong: ${JSON.stringify(owner.close)}`);
});

test('user ids with a comma or control characters are refused at connect with 3500', async (t) => {
  const srv = await startChatd(t);
  for (const user of ['bob,carol', 'eve\nlevel=error', 'tab\tuser', 'del\u007f', 'c1\u0085']) {
    const o = await connectOutcome(t, srv, user);
    assert.equal(o.connected, false, `${JSON.stringify(user)} was accepted`);
    assert.equal(o.close.code, 3500, `${JSON.stringify(user)}: ${JSON.stringify(o.close)}`);
  }
  // Ordinary ids, including non-ASCII letters, connect and get their personal channel.
  for (const user of ['bob', 'zoë', 'user.name+tag@example.com', 'a:b']) {
    const o = await connectOutcome(t, srv, user);
    assert.equal(o.connected, true, `${JSON.stringify(user)} refused: ${JSON.stringify(o.close)}`);
    assert.ok(o.reply.connect.subs && o.reply.connect.subs[`personal:#${user}`], JSON.stringify(o.reply));
  }
});
