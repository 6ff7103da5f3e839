// The controller's own counters and gauges (prometheus-text.ts; no
// module-level state), and the one place a reload's reason text is sorted into
// a label of bounded cardinality.
import { MetricFamily } from "./prometheus-text.js";

/**
 * Pure: the kinds of change a reload reason names (plan-changes.ts writes the
 * reasons, joined by "; "), as label values. Unknown texts are "other".
 */
export function reloadReasonKinds(reason: string): string[] {
  // A reason may hold "; " itself: each kind is looked for at the start of the text or of a joined part.
  const at = (pattern: string) => new RegExp(`(?:^|; )${pattern}`).test(reason);
  const kinds = Object.entries(reloadKindPatterns)
    .filter(([, pattern]) => at(pattern))
    .map(([kind]) => kind);
  return kinds.length > 0 ? kinds : ["other"];
}

const reloadKindPatterns: Record<string, string> = {
  leaf_renewed: "leaf certificate renewed",
  trust_domain: "trust domain ",
  public_listener: "public listener ",
  upstream_added: "upstream \\S+ added on ",
  upstream_removed: "upstream \\S+ removed(?:;|$)",
  upstream_order: "upstream order changed",
  slots_grown: "upstream \\S+ needs \\d+ server slots",
  discovery_chain: "upstream [^;]*: discovery chain changed",
  upstream_settings: "upstream \\S+ settings changed",
  native_l7_rules: "native L7 rules ",
  runtime_failed: "runtime command failed",
  file_locations: "file locations changed",
};

export interface MetricsReadings {
  /** Seconds until the leaf certificate HAProxy serves expires; undefined before it has one. */
  leafExpiresInSeconds(): number | undefined;
  /** Whether /ready answers 200. */
  ready(): boolean;
}

export class SidecarMetrics {
  private readonly reloads: MetricFamily;
  private readonly runtimeOperations: MetricFamily;
  private readonly watchErrors: MetricFamily;
  private readonly lastChange: MetricFamily;
  private readonly upstreamInstances: MetricFamily;
  private readonly families: MetricFamily[];

  constructor(readings: MetricsReadings) {
    this.reloads = new MetricFamily(
      "connect_haproxy_reloads_total",
      "HAProxy reloads the controller asked for, by kind of change (a reload with several counts once per kind) and result (applied, refused).",
      "counter",
    );
    this.runtimeOperations = new MetricFamily("connect_haproxy_runtime_operations_total", "Changes applied through HAProxy's runtime API, by operation and result (applied, failed).", "counter");
    this.watchErrors = new MetricFamily("connect_haproxy_watch_errors_total", "Failed Consul watch requests, by watch kind.", "counter");
    this.lastChange = new MetricFamily("connect_haproxy_last_change_timestamp_seconds", "When the controller last applied a change to HAProxy (start, reload or runtime).", "gauge");
    this.upstreamInstances = new MetricFamily("connect_haproxy_upstream_instances", "Instances in each upstream's server slots.", "gauge");
    this.families = [
      this.reloads,
      this.runtimeOperations,
      this.watchErrors,
      this.lastChange,
      this.upstreamInstances,
      new MetricFamily("connect_haproxy_leaf_expiry_seconds", "Seconds until the leaf certificate HAProxy serves expires.", "gauge", () => readings.leafExpiresInSeconds()),
      new MetricFamily("connect_haproxy_ready", "1 when HAProxy serves the current configuration with a valid leaf certificate (what /ready answers 200 to).", "gauge", () => (readings.ready() ? 1 : 0)),
    ];
  }

  reload(reason: string, result: "applied" | "refused"): void {
    for (const kind of reloadReasonKinds(reason)) this.reloads.inc({ reason: kind, result });
  }

  runtimeOperation(operation: string, result: "applied" | "failed"): void {
    this.runtimeOperations.inc({ operation, result });
  }

  watchError(watch: string): void {
    this.watchErrors.inc({ watch });
  }

  changed(atMs: number): void {
    this.lastChange.set(atMs / 1000);
  }

  /** Replaces the per-upstream instance counts (upstreams that went away disappear). */
  instances(counts: Record<string, number>): void {
    this.upstreamInstances.reset();
    for (const [upstream, count] of Object.entries(counts)) this.upstreamInstances.set(count, { upstream });
  }

  text(): Promise<string> {
    return Promise.resolve(this.families.map((family) => family.text()).join(""));
  }
}
