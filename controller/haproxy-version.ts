// Pure: which HAProxy runs (from `haproxy -v`) and what it can safely change at
// run time. Each capability is proved per version, on the real binary, by
// test/integration/haproxy-capabilities.test.ts; a version we have not proved
// gets the safe path (a reload).

export interface HaproxyVersion {
  major: number;
  minor: number;
  patch: number;
  /** The first line of `haproxy -v`, for the log. */
  line: string;
}

/** What the running HAProxy can safely change at run time. */
export interface RuntimeCapabilities {
  /** "2.6", "3.0": for the reasons logged with a reload. */
  label: string;
  /**
   * `set ssl cert` + `commit ssl cert` on the leaf used by the `bind … verify
   * required` listener and the upstream servers. False for 2.6: the listener
   * rebuilt by the commit stops requesting client certificates, so a renewed
   * leaf is loaded by a validated seamless reload instead. True from 3.0.
   */
  swapListenerCertificate: boolean;
  /**
   * `commit ssl ca-file` changes what the `verify required` listener trusts.
   * False for 2.6.12: the server lines follow the new CA file, the listener
   * keeps trusting the old one (a root Consul dropped would stay trusted until
   * the next reload), so new roots are loaded by a reload there. True from 3.0.
   */
  caFileReachesListener: boolean;
  /**
   * `commit ssl cert` still reaches the listener and servers after a `commit
   * ssl ca-file` in the same worker. False in every version tested (2.6.12,
   * 3.0.11): the certificate is left unlinked (`show ssl cert`: Unused), and on
   * 3.0.11 a further CA commit then crashes HAProxy (HAProxy issue #3165).
   */
  swapCertificateAfterCaCommit: boolean;
}

/** The baseline (Debian 12's 2.6.12), and what an unknown version gets: reloads for certificates. */
export const reloadForCertificates: RuntimeCapabilities = { label: "2.6", swapListenerCertificate: false, caFileReachesListener: false, swapCertificateAfterCaCommit: false };

/** Pure: `HAProxy version 3.0.11-9e587df 2025/06/02 …` (2.6 prints `HA-Proxy version …`) → its numbers; undefined when unreadable. */
export function parseHaproxyVersion(output: string): HaproxyVersion | undefined {
  const line = output.split("\n")[0]!.trim();
  const match = /^HA-?Proxy version (\d+)\.(\d+)(?:\.(\d+))?/.exec(line);
  if (!match) return undefined;
  return { major: Number(match[1]), minor: Number(match[2]), patch: Number(match[3] ?? 0), line };
}

function atLeast(version: HaproxyVersion, major: number, minor: number): boolean {
  return version.major > major || (version.major === major && version.minor >= minor);
}

/** Pure: the capabilities of `version` (proved on 2.6.12 and 3.0.11; 2.7–2.9 were not tested and get 2.6's). */
export function capabilitiesOf(version: HaproxyVersion | undefined): RuntimeCapabilities {
  if (!version) return { ...reloadForCertificates, label: "of unknown version" };
  const label = `${version.major}.${version.minor}`;
  if (!atLeast(version, 3, 0)) return { ...reloadForCertificates, label };
  return { label, swapListenerCertificate: true, caFileReachesListener: true, swapCertificateAfterCaCommit: false };
}
