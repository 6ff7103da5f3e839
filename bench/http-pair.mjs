#!/usr/bin/env node
// Kept-alive HTTP through a pair of sidecars (web's upstream listener → mTLS →
// db's public listener → an application answering 200), protocol http on
// both sides, with a real Consul dev agent:
//   plain  the controller's render for the same registrations without the
//          authorizer's lines (same logging, same TLS): no authorization at all
//   l4     connect-haproxy run by the controller, web → db allowed by an L4 intention
//   l4log  l4 with proxy-defaults AccessLogs on (Consul's default JSON format,
//          Type file: both sidecars' lines into one file, each through its
//          `cat` writer, lines counted; --log-type stdout: HAProxy writes the
//          lines to the controller's stdout, here a file, itself)
//   l4metrics  l4 with metrics on (--metrics-addr on both sidecars), each
//          sidecar's /metrics scraped every second during the run (times reported)
//   l7     the same, web → db governed by an L7 intention of 10 permissions
//          (the request matches the 10th; the first nine are POST-only with a
//          header regex), decided by the native rules the controller renders
//          (checked to be switched on before measuring)
// Rounds interleave the set-ups; each figure is a median over rounds, each
// ratio the median of the per-round ratios; the spread of the plain pair's
// rounds is the noise figure.
//   node bench/http-pair.mjs [--rounds N] [--seconds S] [--log-format JSON] [--log-type file|stdout] [--setups plain,l4,l4log,l7]   (after npm run build; CONSUL_BIN)
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { startConsulDev } from "../dist/test/harness/consul.js";
import { freePorts } from "../dist/test/harness/ports.js";
import { runProgram, stopAll } from "../dist/test/harness/processes.js";
import { sendRuntimeCommand, startHaproxy } from "../dist/test/harness/haproxy.js";
import { appsDir } from "../dist/test/harness/paths.js";
import { runWrk } from "./lib/load.mjs";
import { registerMesh } from "./lib/mesh.mjs";
import { median, medianRatio, quantileSummary, spread } from "./lib/report.mjs";
import { startSetup } from "./lib/setups.mjs";

const allSetups = ["plain", "l4", "l4log", "l4metrics", "l7"];
const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" }, seconds: { type: "string", default: "8" }, "log-format": { type: "string" }, "log-type": { type: "string", default: "file" }, setups: { type: "string", default: allSetups.join(",") } } });
const setups = values.setups.split(",");
for (const id of setups) if (!allSetups.includes(id)) throw new Error(`--setups: unknown set-up ${id} (known: ${allSetups.join(", ")})`);
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);
const log = (message) => console.error(message);

const L7_PERMISSIONS = [
  ...Array.from({ length: 9 }, (_, i) => ({ Action: "deny", HTTP: { PathPrefix: `/p${i + 1}/`, Methods: ["POST"], Header: [{ Name: "x-v", Regex: "v[0-9]+" }] } })),
  { Action: "allow", HTTP: { PathPrefix: "/", Methods: ["GET", "HEAD"] } },
];

const INTENTIONS = {
  l4: [{ Name: "web", Action: "allow" }],
  l4log: [{ Name: "web", Action: "allow" }],
  l4metrics: [{ Name: "web", Action: "allow" }],
  l7: [{ Name: "web", Permissions: L7_PERMISSIONS }],
};


/** Newlines in `path` (0 when missing), read in chunks: the file grows to hundreds of MB. */
function countLines(path) {
  if (!existsSync(path)) return 0;
  const fd = openSync(path, "r");
  const chunk = Buffer.alloc(1 << 20);
  let lines = 0;
  try {
    for (let n; (n = readSync(fd, chunk)) > 0; ) for (let i = chunk.indexOf(10); i >= 0 && i < n; i = chunk.indexOf(10, i + 1)) lines += 1;
  } finally {
    closeSync(fd);
  }
  return lines;
}

