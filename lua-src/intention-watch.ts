// Keeps each destination's intention list current: one task per destination
// (taken by one of WORKERS tasks registered at load, the first time the action
// sees the destination or at load for CONNECT_DEFAULT_TARGET) long-polls
// /v1/connect/intentions/match?by=destination&name=<target> with the last
// X-Consul-Index and a short wait, compiles each new list once
// (intentions.ts), and learns the default policy.
//
// Why a task in the authorizer rather than the controller pushing rules: it
// works the same standalone and under the controller, and a change reaches
// requests as soon as the blocking query returns (well under a second).
// Why a short wait: HAProxy's soft stop (so every reload) waits for a task's
// open cosocket; the task also ends as soon as HAProxy is stopping.
//
// The default policy (what decides a request no intention, or no permission of
// the governing L7 intention, matches), in this order:
// 1. GET /v1/agent/self (DefaultIntentionPolicy, else the ACL default; needs
//    agent:read, always readable with ACLs off);
// 2. else the agent's authorize endpoint asked about a probe source no
//    intention matches (the agent answers with the default itself); only
//    possible when the list has no local `*` source;
// 3. else unknown: such requests are denied, and one warning says what to grant.
// Refreshed on every list change and every DEFAULT_REFRESH_MS.

import type { AuthorizeAnswer, DefaultPolicyAnswer, IntentionsAnswer } from "./agent";
import { PERMISSION_DENIED, TOKEN_REJECTED } from "./agent";
import { compileIntentionList, governingIntention, type IntentionList, type RegexCompiler } from "./intentions";
import { backoffDelayMs } from "./backoff";

const format = string.format;
const find = string.find;

/** Blocking-query wait, seconds: a reload waits at most this long for the task. */
export const INTENTIONS_WAIT_SECONDS = 4;
/** Never query faster than this (a reply without an index does not block). */
const MIN_INTERVAL_MS = 100;
const MAX_BACKOFF_MS = 10000;
const DEFAULT_REFRESH_MS = 30000;
/** After a 403 from /v1/agent/self, try it again this much later (a token can gain agent:read). */
const SELF_RETRY_MS = 300000;

/**
 * Tasks registered at load that take destinations as they appear. Not one task
 * registered from the action per destination: on HAProxy 2.6.12 a task
 * registered at run time from an action did not see its blocking query's
 * reply until the read timeout (tried: test/integration/authorizer.test.ts,
 * "enforces the same verdicts in HTTP mode"), while tasks registered at load
 * did. A sidecar protects one service; more destinations than workers are
 * refused with "not loaded yet" and a warning.
 */
export const WORKERS = 4;
const IDLE_POLL_MS = 50;

/** The source the authorize probe asks about; an intention naming it makes the probe unusable. */
export const PROBE_SERVICE = "connect-haproxy-default-policy-probe";

export interface DestinationRules {
  target: string;
  /** nil until the first list was read (or when the last reply could not be used). */
  list: IntentionList | undefined;
  /** The reply `list` was compiled from. */
  body: string | undefined;
  index: number;
  /** Completed queries, successful or not. */
  attempts: number;
  /** The index someone who watches Consul too (the controller) saw: a list older than this is not used. */
  requiredIndex: number;
  failures: number;
  lastError: string | undefined;
  /** Lists applied after the first one. */
  changes: number;
  /** nil when unknown. */
  defaultAllow: boolean | undefined;
  /** "Default intention policy (deny, from /v1/agent/self)" or why it is unknown. */
  defaultReason: string;
  defaultCheckedAt: number;
}

export interface IntentionWatchDeps {
  fetchIntentions: (this: void, destination: string, index: number, waitSeconds: number) => LuaMultiReturn<[IntentionsAnswer | undefined, string | undefined]>;
  defaultPolicy: (this: void) => LuaMultiReturn<[DefaultPolicyAnswer | undefined, string | undefined]>;
  authorize: (this: void, target: string, clientCertUri: string, clientCertSerial: string) => LuaMultiReturn<[AuthorizeAnswer | undefined, string | undefined]>;
  trustDomain: (this: void) => string | undefined;
  compileRegex: RegexCompiler;
  now: (this: void) => number;
  sleep: (this: void, ms: number) => void;
  log: (this: void, level: string, message: string) => void;
  random: (this: void) => number;
  stopping: (this: void) => boolean;
  /** Runs `body` as an HAProxy task (core.register_task). */
  startTask: (this: void, body: (this: void) => void) => void;
  /** A destination's first list was loaded, at `index`. */
  firstList?: (this: void, target: string, index: number) => void;
  /** A destination's list or known default policy changed (not called for the first list or the first default). */
  onChange: (this: void, target: string) => void;
}

