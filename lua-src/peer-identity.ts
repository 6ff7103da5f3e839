// Certificate → verified identity, for both ends of a mesh connection: the
// client a public listener accepted (connect_authorize) and the server an
// upstream backend reached (connect_verify_upstream). HAProxy has verified
// the chain against the CA roots before either action runs; what is left is
// the certificate's one URI SAN, a Consul service SPIFFE ID, from this
// cluster's trust domain.
//
// What a certificate says is a pure function of its DER bytes, so it is
// cached by them: a peer reconnecting with the same leaf costs one table
// lookup instead of a DER walk and a SPIFFE parse (about 8 µs of the 10 µs a
// decision took without it; bench/authorizer.lua). The trust domain is
// checked on every call, hits included, because it can be learned or change
// after the certificate was read.

import type { TrustDomainSource } from "./trust";
import { formatSerial, onlyUri, parseCertificate } from "./der";
import { BoundedLru } from "./lru";
import { parseServiceIdentity, type ServiceIdentity } from "./spiffe";

const format = string.format;

/** Which end of the connection the certificate belongs to, and how reasons name it. */
export interface PeerRole {
  /** "client" or "server". */
  name: string;
  /** The reason when the fetch gave no certificate. */
  noCertificate: string;
  /** Put before a SPIFFE ID's parse error. */
  identityErrorPrefix: string;
  cacheSize: number;
}

/** Clients of a public listener: one leaf per client instance (two during a rotation). */
export const CLIENT_ROLE: PeerRole = { name: "client", noCertificate: "client certificate unavailable", identityErrorPrefix: "", cacheSize: 1024 };

/** Servers of an upstream backend: one leaf per instance of one service, so few. */
export const SERVER_ROLE: PeerRole = {
  name: "server",
  noCertificate: "no server certificate (not a TLS server connection?)",
  identityErrorPrefix: "server ",
  cacheSize: 256,
};

/** What a certificate says, or why it is unusable. */
export interface CertificateReading {
  identity: ServiceIdentity | undefined;
  /** "" when `identity` is set. */
  problem: string;
  /**
   * The serial as Consul writes it (der.formatSerial), formatted only when
   * called: on a verdict-cache miss. Made once per certificate, so that a
   * connection hands it to the authorizer without allocating a closure.
   */
  serialOf: (this: void) => string;
  /** Names the reading for `PeerIdentities.verifyRecalled` (0 for an unusable one). */
  id: number;
}

const noSerial = (): string => "";

/** Why a peer's identity is not verified: its certificate, or our side not knowing the trust domain. */
export const IDENTITY_PROBLEM = "identity";
export const TRUST_DOMAIN_PROBLEM = "trust-domain";

function unusable(problem: string): CertificateReading {
  return { identity: undefined, problem, serialOf: noSerial, id: 0 };
}

function readCertificate(role: PeerRole, der: string): CertificateReading {
  const [certificate, certificateError] = parseCertificate(der);
  if (certificate === undefined) return unusable("unusable " + role.name + " certificate: " + (certificateError as string));
  const [uri, uriError] = onlyUri(certificate, role.name);
  if (uri === undefined) return unusable(uriError as string);
  const [identity, identityError] = parseServiceIdentity(uri);
  if (identity === undefined) return unusable(role.identityErrorPrefix + (identityError as string));
  const serialStart = certificate.serialStart;
  const serialEnd = certificate.serialEnd;
  return { identity, problem: "", serialOf: () => formatSerial(der, serialStart, serialEnd), id: 0 };
}

/** The identities of one role's peers: certificates read once, trust domain checked every time. */
export class PeerIdentities {
  private readonly readings: BoundedLru<CertificateReading>;
  /** Readings by id while the cache holds them (weak values: an evicted reading is forgotten). */
  private readonly byId = setmetatable(new LuaTable<number, CertificateReading>(), { __mode: "v" });
  private lastId = 0;

  constructor(
    private readonly role: PeerRole,
    private readonly trustDomains: TrustDomainSource,
    capacity: number = role.cacheSize,
  ) {
    this.readings = new BoundedLru<CertificateReading>(capacity);
  }

  /** Certificates cached. */
  size(): number {
    return this.readings.size();
  }

  /**
   * Reads `der` (what the certificate fetch returned) and checks the trust
   * domain. Returns the reading (nil when there was no certificate), then a
   * problem ("" when the identity is a service of this cluster), then what
   * kind of problem (IDENTITY_PROBLEM or TRUST_DOMAIN_PROBLEM; "" with none). On a trust
   * domain problem the reading still carries the certificate's identity.
   */
  verify(der: string | undefined): LuaMultiReturn<[CertificateReading | undefined, string, string]> {
    if (typeof der !== "string" || der === "") return $multi(undefined, this.role.noCertificate, IDENTITY_PROBLEM);
    let reading = this.readings.get(der);
    if (reading === undefined) {
      reading = readCertificate(this.role, der);
      if (reading.identity !== undefined) {
        this.lastId++;
        reading.id = this.lastId;
        this.byId.set(reading.id, reading);
      }
      this.readings.set(der, reading);
    }
    return this.checkTrustDomain(reading);
  }

  /**
   * The reading `verify` returned with this id, checked again against the
   * trust domain: how the later requests of an HTTP connection get their
   * identity without fetching and hashing the certificate again (the id is
   * kept in a session variable). nil when the reading was evicted: verify then.
   */
  verifyRecalled(id: number): LuaMultiReturn<[CertificateReading | undefined, string, string]> {
    const reading = this.byId.get(id);
    if (reading === undefined) return $multi(undefined, "", "");
    return this.checkTrustDomain(reading);
  }

  private checkTrustDomain(reading: CertificateReading): LuaMultiReturn<[CertificateReading | undefined, string, string]> {
    const identity = reading.identity;
    if (identity === undefined) return $multi(reading, reading.problem, IDENTITY_PROBLEM);

    const [trustDomain, trustError] = this.trustDomains.ensure();
    if (trustDomain === undefined) return $multi(reading, trustError as string, TRUST_DOMAIN_PROBLEM);
    if (identity.trustDomain !== trustDomain) {
      return $multi(reading, format("%s trust domain %s is not this cluster's (%s)", this.role.name, identity.trustDomain, trustDomain), IDENTITY_PROBLEM);
    }
    return $multi(reading, "", "");
  }
}

/** For Lua callers (tests), which cannot use `new`. */
export function newPeerIdentities(role: PeerRole, trustDomains: TrustDomainSource, capacity?: number): PeerIdentities {
  return new PeerIdentities(role, trustDomains, capacity);
}
