// Consul's limits, passive health check, idle timeout and metrics keys: read
// from a registration, rendered into haproxy.cfg, planned as reloads; the docs
// table lists every key; the scrape endpoint's pure parts.
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { AgentServiceRegistration } from "../../controller/consul-replies.js";
import { buildDesiredState } from "../../controller/desired-state.js";
import { renderHaproxyConfig } from "../../controller/haproxy-config.js";
import { joinScrape, parseListenAddress } from "../../controller/metrics-server.js";
import { planChanges } from "../../controller/plan-changes.js";
import { documentedKeys } from "../../controller/proxy-config-keys.js";
import { durationMs, envoyOutlierDefaults, outlierWarnings } from "../../controller/proxy-limits.js";
import { MetricFamily } from "../../controller/prometheus-text.js";
import { reloadReasonKinds, SidecarMetrics } from "../../controller/sidecar-metrics.js";
import { parseSidecarSpec, SidecarSpecError } from "../../controller/sidecar-spec.js";
import { checkHaproxyConfig } from "../harness/haproxy.js";
import { dbInstances, defaultChainFor, fixture, paths, snapshotFor } from "./controller-fixtures.js";

/** The recorded web sidecar with `proxyConfig` and its db upstream's `upstreamConfig`. */
function webSidecar(proxyConfig: Record<string, unknown>, upstreamConfig: Record<string, unknown> = {}): AgentServiceRegistration {
  const registration = fixture<AgentServiceRegistration>("agent-service-web-sidecar-proxy");
  const proxy = registration.Proxy!;
  return { ...registration, Proxy: { ...proxy, Config: proxyConfig, Upstreams: proxy.Upstreams!.map((u) => ({ ...u, Config: upstreamConfig })) } };
}

/** A snapshot of the web sidecar (db upstream with the recorded instances) under these Configs. */
function snapshotWith(proxyConfig: Record<string, unknown>, upstreamConfig: Record<string, unknown> = {}) {
  const sidecar = parseSidecarSpec(webSidecar(proxyConfig, upstreamConfig));
  // The chain Consul compiles follows the upstream's protocol.
  const chains = Object.fromEntries(sidecar.upstreams.map((u) => [u.name, defaultChainFor(u)]));
  return { ...snapshotFor("agent-service-web-sidecar-proxy", { upstream_db: dbInstances() }, chains), sidecar };
}

const section = (config: string, header: string) => {
  const lines = config.split("\n");
  const start = lines.indexOf(header);
  const end = lines.findIndex((line, n) => n > start && line === "");
  return lines.slice(start, end);
};

