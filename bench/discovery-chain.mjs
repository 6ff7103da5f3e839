#!/usr/bin/env node
// The discovery chain's cost and speed, with a real Consul dev agent and the
// controller pair of `npm run bench` (web's upstream → mTLS → db's sidecar →
// an application answering 200; protocol http on both sides):
//   (i)  follow  time from a config entry write to the traffic following it:
//                a splitter moved between db's subsets a and b (100/0 ↔ 0/100),
//                each split setting a response header x-split on web's
//                sidecar; measured with a new connection every 2 ms until the
//                answer carries the new split's header; median and max over N changes
//   (ii) rate    kept-alive requests/s (wrk -t1 -c16) through web's upstream
//                  plain  no chain entries for db (one backend, as before chains)
//                  chain  a service-router of 10 routes (the request matches
//                         the 10th; the first nine are POST-only with a header
//                         regex), its default route and the 10th to a
//                         service-splitter 50/50 over subsets a and b (both:
//                         db's one instance), per split header changes
//                rounds interleave the two; medians, the per-round ratio's
//                median, and the spread of each set-up's rounds (noise)
//   (iii) rules  HAProxy user CPU per request of the chain's frontend rules
//                alone, as web's sidecar rendered them, against one
//                default_backend: one HAProxy process (one thread) with both
//                frontends, plain HTTP backends to a local HAProxy answering
//                200 (no TLS, no Lua: nothing else differs); the minimum over
//                rounds estimates the cost (noise only adds), the median
//                is shown too
// Prints JSON on stdout.
//   node bench/discovery-chain.mjs [--changes N] [--rounds N] [--seconds S]   (after npm run build; CONSUL_BIN)
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request } from "node:http";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startConsulDev } from "../dist/test/harness/consul.js";
import { startHaproxy } from "../dist/test/harness/haproxy.js";
import { appsDir } from "../dist/test/harness/paths.js";
import { freePorts } from "../dist/test/harness/ports.js";
import { runProgram, stopAll, waitUntil } from "../dist/test/harness/processes.js";
import { userCpuSeconds } from "../dist/test/harness/process-stats.js";
import { runWrk } from "./lib/load.mjs";
import { registerMesh } from "./lib/mesh.mjs";
import { median, medianRatio, spread } from "./lib/report.mjs";
import { startSetup } from "./lib/setups.mjs";

const USAGE = `usage: node bench/discovery-chain.mjs [--changes N] [--rounds N] [--seconds S]
  --changes N   config entry writes timed (default 20)
  --rounds N    interleaved rounds of the plain and chain set-ups (default 3)
  --seconds S   seconds per wrk run (default 8)
environment: CONSUL_BIN (a consul binary), HAPROXY_BIN (default haproxy)
Prints a JSON summary on stdout; exit 0 done, 1 a measurement failed, 2 bad usage.`;

let values;
try {
  ({ values } = parseArgs({ options: { changes: { type: "string", default: "20" }, rounds: { type: "string", default: "3" }, seconds: { type: "string", default: "8" }, help: { type: "boolean", short: "h" } } }));
} catch (err) {
  console.error(`discovery-chain: ${err.message}\n${USAGE}`);
  process.exit(2);
}
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const changes = Number(values.changes);
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);
if (!(changes >= 1 && rounds >= 1 && seconds >= 1) || !process.env.CONSUL_BIN) {
  console.error(`discovery-chain: --changes, --rounds and --seconds must be at least 1, and CONSUL_BIN set\n${USAGE}`);
  process.exit(2);
}
const log = (message) => console.error(message);
/** The frontend lines of web's upstream for db that follow the chain (acl, http-request/response and use_backend lines). */
function chainRules(config) {
  const frontend = config.slice(config.indexOf("frontend upstream_db\n"));
  const section = frontend.slice(0, frontend.indexOf("\n\n"));
  return section.split("\n").filter((line) => /^    (acl|http-request|http-response|use_backend|default_backend) /.test(line));
}