runProgram("http-pair", async () => {
  const runDir = mkdtempSync(join(tmpdir(), "ch-http-pair-"));
  const cpu = cpus().length >= 2 ? { a: "0", b: "1" } : { a: undefined, b: undefined };
  let consul;
  let app;
  const samples = { plain: [], l4: [], l4log: [], l4metrics: [], l7: [] };
  const scrapes = [];
  const accessLogPath = join(runDir, "access.log");
  const logLines = [];
  try {
    consul = await startConsulDev({ nodeName: "bench", cpu: cpu.b, logFile: join(runDir, "consul.log") });
    await consul.api("PUT", "/v1/config", { Kind: "proxy-defaults", Name: "global", Config: { protocol: "http" } });
    const [appPort, dbPublic, webPublic, webApp, upstream] = await freePorts(5);
    const ports = { app: appPort, dbPublic, webPublic, webApp, upstream };
    await registerMesh(consul, ports, { protocol: "http" });
    app = await startHaproxy(readFileSync(join(appsDir, "http-ok.cfg"), "utf8"), { dir: runDir, name: "app", cpu: cpu.b, env: { APP_PORT: String(appPort) }, logToFile: true });
    const ctx = { runDir, consul, haproxyBin: process.env.HAPROXY_BIN ?? "haproxy", ports, cpu, runCounter: 0 };
    for (let round = 0; round < rounds; round++) {
      const order = setups.map((_, i, all) => all[(i + round) % all.length]);
      for (const id of order) {
        if (id !== "plain") await consul.api("PUT", "/v1/config", { Kind: "service-intentions", Name: "db", Sources: INTENTIONS[id] });
        const format = values["log-format"] ? { JSONFormat: values["log-format"] } : {};
        const accessLogs = id === "l4log" ? { AccessLogs: { Enabled: true, Type: values["log-type"], ...(values["log-type"] === "file" ? { Path: accessLogPath } : {}), ...format } } : {};
        await consul.api("PUT", "/v1/config", { Kind: "proxy-defaults", Name: "global", Config: { protocol: "http" }, ...accessLogs });
        const setup = await startSetup(id === "plain" ? "plain" : id === "l4metrics" ? "connectMetrics" : "connect", ctx);
        try {
          const load = { port: setup.entryPort, connections: 16, path: "/api/items/42", cpu: cpu.a };
          const linesBefore = id === "l4log" ? countLines(accessLogPath) : 0;
          const warm = await runWrk({ ...load, seconds: 2 });
          if (warm.errorCount > 0) throw new Error(`${id}: warm-up: ${JSON.stringify(warm.errors)} (status counts answers of 400 and above)`);
          if (id === "l7") {
            // The figure is the native rules' only if db's authorizer switched them on (controller/native-l7.ts).
            const socket = setup.dbStatsSocket();
            const map = await sendRuntimeCommand(socket, `show map ${join(dirname(socket), "passes.map")}`);
            if (!/ l7 0\b/.test(map)) throw new Error(`l7: db's native L7 rules are off (pass map: ${JSON.stringify(map)})`);
          }
          const run = await runWrk({ ...load, seconds });
          if (run.errorCount > 0) throw new Error(`${id}: ${JSON.stringify(run.errors)} (status counts answers of 400 and above)`);
          samples[id].push(Math.round(run.requestsPerSecond));
          if (id === "l4metrics") {
            const { ms, ...scrape } = (await setup.details()).scrape;
            scrapes.push({ ...scrape, ms: ms.length ? quantileSummary(ms) : undefined });
          }
          if (id === "l4log" && values["log-type"] === "file") {
            // Both sidecars log every request: a missing line is one HAProxy dropped (the pipe was full) or the relay lost.
            await new Promise((resolve) => setTimeout(resolve, 300));
            logLines.push({ expected: 2 * (warm.requests + run.requests), written: countLines(accessLogPath) - linesBefore });
          }
          log(`round ${round + 1} ${id}: ${Math.round(run.requestsPerSecond)} requests/s`);
        } finally {
          await setup.stop();
        }
      }
    }
  } finally {
    await app?.stop();
    await consul?.stop();
    await stopAll();
    rmSync(runDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify({
    secondsPerRun: seconds,
    rounds,
    requestsPerSecond: samples,
    medians: Object.fromEntries(setups.map((id) => [id, median(samples[id])])),
    ratioToPlain: samples.plain.length ? Object.fromEntries(setups.filter((id) => id !== "plain").map((id) => [id, medianRatio(samples[id], samples.plain)])) : undefined,
    accessLogCost: samples.l4.length && samples.l4log.length ? { l4logToL4: medianRatio(samples.l4log, samples.l4) } : undefined,
    metricsCost: samples.l4.length && samples.l4metrics.length ? { l4metricsToL4: medianRatio(samples.l4metrics, samples.l4), scrapesPerRound: scrapes } : undefined,
    accessLogLines: logLines.length ? { expected: logLines.reduce((n, r) => n + r.expected, 0), written: logLines.reduce((n, r) => n + r.written, 0) } : undefined,
    noise: samples.plain.length ? { plainSpread: spread(samples.plain) } : { l4Spread: spread(samples.l4) },
  }, null, 2));
  return 0;
});
