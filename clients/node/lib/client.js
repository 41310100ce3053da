'use strict';
/**
 * The per-process connection to the daemon: write ahead, send without waiting.
 *
 * Theory of operation
 * -------------------
 * A tracking call is synchronous and short: `emit` encodes the event,
 * appends its record to this process's spool file (`fs.writeSync`: the
 * write-ahead log), and, when connected, hands its frame to the socket
 * (`socket.write`, which never blocks: what the kernel does not take waits in
 * the stream's buffer).  Everything else happens on the event loop, between
 * the pipeline's own awaits, never inside a call:
 *
 *   state       | emit does                         | on the event loop
 *   ------------+-----------------------------------+------------------------------------
 *   idle        | spool; start connecting if the    | -
 *               | backoff allows                    |
 *   connecting  | spool only                        | connected: resend the spool file's
 *               |                                   | records, then -> connected;
 *               |                                   | failed -> idle (backoff 0.25 s .. 5 s)
 *   connected   | spool, then send (window full:    | replies: an ack/nack answers the
 *               | spool only, the "backlog")        | oldest unanswered frame; all answered:
 *               |                                   | send the backlog from the file, or,
 *               |                                   | none, cut the file back to its header
 *   (broken)    | the socket errs or ends, an `error` reply, more than `maxOut` bytes unsent, or a
 *               | flush times out: drop the socket -> idle; the unacked events are in the spool
 *
 * So the spool file always holds every event not seen acked, and a SIGKILL
 * loses nothing whose call returned: the daemon replays the file once this
 * process is gone (docs/protocol.md, "Lockless writers").  Events are resent
 * on the next connection (duplicates are harmless: the daemon applies by id).
 *
 * The socket is `unref()`'d: an open connection never keeps a pipeline
 * alive.  At `beforeExit` the client may wait (bounded, `flushTimeoutMs`)
 * for the acks of what is still in flight, so that the file can be cut back
 * and removed; at `exit` only synchronous work is possible: the file, if it
 * holds events, is synced and left for the daemon.
 *
 * Nothing in here throws to the caller.
 */

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { ReplyDecoder, encodeRecord, frameOf, frameOfRecord } = require('./codec');
const { SpoolWriter } = require('./spool');
const { trustedUids, untrustedDirectory } = require('./trust');
const { warn, warnOnce } = require('./warn');

const DEFAULTS = Object.freeze({
  /** ms `flush()` (and `beforeExit`) waits for acks by default. */
  flushTimeoutMs: 2000,
  /** Unacked events kept per connection; more means the daemon is not keeping up. */
  window: 4096,
  /** Bytes the socket has not taken yet; more means the daemon is not reading. */
  maxOut: 1 << 20,
  backoffInitialMs: 250,
  backoffMaxMs: 5000,
  connectTimeoutMs: 1000,
  /** Besides root and this uid, the account whose daemon may get events. */
  daemonUser: 'runtally',
});
const MAX_NACK_WARNINGS = 20;
/** Bytes of frames held back (corked) before they are handed to the kernel anyway. */
const CORK_BYTES = 64 * 1024;
/** Bytes of spool read back at a time to catch up (a window's worth is sent of them). */
const BACKLOG_BYTES = 4 << 20;
const SPOOL_HEADER = 8;
/**
 * An acked spool file is cut back when it is this big or its first record
 * this old (ms); always at flush.  An ftruncate at every empty window would
 * cost more than the writes (and makes the next append wait on writeback).
 */
const TRUNCATE_BYTES = 64 * 1024;
const TRUNCATE_AGE_MS = 1000;
/**
 * Events the spool could not take while not connected are held in memory
 * (for the connection being made, or the flush at exit) up to this many;
 * past it, or when the process exits first, they are counted as lost.
 */
const MAX_HELD = 1000;

class Client {
  /**
   * `socketPath`: the daemon's Unix socket; `spoolDir`: the spool directory;
   * `options` override DEFAULTS.  Use `getClient()` for the process's shared one.
   */
  constructor(socketPath, spoolDir, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.socketPath = socketPath;
    this.spool = new SpoolWriter(spoolDir, () => this.trustedUids());
    this.state = 'idle';
    this.sock = null;
    this.decoder = null;
    this.sent = 0; // frames sent on this connection
    this.answered = 0; // replies received on it
    this.fileSent = 0; // bytes of the spool file (from its header) sent on this connection
    this.backlog = false; // spooled events wait for the window to empty before they are sent
    this.connectSoon = false;
    this.unspooled = new Map(); // seq -> {record, run}: sent but not in the spool
    this.lost = new Map(); // run uid -> events lost (spool unusable, daemon unreachable)
    this.held = []; // {frame, record, run}: not in the spool, not sent yet (MAX_HELD)
    this.nextAttempt = 0;
    this.backoffMs = this.options.backoffInitialMs;
    this.gotAck = false;
    this.corked = false;
    this.waiters = [];
    this.emitted = 0;
    // counters, for tests and introspection
    this.connectAttempts = 0;
    this.acked = 0;
    this.nacked = 0;
    this.trusted = null;
  }

