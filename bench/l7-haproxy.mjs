#!/usr/bin/env node
// CPU per request of connect_authorize on an HTTP stream, inside a real HAProxy
// (one process, one thread): wrk → a plain frontend → a kept-alive mTLS hop
// (client leaf of `web`) → db's public frontend, which answers 200 itself. The
// same chain is run without the action, with an empty Lua action (the floor of
// running any Lua action), and with the controller's authorization rules for a
// source governed by an L4 intention (later requests of a connection pass
// natively: lua-src/request-passes.ts), the same with the action on every
// request (no pass map, the agent's verdict from the cache), and by an L7
// intention of 10 permissions (the request matching the 10th). The agent is a stub on
// loopback; HAProxy's CPU time divided by the requests is the figure, user
// time alone (HAProxy's and Lua's own code) and user + system.
//   node bench/l7-haproxy.mjs [--seconds S] [--rounds N] [--perf <action>-<L4|L7>]   (after npm run build)
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { httpAuthorizationRules, pathNormalization } from "../dist/controller/haproxy-config.js";
import { nativeL7Rules } from "../dist/controller/native-l7.js";
import { sendRuntimeCommand, startHaproxy } from "../dist/test/harness/haproxy.js";
import { luaBundlePath } from "../dist/test/harness/paths.js";
import { freePorts } from "../dist/test/harness/ports.js";
import { cpuSeconds, userCpuSeconds } from "../dist/test/harness/process-stats.js";
import { runProgram } from "../dist/test/harness/processes.js";
import { runWrk } from "./lib/load.mjs";
import { median } from "./lib/report.mjs";

const { values } = parseArgs({ options: { seconds: { type: "string", default: "5" }, rounds: { type: "string", default: "3" }, perf: { type: "string" } } });
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);
const trustDomain = "11111111-2222-3333-4444-555555555555.consul";

/** A CA and leaves for web and db, as Consul issues them (URI SAN only). */
function certificates(dir) {
  const openssl = (...args) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "ignore"] });
  openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", join(dir, "ca.key"));
  openssl("req", "-x509", "-new", "-key", join(dir, "ca.key"), "-subj", "/CN=bench-ca", "-days", "2", "-out", join(dir, "ca.pem"));
  for (const name of ["web", "db"]) {
    writeFileSync(join(dir, `${name}.cnf`), `[v3]\nsubjectAltName=critical,URI:spiffe://${trustDomain}/ns/default/dc/dc1/svc/${name}\n`);
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", join(dir, `${name}.key`));
    openssl("req", "-new", "-key", join(dir, `${name}.key`), "-subj", `/CN=${name}`, "-out", join(dir, `${name}.csr`));
    openssl("x509", "-req", "-in", join(dir, `${name}.csr`), "-CA", join(dir, "ca.pem"), "-CAkey", join(dir, "ca.key"), "-set_serial", "0x1234",
      "-days", "1", "-extfile", join(dir, `${name}.cnf`), "-extensions", "v3", "-out", join(dir, `${name}.crt`));
    writeFileSync(join(dir, `${name}.pem`), readFileSync(join(dir, `${name}.crt`), "utf8") + readFileSync(join(dir, `${name}.key`), "utf8"));
  }
}

/** The agent: the intention list (blocking queries held for their wait), /v1/agent/self, and authorize. */
/** The L7 intention: the request matches the 10th permission. */
const permissions = [
  ...Array.from({ length: 9 }, (_, i) => ({ Action: "deny", HTTP: { PathPrefix: `/p${i + 1}/`, Methods: ["POST"], Header: [{ Name: "x-v", Regex: "v[0-9]+" }] } })),
  { Action: "allow", HTTP: { PathPrefix: "/api/", Methods: ["GET", "HEAD"], Header: [{ Name: "x-v", Regex: "v[0-9]+" }] } },
];
const intentionFor = (governedBy) => ({ SourceName: "web", SourceNS: "default", DestinationName: "db", Precedence: 9, SourceType: "consul", ...(governedBy === "L7" ? { Permissions: permissions } : { Action: "allow" }) });
/** The stub agent's X-Consul-Index for the list. */
const LIST_INDEX = 7;

