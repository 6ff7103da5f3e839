// Checks that an upstream instance is the service we mean to reach, by its
// certificate's SPIFFE ID (URI SAN), before HAProxy may send it a byte.
//
// Why here: HAProxy 2.6 verifies the chain (`verify required` against the
// Consul roots) but cannot match a URI SAN, and Consul's service leaf
// certificates carry no DNS SAN and no CN (recorded in
// test/fixtures/consul/leaf-db.json), so `verifyhost` has nothing to match.
// The controller therefore handshakes with each new instance itself, with
// the sidecar's own leaf, and only enables its server slot once the
// certificate names the destination service in our trust domain
// (per connection, lua.connect_verify_upstream checks it again).
import { connect, type PeerCertificate } from "node:tls";
import { backoffDelayMs } from "./blocking-query.js";
import type { Clock } from "./clock.js";
import { leafPem, rootsPem } from "./consul-pem.js";
import type { CaRoots, LeafCertificate, ServiceInstanceEntry } from "./consul-replies.js";
import type { UpstreamInstances } from "./consul-watches.js";
import { instanceAddress } from "./desired-state.js";
import type { Logger } from "./logger.js";

export interface ExpectedIdentity {
  trustDomain: string;
  service: string;
  /** When the upstream names a datacenter, the certificate must be from it. */
  datacenter?: string;
}

/**
 * Why an instance was kept out. Only `wrong-identity` is proof: the chain
 * verified and the certificate names another service. A peer that is not
 * ready yet (not listening, no leaf or no roots loaded: it answers with a TLS
 * alert) is `no-handshake`; a chain our roots do not verify may be a leaf from
 * a CA we are about to trust (rotation) and is retried sooner than proof.
 */
export type RefusalKind = "no-handshake" | "untrusted-chain" | "wrong-identity";

export type IdentityVerdict = { ok: true; spiffeId: string } | { ok: false; reason: string; kind: RefusalKind };

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

/** Pure: what the probe presents and trusts: exactly the files HAProxy loads (consul-pem.ts). */
export function identityCheckMaterial(leaf: LeafCertificate, roots: CaRoots): IdentityCheckMaterial {
  return { leafCertificatePem: leafPem(leaf), caRootsPem: rootsPem(roots) };
}

/** Pure: Node's codes for a server chain that our roots do not verify (X509 verification), as opposed to TLS alerts from the peer. */
export function isChainVerificationFailure(code: string | undefined): boolean {
  return /^(UNABLE_TO_|CERT_|SELF_SIGNED|DEPTH_ZERO_SELF_SIGNED|INVALID_CA|PATH_LENGTH_EXCEEDED|INVALID_PURPOSE)/.test(code ?? "");
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
    const timer = setTimeout(() => finish({ ok: false, reason: `no TLS handshake within ${timeoutMs} ms`, kind: "no-handshake" }), timeoutMs);
    socket.once("secureConnect", () => {
      const certificate: PeerCertificate = socket.getPeerCertificate();
      const uris = uriSans(certificate.subjectaltname);
      if (uris.length !== 1) return finish({ ok: false, reason: `certificate has ${uris.length} URI SANs`, kind: "wrong-identity" });
      if (!matchesIdentity(uris[0]!, expected)) return finish({ ok: false, reason: `certificate is ${uris[0]}, not service ${expected.service} in ${expected.trustDomain}`, kind: "wrong-identity" });
      finish({ ok: true, spiffeId: uris[0]! });
    });
    socket.once("error", (err: NodeJS.ErrnoException) => {
      // A TLS alert about *our* certificate ("bad certificate") says the peer is not ready, not that it is someone else.
      if (isChainVerificationFailure(err.code)) finish({ ok: false, reason: `certificate not issued by the mesh CA: ${err.message}`, kind: "untrusted-chain" });
      else finish({ ok: false, reason: err.code ?? err.message, kind: "no-handshake" });
    });
  });
}

export type IdentityProbe = (address: string, port: number, expected: ExpectedIdentity, material: IdentityCheckMaterial) => Promise<IdentityVerdict>;