  /** Unanswered frames on the current connection. */
  get unacked() {
    return this.sent - this.answered;
  }

  // -- the tracking call's path: synchronous, bounded ---------------------------------

  /** Record one event (a plain object); returns at once, never throws. */
  emit(event) {
    try {
      let record;
      try {
        record = encodeRecord(event);
      } catch (err) {
        warn(`dropping an event: ${err.message}`);
        return;
      }
      this.emitted += 1;
      if (this.lost.size) this.reportLost();
      this.deliver(record, event.run);
    } catch (err) {
      warnOnce(`emit-${err.name}`, `event not recorded: ${err.message}`);
    }
  }

  deliver(record, run, marker = false) {
    const inSpool = this.spool.append(record);
    if (this.state === 'connected') {
      if (!inSpool) {
        this.send(frameOf(record), { record, run });
      } else if (this.backlog || this.unacked >= this.options.window) {
        // The daemon is behind: the event waits in the spool, sent once the
        // window has emptied (settle), rather than dropping a working connection.
        this.backlog = true;
      } else {
        this.send(frameOf(record), null);
        this.fileSent = this.spool.size;
      }
      return true;
    }
    if (this.state === 'idle' && !this.connectSoon && Date.now() >= this.nextAttempt) {
      // Connecting costs more than a call may: do it just after this one.
      this.connectSoon = true;
      setImmediate(() => {
        this.connectSoon = false;
        this.connect();
      });
    }
    if (inSpool) {
      this.spool.syncSoon();
      return true;
    }
    if (this.held.length < MAX_HELD) {
      this.held.push({ record, run });
      return true;
    }
    if (!marker) this.addLost(run, 1);
    return false;
  }

  send(frame, unspooled) {
    this.sent += 1;
    if (unspooled) this.unspooled.set(this.sent, unspooled);
    const sock = this.sock;
    // The frames of one synchronous burst of calls go out in one writev, at
    // the next tick (or once 64 KiB are waiting): a write syscall per call
    // would cost more than the rest of the call.
    if (!this.corked) {
      this.corked = true;
      sock.cork();
      process.nextTick(() => this.uncork(sock));
    }
    sock.write(frame);
    if (sock.writableLength > CORK_BYTES) this.uncork(sock);
    if (sock.writableLength > this.options.maxOut) {
      this.break('the daemon is not reading (send buffer full)', true);
    }
  }

  uncork(sock) {
    if (!this.corked) return;
    this.corked = false;
    if (!sock.destroyed) sock.uncork();
  }

  // -- connecting (on the event loop) -----------------------------------------------

  connect(force = false) {
    if (this.state !== 'idle' || (!force && Date.now() < this.nextAttempt)) return;
    this.connectAttempts += 1;
    const why = this.untrustedDirectory();
    if (why) {
      warnOnce('untrusted', `not sending events to ${this.socketPath}: ${why}; spooling`);
      this.retryLater(false);
      return;
    }
    let sock;
    try {
      sock = net.createConnection({ path: this.socketPath });
    } catch (err) {
      warnOnce(`connect-${err.code}`, `cannot connect to ${this.socketPath}: ${err.message}; spooling`);
      this.retryLater(false);
      return;
    }
    sock.unref(); // a connection never keeps the pipeline alive
    this.sock = sock;
    this.state = 'connecting';
    const timer = setTimeout(() => {
      if (this.sock === sock && this.state === 'connecting') this.break('connect timed out', false);
    }, this.options.connectTimeoutMs);
    timer.unref();
    sock.on('connect', () => {
      clearTimeout(timer);
      if (this.sock === sock) this.onConnected();
    });
    sock.on('data', (chunk) => {
      if (this.sock === sock) this.onData(chunk);
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      if (this.sock !== sock) return;
      if (!['ENOENT', 'ECONNREFUSED', 'EAGAIN', 'ECONNRESET', 'EPIPE'].includes(err.code)) {
        warnOnce(`connect-${err.code}`, `cannot talk to ${this.socketPath}: ${err.message}; spooling`);
      }
      this.break(`lost the daemon connection (${err.code || err.message})`, false);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      if (this.sock === sock) this.break('the daemon closed the connection', false);
    });
  }

