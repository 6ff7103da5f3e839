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
// Fail closed (fail-closed.ts): every path, errors included, ends with
// txn.connect_upstream_ok set to 1 or 0.

import type { Txn } from "./haproxy";
import type { ServiceIdentity } from "./spiffe";
import type { CertificateReading, PeerIdentities } from "./peer-identity";
import { quoted } from "./sanitize";
import { runFailClosed, type Verdict } from "./fail-closed";
import type { RequestPasses } from "./request-passes";

const format = string.format;

export interface VerifyUpstreamContext {
  identities: PeerIdentities;
  /** Server certificates already verified, checked natively on HTTP responses (request-passes.ts). */
  passes: RequestPasses;
}

const byte = string.byte;
const gsub = string.gsub;

/** Upper-case hex, as HAProxy's `hex` converter writes it. */
function hex(binary: string): string {
  const [text] = gsub(binary, ".", (character: string) => format("%02X", byte(character)));
  return text;
}

/**
 * The server's certificate checked out for `service` on an HTTP response:
 * later responses over any connection presenting it pass by its fingerprint.
 */
function grantServerPass(context: VerifyUpstreamContext, txn: Txn, service: string): void {
  const passes = context.passes;
  if (txn.http === undefined || !passes.enabled()) return;
  const fingerprint = txn.f.ssl_s_sha1();
  if (typeof fingerprint !== "string" || fingerprint.length !== 20) return;
  const failure = passes.grant(hex(fingerprint), service);
  if (failure !== undefined) {
    txn.Warning("connect_verify_upstream: CONNECT_SERVER_PASS_MAP cannot be written (" + failure + "): every HTTP response runs the action; reference the map in haproxy.cfg (docs/standalone.md)");
  }
}

/**
 * Steps of one check. Returns ok, reason, origin ("config", "identity" or
 * "trust-domain"; not logged) and the server's identity once its certificate parsed.
 */
function evaluate(context: VerifyUpstreamContext, txn: Txn, expected: string | undefined): Verdict {
  // 1. The service this backend is meant to reach.
  if (expected === undefined || expected === "") return $multi(false, "no expected service: pass one to connect_verify_upstream", "config", undefined);

  // 2-4. The certificate of the server this connection reached (chain verified by
  // `verify required`): its one URI SAN, a Consul service SPIFFE ID from this cluster.
  const [read, problem, problemKind] = context.identities.verify(txn.f.ssl_s_der());
  if (problem !== "") return $multi(false, problem, problemKind, read?.identity);
  const identity = (read as CertificateReading).identity as ServiceIdentity;

  // 5. The service we mean to reach.
  if (identity.service !== expected) return $multi(false, format("server is service %s, not %s", identity.service, expected), "identity", identity);
  return $multi(true, "server is " + identity.uri, "identity", identity);
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
export function verifyUpstreamTransaction(context: VerifyUpstreamContext, txn: Txn, expected: string | undefined): void {
  const [ok, reason, , identity] = runFailClosed(evaluate, publish, "txn.connect_upstream_ok", context, txn, expected);
  // A pass is the normal case and is not logged (one line per connection would be noise).
  if (!ok) pcall(logRefusal, txn, expected, reason, identity);
  else pcall(grantServerPass, context, txn, expected as string);
}
