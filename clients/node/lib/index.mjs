// ESM entry: the same objects as the CommonJS one (one module instance, one client per process).
import cjs from './index.js';

export const { Client, DEFAULTS, PARENT_ENV, RunTracker, getClient, redactArgv, uuid7 } = cjs;
export default cjs;
