// Pure: a Consul snapshot → the HAProxy this sidecar should be running.
import { leafPem, rootsPem } from "./consul-pem.js";
import type { CaRoots, IntentionsAtIndex, LeafCertificate, ServiceInstanceEntry } from "./consul-replies.js";
import type { PublicListenerSpec, SidecarSpec, UpstreamSpec } from "./sidecar-spec.js";

/** What Consul says, as last seen by the watches. */
export interface ConsulSnapshot {
  sidecar: SidecarSpec;
  roots: CaRoots;
  leaf: LeafCertificate;
  /** Healthy instances per upstream name (UpstreamSpec.name); missing = not known yet. */
  upstreamInstances: Record<string, ServiceInstanceEntry[]>;
  /** The intentions matching this destination; only their change matters (cache flush, revocation). */
  intentions?: IntentionsAtIndex;
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
  luaBundle: string;
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

export interface UpstreamState extends UpstreamSpec {
  slots: ServerSlot[];
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
    .sort((a, b) => a.id.localeCompare(b.id));
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

/** Pure: snapshot (+ what is running, for stable slots) → desired state. */
export function buildDesiredState(snapshot: ConsulSnapshot, paths: HaproxyPaths, running?: DesiredState): DesiredState {
  const previousSlots = new Map(running?.upstreams.map((u) => [u.name, u.slots]));
  return {
    paths,
    publicListener: snapshot.sidecar.publicListener,
    upstreams: snapshot.sidecar.upstreams.map((upstream) => ({
      ...upstream,
      slots: assignSlots(previousSlots.get(upstream.name), instancesFromEntries(snapshot.upstreamInstances[upstream.name] ?? [])),
    })),
    leafCertificatePem: leafPem(snapshot.leaf),
    leafSerial: snapshot.leaf.SerialNumber,
    caRootsPem: rootsPem(snapshot.roots),
    trustDomain: snapshot.roots.TrustDomain,
    intentionsFingerprint: intentionsFingerprint(snapshot.intentions),
    intentionsIndex: snapshot.intentions?.index ?? 0,
  };
}