describe("limits and passive health check: parsing", () => {
  it("reads Consul's keys, with Envoy's outlier defaults for what is not set", () => {
    const spec = parseSidecarSpec(
      webSidecar(
        { max_inbound_connections: 3, local_idle_timeout_ms: "2000", envoy_prometheus_bind_addr: "127.0.0.1:9102" },
        { limits: { max_connections: 2, max_pending_requests: "1" }, passive_health_check: { interval: "1s", max_failures: 3 } },
      ),
    );
    expect(spec.publicListener).toMatchObject({ maxInboundConnections: 3, localIdleTimeoutMs: 2000 });
    expect(spec.prometheusBindAddress).toBe("127.0.0.1:9102");
    expect(spec.upstreams[0]).toMatchObject({
      limits: { maxConnections: 2, maxPendingRequests: 1 },
      passiveHealthCheck: { ...envoyOutlierDefaults, intervalMs: 1000, maxFailures: 3 },
    });
  });

  it("treats 0 as not set where Consul does (max_inbound_connections, local_idle_timeout_ms, interval, max_failures)", () => {
    const spec = parseSidecarSpec(webSidecar({ max_inbound_connections: 0, local_idle_timeout_ms: 0, max_request_headers_kb: 0 }, { passive_health_check: { interval: 0, max_failures: 0 } }));
    expect(spec.publicListener.maxInboundConnections).toBeUndefined();
    expect(spec.publicListener.maxRequestHeadersKb).toBeUndefined();
    expect(spec.publicListener.localIdleTimeoutMs).toBeUndefined();
    expect(spec.upstreams[0]!.passiveHealthCheck).toEqual(envoyOutlierDefaults);
  });

  it("reads what the agent merges in from service-defaults (Go field names, durations in nanoseconds)", () => {
    const spec = parseSidecarSpec(
      webSidecar({}, { limits: { MaxConnections: 7, MaxPendingRequests: 0 }, passive_health_check: { Interval: 2_000_000_000, MaxFailures: 4, EnforcingConsecutive5xx: 100, BaseEjectionTime: 3_000_000_000 } }),
    );
    expect(spec.upstreams[0]).toMatchObject({
      limits: { maxConnections: 7, maxPendingRequests: 0 },
      passiveHealthCheck: { intervalMs: 2000, maxFailures: 4, enforcingConsecutive5xx: 100, baseEjectionTimeMs: 3000, maxEjectionPercent: 10 },
    });
  });

  it("reads Go durations and numbers of nanoseconds", () => {
    expect(durationMs("1m30s", "d")).toBe(90_000);
    expect(durationMs("250ms", "d")).toBe(250);
    expect(durationMs(2_000_000_000, "d")).toBe(2000);
    expect(() => durationMs("ten", "d")).toThrow(SidecarSpecError);
  });

  it("refuses bad values with one clear message", () => {
    expect(() => parseSidecarSpec(webSidecar({}, { limits: { max_connections: -1 } }))).toThrow(/upstream db limits\.max_connections must be a whole number ≥ 0, got -1/);
    expect(() => parseSidecarSpec(webSidecar({}, { passive_health_check: { max_ejection_percent: 150 } }))).toThrow(/percentage/);
    expect(() => parseSidecarSpec(webSidecar({ max_inbound_connections: "many" }))).toThrow(/max_inbound_connections/);
    expect(() => parseSidecarSpec(webSidecar({ max_request_headers_kb: 8193 }))).toThrow(/max_request_headers_kb is at most 8192/);
    expect(() => parseSidecarSpec(webSidecar({ max_request_headers_kb: "big" }))).toThrow(/max_request_headers_kb/);
  });

  it("names every documented key it ignores, and what it only approximates", () => {
    const spec = parseSidecarSpec(
      webSidecar({ envoy_stats_tags: ["a=b"], balance_inbound_connections: "exact_balance", not_a_consul_key: 1 }, { envoy_cluster_json: "{}", passive_health_check: { enforcing_consecutive_5xx: 50 } }),
    );
    expect(spec.warnings).toEqual([
      "Proxy.Config.balance_inbound_connections is ignored (connect-haproxy has no equivalent; docs/controller.md)",
      "Proxy.Config.envoy_stats_tags is ignored (connect-haproxy has no equivalent; docs/controller.md)",
      "upstream db: Config.envoy_cluster_json is ignored (connect-haproxy has no equivalent; docs/controller.md)",
      "upstream db: passive_health_check.enforcing_consecutive_5xx 50% is applied as 100% (HAProxy ejects on every detection or never)",
      "upstream db: passive_health_check.max_ejection_percent 10% is not enforced (HAProxy may eject every instance; the upstream then answers 503)",
      "upstream db: passive_health_check.interval 10000ms is not used: an ejected instance returns base_ejection_time after its ejection (Envoy: at its first interval sweep after that)",
    ]);
    expect(parseSidecarSpec(webSidecar({ protocol: "http", max_inbound_connections: 5 })).warnings).toEqual([]);
  });
});

