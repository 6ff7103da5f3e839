#!/usr/bin/env node
// The demo (npm run demo): a local Consul dev agent, `web` (HTTP) calling `db`
// (TCP) through two connect-haproxy sidecars, and a walk through what a mesh
// does: intentions allow and deny, a second db instance joins without a reload.
// Every process it starts is stopped at the end, on failure and on Ctrl-C.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
// The controller's own stats-socket client and `show proc` parser (built by npm run demo).
import { parseShowProc, sendRuntimeCommand } from "../../dist/controller/runtime-api.js";

const root = resolve(new URL("../..", import.meta.url).pathname);
const consulBin = process.env.CONSUL_BIN;
if (!consulBin) {
  console.error("demo: CONSUL_BIN is not set; run it with `npm run demo`");
  process.exit(2);
}
const workDir = mkdtempSync(join(tmpdir(), "connect-haproxy-demo-"));
const children = [];
const startedAt = Date.now();

// ---------- small helpers ----------
const say = (text) => console.log(`\n▶ ${text}`);
const detail = (text) => console.log(`    ${text}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function start(name, command, args, env = {}) {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  const entry = { name, child, log: "", exited: false };
  const append = (chunk) => {
    entry.log += chunk.toString();
    if (entry.log.length > 2_000_000) entry.log = entry.log.slice(-1_000_000);
  };
  child.stdout.on("data", append);
  child.stderr.on("data", append);
  child.on("exit", () => (entry.exited = true));
  children.push(entry);
  return entry;
}

async function stopOne(entry) {
  if (entry.exited) return;
  entry.child.kill("SIGTERM");
  for (let i = 0; i < 200 && !entry.exited; i++) await sleep(50);
  if (!entry.exited) entry.child.kill("SIGKILL");
  if (process.env.DEMO_DEBUG) console.log(`stopped ${entry.name} at +${Date.now() - startedAt} ms`);
}

async function stopAll() {
  // Sidecars and apps together, then Consul, which the sidecars talk to.
  await Promise.all(children.filter((e) => e.name !== "consul").map(stopOne));
  await Promise.all(children.map(stopOne));
  rmSync(workDir, { recursive: true, force: true });
}

async function waitFor(what, probe, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    for (const entry of children) if (entry.exited && entry.required) throw new Error(`${entry.name} exited while waiting for ${what}:\n${entry.log.slice(-3000)}`);
    try {
      const value = await probe();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last ? ` (${last.message})` : ""}`);
}

function tcpOpen(port) {
  return new Promise((res) => {
    const s = createConnection(port, "127.0.0.1");
    s.on("connect", () => (s.destroy(), res(true)));
    s.on("error", () => res(false));
  });
}

let consulAddr;
async function consul(method, path, body) {
  const res = await fetch(`http://${consulAddr}${path}`, { method, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`consul ${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

let webPort;
async function callWeb() {
  const res = await fetch(`http://127.0.0.1:${webPort}/`, { signal: AbortSignal.timeout(8000) });
  return { status: res.status, body: (await res.text()).trim() };
}

/** The newest decision a db sidecar's authorizer logged since `since`, with Consul's reason. */
function lastDecision(sidecarLogs, since) {
  const lines = sidecarLogs
    .map((e) => e.log.slice(since.get(e) ?? 0))
    .join("\n")
    .split("\n")
    .filter((l) => l.includes("connect_authorize: "));
  const m = lines.at(-1)?.match(/connect_authorize: (allow|deny) target=(\S+) client=(\S+) reason="((?:[^"\\]|\\.)*)"/);
  return m ? { allowed: m[1] === "allow", target: m[2], client: m[3], reason: m[4] } : undefined;
}

