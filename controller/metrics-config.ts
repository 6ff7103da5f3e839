// Pure: the haproxy.cfg section that serves HAProxy's own statistics through
// its built-in Prometheus exporter, on a unix socket only the controller reads
// (controller/metrics-server.ts adds the authorizer's and its own counters and
// serves the one scrape endpoint); the authorizer's control service is served
// the same way.
import type { HaproxyPaths } from "./desired-state.js";

export const promexFrontendName = "prometheus_exporter";

export function promexFrontendLines(paths: Pick<HaproxyPaths, "promexSocket">): string[] {
  if (!paths.promexSocket) return [];
  return unixSocketServiceLines(promexFrontendName, paths.promexSocket, "prometheus-exporter");
}

/** An HTTP frontend on a unix socket only the controller's user can open, answered by one service, unlogged. */
export function unixSocketServiceLines(name: string, socketPath: string, service: string): string[] {
  return [`frontend ${name}`, "    mode http", `    bind unix@${socketPath} mode 600`, "    no log", `    http-request use-service ${service}`, ""];
}
