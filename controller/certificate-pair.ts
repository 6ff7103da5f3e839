// Checks a leaf PEM (certificate, intermediates, private key) before HAProxy
// loads it: the cheap validation for reloads that change certificates only.
import { X509Certificate, createPrivateKey } from "node:crypto";

export function certificatePairProblem(pem: string): string | undefined {
  const certificate = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(pem)?.[0];
  const key = /-----BEGIN (?:EC |RSA )?PRIVATE KEY-----[\s\S]+?-----END (?:EC |RSA )?PRIVATE KEY-----/.exec(pem)?.[0];
  if (!certificate) return "no certificate";
  if (!key) return "no private key";
  try {
    const x509 = new X509Certificate(certificate);
    if (!x509.checkPrivateKey(createPrivateKey(key))) return "the private key does not match the certificate";
    if (Date.parse(x509.validTo) <= Date.now()) return `the certificate expired at ${x509.validTo}`;
  } catch (err) {
    return `unreadable certificate or key: ${(err as Error).message}`;
  }
  return undefined;
}
