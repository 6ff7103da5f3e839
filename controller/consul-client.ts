// Everything the controller asks Consul goes through this module: the `consul`
// package for the calls it covers, its HTTP transport (papi) for the Connect
// endpoints it lacks. Replies are typed here and errors are classified here,
// nowhere else.
import { EventEmitter } from "node:events";
import { Agent as HttpAgent } from "node:http";
import { Agent as HttpsAgent } from "node:https";
import { readFileSync } from "node:fs";
import Consul from "consul";

// ---- Typed replies (only the fields the controller reads) ----

export interface UpstreamRegistration {
  DestinationType?: "service" | "prepared_query" | "";
  DestinationName: string;
  DestinationNamespace?: string;
  DestinationPartition?: string;
  Datacenter?: string;
  LocalBindAddress?: string;
  LocalBindPort?: number;
  Config?: Record<string, unknown>;
}

export interface ProxyRegistration {
  DestinationServiceName: string;
  DestinationServiceID?: string;
  LocalServiceAddress?: string;
  LocalServicePort?: number;
  Config?: Record<string, unknown> | null;
  Upstreams?: UpstreamRegistration[] | null;
}

export interface AgentServiceRegistration {
  ID: string;
  Service: string;
  Kind?: string;
  Address: string;
  Port: number;
  Proxy?: ProxyRegistration;
  Datacenter?: string;
  Namespace?: string;
  Partition?: string;
  ContentHash?: string;
}

export interface CaRoot {
  ID: string;
  Name?: string;
  RootCert: string;
  IntermediateCerts?: string[] | null;
  Active: boolean;
}

export interface CaRoots {
  ActiveRootID: string;
  TrustDomain: string;
  Roots: CaRoot[] | null;
}

export interface LeafCertificate {
  SerialNumber: string;
  CertPEM: string;
  PrivateKeyPEM: string;
  Service: string;
  ServiceURI: string;
  ValidAfter: string;
  ValidBefore: string;
  ModifyIndex?: number;
}

export interface ServiceInstanceEntry {
  Node: { Node: string; Address: string; Datacenter?: string };
  Service: { ID: string; Service: string; Address: string; Port: number; Kind?: string };
  Checks?: { Status: string; CheckID: string }[];
}

export interface PreparedQueryResult {
  Service: string;
  Nodes: ServiceInstanceEntry[] | null;
  Datacenter: string;
}

export interface Intention {
  ID?: string;
  SourceName: string;
  DestinationName: string;
  Action?: "allow" | "deny";
  Permissions?: unknown[] | null;
  Precedence?: number;
  ModifyIndex?: number;
}

/** One reply of an endpoint, with what a blocking query needs to continue. */
export interface ConsulPage<T> {
  value: T;
  /** X-Consul-Index, when the endpoint is index-blocking. */
  index?: number;
  /** X-Consul-ContentHash, when the endpoint is hash-blocking. */
  contentHash?: string;
}

/** Where a blocking query resumes: an index or a content hash, and how long to wait. */
export interface BlockingCursor {
  index?: number;
  hash?: string;
  waitSeconds?: number;
}

// ---- Errors ----

export type ConsulErrorKind = "forbidden" | "not-found" | "unreachable" | "status" | "aborted";

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
  if (endpoint.startsWith("/v1/connect/intentions")) {
    const name = /[?&]name=([^&]+)/.exec(endpoint)?.[1];
    return `intention:read on ${name ? `"${decodeURIComponent(name)}"` : "the destination service"} (service "…" { intentions = "read" })`;
  }
  return "a token with read access";
}

/** Pure: turns an HTTP status and body into a ConsulError (the one place error text is read). */
export function classifyStatus(endpoint: string, status: number, body: string): ConsulError {
  const detail = body.trim().split("\n")[0]?.slice(0, 200) ?? "";
  if (status === 403) {
    return new ConsulError("forbidden", endpoint, `Consul refused ${endpoint} (403 ${detail || "Permission denied"}): the token needs ${permissionNeededFor(endpoint)}`, status);
  }
  if (status === 404) return new ConsulError("not-found", endpoint, `Consul has no ${endpoint} (404 ${detail})`, status);
  return new ConsulError("status", endpoint, `Consul answered ${status} to ${endpoint}: ${detail}`, status);
}

// ---- Client ----

export interface ConsulClientOptions {
  /** `host:port`, `http://host:port` or `https://host:port`, as CONSUL_HTTP_ADDR. */
  httpAddr: string;
  token?: string;
  /** PEM file to trust for https (CONSUL_CACERT). */
  caCertFile?: string;
}

export function parseHttpAddr(httpAddr: string): URL {
  const withScheme = /^[a-z]+:\/\//i.test(httpAddr) ? httpAddr : `http://${httpAddr}`;
  const url = new URL(withScheme);
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error(`unsupported scheme in Consul address ${httpAddr}`);
  return url;
}

interface PapiResponse {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  body?: unknown;
}

interface PapiRequestOptions {
  name: string;
  path: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  ctx?: EventEmitter;
  timeout?: number;
}

// The part of the consul package's client (a papi.Client) this module uses for endpoints the package lacks.
interface PapiClient {
  _get(options: PapiRequestOptions, ...middleware: unknown[]): Promise<PapiResponse>;
}

export class ConsulClient {
  private readonly consul: Consul;
  private readonly token?: string;

