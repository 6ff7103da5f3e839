// Everything the controller asks Consul goes through this module: a small
// typed client over node:http(s), cancellable with an AbortSignal. Errors are
// classified here (classifyStatus), nowhere else. Why not the `consul` npm
// package: it covers one of the eight endpoints we call (none of the Connect
// ones), and reaching its transport meant casting into papi's private members;
// see docs/controller.md.
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { readFileSync } from "node:fs";
import { fixedToken, type TokenSource } from "./consul-token.js";
import type { AgentServiceRegistration, BlockingCursor, CaRoots, ConsulPage, MeshEntry, ProxyDefaultsEntry, DiscoveryChainOverrides, DiscoveryChainReply, Intention, LeafCertificate, PreparedQueryResult, ServiceInstanceEntry } from "./consul-replies.js";

// ---- Errors ----

export type ConsulErrorKind = "forbidden" | "not-found" | "unreachable" | "status" | "bad-reply" | "aborted";

export class ConsulError extends Error {
  constructor(
    readonly kind: ConsulErrorKind,
    readonly endpoint: string,
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = "ConsulError";
  }
}

/** The ACL permission each endpoint needs, for a 403 message that tells what to grant. */
export function permissionNeededFor(endpoint: string): string {
  if (endpoint.startsWith("/v1/agent/connect/ca/leaf/")) return `service:write on "${endpoint.split("/").pop()}"`;
  if (endpoint.startsWith("/v1/agent/service/") || endpoint === "/v1/agent/services") return "service:read on the sidecar service";
  if (endpoint.startsWith("/v1/health/connect/")) return `service:read on "${endpoint.split("/").pop()}" and node:read`;
  if (endpoint.startsWith("/v1/query/")) return "query:read on the prepared query";
  if (endpoint.startsWith("/v1/discovery-chain/")) return `service:read on "${endpoint.split("/").pop()}" and on every service its chain reaches`;
  if (endpoint.startsWith("/v1/connect/intentions")) {
    const name = /[?&]name=([^&]+)/.exec(endpoint)?.[1];
    return `intention:read on ${name ? `"${decodeURIComponent(name)}"` : "the destination service"} (service "…" { intentions = "read" })`;
  }
  return "a token with read access";
}

/** Pure: turns an HTTP status and body into a ConsulError (the one place error text is read). */
export function classifyStatus(endpoint: string, status: number, body: string): ConsulError {
  const detail = body.trim().split("\n")[0]?.slice(0, 200) ?? "";
  if (status === 403 && isTokenNotFound(detail)) {
    return new ConsulError(
      "forbidden",
      endpoint,
      `ACL token rejected by Consul (403 ${detail}) for ${endpoint}: the token was deleted or has expired; give a valid one (a --token-file is re-read when it changes)`,
      status,
    );
  }
  if (status === 403) {
    return new ConsulError("forbidden", endpoint, `Consul refused ${endpoint} (403 ${detail || "Permission denied"}): the token needs ${permissionNeededFor(endpoint)}`, status);
  }
  if (status === 404) return new ConsulError("not-found", endpoint, `Consul has no ${endpoint} (404 ${detail})`, status);
  return new ConsulError("status", endpoint, `Consul answered ${status} to ${endpoint}: ${detail}`, status);
}

/** Pure: Consul's 403 body for a token it does not know (deleted, expired, never created), not one that lacks a permission. */
export function isTokenNotFound(body: string): boolean {
  return body.includes("ACL not found");
}

// ---- Client ----

export interface ConsulClientOptions {
  /** `host:port`, `http://host:port` or `https://host:port`, as CONSUL_HTTP_ADDR. */
  httpAddr: string;
  token?: string;
  /** Where the token comes from when it can change (--token-file); wins over `token`. */
  tokens?: TokenSource;
  /** PEM file to trust for https (CONSUL_CACERT). */
  caCertFile?: string;
}

export function parseHttpAddr(httpAddr: string): URL {
  const withScheme = /^[a-z]+:\/\//i.test(httpAddr) ? httpAddr : `http://${httpAddr}`;
  const url = new URL(withScheme);
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error(`unsupported scheme in Consul address ${httpAddr}`);
  return url;
}

/** A reply larger than this is refused (no Consul endpoint we call comes near it). */
export const maxReplyBytes = 16 * 1024 * 1024;

export class ConsulClient {
  private readonly base: URL;
  private readonly agent: HttpAgent;
  private readonly tokens: TokenSource;

