// Consul's limits and passive health check, set through real config entries
// (service-defaults' UpstreamConfig, proxy-defaults' Config), proved with real
// traffic through real connect-haproxy sidecars.
//
//   client ──► web sidecar ── upstream db  (TCP, limits.max_connections) ══► db sidecar ──► db app
//                          └─ upstream api (HTTP, passive_health_check, limits) ══► api-1 (200), api-2 (500)
import { join } from "node:path";
import { connect, type Socket } from "node:net";
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { sendRuntimeCommand, statCounter } from "../harness/haproxy.js";
import { serviceWithSidecar, startConnectHaproxy, startDbApp, startHttpEchoApp, tcpRoundTrip, type SidecarProcess } from "../harness/mesh.js";
import { freePorts } from "../harness/ports.js";
import { sleep, waitFor, type StartedProcess } from "../harness/processes.js";

/** A TCP connection that did one round trip and stays open; undefined if refused or closed. */
function holdConnection(port: number): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    const done = (held: boolean) => {
      socket.removeAllListeners("data");
      if (!held) socket.destroy();
      resolve(held ? socket : undefined);
    };
    socket.setEncoding("utf8");
    socket.setTimeout(3000, () => done(false));
    socket.on("connect", () => socket.write("hold\n"));
    socket.on("data", (chunk) => {
      if (String(chunk).includes("answered: hold")) {
        socket.setTimeout(0);
        done(true);
      }
    });
    socket.on("error", () => done(false));
    socket.on("close", () => done(false));
  });
}

interface Slot {
  name: string;
  port: number;
  /** srv_op_state: 0 down, 2 up. */
  up: boolean;
  /** Any maintenance flag in srv_admin_state. */
  maint: boolean;
}

async function slots(statsSocket: string, backend: string): Promise<Slot[]> {
  const answer = await sendRuntimeCommand(statsSocket, `show servers state ${backend}`);
  return answer
    .split("\n")
    .map((line) => line.split(" "))
    .filter((cols) => cols.length > 18 && /^\d+$/.test(cols[0]!))
    .map((cols) => ({ name: cols[3]!, port: Number(cols[18]), up: cols[5] === "2", maint: (Number(cols[6]) & 0x23) !== 0 }));
}

