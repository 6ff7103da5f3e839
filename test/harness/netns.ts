// Test hosts in network namespaces: a "switch" namespace holding a bridge, and
// one namespace per host joined to it by a veth pair. The hosts reach each other
// on 10.210.<net>.0/24 and nothing else: no namespace is linked to the machine's
// own network, so no packet leaves the test. Each host has its own loopback, so
// an application bound to 127.0.0.1 on one host is unreachable from the others.
import { execFile, type SpawnOptions } from "node:child_process";
import { promisify } from "node:util";
import { consulAgentConfig, waitForCaRoots } from "./consul.js";
import { startProcess, type StartedProcess } from "./processes.js";

const run = promisify(execFile);

export interface TestHost {
  readonly name: string;
  /** The namespace's name, for `ip netns exec`. */
  readonly namespace: string;
  /** The host's address on the test network. */
  readonly address: string;
  /** Starts a long-running process inside the host (stopped by pid like any harness process). */
  start(name: string, command: string, args: string[], options?: SpawnOptions): StartedProcess;
  /** Runs a command to completion inside the host; rejects on a non-zero exit. */
  exec(command: string, args: string[], options?: { timeoutMs?: number; input?: string }): Promise<{ stdout: string; stderr: string }>;
  /** An HTTP request made from inside the host (curl), e.g. to its Consul agent on 127.0.0.1:8500. */
  http(method: string, url: string, body?: unknown): Promise<{ status: number; body: string }>;
}

export interface TestNetwork {
  readonly hosts: Record<string, TestHost>;
  destroy(): Promise<void>;
}

