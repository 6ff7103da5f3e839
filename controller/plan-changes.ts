// Pure: what is running + what should run → the cheapest safe operations.
import type { BackendState, DesiredState, UpstreamState } from "./desired-state.js";
import { publicFrontendName } from "./haproxy-config.js";
import { reloadForCertificates, type RuntimeCapabilities } from "./haproxy-version.js";

/** A change HAProxy takes at run time, with a human-readable description for the log. */
export type RuntimeOperation =
  | { kind: "set-server"; backend: string; server: string; address?: string; port?: number; ready: boolean; change: string }
  | { kind: "update-certificate"; file: string; pem: string; change: string }
  | { kind: "update-ca-file"; file: string; pem: string; change: string }
  | { kind: "sync-intentions"; target: string; index: number; change: string }
  | { kind: "flush-authorization-cache"; change: string }
  | { kind: "revoke-connections"; frontend: string; target: string; change: string }
  | { kind: "enable-native-l7"; target: string; index: number; change: string };

/**
 * How a reload is validated before the master CLI runs it: `haproxy -c` when
 * the configuration text changes; when only the leaf changes (the text is the
 * same), checking the key pair is enough and spares `haproxy -c`, which costs
 * as much as the reload itself.
 */
export type ReloadValidation = "haproxy -c" | "key pair";

/** What to do to take HAProxy from what runs to what should run. */
export type Plan =
  | { kind: "none" }
  | { kind: "runtime"; operations: RuntimeOperation[] }
  | { kind: "reload"; reason: string; validation: ReloadValidation };

/** Whether the running configuration's native L7 rules are those `desired` would render. */
export function sameNativeRules(running: DesiredState, desired: DesiredState): boolean {
  return JSON.stringify(running.nativeL7.lines) === JSON.stringify(desired.nativeL7.lines);
}

/**
 * After a change the running rules still fit, the authorizer switches them on
 * again (after a start or reload it does so itself: CONNECT_NATIVE_L7_RULES).
 */
export function enableNativeL7(state: DesiredState, change: string): RuntimeOperation {
  return { kind: "enable-native-l7", target: state.publicListener.destinationServiceName, index: state.nativeL7.index, change };
}

/**
 * What runs after a runtime plan: the desired state, except the native L7
 * rules, which only a reload changes (until then the authorizer decides).
 */
export function runningAfterRuntime(running: DesiredState, desired: DesiredState): DesiredState {
  return sameNativeRules(running, desired) ? desired : { ...desired, nativeL7: running.nativeL7 };
}

/** Everything that a runtime command cannot change (a difference means a reload). */
function structureOf(state: DesiredState) {
  return {
    paths: state.paths,
    publicListener: state.publicListener,
    // Warnings are derived from the chain: they change only with it.
    upstreams: state.upstreams.map(({ backends, chain, chainWarnings: _warnings, ...rest }) => ({
      ...rest,
      chain,
      backends: backends.map(({ slots, ...backend }) => ({ ...backend, slotCount: slots.length })),
    })),
  };
}

type UpstreamStructure = ReturnType<typeof structureOf>["upstreams"][number];

