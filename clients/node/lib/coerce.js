'use strict';
/**
 * Make whatever a pipeline passes acceptable to the protocol: warn, never throw.
 *
 * The daemon refuses an invalid event (and keeps it in `dead_letters`), so a
 * bad argument would cost a row.  Repairing it here keeps the row, as the
 * Python client does (`runtally/client/_coerce.py`): a negative count becomes
 * 0, a non-string name becomes `String(name)`, a free-form outcome is mapped
 * onto the protocol's, an unencodable `detail` becomes plain data.  Each kind
 * of repair is reported once per process.
 *
 * Text that UTF-8 cannot encode: a JavaScript string may hold lone UTF-16
 * surrogates, which UTF-8 cannot carry (the daemon would refuse the whole
 * frame as invalid UTF-8).  Every string of an event goes through
 * `cleanText`, which replaces them by U+FFFD (`String.prototype.toWellFormed`).
 */

const { warnOnce } = require('./warn');

// Loaded lazily: codec needs nothing from here, but keep the graph acyclic.
let encodedSize;

const MAX_NAME = 256;
const MAX_UID = 128;
const MAX_MESSAGE = 2000;
const MAX_STACK = 4000;
const MAX_MEMBER = 512;
/**
 * Counts are capped at 2^53 - 1: the protocol allows up to 2^62, but a
 * JavaScript number is exact only this far (and is encoded as an integer).
 */
const MAX_COUNT = Number.MAX_SAFE_INTEGER;
/** `detail`/`summary` nesting deeper than this is replaced by DEPTH_MARKER. */
const MAX_DEPTH = 32;
const DEPTH_MARKER = '<nested deeper than 32 levels>';
/** `detail`/`summary` bigger than this once encoded are replaced by a short repr. */
const MAX_PLAIN_BYTES = 256 * 1024;

const SUCCESS = new Set(['success', 'succeeded', 'ok', 'passed', 'pass', 'done', 'true', 'yes']);
const FAILURE = new Set(['failure', 'failed', 'fail', 'error', 'errored', 'false', 'no', 'crashed']);
const SKIPPED = new Set(['skipped', 'skip', 'skipping']);

// Node 18 (Debian bookworm's) has no isWellFormed/toWellFormed: the same by regex.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** `value` with lone surrogates replaced by U+FFFD; valid text is returned as is. */
const cleanText =
  typeof String.prototype.toWellFormed === 'function'
    ? (value) => (value.isWellFormed() ? value : value.toWellFormed())
    : (value) => value.replace(LONE_SURROGATE, '\ufffd');

/** The first `limit` code points of `s` (never splits a surrogate pair). */
function cut(s, limit) {
  if (s.length <= limit) return s;
  let units = 0;
  let points = 0;
  while (units < s.length && points < limit) {
    const code = s.charCodeAt(units);
    units += code >= 0xd800 && code <= 0xdbff && units + 1 < s.length ? 2 : 1;
    points += 1;
  }
  return s.slice(0, units);
}

/** `String(value)`, or a JSON rendering of a plain object; never throws. */
function str(value) {
  try {
    if (value instanceof Error) return errorText(value);
    if (value !== null && typeof value === 'object') {
      const proto = Object.getPrototypeOf(value);
      if (Array.isArray(value) || proto === Object.prototype || proto === null) {
        return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? String(v) : v));
      }
    }
    return String(value);
  } catch {
    try {
      return Object.prototype.toString.call(value);
    } catch {
      return '<unprintable>';
    }
  }
}

/** `Name: message` of an error, as a stack trace's first line shows it. */
function errorText(err) {
  let name = 'Error';
  let message = '';
  try {
    name = String(err.name || (err.constructor && err.constructor.name) || 'Error');
    message = err.message == null ? '' : String(err.message);
  } catch {
    // a getter that throws: keep what we have
  }
  return message ? `${name}: ${message}` : name;
}

/** `value` as a string of at most `limit` characters (null/undefined -> ""). */
function text(value, limit) {
  if (value == null) return '';
  return cut(cleanText(typeof value === 'string' ? value : str(value)), limit);
}

/** A protocol name: 1 to 256 characters, else `fallback` (with a warning). */
function name(value, what, fallback) {
  const result = text(value, MAX_NAME).trim();
  if (!result) {
    warnOnce(`name-${what}`, `empty ${what} ${JSON.stringify(str(value))}; using '${fallback}'`);
    return fallback;
  }
  return result;
}

/**
 * A uid: 1 to 128 characters, or undefined when absent or unusable.  Only a
 * string (what startRun/startStep return): anything else is a pipeline's slip,
 * said once; its text named a step that never started and parked the event
 * for days, out of sight (found from outside).
 */
function uid(value, what) {
  if (value == null || value === '') return undefined;
  if (typeof value !== 'string') {
    warnOnce(`uid-type-${what}`, `ignoring ${what} of type ${typeof value}: a uid is the string that startRun/startStep returned`);
    return undefined;
  }
  const result = cleanText(value);
  if (result.length < 1 || result.length > MAX_UID) {
    warnOnce(`uid-${what}`, `ignoring ${what} '${result.slice(0, 40)}': not a 1-128 character uid`);
    return undefined;
  }
  return result;
}

