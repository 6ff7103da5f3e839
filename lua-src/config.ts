// Configuration from the environment, read once when HAProxy loads the file
// (`setenv`/`presetenv` in haproxy.cfg's global section above `lua-load`, or
// the process environment; one set below `lua-load` stops the start-up:
// lateSettings). Pure: takes a getenv function, returns the settings and the
// problems found. A bad value never stops HAProxy: a bad duration falls back
// to its default with a warning; an unusable agent address makes every
// decision a deny that says why.

import { readTokenFile } from "./agent-token";

const find = string.find;
const match = string.match;
const lower = string.lower;
const sub = string.sub;
const format = string.format;

export interface Config {
  /** Where the agent's HTTP API listens: an IP address (no DNS at run time) and a port. */
  agentAddress: string;
  agentPort: number;
  /** As written, for the Host header and `connect show config`. */
  agentHostHeader: string;
  /** Set when CONSUL_HTTP_ADDR cannot be used: decisions deny with this reason. */
  agentAddressError: string | undefined;
  token: string | undefined;
  /** Where the token came from, for `connect show config` (never the token itself). */
  tokenSource: string;
  /** CONSUL_HTTP_TOKEN_FILE when the token comes from it: re-read as it changes (agent-token.ts). */
  tokenFile: string | undefined;
  allowTtlMs: number;
  denyTtlMs: number;
  cacheSize: number;
  connectTimeoutMs: number;
  readTimeoutMs: number;
  trustDomain: string | undefined;
  defaultTarget: string | undefined;
  agentDownGraceMs: number;
  logAllowed: boolean;
  /** CONNECT_DECISION_LOG=global: decision lines go to HAProxy's global log, not the frontend's (which is then the access log only). */
  decisionLogGlobal: boolean;
  /** A map haproxy.cfg checks natively before running the action on an HTTP request (request-passes.ts). */
  passMap: string | undefined;
  /** "<target>@<index>": haproxy.cfg has native L7 rules rendered from target's intentions at index (controller/native-l7.ts). */
  nativeRulesTarget: string | undefined;
  nativeRulesIndex: number | undefined;
  /** A map haproxy.cfg checks natively before running connect_verify_upstream on an HTTP response. */
  serverPassMap: string | undefined;
  warnings: string[];
}

export const DEFAULTS = {
  agentAddress: "127.0.0.1:8500",
  allowTtlMs: 10000,
  denyTtlMs: 2000,
  cacheSize: 10000,
  connectTimeoutMs: 1000,
  readTimeoutMs: 2000,
  agentDownGraceMs: 0,
};

/** The grace period is a convenience, not a way to run without an agent. */
export const MAX_AGENT_DOWN_GRACE_MS = 300000;
const MAX_TIMEOUT_MS = 60000;
const MAX_CACHE_SIZE = 1000000;

