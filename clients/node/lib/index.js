'use strict';
/**
 * runtally for Node.js pipelines: `RunTracker`, a drop-in for the old
 * `lib/run-tracker.js`, sending runs, steps and errors to runtallyd.
 */

const { Client, DEFAULTS, getClient } = require('./client');
const { PARENT_ENV, RunTracker } = require('./tracker');
const { redactArgv } = require('./meta');
const { uuid7 } = require('./ids');

module.exports = { Client, DEFAULTS, PARENT_ENV, RunTracker, getClient, redactArgv, uuid7 };
