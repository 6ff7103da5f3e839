// Pure: the one place Consul's certificate replies become the PEM files HAProxy
// loads, and what the upstream identity probe presents and trusts, so the two
// can never trust different things (a CA rotation chains leaves through a
// cross-signed intermediate: the roots' IntermediateCerts must be trusted too).
import type { CaRoots, LeafCertificate } from "./consul-replies.js";

/** Every current root and its intermediates (rotation keeps the old root for a while). */
export function rootsPem(roots: CaRoots): string {
  const pems = (roots.Roots ?? []).flatMap((root) => [root.RootCert, ...(root.IntermediateCerts ?? [])]);
  return pems.map((pem) => pem.trim() + "\n").join("");
}

/** The leaf certificate (and any intermediates Consul appends) followed by its private key, as `crt` loads it. */
export function leafPem(leaf: LeafCertificate): string {
  return leaf.CertPEM.trim() + "\n" + leaf.PrivateKeyPEM.trim() + "\n";
}
