// Shared helpers of the chatd integration tests (node:test).
//
// - startChatd(t, {env}) starts a chatd on loopback ephemeral ports and stops it after the test.
// - mintToken(claims) makes an HS256 JWT with node:crypto.
// - newClient(t, srv, opts) makes a centrifuge SDK client (ws WebSocket), disconnected after the test;
//   CHAT_TEST_PROTOCOL=protobuf makes it the SDK's Protobuf form (sdk-protocol.mjs).
// - rawConnect(t, srv) opens a raw WebSocket speaking the JSON protocol by hand.
// - scrapeMetrics / metricValue parse the Prometheus text of the admin listener.
// - readRssBytes(pid) reads VmRSS from /proc.
// - waitEvent / Collector / waitUntil wait for something observable, always with a deadline.
//
// Nothing here sleeps to wait for an event: a wait ends on the event or fails at its deadline.

import { execFile, spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { Centrifuge, PROTOCOL, countPings, makeClient } from './sdk-protocol.mjs';

export { Centrifuge, PROTOCOL, WebSocket, countPings, randomUUID };

// Default: build/bin/chatd of this repository (/work/main/build/bin/chatd in the main work tree).
export const CHATD_BIN = process.env.CHATD_BIN || fileURLToPath(new URL('../../build/bin/chatd', import.meta.url));
export const JWT_SECRET = 'chatd-integration-test-secret-3f9a1c';
export const CHATCTL_BIN = process.env.CHATCTL_BIN || path.join(path.dirname(CHATD_BIN), 'chatctl');

/** Runs chatctl with args and only the environment given (plus PATH); resolves
 * {code, stdout, stderr} whatever its exit code. */
export async function runChatctl(args, env = {}) {
  try {
    const { stdout, stderr } = await promisify(execFile)(CHATCTL_BIN, args, {
      env: { PATH: process.env.PATH, ...env },
      timeout: 15_000,
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    if (typeof e.code !== 'number') throw e;
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
const SANITIZER_RE = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: /;
export const READY_TIMEOUT_MS = 10_000;
export const STOP_TIMEOUT_MS = 10_000;

const READY_RE = /^chatd ready public=(\S+) admin=(\S+)(?: node=(\S+))?/m;
const KEEP_OUTPUT_BYTES = 256 * 1024;

function keepTail(buf, chunk) {
  const s = buf + chunk;
  return s.length > KEEP_OUTPUT_BYTES ? s.slice(s.length - KEEP_OUTPUT_BYTES) : s;
}

/**
 * The secrets a chatd was given (JWT secrets, API key, LLM provider keys), which none of its log
 * lines may contain; short test values are left out, as they would match by chance.
 */
function secretsOf(env) {
  const out = [];
  for (const part of (env.CHAT_JWT_SECRET || '').split(',')) {
    const i = part.indexOf(':');
    out.push(i > 0 && i < 32 ? part.slice(i + 1) : part);
  }
  out.push(env.CHAT_API_KEY || '');
  try {
    for (const p of JSON.parse(env.CHAT_LLM_PROVIDERS || '[]')) {
      out.push(...(p.keys || []), ...(p.fallback_keys || []));
    }
  } catch {
    // a test of bad provider settings: nothing to look for
  }
  return out.filter((s) => typeof s === 'string' && s.length >= 8);
}

// A signed JWT (header.payload.signature): no log line may carry one.
const JWT_RE = /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{20,}/;

/** Environment for a chatd child: the caller's, without any chatd setting that could leak in. */
function baseEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('CHAT_') || k === 'REDIS_URL' || k === 'DATABASE_URL' || k === 'DATABASE_READ_URL') {
      continue;
    }
    env[k] = v;
  }
  return env;
}

/**
 * Starts chatd and waits for its ready line.
 * opts.env: overrides; a value of null removes the variable (e.g. CHAT_JWT_SECRET: null = demo mode).
 * opts.demo: true = demo mode (no CHAT_JWT_SECRET).
 * opts.prefix: a command that execs chatd (its arguments follow), e.g. ['prlimit', '--nofile=300', '--']
 *   to lower the node's open-file limit, not the test runner's; it must exec so that the PID is chatd's.
 * opts.anyAddress: the public listener may report 0.0.0.0 (it is reached through 127.0.0.1).
 * When t is given, the process is stopped in t.after.
 */
export async function startChatd(t, opts = {}) {
  const env = baseEnv();
  env.CHAT_LISTEN = '127.0.0.1:0';
  env.CHAT_ADMIN_LISTEN = '127.0.0.1:0';
  env.CHAT_JWT_SECRET = JWT_SECRET;
  env.CHAT_LOG_LEVEL = 'info';
  if (opts.demo) {
    delete env.CHAT_JWT_SECRET;
  }
  for (const [k, v] of Object.entries(opts.env || {})) {
    if (v === null || v === undefined) {
      delete env[k];
    } else {
      env[k] = String(v);
    }
  }
  const argv = [...(opts.prefix || []), CHATD_BIN, ...(opts.args || [])];
  const child = spawn(argv[0], argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const srv = {
    child,
    pid: child.pid,
    stdout: '',
    stderr: '',
    exitCode: undefined,
    exitSignal: undefined,
    publicAddr: null,
    adminAddr: null,
    nodeId: null,
    wsUrl: null,
    httpUrl: null,
    adminUrl: null,
  };
  srv.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      srv.exitCode = code;
      srv.exitSignal = signal;
      resolve({ code, signal });
    });
  });
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  // Every line of the node's log, whatever the test looks at: no secret, token or key.
  const secrets = secretsOf(env);
  srv.leaks = [];
  child.stderr.on('data', (d) => {
    const around = srv.stderr.slice(-256) + d;
    for (const s of secrets) {
      if (around.includes(s)) srv.leaks.push(`secret ${s.slice(0, 6)}...`);
    }
    if (JWT_RE.test(around)) srv.leaks.push(`a token: ${JWT_RE.exec(around)[0].slice(0, 24)}...`);
    srv.stderr = keepTail(srv.stderr, d);
  });
  srv.stop = (stopOpts = {}) => stopChatd(srv, stopOpts);
  srv.describe = () => `chatd pid=${srv.pid} exit=${srv.exitCode}/${srv.exitSignal}\n--- stdout ---\n${srv.stdout.slice(-4000)}\n--- stderr ---\n${srv.stderr.slice(-8000)}`;
  if (t) {
    t.after(async () => {
      const diedBefore = srv.exitCode !== undefined && !srv.stopRequested;
      const r = await srv.stop();
      // A crash or a hang of chatd fails the test that saw it, whatever the test checked.
      if (diedBefore || r.killedAfterTimeout || ['SIGSEGV', 'SIGABRT', 'SIGBUS', 'SIGFPE', 'SIGILL'].includes(r.signal)) {
        throw new Error(`chatd ${diedBefore ? 'died during the test' : r.killedAfterTimeout ? 'did not exit after SIGTERM' : `crashed (${r.signal})`}\n${srv.describe()}`);
      }
      // A sanitizer build reports memory errors, leaks and undefined behaviour on stderr (and
      // exits with scripts/test's ASAN exitcode 23) without a crash signal: that fails too.
      if (r.code === 23 || SANITIZER_RE.test(srv.stderr)) {
        throw new Error(`chatd sanitizer report\n${srv.describe()}`);
      }
      if (srv.leaks.length) {
        throw new Error(`chatd logged secrets: ${[...new Set(srv.leaks)].join(', ')}\n${srv.describe()}`);
      }
    });
  }
  const spawnError = new Promise((_, reject) => child.on('error', (e) => reject(new Error(`cannot start ${CHATD_BIN}: ${e.message}`))));
  const ready = new Promise((resolve) => {
    child.stdout.on('data', (d) => {
      srv.stdout = keepTail(srv.stdout, d);
      if (srv.publicAddr === null) {
        const m = READY_RE.exec(srv.stdout);
        if (m) {
          srv.publicAddr = m[1];
          srv.adminAddr = m[2];
          srv.nodeId = m[3] || null;
          resolve();
        }
      }
    });
  });
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`chatd printed no ready line within ${READY_TIMEOUT_MS} ms\n${srv.describe()}`)), opts.readyTimeoutMs || READY_TIMEOUT_MS);
  });
  const exitedEarly = srv.exited.then(() => {
    throw new Error(`chatd exited before its ready line\n${srv.describe()}`);
  });
  try {
    await Promise.race([ready, deadline, exitedEarly, spawnError]);
  } catch (e) {
    await srv.stop();
    throw e;
  } finally {
    clearTimeout(timer);
  }
  exitedEarly.catch(() => {});
  if (opts.anyAddress && srv.publicAddr.startsWith('0.0.0.0:')) {
    srv.publicAddr = `127.0.0.1:${srv.publicAddr.slice('0.0.0.0:'.length)}`;
  }
  assertLoopback(srv.publicAddr);
  assertLoopback(srv.adminAddr);
  srv.wsUrl = `ws://${srv.publicAddr}/connection/websocket`;
  srv.httpUrl = `http://${srv.publicAddr}`;
  srv.adminUrl = `http://${srv.adminAddr}`;
  return srv;
}

