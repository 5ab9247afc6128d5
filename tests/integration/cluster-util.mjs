// Shared fixtures of the cluster tests: a redis-server of the test's own on a free loopback
// port, nodes on it, and a tiny RESP client for poking Redis directly.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startChatd, waitUntil } from './helpers.mjs';

export const REDIS_BIN = process.env.REDIS_SERVER_BIN || 'redis-server';

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export function canConnect(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const sock = net.connect(port, host);
    sock.on('connect', () => { sock.destroy(); resolve(true); });
    sock.on('error', () => resolve(false));
  });
}

/**
 * A redis-server of its own on a free loopback port, stopped by PID after the test.
 * opts.appendonly: run with AOF (fsync always) in a temporary directory, so a restart keeps data.
 * Returns { url, port, stop(), restart() }; restart() stops it (SIGTERM, or SIGKILL with
 * { kill: true }) and starts it again on the same port and directory.
 */
export async function startRedis(t, opts = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chat-redis-'));
  const args = ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--dir', dir];
  if (opts.appendonly) {
    args.push('--appendonly', 'yes', '--appendfsync', 'always');
  } else {
    args.push('--appendonly', 'no');
  }
  const r = { url: `redis://127.0.0.1:${port}`, port, child: null, exited: null };
  const launch = async () => {
    const child = spawn(REDIS_BIN, args, { stdio: 'ignore' });
    r.child = child;
    r.exited = new Promise((resolve) => child.on('exit', resolve));
    await waitUntil(() => canConnect(port), { timeoutMs: 5000, what: 'redis-server accepting' });
  };
  r.stop = async ({ kill = false } = {}) => {
    if (r.child && r.child.exitCode === null && r.child.signalCode === null) {
      r.child.kill(kill ? 'SIGKILL' : 'SIGTERM');
      await r.exited;
    }
  };
  r.restart = async (stopOpts = {}) => {
    await r.stop(stopOpts);
    await launch();
  };
  if (t) {
    t.after(async () => {
      await r.stop();
      rmSync(dir, { recursive: true, force: true });
    });
  }
  await launch();
  return r;
}

/** Waits until every node's /readyz answers 200. */
export async function waitReady(nodes, timeoutMs = 5000) {
  for (const srv of nodes) {
    await waitUntil(async () => (await fetch(`${srv.adminUrl}/readyz`)).status === 200,
      { timeoutMs, what: `node ${srv.nodeId} ready` });
  }
}

/** n chatd nodes on one new redis-server; opts.redis goes to startRedis, env to every node. */
export async function startCluster(t, n, env = {}, opts = {}) {
  const redis = await startRedis(t, opts.redis || {});
  const nodes = [];
  for (let i = 0; i < n; i++) {
    nodes.push(await startChatd(t, {
      env: { REDIS_URL: redis.url, CHAT_NODE_ID: `node${i}`, CHAT_RATE_LIMITS: 'free=100000/100000', ...env },
    }));
  }
  await waitReady(nodes);
  nodes.redis = redis;
  return nodes;
}

/** Sends one command to Redis in RESP and returns the first reply line. */
export function redisCommand(url, ...args) {
  const port = Number(new URL(url).port);
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let reply = '';
    sock.on('connect', () => {
      sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
    });
    sock.on('data', (d) => {
      reply += d.toString();
      if (reply.includes('\r\n')) {
        sock.destroy();
        resolve(reply.trim());
      }
    });
    sock.on('error', reject);
  });
}
