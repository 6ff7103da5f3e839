// The command line: `run(argv, out, err)` resolves with the exit code, so tests
// call it directly; cli.ts is the bin shim around it.
import { Command, CommanderError, Option } from "commander";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { systemClock } from "./clock.js";
import { ConsulClient, ConsulError } from "./consul-client.js";
import { fixedToken, TokenFile, type TokenSource } from "./consul-token.js";
import { ConsulWatches } from "./consul-watches.js";
import { buildDesiredState, type HaproxyPaths } from "./desired-state.js";
import { renderHaproxyConfig } from "./haproxy-config.js";
import { ProcessDriver } from "./haproxy-driver.js";
import { readHaproxyVersion } from "./haproxy-process.js";
import { capabilitiesOf, type RuntimeCapabilities } from "./haproxy-version.js";
import { createLogger, isLogLevel, type Logger } from "./logger.js";
import { SidecarController } from "./sidecar-controller.js";
import { findSidecar, LookupError, type SidecarSelector } from "./sidecar-lookup.js";
import { readSnapshotOnce } from "./snapshot-once.js";
import { SidecarSpecError } from "./sidecar-spec.js";
import { verifyUpstreamIdentity } from "./upstream-identity.js";
import { getOverUnixSocket, MetricsServer } from "./metrics-server.js";
import { AuthorizerControl } from "./authorizer-control.js";
import { SidecarMetrics } from "./sidecar-metrics.js";

export const exitCodes = { ok: 0, runtimeFailure: 1, usage: 2 } as const;

export interface Writable {
  write(text: string): unknown;
}

export interface RunOptions {
  /** Aborting it stops the controller (the bin shim wires SIGTERM/SIGINT to it). */
  signal?: AbortSignal;
  /** Each "SIGHUP" event makes the sidecar re-read Consul and check HAProxy (the bin shim wires SIGHUP to it). */
  hangup?: EventTarget;
  env?: NodeJS.ProcessEnv;
}

class UsageError extends Error {}

/** package.json, found from dist/controller/ (built) or controller/ (sources). */
function packageVersion(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const path of [resolve(here, "..", "..", "package.json"), resolve(here, "..", "package.json")]) {
    if (existsSync(path)) return (JSON.parse(readFileSync(path, "utf8")) as { version?: string }).version ?? "unknown";
  }
  return "unknown";
}

/**
 * `--version`: this package, the HAProxy it would run, the Lua bundle it would
 * load. False when HAProxy or the bundle is missing (each named on its line).
 */
function writeVersions(haproxyBin: string, out: Writable): boolean {
  let ok = true;
  out.write(`connect-haproxy ${packageVersion()}\n`);
  try {
    const line = execFileSync(haproxyBin, ["-v"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 5000 }).split("\n")[0]!.trim();
    out.write(`haproxy: ${line} (${haproxyBin})\n`);
  } catch (error) {
    ok = false;
    out.write(`haproxy: not usable (${haproxyBin}: ${(error as Error).message.split("\n")[0]})\n`);
  }
  const bundle = luaBundlePath();
  const bundleVersion = existsSync(bundle) ? /^____exports\.version = "([^"]+)"/m.exec(readFileSync(bundle, "utf8"))?.[1] : undefined;
  if (bundleVersion === undefined) ok = false;
  out.write(`lua bundle: ${bundleVersion !== undefined ? `connect-haproxy ${bundleVersion}` : "missing or unreadable (run npm run build)"} (${bundle})\n`);
  return ok;
}

/** dist/connect-haproxy.lua, found from dist/controller/ (built) or controller/ (sources). */
export function luaBundlePath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [resolve(here, "..", "connect-haproxy.lua"), resolve(here, "..", "dist", "connect-haproxy.lua")];
  return candidates.find((path) => existsSync(path)) ?? candidates[0]!;
}

