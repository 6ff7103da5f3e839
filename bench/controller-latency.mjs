#!/usr/bin/env node
// How fast the controller applies Consul changes to HAProxy, on loopback, with
// a real Consul dev agent (CONSUL_BIN), real HAProxy and the built CLI:
//   - instance change: a db instance enters/leaves maintenance -> web's backend slot changes
//   - leaf rotation: Consul serves a renewed leaf -> db's listener serves it
//   - intention flip: allow <-> deny written -> the next connection follows it
// and each controller's resident memory. Not a test: it prints figures.
// Usage: CONSUL_BIN=/path/to/consul node bench/controller-latency.mjs [--rounds N] [--rotations N]
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: options } = parseArgs({ options: { rounds: { type: "string", default: "10" }, rotations: { type: "string", default: "2" } } });
const rounds = Number(options.rounds);
const rotations = Number(options.rotations);
const consulBin = process.env.CONSUL_BIN;
if (!consulBin) {
  console.error("controller-latency: set CONSUL_BIN to a consul binary");
  process.exit(2);
}
const repo = new URL("..", import.meta.url).pathname;
const cli = join(repo, "dist", "controller", "cli.js");
const children = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

function start(name, command, args, env = {}) {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (c) => (output += c));
  child.stderr.on("data", (c) => (output += c));
  const entry = { name, child, output: () => output };
  children.push(entry);
  return entry;
}

function stats(socketPath, command) {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let answer = "";
    socket.on("connect", () => socket.end(`${command}\n`));
    socket.on("data", (c) => (answer += c));
    socket.on("error", reject);
    socket.on("close", () => resolve(answer));
  });
}

async function waitUntil(what, probe, timeoutMs = 60_000, intervalMs = 5) {
  const deadline = now() + timeoutMs;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch {}
    if (now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
}

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

const summary = (samples) => {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { n: sorted.length, median: +at(0.5).toFixed(1), p90: +at(0.9).toFixed(1), max: +sorted[sorted.length - 1].toFixed(1) };
};

function rssOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0);
  return { rssMB: +(kb("VmRSS") / 1024).toFixed(1), peakMB: +(kb("VmHWM") / 1024).toFixed(1) };
}

