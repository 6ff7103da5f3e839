// A destination's intention list, as `/v1/connect/intentions/match?by=destination`
// returns it (highest precedence first), compiled once per change into what a
// request decision needs: sources to match, permissions with their regexes
// compiled, and every reason and label written out in advance, so that a
// decision allocates nothing. Pure: the regex engine is injected.
//
// Semantics (Consul 1.22 agent/xds/rbac.go convertPermission, agent/connect/authz.go
// IntentionMatch), proved by test/lua/l7_intentions_spec.lua:
// - a permission holds when all its parts hold (path, every header rule, methods);
// - paths and header regexes match the whole string (Envoy: RE2 full match);
// - a header rule picks the first of Exact, Regex, Prefix, Suffix, Contains,
//   Present; IgnoreCase applies to Exact/Prefix/Suffix/Contains; Invert negates,
//   except that a missing header matches only `Present` with `Invert`;
// - Methods: the request's method is one of them.
// What this code cannot enforce (a JWT requirement, a match type a newer Consul
// added, a rule with no match type, a regex the engine refuses) makes the
// permission or intention "unusable": a request it would decide is refused.

import { jsonNull } from "./json";

const lower = string.lower;
const format = string.format;
const find = string.find;
const sub = string.sub;

/** A compiled regex (HAProxy's `Regex` object, or the busted stub): colon-called. */
export interface CompiledRegex {
  exec(subject: string): boolean;
}

/** Compiles `pattern` (already anchored) case-sensitively; nil and why when it cannot. */
export type RegexCompiler = (this: void, pattern: string) => LuaMultiReturn<[CompiledRegex | undefined, string | undefined]>;

export const PATH_ANY = 0;
export const PATH_EXACT = 1;
export const PATH_PREFIX = 2;
export const PATH_REGEX = 3;

export const HEADER_EXACT = 1;
export const HEADER_REGEX = 2;
export const HEADER_PREFIX = 3;
export const HEADER_SUFFIX = 4;
export const HEADER_CONTAINS = 5;
export const HEADER_PRESENT = 6;

export interface HeaderRule {
  /** Lowercased (HAProxy hands header names lowercased). */
  name: string;
  kind: number;
  /** Lowercased when ignoreCase. */
  value: string;
  ignoreCase: boolean;
  invert: boolean;
  regex: CompiledRegex | undefined;
}

export interface Permission {
  allow: boolean;
  pathKind: number;
  path: string;
  pathRegex: CompiledRegex | undefined;
  /** nil when the permission has no header rule. */
  headers: HeaderRule[] | undefined;
  /** Method → true; nil when any method. */
  methods: LuaTable<string, boolean> | undefined;
  /** Set when the permission cannot be enforced: reaching it refuses the request. */
  problem: string | undefined;
  /** 1-based, as the log says "permission 2". */
  position: number;
  /** The decision's reason, written once: "L7 intention web => api (precedence 9), permission 2: deny". */
  reason: string;
}

export interface Intention {
  sourceName: string;
  sourceNamespace: string;
  sourcePartition: string;
  /** Set for peered or sameness-group sources: never matches a local client. */
  remoteOnly: boolean;
  /** L4 verdict (no permissions). */
  allow: boolean;
  precedence: number;
  /** nil for an L4 intention. */
  permissions: Permission[] | undefined;
  /** True when some permission has a header rule (headers are read only then). */
  usesHeaders: boolean;
  /** Set when the intention itself cannot be enforced (e.g. JWT): requests it governs are refused. */
  problem: string | undefined;
  /** "default/web => default/api (precedence 9)". */
  label: string;
  /** Reason of its L4 verdict, or of "no permission matched" (the default policy's words are added). */
  reason: string;
  /** The last default-policy reason seen, and `reason` + it: made once per default, not per request. */
  defaultReasonSeen: string;
  noPermissionReason: string;
}

