// Bad input from Consul: a fault-injecting proxy (test/harness/fault-proxy.ts)
// sits between a real dev agent and everything that asks it (the controller's
// --http-addr, and so HAProxy's authorizer). Each fault in turn answers the
// endpoints the controller watches; through each one the sidecar must keep
// its last good configuration (same HAProxy processes, same files, allowed
// traffic served, denied refused), each watch must say what was wrong in one
// line, and retries must back off instead of looping.
//
//   web / evil (mTLS clients with Consul leaves) ──► db-1's sidecar ──► db app
//                                 controller, HAProxy ──► fault proxy ──► Consul
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { startFaultProxy, type Fault, type FaultProxy } from "../harness/fault-proxy.js";
import { sendRuntimeCommand } from "../harness/haproxy.js";
import { mtlsRoundTrip, opensslRoundTrip, serviceWithSidecar, startConnectHaproxy, startDbApp, type SidecarProcess } from "../harness/mesh.js";
import { freePorts } from "../harness/ports.js";
import { runCommand, sleep, waitFor, type StartedProcess } from "../harness/processes.js";
import { parseShowProc } from "../../controller/runtime-api.js";

interface Leaf {
  CertPEM: string;
  PrivateKeyPEM: string;
}

/** Every endpoint the controller watches for db-1's sidecar with one upstream (cache), and the watch that logs it. */
const watchedEndpoints = /^\/v1\/(agent\/service\/|agent\/connect\/ca\/|connect\/intentions\/match|discovery-chain\/|health\/connect\/|config\/(proxy-defaults|mesh)$)/;
const watches = [
  "registration of db-1-sidecar-proxy", "CA roots", "leaf certificate of db", "intentions for db", "discovery chain of cache", "instances of cache in dc1",
  "proxy-defaults config entry", "mesh config entry",
];

