// Pure: every Proxy.Config and upstream Config key Consul documents for its
// Envoy integration, and what connect-haproxy does with it. The table in
// docs/controller.md lists the same keys (test/unit/controller-limits.test.ts
// checks that it does); a key set but ignored is named in a warning line.

export type KeySupport = "honoured" | "approximated" | "ignored";

export interface ProxyConfigKey {
  key: string;
  scope: "proxy" | "upstream";
  support: KeySupport;
}

const proxyKeys: [string, KeySupport][] = [
  ["protocol", "honoured"],
  ["bind_address", "honoured"],
  ["bind_port", "honoured"],
  ["local_connect_timeout_ms", "honoured"],
  ["local_request_timeout_ms", "approximated"],
  ["local_idle_timeout_ms", "approximated"],
  ["max_inbound_connections", "honoured"],
  ["envoy_prometheus_bind_addr", "honoured"],
  ["balance_inbound_connections", "ignored"],
  ["max_request_headers_kb", "approximated"],
  ["xds_fetch_timeout_ms", "ignored"],
  ["envoy_public_listener_json", "ignored"],
  ["envoy_listener_tracing_json", "ignored"],
  ["envoy_local_cluster_json", "ignored"],
  ["envoy_stats_bind_addr", "ignored"],
  ["envoy_statsd_url", "ignored"],
  ["envoy_dogstatsd_url", "ignored"],
  ["envoy_stats_tags", "ignored"],
  ["envoy_stats_flush_interval", "ignored"],
  ["envoy_stats_config_json", "ignored"],
  ["envoy_stats_sinks_json", "ignored"],
  ["envoy_extra_stats_sinks_json", "ignored"],
  ["envoy_extra_static_clusters_json", "ignored"],
  ["envoy_extra_static_listeners_json", "ignored"],
  ["envoy_tracing_json", "ignored"],
  ["envoy_telemetry_collector_bind_socket_dir", "ignored"],
  ["envoy_hcp_metrics_bind_socket_dir", "ignored"],
];

const upstreamKeys: [string, KeySupport][] = [
  ["protocol", "honoured"],
  ["connect_timeout_ms", "honoured"],
  ["limits", "approximated"],
  ["passive_health_check", "approximated"],
  ["balance_outbound_connections", "ignored"],
  ["envoy_listener_json", "ignored"],
  ["envoy_cluster_json", "ignored"],
];

export const documentedKeys: ProxyConfigKey[] = [
  ...proxyKeys.map(([key, support]) => ({ key, scope: "proxy" as const, support })),
  ...upstreamKeys.map(([key, support]) => ({ key, scope: "upstream" as const, support })),
];

function isSet(value: unknown): boolean {
  return value !== undefined && value !== null && value !== "";
}

/**
 * Pure: the documented keys this registration sets that connect-haproxy
 * ignores, e.g. "Proxy.Config.envoy_stats_tags" or "upstream db:
 * Config.envoy_cluster_json".
 */
export function ignoredKeys(proxyConfig: Record<string, unknown> | undefined, upstreams: { name: string; config?: Record<string, unknown> | null }[]): string[] {
  const ignored = (scope: ProxyConfigKey["scope"]) => documentedKeys.filter((k) => k.scope === scope && k.support === "ignored").map((k) => k.key);
  const found = ignored("proxy").filter((key) => isSet(proxyConfig?.[key])).map((key) => `Proxy.Config.${key}`);
  for (const upstream of upstreams) {
    for (const key of ignored("upstream")) if (isSet(upstream.config?.[key])) found.push(`upstream ${upstream.name}: Config.${key}`);
  }
  return found;
}
