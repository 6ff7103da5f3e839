// Consul service SPIFFE IDs:
//   spiffe://<trust-domain>[/ap/<partition>]/ns/<namespace>/dc/<datacenter>/svc/<service>
// The segments are matched on the raw path and then percent-decoded one by
// one, as Consul's connect.ParseCertURI does, so an encoded "/" cannot forge
// an extra segment. Agent, server and mesh-gateway IDs are refused: only
// services are clients of a sidecar.

import { quoted } from "./sanitize";

const sub = string.sub;
const find = string.find;
const match = string.match;
const lower = string.lower;
const gsub = string.gsub;
const char = string.char;

export interface ServiceIdentity {
  /** The URI exactly as the certificate carries it (what the agent is sent). */
  uri: string;
  /** Lowercased: trust domains compare case-insensitively. */
  trustDomain: string;
  /** "default" when the ID has no /ap/ segment. */
  partition: string;
  namespace: string;
  datacenter: string;
  service: string;
}

const MAX_ID_LENGTH = 2048;

/** Percent-decodes one path segment; nil when an escape is malformed or yields a control character. */
function decodeSegment(segment: string): string | undefined {
  if (find(segment, "%", 1, true)[0] === undefined) {
    return find(segment, "[%c]")[0] === undefined ? segment : undefined;
  }
  if (find(segment, "%%[^%x]")[0] !== undefined || find(segment, "%%%x[^%x]")[0] !== undefined || find(segment, "%%%x?$")[0] !== undefined) {
    return undefined;
  }
  const [decoded] = gsub(segment, "%%(%x%x)", (hex: string) => char(tonumber(hex, 16) as number));
  if (find(decoded, "[%c]")[0] !== undefined) return undefined;
  return decoded;
}

/** How much of a rejected ID a reason quotes. */
const QUOTED_ID_BYTES = 200;

/**
 * Parses a URI SAN as a Consul service identity. Returns the identity, or
 * nil and a reason fit for a log line (untrusted bytes are sanitized).
 */
export function parseServiceIdentity(uri: string): LuaMultiReturn<[ServiceIdentity | undefined, string | undefined]> {
  if (uri.length > MAX_ID_LENGTH) return $multi(undefined, "SPIFFE ID too long");
  if (lower(sub(uri, 1, 9)) !== "spiffe://") return $multi(undefined, `not a SPIFFE ID (wrong scheme): ${quoted(uri, QUOTED_ID_BYTES)}`);
  if (find(uri, "[%s%c?#]")[0] !== undefined) {
    return $multi(undefined, `SPIFFE ID must not contain spaces, control characters, a query or a fragment: ${quoted(uri, QUOTED_ID_BYTES)}`);
  }
  const [slash] = find(uri, "/", 10, true);
  if (slash === undefined) return $multi(undefined, `SPIFFE ID has no path: ${quoted(uri, QUOTED_ID_BYTES)}`);
  const trustDomain = lower(sub(uri, 10, slash - 1));
  // SPIFFE: trust domain names are [a-z0-9.-_]; no userinfo, no port.
  if (trustDomain === "" || find(trustDomain, "[^%w%.%-_]")[0] !== undefined) {
    return $multi(undefined, `SPIFFE ID has an invalid trust domain: ${quoted(uri, QUOTED_ID_BYTES)}`);
  }
  const path = sub(uri, slash);

  let partition: string | undefined = "default";
  let [namespace, datacenter, service] = match(path, "^/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$");
  if (namespace === undefined) {
    let rawPartition: string | undefined;
    [rawPartition, namespace, datacenter, service] = match(path, "^/ap/([^/]+)/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$");
    if (rawPartition === undefined) {
      if (find(path, "^/ap/[^/]+/agent/")[0] !== undefined || find(path, "^/agent/")[0] !== undefined) {
        return $multi(undefined, `SPIFFE ID names a Consul agent, not a service: ${quoted(uri, QUOTED_ID_BYTES)}`);
      }
      if (find(path, "^/ap/[^/]+/gateway/")[0] !== undefined || find(path, "^/gateway/")[0] !== undefined) {
        return $multi(undefined, `SPIFFE ID names a mesh gateway, not a service: ${quoted(uri, QUOTED_ID_BYTES)}`);
      }
      return $multi(undefined, `SPIFFE ID is not a Consul service identity: ${quoted(uri, QUOTED_ID_BYTES)}`);
    }
    partition = decodeSegment(rawPartition);
  }
  const decodedNamespace = decodeSegment(namespace);
  const decodedDatacenter = decodeSegment(datacenter);
  const decodedService = decodeSegment(service);
  if (partition === undefined || decodedNamespace === undefined || decodedDatacenter === undefined || decodedService === undefined) {
    return $multi(undefined, `SPIFFE ID has a malformed percent-encoding: ${quoted(uri, QUOTED_ID_BYTES)}`);
  }
  return $multi(
    { uri, trustDomain, partition, namespace: decodedNamespace, datacenter: decodedDatacenter, service: decodedService },
    undefined,
  );
}

/** True when the identity belongs to `trustDomain` (compared case-insensitively). */
export function inTrustDomain(identity: ServiceIdentity, trustDomain: string): boolean {
  return identity.trustDomain === lower(trustDomain);
}
