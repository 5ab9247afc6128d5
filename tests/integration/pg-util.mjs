// A PostgreSQL server of the test's own: initdb in a temporary directory, started on a free
// loopback port, stopped (and removed) after the test. As root (CI), the server runs as the
// postgres user, which PostgreSQL requires.
import { execFile } from 'node:child_process';
import { chownSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './cluster-util.mjs';

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
export async function startPostgres(t, opts = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chat-pg-'));
  if (IS_ROOT) {
    const { stdout } = await run('id', ['-u', 'postgres']);
    const { stdout: g } = await run('id', ['-g', 'postgres']);
    chownSync(dir, Number(stdout), Number(g));
  }
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
