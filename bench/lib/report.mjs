// Pure: raw measurements → summary (median over rounds), ratios, targets,
// the markdown table and the chart's panels.
import { formatNumber } from "./chart.mjs";
import { SETUPS } from "./setups.mjs";

export function median(values) {
  const sorted = values.filter((v) => typeof v === "number" && Number.isFinite(v)).sort((a, b) => a - b);
  if (!sorted.length) return undefined;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Count, median, 90th percentile (nearest rank) and maximum of `samples`, to 0.1. */
export function quantileSummary(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { n: sorted.length, median: +at(0.5).toFixed(1), p90: +at(0.9).toFixed(1), max: +sorted[sorted.length - 1].toFixed(1) };
}

/** (max − min) / median of a set-up's rounds: the noise figure a benchmark reports. */
export function spread(values) {
  return +((Math.max(...values) - Math.min(...values)) / median(values)).toFixed(3);
}

/** The median of the per-round ratios values[i] / base[i] (rounds interleave the set-ups). */
export function medianRatio(values, base) {
  return +median(values.map((value, i) => value / base[i])).toFixed(3);
}

const perUnit = (seconds, count, scale) => (seconds === undefined || !count ? undefined : (seconds / count) * scale);

/** Each figure the report shows: how to read it from one round's measurement. */
export const METRICS = [
  { key: "newConnPerSec", label: "new connections/s (one request each, new TLS handshakes)", unit: "conn/s", better: "higher", get: (r) => r.newConn?.requestsPerSecond },
  { key: "newConnP99Ms", label: "  p99 latency of those requests", unit: "ms", better: "lower", get: (r) => r.newConn && r.newConn.latencyUs.p99 / 1000 },
  { key: "keepAliveRps", label: "requests/s over kept-alive connections", unit: "req/s", better: "higher", get: (r) => r.keepAlive?.requestsPerSecond },
  { key: "keepAliveP50Ms", label: "  p50 latency", unit: "ms", better: "lower", get: (r) => r.keepAlive && r.keepAlive.latencyUs.p50 / 1000 },
  { key: "keepAliveP99Ms", label: "  p99 latency", unit: "ms", better: "lower", get: (r) => r.keepAlive && r.keepAlive.latencyUs.p99 / 1000 },
  { key: "pacedP50Us", label: "light steady load (kept-alive, ~3,000 req/s), p50 latency", unit: "µs", better: "lower", get: (r) => r.paced?.latencyUs.p50 },
  { key: "pacedP99Us", label: "  p99 latency", unit: "µs", better: "lower", get: (r) => r.paced?.latencyUs.p99 },
  { key: "bulkGbps", label: "bulk throughput, one stream (iperf3)", unit: "Gbit/s", better: "higher", get: (r) => r.bulk?.gbitPerSecond },
  { key: "cpuUsPerNewConn", label: "proxies' CPU per new connection", unit: "µs", better: "lower", sidecarsOnly: true, get: (r) => r.newConn && perUnit(r.newConn.cpu.sidecarsSeconds, r.newConn.requests, 1e6) },
  { key: "cpuUsPerRequest", label: "proxies' CPU per kept-alive request", unit: "µs", better: "lower", sidecarsOnly: true, get: (r) => r.keepAlive && perUnit(r.keepAlive.cpu.sidecarsSeconds, r.keepAlive.requests, 1e6) },
  { key: "cpuSecondsPerGB", label: "proxies' CPU per GB of bulk data", unit: "CPU s/GB", better: "lower", sidecarsOnly: true, get: (r) => r.bulk && perUnit(r.bulk.cpu.sidecarsSeconds, r.bulk.bytes, 1e9) },
  { key: "cpuUsPerNewConnWithAgent", label: "proxies' + Consul agent's CPU per new connection", unit: "µs", better: "lower", sidecarsOnly: true, get: (r) => r.newConn && perUnit(r.newConn.cpu.sidecarsSeconds + (r.newConn.cpu.byGroup["consul agent"] ?? 0), r.newConn.requests, 1e6) },
  { key: "agentCpuUsPerNewConn", label: "Consul agent's CPU per new connection", unit: "µs", better: "lower", sidecarsOnly: true, get: (r) => r.newConn && perUnit(r.newConn.cpu.byGroup["consul agent"], r.newConn.requests, 1e6) },
  { key: "proxiesCpuSeconds", label: "proxies' CPU, all phases", unit: "CPU s", better: "lower", sidecarsOnly: true, get: (r) => sumPhases(r, (p) => p.cpu.sidecarsSeconds) },
  { key: "peakRssMbSidecar", label: "peak RSS of one sidecar (largest of the two)", unit: "MB", better: "lower", sidecarsOnly: true, get: (r) => (r.sidecars?.length ? Math.max(...r.sidecars.map((s) => s.peakRssKb)) / 1024 : undefined) },
  { key: "peakAnonMbSidecar", label: "↳ of which anonymous (RssAnon: heap and stacks; the rest is the binaries' pages, shared by every process of the same program on the host)", unit: "MB", better: "lower", sidecarsOnly: true, get: (r) => (r.sidecars?.length && r.sidecars.every((s) => s.peakAnonRssKb !== undefined) ? Math.max(...r.sidecars.map((s) => s.peakAnonRssKb)) / 1024 : undefined) },
  { key: "peakRssMbPair", label: "peak RSS of both sidecars", unit: "MB", better: "lower", sidecarsOnly: true, get: (r) => (r.sidecars?.length ? r.sidecars.reduce((a, s) => a + s.peakRssKb, 0) / 1024 : undefined) },
  { key: "errors", label: "client errors (connect, read, write, timeout, HTTP ≥ 400)", unit: "", better: "lower", get: (r) => sumPhases(r, (p) => p.errorCount ?? 0) },
  { key: "unattributedCpuPct", label: "machine CPU not spent by this benchmark (noise)", unit: "%", better: "lower", get: (r) => noisePercent(r) },
];

const PHASES = ["newConn", "keepAlive", "paced", "bulk"];

function sumPhases(round, pick) {
  const present = PHASES.filter((p) => round[p]);
  if (!present.length) return undefined;
  return present.reduce((sum, p) => sum + pick(round[p]), 0);
}

function noisePercent(round) {
  const unattributed = sumPhases(round, (p) => p.cpu.unattributedSeconds);
  const total = sumPhases(round, (p) => p.cpu.machineSeconds);
  return unattributed === undefined || !total ? undefined : (unattributed / total) * 100;
}

/** rounds: { [setupId]: roundResult[] } → { [setupId]: { [metricKey]: { median, min, max, values } } } */
export function summarize(rounds) {
  const summary = {};
  for (const [setup, results] of Object.entries(rounds)) {
    summary[setup] = {};
    for (const metric of METRICS) {
      if (metric.sidecarsOnly && setup === "direct") continue;
      const values = results.map((r) => metric.get(r)).filter((v) => typeof v === "number" && Number.isFinite(v));
      if (!values.length) continue;
      summary[setup][metric.key] = { median: median(values), min: Math.min(...values), max: Math.max(...values), values };
    }
  }
  return summary;
}

const ratio = (a, b) => (a === undefined || b === undefined || b === 0 ? undefined : a / b);
const med = (summary, setup, key) => summary[setup]?.[key]?.median;

/**
 * The set-ups compared side by side: a TCP upstream (the application's bytes
 * through the pair) and an HTTP upstream (protocol http: HAProxy parses each
 * request and pools its mTLS connections; Consul's built-in proxy still
 * proxies TCP). Ratio keys: `connectOver<Builtin|Plain>` for TCP,
 * `httpOver<Builtin|Plain>` for HTTP.
 */
export const FAMILIES = [
  { id: "tcp", title: "TCP upstream", columns: ["direct", "plain", "connect", "builtin"], mine: "connect", builtin: "builtin", plain: "plain", ratioPrefix: "connectOver" },
  { id: "http", title: "HTTP upstream (protocol http)", columns: ["plainHttp", "connectHttp", "builtinHttp"], mine: "connectHttp", builtin: "builtinHttp", plain: "plainHttp", ratioPrefix: "httpOver" },
];

export function ratios(summary) {
  const out = {};
  for (const metric of METRICS) {
    if (["errors", "unattributedCpuPct"].includes(metric.key)) continue;
    out[metric.key] = {};
    for (const family of FAMILIES) {
      out[metric.key][`${family.ratioPrefix}Builtin`] = ratio(med(summary, family.mine, metric.key), med(summary, family.builtin, metric.key));
      out[metric.key][`${family.ratioPrefix}Plain`] = ratio(med(summary, family.mine, metric.key), med(summary, family.plain, metric.key));
    }
  }
  return out;
}

/**
 * `mine` / other for one metric, round by round (set-ups measured in the
 * same round ran minutes apart, so these ratios see less drift).
 */
export function perRoundRatios(rounds, key, other, mineId = "connect") {
  const metric = METRICS.find((m) => m.key === key);
  const mine = rounds?.[mineId] ?? [];
  const theirs = rounds?.[other] ?? [];
  const out = [];
  for (let i = 0; i < Math.min(mine.length, theirs.length); i++) {
    const a = metric.get(mine[i]);
    const b = metric.get(theirs[i]);
    if (typeof a === "number" && typeof b === "number" && b !== 0) out.push(a / b);
  }
  return out;
}

/** The issue's targets, each checked against this run (on the ratio of medians). */
export function checkTargets(summary, ratioTable, rounds) {
  const r = (key, which) => ratioTable[key]?.[which];
  const rss = med(summary, "connect", "peakRssMbSidecar");
  const target = (name, measured, limit, atLeast, unit = "×", ratioOf) => ({
    name,
    measured,
    target: `${atLeast ? "≥" : "≤"} ${limit}${unit === "×" ? "×" : ` ${unit}`}`,
    met: measured === undefined ? undefined : atLeast ? measured >= limit : measured <= limit,
    unit,
    ...(ratioOf && rounds ? { perRound: perRoundRatios(rounds, ...ratioOf) } : {}),
  });
  return [
    target("new connections/s vs built-in proxy", r("newConnPerSec", "connectOverBuiltin"), 2, true, "×", ["newConnPerSec", "builtin"]),
    target("new connections/s vs plain HAProxy pair", r("newConnPerSec", "connectOverPlain"), 0.9, true, "×", ["newConnPerSec", "plain"]),
    target("bulk throughput vs built-in proxy", r("bulkGbps", "connectOverBuiltin"), 1.5, true, "×", ["bulkGbps", "builtin"]),
    target("bulk throughput vs plain HAProxy pair", r("bulkGbps", "connectOverPlain"), 0.95, true, "×", ["bulkGbps", "plain"]),
    target("p99 latency, kept-alive, vs built-in proxy", r("keepAliveP99Ms", "connectOverBuiltin"), 1, false, "×", ["keepAliveP99Ms", "builtin"]),
    target("p99 latency, kept-alive at light load, vs built-in proxy (added here)", r("pacedP99Us", "connectOverBuiltin"), 1, false, "×", ["pacedP99Us", "builtin"]),
    target("peak RSS of one sidecar (controller + HAProxy)", rss, 130, false, "MB"),
    target("HTTP: new client connections/s vs built-in proxy", r("newConnPerSec", "httpOverBuiltin"), 5, true, "×", ["newConnPerSec", "builtinHttp", "connectHttp"]),
    target("HTTP: kept-alive requests/s vs built-in proxy", r("keepAliveRps", "httpOverBuiltin"), 0.8, true, "×", ["keepAliveRps", "builtinHttp", "connectHttp"]),
    target("HTTP: kept-alive requests/s vs plain HTTP pair (no Lua, same logging, same pooling)", r("keepAliveRps", "httpOverPlain"), 0.85, true, "×", ["keepAliveRps", "plainHttp", "connectHttp"]),
    target("HTTP: p99 latency, kept-alive, vs built-in proxy", r("keepAliveP99Ms", "httpOverBuiltin"), 1, false, "×", ["keepAliveP99Ms", "builtinHttp", "connectHttp"]),
  ];
}

function cell(summary, setup, key) {
  const entry = summary[setup]?.[key];
  if (!entry) return "–";
  const spread = entry.values.length > 1 && entry.max !== entry.min ? ` <sub>${formatNumber(entry.min)}–${formatNumber(entry.max)}</sub>` : "";
  return formatNumber(entry.median) + spread;
}

const formatRatio = (value) => (value === undefined ? "–" : `${value.toFixed(2)}×`);

export function markdownReport({ machine, settings, summary, ratioTable, targets, extras, chartFile, rounds }) {
  const lines = [];
  const add = (...more) => lines.push(...more);
  add(
    `# connect-haproxy benchmark${settings.quick ? " (quick smoke run: figures are not meaningful)" : ""}`,
    "",
    `Generated by \`npm run bench${settings.quick ? " -- --quick" : ""}\` on ${settings.finishedAt} (commit ${settings.commit}). Path measured: client → web's upstream listener → mTLS → db's public listener → application, on 127.0.0.1.`,
    "",
  );
  if (chartFile) add(`![benchmark chart](${chartFile})`, "");
  add("How these figures are made, how to read them, and what the profiles show: [docs/benchmarks.md](../../docs/benchmarks.md).", "");
  add(
    "## Machine",
    "",
    "| | |",
    "|---|---|",
    ...Object.entries(machine).map(([k, v]) => `| ${k} | ${String(v).replaceAll("|", "\\|")} |`),
    "",
    "## How",
    "",
    ...settings.method.map((m) => `- ${m}`),
    "",
    "## Results",
    "",
    `Median of ${settings.rounds} round${settings.rounds > 1 ? "s" : ""}${settings.rounds > 1 ? " (smallest–largest in small print)" : ""}. Ratios are connect-haproxy divided by the other set-up.`,
  );
  for (const family of FAMILIES) {
    const columns = family.columns;
    if (!columns.some((c) => summary[c])) continue;
    add(
      "",
      `### ${family.title}`,
      "",
      `| | ${columns.map((c) => SETUPS[c].short).join(" | ")} | connect-haproxy / built-in | connect-haproxy / plain |`,
      `|---|${columns.map(() => "--:").join("|")}|--:|--:|`,
    );
    for (const metric of METRICS) {
      if (!columns.some((c) => summary[c]?.[metric.key])) continue;
      const unit = metric.unit ? ` (${metric.unit})` : "";
      const ratiosFor = ratioTable[metric.key];
      add(
        `| ${metric.label.replace(/^ {2}/, "↳ ")}${unit} | ${columns.map((c) => cell(summary, c, metric.key)).join(" | ")} | ${formatRatio(ratiosFor?.[`${family.ratioPrefix}Builtin`])} | ${formatRatio(ratiosFor?.[`${family.ratioPrefix}Plain`])} |`,
      );
    }
  }
  add(
    "",
    "## Targets",
    "",
    "Measured on the ratio of the medians; the same ratio round by round is shown beside it (set-ups of one round ran minutes apart).",
    "",
    "| target | required | measured | | round by round |",
    "|---|---|--:|---|---|",
  );
  for (const t of targets) {
    const measured = t.measured === undefined ? "–" : t.unit === "×" ? formatRatio(t.measured) : `${formatNumber(t.measured)} ${t.unit}`;
    const perRound = t.perRound?.length ? t.perRound.map(formatRatio).join(", ") : "";
    add(`| ${t.name} | ${t.target} | ${measured} | ${t.met === undefined ? "not measured" : t.met ? "met" : "**missed**"} | ${perRound} |`);
  }
  add("", "## Cost of authorization alone", "");
  const noCache = summary.connectNoCache;
  if (noCache?.newConnPerSec) {
    const warm = med(summary, "connect", "newConnPerSec");
    add(
      `With the verdict cache off (\`CONNECT_ALLOW_TTL=0\`), every new connection asks the agent (\`POST /v1/agent/connect/authorize\`; connections arriving while a call for the same client is in flight share it):`,
      "",
      "| | connect-haproxy, cache warm | connect-haproxy, cache off |",
      "|---|--:|--:|",
      `| new connections/s | ${cell(summary, "connect", "newConnPerSec")} | ${cell(summary, "connectNoCache", "newConnPerSec")} |`,
      `| proxies' CPU per new connection (µs) | ${cell(summary, "connect", "cpuUsPerNewConn")} | ${cell(summary, "connectNoCache", "cpuUsPerNewConn")} |`,
      `| Consul agent's CPU per new connection (µs) | ${cell(summary, "connect", "agentCpuUsPerNewConn")} | ${cell(summary, "connectNoCache", "agentCpuUsPerNewConn")} |`,
      `| p99 latency of a new-connection request (ms) | ${cell(summary, "connect", "newConnP99Ms")} | ${cell(summary, "connectNoCache", "newConnP99Ms")} |`,
      "",
      warm ? `Cache off / cache warm: ${formatRatio(ratio(med(summary, "connectNoCache", "newConnPerSec"), warm))} the connection rate.` : "",
    );
    const perConnection = extras.authorizerPerConnection ?? {};
    if (perConnection.connect?.length || perConnection.connectNoCache?.length) {
      add("", "Per new connection, from `connect cache stats` on db's sidecar before and after the phase (one entry per round):", "");
      if (perConnection.connect?.length) add(`- cache warm: ${perConnection.connect.join("; ")}`);
      if (perConnection.connectNoCache?.length) add(`- cache off: ${perConnection.connectNoCache.join("; ")}`);
    }
  } else {
    add("Not measured in this run.");
  }
  const optIn = Object.keys(summary).filter((id) => SETUPS[id]?.optIn);
  if (optIn.length) {
    const keys = ["newConnPerSec", "keepAliveRps", "keepAliveP99Ms", "bulkGbps", "cpuUsPerNewConn", "cpuSecondsPerGB", "peakRssMbSidecar"];
    const labels = ["new conn/s", "kept-alive req/s", "p99 kept-alive (ms)", "bulk (Gbit/s)", "CPU/new conn (µs)", "CPU s/GB", "peak RSS/sidecar (MB)"];
    add(
      "",
      "## Tuning candidates (opt-in set-ups)",
      "",
      "The plain pair with settings the controller could render, measured in the same run:",
      "",
      `| | ${labels.join(" | ")} |`,
      `|---|${labels.map(() => "--:").join("|")}|`,
    );
    for (const id of ["plain", "plainHttp", ...optIn]) {
      if (summary[id]) add(`| ${SETUPS[id].label} | ${keys.map((k) => cell(summary, id, k)).join(" | ")} |`);
    }
  }
  if (rounds) {
    const breakdown = cpuBreakdown(rounds);
    const commands = [...new Set(Object.values(breakdown).flatMap((b) => Object.keys(b)))].sort();
    if (commands.length) {
      add(
        "",
        "## Where the proxies' CPU goes, per new connection",
        "",
        "Both sidecars together, by process (µs of CPU per connection in the new-connection phase, median): `haproxy` is HAProxy (master and worker), `node` the controller, `consul` Consul's built-in proxy. The TLS columns are HAProxy's own rates on db's side, read midway through the phase.",
        "",
        `| | ${commands.join(" | ")} | TLS handshakes/s | of which with a new key exchange/s | sessions resumed (%) |`,
        `|---|${commands.map(() => "--:").join("|")}|--:|--:|--:|`,
      );
      for (const setup of Object.keys(breakdown)) {
        if (!breakdown[setup]) continue;
        const tls = tlsMidway(rounds[setup]);
        add(
          `| ${SETUPS[setup].short} | ${commands.map((c) => formatNumber(breakdown[setup][c])).join(" | ")} | ${formatNumber(tls.sslRate)} | ${formatNumber(tls.sslFrontendKeyRate)} | ${formatNumber(tls.sslFrontendSessionReusePct)} |`,
        );
      }
    }
  }
  if (extras.microbenchmark) {
    add("", "### Authorizer micro-benchmark (Lua, under lua5.3)", "", extras.microbenchmark.markdown);
  }
  const notes = [...(extras.notes ?? []), ...shutdownNotes(rounds)];
  if (notes.length) add("", "## Notes", "", ...notes.map((n) => `- ${n}`));
  add("");
  return lines.join("\n");
}

/** Sidecars that had to be killed because they did not exit after SIGTERM/SIGINT. */
function shutdownNotes(rounds = {}) {
  const notes = [];
  for (const [setup, results] of Object.entries(rounds)) {
    const forced = results.flatMap((r) => r.shutdown ?? []).filter((s) => s.forced);
    if (forced.length) notes.push(`${SETUPS[setup]?.short ?? setup}: ${forced.length} sidecar process(es) did not exit within ${Math.max(...forced.map((f) => f.ms))} ms of the stop signal and were killed (${[...new Set(forced.map((f) => f.process))].join(", ")})`);
  }
  return notes;
}

/** { setup: { command: median µs of CPU per new connection } } */
export function cpuBreakdown(rounds) {
  const out = {};
  for (const [setup, results] of Object.entries(rounds)) {
    const perRound = results.filter((r) => r.newConn?.requests && r.newConn.cpu.sidecarsByCommand && Object.keys(r.newConn.cpu.sidecarsByCommand).length);
    if (!perRound.length) continue;
    const commands = new Set(perRound.flatMap((r) => Object.keys(r.newConn.cpu.sidecarsByCommand)));
    out[setup] = {};
    for (const command of commands) {
      out[setup][command] = median(perRound.map((r) => ((r.newConn.cpu.sidecarsByCommand[command] ?? 0) / r.newConn.requests) * 1e6));
    }
  }
  return out;
}

function tlsMidway(results = []) {
  const samples = results.map((r) => r.newConn?.midway).filter((m) => m && !m.error);
  const pick = (key) => median(samples.map((m) => m[key]));
  return { sslRate: pick("sslRate"), sslFrontendKeyRate: pick("sslFrontendKeyRate"), sslFrontendSessionReusePct: pick("sslFrontendSessionReusePct") };
}

export function chartPanels(summary) {
  const [tcp, http] = FAMILIES;
  // Colours and legend by role (plain, connect, builtin), the same in both families.
  const barsOf = (family) => (key) =>
    ["plain", "mine", "builtin"]
      .map((role, i) => [["plain", "connect", "builtin"][i], family[role]])
      .filter(([, s]) => summary[s])
      .map(([role, s]) => ({ setup: role, label: SETUPS[s].short, short: SETUPS[s].short.replace("HAProxy", "").trim(), value: med(summary, s, key) }));
  const bars = barsOf(tcp);
  const httpBars = barsOf(http);
  const direct = (key) => ({ label: "direct, no proxies", value: med(summary, "direct", key) });
  return [
    { title: "New connections per second", unit: "conn/s, one request each", better: "higher", reference: direct("newConnPerSec"), bars: bars("newConnPerSec") },
    { title: "Kept-alive requests per second", unit: "req/s", better: "higher", reference: direct("keepAliveRps"), bars: bars("keepAliveRps") },
    { title: "p99 latency, kept-alive, saturated", unit: "ms", better: "lower", reference: direct("keepAliveP99Ms"), bars: bars("keepAliveP99Ms") },
    { title: "p99 latency, light steady load", unit: "µs (~3,000 req/s)", better: "lower", reference: direct("pacedP99Us"), bars: bars("pacedP99Us") },
    { title: "Bulk throughput, one stream", unit: "Gbit/s (iperf3)", better: "higher", reference: direct("bulkGbps"), bars: bars("bulkGbps") },
    { title: "CPU per new connection", unit: "µs, both sidecars + Consul agent", better: "lower", bars: bars("cpuUsPerNewConnWithAgent") },
    { title: "Proxies' CPU per GB of bulk data", unit: "CPU seconds", better: "lower", bars: bars("cpuSecondsPerGB") },
    { title: "Peak RSS of one sidecar", unit: "MB", better: "lower", bars: bars("peakRssMbSidecar") },
    ...(http.columns.some((s) => summary[s])
      ? [
        { title: "HTTP upstream: new client connections/s", unit: "conn/s, one request each", better: "higher", reference: direct("newConnPerSec"), bars: httpBars("newConnPerSec") },
        { title: "HTTP upstream: kept-alive requests/s", unit: "req/s", better: "higher", reference: direct("keepAliveRps"), bars: httpBars("keepAliveRps") },
        { title: "HTTP upstream: p99 latency, kept-alive", unit: "ms", better: "lower", reference: direct("keepAliveP99Ms"), bars: httpBars("keepAliveP99Ms") },
        { title: "HTTP upstream: CPU per new client connection", unit: "µs, both sidecars + Consul agent", better: "lower", bars: httpBars("cpuUsPerNewConnWithAgent") },
      ]
      : []),
  ];
}
