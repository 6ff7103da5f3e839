// The lifecycle loop: snapshot parts from the watches → (coalesced) desired
// state → a plan → the driver. The loop owns the one timer; the deciding is
// done by pure modules (sidecar-snapshot, desired-state, plan-changes), the
// acting by the driver, and nothing calls back into the loop but the timer,
// the watches' deliveries and the identity probes' verdicts.
import type { Clock } from "./clock.js";
import type { AgentServiceRegistration } from "./consul-replies.js";
import type { SnapshotPart, SnapshotSource } from "./consul-watches.js";
import { buildDesiredState, type DesiredState, type HaproxyPaths } from "./desired-state.js";
import { runtimePath, type HaproxyDriver } from "./haproxy-driver.js";
import type { Logger } from "./logger.js";
import { planChanges, runningAfterRuntime, sameNativeRules, type ReloadValidation, type RuntimeOperation, type WorkerHistory } from "./plan-changes.js";
import { reloadForCertificates, type RuntimeCapabilities } from "./haproxy-version.js";
import { consulSnapshot, emptySnapshot, readiness, upstreamsToCheck, wantedWatches, withPart, type SidecarSnapshot } from "./sidecar-snapshot.js";
import { describeShape } from "./upstream-config.js";
import { serverDrift } from "./server-drift.js";
import { parseSidecarSpec, SidecarSpecError } from "./sidecar-spec.js";
import { identityCheckMaterial, UpstreamIdentities, type IdentityProbe } from "./upstream-identity.js";
import type { SidecarMetrics } from "./sidecar-metrics.js";

/**
 * Operations whose failure is logged, not turned into a reload: cached verdicts
 * expire by themselves, and new connections and requests are decided anew.
 */
const bestEffort: Partial<Record<RuntimeOperation["kind"], string>> = {
  "sync-intentions": "bring the authorizer's intention list up to date (L7 requests are refused until it is)",
  "flush-authorization-cache": "flush the authorizer's cache",
  "revoke-connections": "close the connections the intentions now deny",
  "enable-native-l7": "switch on the native L7 rules (the authorizer decides those requests, slower)",
};

export interface SidecarControllerOptions {
  registration: AgentServiceRegistration;
  paths: HaproxyPaths;
  source: SnapshotSource;
  driver: HaproxyDriver;
  probe: IdentityProbe;
  logger: Logger;
  clock: Clock;
  /** What the HAProxy binary can change at run time (from its version: capabilitiesOf); by default what 2.6 can. */
  capabilities?: RuntimeCapabilities;
  /** Bursts of Consul changes within this window are planned together. */
  coalesceMs?: number;
  /** How long intentions must stay unchanged before new native L7 rules are reloaded (default 2 s). */
  nativeRulesQuietMs?: number;
  /** How long the first start waits for upstream instances before starting without them. */
  upstreamWaitMs?: number;
  /** When a refused reload is tried again if Consul does not change before. */
  reloadRetryMs?: number;
  /** How often HAProxy's server slots are compared with the running state and repaired (default: never; the CLI sets 30 s). */
  driftCheckMs?: number;
  /** The controller's counters (reloads, runtime operations, instances); none when absent. */
  metrics?: SidecarMetrics;
  /** Called with the registration's envoy_prometheus_bind_addr at start and whenever it changes. */
  onPrometheusBindAddress?: (address: string | undefined) => void;
}

/** What /ready answers. */
export interface Readiness {
  ready: boolean;
  reason: string;
}

export class SidecarController {
  private snapshot: SidecarSnapshot;
  private running?: DesiredState;
  /** The current worker's runtime history; a reload or start gives a fresh worker. */
  private worker: WorkerHistory = { caFileCommitted: false };
  private readonly identities: UpstreamIdentities;
  private readonly startedAt: number;
  private cancelTimer?: () => void;
  private timerDue?: number;
  private chain: Promise<void> = Promise.resolve();
  private fatal?: (err: Error) => void;
  private cancelDriftTimer?: () => void;
  private stopped = false;
  /** Why the last change could not be applied (cleared by the next that is). */
  private applyProblem?: string;
  private readonly warned = new Set<string>();

  constructor(private readonly options: SidecarControllerOptions) {
    this.snapshot = emptySnapshot(parseSidecarSpec(options.registration));
    this.startedAt = options.clock.now();
    this.identities = new UpstreamIdentities({ probe: options.probe, clock: options.clock, logger: options.logger, onVerdict: () => this.schedule(0) });
  }

