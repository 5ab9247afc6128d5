// A PostgreSQL server of the test's own: initdb in a temporary directory, started on a free
// loopback port, stopped (and removed) after the test. As root (CI), the server runs as the
// postgres user, which PostgreSQL requires. PgBouncer in front of one the same way
// (startPgBouncer), as the postgres user too: it refuses to run as root.
import { execFile, spawn } from 'node:child_process';
import { chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './cluster-util.mjs';
import { waitUntil } from './helpers.mjs';

const run = promisify(execFile);
const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const IS_ROOT = process.getuid && process.getuid() === 0;

function asPostgres(cmd, args) {
  return IS_ROOT ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args];
}

async function pgRun(cmd, args, opts = {}) {
  const [c, a] = asPostgres(path.join(PG_BIN, cmd), args);
  return run(c, a, { timeout: 60_000, ...opts });
}

/**
 * opts.replicaOf: a server made by startPostgres: this one is its streaming replica
 * (pg_basebackup -R), read-only.
 * Returns { port, url(db), query(db, sql), createDb(name), stop({ mode }), start(), dir }.
 */
async function tempDirForPostgres(prefix) {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  if (IS_ROOT) {
    const { stdout } = await run('id', ['-u', 'postgres']);
    const { stdout: g } = await run('id', ['-g', 'postgres']);
    chownSync(dir, Number(stdout), Number(g));
  }
  return dir;
}

