#!/usr/bin/env node
// The controller's cost as the mesh grows (issue 14, item 6), with a real
// Consul dev agent (CONSUL_BIN), real HAProxy and the built CLI:
//   - web's sidecar has --upstreams upstreams (default 50): db, and svc-1 … svc-49;
//   - db has --instances healthy instances (default 500), each a real TLS
//     endpoint presenting db's Consul leaf (one HAProxy binding one port per
//     instance), registered in the catalog as connect proxies for db;
// and measures: the time from start to serving (the first request through
// db's upstream; every instance in web's backend), the time for one instance
// change to apply, the time to apply --burst changes (default 100) written
// within one second, the controller's CPU and RSS, HAProxy's RSS, and the
// reloads and runtime operations each phase caused. Not a test: it prints figures.
// Usage: CONSUL_BIN=/path/to/consul node bench/scale.mjs [--instances N] [--upstreams N] [--burst N] [--rounds N]
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { request } from "node:http";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startConsulDev } from "../dist/test/harness/consul.js";
import { sendRuntimeCommand, startHaproxy } from "../dist/test/harness/haproxy.js";
import { startConnectHaproxy } from "../dist/test/harness/mesh.js";
import { controllerCli } from "../dist/test/harness/paths.js";
import { freePorts } from "../dist/test/harness/ports.js";
import { ProcessGroup, cpuSeconds, peakRssKb, rssKb } from "../dist/test/harness/process-stats.js";
import { installCleanupHandlers, sleep, startProcess, stopAll, waitUntil } from "../dist/test/harness/processes.js";
import { quantileSummary } from "./lib/report.mjs";

const USAGE = `usage: node bench/scale.mjs [--instances N] [--upstreams N] [--burst N] [--rounds N]
  --instances N   healthy instances of db, web's first upstream (default 500)
  --upstreams N   upstreams of web's sidecar, db included (default 50)
  --burst N       instance changes written within one second (default 100)
  --rounds N      single instance changes measured, each way (default 10)
environment: CONSUL_BIN (required), HAPROXY_BIN (default haproxy)
Prints a JSON summary on stdout; exit 0 done, 1 a measurement failed, 2 bad usage.`;

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      instances: { type: "string", default: "500" },
      upstreams: { type: "string", default: "50" },
      burst: { type: "string", default: "100" },
      rounds: { type: "string", default: "10" },
      help: { type: "boolean", short: "h" },
    },
  }));
} catch (err) {
  console.error(`scale: ${err.message}\n${USAGE}`);
  process.exit(2);
}
if (options.help) {
  console.log(USAGE);
  process.exit(0);
}
const instanceCount = Number(options.instances);
const upstreamCount = Number(options.upstreams);
const burst = Number(options.burst);
const rounds = Number(options.rounds);
if (!process.env.CONSUL_BIN || !existsSync(controllerCli) || !(instanceCount >= 1) || !(upstreamCount >= 1) || !(burst >= 1 && burst <= instanceCount) || !(rounds >= 1)) {
  console.error(`scale: needs CONSUL_BIN, a build (npm run build), and 1 ≤ --burst ≤ --instances\n${USAGE}`);
  process.exit(2);
}
installCleanupHandlers(console.error, "scale");
const log = (message) => console.error(`scale: ${message}`);
const now = () => performance.now();
const every = (intervalMs, timeoutMs = 120_000) => ({ intervalMs, timeoutMs });

/** One HTTP request through `port`; its status, 0 when it failed. */
const getStatus = (port) =>
  new Promise((resolve) => {
    const req = request({ host: "127.0.0.1", port, path: "/", agent: false, timeout: 2000 }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(0));
    req.end();
  });

/** The instances' endpoints: one HAProxy, one TLS port per instance, presenting db's leaf, verifying the client against the roots. */
function endpointsConfig(ports) {
  return [
    "global",
    `    maxconn ${4 * ports.length + 100}`,
    "defaults",
    "    mode http",
    "    timeout connect 5s",
    "    timeout client 30s",
    "    timeout server 30s",
    "frontend instances",
    ...ports.map((port) => `    bind 127.0.0.1:${port} ssl crt {{DIR}}/db.pem ca-file {{DIR}}/roots.pem verify required`),
    '    http-request return status 200 content-type text/plain string "db"',
    "",
  ].join("\n");
}