export interface IntentionList {
  target: string;
  intentions: Intention[];
  /** A local source `*` in the default namespace: every local client matches something. */
  hasLocalWildcard: boolean;
}

const HTTP_KEYS = new LuaTable<string, boolean>();
for (const key of ["PathExact", "PathPrefix", "PathRegex", "Header", "Methods"]) HTTP_KEYS.set(key, true);
const HEADER_KEYS = new LuaTable<string, boolean>();
for (const key of ["Name", "Present", "Exact", "Prefix", "Suffix", "Contains", "Regex", "Invert", "IgnoreCase"]) HEADER_KEYS.set(key, true);
const PERMISSION_KEYS = new LuaTable<string, boolean>();
for (const key of ["Action", "HTTP", "JWT"]) PERMISSION_KEYS.set(key, true);

/** RE2 full match on PCRE2: anchored at both ends; `\z` because PCRE2's `$` also matches before a final newline. */
export function anchorPattern(pattern: string): string {
  return "^(?:" + pattern + ")\\z";
}

function stringField(object: LuaTable<string, unknown>, key: string): string {
  const value = object.get(key);
  return typeof value === "string" ? value : "";
}

/** Neither absent nor JSON null. */
function present(value: unknown): boolean {
  return value !== undefined && value !== jsonNull;
}

function isObject(value: unknown): value is LuaTable<string, unknown> {
  return type(value) === "table";
}

/** The first key of `object` not in `known`, if any (a field from a newer Consul). */
function unknownKey(object: LuaTable<string, unknown>, known: LuaTable<string, boolean>): string | undefined {
  for (const [key, value] of pairs(object)) {
    if (typeof key !== "string" || known.get(key) !== true) {
      // JSON null and false/empty values of unknown fields change nothing.
      if (value === false || value === "" || value === jsonNull) continue;
      return tostring(key);
    }
  }
  return undefined;
}

function arrayOf(value: unknown): LuaTable<number, unknown> | undefined {
  if (!isObject(value)) return undefined;
  // The decoder makes JSON objects and arrays both tables: one with a string key was an object.
  for (const [key] of value as unknown as LuaTable<AnyNotNil, unknown>) if (type(key) !== "number") return undefined;
  return value as unknown as LuaTable<number, unknown>;
}

function lengthOf(array: LuaTable<number, unknown>): number {
  return (array as unknown as unknown[]).length;
}

function compileRegex(compile: RegexCompiler, pattern: string, what: string): LuaMultiReturn<[CompiledRegex | undefined, string | undefined]> {
  const [ok, compiled, compileError] = protect(compile, anchorPattern(pattern));
  if (!ok) return $multi(undefined, format("%s regex %q cannot be compiled: %s", what, pattern, tostring(compiled)));
  if (compiled === undefined) return $multi(undefined, format("%s regex %q cannot be compiled: %s", what, pattern, tostring(compileError)));
  return $multi(compiled as CompiledRegex, undefined);
}

function compileHeader(raw: unknown, compile: RegexCompiler): LuaMultiReturn<[HeaderRule | undefined, string | undefined]> {
  if (!isObject(raw)) return $multi(undefined, "a header rule is not an object");
  const extra = unknownKey(raw, HEADER_KEYS);
  if (extra !== undefined) return $multi(undefined, format("header rule with unknown field %q (newer Consul?)", extra));
  const name = stringField(raw, "Name");
  if (name === "") return $multi(undefined, "header rule without a Name");
  const ignoreCase = raw.get("IgnoreCase") === true;
  const rule: HeaderRule = { name: lower(name), kind: 0, value: "", ignoreCase, invert: raw.get("Invert") === true, regex: undefined };
  // Consul's order of precedence (rbac.go): Exact, Regex, Prefix, Suffix, Contains, Present.
  let value = stringField(raw, "Exact");
  if (value !== "") rule.kind = HEADER_EXACT;
  else if ((value = stringField(raw, "Regex")) !== "") rule.kind = HEADER_REGEX;
  else if ((value = stringField(raw, "Prefix")) !== "") rule.kind = HEADER_PREFIX;
  else if ((value = stringField(raw, "Suffix")) !== "") rule.kind = HEADER_SUFFIX;
  else if ((value = stringField(raw, "Contains")) !== "") rule.kind = HEADER_CONTAINS;
  else if (raw.get("Present") === true) rule.kind = HEADER_PRESENT;
  else return $multi(undefined, format("header rule on %q has no match type", name));
  if (rule.kind === HEADER_REGEX) {
    // Envoy ignores IgnoreCase on regexes; so do we.
    rule.ignoreCase = false;
    const [regex, regexError] = compileRegex(compile, value, "header " + name);
    if (regex === undefined) return $multi(undefined, regexError);
    rule.regex = regex;
  }
  rule.value = rule.ignoreCase ? lower(value) : value;
  return $multi(rule, undefined);
}

