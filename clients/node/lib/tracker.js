'use strict';
/**
 * RunTracker: the old `lib/run-tracker.js` API (seeds/2-run-tracker.plan.md),
 * as events for the daemon instead of SQLite writes.
 *
 * What it keeps from the old tracker is what pipelines rely on: synchronous
 * methods, outcome defaults to success, messages cut to 2000 characters and
 * stacks to 4000, `recordErrors` takes an array or a count, and nothing
 * throws: every public method is wrapped, a problem is one `[runtally] ...`
 * line on stderr, and calls without an open run are no-ops returning null.
 * The semantics are the Python client's (`runtally/client/_tracker.py`).
 *
 * Durations are measured with `performance.now()` (monotonic) and sent as
 * `duration_ms`; `ts` is the wall clock in epoch milliseconds.
 */

const { performance } = require('node:perf_hooks');
const coerce = require('./coerce');
const { getClient } = require('./client');
const { uuid7 } = require('./ids');
const { runMeta } = require('./meta');
const { resolvePaths } = require('./paths');
const { warn, warnOnce } = require('./warn');

/** A run's uid, exported while it is open, so a child process's run nests under it. */
const PARENT_ENV = 'RUNTALLY_PARENT_RUN';
const MEMBER_KEYS = Object.freeze(['knvb_id', 'email', 'dossier_id', 'team_name', 'commissie_name']);
const STEP_OUTCOMES = ['success', 'failure', 'skipped'];
const RUN_OUTCOMES = ['success', 'failure'];

function elapsedMs(started) {
  return Math.max(0, Math.round(performance.now() - started));
}

function isObject(value) {
  return value !== null && typeof value === 'object';
}

function first(opts, ...keys) {
  for (const key of keys) {
    if (opts[key] != null) return opts[key];
  }
  return undefined;
}

/** Never let a tracking problem reach the pipeline: warn once, return null. */
function safe(name, fn) {
  return function wrapped(...args) {
    try {
      return fn.apply(this, args);
    } catch (err) {
      const kind = (err && err.name) || typeof err;
      warnOnce(`tracker-${name}-${kind}`, `RunTracker.${name} failed (${coerce.str(err)}); the pipeline continues`);
      return null;
    }
  };
}

class RunTracker {
  /**
   * `pipeline`: the pipeline's name ('people', 'nikki', ...).  Options:
   * `clubSlug` (stored default 'rondo'), `socket` and `spool` (default:
   * RUNTALLY_SOCKET / RUNTALLY_SPOOL, then runtally's default paths),
   * `memberKeys` (where `recordErrors` looks for the member), `captureArgv`
   * (put the redacted argv in the run's meta; default true),
   * `client` (a Client to use instead of the process's shared one).
   */
  constructor(pipeline, options = {}) {
    this.runId = null;
    this.pipeline = 'unknown';
    this.clubSlug = undefined;
    this.memberKeys = MEMBER_KEYS;
    this._client = null;
    this._steps = new Map();
    this._runStarted = 0;
    this._envToken = null;
    this._noopWarned = false;
    this._captureArgv = true;
    try {
      const opts = isObject(options) ? options : {};
      this.pipeline = coerce.name(pipeline, 'pipeline', 'unknown');
      this.clubSlug = coerce.text(first(opts, 'clubSlug', 'club_slug'), coerce.MAX_NAME).trim() || undefined;
      if (opts.memberKeys != null) {
        const keys = typeof opts.memberKeys === 'string' ? [opts.memberKeys] : Array.from(opts.memberKeys);
        this.memberKeys = keys.map(String);
      }
      if (opts.captureArgv === false) this._captureArgv = false;
      if (opts.client) {
        this._client = opts.client;
      } else {
        const paths = resolvePaths(opts);
        this._client = getClient(paths.socket, paths.spool, opts.clientOptions);
      }
    } catch (err) {
      warn(`RunTracker could not be set up (${coerce.str(err)}); tracking is disabled`);
    }
  }

  /** The Client events go to; null if setting the tracker up failed. */
  get client() {
    return this._client;
  }