  /** Runs until `signal` aborts (then stops HAProxy softly), or fails to start HAProxy. */
  async run(signal: AbortSignal): Promise<void> {
    const failed = new Promise<never>((_, reject) => (this.fatal = reject));
    const stopped = new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    const { spec } = this.snapshot;
    this.options.logger.info("watching Consul", { proxy: spec.proxyId, service: spec.publicListener.destinationServiceName, upstreams: spec.upstreams.length });
    this.specChanged();
    this.watch();
    this.scheduleDriftChecks();
    try {
      await Promise.race([stopped, failed]);
    } finally {
      await this.shutdown();
    }
  }

  private async shutdown(): Promise<void> {
    this.stopped = true;
    this.cancelTimer?.();
    this.cancelDriftTimer?.();
    this.options.source.stop();
    await this.chain.catch(() => undefined);
    if (this.options.driver.pid) {
      this.options.logger.info("stopping HAProxy softly (established connections may finish)", { pid: this.options.driver.pid });
      await this.options.driver.stop();
    }
    this.options.logger.info("stopped");
  }

  /**
   * SIGHUP: every watch starts over (a fresh read of everything, as at start),
   * the files are written again, and HAProxy's server slots are checked at once.
   */
  resync(): void {
    if (this.stopped) return;
    this.options.logger.info("SIGHUP: re-reading everything from Consul and checking HAProxy against it");
    this.options.source.stop();
    this.watch();
    if (this.running) this.options.driver.writeFiles(this.running);
    this.checkDrift("SIGHUP");
  }

  private scheduleDriftChecks(): void {
    const every = this.options.driftCheckMs ?? 0;
    if (every <= 0 || this.stopped) return;
    this.cancelDriftTimer = this.options.clock.setTimer(every, () => {
      this.checkDrift("periodic");
      this.scheduleDriftChecks();
    });
  }

  /** Compares HAProxy's server slots with the running state and repairs each difference (one "applied change" line each). Runs in turn with reconciles. */
  private checkDrift(trigger: string): void {
    const { driver, logger } = this.options;
    this.chain = this.chain
      .then(async () => {
        if (this.stopped || !this.running) return;
        const repairs = serverDrift(this.running, await driver.liveServers());
        if (repairs.length === 0) return logger.debug("drift check: HAProxy's server slots are as desired", { trigger });
        logger.warn("drift check: HAProxy's server slots differ from the desired state; repairing each", { trigger, differences: repairs.length });
        await this.applyOperations(repairs, this.running);
      })
      .catch((err: Error) => logger.warn(`drift check failed: ${err.message}`, { trigger }));
  }

  private watch(): void {
    this.options.source.setWatches(wantedWatches(this.snapshot), (part) => this.receive(part));
  }

  private receive(part: SnapshotPart): void {
    if (this.stopped) return;
    try {
      this.snapshot = withPart(this.snapshot, part);
    } catch (err) {
      if (!(err instanceof SidecarSpecError)) throw err;
      this.options.logger.error(`ignoring the new registration of ${this.snapshot.spec.proxyId}: ${err.message}`);
      return;
    }
    // The watch set follows the registration's upstreams and their chains' targets.
    if (part.kind === "registration" || part.kind === "chain") this.watch();
    if (part.kind === "registration") this.specChanged();
    // A deny must apply at once, and a cache flush is cheap: intentions skip the coalescing window.
    this.schedule(part.kind === "intentions" ? 0 : (this.options.coalesceMs ?? 100));
  }

  /** Each setting the registration sets that cannot be honoured is named once; the metrics address follows the registration. */
  private specChanged(): void {
    const { spec } = this.snapshot;
    for (const warning of spec.warnings) {
      if (this.warned.has(warning)) continue;
      this.warned.add(warning);
      this.options.logger.warn(`Consul setting not honoured: ${warning}`, { proxy: spec.proxyId });
    }
    this.options.onPrometheusBindAddress?.(spec.prometheusBindAddress);
  }