/** (iii): user µs per request of `rules` beyond a frontend with only their default_backend, rounds interleaved. */
async function rulesCost(rules, { runDir, cpu, rounds, seconds }) {
  const [appPort, plainPort, chainPort] = await freePorts(3);
  const quiet = "global\n    nbthread 1\ndefaults\n    mode http\n    timeout client 30s\n    timeout server 30s\n    timeout connect 5s\n";
  const answer = await startHaproxy(`${quiet}frontend app\n    bind 127.0.0.1:${appPort}\n    http-request return status 200 content-type text/plain string ok\n`, { dir: runDir, name: "rules-app", cpu: cpu.b });
  const backends = [...new Set(rules.flatMap((line) => /(?:use|default)_backend (\S+)/.exec(line)?.[1] ?? []))];
  const fallback = rules.find((line) => line.startsWith("    default_backend "));
  const config = `${quiet}frontend plain\n    bind 127.0.0.1:${plainPort}\n${fallback}\nfrontend chain\n    bind 127.0.0.1:${chainPort}\n${rules.join("\n")}\n${backends.map((name) => `backend ${name}\n    server app 127.0.0.1:${appPort}\n`).join("")}`;
  const haproxy = await startHaproxy(config, { dir: runDir, name: "rules", cpu: cpu.a });
  const perRequest = { plain: [], chain: [] };
  try {
    for (let round = 0; round < rounds; round++) {
      for (const id of round % 2 === 0 ? ["plain", "chain"] : ["chain", "plain"]) {
        const before = userCpuSeconds(haproxy.process.pid);
        const run = await runWrk({ port: id === "plain" ? plainPort : chainPort, connections: 16, seconds, path: "/api/items/42", cpu: cpu.b });
        if (run.errorCount > 0) throw new Error(`rules ${id}: ${JSON.stringify(run.errors)}`);
        perRequest[id].push(((userCpuSeconds(haproxy.process.pid) - before) * 1e6) / run.requests);
      }
    }
  } finally {
    await haproxy.stop();
    await answer.stop();
  }
  const extra = perRequest.chain.map((value, n) => value - perRequest.plain[n]);
  const round2 = (value) => +value.toFixed(2);
  return {
    ruleLines: rules.length,
    userMicrosecondsPerRequest: { plain: perRequest.plain.map(round2), chain: perRequest.chain.map(round2) },
    chainRulesMicroseconds: { min: round2(Math.min(...perRequest.chain) - Math.min(...perRequest.plain)), medianOfRounds: round2(median(extra)) },
  };
}

const summary = (list) => ({ medianMs: +median(list).toFixed(1), maxMs: +Math.max(...list).toFixed(1), minMs: +Math.min(...list).toFixed(1), n: list.length });

/** Both subsets select db's one instance: the chain's rules are what is measured, not a second application. */
const RESOLVER = { Kind: "service-resolver", Name: "db", Subsets: { a: { Filter: "Node.Node == bench" }, b: { Filter: "Node.Node == bench" } } };
const splitter = (weightA) => ({
  Kind: "service-splitter",
  Name: "db",
  Splits: [
    { Weight: weightA, ServiceSubset: "a", ResponseHeaders: { Set: { "x-split": "a" } } },
    { Weight: 100 - weightA, ServiceSubset: "b", ResponseHeaders: { Set: { "x-split": "b" } } },
  ],
});
const ROUTER = {
  Kind: "service-router",
  Name: "db",
  Routes: [
    ...Array.from({ length: 9 }, (_, i) => ({ Match: { HTTP: { PathPrefix: `/p${i + 1}/`, Methods: ["POST"], Header: [{ Name: "x-v", Regex: "v[0-9]+" }] } }, Destination: { ServiceSubset: "a" } })),
    { Match: { HTTP: { PathPrefix: "/api/", Methods: ["GET", "HEAD"] } }, Destination: {} },
  ],
};

/** The x-split header of one GET through `port` on a new connection (undefined: none, or no answer). */
function splitHeader(port) {
  return new Promise((resolve) => {
    const req = request({ host: "127.0.0.1", port, path: "/api/items/42", agent: false, timeout: 2000 }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode === 200 ? res.headers["x-split"] : undefined));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(undefined));
    req.end();
  });
}