  /** Why the socket's directory may hide an impostor (see the Python client's `_unix.py`). */
  untrustedDirectory() {
    const dir = path.dirname(path.resolve(this.socketPath));
    let st;
    try {
      st = fs.statSync(dir);
    } catch {
      return null; // not there: the connect fails quietly, routine
    }
    return untrustedDirectory(dir, st, this.trustedUids());
  }

  /** Root, this uid and the daemon user's (looked up once). */
  trustedUids() {
    this.trusted ??= trustedUids(this.options.daemonUser);
    return this.trusted;
  }

  onConnected() {
    this.state = 'connected';
    this.decoder = new ReplyDecoder();
    this.sent = this.answered = 0;
    this.gotAck = false;
    this.backlog = false;
    // Own spooled events first, in order, then new ones.
    this.fileSent = 0;
    this.sendBacklog();
    // Then what neither the spool nor a socket took yet, in order.
    const held = this.held;
    this.held = [];
    for (const { record, run } of held) {
      if (this.state === 'connected') this.send(frameOf(record), { record, run });
      else if (!this.spool.append(record)) this.addLost(run, 1);
    }
    this.settle();
  }

  retryLater(useful) {
    this.backoffMs = useful
      ? this.options.backoffInitialMs
      : Math.min(this.backoffMs * 2, this.options.backoffMaxMs);
    this.nextAttempt = Date.now() + (useful ? 0 : this.backoffMs);
  }

  // -- replies ------------------------------------------------------------------------

  onData(chunk) {
    this.decoder.push(chunk);
    for (;;) {
      let reply;
      try {
        reply = this.decoder.next();
      } catch (err) {
        this.break(`unreadable reply from the daemon (${err.message})`, true);
        return;
      }
      if (reply === undefined) break;
      if (!this.onReply(reply)) return;
    }
    this.settle();
  }

  /** Handle one reply; false when it broke the connection. */
  onReply(reply) {
    const type = reply && typeof reply === 'object' ? reply.type : undefined;
    if (type === 'error') {
      // Ours are well-formed: trust the event over the refusal; spool, start over.
      this.break(`the daemon answered 'error: ${reply.error}'`, true);
      return false;
    }
    if (type !== 'ack' && type !== 'nack') return true; // a reply to nothing we send
    this.answered += 1;
    this.unspooled.delete(this.answered);
    if (type === 'ack') {
      this.acked += 1;
      this.gotAck = true;
    } else {
      this.nacked += 1;
      if (this.nacked <= MAX_NACK_WARNINGS) {
        warn(`the daemon refused event ${reply.id}: ${reply.error} (kept in its dead_letters)`);
      } else {
        warnOnce('nacks', 'the daemon refused more events; further refusals not shown');
      }
    }
    return true;
  }

  /** Send the spool file's records not sent on this connection yet, a window's worth. */
  sendBacklog() {
    const from = Math.max(this.fileSent, SPOOL_HEADER);
    const records = this.spool.readBack(from, BACKLOG_BYTES);
    let at = from;
    for (const payload of records.slice(0, this.options.window)) {
      this.sent += 1;
      this.sock.write(frameOfRecord(payload));
      at += 8 + payload.length;
    }
    this.fileSent = at;
    this.backlog = at < this.spool.size;
  }

  /**
   * Everything sent is answered: send what waits in the spool if anything
   * does, else every record in the file is acked: cut it back.
   */
  settle(lazy = true) {
    if (this.state !== 'connected' || this.unacked !== 0) return;
    if (this.backlog || this.fileSent < this.spool.size) {
      this.sendBacklog();
      if (this.unacked !== 0) return;
    }
    this.unspooled.clear();
    const spool = this.spool;
    if (
      !lazy ||
      this.waiters.length ||
      spool.size > TRUNCATE_BYTES ||
      Date.now() - spool.firstRecordAt >= TRUNCATE_AGE_MS
    ) {
      spool.truncate();
      this.fileSent = 0;
      this.wake(true);
    }
  }

  // -- giving up on a connection ------------------------------------------------------

  /** The connection cannot be trusted: drop it; unacked events stay in the spool. */
  break(reason, stuck) {
    if (stuck) warnOnce('stuck', `${reason}; spooling events to ${this.spool.directory}`);
    const sock = this.sock;
    const useful = this.gotAck;
    this.sock = null;
    this.state = 'idle';
    this.corked = false;
    if (sock !== null) sock.destroy();
    // Events the spool could not take when they were sent: try again, else lost.
    for (const [seq, { record, run }] of this.unspooled) {
      if (seq > this.answered && !this.spool.append(record)) this.addLost(run, 1);
    }
    this.unspooled.clear();
    this.sent = this.answered = this.fileSent = 0;
    this.backlog = false;
    this.retryLater(useful);
    this.spool.syncSoon();
    this.wake(false);
  }

