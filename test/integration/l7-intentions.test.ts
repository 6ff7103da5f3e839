// L7 intentions through two sidecars run by the controller, with real config
// entries: every HTTP request is decided by api's sidecar from the intention's
// permissions; an intention change is enforced within a second, without a
// reload; a TCP connection already open is closed once its source is denied.
//
//   client ──HTTP──► web's sidecar (upstream api) ══mTLS══► api's sidecar ──► api app (echoes method and path)
//   client ──TCP───► web's sidecar (upstream db)  ══mTLS══► db's sidecar  ──► db app
import { Agent, request } from "node:http";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { registerWebApiDb, startConnectHaproxy, tcpRoundTrip, type SidecarProcess } from "../harness/mesh.js";
import { parseKeyValues, sendRuntimeCommand, statCounter } from "../harness/haproxy.js";
import { parseShowProc } from "../../controller/runtime-api.js";
import { freePorts } from "../harness/ports.js";
import { waitFor, type StartedProcess } from "../harness/processes.js";

let consul: ConsulAgent;
const apps: StartedProcess[] = [];
const sidecars: SidecarProcess[] = [];
let ports: Record<"apiApp" | "dbApp" | "apiUpstream" | "dbUpstream" | "webApp", number>;

interface Reply {
  status: number;
  body: string;
}

/** One request through web's upstream listener for api (`agent` keeps the connection alive). */
function send(method: string, path: string, headers: Record<string, string> = {}, agent?: Agent): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port: ports.apiUpstream, method, path, headers, agent: agent ?? false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: body.trim() }));
    });
    req.setTimeout(5000, () => req.destroy(new Error(`no answer to ${method} ${path} within 5 s`)));
    req.on("error", reject);
    req.end();
  });
}

const status = async (method: string, path: string, headers: Record<string, string> = {}) => (await send(method, path, headers)).status;

async function writeIntentions(sources: unknown[]): Promise<void> {
  await consul.api("PUT", "/v1/config", { Kind: "service-intentions", Name: "api", Sources: sources });
}

/** web → api: L7, as an operator would write it. */
const l7Rules = [
  {
    Name: "web",
    Permissions: [
      { Action: "deny", HTTP: { PathPrefix: "/admin" } },
      { Action: "allow", HTTP: { PathExact: "/health", Methods: ["GET", "HEAD"] } },
      { Action: "allow", HTTP: { PathPrefix: "/api/", Header: [{ Name: "x-team", Exact: "payments", IgnoreCase: true }] } },
      { Action: "allow", HTTP: { PathRegex: "/items/[0-9]+" } },
    ],
  },
];

beforeAll(async () => {
  consul = await startConsulDev({ config: { default_intention_policy: "deny" } });
  const [apiApp, dbApp, apiUpstream, dbUpstream, webApp, apiSidecar, dbSidecar, webSidecar] = await freePorts(8);
  ports = { apiApp: apiApp!, dbApp: dbApp!, apiUpstream: apiUpstream!, dbUpstream: dbUpstream!, webApp: webApp! };
  await consul.api("PUT", "/v1/config", { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await writeIntentions(l7Rules);
  await consul.api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "allow" });
  apps.push(...(await registerWebApiDb(consul, { api: ports.apiApp, apiSidecar: apiSidecar!, db: ports.dbApp, dbSidecar: dbSidecar!, web: ports.webApp, webSidecar: webSidecar!, apiUpstream: ports.apiUpstream, dbUpstream: ports.dbUpstream })));
  for (const id of ["api", "db", "web"]) sidecars.push(startConnectHaproxy(id, consul.httpAddr));
  await waitFor("an allowed request to reach api", async () => ((await status("GET", "/health").catch(() => 0)) === 200 ? true : undefined), {
    timeoutMs: 60_000,
    intervalMs: 200,
    process: sidecars.map((s) => s.process),
  });
  // db too (only the last test uses it): a sidecar that never serves fails here, with every process's last words.
  await waitFor("db through web's upstream", async () => ((await tcpRoundTrip(ports.dbUpstream, "hello")) ? true : undefined), {
    timeoutMs: 60_000,
    intervalMs: 200,
    process: [...sidecars.map((s) => s.process), ...apps],
  });
}, 180_000);

afterAll(async () => {
  await Promise.all(sidecars.map((s) => s.stop()));
  await Promise.all(apps.map((p) => p.stop()));
  await consul?.stop();
});

