'use strict';
/**
 * Where the daemon's socket and the spool directory are, as the Python
 * client resolves them (`runtally/config.py` `default_paths`): an explicit
 * option, else `RUNTALLY_SOCKET` / `RUNTALLY_SPOOL`, else the defaults:
 * the system paths when `/run/runtally` exists, else `/run/user/<uid>/runtally`
 * (when that directory is the user's own) and `~/.local/state/runtally` (from
 * `$HOME`: cron sets no XDG variable, so none is read).
 * The TOML config file is not read by this client: set the variables instead.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const SYSTEM_RUNTIME_DIR = '/run/runtally';

function privateDir(dir, uid) {
  try {
    const st = fs.statSync(dir);
    return st.isDirectory() && st.uid === uid && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

function isDir(dir) {
  try {
    return fs.statSync(dir).isDirectory();
  } catch {
    return false;
  }
}

/** `{socket, spool}` when nothing is configured. */
function defaultPaths(env = process.env) {
  if (isDir(SYSTEM_RUNTIME_DIR)) {
    return { socket: path.join(SYSTEM_RUNTIME_DIR, 'runtally.sock'), spool: '/var/spool/runtally' };
  }
  const home = env.HOME || os.homedir();
  const state = path.join(home, '.local', 'state', 'runtally');
  const uid = process.getuid();
  const userRun = path.join('/run/user', String(uid));
  const runtime = privateDir(userRun, uid) ? path.join(userRun, 'runtally') : path.join(state, 'run');
  return { socket: path.join(runtime, 'runtally.sock'), spool: path.join(state, 'spool') };
}

/**
 * `{socket, spool}`: the options, else the environment, else the defaults;
 * absolute, from the working directory now (as the Python client resolves
 * them), so a later `process.chdir` never moves them.
 */
function resolvePaths({ socket, spool } = {}, env = process.env) {
  let defaults;
  const fallback = () => (defaults ??= defaultPaths(env));
  return {
    socket: path.resolve(String(socket || env.RUNTALLY_SOCKET || fallback().socket)),
    spool: path.resolve(String(spool || env.RUNTALLY_SPOOL || fallback().spool)),
  };
}

module.exports = { defaultPaths, resolvePaths };
