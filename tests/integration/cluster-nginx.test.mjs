// The local cluster of scripts/cluster (redis-server, three chatd nodes, nginx sticky by the
// chat_node cookie) on free loopback ports, with CHATD_BIN (release or ASan build), and a node
// killed with SIGKILL under steady publishing: its clients reconnect through nginx to the other
// nodes, recover, and every acknowledged publication reaches every subscriber exactly once, in
// offset order.
//
// The SDK clients behave as browsers behind one load balancer: each has its own source address
// (127.0.0.x, so nginx's client-address fallback spreads them) and a cookie jar (the chat_node
// cookie of the upgrade response is sent again on every reconnect).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NODES, startLocalCluster } from './cluster-util.mjs';
import { CHATD_BIN, Centrifuge, WebSocket, userToken, Collector, waitEvent, waitUntil, withTimeout, delay, scrapeMetrics, metricValue, chatMessage } from './helpers.mjs';


/**
 * A centrifuge SDK client that connects through nginx from its own source address and keeps the
 * chat_node cookie like a browser: jar.node is the node that answered the last upgrade.
 */
function browserClient(t, cluster, user, localAddress) {
  const jar = { cookie: null, node: null, nodes: [] };
  class BrowserLikeWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { localAddress, headers: jar.cookie ? { Cookie: jar.cookie } : {} });
      this.on('upgrade', (res) => {
        for (const c of [].concat(res.headers['set-cookie'] || [])) {
          const m = /^chat_node=([^;]*)/.exec(c);
          if (m) {
            jar.cookie = `chat_node=${m[1]}`;
            jar.node = m[1];
            jar.nodes.push(m[1]);
          }
        }
      });
    }
  }
  const client = new Centrifuge(cluster.wsUrl, {
    websocket: BrowserLikeWebSocket,
    token: userToken(user, {}, { secret: cluster.secret }),
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: 5000,
  });
  client.user = user;
  client.jar = jar;
  client.connectingAt = []; // when the SDK lost (or started) its connection
  client.on('connecting', () => client.connectingAt.push(Date.now()));
  t.after(() => client.disconnect());
  return client;
}

async function connectThrough(t, cluster, user, localAddress) {
  const client = browserClient(t, cluster, user, localAddress);
  const connected = waitEvent(client, 'connected', { timeoutMs: 5000, what: `connect of ${user} from ${localAddress}` });
  client.connect();
  await connected;
  assert.ok(NODES.includes(client.jar.node), `${user}: no chat_node cookie on the upgrade response (got ${client.jar.cookie})`);
  return client;
}

/** Subscribes with recovery; every 'subscribed' context is kept in sub.subscribedEvents. */
async function subscribeRecoverable(client, channel) {
  const sub = client.newSubscription(channel, { recoverable: true, positioned: true });
  sub.subscribedEvents = [];
  sub.on('subscribed', (ctx) => sub.subscribedEvents.push({ ctx, node: client.jar.node, at: Date.now() }));
  const subscribed = waitEvent(sub, 'subscribed', { timeoutMs: 5000, what: `subscribe of ${client.user}` });
  sub.subscribe();
  await subscribed;
  return sub;
}

