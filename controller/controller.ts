// The lifecycle loop: Consul watches → snapshot → (coalesced) desired state →
// planned operations → runtime API or validated reload. Thin: the deciding
// is done by the pure modules it calls.
import { runBlockingWatch, type BlockingMode } from "./blocking-query.js";
import type { Clock } from "./clock.js";
import { writeHaproxyFiles } from "./config-files.js";
import { ConsulError, type AgentServiceRegistration, type BlockingCursor, type CaRoots, type ConsulClient, type ConsulPage, type Intention, type LeafCertificate, type ServiceInstanceEntry } from "./consul-client.js";
import { backoffDelayMs } from "./blocking-query.js";
import { buildDesiredState, type DesiredState, type HaproxyPaths } from "./desired-state.js";
import { certificatePairProblem } from "./certificate-pair.js";
import { renderHaproxyConfig } from "./haproxy-config.js";
import { HaproxyProcess } from "./haproxy-process.js";
import type { Logger } from "./logger.js";
import { planChanges, type Operation } from "./plan-changes.js";
import { RuntimeApi } from "./runtime-api.js";
import { findSidecarRegistration, parseSidecarSpec, SidecarSpecError, type SidecarSpec, type UpstreamSpec } from "./sidecar-spec.js";
import { verifyUpstreamIdentity, type ExpectedIdentity } from "./upstream-identity.js";

/** The sidecar cannot be identified: a usage problem (exit code 2). */
export class LookupError extends Error {}

export interface SidecarSelector {
  sidecarFor?: string;
  proxyId?: string;
}

/** Finds the sidecar registration, waiting (with backoff) while the agent is unreachable. */
export async function findSidecar(consul: ConsulClient, selector: SidecarSelector, logger: Logger, clock: Clock, signal: AbortSignal): Promise<AgentServiceRegistration> {
  for (let failures = 1; ; failures++) {
    try {
      const found = findSidecarRegistration(await consul.listAgentServices(signal), selector);
      if (!found.ok) throw new LookupError(found.message);
      if (failures > 1) logger.info("Consul is reachable again");
      return found.registration;
    } catch (err) {
      if (!(err instanceof ConsulError) || err.kind !== "unreachable") throw err;
      if (failures === 1) logger.warn(`${err.message}; retrying with backoff until it answers`);
      await clock.sleep(backoffDelayMs(failures, 500, 10_000, clock.random()), signal);
      if (signal.aborted) throw new ConsulError("aborted", err.endpoint, "stopped while waiting for Consul");
    }
  }
}

export interface ControllerOptions {
  consul: ConsulClient;
  registration: AgentServiceRegistration;
  paths: HaproxyPaths;
  haproxyBinary: string;
  haproxyEnvironment: NodeJS.ProcessEnv;
  logger: Logger;
  clock: Clock;
  /** Bursts of Consul changes within this window are planned together (default 100 ms). */
  coalesceMs?: number;
  /** How long the first start waits for upstream instances before starting without them. */
  upstreamWaitMs?: number;
  stopTimeoutMs?: number;
}

interface UpstreamInstances {
  entries: ServiceInstanceEntry[];
  /** The service the instances must prove to be (prepared queries name it in their reply). */
  service: string;
}

type IdentityRecord = { state: "verified" | "pending" } | { state: "rejected" | "unreachable"; retryAt: number; failures: number };

export class SidecarController {
  private spec: SidecarSpec;
  private roots?: CaRoots;
  private leaf?: LeafCertificate;
  private intentions?: Record<string, Intention[] | null>;
  private readonly instances = new Map<string, UpstreamInstances>();
  private readonly identities = new Map<string, IdentityRecord>();
  private readonly watches = new Map<string, AbortController>();
  private running?: DesiredState;
  private readonly haproxy: HaproxyProcess;
  private readonly runtime: RuntimeApi;
  private timer?: NodeJS.Timeout;
  private timerDue?: number;
  private chain: Promise<void> = Promise.resolve();
  private startedAt: number;
  private fatal?: (err: Error) => void;
  private stopped = false;

  constructor(private readonly options: ControllerOptions) {
    this.spec = parseSidecarSpec(options.registration);
    this.startedAt = options.clock.now();
    this.runtime = new RuntimeApi(options.paths.statsSocket);
    this.haproxy = new HaproxyProcess({
      binary: options.haproxyBinary,
      configFile: options.paths.configFile,
      masterSocket: options.paths.masterSocket,
      statsSocket: options.paths.statsSocket,
      environment: options.haproxyEnvironment,
      logger: options.logger,
      clock: options.clock,
      stopTimeoutMs: options.stopTimeoutMs ?? 35_000,
    });
  }

