#!/usr/bin/env node
// Kept-alive HTTP through a pair of sidecars (web's upstream listener → mTLS →
// db's public listener → an application answering 200), protocol http on
// both sides, with a real Consul dev agent:
//   plain  the controller's render for the same registrations without the
//          authorizer's lines (same logging, same TLS): no authorization at all
//   l4     connect-haproxy run by the controller, web → db allowed by an L4 intention
//   l4log  l4 with proxy-defaults AccessLogs on (Consul's default JSON format,
//          Type file: both sidecars' lines through the controller into one file)
//   l7     the same, web → db governed by an L7 intention of 10 permissions
//          (the request matches the 10th; the first nine are POST-only with a
//          header regex), decided by the native rules the controller renders
//          (checked to be switched on before measuring)
// Rounds interleave the set-ups; each figure is a median over rounds, each
// ratio the median of the per-round ratios; the spread of the plain pair's
// rounds is the noise figure.
//   node bench/http-pair.mjs [--rounds N] [--seconds S] [--log-format JSON]   (after npm run build; CONSUL_BIN)
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
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
import { median, medianRatio, spread } from "./lib/report.mjs";
import { startSetup } from "./lib/setups.mjs";

const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" }, seconds: { type: "string", default: "8" }, "log-format": { type: "string" } } });
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
  l7: [{ Name: "web", Permissions: L7_PERMISSIONS }],
};


runProgram("http-pair", async () => {
  const runDir = mkdtempSync(join(tmpdir(), "ch-http-pair-"));
  const cpu = cpus().length >= 2 ? { a: "0", b: "1" } : { a: undefined, b: undefined };
  let consul;
  let app;
  const samples = { plain: [], l4: [], l4log: [], l7: [] };
  try {
    consul = await startConsulDev({ nodeName: "bench", cpu: cpu.b, logFile: join(runDir, "consul.log") });
    await consul.api("PUT", "/v1/config", { Kind: "proxy-defaults", Name: "global", Config: { protocol: "http" } });
    const [appPort, dbPublic, webPublic, webApp, upstream] = await freePorts(5);
    const ports = { app: appPort, dbPublic, webPublic, webApp, upstream };
    await registerMesh(consul, ports, { protocol: "http" });
    app = await startHaproxy(readFileSync(join(appsDir, "http-ok.cfg"), "utf8"), { dir: runDir, name: "app", cpu: cpu.b, env: { APP_PORT: String(appPort) }, logToFile: true });
    const ctx = { runDir, consul, haproxyBin: process.env.HAPROXY_BIN ?? "haproxy", ports, cpu, runCounter: 0 };
    for (let round = 0; round < rounds; round++) {
      const order = ["plain", "l4", "l4log", "l7"].map((_, i, all) => all[(i + round) % all.length]);
      for (const id of order) {
        if (id !== "plain") await consul.api("PUT", "/v1/config", { Kind: "service-intentions", Name: "db", Sources: INTENTIONS[id] });
        const format = values["log-format"] ? { JSONFormat: values["log-format"] } : {};
        const accessLogs = id === "l4log" ? { AccessLogs: { Enabled: true, Type: "file", Path: join(runDir, "access.log"), ...format } } : {};
        await consul.api("PUT", "/v1/config", { Kind: "proxy-defaults", Name: "global", Config: { protocol: "http" }, ...accessLogs });
        const setup = await startSetup(id === "plain" ? "plain" : "connect", ctx);
        try {
          const load = { port: setup.entryPort, connections: 16, path: "/api/items/42", cpu: cpu.a };
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
    medians: { plain: median(samples.plain), l4: median(samples.l4), l4log: median(samples.l4log), l7: median(samples.l7) },
    ratioToPlain: { l4: medianRatio(samples.l4, samples.plain), l4log: medianRatio(samples.l4log, samples.plain), l7: medianRatio(samples.l7, samples.plain) },
    accessLogCost: { l4logToL4: medianRatio(samples.l4log, samples.l4) },
    noise: { plainSpread: spread(samples.plain) },
  }, null, 2));
  return 0;
});