  _hasRun(method) {
    if (this.runId !== null) return true;
    if (!this._noopWarned) {
      this._noopWarned = true;
      warn(`RunTracker.${method} without an open run (startRun first); ignored`);
    }
    return false;
  }

  _emit(event) {
    if (this._client !== null) this._client.emit(event);
  }

  _restoreEnv() {
    const token = this._envToken;
    this._envToken = null;
    if (token === null) return;
    const [runId, previous] = token;
    if (process.env[PARENT_ENV] !== runId) return; // someone else changed it since
    if (previous === undefined) delete process.env[PARENT_ENV];
    else process.env[PARENT_ENV] = previous;
  }

  _describe(item) {
    if (typeof item === 'string') return [null, item, null];
    if (!isObject(item)) return [null, item, null];
    let member = null;
    for (const key of this.memberKeys) {
      const value = item[key];
      if (value != null && value !== '') {
        member = value;
        break;
      }
    }
    let stack = item.stack;
    if (item instanceof Error) return [member, coerce.errorText(item), stack];
    let message = item.message || item.error;
    if (message instanceof Error) {
      stack = stack || message.stack;
      message = coerce.errorText(message);
    }
    if (message == null || message === '') message = item;
    return [member, message, stack];
  }
}

/** Start a run; returns its uid.  Links it under `parent` or $RUNTALLY_PARENT_RUN. */
RunTracker.prototype.startRun = safe('startRun', function startRun(parent) {
  if (this.runId !== null) {
    warn(`startRun while run ${this.runId} is open; that run is left unfinished`);
    this._restoreEnv();
  }
  const parentId = coerce.uid(parent != null ? parent : process.env[PARENT_ENV], 'parent');
  const ts = Date.now();
  const runId = uuid7(ts);
  this._emit({
    type: 'run_start',
    id: uuid7(ts),
    ts,
    run: runId,
    pipeline: this.pipeline,
    club_slug: this.clubSlug,
    parent: parentId,
    meta: runMeta({ captureArgv: this._captureArgv }),
  });
  this.runId = runId;
  this._runStarted = performance.now();
  this._steps.clear();
  this._noopWarned = false;
  this._envToken = [runId, process.env[PARENT_ENV]];
  process.env[PARENT_ENV] = runId;
  return runId;
});

/** Finish the run: outcome success/failure, `stats` kept as its summary. */
RunTracker.prototype.endRun = safe('endRun', function endRun(success = true, stats) {
  if (!this._hasRun('endRun')) return null;
  const ts = Date.now();
  this._emit({
    type: 'run_end',
    id: uuid7(ts),
    ts,
    run: this.runId,
    outcome: coerce.outcome(success, RUN_OUTCOMES),
    summary: coerce.plain(stats),
    duration_ms: elapsedMs(this._runStarted),
  });
  this.runId = null;
  this._steps.clear();
  this._restoreEnv();
  return null;
});

/**
 * Safety net: end an open run as a failure.  Synchronous like the old one;
 * the events are already written ahead, and the process's exit hooks wait
 * (briefly) for their acks.  `flush()` returns a Promise for who wants to wait.
 */
RunTracker.prototype.close = safe('close', function close() {
  if (this.runId !== null) {
    warn(`run ${this.runId} closed without endRun; recorded as a failure`);
    this.endRun(false, { reason: 'closed without endRun' });
  }
  this._restoreEnv();
  return null;
});

/** Wait up to `timeoutMs` for the acks of everything emitted; a Promise of true/false. */
RunTracker.prototype.flush = function flush(timeoutMs) {
  try {
    return this._client === null ? Promise.resolve(false) : this._client.flush(timeoutMs);
  } catch {
    return Promise.resolve(false);
  }
};

/** Start a step of the open run; returns its uid. */
RunTracker.prototype.startStep = safe('startStep', function startStep(stepName) {
  if (!this._hasRun('startStep')) return null;
  const name = coerce.name(stepName, 'step name', 'step');
  const ts = Date.now();
  const stepId = uuid7(ts);
  this._emit({ type: 'step_start', id: uuid7(ts), ts, run: this.runId, step: stepId, name });
  this._steps.set(stepId, { name, started: performance.now() });
  return stepId;
});