describe("L7 intentions through sidecars run by the controller", () => {
  it("renders api's public listener in HTTP mode from service-defaults", async () => {
    const registration = await consul.api<{ Proxy: { Config?: { protocol?: string } } }>("GET", "/v1/agent/service/api-sidecar-proxy");
    expect(registration.Proxy.Config?.protocol).toBe("http");
  });

  it("allows and refuses each request by the permissions, in order, with the default policy last", async () => {
    expect(await send("GET", "/health")).toEqual({ status: 200, body: "api GET /health" });
    expect(await status("HEAD", "/health")).toBe(200);
    expect(await status("POST", "/health")).toBe(403);
    expect(await status("GET", "/admin")).toBe(403);
    expect(await status("GET", "/admin/users")).toBe(403);
    expect(await status("GET", "/api/orders", { "X-Team": "PAYMENTS" })).toBe(200);
    expect(await status("GET", "/api/orders", { "X-Team": "search" })).toBe(403);
    expect(await status("GET", "/api/orders")).toBe(403);
    expect(await status("GET", "/items/42")).toBe(200);
    expect(await status("GET", "/items/42?full=1")).toBe(200);
    expect(await status("GET", "/items/42/x")).toBe(403);
    expect(await status("GET", "/other")).toBe(403);
  });

  it("passes 50 kB of request headers through both sidecars, as Envoy's 60 KiB default does", async () => {
    // A large cookie: 16 kB buffers, HAProxy's default, refused it with a 400 at web's upstream listener.
    const cookie = `session=${"c".repeat(50_000)}`;
    expect(await send("GET", "/health", { cookie })).toEqual({ status: 200, body: "api GET /health" });
    expect(await status("GET", "/api/orders", { cookie, "X-Team": "payments" })).toBe(200);
    expect(await status("GET", "/admin", { cookie })).toBe(403);
  });

  it("matches and forwards the normalized path, so no spelling of /admin gets past its deny", async () => {
    for (const path of ["//admin", "/health/../admin", "/%61dmin", "/health/%2e%2e/admin", "/./admin"]) {
      expect(await status("GET", path), path).toBe(403);
    }
    expect(await send("GET", "/x/../health")).toEqual({ status: 200, body: "api GET /health" });
    expect(await status("GET", "/items%2F42")).toBe(403);
  });

  it("decides every request on a kept-alive connection", async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const seen: number[] = [];
      for (let i = 0; i < 6; i++) seen.push((await send("GET", i % 2 === 0 ? "/health" : "/admin", {}, agent)).status);
      expect(seen).toEqual([200, 403, 200, 403, 200, 403]);
    } finally {
      agent.destroy();
    }
  });

  it("pools mTLS connections between sidecars: new clients reuse them, and a deny refuses the next request on them", async () => {
    // api's public listener counts the mTLS connections web's sidecar opened to it (its frontend's session total).
    const apiStats = join(sidecars[0]!.configDir, "stats.sock");
    const meshConnections = async () => statCounter(await sendRuntimeCommand(apiStats, "show stat"), "public_listener", "FRONTEND", "stot");
    const opened = await meshConnections();
    // 20 client connections one after the other, one request each (status() keeps none alive).
    for (let i = 0; i < 20; i++) expect(await status("GET", "/health")).toBe(200);
    // Without pooling, that is 20 handshakes; with it, the pool's one (a second if a reload of api's sidecar closed one).
    expect((await meshConnections()) - opened).toBeLessThanOrEqual(2);

    const pooled = await meshConnections();
    await writeIntentions([{ Name: "web", Action: "deny" }]);
    const written = Date.now();
    await waitFor("web denied by api's sidecar", async () => ((await status("GET", "/health")) === 403 ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
    expect(Date.now() - written).toBeLessThan(1000);
    // Refused on a pooled connection: the deny needed no new connection to apply.
    expect((await meshConnections()) - pooled).toBeLessThanOrEqual(1);
    await writeIntentions(l7Rules);
    await waitFor("web allowed again", async () => ((await status("GET", "/health")) === 200 ? true : undefined), { timeoutMs: 5000, intervalMs: 50 });
  });

  it("enforces a changed L7 intention within a second, before any reload; new native rules follow by a reload once quiet", async () => {
    const api = sidecars[0]!;
    const apiStats = async () => parseKeyValues(await sendRuntimeCommand(join(api.configDir, "stats.sock"), "connect cache stats"));
    /** Writes the intentions and waits for `enforced`: within 1 s, and before the reload that brings native rules for them. */
    /** The index of api's intention list as api's authorizer holds it (its own watch flushes when it moves). */
    const authorizerIndex = async () => Number(/^api: .*, index (\d+),/m.exec(await sendRuntimeCommand(join(api.configDir, "stats.sock"), "connect intentions"))?.[1] ?? -1);
    async function change(sources: unknown[], what: string, enforced: () => Promise<boolean>): Promise<number> {
      const nativeBefore = nativeRulesReloads(api);
      const flushesBefore = flushCount(api);
      const indexBefore = await authorizerIndex();
      const changedAt = Date.now();
      await writeIntentions(sources);
      await waitFor(what, async () => ((await enforced()) ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
      expect(Date.now() - changedAt, what).toBeLessThan(1000);
      expect(nativeRulesReloads(api), `${what}: enforced by the authorizer, before any reload`).toBe(nativeBefore);
      // Once api's controller flushed for this change (its flush empties the passes and switches the native rules off).
      await waitFor("api's controller to flush for the change", async () => (flushCount(api) > flushesBefore ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
      // And api's authorizer's own watch, which flushes too when its list moves: after both, passes granted stay.
      await waitFor("api's authorizer to hold the new list", async () => ((await authorizerIndex()) > indexBefore ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
      return nativeBefore;
    }
    const nativeRulesFollow = (before: number) =>
      waitFor("the reload that brings the native rules", async () => (nativeRulesReloads(api) > before ? true : undefined), { timeoutMs: 10_000, intervalMs: 50 });

    // L7 → L4 allow: everything passes; web's source holds a pass, checked natively by api's HAProxy.
    let before = await change([{ Name: "web", Action: "allow" }], "/other allowed", async () => (await status("GET", "/other")) === 200);
    // The passes are counted by the worker the stats socket reaches. The reload that brings the native rules
    // retires the worker, and web's pooled connections into it carry one more request each (then close):
    // wait for that reload and for the retired worker to go, so the request below is the current worker's.
    await nativeRulesFollow(before);
    const indexBeforeRetired = await authorizerIndex();
    await waitFor("api's retired worker to exit once web's pooled connections into it are used", async () => {
      expect(await status("GET", "/other")).toBe(200);
      return parseShowProc(await sendRuntimeCommand(join(api.configDir, "master.sock"), "show proc")).oldWorkers.length === 0 ? true : undefined;
    }, { timeoutMs: 10_000, intervalMs: 50 });
    await waitFor("api's new worker's authorizer to hold the list", async () => ((await authorizerIndex()) >= indexBeforeRetired ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
    expect(await status("GET", "/other")).toBe(200);
    const stats = await apiStats();
    if (stats.passes !== 1) {
      // What the stats socket (the current worker) and the master saw, for the failure's story.
      const proc = await sendRuntimeCommand(join(api.configDir, "master.sock"), "show proc");
      expect.fail(`api's current worker holds ${stats.passes} passes, not 1; stats ${JSON.stringify(stats)}; show proc:\n${proc}\napi's output:\n${api.process.output().split("\n").slice(-40).join("\n")}`);
    }

    // L4 → L7 with one permission: only /health passes. (While the agent already
    // names the L7 intention and the authorizer's list does not have it yet, every
    // request is refused: only both answers together prove the new rule applies.)
    before = await change([{ Name: "web", Permissions: [{ Action: "allow", HTTP: { PathExact: "/health" } }] }], "/health allowed and /other refused", async () =>
      (await status("GET", "/health")) === 200 && (await status("GET", "/other")) === 403);
    expect((await apiStats()).passes).toBe(0);
    await nativeRulesFollow(before);
    // Now HAProxy decides the permission itself on the connection's later requests; the rest stays the authorizer's.
    // The rules apply once api's authorizer switched them on (the pass map's `l7` entry).
    await waitFor("api's authorizer to switch the native rules on", async () => {
      const map = await sendRuntimeCommand(join(api.configDir, "stats.sock"), `show map ${join(api.configDir, "passes.map")}`);
      return / l7 0\b/.test(map) ? true : undefined;
    }, { timeoutMs: 5000, intervalMs: 50 });
    // Every run of the action makes one decision (a cache hit, a miss or a shared agent call).
    const decisions = async () => {
      const stats = await apiStats();
      return Number(stats.hits) + Number(stats.misses) + Number(stats.shared);
    };
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const decisionsBefore = await decisions();
      for (let i = 0; i < 4; i++) expect((await send("GET", "/health", {}, agent)).status).toBe(200);
      // The connection's first request ran the action (it verifies the client and names it for the rules); the three after it did not.
      expect((await decisions()) - decisionsBefore, "decisions the action made for 4 requests on one connection").toBe(1);
      for (let i = 0; i < 4; i++) {
        expect((await send("GET", "/health", {}, agent)).status).toBe(200);
        expect((await send("GET", "/other", {}, agent)).status).toBe(403);
      }
    } finally {
      agent.destroy();
    }

    // L7 → L4 deny: nothing passes, at once, native rules or not.
    before = await change([{ Name: "web", Action: "deny" }], "/health refused", async () => (await status("GET", "/health")) === 403);
    await nativeRulesFollow(before);
    before = nativeRulesReloads(api);
    await writeIntentions(l7Rules);
    await waitFor("the L7 rules back", async () => ((await status("GET", "/health")) === 200 ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
    await nativeRulesFollow(before);
  });

  it("closes a live TCP connection within a second of its source being denied", async () => {
    await waitFor("db through web's upstream", () => tcpRoundTrip(ports.dbUpstream, "hello"), { timeoutMs: 30_000, intervalMs: 200, process: [...sidecars.map((s) => s.process), ...apps] });
    const socket = connect(ports.dbUpstream, "127.0.0.1");
    const closed = new Promise<number>((resolve) => socket.on("close", () => resolve(Date.now())));
    socket.on("error", () => undefined);
    const firstReply = await new Promise<string>((resolve, reject) => {
      socket.once("data", (chunk) => resolve(chunk.toString()));
      socket.once("close", () => reject(new Error("the connection closed before db answered")));
      socket.write("ping\n");
    });
    expect(firstReply).toBe("db answered: ping\n");
    const deniedAt = Date.now();
    await consul.api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "deny" });
    const closedAt = await Promise.race([closed, new Promise<number>((resolve) => setTimeout(() => resolve(-1), 5000))]);
    expect(closedAt, "the connection was not closed within 5 s").toBeGreaterThan(0);
    expect(closedAt - deniedAt).toBeLessThan(1000);
    // The controller logs the closing once `shutdown session` has answered: the client may see the close first.
    const closedLine = /closed 127\.0\.0\.1:\d+: spiffe:\/\/[^ ]+\/svc\/web is now denied for db \(L4 intention default\/web => default\/db \(precedence 9\): deny\)/;
    await waitFor("db's controller to log the closed connection", async () => (closedLine.test(sidecars[1]!.process.output()) ? true : undefined), { timeoutMs: 5000 });
    socket.destroy();
  });

  it("answers 431 to request headers past proxy-defaults' max_request_headers_kb, as Envoy does", async () => {
    const cookie = (bytes: number) => ({ cookie: `s=${"c".repeat(bytes)}` });
    await consul.api("PUT", "/v1/config", { Kind: "proxy-defaults", Name: "global", Config: { max_request_headers_kb: 8 } });
    try {
      // api's sidecar reloads with the rule: until then the request passes.
      await waitFor("api's sidecar answering 431 to 10 kB of headers", async () => ((await status("GET", "/health", cookie(10_000))) === 431 ? true : undefined), {
        timeoutMs: 20_000,
        intervalMs: 250,
        process: sidecars.map((s) => s.process),
      });
      expect(await send("GET", "/health", cookie(6_000))).toEqual({ status: 200, body: "api GET /health" });
    } finally {
      await consul.api("DELETE", "/v1/config/proxy-defaults/global");
    }
    await waitFor("10 kB of headers passing again", async () => ((await status("GET", "/health", cookie(10_000))) === 200 ? true : undefined), { timeoutMs: 20_000, intervalMs: 250 });
  });
});

/** Reloads so far, from the controller's own log (a reload logs its path). */
function nativeRulesReloads(sidecar: SidecarProcess): number {
  return sidecar.process.output().split("\n").filter((line) => /applied change.*native L7 rules for api follow/.test(line)).length;
}

function flushCount(sidecar: SidecarProcess): number {
  return sidecar.process.output().split("\n").filter((line) => line.includes('path="authorizer control: connect cache flush"')).length;
}
