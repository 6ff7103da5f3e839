#!/usr/bin/env node
// How fast the controller applies Consul changes to HAProxy, on loopback, with
// a real Consul dev agent (CONSUL_BIN), real HAProxy and the built CLI:
//   - instance change: a db instance enters/leaves maintenance -> web's backend slot changes
//   - leaf rotation: Consul serves a renewed leaf -> db's listener serves it
//   - intention flip: allow <-> deny written -> the next connection follows it
//   - L7 rule change: a service-intentions entry with permissions written -> the next HTTP request follows it
// and each controller's resident memory. Not a test: it prints figures.
// Usage: CONSUL_BIN=/path/to/consul node bench/controller-latency.mjs [--rounds N] [--rotations N] (--help)
import { existsSync, readFileSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { parseArgs } from "node:util";
import { startConsulDev } from "../dist/test/harness/consul.js";
import { sendRuntimeCommand } from "../dist/test/harness/haproxy.js";
import { request } from "node:http";
import { startConnectHaproxy, startHttpEchoApp } from "../dist/test/harness/mesh.js";
import { controllerCli } from "../dist/test/harness/paths.js";
import { quantileSummary } from "./lib/report.mjs";
import { freePorts } from "../dist/test/harness/ports.js";
import { peakRssKb, rssKb } from "../dist/test/harness/process-stats.js";
import { installCleanupHandlers, sleep, stopAll, waitUntil } from "../dist/test/harness/processes.js";

const USAGE = `usage: node bench/controller-latency.mjs [--rounds N] [--rotations N]
  --rounds N      instance changes and intention flips measured (default 10)
  --rotations N   CA rotations measured, each about 5 s (default 2)
environment: CONSUL_BIN (required: a consul binary; npm run bench finds or builds one), HAPROXY_BIN (default haproxy)
Prints a JSON summary (milliseconds) on stdout; exit 0 done, 1 a measurement failed, 2 bad usage.`;

let options;
try {
  ({ values: options } = parseArgs({ options: { rounds: { type: "string", default: "10" }, rotations: { type: "string", default: "2" }, help: { type: "boolean", short: "h" } } }));
} catch (err) {
  console.error(`controller-latency: ${err.message}\n${USAGE}`);
  process.exit(2);
}
if (options.help) {
  console.log(USAGE);
  process.exit(0);
}
const rounds = Number(options.rounds);
const rotations = Number(options.rotations);
if (!process.env.CONSUL_BIN) {
  console.error(`controller-latency: set CONSUL_BIN to a consul binary\n${USAGE}`);
  process.exit(2);
}
if (!(rounds >= 1) || !(rotations >= 0)) {
  console.error(`controller-latency: --rounds must be at least 1 and --rotations at least 0\n${USAGE}`);
  process.exit(2);
}
if (!existsSync(controllerCli)) {
  console.error(`controller-latency: ${controllerCli} is missing: run npm run build`);
  process.exit(2);
}
installCleanupHandlers(console.error, "controller-latency");
const now = () => performance.now();

/** Short polling intervals: they bound the measurements' resolution. */
const every = (intervalMs, timeoutMs = 60_000) => ({ intervalMs, timeoutMs });

function exchange(port, payload = "x") {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    const timer = setTimeout(() => finish(false), 2000);
    const finish = (ok) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    socket.on("connect", () => socket.write(payload));
    socket.on("data", () => finish(true));
    socket.on("error", () => finish(false));
    socket.on("close", () => finish(false));
  });
}

function servedSerial(port, pem) {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: "127.0.0.1", port, cert: pem, key: pem, rejectUnauthorized: false }, () => {
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial.replace(/^0+/, "").toUpperCase());
    });
    socket.on("error", reject);
  });
}


function rssOf(pid) {
  return { rssMB: +((rssKb(pid) ?? 0) / 1024).toFixed(1), peakMB: +((peakRssKb(pid) ?? 0) / 1024).toFixed(1) };
}