export function pathsIn(configDir: string): HaproxyPaths {
  return {
    configFile: join(configDir, "haproxy.cfg"),
    leafCertificateFile: join(configDir, "certs", "leaf.pem"),
    caRootsFile: join(configDir, "certs", "roots.pem"),
    statsSocket: join(configDir, "stats.sock"),
    passMap: join(configDir, "passes.map"),
    serverPassMap: join(configDir, "server-passes.map"),
    masterSocket: join(configDir, "master.sock"),
    luaBundle: luaBundlePath(),
    controlSocket: join(configDir, "control.sock"),
    promexSocket: join(configDir, "promex.sock"),
  };
}

interface CommonOptions {
  sidecarFor?: string;
  proxyId?: string;
  httpAddr: string;
  token?: string;
  tokenFile?: string;
  caFile?: string;
  configDir?: string;
  logLevel: string;
}

interface RunCommandOptions extends CommonOptions {
  haproxyBin: string;
  driftCheckInterval: string;
  metricsAddr?: string;
}

const exitCodeHelp = `
Exit codes:
  0  stopped cleanly (SIGTERM or SIGINT), or the subcommand succeeded
  1  runtime failure: HAProxy could not start, Consul refused a request (ACL), ...
  2  usage error, or the sidecar could not be identified on the local agent

Examples:
  connect-haproxy --sidecar-for web-1
  CONSUL_HTTP_TOKEN_FILE=/etc/consul/web.token connect-haproxy --sidecar-for web-1 --config-dir /run/web-sidecar
  connect-haproxy render --sidecar-for web-1 > haproxy.cfg`;

function addConsulOptions(command: Command): Command {
  return command
    .option("--sidecar-for <service-id>", "run the sidecar of this service instance (the connect-proxy whose Proxy.DestinationServiceID it is)")
    .option("--proxy-id <sidecar-id>", "run the connect-proxy registered with this service ID")
    .addOption(new Option("--http-addr <address>", "Consul agent's HTTP API (host:port, http:// or https://)").env("CONSUL_HTTP_ADDR").default("127.0.0.1:8500"))
    .addOption(new Option("--token <token>", "ACL token for Consul (also handed to HAProxy's authorizer through its environment)").env("CONSUL_HTTP_TOKEN"))
    .addOption(new Option("--token-file <path>", "file holding the ACL token; re-read when it changes (rotation without restart), by the controller and the authorizer").env("CONSUL_HTTP_TOKEN_FILE"))
    .addOption(new Option("--ca-file <path>", "CA certificate to verify Consul's https:// API").env("CONSUL_CACERT"))
    .addOption(new Option("--config-dir <dir>", "where haproxy.cfg, certificates and sockets live (default: <tmpdir>/connect-haproxy/<sidecar-id>)"))
    .addOption(new Option("--log-level <level>", "debug, info, warn or error").env("CONNECT_HAPROXY_LOG_LEVEL").default("info"));
}

export async function run(argv: string[], out: Writable, err: Writable, runOptions: RunOptions = {}): Promise<number> {
  const signal = runOptions.signal ?? new AbortController().signal;
  let exitCode: number = exitCodes.ok;
  const program = new Command("connect-haproxy")
    .description(
      "Runs HAProxy as the Consul Connect sidecar of a service instance and keeps it current as Consul changes: new upstream instances, renewed certificates, rotated CA roots and changed intentions are applied without reloads where HAProxy allows.",
    )
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({ writeOut: (s) => out.write(s), writeErr: (s) => err.write(s) })
    .showHelpAfterError("(run connect-haproxy --help for usage)")
    .addHelpText("after", exitCodeHelp);
  addConsulOptions(program)
    .addOption(new Option("--haproxy-bin <path>", "HAProxy 2.6+ binary").env("HAPROXY_BIN").default("haproxy"))
    .addOption(
      new Option("--drift-check-interval <seconds>", "how often HAProxy's server slots are compared with Consul's view and repaired (0: never; SIGHUP also does it)")
        .env("CONNECT_HAPROXY_DRIFT_CHECK_INTERVAL")
        .default("30"),
    )
    .addOption(
      new Option("--metrics-addr <host:port>", "serve Prometheus metrics (/metrics) and readiness (/ready) here; overrides the registration's Proxy.Config envoy_prometheus_bind_addr").env(
        "CONNECT_HAPROXY_METRICS_ADDR",
      ),
    )
    .option("--version", "print the versions of connect-haproxy, the HAProxy it would run and its Lua bundle, then exit")
    .action(async (options: RunCommandOptions & { version?: boolean }) => {
      if (options.version) {
        exitCode = writeVersions(options.haproxyBin, out) ? exitCodes.ok : exitCodes.runtimeFailure;
        return;
      }
      exitCode = await runSidecar(options, out, err, signal, runOptions.hangup);
    });
  addConsulOptions(program.command("render"))
    .description("print the haproxy.cfg the sidecar would run (for review, or for an existing HAProxy setup), then exit")
    .action(async (options: CommonOptions) => {
      exitCode = await renderOnce(options, out, err, signal);
    });
  program
    .command("lua-path")
    .description("print the absolute path of the installed connect-haproxy.lua (for lua-load in your own haproxy.cfg)")
    .action(() => {
      out.write(`${luaBundlePath()}\n`);
    });
  try {
    await program.parseAsync(argv, { from: "user" });
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? exitCodes.ok : exitCodes.usage;
    err.write(`connect-haproxy: ${(error as Error).message}\n`);
    return exitCodes.runtimeFailure;
  }
}

