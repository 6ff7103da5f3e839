// Real Consul agents: `consul agent -dev` on free loopback ports (tests,
// benchmarks, the demo, fixture recording), and what every agent the harness
// starts shares with the ones inside test hosts (netns.ts).
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePorts } from "./ports.js";
import { startProcess, waitFor, type StartedProcess } from "./processes.js";

export function consulBinary(): string {
  const bin = process.env.CONSUL_BIN;
  if (!bin) {
    throw new Error("CONSUL_BIN is not set: run with `npm test` (or `npm run demo`, `npm run bench`: they build or find Consul), or set CONSUL_BIN to a consul binary");
  }
  return bin;
}

/**
 * An agent's configuration as the harness runs every agent: quiet, no DNS and
 * no gRPC, cluster ports on `address`, the HTTP API on 127.0.0.1.
 */
export function consulAgentConfig(nodeName: string, address: string, ports: Record<string, number> = {}): Record<string, unknown> {
  return {
    node_name: nodeName,
    bind_addr: address,
    advertise_addr: address,
    client_addr: "127.0.0.1",
    log_level: "warn",
    ports: { dns: -1, grpc: -1, grpc_tls: -1, ...ports },
  };
}

/** Waits until the agent serves Connect's CA roots: the last thing a dev agent does before sidecars can work. */
export async function waitForCaRoots(
  what: string,
  roots: () => Promise<{ Roots: unknown[] | null }>,
  agent: StartedProcess,
  { timeoutMs = 30_000, intervalMs = 50 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<void> {
  await waitFor(what, async () => ((await roots()).Roots?.length ? true : undefined), { process: agent, timeoutMs, intervalMs });
}

export interface ConsulAgentOptions {
  /** Extra agent configuration, merged over the defaults (e.g. `{ acl: {...} }`). */
  config?: Record<string, unknown>;
  nodeName?: string;
  /** A taskset CPU list to pin the agent to (benchmarks). */
  cpu?: string;
  /** The agent's output goes to this file instead of memory. */
  logFile?: string;
}

export interface ConsulAgent {
  readonly httpPort: number;
  /** `127.0.0.1:<port>`, as CONSUL_HTTP_ADDR takes it. */
  readonly httpAddr: string;
  readonly process: StartedProcess;
  readonly dataDir: string;
  /** Calls the HTTP API; throws on a non-2xx status with the body in the message. */
  api<T = unknown>(method: string, path: string, body?: unknown, token?: string): Promise<T>;
  /** Raw response, for status codes and headers. */
  fetch(method: string, path: string, body?: unknown, token?: string): Promise<Response>;
  stop(): Promise<void>;
}

export async function startConsulDev(options: ConsulAgentOptions = {}): Promise<ConsulAgent> {
  const [http, serfLan, serfWan, server] = (await freePorts(4)) as [number, number, number, number];
  const dataDir = mkdtempSync(join(tmpdir(), "ch-consul-"));
  const config = {
    ...consulAgentConfig(options.nodeName ?? `test-${http}`, "127.0.0.1", { http, serf_lan: serfLan, serf_wan: serfWan, server }),
    ...options.config,
  };
  const configFile = join(dataDir, "agent.json");
  writeFileSync(configFile, JSON.stringify(config));
  const proc = startProcess("consul", consulBinary(), ["agent", "-dev", "-config-file", configFile], { cpu: options.cpu, logFile: options.logFile });
  const httpAddr = `127.0.0.1:${http}`;

  const rawFetch = (method: string, path: string, body?: unknown, token?: string) =>
    fetch(`http://${httpAddr}${path}`, {
      method,
      headers: token ? { "X-Consul-Token": token } : {},
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
  const api = async <T>(method: string, path: string, body?: unknown, token?: string): Promise<T> => {
    const res = await rawFetch(method, path, body, token);
    const text = await res.text();
    if (!res.ok) throw new Error(`consul ${method} ${path}: ${res.status} ${text.trim()}`);
    return (text ? JSON.parse(text) : undefined) as T;
  };

  const agent: ConsulAgent = {
    httpPort: http,
    httpAddr,
    process: proc,
    dataDir,
    api,
    fetch: rawFetch,
    async stop() {
      await proc.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  try {
    await waitFor("consul leader", async () => ((await api<string>("GET", "/v1/status/leader")) ? true : undefined), { process: proc });
    const token = (options.config as { acl?: { tokens?: { initial_management?: string } } } | undefined)?.acl?.tokens?.initial_management;
    await waitForCaRoots("consul CA roots", () => api("GET", "/v1/agent/connect/ca/roots", undefined, token), proc);
  } catch (err) {
    await agent.stop();
    throw err;
  }
  return agent;
}

/**
 * For a failure message: each check of `serviceIds` (and their sidecars) as
 * the agent runs it and as the catalog holds it, then the agent's own log
 * lines that name them or report a failed sync. A mesh path that never becomes healthy is usually
 * explained here, not in the sidecars' logs.
 */
export async function describeChecks(consul: ConsulAgent, serviceIds: string[]): Promise<string> {
  const names = serviceIds.flatMap((id) => [id, `${id}-sidecar-proxy`]);
  const lines: string[] = [];
  try {
    const local = await consul.api<Record<string, { ServiceID: string; Name: string; Status: string; Output: string }>>("GET", "/v1/agent/checks");
    for (const check of Object.values(local)) {
      if (names.includes(check.ServiceID)) lines.push(`agent   ${check.ServiceID} "${check.Name}": ${check.Status}: ${check.Output.trim().slice(0, 200)}`);
    }
    for (const name of names) {
      const catalog = await consul.api<{ ServiceID: string; Name: string; Status: string; ModifyIndex: number }[]>("GET", `/v1/health/checks/${name}`);
      for (const check of catalog) lines.push(`catalog ${check.ServiceID} "${check.Name}": ${check.Status} (modify index ${check.ModifyIndex})`);
    }
  } catch (err) {
    lines.push(`(the agent did not answer: ${err instanceof Error ? err.message : String(err)})`);
  }
  // Anti-entropy's failures name no service, yet stop every later check from reaching the catalog.
  const log = consul.process.output().split("\n").filter((line) => /failed to sync/.test(line) || names.some((name) => line.includes(name)));
  return `--- consul's checks of ${serviceIds.join(", ")}:\n${lines.join("\n")}\n--- consul's log lines naming them (last 40):\n${log.slice(-40).join("\n")}`;
}
