// The cluster's trust domain: from CONNECT_TRUST_DOMAIN, or learned from the
// agent's /v1/agent/connect/ca/roots (TrustDomain) and kept current by a
// background task doing blocking queries. Until it is known, every
// connection is denied (the agent's authorize endpoint does not check it).

import type { RootsAnswer } from "./agent";
import { backoffDelayMs } from "./backoff";

const lower = string.lower;
const format = string.format;

/**
 * Blocking-query wait. Short because HAProxy's soft stop (and so every reload)
 * waits for the open query of this task: the old process lingers at most this long.
 */
export const ROOTS_WAIT_SECONDS = 5;
/** Never query faster than this, whatever the agent answers. */
const MIN_INTERVAL_MS = 1000;
const MAX_BACKOFF_MS = 30000;
/** A failed lazy lookup is not retried by connections for this long. */
const LAZY_RETRY_MS = 1000;

export interface TrustDomainDeps {
  fetchRoots: (this: void, index: number, waitSeconds: number) => LuaMultiReturn<[RootsAnswer | undefined, string | undefined]>;
  now: (this: void) => number;
  sleep: (this: void, ms: number) => void;
  /** level: "info" | "warning"; never gets secrets. */
  log: (this: void, level: string, message: string) => void;
  /** 0 ≤ x < 1, for backoff jitter. */
  random: (this: void) => number;
  /** True once HAProxy soft-stops (or reloads): the task must end so the process can exit. */
  stopping: (this: void) => boolean;
  /** The learned trust domain changed (not called when first learned): what was verified against the old one is stale. */
  changed?: (this: void) => void;
}

export class TrustDomainSource {
  private learned: string | undefined = undefined;
  private index = 0;
  private failures = 0;
  private lastAttemptAt = -1e18;
  /** A fetch in progress while the trust domain is unknown (the task's or a connection's). */
  private flight: { done: boolean } | undefined = undefined;
  lastError: string | undefined = undefined;
  lookups = 0;

  constructor(
    private readonly configured: string | undefined,
    private readonly deps: TrustDomainDeps,
    private readonly waitLimitMs: number,
  ) {}

  current(): string | undefined {
    return this.configured ?? this.learned;
  }

  describe(): string {
    if (this.configured !== undefined) return this.configured + " (from CONNECT_TRUST_DOMAIN)";
    if (this.learned !== undefined) return this.learned + " (learned from the agent)";
    return "unknown" + (this.lastError !== undefined ? " (last error: " + this.lastError + ")" : " (not fetched yet)");
  }

  /**
   * The trust domain, fetching it now if nobody has yet. One fetch at a time:
   * connections wait for the one in progress (the task's first query at
   * start-up, or another connection's), and a failure is remembered for a
   * second so a dead agent is not hammered.
   */
  ensure(): LuaMultiReturn<[string | undefined, string | undefined]> {
    const known = this.current();
    if (known !== undefined) return $multi(known, undefined);
    const flight = this.flight;
    if (flight !== undefined) {
      const deadline = this.deps.now() + this.waitLimitMs;
      while (!flight.done && this.deps.now() <= deadline) this.deps.sleep(1);
    } else if (this.deps.now() - this.lastAttemptAt >= LAZY_RETRY_MS) {
      this.fetch(0, 0);
    }
    const learned = this.current();
    if (learned !== undefined) return $multi(learned, undefined);
    return $multi(undefined, "trust domain unknown: " + (this.lastError ?? "the agent has not answered yet"));
  }

  /** One query; returns true on success. Never raises. */
  private fetch(index: number, waitSeconds: number): boolean {
    this.lastAttemptAt = this.deps.now();
    this.lookups++;
    const fetchRoots = this.deps.fetchRoots;
    // Once known, the trust domain stays known: only then can a query block for long.
    const flight = { done: false };
    if (this.current() === undefined) this.flight = flight;
    const [ok, result, failure] = protect(() => fetchRoots(index, waitSeconds));
    flight.done = true;
    if (this.flight === flight) this.flight = undefined;
    if (!ok || result === undefined) {
      this.lastError = ok ? tostring(failure) : "internal error: " + tostring(result);
      this.failures++;
      if (this.failures === 1) this.deps.log("warning", "connect-haproxy: cannot read the CA roots from the agent: " + this.lastError);
      return false;
    }
    if (this.failures > 0) this.deps.log("info", format("connect-haproxy: the agent answers again after %d failed attempt(s)", this.failures));
    this.failures = 0;
    this.lastError = undefined;
    const answer = result as RootsAnswer;
    const trustDomain = lower(answer.trustDomain);
    if (trustDomain !== this.learned) {
      this.deps.log("info", "connect-haproxy: trust domain " + (this.learned === undefined ? "is " : "changed from " + this.learned + " to ") + trustDomain);
      const before = this.learned;
      this.learned = trustDomain;
      if (before !== undefined && this.deps.changed !== undefined) this.deps.changed();
    }
    // Consul's rules: an index that goes backwards resets to 0; 0 is never blocked on.
    this.index = answer.index < this.index ? 0 : answer.index;
    return true;
  }

  /** One step of the background refresh; returns how long to pause before the next. */
  refreshOnce(): number {
    const started = this.deps.now();
    if (this.fetch(this.index, ROOTS_WAIT_SECONDS)) {
      const elapsed = this.deps.now() - started;
      return elapsed >= MIN_INTERVAL_MS ? 0 : MIN_INTERVAL_MS - elapsed;
    }
    return backoffDelayMs(this.failures, 1000, MAX_BACKOFF_MS, this.deps.random());
  }

  /** The body of the refresh task (core.register_task): runs until HAProxy stops; returns at once if the trust domain is configured. */
  runForever(): void {
    if (this.configured !== undefined) return;
    while (!this.deps.stopping()) {
      const pause = this.refreshOnce();
      if (pause > 0 && !this.deps.stopping()) this.deps.sleep(pause);
    }
  }
}

/** For Lua callers (tests), which cannot use `new`. */
export function newTrustDomainSource(configured: string | undefined, deps: TrustDomainDeps, waitLimitMs: number): TrustDomainSource {
  return new TrustDomainSource(configured, deps, waitLimitMs);
}
