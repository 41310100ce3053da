'use strict';
// The Node client against a real daemon (a subprocess from the venv).

const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { test } = require('node:test');
const { Daemon, assertPeopleRun, runPipeline, runsOf, spoolFiles, tmpRoot, waitFor } = require('./helpers');

/** Start a daemon in `root`, stopped after the test. */
async function daemon(t, root, options) {
  const d = await new Daemon(root, options).start();
  t.after(() => d.stop('SIGKILL'));
  return d;
}

test('daemon up: every call lands, the spool file is removed at exit', async (t) => {
  for (const scenario of ['people', 'people-async']) {
    const d = await daemon(t, tmpRoot(t));
    const r = await runPipeline(scenario, { socket: d.socket, spool: d.spool });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '', 'nothing on stderr');
    assert.ok(r.ms < 5000, `an open connection does not keep it alive: exited in ${r.ms} ms`);
    assertPeopleRun(d.dump());
    assert.deepEqual(spoolFiles(d.spool), [], 'acked before exit: no spool file left');
  }
});

test('run meta, summary, parent env: what the run_start carries', async (t) => {
  const root = tmpRoot(t);
  const d = await daemon(t, root);
  const r = await runPipeline('people', {
    socket: d.socket,
    spool: d.spool,
    env: { RUNTALLY_GIT_SHA: 'abc123' },
  });
  assert.equal(r.code, 0, r.stderr);
  const { run } = assertPeopleRun(d.dump());
  const meta = JSON.parse(run.meta_json);
  assert.equal(meta.host, require('node:os').hostname());
  assert.equal(meta.node, process.version);
  assert.equal(meta.git_sha, 'abc123');
  assert.equal(typeof meta.pid, 'number');
  assert.ok(meta.argv.some((a) => a.endsWith('pipeline.js')));
  assert.deepEqual(JSON.parse(run.summary_json).downloaded, 120);
});

test('daemon down, then started mid-run: the run is complete, nothing left behind', async (t) => {
  const root = tmpRoot(t);
  const d = new Daemon(root);
  t.after(() => d.stop('SIGKILL'));
  const go = path.join(root, 'go');
  let started;
  const r = await runPipeline('people-wait-go', {
    socket: d.socket,
    spool: d.spool,
    env: { GO_FILE: go },
    onLine: (line) => {
      if (line !== 'ready') return;
      started = (async () => {
        // The first step is in the spool (written ahead), its writer alive:
        // the daemon starting now must not replay it under the writer.
        assert.equal(spoolFiles(d.spool).length, 1);
        await d.start();
        fs.writeFileSync(go, '');
      })();
    },
  });
  await started;
  assert.equal(r.code, 0, r.stderr);
  assertPeopleRun(d.dump());
  assert.deepEqual(spoolFiles(d.spool), []);
});

test('killed with SIGKILL while the daemon is down: the spool is replayed once the writer is gone', async (t) => {
  const root = tmpRoot(t);
  const d = new Daemon(root);
  t.after(() => d.stop('SIGKILL'));
  const r = runPipeline('people-hang', {
    socket: d.socket,
    spool: d.spool,
    onLine: async (line, child) => {
      if (line !== 'ready') return;
      await d.start();
      // Alive: never replayed under it, however long we look.
      const deadline = Date.now() + 1000;
      while (Date.now() < deadline) {
        assert.equal(spoolFiles(d.spool).length, 1, 'the live writer keeps its file');
        await new Promise((res) => setTimeout(res, 100));
      }
      child.kill('SIGKILL');
    },
  });
  const result = await r;
  assert.equal(result.signal, 'SIGKILL');
  await waitFor(() => spoolFiles(d.spool).length === 0, 'the replay of the dead writer');
  const [entry] = runsOf(d.dump(), 'people');
  assert.equal(entry.run.outcome, 'running');
  assert.deepEqual(entry.steps.map((s) => [s.step_name, s.created_count]), [['sportlink-download', 120]]);
  assert.deepEqual(entry.errors.map((e) => e.error_message), ['Step reported 2 error(s)']);
});

test('killed with SIGKILL while connected: what it recorded is in the database', async (t) => {
  const root = tmpRoot(t);
  const d = await daemon(t, root);
  const result = await runPipeline('people-hang', {
    socket: d.socket,
    spool: d.spool,
    env: { SETTLE_MS: '50' },
    onLine: (line, child) => line === 'ready' && child.kill('SIGKILL'),
  });
  assert.equal(result.signal, 'SIGKILL');
  await waitFor(() => runsOf(d.dump(), 'people')[0]?.errors.length === 1, 'the events');
  await waitFor(() => spoolFiles(d.spool).length === 0, 'the dead writer\'s file to be taken');
  const [entry] = runsOf(d.dump(), 'people');
  assert.deepEqual(entry.steps.map((s) => [s.step_name, s.created_count]), [['sportlink-download', 120]]);
});