/** Each knob, its environment variable and what it means (README and `connect show config`). */
export const KNOBS: [string, string][] = [
  ["CONSUL_HTTP_ADDR", "agent HTTP address, host:port or http://host:port (default 127.0.0.1:8500)"],
  ["CONSUL_HTTP_TOKEN", "ACL token sent as X-Consul-Token (needs service:write on each target)"],
  ["CONSUL_HTTP_TOKEN_FILE", "file holding the token if CONSUL_HTTP_TOKEN is unset; re-read every 2s and on a 403 ACL not found (rotation without reload)"],
  ["CONNECT_ALLOW_TTL", "how long an allow verdict is cached (default 10s)"],
  ["CONNECT_DENY_TTL", "how long a deny verdict is cached (default 2s)"],
  ["CONNECT_CACHE_SIZE", "maximum cached verdicts, least recently used evicted first (default 10000)"],
  ["CONNECT_AGENT_CONNECT_TIMEOUT", "timeout to connect to the agent (default 1s)"],
  ["CONNECT_AGENT_READ_TIMEOUT", "timeout for the agent's reply (default 2s)"],
  ["CONNECT_TRUST_DOMAIN", "the cluster's trust domain; learned from the agent's CA roots when unset"],
  ["CONNECT_DEFAULT_TARGET", "target service for lua.connect_authorize_default (and `lua.connect_authorize -`)"],
  ["CONNECT_AGENT_DOWN_GRACE", "honour an allow that expired at most this long ago when the agent is unreachable (default 0 = never, max 5m)"],
  ["CONNECT_LOG_ALLOWED", "1 to log allow decisions at info instead of debug"],
  ["CONNECT_SERVER_PASS_MAP", "map file haproxy.cfg checks before running connect_verify_upstream on HTTP responses (server certificates already verified; docs/standalone.md)"],
  ["CONNECT_NATIVE_L7_RULES", "<service>@<index>: haproxy.cfg's native L7 rules were rendered from that list (set by the controller; none: no such rules)"],
  ["CONNECT_PASS_MAP", "map file haproxy.cfg checks before running the action on HTTP requests (passes for sources an L4 intention allows; docs/standalone.md)"],
];

/**
 * Parses "250ms", "2s", "1.5s", "1m" or a bare number of seconds into
 * milliseconds; nil if it is not a duration.
 */
export function parseDuration(text: string): number | undefined {
  const [amount, unit] = match(lower(text), "^%s*(%d+%.?%d*)%s*(%a*)%s*$");
  if (amount === undefined) return undefined;
  const value = tonumber(amount);
  if (value === undefined) return undefined;
  let factor: number;
  if (unit === "ms") factor = 1;
  else if (unit === "" || unit === "s") factor = 1000;
  else if (unit === "m") factor = 60000;
  else if (unit === "h") factor = 3600000;
  else return undefined;
  return Math.floor(value * factor);
}

export interface AgentAddress {
  address: string;
  port: number;
  hostHeader: string;
}

/** Accepts host:port, http://host:port, [v6]:port; "localhost" means 127.0.0.1. */
export function parseAgentAddress(text: string): LuaMultiReturn<[AgentAddress | undefined, string | undefined]> {
  let rest = text;
  const [scheme] = match(rest, "^(%a[%w+.-]*)://");
  if (scheme !== undefined) {
    if (lower(scheme) !== "http") {
      return $multi(undefined, format("CONSUL_HTTP_ADDR %q: only http:// is supported (the authorizer talks to the local agent)", text));
    }
    rest = sub(rest, scheme.length + 4);
  }
  [rest] = string.gsub(rest, "/+$", "");
  let host: string | undefined;
  let portText: string | undefined;
  if (sub(rest, 1, 1) === "[") {
    [host, portText] = match(rest, "^%[([%x:.]+)%]:(%d+)$");
    if (host === undefined) {
      [host] = match(rest, "^%[([%x:.]+)%]$");
      portText = "8500";
    }
  } else {
    [host, portText] = match(rest, "^([^:/]+):(%d+)$");
    if (host === undefined) {
      [host] = match(rest, "^([^:/]+)$");
      portText = "8500";
    }
  }
  if (host === undefined || portText === undefined) return $multi(undefined, format("CONSUL_HTTP_ADDR %q is not host:port", text));
  const port = tonumber(portText) as number;
  if (port < 1 || port > 65535) return $multi(undefined, format("CONSUL_HTTP_ADDR %q: bad port", text));
  let address = host;
  if (lower(host) === "localhost") address = "127.0.0.1";
  else if (find(host, "^%d+%.%d+%.%d+%.%d+$")[0] === undefined && find(host, ":", 1, true)[0] === undefined) {
    return $multi(undefined, format("CONSUL_HTTP_ADDR %q: use an IP address (HAProxy cannot resolve names at run time)", text));
  }
  const hostHeader = find(address, ":", 1, true)[0] !== undefined ? "[" + address + "]:" + portText : host + ":" + portText;
  return $multi({ address, port, hostHeader }, undefined);
}

