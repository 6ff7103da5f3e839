// Pure: a Consul snapshot → the HAProxy this sidecar should be running.
import { planAccessLog, type AccessLog } from "./access-log.js";
import { leafPem, rootsPem } from "./consul-pem.js";
import type { CaRoots, CompiledDiscoveryChain, IntentionsAtIndex, LeafCertificate, MeshEntry, ProxyDefaultsEntry, ServiceInstanceEntry } from "./consul-replies.js";
import { planMeshTls, type MeshTls } from "./mesh-tls.js";
import { planDiscoveryChain, targetQueryKey, type ChainPlan, type LoadBalancing, type RetryPolicy } from "./discovery-chain.js";
import { nativeL7Rules, type NativeL7 } from "./native-l7.js";
import { isHttpProtocol, SidecarSpecError, type PublicListenerSpec, type SidecarSpec, type UpstreamSpec } from "./sidecar-spec.js";

/** What Consul says, as last seen by the watches. */
export interface ConsulSnapshot {
  sidecar: SidecarSpec;
  roots: CaRoots;
  leaf: LeafCertificate;
  /**
   * Verified instances by group: a prepared-query upstream's name, or a chain
   * target's query key (targetQueryKey); missing = none known.
   */
  upstreamInstances: Record<string, ServiceInstanceEntry[]>;
  /** Service upstreams' discovery chains by upstream name; missing = not known yet. */
  chains: Record<string, CompiledDiscoveryChain>;
  /** The intentions matching this destination; only their change matters (cache flush, revocation). */
  intentions?: IntentionsAtIndex;
  /** The `global` proxy-defaults entry; null or missing: none. */
  proxyDefaults?: ProxyDefaultsEntry | null;
  /** The `mesh` entry; null or missing: none. */
  mesh?: MeshEntry | null;
}

/** Where things live on disk; fixed for the controller's life. */
export interface HaproxyPaths {
  configFile: string;
  leafCertificateFile: string;
  caRootsFile: string;
  statsSocket: string;
  masterSocket: string;
  /** CONNECT_PASS_MAP: written empty; the authorizer fills it at run time (lua-src/request-passes.ts). */
  passMap: string;
  /** CONNECT_SERVER_PASS_MAP: written empty; server certificates verified by connect_verify_upstream. */
  serverPassMap: string;
  luaBundle: string;
  /** The authorizer's control service (lua.connect_control), on a unix socket: controller/authorizer-control.ts. */
  controlSocket: string;
  /** HAProxy's Prometheus exporter, on a unix socket (undefined: not rendered). */
  promexSocket?: string;
}

export interface UpstreamInstance {
  /** Consul's node + service ID: stays the same while the instance lives. */
  id: string;
  address: string;
  port: number;
}

export interface ServerSlot {
  name: string;
  /** Undefined: the slot is free (server in maintenance). */
  instance?: UpstreamInstance;
}

/** One HAProxy backend of an upstream: a chain target (or the prepared query), and its server slots. */
export interface BackendState {
  name: string;
  /** The service its instances must prove to be; undefined for a prepared query (named only in its reply). */
  service?: string;
  datacenter?: string;
  connectTimeoutMs: number;
  loadBalancing: LoadBalancing;
  retry?: RetryPolicy;
  slots: ServerSlot[];
}

export interface UpstreamState extends UpstreamSpec {
  /** The discovery chain's routing; undefined for a prepared query, or a chain not known yet. */
  chain?: Pick<ChainPlan, "shape" | "routes" | "leaves">;
  /** What HAProxy 2.6 approximates or cannot do in the chain (logged, never silent). */
  chainWarnings: string[];
  backends: BackendState[];
}

export interface DesiredState {
  paths: HaproxyPaths;
  publicListener: PublicListenerSpec;
  upstreams: UpstreamState[];
  /** Leaf certificate followed by its private key, as `crt` loads it. */
  leafCertificatePem: string;
  leafSerial: string;
  /** Every current root (rotation keeps the old one trusted for a while). */
  caRootsPem: string;
  trustDomain: string;
  /** Changes when the intentions for this destination change. */
  intentionsFingerprint: string;
  /** The Consul index the intentions were read at (0: not read yet). */
  intentionsIndex: number;
  /** HTTP public listener: the L7 intentions' rules HAProxy applies itself while current (native-l7.ts). */
  nativeL7: NativeL7;
  /** proxy-defaults AccessLogs; undefined: not enabled (the built-in traffic line on stdout). */
  accessLog?: AccessLog;
  /** The mesh entry's TLS versions and suites (Envoy's defaults without one). */
  meshTls: MeshTls;
}

export const slotBlockSize = 8;

/** The address Consul's proxies dial: Service.Address, else Node.Address. */
export function instanceAddress(entry: ServiceInstanceEntry): string {
  return entry.Service.Address || entry.Node.Address;
}

