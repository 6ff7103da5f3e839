// Pure: a destination's L7 intentions → haproxy.cfg rules that decide the
// requests they govern without Lua. A Lua action costs HAProxy 2.6 several µs
// per request before it does anything (bench/l7-haproxy.mjs); these rules cost
// a few ACL evaluations.
//
// The rules are a cache of what the authorizer decides (lua-src/intentions.ts
// is the reference, docs/standalone.md its semantics), used only while it is
// current:
//   - guarded by the entry `l7` in the pass map, which only the authorizer
//     sets, when the controller asks (`connect l7-rules current <service>
//     <index>`: the rules were rendered from the list at <index>) and its own
//     list is at that same index; it removes the entry on every flush (an
//     intention, default-policy or trust-domain change, or the controller's
//     `connect cache flush`), so from the first change on every request runs
//     the action again, until the controller confirms rules for the new list
//     (the same rules: at once; new ones: after a reload);
//   - only for connections whose identity the action verified (it sets
//     sess.connect_src, for sources in the default namespace and partition);
//   - only for paths that need no normalization check (no "%" or backslash);
//   - only for what they can express exactly. A request they do not decide
//     (a source an L4 intention governs, no permission matched: the default
//     policy, a permission they cannot express, a repeated header) runs the
//     action, which decides it as before.
import type { Intention } from "./consul-replies.js";

/** The pass map's entry that says the native rules are current. */
export const NATIVE_GUARD_KEY = "l7";

/**
 * A path that needs no normalization check (no "%", no backslash): only such
 * paths are decided in haproxy.cfg (passes and these rules); the rest go to
 * the authorizer, which refuses what cannot be normalized safely.
 */
export const PLAIN_PATH = "{ path -m beg / } !{ path -m sub % \\\\ }";

/** Suffixes of txn.connect_reason that carry a native verdict. */
const ALLOW_MARK = ": allow [haproxy.cfg]";
const DENY_MARK = ": deny [haproxy.cfg]";

export interface NativeL7 {
  /** The rules, in order, for the public frontend (no indentation); empty when none apply. */
  lines: string[];
  /** The Consul index of the intentions they were rendered from (what the authorizer must have to enable them). */
  index: number;
  /** Intentions that govern some source and were left to the action, with why (for the log). */
  leftToLua: string[];
}

type Json = Record<string, unknown>;

const isObject = (value: unknown): value is Json => typeof value === "object" && value !== null && !Array.isArray(value);
const text = (value: unknown): string => (typeof value === "string" ? value : "");