/** A count: an integer from 0 to 2^62 (null, bad or negative -> clamped, with a warning). */
function count(value, what) {
  if (value == null) return 0;
  if (typeof value === 'boolean') return value ? 1 : 0;
  let result;
  if (typeof value === 'bigint') {
    result = value;
  } else if (typeof value === 'number' || typeof value === 'string') {
    const number = typeof value === 'string' ? (value.trim() === '' ? NaN : Number(value)) : value;
    if (!Number.isFinite(number)) {
      warnOnce(`count-${what}`, `${what}=${str(value).slice(0, 60)} is not a count; using 0`);
      return 0;
    }
    result = Math.trunc(number);
  } else if (Array.isArray(value) || typeof value === 'object') {
    // a list of errors passed where its length was meant
    result = value.length ?? value.size ?? Object.keys(value).length;
    if (typeof result !== 'number') return 0;
  } else {
    warnOnce(`count-${what}`, `${what} of type ${typeof value} is not a count; using 0`);
    return 0;
  }
  if (result < 0) {
    warnOnce(`count-neg-${what}`, `${what}=${result} is negative; using 0`);
    return 0;
  }
  if (typeof result === 'bigint') return result > BigInt(MAX_COUNT) ? MAX_COUNT : Number(result);
  return Math.min(result, MAX_COUNT);
}

/** Map `value` onto `allowed`; anything unrecognised means failure (with a warning). */
function outcome(value, allowed, fallback = 'success') {
  if (value == null) return fallback;
  let mapped = '';
  if (typeof value === 'string') {
    const key = value.trim().toLowerCase();
    if (allowed.includes(key)) {
      if (key !== value) warnOnce(`outcome-${value}`, `outcome '${value}' read as '${key}'`);
      return key;
    }
    if (SUCCESS.has(key)) mapped = 'success';
    else if (SKIPPED.has(key)) mapped = allowed.includes('skipped') ? 'skipped' : 'success';
    else if (FAILURE.has(key)) mapped = 'failure';
  } else if (typeof value === 'boolean' || typeof value === 'number') {
    mapped = value ? 'success' : 'failure';
  }
  if (!mapped) {
    warnOnce(`outcome-?${str(value)}`.slice(0, 80), `unknown outcome ${str(value)}; recorded as failure`);
    return 'failure';
  }
  if (typeof value !== 'boolean') {
    warnOnce(`outcome-${str(value)}`.slice(0, 80), `outcome ${str(value)} recorded as '${mapped}'`);
  }
  return mapped;
}

/**
 * `value` as JSON-like data (string-keyed objects, arrays, strings, numbers,
 * booleans, null) for `detail`/`summary`, as JSON.stringify would see it:
 * `toJSON` is honoured (Dates become ISO strings), functions and undefined
 * are left out, Maps become objects, Sets and typed arrays arrays, BigInts
 * numbers (or strings past 2^53), cycles the string "[Circular]", nesting
 * past 32 levels DEPTH_MARKER.  Over 256 KiB encoded: a short repr instead.
 */
function plain(value) {
  if (value === undefined || value === null) return undefined;
  let result;
  try {
    result = toPlain(value, 0, new Set(), '');
    encodedSize ??= require('./codec').encodedSize;
    const size = encodedSize(result);
    if (size > MAX_PLAIN_BYTES) {
      warnOnce('plain-size', `a ${size}-byte detail/summary was cut to a short repr`);
      return { truncated: true, bytes: size, repr: text(value, 4000) };
    }
  } catch (err) {
    warnOnce(`plain-${typeof value}`, `cannot encode a ${typeof value}: ${errorText(err)}`);
    return { unencodable: text(value, 4000) };
  }
  return result;
}

function toPlain(value, depth, seen, key) {
  if (value === null) return null;
  switch (typeof value) {
    case 'string':
      return cleanText(value);
    case 'number':
      return Number.isFinite(value) ? value : null;
    case 'boolean':
      return value;
    case 'bigint':
      return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)
        ? Number(value)
        : String(value);
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
    default:
      break;
  }
  if (depth >= MAX_DEPTH) return DEPTH_MARKER;
  if (seen.has(value)) return '[Circular]';
  if (typeof value.toJSON === 'function') {
    const json = value.toJSON(key);
    if (json !== value) return toPlain(json, depth, seen, key);
  }
  seen.add(value);
  try {
    if (Array.isArray(value) || value instanceof Set || ArrayBuffer.isView(value)) {
      const out = [];
      for (const item of Array.isArray(value) ? value : Array.from(value)) {
        const v = toPlain(item, depth + 1, seen, String(out.length));
        out.push(v === undefined ? null : v);
      }
      return out;
    }
    const out = {};
    const entries = value instanceof Map ? value.entries() : Object.entries(value);
    for (const [k, v] of entries) {
      const keyText = cleanText(typeof k === 'string' ? k : str(k));
      const item = toPlain(v, depth + 1, seen, keyText);
      if (item !== undefined) out[keyText] = item;
    }
    if (value instanceof Error) {
      out.name ??= cleanText(String(value.name));
      out.message ??= cleanText(String(value.message));
    }
    return out;
  } finally {
    seen.delete(value);
  }
}

module.exports = {
  DEPTH_MARKER,
  MAX_COUNT,
  MAX_MEMBER,
  MAX_MESSAGE,
  MAX_NAME,
  MAX_STACK,
  cleanText,
  count,
  errorText,
  name,
  outcome,
  plain,
  str,
  text,
  uid,
};