test('local cluster behind nginx: a node killed with -9 under publishing loses no acknowledged publication', { timeout: 90_000 }, async (t) => {
  const cluster = await startLocalCluster(t);
  const channel = 'chat:failover';

  // Stickiness by the fallback (client address) and by the cookie, by hand through nginx.
  const first = await fetch(`${cluster.httpUrl}/healthz`);
  const cookie = /^chat_node=([^;]*)/.exec(first.headers.get('set-cookie') || '');
  assert.ok(cookie && NODES.includes(cookie[1]), `no chat_node cookie through nginx: ${first.headers.get('set-cookie')}`);
  for (const id of NODES) {
    const res = await fetch(`${cluster.httpUrl}/healthz`, { headers: { Cookie: `chat_node=${id}` } });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('set-cookie'), new RegExp(`^chat_node=${id};`), `cookie ${id} not honoured`);
  }
  const demo = await fetch(`${cluster.httpUrl}/`);
  assert.equal(demo.status, 200);
  assert.match(await demo.text(), /data-testid="join-form"/);
  // The web demo signs in by name through whichever node answers (CHAT_DEMO_TOKENS, one secret).
  const signin = await fetch(`${cluster.httpUrl}/demo/token?user=viewer`);
  assert.equal(signin.status, 200);
  assert.equal((await signin.json()).user, 'viewer');

  // Writer A first; the node it lands on is the one to kill (so its publishes fail and are
  // retried). Writer B on another node keeps publishing while A's node is gone.
  const writerA = await connectThrough(t, cluster, 'writerA', '127.0.0.2');
  const victim = writerA.jar.node;
  let writerB = null;
  for (let k = 0; k < 30 && !writerB; k++) {
    const c = await connectThrough(t, cluster, `writerB${k}`, `127.0.1.${k + 1}`);
    if (c.jar.node !== victim) {
      writerB = c;
    } else {
      c.disconnect();
    }
  }
  assert.ok(writerB, `no source address hashed to a node other than ${victim}`);

  // Subscribers from their own addresses until they sit on at least two nodes, the victim among
  // them with two or more, and at least six in all.
  const readers = [];
  const perNode = () => NODES.map((id) => readers.filter((r) => r.client.jar.node === id).length);
  const spreadOk = () => readers.length >= 6 && perNode().filter((n) => n > 0).length >= 2 &&
    readers.filter((r) => r.client.jar.node === victim).length >= 2;
  for (let k = 0; k < 40 && !spreadOk(); k++) {
    const client = await connectThrough(t, cluster, `reader${k}`, `127.0.0.${10 + k}`);
    const sub = await subscribeRecoverable(client, channel);
    readers.push({ client, sub, got: new Collector(sub, 'publication'), onVictim: client.jar.node === victim });
  }
  assert.ok(spreadOk(), `subscribers did not spread: ${JSON.stringify(perNode())} (victim ${victim})`);

  // The cookie names the node that holds the socket: the nodes' own connection gauges agree.
  const expected = NODES.map((id) => readers.filter((r) => r.client.jar.node === id).length +
    [writerA, writerB].filter((w) => w.jar.node === id).length);
  let gauges;
  await waitUntil(async () => {
    gauges = [];
    for (const n of cluster.nodes) {
      gauges.push(metricValue(await scrapeMetrics(n), 'chat_connections'));
    }
    return gauges.every((g, i) => g === expected[i]);
  }, { timeoutMs: 5000, what: `chat_connections per node ${JSON.stringify(gauges)} to match the chat_node cookies ${JSON.stringify(expected)}` });

  const writers = [
    { name: 'A', client: writerA, sub: await subscribeRecoverable(writerA, channel) },
    { name: 'B', client: writerB, sub: await subscribeRecoverable(writerB, channel) },
  ];

  // Steady publishing: each writer awaits each publish; a failed one is retried (new text,
  // after the SDK has reconnected and resubscribed); only acknowledged texts are required.
  const acked = []; // texts, in acknowledgement order
  const ackTimes = []; // {sentAt, ackedAt} of each acknowledged publication
  const failedAttempts = [];
  let stopping = false;
  const PACE_MS = 15; // a publishing rate, not a wait for an event
  const loops = writers.map(async (w) => {
    w.acked = 0;
    for (let i = 0; !stopping && i < 5000; i++) {
      let ok = false;
      for (let attempt = 0; !ok && attempt < 10; attempt++) {
        const text = `${w.name}:${i}:${attempt}`;
        try {
          const sentAt = Date.now();
          await w.sub.publish(chatMessage(text));
          ok = true;
          w.acked++;
          acked.push(text);
          ackTimes.push({ sentAt, ackedAt: Date.now() });
        } catch (e) {
          failedAttempts.push({ text, error: e });
        }
      }
      assert.ok(ok, `writer ${w.name}: publication ${i} failed 10 times: ${JSON.stringify(failedAttempts.slice(-3))}`);
      await delay(PACE_MS);
    }
  });
  const loopsDone = Promise.all(loops);
  loopsDone.catch(() => {});
  t.after(() => {
    stopping = true;
  });
  const failFast = (p) => Promise.race([p, loopsDone.then(() => { throw new Error('writers stopped early'); })]);

  await failFast(waitUntil(() => writers.every((w) => w.acked >= 30), { timeoutMs: 10_000, what: '30 acknowledged publications per writer' }));

  // kill -9 the victim node, by its PID in the state folder.
  const moved = readers.filter((r) => r.onVictim).concat([{ client: writerA, sub: writers[0].sub }]);
  const ackedBeforeKill = acked.length;
  process.kill(cluster.pid(victim), 'SIGKILL');
  cluster.nodes.find((n) => n.id === victim).killed = true;

  // Its clients come back through nginx on the other nodes (the cookie's node is down: nginx
  // takes a backup, which sets its own cookie) and resubscribe with recovery.
  await failFast(waitUntil(() => moved.every((r) => r.client.jar.node !== victim && r.sub.state === 'subscribed' &&
      r.sub.subscribedEvents.length >= 2), { timeoutMs: 15_000, what: `the clients of ${victim} to resubscribe elsewhere` }));
  const ackedAtRecovery = acked.length;
  await failFast(waitUntil(() => acked.length >= ackedAtRecovery + 60, { timeoutMs: 10_000, what: '60 more acknowledged publications' }));
  stopping = true;
  await withTimeout(loopsDone, 15_000, 'the writers to stop');
  assert.ok(acked.length > ackedBeforeKill, 'nothing was acknowledged after the kill');

  // Every subscriber has every acknowledged publication: exactly once, in offset order.
  const ackedSet = new Set(acked);
  for (const r of readers) {
    const has = () => {
      const texts = new Set(r.got.items.map((p) => p.data.text));
      return acked.every((x) => texts.has(x));
    };
    await waitUntil(has, { timeoutMs: 15_000, what: `${r.client.user} to have all ${acked.length} acknowledged publications` });
    const offsets = r.got.items.map((p) => p.offset);
    assert.equal(offsets[0], 1, `${r.client.user}: first offset`);
    assert.deepEqual(offsets, offsets.map((_, i) => i + 1), `${r.client.user}: offsets not consecutive (lost, doubled or reordered)`);
    const texts = r.got.items.map((p) => p.data.text);
    assert.equal(new Set(texts).size, texts.length, `${r.client.user}: a publication arrived twice`);
    const mine = texts.filter((x) => ackedSet.has(x));
    assert.equal(mine.length, acked.length);
    // Each writer's acknowledged publications in the order it published them.
    for (const w of ['A', 'B']) {
      const seq = mine.filter((x) => x.startsWith(`${w}:`)).map((x) => Number(x.split(':')[1]));
      assert.deepEqual(seq, [...seq].sort((a, b) => a - b), `${r.client.user}: writer ${w}'s publications out of order`);
    }
  }

  // The moved subscribers recovered on a live node, through the node's new cookie, and what was
  // published while they were away (sent after they lost the connection, acknowledged before
  // they were back) came to them by that recovery.
  const missedWhileAway = [];
  for (const r of moved) {
    const last = r.sub.subscribedEvents[r.sub.subscribedEvents.length - 1];
    assert.notEqual(last.node, victim);
    assert.ok(NODES.includes(last.node));
    assert.equal(last.ctx.wasRecovering, true, `${r.client.user}: resubscribe was not a recovery`);
    assert.equal(last.ctx.recovered, true, `${r.client.user}: not recovered`);
    const lostAt = r.client.connectingAt[r.client.connectingAt.length - 1];
    const n = ackTimes.filter((a) => a.sentAt > lostAt && a.ackedAt < last.at).length;
    missedWhileAway.push(n);
    assert.ok(n > 0, `${r.client.user}: nothing was published while it was away (${last.at - lostAt} ms)`);
  }
  // The others never moved.
  for (const r of readers.filter((x) => !x.onVictim)) {
    assert.equal(r.sub.subscribedEvents.length, 1, `${r.client.user} on a live node resubscribed`);
    assert.deepEqual(r.client.jar.nodes.length, 1);
  }
  t.diagnostic(`victim ${victim}; connections per node before the kill ${JSON.stringify(expected)}; ` +
    `acknowledged ${acked.length} (${ackedBeforeKill} before the kill); failed attempts ${failedAttempts.length}; ` +
    `moved to ${JSON.stringify(moved.map((r) => r.client.jar.node))}; ` +
    `published while each was away ${JSON.stringify(missedWhileAway)}`);
});