  constructor(options: ConsulClientOptions) {
    this.base = parseHttpAddr(options.httpAddr);
    this.agent =
      this.base.protocol === "https:"
        ? new HttpsAgent({ keepAlive: true, ca: options.caCertFile ? readFileSync(options.caCertFile) : undefined })
        : new HttpAgent({ keepAlive: true });
    this.tokens = options.tokens ?? fixedToken(options.token);
  }

  close(): void {
    this.agent.destroy();
  }

  /** Every service registered on the local agent, by ID. */
  async listAgentServices(signal?: AbortSignal): Promise<Record<string, AgentServiceRegistration>> {
    return (await this.get<Record<string, AgentServiceRegistration>>("/v1/agent/services", {}, signal)).value;
  }

  agentService(serviceId: string, cursor: BlockingCursor, signal?: AbortSignal) {
    return this.get<AgentServiceRegistration>(`/v1/agent/service/${encodeURIComponent(serviceId)}`, blockingQuery(cursor), signal);
  }

  caRoots(cursor: BlockingCursor, signal?: AbortSignal) {
    return this.get<CaRoots>("/v1/agent/connect/ca/roots", blockingQuery(cursor), signal);
  }

  leafCertificate(serviceName: string, cursor: BlockingCursor, signal?: AbortSignal) {
    return this.get<LeafCertificate>(`/v1/agent/connect/ca/leaf/${encodeURIComponent(serviceName)}`, blockingQuery(cursor), signal);
  }

  healthyConnectInstances(serviceName: string, datacenter: string | undefined, cursor: BlockingCursor, signal?: AbortSignal) {
    const query = { ...blockingQuery(cursor), passing: "1", ...(datacenter ? { dc: datacenter } : {}) };
    return this.get<ServiceInstanceEntry[] | null>(`/v1/health/connect/${encodeURIComponent(serviceName)}`, query, signal);
  }

  /**
   * The instances of one discovery-chain target: its subset's `filter`, and
   * `passing` only when the subset says OnlyPassing (otherwise the caller drops
   * critical instances itself, as Envoy's endpoints do).
   */
  connectInstances(serviceName: string, options: { datacenter?: string; filter?: string; passing: boolean }, cursor: BlockingCursor, signal?: AbortSignal) {
    const query = {
      ...blockingQuery(cursor),
      ...(options.passing ? { passing: "1" } : {}),
      ...(options.datacenter ? { dc: options.datacenter } : {}),
      ...(options.filter ? { filter: options.filter } : {}),
    };
    return this.get<ServiceInstanceEntry[] | null>(`/v1/health/connect/${encodeURIComponent(serviceName)}`, query, signal);
  }

  /** The compiled discovery chain, with the upstream's overrides (a POST: GET cannot carry them). */
  discoveryChain(serviceName: string, options: { datacenter?: string; overrides: DiscoveryChainOverrides }, cursor: BlockingCursor, signal?: AbortSignal) {
    const query = { ...blockingQuery(cursor), ...(options.datacenter ? { "compile-dc": options.datacenter } : {}) };
    return this.get<DiscoveryChainReply>(`/v1/discovery-chain/${encodeURIComponent(serviceName)}`, query, signal, undefined, options.overrides);
  }

  /** Prepared queries do not block: the watch re-executes them at its minimum interval. */
  preparedQuery(queryName: string, datacenter: string | undefined, signal?: AbortSignal) {
    const query = { connect: "true", ...(datacenter ? { dc: datacenter } : {}) };
    return this.get<PreparedQueryResult>(`/v1/query/${encodeURIComponent(queryName)}/execute`, query, signal);
  }

  intentionsForDestination(serviceName: string, cursor: BlockingCursor, signal?: AbortSignal) {
    const query = { ...blockingQuery(cursor), by: "destination", name: serviceName };
    return this.get<Record<string, Intention[] | null>>("/v1/connect/intentions/match", query, signal, `/v1/connect/intentions/match?by=destination&name=${encodeURIComponent(serviceName)}`);
  }

  /**
   * One config entry, blocking. The list endpoint is watched (it answers [] and
   * an index while the entry does not exist; the single-entry one answers 404).
   */
  async configEntry<K extends "proxy-defaults" | "mesh">(kind: K, name: string, cursor: BlockingCursor, signal?: AbortSignal) {
    const page = await this.get<(K extends "mesh" ? MeshEntry : ProxyDefaultsEntry)[] | null>(`/v1/config/${kind}`, blockingQuery(cursor), signal);
    if (page.value !== null && !Array.isArray(page.value)) throw new ConsulError("bad-reply", `/v1/config/${kind}`, `Consul's reply is unusable: not a list of ${kind} entries`);
    // The mesh entry has no Name field (Consul names it "mesh" implicitly).
    return { ...page, value: (page.value ?? []).find((entry) => (entry.Name ?? name) === name) ?? null };
  }