let consul;
const echo = createServer((s) => s.pipe(s));
try {
  consul = await startConsulDev({ nodeName: "bench" });
  const { httpAddr, api } = consul;

  const [appPort, db1Public, db2Public, webPublic, upstream, apiApp, apiPublic, apiUpstream] = await freePorts(8);
  await new Promise((r) => echo.listen(appPort, "127.0.0.1", r));
  const registerWithSidecar = (id, name, publicPort, upstreams = [], port = appPort) =>
    api("PUT", "/v1/agent/service/register", {
      ID: id, Name: name, Port: port, Address: "127.0.0.1",
      Connect: { SidecarService: { Port: publicPort, Address: "127.0.0.1", Checks: [{ TCP: `127.0.0.1:${publicPort}`, Interval: "1s" }], Proxy: { Upstreams: upstreams } } },
    });
  await registerWithSidecar("db-1", "db", db1Public);
  await registerWithSidecar("db-2", "db", db2Public);
  // api: an HTTP service, protected by L7 intentions.
  await api("PUT", "/v1/config", { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await api("PUT", "/v1/config", { Kind: "service-intentions", Name: "api", Sources: [{ Name: "web", Permissions: [{ Action: "allow", HTTP: { PathPrefix: "/" } }] }] });
  startHttpEchoApp(apiApp, "api");
  await registerWithSidecar("api-1", "api", apiPublic, [], apiApp);
  await registerWithSidecar("web-1", "web", webPublic, [{ DestinationName: "db", LocalBindPort: upstream }, { DestinationName: "api", LocalBindPort: apiUpstream }]);
  const controllers = {};
  for (const id of ["db-1", "db-2", "api-1", "web-1"]) controllers[id] = startConnectHaproxy(id, httpAddr, { logLevel: "info" });
  const dirs = Object.fromEntries(Object.entries(controllers).map(([id, c]) => [id, c.configDir]));
  const webStats = join(dirs["web-1"], "stats.sock");
  const readySlots = async () =>
    (await sendRuntimeCommand(webStats, "show servers state upstream_db"))
      .split("\n")
      .map((l) => l.split(" "))
      .filter((c) => c.length > 18 && /^\d+$/.test(c[0]) && (Number(c[6]) & 0x21) === 0).length;
  await waitUntil("both db instances in web's backend", async () => (await readySlots()) === 2, every(50));
  await waitUntil("traffic", () => exchange(upstream), every(50, 30_000));
  console.error("setup done; measuring");

  // 1. Instance changes: maintenance mode on db-2's sidecar takes it out of ?passing.
  const removals = [];
  const additions = [];
  for (let i = 0; i < rounds; i++) {
    let t0 = now();
    await api("PUT", "/v1/agent/service/maintenance/db-2-sidecar-proxy?enable=true&reason=bench");
    await waitUntil("slot removed", async () => (await readySlots()) === 1, every(5));
    removals.push(now() - t0);
    await sleep(200);
    t0 = now();
    await api("PUT", "/v1/agent/service/maintenance/db-2-sidecar-proxy?enable=false");
    await waitUntil("slot added", async () => (await readySlots()) === 2, every(5));
    additions.push(now() - t0);
    await sleep(200);
  }

  // 2. Intention flips: time until the next connection follows the new intention.
  const denies = [];
  const allows = [];
  for (let i = 0; i < rounds; i++) {
    let t0 = now();
    await api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "deny" });
    await waitUntil("denied", async () => !(await exchange(upstream)), every(1, 10_000));
    denies.push(now() - t0);
    t0 = now();
    await api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "allow" });
    await waitUntil("allowed", () => exchange(upstream), every(1, 10_000));
    allows.push(now() - t0);
  }

  // 3. L7 rule changes: a deny on /a added and removed; time until the next request follows.
  const getStatus = (path) =>
    new Promise((resolve) => {
      const req = request({ host: "127.0.0.1", port: apiUpstream, path, agent: false }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      });
      req.on("error", () => resolve(0));
      req.end();
    });
  const l7Rules = (denyA) => ({
    Kind: "service-intentions",
    Name: "api",
    Sources: [{ Name: "web", Permissions: [...(denyA ? [{ Action: "deny", HTTP: { PathPrefix: "/a" } }] : []), { Action: "allow", HTTP: { PathPrefix: "/" } }] }],
  });
  await waitUntil("api through web's upstream", async () => (await getStatus("/a")) === 200, every(50, 30_000));
  const l7Changes = [];
  for (let i = 0; i < 2 * rounds; i++) {
    const denyA = i % 2 === 0;
    const t0 = now();
    await api("PUT", "/v1/config", l7Rules(denyA));
    await waitUntil("the L7 change enforced", async () => (await getStatus("/a")) === (denyA ? 403 : 200), every(1, 10_000));
    l7Changes.push(now() - t0);
  }

  // 4. Leaf rotations: from Consul serving a renewed leaf to db's listener serving it.
  //    A new key size makes the built-in CA rotate its root and re-issue every leaf.
  const webLeaf = () => readFileSync(join(dirs["web-1"], "certs", "leaf.pem"), "utf8");
  const leafApplied = [];
  const endToEnd = [];
  for (let i = 0; i < rotations; i++) {
    const before = await servedSerial(db1Public, webLeaf());
    const leafIndex = Number((await fetch(`http://${httpAddr}/v1/agent/connect/ca/leaf/db`)).headers.get("x-consul-index"));
    const t0 = now();
    await api("PUT", "/v1/connect/ca/configuration", { Provider: "consul", Config: { LeafCertTTL: "72h", PrivateKeyType: "ec", PrivateKeyBits: i % 2 === 0 ? 384 : 256 } });
    // A blocking query returns as soon as the agent holds the renewed leaf.
    let issuedAt;
    let serial;
    for (let index = leafIndex; ; ) {
      const res = await fetch(`http://${httpAddr}/v1/agent/connect/ca/leaf/db?index=${index}&wait=20s`);
      const leaf = await res.json();
      index = Number(res.headers.get("x-consul-index"));
      serial = leaf.SerialNumber.replaceAll(":", "").replace(/^0+/, "").toUpperCase();
      if (serial !== before) {
        issuedAt = now();
        break;
      }
    }
    await waitUntil("renewed leaf served", async () => (await servedSerial(db1Public, webLeaf())) === serial, every(5));
    leafApplied.push(now() - issuedAt);
    endToEnd.push(now() - t0);
    await sleep(3000);
  }

  const memory = Object.fromEntries(Object.entries(controllers).map(([id, c]) => [id, rssOf(c.process.pid)]));
  const results = {
    date: new Date().toISOString(),
    instanceRemovedMs: quantileSummary(removals),
    instanceAddedMs: quantileSummary(additions),
    intentionDenyMs: quantileSummary(denies),
    intentionAllowMs: quantileSummary(allows),
    l7RuleChangeEnforcedMs: quantileSummary(l7Changes),
    leafServedAfterConsulIssuedItMs: quantileSummary(leafApplied),
    leafServedAfterCaChangeMs: quantileSummary(endToEnd),
    controllerMemory: memory,
  };
  console.log(JSON.stringify(results, null, 2));
  // The controllers' own account of each reload (haproxy -c and reload timings).
  for (const id of ["db-1", "web-1"]) console.error(controllers[id].process.output().split("\n").filter((l) => l.includes(" reload (")).join("\n"));
  await Promise.all(Object.values(controllers).map((c) => c.stop()));
  for (const dir of Object.values(dirs)) rmSync(dir, { recursive: true, force: true });
} catch (err) {
  console.error(`controller-latency: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  echo.close();
  await stopAll();
  await consul?.stop();
}