test('child_process.fork children: their runs nest under the parent run', async (t) => {
  const root = tmpRoot(t);
  const d = await daemon(t, root);
  const r = await runPipeline('fork-parent', { socket: d.socket, spool: d.spool });
  assert.equal(r.code, 0, r.stderr);
  const dump = d.dump();
  const [parent] = runsOf(dump, 'all');
  assert.equal(parent.run.outcome, 'success');
  for (const n of [1, 2]) {
    const [child] = runsOf(dump, `child-${n}`);
    assert.equal(child.run.parent_run_id, parent.run.id);
    assert.equal(child.run.outcome, 'success');
    assert.equal(child.steps[0].created_count, n);
    assert.notEqual(JSON.parse(child.run.meta_json).pid, JSON.parse(parent.run.meta_json).pid);
  }
  assert.deepEqual(spoolFiles(d.spool), []);
});

test('a wedged daemon that accepts but never acks: the pipeline exits, nothing is lost', async (t) => {
  const root = tmpRoot(t);
  const socket = path.join(root, 'd.sock');
  const spool = path.join(root, 'spool');
  const server = net.createServer((conn) => {
    conn.on('data', () => {}); // reads, never answers
    conn.on('error', () => {});
  });
  await new Promise((resolve) => server.listen(socket, resolve));
  let doneAt = 0;
  const onLine = (line) => {
    if (line === 'done') doneAt = Date.now();
  };
  const started = Date.now();
  const r = await runPipeline('many', { socket, spool, env: { PRINT_DONE: '1' }, onLine });
  await new Promise((resolve) => server.close(resolve));
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.ms < 10000, `exited in ${r.ms} ms`);
  // The wait at exit is one flushTimeoutMs (2 s) in all, however many rounds of
  // beforeExit (a new user measured 4 s); 1.5 s of slack for a loaded machine.
  const waited = started + r.ms - doneAt;
  assert.ok(doneAt > 0 && waited < 3500, `waited ${waited} ms at exit`);
  assert.match(r.stderr, /^\[runtally\] .*spooling events to/m);
  const files = spoolFiles(spool);
  assert.equal(files.reduce((n, f) => n + f.records, 0), 2 + 2 * 5000, 'every event is in the spool');
  // A real daemon on the same path replays it: the writer is gone.
  fs.rmSync(socket, { force: true });
  const d = await daemon(t, root);
  await waitFor(() => spoolFiles(spool).length === 0, 'the replay');
  const [entry] = runsOf(d.dump(), 'many');
  assert.equal(entry.run.outcome, 'success');
  assert.equal(entry.steps.length, 5000);
  assert.equal(entry.run.total_created, 5000);
});

test('the socket path is missing: no throw, no wait, events spooled for later', async (t) => {
  const root = tmpRoot(t);
  const socket = path.join(root, 'no', 'such', 'dir', 'd.sock');
  const spool = path.join(root, 'spool');
  const r = await runPipeline('people', { socket, spool });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '', 'a daemon that is not there is routine: nothing on stderr');
  assert.ok(r.ms < 5000, `exited in ${r.ms} ms`);
  assert.equal(spoolFiles(spool).reduce((n, f) => n + f.records, 0), 11);
  // A daemon of that spool directory replays it.
  const d = await daemon(t, root);
  await waitFor(() => spoolFiles(spool).length === 0, 'the replay');
  assertPeopleRun(d.dump());
});

test('an unwritable spool: the daemon still gets every event, one warning', async (t) => {
  const root = tmpRoot(t);
  const d = await daemon(t, root);
  const blocker = path.join(root, 'file');
  fs.writeFileSync(blocker, '');
  const spool = path.join(blocker, 'spool'); // ENOTDIR, even for root
  const r = await runPipeline('people-async', { socket: d.socket, spool });
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^\[runtally\] cannot create a spool file in .*: ENOTDIR/);
  assertPeopleRun(d.dump());
});

test('an unwritable spool and no daemon: the pipeline still succeeds, the loss is reported', async (t) => {
  const root = tmpRoot(t);
  const blocker = path.join(root, 'file');
  fs.writeFileSync(blocker, '');
  const r = await runPipeline('people', { socket: path.join(root, 'd.sock'), spool: path.join(blocker, 'spool') });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /^\[runtally\] cannot create a spool file/m);
  assert.match(r.stderr, /^\[runtally\] 11 events were lost/m);
});

test('a spool directory anyone may write: nothing is spooled there, the loss is reported', async (t) => {
  // The daemon never replays such a directory (nor does the Python client write
  // one): found from outside, a 1777 directory took the events silently.
  for (const mode of [0o1777, 0o777]) {
    const root = tmpRoot(t);
    const spool = path.join(root, 'spool');
    fs.mkdirSync(spool);
    fs.chmodSync(spool, mode);
    const r = await runPipeline('people', { socket: path.join(root, 'd.sock'), spool });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^\[runtally\] cannot create a spool file .*writable by others/m);
    assert.match(r.stderr, /^\[runtally\] 11 events were lost/m);
    assert.deepEqual(fs.readdirSync(spool), []);
  }
});
