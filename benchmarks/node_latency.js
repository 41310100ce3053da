'use strict';
// Tracking-call latency of the Node.js client (clients/node): one process,
// RUNS runs of the benchmark's run shape (startRun, 10 x (startStep,
// endStep), 5 x recordError, endRun), every call timed with hrtime.  Between
// runs the process yields to the event loop, as a real pipeline's awaits do
// (that is when acks are read).  Prints one JSON object.
//
//   RUNTALLY_SOCKET=... RUNTALLY_SPOOL=... node benchmarks/node_latency.js RUNS

const { RunTracker } = require('../clients/node');

const runs = Number(process.argv[2] || 480);
const STACK = 'Error: invalid email\n    at submit (lib/laposta.js:120:11)\n'.repeat(3);
const MESSAGE = 'Request failed with status code 422: invalid email address';
const times = [];

function timed(fn) {
  const t0 = process.hrtime.bigint();
  const value = fn();
  times.push(Number(process.hrtime.bigint() - t0));
  return value;
}

function percentile(sorted, q) {
  if (!sorted.length) return 0;
  const rank = Math.max(1, Math.round((q / 100) * sorted.length + 0.5 - 1e-9));
  return sorted[Math.min(rank, sorted.length) - 1];
}

async function main() {
  const tracker = new RunTracker('bench');
  const began = process.hrtime.bigint();
  for (let r = 0; r < runs; r++) {
    timed(() => tracker.startRun());
    for (let s = 0; s < 10; s++) {
      const stepId = timed(() => tracker.startStep(`step-${s}`));
      timed(() => tracker.endStep(stepId, { outcome: 'success', created: s, updated: 1, skipped: 2 }));
      if (s < 5) {
        timed(() =>
          tracker.recordError({ stepName: `step-${s}`, stepId, memberIdentifier: `KNVB${r}`, errorMessage: MESSAGE, errorStack: STACK }),
        );
      }
    }
    timed(() => tracker.endRun(true, { run: r }));
    await new Promise((resolve) => setImmediate(resolve));
  }
  const wallS = Number(process.hrtime.bigint() - began) / 1e9;
  const flushed = await tracker.flush(10000);
  const sorted = times.slice().sort((a, b) => a - b);
  const us = (ns) => Math.round(ns / 100) / 10;
  console.log(
    JSON.stringify({
      runs,
      calls: sorted.length,
      calls_per_s: Math.round(sorted.length / wallS),
      flushed,
      latency: {
        calls: sorted.length,
        median_us: us(percentile(sorted, 50)),
        p99_us: us(percentile(sorted, 99)),
        p999_us: us(percentile(sorted, 99.9)),
        max_us: us(sorted.at(-1) || 0),
      },
      node: process.version,
    }),
  );
}

main();
