#!/usr/bin/env -S node --max-semi-space-size=2
// --max-semi-space-size=2 (MB): V8 lets its young generation grow to 16 MB a semi-space; a controller
// parsing Consul's replies for 500 instances grew it there, about 27 MB of RSS it never gave back
// (bench/scale.mjs: 155 → 128 MB at 500 instances and 50 upstreams; the same CPU per change; no change
// for a small mesh). It cannot be set from inside (v8.setFlagsFromString comes after the heap is sized).
// Bin shim: signals → AbortSignal (SIGHUP → a resync event), run() → exit code. A second signal, or a
// stop that outlasts the watchdog, ends the process at once.
import { run } from "./run.js";

const stop = new AbortController();
const watchdogMs = 45_000;
const onSignal = (name: NodeJS.Signals) => {
  if (stop.signal.aborted) {
    process.stderr.write(`connect-haproxy: second ${name}, exiting now\n`);
    process.exit(1);
  }
  stop.abort();
  setTimeout(() => {
    process.stderr.write("connect-haproxy: shutdown took too long, exiting\n");
    process.exit(1);
  }, watchdogMs).unref();
};
process.on("SIGTERM", onSignal);
process.on("SIGINT", onSignal);
// SIGHUP re-reads everything (consul-template's convention), it does not stop.
const hangup = new EventTarget();
process.on("SIGHUP", () => hangup.dispatchEvent(new Event("SIGHUP")));

process.exitCode = await run(process.argv.slice(2), process.stdout, process.stderr, { signal: stop.signal, hangup });
