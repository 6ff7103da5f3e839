// Sums the results of every suite into the closing line `N passed, N failed`.
// A suite that did not produce a result counts as one failure, with a reason.
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { basename, join } from "node:path";

const dir = process.argv[2];
let passed = 0;
let failed = 0;
let skipped = 0;
const failedTests = [];

function suiteFailed(name, why) {
  console.error(`test: suite ${name} failed to report: ${why}`);
  failed += 1;
}

// vitest: JSON reporter (jest-compatible shape), one file per HAProxy run
// (vitest-default.json: unit + integration; vitest-haproxy-<version>.json: the
// integration suites again on that HAProxy).
const vitestRuns = readdirSync(dir).filter((f) => /^vitest-.+\.json$/.test(f)).sort((a, b) => (a === "vitest-default.json" ? -1 : b === "vitest-default.json" ? 1 : a.localeCompare(b)));
if (vitestRuns.length === 0) suiteFailed("vitest", "no vitest-*.json");
for (const file of vitestRuns) {
  const label = file.replace(/^vitest-|\.json$/g, "");
  const haproxyFile = join(dir, `vitest-${label}.haproxy`);
  const haproxy = `HAProxy ${existsSync(haproxyFile) ? (/version (\S+)/.exec(readFileSync(haproxyFile, "utf8"))?.[1] ?? "?") : "?"}`;
  const r = JSON.parse(readFileSync(join(dir, file), "utf8"));
  passed += r.numPassedTests;
  failed += r.numFailedTests;
  skipped += r.numPendingTests + (r.numTodoTests ?? 0);
  // A test file that failed to load has no tests but still failed.
  const brokenFiles = r.testResults.filter((f) => f.status === "failed" && f.assertionResults.length === 0);
  for (const f of brokenFiles) suiteFailed(`vitest (${haproxy}) ${f.name}`, f.message?.split("\n")[0] ?? "failed to load");
  const integration = r.testResults.filter((f) => f.name.includes("/test/integration/")).map((f) => basename(f.name).replace(/\.test\.ts$/, "")).sort();
  // Each failed test by name, with its first line, so the closing lines alone say what failed.
  for (const f of r.testResults) {
    for (const a of f.assertionResults.filter((a) => a.status === "failed")) {
      const why = (a.failureMessages?.[0] ?? "").split("\n")[0].slice(0, 300);
      failedTests.push(`test: FAILED on ${haproxy}: ${basename(f.name)} > ${a.fullName}: ${why}`);
    }
  }
  console.log(`test: vitest on ${haproxy}: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped in ${r.testResults.length} files (${integration.length} integration: ${integration.join(", ") || "none"})`);
}
for (const f of readdirSync(dir).filter((f) => /^haproxy-missing-.+\.txt$/.test(f))) console.log(`test: warning: ${readFileSync(join(dir, f), "utf8").trim()}`);

// TAP ("ok N - ..." / "not ok N - ..."; skipped tests carry "# SKIP"), from
// busted and from node's test runner (whose subtests are indented).
function countTap(suite, file) {
  const tapFile = join(dir, file);
  if (!existsSync(tapFile)) return suiteFailed(suite, `no ${file}`);
  const lines = readFileSync(tapFile, "utf8").split("\n");
  let ok = 0, notOk = 0, skip = 0;
  for (const line of lines) {
    if (/^ok \d+/.test(line)) (/# SKIP/i.test(line) ? skip++ : ok++);
    else if (/^not ok \d+/.test(line)) notOk++;
  }
  if (!lines.some((l) => /^1\.\.\d+/.test(l))) suiteFailed(suite, "no TAP plan (did it crash?)");
  if (ok + notOk + skip === 0) suiteFailed(suite, "ran no test");
  passed += ok; failed += notOk; skipped += skip;
  console.log(`test: ${suite} ${ok} passed, ${notOk} failed, ${skip} skipped`);
}
countTap("busted (lua5.3)", "busted-lua5.3.tap");
countTap("busted (lua5.4)", "busted-lua5.4.tap");
countTap("bench harness", "bench-unit.tap");

// The quick benchmark run counts as one test.
const smokeExit = join(dir, "bench-smoke.exit");
if (existsSync(smokeExit) && Number(readFileSync(smokeExit, "utf8").split(":")[1]) === 0) {
  passed += 1;
  console.log("test: benchmark smoke run passed");
} else {
  failed += 1;
  console.error(`test: benchmark smoke run failed (see ${join(dir, "bench-smoke.log")})`);
}

const required = ["vitest-default", "busted-lua5.3", "busted-lua5.4", "bench-unit"];
const found = readdirSync(dir).filter((f) => /^vitest-.+\.exit$/.test(f)).map((f) => f.replace(/\.exit$/, ""));
for (const suite of new Set([...required, ...found])) {
  const exitFile = join(dir, `${suite}.exit`);
  const code = existsSync(exitFile) ? Number(readFileSync(exitFile, "utf8").split(":")[1]) : NaN;
  if (code !== 0 && failed === 0) suiteFailed(suite, `exited ${code} with no failed test`);
}

// Last before the closing line, so a CI log's tail names what failed.
for (const line of failedTests) console.log(line);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(failed > 0 ? 1 : 0);