let consul;
const runDir = mkdtempSync(join(tmpdir(), "ch-scale-"));
try {
  consul = await startConsulDev({ nodeName: "bench" });
  const { api } = consul;
  const ports = await freePorts(instanceCount + upstreamCount + 2);
  const instancePorts = ports.slice(0, instanceCount);
  const upstreamPorts = ports.slice(instanceCount, instanceCount + upstreamCount);
  const [webPublic, webApp] = ports.slice(instanceCount + upstreamCount);

  const leaf = await api("GET", "/v1/agent/connect/ca/leaf/db");
  const roots = await api("GET", "/v1/agent/connect/ca/roots");
  const endpoints = await startHaproxy(endpointsConfig(instancePorts), {
    name: "instances",
    files: { "db.pem": `${leaf.CertPEM}${leaf.PrivateKeyPEM}`, "roots.pem": roots.Roots.map((root) => root.RootCert).join("\n") },
  });

  // Every instance a connect proxy for db (what /v1/health/connect/db returns), with a check the bench flips.
  const instance = (i, status) => ({
    Node: "scale-node",
    Address: "127.0.0.1",
    SkipNodeUpdate: i > 0,
    Service: { ID: `db-proxy-${i}`, Service: "db-sidecar-proxy", Kind: "connect-proxy", Address: "127.0.0.1", Port: instancePorts[i], Proxy: { DestinationServiceName: "db", DestinationServiceID: `db-${i}`, LocalServicePort: 1 } },
    Check: { CheckID: `db-proxy-${i}`, Name: "bench", Status: status, ServiceID: `db-proxy-${i}` },
  });
  let started = now();
  for (let i = 0; i < instanceCount; i++) await api("PUT", "/v1/catalog/register", instance(i, "passing"));
  // The other upstreams: one instance each (no traffic goes to them).
  for (let k = 1; k < upstreamCount; k++) {
    await api("PUT", "/v1/catalog/register", {
      Node: "scale-node",
      Address: "127.0.0.1",
      SkipNodeUpdate: true,
      Service: { ID: `svc-${k}-proxy`, Service: `svc-${k}-sidecar-proxy`, Kind: "connect-proxy", Address: "127.0.0.1", Port: instancePorts[k % instanceCount], Proxy: { DestinationServiceName: `svc-${k}`, LocalServicePort: 1 } },
    });
  }
  log(`registered ${instanceCount} instances of db and ${upstreamCount - 1} other services in ${((now() - started) / 1000).toFixed(1)} s`);
  const upstreams = [
    { DestinationName: "db", LocalBindAddress: "127.0.0.1", LocalBindPort: upstreamPorts[0] },
    ...Array.from({ length: upstreamCount - 1 }, (_, k) => ({ DestinationName: `svc-${k + 1}`, LocalBindAddress: "127.0.0.1", LocalBindPort: upstreamPorts[k + 1] })),
  ];
  await api("PUT", "/v1/agent/service/register", {
    ID: "web",
    Name: "web",
    Address: "127.0.0.1",
    Port: webApp,
    Connect: { SidecarService: { Address: "127.0.0.1", Port: webPublic, Checks: [{ Name: "bench", TTL: "24h", Status: "passing" }], Proxy: { Config: { bind_address: "127.0.0.1" }, Upstreams: upstreams } } },
  });

  // 1. From start to serving.
  started = now();
  // Its output to a file: counting reloads and runtime operations needs every line.
  const sidecar = startConnectHaproxy("web", consul.httpAddr, {
    logLevel: "info",
    launch: (name, command, args) => startProcess(name, command, args, { logFile: join(runDir, "web-sidecar.log"), stopDescendants: true }),
  });
  const group = new ProcessGroup("web sidecar", [sidecar.process]);
  const statsSocket = join(sidecar.configDir, "stats.sock");
  const readySlots = async () =>
    (await sendRuntimeCommand(statsSocket, "show servers state upstream_db").catch(() => ""))
      .split("\n")
      .map((line) => line.split(" "))
      .filter((cols) => cols.length > 18 && /^\d+$/.test(cols[0]) && (Number(cols[6]) & 0x21) === 0).length;
  await waitUntil("a request through db's upstream answered 200", async () => (await getStatus(upstreamPorts[0])) === 200, every(20));
  const firstRequestMs = now() - started;
  await waitUntil(`all ${instanceCount} instances in web's backend`, async () => (await readySlots()) === instanceCount, every(20));
  const allInstancesMs = now() - started;
  log(`serving after ${firstRequestMs.toFixed(0)} ms, all instances after ${allInstancesMs.toFixed(0)} ms`);
  await sleep(2000);

  const lines = () => sidecar.process.output().split("\n");
  const reloads = () => lines().filter((line) => /applied change .*path="(validated|seamless) reload|new master/.test(line)).length;
  const runtimeOperations = () => lines().filter((line) => /applied change .*path="runtime API/.test(line)).length;
  const controllerPid = sidecar.process.pid;
  /** What a phase cost: controller and HAProxy CPU, reloads and runtime operations. */
  async function phase(name, body) {
    const before = { reloads: reloads(), operations: runtimeOperations(), cpu: group.sample(), controllerCpu: cpuSeconds(controllerPid) };
    const result = await body();
    await sleep(500);
    const after = { reloads: reloads(), operations: runtimeOperations(), cpu: group.sample(), controllerCpu: cpuSeconds(controllerPid) };
    const byCommand = group.cpuByCommand(before.cpu, after.cpu);
    log(`${name}: done`);
    return {
      ...result,
      reloads: after.reloads - before.reloads,
      runtimeOperations: after.operations - before.operations,
      controllerCpuSeconds: +(after.controllerCpu - before.controllerCpu).toFixed(3),
      haproxyCpuSeconds: +(byCommand.haproxy ?? 0).toFixed(3),
    };
  }

  // 2. One instance change at a time: out (critical), then back (passing).
  const single = await phase("single changes", async () => {
    const out = [];
    const back = [];
    for (let r = 0; r < rounds; r++) {
      const i = (r * 37) % instanceCount;
      let t0 = now();
      await api("PUT", "/v1/catalog/register", instance(i, "critical"));
      await waitUntil("the instance's slot out", async () => (await readySlots()) === instanceCount - 1, every(5));
      out.push(now() - t0);
      t0 = now();
      await api("PUT", "/v1/catalog/register", instance(i, "passing"));
      await waitUntil("the instance's slot back", async () => (await readySlots()) === instanceCount, every(5));
      back.push(now() - t0);
      await sleep(300);
    }
    return { instanceOutMs: quantileSummary(out), instanceBackMs: quantileSummary(back) };
  });

  // 3. A burst: `burst` instances out, written evenly within one second; then all back the same way.
  async function burstOf(status, expected) {
    const t0 = now();
    const spacingMs = 1000 / burst;
    const writes = [];
    for (let b = 0; b < burst; b++) {
      writes.push(api("PUT", "/v1/catalog/register", instance(b * Math.floor(instanceCount / burst), status)));
      await sleep(Math.max(0, t0 + (b + 1) * spacingMs - now()));
    }
    await Promise.all(writes);
    const writtenMs = now() - t0;
    await waitUntil(`${expected} slots ready`, async () => (await readySlots()) === expected, every(10));
    return { writtenWithinMs: Math.round(writtenMs), allAppliedMs: Math.round(now() - t0) };
  }
  const burstOut = await phase(`${burst} changes out`, () => burstOf("critical", instanceCount - burst));
  await sleep(2000);
  const burstBack = await phase(`${burst} changes back`, () => burstOf("passing", instanceCount));

  group.sample();
  const haproxyPids = group.pids().filter((pid) => pid !== controllerPid);
  const mb = (kb) => +((kb ?? 0) / 1024).toFixed(1);
  const config = readFileSync(join(sidecar.configDir, "haproxy.cfg"), "utf8");
  const results = {
    date: new Date().toISOString(),
    instances: instanceCount,
    upstreams: upstreamCount,
    configuration: { bytes: config.length, servers: (config.match(/^ {4}server /gm) ?? []).length },
    startToServing: { firstRequestMs: Math.round(firstRequestMs), allInstancesMs: Math.round(allInstancesMs) },
    singleChange: single,
    burstOut,
    burstBack,
    memory: {
      controllerRssMB: mb(rssKb(controllerPid)),
      controllerPeakRssMB: mb(peakRssKb(controllerPid)),
      haproxyRssMB: haproxyPids.map((pid) => ({ pid, command: group.commands.get(pid), rssMB: mb(rssKb(pid)), peakMB: mb(peakRssKb(pid)) })),
    },
    reloadsSinceStart: reloads(),
  };
  console.log(JSON.stringify(results, null, 2));
  await sidecar.stop();
  await endpoints.stop();
} catch (err) {
  console.error(`scale: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await stopAll();
  await consul?.stop();
  if (process.exitCode || process.env.SCALE_KEEP) log(`the sidecar's log is kept in ${runDir}`);
  else rmSync(runDir, { recursive: true, force: true });
}
