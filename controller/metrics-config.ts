// Pure: the haproxy.cfg section that serves HAProxy's own statistics through
// its built-in Prometheus exporter, on a unix socket only the controller reads
// (controller/metrics-server.ts adds the authorizer's and its own counters and
// serves the one scrape endpoint).
import type { HaproxyPaths } from "./desired-state.js";

export const promexFrontendName = "prometheus_exporter";

export function promexFrontendLines(paths: Pick<HaproxyPaths, "promexSocket">): string[] {
  if (!paths.promexSocket) return [];
  return [
    `frontend ${promexFrontendName}`,
    "    mode http",
    `    bind unix@${paths.promexSocket} mode 600`,
    "    no log",
    "    http-request use-service prometheus-exporter",
    "",
  ];
}
