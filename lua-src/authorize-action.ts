// The `connect_authorize` action: identity from the client certificate, then
// a verdict, published in txn variables for haproxy.cfg to enforce:
//
//   tcp-request content reject unless { var(txn.connect_allowed) -m bool }
//   http-request deny unless { var(txn.connect_allowed) -m bool }
//
// Two paths. On a TCP stream, once per connection, the agent's authorize
// endpoint decides (through the verdict cache). On an HTTP stream (txn.http
// is set), every request is decided here, from the destination's intention
// list (intention-watch.ts) with no agent call: the first intention whose
// source matches governs; an L4 one by its action, an L7 one by its first
// matching permission, else the default policy (no fall-through to
// lower-precedence intentions). The path matched must be in normal form
// (request-path.ts): it is then the path forwarded.
//
// Fail closed (fail-closed.ts): every path, errors included, ends with
// txn.connect_allowed set to 1 or 0.
//
// Logging (one line per decision): allow at debug (info with
// CONNECT_LOG_ALLOWED=1); deny at info; a deny caused by our side (agent
// unreachable, configuration, internal error) at warning.

import type { AgentToken } from "./agent-token";
import type { HttpMessage, Txn } from "./haproxy";
import type { Authorizer } from "./authorizer";
import type { Config } from "./config";
import type { TrustDomainSource } from "./trust";
import type { ServiceIdentity } from "./spiffe";
import type { IntentionWatch } from "./intention-watch";
import type { ConnectionRegistry } from "./connection-registry";
import { passUntil, type RequestPasses } from "./request-passes";
import { decidingPermission, governingIntention, type Intention } from "./intentions";
import { pathProblem } from "./request-path";
import { TRUST_DOMAIN_PROBLEM, type CertificateReading, type PeerIdentities } from "./peer-identity";
import { quoted, sanitize } from "./sanitize";
import { INTERNAL_ORIGIN, runFailClosed, type Verdict } from "./fail-closed";
import type { DecisionCounters } from "./metrics";

const format = string.format;

export interface AuthorizeContext {
  config: Config;
  authorizer: Authorizer;
  trustDomains: TrustDomainSource;
  identities: PeerIdentities;
  intentions: IntentionWatch;
  connections: ConnectionRegistry;
  passes: RequestPasses;
  /** HAProxy's global log (core.*), for decision lines when CONNECT_DECISION_LOG=global. */
  globalLog?: (this: void, level: string, message: string) => void;
  /** Decisions by verdict and origin, for `connect metrics` (absent: not counted). */
  decisions?: DecisionCounters;
  /** The token the agent calls send, for `connect show config` (only whether one is set). */
  agentToken?: AgentToken;
}

const find = string.find;

/** Origins that mean "our side failed", logged at warning. */
const TROUBLE = new LuaTable<string, boolean>();
TROUBLE.set("agent-error", true);
TROUBLE.set("wait-timeout", true);
TROUBLE.set(INTERNAL_ORIGIN, true);
TROUBLE.set("config", true);
TROUBLE.set(TRUST_DOMAIN_PROBLEM, true);
TROUBLE.set("intentions", true);

/** The session variable naming the reading of the client's certificate (PeerIdentities.verifyRecalled). */
const READING_VARIABLE = "sess.connect_reading";

/** What the agent says about an L7 intention, which it cannot evaluate. */
const AGENT_L7_REASON = "^Matched L7 intention";

/**
 * Texts derived from a few distinct inputs (reasons), made once: these run on
 * every decision. Bounded: cleared when full.
 */
class TextMemo {
  private texts = new LuaTable<string, string>();
  private count = 0;

  get(key: string): string | undefined {
    return this.texts.get(key);
  }

  remember(key: string, text: string): string {
    if (this.count >= 256) {
      this.texts = new LuaTable();
      this.count = 0;
    }
    this.texts.set(key, text);
    this.count++;
    return text;
  }
}

const quotedReasons = new TextMemo();

/** "<intention reason>: <default reason>", kept on the intention while the default reason stays the same. */
function noPermissionReason(intention: Intention, defaultReason: string): string {
  if (intention.defaultReasonSeen !== defaultReason) {
    intention.defaultReasonSeen = defaultReason;
    intention.noPermissionReason = intention.reason + ": " + defaultReason;
  }
  return intention.noPermissionReason;
}

