// Pieces of a mesh: the test applications (test/apps/), a connect-haproxy
// sidecar (the built controller CLI) and Consul's own built-in proxy, all real
// processes; and a TCP client that says whether a round trip got through.
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { connect as tlsConnect, type SecureVersion } from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { consulBinary, type ConsulAgent } from "./consul.js";
import { controllerCli, controllerNodeFlags, dbApp, httpEchoApp, webApp } from "./paths.js";
import { startProcess, type StartedProcess } from "./processes.js";

/** How to start a process: on this host, inside a test host's namespace, or pinned and logged to a file (benchmarks). */
export type Launcher = (name: string, command: string, args: string[]) => StartedProcess;
export const onThisHost: Launcher = (name, command, args) => startProcess(name, command, args);

/** db (test/apps/db-app.mjs): answers every line with `<name> answered: <line>`. */
export function startDbApp(port: number, name: string, launch: Launcher = onThisHost): StartedProcess {
  return launch(`db app ${name}`, process.execPath, [dbApp, "--port", String(port), "--name", name]);
}

/** web (test/apps/web-app.mjs): an HTTP service that asks db at `dbAddress` (its upstream listener) on every request. */
export function startWebApp(port: number, dbAddress: string, launch: Launcher = onThisHost): StartedProcess {
  return launch("web app", process.execPath, [webApp, "--port", String(port), "--db", dbAddress]);
}

/** An HTTP service (test/apps/http-echo-app.mjs) answering `<name> <method> <path>`, with 200 or else `status` (a failing instance). */
export function startHttpEchoApp(port: number, name: string, launch: Launcher = onThisHost, { status }: { status?: number } = {}): StartedProcess {
  return launch(`http app ${name}`, process.execPath, [httpEchoApp, "--port", String(port), "--name", name, ...(status === undefined ? [] : ["--status", String(status)])]);
}

export interface SidecarProcess {
  readonly process: StartedProcess;
  readonly configDir: string;
  stop(): Promise<void>;
}

export interface SidecarOptions {
  launch?: Launcher;
  /** The controller's --config-dir (default: a fresh temporary directory). */
  configDir?: string;
  /** --log-level (default debug: tests read the decisions from it). */
  logLevel?: string;
  /** More CLI arguments (e.g. --haproxy-bin). */
  args?: string[];
}

/** `connect-haproxy --sidecar-for <id>` against the agent at `httpAddr`. */
export function startConnectHaproxy(serviceId: string, httpAddr: string, options: SidecarOptions = {}): SidecarProcess {
  const { launch = onThisHost, logLevel = "debug", args = [] } = options;
  const configDir = options.configDir ?? mkdtempSync(join(tmpdir(), `ch-sidecar-${serviceId}-`));
  const proc = launch(`connect-haproxy ${serviceId}`, process.execPath, [
    ...controllerNodeFlags(),
    controllerCli,
    "--sidecar-for",
    serviceId,
    "--http-addr",
    httpAddr,
    "--config-dir",
    configDir,
    "--log-level",
    logLevel,
    ...args,
  ]);
  return { process: proc, configDir, stop: () => proc.stop("SIGTERM", 15_000) };
}

/** Consul's own sidecar: `consul connect proxy -sidecar-for <id>`. */
export function startConsulProxy(serviceId: string, httpAddr: string, options: Pick<SidecarOptions, "launch" | "logLevel"> = {}): SidecarProcess {
  const { launch = onThisHost, logLevel = "debug" } = options;
  const proc = launch(`consul connect proxy ${serviceId}`, consulBinary(), ["connect", "proxy", "-sidecar-for", serviceId, "-http-addr", httpAddr, "-log-level", logLevel]);
  return { process: proc, configDir: "", stop: () => proc.stop() };
}

/**
 * Connects, sends one line, and resolves with the reply line, or with
 * `undefined` when the connection was refused, closed or silent: what a mesh
 * that denies a connection looks like to the client.
 */
export function tcpRoundTrip(port: number, line: string, host = "127.0.0.1", timeoutMs = 5000): Promise<string | undefined> {
  return lineRoundTrip(connect(port, host), "connect", line, timeoutMs);
}

/**
 * tcpRoundTrip as a mesh client: mTLS with `identity` (a Consul leaf: CertPEM
 * and PrivateKeyPEM) to a sidecar's public listener, which presents a leaf
 * without a name to check, so only the chain is verified.
 */