export function loadConfig(getenv: (this: void, name: string) => string | undefined): Config {
  const warnings: string[] = [];
  const env = (name: string): string | undefined => {
    const value = getenv(name);
    return value === undefined || value === "" ? undefined : value;
  };
  const duration = (name: string, fallback: number, max: number): number => {
    const text = env(name);
    if (text === undefined) return fallback;
    const value = parseDuration(text);
    if (value === undefined) {
      warnings.push(format("%s=%q is not a duration (like 500ms, 2s, 1m): using %d ms", name, text, fallback));
      return fallback;
    }
    if (value > max) {
      warnings.push(format("%s=%q is more than the maximum: using %d ms", name, text, max));
      return max;
    }
    return value;
  };

  const addressText = env("CONSUL_HTTP_ADDR") ?? DEFAULTS.agentAddress;
  const [agent, agentAddressError] = parseAgentAddress(addressText);
  if (agentAddressError !== undefined) warnings.push(agentAddressError);

  let token = env("CONSUL_HTTP_TOKEN");
  let tokenSource = token !== undefined ? "CONSUL_HTTP_TOKEN" : "none";
  const tokenFileSetting = env("CONSUL_HTTP_TOKEN_FILE");
  // Followed even when unreadable now: the token may arrive later.
  const tokenFile = token === undefined ? tokenFileSetting : undefined;
  if (tokenFile !== undefined) {
    const [fromFile, fileError] = readTokenFile(tokenFile);
    if (fileError !== undefined) warnings.push(fileError);
    else if (fromFile !== undefined && fromFile !== "") {
      token = fromFile;
      tokenSource = "CONSUL_HTTP_TOKEN_FILE";
    }
  }

  let cacheSize = DEFAULTS.cacheSize;
  const cacheText = env("CONNECT_CACHE_SIZE");
  if (cacheText !== undefined) {
    const parsed = find(cacheText, "^%s*%d+%s*$")[0] !== undefined ? tonumber(cacheText) : undefined;
    if (parsed === undefined) warnings.push(format("CONNECT_CACHE_SIZE=%q is not a whole number: using %d", cacheText, cacheSize));
    else cacheSize = Math.min(Math.floor(parsed), MAX_CACHE_SIZE);
  }

  let trustDomain = env("CONNECT_TRUST_DOMAIN");
  if (trustDomain !== undefined) {
    trustDomain = lower(trustDomain);
    if (find(trustDomain, "[^%w%.%-_]")[0] !== undefined) {
      warnings.push(format("CONNECT_TRUST_DOMAIN=%q is not a trust domain name: learning it from the agent instead", trustDomain));
      trustDomain = undefined;
    }
  }

  const nativeText = env("CONNECT_NATIVE_L7_RULES");
  let nativeRulesTarget: string | undefined = undefined;
  let nativeRulesIndex: number | undefined = undefined;
  if (nativeText !== undefined && nativeText !== "none") {
    const [target, index] = match(nativeText, "^%s*([%w%-_%.]+)@(%d+)%s*$");
    if (target === undefined) warnings.push(format("CONNECT_NATIVE_L7_RULES=%q is not <service>@<index>: the native L7 rules stay off", nativeText));
    else {
      nativeRulesTarget = target;
      nativeRulesIndex = tonumber(index);
    }
  }

  const logAllowedText = env("CONNECT_LOG_ALLOWED");
  const logAllowed = logAllowedText !== undefined && find(lower(logAllowedText), "^%s*[1ty]")[0] !== undefined;

  const decisionLogText = env("CONNECT_DECISION_LOG");
  const decisionLogGlobal = decisionLogText !== undefined && lower(decisionLogText) === "global";

  return {
    agentAddress: agent?.address ?? "",
    agentPort: agent?.port ?? 0,
    agentHostHeader: agent?.hostHeader ?? addressText,
    agentAddressError,
    token,
    tokenSource,
    tokenFile,
    allowTtlMs: duration("CONNECT_ALLOW_TTL", DEFAULTS.allowTtlMs, 86400000),
    denyTtlMs: duration("CONNECT_DENY_TTL", DEFAULTS.denyTtlMs, 86400000),
    cacheSize,
    connectTimeoutMs: Math.max(1, duration("CONNECT_AGENT_CONNECT_TIMEOUT", DEFAULTS.connectTimeoutMs, MAX_TIMEOUT_MS)),
    readTimeoutMs: Math.max(1, duration("CONNECT_AGENT_READ_TIMEOUT", DEFAULTS.readTimeoutMs, MAX_TIMEOUT_MS)),
    trustDomain,
    defaultTarget: env("CONNECT_DEFAULT_TARGET"),
    agentDownGraceMs: duration("CONNECT_AGENT_DOWN_GRACE", DEFAULTS.agentDownGraceMs, MAX_AGENT_DOWN_GRACE_MS),
    logAllowed,
    decisionLogGlobal,
    passMap: env("CONNECT_PASS_MAP"),
    serverPassMap: env("CONNECT_SERVER_PASS_MAP"),
    nativeRulesTarget,
    nativeRulesIndex,
    warnings,
  };
}

