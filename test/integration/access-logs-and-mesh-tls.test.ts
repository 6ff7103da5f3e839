// proxy-defaults AccessLogs and the mesh entry's TLS, end to end: real Consul
// config entries, two connect-haproxy sidecars (web → api over HTTP, web → db
// over TCP), real HAProxy. The translation itself is unit-tested
// (test/unit/controller-access-log-and-tls.test.ts).
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describeChecks, startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { meshTlsHandshake, registerWebApiDb, startConnectHaproxy, tcpRoundTrip, type SidecarProcess } from "../harness/mesh.js";
import { freePorts } from "../harness/ports.js";
import { waitFor } from "../harness/processes.js";

let consul: ConsulAgent;
let logDir: string;
let accessLogPath: string;
const started: { stop(): Promise<void> }[] = [];
let web: SidecarProcess;
let api: SidecarProcess;
let db: SidecarProcess;
let ports: { api: number; apiSidecar: number; db: number; dbSidecar: number; web: number; webSidecar: number; apiUpstream: number; dbUpstream: number };

type AccessLine = Record<string, unknown>;

/** Every line of the access log, each parsed (a line that is not JSON fails the test). */
function accessLines(): AccessLine[] {
  if (!existsSync(accessLogPath)) return [];
  return readFileSync(accessLogPath, "utf8")
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => {
      try {
        return JSON.parse(line) as AccessLine;
      } catch {
        throw new Error(`access log line is not JSON: ${line}`);
      }
    });
}

/** Pids of the processes with `path` open (their /proc/<pid>/fd links). */
function processesHolding(path: string): number[] {
  const holders: number[] = [];
  for (const pid of readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours
    }
    if (fds.some((fd) => { try { return readlinkSync(`/proc/${pid}/fd/${fd}`) === path; } catch { return false; } })) holders.push(Number(pid));
  }
  return holders;
}

