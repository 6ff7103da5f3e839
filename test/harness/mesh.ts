// Pieces of a mesh for end-to-end tests: the demo's apps, a connect-haproxy
// sidecar (the built controller CLI) and Consul's own built-in proxy, all real
// processes; and a TCP client that says whether a round trip got through.
import { mkdtempSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot } from "./haproxy.js";
import { consulBinary } from "./consul.js";
import { startProcess, type StartedProcess } from "./processes.js";

export const controllerCli = join(repoRoot, "dist", "controller", "cli.js");
export const dbApp = join(repoRoot, "scripts", "demo", "db-app.mjs");
export const webApp = join(repoRoot, "scripts", "demo", "web-app.mjs");

/** How to start a process: on this host, or inside a test host's namespace. */
export type Launcher = (name: string, command: string, args: string[]) => StartedProcess;
export const onThisHost: Launcher = (name, command, args) => startProcess(name, command, args);

/** The demo's db: answers every line with `<name> answered: <line>`. */
export function startDbApp(port: number, name: string, launch: Launcher = onThisHost): StartedProcess {
  return launch(`db app ${name}`, process.execPath, [dbApp, "--port", String(port), "--name", name]);
}

export interface SidecarProcess {
  readonly process: StartedProcess;
  readonly configDir: string;
  stop(): Promise<void>;
}

/** `connect-haproxy --sidecar-for <id>` against the agent at `httpAddr`. */
export function startConnectHaproxy(
  serviceId: string,
  httpAddr: string,
  launch: Launcher = onThisHost,
  extraArgs: string[] = [],
  configDir = mkdtempSync(join(tmpdir(), `ch-sidecar-${serviceId}-`)),
): SidecarProcess {
  const proc = launch(`connect-haproxy ${serviceId}`, process.execPath, [
    controllerCli,
    "--sidecar-for",
    serviceId,
    "--http-addr",
    httpAddr,
    "--config-dir",
    configDir,
    "--log-level",
    "debug",
    ...extraArgs,
  ]);
  return { process: proc, configDir, stop: () => proc.stop("SIGTERM", 15_000) };
}

/** Consul's own sidecar: `consul connect proxy -sidecar-for <id>`. */
export function startConsulProxy(serviceId: string, httpAddr: string, launch: Launcher = onThisHost): SidecarProcess {
  const proc = launch(`consul connect proxy ${serviceId}`, consulBinary(), ["connect", "proxy", "-sidecar-for", serviceId, "-http-addr", httpAddr, "-log-level", "debug"]);
  return { process: proc, configDir: "", stop: () => proc.stop() };
}

/**
 * Connects, sends one line, and resolves with the reply line, or with
 * `undefined` when the connection was refused, closed or silent: what a mesh
 * that denies a connection looks like to the client.
 */
export function tcpRoundTrip(port: number, line: string, host = "127.0.0.1", timeoutMs = 5000): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = connect(port, host);
    let reply = "";
    const done = (value: string | undefined) => {
      socket.destroy();
      resolve(value);
    };
    socket.setEncoding("utf8");
    socket.setTimeout(timeoutMs, () => done(undefined));
    socket.on("connect", () => socket.write(`${line}\n`));
    socket.on("data", (chunk) => {
      reply += chunk;
      if (reply.includes("\n")) done(reply.trim());
    });
    socket.on("error", () => done(undefined));
    socket.on("close", () => done(undefined));
  });
}

/** Service registration with a sidecar, as operators write it. */
export function serviceWithSidecar(options: {
  id: string;
  name: string;
  port: number;
  address?: string;
  sidecarPort?: number;
  upstreams?: { DestinationName: string; LocalBindPort: number; Config?: Record<string, unknown> }[];
  check?: boolean;
}): Record<string, unknown> {
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
        ...(options.sidecarPort ? { Port: options.sidecarPort } : {}),
        Proxy: { Upstreams: options.upstreams ?? [] },
      },
    },
  };
}