function assertLoopback(addr) {
  if (!/^127\.0\.0\.1:\d+$/.test(addr) || addr.endsWith(':0')) {
    throw new Error(`chatd reported an unexpected listener address: ${addr}`);
  }
}

/** SIGTERM, wait for the exit of that PID, SIGKILL after the deadline. Returns {code, signal}. */
export async function stopChatd(srv, { signal = 'SIGTERM', timeoutMs = STOP_TIMEOUT_MS } = {}) {
  if (srv.exitCode !== undefined) {
    return { code: srv.exitCode, signal: srv.exitSignal };
  }
  srv.stopRequested = true;
  try {
    process.kill(srv.pid, signal);
  } catch {
    // already gone
  }
  let timer;
  const timedOut = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  const r = await Promise.race([srv.exited, timedOut]);
  clearTimeout(timer);
  if (r === 'timeout') {
    try {
      process.kill(srv.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    const killed = await srv.exited;
    return { ...killed, killedAfterTimeout: true };
  }
  return r;
}

// ---------------------------------------------------------------- tokens

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

/** HS256 JWT. header overrides merge into {alg:'HS256',typ:'JWT'}. */
export function mintToken(claims, { secret = JWT_SECRET, header = {} } = {}) {
  const h = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT', ...header }));
  const p = b64url(JSON.stringify(claims));
  const sig = b64url(createHmac('sha256', secret).update(`${h}.${p}`).digest());
  return `${h}.${p}.${sig}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

/** Connection token for user with exp one hour ahead (claims override). */
export function userToken(user, claims = {}, opts = {}) {
  return mintToken({ sub: user, iat: nowSec(), exp: nowSec() + 3600, ...claims }, opts);
}

// ---------------------------------------------------------------- waiting

/** Resolves with the first event (its first argument) passing filter; rejects at the deadline. */
export function waitEvent(emitter, event, { timeoutMs = 5000, filter = () => true, what } = {}) {
  return new Promise((resolve, reject) => {
    const onEvent = (ctx) => {
      let ok;
      try {
        ok = filter(ctx);
      } catch (e) {
        cleanup();
        reject(e);
        return;
      }
      if (ok) {
        cleanup();
        resolve(ctx);
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timeout after ${timeoutMs} ms waiting for ${what || `'${event}' event`}`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      emitter.off(event, onEvent);
    };
    emitter.on(event, onEvent);
  });
}