  /** 200 on /ready: HAProxy runs the last desired state, with the current leaf, inside its validity. */
  readiness(): Readiness {
    const running = this.running;
    if (!running || this.options.driver.pid === undefined) return { ready: false, reason: "HAProxy is not started yet (waiting for Consul's certificates and upstreams)" };
    if (this.applyProblem !== undefined) return { ready: false, reason: `the last change is not applied: ${this.applyProblem}` };
    const leaf = this.snapshot.leaf;
    if (!leaf || leaf.SerialNumber !== running.leafSerial) return { ready: false, reason: "a renewed leaf certificate is not served yet" };
    const now = this.options.clock.now();
    if (now >= Date.parse(leaf.ValidBefore)) return { ready: false, reason: `the leaf certificate expired at ${leaf.ValidBefore}` };
    if (now < Date.parse(leaf.ValidAfter)) return { ready: false, reason: `the leaf certificate is valid only from ${leaf.ValidAfter}` };
    return { ready: true, reason: `serving ${this.snapshot.spec.proxyId} with leaf serial ${running.leafSerial}` };
  }

  /** Seconds until the served leaf certificate expires (metrics). */
  leafExpiresInSeconds(): number | undefined {
    const leaf = this.snapshot.leaf;
    if (!this.running || !leaf || leaf.SerialNumber !== this.running.leafSerial) return undefined;
    return (Date.parse(leaf.ValidBefore) - this.options.clock.now()) / 1000;
  }

  /** A change reached HAProxy: ready again, and counted. */
  private applied(state: DesiredState): void {
    this.applyProblem = undefined;
    const { metrics, clock } = this.options;
    metrics?.changed(clock.now());
    metrics?.instances(Object.fromEntries(state.upstreams.map((u) => [u.destinationName, u.backends.reduce((n, b) => n + b.slots.filter((slot) => slot.instance).length, 0)])));
  }

  /** Reconciles after `delayMs`, or sooner if already due sooner. */
  private schedule(delayMs: number): void {
    if (this.stopped) return;
    const due = this.options.clock.now() + delayMs;
    if (this.cancelTimer && this.timerDue !== undefined && this.timerDue <= due) return;
    this.cancelTimer?.();
    this.timerDue = due;
    this.cancelTimer = this.options.clock.setTimer(delayMs, () => {
      this.cancelTimer = undefined;
      this.timerDue = undefined;
      this.chain = this.chain.then(() => this.reconcile()).catch((err: Error) => {
        if (!this.running) this.fatal?.(err);
        else {
          this.applyProblem = err.message;
          this.options.logger.error(`could not apply Consul's changes: ${err.message}`);
        }
      });
    });
  }

  private async reconcile(): Promise<void> {
    const { roots, leaf } = this.snapshot;
    if (this.stopped || !roots || !leaf) return;
    const { clock, driver, logger, paths } = this.options;
    const upstreams = upstreamsToCheck(this.snapshot, roots.TrustDomain);
    this.identities.refresh(upstreams, identityCheckMaterial(leaf, roots));
    const retryAt = this.identities.nextRetryAt();
    if (retryAt !== undefined) this.schedule(Math.max(0, retryAt - clock.now()));
    if (!this.running) {
      const ready = readiness(this.snapshot, this.identities.settled(), clock.now() - this.startedAt, this.options.upstreamWaitMs ?? 5_000);
      if (!ready.ready) {
        if (ready.recheckInMs !== undefined) this.schedule(ready.recheckInMs);
        return;
      }
    }
    const desired = buildDesiredState(consulSnapshot(this.snapshot, this.identities.verified(upstreams)), paths, this.running);
    this.logChainChanges(desired);
    this.logProxySettingWarnings(desired);
    const leftToLua = desired.nativeL7.leftToLua;
    if (leftToLua.length > 0 && JSON.stringify(leftToLua) !== JSON.stringify(this.running?.nativeL7.leftToLua ?? [])) {
      logger.info("native L7 rules leave these intentions to the authorizer (decided per request in Lua)", { intentions: leftToLua.join("; ") });
    }
    if (!this.running) {
      driver.writeFiles(desired);
      await driver.start();
      this.running = desired;
      this.applied(desired);
      this.worker = { caFileCommitted: false };
      logger.info("HAProxy started", { pid: driver.pid, config: paths.configFile, leafSerial: desired.leafSerial, listener: `${desired.publicListener.bindAddress}:${desired.publicListener.bindPort}` });
      return;
    }
    const plan = planChanges(this.running, desired, this.options.capabilities ?? reloadForCertificates, this.worker);
    if (plan.kind === "none") return;
    // Dual-write first: whatever happens next, a reload or restart reproduces the desired state.
    driver.writeFiles(desired);
    if (plan.kind === "reload") return this.reload(plan.reason, plan.validation, desired);
    if (!(await this.applyOperations(plan.operations, desired))) return;
    this.running = runningAfterRuntime(this.running, desired);
    this.applied(desired);
    // New native L7 rules need a reload: after a quiet period, so that a burst of intention changes makes one.
    if (!sameNativeRules(this.running, desired)) this.schedule(this.options.nativeRulesQuietMs ?? 2_000);
  }

