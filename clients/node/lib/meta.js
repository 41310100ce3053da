'use strict';
/**
 * Where a run ran: the `meta` of its `run_start` event (host, pid, user,
 * argv with secrets redacted, git_sha, node version), and the argv redaction
 * itself, the same rules as the Python client's `_redact.py`.
 */

const os = require('node:os');
const { text } = require('./coerce');

const REDACTED = '***';
const GIT_SHA_ENV = 'RUNTALLY_GIT_SHA';
const MAX_ARGV = 64;

/** A name (option or variable) whose value is a secret. */
const SECRET_NAME =
  /pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credential|auth[-_]?key|session[-_]?key|cookie/i;
/** `--name=value`, `-name=value` or `NAME=value`. */
const ASSIGNMENT = /^(-{0,2}[A-Za-z0-9_.-]+)=([\s\S]*)$/;
/** The password of URL userinfo: `scheme://user:PASSWORD@host`. */
const URL_PASSWORD = /([A-Za-z][A-Za-z0-9+.-]*:\/\/[^/@:\s]*:)[^/@\s]*(@)/g;

function secretName(name) {
  return SECRET_NAME.test(name.replace(/^-+/, ''));
}

/**
 * `argv` with secret values replaced by `***`: `--password=x` -> `--password=***`;
 * `--token x` -> `--token ***` (unless the next argument starts with `-`);
 * `API_KEY=x` -> `API_KEY=***`; `https://u:p@h` -> `https://u:***@h`.
 */
function redactArgv(argv) {
  const out = [];
  let takeNext = false;
  for (const arg of argv) {
    if (takeNext && !arg.startsWith('-')) {
      out.push(REDACTED);
      takeNext = false;
      continue;
    }
    takeNext = false;
    const assignment = ASSIGNMENT.exec(arg);
    if (assignment !== null && secretName(assignment[1])) {
      out.push(`${assignment[1]}=${REDACTED}`);
      continue;
    }
    if (arg.startsWith('-') && assignment === null && secretName(arg)) takeNext = true;
    out.push(arg.replace(URL_PASSWORD, `$1${REDACTED}$2`));
  }
  return out;
}

let cachedUser;

/** The user name, as the Python client finds it; looked up once (process.env reads cost). */
function user() {
  if (cachedUser !== undefined) return cachedUser;
  for (const name of ['LOGNAME', 'USER', 'LNAME', 'USERNAME']) {
    if (process.env[name]) {
      cachedUser = process.env[name];
      return cachedUser;
    }
  }
  try {
    cachedUser = os.userInfo().username;
  } catch {
    cachedUser = String(process.getuid ? process.getuid() : '');
  }
  return cachedUser;
}

let cachedHost;
let cachedArgv;

/**
 * The facts a `run_start` carries in `meta`; `argv` left out when
 * `captureArgv` is false.  Host, user and the redacted argv are worked out
 * once per process (tens of microseconds): a run start stays a cheap call.
 */
function runMeta({ captureArgv = true } = {}) {
  const meta = { pid: process.pid };
  if (cachedHost === undefined) {
    try {
      cachedHost = os.hostname();
    } catch {
      cachedHost = null; // no host name: leave it out
    }
  }
  if (cachedHost) meta.host = cachedHost;
  const name = user();
  if (name) meta.user = name;
  if (captureArgv) {
    cachedArgv ??= redactArgv(process.argv.slice(0, MAX_ARGV).map((a) => text(a, 1000)));
    meta.argv = cachedArgv;
  }
  const sha = process.env[GIT_SHA_ENV];
  if (sha) meta.git_sha = sha.slice(0, 128);
  meta.node = process.version;
  return meta;
}

module.exports = { REDACTED, redactArgv, runMeta };
