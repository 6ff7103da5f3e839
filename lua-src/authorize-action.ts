// The `connect_authorize` action: identity from the client certificate, then
// a verdict, published in txn variables for haproxy.cfg to enforce:
//
//   tcp-request content reject unless { var(txn.connect_allowed) -m bool }
//
// Fail closed (fail-closed.ts): every path, errors included, ends with
// txn.connect_allowed set to 1 or 0.
//
// Logging (one line per decision): allow at debug (info with
// CONNECT_LOG_ALLOWED=1); deny at info; a deny caused by our side (agent
// unreachable, configuration, internal error) at warning.

import type { Txn } from "./haproxy";
import type { Authorizer } from "./authorizer";
import type { Config } from "./config";
import type { TrustDomainSource } from "./trust";
import type { ServiceIdentity } from "./spiffe";
import { TRUST_DOMAIN_PROBLEM, type CertificateReading, type PeerIdentities } from "./peer-identity";
import { quoted } from "./sanitize";
import { INTERNAL_ORIGIN, runFailClosed, type Verdict } from "./fail-closed";

const format = string.format;

export interface AuthorizeContext {
  config: Config;
  authorizer: Authorizer;
  trustDomains: TrustDomainSource;
  identities: PeerIdentities;
}

/** Origins that mean "our side failed", logged at warning. */
const TROUBLE = new LuaTable<string, boolean>();
TROUBLE.set("agent-error", true);
TROUBLE.set("wait-timeout", true);
TROUBLE.set(INTERNAL_ORIGIN, true);
TROUBLE.set("config", true);
TROUBLE.set(TRUST_DOMAIN_PROBLEM, true);

/**
 * Steps 1-7 of a decision. Returns allowed, reason, origin and the verified
 * identity (nil until the certificate, SPIFFE ID and trust domain checked out).
 */
function evaluate(context: AuthorizeContext, txn: Txn, targetArgument: string | undefined): Verdict {
  const config = context.config;

  // 1. Which service is being protected.
  let target = targetArgument;
  if (target === undefined || target === "-" || target === "") target = config.defaultTarget;
  if (target === undefined) return $multi(false, "no target service: pass one to connect_authorize or set CONNECT_DEFAULT_TARGET", "config", undefined);
  if (config.agentAddressError !== undefined) return $multi(false, "configuration error: " + config.agentAddressError, "config", undefined);

  // 2. A client certificate that HAProxy verified against the CA roots (0 is true in Lua: compare).
  const fetches = txn.f;
  if (fetches.ssl_c_used() !== 1) return $multi(false, "no client certificate", "identity", undefined);
  const verifyResult = fetches.ssl_c_verify();
  if (verifyResult !== 0) return $multi(false, format("client certificate not verified (OpenSSL error %s)", tostring(verifyResult)), "identity", undefined);

  // 3-5. Its one URI SAN, a Consul service SPIFFE ID from this cluster.
  const [read, problem, problemKind] = context.identities.verify(fetches.ssl_c_der());
  if (problem !== "") return $multi(false, problem, problemKind, undefined);
  const certificate = read as CertificateReading;
  const identity = certificate.identity as ServiceIdentity;

  // 6. Intentions, through the cache.
  const [allowed, reason, origin] = context.authorizer.decide(target, identity.uri, certificate.serialOf);

  // 7. The identity is verified whatever the verdict: publish it.
  return $multi(allowed, reason, origin, identity);
}

function publish(txn: Txn, allowed: boolean, reason: string, identity: ServiceIdentity | undefined): void {
  txn.set_var("txn.connect_reason", reason);
  if (identity !== undefined) {
    txn.set_var("txn.connect_source", identity.service);
    txn.set_var("txn.connect_spiffe", identity.uri);
  }
  // Last, so that a failure above leaves it unset, which the rule treats as deny.
  txn.set_var("txn.connect_allowed", allowed ? 1 : 0);
}

/** Quoted reasons, memoized: there are few distinct ones and this runs on every decision. */
let quotedReasons = new LuaTable<string, string>();
let quotedCount = 0;

function quoteReason(text: string): string {
  const known = quotedReasons.get(text);
  if (known !== undefined) return known;
  const quotedText = quoted(text);
  if (quotedCount >= 256) {
    quotedReasons = new LuaTable();
    quotedCount = 0;
  }
  quotedReasons.set(text, quotedText);
  quotedCount++;
  return quotedText;
}

function logDecision(context: AuthorizeContext, txn: Txn, target: string, allowed: boolean, reason: string, origin: string, identity: ServiceIdentity | undefined): void {
  const line =
    "connect_authorize: " + (allowed ? "allow" : "deny") +
    " target=" + target +
    " client=" + (identity !== undefined ? identity.uri : "-") +
    " reason=" + quoteReason(reason) +
    " via=" + origin;
  if (allowed) {
    if (context.config.logAllowed) txn.Info(line);
    else txn.Debug(line);
  } else if (TROUBLE.get(origin) === true) txn.Warning(line);
  else txn.Info(line);
}

/** The action body. Never raises; always sets txn.connect_allowed. */
export function authorizeTransaction(context: AuthorizeContext, txn: Txn, targetArgument: string | undefined): void {
  const [allowed, reason, origin, identity] = runFailClosed(evaluate, publish, "txn.connect_allowed", context, txn, targetArgument);
  const target = targetArgument === undefined || targetArgument === "-" || targetArgument === "" ? context.config.defaultTarget ?? "-" : targetArgument;
  pcall(logDecision, context, txn, target, allowed, reason, origin, identity);
}
