#!/usr/bin/env node
// The demo (npm run demo): a local Consul dev agent, `web` (HTTP) calling `db`
// (TCP) through two connect-haproxy sidecars, and a walk through what a mesh
// does: intentions allow and deny, a second db instance joins without a reload.
// Every process it starts is stopped at the end, on failure and on Ctrl-C.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
// The controller's `show proc` parser and stats-socket client, and the test
// harness's processes, ports, Consul agent and apps (built by npm run demo).
import { parseShowProc } from "../../dist/controller/runtime-api.js";
import { consulBinary, startConsulDev } from "../../dist/test/harness/consul.js";
import { sendRuntimeCommand } from "../../dist/test/harness/haproxy.js";
import { startConnectHaproxy, startDbApp, startWebApp } from "../../dist/test/harness/mesh.js";
import { freePorts, tcpOpen } from "../../dist/test/harness/ports.js";
import { installCleanupHandlers, onInterrupt, waitFor as waitForValue, waitUntil as waitUntilTrue } from "../../dist/test/harness/processes.js";

try {
  consulBinary();
} catch {
  console.error("demo: CONSUL_BIN is not set; run it with `npm run demo`");
  process.exit(2);
}
const workDir = mkdtempSync(join(tmpdir(), "connect-haproxy-demo-"));
const startedAt = Date.now();
/** What the demo started and needs: a wait fails as soon as one of them exits. */
const required = [];
const sidecars = [];
let agent;

// ---------- small helpers ----------
const say = (text) => console.log(`\n▶ ${text}`);
const detail = (text) => console.log(`    ${text}`);
const need = (started) => (required.push(started), started);

// Polled every 100 ms; a wait fails at once when a required process exits.
const waitFor = (what, probe, timeoutMs = 30_000) => waitForValue(what, probe, { timeoutMs, intervalMs: 100, process: required });
const waitUntil = (what, condition, timeoutMs = 30_000) => waitUntilTrue(what, condition, { timeoutMs, intervalMs: 100, process: required });

async function stopEverything() {
  // Sidecars and apps first, then Consul, which the sidecars talk to.
  await Promise.all(required.filter((p) => p !== agent?.process).map((p) => p.stop("SIGTERM", 10_000)));
  await agent?.stop();
  rmSync(workDir, { recursive: true, force: true });
}

const consul = (method, path, body) => agent.api(method, path, body);

let webPort;
async function callWeb() {
  const res = await fetch(`http://127.0.0.1:${webPort}/`, { signal: AbortSignal.timeout(8000) });
  return { status: res.status, body: (await res.text()).trim() };
}

/** The newest decision a db sidecar's authorizer logged since `since`, with Consul's reason. */
function lastDecision(sidecarLogs, since) {
  const lines = sidecarLogs
    .map((sidecar) => sidecar.output().slice(since.get(sidecar) ?? 0))
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
  const sidecar = startConnectHaproxy(serviceId, agent.httpAddr, { configDir: join(workDir, `sidecar-${serviceId}`), logLevel: "info" });
  sidecars.push(sidecar.process);
  return need(sidecar.process);
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
  say("Starting a Consul dev agent, default intention policy: deny");
  // What operators are told to run: nothing talks unless an intention allows it.
  agent = await startConsulDev({ nodeName: "demo", config: { default_intention_policy: "deny" } });
  need(agent.process);
  detail(`Consul's HTTP API: ${agent.httpAddr}`);

  const [db1Port, db1SidecarPort, db2Port, db2SidecarPort, webAppPort, webSidecarPort, upstreamPort] = await freePorts(7);
  webPort = webAppPort;

  say("Starting db-1 (a TCP service on 127.0.0.1) and its connect-haproxy sidecar");
  need(startDbApp(db1Port, "db-1"));
  await registerDb("db-1", db1Port, db1SidecarPort);
  const db1Sidecar = startSidecar("db-1");
  detail(`db-1 listens on 127.0.0.1:${db1Port}; its sidecar's public mTLS listener on :${db1SidecarPort}`);

  say("Starting web (an HTTP service) and its sidecar, with db as an upstream");
  need(startWebApp(webAppPort, `127.0.0.1:${upstreamPort}`));
  await consul("PUT", "/v1/agent/service/register", {
    ID: "web",
    Name: "web",
    Address: "127.0.0.1",
    Port: webAppPort,
    Connect: { SidecarService: { Port: webSidecarPort, Proxy: { Upstreams: [{ DestinationName: "db", LocalBindPort: upstreamPort }] } } },
  });
  const webSidecar = startSidecar("web");
  detail(`web listens on 127.0.0.1:${webAppPort} and reaches db at 127.0.0.1:${upstreamPort}, web's upstream listener`);
  await waitUntil("both sidecars to listen", async () => (await tcpOpen(db1SidecarPort)) && (await tcpOpen(upstreamPort)));
  const webConfigDir = join(workDir, "sidecar-web");
  await waitUntil("db-1 to pass its health check and join web's upstream", async () => (await upstreamServersUp(webConfigDir)) === 1);

  const sidecarLogs = [db1Sidecar];
  const mark = () => new Map(sidecarLogs.map((sidecar) => [sidecar, sidecar.output().length]));
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
  need(startDbApp(db2Port, "db-2"));
  await registerDb("db-2", db2Port, db2SidecarPort);
  sidecarLogs.push(startSidecar("db-2"));
  await waitUntil("db-2's sidecar", () => tcpOpen(db2SidecarPort));
  const served = new Map();
  await waitUntil(
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
  detail(`Consul UI and API: http://${agent.httpAddr}/ui/`);
  detail(`web's sidecar: ${webConfigDir}/haproxy.cfg; runtime API: echo "show servers state" | socat stdio ${webConfigDir}/stats.sock`);
  detail(`db-1's sidecar logs every decision (client=, allowed=, reason=) on its standard output`);
  say(`Done in ${((Date.now() - startedAt) / 1000).toFixed(1)} s; stopping everything the demo started.`);
}

let stopping = false;
async function finish(code) {
  if (stopping) return;
  stopping = true;
  await stopEverything();
  process.exit(code);
}
// Ctrl-C: the harness stops every process the demo started, then exits 130.
installCleanupHandlers((message) => console.log(`\n${message}`), "demo");
onInterrupt(() => rmSync(workDir, { recursive: true, force: true }));
main().then(
  () => finish(0),
  async (err) => {
    console.error(`\ndemo failed: ${err.message}`);
    for (const sidecar of sidecars) console.error(`--- last output of ${sidecar.name}:\n${sidecar.output(2000)}`);
    await finish(1);
  },
);
