// Smoke tests of the foundation: the real Consul dev agent issues mesh
// certificates, and the real HAProxy loads the built Lua bundle.
import { X509Certificate } from "node:crypto";
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { haproxyUnderTest, luaLoadConfig, startHaproxy } from "../harness/haproxy.js";
import { luaBundlePath } from "../harness/paths.js";
import { freePort } from "../harness/ports.js";

interface CaRoots {
  ActiveRootID: string;
  TrustDomain: string;
  Roots: { ID: string; RootCert: string; IntermediateCerts: string[] | null; Active: boolean }[];
}
interface LeafCert {
  SerialNumber: string;
  CertPEM: string;
  PrivateKeyPEM: string;
  Service: string;
  ServiceURI: string;
}

function splitPem(bundle: string): X509Certificate[] {
  return (bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((pem) => new X509Certificate(pem));
}

/** "URI:spiffe://a, DNS:b" → [["URI","spiffe://a"],["DNS","b"]] (values in Consul's certs hold no ", "). */
function subjectAltNames(cert: X509Certificate): [string, string][] {
  return (cert.subjectAltName ?? "")
    .split(", ")
    .filter(Boolean)
    .map((entry) => {
      const colon = entry.indexOf(":");
      return [entry.slice(0, colon), entry.slice(colon + 1)];
    });
}

describe("real Consul dev agent", () => {
  let consul: ConsulAgent;
  beforeAll(async () => {
    consul = await startConsulDev();
  });
  afterAll(async () => {
    await consul?.stop();
  });

  it("elects itself leader and serves the built-in Connect CA", async () => {
    const leader = await consul.api<string>("GET", "/v1/status/leader");
    expect(leader).toMatch(/^127\.0\.0\.1:\d+$/);
    const roots = await consul.api<CaRoots>("GET", "/v1/agent/connect/ca/roots");
    expect(roots.TrustDomain).toMatch(/^[0-9a-f-]{36}\.consul$/);
    expect(roots.Roots.filter((r) => r.Active).map((r) => r.ID)).toEqual([roots.ActiveRootID]);
  });

  it("registers web with a sidecar and issues web a leaf that chains to a root and names it by SPIFFE ID", async () => {
    await consul.api("PUT", "/v1/agent/service/register", { Name: "web", Port: 18080, Connect: { SidecarService: {} } });
    const services = await consul.api<Record<string, { Kind?: string; Proxy?: { DestinationServiceID: string } }>>("GET", "/v1/agent/services");
    expect(services["web-sidecar-proxy"]?.Kind).toBe("connect-proxy");
    expect(services["web-sidecar-proxy"]?.Proxy?.DestinationServiceID).toBe("web");

    const roots = await consul.api<CaRoots>("GET", "/v1/agent/connect/ca/roots");
    const leaf = await consul.api<LeafCert>("GET", "/v1/agent/connect/ca/leaf/web");
    const [leafCert, ...intermediates] = splitPem(leaf.CertPEM);
    const rootCerts = roots.Roots.flatMap((r) => splitPem(r.RootCert));
    const issuers = [...intermediates, ...roots.Roots.flatMap((r) => (r.IntermediateCerts ?? []).flatMap(splitPem))];

    // Walk up from the leaf until a root signed the last link.
    let current = leafCert;
    for (let depth = 0; depth < 5 && !rootCerts.some((root) => current.checkIssued(root) && current.verify(root.publicKey)); depth++) {
      const next = issuers.find((c) => current.checkIssued(c) && current.verify(c.publicKey));
      expect(next, `no issuer for ${current.subject}`).toBeDefined();
      current = next!;
    }
    expect(rootCerts.some((root) => current.checkIssued(root) && current.verify(root.publicKey))).toBe(true);

    const expectedId = `spiffe://${roots.TrustDomain}/ns/default/dc/dc1/svc/web`;
    const uris = subjectAltNames(leafCert).filter(([kind]) => kind === "URI").map(([, value]) => value);
    expect(uris).toEqual([expectedId]);
    expect(leaf.ServiceURI).toBe(expectedId);
    // Consul formats serials as colon-separated hex; the authorizer sends it back in that form.
    expect(leaf.SerialNumber).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2})*$/);
    expect(BigInt(`0x${leaf.SerialNumber.replaceAll(":", "")}`)).toBe(BigInt(`0x${leafCert.serialNumber}`));
    expect(leaf.PrivateKeyPEM).toContain("BEGIN EC PRIVATE KEY");
  });

  // Recorded fact, relied on by the controller's upstream identity check:
  // Consul's service leaf certificates carry NO DNS SAN and an EMPTY subject (no
  // CN). HAProxy 2.6's `verifyhost` compares only DNS SANs and the CN, so it
  // cannot pin the upstream's service name: the identity must be read from the
  // URI SAN (ssl_s_der) instead.
  it("issues service leaves with only a critical URI SAN: no DNS SAN, no CN", async () => {
    await consul.api("PUT", "/v1/agent/service/register", { Name: "db", Port: 15432, Connect: { SidecarService: {} } });
    const leaf = await consul.api<LeafCert>("GET", "/v1/agent/connect/ca/leaf/db");
    const [leafCert] = splitPem(leaf.CertPEM);
    expect(subjectAltNames(leafCert).filter(([kind]) => kind === "DNS")).toEqual([]);
    expect(leafCert.subject ?? "").toBe(""); // Node reports an empty subject as undefined
    expect(leafCert.toLegacyObject().ext_key_usage).toEqual(["1.3.6.1.5.5.7.3.2", "1.3.6.1.5.5.7.3.1"]);
  });
});

describe("real HAProxy with the Lua bundle", () => {
  it("accepts and runs a configuration that lua-loads dist/connect-haproxy.lua", async () => {
    expect(existsSync(luaBundlePath), `${luaBundlePath} missing: run npm run build`).toBe(true);
    const port = await freePort();
    const haproxy = await startHaproxy(luaLoadConfig(luaBundlePath, port));
    try {
      const info = await haproxy.command("show info");
      // The HAProxy under test (HAPROXY_BIN): 2.6 embeds Lua 5.3, 3.x as built here Lua 5.4.
      const { major, minor, patch } = haproxyUnderTest().version;
      expect(info).toMatch(new RegExp(`^Version: ${major}\\.${minor}\\.${patch}\\b`, "m"));
      expect(info).toMatch(new RegExp(`^Pid: ${haproxy.process.pid}$`, "m"));
    } finally {
      await haproxy.stop();
    }
  });
});
