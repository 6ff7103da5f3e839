// The per-connection upstream identity check (lua.connect_verify_upstream) on a
// real HAProxy running the controller's rendered configuration, with real
// Consul-issued certificates.
//
//   client ──► HAProxy upstream_db (tcp) / upstream_api (http) ══mTLS══► impostor
//
// The impostor sits on the instance's address and serves a valid mesh leaf:
// first db's (so it passes the controller's once-per-instance check, run here
// for real), then web's, then db's again. Only the connections made while it
// presents db's certificate get a response byte.
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from "node:tls";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { startHaproxy, type HaproxyInstance } from "../harness/haproxy.js";
import { luaBundlePath } from "../harness/paths.js";
import { tcpRoundTrip } from "../harness/mesh.js";
import { freePorts } from "../harness/ports.js";
import { waitFor } from "../harness/processes.js";
import type { CaRoots, LeafCertificate } from "../../controller/consul-replies.js";
import { leafPem, rootsPem } from "../../controller/consul-pem.js";
import type { DesiredState } from "../../controller/desired-state.js";
import { renderHaproxyConfig } from "../../controller/haproxy-config.js";
import { verifyUpstreamIdentity } from "../../controller/upstream-identity.js";
import { planMeshTls } from "../../controller/mesh-tls.js";

interface Leaf {
  cert: string;
  key: string;
}

