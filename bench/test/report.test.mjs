// Pure parts of the benchmark: parsers, medians, ratios, targets, the chart.
//   node --test bench/test/   (after npm run build)
// The plain pair's configuration is the controller's render without authorization:
// test/unit/controller-render.test.ts proves what that leaves out.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseTimes, parseWrkJson } from "../lib/load.mjs";
import { median, summarize, ratios, checkTargets, markdownReport } from "../lib/report.mjs";
import { barChartSvg, formatNumber } from "../lib/chart.mjs";
// The harness's pure parts the benchmark relies on (built by npm run build).
import { parseKeyValues } from "../../dist/test/harness/haproxy.js";
import { cpuBetween } from "../../dist/test/harness/process-stats.js";

test("bash `times`: the second line is the children's user + system time", () => {
  assert.equal(parseTimes("some wrk noise\n0m0.002s 0m0.001s\n1m2.500s 0m0.250s\n"), 62.75);
  assert.equal(parseTimes("no times here"), undefined);
});

test("wrk's JSON line is found among its other output", () => {
  const summary = parseWrkJson('Running 1s test\nWRK_JSON {"requests":10,"duration_us":1000000}\nRequests/sec: 10\n');
  assert.deepEqual(summary, { requests: 10, duration_us: 1000000 });
  assert.equal(parseWrkJson("nothing"), undefined);
});

test("stats socket answers become numbers where they are numbers", () => {
  assert.deepEqual(parseKeyValues("hits: 12\nSslFrontendSessionReuse_pct: 100\nName: HAProxy\n\n"), { hits: 12, SslFrontendSessionReuse_pct: 100, Name: "HAProxy" });
});

test("median of odd and even counts, ignoring non-numbers", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
  assert.equal(median([undefined, 5, NaN]), 5);
  assert.equal(median([]), undefined);
});

test("CPU between samples counts a process that appeared from zero", () => {
  assert.equal(cpuBetween(new Map([[1, 2]]), new Map([[1, 3], [2, 0.5]])), 1.5);
});

const round = (rps, gbps, p99us, rssKb) => ({
  newConn: { requestsPerSecond: rps, requests: rps * 10, errorCount: 0, latencyUs: { p50: 1000, p99: 2000 }, cpu: { sidecarsSeconds: 1, byGroup: { "consul agent": 0.1 }, machineSeconds: 20, unattributedSeconds: 1 } },
  keepAlive: { requestsPerSecond: 1000, requests: 10000, errorCount: 0, latencyUs: { p50: 100, p99: p99us }, cpu: { sidecarsSeconds: 1, byGroup: {}, machineSeconds: 20, unattributedSeconds: 1 } },
  bulk: { gbitPerSecond: gbps, bytes: 1e9, cpu: { sidecarsSeconds: 2, byGroup: {}, machineSeconds: 20, unattributedSeconds: 0 } },
  sidecars: [{ peakRssKb: rssKb }, { peakRssKb: rssKb / 2 }],
});

test("ratios and targets compare connect-haproxy's medians with the others'", () => {
  const summary = summarize({
    plain: [round(1000, 6, 3000, 20000)],
    connect: [round(950, 6, 2000, 90 * 1024), round(900, 5, 2500, 92 * 1024), round(1000, 7, 2200, 91 * 1024)],
    builtin: [round(400, 5, 4000, 100000)],
  });
  assert.equal(summary.connect.newConnPerSec.median, 950);
  assert.deepEqual(summary.connect.newConnPerSec.values, [950, 900, 1000]);
  const table = ratios(summary);
  assert.equal(table.newConnPerSec.connectOverPlain, 0.95);
  assert.equal(table.newConnPerSec.connectOverBuiltin, 950 / 400);
  const targets = Object.fromEntries(checkTargets(summary, table).map((t) => [t.name, t]));
  assert.equal(targets["new connections/s vs built-in proxy"].met, true);
  assert.equal(targets["new connections/s vs plain HAProxy pair"].met, true);
  assert.equal(targets["bulk throughput vs built-in proxy"].met, false);
  assert.equal(targets["p99 latency, kept-alive, vs built-in proxy"].met, true);
  assert.equal(targets["peak RSS of one sidecar (controller + HAProxy)"].measured, 91);
  const markdown = markdownReport({
    machine: { nproc: 2 },
    settings: { quick: false, rounds: 3, finishedAt: "now", commit: "abc", method: ["m"] },
    summary,
    ratioTable: table,
    targets: checkTargets(summary, table),
    extras: {},
  });
  assert.match(markdown, /\| new connections\/s .* \| – \| 1,000 \| 950 <sub>900–1,000<\/sub> \| 400 \| 2\.38× \| 0\.95× \|/);
  assert.match(markdown, /\| bulk throughput vs built-in proxy \| ≥ 1\.5× \| 1\.20× \| \*\*missed\*\* \|/);
});

test("the HTTP upstream's set-ups get their own table, ratios and targets", () => {
  const summary = summarize({
    connect: [round(950, 6, 2000, 90 * 1024)],
    plainHttp: [round(8000, undefined, 1000, 20000)],
    connectHttp: [round(6000, undefined, 900, 90 * 1024)],
    builtinHttp: [round(1000, undefined, 1500, 100000)],
  });
  const table = ratios(summary);
  assert.equal(table.newConnPerSec.httpOverBuiltin, 6);
  assert.equal(table.newConnPerSec.httpOverPlain, 0.75);
  // The TCP ratios are not mixed with the HTTP set-ups'.
  assert.equal(table.newConnPerSec.connectOverBuiltin, undefined);
  const targets = Object.fromEntries(checkTargets(summary, table, { connectHttp: [round(6000, undefined, 900, 1)], builtinHttp: [round(1000, undefined, 1500, 1)] }).map((t) => [t.name, t]));
  assert.equal(targets["HTTP: new client connections/s vs built-in proxy"].met, true);
  assert.deepEqual(targets["HTTP: new client connections/s vs built-in proxy"].perRound, [6]);
  assert.equal(targets["HTTP: kept-alive requests/s vs plain HTTP pair (no Lua, same logging, same pooling)"].measured, 1);
  assert.equal(targets["HTTP: p99 latency, kept-alive, vs built-in proxy"].met, true);
  const markdown = markdownReport({ machine: {}, settings: { quick: false, rounds: 1, finishedAt: "now", commit: "abc", method: [] }, summary, ratioTable: table, targets: Object.values(targets), extras: {} });
  assert.match(markdown, /### HTTP upstream \(protocol http\)\n\n\| \| plain HAProxy \| connect-haproxy \| built-in proxy \|[^\n]*\n[^\n]*\n\| new connections\/s [^|]*\| 8,000 \| 6,000 \| 1,000 \| 6\.00× \| 0\.75× \|/);
});

test("the chart is one SVG with a bar per value and escaped text", () => {
  const svg = barChartSvg({ title: "a < b", panels: [{ title: "t", unit: "u", better: "higher", bars: [{ setup: "plain", label: "p", value: 3 }, { setup: "builtin", label: "b", value: undefined }] }] });
  assert.match(svg, /^<svg [^>]+>/);
  assert.match(svg, /a &lt; b/);
  assert.equal((svg.match(/<rect x=/g) ?? []).length, 1 + 2); // one bar + two legend swatches
  assert.match(svg, />n\/a</);
  assert.equal(formatNumber(1234.5), "1,235");
  assert.equal(formatNumber(0.0123), "0.012");
});
