'use strict';
// Real daemons for the Node tests: `python -m runtally.cli daemon` from the
// repository's venv, on a real Unix socket in a short temporary directory;
// the database is read back through Python's sqlite3 (read-only).

const assert = require('node:assert/strict');
const { execFileSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { after } = require('node:test');
const { encode, decode } = require('@msgpack/msgpack');

const REPO = path.resolve(__dirname, '..', '..', '..');
const PYTHON = process.env.RUNTALLY_PYTHON || path.join(REPO, '.venv', 'bin', 'python');
const FIXTURE = path.join(__dirname, 'fixtures', 'pipeline.js');

/** A fresh short directory under /tmp (AF_UNIX paths stay under 108 bytes). */
function tmpRoot(t) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'rtn-'));
  if (t) t.after(() => fs.rmSync(root, { recursive: true, force: true }));
  return root;
}

/** Poll `predicate` until truthy; throws after `timeoutMs`. */
async function waitFor(predicate, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** One request/reply over the socket; resolves the reply map, or null. */
function request(socketPath, message, timeoutMs = 2000) {
  return new Promise((resolve) => {
    const sock = net.createConnection({ path: socketPath });
    let buf = Buffer.alloc(0);
    const done = (v) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(null), timeoutMs);
    sock.on('error', () => done(null));
    sock.on('connect', () => {
      const body = encode(message);
      const head = Buffer.alloc(4);
      head.writeUInt32BE(body.length);
      sock.write(Buffer.concat([head, body]));
    });
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) done(decode(buf.subarray(4, 4 + buf.readUInt32BE(0))));
    });
  });
}

class Daemon {
  constructor(root, { socket } = {}) {
    this.root = root;
    this.socket = socket || path.join(root, 'd.sock');
    this.db = path.join(root, 'dashboard.sqlite');
    this.spool = path.join(root, 'spool');
    this.config = path.join(root, 'runtally.toml');
    this.proc = null;
  }

  env() {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('RUNTALLY_')));
    fs.writeFileSync(this.config, '[runtally]\nreplay_interval_s = 0.2\n');
    return { ...env, PYTHONPATH: REPO, RUNTALLY_CONFIG: this.config };
  }

  async start() {
    const log = fs.openSync(path.join(this.root, 'daemon.log'), 'a');
    this.proc = spawn(
      PYTHON,
      ['-m', 'runtally.cli', 'daemon', '--socket', this.socket, '--db', this.db, '--spool', this.spool],
      { env: this.env(), stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.proc.on('exit', resolve));
    await waitFor(async () => {
      if (this.proc.exitCode !== null) throw new Error(`daemon exited: ${this.log()}`);
      const reply = await request(this.socket, { type: 'ping' });
      return reply && reply.type === 'pong';
    }, 'the daemon to answer ping');
    return this;
  }

  log() {
    try {
      return fs.readFileSync(path.join(this.root, 'daemon.log'), 'utf8');
    } catch {
      return '';
    }
  }

  async stop(signal = 'SIGTERM') {
    if (this.proc === null || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }

  /** Every run, step and error row (read-only), as plain objects. */
  dump() {
    return dumpDb(this.db);
  }
}

const DUMP = `
import json, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=5)
conn.row_factory = sqlite3.Row
out = {}
for table in ("runs", "run_steps", "run_errors"):
    out[table] = [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
print(json.dumps(out))
`;

function dumpDb(db) {
  if (!fs.existsSync(db)) return { runs: [], run_steps: [], run_errors: [] };
  return JSON.parse(execFileSync(PYTHON, ['-c', DUMP, db], { encoding: 'utf8', maxBuffer: 1 << 28 }));
}

/** The `*.spool` files in `dir` with their record counts (read by the Python reader). */
function spoolFiles(dir) {
  let names;
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith('.spool'));
  } catch {
    return [];
  }
  return names.map((name) => {
    const data = fs.readFileSync(path.join(dir, name));
    let records = 0;
    let at = 8;
    while (at + 8 <= data.length && at + 8 + data.readUInt32BE(at) <= data.length) {
      at += 8 + data.readUInt32BE(at);
      records += 1;
    }
    return { name, records };
  });
}

/**
 * Start the fixture pipeline `scenario` with the client pointed at `socket`
 * and `spool`; resolves {code, signal, stdout, stderr, ms} when it exits.
 * `onStdout(line, child)` sees its output lines as they come.
 */
/** Pipelines still running: a test that failed half-way leaves no process
 * behind to keep this file's event loop (and so `make test`) alive. */
const live = new Set();
after(() => {
  for (const child of live) child.kill('SIGKILL');
});

function runPipeline(scenario, { socket, spool, env = {}, onLine } = {}) {
  const started = Date.now();
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('RUNTALLY_')));
  const child = spawn(process.execPath, [FIXTURE, scenario], {
    env: { ...base, RUNTALLY_SOCKET: socket, RUNTALLY_SPOOL: spool, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  child.on('exit', () => live.delete(child));
  let stdout = '';
  let stderr = '';
  let pending = '';
  child.stdout.on('data', (d) => {
    stdout += d;
    pending += d;
    let i;
    while ((i = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, i);
      pending = pending.slice(i + 1);
      if (onLine) onLine(line, child);
    }
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const result = new Promise((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: Date.now() - started }));
  });
  result.child = child;
  return result;
}

/** The rows of `pipeline`'s runs, with their steps and errors. */
function runsOf(dump, pipeline) {
  return dump.runs
    .filter((r) => r.pipeline === pipeline)
    .map((run) => ({
      run,
      steps: dump.run_steps.filter((s) => s.run_id === run.id),
      errors: dump.run_errors.filter((e) => e.run_id === run.id),
    }));
}

/** The run written by the fixture's 'people' scenario, checked in full. */
function assertPeopleRun(dump, { outcome = 'success' } = {}) {
  const [entry, ...more] = runsOf(dump, 'people');
  assert.ok(entry, 'the people run is in the database');
  assert.equal(more.length, 0, 'exactly one people run');
  const { run, steps, errors } = entry;
  assert.equal(run.outcome, outcome);
  assert.equal(run.club_slug, 'rondo');
  assert.deepEqual(
    steps.map((s) => [s.step_name, s.outcome, s.created_count, s.updated_count, s.skipped_count, s.failed_count]),
    [
      ['sportlink-download', 'success', 120, 0, 0, 0],
      ['laposta-submit', 'success', 3, 5, 0, 2],
      ['rondo-club-sync', 'failure', 0, 0, 0, 0],
    ],
  );
  assert.deepEqual([run.total_created, run.total_updated, run.total_failed], [123, 5, 2]);
  assert.deepEqual(
    errors.map((e) => [e.step_name, e.member_identifier, e.error_message]),
    [
      ['laposta-submit', 'KNVB1', 'bad email'],
      ['laposta-submit', 'x@example.org', 'quota'],
      ['rondo-club-sync', null, 'Error: connection refused'],
    ],
  );
  return entry;
}

module.exports = {
  Daemon,
  PYTHON,
  REPO,
  assertPeopleRun,
  dumpDb,
  request,
  runPipeline,
  runsOf,
  spoolFiles,
  tmpRoot,
  waitFor,
};
