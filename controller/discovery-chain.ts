// Pure: a compiled discovery chain (Consul's /v1/discovery-chain reply) →
// what one upstream's HAProxy frontend and backends must do, as plain data,
// plus one warning per field HAProxy 2.6 cannot express exactly (the table in
// docs/controller.md). Semantics follow Consul's agent/xds (routes.go,
// clusters.go): routes in order, first match wins; splits by compiled weight;
// a resolver's failover targets in order; timeouts and retries per route.
import type { CompiledDiscoveryChain, DiscoveryGraphNode, DiscoveryLoadBalancer, DiscoveryTarget, HeaderModifiers, RouteDestination, RouteHttpMatch } from "./consul-replies.js";
import { parseProtocol, SidecarSpecError, type ProxyProtocol, type UpstreamSpec } from "./sidecar-spec.js";

/** What selects a target's instances: one health watch per distinct query. */
export interface TargetQuery {
  service: string;
  datacenter: string;
  /** The subset's bexpr filter, sent as `filter=`. */
  filter?: string;
  /** `passing` only; otherwise every instance without a critical check (as Envoy's endpoints). */
  onlyPassing: boolean;
}

export type LoadBalancing = { algorithm: "roundrobin" | "leastconn" | "random" } | { algorithm: "hash"; expression: string };

export interface RetryPolicy {
  retries: number;
  /** HAProxy `retry-on` keywords. */
  retryOn: string[];
}

/** One HAProxy backend: a target's instances, with the settings the chain gives them. */
export interface ChainBackend {
  name: string;
  targetId: string;
  query: TargetQuery;
  connectTimeoutMs: number;
  loadBalancing: LoadBalancing;
  /** Undefined: the configuration's defaults (retry on connection failure). */
  retry?: RetryPolicy;
}

export interface HeaderChanges {
  add: [string, string][];
  set: [string, string][];
  remove: string[];
}

export interface ChainRoute {
  match: RouteHttpMatch;
  /** Replaces the matched path prefix (or the whole path for PathExact/PathRegex). */
  prefixRewrite?: string;
  requestHeaders: HeaderChanges;
  responseHeaders: HeaderChanges;
}

/** Where a request ends: a route (if a router), a split range (if a splitter), then a resolver's backends. */
export interface ChainLeaf {
  /** Index into `routes` (router chains). */
  route?: number;
  /** Split range in 1/10000 (0.01 %): from ≤ pick < to. */
  split?: { from: number; to: number; requestHeaders: HeaderChanges; responseHeaders: HeaderChanges };
  /** The resolver's backend, then its failover backends, in order. */
  backends: string[];
  /** RequestTimeout of the route, else of the resolver. */
  requestTimeoutMs?: number;
}

export interface ChainPlan {
  protocol: ProxyProtocol;
  /** What the chain is made of, for the log and reload reasons (e.g. "router → splitter → 3 resolvers"). */
  shape: { router: boolean; splitter: boolean; resolvers: number };
  routes: ChainRoute[];
  leaves: ChainLeaf[];
  backends: ChainBackend[];
  warnings: string[];
}

/** Pure: a Go duration ("1.5s", "1m30s", "500ms") or nanoseconds → milliseconds. */
export function durationMs(value: string | number | undefined): number | undefined {
  if (value === undefined || value === "" || value === 0) return undefined;
  if (typeof value === "number") return value / 1e6;
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3 };
  let total = 0;
  let rest = value;
  for (const match of value.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/g)) {
    total += Number(match[1]) * units[match[2]!]!;
    rest = rest.replace(match[0], "");
  }
  if (rest !== "" && rest !== "0") throw new SidecarSpecError(`cannot read duration ${JSON.stringify(value)}`);
  return total;
}

/** Pure: the key of a target query (watch identity and instance lookup). */
export function targetQueryKey(query: TargetQuery): string {
  return `${query.service} ${query.datacenter} ${query.onlyPassing ? "passing" : "not-critical"} ${query.filter ?? ""}`;
}

export function targetQuery(target: DiscoveryTarget): TargetQuery {
  return {
    service: target.Service,
    datacenter: target.Datacenter,
    ...(target.Subset?.Filter ? { filter: target.Subset.Filter } : {}),
    onlyPassing: Boolean(target.Subset?.OnlyPassing),
  };
}

