// Fixtures of the assistant tests: llm-mock (the provider stand-in) on a free loopback port,
// stopped by PID after the test, and helpers to ask and to watch an answer arrive in a room.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runChatctl, waitUntil } from './helpers.mjs';

/** chatctl against srv's admin listener with the tests' API key: {code, stdout, stderr}. */
export function chatctl(srv, ...args) {
  return runChatctl(args, { CHAT_ADMIN_LISTEN: srv.adminAddr, CHAT_API_KEY: API_KEY });
}

export const LLM_MOCK_BIN = process.env.LLM_MOCK_BIN || fileURLToPath(new URL('../../build/bin/llm-mock', import.meta.url));

/** Starts llm-mock. Returns {base, pid, exited, stop(), control(obj), stats(), resetStats()}. */
export async function startMock(t) {
  const child = spawn(LLM_MOCK_BIN, ['--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const line = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`llm-mock not ready in 5 s: ${stderr}`)), 5000);
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) { clearTimeout(timer); resolve(out.slice(0, nl)); }
    });
    exited.then((r) => { clearTimeout(timer); reject(new Error(`llm-mock exited ${JSON.stringify(r)}: ${stderr}`)); });
  });
  const m = /^llm-mock listening on 127\.0\.0\.1:(\d+)$/.exec(line);
  if (!m) throw new Error(`llm-mock ready line: ${line}`);
  const base = `http://127.0.0.1:${m[1]}`;
  const mock = {
    base,
    pid: child.pid,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGTERM');
      const timer = setTimeout(() => process.kill(child.pid, 'SIGKILL'), 5000);
      const r = await exited;
      clearTimeout(timer);
      return r;
    },
    async control(body) {
      const res = await fetch(`${base}/control`, { method: 'POST', body: JSON.stringify(body), signal: AbortSignal.timeout(5000) });
      if (res.status !== 200) throw new Error(`llm-mock /control ${res.status}: ${await res.text()}`);
    },
    async stats() {
      const res = await fetch(`${base}/stats`, { signal: AbortSignal.timeout(5000) });
      return res.json();
    },
    async resetStats() {
      await fetch(`${base}/stats/reset`, { method: 'POST', signal: AbortSignal.timeout(5000) });
    },
  };
  if (t) t.after(() => mock.stop());
  return mock;
}

/** CHAT_LLM_PROVIDERS for one provider of `type` on the mock. */
export function providerEnv(mock, { type = 'anthropic', name = 'p1', keys = ['k1'], fallbackKeys, model, extra = {} } = {}) {
  const p = {
    name,
    type,
    base_url: type === 'anthropic' ? mock.base : `${mock.base}/v1`,
    model: model || (type === 'anthropic' ? 'claude-test' : 'gpt-test'),
    keys,
    ...(fallbackKeys ? { fallback_keys: fallbackKeys } : {}),
    ...extra,
  };
  return p;
}

/** Asks the assistant in channel; resolves to the RPC result ({request_id, queue_position}). */
export async function ask(client, channel, prompt, extra = {}) {
  const res = await client.rpc('llm.ask', { channel, prompt, ...extra });
  return res.data;
}

/**
 * Watches one answer in a room subscription: llm.start, llm.delta in order, then the stored
 * message or llm.error. Returns {start, deltas, final, error, done} where done resolves when the
 * final message or error arrived.
 */
export function watchAnswer(sub, requestId) {
  const w = { start: null, deltas: [], final: null, error: null, all: [] };
  let resolve;
  w.done = new Promise((r) => { resolve = r; });
  // Publications that came before the ask's reply named the request (another member's socket
  // may carry llm.start before the asker's reply is read) wait here until the id is known.
  const early = [];
  const take = (ctx) => {
    const d = ctx.data;
    if (!d || d.request_id !== requestId()) return;
    w.all.push(ctx);
    if (d.type === 'llm.start') w.start = ctx;
    else if (d.type === 'llm.delta') w.deltas.push(ctx);
    else if (d.type === 'message') { w.final = ctx; resolve(w); }
    else if (d.type === 'llm.error') { w.error = ctx; resolve(w); }
  };
  w.sync = () => {
    if (requestId() == null) return;
    while (early.length) take(early.shift());
  };
  const handler = (ctx) => {
    early.push(ctx);
    w.sync();
  };
  sub.on('publication', handler);
  w.stop = () => sub.off('publication', handler);
  return w;
}

/** Waits until /api/llm on the node's admin listener satisfies fn. */
export const API_KEY = 'llm-test-key';

export async function llmState(srv) {
  const res = await fetch(`${srv.adminUrl}/api/llm`, { headers: { 'X-API-Key': API_KEY }, signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`/api/llm ${res.status}`);
  return (await res.json()).result;
}

export async function waitLlmState(srv, fn, what, timeoutMs = 10000) {
  let last;
  await waitUntil(async () => { last = await llmState(srv); return fn(last); }, { timeoutMs, what: `${what}: ${JSON.stringify(last)}` });
  return last;
}
