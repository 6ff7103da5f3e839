// The soak (issue 15, item 3): four connect-haproxy sidecars (web, evil, api,
// db-1) and a fifth that comes and goes (db-2), on a real `consul agent -dev`
// and real HAProxy, under continuous short connections of four flows (web→db
// TCP, web→api HTTP allowed; evil→db TCP, evil→api HTTP denied), while a
// schedule flips evil→db's intention, adds and removes db-2, rotates the CA
// (which renews every leaf: Consul 1.22.3 refuses a LeafCertTTL under 1 h,
// in the CA configuration endpoint and at bootstrap alike, so leaves cannot
// renew on their own within a soak), and restarts two controllers. Every
// attempt is classified (soak-report.ts); processes are sampled every 5 s.
// Run by bench/soak.mjs (`npm run soak`, 10 minutes) and test/soak/soak.test.ts (2 minutes).
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, existsSync } from "node:fs";
import { request } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startConsulDev, type ConsulAgent } from "./consul.js";
import { haproxyBinary } from "./haproxy.js";
import { serviceWithSidecar, startConnectHaproxy, startDbApp, startHttpEchoApp, type SidecarProcess } from "./mesh.js";
import { freePorts } from "./ports.js";
import { commandName, descendantPids, rssKb } from "./process-stats.js";
import { runCommand, sleep, startProcess, waitFor, type StartedProcess } from "./processes.js";
import {
  defaultGraceMs,
  parseAppliedChange,
  parseHaproxyExit,
  soakSchedule,
  summarizeSoak,
  type AppliedChange,
  type Attempt,
  type EventRecord,
  type FailureWindow,
  type HaproxyExit,
  type ResourceSample,
  type SoakSummary,
  type VerdictChange,
} from "./soak-report.js";

export interface SoakOptions {
  durationMs: number;
  /** Pause between two attempts of one flow (ms; default 50: about 20 a second per flow). */
  intervalMs?: number;
  /** Where the controllers' logs go (default: a fresh temporary directory, kept for reading afterwards). */
  runDir?: string;
  log?: (message: string) => void;
}

const attemptTimeoutMs = 3000;

/** One TCP round trip through an upstream listener: answered when the db app's line comes back. */
function tcpAttempt(flow: string, port: number): Promise<Attempt> {
  return new Promise((resolve) => {
    const start = Date.now();
    const socket = connect(port, "127.0.0.1");
    let reply = "";
    let settled = false;
    const finish = (answered: boolean, detail: string) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      resolve({ flow, start, end: Date.now(), answered, detail });
    };
    socket.setEncoding("utf8");
    socket.setTimeout(attemptTimeoutMs, () => finish(false, "timeout"));
    socket.on("connect", () => socket.write("soak\n"));
    socket.on("data", (chunk) => {
      reply += chunk;
      if (!reply.includes("\n")) return;
      const who = /^(\S+) answered: soak$/.exec(reply.trim())?.[1];
      finish(who !== undefined, who ?? `unexpected reply ${JSON.stringify(reply.trim().slice(0, 80))}`);
    });
    socket.on("error", (err: NodeJS.ErrnoException) => finish(false, err.code ?? err.message));
    socket.on("close", () => finish(false, "closed"));
  });
}

/** One HTTP request on its own connection through an upstream listener: answered when the api app's 200 comes back. */
function httpAttempt(flow: string, port: number): Promise<Attempt> {
  return new Promise((resolve) => {
    const start = Date.now();
    let settled = false;
    const finish = (answered: boolean, detail: string) => {
      if (settled) return;
      settled = true;
      resolve({ flow, start, end: Date.now(), answered, detail });
    };
    const req = request({ host: "127.0.0.1", port, path: "/soak", agent: false, timeout: attemptTimeoutMs }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => {
        const answered = res.statusCode === 200 && body.startsWith("api GET /soak");
        finish(answered, answered ? "api" : `HTTP ${res.statusCode}`);
      });
      res.on("error", (err) => finish(false, err.message));
    });
    req.on("timeout", () => {
      req.destroy();
      finish(false, "timeout");
    });
    req.on("error", (err: NodeJS.ErrnoException) => finish(false, err.code ?? err.message));
    req.end();
  });
}

function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

