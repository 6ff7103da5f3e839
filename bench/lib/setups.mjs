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
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { sidecarConfig, startHaproxy, parseKeyValues, runtimeCommand } from "./haproxy.mjs";
import { startProcess, waitFor } from "./processes.mjs";
import { ProcessGroup } from "./proc-stats.mjs";
import { httpStatus } from "./probe.mjs";

export const SETUPS = {
  direct: { label: "direct (client → app)", short: "direct" },
  plain: { label: "plain HAProxy pair (mTLS, no authorization)", short: "plain HAProxy" },
  connect: { label: "connect-haproxy pair (authorization on, cache warm)", short: "connect-haproxy" },
  builtin: { label: "Consul built-in proxy pair", short: "built-in proxy" },
  connectNoCache: { label: "connect-haproxy pair, verdict cache off (every connection asks the agent)", short: "connect-haproxy, no cache" },
  // Opt-in (--setups): what the plain pair gains from settings the controller could render.
  plainBigBuffers: {
    label: "plain HAProxy pair with tune.bufsize 65536",
    short: "plain, 64 kB buffers",
    optIn: true,
    extraGlobal: ["tune.bufsize 65536"],
  },
  plainTls12: {
    label: "plain HAProxy pair, TLS 1.2 between the sidecars",
    short: "plain, TLS 1.2",
    optIn: true,
    extraGlobal: ["ssl-default-bind-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2", "ssl-default-server-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2"],
  },
};

export const DEFAULT_SETUPS = Object.keys(SETUPS).filter((id) => !SETUPS[id].optIn);

/** Does dist/ hold a controller that runs sidecars? (It is being written while this benchmark is.) */
export function controllerAvailable(repoRoot) {
  const cli = join(repoRoot, "dist", "controller", "cli.js");
  if (!existsSync(cli)) return { available: false, why: "dist/controller/cli.js does not exist" };
  try {
    const help = execFileSync(process.execPath, [cli, "--help"], { encoding: "utf8", timeout: 10000, stdio: ["ignore", "pipe", "pipe"] });
    if (!help.includes("--sidecar-for")) return { available: false, why: "dist/controller/cli.js --help does not offer --sidecar-for" };
    return { available: true, cli };
  } catch (err) {
    return { available: false, why: `dist/controller/cli.js --help failed: ${(err.stderr || err.message).toString().trim().split("\n")[0]}` };
  }
}

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
  const info = parseKeyValues(await runtimeCommand(statsSocket, "show info"));
  const out = { dbCumulatedSslConnections: info.CumSslConns, dbSslCacheLookups: info.SslCacheLookups, dbSslCacheMisses: info.SslCacheMisses };
  if (authorizes) out.authorizerStats = parseKeyValues(await runtimeCommand(statsSocket, "connect cache stats"));
  return out;
}

/** A pair of HAProxy processes configured by hand, with or without the Lua authorizer. */
async function startHandConfiguredPair(ctx, { authorize, env = {}, name = authorize ? "authz-pair" : "plain-pair", extraGlobal }) {
  const dir = join(ctx.runDir, name);
  mkdirSync(dir, { recursive: true });
  const common = { caFile: ctx.files.roots, luaBundle: authorize ? ctx.luaBundle : undefined, extraGlobal };
  const dbConfig = sidecarConfig({
    ...common,
    service: "db",
    statsSocket: join(dir, "db.sock"),
    crt: ctx.files.dbPem,
    publicPort: ctx.ports.dbPublic,
    appPort: ctx.ports.app,
  });
  const webConfig = sidecarConfig({
    ...common,
    service: "web",
    statsSocket: join(dir, "web.sock"),
    crt: ctx.files.webPem,
    publicPort: ctx.ports.webPublic,
    appPort: ctx.ports.webApp,
    upstream: { name: "db", bindPort: ctx.ports.upstream, serverPort: ctx.ports.dbPublic },
  });
  const haproxyEnv = authorize ? { CONSUL_HTTP_ADDR: ctx.consul.httpAddr, ...env } : {};
  const db = await startHaproxy("db-sidecar", dbConfig, { dir, cpu: ctx.cpu.b, env: haproxyEnv, haproxyBin: ctx.haproxyBin });
  let web;
  try {
    web = await startHaproxy("web-sidecar", webConfig, { dir, cpu: ctx.cpu.a, env: haproxyEnv, haproxyBin: ctx.haproxyBin });
    await waitForPath(ctx.ports.upstream, "hand-configured pair", db.process);
  } catch (err) {
    await web?.stop();
    await db.stop();
    throw err;
  }
  return {
    entryPort: ctx.ports.upstream,
    sidecars: [new ProcessGroup("web sidecar", [web.process]), new ProcessGroup("db sidecar", [db.process])],
    authorizes: authorize,
    dbStatsSocket: () => db.statsSocket,
    details: () => sidecarDetails(db.statsSocket, authorize),
    async stop() {
      await Promise.all([web.stop(), db.stop()]);
    },
  };
}

