// Pure: the mesh config entry's TLS.Incoming / TLS.Outgoing → HAProxy's TLS
// defaults for every bind (incoming: the public listener) and every server
// (outgoing: upstream instances). Consul hands Envoy empty TlsParameters when
// the entry says nothing (agent/xds makeTLSParametersFromProxyTLSConfig), so
// Envoy's own defaults apply: a server 1.2–1.3, a client 1.2–1.2. Our
// outgoing default keeps TLS 1.3 (docs/controller.md says why).
import type { MeshDirectionalTls, MeshEntry } from "./consul-replies.js";

export type TlsVersion = "TLSv1.2" | "TLSv1.3";

export interface TlsDirection {
  minVersion: TlsVersion;
  maxVersion: TlsVersion;
  /** OpenSSL names, TLS 1.2 and lower only; undefined = OpenSSL's defaults. */
  ciphers?: string[];
}

export interface MeshTls {
  incoming: TlsDirection;
  outgoing: TlsDirection;
  warnings: string[];
}

export const incomingDefault: TlsDirection = { minVersion: "TLSv1.2", maxVersion: "TLSv1.3" };
/**
 * Not Envoy's client default (1.2–1.2): with TLS 1.2 between two
 * connect-haproxy sidecars, a reload under traffic lost a kept-alive request
 * ("socket hang up"; test/integration/discovery-chain-traffic.test.ts, split
 * 100/0 → 0/100: in each of 2 runs), with 1.2–1.3 none. Every peer accepts 1.3: Envoy's and Consul's
 * built-in proxy's servers default to 1.2–1.3.
 */
export const outgoingDefault: TlsDirection = { minVersion: "TLSv1.2", maxVersion: "TLSv1.3" };

/** Consul's cipher suite names (types.TLSCipherSuite, the ones Envoy accepts) → OpenSSL's. */
export const opensslCipherNames: Record<string, string> = {
  TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: "ECDHE-ECDSA-AES128-GCM-SHA256",
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: "ECDHE-ECDSA-CHACHA20-POLY1305",
  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: "ECDHE-RSA-AES128-GCM-SHA256",
  TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256: "ECDHE-RSA-CHACHA20-POLY1305",
  TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA: "ECDHE-ECDSA-AES128-SHA",
  TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA: "ECDHE-RSA-AES128-SHA",
  TLS_RSA_WITH_AES_128_GCM_SHA256: "AES128-GCM-SHA256",
  TLS_RSA_WITH_AES_128_CBC_SHA: "AES128-SHA",
  TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: "ECDHE-ECDSA-AES256-GCM-SHA384",
  TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384: "ECDHE-RSA-AES256-GCM-SHA384",
  TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA: "ECDHE-ECDSA-AES256-SHA",
  TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA: "ECDHE-RSA-AES256-SHA",
  TLS_RSA_WITH_AES_256_GCM_SHA384: "AES256-GCM-SHA384",
  TLS_RSA_WITH_AES_256_CBC_SHA: "AES256-SHA",
};

const versionOrder: Record<TlsVersion, number> = { "TLSv1.2": 2, "TLSv1.3": 3 };
const knownFields = new Set(["TLSMinVersion", "TLSMaxVersion", "CipherSuites"]);

/** Consul's version name → HAProxy's; undefined = the direction's default (unset, TLS_AUTO). */
function version(value: string | undefined, field: string, where: string, warnings: string[]): TlsVersion | undefined {
  if (!value || value === "TLS_AUTO") return undefined;
  if (value === "TLSv1_2") return "TLSv1.2";
  if (value === "TLSv1_3") return "TLSv1.3";
  if (value === "TLSv1_0" || value === "TLSv1_1") {
    warnings.push(`mesh ${where}.${field} ${value}: below TLS 1.2 is not offered by connect-haproxy (OpenSSL's default security level refuses it); TLSv1_2 is used`);
    return "TLSv1.2";
  }
  warnings.push(`mesh ${where}.${field} ${JSON.stringify(value)} is not a TLS version Consul knows; the default is used`);
  return undefined;
}

/** Pure: one direction of the mesh entry over its Envoy default. */
export function tlsDirection(config: MeshDirectionalTls | null | undefined, fallback: TlsDirection, where: "TLS.Incoming" | "TLS.Outgoing", warnings: string[]): TlsDirection {
  if (!config) return fallback;
  for (const field of Object.keys(config)) if (!knownFields.has(field)) warnings.push(`mesh ${where}.${field} is not supported by connect-haproxy; ignored`);
  const min = version(config.TLSMinVersion, "TLSMinVersion", where, warnings) ?? fallback.minVersion;
  let max = version(config.TLSMaxVersion, "TLSMaxVersion", where, warnings) ?? fallback.maxVersion;
  if (versionOrder[max] < versionOrder[min]) {
    // A minimum above the default maximum raises it (a TLS 1.3-only Outgoing needs no TLSMaxVersion).
    if (config.TLSMaxVersion && config.TLSMaxVersion !== "TLS_AUTO") warnings.push(`mesh ${where}: TLSMaxVersion ${config.TLSMaxVersion} is below TLSMinVersion ${config.TLSMinVersion}; ${min} is used for both`);
    max = min;
  }
  const direction: TlsDirection = { minVersion: min, maxVersion: max };
  const suites = config.CipherSuites ?? [];
  if (suites.length > 0) {
    const ciphers: string[] = [];
    for (const suite of suites) {
      const name = opensslCipherNames[suite];
      if (name) ciphers.push(name);
      else warnings.push(`mesh ${where}.CipherSuites ${JSON.stringify(suite)} is not a cipher suite Consul configures for Envoy; left out`);
    }
    if (min === "TLSv1.3") warnings.push(`mesh ${where}.CipherSuites apply to TLS 1.2 only; with TLSMinVersion TLSv1_3 they have no effect`);
    if (ciphers.length > 0) direction.ciphers = ciphers;
    else warnings.push(`mesh ${where}.CipherSuites: none usable; OpenSSL's default suites are used`);
  }
  return direction;
}

/** Pure: the mesh entry (null or undefined: none) → both directions, with a warning per setting not honoured. */
export function planMeshTls(mesh: MeshEntry | null | undefined): MeshTls {
  const warnings: string[] = [];
  const incoming = tlsDirection(mesh?.TLS?.Incoming, incomingDefault, "TLS.Incoming", warnings);
  const outgoing = tlsDirection(mesh?.TLS?.Outgoing, outgoingDefault, "TLS.Outgoing", warnings);
  return { incoming, outgoing, warnings };
}

/**
 * Pure: the `global` lines. They are defaults for every `bind … ssl` (only the
 * public listener has one) and every `server … ssl` (only upstream instances),
 * so one place covers slots added at run time too. TLS 1.3 suites stay
 * OpenSSL's: Consul does not configure them.
 */
export function meshTlsGlobalLines(tls: MeshTls): string[] {
  const lines = (kind: "bind" | "server", direction: TlsDirection) => [
    `ssl-default-${kind}-options ssl-min-ver ${direction.minVersion} ssl-max-ver ${direction.maxVersion}`,
    ...(direction.ciphers ? [`ssl-default-${kind}-ciphers ${direction.ciphers.join(":")}`] : []),
  ];
  return [...lines("bind", tls.incoming), ...lines("server", tls.outgoing)];
}