/** A value HAProxy reads literally between single quotes (no quote, no control character, not empty). */
function quotable(value: string): boolean {
  return value !== "" && !/['\u0000-\u001f\u007f]/.test(value);
}

const quote = (value: string) => `'${value}'`;

/**
 * PCRE2 with the authorizer's anchoring (lua-src/intentions.ts anchorPattern:
 * RE2 full match, `\z` because `$` also matches before a final newline); only
 * patterns of common characters that JavaScript also compiles, so that a
 * pattern HAProxy might reject never reaches `haproxy -c`.
 */
function anchoredRegex(pattern: string): string | undefined {
  if (!quotable(pattern) || !/^[A-Za-z0-9_\-./\[\]()*+?|^$:{},\\ =@!&~#%]+$/.test(pattern)) return undefined;
  try {
    new RegExp(pattern);
  } catch {
    return undefined;
  }
  return `^(?:${pattern})\\z`;
}

const HEADER_KEYS = new Set(["Name", "Present", "Exact", "Prefix", "Suffix", "Contains", "Regex", "IgnoreCase", "Invert"]);
const HTTP_KEYS = new Set(["PathExact", "PathPrefix", "PathRegex", "Header", "Methods"]);
const PERMISSION_KEYS = new Set(["Action", "HTTP"]);

/** One header rule as ACL conditions, or undefined when it cannot be expressed exactly. */
function headerConditions(raw: unknown): { name: string; conditions: string[] } | undefined {
  if (!isObject(raw) || Object.keys(raw).some((key) => !HEADER_KEYS.has(key))) return undefined;
  const name = text(raw.Name).toLowerCase();
  if (!/^[a-z0-9-]+$/.test(name)) return undefined;
  const invert = raw.Invert === true;
  const present = `{ req.fhdr_cnt(${name}) gt 0 }`;
  // Consul's order of precedence among match types (as the authorizer reads them).
  const kinds: [string, string][] = [["Exact", "str"], ["Regex", "reg"], ["Prefix", "beg"], ["Suffix", "end"], ["Contains", "sub"]];
  for (const [key, match] of kinds) {
    const value = text(raw[key]);
    if (value === "") continue;
    let pattern: string | undefined = value;
    if (match === "reg") pattern = anchoredRegex(value);
    else if (!quotable(value)) pattern = undefined;
    if (pattern === undefined) return undefined;
    // Envoy ignores IgnoreCase on regexes.
    const flags = raw.IgnoreCase === true && match !== "reg" ? " -i" : "";
    const test = `{ req.fhdr(${name}) -m ${match}${flags} ${quote(pattern)} }`;
    // A missing header matches no rule but an inverted Present (Envoy's rule).
    return { name, conditions: invert ? [present, `!${test}`] : [test] };
  }
  if (raw.Present === true) return { name, conditions: [invert ? `{ req.fhdr_cnt(${name}) eq 0 }` : present] };
  return undefined;
}

/** One permission: its action and ACL conditions (all must hold), or undefined when not expressible. */
function permissionConditions(raw: unknown): { allow: boolean; conditions: string[]; headers: string[] } | undefined {
  if (!isObject(raw) || Object.keys(raw).some((key) => !PERMISSION_KEYS.has(key))) return undefined;
  const action = text(raw.Action);
  if (action !== "allow" && action !== "deny") return undefined;
  const conditions: string[] = [];
  const headers: string[] = [];
  const http = raw.HTTP;
  if (http !== undefined && http !== null) {
    if (!isObject(http) || Object.keys(http).some((key) => !HTTP_KEYS.has(key))) return undefined;
    const exact = text(http.PathExact);
    const prefix = text(http.PathPrefix);
    const regex = text(http.PathRegex);
    if (exact !== "") {
      if (!quotable(exact)) return undefined;
      conditions.push(`{ path -m str ${quote(exact)} }`);
    } else if (prefix !== "") {
      if (!quotable(prefix)) return undefined;
      conditions.push(`{ path -m beg ${quote(prefix)} }`);
    } else if (regex !== "") {
      const pattern = anchoredRegex(regex);
      if (pattern === undefined) return undefined;
      conditions.push(`{ path -m reg ${quote(pattern)} }`);
    }
    if (http.Methods !== undefined && http.Methods !== null) {
      if (!Array.isArray(http.Methods)) return undefined;
      if (http.Methods.length > 0) {
        if (!http.Methods.every((method) => typeof method === "string" && /^[A-Z]+$/.test(method))) return undefined;
        conditions.push(`{ method -m str ${(http.Methods as string[]).join(" ")} }`);
      }
    }
    if (http.Header !== undefined && http.Header !== null) {
      if (!Array.isArray(http.Header)) return undefined;
      for (const rule of http.Header) {
        const header = headerConditions(rule);
        if (header === undefined) return undefined;
        conditions.push(...header.conditions);
        headers.push(header.name);
      }
    }
  }
  return { allow: action === "allow", conditions, headers };
}

/** Whether an intention can match a client of this cluster's default namespace and partition. */
function matchesLocalDefaultClients(intention: Intention): boolean {
  const blankOr = (value: string | undefined, ...allowed: string[]) => value === undefined || value === "" || allowed.includes(value);
  return (
    blankOr(intention.SourceNS, "default", "*") &&
    blankOr(intention.SourcePartition, "default", "*") &&
    blankOr(intention.SourcePeer) &&
    blankOr(intention.SourceSamenessGroup) &&
    blankOr(intention.SourceType, "consul")
  );
}

/**
 * Rules for the intentions governing `service`'s clients, in precedence order
 * (the first intention whose source matches governs; an L7 one decides by its
 * first matching permission; none matched: the default policy, left to the action).
 */
export function nativeL7Rules(intentions: Intention[], service: string, index: number, passMap: string): NativeL7 {
  const lines: string[] = [];
  const leftToLua: string[] = [];
  const earlierNames: string[] = [];
  let governing = 0;
  for (const intention of intentions) {
    if (!matchesLocalDefaultClients(intention)) continue;
    const source = intention.SourceName;
    const wildcard = source === "*";
    const label = `${source} => ${service}`;
    const permissions = Array.isArray(intention.Permissions) ? intention.Permissions : [];
    // Governed already by an earlier intention (e.g. `web => *` after `web => api`).
    if (!wildcard && earlierNames.includes(source)) continue;
    if (!wildcard && !/^[A-Za-z0-9_.-]+$/.test(source)) {
      // Not comparable safely: stop, so that no later rule claims a source this one governs.
      leftToLua.push(`${label}: its source name, and every intention after it`);
      break;
    }
    if (permissions.length > 0 && intention.JWT === undefined) {
      const compiled = permissions.map(permissionConditions);
      const usable = compiled.findIndex((permission) => permission === undefined);
      const rendered = (usable === -1 ? compiled : compiled.slice(0, usable)) as NonNullable<(typeof compiled)[number]>[];
      if (usable !== -1) leftToLua.push(`${label}: permission ${usable + 1} and after`);
      if (rendered.length > 0) {
        governing++;
        const who = wildcard
          ? ["{ var(sess.connect_src) -m found }", ...(earlierNames.length ? [`!{ var(sess.connect_src) -m str ${earlierNames.join(" ")} }`] : [])]
          : [`{ var(sess.connect_src) -m str ${source} }`];
        // A repeated header is matched on all its values joined (Envoy): left to the action.
        const single = [...new Set(rendered.flatMap((permission) => permission.headers))].map((name) => `{ req.fhdr_cnt(${name}) le 1 }`);
        const current = `{ str(${NATIVE_GUARD_KEY}),map(${passMap}) -m found }`;
        lines.push(`http-request set-var(txn.connect_l7) int(${governing}) if !{ var(txn.connect_allowed) -m found } ${current} ${PLAIN_PATH} ${[...who, ...single].join(" ")}`);
        rendered.forEach((permission, n) => {
          const verdict = `L7 intention ${label} permission ${n + 1}${permission.allow ? ALLOW_MARK : DENY_MARK}`;
          lines.push(`http-request set-var(txn.connect_reason) "str(${verdict})" if { var(txn.connect_l7) -m int ${governing} } !{ var(txn.connect_reason) -m found } ${permission.conditions.join(" ")}`.trimEnd());
        });
      }
    } else if (permissions.length > 0) {
      leftToLua.push(`${label}: JWT`);
    }
    if (wildcard) break;
    earlierNames.push(source);
  }
  if (lines.length > 0) {
    lines.push(
      `http-request set-var(txn.connect_allowed) int(1) if { var(txn.connect_l7) -m found } { var(txn.connect_reason) -m end '${ALLOW_MARK}' }`,
      `http-request set-var(txn.connect_allowed) int(0) if { var(txn.connect_l7) -m found } { var(txn.connect_reason) -m end '${DENY_MARK}' }`,
    );
  }
  return { lines, index, leftToLua };
}
