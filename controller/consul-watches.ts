// Every Consul watch the sidecar runs, by a typed ID, delivering snapshot parts
// through one small interface (SnapshotSource). The set of watches is dynamic:
// the loop hands over the IDs it wants and watches start and stop to match.
// `fetchPart` is the one place a watch ID becomes a Consul request, shared by
// the running watches and by `connect-haproxy render`.
import { runBlockingWatch, type BlockingMode } from "./blocking-query.js";
import type { Clock } from "./clock.js";
import { ConsulError, type ConsulClient } from "./consul-client.js";
import { replyProblem, type CheckedReply } from "./consul-reply-checks.js";
import type { AgentServiceRegistration, BlockingCursor, CaRoots, CompiledDiscoveryChain, ConsulPage, DiscoveryChainOverrides, IntentionsAtIndex, LeafCertificate, MeshEntry, ProxyDefaultsEntry, ServiceInstanceEntry } from "./consul-replies.js";
import { targetQueryKey, type TargetQuery } from "./discovery-chain.js";
import type { Logger } from "./logger.js";
import type { UpstreamSpec } from "./sidecar-spec.js";

/** What an upstream watch looks up (the upstream's destination, not its local listener). */
export type UpstreamTarget = Pick<UpstreamSpec, "name" | "destinationType" | "destinationName" | "datacenter">;

/** What a service upstream's discovery-chain watch asks for. */
export type ChainRequest = Pick<UpstreamSpec, "name" | "destinationName" | "datacenter"> & { overrides: DiscoveryChainOverrides };

export type WatchId =
  | { kind: "registration"; proxyId: string }
  | { kind: "roots" }
  | { kind: "leaf"; service: string }
  | { kind: "intentions"; service: string }
  | { kind: "proxy-defaults" }
  | { kind: "mesh" }
  | { kind: "upstream"; upstream: UpstreamTarget }
  | { kind: "chain"; upstream: ChainRequest }
  | { kind: "target"; query: TargetQuery };

export interface UpstreamInstances {
  entries: ServiceInstanceEntry[];
  /** The service the instances must prove to be (a prepared query names it in its reply). */
  service: string;
}

/** What each kind of watch delivers. */
export interface WatchValues {
  registration: AgentServiceRegistration;
  roots: CaRoots;
  leaf: LeafCertificate;
  intentions: IntentionsAtIndex;
  /** The `global` proxy-defaults entry; null when there is none. */
  "proxy-defaults": ProxyDefaultsEntry | null;
  /** The `mesh` entry; null when there is none. */
  mesh: MeshEntry | null;
  upstream: UpstreamInstances;
  chain: CompiledDiscoveryChain;
  /** Instances with no critical check (passing only, when the query says OnlyPassing). */
  target: ServiceInstanceEntry[];
}

export type SnapshotPart = { [K in WatchId["kind"]]: { kind: K; id: Extract<WatchId, { kind: K }>; value: WatchValues[K] } }[WatchId["kind"]];

/** Where snapshot parts come from: Consul's watches, or a static source in tests. */
export interface SnapshotSource {
  /** Makes the running watches exactly `wanted`; each delivers its values to `deliver`. */
  setWatches(wanted: WatchId[], deliver: (part: SnapshotPart) => void): void;
  stop(): void;
}

/** The stable identity of a watch, for keeping the same one running across calls. */
export function watchKey(id: WatchId): string {
  if (id.kind === "registration") return `registration ${id.proxyId}`;
  if (id.kind === "roots" || id.kind === "proxy-defaults" || id.kind === "mesh") return id.kind;
  if (id.kind === "upstream") return `upstream ${id.upstream.name}`;
  // The overrides are part of the identity: a changed one restarts the watch.
  if (id.kind === "chain") return `chain ${id.upstream.name} ${JSON.stringify(id.upstream.overrides)}`;
  if (id.kind === "target") return `target ${targetQueryKey(id.query)}`;
  return `${id.kind} ${id.service}`;
}

export function describeWatch(id: WatchId): string {
  switch (id.kind) {
    case "registration":
      return `registration of ${id.proxyId}`;
    case "roots":
      return "CA roots";
    case "leaf":
      return `leaf certificate of ${id.service}`;
    case "intentions":
      return `intentions for ${id.service}`;
    case "proxy-defaults":
      return "proxy-defaults config entry";
    case "mesh":
      return "mesh config entry";
    case "upstream": {
      const { destinationType, destinationName, datacenter } = id.upstream;
      return `instances of ${destinationType === "prepared_query" ? "prepared query " : ""}${destinationName}${datacenter ? ` in ${datacenter}` : ""}`;
    }
    case "chain":
      return `discovery chain of ${id.upstream.destinationName}${id.upstream.datacenter ? ` in ${id.upstream.datacenter}` : ""}`;
    case "target": {
      const { service, datacenter, filter, onlyPassing } = id.query;
      return `instances of ${service} in ${datacenter}${filter ? ` matching ${filter}` : ""}${onlyPassing ? " (passing only)" : ""}`;
    }
  }
}

function blockingModeOf(id: WatchId): BlockingMode {
  if (id.kind === "registration") return "hash";
  if (id.kind === "upstream" && id.upstream.destinationType === "prepared_query") return "poll";
  return "index";
}

