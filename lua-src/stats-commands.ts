// Runtime commands on HAProxy's stats socket (core.register_cli):
//   connect cache flush   drop every cached verdict (the controller calls it when intentions change)
//   connect cache stats   entries, hits, misses, agent calls, errors, ...
//   connect show config   the settings in effect; the token only as set / not set
//   connect intentions    each watched destination: index, intentions, default policy, last error
//   connect revoked       recorded TCP connections whose source the current intentions deny
//   connect sync <target> <index>              no list older than <index> decides a request
//   connect l7-rules current <target> <index>  switch on haproxy.cfg's native L7 rules (controller/native-l7.ts)
//   connect metrics       the counters in Prometheus' text format (metrics.ts)
// The numbers are those of the Lua state that answers: with lua-load (one
// shared state) that is the whole process.

import type { CliApplet, Core } from "./haproxy";
import { flushVerdicts, switchOnNativeRules, type AuthorizeContext } from "./authorize-action";
import { describeConfig } from "./config";
import { revokedCommand as listRevoked } from "./connection-registry";
import { DecisionCounters, metricsText } from "./metrics";

const format = string.format;

export function flushCommand(context: AuthorizeContext): string {
  const dropped = flushVerdicts(context);
  return format("flushed %d cached verdicts\n", dropped);
}

export function statsCommand(context: AuthorizeContext): string {
  const stats = context.authorizer.stats();
  return format(
    "entries: %d\ncapacity: %d\nhits: %d\nmisses: %d\nshared: %d\nagent_calls: %d\nerrors: %d\ngrace_allows: %d\nevictions: %d\ninflight: %d\nflushes: %d\ntrust_domain_lookups: %d\ncertificates_cached: %d\npasses: %d\npasses_granted: %d\npasses_revoked: %d\n",
    stats.entries, stats.capacity, stats.hits, stats.misses, stats.shared, stats.agentCalls, stats.errors,
    stats.graceAllows, stats.evictions, stats.inflight, stats.flushes, context.trustDomains.lookups, context.identities.size(),
    context.passes.size(), context.passes.granted, context.passes.revoked,
  );
}

export function metricsCommand(context: AuthorizeContext): string {
  return metricsText(context.authorizer.stats(), context.decisions ?? new DecisionCounters(), context.authorizer.agentLatency);
}

export function configCommand(context: AuthorizeContext): string {
  return describeConfig(context.config, context.trustDomains.describe(), context.agentToken?.current() !== undefined);
}

export function intentionsCommand(context: AuthorizeContext): string {
  const lines: string[] = [];
  for (const rules of context.intentions.all()) {
    lines.push(format(
      "%s: %s, index %d, %d changes, default %s%s",
      rules.target,
      rules.list !== undefined ? format("%d intentions", rules.list.intentions.length) : "not loaded",
      rules.index, rules.changes,
      rules.defaultReason,
      rules.lastError !== undefined ? ", last error: " + rules.lastError : "",
    ));
  }
  lines.push(format("recorded_connections: %d", context.connections.size()));
  return table.concat(lines, "\n") + "\n";
}

export function revokedCommand(context: AuthorizeContext): string {
  return listRevoked(context.connections, context.intentions);
}

/** How long `connect sync` waits for the watch to reach the index it is given. */
export const SYNC_WAIT_MS = 1000;

/**
 * `connect sync <target> <index>`: the controller saw the target's intentions
 * at `index`; no list older than that decides a request any more, and this
 * answers once the watch has caught up ("current") or after SYNC_WAIT_MS
 * ("behind": L7 requests are refused until it catches up).
 */
export function syncCommand(context: AuthorizeContext, words: string[]): string {
  const [target, index] = targetAndIndex(words, "sync");
  if (target === undefined || index === undefined) return "usage: connect sync <target> <index>\n";
  // The controller saw a newer list than this one: the native rules (rendered from an older one) stop deciding now.
  const known = context.intentions.watch(target);
  if (known.list === undefined || known.index < index) context.passes.disableNativeRules();
  const current = context.intentions.sync(target, index, SYNC_WAIT_MS);
  const rules = context.intentions.watch(target);
  return format("%s %s index %d (wanted %d)\n", target, current ? "current" : "behind", rules.index, index);
}

/** `<keyword> <target> <index>` among a command's words (HAProxy hands over every word); nil for bad usage. */
function targetAndIndex(words: string[], keyword: string): LuaMultiReturn<[string | undefined, number | undefined]> {
  let at = -1;
  for (let i = 0; i < words.length; i++) if (words[i] === keyword) at = i;
  const target = words[at + 1];
  const index = tonumber(words[at + 2] ?? "");
  if (at < 0 || target === undefined || target === "" || index === undefined || index < 0) return $multi(undefined, undefined);
  return $multi(target, Math.floor(index));
}

/**
 * `connect l7-rules current <target> <index>`: the controller rendered its
 * native L7 rules from <target>'s intentions at <index>. They are switched on
 * when this authorizer's list is at exactly that index (waiting up to
 * SYNC_WAIT_MS for it); any later flush switches them off again.
 */
export function nativeRulesCommand(context: AuthorizeContext, words: string[]): string {
  const [target, index] = targetAndIndex(words, "current");
  if (target === undefined || index === undefined) return "usage: connect l7-rules current <target> <index>\n";
  context.intentions.sync(target, index, SYNC_WAIT_MS);
  return switchOnNativeRules(context, target, index) + "\n";
}

function answer(applet: CliApplet, produce: (this: void, context: AuthorizeContext, words: string[]) => string, context: AuthorizeContext, words: string[] = []): void {
  const [ok, text] = pcall(produce, context, words);
  applet.send(ok ? text : "error: " + tostring(text) + "\n");
}

export function registerCommands(core: Core, context: AuthorizeContext): void {
  core.register_cli(["connect", "cache", "flush"], "connect cache flush : drop every cached authorization verdict", (applet) =>
    answer(applet, flushCommand, context));
  core.register_cli(["connect", "cache", "stats"], "connect cache stats : authorization cache counters", (applet) =>
    answer(applet, statsCommand, context));
  core.register_cli(["connect", "metrics"], "connect metrics : the authorizer's counters in Prometheus text format", (applet) =>
    answer(applet, metricsCommand, context));
  core.register_cli(["connect", "show", "config"], "connect show config : the authorizer's settings (never the token)", (applet) =>
    answer(applet, configCommand, context));
  core.register_cli(["connect", "intentions"], "connect intentions : watched destinations, their intention lists and default policy", (applet) =>
    answer(applet, intentionsCommand, context));
  core.register_cli(["connect", "sync"], "connect sync <target> <index> : use no intention list older than <index> for <target>; waits up to 1 s for it", (applet, ...words) =>
    answer(applet, syncCommand, context, words));
  core.register_cli(["connect", "l7-rules"], "connect l7-rules current <target> <index> : switch on haproxy.cfg's native L7 rules rendered from <target>'s intentions at <index>", (applet, ...words) =>
    answer(applet, nativeRulesCommand, context, words));
  core.register_cli(["connect", "revoked"], "connect revoked : recorded TCP connections whose source the current intentions deny", (applet) =>
    answer(applet, revokedCommand, context));
}