  constructor(options: ConsulClientOptions) {
    const url = parseHttpAddr(options.httpAddr);
    const secure = url.protocol === "https:";
    const agent = secure
      ? new HttpsAgent({ keepAlive: true, ca: options.caCertFile ? readFileSync(options.caCertFile) : undefined })
      : new HttpAgent({ keepAlive: true });
    this.token = options.token || undefined;
    // baseUrl is accepted by the package (and papi) though missing from its typings.
    this.consul = new Consul({ baseUrl: `${url.protocol}//${url.host}/v1`, agent, defaults: this.token ? { token: this.token } : undefined } as ConstructorParameters<typeof Consul>[0]);
  }

  close(): void {
    this.consul.destroy();
  }

  /** Every service registered on the local agent, by ID (`consul` package). */
  async listAgentServices(signal?: AbortSignal): Promise<Record<string, AgentServiceRegistration>> {
    return this.withErrors("/v1/agent/services", signal, async (ctx) => (await this.consul.agent.service.list({ ctx } as never)) as Record<string, AgentServiceRegistration>);
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

  /** Prepared queries do not block: the watch re-executes them at its minimum interval. */
  preparedQuery(queryName: string, datacenter: string | undefined, signal?: AbortSignal) {
    const query = { connect: "true", ...(datacenter ? { dc: datacenter } : {}) };
    return this.get<PreparedQueryResult>(`/v1/query/${encodeURIComponent(queryName)}/execute`, query, signal);
  }

  intentionsForDestination(serviceName: string, cursor: BlockingCursor, signal?: AbortSignal) {
    const query = { ...blockingQuery(cursor), by: "destination", name: serviceName };
    return this.get<Record<string, Intention[] | null>>("/v1/connect/intentions/match", query, signal, `/v1/connect/intentions/match?by=destination&name=${encodeURIComponent(serviceName)}`);
  }

  /** `label` names the endpoint in errors when the path alone does not say enough. */
  private async get<T>(endpoint: string, query: Record<string, string>, signal?: AbortSignal, label = endpoint): Promise<ConsulPage<T>> {
    return this.withErrors(label, signal, async (ctx) => {
      const request: PapiRequestOptions = {
        name: "connect-haproxy",
        path: endpoint.replace(/^\/v1/, ""),
        query,
        headers: this.token ? { "x-consul-token": this.token } : {},
        ctx,
        // A blocking query may legitimately last `wait` plus Consul's jitter (wait/16).
        timeout: (Number(query.wait?.replace("s", "") ?? 0) * 1.1 + 10) * 1000,
      };
      const response = await (this.consul as unknown as PapiClient)._get(request, keepResponse);
      const text = typeof response.body === "string" ? response.body : Buffer.isBuffer(response.body) ? response.body.toString() : undefined;
      if (response.statusCode < 200 || response.statusCode >= 300) throw classifyStatus(label, response.statusCode, text ?? JSON.stringify(response.body ?? ""));
      const value = (text !== undefined ? (text ? JSON.parse(text) : null) : (response.body ?? null)) as T;
      const indexHeader = header(response, "x-consul-index");
      const hashHeader = header(response, "x-consul-contenthash");
      return {
        value,
        index: indexHeader !== undefined && /^\d+$/.test(indexHeader) ? Number(indexHeader) : undefined,
        contentHash: hashHeader || undefined,
      };
    });
  }

  private async withErrors<T>(endpoint: string, signal: AbortSignal | undefined, call: (ctx: EventEmitter) => Promise<T>): Promise<T> {
    if (signal?.aborted) throw new ConsulError("aborted", endpoint, `request to ${endpoint} cancelled`);
    // papi cancels a request when its ctx emits "cancel".
    const ctx = new EventEmitter();
    const cancel = () => ctx.emit("cancel");
    signal?.addEventListener("abort", cancel, { once: true });
    try {
      return await call(ctx);
    } catch (err) {
      if (err instanceof ConsulError) throw err;
      if (signal?.aborted) throw new ConsulError("aborted", endpoint, `request to ${endpoint} cancelled`);
      const e = err as { statusCode?: number; response?: PapiResponse; message?: string; code?: string };
      const status = e.statusCode ?? e.response?.statusCode;
      if (status) throw classifyStatus(endpoint, status, String(e.response?.body ?? e.message ?? ""));
      throw new ConsulError("unreachable", endpoint, `cannot reach Consul for ${endpoint}: ${e.code ?? e.message ?? String(err)}`);
    } finally {
      signal?.removeEventListener("abort", cancel);
    }
  }
}

function blockingQuery(cursor: BlockingCursor): Record<string, string> {
  const query: Record<string, string> = {};
  if (cursor.hash) query.hash = cursor.hash;
  else if (cursor.index !== undefined && cursor.index > 0) query.index = String(cursor.index);
  if ((cursor.hash || cursor.index) && cursor.waitSeconds) query.wait = `${cursor.waitSeconds}s`;
  return query;
}

function header(response: PapiResponse, name: string): string | undefined {
  const value = response.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

// papi middleware: hand back the raw response whatever its status, so that
// statuses are classified in one place (classifyStatus).
function keepResponse(request: { err?: Error; res?: PapiResponse }, next: (stop: boolean, err?: Error, value?: PapiResponse) => void) {
  if (request.res) return next(false, undefined, request.res);
  next(false, request.err);
}
