// The dispatcher protecting providers and the budget, against llm-mock: key cooldowns and
// fallback keys, 502 with the earliest return when no key is usable, circuit breakers (opened by
// sustained 5xx, never by 400s, closed by half-open trials), plan priority with no starvation,
// the queue's bounds (503 at once, 504 after waiting), daily quotas (402) and token refunds, and
// no retry once output reached the room.
import assert from 'node:assert/strict';
import {test} from 'node:test';

import {connectClient, startChatd, subscribe, userToken, waitUntil} from './helpers.mjs';
import {
    API_KEY,
    chatctl,
    ask,
    llmState,
    providerEnv,
    startMock,
    waitLlmState,
    watchAnswer
} from './llm-util.mjs';

const RATES = 'free=100/100,plus=100/100,pro=100/100,executive=100/100';

async function node(t, mock, providerOpts = {}, env = {}) {
    return startChatd(t, {
        env : {
            CHAT_API_KEY : API_KEY,
            CHAT_RATE_LIMITS : RATES,
            CHAT_LLM_PROVIDERS : JSON.stringify([ providerEnv(mock, providerOpts) ]),
            ...env,
        },
    });
}

/** A member of room asking once; resolves to {res, w} once the answer (or llm.error) is in. */
async function askAndWait(client, sub, room, prompt) {
    let id = null;
    const w = watchAnswer(sub, () => id);
    const res = await ask(client, room, prompt);
    id = res.request_id;
    w.sync();
    await w.done;
    w.stop();
    return {res, w};
}

const retryAfter = (msg) => Number(/retry_after_ms=(\d+)/.exec(msg)[1]);

test(
    'keys: a 429 cools its key and the next attempt takes another; then fallback keys; then 502 with the earliest return',
    async (t) => {
        const mock = await startMock(t);
        const srv = await node(t, mock, {keys : [ 'k1', 'k2' ], fallbackKeys : [ 'f1' ]});
        const alice = await connectClient(t, srv, {user : 'alice'});
        const {sub} = await subscribe(alice, 'chat:keys');

        await mock.control({key : 'k1', scenario : 'rate_limit', retry_after : 30});
        const a1 = await askAndWait(alice, sub, 'chat:keys', 'one');
        assert.ok(a1.w.final, 'answered through the other key');
        let st = await mock.stats();
        assert.equal(st.keys.k1.statuses['429'], 1);
        assert.equal(st.keys.k2.statuses['200'], 1);
        assert.equal(st.keys.f1, undefined, 'fallback keys untouched while a primary can serve');
        // k1 cools for its retry-after: the next ask goes straight to k2.
        await askAndWait(alice, sub, 'chat:keys', 'two');
        st = await mock.stats();
        assert.equal(st.keys.k1.requests, 1, 'no request on a cooling key');
        assert.equal(st.keys.k2.statuses['200'], 2);
        let state = await llmState(srv);
        const k1 = state.providers[0].keys.find((k) => k.state === 'cooling');
        assert.ok(k1 && k1.cooldown_ms > 25000 && k1.cooldown_ms <= 30000,
                  JSON.stringify(state.providers[0].keys));
        assert.ok(!JSON.stringify(state).includes('"k1"'), 'keys appear only as fingerprints');

        // Every primary cooling: the fallback key serves.
        await mock.control({key : 'k2', scenario : 'rate_limit', retry_after : 20});
        const a3 = await askAndWait(alice, sub, 'chat:keys', 'three');
        assert.ok(a3.w.final);
        st = await mock.stats();
        assert.equal(st.keys.f1.statuses['200'], 1);

        // The fallback cools too, past the request's deadline: the ask fails with 502 in the room,
        // and the next one is refused at once with the earliest return (k2's, about 20 s).
        await mock.control({key : 'f1', scenario : 'rate_limit', retry_after : 45});
        const a4 = await askAndWait(alice, sub, 'chat:keys', 'four');
        assert.ok(a4.w.error, 'llm.error when no key is left');
        assert.equal(a4.w.error.data.code, 502);
        const before = (await mock.stats()).requests;
        const t0 = Date.now();
        await assert.rejects(ask(alice, 'chat:keys', 'five'), (e) => {
            assert.equal(e.code, 502);
            const wait = retryAfter(e.message);
            const k2Back = 20000 - (t0 - a3.doneAt || 0);
            assert.ok(wait > 14000 && wait <= 21000,
                      `retry_after_ms=${wait} (k2 returns in at most 20 s)`);
            return true;
        });
        assert.equal((await mock.stats()).requests, before, 'nothing sent upstream');
        state = await llmState(srv);
        const earliest = Math.min(...state.providers[0].keys.map((k) => k.cooldown_ms));
        assert.ok(Math.abs(earliest - 20000) < 6000, `earliest key back in ${earliest} ms`);
    });