function haproxyName(text: string): string {
  return text.replace(/[^A-Za-z0-9_.-]/g, "_");
}

/**
 * The backend of the chain's own default target keeps the upstream's name, so
 * a chain with no config entry runs exactly as a plain upstream did.
 */
function baseBackendName(upstream: Pick<UpstreamSpec, "name">, chain: CompiledDiscoveryChain, target: DiscoveryTarget): string {
  const isDefault = target.Service === chain.ServiceName && !target.ServiceSubset && target.Datacenter === chain.Datacenter && !target.Peer;
  return isDefault ? upstream.name : `${upstream.name}.${haproxyName(target.ID)}`;
}

function headerChanges(modifiers: HeaderModifiers | undefined): HeaderChanges {
  return {
    add: Object.entries(modifiers?.Add ?? {}),
    set: Object.entries(modifiers?.Set ?? {}),
    remove: modifiers?.Remove ?? [],
  };
}

/** The HTTP status codes HAProxy 2.6's `retry-on` accepts. */
const retryableStatuses = new Set([401, 403, 404, 408, 425, 500, 501, 502, 503, 504]);

/** Pure: Envoy's retry conditions (as Consul sets them) → HAProxy's `retry-on`, with what cannot be matched. */
export function retryPolicy(destination: RouteDestination, warn: (field: string, detail: string) => void): RetryPolicy | undefined {
  const conditions: string[] = [];
  if (destination.RetryOnConnectFailure) conditions.push("conn-failure");
  for (const code of destination.RetryOnStatusCodes ?? []) {
    if (retryableStatuses.has(code)) conditions.push(String(code));
    else warn("RetryOnStatusCodes", `HAProxy 2.6 cannot retry on status ${code}; not retried`);
  }
  for (const condition of destination.RetryOn ?? []) {
    switch (condition) {
      case "connect-failure":
        conditions.push("conn-failure");
        break;
      case "gateway-error":
        conditions.push("502", "503", "504");
        break;
      case "5xx":
        conditions.push("500", "501", "502", "503", "504", "empty-response", "response-timeout");
        warn("RetryOn", `"5xx" retries 500-504, empty responses and response timeouts (Envoy: every 5xx)`);
        break;
      case "reset":
        conditions.push("empty-response", "junk-response");
        warn("RetryOn", `"reset" retries empty and invalid responses (Envoy: any reset, disconnect or read timeout)`);
        break;
      case "refused-stream":
        conditions.push("conn-failure");
        warn("RetryOn", `"refused-stream" retries connection failures (HAProxy cannot see an HTTP/2 REFUSED_STREAM)`);
        break;
      default:
        warn("RetryOn", `"${condition}" has no HAProxy 2.6 equivalent; not retried`);
    }
  }
  if (conditions.length === 0 && !destination.NumRetries) return undefined;
  // Envoy's default is one retry when conditions are given without a count.
  return { retries: destination.NumRetries ?? 1, retryOn: [...new Set(conditions.length > 0 ? conditions : ["conn-failure"])] };
}

/** Pure: a resolver's LoadBalancer → HAProxy's balance (closest to ring_hash/maglev: a consistent hash of the first policy). */
export function loadBalancing(balancer: DiscoveryLoadBalancer | undefined, warn: (field: string, detail: string) => void): LoadBalancing {
  const policy = balancer?.Policy ?? "";
  if (policy === "" || policy === "round_robin") return { algorithm: "roundrobin" };
  if (policy === "least_request") {
    if (balancer?.LeastRequestConfig?.ChoiceCount) warn("LoadBalancer.LeastRequestConfig", "leastconn compares every server, not a random choice of ChoiceCount");
    return { algorithm: "leastconn" };
  }
  if (policy === "random") return { algorithm: "random" };
  if (policy !== "ring_hash" && policy !== "maglev") {
    warn("LoadBalancer.Policy", `unknown policy "${policy}"; round robin`);
    return { algorithm: "roundrobin" };
  }
  if (balancer?.RingHashConfig) warn("LoadBalancer.RingHashConfig", "HAProxy sizes its consistent-hash ring itself");
  const policies = balancer?.HashPolicies ?? [];
  if (policies.length > 1) warn("LoadBalancer.HashPolicies", `only the first of ${policies.length} hash policies is hashed (Envoy combines them, stopping at a Terminal one that produced a value)`);
  const first = policies[0];
  if (!first) {
    warn("LoadBalancer.Policy", `${policy} without a hash policy hashes the source address (Envoy picks a random ring entry)`);
    return { algorithm: "hash", expression: "src" };
  }
  if (first.SourceIP) return { algorithm: "hash", expression: "src" };
  const name = first.FieldValue ?? "";
  if (first.Field === "header") return { algorithm: "hash", expression: `req.hdr(${name})` };
  if (first.Field === "query_parameter") return { algorithm: "hash", expression: `urlp(${name})` };
  if (first.Field === "cookie") {
    if (first.CookieConfig?.TTL || first.CookieConfig?.Session) warn("LoadBalancer.HashPolicies.CookieConfig", "HAProxy does not set the cookie when it is missing (Envoy generates one)");
    return { algorithm: "hash", expression: `req.cook(${name})` };
  }
  warn("LoadBalancer.HashPolicies", `unknown field "${first.Field ?? ""}"; hashing the source address`);
  return { algorithm: "hash", expression: "src" };
}

