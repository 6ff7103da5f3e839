// Pure: one upstream → its haproxy.cfg sections: a frontend on the local bind
// address that follows the discovery chain (routes, splits, failover) with
// request variables and `use_backend` rules, and one backend per chain target
// with its server slots. Failover is decided per request from `nbsrv`, so a
// target losing or regaining instances (runtime `set server`) needs no reload.
import type { DesiredState, BackendState, UpstreamState } from "./desired-state.js";
import type { ChainLeaf, HeaderChanges } from "./discovery-chain.js";
import type { RouteHttpMatch } from "./consul-replies.js";
import { isHttpProtocol, type ProxyProtocol } from "./sidecar-spec.js";

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

function headerRules(direction: "http-request" | "http-response", changes: HeaderChanges, condition: string): string[] {
  const when = condition ? ` if ${condition}` : "";
  // Envoy removes first, then appends (Add), then overwrites (Set).
  return [
    ...changes.remove.map((name) => `    ${direction} del-header ${name}${when}`),
    ...changes.add.map(([name, value]) => `    ${direction} add-header ${name} ${logFormat(value)}${when}`),
    ...changes.set.map(([name, value]) => `    ${direction} set-header ${name} ${logFormat(value)}${when}`),
  ];
}

const isEq = (variable: string, n: number) => `{ var(${variable}) -m int eq ${n} }`;

/** Pure: the frontend rules that pick a backend for each request (or connection, in TCP) along the chain. */
export function chainFrontendRules(upstream: UpstreamState): string[] {
  const chain = upstream.chain;
  if (!chain) return [`    default_backend ${upstream.backends[0]!.name}`];
  const lines: string[] = [];
  const http = isHttpProtocol(upstream.protocol);
  const many = chain.leaves.length > 1;
  const leafCondition = (n: number) => (many ? isEq(leafVar, n + 1) : "");

  chain.routes.forEach((route, n) => {
    // Named ACLs: a rule line holds at most 64 words in HAProxy 2.6, a route's match can need more.
    const terms = routeMatchTerms(route.match).map((term, k) => {
      const name = `chain_route${n + 1}_${k + 1}`;
      lines.push(`    acl ${name} ${term.test}`);
      return `${term.negated ? "!" : ""}${name}`;
    });
    const condition = [...(n === 0 ? [] : [`!{ var(${routeVar}) -m found }`]), ...terms];
    lines.push(`    http-request set-var(${routeVar}) int(${n + 1})${condition.length ? ` if ${condition.join(" ")}` : ""}`);
  });
  // Routers and splitters exist only in HTTP chains (planDiscoveryChain refuses others).
  if (chain.leaves.some((leaf) => leaf.split)) lines.push(`    http-request set-var(${pickVar}) rand(10000)`);
  if (many) {
    chain.leaves.forEach((leaf, n) => {
      const terms = [
        ...(leaf.route !== undefined ? [isEq(routeVar, leaf.route + 1)] : []),
        ...(leaf.split ? [`{ var(${pickVar}) -m int ge ${leaf.split.from} }`, `{ var(${pickVar}) -m int lt ${leaf.split.to} }`] : []),
      ];
      lines.push(`    http-request set-var(${leafVar}) int(${n + 1}) if ${terms.join(" ")}`);
    });
  }
  chain.routes.forEach((route, n) => {
    const condition = isEq(routeVar, n + 1);
    lines.push(...headerRules("http-request", route.requestHeaders, condition));
    if (route.prefixRewrite !== undefined) lines.push(`    http-request replace-path ${prefixRewrite(route.match, route.prefixRewrite)} if ${condition}`);
    lines.push(...headerRules("http-response", route.responseHeaders, condition));
  });
  chain.leaves.forEach((leaf, n) => {
    if (leaf.split) lines.push(...headerRules("http-request", leaf.split.requestHeaders, leafCondition(n)), ...headerRules("http-response", leaf.split.responseHeaders, leafCondition(n)));
    if (http && leaf.requestTimeoutMs) lines.push(`    http-request set-var(${timeoutVar}) int(${Math.round(leaf.requestTimeoutMs)})${many ? ` if ${leafCondition(n)}` : ""}`);
  });
  chain.leaves.forEach((leaf, n) => lines.push(...backendChoice(leaf, leafCondition(n))));
  lines.push(`    default_backend ${chain.leaves[0]!.backends[0]}`);
  return lines;
}

