'use strict';
// The pure parts: codec bytes, ids, coercion, redaction, the tracker's event shapes.

const assert = require('node:assert/strict');
const { test } = require('node:test');
const { decode } = require('@msgpack/msgpack');
const codec = require('../lib/codec');
const coerce = require('../lib/coerce');
const { resolvePaths } = require('../lib/paths');
const { RunTracker, redactArgv, uuid7 } = require('..');

/** A Client stand-in that keeps the events it is given (the tracker's seam). */
function capture() {
  const events = [];
  return { events, emit: (e) => events.push(decode(codec.encodeEvent(e).frame.subarray(4))) };
}

function tracker(options = {}) {
  const client = capture();
  return { t: new RunTracker('people', { client, ...options }), events: client.events };
}

test('a spool record is byte for byte the docs/protocol.md example', () => {
  const { record, frame } = codec.encodeEvent({
    type: 'run_end',
    id: 'e-43',
    ts: 1767225660000,
    run: 'r-1',
    outcome: 'success',
    summary: undefined, // optional fields left undefined are left out
  });
  assert.equal(
    Buffer.concat([codec.SPOOL_MAGIC, record]).toString('hex'),
    '524c53504f4f4c31' + '0000003a' + '38b62721' +
      '85a474797065a772756e5f656e64a26964a4652d3433a27473cf0000019b76db9260' +
      'a372756ea3722d31a76f7574636f6d65a773756363657373',
  );
  assert.deepEqual(frame.subarray(4), record.subarray(8));
  assert.equal(frame.readUInt32BE(0), 58);
  assert.deepEqual(codec.readRecords(Buffer.concat([codec.SPOOL_MAGIC, record, record.subarray(0, 9)])).length, 1);
});

test('an event over 1 MiB is refused, not framed', () => {
  assert.throws(() => codec.encodeEvent({ type: 'error', message: 'x'.repeat(1 << 20) }), RangeError);
});

