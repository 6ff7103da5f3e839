// The set-ups compared, each started on the same ports against the same
// application: the client always dials `entryPort`; for the pairs that is
// web's upstream listener, which reaches db's public listener over mTLS,
// which forwards to the application.
//
// CPU placement (two cores): core A plays "web's host" (the client and web's
// sidecar), core B plays "db's host" (db's sidecar, the application, and the
// Consul agent, which the built-in proxy and the authorizer ask on db's side).
// Every set-up gets the same two cores; HAProxy sees one CPU and runs one
// thread, Go's runtime sets GOMAXPROCS=1, as each would on a one-core host.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { renderHaproxyConfig } from "../../dist/controller/haproxy-config.js";
import { parseKeyValues, sendRuntimeCommand, startHaproxy } from "../../dist/test/harness/haproxy.js";
import { startConnectHaproxy, startConsulProxy } from "../../dist/test/harness/mesh.js";
import { ProcessGroup } from "../../dist/test/harness/process-stats.js";
import { freePorts } from "../../dist/test/harness/ports.js";
import { startProcess, waitFor } from "../../dist/test/harness/processes.js";
import { sidecarState } from "./mesh.mjs";
import { httpStatus, timedScrape } from "./probe.mjs";

/** The render's 64 kB buffers put back to HAProxy's default (16 kB). */
const withDefaultBuffers = (config) => config.replace(/^ {4}tune\.bufsize \d+$/m, "    tune.bufsize 16384");

export const SETUPS = {
  direct: { label: "direct (client → app)", short: "direct" },
  plain: { label: "plain HAProxy pair (mTLS, no authorization)", short: "plain HAProxy" },
  connect: { label: "connect-haproxy pair (authorization on, cache warm)", short: "connect-haproxy" },
  builtin: { label: "Consul built-in proxy pair", short: "built-in proxy" },
  connectNoCache: { label: "connect-haproxy pair, verdict cache off (every connection asks the agent)", short: "connect-haproxy, no cache" },
  // The same three pairs for an HTTP upstream (web-http → db-http, protocol http): HAProxy pools its mTLS
  // connections (http-reuse always) and decides each request; Consul's built-in proxy proxies TCP.
  plainHttp: { label: "plain HAProxy pair, HTTP upstream (same render and pooling, no authorization)", short: "plain HAProxy", protocol: "http" },
  connectHttp: { label: "connect-haproxy pair, HTTP upstream (L4 intention, every request decided)", short: "connect-haproxy", protocol: "http" },
  builtinHttp: { label: "Consul built-in proxy pair, HTTP upstream (it proxies TCP)", short: "built-in proxy", protocol: "http" },
  // Opt-in: the cost of metrics (issue 12), against `connect` in the same run.
  connectMetrics: { label: "connect-haproxy pair with metrics on (--metrics-addr), each sidecar scraped every second", short: "connect-haproxy, scraped", optIn: true },
  // Opt-in (--setups): what the plain pair gains from settings the controller could render.
  // The render's 64 kB buffers against HAProxy's default (they were the candidate plainBigBuffers).
  plainSmallBuffers: {
    label: "plain HAProxy pair with HAProxy's default buffers (tune.bufsize 16384)",
    short: "plain, 16 kB buffers",
    optIn: true,
    editConfig: withDefaultBuffers,
  },
  // The same for an HTTP upstream: whether the 64 kB buffers cost kept-alive HTTP anything.
  plainHttpSmallBuffers: {
    label: "plain HAProxy pair, HTTP upstream, with HAProxy's default buffers (tune.bufsize 16384)",
    short: "plain HTTP, 16 kB buffers",
    optIn: true,
    protocol: "http",
    editConfig: withDefaultBuffers,
  },
  plainSplice: {
    label: "plain HAProxy pair splicing the plaintext legs (option splice-auto)",
    short: "plain, splice",
    optIn: true,
    editConfig: (config) => config.replace("    option dontlognull\n", "    option dontlognull\n    option splice-auto\n"),
  },
  plainHttpH2: {
    label: "plain HTTP pair, HTTP/2 between the sidecars (alpn h2 on the pooled connections)",
    short: "plain HTTP, h2 between sidecars",
    optIn: true,
    protocol: "http",
    editConfig: (config) => config.replaceAll(" alpn http/1.1", " alpn h2"),
  },
  // Opt-in, to find where a connect pair's cost comes from: the HAProxy configuration the controller
  // renders (authorization on), run without the controller, whole and with one side's Lua rules left out.
  authorizerPair: {
    label: "HAProxy pair on the controller's configuration (authorizer on), without the controller",
    short: "authorizer config, no controller",
    optIn: true,
    authorization: true,
  },
  authorizerPairNoUpstreamCheck: {
    label: "the same, without web's upstream identity check (connect_verify_upstream)",
    short: "authorizer config, no upstream check",
    optIn: true,
    authorization: true,
    editConfig: (config) => config.replace(/^ {4}tcp-response .*\n/gm, ""),
  },
  authorizerPairNoAuthorize: {
    label: "the same, without db's decision (connect_authorize): diagnostic only, it authorizes nothing",
    short: "authorizer config, no decision",
    optIn: true,
    authorization: true,
    editConfig: (config) => config.replace(/^ {4}tcp-request (inspect-delay|content) .*\n/gm, ""),
  },
};

