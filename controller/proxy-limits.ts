// Pure: Consul's connection limits and passive health check (outlier
// detection), read from Proxy.Config and upstream Config as Consul's Envoy
// integration reads them (agent/xds/config, clusters.go, listeners.go), and the
// haproxy.cfg lines that approximate them. docs/controller.md says how close
// each one comes.
import { SidecarSpecError } from "./sidecar-spec.js";

/** Upstream `limits` (Envoy circuit breakers on the upstream cluster). */
export interface UpstreamLimits {
  maxConnections?: number;
  maxPendingRequests?: number;
  maxConcurrentRequests?: number;
}

/** Upstream `passive_health_check` (Envoy outlier detection), with Envoy's defaults filled in. */
export interface PassiveHealthCheck {
  intervalMs: number;
  maxFailures: number;
  /** 0: failures are counted but nobody is ejected. */
  enforcingConsecutive5xx: number;
  baseEjectionTimeMs: number;
  maxEjectionPercent: number;
}

/** Envoy's OutlierDetection defaults: Consul leaves unset fields to them. */
export const envoyOutlierDefaults: PassiveHealthCheck = {
  intervalMs: 10_000,
  maxFailures: 5,
  enforcingConsecutive5xx: 100,
  baseEjectionTimeMs: 30_000,
  maxEjectionPercent: 10,
};

function isSet(value: unknown): boolean {
  return value !== undefined && value !== null && value !== "";
}

/** A whole number ≥ `min` (Consul decodes these weakly: "5" is 5). */
export function wholeNumber(value: unknown, key: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new SidecarSpecError(`${key} must be a whole number ≥ ${min}, got ${JSON.stringify(value)}`);
  return n;
}

const durationUnitsMs: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** A Go duration ("10s", "1m30s", "250ms") or a number of nanoseconds (what Consul's weak decoding makes of a number), in ms. */
export function durationMs(value: unknown, key: string): number {
  if (typeof value === "number") {
    if (!Number.isFinite(value) || value < 0) throw new SidecarSpecError(`${key} must be a duration, got ${JSON.stringify(value)}`);
    return value / 1e6;
  }
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) / 1e6;
  let total = 0;
  let rest = text;
  while (rest !== "") {
    const part = /^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/.exec(rest);
    if (!part) throw new SidecarSpecError(`${key} must be a duration such as "10s" or "500ms", got ${JSON.stringify(value)}`);
    total += Number(part[1]) * durationUnitsMs[part[2]!]!;
    rest = rest.slice(part[0].length);
  }
  return total;
}

/** "max_connections" → "MaxConnections". */
function pascalCase(snake: string): string {
  return snake.split("_").map((word) => word.charAt(0).toUpperCase() + word.slice(1)).join("");
}

/**
 * A nested Config object (`limits`, `passive_health_check`), its fields by
 * their snake_case names. Consul's HCL may hand over a one-element list; what
 * the agent merges in from service-defaults' UpstreamConfig comes with Go's
 * field names (MaxConnections) and durations in nanoseconds: both are read.
 */
function section(value: unknown, key: string): Record<string, unknown> | undefined {
  if (!isSet(value)) return undefined;
  const object = Array.isArray(value) && value.length === 1 ? value[0] : value;
  if (typeof object !== "object" || object === null || Array.isArray(object)) throw new SidecarSpecError(`${key} must be an object, got ${JSON.stringify(value)}`);
  const fields = object as Record<string, unknown>;
  return new Proxy(fields, { get: (target, name) => (typeof name === "string" ? (target[name] ?? target[pascalCase(name)]) : undefined) });
}

export function parseUpstreamLimits(value: unknown, where: string): UpstreamLimits | undefined {
  const limits = section(value, `${where} limits`);
  if (!limits) return undefined;
  const read = (key: string) => (isSet(limits[key]) ? wholeNumber(limits[key], `${where} limits.${key}`, 0) : undefined);
  const parsed: UpstreamLimits = {
    ...(isSet(limits.max_connections) ? { maxConnections: read("max_connections") } : {}),
    ...(isSet(limits.max_pending_requests) ? { maxPendingRequests: read("max_pending_requests") } : {}),
    ...(isSet(limits.max_concurrent_requests) ? { maxConcurrentRequests: read("max_concurrent_requests") } : {}),
  };
  return Object.keys(parsed).length > 0 ? parsed : undefined;
}