test('uuid7: version 7, RFC variant, time-ordered', () => {
  const a = uuid7(1767225600000);
  assert.match(a, /^019b76da-a800-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.ok(uuid7(1767225600001) > a);
  assert.equal(new Set(Array.from({ length: 1000 }, () => uuid7(5))).size, 1000);
});

test('redactArgv: the Python client\'s rules', () => {
  assert.deepEqual(
    redactArgv(['node', 'x.js', '--password=hunter2', '--token', 'abc', '--verbose', 'API_KEY=k',
      'postgres://u:secret@db/x', '--api-key', '-v']),
    ['node', 'x.js', '--password=***', '--token', '***', '--verbose', 'API_KEY=***',
      'postgres://u:***@db/x', '--api-key', '-v'],
  );
});

test('counts: coerced like the Python client', () => {
  const cases = [[undefined, 0], [null, 0], [true, 1], [7, 7], [2.9, 2], ['12', 12], ['x', 0], [-3, 0],
    [NaN, 0], [[1, 2, 3], 3], [2 ** 70, Number.MAX_SAFE_INTEGER], [5n, 5]];
  for (const [value, expected] of cases) assert.equal(coerce.count(value, 'test'), expected, String(value));
});

test('outcomes: mapped onto the protocol\'s, unknown is failure', () => {
  const steps = ['success', 'failure', 'skipped'];
  assert.equal(coerce.outcome(undefined, steps), 'success');
  assert.equal(coerce.outcome('OK', steps), 'success');
  assert.equal(coerce.outcome('skip', steps), 'skipped');
  assert.equal(coerce.outcome('errored', steps), 'failure');
  assert.equal(coerce.outcome(false, steps), 'failure');
  assert.equal(coerce.outcome({}, steps), 'failure');
});

test('text: lone surrogates repaired, cut by code points', () => {
  assert.equal(coerce.text('a\ud800b', 10), 'a\ufffdb');
  assert.equal(coerce.text('😀😀😀', 2), '😀😀');
  assert.equal(coerce.text(new TypeError('bad'), 100), 'TypeError: bad');
});

test('plain: JSON-like, cycles and depth cut, never throws', () => {
  const cyclic = { n: 1 };
  cyclic.self = cyclic;
  let deep = {};
  const root = deep;
  for (let i = 0; i < 40; i++) deep = deep.next = {};
  const out = coerce.plain({ d: new Date(0), m: new Map([['k', 1]]), f() {}, big: 2n ** 64n, cyclic, root });
  assert.equal(out.d, '1970-01-01T00:00:00.000Z');
  assert.deepEqual(out.m, { k: 1 });
  assert.equal('f' in out, false);
  assert.equal(out.big, '18446744073709551616');
  assert.equal(out.cyclic.self, '[Circular]');
  assert.match(JSON.stringify(out.root), /<nested deeper than 32 levels>/);
});

test('calls without an open run are no-ops returning null', () => {
  const { t, events } = tracker();
  assert.equal(t.startStep('x'), null);
  assert.equal(t.endStep('s', { created: 1 }), null);
  assert.equal(t.recordErrors('x', null, 3), null);
  assert.equal(t.endRun(true), null);
  assert.deepEqual(events, []);
});

test('the old call shapes make the documented events', () => {
  const { t, events } = tracker({ clubSlug: 'club' });
  const runId = t.startRun();
  assert.equal(process.env.RUNTALLY_PARENT_RUN, runId);
  const stepId = t.startStep('laposta-submit');
  t.endStep(stepId, { outcome: 'success', created: 3, updated: '2', failed: [1, 2], detail: { a: 1 } });
  const n = t.recordErrors('laposta-submit', stepId, [
    { email: 'e@x', knvb_id: 'K1', message: 'first' },
    { dossier_id: 'D1', team_name: 'T', error: 'second' },
    { commissie_name: 'C', error: new RangeError('third') },
    'plain text',
    new Error('an error'),
  ]);
  assert.equal(n, 5);
  assert.equal(t.recordErrors('x', stepId, 0), 0);
  assert.equal(t.recordErrors('x', stepId, 4), 1);
  t.recordError({ stepName: 'y', stepId, errorMessage: 'm'.repeat(3000), errorStack: 's'.repeat(5000) });
  t.endRun(false, { stats: true });
  assert.equal(process.env.RUNTALLY_PARENT_RUN, undefined);
  const [start, stepStart, stepEnd, ...rest] = events;
  assert.equal(start.type, 'run_start');
  assert.equal(start.club_slug, 'club');
  assert.equal(start.pipeline, 'people');
  assert.equal(start.meta.node, process.version);
  assert.equal(stepStart.name, 'laposta-submit');
  assert.deepEqual(
    [stepEnd.outcome, stepEnd.created, stepEnd.updated, stepEnd.skipped, stepEnd.failed, stepEnd.detail],
    ['success', 3, 2, 0, 2, { a: 1 }],
  );
  assert.equal(typeof stepEnd.duration_ms, 'number');
  const errors = rest.filter((e) => e.type === 'error');
  assert.deepEqual(
    errors.slice(0, 6).map((e) => [e.member, e.message]),
    [['K1', 'first'], ['D1', 'second'], ['C', 'RangeError: third'], [undefined, 'plain text'],
      [undefined, 'Error: an error'], [undefined, 'Step reported 4 error(s)']],
  );
  assert.match(errors[2].stack, /^RangeError: third/);
  const long = errors[6];
  assert.deepEqual([long.message.length, long.stack.length], [2000, 4000]);
  const end = rest.at(-1);
  assert.deepEqual([end.type, end.outcome, end.summary], ['run_end', 'failure', { stats: true }]);
  for (const e of events) assert.equal(e.run, runId);
});

test('nothing throws into the pipeline, whatever it passes', (t) => {
  const lines = [];
  t.mock.method(process.stderr, 'write', (line) => lines.push(String(line)) && true);
  const broken = { emit() { throw new Error('disk on fire'); } };
  const tr = new RunTracker(Symbol('odd'), { client: broken });
  assert.equal(tr.startRun(), null);
  const ok = tracker();
  ok.t.startRun();
  const hostile = { get message() { throw new Error('getter'); }, toString() { throw new Error('no'); } };
  assert.doesNotThrow(() => {
    ok.t.recordErrors('x', null, [hostile, null, 42n]);
    ok.t.endStep(ok.t.startStep(null), { outcome: Symbol('x'), created: {}, detail: hostile });
    ok.t.endRun(undefined, hostile);
    ok.t.close();
  });
  assert.ok(lines.every((l) => l.startsWith('[runtally] ')), lines.join(''));
});

test('relative socket and spool paths are made absolute once, from the working directory', () => {
  const got = resolvePaths({ socket: 'rel/d.sock' }, { RUNTALLY_SPOOL: './sp/' });
  assert.equal(got.socket, require('node:path').join(process.cwd(), 'rel', 'd.sock'));
  assert.equal(got.spool, require('node:path').join(process.cwd(), 'sp'));
});

test('a step id that is not a string is said, not sent (the error lands on its run)', (t) => {
  // Found from outside: its text ("[object Object]", "<unprintable>", "42") named a
  // step that never started, and the daemon parked the events for days, out of sight.
  const lines = [];
  t.mock.method(process.stderr, 'write', (line) => lines.push(String(line)) && true);
  const { t: tr, events } = tracker();
  const runId = tr.startRun();
  for (const slip of [{}, 42, ['x'], new Proxy({}, {})]) {
    tr.endStep(slip, { created: 2 });
    tr.recordError({ stepName: 's', stepId: slip, errorMessage: 'a slip' });
  }
  tr.endRun(true);
  assert.ok(lines.some((l) => l.includes('ignoring stepId of type')), lines.join(''));
  assert.deepEqual(events.filter((e) => e.type === 'step_end'), []);
  const errors = events.filter((e) => e.type === 'error');
  assert.equal(errors.length, 4);
  for (const e of errors) assert.deepEqual([e.run, e.step], [runId, undefined]);
});