export const DEFAULT_SETUPS = Object.keys(SETUPS).filter((id) => !SETUPS[id].optIn);

/** The registered pair a set-up runs on (bench/lib/mesh.mjs registers both): its services' names and ports. */
export const PAIR_NAMES = { tcp: { web: "web", db: "db" }, http: { web: "web-http", db: "db-http" } };
const pairOf = (ctx, id) => ctx.pairs?.[SETUPS[id].protocol ?? "tcp"] ?? { names: PAIR_NAMES.tcp, upstream: ctx.ports.upstream };

/** Starts processes pinned to `cpu`, logging to `logFile`, and stops what they leave behind. */
const pinnedLauncher = (cpu, logFile, env = {}) => (name, command, args) =>
  startProcess(name, command, args, { cpu, logFile, env: { ...process.env, ...env }, stopDescendants: true });

/** Waits until an HTTP request through `port` gets the application's 200. */
async function waitForPath(port, what, watched) {
  await waitFor(
    `${what}: a request through 127.0.0.1:${port} answered 200`,
    async () => ((await httpStatus(port)) === 200 ? true : undefined),
    { timeoutMs: 45000, intervalMs: 200, process: watched },
  );
}

/** Counters read from db's HAProxy at the end of a set-up. */
async function sidecarDetails(statsSocket, authorizes) {
  const info = parseKeyValues(await sendRuntimeCommand(statsSocket, "show info"));
  const out = { dbCumulatedSslConnections: info.CumSslConns, dbSslCacheLookups: info.SslCacheLookups, dbSslCacheMisses: info.SslCacheMisses };
  if (authorizes) out.authorizerStats = parseKeyValues(await sendRuntimeCommand(statsSocket, "connect cache stats"));
  return out;
}

/**
 * Two HAProxy processes on what the controller would render for web's and db's
 * sidecars, without the authorizer's lines (renderHaproxyConfig's
 * `authorization: false`); `extraGlobal`: lines added to `global` (the tuning candidates).
 */
async function startPlainPair(ctx, { name, pair, extraGlobal = [], editConfig = (config) => config, authorization = false }) {
  const dir = join(ctx.runDir, name);
  mkdirSync(dir, { recursive: true });
  const start = async (role, cpu) => {
    const service = pair.names[role];
    const state = await sidecarState(ctx.consul, service, dir);
    writeFileSync(state.paths.leafCertificateFile, state.leafCertificatePem, { mode: 0o600 });
    writeFileSync(state.paths.caRootsFile, state.caRootsPem);
    for (const map of [state.paths.passMap, state.paths.serverPassMap]) writeFileSync(map, "");
    const config = editConfig(renderHaproxyConfig(state, { authorization }).replace(/^global$/m, ["global", ...extraGlobal.map((line) => `    ${line}`)].join("\n")));
    return startHaproxy(config, { dir, name: `${service}-sidecar`, cpu, logToFile: true, ...(authorization ? { env: { CONSUL_HTTP_ADDR: ctx.consul.httpAddr } } : {}) });
  };
  const db = await start("db", ctx.cpu.b);
  let web;
  try {
    web = await start("web", ctx.cpu.a);
    await waitForPath(pair.upstream, "plain pair", db.process);
  } catch (err) {
    await web?.stop();
    await db.stop();
    throw err;
  }
  return {
    entryPort: pair.upstream,
    sidecars: [new ProcessGroup("web sidecar", [web.process]), new ProcessGroup("db sidecar", [db.process])],
    authorizes: authorization,
    dbStatsSocket: () => db.statsSocket,
    details: () => sidecarDetails(db.statsSocket, authorization),
    async stop() {
      await Promise.all([web.stop(), db.stop()]);
    },
  };
}

/**
 * Two sidecar processes from `start(service, cpu)`: db's on CPU B, web's on
 * CPU A; resolves once a request through web's upstream listener gets the
 * application's answer, and fails at once if either exits.
 */
async function startPair(ctx, pair, what, start, { stopSignal, graceMs }) {
  const db = start("db", ctx.cpu.b);
  const web = start("web", ctx.cpu.a);
  const stop = async () => {
    await Promise.all([web.stop(stopSignal, graceMs), db.stop(stopSignal, graceMs)]);
  };
  try {
    await waitForPath(pair.upstream, what, [web, db]);
  } catch (err) {
    await stop();
    throw err;
  }
  return { entryPort: pair.upstream, sidecars: [new ProcessGroup("web sidecar", [web]), new ProcessGroup("db sidecar", [db])], stop };
}