export class IntentionWatch {
  private destinations = new LuaTable<string, DestinationRules>();
  private count = 0;
  /** When /v1/agent/self last answered 403 (nil: never). */
  private selfDeniedAt: number | undefined = undefined;
  private warnedUnknownDefault = false;
  /** What /v1/agent/self said, read by its own task (its large reply can stall for the read timeout). */
  private agentDefault: DefaultPolicyAnswer | undefined = undefined;
  /** Destinations waiting for a worker, oldest first. */
  private pending: DestinationRules[] = [];
  private idleWorkers = 0;
  private warnedNoWorker = false;

  constructor(
    private readonly deps: IntentionWatchDeps,
    /** How long a request waits for a destination's first list. */
    private readonly loadWaitMs: number,
  ) {}

  /** The destination's state, starting its task the first time. Cheap: one lookup after the first call. */
  watch(target: string): DestinationRules {
    const known = this.destinations.get(target);
    if (known !== undefined) return known;
    const rules: DestinationRules = {
      target, list: undefined, body: undefined, index: 0, attempts: 0, requiredIndex: 0, failures: 0, lastError: undefined, changes: 0,
      defaultAllow: undefined, defaultReason: "default policy not read yet", defaultCheckedAt: -1e18,
    };
    this.destinations.set(target, rules);
    this.count++;
    this.pending.push(rules);
    if (this.idleWorkers < this.pending.length && !this.warnedNoWorker) {
      this.warnedNoWorker = true;
      this.deps.log("warning", format("connect-haproxy: more destinations than intention workers (%d): %s waits for one", WORKERS, target));
    }
    return rules;
  }

  /** Registers the default-policy task and the workers (at load: see WORKERS). */
  startTasks(): void {
    this.deps.startTask(() => this.runDefaultPolicy());
    for (let i = 0; i < WORKERS; i++) this.deps.startTask(() => this.runWorker());
  }

  /** A worker: waits for a destination, then watches it until HAProxy stops. */
  runWorker(): void {
    this.idleWorkers++;
    while (!this.deps.stopping()) {
      const rules = this.pending.shift();
      if (rules !== undefined) {
        this.idleWorkers--;
        this.run(rules);
        return;
      }
      this.deps.sleep(IDLE_POLL_MS);
    }
    this.idleWorkers--;
  }

  /**
   * The destination's compiled list, waiting (yielding) up to the load wait
   * for the first one. Returns the rules, then "" or why there is no list.
   */
  rulesFor(target: string): LuaMultiReturn<[DestinationRules, string]> {
    const rules = this.watch(target);
    if (rules.list !== undefined && rules.index >= rules.requiredIndex) return $multi(rules, "");
    if (rules.attempts === 0) {
      const deadline = this.deps.now() + this.loadWaitMs;
      while (rules.attempts === 0 && this.deps.now() <= deadline) this.deps.sleep(5);
    }
    if (rules.list === undefined) return $multi(rules, "intentions for " + target + " not loaded yet" + (rules.lastError !== undefined ? ": " + rules.lastError : ""));
    if (rules.index < rules.requiredIndex) return $multi(rules, format("intentions for %s not current yet (index %d, Consul is at %d)", target, rules.index, rules.requiredIndex));
    return $multi(rules, "");
  }

  /**
   * Someone who watches Consul too (the controller) saw the destination's
   * intentions at `index`: from now on a list older than that is not used (the
   * requests it would decide are refused), and this waits up to `waitMs` for
   * the watch to catch up. True once the list is current.
   */
  sync(target: string, index: number, waitMs: number): boolean {
    const rules = this.watch(target);
    if (index > rules.requiredIndex) rules.requiredIndex = index;
    const deadline = this.deps.now() + waitMs;
    while ((rules.list === undefined || rules.index < rules.requiredIndex) && this.deps.now() <= deadline) this.deps.sleep(5);
    return rules.list !== undefined && rules.index >= rules.requiredIndex;
  }

  /** The destination's rules as they are now, without starting a task or waiting; "" or why there is no list. */
  rulesForNow(target: string): LuaMultiReturn<[DestinationRules | undefined, string]> {
    const rules = this.destinations.get(target);
    if (rules === undefined) return $multi(undefined, "not watched");
    if (rules.list === undefined) return $multi(rules, "not loaded");
    return $multi(rules, "");
  }

