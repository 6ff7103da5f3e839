// Pure: reads a connect-proxy registration (and its Proxy.Config keys, as
// Consul's own proxies read them) into the sidecar's specification.
import type { AgentServiceRegistration, UpstreamRegistration } from "./consul-replies.js";
import { ignoredKeys } from "./proxy-config-keys.js";
import { outlierWarnings, parseMaxInboundConnections, parseMaxRequestHeadersKb, wholeNumber, parsePassiveHealthCheck, parseUpstreamLimits, type PassiveHealthCheck, type UpstreamLimits } from "./proxy-limits.js";

export type ProxyProtocol = "tcp" | "http" | "http2" | "grpc";

export interface PublicListenerSpec {
  bindAddress: string;
  bindPort: number;
  protocol: ProxyProtocol;
  destinationServiceName: string;
  localServiceAddress: string;
  localServicePort: number;
  localConnectTimeoutMs: number;
  /** HTTP protocols only: how long the local app may take to answer. */
  localRequestTimeoutMs: number;
  /** HTTP protocols only: how long a request to the local app may stay idle (undefined: not set). */
  localIdleTimeoutMs?: number;
  /** Connections past it are refused (undefined: no limit). */
  maxInboundConnections?: number;
  /** HTTP protocols only: requests with more header bytes are answered 431 (undefined: HAProxy's buffer bounds them). */
  maxRequestHeadersKb?: number;
}

export interface UpstreamSpec {
  /** Stable, HAProxy-safe name: upstream_<dest>[_<dc>] or upstream_query_<name>. */
  name: string;
  destinationType: "service" | "prepared_query";
  destinationName: string;
  datacenter?: string;
  bindAddress: string;
  bindPort: number;
  protocol: ProxyProtocol;
  connectTimeoutMs: number;
  /**
   * What the upstream's own Config sets, if anything: Consul compiles its
   * discovery chain with these as OverrideProtocol / OverrideConnectTimeout.
   */
  configured?: { protocol?: ProxyProtocol; connectTimeoutMs?: number };
  /** Config `limits` (circuit breakers); undefined: none set. */
  limits?: UpstreamLimits;
  /** Config `passive_health_check` (outlier detection), defaults filled in; undefined: not set. */
  passiveHealthCheck?: PassiveHealthCheck;
}

export interface SidecarSpec {
  proxyId: string;
  publicListener: PublicListenerSpec;
  upstreams: UpstreamSpec[];
  /** Proxy.Config envoy_prometheus_bind_addr: where the metrics and /ready listen (undefined: not set). */
  prometheusBindAddress?: string;
  /** Settings Consul documents that this sidecar ignores or only approximates, one line each. */
  warnings: string[];
}

// Consul's defaults (agent/xds/config.go, agent/connect/proxy defaults).
export const consulDefaults = {
  localServiceAddress: "127.0.0.1",
  localBindAddress: "127.0.0.1",
  localConnectTimeoutMs: 5000,
  localRequestTimeoutMs: 15000,
  connectTimeoutMs: 5000,
};

export class SidecarSpecError extends Error {}

export function parseProtocol(value: unknown, where: string): ProxyProtocol {
  if (value === undefined || value === null || value === "") return "tcp";
  const protocol = String(value).toLowerCase();
  if (protocol === "tcp" || protocol === "http" || protocol === "http2" || protocol === "grpc") return protocol;
  throw new SidecarSpecError(`unsupported protocol "${String(value)}" in ${where} (expected tcp, http, http2 or grpc)`);
}

export function isHttpProtocol(protocol: ProxyProtocol): boolean {
  return protocol !== "tcp";
}

function positiveNumber(value: unknown, fallback: number, key: string): number {
  if (value === undefined || value === null || value === "") return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new SidecarSpecError(`${key} must be a positive number, got ${JSON.stringify(value)}`);
  return Math.round(n);
}

function isSet(value: unknown): boolean {
  return value !== undefined && value !== null && value !== "";
}

function haproxyName(text: string): string {
  return text.replace(/[^A-Za-z0-9_.-]/g, "_");
}

export function upstreamName(upstream: Pick<UpstreamSpec, "destinationType" | "destinationName" | "datacenter">): string {
  if (upstream.destinationType === "prepared_query") return `upstream_query_${haproxyName(upstream.destinationName)}`;
  return `upstream_${haproxyName(upstream.destinationName)}${upstream.datacenter ? `_${haproxyName(upstream.datacenter)}` : ""}`;
}

function parseUpstream(upstream: UpstreamRegistration): UpstreamSpec {
  const config = upstream.Config ?? {};
  const destinationType = upstream.DestinationType === "prepared_query" ? "prepared_query" : "service";
  const where = `upstream ${upstream.DestinationName}`;
  if (!upstream.LocalBindPort) throw new SidecarSpecError(`${where} has no LocalBindPort`);
  const spec = {
    destinationType,
    destinationName: upstream.DestinationName,
    datacenter: upstream.Datacenter || undefined,
    bindAddress: upstream.LocalBindAddress || consulDefaults.localBindAddress,
    bindPort: upstream.LocalBindPort,
    protocol: parseProtocol(config.protocol, where),
    connectTimeoutMs: positiveNumber(config.connect_timeout_ms, consulDefaults.connectTimeoutMs, `${where} connect_timeout_ms`),
  } as const;
  const limits = parseUpstreamLimits(config.limits, where);
  const passiveHealthCheck = parsePassiveHealthCheck(config.passive_health_check, where);
  const configured = {
    ...(isSet(config.protocol) ? { protocol: spec.protocol } : {}),
    ...(isSet(config.connect_timeout_ms) ? { connectTimeoutMs: spec.connectTimeoutMs } : {}),
  };
  return {
    name: upstreamName(spec),
    ...spec,
    ...(Object.keys(configured).length > 0 ? { configured } : {}),
    ...(limits ? { limits } : {}),
    ...(passiveHealthCheck ? { passiveHealthCheck } : {}),
  };
}