/** Rejects at the deadline unless promise settles first. */
export async function withTimeout(promise, timeoutMs, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, t]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls an async condition (for state that emits no event, e.g. a metric) until it returns a
 * truthy value; bounded in time. Returns that value.
 */
export async function waitUntil(fn, { timeoutMs = 5000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
    } catch (e) {
      last = e;
    }
    if (last && !(last instanceof Error)) {
      return last;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timeout after ${timeoutMs} ms waiting for ${what}${last instanceof Error ? `: ${last.message}` : ''}`);
    }
    await delay(intervalMs);
  }
}

/** A plain timer, only for time-based contracts (a retry-after, an expiry), never for events. */
export function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Collects events of an emitter; waitCount(n) resolves once n items are in. */
export class Collector {
  constructor(emitter, event, map = (x) => x) {
    this.items = [];
    this._waiters = [];
    this._emitter = emitter;
    this._event = event;
    this._handler = (ctx) => {
      this.items.push(map(ctx));
      this._check();
    };
    emitter.on(event, this._handler);
  }
  _check() {
    this._waiters = this._waiters.filter((w) => {
      if (this.items.length >= w.n) {
        clearTimeout(w.timer);
        w.resolve(this.items);
        return false;
      }
      return true;
    });
  }
  waitCount(n, timeoutMs = 5000) {
    if (this.items.length >= n) {
      return Promise.resolve(this.items);
    }
    return new Promise((resolve, reject) => {
      const w = { n, resolve };
      w.timer = setTimeout(() => {
        this._waiters = this._waiters.filter((x) => x !== w);
        reject(new Error(`timeout after ${timeoutMs} ms: ${this.items.length} of ${n} '${this._event}' events`));
      }, timeoutMs);
      this._waiters.push(w);
    });
  }
  stop() {
    this._emitter.off(this._event, this._handler);
  }
}

// ---------------------------------------------------------------- SDK clients

/**
 * A centrifuge-js client (not connected yet). opts: user (makes a token), token, getToken, any
 * Centrifuge option. Disconnected in t.after.
 */
export function newClient(t, srv, opts = {}) {
  const { user, protocol, ...rest } = opts;
  const config = {
    websocket: WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: 5000,
    ...rest,
  };
  if (config.token === undefined && user) {
    config.token = userToken(user);
  }
  // The SDK form of the run (CHAT_TEST_PROTOCOL): JSON, or Protobuf with JSON data in bytes.
  const client = makeClient(opts.url || srv.wsUrl, config, protocol);
  // Record every event, for assertions about what did (not) happen.
  client.events = [];
  for (const ev of ['connecting', 'connected', 'disconnected', 'error', 'subscribed', 'unsubscribed', 'subscribing']) {
    client.on(ev, (ctx) => client.events.push({ ev, ctx, at: Date.now() }));
  }
  if (t) {
    t.after(() => client.disconnect());
  }
  return client;
}

/** newClient + connect + wait for 'connected'. Returns the client; client.clientId is set. */
export async function connectClient(t, srv, opts = {}) {
  const client = newClient(t, srv, opts);
  const connected = waitEvent(client, 'connected', { timeoutMs: opts.connectTimeoutMs || 5000, what: `connect of ${opts.user || 'client'}` });
  const failed = waitEvent(client, 'disconnected', { timeoutMs: (opts.connectTimeoutMs || 5000) + 1000 }).then((ctx) => {
    throw new Error(`client ${opts.user || ''} disconnected while connecting: ${JSON.stringify(ctx)}`);
  });
  failed.catch(() => {});
  client.connect();
  const ctx = await Promise.race([connected, failed]);
  client.clientId = ctx.client;
  return client;
}

/** newSubscription + subscribe + wait for 'subscribed'. Returns {sub, ctx}. */
export async function subscribe(client, channel, options = {}, timeoutMs = 5000) {
  const sub = client.newSubscription(channel, options);
  const subscribed = waitEvent(sub, 'subscribed', { timeoutMs, what: `subscribe to ${channel}` });
  const failed = waitEvent(sub, 'unsubscribed', { timeoutMs: timeoutMs + 1000 }).then((ctx) => {
    throw Object.assign(new Error(`subscription to ${channel} refused: ${JSON.stringify(ctx)}`), { ctx });
  });
  failed.catch(() => {});
  sub.subscribe();
  const ctx = await Promise.race([subscribed, failed]);
  return { sub, ctx };
}

/** The underlying ws WebSocket of a connected SDK client. */
export function sdkSocket(client) {
  const transport = client._transport;
  if (!transport || !transport._transport) {
    throw new Error('client has no open transport');
  }
  return transport._transport;
}

/** Chat message data as the web demo sends it. */
export function chatMessage(text, clientMsgId = randomUUID()) {
  return { type: 'message', text, client_msg_id: clientMsgId };
}

// ---------------------------------------------------------------- raw WebSocket client

/**
 * Raw protocol client. Frames are split on '\n' into JSON objects; replies are matched by id.
 * Server pings ({}) are answered with {} unless autoPong is false.
 */
export class RawClient {
  constructor(url, { autoPong = true } = {}) {
    this.url = url;
    this.autoPong = autoPong;
    this.ws = new WebSocket(url);
    this.nextId = 1;
    this.pending = new Map();
    this.pushes = [];
    this.pings = 0;
    this.frames = 0;
    this.unparsed = [];
    this._listeners = new Set();
    this.closeInfo = null;
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        for (const [, p] of this.pending) {
          p.reject(new Error(`socket closed (${code} ${reason}) before the reply`));
        }
        this.pending.clear();
        resolve(this.closeInfo);
      });
    });
    this.ws.on('error', () => {});
    this.ws.on('message', (data, isBinary) => this._onFrame(data, isBinary));
  }

  _onFrame(data, isBinary) {
    this.frames++;
    const text = isBinary ? Buffer.from(data).toString('utf8') : data.toString();
    for (const line of text.split('\n')) {
      if (line.trim() === '') {
        continue;
      }
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        this.unparsed.push(line);
        continue;
      }
      this._dispatch(msg);
    }
  }

  _dispatch(msg) {
    if (msg.id && this.pending.has(msg.id)) {
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      p.resolve(msg);
    } else if (!msg.id && !msg.push && Object.keys(msg).length === 0) {
      this.pings++;
      if (this.autoPong && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send('{}');
      }
    } else if (msg.push) {
      this.pushes.push(msg.push);
    }
    for (const l of this._listeners) {
      l(msg);
    }
  }

  /** Waits for the next message (reply, push or ping) passing filter. */
  waitMessage(filter, { timeoutMs = 5000, what = 'message' } = {}) {
    return new Promise((resolve, reject) => {
      const l = (msg) => {
        if (filter(msg)) {
          this._listeners.delete(l);
          clearTimeout(timer);
          resolve(msg);
        }
      };
      const timer = setTimeout(() => {
        this._listeners.delete(l);
        reject(new Error(`timeout after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this._listeners.add(l);
    });
  }

  /** Waits for a push passing filter (also one received before). */
  waitPush(filter, opts = {}) {
    const past = this.pushes.find(filter);
    if (past) {
      return Promise.resolve(past);
    }
    return this.waitMessage((m) => m.push && filter(m.push), opts).then((m) => m.push);
  }

  sendRaw(data, opts) {
    this.ws.send(data, opts);
  }

  /** Sends {id, [method]: params}; resolves with the whole reply ({id, method:result} or {id, error}). */
  command(method, params = {}, { timeoutMs = 5000 } = {}) {
    const id = this.nextId++;
    const p = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`timeout after ${timeoutMs} ms waiting for the reply to ${method} #${id}`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
    this.ws.send(JSON.stringify({ id, [method]: params }));
    return p;
  }

  /** command() that throws on an error reply and returns the result object. */
  async call(method, params = {}, opts) {
    const reply = await this.command(method, params, opts);
    if (reply.error) {
      throw Object.assign(new Error(`${method} failed: ${JSON.stringify(reply.error)}`), { error: reply.error });
    }
    return reply[method];
  }

  /** Resolves with {code, reason} of the close; rejects at the deadline. */
  waitClose(timeoutMs = 5000) {
    return withTimeout(this.closed, timeoutMs, 'the server to close the socket');
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.terminate();
    }
  }
}

