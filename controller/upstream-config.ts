// Pure: one upstream → its haproxy.cfg sections: a frontend on the local bind
// address that follows the discovery chain (routes, splits, failover) with
// request variables and `use_backend` rules, and one backend per chain target
// with its server slots. Failover is decided per request when the server is
// assigned (a backup server relaying to the failover targets), so a target
// losing or regaining instances (runtime `set server`) needs no reload.
import { createHash } from "node:crypto";
import { frontendLogLines } from "./access-log.js";
import type { DesiredState, BackendState, HaproxyPaths, UpstreamState } from "./desired-state.js";
import type { ChainLeaf, HeaderChanges } from "./discovery-chain.js";
import type { RouteHttpMatch } from "./consul-replies.js";
import { isHttpProtocol, type ProxyProtocol } from "./sidecar-spec.js";
import { outlierServerOptions, upstreamAdmission, upstreamAdmissionLines, upstreamServerOptions } from "./proxy-limits.js";

/** The backup server of a target with failover targets (failoverRelays). */
const failoverServer = "failover";
/** Where a free slot points; it is in maintenance, so nothing dials it. */
export const freeSlotAddress = "127.0.0.1:1";
/** Lets connect_verify_upstream yield (a lazy trust-domain lookup); adds no wait. */
const verifyInspectDelay = "5s";

/** Request variables the chain's rules set (per request, so a kept-alive connection is routed request by request). */
const routeVar = "txn.chain_route";
const pickVar = "txn.chain_pick";
const leafVar = "txn.chain_leaf";
const timeoutVar = "txn.chain_timeout";