/** Finish a step: `{outcome, created, updated, skipped, failed, detail}` (all optional). */
RunTracker.prototype.endStep = safe('endStep', function endStep(stepId, opts) {
  if (!this._hasRun('endStep')) return null;
  const o = isObject(opts) ? opts : { outcome: opts };
  const sid = coerce.uid(stepId, 'stepId');
  if (sid === undefined) return null; // startStep failed (and said so) or had no run
  const step = this._steps.get(sid);
  this._steps.delete(sid);
  const ts = Date.now();
  this._emit({
    type: 'step_end',
    id: uuid7(ts),
    ts,
    run: this.runId,
    step: sid,
    outcome: coerce.outcome(o.outcome, STEP_OUTCOMES),
    created: coerce.count(o.created, 'created'),
    updated: coerce.count(o.updated, 'updated'),
    skipped: coerce.count(o.skipped, 'skipped'),
    failed: coerce.count(o.failed, 'failed'),
    detail: coerce.plain(o.detail),
    duration_ms: step !== undefined ? elapsedMs(step.started) : undefined,
  });
  return null;
});

/**
 * Record one error row: `{stepName, stepId, memberIdentifier, errorMessage,
 * errorStack}`; returns its event id.  `errorMessage` may be an Error: its
 * text, and its stack when none is given.
 */
RunTracker.prototype.recordError = safe('recordError', function recordError(opts, ...rest) {
  let stepName;
  let stepId;
  let member;
  let message;
  let stack;
  if (isObject(opts) && !(opts instanceof Error)) {
    stepName = first(opts, 'stepName', 'step_name');
    stepId = first(opts, 'stepId', 'step_id');
    member = first(opts, 'memberIdentifier', 'member_identifier');
    message = first(opts, 'errorMessage', 'error_message') ?? '';
    stack = first(opts, 'errorStack', 'error_stack');
  } else {
    [stepName, stepId, member, message = '', stack] = [opts, ...rest];
  }
  if (!this._hasRun('recordError')) return null;
  const sid = coerce.uid(stepId, 'stepId');
  if (stepName == null && sid !== undefined && this._steps.has(sid)) stepName = this._steps.get(sid).name;
  if (message instanceof Error) {
    stack = stack || message.stack;
    message = coerce.errorText(message);
  }
  const ts = Date.now();
  const eventId = uuid7(ts);
  this._emit({
    type: 'error',
    id: eventId,
    ts,
    run: this.runId,
    step_name: coerce.name(stepName, 'step name', 'step'),
    message: coerce.text(message, coerce.MAX_MESSAGE),
    step: sid,
    member: coerce.text(member, coerce.MAX_MEMBER) || undefined,
    stack: coerce.text(stack, coerce.MAX_STACK) || undefined,
  });
  return eventId;
});

/**
 * Record a step's errors: an array of objects/Errors/strings, or a count.
 * A count n > 0 records one error "Step reported n error(s)".  The member is
 * the first of knvb_id, email, dossier_id, team_name, commissie_name; the
 * message `.message` or `.error`; the stack `.stack`.  Returns how many rows.
 */
RunTracker.prototype.recordErrors = safe('recordErrors', function recordErrors(stepName, stepId, errors) {
  if (!this._hasRun('recordErrors')) return null;
  if (errors == null) return 0;
  if (typeof errors === 'number' || typeof errors === 'bigint') {
    const n = coerce.count(errors, 'errors');
    if (n <= 0) return 0;
    this.recordError(stepName, stepId, null, `Step reported ${n} error(s)`);
    return 1;
  }
  let items = errors;
  if (typeof errors === 'string' || errors instanceof Error || typeof errors[Symbol.iterator] !== 'function') {
    items = [errors];
  }
  let recorded = 0;
  for (const item of items) {
    const [member, message, stack] = this._describe(item);
    if (this.recordError(stepName, stepId, member, message, stack) !== null) recorded += 1;
  }
  return recorded;
});

module.exports = { MEMBER_KEYS, PARENT_ENV, RunTracker };