/** Opens a raw client (closed in t.after). */
export async function rawConnect(t, srv, opts = {}) {
  const c = new RawClient(opts.url || srv.wsUrl, opts);
  if (t) {
    t.after(() => c.close());
  }
  await withTimeout(c.opened, 5000, 'the WebSocket handshake');
  return c;
}

/** Raw client that has sent connect for user and got the reply. Returns the client; .connectResult set. */
export async function rawConnectAs(t, srv, user, opts = {}) {
  const c = await rawConnect(t, srv, opts);
  c.connectResult = await c.call('connect', { token: opts.token || userToken(user), name: 'raw-test' });
  return c;
}

// ---------------------------------------------------------------- HTTP, metrics, memory

export async function httpGet(url, { timeoutMs = 5000 } = {}) {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, headers: res.headers, body: await res.text() };
}

/**
 * Parses Prometheus text exposition into {samples: [{name, labels, value}], types: {family: type}}.
 */
export function parsePrometheus(text) {
  const samples = [];
  const types = {};
  const helps = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') {
      continue;
    }
    if (line.startsWith('#')) {
      const m = /^#\s+(TYPE|HELP)\s+(\S+)\s*(.*)$/.exec(line);
      if (m && m[1] === 'TYPE') {
        types[m[2]] = m[3].trim();
      } else if (m) {
        helps[m[2]] = m[3];
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/.exec(line);
    if (!m) {
      throw new Error(`unparseable metrics line: ${JSON.stringify(raw)}`);
    }
    const labels = {};
    if (m[2]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/g;
      let lm;
      let consumed = 0;
      while ((lm = re.exec(m[2])) !== null) {
        labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
        consumed = re.lastIndex;
      }
      if (consumed !== m[2].length) {
        throw new Error(`unparseable labels in metrics line: ${JSON.stringify(raw)}`);
      }
    }
    const v = m[3];
    const value = v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v);
    if (Number.isNaN(value) && v !== 'NaN') {
      throw new Error(`bad sample value in metrics line: ${JSON.stringify(raw)}`);
    }
    samples.push({ name: m[1], labels, value });
  }
  return { samples, types, helps };
}

