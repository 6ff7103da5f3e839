// The two agent endpoints the authorizer calls, with typed results and
// errors as values. The token is sent in X-Consul-Token and never logged.

import type { AgentToken } from "./agent-token";
import type { Socket } from "./haproxy";
import { buildRequest, exchange, type HttpReply } from "./http";
import { decode, encodeString } from "./json";

const format = string.format;
const gsub = string.gsub;
const sub = string.sub;
const find = string.find;

/** Authorize replies are tiny; roots carry a few PEM certificates. */
const MAX_AUTHORIZE_REPLY = 64 * 1024;
const MAX_ROOTS_REPLY = 1024 * 1024;
/** A destination's intentions with their permissions; generous, still bounded. */
const MAX_INTENTIONS_REPLY = 4 * 1024 * 1024;
/** /v1/agent/self carries the whole runtime configuration. */
const MAX_SELF_REPLY = 2 * 1024 * 1024;

export interface AgentEndpoint {
  address: string;
  port: number;
  /** host:port as written in CONSUL_HTTP_ADDR, for the Host header. */
  hostHeader: string;
  /** Read at each call: a rotated token is used from the next call on. */
  token: AgentToken;
  connectTimeoutMs: number;
  /** HAProxy's attempts per connect() (http.socketConnectAttempts); the timeout bounds them all. */
  connectAttempts: number;
  readTimeoutMs: number;
}

export interface AuthorizeAnswer {
  authorized: boolean;
  reason: string;
}

export interface RootsAnswer {
  trustDomain: string;
  /** X-Consul-Index, for the next blocking query (0 if absent). */
  index: number;
}

export interface IntentionsAnswer {
  /** The decoded reply: an object whose member <destination> is the list, highest precedence first. */
  decoded: unknown;
  /** The reply as sent: the same text is the same list (Consul's index also moves for writes that change nothing here). */
  body: string;
  /** X-Consul-Index (0 if absent). */
  index: number;
}

/** What happens to a request no intention matches, as the agent's configuration says. */
export interface DefaultPolicyAnswer {
  allow: boolean;
  /** Where it came from, in Consul's words. */
  reason: string;
}

/** The agent refused a request for lack of permission (HTTP 403). */
export const PERMISSION_DENIED = "permission denied";
/** The agent does not know the token at all (HTTP 403 "ACL not found"): deleted, expired or never created. */
export const TOKEN_REJECTED = "ACL token rejected by the agent (403 ACL not found)";

/** Pure: Consul's 403 body for a token it does not know, not one that lacks a permission. */
export function isTokenNotFound(body: string): boolean {
  return find(body, "ACL not found", 1, true)[0] !== undefined;
}

export interface AgentClient {
  authorize(this: void, target: string, clientCertUri: string, clientCertSerial: string): LuaMultiReturn<[AuthorizeAnswer | undefined, string | undefined]>;
  /** index > 0 makes it a blocking query that waits up to waitSeconds for a change. */
  caRoots(this: void, index: number, waitSeconds: number): LuaMultiReturn<[RootsAnswer | undefined, string | undefined]>;
  /** GET /v1/connect/intentions/match?by=destination&name=<destination>; blocking when index > 0. */
  intentionsFor(this: void, destination: string, index: number, waitSeconds: number): LuaMultiReturn<[IntentionsAnswer | undefined, string | undefined]>;
  /**
   * The default policy from GET /v1/agent/self (needs agent:read): the
   * agent's default_intention_policy when set, else the ACL default policy
   * (allow with ACLs off). Fails with PERMISSION_DENIED on a 403.
   */
  defaultPolicy(this: void): LuaMultiReturn<[DefaultPolicyAnswer | undefined, string | undefined]>;
}

/** A query parameter value, percent-encoded. */
function encodeQueryValue(value: string): string {
  const [encoded] = gsub(value, "[^%w%-%._~]", (c: string) => format("%%%02X", string.byte(c)));
  return encoded;
}

function indexOf(reply: HttpReply): number {
  const header = reply.headers.get("x-consul-index");
  const index = header !== undefined ? tonumber(header) : undefined;
  return index !== undefined && index >= 0 ? Math.floor(index) : 0;
}

function describeFailure(reply: HttpReply): string {
  const [excerpt] = gsub(sub(reply.body, 1, 200), "[%c]", " ");
  return format("agent replied HTTP %d: %s", reply.status, excerpt);
}

