// Shared fixtures of the cluster tests: a redis-server of the test's own on a free loopback
// port, nodes on it, a tiny RESP client for poking Redis directly, and the local cluster of
// scripts/cluster (nginx in front of three nodes) on free ports.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CHATD_BIN, startChatd, waitUntil } from './helpers.mjs';

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
 * { kill: true }) and starts it again on the same port and directory, with extraArgs (more
 * configuration for that start only, e.g. an ACL) when given.
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
  const launch = async (extraArgs = []) => {
    const child = spawn(REDIS_BIN, [...args, ...extraArgs], { stdio: 'ignore' });
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
  r.restart = async ({ extraArgs = [], ...stopOpts } = {}) => {
    await r.stop(stopOpts);
    await launch(extraArgs);
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

// ---- the local cluster of scripts/cluster ----

const CLUSTER_SCRIPT = fileURLToPath(new URL('../../scripts/cluster', import.meta.url));
export const NODES = ['node1', 'node2', 'node3'];
const SANITIZER_RE = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/;


function runClusterScript(args, env, timeoutMs) {
  return new Promise((resolve) => {
    execFile('bash', [CLUSTER_SCRIPT, ...args], { env, timeout: timeoutMs }, (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? error.signal) : 0, stdout, stderr });
    });
  });
}

function portFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** First of n consecutive free loopback ports (bounded number of tries). */
async function freePortRun(n) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = await freePort();
    let ok = base + n - 1 < 65536;
    for (let i = 1; ok && i < n; i++) {
      ok = await portFree(base + i);
    }
    if (ok) {
      return base;
    }
  }
  throw new Error(`no ${n} consecutive free ports found`);
}

/** Environment of the script: the caller's, without chatd settings that could leak in. */
function scriptEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CHAT_') && !k.startsWith('CLUSTER_') && k !== 'REDIS_URL') {
      env[k] = v;
    }
  }
  return { ...env, ...extra };
}

/** scripts/cluster start on free ports in a temporary state folder; stopped in t.after. */
export async function startLocalCluster(t, extraEnv = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chat-cluster-'));
  const ports = {
    http: await freePort(),
    redis: await freePort(),
    node: await freePortRun(3),
    admin: await freePortRun(3),
    llm: await freePort(),
    pg: await freePort(),
  };
  const env = scriptEnv({
    CLUSTER_DIR: dir,
    CLUSTER_HTTP_PORT: String(ports.http),
    CLUSTER_REDIS_PORT: String(ports.redis),
    CLUSTER_NODE_BASE_PORT: String(ports.node),
    CLUSTER_ADMIN_BASE_PORT: String(ports.admin),
    CLUSTER_LLM_MOCK_PORT: String(ports.llm),
    CLUSTER_PG_PORT: String(ports.pg),
    CHATD_BIN,
    CHAT_RATE_LIMITS: 'free=100000/100000',
    ...extraEnv,
  });
  const cluster = {
    dir,
    env,
    httpUrl: `http://127.0.0.1:${ports.http}`,
    wsUrl: `ws://127.0.0.1:${ports.http}/connection/websocket`,
    llmMockUrl: `http://127.0.0.1:${ports.llm}`,
    nodes: NODES.map((id, i) => ({ id, adminUrl: `http://127.0.0.1:${ports.admin + i}`, killed: false })),
    logs() {
      return NODES.concat(['redis', 'llm-mock', 'nginx-error']).map((name) => {
        let text;
        try {
          text = readFileSync(path.join(dir, `${name}.log`), 'utf8');
        } catch {
          text = '(none)';
        }
        return `--- ${name}.log ---\n${text.slice(-3000)}`;
      }).join('\n');
    },
    pid(id) {
      return Number(readFileSync(path.join(dir, `${id}.pid`), 'utf8').trim());
    },
  };
  t.after(async () => {
    const stop = await runClusterScript(['stop'], env, 60_000);
    const logs = cluster.logs();
    const problems = [];
    if (stop.code !== 0) {
      problems.push(`scripts/cluster stop exited ${stop.code}: ${stop.stderr}`);
    }
    if (/did not exit/.test(stop.stderr)) {
      problems.push(`a process needed SIGKILL: ${stop.stderr}`);
    }
    for (const n of cluster.nodes) {
      const log = readFileSync(path.join(dir, `${n.id}.log`), 'utf8');
      if (SANITIZER_RE.test(log)) {
        problems.push(`${n.id} reported a sanitizer error`);
      }
    }
    rmSync(dir, { recursive: true, force: true });
    if (problems.length > 0) {
      throw new Error(`${problems.join('\n')}\n${logs}`);
    }
  });
  const start = await runClusterScript(['start'], env, 120_000);
  if (start.code !== 0) {
    throw new Error(`scripts/cluster start exited ${start.code}\n${start.stdout}\n${start.stderr}\n${cluster.logs()}`);
  }
  if (!new RegExp(`web demo: +http://127\\.0\\.0\\.1:${ports.http}/`).test(start.stdout) ||
      !/scripts\/cluster stop/.test(start.stdout)) {
    throw new Error(`scripts/cluster start printed no URL or stop hint:\n${start.stdout}`);
  }
  cluster.secret = readFileSync(path.join(dir, 'jwt-secret'), 'utf8').trim();
  return cluster;
}