/** `connect show config`: every setting, the token only as "set"/"not set". */
export function describeConfig(config: Config, trustDomain: string, tokenSet = config.token !== undefined): string {
  const lines = [
    "agent: " + (config.agentAddressError !== undefined ? "UNUSABLE (" + config.agentAddressError + ")" : config.agentHostHeader),
    "token: " + (tokenSet ? "set (from " + (config.tokenFile !== undefined ? "CONSUL_HTTP_TOKEN_FILE, re-read as it changes" : config.tokenSource) + ")" : "not set"),
    "trust_domain: " + trustDomain,
    "default_target: " + (config.defaultTarget ?? "(none)"),
    format("allow_ttl_ms: %d", config.allowTtlMs),
    format("deny_ttl_ms: %d", config.denyTtlMs),
    format("cache_size: %d", config.cacheSize),
    format("agent_connect_timeout_ms: %d", config.connectTimeoutMs),
    format("agent_read_timeout_ms: %d", config.readTimeoutMs),
    format("agent_down_grace_ms: %d", config.agentDownGraceMs),
    "log_allowed: " + (config.logAllowed ? "yes" : "no"),
    "decision_log: " + (config.decisionLogGlobal ? "global" : "frontend"),
    "pass_map: " + (config.passMap ?? "(none)"),
    "server_pass_map: " + (config.serverPassMap ?? "(none)"),
  ];
  for (const warning of config.warnings) lines.push("warning: " + warning);
  return table.concat(lines, "\n") + "\n";
}

/** A getenv that remembers what it answered ("" for unset), for lateSettings. */
export function recordingGetenv(getenv: (this: void, name: string) => string | undefined, seen: LuaTable<string, string>): (this: void, name: string) => string | undefined {
  return (name) => {
    const value = getenv(name);
    seen.set(name, value ?? "");
    return value;
  };
}

/**
 * The settings whose value changed between the load and the end of parsing
 * (a `setenv` written below `lua-load`): the authorizer would silently run
 * without them, so start-up stops with this message instead. nil when none.
 */
export function lateSettings(seen: LuaTable<string, string>, getenv: (this: void, name: string) => string | undefined): string | undefined {
  const late: string[] = [];
  for (const [name, value] of seen) if ((getenv(name) ?? "") !== value) late.push(name);
  if (late.length === 0) return undefined;
  table.sort(late);
  const names = table.concat(late, ", ");
  return format(
    "connect-haproxy: %s set after lua-load: the authorizer reads its settings when lua-load runs, so move the setenv/presetenv line(s) for %s above lua-load in the global section",
    names, names,
  );
}