function stubAgent(governedBy) {
  const intention = intentionFor(governedBy);
  const list = JSON.stringify({ db: [intention] });
  const verdict = governedBy === "L7"
    ? { Authorized: false, Reason: "Matched L7 intention: default/web => default/db (Precedence: 9)" }
    : { Authorized: true, Reason: "Matched L4 intention: default/web => default/db (Precedence: 9, Action: ALLOW)" };
  return createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      if (req.url.startsWith("/v1/agent/self")) return res.end(JSON.stringify({ DebugConfig: { DefaultIntentionPolicy: "deny" } }));
      if (req.url.startsWith("/v1/agent/connect/authorize")) return res.end(JSON.stringify(verdict));
      // A blocking query with an index: held for its wait, as Consul does when nothing changed.
      const delay = /[?&]index=/.test(req.url) ? 4000 : 0;
      setTimeout(() => res.writeHead(200, { "X-Consul-Index": String(LIST_INDEX) }).end(list), delay);
    });
  });
}

function config({ dir, agentPort, entryPort, meshPort, action }) {
  const passMap = join(dir, "passes.map");
  const rules = {
    none: [],
    noop: ["    http-request lua.bench_noop"],
    // As the controller renders it: passes for L4-allowed sources.
    authorize: httpAuthorizationRules("db", passMap).map((line) => `    ${line}`),
    // As the controller renders it with the intention list: L7 permissions decided by HAProxy's own rules.
    authorizeNative: httpAuthorizationRules("db", passMap, nativeL7Rules([intentionFor("L7")], "db", LIST_INDEX, passMap).lines).map((line) => `    ${line}`),
    // Every request through the action (an operator's config without CONNECT_PASS_MAP).
    authorizeEveryRequest: ["    http-request lua.connect_authorize db", "    http-request deny deny_status 403 unless { var(txn.connect_allowed) -m bool }"],
  }[action];
  return [
    "global",
    "    nbthread 1",
    "    expose-experimental-directives",
    `    setenv CONSUL_HTTP_ADDR 127.0.0.1:${agentPort}`,
    `    setenv CONNECT_TRUST_DOMAIN ${trustDomain}`,
    ...(action === "authorize" || action === "authorizeNative" ? [`    setenv CONNECT_PASS_MAP ${passMap}`] : []),
    ...(action === "authorizeNative" ? [`    setenv CONNECT_NATIVE_L7_RULES db@${LIST_INDEX}`] : []),
    `    lua-load ${luaBundlePath}`,
    `    lua-load ${join(dir, "noop.lua")}`,
    "defaults",
    "    mode http",
    "    timeout connect 2s",
    "    timeout client 30s",
    "    timeout server 30s",
    "frontend entry",
    `    bind 127.0.0.1:${entryPort}`,
    "    default_backend hop",
    "backend hop",
    "    http-reuse always",
    `    server db 127.0.0.1:${meshPort} ssl crt ${join(dir, "web.pem")} ca-file ${join(dir, "ca.pem")} verify required verifyhost db alpn http/1.1 sni str(db)`,
    "frontend db_mesh",
    `    bind 127.0.0.1:${meshPort} ssl crt ${join(dir, "db.pem")} ca-file ${join(dir, "ca.pem")} verify required`,
    ...pathNormalization.map((line) => `    ${line}`),
    ...rules,
    "    http-request return status 200 content-type text/plain string ok",
    "",
  ].join("\n");
}

/** `perf record -g` on HAProxy during one run (--perf <action>-<L4|L7>), to perf.data in the working directory. */
function startPerf(pid) {
  const perf = spawn("perf", ["record", "-g", "-o", "perf.data", "-p", String(pid)], { stdio: "inherit" });
  return {
    stop: () => new Promise((resolve) => {
      perf.on("exit", resolve);
      perf.kill("SIGINT");
    }),
  };
}