/**
 * The first request of an HTTP connection verified the client: later ones
 * recall the reading (sess.connect_reading), the access log and the native
 * rules read the identity (sess.connect_spiffe; sess.connect_src, the service,
 * only for the default namespace and partition, the only ones those rules know).
 */
function rememberForConnection(txn: Txn, certificate: CertificateReading): void {
  const identity = certificate.identity as ServiceIdentity;
  txn.set_var(READING_VARIABLE, certificate.id);
  txn.set_var("sess.connect_spiffe", identity.uri);
  if (identity.namespace === "default" && identity.partition === "default") txn.set_var("sess.connect_src", identity.service);
}

/**
 * The agent allowed `identity` for every request (an L4 verdict): later
 * requests on this connection pass natively while the cached verdict is fresh
 * and no flush happened (request-passes.ts).
 */
function grantPass(context: AuthorizeContext, txn: Txn, target: string, identity: ServiceIdentity, reason: string): void {
  const passes = context.passes;
  if (!passes.enabled()) return;
  const until = context.authorizer.allowFreshUntil(target, identity.uri);
  if (until === undefined) return;
  const key = target + "|" + identity.uri;
  const failure = passes.grant(key, passUntil(until));
  if (failure !== undefined) {
    txn.Warning("connect_authorize: CONNECT_PASS_MAP cannot be written (" + failure + "): every HTTP request runs the action; reference the map in haproxy.cfg (docs/standalone.md)");
    return;
  }
  txn.set_var("sess.connect_pass_key", key);
  txn.set_var("sess.connect_pass_reason", reason);
}

/**
 * Per request on an HTTP stream. The verdict comes from the agent, through the
 * cache (flushed on every intention change), as on TCP: L4 intentions and the
 * default for a source no intention matches are decided exactly as Consul does.
 * Only when the agent answers that an L7 intention governs (it cannot evaluate
 * permissions) are the permissions matched here, from the destination's list;
 * a list that disagrees with the agent (not yet updated) refuses the request.
 */
function decideRequest(context: AuthorizeContext, txn: Txn, target: string, identity: ServiceIdentity, certificate: CertificateReading): Verdict {
  const fetches = txn.f;
  const path = fetches.path();
  const problem = pathProblem(path);
  if (problem !== "") return $multi(false, problem, "path", identity);
  context.intentions.watch(target);
  const [agentAllowed, agentReason, agentOrigin] = context.authorizer.decide(target, identity.uri, certificate.serialOf);
  if (agentAllowed) grantPass(context, txn, target, identity, agentReason);
  if (agentAllowed || find(agentReason, AGENT_L7_REASON)[0] === undefined) return $multi(agentAllowed, agentReason, agentOrigin, identity);
  const [rules, loadProblem] = context.intentions.rulesFor(target);
  if (loadProblem !== "") return $multi(false, loadProblem, "intentions", identity);
  const intention = governingIntention(rules.list!, identity.service, identity.namespace, identity.partition);
  if (intention === undefined || intention.permissions === undefined) {
    return $multi(false, "intentions for " + target + " being updated: the agent matched an L7 intention the local list does not have yet", "intentions", identity);
  }
  if (intention.problem !== undefined) return $multi(false, intention.reason, "intention", identity);
  const headers = intention.usesHeaders ? (txn.http as HttpMessage).req_get_headers() : undefined;
  const permission = decidingPermission(intention, fetches.method() ?? "", path as string, headers);
  if (permission !== undefined) return $multi(permission.problem === undefined && permission.allow, permission.reason, "permission", identity);
  return $multi(rules.defaultAllow === true, noPermissionReason(intention, rules.defaultReason), "default", identity);
}

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

  // 2-5. The client's identity. Later requests of an HTTP connection recall
  // the reading the first one verified (the certificate cannot change within
  // a connection); the trust domain is checked again every time.
  const fetches = txn.f;
  const http = txn.http !== undefined;
  let certificate: CertificateReading | undefined = undefined;
  if (http) {
    const recalledId = txn.get_var(READING_VARIABLE);
    if (typeof recalledId === "number") {
      const [recalled, problem, problemKind] = context.identities.verifyRecalled(recalledId);
      if (problem !== "") return $multi(false, problem, problemKind, undefined);
      certificate = recalled;
    }
  }
  if (certificate === undefined) {
    // 2. A client certificate that HAProxy verified against the CA roots (0 is true in Lua: compare).
    if (fetches.ssl_c_used() !== 1) return $multi(false, "no client certificate", "identity", undefined);
    const verifyResult = fetches.ssl_c_verify();
    if (verifyResult !== 0) return $multi(false, format("client certificate not verified (OpenSSL error %s)", tostring(verifyResult)), "identity", undefined);

    // 3-5. Its one URI SAN, a Consul service SPIFFE ID from this cluster.
    const [read, problem, problemKind] = context.identities.verify(fetches.ssl_c_der());
    if (problem !== "") return $multi(false, problem, problemKind, undefined);
    certificate = read as CertificateReading;
    if (http) rememberForConnection(txn, certificate);
  }
  const identity = certificate.identity as ServiceIdentity;

  // 6. HTTP: every request decided here, from the intention list.
  if (http) return decideRequest(context, txn, target, identity, certificate);

  // 7. TCP: the agent, through the cache; the list is watched for `connect revoked`.
  context.intentions.watch(target);
  let [allowed, reason, origin] = context.authorizer.decide(target, identity.uri, certificate.serialOf);
  if (!allowed && find(reason, AGENT_L7_REASON)[0] !== undefined) reason = "L7 intention on a TCP service (permissions need protocol http): " + reason;
  if (allowed) context.connections.record(fetches.src() ?? "?", tostring(fetches.src_port() ?? "?"), fetches.fe_name() ?? "?", target, identity);

  // The identity is verified whatever the verdict: publish it.
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