export function createAgentClient(openSocket: (this: void) => Socket, now: (this: void) => number, endpoint: AgentEndpoint): AgentClient {
  const send = (method: string, path: string, token: string | undefined, body: string | undefined, readTimeoutMs: number, maxBody: number) =>
    exchange(openSocket, buildRequest(method, path, endpoint.hostHeader, token, body), {
      address: endpoint.address,
      port: endpoint.port,
      connectTimeoutMs: endpoint.connectTimeoutMs,
      connectAttempts: endpoint.connectAttempts,
      readTimeoutMs,
      maxBody,
      now,
    });

  /** One call; a 403 "ACL not found" re-reads the token and, when that gave another one, tries once more. */
  const call = (method: string, path: string, body: string | undefined, readTimeoutMs: number, maxBody: number): LuaMultiReturn<[HttpReply | undefined, string | undefined]> => {
    const token = endpoint.token;
    let sent = token.current();
    let [reply, err] = send(method, path, sent, body, readTimeoutMs, maxBody);
    if (reply !== undefined && reply.status === 403 && isTokenNotFound(reply.body) && token.notFound(sent)) {
      sent = token.current();
      [reply, err] = send(method, path, sent, body, readTimeoutMs, maxBody);
      if (reply !== undefined && reply.status === 403 && isTokenNotFound(reply.body)) token.notFound(sent);
    }
    if (reply !== undefined && reply.status !== 403) token.accepted(sent);
    return $multi(reply, err);
  };

  /** A GET that blocks up to waitSeconds for a change past `index` (a plain GET when index is 0). */
  const blockingGet = (path: string, index: number, waitSeconds: number, maxBody: number) => {
    let readTimeoutMs = endpoint.readTimeoutMs;
    if (index > 0) {
      path = format("%s%sindex=%d&wait=%ds", path, find(path, "?", 1, true)[0] !== undefined ? "&" : "?", index, waitSeconds);
      // The agent adds up to wait/16 of jitter to a blocking query.
      readTimeoutMs = readTimeoutMs + waitSeconds * 1000 + Math.ceil(waitSeconds * 1000 / 16);
    }
    return call("GET", path, undefined, readTimeoutMs, maxBody);
  };

  return {
    authorize(target, clientCertUri, clientCertSerial) {
      const body = '{"Target":' + encodeString(target) + ',"ClientCertURI":' + encodeString(clientCertUri) + ',"ClientCertSerial":' + encodeString(clientCertSerial) + "}";
      const [reply, err] = call("POST", "/v1/agent/connect/authorize", body, endpoint.readTimeoutMs, MAX_AUTHORIZE_REPLY);
      if (reply === undefined) return $multi(undefined, err);
      if (reply.status === 403 && isTokenNotFound(reply.body)) return $multi(undefined, TOKEN_REJECTED);
      if (reply.status !== 200) return $multi(undefined, describeFailure(reply));
      const [decoded, decodeError] = decode(reply.body);
      if (decoded === undefined) return $multi(undefined, "authorize reply: " + (decodeError as string));
      if (type(decoded) !== "table") return $multi(undefined, "authorize reply is not an object");
      const object = decoded as LuaTable<string, unknown>;
      const authorized = object.get("Authorized");
      const reason = object.get("Reason");
      if (typeof authorized !== "boolean") return $multi(undefined, "authorize reply has no boolean Authorized");
      return $multi({ authorized, reason: typeof reason === "string" ? reason : "" }, undefined);
    },

    caRoots(index, waitSeconds) {
      const [reply, err] = blockingGet("/v1/agent/connect/ca/roots", index, waitSeconds, MAX_ROOTS_REPLY);
      if (reply === undefined) return $multi(undefined, err);
      if (reply.status !== 200) return $multi(undefined, describeFailure(reply));
      const [decoded, decodeError] = decode(reply.body);
      if (decoded === undefined) return $multi(undefined, "roots reply: " + (decodeError as string));
      if (type(decoded) !== "table") return $multi(undefined, "roots reply is not an object");
      const trustDomain = (decoded as LuaTable<string, unknown>).get("TrustDomain");
      if (typeof trustDomain !== "string" || trustDomain === "") return $multi(undefined, "roots reply has no TrustDomain");
      return $multi({ trustDomain, index: indexOf(reply) }, undefined);
    },

    intentionsFor(destination, index, waitSeconds) {
      const [reply, err] = blockingGet("/v1/connect/intentions/match?by=destination&name=" + encodeQueryValue(destination), index, waitSeconds, MAX_INTENTIONS_REPLY);
      if (reply === undefined) return $multi(undefined, err);
      if (reply.status === 403 && isTokenNotFound(reply.body)) return $multi(undefined, TOKEN_REJECTED);
      if (reply.status === 403) return $multi(undefined, PERMISSION_DENIED + " (" + describeFailure(reply) + ")");
      if (reply.status !== 200) return $multi(undefined, describeFailure(reply));
      const [decoded, decodeError] = decode(reply.body);
      if (decoded === undefined) return $multi(undefined, "intention match reply: " + (decodeError as string));
      return $multi({ decoded, body: reply.body, index: indexOf(reply) }, undefined);
    },

    defaultPolicy() {
      const [reply, err] = call("GET", "/v1/agent/self", undefined, endpoint.readTimeoutMs, MAX_SELF_REPLY);
      if (reply === undefined) return $multi(undefined, err);
      if (reply.status === 403) return $multi(undefined, PERMISSION_DENIED);
      if (reply.status !== 200) return $multi(undefined, describeFailure(reply));
      const [decoded, decodeError] = decode(reply.body);
      if (decoded === undefined) return $multi(undefined, "agent self reply: " + (decodeError as string));
      const debugConfig = type(decoded) === "table" ? (decoded as LuaTable<string, unknown>).get("DebugConfig") : undefined;
      if (type(debugConfig) !== "table") return $multi(undefined, "agent self reply has no DebugConfig");
      const runtime = debugConfig as LuaTable<string, unknown>;
      const intentionPolicy = runtime.get("DefaultIntentionPolicy");
      if (intentionPolicy === "allow" || intentionPolicy === "deny") {
        return $multi({ allow: intentionPolicy === "allow", reason: "Default intention policy" }, undefined);
      }
      if (intentionPolicy !== undefined && intentionPolicy !== "") return $multi(undefined, format("unknown DefaultIntentionPolicy %q", tostring(intentionPolicy)));
      const resolver = runtime.get("ACLResolverSettings");
      if (type(resolver) !== "table") return $multi(undefined, "agent self reply has no ACLResolverSettings");
      const settings = resolver as LuaTable<string, unknown>;
      if (settings.get("ACLsEnabled") !== true) return $multi({ allow: true, reason: "Default behavior configured by ACLs" }, undefined);
      const aclPolicy = settings.get("ACLDefaultPolicy");
      if (aclPolicy !== "allow" && aclPolicy !== "deny") return $multi(undefined, format("unknown ACLDefaultPolicy %q", tostring(aclPolicy)));
      return $multi({ allow: aclPolicy === "allow", reason: "Default behavior configured by ACLs" }, undefined);
    },
  };
}