/** Pure: what changed in an upstream's discovery chain, in a few words (e.g. "router added", "targets added: v2.api…"). */
export function describeChainChange(before: UpstreamStructure, after: UpstreamStructure): string {
  const words: string[] = [];
  const shapeBefore = before.chain?.shape;
  const shapeAfter = after.chain?.shape;
  const toggled = (what: "router" | "splitter") => {
    if (!shapeBefore?.[what] && shapeAfter?.[what]) words.push(`${what} added`);
    if (shapeBefore?.[what] && !shapeAfter?.[what]) words.push(`${what} removed`);
  };
  toggled("router");
  toggled("splitter");
  const backendsBefore = new Map(before.backends.map((b) => [b.name, b]));
  const backendsAfter = new Map(after.backends.map((b) => [b.name, b]));
  const added = [...backendsAfter.keys()].filter((name) => !backendsBefore.has(name));
  const removed = [...backendsBefore.keys()].filter((name) => !backendsAfter.has(name));
  if (added.length) words.push(`backends added: ${added.join(", ")}`);
  if (removed.length) words.push(`backends removed: ${removed.join(", ")}`);
  const json = (value: unknown) => JSON.stringify(value);
  if (words.length === 0) {
    if (json(before.chain?.routes) !== json(after.chain?.routes)) words.push("routes changed");
    if (json(before.chain?.leaves.map((l) => l.split)) !== json(after.chain?.leaves.map((l) => l.split))) words.push("splits changed");
    if (json(before.chain?.leaves.map((l) => l.backends)) !== json(after.chain?.leaves.map((l) => l.backends))) words.push("targets or failover changed");
    if (json(before.chain?.leaves.map((l) => l.requestTimeoutMs)) !== json(after.chain?.leaves.map((l) => l.requestTimeoutMs))) words.push("request timeouts changed");
    const settings = (backends: Map<string, UpstreamStructure["backends"][number]>) => json([...backends.values()].map(({ slotCount: _slots, ...rest }) => rest));
    if (settings(backendsBefore) !== settings(backendsAfter)) words.push("target settings changed");
    if (before.protocol !== after.protocol) words.push(`protocol ${before.protocol} -> ${after.protocol}`);
  }
  return words.join(", ") || "settings changed";
}

/** Pure: the reload reasons of the proxy-defaults access log and the mesh entry's TLS (both only in haproxy.cfg). */
export function proxySettingsChanges(running: DesiredState, desired: DesiredState): string[] {
  const reasons: string[] = [];
  const log = (state: DesiredState) => (state.accessLog ? `${state.accessLog.sink.kind}${state.accessLog.sink.kind === "file" ? ` ${state.accessLog.sink.path}` : ""}` : "off");
  if (JSON.stringify(running.accessLog) !== JSON.stringify(desired.accessLog)) reasons.push(`proxy-defaults access logs changed (${log(running)} -> ${log(desired)})`);
  const tls = ({ meshTls: { incoming, outgoing } }: DesiredState) => `incoming ${incoming.minVersion}-${incoming.maxVersion}, outgoing ${outgoing.minVersion}-${outgoing.maxVersion}`;
  const { warnings: _before, ...tlsBefore } = running.meshTls;
  const { warnings: _after, ...tlsAfter } = desired.meshTls;
  if (JSON.stringify(tlsBefore) !== JSON.stringify(tlsAfter)) reasons.push(`mesh TLS changed (${tls(running)} -> ${tls(desired)})`);
  return reasons;
}

/** Pure: human-readable reasons for a reload; empty when none is needed. */
export function structuralChanges(running: DesiredState, desired: DesiredState): string[] {
  const reasons: string[] = proxySettingsChanges(running, desired);
  const before = structureOf(running);
  const after = structureOf(desired);
  if (JSON.stringify(before.paths) !== JSON.stringify(after.paths)) reasons.push("file locations changed");
  for (const key of new Set([...Object.keys(before.publicListener), ...Object.keys(after.publicListener)]) as Set<keyof typeof after.publicListener>) {
    if (before.publicListener[key] !== after.publicListener[key]) {
      reasons.push(`public listener ${key} ${String(before.publicListener[key])} -> ${String(after.publicListener[key])}`);
    }
  }
  const oldUpstreams = new Map(before.upstreams.map((u) => [u.name, u]));
  const newUpstreams = new Map(after.upstreams.map((u) => [u.name, u]));
  for (const [name, upstream] of newUpstreams) {
    const old = oldUpstreams.get(name);
    if (!old) reasons.push(`upstream ${name} added on ${upstream.bindAddress}:${upstream.bindPort}`);
    else if (JSON.stringify(old) !== JSON.stringify(upstream)) reasons.push(upstreamChange(old, upstream));
  }
  for (const name of oldUpstreams.keys()) if (!newUpstreams.has(name)) reasons.push(`upstream ${name} removed`);
  if (before.upstreams.map((u) => u.name).join() !== after.upstreams.map((u) => u.name).join() && reasons.length === 0) {
    reasons.push("upstream order changed");
  }
  return reasons;
}