/** 0 disables Envoy's idle timeout: only the request timeout is left. */
function parseLocalIdleTimeout(value: unknown): number | undefined {
  if (!isSet(value)) return undefined;
  const ms = wholeNumber(value, "local_idle_timeout_ms", 0);
  return ms > 0 ? ms : undefined;
}

/** Reads a connect-proxy registration; throws SidecarSpecError on what it cannot serve. */
export function parseSidecarSpec(registration: AgentServiceRegistration, destinationServicePort?: number): SidecarSpec {
  const proxy = registration.Proxy;
  if (registration.Kind !== "connect-proxy" || !proxy) throw new SidecarSpecError(`service ${registration.ID} is not a connect-proxy (Kind=${registration.Kind ?? "none"})`);
  const config = proxy.Config ?? {};
  const localServicePort = proxy.LocalServicePort || destinationServicePort;
  if (!localServicePort) throw new SidecarSpecError(`sidecar ${registration.ID} has no LocalServicePort`);
  const upstreams = (proxy.Upstreams ?? []).map(parseUpstream);
  const seen = new Set<string>();
  for (const upstream of upstreams) {
    if (seen.has(upstream.name)) throw new SidecarSpecError(`two upstreams for ${upstream.destinationName}${upstream.datacenter ? ` in ${upstream.datacenter}` : ""}`);
    seen.add(upstream.name);
  }
  return {
    proxyId: registration.ID,
    publicListener: {
      bindAddress: String(config.bind_address || registration.Address || "0.0.0.0"),
      bindPort: positiveNumber(config.bind_port, registration.Port, "bind_port"),
      protocol: parseProtocol(config.protocol, `sidecar ${registration.ID}`),
      destinationServiceName: proxy.DestinationServiceName,
      localServiceAddress: proxy.LocalServiceAddress || consulDefaults.localServiceAddress,
      localServicePort,
      localConnectTimeoutMs: positiveNumber(config.local_connect_timeout_ms, consulDefaults.localConnectTimeoutMs, "local_connect_timeout_ms"),
      localRequestTimeoutMs: positiveNumber(config.local_request_timeout_ms, consulDefaults.localRequestTimeoutMs, "local_request_timeout_ms"),
      localIdleTimeoutMs: parseLocalIdleTimeout(config.local_idle_timeout_ms),
      maxInboundConnections: parseMaxInboundConnections(config.max_inbound_connections),
      maxRequestHeadersKb: parseMaxRequestHeadersKb(config.max_request_headers_kb),
    },
    upstreams,
    ...(isSet(config.envoy_prometheus_bind_addr) ? { prometheusBindAddress: String(config.envoy_prometheus_bind_addr) } : {}),
    warnings: [
      ...ignoredKeys(config, (proxy.Upstreams ?? []).map((u) => ({ name: u.DestinationName, config: u.Config }))).map((key) => `${key} is ignored (connect-haproxy has no equivalent; docs/controller.md)`),
      ...upstreams.flatMap((u) => outlierWarnings(u.passiveHealthCheck).map((warning) => `upstream ${u.destinationName}: ${warning}`)),
    ],
  };
}

/** Pure: which registration on the agent is the sidecar for `serviceId` (or is `proxyId`). */
export function findSidecarRegistration(
  services: Record<string, AgentServiceRegistration>,
  selector: { sidecarFor?: string; proxyId?: string },
): { ok: true; registration: AgentServiceRegistration } | { ok: false; message: string } {
  const proxies = Object.values(services).filter((s) => s.Kind === "connect-proxy");
  if (selector.proxyId) {
    const found = services[selector.proxyId];
    if (!found) return { ok: false, message: `no service with ID "${selector.proxyId}" on this agent (connect-proxy services: ${describe(proxies)})` };
    if (found.Kind !== "connect-proxy") return { ok: false, message: `service "${selector.proxyId}" is not a connect-proxy (Kind=${found.Kind || "typical"})` };
    return { ok: true, registration: found };
  }
  const wanted = selector.sidecarFor ?? "";
  const matches = proxies.filter((s) => s.Proxy?.DestinationServiceID === wanted);
  if (matches.length === 1) return { ok: true, registration: matches[0]! };
  if (matches.length === 0) {
    return { ok: false, message: `no connect-proxy on this agent has Proxy.DestinationServiceID "${wanted}" (connect-proxy services: ${describe(proxies)})` };
  }
  return { ok: false, message: `several connect-proxies serve "${wanted}": ${describe(matches)}; pick one with --proxy-id` };
}

function describe(proxies: AgentServiceRegistration[]): string {
  if (proxies.length === 0) return "none";
  return proxies.map((p) => `${p.ID} (for ${p.Proxy?.DestinationServiceID ?? "?"})`).join(", ");
}