  addLost(run, n) {
    if (typeof run !== 'string') return;
    this.lost.set(run, (this.lost.get(run) || 0) + n);
  }

  /** A `dropped` marker per run that lost events, once the spool or daemon takes events again. */
  reportLost() {
    if (this.spool.fd === null && this.state !== 'connected' && Date.now() < this.spool.retryAt) return;
    const { uuid7 } = require('./ids');
    for (const [run, events] of [...this.lost]) {
      this.lost.delete(run);
      const marker = { type: 'dropped', id: uuid7(), ts: Date.now(), run, events };
      if (this.deliver(encodeRecord(marker), run, true)) {
        warn(`${events} events of run ${run} were lost (the spool was unusable); the daemon is told`);
      } else {
        this.addLost(run, events);
        return;
      }
    }
  }

  // -- flush and exit -------------------------------------------------------------------

  /**
   * Wait up to `timeoutMs` for every event emitted so far to be acked; resolves
   * true when they were (the spool file is then cut back), false when some
   * are left in the spool for later.  Never rejects.
   */
  flush(timeoutMs = this.options.flushTimeoutMs) {
    return new Promise((resolve) => {
      try {
        if (this.state === 'idle' && (this.spool.records > 0 || this.held.length > 0)) this.connect(true);
        if (this.state === 'idle') {
          resolve(this.spool.records === 0 && this.held.length === 0);
          return;
        }
        if (this.state === 'connected' && this.unacked === 0) {
          this.settle(false);
          resolve(this.spool.records === 0);
          return;
        }
        const waiter = { resolve, timer: null };
        waiter.timer = setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          if (this.state !== 'idle') this.break(`no ack from the daemon within ${timeoutMs} ms`, true);
          resolve(false);
        }, Math.max(0, timeoutMs)); // ref'd: keeps the process alive while it waits
        this.waiters.push(waiter);
      } catch (err) {
        warnOnce(`flush-${err.name}`, `flush failed: ${err.message}`);
        resolve(false);
      }
    });
  }

  wake(ok) {
    const waiters = this.waiters;
    if (!waiters.length) return;
    this.waiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.resolve(ok && this.spool.records === 0 && this.held.length === 0);
    }
  }

  /** True when `beforeExit` has something worth waiting for. */
  pending() {
    return (
      (this.state !== 'idle' && this.unacked > 0) ||
      this.spool.records > 0 ||
      this.held.length > 0 ||
      this.lost.size > 0
    );
  }

  /** At process exit (synchronous only): drop the socket, leave unacked events to the daemon. */
  closeAtExit() {
    try {
      if (this.sock !== null) this.sock.destroy();
      this.sock = null;
      this.state = 'closed';
      this.spool.closeAtExit();
      let lost = this.held.length;
      this.held = [];
      for (const n of this.lost.values()) lost += n;
      if (lost) warn(`${lost} events were lost: the spool was unusable and the daemon unreachable`);
    } catch (err) {
      warnOnce(`close-${err.name}`, `close failed: ${err.message}`);
    }
  }
}

// -- one client per (socket, spool) per process, closed at exit -------------------------

const clients = new Map();
let hooked = false;
let exitFlushes = 0;
/** When the waiting at exit ends, per client (ms since the epoch): one `flushTimeoutMs` in all. */
const exitDeadlines = new Map();

function onBeforeExit() {
  // Bounded: at most two rounds of waiting, sharing one flushTimeoutMs per
  // client (a new user found 4 s, not the 2 s promised, with a daemon that
  // did not answer), then the loop may end for good.
  const busy = [...clients.values()].filter((c) => c.state !== 'closed' && c.pending());
  if (!busy.length || exitFlushes >= 2) return;
  exitFlushes += 1;
  const now = Date.now();
  for (const c of busy) {
    if (!exitDeadlines.has(c)) exitDeadlines.set(c, now + c.options.flushTimeoutMs);
    const left = exitDeadlines.get(c) - now;
    if (left > 0) c.flush(left).catch(() => {});
  }
}

function onExit() {
  for (const c of clients.values()) c.closeAtExit();
}

/** The process's Client for this socket and spool (made on first use). */
function getClient(socketPath, spoolDir, options) {
  const key = `${socketPath}\0${spoolDir}`;
  let client = clients.get(key);
  if (client === undefined) {
    client = new Client(socketPath, spoolDir, options);
    clients.set(key, client);
    if (!hooked) {
      hooked = true;
      process.on('beforeExit', onBeforeExit);
      process.on('exit', onExit);
    }
  }
  return client;
}

module.exports = { Client, DEFAULTS, getClient };
