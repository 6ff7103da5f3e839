// Pure: what the watches have delivered so far, which watches the sidecar
// needs, and when it is complete enough to serve (the shape of Consul's
// proxycfg snapshot and its Valid()).
import type { SnapshotPart, UpstreamInstances, WatchId } from "./consul-watches.js";
import type { CaRoots, IntentionsAtIndex, LeafCertificate, ServiceInstanceEntry } from "./consul-replies.js";
import type { ConsulSnapshot } from "./desired-state.js";
import { parseSidecarSpec, type SidecarSpec } from "./sidecar-spec.js";
import type { UpstreamToCheck } from "./upstream-identity.js";

export interface SidecarSnapshot {
  spec: SidecarSpec;
  roots?: CaRoots;
  leaf?: LeafCertificate;
  intentions?: IntentionsAtIndex;
  /** By upstream name (UpstreamSpec.name); missing = not known yet. */
  instances: Record<string, UpstreamInstances>;
}

export function wantedWatches(spec: SidecarSpec): WatchId[] {
  const service = spec.publicListener.destinationServiceName;
  return [
    { kind: "registration", proxyId: spec.proxyId },
    { kind: "roots" },
    { kind: "leaf", service },
    { kind: "intentions", service },
    ...spec.upstreams.map((upstream): WatchId => ({ kind: "upstream", upstream })),
  ];
}

/** The snapshot with `part` in it; throws SidecarSpecError for a registration it cannot serve. */
export function withPart(snapshot: SidecarSnapshot, part: SnapshotPart): SidecarSnapshot {
  switch (part.kind) {
    case "registration": {
      const spec = parseSidecarSpec(part.value, snapshot.spec.publicListener.localServicePort);
      const kept = Object.fromEntries(spec.upstreams.filter((u) => snapshot.instances[u.name]).map((u) => [u.name, snapshot.instances[u.name]!]));
      return { ...snapshot, spec, instances: kept };
    }
    case "roots":
      return { ...snapshot, roots: part.value };
    case "leaf":
      return { ...snapshot, leaf: part.value };
    case "intentions":
      return { ...snapshot, intentions: part.value };
    case "upstream": {
      const name = part.id.upstream.name;
      if (!snapshot.spec.upstreams.some((u) => u.name === name)) return snapshot;
      return { ...snapshot, instances: { ...snapshot.instances, [name]: part.value } };
    }
  }
}

/** The upstream instances known, with the identity each must prove. */
export function upstreamsToCheck(snapshot: SidecarSnapshot, trustDomain: string): UpstreamToCheck[] {
  return snapshot.spec.upstreams.flatMap((upstream) => {
    const instances = snapshot.instances[upstream.name];
    return instances ? [{ upstreamName: upstream.name, instances, expected: { trustDomain, service: instances.service, datacenter: upstream.datacenter } }] : [];
  });
}

/** Not ready: `recheckInMs` says when waiting alone can change that (otherwise only a new snapshot part can). */
export type Readiness = { ready: true } | { ready: false; recheckInMs?: number };

/**
 * Pure: may HAProxy be started from this snapshot? Roots and leaf are needed.
 * The first start also waits (at most `upstreamWaitMs`) for every upstream's
 * instances and their identity checks, so that it does not start (or, after a
 * controller restart, take over) with empty upstream backends.
 */
export function readiness(snapshot: SidecarSnapshot, identitiesSettled: boolean, sinceStartMs: number, upstreamWaitMs: number): Readiness {
  if (!snapshot.roots || !snapshot.leaf) return { ready: false };
  const allKnown = snapshot.spec.upstreams.every((u) => snapshot.instances[u.name]);
  if ((allKnown && identitiesSettled) || sinceStartMs >= upstreamWaitMs) return { ready: true };
  return { ready: false, recheckInMs: upstreamWaitMs - sinceStartMs };
}

/** The snapshot as the desired state is built from it: complete, with only verified instances. */
export function consulSnapshot(snapshot: SidecarSnapshot, verifiedInstances: Record<string, ServiceInstanceEntry[]>): ConsulSnapshot {
  return { sidecar: snapshot.spec, roots: snapshot.roots!, leaf: snapshot.leaf!, upstreamInstances: verifiedInstances, intentions: snapshot.intentions };
}