describe("limits and passive health check: rendering", () => {
  it("refuses public connections past max_inbound_connections and caps the local app's", () => {
    const config = renderHaproxyConfig(buildDesiredState(snapshotWith({ max_inbound_connections: 3 }), paths));
    expect(section(config, "frontend public_listener")).toContain("    tcp-request connection reject if { fe_conn gt 3 }");
    expect(section(config, "backend local_app")).toContain("    server app 127.0.0.1:8080 maxconn 3");
  });

  it("answers 431 past max_request_headers_kb on an HTTP public listener, and grows the buffers when it is over 60", () => {
    const global = (config: string) => section(config, "global");
    const limited = renderHaproxyConfig(buildDesiredState(snapshotWith({ protocol: "http", max_request_headers_kb: 8 }), paths));
    expect(section(limited, "frontend public_listener")).toContain('    http-request deny status 431 content-type text/plain string "request headers larger than 8192 bytes" if { req.hdrs,length gt 8192 }');
    expect(global(limited)).toContain("    tune.bufsize 65536");
    const large = renderHaproxyConfig(buildDesiredState(snapshotWith({ protocol: "http", max_request_headers_kb: 100 }), paths));
    expect(global(large)).toContain(`    tune.bufsize ${104 * 1024}`);
    // Unset: no rule, Envoy's 60 KiB default fits in the 64 kB buffers.
    const unset = renderHaproxyConfig(buildDesiredState(snapshotWith({ protocol: "http" }), paths));
    expect(unset).not.toContain("req.hdrs");
    expect(global(unset)).toContain("    tune.bufsize 65536");
    // TCP: no HTTP headers to count.
    const tcp = renderHaproxyConfig(buildDesiredState(snapshotWith({ max_request_headers_kb: 100 }), paths));
    expect(tcp).not.toContain("req.hdrs");
    expect(global(tcp)).toContain("    tune.bufsize 65536");
  });

  it("takes the shorter of the request and idle timeouts for the local app (HAProxy's is an idle timeout)", () => {
    const config = renderHaproxyConfig(buildDesiredState(snapshotWith({ protocol: "http", local_request_timeout_ms: 20000, local_idle_timeout_ms: 7000 }), paths));
    expect(section(config, "backend local_app")).toContain("    timeout server 7000ms");
  });

  it("TCP upstream: connections past max_connections are refused at once (Envoy's TCP proxy queues none)", () => {
    const config = renderHaproxyConfig(buildDesiredState(snapshotWith({}, { limits: { max_connections: 2, max_pending_requests: 5 } }), paths));
    const backend = section(config, "backend upstream_db");
    expect(backend).toContain("    tcp-request content reject if { be_conn gt 2 }");
    expect(backend.join("\n")).not.toMatch(/maxconn|timeout queue/);
  });

  it("HTTP upstream: requests in flight capped per instance, then queued up to max_pending_requests, then 503", () => {
    const config = renderHaproxyConfig(buildDesiredState(snapshotWith({}, { protocol: "http", limits: { max_connections: 4, max_concurrent_requests: 2, max_pending_requests: 1 } }), paths));
    const backend = section(config, "backend upstream_db");
    expect(backend).toContain("    timeout queue 15000ms");
    expect(backend.find((line) => line.includes("http-request return status 503"))).toMatch(/if \{ be_conn gt 3 \}$/);
    expect(backend.filter((line) => line.startsWith("    server ")).every((line) => / maxconn 2( |$)/.test(line))).toBe(true);
  });

  it("observes responses and ejects on max_failures, checks bringing the instance back; free slots stay disabled", () => {
    const snapshot = snapshotWith({}, { protocol: "http", passive_health_check: { interval: "1s", max_failures: 3, base_ejection_time: "4s" } });
    const servers = section(renderHaproxyConfig(buildDesiredState(snapshot, paths)), "backend upstream_db").filter((line) => line.startsWith("    server "));
    // Checked once a day while in rotation (a passing check restarts HAProxy's count of errors in a row);
    // a mark-down moves the next check to base_ejection_time later, and that one passing check brings the instance back.
    const outlier = " check no-check-ssl inter 86400000ms fastinter 4000ms downinter 4000ms rise 1 fall 3 observe layer7 error-limit 3 on-error mark-down";
    expect(servers.length).toBe(8);
    for (const server of servers) expect(server).toContain(outlier);
    expect(outlierWarnings(buildDesiredState(snapshot, paths).upstreams[0]!.passiveHealthCheck)).toContain(
      "passive_health_check.interval 1000ms is not used: an ejected instance returns base_ejection_time after its ejection (Envoy: at its first interval sweep after that)",
    );
    expect(servers.filter((server) => server.endsWith(" disabled")).length).toBe(8 - dbInstances().length);
    const tcp = renderHaproxyConfig(buildDesiredState(snapshotWith({}, { passive_health_check: { max_failures: 2 } }), paths));
    expect(tcp).toContain("observe layer4 error-limit 2 on-error mark-down");
    const counted = renderHaproxyConfig(buildDesiredState(snapshotWith({}, { passive_health_check: { enforcing_consecutive_5xx: 0 } }), paths));
    expect(counted).not.toContain("observe");
  });

  it("serves HAProxy's Prometheus exporter on a unix socket only when given one", () => {
    const without = renderHaproxyConfig(buildDesiredState(snapshotWith({}), paths));
    expect(without).not.toContain("prometheus-exporter");
    const withSocket = renderHaproxyConfig(buildDesiredState(snapshotWith({}), { ...paths, promexSocket: "/run/ch/promex.sock" }));
    expect(section(withSocket, "frontend prometheus_exporter")).toEqual([
      "frontend prometheus_exporter",
      "    mode http",
      "    bind unix@/run/ch/promex.sock mode 600",
      "    no log",
      "    http-request use-service prometheus-exporter",
    ]);
  });

  it("is accepted by haproxy -c with every limit, the passive health check and the exporter", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ch-limits-"));
    const local = { ...paths, configFile: join(dir, "haproxy.cfg"), leafCertificateFile: join(dir, "leaf.pem"), caRootsFile: join(dir, "roots.pem"), statsSocket: join(dir, "stats.sock"), promexSocket: join(dir, "promex.sock") };
    for (const protocol of ["tcp", "http"]) {
      const state = buildDesiredState(
        snapshotWith(
          { protocol, max_inbound_connections: 10, local_idle_timeout_ms: 1000, max_request_headers_kb: 100 },
          { protocol, limits: { max_connections: 4, max_pending_requests: 2, max_concurrent_requests: 3 }, passive_health_check: { max_failures: 2 } },
        ),
        local,
      );
      writeFileSync(local.leafCertificateFile, state.leafCertificatePem, { mode: 0o600 });
      writeFileSync(local.caRootsFile, state.caRootsPem);
      writeFileSync(local.configFile, renderHaproxyConfig(state, { authorization: false }));
      await checkHaproxyConfig(local.configFile);
    }
  });
});

