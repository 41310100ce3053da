'use strict';
/**
 * Warnings on stderr: the only way the client ever reports a problem.
 *
 * A pipeline never sees an exception from tracking, but an operator must see
 * that tracking is degraded: one `[runtally] ...` line on stderr, and a
 * problem that repeats per event (a full disk) once per process.
 */

const warned = new Set();

/** Write `[runtally] message` to stderr; never throws (stderr may be closed). */
function warn(message) {
  try {
    process.stderr.write(`[runtally] ${message}\n`);
  } catch {
    // a broken stderr must not break the pipeline
  }
}

/** Warn the first time `key` is seen in this process; true if it warned. */
function warnOnce(key, message) {
  if (warned.has(key)) return false;
  warned.add(key);
  warn(message);
  return true;
}

module.exports = { warn, warnOnce };
