// The two agent endpoints the authorizer calls, with typed results and
// errors as values. The token is sent in X-Consul-Token and never logged.

import type { Socket } from "./haproxy";
import { buildRequest, exchange, type HttpReply } from "./http";
import { decode, encodeString } from "./json";

const format = string.format;
const gsub = string.gsub;
const sub = string.sub;

/** Authorize replies are tiny; roots carry a few PEM certificates. */
const MAX_AUTHORIZE_REPLY = 64 * 1024;
const MAX_ROOTS_REPLY = 1024 * 1024;

export interface AgentEndpoint {
  address: string;
  port: number;
  /** host:port as written in CONSUL_HTTP_ADDR, for the Host header. */
  hostHeader: string;
  token: string | undefined;
  connectTimeoutMs: number;
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

export interface AgentClient {
  authorize(this: void, target: string, clientCertUri: string, clientCertSerial: string): LuaMultiReturn<[AuthorizeAnswer | undefined, string | undefined]>;
  /** index > 0 makes it a blocking query that waits up to waitSeconds for a change. */
  caRoots(this: void, index: number, waitSeconds: number): LuaMultiReturn<[RootsAnswer | undefined, string | undefined]>;
}

function describeFailure(reply: HttpReply): string {
  const [excerpt] = gsub(sub(reply.body, 1, 200), "[%c]", " ");
  return format("agent replied HTTP %d: %s", reply.status, excerpt);
}

export function createAgentClient(openSocket: (this: void) => Socket, now: (this: void) => number, endpoint: AgentEndpoint): AgentClient {
  const call = (method: string, path: string, body: string | undefined, readTimeoutMs: number, maxBody: number) =>
    exchange(openSocket, buildRequest(method, path, endpoint.hostHeader, endpoint.token, body), {
      address: endpoint.address,
      port: endpoint.port,
      connectTimeoutMs: endpoint.connectTimeoutMs,
      readTimeoutMs,
      maxBody,
      now,
    });

  return {
    authorize(target, clientCertUri, clientCertSerial) {
      const body = '{"Target":' + encodeString(target) + ',"ClientCertURI":' + encodeString(clientCertUri) + ',"ClientCertSerial":' + encodeString(clientCertSerial) + "}";
      const [reply, err] = call("POST", "/v1/agent/connect/authorize", body, endpoint.readTimeoutMs, MAX_AUTHORIZE_REPLY);
      if (reply === undefined) return $multi(undefined, err);
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
      let path = "/v1/agent/connect/ca/roots";
      let readTimeoutMs = endpoint.readTimeoutMs;
      if (index > 0) {
        path = format("%s?index=%d&wait=%ds", path, index, waitSeconds);
        // The agent adds up to wait/16 of jitter to a blocking query.
        readTimeoutMs = readTimeoutMs + waitSeconds * 1000 + Math.ceil(waitSeconds * 1000 / 16);
      }
      const [reply, err] = call("GET", path, undefined, readTimeoutMs, MAX_ROOTS_REPLY);
      if (reply === undefined) return $multi(undefined, err);
      if (reply.status !== 200) return $multi(undefined, describeFailure(reply));
      const [decoded, decodeError] = decode(reply.body);
      if (decoded === undefined) return $multi(undefined, "roots reply: " + (decodeError as string));
      if (type(decoded) !== "table") return $multi(undefined, "roots reply is not an object");
      const trustDomain = (decoded as LuaTable<string, unknown>).get("TrustDomain");
      if (typeof trustDomain !== "string" || trustDomain === "") return $multi(undefined, "roots reply has no TrustDomain");
      const indexHeader = reply.headers.get("x-consul-index");
      const nextIndex = indexHeader !== undefined ? tonumber(indexHeader) : undefined;
      return $multi({ trustDomain, index: nextIndex !== undefined && nextIndex >= 0 ? Math.floor(nextIndex) : 0 }, undefined);
    },
  };
}