export function mtlsRoundTrip(port: number, identity: { CertPEM: string; PrivateKeyPEM: string }, roots: string[], line: string, timeoutMs = 5000): Promise<string | undefined> {
  const socket = tlsConnect({ host: "127.0.0.1", port, ca: roots, cert: identity.CertPEM, key: identity.PrivateKeyPEM, checkServerIdentity: () => undefined });
  return lineRoundTrip(socket, "secureConnect", line, timeoutMs);
}

/** Writes `line` once `socket` is `ready`; the reply line, or undefined when refused, closed or silent. */
function lineRoundTrip(socket: Socket, ready: "connect" | "secureConnect", line: string, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    let reply = "";
    const done = (value: string | undefined) => {
      socket.destroy();
      resolve(value);
    };
    socket.setEncoding("utf8");
    socket.setTimeout(timeoutMs, () => done(undefined));
    socket.on(ready, () => socket.write(`${line}\n`));
    socket.on("data", (chunk) => {
      reply += chunk;
      if (reply.includes("\n")) done(reply.trim());
    });
    socket.on("error", () => done(undefined));
    socket.on("close", () => done(undefined));
  });
}

export interface OpensslRoundTrip {
  /** s_client said "Reused": the server resumed the session (no certificate exchanged). */
  reused: boolean;
  /** The reply line, if one came back. */
  reply?: string;
  output: string;
}

/**
 * One line over mTLS with `openssl s_client` (TLS 1.2, as Envoy's upstream side
 * speaks in a Consul mesh), saving the session to `sessionOut` or resuming the
 * one in `sessionIn`: what TLS session resumption lets through.
 */
export function opensslRoundTrip(
  port: number,
  files: { certificate: string; key: string; ca: string },
  line: string,
  session: { sessionOut?: string; sessionIn?: string },
  timeoutMs = 3000,
): Promise<OpensslRoundTrip> {
  const args = ["s_client", "-connect", `127.0.0.1:${port}`, "-tls1_2", "-cert", files.certificate, "-key", files.key, "-CAfile", files.ca];
  if (session.sessionOut) args.push("-sess_out", session.sessionOut);
  if (session.sessionIn) args.push("-sess_in", session.sessionIn);
  return new Promise((resolve) => {
    const child = spawn("openssl", args, { stdio: ["pipe", "pipe", "pipe"] });
    let output = "";
    const finish = () => {
      clearTimeout(timer);
      child.stdin.end();
    };
    const timer = setTimeout(finish, timeoutMs);
    const collect = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes(`answered: ${line}\n`)) finish();
    };
    child.stdout.on("data", collect);
    child.stderr.on("data", collect);
    child.stdin.on("error", () => undefined);
    child.stdin.write(`${line}\n`);
    child.on("close", () => {
      clearTimeout(timer);
      resolve({ reused: /^Reused, /m.test(output), reply: new RegExp(`^(.*answered: ${line})$`, "m").exec(output)?.[1], output });
    });
  });
}

/** Service registration with a sidecar, as operators write it (sidecarPort: required on loopback). */
export function serviceWithSidecar(options: {
  id: string;
  name: string;
  port: number;
  address?: string;
  sidecarPort?: number;
  upstreams?: { DestinationName: string; LocalBindPort: number; Config?: Record<string, unknown> }[];
  check?: boolean;
  /** The sidecar's Proxy.Config. */
  proxyConfig?: Record<string, unknown>;
}): Record<string, unknown> {
  // Consul hands out sidecar ports from 21000 per agent: two dev agents on one
  // host (vitest runs two files at once) give two sidecars the same port, and
  // one test's probe then reaches the other test's HAProxy.
  if (options.address === undefined && options.sidecarPort === undefined) {
    throw new Error(`serviceWithSidecar(${options.id}): a loopback sidecar needs a sidecarPort from freePorts()`);
  }
  return {
    ID: options.id,
    Name: options.name,
    Address: options.address ?? "127.0.0.1",
    Port: options.port,
    ...(options.check
      ? { Check: { Name: `${options.id} alive`, TCP: `127.0.0.1:${options.port}`, Interval: "1s", Timeout: "1s", DeregisterCriticalServiceAfter: "10m" } }
      : {}),
    Connect: {
      SidecarService: {
        ...(options.sidecarPort
          ? {
            Port: options.sidecarPort,
            // Consul's default sidecar checks (listening, alias of the service), but polled every
            // second rather than every 10 s: a sidecar that starts listening just after a check
            // would otherwise count as critical for up to 10 s more, which a test waits out.
            // The alias starts passing, as it ends for a service without a failing check: Consul
            // 1.22.3 now and then kept an alias registered critical (the default) critical in the
            // catalog for 30 s and more while the agent ran it as passing ("No checks found."),
            // and every sidecar then saw no healthy instance, Consul's built-in proxy too
            // (interop.test.ts, CI runs of 2026-11-27). A check of the service that fails still
            // turns it critical.
            Checks: [
              { Name: `${options.id} sidecar listening`, TCP: `${options.address ?? "127.0.0.1"}:${options.sidecarPort}`, Interval: "1s", Timeout: "1s" },
              { Name: `${options.id} sidecar's service`, AliasService: options.id, Status: "passing" },
            ],
          }
          : {}),
        Proxy: { Upstreams: options.upstreams ?? [], ...(options.proxyConfig ? { Config: options.proxyConfig } : {}) },
      },
    },
  };
}