  /** Every destination watched, for the stats commands. */
  all(): DestinationRules[] {
    const result: DestinationRules[] = [];
    for (const [, rules] of pairs(this.destinations)) result.push(rules);
    return result;
  }

  size(): number {
    return this.count;
  }

  /** One query; returns how long to pause before the next. Never raises. */
  refreshOnce(rules: DestinationRules): number {
    const started = this.deps.now();
    const fetchIntentions = this.deps.fetchIntentions;
    const index = rules.list !== undefined ? rules.index : 0;
    const [ok, answer, failure] = protect(fetchIntentions, rules.target, index, INTENTIONS_WAIT_SECONDS);
    rules.attempts++;
    if (!ok || answer === undefined) {
      const lastError = ok ? tostring(failure) : "internal error: " + tostring(answer);
      rules.lastError = lastError;
      rules.failures++;
      // A revoked token: the list can no longer follow Consul, so it stops deciding (fail closed), and the
      // verdicts and passes resting on it go too. Every new decision then asks the agent, which refuses the token.
      const revoked = find(lastError, TOKEN_REJECTED, 1, true)[0] !== undefined;
      if (revoked && rules.list !== undefined) {
        rules.list = undefined;
        rules.body = undefined;
        this.deps.onChange(rules.target);
      }
      if (rules.failures === 1) {
        let hint = revoked ? " (replace the token; until then requests for it are denied)" : "";
        if (find(rules.lastError, PERMISSION_DENIED, 1, true)[0] !== undefined) hint = format(" (the token needs intentions:read on %s, as service:write or a service identity for it grants)", rules.target);
        this.deps.log("warning", format("connect-haproxy: cannot read the intentions for %s: %s%s; %s", rules.target, rules.lastError, hint, revoked ? "dropped its list" : "keeping the last list"));
      }
      return backoffDelayMs(rules.failures, 250, MAX_BACKOFF_MS, this.deps.random());
    }
    const reply = answer as IntentionsAnswer;
    const first = rules.list === undefined;
    // A new index with the same reply is not a change: Consul's intention index
    // also moves for writes elsewhere (deleting a source is two writes), and a
    // flush would cost every cached verdict and pass (seen: a flush landing in
    // authorizer.test.ts's exact counts on 3.0.11).
    const changed = first || ((reply.index !== rules.index || reply.index === 0) && reply.body !== rules.body);
    // Consul's rules: an index that goes backwards resets to 0; 0 is never blocked on.
    rules.index = reply.index < rules.index ? 0 : reply.index;
    if (changed) {
      const [list, compileError] = compileIntentionList(reply.decoded, rules.target, this.deps.compileRegex);
      if (list === undefined) {
        // Fail closed: a reply we cannot read leaves no list, so requests are refused with this reason.
        rules.list = undefined;
        rules.body = undefined;
        rules.lastError = compileError;
        // It is a failed read too: one line, and backoff (the next query cannot block, having no list).
        rules.failures++;
        if (rules.failures === 1) this.deps.log("warning", format("connect-haproxy: intentions for %s unusable: %s", rules.target, tostring(compileError)));
        return backoffDelayMs(rules.failures, 250, MAX_BACKOFF_MS, this.deps.random());
      } else {
        rules.list = list;
        rules.body = reply.body;
        rules.lastError = undefined;
        if (!first) {
          rules.changes++;
          this.deps.onChange(rules.target);
        } else if (this.deps.firstList !== undefined) this.deps.firstList(rules.target, rules.index);
        // The probe's answer can change with the list (a `*` intention).
        this.refreshDefault(rules, true);
      }
    }
    if (rules.failures > 0) this.deps.log("info", format("connect-haproxy: intentions for %s readable again after %d failed attempt(s)", rules.target, rules.failures));
    rules.failures = 0;
    if (!changed || rules.list === undefined) this.refreshDefault(rules, false);
    const elapsed = this.deps.now() - started;
    return elapsed >= MIN_INTERVAL_MS ? 0 : MIN_INTERVAL_MS - elapsed;
  }

  /** The body of a destination's task: runs until HAProxy stops. */
  run(rules: DestinationRules): void {
    while (!this.deps.stopping()) {
      const pause = this.refreshOnce(rules);
      if (pause > 0 && !this.deps.stopping()) this.deps.sleep(pause);
    }
  }