/** A leaf's target, else its failover targets in order: the first with a usable server takes the request. */
function backendChoice(leaf: ChainLeaf, condition: string): string[] {
  const prefix = condition ? `${condition} ` : "";
  if (leaf.backends.length === 1) return condition ? [`    use_backend ${leaf.backends[0]} if ${condition}`] : [];
  return [
    ...leaf.backends.map((backend) => `    use_backend ${backend} if ${prefix}{ nbsrv(${backend}) gt 0 }`),
    // None has a usable server: the primary answers (503), as Envoy's would.
    ...(condition ? [`    use_backend ${leaf.backends[0]} if ${condition}`] : []),
  ];
}

function balanceLines(backend: BackendState): string[] {
  const { loadBalancing } = backend;
  // Every algorithm here is dynamic: slots can change address and state at run time.
  if (loadBalancing.algorithm === "hash") return [`    balance hash ${loadBalancing.expression}`, "    hash-type consistent"];
  return [`    balance ${loadBalancing.algorithm}`];
}

export function renderUpstream(upstream: UpstreamState, state: Pick<DesiredState, "paths">, authorization: boolean): string[] {
  const http = isHttpProtocol(upstream.protocol);
  const upstreamMode = http ? "http" : "tcp";
  // no-ssl-reuse: a destination must decide every connection. Consul's built-in
  // proxy authorizes in its certificate check, which a resumed TLS session skips;
  // HAProxy 3.0 resumes with it (a deny then never applied: interop.test.ts).
  const meshTls = `ssl crt ${state.paths.leafCertificateFile} ca-file ${state.paths.caRootsFile} verify required no-ssl-reuse`;
  const target = upstream.datacenter ? `${upstream.destinationName} in ${upstream.datacenter}` : upstream.destinationName;
  const shape = upstream.chain?.shape;
  const chainNote = shape && (shape.router || shape.splitter || upstream.backends.length > 1) ? `; discovery chain: ${describeShape(upstream)}` : "";
  const usesTimeout = http && upstream.chain?.leaves.some((leaf) => leaf.requestTimeoutMs);
  const lines = [
    `# upstream ${upstream.destinationType === "prepared_query" ? "prepared query " : ""}${target}${chainNote}`,
    `frontend ${upstream.name}`,
    `    mode ${upstreamMode}`,
    `    bind ${hostPort(upstream.bindAddress, upstream.bindPort)}`,
    http ? "    option httplog" : "    option tcplog",
    ...chainFrontendRules(upstream),
    "",
  ];
  for (const backend of upstream.backends) {
    lines.push(
      `backend ${backend.name}`,
      `    mode ${upstreamMode}`,
      ...balanceLines(backend),
      `    timeout connect ${backend.connectTimeoutMs}ms`,
      ...(backend.retry ? [`    retries ${backend.retry.retries}`, `    retry-on ${backend.retry.retryOn.join(" ")}`] : []),
      // set-timeout is a backend action in 2.6: the frontend's rules leave the chain's timeout in a variable.
      ...(usesTimeout ? [`    http-request set-timeout server var(${timeoutVar}) if { var(${timeoutVar}) -m found }`] : []),
      ...(authorization && backend.service ? upstreamIdentityRules(backend.service, upstreamMode, state.paths.serverPassMap) : []),
      ...backend.slots.map((slot) =>
        slot.instance
          ? `    server ${slot.name} ${hostPort(slot.instance.address, slot.instance.port)} ${meshTls}${meshAlpn(upstream.protocol)}`
          : `    server ${slot.name} ${freeSlotAddress} ${meshTls}${meshAlpn(upstream.protocol)} disabled`,
      ),
      "",
    );
  }
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
function upstreamIdentityRules(service: string, upstreamMode: "tcp" | "http", serverPassMap: string): string[] {
  if (upstreamMode === "http") {
    // A certificate the action verified for this service passes by its fingerprint (lua-src/request-passes.ts).
    return [
      `    http-response set-var(txn.connect_upstream_ok) int(1) if { ssl_s_sha1,hex,map(${serverPassMap}) -m str ${service} }`,
      `    http-response lua.connect_verify_upstream ${service} unless { var(txn.connect_upstream_ok) -m found }`,
      "    http-response deny unless { var(txn.connect_upstream_ok) -m bool }",
    ];
  }
  return [
    `    tcp-response inspect-delay ${verifyInspectDelay}`,
    `    tcp-response content lua.connect_verify_upstream ${service}`,
    "    tcp-response content reject unless { var(txn.connect_upstream_ok) -m bool }",
  ];
}