export async function scrapeMetrics(srv) {
  const res = await httpGet(`${srv.adminUrl}/metrics`);
  if (res.status !== 200) {
    throw new Error(`/metrics answered ${res.status}: ${res.body.slice(0, 200)}`);
  }
  const parsed = parsePrometheus(res.body);
  parsed.text = res.body;
  parsed.contentType = res.headers.get('content-type');
  return parsed;
}

/** Sum of the samples of name whose labels include all of labels; undefined when none matches. */
export function metricValue(metrics, name, labels = {}) {
  let sum;
  for (const s of metrics.samples) {
    if (s.name !== name) {
      continue;
    }
    if (Object.entries(labels).every(([k, v]) => s.labels[k] === String(v))) {
      sum = (sum || 0) + s.value;
    }
  }
  return sum;
}

/** Polls /metrics until pred(value of name{labels}) holds. Returns the value. */
export async function waitMetric(srv, name, labels, pred, { timeoutMs = 5000, intervalMs = 50 } = {}) {
  let last;
  await waitUntil(async () => {
    const m = await scrapeMetrics(srv);
    last = metricValue(m, name, labels);
    return pred(last ?? 0);
  }, { timeoutMs, intervalMs, what: `${name}${JSON.stringify(labels)} (last value ${last})` });
  return last ?? 0;
}

export function readRssBytes(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) {
    throw new Error(`no VmRSS in /proc/${pid}/status`);
  }
  return Number(m[1]) * 1024;
}
