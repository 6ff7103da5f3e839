// Passes: an allow that HAProxy checks natively, so that the requests of a
// kept-alive HTTP connection whose source an L4 intention (or the default
// policy) allows run no Lua at all. A Lua action costs several µs per request
// inside HAProxy before it does anything (measured by bench/l7-haproxy.mjs);
// a map lookup costs a fraction of one.
//
// When the action allows a request from the agent's verdict (never one an L7
// permission decided: those depend on the request), it stores
// "<target>|<SPIFFE ID>" in the session variable sess.connect_pass_key and
// sets that key in a map (CONNECT_PASS_MAP) to the second the verdict stops
// being fresh. haproxy.cfg lets later requests through when the map still
// holds an unexpired entry for the session's key:
//
//   http-request set-var(txn.connect_pass_until) var(sess.connect_pass_key),map_str_int(<map>)
//   http-request set-var(txn.connect_allowed) int(1) if { date,neg,add(txn.connect_pass_until) gt 0 } { path -m beg / } !{ path -m sub % \\ }
//   http-request lua.connect_authorize <target> unless { var(txn.connect_allowed) -m found }
//
// Every flush of the verdicts (an intention or default-policy change, or the
// controller's `connect cache flush`) removes every entry at once, so the next
// request on every connection is decided again. A path the action would have
// to refuse or normalize (one with "%" or "\") always takes the action.
//
// The same class keeps the server passes of connect_verify_upstream
// (CONNECT_SERVER_PASS_MAP): the SHA-1 of a server certificate whose identity
// checked out → its service, so that the responses of an HTTP upstream are
// checked by a map lookup rather than a Lua action each:
//
//   http-response set-var(txn.connect_upstream_ok) int(1) if { ssl_s_sha1,hex,map(<map>) -m str <service> }
//   http-response lua.connect_verify_upstream <service> unless { var(txn.connect_upstream_ok) -m found }
//
// A certificate's identity never changes; both kinds are removed when the
// trust domain does.

import type { Core } from "./haproxy";

const floor = math.floor;

/** The pass map's entry under which the controller's native L7 rules apply (controller/native-l7.ts). */
export const NATIVE_GUARD_KEY = "l7";

/** A request pass's value: the second its verdict stops being fresh (compared with `date`). */
export function passUntil(expiresAtMs: number): string {
  return tostring(floor(expiresAtMs / 1000));
}

/** What the map needs from HAProxy (core.set_map / core.del_map), injectable for specs. */
export interface PassMap {
  set(this: void, key: string, value: string): void;
  remove(this: void, key: string): void;
}

export class RequestPasses {
  private keys = new LuaTable<string, boolean>();
  private count = 0;
  granted = 0;
  revoked = 0;
  /** Why the map cannot be written (not referenced by haproxy.cfg): passes are off from then on. */
  failure: string | undefined;
  /** Whether NATIVE_GUARD_KEY is in the map. */
  nativeRules = false;

  constructor(
    private readonly map: PassMap | undefined,
    private readonly capacity: number,
  ) {}

  enabled(): boolean {
    return this.map !== undefined && this.failure === undefined;
  }

  /**
   * Sets `key` to `value` in the map (what haproxy.cfg compares). Returns the
   * failure when the map cannot be written, once: the caller logs it; every
   * request then takes the action, as without passes.
   */
  grant(key: string, value: string): string | undefined {
    const map = this.map;
    if (map === undefined || this.failure !== undefined) return undefined;
    const [ok, problem] = pcall(map.set, key, value);
    if (!ok) {
      this.failure = tostring(problem);
      return this.failure;
    }
    if (this.keys.get(key) === undefined) {
      if (this.count >= this.capacity) this.revokeAll();
      this.keys.set(key, true);
      this.count++;
    }
    this.granted++;
    return undefined;
  }

  /**
   * The controller's native L7 rules (controller/native-l7.ts) apply while the
   * entry NATIVE_GUARD_KEY is in the map: set here only when the controller
   * asks and the list it rendered them from is the one in force. False when
   * the map cannot be written.
   */
  enableNativeRules(): boolean {
    if (!this.enabled()) return false;
    // A number: the same map is read as integers for passes (map_str_int refuses any other value, and HAProxy then drops the entry).
    const [ok] = pcall((this.map as PassMap).set, NATIVE_GUARD_KEY, "0");
    this.nativeRules = ok;
    return ok;
  }

  /** The native L7 rules off (passes stay): a newer list than this authorizer's exists, or a flush. */
  disableNativeRules(): void {
    const map = this.map;
    if (map === undefined || !this.nativeRules) return;
    pcall(map.remove, NATIVE_GUARD_KEY);
    this.nativeRules = false;
  }

  /** Every later request is decided by the action again (native L7 rules too); returns how many passes were removed. */
  revokeAll(): number {
    this.disableNativeRules();
    const map = this.map;
    if (map === undefined || this.count === 0) return 0;
    const removed = this.count;
    for (const [key] of this.keys) pcall(map.remove, key);
    this.keys = new LuaTable();
    this.count = 0;
    this.revoked += removed;
    return removed;
  }

  size(): number {
    return this.count;
  }
}

/** The map named by CONNECT_PASS_MAP, through HAProxy's core; nil when unset. */
export function haproxyPassMap(core: Core, file: string | undefined): PassMap | undefined {
  if (file === undefined) return undefined;
  return {
    set: (key, value) => core.set_map(file, key, value),
    remove: (key) => core.del_map(file, key),
  };
}

/** For Lua callers (specs), which cannot use `new`. */
export function newRequestPasses(map: PassMap | undefined, capacity: number): RequestPasses {
  return new RequestPasses(map, capacity);
}