async function measure(dir, action, governedBy) {
  const agent = stubAgent(governedBy);
  const [agentPort, entryPort, meshPort] = await freePorts(3);
  await new Promise((resolve) => agent.listen(agentPort, "127.0.0.1", resolve));
  const haproxy = await startHaproxy(config({ dir, agentPort, entryPort, meshPort, action }), { name: `l7-${action}` });
  try {
    const load = { port: entryPort, connections: 8, path: "/api/items/42", headers: { "x-v": "v2" } };
    // Warm-up: the first request waits for the intention list and fills the verdict cache.
    const warm = await runWrk({ ...load, seconds: 2 });
    if (warm.errorCount > 0) throw new Error(`warm-up: ${warm.errorCount} errors (${JSON.stringify(warm.errors)})`);
    const profile = values.perf === `${action}-${governedBy}` ? startPerf(haproxy.process.pid) : undefined;
    const before = cpuSeconds(haproxy.process.pid);
    const userBefore = userCpuSeconds(haproxy.process.pid);
    const run = await runWrk({ ...load, seconds });
    const after = cpuSeconds(haproxy.process.pid);
    const userAfter = userCpuSeconds(haproxy.process.pid);
    if (profile !== undefined) await profile.stop();
    if (run.errorCount > 0) throw new Error(`${action}: ${run.errorCount} errors (${JSON.stringify(run.errors)})`);
    if (action === "authorizeNative") {
      // The figure is the native rules' only if the authorizer switched them on.
      const map = await sendRuntimeCommand(haproxy.statsSocket, `show map ${join(dir, "passes.map")}`);
      if (!/ l7 0\b/.test(map)) throw new Error(`${action}: the native L7 rules were not switched on (pass map: ${JSON.stringify(map)})`);
    }
    return { requestsPerSecond: Math.round(run.requestsPerSecond), cpuUsPerRequest: +(((after - before) / run.requests) * 1e6).toFixed(2), userCpuUsPerRequest: +(((userAfter - userBefore) / run.requests) * 1e6).toFixed(2) };
  } finally {
    await haproxy.stop();
    await new Promise((resolve) => agent.close(resolve));
  }
}

const RUNS = {
  noAction: ["none", "L4"],
  emptyLuaAction: ["noop", "L4"],
  authorizeL4Intention: ["authorize", "L4"],
  authorizeL4IntentionNoPasses: ["authorizeEveryRequest", "L4"],
  authorizeL7TenPermissions: ["authorize", "L7"],
  authorizeL7TenPermissionsNative: ["authorizeNative", "L7"],
};


runProgram("l7-haproxy", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ch-l7-bench-"));
  try {
    certificates(dir);
    writeFileSync(join(dir, "noop.lua"), 'core.register_action("bench_noop", { "http-req" }, function(txn) end, 0)\n');
    writeFileSync(join(dir, "passes.map"), "");
    // Rounds interleave the set-ups, so a noisy stretch of the machine hits them all alike.
    const samples = Object.fromEntries(Object.keys(RUNS).map((name) => [name, []]));
    for (let round = 0; round < rounds; round++) {
      for (const [name, [action, governedBy]] of Object.entries(RUNS)) samples[name].push(await measure(dir, action, governedBy));
    }
    // Noise on a shared machine only adds CPU time: the minimum over rounds is the estimate, the median shows the spread.
    const summary = (name, field) => ({ min: Math.min(...samples[name].map((s) => s[field])), median: median(samples[name].map((s) => s[field])) });
    const overNoAction = (field) => Object.fromEntries(Object.keys(RUNS).filter((name) => name !== "noAction").map((name) => {
      const run = summary(name, field);
      const base = summary("noAction", field);
      return [name, { min: +(run.min - base.min).toFixed(2), median: +(run.median - base.median).toFixed(2) }];
    }));
    const report = {
      haproxy: execFileSync("haproxy", ["-v"]).toString().split("\n")[0],
      secondsPerRun: seconds,
      rounds,
      samples,
      userCpuUsPerRequestOverNoAction: overNoAction("userCpuUsPerRequest"),
      cpuUsPerRequestOverNoAction: overNoAction("cpuUsPerRequest"),
    };
    console.log(JSON.stringify(report, null, 2));
    return 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
