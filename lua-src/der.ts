// Just enough of X.509 DER to find a certificate's serial number and its URI
// subject alternative names. Every read is bounds-checked against the
// enclosing element, and every failure is a value (nil + message), never a
// Lua error: this runs on attacker-controlled bytes (see test/lua/der_spec.lua
// and the fuzz spec, which feed it truncated, corrupted and random input).
//
// Positions are 1-based (Lua strings); an element is described by the index
// of its first content byte and the index one past its last.

const byte = string.byte;
const sub = string.sub;
const format = string.format;

const TAG_BOOLEAN = 0x01;
const TAG_INTEGER = 0x02;
const TAG_OCTET_STRING = 0x04;
const TAG_OID = 0x06;
const TAG_SEQUENCE = 0x30;
const TAG_VERSION = 0xa0; // [0] EXPLICIT
const TAG_ISSUER_UID = 0x81; // [1] IMPLICIT BIT STRING
const TAG_SUBJECT_UID = 0x82; // [2] IMPLICIT BIT STRING
const TAG_EXTENSIONS = 0xa3; // [3] EXPLICIT
const TAG_SAN_URI = 0x86; // GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String
const TAG_SAN_DNS = 0x82; // GeneralName dNSName [2] IMPLICIT IA5String

/** 2.5.29.17 (id-ce-subjectAltName), as the content bytes of its OID. */
const OID_SUBJECT_ALT_NAME = string.char(0x55, 0x1d, 0x11);

/** RFC 5280 caps serials at 20 octets; tolerate some sloppiness, not megabytes. */
const MAX_SERIAL_OCTETS = 64;
/** No real SPIFFE ID comes near this (the spec says 2048 bytes). */
const MAX_URI_OCTETS = 2048;

/**
 * Reads the tag-length header at `pos`, for an element that must end at or
 * before `limit` (exclusive). Returns tag, content start, content end
 * (exclusive); on malformed input the tag is -1 and the second value says why.
 */
function readHeader(der: string, pos: number, limit: number): LuaMultiReturn<[number, number | string, number]> {
  if (pos + 1 >= limit) return $multi(-1, "truncated element header", 0);
  const tag = byte(der, pos);
  if ((tag & 0x1f) === 0x1f) return $multi(-1, "multi-byte tags are not used in certificates", 0);
  const first = byte(der, pos + 1);
  let start = pos + 2;
  let length = first;
  if (first >= 0x80) {
    const count = first - 0x80;
    if (count === 0) return $multi(-1, "indefinite length is not DER", 0);
    if (count > 4) return $multi(-1, "length field too long", 0);
    if (start + count > limit) return $multi(-1, "truncated length field", 0);
    length = 0;
    for (const i of $range(start, start + count - 1)) length = length * 256 + byte(der, i);
    start = start + count;
  }
  if (start + length > limit) return $multi(-1, "element runs past its container", 0);
  return $multi(tag, start, start + length);
}

export { readHeader };

/** What the authorizer needs from a client certificate. */
export interface ParsedCertificate {
  /** Where the serial's content octets sit in `der` (see formatSerial). */
  serialStart: number;
  serialEnd: number;
  /** Every uniformResourceIdentifier SAN, in order. */
  uris: string[];
  /** Every dNSName SAN, in order (kept for tests and diagnostics). */
  dnsNames: string[];
  /** True when the subjectAltName extension is marked critical. */
  sanCritical: boolean;
}

/**
 * Walks Certificate → tbsCertificate → serialNumber … extensions [3] →
 * subjectAltName. Fails if there is no subjectAltName extension, or two.
 */
