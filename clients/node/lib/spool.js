'use strict';
/**
 * The process's own spool file (spool format v1), written ahead of the socket.
 *
 * Node has no flock without a native addon, so the file carries its writer's
 * identity in its name instead (docs/protocol.md, "Lockless writers"):
 *
 *     <unix-ms>-<host>-<pid>-nolock.<start>.<random>.spool
 *
 * where <start> is this process's start time (field 22 of /proc/self/stat,
 * clock ticks since boot).  The daemon replays such a file only once that
 * process is gone from this host (the pid no longer exists, or it now belongs
 * to a process with another start time): never under a live writer.
 *
 * Like the Python client's, it is a write-ahead log: every event is appended
 * (one `fs.writeSync` of one record on an O_APPEND descriptor) before it is
 * written to the socket, and the file is cut back to its header whenever
 * every event in it is acked.  A killed pipeline leaves a file holding every
 * event it had not seen acked.  It is created under a name not ending in
 * `.spool`, given its header, then renamed, so no reader sees it half made.
 *
 * Syncs: `fdatasync` is never called in a tracking call; while the daemon is
 * unreachable a timer syncs the file in the background at most once a
 * second, and `closeAtExit` syncs it synchronously.  Any error (unwritable
 * directory, ENOSPC) drops the event with one warning per process.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { SPOOL_MAGIC, readRecords } = require('./codec');
const { trustedUids, untrustedDirectory } = require('./trust');
const { warnOnce } = require('./warn');

const FILE_MODE = 0o640; // group-readable: the daemon runs as another user in the group
const OWN_FILE_MODE = 0o600; // in a directory of our own: the daemon is this user
const DIR_MODE = 0o700;
/** After the spool could not be opened, wait this long (ms) before trying again. */
const REOPEN_DELAY_MS = 1000;
/** While spooling, written records are synced at least this often (ms). */
const SYNC_INTERVAL_MS = 1000;
const HEADER = SPOOL_MAGIC.length;
const OPEN_FLAGS = fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_APPEND;

/** This process's start time in clock ticks since boot (0 where /proc cannot tell). */
function processStart(pid = process.pid) {
  try {
    const raw = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    // Field 2 (the command) is in parentheses and may hold ')': count from the last one.
    const fields = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
    const start = Number.parseInt(fields[19], 10);
    return Number.isSafeInteger(start) && start >= 0 ? start : 0;
  } catch {
    return 0;
  }
}

/** The host name as spool file names carry it: `[A-Za-z0-9_.]` only, at most 64. */
function spoolHost() {
  let host = '';
  try {
    host = os.hostname();
  } catch {
    // unknown
  }
  return host.replace(/[^A-Za-z0-9_.]+/g, '_').slice(0, 64) || 'localhost';
}

class SpoolWriter {
  /** `trusted()`: the uids that may own the directory (`trust.trustedUids`). */
  constructor(directory, trusted = () => trustedUids(null)) {
    this.directory = directory;
    this.trusted = trusted;
    this.path = null;
    this.fd = null;
    this.records = 0; // records in the open file
    this.size = 0; // bytes in the open file, header included
    this.dropped = 0; // events lost because the spool was unusable
    this.dirty = false; // written since the last sync
    this.retryAt = 0;
    this.syncTimer = null;
    this.syncing = false;
    this.firstRecordAt = 0; // Date.now() when the first record since the header went in
    this.start = null; // this process's start time, read once
  }

  /** Append one record (Buffer); false (the event is dropped) if the spool is unusable. */
  append(record) {
    const fd = this.fd ?? this.open();
    if (fd === null) {
      this.dropped += 1;
      return false;
    }
    let written = 0;
    try {
      written = fs.writeSync(fd, record);
      if (written !== record.length) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
    } catch (err) {
      this.dropped += 1;
      warnOnce('spool-write', `cannot write spool file ${this.path}: ${err.message}; events are being dropped`);
      if (written) this.undoPartialWrite();
      return false;
    }
    if (this.records === 0) this.firstRecordAt = Date.now();
    this.records += 1;
    this.size += written;
    this.dirty = true;
    return true;
  }

  undoPartialWrite() {
    // A torn record followed by more records would make the file corrupt.
    try {
      fs.ftruncateSync(this.fd, this.size);
    } catch {
      this.closeAtExit();
    }
  }

