// Checks that an upstream instance is the service we mean to reach, by its
// certificate's SPIFFE ID (URI SAN), before HAProxy may send it a byte.
//
// Why here: HAProxy 2.6 verifies the chain (`verify required` against the
// Consul roots) but cannot match a URI SAN, and Consul's service leaf
// certificates carry no DNS SAN and no CN (recorded in
// test/fixtures/consul/leaf-db.json), so `verifyhost` has nothing to match.
// The controller therefore handshakes with each new instance itself, with
// the sidecar's own leaf, and only enables its server slot once the
// certificate names the destination service in our trust domain.
import { connect, type PeerCertificate } from "node:tls";

export interface ExpectedIdentity {
  trustDomain: string;
  service: string;
  /** When the upstream names a datacenter, the certificate must be from it. */
  datacenter?: string;
}

export type IdentityVerdict = { ok: true; spiffeId: string } | { ok: false; reason: string; unreachable: boolean };

/** Pure: the URI SANs of a certificate, from Node's `subjectaltname` text. */
export function uriSans(subjectAltName: string | undefined): string[] {
  if (!subjectAltName) return [];
  return subjectAltName
    .split(/,\s*/)
    .filter((entry) => entry.startsWith("URI:"))
    .map((entry) => entry.slice(4));
}

/** Pure: does this SPIFFE ID name the expected service? */
export function matchesIdentity(spiffeId: string, expected: ExpectedIdentity): boolean {
  const match = /^spiffe:\/\/([^/]+)(?:\/ap\/[^/]+)?\/ns\/([^/]+)\/dc\/([^/]+)\/svc\/([^/]+)$/.exec(spiffeId);
  if (!match) return false;
  const [, trustDomain, , datacenter, service] = match;
  if (trustDomain!.toLowerCase() !== expected.trustDomain.toLowerCase()) return false;
  if (expected.datacenter && datacenter !== expected.datacenter) return false;
  return decodeURIComponent(service!) === expected.service;
}

export interface IdentityCheckMaterial {
  leafCertificatePem: string;
  caRootsPem: string;
}

/** One TLS handshake with the instance: chain against the roots, then the URI SAN. */
export function verifyUpstreamIdentity(address: string, port: number, expected: ExpectedIdentity, material: IdentityCheckMaterial, timeoutMs = 3000): Promise<IdentityVerdict> {
  return new Promise((resolve) => {
    const socket = connect({
      host: address,
      port,
      cert: material.leafCertificatePem,
      key: material.leafCertificatePem,
      ca: material.caRootsPem,
      rejectUnauthorized: true,
      // Names are checked below, on the URI SAN (Node would look for a DNS name).
      checkServerIdentity: () => undefined,
    });
    const finish = (verdict: IdentityVerdict) => {
      clearTimeout(timer);
      // A graceful close lets the server finish its side of the TLS 1.3 handshake (no "handshake failure" log).
      socket.end();
      setTimeout(() => socket.destroy(), 1000).unref();
      resolve(verdict);
    };
    const timer = setTimeout(() => finish({ ok: false, reason: `no TLS handshake within ${timeoutMs} ms`, unreachable: true }), timeoutMs);
    socket.once("secureConnect", () => {
      const certificate: PeerCertificate = socket.getPeerCertificate();
      const uris = uriSans(certificate.subjectaltname);
      if (uris.length !== 1) return finish({ ok: false, reason: `certificate has ${uris.length} URI SANs`, unreachable: false });
      if (!matchesIdentity(uris[0]!, expected)) return finish({ ok: false, reason: `certificate is ${uris[0]}, not service ${expected.service} in ${expected.trustDomain}`, unreachable: false });
      finish({ ok: true, spiffeId: uris[0]! });
    });
    socket.once("error", (err: NodeJS.ErrnoException) => {
      const chainFailure = /certificate|self.signed|verify/i.test(err.message);
      finish({ ok: false, reason: chainFailure ? `certificate not issued by the mesh CA: ${err.message}` : err.code ?? err.message, unreachable: !chainFailure });
    });
  });
}