test('a key the provider rejects (401) is disabled until an operator re-enables it', async (t) => {
    const mock = await startMock(t);
    const srv = await node(t, mock, {keys : [ 'bad', 'good' ]});
    const alice = await connectClient(t, srv, {user : 'alice'});
    const {sub} = await subscribe(alice, 'chat:auth');
    await mock.control({key : 'bad', scenario : 'unauthorized'});
    const a = await askAndWait(alice, sub, 'chat:auth', 'hi');
    assert.ok(a.w.final, 'served by the good key');
    for (let i = 0; i < 3; i++)
        await askAndWait(alice, sub, 'chat:auth', `again ${i}`);
    const st = await mock.stats();
    assert.equal(st.keys.bad.requests, 1, 'never used again');
    const state = await llmState(srv);
    const disabled = state.providers[0].keys.filter((k) => k.state === 'disabled');
    assert.equal(disabled.length, 1);
    assert.match(disabled[0].disabled_reason, /auth/);

    // The operator fixes the key at the provider and re-enables it on the node.
    const action = (path, body, init = {}) => fetch(`${srv.adminUrl}${path}`, {
        method : 'POST',
        headers : {'X-API-Key' : API_KEY},
        body : JSON.stringify(body),
        signal : AbortSignal.timeout(5000),
        ...init,
    });
    const fp = disabled[0].fingerprint;
    assert.equal((await action('/api/llm/key/enable', {provider : 'p1', key : fp}, {method : 'GET', body : undefined})).status, 405);
    assert.equal((await action('/api/llm/key/enable', {provider : 'p1', key : fp}, {headers : {}})).status, 401);
    assert.equal((await action('/api/llm/key/enable', {provider : 'p1'})).status, 400);
    assert.equal((await action('/api/llm/key/enable', {provider : 'p1', key : 'k:00000000'})).status, 404);
    assert.equal((await action('/api/llm/key/enable', {provider : 'nope', key : fp})).status, 404);
    assert.equal((await llmState(srv)).providers[0].keys.filter((k) => k.state === 'disabled').length, 1,
                 'refused actions change nothing');
    await mock.control({key : 'bad', scenario : 'ok'});
    const ok = await chatctl(srv, 'llm', 'key-enable', 'p1', fp);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /key enabled on 1 node/);
    assert.ok((await llmState(srv)).providers[0].keys.every((k) => k.state === 'ready'));
    // The other key now fails: the answer comes through the re-enabled one.
    await mock.control({key : 'good', scenario : 'unauthorized'});
    const b = await askAndWait(alice, sub, 'chat:auth', 'after the fix');
    assert.ok(b.w.final, 'answered');
    assert.equal((await mock.stats()).keys.bad.statuses['200'], 1, 'the re-enabled key served');
});