function compilePermission(raw: unknown, position: number, label: string, compile: RegexCompiler): Permission {
  const permission: Permission = {
    allow: false, pathKind: PATH_ANY, path: "", pathRegex: undefined, headers: undefined, methods: undefined,
    problem: undefined, position, reason: "",
  };
  const fail = (why: string): Permission => {
    permission.allow = false;
    permission.problem = why;
    permission.reason = format("L7 intention %s, permission %d cannot be enforced here: %s", label, position, why);
    return permission;
  };
  if (!isObject(raw) || (raw as unknown) === jsonNull) return fail("not an object");
  const extra = unknownKey(raw, PERMISSION_KEYS);
  if (extra !== undefined) return fail(format("unknown field %q (newer Consul?)", extra));
  const action = stringField(raw, "Action");
  if (action !== "allow" && action !== "deny") return fail(format("unknown action %q", action));
  permission.allow = action === "allow";
  if (present(raw.get("JWT"))) return fail("it requires a JWT, which the authorizer cannot verify");
  const http = raw.get("HTTP");
  if (present(http)) {
    if (!isObject(http)) return fail("HTTP is not an object");
    const httpExtra = unknownKey(http, HTTP_KEYS);
    if (httpExtra !== undefined) return fail(format("unknown HTTP match %q (newer Consul?)", httpExtra));
    let path = stringField(http, "PathExact");
    if (path !== "") permission.pathKind = PATH_EXACT;
    else if ((path = stringField(http, "PathPrefix")) !== "") permission.pathKind = PATH_PREFIX;
    else if ((path = stringField(http, "PathRegex")) !== "") {
      permission.pathKind = PATH_REGEX;
      const [regex, regexError] = compileRegex(compile, path, "path");
      if (regex === undefined) return fail(regexError as string);
      permission.pathRegex = regex;
    }
    permission.path = path;
    const headers = http.get("Header");
    if (present(headers)) {
      const array = arrayOf(headers);
      if (array === undefined) return fail("Header is not a list");
      const count = lengthOf(array);
      if (count > 0) {
        const rules: HeaderRule[] = [];
        for (let i = 1; i <= count; i++) {
          const [rule, ruleError] = compileHeader(array.get(i), compile);
          if (rule === undefined) return fail(ruleError as string);
          rules.push(rule);
        }
        permission.headers = rules;
      }
    }
    const methods = http.get("Methods");
    if (present(methods)) {
      const array = arrayOf(methods);
      if (array === undefined) return fail("Methods is not a list");
      const count = lengthOf(array);
      if (count > 0) {
        const set = new LuaTable<string, boolean>();
        for (let i = 1; i <= count; i++) {
          const method = array.get(i);
          if (typeof method !== "string" || method === "") return fail("a method is not a string");
          set.set(method, true);
        }
        permission.methods = set;
      }
    }
  }
  permission.reason = format("L7 intention %s, permission %d: %s", label, position, action);
  return permission;
}

