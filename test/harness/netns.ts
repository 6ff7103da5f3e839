// Test hosts in network namespaces: a "switch" namespace holding a bridge, and
// one namespace per host joined to it by a veth pair. The hosts reach each other
// on 10.210.<net>.0/24 and nothing else: no namespace is linked to the machine's
// own network, so no packet leaves the test. Each host has its own loopback, so
// an application bound to 127.0.0.1 on one host is unreachable from the others.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { consulAgentConfig, waitForCaRoots } from "./consul.js";
import { startProcess, waitFor, type StartedProcess, type StartOptions } from "./processes.js";

const run = promisify(execFile);

export interface TestHost {
  readonly name: string;
  /** The namespace's name, for `ip netns exec`. */
  readonly namespace: string;
  /** The host's address on the test network. */
  readonly address: string;
  /** Starts a long-running process inside the host (stopped by pid like any harness process). */
  start(name: string, command: string, args: string[], options?: StartOptions): StartedProcess;
  /** Runs a command to completion inside the host; rejects on a non-zero exit. */
  exec(command: string, args: string[], options?: { timeoutMs?: number; input?: string }): Promise<{ stdout: string; stderr: string }>;
  /** An HTTP request made from inside the host (curl), e.g. to its Consul agent on 127.0.0.1:8500. */
  http(method: string, url: string, body?: unknown): Promise<{ status: number; body: string }>;
  /**
   * Cuts the host off the test network, as a pulled cable: its port on the
   * switch goes down, so packets to and from it are dropped (no reset, no
   * ICMP answer), and processes on both sides find out by their own timeouts.
   */
  partition(): Promise<void>;
  /**
   * Puts the host back on the switch, and resolves once a connection opened
   * from it can succeed. A plugged-back cable alone does not promise that: an
   * address resolution (ARP) begun during the cut keeps its schedule, its last
   * probe was sent while the port was down, and when it ends every packet
   * waiting on it, a connection opened just after the heal included, fails
   * with "no route to host" (here: connections opened 0.05 to 0.56 s after
   * the heal). So the heal waits for the host's link to be up and drops its
   * unresolved neighbour entries; the other hosts' entries for this one are
   * left as they are.
   */
  heal(): Promise<void>;
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
      const partition = () => ip("-n", switchNs, "link", "set", outside, "down");
      const heal = async () => {
        await ip("-n", switchNs, "link", "set", outside, "up");
        await waitFor(`${name}'s link to be up after the heal`, async () => {
          const { stdout } = await run("ip", ["-n", namespace, "-o", "link", "show", "eth0"]);
          return /\bstate UP\b/.test(stdout) ? true : undefined;
        }, { timeoutMs: 5000, intervalMs: 10 });
        await ip("-n", namespace, "neigh", "flush", "dev", "eth0");
      };
      hosts[name] = makeHost(name, namespace, address, partition, heal);
    }
  } catch (err) {
    await destroy();
    throw err;
  }
  return { hosts, destroy };
}

function makeHost(name: string, namespace: string, address: string, partition: () => Promise<void>, heal: () => Promise<void>): TestHost {
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
    partition,
    heal,
  };
}

export interface HostAgent {
  readonly host: TestHost;
  /** The running agent process (a new one after `restart` or `resume`). */
  readonly process: StartedProcess;
  /** Stops the agent as `systemctl restart` would (SIGTERM) and starts it again on the same data dir. */
  restart(): Promise<void>;
  /** Ends the agent, SIGKILL for a crash or SIGTERM for `systemctl stop`, keeping its data dir for `resume`. */
  halt(signal: "SIGKILL" | "SIGTERM"): Promise<void>;
  /** Starts the agent again on its data dir; resolves once it serves the CA roots (for a server: once its cluster has a leader). */
  resume(): Promise<void>;
  /** Calls this agent's HTTP API from inside its host; throws on a non-2xx status. */
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  stop(): Promise<void>;
}

export interface HostAgentOptions {
  /** Join these agents (addresses): a client agent, or with `bootstrapExpect` a server. */
  join?: string | string[];
  /** Run as one of this many servers (no dev mode: state on disk, kept across `restart`). */
  bootstrapExpect?: number;
  config?: Record<string, unknown>;
}

/**
 * A real Consul agent inside `host`: with neither `join` nor `bootstrapExpect`
 * a server in dev mode; with `join` a client; with `bootstrapExpect` one
 * server of a cluster (startConsulServers). Every agent serves its HTTP API on
 * the host's own 127.0.0.1:8500, as operators run them, and binds the cluster
 * ports on the host's test address. Resolves once the agent sees the CA roots.
 */