async function httpThroughWeb(path: string): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${ports.apiUpstream}${path}`);
  await response.text();
  return response.status;
}

function sidecarsAlive(...sidecars: SidecarProcess[]): void {
  for (const s of sidecars) if (s.process.exited()) throw new Error(`${s.process.name} exited:\n${s.process.output().slice(-3000)}`);
}

async function waitForLine(what: string, match: (line: AccessLine) => boolean, act: () => Promise<unknown>): Promise<AccessLine> {
  return waitFor(
    what,
    async () => {
      sidecarsAlive(web, api, db);
      await act();
      return accessLines().find(match);
    },
    { timeoutMs: 20_000, intervalMs: 300, process: [web.process, api.process, db.process] },
  ).catch(async (err: Error) => {
    // Seen once in CI (3.0.11): no allowed TCP line for 20 s. Whether db was healthy in Consul says which side failed.
    throw new Error(`${err.message}\n${await describeChecks(consul, ["db", "web", "api"])}`);
  });
}

beforeAll(async () => {
  consul = await startConsulDev({ config: { default_intention_policy: "deny" } });
  logDir = mkdtempSync(join(tmpdir(), "ch-access-log-"));
  accessLogPath = join(logDir, "access.log");
  const [apiPort, apiSidecar, dbPort, dbSidecar, webPort, webSidecar, apiUpstream, dbUpstream] = await freePorts(8);
  ports = { api: apiPort!, apiSidecar: apiSidecar!, db: dbPort!, dbSidecar: dbSidecar!, web: webPort!, webSidecar: webSidecar!, apiUpstream: apiUpstream!, dbUpstream: dbUpstream! };

  await consul.api("PUT", "/v1/config", { Kind: "proxy-defaults", Name: "global", AccessLogs: { Enabled: true, Type: "file", Path: accessLogPath } });
  await consul.api("PUT", "/v1/config", { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await consul.api("PUT", "/v1/config", { Kind: "service-intentions", Name: "api", Sources: [{ Name: "web", Permissions: [{ Action: "allow", HTTP: { PathPrefix: "/ok" } }] }] });
  await consul.api("PUT", "/v1/config", { Kind: "service-intentions", Name: "db", Sources: [{ Name: "web", Action: "allow" }] });

  started.push(...(await registerWebApiDb(consul, ports)));
  api = startConnectHaproxy("api", consul.httpAddr);
  db = startConnectHaproxy("db", consul.httpAddr);
  web = startConnectHaproxy("web", consul.httpAddr);
  started.push(api, db, web);
  await waitFor("web → api through the mesh", async () => {
    sidecarsAlive(web, api, db);
    return (await httpThroughWeb("/ok/ready").catch(() => 0)) === 200 ? true : undefined;
  }, { timeoutMs: 30_000, intervalMs: 250 });
});

afterAll(async () => {
  await Promise.all(started.splice(0).map((p) => p.stop()));
  await consul?.stop();
  if (logDir) rmSync(logDir, { recursive: true, force: true });
});

describe("access logs from proxy-defaults", () => {
  it("writes one JSON line per request with the client's SPIFFE ID, the verdict and Consul's reason", async () => {
    const allowed = await waitForLine("the allowed request's line", (l) => l.path === "/ok/1" && l.upstream_cluster === "local_app", () => httpThroughWeb("/ok/1"));
    expect(allowed).toMatchObject({ method: "GET", protocol: "HTTP/1.1", response_code: 200, connect_verdict: "allow", response_flags: "--" });
    expect(allowed.downstream_peer_uri_san).toMatch(/^spiffe:\/\/[^/]+\.consul\/ns\/default\/dc\/dc1\/svc\/web$/);
    expect(allowed.connect_reason).toMatch(/L7 intention/);
    expect(allowed.start_time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(typeof allowed.bytes_sent).toBe("number");

    expect(await httpThroughWeb("/no")).toBe(403);
    const denied = await waitForLine("the denied request's line", (l) => l.path === "/no" && l.upstream_cluster !== "upstream_api", async () => undefined);
    expect(denied).toMatchObject({ response_code: 403, connect_verdict: "deny", response_flags: "PR" });
    expect(denied.downstream_peer_uri_san).toBe(allowed.downstream_peer_uri_san);
    expect(denied.connect_reason).toMatch(/web => api|Default/);
    // web's upstream listener logs the same request too (no verdict there: it is the client side), once its
    // stream ends, which may be after the client has the answer and api's line is written.
    await waitForLine("web's line for the denied request", (l) => l.path === "/no" && l.upstream_cluster === "upstream_api" && l.response_code === 403, async () => undefined);
  });

  it("writes one line per TCP connection, allowed and then denied after an intention change", async () => {
    const allowed = await waitForLine("an allowed TCP connection's line", (l) => l.upstream_cluster === "local_app" && l.protocol === "-" && l.connect_verdict === "allow", () => tcpRoundTrip(ports.dbUpstream, "ping"));
    expect(allowed.downstream_peer_uri_san).toMatch(/\/svc\/web$/);
    expect(allowed.response_code).toBe(0);

    await consul.api("PUT", "/v1/config", { Kind: "service-intentions", Name: "db", Sources: [{ Name: "web", Action: "deny" }] });
    const denied = await waitForLine("a denied TCP connection's line", (l) => l.protocol === "-" && l.connect_verdict === "deny", () => tcpRoundTrip(ports.dbUpstream, "ping", "127.0.0.1", 1000));
    expect(denied.downstream_peer_uri_san).toMatch(/\/svc\/web$/);
    expect(denied.connect_reason).toMatch(/web => db|deny/i);
    expect(denied.response_flags).toBe("PR");
  });

  it("follows a proxy-defaults change (a new JSON format) on every sidecar, and the file holds only access lines", async () => {
    await consul.api("PUT", "/v1/config", {
      Kind: "proxy-defaults",
      Name: "global",
      AccessLogs: { Enabled: true, Type: "file", Path: accessLogPath, JSONFormat: JSON.stringify({ who: "%DOWNSTREAM_PEER_URI_SAN%", code: "%RESPONSE_CODE%", cluster: "%UPSTREAM_CLUSTER%", verdict: "%CONNECT_VERDICT%", why: "%CONNECT_REASON%" }) },
    });
    const line = await waitForLine("a line in the new format from api's sidecar", (l) => "who" in l && l.cluster === "local_app" && l.code === 200, () => httpThroughWeb("/ok/2"));
    expect(Object.keys(line)).toEqual(["who", "code", "cluster", "verdict", "why"]);
    expect(line.who).toMatch(/\/svc\/web$/);
    // web's sidecar follows too (its upstream listener).
    await waitForLine("a line in the new format from web's sidecar", (l) => "who" in l && l.cluster === "upstream_api", () => httpThroughWeb("/ok/3"));
    // Every line parsed as JSON (accessLines throws otherwise): the authorizer's decision lines went to stderr.
    expect(accessLines().length).toBeGreaterThan(5);
    for (const sidecar of [api, web]) expect(sidecar.process.output()).toMatch(/applied change.*proxy-defaults access logs changed \(file /);
  });

  it("moves to a new Path through a new HAProxy master that takes the listeners over: no request fails, and the old file stops growing", async () => {
    const oldPath = accessLogPath;
    const newPath = join(logDir, "moved.log");
    // Requests one after another through web → api for the whole switch.
    let failures = 0;
    let requests = 0;
    let load = true;
    const traffic = (async () => {
      while (load) {
        requests += 1;
        if ((await httpThroughWeb("/ok/during").catch(() => 0)) !== 200) failures += 1;
      }
    })();
    try {
      await consul.api("PUT", "/v1/config", { Kind: "proxy-defaults", Name: "global", AccessLogs: { Enabled: true, Type: "file", Path: newPath } });
      accessLogPath = newPath;
      for (const sidecar of [api, web]) {
        await waitFor(`${sidecar.process.name} on a new master`, async () => (/applied change.*access logs changed \(file .*access\.log -> file .*moved\.log\).*new master for the access log file/.test(sidecar.process.output()) ? true : undefined), { timeoutMs: 20_000, intervalMs: 200 });
      }
      await waitForLine("a line in the new file from api's sidecar", (l) => l.path === "/ok/moved" && l.upstream_cluster === "local_app", () => httpThroughWeb("/ok/moved"));
    } finally {
      load = false;
      await traffic;
    }
    expect(requests).toBeGreaterThan(10);
    expect(failures).toBe(0);
    // The old masters soft-stop, their idle connections closed: soon no process holds the old file.
    await waitFor("no process holding the old file", async () => (processesHolding(oldPath).length === 0 ? true : undefined), { timeoutMs: 20_000, intervalMs: 300 });
    const oldSize = statSync(oldPath).size;
    await waitForLine("a line after the switch", (l) => l.path === "/ok/after" && l.upstream_cluster === "local_app", () => httpThroughWeb("/ok/after"));
    expect(statSync(oldPath).size).toBe(oldSize);
  });
});

describe("TLS versions from the mesh config entry", () => {
  async function clientOf(service: string) {
    const leaf = await consul.api<{ CertPEM: string; PrivateKeyPEM: string }>("GET", `/v1/agent/connect/ca/leaf/${service}`);
    const roots = await consul.api<{ Roots: { RootCert: string }[] }>("GET", "/v1/agent/connect/ca/roots");
    return { certPem: leaf.CertPEM, keyPem: leaf.PrivateKeyPEM, rootsPem: roots.Roots.map((r) => r.RootCert).join("\n") };
  }

  it("refuses a TLS 1.2 client once the mesh entry asks for TLS 1.3, on both sidecars, and the mesh keeps working", async () => {
    const client = await clientOf("web");
    // Without a mesh entry: incoming TLS 1.2-1.3 (Envoy's server default).
    expect(await meshTlsHandshake(ports.apiSidecar, { ...client, maxVersion: "TLSv1.2" })).toEqual({ version: "TLSv1.2" });
    expect(await meshTlsHandshake(ports.dbSidecar, { ...client, maxVersion: "TLSv1.2" })).toEqual({ version: "TLSv1.2" });
    expect(readFileSync(join(web.configDir, "haproxy.cfg"), "utf8")).toContain("ssl-default-server-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2");

    await consul.api("PUT", "/v1/config", { Kind: "mesh", TLS: { Incoming: { TLSMinVersion: "TLSv1_3" }, Outgoing: { TLSMinVersion: "TLSv1_3" } } });
    for (const port of [ports.apiSidecar, ports.dbSidecar]) {
      await waitFor(`the public listener on ${port} to refuse TLS 1.2`, async () => {
        sidecarsAlive(web, api, db);
        const result = await meshTlsHandshake(port, { ...client, maxVersion: "TLSv1.2" });
        return "error" in result ? result : undefined;
      }, { timeoutMs: 15_000, intervalMs: 200 });
      expect(await meshTlsHandshake(port, { ...client, minVersion: "TLSv1.3" })).toEqual({ version: "TLSv1.3" });
    }
    for (const sidecar of [api, db, web]) {
      expect(readFileSync(join(sidecar.configDir, "haproxy.cfg"), "utf8")).toContain("ssl-default-bind-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3");
      // The new worker serves before the controller logs the change it applied.
      const applied = /applied change.*mesh TLS changed \(incoming TLSv1\.2-TLSv1\.3, outgoing TLSv1\.2-TLSv1\.2 -> incoming TLSv1\.3-TLSv1\.3, outgoing TLSv1\.3-TLSv1\.3\)/;
      await waitFor(`${sidecar.configDir}: the mesh TLS change logged`, async () => (applied.test(sidecar.process.output()) ? true : undefined), { timeoutMs: 5000, intervalMs: 50 });
    }
    // web's HAProxy now offers only TLS 1.3 to api's, which accepts only TLS 1.3: traffic still flows.
    await waitFor("web → api over TLS 1.3", async () => ((await httpThroughWeb("/ok/tls13").catch(() => 0)) === 200 ? true : undefined), { timeoutMs: 15_000, intervalMs: 250 });

    // Back to no entry: TLS 1.2 is accepted again.
    await consul.api("DELETE", "/v1/config/mesh/mesh");
    await waitFor("api's listener to accept TLS 1.2 again", async () => {
      const result = await meshTlsHandshake(ports.apiSidecar, { ...client, maxVersion: "TLSv1.2" });
      return "version" in result ? result : undefined;
    }, { timeoutMs: 15_000, intervalMs: 200 });
  });

  it("offers only the mesh entry's TLS 1.2 cipher suites, mapped to OpenSSL's names", async () => {
    await consul.api("PUT", "/v1/config", { Kind: "mesh", TLS: { Incoming: { TLSMaxVersion: "TLSv1_2", CipherSuites: ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"] } } });
    const client = await clientOf("web");
    // Before the reload the listener still takes another suite; after it, only the configured one.
    await waitFor("api's listener to refuse ECDHE-ECDSA-AES256-GCM-SHA384", async () => {
      sidecarsAlive(web, api, db);
      const result = await meshTlsHandshake(ports.apiSidecar, { ...client, maxVersion: "TLSv1.2", ciphers: "ECDHE-ECDSA-AES256-GCM-SHA384" });
      return "error" in result ? result : undefined;
    }, { timeoutMs: 15_000, intervalMs: 200 });
    expect(await meshTlsHandshake(ports.apiSidecar, { ...client, maxVersion: "TLSv1.2", ciphers: "ECDHE-ECDSA-AES128-GCM-SHA256" })).toEqual({ version: "TLSv1.2" });
    // TLSMaxVersion TLSv1_2: a TLS 1.3-only client is refused.
    expect(await meshTlsHandshake(ports.apiSidecar, { ...client, minVersion: "TLSv1.3" })).toHaveProperty("error");
    expect(readFileSync(join(api.configDir, "haproxy.cfg"), "utf8")).toContain("ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256");
    await consul.api("DELETE", "/v1/config/mesh/mesh");
  });
});
