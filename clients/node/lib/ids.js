'use strict';
/**
 * Time-ordered uids (UUIDv7, RFC 9562) and timestamps for events, runs and steps.
 *
 * 48 bits of Unix milliseconds, version 7, the RFC variant, random bits: they
 * sort by creation time (the daemon's UNIQUE indexes stay append-mostly) and
 * need no coordination between processes.  Random bytes come from a pool
 * refilled by `crypto.randomFillSync`, so a uid costs no syscall of its own.
 */

const crypto = require('node:crypto');

const POOL_SIZE = 4096;
const pool = Buffer.allocUnsafe(POOL_SIZE);
let poolPos = POOL_SIZE;
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

function randomBytes10() {
  if (poolPos + 10 > POOL_SIZE) {
    crypto.randomFillSync(pool);
    poolPos = 0;
  }
  const at = poolPos;
  poolPos += 10;
  return at;
}

/** Unix epoch milliseconds on this machine's clock (the events' `ts`). */
function nowMs() {
  return Date.now();
}

/** A new UUIDv7 as its canonical 36-character string; `ms` defaults to now. */
function uuid7(ms = Date.now()) {
  const r = randomBytes10();
  const hi = Math.floor(ms / 0x1000000) & 0xffffff; // top 24 of the 48 time bits
  const lo = ms % 0x1000000; // bottom 24
  const t =
    hi.toString(16).padStart(6, '0') + lo.toString(16).padStart(6, '0');
  const b = pool;
  return (
    t.slice(0, 8) +
    '-' +
    t.slice(8, 12) +
    '-' +
    '7' +
    HEX[b[r] & 0x0f].slice(1) +
    HEX[b[r + 1]] +
    '-' +
    HEX[0x80 | (b[r + 2] & 0x3f)] +
    HEX[b[r + 3]] +
    '-' +
    HEX[b[r + 4]] +
    HEX[b[r + 5]] +
    HEX[b[r + 6]] +
    HEX[b[r + 7]] +
    HEX[b[r + 8]] +
    HEX[b[r + 9]]
  );
}

module.exports = { nowMs, uuid7 };