/** The sidecar's processes now: its controller and every HAProxy under it. */
function sampleSidecar(sidecar: string, controllerPid: number): ResourceSample | undefined {
  const controllerRssKb = rssKb(controllerPid);
  if (controllerRssKb === undefined) return undefined;
  const haproxies = descendantPids(controllerPid).filter((pid) => commandName(pid) === "haproxy");
  return {
    at: Date.now(),
    sidecar,
    controllerRssKb,
    controllerFds: fdCount(controllerPid),
    haproxyRssKb: haproxies.reduce((sum, pid) => sum + (rssKb(pid) ?? 0), 0),
    haproxyFds: haproxies.reduce((sum, pid) => sum + fdCount(pid), 0),
    haproxyProcesses: haproxies.length,
  };
}

export async function runSoak(options: SoakOptions): Promise<SoakSummary> {
  const { durationMs, intervalMs = 50, log = () => undefined } = options;
  const runDir = options.runDir ?? mkdtempSync(join(tmpdir(), "ch-soak-"));
  mkdirSync(runDir, { recursive: true });
  const processes: StartedProcess[] = [];
  const sidecars = new Map<string, SidecarProcess>();
  const logFiles: { sidecar: string; file: string; cwd: string }[] = [];
  let consul: ConsulAgent | undefined;

  /** A controller with its log in a file (counting reloads needs every line); `generation` numbers its restarts. */
  const generations = new Map<string, number>();
  const startSidecar = (id: string, configDir?: string): SidecarProcess => {
    const generation = (generations.get(id) ?? 0) + 1;
    generations.set(id, generation);
    const file = join(runDir, `${id}.${generation}.log`);
    // Core dumps on, each controller generation in its own directory: a crashing HAProxy (its child) leaves
    // `core` there (kernel.core_pattern "core"), for gdb, instead of only a line saying it died.
    const cwd = join(runDir, `${id}.${generation}.cwd`);
    mkdirSync(cwd, { recursive: true });
    logFiles.push({ sidecar: id, file, cwd });
    const sidecar = startConnectHaproxy(id, consul!.httpAddr, {
      logLevel: "info",
      configDir,
      launch: (name, command, args) => startProcess(name, "sh", ["-c", 'ulimit -c unlimited 2>/dev/null; exec "$0" "$@"', command, ...args], { logFile: file, cwd }),
    });
    sidecars.set(id, sidecar);
    return sidecar;
  };

  try {
    consul = await startConsulDev({ nodeName: "soak", logFile: join(runDir, "consul.log") });
    const { api } = consul;
    const [apiApp, dbApp, db2App, webApp, evilApp, apiSidecar, dbSidecar, db2Sidecar, webSidecar, evilSidecar, webApi, webDb, evilApi, evilDb] = (await freePorts(14)) as number[] as [
      number, number, number, number, number, number, number, number, number, number, number, number, number, number,
    ];
    processes.push(startHttpEchoApp(apiApp!, "api"), startDbApp(dbApp!, "db"), startDbApp(db2App!, "db-2"));
    await api("PUT", "/v1/config", { Kind: "service-defaults", Name: "api", Protocol: "http" });

    // The expected verdicts: each flow's first entry is its state before traffic starts.
    const changes: VerdictChange[] = [];
    const writeIntention = async (source: string, destination: string, verdict: "allow" | "deny") => {
      changes.push({ flow: `${source}->${destination}`, at: Date.now(), verdict });
      await api("PUT", `/v1/connect/intentions/exact?source=${source}&destination=${destination}`, { Action: verdict });
    };
    await writeIntention("web", "db", "allow");
    await writeIntention("web", "api", "allow");
    await writeIntention("evil", "db", "deny");
    await writeIntention("evil", "api", "deny");

    const register = (registration: Record<string, unknown>) => api("PUT", "/v1/agent/service/register", registration);
    const upstreams = (apiPort: number, dbPort: number) => [
      { DestinationName: "api", LocalBindPort: apiPort },
      { DestinationName: "db", LocalBindPort: dbPort },
    ];
    await register(serviceWithSidecar({ id: "api", name: "api", port: apiApp!, sidecarPort: apiSidecar! }));
    await register(serviceWithSidecar({ id: "db-1", name: "db", port: dbApp!, sidecarPort: dbSidecar! }));
    await register(serviceWithSidecar({ id: "web", name: "web", port: webApp!, sidecarPort: webSidecar!, upstreams: upstreams(webApi!, webDb!) }));
    await register(serviceWithSidecar({ id: "evil", name: "evil", port: evilApp!, sidecarPort: evilSidecar!, upstreams: upstreams(evilApi!, evilDb!) }));
    for (const id of ["api", "db-1", "web", "evil"]) startSidecar(id);

    const flows: { flow: string; attempt: () => Promise<Attempt> }[] = [
      { flow: "web->db", attempt: () => tcpAttempt("web->db", webDb!) },
      { flow: "web->api", attempt: () => httpAttempt("web->api", webApi!) },
      { flow: "evil->db", attempt: () => tcpAttempt("evil->db", evilDb!) },
      { flow: "evil->api", attempt: () => httpAttempt("evil->api", evilApi!) },
    ];
    const everySidecar = () => [...sidecars.values()].map((s) => s.process);
    await waitFor("web->db and web->api answered, evil's refused", async () => {
      const [webDbAttempt, webApiAttempt, evilDbAttempt, evilApiAttempt] = await Promise.all(flows.map((f) => f.attempt()));
      return webDbAttempt!.answered && webApiAttempt!.answered && !evilDbAttempt!.answered && !evilApiAttempt!.answered && !evilApiAttempt!.detail.startsWith("ECONN") ? true : undefined;
    }, { timeoutMs: 60_000, intervalMs: 200, process: everySidecar() });
    log(`soak: mesh serving; traffic for ${durationMs / 1000} s (logs in ${runDir})`);

    const startedAt = Date.now();
    const endAt = startedAt + durationMs;
    const attempts: Attempt[] = [];
    const samples: ResourceSample[] = [];
    const events: EventRecord[] = [];
    const windows: FailureWindow[] = [];

    const trafficDone = Promise.all(
      flows.map(async ({ attempt }) => {
        while (Date.now() < endAt) {
          const result = await attempt();
          attempts.push(result);
          const wait = intervalMs - (result.end - result.start);
          if (wait > 0) await sleep(wait);
        }
      }),
    );
    const samplingDone = (async () => {
      while (Date.now() < endAt) {
        for (const [id, sidecar] of sidecars) {
          const sample = sidecar.process.exited() ? undefined : sampleSidecar(id, sidecar.process.pid);
          if (sample) samples.push(sample);
        }
        await sleep(Math.min(5000, Math.max(0, endAt - Date.now())));
      }
    })();

    const recentAnswersFrom = (who: string, since: number) => attempts.filter((a) => a.start >= since && a.detail === who).length;
    const probeWebApi = () => httpAttempt("probe", webApi!);
    let rotations = 0;

    const actions: Record<string, () => Promise<string | undefined>> = {
      "flip-allow": async () => (await writeIntention("evil", "db", "allow"), "intention evil -> db: allow"),
      "flip-deny": async () => (await writeIntention("evil", "db", "deny"), "intention evil -> db: deny"),
      "instance-join": async () => {
        const begun = Date.now();
        await register(serviceWithSidecar({ id: "db-2", name: "db", port: db2App!, sidecarPort: db2Sidecar! }));
        const sidecar = startSidecar("db-2");
        await waitFor("web's traffic to reach db-2", async () => (recentAnswersFrom("db-2", begun) > 0 ? true : undefined), { timeoutMs: 30_000, intervalMs: 100, process: sidecar.process });
        return `db-2 registered, its controller started; web's traffic reached it after ${((Date.now() - begun) / 1000).toFixed(1)} s`;
      },
      "instance-leave": async () => {
        const begun = Date.now();
        await api("PUT", "/v1/agent/service/deregister/db-2");
        // Once web's sidecar stops sending to db-2, its sidecar can go (as an orchestrator drains an instance).
        await waitFor(
          "web's traffic to leave db-2",
          async () => {
            const after = attempts.filter((a) => a.flow === "web->db" && a.start > Date.now() - 1000);
            return Date.now() - begun > 1000 && after.length > 5 && !after.some((a) => a.detail === "db-2") ? true : undefined;
          },
          { timeoutMs: 30_000, intervalMs: 100 },
        );
        const drainedMs = Date.now() - begun;
        await sidecars.get("db-2")!.stop();
        sidecars.delete("db-2");
        return `db-2 deregistered; web stopped sending to it within ${(drainedMs / 1000).toFixed(1)} s; its controller then stopped (SIGTERM)`;
      },
      "controller-takeover": async () => {
        // A crash: HAProxy keeps serving alone; the new controller takes its listeners over (-x).
        const old = sidecars.get("web")!;
        await old.process.stop("SIGKILL");
        const begun = Date.now();
        const fresh = startSidecar("web", old.configDir);
        await waitFor("web's new controller to take HAProxy over", async () => (fresh.process.output().includes("took over the listeners") ? true : undefined), { timeoutMs: 30_000, intervalMs: 50, process: fresh.process });
        return `web's controller killed (SIGKILL); the new one took the running HAProxy's listeners over after ${((Date.now() - begun) / 1000).toFixed(1)} s`;
      },
      "controller-restart": async () => {
        // A shutdown: SIGTERM stops HAProxy too (soft stop), so api is down until the new controller's
        // HAProxy serves and web's sidecar sees it passing again: a documented window for web->api.
        const from = Date.now();
        const old = sidecars.get("api")!;
        await old.process.stop("SIGTERM", 15_000);
        const fresh = startSidecar("api", old.configDir);
        await waitFor("api's new controller to start HAProxy", async () => (fresh.process.output().includes("HAProxy started") ? true : undefined), { timeoutMs: 30_000, intervalMs: 50, process: fresh.process });
        const startedMs = Date.now() - from;
        await waitFor("web->api answered again", async () => ((await probeWebApi()).answered ? true : undefined), { timeoutMs: 30_000, intervalMs: 50 });
        windows.push({ name: "api's controller restarted (SIGTERM, then started again): api unreachable until web's sidecar sees it again", flows: ["web->api"], from, to: Date.now() });
        return `api's controller stopped (SIGTERM: its HAProxy soft-stopped) and started again; HAProxy started after ${(startedMs / 1000).toFixed(1)} s, web->api answered again after ${((Date.now() - from) / 1000).toFixed(1)} s`;
      },
      "ca-rotation": async () => {
        // A new key size makes the built-in CA make a new root and re-issue every leaf (~20-30 s later).
        rotations += 1;
        const bits = rotations % 2 === 1 ? 384 : 256;
        await api("PUT", "/v1/connect/ca/configuration", { Provider: "consul", Config: { LeafCertTTL: "72h", PrivateKeyType: "ec", PrivateKeyBits: bits } });
        return `CA configuration: a new root (EC P-${bits}); every leaf is re-issued`;
      },
    };

    for (const event of soakSchedule(durationMs)) {
      const wait = startedAt + event.at - Date.now();
      if (wait > 0) await sleep(wait);
      if (Date.now() >= endAt) break;
      const from = Date.now();
      log(`soak: +${((from - startedAt) / 1000).toFixed(0)} s ${event.kind}`);
      const note = await actions[event.kind]!();
      events.push({ name: event.kind, from, to: Date.now(), ...(note ? { note } : {}) });
    }
    await trafficDone;
    await samplingDone;

    const applied: AppliedChange[] = [];
    const haproxyExits: HaproxyExit[] = [];
    for (const { sidecar, file, cwd } of logFiles) {
      if (!existsSync(file)) continue;
      const core = existsSync(join(cwd, "core")) ? join(cwd, "core") : undefined;
      for (const line of readFileSync(file, "utf8").split("\n")) {
        const change = parseAppliedChange(line, sidecar);
        if (change) applied.push(change);
        const exit = parseHaproxyExit(line, sidecar);
        if (exit) haproxyExits.push({ ...exit, ...(core ? { core } : {}) });
      }
    }
    const haproxyVersion = (await runCommand(haproxyBinary(), ["-v"])).stdout.split("\n")[0] ?? "?";
    return summarizeSoak({
      startedAt,
      durationMs,
      intervalMs,
      graceMs: defaultGraceMs,
      haproxyVersion,
      runDir,
      attempts,
      changes,
      windows,
      events,
      samples,
      applied,
      haproxyExits,
      steadySidecars: ["api", "db-1", "web", "evil"],
    });
  } finally {
    await Promise.all([...sidecars.values()].map((s) => s.stop().catch(() => undefined)));
    await Promise.all(processes.map((p) => p.stop().catch(() => undefined)));
    await consul?.stop();
  }
}
