#!/usr/bin/env node
// The soak (issue 15, item 3; test/harness/soak.ts runs it, soak-report.ts
// classifies and writes it up): mixed allowed and denied traffic through
// connect-haproxy sidecars while intentions flip, an instance comes and goes,
// the CA rotates, leaves renew and two controllers restart. Writes
// <out>.md and <out>.json; exit 0 when every promise held, 1 when not.
// Usage: npm run soak [-- --minutes 10 --out bench/results/soak]
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { runSoak } from "../dist/test/harness/soak.js";
import { soakMarkdown } from "../dist/test/harness/soak-report.js";
import { installCleanupHandlers, runProgram } from "../dist/test/harness/processes.js";

const USAGE = `usage: node bench/soak.mjs [--minutes N] [--out PATH]
  --minutes N   how long traffic runs (default 10)
  --out PATH    the report's path without extension (default bench/results/soak: soak.md, soak.json)
environment: CONSUL_BIN (required; npm run soak finds or builds it), HAPROXY_BIN (default haproxy)
Exit 0: no wrongly allowed connection, no failed allowed one outside the documented windows, growth within bounds; 1: not; 2: bad usage.`;

let options;
try {
  ({ values: options } = parseArgs({ options: { minutes: { type: "string", default: "10" }, out: { type: "string", default: "bench/results/soak" }, help: { type: "boolean", short: "h" } } }));
} catch (err) {
  console.error(`soak: ${err.message}\n${USAGE}`);
  process.exit(2);
}
if (options.help) {
  console.log(USAGE);
  process.exit(0);
}
const minutes = Number(options.minutes);
if (!(minutes > 0)) {
  console.error(`soak: --minutes must be a positive number\n${USAGE}`);
  process.exit(2);
}
installCleanupHandlers(console.error, "soak");
runProgram("soak", async () => {
  const summary = await runSoak({ durationMs: Math.round(minutes * 60_000), log: console.error });
  mkdirSync(dirname(options.out), { recursive: true });
  writeFileSync(`${options.out}.json`, `${JSON.stringify(summary, null, 2)}\n`);
  writeFileSync(`${options.out}.md`, soakMarkdown(summary));
  console.log(soakMarkdown(summary));
  console.error(`soak: wrote ${options.out}.md and ${options.out}.json; ${summary.problems.length ? `${summary.problems.length} problem(s)` : "every promise held"}`);
  return summary.problems.length ? 1 : 0;
});