function nodeOf(chain: CompiledDiscoveryChain, name: string): DiscoveryGraphNode {
  const node = chain.Nodes[name];
  if (!node) throw new SidecarSpecError(`discovery chain of ${chain.ServiceName} names node ${name} but does not define it`);
  return node;
}

/**
 * Pure: the plan of one upstream's chain. `upstream.name` names the backends;
 * the chain's protocol is the upstream's (Consul applies the upstream's own
 * `protocol` as OverrideProtocol when it compiles the chain).
 */
export function planDiscoveryChain(upstream: Pick<UpstreamSpec, "name">, chain: CompiledDiscoveryChain): ChainPlan {
  const warnings = new Set<string>();
  const warn = (field: string, detail: string) => warnings.add(`${field}: ${detail}`);
  const protocol = parseProtocol(chain.Protocol, `discovery chain of ${chain.ServiceName}`);
  const backends = new Map<string, ChainBackend>();
  const resolverCount = Object.values(chain.Nodes).filter((n) => n.Type === "resolver").length;

  for (const target of Object.values(chain.Targets)) {
    if (target.Peer) warn("Peer", `target ${target.ID} is on a cluster peer; peering is not supported, it gets no instances`);
    if (target.MeshGateway?.Mode) warn("MeshGateway", `mode ${target.MeshGateway.Mode} for ${target.ID} is not supported; instances are dialled directly`);
    if (target.Locality) warn("Locality", `locality-aware routing of ${target.ID} is not supported`);
  }

  /** The backend for a target under a retry policy (retries are per backend in HAProxy). */
  const backendFor = (targetId: string, balancer: DiscoveryLoadBalancer | undefined, retry: RetryPolicy | undefined): string => {
    const target = chain.Targets[targetId];
    if (!target) throw new SidecarSpecError(`discovery chain of ${chain.ServiceName} names target ${targetId} but does not define it`);
    const base = baseBackendName(upstream, chain, target);
    const retryKey = retry ? `${retry.retries}:${retry.retryOn.join(",")}` : "";
    const existing = [...backends.values()].filter((b) => b.targetId === targetId);
    const same = existing.find((b) => (b.retry ? `${b.retry.retries}:${b.retry.retryOn.join(",")}` : "") === retryKey);
    if (same) return same.name;
    const name = existing.length === 0 ? base : `${base}.retry${existing.length}`;
    backends.set(name, {
      name,
      targetId,
      query: targetQuery(target),
      connectTimeoutMs: durationMs(target.ConnectTimeout) ?? 5000,
      loadBalancing: loadBalancing(balancer, warn),
      ...(retry ? { retry } : {}),
    });
    return name;
  };

  /** A resolver node's leaf: its target, then its failover targets. */
  const resolve = (nodeName: string, retry: RetryPolicy | undefined): Pick<ChainLeaf, "backends"> & { requestTimeoutMs?: number } => {
    const node = nodeOf(chain, nodeName);
    if (node.Type !== "resolver") throw new SidecarSpecError(`discovery chain of ${chain.ServiceName}: ${nodeName} is a ${node.Type} where a resolver was expected`);
    const failover = node.Resolver.Failover;
    if (failover?.Policy?.Mode && failover.Policy.Mode !== "default") warn("Failover.Policy", `mode ${failover.Policy.Mode} is not supported; targets are tried in order`);
    if (failover?.Regions?.length || failover?.Policy?.Regions?.length) warn("Failover.Regions", "region failover is not supported");
    const targets = [node.Resolver.Target, ...(failover?.Targets ?? [])];
    const requestTimeoutMs = durationMs(node.Resolver.RequestTimeout);
    return { backends: targets.map((id) => backendFor(id, node.LoadBalancer, retry)), ...(requestTimeoutMs ? { requestTimeoutMs } : {}) };
  };

  /** A splitter's or resolver's leaves under one route. */
  const leavesFrom = (nodeName: string, route: number | undefined, retry: RetryPolicy | undefined, routeTimeoutMs: number | undefined): ChainLeaf[] => {
    const node = nodeOf(chain, nodeName);
    const withTimeout = (leaf: ChainLeaf, resolverTimeoutMs: number | undefined): ChainLeaf => {
      const requestTimeoutMs = routeTimeoutMs ?? resolverTimeoutMs;
      return requestTimeoutMs ? { ...leaf, requestTimeoutMs } : leaf;
    };
    if (node.Type === "resolver") {
      const { backends: leafBackends, requestTimeoutMs } = resolve(nodeName, retry);
      return [withTimeout({ ...(route !== undefined ? { route } : {}), backends: leafBackends }, requestTimeoutMs)];
    }
    if (node.Type === "splitter") {
      let from = 0;
      const leaves: ChainLeaf[] = [];
      node.Splits.forEach((split, n) => {
        // Cumulative rounding, so the ranges cover 0..10000 with no gap whatever the weights' decimals.
        // A split of weight 0 comes without its Weight (test: "splitter: a split of weight 0 …").
        const to = n === node.Splits.length - 1 ? 10000 : Math.round((from / 100 + (split.Weight ?? 0)) * 100);
        const { backends: leafBackends, requestTimeoutMs } = resolve(split.NextNode, retry);
        if (to > from) {
          const splitRange = { from, to, requestHeaders: headerChanges(split.Definition?.RequestHeaders), responseHeaders: headerChanges(split.Definition?.ResponseHeaders) };
          leaves.push(withTimeout({ ...(route !== undefined ? { route } : {}), split: splitRange, backends: leafBackends }, requestTimeoutMs));
        }
        from = to;
      });
      return leaves;
    }
    throw new SidecarSpecError(`discovery chain of ${chain.ServiceName}: router ${nodeName} below another node`);
  };

  const start = nodeOf(chain, chain.StartNode);
  const routes: ChainRoute[] = [];
  const leaves: ChainLeaf[] = [];
  let hasSplitter = start.Type === "splitter";
  if (start.Type === "router") {
    start.Routes.forEach((route, n) => {
      const destination = route.Definition.Destination ?? {};
      const match = route.Definition.Match?.HTTP ?? {};
      if (destination.IdleTimeout) warn("IdleTimeout", "the stream idle timeout is not supported; HAProxy's server inactivity timeout applies");
      const routeTimeoutMs = durationMs(destination.RequestTimeout);
      routes.push({
        match,
        ...(destination.PrefixRewrite ? { prefixRewrite: destination.PrefixRewrite } : {}),
        requestHeaders: headerChanges(destination.RequestHeaders),
        responseHeaders: headerChanges(destination.ResponseHeaders),
      });
      if (nodeOf(chain, route.NextNode).Type === "splitter") hasSplitter = true;
      leaves.push(...leavesFrom(route.NextNode, n, retryPolicy(destination, warn), routeTimeoutMs));
    });
  } else {
    leaves.push(...leavesFrom(chain.StartNode, undefined, undefined, undefined));
  }
  if (leaves.some((leaf) => leaf.requestTimeoutMs)) {
    warn("RequestTimeout", "HAProxy's server timeout is an inactivity timeout (Envoy's is the whole request); a stream that keeps sending is not cut");
  }
  if (protocol === "tcp" && (routes.length > 0 || hasSplitter)) {
    throw new SidecarSpecError(`discovery chain of ${chain.ServiceName} is tcp but has a ${routes.length > 0 ? "router" : "splitter"}`);
  }
  return {
    protocol,
    shape: { router: start.Type === "router", splitter: hasSplitter, resolvers: resolverCount },
    routes,
    leaves,
    backends: [...backends.values()],
    warnings: [...warnings],
  };
}
