#!/usr/bin/env node
// connect-haproxy against Consul's built-in proxy and a plain HAProxy mTLS
// pair, in one run, on one machine. Started by `npm run bench` (scripts/bench.sh),
// which installs what is missing and builds first.
//
//   node bench/run.mjs [--quick] [--rounds N] [--seconds S] [--setups a,b] [--out PREFIX] [--keep]
//
// Writes PREFIX.md, PREFIX.json and PREFIX.svg (default bench/results/latest,
// or bench/results/quick with --quick). Exit codes: 0 done; 1 a measurement
// failed (every process started is stopped); 2 bad usage.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, renameSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { barChartSvg } from "./lib/chart.mjs";
import { startConsulDev } from "../dist/test/harness/consul.js";
import { controllerCli, luaBundlePath, repoRoot } from "../dist/test/harness/paths.js";
import { freePorts } from "../dist/test/harness/ports.js";
import { installCleanupHandlers, onInterrupt, runCommand, runProgram, stopAll } from "../dist/test/harness/processes.js";
import { measureSetup } from "./lib/measure.mjs";
import { registerMesh } from "./lib/mesh.mjs";
import { chartPanels, checkTargets, markdownReport, ratios, summarize } from "./lib/report.mjs";
import { DEFAULT_SETUPS, PAIR_NAMES, SETUPS } from "./lib/setups.mjs";

const log = (message) => console.error(message);

const USAGE = `usage: node bench/run.mjs [options]
  --quick          smoke run (about a minute): short phases, one round; writes bench/results/quick.*
  --rounds N       rounds over all set-ups; figures are medians (default 3, quick 1)
  --seconds S      length of each measured phase (default 10, quick 2)
  --setups LIST    comma-separated set-ups: ${DEFAULT_SETUPS.join(",")},
                   and the tuning candidates ${Object.keys(SETUPS).filter((id) => SETUPS[id].optIn).join(",")}
                   (default: all; with --quick, all but the tuning candidates)
  --out PREFIX     output files PREFIX.md/.json/.svg (default bench/results/latest)
  --keep           keep the run directory (configs, logs) instead of deleting it
  --render FILE    measure nothing: redo FILE's .md and .svg (and its summary) from FILE (a PREFIX.json)
environment: CONSUL_BIN (required), HAPROXY_BIN (default haproxy)`;

function parseArgs(argv) {
  const options = { quick: false, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "--quick") options.quick = true;
    else if (arg === "--keep") options.keep = true;
    else if (arg === "--render") options.render = value();
    else if (arg === "--rounds") options.rounds = Number(value());
    else if (arg === "--seconds") options.seconds = Number(value());
    else if (arg === "--setups") options.setups = value().split(",");
    else if (arg === "--out") options.out = value();
    else if (arg === "-h" || arg === "--help") options.help = true;
    else throw new Error(`unknown option ${arg}`);
  }
  options.rounds ??= options.quick ? 1 : 3;
  options.seconds ??= options.quick ? 2 : 10;
  // The tuning candidates only in full runs: quick runs check the harness.
  options.setups ??= options.quick ? DEFAULT_SETUPS : Object.keys(SETUPS);
  options.out ??= join(repoRoot, "bench", "results", options.quick ? "quick" : "latest");
  for (const s of options.setups) if (!SETUPS[s]) throw new Error(`unknown set-up ${s}`);
  if (!(options.rounds >= 1) || !(options.seconds >= 1)) throw new Error("--rounds and --seconds must be at least 1");
  return options;
}

const firstLine = (cmd, args) => {
  try {
    return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).split("\n")[0].trim();
  } catch (err) {
    return `${(err.stdout || "").toString().split("\n")[0].trim() || "unavailable"}`;
  }
};