/** Two sidecars run by the controller, as an operator would run them. */
async function startControllerPair(ctx, { env = {} }) {
  const dir = join(ctx.runDir, `controller-${ctx.runCounter++}`);
  const start = (service, cpu) => {
    const configDir = join(dir, service);
    mkdirSync(configDir, { recursive: true });
    return startProcess(
      `connect-haproxy ${service}`,
      process.execPath,
      [ctx.controller.cli, "--sidecar-for", service, "--http-addr", ctx.consul.httpAddr, "--config-dir", configDir, "--haproxy-bin", ctx.haproxyBin],
      { cpu, env: { ...process.env, ...env }, logFile: join(dir, `${service}.log`) },
    );
  };
  const db = start("db", ctx.cpu.b);
  const web = start("web", ctx.cpu.a);
  const stop = async () => {
    await Promise.all([web.stop("SIGTERM", 10000), db.stop("SIGTERM", 10000)]);
  };
  try {
    await waitForPath(ctx.ports.upstream, "controller pair (web)", web);
    if (db.exited()) throw new Error(`db's controller exited:\n${db.output()}`);
  } catch (err) {
    await stop();
    throw err;
  }
  // The controller keeps HAProxy's stats socket in its --config-dir.
  const dbSocket = () => ["stats.sock", "haproxy.sock", "admin.sock"].map((n) => join(dir, "db", n)).find((p) => existsSync(p));
  return {
    entryPort: ctx.ports.upstream,
    sidecars: [new ProcessGroup("web sidecar", [web]), new ProcessGroup("db sidecar", [db])],
    authorizes: true,
    dbStatsSocket: dbSocket,
    details: async () => (dbSocket() ? sidecarDetails(dbSocket(), true) : { note: "db's stats socket not found in its --config-dir" }),
    stop,
  };
}

async function startBuiltinPair(ctx) {
  const dir = join(ctx.runDir, "builtin-pair");
  mkdirSync(dir, { recursive: true });
  const start = (service, cpu) =>
    startProcess(`consul connect proxy ${service}`, ctx.consulBin, ["connect", "proxy", "-sidecar-for", service, "-http-addr", ctx.consul.httpAddr, "-log-level", "warn"], {
      cpu,
      logFile: join(dir, `${service}.log`),
    });
  const db = start("db", ctx.cpu.b);
  const web = start("web", ctx.cpu.a);
  const stop = async () => {
    await Promise.all([web.stop("SIGINT", 5000), db.stop("SIGINT", 5000)]);
  };
  try {
    await waitForPath(ctx.ports.upstream, "built-in proxy pair", web);
    if (db.exited()) throw new Error(`db's built-in proxy exited:\n${db.output()}`);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    entryPort: ctx.ports.upstream,
    sidecars: [new ProcessGroup("web sidecar", [web]), new ProcessGroup("db sidecar", [db])],
    authorizes: true,
    details: async () => ({}),
    stop,
  };
}

/** Starts one set-up; resolves with { entryPort, sidecars: ProcessGroup[], details(), stop() }. */
export async function startSetup(id, ctx) {
  switch (id) {
    case "direct":
      return { entryPort: ctx.ports.app, sidecars: [], details: async () => ({}), stop: async () => {} };
    case "plain":
      return startHandConfiguredPair(ctx, { authorize: false });
    case "connect":
      return ctx.controller.available ? startControllerPair(ctx, {}) : startHandConfiguredPair(ctx, { authorize: true });
    case "connectNoCache": {
      // An allow TTL of 0 caches nothing: every connection asks the agent
      // (connections for the same client arriving during a call share it).
      const env = { CONNECT_ALLOW_TTL: "0", CONNECT_DENY_TTL: "0" };
      return ctx.controller.available ? startControllerPair(ctx, { env }) : startHandConfiguredPair(ctx, { authorize: true, env });
    }
    case "builtin":
      return startBuiltinPair(ctx);
    case "plainBigBuffers":
    case "plainTls12":
      return startHandConfiguredPair(ctx, { authorize: false, name: id, extraGlobal: SETUPS[id].extraGlobal });
    default:
      throw new Error(`unknown set-up ${id}`);
  }
}