  /**
   * The intact records (payload Buffers) of the open file from byte `from` on
   * (a record boundary; default: all of them), at most about `maxBytes` of
   * them: for a resend on reconnect, or to catch up after a full window.
   */
  readBack(from = HEADER, maxBytes = Infinity) {
    if (this.fd === null || this.records === 0 || from >= this.size) return [];
    try {
      const length = Math.min(this.size - from, maxBytes);
      const data = Buffer.allocUnsafe(length);
      const n = fs.readSync(this.fd, data, 0, length, from);
      return readRecords(data.subarray(0, n), false);
    } catch (err) {
      warnOnce('spool-read', `cannot read back spool file ${this.path}: ${err.message}`);
      return [];
    }
  }

  /** Cut the file back to its header: every record in it is acknowledged. */
  truncate() {
    if (this.fd === null || this.records === 0) return;
    try {
      fs.ftruncateSync(this.fd, HEADER);
    } catch (err) {
      warnOnce('spool-truncate', `cannot truncate spool file ${this.path}: ${err.message}`);
      return;
    }
    this.records = 0;
    this.size = HEADER;
    this.dirty = false;
  }

  /** While the daemon is unreachable: sync in the background within SYNC_INTERVAL_MS. */
  syncSoon() {
    if (!this.dirty || this.syncTimer !== null || this.fd === null) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = null;
      if (!this.dirty || this.fd === null || this.syncing) return;
      this.dirty = false;
      this.syncing = true;
      fs.fdatasync(this.fd, (err) => {
        this.syncing = false;
        if (err) warnOnce('spool-sync', `cannot sync spool file ${this.path}: ${err.message}`);
      });
    }, SYNC_INTERVAL_MS);
    this.syncTimer.unref();
  }

  /**
   * At exit (synchronous): a file holding events is synced and left for the
   * daemon, which replays it once this process is gone; an empty one is removed.
   */
  closeAtExit() {
    if (this.syncTimer !== null) clearTimeout(this.syncTimer);
    this.syncTimer = null;
    const { fd, path: file } = this;
    this.fd = null;
    this.path = null;
    if (fd === null) return;
    try {
      if (this.records === 0) fs.unlinkSync(file);
      else if (this.dirty) fs.fdatasyncSync(fd);
    } catch (err) {
      warnOnce('spool-close', `cannot close spool file ${file}: ${err.message}`);
    }
    try {
      fs.closeSync(fd);
    } catch {
      // already closed
    }
    this.records = 0;
    this.size = 0;
    this.dirty = false;
  }

  open() {
    const now = Date.now();
    if (now < this.retryAt) return null;
    try {
      this.create();
    } catch (err) {
      this.retryAt = now + REOPEN_DELAY_MS;
      warnOnce(
        'spool-open',
        `cannot create a spool file in ${this.directory}: ${err.message}; ` +
          'events are being dropped while the daemon is unreachable',
      );
      return null;
    }
    return this.fd;
  }

  create() {
    this.makeDirectory();
    // The Python client's and the daemon's rule: the daemon does not replay a
    // directory anyone may write, so events put there would never land (found
    // from outside: a 1777 spool directory took them silently).
    const dir = fs.statSync(this.directory);
    const why = untrustedDirectory(this.directory, dir, this.trusted(), { shared: true });
    if (why !== null) throw new Error(`not spooling there: ${why}`);
    this.start ??= processStart();
    const token = crypto.randomBytes(4).toString('hex');
    const name = `${Date.now()}-${spoolHost()}-${process.pid}-nolock.${this.start}.${token}.spool`;
    const final = path.join(this.directory, name);
    const tmp = path.join(this.directory, `.${name}.tmp`);
    const mode = dir.uid === process.getuid() ? OWN_FILE_MODE : FILE_MODE;
    const fd = fs.openSync(tmp, OPEN_FLAGS, mode);
    try {
      fs.fchmodSync(fd, mode); // whatever the umask: the daemon's group must read it
      if (fs.writeSync(fd, SPOOL_MAGIC) !== HEADER) throw new Error('short write');
      fs.renameSync(tmp, final);
    } catch (err) {
      fs.closeSync(fd);
      try {
        fs.unlinkSync(tmp);
      } catch {
        // never created, or gone
      }
      throw err;
    }
    this.fd = fd;
    this.path = final;
    this.records = 0;
    this.size = HEADER;
  }

  makeDirectory() {
    // A directory the client creates is its own (0700 whatever the umask).
    if (fs.mkdirSync(this.directory, { recursive: true, mode: DIR_MODE }) !== undefined) {
      fs.chmodSync(this.directory, DIR_MODE);
    }
  }
}

module.exports = { SpoolWriter, processStart, spoolHost };