function describeMachine(consulBin, haproxyBin) {
  const cpuModel = readFileSync("/proc/cpuinfo", "utf8").match(/^model name\s*:\s*(.*)$/m)?.[1] ?? cpus()[0]?.model ?? "unknown";
  return {
    nproc: firstLine("nproc", []),
    "CPU model": cpuModel,
    kernel: firstLine("uname", ["-sr"]),
    memory: `${Math.round(Number(readFileSync("/proc/meminfo", "utf8").match(/MemTotal:\s+(\d+)/)[1]) / 1024)} MB`,
    haproxy: firstLine(haproxyBin, ["-v"]),
    OpenSSL: firstLine("openssl", ["version"]),
    consul: firstLine(consulBin, ["version"]),
    node: process.version,
    wrk: firstLine("wrk", ["-v"]).replace(/\s+Copyright.*/, ""),
    iperf3: firstLine("iperf3", ["--version"]),
    "load average at start": readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" "),
  };
}

/** Two cores: A = web's host (client, web's sidecar), B = db's host (db's sidecar, app, agent). */
function cpuPlan() {
  const count = cpus().length;
  if (count < 2) return { a: undefined, b: undefined, note: "one CPU: no pinning" };
  return { a: "0", b: "1", note: "pinned with taskset: CPU 0 = client (wrk, iperf3 -c) + web's sidecar; CPU 1 = db's sidecar + application (HAProxy app, iperf3 -s) + Consul agent" };
}

/**
 * The authorizer's own micro-benchmark (issue 3), when bench/ has one:
 * bench/authorizer.sh (Lua under lua5.3, then real round trips inside HAProxy),
 * else bench/authorizer.lua alone. Its output is quoted as it is.
 */
async function runAuthorizerMicrobenchmark() {
  const candidates = [
    ["authorizer.sh", "bash"],
    ["authorizer.mjs", process.execPath],
    ["authorizer.lua", "lua5.3"],
  ].filter(([name]) => existsSync(join(repoRoot, "bench", name)));
  if (!candidates.length) return undefined;
  const [name, interpreter] = candidates[0];
  const file = `bench/${name}`;
  log(`bench: running the authorizer micro-benchmark ${file}`);
  const result = await runCommand(interpreter, [file], { timeoutMs: 240000, cwd: repoRoot });
  const text = `${result.stdout}${result.stderr ? `\n${result.stderr}` : ""}`.trim();
  const shown = interpreter === process.execPath ? "node" : interpreter;
  return {
    file,
    exitCode: result.code,
    output: text,
    markdown: `\`${shown} ${file}\` (exit ${result.code}${result.code === "SIGKILL" ? ", stopped after 240 s" : ""}):\n\n\`\`\`\n${text.slice(0, 4000)}\n\`\`\``,
  };
}

/**
 * Summary, ratios, targets, markdown and chart from the raw rounds: PREFIX.json,
 * PREFIX.md and PREFIX.svg. Pure apart from the files, so that --render can
 * redo a report from a run's JSON.
 */
function writeReport(prefix, { machine, settings, extras, rounds }) {
  const summary = summarize(Object.fromEntries(Object.entries(rounds).filter(([, r]) => r.length)));
  const ratioTable = ratios(summary);
  const targets = checkTargets(summary, ratioTable, rounds);
  const chartFile = `${basename(prefix)}.svg`;
  const payload = { machine, settings, summary, ratios: ratioTable, targets, extras, rounds };
  writeAtomically(`${prefix}.json`, JSON.stringify(payload, null, 2) + "\n");
  writeAtomically(`${prefix}.md`, markdownReport({ machine, settings, summary, ratioTable, targets, extras, chartFile, rounds }));
  writeAtomically(
    `${prefix}.svg`,
    barChartSvg({
      title: `connect-haproxy vs Consul's built-in proxy vs plain HAProxy${settings.quick ? " (quick run)" : ""}`,
      subtitle: `${machine.nproc} × ${machine["CPU model"]}, HAProxy ${/version (\S+)/.exec(machine.haproxy)?.[1] ?? "?"}, ${machine.consul}; medians of ${settings.rounds} round(s), ${settings.finishedAt.slice(0, 10)}`,
      panels: chartPanels(summary),
      columns: 4,
    }),
  );
  log(`bench: wrote ${relative(process.cwd(), prefix)}.md, .json, .svg`);
}