function compileIntention(raw: LuaTable<string, unknown>, compile: RegexCompiler): Intention {
  const sourceName = stringField(raw, "SourceName");
  const sourceNamespace = stringField(raw, "SourceNS");
  const sourcePartition = stringField(raw, "SourcePartition");
  const precedenceValue = raw.get("Precedence");
  const precedence = typeof precedenceValue === "number" ? precedenceValue : 0;
  const label = format("%s/%s => %s/%s (precedence %d)",
    sourceNamespace === "" ? "default" : sourceNamespace, sourceName,
    stringField(raw, "DestinationNS") === "" ? "default" : stringField(raw, "DestinationNS"), stringField(raw, "DestinationName"), precedence);
  const remoteOnly = stringField(raw, "SourcePeer") !== "" || stringField(raw, "SourceSamenessGroup") !== "" ||
    (stringField(raw, "SourceType") !== "" && stringField(raw, "SourceType") !== "consul");
  const intention: Intention = {
    sourceName, sourceNamespace: sourceNamespace === "" ? "default" : sourceNamespace,
    sourcePartition: sourcePartition === "" ? "default" : sourcePartition,
    remoteOnly, allow: false, precedence, permissions: undefined, usesHeaders: false, problem: undefined, label, reason: "",
    defaultReasonSeen: "", noPermissionReason: "",
  };
  if (sourceName === "") {
    intention.problem = "an intention without a SourceName";
  }
  const rawPermissions = raw.get("Permissions");
  const permissionArray = present(rawPermissions) ? arrayOf(rawPermissions) : undefined;
  const permissionCount = permissionArray !== undefined ? lengthOf(permissionArray) : 0;
  if (present(rawPermissions) && permissionArray === undefined) intention.problem = "Permissions is not a list";
  if (present(raw.get("JWT"))) intention.problem = "it requires a JWT, which the authorizer cannot verify";
  if (permissionCount === 0) {
    const action = stringField(raw, "Action");
    if (action !== "allow" && action !== "deny" && intention.problem === undefined) intention.problem = format("unknown action %q", action);
    intention.allow = action === "allow";
    intention.reason = format("L4 intention %s: %s", label, action);
  } else {
    const permissions: Permission[] = [];
    for (let i = 1; i <= permissionCount; i++) {
      const permission = compilePermission((permissionArray as LuaTable<number, unknown>).get(i), i, label, compile);
      if (permission.headers !== undefined) intention.usesHeaders = true;
      permissions.push(permission);
    }
    intention.permissions = permissions;
    intention.reason = format("L7 intention %s: no permission matched", label);
  }
  if (intention.problem !== undefined) intention.reason = format("intention %s cannot be enforced here: %s", label, intention.problem);
  return intention;
}

/**
 * Compiles the decoded reply of the match endpoint for `target`: an object
 * whose member `target` is the list. Returns the list, or nil and why (the
 * whole reply unusable; a single bad rule only marks that rule).
 */
export function compileIntentionList(decoded: unknown, target: string, compile: RegexCompiler): LuaMultiReturn<[IntentionList | undefined, string | undefined]> {
  if (!isObject(decoded)) return $multi(undefined, "intention match reply is not an object");
  const rawList = decoded.get(target);
  // Consul names every destination asked about, with null or [] when none match: a reply without it is not Consul's.
  if (rawList === undefined) return $multi(undefined, format("intention match reply has no list for %s", target));
  const list: IntentionList = { target, intentions: [], hasLocalWildcard: false };
  if (!present(rawList)) return $multi(list, undefined);
  const array = arrayOf(rawList);
  if (array === undefined) return $multi(undefined, "intention match reply: the list is not an array");
  const count = lengthOf(array);
  for (let i = 1; i <= count; i++) {
    const raw = array.get(i);
    if (!isObject(raw)) return $multi(undefined, format("intention match reply: entry %d is not an object", i));
    const intention = compileIntention(raw, compile);
    if (intention.sourceName === "*" && !intention.remoteOnly && (intention.sourceNamespace === "*" || intention.sourceNamespace === "default")) {
      list.hasLocalWildcard = true;
    }
    list.intentions.push(intention);
  }
  return $multi(list, undefined);
}