function upstreamChange(old: UpstreamStructure, upstream: UpstreamStructure): string {
  const { chain: oldChain, backends: oldBackends, ...oldRest } = old;
  const { chain: newChain, backends: newBackends, ...newRest } = upstream;
  const sameNames = oldBackends.map((b) => b.name).join() === newBackends.map((b) => b.name).join();
  if (sameNames && JSON.stringify(oldChain) === JSON.stringify(newChain) && JSON.stringify(oldRest) === JSON.stringify(newRest)) {
    const grown = newBackends.find((b, n) => b.slotCount !== oldBackends[n]!.slotCount);
    const without = (backends: typeof newBackends) => JSON.stringify(backends.map(({ slotCount: _slots, ...rest }) => rest));
    if (grown && without(oldBackends) === without(newBackends)) return `upstream ${grown.name} needs ${grown.slotCount} server slots (has ${oldBackends.find((b) => b.name === grown.name)!.slotCount})`;
  }
  // Only the upstream's own settings (limits, passive health check, ...) changed: name them.
  const fields = Object.keys({ ...oldRest, ...newRest }) as (keyof typeof newRest)[];
  const changedFields = fields.filter((key) => JSON.stringify(oldRest[key]) !== JSON.stringify(newRest[key]));
  if (changedFields.length > 0 && JSON.stringify(oldChain) === JSON.stringify(newChain) && JSON.stringify(oldBackends) === JSON.stringify(newBackends)) {
    return `upstream ${upstream.name} settings changed (${changedFields.join(", ")})`;
  }
  const destination = `${upstream.destinationName}${upstream.datacenter ? ` in ${upstream.datacenter}` : ""}`;
  if (oldChain || newChain) return `upstream ${destination}: discovery chain changed (${describeChainChange(old, upstream)})`;
  return `upstream ${upstream.name} settings changed`;
}

function slotChanges(running: UpstreamState, desired: UpstreamState): RuntimeOperation[] {
  const runningBackends = new Map(running.backends.map((b) => [b.name, b]));
  return desired.backends.flatMap((backend) => backendSlotChanges(runningBackends.get(backend.name)!, backend));
}

function backendSlotChanges(running: BackendState, desired: BackendState): RuntimeOperation[] {
  const operations: RuntimeOperation[] = [];
  desired.slots.forEach((slot, n) => {
    const was = running.slots[n]?.instance;
    const now = slot.instance;
    if (JSON.stringify(was) === JSON.stringify(now)) return;
    if (now) {
      operations.push({
        kind: "set-server",
        backend: desired.name,
        server: slot.name,
        address: now.address,
        port: now.port,
        ready: true,
        change: was ? `instance ${now.id} replaces ${was.id} in ${desired.name}/${slot.name}` : `instance ${now.id} (${now.address}:${now.port}) added to ${desired.name}/${slot.name}`,
      });
    } else if (was) {
      operations.push({ kind: "set-server", backend: desired.name, server: slot.name, ready: false, change: `instance ${was.id} removed from ${desired.name}/${slot.name}` });
    }
  });
  return operations;
}

/** What the running HAProxy worker has been through since it started (what it can still take at run time depends on it). */
export interface WorkerHistory {
  /** A `commit ssl ca-file` succeeded in this worker. */
  caFileCommitted: boolean;
}

export const freshWorker: WorkerHistory = { caFileCommitted: false };

/** Pure: why a renewed leaf needs a reload on this HAProxy worker; undefined when it can be swapped at run time. */
function leafReloadReason(capabilities: RuntimeCapabilities, worker: WorkerHistory): string | undefined {
  if (!capabilities.swapListenerCertificate) return `HAProxy ${capabilities.label} cannot swap a mutual-TLS listener's certificate at run time`;
  if (worker.caFileCommitted && !capabilities.swapCertificateAfterCaCommit) {
    return `this HAProxy ${capabilities.label} worker had its CA file replaced at run time, after which commit ssl cert no longer reaches the listener (and another CA commit can crash it: HAProxy issue #3165)`;
  }
  return undefined;
}

/** Pure: the certificates of `running`'s CA bundle that `desired`'s no longer has. */
function removedCaCertificates(running: DesiredState, desired: DesiredState): number {
  const certificatesIn = (pem: string) => pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  const kept = new Set(certificatesIn(desired.caRootsPem));
  return certificatesIn(running.caRootsPem).filter((certificate) => !kept.has(certificate)).length;
}

