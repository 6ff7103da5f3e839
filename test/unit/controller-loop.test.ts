// The lifecycle loop, driven without processes: a static snapshot source, a
// recording HAProxy driver, a fake identity probe and a clock the test moves.
import { beforeEach, describe, expect, it } from "vitest";
import type { Clock } from "../../controller/clock.js";
import type { AgentServiceRegistration, CaRoots, CompiledDiscoveryChain, DiscoveryChainReply, Intention, LeafCertificate, MeshEntry, ProxyDefaultsEntry, ServiceInstanceEntry } from "../../controller/consul-replies.js";
import { targetQuery } from "../../controller/discovery-chain.js";
import { watchKey, type SnapshotPart, type SnapshotSource, type WatchId } from "../../controller/consul-watches.js";
import type { DesiredState } from "../../controller/desired-state.js";
import type { HaproxyDriver, ReloadTimings } from "../../controller/haproxy-driver.js";
import type { LiveServer } from "../../controller/runtime-api.js";
import { renderHaproxyConfig } from "../../controller/haproxy-config.js";
import { silentLogger } from "../../controller/logger.js";
import { capabilitiesOf, parseHaproxyVersion, type RuntimeCapabilities } from "../../controller/haproxy-version.js";
import type { ReloadValidation, RuntimeOperation } from "../../controller/plan-changes.js";
import { SidecarController } from "../../controller/sidecar-controller.js";
import type { ExpectedIdentity, IdentityCheckMaterial, IdentityVerdict } from "../../controller/upstream-identity.js";
import { dbInstances, fixture, paths } from "./controller-fixtures.js";

