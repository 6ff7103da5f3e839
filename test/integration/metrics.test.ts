// Metrics and readiness with real parts: a Consul dev agent, two connect-haproxy
// sidecars (db's endpoint from its registration's envoy_prometheus_bind_addr,
// web's from --metrics-addr), and a real Prometheus scraping both every second.
//
//   client ──► web sidecar (upstream db) ══mTLS══► db sidecar ──► db app
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { serviceWithSidecar, startConnectHaproxy, startDbApp, tcpRoundTrip, type SidecarProcess } from "../harness/mesh.js";
import { freePorts } from "../harness/ports.js";
import { promtoolCheckMetrics, startPrometheus, type PrometheusServer } from "../harness/prometheus.js";
import { waitFor, type StartedProcess } from "../harness/processes.js";

describe("metrics and readiness, scraped by a real Prometheus", () => {
  let consul: ConsulAgent;
  let prometheus: PrometheusServer;
  let db: SidecarProcess;
  let web: SidecarProcess;
  let dbApp: StartedProcess;
  let ports: Record<"dbApp" | "dbPublic" | "webApp" | "webPublic" | "upstream" | "dbMetrics" | "webMetrics", number>;
  const dbMetrics = () => `127.0.0.1:${ports.dbMetrics}`;
  const webMetrics = () => `127.0.0.1:${ports.webMetrics}`;
  const webRegistration = (upstreamConfig: Record<string, unknown> = {}) =>
    serviceWithSidecar({ id: "web-1", name: "web", port: ports.webApp, sidecarPort: ports.webPublic, upstreams: [{ DestinationName: "db", LocalBindPort: ports.upstream, Config: upstreamConfig }] });

  /** The value of one sample of `expression` once Prometheus has it (NaN while it has none). */
  const sampleValue = async (expression: string) => (await prometheus.query(expression))[0]?.value ?? NaN;

  beforeAll(async () => {
    consul = await startConsulDev();
    const [dbApp_, dbPublic, webApp, webPublic, upstream, dbMetricsPort, webMetricsPort] = await freePorts(7);
    ports = { dbApp: dbApp_!, dbPublic: dbPublic!, webApp: webApp!, webPublic: webPublic!, upstream: upstream!, dbMetrics: dbMetricsPort!, webMetrics: webMetricsPort! };
    dbApp = startDbApp(ports.dbApp, "db-1");
    await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "db-1", name: "db", port: ports.dbApp, sidecarPort: ports.dbPublic, proxyConfig: { envoy_prometheus_bind_addr: dbMetrics() } }));
    await consul.api("PUT", "/v1/agent/service/register", webRegistration());
    db = startConnectHaproxy("db-1", consul.httpAddr, { logLevel: "info" });
    web = startConnectHaproxy("web-1", consul.httpAddr, { logLevel: "info", args: ["--metrics-addr", webMetrics()] });
    prometheus = await startPrometheus([dbMetrics(), webMetrics()]);
  });

  afterAll(async () => {
    await prometheus?.stop();
    await web?.stop();
    await db?.stop();
    await dbApp?.stop();
    await consul?.stop();
  });

  it("answers /ready 200 once each sidecar serves its configuration with a valid leaf", async () => {
    for (const address of [dbMetrics(), webMetrics()]) {
      const answer = await waitFor(`/ready on ${address}`, async () => {
        const res = await fetch(`http://${address}/ready`).catch(() => undefined);
        return res?.status === 200 ? await res.text() : undefined;
      }, { process: [db.process, web.process] });
      expect(answer).toMatch(/^serving \S+-sidecar-proxy with leaf serial [0-9a-f:]+\n$/);
    }
    // Ready is about each sidecar's own configuration; db's instance reaches web's slots once Consul's checks pass.
    const echo = await waitFor("a round trip through both sidecars", async () => (await tcpRoundTrip(ports.upstream, "hello", "127.0.0.1", 2000)) ?? undefined, { timeoutMs: 20_000 });
    expect(echo).toBe("db-1 answered: hello");
  });

  it("serves HAProxy's, the authorizer's and the controller's metrics in one text that promtool accepts", async () => {
    const text = await (await fetch(`http://${dbMetrics()}/metrics`)).text();
    expect(text).toMatch(/^haproxy_frontend_current_sessions\{proxy="public_listener"\} \d+$/m);
    expect(text).toMatch(/^connect_authorizer_decisions_total\{verdict="allow",origin="agent"\} [1-9]\d*$/m);
    expect(text).toMatch(/^connect_haproxy_ready 1$/m);
    expect(text).toMatch(/^connect_haproxy_leaf_expiry_seconds \d+/m);
    for (const part of ["haproxy", "authorizer", "controller"]) expect(text).toContain(`connect_haproxy_scrape_part_up{part="${part}"} 1`);
    // promtool parses it all; its one lint finding is in HAProxy 2.6.12's own exporter (a counter without _total).
    const check = await promtoolCheckMetrics(text);
    expect(check.output.trim()).toBe('haproxy_process_failed_resolutions counter metrics should have "_total" suffix');
    expect(check.code).toBe(3);
    // Ours (the authorizer's and the controller's parts) lint clean.
    const ours = text.split("\n").filter((line) => !/^(# (HELP|TYPE) )?haproxy_/.test(line)).join("\n");
    expect(ours).toContain("connect_authorizer_agent_call_seconds_bucket");
    expect(await promtoolCheckMetrics(ours)).toEqual({ code: 0, output: "" });
    const webText = await (await fetch(`http://${webMetrics()}/metrics`)).text();
    expect(webText).toMatch(/^connect_haproxy_upstream_instances\{upstream="db"\} 1$/m);
    expect((await promtoolCheckMetrics(webText)).code).toBe(3);
  });

  it("has both targets up in Prometheus", async () => {
    const targets = await waitFor("both targets up", async () => {
      const all = await prometheus.targets();
      return all.length === 2 && all.every((t) => t.health === "up") ? all : undefined;
    }, { timeoutMs: 15_000 });
    expect(targets.map((t) => t.scrapeUrl).sort()).toEqual([`http://${dbMetrics()}/metrics`, `http://${webMetrics()}/metrics`].sort());
  });

  it("counts a refused connection as a deny, as Prometheus sees it", async () => {
    const denies = `sum(connect_authorizer_decisions_total{instance="${dbMetrics()}",verdict="deny"}) or vector(0)`;
    const before = await waitFor("db's decisions scraped", async () => {
      const value = await sampleValue(denies);
      return Number.isNaN(value) ? undefined : value;
    }, { timeoutMs: 15_000 });
    await consul.api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "deny" });
    await waitFor("the connection refused", async () => ((await tcpRoundTrip(ports.upstream, "let me in", "127.0.0.1", 2000)) === undefined ? true : undefined), { timeoutMs: 15_000 });
    const after = await waitFor("the deny counted by Prometheus", async () => {
      const value = await sampleValue(denies);
      return value > before ? value : undefined;
    }, { timeoutMs: 15_000 });
    expect(after).toBeGreaterThan(before);
    // The intention change reached db's HAProxy at run time: the controller counted its operations.
    const flushes = /^connect_haproxy_runtime_operations_total\{operation="flush-authorization-cache",result="applied"\} [1-9]/m;
    await waitFor("db's flush counted", async () => (flushes.test(await (await fetch(`http://${dbMetrics()}/metrics`)).text()) ? true : undefined), { timeoutMs: 5000 });
    await consul.api("DELETE", "/v1/connect/intentions/exact?source=web&destination=db");
  });

  it("counts a reload with the kind of change that caused it", async () => {
    const reloads = `connect_haproxy_reloads_total{instance="${webMetrics()}",reason="upstream_settings",result="applied"}`;
    expect(await prometheus.query(reloads)).toEqual([]);
    await consul.api("PUT", "/v1/agent/service/register", webRegistration({ limits: { max_connections: 50 } }));
    const value = await waitFor("the reload counted by Prometheus", async () => {
      const samples = await prometheus.query(reloads);
      return samples[0]?.value;
    }, { timeoutMs: 20_000 });
    expect(value).toBe(1);
    expect(web.process.output()).toMatch(/applied change change="upstream upstream_db settings changed \(limits\)" path="validated reload/);
    // The reload started a new Lua state and the counters of HAProxy's new worker: still scraped, still up.
    const targets = await prometheus.targets();
    expect(targets.every((t) => t.health === "up")).toBe(true);
  });
});
