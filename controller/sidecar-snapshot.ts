// Pure: what the watches have delivered so far, which watches the sidecar
// needs, and when it is complete enough to serve (the shape of Consul's
// proxycfg snapshot and its Valid()).
import type { ChainRequest, SnapshotPart, UpstreamInstances, WatchId } from "./consul-watches.js";
import type { CaRoots, CompiledDiscoveryChain, DiscoveryChainOverrides, IntentionsAtIndex, LeafCertificate, MeshEntry, ProxyDefaultsEntry, ServiceInstanceEntry } from "./consul-replies.js";
import { targetQuery, targetQueryKey, type TargetQuery } from "./discovery-chain.js";
import type { ConsulSnapshot } from "./desired-state.js";
import { parseSidecarSpec, type SidecarSpec, type UpstreamSpec } from "./sidecar-spec.js";
import type { UpstreamToCheck } from "./upstream-identity.js";

export interface SidecarSnapshot {
  spec: SidecarSpec;
  roots?: CaRoots;
  leaf?: LeafCertificate;
  intentions?: IntentionsAtIndex;
  /** The `global` proxy-defaults entry (access logs); null = none, undefined = not known yet. */
  proxyDefaults?: ProxyDefaultsEntry | null;
  /** The `mesh` entry (TLS); null = none, undefined = not known yet. */
  mesh?: MeshEntry | null;
  /** Prepared-query upstreams' instances, by upstream name (UpstreamSpec.name); missing = not known yet. */
  instances: Record<string, UpstreamInstances>;
  /** Service upstreams' discovery chains, by upstream name; missing = not known yet. */
  chains: Record<string, CompiledDiscoveryChain>;
  /** Chain targets' instances, by targetQueryKey; missing = not known yet. */
  targetInstances: Record<string, ServiceInstanceEntry[]>;
}

/** Pure: what a service upstream's chain watch asks Consul (its own Config as overrides, as Consul's proxycfg does). */
export function chainRequest(upstream: UpstreamSpec): ChainRequest {
  const overrides: DiscoveryChainOverrides = {
    ...(upstream.configured?.connectTimeoutMs ? { OverrideConnectTimeout: `${upstream.configured.connectTimeoutMs}ms` } : {}),
    ...(upstream.configured?.protocol ? { OverrideProtocol: upstream.configured.protocol } : {}),
  };
  return { name: upstream.name, destinationName: upstream.destinationName, datacenter: upstream.datacenter, overrides };
}

/** Pure: the distinct instance queries of a chain's targets (failover targets included). */
export function chainTargetQueries(chain: CompiledDiscoveryChain): TargetQuery[] {
  const byKey = new Map(Object.values(chain.Targets).map((target) => [targetQueryKey(targetQuery(target)), targetQuery(target)]));
  return [...byKey.values()];
}

/** Pure: the watches the snapshot needs; it grows and shrinks with the upstreams' chains. */
export function wantedWatches(snapshot: Pick<SidecarSnapshot, "spec" | "chains">): WatchId[] {
  const { spec } = snapshot;
  const service = spec.publicListener.destinationServiceName;
  const targets = new Map<string, TargetQuery>();
  for (const upstream of spec.upstreams) {
    const chain = snapshot.chains[upstream.name];
    if (upstream.destinationType === "service" && chain) for (const query of chainTargetQueries(chain)) targets.set(targetQueryKey(query), query);
  }
  return [
    { kind: "registration", proxyId: spec.proxyId },
    { kind: "roots" },
    { kind: "leaf", service },
    { kind: "intentions", service },
    { kind: "proxy-defaults" },
    { kind: "mesh" },
    ...spec.upstreams.map((upstream): WatchId => (upstream.destinationType === "service" ? { kind: "chain", upstream: chainRequest(upstream) } : { kind: "upstream", upstream })),
    ...[...targets.values()].map((query): WatchId => ({ kind: "target", query })),
  ];
}

/** Pure: the snapshot without the target instances no chain needs any more. */
function withLiveTargets(snapshot: SidecarSnapshot): SidecarSnapshot {
  const live = new Set(Object.values(snapshot.chains).flatMap((chain) => chainTargetQueries(chain).map(targetQueryKey)));
  return { ...snapshot, targetInstances: Object.fromEntries(Object.entries(snapshot.targetInstances).filter(([key]) => live.has(key))) };
}

