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
// shared state) that is the whole process. The same commands answer HTTP
// requests to `lua.connect_control` (controlService below).

import type { Core, HttpApplet } from "./haproxy";
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

type Produce = (this: void, context: AuthorizeContext, words: string[]) => string;

/** Every command: its leading words, its usage line, and what answers it. */
const COMMANDS: { words: string[]; usage: string; produce: Produce }[] = [
  { words: ["connect", "cache", "flush"], usage: "connect cache flush : drop every cached authorization verdict", produce: flushCommand },
  { words: ["connect", "cache", "stats"], usage: "connect cache stats : authorization cache counters", produce: statsCommand },
  { words: ["connect", "metrics"], usage: "connect metrics : the authorizer's counters in Prometheus text format", produce: metricsCommand },
  { words: ["connect", "show", "config"], usage: "connect show config : the authorizer's settings (never the token)", produce: configCommand },
  { words: ["connect", "intentions"], usage: "connect intentions : watched destinations, their intention lists and default policy", produce: intentionsCommand },
  { words: ["connect", "sync"], usage: "connect sync <target> <index> : use no intention list older than <index> for <target>; waits up to 1 s for it", produce: syncCommand },
  { words: ["connect", "l7-rules"], usage: "connect l7-rules current <target> <index> : switch on haproxy.cfg's native L7 rules rendered from <target>'s intentions at <index>", produce: nativeRulesCommand },
  { words: ["connect", "revoked"], usage: "connect revoked : recorded TCP connections whose source the current intentions deny", produce: revokedCommand },
];

/** The command whose words begin `words`; undefined when none does. */
export function findCommand(words: string[]): Produce | undefined {
  for (const command of COMMANDS) {
    let matches = words.length >= command.words.length;
    for (let i = 0; matches && i < command.words.length; i++) matches = words[i] === command.words[i];
    if (matches) return command.produce;
  }
  return undefined;
}

/** Pure: `/connect/sync/web/42` → the words `connect sync web 42` (percent-escapes decoded). */
export function pathWords(path: string): string[] {
  const words: string[] = [];
  for (const [segment] of string.gmatch(path, "[^/]+")) {
    words.push(string.gsub(segment, "%%(%x%x)", (hex: string) => string.char(tonumber(hex, 16)!))[0]);
  }
  return words;
}

/** Runs a command; an error in it becomes its answer, never HAProxy's. */
function run(produce: Produce, context: AuthorizeContext, words: string[]): LuaMultiReturn<[boolean, string]> {
  const [ok, text] = pcall(produce, context, words);
  return $multi(ok, ok ? text : "error: " + tostring(text) + "\n");
}

/**
 * `lua.connect_control`: the same commands over HTTP, the path naming the
 * words (`GET /connect/cache/stats`). The controller uses this, not the
 * stats socket: HAProxy before 3.0 never frees a Lua CLI command's task (one
 * object per command, measured on 2.6.12), and a command that sleeps can
 * leave that task to wake its freed applet (upstream fix 21601f4a2). An HTTP
 * applet's task is freed with it on every version.
 */
export function controlService(context: AuthorizeContext, applet: HttpApplet): void {
  const words = pathWords(applet.path);
  const produce = findCommand(words);
  let status = 404;
  let text = "unknown command: " + table.concat(words, " ") + "\n";
  if (produce !== undefined) {
    const [ok, answer] = run(produce, context, words);
    status = ok ? 200 : 500;
    text = answer;
  }
  applet.set_status(status);
  applet.add_header("content-type", "text/plain");
  applet.add_header("content-length", tostring(text.length));
  applet.start_response();
  applet.send(text);
}

export function registerCommands(core: Core, context: AuthorizeContext): void {
  for (const command of COMMANDS) {
    core.register_cli(command.words, command.usage, (applet, ...words) => applet.send(run(command.produce, context, words)[1]));
  }
  core.register_service("connect_control", "http", (applet) => controlService(context, applet));
}