describe("limits and passive health check: planning", () => {
  it("reloads when a limit changes, with a reason whose kind the metrics count", () => {
    const running = buildDesiredState(snapshotWith({}), paths);
    const limited = buildDesiredState(snapshotWith({ max_inbound_connections: 3 }, { limits: { max_connections: 2 } }), paths, running);
    const plan = planChanges(running, limited);
    expect(plan).toMatchObject({ kind: "reload", reason: "public listener maxInboundConnections undefined -> 3; upstream upstream_db settings changed (limits)" });
    expect(reloadReasonKinds(plan.kind === "reload" ? plan.reason : "")).toEqual(["public_listener", "upstream_settings"]);
    // And back: a limit removed is a change too.
    expect(planChanges(limited, buildDesiredState(snapshotWith({}), paths, limited))).toMatchObject({ kind: "reload", reason: "public listener maxInboundConnections 3 -> undefined; upstream upstream_db settings changed (limits)" });
  });

  it("sorts reload reasons into a few kinds", () => {
    expect(reloadReasonKinds("leaf certificate renewed (serial a -> b); HAProxy 2.6 cannot swap a mutual-TLS listener's certificate at run time")).toEqual(["leaf_renewed"]);
    expect(reloadReasonKinds("upstream upstream_db needs 16 server slots (has 8)")).toEqual(["slots_grown"]);
    expect(reloadReasonKinds("upstream db: discovery chain changed (router added)")).toEqual(["discovery_chain"]);
    expect(reloadReasonKinds("something new")).toEqual(["other"]);
  });
});