/** Quoted reasons for log lines. */
function quoteReason(text: string): string {
  return quotedReasons.get(text) ?? quotedReasons.remember(text, quoted(text));
}

function logDecision(context: AuthorizeContext, txn: Txn, target: string, allowed: boolean, reason: string, origin: string, identity: ServiceIdentity | undefined): void {
  const http = txn.http !== undefined;
  // One line per refused request; allowed requests only when asked (the access log has them).
  if (allowed && http && !context.config.logAllowed) return;
  let request = "";
  if (http) request = " method=" + sanitize(txn.f.method() ?? "-", 32) + " path=" + quoted(txn.f.path() ?? "-", 512);
  const line =
    "connect_authorize: " + (allowed ? "allow" : "deny") +
    " target=" + target +
    " client=" + (identity !== undefined ? identity.uri : "-") +
    request +
    " reason=" + quoteReason(reason) +
    " via=" + origin;
  const level = allowed ? (context.config.logAllowed ? "info" : "debug") : TROUBLE.get(origin) === true ? "warning" : "info";
  // The frontend's log is then the access log (which carries the verdict itself): it keeps only access lines.
  if (context.config.decisionLogGlobal && context.globalLog !== undefined) context.globalLog(level, line);
  else if (level === "warning") txn.Warning(line);
  else if (level === "info") txn.Info(line);
  else txn.Debug(line);
}

/**
 * Every cached verdict and every pass dropped at once (intentions or the
 * default policy changed): the next request or connection is decided afresh.
 * Returns how many verdicts were cached.
 */
export function flushVerdicts(context: AuthorizeContext): number {
  context.passes.revokeAll();
  return context.authorizer.flush();
}

/**
 * Switches on the controller's native L7 rules, rendered from `target`'s
 * intentions at `index`, if that is exactly the list in force here and no
 * newer one is known to exist. Returns what happened, in a few words.
 */
export function switchOnNativeRules(context: AuthorizeContext, target: string, index: number): string {
  const rules = context.intentions.watch(target);
  if (rules.list === undefined || rules.index !== index || rules.requiredIndex > rules.index) {
    return format("%s stale: list at index %d, rules rendered at %d", target, rules.index, index);
  }
  if (!context.passes.enableNativeRules()) return format("%s off: CONNECT_PASS_MAP cannot be written", target);
  return format("%s enabled at index %d", target, index);
}

/** The action body. Never raises; always sets txn.connect_allowed. */
export function authorizeTransaction(context: AuthorizeContext, txn: Txn, targetArgument: string | undefined): void {
  const [allowed, reason, origin, identity] = runFailClosed(evaluate, publish, "txn.connect_allowed", context, txn, targetArgument);
  context.decisions?.record(allowed, origin);
  const target = targetArgument === undefined || targetArgument === "-" || targetArgument === "" ? context.config.defaultTarget ?? "-" : targetArgument;
  pcall(logDecision, context, txn, target, allowed, reason, origin, identity);
}