  /** `label` names the endpoint in errors when the path alone does not say enough. */
  /** A POST when `body` is given (Consul's blocking reads that take a body). */
  private async get<T>(endpoint: string, query: Record<string, string>, signal?: AbortSignal, label = endpoint, body?: unknown): Promise<ConsulPage<T>> {
    if (signal?.aborted) throw new ConsulError("aborted", label, `request to ${label} cancelled`);
    const url = new URL(endpoint, this.base);
    for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
    // A blocking query may legitimately last `wait` plus Consul's jitter (wait/16).
    const timeoutMs = (Number(query.wait?.replace("s", "") ?? 0) * 1.1 + 10) * 1000;
    const payload = body === undefined ? undefined : JSON.stringify(body);
    let response = await this.sendOrThrow(url, timeoutMs, label, signal, payload);
    // A rotated token can meet Consul before the file's change is seen: re-read it, and retry once if it changed.
    if (response.status === 403 && isTokenNotFound(response.body) && this.tokens.tokenRejected()) response = await this.sendOrThrow(url, timeoutMs, label, signal, payload);
    if (response.status < 200 || response.status >= 300) throw classifyStatus(label, response.status, response.body);
    let value: T;
    try {
      value = (response.body ? JSON.parse(response.body) : null) as T;
    } catch {
      throw new ConsulError("bad-reply", label, `Consul's reply to ${label} is not JSON: ${JSON.stringify(response.body.slice(0, 80))}`);
    }
    const indexHeader = headerValue(response.headers["x-consul-index"]);
    const hashHeader = headerValue(response.headers["x-consul-contenthash"]);
    return {
      value,
      index: indexHeader !== undefined && /^\d+$/.test(indexHeader) ? Number(indexHeader) : undefined,
      contentHash: hashHeader || undefined,
    };
  }

  private async sendOrThrow(url: URL, timeoutMs: number, label: string, signal: AbortSignal | undefined, body: string | undefined) {
    try {
      return await this.send(url, timeoutMs, signal, body);
    } catch (err) {
      if (signal?.aborted) throw new ConsulError("aborted", label, `request to ${label} cancelled`);
      if (err instanceof ConsulError) throw err;
      const e = err as NodeJS.ErrnoException;
      throw new ConsulError("unreachable", label, `cannot reach Consul for ${label}: ${e.code ?? e.message}`);
    }
  }

  private send(url: URL, timeoutMs: number, signal?: AbortSignal, body?: string): Promise<{ status: number; headers: IncomingMessage["headers"]; body: string }> {
    const request = url.protocol === "https:" ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const token = this.tokens.current();
      const headers: Record<string, string> = token ? { "x-consul-token": token } : {};
      if (body !== undefined) headers["content-type"] = "application/json";
      const req = request(url, { method: body === undefined ? "GET" : "POST", agent: this.agent, signal, timeout: timeoutMs, headers }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > maxReplyBytes) {
            req.destroy(new ConsulError("bad-reply", url.pathname, `Consul's reply to ${url.pathname} is larger than ${maxReplyBytes} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
        // The connection closed before the body was complete (Node says "aborted"): a broken reply, not an unreachable agent.
        res.on("error", (err: NodeJS.ErrnoException) =>
          reject(err instanceof ConsulError ? err : new ConsulError("bad-reply", url.pathname, `Consul's reply to ${url.pathname} broke off after ${size} bytes of its body (${err.code ?? err.message})`)));
      });
      req.on("timeout", () => req.destroy(Object.assign(new Error(`no answer within ${Math.round(timeoutMs)} ms`), { code: "ETIMEDOUT" })));
      req.on("error", reject);
      req.end(body);
    });
  }
}

function blockingQuery(cursor: BlockingCursor): Record<string, string> {
  const query: Record<string, string> = {};
  if (cursor.hash) query.hash = cursor.hash;
  else if (cursor.index !== undefined && cursor.index > 0) query.index = String(cursor.index);
  if ((cursor.hash || cursor.index) && cursor.waitSeconds) query.wait = `${cursor.waitSeconds}s`;
  return query;
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