describe("docs/controller.md", () => {
  it("has a row for every key Consul documents, saying what connect-haproxy does with it", () => {
    const docs = readFileSync(new URL("../../docs/controller.md", import.meta.url), "utf8");
    for (const { key, scope, support } of documentedKeys) {
      const row = docs.split("\n").find((line) => line.startsWith(`| ${scope === "proxy" ? "Proxy.Config" : "upstream Config"} | \`${key}\` |`));
      expect(row, `${scope} ${key}`).toBeDefined();
      expect(row!.split("|")[3]!.trim(), `${scope} ${key}`).toBe(support);
    }
  });
});

describe("the scrape endpoint", () => {
  it("parses listen addresses", () => {
    expect(parseListenAddress("127.0.0.1:9102")).toEqual({ host: "127.0.0.1", port: 9102 });
    expect(parseListenAddress("[::1]:9102")).toEqual({ host: "::1", port: 9102 });
    expect(parseListenAddress(":9102")).toEqual({ host: "", port: 9102 });
    expect(() => parseListenAddress("9102")).toThrow(/host:port/);
  });

  it("joins the parts and says which could not be read", () => {
    const text = joinScrape([
      { name: "haproxy", text: "# TYPE haproxy_x gauge\nhaproxy_x 1" },
      { name: "authorizer", text: undefined },
      { name: "controller", text: "# TYPE c counter\nc 2\n" },
    ]);
    expect(text).toBe(
      "# TYPE haproxy_x gauge\nhaproxy_x 1\n# TYPE c counter\nc 2\n" +
        "# HELP connect_haproxy_scrape_part_up Whether this scrape could read the part (haproxy, authorizer, controller).\n# TYPE connect_haproxy_scrape_part_up gauge\n" +
        'connect_haproxy_scrape_part_up{part="haproxy"} 1\nconnect_haproxy_scrape_part_up{part="authorizer"} 0\nconnect_haproxy_scrape_part_up{part="controller"} 1\n',
    );
  });
});

describe("the controller's metrics in Prometheus's text format", () => {
  it("counts per label set, escapes label values and help, and reads gauges at each scrape", async () => {
    const family = new MetricFamily("x_total", "Counts \\ things\nby kind.", "counter");
    family.inc({ kind: 'a "quoted"\nvalue\\' });
    family.inc({ kind: 'a "quoted"\nvalue\\' }, 2);
    family.inc({ kind: "b" });
    expect(family.text()).toBe(['# HELP x_total Counts \\\\ things\\nby kind.', "# TYPE x_total counter", 'x_total{kind="a \\"quoted\\"\\nvalue\\\\"} 3', 'x_total{kind="b"} 1', ""].join("\n"));
    let ready = true;
    const metrics = new SidecarMetrics({ leafExpiresInSeconds: () => undefined, ready: () => ready });
    metrics.reload("upstream upstream_db needs 16 server slots (has 8); native L7 rules for api follow its intentions at index 3", "applied");
    expect(await metrics.text()).toContain('connect_haproxy_reloads_total{reason="slots_grown",result="applied"} 1\nconnect_haproxy_reloads_total{reason="native_l7_rules",result="applied"} 1\n');
    expect(await metrics.text()).toContain("# TYPE connect_haproxy_leaf_expiry_seconds gauge\n# HELP connect_haproxy_ready");
    expect(await metrics.text()).toContain("connect_haproxy_ready 1\n");
    ready = false;
    expect(await metrics.text()).toContain("connect_haproxy_ready 0\n");
  });
});