async function setIntention(action) {
  await consul("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: action, Description: "connect-haproxy demo" });
}

async function registerDb(instance, appPort, sidecarPort) {
  await consul("PUT", "/v1/agent/service/register", {
    ID: instance,
    Name: "db",
    Address: "127.0.0.1",
    Port: appPort,
    Check: { Name: `${instance} TCP`, TCP: `127.0.0.1:${appPort}`, Interval: "1s", Timeout: "1s" },
    Connect: { SidecarService: { Port: sidecarPort } },
  });
}

function startSidecar(serviceId) {
  const entry = start(`sidecar for ${serviceId}`, process.execPath, [
    join(root, "dist/controller/cli.js"),
    "--sidecar-for",
    serviceId,
    "--http-addr",
    consulAddr,
    "--config-dir",
    join(workDir, `sidecar-${serviceId}`),
  ]);
  entry.required = true;
  return entry;
}

/** How many servers of web's upstream backend are in service (not in maintenance). */
async function upstreamServersUp(configDir) {
  const csv = await sendRuntimeCommand(join(configDir, "stats.sock"), "show stat");
  return csv.split("\n").filter((l) => l.startsWith("upstream_db,") && !/,(BACKEND|FRONTEND),/.test(l) && !/MAINT/.test(l)).length;
}

async function reloadsOf(configDir) {
  return parseShowProc(await sendRuntimeCommand(join(configDir, "master.sock"), "show proc")).reloads;
}

// ---------- the walk-through ----------
async function main() {
  const [http, serfLan, serfWan, server] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  consulAddr = `127.0.0.1:${http}`;
  const agentConfig = join(workDir, "consul.json");
  writeFileSync(
    agentConfig,
    JSON.stringify({
      bind_addr: "127.0.0.1",
      client_addr: "127.0.0.1",
      ports: { http, dns: -1, grpc: -1, grpc_tls: -1, serf_lan: serfLan, serf_wan: serfWan, server },
      // What operators are told to run: nothing talks unless an intention allows it.
      default_intention_policy: "deny",
      log_level: "warn",
    }),
  );
  say(`Starting a Consul dev agent (${consulAddr}), default intention policy: deny`);
  const agent = start("consul", consulBin, ["agent", "-dev", "-config-file", agentConfig]);
  agent.required = true;
  await waitFor("Consul's CA", async () => (await consul("GET", "/v1/agent/connect/ca/roots")).Roots?.length > 0);

  const [db1Port, db1SidecarPort, db2Port, db2SidecarPort, webAppPort, webSidecarPort, upstreamPort] = await Promise.all(Array.from({ length: 7 }, freePort));
  webPort = webAppPort;

  say("Starting db-1 (a TCP service on 127.0.0.1) and its connect-haproxy sidecar");
  start("db-1 app", process.execPath, [join(root, "test/apps/db-app.mjs"), "--port", String(db1Port), "--name", "db-1"]).required = true;
  await registerDb("db-1", db1Port, db1SidecarPort);
  const db1Sidecar = startSidecar("db-1");
  detail(`db-1 listens on 127.0.0.1:${db1Port}; its sidecar's public mTLS listener on :${db1SidecarPort}`);

  say("Starting web (an HTTP service) and its sidecar, with db as an upstream");
  start("web app", process.execPath, [join(root, "test/apps/web-app.mjs"), "--port", String(webAppPort), "--db", `127.0.0.1:${upstreamPort}`]).required = true;
  await consul("PUT", "/v1/agent/service/register", {
    ID: "web",
    Name: "web",
    Address: "127.0.0.1",
    Port: webAppPort,
    Connect: { SidecarService: { Port: webSidecarPort, Proxy: { Upstreams: [{ DestinationName: "db", LocalBindPort: upstreamPort }] } } },
  });
  const webSidecar = startSidecar("web");
  detail(`web listens on 127.0.0.1:${webAppPort} and reaches db at 127.0.0.1:${upstreamPort}, web's upstream listener`);
  await waitFor("both sidecars to listen", async () => (await tcpOpen(db1SidecarPort)) && (await tcpOpen(upstreamPort)));
  const webConfigDir = join(workDir, "sidecar-web");
  await waitFor("db-1 to pass its health check and join web's upstream", async () => (await upstreamServersUp(webConfigDir)) === 1);

  const sidecarLogs = [db1Sidecar];
  const mark = () => new Map(sidecarLogs.map((e) => [e, e.log.length]));
  const denyDecision = async (since) => waitFor("the db sidecar to log its decision", async () => lastDecision(sidecarLogs, since), 5000);

  say("1. No intention yet: web calls db");
  let since = mark();
  let reply = await callWeb();
  detail(`web answered ${reply.status}: ${reply.body}`);
  if (reply.status === 200) throw new Error("web reached db although no intention allows it");
  let decision = await denyDecision(since);
  detail(`db's sidecar refused ${decision.client ?? "web"}: Consul said "${decision.reason}"`);

  say("2. Allow web → db (consul intention create web db)");
  await setIntention("allow");
  reply = await waitFor("the allow to take effect", async () => ((r) => (r.status === 200 ? r : undefined))(await callWeb()), 10_000);
  detail(`web answered ${reply.status}: ${reply.body}`);

  say("3. Flip the intention to deny: the next request is refused, without waiting for a cache TTL");
  await setIntention("deny");
  const flippedAt = Date.now();
  since = mark();
  let attemptsUntilDenied = 0;
  reply = await waitFor("the deny to take effect", async () => (attemptsUntilDenied++, ((r) => (r.status !== 200 ? r : undefined))(await callWeb())), 10_000);
  detail(`web answered ${reply.status} (${Date.now() - flippedAt} ms after the flip, request ${attemptsUntilDenied}): ${reply.body}`);
  decision = await denyDecision(since);
  detail(`db's sidecar refused ${decision.client}: Consul said "${decision.reason}"`);

  say("4. Flip it back to allow");
  await setIntention("allow");
  reply = await waitFor("the allow to take effect", async () => ((r) => (r.status === 200 ? r : undefined))(await callWeb()), 10_000);
  detail(`web answered ${reply.status}: ${reply.body}`);

  say("5. A second db instance comes up: web's sidecar adds it through HAProxy's runtime API, no reload");
  const reloadsBefore = await reloadsOf(webConfigDir).catch(() => undefined);
  start("db-2 app", process.execPath, [join(root, "test/apps/db-app.mjs"), "--port", String(db2Port), "--name", "db-2"]).required = true;
  await registerDb("db-2", db2Port, db2SidecarPort);
  sidecarLogs.push(startSidecar("db-2"));
  await waitFor("db-2's sidecar", () => tcpOpen(db2SidecarPort));
  const served = new Map();
  await waitFor(
    "requests to reach both db instances",
    async () => {
      const r = await callWeb();
      const who = r.body.match(/(db-\d) answered/)?.[1];
      if (who) served.set(who, (served.get(who) ?? 0) + 1);
      return served.size === 2;
    },
    20_000,
  );
  served.clear();
  for (let i = 0; i < 10; i++) {
    const who = (await callWeb()).body.match(/(db-\d) answered/)?.[1] ?? "failed";
    served.set(who, (served.get(who) ?? 0) + 1);
  }
  detail(`10 requests after db-2 joined were served by: ${[...served].map(([who, n]) => `${who} ${n}`).join(", ")}`);
  const reloadsAfter = await reloadsOf(webConfigDir).catch(() => undefined);
  if (reloadsBefore !== undefined && reloadsAfter !== undefined) detail(`web's HAProxy reloads: ${reloadsBefore} before, ${reloadsAfter} after`);

  say("Where to look");
  detail(`Consul UI and API: http://${consulAddr}/ui/`);
  detail(`web's sidecar: ${webConfigDir}/haproxy.cfg; runtime API: echo "show servers state" | socat stdio ${webConfigDir}/stats.sock`);
  detail(`db-1's sidecar logs every decision (client=, allowed=, reason=) on its standard output`);
  say(`Done in ${((Date.now() - startedAt) / 1000).toFixed(1)} s; stopping everything the demo started.`);
}

let stopping = false;
async function finish(code) {
  if (stopping) return;
  stopping = true;
  await stopAll();
  process.exit(code);
}
process.on("SIGINT", () => {
  console.log("\ninterrupted: stopping everything the demo started");
  void finish(130);
});
process.on("SIGTERM", () => void finish(143));
main().then(
  () => finish(0),
  async (err) => {
    console.error(`\ndemo failed: ${err.message}`);
    for (const entry of children.filter((e) => e.name.startsWith("sidecar"))) console.error(`--- last output of ${entry.name}:\n${entry.log.slice(-2000)}`);
    await finish(1);
  },
);