export function parsePassiveHealthCheck(value: unknown, where: string): PassiveHealthCheck | undefined {
  const check = section(value, `${where} passive_health_check`);
  if (!check) return undefined;
  const key = (name: string) => `${where} passive_health_check.${name}`;
  const number = (name: string, min: number, fallback: number) => (isSet(check[name]) ? wholeNumber(check[name], key(name), min) : fallback);
  const duration = (name: string, fallback: number) => {
    if (!isSet(check[name])) return fallback;
    const ms = durationMs(check[name], key(name));
    // Consul writes 0 for "not set" (ToOutlierDetection skips a zero interval).
    return ms > 0 ? ms : fallback;
  };
  const percent = (name: string, fallback: number) => {
    const n = number(name, 0, fallback);
    if (n > 100) throw new SidecarSpecError(`${key(name)} is a percentage (0-100), got ${n}`);
    return n;
  };
  return {
    intervalMs: duration("interval", envoyOutlierDefaults.intervalMs),
    // 0 means "not set" to Consul, as for the interval.
    maxFailures: number("max_failures", 0, 0) || envoyOutlierDefaults.maxFailures,
    enforcingConsecutive5xx: percent("enforcing_consecutive_5xx", envoyOutlierDefaults.enforcingConsecutive5xx),
    baseEjectionTimeMs: duration("base_ejection_time", envoyOutlierDefaults.baseEjectionTimeMs),
    maxEjectionPercent: percent("max_ejection_percent", envoyOutlierDefaults.maxEjectionPercent),
  };
}

/** `max_inbound_connections`: 0 or unset is no limit (Consul's rule). */
export function parseMaxInboundConnections(value: unknown): number | undefined {
  if (!isSet(value)) return undefined;
  const n = wholeNumber(value, "max_inbound_connections", 0);
  return n > 0 ? n : undefined;
}

/** `max_request_headers_kb`: 0 or unset is Envoy's default (60 KiB); Envoy refuses more than 8192. */
export function parseMaxRequestHeadersKb(value: unknown): number | undefined {
  if (!isSet(value)) return undefined;
  const n = wholeNumber(value, "max_request_headers_kb", 0);
  if (n > maxRequestHeadersKbLimit) throw new SidecarSpecError(`max_request_headers_kb is at most ${maxRequestHeadersKbLimit} (Envoy's limit), got ${n}`);
  return n > 0 ? n : undefined;
}

const maxRequestHeadersKbLimit = 8192;

/** HAProxy's default buffer here (haproxy-config.ts): request headers up to 63 kB fit, Envoy's default limit being 60 KiB. */
export const defaultBufferBytes = 65536;

/**
 * Pure: the buffer size that lets a request with `maxRequestHeadersKb` of
 * headers in (HAProxy answers 400 to one that does not fit in a buffer less
 * the 1 kB it reserves for rewrites): the default, or that many kB plus 4 for
 * the request line and the reserve.
 */
export function bufferBytesFor(maxRequestHeadersKb: number | undefined): number {
  return Math.max(defaultBufferBytes, ((maxRequestHeadersKb ?? 0) + 4) * 1024);
}

/** Public HTTP listener: Envoy answers 431 to request headers past the limit. */
export function requestHeadersLimitLines(maxRequestHeadersKb: number | undefined): string[] {
  if (maxRequestHeadersKb === undefined) return [];
  const bytes = maxRequestHeadersKb * 1024;
  return [`    http-request deny status 431 content-type text/plain string "request headers larger than ${bytes} bytes" if { req.hdrs,length gt ${bytes} }`];
}

/** HAProxy's time format: whole milliseconds, at least 1. */
function ms(value: number): string {
  return `${Math.max(1, Math.round(value))}ms`;
}

// ---- Rendering -------------------------------------------------------------

/**
 * Public listener: Envoy's connection_limit filter closes the connections past
 * the limit at once; fe_conn counts the one being accepted.
 */
export function inboundLimitLines(maxInboundConnections: number | undefined): string[] {
  if (maxInboundConnections === undefined) return [];
  return [`    tcp-request connection reject if { fe_conn gt ${maxInboundConnections} }`];
}

/** The local app's server: Consul also sets the local_app cluster's max_connections to the same number. */
export function localAppServerOptions(maxInboundConnections: number | undefined): string {
  return maxInboundConnections === undefined ? "" : ` maxconn ${maxInboundConnections}`;
}

/** What an upstream's backend lets through at once, and how many more wait for a turn. */
export interface UpstreamAdmission {
  /** In flight at once, per instance (server maxconn); undefined = unlimited. */
  perInstance?: number;
  /** In flight plus waiting, for the whole upstream; past it, refused at once; undefined = unlimited. */
  total?: number;
}