test(
    'breaker: sustained 5xx opens it (no upstream call while open), half-open trials close it after recovery',
    async (t) => {
        const mock = await startMock(t);
        const srv = await node(t, mock, {keys : [ 'k1' ]});
        const alice = await connectClient(t, srv, {user : 'alice'});
        const {sub} = await subscribe(alice, 'chat:br');
        await mock.control({key : '*', scenario : 'server_error'});
        // Each ask makes up to 3 attempts (2 retries); 10 failures in the window open the breaker.
        let opened = false;
        for (let i = 0; i < 6 && !opened; i++) {
            try {
                const a = await askAndWait(alice, sub, 'chat:br', `fail ${i}`);
                assert.ok(a.w.error, 'a failing provider ends in llm.error');
                assert.equal(a.w.error.data.code, 502);
            } catch (e) {
                assert.equal(e.code, 502, e.message);
                opened = true;
            }
            opened = opened || (await llmState(srv)).providers[0].breaker.state === 'open';
        }
        assert.ok(opened, 'the breaker opened');
        const requests = (await mock.stats()).requests;
        assert.ok(requests >= 10 && requests <= 12, `${requests} upstream calls before it opened`);
        await assert.rejects(ask(alice, 'chat:br', 'while open'),
                             (e) => e.code === 502 && retryAfter(e.message) > 0);
        assert.equal((await mock.stats()).requests, requests, 'no upstream call while open');

        // The provider recovers; after the open interval (5 s +-20 %) three trials close it.
        await mock.control({key : '*', scenario : 'ok'});
        // The key's breaker opened with the provider's, each with its own jittered interval.
  await waitLlmState(srv, (s) => s.providers[0].breaker.state !== 'open' &&
    s.providers[0].keys.every((k) => k.breaker !== 'open'), 'half-open', 8000);
        for (let i = 0; i < 3; i++) {
            const a = await askAndWait(alice, sub, 'chat:br', `trial ${i}`);
            assert.ok(a.w.final, 'trial answered');
        }
        const state = await llmState(srv);
        assert.equal(state.providers[0].breaker.state, 'closed');
    });

test('breaker: 400s (the request\'s fault) never open it and are not retried', async (t) => {
    const mock = await startMock(t);
    const srv = await node(t, mock, {keys : [ 'k1' ]});
    const alice = await connectClient(t, srv, {user : 'alice'});
    const {sub} = await subscribe(alice, 'chat:400');
    await mock.control({key : '*', scenario : 'bad_request'});
    for (let i = 0; i < 12; i++) {
        const a = await askAndWait(alice, sub, 'chat:400', `bad ${i}`);
        assert.ok(a.w.error);
    }
    assert.equal((await mock.stats()).requests, 12, 'one attempt each');
    assert.equal((await llmState(srv)).providers[0].breaker.state, 'closed');
});

test('an error after the first token: the partial answer is stored as interrupted, never retried',
     async (t) => {
         const mock = await startMock(t);
         const srv = await node(t, mock);
         const alice = await connectClient(t, srv, {user : 'alice'});
         const {sub} = await subscribe(alice, 'chat:int');
         await mock.control({key : '*', scenario : 'error_event', after : 3, tokens : 10});
         const a = await askAndWait(alice, sub, 'chat:int', 'go');
         assert.ok(a.w.final);
         assert.equal(a.w.final.data.interrupted, true);
         assert.ok(a.w.final.data.text.length > 0);
         assert.equal(a.w.final.data.text, a.w.deltas.map((d) => d.data.text).join(''));
         assert.equal((await mock.stats()).requests, 1, 'no retry after output');
     });

