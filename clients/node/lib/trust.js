'use strict';
/**
 * Who may own the daemon's socket directory and the spool directory: the
 * Python client's and the daemon's one rule (runtally/_trust.py).
 */

const fs = require('node:fs');

const S_ISVTX = 0o1000;

/** The uid of `name` in /etc/passwd, or undefined. */
function uidOf(name) {
  try {
    for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const fields = line.split(':');
      if (fields[0] === name && fields.length > 2) return Number(fields[2]);
    }
  } catch {
    // no passwd: nobody is that user
  }
  return undefined;
}

/** The uids a daemon may run as: root, this process's uid, and `daemonUser`'s. */
function trustedUids(daemonUser) {
  const uids = new Set([0, process.getuid()]);
  const daemonUid = daemonUser ? uidOf(daemonUser) : undefined;
  if (daemonUid !== undefined) uids.add(daemonUid);
  return uids;
}

/**
 * Why `dir` (`st`: its fs.Stats) may have been planted or tampered with; null if not.
 * It must belong to a trusted uid and be writable by nobody else.  `shared`:
 * the packaged spool directory is mode 3770 group runtally, so a
 * group-writable directory is accepted when it is sticky; world-writable never is.
 */
function untrustedDirectory(dir, st, trusted, { shared = false } = {}) {
  if (!st.isDirectory()) return `${dir} is not a directory`;
  if (!trusted.has(st.uid)) return `${dir} belongs to uid ${st.uid}, not to this user, root or the daemon's`;
  const byOthers = st.mode & 0o002 || (st.mode & 0o020 && !(shared && st.mode & S_ISVTX));
  if (byOthers) return `${dir} is writable by others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
  return null;
}

module.exports = { trustedUids, untrustedDirectory };