describe("per-connection upstream identity with real Consul and HAProxy", () => {
  let consul: ConsulAgent;
  let haproxy: HaproxyInstance;
  let tcpImpostor: TlsServer;
  let httpImpostor: HttpsServer;
  let dir: string;
  let roots: CaRoots;
  let leaves: Record<"db" | "web" | "api", Leaf>;
  let ports: Record<"tcpImpostor" | "httpImpostor" | "upstreamDb" | "upstreamApi" | "publicListener", number>;
  /** What the TCP impostor received, per connection: proves where the client's first bytes go. */
  const received: string[] = [];

  /** Both impostors present `name`'s leaf to the connections that follow. */
  function present(name: keyof typeof leaves, also: keyof typeof leaves = name): void {
    tcpImpostor.setSecureContext({ ...leaves[name], ca: rootsPem(roots) });
    httpImpostor.setSecureContext({ ...leaves[also], ca: rootsPem(roots) });
  }

  async function httpGet(port: number): Promise<{ status: number; body: string }> {
    const res = await fetch(`http://127.0.0.1:${port}/who`, { signal: AbortSignal.timeout(5000) });
    return { status: res.status, body: await res.text() };
  }

  beforeAll(async () => {
    const [a, b, c, d, e] = await freePorts(5);
    ports = { tcpImpostor: a!, httpImpostor: b!, upstreamDb: c!, upstreamApi: d!, publicListener: e! };
    consul = await startConsulDev();
    roots = await consul.api<CaRoots>("GET", "/v1/agent/connect/ca/roots");
    const leaf = async (service: string) => {
      const issued = await consul.api<LeafCertificate>("GET", `/v1/agent/connect/ca/leaf/${service}`);
      return { issued, pair: { cert: issued.CertPEM, key: issued.PrivateKeyPEM } };
    };
    const [db, web, api] = await Promise.all([leaf("db"), leaf("web"), leaf("api")]);
    leaves = { db: db.pair, web: web.pair, api: api.pair };

    // Mesh servers whose certificate the test switches; they require a mesh client certificate, like a sidecar.
    const tlsOptions = { ...leaves.db, ca: rootsPem(roots), requestCert: true, rejectUnauthorized: true };
    tcpImpostor = createTlsServer(tlsOptions, (socket: TLSSocket) => {
      const index = received.push("") - 1;
      socket.on("data", (chunk) => {
        received[index] += chunk.toString();
        socket.write(`answer:${chunk.toString()}`);
      });
      socket.on("error", () => undefined);
    });
    httpImpostor = createHttpsServer({ ...tlsOptions, ALPNProtocols: ["http/1.1"] }, (_req, res) => {
      // One request per server connection, so each request makes a new handshake with whatever certificate is current.
      res.setHeader("Connection", "close");
      res.end("secret from the server\n");
    });
    await new Promise<void>((resolve) => tcpImpostor.listen(ports.tcpImpostor, "127.0.0.1", resolve));
    await new Promise<void>((resolve) => httpImpostor.listen(ports.httpImpostor, "127.0.0.1", resolve));

    // web's sidecar as the controller renders it, with one instance per upstream.
    dir = mkdtempSync(join(tmpdir(), "ch-upstream-id-"));
    const state: DesiredState = {
      paths: {
        configFile: join(dir, "haproxy.cfg"),
        leafCertificateFile: join(dir, "leaf.pem"),
        caRootsFile: join(dir, "roots.pem"),
        // startHaproxy puts its own socket here and waits for it.
        statsSocket: "{{STATS_SOCKET}}",
        masterSocket: join(dir, "master.sock"),
        controlSocket: join(dir, "control.sock"),
        passMap: join(dir, "passes.map"),
        serverPassMap: join(dir, "server-passes.map"),
        luaBundle: luaBundlePath,
      },
      publicListener: {
        bindAddress: "127.0.0.1",
        bindPort: ports.publicListener,
        protocol: "tcp",
        destinationServiceName: "web",
        localServiceAddress: "127.0.0.1",
        localServicePort: 1,
        localConnectTimeoutMs: 1000,
        localRequestTimeoutMs: 1000,
      },
      upstreams: [
        { name: "upstream_db", destinationType: "service", destinationName: "db", bindAddress: "127.0.0.1", bindPort: ports.upstreamDb, protocol: "tcp", connectTimeoutMs: 2000, chainWarnings: [], backends: [{ name: "upstream_db", service: "db", connectTimeoutMs: 2000, loadBalancing: { algorithm: "roundrobin" }, slots: [{ name: "s1", instance: { id: "n/db-1", address: "127.0.0.1", port: ports.tcpImpostor } }] }] },
        { name: "upstream_api", destinationType: "service", destinationName: "api", bindAddress: "127.0.0.1", bindPort: ports.upstreamApi, protocol: "http", connectTimeoutMs: 2000, chainWarnings: [], backends: [{ name: "upstream_api", service: "api", connectTimeoutMs: 2000, loadBalancing: { algorithm: "roundrobin" }, slots: [{ name: "s1", instance: { id: "n/api-1", address: "127.0.0.1", port: ports.httpImpostor } }] }] },
      ],
      leafCertificatePem: leafPem(web.issued),
      leafSerial: web.issued.SerialNumber,
      caRootsPem: rootsPem(roots),
      trustDomain: roots.TrustDomain,
      intentionsFingerprint: "none",
      intentionsIndex: 0,
      nativeL7: { lines: [], index: 0, leftToLua: [] },
      meshTls: planMeshTls(null),
    };
    writeFileSync(state.paths.leafCertificateFile, state.leafCertificatePem, { mode: 0o600 });
    writeFileSync(state.paths.caRootsFile, state.caRootsPem);
    writeFileSync(state.paths.passMap, "");
    writeFileSync(state.paths.serverPassMap, "");
    haproxy = await startHaproxy(renderHaproxyConfig(state));
  });

  afterAll(async () => {
    await haproxy?.stop();
    tcpImpostor?.close();
    httpImpostor?.close();
    await consul?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("passes the controller's per-instance check while it presents db's certificate", async () => {
    present("db", "api");
    const verdict = await verifyUpstreamIdentity("127.0.0.1", ports.tcpImpostor, { trustDomain: roots.TrustDomain, service: "db" }, {
      leafCertificatePem: `${leaves.web.cert}\n${leaves.web.key}`,
      caRootsPem: rootsPem(roots),
    });
    expect(verdict).toMatchObject({ ok: true });
    expect(await tcpRoundTrip(ports.upstreamDb, "hello db")).toBe("answer:hello db");
    expect(await httpGet(ports.upstreamApi)).toEqual({ status: 200, body: "secret from the server\n" });
  });

  it("refuses every connection, in TCP and HTTP, once the same address presents web's valid certificate", async () => {
    present("web");
    const before = received.length;
    for (let i = 0; i < 3; i++) expect(await tcpRoundTrip(ports.upstreamDb, `secret request ${i}`)).toBeUndefined();
    // The limit of a response-side check: the client's first bytes did reach the impostor.
    expect(received.slice(before)).toEqual(["secret request 0\n", "secret request 1\n", "secret request 2\n"]);
    const denied = await httpGet(ports.upstreamApi);
    expect(denied.status).toBe(502);
    expect(denied.body).not.toContain("secret from the server");
    await waitFor("the refusal lines", async () => {
      const lines = haproxy.process.output().match(/connect_verify_upstream: refuse expected=(db|api) server=spiffe:\S+\/svc\/web reason="server is service web, not (db|api)"/g);
      return lines && lines.length >= 4 ? lines : undefined;
    }, { timeoutMs: 5000 });
  });

  it("lets connections through again as soon as the server presents the right certificate", async () => {
    present("db", "api");
    expect(await tcpRoundTrip(ports.upstreamDb, "hello again")).toBe("answer:hello again");
    expect((await httpGet(ports.upstreamApi)).status).toBe(200);
    // Another valid service's leaf on the HTTP side (db's, where api is expected) is refused too.
    present("db", "db");
    expect((await httpGet(ports.upstreamApi)).status).toBe(502);
  });
});