export async function startHostAgent(host: TestHost, consulBin: string, options: HostAgentOptions = {}): Promise<HostAgent> {
  const dataDir = (await host.exec("mktemp", ["-d", "/tmp/ch-agent-XXXXXX"])).stdout.trim();
  const join = options.join === undefined ? [] : [options.join].flat();
  const server = options.bootstrapExpect !== undefined;
  const config = {
    ...consulAgentConfig(host.name, host.address),
    data_dir: dataDir,
    connect: { enabled: true },
    ...(join.length ? { retry_join: join, retry_interval: "1s" } : {}),
    // Raft's timings as Consul recommends for production (the default, 5, is for small machines): elections in seconds.
    ...(server ? { server: true, bootstrap_expect: options.bootstrapExpect, performance: { raft_multiplier: 1 }, disable_update_check: true } : {}),
    ...options.config,
  };
  await host.exec("sh", ["-c", `cat > ${dataDir}/agent.json`], { input: JSON.stringify(config) });
  const args = join.length || server ? ["agent", "-config-file", `${dataDir}/agent.json`] : ["agent", "-dev", "-config-file", `${dataDir}/agent.json`];
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
    async halt(signal) {
      await proc.stop(signal);
    },
    async resume() {
      if (!proc.exited()) throw new Error(`[${host.name}] consul: resume() while the agent runs`);
      proc = host.start("consul", consulBin, args);
      await ready();
    },
    async restart() {
      await agent.halt("SIGTERM");
      await agent.resume();
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

/** Autopilot's view of one server (`/v1/operator/autopilot/health`). */
interface AutopilotServer {
  Name: string;
  Healthy: boolean;
  Voter: boolean;
  Leader: boolean;
}

export interface ConsulServers {
  readonly agents: readonly HostAgent[];
  /** The addresses client agents join. */
  readonly addresses: readonly string[];
  /**
   * Waits until every one of `among` (default: all) names the same leader, one
   * of `among`, and returns it: a partitioned or stopped server is left out.
   */
  waitForLeader(among?: readonly HostAgent[], timeoutMs?: number): Promise<HostAgent>;
  /** Waits until autopilot, asked through `via`, counts every server as a healthy voter (what an operator checks before restarting the next one). */
  waitHealthy(via?: HostAgent, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * One Consul server per host, started together with `bootstrap_expect` = the
 * number of hosts, each joining the others; resolves once they elected a
 * leader and serve the CA roots.
 */
export async function startConsulServers(hosts: readonly TestHost[], consulBin: string, options: { config?: Record<string, unknown> } = {}): Promise<ConsulServers> {
  const addresses = hosts.map((host) => host.address);
  const settled = await Promise.allSettled(
    hosts.map((host) => startHostAgent(host, consulBin, { bootstrapExpect: hosts.length, join: addresses.filter((a) => a !== host.address), config: options.config })),
  );
  const agents = settled.flatMap((result) => (result.status === "fulfilled" ? [result.value] : []));
  const failed = settled.find((result): result is PromiseRejectedResult => result.status === "rejected");
  if (failed) {
    await Promise.all(agents.map((agent) => agent.stop()));
    throw failed.reason;
  }
  const leaderAddress = async (agent: HostAgent) => (await agent.api<string>("GET", "/v1/status/leader")).replace(/:\d+$/, "");
  const servers: ConsulServers = {
    agents,
    addresses,
    async waitForLeader(among = agents, timeoutMs = 30_000) {
      return waitFor(
        `a Consul leader among ${among.map((agent) => agent.host.name).join(", ")}`,
        async () => {
          const seen = await Promise.all(among.map(leaderAddress));
          const leader = among.find((agent) => agent.host.address === seen[0]);
          return leader && seen.every((address) => address === seen[0]) ? leader : undefined;
        },
        { timeoutMs, intervalMs: 100, process: among.map((agent) => agent.process) },
      );
    },
    async waitHealthy(via = agents[0]!, timeoutMs = 60_000) {
      await waitFor(
        "every Consul server to be a healthy voter",
        async () => {
          const health = await via.api<{ Healthy: boolean; Servers: AutopilotServer[] }>("GET", "/v1/operator/autopilot/health");
          return health.Healthy && health.Servers.length === agents.length && health.Servers.every((s) => s.Healthy && s.Voter) ? true : undefined;
        },
        { timeoutMs, intervalMs: 250 },
      );
    },
    async stop() {
      await Promise.all(agents.map((agent) => agent.stop()));
    },
  };
  return servers;
}