async function ip(...args: string[]): Promise<void> {
  try {
    await run("ip", args);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(" ")}: ${(e.stderr ?? e.message).trim()}`);
  }
}

/** True when this process may create network namespaces (root, with iproute2). */
export async function canCreateNamespaces(): Promise<{ ok: boolean; why?: string }> {
  const probe = `chprobe${process.pid}`;
  try {
    await ip("netns", "add", probe);
    await ip("netns", "del", probe);
    return { ok: true };
  } catch (err) {
    return { ok: false, why: (err as Error).message };
  }
}

let networksMade = 0;

/**
 * Creates the namespaces for `hostNames` (at most 250) on a fresh /24. Names
 * are unique per process and call so that parallel tests never collide.
 */
export async function createTestNetwork(hostNames: string[]): Promise<TestNetwork> {
  const id = `${process.pid % 100000}${String.fromCharCode(97 + (networksMade % 26))}`;
  const net = 10 + ((process.pid * 7 + networksMade++) % 240);
  const switchNs = `ch${id}-sw`;
  const created: string[] = [];
  const hosts: Record<string, TestHost> = {};

  const destroy = async () => {
    for (const ns of [...created].reverse()) {
      // Kill whatever still runs inside before the namespace goes.
      const { stdout } = await run("ip", ["netns", "pids", ns]).catch(() => ({ stdout: "" }));
      for (const pid of stdout.split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          // already gone
        }
      }
      await ip("netns", "del", ns).catch(() => undefined);
    }
  };

  try {
    await ip("netns", "add", switchNs);
    created.push(switchNs);
    await ip("-n", switchNs, "link", "add", "br0", "type", "bridge");
    await ip("-n", switchNs, "link", "set", "br0", "up");
    for (const [index, name] of hostNames.entries()) {
      const namespace = `ch${id}-${name}`.slice(0, 40);
      const address = `10.210.${net}.${index + 1}`;
      await ip("netns", "add", namespace);
      created.push(namespace);
      const outside = `v${id}${index}`.slice(0, 15);
      await ip("link", "add", outside, "netns", switchNs, "type", "veth", "peer", "name", "eth0", "netns", namespace);
      await ip("-n", switchNs, "link", "set", outside, "master", "br0");
      await ip("-n", switchNs, "link", "set", outside, "up");
      await ip("-n", namespace, "link", "set", "lo", "up");
      await ip("-n", namespace, "addr", "add", `${address}/24`, "dev", "eth0");
      await ip("-n", namespace, "link", "set", "eth0", "up");
      hosts[name] = makeHost(name, namespace, address);
    }
  } catch (err) {
    await destroy();
    throw err;
  }
  return { hosts, destroy };
}

function makeHost(name: string, namespace: string, address: string): TestHost {
  const exec: TestHost["exec"] = async (command, args, options = {}) => {
    const child = run("ip", ["netns", "exec", namespace, command, ...args], { timeout: options.timeoutMs ?? 30_000, maxBuffer: 16 << 20 });
    if (options.input !== undefined) child.child.stdin?.end(options.input);
    try {
      return await child;
    } catch (err) {
      const e = err as { stderr?: string; stdout?: string; message: string };
      throw new Error(`[${name}] ${command} ${args.join(" ")}: ${(e.stderr || e.stdout || e.message).trim()}`);
    }
  };
  return {
    name,
    namespace,
    address,
    start: (processName, command, args, options) => startProcess(`${name}/${processName}`, "ip", ["netns", "exec", namespace, command, ...args], options),
    exec,
    async http(method, url, body) {
      const args = ["-sS", "-m", "10", "-X", method, "-w", "\n%{http_code}", url];
      if (body !== undefined) args.push("--data-binary", "@-");
      const { stdout } = await exec("curl", args, { input: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body) });
      const cut = stdout.lastIndexOf("\n");
      return { status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) };
    },
  };
}

export interface HostAgent {
  readonly host: TestHost;
  /** The running agent process (a new one after `restart`). */
  readonly process: StartedProcess;
  /** Stops the agent as `systemctl restart` would (SIGTERM) and starts it again on the same data dir. */
  restart(): Promise<void>;
  /** Calls this agent's HTTP API from inside its host; throws on a non-2xx status. */
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  stop(): Promise<void>;
}

/**
 * A real Consul agent inside `host`: the server (`join` omitted) runs in dev
 * mode; clients join it. Every agent serves its HTTP API on the host's own
 * 127.0.0.1:8500, as operators run them, and binds the cluster ports on the
 * host's test address. Resolves once the agent sees the CA roots.
 */
export async function startHostAgent(host: TestHost, consulBin: string, options: { join?: string; config?: Record<string, unknown> } = {}): Promise<HostAgent> {
  const dataDir = (await host.exec("mktemp", ["-d", "/tmp/ch-agent-XXXXXX"])).stdout.trim();
  const config = {
    ...consulAgentConfig(host.name, host.address),
    data_dir: dataDir,
    connect: { enabled: true },
    ...(options.join ? { retry_join: [options.join], retry_interval: "1s" } : {}),
    ...options.config,
  };
  await host.exec("sh", ["-c", `cat > ${dataDir}/agent.json`], { input: JSON.stringify(config) });
  const args = options.join ? ["agent", "-config-file", `${dataDir}/agent.json`] : ["agent", "-dev", "-config-file", `${dataDir}/agent.json`];
  let proc = host.start("consul", consulBin, args);
  const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const res = await host.http(method, `http://127.0.0.1:8500${path}`, body);
    if (res.status < 200 || res.status > 299) throw new Error(`[${host.name}] consul ${method} ${path}: ${res.status} ${res.body.trim()}`);
    return (res.body ? JSON.parse(res.body) : undefined) as T;
  };
  const ready = () => waitForCaRoots(`${host.name} consul agent`, () => api("GET", "/v1/agent/connect/ca/roots"), proc, { timeoutMs: 60_000, intervalMs: 200 });
  const agent: HostAgent = {
    host,
    get process() {
      return proc;
    },
    api,
    async restart() {
      await proc.stop();
      proc = host.start("consul", consulBin, args);
      await ready();
    },
    async stop() {
      await proc.stop();
      await host.exec("rm", ["-rf", dataDir]).catch(() => undefined);
    },
  };
  try {
    await ready();
  } catch (err) {
    await agent.stop();
    throw err;
  }
  return agent;
}