describe("the sidecar under bad input from Consul", () => {
  let consul: ConsulAgent;
  let proxy: FaultProxy;
  let sidecar: SidecarProcess;
  let app: StartedProcess;
  let publicPort: number;
  let roots: string[];
  const identities: Record<string, Leaf> = {};
  let baseline: { files: string[]; processes: string };

  const files = () => ["haproxy.cfg", "certs/leaf.pem", "certs/roots.pem"].map((file) => readFileSync(join(sidecar.configDir, file), "utf8"));
  const processes = async () => {
    const proc = parseShowProc(await sendRuntimeCommand(join(sidecar.configDir, "master.sock"), "show proc"));
    return JSON.stringify({ master: proc.masterPid, workers: proc.workers, reloads: proc.reloads });
  };
  const ask = (source: string) => mtlsRoundTrip(publicPort, identities[source]!, roots, `from ${source}`);

  /** The last good configuration still runs: same processes and files, web served, evil refused. */
  async function expectLastGoodConfiguration() {
    expect(await ask("web")).toBe("db-1 answered: from web");
    expect(await ask("evil")).toBeUndefined();
    expect(await processes()).toBe(baseline.processes);
    expect(files()).toEqual(baseline.files);
  }

  const outputSince = (offset: number) => sidecar.process.output().slice(offset);

  beforeAll(async () => {
    consul = await startConsulDev();
    proxy = await startFaultProxy(consul.httpAddr);
    const [appPort, sidecarPort, cachePort] = (await freePorts(3)) as [number, number, number];
    publicPort = sidecarPort;
    app = startDbApp(appPort, "db-1");
    await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "db-1", name: "db", port: appPort, sidecarPort, upstreams: [{ DestinationName: "cache", LocalBindPort: cachePort }] }));
    for (const [source, action] of [["web", "allow"], ["evil", "deny"], ["api", "allow"]]) {
      await consul.api("PUT", `/v1/connect/intentions/exact?source=${source}&destination=db`, { Action: action });
    }
    for (const source of ["web", "evil", "api"]) identities[source] = await consul.api<Leaf>("GET", `/v1/agent/connect/ca/leaf/${source}`);
    roots = (await consul.api<{ Roots: { RootCert: string }[] }>("GET", "/v1/agent/connect/ca/roots")).Roots.map((root) => root.RootCert);
    sidecar = startConnectHaproxy("db-1", proxy.httpAddr);
    await waitFor("web served through db-1's sidecar", async () => (await ask("web")) ?? undefined, { timeoutMs: 30_000, process: sidecar.process });
    expect(await ask("evil")).toBeUndefined();
    baseline = { files: files(), processes: await processes() };
  }, 60_000);

  afterAll(async () => {
    await sidecar?.stop();
    await app?.stop();
    await proxy?.close();
    await consul?.stop();
    if (sidecar) rmSync(sidecar.configDir, { recursive: true, force: true });
  });

  /**
   * Injects `fault` on `endpoints`, waits until each of `failing` watches said so, holds it
   * for `holdMs`, checks the last good configuration and the retry rate, then clears it and
   * waits for every watch to recover. Returns each watch's one error line.
   */
  async function throughFault(fault: Fault, endpoints: RegExp, failing: string[], holdMs = 2500): Promise<Record<string, string>> {
    const offset = sidecar.process.output().length;
    const requestsBefore = proxy.requests().length;
    const injectedAt = Date.now();
    const lineOf = (watch: string) => outputSince(offset).split("\n").filter((line) => line.includes(`watch of ${watch} failed: `));
    let heldMs: number;
    proxy.inject(endpoints, fault);
    try {
      await waitFor(`every watch reporting ${fault.kind}`, async () => (failing.every((watch) => lineOf(watch).length > 0) ? true : undefined), { timeoutMs: 15_000, process: sidecar.process });
      await sleep(holdMs);
      await expectLastGoodConfiguration();
    } finally {
      heldMs = Date.now() - injectedAt;
      proxy.clear();
    }
    const lines: Record<string, string> = {};
    for (const watch of failing) {
      expect(lineOf(watch), `${watch}: one line per fault`).toHaveLength(1);
      lines[watch] = lineOf(watch)[0]!.replace(/^\S+ ERROR /, "");
    }
    // Backoff from 250 ms doubling: a handful of requests per watch while the fault lasts, not one per 50 ms.
    const faulted = proxy.requests().slice(requestsBefore).filter((request) => request.fault);
    const perPath = new Map<string, number>();
    for (const request of faulted) perPath.set(`${request.userAgent} ${request.path}`, (perPath.get(`${request.userAgent} ${request.path}`) ?? 0) + 1);
    for (const [path, count] of perPath) expect(count, `${path} asked ${count} times in ${heldMs} ms`).toBeLessThanOrEqual(Math.ceil(heldMs / 400) + 2);
    await waitFor(`every watch recovered from ${fault.kind}`, async () => (failing.every((watch) => outputSince(offset).includes(`watch of ${watch} recovered`)) ? true : undefined), {
      timeoutMs: 15_000,
    });
    await expectLastGoodConfiguration();
    return lines;
  }

  const everyFault: [Fault, RegExp][] = [
    [{ kind: "garbage-json" }, /is not JSON: "\{\\"Roots\\":\[\{\\"ID/],
    [{ kind: "wrong-shape" }, /Consul's reply is unusable: /],
    [{ kind: "truncated" }, /broke off after \d+ bytes of its body/],
    [{ kind: "html-error" }, /Consul answered 502 to \/v1\/\S+: <!DOCTYPE html>/],
    [{ kind: "status-storm" }, /Consul answered 500 to \/v1\/\S+: rpc error making call: No cluster leader/],
    [{ kind: "huge" }, /is larger than 16777216 bytes/],
  ];
  for (const [fault, message] of everyFault) {
    it(`keeps the last good configuration through ${fault.kind} on every watched endpoint, one line per watch`, async () => {
      const lines = await throughFault(fault, watchedEndpoints, watches);
      for (const watch of watches) {
        expect(lines[watch]).toMatch(message);
        expect(lines[watch]).toMatch(/; retrying with backoff, HAProxy keeps its current configuration$/);
      }
      console.log(`${fault.kind}:\n  ${Object.values(lines).join("\n  ")}`);
    }, 60_000);
  }

  it("refuses a leaf whose private key does not match its certificate, keeping the running one", async () => {
    const lines = await throughFault({ kind: "leaf-key-mismatch" }, /^\/v1\/agent\/connect\/ca\/leaf\//, ["leaf certificate of db"]);
    expect(lines["leaf certificate of db"]).toMatch(/^watch of leaf certificate of db failed: Consul's reply is unusable: leaf [0-9a-f:]+: the private key does not match the certificate; retrying/);
    console.log(`leaf-key-mismatch:\n  ${lines["leaf certificate of db"]}`);
  }, 60_000);

  it("refuses roots that do not parse, keeping the running ones", async () => {
    const lines = await throughFault({ kind: "unparsable-roots" }, /^\/v1\/agent\/connect\/ca\/roots$/, ["CA roots"]);
    expect(lines["CA roots"]).toMatch(/^watch of CA roots failed: Consul's reply is unusable: root [0-9a-f:]+: RootCert does not parse as a certificate/);
    console.log(`unparsable-roots:\n  ${lines["CA roots"]}`);
  }, 60_000);

  it("restarts from index 0 when the index goes backwards, then blocks again and still sees changes", async () => {
    const offset = sidecar.process.output().length;
    const requestsBefore = proxy.requests().length;
    proxy.inject(watchedEndpoints, { kind: "index-backwards", by: 5 });
    try {
      await indexWentBackwards(offset, requestsBefore);
    } finally {
      proxy.clear();
    }
    expect(outputSince(offset)).not.toMatch(/ ERROR /);
    await expectLastGoodConfiguration();
  }, 60_000);

  async function indexWentBackwards(offset: number, requestsBefore: number) {
    await sleep(2000);
    const controllerRequests = () => proxy.requests().slice(requestsBefore).filter((request) => request.userAgent === "" && request.path === "/v1/connect/intentions/match");
    // Each index watch: one non-blocking read after the backwards index (Consul's rule), then blocking reads.
    const queries = controllerRequests().map((request) => new URLSearchParams(request.query).get("index"));
    expect(queries.slice(0, 2)).toEqual([expect.stringMatching(/^\d+$/), null]);
    expect(queries.length).toBeLessThanOrEqual(4);
    for (const path of ["/v1/agent/connect/ca/roots", "/v1/agent/connect/ca/leaf/db", "/v1/health/connect/cache"]) {
      const count = proxy.requests().slice(requestsBefore).filter((request) => request.userAgent === "" && request.path === path).length;
      expect(count, path).toBeLessThanOrEqual(4);
    }
    // A change made while the index is seen lower still arrives.
    await consul.api("PUT", "/v1/connect/intentions/exact?source=api&destination=db", { Action: "deny" });
    await waitFor("the intention change applied", async () => (outputSince(offset).includes("connect cache flush") ? true : undefined), { timeoutMs: 10_000 });
    await consul.api("PUT", "/v1/connect/intentions/exact?source=api&destination=db", { Action: "allow" });
  }

  it("the authorizer fails closed on garbage from the agent's authorize endpoint, and allows again after", async () => {
    const offset = sidecar.process.output().length;
    proxy.inject(/^\/v1\/agent\/connect\/authorize$/, { kind: "garbage-json" });
    try {
      // api has never connected: no cached verdict, so the agent's garbage is all there is.
      expect(await ask("api")).toBeUndefined();
      await waitFor("the deny logged", async () => (/authorize reply: /.test(outputSince(offset)) ? true : undefined), { timeoutMs: 5_000 });
    } finally {
      proxy.clear();
    }
    expect(await waitFor("api allowed once the agent answers", async () => (await ask("api")) ?? undefined, { timeoutMs: 10_000 })).toBe("db-1 answered: from api");
    console.log(`authorize garbage:\n  ${outputSince(offset).split("\n").find((line) => line.includes("authorize reply: "))}`);
  }, 30_000);

  // Last: it leaves other roots in place until SIGHUP brings Consul's back.
  it("refuses to resume a TLS session established under a root that has left Consul's roots; SIGHUP re-reads the real ones", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ch-resume-"));
    try {
      const files = { certificate: join(dir, "web.pem"), key: join(dir, "web.key"), ca: join(dir, "roots.pem") };
      writeFileSync(files.certificate, identities.web!.CertPEM);
      writeFileSync(files.key, identities.web!.PrivateKeyPEM, { mode: 0o600 });
      writeFileSync(files.ca, roots.join("\n"));
      const otherRoot = join(dir, "other-root.pem");
      const made = await runCommand("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, "other-root.key"), "-out", otherRoot, "-subj", "/CN=another root", "-days", "1"]);
      expect(made.code, made.stderr).toBe(0);
      const session = join(dir, "session.pem");
      const first = await opensslRoundTrip(publicPort, files, "first", { sessionOut: session });
      expect(first.reply, first.output).toBe("db-1 answered: first");
      expect(first.reused).toBe(false);
      // While the root that verified it is trusted, the session resumes (so the refusal below is about trust).
      const resumed = await opensslRoundTrip(publicPort, files, "resumed", { sessionIn: session });
      expect(resumed.reply, resumed.output).toBe("db-1 answered: resumed");
      expect(resumed.reused).toBe(true);

      const offset = sidecar.process.output().length;
      proxy.inject(/^\/v1\/agent\/connect\/ca\/roots$/, { kind: "replace-roots", pem: readFileSync(otherRoot, "utf8") });
      try {
        await waitFor("the new roots applied", async () => (/applied change change="CA root/.test(outputSince(offset)) ? true : undefined), { timeoutMs: 10_000, process: sidecar.process });
        console.log(`roots replaced:\n  ${outputSince(offset).split("\n").filter((line) => line.includes("applied change")).join("\n  ")}`);
        const after = await opensslRoundTrip(publicPort, files, "after", { sessionIn: session });
        expect(after.reused, after.output).toBe(false);
        expect(after.reply).toBeUndefined();
        expect((await opensslRoundTrip(publicPort, files, "fresh", {})).reply).toBeUndefined();
      } finally {
        proxy.clear();
      }
      // The watch blocks on Consul's index, which did not move: only a fresh read brings the real roots back.
      sidecar.process.child.kill("SIGHUP");
      expect(await waitFor("web served again", async () => (await ask("web")) ?? undefined, { timeoutMs: 15_000 })).toBe("db-1 answered: from web");
      expect(outputSince(offset)).toContain("SIGHUP: re-reading everything from Consul");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