describe("limits and outlier detection from Consul's config entries, with real traffic", () => {
  let consul: ConsulAgent;
  const processes: StartedProcess[] = [];
  const sidecars: SidecarProcess[] = [];
  let web: SidecarProcess;
  let db: SidecarProcess;
  let p: Record<"dbApp" | "dbPublic" | "api1App" | "api1Public" | "api2App" | "api2Public" | "webApp" | "webPublic" | "dbUpstream" | "apiUpstream", number>;

  const config = (body: Record<string, unknown>) => consul.api("PUT", "/v1/config", body);
  const webStats = () => join(web.configDir, "stats.sock");
  const apiSlot = async (port: number) => (await slots(webStats(), "upstream_api")).find((slot) => slot.port === port);
  const get = async (path = "/") => {
    const res = await fetch(`http://127.0.0.1:${p.apiUpstream}${path}`);
    return { status: res.status, body: await res.text() };
  };

  beforeAll(async () => {
    consul = await startConsulDev();
    const ports = await freePorts(10);
    const names = ["dbApp", "dbPublic", "api1App", "api1Public", "api2App", "api2Public", "webApp", "webPublic", "dbUpstream", "apiUpstream"] as const;
    p = Object.fromEntries(names.map((name, n) => [name, ports[n]!])) as typeof p;
    await config({ Kind: "service-defaults", Name: "api", Protocol: "http" });
    await config({
      Kind: "service-defaults",
      Name: "web",
      UpstreamConfig: {
        Overrides: [
          { Name: "db", Limits: { MaxConnections: 2 } },
          { Name: "api", Limits: { MaxConcurrentRequests: 1, MaxPendingRequests: 1 }, PassiveHealthCheck: { Interval: "1s", MaxFailures: 3, BaseEjectionTime: "2s" } },
        ],
      },
    });
    processes.push(startDbApp(p.dbApp, "db-1"), startHttpEchoApp(p.api1App, "api-1"), startHttpEchoApp(p.api2App, "api-2", undefined, { status: 500 }));
    // db's sidecar has no check of its own on its public port: only this test's connections count against its limit.
    await consul.api("PUT", "/v1/agent/service/register", {
      ID: "db-1", Name: "db", Address: "127.0.0.1", Port: p.dbApp,
      Connect: { SidecarService: { Port: p.dbPublic, Checks: [{ Name: "db-1 sidecar's service", AliasService: "db-1", Status: "passing" }], Proxy: { Upstreams: [] } } },
    });
    await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "api-1", name: "api", port: p.api1App, sidecarPort: p.api1Public }));
    // api-2 has a TTL check the test turns critical (Consul takes it out) and passing again.
    await consul.api("PUT", "/v1/agent/service/register", {
      ...serviceWithSidecar({ id: "api-2", name: "api", port: p.api2App, sidecarPort: p.api2Public }),
      Check: { CheckID: "api-2-ttl", Name: "api-2 ttl", TTL: "10m", Status: "passing" },
    });
    await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({
      id: "web-1", name: "web", port: p.webApp, sidecarPort: p.webPublic,
      upstreams: [{ DestinationName: "db", LocalBindPort: p.dbUpstream }, { DestinationName: "api", LocalBindPort: p.apiUpstream }],
    }));
    db = startConnectHaproxy("db-1", consul.httpAddr, { logLevel: "info" });
    web = startConnectHaproxy("web-1", consul.httpAddr, { logLevel: "info" });
    sidecars.push(db, web, startConnectHaproxy("api-1", consul.httpAddr, { logLevel: "info" }), startConnectHaproxy("api-2", consul.httpAddr, { logLevel: "info" }));
    await waitFor("db through web", async () => (await tcpRoundTrip(p.dbUpstream, "hi", "127.0.0.1", 2000)) ?? undefined, { timeoutMs: 30_000, process: web.process });
    await waitFor("both api instances in web's backend", async () => {
      const up = (await slots(webStats(), "upstream_api")).filter((slot) => slot.up && !slot.maint);
      return up.length === 2 ? true : undefined;
    }, { timeoutMs: 30_000 });
  });

  afterAll(async () => {
    for (const sidecar of sidecars) await sidecar.stop();
    for (const proc of processes) await proc.stop();
    await consul?.stop();
  });

  it("refuses TCP connections past the upstream's max_connections at once, and takes one when another closes", async () => {
    // What HAProxy cannot do is named once at start.
    expect(web.process.output().match(/Consul setting not honoured: .*/g)).toEqual([
      expect.stringMatching(/^Consul setting not honoured: upstream api: passive_health_check\.max_ejection_percent 10% is not enforced/),
      expect.stringMatching(/^Consul setting not honoured: upstream api: passive_health_check\.interval 1000ms is not used/),
    ]);
    const held = [await holdConnection(p.dbUpstream), await holdConnection(p.dbUpstream)];
    expect(held.every((socket) => socket !== undefined)).toBe(true);
    const started = Date.now();
    expect(await holdConnection(p.dbUpstream)).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(1000);
    held[0]!.destroy();
    const third = await waitFor("a connection once one closed", () => holdConnection(p.dbUpstream), { timeoutMs: 5000 });
    third.destroy();
    held[1]!.destroy();
  });

  it("queues HTTP requests past max_concurrent_requests, up to max_pending_requests, and answers 503 beyond", async () => {
    // Only api-1 answers 200 and quickly enough to tell: take api-2 out through Consul for this test.
    await consul.api("PUT", "/v1/agent/check/fail/api-2-ttl");
    await waitFor("api-2 out of web's backend", async () => ((await apiSlot(p.api2Public))?.maint ? true : undefined), { timeoutMs: 15_000 });
    const started = Date.now();
    const timed = (path: string) => get(path).then((answer) => ({ ...answer, ms: Date.now() - started }));
    const running = timed("/first?delay_ms=1500");
    await sleep(200);
    const queued = timed("/second?delay_ms=100");
    await sleep(200);
    const overflow = await timed("/third");
    expect(overflow.status).toBe(503);
    expect(overflow.body).toContain("upstream overflow");
    expect(overflow.ms).toBeLessThan(1000);
    const [first, second] = await Promise.all([running, queued]);
    expect(first.status).toBe(200);
    expect(second.status).toBe(200);
    // The second waited for the first to finish (one request at a time).
    expect(second.ms).toBeGreaterThanOrEqual(1500);
    await consul.api("PUT", "/v1/agent/check/pass/api-2-ttl");
    await waitFor("api-2 back in web's backend", async () => {
      const slot = await apiSlot(p.api2Public);
      return slot && slot.up && !slot.maint ? true : undefined;
    }, { timeoutMs: 15_000 });
  });

  it("ejects an instance that fails fewer than max_failures requests per interval (a passing check must not restart the count)", async () => {
    // One request every 700 ms, round robin: api-2 answers one every 1.4 s, more than the 1 s interval.
    // Envoy counts only responses, so its third 500 ejects it; HAProxy clears the count on every passing
    // check, so with a check every interval this instance stayed in rotation for ever.
    const statuses: number[] = [];
    for (let i = 0; i < 12 && (await apiSlot(p.api2Public))?.up !== false; i++) {
      statuses.push((await get()).status);
      await sleep(700);
    }
    const stateChanges = web.process.output().split("\n").filter((line) => /upstream_api\/\S+ is (DOWN|UP)/.test(line)).slice(-2).join("\n");
    expect(await apiSlot(p.api2Public), `statuses ${JSON.stringify(statuses)}; ${stateChanges}`).toMatchObject({ up: false, maint: false });
    expect(statuses.filter((s) => s === 500).length).toBe(3);
    await waitFor("api-2 back in rotation", async () => ((await apiSlot(p.api2Public))?.up ? true : undefined), { timeoutMs: 6000, intervalMs: 100 });
  });

  it("ejects an instance answering 5xx after max_failures in a row, and brings it back after base_ejection_time", async () => {
    const statuses: number[] = [];
    const answeredAtMs: number[] = [];
    const t0 = Date.now();
    for (let i = 0; i < 12; i++) {
      statuses.push((await get()).status);
      answeredAtMs.push(Date.now() - t0);
    }
    // What happened, should it ever differ (seen once under a concurrent suite: five 500s; not reproduced alone).
    // HAProxy logs each server state change with its reason ("Detected 3 consecutive errors…"): which 500 ejected api-2.
    const stateChanges = web.process.output().split("\n").filter((line) => /upstream_api\/\S+ is (DOWN|UP)/.test(line)).slice(-4).join("\n");
    const story = `statuses ${JSON.stringify(statuses)} answered at ms ${JSON.stringify(answeredAtMs)}; api-2 now ${JSON.stringify(await apiSlot(p.api2Public))}; web's last state changes:\n${stateChanges}`;
    // api-2 answered at most 3 times (its 3rd 500 ejected it); api-1 took every request after that.
    expect(statuses.filter((s) => s === 500).length, story).toBe(3);
    expect(statuses.slice(-4), story).toEqual([200, 200, 200, 200]);
    const ejected = await apiSlot(p.api2Public);
    expect(ejected).toMatchObject({ up: false, maint: false });
    const ejectedAt = Date.now();
    // interval 1s + base_ejection_time 2s: back between 2 and 3 s later (plus a check's round trip).
    await waitFor("api-2 back in rotation", async () => ((await apiSlot(p.api2Public))?.up ? true : undefined), { timeoutMs: 6000, intervalMs: 100 });
    const outFor = Date.now() - ejectedAt;
    expect(outFor).toBeGreaterThanOrEqual(1500);
    expect(outFor).toBeLessThan(4500);
    const again: number[] = [];
    for (let i = 0; i < 4; i++) again.push((await get()).status);
    expect(again).toContain(500);
  });

  it("keeps an ejected slot in maintenance once Consul takes its instance out, and serves the instance at once when it returns", async () => {
    for (let i = 0; i < 12 && (await apiSlot(p.api2Public))?.up; i++) await get();
    expect(await apiSlot(p.api2Public)).toMatchObject({ up: false, maint: false });
    await consul.api("PUT", "/v1/agent/check/fail/api-2-ttl");
    await waitFor("api-2's slot in maintenance", async () => ((await apiSlot(p.api2Public))?.maint ? true : undefined), { timeoutMs: 15_000 });
    // Longer than interval + base_ejection_time: the checks do not take it out of maintenance.
    await sleep(4000);
    expect(await apiSlot(p.api2Public)).toMatchObject({ maint: true });
    for (let i = 0; i < 4; i++) expect((await get()).status).toBe(200);
    await consul.api("PUT", "/v1/agent/check/pass/api-2-ttl");
    const back = await waitFor("api-2 ready again", async () => {
      const slot = await apiSlot(p.api2Public);
      return slot && !slot.maint ? slot : undefined;
    }, { timeoutMs: 15_000 });
    // Up at once: leaving maintenance reset the ejection.
    expect(back.up).toBe(true);
  });

  it("refuses public connections past proxy-defaults' max_inbound_connections", async () => {
    await config({ Kind: "proxy-defaults", Name: "global", Config: { max_inbound_connections: 1 } });
    await waitFor("db's sidecar reloaded with the limit", async () => (readFileSync(join(db.configDir, "haproxy.cfg"), "utf8").includes("tcp-request connection reject if { fe_conn gt 1 }") ? true : undefined), { timeoutMs: 20_000 });
    await waitFor("the reload applied", async () => (db.process.output().includes("public listener maxInboundConnections undefined -> 1") ? true : undefined), { timeoutMs: 20_000 });
    const held = await waitFor("one connection through db's listener", () => holdConnection(p.dbUpstream), { timeoutMs: 5000 });
    expect(await holdConnection(p.dbUpstream)).toBeUndefined();
    // Refused by the listener's rule (denied connections), not by anything behind it.
    const stat = await sendRuntimeCommand(join(db.configDir, "stats.sock"), "show stat");
    expect(statCounter(stat, "public_listener", "FRONTEND", "dcon")).toBeGreaterThanOrEqual(1);
    held.destroy();
    await consul.api("DELETE", "/v1/config/proxy-defaults/global");
  });
});