export function instancesFromEntries(entries: ServiceInstanceEntry[]): UpstreamInstance[] {
  return entries
    .map((entry) => ({
      id: `${entry.Node.Node}/${entry.Service.ID}`,
      address: instanceAddress(entry),
      port: entry.Service.Port,
    }))
    // Code-unit order: the same on every host whatever its locale, and no ICU collator loaded (3 MB of RSS).
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * Pure: puts instances into server slots, keeping every instance that is
 * still there in its slot (so a change is one `set server`, never a shuffle),
 * and growing the slot count by blocks only when they no longer fit.
 */
export function assignSlots(previous: ServerSlot[] | undefined, instances: UpstreamInstance[]): ServerSlot[] {
  const needed = Math.max(slotBlockSize, Math.ceil(instances.length / slotBlockSize) * slotBlockSize);
  const count = Math.max(previous?.length ?? 0, needed);
  const byId = new Map(instances.map((i) => [i.id, i]));
  const slots: ServerSlot[] = Array.from({ length: count }, (_, n) => ({ name: `s${n + 1}` }));
  const placed = new Set<string>();
  previous?.forEach((slot, n) => {
    const still = slot.instance && byId.get(slot.instance.id);
    if (still) {
      slots[n] = { name: slots[n]!.name, instance: still };
      placed.add(still.id);
    }
  });
  let free = 0;
  for (const instance of instances) {
    if (placed.has(instance.id)) continue;
    while (slots[free]!.instance) free++;
    slots[free] = { name: slots[free]!.name, instance };
  }
  return slots;
}

/** Pure: what identifies a set of intentions (null and [] are the same: none). */
export function intentionsFingerprint(intentions: ConsulSnapshot["intentions"]): string {
  if (!intentions) return "none";
  const rules = Object.values(intentions.byDestination ?? {}).flatMap((list) => list ?? []);
  return JSON.stringify(rules.map((i) => [i.ID ?? "", i.SourceName, i.Action ?? "", i.Permissions ?? [], i.Precedence ?? 0, i.ModifyIndex ?? 0]));
}

/**
 * Pure: one upstream's state. A service upstream follows its discovery chain
 * (one backend per target); before its chain is known, or if the chain cannot
 * be served, it has one backend for its own service with no instances.
 */
function upstreamState(upstream: UpstreamSpec, snapshot: ConsulSnapshot, previousSlots: Map<string, ServerSlot[]>): UpstreamState {
  const slotsFor = (backend: string, group: string) => assignSlots(previousSlots.get(backend), instancesFromEntries(snapshot.upstreamInstances[group] ?? []));
  const plain = (chainWarnings: string[]): UpstreamState => ({
    ...upstream,
    chainWarnings,
    backends: [
      {
        name: upstream.name,
        ...(upstream.destinationType === "service" ? { service: upstream.destinationName } : {}),
        ...(upstream.datacenter ? { datacenter: upstream.datacenter } : {}),
        connectTimeoutMs: upstream.connectTimeoutMs,
        loadBalancing: { algorithm: "roundrobin" },
        slots: upstream.destinationType === "prepared_query" ? slotsFor(upstream.name, upstream.name) : slotsFor(upstream.name, ""),
      },
    ],
  });
  const chain = snapshot.chains[upstream.name];
  if (upstream.destinationType !== "service" || !chain) return plain([]);
  let plan: ChainPlan;
  try {
    plan = planDiscoveryChain(upstream, chain);
  } catch (err) {
    if (!(err instanceof SidecarSpecError)) throw err;
    return plain([`the discovery chain cannot be served (${err.message}); no instances until it changes`]);
  }
  const { backends, warnings, ...routing } = plan;
  return {
    ...upstream,
    protocol: plan.protocol,
    chain: routing,
    chainWarnings: warnings,
    backends: backends.map((backend) => ({
      name: backend.name,
      service: backend.query.service,
      datacenter: backend.query.datacenter,
      connectTimeoutMs: backend.connectTimeoutMs,
      loadBalancing: backend.loadBalancing,
      ...(backend.retry ? { retry: backend.retry } : {}),
      slots: slotsFor(backend.name, targetQueryKey(backend.query)),
    })),
  };
}

/** Pure: snapshot (+ what is running, for stable slots) → desired state. */
export function buildDesiredState(snapshot: ConsulSnapshot, paths: HaproxyPaths, running?: DesiredState): DesiredState {
  const previousSlots = new Map(running?.upstreams.flatMap((u) => u.backends.map((b) => [b.name, b.slots] as const)));
  const accessLog = planAccessLog(snapshot.proxyDefaults?.AccessLogs);
  return {
    paths,
    publicListener: snapshot.sidecar.publicListener,
    upstreams: snapshot.sidecar.upstreams.map((upstream) => upstreamState(upstream, snapshot, previousSlots)),
    leafCertificatePem: leafPem(snapshot.leaf),
    leafSerial: snapshot.leaf.SerialNumber,
    caRootsPem: rootsPem(snapshot.roots),
    trustDomain: snapshot.roots.TrustDomain,
    intentionsFingerprint: intentionsFingerprint(snapshot.intentions),
    intentionsIndex: snapshot.intentions?.index ?? 0,
    nativeL7: nativeL7For(snapshot, paths),
    ...(accessLog ? { accessLog } : {}),
    meshTls: planMeshTls(snapshot.mesh),
  };
}

/** No rules for a TCP listener (decided per connection by the agent) or before the intentions are read. */
function nativeL7For(snapshot: ConsulSnapshot, paths: HaproxyPaths): NativeL7 {
  const listener = snapshot.sidecar.publicListener;
  if (!isHttpProtocol(listener.protocol) || !snapshot.intentions) return { lines: [], index: 0, leftToLua: [] };
  const service = listener.destinationServiceName;
  return nativeL7Rules(snapshot.intentions.byDestination[service] ?? [], service, snapshot.intentions.index, paths.passMap);
}
