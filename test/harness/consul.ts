// A real `consul agent -dev` on free loopback ports, for integration tests.
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePorts } from "./ports.js";
import { startProcess, waitFor, type StartedProcess } from "./processes.js";

export function consulBinary(): string {
  const bin = process.env.CONSUL_BIN;
  if (!bin) {
    throw new Error("CONSUL_BIN is not set: run the tests with `npm test` (it builds or finds Consul), or set CONSUL_BIN to a consul binary");
  }
  return bin;
}

export interface ConsulAgentOptions {
  /** Extra agent configuration, merged over the defaults (e.g. `{ acl: {...} }`). */
  config?: Record<string, unknown>;
  nodeName?: string;
}

export interface ConsulAgent {
  readonly httpPort: number;
  /** `127.0.0.1:<port>`, as CONSUL_HTTP_ADDR takes it. */
  readonly httpAddr: string;
  readonly process: StartedProcess;
  readonly dataDir: string;
  /** Calls the HTTP API; throws on a non-2xx status with the body in the message. */
  api<T = unknown>(method: string, path: string, body?: unknown, token?: string): Promise<T>;
  /** Raw response, for tests of status codes and headers. */
  fetch(method: string, path: string, body?: unknown, token?: string): Promise<Response>;
  stop(): Promise<void>;
}

export async function startConsulDev(options: ConsulAgentOptions = {}): Promise<ConsulAgent> {
  const [http, serfLan, serfWan, server] = await freePorts(4);
  const dataDir = mkdtempSync(join(tmpdir(), "ch-consul-"));
  const config = {
    node_name: options.nodeName ?? `test-${http}`,
    bind_addr: "127.0.0.1",
    client_addr: "127.0.0.1",
    advertise_addr: "127.0.0.1",
    log_level: "warn",
    ports: { http, dns: -1, serf_lan: serfLan, serf_wan: serfWan, server, grpc: -1, grpc_tls: -1 },
    ...options.config,
  };
  const configFile = join(dataDir, "agent.json");
  writeFileSync(configFile, JSON.stringify(config));
  const proc = startProcess("consul", consulBinary(), ["agent", "-dev", "-config-file", configFile]);
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
    await waitFor(
      "consul CA roots",
      async () => ((await api<{ Roots: unknown[] | null }>("GET", "/v1/agent/connect/ca/roots", undefined, token)).Roots?.length ? true : undefined),
      { process: proc },
    );
  } catch (err) {
    await agent.stop();
    throw err;
  }
  return agent;
}