test(
    'plan priority: executive and pro asks finish before free asks queued earlier; free still finish',
    async (t) => {
        const mock = await startMock(t);
        await mock.control({key : '*', scenario : 'ok', tokens : 10, tokens_per_s : 40});
        const srv = await node(t, mock, {}, {CHAT_LLM_CONCURRENCY : 1});
        const room = 'chat:prio';
        const users = [
            [ 'f0', 'free' ], [ 'f1', 'free' ], [ 'f2', 'free' ], [ 'p1', 'pro' ],
            [ 'x1', 'executive' ]
        ];
        const clients = {};
        for (const [u, plan] of users) {
            clients[u] = await connectClient(t, srv, {token : userToken(u, {plan})});
            await subscribe(clients[u], room);
        }
        const watcher = await connectClient(t, srv, {user : 'watcher'});
        const {sub} = await subscribe(watcher, room);
        const order = [];
        const ids = {};
        sub.on('publication', (ctx) => {
            if (ctx.data.type === 'message' && ctx.data.role === 'assistant')
                order.push(ids[ctx.data.request_id]);
        });
        // f0 takes the only slot; then f1, f2, p1, x1 queue in that order.
        for (const [u] of users) {
            const r = await ask(clients[u], room, `from ${u}`);
            ids[r.request_id] = u;
        }
        await waitUntil(() => order.length === users.length,
                        {timeoutMs : 15000, what : `all answered: ${order}`});
        assert.deepEqual(order, [ 'f0', 'x1', 'p1', 'f1', 'f2' ]);
    });

test('queue bounds: a full queue answers 503 at once; a request that waits too long gets 504',
     async (t) => {
         const mock = await startMock(t);
         await mock.control({key : '*', scenario : 'ok', tokens : 100, tokens_per_s : 20});
         const srv =
             await node(t, mock, {}, {CHAT_LLM_CONCURRENCY : 1, CHAT_LLM_QUEUE : 'free=1/800'});
         const alice = await connectClient(t, srv, {user : 'alice'});
         const {sub} = await subscribe(alice, 'chat:q');
         await ask(alice, 'chat:q', 'holds the slot');
         let queuedId = null;
         const w = watchAnswer(sub, () => queuedId);
         const queued = await ask(alice, 'chat:q', 'waits');
         queuedId = queued.request_id;
         assert.equal(queued.queue_position, 1);
         const t0 = Date.now();
         await assert.rejects(ask(alice, 'chat:q', 'no room'),
                              (e) => e.code === 503 && retryAfter(e.message) > 0);
         assert.ok(Date.now() - t0 < 500, 'refused at once');
         await w.done;
         assert.ok(w.error, 'the waiting ask ended with llm.error');
         assert.equal(w.error.data.code, 504);
         assert.ok(retryAfter(w.error.data.message) > 0);
     });

test(
    'quotas: the daily message quota answers 402 with the time to reset; reserved tokens come back when the provider fails',
    async (t) => {
        const mock = await startMock(t);
        const srv = await node(t, mock, {}, {CHAT_LLM_QUOTAS : 'free=2/0,plus=0/3000'});
        const alice = await connectClient(t, srv, {user : 'alice'});
        const {sub} = await subscribe(alice, 'chat:quota');
        await askAndWait(alice, sub, 'chat:quota', 'one');
        await askAndWait(alice, sub, 'chat:quota', 'two');
        await assert.rejects(ask(alice, 'chat:quota', 'three'), (e) => {
            assert.equal(e.code, 402);
            assert.match(e.message, /plan=free/);
            const midnight = new Date();
            midnight.setUTCHours(24, 0, 0, 0);
            const wait = retryAfter(e.message);
            assert.ok(Math.abs(wait - (midnight - Date.now())) < 5000, `retry_after_ms=${wait}`);
            return true;
        });

        // plus: 3,000 tokens a day; one ask reserves prompt + context budget (2,000) + max_tokens
        // (512).
        const bob = await connectClient(t, srv, {token : userToken('bob', {plan : 'plus'})});
        const {sub : sb} = await subscribe(bob, 'chat:quota');
        await mock.control({key : '*', scenario : 'bad_request'});
        const failed = await askAndWait(bob, sb, 'chat:quota', 'fails');
        assert.ok(failed.w.error);
        // Had the reservation not come back, this one would be refused (2 x 2,513 > 3,000).
        await mock.control({key : '*', scenario : 'ok', tokens : 8});
        const ok = await askAndWait(bob, sb, 'chat:quota', 'works');
        assert.ok(ok.w.final);
        // Settled at the reported usage (a few tokens), so the budget allows another one.
        const again = await askAndWait(bob, sb, 'chat:quota', 'and again');
        assert.ok(again.w.final);
    });