const dataDir = mkdtempSync(join(tmpdir(), "ch-bench-ctl-"));
try {
  const [http, serfLan, serfWan, server] = [await freePort(), await freePort(), await freePort(), await freePort()];
  writeFileSync(
    join(dataDir, "agent.json"),
    JSON.stringify({ node_name: "bench", bind_addr: "127.0.0.1", client_addr: "127.0.0.1", advertise_addr: "127.0.0.1", log_level: "warn", ports: { http, dns: -1, serf_lan: serfLan, serf_wan: serfWan, server, grpc: -1, grpc_tls: -1 } }),
  );
  start("consul", consulBin, ["agent", "-dev", "-config-file", join(dataDir, "agent.json")]);
  const httpAddr = `127.0.0.1:${http}`;
  const api = async (method, path, body) => {
    const res = await fetch(`http://${httpAddr}${path}`, { method, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  };
  await waitUntil("consul", async () => (await api("GET", "/v1/agent/connect/ca/roots")).Roots?.length > 0, 30_000, 100);

  const echo = createServer((s) => s.pipe(s));
  const appPort = await freePort();
  await new Promise((r) => echo.listen(appPort, "127.0.0.1", r));
  const [db1Public, db2Public, webPublic, upstream] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const registerWithSidecar = (id, name, publicPort, upstreams = []) =>
    api("PUT", "/v1/agent/service/register", {
      ID: id, Name: name, Port: appPort, Address: "127.0.0.1",
      Connect: { SidecarService: { Port: publicPort, Address: "127.0.0.1", Checks: [{ TCP: `127.0.0.1:${publicPort}`, Interval: "1s" }], Proxy: { Upstreams: upstreams } } },
    });
  await registerWithSidecar("db-1", "db", db1Public);
  await registerWithSidecar("db-2", "db", db2Public);
  await registerWithSidecar("web-1", "web", webPublic, [{ DestinationName: "db", LocalBindPort: upstream }]);
  const dirs = {};
  const controllers = {};
  for (const id of ["db-1", "db-2", "web-1"]) {
    dirs[id] = mkdtempSync(join(tmpdir(), `ch-bench-${id}-`));
    controllers[id] = start(id, process.execPath, [cli, "--sidecar-for", id, "--config-dir", dirs[id]], { CONSUL_HTTP_ADDR: httpAddr });
  }
  const webStats = join(dirs["web-1"], "stats.sock");
  const readySlots = async () =>
    (await stats(webStats, "show servers state upstream_db"))
      .split("\n")
      .map((l) => l.split(" "))
      .filter((c) => c.length > 18 && /^\d+$/.test(c[0]) && (Number(c[6]) & 0x21) === 0).length;
  await waitUntil("both db instances in web's backend", async () => (await readySlots()) === 2, 60_000, 50);
  await waitUntil("traffic", () => exchange(upstream), 30_000, 50);
  console.error("setup done; measuring");

  // 1. Instance changes: maintenance mode on db-2's sidecar takes it out of ?passing.
  const removals = [];
  const additions = [];
  for (let i = 0; i < rounds; i++) {
    let t0 = now();
    await api("PUT", "/v1/agent/service/maintenance/db-2-sidecar-proxy?enable=true&reason=bench");
    await waitUntil("slot removed", async () => (await readySlots()) === 1);
    removals.push(now() - t0);
    await sleep(200);
    t0 = now();
    await api("PUT", "/v1/agent/service/maintenance/db-2-sidecar-proxy?enable=false");
    await waitUntil("slot added", async () => (await readySlots()) === 2);
    additions.push(now() - t0);
    await sleep(200);
  }

  // 2. Intention flips: time until the next connection follows the new intention.
  const denies = [];
  const allows = [];
  for (let i = 0; i < rounds; i++) {
    let t0 = now();
    await api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "deny" });
    await waitUntil("denied", async () => !(await exchange(upstream)), 10_000, 1);
    denies.push(now() - t0);
    t0 = now();
    await api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "allow" });
    await waitUntil("allowed", () => exchange(upstream), 10_000, 1);
    allows.push(now() - t0);
  }

  // 3. Leaf rotations: from Consul serving a renewed leaf to db's listener serving it.
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
    await waitUntil("renewed leaf served", async () => (await servedSerial(db1Public, webLeaf())) === serial, 60_000, 5);
    leafApplied.push(now() - issuedAt);
    endToEnd.push(now() - t0);
    await sleep(3000);
  }

  const memory = Object.fromEntries(Object.entries(controllers).map(([id, c]) => [id, rssOf(c.child.pid)]));
  const results = {
    date: new Date().toISOString(),
    instanceRemovedMs: summary(removals),
    instanceAddedMs: summary(additions),
    intentionDenyMs: summary(denies),
    intentionAllowMs: summary(allows),
    leafServedAfterConsulIssuedItMs: summary(leafApplied),
    leafServedAfterCaChangeMs: summary(endToEnd),
    controllerMemory: memory,
  };
  console.log(JSON.stringify(results, null, 2));
  // The controllers' own account of each reload (haproxy -c and reload timings).
  for (const id of ["db-1", "web-1"]) console.error(controllers[id].output().split("\n").filter((l) => l.includes(" reload (")).join("\n"));
  for (const id of Object.keys(controllers)) controllers[id].child.kill("SIGTERM");
  await Promise.all(Object.values(controllers).map((c) => new Promise((r) => (c.child.exitCode !== null ? r() : c.child.once("exit", r)))));
  echo.close();
  for (const dir of Object.values(dirs)) rmSync(dir, { recursive: true, force: true });
} finally {
  for (const c of children) if (c.child.exitCode === null) c.child.kill("SIGKILL");
  rmSync(dataDir, { recursive: true, force: true });
}
