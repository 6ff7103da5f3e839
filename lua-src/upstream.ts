// The `connect_verify_upstream <service>` action: on the response side of an
// upstream backend, the certificate of the server this connection reached
// must name <service> in our trust domain. Published for haproxy.cfg:
//
//   tcp-response content reject unless { var(txn.connect_upstream_ok) -m bool }
//   http-response deny unless { var(txn.connect_upstream_ok) -m bool }
//
// Why: `verify required` on the server line checks only the chain, and
// HAProxy 2.6 cannot match a URI SAN. The controller checks each instance once
// before it gets a slot (controller/upstream-identity.ts); this catches
// whatever answers on that address later with another service's valid leaf.
// Response rules run before any response byte is forwarded to the client,
// but after the client's first bytes went to the server.
//
// Fail closed like connect_authorize: everything runs under pcall and every
// path ends with txn.connect_upstream_ok set to 1 or 0.

import type { Txn } from "./haproxy";
import type { TrustDomainSource } from "./trust";
import { onlyUri, parseCertificate } from "./der";
import { BoundedLru } from "./lru";
import { parseServiceIdentity, type ServiceIdentity } from "./spiffe";
import { quoted } from "./sanitize";

const format = string.format;

export interface UpstreamContext {
  trustDomains: TrustDomainSource;
  identities: ServerIdentityCache;
}

/** What a server certificate says, or why it is unusable; cached by its DER bytes. */
interface ServerIdentity {
  identity: ServiceIdentity | undefined;
  problem: string;
}

export type ServerIdentityCache = BoundedLru<ServerIdentity>;

/** Upstream certificates are one per instance (two during a rotation): few. */
export const SERVER_IDENTITY_CACHE_SIZE = 256;

export function newServerIdentityCache(capacity: number = SERVER_IDENTITY_CACHE_SIZE): ServerIdentityCache {
  return new BoundedLru<ServerIdentity>(capacity);
}

function readServerIdentity(der: string): ServerIdentity {
  const [certificate, certificateError] = parseCertificate(der);
  if (certificate === undefined) return { identity: undefined, problem: "unusable server certificate: " + (certificateError as string) };
  const [uri, uriError] = onlyUri(certificate, "server");
  if (uri === undefined) return { identity: undefined, problem: uriError as string };
  const [identity, identityError] = parseServiceIdentity(uri);
  if (identity === undefined) return { identity: undefined, problem: "server " + (identityError as string) };
  return { identity, problem: "" };
}

/** Steps of one check. Returns ok, reason and the server's identity once its certificate parsed. */
function evaluate(context: UpstreamContext, txn: Txn, expected: string | undefined): LuaMultiReturn<[boolean, string, ServiceIdentity | undefined]> {
  // 1. The service this backend is meant to reach.
  if (expected === undefined || expected === "") return $multi(false, "no expected service: pass one to connect_verify_upstream", undefined);

  // 2. The certificate of the server this connection reached (chain verified by `verify required`).
  const der = txn.f.ssl_s_der();
  if (typeof der !== "string" || der === "") return $multi(false, "no server certificate (not a TLS server connection?)", undefined);

  // 3. Its one URI SAN, a Consul service SPIFFE ID.
  let read = context.identities.get(der);
  if (read === undefined) {
    read = readServerIdentity(der);
    context.identities.set(der, read);
  }
  const identity = read.identity;
  if (identity === undefined) return $multi(false, read.problem, undefined);

  // 4. From this cluster.
  const [trustDomain, trustError] = context.trustDomains.ensure();
  if (trustDomain === undefined) return $multi(false, trustError as string, identity);
  if (identity.trustDomain !== trustDomain) {
    return $multi(false, format("server trust domain %s is not this cluster's (%s)", identity.trustDomain, trustDomain), identity);
  }

  // 5. The service we mean to reach.
  if (identity.service !== expected) return $multi(false, format("server is service %s, not %s", identity.service, expected), identity);
  return $multi(true, "server is " + identity.uri, identity);
}

function publish(txn: Txn, ok: boolean, reason: string, identity: ServiceIdentity | undefined): void {
  txn.set_var("txn.connect_upstream_reason", reason);
  if (identity !== undefined) txn.set_var("txn.connect_upstream_spiffe", identity.uri);
  // Last, so that a failure above leaves it unset, which the rule treats as a refusal.
  txn.set_var("txn.connect_upstream_ok", ok ? 1 : 0);
}

function logRefusal(txn: Txn, expected: string | undefined, reason: string, identity: ServiceIdentity | undefined): void {
  txn.Warning(
    "connect_verify_upstream: refuse expected=" + (expected ?? "-") +
      " server=" + (identity !== undefined ? identity.uri : "-") +
      " reason=" + quoted(reason),
  );
}

/** The action body. Never raises; always sets txn.connect_upstream_ok. */
export function verifyUpstreamTransaction(context: UpstreamContext, txn: Txn, expected: string | undefined): void {
  const [ran, first, second, third] = protect(evaluate, context, txn, expected);
  let ok = false;
  let reason: string;
  let identity: ServiceIdentity | undefined = undefined;
  if (ran) {
    // Only a real `true` passes, whatever evaluate hands back.
    ok = first === true;
    reason = typeof second === "string" ? second : "no reason given";
    identity = third as ServiceIdentity | undefined;
  } else {
    reason = "internal error: " + tostring(first);
  }
  const [published, publishError] = pcall(publish, txn, ok, reason, identity);
  if (!published) {
    pcall(() => txn.set_var("txn.connect_upstream_ok", 0));
    ok = false;
    reason = "internal error while setting variables: " + tostring(publishError);
  }
  // A pass is the normal case and is not logged (one line per connection would be noise).
  if (!ok) pcall(logRefusal, txn, expected, reason, identity);
}