function writeAtomically(file, text) {
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`bench: ${err.message}\n${USAGE}`);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  if (options.render) {
    const previous = JSON.parse(readFileSync(options.render, "utf8"));
    writeReport(options.render.replace(/\.json$/, ""), previous);
    return 0;
  }
  const consulBin = process.env.CONSUL_BIN;
  if (!consulBin || !existsSync(consulBin)) {
    console.error("bench: CONSUL_BIN is not set to a consul binary: run `npm run bench` (it finds or builds Consul) or set CONSUL_BIN");
    return 2;
  }
  const haproxyBin = process.env.HAPROXY_BIN ?? "haproxy";
  for (const built of [luaBundlePath, controllerCli]) {
    if (!existsSync(built)) {
      console.error(`bench: ${built} is missing: run npm run build`);
      return 2;
    }
  }
  installCleanupHandlers(log, "bench");
  const startedAt = new Date();
  const machine = describeMachine(consulBin, haproxyBin);
  const cpu = cpuPlan();
  const runDir = mkdtempSync(join(tmpdir(), "ch-bench-run-"));
  if (!options.keep) onInterrupt(() => rmSync(runDir, { recursive: true, force: true }));
  log(`bench: run directory ${runDir}`);

  const s = options.seconds;
  const plan = {
    warmupSeconds: options.quick ? 1 : 2,
    newConn: { seconds: s, connections: 32 },
    keepAlive: { seconds: s, connections: 16 },
    // 16 connections, each waiting 5 ms after a reply: about 3,000 req/s, a tenth of what the pairs carry.
    paced: { seconds: s, connections: 16, delayMs: 5 },
    bulk: { seconds: s },
  };
  const noCachePlan = { warmupSeconds: 1, newConn: plan.newConn };
  // HTTP: no bulk phase (iperf3 speaks no HTTP).
  const httpPlan = { warmupSeconds: plan.warmupSeconds, newConn: plan.newConn, keepAlive: plan.keepAlive, paced: plan.paced };
  const planOf = (id) => (id === "connectNoCache" ? noCachePlan : SETUPS[id].protocol === "http" ? httpPlan : plan);

  let consul;
  const rounds = Object.fromEntries(options.setups.map((id) => [id, []]));
  const failures = [];
  try {
    consul = await startConsulDev({ nodeName: "bench", cpu: cpu.b, logFile: join(runDir, "consul.log") });
    const [app, dbPublic, webPublic, webApp, upstream, ...httpPorts] = await freePorts(9);
    const ports = { app, dbPublic, webPublic, webApp, upstream };
    await registerMesh(consul, ports);
    // The HTTP pair: its own services and listeners, the same application.
    const [httpDbPublic, httpWebPublic, httpWebApp, httpUpstream] = httpPorts;
    if (options.setups.some((id) => SETUPS[id].protocol === "http")) {
      await registerMesh(consul, { app, dbPublic: httpDbPublic, webPublic: httpWebPublic, webApp: httpWebApp, upstream: httpUpstream }, { protocol: "http", names: PAIR_NAMES.http });
    }
    const pairs = { tcp: { names: PAIR_NAMES.tcp, upstream }, http: { names: PAIR_NAMES.http, upstream: httpUpstream } };
    const ctx = { runDir, consul, haproxyBin, ports, pairs, cpu, runCounter: 0 };

    for (let round = 0; round < options.rounds; round++) {
      // Rotate the order each round so that no set-up always runs first or last.
      const order = options.setups.map((_, i) => options.setups[(i + round) % options.setups.length]);
      log(`bench: round ${round + 1}/${options.rounds}: ${order.join(", ")}`);
      for (const id of order) {
        const setupStarted = Date.now();
        try {
          rounds[id].push(await measureSetup(id, ctx, planOf(id), log));
          log(`  ${id}: done in ${((Date.now() - setupStarted) / 1000).toFixed(1)} s`);
        } catch (err) {
          failures.push(`${id} (round ${round + 1}): ${err.message}`);
          log(`bench: ${id} failed: ${err.message}`);
        }
      }
    }
  } finally {
    await consul?.stop();
    await stopAll();
  }

  const extras = { notes: [] };
  const perConnection = (id) =>
    (rounds[id] ?? [])
      .filter((r) => r.newConn?.authorizer && r.newConn.requests)
      .map((r) => `${(r.newConn.authorizer.agent_calls / r.newConn.requests).toFixed(2)} agent calls, ${(r.newConn.authorizer.hits / r.newConn.requests).toFixed(2)} cache hits, ${(r.newConn.authorizer.shared / r.newConn.requests).toFixed(2)} shared calls`);
  extras.authorizerPerConnection = { connect: perConnection("connect"), connectNoCache: perConnection("connectNoCache") };
  if (options.quick) {
    extras.notes.push("the authorizer micro-benchmark (bench/authorizer.sh) is not run in quick mode");
  } else {
    try {
      extras.microbenchmark = await runAuthorizerMicrobenchmark();
    } catch (err) {
      extras.notes.push(`the authorizer micro-benchmark failed: ${err.message}`);
    }
  }
  for (const f of failures) extras.notes.push(`FAILED: ${f}`);

  const dirty = firstLine("git", ["-C", repoRoot, "status", "--porcelain", "--untracked-files=no"]) !== "";
  const commit = `${firstLine("git", ["-C", repoRoot, "rev-parse", "--short", "HEAD"])}${dirty ? " + uncommitted changes in the working tree" : ""}`;
  machine["load average at end"] = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  const settings = {
    quick: options.quick,
    rounds: options.rounds,
    commit,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    plan,
    noCachePlan,
    httpPlan,
    cpu,
    method: [
      `new connections: \`wrk -t1 -c${plan.newConn.connections} -d${s}s -H "Connection: close"\`, so every request opens a new connection through both sidecars and a new TLS handshake between them (HAProxy resumes TLS sessions: TLS 1.3 tickets; Consul's proxy keeps no client session cache, so it does a full handshake and one agent authorize call per connection), after a ${plan.warmupSeconds} s warm-up that also fills the verdict cache`,
      `kept-alive, saturated: \`wrk -t1 -c${plan.keepAlive.connections} -d${s}s\` (as many requests as the path carries; its p99 mostly measures queueing and CPU scheduling); light steady load: the same with ${plan.paced.connections} connections that each wait ${plan.paced.delayMs} ms after a reply before the next request (wrk's \`delay()\`; about 3,000 req/s), so latency shows what the proxies add rather than the queue`,
      `bulk: \`iperf3 -c -t ${s} -O 1 -P 1\` (one stream; the control and data connections both cross the sidecars in TCP mode)`,
      "application: HAProxy answering `200 ok` to every request (`http-request return`), replaced by `iperf3 -s` on the same port for the bulk phase",
      `CPU: utime+stime from /proc/<pid>/stat before and after each phase, for every process of each sidecar (controller, HAProxy master and workers, or the Go proxy), the application and the Consul agent; the client's from bash \`times\`. Peak RSS: VmHWM of every process of a sidecar, summed. ${cpu.note}`,
      "HTTP upstream: a second pair of services (web-http → db-http, `Protocol: http` in db-http's service-defaults and in web-http's upstream) in front of the same application; the same new-connection, kept-alive and light-load phases, no bulk phase. connect-haproxy and the plain pair parse each request and keep pooled mTLS connections between the sidecars (`http-reuse always`), so a new client connection costs no new TLS handshake; connect-haproxy decides every request (an L4 intention: a native pass after the first); Consul's built-in proxy proxies TCP, one mTLS connection per client connection",
      "plain HAProxy pair: the configuration the controller renders for the same registrations (`renderHaproxyConfig(state, { authorization: false })`), without exactly the authorizer's lines (setenv CONNECT_TRUST_DOMAIN, lua-load, the connect_authorize and connect_verify_upstream rules and their inspect-delays); the same leaf certificates, roots and verify required both ways",
      `rounds: ${options.rounds}; the set-up order rotates each round; figures are medians`,
    ],
  };
  writeReport(options.out, { machine, settings, extras, rounds });
  process.stdout.write(readFileSync(`${options.out}.md`, "utf8"));

  if (options.keep || failures.length) log(`bench: logs and configs kept in ${runDir}`);
  else rmSync(runDir, { recursive: true, force: true });
  return failures.length ? 1 : 0;
}

runProgram("bench", main);