runProgram("discovery-chain", async () => {
  const runDir = mkdtempSync(join(tmpdir(), "ch-discovery-chain-"));
  const cpu = cpus().length >= 2 ? { a: "0", b: "1" } : { a: undefined, b: undefined };
  let consul;
  let app;
  const rate = { plain: [], chain: [] };
  const followMs = [];
  let rules;
  try {
    consul = await startConsulDev({ nodeName: "bench", cpu: cpu.b, logFile: join(runDir, "consul.log") });
    const config = (body) => consul.api("PUT", "/v1/config", body);
    const [appPort, dbPublic, webPublic, webApp, upstream] = await freePorts(5);
    const ports = { app: appPort, dbPublic, webPublic, webApp, upstream };
    await registerMesh(consul, ports, { protocol: "http" });
    app = await startHaproxy(readFileSync(join(appsDir, "http-ok.cfg"), "utf8"), { dir: runDir, name: "app", cpu: cpu.b, env: { APP_PORT: String(appPort) }, logToFile: true });
    const ctx = { runDir, consul, haproxyBin: process.env.HAPROXY_BIN ?? "haproxy", ports, cpu, runCounter: 0 };
    const withChain = async (on) => {
      if (on) {
        await config(RESOLVER);
        await config(splitter(50));
        await config(ROUTER);
      } else {
        for (const kind of ["service-router", "service-splitter", "service-resolver"]) await consul.api("DELETE", `/v1/config/${kind}/db`);
      }
    };

    for (let round = 0; round < rounds; round++) {
      for (const id of round % 2 === 0 ? ["plain", "chain"] : ["chain", "plain"]) {
        await withChain(id === "chain");
        const configFile = join(runDir, `controller-${ctx.runCounter}`, "web", "haproxy.cfg");
        const setup = await startSetup("connect", ctx);
        try {
          // The figure is the chain's only if web's sidecar runs it (and the plain one's only if it does not).
          const rendered = readFileSync(configFile, "utf8");
          if (/chain_route10_/.test(rendered) !== (id === "chain")) throw new Error(`${id}: web's haproxy.cfg ${id === "chain" ? "lacks" : "has"} the router's 10th route`);
          const load = { port: setup.entryPort, connections: 16, path: "/api/items/42", cpu: cpu.a };
          const warm = await runWrk({ ...load, seconds: 2 });
          if (warm.errorCount > 0) throw new Error(`${id}: warm-up: ${JSON.stringify(warm.errors)} (status counts answers of 400 and above)`);
          const run = await runWrk({ ...load, seconds });
          if (run.errorCount > 0) throw new Error(`${id}: ${JSON.stringify(run.errors)} (status counts answers of 400 and above)`);
          rate[id].push(Math.round(run.requestsPerSecond));
          log(`round ${round + 1} ${id}: ${Math.round(run.requestsPerSecond)} requests/s`);
          if (id === "chain") rules ??= chainRules(rendered);
        } finally {
          await setup.stop();
        }
      }
    }

    rules = await rulesCost(rules, { runDir, cpu, rounds: Math.max(rounds, 5), seconds: 4 });
    log(`rules: ${rules.chainRulesMicroseconds.min} µs per request (min), ${rules.chainRulesMicroseconds.medianOfRounds} (median of rounds)`);

    // (i): a chain in place (router → splitter), then the splitter moved back and forth.
    await withChain(true);
    await config(splitter(100));
    const setup = await startSetup("connect", ctx);
    try {
      const every = { intervalMs: 2, timeoutMs: 10_000 };
      await waitUntil("split a answering", async () => (await splitHeader(upstream)) === "a", { intervalMs: 50, timeoutMs: 30_000 });
      for (let n = 0; n < changes; n++) {
        const to = n % 2 === 0 ? "b" : "a";
        const t0 = performance.now();
        await config(splitter(to === "a" ? 100 : 0));
        await waitUntil(`split ${to} answering`, async () => (await splitHeader(upstream)) === to, every);
        followMs.push(performance.now() - t0);
        log(`change ${n + 1}: split ${to} followed after ${followMs.at(-1).toFixed(0)} ms`);
        // Every answer now from the new split (not a mix while an old worker drains).
        for (let k = 0; k < 20; k++) if ((await splitHeader(upstream)) !== to) throw new Error(`change ${n + 1}: an answer from the old split after the new one`);
      }
    } finally {
      await setup.stop();
    }
  } finally {
    await app?.stop();
    await consul?.stop();
    await stopAll();
    rmSync(runDir, { recursive: true, force: true });
  }
  console.log(
    JSON.stringify(
      {
        date: new Date().toISOString(),
        configEntryWriteToTrafficFollowing: summary(followMs),
        keptAliveRequestsPerSecond: {
          secondsPerRun: seconds,
          rounds,
          samples: rate,
          medians: { plain: median(rate.plain), chain: median(rate.chain) },
          chainToPlain: medianRatio(rate.chain, rate.plain),
          noise: { plainSpread: spread(rate.plain), chainSpread: spread(rate.chain) },
        },
        chainFrontendRules: rules,
      },
      null,
      2,
    ),
  );
  return 0;
});