  /** One read of /v1/agent/self; applies it to every destination. Returns the pause before the next. */
  refreshAgentDefault(): number {
    const now = this.deps.now();
    if (this.selfDeniedAt !== undefined && now - this.selfDeniedAt < SELF_RETRY_MS) return DEFAULT_REFRESH_MS;
    const [ok, answer, failure] = protect(this.deps.defaultPolicy);
    if (ok && answer !== undefined) {
      this.selfDeniedAt = undefined;
      this.agentDefault = answer as DefaultPolicyAnswer;
      for (const [, rules] of pairs(this.destinations)) this.setDefault(rules, this.agentDefault.allow, this.agentDefault.reason, "/v1/agent/self");
      return DEFAULT_REFRESH_MS;
    }
    if (ok && failure === PERMISSION_DENIED) {
      this.selfDeniedAt = now;
      // The probe (in each destination's task) takes over.
      for (const [, rules] of pairs(this.destinations)) rules.defaultCheckedAt = -1e18;
      return DEFAULT_REFRESH_MS;
    }
    return 5000;
  }

  /** The body of the default-policy task: reads /v1/agent/self now and then, until HAProxy stops. */
  runDefaultPolicy(): void {
    while (!this.deps.stopping()) {
      const pause = this.refreshAgentDefault();
      // Short sleeps, so that a soft stop is noticed at once.
      const until = this.deps.now() + pause;
      while (!this.deps.stopping() && this.deps.now() < until) this.deps.sleep(Math.min(1000, until - this.deps.now()));
    }
  }

  private refreshDefault(rules: DestinationRules, force: boolean): void {
    const now = this.deps.now();
    // 1. The agent's configuration, read by its own task.
    const agentDefault = this.agentDefault;
    if (agentDefault !== undefined && this.selfDeniedAt === undefined) {
      this.setDefault(rules, agentDefault.allow, agentDefault.reason, "/v1/agent/self");
      return;
    }
    if (!force && now - rules.defaultCheckedAt < DEFAULT_REFRESH_MS) return;
    // Before /v1/agent/self answered once, leave it a chance (the probe costs an agent call).
    if (this.selfDeniedAt === undefined && agentDefault === undefined && rules.defaultAllow === undefined && now - rules.defaultCheckedAt < 0) return;
    rules.defaultCheckedAt = now;
    // 2. The agent's own answer for a source no intention matches.
    const list = rules.list;
    if (list !== undefined && !list.hasLocalWildcard && governingIntention(list, PROBE_SERVICE, "default", "default") === undefined) {
      const probe = format("spiffe://%s/ns/default/dc/probe/svc/%s", this.deps.trustDomain() ?? "probe.consul", PROBE_SERVICE);
      const [ok, answer] = protect(this.deps.authorize, rules.target, probe, "");
      if (ok && answer !== undefined && find((answer as AuthorizeAnswer).reason, "^Default")[0] !== undefined) {
        this.setDefault(rules, (answer as AuthorizeAnswer).authorized, (answer as AuthorizeAnswer).reason, "the agent's authorize endpoint");
        return;
      }
    }
    // 3. Unknown. Keep a value learned before: the default policy changes only with the agent's configuration.
    if (rules.defaultAllow !== undefined) return;
    // Not known to be unreadable yet: wait for the default-policy task before warning.
    if (this.selfDeniedAt === undefined) return;
    rules.defaultReason = "default policy unknown: the token cannot read /v1/agent/self (agent:read) and a `*` intention hides it from the authorize endpoint";
    if (!this.warnedUnknownDefault) {
      this.warnedUnknownDefault = true;
      this.deps.log("warning", format(
        "connect-haproxy: cannot learn the default intention policy for %s; requests it would decide are denied. Grant the token agent:read (agent_prefix \"\" { policy = \"read\" }) so the authorizer can read /v1/agent/self",
        rules.target));
    }
  }

  private setDefault(rules: DestinationRules, allow: boolean, reason: string, source: string): void {
    const changed = rules.defaultAllow !== allow;
    const known = rules.defaultAllow !== undefined;
    rules.defaultAllow = allow;
    rules.defaultReason = format("%s (%s, from %s)", reason, allow ? "allow" : "deny", source);
    if (!changed) return;
    this.deps.log("info", format("connect-haproxy: default policy for %s: %s", rules.target, rules.defaultReason));
    // Cached verdicts and passes may rest on the old default.
    if (known) this.deps.onChange(rules.target);
  }
}

/** For Lua callers (tests), which cannot use `new`. */
export function newIntentionWatch(deps: IntentionWatchDeps, loadWaitMs: number): IntentionWatch {
  return new IntentionWatch(deps, loadWaitMs);
}
