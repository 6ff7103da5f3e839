// The authorizer's counters in Prometheus' text format, for `connect metrics`
// on the stats socket (the controller adds them to the sidecar's one scrape
// endpoint). Decisions are counted by verdict and origin (a small fixed set:
// cache, agent, shared, grace, agent-error, identity, path, permission, ...);
// requests HAProxy passes natively never reach Lua and are in HAProxy's own
// counters. Counts belong to this Lua state: a reload starts them at zero,
// which Prometheus reads as a counter reset.

import type { AuthorizerStats } from "./authorizer";

const format = string.format;

/** Upper bounds of the agent-call latency buckets, in milliseconds. */
const LATENCY_BOUNDS_MS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

export class LatencyHistogram {
  readonly counts: number[] = [];
  count = 0;
  sumMs = 0;

  constructor() {
    for (let i = 0; i < LATENCY_BOUNDS_MS.length; i++) this.counts[i] = 0;
  }

  observe(ms: number): void {
    this.count++;
    this.sumMs += ms;
    for (let i = 0; i < LATENCY_BOUNDS_MS.length; i++) {
      if (ms <= LATENCY_BOUNDS_MS[i]) this.counts[i]++;
    }
  }
}

/** Decisions by verdict and origin: one table per verdict, so counting allocates nothing. */
export class DecisionCounters {
  private readonly allows = new LuaTable<string, number>();
  private readonly denies = new LuaTable<string, number>();

  record(allowed: boolean, origin: string): void {
    const counts = allowed ? this.allows : this.denies;
    counts.set(origin, (counts.get(origin) ?? 0) + 1);
  }

  /** [verdict, origin, count], allows first, each sorted by origin (a stable text). */
  entries(): [string, string, number][] {
    const result: [string, string, number][] = [];
    for (const [verdict, counts] of [["allow", this.allows], ["deny", this.denies]] as [string, LuaTable<string, number>][]) {
      const origins: string[] = [];
      for (const [origin] of pairs(counts)) origins.push(origin);
      table.sort(origins);
      for (const origin of origins) result.push([verdict, origin, counts.get(origin) as number]);
    }
    return result;
  }
}

function labelValue(text: string): string {
  const [escaped] = string.gsub(text, '[\\"\n]', (c: string) => (c === "\n" ? "\\n" : "\\" + c));
  return escaped;
}

function family(lines: string[], name: string, kind: string, help: string): void {
  lines.push("# HELP " + name + " " + help, "# TYPE " + name + " " + kind);
}

function counter(lines: string[], name: string, help: string, value: number): void {
  family(lines, name, "counter", help);
  lines.push(format("%s %d", name, value));
}

/** Prometheus text for the authorizer's counters. */
export function metricsText(stats: AuthorizerStats, decisions: DecisionCounters, latency: LatencyHistogram): string {
  const lines: string[] = [];
  family(lines, "connect_authorizer_decisions_total", "counter", "Authorization decisions made by the Lua authorizer, by verdict and by what decided (origin).");
  for (const [verdict, origin, count] of decisions.entries()) {
    lines.push(format('connect_authorizer_decisions_total{verdict="%s",origin="%s"} %d', verdict, labelValue(origin), count));
  }
  counter(lines, "connect_authorizer_cache_hits_total", "Verdicts served from the authorizer's cache.", stats.hits);
  counter(lines, "connect_authorizer_cache_misses_total", "Verdicts not in the cache (an agent call, or waiting for one).", stats.misses);
  counter(lines, "connect_authorizer_shared_calls_total", "Verdicts taken from another connection's agent call (single flight).", stats.shared);
  counter(lines, "connect_authorizer_agent_calls_total", "Calls to the Consul agent's authorize endpoint.", stats.agentCalls);
  counter(lines, "connect_authorizer_agent_errors_total", "Agent calls that failed (the decision was a deny, or a grace allow).", stats.errors);
  counter(lines, "connect_authorizer_grace_allows_total", "Allows honoured from an expired verdict while the agent was unreachable.", stats.graceAllows);
  counter(lines, "connect_authorizer_cache_evictions_total", "Cached verdicts evicted because the cache was full.", stats.evictions);
  counter(lines, "connect_authorizer_cache_flushes_total", "Cache flushes (intentions or the default policy changed).", stats.flushes);
  family(lines, "connect_authorizer_cache_entries", "gauge", "Verdicts in the cache.");
  lines.push(format("connect_authorizer_cache_entries %d", stats.entries));
  family(lines, "connect_authorizer_agent_call_seconds", "histogram", "Duration of calls to the Consul agent's authorize endpoint.");
  for (let i = 0; i < LATENCY_BOUNDS_MS.length; i++) {
    lines.push(format('connect_authorizer_agent_call_seconds_bucket{le="%s"} %d', tostring(LATENCY_BOUNDS_MS[i] / 1000), latency.counts[i]));
  }
  lines.push(format('connect_authorizer_agent_call_seconds_bucket{le="+Inf"} %d', latency.count));
  lines.push(format("connect_authorizer_agent_call_seconds_sum %.6f", latency.sumMs / 1000));
  lines.push(format("connect_authorizer_agent_call_seconds_count %d", latency.count));
  return table.concat(lines, "\n") + "\n";
}