function selectorFrom(options: CommonOptions): SidecarSelector {
  if (!options.sidecarFor === !options.proxyId) throw new UsageError("give exactly one of --sidecar-for <service-id> or --proxy-id <sidecar-id>");
  return { sidecarFor: options.sidecarFor, proxyId: options.proxyId };
}

/** --token as given, or --token-file read now and re-read whenever it changes. */
function tokenSource(options: CommonOptions, logger: Logger): TokenSource {
  if (options.token || !options.tokenFile) return fixedToken(options.token);
  try {
    return new TokenFile(resolve(options.tokenFile), logger);
  } catch (error) {
    throw new UsageError(`cannot read the token file ${options.tokenFile}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

function loggerFor(options: CommonOptions, err: Writable): Logger {
  if (!isLogLevel(options.logLevel)) throw new UsageError(`--log-level must be debug, info, warn or error, not "${options.logLevel}"`);
  return createLogger(options.logLevel, (line) => err.write(line));
}

/** Maps an error to its one-line message and exit code. */
function failure(error: unknown, err: Writable): number {
  const message = error instanceof Error ? error.message : String(error);
  err.write(`connect-haproxy: ${message}\n`);
  if (error instanceof UsageError || error instanceof LookupError || error instanceof SidecarSpecError) return exitCodes.usage;
  return exitCodes.runtimeFailure;
}

/** Which HAProxy runs, and so what it can change at run time; an unreadable version gets the safe (reloading) path, with a warning. */
async function haproxyCapabilities(binary: string, logger: Logger): Promise<RuntimeCapabilities> {
  const { version, problem } = await readHaproxyVersion(binary);
  const capabilities = capabilitiesOf(version);
  if (!version) logger.warn(`cannot tell which HAProxy ${binary} is (${problem}): renewed leaves and new roots will be loaded by reloads`);
  else {
    logger.info("HAProxy version", {
      version: version.line.split(" - ")[0]!,
      leaf: capabilities.swapListenerCertificate ? "runtime API (set/commit ssl cert)" : "reload",
      roots: capabilities.caFileReachesListener ? "runtime API (set/commit ssl ca-file)" : "reload",
    });
  }
  return capabilities;
}

async function runSidecar(options: RunCommandOptions, out: Writable, err: Writable, signal: AbortSignal, hangup?: EventTarget): Promise<number> {
  let consul: ConsulClient | undefined;
  let metricsServer: MetricsServer | undefined;
  try {
    const driftCheckSeconds = Number(options.driftCheckInterval);
    if (!/^\d+(\.\d+)?$/.test(options.driftCheckInterval)) throw new UsageError(`--drift-check-interval must be a number of seconds, not "${options.driftCheckInterval}"`);
    const selector = selectorFrom(options);
    const logger = loggerFor(options, err);
    const tokens = tokenSource(options, logger);
    consul = new ConsulClient({ httpAddr: options.httpAddr, tokens, caCertFile: options.caFile });
    const registration = await findSidecar(consul, selector, logger, systemClock, signal);
    const configDir = resolve(options.configDir ?? join(tmpdir(), "connect-haproxy", registration.ID));
    mkdirSync(configDir, { recursive: true, mode: 0o700 });
    const haproxyEnvironment: NodeJS.ProcessEnv = { ...process.env, CONSUL_HTTP_ADDR: options.httpAddr };
    delete haproxyEnvironment.CONSUL_HTTP_TOKEN;
    delete haproxyEnvironment.CONSUL_HTTP_TOKEN_FILE;
    // A token file is handed over as a file, which the authorizer re-reads when it changes (rotation); a fixed token as is.
    if (tokens instanceof TokenFile) haproxyEnvironment.CONSUL_HTTP_TOKEN_FILE = tokens.path;
    else if (tokens.current()) haproxyEnvironment.CONSUL_HTTP_TOKEN = tokens.current();
    if (options.caFile) haproxyEnvironment.CONSUL_CACERT = options.caFile;
    const paths = pathsIn(configDir);
    const capabilities = await haproxyCapabilities(options.haproxyBin, logger);
    // The metrics read the controller, which counts into them: tied by closures.
    let controller: SidecarController | undefined;
    const metrics = new SidecarMetrics({ leafExpiresInSeconds: () => controller?.leafExpiresInSeconds(), ready: () => controller?.readiness().ready ?? false });
    const authorizerControl = new AuthorizerControl(paths.controlSocket);
    metricsServer = new MetricsServer(
      {
        haproxy: () => getOverUnixSocket(paths.promexSocket!, "/metrics"),
        authorizer: () => authorizerControl.metrics(),
        controller: () => metrics.text(),
        readiness: () => controller?.readiness() ?? { ready: false, reason: "starting" },
      },
      logger,
    );
    const server = metricsServer;
    const listenMetrics = (address: string | undefined) =>
      void server.listen(address).catch((err: Error) => logger.error(`cannot serve metrics on ${address}: ${err.message}`));
    if (options.metricsAddr) listenMetrics(options.metricsAddr);
    controller = new SidecarController({
      registration,
      paths,
      source: new ConsulWatches(consul, systemClock, logger, (kind) => metrics.watchError(kind)),
      driver: new ProcessDriver({ binary: options.haproxyBin, paths, environment: haproxyEnvironment, logger, clock: systemClock }),
      probe: verifyUpstreamIdentity,
      logger,
      clock: systemClock,
      driftCheckMs: driftCheckSeconds * 1000,
      metrics,
      // --metrics-addr wins over the registration.
      onPrometheusBindAddress: (address) => {
        if (!options.metricsAddr) listenMetrics(address);
      },
      capabilities,
    });
    hangup?.addEventListener("SIGHUP", () => controller.resync());
    await controller.run(signal);
    return exitCodes.ok;
  } catch (error) {
    if (signal.aborted && error instanceof ConsulError && error.kind === "aborted") return exitCodes.ok;
    return failure(error, err);
  } finally {
    consul?.close();
    await metricsServer?.close();
  }
}

async function renderOnce(options: CommonOptions, out: Writable, err: Writable, signal: AbortSignal): Promise<number> {
  let consul: ConsulClient | undefined;
  try {
    const selector = selectorFrom(options);
    const logger = loggerFor(options, err);
    consul = new ConsulClient({ httpAddr: options.httpAddr, tokens: tokenSource(options, logger), caCertFile: options.caFile });
    const registration = await findSidecar(consul, selector, logger, systemClock, signal);
    const snapshot = await readSnapshotOnce(consul, registration, signal);
    const configDir = resolve(options.configDir ?? join(tmpdir(), "connect-haproxy", registration.ID));
    const state = buildDesiredState(snapshot, pathsIn(configDir));
    out.write(renderHaproxyConfig(state));
    return exitCodes.ok;
  } catch (error) {
    return failure(error, err);
  } finally {
    consul?.close();
  }
}
