// Checks each Consul reply before it enters the snapshot: a reply that is JSON
// but not the shape we read (a proxy's error object, a truncated list), roots
// that do not parse, or a leaf whose key is not its certificate's is refused
// at the watch, like a non-JSON reply, so the last good value stays in the
// snapshot and HAProxy keeps its configuration (test/integration/consul-faults.test.ts).
import { X509Certificate } from "node:crypto";
import { certificatePairProblem } from "./certificate-pair.js";
import type { WatchId } from "./consul-watches.js";
import { leafPem } from "./consul-pem.js";

type Json = Record<string, unknown>;

const isObject = (value: unknown): value is Json => value !== null && typeof value === "object" && !Array.isArray(value);
const shown = (value: unknown) => (value === undefined ? "missing" : JSON.stringify(value)?.slice(0, 40));

function unparsableCertificate(pem: unknown): string | undefined {
  if (typeof pem !== "string") return `is ${shown(pem)}, not a PEM string`;
  try {
    new X509Certificate(pem);
    return undefined;
  } catch (err) {
    return `does not parse as a certificate (${(err as Error).message})`;
  }
}

function rootsProblem(roots: unknown): string | undefined {
  if (!isObject(roots)) return `not an object: ${shown(roots)}`;
  if (typeof roots.TrustDomain !== "string" || roots.TrustDomain === "") return `TrustDomain is ${shown(roots.TrustDomain)}`;
  if (!Array.isArray(roots.Roots) || roots.Roots.length === 0) return `Roots is ${shown(roots.Roots)}, not a list of roots`;
  for (const [i, root] of roots.Roots.entries()) {
    if (!isObject(root)) return `root ${i + 1} is not an object`;
    const name = typeof root.ID === "string" ? root.ID : `${i + 1}`;
    const rootProblem = unparsableCertificate(root.RootCert);
    if (rootProblem) return `root ${name}: RootCert ${rootProblem}`;
    if (root.IntermediateCerts !== undefined && root.IntermediateCerts !== null && !Array.isArray(root.IntermediateCerts)) return `root ${name}: IntermediateCerts is not a list`;
    for (const intermediate of (root.IntermediateCerts as unknown[] | null | undefined) ?? []) {
      const problem = unparsableCertificate(intermediate);
      if (problem) return `root ${name}: an intermediate ${problem}`;
    }
  }
  return undefined;
}

function leafProblem(leaf: unknown): string | undefined {
  if (!isObject(leaf)) return `not an object: ${shown(leaf)}`;
  for (const field of ["SerialNumber", "CertPEM", "PrivateKeyPEM"]) {
    if (typeof leaf[field] !== "string" || leaf[field] === "") return `${field} is ${field === "PrivateKeyPEM" ? "not a string" : shown(leaf[field])}`;
  }
  const problem = certificatePairProblem(leafPem(leaf as { CertPEM: string; PrivateKeyPEM: string } as never));
  return problem ? `leaf ${leaf.SerialNumber}: ${problem}` : undefined;
}

function instancesProblem(entries: unknown): string | undefined {
  if (!Array.isArray(entries)) return `not a list of instances: ${shown(entries)}`;
  for (const [i, entry] of entries.entries()) {
    if (!isObject(entry) || !isObject(entry.Service) || !isObject(entry.Node)) return `instance ${i + 1} has no Service or Node object`;
    if (typeof entry.Service.Port !== "number") return `instance ${i + 1} has Service.Port ${shown(entry.Service.Port)}`;
    if (entry.Checks !== undefined && entry.Checks !== null && !Array.isArray(entry.Checks)) return `instance ${i + 1} has Checks that are not a list`;
  }
  return undefined;
}

function intentionsProblem(byDestination: unknown, destination: string | undefined): string | undefined {
  if (!isObject(byDestination)) return `not an object of intention lists: ${shown(byDestination)}`;
  // Consul names every destination asked about (null or [] when none match).
  if (destination !== undefined && !(destination in byDestination)) return `no list for ${destination}`;
  for (const [destination, list] of Object.entries(byDestination)) {
    if (list === null) continue;
    if (!Array.isArray(list)) return `the intentions of ${destination} are not a list`;
    if (list.some((intention) => !isObject(intention) || typeof intention.SourceName !== "string")) return `an intention of ${destination} has no SourceName`;
  }
  return undefined;
}

function chainProblem(chain: unknown): string | undefined {
  if (!isObject(chain)) return `no Chain object: ${shown(chain)}`;
  if (typeof chain.Protocol !== "string") return `Chain.Protocol is ${shown(chain.Protocol)}`;
  if (!isObject(chain.Nodes) || !isObject(chain.Targets)) return "Chain has no Nodes or Targets object";
  if (typeof chain.StartNode !== "string" || !isObject(chain.Nodes[chain.StartNode])) return `Chain.StartNode ${shown(chain.StartNode)} is not one of its nodes`;
  return undefined;
}

function registrationProblem(registration: unknown): string | undefined {
  if (!isObject(registration)) return `not an object: ${shown(registration)}`;
  if (typeof registration.ID !== "string" || typeof registration.Service !== "string") return "no ID or Service";
  if (registration.Proxy !== undefined && !isObject(registration.Proxy)) return `Proxy is ${shown(registration.Proxy)}`;
  return undefined;
}

/** The replies checked: one per kind of watch, and a prepared query's (the other "upstream"). */
export type CheckedReply = WatchId["kind"] | "prepared-query";

/** Pure: what makes a reply unusable, or undefined when the controller can read it. */
export function replyProblem(kind: CheckedReply, reply: unknown, destination?: string): string | undefined {
  switch (kind) {
    case "registration":
      return registrationProblem(reply);
    case "roots":
      return rootsProblem(reply);
    case "leaf":
      return leafProblem(reply);
    case "intentions":
      return intentionsProblem(reply, destination);
    case "upstream":
    case "target":
      // No instance at all comes as null.
      return reply === null ? undefined : instancesProblem(reply);
    case "prepared-query":
      if (!isObject(reply) || typeof reply.Service !== "string") return `no Service in ${shown(reply)}`;
      return reply.Nodes === null ? undefined : instancesProblem(reply.Nodes);
    case "chain":
      return isObject(reply) ? chainProblem(reply.Chain) : `not an object: ${shown(reply)}`;
    case "proxy-defaults":
    case "mesh":
      // A config entry, or none (null).
      return reply === null || isObject(reply) ? undefined : `not a config entry: ${shown(reply)}`;
  }
}
