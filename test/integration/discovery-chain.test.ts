// The discovery chain through sidecars run by the controller, with real config
// entries on a real Consul: web's sidecar sends each HTTP request where the
// chain of its upstream says (subset, failover, split, routes, redirect,
// timeout); every other service is an echo app behind its own sidecar.
//
//   client ──HTTP──► web's sidecar ─┬─ upstream api ═mTLS═► api-v1 | api-v2 | backup | admin (each: sidecar → echo app)
//                                   ├─ upstream legacy (redirected to backup)
//                                   └─ upstream store (TCP) ═mTLS═► store-v1 | store-v2 (each: sidecar → line app)
import { readFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { serviceWithSidecar, startConnectHaproxy, startDbApp, startHttpEchoApp, tcpRoundTrip, type SidecarProcess } from "../harness/mesh.js";
import { freePorts } from "../harness/ports.js";
import { waitFor, type StartedProcess } from "../harness/processes.js";

let consul: ConsulAgent;
const apps: StartedProcess[] = [];
const sidecars: Record<string, SidecarProcess> = {};
let apiUpstream: number;
let legacyUpstream: number;
let storeUpstream: number;
const keptAlive = new Agent({ keepAlive: true, maxSockets: 1 });

interface Reply {
  status: number;
  /** Who answered: the echo app's name (api-v1, api-v2, backup, admin), or "" for HAProxy's own answer. */
  who: string;
  body: string;
  /** The `x-` request headers the app received. */
  seen: Record<string, string>;
  ms: number;
}

function send(port: number, path: string, options: { method?: string; headers?: Record<string, string>; agent?: Agent } = {}): Promise<Reply> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, method: options.method ?? "GET", path, headers: options.headers, agent: options.agent ?? false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => {
        const seen = res.headers["x-echo-headers"];
        const who = typeof seen === "string" ? body.split(" ")[0]! : "";
        resolve({ status: res.statusCode ?? 0, who, body: body.trim(), seen: typeof seen === "string" ? JSON.parse(seen) : {}, ms: Date.now() - started });
      });
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer to ${path} within 10 s`)));
    req.on("error", reject);
    req.end();
  });
}

const api = (path: string, options: Parameters<typeof send>[2] = {}) => send(apiUpstream, path, options);

async function entry(body: Record<string, unknown>): Promise<void> {
  await consul.api("PUT", "/v1/config", body);
}

/** Until `expected` answers `path` (the chain change reached HAProxy), with the sidecars' output on failure. */
async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  await waitFor(what, async () => ((await check().catch(() => false)) ? true : undefined), { timeoutMs: 30_000, intervalMs: 100, process: Object.values(sidecars).map((s) => s.process) });
}

const reloadsOfWeb = () => (sidecars.web!.process.output().match(/path="validated reload/g) ?? []).length;

const resolver = { Kind: "service-resolver", Name: "api", DefaultSubset: "v1", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } }, Failover: { "*": { Targets: [{ Service: "backup" }] } } };

beforeAll(async () => {
  consul = await startConsulDev();
  const ports = await freePorts(11);
  const [storeV1App, storeV2App, storeV1Sidecar, storeV2Sidecar] = (await freePorts(5)) as [number, number, number, number, number];
  storeUpstream = (await freePorts(1))[0]!;
  const [v1Sidecar, v2Sidecar, backupSidecar, adminSidecar, webSidecar] = ports.slice(6) as [number, number, number, number, number];
  const [v1App, v2App, backupApp, adminApp] = ports as [number, number, number, number];
  apiUpstream = ports[4]!;
  legacyUpstream = ports[5]!;
  for (const name of ["api", "backup", "admin", "legacy"]) await entry({ Kind: "service-defaults", Name: name, Protocol: "http" });
  // The resolver is there before web's sidecar starts: its first chain already has it.
  await entry(resolver);
  await entry({ Kind: "service-resolver", Name: "legacy", Redirect: { Service: "backup" } });
  // A TCP chain: resolvers apply (subsets, failover), routers and splitters do not exist for TCP.
  await entry({ Kind: "service-resolver", Name: "store", DefaultSubset: "v2", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } }, Failover: { v2: { ServiceSubset: "v1" } } });
  apps.push(startDbApp(storeV1App, "store-v1"), startDbApp(storeV2App, "store-v2"));
  apps.push(startHttpEchoApp(v1App, "api-v1"), startHttpEchoApp(v2App, "api-v2"), startHttpEchoApp(backupApp, "backup"), startHttpEchoApp(adminApp, "admin"));
  const register = (body: Record<string, unknown>) => consul.api("PUT", "/v1/agent/service/register", body);
  await register({ ...serviceWithSidecar({ id: "api-v1", name: "api", port: v1App, sidecarPort: v1Sidecar }), Meta: { version: "v1" } });
  await register({ ...serviceWithSidecar({ id: "api-v2", name: "api", port: v2App, sidecarPort: v2Sidecar }), Meta: { version: "v2" } });
  await register(serviceWithSidecar({ id: "backup", name: "backup", port: backupApp, sidecarPort: backupSidecar }));
  await register({ ...serviceWithSidecar({ id: "store-v1", name: "store", port: storeV1App, sidecarPort: storeV1Sidecar }), Meta: { version: "v1" } });
  await register({ ...serviceWithSidecar({ id: "store-v2", name: "store", port: storeV2App, sidecarPort: storeV2Sidecar }), Meta: { version: "v2" } });
  await register(serviceWithSidecar({ id: "admin", name: "admin", port: adminApp, sidecarPort: adminSidecar }));
  await register(
    serviceWithSidecar({
      id: "web",
      name: "web",
      port: 1,
      sidecarPort: webSidecar,
      upstreams: [
        { DestinationName: "api", LocalBindPort: apiUpstream },
        { DestinationName: "legacy", LocalBindPort: legacyUpstream },
        { DestinationName: "store", LocalBindPort: storeUpstream },
      ],
    }),
  );
  for (const id of ["api-v1", "api-v2", "backup", "admin", "store-v1", "store-v2", "web"]) sidecars[id] = startConnectHaproxy(id, consul.httpAddr);
  // Every target healthy (its sidecar's checks passing) before the tests measure anything.
  for (const service of ["api", "backup", "admin", "store"]) {
    await until(`every ${service} sidecar passing`, async () => {
      const entries = await consul.api<{ Checks: { Status: string }[] }[]>("GET", `/v1/health/connect/${service}?passing=1`);
      return entries.length === (service === "api" || service === "store" ? 2 : 1);
    });
  }
  await until("api-v1 answering through web's sidecar", async () => (await api("/")).who === "api-v1");
}, 180_000);

afterAll(async () => {
  keptAlive.destroy();
  await Promise.all(Object.values(sidecars).map((s) => s.stop()));
  await Promise.all(apps.map((p) => p.stop()));
  await consul?.stop();
});

describe("the discovery chain through sidecars run by the controller", () => {
  it("sends every request to the resolver's default subset", async () => {
    const answers = await Promise.all(Array.from({ length: 20 }, () => api("/")));
    expect(new Set(answers.map((a) => `${a.status} ${a.who}`))).toEqual(new Set(["200 api-v1"]));
    expect(sidecars.web!.process.output()).toMatch(/discovery chain of upstream api: 2 backends/);
  });

  it("fails over to another service when the subset has no healthy instance, and back, without a reload", async () => {
    const reloads = reloadsOfWeb();
    await consul.api("PUT", "/v1/agent/service/maintenance/api-v1-sidecar-proxy?enable=true&reason=test");
    await until("backup answering for api", async () => (await api("/")).who === "backup");
    expect((await api("/during-failover")).body).toBe("backup GET /during-failover");
    await consul.api("PUT", "/v1/agent/service/maintenance/api-v1-sidecar-proxy?enable=false");
    await until("api-v1 answering again", async () => (await api("/")).who === "api-v1");
    expect(reloadsOfWeb()).toBe(reloads);
  });

  it("splits 80/20 between the subsets over 400 requests", async () => {
    await entry({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 80, ServiceSubset: "v1" }, { Weight: 20, ServiceSubset: "v2", RequestHeaders: { Set: { "x-split": "v2" } } }] });
    await until("the split reaching web's sidecar", async () => (await api("/")).who === "api-v2");
    expect(sidecars.web!.process.output()).toMatch(/applied change change="upstream api: discovery chain changed \(splitter added, [^"]*\)" path="validated reload/);
    const counts: Record<string, number> = {};
    let headerOnV2 = true;
    for (let n = 0; n < 400; n++) {
      const answer = await api("/", { agent: keptAlive });
      counts[answer.who] = (counts[answer.who] ?? 0) + 1;
      if (answer.who === "api-v2" && answer.seen["x-split"] !== "v2") headerOnV2 = false;
    }
    // Binomial(400, 0.2): mean 80, standard deviation 8. ±36 is 4.5 standard
    // deviations: a correct split fails this about once in 150,000 runs, while
    // a 50/50 or 100/0 split can never pass.
    expect(counts["api-v1"]! + counts["api-v2"]!).toBe(400);
    expect(counts["api-v2"]).toBeGreaterThanOrEqual(44);
    expect(counts["api-v2"]).toBeLessThanOrEqual(116);
    expect(headerOnV2).toBe(true);
  });

  it("routes by path, header, query and method, with a prefix rewrite, a set header and a request timeout", async () => {
    await entry({
      Kind: "service-router",
      Name: "api",
      Routes: [
        { Match: { HTTP: { PathPrefix: "/admin" } }, Destination: { Service: "admin", PrefixRewrite: "/", RequestHeaders: { Set: { "x-route": "admin" }, Remove: ["x-drop"] } } },
        { Match: { HTTP: { PathPrefix: "/slow" } }, Destination: { ServiceSubset: "v1", RequestTimeout: "1s" } },
        { Match: { HTTP: { Header: [{ Name: "x-canary", Exact: "1" }] } }, Destination: { ServiceSubset: "v2" } },
        { Match: { HTTP: { QueryParam: [{ Name: "beta", Present: true }] } }, Destination: { ServiceSubset: "v2" } },
        { Match: { HTTP: { Methods: ["DELETE"] } }, Destination: { Service: "backup" } },
      ],
    });
    await until("the router reaching web's sidecar", async () => (await api("/admin/x")).who === "admin");
    expect(sidecars.web!.process.output()).toMatch(/applied change change="upstream api: discovery chain changed \(router added, [^"]*\)"/);

    const admin = await api("/admin/users?page=2", { headers: { "x-drop": "secret" } });
    expect(admin.body).toBe("admin GET /users?page=2");
    expect(admin.seen).toEqual({ "x-route": "admin" });
    expect((await api("/", { headers: { "x-canary": "1" } })).who).toBe("api-v2");
    expect((await api("/?beta=yes")).who).toBe("api-v2");
    expect((await api("/thing", { method: "DELETE" })).body).toBe("backup DELETE /thing");
    // First match wins: a DELETE under /admin is the admin route's.
    expect((await api("/admin/thing", { method: "DELETE" })).body).toBe("admin DELETE /thing");
    // Unmatched requests take the default route: the splitter.
    expect(["api-v1", "api-v2"]).toContain((await api("/other")).who);

    const fast = await api("/slow?delay_ms=200");
    expect([fast.status, fast.who]).toEqual([200, "api-v1"]);
    const slow = await api("/slow?delay_ms=4000");
    expect(slow.status).toBe(504);
    expect(slow.ms).toBeGreaterThanOrEqual(1000);
    expect(slow.ms).toBeLessThan(3000);
  });

  it("follows a resolver's redirect to another service, whose identity it checks", async () => {
    const answer = await send(legacyUpstream, "/old");
    expect([answer.status, answer.body]).toEqual([200, "backup GET /old"]);
  });

  it("TCP: connections go to the resolver's default subset, fail over to the other subset when it has no instance, and back, without a reload", async () => {
    const store = async () => (await tcpRoundTrip(storeUpstream, "hi"))?.split(" ")[0] ?? "";
    const rendered = readFileSync(join(sidecars.web!.configDir, "haproxy.cfg"), "utf8");
    expect(rendered).toMatch(/frontend upstream_store\n    mode tcp\n/);
    for (let i = 0; i < 5; i++) expect(await store()).toBe("store-v2");
    const reloads = reloadsOfWeb();
    await consul.api("PUT", "/v1/agent/service/maintenance/store-v2?enable=true&reason=test");
    await until("store's failover subset answering", async () => (await store()) === "store-v1");
    for (let i = 0; i < 5; i++) expect(await store()).toBe("store-v1");
    await consul.api("PUT", "/v1/agent/service/maintenance/store-v2?enable=false");
    await until("store's default subset answering again", async () => (await store()) === "store-v2");
    expect(reloadsOfWeb()).toBe(reloads);
  });
});