/** How long an instance stays out before the next probe, by why it was refused. */
export function retryDelayMs(kind: RefusalKind, failures: number, random: number): number {
  if (kind === "wrong-identity") return 30_000;
  if (kind === "untrusted-chain") return backoffDelayMs(failures, 1_000, 5_000, random);
  // Retried quickly, so an instance joins within about a second of presenting a valid leaf.
  return backoffDelayMs(failures, 200, 1_000, random);
}

type IdentityRecord = { state: "verified" } | { state: "pending"; failures: number } | { state: "refused"; retryAt: number; failures: number };

/** One group of upstream instances, and who they must prove to be. */
export interface UpstreamToCheck {
  /** A prepared-query upstream's name, or a discovery-chain target's query key: how `verified` names the group. */
  group: string;
  instances: UpstreamInstances;
  expected: ExpectedIdentity;
}

/**
 * Each upstream instance is probed once, and again only after a refusal's
 * delay. `refresh` starts the probes that are due and forgets instances that
 * are gone; `verified` and `settled` only read.
 */
export class UpstreamIdentities {
  private readonly records = new Map<string, IdentityRecord>();

  constructor(private readonly options: { probe: IdentityProbe; clock: Clock; logger: Logger; onVerdict: () => void }) {}

  refresh(upstreams: UpstreamToCheck[], material: IdentityCheckMaterial): void {
    const seen = new Set<string>();
    const now = this.options.clock.now();
    for (const { group, instances, expected } of upstreams) {
      for (const entry of instances.entries) {
        const key = identityKey(group, expected, entry);
        seen.add(key);
        const record = this.records.get(key);
        if (record && (record.state !== "refused" || now < record.retryAt)) continue;
        this.probe(key, entry, expected, material, record?.state === "refused" ? record.failures : 0);
      }
    }
    for (const key of this.records.keys()) if (!seen.has(key)) this.records.delete(key);
  }

  verified(upstreams: UpstreamToCheck[]): Record<string, ServiceInstanceEntry[]> {
    const result: Record<string, ServiceInstanceEntry[]> = {};
    for (const { group, instances, expected } of upstreams) {
      result[group] = instances.entries.filter((entry) => this.records.get(identityKey(group, expected, entry))?.state === "verified");
    }
    return result;
  }

  /** No probe in flight. */
  settled(): boolean {
    return ![...this.records.values()].some((record) => record.state === "pending");
  }

  /** When the earliest refused instance may be probed again. */
  nextRetryAt(): number | undefined {
    let next: number | undefined;
    for (const record of this.records.values()) if (record.state === "refused" && (next === undefined || record.retryAt < next)) next = record.retryAt;
    return next;
  }

  private probe(key: string, entry: ServiceInstanceEntry, expected: ExpectedIdentity, material: IdentityCheckMaterial, failures: number): void {
    const { clock, logger } = this.options;
    const address = instanceAddress(entry);
    const port = entry.Service.Port;
    const pending: IdentityRecord = { state: "pending", failures };
    this.records.set(key, pending);
    void this.options.probe(address, port, expected, material).then((verdict) => {
      if (this.records.get(key) !== pending) return;
      if (verdict.ok) {
        this.records.set(key, { state: "verified" });
      } else {
        const retryInMs = retryDelayMs(verdict.kind, failures + 1, clock.random());
        this.records.set(key, { state: "refused", retryAt: clock.now() + retryInMs, failures: failures + 1 });
        const line = `upstream instance ${address}:${port} kept out of ${expected.service}: ${verdict.reason}`;
        if (verdict.kind === "wrong-identity") logger.error(line, { retryInMs });
        else if (failures === 0) logger.warn(line, { retryInMs });
      }
      this.options.onVerdict();
    });
  }
}

function identityKey(group: string, expected: ExpectedIdentity, entry: ServiceInstanceEntry): string {
  return `${group}|${expected.service}|${expected.datacenter ?? ""}|${instanceAddress(entry)}:${entry.Service.Port}`;
}