/** Everything haproxy.cfg's text is rendered from (certificates live in their own files). */
function configTextInputs(state: DesiredState): string {
  return JSON.stringify([state.paths, state.publicListener, state.upstreams, state.trustDomain, state.accessLog, state.meshTls]);
}

/**
 * Pure: the plan that takes HAProxy from `running` to `desired`.
 * A structural difference gives a single reload (the files already hold every
 * other change); otherwise runtime commands only: certificates first, so
 * servers enabled in the same batch already use the new ones.
 */
export function planChanges(running: DesiredState, desired: DesiredState, capabilities: RuntimeCapabilities = reloadForCertificates, worker: WorkerHistory = freshWorker): Plan {
  const reasons = structuralChanges(running, desired);
  if (running.trustDomain !== desired.trustDomain) reasons.push(`trust domain ${running.trustDomain} -> ${desired.trustDomain}`);
  const leafReload = leafReloadReason(capabilities, worker);
  if (leafReload && running.leafCertificatePem !== desired.leafCertificatePem) {
    reasons.push(`leaf certificate renewed (serial ${running.leafSerial} -> ${desired.leafSerial}); ${leafReload}`);
  }
  if (!capabilities.caFileReachesListener && running.caRootsPem !== desired.caRootsPem) {
    reasons.push(`CA roots changed; HAProxy ${capabilities.label}'s commit ssl ca-file does not reach the listener's verification`);
  }
  // A TLS session resumes without the client's certificate being verified again: after `commit ssl
  // ca-file` (2.6.12) a session established under a removed root still resumed (consul-faults.test.ts).
  // A reload starts a worker with new session-ticket keys and an empty session cache.
  const removed = capabilities.caFileReachesListener ? removedCaCertificates(running, desired) : 0;
  if (removed > 0) reasons.push(`CA roots changed, ${removed} certificate(s) removed: a reload, so no TLS session they verified can be resumed`);
  if (reasons.length > 0) {
    // Only a leaf is checked by its key pair; new roots or text go through haproxy -c.
    const validation = configTextInputs(running) === configTextInputs(desired) && running.caRootsPem === desired.caRootsPem ? "key pair" : "haproxy -c";
    return { kind: "reload", reason: reasons.join("; "), validation };
  }
  const operations: RuntimeOperation[] = [];
  if (running.leafCertificatePem !== desired.leafCertificatePem) {
    operations.push({ kind: "update-certificate", file: desired.paths.leafCertificateFile, pem: desired.leafCertificatePem, change: `leaf certificate renewed (serial ${running.leafSerial} -> ${desired.leafSerial})` });
  }
  if (running.caRootsPem !== desired.caRootsPem) {
    operations.push({ kind: "update-ca-file", file: desired.paths.caRootsFile, pem: desired.caRootsPem, change: "CA roots changed" });
  }
  const runningUpstreams = new Map(running.upstreams.map((u) => [u.name, u]));
  for (const upstream of desired.upstreams) operations.push(...slotChanges(runningUpstreams.get(upstream.name)!, upstream));
  const service = desired.publicListener.destinationServiceName;
  if (running.intentionsFingerprint !== desired.intentionsFingerprint) {
    const change = `intentions for ${service} changed`;
    // The authorizer's own list first (no older list decides a request after this), then the agent's verdicts, then what is already open.
    operations.push(
      { kind: "sync-intentions", target: service, index: desired.intentionsIndex, change },
      { kind: "flush-authorization-cache", change },
      { kind: "revoke-connections", frontend: publicFrontendName, target: service, change },
    );
    // The flush switched the native L7 rules off; the same rules fit the new list: back on at once.
    if (sameNativeRules(running, desired) && desired.nativeL7.lines.length > 0) operations.push(enableNativeL7(desired, change));
  } else if (!sameNativeRules(running, desired)) {
    // The authorizer decides these requests meanwhile: the rules follow after a quiet period (the loop's), by a reload.
    return { kind: "reload", reason: `native L7 rules for ${service} follow its intentions at index ${desired.intentionsIndex}`, validation: "haproxy -c" };
  }
  return operations.length > 0 ? { kind: "runtime", operations } : { kind: "none" };
}
