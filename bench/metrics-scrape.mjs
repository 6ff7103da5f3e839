#!/usr/bin/env node
// What one Prometheus scrape of a sidecar costs, apart from traffic: the
// connect-haproxy pair of `npm run bench` with metrics on (--metrics-addr),
// idle, scraped N times back to back on each sidecar. Reports the scrape's
// wall time and the CPU it took each sidecar (controller + HAProxy, from
// /proc/<pid>/stat), and the body's size. With traffic, `bench/http-pair.mjs
// --setups l4,l4metrics` and `bench/run.mjs --setups connect,connectMetrics`
// measure requests/s and new connections/s while both sidecars are scraped
// every second.
//   node bench/metrics-scrape.mjs [--scrapes N]   (after npm run build; CONSUL_BIN)
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startConsulDev } from "../dist/test/harness/consul.js";
import { startHaproxy } from "../dist/test/harness/haproxy.js";
import { appsDir } from "../dist/test/harness/paths.js";
import { freePorts } from "../dist/test/harness/ports.js";
import { cpuBetween } from "../dist/test/harness/process-stats.js";
import { runProgram, stopAll } from "../dist/test/harness/processes.js";
import { registerMesh } from "./lib/mesh.mjs";
import { timedScrape } from "./lib/probe.mjs";
import { quantileSummary } from "./lib/report.mjs";
import { startSetup } from "./lib/setups.mjs";

const { values } = parseArgs({ options: { scrapes: { type: "string", default: "200" } } });
const scrapes = Number(values.scrapes);

runProgram("metrics-scrape", async () => {
  const runDir = mkdtempSync(join(tmpdir(), "ch-metrics-scrape-"));
  const cpu = cpus().length >= 2 ? { a: "0", b: "1" } : { a: undefined, b: undefined };
  let consul;
  let app;
  let setup;
  const result = {};
  try {
    consul = await startConsulDev({ nodeName: "bench", cpu: cpu.b, logFile: join(runDir, "consul.log") });
    const [appPort, dbPublic, webPublic, webApp, upstream] = await freePorts(5);
    const ports = { app: appPort, dbPublic, webPublic, webApp, upstream };
    await registerMesh(consul, ports);
    app = await startHaproxy(readFileSync(join(appsDir, "http-ok.cfg"), "utf8"), { dir: runDir, name: "app", cpu: cpu.b, env: { APP_PORT: String(appPort) }, logToFile: true });
    const ctx = { runDir, consul, haproxyBin: process.env.HAPROXY_BIN ?? "haproxy", ports, cpu, runCounter: 0 };
    setup = await startSetup("connectMetrics", ctx);
    const [web, db] = setup.sidecars;
    for (const [name, group, port] of [["web", web, setup.metricsPorts.web], ["db", db, setup.metricsPorts.db]]) {
      const times = [];
      let bytes = 0;
      const before = group.sample();
      for (let i = 0; i < scrapes; i++) {
        const scrape = await timedScrape(port);
        times.push(scrape.ms);
        bytes = scrape.bytes;
      }
      const cpuSeconds = cpuBetween(before, group.sample());
      result[name] = { bytes, wallMs: quantileSummary(times), cpuMsPerScrape: Math.round((cpuSeconds / scrapes) * 1e5) / 100 };
    }
  } finally {
    await setup?.stop();
    await app?.stop();
    await consul?.stop();
    await stopAll();
    rmSync(runDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify(result, null, 2));
  return 0;
});