/** The first intention (precedence order) whose source is this local client; nil for none. */
export function governingIntention(list: IntentionList, service: string, namespace: string, partition: string): Intention | undefined {
  for (const intention of list.intentions) {
    if (intention.remoteOnly) continue;
    if (intention.sourceName !== "*" && intention.sourceName !== service) continue;
    if (intention.sourceNamespace !== "*" && intention.sourceNamespace !== namespace) continue;
    if (intention.sourcePartition !== "*" && intention.sourcePartition !== partition) continue;
    return intention;
  }
  return undefined;
}

/** All values of a header joined with "," (as Envoy matches them), from HAProxy's req_get_headers (0-based arrays). */
export function headerValue(headers: LuaTable<string, LuaTable<number, string>> | undefined, name: string): string | undefined {
  if (headers === undefined) return undefined;
  const values = headers.get(name);
  if (values === undefined) return undefined;
  let joined = values.get(0);
  if (joined === undefined) return undefined;
  let i = 1;
  let next = values.get(i);
  while (next !== undefined) {
    joined = joined + "," + next;
    i++;
    next = values.get(i);
  }
  return joined;
}

function headerHolds(rule: HeaderRule, headers: LuaTable<string, LuaTable<number, string>> | undefined): boolean {
  const raw = headerValue(headers, rule.name);
  if (raw === undefined) return rule.kind === HEADER_PRESENT && rule.invert;
  let matched: boolean;
  const kind = rule.kind;
  if (kind === HEADER_PRESENT) matched = true;
  else if (kind === HEADER_REGEX) matched = (rule.regex as CompiledRegex).exec(raw) === true;
  else {
    const value = rule.ignoreCase ? lower(raw) : raw;
    const wanted = rule.value;
    if (kind === HEADER_EXACT) matched = value === wanted;
    else if (kind === HEADER_PREFIX) matched = sub(value, 1, wanted.length) === wanted;
    else if (kind === HEADER_SUFFIX) matched = wanted.length <= value.length && sub(value, value.length - wanted.length + 1) === wanted;
    else matched = find(value, wanted, 1, true)[0] !== undefined;
  }
  return rule.invert ? !matched : matched;
}

/** Whether every part of `permission` holds for the request (path without its query). */
export function permissionHolds(permission: Permission, method: string, path: string, headers: LuaTable<string, LuaTable<number, string>> | undefined): boolean {
  const pathKind = permission.pathKind;
  if (pathKind === PATH_EXACT) {
    if (path !== permission.path) return false;
  } else if (pathKind === PATH_PREFIX) {
    if (sub(path, 1, permission.path.length) !== permission.path) return false;
  } else if (pathKind === PATH_REGEX) {
    if ((permission.pathRegex as CompiledRegex).exec(path) !== true) return false;
  }
  const methods = permission.methods;
  if (methods !== undefined && methods.get(method) !== true) return false;
  const rules = permission.headers;
  if (rules !== undefined) {
    for (const rule of rules) if (!headerHolds(rule, headers)) return false;
  }
  return true;
}

/**
 * The permission of an L7 intention that decides the request: the first that
 * holds, or the first unusable one reached before any held (the request is
 * then refused). nil when none holds: the default policy decides.
 */
export function decidingPermission(intention: Intention, method: string, path: string, headers: LuaTable<string, LuaTable<number, string>> | undefined): Permission | undefined {
  for (const permission of intention.permissions as Permission[]) {
    if (permission.problem !== undefined) return permission;
    if (permissionHolds(permission, method, path, headers)) return permission;
  }
  return undefined;
}