/**
 * Scrapes each `http://127.0.0.1:<port>/metrics` every `intervalMs` (a busy
 * Prometheus scrapes every 15 s; once a second makes the cost visible), and
 * times each scrape.
 */
function startScraper(ports, intervalMs) {
  const scrapes = [];
  let failures = 0;
  const scrapeAll = () => ports.forEach((port) => timedScrape(port).then((scrape) => scrapes.push(scrape), () => (failures += 1)));
  const timer = setInterval(scrapeAll, intervalMs);
  return {
    stop: () => clearInterval(timer),
    /** Raw: report.mjs's quantileSummary makes figures of `ms`. */
    summary: () => ({ failures, bytes: scrapes.at(-1)?.bytes, ms: scrapes.map((s) => Math.round(s.ms * 10) / 10) }),
  };
}

/** Two sidecars run by the controller, as an operator would run them; `metricsPorts` ({ web, db }) turns metrics on. */
async function startControllerPair(ctx, { pair, env = {}, metricsPorts }) {
  const dir = join(ctx.runDir, `controller-${ctx.runCounter++}`);
  const start = (role, cpu) => {
    const configDir = join(dir, role);
    mkdirSync(configDir, { recursive: true });
    return startConnectHaproxy(pair.names[role], ctx.consul.httpAddr, {
      launch: pinnedLauncher(cpu, join(dir, `${role}.log`), env),
      configDir,
      logLevel: "info",
      args: ["--haproxy-bin", ctx.haproxyBin, ...(metricsPorts ? ["--metrics-addr", `127.0.0.1:${metricsPorts[role]}`] : [])],
    }).process;
  };
  const started = await startPair(ctx, pair, "controller pair", start, { stopSignal: "SIGTERM", graceMs: 10000 });
  const dbSocket = join(dir, "db", "stats.sock");
  return { ...started, authorizes: true, dbStatsSocket: () => dbSocket, details: () => sidecarDetails(dbSocket, true) };
}

/** Consul's built-in proxy as both sidecars. */
async function startBuiltinPair(ctx, pair) {
  const dir = join(ctx.runDir, `builtin-pair-${ctx.runCounter++}`);
  mkdirSync(dir, { recursive: true });
  const start = (role, cpu) => startConsulProxy(pair.names[role], ctx.consul.httpAddr, { launch: pinnedLauncher(cpu, join(dir, `${role}.log`)), logLevel: "warn" }).process;
  const started = await startPair(ctx, pair, "built-in proxy pair", start, { stopSignal: "SIGINT", graceMs: 5000 });
  return { ...started, authorizes: true, details: async () => ({}) };
}

/** Starts one set-up; resolves with { entryPort, sidecars: ProcessGroup[], details(), stop() }. */
export async function startSetup(id, ctx) {
  const pair = pairOf(ctx, id);
  switch (id) {
    case "direct":
      return { entryPort: ctx.ports.app, sidecars: [], details: async () => ({}), stop: async () => {} };
    case "plain":
    case "plainHttp":
      return startPlainPair(ctx, { name: id, pair });
    case "connect":
    case "connectHttp":
      return startControllerPair(ctx, { pair });
    case "connectNoCache":
      // An allow TTL of 0 caches nothing: every connection asks the agent
      // (connections for the same client arriving during a call share it).
      return startControllerPair(ctx, { pair, env: { CONNECT_ALLOW_TTL: "0", CONNECT_DENY_TTL: "0" } });
    case "connectMetrics": {
      const [web, db] = await freePorts(2);
      const started = await startControllerPair(ctx, { pair, metricsPorts: { web, db } });
      const scraper = startScraper([web, db], 1000);
      return {
        ...started,
        metricsPorts: { web, db },
        details: async () => ({ ...(await started.details()), scrape: scraper.summary() }),
        stop: async () => {
          scraper.stop();
          await started.stop();
        },
      };
    }
    case "builtin":
    case "builtinHttp":
      return startBuiltinPair(ctx, pair);
    case "plainSmallBuffers":
    case "plainHttpSmallBuffers":
    case "plainSplice":
    case "plainHttpH2":
    case "authorizerPair":
    case "authorizerPairNoUpstreamCheck":
    case "authorizerPairNoAuthorize":
      return startPlainPair(ctx, { name: id, pair, extraGlobal: SETUPS[id].extraGlobal, editConfig: SETUPS[id].editConfig, authorization: SETUPS[id].authorization });
    default:
      throw new Error(`unknown set-up ${id}`);
  }
}
