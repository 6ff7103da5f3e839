// Verdicts per (target, client SPIFFE ID): a bounded LRU with separate allow
// and deny lifetimes, one agent call at a time per key (single flight), and
// the agent-down policy.
//
// Agent down: deny. The one exception is an optional grace period
// (CONNECT_AGENT_DOWN_GRACE, default 0, capped at 5 minutes): when the agent
// cannot be asked, an allow verdict for the same key that expired less than
// the grace period ago is honoured. A deny is never extended, and nothing is
// invented: a client never seen before is denied.

import { TOKEN_REJECTED, type AuthorizeAnswer } from "./agent";
import { BoundedLru } from "./lru";
import { LatencyHistogram } from "./metrics";

const find = string.find;

const format = string.format;

interface CachedVerdict {
  allowed: boolean;
  reason: string;
  expiresAt: number;
}

/** One agent call in progress; waiters poll `done`. */
interface Flight {
  done: boolean;
  allowed: boolean;
  reason: string;
  origin: string;
}

export interface AuthorizerOptions {
  allowTtlMs: number;
  denyTtlMs: number;
  cacheSize: number;
  agentDownGraceMs: number;
  /** How long a connection waits for another one's agent call before giving up (deny). */
  waitLimitMs: number;
}

export interface AuthorizerDeps {
  /** Milliseconds. */
  now: (this: void) => number;
  /** Yields to HAProxy for `ms` (core.msleep); tests drive it with coroutines. */
  sleep: (this: void, ms: number) => void;
  authorize: (this: void, target: string, clientCertUri: string, clientCertSerial: string) => LuaMultiReturn<[AuthorizeAnswer | undefined, string | undefined]>;
}

export interface AuthorizerStats {
  entries: number;
  capacity: number;
  hits: number;
  misses: number;
  shared: number;
  agentCalls: number;
  errors: number;
  graceAllows: number;
  evictions: number;
  inflight: number;
  flushes: number;
}

/**
 * Where a verdict came from: "cache", "agent", "shared" (waited for another
 * connection's call), "grace", "agent-error", "wait-timeout".
 */
export type VerdictOrigin = string;

export class Authorizer {
  private cache: BoundedLru<CachedVerdict>;
  private inflight = new LuaMap<string, Flight>();
  private inflightCount = 0;
  private generation = 0;
  private hits = 0;
  private misses = 0;
  private shared = 0;
  private agentCalls = 0;
  private errors = 0;
  private graceAllows = 0;
  private flushes = 0;
  /** Agent call durations (`connect metrics`). */
  readonly agentLatency = new LatencyHistogram();

  constructor(
    private readonly options: AuthorizerOptions,
    private readonly deps: AuthorizerDeps,
  ) {
    this.cache = new BoundedLru<CachedVerdict>(options.cacheSize);
  }

  /**
   * The verdict for `clientUri` connecting to `target`. `serialOf` is only
   * called on a miss (formatting the serial costs more than a cache hit).
   * Never raises.
   */
  decide(target: string, clientUri: string, serialOf: (this: void) => string): LuaMultiReturn<[boolean, string, VerdictOrigin]> {
    const key = target + "\n" + clientUri;
    const cached = this.cache.get(key);
    if (cached !== undefined && this.deps.now() < cached.expiresAt) {
      this.hits++;
      return $multi(cached.allowed, cached.reason, "cache");
    }
    const flight = this.inflight.get(key);
    if (flight !== undefined) return this.waitFor(flight);
    return this.ask(key, target, clientUri, serialOf, cached);
  }

  private ask(key: string, target: string, clientUri: string, serialOf: (this: void) => string, stale: CachedVerdict | undefined): LuaMultiReturn<[boolean, string, VerdictOrigin]> {
    this.misses++;
    const flight: Flight = { done: false, allowed: false, reason: "", origin: "" };
    this.inflight.set(key, flight);
    this.inflightCount++;
    const generation = this.generation;
    this.agentCalls++;
    const authorize = this.deps.authorize;
    const started = this.deps.now();
    const [ok, answer, failure] = protect(() => authorize(target, clientUri, serialOf()));
    const now = this.deps.now();
    this.agentLatency.observe(now - started);

    let allowed = false;
    let reason: string;
    let origin: VerdictOrigin;
    if (ok && answer !== undefined) {
      allowed = (answer as AuthorizeAnswer).authorized;
      reason = (answer as AuthorizeAnswer).reason;
      origin = "agent";
      // A flush while we waited means the answer may predate the change that caused it.
      if (generation === this.generation) {
        const ttl = allowed ? this.options.allowTtlMs : this.options.denyTtlMs;
        if (ttl > 0) this.cache.set(key, { allowed, reason, expiresAt: now + ttl });
      }
    } else {
      this.errors++;
      const why = ok ? tostring(failure ?? "no answer") : "internal error: " + tostring(answer);
      const grace = this.options.agentDownGraceMs;
      // The grace period is for an agent that does not answer, not one that refuses the token.
      if (grace > 0 && find(why, TOKEN_REJECTED, 1, true)[0] === undefined && stale !== undefined && stale.allowed && generation === this.generation && now - stale.expiresAt <= grace) {
        this.graceAllows++;
        allowed = true;
        reason = format("%s; agent unreachable (%s): honouring an allow that expired %d ms ago (grace %d ms)", stale.reason, why, Math.floor(now - stale.expiresAt), grace);
        origin = "grace";
      } else {
        reason = "cannot ask the Consul agent: " + why;
        origin = "agent-error";
      }
    }
    flight.allowed = allowed;
    flight.reason = reason;
    flight.origin = origin;
    flight.done = true;
    this.inflight.delete(key);
    this.inflightCount--;
    return $multi(allowed, reason, origin);
  }

  private waitFor(flight: Flight): LuaMultiReturn<[boolean, string, VerdictOrigin]> {
    const deadline = this.deps.now() + this.options.waitLimitMs;
    while (!flight.done) {
      if (this.deps.now() > deadline) {
        return $multi(false, format("no verdict within %d ms while another connection asked the agent", this.options.waitLimitMs), "wait-timeout");
      }
      this.deps.sleep(1);
    }
    this.shared++;
    return $multi(flight.allowed, flight.reason, flight.origin === "agent" ? "shared" : flight.origin);
  }

  /**
   * Until when the cached allow for `clientUri` → `target` stays fresh (ms), or
   * nil when none is cached (an answer a flush overtook is never cached).
   */
  allowFreshUntil(target: string, clientUri: string): number | undefined {
    const cached = this.cache.peek(target + "\n" + clientUri);
    if (cached === undefined || !cached.allowed || this.deps.now() >= cached.expiresAt) return undefined;
    return cached.expiresAt;
  }

  /** Drops every cached verdict at once (intentions changed); returns how many there were. */
  flush(): number {
    this.generation++;
    this.flushes++;
    return this.cache.clear();
  }

  stats(): AuthorizerStats {
    return {
      entries: this.cache.size(),
      capacity: this.cache.capacity,
      hits: this.hits,
      misses: this.misses,
      shared: this.shared,
      agentCalls: this.agentCalls,
      errors: this.errors,
      graceAllows: this.graceAllows,
      evictions: this.cache.evictions,
      inflight: this.inflightCount,
      flushes: this.flushes,
    };
  }

  /** Cached keys, most recent first (tests). */
  cachedKeys(): string[] {
    return this.cache.keys();
  }
}

/** For Lua callers (tests, bench), which cannot use `new`. */
export function newAuthorizer(options: AuthorizerOptions, deps: AuthorizerDeps): Authorizer {
  return new Authorizer(options, deps);
}