  /** Runs until `signal` aborts (then stops HAProxy softly), or fails to start HAProxy. */
  async run(signal: AbortSignal): Promise<void> {
    const failed = new Promise<never>((_, reject) => (this.fatal = reject));
    const stopped = new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    this.options.logger.info("watching Consul", { proxy: this.spec.proxyId, service: this.spec.publicListener.destinationServiceName, upstreams: this.spec.upstreams.length });
    this.syncWatches();
    try {
      await Promise.race([stopped, failed]);
    } finally {
      await this.shutdown();
    }
  }

  private async shutdown(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const watch of this.watches.values()) watch.abort();
    this.watches.clear();
    await this.chain.catch(() => undefined);
    if (this.haproxy.pid) {
      this.options.logger.info("stopping HAProxy softly (established connections may finish)", { pid: this.haproxy.pid });
      await this.haproxy.stop();
    }
    this.options.logger.info("stopped");
  }

  // ---- Watches ----

  private syncWatches(): void {
    const service = this.spec.publicListener.destinationServiceName;
    const wanted = new Map<string, () => void>();
    const { consul } = this.options;
    wanted.set("registration", () =>
      this.watch<AgentServiceRegistration>("registration", `registration of ${this.spec.proxyId}`, "hash", (c, s) => consul.agentService(this.spec.proxyId, c, s), (registration) => this.onRegistration(registration)),
    );
    wanted.set("roots", () => this.watch<CaRoots>("roots", "CA roots", "index", (c, s) => consul.caRoots(c, s), (roots) => this.update(() => (this.roots = roots))));
    wanted.set(`leaf:${service}`, () =>
      this.watch<LeafCertificate>(`leaf:${service}`, `leaf certificate of ${service}`, "index", (c, s) => consul.leafCertificate(service, c, s), (leaf) => this.update(() => (this.leaf = leaf))),
    );
    wanted.set(`intentions:${service}`, () =>
      this.watch(`intentions:${service}`, `intentions for ${service}`, "index", (c, s) => consul.intentionsForDestination(service, c, s), (intentions) => this.update(() => (this.intentions = intentions), 0)),
    );
    for (const upstream of this.spec.upstreams) {
      const key = upstreamWatchKey(upstream);
      wanted.set(key, () => this.watchUpstream(key, upstream));
    }
    for (const [key, controller] of this.watches) {
      if (!wanted.has(key)) {
        controller.abort();
        this.watches.delete(key);
        if (key.startsWith("upstream:")) this.instances.delete(key);
      }
    }
    for (const [key, start] of wanted) if (!this.watches.has(key)) start();
  }

  private watchUpstream(key: string, upstream: UpstreamSpec): void {
    const { consul } = this.options;
    const what = `instances of ${upstream.destinationType === "prepared_query" ? "prepared query " : ""}${upstream.destinationName}${upstream.datacenter ? ` in ${upstream.datacenter}` : ""}`;
    if (upstream.destinationType === "prepared_query") {
      this.watch<UpstreamInstances>(key, what, "poll", async (_c, s) => {
        const page = await consul.preparedQuery(upstream.destinationName, upstream.datacenter, s);
        return { value: { entries: page.value.Nodes ?? [], service: page.value.Service } };
      }, (value) => this.update(() => this.instances.set(key, value)));
      return;
    }
    this.watch<UpstreamInstances>(key, what, "index", async (c, s) => {
      const page = await consul.healthyConnectInstances(upstream.destinationName, upstream.datacenter, c, s);
      return { ...page, value: { entries: page.value ?? [], service: upstream.destinationName } };
    }, (value) => this.update(() => this.instances.set(key, value)));
  }

  private watch<T>(key: string, description: string, mode: BlockingMode, fetchPage: (cursor: BlockingCursor, signal: AbortSignal) => Promise<ConsulPage<T>>, onChange: (value: T) => void): void {
    const controller = new AbortController();
    this.watches.set(key, controller);
    const { logger, clock } = this.options;
    void runBlockingWatch<T>({
      description,
      mode,
      fetchPage,
      onChange,
      signal: controller.signal,
      clock,
      pollIntervalMs: 5_000,
      onError: (error, failures) => {
        const message = error instanceof Error ? error.message : String(error);
        // One line when a watch starts failing; HAProxy keeps its last good configuration.
        if (failures === 1) logger.error(`watch of ${description} failed: ${message}; retrying with backoff, HAProxy keeps its current configuration`);
        else logger.debug(`watch of ${description} still failing`, { failures, error: message });
      },
      onRecovered: () => logger.info(`watch of ${description} recovered`),
    });
  }

  private onRegistration(registration: AgentServiceRegistration): void {
    try {
      const spec = parseSidecarSpec(registration, this.spec.publicListener.localServicePort);
      this.update(() => (this.spec = spec));
      this.syncWatches();
    } catch (err) {
      if (!(err instanceof SidecarSpecError)) throw err;
      this.options.logger.error(`ignoring the new registration of ${registration.ID}: ${err.message}`);
    }
  }

  /** Intentions use no coalescing window: a deny must apply at once, and a flush is cheap. */
  private update(change: () => unknown, delayMs?: number): void {
    change();
    this.schedule(delayMs);
  }

  // ---- Planning and applying ----

  /** Plans after `delayMs` (the coalescing window), or sooner if already due sooner. */
  private schedule(delayMs = this.options.coalesceMs ?? 100): void {
    if (this.stopped) return;
    const due = Date.now() + delayMs;
    if (this.timer && this.timerDue !== undefined && this.timerDue <= due) return;
    clearTimeout(this.timer);
    this.timerDue = due;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerDue = undefined;
      this.chain = this.chain.then(() => this.reconcile()).catch((err: Error) => {
        if (!this.running) this.fatal?.(err);
        else this.options.logger.error(`could not apply Consul's changes: ${err.message}`);
      });
    }, delayMs);
  }

  private ready(): boolean {
    if (!this.roots || !this.leaf) return false;
    if (this.running) return true;
    // The first HAProxy starts with every known instance's identity settled, so
    // that it does not start (or, after a controller restart, take over) with
    // empty upstream backends while the checks run.
    const allKnown = this.spec.upstreams.every((u) => this.instances.has(upstreamWatchKey(u)));
    this.verifiedInstances();
    const identitiesSettled = ![...this.identities.values()].some((record) => record.state === "pending");
    if (allKnown && identitiesSettled) return true;
    const waitMs = this.options.upstreamWaitMs ?? 5_000;
    if (this.options.clock.now() - this.startedAt >= waitMs) return true;
    setTimeout(() => this.schedule(), waitMs).unref();
    return false;
  }

  private async reconcile(): Promise<void> {
    if (this.stopped || !this.ready()) return;
    const { logger, paths } = this.options;
    const desired = buildDesiredState(
      { sidecar: this.spec, roots: this.roots!, leaf: this.leaf!, upstreamInstances: this.verifiedInstances(), intentions: this.intentions },
      paths,
      this.running,
    );
    if (!this.running) {
      writeHaproxyFiles(desired);
      await this.haproxy.start();
      this.running = desired;
      logger.info("HAProxy started", { pid: this.haproxy.pid, config: paths.configFile, leafSerial: desired.leafSerial, listener: `${desired.publicListener.bindAddress}:${desired.publicListener.bindPort}` });
      return;
    }
    const operations = planChanges(this.running, desired);
    if (operations.length === 0) return;
    // Dual-write first: whatever happens next, a reload or restart reproduces the desired state.
    writeHaproxyFiles(desired);
    const reload = operations.find((op) => op.kind === "reload");
    if (reload && reload.kind === "reload") {
      await this.reloadOrRestore(reload.reason, desired, renderHaproxyConfig(this.running) === renderHaproxyConfig(desired) ? desired.leafCertificatePem : undefined);
      return;
    }
    for (const operation of operations) {
      try {
        await this.applyAtRuntime(operation);
      } catch (err) {
        await this.reloadOrRestore(`runtime command failed (${(err as Error).message})`, desired);
        return;
      }
    }
    this.running = desired;
  }

  /**
   * `certificatesOnly`: the configuration text is unchanged, only the leaf is
   * new; checking the key pair here is enough, and spares `haproxy -c` (which
   * costs as much as the reload itself).
   */
  private async reloadOrRestore(reason: string, desired: DesiredState, certificatesOnly?: string): Promise<void> {
    try {
      const problem = certificatesOnly === undefined ? undefined : certificatePairProblem(certificatesOnly);
      if (problem) throw new Error(`the new leaf certificate is unusable: ${problem}`);
      const timings = await this.haproxy.reload({ check: certificatesOnly === undefined });
      this.running = desired;
      const path = certificatesOnly === undefined ? "validated reload (haproxy -c, master CLI reload)" : "seamless reload (leaf key pair checked, master CLI reload)";
      this.options.logger.info("applied change", { change: reason, path, ...timings });
    } catch (err) {
      writeHaproxyFiles(this.running!);
      this.options.logger.error(`reload refused, HAProxy keeps its current configuration: ${(err as Error).message}`, { change: reason, retryInMs: reloadRetryMs });
      // Consul may not change again soon: try again later (a passing problem, e.g. HAProxy restarting).
      setTimeout(() => this.schedule(), reloadRetryMs).unref();
    }
  }

  private async applyAtRuntime(operation: Operation): Promise<void> {
    const { logger } = this.options;
    switch (operation.kind) {
      case "set-server":
        await this.runtime.setServer(operation.backend, operation.server, operation.address !== undefined ? { address: operation.address, port: operation.port! } : undefined, operation.ready);
        logger.info("applied change", { change: operation.change, path: `runtime API: set server${operation.address ? " addr + state ready" : " state maint"}` });
        return;
      case "update-certificate":
        await this.runtime.replaceCertificate(operation.file, operation.pem);
        logger.info("applied change", { change: operation.change, path: "runtime API: set ssl cert + commit ssl cert" });
        return;
      case "update-ca-file":
        await this.runtime.replaceCaFile(operation.file, operation.pem);
        logger.info("applied change", { change: operation.change, path: "runtime API: set ssl ca-file + commit ssl ca-file" });
        return;
      case "flush-authorization-cache":
        try {
          await this.runtime.flushAuthorizationCache();
          logger.info("applied change", { change: operation.change, path: "stats socket: connect cache flush" });
        } catch (err) {
          // Not worth a reload: the authorizer's cached verdicts expire by themselves.
          logger.warn(`could not flush the authorizer's cache: ${(err as Error).message}`, { change: operation.change });
        }
        return;
      case "reload":
        throw new Error("a reload is not a runtime operation");
    }
  }

  // ---- Upstream identity (see upstream-identity.ts for why) ----

  private verifiedInstances(): Record<string, ServiceInstanceEntry[]> {
    const result: Record<string, ServiceInstanceEntry[]> = {};
    const seen = new Set<string>();
    for (const upstream of this.spec.upstreams) {
      const key = upstreamWatchKey(upstream);
      const known = this.instances.get(key);
      if (!known) continue;
      const expected: ExpectedIdentity = { trustDomain: this.roots!.TrustDomain, service: known.service, datacenter: upstream.datacenter };
      result[upstream.name] = known.entries.filter((entry) => {
        const address = entry.Service.Address || entry.Node.Address;
        const identityKey = `${key}|${address}|${entry.Service.Port}`;
        seen.add(identityKey);
        return this.identityVerified(identityKey, address, entry.Service.Port, expected);
      });
    }
    for (const key of this.identities.keys()) if (!seen.has(key)) this.identities.delete(key);
    return result;
  }

  private identityVerified(identityKey: string, address: string, port: number, expected: ExpectedIdentity): boolean {
    const record = this.identities.get(identityKey);
    if (record?.state === "verified") return true;
    if (record?.state === "pending") return false;
    if (record && "retryAt" in record && this.options.clock.now() < record.retryAt) return false;
    const failures = record && "failures" in record ? record.failures : 0;
    this.identities.set(identityKey, { state: "pending" });
    void verifyUpstreamIdentity(address, port, expected, { leafCertificatePem: `${this.leaf!.CertPEM}\n${this.leaf!.PrivateKeyPEM}`, caRootsPem: this.running?.caRootsPem ?? caPem(this.roots!) }).then((verdict) => {
      if (!this.identities.has(identityKey)) return;
      if (verdict.ok) {
        this.identities.set(identityKey, { state: "verified" });
      } else {
        const retryInMs = verdict.unreachable ? Math.min(10_000, 500 * 2 ** failures) : 30_000;
        this.identities.set(identityKey, { state: verdict.unreachable ? "unreachable" : "rejected", retryAt: this.options.clock.now() + retryInMs, failures: failures + 1 });
        const line = `upstream instance ${address}:${port} kept out of ${expected.service}: ${verdict.reason}`;
        if (!verdict.unreachable) this.options.logger.error(line, { retryInMs });
        else if (failures === 0) this.options.logger.warn(line, { retryInMs });
        setTimeout(() => this.schedule(), retryInMs).unref();
      }
      // The instance was already coalesced once: apply the verdict at once.
      this.schedule(0);
    });
    return false;
  }
}

const reloadRetryMs = 30_000;

function caPem(roots: CaRoots): string {
  return (roots.Roots ?? []).map((r) => r.RootCert).join("\n");
}

function upstreamWatchKey(upstream: UpstreamSpec): string {
  return `upstream:${upstream.destinationType}:${upstream.destinationName}:${upstream.datacenter ?? ""}`;
}