/** Time moves only when the test says; timers fire in order, each followed by the promises it started. */
class ManualClock implements Clock {
  private current = 1_000_000;
  private timers: { due: number; callback: () => void }[] = [];
  now = () => this.current;
  random = () => 0.5;
  setTimer(ms: number, callback: () => void): () => void {
    const timer = { due: this.current + ms, callback };
    this.timers.push(timer);
    return () => (this.timers = this.timers.filter((t) => t !== timer));
  }
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimer(ms, resolve));
  }
  async advance(ms: number): Promise<void> {
    const target = this.current + ms;
    await settle();
    for (;;) {
      const next = this.timers.filter((t) => t.due <= target).sort((a, b) => a.due - b.due)[0];
      if (!next) break;
      this.timers = this.timers.filter((t) => t !== next);
      this.current = next.due;
      next.callback();
      await settle();
    }
    this.current = target;
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

class StaticSource implements SnapshotSource {
  watches: string[] = [];
  private deliver?: (part: SnapshotPart) => void;
  setWatches(wanted: WatchId[], deliver: (part: SnapshotPart) => void): void {
    this.watches = wanted.map(watchKey);
    this.deliver = deliver;
  }
  stop(): void {
    this.deliver = undefined;
  }
  send(part: SnapshotPart): void {
    this.deliver!(part);
  }
}

type DriverCall =
  | { call: "writeFiles"; state: DesiredState }
  | { call: "start" }
  | { call: "runtime"; operation: RuntimeOperation }
  | { call: "reload"; validation: ReloadValidation; state: DesiredState }
  | { call: "stop" };

class RecordingDriver implements HaproxyDriver {
  calls: DriverCall[] = [];
  pid: number | undefined;
  refuseReloads = 0;
  failRuntime?: RuntimeOperation["kind"];
  writeFiles(state: DesiredState): void {
    this.calls.push({ call: "writeFiles", state });
  }
  async start(): Promise<void> {
    this.calls.push({ call: "start" });
    this.pid = 4242;
  }
  async runtime(operation: RuntimeOperation): Promise<string[]> {
    this.calls.push({ call: "runtime", operation });
    if (operation.kind === this.failRuntime) throw new Error(`HAProxy refused "${operation.kind}"`);
    return [];
  }
  async reload(validation: ReloadValidation, state: DesiredState): Promise<ReloadTimings> {
    this.calls.push({ call: "reload", validation, state });
    if (this.refuseReloads > 0) {
      this.refuseReloads -= 1;
      throw new Error("haproxy -c rejected the configuration");
    }
    return { checkMs: 1, reloadMs: 2 };
  }
  async stop(): Promise<void> {
    this.calls.push({ call: "stop" });
  }
  /** What `show servers state` answers (the drift check). */
  live: LiveServer[] = [];
  async liveServers(): Promise<LiveServer[]> {
    return this.live;
  }
  /** The calls since the last `take`. */
  take(): DriverCall[] {
    const calls = this.calls;
    this.calls = [];
    return calls;
  }
}

interface ProbeCall {
  address: string;
  port: number;
  expected: ExpectedIdentity;
  material: IdentityCheckMaterial;
}

const registration = fixture<AgentServiceRegistration>("agent-service-web-sidecar-proxy");
const roots = fixture<CaRoots>("ca-roots");
const leaf = fixture<LeafCertificate>("leaf-web");
const [db1, db2] = dbInstances() as [ServiceInstanceEntry, ServiceInstanceEntry];
const dbChain = fixture<DiscoveryChainReply>("chain-db").Chain;
const chainPart = (value: CompiledDiscoveryChain = dbChain): SnapshotPart => ({
  kind: "chain",
  id: { kind: "chain", upstream: { name: "upstream_db", destinationName: "db", datacenter: undefined, overrides: {} } },
  value,
});
const dbTarget = Object.values(dbChain.Targets)[0]!;
const instancesPart = (...entries: ServiceInstanceEntry[]): SnapshotPart => ({ kind: "target", id: { kind: "target", query: targetQuery(dbTarget) }, value: entries });
const rootsPart = (value: CaRoots): SnapshotPart => ({ kind: "roots", id: { kind: "roots" }, value });
const leafPart = (value: LeafCertificate): SnapshotPart => ({ kind: "leaf", id: { kind: "leaf", service: "web" }, value });
const proxyDefaultsPart = (value: ProxyDefaultsEntry | null): SnapshotPart => ({ kind: "proxy-defaults", id: { kind: "proxy-defaults" }, value });
const meshPart = (value: MeshEntry | null): SnapshotPart => ({ kind: "mesh", id: { kind: "mesh" }, value });
/** startLoop delivers "no proxy-defaults, no mesh entry" unless a test clears this. */
let configEntriesKnown = true;
const intentionsPart = (byDestination: Record<string, Intention[] | null>, index = 30): SnapshotPart => ({ kind: "intentions", id: { kind: "intentions", service: "web" }, value: { byDestination, index } });
const renewedLeaf: LeafCertificate = { ...leaf, SerialNumber: "aa:bb", CertPEM: leaf.CertPEM.replace(/^(-----BEGIN CERTIFICATE-----\n)/, "$1AAAA") };
const withSecondRoot: CaRoots = { ...roots, Roots: [...roots.Roots!, { ...roots.Roots![0]!, ID: "second", Active: false, RootCert: "-----BEGIN CERTIFICATE-----\nsecond\n-----END CERTIFICATE-----\n" }] };

let clock: ManualClock;
let source: StaticSource;
let driver: RecordingDriver;
let probes: ProbeCall[];
let verdictFor: (call: ProbeCall) => IdentityVerdict | undefined;
let stop: AbortController;

const haproxy30 = capabilitiesOf(parseHaproxyVersion("HAProxy version 3.0.11-9e587df 2025/06/02"));

function startLoop(serviceRegistration: AgentServiceRegistration = registration, capabilities?: RuntimeCapabilities, driftCheckMs?: number): SidecarController {
  const controller = new SidecarController({
    driftCheckMs,
    registration: serviceRegistration,
    capabilities,
    paths,
    source,
    driver,
    logger: silentLogger,
    clock,
    probe: (address, port, expected, material) => {
      const call = { address, port, expected, material };
      probes.push(call);
      const verdict = verdictFor(call);
      return verdict ? Promise.resolve(verdict) : new Promise<IdentityVerdict>(() => undefined);
    },
  });
  void controller.run(stop.signal);
  source.send(chainPart());
  if (configEntriesKnown) {
    source.send(proxyDefaultsPart(null));
    source.send(meshPart(null));
  }
  return controller;
}

/** Runs the loop until HAProxy started with db-1 verified in its upstream. */
async function startedWithDb1(capabilities?: RuntimeCapabilities, driftCheckMs?: number): Promise<SidecarController> {
  const controller = startLoop(registration, capabilities, driftCheckMs);
  source.send(rootsPart(roots));
  source.send(leafPart(leaf));
  source.send(instancesPart(db1));
  await clock.advance(100);
  expect(driver.take().map((c) => c.call)).toEqual(["writeFiles", "start"]);
  return controller;
}

const serversIn = (state: DesiredState) => state.upstreams[0]!.backends[0]!.slots.flatMap((slot) => (slot.instance ? [slot.instance.id] : []));

beforeEach(() => {
  clock = new ManualClock();
  source = new StaticSource();
  driver = new RecordingDriver();
  probes = [];
  verdictFor = () => ({ ok: true, spiffeId: "spiffe://x/ns/default/dc/dc1/svc/db" });
  stop = new AbortController();
  configEntriesKnown = true;
  return () => stop.abort();
});

describe("the sidecar loop", () => {
  it("watches what the registration names, and follows it when the registration changes", () => {
    startLoop();
    const common = ["registration web-1-sidecar-proxy", "roots", "leaf web", "intentions web", "proxy-defaults", "mesh"];
    // The chain (delivered by startLoop) names one target: its instances are watched too.
    expect(source.watches).toEqual([...common, "chain upstream_db {}", "target db dc1 not-critical "]);
    const proxy = registration.Proxy!;
    const cacheUpstream = { DestinationType: "service" as const, DestinationName: "cache", LocalBindPort: 9292, Config: { protocol: "http", connect_timeout_ms: 1500 } };
    source.send({ kind: "registration", id: { kind: "registration", proxyId: registration.ID }, value: { ...registration, Proxy: { ...proxy, Upstreams: [cacheUpstream] } } });
    // The upstream's own protocol and connect timeout are sent as the chain's overrides; db's target is no longer watched.
    expect(source.watches).toEqual([...common, 'chain upstream_cache {"OverrideConnectTimeout":"1500ms","OverrideProtocol":"http"}']);
  });

  it("watches every target of a chain, failover included, and stops watching those a new chain drops", () => {
    startLoop();
    source.send(chainPart({ ...fixture<DiscoveryChainReply>("chain-billing-router").Chain, ServiceName: "db" }));
    expect(source.watches.filter((w) => w.startsWith("target ")).sort()).toEqual([
      "target billing dc1 not-critical Service.Meta.version == v1",
      "target billing dc1 passing Service.Meta.version == v2",
      "target billing-admin dc1 not-critical ",
      "target billing-backup dc1 not-critical ",
    ]);
    source.send(chainPart());
    expect(source.watches.filter((w) => w.startsWith("target "))).toEqual(["target db dc1 not-critical "]);
  });

  it("starts HAProxy once roots, leaf and verified upstream instances are known", async () => {
    startLoop();
    source.send(rootsPart(roots));
    source.send(leafPart(leaf));
    await clock.advance(100);
    expect(driver.calls).toEqual([]);
    source.send(instancesPart(db1));
    await clock.advance(100);
    const [write, start] = driver.take();
    expect(start).toEqual({ call: "start" });
    expect(write?.call === "writeFiles" && serversIn(write.state)).toEqual(["fixture-node/db-1-sidecar-proxy"]);
  });

  it("waits at most 5 s for upstream instances before starting without them", async () => {
    startLoop();
    source.send(rootsPart(roots));
    source.send(leafPart(leaf));
    await clock.advance(4_999);
    expect(driver.calls).toEqual([]);
    await clock.advance(1);
    const [write, start] = driver.take();
    expect(start).toEqual({ call: "start" });
    expect(write?.call === "writeFiles" && serversIn(write.state)).toEqual([]);
  });

  it("waits at most 5 s for identity checks that do not finish", async () => {
    verdictFor = () => undefined;
    startLoop();
    source.send(rootsPart(roots));
    source.send(leafPart(leaf));
    source.send(instancesPart(db1));
    await clock.advance(4_999);
    expect(driver.calls).toEqual([]);
    await clock.advance(1);
    expect(driver.take().map((c) => c.call)).toEqual(["writeFiles", "start"]);
  });

  it("plans a burst of changes within 100 ms once, with one write of the files", async () => {
    await startedWithDb1(haproxy30);
    source.send(rootsPart(withSecondRoot));
    await clock.advance(50);
    source.send(instancesPart());
    await clock.advance(49);
    expect(driver.calls).toEqual([]);
    await clock.advance(1);
    const calls = driver.take();
    expect(calls.map((c) => (c.call === "runtime" ? c.operation.kind : c.call))).toEqual(["writeFiles", "update-ca-file", "set-server"]);
  });

  it("applies intentions at once, without the coalescing window", async () => {
    await startedWithDb1();
    source.send(intentionsPart({ web: [{ SourceName: "api", DestinationName: "web", Action: "deny", Precedence: 9 }] }));
    await clock.advance(0);
    expect(driver.take().filter((c) => c.call === "runtime")).toEqual([
      { call: "runtime", operation: { kind: "sync-intentions", target: "web", index: 30, change: "intentions for web changed" } },
      { call: "runtime", operation: { kind: "flush-authorization-cache", change: "intentions for web changed" } },
      { call: "runtime", operation: { kind: "revoke-connections", frontend: "public_listener", target: "web", change: "intentions for web changed" } },
    ]);
  });

  it("renders native L7 rules for the authorizer to switch on; new ones follow a change by a reload once intentions are quiet for 2 s", async () => {
    const proxy = registration.Proxy!;
    startLoop({ ...registration, Proxy: { ...proxy, Config: { ...(proxy.Config ?? {}), protocol: "http" } } });
    const l7 = (prefix: string): Intention => ({ SourceName: "api", DestinationName: "web", Precedence: 9, Permissions: [{ Action: "allow", HTTP: { PathPrefix: prefix } }] });
    source.send(rootsPart(roots));
    source.send(leafPart(leaf));
    source.send(instancesPart(db1));
    source.send(intentionsPart({ web: [l7("/a")] }, 30));
    await clock.advance(100);
    const kinds = (calls = driver.take()) => calls.map((c) => (c.call === "runtime" ? `${c.operation.kind}${c.operation.kind === "enable-native-l7" ? ` ${c.operation.index}` : ""}` : c.call));
    const started = driver.take();
    expect(kinds(started)).toEqual(["writeFiles", "start"]);
    // The authorizer switches them on itself once its first list is at that index.
    expect(renderHaproxyConfig((started[0] as { state: DesiredState }).state)).toContain("setenv CONNECT_NATIVE_L7_RULES web@30");
    // The same rules fit a list that only gained an L4 intention: on again at once, no reload.
    source.send(intentionsPart({ web: [l7("/a"), { SourceName: "db", DestinationName: "web", Action: "deny", Precedence: 9 }] }, 31));
    await clock.advance(0);
    expect(kinds()).toEqual(["writeFiles", "sync-intentions", "flush-authorization-cache", "revoke-connections", "enable-native-l7 31"]);
    // New rules: the authorizer decides (its flush switched the old ones off) until the reload 2 s later.
    source.send(intentionsPart({ web: [l7("/b")] }, 32));
    await clock.advance(0);
    expect(kinds()).toEqual(["writeFiles", "sync-intentions", "flush-authorization-cache", "revoke-connections"]);
    await clock.advance(1_999);
    expect(kinds()).toEqual([]);
    await clock.advance(1);
    expect(kinds()).toEqual(["writeFiles", "reload"]);
  });

  it("does not reload when closing revoked connections fails", async () => {
    await startedWithDb1();
    driver.failRuntime = "revoke-connections";
    source.send(intentionsPart({ web: [{ SourceName: "api", DestinationName: "web", Action: "deny", Precedence: 9 }] }));
    await clock.advance(0);
    expect(driver.take().map((c) => (c.call === "runtime" ? c.operation.kind : c.call))).toEqual(["writeFiles", "sync-intentions", "flush-authorization-cache", "revoke-connections"]);
  });

  it("loads a renewed leaf with a reload validated by the key pair, writing the files once", async () => {
    await startedWithDb1();
    source.send(leafPart(renewedLeaf));
    await clock.advance(100);
    const calls = driver.take();
    expect(calls.map((c) => c.call)).toEqual(["writeFiles", "reload"]);
    expect(calls[1]).toMatchObject({ call: "reload", validation: "key pair" });
  });

  it("waits for the mesh and proxy-defaults entries (or their absence) before starting", async () => {
    configEntriesKnown = false;
    startLoop();
    source.send(rootsPart(roots));
    source.send(leafPart(leaf));
    source.send(instancesPart(db1));
    source.send(proxyDefaultsPart(null));
    await clock.advance(6_000);
    expect(driver.calls).toEqual([]);
    source.send(meshPart(null));
    await clock.advance(100);
    expect(driver.take().map((c) => c.call)).toEqual(["writeFiles", "start"]);
  });

  it("reloads, validated, when the mesh TLS or the access logs change, and not when an entry changes nothing HAProxy uses", async () => {
    await startedWithDb1();
    source.send(meshPart({ Kind: "mesh", Name: "mesh", TLS: { Incoming: { TLSMinVersion: "TLSv1_3" } } }));
    await clock.advance(100);
    const calls = driver.take();
    expect(calls.map((c) => c.call)).toEqual(["writeFiles", "reload"]);
    expect(calls[1]).toMatchObject({ call: "reload", validation: "haproxy -c" });
    expect(calls[0]?.call === "writeFiles" && calls[0].state.meshTls.incoming).toEqual({ minVersion: "TLSv1.3", maxVersion: "TLSv1.3" });
    source.send(proxyDefaultsPart({ Kind: "proxy-defaults", Name: "global", AccessLogs: { Enabled: false } }));
    await clock.advance(100);
    expect(driver.take()).toEqual([]);
    source.send(proxyDefaultsPart({ Kind: "proxy-defaults", Name: "global", AccessLogs: { Enabled: true, Type: "file", Path: "/var/log/web.log" } }));
    await clock.advance(100);
    const [write, reload] = driver.take();
    expect(reload?.call).toBe("reload");
    expect(write?.call === "writeFiles" && write.state.accessLog?.sink).toEqual({ kind: "file", path: "/var/log/web.log" });
  });

  it("on HAProxy 3.0 swaps a renewed leaf at run time, except in a worker that had a CA commit (then reloads; the next worker swaps again)", async () => {
    await startedWithDb1(haproxy30);
    const kinds = () => driver.take().map((c) => (c.call === "runtime" ? c.operation.kind : c.call));
    source.send(leafPart(renewedLeaf));
    await clock.advance(100);
    expect(kinds()).toEqual(["writeFiles", "update-certificate"]);
    source.send(rootsPart(withSecondRoot));
    await clock.advance(100);
    expect(kinds()).toEqual(["writeFiles", "update-ca-file"]);
    source.send(leafPart({ ...renewedLeaf, SerialNumber: "cc:dd", CertPEM: renewedLeaf.CertPEM.replace("-----END", "x\n-----END") }));
    await clock.advance(100);
    const reload = driver.take();
    expect(reload.map((c) => c.call)).toEqual(["writeFiles", "reload"]);
    expect(reload[1]).toMatchObject({ call: "reload", validation: "key pair" });
    source.send(leafPart(leaf));
    await clock.advance(100);
    expect(kinds()).toEqual(["writeFiles", "update-certificate"]);
  });

  it("restores the files after a refused reload and tries again 30 s later", async () => {
    await startedWithDb1();
    driver.refuseReloads = 1;
    source.send(leafPart(renewedLeaf));
    await clock.advance(100);
    const [write, reload, restore] = driver.take();
    expect(reload?.call).toBe("reload");
    expect(write?.call === "writeFiles" && write.state.leafSerial).toBe("aa:bb");
    expect(restore?.call === "writeFiles" && restore.state.leafSerial).toBe(leaf.SerialNumber);
    await clock.advance(29_999);
    expect(driver.calls).toEqual([]);
    await clock.advance(1);
    expect(driver.take().map((c) => c.call)).toEqual(["writeFiles", "reload"]);
  });

  it("turns a failed runtime command into a validated reload that names it", async () => {
    await startedWithDb1(haproxy30);
    driver.failRuntime = "update-ca-file";
    source.send(rootsPart(withSecondRoot));
    await clock.advance(100);
    const reload = driver.take().find((c) => c.call === "reload");
    expect(reload).toMatchObject({ call: "reload", validation: "haproxy -c" });
    expect(reload?.call === "reload" && reload.state.caRootsPem).toContain("second");
  });

  it("probes with exactly the roots HAProxy trusts, intermediates included", async () => {
    const intermediate = "-----BEGIN CERTIFICATE-----\ncross-signed\n-----END CERTIFICATE-----";
    const rotating: CaRoots = { ...roots, Roots: [{ ...roots.Roots![0]!, IntermediateCerts: [intermediate] }] };
    startLoop();
    source.send(rootsPart(rotating));
    source.send(leafPart(leaf));
    source.send(instancesPart(db1));
    await clock.advance(100);
    const [write] = driver.take();
    expect(write?.call).toBe("writeFiles");
    const haproxyTrusts = write?.call === "writeFiles" ? write.state.caRootsPem : "";
    expect(haproxyTrusts).toContain("cross-signed");
    expect(probes[0]!.material.caRootsPem).toBe(haproxyTrusts);
    expect(probes[0]!.material.leafCertificatePem).toBe(write?.call === "writeFiles" ? write.state.leafCertificatePem : "");
  });

  it("adds an instance within about a second of its first refused handshake (peer not ready)", async () => {
    await startedWithDb1();
    let ready = false;
    verdictFor = (call) => (call.port === db2.Service.Port && !ready ? { ok: false, reason: "ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE", kind: "no-handshake" } : { ok: true, spiffeId: "x" });
    source.send(instancesPart(db1, db2));
    await clock.advance(100);
    expect(driver.take().filter((c) => c.call === "runtime")).toEqual([]);
    ready = true;
    await clock.advance(1_000);
    const added = driver.take().filter((c) => c.call === "runtime");
    expect(added).toMatchObject([{ operation: { kind: "set-server", port: db2.Service.Port, ready: true } }]);
  });

  it("keeps an instance proven to be another service out for 30 s", async () => {
    await startedWithDb1();
    verdictFor = (call) => (call.port === db2.Service.Port ? { ok: false, reason: "certificate is …/svc/web", kind: "wrong-identity" } : { ok: true, spiffeId: "x" });
    source.send(instancesPart(db1, db2));
    await clock.advance(100);
    const probedBefore = probes.length;
    await clock.advance(29_000);
    expect(probes.length).toBe(probedBefore);
    expect(driver.take().filter((c) => c.call === "runtime")).toEqual([]);
    await clock.advance(1_100);
    expect(probes.length).toBe(probedBefore + 1);
  });

  it("checks HAProxy's server slots every driftCheckMs and repairs a slot put in maintenance behind its back", async () => {
    await startedWithDb1(undefined, 30_000);
    const db1Slot = (ready: boolean): LiveServer => ({ backend: "upstream_db", server: "s1", address: "127.0.0.1", port: db1.Service.Port, state: ready ? "ready" : "maint" });
    driver.live = [{ ...db1Slot(false) }];
    await clock.advance(29_000);
    expect(driver.take()).toEqual([]);
    await clock.advance(1_000);
    const repairs = driver.take();
    expect(repairs).toHaveLength(1);
    expect(repairs[0]).toMatchObject({ call: "runtime", operation: { kind: "set-server", backend: "upstream_db", ready: true, change: expect.stringMatching(/^drift: upstream_db\/\S+ is maint in HAProxy, should be ready at /) } });
    driver.live = [db1Slot(true)];
    await clock.advance(30_000);
    expect(driver.take()).toEqual([]);
  });

  it("on SIGHUP, starts every watch over, writes the files again and checks HAProxy at once", async () => {
    const controller = await startedWithDb1();
    driver.live = [{ backend: "upstream_db", server: "s1", address: "127.0.0.1", port: 1, state: "ready" }];
    source.watches = [];
    controller.resync();
    expect(source.watches).toContain("roots");
    await settle();
    const calls = driver.take();
    expect(calls.map((c) => c.call)).toEqual(["writeFiles", "runtime"]);
    expect(calls[1]).toMatchObject({ operation: { kind: "set-server", address: "127.0.0.1", port: db1.Service.Port, ready: true } });
  });

  it("stops HAProxy softly when asked to stop", async () => {
    await startedWithDb1();
    stop.abort();
    await settle();
    expect(driver.take()).toEqual([{ call: "stop" }]);
  });

  it("answers /ready only while HAProxy serves the current leaf, inside its validity, with no refused change", async () => {
    // The manual clock reads about 1970: a leaf valid from 0 to 2 000 000 ms.
    const current = { ...leaf, ValidAfter: new Date(0).toISOString(), ValidBefore: new Date(2_000_000).toISOString() };
    const controller = startLoop();
    expect(controller.readiness()).toMatchObject({ ready: false, reason: expect.stringMatching(/not started yet/) });
    source.send(rootsPart(roots));
    source.send(leafPart(current));
    source.send(instancesPart(db1));
    await clock.advance(100);
    expect(controller.readiness()).toEqual({ ready: true, reason: `serving ${registration.ID} with leaf serial ${leaf.SerialNumber}` });
    expect(controller.leafExpiresInSeconds()).toBeCloseTo((2_000_000 - clock.now()) / 1000);
    // A renewed leaf whose reload is refused: not ready until it is served.
    driver.refuseReloads = 1;
    source.send(leafPart({ ...renewedLeaf, ValidAfter: current.ValidAfter, ValidBefore: new Date(3_000_000).toISOString() }));
    await clock.advance(100);
    expect(controller.readiness()).toMatchObject({ ready: false, reason: expect.stringMatching(/^the last change is not applied: reload refused/) });
    await clock.advance(30_000);
    expect(controller.readiness()).toMatchObject({ ready: true });
    await clock.advance(3_000_000);
    expect(controller.readiness()).toMatchObject({ ready: false, reason: expect.stringMatching(/^the leaf certificate expired at 1970-01-01T00:50:00/) });
  });

  it("names each setting it cannot honour once, and follows the metrics address of the registration", async () => {
    const lines: string[] = [];
    const addresses: (string | undefined)[] = [];
    const logger = { ...silentLogger, warn: (message: string) => void lines.push(message) };
    const withConfig = (config: Record<string, unknown>): AgentServiceRegistration => ({ ...registration, Proxy: { ...registration.Proxy!, Config: config } });
    const controller = new SidecarController({
      registration: withConfig({ envoy_stats_tags: ["a=b"], envoy_prometheus_bind_addr: "127.0.0.1:9102" }),
      paths, source, driver, logger, clock,
      probe: () => Promise.resolve({ ok: true, spiffeId: "x" }),
      onPrometheusBindAddress: (address) => void addresses.push(address),
    });
    void controller.run(stop.signal);
    const registrationPart = (config: Record<string, unknown>): SnapshotPart => ({ kind: "registration", id: { kind: "registration", proxyId: registration.ID }, value: withConfig(config) });
    source.send(registrationPart({ envoy_stats_tags: ["a=b"], envoy_prometheus_bind_addr: "127.0.0.1:9103" }));
    source.send(registrationPart({ envoy_stats_tags: ["a=c"], envoy_tracing_json: "{}" }));
    expect(lines).toEqual([
      "Consul setting not honoured: Proxy.Config.envoy_stats_tags is ignored (connect-haproxy has no equivalent; docs/controller.md)",
      "Consul setting not honoured: Proxy.Config.envoy_tracing_json is ignored (connect-haproxy has no equivalent; docs/controller.md)",
    ]);
    expect(addresses).toEqual(["127.0.0.1:9102", "127.0.0.1:9103", undefined]);
  });
});