/** The snapshot with `part` in it; throws SidecarSpecError for a registration it cannot serve. */
export function withPart(snapshot: SidecarSnapshot, part: SnapshotPart): SidecarSnapshot {
  switch (part.kind) {
    case "registration": {
      const spec = parseSidecarSpec(part.value, snapshot.spec.publicListener.localServicePort);
      const kept = Object.fromEntries(spec.upstreams.filter((u) => snapshot.instances[u.name]).map((u) => [u.name, snapshot.instances[u.name]!]));
      const chains = Object.fromEntries(spec.upstreams.filter((u) => snapshot.chains[u.name]).map((u) => [u.name, snapshot.chains[u.name]!]));
      return withLiveTargets({ ...snapshot, spec, instances: kept, chains });
    }
    case "roots":
      return { ...snapshot, roots: part.value };
    case "leaf":
      return { ...snapshot, leaf: part.value };
    case "intentions":
      return { ...snapshot, intentions: part.value };
    case "proxy-defaults":
      return { ...snapshot, proxyDefaults: part.value };
    case "mesh":
      return { ...snapshot, mesh: part.value };
    case "upstream": {
      const name = part.id.upstream.name;
      if (!snapshot.spec.upstreams.some((u) => u.name === name)) return snapshot;
      return { ...snapshot, instances: { ...snapshot.instances, [name]: part.value } };
    }
    case "chain": {
      const name = part.id.upstream.name;
      if (!snapshot.spec.upstreams.some((u) => u.name === name)) return snapshot;
      return withLiveTargets({ ...snapshot, chains: { ...snapshot.chains, [name]: part.value } });
    }
    case "target":
      return { ...snapshot, targetInstances: { ...snapshot.targetInstances, [targetQueryKey(part.id.query)]: part.value } };
  }
}

export function emptySnapshot(spec: SidecarSpec): SidecarSnapshot {
  return { spec, instances: {}, chains: {}, targetInstances: {} };
}

/**
 * The upstream instances known, with the identity each must prove: a chain
 * target's instances prove the target's service and datacenter (a redirect,
 * a route or a failover can lead to another service than the upstream's).
 */
export function upstreamsToCheck(snapshot: SidecarSnapshot, trustDomain: string): UpstreamToCheck[] {
  const groups = new Map<string, UpstreamToCheck>();
  for (const upstream of snapshot.spec.upstreams) {
    const instances = snapshot.instances[upstream.name];
    if (upstream.destinationType === "prepared_query" && instances) {
      groups.set(upstream.name, { group: upstream.name, instances, expected: { trustDomain, service: instances.service, datacenter: upstream.datacenter } });
    }
    const chain = snapshot.chains[upstream.name];
    if (upstream.destinationType !== "service" || !chain) continue;
    for (const query of chainTargetQueries(chain)) {
      const key = targetQueryKey(query);
      const entries = snapshot.targetInstances[key];
      if (entries) groups.set(key, { group: key, instances: { entries, service: query.service }, expected: { trustDomain, service: query.service, datacenter: query.datacenter } });
    }
  }
  return [...groups.values()];
}

/** Pure: every upstream's instances are known (prepared queries), and every chain with all its targets' instances. */
function allUpstreamsKnown(snapshot: SidecarSnapshot): boolean {
  return snapshot.spec.upstreams.every((upstream) => {
    if (upstream.destinationType === "prepared_query") return Boolean(snapshot.instances[upstream.name]);
    const chain = snapshot.chains[upstream.name];
    return Boolean(chain) && chainTargetQueries(chain!).every((query) => snapshot.targetInstances[targetQueryKey(query)]);
  });
}

/** Not ready: `recheckInMs` says when waiting alone can change that (otherwise only a new snapshot part can). */
export type Readiness = { ready: true } | { ready: false; recheckInMs?: number };

/**
 * Pure: may HAProxy be started from this snapshot? Roots, leaf and the mesh and proxy-defaults entries (or their absence) are needed.
 * The first start also waits (at most `upstreamWaitMs`) for every upstream's
 * instances and their identity checks, so that it does not start (or, after a
 * controller restart, take over) with empty upstream backends.
 */
export function readiness(snapshot: SidecarSnapshot, identitiesSettled: boolean, sinceStartMs: number, upstreamWaitMs: number): Readiness {
  // The mesh entry sets the listener's TLS versions (Consul's proxycfg waits for it too); proxy-defaults, the access log.
  if (!snapshot.roots || !snapshot.leaf || snapshot.mesh === undefined || snapshot.proxyDefaults === undefined) return { ready: false };
  const allKnown = allUpstreamsKnown(snapshot);
  if ((allKnown && identitiesSettled) || sinceStartMs >= upstreamWaitMs) return { ready: true };
  return { ready: false, recheckInMs: upstreamWaitMs - sinceStartMs };
}

/** The snapshot as the desired state is built from it: complete, with only verified instances. */
export function consulSnapshot(snapshot: SidecarSnapshot, verifiedInstances: Record<string, ServiceInstanceEntry[]>): ConsulSnapshot {
  return { sidecar: snapshot.spec, roots: snapshot.roots!, leaf: snapshot.leaf!, upstreamInstances: verifiedInstances, chains: snapshot.chains, intentions: snapshot.intentions, proxyDefaults: snapshot.proxyDefaults ?? null, mesh: snapshot.mesh ?? null };
}