/** One request for one watch: blocking from `cursor`, or a plain read with `{}`. */
export async function fetchPart(consul: ConsulClient, id: WatchId, cursor: BlockingCursor, signal?: AbortSignal): Promise<ConsulPage<SnapshotPart>> {
  const as = <P extends SnapshotPart>(page: ConsulPage<P["value"]>, part: Omit<P, "value">): ConsulPage<SnapshotPart> => ({ ...page, value: { ...part, value: page.value } as P });
  switch (id.kind) {
    case "registration":
      return as(checked(await consul.agentService(id.proxyId, cursor, signal), id.kind), { kind: id.kind, id });
    case "roots":
      return as(checked(await consul.caRoots(cursor, signal), id.kind), { kind: id.kind, id });
    case "leaf":
      return as(checked(await consul.leafCertificate(id.service, cursor, signal), id.kind), { kind: id.kind, id });
    case "intentions": {
      const page = checked(await consul.intentionsForDestination(id.service, cursor, signal), id.kind, id.service);
      return as({ ...page, value: { byDestination: page.value, index: page.index ?? 0 } }, { kind: id.kind, id });
    }
    case "proxy-defaults":
      return as(await consul.configEntry("proxy-defaults", "global", cursor, signal), { kind: id.kind, id });
    case "mesh":
      return as(await consul.configEntry("mesh", "mesh", cursor, signal), { kind: id.kind, id });
    case "upstream": {
      const { destinationType, destinationName, datacenter } = id.upstream;
      if (destinationType === "prepared_query") {
        const page = checked(await consul.preparedQuery(destinationName, datacenter, signal), "prepared-query");
        return as({ ...page, value: { entries: page.value.Nodes ?? [], service: page.value.Service } }, { kind: id.kind, id });
      }
      const page = checked(await consul.healthyConnectInstances(destinationName, datacenter, cursor, signal), id.kind);
      return as({ ...page, value: { entries: page.value ?? [], service: destinationName } }, { kind: id.kind, id });
    }
    case "chain": {
      const { destinationName, datacenter, overrides } = id.upstream;
      const page = checked(await consul.discoveryChain(destinationName, { datacenter, overrides }, cursor, signal), id.kind);
      return as({ ...page, value: page.value.Chain }, { kind: id.kind, id });
    }
    case "target": {
      const { service, datacenter, filter, onlyPassing } = id.query;
      const page = checked(await consul.connectInstances(service, { datacenter, filter, passing: onlyPassing }, cursor, signal), id.kind);
      return as({ ...page, value: withoutCritical(page.value ?? []) }, { kind: id.kind, id });
    }
  }
}

/** Refuses a reply the controller cannot read: the watch logs it in one line and the last good value stays. */
function checked<T>(page: ConsulPage<T>, kind: CheckedReply, destination?: string): ConsulPage<T> {
  const problem = replyProblem(kind, page.value, destination);
  if (problem) throw new ConsulError("bad-reply", kind, `Consul's reply is unusable: ${problem}`);
  return page;
}

/** Pure: the instances Envoy would send to: none of their checks critical (warning is healthy). */
export function withoutCritical(entries: ServiceInstanceEntry[]): ServiceInstanceEntry[] {
  return entries.filter((entry) => !(entry.Checks ?? []).some((check) => check.Status === "critical"));
}

/** The watches, as blocking queries against the local agent. */
export class ConsulWatches implements SnapshotSource {
  private readonly running = new Map<string, AbortController>();

  constructor(
    private readonly consul: ConsulClient,
    private readonly clock: Clock,
    private readonly logger: Logger,
    /** Told of every failed request (metrics), by watch kind. */
    private readonly onWatchError?: (kind: WatchId["kind"]) => void,
  ) {}

  setWatches(wanted: WatchId[], deliver: (part: SnapshotPart) => void): void {
    const byKey = new Map(wanted.map((id) => [watchKey(id), id]));
    for (const [key, controller] of this.running) {
      if (byKey.has(key)) continue;
      controller.abort();
      this.running.delete(key);
    }
    for (const [key, id] of byKey) if (!this.running.has(key)) this.start(key, id, deliver);
  }

  stop(): void {
    for (const controller of this.running.values()) controller.abort();
    this.running.clear();
  }

  private start(key: string, id: WatchId, deliver: (part: SnapshotPart) => void): void {
    const controller = new AbortController();
    this.running.set(key, controller);
    const description = describeWatch(id);
    void runBlockingWatch<SnapshotPart>({
      description,
      mode: blockingModeOf(id),
      fetchPage: (cursor, signal) => fetchPart(this.consul, id, cursor, signal),
      onChange: deliver,
      signal: controller.signal,
      clock: this.clock,
      pollIntervalMs: 5_000,
      onError: (error, failures) => {
        const message = error instanceof Error ? error.message : String(error);
        this.onWatchError?.(id.kind);
        // One line when a watch starts failing; HAProxy keeps its last good configuration.
        if (failures === 1) this.logger.error(`watch of ${description} failed: ${message}; retrying with backoff, HAProxy keeps its current configuration`);
        else this.logger.debug(`watch of ${description} still failing`, { failures, error: message });
      },
      onRecovered: () => this.logger.info(`watch of ${description} recovered`),
    });
  }
}