  /** Runs runtime operations in order; false when one that must succeed failed (a reload was attempted instead). */
  private async applyOperations(operations: RuntimeOperation[], desired: DesiredState): Promise<boolean> {
    const { driver, logger } = this.options;
    for (const operation of operations) {
      try {
        const done = await driver.runtime(operation);
        this.options.metrics?.runtimeOperation(operation.kind, "applied");
        if (operation.kind === "update-ca-file") this.worker = { caFileCommitted: true };
        if (operation.kind !== "revoke-connections") logger.info("applied change", { change: operation.change, path: runtimePath(operation) });
        for (const line of done) logger.info(line, { change: operation.change, path: runtimePath(operation) });
      } catch (err) {
        this.options.metrics?.runtimeOperation(operation.kind, "failed");
        const attempted = bestEffort[operation.kind];
        if (attempted) logger.warn(`could not ${attempted}: ${(err as Error).message}`, { change: operation.change });
        else {
          await this.reload(`runtime command failed (${(err as Error).message})`, "haproxy -c", desired);
          return false;
        }
      }
    }
    return true;
  }

  /** The access log's and the mesh TLS's warnings, once each time they change (a setting not honoured is never silent). */
  private logProxySettingWarnings(desired: DesiredState): void {
    const before = new Set([...(this.running?.accessLog?.warnings ?? []), ...(this.running?.meshTls.warnings ?? [])]);
    const now = [...(desired.accessLog?.warnings ?? []), ...desired.meshTls.warnings];
    if (this.running && before.size === now.length && now.every((warning) => before.has(warning))) return;
    for (const warning of now) this.options.logger.warn(warning);
  }

  /** One line per discovery chain that changed (or is seen first), and one per field it approximates. */
  private logChainChanges(desired: DesiredState): void {
    const before = new Map(this.running?.upstreams.map((u) => [u.name, u]));
    for (const upstream of desired.upstreams) {
      if (!upstream.chain) continue;
      const old = before.get(upstream.name);
      const summary = (u: typeof upstream) => JSON.stringify([u.chain, u.backends.map((b) => b.name), u.chainWarnings]);
      if (old && summary(old) === summary(upstream)) continue;
      this.options.logger.info(`discovery chain of upstream ${upstream.destinationName}: ${describeShape(upstream)}`, { backends: upstream.backends.map((b) => b.name).join(",") });
      for (const warning of upstream.chainWarnings) this.options.logger.warn(`discovery chain of upstream ${upstream.destinationName}: ${warning}`);
    }
  }

  private async reload(reason: string, validation: ReloadValidation, desired: DesiredState): Promise<void> {
    const { driver, logger } = this.options;
    try {
      const { newMaster, ...timings } = await driver.reload(validation, desired);
      this.running = desired;
      this.options.metrics?.reload(reason, "applied");
      this.applied(desired);
      this.worker = { caFileCommitted: false };
      const path = newMaster
        ? "new master for the access log file (haproxy -c, listeners taken over with -x, old master soft-stopped)"
        : validation === "haproxy -c"
          ? "validated reload (haproxy -c, master CLI reload)"
          : "seamless reload (leaf key pair checked, master CLI reload)";
      logger.info("applied change", { change: reason, path, ...timings });
    } catch (err) {
      driver.writeFiles(this.running!);
      this.options.metrics?.reload(reason, "refused");
      this.applyProblem = `reload refused (${(err as Error).message})`;
      const retryInMs = this.options.reloadRetryMs ?? 30_000;
      logger.error(`reload refused, HAProxy keeps its current configuration: ${(err as Error).message}`, { change: reason, retryInMs });
      // Consul may not change again soon: try again later (a passing problem, e.g. HAProxy restarting).
      this.schedule(retryInMs);
    }
  }
}