export function parseCertificate(der: string): LuaMultiReturn<[ParsedCertificate | undefined, string | undefined]> {
  if (typeof der !== "string") return $multi(undefined, "certificate is not a string");
  const total = der.length + 1;

  // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
  let [tag, start, end] = readHeader(der, 1, total);
  if (tag !== TAG_SEQUENCE) return $multi(undefined, headerError("certificate", tag, start));
  if (end !== total) return $multi(undefined, "trailing bytes after the certificate");

  // TBSCertificate ::= SEQUENCE { ... }
  [tag, start, end] = readHeader(der, start as number, end);
  if (tag !== TAG_SEQUENCE) return $multi(undefined, headerError("tbsCertificate", tag, start));
  const tbsEnd = end;

  // version [0] EXPLICIT, optional (absent means v1, which has no extensions).
  [tag, start, end] = readHeader(der, start as number, tbsEnd);
  if (tag === TAG_VERSION) [tag, start, end] = readHeader(der, end, tbsEnd);

  // serialNumber INTEGER
  if (tag !== TAG_INTEGER) return $multi(undefined, headerError("serial number", tag, start));
  const serialStart = start as number;
  const serialEnd = end;
  if (serialEnd - serialStart < 1) return $multi(undefined, "empty serial number");
  if (serialEnd - serialStart > MAX_SERIAL_OCTETS) return $multi(undefined, "serial number too long");

  // signature, issuer, validity, subject, subjectPublicKeyInfo: five SEQUENCEs.
  let pos = serialEnd;
  for (const _ of $range(1, 5)) {
    [tag, start, end] = readHeader(der, pos, tbsEnd);
    if (tag !== TAG_SEQUENCE) return $multi(undefined, headerError("tbsCertificate field", tag, start));
    pos = end;
  }

  // issuerUniqueID [1], subjectUniqueID [2] (optional), then extensions [3].
  let extensionsStart = -1;
  let extensionsEnd = -1;
  while (pos < tbsEnd) {
    [tag, start, end] = readHeader(der, pos, tbsEnd);
    if (tag === TAG_EXTENSIONS) {
      extensionsStart = start as number;
      extensionsEnd = end;
    } else if (tag !== TAG_ISSUER_UID && tag !== TAG_SUBJECT_UID && tag !== 0xa1 && tag !== 0xa2) {
      return $multi(undefined, headerError("tbsCertificate trailer", tag, start));
    }
    pos = end;
  }
  if (extensionsStart < 0) return $multi(undefined, "certificate has no extensions (so no subjectAltName)");

  // Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension
  [tag, start, end] = readHeader(der, extensionsStart, extensionsEnd);
  if (tag !== TAG_SEQUENCE || end !== extensionsEnd) return $multi(undefined, headerError("extensions", tag, start));
  pos = start as number;
  let sanStart = -1;
  let sanEnd = -1;
  let sanCritical = false;
  while (pos < extensionsEnd) {
    // Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
    [tag, start, end] = readHeader(der, pos, extensionsEnd);
    if (tag !== TAG_SEQUENCE) return $multi(undefined, headerError("extension", tag, start));
    const extensionEnd = end;
    pos = extensionEnd;
    [tag, start, end] = readHeader(der, start as number, extensionEnd);
    if (tag !== TAG_OID) return $multi(undefined, headerError("extension id", tag, start));
    const isSan = end - (start as number) === 3 && sub(der, start as number, end - 1) === OID_SUBJECT_ALT_NAME;
    [tag, start, end] = readHeader(der, end, extensionEnd);
    let critical = false;
    if (tag === TAG_BOOLEAN) {
      if (end - (start as number) !== 1) return $multi(undefined, "malformed critical flag");
      critical = byte(der, start as number) !== 0;
      [tag, start, end] = readHeader(der, end, extensionEnd);
    }
    if (tag !== TAG_OCTET_STRING || end !== extensionEnd) return $multi(undefined, headerError("extension value", tag, start));
    if (isSan) {
      if (sanStart >= 0) return $multi(undefined, "two subjectAltName extensions");
      sanStart = start as number;
      sanEnd = end;
      sanCritical = critical;
    }
  }
  if (sanStart < 0) return $multi(undefined, "certificate has no subjectAltName");

  // SubjectAltName ::= GeneralNames ::= SEQUENCE SIZE (1..MAX) OF GeneralName
  [tag, start, end] = readHeader(der, sanStart, sanEnd);
  if (tag !== TAG_SEQUENCE || end !== sanEnd) return $multi(undefined, headerError("subjectAltName", tag, start));
  const uris: string[] = [];
  const dnsNames: string[] = [];
  pos = start as number;
  while (pos < sanEnd) {
    [tag, start, end] = readHeader(der, pos, sanEnd);
    if (tag < 0) return $multi(undefined, headerError("subjectAltName entry", tag, start));
    if (tag === TAG_SAN_URI) {
      if (end - (start as number) > MAX_URI_OCTETS) return $multi(undefined, "URI subjectAltName too long");
      uris.push(sub(der, start as number, end - 1));
    } else if (tag === TAG_SAN_DNS) {
      dnsNames.push(sub(der, start as number, end - 1));
    }
    pos = end;
  }
  return $multi({ serialStart, serialEnd, uris, dnsNames, sanCritical }, undefined);
}

function headerError(what: string, tag: number, detail: number | string): string {
  if (tag < 0) return `${what}: ${detail as string}`;
  return format("%s: unexpected tag 0x%02x", what, tag);
}

/** "0"…"ff" for each octet value, built once. */
const HEX_OCTETS = new LuaTable<number, string>();
for (const value of $range(0, 255)) HEX_OCTETS.set(value, format("%02x", value));

/**
 * The serial as Consul writes it (connect.EncodeSerialNumber: the big-endian
 * magnitude without leading zero octets, lowercase hex, colon-separated).
 * Only needed on a cache miss, so it is not computed during parsing.
 */
export function formatSerial(der: string, serialStart: number, serialEnd: number): string {
  let first = serialStart;
  while (first < serialEnd - 1 && byte(der, first) === 0) first++;
  if (first === serialEnd - 1 && byte(der, first) === 0) return "";
  const parts: string[] = [];
  for (const i of $range(first, serialEnd - 1)) parts.push(HEX_OCTETS.get(byte(der, i)));
  return parts.join(":");
}

/** A mesh certificate must name exactly one identity; `role` ("client" or "server") names it in the reason. */
export function onlyUri(parsed: ParsedCertificate, role = "client"): LuaMultiReturn<[string | undefined, string | undefined]> {
  const count = parsed.uris.length;
  if (count === 1) return $multi(parsed.uris[0], undefined);
  if (count === 0) return $multi(undefined, role + " certificate has no URI subjectAltName");
  return $multi(undefined, `${role} certificate has ${count} URI subjectAltNames, expected exactly one`);
}