export function hostPort(address: string, port: number): string {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

/** ALPN the mTLS hop between sidecars offers, by protocol. */
export function meshAlpn(protocol: ProxyProtocol): string {
  if (protocol === "http") return " alpn http/1.1";
  if (protocol === "http2" || protocol === "grpc") return " alpn h2";
  return "";
}

/** A configuration word, single-quoted (no escape is interpreted inside; a quote is closed, escaped and reopened). */
export function quoted(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/** A log-format argument (header values, rewrites): `%` is literal only doubled. */
function logFormat(text: string): string {
  return quoted(text.replace(/%/g, "%%"));
}

/** RE2's whole-string match (Envoy's safe_regex), as a PCRE anchored on both ends. */
function wholeRegex(regex: string): string {
  return `^(?:${regex})$`;
}

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

/** One ACL test (criterion and patterns, after `--` so that a pattern may begin with "-"), possibly negated. */
export interface AclTerm {
  test: string;
  negated?: boolean;
}

/**
 * Pure: a route's match as HAProxy ACL terms (all must hold). Paths exclude the
 * query; a header rule on a missing header fails, inverted or not, except
 * `Present` inverted (Envoy's rule).
 */
export function routeMatchTerms(match: RouteHttpMatch): AclTerm[] {
  const terms: AclTerm[] = [];
  const caseFlag = match.CaseInsensitive ? " -i" : "";
  if (match.PathExact !== undefined) terms.push({ test: `path${caseFlag} -m str -- ${quoted(match.PathExact)}` });
  else if (match.PathPrefix !== undefined && match.PathPrefix !== "/") terms.push({ test: `path${caseFlag} -m beg -- ${quoted(match.PathPrefix)}` });
  else if (match.PathRegex !== undefined) terms.push({ test: `path${caseFlag} -m reg -- ${quoted(wholeRegex(match.PathRegex))}` });
  for (const header of match.Header ?? []) {
    const fetch = `req.fhdr(${header.Name})`;
    const found = { test: `${fetch} -m found` };
    let test: string | undefined;
    if (header.Exact !== undefined) test = `${fetch} -m str -- ${quoted(header.Exact)}`;
    else if (header.Prefix !== undefined) test = `${fetch} -m beg -- ${quoted(header.Prefix)}`;
    else if (header.Suffix !== undefined) test = `${fetch} -m end -- ${quoted(header.Suffix)}`;
    else if (header.Regex !== undefined) test = `${fetch} -m reg -- ${quoted(wholeRegex(header.Regex))}`;
    if (test === undefined) terms.push(header.Invert ? { ...found, negated: true } : found);
    else terms.push(...(header.Invert ? [found, { test, negated: true }] : [{ test }]));
  }
  for (const param of match.QueryParam ?? []) {
    const fetch = `urlp(${param.Name})`;
    if (param.Exact !== undefined) terms.push({ test: `${fetch} -m str -- ${quoted(param.Exact)}` });
    else if (param.Regex !== undefined) terms.push({ test: `${fetch} -m reg -- ${quoted(wholeRegex(param.Regex))}` });
    else terms.push({ test: `${fetch} -m found` });
  }
  if (match.Methods?.length) terms.push({ test: `method ${match.Methods.join(" ")}` });
  return terms;
}

/** Pure: the `replace-path` arguments of a PrefixRewrite: the matched prefix, or the whole path for exact and regex matches. */
export function prefixRewrite(match: RouteHttpMatch, rewrite: string): string {
  const replacement = rewrite.replace(/\\/g, "\\\\");
  if (match.PathExact === undefined && match.PathRegex === undefined) {
    const prefix = match.PathPrefix ?? "/";
    return `${quoted(`${match.CaseInsensitive ? "(?i)" : ""}^${escapeRegex(prefix)}(.*)$`)} ${logFormat(`${replacement}\\1`)}`;
  }
  return `${quoted("^.*$")} ${logFormat(replacement)}`;
}

/** Header changes as rule actions, in Envoy's order: remove first, then append (Add), then overwrite (Set). */
function headerActions(direction: "http-request" | "http-response", changes: HeaderChanges): string[] {
  return [
    ...changes.remove.map((name) => `${direction} del-header ${name}`),
    ...changes.add.map(([name, value]) => `${direction} add-header ${name} ${logFormat(value)}`),
    ...changes.set.map(([name, value]) => `${direction} set-header ${name} ${logFormat(value)}`),
  ];
}

function headerRules(direction: "http-request" | "http-response", changes: HeaderChanges, condition: string): string[] {
  return headerActions(direction, changes).map((action) => `    ${action}${condition ? ` if ${condition}` : ""}`);
}

/** The order an action takes among a leaf's actions (Consul's header maps hold a name once per kind). */
const actionRank = (action: string) => ["http-request del-", "http-request add-", "http-request set-h", "http-response del-", "http-response add-", "http-response set-", "http-request set-var"].findIndex((prefix) => action.startsWith(prefix));

/**
 * Pure: the actions of named leaves as few rule lines: each distinct action once, under every leaf
 * that has it (leaves are disjoint, so only the order within one leaf matters, and it is by rank).
 */
function leafActionRules(actionsByLeaf: Map<number, string[]>): string[] {
  const leavesByAction = new Map<string, number[]>();
  for (const [leaf, actions] of actionsByLeaf) for (const action of actions) leavesByAction.set(action, [...(leavesByAction.get(action) ?? []), leaf]);
  return [...leavesByAction]
    .map(([action, leaves], order) => ({ action, leaves, order }))
    .sort((a, b) => actionRank(a.action) - actionRank(b.action) || a.order - b.order)
    .map(({ action, leaves }) => `    ${action} if ${isOneOf(leafVar, leaves)}`);
}

const isOneOf = (variable: string, values: number[]) => `{ var(${variable}) -m int ${values.join(" ")} }`;
/** A split's share of the pick: from ≤ pick < to, as one inclusive integer range. */
const inRange = (split: { from: number; to: number }) => `{ var(${pickVar}) -m int ${split.from}:${split.to - 1} }`;
/** An AND stops at its first false term: the method (a known token) first, regexes (the dearest) last. */
const termCost = (term: AclTerm) => (term.test.startsWith("method ") ? 0 : term.test.includes(" -m reg ") ? 2 : 1);
const cheapFirst = (terms: AclTerm[]) => [...terms].sort((a, b) => termCost(a) - termCost(b));

/**
 * Pure: the frontend rules that pick a backend for each request (or connection, in TCP) along the chain.
 * HAProxy evaluates every rule line for every request, so the rules are shaped for few evaluations:
 * routes are written last to first (the last write is the first match, with no "already matched" test),
 * leaves that need no rule of their own go straight to `use_backend`, grouped by backend.
 */
export function chainFrontendRules(upstream: UpstreamState): string[] {
  const chain = upstream.chain;
  if (!chain) return [`    default_backend ${upstream.backends[0]!.name}`];
  const lines: string[] = [];
  const http = isHttpProtocol(upstream.protocol);

  // Named ACLs: a rule line holds at most 64 words in HAProxy 2.6, a route's match can need more.
  const routeConditions = chain.routes.map((route, n) =>
    cheapFirst(routeMatchTerms(route.match)).map((term, k) => {
      const name = `chain_route${n + 1}_${k + 1}`;
      lines.push(`    acl ${name} ${term.test}`);
      return `${term.negated ? "!" : ""}${name}`;
    }),
  );
  for (let n = chain.routes.length - 1; n >= 0; n--) {
    const condition = routeConditions[n]!;
    lines.push(`    http-request set-var(${routeVar}) int(${n + 1})${condition.length ? ` if ${condition.join(" ")}` : ""}`);
  }
  // Routers and splitters exist only in HTTP chains (planDiscoveryChain refuses others).
  if (chain.leaves.some((leaf) => leaf.split)) lines.push(`    http-request set-var(${pickVar}) rand(10000)`);

  const selection = (leaf: ChainLeaf) => [...(leaf.route !== undefined ? [isOneOf(routeVar, [leaf.route + 1])] : []), ...(leaf.split ? [inRange(leaf.split)] : [])];
  const ownRules = (leaf: ChainLeaf) => Boolean(http && leaf.requestTimeoutMs) || Boolean(leaf.split && (hasChanges(leaf.split.requestHeaders) || hasChanges(leaf.split.responseHeaders)));
  const many = chain.leaves.length > 1;
  // A leaf with rules of its own is named by an index, set once; the others need only their backend.
  const named = chain.leaves.flatMap((leaf, n) => (many && ownRules(leaf) ? [n] : []));
  for (const n of named) lines.push(`    http-request set-var(${leafVar}) int(${n + 1}) if ${selection(chain.leaves[n]!).join(" ")}`);

  chain.routes.forEach((route, n) => {
    const condition = isOneOf(routeVar, [n + 1]);
    lines.push(...headerRules("http-request", route.requestHeaders, condition));
    if (route.prefixRewrite !== undefined) lines.push(`    http-request replace-path ${prefixRewrite(route.match, route.prefixRewrite)} if ${condition}`);
    lines.push(...headerRules("http-response", route.responseHeaders, condition));
  });
  const actionsByLeaf = new Map<number, string[]>();
  chain.leaves.forEach((leaf, n) => {
    const actions = [
      ...(leaf.split ? [...headerActions("http-request", leaf.split.requestHeaders), ...headerActions("http-response", leaf.split.responseHeaders)] : []),
      ...(http && leaf.requestTimeoutMs ? [`http-request set-var(${timeoutVar}) int(${Math.round(leaf.requestTimeoutMs)})`] : []),
    ];
    if (!many) lines.push(...actions.map((action) => `    ${action}`));
    else if (actions.length) actionsByLeaf.set(n + 1, actions);
  });
  lines.push(...leafActionRules(actionsByLeaf));

  // Leaves are disjoint, so the order of their use_backend lines does not matter: one line per backend
  // for the leaves it serves, named by index or (without a split) by route. A leaf's failover is its
  // backend's (failoverRelays).
  const byLeaf = new Map<string, number[]>();
  const byRoute = new Map<string, number[]>();
  const add = (map: Map<string, number[]>, backend: string, value: number) => map.set(backend, [...(map.get(backend) ?? []), value]);
  chain.leaves.forEach((leaf, n) => {
    const [backend] = leaf.backends;
    if (!many) return;
    if (named.includes(n)) add(byLeaf, backend!, n + 1);
    else if (leaf.route !== undefined && !leaf.split) add(byRoute, backend!, leaf.route + 1);
    else lines.push(`    use_backend ${backend} if ${selection(leaf).join(" ")}`);
  });
  for (const [backend, leaves] of byLeaf) lines.push(`    use_backend ${backend} if ${isOneOf(leafVar, leaves)}`);
  for (const [backend, routes] of byRoute) lines.push(`    use_backend ${backend} if ${isOneOf(routeVar, routes)}`);
  lines.push(`    default_backend ${chain.leaves[0]!.backends[0]}`);
  return lines;
}

const hasChanges = (changes: HeaderChanges) => changes.add.length + changes.set.length + changes.remove.length > 0;

/**
 * Pure: the relays of failover. A target with failover targets keeps a `backup` server that leads,
 * through an internal frontend, to the first failover target with a usable server. HAProxy picks a
 * backup only once no active server is left, at the moment it assigns the server: so a request
 * routed to the target just before its last instance went away is carried over instead of failing
 * with no server, as a frontend `nbsrv` test would have let it.
 */
export function failoverRelays(upstream: Pick<UpstreamState, "chain" | "name">, paths: Pick<HaproxyPaths, "configFile">): Map<string, { address: string; targets: string[] }> {
  const relays = new Map<string, { address: string; targets: string[] }>();
  for (const leaf of upstream.chain?.leaves ?? []) {
    const [primary, ...targets] = leaf.backends;
    // A target's failover is its resolver's, the same for every leaf that ends there.
    if (!primary || targets.length === 0 || relays.has(primary)) continue;
    // Abstract sockets are per host: the name is unique to this sidecar's configuration and backend.
    const id = createHash("sha256").update(`${paths.configFile}\0${primary}`).digest("hex").slice(0, 20);
    relays.set(primary, { address: `abns@connect-haproxy-failover-${id}`, targets });
  }
  return relays;
}

/** The relay's own frontend: the first failover target with a usable server, else the first (it answers 503). */
function relayFrontend(primary: string, relay: { address: string; targets: string[] }, upstreamMode: "http" | "tcp"): string[] {
  return [
    `frontend ${primary}.failover`,
    `    mode ${upstreamMode}`,
    `    bind ${relay.address} accept-proxy`,
    // The request is logged once, by the upstream's frontend (server "failover").
    "    no log",
    ...relay.targets.slice(0, -1).map((target) => `    use_backend ${target} if { nbsrv(${target}) gt 0 }`),
    `    default_backend ${relay.targets.at(-1)}`,
    "",
  ];
}

function balanceLines(backend: BackendState): string[] {
  const { loadBalancing } = backend;
  // Every algorithm here is dynamic: slots can change address and state at run time.
  if (loadBalancing.algorithm === "hash") return [`    balance hash ${loadBalancing.expression}`, "    hash-type consistent"];
  return [`    balance ${loadBalancing.algorithm}`];
}

export function renderUpstream(upstream: UpstreamState, state: Pick<DesiredState, "paths" | "accessLog">, authorization: boolean): string[] {
  const http = isHttpProtocol(upstream.protocol);
  const relays = failoverRelays(upstream, state.paths);
  const upstreamMode = http ? "http" : "tcp";
  // no-ssl-reuse: a destination must decide every connection. Consul's built-in
  // proxy authorizes in its certificate check, which a resumed TLS session skips;
  // HAProxy 3.0 resumes with it (a deny then never applied: interop.test.ts).
  const meshTls = `ssl crt ${state.paths.leafCertificateFile} ca-file ${state.paths.caRootsFile} verify required no-ssl-reuse`;
  const target = upstream.datacenter ? `${upstream.destinationName} in ${upstream.datacenter}` : upstream.destinationName;
  const shape = upstream.chain?.shape;
  const chainNote = shape && (shape.router || shape.splitter || upstream.backends.length > 1) ? `; discovery chain: ${describeShape(upstream)}` : "";
  const usesTimeout = http && upstream.chain?.leaves.some((leaf) => leaf.requestTimeoutMs);
  const admission = upstreamAdmission(upstream.limits, http);
  const serverOptions = `${meshTls}${meshAlpn(upstream.protocol)}${upstreamServerOptions(admission)}${outlierServerOptions(upstream.passiveHealthCheck, http)}`;
  const lines = [
    `# upstream ${upstream.destinationType === "prepared_query" ? "prepared query " : ""}${target}${chainNote}`,
    `frontend ${upstream.name}`,
    `    mode ${upstreamMode}`,
    `    bind ${hostPort(upstream.bindAddress, upstream.bindPort)}`,
    ...frontendLogLines(state.accessLog, http ? "http" : "tcp", false, [http ? "option httplog" : "option tcplog"]).map((line) => `    ${line}`),
    // A reload answers the next request on an idle kept-alive connection (with
    // Connection: close) instead of closing it under the application's feet
    // (discovery-chain-traffic.test.ts on 3.0.11: "socket hang up" after a reload).
    ...(http ? ["    option idle-close-on-response"] : []),
    ...chainFrontendRules(upstream),
    "",
  ];
  for (const backend of upstream.backends) {
    lines.push(
      `backend ${backend.name}`,
      `    mode ${upstreamMode}`,
      ...balanceLines(backend),
      `    timeout connect ${backend.connectTimeoutMs}ms`,
      // Pooled mTLS: any idle connection to the target serves any request, a new client's first one included
      // (HAProxy's default, safe, gives each client connection its own, so a TLS handshake each). It carries
      // only this sidecar's identity, and the remote sidecar decides every request on it. The remote's
      // listener keeps idle connections far longer than this pool does (haproxy-config.ts), so a request is
      // not sent on a connection the remote is closing.
      ...(http ? ["    http-reuse always"] : []),
      ...(backend.retry ? [`    retries ${backend.retry.retries}`, `    retry-on ${backend.retry.retryOn.join(" ")}`] : []),
      // set-timeout is a backend action in 2.6: the frontend's rules leave the chain's timeout in a variable.
      ...(usesTimeout ? [`    http-request set-timeout server var(${timeoutVar}) if { var(${timeoutVar}) -m found }`] : []),
      ...upstreamAdmissionLines(admission, http),
      ...(authorization && backend.service ? upstreamIdentityRules(backend.service, upstreamMode, state.paths.serverPassMap, relays.has(backend.name)) : []),
      ...backend.slots.map((slot) =>
        slot.instance
          ? `    server ${slot.name} ${hostPort(slot.instance.address, slot.instance.port)} ${serverOptions}`
          : `    server ${slot.name} ${freeSlotAddress} ${serverOptions} disabled`,
      ),
      // Plain, inside this process; PROXY protocol keeps the client's address for the target's balance.
      ...(relays.has(backend.name) ? [`    server ${failoverServer} ${relays.get(backend.name)!.address} backup send-proxy-v2${upstream.protocol === "http2" || upstream.protocol === "grpc" ? " proto h2" : ""}`] : []),
      "",
    );
  }
  for (const [primary, relay] of relays) lines.push(...relayFrontend(primary, relay, upstreamMode));
  return lines;
}

/** Pure: e.g. "router (4 routes) → splitter → 3 targets". */
export function describeShape(upstream: Pick<UpstreamState, "chain" | "backends">): string {
  const shape = upstream.chain?.shape;
  if (!shape) return "none";
  const parts = [
    ...(shape.router ? [`router (${upstream.chain!.routes.length} routes)`] : []),
    ...(shape.splitter ? ["splitter"] : []),
    `${upstream.backends.length} backend${upstream.backends.length === 1 ? "" : "s"}`,
  ];
  return parts.join(" → ");
}

/**
 * Per connection (per response in HTTP, by a map lookup once verified), the server's certificate must name
 * the target's service: `verify required` checks only the chain. Response
 * rules run before a response byte is forwarded to the client (but after the
 * client's first bytes reached the server). The inspect-delay only lets the
 * action yield (a lazy trust-domain lookup); it adds no wait. Prepared queries
 * name their service only in their reply, which may change without a reload:
 * they keep the per-instance check alone.
 */
function upstreamIdentityRules(service: string, upstreamMode: "tcp" | "http", serverPassMap: string, relayed: boolean): string[] {
  // The failover relay is this process: the backend it leads to checks its own target's identity.
  const relay = `{ srv_name ${failoverServer} }`;
  if (upstreamMode === "http") {
    // A certificate the action verified for this service passes by its fingerprint (lua-src/request-passes.ts).
    return [
      ...(relayed ? [`    http-response set-var(txn.connect_upstream_ok) int(1) if ${relay}`] : []),
      `    http-response set-var(txn.connect_upstream_ok) int(1) if { ssl_s_sha1,hex,map(${serverPassMap}) -m str ${service} }`,
      `    http-response lua.connect_verify_upstream ${service} unless { var(txn.connect_upstream_ok) -m found }`,
      "    http-response deny unless { var(txn.connect_upstream_ok) -m bool }",
    ];
  }
  return [
    `    tcp-response inspect-delay ${verifyInspectDelay}`,
    ...(relayed ? [`    tcp-response content accept if ${relay}`] : []),
    `    tcp-response content lua.connect_verify_upstream ${service}`,
    "    tcp-response content reject unless { var(txn.connect_upstream_ok) -m bool }",
  ];
}