/**
 * A sidecar registered as a service of its own (`Kind: connect-proxy`), with
 * no health check: its instance stays passing as long as its node is alive.
 * For tests of agent restarts: a restarted agent starts a sidecar's default
 * checks as critical until they run again, and the instance would flap for
 * reasons that are Consul's, not the sidecar's.
 */
export function uncheckedSidecarProxy(options: { serviceId: string; serviceName: string; servicePort: number; address: string; port: number }): Record<string, unknown> {
  return {
    Kind: "connect-proxy",
    ID: `${options.serviceId}-sidecar-proxy`,
    Name: `${options.serviceName}-sidecar-proxy`,
    Address: options.address,
    Port: options.port,
    Proxy: { DestinationServiceName: options.serviceName, DestinationServiceID: options.serviceId, LocalServiceAddress: "127.0.0.1", LocalServicePort: options.servicePort },
  };
}

/**
 * One TLS handshake to a sidecar's public listener as a mesh client would
 * (a leaf and the roots from the agent; the peer's SPIFFE ID is not checked):
 * the negotiated version, or the error that ended the handshake.
 */
export function meshTlsHandshake(
  port: number,
  client: { certPem: string; keyPem: string; rootsPem: string; minVersion?: SecureVersion; maxVersion?: SecureVersion; ciphers?: string },
  host = "127.0.0.1",
): Promise<{ version: string } | { error: string }> {
  return new Promise((resolve) => {
    const socket = tlsConnect({
      host,
      port,
      cert: client.certPem,
      key: client.keyPem,
      ca: client.rootsPem,
      minVersion: client.minVersion ?? "TLSv1.2",
      maxVersion: client.maxVersion ?? "TLSv1.3",
      ...(client.ciphers ? { ciphers: client.ciphers } : {}),
      // Service leaves carry only a URI SAN: the chain is verified, not a host name.
      checkServerIdentity: () => undefined,
    });
    const done = (result: { version: string } | { error: string }) => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(5000, () => done({ error: "timeout" }));
    socket.on("secureConnect", () => done({ version: socket.getProtocol() ?? "?" }));
    socket.on("error", (err) => done({ error: err.message }));
    socket.on("close", () => done({ error: "closed" }));
  });
}

export interface WebApiDbPorts {
  api: number;
  apiSidecar: number;
  db: number;
  dbSidecar: number;
  web: number;
  webSidecar: number;
  apiUpstream: number;
  dbUpstream: number;
}

/**
 * The three services of the L7 and access-log tests: api (HTTP echo app) and
 * db (line echo app) started and registered with their sidecars, and web with
 * upstreams to both. Returns the apps (the caller stops them).
 */
export async function registerWebApiDb(consul: Pick<ConsulAgent, "api">, ports: WebApiDbPorts): Promise<StartedProcess[]> {
  const apps = [startHttpEchoApp(ports.api, "api"), startDbApp(ports.db, "db")];
  await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "api", name: "api", port: ports.api, sidecarPort: ports.apiSidecar }));
  await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "db", name: "db", port: ports.db, sidecarPort: ports.dbSidecar }));
  const upstreams = [
    { DestinationName: "api", LocalBindPort: ports.apiUpstream },
    { DestinationName: "db", LocalBindPort: ports.dbUpstream },
  ];
  await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "web", name: "web", port: ports.web, sidecarPort: ports.webSidecar, upstreams }));
  return apps;
}