export async function startPostgres(t, opts = {}) {
  const port = await freePort();
  const dir = await tempDirForPostgres('chat-pg-');
  const data = path.join(dir, 'data');
  if (opts.replicaOf) {
    await pgRun('pg_basebackup', ['-h', '127.0.0.1', '-p', String(opts.replicaOf.port), '-U', 'postgres', '-D', data, '-R', '-X', 'stream', '-c', 'fast']);
  } else {
    await pgRun('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']);
  }
  const pg = { port, dir, running: false };
  pg.url = (db = 'postgres') => `postgresql://postgres@127.0.0.1:${port}/${db}`;
  pg.start = async () => {
    await pgRun('pg_ctl', ['-D', data, '-w', '-l', path.join(dir, 'log'), '-o',
      `-k ${dir} -c listen_addresses=127.0.0.1 -p ${port} -c fsync=off -c max_connections=200`, 'start']);
    pg.running = true;
  };
  /** mode: fast (clients are disconnected, clean shutdown) or immediate (as a crash). */
  pg.stop = async ({ mode = 'fast' } = {}) => {
    if (!pg.running) return;
    await pgRun('pg_ctl', ['-D', data, '-w', '-m', mode, 'stop']);
    pg.running = false;
  };
  pg.query = async (db, sql) => {
    const { stdout } = await run('psql', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', db, '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql], { timeout: 30_000, maxBuffer: 64 << 20 });
    return stdout.trim();
  };
  /** The server's processes: the postmaster and its children (to freeze them). */
  pg.pids = async () => {
    const { readFileSync } = await import('node:fs');
    const main = Number(readFileSync(path.join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    const { stdout } = await run('pgrep', ['-P', String(main)]).catch(() => ({ stdout: '' }));
    return [main, ...stdout.split('\n').filter(Boolean).map(Number)];
  };
  pg.createDb = async (name) => {
    await pg.query('postgres', `CREATE DATABASE ${name}`);
    return pg.url(name);
  };
  if (t) {
    t.after(async () => {
      try {
        await pg.stop({ mode: 'immediate' });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
  await pg.start();
  return pg;
}

const PGBOUNCER_BIN = process.env.PGBOUNCER_BIN || '/usr/sbin/pgbouncer';

/** psql's rows as objects by column name (unaligned, with its header, without the footer). */
function parseRows(stdout) {
  const lines = stdout.split('\n').filter(Boolean);
  if (!lines.length) return [];
  const cols = lines[0].split('|');
  return lines.slice(1).map((l) => Object.fromEntries(l.split('|').map((v, i) => [cols[i], v])));
}

/**
 * A PgBouncer of the test's own in front of pg (a server made by startPostgres), on a free
 * loopback port, every database of pg reachable through it under its own name, stopped by PID
 * after the test.
 * opts.poolMode: 'transaction' unless given; opts.poolSize: server connections per database and
 * user (default_pool_size), 4 unless given, used in turn (server_round_robin);
 * opts.ignoreStartupParameters: none unless given, so a client that sends a startup parameter
 * PgBouncer does not know (e.g. options) is refused.
 * Returns { port, url(db), query(db, sql), admin(cmd), log(), dir }: admin runs a command of the
 * admin console (SHOW POOLS, SHOW STATS, ...) and answers its rows as objects.
 */
export async function startPgBouncer(t, pg, opts = {}) {
  const port = await freePort();
  const dir = await tempDirForPostgres('chat-pgbouncer-');
  const ini = path.join(dir, 'pgbouncer.ini');
  const logfile = path.join(dir, 'pgbouncer.log');
  const pidfile = path.join(dir, 'pgbouncer.pid');
  const users = path.join(dir, 'userlist.txt');
  writeFileSync(users, '"postgres" ""\n');
  writeFileSync(ini, [
    '[databases]',
    `* = host=127.0.0.1 port=${pg.port}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    `logfile = ${logfile}`,
    `pidfile = ${pidfile}`,
    'auth_type = trust',
    `auth_file = ${users}`,
    'admin_users = postgres',
    `pool_mode = ${opts.poolMode || 'transaction'}`,
    `default_pool_size = ${opts.poolSize || 4}`,
    'min_pool_size = 0',
    'reserve_pool_size = 0',
    'max_client_conn = 200',
    // Each transaction on the next server connection, not the last one used: a client that kept
    // state on one (a named prepared statement, a SET) meets a connection without it at once.
    'server_round_robin = 1',
    `ignore_startup_parameters = ${opts.ignoreStartupParameters || ''}`,
    // SHOW STATS totals as they are, not as of the last minute.
    'stats_period = 1',
    '',
  ].join('\n'));
  const bouncer = { port, dir, child: null, exited: null, stderr: '' };
  bouncer.url = (db = 'postgres') => `postgresql://postgres@127.0.0.1:${port}/${db}`;
  const psql = async (db, sql, extra = []) => {
    const { stdout } = await run('psql', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', db, '-A', '-v', 'ON_ERROR_STOP=1', ...extra, '-c', sql], { timeout: 30_000, maxBuffer: 64 << 20 });
    return stdout;
  };
  bouncer.query = async (db, sql) => (await psql(db, sql, ['-t'])).trim();
  bouncer.admin = async (cmd) => parseRows(await psql('pgbouncer', cmd, ['-P', 'footer=off']));
  bouncer.log = () => {
    try {
      return readFileSync(logfile, 'utf8');
    } catch {
      return '';
    }
  };
  // In the foreground, so that its end is observable; as root through runuser, which stays
  // its parent: it is stopped by its own PID (the pidfile), runuser then ends with it.
  const [cmd, args] = asPostgres(PGBOUNCER_BIN, [ini]);
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  bouncer.child = child;
  bouncer.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { bouncer.stderr = (bouncer.stderr + d).slice(-4000); });
  let pid = null;
  bouncer.stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    // SIGTERM: immediate shutdown. Before the pidfile exists, the child itself is all there is.
    try {
      process.kill(pid || child.pid, 'SIGTERM');
    } catch {
      // gone meanwhile
    }
    await bouncer.exited;
  };
  if (t) {
    t.after(async () => {
      try {
        await bouncer.stop();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
  const gone = bouncer.exited.then((r) => {
    throw new Error(`pgbouncer exited (${r.code ?? r.signal}) at start:\n${bouncer.stderr}${bouncer.log()}`);
  });
  gone.catch(() => {});
  await Promise.race([gone, waitUntil(async () => {
    pid = Number(readFileSync(pidfile, 'utf8').trim()) || null;
    return pid && (await bouncer.query('postgres', 'SELECT 1')) === '1';
  }, { timeoutMs: 10_000, intervalMs: 100, what: `pgbouncer accepting on port ${port}` })]);
  return bouncer;
}