/**
 * Pure: Envoy's circuit breakers as HAProxy admission. TCP: each connection is
 * one upstream connection, refused past max_connections (Envoy's TCP proxy
 * closes it; nothing waits). HTTP: requests in flight are capped by
 * max_concurrent_requests and, one request per connection, max_connections;
 * past that they wait (HAProxy's queue) up to max_pending_requests more, and
 * the rest is refused with 503, as Envoy's overflow is.
 */
export function upstreamAdmission(limits: UpstreamLimits | undefined, http: boolean): UpstreamAdmission {
  if (!limits) return {};
  if (!http) return limits.maxConnections === undefined ? {} : { total: limits.maxConnections };
  const caps = [limits.maxConnections, limits.maxConcurrentRequests].filter((n): n is number => n !== undefined);
  if (caps.length === 0) return {};
  const perInstance = Math.min(...caps);
  // Envoy's default max_pending_requests is 1024.
  return { perInstance, total: perInstance + (limits.maxPendingRequests ?? 1024) };
}

/** How long a request waits in the queue: Envoy's pending requests wait up to the route timeout, 15 s by default. */
export const queueTimeoutMs = 15_000;

/** Backend lines for an upstream's admission (be_conn counts the stream being decided). */
export function upstreamAdmissionLines(admission: UpstreamAdmission, http: boolean): string[] {
  const lines: string[] = [];
  if (admission.perInstance !== undefined) lines.push(`    timeout queue ${ms(queueTimeoutMs)}`);
  if (admission.total !== undefined) {
    lines.push(http
      ? `    http-request return status 503 content-type text/plain string "upstream overflow: too many requests in flight" if { be_conn gt ${admission.total} }`
      : `    tcp-request content reject if { be_conn gt ${admission.total} }`);
  }
  return lines;
}

/** How often an instance in rotation is checked: rarely, because every passing check restarts HAProxy's count of errors in a row. */
export const IN_ROTATION_CHECK_INTERVAL_MS = 24 * 3600_000;

/**
 * Server options for outlier detection: responses are observed (5xx and
 * connection errors at layer 7, connection errors at layer 4); `max_failures`
 * in a row mark the instance down, and one plain TCP connect check (no TLS:
 * the peer's authorizer never sees it) brings it back `base_ejection_time`
 * later (Envoy: at its first interval sweep after that). A mark-down moves
 * the next check to then: 2.6.12's `__health_adjust()` to fastinter, 3.0's
 * check task to downinter. While the instance is in rotation its check runs
 * once a day: HAProxy clears a server's count of errors in a row on every
 * passing check, so checks every `interval` would keep an instance that fails
 * fewer than max_failures requests per interval in rotation for ever, where
 * Envoy counts only responses. enforcing_consecutive_5xx 0 counts without
 * ejecting: no observation at all.
 */
export function outlierServerOptions(check: PassiveHealthCheck | undefined, http: boolean): string {
  if (!check || check.enforcingConsecutive5xx === 0) return "";
  const base = ms(check.baseEjectionTimeMs);
  return ` check no-check-ssl inter ${ms(IN_ROTATION_CHECK_INTERVAL_MS)} fastinter ${base} downinter ${base} rise 1 fall 3 observe ${http ? "layer7" : "layer4"} error-limit ${check.maxFailures} on-error mark-down`;
}

/** What outlier detection cannot do in HAProxy 2.6, for the warning line. */
export function outlierWarnings(check: PassiveHealthCheck | undefined): string[] {
  if (!check) return [];
  const warnings: string[] = [];
  if (check.enforcingConsecutive5xx > 0 && check.enforcingConsecutive5xx < 100) {
    warnings.push(`passive_health_check.enforcing_consecutive_5xx ${check.enforcingConsecutive5xx}% is applied as 100% (HAProxy ejects on every detection or never)`);
  }
  if (check.enforcingConsecutive5xx > 0) warnings.push(`passive_health_check.max_ejection_percent ${check.maxEjectionPercent}% is not enforced (HAProxy may eject every instance; the upstream then answers 503)`);
  if (check.enforcingConsecutive5xx > 0) warnings.push(`passive_health_check.interval ${check.intervalMs}ms is not used: an ejected instance returns base_ejection_time after its ejection (Envoy: at its first interval sweep after that)`);
  return warnings;
}

/** Upstream server options for `limits`: at most `perInstance` in flight on each instance, the rest queued. */
export function upstreamServerOptions(admission: UpstreamAdmission): string {
  return admission.perInstance === undefined ? "" : ` maxconn ${admission.perInstance}`;
}
